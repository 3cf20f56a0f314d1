//! `jwt`: verify JSON Web Tokens (RFC 7519) signed with a consumer's key or a JWKS key.
//!
//! Choices (documented in docs/config.md):
//! - the key comes from the token's `kid` header, else from a claim (`key_claim`, `iss` by
//!   default); it must be a key of a consumer (`[[consumers]] jwt = [...]`) or of the route's
//!   JWKS (a local file, loaded with the config, or a URL fetched in the background);
//! - the token's `alg` must be the key's algorithm: no `none`, no HS/RS confusion;
//! - `exp` and `nbf` are checked by default, with `clock_skew_seconds` of leeway;
//! - failures answer 401 with `WWW-Authenticate: Bearer error="invalid_token"`, except an
//!   audience mismatch, which is 403; an unreachable JWKS with no usable cached copy is 503.

mod jwks;
mod keys;
mod verified;

use crate::consumer::jwt_key::JwtKey;
use crate::consumer::{Consumer, Consumers};
use crate::req::{cookies, query_values, strip_query_param};
use crate::{
    parse_config_all, Answer, Auth, BuildCtx, ConfigError, Identity, Phase, Plugin, RequestCtx,
};
use async_trait::async_trait;
use http::{HeaderValue, StatusCode};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use jwks::RemoteJwks;
use keys::{parse_jwks, KeyMap};
use pingora::http::RequestHeader;
use serde::Deserialize;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use verified::VerifiedCache;

/// Registered name.
pub const NAME: &str = "jwt";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JwtConfig {
    #[serde(default = "default_true")]
    header: bool,
    #[serde(default)]
    cookie: Option<String>,
    #[serde(default)]
    query_param: Option<String>,
    #[serde(default = "default_key_claim")]
    key_claim: String,
    #[serde(default = "default_skew")]
    clock_skew_seconds: u64,
    #[serde(default = "default_true")]
    verify_exp: bool,
    #[serde(default = "default_true")]
    verify_nbf: bool,
    #[serde(default = "default_true")]
    require_exp: bool,
    #[serde(default)]
    issuers: Vec<String>,
    #[serde(default)]
    audiences: Vec<String>,
    #[serde(default)]
    required_claims: Vec<String>,
    #[serde(default)]
    jwks_file: Option<String>,
    #[serde(default)]
    jwks_url: Option<String>,
    #[serde(default = "default_refresh")]
    jwks_refresh_seconds: u64,
    #[serde(default = "default_stale")]
    jwks_max_stale_seconds: u64,
    #[serde(default = "default_consumer_claim")]
    consumer_claim: String,
    #[serde(default)]
    jwks_consumer: Option<String>,
    #[serde(default)]
    anonymous: Option<String>,
    #[serde(default)]
    hide_credentials: bool,
    #[serde(default = "default_cache_ttl")]
    cache_ttl_seconds: u64,
    #[serde(default = "default_cache_size")]
    cache_size: usize,
}

fn default_cache_ttl() -> u64 {
    60
}
fn default_cache_size() -> usize {
    10_000
}

fn default_true() -> bool {
    true
}
fn default_key_claim() -> String {
    "iss".to_string()
}
fn default_skew() -> u64 {
    30
}
fn default_refresh() -> u64 {
    300
}
fn default_stale() -> u64 {
    3600
}
fn default_consumer_claim() -> String {
    "sub".to_string()
}

/// The compiled `jwt` plugin.
pub struct Jwt {
    header: bool,
    cookie: Option<String>,
    query_param: Option<String>,
    key_claim: String,
    validation: Validation,
    required_claims: Vec<String>,
    /// Tokens without `exp` are refused (they would be valid forever).
    require_exp: bool,
    jwks_local: Option<KeyMap>,
    jwks_remote: Option<Arc<RemoteJwks>>,
    refresh: Duration,
    max_stale: Duration,
    consumer_claim: String,
    jwks_consumer: Option<Arc<Consumer>>,
    anonymous: Option<Arc<Consumer>>,
    hide_credentials: bool,
    consumers: Arc<Consumers>,
    cache: VerifiedCache,
}

/// Constructor for the registry.
pub fn build(value: &toml::Value, ctx: &BuildCtx) -> Result<Arc<dyn Plugin>, Vec<ConfigError>> {
    let cfg: JwtConfig = parse_config_all(value)?;
    let mut errors = Vec::new();
    if !cfg.header && cfg.cookie.is_none() && cfg.query_param.is_none() {
        errors.push(ConfigError::new(
            "header",
            "with header = false, set a cookie or query_param",
        ));
    }
    let jwks_local = match &cfg.jwks_file {
        Some(f) => match std::fs::read_to_string(f)
            .map_err(|e| e.to_string())
            .and_then(|t| parse_jwks(&t))
        {
            Ok(k) => Some(k),
            Err(e) => {
                errors.push(ConfigError::new("jwks_file", format!("{f:?}: {e}")));
                None
            }
        },
        None => None,
    };
    let jwks_remote = match &cfg.jwks_url {
        Some(u) => match RemoteJwks::get(&ctx.state, u) {
            Ok(r) => Some(r),
            Err(e) => {
                errors.push(ConfigError::new("jwks_url", e));
                None
            }
        },
        None => None,
    };
    if cfg.jwks_refresh_seconds == 0 {
        errors.push(ConfigError::new(
            "jwks_refresh_seconds",
            "must be at least 1",
        ));
    }
    let anonymous = ctx
        .consumers
        .named(cfg.anonymous.as_deref(), "anonymous", &mut errors);
    let jwks_consumer =
        ctx.consumers
            .named(cfg.jwks_consumer.as_deref(), "jwks_consumer", &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    // The algorithm list is replaced per key at verification time.
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = cfg.clock_skew_seconds;
    validation.validate_exp = cfg.verify_exp;
    validation.validate_nbf = cfg.verify_nbf;
    validation.required_spec_claims = HashSet::new();
    if cfg.audiences.is_empty() {
        validation.validate_aud = false;
    } else {
        validation.set_audience(&cfg.audiences);
    }
    if !cfg.issuers.is_empty() {
        validation.set_issuer(&cfg.issuers);
    }
    if let Some(remote) = &jwks_remote {
        // Fetch right away when a runtime is there (a reload), else on first use.
        if remote.keys.load().is_none() {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                let r = remote.clone();
                handle.spawn(async move { r.refresh().await });
            }
        }
    }
    Ok(Arc::new(Jwt {
        header: cfg.header,
        cookie: cfg.cookie,
        query_param: cfg.query_param,
        key_claim: cfg.key_claim,
        validation,
        required_claims: cfg.required_claims,
        require_exp: cfg.require_exp,
        jwks_local,
        jwks_remote,
        refresh: Duration::from_secs(cfg.jwks_refresh_seconds),
        max_stale: Duration::from_secs(cfg.jwks_max_stale_seconds),
        consumer_claim: cfg.consumer_claim,
        jwks_consumer,
        anonymous,
        hide_credentials: cfg.hide_credentials,
        consumers: ctx.consumers.clone(),
        cache: VerifiedCache::new(Duration::from_secs(cfg.cache_ttl_seconds), cfg.cache_size),
    }))
}

fn bearer_error(status: StatusCode, code: &'static str, description: &str) -> Answer {
    let challenge = format!("Bearer error=\"invalid_token\", error_description=\"{description}\"");
    let answer = Answer::error(status, code, description);
    match HeaderValue::from_str(&challenge) {
        Ok(v) => answer.with_header(http::header::WWW_AUTHENTICATE, v),
        Err(_) => answer,
    }
}

/// The `alg` of a token whose header parses as JSON (used to tell `none` and unknown
/// algorithms apart from garbage).
fn header_alg(token: &str) -> Option<String> {
    use base64::Engine;
    let first = token.split('.').next()?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(first.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&raw).ok()?;
    v.get("alg")?.as_str().map(str::to_string)
}

fn invalid(code: &'static str, description: &str) -> Auth {
    Auth::Invalid(bearer_error(StatusCode::UNAUTHORIZED, code, description))
}

impl Jwt {
    /// The token of the request, from the places this plugin reads. `Err` when there is
    /// more than one (several `Authorization` headers, or a token in two places).
    fn token<'a>(&self, req: &'a RequestHeader) -> Result<Option<&'a str>, ()> {
        let mut tokens: Vec<&'a str> = Vec::new();
        if self.header {
            let mut values = req.headers.get_all(http::header::AUTHORIZATION).iter();
            let first = values.next();
            if values.next().is_some() {
                return Err(());
            }
            if let Some(v) = first.and_then(|v| v.to_str().ok()) {
                if let Some((scheme, token)) = v.split_once(' ') {
                    if scheme.eq_ignore_ascii_case("bearer") {
                        tokens.push(token.trim());
                    }
                }
            }
        }
        if let Some(name) = &self.cookie {
            for v in cookies(req, name) {
                tokens.push(std::str::from_utf8(v).map_err(|_| ())?);
            }
        }
        if let (Some(q), Some(query)) = (self.query_param.as_deref(), req.uri.query()) {
            tokens.extend(query_values(query, q));
        }
        match tokens.len() {
            0 => Ok(None),
            1 => Ok(tokens.pop()),
            _ => Err(()),
        }
    }

    /// Keys from the remote JWKS, refreshing in the background when due. `Err` when there is
    /// no copy young enough to use.
    async fn remote_keys(&self, remote: &Arc<RemoteJwks>) -> Result<Arc<(Instant, KeyMap)>, ()> {
        let current = remote.keys.load_full();
        match &current {
            Some(k) if k.0.elapsed() < self.refresh => return Ok(k.clone()),
            Some(k) => {
                let r = remote.clone();
                tokio::spawn(async move { r.refresh().await });
                if k.0.elapsed() < self.refresh + self.max_stale {
                    return Ok(k.clone());
                }
            }
            None => {}
        }
        // Nothing usable: fetch now (bounded by the fetch timeout).
        remote.refresh().await;
        match remote.keys.load_full() {
            Some(k) if k.0.elapsed() < self.refresh + self.max_stale => Ok(k),
            _ => Err(()),
        }
    }
}

#[async_trait]
impl Plugin for Jwt {
    fn name(&self) -> &'static str {
        NAME
    }

    fn phase(&self) -> Phase {
        Phase::Authentication
    }

    async fn authenticate(&self, req: &RequestHeader, _ctx: &mut RequestCtx) -> Auth {
        let Ok(token) = self.token(req) else {
            return Auth::Invalid(Answer::ambiguous_credentials(HeaderValue::from_static(
                "Bearer",
            )));
        };
        let Some(token) = token else {
            let a = Answer::error(
                StatusCode::UNAUTHORIZED,
                "missing_credentials",
                "no bearer token in the request",
            )
            .with_header(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
            return Auth::Missing(a);
        };
        let cache_key = VerifiedCache::key(token);
        if let Some(identity) = self.cache.get(&cache_key) {
            return Auth::Authenticated(identity);
        }
        let header = match jsonwebtoken::decode_header(token) {
            Ok(h) => h,
            Err(e) => {
                let unsupported = matches!(
                    e.kind(),
                    ErrorKind::InvalidAlgorithmName | ErrorKind::UnsupportedAlgorithm
                ) || header_alg(token).is_some();
                return if unsupported {
                    invalid(
                        "unsupported_algorithm",
                        "the token's algorithm is not accepted",
                    )
                } else {
                    invalid("malformed_token", "the token is malformed")
                };
            }
        };
        // RFC 7515 §4.1.11: a critical extension this verifier does not understand (it
        // understands none) makes the token invalid.
        if header.crit.as_ref().is_some_and(|c| !c.is_empty()) {
            return invalid(
                "unsupported_crit",
                "the token has a critical header extension that is not supported",
            );
        }
        // Find the key: by kid (consumer keys, then JWKS), else by the key claim.
        let remote;
        let key: Option<&JwtKey> = match &header.kid {
            Some(kid) => match self.consumers.jwt_key(kid) {
                Some(k) => Some(k),
                None => match self.jwks_local.as_ref().and_then(|m| m.get(kid)) {
                    Some(k) => Some(k),
                    None => match &self.jwks_remote {
                        Some(r) => match self.remote_keys(r).await {
                            Ok(keys) => {
                                remote = keys;
                                remote.1.get(kid)
                            }
                            Err(()) => {
                                return Auth::Invalid(Answer::error(
                                    StatusCode::SERVICE_UNAVAILABLE,
                                    "jwks_unavailable",
                                    "the keys to verify the token are not available",
                                ))
                            }
                        },
                        None => None,
                    },
                },
            },
            None => {
                let claims: serde_json::Value =
                    match jsonwebtoken::dangerous::insecure_decode(token) {
                        Ok(d) => d.claims,
                        Err(_) => return invalid("malformed_token", "the token is malformed"),
                    };
                claims
                    .get(&self.key_claim)
                    .and_then(|v| v.as_str())
                    .and_then(|k| self.consumers.jwt_key(k))
            }
        };
        let Some(key) = key else {
            return invalid("unknown_key", "the token's key is not known");
        };
        if key.algorithm != header.alg {
            return invalid(
                "algorithm_mismatch",
                "the token's algorithm does not match its key",
            );
        }
        let mut validation = self.validation.clone();
        validation.algorithms = vec![key.algorithm];
        let data =
            match jsonwebtoken::decode::<serde_json::Value>(token, key.decoding_key(), &validation)
            {
                Ok(d) => d,
                Err(e) => {
                    return match e.kind() {
                        ErrorKind::ExpiredSignature => {
                            invalid("token_expired", "the token has expired")
                        }
                        ErrorKind::ImmatureSignature => {
                            invalid("token_not_yet_valid", "the token is not valid yet")
                        }
                        ErrorKind::InvalidSignature => {
                            invalid("bad_signature", "the token's signature is invalid")
                        }
                        ErrorKind::InvalidAudience => Auth::Invalid(bearer_error(
                            StatusCode::FORBIDDEN,
                            "invalid_audience",
                            "the token is not meant for this audience",
                        )),
                        ErrorKind::InvalidIssuer => {
                            invalid("invalid_issuer", "the token's issuer is not accepted")
                        }
                        ErrorKind::InvalidAlgorithm => invalid(
                            "algorithm_mismatch",
                            "the token's algorithm does not match its key",
                        ),
                        ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) => {
                            invalid(
                                "invalid_claims",
                                "the token's claims are missing or malformed",
                            )
                        }
                        _ => invalid("malformed_token", "the token is malformed"),
                    }
                }
            };
        if self
            .required_claims
            .iter()
            .any(|c| data.claims.get(c.as_str()).is_none())
        {
            return invalid("invalid_claims", "the token lacks a required claim");
        }
        let consumer = match &key.consumer {
            Some(c) => c.clone(),
            None => {
                let by_claim = data
                    .claims
                    .get(&self.consumer_claim)
                    .and_then(|v| v.as_str())
                    .and_then(|n| self.consumers.find(n));
                match by_claim.or(self.jwks_consumer.as_ref()) {
                    Some(c) => c.clone(),
                    None => {
                        return invalid(
                            "unknown_consumer",
                            "the token's subject is not a known consumer",
                        )
                    }
                }
            }
        };
        // NumericDate may have a fraction (RFC 7519 §2).
        let exp = data
            .claims
            .get("exp")
            .and_then(|v| v.as_f64())
            .map(|e| e.max(0.0) as u64);
        if exp.is_none() && self.require_exp {
            return invalid("missing_exp", "the token has no exp claim");
        }
        let identity = Identity {
            consumer,
            credential: Some(key.credential().clone()),
            anonymous: false,
        };
        self.cache
            .put(cache_key, &identity, exp, self.validation.leeway);
        Auth::Authenticated(identity)
    }

    fn anonymous(&self) -> Option<&Arc<Consumer>> {
        self.anonymous.as_ref()
    }

    fn upstream_request(&self, req: &mut RequestHeader, _ctx: &mut RequestCtx) {
        if self.hide_credentials {
            if self.header {
                let bearer = req
                    .headers
                    .get(http::header::AUTHORIZATION)
                    .is_some_and(|v| {
                        v.as_bytes().len() > 7 && v.as_bytes()[..7].eq_ignore_ascii_case(b"bearer ")
                    });
                if bearer {
                    req.remove_header(&http::header::AUTHORIZATION);
                }
            }
            if let Some(q) = &self.query_param {
                strip_query_param(req, q);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alg_of_unparsable_headers() {
        let h = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIiwia2lkIjoiYWxpY2UtaHMifQ";
        let t = format!("{h}.e30.");
        let e = jsonwebtoken::decode_header(&t).unwrap_err();
        eprintln!("{:?}", e.kind());
        assert_eq!(header_alg(&t).as_deref(), Some("none"));
        assert_eq!(header_alg("garbage"), None);
    }
}

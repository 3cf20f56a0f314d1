//! `jwt`: verify JSON Web Tokens (RFC 7519) signed with a consumer's key or a JWKS key.
//!
//! Choices (see docs/plugins.md):
//! - the key comes from the token's `kid` header, else from a claim (`key_claim`, `iss` by
//!   default); it must be a key of a consumer (`[[consumers]] jwt = [...]`) or of the route's
//!   JWKS (a local file, loaded with the config, or a URL fetched in the background);
//! - the token's `alg` must be the key's algorithm: no `none`, no HS/RS confusion;
//! - `exp` and `nbf` are checked by default, with `clock_skew_seconds` of leeway;
//! - failures answer 401 with `WWW-Authenticate: Bearer error="invalid_token"`, except an
//!   audience mismatch, which is 403; an unreachable JWKS with no usable cached copy is 503.

use crate::consumer::{Consumer, Consumers};
use crate::key_auth::strip_query_param;
use crate::req::{cookie, query_value};
use crate::{
    parse_config, Answer, Auth, BuildCtx, ConfigError, Identity, Phase, Plugin, RequestCtx,
};
use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use http::{HeaderValue, StatusCode};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Registered name.
pub const NAME: &str = "jwt";

/// A JWT credential as written in `[[consumers]] jwt = [...]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtKeySpec {
    /// Matched against the token's `kid`, or the `key_claim` claim when there is no `kid`.
    pub key: String,
    /// `HS256`, `HS384`, `HS512`, `RS256`, `RS384`, `RS512`, `PS256`, `PS384`, `PS512`,
    /// `ES256`, `ES384` or `EdDSA`.
    pub algorithm: String,
    /// HMAC secret (HS*), at least 32 bytes.
    #[serde(default)]
    pub secret: Option<String>,
    /// The secret is base64 (standard alphabet).
    #[serde(default)]
    pub secret_base64: bool,
    /// PEM public key (RS*, PS*, ES*, EdDSA).
    #[serde(default)]
    pub public_key: Option<String>,
    /// File with the PEM public key.
    #[serde(default)]
    pub public_key_file: Option<String>,
}

/// A verified-ready key and whose it is.
pub struct JwtKey {
    /// The only algorithm this key accepts.
    pub algorithm: Algorithm,
    key: DecodingKey,
    /// The consumer a token signed with this key authenticates (none for JWKS keys).
    pub consumer: Option<Arc<Consumer>>,
    credential: HeaderValue,
}

impl JwtKey {
    /// Compile a consumer's credential; errors relative to the spec.
    pub fn build(spec: &JwtKeySpec, consumer: Arc<Consumer>) -> Result<Self, Vec<ConfigError>> {
        let algorithm: Algorithm = spec.algorithm.parse().map_err(|_| {
            vec![ConfigError::new(
                "algorithm",
                format!("unsupported algorithm {:?}", spec.algorithm),
            )]
        })?;
        let credential = HeaderValue::from_str(&spec.key)
            .map_err(|_| vec![ConfigError::new("key", "must be printable text")])?;
        let key = match algorithm {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                let Some(secret) = &spec.secret else {
                    return Err(vec![ConfigError::new("secret", "HS* keys need `secret`")]);
                };
                let key = if spec.secret_base64 {
                    DecodingKey::from_base64_secret(secret)
                        .map_err(|_| vec![ConfigError::new("secret", "not valid base64")])?
                } else {
                    DecodingKey::from_secret(secret.as_bytes())
                };
                let len = key.try_get_as_bytes().map_or(0, |b| b.len());
                if len < 32 {
                    return Err(vec![ConfigError::new(
                        "secret",
                        "HMAC secrets must be at least 32 bytes",
                    )]);
                }
                key
            }
            _ => {
                let pem = match (&spec.public_key, &spec.public_key_file) {
                    (Some(p), None) => p.clone(),
                    (None, Some(f)) => std::fs::read_to_string(f)
                        .map_err(|e| vec![ConfigError::new("public_key_file", format!("cannot read {f:?}: {e}"))])?,
                    _ => {
                        return Err(vec![ConfigError::new(
                            "public_key",
                            "asymmetric keys need exactly one of `public_key` (PEM) or `public_key_file`",
                        )])
                    }
                };
                let parsed = match algorithm {
                    Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem.as_bytes()),
                    Algorithm::EdDSA => DecodingKey::from_ed_pem(pem.as_bytes()),
                    _ => DecodingKey::from_rsa_pem(pem.as_bytes()),
                };
                parsed.map_err(|e| {
                    vec![ConfigError::new(
                        "public_key",
                        format!("not a PEM public key for {}: {e}", spec.algorithm),
                    )]
                })?
            }
        };
        Ok(JwtKey {
            algorithm,
            key,
            consumer: Some(consumer),
            credential,
        })
    }
}

/// Keys of a JWKS document by `kid`.
type KeyMap = HashMap<String, JwtKey>;

fn parse_jwks(text: &str) -> Result<KeyMap, String> {
    let set: JwkSet =
        serde_json::from_str(text).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut out = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = &jwk.common.key_id else {
            continue;
        };
        let alg = match jwk
            .common
            .key_algorithm
            .map(|a| a.to_string().parse::<Algorithm>())
        {
            Some(Ok(a)) => a,
            // No `alg`: the one algorithm the key type allows without ambiguity.
            _ => match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                    Algorithm::ES256
                }
                AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P384 => {
                    Algorithm::ES384
                }
                AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
                _ => continue,
            },
        };
        if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            // Symmetric keys do not belong in a published key set.
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        let Ok(credential) = HeaderValue::from_str(kid) else {
            continue;
        };
        out.insert(
            kid.clone(),
            JwtKey {
                algorithm: alg,
                key,
                consumer: None,
                credential,
            },
        );
    }
    if out.is_empty() {
        return Err("the JWKS has no usable key with a `kid`".to_string());
    }
    Ok(out)
}

/// A JWKS fetched from a URL, shared by every plugin instance using that URL so a reload
/// neither refetches nor forgets it.
struct RemoteJwks {
    url: http::Uri,
    keys: ArcSwapOption<(Instant, KeyMap)>,
    refreshing: AtomicBool,
}

static REMOTE: LazyLock<Mutex<HashMap<String, Arc<RemoteJwks>>>> = LazyLock::new(Default::default);

impl RemoteJwks {
    fn get(url: &str) -> Result<Arc<Self>, String> {
        let uri: http::Uri = url.parse().map_err(|_| format!("{url:?} is not a URL"))?;
        if !matches!(uri.scheme_str(), Some("http") | Some("https")) || uri.host().is_none() {
            return Err(format!("{url:?} must be an http:// or https:// URL"));
        }
        let mut map = REMOTE
            .lock()
            .map_err(|_| "internal lock poisoned".to_string())?;
        Ok(map
            .entry(url.to_string())
            .or_insert_with(|| {
                Arc::new(RemoteJwks {
                    url: uri,
                    keys: ArcSwapOption::empty(),
                    refreshing: AtomicBool::new(false),
                })
            })
            .clone())
    }

    async fn refresh(&self) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        match tokio::time::timeout(Duration::from_secs(5), fetch(&self.url)).await {
            Ok(Ok(text)) => match parse_jwks(&text) {
                Ok(keys) => {
                    self.keys.store(Some(Arc::new((Instant::now(), keys))));
                }
                Err(e) => log::warn!("JWKS from {} rejected: {e}", self.url),
            },
            Ok(Err(e)) => log::warn!("JWKS fetch from {} failed: {e}", self.url),
            Err(_) => log::warn!("JWKS fetch from {} timed out", self.url),
        }
        self.refreshing.store(false, Ordering::Release);
    }
}

async fn fetch(url: &http::Uri) -> Result<String, String> {
    use pingora::connectors::http::Connector;
    use pingora::upstreams::peer::HttpPeer;
    let tls = url.scheme_str() == Some("https");
    let host = url.host().unwrap_or_default();
    let port = url.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let addr = tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    let mut peer = HttpPeer::new(addr, tls, host.to_string());
    peer.options.connection_timeout = Some(Duration::from_secs(2));
    peer.options.read_timeout = Some(Duration::from_secs(3));
    let connector = Connector::new(None);
    let (mut session, _) = connector
        .get_http_session(&peer)
        .await
        .map_err(|e| e.to_string())?;
    let path = url.path_and_query().map_or("/", |p| p.as_str());
    let mut req = RequestHeader::build("GET", path.as_bytes(), None).map_err(|e| e.to_string())?;
    req.insert_header("host", host).map_err(|e| e.to_string())?;
    req.insert_header("accept", "application/json")
        .map_err(|e| e.to_string())?;
    session
        .write_request_header(Box::new(req))
        .await
        .map_err(|e| e.to_string())?;
    session
        .finish_request_body()
        .await
        .map_err(|e| e.to_string())?;
    session
        .read_response_header()
        .await
        .map_err(|e| e.to_string())?;
    let status = session.response_header().map_or(0, |r| r.status.as_u16());
    if status != 200 {
        return Err(format!("status {status}"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = session
        .read_response_body()
        .await
        .map_err(|e| e.to_string())?
    {
        body.extend_from_slice(&chunk);
        if body.len() > 1 << 20 {
            return Err("JWKS larger than 1 MiB".to_string());
        }
    }
    String::from_utf8(body).map_err(|_| "not UTF-8".to_string())
}

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

const SHARDS: usize = 16;

/// Tokens verified recently, by SHA-256 of the token: signature checks (RSA above all) are
/// far more expensive than the rest of a request, and clients send the same token many
/// times. An entry lives until the token expires or `cache_ttl_seconds`, whichever is first;
/// a reload starts a new, empty cache.
struct VerifiedCache {
    ttl: Duration,
    shard_cap: usize,
    shards: Vec<Mutex<HashMap<[u8; 32], Remembered>>>,
}

/// A verified token: valid until, and who it authenticates.
type Remembered = (Instant, Identity);

impl VerifiedCache {
    fn key(token: &str) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(token.as_bytes()).into()
    }

    fn get(&self, key: &[u8; 32]) -> Option<Identity> {
        let shard = self.shards[key[0] as usize % SHARDS].lock().ok()?;
        let (until, id) = shard.get(key)?;
        (Instant::now() < *until).then(|| id.clone())
    }

    fn put(&self, key: [u8; 32], identity: &Identity, exp: Option<u64>, leeway: u64) {
        if self.ttl.is_zero() {
            return;
        }
        let now_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let life = match exp {
            Some(exp) => self
                .ttl
                .min(Duration::from_secs((exp + leeway).saturating_sub(now_unix))),
            None => self.ttl,
        };
        let Ok(mut shard) = self.shards[key[0] as usize % SHARDS].lock() else {
            return;
        };
        if shard.len() >= self.shard_cap {
            let now = Instant::now();
            shard.retain(|_, (until, _)| *until > now);
            if shard.len() >= self.shard_cap {
                shard.clear();
            }
        }
        shard.insert(key, (Instant::now() + life, identity.clone()));
    }
}

/// Constructor for the registry.
pub fn build(value: &toml::Value, ctx: &BuildCtx) -> Result<Arc<dyn Plugin>, Vec<ConfigError>> {
    let cfg: JwtConfig = parse_config(value).map_err(|e| vec![e])?;
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
        Some(u) => match RemoteJwks::get(u) {
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
        jwks_local,
        jwks_remote,
        refresh: Duration::from_secs(cfg.jwks_refresh_seconds),
        max_stale: Duration::from_secs(cfg.jwks_max_stale_seconds),
        consumer_claim: cfg.consumer_claim,
        jwks_consumer,
        anonymous,
        hide_credentials: cfg.hide_credentials,
        consumers: ctx.consumers.clone(),
        cache: VerifiedCache {
            ttl: Duration::from_secs(cfg.cache_ttl_seconds),
            shard_cap: cfg.cache_size.div_ceil(SHARDS).max(1),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        },
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
    fn token<'a>(&self, req: &'a RequestHeader) -> Option<&'a str> {
        if self.header {
            if let Some(v) = req
                .headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
            {
                if let Some((scheme, token)) = v.split_once(' ') {
                    if scheme.eq_ignore_ascii_case("bearer") {
                        return Some(token.trim());
                    }
                }
            }
        }
        if let Some(name) = &self.cookie {
            if let Some(v) = cookie(req, name).and_then(|v| std::str::from_utf8(v).ok()) {
                return Some(v);
            }
        }
        let q = self.query_param.as_deref()?;
        query_value(req.uri.query()?, q)
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

    async fn authenticate(&self, session: &mut Session, _ctx: &mut RequestCtx) -> Auth {
        let Some(token) = self.token(session.req_header()) else {
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
        let data = match jsonwebtoken::decode::<serde_json::Value>(token, &key.key, &validation) {
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
        if let Some(missing) = self
            .required_claims
            .iter()
            .find(|c| data.claims.get(c.as_str()).is_none())
        {
            let _ = missing;
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
        let identity = Identity {
            consumer,
            credential: Some(key.credential.clone()),
            anonymous: false,
        };
        let exp = data.claims.get("exp").and_then(|v| v.as_u64());
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

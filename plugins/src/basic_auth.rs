//! `basic_auth`: RFC 7617 HTTP Basic authentication against consumers' password hashes.
//!
//! Verifying an argon2 or bcrypt hash costs milliseconds of CPU on purpose, so it runs on the
//! blocking thread pool, at most `max_concurrent_verifications` at once (over it: 503, never a
//! queue that grows), and outcomes are cached for a short time, keyed by a SHA-256 of the
//! credentials (never the password itself), in bounded maps: a repeated bad guess costs no
//! second hash.

use crate::consumer::password::{verify, DUMMY_HASH};
use crate::consumer::{Consumer, Consumers};
use crate::ttl_cache::TtlCache;
use crate::{
    parse_config_all, Answer, Auth, BuildCtx, ConfigError, Identity, Phase, Plugin, RequestCtx,
};
use async_trait::async_trait;
use base64::Engine;
use http::{HeaderValue, StatusCode};
use pingora::http::RequestHeader;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Registered name.
pub const NAME: &str = "basic_auth";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BasicAuthConfig {
    #[serde(default = "default_realm")]
    realm: String,
    #[serde(default)]
    hide_credentials: bool,
    #[serde(default)]
    anonymous: Option<String>,
    #[serde(default = "default_ttl")]
    cache_ttl_seconds: u64,
    #[serde(default = "default_cache_size")]
    cache_size: usize,
    #[serde(default)]
    max_concurrent_verifications: Option<usize>,
    #[serde(default = "default_negative_ttl")]
    negative_cache_ttl_seconds: u64,
}

fn default_negative_ttl() -> u64 {
    60
}

fn default_realm() -> String {
    "tollgate".to_string()
}
fn default_ttl() -> u64 {
    60
}
fn default_cache_size() -> usize {
    10_000
}

/// The compiled `basic_auth` plugin.
pub struct BasicAuth {
    challenge: HeaderValue,
    hide_credentials: bool,
    anonymous: Option<Arc<Consumer>>,
    consumers: Arc<Consumers>,
    ttl: Duration,
    /// Credentials verified recently, by SHA-256 of user, password and stored hash.
    verified: TtlCache<[u8; 32], ()>,
    /// Credentials that failed recently (same key): a repeated bad guess costs no hash.
    refused: TtlCache<[u8; 32], ()>,
    negative_ttl: Duration,
    /// Hash verifications allowed at once; over it the answer is 503, never a queue.
    verifications: Arc<Semaphore>,
}

/// Constructor for the registry.
pub fn build(value: &toml::Value, ctx: &BuildCtx) -> Result<Arc<dyn Plugin>, Vec<ConfigError>> {
    let cfg: BasicAuthConfig = parse_config_all(value)?;
    let mut errors = Vec::new();
    let challenge =
        match HeaderValue::from_str(&format!("Basic realm=\"{}\", charset=\"UTF-8\"", cfg.realm)) {
            Ok(v) if !cfg.realm.contains('"') => v,
            _ => {
                errors.push(ConfigError::new(
                    "realm",
                    "must be printable text without quotes",
                ));
                HeaderValue::from_static("Basic")
            }
        };
    let anonymous = ctx
        .consumers
        .named(cfg.anonymous.as_deref(), "anonymous", &mut errors);
    // Each verification keeps a core busy for milliseconds and holds ~19 MiB (argon2id's
    // default memory cost): at most one per core by default.
    let max_verifications = cfg
        .max_concurrent_verifications
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if max_verifications == 0 {
        errors.push(ConfigError::new(
            "max_concurrent_verifications",
            "must be at least 1",
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Arc::new(BasicAuth {
        challenge,
        hide_credentials: cfg.hide_credentials,
        anonymous,
        consumers: ctx.consumers.clone(),
        ttl: Duration::from_secs(cfg.cache_ttl_seconds),
        verified: TtlCache::new(cfg.cache_size),
        refused: TtlCache::new(cfg.cache_size),
        negative_ttl: Duration::from_secs(cfg.negative_cache_ttl_seconds),
        verifications: Arc::new(Semaphore::new(max_verifications)),
    }))
}

/// `user:password` from an `Authorization: Basic ...` value; `Err` when it is malformed.
fn parse_basic(value: &[u8]) -> Option<Result<(String, String), ()>> {
    let (scheme, rest) = match value.iter().position(|b| *b == b' ') {
        Some(i) => (&value[..i], &value[i + 1..]),
        None => (value, &b""[..]),
    };
    if !scheme.eq_ignore_ascii_case(b"basic") {
        // Some other scheme (e.g. Bearer for the jwt plugin): not ours.
        return None;
    }
    let decoded = match base64::engine::general_purpose::STANDARD.decode(rest.trim_ascii()) {
        Ok(d) => d,
        Err(_) => return Some(Err(())),
    };
    let Ok(text) = String::from_utf8(decoded) else {
        return Some(Err(()));
    };
    match text.split_once(':') {
        Some((u, p)) if !u.is_empty() => Some(Ok((u.to_string(), p.to_string()))),
        _ => Some(Err(())),
    }
}

impl BasicAuth {
    fn unauthorized(&self, code: &'static str, message: &str) -> Answer {
        Answer::error(StatusCode::UNAUTHORIZED, code, message)
            .with_header(http::header::WWW_AUTHENTICATE, self.challenge.clone())
    }

    fn cache_key(user: &str, password: &str, hash: &str) -> [u8; 32] {
        // The stored hash is part of the key, so changing a password invalidates the entry.
        let mut h = Sha256::new();
        for part in [user, password, hash] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.finalize().into()
    }

    fn cached(&self, key: &[u8; 32]) -> bool {
        self.verified.get(key, Instant::now()).is_some()
    }

    fn remember(&self, key: [u8; 32]) {
        if !self.ttl.is_zero() {
            self.verified.insert(key, (), Instant::now() + self.ttl);
        }
    }
}

#[async_trait]
impl Plugin for BasicAuth {
    fn name(&self) -> &'static str {
        NAME
    }

    fn phase(&self) -> Phase {
        Phase::Authentication
    }

    async fn authenticate(&self, req: &RequestHeader, _ctx: &mut RequestCtx) -> Auth {
        let mut values = req.headers.get_all(http::header::AUTHORIZATION).iter();
        let first = values.next();
        if values.next().is_some() {
            return Auth::Invalid(Answer::ambiguous_credentials(self.challenge.clone()));
        }
        let Some(value) = first else {
            return Auth::Missing(
                self.unauthorized("missing_credentials", "basic authentication required"),
            );
        };
        let (user, password) = match parse_basic(value.as_bytes()) {
            None => {
                return Auth::Missing(
                    self.unauthorized("missing_credentials", "basic authentication required"),
                )
            }
            Some(Err(())) => {
                return Auth::Invalid(self.unauthorized(
                    "invalid_credentials",
                    "malformed basic authorization header",
                ))
            }
            Some(Ok(c)) => c,
        };
        let entry = self.consumers.basic(&user);
        let hash = entry.map_or(DUMMY_HASH, |e| e.password_hash.as_str());
        let key = Self::cache_key(&user, &password, hash);
        let now = Instant::now();
        let ok = if entry.is_some() && self.cached(&key) {
            true
        } else if self.refused.get(&key, now).is_some() {
            false
        } else {
            let Ok(permit) = self.verifications.clone().try_acquire_owned() else {
                return Auth::Invalid(
                    Answer::error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "auth_overloaded",
                        "too many password verifications at once; retry shortly",
                    )
                    .with_header(http::header::RETRY_AFTER, HeaderValue::from_static("1")),
                );
            };
            let hash = hash.to_string();
            // The permit goes with the work: a client that gives up does not free the slot
            // before the hash is done.
            let verified = tokio::task::spawn_blocking(move || {
                let ok = verify(&password, &hash);
                drop(permit);
                ok
            })
            .await
            .unwrap_or(false);
            let ok = verified && entry.is_some();
            if ok {
                self.remember(key);
            } else if !self.negative_ttl.is_zero() {
                self.refused.insert(key, (), now + self.negative_ttl);
            }
            ok
        };
        match entry {
            Some(e) if ok => Auth::Authenticated(Identity {
                consumer: e.consumer.clone(),
                credential: Some(e.credential.clone()),
                anonymous: false,
            }),
            _ => Auth::Invalid(
                self.unauthorized("invalid_credentials", "invalid username or password"),
            ),
        }
    }

    fn anonymous(&self) -> Option<&Arc<Consumer>> {
        self.anonymous.as_ref()
    }

    fn upstream_request(&self, req: &mut RequestHeader, _ctx: &mut RequestCtx) {
        if self.hide_credentials {
            req.remove_header(&http::header::AUTHORIZATION);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_headers() {
        assert!(parse_basic(b"Bearer abc").is_none());
        assert!(matches!(parse_basic(b"Basic !!!"), Some(Err(()))));
        assert!(matches!(parse_basic(b"Basic Zm9v"), Some(Err(())))); // "foo": no colon
        let ok = parse_basic(b"basic YWxpY2U6czNjcjp0").unwrap().unwrap();
        assert_eq!(ok, ("alice".to_string(), "s3cr:t".to_string()));
    }
}

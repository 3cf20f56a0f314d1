//! `basic_auth`: RFC 7617 HTTP Basic authentication against consumers' password hashes.
//!
//! Verifying an argon2 or bcrypt hash costs milliseconds of CPU on purpose, so it runs on the
//! blocking thread pool, and successful verifications are cached for a short time, keyed by a
//! SHA-256 of the credentials (never the password itself), in a bounded sharded map.

use crate::consumer::{Consumer, Consumers};
use crate::{
    parse_config, Answer, Auth, BuildCtx, ConfigError, Identity, Phase, Plugin, RequestCtx,
};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use async_trait::async_trait;
use base64::Engine;
use http::{HeaderValue, StatusCode};
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

/// Registered name.
pub const NAME: &str = "basic_auth";

const SHARDS: usize = 16;

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

/// Does tollgate know how to verify this hash?
pub fn is_supported_hash(hash: &str) -> bool {
    if hash.starts_with("$argon2") {
        PasswordHash::new(hash).is_ok()
    } else {
        ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p)) && hash.len() == 60
    }
}

/// Hash a password for `[[consumers]] basic_auth.password_hash` (argon2id, random salt).
pub fn hash_password(password: &str) -> Result<String, String> {
    // The salt must be unpredictable: take it from the operating system.
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw).map_err(|e| e.to_string())?;
    let salt = SaltString::encode_b64(&raw).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

fn verify(password: &str, hash: &str) -> bool {
    if hash.starts_with("$argon2") {
        PasswordHash::new(hash)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false)
    } else {
        bcrypt::verify(password, hash).unwrap_or(false)
    }
}

/// Verified against when the user is unknown, so the answer takes as long as for a known user
/// with a wrong password (no user enumeration by timing).
static DUMMY_HASH: LazyLock<String> =
    LazyLock::new(|| hash_password("tollgate-dummy").unwrap_or_default());

/// The compiled `basic_auth` plugin.
pub struct BasicAuth {
    challenge: HeaderValue,
    hide_credentials: bool,
    anonymous: Option<Arc<Consumer>>,
    consumers: Arc<Consumers>,
    ttl: Duration,
    shard_cap: usize,
    cache: Vec<Mutex<HashMap<[u8; 32], Instant>>>,
}

/// Constructor for the registry.
pub fn build(value: &toml::Value, ctx: &BuildCtx) -> Result<Arc<dyn Plugin>, Vec<ConfigError>> {
    let cfg: BasicAuthConfig = parse_config(value).map_err(|e| vec![e])?;
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
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Arc::new(BasicAuth {
        challenge,
        hide_credentials: cfg.hide_credentials,
        anonymous,
        consumers: ctx.consumers.clone(),
        ttl: Duration::from_secs(cfg.cache_ttl_seconds),
        shard_cap: cfg.cache_size.div_ceil(SHARDS).max(1),
        cache: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
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
        let shard = &self.cache[key[0] as usize % SHARDS];
        match shard.lock() {
            Ok(map) => map.get(key).is_some_and(|t| t.elapsed() < self.ttl),
            Err(_) => false,
        }
    }

    fn remember(&self, key: [u8; 32]) {
        if self.ttl.is_zero() {
            return;
        }
        let shard = &self.cache[key[0] as usize % SHARDS];
        if let Ok(mut map) = shard.lock() {
            if map.len() >= self.shard_cap {
                let ttl = self.ttl;
                map.retain(|_, t| t.elapsed() < ttl);
                if map.len() >= self.shard_cap {
                    map.clear();
                }
            }
            map.insert(key, Instant::now());
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

    async fn authenticate(&self, session: &mut Session, _ctx: &mut RequestCtx) -> Auth {
        let Some(value) = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
        else {
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
        let hash = entry.map_or(DUMMY_HASH.as_str(), |e| e.password_hash.as_str());
        let key = Self::cache_key(&user, &password, hash);
        let ok = if entry.is_some() && self.cached(&key) {
            true
        } else {
            let hash = hash.to_string();
            let verified = tokio::task::spawn_blocking(move || verify(&password, &hash))
                .await
                .unwrap_or(false);
            let ok = verified && entry.is_some();
            if ok {
                self.remember(key);
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

    #[test]
    fn hashes_verify() {
        let h = hash_password("pw").unwrap();
        assert!(is_supported_hash(&h));
        assert!(verify("pw", &h));
        assert!(!verify("px", &h));
        let b = bcrypt::hash("pw", 4).unwrap();
        assert!(is_supported_hash(&b));
        assert!(verify("pw", &b));
        assert!(!is_supported_hash("plaintext"));
    }
}

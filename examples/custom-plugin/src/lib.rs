//! `hmac_signature`: refuse requests that are not signed with a shared secret.
//!
//! The client sends `X-Key-Id: <id>`, `X-Timestamp: <unix seconds>` and
//! `X-Signature: <hex HMAC-SHA256>` of `"<METHOD>\n<path and query>\n<timestamp>"` under the
//! secret of that key id. A missing, malformed, stale or wrong signature is answered with
//! 401 and the gateway's JSON error body; the upstream gets `X-Signature-Key-Id` (a copy sent
//! by the client is removed first) and the client's response `X-Signature: verified`.
//!
//! This is the example of `docs/plugins.md`: one config struct, one constructor that
//! validates it with TOML paths, hooks that take only what they need.

#![warn(missing_docs)]

pub mod metrics;

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};
use tollgate_plugins::prelude::*;

/// The name this plugin is registered under (the TOML `name`).
pub const NAME: &str = "hmac_signature";

const KEY_ID: HeaderName = HeaderName::from_static("x-key-id");
const TIMESTAMP: HeaderName = HeaderName::from_static("x-timestamp");
const SIGNATURE: HeaderName = HeaderName::from_static("x-signature");
const UPSTREAM_KEY_ID: HeaderName = HeaderName::from_static("x-signature-key-id");

/// The plugin's TOML table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Secrets by key id (write them as `${ENV}` references).
    keys: BTreeMap<String, String>,
    /// How far the timestamp may be from the gateway's clock.
    #[serde(default = "default_skew")]
    max_skew_seconds: u64,
}

fn default_skew() -> u64 {
    300
}

/// A key: its MAC state, its id as a header value, and its counter (resolved once).
struct Key {
    mac: Hmac<Sha256>,
    id: HeaderValue,
    verified: prometheus::IntCounter,
}

/// A built `hmac_signature`: one instance per place it is configured.
pub struct HmacSignature {
    keys: BTreeMap<String, Key>,
    max_skew: u64,
}

/// The id of the key that signed this request, for the upstream-request hook.
#[derive(Clone)]
struct Verified(HeaderValue);

/// The constructor the registry calls with the plugin's table.
pub fn build(value: &toml::Value, _ctx: &BuildCtx) -> Result<Arc<dyn Plugin>, Vec<ConfigError>> {
    let cfg: Config = parse_config_all(value)?;
    let mut errors = Vec::new();
    if cfg.keys.is_empty() {
        errors.push(ConfigError::new("keys", "at least one key id = \"secret\""));
    }
    let mut keys = BTreeMap::new();
    for (id, secret) in &cfg.keys {
        let at = format!("keys.{id}");
        if secret.len() < 32 {
            // Never echo the secret itself.
            errors.push(ConfigError::new(&at, "secrets are at least 32 bytes"));
            continue;
        }
        match (
            Hmac::<Sha256>::new_from_slice(secret.as_bytes()),
            HeaderValue::from_str(id),
        ) {
            (Ok(mac), Ok(v)) => {
                let verified = metrics::VERIFIED.with_label_values(&[id.as_str()]);
                keys.insert(
                    id.clone(),
                    Key {
                        mac,
                        id: v,
                        verified,
                    },
                );
            }
            _ => errors.push(ConfigError::new(&at, "key ids are printable text")),
        }
    }
    if cfg.max_skew_seconds == 0 {
        errors.push(ConfigError::new("max_skew_seconds", "must be at least 1"));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Arc::new(HmacSignature {
        keys,
        max_skew: cfg.max_skew_seconds,
    }))
}

fn refuse(code: &'static str, message: &str) -> Flow {
    Flow::Respond(Answer::error(StatusCode::UNAUTHORIZED, code, message))
}

/// The one value of a header, if it was sent exactly once.
fn single<'a>(req: &'a RequestHeader, name: &HeaderName) -> Option<&'a [u8]> {
    let mut all = req.headers.get_all(name).iter();
    match (all.next(), all.next()) {
        (Some(v), None) => Some(v.as_bytes()),
        _ => None,
    }
}

impl HmacSignature {
    fn check(&self, req: &RequestHeader, now: u64) -> Result<HeaderValue, Flow> {
        let (Some(id), Some(ts), Some(sig)) = (
            single(req, &KEY_ID),
            single(req, &TIMESTAMP),
            single(req, &SIGNATURE),
        ) else {
            return Err(refuse(
                "missing_signature",
                "X-Key-Id, X-Timestamp and X-Signature are required, once each",
            ));
        };
        let Some(key) = std::str::from_utf8(id)
            .ok()
            .and_then(|id| self.keys.get(id))
        else {
            return Err(refuse("invalid_signature", "the signature is not valid"));
        };
        let ts_num = std::str::from_utf8(ts)
            .ok()
            .and_then(|t| t.parse::<u64>().ok());
        match ts_num {
            Some(t) if t.abs_diff(now) <= self.max_skew => {}
            _ => return Err(refuse("stale_signature", "X-Timestamp is not current")),
        }
        let Ok(sig) = hex::decode(sig) else {
            return Err(refuse("invalid_signature", "the signature is not valid"));
        };
        let mut mac = key.mac.clone();
        mac.update(req.method.as_str().as_bytes());
        mac.update(b"\n");
        mac.update(
            req.uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .as_bytes(),
        );
        mac.update(b"\n");
        mac.update(ts);
        // verify_slice compares in constant time.
        mac.verify_slice(&sig)
            .map_err(|_| refuse("invalid_signature", "the signature is not valid"))?;
        key.verified.inc();
        Ok(key.id.clone())
    }
}

/// Sign a request the way the plugin checks it (for clients and tests).
pub fn sign(secret: &[u8], method: &str, path_and_query: &str, timestamp: u64) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(format!("{method}\n{path_and_query}\n{timestamp}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[async_trait]
impl Plugin for HmacSignature {
    fn name(&self) -> &'static str {
        NAME
    }

    fn phase(&self) -> Phase {
        // A gate in front of everything else, like an IP allow-list.
        Phase::AccessControl
    }

    async fn request(&self, req: &RequestHeader, ctx: &mut RequestCtx) -> Flow {
        match self.check(req, unix_now()) {
            Ok(id) => {
                ctx.extensions.insert(Verified(id));
                Flow::Continue
            }
            Err(answer) => answer,
        }
    }

    fn upstream_request(&self, req: &mut RequestHeader, ctx: &mut RequestCtx) {
        // Whatever the client sent under this name is not ours to vouch for.
        req.remove_header(&UPSTREAM_KEY_ID);
        if let Some(Verified(id)) = ctx.extensions.get::<Verified>() {
            let _ = req.insert_header(UPSTREAM_KEY_ID, id.clone());
        }
    }

    fn response(&self, resp: &mut ResponseHeader, ctx: &mut RequestCtx) {
        if ctx.extensions.get::<Verified>().is_some() {
            let _ = resp.insert_header(SIGNATURE, "verified");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_plugins::testing::{self, Harness, Outcome};

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn plugin() -> Arc<dyn Plugin> {
        testing::build(build, &format!("keys = {{ partner = \"{SECRET}\" }}")).unwrap()
    }

    fn signed(path: &str, ts: u64, sig: &str) -> RequestHeader {
        testing::request(
            "GET",
            path,
            &[
                ("x-key-id", "partner"),
                ("x-timestamp", &ts.to_string()),
                ("x-signature", sig),
            ],
        )
    }

    #[test]
    fn a_good_signature_passes_and_names_the_key_upstream() {
        let h = Harness::new([plugin()]);
        let now = unix_now();
        let mut req = signed(
            "/a?b=1",
            now,
            &sign(SECRET.as_bytes(), "GET", "/a?b=1", now),
        );
        req.insert_header("x-signature-key-id", "forged").unwrap();
        let mut ctx = testing::ctx();
        assert!(matches!(h.request(&mut req, &mut ctx), Outcome::Upstream));
        assert_eq!(req.headers["x-signature-key-id"], "partner");
        let mut resp = testing::response(200, &[]);
        h.response(&mut resp, &mut ctx);
        assert_eq!(resp.headers["x-signature"], "verified");
    }

    #[test]
    fn bad_signatures_get_401() {
        let h = Harness::new([plugin()]);
        let now = unix_now();
        let good = sign(SECRET.as_bytes(), "GET", "/a", now);
        let cases = [
            (signed("/b", now, &good), "invalid_signature"),
            (
                signed(
                    "/a",
                    now - 1000,
                    &sign(SECRET.as_bytes(), "GET", "/a", now - 1000),
                ),
                "stale_signature",
            ),
            (signed("/a", now, "zz"), "invalid_signature"),
            (testing::request("GET", "/a", &[]), "missing_signature"),
        ];
        for (mut req, code) in cases {
            let out = h.request(&mut req, &mut testing::ctx());
            let answer = out.answer().expect("refused");
            assert_eq!(answer.status, 401);
            assert_eq!(answer.code, Some(code));
        }
    }

    #[test]
    fn config_errors_name_the_key() {
        let errs = testing::build(build, "keys = { short = \"tiny\" }\nmax_skew_seconds = 0")
            .err()
            .unwrap();
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["keys.short", "max_skew_seconds"]);
        assert!(!errs.iter().any(|e| e.message.contains("tiny")));
    }
}

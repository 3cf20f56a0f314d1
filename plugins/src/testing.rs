//! A harness that runs plugin hooks on a request head, without a server: for a plugin's unit
//! tests.
//!
//! ```
//! use tollgate_plugins::prelude::*;
//! use tollgate_plugins::testing::{self, Outcome};
//!
//! let plugin = testing::build(tollgate_plugins::headers::build, r#"
//!     request.set = { "x-team" = "blue" }
//! "#).unwrap();
//! let harness = testing::Harness::new([plugin]);
//! let mut req = testing::request("GET", "/", &[("host", "example.test")]);
//! let mut ctx = testing::ctx();
//! assert!(matches!(harness.request(&mut req, &mut ctx), Outcome::Upstream));
//! assert_eq!(req.headers["x-team"], "blue");
//! ```

use crate::build_ctx::BuildCtx;
use crate::chain::{self, Input, Stop};
use crate::config_error::ConfigError;
use crate::context::{RequestCtx, RequestId};
use crate::plugin::Plugin;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

/// A plugin constructor ([`crate::Constructor`], spelled out: importing the registry, which
/// imports every plugin, would make each plugin's unit tests an import cycle).
type Constructor = fn(&toml::Value, &BuildCtx) -> Result<Arc<dyn Plugin>, Vec<ConfigError>>;

/// Build a plugin from its TOML table (the keys after `name`), as the config compiler does,
/// with no consumers and a state of its own.
pub fn build(constructor: Constructor, table: &str) -> Result<Arc<dyn Plugin>, Vec<ConfigError>> {
    build_with(constructor, table, &BuildCtx::default())
}

/// [`build`] with a given context (consumers, scope, state).
pub fn build_with(
    constructor: Constructor,
    table: &str,
    bctx: &BuildCtx,
) -> Result<Arc<dyn Plugin>, Vec<ConfigError>> {
    let value = table
        .parse::<toml::Table>()
        .map(toml::Value::Table)
        .map_err(|e| {
            vec![ConfigError::new(
                "",
                format!("invalid TOML: {}", e.message()),
            )]
        })?;
    constructor(&value, bctx)
}

/// A request head: `method`, `path` (with its query) and `headers` in order.
///
/// # Panics
/// On a method, path or header the HTTP types refuse (a test's own input).
pub fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> RequestHeader {
    let mut req = RequestHeader::build(method, path.as_bytes(), None)
        .unwrap_or_else(|e| panic!("bad test request {method} {path}: {e}"));
    for (name, value) in headers {
        req.append_header(name.to_string(), *value)
            .unwrap_or_else(|e| panic!("bad test header {name}: {e}"));
    }
    req
}

/// A response head with `status` and `headers`.
///
/// # Panics
/// On a status or header the HTTP types refuse.
pub fn response(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
    let mut resp = ResponseHeader::build(status, None)
        .unwrap_or_else(|e| panic!("bad test status {status}: {e}"));
    for (name, value) in headers {
        resp.append_header(name.to_string(), *value)
            .unwrap_or_else(|e| panic!("bad test header {name}: {e}"));
    }
    resp
}

/// A request context on route `test` from client 127.0.0.1.
pub fn ctx() -> RequestCtx {
    RequestCtx::new(
        Arc::from("test"),
        Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        RequestId::generate(),
    )
}

/// What the request phase decided.
pub enum Outcome {
    /// Every plugin let the request through; the upstream-request hooks have run on it.
    Upstream,
    /// A plugin answered.
    Answered(Stop),
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Upstream => f.write_str("Upstream"),
            Outcome::Answered(s) => write!(f, "Answered({} by {})", s.answer.status, s.plugin),
        }
    }
}

impl Outcome {
    /// The answer, when a plugin answered.
    pub fn answer(&self) -> Option<&crate::answer::Answer> {
        match self {
            Outcome::Answered(s) => Some(&s.answer),
            Outcome::Upstream => None,
        }
    }
}

/// A chain of plugins run the way the gateway runs a route's chain: sorted by phase (stable,
/// so the order within a phase is kept), authentication plugins as alternatives.
pub struct Harness {
    chain: Vec<Arc<dyn Plugin>>,
    runtime: tokio::runtime::Runtime,
}

impl Harness {
    /// A chain of `plugins`.
    ///
    /// # Panics
    /// If a Tokio runtime cannot be made.
    pub fn new(plugins: impl IntoIterator<Item = Arc<dyn Plugin>>) -> Self {
        let mut chain: Vec<_> = plugins.into_iter().collect();
        chain.sort_by_key(|p| p.phase());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot start a runtime for the test: {e}"));
        Harness { chain, runtime }
    }

    /// The request phase (`request`/`authenticate` hooks), then, when no plugin answered,
    /// the `upstream_request` hooks on `req` as the gateway would send it.
    pub fn request(&self, req: &mut RequestHeader, ctx: &mut RequestCtx) -> Outcome {
        let stop = self
            .runtime
            .block_on(chain::run(&self.chain, Input::Head(req), ctx));
        match stop {
            Some(stop) => Outcome::Answered(stop),
            None => {
                for p in &self.chain {
                    p.upstream_request(req, ctx);
                }
                Outcome::Upstream
            }
        }
    }

    /// The `response` hooks on a response head.
    pub fn response(&self, resp: &mut ResponseHeader, ctx: &mut RequestCtx) {
        for p in &self.chain {
            p.response(resp, ctx);
        }
    }

    /// The `response_body` hooks on a body arriving in `chunks`; returns what the client
    /// would receive.
    pub fn response_body(&self, chunks: &[&[u8]], ctx: &mut RequestCtx) -> Vec<u8> {
        let mut out = Vec::new();
        let last = chunks.len().saturating_sub(1);
        let mut run = |chunk: Option<Bytes>, end: bool, ctx: &mut RequestCtx| {
            let mut body = chunk;
            for p in self.chain.iter().filter(|p| p.wants_response_body()) {
                p.response_body(&mut body, end, ctx);
            }
            if let Some(b) = body {
                out.extend_from_slice(&b);
            }
        };
        if chunks.is_empty() {
            run(None, true, ctx);
        }
        for (i, c) in chunks.iter().enumerate() {
            run(Some(Bytes::copy_from_slice(c)), i == last, ctx);
        }
        out
    }

    /// The `log` hooks, with the final status.
    pub fn log(&self, status: u16, ctx: &mut RequestCtx) {
        for p in &self.chain {
            p.log(status, ctx);
        }
    }

    /// Run a future on the harness's runtime (for a plugin's own async helpers).
    pub fn block_on<F: std::future::Future>(&self, fut: F) -> F::Output {
        self.runtime.block_on(fut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumer::Consumers;
    use crate::{acl, key_auth, rate_limit};

    fn consumers() -> BuildCtx {
        let table: toml::Value = toml::from_str(
            r#"
            [[consumers]]
            username = "alice"
            groups = ["staff"]
            keys = ["alice-key-0001"]

            [[consumers]]
            username = "bob"
            keys = ["bob-key-00000001"]
            "#,
        )
        .unwrap();
        BuildCtx {
            consumers: Arc::new(Consumers::build(table.get("consumers"), &[]).unwrap()),
            ..BuildCtx::default()
        }
    }

    /// The built-in chain key_auth → acl → rate_limit, through the harness: the phases run in
    /// order whatever order they are given in, and each one's answer is the documented one.
    #[test]
    fn a_builtin_chain_runs_in_phase_order() {
        let ctx = consumers();
        let h = Harness::new([
            build_with(
                rate_limit::build,
                "minute = 2\nlimit_by = \"consumer\"",
                &ctx,
            )
            .unwrap(),
            build_with(acl::build, "allow = [\"staff\"]", &ctx).unwrap(),
            build_with(key_auth::build, "", &ctx).unwrap(),
        ]);
        let run = |key: Option<&str>| {
            let headers: Vec<(&str, &str)> = key.map(|k| ("x-api-key", k)).into_iter().collect();
            let mut req = request("GET", "/", &headers);
            let mut c = self::ctx();
            let out = h.request(&mut req, &mut c);
            let mut resp = response(200, &[]);
            h.response(&mut resp, &mut c);
            let who = c.identity.map(|i| i.consumer.username.clone());
            (out.answer().map(|a| (a.status.as_u16(), a.code)), who, resp)
        };
        assert_eq!(run(None).0, Some((401, Some("missing_credentials"))));
        assert_eq!(run(Some("bob-key-00000001")).0.map(|a| a.0), Some(403));
        let (answer, who, resp) = run(Some("alice-key-0001"));
        assert_eq!(answer, None);
        // The identity is the context's; the gateway turns it into X-Consumer-* headers.
        assert_eq!(who.as_deref(), Some("alice"));
        assert_eq!(resp.headers["x-ratelimit-limit"], "2");
        assert_eq!(run(Some("alice-key-0001")).0, None);
        assert_eq!(
            run(Some("alice-key-0001")).0,
            Some((429, Some("rate_limited")))
        );
    }

    #[test]
    fn config_errors_come_back_with_paths() {
        let errs = build(rate_limit::build, "minute = \"many\"")
            .err()
            .expect("refused");
        assert!(errs.iter().any(|e| e.path == "minute"), "{errs:?}");
        let errs = build(rate_limit::build, "not toml [")
            .err()
            .expect("refused");
        assert!(errs[0].message.starts_with("invalid TOML"), "{errs:?}");
    }

    #[test]
    fn response_body_hooks_see_every_chunk() {
        let h =
            Harness::new([build(crate::headers::build, "response.set = { a = \"1\" }").unwrap()]);
        let mut c = ctx();
        // No plugin wants bodies: the chunks pass as they are.
        assert_eq!(h.response_body(&[b"ab", b"c"], &mut c), b"abc");
        assert_eq!(h.response_body(&[], &mut c), b"");
    }
}

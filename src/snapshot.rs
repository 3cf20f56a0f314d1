//! The compiled, immutable form of a config that serves requests. One `Arc<Snapshot>` is
//! loaded per request and kept to its end, so a reload never changes a request half-way.

use crate::config::schema::ServerConfig;
use crate::router::{PathMatch, Router};
use crate::upstream::UpstreamPool;
use regex::Regex;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;
use tollgate_plugins::chain::RouteChain;

/// How the path sent upstream is derived from the client's.
#[derive(Debug, Clone, PartialEq)]
pub enum PathRewrite {
    /// Send the path unchanged.
    Keep,
    /// Remove the matched prefix.
    StripPrefix,
    /// Replace the matched part (prefix, exact path, or whole path for regex with captures).
    Replace(String),
}

/// Route-level timeouts that override the upstream's.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timeouts {
    /// Connect timeout.
    pub connect: Option<Duration>,
    /// Read timeout.
    pub read: Option<Duration>,
    /// Write timeout.
    pub write: Option<Duration>,
}

/// When to try another backend after an attempt got an answer or timed out.
#[derive(Debug, Clone, Default)]
pub struct RetryPolicy {
    /// Statuses that trigger a retry (idempotent methods only).
    pub on_status: Vec<u16>,
    /// Read timeouts trigger a retry (idempotent methods only).
    pub on_timeout: bool,
    /// Budget of such retries per request.
    pub max: u32,
    /// Overall deadline including retries.
    pub deadline: Option<Duration>,
}

/// A compiled route.
pub struct Route {
    /// Route name.
    pub name: Arc<str>,
    /// Where requests go; `None` when a plugin answers.
    pub upstream: Option<Arc<UpstreamPool>>,
    /// Plugins in phase order, global ones merged in, and the chains of consumers whose
    /// plugins change it.
    pub chain: RouteChain,
    /// Path rewrite.
    pub rewrite: PathRewrite,
    /// Keep the client's Host header.
    pub preserve_host: bool,
    /// Add `X-Forwarded-*` headers upstream.
    pub forwarded_headers: bool,
    /// Keep request headers with `_` in their name.
    pub allow_underscore_headers: bool,
    /// Send `X-Request-Id` upstream and on the response.
    pub request_id: bool,
    /// Timeout overrides.
    pub timeouts: Timeouts,
    /// Duration, overhead and byte metrics of this route, resolved at compile time.
    pub metrics: crate::metrics::RouteMetrics,
    /// Request counters for this route, resolved at compile time.
    pub counters: crate::metrics::RouteCounters,
    /// Retry policy for answered or timed-out attempts.
    pub retry: RetryPolicy,
    /// Traffic split rules, when configured.
    pub split: Option<crate::split::Split>,
    /// Some plugin of the chain looks at request body chunks.
    pub body_hooks: bool,
    /// Some plugin of the chain looks at response body chunks
    /// ([`Plugin::wants_response_body`](tollgate_plugins::Plugin::wants_response_body)); a
    /// route without one passes bodies through untouched.
    pub response_body_hooks: bool,
    /// Some plugin of the route's chains has an async hook on the upstream's response head
    /// (`ext_proc`).
    pub upstream_response_hooks: bool,
    /// The chain has `cors`: a preflight is answered even when `methods` leaves out
    /// `OPTIONS`.
    pub cors: bool,
    /// Largest body read to match split rules on JSON fields.
    pub split_body_max_bytes: usize,
    /// How the request body is received, when configured.
    pub request_body: Option<crate::config::schema::RequestBodySection>,
    /// The route's cache policy, when it has the `cache` plugin.
    pub cache: Option<Arc<tollgate_plugins::cache::CachePolicy>>,
    /// Model fallback, when the route lists `fallback` targets.
    pub fallback: Option<crate::fallback::Fallback>,
    /// Largest body read ahead for body routing and fallback (`max_body_bytes`).
    pub body_max_bytes: usize,
    /// What a body over `body_max_bytes` gets.
    pub on_body_over_limit: crate::config::schema::BodyOverLimit,
    /// `first_byte_timeout_ms` / `idle_timeout_ms`, when either is set.
    pub stream_timeouts: Option<StreamTimeouts>,
}

/// A route's timeouts on the upstream's response stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamTimeouts {
    /// From the request's last byte to the response's first.
    pub first_byte: Option<std::time::Duration>,
    /// Between two reads of the response once it began.
    pub idle: Option<std::time::Duration>,
}

/// A whole compiled config.
pub struct Snapshot {
    /// The `[server]` section, split by when changes take effect.
    pub server: ServerConfig,
    /// The route table.
    pub router: Router,
    /// Routes by index (the router's `Entry::route`); a request keeps its route's `Arc`.
    pub routes: Vec<Arc<Route>>,
    /// Every upstream pool (health checks and metrics walk these).
    pub upstreams: Vec<Arc<UpstreamPool>>,
    /// `[server] trusted_proxies`, parsed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Certificates of the HTTPS listeners, by listen address.
    pub certs: std::collections::HashMap<String, crate::certs::CertSet>,
    /// Files besides the config whose change means a reload (certificates and keys).
    pub watched_files: Vec<std::path::PathBuf>,
    /// `[tracing]`, checked (read when the process starts; see [`crate::trace`]).
    pub tracing: Option<crate::config::tracing::TracingSection>,
    /// The text this snapshot was compiled from and its file name, to compile it again
    /// when a DNS answer changes.
    pub source: Option<Arc<(String, String)>>,
}

/// Apply `rewrite` to `path` matched by `matcher`; `None` means unchanged.
pub fn rewrite_path<'a>(
    rewrite: &PathRewrite,
    matcher: &PathMatch,
    path: &'a str,
) -> Option<Cow<'a, str>> {
    match (rewrite, matcher) {
        (PathRewrite::Keep, _) => None,
        (PathRewrite::StripPrefix, PathMatch::Prefix(p)) => {
            let rest = &path[p.len().min(path.len())..];
            Some(if rest.is_empty() {
                Cow::Borrowed("/")
            } else {
                Cow::Borrowed(rest)
            })
        }
        (PathRewrite::StripPrefix, _) => None,
        (PathRewrite::Replace(to), PathMatch::Prefix(p)) => {
            let rest = &path[p.len().min(path.len())..];
            let to = to.trim_end_matches('/');
            let mut s = String::with_capacity(to.len() + rest.len() + 1);
            s.push_str(to);
            s.push_str(rest);
            if s.is_empty() {
                s.push('/');
            }
            Some(Cow::Owned(s))
        }
        (PathRewrite::Replace(to), PathMatch::Exact(_)) => Some(Cow::Owned(to.clone())),
        (PathRewrite::Replace(to), PathMatch::Regex(re)) => Some(regex_rewrite(re, path, to)),
    }
}

fn regex_rewrite<'a>(re: &Regex, path: &str, template: &str) -> Cow<'a, str> {
    match re.captures(path) {
        Some(caps) => {
            let mut out = String::with_capacity(template.len() + path.len());
            caps.expand(template, &mut out);
            Cow::Owned(out)
        }
        None => Cow::Owned(template.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites() {
        let prefix = PathMatch::Prefix("/api".into());
        assert_eq!(
            rewrite_path(&PathRewrite::StripPrefix, &prefix, "/api/users").unwrap(),
            "/users"
        );
        assert_eq!(
            rewrite_path(&PathRewrite::StripPrefix, &prefix, "/api").unwrap(),
            "/"
        );
        assert_eq!(
            rewrite_path(&PathRewrite::Replace("/v2/".into()), &prefix, "/api/x").unwrap(),
            "/v2/x"
        );
        let re = PathMatch::Regex(Regex::new(r"^/users/(?P<id>\d+)/(\w+)$").unwrap());
        assert_eq!(
            rewrite_path(
                &PathRewrite::Replace("/u/${id}/$2".into()),
                &re,
                "/users/42/posts"
            )
            .unwrap(),
            "/u/42/posts"
        );
        assert!(rewrite_path(&PathRewrite::Keep, &prefix, "/api").is_none());
    }
}

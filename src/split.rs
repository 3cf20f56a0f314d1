//! Traffic split (canary): per route, rules tried in order; the first whose conditions hold
//! picks an upstream among its weighted targets.

use crate::config::schema::SplitRuleSection;
use crate::router::ValueMatch;
use crate::upstream::{smooth_wheel, UpstreamPool};
use http::HeaderName;
use pingora::http::RequestHeader;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tollgate_plugins::req::{cookie, query_values};
use tollgate_plugins::ConfigError;

/// A compiled rule.
pub struct Rule {
    headers: Vec<(HeaderName, ValueMatch)>,
    cookies: Vec<(String, ValueMatch)>,
    query: Vec<(String, ValueMatch)>,
    /// `(JSON pointer, predicate)` on the request body.
    body: Vec<(String, ValueMatch)>,
    targets: Vec<Arc<UpstreamPool>>,
    /// Target indexes in smooth weighted order: each block of `wheel.len()` requests gets
    /// exactly the weights' shares.
    wheel: Vec<u32>,
    counter: AtomicU64,
}

/// The compiled rules of a route.
pub struct Split {
    rules: Vec<Rule>,
    /// Some rule looks at the body, so it must be read before choosing.
    pub needs_body: bool,
}

impl Split {
    /// Compile `rules` (at `at` = `routes[i]`) against the known upstreams.
    pub fn compile(
        rules: &[SplitRuleSection],
        at: &str,
        upstreams: &HashMap<String, Arc<UpstreamPool>>,
        errors: &mut Vec<ConfigError>,
    ) -> Option<Split> {
        if rules.is_empty() {
            return None;
        }
        let mut out = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            let rat = format!("{at}.split[{i}]");
            let when = r.when.clone().unwrap_or_default();
            let mut pred = |map: &std::collections::BTreeMap<String, String>, kind: &str| {
                let mut v = Vec::new();
                for (k, spec) in map {
                    match ValueMatch::parse(spec) {
                        Ok(m) => v.push((k.clone(), m)),
                        Err(e) => {
                            errors.push(ConfigError::new(format!("{rat}.match.{kind}.{k}"), e))
                        }
                    }
                }
                v
            };
            let headers_raw = pred(&when.headers, "headers");
            let cookies = pred(&when.cookies, "cookies");
            let query = pred(&when.query, "query");
            let body: Vec<(String, ValueMatch)> = pred(&when.body, "body")
                .into_iter()
                .map(|(k, m)| (format!("/{}", k.replace('.', "/")), m))
                .collect();
            let mut headers = Vec::new();
            for (k, m) in headers_raw {
                match HeaderName::from_bytes(k.as_bytes()) {
                    Ok(h) => headers.push((h, m)),
                    Err(_) => errors.push(ConfigError::new(
                        format!("{rat}.match.headers.{k}"),
                        "not a header name",
                    )),
                }
            }
            if r.targets.is_empty() {
                errors.push(ConfigError::new(
                    format!("{rat}.targets"),
                    "a rule needs at least one target",
                ));
            }
            let mut targets = Vec::new();
            let mut weights = Vec::new();
            for (j, t) in r.targets.iter().enumerate() {
                match upstreams.get(&t.upstream) {
                    Some(u) if t.weight > 0 => {
                        targets.push(u.clone());
                        weights.push(t.weight as usize);
                    }
                    Some(_) => errors.push(ConfigError::new(
                        format!("{rat}.targets[{j}].weight"),
                        "must be at least 1",
                    )),
                    None => errors.push(ConfigError::new(
                        format!("{rat}.targets[{j}].upstream"),
                        format!("no upstream named {:?}", t.upstream),
                    )),
                }
            }
            out.push(Rule {
                headers,
                cookies,
                query,
                body,
                targets,
                wheel: smooth_wheel(&weights),
                counter: AtomicU64::new(0),
            });
        }
        Some(Split {
            needs_body: out.iter().any(|r| !r.body.is_empty()),
            rules: out,
        })
    }

    /// Does some rule apply regardless of the request?
    pub fn has_catch_all(&self) -> bool {
        self.rules.iter().any(|r| {
            r.headers.is_empty() && r.cookies.is_empty() && r.query.is_empty() && r.body.is_empty()
        })
    }

    /// The upstream for this request, if a rule applies. `body` is the parsed JSON body
    /// when [`Split::needs_body`] and the request had one.
    pub fn choose(
        &self,
        req: &RequestHeader,
        body: Option<&serde_json::Value>,
    ) -> Option<Arc<UpstreamPool>> {
        let rule = self.rules.iter().find(|r| r.matches(req, body))?;
        if rule.wheel.is_empty() {
            return None;
        }
        // Exact weights over every block of `wheel.len()` requests, spread out (nginx's
        // smooth weighted round robin).
        let n = rule.counter.fetch_add(1, Ordering::Relaxed) as usize;
        let i = rule.wheel[n % rule.wheel.len()] as usize;
        rule.targets.get(i).cloned()
    }
}

impl Rule {
    fn matches(&self, req: &RequestHeader, body: Option<&serde_json::Value>) -> bool {
        self.headers.iter().all(|(h, m)| {
            req.headers
                .get_all(h)
                .iter()
                .any(|v| m.matches(v.as_bytes()))
        }) && self
            .cookies
            .iter()
            .all(|(c, m)| cookie(req, c).is_some_and(|v| m.matches(v)))
            && self.query.iter().all(|(q, m)| {
                query_values(req.uri.query().unwrap_or(""), q).any(|v| m.matches(v.as_bytes()))
            })
            && self.body.iter().all(|(pointer, m)| {
                body.and_then(|b| b.pointer(pointer))
                    .is_some_and(|v| match v {
                        serde_json::Value::String(s) => m.matches(s.as_bytes()),
                        other => m.matches(other.to_string().as_bytes()),
                    })
            })
    }
}

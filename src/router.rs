//! Request → route matching, compiled once per config.
//!
//! Each `(route, host, path)` combination becomes one entry; entries are sorted once so that
//! the first entry that matches is the answer:
//! 1. higher `priority` first;
//! 2. host specificity: exact host, then wildcard (longer suffix first), then any host;
//! 3. path specificity: exact, then prefix (longer first), then regex;
//! 4. file order.
//!
//! Matching walks the entries and compares borrowed bytes; it allocates nothing.

use crate::config::schema::RouteSection;
use http::{HeaderName, Method};
use pingora::http::RequestHeader;
use regex::Regex;
use std::cmp::Reverse;
use tollgate_plugins::req::query_values;
use tollgate_plugins::ConfigError;

/// How a route's host is matched.
#[derive(Debug, Clone)]
enum HostMatch {
    Any,
    /// Lower-case host.
    Exact(String),
    /// Lower-case suffix including the leading dot (`.example.com`).
    Wildcard(String),
}

impl HostMatch {
    fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Any => true,
            HostMatch::Exact(h) => host.eq_ignore_ascii_case(h),
            HostMatch::Wildcard(suffix) => {
                host.len() > suffix.len()
                    && host.as_bytes()[host.len() - suffix.len()..]
                        .eq_ignore_ascii_case(suffix.as_bytes())
            }
        }
    }

    fn rank(&self) -> (u8, Reverse<usize>) {
        match self {
            HostMatch::Exact(_) => (0, Reverse(0)),
            HostMatch::Wildcard(s) => (1, Reverse(s.len())),
            HostMatch::Any => (2, Reverse(0)),
        }
    }
}

/// How a route's path is matched.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// The whole path equals this.
    Exact(String),
    /// Segment-aware prefix, stored without a trailing slash (`/` is stored as empty).
    Prefix(String),
    /// Regex on the whole path; captures are usable in `rewrite`.
    Regex(Regex),
}

impl PathMatch {
    fn parse(spec: &str) -> Result<Self, String> {
        if let Some(p) = spec.strip_prefix('=') {
            if !p.starts_with('/') {
                return Err(format!("exact path {spec:?} must start with '/' after '='"));
            }
            Ok(PathMatch::Exact(p.to_string()))
        } else if let Some(re) = spec.strip_prefix('~') {
            Regex::new(re)
                .map(PathMatch::Regex)
                .map_err(|e| format!("invalid regex: {e}"))
        } else if spec.starts_with('/') {
            Ok(PathMatch::Prefix(spec.trim_end_matches('/').to_string()))
        } else {
            Err(format!(
                "path {spec:?} must be \"/prefix\", \"=/exact\" or \"~regex\""
            ))
        }
    }

    /// Does `path` (without query) match?
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => {
                path.starts_with(p.as_str())
                    && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/')
            }
            PathMatch::Regex(re) => re.is_match(path),
        }
    }

    fn rank(&self) -> (u8, Reverse<usize>) {
        match self {
            PathMatch::Exact(_) => (0, Reverse(0)),
            PathMatch::Prefix(p) => (1, Reverse(p.len())),
            PathMatch::Regex(_) => (2, Reverse(0)),
        }
    }
}

/// A predicate on a header, query, cookie or body-field value: exact, `*` (present) or
/// `~regex`.
#[derive(Debug, Clone)]
pub enum ValueMatch {
    /// `*`: the value is present, whatever it is.
    Present,
    /// The value equals this.
    Exact(String),
    /// `~regex`: the value matches.
    Regex(Regex),
}

impl ValueMatch {
    /// Parse `value`, `*` or `~regex`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        if spec == "*" {
            Ok(ValueMatch::Present)
        } else if let Some(re) = spec.strip_prefix('~') {
            Regex::new(re)
                .map(ValueMatch::Regex)
                .map_err(|e| format!("invalid regex: {e}"))
        } else {
            Ok(ValueMatch::Exact(spec.to_string()))
        }
    }

    /// Does `value` satisfy the predicate?
    pub fn matches(&self, value: &[u8]) -> bool {
        match self {
            ValueMatch::Present => true,
            ValueMatch::Exact(v) => value == v.as_bytes(),
            ValueMatch::Regex(re) => std::str::from_utf8(value).is_ok_and(|s| re.is_match(s)),
        }
    }
}

/// One `(route, host, path)` combination.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Index of the route in the config (and in the compiled route table).
    pub route: usize,
    host: HostMatch,
    /// The path matcher that matched; rewrites use it.
    pub path: PathMatch,
    methods: Vec<Method>,
    headers: Vec<(HeaderName, ValueMatch)>,
    query: Vec<(String, ValueMatch)>,
}

impl Entry {
    fn matches_except_method(&self, host: &str, path: &str, req: &RequestHeader) -> bool {
        self.host.matches(host)
            && self.path.matches(path)
            && self.headers.iter().all(|(name, m)| {
                req.headers
                    .get_all(name)
                    .iter()
                    .any(|v| m.matches(v.as_bytes()))
            })
            && self.query.iter().all(|(name, m)| {
                query_values(req.uri.query().unwrap_or(""), name).any(|v| m.matches(v.as_bytes()))
            })
    }

    fn method_ok(&self, method: &Method) -> bool {
        self.methods.is_empty() || self.methods.contains(method)
    }
}

/// What the router decided.
#[derive(Debug)]
pub enum Match {
    /// The entry with this index ([`Router::entry`]) matched.
    Found(usize),
    /// Some route matches everything but the method; these methods would have matched.
    MethodNotAllowed(Vec<Method>),
    /// Nothing matched.
    NotFound,
}

/// The compiled route table.
#[derive(Debug, Default)]
pub struct Router {
    entries: Vec<Entry>,
}

impl Router {
    /// Compile the routes' match rules. `routes` pairs each route with its index in the file
    /// (for error paths); an entry's `route` is the route's position in `routes`.
    pub fn compile(routes: &[(usize, RouteSection)]) -> Result<Self, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut entries = Vec::new();
        let mut order = Vec::new();
        for (ri, (file_index, r)) in routes.iter().enumerate() {
            let at = |field: &str| format!("routes[{file_index}].{field}");
            let mut hosts = Vec::new();
            for (i, h) in r.hosts.iter().enumerate() {
                let h = h.to_ascii_lowercase();
                if let Some(suffix) = h.strip_prefix("*.") {
                    if suffix.is_empty() || suffix.contains('*') {
                        errors.push(ConfigError::new(
                            at(&format!("hosts[{i}]")),
                            "a wildcard host is \"*.example.com\"",
                        ));
                    }
                    hosts.push(HostMatch::Wildcard(format!(".{suffix}")));
                } else if h.is_empty() || h.contains('*') || h.contains('/') {
                    errors.push(ConfigError::new(
                        at(&format!("hosts[{i}]")),
                        format!(
                            "{h:?} is not a host name (\"api.example.com\" or \"*.example.com\")"
                        ),
                    ));
                } else {
                    hosts.push(HostMatch::Exact(h));
                }
            }
            if hosts.is_empty() {
                hosts.push(HostMatch::Any);
            }
            let mut paths = Vec::new();
            for (i, p) in r.paths.iter().enumerate() {
                match PathMatch::parse(p) {
                    Ok(m) => paths.push(m),
                    Err(e) => errors.push(ConfigError::new(at(&format!("paths[{i}]")), e)),
                }
            }
            if r.paths.is_empty() {
                paths.push(PathMatch::Prefix(String::new()));
            }
            let mut methods = Vec::new();
            for (i, m) in r.methods.iter().enumerate() {
                match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                    Ok(m) => methods.push(m),
                    Err(_) => errors.push(ConfigError::new(
                        at(&format!("methods[{i}]")),
                        format!("{m:?} is not an HTTP method"),
                    )),
                }
            }
            let mut headers = Vec::new();
            for (k, v) in &r.headers {
                match (HeaderName::from_bytes(k.as_bytes()), ValueMatch::parse(v)) {
                    (Ok(n), Ok(m)) => headers.push((n, m)),
                    (Err(_), _) => errors.push(ConfigError::new(
                        at(&format!("headers.{k}")),
                        "not a valid header name",
                    )),
                    (_, Err(e)) => errors.push(ConfigError::new(at(&format!("headers.{k}")), e)),
                }
            }
            let mut query = Vec::new();
            for (k, v) in &r.query {
                match ValueMatch::parse(v) {
                    Ok(m) => query.push((k.clone(), m)),
                    Err(e) => errors.push(ConfigError::new(at(&format!("query.{k}")), e)),
                }
            }
            for host in &hosts {
                for (pi, path) in paths.iter().enumerate() {
                    order.push((Reverse(r.priority), host.rank(), path.rank(), ri, pi));
                    entries.push(Entry {
                        route: ri,
                        host: host.clone(),
                        path: path.clone(),
                        methods: methods.clone(),
                        headers: headers.clone(),
                        query: query.clone(),
                    });
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut indexed: Vec<_> = order.into_iter().zip(entries).collect();
        indexed.sort_by_key(|a| a.0);
        Ok(Router {
            entries: indexed.into_iter().map(|(_, e)| e).collect(),
        })
    }

    /// The entry at `index` (as returned in [`Match::Found`]).
    pub fn entry(&self, index: usize) -> &Entry {
        &self.entries[index]
    }

    /// The first entry that matches the request in everything but its method (for CORS
    /// preflights, which use `OPTIONS` on routes that may not list it).
    pub fn find_any_method(&self, host: &str, req: &RequestHeader) -> Option<usize> {
        let path = req.uri.path();
        self.entries
            .iter()
            .position(|e| e.matches_except_method(host, path, req))
    }

    /// Find the route for a request. `host` is the request's host without port.
    pub fn find(&self, host: &str, req: &RequestHeader) -> Match {
        let path = req.uri.path();
        for (i, e) in self.entries.iter().enumerate() {
            if e.method_ok(&req.method) && e.matches_except_method(host, path, req) {
                return Match::Found(i);
            }
        }
        // Slow path, only for requests that will get an error: is it only the method?
        let mut allowed: Vec<Method> = Vec::new();
        for e in &self.entries {
            if e.matches_except_method(host, path, req) {
                for m in &e.methods {
                    if !allowed.contains(m) {
                        allowed.push(m.clone());
                    }
                }
            }
        }
        if allowed.is_empty() {
            Match::NotFound
        } else {
            Match::MethodNotAllowed(allowed)
        }
    }
}

/// The host a request is for, without port or trailing dot.
pub use tollgate_plugins::req::host as request_host;

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, toml_src: &str) -> RouteSection {
        let mut v: toml::Table = toml::from_str(toml_src).unwrap();
        v.insert("name".into(), name.into());
        toml::Value::Table(v).try_into().unwrap()
    }

    fn indexed(routes: &[RouteSection]) -> Vec<(usize, RouteSection)> {
        routes.iter().cloned().enumerate().collect()
    }

    fn req(method: &str, host: &str, path: &str) -> RequestHeader {
        let mut r = RequestHeader::build(method, path.as_bytes(), None).unwrap();
        r.insert_header("host", host).unwrap();
        r
    }

    fn found(router: &Router, routes: &[RouteSection], r: &RequestHeader) -> Option<String> {
        match router.find(request_host(r), r) {
            Match::Found(i) => Some(routes[router.entry(i).route].name.clone()),
            _ => None,
        }
    }

    #[test]
    fn precedence() {
        let routes = vec![
            route("prefix", "paths = [\"/api\"]"),
            route("longer", "paths = [\"/api/v1\"]"),
            route("exact", "paths = [\"=/api/v1/ping\"]"),
            route("regex", "paths = [\"~^/api/v1/p.*$\"]"),
            route("wild", "hosts = [\"*.example.com\"]\npaths = [\"/\"]"),
            route("exacthost", "hosts = [\"a.example.com\"]\npaths = [\"/\"]"),
            route("prio", "paths = [\"/api/v1/pong\"]\npriority = 10"),
        ];
        let router = Router::compile(&indexed(&routes)).unwrap();
        let f = |m, h, p| found(&router, &routes, &req(m, h, p));
        assert_eq!(f("GET", "x", "/api/v1/ping").as_deref(), Some("exact"));
        assert_eq!(f("GET", "x", "/api/v1/pin").as_deref(), Some("longer"));
        assert_eq!(f("GET", "x", "/api/v2").as_deref(), Some("prefix"));
        assert_eq!(f("GET", "x", "/apix"), None);
        assert_eq!(f("GET", "x", "/api/v1/pong").as_deref(), Some("prio"));
        assert_eq!(
            f("GET", "b.example.com:8080", "/api").as_deref(),
            Some("wild")
        );
        assert_eq!(
            f("GET", "A.Example.com", "/api").as_deref(),
            Some("exacthost")
        );
        assert_eq!(f("GET", "example.com", "/zzz"), None);
    }

    #[test]
    fn methods_and_predicates() {
        let routes = vec![
            route("get", "paths = [\"/x\"]\nmethods = [\"GET\", \"head\"]"),
            route(
                "canary",
                "paths = [\"/y\"]\nheaders = { x-canary = \"1\" }\nquery = { v = \"~^[0-9]+$\" }",
            ),
        ];
        let router = Router::compile(&indexed(&routes)).unwrap();
        match router.find("h", &req("POST", "h", "/x")) {
            Match::MethodNotAllowed(m) => assert_eq!(m, vec![Method::GET, Method::HEAD]),
            other => panic!("{other:?}"),
        }
        let mut r = req("GET", "h", "/y?v=12&z");
        assert_eq!(found(&router, &routes, &r), None);
        r.insert_header("x-canary", "1").unwrap();
        assert_eq!(found(&router, &routes, &r).as_deref(), Some("canary"));
        let mut r = req("GET", "h", "/y?v=abc");
        r.insert_header("x-canary", "1").unwrap();
        assert_eq!(found(&router, &routes, &r), None);
    }

    #[test]
    fn bad_specs_are_errors() {
        let routes = vec![route(
            "bad",
            "paths = [\"api\", \"~(\"]\nhosts = [\"a*b\"]\nmethods = [\"G T\"]",
        )];
        let errs = Router::compile(&indexed(&routes)).unwrap_err();
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "routes[0].hosts[0]",
                "routes[0].paths[0]",
                "routes[0].paths[1]",
                "routes[0].methods[0]"
            ]
        );
    }
}

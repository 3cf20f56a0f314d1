//! Checks the sections of a parsed config and compiles them into a [`Snapshot`].

use super::consumer_plugins::ConsumerPlugins;
use super::plugin_list::{build_globals, plugin_entries};
use super::schema::{ConsumerGroupSection, RouteSection, ServerSection, UpstreamSection};
use crate::retained::Retained;
use crate::router::Router;
use crate::snapshot::{PathRewrite, RetryPolicy, Route, Snapshot, StreamTimeouts, Timeouts};
use crate::upstream::UpstreamPool;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tollgate_plugins::chain::{Plugins, RouteChain};
use tollgate_plugins::net::parse_nets;
use tollgate_plugins::{
    parse_config_all, BuildCtx, ConfigError, Consumers, Phase, Plugin, Registry,
};

/// The longest `fallback` list (each target may cost a full upstream attempt).
const MAX_FALLBACK_TARGETS: usize = 8;

const TOP_LEVEL: &[&str] = &[
    "server",
    "upstreams",
    "consumers",
    "consumer_groups",
    "routes",
    "plugins",
    "tracing",
];

/// Compile a parsed (and env-expanded) config. All errors are returned together. What must
/// outlive a reload (pools, plugin state) is taken from `retained`.
pub fn compile(
    root: &toml::Value,
    registry: &Registry,
    retained: &Retained,
) -> Result<Snapshot, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let empty = toml::Table::new();
    let table = root.as_table().unwrap_or(&empty);
    for key in table.keys() {
        if !TOP_LEVEL.contains(&key.as_str()) {
            errors.push(ConfigError::new(
                key.as_str(),
                format!(
                    "unknown section `{key}`, expected one of: {}",
                    TOP_LEVEL.join(", ")
                ),
            ));
        }
    }

    let server = match table.get("server") {
        Some(v) => match parse_config_all::<ServerSection>(v) {
            Ok(s) => {
                check_server(&s, &mut errors);
                s
            }
            Err(errs) => {
                errors.extend(errs.into_iter().map(|e| e.under("server")));
                ServerSection::default()
            }
        },
        None => ServerSection::default(),
    };

    let mut resolvers = Vec::new();
    for (i, r) in server.resolvers.iter().enumerate() {
        match r.parse::<SocketAddr>() {
            Ok(a) => resolvers.push(a),
            Err(_) => errors.push(ConfigError::new(
                format!("server.resolvers[{i}]"),
                format!("{r:?} is not an \"ip:port\" address"),
            )),
        }
    }
    retained.dns.set_servers(resolvers);

    let upstream_sections: Vec<(usize, UpstreamSection)> =
        parse_array(table.get("upstreams"), "upstreams", &mut errors);
    let mut upstreams: HashMap<String, Arc<UpstreamPool>> = HashMap::new();
    let mut upstream_list = Vec::new();
    for (i, sec) in &upstream_sections {
        let at = format!("upstreams[{i}]");
        if upstreams.contains_key(&sec.name) {
            errors.push(ConfigError::new(
                format!("{at}.name"),
                format!("duplicate upstream name {:?}", sec.name),
            ));
            continue;
        }
        match retained.upstreams.get_or_build(sec, &retained.dns) {
            Ok(pool) => {
                upstreams.insert(sec.name.clone(), pool.clone());
                upstream_list.push(pool);
            }
            Err(errs) => errors.extend(errs.into_iter().map(|e| e.under(&at))),
        }
    }

    let group_sections: Vec<(usize, ConsumerGroupSection)> =
        parse_array(table.get("consumer_groups"), "consumer_groups", &mut errors);
    let plugin_groups: Vec<String> = group_sections
        .iter()
        .filter(|(_, g)| !g.plugins.is_empty())
        .map(|(_, g)| g.name.clone())
        .collect();
    let consumers = match Consumers::build(table.get("consumers"), &plugin_groups) {
        Ok(c) => c,
        Err(errs) => {
            errors.extend(errs);
            Consumers::default()
        }
    };
    let build_ctx = BuildCtx {
        consumers: Arc::new(consumers),
        scope: "global".to_string(),
        state: retained.plugins.clone(),
    };
    let globals = build_globals(table.get("plugins"), registry, &build_ctx, &mut errors);
    let consumer_plugins = ConsumerPlugins::build(
        &group_sections,
        table.get("consumers"),
        &build_ctx.consumers,
        registry,
        &globals,
        &build_ctx,
        &mut errors,
    );
    let mut reported = BTreeSet::new();

    let route_sections: Vec<(usize, RouteSection)> =
        parse_array(table.get("routes"), "routes", &mut errors);
    if route_sections.is_empty() && !errors.iter().any(|e| e.path.starts_with("routes")) {
        errors.push(ConfigError::new(
            "routes",
            "at least one [[routes]] entry is needed",
        ));
    }
    let mut routes = Vec::new();
    let mut names = HashMap::new();
    for (i, r) in &route_sections {
        let at = format!("routes[{i}]");
        if names.insert(r.name.clone(), *i).is_some() {
            errors.push(ConfigError::new(
                format!("{at}.name"),
                format!("duplicate route name {:?}", r.name),
            ));
        }
        if let Some(route) = compile_route(
            r,
            &at,
            &upstreams,
            &RoutePlugins {
                registry,
                globals: &globals,
                consumers: &consumer_plugins,
                ctx: &build_ctx,
            },
            &mut reported,
            &mut errors,
        ) {
            routes.push(Arc::new(route));
        }
    }
    // Every route that parsed is checked, so its match-rule errors show with the others.
    let router = match Router::compile(&route_sections) {
        Ok(r) => r,
        Err(errs) => {
            errors.extend(errs);
            Router::default()
        }
    };
    let mut certs = HashMap::new();
    let mut watched_files = Vec::new();
    for (i, t) in server.tls.iter().enumerate() {
        if let Some(set) = crate::certs::CertSet::load(t, &format!("server.tls[{i}]"), &mut errors)
        {
            certs.insert(t.listen.clone(), set);
        }
        for f in std::iter::once((&t.cert, &t.key)).chain(t.sni.iter().map(|s| (&s.cert, &s.key))) {
            watched_files.push(std::path::PathBuf::from(f.0));
            watched_files.push(std::path::PathBuf::from(f.1));
        }
    }
    let tracing = super::tracing::parse(table.get("tracing"), &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Snapshot {
        tracing,
        certs,
        watched_files,
        source: None,
        trusted_proxies: parse_nets(
            &server.trusted_proxies,
            "server.trusted_proxies",
            &mut Vec::new(),
        ),
        server: server.into(),
        router,
        routes,
        upstreams: upstream_list,
    })
}

fn check_server(s: &ServerSection, errors: &mut Vec<ConfigError>) {
    if s.listen.is_empty() {
        errors.push(ConfigError::new(
            "server.listen",
            "at least one listen address is needed",
        ));
    }
    for (i, l) in s.listen.iter().enumerate() {
        if l.parse::<SocketAddr>().is_err() {
            errors.push(ConfigError::new(
                format!("server.listen[{i}]"),
                format!("{l:?} is not an \"ip:port\" address"),
            ));
        }
    }
    if !s.admin_listen.is_empty() {
        match s.admin_listen.parse::<SocketAddr>() {
            Err(_) => errors.push(ConfigError::new(
                "server.admin_listen",
                format!("{:?} is not an \"ip:port\" address", s.admin_listen),
            )),
            Ok(a) if !a.ip().is_loopback() && s.admin_token.is_empty() => {
                errors.push(ConfigError::new(
                    "server.admin_token",
                    "required when admin_listen is not a loopback address (the admin listener serves /metrics and POST /cache/purge); e.g. admin_token = \"${TOLLGATE_ADMIN_TOKEN}\"",
                ))
            }
            Ok(_) => {}
        }
    }
    if !s.admin_token.is_empty() && s.admin_token.len() < 16 {
        errors.push(ConfigError::new(
            "server.admin_token",
            "must be at least 16 characters",
        ));
    }
    if s.log_level.parse::<log::LevelFilter>().is_err() {
        errors.push(ConfigError::new(
            "server.log_level",
            "expected one of off, error, warn, info, debug, trace",
        ));
    }
    parse_nets(&s.trusted_proxies, "server.trusted_proxies", errors);
    if s.access_log.enabled && s.access_log.path.is_empty() {
        errors.push(ConfigError::new(
            "server.access_log.path",
            "use \"-\" for stdout or a file path",
        ));
    }
    for (i, f) in s.access_log.fields.iter().flatten().enumerate() {
        if !crate::access_log::FIELDS.contains(&f.as_str()) {
            errors.push(ConfigError::new(
                format!("server.access_log.fields[{i}]"),
                format!(
                    "unknown field {f:?}; expected one of {}",
                    crate::access_log::FIELDS.join(", ")
                ),
            ));
        }
    }
}

/// Parse each element of an array section on its own, so one bad element does not hide the
/// errors of the others.
fn parse_array<T: serde::de::DeserializeOwned>(
    value: Option<&toml::Value>,
    name: &str,
    errors: &mut Vec<ConfigError>,
) -> Vec<(usize, T)> {
    let Some(value) = value else {
        return Vec::new();
    };
    let Some(items) = value.as_array() else {
        errors.push(ConfigError::new(
            name,
            format!("expected an array: [[{name}]]"),
        ));
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match parse_config_all::<T>(item) {
            Ok(t) => out.push((i, t)),
            Err(errs) => errors.extend(errs.into_iter().map(|e| e.under(&format!("{name}[{i}]")))),
        }
    }
    out
}

/// What a route's chain is built from besides its own entries.
#[derive(Clone, Copy)]
struct RoutePlugins<'a> {
    registry: &'a Registry,
    globals: &'a BTreeMap<String, Arc<dyn Plugin>>,
    consumers: &'a ConsumerPlugins,
    ctx: &'a BuildCtx,
}

fn compile_route(
    r: &RouteSection,
    at: &str,
    upstreams: &HashMap<String, Arc<UpstreamPool>>,
    plugins: &RoutePlugins,
    reported: &mut BTreeSet<String>,
    errors: &mut Vec<ConfigError>,
) -> Option<Route> {
    let RoutePlugins {
        registry,
        globals,
        consumers: consumer_plugins,
        ctx,
    } = *plugins;
    let before = errors.len();
    if r.name.is_empty() {
        errors.push(ConfigError::new(format!("{at}.name"), "must not be empty"));
    }
    let upstream = match &r.upstream {
        Some(u) => match upstreams.get(u) {
            Some(p) => Some(p.clone()),
            None => {
                errors.push(ConfigError::new(
                    format!("{at}.upstream"),
                    format!("no upstream named {u:?} (define it in [[upstreams]])"),
                ));
                None
            }
        },
        None => None,
    };
    let rewrite = match (&r.rewrite, r.strip_prefix) {
        (Some(_), true) => {
            errors.push(ConfigError::new(
                format!("{at}.rewrite"),
                "use either rewrite or strip_prefix, not both",
            ));
            PathRewrite::Keep
        }
        (Some(to), false) => {
            if !to.starts_with('/') {
                errors.push(ConfigError::new(
                    format!("{at}.rewrite"),
                    "must start with '/'",
                ));
            }
            PathRewrite::Replace(to.clone())
        }
        (None, true) => {
            if r.paths
                .iter()
                .any(|p| p.starts_with('=') || p.starts_with('~'))
            {
                errors.push(ConfigError::new(
                    format!("{at}.strip_prefix"),
                    "strip_prefix needs prefix paths (\"/api\"), not exact or regex ones",
                ));
            }
            PathRewrite::StripPrefix
        }
        (None, false) => PathRewrite::Keep,
    };

    let route_ctx = ctx.with_scope(format!("route:{}", r.name));
    let ctx = &route_ctx;
    // Route entries override or disable globals of the same name.
    let entries = plugin_entries(
        &r.plugins,
        &format!("{at}.plugins"),
        registry,
        globals,
        ctx,
        errors,
    );
    let mut chain: Vec<Arc<dyn Plugin>> = globals
        .iter()
        .filter(|(n, _)| !entries.replaces(n))
        .map(|(_, p)| p.clone())
        .chain(entries.local.iter().map(|c| c.plugin.clone()))
        .collect();
    // Stable: within a phase, globals first, then the route's order.
    chain.sort_by_key(|p| p.phase());
    let per_consumer = consumer_plugins.chains(&chain, errors, reported);
    let every_chain = || std::iter::once(&chain[..]).chain(per_consumer.iter().map(|c| &c[..]));

    // acl decides by the consumer; forward_auth (also authorization) asks its service alone.
    if chain
        .iter()
        .any(|p| p.name() == tollgate_plugins::acl::NAME)
        && !chain.iter().any(|p| p.phase() == Phase::Authentication)
    {
        errors.push(ConfigError::new(
            format!("{at}.plugins"),
            "acl needs an authentication plugin (key_auth, basic_auth or jwt) on the route",
        ));
    }
    for (i, st) in r.retry_on_status.iter().enumerate() {
        if !(500..600).contains(st) && *st != 429 {
            errors.push(ConfigError::new(
                format!("{at}.retry_on_status[{i}]"),
                "only 429 and 5xx statuses can be retried",
            ));
        }
    }
    let split = crate::split::Split::compile(&r.split, at, upstreams, errors);
    let split_catch_all = split.as_ref().is_some_and(|s| s.has_catch_all());
    let fallback = crate::fallback::Fallback::compile(
        &r.fallback,
        &r.fallback_on,
        r.upstream_header,
        at,
        upstreams,
        errors,
    );
    if !r.fallback.is_empty() {
        if r.upstream.is_some() {
            errors.push(ConfigError::new(
                format!("{at}.upstream"),
                "a route with `fallback` lists its targets there (the first is the default): leave out `upstream`",
            ));
        }
        if !r.retry_on_status.is_empty() || r.retry_on_timeout {
            errors.push(ConfigError::new(
                format!("{at}.fallback_on"),
                "`fallback_on` replaces retry_on_status and retry_on_timeout on a route with `fallback`",
            ));
        }
        if r.fallback.len() > MAX_FALLBACK_TARGETS {
            errors.push(ConfigError::new(
                format!("{at}.fallback"),
                format!("at most {MAX_FALLBACK_TARGETS} targets"),
            ));
        }
    }
    let body_max_bytes = r.max_body_bytes.unwrap_or(r.split_body_max_bytes);
    if body_max_bytes == 0 || body_max_bytes > crate::proxy::body::MAX_SMALL_BODY {
        errors.push(ConfigError::new(
            format!("{at}.max_body_bytes"),
            format!(
                "between 1 and {} bytes (what Pingora can replay upstream)",
                crate::proxy::body::MAX_SMALL_BODY
            ),
        ));
    }
    for (key, v) in [
        ("first_byte_timeout_ms", r.first_byte_timeout_ms),
        ("idle_timeout_ms", r.idle_timeout_ms),
    ] {
        if v == Some(0) {
            errors.push(ConfigError::new(
                format!("{at}.{key}"),
                "must be at least 1",
            ));
        }
    }
    if r.upstream.is_none()
        && r.fallback.is_empty()
        && !split_catch_all
        && !chain.iter().any(|p| p.phase() == Phase::Respond)
    {
        errors.push(ConfigError::new(
            at,
            "a route needs an `upstream` (or `fallback`), a split rule without `match`, or a plugin that answers (such as mock)",
        ));
    }
    if r.split_body_max_bytes == 0 || r.split_body_max_bytes > crate::proxy::body::MAX_SMALL_BODY {
        errors.push(ConfigError::new(
            format!("{at}.split_body_max_bytes"),
            format!(
                "between 1 and {} bytes (what Pingora can replay upstream)",
                crate::proxy::body::MAX_SMALL_BODY
            ),
        ));
    }
    if let Some(b) = &r.request_body {
        if b.buffer && (b.max_bytes == 0 || b.max_bytes > crate::proxy::body::MAX_SMALL_BODY) {
            errors.push(ConfigError::new(
                format!("{at}.request_body.max_bytes"),
                format!(
                    "a buffered body is between 1 and {} bytes (what Pingora can replay upstream)",
                    crate::proxy::body::MAX_SMALL_BODY
                ),
            ));
        }
        if b.read_timeout_ms == 0 {
            errors.push(ConfigError::new(
                format!("{at}.request_body.read_timeout_ms"),
                "must be at least 1",
            ));
        }
    }
    if errors.len() > before {
        return None;
    }
    let ms = |v: Option<u64>| v.map(Duration::from_millis);
    Some(Route {
        name: Arc::from(r.name.as_str()),
        split,
        retry: RetryPolicy {
            on_status: r.retry_on_status.clone(),
            on_timeout: r.retry_on_timeout,
            max: r.max_retries,
            deadline: (r.deadline_ms > 0).then(|| Duration::from_millis(r.deadline_ms)),
        },
        rewrite,
        preserve_host: r.preserve_host,
        forwarded_headers: r.forwarded_headers,
        allow_underscore_headers: r.allow_underscore_headers,
        request_id: r.request_id,
        timeouts: Timeouts {
            connect: ms(r.connect_timeout_ms),
            read: ms(r.read_timeout_ms),
            write: ms(r.write_timeout_ms),
        },
        metrics: crate::metrics::RouteMetrics::new(
            &r.name,
            r.upstream
                .iter()
                .chain(r.fallback.iter().map(|f| &f.upstream))
                .chain(
                    r.split
                        .iter()
                        .flat_map(|s| s.targets.iter().map(|t| &t.upstream)),
                )
                .map(String::as_str),
        ),
        counters: crate::metrics::RouteCounters::default(),
        body_hooks: every_chain().flatten().any(|p| p.wants_request_body())
            || r.request_body
                .is_some_and(|b| b.min_rate_bytes_per_second > 0),
        response_body_hooks: every_chain().flatten().any(|p| p.wants_response_body()),
        upstream_response_hooks: every_chain().flatten().any(|p| p.wants_upstream_response()),
        request_body: r.request_body,
        cors: chain.iter().any(|p| p.name() == "cors"),
        split_body_max_bytes: r.split_body_max_bytes,
        cache: chain.iter().find_map(|p| p.cache_policy().cloned()),
        upstream: upstream.or_else(|| {
            fallback
                .as_ref()
                .and_then(|f| f.targets.first())
                .map(|t| t.upstream.clone())
        }),
        fallback,
        body_max_bytes,
        on_body_over_limit: r.on_body_over_limit,
        stream_timeouts: (r.first_byte_timeout_ms.is_some() || r.idle_timeout_ms.is_some()).then(
            || StreamTimeouts {
                first_byte: ms(r.first_byte_timeout_ms),
                idle: ms(r.idle_timeout_ms),
            },
        ),
        chain: RouteChain {
            base: Plugins::from(chain),
            per_consumer,
        },
    })
}

//! Process setup: logging, the Pingora server with its proxy, admin and background services,
//! and config reload on SIGHUP or when the file changes.

use crate::admin::{AdminApp, READY};
use crate::config::{self, schema::ServerSection};
use crate::metrics::METRICS;
use crate::proxy::Gateway;
use crate::snapshot::Snapshot;
use crate::upstream::health::HealthChecker;
use crate::upstream::UpstreamCache;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Set up logging: the config's level, unless `RUST_LOG` says otherwise.
pub fn init_logging(level: &str) {
    let mut b = env_logger::Builder::new();
    b.filter_level(level.parse().unwrap_or(log::LevelFilter::Info));
    if let Ok(spec) = std::env::var("RUST_LOG") {
        b.parse_filters(&spec);
    }
    let _ = b.try_init();
}

/// Set when SIGQUIT (graceful upgrade) or SIGTERM arrives: from then on every response
/// closes its connection, so keep-alive clients reconnect (to the new process, during an
/// upgrade) instead of being cut off when this process stops.
pub static DRAINING: AtomicBool = AtomicBool::new(false);

/// Set once the reload task listens for SIGHUP; readiness waits for it, because a SIGHUP
/// before that would end the process (the default action).
static RELOAD_ARMED: AtomicBool = AtomicBool::new(false);

/// Why the gateway could not start.
#[derive(Debug)]
pub enum RunError {
    /// The config file has errors.
    Config(config::ConfigErrors),
    /// A listen address cannot be bound.
    Bind(String),
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Config(e) => write!(f, "{e}"),
            RunError::Bind(e) => writeln!(f, "{e}"),
        }
    }
}

/// Fail fast when a listen address is taken (Pingora itself would retry forever, which is
/// right for an upgrade and wrong for a fresh start).
fn check_bindable(addrs: &[&str]) -> Result<(), RunError> {
    for addr in addrs {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            return Err(RunError::Bind(format!("cannot listen on {addr}: {e}")));
        }
    }
    Ok(())
}

/// Load `path` and serve it until a shutdown signal. `upgrade` takes the listening sockets
/// over from a running tollgate (Pingora's graceful upgrade).
pub fn run(path: &Path, upgrade: bool) -> Result<(), RunError> {
    let cache = Arc::new(UpstreamCache::default());
    let snap = config::load_file(path, &cache).map_err(RunError::Config)?;
    if !upgrade {
        let mut addrs: Vec<&str> = snap.server.listen.iter().map(String::as_str).collect();
        addrs.extend(snap.server.tls.iter().map(|t| t.listen.as_str()));
        if !snap.server.admin_listen.is_empty() {
            addrs.push(&snap.server.admin_listen);
        }
        check_bindable(&addrs)?;
    }
    cache.retain(&snap.upstreams);
    let server_cfg = snap.server.clone();
    init_logging(&server_cfg.log_level);
    let access_log = server_cfg.access_log.enabled
        && match crate::access_log::start(&server_cfg.access_log.path) {
            Ok(()) => true,
            Err(e) => {
                log::error!(
                    "access log disabled: cannot open {}: {e}",
                    server_cfg.access_log.path
                );
                false
            }
        };
    METRICS.config_reloads.with_label_values(&["success"]);
    apply_cache_budget(&server_cfg);
    let config = Arc::new(ArcSwap::from_pointee(snap));

    let conf = ServerConf {
        threads: if server_cfg.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            server_cfg.threads
        },
        work_stealing: server_cfg.work_stealing,
        grace_period_seconds: Some(server_cfg.shutdown_grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(server_cfg.shutdown_timeout_seconds),
        upstream_keepalive_pool_size: server_cfg.upstream_keepalive_pool_size,
        upgrade_sock: server_cfg.upgrade_sock.clone(),
        pid_file: server_cfg.pid_file.clone(),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    // Pingora writes the pid file only when it daemonizes; tollgate runs in the foreground.
    if !server_cfg.pid_file.is_empty() {
        if let Err(e) = std::fs::write(&server_cfg.pid_file, format!("{}\n", std::process::id())) {
            log::warn!("cannot write pid file {}: {e}", server_cfg.pid_file);
        }
    }

    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        Gateway::new(config.clone(), access_log),
        "tollgate proxy",
    );
    for addr in &server_cfg.listen {
        proxy.add_tcp(addr);
    }
    for t in &server_cfg.tls {
        let mut settings = pingora::listeners::tls::TlsSettings::intermediate(&t.cert, &t.key)
            .map_err(|e| RunError::Bind(format!("TLS listener {}: {e}", t.listen)))?;
        if t.http2 {
            settings.enable_h2();
        }
        proxy.add_tls_with_settings(&t.listen, None, settings);
    }
    if let Some(app) = proxy.app_logic_mut() {
        let mut options = pingora::apps::HttpServerOptions::default();
        options.h2c = server_cfg.h2c;
        options.keepalive_request_limit =
            (server_cfg.keepalive_requests > 0).then_some(server_cfg.keepalive_requests);
        options.h2_idle_timeout = Some(Duration::from_secs(server_cfg.h2_idle_timeout_seconds));
        app.server_options = Some(options);
    }
    server.add_service(proxy);
    if !server_cfg.admin_listen.is_empty() {
        let mut admin = Service::new("tollgate admin".to_string(), AdminApp);
        admin.add_tcp(&server_cfg.admin_listen);
        server.add_service(admin);
    }
    server.add_service(background_service(
        "health checks",
        HealthChecker::new(config.clone()),
    ));
    server.add_service(background_service(
        "config reload",
        Reloader {
            path: path.to_path_buf(),
            config: config.clone(),
            cache,
            started_with: server_cfg.clone(),
        },
    ));
    server.add_service(background_service(
        "readiness",
        ReadyProbe {
            listen: server_cfg.listen,
        },
    ));
    log::info!(
        "tollgate {} serving {}",
        env!("CARGO_PKG_VERSION"),
        path.display()
    );
    server.run_forever()
}

/// The response cache's byte budget applies on start and on every reload.
fn apply_cache_budget(server: &ServerSection) {
    tollgate_plugins::cache::storage::EVICTION.set_weight_limit(server.cache_max_bytes);
}

/// Marks the process ready once the first proxy listener accepts a connection and reloads
/// are armed.
struct ReadyProbe {
    listen: Vec<String>,
}

#[async_trait]
impl BackgroundService for ReadyProbe {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let Some(addr) = self.listen.first() else {
            return;
        };
        // A wildcard address is reached through loopback.
        let target = addr
            .replacen("0.0.0.0:", "127.0.0.1:", 1)
            .replacen("[::]:", "[::1]:", 1);
        loop {
            if RELOAD_ARMED.load(Ordering::Acquire)
                && tokio::net::TcpStream::connect(&target).await.is_ok()
            {
                READY.store(true, Ordering::Relaxed);
                log::info!("ready: proxy listening on {addr}");
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Reloads the config on SIGHUP and when the file changes.
struct Reloader {
    path: PathBuf,
    config: Arc<ArcSwap<Snapshot>>,
    cache: Arc<UpstreamCache>,
    started_with: ServerSection,
}

impl Reloader {
    async fn reload(&self, why: &str) {
        let path = self.path.clone();
        let cache = self.cache.clone();
        // Compiling resolves backend names and builds regexes: keep it off the async workers.
        let result = tokio::task::spawn_blocking(move || config::load_file(&path, &cache)).await;
        match result {
            Ok(Ok(snap)) => {
                let s = &snap.server;
                let old = &self.started_with;
                if s.listen != old.listen
                    || s.admin_listen != old.admin_listen
                    || s.threads != old.threads
                    || s.work_stealing != old.work_stealing
                    || s.access_log != old.access_log
                    || s.pid_file != old.pid_file
                    || s.upgrade_sock != old.upgrade_sock
                    || s.tls != old.tls
                    || s.h2c != old.h2c
                    || s.keepalive_requests != old.keepalive_requests
                {
                    log::warn!("listeners, threads and access_log changes take effect on restart");
                }
                if let Ok(level) = s.log_level.parse() {
                    if std::env::var_os("RUST_LOG").is_none() {
                        log::set_max_level(level);
                    }
                }
                self.cache.retain(&snap.upstreams);
                apply_cache_budget(&snap.server);
                let routes = snap.routes.len();
                self.config.store(Arc::new(snap));
                METRICS.config_reloads.with_label_values(&["success"]).inc();
                log::info!("config reloaded ({why}): {routes} routes");
            }
            Ok(Err(errors)) => {
                METRICS.config_reloads.with_label_values(&["failure"]).inc();
                log::error!("config reload ({why}) rejected, the running config stays: {errors}");
            }
            Err(e) => {
                METRICS.config_reloads.with_label_values(&["failure"]).inc();
                log::error!("config reload ({why}) failed: {e}");
            }
        }
    }
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                log::error!("cannot listen for SIGHUP: {e}");
                None
            }
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let _watcher = watch_file(&self.path, tx);
        // Pingora handles these signals; this second handler only marks the drain.
        for kind in [SignalKind::quit(), SignalKind::terminate()] {
            if let Ok(mut sig) = signal(kind) {
                tokio::spawn(async move {
                    if sig.recv().await.is_some() {
                        DRAINING.store(true, Ordering::Release);
                        log::info!("draining: responses now close their connections");
                    }
                });
            }
        }
        RELOAD_ARMED.store(true, Ordering::Release);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(_) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    self.reload("SIGHUP").await;
                }
                Some(()) = rx.recv() => {
                    // Editors write in several steps: wait for the burst to end.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    while rx.try_recv().is_ok() {}
                    self.reload("file changed").await;
                }
            }
        }
    }
}

/// Watch the config file's directory (editors often replace the file) and signal on changes
/// to the file itself.
fn watch_file(
    path: &Path,
    tx: tokio::sync::mpsc::UnboundedSender<()>,
) -> Option<notify::RecommendedWatcher> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let dir = abs.parent()?.to_path_buf();
    let name = abs.file_name()?.to_os_string();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            let relevant = matches!(ev.kind, EventKind::Create(_) | EventKind::Modify(_))
                && ev
                    .paths
                    .iter()
                    .any(|p| p.file_name() == Some(name.as_os_str()));
            if relevant {
                let _ = tx.send(());
            }
        }
    })
    .map_err(|e| log::warn!("config file watching disabled: {e}"))
    .ok()?;
    if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        log::warn!("config file watching disabled: {e}");
        return None;
    }
    Some(watcher)
}

//! Process setup: logging, the Pingora server with its proxy, admin and background services.
//! Reloads are [`crate::reload`]'s, the lifecycle flags [`crate::lifecycle`]'s.

use crate::access_log::{AccessLog, FieldSet, Reopener};
use crate::admin::AdminApp;
use crate::config;
use crate::connection::GuardedApp;
use crate::lifecycle::Lifecycle;
use crate::metrics::METRICS;
use crate::proxy::Gateway;
use crate::reload::Reloader;
use crate::retained::Retained;
use crate::shutdown::DrainingShutdown;
use crate::sni::SniResolver;
use crate::upstream::health::HealthChecker;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tollgate_plugins::Registry;

/// How often readiness is probed until the proxy listener accepts.
const READY_POLL: Duration = Duration::from_millis(50);

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

/// Load `path` and serve it until a shutdown signal, with the plugins of `registry`. `upgrade`
/// takes the listening sockets over from a running tollgate (Pingora's graceful upgrade).
pub fn run(path: &Path, upgrade: bool, registry: Registry) -> Result<(), RunError> {
    let retained = Arc::new(Retained::with_registry(registry));
    let snap = config::load_file(path, &retained).map_err(RunError::Config)?;
    let process = snap.server.process.clone();
    if !upgrade {
        let mut addrs: Vec<&str> = process.listen.iter().map(String::as_str).collect();
        addrs.extend(process.tls.iter().map(|t| t.listen.as_str()));
        if !process.admin_listen.is_empty() {
            addrs.push(&process.admin_listen);
        }
        check_bindable(&addrs)?;
    }
    retained.settle(&snap);
    crate::logging::init(&snap.server.live.log_level, process.log_format);
    let access_log = if process.access_log.enabled {
        let fields = match &process.access_log.fields {
            // Validated with the config: every name is known.
            Some(names) => {
                FieldSet::from_names(names.iter().map(String::as_str)).unwrap_or(FieldSet::ALL)
            }
            None => FieldSet::ALL,
        };
        match AccessLog::start(&process.access_log.path, fields) {
            Ok(log) => Some(log),
            Err(e) => {
                log::error!(
                    "access log disabled: cannot open {}: {e}",
                    process.access_log.path
                );
                None
            }
        }
    } else {
        None
    };
    METRICS.config_reloads.with_label_values(&["success"]);
    if let Some(source) = &snap.source {
        METRICS.config_loaded(&source.0);
    }
    let config = Arc::new(ArcSwap::from_pointee(snap));
    let lifecycle = Arc::new(Lifecycle::default());

    let conf = ServerConf {
        threads: if process.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            process.threads
        },
        work_stealing: process.work_stealing,
        // Pingora's own wait after it closes the listeners; the drain watchdog
        // (shutdown.rs) ends the process as soon as the last connection ends.
        grace_period_seconds: Some(process.shutdown_timeout_seconds),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_pool_size: process.upstream_keepalive_pool_size,
        upgrade_sock: process.upgrade_sock.clone(),
        pid_file: process.pid_file.clone(),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    // Pingora writes the pid file only when it daemonizes; tollgate runs in the foreground.
    if !process.pid_file.is_empty() {
        if let Err(e) = std::fs::write(&process.pid_file, format!("{}\n", std::process::id())) {
            log::warn!("cannot write pid file {}: {e}", process.pid_file);
        }
    }

    server.add_service(background_service(
        "access log reopen",
        Reopener {
            log: access_log.clone(),
        },
    ));
    let mut gateway = Gateway::new(config.clone(), access_log, lifecycle.clone());
    if let Some(section) = &config.load().tracing {
        match crate::trace::Tracer::start(section, &retained.plugins) {
            Ok((tracer, exporter)) => {
                gateway = gateway.with_tracer(Arc::new(tracer));
                server.add_service(background_service("tracing export", exporter));
            }
            // Checked with the config: not expected.
            Err(e) => log::error!("tracing disabled: {e}"),
        }
    }
    let origin_date = gateway.origin_date();
    let mut http = pingora::proxy::http_proxy(&server.configuration, gateway);
    let mut options = pingora::apps::HttpServerOptions::default();
    options.h2c = process.h2c;
    // Pingora counts reuses, after the first request: N requests are N - 1 reuses.
    options.keepalive_request_limit =
        (process.keepalive_requests > 0).then(|| process.keepalive_requests - 1);
    options.h2_idle_timeout = Some(Duration::from_secs(process.h2_idle_timeout_seconds));
    http.server_options = Some(options);
    let mut proxy = Service::new(
        "tollgate proxy".to_string(),
        GuardedApp::new(http, config.clone(), lifecycle.clone()).with_origin_date(origin_date),
    );
    for addr in &process.listen {
        proxy.add_listener(ListenerConfig::tcp(addr.as_str()).l4_buffer(client_buffers()));
    }
    for t in &process.tls {
        let mut settings = pingora::listeners::tls::TlsSettings::intermediate(&t.cert, &t.key)
            .map_err(|e| RunError::Bind(format!("TLS listener {}: {e}", t.listen)))?;
        // Certificates come from the running config at each handshake (SNI, reloads).
        settings.set_cert_resolver(Arc::new(SniResolver::new(config.clone(), &t.listen)));
        if t.http2 {
            settings.enable_h2();
        }
        proxy.add_listener(
            ListenerConfig::tcp(t.listen.as_str())
                .tls(settings)
                .l4_buffer(client_buffers()),
        );
    }
    server.add_service(proxy);
    if !process.admin_listen.is_empty() {
        let mut admin = Service::new(
            "tollgate admin".to_string(),
            AdminApp::new(lifecycle.clone(), retained.clone(), &process.admin_token)
                .with_config(config.clone()),
        );
        admin.add_tcp(&process.admin_listen);
        server.add_service(admin);
    }
    server.add_service(background_service(
        "health checks",
        HealthChecker::new(config.clone()),
    ));
    server.add_service(background_service(
        "config reload",
        Reloader::new(path, config.clone(), retained, lifecycle.clone()),
    ));
    server.add_service(background_service(
        "readiness",
        ReadyProbe {
            listen: process.listen.clone(),
            lifecycle: lifecycle.clone(),
        },
    ));
    log::info!(
        "tollgate {} serving {}",
        env!("CARGO_PKG_VERSION"),
        path.display()
    );
    let shutdown = DrainingShutdown {
        lifecycle,
        grace: Duration::from_secs(process.shutdown_grace_period_seconds),
        timeout: Duration::from_secs(process.shutdown_timeout_seconds),
    };
    server.run(RunArgs {
        shutdown_signal: Box::new(shutdown),
    });
    std::process::exit(0)
}

/// Marks the process ready once the first proxy listener accepts a connection and reloads
/// are armed.
struct ReadyProbe {
    listen: Vec<String>,
    lifecycle: Arc<Lifecycle>,
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
            if self.lifecycle.reload_armed()
                && tokio::net::TcpStream::connect(&target).await.is_ok()
            {
                self.lifecycle.set_ready();
                log::info!("ready: proxy listening on {addr}");
                return;
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }
}

/// Client connections read straight into the HTTP parser's buffer: Pingora's default 64 KiB
/// read buffer per connection would make every open connection (an idle keep-alive one, a
/// slow client) cost that much memory, for no fewer system calls on request heads.
fn client_buffers() -> L4BufferSettings {
    L4BufferSettings::default().read(0)
}

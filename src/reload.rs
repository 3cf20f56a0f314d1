//! Config reload on SIGHUP and when the config file changes: compile off the async workers,
//! swap atomically, settle what is retained. A bad file is rejected and the running config
//! stays.

use crate::config;
use crate::config::schema::ProcessSettings;
use crate::config::tracing::TracingSection;
use crate::lifecycle::Lifecycle;
use crate::metrics::METRICS;
use crate::retained::Retained;
use crate::snapshot::Snapshot;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long a burst of file events (editors write in several steps) must be quiet before
/// the reload.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// How often pools are checked for a due DNS resolution.
const DNS_TICK: Duration = Duration::from_secs(1);

/// The background service that reloads the config.
pub struct Reloader {
    path: PathBuf,
    config: Arc<ArcSwap<Snapshot>>,
    retained: Arc<Retained>,
    lifecycle: Arc<Lifecycle>,
    /// The settings the process was started with; a reload cannot change them.
    started_with: ProcessSettings,
    /// `[tracing]` as the process started with it; a reload cannot change it either.
    started_tracing: Option<TracingSection>,
    /// `[server] watch_config`: reload when the file changes, not only on SIGHUP.
    watch: bool,
    /// The config file's content as last loaded (or tried).
    loaded: std::sync::Mutex<Option<[u8; 32]>>,
}

impl Reloader {
    /// Reload `path` into `config`.
    pub fn new(
        path: &Path,
        config: Arc<ArcSwap<Snapshot>>,
        retained: Arc<Retained>,
        lifecycle: Arc<Lifecycle>,
    ) -> Self {
        let started_with = config.load().server.process.clone();
        let started_tracing = config.load().tracing.clone();
        let watch = started_with.watch_config;
        let loaded = digest(path, &config.load().watched_files);
        Reloader {
            path: path.to_path_buf(),
            config,
            retained,
            lifecycle,
            started_with,
            started_tracing,
            watch,
            loaded: std::sync::Mutex::new(loaded),
        }
    }

    async fn reload(&self, why: &str) {
        let files = self.config.load().watched_files.clone();
        *tollgate_plugins::sync::lock(&self.loaded) = digest(&self.path, &files);
        let path = self.path.clone();
        let retained = self.retained.clone();
        // Compiling resolves backend names and builds regexes: keep it off the async workers.
        let result = tokio::task::spawn_blocking(move || config::load_file(&path, &retained)).await;
        match result {
            Ok(Ok(snap)) => {
                if snap.tracing != self.started_tracing {
                    log::warn!("[tracing] takes effect on restart");
                }
                if snap.server.process != self.started_with {
                    log::warn!(
                        "[server] listeners, threads, TLS, shutdown, pool, pid file and access log settings take effect on restart"
                    );
                }
                if let Ok(level) = snap.server.live.log_level.parse() {
                    if std::env::var_os("RUST_LOG").is_none() {
                        log::set_max_level(level);
                    }
                }
                let snap = Arc::new(snap);
                let routes = snap.routes.len();
                self.config.store(snap.clone());
                self.retained.settle(&snap);
                METRICS.config_reloads.with_label_values(&["success"]).inc();
                if let Some(source) = &snap.source {
                    METRICS.config_loaded(&source.0);
                }
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

impl Reloader {
    /// Resolve the backend names of the pools that are due again; when an answer changed,
    /// compile the running config's text again (the changed pools are rebuilt, the others
    /// kept) and swap it in.
    async fn refresh_dns(&self, due: &mut std::collections::HashMap<String, std::time::Instant>) {
        let snap = self.config.load_full();
        let now = std::time::Instant::now();
        let pools: Vec<_> = snap
            .upstreams
            .iter()
            .filter(|p| !p.names.is_empty())
            .filter_map(|p| {
                let every = p.resolve_interval?;
                let next = due.entry(p.name.to_string()).or_insert(now + every);
                if *next > now {
                    return None;
                }
                *next = now + every;
                Some((p.name.clone(), p.names.clone()))
            })
            .collect();
        if pools.is_empty() {
            return;
        }
        let retained = self.retained.clone();
        let changed = tokio::task::spawn_blocking(move || {
            let mut changed = Vec::new();
            for (pool, names) in pools {
                let mut any = false;
                for (host, port) in &names {
                    let result = match retained.dns.refresh(host, *port) {
                        Ok(true) => {
                            any = true;
                            "changed"
                        }
                        Ok(false) => "unchanged",
                        Err(e) => {
                            log::warn!("upstream {pool}: {e}; keeping the last good addresses");
                            "failed"
                        }
                    };
                    METRICS
                        .dns_resolutions
                        .with_label_values(&[&*pool, result])
                        .inc();
                }
                if any {
                    changed.push(pool);
                }
            }
            changed
        })
        .await
        .unwrap_or_default();
        if changed.is_empty() {
            return;
        }
        let Some(source) = snap.source.clone() else {
            return;
        };
        let retained = self.retained.clone();
        let result =
            tokio::task::spawn_blocking(move || config::load_str(&source.0, &source.1, &retained))
                .await;
        match result {
            Ok(Ok(new)) => {
                let new = Arc::new(new);
                self.config.store(new.clone());
                self.retained.settle(&new);
                log::info!(
                    "backends of {} re-resolved: new addresses",
                    changed.join(", ")
                );
            }
            Ok(Err(e)) => log::warn!("DNS change not applied: {e}"),
            Err(e) => log::warn!("DNS change not applied: {e}"),
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
        let watch_set = |files: &[PathBuf]| {
            if self.watch {
                watch_file(&self.path, files, tx.clone())
            } else {
                None
            }
        };
        let mut watched = self.config.load().watched_files.clone();
        let mut _watcher = watch_set(&watched);
        self.lifecycle.set_reload_armed();
        let mut dns_due = std::collections::HashMap::new();
        let mut dns_tick = tokio::time::interval(DNS_TICK);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = dns_tick.tick() => self.refresh_dns(&mut dns_due).await,
                Some(_) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    self.reload("SIGHUP").await;
                }
                Some(()) = rx.recv() => {
                    tokio::time::sleep(DEBOUNCE).await;
                    while rx.try_recv().is_ok() {}
                    let now = digest(&self.path, &self.config.load().watched_files);
                    let changed = now.is_some() && now != *tollgate_plugins::sync::lock(&self.loaded);
                    if changed {
                        self.reload("file changed").await;
                    }
                }
            }
            // Certificate files may have moved with the config: watch where they are now.
            let files = self.config.load().watched_files.clone();
            if files != watched {
                _watcher = watch_set(&files);
                watched = files;
            }
        }
    }
}

/// Watch what can change the config at `path`: its directory (editors replace files, and a
/// Kubernetes ConfigMap swaps the `..data` symlink there), the directory of the file it
/// points to when it is a symlink, and the same for `files` (certificates). An event on one of
/// those names (or a `..` name) is signalled; the reloader then decides by the files'
/// content whether anything changed, so a swapped symlink is seen like an edited file.
fn watch_file(
    path: &Path,
    files: &[PathBuf],
    tx: tokio::sync::mpsc::UnboundedSender<()>,
) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let mut dirs: Vec<PathBuf> = Vec::new();
    for p in std::iter::once(path).chain(files.iter().map(PathBuf::as_path)) {
        let given = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let resolved = std::fs::canonicalize(&given).ok();
        for dir in [given.parent(), resolved.as_deref().and_then(Path::parent)]
            .into_iter()
            .flatten()
        {
            if !dirs.iter().any(|d| d == dir) {
                dirs.push(dir.to_path_buf());
            }
        }
    }
    // Only events on these names can change the config (an access log written in the same
    // directory must not make the reloader read and hash the config on every write); names
    // starting with `..` are a Kubernetes ConfigMap's `..data` and its timestamped dirs.
    let mut names: Vec<std::ffi::OsString> = Vec::new();
    for p in std::iter::once(path).chain(files.iter().map(PathBuf::as_path)) {
        let resolved = std::fs::canonicalize(p).ok();
        for n in [p.file_name(), resolved.as_deref().and_then(Path::file_name)]
            .into_iter()
            .flatten()
        {
            if !names.iter().any(|x| x == n) {
                names.push(n.to_os_string());
            }
        }
    }
    let relevant = move |e: &notify::Event| {
        !matches!(e.kind, notify::EventKind::Access(_))
            && e.paths.iter().any(|p| {
                p.file_name().is_some_and(|n| {
                    names.iter().any(|x| x == n) || n.as_encoded_bytes().starts_with(b"..")
                })
            })
    };
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.as_ref().is_ok_and(&relevant) {
            let _ = tx.send(());
        }
    })
    .map_err(|e| log::warn!("config file watching disabled: {e}"))
    .ok()?;
    for dir in &dirs {
        if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            log::warn!("config file watching of {} disabled: {e}", dir.display());
        }
    }
    Some(watcher)
}

/// A digest of the config file's bytes and of the other files it names (certificates),
/// through symlinks, to tell a real change from an unrelated event in a watched directory.
fn digest(path: &Path, files: &[PathBuf]) -> Option<[u8; 32]> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(std::fs::read(path).ok()?);
    for f in files {
        // A file that cannot be read is part of the state too (a reload will say why).
        match std::fs::read(f) {
            Ok(b) => h.update(Sha256::digest(&b)),
            Err(_) => h.update([0u8; 32]),
        }
    }
    Some(h.finalize().into())
}

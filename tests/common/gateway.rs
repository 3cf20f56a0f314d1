//! The gateway process: start it on a config, signal it, read its logs and metrics.

use super::*;

/// How to start a gateway; see [`Gateway::start`] for the common case.
pub struct GatewayBuilder {
    body: String,
    env: Vec<(String, String)>,
    rust_log: Option<String>,
    threads: usize,
    symlinked: bool,
}

impl GatewayBuilder {
    /// Set an environment variable for the gateway process.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_string(), v.to_string()));
        self
    }

    /// Set `RUST_LOG` (unset by default, so the config's `log_level` = info applies).
    pub fn rust_log(mut self, spec: &str) -> Self {
        self.rust_log = Some(spec.to_string());
        self
    }

    pub fn threads(mut self, n: usize) -> Self {
        self.threads = n;
        self
    }

    /// Pass the gateway a symlink `tollgate.toml -> versions/v1.toml` instead of a plain
    /// file. The gateway watches the link's target, so [`Gateway::swap_config`] (which points
    /// the link at a new file) changes the config *without* a file-change event: only a
    /// SIGHUP makes the gateway see it.
    pub fn symlinked(mut self) -> Self {
        self.symlinked = true;
        self
    }

    pub fn start(self) -> Gateway {
        let mut last_err = String::new();
        for attempt in 0..3 {
            match Gateway::try_start(&self) {
                Ok(g) => return g,
                Err(StartError::PortCollision(msg)) => {
                    eprintln!("gateway start attempt {attempt}: port collision, retrying: {msg}");
                    last_err = msg;
                }
                Err(StartError::Fatal(msg)) => panic!("{msg}"),
            }
        }
        panic!("gateway could not get free ports: {last_err}");
    }
}

enum StartError {
    PortCollision(String),
    Fatal(String),
}

/// A running `tollgate run` process with its own temp dir, config file and ports.
///
/// The config given to [`Gateway::start`] is the file *minus* its `[server]` table: the
/// harness writes `[server]` itself (listen address, admin address, threads) and appends the
/// body, so a body may add `[server.access_log]` but not `[server]`. The whole file is
/// [`Gateway::config_text`].
pub struct Gateway {
    child: Mutex<Child>,
    pub pid: u32,
    pub dir: TempDir,
    /// The path given to `tollgate run -c`.
    pub config_path: PathBuf,
    /// Proxy listener.
    pub addr: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    threads: usize,
    versions: AtomicUsize,
}

impl Gateway {
    /// Start a gateway with `body` (the config without `[server]`), wait until `/readyz`
    /// answers 200. Panics with the gateway's stderr if it exits or is not ready in time.
    pub fn start(body: &str) -> Gateway {
        Gateway::builder(body).start()
    }

    pub fn builder(body: &str) -> GatewayBuilder {
        GatewayBuilder {
            body: body.to_string(),
            env: Vec::new(),
            rust_log: None,
            threads: 2,
            symlinked: false,
        }
    }

    fn server_section(addr: SocketAddr, admin: SocketAddr, threads: usize) -> String {
        format!(
            "[server]\nlisten = [\"{addr}\"]\nadmin_listen = \"{admin}\"\nthreads = {threads}\nshutdown_timeout_seconds = 1\n\n"
        )
    }

    fn try_start(b: &GatewayBuilder) -> Result<Gateway, StartError> {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let text = format!(
            "{}{}",
            Gateway::server_section(addr, admin, b.threads),
            b.body
        );
        let gw = Gateway::spawn(b, &text, addr, admin)?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = gw.exit_status() {
                let err = gw.stderr();
                if err.contains("in use") {
                    return Err(StartError::PortCollision(err));
                }
                return Err(StartError::Fatal(format!(
                    "gateway exited ({status}) before it was ready; stderr:\n{err}\nconfig:\n{}",
                    gw.config_text()
                )));
            }
            if let Ok(r) = try_request(admin, "GET", "/readyz", &[], b"") {
                if r.status == 200 {
                    break;
                }
            }
            if Instant::now() >= deadline {
                return Err(StartError::Fatal(format!(
                    "gateway not ready within {START_TIMEOUT:?}; stderr:\n{}",
                    gw.stderr()
                )));
            }
            thread::sleep(Duration::from_millis(50));
        }
        // `/readyz` only proves that *something* accepts on the proxy port (see the
        // readiness test in operations.rs); if the gateway could not bind it, it says so.
        if gw.stderr().contains("is in use") {
            return Err(StartError::PortCollision(gw.stderr()));
        }
        Ok(gw)
    }

    /// Write `text` (a whole config file) and start `tollgate run` on it, without waiting
    /// for anything. `addr` and `admin` must be the addresses `text` configures.
    pub fn spawn_unchecked(text: &str, addr: SocketAddr, admin: SocketAddr) -> Gateway {
        let b = Gateway::builder("");
        match Gateway::spawn(&b, text, addr, admin) {
            Ok(g) => g,
            Err(StartError::Fatal(m)) | Err(StartError::PortCollision(m)) => panic!("{m}"),
        }
    }

    fn spawn(
        b: &GatewayBuilder,
        text: &str,
        addr: SocketAddr,
        admin: SocketAddr,
    ) -> Result<Gateway, StartError> {
        let dir = TempDir::new("gw");
        let config_path = dir.path().join("tollgate.toml");
        if b.symlinked {
            let versions = dir.path().join("versions");
            fs::create_dir_all(&versions).unwrap();
            let v1 = versions.join("v1.toml");
            fs::write(&v1, text).unwrap();
            std::os::unix::fs::symlink(&v1, &config_path).unwrap();
        } else {
            fs::write(&config_path, text).unwrap();
        }
        let stdout = fs::File::create(dir.path().join("stdout.log")).unwrap();
        let stderr = fs::File::create(dir.path().join("stderr.log")).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("run")
            .arg("-c")
            .arg(&config_path)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .env_remove("RUST_LOG");
        if let Some(spec) = &b.rust_log {
            cmd.env("RUST_LOG", spec);
        }
        for (k, v) in &b.env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .map_err(|e| StartError::Fatal(format!("spawn {BIN}: {e}")))?;
        Ok(Gateway {
            pid: child.id(),
            child: Mutex::new(child),
            dir,
            config_path,
            addr,
            admin,
            threads: b.threads,
            versions: AtomicUsize::new(1),
        })
    }

    /// The whole config file currently in place (through the symlink, if any).
    pub fn config_text(&self) -> String {
        fs::read_to_string(&self.config_path).unwrap_or_default()
    }

    /// The full file text the harness writes for `body`.
    pub fn full_config(&self, body: &str) -> String {
        format!(
            "{}{}",
            Gateway::server_section(self.addr, self.admin, self.threads),
            body
        )
    }

    /// Overwrite the config file in place (same `[server]` table, new body). The gateway
    /// notices the change by itself; call [`Gateway::reload`] to force a reload.
    pub fn rewrite_config(&self, body: &str) {
        fs::write(&self.config_path, self.full_config(body)).unwrap();
    }

    /// Overwrite the config file with exactly `text` (no `[server]` table added).
    pub fn rewrite_config_raw(&self, text: &str) {
        fs::write(&self.config_path, text).unwrap();
    }

    /// Symlinked gateways only: write `body` to a new file and atomically point the config
    /// symlink at it. The watched file does not change, so only SIGHUP makes it visible.
    pub fn swap_config(&self, body: &str) {
        let n = self.versions.fetch_add(1, Ordering::Relaxed) + 1;
        let versions = self.dir.path().join("versions");
        let target = versions.join(format!("v{n}.toml"));
        fs::write(&target, self.full_config(body)).unwrap();
        let tmp = self.dir.path().join("tollgate.toml.tmp-link");
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp).unwrap();
        fs::rename(&tmp, &self.config_path).unwrap();
    }

    /// Has the process an inotify instance (the config file watcher) open? Read from the
    /// links in `/proc/<pid>/fd`.
    pub fn has_file_watcher(&self) -> bool {
        let Ok(fds) = fs::read_dir(format!("/proc/{}/fd", self.pid)) else {
            return false;
        };
        fds.filter_map(|e| e.ok())
            .filter_map(|e| fs::read_link(e.path()).ok())
            .any(|l| l.to_string_lossy().contains("inotify"))
    }

    /// Wait (up to 5 s) until the gateway watches its config file, so that a change made
    /// now cannot be missed. Panics otherwise.
    pub fn wait_file_watcher(&self) {
        assert!(
            wait_until(Duration::from_secs(5), || self.has_file_watcher()),
            "gateway has no inotify watch on its config; stderr:\n{}",
            self.stderr()
        );
    }

    /// Is SIGHUP caught by the process (its reload task has installed its handler)? Read
    /// from `SigCgt` in /proc, bit 0 = signal 1.
    pub fn catches_sighup(&self) -> bool {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            .is_some_and(|mask| mask & 1 == 1)
    }

    /// Send SIGHUP. Panics if the gateway has not installed its SIGHUP handler within 5 s
    /// of the call (a SIGHUP before that would kill it: the default action is to exit).
    pub fn reload(&self) {
        assert!(
            wait_until(Duration::from_secs(5), || self.catches_sighup()),
            "gateway does not catch SIGHUP (yet); stderr:\n{}",
            self.stderr()
        );
        let ok = Command::new("kill")
            .args(["-HUP", &self.pid.to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -HUP {} failed", self.pid);
    }

    /// Everything the gateway wrote to standard output (the access log with `path = "-"`).
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&fs::read(self.dir.path().join("stdout.log")).unwrap_or_default())
            .into_owned()
    }

    /// Everything the gateway wrote to standard error (its log).
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&fs::read(self.dir.path().join("stderr.log")).unwrap_or_default())
            .into_owned()
    }

    /// Access log lines (stdout lines that parse as JSON objects).
    pub fn access_log(&self) -> Vec<Json> {
        self.stdout()
            .lines()
            .filter_map(|l| serde_json::from_str::<Json>(l).ok())
            .filter(|v| v.is_object())
            .collect()
    }

    /// The process's exit status if it has exited.
    pub fn exit_status(&self) -> Option<std::process::ExitStatus> {
        self.child.lock().unwrap().try_wait().ok().flatten()
    }

    pub fn is_running(&self) -> bool {
        self.exit_status().is_none()
    }

    /// `/metrics` from the admin listener.
    pub fn metrics(&self) -> String {
        let r = get(self.admin, "/metrics");
        assert_eq!(r.status, 200, "GET /metrics: {}", r.text());
        r.text()
    }

    /// One metric (summed over series whose labels include `labels`).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric_value(&self.metrics(), name, labels)
    }

    /// Poll until the metric equals `want` (within 5 s); returns the last value seen.
    pub fn wait_metric(&self, name: &str, labels: &[(&str, &str)], want: f64) -> Option<f64> {
        let mut last = None;
        wait_until(Duration::from_secs(5), || {
            last = self.metric(name, labels);
            last == Some(want)
        });
        last
    }

    /// `GET path` on the proxy listener.
    pub fn get(&self, path: &str) -> Response {
        get(self.addr, path)
    }

    /// A request on the proxy listener.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        request(self.addr, method, path, headers, body)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Ok(mut c) = self.child.lock() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if thread::panicking() {
            eprintln!(
                "--- gateway stderr (last 4000 bytes) ---\n{}",
                tail(&self.stderr(), 4000)
            );
        }
    }
}

fn tail(s: &str, n: usize) -> &str {
    if s.len() <= n {
        return s;
    }
    let mut i = s.len() - n;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

/// Run `tollgate <args>`, returning (exit code, stdout, stderr).
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run tollgate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

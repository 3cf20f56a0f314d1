//! A gateway process started on a config file of the test's choosing (any path, any
//! `[server]` table), for the edge tests: SIGTERM drains with their own shutdown settings, a
//! Kubernetes-style ConfigMap directory. [`Gateway`] always writes its own `[server]` table
//! and file; this one does not.

use super::*;

/// A `[server]` table for `addr`/`admin` (2 threads, pid file in `dir`) followed by `extra`
/// keys (e.g. `"shutdown_grace_period_seconds = 2\n"`).
pub fn server_table(addr: SocketAddr, admin: SocketAddr, dir: &Path, extra: &str) -> String {
    format!(
        "[server]\nlisten = [\"{addr}\"]\nadmin_listen = \"{admin}\"\nthreads = 2\npid_file = \"{}\"\nupgrade_sock = \"{}\"\n{extra}\n",
        dir.join("tollgate.pid").display(),
        dir.join("upgrade.sock").display(),
    )
}

/// Two free addresses on 127.0.0.1: (proxy, admin).
pub fn free_addrs() -> (SocketAddr, SocketAddr) {
    let a: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let b: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    (a, b)
}

/// Is signal `sig` (1-based number) caught by process `pid` (`SigCgt` in /proc)?
pub fn catches_signal(pid: u32, sig: u32) -> bool {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (sig - 1)) != 0)
}

/// Send `kill -<name>` to `pid` once it catches the signal (number `num`); panics if it does
/// not catch it within 5 s (the default action would kill it and prove nothing).
pub fn send_signal(pid: u32, name: &str, num: u32) {
    assert!(
        wait_until(Duration::from_secs(5), || catches_signal(pid, num)),
        "process {pid} does not catch SIG{name}"
    );
    let ok = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -{name} {pid} failed");
}

/// A `tollgate run -c <path>` process. Killed on drop; its stderr is printed if the test
/// panics.
pub struct GatewayProc {
    child: Mutex<Child>,
    pub pid: u32,
    /// Holds the logs (and the config file when [`GatewayProc::start`] wrote it).
    pub dir: TempDir,
    pub config_path: PathBuf,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    exited: Mutex<Option<(std::process::ExitStatus, Instant)>>,
}

impl GatewayProc {
    /// Write `text` (a whole config) to a file of its own and start on it; waits for
    /// `/readyz`.
    pub fn start(text: &str, addr: SocketAddr, admin: SocketAddr) -> GatewayProc {
        let dir = TempDir::new("gwproc");
        let path = dir.path().join("tollgate.toml");
        fs::write(&path, text).unwrap();
        let g = GatewayProc::spawn_in(dir, &path, addr, admin);
        g.wait_ready();
        g
    }

    /// Start on an existing config path (e.g. a symlink); waits for `/readyz`.
    pub fn start_at(path: &Path, addr: SocketAddr, admin: SocketAddr) -> GatewayProc {
        let g = GatewayProc::spawn_in(TempDir::new("gwproc"), path, addr, admin);
        g.wait_ready();
        g
    }

    fn spawn_in(dir: TempDir, path: &Path, addr: SocketAddr, admin: SocketAddr) -> GatewayProc {
        let stdout = fs::File::create(dir.path().join("stdout.log")).unwrap();
        let stderr = fs::File::create(dir.path().join("stderr.log")).unwrap();
        let child = Command::new(BIN)
            .arg("run")
            .arg("-c")
            .arg(path)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .env_remove("RUST_LOG")
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {BIN}: {e}"));
        GatewayProc {
            pid: child.id(),
            child: Mutex::new(child),
            dir,
            config_path: path.to_path_buf(),
            addr,
            admin,
            exited: Mutex::new(None),
        }
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(st) = self.exit_status() {
                panic!(
                    "gateway exited ({st}) before it was ready; stderr:\n{}\nconfig:\n{}",
                    self.stderr(),
                    fs::read_to_string(&self.config_path).unwrap_or_default()
                );
            }
            if let Ok(r) = try_request(self.admin, "GET", "/readyz", &[], b"") {
                if r.status == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "gateway not ready within {START_TIMEOUT:?}; stderr:\n{}",
                self.stderr()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The exit status, if the process has exited (remembered with the time it was first
    /// seen).
    pub fn exit_status(&self) -> Option<std::process::ExitStatus> {
        self.exit().map(|(s, _)| s)
    }

    /// Exit status and when it was first observed.
    pub fn exit(&self) -> Option<(std::process::ExitStatus, Instant)> {
        let mut ex = self.exited.lock().unwrap();
        if ex.is_none() {
            if let Ok(Some(st)) = self.child.lock().unwrap().try_wait() {
                *ex = Some((st, Instant::now()));
            }
        }
        *ex
    }

    /// Poll (every 10 ms) until the process exits or `timeout` passes.
    pub fn wait_exit(&self, timeout: Duration) -> Option<(std::process::ExitStatus, Instant)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.exit() {
                return Some(e);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn sigterm(&self) {
        send_signal(self.pid, "TERM", 15);
    }

    pub fn sighup(&self) {
        send_signal(self.pid, "HUP", 1);
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&fs::read(self.dir.path().join("stderr.log")).unwrap_or_default())
            .into_owned()
    }

    pub fn metrics(&self) -> String {
        let r = get(self.admin, "/metrics");
        assert_eq!(r.status, 200, "GET /metrics: {}", r.text());
        r.text()
    }

    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric_value(&self.metrics(), name, labels)
    }

    pub fn get(&self, path: &str) -> Response {
        get(self.addr, path)
    }
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        if let Ok(mut c) = self.child.lock() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if thread::panicking() {
            let err = self.stderr();
            let start = err.len().saturating_sub(4000);
            let mut i = start;
            while !err.is_char_boundary(i) {
                i += 1;
            }
            eprintln!("--- gateway stderr (last 4000 bytes) ---\n{}", &err[i..]);
        }
    }
}

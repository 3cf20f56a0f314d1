//! Small utilities: free ports, polling, temporary directories.

use super::*;

/// A free TCP port on 127.0.0.1.
///
/// Ports are taken *below* the kernel's ephemeral range (read from
/// `/proc/sys/net/ipv4/ip_local_port_range`), walking up from a random start with a
/// process-wide counter. Outgoing connections and `bind(:0)` (used by the echo upstreams)
/// only ever get ephemeral ports, so a port handed out here cannot be taken by another test
/// of the same run between this check and the gateway's own bind.
pub fn free_port() -> u16 {
    static NEXT: OnceLock<AtomicU16> = OnceLock::new();
    static RANGE: OnceLock<(u16, u16)> = OnceLock::new();
    let (lo, hi) = *RANGE.get_or_init(|| {
        let eph_lo = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| {
                s.split_whitespace()
                    .next()
                    .and_then(|p| p.parse::<u16>().ok())
            })
            .unwrap_or(32768);
        if eph_lo > 12_000 {
            (eph_lo - 10_000, eph_lo)
        } else {
            (0, 0)
        }
    });
    if lo == 0 {
        // No room below the ephemeral range: fall back to the kernel's choice.
        return TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
    }
    let next = NEXT.get_or_init(|| {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
            ^ std::process::id().wrapping_mul(2_654_435_761);
        AtomicU16::new(lo + (seed % u32::from(hi - lo)) as u16)
    });
    for _ in 0..(hi - lo) {
        let mut p = next.fetch_add(1, Ordering::Relaxed);
        if p < lo || p >= hi {
            p = lo + (p % (hi - lo));
        }
        if let Ok(l) = TcpListener::bind(("127.0.0.1", p)) {
            drop(l);
            return p;
        }
    }
    panic!("no free port in {lo}..{hi}");
}

/// Poll `f` every 50 ms until it returns true or `timeout` passes; returns its last answer.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// A directory under the system temp dir, unique per call; removed on drop unless the
/// thread is panicking (then it is kept, and its path printed, for a post-mortem).
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "tollgate-test-{}-{}-{}-{}",
            tag,
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            nanos
        ));
        fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("test files kept in {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Accept connections on `listener` in a thread named `name` until `stop` says so: each one
/// is remembered in `conns` (so its owner can cut them all) and served by `serve` in a thread
/// of its own.
pub fn accept_loop(
    listener: TcpListener,
    name: String,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stop: impl Fn() -> bool + Send + 'static,
    serve: impl Fn(TcpStream) + Send + Sync + 'static,
) -> thread::JoinHandle<()> {
    let serve = Arc::new(serve);
    let conn_name = format!("{name}-conn");
    thread::Builder::new()
        .name(name)
        .spawn(move || {
            for stream in listener.incoming() {
                if stop() {
                    return;
                }
                let Ok(stream) = stream else { continue };
                if let Ok(c) = stream.try_clone() {
                    let mut list = conns.lock().unwrap();
                    // Forget connections that are gone, so the list stays short.
                    list.retain(|s| s.peer_addr().is_ok());
                    list.push(c);
                }
                let serve = serve.clone();
                let _ = thread::Builder::new()
                    .name(conn_name.clone())
                    .spawn(move || serve(stream));
            }
        })
        .expect("spawn an accept loop")
}

//! Resilience (issue 6): passive health ejection and return, circuit breaker, least-request
//! balancing around a slow backend.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// A keep-alive backend whose status and delay can be changed while it runs.
struct Knob {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    delay_ms: Arc<AtomicU64>,
    count: Arc<AtomicUsize>,
}

impl Knob {
    fn start(status: u16, delay_ms: u64) -> Knob {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let knob = Knob {
            addr,
            status: Arc::new(AtomicU16::new(status)),
            delay_ms: Arc::new(AtomicU64::new(delay_ms)),
            count: Arc::new(AtomicUsize::new(0)),
        };
        let (st, dl, ct) = (
            knob.status.clone(),
            knob.delay_ms.clone(),
            knob.count.clone(),
        );
        thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(s) = s else { continue };
                let (st, dl, ct) = (st.clone(), dl.clone(), ct.clone());
                thread::spawn(move || {
                    let mut r = BufReader::new(s.try_clone().unwrap());
                    let mut w = s;
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        loop {
                            let mut h = String::new();
                            if r.read_line(&mut h).unwrap_or(0) == 0 {
                                return;
                            }
                            if h == "\r\n" {
                                break;
                            }
                        }
                        ct.fetch_add(1, Ordering::SeqCst);
                        thread::sleep(Duration::from_millis(dl.load(Ordering::SeqCst)));
                        let code = st.load(Ordering::SeqCst);
                        if write!(w, "HTTP/1.1 {code} X\r\ncontent-length: 2\r\n\r\nok").is_err() {
                            return;
                        }
                    }
                });
            }
        });
        knob
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

#[test]
fn failing_backend_is_ejected_and_returns() {
    let good = Knob::start(200, 0);
    let bad = Knob::start(500, 0);
    let gw = Gateway::start(&format!(
        r#"
[[upstreams]]
name = "u"
backends = ["{}", "{}"]
[upstreams.passive_health]
consecutive_failures = 2
base_ejection_ms = 600

[[routes]]
name = "r"
paths = ["/"]
upstream = "u"
"#,
        good.addr, bad.addr
    ));
    // Round robin: the bad backend gets every other request until its second failure.
    for _ in 0..4 {
        gw.get("/");
    }
    assert_eq!(bad.count(), 2);
    let before = bad.count();
    for _ in 0..10 {
        assert_eq!(gw.get("/").status, 200, "ejected backend got traffic");
    }
    assert_eq!(bad.count(), before);
    assert!(
        wait_until(Duration::from_secs(3), || gw
            .stderr()
            .contains("ejected for")),
        "{}",
        gw.stderr()
    );
    assert_eq!(
        gw.metric(
            "tollgate_upstream_ejections_total",
            &[("upstream", "u"), ("backend", &bad.addr.to_string())]
        ),
        Some(1.0)
    );
    // After the ejection time it gets traffic again.
    thread::sleep(Duration::from_millis(700));
    for _ in 0..4 {
        gw.get("/");
    }
    assert!(bad.count() > before, "the backend did not return");
    assert!(
        wait_until(Duration::from_secs(3), || gw
            .stderr()
            .contains("returns after ejection")),
        "{}",
        gw.stderr()
    );
}

#[test]
fn circuit_breaker_opens_fails_fast_half_opens_and_closes() {
    let b = Knob::start(500, 0);
    let gw = Gateway::start(&format!(
        r#"
[[upstreams]]
name = "u"
backends = ["{}"]
[upstreams.circuit_breaker]
consecutive_failures = 3
failure_ratio = 0.0
open_ms = 500
half_open_requests = 1

[[routes]]
name = "r"
paths = ["/"]
upstream = "u"
"#,
        b.addr
    ));
    for _ in 0..3 {
        assert_eq!(gw.get("/").status, 500, "errors pass through while closed");
    }
    let t = Instant::now();
    let r = gw.get("/");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "upstream_unavailable");
    assert!(r.json()["message"].as_str().unwrap().contains("circuit"));
    assert_eq!(b.count(), 3, "an open circuit does not connect");
    assert!(t.elapsed() < Duration::from_millis(200));
    assert_eq!(
        gw.metric("tollgate_upstream_circuit_state", &[("upstream", "u")]),
        Some(1.0)
    );
    // Half-open: one probe; it fails, so the circuit opens again.
    thread::sleep(Duration::from_millis(550));
    assert_eq!(gw.get("/").status, 500);
    assert_eq!(gw.get("/").status, 503);
    // Fixed backend: the next probe closes the circuit.
    b.status.store(200, Ordering::SeqCst);
    thread::sleep(Duration::from_millis(550));
    assert_eq!(gw.get("/").status, 200);
    for _ in 0..5 {
        assert_eq!(gw.get("/").status, 200);
    }
    assert_eq!(
        gw.metric("tollgate_upstream_circuit_state", &[("upstream", "u")]),
        Some(0.0)
    );
    assert!(
        gw.stderr().contains("circuit is now Open")
            && gw.stderr().contains("circuit is now Closed")
    );
}

#[test]
fn least_request_sends_less_to_a_slow_backend() {
    let fast = Knob::start(200, 2);
    let slow = Knob::start(200, 100);
    let body = |algo: &str| {
        format!(
            "[[upstreams]]\nname = \"u\"\nbackends = [\"{}\", \"{}\"]\nalgorithm = \"{algo}\"\n\n[[routes]]\nname = \"r\"\npaths = [\"/\"]\nupstream = \"u\"\n",
            fast.addr, slow.addr
        )
    };
    // The same load with round robin, then least-request; compare the slow backend's share.
    let share = |algo: &str| {
        let gw = Gateway::start(&body(algo));
        let (f0, s0) = (fast.count(), slow.count());
        let addr = gw.addr;
        let stop = Instant::now() + Duration::from_millis(1500);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                thread::spawn(move || {
                    while Instant::now() < stop {
                        assert_eq!(get(addr, "/").status, 200);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let (f, s) = (fast.count() - f0, slow.count() - s0);
        (f, s, s as f64 / (f + s) as f64)
    };
    let (rf, rs, rr) = share("round_robin");
    let (lf, ls, lr) = share("least_request");
    eprintln!("slow share: round robin {rr:.2} ({rf}/{rs}), least request {lr:.2} ({lf}/{ls})");
    assert!(ls > 0, "the slow backend still gets some traffic");
    assert!(lf > 2 * ls, "least_request: fast {lf}, slow {ls}");
    assert!(
        lr < rr * 0.7,
        "slow share: round robin {rr:.2} ({rf}/{rs}), least request {lr:.2} ({lf}/{ls})"
    );
}

#[test]
fn canary_by_header_cookie_weight_and_body_field() {
    let v1 = Upstream::start("v1");
    let v2 = Upstream::start("v2");
    let big = Upstream::start("big");
    let gw = Gateway::start(&format!(
        r#"
[[upstreams]]
name = "v1"
backends = ["{}"]
[[upstreams]]
name = "v2"
backends = ["{}"]
[[upstreams]]
name = "big"
backends = ["{}"]

[[routes]]
name = "api"
paths = ["/api"]
upstream = "v1"

[[routes.split]]
match = {{ headers = {{ x-canary = "1" }} }}
targets = [{{ upstream = "v2" }}]

[[routes.split]]
match = {{ cookies = {{ beta = "yes" }} }}
targets = [{{ upstream = "v2" }}]

[[routes.split]]
targets = [{{ upstream = "v1", weight = 90 }}, {{ upstream = "v2", weight = 10 }}]

[[routes]]
name = "llm"
paths = ["/v1/chat"]
upstream = "v1"

[[routes.split]]
match = {{ body = {{ model = "~^big-" }} }}
targets = [{{ upstream = "big" }}]
"#,
        v1.address(),
        v2.address(),
        big.address()
    ));
    for _ in 0..20 {
        assert_eq!(
            gw.request("GET", "/api", &[("x-canary", "1")], b"")
                .upstream_id(),
            "v2"
        );
        assert_eq!(
            gw.request("GET", "/api", &[("cookie", "a=b; beta=yes")], b"")
                .upstream_id(),
            "v2"
        );
    }
    let (c1, c2) = (v1.count(), v2.count());
    for _ in 0..1000 {
        assert_eq!(gw.get("/api").status, 200);
    }
    let (n1, n2) = (v1.count() - c1, v2.count() - c2);
    assert_eq!(n1 + n2, 1000);
    assert!(
        (50..=150).contains(&n2),
        "90/10 split gave v1 {n1}, v2 {n2}"
    );

    // The body field picks the upstream, and the upstream still receives the whole body.
    let body = br#"{"model":"big-70b","messages":[]}"#;
    let r = gw.request(
        "POST",
        "/v1/chat",
        &[("content-type", "application/json")],
        body,
    );
    assert_eq!(r.upstream_id(), "big");
    assert_eq!(r.json()["body"], String::from_utf8_lossy(body).as_ref());
    let r = gw.request("POST", "/v1/chat", &[], br#"{"model":"small-1b"}"#);
    assert_eq!(r.upstream_id(), "v1");
    let r = gw.request("POST", "/v1/chat", &[], b"not json");
    assert_eq!((r.status, r.upstream_id()), (200, "v1".to_string()));
}

#[test]
fn retries_on_status_and_timeout_respect_methods_and_the_deadline() {
    let bad = Knob::start(503, 0);
    let good = Knob::start(200, 0);
    let slow1 = Knob::start(200, 600);
    let slow2 = Knob::start(200, 600);
    let gw = Gateway::start(&format!(
        r#"
[[upstreams]]
name = "mixed"
backends = ["{}", "{}"]

[[upstreams]]
name = "slow"
backends = ["{}", "{}"]

[[routes]]
name = "r"
paths = ["/r"]
upstream = "mixed"
retry_on_status = [503]
max_retries = 1

[[routes]]
name = "d"
paths = ["/d"]
upstream = "slow"
read_timeout_ms = 400
retry_on_timeout = true
max_retries = 3
deadline_ms = 700
"#,
        bad.addr, good.addr, slow1.addr, slow2.addr
    ));
    for _ in 0..10 {
        assert_eq!(
            gw.get("/r").status,
            200,
            "a 503 attempt is retried on the other backend"
        );
    }
    assert!(
        bad.count() >= 4,
        "the 503 backend was tried: {}",
        bad.count()
    );
    let before = bad.count();
    let posts: Vec<u16> = (0..10)
        .map(|_| gw.request("POST", "/r", &[], b"x").status)
        .collect();
    assert!(posts.contains(&503), "a POST is never retried: {posts:?}");
    assert_eq!(
        bad.count() - before,
        posts.iter().filter(|s| **s == 503).count()
    );

    let t = Instant::now();
    let r = gw.get("/d");
    let took = t.elapsed();
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["error"], "upstream_timeout");
    assert!(
        took >= Duration::from_millis(650),
        "retried within the deadline: {took:?}"
    );
    assert!(
        took < Duration::from_millis(1100),
        "the deadline includes retries: {took:?}"
    );
    assert_eq!(
        slow1.count() + slow2.count(),
        2,
        "two attempts fit in 700 ms"
    );
}

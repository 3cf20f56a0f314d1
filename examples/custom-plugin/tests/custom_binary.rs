//! The custom binary of this example, run as a user would: its plugin is loaded by name next
//! to the built-in ones, `check` validates its table with TOML paths, and it runs on real
//! requests to a real upstream. Uses the gateway's own test harness.

#[path = "../../../tests/common/mod.rs"]
mod common;

use common::*;
use std::time::{SystemTime, UNIX_EPOCH};
use tollgate_example_custom_plugin::sign;

const SECRET: &str = "partner-secret-0123456789abcdef0123";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn config(up: &Upstream) -> String {
    format!(
        r#"
[[upstreams]]
name = "echo"
backends = ["{}"]

[[consumers]]
username = "alice"
keys = ["alice-key-0001"]

[[routes]]
name = "signed"
paths = ["/signed"]
upstream = "echo"
plugins = [
  {{ name = "hmac_signature", keys = {{ partner = "${{PARTNER_SECRET}}" }} }},
  {{ name = "headers", response = {{ set = {{ "x-builtin" = "yes" }} }} }},
]

[[routes]]
name = "both"
paths = ["/both"]
upstream = "echo"
plugins = ["key_auth", {{ name = "hmac_signature", keys = {{ partner = "${{PARTNER_SECRET}}" }} }}]
"#,
        up.address()
    )
}

fn signed_headers(path: &str, ts: u64) -> Vec<(String, String)> {
    vec![
        ("x-key-id".into(), "partner".into()),
        ("x-timestamp".into(), ts.to_string()),
        (
            "x-signature".into(),
            sign(SECRET.as_bytes(), "GET", path, ts),
        ),
    ]
}

fn get(gw: &Gateway, path: &str, headers: &[(String, String)]) -> Response {
    let h: Vec<(&str, &str)> = headers
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    gw.request("GET", path, &h, b"")
}

#[test]
fn the_custom_plugin_runs_beside_the_builtin_ones() {
    let up = Upstream::start("u");
    let gw = Gateway::builder(&config(&up))
        .env("PARTNER_SECRET", SECRET)
        .start();

    let mut headers = signed_headers("/signed?x=1", now());
    headers.push(("x-signature-key-id".into(), "forged".into()));
    let r = get(&gw, "/signed?x=1", &headers);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-signature"), Some("verified"));
    assert_eq!(r.header("x-builtin"), Some("yes"));
    assert_eq!(
        r.upstream_header("x-signature-key-id").as_deref(),
        Some("partner")
    );
    assert_eq!(up.count(), 1);

    // Signed for another path: refused before the upstream, with the JSON error body.
    let r = get(&gw, "/signed?x=2", &signed_headers("/signed?x=1", now()));
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "invalid_signature");
    assert_eq!(r.json()["status"], 401);
    let r = get(&gw, "/signed", &[]);
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "missing_signature");
    let r = get(&gw, "/signed", &signed_headers("/signed", now() - 3600));
    assert_eq!(r.json()["error"], "stale_signature");
    assert_eq!(up.count(), 1, "no refused request reached the upstream");

    // The custom plugin's refusals are counted like a built-in's.
    let rejected = gw.metric(
        "tollgate_requests_rejected_total",
        &[
            ("route", "signed"),
            ("plugin", "hmac_signature"),
            ("status", "401"),
        ],
    );
    assert_eq!(rejected, Some(3.0));

    // Its own metric is on the gateway's /metrics.
    let verified = gw.metric(
        "tollgate_hmac_signature_verified_total",
        &[("key_id", "partner")],
    );
    assert_eq!(verified, Some(1.0));

    // Beside key_auth on one route: both must pass.
    let mut both = signed_headers("/both", now());
    let r = get(&gw, "/both", &both);
    assert_eq!(r.status, 401, "no API key");
    both.push(("x-api-key".into(), "alice-key-0001".into()));
    let r = get(&gw, "/both", &both);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("x-consumer-username").as_deref(),
        Some("alice")
    );
}

#[test]
fn check_validates_the_custom_plugins_table() {
    let dir = TempDir::new("custom-check");
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        r#"[server]
listen = ["127.0.0.1:1"]

[[routes]]
name = "r"
paths = ["/"]
plugins = [
  { name = "hmac_signature", keys = { partner = "too-short" }, max_skew_seconds = 0 },
  "mock",
]

[[routes]]
name = "s"
paths = ["/s"]
plugins = [{ name = "hmac_signature", key = "typo" }, "mock"]
"#,
    )
    .unwrap();
    let (code, _out, err) = run_cli(&["check", "-c", file.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{err}");
    for needle in [
        "routes[0].plugins[0].keys.partner (line 8): secrets are at least 32 bytes",
        "routes[0].plugins[0].max_skew_seconds (line 8): must be at least 1",
        "routes[1].plugins[0]",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    assert!(!err.contains("too-short"), "a secret was printed:\n{err}");

    // The same binary accepts a good table, and still knows every built-in plugin.
    std::fs::write(
        &file,
        format!(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n\n[[routes]]\nname = \"r\"\npaths = [\"/\"]\nplugins = [{{ name = \"hmac_signature\", keys = {{ p = \"{SECRET}\" }} }}, \"key_auth\", \"mock\"]\n"
        ),
    )
    .unwrap();
    let (code, out, err) = run_cli(&["check", "-c", file.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("OK (1 routes"), "{out}");
    let (code, out, _) = run_cli(&["--help"], &[]);
    assert_eq!(code, 0);
    for cmd in ["run", "check", "hash-password"] {
        assert!(out.contains(cmd), "{cmd} missing from --help:\n{out}");
    }
}

//! Per-consumer plugins (issue 17): `[[consumers]] plugins` and `[[consumer_groups]]`, merged
//! into a route's chain after authentication with the precedence consumer > group > route >
//! global.

mod common;

use common::*;

const KEYS: [(&str, &str); 5] = [
    ("alice", "alice-key-0001"),
    ("bob", "bob-key-00000001"),
    ("carol", "carol-key-000001"),
    ("dave", "dave-key-0000001"),
    ("eve", "eve-key-00000001"),
];

fn key(user: &str) -> &'static str {
    KEYS.iter()
        .find(|(u, _)| *u == user)
        .map(|(_, k)| *k)
        .unwrap()
}

fn config(up: &Upstream) -> String {
    format!(
        r#"
[[upstreams]]
name = "echo"
backends = ["{}"]

[[consumer_groups]]
name = "free"
plugins = [
  {{ name = "rate_limit", minute = 3, limit_by = "consumer" }},
  {{ name = "headers", request = {{ set = {{ "x-tier" = "free" }} }} }},
]

[[consumer_groups]]
name = "pro"
plugins = [
  {{ name = "rate_limit", minute = 6, limit_by = "consumer" }},
  {{ name = "headers", request = {{ set = {{ "x-tier" = "pro" }} }} }},
]

[[consumers]]
username = "alice"
groups = ["free"]
keys = ["{alice}"]

[[consumers]]
username = "bob"
groups = ["pro", "beta"]
keys = ["{bob}"]

[[consumers]]
username = "carol"
groups = ["free"]
keys = ["{carol}"]
plugins = [{{ name = "rate_limit", minute = 5, limit_by = "consumer" }}]

[[consumers]]
username = "dave"
groups = ["free"]
keys = ["{dave}"]
plugins = [{{ name = "rate_limit", enabled = false }}]

[[consumers]]
username = "eve"
keys = ["{eve}"]

[[routes]]
name = "a"
paths = ["/a"]
upstream = "echo"
plugins = ["key_auth", {{ name = "rate_limit", minute = 8, limit_by = "consumer" }}]

[[routes]]
name = "b"
paths = ["/b"]
upstream = "echo"
plugins = ["key_auth"]

[[routes]]
name = "open"
paths = ["/open"]
upstream = "echo"
"#,
        up.address(),
        alice = key("alice"),
        bob = key("bob"),
        carol = key("carol"),
        dave = key("dave"),
        eve = key("eve"),
    )
}

/// Statuses of `n` requests as `user` on `path`.
fn statuses(gw: &Gateway, path: &str, user: &str, n: usize) -> Vec<u16> {
    (0..n)
        .map(|_| {
            gw.request("GET", path, &[("x-api-key", key(user))], b"")
                .status
        })
        .collect()
}

fn passed(s: &[u16]) -> usize {
    s.iter().filter(|s| **s == 200).count()
}

#[test]
fn each_consumer_gets_its_tier_on_one_route() {
    let up = Upstream::start("u");
    let gw = Gateway::start(&config(&up));
    // Group tiers beat the route's own limit (8).
    let alice = statuses(&gw, "/a", "alice", 6);
    assert_eq!(alice, [200, 200, 200, 429, 429, 429], "free tier: 3/min");
    let bob = statuses(&gw, "/a", "bob", 9);
    assert_eq!(passed(&bob), 6, "pro tier: 6/min: {bob:?}");
    // The consumer's own entry beats its group's.
    let carol = statuses(&gw, "/a", "carol", 8);
    assert_eq!(passed(&carol), 5, "carol's own limit: {carol:?}");
    // `enabled = false` on the consumer removes the group's and the route's limit.
    let dave = statuses(&gw, "/a", "dave", 12);
    assert_eq!(passed(&dave), 12, "dave is unlimited: {dave:?}");
    // No group, no plugins: the route's chain as it is.
    let eve = statuses(&gw, "/a", "eve", 10);
    assert_eq!(passed(&eve), 8, "the route's limit: {eve:?}");

    // The 429 is the rate_limit plugin's documented answer.
    let r = gw.request("GET", "/a", &[("x-api-key", key("alice"))], b"");
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"], "rate_limited");
    assert!(r.header("retry-after").is_some());
}

#[test]
fn group_plugins_reach_the_upstream_and_count_across_routes() {
    let up = Upstream::start("u");
    let gw = Gateway::start(&config(&up));
    let r = gw.request("GET", "/b", &[("x-api-key", key("bob"))], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-tier").as_deref(), Some("pro"));
    let r = gw.request("GET", "/b", &[("x-api-key", key("alice"))], b"");
    assert_eq!(r.upstream_header("x-tier").as_deref(), Some("free"));
    // A client cannot pick its tier: the header is the group's, whatever was sent.
    let r = gw.request(
        "GET",
        "/b",
        &[("x-api-key", key("alice")), ("x-tier", "pro")],
        b"",
    );
    assert_eq!(r.upstream_header("x-tier").as_deref(), Some("free"));
    // alice used 2 of her 3 on /b: a group's limit counts the consumer on every route.
    assert_eq!(statuses(&gw, "/a", "alice", 2), [200, 429]);
    // eve has no group: nothing added.
    let r = gw.request("GET", "/b", &[("x-api-key", key("eve"))], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-tier"), None);
    // A route without authentication runs its own chain for everyone.
    let r = gw.request("GET", "/open", &[("x-api-key", key("alice"))], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-tier"), None);
    // Failed authentication never reaches a consumer's chain.
    let r = gw.request("GET", "/b", &[("x-api-key", "not-a-key-at-all")], b"");
    assert_eq!(r.status, 401);
}

#[test]
fn consumer_tiers_survive_a_reload_and_follow_a_changed_group() {
    let up = Upstream::start("u");
    let gw = Gateway::start(&config(&up));
    let reloads = "tollgate_config_reloads_total";
    assert_eq!(passed(&statuses(&gw, "/b", "alice", 2)), 2);
    // Same definitions: the counters carry over (alice has 1 left).
    gw.rewrite_config(&format!("{}\n# v2\n", config(&up)));
    assert_eq!(
        gw.wait_metric(reloads, &[("result", "success")], 1.0),
        Some(1.0)
    );
    assert_eq!(statuses(&gw, "/b", "alice", 2), [200, 429]);
    // The free tier is raised: a new definition, a new budget.
    gw.rewrite_config(&config(&up).replace("minute = 3,", "minute = 4,"));
    assert_eq!(
        gw.wait_metric(reloads, &[("result", "success")], 2.0),
        Some(2.0)
    );
    assert_eq!(passed(&statuses(&gw, "/b", "alice", 6)), 4);
}

fn check(text: &str) -> String {
    let dir = TempDir::new("consumer-check");
    let file = dir.path().join("c.toml");
    std::fs::write(&file, text).unwrap();
    let (code, _out, err) = run_cli(&["check", "-c", file.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "check should fail:\n{text}\n{err}");
    err
}

#[test]
fn check_refuses_consumer_plugins_that_cannot_apply() {
    let err = check(
        r#"
[server]
listen = ["127.0.0.1:1"]

[[upstreams]]
name = "echo"
backends = ["127.0.0.1:2"]

[[consumer_groups]]
name = "g1"
plugins = [{ name = "rate_limit", minute = 1 }, { name = "cache" }]

[[consumer_groups]]
name = "g2"
plugins = [{ name = "rate_limit", minute = 2 }, { name = "nope" }]

[[consumer_groups]]
name = "g1"

[[consumers]]
username = "x"
groups = ["g1", "g2"]
keys = ["x-key-000001"]
plugins = [{ name = "key_auth" }, { name = "rate_limit", minute = "many" }]

[[consumers]]
username = "y"
groups = ["g1", "g2"]
keys = ["y-key-000001"]

[[consumers]]
username = "z"
keys = ["z-key-000001"]
plugins = [{ name = "ip_restriction", enabled = false }]

[[routes]]
name = "r"
paths = ["/"]
upstream = "echo"
plugins = ["key_auth", { name = "ip_restriction", allow = ["127.0.0.1"] }]
"#,
    );
    for needle in [
        "consumer_groups[0].plugins[1] (line 11): the response cache is configured per route",
        "consumer_groups[1].plugins[1] (line 15): unknown plugin \"nope\"",
        "consumer_groups[2].name (line 18): duplicate consumer group \"g1\"",
        "consumers[0].plugins[0] (line 24): \"key_auth\" runs before the consumer is known",
        "consumers[0].plugins[1].minute",
        // y is in both groups and sets no limit of its own.
        "consumer_groups[1].plugins[0] (line 15): plugin \"rate_limit\" is also configured by consumer group \"g1\"",
        "consumers[2].plugins[0] (line 34): \"ip_restriction\" runs before the consumer is known",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

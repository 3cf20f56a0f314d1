//! Authentication and consumers (issue 3): key_auth, basic_auth, jwt (with JWKS), acl,
//! alternatives, anonymous, identity headers, upgrade requests and secrets in logs.

mod common;

use base64::Engine;
use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

const ALICE_KEY: &str = "alice-secret-key-0001";
const BOB_KEY: &str = "bob-secret-key-0002";
const HS_SECRET: &str = "hs256-secret-for-tests-0123456789abcdef";
const PASSWORD: &str = "correct horse battery staple";

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/jwt/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hash_password(pw: &str) -> String {
    let mut child = Command::new(BIN)
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{pw}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let h = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(h.starts_with("$argon2id$"), "{h}");
    h
}

/// Consumers used by every test: alice (admin, beta) with every kind of credential, bob
/// (no groups) with a key, and guest for anonymous access.
fn consumers(password_hash: &str) -> String {
    format!(
        r#"
[[consumers]]
username = "alice"
custom_id = "user-1042"
groups = ["admin", "beta"]
keys = ["{ALICE_KEY}"]
basic_auth = {{ password_hash = "{password_hash}" }}
jwt = [
  {{ key = "alice-hs", algorithm = "HS256", secret = "{HS_SECRET}" }},
  {{ key = "alice-rs", algorithm = "RS256", public_key_file = "{rsa}" }},
  {{ key = "alice-es", algorithm = "ES256", public_key_file = "{ec}" }},
  {{ key = "alice-ed", algorithm = "EdDSA", public_key_file = "{ed}" }},
]

[[consumers]]
username = "bob"
keys = [{{ id = "bob-ci", key = "{BOB_KEY}" }}]

[[consumers]]
username = "guest"
"#,
        rsa = fixture("rsa_public.pem"),
        ec = fixture("ec_public.pem"),
        ed = fixture("ed_public.pem"),
    )
}

fn upstream_section(up: &Upstream) -> String {
    format!(
        "[[upstreams]]\nname = \"echo\"\nbackends = [\"{}\"]\n",
        up.address()
    )
}

fn route(name: &str, path: &str, plugins: &str) -> String {
    format!("\n[[routes]]\nname = \"{name}\"\npaths = [\"{path}\"]\nupstream = \"echo\"\nplugins = [{plugins}]\n")
}

fn token(
    alg: Algorithm,
    kid: Option<&str>,
    claims: serde_json::Value,
    key: &EncodingKey,
) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    encode(&h, &claims, key).unwrap()
}

fn hs_key() -> EncodingKey {
    EncodingKey::from_secret(HS_SECRET.as_bytes())
}

fn pem_key(alg: Algorithm, file: &str) -> EncodingKey {
    let pem = std::fs::read(fixture(file)).unwrap();
    match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem).unwrap(),
        _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
    }
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

fn basic(user: &str, pw: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
    )
}

fn assert_error(r: &Response, status: u16, code: &str) {
    assert_eq!(r.status, status, "body: {}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let j = r.json();
    assert_eq!(j["error"], code, "body: {}", r.text());
    assert_eq!(j["status"], status);
}

#[test]
fn key_auth_identity_headers_and_failures() {
    let up = Upstream::start("u");
    let gw = Gateway::start(&format!(
        "{}{}{}{}",
        consumers(&hash_password(PASSWORD)),
        upstream_section(&up),
        route("keys", "/keys", r#""key_auth""#),
        route(
            "hidden",
            "/hidden",
            r#"{ name = "key_auth", key_names = ["x-key"], query_param = "apikey", hide_credentials = true }"#
        ),
    ));

    let r = gw.request("GET", "/keys/a", &[("apikey", ALICE_KEY)], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.upstream_header("x-consumer-username").as_deref(),
        Some("alice")
    );
    assert_eq!(r.upstream_header("x-consumer-id").as_deref(), Some("alice"));
    assert_eq!(
        r.upstream_header("x-consumer-custom-id").as_deref(),
        Some("user-1042")
    );
    assert_eq!(
        r.upstream_header("x-consumer-groups").as_deref(),
        Some("admin, beta")
    );
    assert_eq!(
        r.upstream_header("x-credential-identifier").as_deref(),
        Some("alice-key-0")
    );
    assert_eq!(
        r.upstream_header("apikey").as_deref(),
        Some(ALICE_KEY),
        "not hidden by default"
    );

    let r = gw.request("GET", "/keys", &[("x-api-key", BOB_KEY)], b"");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("x-consumer-username").as_deref(),
        Some("bob")
    );
    assert_eq!(
        r.upstream_header("x-credential-identifier").as_deref(),
        Some("bob-ci")
    );
    assert_eq!(r.upstream_header("x-consumer-groups"), None);

    let before = up.count();
    let r = gw.get("/keys");
    assert_error(&r, 401, "missing_credentials");
    assert_eq!(r.header("www-authenticate"), Some("Key"));
    let r = gw.request("GET", "/keys", &[("apikey", "alice-secret-key-0000")], b"");
    assert_error(&r, 401, "invalid_credentials");
    assert_eq!(r.header("www-authenticate"), Some("Key"));
    assert!(!r.text().contains("alice-secret"), "the key is not echoed");
    assert_eq!(
        up.count(),
        before,
        "refused requests never reach the upstream"
    );

    // Query parameter, hidden from the upstream together with the header.
    let r = gw.get(&format!("/hidden/x?a=1&apikey={ALICE_KEY}&b=2"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.upstream_path(), "/hidden/x?a=1&b=2");
    let r = gw.request("GET", "/hidden", &[("x-key", ALICE_KEY)], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-key"), None);
    // The default header names are not read when key_names is set.
    assert_error(
        &gw.request("GET", "/hidden", &[("apikey", ALICE_KEY)], b""),
        401,
        "missing_credentials",
    );

    assert_eq!(
        gw.metric(
            "tollgate_auth_failures_total",
            &[
                ("route", "keys"),
                ("plugin", "key_auth"),
                ("reason", "missing_credentials")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        gw.metric(
            "tollgate_auth_failures_total",
            &[("route", "keys"), ("reason", "invalid_credentials")]
        ),
        Some(1.0)
    );
}

#[test]
fn spoofed_identity_headers_never_reach_the_upstream() {
    let up = Upstream::start("u");
    let gw = Gateway::start(&format!(
        "{}{}{}\n[[routes]]\nname = \"open\"\npaths = [\"/open\"]\nupstream = \"echo\"\n",
        consumers(&hash_password(PASSWORD)),
        upstream_section(&up),
        route("keys", "/keys", r#""key_auth""#),
    ));
    let spoof = [
        ("x-consumer-username", "admin"),
        ("x-consumer-id", "root"),
        ("x-consumer-custom-id", "0"),
        ("x-consumer-groups", "admin"),
        ("x-credential-identifier", "forged"),
        ("x-anonymous-consumer", "false"),
    ];
    let r = gw.request("GET", "/open", &spoof, b"");
    assert_eq!(r.status, 200);
    for (h, _) in spoof {
        assert_eq!(
            r.upstream_header(h),
            None,
            "{h} was forwarded on an open route"
        );
    }
    let mut with_key = spoof.to_vec();
    with_key.push(("apikey", BOB_KEY));
    let r = gw.request("GET", "/keys", &with_key, b"");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("x-consumer-username").as_deref(),
        Some("bob")
    );
    assert_eq!(r.upstream_header("x-consumer-id").as_deref(), Some("bob"));
    assert_eq!(
        r.upstream_header("x-credential-identifier").as_deref(),
        Some("bob-ci")
    );
    for h in [
        "x-consumer-custom-id",
        "x-consumer-groups",
        "x-anonymous-consumer",
    ] {
        assert_eq!(r.upstream_header(h), None, "{h} forged value forwarded");
    }
}

#[test]
fn basic_auth_accepts_the_password_and_refuses_everything_else() {
    let up = Upstream::start("u");
    let gw = Gateway::start(&format!(
        "{}{}{}",
        consumers(&hash_password(PASSWORD)),
        upstream_section(&up),
        route(
            "basic",
            "/basic",
            r#"{ name = "basic_auth", realm = "orders", hide_credentials = true }"#
        ),
    ));
    for _ in 0..3 {
        // The second and third hit the verification cache; the answer must not change.
        let r = gw.request(
            "GET",
            "/basic",
            &[("authorization", &basic("alice", PASSWORD))],
            b"",
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.upstream_header("x-consumer-username").as_deref(),
            Some("alice")
        );
        assert_eq!(
            r.upstream_header("x-credential-identifier").as_deref(),
            Some("alice")
        );
        assert_eq!(r.upstream_header("authorization"), None, "hide_credentials");
    }
    let challenge = Some("Basic realm=\"orders\", charset=\"UTF-8\"");
    let r = gw.get("/basic");
    assert_error(&r, 401, "missing_credentials");
    assert_eq!(r.header("www-authenticate"), challenge);
    for bad in [
        basic("alice", "wrong"),
        basic("mallory", PASSWORD),
        "Basic !!!not-base64".to_string(),
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("no-colon")
        ),
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode([0xff, 0xfe, b':', b'x'])
        ),
    ] {
        let r = gw.request("GET", "/basic", &[("authorization", &bad)], b"");
        assert_error(&r, 401, "invalid_credentials");
        assert_eq!(r.header("www-authenticate"), challenge, "{bad}");
    }
    // A Bearer token is not a basic credential: "missing", so a jwt alternative could take it.
    assert_error(
        &gw.request("GET", "/basic", &[("authorization", "Bearer x.y.z")], b""),
        401,
        "missing_credentials",
    );
    assert!(gw.is_running());
}

#[test]
fn jwt_signatures_algorithms_and_claims() {
    let up = Upstream::start("u");
    let gw = Gateway::start(&format!(
        "{}{}{}{}{}",
        consumers(&hash_password(PASSWORD)),
        upstream_section(&up),
        route("jwt", "/jwt", r#"{ name = "jwt", clock_skew_seconds = 5 }"#),
        route(
            "aud",
            "/aud",
            r#"{ name = "jwt", audiences = ["orders"], issuers = ["https://issuer.test"], required_claims = ["sub"] }"#
        ),
        route(
            "where",
            "/where",
            r#"{ name = "jwt", header = false, cookie = "session", query_param = "jwt" }"#
        ),
    ));
    let ok = serde_json::json!({"sub": "alice", "exp": now() + 300});
    let get = |path: &str, t: &str| gw.request("GET", path, &[("authorization", &bearer(t))], b"");

    // Every supported key type, chosen by kid.
    for (alg, kid, key) in [
        (Algorithm::HS256, "alice-hs", hs_key()),
        (
            Algorithm::RS256,
            "alice-rs",
            pem_key(Algorithm::RS256, "rsa_private.pem"),
        ),
        (
            Algorithm::ES256,
            "alice-es",
            pem_key(Algorithm::ES256, "ec_private.pem"),
        ),
        (
            Algorithm::EdDSA,
            "alice-ed",
            pem_key(Algorithm::EdDSA, "ed_private.pem"),
        ),
    ] {
        let r = get("/jwt", &token(alg, Some(kid), ok.clone(), &key));
        assert_eq!(r.status, 200, "{alg:?}: {}", r.text());
        assert_eq!(
            r.upstream_header("x-consumer-username").as_deref(),
            Some("alice")
        );
        assert_eq!(
            r.upstream_header("x-credential-identifier").as_deref(),
            Some(kid)
        );
    }
    // No kid: the key is found by the `iss` claim.
    let by_iss = token(
        Algorithm::HS256,
        None,
        serde_json::json!({"iss": "alice-hs", "exp": now() + 60}),
        &hs_key(),
    );
    assert_eq!(get("/jwt", &by_iss).status, 200);

    let bad = |path: &str, t: &str, status: u16, code: &str| {
        let r = get(path, t);
        assert_error(&r, status, code);
        let challenge = r.header("www-authenticate").unwrap_or_default().to_string();
        assert!(
            challenge.starts_with("Bearer error=\"invalid_token\", error_description="),
            "{code}: {challenge}"
        );
    };
    let expired = token(
        Algorithm::HS256,
        Some("alice-hs"),
        serde_json::json!({"exp": now() - 60}),
        &hs_key(),
    );
    bad("/jwt", &expired, 401, "token_expired");
    // Within the configured skew an expired token still passes.
    let just_expired = token(
        Algorithm::HS256,
        Some("alice-hs"),
        serde_json::json!({"exp": now() - 2}),
        &hs_key(),
    );
    assert_eq!(get("/jwt", &just_expired).status, 200);
    let future = token(
        Algorithm::HS256,
        Some("alice-hs"),
        serde_json::json!({"nbf": now() + 120}),
        &hs_key(),
    );
    bad("/jwt", &future, 401, "token_not_yet_valid");
    let good = token(Algorithm::HS256, Some("alice-hs"), ok.clone(), &hs_key());
    let mut tampered = good.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    bad("/jwt", &tampered, 401, "bad_signature");
    // Claims changed after signing.
    let parts: Vec<&str> = good.split('.').collect();
    let forged_claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(r#"{"sub":"root","exp":9999999999}"#);
    bad(
        "/jwt",
        &format!("{}.{}.{}", parts[0], forged_claims, parts[2]),
        401,
        "bad_signature",
    );
    // alg none, with and without a signature.
    let none_header = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(r#"{"alg":"none","typ":"JWT","kid":"alice-hs"}"#);
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(ok.to_string());
    bad(
        "/jwt",
        &format!("{none_header}.{claims}."),
        401,
        "unsupported_algorithm",
    );
    bad(
        "/jwt",
        &format!("{none_header}.{claims}.{}", parts[2]),
        401,
        "unsupported_algorithm",
    );
    // HS/RS confusion: an HS256 token "signed" with the RSA public key, naming the RS key.
    let public_pem = std::fs::read(fixture("rsa_public.pem")).unwrap();
    let confused = token(
        Algorithm::HS256,
        Some("alice-rs"),
        ok.clone(),
        &EncodingKey::from_secret(&public_pem),
    );
    bad("/jwt", &confused, 401, "algorithm_mismatch");
    // A right signature with the wrong algorithm label for the key.
    let rs384 = token(
        Algorithm::RS384,
        Some("alice-rs"),
        ok.clone(),
        &pem_key(Algorithm::RS384, "rsa_private.pem"),
    );
    bad("/jwt", &rs384, 401, "algorithm_mismatch");
    bad(
        "/jwt",
        &token(Algorithm::HS256, Some("nobody"), ok.clone(), &hs_key()),
        401,
        "unknown_key",
    );
    bad("/jwt", "not-a-token", 401, "malformed_token");
    bad("/jwt", "a.b.c", 401, "malformed_token");
    let r = gw.get("/jwt");
    assert_error(&r, 401, "missing_credentials");
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));

    // Audience mismatch is 403; issuer and required claims are 401.
    let claims = |aud: &str, iss: &str, sub: bool| {
        let mut c = serde_json::json!({"aud": aud, "iss": iss, "exp": now() + 60});
        if sub {
            c["sub"] = "alice".into();
        }
        token(Algorithm::HS256, Some("alice-hs"), c, &hs_key())
    };
    assert_eq!(
        get("/aud", &claims("orders", "https://issuer.test", true)).status,
        200
    );
    bad(
        "/aud",
        &claims("billing", "https://issuer.test", true),
        403,
        "invalid_audience",
    );
    bad(
        "/aud",
        &claims("orders", "https://evil.test", true),
        401,
        "invalid_issuer",
    );
    bad(
        "/aud",
        &claims("orders", "https://issuer.test", false),
        401,
        "invalid_claims",
    );

    // Cookie and query parameter sources.
    let r = gw.request(
        "GET",
        "/where",
        &[("cookie", &format!("a=b; session={good}"))],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(gw.get(&format!("/where?jwt={good}")).status, 200);
    assert_error(
        &gw.request("GET", "/where", &[("authorization", &bearer(&good))], b""),
        401,
        "missing_credentials",
    );
    assert_eq!(
        gw.metric(
            "tollgate_auth_failures_total",
            &[
                ("route", "jwt"),
                ("plugin", "jwt"),
                ("reason", "token_expired")
            ]
        ),
        Some(1.0)
    );
}

#[test]
fn jwks_file_rotation_on_reload() {
    let up = Upstream::start("u");
    let dir = TempDir::new("jwks");
    let jwks = dir.path().join("jwks.json");
    std::fs::copy(fixture("jwks1.json"), &jwks).unwrap();
    let body = format!(
        "{}{}{}",
        consumers(&hash_password(PASSWORD)),
        upstream_section(&up),
        route(
            "jwks",
            "/jwks",
            &format!(r#"{{ name = "jwt", jwks_file = "{}" }}"#, jwks.display())
        ),
    );
    let gw = Gateway::start(&body);
    let claims = serde_json::json!({"sub": "user-1042", "exp": now() + 300});
    let t1 = token(
        Algorithm::RS256,
        Some("jwks-key-1"),
        claims.clone(),
        &pem_key(Algorithm::RS256, "rsa2_private.pem"),
    );
    let t2 = token(
        Algorithm::RS256,
        Some("jwks-key-2"),
        claims.clone(),
        &pem_key(Algorithm::RS256, "rsa_private.pem"),
    );
    let get = |t: &str| gw.request("GET", "/jwks", &[("authorization", &bearer(t))], b"");
    let r = get(&t1);
    assert_eq!(r.status, 200, "{}", r.text());
    // `sub` names the consumer by custom id.
    assert_eq!(
        r.upstream_header("x-consumer-username").as_deref(),
        Some("alice")
    );
    assert_eq!(
        r.upstream_header("x-credential-identifier").as_deref(),
        Some("jwks-key-1")
    );
    assert_error(&get(&t2), 401, "unknown_key");
    let stranger = token(
        Algorithm::RS256,
        Some("jwks-key-1"),
        serde_json::json!({"sub": "nobody"}),
        &pem_key(Algorithm::RS256, "rsa2_private.pem"),
    );
    assert_error(&get(&stranger), 401, "unknown_consumer");

    // Rotate: the file now publishes key 2 only; a reload picks it up.
    std::fs::copy(fixture("jwks2.json"), &jwks).unwrap();
    gw.reload();
    assert!(
        wait_until(std::time::Duration::from_secs(5), || get(&t2).status == 200),
        "rotated key not accepted: {}",
        gw.stderr()
    );
    assert_error(&get(&t1), 401, "unknown_key");
}

#[test]
fn jwks_url_is_fetched_and_cached() {
    // A one-file HTTP server publishing jwks1.json, counting fetches.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let f2 = fetches.clone();
    std::thread::spawn(move || {
        let body = std::fs::read_to_string(fixture("jwks1.json")).unwrap();
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = std::io::Read::read(&mut s, &mut buf);
            f2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = write!(s, "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
        }
    });
    let up = Upstream::start("u");
    let gw = Gateway::start(&format!(
        "{}{}{}",
        consumers(&hash_password(PASSWORD)),
        upstream_section(&up),
        route(
            "remote",
            "/remote",
            &format!(
                r#"{{ name = "jwt", jwks_url = "http://{addr}/jwks.json", jwks_consumer = "guest" }}"#
            )
        ),
    ));
    let t = token(
        Algorithm::RS256,
        Some("jwks-key-1"),
        serde_json::json!({"exp": now() + 60}),
        &pem_key(Algorithm::RS256, "rsa2_private.pem"),
    );
    for _ in 0..5 {
        let r = gw.request("GET", "/remote", &[("authorization", &bearer(&t))], b"");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.upstream_header("x-consumer-username").as_deref(),
            Some("guest")
        );
    }
    assert_eq!(
        fetches.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the JWKS is cached"
    );
}

#[test]
fn auth_plugins_are_alternatives_and_anonymous_needs_no_credentials() {
    let up = Upstream::start("u");
    let gw = Gateway::start(&format!(
        "{}{}{}{}",
        consumers(&hash_password(PASSWORD)),
        upstream_section(&up),
        route("either", "/either", r#""key_auth", "jwt""#),
        route(
            "anon",
            "/anon",
            r#"{ name = "key_auth", anonymous = "guest" }, "basic_auth""#
        ),
    ));
    let jwt = token(
        Algorithm::HS256,
        Some("alice-hs"),
        serde_json::json!({"exp": now() + 60}),
        &hs_key(),
    );
    let r = gw.request("GET", "/either", &[("apikey", BOB_KEY)], b"");
    assert_eq!(
        r.upstream_header("x-consumer-username").as_deref(),
        Some("bob")
    );
    let r = gw.request("GET", "/either", &[("authorization", &bearer(&jwt))], b"");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("x-consumer-username").as_deref(),
        Some("alice")
    );
    // Neither: the first plugin's "missing" answer.
    let r = gw.get("/either");
    assert_error(&r, 401, "missing_credentials");
    assert_eq!(r.header("www-authenticate"), Some("Key"));
    // A wrong credential for one plugin is reported even though the other found nothing.
    let r = gw.request("GET", "/either", &[("authorization", "Bearer x.y.z")], b"");
    assert_error(&r, 401, "malformed_token");

    let r = gw.get("/anon");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.upstream_header("x-consumer-username").as_deref(),
        Some("guest")
    );
    assert_eq!(
        r.upstream_header("x-anonymous-consumer").as_deref(),
        Some("true")
    );
    assert_eq!(r.upstream_header("x-credential-identifier"), None);
    let r = gw.request(
        "GET",
        "/anon",
        &[("authorization", &basic("alice", PASSWORD))],
        b"",
    );
    assert_eq!(
        r.upstream_header("x-consumer-username").as_deref(),
        Some("alice")
    );
    assert_eq!(r.upstream_header("x-anonymous-consumer"), None);
    // Wrong credentials are refused even with an anonymous consumer configured.
    assert_error(
        &gw.request("GET", "/anon", &[("apikey", "wrong-key-123456")], b""),
        401,
        "invalid_credentials",
    );
    assert_error(
        &gw.request(
            "GET",
            "/anon",
            &[("authorization", &basic("alice", "nope"))],
            b"",
        ),
        401,
        "invalid_credentials",
    );
}

#[test]
fn acl_allows_and_denies_groups() {
    let up = Upstream::start("u");
    let gw = Gateway::start(&format!(
        "{}{}{}{}",
        consumers(&hash_password(PASSWORD)),
        upstream_section(&up),
        route(
            "admins",
            "/admins",
            r#"{ name = "key_auth", anonymous = "guest" }, { name = "acl", allow = ["admin"] }"#
        ),
        route(
            "nobeta",
            "/nobeta",
            r#""key_auth", { name = "acl", deny = ["beta"] }"#
        ),
    ));
    assert_eq!(
        gw.request("GET", "/admins", &[("apikey", ALICE_KEY)], b"")
            .status,
        200
    );
    assert_error(
        &gw.request("GET", "/admins", &[("apikey", BOB_KEY)], b""),
        403,
        "forbidden",
    );
    assert_error(&gw.get("/admins"), 403, "forbidden");
    assert_error(
        &gw.request("GET", "/nobeta", &[("apikey", ALICE_KEY)], b""),
        403,
        "forbidden",
    );
    assert_eq!(
        gw.request("GET", "/nobeta", &[("apikey", BOB_KEY)], b"")
            .status,
        200
    );
    assert_eq!(
        gw.metric(
            "tollgate_auth_failures_total",
            &[
                ("route", "admins"),
                ("plugin", "acl"),
                ("reason", "forbidden")
            ]
        ),
        Some(2.0)
    );
}

#[test]
fn upgrade_requests_go_through_auth() {
    let up = Upstream::start("u");
    let gw = Gateway::start(&format!(
        "{}{}{}",
        consumers(&hash_password(PASSWORD)),
        upstream_section(&up),
        route("ws", "/ws", r#""key_auth""#),
    ));
    let before = up.count();
    let ws = [
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let r = gw.request("GET", "/ws", &ws, b"");
    assert_error(&r, 401, "missing_credentials");
    let mut bad = ws.to_vec();
    bad.push(("apikey", "not-a-valid-key"));
    assert_error(
        &gw.request("GET", "/ws", &bad, b""),
        401,
        "invalid_credentials",
    );
    assert_eq!(
        up.count(),
        before,
        "an unauthenticated upgrade reached the upstream"
    );
}

#[test]
fn config_errors_for_consumers_and_auth_plugins() {
    let dir = TempDir::new("authcfg");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[[consumers]]
username = "a"
keys = ["short"]
jwt = [{{ key = "k", algorithm = "HS256", secret = "too-short" }}, {{ key = "r", algorithm = "RS256", public_key = "not a pem" }}]
basic_auth = {{ password_hash = "plaintext" }}

[[consumers]]
username = "b"
keys = ["{ALICE_KEY}", "{ALICE_KEY}"]

[[routes]]
name = "r"
paths = ["/"]
plugins = [{{ name = "key_auth", anonymous = "ghost" }}, {{ name = "acl", allow = ["x"] }}, {{ name = "mock" }}]

[[routes]]
name = "s"
paths = ["/s"]
plugins = [{{ name = "acl", allow = ["x"] }}, "mock"]
"#
        ),
    )
    .unwrap();
    let (code, _out, err) = run_cli(&["check", "-c", path.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{err}");
    for needle in [
        "consumers[0].keys[0] (line 4): API keys must be at least 8 characters",
        "consumers[0].jwt[0].secret",
        "consumers[0].jwt[1].public_key",
        "consumers[0].basic_auth.password_hash",
        "consumers[1].keys[1]",
        "routes[0].plugins[0].anonymous",
        "routes[1].plugins",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    assert!(!err.contains(ALICE_KEY), "a key was printed:\n{err}");
    assert!(!err.contains("too-short"), "a secret was printed:\n{err}");
}

#[test]
fn no_secret_appears_in_logs() {
    let up = Upstream::start("u");
    let gw = Gateway::builder(&format!(
        "{}{}{}{}{}",
        consumers(&hash_password(PASSWORD)),
        upstream_section(&up),
        route(
            "keys",
            "/keys",
            r#"{ name = "key_auth", query_param = "apikey" }"#
        ),
        route("basic", "/basic", r#""basic_auth""#),
        route("jwt", "/jwt", r#""jwt""#),
    ))
    .rust_log("info,tollgate=trace,tollgate_plugins=trace")
    .start();
    let jwt = token(
        Algorithm::HS256,
        Some("alice-hs"),
        serde_json::json!({"exp": now() + 60}),
        &hs_key(),
    );
    let expired = token(
        Algorithm::HS256,
        Some("alice-hs"),
        serde_json::json!({"exp": now() - 600}),
        &hs_key(),
    );
    gw.request("GET", "/keys", &[("apikey", ALICE_KEY)], b"");
    gw.get(&format!("/keys?apikey={BOB_KEY}"));
    gw.request("GET", "/keys", &[("apikey", "wrong-but-secret-key")], b"");
    gw.request(
        "GET",
        "/basic",
        &[("authorization", &basic("alice", PASSWORD))],
        b"",
    );
    gw.request(
        "GET",
        "/basic",
        &[("authorization", &basic("alice", "wrong-secret-pw"))],
        b"",
    );
    gw.request("GET", "/jwt", &[("authorization", &bearer(&jwt))], b"");
    gw.request("GET", "/jwt", &[("authorization", &bearer(&expired))], b"");
    gw.reload();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let logs = format!("{}\n{}", gw.stdout(), gw.stderr());
    assert!(gw.access_log().len() >= 7, "access log missing:\n{logs}");
    let sig = |t: &str| t.rsplit('.').next().unwrap().to_string();
    for secret in [
        ALICE_KEY,
        BOB_KEY,
        "wrong-but-secret-key",
        PASSWORD,
        "wrong-secret-pw",
        HS_SECRET,
        &sig(&jwt),
        &sig(&expired),
    ] {
        assert!(
            !logs.contains(secret),
            "secret {secret:?} found in logs:\n{logs}"
        );
    }
}

#[test]
fn remembered_jwt_still_expires() {
    let up = Upstream::start("u");
    let gw = Gateway::start(&format!(
        "{}{}{}",
        consumers(&hash_password(PASSWORD)),
        upstream_section(&up),
        route("jwt", "/jwt", r#"{ name = "jwt", clock_skew_seconds = 0 }"#),
    ));
    let t = token(
        Algorithm::RS256,
        Some("alice-rs"),
        serde_json::json!({"exp": now() + 2}),
        &pem_key(Algorithm::RS256, "rsa_private.pem"),
    );
    for _ in 0..3 {
        // Verified once, then served from the verification cache.
        assert_eq!(
            gw.request("GET", "/jwt", &[("authorization", &bearer(&t))], b"")
                .status,
            200
        );
    }
    std::thread::sleep(std::time::Duration::from_millis(3100));
    assert_error(
        &gw.request("GET", "/jwt", &[("authorization", &bearer(&t))], b""),
        401,
        "token_expired",
    );
}

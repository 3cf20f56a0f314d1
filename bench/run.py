#!/usr/bin/env python3
"""Benchmark driver for tollgate (stdlib only). Normally started by bench/run.sh, which builds
the binaries first and bounds the whole run in time.

Starts an nginx upstream, the reference proxies (nginx, the bare Pingora "floor"), a
redis-server (no persistence; for the scenarios that use Redis, left out with a message when it
is not installed) and tollgate, all on free 127.0.0.1 ports, then runs wrk against every target
in interleaved rounds and prints / writes a table. One probe request before and after every run
must answer as at start-up (a cache target: X-Cache-Status HIT); for the Redis cache target,
Redis's counters must show one lookup per request and no miss (see redis_hit_check). Every
process it starts is recorded in $BENCH_TMP/pids (run.sh's EXIT trap kills those too) and
killed on exit.

Environment:
  DURATION   wrk duration per run          (default 10s)
  ROUNDS     interleaved rounds            (default 3)
  CONNS      connection counts, comma list (default 64,256)
  WARMUP     warm-up per target and conns before the rounds, 0 to skip (default 1s)
  TARGETS    only run targets whose name contains one of these comma-separated words
  QUIET_WAIT seconds to wait at the start for other processes to stop using CPU (default 60)
  TOLLGATE_ACCESS_LOG=1   let tollgate write its access log to a file in the temp dir
                          (default: access log disabled)
  BENCH_TMP  temp dir for configs, logs, pid files (run.sh makes one)
  TOLLGATE_BIN, BENCH_REV   binary to measure and its label (run.sh sets both)
  TOLLGATE_BASELINE_BIN, BENCH_BASELINE_REV   optional second tollgate binary and its label
                          (run.sh sets both for BASELINE=<commit>): started with the same config
                          on its own port; every tollgate scenario runs against both, in the
                          same rounds, and the report adds new/baseline ratios
  TOLLGATE_CUSTOM_BIN     the custom binary of examples/custom-plugin (prepare.sh sets it for
                          working-tree runs): started as a third tollgate for the scenarios
                          marked binary="custom" (the hmac_signature plugin) and its own copy
                          of /proxy/hello; without it those scenarios are left out
  NGINX_LUA=0             leave out the nginx + Lua reference even when the module is installed
  REDIS_CACHE_TIMEOUT_MS  `timeout_ms` of the Redis cache scenario (default 100)
"""

import datetime
import http.client
import json
import os
import platform
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
TOLLGATE_BIN = os.environ.get("TOLLGATE_BIN") or os.path.join(ROOT, "target", "release", "tollgate")
BASELINE_BIN = os.environ.get("TOLLGATE_BASELINE_BIN", "")
# The custom binary of examples/custom-plugin (the built-in plugins + hmac_signature), for the
# scenarios with `binary="custom"`; prepare.sh builds it for working-tree runs.
CUSTOM_BIN = os.environ.get("TOLLGATE_CUSTOM_BIN", "")
BASELINE_REV = os.environ.get("BENCH_BASELINE_REV", "") or ("base" if BASELINE_BIN else "")
FLOOR_BIN = os.path.join(BENCH, "floor", "target", "release", "tollgate-bench-floor")

# The body every target answers with (nginx upstream and tollgate's mock route alike).
BODY = "hello"
# What the upstream answers on /events: an OpenAI-style stream (two content events, the usage
# event a client gets with stream_options.include_usage, [DONE]), as text/event-stream.
SSE_EVENTS = [
    '{"object":"chat.completion.chunk","model":"bench","choices":[{"index":0,"delta":{"content":"hel"}}]}',
    '{"object":"chat.completion.chunk","model":"bench","choices":[{"index":0,"delta":{"content":"lo"}}]}',
    '{"object":"chat.completion.chunk","model":"bench","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}',
    "[DONE]",
]
SSE_BODY = "".join(f"data: {e}\n\n" for e in SSE_EVENTS)


def upstream_http(port):
    """The upstream nginx's server block (nginx strings take \\n and \\" escapes)."""
    sse = SSE_BODY.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return UPSTREAM_HTTP.format(port=port, body=BODY, sse=sse)


def expected_body(path):
    """The body a target must answer on `path` (the SSE scenarios end in /events)."""
    return SSE_BODY if path.endswith("/events") else BODY


# ---------------------------------------------------------------------------------------------
# tollgate scenarios. Adding one is a one-line change: a route named after the scenario is
# generated with prefix path "/<name>"; proxied routes strip that prefix and go to the nginx
# upstream ("origin"); `plugins` is the inside of a TOML inline array; `headers` are sent by wrk
# (e.g. an API key); `expect` are response headers checked once before the load starts;
# `config` is extra top-level TOML the scenario needs (e.g. [[consumers]]); `route` is extra
# keys for the scenario's own route.
@dataclass
class Scenario:
    name: str
    path: str
    proxied: bool
    plugins: str = ""
    headers: dict = field(default_factory=dict)
    expect: dict = field(default_factory=dict)
    config: str = ""
    route: str = ""
    # The scenario's cache answers from Redis: every measured run also checks, on Redis's side,
    # that each request was one hit (see redis_hit_check).
    redis_hits: bool = False
    # Left out (with a note) for a tollgate build that rejects it, e.g. a BASELINE older than
    # the feature, instead of failing the whole config.
    optional: bool = False
    # "custom": served by the custom binary (CUSTOM_BIN) only, beside its own copy of the plain
    # proxied route; left out when there is no custom binary.
    binary: str = ""
    # The keys of a top-level [tracing] section besides `endpoint` (which is the bench's OTLP
    # sink, bench/otlp_sink.py, a port per scenario). [tracing] is process-wide, so such a
    # scenario is served by a tollgate process of its own, with the same routes as the main one
    # (see tollgate_config); a build without tracing leaves it out (with a note).
    tracing: str = ""

    @property
    def sample_ratio(self):
        m = re.search(r"^sample_ratio\s*=\s*([0-9.]+)", self.tracing, re.M)
        return float(m.group(1)) if m else None

    @property
    def needs_redis(self):
        return "{REDIS_PORT}" in self.plugins + self.config + self.route

    @property
    def needs_authsvc(self):
        return "{AUTH_PORT}" in self.plugins


FWDAUTH = '{ name = "forward_auth", url = "http://127.0.0.1:{AUTH_PORT}/check", request_headers = ["authorization"], upstream_headers = ["x-user-id"] }'

SCENARIOS = [
    Scenario("hello", "/hello", False, f'{{ name = "mock", status = 200, content_type = "text/plain", body = "{BODY}" }}'),
    Scenario("proxy", "/proxy/hello", True),
    # The proxied route without the per-request header edits (X-Forwarded-*, X-Request-Id).
    Scenario("lean", "/lean/hello", True, route="forwarded_headers = false\nrequest_id = false"),
    Scenario("chain", "/chain/hello", True, '{ name = "headers", request = { set = { "x-bench" = "1" } }, response = { set = { "x-served-by" = "tollgate" } } }', expect={"x-served-by": "tollgate"}),
    Scenario("keyauth", "/keyauth/hello", True, '"key_auth"', headers={"apikey": "bench-key-0001"}),
    Scenario("jwths", "/jwths/hello", True, '"jwt"', headers={"authorization": "Bearer {JWT_HS256}"}),
    Scenario("jwtrs", "/jwtrs/hello", True, '"jwt"', headers={"authorization": "Bearer {JWT_RS256}"}),
    Scenario("ratelimit", "/ratelimit/hello", True, '{ name = "rate_limit", second = 1000000000 }', expect={"x-ratelimit-limit": "1000000000"}),
    Scenario("redislimit", "/redislimit/hello", True, '{ name = "rate_limit", second = 1000000000, policy = "redis", redis = { url = "redis://127.0.0.1:{REDIS_PORT}", timeout_ms = 200 }, on_store_error = "closed" }', expect={"x-ratelimit-limit": "1000000000"}),
    # The full chain of issue 7: key_auth + a local rate limit that never triggers + headers
    # (+ metrics; the access log too with TOLLGATE_ACCESS_LOG=1).
    Scenario("fullchain", "/fullchain/hello", True, '"key_auth", { name = "rate_limit", limit_by = "consumer", second = 1000000000 }, { name = "headers", response = { set = { "x-served-by" = "tollgate" } } }', headers={"apikey": "bench-key-0001"}, expect={"x-served-by": "tollgate"}),
    Scenario("cachehit", "/cachehit/hello", True, '{ name = "cache", default_ttl_seconds = 3600 }', expect={"x-cache-status": "HIT"}),
    # The same cache with its objects in the bench's Redis (storage = "redis", since 132b0cb);
    # timeout_ms 100 (instr.py: 1000, see REDIS_CACHE_TIMEOUT_MS).
    Scenario("cachehit_redis", "/cachehit_redis/hello", True, '{ name = "cache", default_ttl_seconds = 3600, storage = "redis", redis = { url = "redis://127.0.0.1:{REDIS_PORT}", timeout_ms = {REDIS_CACHE_TIMEOUT_MS}, prefix = "tollgate:cache", max_bytes = 268435456 } }',
             expect={"x-cache-status": "HIT"}, redis_hits=True, optional=True),
    # forward_auth asking the bench's Python auth service (bench/authsvc.py) on every request,
    # and with its decision cache (one call per minute).
    Scenario("fwdauth", "/fwdauth/hello", True, FWDAUTH, headers={"authorization": "Bearer bench-token"}, optional=True),
    Scenario("fwdauth_cached", "/fwdauth_cached/hello", True, FWDAUTH[:-2] + ', cache = { ttl_seconds = 60 } }',
             headers={"authorization": "Bearer bench-token"}, optional=True),
    # A custom plugin (examples/custom-plugin: an HMAC-SHA256 request signature check), on the
    # custom binary; the signature is made when the bench starts (custom_signature()).
    # An SSE answer (SSE_BODY from the upstream's /events) through a plain route and through
    # token_limit (a budget that never runs out, by IP): the cost of parsing the stream for
    # its usage event and charging it.
    Scenario("sse", "/sse/events", True),
    Scenario("sse_tokens", "/sse_tokens/events", True, '{ name = "token_limit", minute = 4000000000, limit_by = "ip" }',
             expect={"x-ratelimit-limit-tokens": "4000000000"}, optional=True),
    # OpenTelemetry tracing (the proxy scenario plus [tracing], exporting to the bench's OTLP
    # sink): nothing sampled, 1 % sampled (the default ratio), everything sampled. Each runs
    # on its own tollgate process; the sink's counts are checked after every run (trace0: no
    # export at all; trace1: spans arrived) and reported per request.
    Scenario("trace0", "/trace0/hello", True, tracing="sample_ratio = 0.0\nflush_interval_ms = 1000"),
    Scenario("trace001", "/trace001/hello", True, tracing="sample_ratio = 0.01\nflush_interval_ms = 1000"),
    Scenario("trace1", "/trace1/hello", True, tracing="sample_ratio = 1.0\nflush_interval_ms = 1000"),
    Scenario("hmac", "/hmac/hello", True, '{ name = "hmac_signature", keys = { bench = "bench-hmac-secret-0123456789abcdef" }, max_skew_seconds = 86400 }',
             headers={"x-key-id": "bench", "x-timestamp": "{HMAC_TS}", "x-signature": "{HMAC_SIG}"},
             expect={"x-signature": "verified"}, binary="custom"),
]

# Consumers for the auth scenarios: an API key, an HS256 secret and an RS256 key (the test
# fixtures' key pair; tokens are signed by this script).
JWT_SECRET = "bench-hs256-secret-0123456789abcdef"
RSA_PRIVATE = os.path.join(ROOT, "tests", "fixtures", "jwt", "rsa_private.pem")
RSA_PUBLIC = os.path.join(ROOT, "tests", "fixtures", "jwt", "rsa_public.pem")
CONSUMERS = f"""
[[consumers]]
username = "bench"
keys = ["bench-key-0001"]
jwt = [
  {{ key = "bench-hs", algorithm = "HS256", secret = "{JWT_SECRET}" }},
  {{ key = "bench-rs", algorithm = "RS256", public_key_file = "{RSA_PUBLIC}" }},
]
"""


def b64url(data):
    import base64
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt_tokens():
    """An HS256 and an RS256 token for the bench consumer, valid for a day."""
    import hashlib, hmac, json
    claims = b64url(json.dumps({"sub": "bench", "exp": int(time.time()) + 86400}).encode())
    tokens = {}
    for alg, kid in (("HS256", "bench-hs"), ("RS256", "bench-rs")):
        head = b64url(json.dumps({"alg": alg, "typ": "JWT", "kid": kid}).encode())
        signing_input = f"{head}.{claims}".encode()
        if alg == "HS256":
            sig = hmac.new(JWT_SECRET.encode(), signing_input, hashlib.sha256).digest()
        else:
            sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", RSA_PRIVATE], input=signing_input,
                                 capture_output=True, check=True).stdout
        tokens[f"JWT_{alg}"] = f"{head}.{claims}.{b64url(sig)}"
    return tokens


# ---------------------------------------------------------------------------------------------
def log(msg):
    print(msg, file=sys.stderr, flush=True)


def env_seconds(s):
    """wrk duration ("10s", "1m", "500ms" is not wrk syntax; plain number = seconds)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smh]?)", s.strip())
    if not m:
        sys.exit(f"cannot parse duration {s!r} (use e.g. 10s, 1m)")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


DURATION = os.environ.get("DURATION", "10s")
ROUNDS = int(os.environ.get("ROUNDS", "3"))
CONNS = [int(c) for c in os.environ.get("CONNS", "64,256").split(",") if c.strip()]
WARMUP = os.environ.get("WARMUP", "1s")
TARGET_FILTER = [t.strip() for t in os.environ.get("TARGETS", "").split(",") if t.strip()]
ACCESS_LOG = os.environ.get("TOLLGATE_ACCESS_LOG", "") not in ("", "0")
TMP = os.environ.get("BENCH_TMP", "")  # main() makes one when unset
CLK_TCK = os.sysconf("SC_CLK_TCK")
OTHER_CPU_WARN = 10  # % of one core used by foreign processes during a run
QUIET_WAIT = float(os.environ.get("QUIET_WAIT", "60"))

STARTED = []  # Popen objects, in start order


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(name, argv):
    out = open(os.path.join(TMP, f"{name}.out"), "wb")
    p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    STARTED.append(p)
    with open(os.path.join(TMP, "pids"), "a") as f:
        f.write(f"{p.pid}\n")
    log(f"  started {name} (pid {p.pid}): {' '.join(argv)}")
    return p


def stop_all():
    # SIGINT is a fast shutdown for both nginx and Pingora (SIGTERM would make Pingora drain
    # gracefully for several seconds).
    for p in reversed(STARTED):
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    deadline = time.time() + 5
    for p in reversed(STARTED):
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    STARTED.clear()
    # All reaped: run.sh's trap must not signal these pids any more (they may be reused).
    if TMP and os.path.exists(os.path.join(TMP, "pids")):
        open(os.path.join(TMP, "pids"), "w").close()


def on_signal(signum, _frame):
    raise SystemExit(128 + signum)


# ---------------------------------------------------------------------------------------------
# /proc accounting
def children_of(pid):
    kids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
        except OSError:
            continue
        # field 4 (ppid) comes after the ")" that ends the command name
        if int(st.rsplit(")", 1)[1].split()[1]) == pid:
            kids.append(int(d))
    return kids


def cpu_by_pid(pids):
    """{pid: CPU seconds} of the pids that still exist (an nginx cache loader exits about a
    minute after start, for example)."""
    out = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # after ")": fields[0] is state (field 3), so utime (14) and stime (15) are [11], [12]
        out[pid] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def cpu_seconds(pids):
    return sum(cpu_by_pid(pids).values())


def busy_seconds():
    """CPU time all processes of the machine spent (user + nice + system, all CPUs), from
    /proc/stat. irq/softirq time is left out: with IRQ time accounting it is not charged to
    any process, and here it is mostly the loopback traffic of the bench itself."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2]) / CLK_TCK


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def own_cpu():
    """CPU of everything this bench started (all servers) plus reaped children (wrk)."""
    total = children_cpu()
    for p in STARTED:
        pids = [p.pid] + children_of(p.pid)
        try:
            total += cpu_seconds(pids)
        except OSError:
            pass
    return total


def rss_mib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass  # exited meanwhile
    return total / 1024


def wait_quiet():
    """Before starting anything: wait (up to QUIET_WAIT s) until other processes use less than
    OTHER_CPU_WARN % of a core, so the run does not share the machine with a build."""
    deadline = time.time() + QUIET_WAIT
    while True:
        b0, c0, t0 = busy_seconds(), children_cpu(), time.time()
        time.sleep(2)
        pct = ((busy_seconds() - b0) - (children_cpu() - c0)) / (time.time() - t0) * 100
        if pct < OTHER_CPU_WARN:
            return
        if time.time() >= deadline:
            log(f"WARNING: the machine is busy ({pct:.0f}% of a core used by other processes); running anyway")
            return
        log(f"  machine busy ({pct:.0f}% of a core used by other processes), waiting up to {deadline - time.time():.0f}s more")


# ---------------------------------------------------------------------------------------------
# Targets
@dataclass
class Target:
    name: str
    port: int
    path: str
    proc: subprocess.Popen
    pids: list  # processes whose CPU and RSS are measured
    headers: dict = field(default_factory=dict)
    expect: dict = field(default_factory=dict)
    base_of: str = ""  # for a baseline tollgate target: the name of the same scenario on the new binary
    redis_hits: bool = False  # its answers must be Redis cache hits (checked on Redis's side every run)
    sink: str = ""  # a tracing scenario: its name in the OTLP sink (counts checked every run)
    sample_ratio: float = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}{self.path}"


NGINX_COMMON = """
{modules}
daemon off;
master_process {master};
worker_processes 1;
worker_rlimit_nofile 16384;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_timeout 65s;
    keepalive_requests 100000000;
    client_body_temp_path {tmp}/{name}-body;
    proxy_temp_path {tmp}/{name}-proxy;
    fastcgi_temp_path {tmp}/{name}-fastcgi;
    uwsgi_temp_path {tmp}/{name}-uwsgi;
    scgi_temp_path {tmp}/{name}-scgi;
{body}
}}
"""

UPSTREAM_HTTP = """
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            default_type text/plain;
            # Lets tollgate's cache scenario store the answer; the others ignore it.
            add_header Cache-Control "public, max-age=3600";
            return 200 "{body}";
        }}
        location /events {{
            default_type text/event-stream;
            return 200 "{sse}";
        }}
    }}
"""

PROXY_HTTP = """
    upstream origin {{
        server 127.0.0.1:{upstream};
        keepalive 256;
        keepalive_requests 100000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
"""


# Reference: nginx's own cache serving a hit (the upstream answers with max-age=3600, and
# proxy_cache_valid keeps a 200 for an hour anyway). The cache lives under the temp dir; the one
# small entry is read from the page cache on every hit.
CACHE_HTTP = """
    proxy_cache_path {tmp}/nginx-cache-store levels=1:2 keys_zone=bench:10m max_size=64m inactive=1h use_temp_path=off;
    upstream origin {{
        server 127.0.0.1:{upstream};
        keepalive 256;
        keepalive_requests 100000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache bench;
            proxy_cache_valid 200 1h;
            add_header X-Cache-Status $upstream_cache_status;
        }}
    }}
"""

# Reference: nginx + LuaJIT (Debian's libnginx-mod-http-lua + lua-resty-core), a miniature of
# Kong's key-auth + rate-limiting + request-transformer on one route:
# - key-auth: the `apikey` header looked up in a Lua table (loaded once, in init_by_lua); 401
#   without a known key; the consumer's identity sent upstream (X-Consumer-ID,
#   X-Consumer-Username, X-Credential-Identifier), as Kong does;
# - rate-limiting: a per-consumer, per-second counter in a shared dict (`incr` with an initial
#   value and a 2 s TTL), limit 1e9/s so it never triggers, 429 above it;
#   X-RateLimit-Limit/-Remaining/-Reset on the response (header_filter_by_lua);
# - request-transformer: one request header set (`x-bench: 1`).
LUA_HTTP = """
    lua_shared_dict bench_ratelimit 16m;
    init_by_lua_block {{
        bench_consumers = {{
            ["bench-key-0001"] = {{ id = "bench", username = "bench", credential = "bench-key-0001"}},
        }}
    }}
    upstream origin {{
        server 127.0.0.1:{upstream};
        keepalive 256;
        keepalive_requests 100000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            access_by_lua_block {{
                local consumer = bench_consumers[ngx.var.http_apikey or ""]
                if not consumer then
                    return ngx.exit(401)
                end
                local limit = 1000000000
                local now = ngx.time()
                local count, err = ngx.shared.bench_ratelimit:incr(consumer.id .. ":" .. now, 1, 0, 2)
                if not count then
                    ngx.log(ngx.ERR, "rate limit counter: ", err)
                    return ngx.exit(500)
                end
                if count > limit then
                    return ngx.exit(429)
                end
                local ctx = ngx.ctx
                ctx.limit, ctx.remaining, ctx.reset = limit, limit - count, 1
                ngx.req.set_header("X-Consumer-ID", consumer.id)
                ngx.req.set_header("X-Consumer-Username", consumer.username)
                ngx.req.set_header("X-Credential-Identifier", consumer.credential)
                ngx.req.set_header("x-bench", "1")
            }}
            header_filter_by_lua_block {{
                local ctx = ngx.ctx
                if ctx.limit then
                    ngx.header["X-RateLimit-Limit"] = ctx.limit
                    ngx.header["X-RateLimit-Remaining"] = ctx.remaining
                    ngx.header["X-RateLimit-Reset"] = ctx.reset
                end
            }}
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
"""

LUA_MODULE_DIRS = ["/usr/lib/nginx/modules", "/usr/share/nginx/modules"]
_LUA_MODULES = None


def lua_modules():
    """load_module lines for the nginx + Lua reference, or None (with the reason in
    LUA_MISSING) when the module or lua-resty-core is not installed or nginx cannot load it
    (checked once with `nginx -t` on a throwaway config)."""
    global _LUA_MODULES, LUA_MISSING
    if _LUA_MODULES is not None:
        return _LUA_MODULES or None
    _LUA_MODULES = ""
    for d in LUA_MODULE_DIRS:
        ndk, lua = os.path.join(d, "ndk_http_module.so"), os.path.join(d, "ngx_http_lua_module.so")
        if os.path.exists(lua):
            break
    else:
        LUA_MISSING = "ngx_http_lua_module.so not found (Debian: apt-get install -y libnginx-mod-http-lua lua-resty-core)"
        return None
    lines = (f"load_module {ndk};\n" if os.path.exists(ndk) else "") + f"load_module {lua};"
    with tempfile.TemporaryDirectory(prefix="tollgate-bench-luacheck.") as d:
        conf = os.path.join(d, "t.conf")
        with open(conf, "w") as f:
            f.write(NGINX_COMMON.format(modules=lines, tmp=d, name="t", body=LUA_HTTP.format(port=1, upstream=2), master="on"))
        try:
            r = subprocess.run(["nginx", "-t", "-p", d, "-e", os.path.join(d, "e.log"), "-c", conf],
                               capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            LUA_MISSING = f"nginx -t failed: {e}"
            return None
    if r.returncode != 0:
        LUA_MISSING = "nginx cannot load the Lua module: " + (r.stderr.strip().splitlines() or ["?"])[-1]
        return None
    _LUA_MODULES = lines
    return lines


LUA_MISSING = ""


def start_nginx(name, body, modules="", argv_prefix=(), master=True):
    """master=False: `master_process off`, one process that is also the worker (instr.py
    runs nginx so under valgrind)."""
    conf = os.path.join(TMP, f"{name}.conf")
    with open(conf, "w") as f:
        f.write(NGINX_COMMON.format(modules=modules, tmp=TMP, name=name, body=body, master="on" if master else "off"))
    return start(name, [*argv_prefix, "nginx", "-p", TMP, "-e", os.path.join(TMP, f"{name}-error.log"), "-c", conf])


def scenarios_of(kind):
    """The routes one tollgate process serves: the main binary's (kind ""), or the custom
    binary's: its own scenarios and the plain proxied route, to compare the two binaries. A
    tracing scenario's process (kind "trace:<name>") has the main process's routes (the
    tracing scenarios' routes among them), so only its [tracing] section differs."""
    if kind == "custom":
        return [s for s in SCENARIOS if s.binary == "custom" or s.name == "proxy"]
    return [s for s in SCENARIOS if not s.binary]


def tracing_scenarios():
    return [s for s in SCENARIOS if s.tracing and not s.binary]


def measured_by(kind):
    """The scenarios measured on the process of `kind` (its other routes are not)."""
    if kind.startswith("trace:"):
        return [s for s in SCENARIOS if s.name == kind[len("trace:"):]]
    return [s for s in scenarios_of(kind) if not s.tracing]


def tollgate_config(port, upstream_port, state_files=True, tag="tollgate", skip=(), kind=""):
    lines = [
        "# written by bench/run.py",
        "[server]",
        f'listen = ["127.0.0.1:{port}"]',
        'admin_listen = ""',
        "threads = 1",
        'log_level = "warn"',
    ]
    if state_files:  # keep tollgate's pid file and upgrade socket in the temp dir
        lines += [f'pid_file = "{TMP}/{tag}.pid"', f'upgrade_sock = "{TMP}/{tag}_upgrade.sock"']
    lines += [
        "",
        "[server.access_log]",
        f"enabled = {'true' if ACCESS_LOG else 'false'}",
        f'path = "{os.path.join(TMP, "tollgate-access.log")}"',
        "",
        "[[upstreams]]",
        'name = "origin"',
        f'backends = ["127.0.0.1:{upstream_port}"]',
    ]
    scenarios = [s for s in scenarios_of(kind) if s.name not in skip]
    for s in scenarios:
        lines += ["", "[[routes]]", f'name = "{s.name}"', f'paths = ["/{s.name}"]']
        if s.proxied:
            lines += ['upstream = "origin"', "strip_prefix = true"]
        lines.append(f"plugins = [{s.plugins}]")
        if s.route:
            lines.append(s.route)
    for s in scenarios:
        if s.config:
            lines += ["", s.config]
    if kind.startswith("trace:"):
        s = next(x for x in SCENARIOS if x.name == kind[len("trace:"):])
        lines += ["", "[tracing]", f'endpoint = "http://127.0.0.1:{OTLP_PORTS[s.name]}/v1/traces"', s.tracing]
    lines += [CONSUMERS]
    return ("\n".join(lines).replace("{REDIS_PORT}", str(REDIS_PORT)).replace("{AUTH_PORT}", str(AUTH_PORT))
            .replace("{REDIS_CACHE_TIMEOUT_MS}", str(REDIS_CACHE_TIMEOUT_MS)) + "\n")


def write_tollgate_config(path, port, upstream_port, binary=None, tag="tollgate", kind="", required=True):
    """Write the config and validate it with `tollgate check` (of `binary`, default
    TOLLGATE_BIN). Builds older than the pid_file / upgrade_sock settings reject those keys:
    then write it without them. `tag` names the pid file and upgrade socket, so two tollgate
    processes (BASELINE) have the same config apart from the port and those two paths.
    A build that rejects the config but accepts it without the `optional` scenarios (one older
    than those features) runs without them: returns the names of the scenarios left out.
    required=False (a tracing scenario's process): a config the build rejects returns None
    (with a note) instead of stopping the bench."""
    binary = binary or TOLLGATE_BIN

    def check(skip):
        for state_files in (True, False):
            with open(path, "w") as f:
                f.write(tollgate_config(port, upstream_port, state_files, tag, skip, kind))
            r = subprocess.run([binary, "check", "-c", path], capture_output=True, text=True, timeout=30)
            if r.returncode == 0:
                if not state_files:
                    log("  note: this tollgate build has no pid_file/upgrade_sock settings; it uses its defaults in /tmp")
                return None
            if not re.search(r"pid_file|upgrade_sock", r.stdout + r.stderr):
                break
        return r

    full = check(())
    if full is None:
        return set()
    optional = tuple(s.name for s in scenarios_of(kind) if s.optional)
    if optional and check(optional) is None:
        why = ((full.stdout + full.stderr).strip().splitlines() or ["?"])[-1].strip()
        log(f"  note: {binary} rejects the scenario(s) {', '.join(optional)} (a build older than them?), "
            f"left out for it: {why}")
        return set(optional)
    check(())  # leave the full config in place for inspection
    if not required:
        why = ((full.stdout + full.stderr).strip().splitlines() or ["?"])[-1].strip()
        log(f"  note: {binary} rejects {path} (a build without [tracing]?), its scenario is left out: {why}")
        return None
    sys.exit(f"tollgate rejected the bench config {path}:\n{full.stdout}{full.stderr}")


def http_get(port, path, headers):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        c.request("GET", path, headers=headers)
        r = c.getresponse()
        return r.status, r.read().decode(errors="replace"), {k.lower(): v for k, v in r.getheaders()}
    finally:
        c.close()


def answer_problem(t):
    """None when one request to the target answers 200, `hello` and the expected headers;
    otherwise what was wrong."""
    try:
        status, body, hdrs = http_get(t.port, t.path, t.headers)
    except OSError as e:
        return str(e)
    if status != 200:
        return f"status {status}: {body[:200]!r}"
    if body.strip() != expected_body(t.path).strip():
        sys.exit(f"{t.name}: {t.url} answered {body!r}, expected {expected_body(t.path)!r}")
    wrong = [(k, hdrs.get(k), v) for k, v in t.expect.items() if hdrs.get(k) != v]
    return f"response headers {wrong} (got, expected)" if wrong else None


def wait_ready(t, timeout=20):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        if t.proc.poll() is not None:
            sys.exit(f"{t.name}: process exited with {t.proc.returncode}; see {TMP}")
        # e.g. a cache that answers MISS first and HIT from then on
        last = answer_problem(t)
        if last is None:
            return
        time.sleep(0.1)
    sys.exit(f"{t.name}: {t.url} not ready after {timeout}s ({last}); see {TMP}")


def probe(t, when):
    """One request right before (or after) a measurement: it must answer as wait_ready
    required (a cache target: X-Cache-Status HIT), else the run stops here."""
    problem = answer_problem(t)
    if problem:
        sys.exit(f"{t.name}: probe {when} failed: {t.url}: {problem}; see {TMP}")


# ---------------------------------------------------------------------------------------------
# Redis: the bench's own redis-server (no persistence, 127.0.0.1), for the scenarios that use it.
def start_redis():
    """Start redis-server on REDIS_PORT and wait until it answers PING; returns the process.
    Without redis-server, the scenarios that need it are left out of SCENARIOS (with a
    message) and None is returned."""
    global REDIS_PORT
    import shutil
    needing = [s.name for s in SCENARIOS if s.needs_redis]
    if not needing:
        return None
    if not shutil.which("redis-server"):
        log(f"  skipping the scenario(s) {', '.join(needing)}: redis-server not found "
            "(Debian: apt-get install -y redis-server)")
        SCENARIOS[:] = [s for s in SCENARIOS if not s.needs_redis]
        return None
    REDIS_PORT = REDIS_PORT or free_port()
    p = start("redis", ["redis-server", "--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
    deadline = time.time() + 10
    while True:
        if p.poll() is not None:
            sys.exit(f"redis-server exited with {p.returncode}; see {TMP}/redis.out")
        try:
            if redis_command("PING") == "PONG":
                return p
        except OSError:
            pass
        if time.time() > deadline:
            sys.exit(f"redis-server on 127.0.0.1:{REDIS_PORT} does not answer PING after 10 s; see {TMP}/redis.out")
        time.sleep(0.1)


def redis_command(*args):
    """One command to the bench's Redis (a minimal RESP client: simple string, integer or
    bulk string replies)."""
    with socket.create_connection(("127.0.0.1", REDIS_PORT), timeout=5) as s:
        s.sendall(f"*{len(args)}\r\n".encode() + b"".join(f"${len(a)}\r\n{a}\r\n".encode() for a in args))
        f = s.makefile("rb")
        line = f.readline().rstrip(b"\r\n")
        kind, rest = line[:1], line[1:].decode()
        if kind in (b"+", b":"):
            return rest
        if kind == b"$":
            return f.read(int(rest) + 2)[:-2].decode()
        raise OSError(f"redis: {line!r}")


def redis_stats():
    """Redis's counters that show what the cache did: scripts run (EVALSHA/EVAL calls; the
    commands a script runs count separately), keyspace misses, and the server's CPU seconds."""
    info = dict(l.split(":", 1) for l in redis_command("INFO", "all").splitlines() if ":" in l and not l.startswith("#"))
    scripts = sum(int(re.search(r"calls=(\d+)", info[k]).group(1))
                  for k in ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_evalsha_ro", "cmdstat_eval_ro") if k in info)
    return {"scripts": scripts, "misses": int(info["keyspace_misses"]),
            "cpu_s": float(info["used_cpu_sys"]) + float(info["used_cpu_user"])}


def redis_hit_check(before, after, requests, in_flight):
    """Whether `requests` answered between two redis_stats() were all Redis cache hits. A hit
    is one script, the lookup (GET of the pointer, STRLEN and GETRANGE of the data key, all
    found); a miss, or a lookup that timed out on tollgate's side, adds a write script, and a
    missing object is a keyspace miss. `in_flight` = requests that may have been looked up
    without being counted (wrk stops with requests in flight; 0 for instr.py's client).
    Returns (scripts/request, problem or None)."""
    scripts = after["scripts"] - before["scripts"]
    misses = after["misses"] - before["misses"]
    per_req = scripts / requests if requests else None
    problems = []
    if misses:
        problems.append(f"{misses} keyspace misses")
    if not requests <= scripts <= requests + in_flight:
        problems.append(f"{scripts} Redis scripts for {requests} requests (one lookup per hit expected"
                        + (f", up to {in_flight} more for requests in flight" if in_flight else "") + ")")
    return per_req, "; ".join(problems) or None


REDIS_PORT = 0
# The Redis cache scenario's `timeout_ms`. instr.py raises it: under callgrind tollgate runs
# tens of times slower while the timeout is wall-clock, and a lookup that times out is a miss.
REDIS_CACHE_TIMEOUT_MS = int(os.environ.get("REDIS_CACHE_TIMEOUT_MS", "100"))


# The references' target names (instr.py uses the same ones).
NGINX_CACHE = "nginx proxy_cache hit"
NGINX_LUA = "nginx+lua key-auth/limit/header"
LUA_HEADERS = {"apikey": "bench-key-0001"}
LUA_EXPECT = {"x-ratelimit-limit": "1000000000"}


def lua_wanted():
    return os.environ.get("NGINX_LUA", "") != "0" and lua_modules() is not None


def baseline_name(s):
    return f"tollgate@{BASELINE_REV} {s.path}"


def prepare_scenarios():
    """Fill in the JWT tokens and the HMAC signature of the scenarios' headers (once); leave
    out the custom binary's scenarios when there is no custom binary."""
    import hashlib, hmac as hmac_mod
    tokens = jwt_tokens()
    ts = str(int(time.time()))
    for s in SCENARIOS:
        if s.name == "hmac":
            secret = re.search(r'bench = "([^"]+)"', s.plugins).group(1)
            msg = f"GET\n{s.path}\n{ts}".encode()
            tokens["HMAC_TS"] = ts
            tokens["HMAC_SIG"] = hmac_mod.new(secret.encode(), msg, hashlib.sha256).hexdigest()
    for s in SCENARIOS:
        s.headers = {k: v.format(**tokens) if "{" in v else v for k, v in s.headers.items()}
    if not CUSTOM_BIN:
        custom = [s.name for s in SCENARIOS if s.binary == "custom"]
        if custom:
            log(f"  leaving out {', '.join(custom)}: no custom binary (TOLLGATE_CUSTOM_BIN; prepare.sh builds it for working-tree runs)")
        SCENARIOS[:] = [s for s in SCENARIOS if s.binary != "custom"]


AUTH_PORT = 0
# Row label of the custom binary's targets.
CUSTOM_LABEL = "tollgate-custom"


def start_authsvc():
    """Start the bench's forward-auth service (bench/authsvc.py) when a scenario uses it."""
    global AUTH_PORT
    if not any(s.needs_authsvc for s in SCENARIOS):
        return None
    AUTH_PORT = AUTH_PORT or free_port()
    p = start("authsvc", [sys.executable, os.path.join(BENCH, "authsvc.py"), str(AUTH_PORT)])
    deadline = time.time() + 10
    while True:
        try:
            status, _, hdrs = http_get(AUTH_PORT, "/check", {"authorization": "Bearer bench-token"})
            if status == 200 and hdrs.get("x-user-id") == "bench":
                return p
        except OSError:
            pass
        if p.poll() is not None or time.time() > deadline:
            sys.exit(f"the auth service on 127.0.0.1:{AUTH_PORT} does not answer; see {TMP}/authsvc.out")
        time.sleep(0.1)


# The OTLP sink (bench/otlp_sink.py): one listener per tracing scenario, so a scenario's counts
# never include the tail of another one's export.
OTLP_PORTS = {}  # scenario name -> sink port
SINK_PROC = None
SINK_QUIET_S = 2.0  # no new export for this long (> flush_interval_ms) = everything has arrived
SINK_SETTLE_MAX_S = 30.0


def start_otlp_sink(names=None):
    """Start the sink when a tracing scenario is there (of `names`, when given)."""
    wanted = [s.name for s in tracing_scenarios() if names is None or s.name in names]
    if not wanted:
        return None
    for n in wanted:
        OTLP_PORTS[n] = OTLP_PORTS.get(n) or free_port()
    global SINK_PROC
    p = SINK_PROC = start("otlp-sink", [sys.executable, os.path.join(BENCH, "otlp_sink.py")] + [f"{n}={OTLP_PORTS[n]}" for n in wanted])
    deadline = time.time() + 10
    while True:
        try:
            if set(sink_stats_all()) == set(wanted):
                return p
        except (OSError, ValueError):
            pass
        if p.poll() is not None or time.time() > deadline:
            sys.exit(f"the OTLP sink does not answer on 127.0.0.1:{OTLP_PORTS[wanted[0]]}; see {TMP}/otlp-sink.out")
        time.sleep(0.1)


def sink_stats_all():
    port = next(iter(OTLP_PORTS.values()))
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", "/stats")
        return json.loads(c.getresponse().read())
    finally:
        c.close()


def sink_stats(name):
    """{requests, bytes, spans, bad, sample} the sink received for scenario `name` so far."""
    return sink_stats_all()[name]


def sink_settle(name):
    """Wait until the sink has received nothing new for `name` for SINK_QUIET_S (what tollgate
    had queued is exported at least every flush_interval_ms), at most SINK_SETTLE_MAX_S;
    returns its counts then."""
    last, since, deadline = sink_stats(name), time.time(), time.time() + SINK_SETTLE_MAX_S
    while time.time() - since < SINK_QUIET_S and time.time() < deadline:
        time.sleep(0.25)
        now = sink_stats(name)
        if (now["requests"], now["spans"]) != (last["requests"], last["spans"]):
            last, since = now, time.time()
    return last


def sink_delta(before, after):
    return {k: after[k] - before[k] for k in ("requests", "bytes", "spans", "bad")}


def sink_samples(raw_dir):
    """Markdown lines on what the first export request of each tracing scenario held (decoded
    by the sink), and the sink's whole counts as JSON in raw_dir; [] without a sink."""
    if not OTLP_PORTS:
        return []
    try:
        stats = sink_stats_all()
    except (OSError, ValueError) as e:
        return [f"- OTLP sink: could not read its counts: {e}"]
    if raw_dir:
        with open(os.path.join(raw_dir, "otlp_sink.json"), "w") as f:
            json.dump(stats, f, indent=1)
    lines = []
    for name, st in stats.items():
        line = f"- `{name}`: the sink got {st['requests']:,} export requests, {st['spans']:,} spans, {st['bytes']:,} bytes in all"
        sm = st.get("sample") or {}
        if sm.get("spans"):
            def one(x):
                return (f"`{x.get('name')}` ({x.get('kind')}, parent {'yes' if x.get('parent_span_id') else 'none'}; "
                        f"{', '.join(sorted(x.get('attributes', {})))})")
            line += (f"; first export: Content-Type `{sm.get('content_type')}`, resource "
                     f"{', '.join(f'{k}={v}' for k, v in sm.get('resource', {}).items())}, scope {', '.join(sm.get('scopes', []))}; "
                     f"spans {'; '.join(one(x) for x in sm['spans'][:2])}")
        lines.append(line)
    return lines


def sink_problem(ratio, d, requests, extra):
    """What is wrong with the sink's counts `d` for `requests` requests answered (plus up to
    `extra` that may have been served without being counted: wrk's in-flight requests, the
    probe) at sample ratio `ratio`, or None. Every sampled request is two spans (server +
    upstream attempt). Not sampled at all: nothing may be exported. All sampled: spans must
    have arrived (fewer than 2 per request is reported by the caller, not an error: the queue
    may have dropped some). Unparsable export bodies are an error."""
    if d["bad"]:
        return f"{d['bad']} export bodies the sink could not parse"
    if ratio == 0 and (d["requests"] or d["spans"]):
        return f"sample_ratio 0 but the sink got {d['requests']} export requests, {d['spans']} spans"
    if ratio == 1 and not d["spans"]:
        return f"sample_ratio 1 but the sink got no span ({d['requests']} export requests) for {requests} requests"
    if d["spans"] > 2 * (requests + extra):
        return f"{d['spans']} spans for {requests} (+{extra}) requests: more than 2 per request"
    return None


def start_targets():
    global REDIS_PORT
    up_port, ngx_port, cache_port, lua_port, floor_port, tg_port, base_port, REDIS_PORT = (free_port() for _ in range(8))
    log("starting processes")
    start_redis()
    prepare_scenarios()
    start_authsvc()
    trace_wanted = [s for s in tracing_scenarios()
                    if not TARGET_FILTER or any(w in f"tollgate {s.path}" for w in TARGET_FILTER)]
    start_otlp_sink({s.name for s in trace_wanted})
    up = start_nginx("upstream", upstream_http(up_port))
    ngx = start_nginx("nginx-proxy", PROXY_HTTP.format(port=ngx_port, upstream=up_port))
    cache = start_nginx("nginx-cache", CACHE_HTTP.format(tmp=TMP, port=cache_port, upstream=up_port))
    lua = None
    if lua_wanted():
        lua = start_nginx("nginx-lua", LUA_HTTP.format(port=lua_port, upstream=up_port), lua_modules())
    elif os.environ.get("NGINX_LUA", "") != "0":
        log(f"  skipping the nginx+lua reference: {LUA_MISSING}")
    floor = start("floor", [FLOOR_BIN, f"127.0.0.1:{floor_port}", f"127.0.0.1:{up_port}", TMP])
    cfg = os.path.join(TMP, "tollgate.toml")
    tg_skip = write_tollgate_config(cfg, tg_port, up_port)
    tg = start("tollgate", [TOLLGATE_BIN, "run", "-c", cfg])
    base, base_skip = None, set()
    if BASELINE_BIN:
        base_cfg = os.path.join(TMP, "tollgate-base.toml")
        base_skip = write_tollgate_config(base_cfg, base_port, up_port, BASELINE_BIN, "tollgate-base")
        base = start(f"tollgate-base", [BASELINE_BIN, "run", "-c", base_cfg])
    custom, custom_skip, custom_port = None, set(), free_port()
    if CUSTOM_BIN:
        custom_cfg = os.path.join(TMP, "tollgate-custom.toml")
        custom_skip = write_tollgate_config(custom_cfg, custom_port, up_port, CUSTOM_BIN, "tollgate-custom", "custom")
        custom = start("tollgate-custom", [CUSTOM_BIN, "run", "-c", custom_cfg])

    targets = [
        Target("direct (nginx upstream)", up_port, "/hello", up, []),
        Target("nginx proxy", ngx_port, "/hello", ngx, []),
        Target(NGINX_CACHE, cache_port, "/hello", cache, [], expect={"x-cache-status": "HIT"}),
    ]
    if lua:
        targets.append(Target(NGINX_LUA, lua_port, "/hello", lua, [], LUA_HEADERS, LUA_EXPECT))
    targets.append(Target("pingora floor", floor_port, "/hello", floor, [floor.pid]))
    for s in measured_by(""):
        if s.name not in tg_skip:
            targets.append(Target(f"tollgate {s.path}", tg_port, s.path, tg, [tg.pid], s.headers, s.expect,
                                  redis_hits=s.redis_hits))
        if base and s.name not in base_skip:
            targets.append(Target(baseline_name(s), base_port, s.path, base, [base.pid], s.headers, s.expect,
                                  base_of=f"tollgate {s.path}" if s.name not in tg_skip else "",
                                  redis_hits=s.redis_hits))
    # Tracing scenarios: a tollgate process each (the main config plus [tracing]), main binary only.
    for s in trace_wanted:
        tport, tag = free_port(), f"tollgate-{s.name}"
        tcfg = os.path.join(TMP, f"{tag}.toml")
        tskip = write_tollgate_config(tcfg, tport, up_port, tag=tag, kind=f"trace:{s.name}", required=False)
        if tskip is None:
            continue
        tp = start(tag, [TOLLGATE_BIN, "run", "-c", tcfg])
        targets.append(Target(f"tollgate {s.path}", tport, s.path, tp, [tp.pid], s.headers, s.expect,
                              sink=s.name, sample_ratio=s.sample_ratio))
    if custom:
        for s in scenarios_of("custom"):
            if s.name not in custom_skip:
                targets.append(Target(f"{CUSTOM_LABEL} {s.path}", custom_port, s.path, custom, [custom.pid],
                                      s.headers, s.expect))
    for t in targets:
        wait_ready(t)
    # nginx: measure master + worker(s); the workers exist once the port answers.
    for t in targets:
        if t.proc in (up, ngx, cache, lua):
            t.pids = [t.proc.pid] + children_of(t.proc.pid)
    if TARGET_FILTER:
        targets = [t for t in targets if any(w in t.name for w in TARGET_FILTER)]
    return targets


def round_order(targets, rnd):
    """The order of the targets in round `rnd` (1-based): as listed, except that in even
    rounds each baseline target runs before its new-binary twin, so neither revision always
    runs second."""
    order = list(targets)
    if rnd % 2 == 0:
        i = 0
        while i + 1 < len(order):
            if order[i + 1].base_of and order[i + 1].base_of == order[i].name:
                order[i], order[i + 1] = order[i + 1], order[i]
                i += 2
            else:
                i += 1
    return order


# ---------------------------------------------------------------------------------------------
# wrk
UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def parse_wrk(out):
    def grab(pattern, conv=float, default=None):
        m = re.search(pattern, out, re.M)
        return conv(m.group(1)) if m else default

    def lat(pct):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m|h)\s*$", out, re.M)
        return float(m.group(1)) * UNIT_MS[m.group(2)] if m else None

    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": grab(r"^Requests/sec:\s+([\d.]+)"),
        "requests": grab(r"^\s+(\d+) requests in", int),
        "p50_ms": lat(50),
        "p99_ms": lat(99),
        "non2xx": grab(r"Non-2xx or 3xx responses: (\d+)", int, 0),
        "sock_errors": sum(int(x) for x in sock.groups()) if sock else 0,
    }


def run_wrk(t, conns, duration, raw_name=None):
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{duration}", "--latency"]
    for k, v in t.headers.items():
        argv += ["-H", f"{k}: {v}"]
    argv.append(t.url)
    if t.proc.poll() is not None:
        sys.exit(f"{t.name}: process died (exit {t.proc.returncode}); see {TMP}")

    # nginx: master + its current children (the cache reference's cache loader exits after a
    # minute, a worker could be respawned)
    if t.pids and t.pids[0] == t.proc.pid:
        t.pids = [t.proc.pid] + children_of(t.proc.pid)
    rss_max = [0.0]
    stop = threading.Event()

    def sample_rss():
        while not stop.is_set():
            try:
                rss_max[0] = max(rss_max[0], rss_mib(t.pids))
            except OSError:
                pass
            stop.wait(0.25)

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sink0 = sink_stats(t.sink) if t.sink else None
    sink_cpu0 = cpu_seconds([SINK_PROC.pid]) if t.sink else None
    probe(t, "before the run")
    redis0 = redis_stats() if t.redis_hits else None
    own0, busy0, t0 = own_cpu(), busy_seconds(), time.time()
    cpu0 = cpu_by_pid(t.pids)
    sampler.start()
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=env_seconds(duration) + 30)
    finally:
        stop.set()
        sampler.join()
    # CPU of the processes that were there at both ends of the run
    cpu_s = sum(c - cpu0[pid] for pid, c in cpu_by_pid(t.pids).items() if pid in cpu0)
    sink_cpu_s = cpu_seconds([SINK_PROC.pid]) - sink_cpu0 if t.sink else None
    own1, busy1, t1 = own_cpu(), busy_seconds(), time.time()
    if res.returncode != 0:
        sys.exit(f"wrk failed ({res.returncode}): {res.stderr}")
    if raw_name:
        with open(os.path.join(RAW_DIR, raw_name), "w") as f:
            f.write(" ".join(argv) + "\n" + res.stdout)
    r = parse_wrk(res.stdout)
    if r["rps"] is None or r["requests"] is None:
        sys.exit(f"cannot parse wrk output:\n{res.stdout}")
    r["cpu_s"] = cpu_s
    r["cpu_per_10k"] = cpu_s / r["requests"] * 10000 if r["requests"] else None
    r["rss_mib"] = max(rss_max[0], rss_mib(t.pids))
    # CPU used by processes this bench did not start (another build, a test suite...), in % of
    # one core: when it is not near 0, the run shared the machine and its numbers are suspect.
    r["other_cpu_pct"] = max(0.0, ((busy1 - busy0) - (own1 - own0)) / (t1 - t0) * 100)
    if redis0:
        redis1 = redis_stats()
        r["redis_cmds_per_req"], r["redis_problem"] = redis_hit_check(redis0, redis1, r["requests"], conns)
        r["redis_cpu_per_10k"] = (redis1["cpu_s"] - redis0["cpu_s"]) / r["requests"] * 10000 if r["requests"] else None
        if r["redis_problem"]:
            log(f"  ERROR {t.name} -c{conns}: not every request was a Redis cache hit: {r['redis_problem']}")
    if sink0 is not None:
        # what the sink got for the probe before the run and the run itself, once tollgate has
        # exported all it had queued (waited for here: not in the measured time)
        d = sink_delta(sink0, sink_settle(t.sink))
        r["sink"] = d
        r["sink_spans_per_req"] = d["spans"] / r["requests"] if r["requests"] else None
        # the sink's own CPU during the wrk run (it shares the machine with tollgate and wrk)
        r["sink_cpu_per_10k"] = sink_cpu_s / r["requests"] * 10000 if r["requests"] else None
        problem = sink_problem(t.sample_ratio, d, r["requests"], conns + 1)
        if problem:
            sys.exit(f"{t.name} -c{conns}: OTLP sink check failed: {problem}; see {TMP}")
    probe(t, "after the run")
    return r


# ---------------------------------------------------------------------------------------------
# Report
def sh(argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def git_rev():
    """The measured source: BENCH_REV (set by run.sh when REV= builds a clean export of a
    commit), else HEAD plus "-dirty" if the working tree's sources differ from it."""
    if os.environ.get("BENCH_REV"):
        return os.environ["BENCH_REV"]
    if os.environ.get("TOLLGATE_BIN"):
        return "custom-bin"  # a binary from elsewhere: the checkout says nothing about it
    rev = sh(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]) or "norev"
    dirty = sh(["git", "-C", ROOT, "status", "--porcelain", "--", "src", "plugins", "Cargo.toml", "Cargo.lock"])
    return rev + ("-dirty" if dirty else "")


def fmt(v, spec):
    return "—" if v is None else format(v, spec)


def build_rows(targets, results):
    rows = []
    med = lambda xs: statistics.median(xs) if xs else None  # noqa: E731
    summary = {}
    for conns in CONNS:
        for t in targets:
            everything = results[(t.name, conns)]
            # Rounds during which other processes used the CPU are left out when at least one
            # round was quiet; the "rounds" column says how many were used.
            rs = [r for r in everything if r["other_cpu_pct"] < OTHER_CPU_WARN] or everything
            summary[(t.name, conns)] = {
                "used": f"{len(rs)}/{len(everything)}",
                "rps": med([r["rps"] for r in rs]),
                "rps_min": min(r["rps"] for r in rs),
                "rps_max": max(r["rps"] for r in rs),
                "p50": med([r["p50_ms"] for r in rs if r["p50_ms"] is not None]),
                "p99": med([r["p99_ms"] for r in rs if r["p99_ms"] is not None]),
                "cpu": med([r["cpu_per_10k"] for r in rs if r["cpu_per_10k"] is not None]),
                "rss": max(r["rss_mib"] for r in everything),
                "errors": sum(r["non2xx"] + r["sock_errors"] for r in everything),
                "other": max(r["other_cpu_pct"] for r in rs),
            }
    for conns in CONNS:
        ngx = summary.get(("nginx proxy", conns), {}).get("rps")
        flo = summary.get(("pingora floor", conns), {}).get("rps")
        for t in targets:
            s = summary[(t.name, conns)]
            spread = (s["rps_max"] - s["rps_min"]) / s["rps"] * 100 if s["rps"] and not s["used"].startswith("1/") else None
            rows.append([
                t.name,
                str(conns),
                fmt(s["rps"], ",.0f"),
                "—" if spread is None else "±" + format(spread / 2, ".1f") + "%",
                fmt(s["p50"], ".2f"),
                fmt(s["p99"], ".2f"),
                fmt(s["cpu"], ".3f"),
                fmt(s["rss"], ".1f"),
                fmt(s["rps"] / ngx if ngx else None, ".2f"),
                fmt(s["rps"] / flo if flo else None, ".2f"),
                str(s["errors"]),
                s["used"],
                fmt(s["other"], ".0f") + "%",
            ])
    return rows, summary


def ab_rows(targets, summary, results):
    """One row per tollgate scenario and connection count: new vs baseline (BASELINE=).
    Besides the ratio of the medians, the per-round ratios: new and baseline ran back to back
    in each round, so their ratio within a round is the fairest comparison; only rounds in
    which both runs were quiet are used (all rounds if none was)."""
    rows = []
    for conns in CONNS:
        for b in targets:
            if not b.base_of or (b.base_of, conns) not in summary:
                continue
            n, o = summary[(b.base_of, conns)], summary[(b.name, conns)]

            def spread(x):
                if not x["rps"] or x["used"].startswith("1/"):
                    return "—"
                return "±" + format((x["rps_max"] - x["rps_min"]) / x["rps"] * 50, ".1f") + "%"

            pairs = list(zip(results[(b.base_of, conns)], results[(b.name, conns)]))
            quiet = [(x, y) for x, y in pairs if max(x["other_cpu_pct"], y["other_cpu_pct"]) < OTHER_CPU_WARN] or pairs
            per_round = sorted(x["rps"] / y["rps"] for x, y in quiet if y["rps"])
            rows.append([
                b.base_of.split(" ", 1)[1], str(conns),
                fmt(n["rps"], ",.0f"), spread(n), fmt(o["rps"], ",.0f"), spread(o),
                fmt(n["rps"] / o["rps"] if n["rps"] and o["rps"] else None, ".3f"),
                (fmt(statistics.median(per_round), ".3f") + f" [{per_round[0]:.3f}–{per_round[-1]:.3f}] "
                 f"{len(quiet)}/{len(pairs)}") if per_round else "—",
                fmt(n["cpu"], ".3f"), fmt(o["cpu"], ".3f"),
                fmt(n["cpu"] / o["cpu"] if n["cpu"] and o["cpu"] else None, ".3f"),
                fmt(n["p99"], ".2f"), fmt(o["p99"], ".2f"),
                str(n["errors"] + o["errors"]),
            ])
    return rows


def ab_headers(rev):
    return ["scenario", "conns", f"RPS {rev}", "spread", f"RPS {BASELINE_REV}", "spread", "RPS new/base",
            "per-round new/base [min–max] rounds",
            f"CPU s/10k {rev}", f"CPU s/10k {BASELINE_REV}", "CPU new/base", f"p99 ms {rev}",
            f"p99 ms {BASELINE_REV}", "errors"]


SINK_HEADERS = ["target", "conns", "sample_ratio", "spans/request (per round)", "export requests (per round)",
                "KiB exported (per round)", "bytes/span (median)", "sink CPU s/10k req (median)"]


def sink_report_rows(targets, results):
    """For the tracing targets: what the OTLP sink received in each measured round."""
    rows = []
    for conns in CONNS:
        for t in targets:
            rs = results.get((t.name, conns), [])
            if not t.sink or not rs:
                continue
            bps = [r["sink"]["bytes"] / r["sink"]["spans"] for r in rs if r["sink"]["spans"]]
            rows.append([t.name, str(conns), f"{t.sample_ratio:g}",
                         " / ".join(fmt(r["sink_spans_per_req"], ".4f") for r in rs),
                         " / ".join(str(r["sink"]["requests"]) for r in rs),
                         " / ".join(f"{r['sink']['bytes'] / 1024:,.0f}" for r in rs),
                         fmt(statistics.median(bps) if bps else None, ".0f"),
                         fmt(statistics.median([r["sink_cpu_per_10k"] for r in rs]), ".3f")])
    return rows


def sink_table(rows):
    return ("The bench's OTLP sink (bench/otlp_sink.py) counts what each tracing scenario's tollgate exported "
            "during a round: the probe before it and the wrk run, counted once the export had settled "
            f"(nothing new for {SINK_QUIET_S:g} s; that wait is not in the measured time). Every sampled request "
            "is 2 spans (server + upstream attempt), so sample_ratio 1 should give 2.0000 spans/request and "
            "0.01 about 0.02 (a little more: the probe and wrk's requests in flight at the end are served but not "
            "counted by wrk); less means spans were dropped (queue full). Checked every round: sample_ratio 0 "
            "exported nothing, sample_ratio 1 exported spans. The sink (Python) runs on the same CPUs: its CPU "
            "during the run is given here and is not in the CPU column above.\n\n" + md_table(rows, SINK_HEADERS))


REDIS_HEADERS = ["target", "conns", "Redis scripts/request (per round)", "Redis CPU s/10k req (median)", "not all hits"]


def redis_report_rows(targets, results):
    """For the Redis cache targets: what Redis saw in each measured round."""
    rows = []
    for conns in CONNS:
        for t in targets:
            rs = results.get((t.name, conns), [])
            if not t.redis_hits or not rs:
                continue
            cpu = [r["redis_cpu_per_10k"] for r in rs if r.get("redis_cpu_per_10k") is not None]
            bad = [f"round {i + 1}: {r['redis_problem']}" for i, r in enumerate(rs) if r.get("redis_problem")]
            rows.append([t.name, str(conns), " / ".join(fmt(r.get("redis_cmds_per_req"), ".4f") for r in rs),
                         fmt(statistics.median(cpu) if cpu else None, ".3f"), "; ".join(bad) or "none"])
    return rows


def redis_table(rows):
    return ("A hit is one Redis script (the lookup: GET, STRLEN, GETRANGE); a miss or a lookup that timed out "
            "adds a write script, a missing object a keyspace miss. wrk stops with up to `conns` requests in "
            "flight, so up to conns/requests more than 1.0000 is expected. Redis CPU is the redis-server's own "
            "(`used_cpu_sys + used_cpu_user`), not included in the table's CPU column.\n\n"
            + md_table(rows, REDIS_HEADERS))


HEADERS = ["target", "conns", "RPS (median)", "spread", "p50 ms", "p99 ms", "CPU s/10k req",
           "RSS MiB", "vs nginx", "vs floor", "errors", "rounds", "other CPU"]


def text_table(rows, headers=None, group_col=1):
    """A blank line wherever column `group_col` changes (None: no grouping)."""
    HEADERS = headers or globals()["HEADERS"]
    w = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADERS)]
    line = lambda cells: "  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(cells))  # noqa: E731
    out = [line(HEADERS), line(["-" * x for x in w])]
    prev = None
    for r in rows:
        if group_col is not None and prev is not None and r[group_col] != prev:
            out.append("")
        out.append(line(r))
        prev = r[group_col] if group_col is not None else None
    return "\n".join(out)


def md_table(rows, headers=None):
    HEADERS = headers or globals()["HEADERS"]
    out = ["| " + " | ".join(HEADERS) + " |", "|" + "|".join(["---"] + ["---:"] * (len(HEADERS) - 1)) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def chart(targets, summary, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not available: no chart")
        return False
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(CONNS)
    for i, conns in enumerate(CONNS):
        xs = [j + i * width for j in range(len(targets))]
        ax.bar(xs, [summary[(t.name, conns)]["rps"] for t in targets], width, label=f"-c{conns}")
    ax.set_xticks([j + width * (len(CONNS) - 1) / 2 for j in range(len(targets))])
    ax.set_xticklabels([t.name for t in targets], rotation=20, ha="right")
    ax.set_ylabel("requests/s (median)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


# ---------------------------------------------------------------------------------------------
def main():
    global RAW_DIR, TMP
    if not TMP:
        TMP = tempfile.mkdtemp(prefix="tollgate-bench.")
        log(f"temp dir {TMP} (kept)")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for b in (TOLLGATE_BIN, FLOOR_BIN) + ((BASELINE_BIN,) if BASELINE_BIN else ()) + ((CUSTOM_BIN,) if CUSTOM_BIN else ()):
        if not os.access(b, os.X_OK):
            sys.exit(f"missing binary {b}: run bench/run.sh (it builds both)")

    date = datetime.date.today().isoformat()
    rev = git_rev()
    default = DURATION == "10s" and ROUNDS == 3 and CONNS == [64, 256] and not TARGET_FILTER
    stem = f"{date}-{rev}" + (f"-vs-{BASELINE_REV}" if BASELINE_BIN else "") + ("" if default else f"-d{DURATION}-r{ROUNDS}")
    results_dir = os.path.join(BENCH, "results")
    RAW_DIR = os.path.join(results_dir, "raw", stem)
    os.makedirs(RAW_DIR, exist_ok=True)

    # nginx workers started as root run as `nobody`; the proxy_cache reference's worker
    # must reach its cache directory in the temp dir.
    os.chmod(TMP, 0o711)
    wait_quiet()
    targets = start_targets()
    n_runs = len(targets) * len(CONNS) * ROUNDS
    est = n_runs * (env_seconds(DURATION) + 0.5)
    if WARMUP not in ("", "0", "0s"):
        est += len(targets) * len(CONNS) * (env_seconds(WARMUP) + 0.5)
    log(f"{len(targets)} targets x {len(CONNS)} conns x {ROUNDS} rounds of {DURATION}: ~{est / 60:.1f} min")

    if WARMUP not in ("", "0", "0s"):
        log(f"warm-up ({WARMUP} each)")
        for conns in CONNS:
            for t in targets:
                run_wrk(t, conns, WARMUP)

    results = {(t.name, c): [] for t in targets for c in CONNS}
    started = time.time()
    i = 0
    for rnd in range(1, ROUNDS + 1):
        for conns in CONNS:
            for t in round_order(targets, rnd):
                i += 1
                slug = re.sub(r"[^a-z0-9]+", "-", t.name.lower()).strip("-")
                r = run_wrk(t, conns, DURATION, f"r{rnd}-c{conns}-{slug}.txt")
                results[(t.name, conns)].append(r)
                log(f"  [{i}/{n_runs}] round {rnd} -c{conns} {t.name:<32} {r['rps']:>10,.0f} req/s  "
                    f"p50 {fmt(r['p50_ms'], '.2f')} ms  p99 {fmt(r['p99_ms'], '.2f')} ms  "
                    f"cpu {fmt(r['cpu_per_10k'], '.3f')} s/10k  rss {r['rss_mib']:.1f} MiB  other {r['other_cpu_pct']:.0f}%"
                    + (f"  ERRORS {r['non2xx']} non-2xx, {r['sock_errors']} socket" if r["non2xx"] or r["sock_errors"] else ""))
    elapsed = time.time() - started

    rows, summary = build_rows(targets, results)
    with open(os.path.join(RAW_DIR, "results.json"), "w") as f:
        json.dump({f"{k[0]} c{k[1]}": v for k, v in results.items()}, f, indent=1)

    table = text_table(rows)
    print()
    print(table)
    print()
    ab = ab_rows(targets, summary, results) if BASELINE_BIN else []
    if ab:
        print(f"A/B: tollgate {rev} (new) vs {BASELINE_REV} (baseline), same rounds")
        print(text_table(ab, ab_headers(rev)))
        print()

    cpu_model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu_model = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    png = os.path.join(results_dir, stem + ".png")
    has_chart = chart(targets, summary, png)
    md = [
        f"# tollgate benchmark {date} ({rev}" + (f" vs baseline {BASELINE_REV}" if BASELINE_BIN else "") + ")",
        "",
        f"- machine: {os.cpu_count()} CPUs ({cpu_model}), {platform.system()} {platform.release()}",
        f"- {sh(['nginx', '-v']) or sh(['sh', '-c', 'nginx -v 2>&1'])}, {sh(['sh', '-c', 'wrk --version 2>&1 | head -1']).split(' Copyright')[0]}, {sh(['rustc', '--version'])}",
        f"- load: `wrk -t1 -c<conns> -d{DURATION} --latency`, {ROUNDS} interleaved round(s), warm-up {WARMUP or '0'}; "
        f"{len(targets)} targets, {elapsed / 60:.1f} min of load",
        "- every proxy: 1 worker thread/process, upstream keepalive pool 256, access log off; "
        f"tollgate access log {'ON (file)' if ACCESS_LOG else 'off'}, log_level warn",
        f"- upstream: nginx (1 worker) answering `{BODY}` (200, text/plain) on every path",
    ]
    if CUSTOM_BIN:
        md += [f"- `{CUSTOM_LABEL} ...` rows: the custom binary of examples/custom-plugin (the built-in plugins + "
               f"hmac_signature) built from the same source, a third tollgate process"]
    if any(s.needs_authsvc for s in SCENARIOS):
        md += ["- `/fwdauth`: forward_auth asks bench/authsvc.py (Python ThreadingHTTPServer) on every request; "
               "`/fwdauth_cached`: with its decision cache (one call a minute); the service's CPU is not in tollgate's"]
    if BASELINE_BIN:
        md += [
            f"- A/B: `tollgate ...` rows are {rev}, `tollgate@{BASELINE_REV} ...` rows the baseline {BASELINE_REV}: "
            "two tollgate processes with the same config (apart from port, pid file and upgrade socket), "
            "run in the same rounds, each baseline run right after (odd rounds) or right before (even rounds) "
            "the new one",
        ]
    md += [
        "",
        "RPS, p50, p99 and CPU are medians over the rounds used (rounds = used/run: a round during which "
        f"processes outside the bench used {OTHER_CPU_WARN}% of a core or more is left out, unless all were); spread is ±half the min–max range of RPS "
        "in % of the median; RSS is the peak VmRSS sampled during the runs; `vs nginx` / `vs floor` "
        "are RPS ratios to the nginx proxy / bare Pingora floor at the same connection count; "
        "errors = non-2xx responses + socket errors summed over all rounds; other CPU = the most CPU "
        "(in % of one core) that processes outside the bench used during a round used: near 0 "
        "means the machine was quiet. "
        "For `direct` the CPU/RSS are the upstream nginx's own. See bench/README.md.",
        "",
        md_table(rows),
        "",
    ]
    if ab:
        md += [
            f"## A/B: {rev} (new) vs {BASELINE_REV} (baseline)",
            "",
            "RPS new/base (ratio of the medians) > 1 = the new revision serves more requests/s; the per-round "
            "column is the median [min–max] of new/base within each round (the two ran back to back) over the "
            "rounds in which both were quiet (used/run); CPU new/base < 1 = the new revision uses less CPU per request. "
            "A difference smaller than the spreads is noise.",
            "",
            md_table(ab, ab_headers(rev)),
            "",
        ]
    redis_rows = redis_report_rows(targets, results)
    if redis_rows:
        text = redis_table(redis_rows)
        print("Redis cache hits (checked on Redis's side every run)")
        print(text_table(redis_rows, REDIS_HEADERS, None))
        print()
        md += ["## Redis cache hits", "", text, ""]
    sink_rows = sink_report_rows(targets, results)
    if sink_rows:
        print("OTLP sink (what the tracing scenarios exported, per round)")
        print(text_table(sink_rows, SINK_HEADERS, None))
        print()
        md += ["## Tracing export (OTLP sink)", "", sink_table(sink_rows), "", *sink_samples(RAW_DIR), ""]
    if has_chart:
        md += [f"![requests/s]({stem}.png)", ""]
    md_path = os.path.join(results_dir, stem + ".md")
    with open(md_path, "w") as f:
        f.write("\n".join(md))
    log(f"wrote {os.path.relpath(md_path, ROOT)} (raw wrk output: {os.path.relpath(RAW_DIR, ROOT)}/)")
    if any(r[-3] != "0" for r in rows):
        log("WARNING: some runs had errors (see the errors column)")
    if any(s["other"] >= OTHER_CPU_WARN for s in summary.values()):
        log(f"WARNING: for some rows every round had other processes using over {OTHER_CPU_WARN}% "
            "of a core (see the other CPU column): the machine was not quiet, those numbers are suspect")
    elif any(not s["used"].startswith(str(ROUNDS)) for s in summary.values()):
        log("note: some rounds were left out because other processes used the CPU (see the rounds column)")
    if any(r.get("redis_problem") for rs in results.values() for r in rs):
        log("ERROR: some runs of a Redis cache target were not all hits (see the Redis cache hits section)")
        sys.exit(4)


def time_bound():
    """Upper bound for a whole run with the current settings, in seconds (for run.sh)."""
    n_targets = 5 + len(SCENARIOS) * (2 if BASELINE_BIN else 1) + (2 if CUSTOM_BIN else 0)
    per_target = ROUNDS * (env_seconds(DURATION) + 2) + (env_seconds(WARMUP) + 2 if WARMUP not in ("", "0", "0s") else 0)
    # the OTLP sink settles after every run of a tracing scenario (SINK_QUIET_S, at most SINK_SETTLE_MAX_S)
    settle = len(tracing_scenarios()) * len(CONNS) * (ROUNDS + 1) * (SINK_QUIET_S + 3)
    return int(n_targets * len(CONNS) * per_target + settle + QUIET_WAIT + 120)


RAW_DIR = None

if __name__ == "__main__":
    if sys.argv[1:] == ["--time-bound"]:
        print(time_bound())
        sys.exit(0)
    if sys.argv[1:] == ["--lua-check"]:
        # run.sh: says whether the nginx + Lua reference can run (exit 0) or why not (exit 1)
        if lua_modules() is None:
            print(LUA_MISSING)
            sys.exit(1)
        print(lua_modules().replace("\n", " "))
        sys.exit(0)
    try:
        main()
    finally:
        stop_all()

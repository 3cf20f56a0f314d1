#!/usr/bin/env python3
"""Memory soak: two million requests at 256 connections through tollgate (release build),
VmRSS sampled after each million. Passes when RSS stays under 100 MiB after the first
million and grows by less than 5% (and 4 MiB) over the second.

The load rotates over the proxied route, the full chain (key_auth + rate_limit + headers),
a cache hit and the mock route, with the access log on (written to /dev/null), so every
allocating path of the request cycle runs. 127.0.0.1 only; every wrk run is bounded in time
and the whole script by SOAK_TIMEOUT (default 15 min).

    bench/soak.sh                 # builds if needed, then runs this
    REQUESTS=1000000 CONNS=256    # per phase, and connections (defaults)
"""
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("BENCH_TMP", tempfile.mkdtemp(prefix="tollgate-soak."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as b  # noqa: E402  (the benchmark's process helpers)

REQUESTS = int(os.environ.get("REQUESTS", "1000000"))
CONNS = int(os.environ.get("CONNS", "256"))
PHASE_LIMIT_S = 240  # a phase that cannot reach REQUESTS in this time fails
RSS_LIMIT_MIB = 100.0
GROWTH_LIMIT = 0.05
GROWTH_FLOOR_MIB = 4.0

LUA = """
local paths = {"/proxy/hello", "/fullchain/hello", "/cachehit/hello", "/hello"}
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", paths[(i % #paths) + 1], {["apikey"] = "soak-key-0001"})
end
"""


def config(port, upstream_port):
    return f"""# written by bench/soak.py
[server]
listen = ["127.0.0.1:{port}"]
admin_listen = ""
threads = 1
log_level = "warn"
pid_file = "{b.TMP}/tollgate.pid"
upgrade_sock = "{b.TMP}/tollgate_upgrade.sock"

[server.access_log]
enabled = true
path = "/dev/null"

[[upstreams]]
name = "origin"
backends = ["127.0.0.1:{upstream_port}"]

[[consumers]]
username = "soak"
keys = ["soak-key-0001"]

[[routes]]
name = "hello"
paths = ["/hello"]
plugins = [{{ name = "mock", status = 200, content_type = "text/plain", body = "hello" }}]

[[routes]]
name = "proxy"
paths = ["/proxy"]
upstream = "origin"
strip_prefix = true

[[routes]]
name = "fullchain"
paths = ["/fullchain"]
upstream = "origin"
strip_prefix = true
plugins = ["key_auth", {{ name = "rate_limit", limit_by = "consumer", second = 1000000000 }}, {{ name = "headers", response = {{ set = {{ "x-served-by" = "tollgate" }} }} }}]

[[routes]]
name = "cachehit"
paths = ["/cachehit"]
upstream = "origin"
strip_prefix = true
plugins = [{{ name = "cache", default_ttl_seconds = 3600 }}]
"""


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def phase(port, pid, lua, name):
    """wrk until REQUESTS were answered; returns (requests, non-2xx + socket errors, RSS)."""
    done = errors = 0
    started = time.monotonic()
    while done < REQUESTS:
        if time.monotonic() - started > PHASE_LIMIT_S:
            raise SystemExit(f"{name}: only {done} requests in {PHASE_LIMIT_S}s")
        out = subprocess.run(
            ["wrk", "-t1", f"-c{CONNS}", "-d10s", "-s", lua, f"http://127.0.0.1:{port}/"],
            capture_output=True, text=True, timeout=60,
        ).stdout
        r = b.parse_wrk(out)
        if not r["requests"]:
            raise SystemExit(f"{name}: wrk reported nothing:\n{out}")
        done += r["requests"]
        errors += r["non2xx"] + r["sock_errors"]
        b.log(f"  {name}: {done:,} requests, RSS {rss(pid):.1f} MiB")
    return done, errors, rss(pid)


def main():
    up_port, tg_port = b.free_port(), b.free_port()
    b.start_nginx("upstream", b.upstream_http(up_port))
    conf = os.path.join(b.TMP, "soak.toml")
    with open(conf, "w") as f:
        f.write(config(tg_port, up_port))
    subprocess.run([b.TOLLGATE_BIN, "check", "-c", conf], check=True, timeout=30)
    tg = b.start("tollgate", [b.TOLLGATE_BIN, "run", "-c", conf])
    lua = os.path.join(b.TMP, "rotate.lua")
    with open(lua, "w") as f:
        f.write(LUA)
    deadline = time.monotonic() + 20
    while True:
        try:
            if b.http_get(tg_port, "/cachehit/hello", {})[0] == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("tollgate did not come up")
        time.sleep(0.2)
    start_rss = rss(tg.pid)
    b.log(f"soak: {REQUESTS:,} requests x 2 at -c{CONNS}; RSS at start {start_rss:.1f} MiB")
    n1, e1, rss1 = phase(tg_port, tg.pid, lua, "first million")
    n2, e2, rss2 = phase(tg_port, tg.pid, lua, "second million")
    growth = rss2 - rss1
    ok = rss1 < RSS_LIMIT_MIB and growth < max(GROWTH_FLOOR_MIB, rss1 * GROWTH_LIMIT)
    print(f"RSS start {start_rss:.1f} MiB; after {n1:,} requests {rss1:.1f} MiB; "
          f"after {n1 + n2:,} {rss2:.1f} MiB; growth over the second phase {growth:+.1f} MiB; "
          f"errors {e1 + e2}")
    print("PASS" if ok and e1 + e2 == 0 else "FAIL")
    return 0 if ok and e1 + e2 == 0 else 1


def timed_out(*_):
    raise SystemExit("soak: timed out")


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGALRM, timed_out)
    signal.alarm(int(os.environ.get("SOAK_TIMEOUT", "900")))
    try:
        code = main()
    finally:
        b.stop_all()
    sys.exit(code)

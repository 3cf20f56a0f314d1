#!/usr/bin/env python3
"""Instruction counts per request (stdlib only). Normally started by bench/instr.sh, which
builds the binaries first and bounds the run in time.

For each target (the tollgate scenarios of one or two binaries, the Pingora floor, the nginx
proxy, the nginx proxy_cache and nginx + Lua references) the process is started under
`valgrind --tool=callgrind` (nginx: `master_process off`, so its one process is the worker that
is measured; Pingora processes: `threads = 1`). Then, per scenario:

  1. warm-up: WARMUP_REQUESTS requests (default 2000);
  2. `callgrind_control -z <pid>` (zero the counters; vgdb reaches the process even while it
     waits in epoll);
  3. exactly REQUESTS (default 20000) keep-alive requests over CONC (default 4) connections,
     every response read and checked (200, body `hello`) before the next request on its
     connection, so nothing is in flight afterwards;
  4. `callgrind_control -d <pid>`: the dump holds the cost of that phase alone;

and steps 2-4 are done REPEAT times (default 2). Before each phase one probe request must
answer as at start-up (200, `hello`, a cache scenario's X-Cache-Status HIT), and for a Redis
cache scenario (`cachehit_redis`) Redis's own counters must show exactly one lookup script per
request and no keyspace miss: otherwise the run stops with an error. Instructions per request = the dump's total
Ir / REQUESTS: user-space instructions of the whole process (all its threads), kernel not
included. Start-up, warm-up and shutdown are not counted.

The client (in this file) sends the same request bytes wrk sends (`GET <path> HTTP/1.1`,
`Host: 127.0.0.1:<port>`, the scenario's headers).

Environment:
  REQUESTS         requests per measured phase (default 20000)
  WARMUP_REQUESTS  requests before the first phase of each scenario (default 2000)
  CONC             client connections (default 4)
  REPEAT           measured phases per scenario (default 2); the table gives their mean and
                   the largest deviation from it
  SCENARIOS        tollgate scenarios (names in run.py's SCENARIOS), default proxy,fullchain
                   (the tracing ones, trace0/trace001/trace1, each on a tollgate process of its
                   own, their export counted by bench/otlp_sink.py);
                   those needing Redis (redislimit, cachehit_redis) are skipped, with a message,
                   when redis-server is not installed
  TARGETS          only targets whose name contains one of these comma-separated words
  REDIS_CACHE_TIMEOUT_MS  `timeout_ms` of the Redis cache scenario (default 1000 here, 100 in
                   run.py: the timeout is wall-clock and callgrind slows tollgate down)
  ANNOTATE=1       also write `callgrind_annotate` (top functions, inclusive and self) of the first
                   phase of each tollgate scenario to bench/results/<stem>-<target>.annotate.txt
  TOLLGATE_BIN, BENCH_REV, TOLLGATE_BASELINE_BIN, BENCH_BASELINE_REV, NGINX_LUA, BENCH_TMP:
                   as for run.py (instr.sh sets them)
"""

import datetime
import glob
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as R  # noqa: E402  (the bench driver: configs, process handling, labels)

# Under callgrind a Redis lookup answered in time natively can take longer than run.py's 100 ms
# wall-clock timeout (it did: 1 request in 20,000); it is then a miss and fails the phase.
R.REDIS_CACHE_TIMEOUT_MS = int(os.environ.get("REDIS_CACHE_TIMEOUT_MS", "1000"))

REQUESTS = int(os.environ.get("REQUESTS", "20000"))
WARMUP_REQUESTS = int(os.environ.get("WARMUP_REQUESTS", "2000"))
CONC = int(os.environ.get("CONC", "4"))
REPEAT = int(os.environ.get("REPEAT", "2"))
SCENARIO_NAMES = [s.strip() for s in os.environ.get("SCENARIOS", "proxy,fullchain").split(",") if s.strip()]
TARGET_FILTER = [t.strip() for t in os.environ.get("TARGETS", "").split(",") if t.strip()]
ANNOTATE = os.environ.get("ANNOTATE", "") not in ("", "0")
READY_TIMEOUT = 180  # start-up under valgrind takes a few seconds (reading symbols)
AGREE_PCT = 1.0  # the phases of one scenario must agree within this


def log(msg):
    R.log(msg)


# ---------------------------------------------------------------------------------------------
# Client: exactly n requests, CONC keep-alive connections, one request in flight on each.
class Conn:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.buf = b""


def parse_response(buf):
    """(status, body, rest, close) when buf starts with a complete response, else None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buf[:end].decode("latin-1").split("\r\n")
    status = int(head[0].split(" ", 2)[1])
    hdrs = {}
    for line in head[1:]:
        k, _, v = line.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    body_start = end + 4
    close = hdrs.get("connection", "").lower() == "close"
    if "content-length" in hdrs:
        n = int(hdrs["content-length"])
        if len(buf) < body_start + n:
            return None
        return status, buf[body_start:body_start + n], buf[body_start + n:], close
    if "chunked" in hdrs.get("transfer-encoding", "").lower():
        pos, body = body_start, b""
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            size = int(buf[pos:eol].split(b";")[0], 16)
            if len(buf) < eol + 2 + size + 2:
                return None
            if size == 0:
                return status, body, buf[eol + 4:], close
            body += buf[eol + 2:eol + 2 + size]
            pos = eol + 2 + size + 2
    raise ValueError(f"response without length: {head[0]}")


def send_requests(port, path, headers, n, conc=CONC, timeout=1800):
    """Send exactly n requests; return {status or "error": count}. Raises on a wrong body."""
    raw = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
           + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()
    sel = selectors.DefaultSelector()
    sent = done = 0
    counts = {}
    deadline = time.time() + timeout

    def open_conn():
        c = Conn(port)
        sel.register(c.sock, selectors.EVENT_READ, c)
        return c

    def send(c):
        nonlocal sent
        c.sock.setblocking(True)
        c.sock.sendall(raw)
        c.sock.setblocking(False)
        sent += 1

    conns = [open_conn() for _ in range(min(conc, n))]
    for c in conns:
        send(c)
    try:
        while done < n:
            if time.time() > deadline:
                raise TimeoutError(f"{done}/{n} responses after {timeout}s")
            for key, _ in sel.select(timeout=10):
                c = key.data
                try:
                    chunk = c.sock.recv(65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    raise ConnectionError(f"server closed a connection after {done}/{n} responses")
                c.buf += chunk
                while True:
                    r = parse_response(c.buf)
                    if r is None:
                        break
                    status, body, c.buf, close = r
                    done += 1
                    counts[status] = counts.get(status, 0) + 1
                    if status == 200 and body.strip() != R.expected_body(path).strip().encode():
                        raise ValueError(f"unexpected body {body[:100]!r}")
                    if close:
                        sel.unregister(c.sock)
                        c.sock.close()
                        if sent < n:
                            c2 = open_conn()
                            send(c2)
                        break
                    if sent < n:
                        send(c)
    finally:
        for key in list(sel.get_map().values()):
            key.fileobj.close()
        sel.close()
    return counts


# ---------------------------------------------------------------------------------------------
# callgrind
def control(pid, *args):
    r = subprocess.run(["callgrind_control", f"--vgdb-prefix={VGDB_PREFIX}", *args, str(pid)],
                       capture_output=True, text=True, timeout=120)
    # callgrind_control exits 0 even when it found no such process: look at what it says
    out = r.stdout + r.stderr
    if r.returncode != 0 or re.search(r"^Error", out, re.M) or "not detected" in out or "OK." not in out:
        sys.exit(f"callgrind_control {' '.join(args)} {pid} failed: {r.stdout}{r.stderr}")
    return r.stdout


def total_ir(path):
    with open(path) as f:
        for line in f:
            m = re.match(r"(?:totals|summary):\s+(\d+)", line)
            if m:
                return int(m.group(1))
    sys.exit(f"no totals in {path}")


def valgrind_prefix(slug):
    return ["valgrind", "--tool=callgrind", "--vgdb=yes", f"--vgdb-prefix={VGDB_PREFIX}",
            f"--callgrind-out-file={os.path.join(CG_DIR, slug)}.%p"]


def measure(pid, slug, scenario_label, target):
    """Warm up, then REPEAT measured phases; returns the list of Ir per request. Before each
    phase one probe request must answer as at start-up (a cache: X-Cache-Status HIT); for a
    Redis cache every request of a phase must have been one hit on Redis's side."""
    port, path, headers = target.port, target.path, target.headers
    log(f"  {scenario_label}: warm-up {WARMUP_REQUESTS} requests")
    counts = send_requests(port, path, headers, WARMUP_REQUESTS)
    if set(counts) != {200}:
        sys.exit(f"{scenario_label}: warm-up answers {counts}")
    per_req, files = [], []
    for i in range(REPEAT):
        R.probe(target, f"before phase {i + 1}")
        before = set(glob.glob(os.path.join(CG_DIR, f"{slug}.{pid}*")))
        redis0 = R.redis_stats() if target.redis_hits else None
        # tracing: the probe's and warm-up's spans are exported before the counters are zeroed,
        # and the phase's own spans before the dump, so a phase holds its own export only
        # (the waits, idle time, are inside the phase: see the report)
        sink0 = R.sink_settle(target.sink) if target.sink else None
        control(pid, "-z")
        t0 = time.time()
        counts = send_requests(port, path, headers, REQUESTS)
        elapsed = time.time() - t0
        sink1 = R.sink_settle(target.sink) if target.sink else None
        control(pid, f"--dump={scenario_label} phase {i + 1}")
        if set(counts) != {200}:
            sys.exit(f"{scenario_label}: answers {counts}")
        if redis0:
            redis1 = R.redis_stats()
            cmds, problem = R.redis_hit_check(redis0, redis1, REQUESTS, 0)
            if problem:
                sys.exit(f"{scenario_label}: phase {i + 1}: not every request was a Redis cache hit: {problem}")
            cpu_us = (redis1["cpu_s"] - redis0["cpu_s"]) / REQUESTS * 1e6
            REDIS_PHASES.setdefault(scenario_label, []).append((cmds, cpu_us))
            log(f"  {scenario_label}: phase {i + 1}: {cmds:.4f} Redis scripts/request, all hits; "
                f"Redis CPU {cpu_us:.1f} us/request (not under callgrind)")
        if sink0 is not None:
            d = R.sink_delta(sink0, sink1)
            problem = R.sink_problem(target.sample_ratio, d, REQUESTS, 0)
            if problem:
                sys.exit(f"{scenario_label}: phase {i + 1}: OTLP sink check failed: {problem}")
            SINK_PHASES.setdefault(scenario_label, []).append(d)
            log(f"  {scenario_label}: phase {i + 1}: the OTLP sink got {d['spans']} spans ({d['spans'] / REQUESTS:.4f} "
                f"per request) in {d['requests']} export requests, {d['bytes']:,} bytes")
        new = sorted(set(glob.glob(os.path.join(CG_DIR, f"{slug}.{pid}*"))) - before, key=os.path.getmtime)
        if len(new) != 1:
            sys.exit(f"{scenario_label}: expected one new dump, got {new}")
        ir = total_ir(new[0])
        if RAW_DIR:  # keep the dump (gitignored) for callgrind_annotate / a diff later
            import shutil
            kept = os.path.join(RAW_DIR, f"{re.sub(r'[^a-z0-9@]+', '-', scenario_label.lower()).strip('-')}.phase{i + 1}.callgrind")
            shutil.copyfile(new[0], kept)
            new[0] = kept
        per_req.append(ir / REQUESTS)
        files.append(new[0])
        log(f"  {scenario_label}: phase {i + 1}: {ir:,} Ir / {REQUESTS} = {ir / REQUESTS:,.0f} per request "
            f"({REQUESTS / elapsed:,.0f} req/s under callgrind)")
    return per_req, files


def stop(p, timeout=120):
    """SIGINT (fast shutdown for nginx and Pingora); valgrind writes its final dump on exit."""
    if p.poll() is None:
        p.send_signal(signal.SIGINT)
    try:
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    if p in R.STARTED:
        R.STARTED.remove(p)


def annotate(dump, out_path, title):
    """Top functions of one phase's dump: inclusive (the hooks and what they call) and self."""
    with open(out_path, "w") as f:
        f.write(f"# {title}\n# callgrind_annotate of one measured phase ({REQUESTS} requests); "
                f"divide by {REQUESTS} for per-request figures\n")
        for inclusive, n in (("yes", 200), ("no", 80)):
            r = subprocess.run(["callgrind_annotate", f"--inclusive={inclusive}", "--threshold=100", dump],
                               capture_output=True, text=True, timeout=300)
            f.write(f"\n# ---- --inclusive={inclusive}, first {n} lines ----\n")
            f.write("\n".join(r.stdout.splitlines()[:n]) + "\n")


# ---------------------------------------------------------------------------------------------
def wanted(name):
    return not TARGET_FILTER or any(w in name for w in TARGET_FILTER)


def main():
    global CG_DIR, VGDB_PREFIX, RAW_DIR
    tmp = os.environ.get("BENCH_TMP") or __import__("tempfile").mkdtemp(prefix="tollgate-instr.")
    R.TMP = tmp
    # Anything that drops privileges (an nginx worker started as root with master_process on)
    # must still reach the temp dir and write its callgrind dumps and vgdb FIFOs.
    os.chmod(tmp, 0o711)
    CG_DIR = os.path.join(tmp, "callgrind")
    os.makedirs(CG_DIR, exist_ok=True)
    os.chmod(CG_DIR, 0o1777)
    os.makedirs(os.path.join(tmp, "vgdb"), exist_ok=True)
    os.chmod(os.path.join(tmp, "vgdb"), 0o1777)
    VGDB_PREFIX = os.path.join(tmp, "vgdb", "vgdb")
    signal.signal(signal.SIGTERM, R.on_signal)
    signal.signal(signal.SIGINT, R.on_signal)
    for b in (R.TOLLGATE_BIN, R.FLOOR_BIN) + ((R.BASELINE_BIN,) if R.BASELINE_BIN else ()) + ((R.CUSTOM_BIN,) if R.CUSTOM_BIN else ()):
        if not os.access(b, os.X_OK):
            sys.exit(f"missing binary {b}: run bench/instr.sh (it builds them)")
    by_name = {s.name: s for s in R.SCENARIOS}
    unknown = [n for n in SCENARIO_NAMES if n not in by_name]
    if unknown:
        sys.exit(f"unknown scenario(s) {unknown}; known: {', '.join(by_name)}")

    rev = R.git_rev()
    date = datetime.date.today().isoformat()
    stem = f"{date}-{rev}" + (f"-vs-{R.BASELINE_REV}" if R.BASELINE_BIN else "") + "-instr"
    results_dir = os.path.join(R.BENCH, "results")
    # A second run on the same day and revisions (e.g. the repeatability check) gets its own
    # files: <stem>-2, <stem>-3, ...
    base_stem, k = stem, 1
    while os.path.exists(os.path.join(results_dir, stem + ".md")):
        k += 1
        stem = f"{base_stem}-{k}"
    RAW_DIR = os.path.join(results_dir, "raw", stem)
    os.makedirs(RAW_DIR, exist_ok=True)

    up_port = R.free_port()
    log("starting the upstream (nginx) and redis (not measured)")
    R.start_redis()  # without redis-server: the scenarios needing it are left out of R.SCENARIOS
    R.prepare_scenarios()  # without a custom binary, its scenarios are left out of R.SCENARIOS
    left = {s.name for s in R.SCENARIOS}
    scenarios = [by_name[n] for n in SCENARIO_NAMES if n in left]
    R.start_authsvc()
    R.start_otlp_sink({s.name for s in scenarios if s.tracing})
    R.start_nginx("upstream", R.upstream_http(up_port))

    # (group label, how to start it, [(row name, path, headers, expect)])
    groups = []

    def nginx_group(name, slug, body, modules="", path="/hello", headers=None, expect=None):
        def start(port):
            # master_process off: the one nginx process is the worker (no fork, no user switch)
            return R.start_nginx(slug, body(port), modules, valgrind_prefix(slug), master=False)
        groups.append((name, slug, start, [(name, path, headers or {}, expect or {}, None)], True))

    nginx_group("nginx proxy", "nginx-proxy", lambda port: R.PROXY_HTTP.format(port=port, upstream=up_port))
    nginx_group(R.NGINX_CACHE, "nginx-cache",
                lambda port: R.CACHE_HTTP.format(tmp=tmp, port=port, upstream=up_port), expect={"x-cache-status": "HIT"})
    if R.lua_wanted():
        nginx_group(R.NGINX_LUA, "nginx-lua", lambda port: R.LUA_HTTP.format(port=port, upstream=up_port),
                    R.lua_modules(), headers=R.LUA_HEADERS, expect=R.LUA_EXPECT)
    elif os.environ.get("NGINX_LUA", "") != "0":
        log(f"  skipping the nginx+lua reference: {R.LUA_MISSING}")

    groups.append(("pingora floor", "floor",
                   lambda port: R.start("floor", valgrind_prefix("floor") + [R.FLOOR_BIN, f"127.0.0.1:{port}", f"127.0.0.1:{up_port}", tmp]),
                   [("pingora floor", "/hello", {}, {}, None)], False))

    def tollgate_group(binary, label, tag, kind=""):
        def start(port):
            cfg = os.path.join(tmp, f"{tag}.toml")
            # scenarios this build rejects (R.write_tollgate_config) are not measured on it
            skip = R.write_tollgate_config(cfg, port, up_port, binary, tag, kind, required=not kind.startswith("trace:"))
            if skip is None:  # a build without [tracing]: the tracing scenario is left out
                return None
            left_out[f"{label} "] = skip
            return R.start(tag, valgrind_prefix(tag) + [binary, "run", "-c", cfg])
        served = {s.name for s in R.measured_by(kind)}
        rows = [(f"{label} {s.path}", s.path, s.headers, s.expect, s) for s in scenarios if s.name in served]
        if rows and (kind != "custom" or any(s.binary for s in scenarios)):
            groups.append((label, tag, start, rows, False))

    left_out = {}  # row-name prefix -> scenario names its binary rejected

    tollgate_group(R.TOLLGATE_BIN, "tollgate", "tollgate")
    if R.BASELINE_BIN:
        tollgate_group(R.BASELINE_BIN, f"tollgate@{R.BASELINE_REV}", "tollgate-base")
    if R.CUSTOM_BIN:
        tollgate_group(R.CUSTOM_BIN, R.CUSTOM_LABEL, "tollgate-custom", "custom")
    # the tracing scenarios: a process each (the main config plus [tracing]), main binary only
    for s in scenarios:
        if s.tracing:
            tollgate_group(R.TOLLGATE_BIN, "tollgate", f"tollgate-{s.name}", f"trace:{s.name}")

    results = {}  # row name -> [Ir/request per phase]
    for gname, slug, start_fn, rows, is_nginx in groups:
        rows = [r for r in rows if wanted(r[0])]
        if not rows:
            continue
        port = R.free_port()
        log(f"{gname}: starting under callgrind")
        p = start_fn(port)
        if p is None:
            continue
        try:
            skip = set().union(*(v for k, v in left_out.items() if rows[0][0].startswith(k)))
            rows = [r for r in rows if not (r[4] and r[4].name in skip)]
            targets = [R.Target(name, port, path, p, [], headers, expect, redis_hits=bool(s and s.redis_hits),
                                sink=s.name if s and s.tracing else "", sample_ratio=s.sample_ratio if s else None)
                       for name, path, headers, expect, s in rows]
            for t in targets:
                R.wait_ready(t, timeout=READY_TIMEOUT)
            pid = p.pid
            for t in targets:
                name = t.name
                per_req, files = measure(pid, slug, name, t)
                results[name] = per_req
                if ANNOTATE and not is_nginx:
                    out = os.path.join(results_dir, f"{stem}-{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}.annotate.txt")
                    what = rev if name.startswith(("tollgate ", R.CUSTOM_LABEL)) else R.BASELINE_REV if name.startswith("tollgate@") else "floor"
                    annotate(files[0], out, f"{name} ({what})")
                    log(f"  wrote {os.path.relpath(out, R.ROOT)}")
        finally:
            stop(p)

    report(results, scenarios, rev, stem, results_dir)


def report(results, scenarios, rev, stem, results_dir):
    mean = {k: sum(v) / len(v) for k, v in results.items()}
    dev = {k: max(abs(x - mean[k]) for x in v) / mean[k] * 100 for k, v in results.items()}
    floor = mean.get("pingora floor")
    ngx = mean.get("nginx proxy")
    labels = ["tollgate"] + ([f"tollgate@{R.BASELINE_REV}"] if R.BASELINE_BIN else [])

    headers = ["target", "instructions/request", "phases", "max dev", "vs floor", "vs nginx proxy"]
    rows = []
    for name, v in results.items():
        rows.append([name, f"{mean[name]:,.0f}", " / ".join(f"{x:,.0f}" for x in v), f"{dev[name]:.2f}%",
                     R.fmt(mean[name] / floor if floor else None, ".3f"),
                     R.fmt(mean[name] / ngx if ngx else None, ".3f")])
    ratio_headers = ["ratio", "value"]
    ratios = []
    for label in labels:
        p, f = mean.get(f"{label} /proxy/hello"), mean.get(f"{label} /fullchain/hello")
        if p and f:
            ratios.append([f"{label} fullchain / proxy", f"{f / p:.3f}"])
        if p and floor:
            ratios.append([f"{label} proxy / floor", f"{p / floor:.3f}"])
        if p and ngx:
            ratios.append([f"{label} proxy / nginx proxy", f"{p / ngx:.3f}"])
        # the like-for-like references
        for scen, ref in (("fullchain", R.NGINX_LUA), ("cachehit", R.NGINX_CACHE), ("cachehit_redis", R.NGINX_CACHE)):
            x, y = mean.get(f"{label} /{scen}/hello"), mean.get(ref)
            if x and y:
                ratios.append([f"{label} {scen} / {ref}", f"{x / y:.3f}"])
        # tracing against the same route without it
        for scen in ("trace0", "trace001", "trace1"):
            x = mean.get(f"{label} /{scen}/hello")
            if x and p:
                ratios.append([f"{label} {scen} / proxy", f"{x / p:.3f}"])
                ratios.append([f"{label} {scen} − proxy (instructions/request)", f"{x - p:,.0f}"])
        # the Redis storage against the memory one and against no cache at all
        r, c = mean.get(f"{label} /cachehit_redis/hello"), mean.get(f"{label} /cachehit/hello")
        if r and c:
            ratios.append([f"{label} cachehit_redis / cachehit", f"{r / c:.3f}"])
        if r and p:
            ratios.append([f"{label} cachehit_redis / proxy", f"{r / p:.3f}"])
    if R.BASELINE_BIN:
        for s in scenarios:
            n, b = mean.get(f"tollgate {s.path}"), mean.get(f"tollgate@{R.BASELINE_REV} {s.path}")
            if n and b:
                ratios.append([f"{s.name}: {rev} / {R.BASELINE_REV}", f"{n / b:.3f}"])
    bad = [k for k, d in dev.items() if d > AGREE_PCT]

    print()
    print(R.text_table(rows, headers, None))
    print()
    if ratios:
        print(R.text_table(ratios, ratio_headers, None))
        print()
    vg = R.sh(["valgrind", "--version"])
    md = [
        f"# tollgate instruction counts {datetime.date.today().isoformat()} ({rev}"
        + (f" vs {R.BASELINE_REV}" if R.BASELINE_BIN else "") + ")",
        "",
        f"- {vg} `--tool=callgrind`; counters zeroed after {WARMUP_REQUESTS} warm-up requests, "
        f"then exactly {REQUESTS} keep-alive requests over {CONC} connections per phase, "
        f"{REPEAT} phase(s) per target, dumped with `callgrind_control`",
        "- instructions/request = total Ir of the measured process (all threads; nginx runs with "
        "`master_process off`, its one process being the worker) during a phase / requests: user space only, kernel not included",
        "- every proxy: 1 worker thread/process, proxying to an nginx upstream answering `hello`; "
        "tollgate: the run.py config (threads = 1, access log off)",
        f"- tollgate = {rev}" + (f", tollgate@{R.BASELINE_REV} = baseline {R.BASELINE_REV}" if R.BASELINE_BIN else "")
        + (f", {R.CUSTOM_LABEL} = the custom binary of examples/custom-plugin (built-in plugins + hmac_signature) at {rev}" if R.CUSTOM_BIN else ""),
        *([f"- Redis cache scenario: `timeout_ms = {R.REDIS_CACHE_TIMEOUT_MS}` (run.py: 100; wall-clock, and callgrind is slow)"]
          if any(s.redis_hits for s in scenarios) else []),
        "- max dev = largest deviation of a phase from the mean of the phases",
        "",
        R.md_table(rows, headers),
        "",
    ]
    if ratios:
        md += [R.md_table(ratios, ratio_headers), ""]
    if REDIS_PHASES:
        redis_rows = [[name, " / ".join(f"{c:.4f}" for c, _ in v), " / ".join(f"{u:.1f}" for _, u in v)]
                      for name, v in REDIS_PHASES.items()]
        redis_headers = ["target", "Redis scripts/request (phases)", "Redis CPU us/request (phases)"]
        print(R.text_table(redis_rows, redis_headers, None))
        print()
        md += ["Redis cache targets: every request of every phase was one hit on Redis's side (one script, the "
               "lookup; no keyspace miss). Redis is not under callgrind: its instructions are not in the "
               "counts above; its CPU (`used_cpu_sys + used_cpu_user`, native speed) is given instead.", "",
               R.md_table(redis_rows, redis_headers), ""]
    if SINK_PHASES:
        sink_rows = [[name, " / ".join(str(d["spans"]) for d in v), " / ".join(f"{d['spans'] / REQUESTS:.4f}" for d in v),
                      " / ".join(str(d["requests"]) for d in v), " / ".join(f"{d['bytes']:,}" for d in v)]
                     for name, v in SINK_PHASES.items()]
        sink_headers = ["target", "spans (phases)", "spans/request (phases)", "export requests (phases)", "bytes (phases)"]
        print(R.text_table(sink_rows, sink_headers, None))
        print()
        md += ["Tracing targets (`/trace*`: the proxy route on a tollgate process of its own with `[tracing]`, "
               "exporting to the bench's OTLP sink, bench/otlp_sink.py): before zeroing the counters and again before "
               f"the dump, the driver waits until the sink has received nothing new for {R.SINK_QUIET_S:g} s, so each "
               "phase holds the export of its own spans and no other (and those idle waits). Every sampled request is "
               "2 spans (server + upstream attempt): sample_ratio 1 should give 2.0000 spans/request, 0.01 about "
               "0.02; checked in every phase: sample_ratio 0 exported nothing, sample_ratio 1 exported spans.", "",
               R.md_table(sink_rows, sink_headers), "", *R.sink_samples(RAW_DIR), ""]
    if bad:
        md += [f"WARNING: phases differ by more than {AGREE_PCT}% for: {', '.join(bad)}", ""]
    md_path = os.path.join(results_dir, stem + ".md")
    with open(md_path, "w") as f:
        f.write("\n".join(md))
    with open(os.path.join(RAW_DIR, "results.json"), "w") as f:
        json.dump({"requests": REQUESTS, "per_request": results}, f, indent=1)
    log(f"wrote {os.path.relpath(md_path, R.ROOT)}")
    if bad:
        log(f"WARNING: phases differ by more than {AGREE_PCT}% for: {', '.join(bad)}")
        sys.exit(3)


CG_DIR = VGDB_PREFIX = RAW_DIR = None
SINK_PHASES = {}  # row name -> [sink counts delta] per phase
REDIS_PHASES = {}  # row name -> [(Redis scripts/request, Redis CPU us/request)] per phase

if __name__ == "__main__":
    try:
        main()
    finally:
        R.stop_all()

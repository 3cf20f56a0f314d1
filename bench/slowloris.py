#!/usr/bin/env python3
"""Slowloris client for bench/slowloris.sh (stdlib only, 127.0.0.1 only).

  slowloris.py PORT ADMIN_PORT GATEWAY_PID N LEGIT LEGIT_SOURCE HEADER_TIMEOUT_MS

Opens N connections to 127.0.0.1:PORT at once (non-blocking sockets, one selector) and on
each sends a request head one byte a second ("GET /hello HTTP/1.1\\r\\nHost: ...\\r\\n" and
then an endless "X-Slow: aaaa..." header), never finishing it. Each connection ends as one
of: an answer (its status code, read from the first line: 408, 503, ...), "closed" (EOF or
reset before any answer), "connect-error", or "open" (still held when the run ends).

Once every connection is established (or has failed), a thread makes LEGIT requests one
after the other with `curl --interface LEGIT_SOURCE http://127.0.0.1:PORT/hello` (the legit
client, from its own loopback address so the per-address limit the slow connections exhaust
is not its own), noting status, latency and how many slow connections were held meanwhile.

Sampled every 100 ms: slow connections held (connected, no answer, not closed), the
gateway's VmRSS; every 250 ms: `ss -Htn state established '( sport = :PORT )'` (the
gateway's side of every established connection on PORT, the legit client's included) and the
gateway's tollgate_downstream_connections gauge.

The run ends when every slow connection has ended, or HEADER_TIMEOUT + 8 s after the last
one was opened. Prints a JSON summary on stdout (progress lines on stderr).
"""
import json
import os
import re
import selectors
import socket
import subprocess
import sys
import threading
import time
import urllib.request

port, admin, gw_pid, n, legit_n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
legit_source, header_timeout = sys.argv[6], int(sys.argv[7]) / 1000.0

HEAD = (f"GET /hello HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: slowloris\r\nX-Slow: ").encode() + b"a" * 4096
T0 = time.monotonic()


def now():
    return time.monotonic() - T0


def log(msg):
    print(f"[slowloris {now():6.2f}s] {msg}", file=sys.stderr, flush=True)


def rss_kib():
    try:
        with open(f"/proc/{gw_pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def ss_count():
    out = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True).stdout
    return len(out.splitlines())


def gauge():
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=1) as r:
            m = re.search(rb"^tollgate_downstream_connections\s+(\S+)", r.read(), re.M)
            return int(float(m.group(1))) if m else None
    except OSError:
        return None


class Conn:
    __slots__ = ("sock", "state", "t_open", "t_connected", "t_end", "t_closed", "sent", "next_send", "buf", "outcome")

    def __init__(self, sock):
        self.sock, self.state = sock, "connecting"
        self.t_open, self.t_connected, self.t_end, self.t_closed = now(), None, None, None
        self.sent, self.next_send, self.buf, self.outcome = 0, 0.0, b"", None


sel = selectors.DefaultSelector()
conns = []
rss_before = rss_kib()
for _ in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    c = Conn(s)
    err = s.connect_ex(("127.0.0.1", port))
    if err not in (0, 115):  # EINPROGRESS
        c.state, c.outcome, c.t_end = "done", "connect-error", now()
        s.close()
    else:
        sel.register(s, selectors.EVENT_WRITE | selectors.EVENT_READ, c)
    conns.append(c)
t_last_open = now()
log(f"{n} connections started in {t_last_open:.3f} s")

samples = {"held": [], "rss": [], "ss": [], "gauge": []}
all_up = threading.Event()
stop = threading.Event()
legit = []


def held():
    return sum(1 for c in conns if c.state == "connected")


def sampler():
    while not stop.is_set():
        t = now()
        samples["ss"].append((round(t, 2), ss_count()))
        samples["gauge"].append((round(t, 2), gauge()))
        stop.wait(0.25)


def legit_client():
    all_up.wait(5)
    for i in range(legit_n):
        t = now()
        h = held()
        out = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "--interface", legit_source, "--max-time", "5",
             "-w", "%{http_code} %{time_total}", f"http://127.0.0.1:{port}/hello"],
            capture_output=True, text=True).stdout.split()
        code, secs = (out + ["000", "0"])[:2]
        legit.append({"i": i + 1, "t": round(t, 3), "status": int(code), "ms": round(float(secs) * 1000, 2),
                      "held_at_start": h, "held_at_end": held()})


threads = [threading.Thread(target=sampler, daemon=True), threading.Thread(target=legit_client, daemon=True)]
for t in threads:
    t.start()

deadline = t_last_open + header_timeout + 8
last_sample = -1.0
peak_held, peak_held_t = 0, 0.0
while True:
    t = now()
    if t - last_sample >= 0.1:
        h = held()
        samples["held"].append((round(t, 2), h))
        samples["rss"].append((round(t, 2), rss_kib()))
        if h > peak_held:
            peak_held, peak_held_t = h, t
        last_sample = t
        if not all_up.is_set() and all(c.state != "connecting" for c in conns):
            log(f"all connections established or failed; {h} held")
            all_up.set()
    active = [c for c in conns if c.state != "done"]
    if not active or t > deadline:
        break
    for key, mask in sel.select(timeout=0.05):
        c = key.data
        if c.state == "connecting":
            err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                c.state, c.outcome, c.t_end = "done", "connect-error", now()
                sel.unregister(c.sock)
                c.sock.close()
                continue
            c.state, c.t_connected = "connected", now()
            sel.modify(c.sock, selectors.EVENT_READ, c)
        if mask & selectors.EVENT_READ and c.state != "done":
            try:
                data = c.sock.recv(4096)
            except (ConnectionResetError, OSError):
                data = None
            if data:
                c.buf += data
                if c.outcome is None and b"\r\n" in c.buf:
                    m = re.match(rb"HTTP/1\.[01] (\d{3})", c.buf)
                    c.outcome = m.group(1).decode() if m else "garbage"
                    c.t_end = now()  # answered: no longer held
                    c.state = "answered"
                continue
            # EOF or reset
            c.t_closed = now()
            if c.outcome is None:
                c.outcome = "closed"
                c.t_end = c.t_closed
            c.state = "done"
            c.t_connected = c.t_connected or c.t_end
            c.buf = b""
            sel.unregister(c.sock)
            c.sock.close()
    # one more head byte a second on every connection still held
    t = now()
    for c in conns:
        if c.state == "connected" and t >= c.next_send and c.sent < len(HEAD):
            try:
                c.sock.send(HEAD[c.sent:c.sent + 1])
                c.sent += 1
                c.next_send = t + 1.0
            except BlockingIOError:
                pass
            except OSError:
                pass  # the read side sees the reset
t_end = now()
stop.set()
for t in threads:
    t.join(timeout=10)
not_closed = {}
for c in conns:
    if c.state in ("connected", "connecting"):
        c.outcome = "open"
    if c.state != "done" and c.outcome != "connect-error":
        not_closed[c.outcome] = not_closed.get(c.outcome, 0) + 1
    if c.state != "done":
        try:
            c.sock.close()
        except OSError:
            pass
time.sleep(1)
rss_after = rss_kib()
ss_after = ss_count()

outcomes = {}
for c in conns:
    outcomes[c.outcome] = outcomes.get(c.outcome, 0) + 1
def spread(pairs):
    out = {}
    for k, v in pairs:
        out.setdefault(k, []).append(v)
    return {k: {"min": round(min(v), 3), "max": round(max(v), 3)} for k, v in out.items()}


answered = [c for c in conns if c.t_end is not None and c.outcome not in ("open", "connect-error")]
closed = [c for c in conns if c.t_closed is not None]
head_bytes = {}
for c in conns:
    head_bytes.setdefault(c.outcome, []).append(c.sent)
print(json.dumps({
    "n": n,
    "opened_in_s": round(t_last_open, 3),
    "ran_s": round(t_end, 2),
    "outcomes": outcomes,
    "answer_after_s": spread((c.outcome, c.t_end - c.t_open) for c in answered),
    "closed_after_s": spread((c.outcome, c.t_closed - c.t_open) for c in closed),
    "not_closed_at_end": not_closed,
    "head_bytes_sent": {k: {"min": min(v), "max": max(v)} for k, v in head_bytes.items()},
    "last_closed_s": round(max((c.t_closed for c in closed), default=0), 3),
    "peak_held": peak_held,
    "peak_held_at_s": round(peak_held_t, 2),
    "peak_ss": max((v for _, v in samples["ss"]), default=0),
    "peak_gauge": max((v for _, v in samples["gauge"] if v is not None), default=None),
    "ss_after": ss_after,
    "rss_before_kib": rss_before,
    "rss_peak_kib": max((v for _, v in samples["rss"] if v), default=None),
    "rss_after_kib": rss_after,
    "legit": legit,
    "samples": samples,
}))

#!/usr/bin/env python3
"""Figures for issue 6, on 127.0.0.1 only, bounded in time (about 1 minute):

1. SSE time to first event: an origin that sends an event every 100 ms; 40 requests direct
   and 40 through tollgate (release build); median and p99 of the time from sending the request
   to reading the first `data:` line.
2. Least-request vs round robin with one slow backend: nginx (fast) and a Python backend that
   answers after 20 ms; `wrk -t1 -c64 -d10s` through tollgate with each algorithm.

Usage: bench/resilience.py  (after `cargo build --release`; needs nginx and wrk)
"""
import http.server
import os
import socket
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("TOLLGATE_BIN") or os.path.join(ROOT, "target", "release", "tollgate")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Threaded(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        # Clients hang up mid-stream on purpose (first event read, wrk stopping): not news.
        pass


class Sse(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for i in range(3):
            ev = f"data: {i}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(ev), ev))
            self.wfile.flush()
            time.sleep(0.1)
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, *a):
        pass


class Slow(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        time.sleep(0.02)
        self.send_response(200)
        self.send_header("content-length", "5")
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, *a):
        pass


def serve(handler):
    srv = Threaded(("127.0.0.1", free_port()), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv.server_address[1]


def first_event_ms(port, path="/"):
    t = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
        buf = b""
        while b"data:" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                raise RuntimeError("stream ended before the first event")
            buf += chunk
    return (time.perf_counter() - t) * 1000


def start_tollgate(tmp, body):
    port = free_port()
    cfg = os.path.join(tmp, f"t{port}.toml")
    with open(cfg, "w") as f:
        f.write(f'[server]\nlisten = ["127.0.0.1:{port}"]\nadmin_listen = ""\nthreads = 1\nlog_level = "warn"\n'
                f'pid_file = "{tmp}/p{port}.pid"\nupgrade_sock = "{tmp}/u{port}.sock"\n'
                f'[server.access_log]\nenabled = false\n{body}')
    p = subprocess.Popen([BIN, "run", "-c", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return p, port
        except OSError:
            time.sleep(0.05)
    p.kill()
    sys.exit("tollgate did not start")


def wrk(port):
    out = subprocess.run(["wrk", "-t1", "-c64", "-d10s", "--latency", f"http://127.0.0.1:{port}/"],
                         capture_output=True, text=True, timeout=30).stdout
    rps = next(l.split()[1] for l in out.splitlines() if l.startswith("Requests/sec"))
    p99 = next(l.split()[1] for l in out.splitlines() if l.strip().startswith("99%"))
    return float(rps), p99


def main():
    if not os.path.exists(BIN):
        sys.exit(f"no release build at {BIN}: run cargo build --release")
    procs = []
    with tempfile.TemporaryDirectory(prefix="tollgate-res.") as tmp:
        try:
            sse = serve(Sse)
            p, tg = start_tollgate(tmp, f'[[upstreams]]\nname = "s"\nbackends = ["127.0.0.1:{sse}"]\n'
                                         f'[[routes]]\nname = "sse"\npaths = ["/"]\nupstream = "s"\n')
            procs.append(p)
            first_event_ms(tg)
            direct = [first_event_ms(sse) for _ in range(40)]
            via = [first_event_ms(tg) for _ in range(40)]
            q = lambda v: (statistics.median(v), sorted(v)[int(len(v) * 0.99) - 1])
            print("SSE time to first event (ms), 40 requests each:")
            print(f"  direct:          median {q(direct)[0]:.2f}  p99 {q(direct)[1]:.2f}")
            print(f"  through tollgate: median {q(via)[0]:.2f}  p99 {q(via)[1]:.2f}")

            ngx = free_port()
            conf = os.path.join(tmp, "nginx.conf")
            with open(conf, "w") as f:
                f.write(f"daemon off; worker_processes 1; pid {tmp}/n.pid; error_log {tmp}/n.log;\n"
                        f"events {{ worker_connections 4096; }}\nhttp {{ access_log off; server {{ listen 127.0.0.1:{ngx};"
                        f" location / {{ return 200 \"hello\"; }} }} }}\n")
            procs.append(subprocess.Popen(["nginx", "-p", tmp, "-c", conf], stderr=subprocess.DEVNULL))
            slow = serve(Slow)
            time.sleep(0.3)
            print("wrk -t1 -c64 -d10s, backends: nginx (fast) + a 20 ms Python backend:")
            for algo in ("round_robin", "least_request"):
                p, port = start_tollgate(tmp, f'[[upstreams]]\nname = "u"\nbackends = ["127.0.0.1:{ngx}", "127.0.0.1:{slow}"]\n'
                                               f'algorithm = "{algo}"\n[[routes]]\nname = "r"\npaths = ["/"]\nupstream = "u"\n')
                procs.append(p)
                rps, p99 = wrk(port)
                print(f"  {algo:14} {rps:10,.0f} req/s   p99 {p99}")
                p.kill()
        finally:
            for p in procs:
                p.kill()


if __name__ == "__main__":
    main()

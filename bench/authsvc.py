#!/usr/bin/env python3
"""The bench's forward-auth service (stdlib only): 200 with `X-User-Id: bench` when the
request carries `Authorization: Bearer bench-token`, else 401. Keep-alive HTTP/1.1, one thread
per connection. Usage: authsvc.py PORT"""

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        ok = self.headers.get("authorization") == "Bearer bench-token"
        self.send_response(200 if ok else 401)
        if ok:
            self.send_header("X-User-Id", "bench")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_):
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024


if __name__ == "__main__":
    Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()

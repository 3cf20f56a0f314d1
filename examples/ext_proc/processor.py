#!/usr/bin/env python3
"""A reference external processor for tollgate's `ext_proc` plugin (standard library only).

Run:  python3 processor.py [PORT]   (PORT 0 or absent: any free port; the chosen port is
printed as "listening on 127.0.0.1:PORT" on the first line of stdout).

Protocol (see docs/plugins.md): the gateway POSTs one JSON object per phase and reads one
JSON object back.

* request_headers:
    - a path containing /blocked   -> immediate 403 with a text body (the upstream is not called)
    - a path containing /slow      -> sleeps SLOW_SECONDS (default 2), then continues like the default
    - a path containing /malformed -> answers a body that is not JSON (a failure for the gateway)
    - a path containing /rewrite   -> sends the request upstream as /rewritten
    - anything else      -> sets X-Processed-By, X-Body-Length (when a body was sent) and
                            removes X-Remove-Me
* response_headers: sets X-Response-Processed and removes X-Echo (for a path containing
  /respfail: answers a body that is not JSON).
"""

import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SLOW_SECONDS = float(os.environ.get("SLOW_SECONDS", "2"))


def decide(msg):
    """The answer to one message, as a Python object (or bytes for a broken answer)."""
    if msg.get("phase") == "response_headers":
        if "/respfail" in (msg.get("path") or ""):
            return b"not json either"
        return {"headers": {"set": {"X-Response-Processed": "processor.py"}, "remove": ["x-echo"]}}
    path = msg.get("path", "/")
    if "/blocked" in path:
        return {
            "immediate_response": {
                "status": 403,
                "headers": {"content-type": "text/plain", "x-blocked-by": "processor.py"},
                "body": "blocked by the processor\n",
            }
        }
    if "/malformed" in path:
        return b"this is not json"
    if "/slow" in path:
        time.sleep(SLOW_SECONDS)
    if "/rewrite" in path:
        return {"path": "/rewritten"}
    changes = {"set": {"X-Processed-By": "processor.py"}, "remove": ["x-remove-me"]}
    if "body" in msg:
        changes["set"]["X-Body-Length"] = str(len(msg["body"].encode()))
    elif "body_base64" in msg:
        changes["set"]["X-Body-Length"] = "base64"
    return {"headers": changes}


class Handler(BaseHTTPRequestHandler):
    # Keep-alive: the gateway pools its connections.
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            msg = json.loads(raw)
        except ValueError:
            self.send_answer(400, b'{"error": "not json"}')
            return
        answer = decide(msg)
        body = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
        self.send_answer(200, body)

    def send_answer(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args):
        pass  # quiet


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print(f"listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

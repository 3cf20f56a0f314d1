#!/usr/bin/env python3
"""The bench's OTLP/HTTP trace sink (stdlib only): accepts `POST /v1/traces` (protobuf
ExportTraceServiceRequest, optionally `Content-Encoding: gzip`) and answers 200 with an empty
body and `Content-Type: application/x-protobuf` (400 when the body does not parse as protobuf);
anything else gets 404. Keep-alive HTTP/1.1,
one thread per connection, 127.0.0.1 only.

Usage: otlp_sink.py NAME=PORT [NAME=PORT ...]

One listener per NAME (run.py gives every tracing scenario a port of its own, so the counts
of one scenario are never mixed with the tail of another's export). Per NAME it counts export
requests, body bytes (as received), spans (ResourceSpans > ScopeSpans > Span, counted without
decoding the spans themselves) and bodies it could not parse. `GET /stats` on any of the ports
answers all counts as JSON, plus a decoded summary of the first export request each NAME got
(span names and kinds, attribute keys, resource attributes) to show what tollgate sends. The
counts are printed to stdout on SIGINT/SIGTERM and at exit.
"""

import gzip
import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
STATS = {}  # name -> {"requests", "bytes", "spans", "bad", "sample"}
MAX_BODY = 64 << 20


# ---- minimal protobuf walking ---------------------------------------------------------------
def varint(buf, i):
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def fields(buf):
    """(field number, wire type, value) of one message: ints for varint/fixed, memoryview for
    length-delimited."""
    i, n = 0, len(buf)
    while i < n:
        key, i = varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = varint(buf, i)
        elif wt == 1:
            v, i = int.from_bytes(buf[i:i + 8], "little"), i + 8
        elif wt == 2:
            ln, i = varint(buf, i)
            v, i = buf[i:i + ln], i + ln
        elif wt == 5:
            v, i = int.from_bytes(buf[i:i + 4], "little"), i + 4
        else:
            raise ValueError(f"wire type {wt}")
        if i > n:
            raise ValueError("truncated message")
        yield num, wt, v


def count_spans(body):
    """ExportTraceServiceRequest: resource_spans = 1 > scope_spans = 2 > spans = 2."""
    spans = 0
    for num, wt, rs in fields(body):
        if num == 1 and wt == 2:
            for num2, wt2, ss in fields(rs):
                if num2 == 2 and wt2 == 2:
                    for num3, wt3, _ in fields(ss):
                        if num3 == 2 and wt3 == 2:
                            spans += 1
    return spans


KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


def any_value(buf):
    for num, wt, v in fields(buf):
        if num == 1 and wt == 2:
            return bytes(v).decode(errors="replace")
        if num == 2:
            return bool(v)
        if num == 3:
            return v - (1 << 64) if v >= 1 << 63 else v
        if num == 4:
            import struct
            return struct.unpack("<d", v.to_bytes(8, "little"))[0]
    return None


def key_values(buf):
    k = v = None
    for num, wt, x in fields(buf):
        if num == 1 and wt == 2:
            k = bytes(x).decode(errors="replace")
        elif num == 2 and wt == 2:
            v = any_value(x)
    return k, v


def summary(body):
    """A readable digest of one export request (for the first one only: this is slow)."""
    out = {"resource": {}, "scopes": [], "spans": []}
    for num, wt, rs in fields(body):
        if num != 1 or wt != 2:
            continue
        for n2, w2, x in fields(rs):
            if n2 == 1 and w2 == 2:  # Resource
                for n3, w3, kv in fields(x):
                    if n3 == 1 and w3 == 2:
                        k, v = key_values(kv)
                        out["resource"][k] = v
            elif n2 == 2 and w2 == 2:  # ScopeSpans
                for n3, w3, y in fields(x):
                    if n3 == 1 and w3 == 2:
                        out["scopes"].append(next((bytes(v).decode() for n, w, v in fields(y) if n == 1 and w == 2), ""))
                    elif n3 == 2 and w3 == 2 and len(out["spans"]) < 6:
                        span = {"attributes": {}, "events": []}
                        for n4, w4, z in fields(y):
                            if n4 == 1:
                                span["trace_id"] = bytes(z).hex()
                            elif n4 == 2:
                                span["span_id"] = bytes(z).hex()
                            elif n4 == 4:
                                span["parent_span_id"] = bytes(z).hex()
                            elif n4 == 5:
                                span["name"] = bytes(z).decode(errors="replace")
                            elif n4 == 6:
                                span["kind"] = KINDS.get(z, z)
                            elif n4 == 9 and w4 == 2:
                                k, v = key_values(z)
                                span["attributes"][k] = v
                            elif n4 == 11 and w4 == 2:
                                span["events"].append(next((bytes(v).decode() for n, w, v in fields(z) if n == 2 and w == 2), ""))
                            elif n4 == 15 and w4 == 2:
                                span["status_code"] = next((v for n, w, v in fields(z) if n == 3), 0)
                        out["spans"].append(span)
    return out


# ---- server ---------------------------------------------------------------------------------
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "otlp-sink"

    def answer(self, status, body=b"", ctype="application/x-protobuf"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def do_POST(self):
        n = int(self.headers.get("content-length") or 0)
        if n < 0 or n > MAX_BODY:
            self.close_connection = True
            return self.answer(413)
        body = self.rfile.read(n)
        if self.path.split("?", 1)[0] != "/v1/traces":
            return self.answer(404)
        spans, bad = 0, 0
        try:
            raw = gzip.decompress(body) if self.headers.get("content-encoding", "").lower() == "gzip" else body
            spans = count_spans(memoryview(raw))
        except (ValueError, IndexError, OSError, EOFError):
            bad = 1
            raw = b""
        name = self.server.sink_name
        with LOCK:
            s = STATS[name]
            s["requests"] += 1
            s["bytes"] += len(body)
            s["spans"] += spans
            s["bad"] += bad
            first = s["sample"] is None and spans > 0
            if first:
                s["sample"] = {}
        if first:
            try:
                sample = summary(memoryview(raw))
            except (ValueError, IndexError) as e:
                sample = {"error": str(e)}
            sample["content_type"] = self.headers.get("content-type", "")
            with LOCK:
                STATS[name]["sample"] = sample
        self.answer(400 if bad else 200)

    def do_GET(self):
        if self.path == "/stats":
            with LOCK:
                body = json.dumps(STATS).encode()
            return self.answer(200, body, "application/json")
        self.answer(404)

    def log_message(self, *_):
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024


def report():
    with LOCK:
        for name, s in STATS.items():
            print(f"{name}: {s['requests']} export requests, {s['bytes']} bytes, {s['spans']} spans, "
                  f"{s['bad']} unparsable", flush=True)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    servers = []
    for arg in sys.argv[1:]:
        name, _, port = arg.rpartition("=")
        name = name or "sink"
        STATS[name] = {"requests": 0, "bytes": 0, "spans": 0, "bad": 0, "sample": None}
        srv = Server(("127.0.0.1", int(port)), Handler)
        srv.sink_name = name
        servers.append(srv)
    for srv in servers[1:]:
        threading.Thread(target=srv.serve_forever, daemon=True).start()

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        servers[0].serve_forever()
    finally:
        report()


if __name__ == "__main__":
    main()

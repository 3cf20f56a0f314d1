#!/usr/bin/env python3
"""Send exactly COUNT GET requests to http://127.0.0.1:PORT/PATH over CONC keep-alive
connections (stdlib only) and print the statuses as JSON: {"200": n, "429": m, "error": e}.

  burst.py PORT PATH COUNT [CONC] [HEADER:VALUE ...]

A request that fails at the socket level is counted as "error" and is not retried (it may or
may not have reached the gateway). Every request has a 10 s timeout.
"""
import http.client
import json
import sys
import threading
from collections import Counter

port, path, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
conc = int(sys.argv[4]) if len(sys.argv) > 4 else 8
headers = dict(h.split(":", 1) for h in sys.argv[5:])
headers = {k.strip(): v.strip() for k, v in headers.items()}

lock = threading.Lock()
left = [count]
statuses = Counter()


def take():
    with lock:
        if left[0] == 0:
            return False
        left[0] -= 1
        return True


def worker():
    conn = None
    local = Counter()
    while take():
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", path, headers=headers)
            r = conn.getresponse()
            r.read()
            local[str(r.status)] += 1
            if r.will_close:
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException):
            local["error"] += 1
            if conn is not None:
                conn.close()
            conn = None
    if conn is not None:
        conn.close()
    with lock:
        statuses.update(local)


threads = [threading.Thread(target=worker) for _ in range(conc)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(dict(sorted(statuses.items()))))

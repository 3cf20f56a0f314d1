#!/usr/bin/env python3
"""Figures of one bench/slowloris.py run, for bench/slowloris.sh.

  slowloris_report.py RESULT.json HEADER_TIMEOUT_MS N LEGIT

Prints the figures, then one line `CHECKS NAME=VALUE ...` for the shell.
"""
import json
import statistics
import sys

r = json.load(open(sys.argv[1]))
timeout_s, n, legit_n = int(sys.argv[2]) / 1000, int(sys.argv[3]), int(sys.argv[4])


def mib(k):
    return f"{k / 1024:.1f}" if k else "?"


o = r["outcomes"]
print("slow connections:")
print(f"  {n} opened in {r['opened_in_s']} s; outcomes: "
      + ", ".join(f"{k}: {v}" for k, v in sorted(o.items(), key=lambda kv: -kv[1])))
print(f"  held at peak (client side: connected, no answer yet, not closed): {r['peak_held']} at {r['peak_held_at_s']} s")
print(f"  established on the gateway's port at peak (ss every 250 ms, the legit client's included): {r['peak_ss']}; "
      f"tollgate_downstream_connections at peak: {r['peak_gauge']}")
for k, v in sorted(r["answer_after_s"].items()):
    print(f"  answered {k}: {v['min']}-{v['max']} s after the connection was opened")
for k, v in sorted(r["closed_after_s"].items()):
    print(f"  closed after {k}: {v['min']}-{v['max']} s after the connection was opened")
print("  head bytes sent before the end: "
      + ", ".join(f"{k}: {v['min']}-{v['max']}" for k, v in sorted(r["head_bytes_sent"].items())))
print(f"  last slow connection closed at {r['last_closed_s']} s (all opened by {r['opened_in_s']} s; header timeout {timeout_s} s); "
      f"not closed when the run ended: {r['not_closed_at_end'] or 0}; established on the port 1 s after: {r['ss_after']}")
held = r["samples"]["held"]
print("  held (client side) every 0.5 s: " + " ".join(str(v) for _, v in held[::5]))
print(f"gateway RSS: before {mib(r['rss_before_kib'])} MiB, peak {mib(r['rss_peak_kib'])} MiB, "
      f"1 s after the last connection closed {mib(r['rss_after_kib'])} MiB")
lg = r["legit"]
ok = [x for x in lg if x["status"] == 200]
ms = [x["ms"] for x in lg]
if ms:
    print(f"legit client: {len(ok)} of {len(lg)} got 200; latency ms: min {min(ms):.1f}, "
          f"median {statistics.median(ms):.1f}, max {max(ms):.1f}")
else:
    print("legit client: no requests made")
print("  (request, start s, status, ms, slow connections held at its start/end): "
      + "; ".join(f"{x['i']} {x['t']:.2f}s {x['status']} {x['ms']:.1f}ms {x['held_at_start']}/{x['held_at_end']}" for x in lg))

during = len(lg) == legit_n and all(x["held_at_end"] > 0 for x in lg)
not_closed = sum(r["not_closed_at_end"].values())
max_closed = max((v["max"] for v in r["closed_after_s"].values()), default=0)
closed_in_time = not_closed == 0 and r["ss_after"] == 0 and max_closed <= timeout_s + 2
print(f"CHECKS LEGIT_OK={len(ok)} LEGIT_MADE={len(lg)} LEGIT_DURING={int(during)} CLOSED_IN_TIME={int(closed_in_time)} "
      f"NOT_CLOSED={not_closed} SS_AFTER={r['ss_after']} MAX_CLOSED_AFTER={max_closed} PEAK_HELD={r['peak_held']} "
      f"N408={o.get('408', 0)} N503={o.get('503', 0)} NCLOSED={o.get('closed', 0)}")

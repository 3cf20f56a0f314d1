#!/usr/bin/env python3
"""Follow a tollgate after SIGTERM until it exits (bench/sigterm.sh).

  shutdown_sampler.py PID PORT ADMIN_PORT T_TERM LIMIT_S

Every 50 ms: whether PORT still has a listening socket (`ss -Hltn`), and the kernel's TCP
counters AttemptFails and EstabResets (/proc/net/snmp); every 250 ms, GET /readyz and /healthz
on ADMIN_PORT. Prints one line per sample, `t listening attempt_fails estab_resets readyz
healthz accept_queue` (t in seconds since T_TERM, `-` when not probed; accept_queue: connections
the kernel has accepted that the gateway has not, ss's Recv-Q of the listening socket), and at the end one line
`# result: LISTENER_CLOSED_S=.. EXIT_S=.. AF2=.. ER2=.. AF_EXIT=.. ER_EXIT=..` for the shell
(AF2/ER2: the counters at the first sample with the port closed; EXIT_S empty if the process
was still running after LIMIT_S).
"""
import subprocess
import sys
import time
import urllib.error
import urllib.request

pid, port, admin, t_term, limit = int(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5])


def exited():
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def counters():
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Tcp:")]
    values = dict(zip(rows[0][1:], rows[1][1:]))
    return int(values["AttemptFails"]), int(values["EstabResets"])


def listening():
    """(listening sockets on PORT, connections in their accept queues: ss's Recv-Q)."""
    out = subprocess.run(["ss", "-Hltn", f"( sport = :{port} )"], capture_output=True, text=True).stdout
    lines = out.splitlines()
    return len(lines), sum(int(line.split()[1]) for line in lines)


def status(path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}{path}", timeout=1) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


closed_at = exit_at = None
af2 = er2 = None
next_probe = 0.0
while True:
    t = time.time() - t_term
    if exited():
        exit_at = t
        break
    if t > limit:
        break
    n, queued = listening()
    af, er = counters()
    ready = health = "-"
    if t >= next_probe:
        ready, health = status("/readyz"), status("/healthz")
        next_probe = t + 0.25
    print(f"{t:.2f} {n} {af} {er} {ready} {health} {queued}", flush=True)
    if closed_at is None and n == 0:
        closed_at, af2, er2 = t, af, er
    time.sleep(0.05)
af_exit, er_exit = counters()
if af2 is None:
    af2, er2 = af_exit, er_exit
fmt = lambda v: "" if v is None else f"{v:.2f}"
print(f"# result: LISTENER_CLOSED_S={fmt(closed_at)} EXIT_S={fmt(exit_at)} AF2={af2} ER2={er2} AF_EXIT={af_exit} ER_EXIT={er_exit}")

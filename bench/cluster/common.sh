# Shared helpers of bench/cluster.sh and bench/upgrade.sh (sourced, not run).
#
# Gives: ROOT, TOLLGATE, TMP (a fresh temp dir), start/stop of background processes with an
# EXIT trap that stops every one of them, free_port, wait_http, nginx config writers, wrk
# helpers and a metrics reader. Every process is started on 127.0.0.1 only.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CLUSTER_DIR="$ROOT/bench/cluster"
TOLLGATE=${TOLLGATE_BIN:-$ROOT/target/release/tollgate}

# The whole script is bounded: re-run it under `timeout` once (TIME_LIMIT seconds). On expiry
# timeout sends SIGTERM to the script's process group; the EXIT trap below then stops
# everything that is left.
bound_script() {
  local limit=$1
  shift
  if [ -z "${_TOLLGATE_BENCH_BOUNDED:-}" ]; then
    export _TOLLGATE_BENCH_BOUNDED=1
    exec timeout -k 15 "$limit" "$0" "$@"
  fi
}

need_tools() {
  local t
  for t in "$@"; do
    command -v "$t" >/dev/null 2>&1 || { echo "missing $t" >&2; exit 2; }
  done
  [ -x "$TOLLGATE" ] || {
    echo "missing $TOLLGATE (build it: cargo build --release, or set TOLLGATE_BIN)" >&2
    exit 2
  }
}

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ---- processes ------------------------------------------------------------------------------
TMP=""
PIDS=()       # every process started, in start order
NAMES=()      # their names (same index)
KEEP_TMP=${KEEP_TMP:-0}

make_tmp() {
  TMP=$(mktemp -d "/tmp/tollgate-$1.XXXXXX")
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# start NAME CMD...: run CMD in the background, output to $TMP/NAME.log; sets STARTED_PID.
start() {
  local name=$1
  shift
  "$@" >"$TMP/$name.log" 2>&1 </dev/null &
  STARTED_PID=$!
  PIDS+=("$STARTED_PID")
  NAMES+=("$name")
  log "started $name (pid $STARTED_PID)"
}

alive() { kill -0 "$1" 2>/dev/null; }

# forget PID: the script reaped it itself; cleanup must not signal it (the pid may be reused).
forget() {
  local i
  for i in "${!PIDS[@]}"; do
    [ "${PIDS[i]}" = "$1" ] && PIDS[i]=""
  done
  return 0
}

# wait_exit PID SECONDS: 0 if PID is gone within SECONDS.
wait_exit() {
  local pid=$1 i
  for ((i = 0; i < $2 * 10; i++)); do
    alive "$pid" || return 0
    sleep 0.1
  done
  ! alive "$pid"
}

cleanup() {
  local rc=$? i pid
  trap - EXIT INT TERM
  # SIGINT is a fast shutdown for tollgate (Pingora), nginx and redis alike; then SIGKILL.
  # (An entry is emptied once the script itself reaped that process.)
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    [ -n "${PIDS[i]}" ] && kill -INT "${PIDS[i]}" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    [ -n "$pid" ] || continue
    wait_exit "$pid" 5 || kill -KILL "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  if [ -n "$TMP" ] && [ -d "$TMP" ]; then
    if [ "$rc" -ne 0 ] || [ "$KEEP_TMP" = 1 ]; then
      echo "logs and configs kept in $TMP" >&2
    else
      rm -rf "$TMP"
    fi
  fi
  exit "$rc"
}

# Verdicts: `result NAME PASS|FAIL DETAIL` prints one line (NAME padded to RESULT_WIDTH, which a
# script may set before its first verdict); any FAIL makes `exit "$FAILED"` fail the script.
FAILED=0
result() {
  printf "%-${RESULT_WIDTH:-10}s %s  %s\n" "$1" "$2" "$3"
  [ "$2" = PASS ] || FAILED=1
}

# start_tollgate CONF ADMIN_PORT: `tollgate check` the config, start tollgate on it and wait until
# its admin listener says ready; GW is its pid.
start_tollgate() {
  "$TOLLGATE" check -c "$1" >/dev/null
  start tollgate "$TOLLGATE" run -c "$1"
  GW=$STARTED_PID
  wait_http "http://127.0.0.1:$2/readyz" 15
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_http URL SECONDS [STATUS]: until URL answers STATUS (default 200).
wait_http() {
  local url=$1 want=${3:-200} i code
  for ((i = 0; i < $2 * 10; i++)); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true)
    [ "$code" = "$want" ] && return 0
    sleep 0.1
  done
  echo "timeout waiting for $url to answer $want (last: $code)" >&2
  return 1
}

# ---- nginx ----------------------------------------------------------------------------------
# nginx_conf NAME BODY: a complete nginx config with its own prefix, pid and temp paths in TMP,
# 1 worker, access log off; BODY goes inside http {}.
nginx_conf() {
  local name=$1 body=$2
  cat >"$TMP/$name.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 16384;
pid $TMP/$name.pid;
error_log $TMP/$name-error.log ${NGINX_LOG_LEVEL:-warn};
events { worker_connections 8192; }
http {
    access_log off;
    keepalive_timeout 65s;
    keepalive_requests 100000000;
    client_body_temp_path $TMP/$name-body;
    proxy_temp_path $TMP/$name-proxy;
    fastcgi_temp_path $TMP/$name-fastcgi;
    uwsgi_temp_path $TMP/$name-uwsgi;
    scgi_temp_path $TMP/$name-scgi;
$body
}
EOF
}

start_nginx() {
  local name=$1
  nginx -t -q -p "$TMP" -e "$TMP/$name-error.log" -c "$TMP/$name.conf"
  start "$name" nginx -p "$TMP" -e "$TMP/$name-error.log" -c "$TMP/$name.conf"
}

# The upstream every proxied route goes to: answers 200 "hello" on every path.
start_origin() {
  local port=$1
  nginx_conf origin "
    server {
        listen 127.0.0.1:$port backlog=4096;
        location / {
            default_type text/plain;
            return 200 \"hello\";
        }
    }"
  start_nginx origin
  wait_http "http://127.0.0.1:$port/" 10
}

# ---- metrics --------------------------------------------------------------------------------
# metric ADMIN_PORT NAME LABEL_REGEX...: sum of the samples of NAME whose labels match every
# regex (0 when none or when the instance does not answer).
metric() {
  local port=$1 name=$2
  shift 2
  curl -s --max-time 2 "http://127.0.0.1:$port/metrics" 2>/dev/null | python3 -c '
import re, sys
name, regexes = sys.argv[1], sys.argv[2:]
total = 0.0
for line in sys.stdin:
    m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
    if not m or m.group(1) != name:
        continue
    labels = m.group(2) or ""
    if all(re.search(r, labels) for r in regexes):
        total += float(m.group(3))
print(int(total) if total == int(total) else total)
' "$name" "$@"
}

# ---- wrk ------------------------------------------------------------------------------------
# wrk_summary FILE: the interesting numbers of a wrk output (with bench/cluster/status.lua) as
# shell assignments: WRK_REQUESTS WRK_NON2XX WRK_SOCKET_ERRORS WRK_STATUSES WRK_RPS and the
# socket error parts WRK_CONNECT WRK_READ WRK_WRITE WRK_TIMEOUT, and WRK_STATUS_200.
wrk_summary() {
  python3 - "$1" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
def num(pattern, default=0):
    m = re.search(pattern, text)
    return int(m.group(1)) if m else default
req = num(r"(\d+) requests in")
m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
c, r, w, t = (int(x) for x in m.groups()) if m else (0, 0, 0, 0)
statuses = dict((int(k), int(v)) for k, v in re.findall(r"^status (\d+): (\d+)$", text, re.M))
non2xx = sum(v for k, v in statuses.items() if not 200 <= k < 300)
wrk_non2xx3xx = num(r"Non-2xx or 3xx responses: (\d+)")
rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
print(f"WRK_REQUESTS={req}")
print(f"WRK_NON2XX={non2xx}")
print(f"WRK_NON2XX3XX={wrk_non2xx3xx}")
print(f"WRK_SOCKET_ERRORS={c + r + w + t}")
print(f"WRK_CONNECT={c} WRK_READ={r} WRK_WRITE={w} WRK_TIMEOUT={t}")
print("WRK_STATUSES='" + " ".join(f"{k}:{v}" for k, v in sorted(statuses.items())) + "'")
print(f"WRK_RPS={rps.group(1) if rps else 0}")
print(f"WRK_STATUS_200={statuses.get(200, 0)}")
EOF
}

# ---- process memory and the kernel's TCP counters (bench/keyflood.sh, slowloris.sh, sigterm.sh)
# rss_kib PID: resident memory of PID in KiB (VmRSS), empty when it is gone.
rss_kib() {
  awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || true
}
mib() { # mib KIB: KiB as MiB with one decimal
  awk -v k="${1:-0}" 'BEGIN { printf "%.1f", k / 1024 }'
}

# tcp_counters: "AttemptFails EstabResets" of this network namespace (/proc/net/snmp).
# AttemptFails counts connection attempts that failed (e.g. refused: nothing listens);
# EstabResets counts established connections reset (RST), the ones that can lose a request.
tcp_counters() {
  awk '/^Tcp: [0-9]/ {print $8, $9}' /proc/net/snmp
}

# own_netns "$@": re-run the script once in a fresh network namespace (its own loopback, so
# the TCP counters above count this script's connections only; 127.0.0.1 still). Call it
# right after bound_script. NETNS=0, or a system that does not allow it, keeps the shared one.
own_netns() {
  if [ -z "${_TOLLGATE_BENCH_NETNS:-}" ] && [ "${NETNS:-1}" = 1 ]; then
    export _TOLLGATE_BENCH_NETNS=1
    if unshare -n true 2>/dev/null && command -v ip >/dev/null; then
      exec unshare -n -- bash -c 'ip link set lo up && exec "$0" "$@"' "$0" "$@"
    fi
    echo "note: no network namespace of its own (unshare -n failed): TCP counters are the machine's" >&2
  fi
}
in_own_netns() { [ "${_TOLLGATE_BENCH_NETNS:-}" = 1 ] && [ "${NETNS:-1}" = 1 ] && ! ip -o link 2>/dev/null | grep -qv ': lo:'; }

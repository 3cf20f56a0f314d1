#!/usr/bin/env bash
# SIGTERM under load, on 127.0.0.1: does a graceful shutdown lose requests?
#
# One tollgate (release build, threads = 1, pid file and upgrade socket in a temp dir,
# shutdown_grace_period_seconds = GRACE (3), shutdown_timeout_seconds = SHUTDOWN_TIMEOUT (10),
# access log to a file) with a route /proxy proxied to an nginx upstream, under
# `wrk -t1 -c64 -d20s` on /proxy/hello. At TERM_AT (5 s) the gateway gets SIGTERM. What
# docs/operations.md promises: /readyz answers 503 at once (/healthz stays 200), responses
# carry `Connection: close`, the listeners keep accepting for the grace period, then close;
# requests in flight finish and the process exits 0.
#
# After SIGTERM bench/cluster/shutdown_sampler.py follows the process every 50 ms (listening
# socket, TCP counters) and probes /readyz and /healthz every 250 ms until it exits.
#
# Checks: no non-2xx answer; no request lost on an established connection (no wrk timeout,
# no read/write error other than refused connection attempts, see below, no connection reset,
# every 200 the gateway logged reached wrk); exit status 0; /readyz 503 and /healthz 200
# during the grace period.
#
# wrk counts a refused connection (nothing listens any more) as a read or write error, not a
# connect error: its non-blocking connect() returns EINPROGRESS and the refusal shows up on the
# first read/write. After the listeners close (~TERM_AT + GRACE) wrk keeps reconnecting until
# its 20 s are over, so those errors are expected. To tell them from lost requests the script
# runs in a network namespace of its own (`unshare -n`, loopback only; NETNS=0 to skip) and
# reads the kernel's TCP counters: AttemptFails (connection attempts that failed: refusals)
# and EstabResets (established connections reset: where a request can be lost). Read + write
# errors not explained by refusals count as lost. (With wrk 4.1 on epoll the refusals come out
# as write errors; a read error is a request written on an established connection that was
# then reset.)
#
#   bench/sigterm.sh
#   GRACE=3 SHUTDOWN_TIMEOUT=10 DURATION=20 CONNS=64 TERM_AT=5 bench/sigterm.sh
#
# Needs target/release/tollgate (or TOLLGATE_BIN), nginx, wrk, curl, python3, ss. Bounded by
# TIME_LIMIT (120 s); stops every process it started on exit (KEEP_TMP=1 keeps the temp dir).

source "$(dirname "$0")/cluster/common.sh"
bound_script "${TIME_LIMIT:-120}" "$@"
own_netns "$@"
need_tools nginx wrk curl python3 ss

DURATION=${DURATION:-20}
CONNS=${CONNS:-64}
TERM_AT=${TERM_AT:-5}
GRACE=${GRACE:-3}
SHUTDOWN_TIMEOUT=${SHUTDOWN_TIMEOUT:-10}
[ "$DURATION" -ge $((TERM_AT + GRACE + 2)) ] || { echo "need DURATION >= TERM_AT + GRACE + 2" >&2; exit 2; }

make_tmp sigterm
NETNS_NOTE="own network namespace (loopback only)"
in_own_netns || NETNS_NOTE="the machine's network namespace (TCP counters include other processes)"

ORIGIN_PORT=$(free_port)
start_origin "$ORIGIN_PORT"

PORT=$(free_port)
ADMIN=$(free_port)
CONF=$TMP/tollgate.toml
cat >"$CONF" <<EOF
# written by bench/sigterm.sh
[server]
listen = ["127.0.0.1:$PORT"]
admin_listen = "127.0.0.1:$ADMIN"
threads = 1
log_level = "info"
shutdown_grace_period_seconds = $GRACE
shutdown_timeout_seconds = $SHUTDOWN_TIMEOUT
pid_file = "$TMP/tollgate.pid"
upgrade_sock = "$TMP/tollgate-upgrade.sock"

[server.access_log]
enabled = true
path = "$TMP/access.log"

[[upstreams]]
name = "origin"
backends = ["127.0.0.1:$ORIGIN_PORT"]

[[routes]]
name = "proxy"
paths = ["/proxy"]
strip_prefix = true
upstream = "origin"
EOF
start_tollgate "$CONF" "$ADMIN"
body=$(curl -s --max-time 2 "http://127.0.0.1:$PORT/proxy/hello")
[ "$body" = hello ] || { echo "unexpected answer on /proxy/hello: $body" >&2; exit 1; }
log "tollgate (pid $GW) on 127.0.0.1:$PORT, admin :$ADMIN, origin :$ORIGIN_PORT; $NETNS_NOTE"

# ---- load -----------------------------------------------------------------------------------
read -r AF0 ER0 <<<"$(tcp_counters)"
T0=$(date +%s.%N)
since() { python3 -c "import time; print(f'{time.time() - $1:.2f}')"; }
log "wrk -t1 -c$CONNS -d${DURATION}s on /proxy/hello; SIGTERM at ${TERM_AT} s"
start wrk env WRK_PATHS=/proxy/hello WRK_REQUEST_IDS=1 \
  timeout $((DURATION + 30)) wrk -t1 -c"$CONNS" -d"${DURATION}s" --timeout 5s \
  -s "$CLUSTER_DIR/status.lua" "http://127.0.0.1:$PORT/"
WRK_PID=$STARTED_PID

sleep "$(python3 -c "import time; print(max(0.0, $T0 + $TERM_AT - time.time()))")"
rss_before=$(rss_kib "$GW")
read -r AF1 ER1 <<<"$(tcp_counters)"
kill -TERM "$GW"
T_TERM=$(date +%s.%N)
log "$(since "$T0") s: SIGTERM sent to $GW"

# Until the gateway exits: every 50 ms whether the port still listens and the kernel's TCP
# counters, every 250 ms /readyz and /healthz (bench/cluster/shutdown_sampler.py).
python3 "$ROOT/bench/cluster/shutdown_sampler.py" "$GW" "$PORT" "$ADMIN" "$T_TERM" \
  $((GRACE + SHUTDOWN_TIMEOUT + 10)) >"$TMP/samples" 2>"$TMP/sampler.err" || true
eval "$(sed -n 's/^# result: //p' "$TMP/samples")" # LISTENER_CLOSED_S EXIT_S AF2 ER2 AF_EXIT ER_EXIT
listener_closed_s=$LISTENER_CLOSED_S
exit_s=$EXIT_S
if [ -n "$exit_s" ]; then
  wait "$GW" 2>/dev/null && gw_rc=0 || gw_rc=$?
  forget "$GW"
  log "$(since "$T0") s: tollgate exited with status $gw_rc, ${exit_s} s after SIGTERM"
else
  gw_rc="(still running)"
  log "tollgate still running $((GRACE + SHUTDOWN_TIMEOUT + 10)) s after SIGTERM"
fi

wait "$WRK_PID" || true
forget "$WRK_PID"
read -r AF3 ER3 <<<"$(tcp_counters)"
eval "$(wrk_summary "$TMP/wrk.log")"
sleep 0.2

# ---- figures --------------------------------------------------------------------------------
# Probes (columns 5, 6 of the samples) during the grace period (before the listener closed)
# and after it.
grace_end=${listener_closed_s:-$GRACE}
probes() { # probes FROM TO: "readyz-codes healthz-codes count" of the samples in [FROM, TO)
  awk -v from="$1" -v to="$2" '!/^#/ && $5 != "-" && $1 >= from && $1 < to {r[$5]++; h[$6]++; n++}
    END { rs = ""; for (k in r) rs = rs (rs == "" ? "" : ",") k "x" r[k];
          hs = ""; for (k in h) hs = hs (hs == "" ? "" : ",") k "x" h[k];
          print (rs == "" ? "-" : rs), (hs == "" ? "-" : hs), n + 0 }' "$TMP/samples"
}
read -r ready_grace health_grace n_grace <<<"$(probes 0 "$grace_end")"
read -r ready_after health_after n_after <<<"$(probes "$grace_end" 9999)"
logged=$(wc -l <"$TMP/access.log" 2>/dev/null || echo 0)
logged_200=$(grep -c '"status":200,' "$TMP/access.log" 2>/dev/null || true)
# the curl check before the load is in the access log too
lost=$((logged_200 - WRK_STATUS_200 - 1))
refused=$((AF3 - AF0))
resets=$((ER3 - ER0))
rw=$((WRK_READ + WRK_WRITE))
unexplained=$((rw - refused))
[ "$unexplained" -lt 0 ] && unexplained=0

echo "wrk output:"
sed 's/^/  /' "$TMP/wrk.log"
echo "tollgate log:"
grep -v 'Downstream ConnectionClosed' "$TMP/tollgate.log" | head -30 | sed 's/^/  /' || true
printf '  (and %d "Downstream ConnectionClosed" lines)\n' "$(grep -c 'Downstream ConnectionClosed' "$TMP/tollgate.log" || true)"
echo "samples after SIGTERM (s since SIGTERM, listening sockets, AttemptFails, EstabResets, /readyz, /healthz (0 = refused), accept queue): every 10th, then all from 0.3 s before the listener closed:"
grep -v '^#' "$TMP/samples" | awk -v lc="${listener_closed_s:-9999}" '$1 >= lc - 0.3 || NR % 10 == 1' | sed 's/^/  /'
echo
echo "figures:"
printf '  wrk: %d requests (%s req/s), statuses: %s, non-2xx %d\n' "$WRK_REQUESTS" "$WRK_RPS" "$WRK_STATUSES" "$WRK_NON2XX"
printf '  wrk socket errors: connect %d, read %d, write %d, timeout %d\n' "$WRK_CONNECT" "$WRK_READ" "$WRK_WRITE" "$WRK_TIMEOUT"
printf '  kernel TCP counters, %s:\n' "$NETNS_NOTE"
printf '    refused connection attempts (AttemptFails): %d in all; load start to SIGTERM %d, SIGTERM to listener closed %d, listener closed to exit %d, after exit %d\n' \
  "$refused" $((AF1 - AF0)) $((AF2 - AF1)) $((AF_EXIT - AF2)) $((AF3 - AF_EXIT))
printf '    established connections reset (EstabResets; inside the namespace a reset connection can count at one or both ends): %d in all; load start to SIGTERM %d, SIGTERM to listener closed %d, listener closed to exit %d, after exit %d\n' \
  "$resets" $((ER1 - ER0)) $((ER2 - ER1)) $((ER_EXIT - ER2)) $((ER3 - ER_EXIT))
printf '  wrk read + write errors not explained by refused attempts: %d (read %d + write %d - refused %d)\n' "$unexplained" "$WRK_READ" "$WRK_WRITE" "$refused"
printf '  gateway access log: %d requests, %d answered 200; wrk got %d + 1 curl check: %d answered but not received\n' \
  "$logged" "$logged_200" "$WRK_STATUS_200" "$lost"
printf '  SIGTERM at %s s of the load; listener closed %s s after it (first 50 ms sample without it); exit status %s, %s s after SIGTERM (grace %d s, shutdown timeout %d s)\n' \
  "$TERM_AT" "${listener_closed_s:-?}" "$gw_rc" "${exit_s:-?}" "$GRACE" "$SHUTDOWN_TIMEOUT"
printf '  probes during the grace period (%d): /readyz %s, /healthz %s; after the listener closed (%d): /readyz %s, /healthz %s\n' \
  "$n_grace" "$ready_grace" "$health_grace" "$n_after" "$ready_after" "$health_after"
printf '  accept queue of the listening socket (ss Recv-Q) in the samples of the grace period: max %s, mean %s\n' \
  $(awk -v lc="${listener_closed_s:-9999}" '!/^#/ && $1 < lc {if ($7 > m) m = $7; s += $7; n++} END {printf "%d %.1f", m, n ? s / n : 0}' "$TMP/samples")
printf '  gateway RSS at SIGTERM: %s MiB\n' "$(mib "$rss_before")"
echo

if [ "$WRK_REQUESTS" -gt 0 ] && [ "$WRK_NON2XX" -eq 0 ]; then
  result "non-2xx" PASS "0 of $WRK_REQUESTS"
else
  result "non-2xx" FAIL "$WRK_NON2XX non-2xx ($WRK_STATUSES) of $WRK_REQUESTS"
fi
if [ "$WRK_TIMEOUT" -eq 0 ] && [ "$WRK_READ" -eq 0 ] && [ "$unexplained" -eq 0 ] && [ "$lost" -le 0 ] &&
  { ! in_own_netns || [ "$resets" -eq 0 ]; }; then
  result "no-loss" PASS "0 timeouts, 0 read errors; the $WRK_WRITE write errors are refused attempts ($refused refused); 0 connection resets; 0 answered but not received"
else
  result "no-loss" FAIL "timeouts $WRK_TIMEOUT; read errors $WRK_READ; read + write errors $rw vs $refused refused attempts ($unexplained unexplained); $resets connection resets (EstabResets); $lost answered but not received"
fi
if [ "$gw_rc" = 0 ]; then
  result "exit" PASS "status 0, ${exit_s} s after SIGTERM (listener closed after ${listener_closed_s:-?} s)"
else
  result "exit" FAIL "status $gw_rc, ${exit_s:-not exited} s after SIGTERM"
fi
if [ "$n_grace" -gt 0 ] && [ "$ready_grace" = "503x$n_grace" ] && [ "$health_grace" = "200x$n_grace" ]; then
  result "probes" PASS "/readyz 503 and /healthz 200 in all $n_grace samples of the grace period"
else
  result "probes" FAIL "grace period samples: /readyz $ready_grace, /healthz $health_grace"
fi
exit "$FAILED"

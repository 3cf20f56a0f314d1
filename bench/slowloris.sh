#!/usr/bin/env bash
# Slowloris on 127.0.0.1: do slow request heads stay bounded, and does a legitimate client
# still get through?
#
# One tollgate (release build) with the defaults except header_timeout_ms = HEADER_TIMEOUT_MS
# (2000) and max_connections_per_ip = PER_IP (1000) (plus, for isolation, its listen and admin
# addresses, pid file and upgrade socket in a temp dir; the access log goes to its log file),
# and a mock route /hello. bench/slowloris.py opens N (2000) connections from 127.0.0.1 at
# once, each sending its request head one byte a second, never finishing it; while they are
# held, a legitimate client makes LEGIT (20) requests with curl. The legit client connects
# from 127.0.0.2 (curl --interface; the destination is still 127.0.0.1): from 127.0.0.1 it would
# share the attacker's address, whose max_connections_per_ip the slow connections use up, and
# get 503 by design (PROBE_SAME_IP=1, the default, shows that with 3 requests, not counted).
#
# What docs/config.md promises: past max_connections_per_ip new connections get 503
# too_many_connections (Connection: close); a head not complete within header_timeout_ms of
# the accept gets 408 request_timeout and the connection closes, so a slow client holds a
# connection for at most that long.
#
# Reports: slow connections held at peak (client side, and `ss -Htn state established
# '( sport = :PORT )'`, and the gateway's tollgate_downstream_connections), how many got 408,
# 503, were closed without an answer or stayed open; when they were answered and closed;
# the gateway's RSS before / peak / after; the legit requests' statuses and latencies; the
# gateway's refusal counters.
#
# PASS: every legit request got 200 while slow connections were held, and every slow
# connection was closed by the gateway within header_timeout + 2 s of being opened (none
# open at the end, ss shows none).
#
#   bench/slowloris.sh
#   N=2000 LEGIT=20 HEADER_TIMEOUT_MS=2000 PER_IP=1000 bench/slowloris.sh
#
# Needs target/release/tollgate (or TOLLGATE_BIN), curl, python3, ss. Raises the open-files
# limit to 8192 when it is lower (if allowed). Bounded by TIME_LIMIT (120 s); stops every
# process it started on exit (KEEP_TMP=1 keeps the temp dir).

source "$(dirname "$0")/cluster/common.sh"
bound_script "${TIME_LIMIT:-120}" "$@"
need_tools curl python3 ss

N=${N:-2000}
LEGIT=${LEGIT:-20}
HEADER_TIMEOUT_MS=${HEADER_TIMEOUT_MS:-2000}
PER_IP=${PER_IP:-1000}
LEGIT_SOURCE=${LEGIT_SOURCE:-127.0.0.2}
PROBE_SAME_IP=${PROBE_SAME_IP:-1}
WAVES=${WAVES:-1}
IDLE=${IDLE:-10}
LEGIT_DURING_ALL=1
CLOSED_IN_TIME_ALL=1

nofile_was=$(ulimit -n)
if [ "$nofile_was" != unlimited ] && [ "$nofile_was" -lt 8192 ]; then
  ulimit -n 8192 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fi
nofile=$(ulimit -n)
[ "$nofile" = unlimited ] || [ "$nofile" -gt $((N + 200)) ] ||
  { echo "open-files limit $nofile is too low for N=$N (raise it or lower N)" >&2; exit 2; }

make_tmp slowloris

PORT=$(free_port)
ADMIN=$(free_port)
CONF=$TMP/tollgate.toml
cat >"$CONF" <<EOF
# written by bench/slowloris.sh: defaults except the two limits under test
[server]
listen = ["127.0.0.1:$PORT"]
admin_listen = "127.0.0.1:$ADMIN"
pid_file = "$TMP/tollgate.pid"
upgrade_sock = "$TMP/tollgate-upgrade.sock"
header_timeout_ms = $HEADER_TIMEOUT_MS
max_connections_per_ip = $PER_IP

[[routes]]
name = "hello"
paths = ["=/hello"]
plugins = [{ name = "mock", body = "hello" }]
EOF
start_tollgate "$CONF" "$ADMIN"
code=$(curl -s -o /dev/null -w '%{http_code}' --interface "$LEGIT_SOURCE" --max-time 2 "http://127.0.0.1:$PORT/hello" || true)
[ "$code" = 200 ] || { echo "the legit client (from $LEGIT_SOURCE) does not get 200 before the test: $code" >&2; exit 1; }
log "tollgate (pid $GW, $(awk '/^Threads:/ {print $2}' "/proc/$GW/status") threads) on 127.0.0.1:$PORT, admin :$ADMIN; header_timeout_ms $HEADER_TIMEOUT_MS, max_connections_per_ip $PER_IP; open files: $nofile (was $nofile_was)"

refused_ip0=$(metric "$ADMIN" tollgate_connections_refused_total 'reason="client_address"')
timeouts0=$(metric "$ADMIN" tollgate_request_heads_refused_total 'reason="header_timeout"')

# the same-address probe runs in the background once the slow connections are up
if [ "$PROBE_SAME_IP" = 1 ]; then
  (
    sleep 0.7
    for _ in 1 2 3; do
      curl -s -o /dev/null -w '%{http_code} %{time_total}\n' --max-time 2 "http://127.0.0.1:$PORT/hello" || echo "000 -"
    done
  ) >"$TMP/same-ip.txt" 2>&1 &
  PROBE_PID=$!
  PIDS+=("$PROBE_PID")
  NAMES+=(same-ip-probe)
fi

rss_start=$(rss_kib "$GW")
for wave in $(seq "$WAVES"); do
  [ "$WAVES" -gt 1 ] && echo "=== wave $wave of $WAVES"
  log "slowloris: $N connections from 127.0.0.1, one head byte a second; $LEGIT legit requests from $LEGIT_SOURCE"
  timeout $((HEADER_TIMEOUT_MS / 1000 + 40)) nice python3 "$ROOT/bench/slowloris.py" "$PORT" "$ADMIN" "$GW" "$N" "$LEGIT" \
    "$LEGIT_SOURCE" "$HEADER_TIMEOUT_MS" >"$TMP/slowloris-$wave.json" 2>"$TMP/slowloris-$wave.err" || {
    echo "slowloris.py failed:" >&2
    cat "$TMP/slowloris-$wave.err" >&2
    exit 1
  }
  sed 's/^/  /' "$TMP/slowloris-$wave.err" >&2
  python3 "$ROOT/bench/cluster/slowloris_report.py" "$TMP/slowloris-$wave.json" "$HEADER_TIMEOUT_MS" "$N" "$LEGIT" >"$TMP/checks-$wave"
  sed '/^CHECKS /d' "$TMP/checks-$wave"
  eval "$(sed -n 's/^CHECKS //p' "$TMP/checks-$wave")"
  LEGIT_OK_ALL=$((${LEGIT_OK_ALL:-0} + LEGIT_OK))
  [ "$LEGIT_DURING" = 1 ] || LEGIT_DURING_ALL=0
  [ "$CLOSED_IN_TIME" = 1 ] || CLOSED_IN_TIME_ALL=0
  awk -v m="$MAX_CLOSED_AFTER" -v cur="${MAX_CLOSED_ALL:-0}" 'BEGIN {exit !(m > cur)}' && MAX_CLOSED_ALL=$MAX_CLOSED_AFTER
  N408_ALL=$((${N408_ALL:-0} + N408)) N503_ALL=$((${N503_ALL:-0} + N503)) NCLOSED_ALL=$((${NCLOSED_ALL:-0} + NCLOSED))
done
sleep "$IDLE"
rss_idle=$(rss_kib "$GW")
refused_ip=$(($(metric "$ADMIN" tollgate_connections_refused_total 'reason="client_address"') - refused_ip0))
timeouts=$(($(metric "$ADMIN" tollgate_request_heads_refused_total 'reason="header_timeout"') - timeouts0))
open_after=$(metric "$ADMIN" tollgate_downstream_connections)
gw_alive=0
alive "$GW" && gw_alive=1
[ "$WAVES" -gt 1 ] && echo "=== all waves"
printf 'gateway RSS: at start %s MiB, %d s after the last wave %s MiB\n' "$(mib "$rss_start")" "$IDLE" "$(mib "$rss_idle")"
if [ "$PROBE_SAME_IP" = 1 ]; then
  wait "$PROBE_PID" 2>/dev/null || true
  forget "$PROBE_PID"
  printf 'same-address probe (curl from 127.0.0.1 while the slow connections are held; status, seconds): %s\n' "$(tr '\n' ';' <"$TMP/same-ip.txt")"
fi
printf 'gateway counters during the run: connections refused (client_address) %d, request heads refused (header_timeout) %d; open connections after: %s; gateway alive: %d\n' \
  "$refused_ip" "$timeouts" "$open_after" "$gw_alive"
echo "tollgate log (first lines that are not access log):"
grep -v '^{' "$TMP/tollgate.log" | grep -vE 'Bootstrap|Starting service|Server starting|service .* exited|serving /tmp' | head -10 | sed 's/^/  /' || true
echo

if [ "$LEGIT_OK_ALL" -eq $((LEGIT * WAVES)) ] && [ "$LEGIT_DURING_ALL" = 1 ]; then
  result "legit" PASS "$LEGIT_OK_ALL of $((LEGIT * WAVES)) requests got 200 while slow connections were held"
else
  result "legit" FAIL "$LEGIT_OK_ALL of $((LEGIT * WAVES)) requests got 200 (all made while held: $LEGIT_DURING_ALL)"
fi
if [ "$CLOSED_IN_TIME_ALL" = 1 ] && [ "$gw_alive" = 1 ]; then
  result "timeout" PASS "every slow connection closed at most $MAX_CLOSED_ALL s after it was opened (<= $((HEADER_TIMEOUT_MS / 1000 + 2)) s): $N408_ALL x 408, $N503_ALL x 503, $NCLOSED_ALL closed without an answer"
else
  result "timeout" FAIL "slowest close $MAX_CLOSED_ALL s after opening; closed in time in every wave: $CLOSED_IN_TIME_ALL (see the wave figures for connections not closed and ss after); gateway alive: $gw_alive"
fi
exit "$FAILED"

#!/usr/bin/env bash
# Reload and zero-downtime upgrade under load, on 127.0.0.1.
#
# One tollgate (release build, threads = 1, pid file and upgrade socket in a temp dir) with a
# mock route (/hello) and a route proxied to an nginx upstream (/proxy/hello), under
# wrk -t1 -c32 -d20s (requests alternate between the two routes). During the load:
#
#   t = 4 s   the config file is rewritten (a route /added is added) and SIGHUP is sent;
#   t = 8 s   `tollgate run -c SAME_FILE --upgrade` is started and, once it waits on the
#             upgrade socket, the old process gets SIGQUIT: it hands the listening sockets
#             over, keeps accepting for Pingora's 5 s, then drains and exits.
#
# Checks (PASS/FAIL each, exit 1 if any fails): `load`: wrk saw no socket error and no non-2xx
# answer (counted by status with bench/cluster/status.lua) and no response of the old process
# was lost (below); `reload`: the old process served /added within 3 s of SIGHUP; `upgrade`:
# the old process exited and the new one serves /added and /proxy/hello.
#
#   bench/upgrade.sh
#   DURATION=20 CONNS=32 GRACE=0 bench/upgrade.sh
#
# GRACE sets [server] shutdown_grace_period_seconds (default 0, the documented default);
# SHUTDOWN_TIMEOUT sets shutdown_timeout_seconds (default 10). VIA_LB=1 sends wrk through nginx
# (1 worker, keep-alive, proxy_next_upstream error timeout) in front of the one tollgate, as
# in deploy/nginx-lb.conf, to see what clients behind a load balancer get.
#
# To tell which process answered, every response carries `x-tollgate-gen: old` or `new` (a
# global `headers` plugin whose value is ${TOLLGATE_GEN} from each process's environment), and
# each process writes its JSON access log to its own file (path ${TOLLGATE_ACCESS_LOG}). At the
# end the 200s each process logged are compared with the 200s the clients (wrk, curl) got from
# it: for the old process, which exited long before wrk stopped, any difference is responses
# it wrote that never reached the client. wrk also sends a unique X-Request-Id on every
# request (tollgate logs it), so a request answered by both processes (re-sent by a load
# balancer after the old one had answered it) would show up.
#
# Needs target/release/tollgate (or TOLLGATE_BIN), nginx, wrk, curl, python3. All traffic stays
# on 127.0.0.1; the run is bounded by TIME_LIMIT (170 s) and every process it starts is stopped
# on exit (KEEP_TMP=1 keeps the temp dir with the logs).

source "$(dirname "$0")/cluster/common.sh"
bound_script "${TIME_LIMIT:-170}" "$@"
need_tools nginx wrk curl python3 ss

DURATION=${DURATION:-20}
CONNS=${CONNS:-32}
RELOAD_AT=${RELOAD_AT:-4}
UPGRADE_AT=${UPGRADE_AT:-8}
GRACE=${GRACE:-0}
SHUTDOWN_TIMEOUT=${SHUTDOWN_TIMEOUT:-10}
VIA_LB=${VIA_LB:-0}
[ "$UPGRADE_AT" -gt "$RELOAD_AT" ] && [ "$DURATION" -ge $((UPGRADE_AT + 10)) ] ||
  { echo "need RELOAD_AT < UPGRADE_AT and DURATION >= UPGRADE_AT + 10" >&2; exit 2; }

make_tmp upgrade
RESULT_WIDTH=16

ORIGIN_PORT=$(free_port)
start_origin "$ORIGIN_PORT"

PORT=$(free_port)
ADMIN=$(free_port)
CONF=$TMP/tollgate.toml
PID_FILE=$TMP/tollgate.pid
SOCK=$TMP/tollgate-upgrade.sock
write_config() { # write_config WITH_ADDED_ROUTE (0/1) FILE
  cat >"$2" <<EOF
# written by bench/upgrade.sh
[server]
listen = ["127.0.0.1:$PORT"]
admin_listen = "127.0.0.1:$ADMIN"
threads = 1
log_level = "info"
shutdown_grace_period_seconds = $GRACE
shutdown_timeout_seconds = $SHUTDOWN_TIMEOUT
pid_file = "$PID_FILE"
upgrade_sock = "$SOCK"

[server.access_log]
enabled = true
path = "\${TOLLGATE_ACCESS_LOG}"

[plugins.headers]
response.set = { x-tollgate-gen = "\${TOLLGATE_GEN}" }

[[upstreams]]
name = "origin"
backends = ["127.0.0.1:$ORIGIN_PORT"]

[[routes]]
name = "hello"
paths = ["=/hello"]
plugins = [{ name = "mock", body = "hello" }]

[[routes]]
name = "proxy"
paths = ["/proxy"]
strip_prefix = true
upstream = "origin"
EOF
  if [ "$1" = 1 ]; then
    cat >>"$2" <<EOF

# added while running (reload)
[[routes]]
name = "added"
paths = ["=/added"]
plugins = [{ name = "mock", body = "added by reload" }]
EOF
  fi
}

# gw PATH: GET PATH from the gateway (outside wrk) and print the body; the status and the
# answering process (x-tollgate-gen) go to $TMP/curl-statuses for the reconciliation.
gw() {
  local out
  out=$(curl -s --max-time 2 -w '\n%{http_code} %header{x-tollgate-gen}' "http://127.0.0.1:$PORT$1" || true)
  echo "${out##*$'\n'}" >>"$TMP/curl-statuses"
  printf '%s' "${out%$'\n'*}"
}
# run_tollgate NAME GEN [ARGS...]: start tollgate on $CONF with its generation and access log.
run_tollgate() {
  local name=$1 gen=$2
  shift 2
  start "$name" env TOLLGATE_GEN="$gen" TOLLGATE_ACCESS_LOG="$TMP/access-$gen.log" \
    "$TOLLGATE" run -c "$CONF" "$@"
}

write_config 0 "$CONF"
TOLLGATE_GEN=check TOLLGATE_ACCESS_LOG=/dev/null "$TOLLGATE" check -c "$CONF" >/dev/null
run_tollgate tollgate-old old
OLD=$STARTED_PID
wait_http "http://127.0.0.1:$ADMIN/readyz" 15
for p in /hello /proxy/hello; do
  body=$(gw "$p")
  [ "$body" = hello ] || { echo "unexpected answer on $p: $body" >&2; exit 1; }
done
gw /added >/dev/null
log "tollgate (pid $OLD) on 127.0.0.1:$PORT, admin :$ADMIN, origin :$ORIGIN_PORT; /added answers $(tail -1 "$TMP/curl-statuses" | cut -d' ' -f1) before the reload"

TARGET_PORT=$PORT
if [ "$VIA_LB" = 1 ]; then
  LB_PORT=$(free_port)
  NGINX_LOG_LEVEL=info nginx_conf lb "
    upstream tollgate {
        server 127.0.0.1:$PORT;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$LB_PORT backlog=4096;
        location / {
            proxy_pass http://tollgate;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_next_upstream error timeout;
        }
    }"
  start_nginx lb
  wait_http "http://127.0.0.1:$LB_PORT/lb-ready" 10 404 # (a 404 is not counted as a 200)
  TARGET_PORT=$LB_PORT
  log "wrk goes through nginx on 127.0.0.1:$LB_PORT"
fi

# ---- load -----------------------------------------------------------------------------------
T0=$(date +%s.%N)
at() { # at SECONDS: sleep until SECONDS after the load started
  sleep "$(python3 -c "import time; print(max(0.0, $T0 + $1 - time.time()))")"
}
elapsed() { python3 -c "import time; print(f'{time.time() - $T0:5.1f}s')"; }
log "wrk -t1 -c$CONNS -d${DURATION}s on /hello and /proxy/hello (alternating)$([ "$VIA_LB" = 1 ] && echo ", through nginx")"
start wrk env WRK_PATHS=/hello,/proxy/hello WRK_REQUEST_IDS=1 WRK_COUNT_HEADER=x-tollgate-gen WRK_HEADER_VALUES=old,new \
  timeout $((DURATION + 30)) wrk -t1 -c"$CONNS" -d"${DURATION}s" --timeout 5s \
  -s "$CLUSTER_DIR/status.lua" "http://127.0.0.1:$TARGET_PORT/"
WRK_PID=$STARTED_PID

# (a) reload: write the new file next to the old one and rename it over, then SIGHUP.
# (tollgate also reloads by itself when the file changes; either is fine.)
at "$RELOAD_AT"
write_config 1 "$CONF.new"
TOLLGATE_GEN=check TOLLGATE_ACCESS_LOG=/dev/null "$TOLLGATE" check -c "$CONF.new" >/dev/null
mv "$CONF.new" "$CONF"
kill -HUP "$OLD"
log "$(elapsed) config rewritten (route /added), SIGHUP sent to $OLD"
reload_ok=0
for _ in $(seq 30); do
  if [ "$(gw /added)" = "added by reload" ]; then
    reload_ok=1
    break
  fi
  sleep 0.1
done
reloads_old=$(metric "$ADMIN" tollgate_config_reloads_total 'result="success"')
reload_failures=$(metric "$ADMIN" tollgate_config_reloads_total 'result="failure"')
log "$(elapsed) /added served by the old process: $([ $reload_ok = 1 ] && echo yes || echo NO); its reloads: $reloads_old success, $reload_failures failure"

# (b) upgrade: the new process binds the upgrade socket and waits (Pingora: about 6 s) for the
# old one to send the listening sockets, which it does on SIGQUIT.
at "$UPGRADE_AT"
rm -f "$SOCK"
run_tollgate tollgate-new new --upgrade
NEW=$STARTED_PID
for _ in $(seq 50); do
  [ -S "$SOCK" ] && break
  sleep 0.1
done
[ -S "$SOCK" ] || log "WARNING: $SOCK did not appear within 5 s; sending SIGQUIT anyway"
kill -QUIT "$OLD"
T_QUIT=$(date +%s.%N)
log "$(elapsed) new process $NEW waits on $SOCK; SIGQUIT sent to the old process $OLD"
sleep 1.5
listeners=$(ss -Hltnp "( sport = :$PORT )" | grep -o 'pid=[0-9]*' | sort -u | tr '\n' ' ')
log "$(elapsed) listening socket :$PORT held by: $listeners"

# The old process has Pingora's 5 s + GRACE + SHUTDOWN_TIMEOUT; wait that plus 10 s at most.
old_exit_s=""
limit=$((5 + GRACE + SHUTDOWN_TIMEOUT + 10))
while alive "$OLD" && python3 -c "import sys, time; sys.exit(time.time() - $T_QUIT > $limit)"; do
  sleep 0.1
done
if alive "$OLD"; then
  log "$(elapsed) the old process $OLD is still running ${limit} s after SIGQUIT"
else
  wait "$OLD" 2>/dev/null && old_rc=0 || old_rc=$?
  forget "$OLD"
  old_exit_s=$(python3 -c "import time; print(f'{time.time() - $T_QUIT:.1f}')")
  log "$(elapsed) the old process exited (status $old_rc) ${old_exit_s} s after SIGQUIT"
fi

wait "$WRK_PID" || true
forget "$WRK_PID"
eval "$(wrk_summary "$TMP/wrk.log")"

# ---- after ----------------------------------------------------------------------------------
new_alive=0
alive "$NEW" && new_alive=1
added=$(gw /added)
added_by=$(tail -1 "$TMP/curl-statuses" | cut -d' ' -f2)
hello=$(gw /proxy/hello)
reloads_new=$(metric "$ADMIN" tollgate_config_reloads_total 'result="success"')
pid_in_file=$(cat "$PID_FILE" 2>/dev/null || echo "(no pid file)")
sleep 0.5 # the access log writer flushes in the background

echo "wrk output:"
sed 's/^/  /' "$TMP/wrk.log"
echo "old process $OLD log (upgrade and shutdown):"
grep -E 'SIGQUIT|socks|sockets|Graceful|grace period|exited after|did not exit|reload|ERROR|WARN' "$TMP/tollgate-old.log" | sed 's/^/  /' | head -20 || true
echo "new process $NEW log:"
grep -E 'sock|Bootstrap|serving|ready|ERROR|WARN' "$TMP/tollgate-new.log" | grep -v 'Downstream ConnectionClosed' | sed 's/^/  /' | head -20 || true
printf '  (and %d "Downstream ConnectionClosed" errors: requests in flight when wrk stopped and closed its connections)\n' \
  "$(grep -c 'Downstream ConnectionClosed' "$TMP/tollgate-new.log" || true)"
if [ "$VIA_LB" = 1 ]; then
  printf 'load balancer: %d failed attempts on tollgate logged (error log at info level; retried, or answered 502 if no try was left):\n' \
    "$(grep -c 'upstream:' "$TMP/lb-error.log" || true)"
  grep 'upstream:' "$TMP/lb-error.log" | sed -E 's/^.*\[([a-z]+)\] [0-9#]+: \*[0-9]+ /[\1] /; s/, client:.*//' | sort | uniq -c | sort -rn | head -5 | sed 's/^/  /' || true
fi
printf 'totals: %d requests (%s req/s); statuses: %s; non-2xx %d; socket errors %d (connect %d, read %d, write %d, timeout %d)\n' \
  "$WRK_REQUESTS" "$WRK_RPS" "$WRK_STATUSES" "$WRK_NON2XX" "$WRK_SOCKET_ERRORS" "$WRK_CONNECT" "$WRK_READ" "$WRK_WRITE" "$WRK_TIMEOUT"
# Reconciliation per process: 200s logged vs 200s received (wrk by x-tollgate-gen, curl).
lost_old=0
for gen in old new; do
  logged=$(grep -c '"status":200,' "$TMP/access-$gen.log" 2>/dev/null || true)
  lines=$(wc -l <"$TMP/access-$gen.log" 2>/dev/null || echo 0)
  by_wrk=$(sed -n "s/^x-tollgate-gen $gen: //p" "$TMP/wrk.log")
  by_curl=$(grep -c "^200 $gen\$" "$TMP/curl-statuses" || true)
  missing=$((logged - ${by_wrk:-0} - by_curl))
  if [ "$gen" = old ]; then
    lost_old=$missing
    printf '  old process: logged %d requests, %d answered 200; clients got %d (wrk %d + curl %d): %d answered but never received\n' \
      "$lines" "$logged" $((${by_wrk:-0} + by_curl)) "${by_wrk:-0}" "$by_curl" "$missing"
  else
    printf '  new process: logged %d requests, %d answered 200; clients got %d (wrk %d + curl %d): %d in flight when wrk stopped (at most %d)\n' \
      "$lines" "$logged" $((${by_wrk:-0} + by_curl)) "${by_wrk:-0}" "$by_curl" "$missing" "$CONNS"
  fi
done
# A request id in both logs: answered by the old process, then sent again (by the load
# balancer) to the new one.
both=$(python3 -c '
import json, sys
ids = [set(json.loads(l)["request_id"] for l in open(f)) for f in sys.argv[1:]]
print(" ".join(sorted(ids[0] & ids[1])))' "$TMP/access-old.log" "$TMP/access-new.log" 2>/dev/null || true)
printf '  request ids answered by both processes: %d %s\n' "$(wc -w <<<"$both")" "$both"
printf 'after: new process alive: %s; /added -> "%s" (answered by: %s); /proxy/hello -> "%s"; new process: %s config reloads (the old one had %s)\n' \
  "$new_alive" "$added" "$added_by" "$hello" "$reloads_new" "$reloads_old"
printf 'pid_file %s: %s (old pid %s, new pid %s)\n' "$PID_FILE" "$pid_in_file" "$OLD" "$NEW"

if [ "$WRK_REQUESTS" -gt 0 ] && [ "$WRK_NON2XX" -eq 0 ] && [ "$WRK_SOCKET_ERRORS" -eq 0 ] && [ "$lost_old" -eq 0 ]; then
  result "load" PASS "$WRK_REQUESTS requests, 0 non-2xx, 0 socket errors"
else
  result "load" FAIL "$WRK_REQUESTS requests, $WRK_NON2XX non-2xx ($WRK_STATUSES), $WRK_SOCKET_ERRORS socket errors (connect $WRK_CONNECT, read $WRK_READ, write $WRK_WRITE, timeout $WRK_TIMEOUT); $lost_old responses of the old process lost"
fi
if [ "$reload_ok" = 1 ]; then
  result "reload" PASS "the old process served /added after SIGHUP"
else
  result "reload" FAIL "/added was not served within 3 s of SIGHUP"
fi
if [ -n "$old_exit_s" ] && [ "$new_alive" = 1 ] && [ "$added" = "added by reload" ] && [ "$added_by" = new ] && [ "$hello" = hello ]; then
  result "upgrade" PASS "the old process exited ${old_exit_s} s after SIGQUIT; the new one serves /added and /proxy/hello"
else
  result "upgrade" FAIL "old exited: ${old_exit_s:-no}; new alive: $new_alive; /added -> \"$added\" (from $added_by); /proxy/hello -> \"$hello\""
fi

exit "$FAILED"

#!/usr/bin/env bash
# The cluster of deploy/docker-compose.yml on 127.0.0.1, without Docker: one redis-server (no
# persistence), INSTANCES tollgate instances (release build, threads = 1, each with its own
# port, admin port, pid file, upgrade socket and config in a temp dir) sharing a Redis
# rate limit, an nginx upstream ("origin") they proxy to, and nginx (1 worker) as the load
# balancer in front (round robin, keep-alive, proxy_next_upstream error timeout).
#
# Two checks, each printing PASS or FAIL (the script exits 1 if any fails):
#
#   1. global limit: exactly M requests with one consumer's key through the load balancer on
#      a route limited to N per minute (limit_by = "consumer", policy = "redis"): exactly N
#      must get 200 and M - N 429, summed over all instances (per-instance decisions from
#      each /metrics tollgate_ratelimit_decisions_total).
#   2. failover: wrk -t1 -c32 -d15s through the load balancer on a route without limits,
#      kill -9 one instance half-way; the errors wrk sees (non-2xx + socket errors) must be
#      no more than the requests that instance can have held (the load balancer's
#      connections to it at the moment of the kill; the load balancer should retry
#      connection errors on another instance, so normally 0).
#
#   bench/cluster.sh
#   INSTANCES=2 LIMIT=300 REQUESTS=900 FAILOVER_DURATION=15 bench/cluster.sh
#
# Needs target/release/tollgate (or TOLLGATE_BIN), nginx, redis-server, redis-cli, wrk, curl,
# python3. All traffic stays on 127.0.0.1; the whole run is bounded by TIME_LIMIT (170 s) and
# every process it starts is stopped on exit (KEEP_TMP=1 keeps the temp dir).

source "$(dirname "$0")/cluster/common.sh"
bound_script "${TIME_LIMIT:-170}" "$@"
need_tools nginx redis-server redis-cli wrk curl python3 ss

INSTANCES=${INSTANCES:-3}
LIMIT=${LIMIT:-300}          # N: requests per minute for the consumer, across the cluster
REQUESTS=${REQUESTS:-900}    # M: requests sent in check 1
BURST_CONC=${BURST_CONC:-8}  # concurrent connections of check 1
FAILOVER_DURATION=${FAILOVER_DURATION:-15}
FAILOVER_CONNS=${FAILOVER_CONNS:-32}
KEY=bench-key-0001
[ "$INSTANCES" -ge 2 ] || { echo "INSTANCES must be at least 2" >&2; exit 2; }
[ "$REQUESTS" -gt "$LIMIT" ] || { echo "REQUESTS must be more than LIMIT" >&2; exit 2; }

make_tmp cluster
RESULT_WIDTH=14

# ---- start the cluster ----------------------------------------------------------------------
REDIS_PORT=$(free_port)
start redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$TMP" --logfile ""
for _ in $(seq 50); do
  redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && break
  sleep 0.1
done
redis-cli -p "$REDIS_PORT" ping | grep -q PONG

ORIGIN_PORT=$(free_port)
start_origin "$ORIGIN_PORT"

PORT=() ADMIN=() TG_PID=()
for i in $(seq 1 "$INSTANCES"); do
  PORT[i]=$(free_port)
  ADMIN[i]=$(free_port)
  cat >"$TMP/tollgate-$i.toml" <<EOF
# written by bench/cluster.sh: instance $i of $INSTANCES
[server]
listen = ["127.0.0.1:${PORT[i]}"]
admin_listen = "127.0.0.1:${ADMIN[i]}"
threads = 1
log_level = "warn"
shutdown_grace_period_seconds = 0
shutdown_timeout_seconds = 5
pid_file = "$TMP/tollgate-$i.pid"
upgrade_sock = "$TMP/tollgate-$i-upgrade.sock"
trusted_proxies = ["127.0.0.1"]

[server.access_log]
enabled = false

[[consumers]]
username = "bench"
keys = ["$KEY"]

[[upstreams]]
name = "origin"
backends = ["127.0.0.1:$ORIGIN_PORT"]

# which instance answered
[[routes]]
name = "whoami"
paths = ["=/whoami"]
plugins = [{ name = "mock", body = "tollgate-$i" }]

# check 1: $LIMIT requests per minute per consumer, across all instances (shared in Redis)
[[routes]]
name = "limited"
paths = ["/limited"]
strip_prefix = true
upstream = "origin"
plugins = [
  "key_auth",
  { name = "rate_limit", limit_by = "consumer", minute = $LIMIT, policy = "redis", redis = { url = "redis://127.0.0.1:$REDIS_PORT/0", timeout_ms = 200 }, on_store_error = "closed" },
]

# check 2: no limits
[[routes]]
name = "open"
paths = ["/open"]
strip_prefix = true
upstream = "origin"
EOF
  "$TOLLGATE" check -c "$TMP/tollgate-$i.toml" >/dev/null
  start "tollgate-$i" "$TOLLGATE" run -c "$TMP/tollgate-$i.toml"
  TG_PID[i]=$STARTED_PID
done
for i in $(seq 1 "$INSTANCES"); do
  wait_http "http://127.0.0.1:${ADMIN[i]}/readyz" 15
done

LB_PORT=$(free_port)
servers=""
for i in $(seq 1 "$INSTANCES"); do
  servers+="        server 127.0.0.1:${PORT[i]} max_fails=1 fail_timeout=5s;
"
done
nginx_conf lb "
    upstream tollgate {
$servers        keepalive 64;
    }
    server {
        listen 127.0.0.1:$LB_PORT backlog=4096;
        location / {
            proxy_pass http://tollgate;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_next_upstream error timeout;
            proxy_connect_timeout 1s;
        }
    }"
start_nginx lb
LB_PID=$STARTED_PID
wait_http "http://127.0.0.1:$LB_PORT/whoami" 10
seen=$(for _ in $(seq $((INSTANCES * 2))); do curl -s --max-time 2 "http://127.0.0.1:$LB_PORT/whoami"; echo; done | sort -u | tr '\n' ' ')
log "cluster up: lb 127.0.0.1:$LB_PORT -> ${PORT[*]:1} (answering: $seen), redis :$REDIS_PORT, origin :$ORIGIN_PORT"

# ---- check 1: one global limit --------------------------------------------------------------
# The limit's windows are fixed minutes on Redis's clock (plus the previous minute weighted):
# a burst that crosses a minute boundary may legitimately let a few more through, so start
# the burst at least 15 s before the next boundary.
sec=$((10#$(date +%S)))
if [ "$sec" -ge 45 ]; then
  log "waiting $((61 - sec)) s for the next minute (the burst must not cross a window boundary)"
  sleep $((61 - sec))
fi
log "check 1: $REQUESTS requests (key of consumer \"bench\", $BURST_CONC connections) to /limited/hello, limit $LIMIT/minute"
t0=$(date +%s.%N)
burst=$(timeout 60 python3 "$CLUSTER_DIR/burst.py" "$LB_PORT" /limited/hello "$REQUESTS" "$BURST_CONC" "x-api-key:$KEY")
t1=$(date +%s.%N)
ok=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get("200", 0))' "$burst")
limited=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get("429", 0))' "$burst")
other=$((REQUESTS - ok - limited))
printf 'check 1: %d requests in %.2f s through the load balancer: %s\n' "$REQUESTS" "$(python3 -c "print($t1 - $t0)")" "$burst"
sum_allowed=0 sum_limited=0 sum_error=0 all_took_part=1
for i in $(seq 1 "$INSTANCES"); do
  a=$(metric "${ADMIN[i]}" tollgate_ratelimit_decisions_total 'route="limited"' 'result="allowed"')
  l=$(metric "${ADMIN[i]}" tollgate_ratelimit_decisions_total 'route="limited"' 'result="limited"')
  e=$(metric "${ADMIN[i]}" tollgate_ratelimit_decisions_total 'route="limited"' 'result="error"')
  se=$(metric "${ADMIN[i]}" tollgate_ratelimit_store_errors_total 'route="limited"')
  printf '  tollgate-%d (:%s)  allowed %4d  limited %4d  error %d  store errors %d\n' "$i" "${PORT[i]}" "$a" "$l" "$e" "$se"
  sum_allowed=$((sum_allowed + a)) sum_limited=$((sum_limited + l)) sum_error=$((sum_error + e + se))
  [ $((a + l)) -gt 0 ] || all_took_part=0
done
printf '  all instances   allowed %4d  limited %4d  error %d\n' "$sum_allowed" "$sum_limited" "$sum_error"
printf '  redis counters: %s\n' "$(redis-cli -p "$REDIS_PORT" --scan --pattern '*' | sort | while read -r k; do printf '%s=%s ' "$k" "$(redis-cli -p "$REDIS_PORT" get "$k")"; done)"
if [ "$ok" -eq "$LIMIT" ] && [ "$limited" -eq $((REQUESTS - LIMIT)) ] && [ "$other" -eq 0 ] &&
  [ "$sum_allowed" -eq "$LIMIT" ] && [ "$sum_limited" -eq $((REQUESTS - LIMIT)) ] &&
  [ "$sum_error" -eq 0 ] && [ "$all_took_part" -eq 1 ]; then
  result "global-limit" PASS "$ok x 200, $limited x 429 of $REQUESTS (limit $LIMIT/min over $INSTANCES instances)"
else
  result "global-limit" FAIL "$ok x 200 (want $LIMIT), $limited x 429 (want $((REQUESTS - LIMIT))), $other other; metrics: allowed $sum_allowed, limited $sum_limited, errors $sum_error; every instance decided: $all_took_part"
fi

# ---- check 2: failover ----------------------------------------------------------------------
VICTIM=$INSTANCES
VPID=${TG_PID[VICTIM]}
declare -A before
for i in $(seq 1 "$INSTANCES"); do
  before[$i]=$(metric "${ADMIN[i]}" tollgate_http_requests_total 'route="open"')
done
lb_errors_before=$(grep -c '\[error\].*upstream' "$TMP/lb-error.log" 2>/dev/null || true)
log "check 2: wrk -t1 -c$FAILOVER_CONNS -d${FAILOVER_DURATION}s through the load balancer to /open/hello; kill -9 tollgate-$VICTIM (pid $VPID) after $((FAILOVER_DURATION / 2)) s"
start wrk-failover timeout $((FAILOVER_DURATION + 30)) wrk -t1 -c"$FAILOVER_CONNS" -d"${FAILOVER_DURATION}s" \
  --timeout 5s -s "$CLUSTER_DIR/status.lua" "http://127.0.0.1:$LB_PORT/open/hello"
WRK_PID=$STARTED_PID
sleep $((FAILOVER_DURATION / 2))
# What the victim can hold: one request per connection from the load balancer (busy or idle).
held=$(ss -Htn state established "( dport = :${PORT[VICTIM]} )" | wc -l)
victim_served=$(metric "${ADMIN[VICTIM]}" tollgate_http_requests_total 'route="open"')
kill -KILL "$VPID"
wait "$VPID" 2>/dev/null || true
forget "$VPID"
log "killed tollgate-$VICTIM; it had $held connections from the load balancer and had served $((victim_served - before[$VICTIM])) requests of this run"
wait "$WRK_PID" || true
forget "$WRK_PID"
eval "$(wrk_summary "$TMP/wrk-failover.log")"
sed -n '/requests in/,$p' "$TMP/wrk-failover.log" | sed 's/^/  wrk: /'
lb_retried=$(($(grep -c '\[error\].*upstream' "$TMP/lb-error.log" 2>/dev/null || true) - lb_errors_before))
printf 'check 2: %d requests, %s req/s; statuses: %s; socket errors %d (connect %d, read %d, write %d, timeout %d)\n' \
  "$WRK_REQUESTS" "$WRK_RPS" "$WRK_STATUSES" "$WRK_SOCKET_ERRORS" "$WRK_CONNECT" "$WRK_READ" "$WRK_WRITE" "$WRK_TIMEOUT"
for i in $(seq 1 "$INSTANCES"); do
  if [ "$i" -eq "$VICTIM" ]; then
    printf '  tollgate-%d  served %6d before it was killed\n' "$i" $((victim_served - before[$i]))
  else
    printf '  tollgate-%d  served %6d\n' "$i" $(($(metric "${ADMIN[i]}" tollgate_http_requests_total 'route="open"') - before[$i]))
  fi
done
printf '  load balancer: %d failed attempts on tollgate-%d (each retried on another instance, or answered 502 if none was left):\n' "$lb_retried" "$VICTIM"
grep '\[error\].*upstream' "$TMP/lb-error.log" | sed -E 's/^.*\[error\] [0-9#]+: \*[0-9]+ //; s/, client:.*//' | sort | uniq -c | sort -rn | head -5 | sed 's/^/    /' || true
after=$(for _ in $(seq $((INSTANCES * 2))); do curl -s --max-time 2 "http://127.0.0.1:$LB_PORT/whoami"; echo; done | sort | uniq -c | tr -s ' \n' ' ')
printf '  after the kill, /whoami through the load balancer: %s\n' "$after"
errors=$((WRK_NON2XX + WRK_SOCKET_ERRORS))
if [ "$WRK_REQUESTS" -gt 0 ] && [ "$errors" -le "$held" ] && alive "$LB_PID"; then
  result "failover" PASS "$errors errors (non-2xx $WRK_NON2XX, socket $WRK_SOCKET_ERRORS) of $WRK_REQUESTS requests; the killed instance held at most $held"
else
  result "failover" FAIL "$errors errors (non-2xx $WRK_NON2XX, socket $WRK_SOCKET_ERRORS) of $WRK_REQUESTS requests; the killed instance held at most $held"
fi

exit "$FAILED"

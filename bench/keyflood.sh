#!/usr/bin/env bash
# Key flood against the local rate limiter, on 127.0.0.1: is its memory bounded by max_keys?
#
# One tollgate (release build, threads = 1, access log off) with a route /limited:
# `rate_limit` (local policy, limit_by = "header:x-key", hour = QUOTA (5), max_keys = MAX_KEYS
# (the default, 100,000) when set) in front of a `mock` answer, and a route /plain (mock only).
#
#   1. the first key, `first`, uses its whole quota: QUOTA + 1 requests, QUOTA x 200 + 1 x 429;
#   2. warm-up: wrk on /plain, then on /limited with one fixed key (so the connections, buffers
#      and the limiter's code paths exist); RSS (VmRSS) after 2 s idle = "before";
#   3. flood: KEYS (1,000,000) requests on /limited, each with an x-key of its own
#      (`wrk -t1 -cCONNS` with bench/cluster/status.lua WRK_UNIQUE_HEADER, runs of a few
#      seconds with their own prefix until KEYS requests have been answered); RSS sampled
#      every 0.5 s (peak) and after the flood;
#   4. RSS after IDLE (10) s;
#   5. the first key again: with the flood it fell out of the max_keys most recent, so it must
#      have its full quota again (QUOTA x 200, then 429); a key of the last seconds of the flood
#      must still be remembered (QUOTA - 1 more 200s, then 429).
#
# The gateway's own count of the flood's keys is tollgate_ratelimit_decisions_total on the
# route (allowed + limited, before vs after): every flood request has a key never sent before,
# so every decision is a new key, and none may be limited.
#
# PASS: the gateway counted at least KEYS decisions during the flood, all allowed; no non-2xx
# and no socket error; peak RSS growth over "before" under the bound docs/config.md gives for
# rate_limit: "memory per limit stays under about 200 bytes x max_keys (about 20 MiB by
# default) whatever clients send" (BOUND_BYTES_PER_KEY = 200); the first key has its quota again
# and the recent key is remembered.
#
#   bench/keyflood.sh
#   KEYS=1000000 CONNS=16 QUOTA=5 KEY_PAD=0 bench/keyflood.sh
#
# KEY_PAD=N makes every key N bytes longer (the doc's bound says "whatever clients send").
# Needs target/release/tollgate (or TOLLGATE_BIN), wrk, curl, python3. Bounded by TIME_LIMIT
# (600 s); stops every process it started on exit (KEEP_TMP=1 keeps the temp dir).

source "$(dirname "$0")/cluster/common.sh"
bound_script "${TIME_LIMIT:-600}" "$@"
need_tools wrk curl python3

KEYS=${KEYS:-1000000}
CONNS=${CONNS:-16}
QUOTA=${QUOTA:-5}
KEY_PAD=${KEY_PAD:-0}
IDLE=${IDLE:-10}
MAX_KEYS=${MAX_KEYS:-}
BOUND_BYTES_PER_KEY=${BOUND_BYTES_PER_KEY:-200}
FLOOD_TIME=${FLOOD_TIME:-480} # the flood stops after this many seconds even if short of KEYS

make_tmp keyflood
RESULT_WIDTH=12

PORT=$(free_port)
ADMIN=$(free_port)
CONF=$TMP/tollgate.toml
cat >"$CONF" <<EOF
# written by bench/keyflood.sh
[server]
listen = ["127.0.0.1:$PORT"]
admin_listen = "127.0.0.1:$ADMIN"
threads = 1
log_level = "warn"
pid_file = "$TMP/tollgate.pid"
upgrade_sock = "$TMP/tollgate-upgrade.sock"

[server.access_log]
enabled = false

[[routes]]
name = "limited"
paths = ["=/limited"]
plugins = [
  { name = "rate_limit", hour = $QUOTA, limit_by = "header:x-key"$([ -n "$MAX_KEYS" ] && echo ", max_keys = $MAX_KEYS") },
  { name = "mock", body = "hello" },
]

[[routes]]
name = "plain"
paths = ["=/plain"]
plugins = [{ name = "mock", body = "hello" }]
EOF
start_tollgate "$CONF" "$ADMIN"
effective_max_keys=${MAX_KEYS:-100000}
bound_kib=$((BOUND_BYTES_PER_KEY * effective_max_keys / 1024))
log "tollgate (pid $GW) on 127.0.0.1:$PORT, admin :$ADMIN; rate_limit hour = $QUOTA by x-key, max_keys $effective_max_keys; bound $BOUND_BYTES_PER_KEY B x $effective_max_keys = $(mib "$bound_kib") MiB"

burst() { # burst KEY COUNT: COUNT requests on /limited with x-key KEY, one connection; prints {"200": n, ...}
  python3 "$CLUSTER_DIR/burst.py" "$PORT" /limited "$2" 1 "x-key:$1"
}
decisions() { # decisions: allowed limited (on the route)
  echo "$(metric "$ADMIN" tollgate_ratelimit_decisions_total 'route="limited"' 'result="allowed"')" \
    "$(metric "$ADMIN" tollgate_ratelimit_decisions_total 'route="limited"' 'result="limited"')"
}

# ---- 1. the first key uses its quota ----------------------------------------------------------
first_before=$(burst first $((QUOTA + 1)))
log "key 'first': $((QUOTA + 1)) requests -> $first_before"

# ---- 2. warm-up --------------------------------------------------------------------------------
nice wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$PORT/plain" >"$TMP/warmup-plain.log" 2>&1 || true
nice wrk -t1 -c"$CONNS" -d2s -H "x-key: warm" "http://127.0.0.1:$PORT/limited" >"$TMP/warmup-limited.log" 2>&1 || true
sleep 2
rss_before=$(rss_kib "$GW")
read -r allowed0 limited0 <<<"$(decisions)"
log "after warm-up: RSS $(mib "$rss_before") MiB; decisions so far: $allowed0 allowed, $limited0 limited"

# RSS every 0.5 s from here on (peak)
start rss-sampler bash -c "while kill -0 $GW 2>/dev/null; do awk '/^VmRSS:/ {print \$2}' /proc/$GW/status; sleep 0.5; done"
SAMPLER=$STARTED_PID

# ---- 3. the flood ------------------------------------------------------------------------------
answered=0
run=0
rate=0
T_FLOOD=$(date +%s)
: >"$TMP/runs"
while [ "$answered" -lt "$KEYS" ] && [ $(($(date +%s) - T_FLOOD)) -lt "$FLOOD_TIME" ]; do
  run=$((run + 1))
  left=$((KEYS - answered))
  if [ "$rate" -gt 0 ]; then # size the run to what is left (+3 %), 1 to 30 s
    secs=$(((left * 103 / 100 + rate - 1) / rate))
    [ "$secs" -lt 1 ] && secs=1
    [ "$secs" -gt 30 ] && secs=30
  else
    secs=5
  fi
  env WRK_UNIQUE_HEADER=x-key WRK_UNIQUE_PREFIX="r$run-" WRK_UNIQUE_PAD="$KEY_PAD" \
    timeout $((secs + 20)) nice wrk -t1 -c"$CONNS" -d"${secs}s" --timeout 5s \
    -s "$CLUSTER_DIR/status.lua" "http://127.0.0.1:$PORT/limited" >"$TMP/flood-$run.log" 2>&1 || true
  eval "$(wrk_summary "$TMP/flood-$run.log")"
  answered=$((answered + WRK_REQUESTS))
  rate=${WRK_RPS%.*}
  last_key=$(sed -n 's/^unique x-key: [0-9]* (thread 1 last \(.*\))$/\1/p' "$TMP/flood-$run.log")
  made=$(sed -n 's/^unique x-key: \([0-9]*\) .*/\1/p' "$TMP/flood-$run.log")
  echo "$run $secs $WRK_REQUESTS $WRK_RPS $WRK_NON2XX $WRK_SOCKET_ERRORS ${made:-0} $(rss_kib "$GW") $WRK_STATUSES" >>"$TMP/runs"
  log "flood run $run: ${secs}s, $WRK_REQUESTS answered ($WRK_RPS/s; statuses $WRK_STATUSES; socket errors $WRK_SOCKET_ERRORS); $answered of $KEYS; RSS $(mib "$(rss_kib "$GW")") MiB"
done
flood_s=$(($(date +%s) - T_FLOOD))
rss_after=$(rss_kib "$GW")
read -r allowed1 limited1 <<<"$(decisions)"

# ---- 4. idle -----------------------------------------------------------------------------------
sleep "$IDLE"
rss_idle=$(rss_kib "$GW")
kill "$SAMPLER" 2>/dev/null || true
wait "$SAMPLER" 2>/dev/null || true
forget "$SAMPLER"
rss_peak=$(sort -n "$TMP/rss-sampler.log" | tail -1)

# ---- 5. the first key and a recent key ---------------------------------------------------------
first_after=$(burst first $((QUOTA + 1)))
# a key of the last run, 1000 requests before its end (long answered, among the most recent)
last_n=${last_key##*[!0-9]}
back=1000
[ "$last_n" -lt 2000 ] && back=$((last_n / 2))
recent_key="${last_key%"$last_n"}$((last_n - back))"
recent=$(burst "$recent_key" "$QUOTA")

short() { # short VALUE: long keys shown as their first 12 and last 12 bytes
  if [ "${#1}" -gt 40 ]; then echo "${1:0:12}...${1: -12}"; else echo "$1"; fi
}

# ---- figures -----------------------------------------------------------------------------------
flood_allowed=$((allowed1 - allowed0))
flood_limited=$((limited1 - limited0))
non2xx=$(awk '{s += $5} END {print s + 0}' "$TMP/runs")
sockerr=$(awk '{s += $6} END {print s + 0}' "$TMP/runs")
made_total=$(awk '{s += $7} END {print s + 0}' "$TMP/runs")
growth_peak=$((rss_peak - rss_before))
growth_after=$((rss_after - rss_before))
growth_idle=$((rss_idle - rss_before))
want_first="{\"200\": $QUOTA, \"429\": 1}"
want_recent="{\"200\": $((QUOTA - 1)), \"429\": 1}"

echo "flood runs (run, seconds, answered, req/s, non-2xx, socket errors, keys made, RSS KiB after, statuses):"
sed 's/^/  /' "$TMP/runs"
echo "last flood run's wrk output:"
sed -E 's/^/  /; s/x{20,}/x...x/' "$TMP/flood-$run.log"
echo "RSS every 2 s from the flood's start to the end of the idle time (MiB):"
awk 'NR % 4 == 1 {printf "%s%.1f", (n++ ? " " : "  "), $1 / 1024} END {print ""}' "$TMP/rss-sampler.log"
echo "tollgate log (warnings and errors):"
if [ -s "$TMP/tollgate.log" ]; then head -20 "$TMP/tollgate.log" | sed 's/^/  /'; else echo "  (none)"; fi
echo
echo "figures:"
printf '  flood: %d requests answered in %d s over %d wrk runs (-t1 -c%d); %d keys made by wrk (answered + in flight at the end of each run); key length %d bytes (e.g. %s)\n' \
  "$answered" "$flood_s" "$run" "$CONNS" "$made_total" "${#last_key}" "$(short "$last_key")"
printf '  gateway decisions on /limited during the flood: %d allowed, %d limited (= distinct keys seen: every flood key is new)\n' "$flood_allowed" "$flood_limited"
printf '  non-2xx %d, socket errors %d\n' "$non2xx" "$sockerr"
printf '  RSS: before %s MiB (after warm-up), peak %s MiB, after the flood %s MiB, after %d s idle %s MiB\n' \
  "$(mib "$rss_before")" "$(mib "$rss_peak")" "$(mib "$rss_after")" "$IDLE" "$(mib "$rss_idle")"
printf '  RSS growth: peak +%s MiB, after the flood +%s MiB, after idle +%s MiB; bound %d B x max_keys %d = %s MiB\n' \
  "$(mib "$growth_peak")" "$(mib "$growth_after")" "$(mib "$growth_idle")" "$BOUND_BYTES_PER_KEY" "$effective_max_keys" "$(mib "$bound_kib")"
printf "  key 'first': before the flood %s, after it %s (want %s)\n" "$first_before" "$first_after" "$want_first"
printf "  recent key %s: %d requests after the flood -> %s (want %s: it had 1 already)\n" "$(short "$recent_key")" "$QUOTA" "$recent" "$want_recent"
echo

if [ "$flood_allowed" -ge "$KEYS" ] && [ "$flood_limited" -eq 0 ] && [ "$answered" -ge "$KEYS" ]; then
  result "keys" PASS "$flood_allowed distinct keys counted by the gateway, none limited"
else
  result "keys" FAIL "$flood_allowed allowed + $flood_limited limited decisions, $answered answered (want >= $KEYS, 0 limited)"
fi
if [ "$non2xx" -eq 0 ] && [ "$sockerr" -eq 0 ]; then
  result "load" PASS "0 non-2xx, 0 socket errors"
else
  result "load" FAIL "$non2xx non-2xx, $sockerr socket errors"
fi
if [ "$growth_peak" -lt "$bound_kib" ]; then
  result "memory" PASS "peak RSS growth $(mib "$growth_peak") MiB < $(mib "$bound_kib") MiB"
else
  result "memory" FAIL "peak RSS growth $(mib "$growth_peak") MiB >= $(mib "$bound_kib") MiB"
fi
if [ "$first_before" = "$want_first" ] && [ "$first_after" = "$want_first" ]; then
  result "forgotten" PASS "the first key has its full quota again ($first_after)"
else
  result "forgotten" FAIL "first key: before $first_before, after $first_after (want $want_first)"
fi
if [ "$recent" = "$want_recent" ]; then
  result "remembered" PASS "a key of the last run kept its count ($recent)"
else
  result "remembered" FAIL "recent key $(short "$recent_key"): $recent (want $want_recent)"
fi
exit "$FAILED"

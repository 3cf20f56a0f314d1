//! Rate-limit counters in Redis, shared by every tollgate instance using the same server.
//!
//! One decision is one round trip: an atomic Lua script that reads the windows' counts,
//! decides, and increments only when the request passes (the same sliding-window rule as
//! the local store, on Redis's own clock so instances with skewed clocks agree). Keys expire
//! two windows after their last use. The connection ([`RedisConn`]) is multiplexed, every
//! call is bounded by `timeout_ms`, and a dead Redis is reconnected at most once a second.
//!
//! The script builds its keys from one base key, so it needs a single Redis server (or a
//! proxy that routes by the base key), not Redis Cluster.

use super::window::{Decision, Window};
use crate::redis_conn::{RedisConn, RedisError};
use crate::state::SharedState;
use std::sync::Arc;
use std::time::Duration;

const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cost = tonumber(ARGV[1])
local need = tonumber(ARGV[2])
local n = (#ARGV - 2) / 2
local allowed = 1
local retry = 0
local states = {}
for i = 1, n do
  local max = tonumber(ARGV[2 * i + 1])
  local ms = tonumber(ARGV[2 * i + 2])
  local index = math.floor(now / ms)
  local ck = KEYS[1] .. ':' .. ms .. ':' .. index
  local pk = KEYS[1] .. ':' .. ms .. ':' .. (index - 1)
  local cur = tonumber(redis.call('GET', ck) or '0')
  local prev = tonumber(redis.call('GET', pk) or '0')
  local into = now % ms
  states[i] = {ck, ms, cur, prev, into}
end
local out = {}
for i = 1, n do
  local s = states[i]
  out[#out + 1] = s[3]
  out[#out + 1] = s[4]
  out[#out + 1] = s[5]
end
-- Count only when every window has room; the client derives the headers from the counts.
for i = 1, n do
  local s = states[i]
  local max = tonumber(ARGV[2 * i + 1])
  local est = s[4] * (s[2] - s[5]) / s[2] + s[3]
  if est + need > max + 1e-9 then allowed = 0 end
end
if allowed == 1 then
  for i = 1, n do
    local s = states[i]
    if cost > 0 then
      redis.call('INCRBY', s[1], cost)
      redis.call('PEXPIRE', s[1], s[2] * 2)
    end
  end
end
table.insert(out, 1, allowed)
return out
"#;

/// Add ARGV[1] (negative: a refund) to the current period of each window (ARGV[2..] are the
/// window lengths), never below zero.
const ADD_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local delta = tonumber(ARGV[1])
for i = 2, #ARGV do
  local ms = tonumber(ARGV[i])
  local ck = KEYS[1] .. ':' .. ms .. ':' .. math.floor(now / ms)
  local v = redis.call('INCRBY', ck, delta)
  if v < 0 then redis.call('SET', ck, 0) end
  redis.call('PEXPIRE', ck, ms * 2)
end
return 1
"#;

/// A Redis server used for rate limits, shared by all plugin instances with the same URL.
pub struct RedisStore {
    conn: RedisConn,
    script: redis::Script,
    add_script: redis::Script,
}

/// Why a decision could not be made.
pub type StoreError = RedisError;

impl RedisStore {
    /// The store for `url` with this timeout: one per process (kept in the [`SharedState`]
    /// across reloads); the connection opens on the first request.
    pub fn get(state: &SharedState, url: &str, timeout: Duration) -> Result<Arc<Self>, String> {
        let key = format!("{}|{url}", timeout.as_millis());
        state.try_get_or_insert(&key, || {
            Ok(RedisStore {
                conn: RedisConn::open(url, timeout)?,
                script: redis::Script::new(SCRIPT),
                add_script: redis::Script::new(ADD_SCRIPT),
            })
        })
    }

    /// Check and count one request of `key` (already prefixed and scoped).
    pub async fn hit(&self, key: &str, windows: &[Window]) -> Result<Decision, StoreError> {
        self.hit_n(key, windows, 1, 1, "rate-limit store").await
    }

    /// Check whether `need` units of `key` fit every window and, when they do, count `cost`;
    /// a failure is logged (at most once a second) as `what`.
    pub async fn hit_n(
        &self,
        key: &str,
        windows: &[Window],
        cost: u64,
        need: u64,
        what: &str,
    ) -> Result<Decision, StoreError> {
        let result = self.try_hit(key, windows, cost, need).await;
        if let Err(e) = &result {
            self.conn.warn(what, e);
        }
        result
    }

    /// Add `delta` units (negative: a refund) to the current period of every window of `key`,
    /// without a check; counts never go below zero.
    pub async fn add(
        &self,
        key: &str,
        windows: &[Window],
        delta: i64,
        what: &str,
    ) -> Result<(), StoreError> {
        let mut inv = self.add_script.key(key);
        inv.arg(delta);
        for w in windows {
            inv.arg(w.ms);
        }
        let result: Result<u64, StoreError> = self.conn.invoke(&inv).await;
        if let Err(e) = &result {
            self.conn.warn(what, e);
        }
        result.map(|_| ())
    }

    async fn try_hit(
        &self,
        key: &str,
        windows: &[Window],
        cost: u64,
        need: u64,
    ) -> Result<Decision, StoreError> {
        let mut inv = self.script.key(key);
        inv.arg(cost).arg(need);
        for w in windows {
            inv.arg(w.max).arg(w.ms);
        }
        let reply: Vec<u64> = self.conn.invoke(&inv).await?;
        if reply.len() != 1 + 3 * windows.len() {
            return Err(StoreError::Redis("unexpected script reply".to_string()));
        }
        let states: Vec<(f64, u64, u64, u64)> = windows
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let (current, previous, into) =
                    (reply[1 + 3 * i], reply[2 + 3 * i], reply[3 + 3 * i]);
                let est = previous as f64 * (w.ms - into) as f64 / w.ms as f64 + current as f64;
                (est, current, previous, into)
            })
            .collect();
        let mut d = Decision::from_states(windows, &states, cost, need);
        // Redis had the last word on whether the request was counted.
        d.allowed = reply[0] == 1;
        Ok(d)
    }
}

//! A response-cache storage in Redis, shared by every tollgate instance that uses the same
//! server and prefix: an object one instance stores is a hit for the others, and a purge on
//! one (by key, by URL, by route) removes it for all.
//!
//! # Layout
//!
//! Every key starts with the configured prefix `P` (e.g. `tollgate:cache`). `H` is the hex
//! of the object's combined cache key ([`CacheKey::combined_bin`]: primary and variance).
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:ptr:H` | string | the name of the object's current data key |
//! | `P:data:H:G` | string | `G` random per write; write-once: `u32 BE` length of the internal meta, `u32 BE` length of the header, both parts of [`CacheMeta::serialize`], then the body |
//! | `P:url:U` | set | the `H`s stored under one URL hash `U` (hex of [`Origin::url`]): all variants and methods |
//! | `P:route:R` | set | the `H`s of one route (`R`: hex of the route name) |
//! | `P:path:R:Q` | set | the `H`s of one path on a route (`Q`: first 16 bytes of the SHA-256 of the path, hex) |
//! | `P:objs` | hash | `H` → `size url route path` (the size counted and the index names, `-` when absent) |
//! | `P:exp` | sorted set | `H` scored by its expiry (ms, Redis clock) |
//! | `P:bytes` | string | the bytes counted for the whole prefix (data keys' lengths) |
//!
//! # Rules
//!
//! - **One atomic write.** An object and its metadata are written by one Lua script: a new
//!   data key, then the pointer swapped to it, the indexes, the counter and the expiry set
//!   updated together. Readers never see a half-written object.
//! - **Overwrites do not cut readers.** The data key an overwrite, an update, a purge or an
//!   eviction replaces is not deleted at once but expires [`LINGER`] later, so a response
//!   streaming it can finish. A data key that still disappears mid-stream (a body taking
//!   longer than that) fails that read, and Pingora aborts the response.
//! - **Every key has a TTL**: never an unbounded Redis. An object lives until
//!   `fresh_until + max(stale-while-revalidate, stale-if-error) + 600 s` (room to serve stale
//!   and revalidate), at least 60 s and at most 30 days ([`object_ttl`]). An index set's TTL is
//!   raised on each write to at least the TTL of the object added, so it outlives every object
//!   it names. The shared keys (`P:objs`, `P:exp`, `P:bytes`) expire 31 days after the last
//!   write, when every object they count is gone.
//! - **A byte budget**, `max_bytes`, for the whole prefix. Each write first removes from the
//!   count the objects whose expiry passed (up to 256 a write), then adds the new object and,
//!   **past `max_bytes`, drops the objects closest to expiry first** (possibly the new one, if
//!   it is the closest). An object larger than the budget is not stored. Index keys and
//!   lingering data keys are not counted.
//! - **Reads are streamed**: a lookup reads the pointer, the data key's length and its first
//!   64 KiB in one round trip; the body then comes in 64 KiB `GETRANGE` chunks, from any
//!   offset (range requests seek).
//! - **Writes are buffered**: a miss keeps the body in memory (Pingora enforces the route's
//!   object size limit before it reaches here) and stores it on `finish`.
//!
//! # Failures
//!
//! A Redis that is down or slower than the timeout never fails a client request: a lookup is a
//! miss (the request goes to the origin), a write or a meta update is dropped, and only purges
//! return the error (their caller reports it). Each failure counts in
//! `tollgate_cache_store_errors_total{storage="redis",op}` (`op`: `lookup`, `write`, `update`,
//! `purge`; a body read failing mid-response counts as `lookup`) and logs a warning at most
//! once a second. A dead Redis is reconnected at most once
//! a second; in between, calls fail at once ([`crate::redis_conn`]).
//!
//! The scripts name keys they find in other keys (the data key in the pointer, the objects in
//! the index sets), so this needs a single Redis server (or a replica set behind one
//! address), not Redis Cluster; Redis 6.0 or later (`SET … KEEPTTL`).

use super::storage::{KeyOrigin, Origin};
use crate::metrics::METRICS;
use crate::redis_conn::{RedisConn, RedisError};
use crate::state::SharedState;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::cache::eviction::CacheEntryKey;
use pingora::cache::key::{CacheHashKey, HashBinary};
use pingora::cache::storage::{HandleHit, HandleMiss, MissFinishType, PurgeOutcome, PurgeTarget};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheKey, CacheMeta, HitHandler, MissHandler, PurgeType, Storage};
use pingora::{Error, ErrorType, Result};
use sha2::{Digest, Sha256};
use std::any::Any;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

/// Bytes read from a data key per round trip (the first one also holds the meta).
const CHUNK: usize = 64 * 1024;
/// How long a replaced or removed data key stays readable for the responses streaming it.
pub const LINGER: Duration = Duration::from_secs(30);
/// Room past the stale windows for a revalidation to find the object.
const REVALIDATE_ROOM: Duration = Duration::from_secs(600);
/// Shortest object TTL.
const MIN_TTL: Duration = Duration::from_secs(60);
/// Longest object TTL.
const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// TTL of the shared keys (counter, sizes, expiry set), refreshed on every write: longer
/// than any object, so they expire only once every object they count has.
const SHARED_TTL: Duration = Duration::from_secs(31 * 24 * 3600);
/// Length of the meta lengths that start a data key.
const HEAD: usize = 8;
/// The `storage` label of the metric.
const STORAGE_LABEL: &str = "redis";
/// What log lines call this store.
const LOG_WHAT: &str = "response cache store";

/// Functions every script shares. ARGV[1] prefix, ARGV[2] linger (ms), ARGV[3] TTL of the
/// shared keys (ms).
const PRELUDE: &str = r#"
local P = ARGV[1]
local LINGER = tonumber(ARGV[2])
local SHARED_TTL = tonumber(ARGV[3])
local BYTES, OBJS, EXP = P .. ':bytes', P .. ':objs', P .. ':exp'
local function u32(s, i)
  local a, b, c, d = string.byte(s, i, i + 3)
  return ((a * 256 + b) * 256 + c) * 256 + d
end
local function index_keys(u, r, p)
  local ks = {}
  if u ~= '-' then ks[#ks + 1] = P .. ':url:' .. u end
  if r ~= '-' then
    ks[#ks + 1] = P .. ':route:' .. r
    if p ~= '-' then ks[#ks + 1] = P .. ':path:' .. r .. ':' .. p end
  end
  return ks
end
local function parse(rec)
  local f = {}
  for w in string.gmatch(rec, '%S+') do f[#f + 1] = w end
  return tonumber(f[1]) or 0, f[2] or '-', f[3] or '-', f[4] or '-'
end
-- A replaced data key lingers so that the responses streaming it can finish.
local function retire(d)
  local left = redis.call('PTTL', d)
  if left == -1 or left > LINGER then redis.call('PEXPIRE', d, LINGER) end
end
-- Remove object h from the pointer, the count, the indexes and the expiry set; 1 if it was
-- readable.
local function drop(h)
  local n = 0
  local ptr = P .. ':ptr:' .. h
  local d = redis.call('GET', ptr)
  if d then
    retire(d)
    redis.call('DEL', ptr)
    n = 1
  end
  local rec = redis.call('HGET', OBJS, h)
  if rec then
    local size, u, r, p = parse(rec)
    redis.call('DECRBY', BYTES, size)
    for _, k in ipairs(index_keys(u, r, p)) do redis.call('SREM', k, h) end
    redis.call('HDEL', OBJS, h)
  end
  redis.call('ZREM', EXP, h)
  return n
end
-- The shared keys get their TTL back (refresh) or one if a removal left them without.
local function keep_ttl(refresh)
  if tonumber(redis.call('GET', BYTES) or '0') < 0 then
    redis.call('SET', BYTES, 0, 'KEEPTTL')
  end
  for _, k in ipairs({BYTES, OBJS, EXP}) do
    if refresh or redis.call('PTTL', k) == -1 then redis.call('PEXPIRE', k, SHARED_TTL) end
  end
end
"#;

/// KEYS[1] pointer; ARGV[4] bytes to read. Returns false, or {data key, length, first bytes}.
const LOOKUP: &str = r#"
local d = redis.call('GET', KEYS[1])
if not d then return false end
return {d, redis.call('STRLEN', d), redis.call('GETRANGE', d, 0, tonumber(ARGV[4]) - 1)}
"#;

/// ARGV[4] H, [5] G, [6] mode (`w` write, `u` update the meta of the current object),
/// [7] TTL (ms), [8] budget, [9..11] url, route, path index names (`-`: none), [12] meta
/// (lengths and both parts), [13] body (`w` only). Returns {stored 0/1, size, evicted}.
const WRITE: &str = r#"
local h, mode, ttl, max = ARGV[4], ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8])
local u, r, p = ARGV[9], ARGV[10], ARGV[11]
local meta = ARGV[12]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, e in ipairs(redis.call('ZRANGEBYSCORE', EXP, '-inf', now, 'LIMIT', 0, 256)) do drop(e) end
local ptr = P .. ':ptr:' .. h
local data = P .. ':data:' .. h .. ':' .. ARGV[5]
local body
if mode == 'u' then
  local old = redis.call('GET', ptr)
  if not old then keep_ttl(false) return {0, 0, 0} end
  local head = redis.call('GETRANGE', old, 0, 7)
  if #head < 8 then keep_ttl(false) return {0, 0, 0} end
  body = redis.call('GETRANGE', old, 8 + u32(head, 1) + u32(head, 5), -1)
  local rec = redis.call('HGET', OBJS, h)
  if rec then
    local _
    _, u, r, p = parse(rec)
  end
else
  body = ARGV[13]
end
local size = #meta + #body
if size > max then keep_ttl(false) return {0, 0, 0} end
drop(h)
redis.call('SET', data, meta, 'PX', ttl)
if #body > 0 then redis.call('APPEND', data, body) end
redis.call('SET', ptr, data, 'PX', ttl)
redis.call('INCRBY', BYTES, size)
redis.call('HSET', OBJS, h, size .. ' ' .. u .. ' ' .. r .. ' ' .. p)
redis.call('ZADD', EXP, now + ttl, h)
for _, k in ipairs(index_keys(u, r, p)) do
  redis.call('SADD', k, h)
  if redis.call('PTTL', k) < ttl then redis.call('PEXPIRE', k, ttl) end
end
local evicted, stored = 0, 1
while tonumber(redis.call('GET', BYTES) or '0') > max do
  local first = redis.call('ZRANGE', EXP, 0, 0)
  if #first == 0 then break end
  if first[1] == h then stored = 0 end
  drop(first[1])
  evicted = evicted + 1
end
keep_ttl(true)
return {stored, size, evicted}
"#;

/// ARGV[4] H. Returns 1 if an object was removed.
const PURGE_ONE: &str = r#"
local n = drop(ARGV[4])
keep_ttl(false)
return n
"#;

/// KEYS[1] an index set. Removes every object it names; returns how many were readable.
const PURGE_SET: &str = r#"
local n = 0
for _, h in ipairs(redis.call('SMEMBERS', KEYS[1])) do n = n + drop(h) end
redis.call('DEL', KEYS[1])
keep_ttl(false)
return n
"#;

/// Where a [`RedisStorage`] keeps its objects.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisCacheConfig {
    /// The server (`redis://[user:password@]host:port/db`, `rediss://…`, `unix://…`).
    pub url: String,
    /// Longest a call may take; past it, a lookup is a miss and a write is dropped.
    pub timeout: Duration,
    /// The start of every key (e.g. `tollgate:cache`); instances sharing objects use the same.
    pub prefix: String,
    /// The byte budget of the whole prefix: past it, the objects closest to expiry are dropped.
    pub max_bytes: u64,
}

// By hand: the URL may hold a password.
impl std::fmt::Debug for RedisCacheConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCacheConfig")
            .field("timeout", &self.timeout)
            .field("prefix", &self.prefix)
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

/// The shared response-cache storage in Redis (see the module documentation).
pub struct RedisStorage {
    conn: RedisConn,
    prefix: String,
    max_bytes: u64,
    lookup_script: redis::Script,
    write_script: redis::Script,
    purge_one_script: redis::Script,
    purge_set_script: redis::Script,
}

/// The TTL of an object with this meta, written at `now`: fresh, then the longer of its stale
/// windows, then 600 s to revalidate; between 60 s and 30 days.
pub fn object_ttl(meta: &CacheMeta, now: SystemTime) -> Duration {
    let fresh = meta.fresh_until().duration_since(now).unwrap_or_default();
    let stale = meta
        .stale_while_revalidate_sec()
        .max(meta.stale_if_error_sec());
    fresh
        .saturating_add(Duration::from_secs(u64::from(stale)))
        .saturating_add(REVALIDATE_ROOM)
        .clamp(MIN_TTL, MAX_TTL)
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn route_name(route: &str) -> String {
    hex(route.as_bytes())
}

fn path_name(path: &str) -> String {
    hex(&Sha256::digest(path.as_bytes())[..16])
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

/// The lengths and both parts of a serialized meta, as a data key starts.
fn encode_meta(meta: &CacheMeta) -> Result<Vec<u8>> {
    let (internal, header) = meta.serialize()?;
    let (Ok(li), Ok(lh)) = (u32::try_from(internal.len()), u32::try_from(header.len())) else {
        return Error::e_explain(ErrorType::InternalError, "cache meta too large");
    };
    let mut out = Vec::with_capacity(HEAD + internal.len() + header.len());
    out.extend_from_slice(&li.to_be_bytes());
    out.extend_from_slice(&lh.to_be_bytes());
    out.extend_from_slice(&internal);
    out.extend_from_slice(&header);
    Ok(out)
}

/// The two meta lengths at the start of a data key.
fn meta_lengths(head: &[u8]) -> Option<(usize, usize)> {
    let li = u32::from_be_bytes(head.get(0..4)?.try_into().ok()?);
    let lh = u32::from_be_bytes(head.get(4..8)?.try_into().ok()?);
    Some((li as usize, lh as usize))
}

fn corrupt(what: &str) -> RedisError {
    RedisError::Redis(format!("undecodable cached object: {what}"))
}

impl RedisStorage {
    /// The storage for `cfg`: one per distinct config per process, never dropped (Pingora
    /// holds storage by `'static` reference). Nothing connects until the first call.
    /// Err: the URL is invalid.
    pub fn shared(
        state: &SharedState,
        cfg: &RedisCacheConfig,
    ) -> Result<&'static RedisStorage, String> {
        let key = format!(
            "{}|{}|{}|{}",
            cfg.timeout.as_millis(),
            cfg.max_bytes,
            cfg.prefix,
            cfg.url
        );
        state.process_wide_keyed(&key, || {
            let script = |body: &str| redis::Script::new(&format!("{PRELUDE}{body}"));
            Ok(RedisStorage {
                conn: RedisConn::open(&cfg.url, cfg.timeout)?,
                prefix: cfg.prefix.clone(),
                max_bytes: cfg.max_bytes,
                lookup_script: script(LOOKUP),
                write_script: script(WRITE),
                purge_one_script: script(PURGE_ONE),
                purge_set_script: script(PURGE_SET),
            })
        })
    }

    /// Remove every object (all variants and methods) stored under one URL hash, by every
    /// instance; returns how many were removed.
    pub async fn purge_url(&self, url: &HashBinary) -> Result<usize, String> {
        let set = format!("{}:url:{}", self.prefix, hex(url));
        self.purge_set(&set).await
    }

    /// Remove every object of `route`, or only those of `path` on it; returns how many were
    /// removed.
    pub async fn purge_route(&self, route: &str, path: Option<&str>) -> Result<usize, String> {
        let set = match path {
            None => format!("{}:route:{}", self.prefix, route_name(route)),
            Some(p) => format!(
                "{}:path:{}:{}",
                self.prefix,
                route_name(route),
                path_name(p)
            ),
        };
        self.purge_set(&set).await
    }

    async fn purge_set(&self, set: &str) -> Result<usize, String> {
        let mut inv = self.purge_set_script.key(set);
        self.common_args(&mut inv);
        self.run(&inv, "purge").await.map_err(|e| e.to_string())
    }

    /// Count and log a failure of `op`.
    fn failed(&self, op: &str, e: &dyn std::fmt::Display) {
        METRICS
            .cache_store_errors
            .with_label_values(&[STORAGE_LABEL, op])
            .inc();
        self.conn.warn(LOG_WHAT, &format_args!("{op}: {e}"));
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        inv: &redis::ScriptInvocation<'_>,
        op: &str,
    ) -> Result<T, RedisError> {
        let result = self.conn.invoke(inv).await;
        if let Err(e) = &result {
            self.failed(op, e);
        }
        result
    }

    fn common_args(&self, inv: &mut redis::ScriptInvocation<'_>) {
        inv.arg(&self.prefix).arg(ms(LINGER)).arg(ms(SHARED_TTL));
    }

    fn ptr_key(&self, h: &str) -> String {
        format!("{}:ptr:{h}", self.prefix)
    }

    /// Run the write script; Ok(size stored, 0 if not stored).
    async fn write(&self, w: Write<'_>, op: &str) -> Result<usize, RedisError> {
        let gen = hex(&fastrand::u64(..).to_be_bytes());
        let (u, r, p) = match w.origin {
            Some(o) => (hex(&o.url), route_name(&o.route), path_name(&o.path)),
            None => ("-".to_string(), "-".to_string(), "-".to_string()),
        };
        let mut inv = self.write_script.prepare_invoke();
        self.common_args(&mut inv);
        inv.arg(w.h)
            .arg(gen)
            .arg(if w.body.is_some() { "w" } else { "u" })
            .arg(ms(w.ttl))
            .arg(self.max_bytes)
            .arg(u)
            .arg(r)
            .arg(p)
            .arg(w.meta);
        if let Some(body) = w.body {
            inv.arg(body);
        }
        let (stored, size, _evicted): (u8, usize, u64) = self.run(&inv, op).await?;
        Ok(if stored == 1 { size } else { 0 })
    }

    async fn try_lookup(
        &'static self,
        key: &CacheKey,
    ) -> Result<Option<(CacheMeta, HitHandler)>, RedisError> {
        let h = hex(&key.combined_bin());
        let mut inv = self.lookup_script.key(self.ptr_key(&h));
        self.common_args(&mut inv);
        inv.arg(CHUNK);
        let found: Option<(String, usize, Vec<u8>)> = self.conn.invoke(&inv).await?;
        let Some((data, len, first)) = found else {
            return Ok(None);
        };
        if len < HEAD {
            // Gone between the pointer and the data (or never written whole): a miss.
            return Ok(None);
        }
        let (li, lh) = meta_lengths(&first).ok_or_else(|| corrupt("short head"))?;
        let body_off = HEAD
            .checked_add(li)
            .and_then(|n| n.checked_add(lh))
            .filter(|&n| n <= len)
            .ok_or_else(|| corrupt("meta past the end"))?;
        let mut head = first;
        if head.len() < body_off {
            // Headers longer than the first chunk: one more round trip for the rest.
            let rest: Vec<u8> = self
                .conn
                .query(
                    redis::cmd("GETRANGE")
                        .arg(&data)
                        .arg(head.len())
                        .arg(body_off - 1),
                )
                .await?;
            head.extend_from_slice(&rest);
            if head.len() < body_off {
                return Ok(None);
            }
        }
        let meta = CacheMeta::deserialize(&head[HEAD..HEAD + li], &head[HEAD + li..body_off])
            .map_err(|e| corrupt(&e.to_string()))?;
        let body_len = len - body_off;
        let head = Bytes::from(head).slice(body_off..);
        Ok(Some((
            meta,
            Box::new(Hit {
                storage: self,
                data,
                body_off,
                body_len,
                head,
                pos: 0,
                end: body_len,
            }),
        )))
    }
}

/// One write of the write script.
struct Write<'a> {
    h: &'a str,
    ttl: Duration,
    origin: Option<&'a Origin>,
    meta: &'a [u8],
    /// None: keep the body of the current object (a meta update).
    body: Option<&'a [u8]>,
}

/// A hit being read: chunks of one (write-once) data key.
struct Hit {
    storage: &'static RedisStorage,
    data: String,
    /// Where the body starts in the data key.
    body_off: usize,
    body_len: usize,
    /// The first body bytes, read with the meta.
    head: Bytes,
    /// The next body byte to return, and the end (exclusive) of what is asked.
    pos: usize,
    end: usize,
}

impl Hit {
    fn read_error(&self, why: &dyn std::fmt::Display) -> Box<Error> {
        self.storage.failed("lookup", why);
        Error::explain(
            ErrorType::InternalError,
            format!("reading a cached body from Redis: {why}"),
        )
    }
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.pos >= self.end {
            return Ok(None);
        }
        if self.pos < self.head.len() {
            let stop = self.end.min(self.head.len());
            let chunk = self.head.slice(self.pos..stop);
            self.pos = stop;
            return Ok(Some(chunk));
        }
        let stop = self.end.min(self.pos.saturating_add(CHUNK));
        let from = self.body_off + self.pos;
        let to = self.body_off + stop - 1;
        let got: Vec<u8> = match self
            .storage
            .conn
            .query(redis::cmd("GETRANGE").arg(&self.data).arg(from).arg(to))
            .await
        {
            Ok(v) => v,
            Err(e) => return Err(self.read_error(&e)),
        };
        if got.len() != stop - self.pos {
            // Data keys are write-once: a short read means it expired under us.
            return Err(self.read_error(&"the object was removed while being read"));
        }
        self.pos = stop;
        Ok(Some(Bytes::from(got)))
    }

    async fn finish(
        self: Box<Self>,
        _: &'static (dyn Storage + Sync),
        _: &CacheKey,
        _: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    /// `end` is exclusive, as Pingora's range filter passes it.
    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        if start >= self.body_len {
            return Error::e_explain(
                ErrorType::InternalError,
                format!("seek start out of range {start} >= {}", self.body_len),
            );
        }
        self.pos = start;
        self.end = end.map_or(self.body_len, |e| e.min(self.body_len));
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.body_len
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// A miss being written: the body is buffered and stored on `finish`.
struct Miss {
    storage: &'static RedisStorage,
    h: String,
    meta: Vec<u8>,
    ttl: Duration,
    origin: Option<Origin>,
    body: Vec<u8>,
}

#[async_trait]
impl HandleMiss for Miss {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let size = self.meta.len() + self.body.len();
        if size as u64 > self.storage.max_bytes {
            return Ok(MissFinishType::Created(0));
        }
        let w = Write {
            h: &self.h,
            ttl: self.ttl,
            origin: self.origin.as_ref(),
            meta: &self.meta,
            body: Some(&self.body),
        };
        // A failed write is only a lost object: counted and logged by `write`.
        let stored = self.storage.write(w, "write").await.unwrap_or(0);
        Ok(MissFinishType::Created(stored))
    }
}

#[async_trait]
impl Storage for RedisStorage {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        match self.try_lookup(key).await {
            Ok(found) => Ok(found),
            Err(e) => {
                self.failed("lookup", &e);
                Ok(None)
            }
        }
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _: &SpanHandle,
    ) -> Result<MissHandler> {
        Ok(Box::new(Miss {
            storage: self,
            h: hex(&key.combined_bin()),
            meta: encode_meta(meta)?,
            ttl: object_ttl(meta, SystemTime::now()),
            origin: key.extensions.get::<KeyOrigin>().map(|o| o.0.clone()),
            body: Vec::new(),
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _kind: PurgeType,
        _: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        // Objects carry no entry ids: an identified target cannot be one of ours.
        if matches!(target, PurgeTarget::Exact(CacheEntryKey::Identified { .. })) {
            return Ok(PurgeOutcome::NotFound);
        }
        let h = hex(&target.key().combined_bin());
        let mut inv = self.purge_one_script.prepare_invoke();
        self.common_args(&mut inv);
        inv.arg(h);
        match self.run::<u8>(&inv, "purge").await {
            Ok(1) => Ok(PurgeOutcome::Purged(None)),
            Ok(_) => Ok(PurgeOutcome::NotFound),
            Err(e) => {
                Error::e_explain(ErrorType::InternalError, format!("purging from Redis: {e}"))
            }
        }
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _: &SpanHandle,
    ) -> Result<bool> {
        let encoded = encode_meta(meta)?;
        let w = Write {
            h: &hex(&key.combined_bin()),
            ttl: object_ttl(meta, SystemTime::now()),
            origin: None,
            meta: &encoded,
            body: None,
        };
        // The revalidated response is served either way; a failed update is counted and
        // logged by `write`, and the next request revalidates again.
        Ok(self.write(w, "update").await.is_ok_and(|n| n > 0))
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::cache::key::hash_key;
    use pingora::cache::trace::Span;
    use pingora::http::ResponseHeader;
    use std::net::{TcpListener, TcpStream};
    use std::process::{Child, Command, Stdio};
    use std::time::Instant;

    const PREFIX: &str = "tollgate:cache";

    /// A `redis-server` of our own on a free port, without persistence; killed on drop.
    struct Redis {
        child: Option<Child>,
        port: u16,
    }

    impl Redis {
        fn start() -> Redis {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("a free port");
            Redis::start_on(port)
        }

        fn start_on(port: u16) -> Redis {
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server must be installed (CI installs it)");
            let deadline = Instant::now() + Duration::from_secs(10);
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "redis-server did not start on {port}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            Redis {
                child: Some(child),
                port,
            }
        }

        fn url(&self) -> String {
            format!("redis://127.0.0.1:{}", self.port)
        }

        fn stop(&mut self) {
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    impl Drop for Redis {
        fn drop(&mut self) {
            self.stop();
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(f)
    }

    fn config(redis: &Redis, max_bytes: u64) -> RedisCacheConfig {
        RedisCacheConfig {
            url: redis.url(),
            timeout: Duration::from_millis(300),
            prefix: PREFIX.to_string(),
            max_bytes,
        }
    }

    fn storage(redis: &Redis, max_bytes: u64) -> &'static RedisStorage {
        RedisStorage::shared(&SharedState::new(), &config(redis, max_bytes)).expect("valid URL")
    }

    /// A key of `variant` of `url` (route + host + path) on `route`, as the key builder makes.
    fn key(route: &str, path: &str, variant: &str) -> CacheKey {
        let url = format!("{route}|example.com|{path}");
        let mut key = CacheKey::new(format!("{url}|{variant}"), "");
        key.extensions.insert(KeyOrigin(Origin {
            route: route.to_string(),
            url: hash_key(&url),
            path: path.to_string(),
        }));
        key
    }

    fn meta(fresh: Duration, tag: &str) -> CacheMeta {
        meta_with(fresh, tag, None)
    }

    fn meta_with(fresh: Duration, tag: &str, extra: Option<(&'static str, String)>) -> CacheMeta {
        let now = SystemTime::now();
        let mut header = ResponseHeader::build(200, None).expect("header");
        header.insert_header("x-tag", tag).expect("header value");
        header
            .insert_header("content-type", "text/plain")
            .expect("header value");
        if let Some((name, value)) = extra {
            header.insert_header(name, value).expect("header value");
        }
        CacheMeta::new(now + fresh, now, 5, 30, header)
    }

    fn tag(meta: &CacheMeta) -> String {
        meta.headers()
            .get("x-tag")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }

    fn body(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8 ^ seed).collect()
    }

    fn span() -> SpanHandle {
        Span::inactive().handle()
    }

    async fn store(
        s: &'static RedisStorage,
        key: &CacheKey,
        meta: &CacheMeta,
        body: &[u8],
    ) -> usize {
        let mut miss = s
            .get_miss_handler(key, meta, &span())
            .await
            .expect("miss handler");
        for part in body.chunks(16 * 1024) {
            miss.write_body(Bytes::copy_from_slice(part), false)
                .await
                .expect("write_body never fails");
        }
        match miss.finish().await.expect("finish never fails") {
            MissFinishType::Created(n) => n,
            MissFinishType::Appended(n, _) => n,
        }
    }

    async fn lookup(s: &'static RedisStorage, key: &CacheKey) -> Option<(CacheMeta, HitHandler)> {
        s.lookup(key, &span()).await.expect("lookup never fails")
    }

    /// The whole body of a hit, and in how many chunks it came.
    async fn read_all(hit: &mut HitHandler) -> (Vec<u8>, usize) {
        let (mut out, mut chunks) = (Vec::new(), 0);
        while let Some(b) = hit.read_body().await.expect("read_body") {
            out.extend_from_slice(&b);
            chunks += 1;
        }
        (out, chunks)
    }

    async fn raw(redis: &Redis) -> redis::aio::MultiplexedConnection {
        redis::Client::open(redis.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect")
    }

    async fn keys(conn: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
        let (mut cursor, mut out) = (0u64, Vec::new());
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{PREFIX}:*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(conn)
                .await
                .expect("scan");
            out.extend(batch);
            if next == 0 {
                return out;
            }
            cursor = next;
        }
    }

    async fn pttl(conn: &mut redis::aio::MultiplexedConnection, k: &str) -> i64 {
        redis::cmd("PTTL")
            .arg(k)
            .query_async(conn)
            .await
            .expect("pttl")
    }

    async fn counted(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
        let n: Option<u64> = redis::cmd("GET")
            .arg(format!("{PREFIX}:bytes"))
            .query_async(conn)
            .await
            .expect("get");
        n.unwrap_or(0)
    }

    fn errors(op: &str) -> u64 {
        METRICS
            .cache_store_errors
            .with_label_values(&[STORAGE_LABEL, op])
            .get()
    }

    #[test]
    fn a_stored_object_is_a_hit_read_in_chunks_and_by_range() {
        let redis = Redis::start();
        let s = storage(&redis, 64 << 20);
        block_on(async {
            let k = key("r", "/a", "");
            assert!(lookup(s, &k).await.is_none(), "nothing stored yet");
            let m = meta(Duration::from_secs(100), "one");
            let stored = store(s, &k, &m, b"hello").await;
            assert!(stored > 5, "meta and body counted: {stored}");
            let (got, mut hit) = lookup(s, &k).await.expect("a hit");
            assert_eq!(tag(&got), "one");
            assert_eq!(got.fresh_until(), m.fresh_until());
            assert_eq!(got.created(), m.created());
            assert_eq!(got.stale_while_revalidate_sec(), 5);
            assert_eq!(got.stale_if_error_sec(), 30);
            assert_eq!(got.response_header().status, 200);
            assert_eq!(read_all(&mut hit).await.0, b"hello");
            hit.finish(s, &k, &span()).await.expect("finish");

            // 200 KiB: the first chunk comes with the meta, the rest in 64 KiB reads.
            let big = body(200 * 1024, 7);
            let k = key("r", "/big", "");
            store(s, &k, &meta(Duration::from_secs(100), "big"), &big).await;
            let (_, mut hit) = lookup(s, &k).await.expect("a hit");
            assert_eq!(hit.get_eviction_weight(), big.len());
            let (got, chunks) = read_all(&mut hit).await;
            assert!(got == big, "the same 200 KiB body");
            assert!(chunks >= 4, "read in {chunks} chunks");

            // Ranges (end exclusive, as Pingora's range filter passes it).
            assert!(hit.can_seek());
            hit.seek(70_000, Some(140_000)).expect("seek");
            assert!(read_all(&mut hit).await.0 == big[70_000..140_000]);
            hit.seek(10, Some(20)).expect("seek in the first chunk");
            assert_eq!(read_all(&mut hit).await.0, big[10..20]);
            hit.seek(big.len() - 3, None).expect("seek to the end");
            assert_eq!(read_all(&mut hit).await.0, big[big.len() - 3..]);
            hit.seek(150_000, Some(10 << 20))
                .expect("an end past the body");
            assert!(read_all(&mut hit).await.0 == big[150_000..]);
            assert!(hit.seek(big.len(), None).is_err(), "start past the body");

            // An overwrite does not cut a reader of the previous object.
            let (_, mut old) = lookup(s, &k).await.expect("a hit");
            let first = old.read_body().await.expect("read").expect("a chunk");
            let newer = body(100 * 1024, 9);
            store(s, &k, &meta(Duration::from_secs(100), "newer"), &newer).await;
            let mut rest = first.to_vec();
            rest.extend(read_all(&mut old).await.0);
            assert!(rest == big, "the old body, whole");
            let (m, mut hit) = lookup(s, &k).await.expect("a hit");
            assert_eq!(tag(&m), "newer");
            assert!(read_all(&mut hit).await.0 == newer);

            // Headers longer than the first chunk take one more round trip.
            let k = key("r", "/long-headers", "");
            let long = "x".repeat(80 * 1024);
            let m = meta_with(
                Duration::from_secs(100),
                "long",
                Some(("x-long", long.clone())),
            );
            store(s, &k, &m, b"body").await;
            let (got, mut hit) = lookup(s, &k).await.expect("a hit");
            assert_eq!(
                got.headers().get("x-long").map(|v| v.len()),
                Some(long.len())
            );
            assert_eq!(read_all(&mut hit).await.0, b"body");

            // An empty body.
            let k = key("r", "/empty", "");
            store(s, &k, &meta(Duration::from_secs(100), "empty"), b"").await;
            let (_, mut hit) = lookup(s, &k).await.expect("a hit");
            assert_eq!(read_all(&mut hit).await, (Vec::new(), 0));
        });
    }

    #[test]
    fn instances_share_objects_and_purges() {
        let redis = Redis::start();
        let (a, b) = (storage(&redis, 64 << 20), storage(&redis, 64 << 20));
        assert!(!std::ptr::eq(a, b), "two processes' worth of storage");
        block_on(async {
            let m = meta(Duration::from_secs(100), "v");
            // Two variants of one URL, another path on the route, another route.
            let (v1, v2) = (key("r1", "/a", "gzip"), key("r1", "/a", "br"));
            let (other_path, other_route) = (key("r1", "/b", ""), key("r2", "/a", ""));
            for k in [&v1, &v2, &other_path, &other_route] {
                assert!(store(a, k, &m, b"body").await > 0);
            }
            for k in [&v1, &v2, &other_path, &other_route] {
                let (got, mut hit) = lookup(b, k).await.expect("b sees a's object");
                assert_eq!(tag(&got), "v");
                assert_eq!(read_all(&mut hit).await.0, b"body");
            }
            let url = hash_key("r1|example.com|/a");
            assert_eq!(b.purge_url(&url).await, Ok(2), "both variants");
            for s in [a, b] {
                assert!(lookup(s, &v1).await.is_none());
                assert!(lookup(s, &v2).await.is_none());
                assert!(lookup(s, &other_path).await.is_some());
            }
            assert_eq!(a.purge_url(&url).await, Ok(0), "already gone");

            store(b, &v1, &m, b"again").await;
            assert_eq!(a.purge_route("r1", Some("/b")).await, Ok(1), "one path");
            assert!(lookup(b, &other_path).await.is_none());
            assert!(lookup(b, &v1).await.is_some());
            assert_eq!(a.purge_route("r1", None).await, Ok(1), "the rest of r1");
            assert!(lookup(b, &v1).await.is_none());
            assert!(lookup(a, &other_route).await.is_some(), "r2 untouched");
            assert_eq!(a.purge_route("nope", None).await, Ok(0));

            // Pingora's purge of one key.
            let compact = other_route.to_compact();
            let target = PurgeTarget::Active(&compact);
            let first = b.purge(target, PurgeType::Invalidation, &span()).await;
            assert_eq!(first.ok(), Some(PurgeOutcome::Purged(None)));
            assert!(lookup(a, &other_route).await.is_none());
            let again = a.purge(target, PurgeType::Invalidation, &span()).await;
            assert_eq!(again.ok(), Some(PurgeOutcome::NotFound));

            // Nothing is counted once everything is purged.
            let mut conn = raw(&redis).await;
            assert_eq!(counted(&mut conn).await, 0);
        });
    }

    #[test]
    fn update_meta_changes_the_headers_and_keeps_the_body() {
        let redis = Redis::start();
        let s = storage(&redis, 64 << 20);
        block_on(async {
            let k = key("r", "/u", "");
            let big = body(150 * 1024, 3);
            store(s, &k, &meta(Duration::from_secs(10), "old"), &big).await;
            let mut conn = raw(&redis).await;
            let before = counted(&mut conn).await;
            let (_, mut reader) = lookup(s, &k).await.expect("a hit");
            let later = meta(Duration::from_secs(2000), "new");
            assert!(s.update_meta(&k, &later, &span()).await.expect("update"));
            let (got, mut hit) = lookup(s, &k).await.expect("a hit");
            assert_eq!(tag(&got), "new");
            assert_eq!(got.fresh_until(), later.fresh_until());
            assert!(read_all(&mut hit).await.0 == big, "the same body");
            assert!(
                read_all(&mut reader).await.0 == big,
                "a reader of the old meta is not cut"
            );
            assert_eq!(counted(&mut conn).await, before, "same size: same count");
            // The TTL follows the new meta: 2000 s fresh + 30 s stale + 600 s.
            let ttl = pttl(
                &mut conn,
                &format!("{PREFIX}:ptr:{}", hex(&k.combined_bin())),
            )
            .await;
            assert!((2_620_000..=2_630_000).contains(&ttl), "pointer TTL {ttl}");
            // Purged in between: nothing to update.
            let gone = key("r", "/never", "");
            assert!(!s.update_meta(&gone, &later, &span()).await.expect("update"));
            assert!(
                lookup(s, &gone).await.is_none(),
                "an update creates nothing"
            );
        });
    }

    #[test]
    fn every_key_written_has_a_ttl() {
        let redis = Redis::start();
        let s = storage(&redis, 64 << 20);
        block_on(async {
            let a = key("r", "/a", "");
            store(s, &a, &meta(Duration::from_secs(100), "1"), &body(1000, 1)).await;
            store(s, &a, &meta(Duration::from_secs(100), "2"), &body(1000, 2)).await;
            s.update_meta(&a, &meta(Duration::from_secs(50), "3"), &span())
                .await
                .expect("update");
            // Fresh in the past (an object kept only to revalidate), and a day.
            store(s, &key("r", "/b", ""), &meta(Duration::ZERO, "b"), b"b").await;
            let c = key("s", "/c", "");
            store(s, &c, &meta(Duration::from_secs(86_400), "c"), b"c").await;
            store(
                s,
                &key("s", "/d", ""),
                &meta(Duration::from_secs(100), "d"),
                b"d",
            )
            .await;
            let mut plain = key("t", "/", "");
            plain.extensions.clear();
            store(
                s,
                &plain,
                &meta(Duration::from_secs(100), "no origin"),
                b"x",
            )
            .await;
            assert!(lookup(s, &plain).await.is_some(), "stored without indexes");
            s.purge_route("s", Some("/d")).await.expect("purge");
            s.purge_url(&hash_key("r|example.com|/zzz"))
                .await
                .expect("purge");

            let mut conn = raw(&redis).await;
            let all = keys(&mut conn).await;
            assert!(all.len() >= 12, "keys: {all:?}");
            let data_keys = all.iter().filter(|k| k.contains(":data:")).count();
            assert_eq!(data_keys, 7, "4 objects, 2 replaced, 1 purged: {all:?}");
            for k in &all {
                let t = pttl(&mut conn, k).await;
                assert!(t > 0, "{k} has no TTL ({t})");
            }
            // The object TTL rule: fresh + max(stale) + 600 s, at least 60 s (here 630 s for
            // an object stale already), and an index outlives every object it names.
            let ptr = |k: &CacheKey| format!("{PREFIX}:ptr:{}", hex(&k.combined_bin()));
            let b_ttl = pttl(&mut conn, &ptr(&key("r", "/b", ""))).await;
            assert!((620_000..=630_000).contains(&b_ttl), "{b_ttl}");
            let c_ttl = pttl(&mut conn, &ptr(&c)).await;
            assert!((87_020_000..=87_030_000).contains(&c_ttl), "{c_ttl}");
            let route = format!("{PREFIX}:route:{}", route_name("s"));
            assert!(pttl(&mut conn, &route).await >= c_ttl);
            let replaced = all
                .iter()
                .filter(|k| k.contains(":data:"))
                .map(|k| k.to_string())
                .collect::<Vec<_>>();
            let mut short = 0;
            for k in replaced {
                if pttl(&mut conn, &k).await <= ms(LINGER) as i64 {
                    short += 1;
                }
            }
            assert_eq!(short, 3, "replaced and purged data keys linger {LINGER:?}");
        });
    }

    #[test]
    fn past_the_budget_the_objects_closest_to_expiry_are_dropped() {
        let redis = Redis::start();
        let max = 300 * 1024;
        let s = storage(&redis, max);
        block_on(async {
            let mut conn = raw(&redis).await;
            let keys: Vec<CacheKey> = (0..5).map(|i| key("r", &format!("/{i}"), "")).collect();
            for (i, k) in keys.iter().enumerate() {
                // Later objects expire later.
                let fresh = Duration::from_secs(100 + 10 * i as u64);
                assert!(store(s, k, &meta(fresh, "b"), &body(100 * 1024, i as u8)).await > 0);
                assert!(counted(&mut conn).await <= max, "after object {i}");
            }
            let (_, mut hit) = lookup(s, &keys[4]).await.expect("the newest is kept");
            assert!(read_all(&mut hit).await.0 == body(100 * 1024, 4));
            assert!(lookup(s, &keys[3]).await.is_some());
            for k in &keys[..3] {
                assert!(
                    lookup(s, k).await.is_none(),
                    "dropped first: closest to expiry"
                );
            }
            // The objects' sizes add up to the count.
            let sizes: Vec<String> = redis::cmd("HVALS")
                .arg(format!("{PREFIX}:objs"))
                .query_async(&mut conn)
                .await
                .expect("hvals");
            let sum: u64 = sizes
                .iter()
                .filter_map(|r| r.split(' ').next()?.parse::<u64>().ok())
                .sum();
            assert_eq!(sizes.len(), 2);
            assert_eq!(sum, counted(&mut conn).await);
            // Larger than the whole budget: not stored, nothing dropped for it.
            let huge = key("r", "/huge", "");
            assert_eq!(
                store(
                    s,
                    &huge,
                    &meta(Duration::from_secs(900), "h"),
                    &body(301 * 1024, 0)
                )
                .await,
                0
            );
            assert!(lookup(s, &huge).await.is_none());
            assert!(lookup(s, &keys[4]).await.is_some());
        });
    }

    #[test]
    fn a_dead_redis_is_a_miss_and_a_dropped_write_then_recovers() {
        let mut redis = Redis::start();
        let s = storage(&redis, 64 << 20);
        let port = redis.port;
        block_on(async {
            let k = key("r", "/a", "");
            let m = meta(Duration::from_secs(100), "v");
            store(s, &k, &m, b"body").await;
            assert!(lookup(s, &k).await.is_some());
            redis.stop();
            let (lookups, writes, purges) = (errors("lookup"), errors("write"), errors("purge"));
            let t = Instant::now();
            assert!(lookup(s, &k).await.is_none(), "a miss, not an error");
            assert_eq!(store(s, &k, &m, b"body").await, 0, "dropped, not an error");
            assert!(s.purge_url(&hash_key("r|example.com|/a")).await.is_err());
            for _ in 0..20 {
                assert!(lookup(s, &k).await.is_none());
            }
            assert!(
                t.elapsed() < Duration::from_millis(600),
                "{:?}",
                t.elapsed()
            );
            assert!(errors("lookup") >= lookups + 21);
            assert!(errors("write") > writes);
            assert!(errors("purge") > purges);

            // Back on the same port (empty): working again within about a second.
            let _redis = Redis::start_on(port);
            let t = Instant::now();
            loop {
                if store(s, &k, &m, b"back").await > 0 {
                    if let Some((_, mut hit)) = lookup(s, &k).await {
                        assert_eq!(read_all(&mut hit).await.0, b"back");
                        break;
                    }
                }
                assert!(t.elapsed() < Duration::from_secs(3), "did not reconnect");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(
                t.elapsed() < Duration::from_millis(2000),
                "{:?}",
                t.elapsed()
            );
        });
    }

    #[test]
    fn a_redis_slower_than_the_timeout_is_a_miss() {
        let redis = Redis::start();
        let s = storage(&redis, 64 << 20);
        block_on(async {
            let k = key("r", "/slow", "");
            let m = meta(Duration::from_secs(100), "v");
            store(s, &k, &m, b"body").await;
            let mut conn = raw(&redis).await;
            let () = redis::cmd("CLIENT")
                .arg("PAUSE")
                .arg(1500)
                .arg("ALL")
                .query_async(&mut conn)
                .await
                .expect("pause");
            let lookups = errors("lookup");
            let t = Instant::now();
            assert!(lookup(s, &k).await.is_none(), "a miss, not an error");
            assert!(
                t.elapsed() < Duration::from_millis(500),
                "{:?}",
                t.elapsed()
            );
            assert!(errors("lookup") > lookups);
            // The pause ends; the storage is back soon after (at most one connect a second).
            loop {
                if lookup(s, &k).await.is_some() {
                    break;
                }
                assert!(t.elapsed() < Duration::from_secs(4), "did not recover");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }

    #[test]
    fn an_invalid_url_is_an_error() {
        let cfg = RedisCacheConfig {
            url: "nope://".to_string(),
            timeout: Duration::from_millis(100),
            prefix: PREFIX.to_string(),
            max_bytes: 1,
        };
        assert!(RedisStorage::shared(&SharedState::new(), &cfg).is_err());
        let state = SharedState::new();
        let cfg = RedisCacheConfig {
            url: "redis://127.0.0.1:1".to_string(),
            ..cfg
        };
        let a = RedisStorage::shared(&state, &cfg).expect("valid");
        assert!(std::ptr::eq(
            a,
            RedisStorage::shared(&state, &cfg).expect("valid")
        ));
        let other = RedisCacheConfig {
            max_bytes: 2,
            ..cfg.clone()
        };
        assert!(!std::ptr::eq(
            a,
            RedisStorage::shared(&state, &other).expect("valid")
        ));
    }

    #[test]
    fn object_ttl_rule() {
        let now = SystemTime::now();
        let header = || ResponseHeader::build(200, None).expect("header");
        let m = |fresh: u64, swr, sie| {
            CacheMeta::new(now + Duration::from_secs(fresh), now, swr, sie, header())
        };
        assert_eq!(object_ttl(&m(100, 5, 30), now), Duration::from_secs(730));
        assert_eq!(object_ttl(&m(100, 50, 30), now), Duration::from_secs(750));
        let stale = CacheMeta::new(now - Duration::from_secs(5000), now, 0, 0, header());
        assert_eq!(object_ttl(&stale, now), Duration::from_secs(600));
        assert_eq!(object_ttl(&m(100 * 86_400, 0, 0), now), MAX_TTL);
        assert!(object_ttl(&m(0, 0, 0), now) >= MIN_TTL);
    }
}

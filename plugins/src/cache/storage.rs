//! The in-memory cache storage: whole objects in sharded maps, a byte budget enforced by
//! Pingora's LRU eviction manager, and indexes so a URL (all its variants) or a route can be
//! purged at once. One per process ([`CacheStore::of`]): Pingora holds it by `'static`
//! reference, and it outlives config reloads.
//!
//! Objects are stored when their body is complete (no reading of partial writes): concurrent
//! misses for one key wait on the cache lock and are then served from the stored object.

use crate::state::SharedState;
use crate::sync::{read, write};
use async_trait::async_trait;
use bytes::Bytes;
use pingora::cache::eviction::lru::Manager as LruManager;
use pingora::cache::eviction::{CacheEntryKey, EvictionManager};
use pingora::cache::key::{CacheHashKey, CompactCacheKey, HashBinary};
use pingora::cache::lock::CacheLock;
use pingora::cache::storage::{HandleHit, HandleMiss, MissFinishType, PurgeOutcome, PurgeTarget};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheKey, CacheMeta, HitHandler, MissHandler, PurgeType, Storage};
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType, Result};
use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

const SHARDS: usize = 16;

/// Where an object belongs: which route and which URL (for purges).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    /// Route name.
    pub route: String,
    /// Hash of route + host + path (+ query): all variants and methods of one URL.
    pub url: HashBinary,
    /// The request path (for admin purges by path).
    pub path: String,
}

/// Set on a [`CacheKey`]'s extensions by the key builder, read when storing.
#[derive(Clone, Debug)]
pub struct KeyOrigin(pub Origin);

struct Object {
    meta: (Vec<u8>, Vec<u8>),
    body: Bytes,
    origin: Option<Origin>,
    compact: CompactCacheKey,
    /// The object ready to serve as a fresh hit without Pingora's cache phases.
    fresh: Option<Arc<FreshCopy>>,
}

/// The header saying what the cache did, Kong's and nginx's spelling (`HIT`, `MISS`, ...).
pub const X_CACHE_STATUS: &str = "x-cache-status";
/// The RFC 9211 header saying what the cache did.
pub const CACHE_STATUS: &str = "cache-status";
/// The values of [`X_CACHE_STATUS`] and [`CACHE_STATUS`] on a fresh hit.
pub const HIT_STATUS: (&str, &str) = ("HIT", "tollgate; hit");

/// A stored response as a fresh hit needs it: the head (without `Age`), the body, and when
/// its freshness ends and its age began. Only objects without variants (no `Vary`) have
/// one, so the key alone finds the right copy.
#[derive(Debug)]
pub struct FreshCopy {
    /// The stored response head, already saying `X-Cache-Status: HIT` and
    /// `Cache-Status: tollgate; hit` (a fresh copy only ever answers hits).
    pub header: ResponseHeader,
    /// Its `Date` as an IMF-fixdate, when it has a valid one (made once, when stored).
    pub date: Option<http::HeaderValue>,
    /// The stored body.
    pub body: Bytes,
    /// Fresh strictly before this instant.
    pub fresh_until: SystemTime,
    /// Its age counts from here (the arrival age included).
    pub epoch: SystemTime,
}

/// The head and timing of `meta`, when its object can be a fast fresh hit.
fn fresh_parts(meta: &CacheMeta) -> Option<(ResponseHeader, SystemTime, SystemTime)> {
    let header = meta.response_header();
    if meta.variance().is_some() || header.headers.contains_key(http::header::VARY) {
        return None;
    }
    Some((header.clone(), meta.fresh_until(), meta.epoch()))
}

/// The fresh copy of an object with this head and timing (from [`fresh_parts`]) and body.
fn fresh_copy(
    parts: Option<(ResponseHeader, SystemTime, SystemTime)>,
    body: &Bytes,
) -> Option<Arc<FreshCopy>> {
    parts.map(|(mut header, fresh_until, epoch)| {
        let (x, rfc) = HIT_STATUS;
        let _ = header.insert_header(X_CACHE_STATUS, http::HeaderValue::from_static(x));
        let _ = header.insert_header(CACHE_STATUS, http::HeaderValue::from_static(rfc));
        // Made an IMF-fixdate once here, so serving it needs no parsing.
        let date = header
            .headers
            .get(http::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|d| httpdate::parse_http_date(d).ok())
            .and_then(|t| http::HeaderValue::from_str(&httpdate::fmt_http_date(t)).ok());
        Arc::new(FreshCopy {
            header,
            date,
            body: body.clone(),
            fresh_until,
            epoch,
        })
    })
}

impl Object {
    fn size(&self) -> usize {
        self.meta.0.len() + self.meta.1.len() + self.body.len()
    }
}

/// The storage.
pub struct MemStorage {
    shards: Vec<RwLock<HashMap<HashBinary, Object>>>,
    by_url: RwLock<HashMap<HashBinary, HashSet<HashBinary>>>,
    bytes: AtomicUsize,
    objects: AtomicUsize,
    evictions: AtomicU64,
    /// The byte budget: least recently used objects are evicted past it.
    eviction: LruManager<EVICTION_SHARDS>,
}

/// One LRU list: Pingora's sharded manager evicts from randomly chosen shards, which is not
/// "least recently used first" as documented; the workers are few, so one lock is cheap.
const EVICTION_SHARDS: usize = 1;
/// Objects the eviction manager makes room for up front.
const EVICTION_CAPACITY: usize = 8192;
/// Longest a cache lock is held by a fetch before waiting requests go to the origin.
const LOCK_AGE_TIMEOUT: Duration = Duration::from_secs(10);

/// The response cache of the process: storage, eviction and the lock that coalesces misses.
pub struct CacheStore {
    /// Objects and their indexes.
    pub storage: MemStorage,
    /// Concurrent misses of one key wait for the first (bounded by the age timeout).
    pub lock: Box<CacheLock>,
}

impl CacheStore {
    /// The process's cache (made on first use, then kept for the life of the process).
    pub fn of(state: &SharedState) -> &'static CacheStore {
        state.process_wide(|| CacheStore {
            storage: MemStorage {
                shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
                by_url: RwLock::new(HashMap::new()),
                bytes: AtomicUsize::new(0),
                objects: AtomicUsize::new(0),
                evictions: AtomicU64::new(0),
                eviction: LruManager::with_capacity(DEFAULT_MAX_BYTES, EVICTION_CAPACITY),
            },
            lock: CacheLock::new_boxed(LOCK_AGE_TIMEOUT),
        })
    }

    /// The eviction manager (for Pingora's cache phases).
    pub fn eviction(&self) -> &LruManager<EVICTION_SHARDS> {
        &self.storage.eviction
    }

    /// Set the byte budget (`[server] cache_max_bytes`).
    pub fn set_budget(&self, bytes: usize) {
        self.storage.eviction.set_weight_limit(bytes);
    }
}

/// The cached objects of one route, held by its cache policy: when a reload removes the
/// route (and the [`SharedState`] is pruned), its objects are purged.
pub struct CacheScope {
    route: String,
    store: &'static CacheStore,
}

impl CacheScope {
    /// The scope of `route` in the process's cache.
    pub fn of(state: &SharedState, route: &str) -> Arc<CacheScope> {
        let store = CacheStore::of(state);
        state.get_or_insert(&format!("cache:{route}"), || CacheScope {
            route: route.to_string(),
            store,
        })
    }

    /// The store this scope's objects live in.
    pub fn store(&self) -> &'static CacheStore {
        self.store
    }
}

impl Drop for CacheScope {
    fn drop(&mut self) {
        self.store.storage.purge_route(&self.route, None);
    }
}

/// Default byte budget (`[server] cache_max_bytes`).
pub const DEFAULT_MAX_BYTES: usize = 128 * 1024 * 1024;

impl MemStorage {
    fn shard(&self, k: &HashBinary) -> &RwLock<HashMap<HashBinary, Object>> {
        &self.shards[k[0] as usize % SHARDS]
    }

    /// Bytes stored (bodies and metadata).
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Objects stored.
    pub fn objects(&self) -> usize {
        self.objects.load(Ordering::Relaxed)
    }

    /// Objects evicted to stay within the budget, since start.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    fn insert(&self, combined: HashBinary, obj: Object) {
        if let Some(o) = &obj.origin {
            write(&self.by_url)
                .entry(o.url)
                .or_default()
                .insert(combined);
        }
        let size = obj.size();
        let old = write(self.shard(&combined)).insert(combined, obj);
        self.bytes.fetch_add(size, Ordering::Relaxed);
        match old {
            Some(o) => {
                self.bytes.fetch_sub(o.size(), Ordering::Relaxed);
            }
            None => {
                self.objects.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn remove(&self, combined: &HashBinary) -> Option<Object> {
        let obj = write(self.shard(combined)).remove(combined)?;
        self.bytes.fetch_sub(obj.size(), Ordering::Relaxed);
        self.objects.fetch_sub(1, Ordering::Relaxed);
        if let Some(o) = &obj.origin {
            let mut idx = write(&self.by_url);
            if let Some(set) = idx.get_mut(&o.url) {
                set.remove(combined);
                if set.is_empty() {
                    idx.remove(&o.url);
                }
            }
        }
        Some(obj)
    }

    /// Remove objects and tell the eviction manager; returns how many were removed.
    fn remove_all(&self, keys: impl IntoIterator<Item = HashBinary>) -> usize {
        let mut n = 0;
        for k in keys {
            if let Some(obj) = self.remove(&k) {
                let entry = CacheEntryKey::key_only(obj.compact);
                self.eviction.remove((&entry).into());
                n += 1;
            }
        }
        n
    }

    /// The fresh copy stored under `key` (a key without variance), if it is fresh at `now`;
    /// counts as a use for the LRU budget, as a hit through Pingora's phases does.
    pub fn fresh_copy(&self, key: &HashBinary, now: SystemTime) -> Option<Arc<FreshCopy>> {
        let (copy, compact, size) = {
            let shard = read(self.shard(key));
            let o = shard.get(key)?;
            let copy = o.fresh.as_ref().filter(|f| now < f.fresh_until)?.clone();
            (copy, o.compact.clone(), o.body.len())
        };
        let entry = CacheEntryKey::key_only(compact);
        self.eviction.access(&entry, size, copy.fresh_until);
        Some(copy)
    }

    /// Purge every variant of one URL (unsafe methods, `PURGE`, admin by URL).
    pub fn purge_url(&self, url: &HashBinary) -> usize {
        let keys: Vec<HashBinary> = read(&self.by_url)
            .get(url)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        self.remove_all(keys)
    }

    /// Purge every object of a route, or only those of one path on it (admin).
    pub fn purge_route(&self, route: &str, path: Option<&str>) -> usize {
        let mut keys = Vec::new();
        for shard in &self.shards {
            keys.extend(
                read(shard)
                    .iter()
                    .filter(|(_, o)| {
                        o.origin
                            .as_ref()
                            .is_some_and(|x| x.route == route && path.is_none_or(|p| x.path == p))
                    })
                    .map(|(k, _)| *k),
            );
        }
        self.remove_all(keys)
    }
}

struct Hit {
    body: Bytes,
    done: bool,
    range: (usize, usize),
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.range.0..self.range.1)))
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

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let len = self.body.len();
        if start >= len && len > 0 {
            return Error::e_explain(ErrorType::InternalError, "seek start out of range");
        }
        // Pingora passes the end exclusive (a `Range<usize>`'s end).
        self.range = (start, end.map_or(len, |e| e.min(len)));
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.body.len()
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

struct Miss {
    storage: &'static MemStorage,
    combined: HashBinary,
    compact: CompactCacheKey,
    meta: (Vec<u8>, Vec<u8>),
    fresh: Option<(ResponseHeader, SystemTime, SystemTime)>,
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
        let body = Bytes::from(self.body);
        let fresh = fresh_copy(self.fresh, &body);
        let obj = Object {
            meta: self.meta,
            body,
            origin: self.origin,
            compact: self.compact,
            fresh,
        };
        let size = obj.size();
        self.storage.insert(self.combined, obj);
        Ok(MissFinishType::Created(size))
    }
}

#[async_trait]
impl Storage for MemStorage {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let combined = key.combined_bin();
        let found = read(self.shard(&combined))
            .get(&combined)
            .map(|o| (o.meta.clone(), o.body.clone()));
        let Some((meta, body)) = found else {
            return Ok(None);
        };
        let meta = CacheMeta::deserialize(&meta.0, &meta.1)?;
        let len = body.len();
        Ok(Some((
            meta,
            Box::new(Hit {
                body,
                done: false,
                range: (0, len),
            }),
        )))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _: &SpanHandle,
    ) -> Result<MissHandler> {
        Ok(Box::new(Miss {
            storage: self,
            combined: key.combined_bin(),
            compact: key.to_compact(),
            meta: meta.serialize()?,
            fresh: fresh_parts(meta),
            origin: key.extensions.get::<KeyOrigin>().map(|o| o.0.clone()),
            body: Vec::new(),
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        kind: PurgeType,
        _: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        // Objects carry no entry ids: an identified target cannot be one of ours.
        if matches!(target, PurgeTarget::Exact(CacheEntryKey::Identified { .. })) {
            return Ok(PurgeOutcome::NotFound);
        }
        let combined = target.key().combined_bin();
        match self.remove(&combined) {
            Some(_) => {
                if matches!(kind, PurgeType::Eviction) {
                    self.evictions.fetch_add(1, Ordering::Relaxed);
                }
                Ok(PurgeOutcome::Purged(None))
            }
            None => Ok(PurgeOutcome::NotFound),
        }
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _: &SpanHandle,
    ) -> Result<bool> {
        let combined = key.combined_bin();
        let serialized = meta.serialize()?;
        let mut shard = write(self.shard(&combined));
        match shard.get_mut(&combined) {
            Some(o) => {
                let before = o.size();
                o.meta = serialized;
                o.fresh = fresh_copy(fresh_parts(meta), &o.body);
                let after = o.size();
                self.bytes.fetch_add(after, Ordering::Relaxed);
                self.bytes.fetch_sub(before, Ordering::Relaxed);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

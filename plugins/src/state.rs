//! State that outlives a config reload, with one owner.
//!
//! A reload builds every plugin anew, but some of what plugins hold must carry over: rate-limit
//! counters, JWKS documents fetched from a URL, connections to Redis, the response cache. The
//! gateway keeps one [`SharedState`] for the life of the process and hands it to every
//! constructor through [`BuildCtx::state`](crate::BuildCtx::state). A constructor asks it for
//! its piece by type and a stable key ([`SharedState::get_or_insert`]): the same definition
//! after a reload finds the same piece, a new one gets a fresh piece.
//!
//! After each successful swap the gateway calls [`SharedState::prune`]: a piece that no
//! compiled plugin holds any more (its route or limit was removed or redefined) is dropped, so
//! the state of scopes that no longer exist does not pile up. Requests still running on the
//! old config keep what they hold until they end.
//!
//! A few pieces must live as long as the process because Pingora holds them by `'static`
//! reference (the response cache's storage): [`SharedState::process_wide`] makes such a piece
//! once per state, [`SharedState::process_wide_keyed`] once per key, and neither is pruned.

use crate::sync::lock;
use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

type Entries = HashMap<(TypeId, String), Arc<dyn Any + Send + Sync>>;

/// The process-wide pieces of one type by key ([`SharedState::process_wide_keyed`]).
struct Keyed<T: 'static>(Mutex<HashMap<String, &'static T>>);

/// The process's reload-surviving state (see the module documentation).
#[derive(Default)]
pub struct SharedState {
    entries: Mutex<Entries>,
    process_wide: Mutex<HashMap<TypeId, &'static (dyn Any + Send + Sync)>>,
}

impl SharedState {
    /// A new, empty state (one per process; tests make their own).
    pub fn new() -> Arc<Self> {
        Arc::new(SharedState::default())
    }

    /// The piece of type `T` stored under `key`, made by `init` if there is none.
    pub fn get_or_insert<T: Send + Sync + 'static>(
        &self,
        key: &str,
        init: impl FnOnce() -> T,
    ) -> Arc<T> {
        match self.try_get_or_insert(key, || Ok::<T, std::convert::Infallible>(init())) {
            Ok(v) => v,
            Err(never) => match never {},
        }
    }

    /// Like [`SharedState::get_or_insert`], for a piece whose making can fail (nothing is
    /// stored then).
    pub fn try_get_or_insert<T: Send + Sync + 'static, E>(
        &self,
        key: &str,
        init: impl FnOnce() -> Result<T, E>,
    ) -> Result<Arc<T>, E> {
        let mut entries = lock(&self.entries);
        let slot = (TypeId::of::<T>(), key.to_string());
        if let Some(found) = entries.get(&slot) {
            if let Ok(v) = found.clone().downcast::<T>() {
                return Ok(v);
            }
        }
        let value = Arc::new(init()?);
        entries.insert(slot, value.clone());
        Ok(value)
    }

    /// The one piece of type `T` that lives as long as the process, made by `init` on first
    /// use (and then leaked: there is one per state, and one state per process).
    pub fn process_wide<T: Send + Sync + 'static>(&self, init: impl FnOnce() -> T) -> &'static T {
        let mut pieces = lock(&self.process_wide);
        if let Some(found) = pieces.get(&TypeId::of::<T>()) {
            if let Some(v) = found.downcast_ref::<T>() {
                return v;
            }
        }
        let leaked: &'static T = Box::leak(Box::new(init()));
        pieces.insert(TypeId::of::<T>(), leaked);
        leaked
    }

    /// The piece of type `T` stored under `key` that lives as long as the process, made by
    /// `init` on first use (nothing is stored if it fails). Unlike [`SharedState::process_wide`]
    /// there is one per distinct (type, key), for pieces Pingora holds by `'static` reference
    /// but that differ by config (a shared cache storage per Redis URL and budget).
    ///
    /// Every piece made is leaked and never pruned: the count is bounded by the distinct
    /// configs a process sees, so callers key by definition, never by request data. `init`
    /// must not ask for another keyed piece of the same type (the type's lock is held).
    pub fn process_wide_keyed<T: Send + Sync + 'static, E>(
        &self,
        key: &str,
        init: impl FnOnce() -> Result<T, E>,
    ) -> Result<&'static T, E> {
        let keyed: &'static Keyed<T> = self.process_wide(|| Keyed(Mutex::new(HashMap::new())));
        let mut pieces = lock(&keyed.0);
        if let Some(found) = pieces.get(key) {
            return Ok(found);
        }
        let leaked: &'static T = Box::leak(Box::new(init()?));
        pieces.insert(key.to_string(), leaked);
        Ok(leaked)
    }

    /// The process-wide piece of type `T`, if one was made.
    pub fn process_wide_if_made<T: Send + Sync + 'static>(&self) -> Option<&'static T> {
        lock(&self.process_wide)
            .get(&TypeId::of::<T>())
            .and_then(|v| v.downcast_ref::<T>())
    }

    /// Drop every piece nothing else holds; returns how many were dropped.
    pub fn prune(&self) -> usize {
        // Taken out under the lock, dropped after it: a piece's `Drop` may do work.
        let dropped: Vec<Arc<dyn Any + Send + Sync>> = {
            let mut entries = lock(&self.entries);
            let unused: Vec<(TypeId, String)> = entries
                .iter()
                .filter(|(_, v)| Arc::strong_count(v) == 1)
                .map(|(k, _)| k.clone())
                .collect();
            unused
                .into_iter()
                .filter_map(|k| entries.remove(&k))
                .collect()
        };
        dropped.len()
    }

    /// How many pieces are held.
    pub fn len(&self) -> usize {
        lock(&self.entries).len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_same_piece_until_pruned() {
        let s = SharedState::new();
        let a = s.get_or_insert("x", || 1u32);
        let b = s.get_or_insert("x", || 2u32);
        assert!(Arc::ptr_eq(&a, &b));
        // Another type under the same key is another piece.
        let c = s.get_or_insert("x", || "other".to_string());
        assert_eq!(*c, "other");
        assert_eq!(s.len(), 2);
        drop(c);
        assert_eq!(s.prune(), 1, "the string is held by no one");
        assert_eq!(s.prune(), 0, "a and b still hold the number");
        drop((a, b));
        assert_eq!(s.prune(), 1);
        assert!(s.is_empty());
        assert_eq!(
            *s.get_or_insert("x", || 3u32),
            3,
            "a fresh piece after pruning"
        );
        let failed: Result<Arc<u8>, &str> = s.try_get_or_insert("y", || Err("no"));
        assert!(failed.is_err());
        assert_eq!(s.len(), 1, "only the number: a failed init stores nothing");
    }

    #[test]
    fn process_wide_pieces_are_made_once() {
        let s = SharedState::new();
        assert!(s.process_wide_if_made::<u64>().is_none());
        let a: &'static u64 = s.process_wide(|| 7);
        let b: &'static u64 = s.process_wide(|| 8);
        assert!(std::ptr::eq(a, b));
        assert_eq!(s.prune(), 0);
        assert_eq!(s.process_wide_if_made::<u64>(), Some(&7));
    }

    #[test]
    fn process_wide_keyed_pieces_are_made_once_per_key() {
        let s = SharedState::new();
        let a: &'static u64 = s.process_wide_keyed("a", || Ok::<_, ()>(1)).unwrap();
        let again: &'static u64 = s.process_wide_keyed("a", || Ok::<_, ()>(2)).unwrap();
        assert!(std::ptr::eq(a, again));
        let b: &'static u64 = s.process_wide_keyed("b", || Ok::<_, ()>(3)).unwrap();
        assert_eq!((*a, *b), (1, 3));
        let failed: Result<&u64, &str> = s.process_wide_keyed("c", || Err("no"));
        assert!(failed.is_err());
        assert_eq!(*s.process_wide_keyed("c", || Ok::<_, ()>(4)).unwrap(), 4);
        // Another type under the same key is another piece; nothing here is pruned.
        let t: &'static String = s
            .process_wide_keyed("a", || Ok::<_, ()>("x".into()))
            .unwrap();
        assert_eq!(t, "x");
        assert_eq!(s.prune(), 0);
    }
}

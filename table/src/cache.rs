//! A process-wide cache of small extents and manifests, held in memory, so that no query (or
//! compaction) fetches the same small extent from object storage twice, and a CDC worker
//! reads back the manifest it stored last without a round trip. Its eviction policy,
//! [`SegmentedLru`], also holds a query node's decoded columns ([`crate::columns`]).
//!
//! # Why it is safe
//!
//! Extents and manifests are immutable: each is written once under a fresh UUIDv7 path
//! ([`crate::ExtentStore::new_extent_path`], [`crate::ExtentStore::new_manifest_path`]) and
//! never rewritten; garbage collection deletes objects nothing references any more, so no
//! reader asks for them again. A cached copy is therefore always the object's only content.
//!
//! # What it holds
//!
//! Whole extents of at most [`ExtentCache::max_object`] bytes — delta extents, the ones that
//! pile up between compactions (before the cache, each query fetched every delta extent of
//! the table again, twice), and on a query node the tables it reads — up to
//! [`ExtentCache::capacity`] bytes in all. Larger extents are read by range, uncached: their
//! row groups are pruned and read selectively.
//!
//! # Scans larger than the cache
//!
//! A plain least-recently-used cache keeps nothing when scans read more than it holds: every
//! object leaves before it is read again. So an object enters **on probation** and moves to
//! the **protected** part (at most [`PROTECTED_SHARE`] of the capacity, its least recently
//! used object going back on probation) when read again; room is made by dropping the least
//! recently used object on probation first. Repeated scans larger than the cache then keep
//! hitting the protected part instead of churning all of it.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

use bytes::Bytes;
use object_store::path::Path;

/// Bytes cached per process when not configured.
pub const DEFAULT_CAPACITY: u64 = 128 * 1024 * 1024;

/// Extents larger than this are never cached when not configured.
pub const DEFAULT_MAX_OBJECT: u64 = 8 * 1024 * 1024;

/// A query node's capacity when not configured (`--extent-cache-mb`), in MiB: the tables
/// it reads, kept across queries.
pub const QUERY_NODE_CAPACITY_MB: u64 = 512;

/// A query node's largest cached extent when not configured
/// (`--extent-cache-max-object-mb`), in MiB.
pub const QUERY_NODE_MAX_OBJECT_MB: u64 = 64;

/// The share of the capacity objects read more than once may hold (see the module doc).
pub const PROTECTED_SHARE: f64 = 0.8;

/// The cache of extents and manifests (see the module doc).
pub type ExtentCache = SegmentedLru<Path, Bytes>;

/// What a cached value costs, in bytes of memory.
pub trait Weighed {
    /// Its size in bytes.
    fn weight(&self) -> u64;
}

impl Weighed for Bytes {
    fn weight(&self) -> u64 {
        self.len() as u64
    }
}

/// A size-bounded cache of immutable values, evicting as the module doc describes.
#[derive(Debug)]
pub struct SegmentedLru<K, V> {
    capacity: u64,
    max_object: u64,
    inner: Mutex<Entries<K, V>>,
}

#[derive(Debug)]
struct Entries<K, V> {
    by_key: HashMap<K, Entry<V>>,
    bytes: u64,
    protected_bytes: u64,
    clock: u64,
}

#[derive(Debug)]
struct Entry<V> {
    value: V,
    /// The clock at its last use.
    used: u64,
    /// Read again since it entered (see the module doc).
    protected: bool,
}

impl<K: Hash + Eq + Clone, V: Weighed + Clone> Entries<K, V> {
    /// The least recently used object, on probation if any is.
    fn victim(&self, protected: bool) -> Option<K> {
        self.by_key
            .iter()
            .filter(|(_, e)| e.protected == protected)
            .min_by_key(|(_, e)| e.used)
            .map(|(key, _)| key.clone())
    }

    fn remove(&mut self, key: &K) {
        if let Some(entry) = self.by_key.remove(key) {
            let size = entry.value.weight();
            self.bytes -= size;
            if entry.protected {
                self.protected_bytes -= size;
            }
        }
    }
}

impl<K: Hash + Eq + Clone, V: Weighed + Clone> SegmentedLru<K, V> {
    /// A cache of up to `capacity` bytes holding values of at most `max_object` bytes
    /// (a capacity of 0 caches nothing).
    pub fn new(capacity: u64, max_object: u64) -> Self {
        Self {
            capacity,
            max_object: max_object.min(capacity),
            inner: Mutex::new(Entries {
                by_key: HashMap::new(),
                bytes: 0,
                protected_bytes: 0,
                clock: 0,
            }),
        }
    }

    /// The bytes it may hold.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The largest value it holds.
    pub fn max_object(&self) -> u64 {
        self.max_object
    }

    /// Whether a value of `size` bytes would be held.
    pub fn takes(&self, size: u64) -> bool {
        size > 0 && size <= self.max_object
    }

    /// Whether a value is held for `key` (not a use: nothing moves).
    pub fn contains(&self, key: &K) -> bool {
        self.lock().by_key.contains_key(key)
    }

    /// The value held for `key`, if any.
    pub fn get(&self, key: &K) -> Option<V> {
        let mut entries = self.lock();
        entries.clock += 1;
        let now = entries.clock;
        let entry = entries.by_key.get_mut(key)?;
        entry.used = now;
        let value = entry.value.clone();
        if !entry.protected {
            entry.protected = true;
            entries.protected_bytes += value.weight();
            let share = (self.capacity as f64 * PROTECTED_SHARE) as u64;
            while entries.protected_bytes > share {
                let Some(oldest) = entries.victim(true) else {
                    break;
                };
                if let Some(demoted) = entries.by_key.get_mut(&oldest) {
                    demoted.protected = false;
                    let size = demoted.value.weight();
                    entries.protected_bytes -= size;
                }
            }
        }
        Some(value)
    }

    /// Holds `value` for `key`, making room by dropping the least recently used values.
    pub fn insert(&self, key: K, value: V) {
        let size = value.weight();
        if !self.takes(size) {
            return;
        }
        let mut entries = self.lock();
        entries.remove(&key);
        while entries.bytes + size > self.capacity {
            let Some(oldest) = entries.victim(false).or_else(|| entries.victim(true)) else {
                break;
            };
            entries.remove(&oldest);
        }
        entries.clock += 1;
        let used = entries.clock;
        let entry = Entry {
            value,
            used,
            protected: false,
        };
        entries.by_key.insert(key, entry);
        entries.bytes += size;
    }

    /// The bytes held now.
    pub fn held(&self) -> u64 {
        self.lock().bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries<K, V>> {
        // The entries stay consistent under a panic elsewhere: every change completes
        // before the lock is released.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Default for SegmentedLru<Path, Bytes> {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY, DEFAULT_MAX_OBJECT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize) -> Bytes {
        Bytes::from(vec![7_u8; n])
    }

    #[test]
    fn the_least_recently_used_extent_leaves_first() {
        let cache = ExtentCache::new(100, 50);
        cache.insert(Path::from("a"), bytes(40));
        cache.insert(Path::from("b"), bytes(40));
        assert!(
            cache.get(&Path::from("a")).is_some(),
            "a is now the more recent"
        );
        cache.insert(Path::from("c"), bytes(40));
        assert!(
            cache.get(&Path::from("b")).is_none(),
            "b was the least recently used"
        );
        assert!(cache.get(&Path::from("a")).is_some());
        assert!(cache.get(&Path::from("c")).is_some());
        assert_eq!(cache.held(), 80);
    }

    #[test]
    fn a_scan_larger_than_the_cache_leaves_extents_read_twice_in_it() {
        let cache = ExtentCache::new(100, 50);
        for name in ["a", "b", "c"] {
            cache.insert(Path::from(name), bytes(30));
        }
        assert!(cache.get(&Path::from("a")).is_some());
        assert!(cache.get(&Path::from("b")).is_some());
        // A scan of four more extents: each makes room on probation only.
        for name in ["d", "e", "f", "g"] {
            cache.insert(Path::from(name), bytes(30));
        }
        assert!(cache.get(&Path::from("a")).is_some(), "read twice: kept");
        assert!(cache.get(&Path::from("b")).is_some(), "read twice: kept");
        assert!(cache.get(&Path::from("c")).is_none(), "read once: gone");
        assert!(
            cache.get(&Path::from("g")).is_some(),
            "the newest on probation"
        );
        assert_eq!(cache.held(), 90);
    }

    #[test]
    fn the_protected_part_holds_at_most_its_share() {
        let cache = ExtentCache::new(100, 50);
        for name in ["a", "b", "c"] {
            cache.insert(Path::from(name), bytes(30));
            assert!(cache.get(&Path::from(name)).is_some());
        }
        // 90 bytes read twice passes 80: the least recently used goes back on probation,
        // and is the first to leave.
        cache.insert(Path::from("d"), bytes(30));
        assert!(cache.get(&Path::from("a")).is_none());
        assert!(cache.get(&Path::from("b")).is_some());
        assert!(cache.get(&Path::from("c")).is_some());
    }

    #[test]
    fn large_extents_and_a_zero_capacity_cache_nothing() {
        let cache = ExtentCache::new(100, 50);
        cache.insert(Path::from("big"), bytes(51));
        assert!(cache.get(&Path::from("big")).is_none());
        assert!(!cache.takes(0));
        let off = ExtentCache::new(0, 50);
        off.insert(Path::from("a"), bytes(1));
        assert_eq!(off.held(), 0);
    }
}

//! A process-wide cache of small extents and manifests, held in memory, so that no query (or
//! compaction) fetches the same small extent from object storage twice, and a CDC worker
//! reads back the manifest it stored last without a round trip.
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
//! pile up between compactions and that every current-state read merges (before the cache,
//! each query fetched every delta extent of the table again, twice) — up to
//! [`ExtentCache::capacity`] bytes in all, the least recently used leaving first. Larger
//! extents are read by range, uncached: their row groups are pruned and read selectively.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use object_store::path::Path;

/// Bytes cached per process when not configured.
pub const DEFAULT_CAPACITY: u64 = 128 * 1024 * 1024;

/// Extents larger than this are never cached when not configured.
pub const DEFAULT_MAX_OBJECT: u64 = 8 * 1024 * 1024;

/// The cache (see the module doc).
#[derive(Debug)]
pub struct ExtentCache {
    capacity: u64,
    max_object: u64,
    inner: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    by_path: HashMap<Path, (Bytes, u64)>,
    bytes: u64,
    clock: u64,
}

impl ExtentCache {
    /// A cache of up to `capacity` bytes holding extents of at most `max_object` bytes
    /// (a capacity of 0 caches nothing).
    pub fn new(capacity: u64, max_object: u64) -> Self {
        Self {
            capacity,
            max_object: max_object.min(capacity),
            inner: Mutex::new(Entries::default()),
        }
    }

    /// The bytes it may hold.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The largest extent it holds.
    pub fn max_object(&self) -> u64 {
        self.max_object
    }

    /// Whether an extent of `size` bytes is read through the cache.
    pub fn takes(&self, size: u64) -> bool {
        size > 0 && size <= self.max_object
    }

    /// The cached content of `path`, if held.
    pub fn get(&self, path: &Path) -> Option<Bytes> {
        let mut entries = self.lock();
        entries.clock += 1;
        let now = entries.clock;
        let (bytes, used) = entries.by_path.get_mut(path)?;
        *used = now;
        Some(bytes.clone())
    }

    /// Holds `bytes` as the content of `path`, making room by dropping the least recently
    /// used extents.
    pub fn insert(&self, path: Path, bytes: Bytes) {
        let size = bytes.len() as u64;
        if !self.takes(size) {
            return;
        }
        let mut entries = self.lock();
        while entries.bytes + size > self.capacity {
            let Some(oldest) = entries
                .by_path
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(path, _)| path.clone())
            else {
                break;
            };
            if let Some((dropped, _)) = entries.by_path.remove(&oldest) {
                entries.bytes -= dropped.len() as u64;
            }
        }
        entries.clock += 1;
        let now = entries.clock;
        if let Some((previous, _)) = entries.by_path.insert(path, (bytes, now)) {
            entries.bytes -= previous.len() as u64;
        }
        entries.bytes += size;
    }

    /// The bytes held now.
    pub fn held(&self) -> u64 {
        self.lock().bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // The entries stay consistent under a panic elsewhere: every change completes
        // before the lock is released.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Default for ExtentCache {
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

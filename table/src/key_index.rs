//! The newest row of every key of a synced table, by position: what lets a commit record the
//! rows its changes supersede as deleted rows ([`crate::deletes`]), so that readers take the
//! current state without merging versions by key (see [`crate::synced`]).
//!
//! # Invariant
//!
//! After [`KeyIndex::catch_up`] on a table's manifest `M`, the index maps every key with a
//! live row in `M` (a row not deleted) to its newest such row: its extent, its position and
//! its `_kyma_seq`. Every older live row it met on the way is a *pending* deletion: for a
//! manifest whose positions are resolved, only rows of extents someone else wrote (a
//! compaction's output, superseded by deltas committed while it ran); for one that is not,
//! every superseded version. A commit built on `M` that records the pending deletions and
//! [`KeyIndex::resolve`]'s for its own rows makes a manifest whose positions are resolved;
//! [`KeyIndex::committed`] moves the index onto it. A commit whose outcome is unknown leaves
//! the index unusable: drop it and build a new one.
//!
//! Versions are ordered by `_kyma_seq`; of two rows with the same one (copies of one version),
//! the later in manifest order wins, as in [`crate::compaction`].
//!
//! # Keys and memory
//!
//! A key is the 128-bit xxh3 hash of `_kyma_pk`'s text: two keys collide with odds of about
//! n²/2¹²⁹ (10⁻²⁰ at a billion keys). Each key costs its hash, its position and its version,
//! 32 bytes, plus the hash table's slack: 38 to 76 bytes per key.

use std::collections::{BTreeMap, HashMap};

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use futures::TryStreamExt;
use twox_hash::XxHash3_128;
use uuid::Uuid;

use crate::deletes::RowBitmap;
use crate::error::TableError;
use crate::manifest::{ExtentEntry, Manifest};
use crate::reader::{open_extent, read_error};
use crate::store::ExtentStore;
use crate::synced::{PK, SEQ};

/// A key: the 128-bit hash of its `_kyma_pk` text, as two words (8-byte aligned, so a
/// [`KeyVersion`] takes 24 bytes, not 32).
pub type Key = [u64; 2];

/// One row's key and version, in the order rows were written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyVersion {
    /// [`key_hash`] of its `_kyma_pk`.
    pub key: Key,
    /// Its `_kyma_seq`.
    pub seq: i64,
}

/// The key of a `_kyma_pk` text.
pub fn key_hash(pk: &str) -> Key {
    let hash = XxHash3_128::oneshot(pk.as_bytes());
    [(hash >> 64) as u64, hash as u64]
}

/// Where a key's newest row is.
#[derive(Debug, Clone, Copy)]
struct Slot {
    extent: u32,
    row: u32,
    seq: i64,
}

/// The key index of one synced table (see the module doc).
#[derive(Debug)]
pub struct KeyIndex {
    table_id: Uuid,
    /// Every extent the index has read, by ordinal.
    paths: Vec<String>,
    /// Whether the extent of an ordinal is still in the table.
    live: Vec<bool>,
    /// Ordinals of the live extents.
    ordinals: HashMap<String, u32>,
    newest: HashMap<Key, Slot>,
    /// Rows found superseded by [`KeyIndex::catch_up`], not committed as deleted yet.
    pending: BTreeMap<u32, RowBitmap>,
}

/// What a commit's rows supersede: the deletions to record and the index's next state.
#[derive(Debug)]
pub struct Resolution {
    /// Rows to record as deleted, by extent path (the pending ones included).
    pub deleted: BTreeMap<String, RowBitmap>,
    first_ordinal: u32,
    new_extents: Vec<String>,
    newest: HashMap<Key, Slot>,
}

impl KeyIndex {
    /// An empty index of table `table_id`.
    pub fn new(table_id: Uuid) -> Self {
        Self {
            table_id,
            paths: Vec::new(),
            live: Vec::new(),
            ordinals: HashMap::new(),
            newest: HashMap::new(),
            pending: BTreeMap::new(),
        }
    }

    /// Keys indexed.
    pub fn keys(&self) -> usize {
        self.newest.len()
    }

    /// Brings the index to `manifest`: forgets extents it no longer lists and reads the live
    /// rows of the ones it has not read (all of them for a new index).
    pub async fn catch_up(
        &mut self,
        store: &ExtentStore,
        manifest: &Manifest,
    ) -> Result<(), TableError> {
        if manifest.table_id != self.table_id {
            *self = Self::new(manifest.table_id);
        }
        let present: std::collections::HashSet<&str> =
            manifest.extents.iter().map(|e| e.path.as_str()).collect();
        let gone: Vec<(String, u32)> = self
            .ordinals
            .iter()
            .filter(|(path, _)| !present.contains(path.as_str()))
            .map(|(path, ordinal)| (path.clone(), *ordinal))
            .collect();
        for (path, ordinal) in &gone {
            self.ordinals.remove(path);
            self.live[*ordinal as usize] = false;
            self.pending.remove(ordinal);
        }
        for entry in &manifest.extents {
            if !self.ordinals.contains_key(&entry.path) {
                let versions = live_versions(store, entry).await?;
                let extent = self.add_extent(&entry.path);
                for (row, version) in versions {
                    self.place(
                        version.key,
                        Slot {
                            extent,
                            row,
                            seq: version.seq,
                        },
                    );
                }
            }
        }
        if !gone.is_empty() {
            let live = &self.live;
            self.newest.retain(|_, slot| live[slot.extent as usize]);
        }
        Ok(())
    }

    fn add_extent(&mut self, path: &str) -> u32 {
        let ordinal = u32::try_from(self.paths.len()).unwrap_or(u32::MAX);
        self.paths.push(path.to_owned());
        self.live.push(true);
        self.ordinals.insert(path.to_owned(), ordinal);
        ordinal
    }

    /// Makes `slot` its key's newest row unless a newer one is indexed; the loser is pending.
    fn place(&mut self, key: Key, slot: Slot) {
        let superseded = match self.newest.get(&key) {
            Some(old) if self.live[old.extent as usize] && old.seq > slot.seq => slot,
            Some(old) if self.live[old.extent as usize] => {
                let old = *old;
                self.newest.insert(key, slot);
                old
            }
            _ => {
                self.newest.insert(key, slot);
                return;
            }
        };
        self.pending
            .entry(superseded.extent)
            .or_default()
            .insert(superseded.row);
    }

    /// The rows superseded by a commit adding `written` (each new extent's path and its rows'
    /// keys in row order) to the manifest the index caught up with; the index is unchanged.
    pub fn resolve(&self, written: &[(String, Vec<KeyVersion>)]) -> Result<Resolution, TableError> {
        let first_ordinal = u32::try_from(self.paths.len()).unwrap_or(u32::MAX);
        let mut newest: HashMap<Key, Slot> = HashMap::new();
        let mut deleted = self.pending.clone();
        for (i, (path, versions)) in written.iter().enumerate() {
            let extent = first_ordinal.saturating_add(u32::try_from(i).unwrap_or(u32::MAX));
            for (row, version) in versions.iter().enumerate() {
                let row = u32::try_from(row).map_err(|_| TableError::Corrupt {
                    path: path.clone(),
                    reason: "an extent of more than 2³² rows cannot be indexed".to_owned(),
                })?;
                let slot = Slot {
                    extent,
                    row,
                    seq: version.seq,
                };
                let previous = newest.get(&version.key).copied().or_else(|| {
                    self.newest
                        .get(&version.key)
                        .filter(|s| self.live[s.extent as usize])
                        .copied()
                });
                let superseded = match previous {
                    Some(old) if old.seq > slot.seq => slot,
                    Some(old) => {
                        newest.insert(version.key, slot);
                        old
                    }
                    None => {
                        newest.insert(version.key, slot);
                        continue;
                    }
                };
                deleted
                    .entry(superseded.extent)
                    .or_default()
                    .insert(superseded.row);
            }
        }
        let new_extents: Vec<String> = written.iter().map(|(path, _)| path.clone()).collect();
        let path_of = |ordinal: u32| match ordinal.checked_sub(first_ordinal) {
            None => self.paths.get(ordinal as usize).cloned(),
            Some(i) => new_extents.get(i as usize).cloned(),
        };
        let deleted = deleted
            .into_iter()
            .filter_map(|(ordinal, rows)| path_of(ordinal).map(|path| (path, rows)))
            .collect();
        Ok(Resolution {
            deleted,
            first_ordinal,
            new_extents,
            newest,
        })
    }

    /// Moves the index onto the manifest `resolution`'s commit made. False (the index is then
    /// unusable) when the index changed since [`KeyIndex::resolve`].
    pub fn committed(&mut self, resolution: Resolution) -> bool {
        if u32::try_from(self.paths.len()).ok() != Some(resolution.first_ordinal) {
            return false;
        }
        for path in &resolution.new_extents {
            self.add_extent(path);
        }
        self.newest.extend(resolution.newest);
        self.pending.clear();
        true
    }
}

/// The key and version of every live row of `entry`, with its position.
async fn live_versions(
    store: &ExtentStore,
    entry: &ExtentEntry,
) -> Result<Vec<(u32, KeyVersion)>, TableError> {
    let deleted = match &entry.deleted {
        Some(deleted) => deleted.load(store).await?,
        None => RowBitmap::default(),
    };
    let corrupt = |reason: &str| TableError::Corrupt {
        path: entry.path.clone(),
        reason: reason.to_owned(),
    };
    let mut stream = open_extent(store, entry, Some(&[PK, SEQ]))
        .await?
        .build()
        .map_err(read_error)?;
    let mut versions = Vec::with_capacity(usize::try_from(entry.rows).unwrap_or(0));
    let mut row: u32 = 0;
    while let Some(batch) = stream.try_next().await.map_err(read_error)? {
        let pk = batch
            .column_by_name(PK)
            .and_then(|c| c.as_string_opt::<i32>())
            .ok_or_else(|| corrupt("`_kyma_pk` is not a string column"))?;
        let seq = batch
            .column_by_name(SEQ)
            .and_then(|c| c.as_primitive_opt::<Int64Type>())
            .ok_or_else(|| corrupt("`_kyma_seq` is not a long column"))?;
        for i in 0..batch.num_rows() {
            if !deleted.contains(row) && pk.is_valid(i) {
                let version = KeyVersion {
                    key: key_hash(pk.value(i)),
                    seq: seq.value(i),
                };
                versions.push((row, version));
            }
            row = row
                .checked_add(1)
                .ok_or_else(|| corrupt("more than 2³² rows in one extent"))?;
        }
    }
    Ok(versions)
}

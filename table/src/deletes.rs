//! Rows deleted by position: how a synced table records, per extent, the rows that a newer
//! version of their key superseded, so that a reader takes the current state as every row not
//! deleted and not a tombstone, without merging versions by key (see [`crate::synced`] and
//! [`crate::key_index`], which finds those rows as changes are committed).
//!
//! # Layout
//!
//! An extent's deleted rows are a bitmap over its row positions ([`RowBitmap`]), encoded as
//! zstd-compressed little-endian 64-bit words. The extent's manifest entry holds it in two
//! parts ([`DeletedRows`]), so that a commit deleting a few rows never rewrites a large
//! bitmap:
//!
//! - `stored`: an immutable object `tables/{id}/extents/{uuid}.deleted`, read through the
//!   store's cache and garbage-collected like an extent once no manifest lists it;
//! - `inline`: the rows deleted since, in the manifest itself (base64), while their encoding
//!   stays within [`INLINE_LIMIT`]; the commit that would pass it folds both parts into a new
//!   stored object.
//!
//! The extent's deleted rows are those of both parts. A row is deleted at most once (the
//! index forgets a row once it is superseded), so [`DeletedRows::rows`] adds up.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use object_store::path::Path;
use parquet::arrow::arrow_reader::{RowSelection, RowSelector};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::TableError;
use crate::manifest::Manifest;
use crate::store::ExtentStore;

/// Largest encoding kept inline in a manifest entry, in bytes (before base64).
pub const INLINE_LIMIT: usize = 2048;
/// zstd level of an encoded bitmap (sparse bitmaps compress to a few bytes per row).
const ZSTD_LEVEL: i32 = 3;

/// A set of row positions in one extent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowBitmap {
    words: Vec<u64>,
}

impl RowBitmap {
    /// Adds `row`.
    pub fn insert(&mut self, row: u32) {
        let word = row as usize / 64;
        if self.words.len() <= word {
            self.words.resize(word + 1, 0);
        }
        self.words[word] |= 1 << (row % 64);
    }

    /// Whether `row` is in the set.
    pub fn contains(&self, row: u32) -> bool {
        self.words
            .get(row as usize / 64)
            .is_some_and(|w| w & (1 << (row % 64)) != 0)
    }

    /// Rows in the set.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    /// Adds every row of `other`.
    pub fn union_with(&mut self, other: &RowBitmap) {
        if self.words.len() < other.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        for (mine, theirs) in self.words.iter_mut().zip(&other.words) {
            *mine |= theirs;
        }
    }

    /// The encoding described in the module doc.
    pub fn encode(&self) -> Result<Vec<u8>, TableError> {
        let used = self
            .words
            .iter()
            .rposition(|w| *w != 0)
            .map_or(0, |last| last + 1);
        let raw: Vec<u8> = self.words[..used]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        zstd::bulk::compress(&raw, ZSTD_LEVEL).map_err(|e| TableError::Corrupt {
            path: "deleted rows being encoded".to_owned(),
            reason: e.to_string(),
        })
    }

    /// Reads [`RowBitmap::encode`]'s output; `what` names it in errors.
    pub fn decode(bytes: &[u8], what: &str) -> Result<Self, TableError> {
        let corrupt = |reason: String| TableError::Corrupt {
            path: what.to_owned(),
            reason,
        };
        let raw = zstd::stream::decode_all(bytes)
            .map_err(|e| corrupt(format!("deleted rows do not decode: {e}")))?;
        if !raw.len().is_multiple_of(8) {
            return Err(corrupt(format!(
                "deleted rows hold {} bytes, not whole 64-bit words",
                raw.len()
            )));
        }
        let words = raw
            .chunks_exact(8)
            .map(|c| {
                let mut word = [0_u8; 8];
                word.copy_from_slice(c);
                u64::from_le_bytes(word)
            })
            .collect();
        Ok(Self { words })
    }

    /// The rows of an extent of `rows` rows to read: all but the set's (`None`: all).
    pub fn selection(&self, rows: u64) -> Option<RowSelection> {
        let mut selectors: Vec<RowSelector> = Vec::new();
        let (mut row, mut skipping, mut any) = (0, false, false);
        while row < rows {
            let next = self.next_change(row, skipping).min(rows);
            if next > row {
                selectors.push(run(skipping, next - row));
                any |= skipping;
            }
            row = next;
            skipping = !skipping;
        }
        any.then(|| RowSelection::from(selectors))
    }

    /// The first row at or after `from` whose membership differs from `in_set`'s, a word at
    /// a time (`u64::MAX`: none).
    fn next_change(&self, from: u64, in_set: bool) -> u64 {
        let mut index = usize::try_from(from / 64).unwrap_or(usize::MAX);
        let mut first_bit = from % 64;
        loop {
            let word = self.words.get(index).copied().unwrap_or(0);
            let differing = if in_set { !word } else { word } & (u64::MAX << first_bit);
            if differing != 0 {
                return index as u64 * 64 + u64::from(differing.trailing_zeros());
            }
            if index >= self.words.len() {
                return u64::MAX;
            }
            index += 1;
            first_bit = 0;
        }
    }
}

fn run(skip: bool, rows: u64) -> RowSelector {
    let rows = usize::try_from(rows).unwrap_or(usize::MAX);
    match skip {
        true => RowSelector::skip(rows),
        false => RowSelector::select(rows),
    }
}

/// The deleted rows of one extent, as its manifest entry records them (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DeletedRows {
    /// How many rows are deleted (both parts).
    pub rows: u64,
    /// The object holding the rows deleted up to the last fold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored: Option<String>,
    /// The rows deleted since, encoded, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<String>,
}

impl DeletedRows {
    /// Every deleted row, both parts.
    pub async fn load(&self, store: &ExtentStore) -> Result<RowBitmap, TableError> {
        let mut rows = self.inline_rows()?;
        if let Some(stored) = &self.stored {
            rows.union_with(&load_stored(store, stored).await?);
        }
        Ok(rows)
    }

    fn inline_rows(&self) -> Result<RowBitmap, TableError> {
        let Some(inline) = &self.inline else {
            return Ok(RowBitmap::default());
        };
        let bytes = BASE64.decode(inline).map_err(|e| TableError::Corrupt {
            path: "a manifest's inline deleted rows".to_owned(),
            reason: e.to_string(),
        })?;
        RowBitmap::decode(&bytes, "a manifest's inline deleted rows")
    }

    /// These deleted rows (none when `None`) plus `added`, folded into a new stored object of
    /// table `table_id` when the inline part would outgrow [`INLINE_LIMIT`].
    async fn with(
        existing: Option<&DeletedRows>,
        added: &RowBitmap,
        store: &ExtentStore,
        table_id: Uuid,
    ) -> Result<DeletedRows, TableError> {
        let existing = existing.cloned().unwrap_or_default();
        let mut inline = existing.inline_rows()?;
        inline.union_with(added);
        let encoded = inline.encode()?;
        if encoded.len() <= INLINE_LIMIT {
            return Ok(DeletedRows {
                rows: existing.rows + added.count(),
                stored: existing.stored,
                inline: Some(BASE64.encode(encoded)),
            });
        }
        let mut all = inline;
        if let Some(stored) = &existing.stored {
            all.union_with(&load_stored(store, stored).await?);
        }
        let path = Path::from(format!(
            "tables/{table_id}/extents/{}.deleted",
            Uuid::now_v7()
        ));
        store
            .put_immutable(&path, Bytes::from(all.encode()?))
            .await?;
        Ok(DeletedRows {
            rows: all.count(),
            stored: Some(path.to_string()),
            inline: None,
        })
    }
}

async fn load_stored(store: &ExtentStore, path: &str) -> Result<RowBitmap, TableError> {
    let bytes = store.get_immutable(&Path::from(path)).await?;
    RowBitmap::decode(&bytes, path)
}

/// Records `deleted` (rows per extent path) in `manifest`'s entries. Every extent named must
/// be in the manifest: a row is only ever deleted in the snapshot the commit builds on.
pub async fn delete_rows(
    manifest: &mut Manifest,
    deleted: &BTreeMap<String, RowBitmap>,
    store: &ExtentStore,
) -> Result<(), TableError> {
    let table_id = manifest.table_id;
    let updates = manifest
        .extents
        .iter()
        .enumerate()
        .filter_map(|(i, entry)| {
            let rows = deleted.get(&entry.path)?;
            Some(async move {
                let with = match rows.is_empty() {
                    true => entry.deleted.clone(),
                    false => Some(
                        DeletedRows::with(entry.deleted.as_ref(), rows, store, table_id).await?,
                    ),
                };
                Ok::<_, TableError>((i, with))
            })
        });
    // Folds store objects: in parallel, not one round trip per extent.
    let updates = futures::future::try_join_all(updates).await?;
    let remaining = deleted.len() - updates.len();
    for (i, with) in updates {
        manifest.extents[i].deleted = with;
    }
    if remaining > 0 {
        return Err(TableError::Corrupt {
            path: format!("the manifest of table {}", manifest.table_id),
            reason: format!(
                "{remaining} extent(s) with rows to delete are not in the snapshot the commit builds on"
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bitmap(rows: &[u32]) -> RowBitmap {
        let mut bitmap = RowBitmap::default();
        for row in rows {
            bitmap.insert(*row);
        }
        bitmap
    }

    #[test]
    fn a_bitmap_round_trips_through_its_encoding() -> Result<(), TableError> {
        let rows = bitmap(&[0, 63, 64, 1_000_003]);
        let decoded = RowBitmap::decode(&rows.encode()?, "test")?;
        assert_eq!(decoded.count(), 4);
        assert!(decoded.contains(1_000_003) && decoded.contains(64) && !decoded.contains(65));
        assert!(RowBitmap::decode(b"not zstd", "test").is_err());
        Ok(())
    }

    #[test]
    fn a_selection_skips_deleted_rows_and_none_is_needed_without_them() {
        let selectors = |rows: &[u32], of: u64| {
            bitmap(rows)
                .selection(of)
                .map(|s| s.iter().copied().collect::<Vec<_>>())
        };
        assert_eq!(
            selectors(&[1, 2, 5], 8),
            Some(vec![
                RowSelector::select(1),
                RowSelector::skip(2),
                RowSelector::select(2),
                RowSelector::skip(1),
                RowSelector::select(2),
            ])
        );
        assert_eq!(
            selectors(&[0, 7], 8),
            Some(vec![
                RowSelector::skip(1),
                RowSelector::select(6),
                RowSelector::skip(1),
            ])
        );
        assert_eq!(selectors(&[9], 8), None);
    }

    #[test]
    fn a_selection_reads_exactly_the_rows_not_in_the_set_across_word_boundaries() {
        let mut deleted: Vec<u32> = (0..64).collect();
        deleted.extend([100, 127, 128, 191, 192, 1000, 1099]);
        deleted.extend((256..448).filter(|r| r % 3 != 0));
        let set = bitmap(&deleted);
        let selection = set.selection(1100).expect("rows to skip");
        let mut read = Vec::new();
        for selector in selection.iter() {
            read.extend(std::iter::repeat_n(!selector.skip, selector.row_count));
        }
        let expected: Vec<bool> = (0..1100).map(|r| !set.contains(r)).collect();
        assert_eq!(read, expected);
    }
}

//! The manifest of a snapshot: the live extents with their row counts, sizes and per-column
//! min/max/null counts, enough to skip an extent without opening it (SPEC §3).
//!
//! Manifests are immutable JSON objects; the catalog's snapshot pointer names the current one.
//! They are read through the store's cache ([`crate::cache`]): the one a writer stored is
//! what its next commit reads back.

use std::collections::BTreeMap;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Float64Type, Int32Type, Int64Type, TimestampMicrosecondType};
use bytes::Bytes;
use object_store::path::Path;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::deletes::DeletedRows;
use crate::error::TableError;
use crate::store::ExtentStore;

/// The manifest format version this code writes and reads.
pub const MANIFEST_FORMAT: u32 = 1;
/// Longest string kept as a min/max statistic; longer values leave the statistic out.
const MAX_STAT_STRING: usize = 256;

/// The extents of one snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version ([`MANIFEST_FORMAT`]).
    pub format: u32,
    /// The table the extents belong to.
    pub table_id: Uuid,
    /// Schema version the snapshot reads with.
    pub schema_version: u64,
    /// The live extents.
    pub extents: Vec<ExtentEntry>,
    /// Synced tables: every row superseded by a newer version of its key is in its extent's
    /// [`ExtentEntry::deleted`], so the current state is every row neither deleted nor a
    /// tombstone (see [`crate::synced`]). False: versions must be merged by key.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub positions_resolved: bool,
}

impl Manifest {
    /// An empty manifest.
    pub fn empty(table_id: Uuid, schema_version: u64) -> Self {
        Self {
            format: MANIFEST_FORMAT,
            table_id,
            schema_version,
            extents: Vec::new(),
            positions_resolved: false,
        }
    }

    /// Total rows over every extent.
    pub fn rows(&self) -> u64 {
        self.extents.iter().map(|e| e.rows).sum()
    }

    /// Reads the manifest at `path`.
    pub async fn load(store: &ExtentStore, path: &str) -> Result<Self, TableError> {
        let bytes = store.get_immutable(&Path::from(path)).await?;
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| TableError::Corrupt {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(TableError::Corrupt {
                path: path.to_owned(),
                reason: format!(
                    "manifest format {} is not {MANIFEST_FORMAT}; this kyma is too old for it",
                    manifest.format
                ),
            });
        }
        Ok(manifest)
    }

    /// Writes this manifest as a new object for snapshot `version`; returns its path.
    pub async fn store(&self, store: &ExtentStore, version: u64) -> Result<String, TableError> {
        let path = ExtentStore::new_manifest_path(self.table_id, version);
        let json = serde_json::to_vec(self).map_err(|e| TableError::Corrupt {
            path: path.to_string(),
            reason: e.to_string(),
        })?;
        // Manifests never change under their path: the next commit reads this one back.
        store.put_immutable(&path, Bytes::from(json)).await?;
        Ok(path.to_string())
    }
}

/// One immutable Parquet extent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExtentEntry {
    /// Object path, relative to the store prefix.
    pub path: String,
    /// Schema version it was written with.
    pub schema_version: u64,
    /// Rows in it.
    pub rows: u64,
    /// File size in bytes.
    pub bytes: u64,
    /// Statistics per column it holds (columns it lacks read as nulls).
    pub columns: BTreeMap<String, ColumnStats>,
    /// Synced tables: the extent belongs to the compacted base (at most one row per key
    /// across all compacted extents, each older than every delta row; see
    /// [`crate::synced`]). Always false for native tables.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub compacted: bool,
    /// Synced tables: its rows superseded by a newer version of their key, by position (see
    /// [`crate::deletes`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<DeletedRows>,
}

impl ExtentEntry {
    /// The objects the entry refers to: the extent, and its stored deleted rows if any.
    pub fn objects(&self) -> impl Iterator<Item = &str> {
        let deleted = self.deleted.as_ref().and_then(|d| d.stored.as_deref());
        std::iter::once(self.path.as_str()).chain(deleted)
    }

    /// Rows not deleted by position.
    pub fn live_rows(&self) -> u64 {
        self.rows
            .saturating_sub(self.deleted.as_ref().map_or(0, |d| d.rows))
    }
}

/// Statistics of one column in one extent.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ColumnStats {
    /// Nulls in the column.
    pub null_count: u64,
    /// Smallest non-null value, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<StatValue>,
    /// Largest non-null value, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<StatValue>,
}

/// A statistic value. Timestamps are microseconds since the epoch, in `Int`.
#[derive(Debug, Clone, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatValue {
    /// int, long and timestamp columns.
    Int(i64),
    /// real columns.
    Real(f64),
    /// bool columns.
    Bool(bool),
    /// string columns.
    Str(String),
}

impl ColumnStats {
    /// Statistics of one array. Columns without an order (dynamic, vector) get null counts
    /// only; float columns holding NaN get no min/max.
    pub fn of(array: &ArrayRef) -> Self {
        let (min, max) = min_max(array).unzip();
        Self {
            null_count: array.null_count() as u64,
            min,
            max,
        }
    }

    /// Statistics of an array whose every row holds the value of its first (a one-valued
    /// column): those of the first row, its NULL counted for every row. One comparison
    /// instead of one per row.
    pub fn of_one_valued(array: &ArrayRef) -> Self {
        let first = Self::of(&array.slice(0, array.len().min(1)));
        Self {
            null_count: first.null_count * array.len() as u64,
            ..first
        }
    }

    /// Folds in `other`, the statistics of `other_rows` more rows of the same column; this
    /// covers `self_rows`. A min/max unknown on either side (present values, no statistic)
    /// makes it unknown.
    pub fn merge(&mut self, self_rows: u64, other: &ColumnStats, other_rows: u64) {
        let known = |s: &ColumnStats, rows: u64| s.min.is_some() || s.null_count == rows;
        let both_known = known(self, self_rows) && known(other, other_rows);
        self.null_count += other.null_count;
        if both_known {
            self.min = pick(self.min.take(), other.min.clone(), |a, b| a <= b);
            self.max = pick(self.max.take(), other.max.clone(), |a, b| a >= b);
        } else {
            self.min = None;
            self.max = None;
        }
    }
}

fn pick(
    a: Option<StatValue>,
    b: Option<StatValue>,
    keep_a: impl Fn(&StatValue, &StatValue) -> bool,
) -> Option<StatValue> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if keep_a(&a, &b) { a } else { b }),
        (a, b) => a.or(b),
    }
}

fn min_max(array: &ArrayRef) -> Option<(StatValue, StatValue)> {
    use arrow::compute::{max, max_boolean, max_string, min, min_boolean, min_string};
    Some(match array.data_type() {
        DataType::Int32 => {
            let a = array.as_primitive::<Int32Type>();
            (
                StatValue::Int(i64::from(min(a)?)),
                StatValue::Int(i64::from(max(a)?)),
            )
        }
        DataType::Int64 => {
            let a = array.as_primitive::<Int64Type>();
            (StatValue::Int(min(a)?), StatValue::Int(max(a)?))
        }
        DataType::Timestamp(_, _) => {
            let a = array.as_primitive::<TimestampMicrosecondType>();
            (StatValue::Int(min(a)?), StatValue::Int(max(a)?))
        }
        DataType::Float64 => {
            let a = array.as_primitive::<Float64Type>();
            if a.iter().flatten().any(f64::is_nan) {
                return None;
            }
            (StatValue::Real(min(a)?), StatValue::Real(max(a)?))
        }
        DataType::Boolean => {
            let a = array.as_boolean();
            (
                StatValue::Bool(min_boolean(a)?),
                StatValue::Bool(max_boolean(a)?),
            )
        }
        DataType::Utf8 => {
            let a = array.as_string::<i32>();
            let (lo, hi) = (min_string(a)?, max_string(a)?);
            if lo.len() > MAX_STAT_STRING || hi.len() > MAX_STAT_STRING {
                return None;
            }
            (StatValue::Str(lo.to_owned()), StatValue::Str(hi.to_owned()))
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int64Array, StringArray};

    use super::ColumnStats;

    #[test]
    fn one_valued_statistics_are_those_a_scan_gives() {
        let arrays: [ArrayRef; 4] = [
            Arc::new(Int64Array::from(vec![7; 5])),
            Arc::new(StringArray::from(vec!["insert"; 3])),
            Arc::new(StringArray::from(vec![None::<&str>; 4])),
            Arc::new(Int64Array::from(Vec::<i64>::new())),
        ];
        for array in arrays {
            assert_eq!(
                ColumnStats::of_one_valued(&array),
                ColumnStats::of(&array),
                "{array:?}"
            );
        }
    }
}

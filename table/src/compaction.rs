//! Compaction of synced tables (SPEC §3 "Synced tables"; the layout is in [`crate::synced`]).
//!
//! A compaction rewrites a synced table's extents, as of its current snapshot, into compacted
//! extents that hold only each key's newest version, drops tombstones older than the
//! retention, and swaps them in with one catalog commit.
//!
//! # Merging deltas, rewriting the base
//!
//! A compaction's cost should follow the changed data, not the table. While a table has a
//! base and its delta rows are fewer than [`CompactionOptions::full_at_delta_fraction`] of
//! its base rows, a compaction only **merges the delta extents** among themselves: it reads
//! only them and writes delta extents holding each key's newest delta version, every
//! tombstone kept (a tombstone shadows base rows the merge does not read). Reads then merge
//! the base with a few delta extents instead of many, and the manifest stays short. Once
//! the deltas reach the fraction (or a tombstone may have expired, or there is no base), a
//! **full** compaction rewrites the base with them, as described below; its cost is
//! amortised over the changes that made the deltas that large.
//!
//! A table whose positions are resolved ([`Manifest::positions_resolved`]) is read without
//! merging, so its delta rows cost reads nothing: it is compacted only for the number of its
//! delta extents, or fully once a [`CompactionOptions::min_deleted_fraction`] of its rows are
//! deleted by position (reads decode those to skip them). A burst updating a tenth of a
//! table then costs no rewrite at all.
//!
//! # Invariants
//!
//! - **The base stays a base.** After a compaction commits, the compacted extents hold at
//!   most one row per key, and each is older than every delta row. The compaction reads every
//!   extent of the snapshot and keeps, per key, only the row with the largest `_kyma_seq`
//!   (of equal ones, the last in manifest order). Deltas committed while it ran are newer (the
//!   change stream is ordered) and stay deltas in the new manifest. When the snapshot has no
//!   delta, only the compacted extents that may hold an expired tombstone are read: base keys
//!   are unique, so such a tombstone shadows nothing elsewhere.
//! - **The current state does not change.** A key's newest version survives unless it is a
//!   tombstone, and such a key is absent before and after. Only raw reads change: superseded
//!   versions go, and so do tombstones older than [`CompactionOptions::tombstone_retention`]
//!   (once everything older is rewritten into the base, an old tombstone shadows nothing). A
//!   younger tombstone stays so raw readers and downstream consumers still see the delete.
//!   Surviving tombstones go to extents of their own, so the manifest's `_kyma_event_at`
//!   minimum of such an extent is its oldest tombstone and [`needs_compaction`] can tell from
//!   the manifest alone when one expires.
//! - **Deleted rows follow their extents.** Rows deleted by position ([`crate::deletes`])
//!   are superseded versions, so the newest-version rule drops them from the new extents
//!   anyway; an extent kept as it is keeps its deleted rows. The new manifest's positions
//!   stay resolved unless commits landed while the compaction ran: their rows may supersede
//!   rows of the new extents, which the next resolving commit then finds
//!   ([`crate::key_index`]).
//! - **Concurrent commits survive.** The new manifest is the new extents plus every extent of
//!   the snapshot current at commit time that the compaction did not replace. On a conflict it
//!   rebuilds that manifest on the new snapshot; when an extent it read is gone (another
//!   compaction or a `TRUNCATE` replaced it), or a compacted extent arrived meanwhile (its
//!   keys could repeat the new extents'), it abandons and says so.
//!
//! # Memory
//!
//! The first pass reads only `_kyma_pk`, `_kyma_seq`, `_kyma_op` and `_kyma_event_at` of each
//! extent and keeps, per distinct key, the key's text and where its newest row is (about 80
//! bytes plus the key): bounded by keys times key length, independent of row width. It then
//! turns that into one bit per row read. The second pass streams each replaced extent again,
//! row group by row group, selecting only the surviving rows, into [`TableWriter`]s.
//!
//! # Files
//!
//! Files are written before the commit; an abandoned or failed compaction leaves them to
//! [`crate::gc`], which deletes unreferenced files once they are older than its grace. So a
//! compaction must commit within [`CompactionOptions::max_duration`] of starting, which must
//! stay at most half the garbage collector's grace; beyond it the compaction abandons.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arrow::array::{
    Array, AsArray, BooleanArray, BooleanBufferBuilder, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::compute::kernels::cmp::eq;
use arrow::compute::{filter_record_batch, not};
use arrow::datatypes::{Int64Type, TimestampMicrosecondType};
use futures::TryStreamExt;
use kyma_catalog::{
    Catalog, CatalogCommit, CatalogError, CommitOutcome, RetentionSpec, Revision, TableCommit,
    TableOrigin, TableRef, TableState,
};
use parquet::arrow::arrow_reader::RowSelection;
use uuid::Uuid;

use crate::error::TableError;
use crate::manifest::{ExtentEntry, Manifest, StatValue};
use crate::reader::{open_extent, read_error};
use crate::store::ExtentStore;
use crate::synced::{ChangeOp, EVENT_AT, OP, PK, SEQ, may_hold_tombstones};
use crate::writer::{TableWriter, WriteOptions, WrittenExtents, current_manifest};

/// Rebases the commit at most this many times before giving up (as retryable).
const MAX_REBASES: usize = 64;

/// When a table is worth compacting and how.
#[derive(Debug, Clone)]
pub struct CompactionOptions {
    /// How long a tombstone is kept after the source deleted its row (the connector's
    /// `retention.tombstone_days`): a tombstone whose `_kyma_event_at` is older is dropped
    /// once it is its key's newest version.
    pub tombstone_retention: Duration,
    /// Compact once the table has at least this many delta extents …
    pub min_delta_extents: usize,
    /// … or at least this many delta rows …
    pub min_delta_rows: u64,
    /// … or delta rows at least this fraction of the base's (every read merges them), or an
    /// extent may hold an expired tombstone.
    pub min_delta_fraction: f64,
    /// Rewrite the base too once delta rows reach this fraction of the base's rows; below
    /// it, only the deltas are merged (see the module doc). 0: always rewrite the base.
    pub full_at_delta_fraction: f64,
    /// A table whose positions are resolved is read without merging versions, so its delta
    /// rows cost reads nothing: it is compacted for its delta extents' number, or, fully,
    /// once its rows deleted by position reach this fraction of its rows (reads decode them
    /// to skip them).
    pub min_deleted_fraction: f64,
    /// Rows per new compacted extent.
    pub extent_rows: u64,
    /// Longest a compaction may run before its commit; past it, it abandons. Keep it at most
    /// half of [`crate::gc::GcOptions::grace`] (see [`crate::gc`]).
    pub max_duration: Duration,
    /// The time tombstone ages are measured at; `None`: the wall clock at the call.
    pub now: Option<SystemTime>,
}

impl CompactionOptions {
    /// The defaults with the tombstone retention of a connector's `retention` settings.
    pub fn for_retention(retention: &RetentionSpec) -> Self {
        Self {
            tombstone_retention: Duration::from_secs(u64::from(retention.tombstone_days) * 86_400),
            min_delta_extents: 16,
            min_delta_rows: 1_000_000,
            min_delta_fraction: 0.05,
            full_at_delta_fraction: 0.25,
            min_deleted_fraction: 0.25,
            extent_rows: WriteOptions::default().extent_rows,
            max_duration: crate::gc::DEFAULT_GRACE / 2,
            now: None,
        }
    }

    /// `_kyma_event_at` (microseconds) below which a tombstone has expired.
    fn tombstone_cutoff(&self) -> i64 {
        self.now
            .unwrap_or_else(SystemTime::now)
            .checked_sub(self.tombstone_retention)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(i64::MIN, |d| {
                i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
            })
    }
}

impl Default for CompactionOptions {
    /// 30 days of tombstones (the default `retention.tombstone_days`), 16 delta extents or a
    /// million delta rows, a million rows per extent, at most 3 hours per compaction.
    fn default() -> Self {
        Self::for_retention(&RetentionSpec::default())
    }
}

/// What a compaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactionSummary {
    /// How it ended.
    pub outcome: CompactionOutcome,
    /// What it read and wrote (zero when skipped).
    pub counts: CompactionCounts,
}

/// How a compaction ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompactionOutcome {
    /// Nothing to gain: too few deltas and no expired tombstone. Nothing was written.
    Skipped,
    /// The new snapshot is installed at this catalog revision.
    Committed {
        /// The commit's revision.
        revision: Revision,
    },
    /// Given up without changing the table; the files written are left to garbage
    /// collection. Compacting again later starts from the then current snapshot.
    Abandoned {
        /// Why (extents it read were replaced meanwhile, it ran too long, …).
        reason: String,
    },
}

/// What a compaction read and wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactionCounts {
    /// Extents whose versions were read.
    pub extents_read: usize,
    /// Rows in them.
    pub rows_read: u64,
    /// Extents replaced by the new ones (the others read are kept as they are).
    pub extents_replaced: usize,
    /// Rows dropped because a newer version of their key exists.
    pub versions_dropped: u64,
    /// Tombstones dropped because they were older than the retention.
    pub tombstones_dropped: u64,
    /// Tombstones kept (younger than the retention) in the new extents or in kept ones.
    pub tombstones_kept: u64,
    /// New compacted extents.
    pub extents_written: usize,
    /// Rows in them.
    pub rows_written: u64,
    /// Only the delta extents were merged; the base was left as it is.
    pub deltas_only: bool,
}

/// Whether compacting `manifest`'s table would gain anything: it has at least
/// [`CompactionOptions::min_delta_extents`] delta extents, or
/// [`CompactionOptions::min_delta_rows`] delta rows, or delta rows reaching
/// [`CompactionOptions::min_delta_fraction`] of the base's (for a table whose positions are
/// resolved, instead of those two: rows deleted by position reaching
/// [`CompactionOptions::min_deleted_fraction`] of its rows), or an extent whose statistics
/// allow an expired tombstone. Reads nothing but the manifest.
pub fn needs_compaction(manifest: &Manifest, options: &CompactionOptions) -> bool {
    worth_compacting(manifest, options, options.tombstone_cutoff())
}

/// Whether a compaction of `manifest`'s table merges only its deltas (see the module doc):
/// it has a base, at least two delta extents, deltas below the fraction of the base, and no
/// extent that may hold an expired tombstone.
fn merges_deltas_only(manifest: &Manifest, options: &CompactionOptions, cutoff: i64) -> bool {
    let rows = |compacted: bool| -> u64 {
        manifest
            .extents
            .iter()
            .filter(|e| e.compacted == compacted)
            .map(|e| e.rows)
            .sum()
    };
    let (base_rows, delta_rows) = (rows(true), rows(false));
    let delta_extents = manifest.extents.iter().filter(|e| !e.compacted).count();
    base_rows > 0
        && !many_deleted(manifest, options)
        && delta_extents >= 2
        && (delta_rows as f64) < options.full_at_delta_fraction * base_rows as f64
        && !manifest
            .extents
            .iter()
            .any(|e| may_hold_expired_tombstone(e, cutoff))
}

fn worth_compacting(manifest: &Manifest, options: &CompactionOptions, cutoff: i64) -> bool {
    let (delta_extents, delta_rows) = manifest
        .extents
        .iter()
        .filter(|e| !e.compacted)
        .fold((0, 0), |(n, rows), e| (n + 1, rows + e.rows));
    let base_rows: u64 = manifest
        .extents
        .iter()
        .filter(|e| e.compacted)
        .map(|e| e.rows)
        .sum();
    let enough_deltas = match manifest.positions_resolved {
        // Reads skip deleted rows instead of merging: only files and dead rows cost them.
        true => {
            (delta_extents > 0 && delta_extents >= options.min_delta_extents)
                || many_deleted(manifest, options)
        }
        false => {
            delta_extents > 0
                && (delta_extents >= options.min_delta_extents
                    || delta_rows >= options.min_delta_rows
                    || delta_rows as f64 >= options.min_delta_fraction * base_rows as f64)
        }
    };
    enough_deltas
        || manifest
            .extents
            .iter()
            .any(|e| may_hold_expired_tombstone(e, cutoff))
}

/// Whether `manifest`'s positions are resolved and its rows deleted by position reach
/// [`CompactionOptions::min_deleted_fraction`] of its rows.
fn many_deleted(manifest: &Manifest, options: &CompactionOptions) -> bool {
    let rows = manifest.rows();
    let deleted = rows
        - manifest
            .extents
            .iter()
            .map(ExtentEntry::live_rows)
            .sum::<u64>();
    manifest.positions_resolved
        && deleted > 0
        && deleted as f64 >= options.min_deleted_fraction * rows as f64
}

/// From the manifest's statistics: the extent may hold a tombstone
/// ([`may_hold_tombstones`]) and `_kyma_event_at` reaches below `cutoff`. Unknown statistics
/// count as maybe.
fn may_hold_expired_tombstone(entry: &ExtentEntry, cutoff: i64) -> bool {
    let old = match entry.columns.get(EVENT_AT).and_then(|s| s.min.as_ref()) {
        Some(StatValue::Int(at)) => *at < cutoff,
        _ => true,
    };
    may_hold_tombstones(entry) && old
}

/// Compacts `table` (see the module docs): skips when [`needs_compaction`] says there is
/// nothing to gain, else writes the new extents and commits them, rebasing on concurrent
/// commits. A table that is not synced is refused.
pub async fn compact(
    catalog: &Catalog,
    store: &ExtentStore,
    table: &TableRef,
    options: &CompactionOptions,
) -> Result<CompactionSummary, TableError> {
    match PreparedCompaction::prepare(catalog, store, table, options).await? {
        Some(prepared) => prepared.commit().await,
        None => Ok(CompactionSummary {
            outcome: CompactionOutcome::Skipped,
            counts: CompactionCounts::default(),
        }),
    }
}

/// A compaction whose extents are written and not yet committed: [`compact`] in two steps,
/// for callers that do other work in between.
#[derive(Debug)]
pub struct PreparedCompaction {
    catalog: Catalog,
    store: ExtentStore,
    table: TableRef,
    table_id: Uuid,
    /// Every extent of the snapshot read: a compacted extent outside it arrived meanwhile.
    snapshot: HashSet<String>,
    /// Every extent read: all must still be in the snapshot the commit builds on.
    read: HashSet<String>,
    /// The extents the new ones replace.
    replaced: HashSet<String>,
    written: WrittenExtents,
    counts: CompactionCounts,
    started: Instant,
    max_duration: Duration,
}

impl PreparedCompaction {
    /// Reads `table`'s current snapshot and writes its compacted extents; `None` when there
    /// is nothing to gain (then nothing was written).
    pub async fn prepare(
        catalog: &Catalog,
        store: &ExtentStore,
        table: &TableRef,
        options: &CompactionOptions,
    ) -> Result<Option<Self>, TableError> {
        let started = Instant::now();
        let state = catalog.table(table).await?;
        if !matches!(state.meta.origin, TableOrigin::Synced { .. }) {
            return Err(TableError::invalid(
                "table",
                format!(
                    "{table} is not a synced table; only synced tables hold versions to compact"
                ),
            ));
        }
        let manifest = current_manifest(store, &state).await?;
        let cutoff = options.tombstone_cutoff();
        if !worth_compacting(&manifest, options, cutoff) {
            return Ok(None);
        }
        let deltas_only = merges_deltas_only(&manifest, options, cutoff);
        let has_deltas = manifest.extents.iter().any(|e| !e.compacted);
        let snapshot = manifest.extents.iter().map(|e| e.path.clone()).collect();
        let inputs: Vec<ExtentEntry> = manifest
            .extents
            .into_iter()
            .filter(|e| match deltas_only {
                true => !e.compacted,
                false => has_deltas || may_hold_expired_tombstone(e, cutoff),
            })
            .collect();
        // Merged deltas keep every tombstone: base rows they shadow are not read.
        let cutoff = if deltas_only { i64::MIN } else { cutoff };
        let survivors = Survivors::choose(store, &inputs, cutoff).await?;
        let replaced: Vec<(&ExtentEntry, &BooleanArray)> = inputs
            .iter()
            .zip(&survivors.keep)
            .filter(|(entry, keep)| !entry.compacted || keep.true_count() < keep.len())
            .collect();
        if replaced.is_empty() {
            return Ok(None);
        }

        let mut writers =
            CompactedWriters::open(catalog, store, table, options, !deltas_only).await?;
        for (entry, keep) in &replaced {
            if keep.true_count() > 0 {
                writers.copy(store, entry, keep).await?;
            }
        }
        let written = writers.finish().await?;
        let counts = CompactionCounts {
            extents_read: inputs.len(),
            rows_read: survivors.rows_read,
            extents_replaced: replaced.len(),
            versions_dropped: survivors.versions_dropped,
            tombstones_dropped: survivors.tombstones_dropped,
            tombstones_kept: survivors.tombstones_kept,
            extents_written: written.extents.len(),
            rows_written: written.rows,
            deltas_only,
        };
        let replaced = replaced.iter().map(|(e, _)| e.path.clone()).collect();
        Ok(Some(Self {
            catalog: catalog.clone(),
            store: store.clone(),
            table: table.clone(),
            table_id: state.meta.id,
            snapshot,
            read: inputs.into_iter().map(|e| e.path).collect(),
            replaced,
            written,
            counts,
            started,
            max_duration: options.max_duration,
        }))
    }

    /// What was read and written.
    pub fn counts(&self) -> &CompactionCounts {
        &self.counts
    }

    /// Commits the new extents in place of the replaced ones on the table's snapshot as it is
    /// now, rebasing on concurrent commits; abandons when that snapshot no longer has an
    /// extent this compaction read (see the module docs).
    pub async fn commit(self) -> Result<CompactionSummary, TableError> {
        // One id over every attempt: when an attempt's answer is lost, the catalog recognises
        // that it landed.
        let commit_id = Uuid::now_v7();
        let mut state = self.catalog.table(&self.table).await?;
        for _ in 0..MAX_REBASES {
            let current = current_manifest(&self.store, &state).await?;
            let next = match self.next_manifest(&state, current) {
                Ok(next) => next,
                Err(reason) => return Ok(self.abandon(reason)),
            };
            let path = next
                .store(&self.store, state.snapshot.value.version + 1)
                .await?;
            let commit = CatalogCommit {
                commit_id,
                ..CatalogCommit::tables(vec![TableCommit::on(&state, path, &[])?])
            };
            match self.catalog.commit(&commit).await? {
                CommitOutcome::Committed { revision } => return Ok(self.finish(revision)),
                CommitOutcome::Conflict(conflict) => {
                    state =
                        conflict.tables.into_iter().next().ok_or_else(|| {
                            CatalogError::NotFound(format!("table {}", self.table))
                        })?;
                    if self.written.landed_in(&self.store, &state).await? {
                        let revision = state.snapshot.mod_revision;
                        return Ok(self.finish(revision));
                    }
                    tracing::debug!(table = %self.table, "compaction commit lost a race; rebasing");
                }
            }
        }
        Err(CatalogError::Unavailable(format!(
            "table {} kept changing under {MAX_REBASES} compaction commit attempts; retry",
            self.table
        ))
        .into())
    }

    /// The manifest replacing `current` (the snapshot of `state`), or why not to commit.
    fn next_manifest(&self, state: &TableState, current: Manifest) -> Result<Manifest, String> {
        if self.started.elapsed() > self.max_duration {
            return Err(format!(
                "it ran longer than its max_duration of {:?}; garbage collection may already delete its files",
                self.max_duration
            ));
        }
        if state.meta.id != self.table_id || self.written.table_id != self.table_id {
            return Err("the table was dropped and created again".to_owned());
        }
        let present: HashSet<&str> = current.extents.iter().map(|e| e.path.as_str()).collect();
        if let Some(gone) = self.read.iter().find(|p| !present.contains(p.as_str())) {
            return Err(format!(
                "extent {gone} it read is no longer in the table (another compaction or a TRUNCATE replaced it)"
            ));
        }
        if let Some(base) = current
            .extents
            .iter()
            .find(|e| e.compacted && !self.snapshot.contains(&e.path))
        {
            return Err(format!(
                "compacted extent {} was committed meanwhile; its keys may repeat the new extents'",
                base.path
            ));
        }
        // Rows committed while it ran may supersede rows of the new extents, which no
        // deleted rows record yet: the next resolving commit finds them (see
        // `crate::key_index`).
        let concurrent = current
            .extents
            .iter()
            .any(|e| !self.snapshot.contains(&e.path));
        let mut extents = self.written.extents.clone();
        extents.extend(
            current
                .extents
                .into_iter()
                .filter(|e| !self.replaced.contains(&e.path)),
        );
        Ok(Manifest {
            schema_version: state.schema.value.version,
            extents,
            positions_resolved: current.positions_resolved && !concurrent,
            ..current
        })
    }

    fn finish(self, revision: Revision) -> CompactionSummary {
        tracing::info!(table = %self.table, counts = ?self.counts, "compaction committed");
        CompactionSummary {
            outcome: CompactionOutcome::Committed { revision },
            counts: self.counts,
        }
    }

    fn abandon(self, reason: String) -> CompactionSummary {
        tracing::info!(table = %self.table, %reason, "compaction abandoned; its files are left to garbage collection");
        CompactionSummary {
            outcome: CompactionOutcome::Abandoned { reason },
            counts: self.counts,
        }
    }
}

/// The newest version of one key seen so far.
#[derive(Debug, Clone, Copy)]
struct Newest {
    extent: usize,
    row: usize,
    seq: i64,
    tombstone: bool,
    event_at: i64,
}

/// The first pass: which rows of the extents read survive.
#[derive(Debug)]
struct Survivors {
    /// Per extent read, one bit per row: true for its key's newest version, unless that is an
    /// expired tombstone.
    keep: Vec<BooleanArray>,
    rows_read: u64,
    versions_dropped: u64,
    tombstones_dropped: u64,
    tombstones_kept: u64,
}

impl Survivors {
    async fn choose(
        store: &ExtentStore,
        inputs: &[ExtentEntry],
        cutoff: i64,
    ) -> Result<Self, TableError> {
        let mut newest: HashMap<String, Newest> = HashMap::new();
        let mut rows_per_extent = Vec::with_capacity(inputs.len());
        for (extent, entry) in inputs.iter().enumerate() {
            let mut stream = open_extent(store, entry, Some(&[PK, SEQ, OP, EVENT_AT]))
                .await?
                .build()?;
            let mut row = 0;
            while let Some(batch) = stream.try_next().await.map_err(read_error)? {
                let versions = Versions::of(&batch, &entry.path)?;
                for i in 0..batch.num_rows() {
                    let candidate = Newest {
                        extent,
                        row: row + i,
                        seq: versions.seq.value(i),
                        tombstone: versions.op.value(i) == ChangeOp::Delete.as_str(),
                        event_at: versions.event_at.value(i),
                    };
                    let key = versions.pk.value(i);
                    match newest.get_mut(key) {
                        Some(known) if known.seq > candidate.seq => {}
                        Some(known) => *known = candidate,
                        None => {
                            newest.insert(key.to_owned(), candidate);
                        }
                    }
                }
                row += batch.num_rows();
            }
            if row as u64 != entry.rows {
                return Err(TableError::Corrupt {
                    path: entry.path.clone(),
                    reason: format!("it holds {row} rows; the manifest says {}", entry.rows),
                });
            }
            rows_per_extent.push(row);
        }

        let rows_read: u64 = inputs.iter().map(|e| e.rows).sum();
        let versions_dropped = rows_read - newest.len() as u64;
        let mut keep: Vec<BooleanBufferBuilder> = rows_per_extent
            .iter()
            .map(|&rows| {
                let mut bits = BooleanBufferBuilder::new(rows);
                bits.append_n(rows, false);
                bits
            })
            .collect();
        let (mut tombstones_dropped, mut tombstones_kept) = (0, 0);
        for version in newest.into_values() {
            if version.tombstone && version.event_at < cutoff {
                tombstones_dropped += 1;
                continue;
            }
            tombstones_kept += u64::from(version.tombstone);
            keep[version.extent].set_bit(version.row, true);
        }
        Ok(Self {
            keep: keep
                .iter_mut()
                .map(|bits| BooleanArray::new(bits.finish(), None))
                .collect(),
            rows_read,
            versions_dropped,
            tombstones_dropped,
            tombstones_kept,
        })
    }
}

/// The version columns of a batch read from an extent.
struct Versions<'a> {
    pk: &'a StringArray,
    seq: &'a Int64Array,
    op: &'a StringArray,
    event_at: &'a TimestampMicrosecondArray,
}

impl<'a> Versions<'a> {
    fn of(batch: &'a RecordBatch, path: &str) -> Result<Self, TableError> {
        Ok(Self {
            pk: system_column(batch, PK, path, |a| a.as_string_opt::<i32>())?,
            seq: system_column(batch, SEQ, path, |a| a.as_primitive_opt::<Int64Type>())?,
            op: system_column(batch, OP, path, |a| a.as_string_opt::<i32>())?,
            event_at: system_column(batch, EVENT_AT, path, |a| {
                a.as_primitive_opt::<TimestampMicrosecondType>()
            })?,
        })
    }
}

/// System column `name` of `batch` (read from the extent at `path`) as its Arrow type,
/// without nulls.
fn system_column<'a, T: Array>(
    batch: &'a RecordBatch,
    name: &str,
    path: &str,
    downcast: impl FnOnce(&'a dyn Array) -> Option<&'a T>,
) -> Result<&'a T, TableError> {
    let corrupt = |reason: String| TableError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let array = batch
        .column_by_name(name)
        .ok_or_else(|| corrupt(format!("system column `{name}` is missing")))?;
    let typed = downcast(array.as_ref()).ok_or_else(|| {
        corrupt(format!(
            "system column `{name}` has type {}",
            array.data_type()
        ))
    })?;
    if typed.null_count() > 0 {
        return Err(corrupt(format!("system column `{name}` holds nulls")));
    }
    Ok(typed)
}

/// The second pass's output: surviving rows into compacted extents, tombstones into extents
/// of their own.
struct CompactedWriters {
    rows: TableWriter,
    tombstones: TableWriter,
}

impl CompactedWriters {
    /// Writers of compacted extents (`compacted`), or of merged delta extents.
    async fn open(
        catalog: &Catalog,
        store: &ExtentStore,
        table: &TableRef,
        options: &CompactionOptions,
        compacted: bool,
    ) -> Result<Self, TableError> {
        let write = WriteOptions {
            extent_rows: options.extent_rows,
            compacted,
            ..WriteOptions::default()
        };
        Ok(Self {
            rows: TableWriter::open(catalog, store, table, write.clone()).await?,
            tombstones: TableWriter::open(catalog, store, table, write).await?,
        })
    }

    /// Copies the rows of `entry` that `keep` selects (the writers null-fill the columns an
    /// older schema version lacks).
    async fn copy(
        &mut self,
        store: &ExtentStore,
        entry: &ExtentEntry,
        keep: &BooleanArray,
    ) -> Result<(), TableError> {
        let mut stream = open_extent(store, entry, None)
            .await?
            .with_row_selection(RowSelection::from_filters(std::slice::from_ref(keep)))
            .build()?;
        while let Some(batch) = stream.try_next().await.map_err(read_error)? {
            let op = system_column(&batch, OP, &entry.path, |a| a.as_string_opt::<i32>())?;
            let tombstone = eq(op, &StringArray::new_scalar(ChangeOp::Delete.as_str()))?;
            self.tombstones
                .write(&filter_record_batch(&batch, &tombstone)?)
                .await?;
            self.rows
                .write(&filter_record_batch(&batch, &not(&tombstone)?)?)
                .await?;
        }
        Ok(())
    }

    async fn finish(self) -> Result<WrittenExtents, TableError> {
        let mut written = self.rows.finish().await?;
        let tombstones = self.tombstones.finish().await?;
        written.extents.extend(tombstones.extents);
        written.rows += tombstones.rows;
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_is_the_smallest_op_so_the_minimum_statistic_flags_tombstones() {
        let delete = ChangeOp::Delete.as_str();
        assert!(delete < ChangeOp::Insert.as_str() && delete < ChangeOp::Update.as_str());
    }

    #[test]
    fn the_tombstone_cutoff_is_now_minus_the_retention_in_microseconds() {
        let options = CompactionOptions {
            tombstone_retention: Duration::from_secs(10),
            now: Some(UNIX_EPOCH + Duration::from_secs(100)),
            ..CompactionOptions::default()
        };
        assert_eq!(options.tombstone_cutoff(), 90_000_000);
        let before_the_epoch = CompactionOptions {
            tombstone_retention: Duration::from_secs(1000),
            ..options
        };
        assert_eq!(before_the_epoch.tombstone_cutoff(), i64::MIN);
    }
}

//! One sync batch: rows of any number of source transactions (or one table's snapshot), over
//! any number of tables, committed to the catalog together with the connector's cursor and
//! the tables' sync states.
//!
//! # The exactly-once commit
//!
//! 1. Rows are written into extents as they arrive (one [`TableWriter`] per touched table),
//!    so a batch, or a single huge source transaction, never has to fit in memory.
//! 2. [`SyncBatch::commit`] closes the extents, stores a new manifest per table (recording,
//!    through the table's key index, the stored rows the batch's changes supersede as
//!    deleted: [`KeyIndexes`]; an index is only moved on by a commit known to have landed,
//!    and dropped when the outcome is unknown), then makes
//!    one [`CatalogCommit`] that compares the connector's epoch (the fence), its cursor and
//!    the shards of every touched table, and installs the new cursor, snapshots and sync
//!    states together.
//! 3. Only after that commit does the caller acknowledge the source.
//!
//! A crash before step 2 lands leaves unreferenced files (garbage-collected later) and the
//! old cursor: the source replays the batch to the next owner. A crash after it leaves the
//! new cursor: the replay starts after it. A commit whose answer was lost is recognised by
//! its `commit_id` in the cursor when retried. A snapshot changed by someone else (a
//! compaction) is rebased on; an epoch changed by someone else fences this worker for good.
//!
//! # Batches older than the garbage collector's patience
//!
//! The collector deletes unreferenced files older than its grace `G` and counts on writers
//! committing within `G/2` (see `kyma_table::gc`). A batch has no such deadline (a long
//! table copy, a huge source transaction), so once it is [`SyncOptions::register_after`]
//! old it registers itself ([`kyma_catalog::OpenWrite`], under the worker's lease): the
//! collector keeps its tables' files from its start on, and the commit compares the
//! registration — a worker that froze past its lease cannot commit files that may be gone.
//! A batch past [`UNREGISTERED_LIMIT`] that never registered is refused at commit (only a
//! process frozen for hours gets there) and replayed.
//!
//! [`SyncOptions::register_after`]: crate::SyncOptions::register_after

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kyma_catalog::{
    Catalog, CatalogCommit, ClaimFence, CommitOutcome, CursorAdvance, LeaseId, OpenWrite, Revision,
    TableCommit, TableRef, TableState, TableSyncState, WriteRegistration, now_ms,
};
use kyma_table::key_index::{KeyIndex, Resolution};
use kyma_table::{ExtentStore, TableWriter, WriteOptions, WrittenExtents};
use uuid::Uuid;

use crate::error::SyncError;

/// Rebases a commit at most this many times (each means a compaction landed meanwhile).
const MAX_REBASES: usize = 16;
/// A batch this old that never registered is not committed: the garbage collector (whose
/// writers must commit within half its default grace of 6 h) may have taken its files.
pub const UNREGISTERED_LIMIT: Duration = Duration::from_secs(2 * 3600);

/// Where the connector's cursor stands: the claim and the cursor revision commits compare.
#[derive(Debug, Clone)]
pub struct CursorFence {
    /// The claim the worker holds.
    pub claim: ClaimFence,
    /// The revision of the committed cursor (0 before the first commit).
    pub cursor_revision: Revision,
}

/// The cursor a batch installs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorValue {
    /// The source position the batch covers.
    pub position: String,
    /// The next `_kyma_seq` after the batch.
    pub next_seq: u64,
    /// What the position is a position in.
    pub source_id: Option<String>,
}

/// Rows written and not yet committed.
#[derive(Debug)]
pub struct SyncBatch {
    catalog: Catalog,
    store: ExtentStore,
    options: WriteOptions,
    writers: BTreeMap<TableRef, TableWriter>,
    rows: u64,
    opened_at: Instant,
    started_at_ms: i64,
    registration: Option<WriteRegistration>,
}

/// What a committed batch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedBatch {
    /// The catalog revision of the commit.
    pub revision: Revision,
    /// Rows committed per table.
    pub rows: BTreeMap<TableRef, u64>,
    /// Extents committed per table.
    pub extents: BTreeMap<TableRef, usize>,
    /// Bytes of the extents committed per table.
    pub bytes: BTreeMap<TableRef, u64>,
    /// How many times the commit rebased on a concurrent table commit.
    pub rebases: u64,
    /// When the catalog transaction started (the extents were written by then).
    pub catalog_started: Instant,
    /// How long the catalog transaction took, rebases included.
    pub catalog_took: Duration,
}

impl SyncBatch {
    /// An empty batch writing extents with `options`.
    pub fn new(catalog: &Catalog, store: &ExtentStore, options: WriteOptions) -> Self {
        Self {
            catalog: catalog.clone(),
            store: store.clone(),
            options,
            writers: BTreeMap::new(),
            rows: 0,
            opened_at: Instant::now(),
            started_at_ms: now_ms(),
            registration: None,
        }
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The writer of `table`, opened on first use.
    pub async fn writer(&mut self, table: &TableRef) -> Result<&mut TableWriter, SyncError> {
        if !self.writers.contains_key(table) {
            let writer =
                TableWriter::open(&self.catalog, &self.store, table, self.options.clone()).await?;
            self.writers.insert(table.clone(), writer);
        }
        self.writers
            .get_mut(table)
            .ok_or_else(|| SyncError::Definite(format!("no writer for {table}")))
    }

    /// Writes `batch` into `table`.
    pub async fn write(
        &mut self,
        table: &TableRef,
        batch: &arrow::array::RecordBatch,
    ) -> Result<(), SyncError> {
        self.rows += batch.num_rows() as u64;
        self.writer(table).await?.write(batch).await?;
        Ok(())
    }

    /// Whether the batch is `after` old and not registered yet (see the module docs).
    pub fn needs_registration(&self, after: Duration) -> bool {
        self.registration.is_none() && self.opened_at.elapsed() >= after
    }

    /// Registers the batch as an open write of `tables` (ids) under `lease` (see the module
    /// docs); the commit carries the registration.
    pub async fn register(
        &mut self,
        lease: LeaseId,
        writer: &str,
        tables: &[Uuid],
    ) -> Result<(), SyncError> {
        let write = OpenWrite {
            table_ids: tables.to_vec(),
            started_at_ms: self.started_at_ms,
            writer: writer.to_owned(),
        };
        self.registration = Some(self.catalog.register_write(lease, &write).await?);
        tracing::info!(writer, age = ?self.opened_at.elapsed(), "a long sync batch registered its open write");
        Ok(())
    }

    /// Commits everything written, the cursor `cursor` and the tables' new sync `states`
    /// (tables with a new state but no rows get a state-only commit) in one catalog commit
    /// fenced by `fence`; on success the fence's cursor revision moves to the commit. Rows
    /// whose keys were recorded are resolved through `indexes` (see [`KeyIndexes`]).
    pub async fn commit(
        mut self,
        fence: &mut CursorFence,
        indexes: &mut KeyIndexes,
        cursor: CursorValue,
        states: &BTreeMap<TableRef, TableSyncState>,
    ) -> Result<CommittedBatch, SyncError> {
        if self.registration.is_none() && self.opened_at.elapsed() >= UNREGISTERED_LIMIT {
            return Err(SyncError::Transient(format!(
                "a batch of connector `{}` is {:?} old and never registered: its files may have been garbage-collected, so it is written again",
                fence.claim.connector,
                self.opened_at.elapsed()
            )));
        }
        let mut written: Vec<WrittenExtents> = Vec::with_capacity(self.writers.len());
        for writer in std::mem::take(&mut self.writers).into_values() {
            written.push(writer.finish().await?);
        }
        let mut tables: Vec<TableRef> = written.iter().map(|w| w.table.clone()).collect();
        tables.extend(
            states
                .keys()
                .filter(|t| !tables.contains(t))
                .cloned()
                .collect::<Vec<_>>(),
        );
        let commit_id = Uuid::now_v7();
        let catalog_started = Instant::now();
        let (_, mut bases) = self.catalog.tables(&tables).await?;
        for rebases in 0..MAX_REBASES {
            let attempt = self
                .attempt(fence, indexes, &cursor, commit_id, &written, &bases, states)
                .await;
            let (outcome, resolutions) = match attempt {
                Ok(attempted) => attempted,
                Err(e) => {
                    // An index may have caught up halfway, or the commit may have landed.
                    for w in &written {
                        indexes.forget(&w.table);
                    }
                    return Err(e);
                }
            };
            match outcome {
                CommitOutcome::Committed { revision } => {
                    indexes.committed(resolutions);
                    // The commit deleted the registration.
                    self.registration = None;
                    fence.cursor_revision = revision;
                    return Ok(CommittedBatch {
                        revision,
                        rows: written.iter().map(|w| (w.table.clone(), w.rows)).collect(),
                        extents: written
                            .iter()
                            .map(|w| (w.table.clone(), w.extents.len()))
                            .collect(),
                        bytes: written
                            .iter()
                            .map(|w| (w.table.clone(), w.extents.iter().map(|e| e.bytes).sum()))
                            .collect(),
                        rebases: rebases as u64,
                        catalog_started,
                        catalog_took: catalog_started.elapsed(),
                    });
                }
                CommitOutcome::Conflict(conflict) => {
                    let cursor_revision = conflict.cursor.as_ref().map_or(0, |c| c.mod_revision);
                    if cursor_revision != fence.cursor_revision {
                        // Only the epoch holder writes the cursor, and the epoch still matched:
                        // a cursor this worker did not write means its view is wrong.
                        return Err(SyncError::Fenced {
                            connector: fence.claim.connector.clone(),
                        });
                    }
                    tracing::debug!(connector = %fence.claim.connector, "sync commit rebasing on a concurrent table commit");
                    bases = conflict.tables;
                }
            }
        }
        Err(SyncError::Transient(format!(
            "the tables of connector `{}` kept changing under {MAX_REBASES} commit attempts",
            fence.claim.connector
        )))
    }

    /// One attempt of the commit on `bases`, with what each table's rows supersede.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        fence: &CursorFence,
        indexes: &mut KeyIndexes,
        cursor: &CursorValue,
        commit_id: Uuid,
        written: &[WrittenExtents],
        bases: &[TableState],
        states: &BTreeMap<TableRef, TableSyncState>,
    ) -> Result<(CommitOutcome, Vec<(TableRef, Resolution)>), SyncError> {
        let (tables, resolutions) =
            table_commits(&self.store, indexes, written, bases, states).await?;
        let commit = CatalogCommit {
            commit_id,
            cursor: Some(CursorAdvance {
                claim: fence.claim.clone(),
                base_cursor_revision: fence.cursor_revision,
                position: cursor.position.clone(),
                next_seq: cursor.next_seq,
                source_id: cursor.source_id.clone(),
            }),
            tables,
            open_write: self.registration.clone(),
        };
        Ok((self.catalog.commit(&commit).await?, resolutions))
    }
}

/// A batch dropped with its registration (abandoned: a failed run, a lost claim) gives it up,
/// so that the collector does not keep its tables' files until the worker's lease ends. A
/// committed batch's registration went with its commit; giving it up again changes nothing.
impl Drop for SyncBatch {
    fn drop(&mut self) {
        let Some(registration) = self.registration.take() else {
            return;
        };
        let catalog = self.catalog.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = catalog.release_write(&registration).await {
                    tracing::debug!(error = %e, "an abandoned batch's registration stays until its lease ends");
                }
            });
        }
    }
}

/// Each table's part of the commit, on `bases` (in the order: `written`, then the tables with
/// a state change only), and what the rows of each resolved one supersede.
async fn table_commits(
    store: &ExtentStore,
    indexes: &mut KeyIndexes,
    written: &[WrittenExtents],
    bases: &[TableState],
    states: &BTreeMap<TableRef, TableSyncState>,
) -> Result<(Vec<TableCommit>, Vec<(TableRef, Resolution)>), SyncError> {
    let mut commits = Vec::with_capacity(bases.len());
    let mut resolutions = Vec::new();
    for (i, base) in bases.iter().enumerate() {
        let commit = match written.get(i) {
            Some(extents) if !extents.keys.is_empty() => {
                let (commit, resolution) = indexes.table_commit(store, extents, base).await?;
                resolutions.extend(resolution.map(|r| (extents.table.clone(), r)));
                commit
            }
            Some(extents) => extents.table_commit(store, base).await?,
            None => TableCommit::state_only(base, base.sync.clone().unwrap_or_default()),
        };
        commits.push(match states.get(&base.table) {
            Some(state) => commit.with_sync(state.clone()),
            None => commit,
        });
    }
    Ok((commits, resolutions))
}

/// The key indexes of the tables a run commits changes to ([`kyma_table::key_index`]), so
/// each commit records what its rows supersede as deleted rows and readers need not merge
/// versions. They hold at most `max_keys` keys together: a table that would pass that is
/// committed without resolving (and read by merging versions) until it fits again.
#[derive(Debug)]
pub struct KeyIndexes {
    max_keys: u64,
    tables: BTreeMap<TableRef, KeyIndex>,
}

impl KeyIndexes {
    /// No index yet, at most `max_keys` keys.
    pub fn new(max_keys: u64) -> Self {
        Self {
            max_keys,
            tables: BTreeMap::new(),
        }
    }

    /// `written`'s part of a commit on `base`, resolved through the table's index (built on
    /// first use) when the budget allows.
    async fn table_commit(
        &mut self,
        store: &ExtentStore,
        written: &WrittenExtents,
        base: &TableState,
    ) -> Result<(TableCommit, Option<Resolution>), SyncError> {
        let others: u64 = self
            .tables
            .iter()
            .filter(|(table, _)| **table != written.table)
            .map(|(_, index)| index.keys() as u64)
            .sum();
        let index = self
            .tables
            .entry(written.table.clone())
            .or_insert_with(|| KeyIndex::new(written.table_id));
        let budget = self.max_keys.saturating_sub(others);
        let (commit, resolution) = written
            .resolved_table_commit(store, base, index, budget)
            .await?;
        if resolution.is_none() {
            self.forget(&written.table);
        }
        Ok((commit, resolution))
    }

    /// Moves the indexes onto a landed commit's snapshots.
    fn committed(&mut self, resolutions: Vec<(TableRef, Resolution)>) {
        for (table, resolution) in resolutions {
            let moved = self
                .tables
                .get_mut(&table)
                .is_some_and(|index| index.committed(resolution));
            if !moved {
                self.forget(&table);
            }
        }
    }

    /// Drops `table`'s index: the next commit builds a new one.
    fn forget(&mut self, table: &TableRef) {
        self.tables.remove(table);
    }
}

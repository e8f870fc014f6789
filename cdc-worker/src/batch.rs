//! One sync batch: rows of any number of source transactions, over any number of tables,
//! committed to the catalog together with the source cursor that covers them.
//!
//! # The exactly-once commit
//!
//! 1. Rows are written into extents as they arrive (one [`TableWriter`] per touched table),
//!    so a batch, or a single huge source transaction, never has to fit in memory.
//! 2. [`SyncBatch::commit`] closes the extents, stores a new manifest per table, then makes
//!    one [`CatalogCommit`] that compares the connector's epoch (the fence), its cursor and
//!    every touched table's snapshot, and installs the new cursor and snapshots together.
//! 3. Only after that commit does the caller acknowledge the source.
//!
//! A crash before step 2 lands leaves unreferenced files (garbage-collected later) and the
//! old cursor: the source replays the batch to the next owner. A crash after it leaves the
//! new cursor: the replay starts after it. A commit whose answer was lost is recognised by
//! its `commit_id` in the cursor when retried. A snapshot changed by someone else (a
//! compaction) is rebased on; an epoch changed by someone else fences this worker for good.

use std::collections::BTreeMap;

use kyma_catalog::{
    Catalog, CatalogCommit, ClaimFence, CommitOutcome, CursorAdvance, Revision, TableRef,
};
use kyma_table::{ExtentStore, TableWriter, WriteOptions, WrittenExtents};
use uuid::Uuid;

use crate::error::SyncError;

/// Rebases a commit at most this many times (each means a compaction landed meanwhile).
const MAX_REBASES: usize = 16;

/// Where the connector's cursor stands: the claim and the cursor revision commits compare.
#[derive(Debug, Clone)]
pub struct CursorFence {
    /// The claim the worker holds.
    pub claim: ClaimFence,
    /// The revision of the committed cursor (0 before the first commit).
    pub cursor_revision: Revision,
}

/// Rows written and not yet committed.
#[derive(Debug)]
pub struct SyncBatch {
    catalog: Catalog,
    store: ExtentStore,
    options: WriteOptions,
    writers: BTreeMap<TableRef, TableWriter>,
    rows: u64,
}

/// What a committed batch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedBatch {
    /// The catalog revision of the commit.
    pub revision: Revision,
    /// Rows committed per table.
    pub rows: BTreeMap<TableRef, u64>,
    /// How many times the commit rebased on a concurrent table commit.
    pub rebases: u64,
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

    /// Commits everything written, and the cursor `position`, in one catalog commit fenced
    /// by `fence`; on success the fence's cursor revision moves to the commit.
    pub async fn commit(
        self,
        fence: &mut CursorFence,
        position: String,
    ) -> Result<CommittedBatch, SyncError> {
        let mut written: Vec<WrittenExtents> = Vec::with_capacity(self.writers.len());
        for writer in self.writers.into_values() {
            written.push(writer.finish().await?);
        }
        let tables: Vec<TableRef> = written.iter().map(|w| w.table.clone()).collect();
        let commit_id = Uuid::now_v7();
        let (_, mut states) = self.catalog.tables(&tables).await?;
        for rebases in 0..MAX_REBASES {
            let mut commits = Vec::with_capacity(written.len());
            for (extents, state) in written.iter().zip(&states) {
                commits.push(extents.table_commit(&self.store, state).await?);
            }
            let commit = CatalogCommit {
                commit_id,
                cursor: Some(CursorAdvance {
                    claim: fence.claim.clone(),
                    base_cursor_revision: fence.cursor_revision,
                    position: position.clone(),
                    next_seq: 0,
                    source_id: None,
                }),
                tables: commits,
                open_write: None,
            };
            match self.catalog.commit(&commit).await? {
                CommitOutcome::Committed { revision } => {
                    fence.cursor_revision = revision;
                    return Ok(CommittedBatch {
                        revision,
                        rows: written.iter().map(|w| (w.table.clone(), w.rows)).collect(),
                        rebases: rebases as u64,
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
                    states = conflict.tables;
                }
            }
        }
        Err(SyncError::Transient(format!(
            "the tables of connector `{}` kept changing under {MAX_REBASES} commit attempts",
            fence.claim.connector
        )))
    }
}

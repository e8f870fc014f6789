//! The sync pipeline: one claimed connector, any source, from its change log into catalog
//! commits (SPEC §6). The source side is [`kyma_connectors::sync`]; everything here is the
//! same for every source.
//!
//! # A run
//!
//! 1. **Preflight** the source (settings and privileges, named when wrong).
//! 2. **Reconcile** ([`ConnectorSync::reconcile`]): discover the tables in scope, create or
//!    widen their kyma tables, and decide each table's phase from its durable state, which
//!    lives in the catalog next to the table's snapshot and is committed with its data:
//!    - `pending`: to be copied — a new table, one back in scope, one whose resync was
//!      requested, one whose copy a crash interrupted, or every table when the connector
//!      has no cursor yet;
//!    - `streaming` since its snapshot's position;
//!    - `failed`, with the reason, the fix and whether kyma retries by itself.
//!
//!    Tables that left the scope (or the source) go back to `pending` durably, so that a
//!    table that returns is copied again rather than streamed over a gap.
//! 3. **Prepare** the source for the tables with a primary key (publication, slot: every
//!    destructive step fenced by a catalog transaction on the claim, see [`ClaimCheck`]).
//!    Without a cursor this yields the first snapshot.
//! 4. **Copy** the pending tables, one commit per table: its rows (the compacted base,
//!    replacing whatever the table held), its state `streaming since <snapshot position>`
//!    and the cursor (the first copy creates it at the snapshot's position, with the
//!    source's identity) land together. A crash mid-snapshot loses only the table being
//!    copied; the next run copies the tables still pending under a new snapshot.
//! 5. **Stream** from the cursor ([`stream`]): transactions are batched, each batch commits
//!    its tables, their new states and the cursor in one catalog transaction, and only then
//!    is the source acknowledged. A transaction covered by the cursor (replayed after a
//!    crash) or by a table's snapshot position is not applied again. Every
//!    [`SyncOptions::discover_every`] the source's tables are discovered again; a new table,
//!    a removed one or a resync request ends the stream at a transaction boundary (after
//!    committing what it holds) and the run goes back to step 2.
//!
//! `_kyma_seq` is assigned here, one number per row version in stream order (a snapshot's
//! rows share one), continuing from the cursor's `next_seq`: versions of a key are ordered
//! the same way whatever the source's positions are like (file offsets after a failover,
//! events of one transaction sharing a cluster time). `_kyma_pk` comes from the typed key
//! values ([`kyma_table::synced::derive_pk`]), the same for snapshot and stream.
//!
//! # Errors
//!
//! A transient error ends the run; the supervisor retries it with backoff from the last
//! commit. A definite error about the whole connector goes to its status and is retried
//! slowly. A definite error about one table (data kyma cannot read, a value an update left
//! unchanged whose previous version kyma lacks) fails that table durably, with the fix, and
//! the rest go on.

mod copy;
mod status;
mod stream;
mod tables;
mod unchanged;

pub use copy::COPY_STAGES;
pub use stream::COMMIT_STAGES;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kyma_catalog::{
    Catalog, ConnectorClaim, ConnectorSpec, ConnectorStatus, LeaseId, SyncPhase, TableFailure,
    TableRef, TableState, TableSyncState,
};
use kyma_connectors::sync::{
    ChangeSource, Fence, NO_PRIMARY_KEY, Resume, SourcePosition, SourceTable, TableId,
};
use kyma_connectors::{ConnectorError, SecretResolver, registry};
use kyma_table::synced::SNAPSHOT_ONE_VALUED;
use kyma_table::{CompactionOptions, ExtentStore, WriteOptions};
use tokio::sync::watch;

use self::status::StatusBook;
use self::tables::{TableRun, ensure_table};
use crate::batch::{CursorFence, CursorValue, KeyIndexes, SyncBatch};
use crate::compactor::Compactor;
use crate::error::SyncError;
use crate::metrics::SyncMetrics;

/// How a worker batches, reports and looks for new tables.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Commit once this many bytes of rows are pending.
    pub batch_bytes: usize,
    /// Commit at the latest this long after the first pending transaction.
    pub batch_delay: Duration,
    /// Rows per Arrow batch handed to the extent writer.
    pub batch_rows: usize,
    /// Write the connector status at most this often; an idle source's position is
    /// committed (and acknowledged) at most this often too.
    pub status_every: Duration,
    /// Look for tables that entered or left the scope this often while streaming.
    pub discover_every: Duration,
    /// A batch this old registers itself with the garbage collector (see [`crate::batch`]).
    pub register_after: Duration,
    /// Compact a synced table once commits have added this many delta extents to it (see
    /// [`crate::compactor`]).
    pub compact_after_extents: usize,
    /// Keys the key indexes of one connector's tables may hold (each costs 40–80 bytes; see
    /// [`kyma_table::key_index`]). A table past it is committed without resolving what its
    /// changes supersede, and read by merging versions.
    pub key_index_max_keys: u64,
}

impl Default for SyncOptions {
    fn default() -> Self {
        Self {
            batch_bytes: 64 << 20,
            batch_delay: Duration::from_millis(100),
            batch_rows: 8192,
            status_every: Duration::from_secs(1),
            discover_every: Duration::from_secs(10),
            register_after: Duration::from_secs(600),
            compact_after_extents: CompactionOptions::default().min_delta_extents,
            key_index_max_keys: 16 << 20,
        }
    }
}

/// What a run needs besides the connector.
#[derive(Debug, Clone)]
pub struct SyncContext {
    /// The catalog.
    pub catalog: Catalog,
    /// Extent storage.
    pub store: ExtentStore,
    /// Source secrets.
    pub secrets: SecretResolver,
    /// Tuning.
    pub options: SyncOptions,
    /// Where runs count what they do.
    pub metrics: Arc<SyncMetrics>,
    /// Where commits report the delta extents they add.
    pub compactor: Arc<Compactor>,
}

impl SyncContext {
    /// How the tables of connector `spec` are compacted.
    pub fn compaction_options(&self, spec: &ConnectorSpec) -> CompactionOptions {
        CompactionOptions {
            min_delta_extents: self.options.compact_after_extents,
            ..CompactionOptions::for_retention(&spec.retention)
        }
    }
}

/// The committed cursor as the run keeps it.
#[derive(Debug)]
struct Cursor {
    fence: CursorFence,
    /// What the commits of changes supersede, per table.
    key_indexes: KeyIndexes,
    /// The committed position (`None` before the first commit).
    position: Option<SourcePosition>,
    /// The next `_kyma_seq`.
    next_seq: u64,
    /// What the position is a position in.
    source_id: Option<String>,
}

impl Cursor {
    fn value(&self, position: &SourcePosition) -> CursorValue {
        CursorValue {
            position: position.0.clone(),
            next_seq: self.next_seq,
            source_id: self.source_id.clone(),
        }
    }

    /// Commits `batch` with the cursor at `position` and the tables' new `states`; the
    /// cursor moves there.
    async fn commit(
        &mut self,
        batch: SyncBatch,
        position: &SourcePosition,
        states: &BTreeMap<TableRef, TableSyncState>,
    ) -> Result<crate::batch::CommittedBatch, SyncError> {
        let value = self.value(position);
        let committed = batch
            .commit(&mut self.fence, &mut self.key_indexes, value, states)
            .await?;
        self.position = Some(position.clone());
        Ok(committed)
    }

    /// The next `_kyma_seq`, taken.
    fn take_seq(&mut self) -> i64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        i64::try_from(seq).unwrap_or(i64::MAX)
    }
}

/// Checks the claim before a destructive step at the source (see [`Fence`]).
struct ClaimCheck<'a> {
    catalog: &'a Catalog,
    claim: &'a ConnectorClaim,
}

#[async_trait]
impl Fence for ClaimCheck<'_> {
    async fn check(&self, step: &str) -> Result<(), ConnectorError> {
        match self.catalog.check_claim(&self.claim.fence).await {
            Ok(()) => {
                tracing::info!(connector = %self.claim.fence.connector, epoch = self.claim.fence.epoch, "{step}");
                Ok(())
            }
            Err(kyma_catalog::CatalogError::Fenced { connector, .. }) => {
                Err(ConnectorError::Fenced {
                    connector,
                    step: step.to_owned(),
                })
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Why a stream ended without an error.
enum Ended {
    /// Told to stop.
    Stopped,
    /// The tables in scope (or a resync request) changed: reconcile and go on.
    Rescan,
}

/// Syncs one connector under a claim (see the module docs).
pub struct ConnectorSync {
    ctx: SyncContext,
    spec: ConnectorSpec,
    claim: ConnectorClaim,
    lease: LeaseId,
    cursor: Cursor,
    status: StatusBook,
    tables: BTreeMap<TableId, TableRun>,
    /// The tables (and keys) the last discovery found, to tell when the scope changes.
    scope: BTreeSet<(TableId, Vec<String>)>,
    requests: watch::Receiver<BTreeMap<String, u64>>,
}

impl ConnectorSync {
    /// A run of `spec` under `claim` (made under `lease`), resuming from the claim's cursor;
    /// `requests` follows the connector's resync requests.
    pub fn new(
        ctx: SyncContext,
        spec: ConnectorSpec,
        claim: ConnectorClaim,
        lease: LeaseId,
        status: ConnectorStatus,
        requests: watch::Receiver<BTreeMap<String, u64>>,
    ) -> Self {
        let committed = claim.cursor.as_ref();
        let cursor = Cursor {
            fence: CursorFence {
                claim: claim.fence.clone(),
                cursor_revision: committed.map_or(0, |c| c.mod_revision),
            },
            key_indexes: KeyIndexes::new(ctx.options.key_index_max_keys),
            position: committed
                .map(|c| SourcePosition(c.value.position.clone()))
                .filter(|p| !p.0.is_empty()),
            next_seq: committed.map_or(1, |c| c.value.next_seq.max(1)),
            source_id: committed.and_then(|c| c.value.source_id.clone()),
        };
        Self {
            ctx,
            spec,
            claim,
            lease,
            cursor,
            status: StatusBook::new(status),
            tables: BTreeMap::new(),
            scope: BTreeSet::new(),
            requests,
        }
    }

    /// Runs until stopped (`Ok`) or an error ends the run; the caller retries transient
    /// errors with backoff by calling it again.
    pub async fn run(&mut self, stop: &mut watch::Receiver<bool>) -> Result<(), SyncError> {
        let mut source =
            registry::kind(self.spec.source_type)?.change_source(&self.spec, &self.ctx.secrets);
        source.preflight().await?;
        loop {
            self.reconcile(source.as_mut()).await?;
            self.status.status.last_error = None;
            self.status.status.retries = None;
            self.write_status(true).await?;
            self.prepare_and_copy(source.as_mut()).await?;
            match self.stream(source.as_mut(), stop).await? {
                Ended::Stopped => return Ok(()),
                Ended::Rescan => continue,
            }
        }
    }

    /// Puts a failed run's error in the connector status (a definite one fails the
    /// connector until the next attempt succeeds).
    pub async fn record_error(&mut self, e: &SyncError) -> Result<(), SyncError> {
        self.ctx.metrics.error(&self.spec.name, e.is_retryable());
        self.status.status.last_error = Some(e.to_string());
        self.status.status.retries = Some(e.is_retryable());
        self.write_status(true).await
    }

    /// Writes the status under the claim: at most every `status_every` unless `force`.
    async fn write_status(&mut self, force: bool) -> Result<(), SyncError> {
        self.status
            .write(
                &self.ctx.catalog,
                &self.claim,
                self.ctx.options.status_every,
                force,
            )
            .await
    }

    /// A batch of changes: what they supersede is resolved at its commit.
    fn new_batch(&self) -> SyncBatch {
        self.batch_with(WriteOptions {
            record_keys: true,
            ..WriteOptions::default()
        })
    }

    /// A batch of one table's copy: the table's compacted base, one row per key (the next
    /// commit of changes indexes them), its system columns one-valued.
    fn copy_batch(&self) -> SyncBatch {
        self.batch_with(WriteOptions {
            compacted: true,
            one_valued: SNAPSHOT_ONE_VALUED,
            ..WriteOptions::default()
        })
    }

    fn batch_with(&self, options: WriteOptions) -> SyncBatch {
        SyncBatch::new(&self.ctx.catalog, &self.ctx.store, options)
    }

    /// Registers `batch` with the garbage collector once it is old (see [`crate::batch`]).
    async fn keep_safe(&self, batch: &mut SyncBatch) -> Result<(), SyncError> {
        if !batch.needs_registration(self.ctx.options.register_after) {
            return Ok(());
        }
        let ids: Vec<_> = self.tables.values().map(|t| t.table_id).collect();
        batch.register(self.lease, &self.spec.name, &ids).await
    }

    fn fence(&self) -> ClaimCheck<'_> {
        ClaimCheck {
            catalog: &self.ctx.catalog,
            claim: &self.claim,
        }
    }

    /// Step 2 of a run (see the module docs).
    async fn reconcile(&mut self, source: &mut dyn ChangeSource) -> Result<(), SyncError> {
        let discovered = source.discover().await?;
        self.scope = scope_of(&discovered);
        let requests = self.requests.borrow().clone();
        let (_, listed) = self.ctx.catalog.list_tables(Some(&self.spec.name)).await?;
        let mut existing: BTreeMap<TableId, TableState> = listed
            .into_iter()
            .map(|t| (TableId::new(&t.table.schema, &t.table.table), t))
            .collect();
        let mut tables = BTreeMap::new();
        let mut keys = Vec::new();
        for found in discovered {
            keys.push(found.id.key());
            if found.key.is_empty() {
                self.status.show(&found.id.key(), &no_primary_key());
                continue;
            }
            let listed = existing.remove(&found.id);
            let run = self.table_run(found, listed, &requests).await?;
            tables.insert(run.source.id.clone(), run);
        }
        self.status.keep_only(&keys);
        let gone: BTreeMap<TableRef, TableSyncState> = existing
            .into_values()
            .filter_map(|t| {
                let state = t.sync?;
                (state.phase != SyncPhase::Pending).then(|| {
                    tracing::info!(table = %t.table, "the table left the scope; it is copied again if it returns");
                    (t.table, TableSyncState {
                        phase: SyncPhase::Pending,
                        ..state
                    })
                })
            })
            .collect();
        self.tables = tables;
        if let Some(position) = self.cursor.position.clone()
            && !gone.is_empty()
        {
            let batch = self.new_batch();
            self.cursor.commit(batch, &position, &gone).await?;
        }
        Ok(())
    }

    /// The run of a discovered table: its kyma table ensured, its phase decided.
    async fn table_run(
        &mut self,
        source: SourceTable,
        existing: Option<TableState>,
        requests: &BTreeMap<String, u64>,
    ) -> Result<TableRun, SyncError> {
        let table = TableRef::new(&self.spec.name, &source.id.schema, &source.id.table);
        let (state, mapping) = ensure_table(
            &self.ctx.catalog,
            &self.spec.name,
            &table,
            &source,
            existing,
        )
        .await?;
        let key = source.id.key();
        for warning in mapping.warnings {
            self.status.warn(&key, warning);
        }
        let requested = requests.get(&key).copied().unwrap_or(0);
        let mut sync = state.sync.clone().unwrap_or_default();
        // Without a cursor there is no stream its position could continue.
        if self.cursor.position.is_none() || requested > sync.resyncs {
            sync.phase = SyncPhase::Pending;
            sync.failure = None;
        }
        self.status.show(&key, &sync);
        Ok(TableRun {
            table,
            table_id: state.meta.id,
            source,
            columns: mapping.map,
            state: sync,
            requested,
            shape: None,
        })
    }

    /// Steps 3 and 4 of a run (see the module docs).
    async fn prepare_and_copy(&mut self, source: &mut dyn ChangeSource) -> Result<(), SyncError> {
        let published: Vec<SourceTable> = self.tables.values().map(|t| t.source.clone()).collect();
        let published: Vec<&SourceTable> = published.iter().collect();
        let resume = self.cursor.position.clone().map(|position| Resume {
            position,
            source_id: self.cursor.source_id.clone(),
        });
        let prepared = source
            .prepare(&published, resume.as_ref(), &self.fence())
            .await?;
        self.cursor.source_id = Some(prepared.source_id);
        let snapshot = match prepared.initial {
            Some(initial) => initial,
            None if self
                .tables
                .values()
                .any(|t| t.state.phase == SyncPhase::Pending) =>
            {
                source.snapshot(&self.fence()).await?
            }
            None => return Ok(()),
        };
        self.copy_pending(snapshot).await
    }
}

/// The state that shows a table without a primary key (never synced; picked up by itself
/// once it has one).
fn no_primary_key() -> TableSyncState {
    TableSyncState {
        phase: SyncPhase::Failed,
        failure: Some(TableFailure {
            reason: NO_PRIMARY_KEY.to_owned(),
            fix: "add a primary key to the table; kyma then copies and syncs it by itself"
                .to_owned(),
            retries: true,
        }),
        ..TableSyncState::default()
    }
}

/// The set of tables (and their keys) a discovery found, to tell whether the scope changed.
fn scope_of(tables: &[SourceTable]) -> BTreeSet<(TableId, Vec<String>)> {
    tables
        .iter()
        .map(|t| (t.id.clone(), t.key.clone()))
        .collect()
}

/// The wall clock in microseconds since the epoch.
fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

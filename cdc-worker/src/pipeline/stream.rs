//! Streaming (step 5 of a run): source events into sync batches, each committed with the
//! cursor before the source is acknowledged.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kyma_catalog::{
    HistoryLostPolicy, SyncPhase, TableFailure, TablePhase, TableRef, TableSyncState,
};
use kyma_connectors::ConnectorError;
use kyma_connectors::sync::{
    Cell, ChangeOp, ChangeSource, ChangeStream, RowChange, SourceColumn, SourceEvent,
    SourcePosition, TableId,
};
use kyma_table::synced::{RowMeta, derive_pk};
use kyma_table::{KymaValue, KymaValueRef};
use tokio::sync::watch;

use super::tables::{ColumnMap, Shape, TableRun};
use super::{ConnectorSync, Ended, now_micros, scope_of};
use crate::batch::SyncBatch;
use crate::error::SyncError;
use crate::metrics::Synced;

/// The open source transaction.
struct OpenTransaction {
    position: SourcePosition,
    at_micros: i64,
    /// Covered by the cursor: applied before a crash, replayed now.
    skip: bool,
}

/// The fix of a table whose data cannot be applied.
const FIX_DATA: &str = "fix the data or the column's type at the source, then resync the table";
/// The fix of a table kyma lost track of.
const RESYNC: &str = "resync the table";

/// The state of the streaming phase.
struct Streaming {
    batch: SyncBatch,
    open: Option<OpenTransaction>,
    /// The end of the last transaction the batch holds.
    pending_end: Option<SourcePosition>,
    pending_since: Option<Instant>,
    /// How long after its source commit the batch's first transaction arrived.
    first_arrival_lag: Option<Duration>,
    /// Tables whose state changes with the next commit (they failed).
    states: BTreeMap<TableRef, TableSyncState>,
    last_commit_at: Option<i64>,
    last_idle_commit: Instant,
    next_discovery: Instant,
    /// Stop at the next transaction boundary and reconcile.
    rescan: bool,
}

impl Streaming {
    fn batch_bytes(&self, tables: &BTreeMap<TableId, TableRun>) -> usize {
        tables
            .values()
            .filter_map(|t| t.shape.as_ref())
            .map(|s| s.rows.bytes())
            .sum::<usize>()
            + usize::try_from(self.batch.rows()).unwrap_or(usize::MAX) * 64
    }
}

impl ConnectorSync {
    /// Streams from the cursor until stopped, or until the tables in scope change (see the
    /// module docs).
    pub(super) async fn stream(
        &mut self,
        source: &mut dyn ChangeSource,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Ended, SyncError> {
        let Some(from) = self.cursor.position.clone() else {
            return Err(SyncError::Transient(
                "there is no cursor to stream from".into(),
            ));
        };
        let mut stream = match source.stream(&from).await {
            Err(ConnectorError::HistoryLost(why)) if self.resnapshots_lost_history() => {
                self.start_over(&why).await?;
                return Ok(Ended::Rescan);
            }
            opened => opened?,
        };
        for run in self.tables.values() {
            if run.state.phase == SyncPhase::Streaming {
                self.status.table(&run.key()).phase = TablePhase::Streaming;
            }
        }
        self.write_status(true).await?;
        let mut s = Streaming {
            batch: self.new_batch(),
            open: None,
            pending_end: None,
            pending_since: None,
            first_arrival_lag: None,
            states: BTreeMap::new(),
            last_commit_at: None,
            last_idle_commit: Instant::now(),
            next_discovery: Instant::now() + self.ctx.options.discover_every,
            rescan: false,
        };
        let mut requests = self.requests.clone();
        loop {
            if s.rescan && s.open.is_none() {
                self.commit(&mut s, stream.as_mut()).await?;
                return Ok(Ended::Rescan);
            }
            let deadline = s
                .pending_since
                .filter(|_| s.open.is_none())
                .map(|at| tokio::time::Instant::from_std(at + self.ctx.options.batch_delay));
            tokio::select! {
                biased;
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return Ok(Ended::Stopped);
                    }
                }
                Ok(()) = requests.changed() => {
                    s.rescan |= self.resync_requested(&requests.borrow());
                }
                () = sleep_until(deadline) => self.commit(&mut s, stream.as_mut()).await?,
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(s.next_discovery)) => {
                    s.next_discovery = Instant::now() + self.ctx.options.discover_every;
                    s.rescan |= scope_of(&source.discover().await?) != self.scope;
                }
                event = stream.next() => match event {
                    None => return Err(SyncError::Transient("the change stream ended".into())),
                    Some(Err(ConnectorError::HistoryLost(why))) if self.resnapshots_lost_history() => {
                        self.start_over(&why).await?;
                        return Ok(Ended::Rescan);
                    }
                    Some(event) => self.apply(&mut s, &*source, stream.as_mut(), event?).await?,
                },
            }
            self.keep_safe(&mut s.batch).await?;
        }
    }

    /// Whether the connector copies everything again when the source lost the history its
    /// cursor needs (at the stream's start, or at its first read: MariaDB says so only then).
    fn resnapshots_lost_history(&self) -> bool {
        self.spec.retention.on_history_lost == HistoryLostPolicy::Resnapshot
    }

    /// The source lost the history the cursor needs and the connector opts into copying
    /// again (`retention.on_history_lost: resnapshot`): in one commit every table goes back
    /// to pending and the cursor is cleared, so the next round takes a new snapshot, copies
    /// every table under it and streams from there. A crash before the commit finds the
    /// history still lost and decides again; a crash after it resumes the copies.
    async fn start_over(&mut self, why: &str) -> Result<(), SyncError> {
        tracing::warn!(connector = %self.spec.name, %why, "change history lost: copying every table again");
        let mut states = BTreeMap::new();
        for run in self.tables.values_mut() {
            if run.state.phase == SyncPhase::Failed {
                continue;
            }
            run.state.phase = SyncPhase::Pending;
            states.insert(run.table.clone(), run.state.clone());
        }
        let batch = self.new_batch();
        self.cursor
            .commit(batch, &SourcePosition(String::new()), &states)
            .await?;
        self.cursor.position = None;
        let warning =
            format!("{why}; retention.on_history_lost is resnapshot, so the table is copied again");
        for run in self.tables.values() {
            self.status.show(&run.key(), &run.state);
            self.status.warn(&run.key(), warning.clone());
        }
        self.write_status(true).await
    }

    fn resync_requested(&self, requests: &BTreeMap<String, u64>) -> bool {
        self.tables
            .values()
            .any(|t| requests.get(&t.key()).is_some_and(|r| *r > t.state.resyncs))
    }

    async fn apply(
        &mut self,
        s: &mut Streaming,
        source: &dyn ChangeSource,
        stream: &mut dyn ChangeStream,
        event: SourceEvent,
    ) -> Result<(), SyncError> {
        match event {
            SourceEvent::Begin {
                position,
                committed_at_micros,
            } => {
                let skip = match &self.cursor.position {
                    Some(cursor) => source.covers(cursor, &position)?,
                    None => false,
                };
                s.open = Some(OpenTransaction {
                    position,
                    at_micros: committed_at_micros,
                    skip,
                });
            }
            SourceEvent::Relation { table, columns } => self.relation(s, &table, &columns).await?,
            SourceEvent::Row(change) => {
                if let Some(id) = self.applies_to(s, source, &change.table, Some(&change))? {
                    self.row(s, &id, change).await?;
                }
            }
            SourceEvent::Unreadable { tables, reason } => {
                for table in tables {
                    if let Some(id) = self.applies_to(s, source, &table, None)? {
                        self.fail_table(s, &id, reason.clone(), FIX_DATA)?;
                    }
                }
            }
            SourceEvent::Resnapshot { tables, reason } => {
                for table in tables {
                    if let Some(id) = self.applies_to(s, source, &table, None)? {
                        self.copy_again(s, &id, reason.clone())?;
                    }
                }
            }
            SourceEvent::Truncate { tables } => {
                for table in tables {
                    if let Some(id) = self.applies_to(s, source, &table, None)? {
                        self.truncate(s, &id).await?;
                    }
                }
            }
            SourceEvent::Commit { position } => {
                if let Some(open) = s.open.take()
                    && !open.skip
                {
                    s.pending_end = Some(position);
                    if s.pending_since.is_none() {
                        s.pending_since = Some(Instant::now());
                        s.first_arrival_lag = Some(micros_since(open.at_micros));
                    }
                    s.last_commit_at = Some(open.at_micros);
                }
                if s.pending_end.is_some()
                    && s.batch_bytes(&self.tables) >= self.ctx.options.batch_bytes
                {
                    self.commit(s, stream).await?;
                }
            }
            SourceEvent::Idle {
                position,
                lag_bytes,
            } => self.idle(s, source, stream, position, lag_bytes).await?,
        }
        Ok(())
    }

    /// The table a change of `table` in the open transaction (the row `row`, or the whole
    /// table) is applied to, if any: a streaming table whose copy does not contain the change.
    fn applies_to(
        &self,
        s: &Streaming,
        source: &dyn ChangeSource,
        table: &TableId,
        row: Option<&RowChange>,
    ) -> Result<Option<TableId>, SyncError> {
        let Some(open) = s.open.as_ref() else {
            return Err(SyncError::Transient(
                "a change arrived outside a transaction".into(),
            ));
        };
        let Some(run) = self.tables.get(table) else {
            return Ok(None);
        };
        if open.skip || run.state.phase != SyncPhase::Streaming {
            return Ok(None);
        }
        if let Some(since) = &run.state.since {
            let since = SourcePosition(since.clone());
            let covered = match row {
                Some(row) => source.covers_row(&since, &open.position, row)?,
                None => source.covers(&since, &open.position)?,
            };
            if covered {
                return Ok(None);
            }
        }
        Ok(Some(table.clone()))
    }

    /// A table's columns as the stream describes them now: rows collected under its old
    /// shape go into the batch first, and the kyma table widens to hold the new one.
    async fn relation(
        &mut self,
        s: &mut Streaming,
        table: &TableId,
        columns: &[SourceColumn],
    ) -> Result<(), SyncError> {
        let Some(run) = self.tables.get(table) else {
            return Ok(());
        };
        let (kyma_table, key, source_key) = (run.table.clone(), run.key(), run.source.key.clone());
        let state = self.ctx.catalog.table(&kyma_table).await?;
        let mapping = ColumnMap::onto(&state.schema.value, columns);
        let unchanged = self
            .tables
            .get(table)
            .and_then(|run| run.shape.as_ref())
            .is_some_and(|shape| shape.map == mapping.map);
        if unchanged {
            return Ok(());
        }
        self.flush_table(s, table).await?;
        for warning in mapping.warnings {
            tracing::warn!(table = %kyma_table, "{warning}");
            self.status.warn(&key, warning);
        }
        if !mapping.new_columns.is_empty() {
            self.ctx
                .catalog
                .widen_schema(&kyma_table, &mapping.new_columns)
                .await?;
        }
        match Shape::new(mapping.map, &source_key, columns) {
            Ok(shape) => {
                if let Some(run) = self.tables.get_mut(table) {
                    run.shape = Some(shape);
                }
                Ok(())
            }
            Err(reason) => self.fail_table(s, table, reason, RESYNC),
        }
    }

    /// Applies one row change (see [`super::unchanged`] for values left unchanged).
    async fn row(
        &mut self,
        s: &mut Streaming,
        id: &TableId,
        change: RowChange,
    ) -> Result<(), SyncError> {
        let Some(open) = s.open.as_ref() else {
            return Ok(());
        };
        let (lsn, at_micros) = (open.position.0.clone(), open.at_micros);
        let Some(run) = self.tables.get_mut(id) else {
            return Ok(());
        };
        let applied = match run.shape.as_mut() {
            Some(shape) => apply_row(shape, &change, &lsn, at_micros, &mut self.cursor)
                .map_err(|reason| (reason, FIX_DATA)),
            None => Err((
                "a change arrived before the stream described the table's columns".to_owned(),
                RESYNC,
            )),
        };
        if let Err((reason, fix)) = applied {
            return self.fail_table(s, id, reason, fix);
        }
        let Some(run) = self.tables.get_mut(id) else {
            return Ok(());
        };
        let table = run.table.clone();
        let Some(shape) = run.shape.as_mut() else {
            return Ok(());
        };
        if shape.held.len() >= self.ctx.options.batch_rows {
            self.flush_table(s, id).await?;
        } else if shape.rows.rows() >= self.ctx.options.batch_rows {
            let rows = shape.rows.finish()?;
            s.batch.write(&table, &rows).await?;
        }
        Ok(())
    }

    async fn truncate(&mut self, s: &mut Streaming, id: &TableId) -> Result<(), SyncError> {
        let Some(run) = self.tables.get_mut(id) else {
            return Ok(());
        };
        if let Some(shape) = run.shape.as_mut() {
            shape.rows.finish()?;
            shape.held.discard()?;
        }
        let table = run.table.clone();
        s.batch.writer(&table).await?.truncate().await?;
        Ok(())
    }

    /// Writes what table `id` collected into the batch: its rows, then its held updates
    /// resolved (a resolution that cannot be made fails the table).
    async fn flush_table(&mut self, s: &mut Streaming, id: &TableId) -> Result<(), SyncError> {
        let Some(run) = self.tables.get_mut(id) else {
            return Ok(());
        };
        let Some(shape) = run.shape.as_mut() else {
            return Ok(());
        };
        let table = run.table.clone();
        if shape.rows.rows() > 0 {
            let rows = shape.rows.finish()?;
            s.batch.write(&table, &rows).await?;
        }
        let resolved = shape
            .held
            .resolve(&self.ctx.catalog, &self.ctx.store, &mut s.batch, &table)
            .await?;
        match resolved {
            Ok(Some(rows)) => s.batch.write(&table, &rows).await,
            Ok(None) => Ok(()),
            Err(reason) => self.fail_table(s, id, reason, RESYNC),
        }
    }

    /// Fails table `id` with `reason`: what it collected is dropped, and its failed state
    /// commits with the next batch (whose cursor skips its data); the others go on.
    fn fail_table(
        &mut self,
        s: &mut Streaming,
        id: &TableId,
        reason: String,
        fix: &str,
    ) -> Result<(), SyncError> {
        tracing::error!(table = %id, %reason, "table failed");
        self.set_phase(
            s,
            id,
            SyncPhase::Failed,
            Some(TableFailure {
                reason,
                fix: fix.to_owned(),
                retries: false,
            }),
        )
    }

    /// Sends table `id` back to `pending` because its schema changed in a way the source
    /// cannot follow: what it collected is dropped, the state commits with the next batch,
    /// and the stream ends at the next transaction boundary so that the table is copied
    /// again.
    fn copy_again(
        &mut self,
        s: &mut Streaming,
        id: &TableId,
        reason: String,
    ) -> Result<(), SyncError> {
        tracing::warn!(table = %id, %reason, "the table is copied again");
        self.status
            .warn(&id.key(), format!("{reason}; the table is copied again"));
        self.set_phase(s, id, SyncPhase::Pending, None)?;
        s.rescan = true;
        Ok(())
    }

    /// Drops what table `id` collected and moves it to `phase` (durably with the next
    /// batch).
    fn set_phase(
        &mut self,
        s: &mut Streaming,
        id: &TableId,
        phase: SyncPhase,
        failure: Option<TableFailure>,
    ) -> Result<(), SyncError> {
        let Some(run) = self.tables.get_mut(id) else {
            return Ok(());
        };
        if let Some(shape) = run.shape.as_mut() {
            shape.rows.finish()?;
            shape.held.discard()?;
        }
        run.state = TableSyncState {
            phase,
            failure,
            ..run.state.clone()
        };
        s.states.insert(run.table.clone(), run.state.clone());
        let (key, state) = (run.key(), run.state.clone());
        self.status.show(&key, &state);
        Ok(())
    }

    /// Commits the batch with the end of its last transaction, then acknowledges the source.
    async fn commit(
        &mut self,
        s: &mut Streaming,
        stream: &mut dyn ChangeStream,
    ) -> Result<(), SyncError> {
        let Some(end) = s.pending_end.take() else {
            s.pending_since = None;
            return Ok(());
        };
        let started = Instant::now();
        let ids: Vec<TableId> = self.tables.keys().cloned().collect();
        for id in &ids {
            self.flush_table(s, id).await?;
        }
        let batch = std::mem::replace(&mut s.batch, self.new_batch());
        let states = std::mem::take(&mut s.states);
        let committed = self.cursor.commit(batch, &end, &states).await?;
        stream.ack(&end);
        let stages = CommitStages {
            arrival: s.first_arrival_lag.take().unwrap_or_default(),
            batching: s
                .pending_since
                .take()
                .map(|since| started.saturating_duration_since(since))
                .unwrap_or_default(),
            writing: committed.catalog_started.saturating_duration_since(started),
            catalog: committed.catalog_took,
        };
        stages.trace(&self.spec.name, committed.revision);
        for run in self.tables.values() {
            let table = self.status.table(&run.key());
            table.rows_synced += committed.rows.get(&run.table).copied().unwrap_or(0);
            table.bytes_synced += committed.bytes.get(&run.table).copied().unwrap_or(0);
        }
        let compaction = self.ctx.compaction_options(&self.spec);
        for (table, extents) in &committed.extents {
            let rows = committed.rows.get(table).copied().unwrap_or(0);
            self.ctx
                .compactor
                .committed(table, *extents, rows, &compaction);
        }
        let lag_ms = s
            .last_commit_at
            .map(|at| u64::try_from((now_micros() - at) / 1000).unwrap_or(0));
        if lag_ms.is_some() {
            self.status.status.lag_ms = lag_ms;
        }
        self.ctx.metrics.batch_committed(
            &self.spec.name,
            Synced {
                rows: committed.rows.values().sum(),
                bytes: committed.bytes.values().sum(),
            },
            committed.rebases,
            lag_ms,
        );
        self.write_status(false).await
    }

    /// Nothing is in flight up to `position`: commit what is pending, or, when nothing is,
    /// commit the idle position (at most every `status_every`) and acknowledge it, so that
    /// an idle source still advances — the source is only ever acknowledged committed
    /// positions.
    async fn idle(
        &mut self,
        s: &mut Streaming,
        source: &dyn ChangeSource,
        stream: &mut dyn ChangeStream,
        position: Option<SourcePosition>,
        lag_bytes: Option<u64>,
    ) -> Result<(), SyncError> {
        if s.open.is_some() {
            return Ok(());
        }
        if s.pending_end.is_some() {
            return self.commit(s, stream).await;
        }
        self.status.status.lag_ms = Some(0);
        self.status.status.lag_bytes = lag_bytes;
        if let (Some(position), Some(cursor)) = (position, self.cursor.position.clone())
            && s.last_idle_commit.elapsed() >= self.ctx.options.status_every
            && source.covers(&position, &cursor)?
        {
            let batch = std::mem::replace(&mut s.batch, self.new_batch());
            let states = std::mem::take(&mut s.states);
            self.cursor.commit(batch, &position, &states).await?;
            stream.ack(&position);
            s.last_idle_commit = Instant::now();
        }
        self.write_status(false).await
    }
}

/// Applies `change` to `shape`: a key change first writes a tombstone for the old key; a
/// value the change left unchanged comes from the old row when the source sent it whole,
/// else the row is held until its previous version is read. `Err` says why the table's data
/// cannot be applied.
fn apply_row(
    shape: &mut Shape,
    change: &RowChange,
    lsn: &str,
    at_micros: i64,
    cursor: &mut super::Cursor,
) -> Result<(), String> {
    let pk = pk_of(shape, &change.cells)?;
    let old_pk = change
        .old
        .as_ref()
        .map(|old| pk_of(shape, &old.cells))
        .transpose()?;
    // The row's version number comes before the old key's tombstone's: the two are versions
    // of different keys, and a value the row left unchanged is resolved from the old key's
    // versions before the row — which must not find the tombstone.
    let seq = cursor.take_seq();
    if let (Some(old), Some(old_pk)) = (&change.old, &old_pk)
        && *old_pk != pk
    {
        // The key changed: the old key is gone.
        let values = key_only(shape, &old.cells);
        let refs: Vec<_> = values
            .iter()
            .map(|v| v.as_ref().map(KymaValue::as_ref))
            .collect();
        let meta = RowMeta {
            pk: old_pk,
            op: ChangeOp::Delete,
            lsn,
            event_at_micros: at_micros,
            seq: cursor.take_seq(),
        };
        shape.rows.push(&refs, &meta)?;
    }
    let (values, unchanged) = if change.op == ChangeOp::Delete {
        // A tombstone carries its key only.
        (key_only(shape, &change.cells), Vec::new())
    } else {
        new_values(shape, change)
    };
    let refs: Vec<Option<KymaValueRef<'_>>> = values
        .iter()
        .map(|v| v.as_ref().map(KymaValue::as_ref))
        .collect();
    let meta = RowMeta {
        pk: &pk,
        op: change.op,
        lsn,
        event_at_micros: at_micros,
        seq,
    };
    if unchanged.is_empty() {
        shape.rows.push(&refs, &meta)
    } else {
        let prior_pk = old_pk.unwrap_or_else(|| pk.clone());
        shape.held.push(&refs, &meta, prior_pk, unchanged)
    }
}

/// The values of an inserted or updated row as its table columns hold them, and the
/// columns (indices) the change left unchanged (taken from the old row when the source sent
/// it whole, else to be resolved: see [`super::unchanged`]).
fn new_values(shape: &Shape, change: &RowChange) -> (Vec<Option<KymaValue>>, Vec<usize>) {
    let whole_old = change.old.as_ref().filter(|o| o.whole);
    let mut unchanged = Vec::new();
    let values = change
        .cells
        .iter()
        .enumerate()
        .map(|(i, cell)| {
            let cell = match (cell, whole_old) {
                (Cell::Unchanged, Some(old)) => old.cells.get(i).unwrap_or(&Cell::Null),
                (cell, _) => cell,
            };
            match cell {
                Cell::Value(v) => Some(shape.map.convert(i, v.clone())),
                Cell::Null => None,
                Cell::Unchanged => {
                    unchanged.push(i);
                    None
                }
            }
        })
        .collect();
    (values, unchanged)
}

/// `_kyma_pk` of a row's cells.
fn pk_of(shape: &Shape, cells: &[Cell]) -> Result<String, String> {
    let parts: Vec<Option<KymaValueRef<'_>>> = shape
        .key
        .iter()
        .map(|&i| match cells.get(i) {
            Some(Cell::Value(v)) => Ok(Some(v.as_ref())),
            _ => Err(format!(
                "a change did not carry its key column `{}`",
                shape.map.targets.get(i).map_or("?", |c| c.name.as_str())
            )),
        })
        .collect::<Result<_, _>>()?;
    Ok(derive_pk(&parts))
}

/// The key columns' values of `cells`, the other columns NULL.
fn key_only(shape: &Shape, cells: &[Cell]) -> Vec<Option<KymaValue>> {
    (0..shape.map.targets.len())
        .map(|i| match cells.get(i) {
            Some(Cell::Value(v)) if shape.key.contains(&i) => Some(v.clone()),
            _ => None,
        })
        .collect()
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Where the time of a streaming commit went, for its first transaction: reported as a
/// debug event (target [`COMMIT_STAGES`]) that benchmarks break the freshness down with.
struct CommitStages {
    /// Source commit → its commit event reached the pipeline (clocks of the source and the
    /// worker: meaningful on one machine, or with synchronised clocks).
    arrival: Duration,
    /// → the batch closed (`batch_delay`, `batch_bytes`, or a transaction boundary).
    batching: Duration,
    /// → its extents written and uploaded, manifests stored.
    writing: Duration,
    /// → the catalog transaction committed.
    catalog: Duration,
}

/// The tracing target of the per-commit stage event.
pub const COMMIT_STAGES: &str = "kyma_cdc_worker::commit_stages";

impl CommitStages {
    fn trace(&self, connector: &str, revision: i64) {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        tracing::debug!(
            target: COMMIT_STAGES,
            connector,
            revision,
            arrival_ms = ms(self.arrival),
            batching_ms = ms(self.batching),
            writing_ms = ms(self.writing),
            catalog_ms = ms(self.catalog),
            "commit stages"
        );
    }
}

/// Time since `at_micros` (Unix microseconds); zero if that is in the future.
fn micros_since(at_micros: i64) -> Duration {
    Duration::from_micros(u64::try_from(now_micros() - at_micros).unwrap_or(0))
}

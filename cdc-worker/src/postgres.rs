//! Syncing one Postgres connector: preflight, publication and slot, the initial snapshot,
//! then the replication stream into sync batches. The source protocol lives in
//! `kyma_connectors::postgres::sync`; this module turns it into catalog commits.
//!
//! # States of a connector run (and what is durable in each)
//!
//! - **Preparing**: preflight, table discovery, publication. Nothing in the catalog
//!   changes except the connector status and table creation (empty tables).
//! - **Snapshotting** (no committed cursor): the slot is (re)created with an exported
//!   snapshot and every table is copied into compacted extents. Nothing is visible until
//!   one commit installs every table and the cursor (the consistent point) together; a
//!   crash before it starts the snapshot over with a new slot.
//! - **Streaming** (a committed cursor): the slot streams from the cursor; each batch
//!   commits its tables with the end LSN of its last transaction, then acknowledges it.
//!   A transaction that ends at or before the cursor is skipped: after a crash, nothing
//!   is applied twice.
//!
//! A table without a primary key is refused (`last_error = "table has no primary key"`) and
//! never published; a table whose rows kyma cannot read goes to `failed` while the rest go
//! on.

use std::collections::{BTreeMap, HashMap};
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kyma_catalog::{
    Catalog, CatalogError, Column, ConnectorClaim, ConnectorSpec, ConnectorStatus, KymaType,
    TableOrigin, TablePhase, TableRef, TableSyncStatus,
};
use kyma_connectors::SecretResolver;
use kyma_connectors::postgres::connect;
use kyma_connectors::postgres::sync::replication::{
    PgReplicationStream, ReplicationMessage, SlotCreation,
};
use kyma_connectors::postgres::sync::snapshot::SnapshotSession;
use kyma_connectors::postgres::sync::text::{
    RowMeta, RowsBuilder, StreamColumn, TextFormat, parse_text,
};
use kyma_connectors::postgres::sync::{
    NO_PRIMARY_KEY, SyncNames, SyncTable, discover_tables, ensure_publication, format_lsn,
    parse_lsn, preflight, release_slot, replication_conninfo, slot_state,
};
use kyma_connectors::postgres::types::{PgType, kyma_type};
use kyma_table::synced::{self, ChangeOp};
use kyma_table::{ExtentStore, WriteOptions};
use pg_walstream::{ChangeEvent, ColumnValue, EventType, ReplicaIdentity, RowData};
use tokio::sync::watch;

use crate::batch::{CursorFence, SyncBatch};
use crate::error::SyncError;
use crate::metrics::SyncMetrics;
use crate::toast::HeldUpdates;

/// How a worker batches and reports.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Commit once this many bytes of rows are pending.
    pub batch_bytes: usize,
    /// Commit at the latest this long after the first pending transaction.
    pub batch_delay: Duration,
    /// Rows per Arrow batch handed to the extent writer.
    pub batch_rows: usize,
    /// Write the connector status at most this often.
    pub status_every: Duration,
}

impl Default for SyncOptions {
    fn default() -> Self {
        Self {
            batch_bytes: 64 << 20,
            batch_delay: Duration::from_millis(200),
            batch_rows: 8192,
            status_every: Duration::from_secs(1),
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
}

/// The connector status as this run keeps it, written under the claim.
struct StatusBook {
    status: ConnectorStatus,
    written_at: Option<Instant>,
}

impl StatusBook {
    fn table(&mut self, qualified: &str) -> &mut TableSyncStatus {
        self.status
            .tables
            .entry(qualified.to_owned())
            .or_insert_with(|| TableSyncStatus {
                phase: TablePhase::Pending,
                rows_synced: 0,
                bytes_synced: 0,
                last_error: None,
                fix: None,
                retries: None,
                warnings: Vec::new(),
            })
    }

    /// Fails a table; the next [`StatusBook::write`] writes at once.
    fn fail(&mut self, qualified: &str, error: String) {
        let table = self.table(qualified);
        table.phase = TablePhase::Failed;
        table.last_error = Some(error);
        self.written_at = None;
    }

    fn failed(&self, qualified: &str) -> bool {
        self.status
            .tables
            .get(qualified)
            .is_some_and(|t| t.phase == TablePhase::Failed)
    }

    async fn write(
        &mut self,
        catalog: &Catalog,
        claim: &ConnectorClaim,
        every: Duration,
        force: bool,
    ) -> Result<(), SyncError> {
        if !force && self.written_at.is_some_and(|at| at.elapsed() < every) {
            return Ok(());
        }
        self.status.updated_at_ms = now_micros() / 1000;
        catalog.put_status(claim, &self.status).await?;
        self.written_at = Some(Instant::now());
        Ok(())
    }
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// One source table being synced.
#[derive(Debug, Clone)]
struct SyncedTable {
    source: SyncTable,
    table: TableRef,
}

/// A table as the stream describes it (from its last Relation message).
struct Relation {
    table: TableRef,
    qualified: String,
    /// The stream columns and, per column, the source column it reads.
    columns: Vec<(StreamColumn, String)>,
    key: Vec<String>,
    rows: RowsBuilder,
    /// Updates waiting for unchanged TOAST values.
    held: HeldUpdates,
}

/// The old row of an update, as the source sent it.
#[derive(Clone, Copy)]
struct OldRow<'a> {
    row: &'a RowData,
    /// It holds every column (REPLICA IDENTITY FULL), not only the key's.
    whole: bool,
}

/// The open source transaction.
struct OpenTransaction {
    lsn: String,
    at_micros: i64,
    skip: bool,
}

/// Syncs connector `spec` under `claim` until `stop` turns true or an error ends the run.
pub struct PgConnectorSync {
    ctx: SyncContext,
    spec: ConnectorSpec,
    claim: ConnectorClaim,
    fence: CursorFence,
    cursor: Option<u64>,
    status: StatusBook,
    names: SyncNames,
}

impl PgConnectorSync {
    /// A run of `spec` under `claim`, resuming from the claim's cursor.
    pub fn new(
        ctx: SyncContext,
        spec: ConnectorSpec,
        claim: ConnectorClaim,
        status: ConnectorStatus,
    ) -> Result<Self, SyncError> {
        let cursor = claim
            .cursor
            .as_ref()
            .map(|c| parse_lsn(&c.value.position))
            .transpose()?;
        let fence = CursorFence {
            claim: claim.fence.clone(),
            cursor_revision: claim.cursor.as_ref().map_or(0, |c| c.mod_revision),
        };
        Ok(Self {
            names: SyncNames::of(&spec.name),
            ctx,
            spec,
            claim,
            fence,
            cursor,
            status: StatusBook {
                status,
                written_at: None,
            },
        })
    }

    /// Runs until stopped (`Ok`) or an error ends the run; the caller retries transient
    /// errors with backoff by calling it again.
    pub async fn run(&mut self, stop: &mut watch::Receiver<bool>) -> Result<(), SyncError> {
        let client = connect(&self.spec.connection, &self.ctx.secrets).await?;
        preflight(&client, &self.names).await?;
        let discovered = discover_tables(&client, &self.spec.scope).await?;
        let mut tables = Vec::new();
        for source in discovered {
            let qualified = source.qualified();
            if source.key.is_empty() {
                self.status.fail(&qualified, NO_PRIMARY_KEY.to_owned());
                continue;
            }
            let warnings: Vec<String> = source
                .columns
                .iter()
                .filter_map(|(_, m)| m.warning.clone())
                .collect();
            self.status.table(&qualified).warnings = warnings;
            let table = TableRef::new(&self.spec.name, &source.schema, &source.name);
            ensure_table(&self.ctx.catalog, &self.spec.name, &table, &source).await?;
            tables.push(SyncedTable { source, table });
        }
        let published: Vec<&SyncTable> = tables.iter().map(|t| &t.source).collect();
        ensure_publication(&client, &self.names, &published).await?;
        self.status.status.last_error = None;
        let conninfo = replication_conninfo(&self.spec.connection, &self.ctx.secrets)?;
        let stream = match self.cursor {
            None => {
                release_slot(&client, &self.names, true).await?;
                let creation = SlotCreation::create(&conninfo, &self.names).await?;
                let lsn = slot_state(&client, &self.names)
                    .await?
                    .and_then(|s| s.confirmed_flush)
                    .ok_or_else(|| {
                        SyncError::Transient("the new replication slot has no position".into())
                    })?;
                self.snapshot(&tables, &creation, lsn).await?;
                creation.start(lsn).await?
            }
            Some(lsn) => {
                if slot_state(&client, &self.names).await?.is_none() {
                    return Err(SyncError::Definite(format!(
                        "replication slot {} was dropped at the source, so changes after {} are lost to kyma; delete and re-register the connector to sync it again",
                        self.names.slot,
                        format_lsn(lsn)
                    )));
                }
                release_slot(&client, &self.names, false).await?;
                PgReplicationStream::resume(&conninfo, &self.names, lsn).await?
            }
        };
        for t in &tables {
            let qualified = t.source.qualified();
            if !self.status.failed(&qualified) {
                self.status.table(&qualified).phase = TablePhase::Streaming;
            }
        }
        self.write_status(true).await?;
        let mut streaming = Streaming {
            tables: tables
                .into_iter()
                .map(|t| ((t.source.schema.clone(), t.source.name.clone()), t))
                .collect(),
            client,
            types: HashMap::new(),
            relations: HashMap::new(),
            batch: self.new_batch(false),
            open: None,
            pending_end: None,
            pending_since: None,
            last_commit_at: None,
        };
        self.stream(&mut streaming, stream, stop).await
    }

    /// Puts a failed run's error in the connector status (a definite one fails the
    /// connector until the next attempt succeeds).
    pub async fn record_error(&mut self, e: &SyncError) -> Result<(), SyncError> {
        self.ctx.metrics.error(&self.spec.name, e.is_retryable());
        self.status.status.last_error = Some(e.to_string());
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

    fn new_batch(&self, compacted: bool) -> SyncBatch {
        SyncBatch::new(
            &self.ctx.catalog,
            &self.ctx.store,
            WriteOptions {
                compacted,
                ..WriteOptions::default()
            },
        )
    }

    async fn snapshot(
        &mut self,
        tables: &[SyncedTable],
        creation: &SlotCreation,
        lsn: u64,
    ) -> Result<(), SyncError> {
        let client = connect(&self.spec.connection, &self.ctx.secrets).await?;
        let session = SnapshotSession::open(
            client,
            Some(creation.snapshot()),
            format_lsn(lsn),
            now_micros(),
        )
        .await?;
        let mut batch = self.new_batch(true);
        for t in tables {
            let qualified = t.source.qualified();
            self.status.table(&qualified).phase = TablePhase::Snapshotting {
                rows_done: 0,
                rows_estimated: t.source.estimated_rows,
            };
            // The snapshot replaces whatever the table held (an earlier, abandoned run).
            batch.writer(&t.table).await?.truncate().await?;
            let mut rows = pin!(
                session
                    .copy_table(&t.source, self.ctx.options.batch_rows)
                    .await?
            );
            let mut done = 0_u64;
            while let Some(rows) = rows.next().await {
                let rows = rows?;
                done += rows.num_rows() as u64;
                batch.write(&t.table, &rows).await?;
                self.status.table(&qualified).phase = TablePhase::Snapshotting {
                    rows_done: done,
                    rows_estimated: t.source.estimated_rows.max(done),
                };
                self.write_status(false).await?;
            }
            self.status.table(&qualified).rows_synced = done;
        }
        session.close().await?;
        let committed = batch.commit(&mut self.fence, format_lsn(lsn)).await?;
        tracing::info!(connector = %self.spec.name, lsn = %format_lsn(lsn), revision = committed.revision, "snapshot committed");
        self.ctx
            .metrics
            .snapshot_committed(&self.spec.name, committed.rows.values().sum());
        self.cursor = Some(lsn);
        Ok(())
    }

    async fn stream(
        &mut self,
        s: &mut Streaming,
        mut stream: PgReplicationStream,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), SyncError> {
        loop {
            let deadline = s
                .pending_since
                .filter(|_| s.open.is_none())
                .map(|at| tokio::time::Instant::from_std(at + self.ctx.options.batch_delay));
            let message = tokio::select! {
                biased;
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return Ok(());
                    }
                    continue;
                }
                () = sleep_until(deadline) => {
                    self.commit(s, &stream).await?;
                    continue;
                }
                message = stream.next() => message,
            };
            match message {
                None => {
                    return Err(SyncError::Transient("the replication stream ended".into()));
                }
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(ReplicationMessage::Idle { server_lsn })) => {
                    if s.open.is_some() {
                        continue;
                    }
                    if s.pending_end.is_some() {
                        self.commit(s, &stream).await?;
                    } else if self.cursor.is_some_and(|c| server_lsn > c) {
                        // Nothing uncommitted: everything the server sent is applied, so
                        // the slot may advance (WAL is not retained for nothing).
                        stream.acknowledge(server_lsn);
                    }
                    self.status.status.lag_ms = Some(0);
                    self.status.status.lag_bytes = Some(0);
                    self.write_status(false).await?;
                }
                Some(Ok(ReplicationMessage::Change(event))) => {
                    self.apply(s, *event).await?;
                    if s.open.is_none()
                        && s.pending_end.is_some()
                        && s.batch_bytes() >= self.ctx.options.batch_bytes
                    {
                        self.commit(s, &stream).await?;
                    }
                }
            }
        }
    }

    async fn apply(&mut self, s: &mut Streaming, event: ChangeEvent) -> Result<(), SyncError> {
        let seq = i64::try_from(event.lsn.value()).unwrap_or(i64::MAX);
        match event.event_type {
            EventType::Begin {
                final_lsn,
                commit_timestamp,
                ..
            } => {
                s.open = Some(OpenTransaction {
                    lsn: format_lsn(final_lsn.value()),
                    at_micros: commit_timestamp.timestamp_micros(),
                    skip: self.cursor.is_some_and(|c| final_lsn.value() < c),
                });
            }
            EventType::Commit {
                end_lsn,
                commit_timestamp,
                ..
            } => {
                if let Some(open) = s.open.take()
                    && !open.skip
                {
                    s.pending_end = Some(end_lsn.value());
                    s.pending_since.get_or_insert_with(Instant::now);
                    s.last_commit_at = Some(commit_timestamp.timestamp_micros());
                }
            }
            EventType::Relation {
                relation_id,
                namespace,
                relation_name,
                columns,
                ..
            } => {
                self.relation(s, relation_id, &namespace, &relation_name, &columns)
                    .await?;
            }
            EventType::Insert {
                relation_oid, data, ..
            } => {
                self.row(s, relation_oid, ChangeOp::Insert, &data, None, seq)
                    .await?;
            }
            EventType::Update {
                relation_oid,
                old_data,
                new_data,
                replica_identity,
                ..
            } => {
                let old = old_data.as_ref().map(|row| OldRow {
                    row,
                    whole: replica_identity == ReplicaIdentity::Full,
                });
                self.row(s, relation_oid, ChangeOp::Update, &new_data, old, seq)
                    .await?;
            }
            EventType::Delete {
                relation_oid,
                old_data,
                ..
            } => {
                self.row(s, relation_oid, ChangeOp::Delete, &old_data, None, seq)
                    .await?;
            }
            EventType::Truncate { tables, .. } => {
                if s.open.as_ref().is_some_and(|o| o.skip) {
                    return Ok(());
                }
                for name in tables {
                    let Some(relation) = s
                        .relations
                        .values_mut()
                        .find(|r| r.qualified == *name || r.table.table == *name)
                    else {
                        continue;
                    };
                    let table = relation.table.clone();
                    relation.rows.finish()?;
                    relation.held.discard()?;
                    s.batch.writer(&table).await?.truncate().await?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn relation(
        &mut self,
        s: &mut Streaming,
        oid: u32,
        namespace: &str,
        name: &str,
        columns: &[pg_walstream::RelationColumn],
    ) -> Result<(), SyncError> {
        let Some(synced) = s
            .tables
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
        else {
            return Ok(());
        };
        let qualified = synced.source.qualified();
        let state = self.ctx.catalog.table(&synced.table).await?;
        let mut stream_columns = Vec::with_capacity(columns.len());
        let mut new_columns = Vec::new();
        for column in columns {
            let pg = s.pg_type(column.type_id, column.type_modifier).await?;
            let mapped = kyma_type(&column.name, &pg, &self.spec.scope);
            let (name, ty) = match state.schema.value.column(&column.name) {
                Some(existing) if existing.ty == mapped.ty => (column.name.to_string(), mapped.ty),
                Some(existing) => {
                    // A type change that cannot widen: new values go to a dynamic column.
                    let fallback = format!("{}_dynamic", column.name);
                    let warning = format!(
                        "column `{}` changed type at the source to {} (kyma {}), which cannot widen {}; its new values go to the dynamic column `{fallback}`",
                        column.name, pg.name, mapped.ty, existing.ty
                    );
                    let warnings = &mut self.status.table(&qualified).warnings;
                    if !warnings.contains(&warning) {
                        tracing::warn!(table = %synced.table, "{warning}");
                        warnings.push(warning);
                    }
                    new_columns.push(Column::new(&fallback, KymaType::Dynamic));
                    (fallback, KymaType::Dynamic)
                }
                None => {
                    if let Some(warning) = mapped.warning.clone() {
                        self.status.table(&qualified).warnings.push(warning);
                    }
                    new_columns.push(Column::new(column.name.as_ref(), mapped.ty));
                    (column.name.to_string(), mapped.ty)
                }
            };
            let format = TextFormat::of(&pg, ty);
            stream_columns.push((StreamColumn { name, ty, format }, column.name.to_string()));
        }
        if let Some(old) = s.relations.get_mut(&oid)
            && old.columns == stream_columns
        {
            return Ok(());
        }
        // Rows collected under the old shape go out first.
        if let Some(mut old) = s.relations.remove(&oid)
            && let Err(reason) = flush_relation(&self.ctx, &mut old, &mut s.batch).await?
        {
            fail_table(&mut self.status, &mut old, reason)?;
        }
        if !new_columns.is_empty() {
            self.ctx
                .catalog
                .widen_schema(&synced.table, &new_columns)
                .await?;
        }
        let shape: Vec<StreamColumn> = stream_columns.iter().map(|(c, _)| c.clone()).collect();
        s.relations.insert(
            oid,
            Relation {
                table: synced.table.clone(),
                qualified,
                columns: stream_columns,
                key: synced.source.key.clone(),
                rows: RowsBuilder::new(shape.clone())?,
                held: HeldUpdates::new(shape)?,
            },
        );
        Ok(())
    }

    async fn row(
        &mut self,
        s: &mut Streaming,
        oid: u32,
        op: ChangeOp,
        data: &RowData,
        old: Option<OldRow<'_>>,
        seq: i64,
    ) -> Result<(), SyncError> {
        let Some(open) = &s.open else {
            return Err(SyncError::Transient(
                "a change arrived outside a transaction".into(),
            ));
        };
        if open.skip {
            return Ok(());
        }
        let Some(relation) = s.relations.get_mut(&oid) else {
            return Ok(());
        };
        if self.status.failed(&relation.qualified) {
            return Ok(());
        }
        let text = |row: &RowData, column: &str| -> Option<Vec<u8>> {
            match row.get(column) {
                Some(ColumnValue::Text(b)) | Some(ColumnValue::Binary(b)) => Some(b.to_vec()),
                _ => None,
            }
        };
        let pk_of = |row: &RowData| -> String {
            let parts: Vec<Option<kyma_table::KymaValue>> = relation
                .key
                .iter()
                .map(|k| {
                    let (column, _) = relation.columns.iter().find(|(_, source)| source == k)?;
                    let raw = text(row, k)?;
                    parse_text(column.format, column.ty, &raw).ok()
                })
                .collect();
            let refs: Vec<_> = parts
                .iter()
                .map(|p| p.as_ref().map(|v| v.as_ref()))
                .collect();
            synced::derive_pk(&refs)
        };
        let pk = pk_of(data);
        let mut result = Ok(());
        if let Some(OldRow { row: old, .. }) = old {
            let old_pk = pk_of(old);
            if old_pk != pk {
                // The key changed: the old key is gone.
                let values: Vec<Option<Vec<u8>>> = relation
                    .columns
                    .iter()
                    .map(|(_, source)| {
                        if relation.key.contains(source) {
                            text(old, source)
                        } else {
                            None
                        }
                    })
                    .collect();
                let refs: Vec<Option<&[u8]>> = values.iter().map(|v| v.as_deref()).collect();
                let meta = RowMeta {
                    pk: &old_pk,
                    op: ChangeOp::Delete,
                    lsn: &open.lsn,
                    event_at_micros: open.at_micros,
                    seq,
                };
                result = relation.rows.push(&refs, &meta, &relation.qualified);
            }
        }
        if result.is_ok() {
            // A column the new row leaves out is an unchanged TOAST value: the old row has it
            // under REPLICA IDENTITY FULL; otherwise the update waits for it (crate::toast).
            let mut unchanged = Vec::new();
            let values: Vec<Option<Vec<u8>>> = relation
                .columns
                .iter()
                .enumerate()
                .map(|(i, (_, source))| {
                    // A tombstone carries its key only.
                    if op == ChangeOp::Delete && !relation.key.contains(source) {
                        return None;
                    }
                    if data.get(source).is_some() {
                        return text(data, source);
                    }
                    match old.filter(|old| old.whole) {
                        Some(old) => text(old.row, source),
                        None => {
                            unchanged.push(i);
                            None
                        }
                    }
                })
                .collect();
            let refs: Vec<Option<&[u8]>> = values.iter().map(|v| v.as_deref()).collect();
            let meta = RowMeta {
                pk: &pk,
                op,
                lsn: &open.lsn,
                event_at_micros: open.at_micros,
                seq,
            };
            result = if unchanged.is_empty() {
                relation.rows.push(&refs, &meta, &relation.qualified)
            } else {
                let prior_pk = old.map_or_else(|| pk.clone(), |old| pk_of(old.row));
                relation
                    .held
                    .push(&refs, &meta, &relation.qualified, prior_pk, unchanged)
            };
        }
        if let Err(e) = result {
            return fail_table(&mut self.status, relation, e.to_string());
        }
        if relation.held.len() >= self.ctx.options.batch_rows {
            if let Err(reason) = flush_relation(&self.ctx, relation, &mut s.batch).await? {
                return fail_table(&mut self.status, relation, reason);
            }
        } else if relation.rows.rows() >= self.ctx.options.batch_rows {
            let table = relation.table.clone();
            let rows = relation.rows.finish()?;
            s.batch.write(&table, &rows).await?;
        }
        Ok(())
    }

    async fn commit(
        &mut self,
        s: &mut Streaming,
        stream: &PgReplicationStream,
    ) -> Result<(), SyncError> {
        let Some(end) = s.pending_end.take() else {
            s.pending_since = None;
            return Ok(());
        };
        for relation in s.relations.values_mut() {
            if let Err(reason) = flush_relation(&self.ctx, relation, &mut s.batch).await? {
                fail_table(&mut self.status, relation, reason)?;
            }
        }
        let batch = std::mem::replace(&mut s.batch, self.new_batch(false));
        let committed = batch.commit(&mut self.fence, format_lsn(end)).await?;
        stream.acknowledge(end);
        self.cursor = Some(end);
        s.pending_since = None;
        for (table, rows) in &committed.rows {
            let qualified = format!("{}.{}", table.schema, table.table);
            self.status.table(&qualified).rows_synced += rows;
        }
        let lag_ms = s
            .last_commit_at
            .map(|at| u64::try_from((now_micros() - at) / 1000).unwrap_or(0));
        if lag_ms.is_some() {
            self.status.status.lag_ms = lag_ms;
        }
        self.ctx.metrics.batch_committed(
            &self.spec.name,
            committed.rows.values().sum(),
            committed.rebases,
            lag_ms,
        );
        self.status.status.lag_bytes = Some(stream.server_lsn().saturating_sub(end));
        self.write_status(false).await?;
        Ok(())
    }
}

/// Writes what `relation` collected into `batch`: its rows, then its held updates resolved.
/// The inner error says why the table's data cannot be resolved (the caller fails the table).
async fn flush_relation(
    ctx: &SyncContext,
    relation: &mut Relation,
    batch: &mut SyncBatch,
) -> Result<Result<(), String>, SyncError> {
    if relation.rows.rows() > 0 {
        let rows = relation.rows.finish()?;
        batch.write(&relation.table, &rows).await?;
    }
    match relation
        .held
        .resolve(&ctx.catalog, &ctx.store, batch, &relation.table)
        .await?
    {
        Ok(Some(rows)) => batch.write(&relation.table, &rows).await.map(Ok),
        Ok(None) => Ok(Ok(())),
        Err(reason) => Ok(Err(reason)),
    }
}

/// Puts `relation`'s table in the failed state with `error` and drops what it collected;
/// the other tables go on.
fn fail_table(
    status: &mut StatusBook,
    relation: &mut Relation,
    error: String,
) -> Result<(), SyncError> {
    tracing::error!(table = %relation.table, %error, "table failed");
    status.fail(&relation.qualified, error);
    relation.rows.finish()?;
    relation.held.discard()?;
    Ok(())
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The state of the streaming phase.
struct Streaming {
    tables: BTreeMap<(String, String), SyncedTable>,
    client: tokio_postgres::Client,
    types: HashMap<(u32, i32), PgType>,
    relations: HashMap<u32, Relation>,
    batch: SyncBatch,
    open: Option<OpenTransaction>,
    pending_end: Option<u64>,
    pending_since: Option<Instant>,
    last_commit_at: Option<i64>,
}

impl Streaming {
    fn batch_bytes(&self) -> usize {
        self.relations
            .values()
            .map(|r| r.rows.bytes())
            .sum::<usize>()
            + usize::try_from(self.batch.rows()).unwrap_or(usize::MAX) * 64
    }

    /// The type of OID `oid` with modifier `typmod` (domains unwrapped), cached.
    async fn pg_type(&mut self, oid: u32, typmod: i32) -> Result<PgType, SyncError> {
        if let Some(t) = self.types.get(&(oid, typmod)) {
            return Ok(t.clone());
        }
        const QUERY: &str = "
            SELECT COALESCE(bt.typname, t.typname)::text,
                   COALESCE(bt.typtype, t.typtype)::text,
                   COALESCE(bt.typcategory, t.typcategory)::text,
                   CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE $2 END
              FROM pg_catalog.pg_type t
              LEFT JOIN pg_catalog.pg_type bt ON t.typtype = 'd' AND bt.oid = t.typbasetype
             WHERE t.oid = $1";
        let row = self
            .client
            .query_one(QUERY, &[&oid, &typmod])
            .await
            .map_err(|e| {
                SyncError::from(kyma_connectors::postgres::sync::classify(
                    "reading a column type",
                    &e,
                ))
            })?;
        let letter = |i: usize| row.get::<_, String>(i).chars().next().unwrap_or(' ');
        let pg = PgType {
            name: row.get(0),
            kind: letter(1),
            category: letter(2),
            typmod: row.get(3),
        };
        self.types.insert((oid, typmod), pg.clone());
        Ok(pg)
    }
}

/// Creates the kyma table of a source table, or widens it to the source's columns.
async fn ensure_table(
    catalog: &Catalog,
    connector: &str,
    table: &TableRef,
    source: &SyncTable,
) -> Result<(), SyncError> {
    let columns: Vec<Column> = source
        .columns
        .iter()
        .map(|(c, m)| Column::new(&c.name, m.ty))
        .collect();
    match catalog.table(table).await {
        Ok(state) => {
            let fresh: Vec<Column> = columns
                .into_iter()
                .filter(|c| state.schema.value.column(&c.name).is_none())
                .collect();
            if !fresh.is_empty() {
                catalog.widen_schema(table, &fresh).await?;
            }
            Ok(())
        }
        Err(CatalogError::NotFound(_)) => {
            let all = columns
                .into_iter()
                .chain(synced::system_columns())
                .collect();
            match catalog
                .create_table(
                    table,
                    TableOrigin::Synced {
                        connector: connector.to_owned(),
                    },
                    all,
                )
                .await
            {
                Ok(_) | Err(CatalogError::AlreadyExists(_)) => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

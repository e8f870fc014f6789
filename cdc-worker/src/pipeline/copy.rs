//! Copying pending tables under a snapshot, one commit per table (step 4 of a run).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kyma_catalog::{SyncPhase, TableFailure, TablePhase, TableSyncState};
use kyma_connectors::sync::{Snapshot, SourcePosition, TableId};
use kyma_table::synced::{SnapshotColumns, SnapshotMeta};

use super::tables::key_indices;
use super::{ConnectorSync, now_micros};
use crate::error::SyncError;
use crate::metrics::Synced;

impl ConnectorSync {
    /// Copies every pending table under `snapshot`, then ends it. Creates the cursor at the
    /// snapshot's position when there is none yet (also when no table is to be copied).
    pub(super) async fn copy_pending(
        &mut self,
        mut snapshot: Box<dyn Snapshot>,
    ) -> Result<(), SyncError> {
        let position = snapshot.position().clone();
        let pending: Vec<TableId> = self
            .tables
            .iter()
            .filter(|(_, t)| t.state.phase == SyncPhase::Pending)
            .map(|(id, _)| id.clone())
            .collect();
        for id in pending {
            match self.copy_table(snapshot.as_mut(), &id, &position).await {
                Err(SyncError::Definite(reason)) => self.fail_copy(&id, &position, reason).await?,
                other => other?,
            }
        }
        snapshot.close().await?;
        if self.cursor.position.is_none() {
            let batch = self.new_batch();
            self.cursor
                .commit(batch, &position, &BTreeMap::new())
                .await?;
        }
        self.write_status(true).await
    }

    /// Copies table `id` under `snapshot` (at `position`) and commits it with its new state.
    async fn copy_table(
        &mut self,
        snapshot: &mut dyn Snapshot,
        id: &TableId,
        position: &SourcePosition,
    ) -> Result<(), SyncError> {
        let Some(run) = self.tables.get(id) else {
            return Ok(());
        };
        let (table, source, requested) = (run.table.clone(), run.source.clone(), run.requested);
        let (key, map) = (run.key(), run.columns.clone());
        let key_columns = key_indices(&source.key, &source.columns).map_err(SyncError::Definite)?;
        let seq = self.cursor.take_seq();
        let at_micros = now_micros();
        let mut batch = self.copy_batch();
        // The copy replaces whatever the table held (an earlier copy, an abandoned one).
        batch.writer(&table).await?.truncate().await?;
        let mut done = 0_u64;
        self.show_progress(&key, done, source.estimated_rows);
        self.write_status(true).await?;
        let started = Instant::now();
        let mut first_rows = None;
        let mut system = SnapshotColumns::new(SnapshotMeta {
            lsn: &position.0,
            at_micros,
            seq,
        });
        let mut rows = snapshot.copy(&source, self.ctx.options.batch_rows).await?;
        while let Some(rows) = rows.next().await {
            let rows = rows?;
            first_rows.get_or_insert_with(Instant::now);
            let keys: Vec<_> = key_columns
                .iter()
                .map(|&i| rows.column(i).clone())
                .collect();
            let synced = system.rows(&map.apply(&rows)?, &keys)?;
            batch.write(&table, &synced).await?;
            done += rows.num_rows() as u64;
            self.show_progress(&key, done, source.estimated_rows);
            self.write_status(false).await?;
            self.keep_safe(&mut batch).await?;
        }
        drop(rows);
        let copied_at = Instant::now();
        let copied = TableSyncState {
            phase: SyncPhase::Streaming,
            since: Some(snapshot.since(id).0),
            copy_seq: u64::try_from(seq).ok(),
            resyncs: requested,
            failure: None,
        };
        let cursor_position = self
            .cursor
            .position
            .clone()
            .unwrap_or_else(|| position.clone());
        let states = BTreeMap::from([(table.clone(), copied.clone())]);
        let committed = self.cursor.commit(batch, &cursor_position, &states).await?;
        CopyStages {
            opening: first_rows.unwrap_or(copied_at) - started,
            copying: copied_at - first_rows.unwrap_or(copied_at),
            writing: committed
                .catalog_started
                .saturating_duration_since(copied_at),
            catalog: committed.catalog_took,
        }
        .trace(&self.spec.name, done);
        tracing::info!(connector = %self.spec.name, table = %table, position = %position, rows = done, revision = committed.revision, "table copied");
        let bytes = committed.bytes.get(&table).copied().unwrap_or(0);
        self.ctx
            .metrics
            .snapshot_committed(&self.spec.name, Synced { rows: done, bytes });
        let status = self.status.table(&key);
        status.rows_synced = done;
        status.bytes_synced = bytes;
        self.status.show(&key, &copied);
        if let Some(run) = self.tables.get_mut(id) {
            run.state = copied;
        }
        Ok(())
    }

    fn show_progress(&mut self, key: &str, done: u64, estimated: u64) {
        self.status.table(key).phase = TablePhase::Snapshotting {
            rows_done: done,
            rows_estimated: estimated.max(done),
        };
    }

    /// Fails table `id`, whose copy hit `reason` (its data cannot be read); the others go on.
    async fn fail_copy(
        &mut self,
        id: &TableId,
        position: &SourcePosition,
        reason: String,
    ) -> Result<(), SyncError> {
        let Some(run) = self.tables.get_mut(id) else {
            return Ok(());
        };
        tracing::error!(table = %run.table, %reason, "copying the table failed");
        run.state = TableSyncState {
            phase: SyncPhase::Failed,
            failure: Some(TableFailure {
                reason,
                fix: "fix the data or the column's type at the source, then resync the table"
                    .to_owned(),
                retries: false,
            }),
            ..run.state.clone()
        };
        let (table, key, state) = (run.table.clone(), run.key(), run.state.clone());
        self.status.show(&key, &state);
        let cursor_position = self
            .cursor
            .position
            .clone()
            .unwrap_or_else(|| position.clone());
        let batch = self.new_batch();
        self.cursor
            .commit(batch, &cursor_position, &BTreeMap::from([(table, state)]))
            .await?;
        Ok(())
    }
}

/// Where the time of one table's copy went, from asking the source for its rows to the
/// commit: reported as a debug event (target [`COPY_STAGES`]) that benchmarks break the
/// snapshot down with.
struct CopyStages {
    /// → the first batch decoded (the source's query started, its first rows arrived).
    opening: Duration,
    /// → the last batch handed to the extent writers (read, decoded, keyed, encoded as
    /// they came).
    copying: Duration,
    /// → the extents finished and uploaded.
    writing: Duration,
    /// → the catalog transaction committed.
    catalog: Duration,
}

/// The tracing target of the per-copy stage event.
pub const COPY_STAGES: &str = "kyma_cdc_worker::copy_stages";

impl CopyStages {
    fn trace(&self, connector: &str, rows: u64) {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        tracing::debug!(
            target: COPY_STAGES,
            connector,
            rows,
            opening_ms = ms(self.opening),
            copying_ms = ms(self.copying),
            writing_ms = ms(self.writing),
            catalog_ms = ms(self.catalog),
            "copy stages"
        );
    }
}

//! The connector status as a run keeps it, written under the claim (a fenced worker cannot
//! overwrite its successor's).

use std::time::{Duration, Instant};

use kyma_catalog::{
    Catalog, ConnectorClaim, ConnectorStatus, SyncPhase, TablePhase, TableSyncState,
    TableSyncStatus,
};

use crate::error::SyncError;
use kyma_catalog::now_ms;

/// What the status says, and when it was last written.
#[derive(Debug)]
pub(crate) struct StatusBook {
    pub(crate) status: ConnectorStatus,
    written_at: Option<Instant>,
}

impl StatusBook {
    /// The status as the catalog had it when the run started.
    pub(crate) fn new(status: ConnectorStatus) -> Self {
        Self {
            status,
            written_at: None,
        }
    }

    /// Table `key`'s entry (created pending).
    pub(crate) fn table(&mut self, key: &str) -> &mut TableSyncStatus {
        self.status
            .tables
            .entry(key.to_owned())
            .or_insert_with(|| TableSyncStatus::new(TablePhase::Pending))
    }

    /// Shows table `key` as its durable `state` says; a failure is written at once.
    pub(crate) fn show(&mut self, key: &str, state: &TableSyncState) {
        let table = self.table(key);
        table.phase = match state.phase {
            SyncPhase::Pending => TablePhase::Pending,
            SyncPhase::Streaming => TablePhase::Streaming,
            SyncPhase::Failed => TablePhase::Failed,
        };
        let failure = state.failure.as_ref();
        table.last_error = failure.map(|f| f.reason.clone());
        table.fix = failure.map(|f| f.fix.clone());
        table.retries = failure.map(|f| f.retries);
        if failure.is_some() {
            self.written_at = None;
        }
    }

    /// Adds `warning` to table `key` (once).
    pub(crate) fn warn(&mut self, key: &str, warning: String) {
        let warnings = &mut self.table(key).warnings;
        if !warnings.contains(&warning) {
            warnings.push(warning);
        }
    }

    /// Forgets tables the run no longer syncs.
    pub(crate) fn keep_only(&mut self, keys: &[String]) {
        self.status.tables.retain(|key, _| keys.contains(key));
    }

    /// Writes the status: at most every `every`, unless `force`.
    pub(crate) async fn write(
        &mut self,
        catalog: &Catalog,
        claim: &ConnectorClaim,
        every: Duration,
        force: bool,
    ) -> Result<(), SyncError> {
        if !force && self.written_at.is_some_and(|at| at.elapsed() < every) {
            return Ok(());
        }
        self.status.updated_at_ms = now_ms();
        catalog.put_status(claim, &self.status).await?;
        self.written_at = Some(Instant::now());
        Ok(())
    }
}

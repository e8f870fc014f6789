//! The CDC worker: its own process, any number of replicas (SPEC §2, §6).
//!
//! A worker registers itself in the catalog under a lease that it keeps alive; connectors are
//! claimed under that lease (see `kyma_catalog::Catalog::claim_connector`), so a worker that dies
//! loses its claims when the lease lapses and another worker takes over at a higher epoch.
//! Source replication arrives with the sync issues.

use std::time::Duration;

use kyma_catalog::{Catalog, CatalogError, WorkerSession};

/// A running CDC worker.
#[derive(Debug)]
pub struct CdcWorker {
    catalog: Catalog,
    session: WorkerSession,
}

impl CdcWorker {
    /// Registers worker `worker_id` in `catalog` under a lease of `lease_ttl`.
    pub async fn start(
        catalog: Catalog,
        worker_id: &str,
        lease_ttl: Duration,
    ) -> Result<Self, CatalogError> {
        let session = catalog.start_session(worker_id, lease_ttl).await?;
        tracing::info!(worker_id, lease = session.lease(), "cdc worker registered");
        Ok(Self { catalog, session })
    }

    /// The catalog it works on.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Ready while its lease is alive and the catalog answers.
    pub async fn ready(&self) -> Result<(), CatalogError> {
        if self.session.is_lost() {
            return Err(CatalogError::LeaseExpired(self.session.lease()));
        }
        self.catalog.ping().await.map(|_| ())
    }

    /// Leaves the catalog: revokes the lease so its claims are free at once.
    pub async fn shutdown(self) -> Result<(), CatalogError> {
        self.session.close().await
    }
}

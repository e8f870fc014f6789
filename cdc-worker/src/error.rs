//! The one error type of the CDC worker, with what to do about each explicit.

use kyma_catalog::CatalogError;
use kyma_connectors::ConnectorError;
use kyma_table::TableError;

/// Why syncing a connector stopped.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The source, the catalog or the store failed in a way that may pass (connection lost,
    /// server restarting, catalog unavailable): retry with backoff from the last commit.
    #[error("{0}")]
    Transient(String),
    /// The same work fails again until someone changes something (a setting, a slot that
    /// was dropped, data kyma cannot read): the connector goes to a failed state.
    #[error("{0}")]
    Definite(String),
    /// Another worker holds the connector now (or it was deleted): stop without writing.
    #[error("connector `{connector}` was taken over or deleted")]
    Fenced {
        /// The connector.
        connector: String,
    },
}

impl SyncError {
    /// Whether retrying from the last commit may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SyncError::Transient(_))
    }
}

impl From<ConnectorError> for SyncError {
    fn from(e: ConnectorError) -> Self {
        match e {
            ConnectorError::Catalog(e) => e.into(),
            ConnectorError::Fenced { connector, .. } => SyncError::Fenced { connector },
            e if e.is_retryable() => SyncError::Transient(e.to_string()),
            e => SyncError::Definite(e.to_string()),
        }
    }
}

impl From<CatalogError> for SyncError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::Fenced { connector, .. } => SyncError::Fenced { connector },
            // The batch is written again from the cursor: nothing to fix.
            e @ CatalogError::WriteLapsed(_) => SyncError::Transient(e.to_string()),
            e if e.is_retryable() => SyncError::Transient(e.to_string()),
            e => SyncError::Definite(e.to_string()),
        }
    }
}

impl From<TableError> for SyncError {
    fn from(e: TableError) -> Self {
        match e {
            TableError::Catalog(e) => e.into(),
            // Writing an extent fails this way when storage breaks off an upload.
            e @ TableError::Parquet(_) => SyncError::Transient(e.to_string()),
            e if e.is_retryable() => SyncError::Transient(e.to_string()),
            e => SyncError::Definite(e.to_string()),
        }
    }
}

//! The one error type of the connectors crate, with retryability explicit.

use kyma_catalog::CatalogError;

/// What can go wrong registering, validating or reaching a connector's source.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// Bad input or a source setting to fix; names the field (definite).
    #[error("{field}: {reason}")]
    Invalid {
        /// The request field or source setting at fault, e.g. `connection.pool_size`.
        field: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The source cannot be reached now (transient: retry).
    #[error("{field}: {reason}")]
    Unreachable {
        /// The field naming the source (`connection.url`).
        field: String,
        /// What failed.
        reason: String,
    },
    /// The source refused or broke off a query, or answered with data kyma cannot read
    /// (definite: the same query fails again).
    #[error("the source: {0}")]
    Source(String),
    /// The source changed under a read in a way the next attempt takes into account (e.g. a
    /// MongoDB copy met fields its sample missed): retry.
    #[error("the source changed during the read: {0}")]
    Changed(String),
    /// The source no longer holds the change history the cursor needs (a purged binlog, an
    /// oplog that rolled past the resume token): definite; the connector's
    /// `retention.on_history_lost` policy says whether kyma copies everything again.
    #[error("the source's change history is lost: {0}")]
    HistoryLost(String),
    /// No connector of that name.
    #[error("connector `{0}` does not exist")]
    NotFound(String),
    /// The catalog failed (its own retryability applies).
    #[error(transparent)]
    Catalog(CatalogError),
    /// Another worker holds the connector now (or it was deleted): a destructive step at the
    /// source was not taken.
    #[error("connector `{connector}` is held by another worker now; {step} was not done")]
    Fenced {
        /// The connector.
        connector: String,
        /// The step that was about to run.
        step: String,
    },
}

impl ConnectorError {
    /// Whether retrying the same call may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ConnectorError::Unreachable { .. } | ConnectorError::Changed(_) => true,
            ConnectorError::Catalog(e) => e.is_retryable(),
            ConnectorError::Invalid { .. }
            | ConnectorError::Source(_)
            | ConnectorError::HistoryLost(_)
            | ConnectorError::NotFound(_)
            | ConnectorError::Fenced { .. } => false,
        }
    }

    /// The field at fault, for bad input.
    pub fn field(&self) -> Option<&str> {
        match self {
            ConnectorError::Invalid { field, .. } | ConnectorError::Unreachable { field, .. } => {
                Some(field)
            }
            _ => None,
        }
    }

    /// Bad input naming `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConnectorError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<CatalogError> for ConnectorError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::InvalidArgument { field, reason } => {
                ConnectorError::Invalid { field, reason }
            }
            CatalogError::AlreadyExists(what) => ConnectorError::invalid(
                "name",
                format!("{what} exists already; choose another name or delete it first"),
            ),
            other => ConnectorError::Catalog(other),
        }
    }
}

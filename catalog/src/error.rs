//! The catalog's one error type, with retryability explicit.

use std::path::PathBuf;

/// Everything that can go wrong talking to the catalog.
///
/// [`CatalogError::is_retryable`] separates transient failures (retry the same call, with
/// backoff) from definite ones (retrying the same call cannot succeed). A commit conflict is not
/// an error: it is [`crate::CommitOutcome::Conflict`].
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The backend could not be reached or did not answer in time. Retryable. The outcome of a
    /// write that failed this way is unknown; retrying a [`crate::CatalogCommit`] is safe (it
    /// is idempotent).
    #[error("catalog backend unavailable: {0}")]
    Unavailable(String),

    /// A newer worker took the connector over; this worker's epoch can never commit again.
    #[error(
        "connector `{connector}` is fenced: this worker holds epoch {held}, the catalog has epoch {current}; stop syncing it"
    )]
    Fenced {
        /// The connector.
        connector: String,
        /// The epoch this worker claimed with.
        held: u64,
        /// The connector's epoch in the catalog now.
        current: u64,
    },

    /// The thing to create exists already.
    #[error("{0} already exists")]
    AlreadyExists(String),

    /// The thing named does not exist.
    #[error("{0} does not exist")]
    NotFound(String),

    /// A schema change that would narrow, drop or retype a column.
    #[error("schema of {table} cannot change that way: {reason}")]
    SchemaChange {
        /// The table.
        table: String,
        /// What is wrong, naming the column.
        reason: String,
    },

    /// A request the catalog refuses as given; the message names the field to fix.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The field at fault.
        field: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A transaction over the backend's request limits.
    #[error("catalog transaction too large: {0}")]
    TooLarge(String),

    /// A watch started before the oldest revision the backend still remembers.
    #[error(
        "catalog watch history is compacted up to revision {0}: re-read the catalog and watch from the revision read"
    )]
    Compacted(i64),

    /// The lease lapsed or was revoked.
    #[error("catalog lease {0:x} has expired")]
    LeaseExpired(i64),

    /// The embedded store's file is held by another process.
    #[error(
        "the embedded catalog {} is already open in another process: run one `kyma standalone` per data directory, or use an etcd catalog for several processes",
        path.display()
    )]
    AlreadyOpen {
        /// The database file.
        path: PathBuf,
    },

    /// A stored value that does not decode: a catalog written by something else, or damaged.
    #[error("catalog value at `{key}` is corrupt: {reason}")]
    Corrupt {
        /// The key (printable form).
        key: String,
        /// Why it does not decode.
        reason: String,
    },

    /// The registration of an open write lapsed before its commit (its writer's lease ran
    /// out, so the garbage collector may have taken the write's files): the commit is refused.
    /// Retrying the same commit cannot succeed; the write must be done again.
    #[error(
        "the write registered at `{0}` lapsed before it committed; its files may be gone, so it must be written again"
    )]
    WriteLapsed(String),

    /// The backend's storage failed (disk full, I/O error on the embedded file, etcd refusing
    /// the request for a reason that is not transient).
    #[error("catalog storage error: {0}")]
    Storage(String),
}

impl CatalogError {
    /// Whether retrying the same call may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, CatalogError::Unavailable(_))
    }

    /// An [`CatalogError::InvalidArgument`] naming `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        CatalogError::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

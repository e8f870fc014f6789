//! The one error type of the table format, with retryability explicit.

use kyma_catalog::CatalogError;

/// What can go wrong reading or writing kyma tables.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// The catalog refused or failed (its own retryability applies).
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// Object storage failed (transient: retry).
    #[error("object storage: {0}")]
    Store(#[from] object_store::Error),
    /// Writing or reading Parquet failed.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// An Arrow operation failed.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// A value does not fit the column's kyma type.
    #[error("column `{column}` is {expected}; {found}")]
    TypeMismatch {
        /// The column.
        column: String,
        /// Its kyma type.
        expected: String,
        /// What the batch held instead, and what to do about it.
        found: String,
    },
    /// An input column whose Arrow type has no kyma type.
    #[error(
        "column `{column}` has Arrow type {arrow_type}, which does not map to a kyma type; cast it to one of int, long, real, bool, string, timestamp, dynamic (CBOR binary) or vector(N) (fixed-size list of float32)"
    )]
    UnmappedType {
        /// The column.
        column: String,
        /// Its Arrow type.
        arrow_type: String,
    },
    /// A NOT NULL column got a null.
    #[error("column `{column}` is NOT NULL but the batch has a null in it (or lacks the column)")]
    NullInNotNull {
        /// The column.
        column: String,
    },
    /// A manifest or extent in storage could not be understood.
    #[error("corrupt table data at {path}: {reason}")]
    Corrupt {
        /// Where.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A setting or argument is wrong; names the field.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The setting or argument.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl TableError {
    /// Whether retrying the same operation may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            TableError::Catalog(e) => e.is_retryable(),
            TableError::Store(e) => !matches!(
                e,
                object_store::Error::NotFound { .. }
                    | object_store::Error::InvalidPath { .. }
                    | object_store::Error::NotSupported { .. }
                    | object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }
            ),
            TableError::Parquet(_)
            | TableError::Arrow(_)
            | TableError::TypeMismatch { .. }
            | TableError::UnmappedType { .. }
            | TableError::NullInNotNull { .. }
            | TableError::Corrupt { .. }
            | TableError::InvalidArgument { .. } => false,
        }
    }

    /// An invalid argument naming `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        TableError::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn mismatch(
        column: &str,
        expected: impl ToString,
        found: impl Into<String>,
    ) -> Self {
        TableError::TypeMismatch {
            column: column.to_owned(),
            expected: expected.to_string(),
            found: found.into(),
        }
    }
}

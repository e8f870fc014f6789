//! The layout of a synced table (SPEC §3 "Synced tables", seeds/schema-mappings.txt).
//!
//! Every synced row carries the source's columns plus five system columns:
//!
//! | column | type | meaning |
//! |---|---|---|
//! | `_kyma_pk` | string | the source primary key: a single key cast to text, a composite one `a:b:…` with each part URL-safe (percent-encoded) |
//! | `_kyma_op` | string | `insert`, `update` or `delete` (a delete is a tombstone row) |
//! | `_kyma_lsn` | string | the source cursor of the transaction's commit (Postgres: its commit LSN) |
//! | `_kyma_event_at` | timestamp | when the source committed the change |
//! | `_kyma_seq` | long | the version order: of two rows with one `_kyma_pk`, the one with the larger `_kyma_seq` is newer (Postgres: the change's WAL position; 0 for rows of the initial snapshot) |
//!
//! # Versions and the current state
//!
//! Rows are versions. The current state of a key is its row with the largest `_kyma_seq`,
//! and the key is absent when that row is a tombstone. Extents come in two kinds, recorded in
//! the manifest ([`crate::ExtentEntry::compacted`]):
//!
//! - **compacted** extents (written by the initial snapshot and by compaction) hold at most
//!   one row per key across all of them, and every such row is older than every row of a
//!   non-compacted extent;
//! - **delta** extents (written by streaming) hold versions in any number.
//!
//! So the current state is: the compacted rows whose key has no delta row, plus, per key with
//! delta rows, its newest delta row; tombstones dropped in both.

use kyma_catalog::{Column, KymaType};

/// The source primary key.
pub const PK: &str = "_kyma_pk";
/// The change kind.
pub const OP: &str = "_kyma_op";
/// The source cursor at commit.
pub const LSN: &str = "_kyma_lsn";
/// When the source committed the change.
pub const EVENT_AT: &str = "_kyma_event_at";
/// The version order.
pub const SEQ: &str = "_kyma_seq";

/// What a synced row records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeOp {
    /// A new key (or a row of the initial snapshot).
    Insert,
    /// A new version of a key.
    Update,
    /// The key was deleted: a tombstone.
    Delete,
}

impl ChangeOp {
    /// The value stored in `_kyma_op`.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeOp::Insert => "insert",
            ChangeOp::Update => "update",
            ChangeOp::Delete => "delete",
        }
    }
}

/// The system columns every synced table has, in table order after the source's columns.
pub fn system_columns() -> Vec<Column> {
    vec![
        Column::new(PK, KymaType::String).not_null(),
        Column::new(OP, KymaType::String).not_null(),
        Column::new(LSN, KymaType::String).not_null(),
        Column::new(EVENT_AT, KymaType::Timestamp).not_null(),
        Column::new(SEQ, KymaType::Long).not_null(),
    ]
}

/// Whether `name` is one of the system columns.
pub fn is_system_column(name: &str) -> bool {
    [PK, OP, LSN, EVENT_AT, SEQ].contains(&name)
}

/// Encodes one part of a composite key: bytes outside `[A-Za-z0-9_.~-]` become `%XX`, so
/// the `:` separating parts never appears inside one.
pub fn encode_key_part(part: &str) -> String {
    let mut out = String::with_capacity(part.len());
    for byte in part.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'~' | b'-') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `_kyma_pk` of a row from its key values in key order: a single key as it is, a composite
/// one as its URL-safe parts joined with `:`. `None` parts (a NULL key column, which a
/// primary key cannot hold) are written as empty.
pub fn derive_pk<'a>(parts: impl ExactSizeIterator<Item = Option<&'a str>>) -> String {
    if parts.len() == 1 {
        return parts
            .into_iter()
            .flatten()
            .next()
            .unwrap_or_default()
            .to_owned();
    }
    parts
        .map(|p| p.map(encode_key_part).unwrap_or_default())
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_keys_are_kept_and_composite_keys_are_url_safe_in_key_order() {
        assert_eq!(derive_pk([Some("a:b/c")].into_iter()), "a:b/c");
        assert_eq!(
            derive_pk([Some("a:b"), Some("x y"), Some("7")].into_iter()),
            "a%3Ab:x%20y:7"
        );
    }
}

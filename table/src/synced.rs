//! The layout of a synced table (SPEC §3 "Synced tables", seeds/schema-mappings.txt).
//!
//! Every synced row carries the source's columns plus five system columns:
//!
//! | column | type | meaning |
//! |---|---|---|
//! | `_kyma_pk` | string | the source primary key, from its typed values ([`derive_pk`]): a single key as its canonical text, a composite one `a:b:…` with each part URL-safe (percent-encoded) |
//! | `_kyma_op` | string | `insert`, `update` or `delete` (a delete is a tombstone row) |
//! | `_kyma_lsn` | string | the source position of the change's transaction, in the source's notation (Postgres: its commit LSN), or of the snapshot that copied the row |
//! | `_kyma_event_at` | timestamp | when the source committed the change |
//! | `_kyma_seq` | long | the version order: of two rows with one `_kyma_pk`, the one with the larger `_kyma_seq` is newer. The sync pipeline assigns it, in stream order, from a counter its cursor carries (every row of one table copy shares one number, below every change streamed after the copy) — never from the source's positions, which do not order versions for every source |
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
//!
//! A manifest whose positions are resolved ([`crate::Manifest::positions_resolved`]) also
//! records every superseded row as deleted by position ([`crate::deletes`], found as changes
//! are committed by [`crate::key_index`]); its current state is then simply every row neither
//! deleted nor a tombstone.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use kyma_catalog::{Column, KymaType, TableSchema};

use crate::error::TableError;
use crate::manifest::{ExtentEntry, StatValue};
use crate::types::arrow_schema;
use crate::value::{KymaColumnBuilder, KymaValueRef};

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

/// From the manifest's statistics: whether `entry` may hold a tombstone. `_kyma_op`'s
/// minimum is `delete` exactly when it does (the smallest of the three values); unknown
/// statistics count as maybe.
pub fn may_hold_tombstones(entry: &ExtentEntry) -> bool {
    match entry.columns.get(OP).and_then(|s| s.min.as_ref()) {
        Some(StatValue::Str(op)) => op == ChangeOp::Delete.as_str(),
        _ => true,
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

/// `_kyma_pk` of a row from its key values in key order, each in its canonical text
/// ([`KymaValueRef::key_text`]): a single key as it is, a composite one as its URL-safe parts
/// joined with `:`. A `None` part (a NULL key column, which a primary key cannot hold) is
/// written as empty. Snapshot and stream rows get their key here, from typed values, so a
/// row's key never depends on how the source spelled it.
pub fn derive_pk(parts: &[Option<KymaValueRef<'_>>]) -> String {
    if let [single] = parts {
        return single.map(|v| v.key_text()).unwrap_or_default();
    }
    parts
        .iter()
        .map(|p| {
            p.map(|v| encode_key_part(&v.key_text()))
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(":")
}

/// The system values of one synced row.
#[derive(Debug, Clone, Copy)]
pub struct RowMeta<'a> {
    /// `_kyma_pk`.
    pub pk: &'a str,
    /// `_kyma_op`.
    pub op: ChangeOp,
    /// `_kyma_lsn`: the source position of the change's transaction (or of the snapshot).
    pub lsn: &'a str,
    /// `_kyma_event_at`, microseconds since the epoch.
    pub event_at_micros: i64,
    /// `_kyma_seq`.
    pub seq: i64,
}

/// Collects synced rows of one table (its source columns, then the system columns) into
/// Arrow batches: the one place rows get their system columns.
#[derive(Debug)]
pub struct SyncedRowsBuilder {
    columns: Vec<Column>,
    schema: SchemaRef,
    builders: Vec<KymaColumnBuilder>,
    rows: usize,
    bytes: usize,
}

impl SyncedRowsBuilder {
    /// A builder for rows of `columns` (the source's, without system columns).
    pub fn new(columns: Vec<Column>) -> Result<Self, TableError> {
        let all: Vec<Column> = columns.iter().cloned().chain(system_columns()).collect();
        let schema = TableSchema::initial(all)?;
        let builders = schema
            .columns
            .iter()
            .map(|c| KymaColumnBuilder::new(c.ty, 0))
            .collect();
        Ok(Self {
            columns,
            schema: arrow_schema(&schema),
            builders,
            rows: 0,
            bytes: 0,
        })
    }

    /// The source columns.
    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// The Arrow schema of the batches (source columns, then system columns).
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Rows collected since the last [`SyncedRowsBuilder::finish`].
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Approximate bytes of the collected values.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Adds a row: `values[i]` is the value of source column `i` (`None`: NULL). A value of
    /// the wrong type is refused, naming the column, and nothing of the row is added.
    pub fn push(
        &mut self,
        values: &[Option<KymaValueRef<'_>>],
        meta: &RowMeta<'_>,
    ) -> Result<(), String> {
        if values.len() != self.columns.len() {
            return Err(format!(
                "a row of {} values where the table has {} columns",
                values.len(),
                self.columns.len()
            ));
        }
        for (column, value) in self.columns.iter().zip(values) {
            if let Some(value) = value
                && value.kyma_type() != column.ty
            {
                return Err(format!(
                    "column `{}` is {}; the source sent a {} value",
                    column.name,
                    column.ty,
                    value.kyma_type()
                ));
            }
        }
        let system = [
            Some(KymaValueRef::String(meta.pk)),
            Some(KymaValueRef::String(meta.op.as_str())),
            Some(KymaValueRef::String(meta.lsn)),
            Some(KymaValueRef::Timestamp(meta.event_at_micros)),
            Some(KymaValueRef::Long(meta.seq)),
        ];
        for (builder, value) in self.builders.iter_mut().zip(values.iter().chain(&system)) {
            self.bytes += value.map_or(1, |v| value_bytes(&v));
            builder.append(*value)?;
        }
        self.rows += 1;
        Ok(())
    }

    /// The collected rows as a batch; the builder starts empty again.
    pub fn finish(&mut self) -> Result<RecordBatch, TableError> {
        let arrays: Vec<ArrayRef> = self
            .builders
            .iter_mut()
            .map(KymaColumnBuilder::finish)
            .collect();
        self.rows = 0;
        self.bytes = 0;
        Ok(RecordBatch::try_new(self.schema.clone(), arrays)?)
    }
}

fn value_bytes(value: &KymaValueRef<'_>) -> usize {
    match value {
        KymaValueRef::String(s) => s.len(),
        KymaValueRef::Dynamic(b) => b.len(),
        KymaValueRef::Vector(v) => v.len() * 4,
        _ => 8,
    }
}

/// The system values shared by every row of one table's snapshot.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotMeta<'a> {
    /// `_kyma_lsn`: the snapshot's source position.
    pub lsn: &'a str,
    /// `_kyma_event_at`: when the snapshot was taken, microseconds since the epoch.
    pub at_micros: i64,
    /// `_kyma_seq` of every row: each key has one row in a snapshot, older than any change
    /// streamed after it.
    pub seq: i64,
}

/// The `_kyma_pk` column of `rows` rows with the key columns `key`: [`derive_pk`] of each
/// row. A single text key is its own text and a single integer key its decimal digits (what
/// [`KymaValueRef::key_text`] writes), so those are taken or cast whole rather than row by
/// row — the snapshot of a large table spends noticeably less CPU on its keys.
fn pk_column(key: &[ArrayRef], rows: usize) -> Result<ArrayRef, TableError> {
    if let [single] = key
        && single.null_count() == 0
    {
        match single.data_type() {
            DataType::Utf8 => return Ok(single.clone()),
            DataType::Int32 | DataType::Int64 => return Ok(cast(single, &DataType::Utf8)?),
            _ => {}
        }
    }
    let mut pk = KymaColumnBuilder::new(KymaType::String, rows);
    let mut parts: Vec<Option<KymaValueRef<'_>>> = Vec::with_capacity(key.len());
    for row in 0..rows {
        parts.clear();
        parts.extend(key.iter().map(|k| KymaValueRef::at(k.as_ref(), row)));
        pk.append(Some(KymaValueRef::String(&derive_pk(&parts))))
            .map_err(arrow::error::ArrowError::InvalidArgumentError)?;
    }
    Ok(pk.finish())
}

/// The system columns [`snapshot_rows`] gives one value in every row of a copy.
pub const SNAPSHOT_ONE_VALUED: &[&str] = &[OP, LSN, EVENT_AT, SEQ];

/// Synced rows of a batch of snapshot rows (the source columns, of kyma types): the columns
/// as they are, then the system columns of a first version (`insert`), `_kyma_pk` derived
/// from the `key` columns (the key's values in key order, one per row of `batch`).
pub fn snapshot_rows(
    batch: &RecordBatch,
    key: &[ArrayRef],
    meta: SnapshotMeta<'_>,
) -> Result<RecordBatch, TableError> {
    SnapshotColumns::new(meta).rows(batch, key)
}

/// The system columns of one table's copy ([`SNAPSHOT_ONE_VALUED`] hold one value in every
/// row): built once, as long as the longest batch so far, and shared by the copy's batches as
/// slices, so they cost nothing per row (building them for every batch of a 3M-row copy took
/// ~24 ms).
#[derive(Debug)]
pub struct SnapshotColumns {
    lsn: String,
    at_micros: i64,
    seq: i64,
    /// `_kyma_op`, `_kyma_lsn`, `_kyma_event_at`, `_kyma_seq`, all of one length.
    one_valued: [ArrayRef; 4],
}

impl SnapshotColumns {
    /// The system columns of a copy taken at `meta`.
    pub fn new(meta: SnapshotMeta<'_>) -> Self {
        Self {
            lsn: meta.lsn.to_owned(),
            at_micros: meta.at_micros,
            seq: meta.seq,
            one_valued: Self::build(meta, 0),
        }
    }

    fn meta(&self) -> SnapshotMeta<'_> {
        SnapshotMeta {
            lsn: &self.lsn,
            at_micros: self.at_micros,
            seq: self.seq,
        }
    }

    /// Synced rows of `batch`, as [`snapshot_rows`] makes them.
    pub fn rows(
        &mut self,
        batch: &RecordBatch,
        key: &[ArrayRef],
    ) -> Result<RecordBatch, TableError> {
        let rows = batch.num_rows();
        if self.one_valued[0].len() < rows {
            self.one_valued = Self::build(self.meta(), rows);
        }
        let mut fields: Vec<Field> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.extend(system_columns().iter().map(crate::types::arrow_field));
        let mut columns = batch.columns().to_vec();
        columns.push(pk_column(key, rows)?);
        columns.extend(self.one_valued.iter().map(|column| column.slice(0, rows)));
        Ok(RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            columns,
        )?)
    }

    /// The one-valued columns of a copy at `meta`, `rows` long.
    fn build(meta: SnapshotMeta<'_>, rows: usize) -> [ArrayRef; 4] {
        [
            Arc::new(StringArray::from(vec![ChangeOp::Insert.as_str(); rows])),
            Arc::new(StringArray::from(vec![meta.lsn; rows])),
            Arc::new(
                TimestampMicrosecondArray::from(vec![meta.at_micros; rows])
                    .with_timezone(crate::types::UTC),
            ),
            Arc::new(Int64Array::from(vec![meta.seq; rows])),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;

    #[test]
    fn single_keys_are_kept_and_composite_keys_are_url_safe_in_key_order() {
        let s = KymaValueRef::String;
        assert_eq!(derive_pk(&[Some(s("a:b/c"))]), "a:b/c");
        assert_eq!(
            derive_pk(&[Some(s("a:b")), Some(s("x y")), Some(KymaValueRef::Long(7))]),
            "a%3Ab:x%20y:7"
        );
        assert_eq!(
            derive_pk(&[Some(KymaValueRef::Timestamp(0))]),
            "1970-01-01 00:00:00+00"
        );
    }

    #[test]
    fn single_text_and_integer_keys_read_as_derive_pk_writes_them() {
        let longs: ArrayRef = Arc::new(Int64Array::from(vec![0, -1, 42, i64::MIN, i64::MAX]));
        let ints: ArrayRef = Arc::new(arrow::array::Int32Array::from(vec![i32::MIN, 7]));
        let texts: ArrayRef = Arc::new(StringArray::from(vec!["a:b/c", "", "ü"]));
        for key in [longs, ints, texts] {
            let column = pk_column(std::slice::from_ref(&key), key.len()).expect("pk");
            let expected: Vec<String> = (0..key.len())
                .map(|row| derive_pk(&[KymaValueRef::at(key.as_ref(), row)]))
                .collect();
            let got: Vec<&str> = column.as_string::<i32>().iter().flatten().collect();
            assert_eq!(got, expected, "{:?}", key.data_type());
        }
    }

    #[test]
    fn snapshot_and_streamed_rows_get_the_same_system_columns() {
        let columns = vec![
            Column::new("id", KymaType::Long),
            Column::new("at", KymaType::Timestamp),
        ];
        let mut streamed = SyncedRowsBuilder::new(columns.clone()).expect("builder");
        let values = [
            Some(KymaValueRef::Long(7)),
            Some(KymaValueRef::Timestamp(1)),
        ];
        let pk = derive_pk(&[values[0], values[1]]);
        let meta = RowMeta {
            pk: &pk,
            op: ChangeOp::Insert,
            lsn: "0/1",
            event_at_micros: 5,
            seq: 3,
        };
        streamed.push(&values, &meta).expect("row");
        let streamed = streamed.finish().expect("batch");

        let source = RecordBatch::try_new(
            arrow_schema(&TableSchema::initial(columns).expect("schema")),
            streamed.columns()[..2].to_vec(),
        )
        .expect("source rows");
        let snapshot = snapshot_rows(
            &source,
            &source.columns()[..2],
            SnapshotMeta {
                lsn: "0/1",
                at_micros: 5,
                seq: 3,
            },
        )
        .expect("snapshot rows");
        assert_eq!(snapshot.schema(), streamed.schema());
        assert_eq!(snapshot, streamed);
        assert_eq!(
            snapshot.column(2).as_string::<i32>().value(0),
            "7:1970-01-01%2000%3A00%3A00.000001%2B00"
        );
    }

    #[test]
    fn a_copys_shared_system_columns_fit_batches_of_any_length() {
        let schema = arrow_schema(
            &TableSchema::initial(vec![Column::new("id", KymaType::Long)]).expect("schema"),
        );
        let meta = SnapshotMeta {
            lsn: "0/2A",
            at_micros: 9,
            seq: 4,
        };
        let mut shared = SnapshotColumns::new(meta);
        for rows in [3_i64, 5, 2, 5] {
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(Int64Array::from_iter_values(0..rows))],
            )
            .expect("batch");
            let key = &batch.columns()[..1];
            assert_eq!(
                shared.rows(&batch, key).expect("shared"),
                snapshot_rows(&batch, key, meta).expect("fresh"),
                "{rows} rows"
            );
        }
    }

    #[test]
    fn a_value_of_the_wrong_type_adds_nothing() {
        let mut rows =
            SyncedRowsBuilder::new(vec![Column::new("id", KymaType::Int)]).expect("builder");
        let meta = RowMeta {
            pk: "1",
            op: ChangeOp::Insert,
            lsn: "",
            event_at_micros: 0,
            seq: 0,
        };
        let err = rows
            .push(&[Some(KymaValueRef::String("1"))], &meta)
            .expect_err("string into int");
        assert!(err.contains("column `id` is int"), "{err}");
        assert_eq!(rows.rows(), 0);
        assert_eq!(rows.finish().expect("batch").num_rows(), 0);
    }
}

//! Decoded columns of extents, held in memory so that a query node decodes a column of an
//! extent once, not once per query.
//!
//! Decoding Parquet dominates a scan whose extents are already in memory: a `GROUP BY` over
//! 10M rows of three columns takes ~85 ms from zstd Parquet and ~22 ms from the same columns
//! as Arrow arrays on this project's 2-core benchmark machine.
//!
//! # Why it is safe
//!
//! Extents are immutable (see [`crate::cache`]), so a column decoded once is the column for
//! as long as anything reads it. What does change between snapshots — an extent's rows
//! deleted by position ([`crate::deletes`]) — is not part of what is held: a column is held
//! whole, every stored row, and the reader applies the snapshot's deleted rows to it.
//!
//! # What it holds
//!
//! One array per extent, column and Arrow type (a column read as another type after a schema
//! change is another entry), the row groups concatenated. An array over
//! [`LARGEST_SHARE`]⁻¹ of the capacity is not held (a table much larger than the cache is
//! read from Parquet, with its pruning). Eviction is the [`SegmentedLru`]'s: arrays read twice
//! outlive a scan of more than the cache holds.
//!
//! # When to decode a whole extent
//!
//! A scan that reads all of an extent decodes it whole anyway. A filtered scan reads less of
//! it from Parquet (row groups and pages pruned; a LIMIT stops early), so the cache remembers
//! which extents such scans have read ([`ColumnCache::read_before`]): the first read of an extent by a filtered
//! scan goes to Parquet, later ones decode it whole and hold it. A one-off lookup keeps its
//! pruned read; a dashboard's repeated query is served from memory from its second run.

use std::collections::HashSet;
use std::sync::Mutex;

use arrow::array::{Array, ArrayRef, RecordBatch, new_empty_array, new_null_array};
use arrow::compute::{cast, concat};
use arrow::datatypes::{DataType, FieldRef};
use futures::TryStreamExt;
use object_store::path::Path;
use parquet::arrow::ProjectionMask;

use crate::cache::{SegmentedLru, Weighed};
use crate::error::TableError;
use crate::manifest::ExtentEntry;
use crate::reader::{open_extent, read_error};
use crate::store::ExtentStore;

/// A query node's capacity when not configured (`--column-cache-mb`), in MiB.
pub const QUERY_NODE_CAPACITY_MB: u64 = 1024;

/// An array larger than the capacity divided by this is not held.
pub const LARGEST_SHARE: u64 = 4;

/// Rows per batch while decoding (the batches are concatenated into one array).
const DECODE_BATCH_ROWS: usize = 64 * 1024;

/// Extents remembered as read by a filtered scan; past this many the memory starts afresh.
const REMEMBERED_READS: usize = 1 << 16;

/// Decoded columns (see the module doc).
#[derive(Debug)]
pub struct ColumnCache {
    held: SegmentedLru<ColumnKey, ArrayRef>,
    /// Extents a filtered scan has read (see the module doc).
    read: Mutex<HashSet<String>>,
}

impl ColumnCache {
    /// A cache of `capacity` bytes of decoded columns (0: none held).
    pub fn new(capacity: u64) -> Self {
        Self {
            held: SegmentedLru::new(capacity, capacity / LARGEST_SHARE),
            read: Mutex::new(HashSet::new()),
        }
    }

    /// Whether a column of `size` bytes decoded would be held.
    pub fn takes(&self, size: u64) -> bool {
        self.held.takes(size)
    }

    /// Whether every column of `fields` of `entry` is held now.
    pub fn holds_all(&self, entry: &ExtentEntry, fields: &[FieldRef]) -> bool {
        fields
            .iter()
            .all(|field| self.held.contains(&ColumnKey::new(entry, field)))
    }

    /// Records a filtered scan's read of `entry`, and says whether one read it before (see
    /// the module doc).
    pub fn read_before(&self, entry: &ExtentEntry) -> bool {
        // Consistent under a panic elsewhere: one insert or clear at a time.
        let mut read = self.read.lock().unwrap_or_else(|p| p.into_inner());
        if read.len() >= REMEMBERED_READS {
            read.clear();
        }
        !read.insert(entry.path.clone())
    }

    /// The bytes held now.
    pub fn held(&self) -> u64 {
        self.held.held()
    }
}

impl Weighed for ArrayRef {
    fn weight(&self) -> u64 {
        self.get_array_memory_size() as u64
    }
}

/// What a decoded column is held under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ColumnKey {
    extent: Path,
    column: String,
    data_type: DataType,
}

impl ColumnKey {
    fn new(entry: &ExtentEntry, field: &FieldRef) -> Self {
        Self {
            extent: Path::from(entry.path.as_str()),
            column: field.name().clone(),
            data_type: field.data_type().clone(),
        }
    }
}

/// The columns `fields` of the extent `entry`, every stored row, in `fields`' order and
/// types: the ones held from the store's [`ColumnCache`], the rest decoded together in one
/// read and held from then on. A column the extent lacks (added to the table after it was
/// written) reads as nulls.
pub async fn extent_columns(
    store: &ExtentStore,
    entry: &ExtentEntry,
    fields: &[FieldRef],
) -> Result<Vec<ArrayRef>, TableError> {
    let cache = &store.columns().held;
    let mut columns: Vec<Option<ArrayRef>> = fields
        .iter()
        .map(|field| cache.get(&ColumnKey::new(entry, field)))
        .collect();
    let missing: Vec<usize> = (0..fields.len())
        .filter(|i| columns[*i].is_none())
        .collect();
    if missing.is_empty() {
        return Ok(columns.into_iter().flatten().collect());
    }
    let wanted: Vec<&FieldRef> = missing.iter().map(|i| &fields[*i]).collect();
    for (i, decoded) in missing
        .into_iter()
        .zip(decode(store, entry, &wanted).await?)
    {
        cache.insert(ColumnKey::new(entry, &fields[i]), decoded.clone());
        columns[i] = Some(decoded);
    }
    Ok(columns.into_iter().flatten().collect())
}

/// `fields` of `entry`, decoded from its Parquet.
async fn decode(
    store: &ExtentStore,
    entry: &ExtentEntry,
    fields: &[&FieldRef],
) -> Result<Vec<ArrayRef>, TableError> {
    let builder = open_extent(store, entry, None).await?;
    let file_schema = builder.schema().clone();
    let mut roots: Vec<usize> = fields
        .iter()
        .filter_map(|f| file_schema.index_of(f.name()).ok())
        .collect();
    roots.sort_unstable();
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let batches: Vec<_> = builder
        .with_projection(mask)
        .with_batch_size(DECODE_BATCH_ROWS)
        .build()
        .map_err(read_error)?
        .try_collect()
        .await
        .map_err(read_error)?;
    let rows = usize::try_from(entry.rows).unwrap_or(usize::MAX);
    fields
        .iter()
        .map(|field| match file_schema.index_of(field.name()) {
            Ok(_) => whole_column(&batches, field, rows, entry),
            Err(_) => Ok(new_null_array(field.data_type(), rows)),
        })
        .collect()
}

/// `field`'s column of the decoded `batches` as one array of `field`'s type, checked to hold
/// the `rows` the manifest says `entry` has.
fn whole_column(
    batches: &[RecordBatch],
    field: &FieldRef,
    rows: usize,
    entry: &ExtentEntry,
) -> Result<ArrayRef, TableError> {
    let parts: Vec<&dyn Array> = batches
        .iter()
        .filter_map(|b| b.column_by_name(field.name()))
        .map(|a| a.as_ref())
        .collect();
    let whole = match parts.as_slice() {
        [] => new_empty_array(field.data_type()),
        _ => concat(&parts)?,
    };
    if whole.len() != rows {
        return Err(TableError::Corrupt {
            path: entry.path.clone(),
            reason: format!(
                "column `{}` holds {} rows, the manifest says {rows}",
                field.name(),
                whole.len()
            ),
        });
    }
    match whole.data_type() == field.data_type() {
        true => Ok(whole),
        false => Ok(cast(&whole, field.data_type())?),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use arrow::array::{Array, Int32Array, Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{Field, Schema};
    use object_store::memory::InMemory;
    use object_store::{ObjectStoreExt, PutPayload};
    use parquet::arrow::ArrowWriter;

    use super::*;

    /// An extent of `rows` rows of `id int32` and `name utf8`, stored in a fresh in-memory
    /// store whose column cache holds `capacity` bytes.
    async fn extent(rows: i32, capacity: u64) -> (ExtentStore, ExtentEntry) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int32, false),
            Field::new("name", DataType::Utf8, true),
        ]));
        let ids = Int32Array::from_iter_values(0..rows);
        let names = StringArray::from_iter((0..rows).map(|i| (i % 3 != 0).then(|| i.to_string())));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(ids), Arc::new(names)])
            .expect("batch");
        let mut file = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut file, schema, None).expect("writer");
        writer.write(&batch).expect("write");
        writer.close().expect("close");
        let store = ExtentStore::from_object_store(Arc::new(InMemory::new()))
            .with_column_cache(ColumnCache::new(capacity));
        let path = "tables/t/extents/e.parquet";
        let bytes = file.len() as u64;
        store
            .object_store()
            .put(&Path::from(path), PutPayload::from(file))
            .await
            .expect("put");
        let entry = ExtentEntry {
            path: path.into(),
            schema_version: 1,
            rows: rows as u64,
            bytes,
            columns: BTreeMap::new(),
            compacted: false,
            deleted: None,
        };
        (store, entry)
    }

    fn field(name: &str, data_type: DataType) -> FieldRef {
        Arc::new(Field::new(name, data_type, true))
    }

    #[tokio::test]
    async fn a_column_is_decoded_once_then_read_from_memory() {
        let (store, entry) = extent(100_000, 64 << 20).await;
        let fields = [field("name", DataType::Utf8), field("id", DataType::Int32)];
        assert!(!store.columns().holds_all(&entry, &fields));
        let first = extent_columns(&store, &entry, &fields)
            .await
            .expect("decoded");
        assert_eq!(first[0].len(), 100_000);
        assert_eq!(first[0].null_count(), 33_334);
        assert!(store.columns().holds_all(&entry, &fields));
        // The extent is gone from storage: a second read can only come from the cache.
        store
            .object_store()
            .delete(&Path::from(entry.path.as_str()))
            .await
            .expect("delete");
        let second = extent_columns(&store, &entry, &fields).await.expect("held");
        assert_eq!(first, second);
    }

    #[tokio::test]
    async fn a_missing_column_reads_as_nulls_and_another_type_is_cast() {
        let (store, entry) = extent(10, 1 << 20).await;
        let fields = [
            field("added_later", DataType::Float64),
            field("id", DataType::Int64),
        ];
        let columns = extent_columns(&store, &entry, &fields)
            .await
            .expect("decoded");
        assert_eq!(columns[0].data_type(), &DataType::Float64);
        assert_eq!(columns[0].null_count(), 10);
        let ids: Vec<i64> = Int64Array::from(columns[1].to_data()).values().to_vec();
        assert_eq!(ids, (0..10).collect::<Vec<_>>());
        // The int32 column read as int32 is another entry.
        assert!(
            !store
                .columns()
                .holds_all(&entry, &[field("id", DataType::Int32)])
        );
    }

    #[tokio::test]
    async fn a_column_over_a_quarter_of_the_capacity_is_not_held() {
        // 100,000 int32 values take 400 KB: over a quarter of 1 MiB.
        let (store, entry) = extent(100_000, 1 << 20).await;
        let fields = [field("id", DataType::Int32)];
        let columns = extent_columns(&store, &entry, &fields)
            .await
            .expect("decoded");
        assert_eq!(columns[0].len(), 100_000);
        assert!(!store.columns().holds_all(&entry, &fields));
        assert_eq!(store.columns().held(), 0);
    }
}

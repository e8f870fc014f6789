//! Writing one immutable Parquet extent: zstd-compressed, with column statistics and a page
//! index, streamed to object storage (multipart) so memory stays bounded by a row group.
//! A synced table's extents also carry a bloom filter on `_kyma_pk` per row group, so a read
//! of a few keys ([`crate::versions`]) skips the row groups that cannot hold them.

use std::collections::BTreeMap;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use kyma_catalog::TableSchema;
use object_store::ObjectStoreExt;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use parquet::arrow::AsyncArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use uuid::Uuid;

use crate::error::TableError;
use crate::manifest::{ColumnStats, ExtentEntry};
use crate::store::ExtentStore;
use crate::synced;
use crate::types::arrow_schema;

/// Parquet key-value metadata naming the schema version an extent was written with (the
/// manifest records it too).
pub const SCHEMA_VERSION_KEY: &str = "kyma.schema_version";

/// Rows per Parquet row group: the unit of buffering and of row-group pruning.
const ROW_GROUP_ROWS: usize = 128 * 1024;

/// Writes batches of one schema version into a new extent.
pub struct ExtentWriter {
    store: ExtentStore,
    path: Path,
    schema: SchemaRef,
    schema_version: u64,
    writer: AsyncArrowWriter<BufWriter>,
    rows: u64,
    stats: BTreeMap<String, ColumnStats>,
}

impl std::fmt::Debug for ExtentWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtentWriter")
            .field("path", &self.path)
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

impl ExtentWriter {
    /// Starts a new extent of table `table_id` written with `schema`.
    pub fn create(
        store: &ExtentStore,
        table_id: Uuid,
        schema: &TableSchema,
    ) -> Result<Self, TableError> {
        let path = ExtentStore::new_extent_path(table_id);
        let arrow = arrow_schema(schema);
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            // Sized for a full row group; the writer folds it down to the rows written. A
            // table without the column (not synced) gets no filter.
            .set_column_bloom_filter_enabled(ColumnPath::from(synced::PK), true)
            .set_column_bloom_filter_max_ndv(ColumnPath::from(synced::PK), ROW_GROUP_ROWS as u64)
            .set_key_value_metadata(Some(vec![KeyValue::new(
                SCHEMA_VERSION_KEY.to_owned(),
                schema.version.to_string(),
            )]))
            .build();
        let sink = BufWriter::new(store.object_store().clone(), path.clone());
        let writer = AsyncArrowWriter::try_new(sink, arrow.clone(), Some(props))?;
        Ok(Self {
            store: store.clone(),
            path,
            schema: arrow,
            schema_version: schema.version,
            writer,
            rows: 0,
            stats: BTreeMap::new(),
        })
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Appends a batch (of [`ExtentWriter::schema`]).
    pub async fn write(&mut self, batch: &RecordBatch) -> Result<(), TableError> {
        let rows = batch.num_rows() as u64;
        for (field, array) in self.schema.fields().iter().zip(batch.columns()) {
            let stats = ColumnStats::of(array);
            match self.stats.get_mut(field.name()) {
                Some(existing) => existing.merge(self.rows, &stats, rows),
                None => {
                    self.stats.insert(field.name().clone(), stats);
                }
            }
        }
        self.writer.write(batch).await?;
        self.rows += rows;
        Ok(())
    }

    /// Finishes the file and returns its manifest entry.
    pub async fn finish(self) -> Result<ExtentEntry, TableError> {
        self.writer.close().await?;
        let bytes = self.store.object_store().head(&self.path).await?.size;
        Ok(ExtentEntry {
            path: self.path.to_string(),
            schema_version: self.schema_version,
            rows: self.rows,
            bytes,
            columns: self.stats,
            compacted: false,
        })
    }
}

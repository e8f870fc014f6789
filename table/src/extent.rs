//! Writing one immutable Parquet extent: zstd-compressed, with column statistics and a page
//! index, streamed to object storage (multipart) so memory stays bounded by a row group.
//! A synced table's extents also carry a bloom filter on `_kyma_pk` per row group, so a read
//! of a few keys ([`crate::versions`]) skips the row groups that cannot hold them.
//!
//! # Encoding off the caller's task
//!
//! Parquet encoding (dictionaries, zstd) runs on a task of its own, fed through a channel of
//! [`QUEUED_BATCHES`] batches, so a caller producing rows (a snapshot decoding a source's
//! copy, a compaction merging versions) works while the previous batches are encoded.
//! An encoding error surfaces at the next [`ExtentWriter::write`] or at
//! [`ExtentWriter::finish`]; a writer dropped before `finish` abandons the file (its
//! multipart upload is never completed), as a dropped Parquet writer would.
//!
//! # Dictionaries only where values repeat
//!
//! Dictionary encoding pays off for repeating values and only costs for distinct ones (every
//! value is interned, then the encoder falls back to plain once the dictionary page is full).
//! The first batch decides per extent ([`undictionaried`]): a flat column whose sample of it
//! is mostly distinct (keys, timestamps, free text) is written plain, without a dictionary;
//! an integer column whose sample holds one value (the system columns of a snapshot's
//! extent) is delta-encoded, which stores the run in a few bytes without hashing each row.

use std::collections::{BTreeMap, HashSet};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use arrow::row::{RowConverter, SortField};
use kyma_catalog::TableSchema;
use object_store::ObjectStoreExt;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use parquet::arrow::AsyncArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
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

/// Batches queued for the encoder task: enough to keep it busy, few enough to bound memory.
const QUEUED_BATCHES: usize = 2;

/// Rows of the first batch sampled to decide on dictionaries.
const DICTIONARY_SAMPLE_ROWS: usize = 4096;

/// Below this many sampled rows the defaults stay (a small extent's encoding costs little).
const DICTIONARY_MIN_SAMPLE: usize = 256;

/// Writes batches of one schema version into a new extent.
pub struct ExtentWriter {
    store: ExtentStore,
    path: Path,
    schema: SchemaRef,
    schema_version: u64,
    encoder: Option<Encoder>,
    rows: u64,
    stats: BTreeMap<String, ColumnStats>,
}

/// The encoder task and its queue.
struct Encoder {
    queue: mpsc::Sender<Encode>,
    task: JoinHandle<Result<(), TableError>>,
}

/// What the encoder task is sent.
enum Encode {
    Batch(RecordBatch),
    /// Complete the file (a queue closed without it abandons the file).
    Finish,
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
        Ok(Self {
            store: store.clone(),
            path: ExtentStore::new_extent_path(table_id),
            schema: arrow_schema(schema),
            schema_version: schema.version,
            encoder: None,
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
        self.send(Encode::Batch(batch.clone()), batch).await?;
        self.rows += rows;
        Ok(())
    }

    /// Finishes the file and returns its manifest entry.
    pub async fn finish(mut self) -> Result<ExtentEntry, TableError> {
        let empty = RecordBatch::new_empty(self.schema.clone());
        self.send(Encode::Finish, &empty).await?;
        if let Some(encoder) = self.encoder.take() {
            drop(encoder.queue);
            joined(encoder.task).await?;
        }
        let bytes = self.store.object_store().head(&self.path).await?.size;
        Ok(ExtentEntry {
            path: self.path.to_string(),
            schema_version: self.schema_version,
            rows: self.rows,
            bytes,
            columns: self.stats,
            compacted: false,
            deleted: None,
        })
    }

    /// Queues `message` for the encoder, starting it (its settings from `first`) if need be.
    async fn send(&mut self, message: Encode, first: &RecordBatch) -> Result<(), TableError> {
        if self.encoder.is_none() {
            let props = properties(self.schema_version, &undictionaried(first));
            let sink = BufWriter::new(self.store.object_store().clone(), self.path.clone());
            let writer = AsyncArrowWriter::try_new(sink, self.schema.clone(), Some(props))?;
            let (queue, batches) = mpsc::channel(QUEUED_BATCHES);
            let task = tokio::spawn(encode(writer, batches));
            self.encoder = Some(Encoder { queue, task });
        }
        let Some(encoder) = self.encoder.as_mut() else {
            return Ok(());
        };
        if encoder.queue.send(message).await.is_err() {
            // The task ended early: it failed, and says why.
            if let Some(encoder) = self.encoder.take() {
                joined(encoder.task).await?;
            }
            return Err(TableError::Parquet(ParquetError::General(format!(
                "the encoder of extent {} stopped early",
                self.path
            ))));
        }
        Ok(())
    }
}

/// The encoder task: writes queued batches, completes the file on [`Encode::Finish`].
async fn encode(
    mut writer: AsyncArrowWriter<BufWriter>,
    mut batches: mpsc::Receiver<Encode>,
) -> Result<(), TableError> {
    while let Some(message) = batches.recv().await {
        match message {
            Encode::Batch(batch) => writer.write(&batch).await?,
            Encode::Finish => {
                writer.close().await?;
                return Ok(());
            }
        }
    }
    // Dropped without `Finish`: the upload is abandoned.
    Ok(())
}

/// The encoder task's outcome.
async fn joined(task: JoinHandle<Result<(), TableError>>) -> Result<(), TableError> {
    task.await.map_err(|e| {
        TableError::Parquet(ParquetError::General(format!(
            "the extent encoder task failed: {e}"
        )))
    })?
}

/// How a flat column is encoded when the default (a dictionary) would cost more than it
/// saves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Undictionaried {
    /// Mostly distinct values: plain.
    Plain,
    /// An integer column holding one value (a snapshot's system columns): delta encoding,
    /// which stores a run of one value in a few bytes without interning every row.
    Delta,
}

/// The Parquet settings of an extent, with `encodings` for the columns that get no
/// dictionary.
fn properties(schema_version: u64, encodings: &[(String, Undictionaried)]) -> WriterProperties {
    let mut props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        // Sized for a full row group; the writer folds it down to the rows written. A
        // table without the column (not synced) gets no filter.
        .set_column_bloom_filter_enabled(ColumnPath::from(synced::PK), true)
        .set_column_bloom_filter_max_ndv(ColumnPath::from(synced::PK), ROW_GROUP_ROWS as u64)
        .set_key_value_metadata(Some(vec![KeyValue::new(
            SCHEMA_VERSION_KEY.to_owned(),
            schema_version.to_string(),
        )]));
    for (column, encoding) in encodings {
        let path = ColumnPath::from(column.as_str());
        props = props.set_column_dictionary_enabled(path.clone(), false);
        if *encoding == Undictionaried::Delta {
            props = props.set_column_encoding(path, Encoding::DELTA_BINARY_PACKED);
        }
    }
    props.build()
}

/// The flat columns of `batch` that get no dictionary: those whose sampled values are
/// mostly (over half) distinct, and integer columns whose sample holds a single value.
fn undictionaried(batch: &RecordBatch) -> Vec<(String, Undictionaried)> {
    let sampled = batch.num_rows().min(DICTIONARY_SAMPLE_ROWS);
    if sampled < DICTIONARY_MIN_SAMPLE {
        return Vec::new();
    }
    let schema = batch.schema();
    schema
        .fields()
        .iter()
        .zip(batch.columns())
        .filter(|(field, _)| flat(field.data_type()))
        .filter_map(|(field, column)| {
            let converter =
                RowConverter::new(vec![SortField::new(field.data_type().clone())]).ok()?;
            let rows = converter
                .convert_columns(&[column.slice(0, sampled)])
                .ok()?;
            let distinct: HashSet<&[u8]> = rows.iter().map(|row| row.data()).collect();
            let encoding = if distinct.len() * 2 > sampled {
                Undictionaried::Plain
            } else if distinct.len() == 1 && delta_encodable(field.data_type()) {
                Undictionaried::Delta
            } else {
                return None;
            };
            Some((field.name().clone(), encoding))
        })
        .collect()
}

/// A column Parquet stores as 32- or 64-bit integers, which delta encoding takes.
fn delta_encodable(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Int32 | DataType::Int64 | DataType::Date32 | DataType::Timestamp(_, _)
    )
}

/// A column Parquet stores as one leaf under its own name.
fn flat(data_type: &DataType) -> bool {
    data_type.is_primitive()
        || matches!(
            data_type,
            DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Utf8View
                | DataType::Binary
                | DataType::LargeBinary
                | DataType::BinaryView
                | DataType::FixedSizeBinary(_)
        )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::AsArray;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::Int64Type;
    use kyma_catalog::{Column, KymaType};
    use object_store::memory::InMemory;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    use super::*;

    #[tokio::test]
    async fn distinct_columns_are_plain_one_valued_integers_delta_and_repeating_ones_dictionaries()
    {
        let store = ExtentStore::from_object_store(Arc::new(InMemory::new()));
        let schema = TableSchema::initial(vec![
            Column::new("id", KymaType::Long),
            Column::new("status", KymaType::String),
            Column::new("batch", KymaType::Long),
        ])
        .expect("schema");
        let mut writer = ExtentWriter::create(&store, Uuid::now_v7(), &schema).expect("writer");
        for chunk in 0..3_i64 {
            let ids = Int64Array::from_iter_values(chunk * 1000..(chunk + 1) * 1000);
            let statuses =
                StringArray::from_iter_values((0..1000).map(|i| ["new", "paid", "shipped"][i % 3]));
            let batch = RecordBatch::try_new(
                arrow_schema(&schema),
                vec![
                    Arc::new(ids),
                    Arc::new(statuses),
                    Arc::new(Int64Array::from(vec![7; 1000])),
                ],
            )
            .expect("batch");
            writer.write(&batch).await.expect("write");
        }
        let entry = writer.finish().await.expect("finish");
        assert_eq!(entry.rows, 3000);

        let bytes = store
            .object_store()
            .get(&Path::from(entry.path.as_str()))
            .await
            .expect("extent")
            .bytes()
            .await
            .expect("bytes");
        let reader = SerializedFileReader::new(bytes.clone()).expect("parquet");
        let row_group = reader.metadata().row_group(0);
        assert_eq!(reader.metadata().file_metadata().num_rows(), 3000);
        assert!(
            row_group.column(0).dictionary_page_offset().is_none(),
            "the unique `id` has no dictionary"
        );
        assert!(
            row_group.column(1).dictionary_page_offset().is_some(),
            "the repeating `status` keeps its dictionary"
        );
        let batch_column = row_group.column(2);
        assert!(batch_column.dictionary_page_offset().is_none());
        assert!(
            batch_column
                .encodings()
                .any(|e| e == Encoding::DELTA_BINARY_PACKED),
            "the one-valued `batch` is delta-encoded: {:?}",
            batch_column.encodings().collect::<Vec<_>>()
        );
        let read = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .expect("reader")
            .build()
            .expect("reader");
        let mut batch_values = Vec::new();
        for batch in read {
            let batch = batch.expect("batch");
            batch_values.extend(
                batch
                    .column(2)
                    .as_primitive::<Int64Type>()
                    .values()
                    .to_vec(),
            );
        }
        assert_eq!(
            batch_values,
            vec![7; 3000],
            "delta-encoded values read back"
        );
    }

    #[tokio::test]
    async fn a_writer_dropped_before_finish_leaves_no_file() {
        let store = ExtentStore::from_object_store(Arc::new(InMemory::new()));
        let schema = TableSchema::initial(vec![Column::new("id", KymaType::Long)]).expect("schema");
        let mut writer = ExtentWriter::create(&store, Uuid::now_v7(), &schema).expect("writer");
        let batch = RecordBatch::try_new(
            arrow_schema(&schema),
            vec![Arc::new(Int64Array::from_iter_values(0..10))],
        )
        .expect("batch");
        writer.write(&batch).await.expect("write");
        let path = writer.path.clone();
        let task = writer.encoder.as_ref().map(|e| e.task.abort_handle());
        drop(writer);
        if let Some(task) = task {
            while !task.is_finished() {
                tokio::task::yield_now().await;
            }
        }
        assert!(
            store.object_store().head(&path).await.is_err(),
            "an abandoned extent is never completed"
        );
    }
}

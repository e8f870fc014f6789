//! Reading extents back: the Parquet reader's access to one extent in object storage (its
//! size comes from the manifest, so no HEAD request), with storage failures kept retryable.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use parquet::errors::ParquetError;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};

use crate::error::TableError;
use crate::manifest::ExtentEntry;
use crate::store::ExtentStore;

/// A reader of one extent, of `columns` only when given.
pub(crate) async fn open_extent(
    store: &ExtentStore,
    entry: &ExtentEntry,
    columns: Option<&[&str]>,
) -> Result<ParquetRecordBatchStreamBuilder<ExtentReader>, TableError> {
    let reader = ExtentReader {
        store: store.object_store().clone(),
        path: Path::from(entry.path.as_str()),
        size: entry.bytes,
    };
    let builder = ParquetRecordBatchStreamBuilder::new_with_options(
        reader,
        ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional),
    )
    .await
    .map_err(read_error)?;
    let Some(columns) = columns else {
        return Ok(builder);
    };
    let indices = columns
        .iter()
        .map(|name| {
            builder
                .schema()
                .index_of(name)
                .map_err(|_| TableError::Corrupt {
                    path: entry.path.clone(),
                    reason: format!("system column `{name}` is missing"),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mask = ProjectionMask::roots(builder.parquet_schema(), indices);
    Ok(builder.with_projection(mask))
}

/// A Parquet read error, with object storage's failures (which the reader wraps) unwrapped so
/// they keep their retryability.
pub(crate) fn read_error(error: ParquetError) -> TableError {
    match error {
        ParquetError::External(inner) => match inner.downcast::<object_store::Error>() {
            Ok(store) => TableError::Store(*store),
            Err(other) => TableError::Parquet(ParquetError::External(other)),
        },
        other => TableError::Parquet(other),
    }
}

/// The Parquet reader's access to one extent, whose size the manifest records.
pub(crate) struct ExtentReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
    size: u64,
}

impl AsyncFileReader for ExtentReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            self.store
                .get_range(&self.path, range)
                .await
                .map_err(|e| ParquetError::External(Box::new(e)))
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            self.store
                .get_ranges(&self.path, &ranges)
                .await
                .map_err(|e| ParquetError::External(Box::new(e)))
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            let metadata = ParquetMetaDataReader::new()
                .with_arrow_reader_options(options)
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

//! Reading extents back: the Parquet reader's access to one extent in object storage (its
//! size comes from the manifest, so no HEAD request), with storage failures kept retryable.
//! A small extent is fetched whole, once per process, and its ranges served from the
//! store's [`ExtentCache`]; a large one is read by range.

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

use crate::cache::ExtentCache;
use crate::error::TableError;
use crate::manifest::ExtentEntry;
use crate::store::ExtentStore;

/// A reader of one extent, of `columns` only when given.
pub(crate) async fn open_extent(
    store: &ExtentStore,
    entry: &ExtentEntry,
    columns: Option<&[&str]>,
) -> Result<ParquetRecordBatchStreamBuilder<ExtentReader>, TableError> {
    let reader = ExtentReader::new(store, Path::from(entry.path.as_str()), entry.bytes);
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

/// The Parquet reader's access to one extent, whose size the manifest records: small extents
/// through the store's cache, large ones by range.
pub struct ExtentReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
    size: u64,
    /// Set when the extent is small enough to be read whole through the cache.
    cache: Option<Arc<ExtentCache>>,
}

impl ExtentReader {
    /// A reader of the extent at `path` of `store`, `size` bytes long (as its manifest
    /// records it).
    pub fn new(store: &ExtentStore, path: Path, size: u64) -> Self {
        Self {
            store: store.object_store().clone(),
            path,
            size,
            cache: store.cache().takes(size).then(|| store.cache().clone()),
        }
    }

    /// The whole extent, from the cache or fetched once into it.
    async fn whole(&self, cache: &ExtentCache) -> parquet::errors::Result<Bytes> {
        if let Some(bytes) = cache.get(&self.path) {
            return Ok(bytes);
        }
        let bytes = self
            .store
            .get(&self.path)
            .await
            .map_err(|e| ParquetError::External(Box::new(e)))?
            .bytes()
            .await
            .map_err(|e| ParquetError::External(Box::new(e)))?;
        if bytes.len() as u64 != self.size {
            return Err(ParquetError::General(format!(
                "extent {} holds {} bytes, its manifest says {}",
                self.path,
                bytes.len(),
                self.size
            )));
        }
        cache.insert(self.path.clone(), bytes.clone());
        Ok(bytes)
    }
}

/// `range` of `whole`, or an error naming `path` when the range runs past its end.
fn slice(whole: &Bytes, range: &Range<u64>, path: &Path) -> parquet::errors::Result<Bytes> {
    let (Ok(start), Ok(end)) = (usize::try_from(range.start), usize::try_from(range.end)) else {
        return Err(ParquetError::EOF(format!("range {range:?} of {path}")));
    };
    if start > end || end > whole.len() {
        return Err(ParquetError::EOF(format!(
            "range {range:?} of {path}, which holds {} bytes",
            whole.len()
        )));
    }
    Ok(whole.slice(start..end))
}

impl AsyncFileReader for ExtentReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            if let Some(cache) = self.cache.clone() {
                return slice(&self.whole(&cache).await?, &range, &self.path);
            }
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
            if let Some(cache) = self.cache.clone() {
                let whole = self.whole(&cache).await?;
                return ranges
                    .iter()
                    .map(|r| slice(&whole, r, &self.path))
                    .collect();
            }
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

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;
    use object_store::{ObjectStoreExt, PutPayload};

    use super::*;

    async fn stored(content: &'static [u8]) -> (Arc<dyn ObjectStore>, Path) {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let path = Path::from("tables/t/extents/e.parquet");
        store
            .put(&path, PutPayload::from_static(content))
            .await
            .expect("put");
        (store, path)
    }

    fn reader(
        store: &Arc<dyn ObjectStore>,
        path: &Path,
        cache: Option<Arc<ExtentCache>>,
    ) -> ExtentReader {
        ExtentReader {
            store: store.clone(),
            path: path.clone(),
            size: 10,
            cache,
        }
    }

    #[tokio::test]
    async fn a_small_extent_is_fetched_once_then_served_from_the_cache() {
        let (store, path) = stored(b"0123456789").await;
        let cache = Arc::new(ExtentCache::new(1024, 64));
        let first = reader(&store, &path, Some(cache.clone()))
            .get_bytes(2..5)
            .await
            .expect("read");
        assert_eq!(&first[..], b"234");
        // Gone from the store: only the cache can answer now.
        store.delete(&path).await.expect("delete");
        let mut again = reader(&store, &path, Some(cache.clone()));
        let ranges = again
            .get_byte_ranges(vec![0..1, 8..10])
            .await
            .expect("cached");
        assert_eq!(
            ranges,
            vec![Bytes::from_static(b"0"), Bytes::from_static(b"89")]
        );
        assert!(
            again.get_bytes(8..11).await.is_err(),
            "a range past the end is an error"
        );
        assert!(
            reader(&store, &path, None).get_bytes(0..1).await.is_err(),
            "uncached reads go to the store"
        );
    }

    #[tokio::test]
    async fn an_extent_whose_size_disagrees_with_its_manifest_is_not_cached() {
        let (store, path) = stored(b"0123").await;
        let cache = Arc::new(ExtentCache::new(1024, 64));
        let e = reader(&store, &path, Some(cache.clone()))
            .get_bytes(0..1)
            .await
            .expect_err("size");
        assert!(e.to_string().contains("manifest says 10"), "{e}");
        assert_eq!(cache.held(), 0);
    }
}

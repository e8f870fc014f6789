//! Where extents and manifests live: any object_store backend, under one key prefix.
//!
//! # Key layout (relative to the store's prefix)
//!
//! ```text
//! tables/{table_id}/extents/{uuid}.parquet          immutable Parquet extent
//! tables/{table_id}/manifests/{version:020}-{uuid}.json  manifest of one snapshot
//! ```
//!
//! Table ids are the catalog's `TableMeta::id`, so a dropped and recreated table never sees
//! the old table's files. Nothing is ever overwritten: a new snapshot writes a new manifest.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use uuid::Uuid;

use crate::cache::ExtentCache;
use crate::columns::ColumnCache;

use crate::error::TableError;

/// Object storage for extents and manifests, as named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A local directory.
    File(PathBuf),
    /// An S3 (or S3-compatible) bucket and key prefix.
    S3 {
        /// Bucket.
        bucket: String,
        /// Key prefix.
        prefix: String,
    },
    /// A Google Cloud Storage bucket and prefix.
    Gcs {
        /// Bucket.
        bucket: String,
        /// Key prefix.
        prefix: String,
    },
    /// An Azure Blob container and prefix.
    Azure {
        /// Container.
        container: String,
        /// Key prefix.
        prefix: String,
    },
    /// In memory (tests).
    Memory,
}

impl StoreLocation {
    /// Parses `file:///DIR`, `s3://BUCKET/PREFIX`, `gs://BUCKET/PREFIX`,
    /// `az://CONTAINER/PREFIX` or `memory://`; `field` names the setting in errors.
    pub fn parse(field: &str, value: &str) -> Result<Self, TableError> {
        let hint = "use file:///DIR, s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, az://CONTAINER/PREFIX or memory://";
        let (scheme, rest) = value.split_once("://").ok_or_else(|| {
            TableError::invalid(field, format!("`{value}` is not a store URL: {hint}"))
        })?;
        let bucket_and_prefix = || -> Result<(String, String), TableError> {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(TableError::invalid(
                    field,
                    format!("`{value}` names no bucket: {hint}"),
                ));
            }
            Ok((bucket.to_owned(), prefix.trim_matches('/').to_owned()))
        };
        match scheme {
            "file" if rest.starts_with('/') => Ok(StoreLocation::File(PathBuf::from(rest))),
            "file" => Err(TableError::invalid(
                field,
                format!("`{value}` needs an absolute path: file:///DIR"),
            )),
            "s3" => {
                bucket_and_prefix().map(|(bucket, prefix)| StoreLocation::S3 { bucket, prefix })
            }
            "gs" => {
                bucket_and_prefix().map(|(bucket, prefix)| StoreLocation::Gcs { bucket, prefix })
            }
            "az" => bucket_and_prefix()
                .map(|(container, prefix)| StoreLocation::Azure { container, prefix }),
            "memory" => Ok(StoreLocation::Memory),
            other => Err(TableError::invalid(
                field,
                format!("store scheme `{other}` is not supported: {hint}"),
            )),
        }
    }
}

/// S3 settings beyond the standard AWS environment variables.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// Endpoint of an S3-compatible server; plain `http://` is allowed for it.
    pub endpoint: Option<String>,
}

/// The object store holding a deployment's tables, rooted at its prefix.
#[derive(Debug, Clone)]
pub struct ExtentStore {
    store: Arc<dyn ObjectStore>,
    /// Small extents already read, shared by every clone ([`crate::cache`]).
    cache: Arc<ExtentCache>,
    /// Decoded columns already read, shared by every clone ([`crate::columns`]); holds
    /// nothing unless set.
    columns: Arc<ColumnCache>,
}

impl ExtentStore {
    /// Connects to `location`. Credentials come from the standard environment variables of
    /// each cloud (AWS_*, GOOGLE_*, AZURE_*); nothing secret is taken from the URL.
    pub fn open(location: &StoreLocation, s3: &S3Options) -> Result<Self, TableError> {
        let store: Arc<dyn ObjectStore> = match location {
            StoreLocation::File(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| {
                    TableError::invalid("--store", format!("cannot create {}: {e}", dir.display()))
                })?;
                Arc::new(LocalFileSystem::new_with_prefix(dir)?)
            }
            StoreLocation::S3 { bucket, prefix } => {
                let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
                if let Some(endpoint) = &s3.endpoint {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"))
                        .with_virtual_hosted_style_request(false);
                }
                prefixed(Arc::new(builder.build()?), prefix)
            }
            StoreLocation::Gcs { bucket, prefix } => prefixed(
                Arc::new(
                    GoogleCloudStorageBuilder::from_env()
                        .with_bucket_name(bucket)
                        .build()?,
                ),
                prefix,
            ),
            StoreLocation::Azure { container, prefix } => prefixed(
                Arc::new(
                    MicrosoftAzureBuilder::from_env()
                        .with_container_name(container)
                        .build()?,
                ),
                prefix,
            ),
            StoreLocation::Memory => Arc::new(InMemory::new()),
        };
        Ok(Self::from_object_store(store))
    }

    /// A store over an existing object store (tests, embedding).
    pub fn from_object_store(store: Arc<dyn ObjectStore>) -> Self {
        Self {
            store,
            cache: Arc::new(ExtentCache::default()),
            columns: Arc::new(ColumnCache::new(0)),
        }
    }

    /// The same store reading small extents through `cache` instead of the default one.
    pub fn with_cache(mut self, cache: ExtentCache) -> Self {
        self.cache = Arc::new(cache);
        self
    }

    /// The same store holding decoded columns in `columns` (a query node's).
    pub fn with_column_cache(mut self, columns: ColumnCache) -> Self {
        self.columns = Arc::new(columns);
        self
    }

    /// The decoded columns held.
    pub fn columns(&self) -> &Arc<ColumnCache> {
        &self.columns
    }

    /// The cache small extents are read through.
    pub fn cache(&self) -> &Arc<ExtentCache> {
        &self.cache
    }

    /// The object store, rooted at the prefix.
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The content of the immutable object at `path` (a manifest, deleted rows): from the
    /// cache, else fetched once and cached (see [`crate::cache`] for why that is safe).
    pub async fn get_immutable(&self, path: &Path) -> Result<Bytes, TableError> {
        if let Some(bytes) = self.cache.get(path) {
            return Ok(bytes);
        }
        let bytes = self.store.get(path).await?.bytes().await?;
        self.cache.insert(path.clone(), bytes.clone());
        Ok(bytes)
    }

    /// Writes `bytes` as the immutable object at `path` (a new one, never rewritten) and
    /// caches it, so this process reads it back without a round trip.
    pub async fn put_immutable(&self, path: &Path, bytes: Bytes) -> Result<(), TableError> {
        self.store
            .put(path, PutPayload::from(bytes.clone()))
            .await?;
        self.cache.insert(path.clone(), bytes);
        Ok(())
    }

    /// Path of a new extent of `table_id`.
    pub fn new_extent_path(table_id: Uuid) -> Path {
        Path::from(format!(
            "tables/{table_id}/extents/{}.parquet",
            Uuid::now_v7()
        ))
    }

    /// Path of a new manifest of `table_id` for snapshot `version`.
    pub fn new_manifest_path(table_id: Uuid, version: u64) -> Path {
        Path::from(format!(
            "tables/{table_id}/manifests/{version:020}-{}.json",
            Uuid::now_v7()
        ))
    }
}

fn prefixed(store: Arc<dyn ObjectStore>, prefix: &str) -> Arc<dyn ObjectStore> {
    if prefix.is_empty() {
        store
    } else {
        Arc::new(PrefixStore::new(store, prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_parse_and_bad_ones_name_the_setting() {
        assert_eq!(
            StoreLocation::parse("--store", "s3://b/p/q/").expect("s3"),
            StoreLocation::S3 {
                bucket: "b".into(),
                prefix: "p/q".into()
            }
        );
        assert_eq!(
            StoreLocation::parse("--store", "file:///tmp/x").expect("file"),
            StoreLocation::File("/tmp/x".into())
        );
        for (bad, fix) in [
            ("file://relative", "absolute path"),
            ("ftp://x", "not supported"),
            ("s3://", "no bucket"),
            ("nothing", "not a store URL"),
        ] {
            let err = StoreLocation::parse("--store", bad)
                .expect_err(bad)
                .to_string();
            assert!(err.starts_with("--store:") && err.contains(fix), "{err}");
        }
    }
}

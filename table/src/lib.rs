//! kyma's table format (SPEC §3, §7): the eight kyma types on Arrow, `dynamic` values in
//! CBOR, immutable Parquet extents in object storage, the manifest of each snapshot, and the
//! writer that streams batches into extents, evolves the schema mid-batch and commits through
//! the catalog.

pub mod cache;
pub mod columns;
pub mod compaction;
pub mod deletes;
pub mod dynamic;
mod error;
pub mod extent;
pub mod gc;
pub mod key_index;
pub mod manifest;
mod reader;
pub mod store;
pub mod synced;
pub mod types;
pub mod value;
pub mod versions;
pub mod writer;

pub use compaction::{
    CompactionOptions, CompactionOutcome, CompactionSummary, compact, needs_compaction,
};
pub use error::TableError;
pub use extent::ExtentWriter;
pub use gc::{GcOptions, GcSummary, collect_garbage};
pub use manifest::{ColumnStats, ExtentEntry, Manifest, StatValue};
pub use reader::ExtentReader;
pub use store::{ExtentStore, S3Options, StoreLocation};
pub use value::{KymaColumnBuilder, KymaValue, KymaValueRef};
pub use writer::{TableWriter, WriteOptions, WriteSummary, WrittenExtents};

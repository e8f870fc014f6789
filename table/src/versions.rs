//! Point reads of a synced table by key: every version of a few `_kyma_pk` values across a
//! set of extents, without reading the rest of the table.
//!
//! The sync worker uses it to fill in values a source change left out (Postgres sends an
//! unchanged TOAST value as "unchanged", not as the value): the value is the one of the key's
//! previous version, which kyma holds in a committed extent or in one its batch wrote.
//!
//! # Cost
//!
//! Per extent: its footer, then per row group its `_kyma_pk` bloom filter (written by
//! [`crate::ExtentWriter`]); a row group whose filter rules out every wanted key is not read.
//! In the row groups read, the key column is decoded first and the other requested columns
//! only for the rows whose key is wanted (a Parquet row filter). Extents written before the
//! filters existed are read whole, which is correct, only slower.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{AsArray, BooleanArray, RecordBatch};
use arrow::compute::concat_batches;
use futures::TryStreamExt;
use kyma_catalog::TableSchema;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ArrowPredicateFn, RowFilter};

use crate::error::TableError;
use crate::manifest::ExtentEntry;
use crate::reader::{open_extent, read_error};
use crate::store::ExtentStore;
use crate::synced::{OP, PK, SEQ};
use crate::types::arrow_schema;
use crate::writer::conform_batch;

/// Every version of the keys `keys` held by `extents` (of a synced table whose schema is now
/// `schema`), as rows of `_kyma_pk`, `_kyma_seq`, `_kyma_op` and then `columns` (typed as
/// `schema` says; null where an older extent lacks a column), in no particular order.
pub async fn key_versions(
    store: &ExtentStore,
    schema: &TableSchema,
    extents: &[ExtentEntry],
    keys: &HashSet<String>,
    columns: &[String],
) -> Result<RecordBatch, TableError> {
    let wanted: Vec<&str> = [PK, SEQ, OP]
        .into_iter()
        .chain(columns.iter().map(String::as_str))
        .collect();
    // The schema of the output: only the wanted columns (so the system columns not read
    // are not checked for NOT NULL).
    let projected = TableSchema {
        columns: wanted
            .iter()
            .map(|name| {
                schema
                    .column(name)
                    .cloned()
                    .ok_or_else(|| TableError::InvalidArgument {
                        field: "columns".into(),
                        reason: format!("table has no column `{name}`"),
                    })
            })
            .collect::<Result<_, _>>()?,
        ..schema.clone()
    };
    let output = arrow_schema(&projected);
    if keys.is_empty() {
        return Ok(RecordBatch::new_empty(output));
    }
    let keys = Arc::new(keys.clone());
    let mut found = Vec::new();
    for entry in extents {
        let mut builder = open_extent(store, entry, None).await?;
        let file_schema = builder.schema().clone();
        let key_root = file_schema.index_of(PK).map_err(|_| TableError::Corrupt {
            path: entry.path.clone(),
            reason: format!("system column `{PK}` is missing"),
        })?;
        let key_leaf = builder
            .parquet_schema()
            .columns()
            .iter()
            .position(|c| c.path().parts() == [PK]);
        let mut row_groups = Vec::new();
        for row_group in 0..builder.metadata().num_row_groups() {
            let filter = match key_leaf {
                Some(leaf) => builder
                    .get_row_group_column_bloom_filter(row_group, leaf)
                    .await
                    .map_err(read_error)?,
                None => None,
            };
            if filter.is_none_or(|f| keys.iter().any(|k| f.check(k.as_str()))) {
                row_groups.push(row_group);
            }
        }
        if row_groups.is_empty() {
            continue;
        }
        let roots: Vec<usize> = wanted
            .iter()
            .filter_map(|name| file_schema.index_of(name).ok())
            .collect();
        let projection = ProjectionMask::roots(builder.parquet_schema(), roots);
        let key_only = ProjectionMask::roots(builder.parquet_schema(), [key_root]);
        let predicate_keys = Arc::clone(&keys);
        let predicate = ArrowPredicateFn::new(key_only, move |batch: RecordBatch| {
            let pk = batch.column(0).as_string::<i32>();
            Ok(pk
                .iter()
                .map(|k| Some(k.is_some_and(|k| predicate_keys.contains(k))))
                .collect::<BooleanArray>())
        });
        let mut stream = builder
            .with_row_groups(row_groups)
            .with_projection(projection)
            .with_row_filter(RowFilter::new(vec![Box::new(predicate)]))
            .build()
            .map_err(read_error)?;
        while let Some(batch) = stream.try_next().await.map_err(read_error)? {
            if batch.num_rows() > 0 {
                found.push(conform_batch(&projected, &batch)?);
            }
        }
    }
    Ok(concat_batches(&output, &found)?)
}

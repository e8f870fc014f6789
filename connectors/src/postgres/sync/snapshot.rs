//! The initial snapshot: every synced table copied at the slot's consistent point.
//!
//! [`SnapshotSession`] imports the snapshot the slot exported into a `REPEATABLE READ`
//! transaction on an ordinary connection; [`SnapshotSession::copy_table`] then streams one
//! table with binary `COPY` through the same typed relation federation reads
//! ([`select_expr`]), so memory stays bounded by one batch whatever the table's size. Rows
//! get the system columns of a first version: `insert`, the consistent point as `_kyma_lsn`,
//! the snapshot time as `_kyma_event_at`, and `_kyma_seq` 0 (older than every streamed
//! change, see [`kyma_table::synced`]).

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Field, Schema};
use futures::{Stream, StreamExt, TryStreamExt};
use kyma_catalog::Column;
use kyma_table::synced::{self, SnapshotMeta};
use kyma_table::types::arrow_type;

use super::{SyncTable, classify};
use crate::error::ConnectorError;
use crate::postgres::copy::CopyBinaryDecoder;
use crate::postgres::types::select_expr;

/// An ordinary connection holding the exported snapshot open.
#[derive(Debug)]
pub struct SnapshotSession {
    client: tokio_postgres::Client,
    lsn: String,
    at_micros: i64,
}

impl SnapshotSession {
    /// Opens a `REPEATABLE READ` transaction on `client`, in UTC, importing snapshot `name`
    /// (exported at `lsn`) when given; without one it reads the source as it is now (a
    /// checker comparing the source with kyma).
    pub async fn open(
        client: tokio_postgres::Client,
        name: Option<&str>,
        lsn: String,
        at_micros: i64,
    ) -> Result<Self, ConnectorError> {
        let import = name
            .map(|name| format!("; SET TRANSACTION SNAPSHOT '{}'", name.replace('\'', "''")))
            .unwrap_or_default();
        client
            .batch_execute(&format!(
                "SET TimeZone = 'UTC'; SET DateStyle = 'ISO'; SET standard_conforming_strings = on; \
                 BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY{import}"
            ))
            .await
            .map_err(|e| classify("importing the slot's snapshot", &e))?;
        Ok(Self {
            client,
            lsn,
            at_micros,
        })
    }

    /// Streams every row of `table` as batches of at most `batch_rows` rows, source columns
    /// then system columns. Calls `progress` with the bytes of each chunk received.
    pub async fn copy_table(
        &self,
        table: &SyncTable,
        batch_rows: usize,
    ) -> Result<impl Stream<Item = Result<RecordBatch, ConnectorError>> + Send + '_, ConnectorError>
    {
        let selected: Vec<String> = table
            .columns
            .iter()
            .map(|(c, m)| select_expr(c, m.ty))
            .collect();
        let key: Vec<usize> = table
            .key
            .iter()
            .map(|k| {
                table
                    .columns
                    .iter()
                    .position(|(c, _)| &c.name == k)
                    .ok_or_else(|| {
                        ConnectorError::Source(format!(
                            "{}: key column `{k}` is not among its columns",
                            table.qualified()
                        ))
                    })
            })
            .collect::<Result<_, _>>()?;
        let sql = format!("SELECT {} FROM {}", selected.join(", "), table.sql_name());
        let what = format!("copying {}", table.qualified());
        let statement = self
            .client
            .prepare(&sql)
            .await
            .map_err(|e| classify(&what, &e))?;
        let wire: Vec<_> = statement
            .columns()
            .iter()
            .map(|c| c.type_().clone())
            .collect();
        let source: Vec<Column> = table
            .columns
            .iter()
            .map(|(c, m)| Column::new(&c.name, m.ty))
            .collect();
        let fields: Vec<Field> = source
            .iter()
            .map(|c| Field::new(&c.name, arrow_type(c.ty), true))
            .collect();
        let mut decoder = CopyBinaryDecoder::new(Arc::new(Schema::new(fields)), &wire, batch_rows)?;
        let copy = self
            .client
            .copy_out(&format!("COPY ({sql}) TO STDOUT (FORMAT binary)"))
            .await
            .map_err(|e| classify(&what, &e))?;
        let lsn = self.lsn.clone();
        let at_micros = self.at_micros;
        let complete = move |batch: &RecordBatch| {
            let meta = SnapshotMeta {
                lsn: &lsn,
                at_micros,
                seq: 0,
            };
            synced::snapshot_rows(batch, &key, meta)
                .map_err(|e| ConnectorError::Source(format!("building snapshot rows: {e}")))
        };
        let chunks = Box::pin(copy).map_err(move |e| classify(&what, &e));
        let mut ended = false;
        Ok(chunks
            .map(Some)
            .chain(futures::stream::once(async { None }))
            .map(move |chunk| -> Result<Vec<RecordBatch>, ConnectorError> {
                let batches = match chunk {
                    Some(chunk) => decoder.push(&chunk?)?,
                    None if !ended => {
                        ended = true;
                        decoder.finish()?.into_iter().collect()
                    }
                    None => Vec::new(),
                };
                batches.iter().map(&complete).collect()
            })
            .map_ok(|batches| futures::stream::iter(batches.into_iter().map(Ok)))
            .try_flatten())
    }

    /// Ends the snapshot transaction.
    pub async fn close(self) -> Result<(), ConnectorError> {
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| classify("ending the snapshot", &e))
    }
}

//! Queries at MySQL streamed as Arrow record batches: federation's ([`run_query`]) and the
//! snapshot's, which share [`RowBatcher`].
//!
//! Statements run as prepared statements, so values arrive in the binary protocol
//! ([`super::values`] reads them). A query runs on a task of its own that owns the pooled
//! connection and hands batches over a small channel: dropping the stream ends the task,
//! and the connection — marked streaming until the last row is read — is closed rather than
//! returned to the pool with a result half-read, which also ends the query at the source.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use futures::StreamExt;
use futures::stream::BoxStream;
use kyma_table::KymaColumnBuilder;
use kyma_table::types::kyma_type_of;
use mysql_async::BinaryProtocol;
use mysql_async::prelude::Queryable;
use tokio::sync::mpsc;

use super::pool::MyPool;
use super::refused;
use super::types::Reading;
use super::values::kyma_value;
use crate::error::ConnectorError;

/// Batches in flight between the reading task and the consumer.
const BATCHES_IN_FLIGHT: usize = 2;

/// Runs `sql` on a connection of `pool` and streams its rows as batches of `schema` of up to
/// `batch_rows` rows; `received` is told the size of the values read from the source.
///
/// Errors: a query the server refuses is [`ConnectorError::Source`] (with its code); a
/// connection that cannot be had or breaks is [`ConnectorError::Unreachable`].
pub fn run_query(
    pool: Arc<MyPool>,
    sql: String,
    schema: SchemaRef,
    batch_rows: usize,
    received: impl Fn(usize) + Send + Sync + 'static,
) -> BoxStream<'static, Result<RecordBatch, ConnectorError>> {
    let (sender, batches) = mpsc::channel(BATCHES_IN_FLIGHT);
    tokio::spawn(async move {
        let outcome = async {
            let readings = result_readings(&schema)?;
            let mut conn = pool.get().await?;
            conn.streaming(true);
            let mut batcher = RowBatcher::new(schema, readings, batch_rows);
            let result = conn.exec_iter(sql.as_str(), ()).await.map_err(refused)?;
            let finished = batcher.send_all(result, &sender, &received).await?;
            if finished {
                conn.streaming(false);
            }
            Ok::<_, ConnectorError>(())
        }
        .await;
        if let Err(e) = outcome {
            let _ = sender.send(Err(e)).await;
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(batches).boxed()
}

/// How each field of a query's result is read: by its kyma type.
fn result_readings(schema: &SchemaRef) -> Result<Vec<Reading>, ConnectorError> {
    schema
        .fields()
        .iter()
        .map(|field| {
            kyma_type_of(field.data_type())
                .map(Reading::of_result)
                .ok_or_else(|| {
                    ConnectorError::Source(format!(
                        "result column `{}` has type {}, which kyma cannot read from MySQL",
                        field.name(),
                        field.data_type()
                    ))
                })
        })
        .collect()
}

/// Builds record batches of a schema from result rows, each column by its [`Reading`].
pub struct RowBatcher {
    schema: SchemaRef,
    readings: Vec<Reading>,
    builders: Vec<KymaColumnBuilder>,
    batch_rows: usize,
    rows: usize,
}

impl RowBatcher {
    /// Batches of `schema` (whose fields are kyma types) of up to `batch_rows` rows, the
    /// columns read as `readings` say.
    pub fn new(schema: SchemaRef, readings: Vec<Reading>, batch_rows: usize) -> Self {
        let builders = readings
            .iter()
            .map(|r| KymaColumnBuilder::new(r.kyma_type(), batch_rows))
            .collect();
        Self {
            schema,
            readings,
            builders,
            batch_rows: batch_rows.max(1),
            rows: 0,
        }
    }

    /// Reads every row of `result` and sends full batches (and the last, partial one) to
    /// `sender`; `false` when the receiver went away first.
    pub async fn send_all(
        &mut self,
        mut result: mysql_async::QueryResult<'_, 'static, BinaryProtocol>,
        sender: &mpsc::Sender<Result<RecordBatch, ConnectorError>>,
        received: &(impl Fn(usize) + Send + Sync),
    ) -> Result<bool, ConnectorError> {
        while let Some(row) = result.next().await.map_err(refused)? {
            received(self.push(row)?);
            if self.is_full() && sender.send(Ok(self.finish()?)).await.is_err() {
                return Ok(false);
            }
        }
        if self.rows > 0 && sender.send(Ok(self.finish()?)).await.is_err() {
            return Ok(false);
        }
        Ok(true)
    }

    /// Whether the batch being built has `batch_rows` rows.
    pub fn is_full(&self) -> bool {
        self.rows >= self.batch_rows
    }

    /// Rows appended since the last batch.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Appends one row; returns the size of its values.
    pub fn push(&mut self, row: mysql_async::Row) -> Result<usize, ConnectorError> {
        let values = row.unwrap_raw();
        if values.len() != self.builders.len() {
            return Err(ConnectorError::Source(format!(
                "a row of {} values where {} were expected",
                values.len(),
                self.builders.len()
            )));
        }
        let mut size = 0;
        for (i, value) in values.into_iter().enumerate() {
            let value = value.unwrap_or(mysql_common::Value::NULL);
            size += value_size(&value);
            let name = self.schema.field(i).name();
            let converted = kyma_value(&self.readings[i], value)
                .map_err(|e| ConnectorError::Source(format!("column `{name}`: {e}")))?;
            self.builders[i]
                .append(converted.as_ref().map(|v| v.as_ref()))
                .map_err(|e| ConnectorError::Source(format!("column `{name}`: {e}")))?;
        }
        self.rows += 1;
        Ok(size)
    }

    /// The rows appended so far as a batch.
    pub fn finish(&mut self) -> Result<RecordBatch, ConnectorError> {
        self.rows = 0;
        let columns = self.builders.iter_mut().map(|b| b.finish()).collect();
        RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(|e| ConnectorError::Source(format!("rows that do not fit the schema: {e}")))
    }
}

fn value_size(value: &mysql_common::Value) -> usize {
    match value {
        mysql_common::Value::Bytes(bytes) => bytes.len(),
        mysql_common::Value::NULL => 0,
        _ => 8,
    }
}

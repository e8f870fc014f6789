//! Aggregation pipelines at MongoDB streamed as Arrow record batches: federation's
//! ([`run_pipeline`]).
//!
//! Every pipeline runs with `collation: {locale: "simple"}`, so strings compare byte-wise
//! (as kyma compares them) whatever the collection's default collation. The result's
//! documents are read into kyma columns by [`super::values`], the same conversion as the
//! snapshot's and the change stream's. The pipeline runs on a task of its own that hands
//! batches over a small channel; dropping the stream drops the cursor, which the driver
//! kills at the server.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use mongodb::Client;
use mongodb::bson::{Document, RawDocumentBuf};
use mongodb::options::Collation;
use tokio::sync::mpsc;

use super::refused;
use super::schema::FieldColumn;
use super::values::DocumentBatcher;
use crate::error::ConnectorError;
use crate::sync::TableId;

/// Batches in flight between the reading task and the consumer.
const BATCHES_IN_FLIGHT: usize = 2;

/// Where and what a federated query runs.
#[derive(Debug, Clone)]
pub struct PipelineQuery {
    /// The collection it reads.
    pub collection: TableId,
    /// The stages.
    pub pipeline: Vec<Document>,
    /// How each output column reads from the result documents, in order.
    pub columns: Vec<FieldColumn>,
}

/// Runs `query` on `client` and streams its rows as batches of `schema` of up to
/// `batch_rows` rows; `received` is told the size of every document read.
pub fn run_pipeline(
    client: Client,
    query: PipelineQuery,
    schema: SchemaRef,
    batch_rows: usize,
    received: impl Fn(usize) + Send + Sync + 'static,
) -> BoxStream<'static, Result<RecordBatch, ConnectorError>> {
    let (sender, batches) = mpsc::channel(BATCHES_IN_FLIGHT);
    tokio::spawn(async move {
        let outcome = async {
            let collection = client
                .database(&query.collection.schema)
                .collection::<RawDocumentBuf>(&query.collection.table);
            let mut cursor = collection
                .aggregate(query.pipeline)
                .collation(Collation::builder().locale("simple").build())
                .with_type::<RawDocumentBuf>()
                .await
                .map_err(refused)?;
            let mut batcher = DocumentBatcher::new(schema, query.columns, batch_rows);
            while let Some(raw) = cursor.try_next().await.map_err(refused)? {
                received(raw.as_bytes().len());
                let document = Document::try_from(raw.as_ref()).map_err(|e| {
                    ConnectorError::Source(format!("reading a result document: {e}"))
                })?;
                batcher.push(&document)?;
                if batcher.is_full() && sender.send(Ok(batcher.finish()?)).await.is_err() {
                    return Ok(());
                }
            }
            if batcher.rows() > 0 {
                let _ = sender.send(Ok(batcher.finish()?)).await;
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

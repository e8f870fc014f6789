//! A federated query at Postgres, streamed as Arrow record batches.
//!
//! The SQL is prepared first, to learn the wire types of its columns, then streamed with
//! `COPY (…) TO STDOUT (FORMAT binary)` through the connector's pool and decoded by
//! [`CopyBinaryDecoder`] into the target schema. The connection is marked streaming until
//! the last chunk is read, so a stream dropped early closes it (ending the query at the
//! source) instead of returning it to the pool.

use std::pin::Pin;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};

use super::copy::CopyBinaryDecoder;
use super::pool::{PgPool, PooledClient};
use crate::error::ConnectorError;

/// Runs `sql` on a connection of `pool` and streams its rows as batches of `schema` of up to
/// `batch_rows` rows; `received` is told the size of every chunk read from the source.
///
/// Errors: a query the server refuses is [`ConnectorError::Source`] (with its SQLSTATE); a
/// connection that cannot be had or breaks is [`ConnectorError::Unreachable`].
pub fn copy_query(
    pool: Arc<PgPool>,
    sql: String,
    schema: SchemaRef,
    batch_rows: usize,
    received: impl Fn(usize) + Send + Sync + 'static,
) -> BoxStream<'static, Result<RecordBatch, ConnectorError>> {
    let started = async move {
        let mut client = pool.get().await?;
        let statement = client.prepare(&sql).await.map_err(refused)?;
        let wire: Vec<_> = statement
            .columns()
            .iter()
            .map(|c| c.type_().clone())
            .collect();
        let decoder = CopyBinaryDecoder::new(schema, &wire, batch_rows)?;
        let copy = client
            .copy_out(&format!("COPY ({sql}) TO STDOUT (FORMAT binary)"))
            .await
            .map_err(refused)?;
        client.streaming(true);
        Ok::<_, ConnectorError>(decoded(copy.map_err(refused), decoder, client, received))
    };
    futures::stream::once(started).try_flatten().boxed()
}

/// A COPY stream being read: the connection stays on loan until the stream ends.
struct Copying<S, F> {
    copy: Pin<Box<S>>,
    decoder: CopyBinaryDecoder,
    client: PooledClient,
    received: F,
}

/// The batches of a COPY stream; the connection goes back to the pool once it is fully read.
fn decoded(
    copy: impl Stream<Item = Result<Bytes, ConnectorError>> + Send + 'static,
    decoder: CopyBinaryDecoder,
    client: PooledClient,
    received: impl Fn(usize) + Send + Sync + 'static,
) -> impl Stream<Item = Result<RecordBatch, ConnectorError>> + Send + 'static {
    let copying = Copying {
        copy: Box::pin(copy),
        decoder,
        client,
        received,
    };
    futures::stream::try_unfold(Some(copying), |copying| async move {
        let Some(mut c) = copying else {
            return Ok::<_, ConnectorError>(None);
        };
        match c.copy.try_next().await? {
            Some(chunk) => {
                (c.received)(chunk.len());
                let batches = c.decoder.push(&chunk)?;
                Ok(Some((batches, Some(c))))
            }
            None => {
                // Fully read: the connection can serve the next query.
                c.client.streaming(false);
                let last: Vec<_> = c.decoder.finish()?.into_iter().collect();
                Ok(Some((last, None)))
            }
        }
    })
    .map_ok(|batches| futures::stream::iter(batches.into_iter().map(Ok)))
    .try_flatten()
}

/// A Postgres error on the pushed query.
fn refused(e: tokio_postgres::Error) -> ConnectorError {
    match e.as_db_error() {
        Some(db) => ConnectorError::Source(format!(
            "the pushed query failed: {} (SQLSTATE {})",
            db.message(),
            db.code().code()
        )),
        None => ConnectorError::Unreachable {
            field: "connection.url".into(),
            reason: format!("the connection broke during the query: {e}"),
        },
    }
}

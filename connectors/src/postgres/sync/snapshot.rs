//! Snapshots: tables copied at a replication slot's consistent point.
//!
//! A slot created with `EXPORT_SNAPSHOT` exports the snapshot of its consistent point for as
//! long as the replication connection that created it stays idle. [`SnapshotSession`]
//! imports it into a `REPEATABLE READ` transaction on an ordinary connection, and
//! [`SnapshotSession::copy_table`] streams one table with binary `COPY` of its typed
//! relation ([`copy_expr`]: federation's, except that a `numeric` read as `real` is parsed
//! in kyma; the table itself when no column needs a cast), so memory stays bounded by a
//! few batches whatever the table's size. The copy is read and decoded in three stages, each on a task of its own: the server's messages are
//! read up to [`READ_AHEAD`] groups (of those already arrived, at most [`GROUP_MESSAGES`])
//! ahead of the decoder, so the server is not held up while a batch decodes; they are
//! decoded up to [`DECODED_AHEAD`] batches ahead of the reader, so the pipeline's work on
//! one batch (keys, statistics, handing it to the extent encoder) overlaps the decoding of
//! the next. Before the reading stage, the decoder waited on the server for about two
//! thirds of a 3M-row copy's time. The snapshot sees exactly the transactions that
//! committed before the consistent point; the slot — the connector's own, or a temporary
//! one created only for its snapshot — streams exactly those that commit after it.
//!
//! [`PgSnapshot`] is such a snapshot as the sync pipeline uses it: it holds the replication
//! connection that exported it (dropping it ends the snapshot, and drops a temporary slot).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Field, Schema};
use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::stream::TryReadyChunksError;
use futures::{Stream, StreamExt, TryStreamExt};
use kyma_table::types::arrow_type;

use super::replication::SlotCreation;
use super::setup::{SyncTable, classify};
use crate::error::ConnectorError;
use crate::postgres::copy::CopyBinaryDecoder;
use crate::postgres::quote_ident;
use crate::postgres::types::copy_expr;
use crate::sync::{Snapshot, SourcePosition, SourceTable, TableId};

/// Batches a copy decodes ahead of its reader.
pub const DECODED_AHEAD: usize = 2;

/// Groups of copy messages (one per row) read ahead of the decoder.
pub const READ_AHEAD: usize = 16;

/// The most messages in one group read ahead.
pub const GROUP_MESSAGES: usize = 1024;

/// An ordinary connection holding an exported snapshot open.
#[derive(Debug)]
pub struct SnapshotSession {
    client: tokio_postgres::Client,
}

impl SnapshotSession {
    /// Opens a `REPEATABLE READ` transaction on `client`, in UTC, importing snapshot `name`
    /// when given; without one it reads the source as it is now (a checker comparing the
    /// source with kyma).
    pub async fn open(
        client: tokio_postgres::Client,
        name: Option<&str>,
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
        Ok(Self { client })
    }

    /// Streams every row of `table` as batches of at most `batch_rows` rows: its columns, of
    /// their kyma types, in order.
    pub async fn copy_table(
        &self,
        table: &SyncTable,
        batch_rows: usize,
    ) -> Result<
        impl Stream<Item = Result<RecordBatch, ConnectorError>> + Send + 'static,
        ConnectorError,
    > {
        let selected: Vec<String> = table
            .columns
            .iter()
            .map(|(c, m)| copy_expr(c, m.ty))
            .collect();
        let sql = format!(
            "SELECT {} FROM ONLY {}",
            selected.join(", "),
            table.sql_name()
        );
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
        let fields: Vec<Field> = table
            .columns
            .iter()
            .map(|(c, m)| Field::new(&c.name, arrow_type(m.ty), true))
            .collect();
        let mut decoder = CopyBinaryDecoder::new(Arc::new(Schema::new(fields)), &wire, batch_rows)?;
        let copy = self
            .client
            .copy_out(&copy_command(table, &sql, &wire))
            .await
            .map_err(|e| classify(&what, &e))?;
        let groups = Box::pin(copy)
            .try_ready_chunks(GROUP_MESSAGES)
            .map_err(move |TryReadyChunksError(_, e)| classify(&what, &e));
        let mut ended = false;
        let decoded = ahead(groups, READ_AHEAD)
            .map(Some)
            .chain(futures::stream::once(async { None }))
            .map(move |group| -> Result<Vec<RecordBatch>, ConnectorError> {
                match group {
                    Some(group) => {
                        let mut batches = Vec::new();
                        for chunk in group? {
                            batches.extend(decoder.push(&chunk)?);
                        }
                        Ok(batches)
                    }
                    None if !ended => {
                        ended = true;
                        Ok(decoder.finish()?.into_iter().collect())
                    }
                    None => Ok(Vec::new()),
                }
            })
            .map_ok(|batches| futures::stream::iter(batches.into_iter().map(Ok)))
            .try_flatten();
        Ok(ahead(decoded, DECODED_AHEAD))
    }

    /// Ends the snapshot transaction.
    pub async fn close(self) -> Result<(), ConnectorError> {
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| classify("ending the snapshot", &e))
    }
}

/// The `COPY` that streams `table` as `select` reads it. When every column already has the
/// type `select` casts it to (`wire`), the table is copied directly, with its column list:
/// the same bytes, but the server scans the table without running a query over it, which
/// takes it about a sixth less time. `ONLY` in `select` and a direct copy alike leave out
/// the rows of inheriting tables, which are tables of their own.
fn copy_command(table: &SyncTable, select: &str, wire: &[tokio_postgres::types::Type]) -> String {
    let direct = wire.len() == table.columns.len()
        && wire
            .iter()
            .zip(&table.columns)
            .all(|(wire, (column, _))| wire.name() == column.pg_type.name);
    if direct {
        let columns: Vec<String> = table
            .columns
            .iter()
            .map(|(column, _)| quote_ident(&column.name))
            .collect();
        format!(
            "COPY {} ({}) TO STDOUT (FORMAT binary)",
            table.sql_name(),
            columns.join(", ")
        )
    } else {
        format!("COPY ({select}) TO STDOUT (FORMAT binary)")
    }
}

/// Polls `items` on a task of its own, up to `depth` items ahead of the returned stream;
/// the task stops after the first error or once the returned stream is dropped.
fn ahead<T: Send + 'static>(
    items: impl Stream<Item = Result<T, ConnectorError>> + Send + 'static,
    depth: usize,
) -> impl Stream<Item = Result<T, ConnectorError>> + Send + 'static {
    let (sender, received) = tokio::sync::mpsc::channel(depth);
    tokio::spawn(async move {
        let mut items = std::pin::pin!(items);
        while let Some(item) = items.next().await {
            let failed = item.is_err();
            if sender.send(item).await.is_err() || failed {
                break;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(received)
}

/// A snapshot exported by a slot, for the sync pipeline.
pub struct PgSnapshot {
    /// Keeps the exporting replication connection open (and idle) while the snapshot is read.
    slot: SlotCreation,
    session: SnapshotSession,
    position: SourcePosition,
    /// The tables as discovered, with their Postgres types (the copy selects by them).
    tables: Arc<BTreeMap<TableId, SyncTable>>,
}

impl std::fmt::Debug for PgSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSnapshot")
            .field("slot", &self.slot)
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

impl PgSnapshot {
    /// The snapshot `slot` exported at `position`, read through `client`.
    pub async fn open(
        slot: SlotCreation,
        client: tokio_postgres::Client,
        position: SourcePosition,
        tables: Arc<BTreeMap<TableId, SyncTable>>,
    ) -> Result<Self, ConnectorError> {
        let session = SnapshotSession::open(client, Some(slot.snapshot())).await?;
        Ok(Self {
            slot,
            session,
            position,
            tables,
        })
    }
}

#[async_trait]
impl Snapshot for PgSnapshot {
    fn position(&self) -> &SourcePosition {
        &self.position
    }

    async fn copy<'a>(
        &'a mut self,
        table: &'a SourceTable,
        batch_rows: usize,
    ) -> Result<BoxStream<'a, Result<RecordBatch, ConnectorError>>, ConnectorError> {
        let source = self.tables.get(&table.id).ok_or_else(|| {
            ConnectorError::Source(format!(
                "{} is not among the tables this snapshot was prepared for",
                table.id
            ))
        })?;
        Ok(Box::pin(self.session.copy_table(source, batch_rows).await?))
    }

    async fn close(self: Box<Self>) -> Result<(), ConnectorError> {
        let this = *self;
        this.session.close().await?;
        drop(this.slot);
        Ok(())
    }
}

//! The seam between a source's change log and kyma's sync pipeline (SPEC §6).
//!
//! # Design
//!
//! A source implements [`ChangeSource`]; the CDC worker's one sync pipeline does everything
//! else, the same way for every source: per-table phases, batching, schema widening, key
//! changes and tombstones, values left unchanged by an update, `_kyma_pk` (from typed key
//! values, [`kyma_table::synced::derive_pk`]) and `_kyma_seq` (assigned by the pipeline,
//! monotonic per connector, carried in the cursor), the exactly-once commit, acknowledgement,
//! status and metrics. A source only speaks its protocol and converts its native values into
//! [`KymaValue`]s; it never builds synced rows, never writes to the catalog, and never
//! decides what is committed.
//!
//! ## The contract
//!
//! - **Positions** ([`SourcePosition`]) are the source's own text (a Postgres LSN, a MariaDB
//!   GTID position, a MongoDB resume token with its cluster time): the pipeline stores them
//!   in the cursor and in `_kyma_lsn`, and compares them only through
//!   [`ChangeSource::covers`] — "is the transaction at `txn` already contained in data taken
//!   at `mark`" — and, for one row, [`ChangeSource::covers_row`]. A mark is a table's
//!   `since` ([`Snapshot::since`]) or the connector's committed position.
//! - **Snapshot, then stream, with no gap**: a [`Snapshot`] is a consistent read of the
//!   source at [`Snapshot::position`]; every transaction not covered by it reaches the
//!   stream started at any position at or before it. The pipeline copies each table under a
//!   snapshot and records that position as the table's `since`; streamed transactions
//!   covered by a table's `since` are dropped for that table. So a snapshot may overlap the
//!   stream (MySQL without locks, MongoDB's cluster time) but never leave a gap. The first
//!   snapshot comes from [`ChangeSource::prepare`] (Postgres: the slot's exported snapshot,
//!   at the slot's consistent point); later ones (a table added to the scope, a resync, a
//!   copy interrupted by a crash) from [`ChangeSource::snapshot`], taken while the stream is
//!   closed and resumed afterwards from the connector's cursor.
//! - **Events** ([`SourceEvent`]) come in transactions: `Begin`, then `Relation`s (a table's
//!   columns, before its first row and after every schema change), `Row`s and `Truncate`s,
//!   then `Commit` with the position to resume after. Row values are in the order of the
//!   table's last `Relation`; a value the source did not send because the update left it
//!   unchanged is [`Cell::Unchanged`] (Postgres TOAST, MySQL minimal row images, MongoDB
//!   update descriptions), and the pipeline takes it from the key's previous version.
//!   `Idle` says nothing is in flight up to a position, so an idle source still advances.
//! - **Acknowledgement** ([`ChangeStream::ack`]) is called only with positions the catalog
//!   has committed (a batch, or an idle position committed for the purpose), so what the
//!   source may discard is always in kyma.
//! - **Fencing**: [`ChangeSource::prepare`] and [`ChangeSource::snapshot`] call
//!   [`Fence::check`] immediately before every destructive step (dropping or creating a
//!   replication slot, changing a publication, ending another reader): the check is a
//!   catalog transaction that fails once another worker has claimed the connector. A step
//!   that still races past the check cannot make the new owner skip data: the cursor records
//!   the identity of what it is a position in ([`Prepared::source_id`]), and `prepare`
//!   refuses, with a definite error naming the object, to resume on anything else.
//! - **Errors** are [`ConnectorError`]s with retryability explicit: transient ones make the
//!   pipeline resume from the committed cursor after a backoff; definite ones name what the
//!   operator must fix.
//!
//! ## How the sources map onto it
//!
//! - **Postgres** (`crate::postgres::sync`): a publication and a logical replication slot
//!   (pgoutput). Position = LSN; `covers(mark, txn)` = the transaction's commit LSN is before
//!   the mark. The first snapshot is the slot's exported snapshot; later ones come from a
//!   temporary slot created with an exported snapshot. Source identity = slot name and the
//!   LSN it was created at; resuming on a slot whose confirmed position is past the cursor
//!   (a slot dropped and created again) is refused. The replication session pins TimeZone,
//!   DateStyle, IntervalStyle and extra_float_digits, so values decode the same whatever the
//!   server's defaults.
//! - **MariaDB** (`crate::mysql::sync`): no slot, so `prepare` changes nothing at the
//!   source; a cursor the binlog no longer holds fails the stream's start with a definite
//!   "history lost" error naming the fix. Position = a MariaDB GTID position
//!   (`domain-server-seq` per domain); `covers(mark, txn)` = for every domain of `txn`, the
//!   mark is at or past it. A snapshot is `START TRANSACTION WITH CONSISTENT SNAPSHOT` with
//!   `Binlog_snapshot_file/position` turned into a GTID position by `BINLOG_GTID_POS`. DDL in
//!   the binlog is a schema checkpoint: the source re-reads the table's columns and emits a
//!   `Relation` when nullable columns were only added, else a `Resnapshot` of the table.
//!   Minimal row images become `Cell::Unchanged`. Source identity = the server id. MySQL
//!   proper (UUID GTID sets, a locked snapshot anchor) is refused for sync.
//! - **MongoDB** (`crate::mongodb::sync`): `prepare` opens nothing durable. Position =
//!   resume token plus its cluster time; a snapshot opens the change stream first (keeping
//!   its post-batch resume token) and reads the collections in a snapshot session at a
//!   cluster time that leaves no gap after it; `covers(mark, txn)` = the event's cluster
//!   time is at or before the snapshot's, or its resume token sorts at or before the mark's.
//!   A collection whose copy outlives the server's snapshot history goes on in `_id` ranges,
//!   each read at its own time: its `since` ([`Snapshot::since`]) is the list of ranges, and
//!   [`ChangeSource::covers_row`] compares a row's change with the range its key
//!   ([`RowChange::key_order`]) falls in. Update descriptions without a full document become
//!   `Cell::Unchanged` for the fields not in them. Idle batches carry the post-batch resume
//!   token as `Idle { position }`. History lost (error 286, like a purged MariaDB binlog) is
//!   [`ConnectorError::HistoryLost`]: the pipeline fails the connector, or copies every table
//!   again under `retention.on_history_lost: resnapshot`. Source identity = the replica
//!   set's name.

use std::fmt;
use std::sync::Arc;

use arrow::array::RecordBatch;
use async_trait::async_trait;
use futures::stream::BoxStream;
use kyma_catalog::{KymaType, table_key};
use kyma_table::KymaValue;
pub use kyma_table::synced::ChangeOp;

use crate::error::ConnectorError;

/// Why a table is refused for sync when it has no primary key (SPEC §3).
pub const NO_PRIMARY_KEY: &str = "table has no primary key";

/// A position in a source's change log, in the source's own notation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourcePosition(pub String);

impl fmt::Display for SourcePosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A source table: its schema (database) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableId {
    /// The schema (MySQL and MongoDB: the database).
    pub schema: String,
    /// The table (MongoDB: the collection).
    pub table: String,
}

impl TableId {
    /// The table `schema.table`.
    pub fn new(schema: impl Into<String>, table: impl Into<String>) -> Self {
        Self {
            schema: schema.into(),
            table: table.into(),
        }
    }

    /// How the connector status names it ([`kyma_catalog::table_key`]).
    pub fn key(&self) -> String {
        table_key(&self.schema, &self.table)
    }
}

impl fmt::Display for TableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key())
    }
}

/// A source column with its kyma type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceColumn {
    /// The column name.
    pub name: String,
    /// Its kyma type.
    pub ty: KymaType,
    /// Set when the source type has no mapping and fell back to `dynamic`.
    pub warning: Option<String>,
}

/// A table in scope, as discovered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceTable {
    /// Which table.
    pub id: TableId,
    /// Its columns in source order.
    pub columns: Vec<SourceColumn>,
    /// Its primary key columns in key order (empty: it has none and cannot be synced).
    pub key: Vec<String>,
    /// The source's estimate of its rows, for progress.
    pub estimated_rows: u64,
}

/// One value of a changed row.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// SQL NULL (or a missing field).
    Null,
    /// A value.
    Value(KymaValue),
    /// Not sent: the change left it as the key's previous version has it.
    Unchanged,
}

/// The row before an update, as the source sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct OldRow {
    /// Its values ([`Cell::Null`] for the columns the source did not send).
    pub cells: Vec<Cell>,
    /// Whether it holds every column (Postgres REPLICA IDENTITY FULL, MySQL FULL images),
    /// not only the key's.
    pub whole: bool,
}

/// One row change.
#[derive(Debug, Clone, PartialEq)]
pub struct RowChange {
    /// The table (shared by its row changes: a change is one per row, a table one per
    /// relation).
    pub table: Arc<TableId>,
    /// Insert, update or delete.
    pub op: ChangeOp,
    /// The new row (a delete: the deleted row, or at least its key), in the order of the
    /// table's last [`SourceEvent::Relation`].
    pub cells: Vec<Cell>,
    /// The row before an update, when the source sent it (it does when the key changed).
    pub old: Option<OldRow>,
    /// Where the row's key sorts among the table's keys, as bytes that compare as the source
    /// orders keys — for a table copied in key ranges, each at its own time
    /// ([`ChangeSource::covers_row`]; MongoDB's `_id`). `None` when the source copies whole
    /// tables.
    pub key_order: Option<Vec<u8>>,
}

/// What a change stream delivers.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceEvent {
    /// A transaction begins.
    Begin {
        /// The transaction's position (what [`ChangeSource::covers`] compares).
        position: SourcePosition,
        /// When the source committed it, microseconds since the epoch.
        committed_at_micros: i64,
    },
    /// A table's columns, before its first row and after each change of its schema.
    Relation {
        /// The table.
        table: TableId,
        /// Its columns now.
        columns: Vec<SourceColumn>,
    },
    /// A row changed.
    Row(RowChange),
    /// A change of `tables` that kyma cannot read (a value that does not decode, an
    /// ambiguous truncate): the pipeline fails those tables, and the others go on.
    Unreadable {
        /// The tables.
        tables: Vec<TableId>,
        /// What is wrong.
        reason: String,
    },
    /// Tables whose schema changed in a way the source cannot follow row by row (a column
    /// retyped, dropped or moved): the pipeline copies them again under a new snapshot.
    Resnapshot {
        /// The tables.
        tables: Vec<TableId>,
        /// What changed (shown in the status).
        reason: String,
    },
    /// Tables were emptied.
    Truncate {
        /// The tables.
        tables: Vec<TableId>,
    },
    /// The transaction committed; a stream may resume after `position`.
    Commit {
        /// The position after the transaction.
        position: SourcePosition,
    },
    /// Nothing is in flight: everything up to `position` has been delivered.
    Idle {
        /// The source's position, when it tells.
        position: Option<SourcePosition>,
        /// How far behind the source's newest change the stream is, in bytes, when it tells.
        lag_bytes: Option<u64>,
    },
}

/// What the pipeline calls before each destructive step at the source.
#[async_trait]
pub trait Fence: Send + Sync {
    /// Fails (as [`ConnectorError::Fenced`]) once another worker has claimed the connector;
    /// `step` says what is about to happen (for the log).
    async fn check(&self, step: &str) -> Result<(), ConnectorError>;
}

/// Where a stream resumes: the committed cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// The committed position.
    pub position: SourcePosition,
    /// What it is a position in ([`Prepared::source_id`] when it was recorded).
    pub source_id: Option<String>,
}

/// What [`ChangeSource::prepare`] made ready.
pub struct Prepared {
    /// The identity of what positions are positions in (recorded with the cursor).
    pub source_id: String,
    /// The first snapshot, when preparing created what the stream reads from (Postgres: a
    /// new slot); the stream starts at its position.
    pub initial: Option<Box<dyn Snapshot>>,
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prepared")
            .field("source_id", &self.source_id)
            .field(
                "initial",
                &self.initial.as_ref().map(|s| s.position().clone()),
            )
            .finish()
    }
}

/// A source's change log (see the module docs).
#[async_trait]
pub trait ChangeSource: Send + Sync {
    /// Checks that the source can be synced at all, naming the setting or privilege to fix.
    async fn preflight(&mut self) -> Result<(), ConnectorError>;

    /// The tables in scope now (tables without a primary key come back with an empty key).
    async fn discover(&mut self) -> Result<Vec<SourceTable>, ConnectorError>;

    /// Makes the source ready to stream `tables`: from `resume` (the committed cursor), or,
    /// when there is none, from a new starting point whose snapshot it returns. Calls
    /// `fence` before each destructive step; refuses to resume on another source object.
    async fn prepare(
        &mut self,
        tables: &[&SourceTable],
        resume: Option<&Resume>,
        fence: &dyn Fence,
    ) -> Result<Prepared, ConnectorError>;

    /// A consistent snapshot of the source as of now, whose position the stream (resumed at
    /// the cursor) reaches without a gap.
    async fn snapshot(&mut self, fence: &dyn Fence) -> Result<Box<dyn Snapshot>, ConnectorError>;

    /// The change stream after `from`.
    async fn stream(
        &mut self,
        from: &SourcePosition,
    ) -> Result<Box<dyn ChangeStream>, ConnectorError>;

    /// Whether the transaction at `txn` is contained in data taken at `mark` (a snapshot
    /// position or a committed position).
    fn covers(&self, mark: &SourcePosition, txn: &SourcePosition) -> Result<bool, ConnectorError>;

    /// Whether change `row` of the transaction at `txn` is contained in data taken at `mark`
    /// (a table's [`Snapshot::since`]). A table copied whole answers for the transaction
    /// ([`ChangeSource::covers`]); one copied in key ranges, each at its own time, answers
    /// for the range the row's key falls in.
    fn covers_row(
        &self,
        mark: &SourcePosition,
        txn: &SourcePosition,
        row: &RowChange,
    ) -> Result<bool, ConnectorError> {
        let _ = row;
        self.covers(mark, txn)
    }

    /// Drops what the connector owns at the source (the connector was deleted).
    async fn teardown(&mut self) -> Result<(), ConnectorError>;
}

/// A consistent read of the source at one position.
#[async_trait]
pub trait Snapshot: Send {
    /// The position it was taken at.
    fn position(&self) -> &SourcePosition;

    /// Where the copy of `table` stands once it is done: what its streamed changes are
    /// compared with ([`ChangeSource::covers_row`]). A table copied whole stands at
    /// [`Snapshot::position`]; one copied in key ranges (MongoDB past its snapshot history),
    /// at each range's time.
    fn since(&self, table: &TableId) -> SourcePosition {
        let _ = table;
        self.position().clone()
    }

    /// Every row of `table` as batches of at most `batch_rows` rows: the table's columns (as
    /// discovered), of their kyma types, in order.
    async fn copy<'a>(
        &'a mut self,
        table: &'a SourceTable,
        batch_rows: usize,
    ) -> Result<BoxStream<'a, Result<RecordBatch, ConnectorError>>, ConnectorError>;

    /// Ends the snapshot.
    async fn close(self: Box<Self>) -> Result<(), ConnectorError>;
}

/// A running change stream.
#[async_trait]
pub trait ChangeStream: Send {
    /// The next event; `None` once the stream has ended (after an error it returned).
    async fn next(&mut self) -> Option<Result<SourceEvent, ConnectorError>>;

    /// Lets the source discard everything up to `position`, which the catalog has committed.
    fn ack(&mut self, position: &SourcePosition);
}

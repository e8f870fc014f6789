//! The binlog as a change stream (MariaDB GTID positioning).
//!
//! # Connecting
//!
//! The reader registers with a server id of the connector's own
//! ([`super::setup::reader_server_id`]), sets `@mariadb_slave_capability = 4` (without it
//! MariaDB rewrites its GTID events into dummy events), `@slave_connect_state` = the cursor
//! and `@slave_gtid_strict_mode = 1`, asks for heartbeats every [`HEARTBEAT`], and issues a
//! plain `COM_BINLOG_DUMP` (MariaDB has no `COM_BINLOG_DUMP_GTID`). A cursor the binlog no
//! longer holds is a definite error naming the fix.
//!
//! # Events
//!
//! mysql_common does not know MariaDB's own event types, so the GTID event (162) is read
//! here ([`Gtid::from_event`]); checkpoint, annotate and GTID-list events are skipped;
//! compressed events (165–172) fail closed. A transaction is `GTID … XID` (or `… COMMIT`
//! for non-transactional tables, or a standalone GTID and one statement for DDL). It
//! becomes `Begin`, rows and `Commit` only when it touches a table in scope; the others
//! only advance the position, reported as `Idle` at most every [`IDLE_EVERY`] and on every
//! heartbeat, so the cursor advances on an idle or unrelated workload.
//!
//! # Schema changes
//!
//! A DDL statement naming a table in scope is a checkpoint: the tables' definitions are read
//! again and compared with what the stream knew. Columns added at the end that are NULL in
//! the existing rows → `Relation` (the kyma table widens); `TRUNCATE` → `Truncate`; anything
//! else (a retyped, dropped, renamed or moved column, or one added with a default: changes
//! that rewrite existing rows without row events) → `Resnapshot`, so the table is copied
//! again rather than left different from the source or decoded wrongly. A
//! TABLE_MAP whose layout disagrees with the definition also leads to `Resnapshot` (see
//! [`super::decode`]). The statement is kept until it has been handled, so a `next` that
//! is cancelled while re-reading definitions handles it again on the next call.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use kyma_catalog::ConnectorSpec;
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStream, BinlogStreamRequest};
use mysql_common::binlog::events::{Event, EventData, RowsEventData, TableMapEvent};

use super::super::connect;
use super::decode::TableDecoder;
use super::gtid::{Gtid, GtidPosition};
use super::setup::reader_server_id;
use super::snapshot::Layout;
use super::{Layouts, columns_of, read_layouts};
use crate::error::ConnectorError;
use crate::secrets::SecretResolver;
use crate::sync::{ChangeStream, SourceEvent, SourcePosition, TableId};

/// How often the server sends a heartbeat when it has nothing to send.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// How often the position reached through transactions outside the scope is reported.
const IDLE_EVERY: Duration = Duration::from_secs(1);

/// MariaDB's GTID event.
const MARIADB_GTID_EVENT: u8 = 162;
/// MariaDB's compressed query and rows events.
const MARIADB_COMPRESSED_EVENTS: std::ops::RangeInclusive<u8> = 165..=172;
/// The GTID event flag of a statement that is its own transaction (DDL).
const FL_STANDALONE: u8 = 1;

/// A transaction being read.
#[derive(Debug)]
struct OpenTransaction {
    gtid: Gtid,
    committed_at_micros: i64,
    /// `Begin` was emitted (it touched a table in scope).
    begun: bool,
    /// A standalone statement (DDL): the transaction ends with it.
    standalone: bool,
}

/// The decoder of one table id, kept while TABLE_MAPs repeat the same map.
struct MappedTable {
    map: Vec<u8>,
    decoder: Option<Arc<TableDecoder>>,
}

/// The binlog of one connector (see the module doc).
pub struct MyChangeStream {
    binlog: BinlogStream,
    spec: ConnectorSpec,
    secrets: SecretResolver,
    layouts: BTreeMap<TableId, Layout>,
    /// Where the binlog was when `layouts` had been read (see [`Layouts`]).
    layouts_read_at: GtidPosition,
    mapped: HashMap<u64, MappedTable>,
    described: BTreeSet<TableId>,
    position: GtidPosition,
    open: Option<OpenTransaction>,
    /// A DDL statement not yet handled: (default schema, statement).
    pending_ddl: Option<(String, String)>,
    queue: VecDeque<SourceEvent>,
    last_idle: Instant,
    ended: bool,
}

impl MyChangeStream {
    /// Starts reading the binlog of `spec`'s source after `from`; `layouts` are the tables in
    /// scope as last discovered.
    pub async fn open(
        spec: &ConnectorSpec,
        secrets: &SecretResolver,
        layouts: Layouts,
        from: &SourcePosition,
    ) -> Result<Self, ConnectorError> {
        let position = GtidPosition::parse(&from.0)?;
        let mut conn = connect(&spec.connection, secrets).await?;
        for setup in [
            "SET @mariadb_slave_capability = 4".to_owned(),
            format!(
                "SET @slave_connect_state = {}",
                super::super::quote_literal(&position.to_string())
            ),
            "SET @slave_gtid_strict_mode = 1".to_owned(),
            format!("SET @master_heartbeat_period = {}", HEARTBEAT.as_nanos()),
        ] {
            conn.query_drop(setup).await.map_err(binlog_error)?;
        }
        let request = BinlogStreamRequest::new(reader_server_id(&spec.name));
        let binlog = conn
            .get_binlog_stream(request)
            .await
            .map_err(binlog_error)?;
        tracing::info!(connector = %spec.name, %position, "binlog stream started");
        Ok(Self {
            binlog,
            spec: spec.clone(),
            secrets: secrets.clone(),
            layouts: layouts.tables,
            layouts_read_at: layouts.read_at,
            mapped: HashMap::new(),
            described: BTreeSet::new(),
            position,
            open: None,
            pending_ddl: None,
            queue: VecDeque::new(),
            last_idle: Instant::now(),
            ended: false,
        })
    }

    /// Turns one binlog event into source events (queued).
    fn handle(&mut self, event: &Event) -> Result<(), ConnectorError> {
        let header = event.header();
        let kind = header.event_type_raw();
        if kind == MARIADB_GTID_EVENT {
            let (gtid, flags) = Gtid::from_event(event.data(), header.server_id())?;
            self.open = Some(OpenTransaction {
                gtid,
                committed_at_micros: i64::from(header.timestamp()) * 1_000_000,
                begun: false,
                standalone: flags & FL_STANDALONE != 0,
            });
            return Ok(());
        }
        if MARIADB_COMPRESSED_EVENTS.contains(&kind) {
            return Err(ConnectorError::invalid(
                "source setting log_bin_compress",
                "the binlog holds compressed events, which kyma cannot read; set log_bin_compress=OFF and resync",
            ));
        }
        let data = event
            .read_data()
            .map_err(|e| ConnectorError::Source(format!("a binlog event does not decode: {e}")))?;
        match data {
            Some(EventData::TableMapEvent(map)) => self.table_map(event.data(), &map),
            Some(EventData::RowsEvent(rows)) => self.rows(&rows),
            Some(EventData::XidEvent(_)) => self.end_transaction(),
            Some(EventData::QueryEvent(query)) => {
                let text = query.query().trim().to_owned();
                match text.to_ascii_uppercase().as_str() {
                    "BEGIN" => {}
                    "COMMIT" | "ROLLBACK" => self.end_transaction(),
                    _ => {
                        self.pending_ddl = Some((query.schema().into_owned(), text));
                    }
                }
            }
            Some(EventData::HeartbeatEvent) if self.open.is_none() => self.idle(),
            _ => {}
        }
        Ok(())
    }

    /// A TABLE_MAP: prepares the decoder of a table in scope (or reuses it while the map is
    /// the same); a layout the decoder cannot follow sends the table to be copied again.
    fn table_map(&mut self, raw: &[u8], map: &TableMapEvent<'_>) {
        let table_id = map.table_id();
        if self.mapped.get(&table_id).is_some_and(|m| m.map == raw) {
            return;
        }
        let id = TableId::new(map.database_name(), map.table_name());
        let decoder = match self.layouts.get(&id) {
            None => None,
            Some(layout) => match TableDecoder::new(map, id.clone(), layout) {
                Ok(decoder) => Some(Arc::new(decoder)),
                Err(reason) => {
                    self.begin();
                    self.queue.push_back(SourceEvent::Resnapshot {
                        tables: vec![id],
                        reason: format!("the binlog's layout of the table changed: {reason}"),
                    });
                    None
                }
            },
        };
        self.mapped.insert(
            table_id,
            MappedTable {
                map: raw.to_vec(),
                decoder,
            },
        );
    }

    fn rows(&mut self, rows: &RowsEventData<'_>) {
        let Some(decoder) = self
            .mapped
            .get(&rows.table_id())
            .and_then(|m| m.decoder.clone())
        else {
            return;
        };
        self.begin();
        self.describe(decoder.table());
        match decoder.changes(rows) {
            Ok(changes) => self.queue.extend(changes.into_iter().map(SourceEvent::Row)),
            Err(reason) => self.queue.push_back(SourceEvent::Unreadable {
                tables: vec![decoder.table().clone()],
                reason,
            }),
        }
    }

    /// Emits `Begin` for the open transaction, once.
    fn begin(&mut self) {
        if let Some(open) = self.open.as_mut()
            && !open.begun
        {
            open.begun = true;
            self.queue.push_back(SourceEvent::Begin {
                position: SourcePosition(open.gtid.to_string()),
                committed_at_micros: open.committed_at_micros,
            });
        }
    }

    /// Emits `Relation` for `table`, once per stream (and again after its schema changed).
    fn describe(&mut self, table: &TableId) {
        if self.described.contains(table) {
            return;
        }
        if let Some(layout) = self.layouts.get(table) {
            self.queue.push_back(SourceEvent::Relation {
                table: table.clone(),
                columns: columns_of(layout, &self.spec.scope),
            });
            self.described.insert(table.clone());
        }
    }

    fn end_transaction(&mut self) {
        let Some(open) = self.open.take() else {
            return;
        };
        self.position.advance(open.gtid);
        if open.begun {
            self.queue.push_back(SourceEvent::Commit {
                position: SourcePosition(self.position.to_string()),
            });
        } else if self.last_idle.elapsed() >= IDLE_EVERY {
            self.idle();
        }
    }

    fn idle(&mut self) {
        self.last_idle = Instant::now();
        self.queue.push_back(SourceEvent::Idle {
            position: Some(SourcePosition(self.position.to_string())),
            lag_bytes: None,
        });
    }

    /// Handles the pending DDL statement (see the module doc).
    async fn schema_change(&mut self, schema: &str, statement: &str) -> Result<(), ConnectorError> {
        let lower = statement.to_lowercase();
        let named: Vec<TableId> = self
            .layouts
            .keys()
            .filter(|t| lower.contains(&t.table.to_lowercase()))
            .filter(|t| t.schema == schema || lower.contains(&t.schema.to_lowercase()))
            .cloned()
            .collect();
        if !named.is_empty() {
            let mut conn = connect(&self.spec.connection, &self.secrets).await?;
            let now = read_layouts(&mut conn, &self.spec.scope).await?;
            let _ = conn.disconnect().await;
            self.begin();
            let kind = DdlKind::of(&lower);
            let already_read = self.open.as_ref().is_some_and(|open| {
                let mut at = GtidPosition::default();
                at.advance(open.gtid);
                self.layouts_read_at.contains(&at)
            });
            for table in named {
                if already_read && kind != DdlKind::Truncate {
                    // The definitions the stream holds were read after this change: rows of
                    // the table read since the stream began may have been laid out before
                    // it, which no definition at hand describes.
                    self.queue.push_back(SourceEvent::Resnapshot {
                        tables: vec![table.clone()],
                        reason: "its schema changed before the stream caught up with it".into(),
                    });
                    match now.tables.get(&table) {
                        Some(layout) => self.layouts.insert(table, layout.clone()),
                        None => self.layouts.remove(&table),
                    };
                } else {
                    self.compare(&table, now.tables.get(&table), kind);
                }
            }
            for (table, layout) in now.tables {
                self.layouts.entry(table).or_insert(layout);
            }
            self.layouts_read_at = now.read_at;
        }
        if self.open.as_ref().is_some_and(|o| o.standalone) {
            self.end_transaction();
        }
        Ok(())
    }

    /// What a schema change did to `table`, whose definition is now `now`.
    fn compare(&mut self, table: &TableId, now: Option<&Layout>, kind: DdlKind) {
        if kind == DdlKind::Truncate {
            self.queue.push_back(SourceEvent::Truncate {
                tables: vec![table.clone()],
            });
        }
        let Some(now) = now else {
            // Dropped or renamed away: rediscovery takes it out of the scope.
            self.layouts.remove(table);
            return;
        };
        if kind == DdlKind::Rename {
            // Another table may have been renamed into its name (gh-ost, pt-osc swaps): its
            // rows never passed through the binlog as this table's.
            self.layouts.insert(table.clone(), now.clone());
            self.queue.push_back(SourceEvent::Resnapshot {
                tables: vec![table.clone()],
                reason: "a RENAME touched the table (it may now be another table)".into(),
            });
            return;
        }
        let Some(before) = self.layouts.get(table) else {
            return;
        };
        if before == now {
            return;
        }
        // Only columns added at the end, NULL in every existing row, can be followed: any
        // other change may have rewritten existing rows, which the binlog does not carry.
        let kept = before.len() <= now.len()
            && before.iter().zip(now).all(|(b, n)| b == n)
            && now[before.len()..]
                .iter()
                .all(|(c, _)| !c.fills_existing_rows);
        let changed = before.iter().zip(now).find(|(b, n)| b != n).map_or_else(
            || match now.get(before.len()) {
                Some((added, _)) => format!(
                    "column `{}` was added with a value for the existing rows",
                    added.name
                ),
                None => "columns were removed".to_owned(),
            },
            |(b, n)| {
                format!(
                    "column `{}` ({}) became `{}` ({})",
                    b.0.name, b.0.column_type, n.0.name, n.0.column_type
                )
            },
        );
        self.layouts.insert(table.clone(), now.clone());
        self.mapped
            .retain(|_, m| m.decoder.as_ref().is_none_or(|d| d.table() != table));
        self.described.remove(table);
        if kept {
            self.describe(table);
        } else {
            self.queue.push_back(SourceEvent::Resnapshot {
                tables: vec![table.clone()],
                reason: format!("a schema change kyma cannot follow row by row: {changed}"),
            });
        }
    }
}

/// What a DDL statement does, as far as the stream must know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DdlKind {
    /// `TRUNCATE`: the table is emptied.
    Truncate,
    /// A `RENAME` (of a table or a column): the name may now be another table's.
    Rename,
    /// Anything else: compare the definitions.
    Other,
}

impl DdlKind {
    fn of(lower: &str) -> Self {
        if lower.starts_with("truncate") {
            DdlKind::Truncate
        } else if lower.starts_with("rename") || lower.contains(" rename ") {
            DdlKind::Rename
        } else {
            DdlKind::Other
        }
    }
}

#[async_trait]
impl ChangeStream for MyChangeStream {
    async fn next(&mut self) -> Option<Result<SourceEvent, ConnectorError>> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(Ok(event));
            }
            if self.ended {
                return None;
            }
            if let Some((schema, statement)) = self.pending_ddl.clone() {
                if let Err(e) = self.schema_change(&schema, &statement).await {
                    self.ended = true;
                    return Some(Err(e));
                }
                self.pending_ddl = None;
                continue;
            }
            let handled = match self.binlog.next().await {
                None => Err(ConnectorError::Unreachable {
                    field: "connection.url".into(),
                    reason: "the server ended the binlog stream".into(),
                }),
                Some(Err(e)) => Err(binlog_error(e)),
                Some(Ok(event)) => self.handle(&event),
            };
            if let Err(e) = handled {
                self.ended = true;
                return Some(Err(e));
            }
        }
    }

    fn ack(&mut self, _position: &SourcePosition) {
        // MariaDB keeps its binlog by retention, not by what readers acknowledge.
    }
}

/// An error of the binlog connection: a position the server no longer has is definite,
/// naming the fix; the rest are transient.
fn binlog_error(e: mysql_async::Error) -> ConnectorError {
    match e {
        // ER_MASTER_FATAL_ERROR_READING_BINLOG: purged, or not in strict order.
        mysql_async::Error::Server(server) if server.code == 1236 => {
            ConnectorError::HistoryLost(format!(
                "the binlog no longer holds the connector's position ({}); resync the connector or set retention.on_history_lost to resnapshot, and keep binlogs longer (expire_logs_days / binlog_expire_logs_seconds) than a worker may be down",
                server.message
            ))
        }
        other => super::super::refused(other),
    }
}

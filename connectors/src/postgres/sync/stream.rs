//! The change stream of a Postgres connector: pgoutput messages (from
//! [`PgReplicationStream`]) as the sync pipeline's [`SourceEvent`]s.
//!
//! A relation message names each column's type by OID; the stream looks the type up once
//! (an ordinary connection, cached by OID and modifier), maps it to a kyma type with the
//! same mapping discovery uses, and from then on decodes that table's text values with
//! [`parse_text`]. Positions are LSNs: a transaction begins at its commit LSN (what
//! [`super::PgChangeSource::covers`] compares) and the stream resumes after its end LSN.
//!
//! pgoutput leaves out of an update's new row the TOAST values the update did not change:
//! those become [`Cell::Unchanged`]. A truncate names its tables as `schema.table`; the
//! stream matches that against the relations it has seen, exactly.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use kyma_catalog::{KymaType, ScopeSpec};
use pg_walstream::{ChangeEvent, ColumnValue, EventType, ReplicaIdentity, RowData};

use super::replication::{PgReplicationStream, ReplicationMessage};
use super::setup::{format_lsn, parse_lsn};
use super::text::{TextFormat, parse_text};
use crate::error::ConnectorError;
use crate::postgres::types::{PgType, kyma_type, type_of_oid};
use crate::sync::{
    Cell, ChangeOp, ChangeStream, OldRow, RowChange, SourceColumn, SourceEvent, SourcePosition,
    TableId,
};

/// One column of a relation: how its text reads.
#[derive(Debug, Clone)]
struct StreamColumn {
    name: String,
    ty: KymaType,
    format: TextFormat,
}

/// A table as its last relation message described it.
#[derive(Debug)]
struct Relation {
    table: Arc<TableId>,
    columns: Vec<StreamColumn>,
}

/// A Postgres change stream (see the module docs).
pub struct PgChangeStream {
    stream: PgReplicationStream,
    client: tokio_postgres::Client,
    scope: ScopeSpec,
    types: HashMap<(u32, i32), PgType>,
    relations: HashMap<u32, Relation>,
}

impl std::fmt::Debug for PgChangeStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgChangeStream")
            .field("relations", &self.relations.len())
            .finish_non_exhaustive()
    }
}

impl PgChangeStream {
    /// Events of `stream`, looking column types up through `client` and mapping them under
    /// the connector's `scope`.
    pub fn new(
        stream: PgReplicationStream,
        client: tokio_postgres::Client,
        scope: ScopeSpec,
    ) -> Self {
        Self {
            stream,
            client,
            scope,
            types: HashMap::new(),
            relations: HashMap::new(),
        }
    }

    async fn pg_type(&mut self, oid: u32, typmod: i32) -> Result<PgType, ConnectorError> {
        if let Some(t) = self.types.get(&(oid, typmod)) {
            return Ok(t.clone());
        }
        let pg = type_of_oid(&self.client, oid, typmod).await?;
        self.types.insert((oid, typmod), pg.clone());
        Ok(pg)
    }

    async fn relation(
        &mut self,
        oid: u32,
        table: TableId,
        columns: &[pg_walstream::RelationColumn],
    ) -> Result<SourceEvent, ConnectorError> {
        let mut stream_columns = Vec::with_capacity(columns.len());
        let mut described = Vec::with_capacity(columns.len());
        for column in columns {
            let pg = self.pg_type(column.type_id, column.type_modifier).await?;
            let mapped = kyma_type(&column.name, &pg, &self.scope);
            stream_columns.push(StreamColumn {
                name: column.name.to_string(),
                ty: mapped.ty,
                format: TextFormat::of(&pg, mapped.ty),
            });
            described.push(SourceColumn {
                name: column.name.to_string(),
                ty: mapped.ty,
                warning: mapped.warning,
            });
        }
        self.relations.insert(
            oid,
            Relation {
                table: Arc::new(table.clone()),
                columns: stream_columns,
            },
        );
        Ok(SourceEvent::Relation {
            table,
            columns: described,
        })
    }

    /// The event of one pgoutput message; `None` for messages the pipeline has no use for.
    async fn event(&mut self, event: ChangeEvent) -> Result<Option<SourceEvent>, ConnectorError> {
        let event = match event.event_type {
            EventType::Begin {
                final_lsn,
                commit_timestamp,
                ..
            } => SourceEvent::Begin {
                position: SourcePosition(format_lsn(final_lsn.value())),
                committed_at_micros: commit_timestamp.timestamp_micros(),
            },
            EventType::Commit { end_lsn, .. } => SourceEvent::Commit {
                position: SourcePosition(format_lsn(end_lsn.value())),
            },
            EventType::Relation {
                relation_id,
                namespace,
                relation_name,
                columns,
                ..
            } => {
                let table = TableId::new(namespace.as_ref(), relation_name.as_ref());
                self.relation(relation_id, table, &columns).await?
            }
            EventType::Insert {
                relation_oid, data, ..
            } => self.row(relation_oid, ChangeOp::Insert, &data, None)?,
            EventType::Update {
                relation_oid,
                old_data,
                new_data,
                replica_identity,
                ..
            } => {
                let old = old_data
                    .as_ref()
                    .map(|row| (row, replica_identity == ReplicaIdentity::Full));
                self.row(relation_oid, ChangeOp::Update, &new_data, old)?
            }
            EventType::Delete {
                relation_oid,
                old_data,
                ..
            } => self.row(relation_oid, ChangeOp::Delete, &old_data, None)?,
            EventType::Truncate { tables, .. } => self.truncate(&tables),
            _ => return Ok(None),
        };
        Ok(Some(event))
    }

    fn row(
        &self,
        oid: u32,
        op: ChangeOp,
        data: &RowData,
        old: Option<(&RowData, bool)>,
    ) -> Result<SourceEvent, ConnectorError> {
        let relation = self.relations.get(&oid).ok_or_else(|| {
            ConnectorError::Source(format!(
                "a change of relation {oid} arrived before its relation message"
            ))
        })?;
        // A column left out of a new row is a TOAST value the update did not change; left out
        // of a deleted or old row, it was not sent (only the key is).
        let missing = if op == ChangeOp::Update {
            Cell::Unchanged
        } else {
            Cell::Null
        };
        let decoded = decode(relation, data, &missing).and_then(|cells| {
            let old = old
                .map(|(row, whole)| {
                    decode(relation, row, &Cell::Null).map(|cells| OldRow { cells, whole })
                })
                .transpose()?;
            Ok((cells, old))
        });
        Ok(match decoded {
            Ok((cells, old)) => SourceEvent::Row(RowChange {
                table: relation.table.clone(),
                op,
                cells,
                old,
                key_order: None,
            }),
            Err(reason) => SourceEvent::Unreadable {
                tables: vec![TableId::clone(&relation.table)],
                reason,
            },
        })
    }

    fn truncate(&self, names: &[Arc<str>]) -> SourceEvent {
        let mut tables = Vec::with_capacity(names.len());
        for name in names {
            let matching: Vec<&TableId> = self
                .relations
                .values()
                .map(|r| r.table.as_ref())
                .filter(|t| format!("{}.{}", t.schema, t.table) == name.as_ref())
                .collect();
            match matching.as_slice() {
                [table] => tables.push((*table).clone()),
                [] => {}
                several => {
                    return SourceEvent::Unreadable {
                        tables: several.iter().map(|t| (*t).clone()).collect(),
                        reason: format!(
                            "a TRUNCATE names `{name}`, which is the name of several tables ({}); a dot in a schema or table name makes them ambiguous: rename one and resync",
                            several
                                .iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    };
                }
            }
        }
        SourceEvent::Truncate { tables }
    }
}

/// The cells of `row` in the relation's column order; a column `row` lacks is `missing`.
fn decode(relation: &Relation, row: &RowData, missing: &Cell) -> Result<Vec<Cell>, String> {
    relation
        .columns
        .iter()
        .map(|column| match row.get(&column.name) {
            None => Ok(missing.clone()),
            Some(ColumnValue::Null) => Ok(Cell::Null),
            Some(ColumnValue::Text(raw) | ColumnValue::Binary(raw)) => {
                parse_text(column.format, column.ty, raw)
                    .map(Cell::Value)
                    .map_err(|reason| {
                        format!(
                            "column `{}` holds a value kyma cannot read as {}: {reason}",
                            column.name, column.ty
                        )
                    })
            }
        })
        .collect()
}

#[async_trait]
impl ChangeStream for PgChangeStream {
    async fn next(&mut self) -> Option<Result<SourceEvent, ConnectorError>> {
        loop {
            let message = match self.stream.next().await? {
                Ok(message) => message,
                Err(e) => return Some(Err(e)),
            };
            match message {
                ReplicationMessage::Idle { server_lsn } => {
                    return Some(Ok(SourceEvent::Idle {
                        position: Some(SourcePosition(format_lsn(server_lsn))),
                        lag_bytes: Some(0),
                    }));
                }
                ReplicationMessage::Change(event) => match self.event(*event).await {
                    Ok(Some(event)) => return Some(Ok(event)),
                    Ok(None) => continue,
                    Err(e) => return Some(Err(e)),
                },
            }
        }
    }

    fn ack(&mut self, position: &SourcePosition) {
        match parse_lsn(&position.0) {
            Ok(lsn) => self.stream.acknowledge(lsn),
            Err(e) => {
                tracing::error!(error = %e, "not acknowledging a position that is not an LSN")
            }
        }
    }
}

//! Change events → the sync seam's events.
//!
//! - Each change is a transaction of its own (`Begin`, its rows, `Commit` at its resume
//!   token), except the statements of a multi-document transaction, which share `lsid` and
//!   `txnNumber` and arrive together: they become one transaction, committed at the last
//!   one's token, so the transaction is visible at once. A transaction ends at the next
//!   event outside it or at a dry batch (the server sends a transaction's events from one
//!   oplog entry, so a dry batch means all of them came).
//! - Documents widen the collection's shape ([`super::super::schema::Shape::observe`]); a
//!   widened shape is sent as a `Relation` before the row. The shapes are shared with the
//!   change source, so the next discovery and copy know them.
//! - insert → insert; replace, and update with a full document → update with every column;
//!   update without one (the document was deleted before the lookup, or its post-image
//!   expired) → the fields the update description names, the rest `Unchanged`; a field
//!   that cannot be resolved without the document (a column holding a sub-document that
//!   changed inside, an array element) makes the collection copy again (`Resnapshot`).
//!   delete → delete by `_id`; drop, rename (both names) and dropDatabase → copy the
//!   collections again (exact whatever they held, also after a copy in `_id` ranges);
//!   invalidate → idle at its token and end, so the next stream starts after it.
//! - A dry batch with no transaction open is `Idle` at the post-batch resume token, so an
//!   idle source keeps its committed token fresh.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use async_trait::async_trait;
use mongodb::bson::{Bson, Document};

use super::deployment::ChangeFeed;
use super::position::MongoPosition;
use super::{Shapes, lock};
use crate::error::ConnectorError;
use crate::mongodb::schema::{FieldColumn, Shape};
use crate::mongodb::values::{kyma_value, value_at};
use crate::sync::{Cell, ChangeOp, ChangeStream, RowChange, SourceEvent, SourcePosition, TableId};

/// A running MongoDB change stream (see the module doc).
pub struct MongoChangeStream {
    feed: Box<dyn ChangeFeed>,
    shapes: Shapes,
    /// Tables whose columns this stream has announced.
    announced: BTreeMap<TableId, Arc<TableId>>,
    out: VecDeque<SourceEvent>,
    open: Option<OpenTxn>,
    ended: bool,
}

/// The multi-document transaction being read.
struct OpenTxn {
    key: Option<(Bson, i64)>,
    last: MongoPosition,
}

impl MongoChangeStream {
    /// The events of `feed`, for the tables in `shapes`.
    pub fn new(feed: Box<dyn ChangeFeed>, shapes: Shapes) -> Self {
        Self {
            feed,
            shapes,
            announced: BTreeMap::new(),
            out: VecDeque::new(),
            open: None,
            ended: false,
        }
    }

    /// Reads the feed until there is something to hand out.
    async fn fill(&mut self) -> Result<(), ConnectorError> {
        while self.out.is_empty() {
            match self.feed.next().await {
                Ok(Some(event)) => self.on_event(&event)?,
                Ok(None) => self.on_dry_batch()?,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn on_dry_batch(&mut self) -> Result<(), ConnectorError> {
        self.close_txn();
        let position = self
            .feed
            .resume_token()
            .map(|t| MongoPosition::of_token(&t).map(|p| p.to_source()))
            .transpose()?;
        self.out.push_back(SourceEvent::Idle {
            position,
            lag_bytes: None,
        });
        Ok(())
    }

    fn close_txn(&mut self) {
        if let Some(open) = self.open.take() {
            self.out.push_back(SourceEvent::Commit {
                position: open.last.to_source(),
            });
        }
    }

    fn on_event(&mut self, event: &Document) -> Result<(), ConnectorError> {
        let change = Change::read(event)?;
        let key = match (event.get("lsid"), event.get("txnNumber")) {
            (Some(lsid), Some(Bson::Int64(n))) => Some((lsid.clone(), *n)),
            _ => None,
        };
        if self
            .open
            .as_ref()
            .is_some_and(|open| open.key != key || key.is_none())
        {
            self.close_txn();
        }
        let effects = self.effects(&change, event)?;
        if change.op == "invalidate" {
            // The stream ends; the next one starts after this token.
            self.close_txn();
            self.out.push_back(SourceEvent::Idle {
                position: Some(change.position.to_source()),
                lag_bytes: None,
            });
            self.ended = true;
            return Ok(());
        }
        if effects.is_empty() && self.open.is_none() {
            self.out.push_back(SourceEvent::Idle {
                position: Some(change.position.to_source()),
                lag_bytes: None,
            });
            return Ok(());
        }
        if self.open.is_none() {
            self.out.push_back(SourceEvent::Begin {
                position: change.position.to_source(),
                committed_at_micros: change.committed_at_micros,
            });
        }
        self.out.extend(effects);
        self.open = Some(OpenTxn {
            key: key.clone(),
            last: change.position.clone(),
        });
        if key.is_none() {
            self.close_txn();
        }
        Ok(())
    }

    /// What one change does to the tables in scope.
    fn effects(
        &mut self,
        change: &Change,
        event: &Document,
    ) -> Result<Vec<SourceEvent>, ConnectorError> {
        let Some(table) = change.table.clone() else {
            return Ok(Vec::new());
        };
        let in_scope = |shapes: &Shapes, t: &TableId| lock(shapes).contains_key(t);
        Ok(match change.op.as_str() {
            "insert" | "replace" | "update" if in_scope(&self.shapes, &table) => {
                self.row(change, event, table)?
            }
            "delete" if in_scope(&self.shapes, &table) => {
                let shape = lock(&self.shapes).get(&table).cloned();
                let Some(shape) = shape else {
                    return Ok(Vec::new());
                };
                let mut cells = vec![Cell::Null; shape.columns().len()];
                cells[0] = key_cell(event)?;
                let mut out = self.announce(&table, &shape, false);
                out.push(SourceEvent::Row(RowChange {
                    table: self.table_ref(&table),
                    op: ChangeOp::Delete,
                    cells,
                    old: None,
                    key_order: id_order(event),
                }));
                out
            }
            "drop" if in_scope(&self.shapes, &table) => {
                resnapshot(vec![table], "the collection was dropped")
            }
            "dropDatabase" => {
                let tables = lock(&self.shapes)
                    .keys()
                    .filter(|t| t.schema == table.schema)
                    .cloned()
                    .collect();
                resnapshot(tables, "the database was dropped")
            }
            "rename" => {
                let to = namespace(event.get_document("to").ok());
                let tables = [Some(table), to]
                    .into_iter()
                    .flatten()
                    .filter(|t| in_scope(&self.shapes, t))
                    .collect();
                resnapshot(tables, "a collection was renamed from or to this name")
            }
            _ => Vec::new(),
        })
    }

    /// An insert, replace or update.
    fn row(
        &mut self,
        change: &Change,
        event: &Document,
        table: TableId,
    ) -> Result<Vec<SourceEvent>, ConnectorError> {
        let full = match event.get("fullDocument") {
            Some(Bson::Document(d)) => Some(d),
            _ => None,
        };
        let op = if change.op == "insert" {
            ChangeOp::Insert
        } else {
            ChangeOp::Update
        };
        let (widened, shape) = {
            let mut shapes = lock(&self.shapes);
            let Some(shape) = shapes.get_mut(&table) else {
                return Ok(Vec::new());
            };
            let widened = match (full, event.get_document("updateDescription")) {
                (Some(document), _) => shape.observe(document),
                (None, Ok(update)) => update
                    .get_document("updatedFields")
                    .is_ok_and(|fields| observe_fields(shape, fields)),
                (None, Err(_)) => false,
            };
            (widened, shape.clone())
        };
        let cells = match full {
            Some(document) => document_cells(document, shape.columns()),
            None => match delta_cells(event, shape.columns())? {
                Some(cells) => cells,
                None => {
                    return Ok(vec![SourceEvent::Resnapshot {
                        tables: vec![table],
                        reason: "an update came without its document and changed a field inside a dynamic column".into(),
                    }]);
                }
            },
        };
        let mut out = self.announce(&table, &shape, widened);
        out.push(SourceEvent::Row(RowChange {
            table: self.table_ref(&table),
            op,
            cells,
            old: None,
            key_order: id_order(event),
        }));
        Ok(out)
    }

    /// A `Relation` for `table` when this stream has not announced it or its shape widened.
    fn announce(&mut self, table: &TableId, shape: &Shape, widened: bool) -> Vec<SourceEvent> {
        if self.announced.contains_key(table) && !widened {
            return Vec::new();
        }
        self.announced
            .insert(table.clone(), Arc::new(table.clone()));
        vec![SourceEvent::Relation {
            table: table.clone(),
            columns: shape.source_columns(),
        }]
    }

    fn table_ref(&self, table: &TableId) -> Arc<TableId> {
        self.announced
            .get(table)
            .cloned()
            .unwrap_or_else(|| Arc::new(table.clone()))
    }
}

#[async_trait]
impl ChangeStream for MongoChangeStream {
    async fn next(&mut self) -> Option<Result<SourceEvent, ConnectorError>> {
        if self.out.is_empty() && self.ended {
            return None;
        }
        if let Err(e) = self.fill().await {
            self.ended = true;
            self.out.clear();
            return Some(Err(e));
        }
        self.out.pop_front().map(Ok)
    }

    fn ack(&mut self, _position: &SourcePosition) {
        // MongoDB keeps no per-reader state to release: the committed token is the cursor.
    }
}

/// The fields of a change event every kind has.
struct Change {
    op: String,
    table: Option<TableId>,
    position: MongoPosition,
    committed_at_micros: i64,
}

impl Change {
    fn read(event: &Document) -> Result<Self, ConnectorError> {
        let bad =
            |what: &str| ConnectorError::Source(format!("a change event without {what}: {event}"));
        let token = event
            .get_document("_id")
            .ok()
            .and_then(|id| id.get_str("_data").ok())
            .ok_or_else(|| bad("a resume token"))?;
        let mut position = MongoPosition::of_token(token)?;
        if let Ok(time) = event.get_timestamp("clusterTime") {
            position.time = (time.time, time.increment);
        }
        let committed_at_micros = match event.get_datetime("wallTime") {
            Ok(wall) => wall.timestamp_millis().saturating_mul(1000),
            Err(_) => i64::from(position.time.0) * 1_000_000,
        };
        Ok(Self {
            op: event
                .get_str("operationType")
                .map_err(|_| bad("an operationType"))?
                .to_owned(),
            table: namespace(event.get_document("ns").ok()),
            position,
            committed_at_micros,
        })
    }
}

/// Copying `tables` again (none: nothing). A collection dropped or renamed is copied again
/// rather than truncated: the copy is exact whatever it held, and also when it was copied in
/// `_id` ranges at several times.
fn resnapshot(tables: Vec<TableId>, reason: &str) -> Vec<SourceEvent> {
    if tables.is_empty() {
        return Vec::new();
    }
    vec![SourceEvent::Resnapshot {
        tables,
        reason: reason.into(),
    }]
}

/// The collection a change event's `ns` (or `to`) names; for `dropDatabase`, the database
/// with an empty collection.
fn namespace(ns: Option<&Document>) -> Option<TableId> {
    let ns = ns?;
    Some(TableId::new(
        ns.get_str("db").ok()?,
        ns.get_str("coll").unwrap_or_default(),
    ))
}

/// Where a change event's `_id` sorts ([`super::ranges::key_order`]).
fn id_order(event: &Document) -> Option<Vec<u8>> {
    let key = event.get_document("documentKey").ok()?;
    super::ranges::key_order(key.get("_id")?)
}

/// The `_id` cell of a change event.
fn key_cell(event: &Document) -> Result<Cell, ConnectorError> {
    let id = event
        .get_document("documentKey")
        .ok()
        .and_then(|k| k.get("_id"))
        .ok_or_else(|| {
            ConnectorError::Source(format!("a change event without documentKey._id: {event}"))
        })?;
    Ok(cell(Some(id), &crate::mongodb::schema::Kind::Key))
}

fn cell(value: Option<&Bson>, kind: &crate::mongodb::schema::Kind) -> Cell {
    value
        .and_then(|v| kyma_value(v, *kind))
        .map_or(Cell::Null, Cell::Value)
}

/// Every column of a whole document.
fn document_cells(document: &Document, columns: &[FieldColumn]) -> Vec<Cell> {
    columns
        .iter()
        .map(|c| cell(value_at(document, &c.path), &c.kind))
        .collect()
}

/// Widens `shape` with the values of an update description's `updatedFields` (dotted
/// keys); `true` when it changed.
fn observe_fields(shape: &mut Shape, fields: &Document) -> bool {
    let mut nested = Document::new();
    for (key, value) in fields {
        let steps: Vec<&str> = key.split('.').collect();
        if steps.iter().any(|s| s.parse::<usize>().is_ok()) {
            continue;
        }
        insert_path(&mut nested, &steps, value.clone());
    }
    shape.observe(&nested)
}

fn insert_path(document: &mut Document, steps: &[&str], value: Bson) {
    match steps {
        [] => {}
        [last] => {
            document.insert(*last, value);
        }
        [first, rest @ ..] => {
            let entry = document
                .entry((*first).to_owned())
                .or_insert_with(|| Bson::Document(Document::new()));
            if let Bson::Document(inner) = entry {
                insert_path(inner, rest, value);
            }
        }
    }
}

/// The cells of an update without its document: the fields the description names, the rest
/// `Unchanged`; `None` when a column's new value cannot be known without the document.
fn delta_cells(
    event: &Document,
    columns: &[FieldColumn],
) -> Result<Option<Vec<Cell>>, ConnectorError> {
    let update = event.get_document("updateDescription").map_err(|_| {
        ConnectorError::Source(format!(
            "an update event with neither a document nor a description: {event}"
        ))
    })?;
    let updated = update.get_document("updatedFields").ok();
    let removed: Vec<&str> = update
        .get_array("removedFields")
        .map(|r| r.iter().filter_map(Bson::as_str).collect())
        .unwrap_or_default();
    let mut cells = vec![Cell::Unchanged; columns.len()];
    cells[0] = key_cell(event)?;
    let changes = updated
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.as_str(), Some(v)))
        .chain(removed.iter().map(|k| (*k, None)));
    for (key, value) in changes {
        let steps: Vec<String> = key.split('.').map(str::to_owned).collect();
        for (index, column) in columns.iter().enumerate().skip(1) {
            if column.path.starts_with(&steps) {
                let rest = &column.path[steps.len()..];
                let at = match (value, rest) {
                    (Some(v), []) => Some(v),
                    (Some(Bson::Document(d)), rest) => value_at(d, rest),
                    _ => None,
                };
                cells[index] = cell(at, &column.kind);
            } else if steps.starts_with(&column.path) {
                return Ok(None);
            }
        }
    }
    Ok(Some(cells))
}

//! A consistent copy of collections: a snapshot read session at one cluster time, reading
//! each collection in `_id` order.
//!
//! - **Widening.** The copy reads each collection's columns as discovered. A document with a
//!   field the sample missed (or a value that widens a column) cannot be copied into them
//!   without loss, so the copy reads on only to learn every such field, widens the shared
//!   shape, and fails with a transient error: the pipeline discovers again (now with the
//!   widened shape) and copies again, at most once more for what this pass saw.
//! - **Past the snapshot history.** When the session's time falls out of the server's
//!   snapshot history (error 239) after key `k`, the copy goes on after `k` in `_id` ranges,
//!   each read at its own time ([`super::ranges`]), and the collection's copy stands at the
//!   ranges ([`Snapshot::since`]) instead of the snapshot's time.

use arrow::array::RecordBatch;
use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use mongodb::bson::{Bson, Document};

use super::deployment::{Deployment, ReadError, SnapshotRead};
use super::position::{ClusterTime, MongoPosition};
use super::ranges::{Bracket, RANGE_DOCUMENTS, RangeMark, key_order};
use super::{Shapes, lock};
use crate::error::ConnectorError;
use crate::mongodb::schema::FieldColumn;
use crate::mongodb::values::DocumentBatcher;
use crate::sync::{Snapshot, SourcePosition, SourceTable, TableId};

/// A snapshot of the deployment at one cluster time.
pub struct MongoSnapshot {
    read: Box<dyn SnapshotRead>,
    position: MongoPosition,
    shown: SourcePosition,
    shapes: Shapes,
    deployment: Arc<dyn Deployment>,
    /// Collections copied in ranges, and where their copies stand.
    ranged: BTreeMap<TableId, SourcePosition>,
}

impl MongoSnapshot {
    /// The snapshot `read` of `deployment`, at `position` (its cluster time and the
    /// stream's resume token).
    pub fn new(
        read: Box<dyn SnapshotRead>,
        position: &MongoPosition,
        shapes: Shapes,
        deployment: Arc<dyn Deployment>,
    ) -> Self {
        Self {
            read,
            shown: position.to_source(),
            position: position.clone(),
            shapes,
            deployment,
            ranged: BTreeMap::new(),
        }
    }

    /// The columns `table` was discovered with, as the shape reads them.
    fn columns(&self, table: &SourceTable) -> Result<Vec<FieldColumn>, ConnectorError> {
        let shapes = lock(&self.shapes);
        let shape = shapes
            .get(&table.id)
            .ok_or_else(|| ConnectorError::Source(format!("{} was not discovered", table.id)))?;
        table
            .columns
            .iter()
            .map(|c| {
                shape
                    .column(&c.name)
                    .map(|f| FieldColumn {
                        kind: kind_for(f, c.ty),
                        ..f.clone()
                    })
                    .ok_or_else(|| {
                        ConnectorError::Source(format!("{} has no column `{}`", table.id, c.name))
                    })
            })
            .collect()
    }
}

/// The kind that reads `column` as kyma type `ty` (the discovered type; the shape may have
/// widened since, which the copy notices).
fn kind_for(column: &FieldColumn, ty: kyma_catalog::KymaType) -> crate::mongodb::schema::Kind {
    if column.kind.kyma_type() == ty {
        column.kind
    } else {
        crate::mongodb::schema::Kind::Dynamic
    }
}

#[async_trait]
impl Snapshot for MongoSnapshot {
    fn position(&self) -> &SourcePosition {
        &self.shown
    }

    fn since(&self, table: &TableId) -> SourcePosition {
        self.ranged.get(table).unwrap_or(&self.shown).clone()
    }

    async fn copy<'a>(
        &'a mut self,
        table: &'a SourceTable,
        batch_rows: usize,
    ) -> Result<BoxStream<'a, Result<RecordBatch, ConnectorError>>, ConnectorError> {
        let batcher = DocumentBatcher::for_columns(self.columns(table)?, batch_rows);
        let copy = Copy {
            batcher,
            shapes: self.shapes.clone(),
            table: &table.id,
            widened: false,
            documents: Some(self.read.documents(&table.id).await?),
            last_id: None,
            session: (self.position.time, self.position.token.clone()),
            ranges: None,
            deployment: self.deployment.clone(),
            ranged: &mut self.ranged,
        };
        Ok(futures::stream::try_unfold(copy, Copy::next_batch).boxed())
    }

    async fn close(self: Box<Self>) -> Result<(), ConnectorError> {
        Ok(())
    }
}

/// One collection's copy in progress.
struct Copy<'a> {
    /// The snapshot session's documents, until it ends or gives out.
    documents: Option<BoxStream<'a, Result<Document, ReadError>>>,
    batcher: DocumentBatcher,
    shapes: Shapes,
    table: &'a TableId,
    /// A document did not fit the columns: read on only to widen the shape.
    widened: bool,
    /// The `_id` of the last document read.
    last_id: Option<Bson>,
    /// The snapshot's time and resume token.
    session: (ClusterTime, String),
    /// Once the session gave out: the copy in ranges.
    ranges: Option<Ranges>,
    deployment: Arc<dyn Deployment>,
    ranged: &'a mut BTreeMap<TableId, SourcePosition>,
}

/// The part of a copy read in `_id` ranges.
struct Ranges {
    /// The bracket being read, and what comes after it; `None` once all were.
    bracket: Option<Bracket>,
    /// The last key read in the bracket.
    after: Option<Bson>,
    /// Read, not yet copied.
    pending: VecDeque<Document>,
    /// The ranges read so far: `(upper key, time)`.
    read: Vec<(Option<Vec<u8>>, ClusterTime)>,
}

impl<'a> Copy<'a> {
    /// The next batch, `None` at the end; fails at the end when the shape widened.
    async fn next_batch(mut self) -> Result<Option<(RecordBatch, Self)>, ConnectorError> {
        while let Some(document) = self.next_document().await? {
            self.last_id = document.get("_id").cloned();
            let widened = lock(&self.shapes)
                .get_mut(self.table)
                .is_some_and(|shape| shape.observe(&document));
            self.widened |= widened;
            if self.widened {
                continue;
            }
            self.batcher.push(&document)?;
            if self.batcher.is_full() {
                let batch = self.batcher.finish()?;
                return Ok(Some((batch, self)));
            }
        }
        if self.widened {
            return Err(ConnectorError::Changed(format!(
                "{} holds fields or types its sample missed; copying it again with them",
                self.table
            )));
        }
        if let Some(ranges) = self.ranges.take() {
            let mark = RangeMark {
                token: self.session.1.clone(),
                ranges: ranges.read,
            };
            self.ranged.insert(self.table.clone(), mark.to_source());
        }
        if self.batcher.rows() > 0 {
            let batch = self.batcher.finish()?;
            return Ok(Some((batch, self)));
        }
        Ok(None)
    }

    /// The next document: from the session while it lasts, then from ranges.
    async fn next_document(&mut self) -> Result<Option<Document>, ConnectorError> {
        if let Some(documents) = self.documents.as_mut() {
            match documents.try_next().await {
                Ok(Some(document)) => return Ok(Some(document)),
                Ok(None) => {
                    self.documents = None;
                    return Ok(None);
                }
                Err(ReadError::TooOld(why)) => {
                    tracing::warn!(table = %self.table, %why, "the snapshot session gave out; copying the rest in _id ranges");
                    self.documents = None;
                    self.ranges = Some(self.ranges_after_session()?);
                }
                Err(ReadError::Other(e)) => return Err(e),
            }
        }
        let Some(mut ranges) = self.ranges.take() else {
            return Ok(None);
        };
        let next = next_ranged(self.deployment.as_ref(), self.table, &mut ranges).await;
        self.ranges = Some(ranges);
        next
    }

    /// Where ranges start: after the last key the session read, which it read at its time.
    fn ranges_after_session(&self) -> Result<Ranges, ConnectorError> {
        let Some(last) = &self.last_id else {
            return Ok(Ranges {
                bracket: Some(Bracket::ALL[0]),
                after: None,
                pending: VecDeque::new(),
                read: Vec::new(),
            });
        };
        let (Some(bracket), Some(key)) = (Bracket::of(last), key_order(last)) else {
            return Err(unordered(self.table, last));
        };
        Ok(Ranges {
            bracket: Some(bracket),
            after: Some(last.clone()),
            pending: VecDeque::new(),
            read: vec![(Some(key), self.session.0)],
        })
    }
}

/// The next document of `table` read in ranges.
async fn next_ranged(
    deployment: &dyn Deployment,
    table: &TableId,
    ranges: &mut Ranges,
) -> Result<Option<Document>, ConnectorError> {
    while ranges.pending.is_empty() {
        let Some(bracket) = ranges.bracket else {
            return Ok(None);
        };
        let chunk = deployment
            .read_range(table, bracket, ranges.after.as_ref(), RANGE_DOCUMENTS)
            .await?;
        let complete = chunk.documents.len() < RANGE_DOCUMENTS;
        if let Some(last) = chunk.documents.last().and_then(|d| d.get("_id")) {
            let key = key_order(last).ok_or_else(|| unordered(table, last))?;
            ranges.read.push((Some(key), chunk.time));
            ranges.after = Some(last.clone());
        }
        ranges.pending.extend(chunk.documents);
        if complete {
            end_bracket(deployment, table, ranges, bracket, chunk.time).await?;
        }
    }
    Ok(ranges.pending.pop_front())
}

/// Closes `bracket`, whose last chunk saw nothing more at `time`, and moves on.
async fn end_bracket(
    deployment: &dyn Deployment,
    table: &TableId,
    ranges: &mut Ranges,
    bracket: Bracket,
    time: ClusterTime,
) -> Result<(), ConnectorError> {
    ranges.read.push((Some(bracket.end()), time));
    ranges.after = None;
    ranges.bracket = Bracket::ALL.into_iter().find(|b| *b > bracket);
    if ranges.bracket.is_none() {
        if let Some(other) = deployment.other_id_type(table).await? {
            return Err(ConnectorError::Source(format!(
                "{} outlived the server's snapshot history and holds an `_id` of type {other}, which a copy in _id ranges cannot order (integers, strings and ObjectIds only); raise minSnapshotHistoryWindowInSeconds so one snapshot holds the copy, then resync",
                table
            )));
        }
        ranges.read.push((None, time));
    }
    Ok(())
}

/// A collection whose `_id` `id` a ranged copy cannot order.
fn unordered(table: &TableId, id: &Bson) -> ConnectorError {
    ConnectorError::Source(format!(
        "{table} outlived the server's snapshot history at an `_id` of type {:?}, which a copy in _id ranges cannot order (integers, strings and ObjectIds only); raise minSnapshotHistoryWindowInSeconds so one snapshot holds the copy, then resync",
        id.element_type()
    ))
}

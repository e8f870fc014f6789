//! A consistent copy of collections: a snapshot read session at one cluster time.
//!
//! The copy reads each collection's columns as discovered. A document with a field the
//! sample missed (or a value that widens a column) cannot be copied into them without loss,
//! so the copy reads on only to learn every such field, widens the shared shape, and fails
//! with a transient error: the pipeline discovers again (now with the widened shape) and
//! copies again, at most once more for what this pass saw.

use arrow::array::RecordBatch;
use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

use super::deployment::SnapshotRead;
use super::position::MongoPosition;
use super::{Shapes, lock};
use crate::error::ConnectorError;
use crate::mongodb::schema::FieldColumn;
use crate::mongodb::values::DocumentBatcher;
use crate::sync::{Snapshot, SourcePosition, SourceTable};

/// A snapshot of the deployment at one cluster time.
pub struct MongoSnapshot {
    read: Box<dyn SnapshotRead>,
    position: SourcePosition,
    shapes: Shapes,
}

impl MongoSnapshot {
    /// The snapshot `read`, at `position` (its cluster time and the stream's resume token).
    pub fn new(read: Box<dyn SnapshotRead>, position: &MongoPosition, shapes: Shapes) -> Self {
        Self {
            read,
            position: position.to_source(),
            shapes,
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
        &self.position
    }

    async fn copy<'a>(
        &'a mut self,
        table: &'a SourceTable,
        batch_rows: usize,
    ) -> Result<BoxStream<'a, Result<RecordBatch, ConnectorError>>, ConnectorError> {
        let copy = Copy {
            batcher: DocumentBatcher::for_columns(self.columns(table)?, batch_rows),
            shapes: self.shapes.clone(),
            table: &table.id,
            widened: false,
            documents: self.read.documents(&table.id).await?,
        };
        Ok(futures::stream::try_unfold(copy, Copy::next_batch).boxed())
    }

    async fn close(self: Box<Self>) -> Result<(), ConnectorError> {
        Ok(())
    }
}

/// One collection's copy in progress.
struct Copy<'a> {
    documents: BoxStream<'a, Result<mongodb::bson::Document, ConnectorError>>,
    batcher: DocumentBatcher,
    shapes: Shapes,
    table: &'a crate::sync::TableId,
    /// A document did not fit the columns: read on only to widen the shape.
    widened: bool,
}

impl<'a> Copy<'a> {
    /// The next batch, `None` at the end; fails at the end when the shape widened.
    async fn next_batch(mut self) -> Result<Option<(RecordBatch, Self)>, ConnectorError> {
        while let Some(document) = self.documents.try_next().await? {
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
        if self.batcher.rows() > 0 {
            let batch = self.batcher.finish()?;
            return Ok(Some((batch, self)));
        }
        Ok(None)
    }
}

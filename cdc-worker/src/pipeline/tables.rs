//! The synced tables of a run: each source table with its kyma table, its durable sync state
//! and, while streaming, the shape its rows are built in.

use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryBuilder, RecordBatch};
use arrow::datatypes::{Field, Schema};
use kyma_catalog::{
    Catalog, CatalogError, Column, KymaType, TableOrigin, TableRef, TableSchema, TableState,
    TableSyncState,
};
use kyma_connectors::sync::{SourceColumn, SourceTable};
use kyma_table::synced::{self, SyncedRowsBuilder};
use kyma_table::types::arrow_type;
use kyma_table::{KymaValue, KymaValueRef};
use uuid::Uuid;

use super::unchanged::HeldUpdates;
use crate::error::SyncError;

/// One source table being synced.
#[derive(Debug)]
pub(crate) struct TableRun {
    /// Its kyma table.
    pub(crate) table: TableRef,
    /// The kyma table's id (its files live under it).
    pub(crate) table_id: Uuid,
    /// The source table as discovered.
    pub(crate) source: SourceTable,
    /// Where the discovered columns land in the kyma table (what a copy writes).
    pub(crate) columns: ColumnMap,
    /// The durable state, as last committed (or about to be).
    pub(crate) state: TableSyncState,
    /// Resync requests made for it so far.
    pub(crate) requested: u64,
    /// How its streamed rows are built (from the stream's last description of it).
    pub(crate) shape: Option<Shape>,
}

impl TableRun {
    /// The name the status and resync requests use.
    pub(crate) fn key(&self) -> String {
        self.source.id.key()
    }
}

/// How a table's streamed rows are built: the column map of its last description, its key
/// columns (indices into it), and the rows collected and held so far.
#[derive(Debug)]
pub(crate) struct Shape {
    pub(crate) map: ColumnMap,
    pub(crate) key: Vec<usize>,
    pub(crate) rows: SyncedRowsBuilder,
    pub(crate) held: HeldUpdates,
}

impl Shape {
    /// The shape of rows of `map`, keyed by `key` (column names).
    pub(crate) fn new(
        map: ColumnMap,
        key: &[String],
        source: &[SourceColumn],
    ) -> Result<Self, String> {
        let key = key_indices(key, source)?;
        let columns = map.targets.clone();
        Ok(Self {
            rows: SyncedRowsBuilder::new(columns.clone()).map_err(|e| e.to_string())?,
            held: HeldUpdates::new(columns).map_err(|e| e.to_string())?,
            map,
            key,
        })
    }
}

/// The positions of the `key` columns among `columns`.
pub(crate) fn key_indices(key: &[String], columns: &[SourceColumn]) -> Result<Vec<usize>, String> {
    key.iter()
        .map(|k| {
            columns
                .iter()
                .position(|c| &c.name == k)
                .ok_or_else(|| format!("its key column `{k}` is not among its columns"))
        })
        .collect()
}

/// Where each source column lands in the kyma table: the column of its name, or, when the
/// table holds that name with another type (the column changed type at the source, and a
/// schema never retypes), `<name>_dynamic`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ColumnMap {
    /// Per source column, the table column it fills.
    pub(crate) targets: Vec<Column>,
}

/// A [`ColumnMap`] with what the table needs for it.
#[derive(Debug)]
pub(crate) struct Mapping {
    pub(crate) map: ColumnMap,
    /// Columns the table must widen with.
    pub(crate) new_columns: Vec<Column>,
    /// What the status should say about it.
    pub(crate) warnings: Vec<String>,
}

impl ColumnMap {
    /// Maps `columns` onto a table of `schema`.
    pub(crate) fn onto(schema: &TableSchema, columns: &[SourceColumn]) -> Mapping {
        let mut targets = Vec::with_capacity(columns.len());
        let mut new_columns = Vec::new();
        let mut warnings = Vec::new();
        for column in columns {
            warnings.extend(column.warning.clone());
            let target = match schema.column(&column.name) {
                Some(existing) if existing.ty == column.ty => Column::new(&column.name, column.ty),
                Some(existing) => {
                    let fallback =
                        Column::new(format!("{}_dynamic", column.name), KymaType::Dynamic);
                    warnings.push(format!(
                        "column `{}` changed type at the source to kyma {}, which cannot widen {}; its new values go to the dynamic column `{}`",
                        column.name, column.ty, existing.ty, fallback.name
                    ));
                    fallback
                }
                None => Column::new(&column.name, column.ty),
            };
            if schema.column(&target.name).is_none() {
                new_columns.push(target.clone());
            }
            targets.push(target);
        }
        Mapping {
            map: Self { targets },
            new_columns,
            warnings,
        }
    }

    /// Source column `index`'s value as its table column holds it.
    pub(crate) fn convert(&self, index: usize, value: KymaValue) -> KymaValue {
        match self.targets.get(index) {
            Some(target)
                if target.ty == KymaType::Dynamic && !matches!(value, KymaValue::Dynamic(_)) =>
            {
                KymaValue::Dynamic(value.as_ref().to_dynamic())
            }
            _ => value,
        }
    }

    /// A batch of source rows (the source's columns) as table columns.
    pub(crate) fn apply(&self, batch: &RecordBatch) -> Result<RecordBatch, SyncError> {
        let mut fields = Vec::with_capacity(self.targets.len());
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.targets.len());
        for (target, column) in self.targets.iter().zip(batch.columns()) {
            let array = if arrow_type(target.ty) == *column.data_type() {
                column.clone()
            } else {
                to_dynamic(column.as_ref())
            };
            fields.push(Field::new(&target.name, arrow_type(target.ty), true));
            columns.push(array);
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
            .map_err(|e| SyncError::Definite(format!("mapping a snapshot's columns: {e}")))
    }
}

/// Every value of `array` (a kyma-typed column) as a `dynamic` value.
fn to_dynamic(array: &dyn arrow::array::Array) -> ArrayRef {
    let mut out = BinaryBuilder::with_capacity(array.len(), array.len() * 8);
    for row in 0..array.len() {
        match KymaValueRef::at(array, row) {
            Some(value) => out.append_value(value.to_dynamic()),
            None => out.append_null(),
        }
    }
    Arc::new(out.finish())
}

/// Creates the kyma table of `source` (its columns, then the system columns), or widens the
/// `existing` one to hold them; returns its state and the column map.
pub(crate) async fn ensure_table(
    catalog: &Catalog,
    connector: &str,
    table: &TableRef,
    source: &SourceTable,
    existing: Option<TableState>,
) -> Result<(TableState, Mapping), SyncError> {
    let state = match existing {
        Some(state) => state,
        None => {
            let columns = source
                .columns
                .iter()
                .map(|c| Column::new(&c.name, c.ty))
                .chain(synced::system_columns())
                .collect();
            let origin = TableOrigin::Synced {
                connector: connector.to_owned(),
            };
            match catalog.create_table(table, origin, columns).await {
                Ok(state) => state,
                Err(CatalogError::AlreadyExists(_)) => catalog.table(table).await?,
                Err(e) => return Err(e.into()),
            }
        }
    };
    let mapping = ColumnMap::onto(&state.schema.value, &source.columns);
    if !mapping.new_columns.is_empty() {
        catalog.widen_schema(table, &mapping.new_columns).await?;
    }
    Ok((state, mapping))
}

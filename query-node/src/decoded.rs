//! Scans of extents from their decoded columns ([`kyma_table::columns`]) instead of their
//! Parquet: the scan a warm table's reads go through.
//!
//! # Which extents
//!
//! [`KymaTable`](crate::provider::KymaTable) sends an extent here when the node holds every
//! column the query reads of it; when the scan reads all of it anyway — no filter to prune
//! row groups or pages with, no LIMIT to stop early — so decoding it whole costs what the
//! Parquet scan would, and leaves its columns held for the next query; and when a filtered or
//! limited scan read it before ([`kyma_table::columns`], "When to decode a whole extent").
//! The other extents go to the Parquet scan with its pruning; a filter is applied above
//! either scan (every filter is Inexact).
//!
//! # Deleted rows and filters
//!
//! The columns are held whole; the snapshot's deleted rows (its row selection of the extent)
//! and the scan's filter are applied here, batch by batch, in one pass: a batch that keeps
//! all its rows is a zero-copy slice of the held arrays. The filter is also applied above
//! the scan (it is Inexact to DataFusion, as for the Parquet scan); there every row passes
//! and no batch is copied again.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, RecordBatchOptions};
use arrow::buffer::BooleanBuffer;
use arrow::compute::{filter_record_batch, prep_null_mask_filter};
use arrow::datatypes::{FieldRef, SchemaRef};
use datafusion::common::cast::as_boolean_array;
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, Statistics};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::parquet::arrow::arrow_reader::RowSelection;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use futures::{StreamExt, TryStreamExt, stream};
use kyma_table::columns::extent_columns;
use kyma_table::{ExtentEntry, ExtentStore, Manifest};

use crate::provider::to_df;

/// Extents named in a plan's default display (EXPLAIN VERBOSE names all).
const DISPLAYED_EXTENTS: usize = 8;

/// Reads extents of one manifest from their decoded columns (see the module doc).
#[derive(Debug)]
pub struct DecodedExtentsExec {
    store: ExtentStore,
    manifest: Arc<Manifest>,
    /// Per output partition, the indexes of its extents in the manifest.
    partitions: Vec<Vec<usize>>,
    /// The columns read (the scan's projection of the table).
    fields: Vec<FieldRef>,
    schema: SchemaRef,
    /// The rows to skip per extent path, when the scan skips deleted rows.
    deleted: Option<Arc<BTreeMap<String, RowSelection>>>,
    /// The scan's filter, over `schema`'s columns.
    predicate: Option<Arc<dyn PhysicalExpr>>,
    properties: Arc<PlanProperties>,
}

impl DecodedExtentsExec {
    /// A scan of `partitions` (indexes into `manifest`'s extents) producing `schema`, every
    /// stored row except those `deleted` names and those `predicate` (over `schema`) rejects.
    pub fn new(
        store: ExtentStore,
        manifest: Arc<Manifest>,
        partitions: Vec<Vec<usize>>,
        schema: SchemaRef,
        deleted: Option<Arc<BTreeMap<String, RowSelection>>>,
        predicate: Option<Arc<dyn PhysicalExpr>>,
    ) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(partitions.len()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            store,
            manifest,
            partitions,
            fields: schema.fields().iter().cloned().collect(),
            schema,
            deleted,
            predicate,
            properties: Arc::new(properties),
        }
    }

    /// The extents of `partition`, or of every partition.
    fn extents(&self, partition: Option<usize>) -> impl Iterator<Item = &ExtentEntry> {
        let chosen: Vec<&Vec<usize>> = match partition {
            Some(p) => self.partitions.get(p).into_iter().collect(),
            None => self.partitions.iter().collect(),
        };
        chosen
            .into_iter()
            .flatten()
            .filter_map(|i| self.manifest.extents.get(*i))
    }

    /// The rows `extent` gives: all, or those not deleted.
    fn rows_of(&self, extent: &ExtentEntry) -> u64 {
        match self.deleted {
            Some(_) => extent.live_rows(),
            None => extent.rows,
        }
    }
}

impl DisplayAs for DecodedExtentsExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.fields.iter().map(|f| f.name().as_str()).collect();
        let shown = match t {
            DisplayFormatType::Verbose => usize::MAX,
            _ => DISPLAYED_EXTENTS,
        };
        let paths: Vec<&str> = self.extents(None).map(|e| e.path.as_str()).collect();
        let more = match paths.len().saturating_sub(shown) {
            0 => String::new(),
            hidden => format!(", …{hidden} more"),
        };
        write!(
            f,
            "DecodedExtentsExec: extents=[{}{more}], columns=[{}], deleted_rows_skipped={}",
            paths[..paths.len().min(shown)].join(", "),
            names.join(", "),
            self.deleted.is_some()
        )?;
        match &self.predicate {
            Some(predicate) => write!(f, ", predicate={predicate}"),
            None => Ok(()),
        }
    }
}

impl ExecutionPlan for DecodedExtentsExec {
    fn name(&self) -> &str {
        "DecodedExtentsExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn partition_statistics(&self, partition: Option<usize>) -> Result<Arc<Statistics>> {
        let rows: u64 = self.extents(partition).map(|e| self.rows_of(e)).sum();
        let rows = usize::try_from(rows).unwrap_or(usize::MAX);
        // The predicate drops rows: then the count is only an upper bound.
        let rows = match self.predicate {
            None => Precision::Exact(rows),
            Some(_) => Precision::Inexact(rows),
        };
        Ok(Arc::new(
            Statistics::new_unknown(&self.schema).with_num_rows(rows),
        ))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let batch_rows = context.session_config().batch_size().max(1);
        let extents: Vec<ExtentEntry> = self.extents(Some(partition)).cloned().collect();
        let (store, fields, schema, deleted, predicate) = (
            self.store.clone(),
            self.fields.clone(),
            self.schema.clone(),
            self.deleted.clone(),
            self.predicate.clone(),
        );
        let batches = stream::iter(extents)
            .then(move |extent| {
                let (store, fields, schema, predicate) = (
                    store.clone(),
                    fields.clone(),
                    schema.clone(),
                    predicate.clone(),
                );
                let skipped = deleted.as_ref().and_then(|d| d.get(&extent.path)).cloned();
                async move {
                    let columns = extent_columns(&store, &extent, &fields)
                        .await
                        .map_err(to_df)?;
                    let rows = usize::try_from(extent.rows).unwrap_or(usize::MAX);
                    Ok::<_, DataFusionError>(stream::iter(ExtentBatches {
                        schema,
                        columns,
                        kept: skipped.map(|s| kept_rows(&s, rows)),
                        predicate,
                        rows,
                        next: 0,
                        batch_rows,
                    }))
                }
            })
            .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            batches.boxed(),
        )))
    }
}

/// The rows a selection keeps, as a bitmap of `rows` bits (rows past its end are kept).
fn kept_rows(selection: &RowSelection, rows: usize) -> BooleanBuffer {
    let mut kept = arrow::array::BooleanBufferBuilder::new(rows);
    for run in selection.iter() {
        kept.append_n(run.row_count, !run.skip);
    }
    if kept.len() < rows {
        kept.append_n(rows - kept.len(), true);
    }
    kept.finish().slice(0, rows)
}

/// One extent's rows in batches of at most `batch_rows`, deleted rows and rows the predicate
/// rejects dropped.
struct ExtentBatches {
    schema: SchemaRef,
    columns: Vec<ArrayRef>,
    kept: Option<BooleanBuffer>,
    predicate: Option<Arc<dyn PhysicalExpr>>,
    rows: usize,
    next: usize,
    batch_rows: usize,
}

impl ExtentBatches {
    /// The batch of `len` rows from `start`, all its rows.
    fn slice(&self, start: usize, len: usize) -> Result<RecordBatch> {
        let columns = self.columns.iter().map(|c| c.slice(start, len)).collect();
        let options = RecordBatchOptions::new().with_row_count(Some(len));
        Ok(RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &options,
        )?)
    }

    /// The batch of `len` rows from `start`, without the rows dropped; `None` when none is
    /// left.
    fn batch(&self, start: usize, len: usize) -> Result<Option<RecordBatch>> {
        let mut kept = self.kept.as_ref().map(|k| k.slice(start, len));
        if kept.as_ref().is_some_and(|k| k.count_set_bits() == 0) {
            return Ok(None);
        }
        let batch = self.slice(start, len)?;
        if let Some(predicate) = &self.predicate {
            let matched = predicate.evaluate(&batch)?.into_array(len)?;
            let matched = as_boolean_array(&matched)?;
            let matched = match matched.nulls() {
                Some(_) => prep_null_mask_filter(matched).values().clone(),
                None => matched.values().clone(),
            };
            kept = Some(match kept {
                Some(kept) => &kept & &matched,
                None => matched,
            });
        }
        match kept.map(|k| (k.count_set_bits(), k)) {
            None => Ok(Some(batch)),
            Some((0, _)) => Ok(None),
            Some((count, _)) if count == len => Ok(Some(batch)),
            Some((_, kept)) => Ok(Some(filter_record_batch(
                &batch,
                &BooleanArray::new(kept, None),
            )?)),
        }
    }
}

impl Iterator for ExtentBatches {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.next < self.rows {
            let (start, len) = (self.next, self.batch_rows.min(self.rows - self.next));
            self.next += len;
            match self.batch(start, len) {
                Ok(None) => continue,
                Ok(Some(batch)) => return Some(Ok(batch)),
                Err(e) => return Some(Err(e)),
            }
        }
        None
    }
}

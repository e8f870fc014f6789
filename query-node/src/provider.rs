//! Catalogs of kyma-stored tables in DataFusion: `kyma` and each syncing connector's, with
//! schemas and tables from the [`CatalogView`]; a `TableProvider` that reads one consistent
//! snapshot of a table's extents (all of them, or a synced table's compacted base or delta
//! extents: [`Extents`]); and the sink that INSERT writes through. Synced tables read by name
//! go through [`SyncedTable`] (their current state), which scans with [`KymaTable`].
//!
//! # Pushdown
//!
//! Every filter is accepted as **Inexact**: the scan uses it to skip whole extents from the
//! manifest's min/max/null statistics (no file is opened for a skipped extent) and hands it to
//! the Parquet reader for row-group and page pruning; DataFusion still applies the filter to
//! what is read. Projection and LIMIT go to the Parquet scan. Planning reads only the view
//! (memory): no catalog or storage round trip.
//!
//! # Promoted columns
//!
//! A column promoted from a dynamic path holds new values only; older rows keep theirs in the
//! dynamic column. Such a table is read through a view that projects
//! `coalesce(column, dynamic_<type>(source, path...))`, so readers see the union.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, BooleanArray, RecordBatch, UInt64Array};
use arrow::datatypes::{DataType, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, SchemaProvider, Session, TableProvider};
use datafusion::common::pruning::PruningStatistics;
use datafusion::common::stats::Precision;
use datafusion::common::{
    Column as DfColumn, DFSchema, DataFusionError, Result, ScalarValue, Statistics, not_impl_err,
    plan_err,
};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{
    FileGroup, FileScanConfigBuilder, ParquetFileReaderFactory, ParquetSource,
    parquet::ParquetRowSelection,
};
use datafusion::datasource::sink::{DataSink, DataSinkExec};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::{ViewTable, provider_as_source};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{
    Expr, LogicalPlanBuilder, TableProviderFilterPushDown, TableType, col, lit,
};
use datafusion::parquet::arrow::arrow_reader::RowSelection;
use datafusion::parquet::arrow::async_reader::AsyncFileReader;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::pruning::PruningPredicateBuilder;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan};
use futures::StreamExt;
use kyma_catalog::{Catalog, TableOrigin, TableRef};
use kyma_table::synced::may_hold_tombstones;
use kyma_table::types::{UTC, arrow_schema};
use kyma_table::{
    ExtentEntry, ExtentReader, ExtentStore, Manifest, StatValue, TableError, TableWriter,
    WriteOptions,
};

use crate::decoded::DecodedExtentsExec;
use crate::dynamic_sql::DynamicFunctions;
use crate::queries::{SYSTEM_SCHEMA, SystemSchema};
use crate::synced::SyncedTable;
use crate::view::{CatalogView, TableEntry};

/// The catalog native tables live in.
pub const KYMA_CATALOG: &str = "kyma";
/// The schema a table goes to when none is named.
pub const DEFAULT_SCHEMA: &str = "default";
/// What a value of a variable-width type (text, binary, nested) is taken to occupy decoded,
/// in bytes, when judging whether an extent's column fits the column cache.
const VARIABLE_WIDTH_ESTIMATE: usize = 32;
/// How long a write waits for this node's view to show its commit.
const READ_YOUR_WRITES_TIMEOUT: Duration = Duration::from_secs(30);

/// What every table provider of a node shares.
#[derive(Debug)]
pub struct NodeTables {
    /// The catalog.
    pub catalog: Catalog,
    /// Extent storage.
    pub store: ExtentStore,
    /// The watched view of the catalog.
    pub view: CatalogView,
    /// The URL extents are registered under in DataFusion's object store registry.
    pub store_url: ObjectStoreUrl,
    /// The dynamic functions (promoted columns read through them).
    pub functions: DynamicFunctions,
    /// Recent statements (`kyma.system.queries`).
    pub queries: Arc<crate::queries::QueryLog>,
}

impl NodeTables {
    /// Waits until this node's view shows `revision`, so the writer reads its own write.
    pub async fn await_visible(&self, revision: Option<kyma_catalog::Revision>) {
        if let Some(revision) = revision
            && !self.view.wait_for(revision, READ_YOUR_WRITES_TIMEOUT).await
        {
            tracing::warn!(
                revision,
                "the catalog view did not reach a committed revision in time"
            );
        }
    }
}

impl NodeTables {
    /// Writes `batches` into `table` with one [`TableWriter`] and one commit, then waits until
    /// this node's view shows it. Returns the rows written.
    pub async fn write(
        &self,
        table: &TableRef,
        mut batches: impl futures::Stream<Item = Result<RecordBatch>> + Send + Unpin,
    ) -> Result<u64> {
        let mut writer =
            TableWriter::open(&self.catalog, &self.store, table, WriteOptions::default())
                .await
                .map_err(to_df)?;
        while let Some(batch) = batches.next().await {
            writer.write(&batch?).await.map_err(to_df)?;
        }
        let summary = writer.commit().await.map_err(to_df)?;
        self.await_visible(summary.revision).await;
        Ok(summary.rows)
    }
}

/// A catalog of tables from the [`CatalogView`]: `kyma` (native tables, plus the `default`
/// and `system` schemas) or a syncing connector's (its synced tables, read through
/// [`SyncedTable`]).
#[derive(Debug)]
pub struct KymaCatalogProvider {
    tables: Arc<NodeTables>,
    catalog: String,
}

impl KymaCatalogProvider {
    /// The `kyma` catalog over `tables`.
    pub fn native(tables: Arc<NodeTables>) -> Self {
        Self {
            tables,
            catalog: KYMA_CATALOG.to_owned(),
        }
    }

    /// The catalog of connector `connector`'s synced tables.
    pub fn synced(tables: Arc<NodeTables>, connector: &str) -> Self {
        Self {
            tables,
            catalog: connector.to_owned(),
        }
    }

    fn is_native(&self) -> bool {
        self.catalog == KYMA_CATALOG
    }
}

impl CatalogProvider for KymaCatalogProvider {
    fn schema_names(&self) -> Vec<String> {
        let fixed: &[&str] = if self.is_native() {
            &[DEFAULT_SCHEMA, SYSTEM_SCHEMA]
        } else {
            &[]
        };
        let mut names: Vec<String> = self
            .tables
            .view
            .tables()
            .iter()
            .filter(|e| e.state.table.catalog == self.catalog)
            .map(|e| e.state.table.schema.clone())
            .chain(fixed.iter().map(|s| (*s).to_owned()))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        if self.is_native() && name == SYSTEM_SCHEMA {
            return Some(Arc::new(SystemSchema::new(self.tables.queries.clone())));
        }
        Some(Arc::new(KymaSchemaProvider {
            tables: self.tables.clone(),
            catalog: self.catalog.clone(),
            schema: name.to_owned(),
        }))
    }
}

/// One schema of a [`KymaCatalogProvider`].
#[derive(Debug)]
struct KymaSchemaProvider {
    tables: Arc<NodeTables>,
    catalog: String,
    schema: String,
}

impl KymaSchemaProvider {
    fn table_ref(&self, name: &str) -> TableRef {
        TableRef::new(&self.catalog, &self.schema, name)
    }
}

#[async_trait]
impl SchemaProvider for KymaSchemaProvider {
    fn table_names(&self) -> Vec<String> {
        self.tables
            .view
            .tables()
            .iter()
            .map(|e| &e.state.table)
            .filter(|t| t.catalog == self.catalog && t.schema == self.schema)
            .map(|t| t.table.clone())
            .collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        self.tables
            .view
            .table(&self.table_ref(name))
            .map(|entry| table_provider(self.tables.clone(), entry))
            .transpose()
    }

    fn table_exist(&self, name: &str) -> bool {
        self.tables.view.table(&self.table_ref(name)).is_some()
    }
}

/// What a table is read through by name: a synced table's current state, or a native table.
pub fn table_provider(
    tables: Arc<NodeTables>,
    entry: Arc<TableEntry>,
) -> Result<Arc<dyn TableProvider>> {
    Ok(match entry.state.meta.origin {
        TableOrigin::Synced { .. } => Arc::new(SyncedTable::new(tables, entry)?),
        TableOrigin::Native => Arc::new(KymaTable::new(tables, entry)),
    })
}

/// Which of a table's extents a [`KymaTable`] reads (see [`kyma_table::synced`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extents {
    /// Every extent: a native table, or every stored version of a synced one.
    All,
    /// A synced table's compacted base.
    Compacted,
    /// A synced table's delta extents.
    Delta,
    /// Of a synced table whose positions are resolved, without their deleted rows (see
    /// [`kyma_table::deletes`]): the extents whose statistics say they hold no tombstone …
    LiveWithoutTombstones,
    /// … and the others.
    LiveWithTombstones,
}

impl Extents {
    fn includes(self, extent: &ExtentEntry) -> bool {
        match self {
            Extents::All => true,
            Extents::Compacted => extent.compacted,
            Extents::Delta => !extent.compacted,
            Extents::LiveWithoutTombstones => !may_hold_tombstones(extent),
            Extents::LiveWithTombstones => may_hold_tombstones(extent),
        }
    }

    /// Whether deleted rows are skipped.
    fn live(self) -> bool {
        matches!(
            self,
            Extents::LiveWithoutTombstones | Extents::LiveWithTombstones
        )
    }
}

/// The stored rows of a kyma table at one snapshot: every row of the extents it reads, as
/// written (for a synced table: every version and tombstone).
#[derive(Debug)]
pub struct KymaTable {
    tables: Arc<NodeTables>,
    entry: Arc<TableEntry>,
    schema: SchemaRef,
    extents: Extents,
    /// Read promoted columns as the union with their dynamic copies (off: the stored
    /// columns as they are).
    union_promoted: bool,
}

impl KymaTable {
    /// The table as `entry` holds it, every extent.
    pub fn new(tables: Arc<NodeTables>, entry: Arc<TableEntry>) -> Self {
        Self::reading(tables, entry, Extents::All)
    }

    /// The table as `entry` holds it, only the `extents` named.
    pub fn reading(tables: Arc<NodeTables>, entry: Arc<TableEntry>, extents: Extents) -> Self {
        let schema = arrow_schema(&entry.state.schema.value);
        Self {
            tables,
            entry,
            schema,
            extents,
            union_promoted: true,
        }
    }

    fn promoted(&self) -> bool {
        self.entry
            .state
            .schema
            .value
            .columns
            .iter()
            .any(|c| c.promoted_from.is_some())
    }

    /// The view projecting the union of promoted columns and their dynamic copies.
    fn union_view(&self) -> Result<ViewTable> {
        let stored = Arc::new(KymaTable {
            union_promoted: false,
            ..KymaTable::reading(self.tables.clone(), self.entry.clone(), self.extents)
        });
        let exprs: Vec<Expr> = self
            .entry
            .state
            .schema
            .value
            .columns
            .iter()
            .map(|c| {
                let column = col(DfColumn::new_unqualified(&c.name));
                match &c.promoted_from {
                    None => column,
                    Some(p) => {
                        let mut args = vec![col(DfColumn::new_unqualified(&p.column))];
                        args.extend(p.path.iter().map(|s| lit(s.as_str())));
                        let copy = self.tables.functions.read(c.ty, args);
                        datafusion::functions::expr_fn::coalesce(vec![column, copy]).alias(&c.name)
                    }
                }
            })
            .collect();
        let plan = LogicalPlanBuilder::scan("extents", provider_as_source(stored), None)?
            .project(exprs)?
            .build()?;
        Ok(ViewTable::new(plan, None))
    }

    fn manifest(&self) -> Result<Arc<Manifest>> {
        self.entry
            .manifest
            .clone()
            .map_err(DataFusionError::Execution)
    }

    async fn scan_extents(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let manifest = self.manifest()?;
        let predicate = match conjunction(filters.iter().cloned()) {
            Some(expr) => {
                let df_schema = DFSchema::try_from(self.schema.as_ref().clone())?;
                Some(state.create_physical_expr(expr, &df_schema)?)
            }
            None => None,
        };
        let projected = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        let extents = self.live_extents(&manifest, predicate.as_ref());
        if extents.is_empty() {
            return Ok(Arc::new(EmptyExec::new(projected)));
        }
        let reads_whole = predicate.is_none() && limit.is_none();
        let (decoded, parquet) = self.by_scan(extents, &projected, reads_whole);
        let partitions = state.config().target_partitions();
        let deleted = self.extents.live().then(|| self.entry.deleted.clone());
        let mut scans: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        if !decoded.is_empty() {
            let groups = spread(decoded, |(_, e)| e.rows, partitions);
            let indexes = groups
                .into_iter()
                .map(|g| g.into_iter().map(|(i, _)| i).collect())
                .collect();
            scans.push(Arc::new(DecodedExtentsExec::new(
                self.tables.store.clone(),
                manifest.clone(),
                indexes,
                projected.clone(),
                deleted.clone(),
                projected_predicate(state, filters, &projected),
            )));
        }
        if !parquet.is_empty() {
            let extents: Vec<&ExtentEntry> = parquet.into_iter().map(|(_, e)| e).collect();
            let deleted = deleted.as_deref();
            scans.push(
                self.parquet_scan(&extents, deleted, projection, predicate, limit, partitions)?,
            );
        }
        UnionExec::try_new(scans)
    }

    /// `extents` split into those read from decoded columns and those read from Parquet
    /// (see [`crate::decoded`], "Which extents"); `projected` are the columns read, and
    /// `reads_whole` says the scan has no filter or LIMIT.
    fn by_scan<'a>(
        &self,
        extents: Indexed<'a>,
        projected: &SchemaRef,
        reads_whole: bool,
    ) -> (Indexed<'a>, Indexed<'a>) {
        let columns = self.tables.store.columns();
        extents.into_iter().partition(|(_, e)| {
            columns.takes(decoded_size(e, projected))
                && (reads_whole
                    || columns.holds_all(e, projected.fields())
                    || columns.read_before(e))
        })
    }

    /// The Parquet scan of `extents`, pruned by `predicate`, skipping `deleted` rows.
    fn parquet_scan(
        &self,
        extents: &[&ExtentEntry],
        deleted: Option<&BTreeMap<String, RowSelection>>,
        projection: Option<&Vec<usize>>,
        predicate: Option<Arc<dyn PhysicalExpr>>,
        limit: Option<usize>,
        partitions: usize,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let rows: u64 = match deleted {
            Some(_) => extents.iter().map(|e| e.live_rows()).sum(),
            None => extents.iter().map(|e| e.rows).sum(),
        };
        let bytes: u64 = extents.iter().map(|e| e.bytes).sum();
        let groups = file_groups(extents, deleted, partitions);
        let mut source = ParquetSource::new(self.schema.clone())
            .with_enable_page_index(true)
            .with_parquet_file_reader_factory(Arc::new(CachedExtents(self.tables.store.clone())));
        if let Some(predicate) = predicate {
            source = source.with_predicate(predicate);
        }
        let statistics = Statistics::new_unknown(&self.schema)
            .with_num_rows(Precision::Exact(rows as usize))
            .with_total_byte_size(Precision::Inexact(bytes as usize));
        let config = FileScanConfigBuilder::new(self.tables.store_url.clone(), Arc::new(source))
            .with_file_groups(groups)
            .with_statistics(statistics)
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        Ok(DataSourceExec::from_data_source(config))
    }

    /// The extents read that the predicate may match, judged from the manifest's statistics,
    /// with their indexes in the manifest.
    fn live_extents<'a>(
        &self,
        manifest: &'a Manifest,
        predicate: Option<&Arc<dyn PhysicalExpr>>,
    ) -> Indexed<'a> {
        let keep = predicate
            .and_then(|p| {
                PruningPredicateBuilder::new()
                    .with_file_schema(self.schema.clone())
                    .try_build(p.clone())
                    .ok()
            })
            .and_then(|p| {
                p.prune(&ManifestStatistics {
                    manifest,
                    schema: &self.schema,
                })
                .ok()
            });
        manifest
            .extents
            .iter()
            .enumerate()
            .filter(|(i, e)| {
                self.extents.includes(e)
                    && keep
                        .as_ref()
                        .is_none_or(|k| k.get(*i).copied().unwrap_or(true))
            })
            .collect()
    }
}

/// `filters` as one predicate over `schema`'s columns, when they read only those (a filter
/// always does when DataFusion asks for a projection: it applies the filter above the scan).
fn projected_predicate(
    state: &dyn Session,
    filters: &[Expr],
    schema: &SchemaRef,
) -> Option<Arc<dyn PhysicalExpr>> {
    let expr = conjunction(filters.iter().cloned())?;
    let df_schema = DFSchema::try_from(schema.as_ref().clone()).ok()?;
    state.create_physical_expr(expr, &df_schema).ok()
}

/// Extents of a manifest with their indexes in it.
type Indexed<'a> = Vec<(usize, &'a ExtentEntry)>;

/// Spreads `items` over at most `partitions` groups, heaviest first onto the lightest group;
/// no group is empty.
fn spread<T>(mut items: Vec<T>, weight: impl Fn(&T) -> u64, partitions: usize) -> Vec<Vec<T>> {
    items.sort_by_key(|item| std::cmp::Reverse(weight(item)));
    let mut groups: Vec<(u64, Vec<T>)> = (0..partitions.clamp(1, items.len().max(1)))
        .map(|_| (0, Vec::new()))
        .collect();
    for item in items {
        if let Some(lightest) = groups.iter_mut().min_by_key(|(total, _)| *total) {
            lightest.0 += weight(&item);
            lightest.1.push(item);
        }
    }
    groups
        .into_iter()
        .filter(|(_, items)| !items.is_empty())
        .map(|(_, items)| items)
        .collect()
}

/// Spreads extents over `partitions` file groups by size; with `deleted`, each extent's
/// deleted rows are skipped.
fn file_groups(
    extents: &[&ExtentEntry],
    deleted: Option<&BTreeMap<String, RowSelection>>,
    partitions: usize,
) -> Vec<FileGroup> {
    spread(extents.to_vec(), |e| e.bytes, partitions)
        .into_iter()
        .map(|extents| {
            let files = extents.into_iter().map(|extent| {
                let file = PartitionedFile::new(extent.path.clone(), extent.bytes);
                match deleted.and_then(|d| d.get(&extent.path)) {
                    Some(selection) => {
                        file.with_extension(ParquetRowSelection::new(selection.clone()))
                    }
                    None => file,
                }
            });
            FileGroup::new(files.collect())
        })
        .collect()
}

/// Bytes that `schema`'s columns of `extent` take decoded, as the largest single column
/// (the unit [`kyma_table::columns`] holds), estimated from the row count: a fixed-width
/// type's width, [`VARIABLE_WIDTH_ESTIMATE`] bytes per value otherwise.
fn decoded_size(extent: &ExtentEntry, schema: &SchemaRef) -> u64 {
    let widest = schema
        .fields()
        .iter()
        .map(|f| {
            f.data_type()
                .primitive_width()
                .unwrap_or(VARIABLE_WIDTH_ESTIMATE)
        })
        .max()
        .unwrap_or(0);
    extent.rows.saturating_mul(widest as u64)
}

#[async_trait]
impl TableProvider for KymaTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if self.union_promoted && self.promoted() {
            return self
                .union_view()?
                .scan(state, projection, filters, limit)
                .await;
        }
        self.scan_extents(state, projection, filters, limit).await
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if insert_op != InsertOp::Append {
            return not_impl_err!("{insert_op} is not supported on kyma tables; use INSERT INTO");
        }
        let sink = KymaSink {
            tables: self.tables.clone(),
            table: self.entry.state.table.clone(),
            schema: self.schema.clone(),
        };
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }
}

/// INSERT's sink: one [`TableWriter`] per statement, one commit.
#[derive(Debug)]
struct KymaSink {
    tables: Arc<NodeTables>,
    table: TableRef,
    schema: SchemaRef,
}

impl DisplayAs for KymaSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KymaSink: table={}", self.table)
    }
}

#[async_trait]
impl DataSink for KymaSink {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(
        &self,
        data: SendableRecordBatchStream,
        _context: &Arc<TaskContext>,
    ) -> Result<u64> {
        self.tables.write(&self.table, data).await
    }
}

/// A table error inside DataFusion (the Flight layer finds it again to pick a status code).
pub fn to_df(e: TableError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// The manifest's per-extent statistics, as DataFusion's pruning reads them.
struct ManifestStatistics<'a> {
    manifest: &'a Manifest,
    schema: &'a SchemaRef,
}

impl ManifestStatistics<'_> {
    /// One statistic of `column` per extent, as an array of the column's type (null where
    /// unknown). Columns without an order (dynamic, vector) have none.
    fn stat_array(
        &self,
        column: &DfColumn,
        pick: impl Fn(&kyma_table::ColumnStats) -> Option<&StatValue>,
    ) -> Option<ArrayRef> {
        let field = self.schema.field_with_name(&column.name).ok()?;
        let ty = field.data_type();
        let scalar = |value: Option<&StatValue>| -> Option<ScalarValue> {
            Some(match (ty, value) {
                (DataType::Int32, Some(StatValue::Int(i))) => {
                    ScalarValue::Int32(i32::try_from(*i).ok())
                }
                (DataType::Int64, Some(StatValue::Int(i))) => ScalarValue::Int64(Some(*i)),
                (DataType::Timestamp(_, _), Some(StatValue::Int(i))) => {
                    ScalarValue::TimestampMicrosecond(Some(*i), Some(UTC.into()))
                }
                (DataType::Float64, Some(StatValue::Real(f))) => ScalarValue::Float64(Some(*f)),
                (DataType::Boolean, Some(StatValue::Bool(b))) => ScalarValue::Boolean(Some(*b)),
                (DataType::Utf8, Some(StatValue::Str(s))) => ScalarValue::Utf8(Some(s.clone())),
                (DataType::Binary | DataType::FixedSizeList(_, _), _) => return None,
                _ => ScalarValue::try_from(ty).ok()?,
            })
        };
        let values = self
            .manifest
            .extents
            .iter()
            .map(|e| scalar(e.columns.get(&column.name).and_then(&pick)))
            .collect::<Option<Vec<_>>>()?;
        ScalarValue::iter_to_array(values).ok()
    }
}

impl PruningStatistics for ManifestStatistics<'_> {
    fn min_values(&self, column: &DfColumn) -> Option<ArrayRef> {
        self.stat_array(column, |s| s.min.as_ref())
    }

    fn max_values(&self, column: &DfColumn) -> Option<ArrayRef> {
        self.stat_array(column, |s| s.max.as_ref())
    }

    fn num_containers(&self) -> usize {
        self.manifest.extents.len()
    }

    fn null_counts(&self, column: &DfColumn) -> Option<ArrayRef> {
        self.schema.field_with_name(&column.name).ok()?;
        // An extent without the column (older schema) holds only nulls in it.
        Some(Arc::new(
            self.manifest
                .extents
                .iter()
                .map(|e| Some(e.columns.get(&column.name).map_or(e.rows, |s| s.null_count)))
                .collect::<UInt64Array>(),
        ))
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        Some(Arc::new(
            self.manifest
                .extents
                .iter()
                .map(|e| Some(e.rows))
                .collect::<UInt64Array>(),
        ))
    }

    fn contained(
        &self,
        _column: &DfColumn,
        _values: &HashSet<datafusion::common::ScalarValue>,
    ) -> Option<BooleanArray> {
        None
    }
}

/// Resolves a SQL table name against the defaults (`kyma`, `default`).
pub fn resolve(parts: &[String]) -> Result<TableRef> {
    match parts {
        [table] => Ok(TableRef::new(KYMA_CATALOG, DEFAULT_SCHEMA, table)),
        [schema, table] => Ok(TableRef::new(KYMA_CATALOG, schema, table)),
        [catalog, schema, table] => Ok(TableRef::new(catalog, schema, table)),
        _ => plan_err!("a table name has one to three parts (catalog.schema.table)"),
    }
}

/// The record batch an update statement answers with.
pub fn count_batch(count: u64) -> Result<RecordBatch> {
    let schema = Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("count", DataType::UInt64, false),
    ]));
    Ok(RecordBatch::try_new(
        schema,
        vec![Arc::new(UInt64Array::from(vec![count]))],
    )?)
}

/// Extents read as the table crate reads them ([`ExtentReader`]): small ones once per
/// process, through the store's cache, so no query fetches a delta extent it (or another
/// query) has fetched before; large ones by range.
#[derive(Debug)]
struct CachedExtents(ExtentStore);

impl ParquetFileReaderFactory for CachedExtents {
    fn create_reader(
        &self,
        _partition_index: usize,
        file: PartitionedFile,
        _metadata_size_hint: Option<usize>,
        _metrics: &ExecutionPlanMetricsSet,
    ) -> Result<Box<dyn AsyncFileReader + Send>> {
        Ok(Box::new(ExtentReader::new(
            &self.0,
            file.object_meta.location,
            file.object_meta.size,
        )))
    }
}

//! The federated scan: one source query, as a logical node (carrying its query and summary,
//! shown by EXPLAIN) and as an execution plan that streams the source's rows.
//!
//! Execution is the source's ([`FederatedSource::execute`]): it streams the query's rows as
//! batches of the plan's Arrow schema. The scan counts the bytes received (`source_bytes`,
//! for `kyma.system.queries` and the benchmark) and the rows, and names the connector in
//! every error ([`SourceError`]).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchemaRef, Result};
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Expr, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use futures::TryStreamExt;

use super::source::{FederatedSource, QueryOutput, SourceError, SourceQuery};
use super::summary::SourceSummary;

/// The name of the metric counting bytes received from the source.
pub const SOURCE_BYTES: &str = "source_bytes";

/// A subtree answered by one source query.
#[derive(Debug, Clone)]
pub struct FederatedScan {
    source: Arc<dyn FederatedSource>,
    plan: LogicalPlan,
    query: SourceQuery,
    /// What the query covers and what stayed in kyma.
    pub summary: SourceSummary,
}

impl FederatedScan {
    /// The scan of `plan` at `source` by `query`.
    pub fn new(
        source: Arc<dyn FederatedSource>,
        plan: LogicalPlan,
        query: SourceQuery,
        summary: SourceSummary,
    ) -> Self {
        Self {
            source,
            plan,
            query,
            summary,
        }
    }
}

impl PartialEq for FederatedScan {
    fn eq(&self, other: &Self) -> bool {
        self.source.name() == other.source.name() && self.query == other.query
    }
}

impl Eq for FederatedScan {}

impl Hash for FederatedScan {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.source.name().hash(state);
        self.query.hash(state);
    }
}

impl PartialOrd for FederatedScan {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some((self.source.name(), &self.query).cmp(&(other.source.name(), &other.query)))
    }
}

impl UserDefinedLogicalNodeCore for FederatedScan {
    fn name(&self) -> &str {
        "FederatedScan"
    }

    /// A leaf: the subtree it replaced runs at the source, so no rule may rewrite it.
    fn inputs(&self) -> Vec<&LogicalPlan> {
        Vec::new()
    }

    fn schema(&self) -> &DFSchemaRef {
        self.plan.schema()
    }

    fn expressions(&self) -> Vec<Expr> {
        Vec::new()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "FederatedScan: source={} sql={}",
            self.source.name(),
            self.query
        )
    }

    fn with_exprs_and_inputs(&self, _exprs: Vec<Expr>, _inputs: Vec<LogicalPlan>) -> Result<Self> {
        Ok(self.clone())
    }
}

/// Streams one source query.
#[derive(Debug)]
pub struct FederatedScanExec {
    source: Arc<dyn FederatedSource>,
    query: SourceQuery,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl FederatedScanExec {
    /// Runs `query` at `source`, producing `schema`.
    pub fn new(source: Arc<dyn FederatedSource>, query: SourceQuery, schema: SchemaRef) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            source,
            query,
            schema,
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }
}

impl DisplayAs for FederatedScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "FederatedScanExec: source={} sql={}",
            self.source.name(),
            self.query
        )
    }
}

impl ExecutionPlan for FederatedScanExec {
    fn name(&self) -> &str {
        "FederatedScanExec"
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

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let bytes = MetricBuilder::new(&self.metrics).counter(SOURCE_BYTES, partition);
        let rows = MetricBuilder::new(&self.metrics).output_rows(partition);
        let batch_rows = context.session_config().batch_size();
        let connector = self.source.name().to_owned();
        let stream = self
            .source
            .execute(
                &self.query,
                QueryOutput {
                    schema: self.schema.clone(),
                    batch_rows,
                    received: bytes,
                },
            )
            .map_err(move |e| SourceError::datafusion(&connector, e))
            .inspect_ok(move |batch| rows.add(batch.num_rows()));
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            stream,
        )))
    }
}

/// Plans [`FederatedScan`] nodes.
#[derive(Debug, Default)]
struct FederatedScanPlanner;

#[async_trait]
impl ExtensionPlanner for FederatedScanPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        _physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session_state: &dyn Session,
        _planning_ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        Ok(node.as_any().downcast_ref::<FederatedScan>().map(|scan| {
            Arc::new(FederatedScanExec::new(
                scan.source.clone(),
                scan.query.clone(),
                Arc::new(scan.plan.schema().as_arrow().clone()),
            )) as Arc<dyn ExecutionPlan>
        }))
    }
}

/// DataFusion's planner, plus federated scans.
#[derive(Debug, Default)]
pub struct KymaQueryPlanner;

#[async_trait]
impl QueryPlanner for KymaQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session_state: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(FederatedScanPlanner)])
            .create_physical_plan(logical_plan, session_state)
            .await
    }
}

/// Bytes received from federated sources by a finished plan.
pub fn source_bytes(plan: &Arc<dyn ExecutionPlan>) -> u64 {
    let own = plan
        .downcast_ref::<FederatedScanExec>()
        .and_then(|scan| scan.metrics.clone_inner().sum_by_name(SOURCE_BYTES))
        .map_or(0, |v| v.as_usize() as u64);
    own + plan.children().into_iter().map(source_bytes).sum::<u64>()
}

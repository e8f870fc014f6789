//! A federated source's table as a DataFusion table: the one provider every source's tables
//! are, by name or through `live()`. The optimizer rule ([`super::rule`]) recognises source
//! scans by this provider.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DFSchema, Result, TableReference};
use datafusion::datasource::{provider_as_source, source_as_provider};
use datafusion::logical_expr::{
    Expr, LogicalPlanBuilder, TableProviderFilterPushDown, TableScan, TableType,
};
use datafusion::physical_plan::ExecutionPlan;

use super::capabilities::check_filter;
use super::scan::FederatedScanExec;
use super::source::{FederatedSource, SourceTable};

/// A source table. Filters are pushed Exact when [`check_filter`] finds them safe for the
/// source and the source can compile them ([`FederatedSource::accepts_filter`]), Unsupported
/// otherwise (DataFusion then runs them); the optimizer rule turns scans,
/// and whatever above them is safe, into one source query.
#[derive(Debug, Clone)]
pub struct FederatedTable {
    /// The connector's source.
    pub source: Arc<dyn FederatedSource>,
    /// The table.
    pub meta: Arc<SourceTable>,
    /// Whether this node pushes work to the source (off: every scan reads whole rows).
    pub pushdown: bool,
}

impl FederatedTable {
    /// The table's name in kyma: `connector.schema.table`.
    pub fn reference(&self) -> TableReference {
        TableReference::full(
            self.source.name().to_owned(),
            self.meta.schema.clone(),
            self.meta.table.clone(),
        )
    }
}

/// The federated table `scan` reads, if it reads one.
pub(crate) fn federated_table(scan: &TableScan) -> Option<FederatedTable> {
    let provider = source_as_provider(&scan.source).ok()?;
    provider.downcast_ref::<FederatedTable>().cloned()
}

#[async_trait]
impl TableProvider for FederatedTable {
    fn schema(&self) -> SchemaRef {
        self.meta.arrow.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        let schema = DFSchema::try_from(self.meta.arrow.as_ref().clone())?;
        let capabilities = self.source.capabilities();
        Ok(filters
            .iter()
            .map(|filter| {
                let safe = self.pushdown
                    && check_filter(filter, &schema, &self.meta.semantics, capabilities).is_ok()
                    && self.source.accepts_filter(&self.meta, filter).is_ok();
                if safe {
                    TableProviderFilterPushDown::Exact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    /// Used only where the optimizer rule did not run: the source's query for the scan alone.
    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let plan = LogicalPlanBuilder::scan_with_filters_fetch(
            self.reference(),
            provider_as_source(Arc::new(self.clone())),
            projection.cloned(),
            filters.to_vec(),
            limit,
        )?
        .build()?;
        let query = self.source.compile(&plan)?;
        Ok(Arc::new(FederatedScanExec::new(
            self.source.clone(),
            query,
            Arc::new(plan.schema().as_arrow().clone()),
        )))
    }
}

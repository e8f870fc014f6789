//! A Postgres connector as a DataFusion catalog: `pg_prod.public.users`.
//!
//! The tables in scope and their columns come from the source's catalog
//! (`kyma_connectors::postgres::types::source_columns`) and are cached for
//! [`METADATA_TTL`]; a lookup of a table the cache does not know, or of a stale entry,
//! re-reads the source, so a table created (or altered) after registration is queryable
//! without a restart. Listing (`schema_names`, `table_names`) answers from the cache.
//!
//! Every table is read through its *typed relation*: a `SELECT` that casts each column to
//! its kyma type (`types::select_expr`) — `uuid` as text, `numeric(10,2)` as double,
//! `timestamp` as UTC. Pushed-down SQL reads from that relation, so the source filters,
//! sorts and aggregates exactly the values kyma would see; Postgres inlines the subquery.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use arrow::datatypes::{Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, SchemaProvider, Session, TableProvider};
use datafusion::common::{DFSchema, DataFusionError, Result, TableReference};
use datafusion::datasource::provider_as_source;
use datafusion::logical_expr::{Expr, LogicalPlanBuilder, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;
use kyma_catalog::{ConnectorSpec, KymaType};
use kyma_connectors::postgres::types::{self, SourceColumn};
use kyma_connectors::postgres::{PgPool, quote_ident};
use kyma_connectors::{ConnectorError, SecretResolver};

use super::pushdown::{self, Semantics};
use super::scan::FederatedScanExec;

/// How long a source's table list and columns are trusted before a lookup re-reads them.
const METADATA_TTL: Duration = Duration::from_secs(30);

/// One Postgres connector as the query node uses it: its pool and its cached tables.
#[derive(Debug)]
pub struct PgSource {
    spec: ConnectorSpec,
    pool: Arc<PgPool>,
    pushdown: bool,
    cache: RwLock<TableCache>,
    loading: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct TableCache {
    loaded_at: Option<Instant>,
    tables: BTreeMap<(String, String), Arc<PgTableMeta>>,
}

/// One source table: its columns, their kyma types and how pushdown may treat them.
#[derive(Debug)]
pub struct PgTableMeta {
    /// Source schema.
    pub schema: String,
    /// Source table.
    pub table: String,
    /// The Arrow schema kyma reads it as.
    pub arrow: SchemaRef,
    /// Per column: what the source may compare or sort on it.
    pub semantics: Vec<Semantics>,
    /// The typed relation (see the module doc).
    pub relation_sql: String,
}

impl PgSource {
    /// The source of `spec`; connects lazily.
    pub fn new(spec: ConnectorSpec, secrets: SecretResolver, pushdown: bool) -> Arc<Self> {
        Arc::new(Self {
            pool: PgPool::new(spec.connection.clone(), secrets),
            spec,
            pushdown,
            cache: RwLock::new(TableCache::default()),
            loading: tokio::sync::Mutex::new(()),
        })
    }

    /// The connector's name (its catalog name).
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The registration it was built from.
    pub fn spec(&self) -> &ConnectorSpec {
        &self.spec
    }

    /// Whether this node pushes work to the source (off: every scan reads whole rows).
    pub fn pushdown(&self) -> bool {
        self.pushdown
    }

    /// The connection pool.
    pub fn pool(&self) -> &Arc<PgPool> {
        &self.pool
    }

    fn cache(&self) -> std::sync::RwLockReadGuard<'_, TableCache> {
        self.cache.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Schemas with tables in scope, as last loaded.
    pub fn schema_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.cache().tables.keys().map(|(s, _)| s.clone()).collect();
        names.dedup();
        names
    }

    /// Tables of `schema` in scope, as last loaded.
    pub fn table_names(&self, schema: &str) -> Vec<String> {
        self.cache()
            .tables
            .keys()
            .filter(|(s, _)| s == schema)
            .map(|(_, t)| t.clone())
            .collect()
    }

    fn fresh(&self) -> bool {
        self.cache()
            .loaded_at
            .is_some_and(|at| at.elapsed() < METADATA_TTL)
    }

    /// Re-reads the tables in scope from the source (one load at a time; a caller that
    /// waited for another's load uses it).
    pub async fn refresh(&self) -> Result<(), ConnectorError> {
        let started = Instant::now();
        let _loading = self.loading.lock().await;
        if self.cache().loaded_at.is_some_and(|at| at >= started) {
            return Ok(());
        }
        let client = self.pool.get().await?;
        let columns = types::source_columns(&client, &self.spec.scope.include_schemas).await?;
        drop(client);
        let mut grouped: BTreeMap<(String, String), Vec<SourceColumn>> = BTreeMap::new();
        for column in columns {
            if self.spec.scope.covers(&column.schema, &column.table) {
                grouped
                    .entry((column.schema.clone(), column.table.clone()))
                    .or_default()
                    .push(column);
            }
        }
        let tables = grouped
            .into_iter()
            .map(|(key, columns)| {
                let meta = self.table_meta(&key.0, &key.1, &columns);
                (key, Arc::new(meta))
            })
            .collect();
        *self.cache.write().unwrap_or_else(|p| p.into_inner()) = TableCache {
            loaded_at: Some(Instant::now()),
            tables,
        };
        Ok(())
    }

    fn table_meta(&self, schema: &str, table: &str, columns: &[SourceColumn]) -> PgTableMeta {
        let mut fields = Vec::with_capacity(columns.len());
        let mut semantics = Vec::with_capacity(columns.len());
        let mut selects = Vec::with_capacity(columns.len());
        for column in columns {
            let mapped = types::kyma_type(&column.name, &column.pg_type, &self.spec.scope);
            if let Some(warning) = &mapped.warning {
                tracing::warn!(connector = %self.spec.name, table = %format!("{schema}.{table}"), "{warning}");
            }
            fields.push(Field::new(
                &column.name,
                kyma_table::types::arrow_type(mapped.ty),
                !column.not_null,
            ));
            semantics.push(column_semantics(column, mapped.ty));
            selects.push(format!(
                "{} AS {}",
                types::select_expr(column, mapped.ty),
                quote_ident(&column.name)
            ));
        }
        PgTableMeta {
            schema: schema.to_owned(),
            table: table.to_owned(),
            arrow: Arc::new(Schema::new(fields)),
            semantics,
            relation_sql: format!(
                "SELECT {} FROM {}.{}",
                selects.join(", "),
                quote_ident(schema),
                quote_ident(table)
            ),
        }
    }

    /// The table as last loaded, however long ago (for callers that cannot wait on the
    /// source; [`Self::table`] loaded it just before).
    pub fn loaded_table(&self, schema: &str, table: &str) -> Option<Arc<PgTableMeta>> {
        self.cache()
            .tables
            .get(&(schema.to_owned(), table.to_owned()))
            .cloned()
    }

    /// The table, re-reading the source when the cache is stale or does not know it.
    pub async fn table(&self, schema: &str, table: &str) -> Result<Option<Arc<PgTableMeta>>> {
        if !self.spec.scope.covers(schema, table) {
            return Ok(None);
        }
        let key = (schema.to_owned(), table.to_owned());
        if self.fresh()
            && let Some(meta) = self.cache().tables.get(&key)
        {
            return Ok(Some(meta.clone()));
        }
        self.refresh().await.map_err(|e| self.error(e))?;
        Ok(self.cache().tables.get(&key).cloned())
    }

    /// A connector error as a DataFusion error that names the connector.
    pub fn error(&self, e: ConnectorError) -> DataFusionError {
        DataFusionError::External(Box::new(SourceError {
            connector: self.spec.name.clone(),
            source: e,
        }))
    }
}

/// An error from a federated source, naming its connector.
#[derive(Debug, thiserror::Error)]
#[error("connector `{connector}`: {source}")]
pub struct SourceError {
    /// The connector.
    pub connector: String,
    /// What failed.
    #[source]
    pub source: ConnectorError,
}

/// What the source may compare or sort on a column read through its typed relation.
fn column_semantics(column: &SourceColumn, ty: KymaType) -> Semantics {
    match ty {
        KymaType::Int | KymaType::Long | KymaType::Real | KymaType::Bool | KymaType::Timestamp => {
            Semantics::COMPARABLE
        }
        KymaType::String => Semantics {
            eq: column.deterministic,
            order: column.deterministic && types::sorts_bytewise(&column.collation),
            collation: Some(column.collation.clone().into()),
        },
        KymaType::Dynamic | KymaType::Vector(_) => Semantics::OPAQUE,
    }
}

/// A connector as a DataFusion catalog.
#[derive(Debug)]
pub struct PgCatalogProvider {
    source: Arc<PgSource>,
}

impl PgCatalogProvider {
    /// The catalog of `source`.
    pub fn new(source: Arc<PgSource>) -> Self {
        Self { source }
    }
}

impl CatalogProvider for PgCatalogProvider {
    fn schema_names(&self) -> Vec<String> {
        self.source.schema_names()
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        let scope = &self.source.spec.scope;
        (scope.include_schemas.is_empty() || scope.include_schemas.iter().any(|s| s == name)).then(
            || {
                Arc::new(PgSchemaProvider {
                    source: self.source.clone(),
                    schema: name.to_owned(),
                }) as Arc<dyn SchemaProvider>
            },
        )
    }
}

/// One source schema.
#[derive(Debug)]
struct PgSchemaProvider {
    source: Arc<PgSource>,
    schema: String,
}

#[async_trait]
impl SchemaProvider for PgSchemaProvider {
    fn table_names(&self) -> Vec<String> {
        self.source.table_names(&self.schema)
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let meta = self.source.table(&self.schema, name).await?;
        Ok(meta.map(|meta| {
            Arc::new(PgTable {
                source: self.source.clone(),
                meta,
            }) as Arc<dyn TableProvider>
        }))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.source.loaded_table(&self.schema, name).is_some()
    }
}

/// A source table. Filters are pushed Exact when [`pushdown::check_filter`] finds them safe
/// for the source, Unsupported otherwise (DataFusion then runs them); the optimizer rule in
/// [`pushdown`] turns scans, and whatever above them is safe, into one source query.
#[derive(Debug, Clone)]
pub struct PgTable {
    /// The connector.
    pub source: Arc<PgSource>,
    /// The table.
    pub meta: Arc<PgTableMeta>,
}

impl PgTable {
    /// The table's name in kyma: `connector.schema.table`.
    pub fn reference(&self) -> TableReference {
        TableReference::full(
            self.source.name().to_owned(),
            self.meta.schema.clone(),
            self.meta.table.clone(),
        )
    }
}

#[async_trait]
impl TableProvider for PgTable {
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
        Ok(filters
            .iter()
            .map(|filter| {
                let safe = self.source.pushdown
                    && pushdown::check_filter(filter, &schema, &self.meta.semantics).is_ok();
                if safe {
                    TableProviderFilterPushDown::Exact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    /// Used only where the optimizer rule did not run: the same SQL generator, for the scan
    /// alone.
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
        let sql = pushdown::generate_sql(&plan)?;
        Ok(Arc::new(FederatedScanExec::new(
            self.source.clone(),
            sql,
            Arc::new(plan.schema().as_arrow().clone()),
        )))
    }
}

//! A federated connector as a DataFusion catalog: `pg_prod.public.users`.
//!
//! The tables in scope come from the source ([`FederatedSource::discover`]) and are cached
//! for [`METADATA_TTL`]; a lookup of a table the cache does not know, or of a stale entry,
//! re-reads the source, so a table created (or altered) after registration is queryable
//! without a restart. Reads are single-flight: one load at a time, and a caller that waited
//! for another's load uses it. Listing (`schema_names`, `table_names`) answers from the
//! cache.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, SchemaProvider, TableProvider};
use datafusion::common::Result;
use kyma_catalog::ConnectorSpec;
use kyma_connectors::ConnectorError;

use super::source::{FederatedSource, SourceError, SourceTable};
use super::table::FederatedTable;

/// How long a source's table list and columns are trusted before a lookup re-reads them.
const METADATA_TTL: Duration = Duration::from_secs(30);

/// One federated connector as the query node uses it: its source and its cached tables.
#[derive(Debug)]
pub struct FederatedCatalog {
    source: Arc<dyn FederatedSource>,
    pushdown: bool,
    cache: RwLock<TableCache>,
    loading: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct TableCache {
    loaded_at: Option<Instant>,
    tables: BTreeMap<(String, String), Arc<SourceTable>>,
}

impl FederatedCatalog {
    /// The catalog of `source`, pushing work to it when `pushdown`; reads nothing yet.
    pub fn new(source: Arc<dyn FederatedSource>, pushdown: bool) -> Arc<Self> {
        Arc::new(Self {
            source,
            pushdown,
            cache: RwLock::new(TableCache::default()),
            loading: tokio::sync::Mutex::new(()),
        })
    }

    /// The connector's name (its catalog name).
    pub fn name(&self) -> &str {
        self.source.name()
    }

    /// The registration it was built from.
    pub fn spec(&self) -> &ConnectorSpec {
        self.source.spec()
    }

    fn cache(&self) -> RwLockReadGuard<'_, TableCache> {
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

    /// Re-reads the tables in scope from the source (single-flight, see the module doc).
    pub async fn refresh(&self) -> Result<(), ConnectorError> {
        let started = Instant::now();
        let _loading = self.loading.lock().await;
        if self.cache().loaded_at.is_some_and(|at| at >= started) {
            return Ok(());
        }
        let tables = self
            .source
            .discover()
            .await?
            .into_iter()
            .map(|t| ((t.schema.clone(), t.table.clone()), Arc::new(t)))
            .collect();
        *self.cache.write().unwrap_or_else(|p| p.into_inner()) = TableCache {
            loaded_at: Some(Instant::now()),
            tables,
        };
        Ok(())
    }

    /// The table as last loaded, however long ago (for callers that cannot wait on the
    /// source; [`Self::table`] loaded it just before).
    pub fn loaded_table(&self, schema: &str, table: &str) -> Option<FederatedTable> {
        let meta = self
            .cache()
            .tables
            .get(&(schema.to_owned(), table.to_owned()))
            .cloned()?;
        Some(self.provider(meta))
    }

    /// The table, re-reading the source when the cache is stale or does not know it.
    pub async fn table(&self, schema: &str, table: &str) -> Result<Option<FederatedTable>> {
        if !self.spec().scope.covers(schema, table) {
            return Ok(None);
        }
        if !self.fresh() || self.loaded_table(schema, table).is_none() {
            self.refresh()
                .await
                .map_err(|e| SourceError::datafusion(self.name(), e))?;
        }
        Ok(self.loaded_table(schema, table))
    }

    fn provider(&self, meta: Arc<SourceTable>) -> FederatedTable {
        FederatedTable {
            source: self.source.clone(),
            meta,
            pushdown: self.pushdown,
        }
    }
}

/// A federated connector as a DataFusion catalog.
#[derive(Debug)]
pub struct FederatedCatalogProvider {
    catalog: Arc<FederatedCatalog>,
}

impl FederatedCatalogProvider {
    /// The catalog of `catalog`'s source.
    pub fn new(catalog: Arc<FederatedCatalog>) -> Self {
        Self { catalog }
    }
}

impl CatalogProvider for FederatedCatalogProvider {
    fn schema_names(&self) -> Vec<String> {
        self.catalog.schema_names()
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        self.catalog.spec().scope.covers_schema(name).then(|| {
            Arc::new(FederatedSchemaProvider {
                catalog: self.catalog.clone(),
                schema: name.to_owned(),
            }) as Arc<dyn SchemaProvider>
        })
    }
}

/// One source schema.
#[derive(Debug)]
struct FederatedSchemaProvider {
    catalog: Arc<FederatedCatalog>,
    schema: String,
}

#[async_trait]
impl SchemaProvider for FederatedSchemaProvider {
    fn table_names(&self) -> Vec<String> {
        self.catalog.table_names(&self.schema)
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let table = self.catalog.table(&self.schema, name).await?;
        Ok(table.map(|t| Arc::new(t) as Arc<dyn TableProvider>))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.catalog.loaded_table(&self.schema, name).is_some()
    }
}

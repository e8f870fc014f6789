//! Federation (SPEC §5): every registered connector in mode `federation` whose source kyma
//! federates is a DataFusion catalog named after it, and queries over it run at the source as
//! far as that is safe. A connector in mode `both` reads its synced tables by name and
//! federates through `live()` ([`crate::table_functions`]).
//!
//! - [`KymaCatalogList`] resolves catalog names: `kyma` (native tables) and, through the
//!   watched catalog view, each connector — a connector registered or deleted on any node
//!   shows up here without a restart. A connector in mode `sync` or `both` is the catalog of
//!   its synced tables ([`crate::provider::KymaCatalogProvider::synced`]); one in mode
//!   `federation` the catalog of its source's tables ([`catalog`]).
//! - [`source`]: the seam every source implements ([`FederatedSource`]), and how "the same
//!   source" is decided. [`FederatedSources`] builds one per connector, by source type, in
//!   one place ([`implementation`]).
//! - [`capabilities`], [`rule`], [`summary`], [`scan`], [`table`]: what may run at a source,
//!   the optimizer rule that moves it there, the `pushdown_summary`, the scan node, the table
//!   provider — the same for every source.
//! - [`sql`]: what SQL sources share; [`postgres`]: Postgres; [`mysql`]: MySQL and MariaDB;
//!   [`mongodb`]: MongoDB, which compiles aggregation pipelines instead of SQL.

pub mod capabilities;
pub mod catalog;
pub mod mongodb;
pub mod mysql;
pub mod postgres;
pub mod rule;
pub mod scan;
pub mod source;
pub mod sql;
pub mod summary;
pub mod table;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use datafusion::catalog::{CatalogProvider, CatalogProviderList};
use kyma_catalog::{ConnectorMode, ConnectorSpec, SourceType};
use kyma_connectors::SecretResolver;

use crate::provider::{KymaCatalogProvider, NodeTables};
use crate::view::CatalogView;
use catalog::{FederatedCatalog, FederatedCatalogProvider};
use source::FederatedSource;

/// How a node federates.
#[derive(Debug, Clone)]
pub struct FederationOptions {
    /// Where `secret_ref`s resolve.
    pub secrets: SecretResolver,
    /// Push work to sources (on by default; off reads whole rows, for diagnosis and for
    /// measuring what pushdown saves).
    pub pushdown: bool,
}

impl Default for FederationOptions {
    fn default() -> Self {
        Self {
            secrets: SecretResolver::new("/var/run/secrets/kyma"),
            pushdown: true,
        }
    }
}

/// The federated sources of a node, built from the connectors in the catalog view and
/// rebuilt when a connector's registration changes.
#[derive(Debug)]
pub struct FederatedSources {
    view: CatalogView,
    options: FederationOptions,
    built: Mutex<HashMap<String, Arc<FederatedCatalog>>>,
}

/// Builds the federated source of a connector.
pub type Implementation = fn(ConnectorSpec, SecretResolver) -> Arc<dyn FederatedSource>;

/// The federated implementation of a source type, if kyma federates it: the one place a
/// source type picks its implementation.
pub fn implementation(source_type: SourceType) -> Option<Implementation> {
    match source_type {
        SourceType::Postgres => Some(postgres::source),
        SourceType::Mysql => Some(mysql::source),
        SourceType::Mongodb => Some(mongodb::source),
    }
}

/// Whether `spec` is federated: its mode reads the source and kyma federates its type.
fn federated(spec: &ConnectorSpec) -> bool {
    spec.mode != ConnectorMode::Sync && implementation(spec.source_type).is_some()
}

impl FederatedSources {
    /// Sources for the connectors `view` follows.
    pub fn new(view: CatalogView, options: FederationOptions) -> Self {
        Self {
            view,
            options,
            built: Mutex::new(HashMap::new()),
        }
    }

    /// A registered connector's spec, whatever its mode.
    pub fn connector(&self, name: &str) -> Option<ConnectorSpec> {
        self.view.connector(name)
    }

    /// Names of the federated connectors.
    pub fn names(&self) -> Vec<String> {
        self.view
            .connectors()
            .into_iter()
            .filter(federated)
            .map(|s| s.name)
            .collect()
    }

    /// The source of connector `name` with its tables, if it is a federated one.
    pub fn source(&self, name: &str) -> Option<Arc<FederatedCatalog>> {
        let mut built = self.built.lock().unwrap_or_else(|p| p.into_inner());
        // Deleted connectors' pools go (their idle connections close).
        built.retain(|name, _| self.view.connector(name).is_some());
        let spec = self.view.connector(name).filter(federated)?;
        if let Some(source) = built.get(name)
            && source.spec() == &spec
        {
            return Some(source.clone());
        }
        let build = implementation(spec.source_type)?;
        let source = FederatedCatalog::new(
            build(spec, self.options.secrets.clone()),
            self.options.pushdown,
        );
        // Load the table list now, so that listing (GetTables, information_schema) sees it.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let warming = source.clone();
            runtime.spawn(async move {
                if let Err(e) = warming.refresh().await {
                    tracing::warn!(connector = %warming.name(), error = %e, "cannot list the source's tables");
                }
            });
        }
        built.insert(name.to_owned(), source.clone());
        Some(source)
    }
}

/// The catalogs of a node: those registered with DataFusion (`kyma`), the syncing
/// connectors' synced tables and the federated connectors' sources.
#[derive(Debug)]
pub struct KymaCatalogList {
    registered: RwLock<HashMap<String, Arc<dyn CatalogProvider>>>,
    tables: Arc<NodeTables>,
    sources: Arc<FederatedSources>,
}

impl KymaCatalogList {
    /// The list over the synced tables in `tables` and the federated `sources`.
    pub fn new(tables: Arc<NodeTables>, sources: Arc<FederatedSources>) -> Self {
        Self {
            registered: RwLock::new(HashMap::new()),
            tables,
            sources,
        }
    }

    fn syncing(&self) -> Vec<String> {
        self.tables
            .view
            .connectors()
            .into_iter()
            .filter(|spec| spec.mode.syncs())
            .map(|spec| spec.name)
            .collect()
    }
}

impl CatalogProviderList for KymaCatalogList {
    fn register_catalog(
        &self,
        name: String,
        catalog: Arc<dyn CatalogProvider>,
    ) -> Option<Arc<dyn CatalogProvider>> {
        self.registered
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, catalog)
    }

    fn catalog_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .registered
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .chain(self.syncing())
            .chain(self.sources.names())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    fn catalog(&self, name: &str) -> Option<Arc<dyn CatalogProvider>> {
        let registered = self
            .registered
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned();
        if registered.is_some() {
            return registered;
        }
        if self
            .tables
            .view
            .connector(name)
            .is_some_and(|spec| spec.mode.syncs())
        {
            return Some(Arc::new(KymaCatalogProvider::synced(
                self.tables.clone(),
                name,
            )));
        }
        self.sources.source(name).map(|source| {
            Arc::new(FederatedCatalogProvider::new(source)) as Arc<dyn CatalogProvider>
        })
    }
}

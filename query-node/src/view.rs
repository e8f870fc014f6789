//! The node's view of the catalog: every table's state and loaded manifest, and every
//! connector's registration, kept current by the catalog watch so that planning a query never waits on the catalog or object storage.
//!
//! # Consistency
//!
//! The view applies catalog changes in revision order and publishes the revision it has
//! applied. A writer on this node waits for its commit's revision before answering, so a
//! client always reads its own writes; other nodes catch up within one watch round trip.
//! When the watch breaks or its history is compacted, the view reloads everything and
//! watches again from the reload's revision: no change is missed.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use datafusion::parquet::arrow::arrow_reader::RowSelection;
use futures::{StreamExt, TryStreamExt};
use kyma_catalog::{
    Catalog, CatalogError, CatalogEvent, ConnectorSpec, ConnectorState, Revision, SourceCursor,
    TableRef, TableState, Versioned,
};
use kyma_table::{ExtentEntry, ExtentStore, Manifest, TableError};
use tokio::sync::watch;

/// Manifests loaded in parallel during a full reload.
const LOAD_CONCURRENCY: usize = 16;

/// One table as the view holds it.
#[derive(Debug)]
pub struct TableEntry {
    /// Catalog state (schema, snapshot pointer).
    pub state: TableState,
    /// The snapshot's manifest, or why it could not be read.
    pub manifest: Result<Arc<Manifest>, String>,
    /// The rows to read of each extent some of whose rows are deleted by position, by
    /// extent path (worked out with the manifest's loading, so no query waits for them).
    pub deleted: Arc<BTreeMap<String, RowSelection>>,
}

/// One connector as the view holds it.
#[derive(Debug, Clone)]
struct ConnectorEntry {
    spec: ConnectorSpec,
    cursor: Option<Versioned<SourceCursor>>,
}

impl From<ConnectorState> for ConnectorEntry {
    fn from(state: ConnectorState) -> Self {
        Self {
            spec: state.spec,
            cursor: state.cursor,
        }
    }
}

/// The watched view. Cheap to clone; the watch task stops when the last clone goes.
#[derive(Debug, Clone)]
pub struct CatalogView {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    catalog: Catalog,
    store: ExtentStore,
    tables: RwLock<BTreeMap<TableRef, Arc<TableEntry>>>,
    connectors: RwLock<BTreeMap<String, ConnectorEntry>>,
    applied: watch::Sender<Revision>,
}

impl CatalogView {
    /// Loads every table, then follows the catalog in the background.
    pub async fn start(catalog: Catalog, store: ExtentStore) -> Result<Self, TableError> {
        let (applied, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            catalog,
            store,
            tables: RwLock::new(BTreeMap::new()),
            connectors: RwLock::new(BTreeMap::new()),
            applied,
        });
        let revision = inner.reload().await?;
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move { follow(weak, revision).await });
        Ok(Self { inner })
    }

    /// The table, if it exists.
    pub fn table(&self, table: &TableRef) -> Option<Arc<TableEntry>> {
        self.inner.read().get(table).cloned()
    }

    /// Every table, sorted by name.
    pub fn tables(&self) -> Vec<Arc<TableEntry>> {
        self.inner.read().values().cloned().collect()
    }

    /// A registered connector's spec.
    pub fn connector(&self, name: &str) -> Option<ConnectorSpec> {
        self.inner.connectors().get(name).map(|c| c.spec.clone())
    }

    /// Every registered connector's spec, sorted by name.
    pub fn connectors(&self) -> Vec<ConnectorSpec> {
        self.inner
            .connectors()
            .values()
            .map(|c| c.spec.clone())
            .collect()
    }

    /// A sync connector's committed cursor, with the revision that committed it (together
    /// with its tables' data: once the view has applied that revision, its tables hold
    /// everything the cursor covers).
    pub fn cursor(&self, name: &str) -> Option<Versioned<SourceCursor>> {
        self.inner.connectors().get(name)?.cursor.clone()
    }

    /// Waits until `ready(applied)` holds for the revision the view has applied, checking
    /// now and after each revision it applies; false when `timeout` passes first.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut ready: impl FnMut(Revision) -> bool,
    ) -> bool {
        let mut applied = self.inner.applied.subscribe();
        tokio::time::timeout(timeout, applied.wait_for(|r| ready(*r)))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Waits until the view has applied `revision` (or `timeout` passes: returns false).
    pub async fn wait_for(&self, revision: Revision, timeout: Duration) -> bool {
        let mut applied = self.inner.applied.subscribe();
        tokio::time::timeout(timeout, applied.wait_for(|r| *r >= revision))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

impl Inner {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<TableRef, Arc<TableEntry>>> {
        self.tables.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<TableRef, Arc<TableEntry>>> {
        self.tables.write().unwrap_or_else(|p| p.into_inner())
    }

    fn connectors(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, ConnectorEntry>> {
        self.connectors.read().unwrap_or_else(|p| p.into_inner())
    }

    fn connectors_mut(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, ConnectorEntry>> {
        self.connectors.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the whole view with the catalog as of now; returns that revision.
    async fn reload(&self) -> Result<Revision, TableError> {
        let (revision, states) = self.catalog.list_tables(None).await?;
        let connectors = self.catalog.list_connectors().await?;
        *self.connectors_mut() = connectors
            .into_iter()
            .map(|c| (c.spec.name.clone(), c.into()))
            .collect();
        let entries: Vec<Arc<TableEntry>> = futures::stream::iter(states)
            .map(|state| self.entry(state))
            .buffer_unordered(LOAD_CONCURRENCY)
            .collect()
            .await;
        let map = entries
            .into_iter()
            .map(|e| (e.state.table.clone(), e))
            .collect();
        *self.write() = map;
        self.applied.send_replace(revision);
        Ok(revision)
    }

    /// An entry for `state`, reusing the loaded manifest when the pointer did not move.
    async fn entry(&self, state: TableState) -> Arc<TableEntry> {
        let previous = self.read().get(&state.table).cloned();
        if let Some(previous) = &previous
            && previous.state.meta.id == state.meta.id
            && previous.state.snapshot.value.manifest == state.snapshot.value.manifest
            && previous.manifest.is_ok()
        {
            return Arc::new(TableEntry {
                state,
                manifest: previous.manifest.clone(),
                deleted: previous.deleted.clone(),
            });
        }
        let loaded = match &state.snapshot.value.manifest {
            None => Ok((
                Manifest::empty(state.meta.id, state.schema.value.version),
                BTreeMap::new(),
            )),
            Some(path) => self.load(path, previous.as_deref()).await,
        };
        let (manifest, deleted) = match loaded {
            Ok((manifest, deleted)) => (Ok(Arc::new(manifest)), deleted),
            Err(e) => {
                tracing::error!(table = %state.table, error = %e, "cannot load manifest");
                let reason = format!("cannot read the manifest of {}: {e}", state.table);
                (Err(reason), BTreeMap::new())
            }
        };
        Arc::new(TableEntry {
            state,
            manifest,
            deleted: Arc::new(deleted),
        })
    }

    /// The manifest at `path` and the rows to read of its extents with deleted rows. An
    /// extent's deleted rows change only with its manifest entry, so the selections of
    /// entries `previous` held unchanged are reused rather than decoded again.
    async fn load(
        &self,
        path: &str,
        previous: Option<&TableEntry>,
    ) -> Result<(Manifest, BTreeMap<String, RowSelection>), TableError> {
        let manifest = Manifest::load(&self.store, path).await?;
        let before: HashMap<&str, &ExtentEntry> = previous
            .and_then(|p| p.manifest.as_deref().ok())
            .map(|m| m.extents.iter().map(|e| (e.path.as_str(), e)).collect())
            .unwrap_or_default();
        let reused = |entry: &ExtentEntry| {
            let unchanged = before
                .get(entry.path.as_str())
                .is_some_and(|b| b.deleted == entry.deleted);
            unchanged
                .then(|| previous?.deleted.get(&entry.path).cloned())
                .flatten()
        };
        let selections = manifest.extents.iter().filter_map(|entry| {
            let deleted = entry.deleted.as_ref()?;
            let reused = reused(entry);
            Some(async move {
                let selection = match reused {
                    Some(selection) => Some(selection),
                    None => deleted.load(&self.store).await?.selection(entry.rows),
                };
                Ok::<_, TableError>(selection.map(|s| (entry.path.clone(), s)))
            })
        });
        let selections = futures::future::try_join_all(selections)
            .await?
            .into_iter()
            .flatten()
            .collect();
        Ok((manifest, selections))
    }

    /// Applies one watched change.
    async fn apply(
        &self,
        revision: Revision,
        events: Vec<CatalogEvent>,
    ) -> Result<(), CatalogError> {
        for event in events {
            match event {
                CatalogEvent::TableChanged(table) => match self.catalog.table(&table).await {
                    Ok(state) => {
                        let entry = self.entry(state).await;
                        self.write().insert(table, entry);
                    }
                    // Dropped again since: the drop event follows.
                    Err(CatalogError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                },
                CatalogEvent::TableDropped(table) => {
                    self.write().remove(&table);
                }
                CatalogEvent::ConnectorChanged(name) => match self.catalog.connector(&name).await {
                    Ok(state) => {
                        self.connectors_mut().insert(name, state.into());
                    }
                    Err(CatalogError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                },
                CatalogEvent::ConnectorDeleted(name) => {
                    self.connectors_mut().remove(&name);
                }
                CatalogEvent::WorkerChanged(_) => {}
            }
        }
        self.applied.send_if_modified(|r| {
            let moved = revision > *r;
            *r = (*r).max(revision);
            moved
        });
        Ok(())
    }
}

/// Follows the catalog from `revision` until the view is dropped.
async fn follow(view: std::sync::Weak<Inner>, mut revision: Revision) {
    let mut attempt = 0_u32;
    loop {
        let Some(inner) = view.upgrade() else { return };
        let result: Result<(), TableError> = async {
            let mut changes = Box::pin(inner.catalog.watch(revision + 1).await?);
            drop(inner);
            while let Some(change) = changes.try_next().await? {
                let Some(inner) = view.upgrade() else {
                    return Ok(());
                };
                inner.apply(change.revision, change.events).await?;
                revision = change.revision;
                attempt = 0;
            }
            Ok(())
        }
        .await;
        let Some(inner) = view.upgrade() else { return };
        if let Err(e) = result {
            tracing::warn!(error = %e, "catalog watch interrupted; reloading the view");
        }
        tokio::time::sleep(kyma_catalog::kv::backoff(attempt)).await;
        attempt = attempt.saturating_add(1);
        match inner.reload().await {
            Ok(r) => revision = r,
            Err(e) => tracing::warn!(error = %e, "reloading the catalog view failed; retrying"),
        }
    }
}

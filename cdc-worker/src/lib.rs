//! The CDC worker: its own process, any number of replicas (SPEC §2, §6).
//!
//! A worker registers itself in the catalog under a lease that it keeps alive. Its supervisor
//! looks at the connectors every 500 ms, and at once when the catalog's watch shows a connector
//! it does not run change or one deleted (a new registration is claimed within a round trip,
//! not at the next poll): every connector in mode `sync` or `both` that an operator wants
//! running and that no live worker holds is claimed (at a new, higher fencing epoch, under the
//! worker's lease) and synced on a task of its own by the one sync pipeline
//! ([`pipeline::ConnectorSync`]), whatever the source: the worker knows sources only through
//! `kyma_connectors::registry` and `kyma_connectors::sync`. A worker that dies loses its claims
//! when its lease lapses, and another worker takes over from the committed cursor; a worker
//! that was only paused finds its next commit fenced and stops. A worker that outlives its
//! lease (it was paused, or cut off from the catalog for longer than the lease) stops its
//! connectors and registers again under a new lease, to claim whatever is free.
//!
//! Errors: transient ones (source or catalog unreachable, connection lost) are retried with
//! backoff from the last commit; definite ones (a setting to fix, a dropped slot) put the
//! connector's `last_error` in its status and are retried slowly, so fixing the cause
//! resumes the sync without a restart. A connector deleted while a worker runs it is stopped
//! and its source objects torn down (registration's delete does so too, for connectors no
//! worker runs).

pub mod batch;
pub mod compactor;
pub mod error;
pub mod metrics;
pub mod pipeline;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use kyma_catalog::{
    Catalog, CatalogError, CatalogEvent, ConnectorClaim, ConnectorSpec, ConnectorState,
    ConnectorStatus, DesiredState, LeaseId, WorkerSession,
};
use kyma_connectors::{SecretResolver, registry};
use kyma_table::ExtentStore;
use tokio::sync::{Notify, watch};

use crate::compactor::Compactor;

pub use error::SyncError;
pub use metrics::SyncMetrics;
pub use pipeline::{COMMIT_STAGES, COPY_STAGES, ConnectorSync, SyncContext, SyncOptions};

/// How often the supervisor looks for connectors to claim or stop.
const POLL_EVERY: Duration = Duration::from_millis(500);
/// The least time between two looks prompted by the catalog's watch (other workers'
/// connectors change with each of their commits).
const NEWS_SPACING: Duration = Duration::from_millis(50);
/// A run that lasted this long got somewhere: its failure starts the backoff over.
const BACKOFF_RESETS_AFTER: Duration = Duration::from_secs(60);
/// How long a definite error waits before the next attempt.
const DEFINITE_RETRY_AFTER: Duration = Duration::from_secs(30);
/// How often the tables of the connectors a worker runs are checked for compaction (besides
/// the commits that cross a table's threshold, see [`compactor`]).
const COMPACT_EVERY: Duration = Duration::from_secs(30);
/// How often a worker collects the garbage of the whole store.
const COLLECT_GARBAGE_EVERY: Duration = Duration::from_secs(600);

/// A running CDC worker.
#[derive(Debug)]
pub struct CdcWorker {
    catalog: Catalog,
    session: CurrentSession,
    metrics: Arc<SyncMetrics>,
    stop: watch::Sender<bool>,
    supervisor: tokio::task::JoinHandle<()>,
    compaction: tokio::task::JoinHandle<()>,
}

impl CdcWorker {
    /// Registers worker `worker_id` in `catalog` under a lease of `lease_ttl` and starts
    /// claiming and syncing connectors, writing extents to `store`.
    pub async fn start(
        catalog: Catalog,
        store: ExtentStore,
        secrets: SecretResolver,
        worker_id: &str,
        lease_ttl: Duration,
        options: SyncOptions,
    ) -> Result<Self, CatalogError> {
        let session = Arc::new(catalog.start_session(worker_id, lease_ttl).await?);
        tracing::info!(worker_id, lease = session.lease(), "cdc worker registered");
        let (stop, stopped) = watch::channel(false);
        let session = Arc::new(Mutex::new(session));
        let metrics = Arc::new(SyncMetrics::default());
        let (compactor, requests) = Compactor::new();
        let compactor = Arc::new(compactor);
        let ctx = SyncContext {
            catalog: catalog.clone(),
            store,
            secrets,
            options,
            metrics: metrics.clone(),
            compactor: compactor.clone(),
        };
        let compaction = tokio::spawn({
            let ctx = ctx.clone();
            async move { compactor.run(requests, ctx).await }
        });
        let supervisor = tokio::spawn(supervise(ctx, session.clone(), lease_ttl, stopped));
        Ok(Self {
            catalog,
            session,
            metrics,
            stop,
            supervisor,
            compaction,
        })
    }

    /// The catalog it works on.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Its sync metrics (shared: they keep counting while the worker runs).
    pub fn metrics(&self) -> Arc<SyncMetrics> {
        self.metrics.clone()
    }

    /// Ready while its lease is alive and the catalog answers.
    pub async fn ready(&self) -> Result<(), CatalogError> {
        let session = current(&self.session);
        if session.is_lost() {
            return Err(CatalogError::LeaseExpired(session.lease()));
        }
        self.catalog.ping().await.map(|_| ())
    }

    /// Stops syncing (uncommitted work is replayed by the next owner) and leaves the
    /// catalog: revokes the lease so its claims are free at once.
    pub async fn shutdown(self) -> Result<(), CatalogError> {
        let _ = self.stop.send(true);
        let _ = self.supervisor.await;
        // A compaction cut short changes nothing: its files are left to garbage collection.
        self.compaction.abort();
        let session = Arc::try_unwrap(self.session)
            .ok()
            .map(|s| s.into_inner().unwrap_or_else(PoisonError::into_inner))
            .and_then(|s| Arc::try_unwrap(s).ok());
        match session {
            Some(session) => session.close().await,
            None => Ok(()),
        }
    }
}

/// The worker's session: the supervisor replaces it when it registers again.
type CurrentSession = Arc<Mutex<Arc<WorkerSession>>>;

fn current(session: &CurrentSession) -> Arc<WorkerSession> {
    session
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// A connector this worker runs.
struct Running {
    spec: ConnectorSpec,
    stop: watch::Sender<bool>,
    /// Its resync requests, as the catalog has them.
    requests: watch::Sender<BTreeMap<String, u64>>,
    task: tokio::task::JoinHandle<()>,
}

fn wanted(state: &ConnectorState) -> bool {
    state.spec.mode.syncs()
        && state.desired == DesiredState::Running
        && registry::kind(state.spec.source_type).is_ok()
}

/// Supervises under the current session; when its lease lapses, registers again (the
/// connectors it ran are stopped by then, and may be someone else's now) and goes on.
async fn supervise(
    ctx: SyncContext,
    session: CurrentSession,
    lease_ttl: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let worker_id = current(&session).worker_id().to_owned();
        if !supervise_session(&ctx, current(&session), &mut stop).await {
            return;
        }
        loop {
            match ctx.catalog.start_session(&worker_id, lease_ttl).await {
                Ok(new) => {
                    tracing::info!(%worker_id, lease = new.lease(), "cdc worker registered again");
                    *session.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(new);
                    break;
                }
                Err(e) => tracing::warn!(error = %e, "cannot register the worker again; retrying"),
            }
            tokio::select! {
                _ = stop.changed() => return,
                () = tokio::time::sleep(POLL_EVERY) => {}
            }
        }
    }
}

/// Claims and runs connectors under `session` until told to stop (`false`) or the session's
/// lease is lost (`true`); either way every connector it started has stopped on return.
async fn supervise_session(
    ctx: &SyncContext,
    session: Arc<WorkerSession>,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let mut lost = false;
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut maintenance: Option<tokio::task::JoinHandle<()>> = None;
    let mut last_compaction = tokio::time::Instant::now();
    let mut last_gc = tokio::time::Instant::now();
    let news = ConnectorNews::watch(ctx.catalog.clone());
    let mut looked = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            () = session.lost() => {
                tracing::warn!("the worker's lease is lost; its connectors stop");
                lost = true;
                break;
            }
            () = tokio::time::sleep_until(looked + POLL_EVERY) => {}
            () = news.arrived(looked + NEWS_SPACING) => {}
        }
        looked = tokio::time::Instant::now();
        let connectors = match ctx.catalog.list_connectors().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list connectors; retrying");
                continue;
            }
        };
        for (name, r) in &running {
            if let Some(state) = connectors.iter().find(|c| &c.spec.name == name) {
                r.requests.send_if_modified(|requests| {
                    let changed = *requests != state.resync;
                    requests.clone_from(&state.resync);
                    changed
                });
            }
        }
        let by_name: HashMap<&str, &ConnectorState> = connectors
            .iter()
            .map(|c| (c.spec.name.as_str(), c))
            .collect();
        // A task also ends by itself: fenced by its connector's deletion, which this listing
        // may predate, so whether the connector is gone is asked again once it has ended.
        let gone: Vec<String> = running
            .iter()
            .filter(|(name, r)| {
                r.task.is_finished()
                    || by_name
                        .get(name.as_str())
                        .is_none_or(|c| !wanted(c) || c.spec != r.spec)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            if let Some(r) = running.remove(&name) {
                let _ = r.stop.send(true);
                let _ = r.task.await;
                if deleted(ctx, &name).await {
                    drop_source_objects(ctx, &r.spec).await;
                }
            }
        }
        if maintenance.as_ref().is_none_or(|m| m.is_finished())
            && last_compaction.elapsed() >= COMPACT_EVERY
        {
            let specs: Vec<ConnectorSpec> = running.values().map(|r| r.spec.clone()).collect();
            let collect = last_gc.elapsed() >= COLLECT_GARBAGE_EVERY;
            if collect {
                last_gc = tokio::time::Instant::now();
            }
            last_compaction = tokio::time::Instant::now();
            maintenance = Some(tokio::spawn(maintain(ctx.clone(), specs, collect)));
        }
        for state in &connectors {
            let name = &state.spec.name;
            if !wanted(state) || state.holder.is_some() || running.contains_key(name) {
                continue;
            }
            match ctx.catalog.claim_connector(&session, name).await {
                Ok(Some(claim)) => {
                    tracing::info!(connector = %name, epoch = claim.fence.epoch, "claimed");
                    let (stop_tx, stop_rx) = watch::channel(false);
                    let (requests, requests_rx) = watch::channel(state.resync.clone());
                    let task = tokio::spawn(run_connector(
                        ctx.clone(),
                        state.spec.clone(),
                        claim,
                        (session.lease(), state.status.clone(), requests_rx),
                        stop_rx,
                    ));
                    running.insert(
                        name.clone(),
                        Running {
                            spec: state.spec.clone(),
                            stop: stop_tx,
                            requests,
                            task,
                        },
                    );
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(connector = %name, error = %e, "claim failed"),
            }
        }
        news.running(running.keys());
    }
    if let Some(m) = maintenance {
        m.abort();
    }
    for (_, r) in running.drain() {
        let _ = r.stop.send(true);
        let _ = r.task.await;
    }
    lost
}

/// The catalog's watch, filtered for what a supervisor acts on: a change to a connector it
/// does not run (a registration, a resume, another worker letting go) or a deletion. The
/// connectors it runs change with every commit of theirs, so those changes are ignored (the
/// poll still sees pauses and resync requests). The watch is opened again after a failure;
/// meanwhile the poll goes on.
struct ConnectorNews {
    running: Arc<Mutex<HashSet<String>>>,
    arrived: Arc<Notify>,
    watcher: tokio::task::JoinHandle<()>,
}

impl ConnectorNews {
    fn watch(catalog: Catalog) -> Self {
        let running = Arc::new(Mutex::new(HashSet::new()));
        let arrived = Arc::new(Notify::new());
        let watcher = tokio::spawn({
            let (running, arrived) = (running.clone(), arrived.clone());
            async move {
                loop {
                    if let Err(e) = forward_news(&catalog, &running, &arrived).await {
                        tracing::debug!(error = %e, "the connector watch failed; polling meanwhile");
                    }
                    tokio::time::sleep(POLL_EVERY).await;
                }
            }
        });
        Self {
            running,
            arrived,
            watcher,
        }
    }

    /// Completes when news arrived since the last call, not before `not_before`.
    async fn arrived(&self, not_before: tokio::time::Instant) {
        self.arrived.notified().await;
        tokio::time::sleep_until(not_before).await;
    }

    /// The connectors the supervisor runs now.
    fn running<'a>(&self, names: impl Iterator<Item = &'a String>) {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        running.clear();
        running.extend(names.cloned());
    }
}

impl Drop for ConnectorNews {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// Notifies `arrived` of each change the supervisor acts on, until the watch fails.
async fn forward_news(
    catalog: &Catalog,
    running: &Mutex<HashSet<String>>,
    arrived: &Notify,
) -> Result<(), CatalogError> {
    let revision = catalog.ping().await?;
    let mut changes = Box::pin(catalog.watch(revision + 1).await?);
    while let Some(change) = changes.next().await {
        let change = change?;
        let running = running.lock().unwrap_or_else(PoisonError::into_inner);
        let news = change.events.iter().any(|event| match event {
            CatalogEvent::ConnectorChanged(name) => !running.contains(name),
            CatalogEvent::ConnectorDeleted(_) => true,
            _ => false,
        });
        if news {
            arrived.notify_one();
        }
    }
    Ok(())
}

/// What a claimed connector's run starts from: the lease it was claimed under, its status
/// and its resync requests.
type RunStart = (
    LeaseId,
    ConnectorStatus,
    watch::Receiver<BTreeMap<String, u64>>,
);

/// Runs one claimed connector until told to stop or fenced; retries failed runs.
async fn run_connector(
    ctx: SyncContext,
    spec: ConnectorSpec,
    claim: ConnectorClaim,
    (lease, status, requests): RunStart,
    mut stop: watch::Receiver<bool>,
) {
    let name = spec.name.clone();
    let mut sync = ConnectorSync::new(ctx.clone(), spec, claim.clone(), lease, status, requests);
    let mut attempt: u32 = 0;
    loop {
        let started = std::time::Instant::now();
        let wait = match sync.run(&mut stop).await {
            Ok(()) => break,
            Err(SyncError::Fenced { .. }) => {
                tracing::warn!(connector = %name, "fenced: another worker holds the connector now");
                return;
            }
            Err(e) => {
                tracing::warn!(connector = %name, error = %e, retryable = e.is_retryable(), "sync run failed");
                if let Err(SyncError::Fenced { .. }) = sync.record_error(&e).await {
                    return;
                }
                if started.elapsed() >= BACKOFF_RESETS_AFTER {
                    attempt = 0;
                }
                attempt = attempt.saturating_add(1);
                if e.is_retryable() {
                    Duration::from_millis(100 * 2_u64.pow(attempt.min(6)))
                } else {
                    DEFINITE_RETRY_AFTER
                }
            }
        };
        tokio::select! {
            _ = stop.changed() => break,
            () = tokio::time::sleep(wait) => {}
        }
    }
    if let Err(e) = ctx.catalog.release_connector(&claim).await {
        tracing::warn!(connector = %name, error = %e, "releasing the claim failed");
    }
}

/// Whether connector `name` no longer exists. When the catalog cannot say, it is taken to
/// exist and the warning names what may be left behind.
async fn deleted(ctx: &SyncContext, name: &str) -> bool {
    match ctx.catalog.connector(name).await {
        Err(CatalogError::NotFound(_)) => true,
        Ok(_) => false,
        Err(e) => {
            tracing::warn!(connector = %name, error = %e, "cannot tell whether the ended connector was deleted; if it was, drop its replication slot and publication at the source");
            false
        }
    }
}

/// Tears a deleted connector's objects down at the source (best effort: a slot left behind
/// would keep the source's WAL forever, so failures are logged).
async fn drop_source_objects(ctx: &SyncContext, spec: &ConnectorSpec) {
    let result = match registry::kind(spec.source_type) {
        Ok(kind) => kind.change_source(spec, &ctx.secrets).teardown().await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => {
            tracing::info!(connector = %spec.name, "tore the deleted connector's source objects down")
        }
        Err(e) => {
            tracing::warn!(connector = %spec.name, error = %e, "cannot tear the deleted connector's source objects down; drop its replication slot and publication at the source")
        }
    }
}

/// Queues for compaction the synced tables of `specs` that need it (see
/// [`compactor`]) and, when `collect` is set, collects the store's garbage. Failures are
/// logged: both are retried on the next round, and neither changes what a table holds.
async fn maintain(ctx: SyncContext, specs: Vec<ConnectorSpec>, collect: bool) {
    for spec in specs {
        let options = ctx.compaction_options(&spec);
        let tables = match ctx.catalog.list_tables(Some(&spec.name)).await {
            Ok((_, tables)) => tables,
            Err(e) => {
                tracing::warn!(connector = %spec.name, error = %e, "cannot list tables to compact");
                continue;
            }
        };
        for state in tables {
            let manifest = match kyma_table::writer::current_manifest(&ctx.store, &state).await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(table = %state.table, error = %e, "cannot read the manifest to compact");
                    continue;
                }
            };
            if kyma_table::needs_compaction(&manifest, &options) {
                ctx.compactor.request(&state.table, &options);
            }
        }
    }
    if collect {
        match kyma_table::collect_garbage(
            &ctx.catalog,
            &ctx.store,
            &kyma_table::GcOptions::default(),
        )
        .await
        {
            Ok(summary) => tracing::info!(?summary, "garbage collected"),
            Err(e) => tracing::warn!(error = %e, "garbage collection failed"),
        }
    }
}

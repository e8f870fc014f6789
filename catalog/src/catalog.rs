//! The catalog API: tables, schemas, the atomic commit, connectors, worker sessions and claims,
//! and the watch.
//!
//! # The commit (exactly once)
//!
//! A [`CatalogCommit`] is one backend transaction that
//! 1. compares the connector's fencing epoch and cursor (for sync commits), the registration
//!    of its open write (when it has one, see [`crate::OpenWrite`]), the snapshot and schema
//!    revisions of every native table it touches and the revision of every shard of synced
//!    tables it touches (see [`crate::keys`]), then
//! 2. installs the new cursor, the new snapshot pointers, the synced tables' new sync states
//!    and any schema widening together.
//!
//! Either all of it lands or none of it does. On a conflict [`CommitOutcome::Conflict`] hands
//! the current values to the caller to rebase. A worker whose epoch is no longer current gets
//! [`CatalogError::Fenced`] and can never commit again.
//!
//! A commit's size does not grow with the number of synced tables it touches beyond one
//! compare and one put per shard (at most [`crate::keys::SYNC_SHARDS`]) and the shards' bytes:
//! one source transaction over hundreds of tables is one commit.
//!
//! Every commit carries a `commit_id`, written into the cursor and every snapshot it installs.
//! Commits are retried here while the backend is unavailable; when an earlier attempt did land
//! (its answer was lost), the retry finds its own `commit_id` and reports
//! [`CommitOutcome::Committed`] instead of applying twice. For sync commits this check is exact:
//! only the epoch holder writes the cursor. For commits without a connector it is exact as long
//! as no other writer committed to the same tables in between; when one did, the outcome is a
//! conflict whose current state the caller checks for its own extents.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use uuid::Uuid;

use crate::error::CatalogError;
use crate::keys::{ConnectorKey, Keys, ParsedKey, TableKey};
use crate::kv::{
    Compare, KeyValue, KvBackend, LeaseId, Op, Revision, Txn, WatchEvent, WatchEventKind, backoff,
};
use crate::location::CatalogLocation;
use crate::model::{
    Column, ConnectorHolder, ConnectorSpec, ConnectorState, ConnectorStatus, DesiredState,
    SourceCursor, TableRef, TableSchema, TableSnapshot, TableState, TableSyncState, Versioned,
    WorkerRecord, now_ms, validate_identifier,
};
use crate::tables::{ReadShard, read_shard};

/// How long a commit keeps retrying while the backend is unavailable.
const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(30);
/// Optimistic loops (create, widen, claim) give up after this many lost races in a row.
pub(crate) const MAX_CAS_ATTEMPTS: usize = 64;

/// Handle on the catalog. Cheap to clone.
#[derive(Clone)]
pub struct Catalog {
    pub(crate) kv: Arc<dyn KvBackend>,
    pub(crate) keys: Keys,
    retry_for: Duration,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

/// A table's part of a commit: its new snapshot and, when the batch widened it, its new schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCommit {
    /// The table.
    pub table: TableRef,
    /// Revision of the snapshot pointer this commit builds on.
    pub base_snapshot_revision: Revision,
    /// Revision of the schema this commit builds on.
    pub base_schema_revision: Revision,
    /// The new snapshot pointer (its `commit_id` is set by the commit).
    pub snapshot: TableSnapshot,
    /// The widened schema, when the batch widened it.
    pub new_schema: Option<TableSchema>,
    /// For a synced table (only): its sync state after the commit. [`TableCommit::on`] keeps
    /// the base's; a sync commit may change it (a table copied, failed, or pending again).
    pub sync: Option<TableSyncState>,
}

impl TableCommit {
    /// The next snapshot of `base` pointing at `manifest`, widening its schema to hold
    /// `columns` (the columns the batch wrote; pass `&[]` when it wrote only known ones).
    pub fn on(
        base: &TableState,
        manifest: impl Into<String>,
        columns: &[Column],
    ) -> Result<Self, CatalogError> {
        let new_schema = base.schema.value.widen(&base.table, columns)?;
        let schema_version = new_schema
            .as_ref()
            .map_or(base.schema.value.version, |s| s.version);
        Ok(Self {
            table: base.table.clone(),
            base_snapshot_revision: base.snapshot.mod_revision,
            base_schema_revision: base.schema.mod_revision,
            snapshot: TableSnapshot {
                version: base.snapshot.value.version + 1,
                schema_version,
                manifest: Some(manifest.into()),
                commit_id: None,
                committed_at_ms: 0,
            },
            new_schema,
            sync: base.sync.clone(),
        })
    }

    /// A commit that changes only a synced table's sync state: the snapshot stays (same
    /// version and manifest).
    pub fn state_only(base: &TableState, sync: TableSyncState) -> Self {
        Self {
            table: base.table.clone(),
            base_snapshot_revision: base.snapshot.mod_revision,
            base_schema_revision: base.schema.mod_revision,
            snapshot: base.snapshot.value.clone(),
            new_schema: None,
            sync: Some(sync),
        }
    }

    /// The same commit with the synced table's sync state after it set to `sync`.
    pub fn with_sync(mut self, sync: TableSyncState) -> Self {
        self.sync = Some(sync);
        self
    }
}

/// The cursor part of a sync commit, fenced by the claim it was made under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorAdvance {
    /// The claim: connector, epoch, epoch revision.
    pub claim: ClaimFence,
    /// Revision of the cursor this commit builds on (0: the first commit).
    pub base_cursor_revision: Revision,
    /// The source position the batch covers.
    pub position: String,
    /// The next `_kyma_seq` to assign after this commit.
    pub next_seq: u64,
    /// What the position is a position in (see [`SourceCursor::source_id`]).
    pub source_id: Option<String>,
}

/// A registered open write (see [`crate::OpenWrite`]): its key and the revision that
/// registered it. The commit that installs the write compares it and deletes it, so a write
/// whose registration lapsed (its writer's lease ran out, and the garbage collector may have
/// taken its files) can never commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteRegistration {
    /// The registration key.
    pub key: Vec<u8>,
    /// The revision that wrote it.
    pub revision: Revision,
}

/// What fences a claim's writes: the epoch key's revision at claim time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimFence {
    /// The connector.
    pub connector: String,
    /// The epoch claimed.
    pub epoch: u64,
    /// The epoch key's revision when claimed: any later claim changes it.
    pub epoch_revision: Revision,
}

/// One atomic catalog commit. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogCommit {
    /// Identifies this commit across retries.
    pub commit_id: Uuid,
    /// The cursor to advance, for sync commits.
    pub cursor: Option<CursorAdvance>,
    /// The tables to advance.
    pub tables: Vec<TableCommit>,
    /// The registration of the write this commit installs, if it registered.
    pub open_write: Option<WriteRegistration>,
}

impl CatalogCommit {
    /// A commit of `tables` without a connector cursor (native ingest).
    pub fn tables(tables: Vec<TableCommit>) -> Self {
        Self {
            commit_id: Uuid::now_v7(),
            cursor: None,
            tables,
            open_write: None,
        }
    }

    /// A sync commit: `tables` and the cursor advance to `position` (the next `_kyma_seq`
    /// and the source id kept as they are), under `claim`.
    pub fn sync(
        claim: &ConnectorClaim,
        position: impl Into<String>,
        tables: Vec<TableCommit>,
    ) -> Self {
        let committed = claim.cursor.as_ref().map(|c| &c.value);
        Self {
            commit_id: Uuid::now_v7(),
            cursor: Some(CursorAdvance {
                claim: claim.fence.clone(),
                base_cursor_revision: claim.cursor.as_ref().map_or(0, |c| c.mod_revision),
                position: position.into(),
                next_seq: committed.map_or(0, |c| c.next_seq),
                source_id: committed.and_then(|c| c.source_id.clone()),
            }),
            tables,
            open_write: None,
        }
    }
}

/// Refuses a commit that touches nothing, or a table twice.
fn check_commit(commit: &CatalogCommit) -> Result<(), CatalogError> {
    if commit.tables.is_empty() && commit.cursor.is_none() {
        return Err(CatalogError::invalid(
            "commit",
            "touches no table and no cursor",
        ));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = commit.tables.iter().find(|t| !seen.insert(&t.table)) {
        return Err(CatalogError::invalid(
            "commit",
            format!("table {} appears twice", dup.table),
        ));
    }
    Ok(())
}

/// The current values a conflicting commit rebases on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitConflict {
    /// The connector's committed cursor (sync commits).
    pub cursor: Option<Versioned<SourceCursor>>,
    /// Every table of the commit as it is now.
    pub tables: Vec<TableState>,
}

/// What a commit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Installed at this revision (the new `mod_revision` of everything it wrote).
    Committed {
        /// The commit's revision.
        revision: Revision,
    },
    /// Someone else committed first; nothing was written. Rebase on these and retry.
    Conflict(CommitConflict),
}

/// A worker's presence in the catalog: a lease kept alive in the background. Dropping it stops
/// the keep-alives without revoking (as a crash would: the lease lapses after its TTL);
/// [`WorkerSession::close`] revokes it at once.
#[derive(Debug)]
pub struct WorkerSession {
    worker_id: String,
    lease: LeaseId,
    lost: watch::Receiver<bool>,
    keeper: tokio::task::JoinHandle<()>,
    kv: Arc<dyn KvBackend>,
}

impl std::fmt::Debug for dyn KvBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KvBackend")
    }
}

impl WorkerSession {
    /// The worker's id.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// The backend lease behind the session.
    pub fn lease(&self) -> LeaseId {
        self.lease
    }

    /// Whether the lease has lapsed: everything claimed under it may be taken over.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Resolves once the lease has lapsed.
    pub async fn lost(&self) {
        let mut lost = self.lost.clone();
        // An error means the keeper ended, which it only does once the lease is lost.
        let _ = lost.wait_for(|l| *l).await;
    }

    /// Revokes the lease now, releasing every claim made under it.
    pub async fn close(self) -> Result<(), CatalogError> {
        self.keeper.abort();
        self.kv.revoke_lease(self.lease).await
    }
}

impl Drop for WorkerSession {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// A worker's exclusive hold on a connector, at one fencing epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectorClaim {
    /// What fences this claim's commits.
    pub fence: ClaimFence,
    /// The cursor committed when the claim was made: where syncing resumes.
    pub cursor: Option<Versioned<SourceCursor>>,
}

/// One change seen by a catalog watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogEvent {
    /// A table was created, committed to, or widened.
    TableChanged(TableRef),
    /// A table was dropped.
    TableDropped(TableRef),
    /// A connector's spec, desired state, status, cursor, epoch or holder changed.
    ConnectorChanged(String),
    /// A connector was deleted.
    ConnectorDeleted(String),
    /// A worker came or went.
    WorkerChanged(String),
}

/// The changes of one catalog revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogChange {
    /// The revision.
    pub revision: Revision,
    /// What changed, each thing once.
    pub events: Vec<CatalogEvent>,
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CatalogError> {
    serde_json::to_vec(value)
        .map_err(|e| CatalogError::Storage(format!("cannot encode a catalog value: {e}")))
}

pub(crate) fn decode<T: DeserializeOwned>(kv: &KeyValue) -> Result<T, CatalogError> {
    serde_json::from_slice(&kv.value).map_err(|e| CatalogError::Corrupt {
        key: String::from_utf8_lossy(&kv.key).into_owned(),
        reason: e.to_string(),
    })
}

pub(crate) fn decode_versioned<T: DeserializeOwned>(
    kv: &KeyValue,
) -> Result<Versioned<T>, CatalogError> {
    Ok(Versioned {
        value: decode(kv)?,
        mod_revision: kv.mod_revision,
    })
}

pub(crate) fn revision_of(kv: &Option<KeyValue>) -> Revision {
    kv.as_ref().map_or(0, |kv| kv.mod_revision)
}

impl Catalog {
    /// A catalog on `kv`, with every key under `prefix`.
    pub fn new(kv: Arc<dyn KvBackend>, prefix: &str) -> Self {
        Self {
            kv,
            keys: Keys::new(prefix),
            retry_for: DEFAULT_RETRY_FOR,
        }
    }

    /// Opens the catalog at `location` (etcd endpoints, or an embedded file).
    pub async fn open(location: &CatalogLocation) -> Result<Self, CatalogError> {
        match location {
            CatalogLocation::Etcd { endpoints, prefix } => {
                let backend = crate::kv::etcd::EtcdBackend::connect(endpoints).await?;
                Ok(Self::new(Arc::new(backend), prefix))
            }
            CatalogLocation::Embedded { path } => {
                let backend = crate::kv::embedded::EmbeddedBackend::open(path).await?;
                Ok(Self::new(Arc::new(backend), ""))
            }
        }
    }

    /// How long commits keep retrying while the backend is unavailable (default 30 s).
    pub fn with_retry_for(mut self, retry_for: Duration) -> Self {
        self.retry_for = retry_for;
        self
    }

    /// The key layout in use.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Checks that the backend answers; returns its current revision.
    pub async fn ping(&self) -> Result<Revision, CatalogError> {
        Ok(self.kv.get_many(&[]).await?.0)
    }

    // ----- the commit ---------------------------------------------------------------------

    /// Applies `commit` atomically. See the module docs for the guarantees.
    pub async fn commit(&self, commit: &CatalogCommit) -> Result<CommitOutcome, CatalogError> {
        let deadline = tokio::time::Instant::now() + self.retry_for;
        let mut attempt = 0;
        loop {
            match self.try_commit(commit).await {
                Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, commit_id = %commit.commit_id, "catalog commit unavailable; retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }

    /// One attempt: read the shards the commit writes, build the transaction on them, run it.
    async fn try_commit(&self, commit: &CatalogCommit) -> Result<CommitOutcome, CatalogError> {
        check_commit(commit)?;
        let shard_keys: Vec<Vec<u8>> = commit
            .tables
            .iter()
            .filter(|t| t.sync.is_some())
            .map(|t| self.keys.sync_shard_of(&t.table))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let (_, kvs) = self.kv.get_many(&shard_keys).await?;
        let mut shards = BTreeMap::new();
        for (key, kv) in shard_keys.into_iter().zip(&kvs) {
            shards.insert(key, read_shard(kv)?);
        }
        let stale = commit.tables.iter().filter(|t| t.sync.is_some()).any(|t| {
            shards
                .get(&self.keys.sync_shard_of(&t.table))
                .is_none_or(|(_, revision)| *revision != t.base_snapshot_revision)
        });
        if stale {
            // Another commit wrote one of the shards since the caller read it (or an earlier
            // attempt of this one landed): resolve as a failed compare would.
            return self.resolve_failed_commit(commit).await;
        }
        let txn = self.commit_txn(commit, shards)?;
        let outcome = self.kv.txn(txn).await?;
        if outcome.succeeded {
            return Ok(CommitOutcome::Committed {
                revision: outcome.revision,
            });
        }
        self.resolve_failed_commit(commit).await
    }

    fn cursor_keys(&self, cursor: &CursorAdvance) -> Vec<Vec<u8>> {
        let name = &cursor.claim.connector;
        vec![
            self.keys.connector(name, ConnectorKey::Epoch),
            self.keys.connector(name, ConnectorKey::Cursor),
        ]
    }

    /// The transaction of `commit`, on `shards` (the current values of the shards it writes,
    /// by key).
    fn commit_txn(
        &self,
        commit: &CatalogCommit,
        mut shards: BTreeMap<Vec<u8>, ReadShard>,
    ) -> Result<Txn, CatalogError> {
        let now = now_ms();
        let mut txn = Txn::default();
        for (shard, _) in shards.values_mut() {
            shard.begin_write();
        }
        if let Some(cursor) = &commit.cursor {
            self.advance_cursor(&mut txn, cursor, commit.commit_id, now)?;
        }
        if let Some(write) = &commit.open_write {
            txn.compares
                .push(Compare::mod_revision(write.key.clone(), write.revision));
            txn.on_success.push(Op::delete(write.key.clone()));
        }
        for table in &commit.tables {
            let snapshot = TableSnapshot {
                commit_id: Some(commit.commit_id),
                committed_at_ms: now,
                ..table.snapshot.clone()
            };
            match &table.sync {
                Some(sync) => {
                    let key = self.keys.sync_shard_of(&table.table);
                    if let Some((shard, _)) = shards.get_mut(&key) {
                        shard.set(&table.table, snapshot, sync.clone());
                    }
                }
                None => self.advance_native(&mut txn, table, &snapshot)?,
            }
            if let Some(schema) = &table.new_schema {
                self.widen_in(&mut txn, table, schema)?;
            }
        }
        for (key, (shard, revision)) in shards {
            txn.compares
                .push(Compare::mod_revision(key.clone(), revision));
            txn.on_success.push(Op::put(key, encode(&shard)?));
        }
        Ok(txn)
    }

    /// The cursor part of a commit: the claim's epoch and the base cursor compared, the new
    /// cursor put.
    fn advance_cursor(
        &self,
        txn: &mut Txn,
        cursor: &CursorAdvance,
        commit_id: Uuid,
        now: i64,
    ) -> Result<(), CatalogError> {
        let [epoch_key, cursor_key] = [0, 1].map(|i| self.cursor_keys(cursor)[i].clone());
        txn.compares.push(Compare::mod_revision(
            epoch_key,
            cursor.claim.epoch_revision,
        ));
        txn.compares.push(Compare::mod_revision(
            cursor_key.clone(),
            cursor.base_cursor_revision,
        ));
        let value = SourceCursor {
            position: cursor.position.clone(),
            next_seq: cursor.next_seq,
            source_id: cursor.source_id.clone(),
            commit_id,
            epoch: cursor.claim.epoch,
            committed_at_ms: now,
        };
        txn.on_success.push(Op::put(cursor_key, encode(&value)?));
        Ok(())
    }

    /// A native table's part of a commit: its snapshot and schema compared, its snapshot put.
    fn advance_native(
        &self,
        txn: &mut Txn,
        table: &TableCommit,
        snapshot: &TableSnapshot,
    ) -> Result<(), CatalogError> {
        txn.compares.push(Compare::mod_revision(
            self.keys.table_snapshot(&table.table),
            table.base_snapshot_revision,
        ));
        txn.compares.push(Compare::mod_revision(
            self.keys.table_schema(&table.table),
            table.base_schema_revision,
        ));
        txn.on_success.push(Op::put(
            self.keys.table_snapshot(&table.table),
            encode(snapshot)?,
        ));
        Ok(())
    }

    /// A commit's schema widening: the schema compared (a native table's part compares it
    /// already) and the new version put.
    fn widen_in(
        &self,
        txn: &mut Txn,
        table: &TableCommit,
        schema: &TableSchema,
    ) -> Result<(), CatalogError> {
        if table.sync.is_some() {
            txn.compares.push(Compare::mod_revision(
                self.keys.table_schema(&table.table),
                table.base_schema_revision,
            ));
        }
        txn.on_success.push(Op::put(
            self.keys.table_schema(&table.table),
            encode(schema)?,
        ));
        txn.on_success.push(Op::put(
            self.keys.table_schema_version(&table.table, schema.version),
            encode(schema)?,
        ));
        Ok(())
    }

    /// Turns a failed commit into fenced, already committed, lapsed, or a conflict to rebase
    /// on, from a fresh read of what it compared.
    async fn resolve_failed_commit(
        &self,
        commit: &CatalogCommit,
    ) -> Result<CommitOutcome, CatalogError> {
        let mut current_cursor = None;
        if let Some(advance) = &commit.cursor {
            let (_, reads) = self.kv.get_many(&self.cursor_keys(advance)).await?;
            let [epoch_kv, cursor_kv] = reads.as_slice() else {
                return Err(CatalogError::Storage("a cursor read lost its keys".into()));
            };
            if revision_of(epoch_kv) != advance.claim.epoch_revision {
                let current = epoch_kv
                    .as_ref()
                    .map(decode::<u64>)
                    .transpose()?
                    .unwrap_or(0);
                return Err(CatalogError::Fenced {
                    connector: advance.claim.connector.clone(),
                    held: advance.claim.epoch,
                    current,
                });
            }
            current_cursor = cursor_kv
                .as_ref()
                .map(decode_versioned::<SourceCursor>)
                .transpose()?;
            if let Some(c) = &current_cursor
                && c.value.commit_id == commit.commit_id
            {
                return Ok(CommitOutcome::Committed {
                    revision: c.mod_revision,
                });
            }
        }
        let names: Vec<TableRef> = commit.tables.iter().map(|t| t.table.clone()).collect();
        let (_, tables) = self.tables(&names).await?;
        if commit.cursor.is_none()
            && !tables.is_empty()
            && tables
                .iter()
                .all(|t| t.snapshot.value.commit_id == Some(commit.commit_id))
        {
            return Ok(CommitOutcome::Committed {
                revision: tables[0].snapshot.mod_revision,
            });
        }
        if let Some(write) = &commit.open_write {
            let (_, reads) = self.kv.get_many(std::slice::from_ref(&write.key)).await?;
            if revision_of(&reads[0]) != write.revision {
                return Err(CatalogError::WriteLapsed(
                    String::from_utf8_lossy(&write.key).into_owned(),
                ));
            }
        }
        Ok(CommitOutcome::Conflict(CommitConflict {
            cursor: current_cursor,
            tables,
        }))
    }

    // ----- connectors ---------------------------------------------------------------------

    /// Registers a connector (running). Its URL must not carry a password.
    pub async fn create_connector(&self, spec: &ConnectorSpec) -> Result<(), CatalogError> {
        self.create_connector_with_status(spec, &ConnectorStatus::default())
            .await
    }

    /// Registers a connector (running) with a first status (e.g. the warnings registration
    /// found). Its URL must not carry a password.
    pub async fn create_connector_with_status(
        &self,
        spec: &ConnectorSpec,
        status: &ConnectorStatus,
    ) -> Result<(), CatalogError> {
        validate_identifier("name", &spec.name)?;
        reject_password_in_url(&spec.connection.url)?;
        let name = &spec.name;
        let txn = Txn {
            compares: vec![Compare::mod_revision(
                self.keys.connector(name, ConnectorKey::Spec),
                0,
            )],
            on_success: vec![
                Op::put(self.keys.connector(name, ConnectorKey::Spec), encode(spec)?),
                Op::put(
                    self.keys.connector(name, ConnectorKey::Desired),
                    encode(&DesiredState::Running)?,
                ),
                Op::put(
                    self.keys.connector(name, ConnectorKey::Status),
                    encode(status)?,
                ),
            ],
            read_on_failure: Vec::new(),
        };
        if !self.kv.txn(txn).await?.succeeded {
            return Err(CatalogError::AlreadyExists(format!("connector `{name}`")));
        }
        Ok(())
    }

    fn connector_keys(&self, name: &str) -> Vec<Vec<u8>> {
        ConnectorKey::ALL
            .iter()
            .map(|(k, _)| self.keys.connector(name, *k))
            .collect()
    }

    fn decode_connector(
        &self,
        name: &str,
        kvs: &[Option<KeyValue>],
    ) -> Result<ConnectorState, CatalogError> {
        let [spec, desired, status, cursor, epoch, holder, resync] = kvs else {
            return Err(CatalogError::Storage(
                "connector read returned the wrong number of keys".into(),
            ));
        };
        let spec = spec
            .as_ref()
            .ok_or_else(|| CatalogError::NotFound(format!("connector `{name}`")))?;
        Ok(ConnectorState {
            spec: decode(spec)?,
            desired: desired
                .as_ref()
                .map(decode)
                .transpose()?
                .unwrap_or_default(),
            status: status.as_ref().map(decode).transpose()?.unwrap_or_default(),
            cursor: cursor.as_ref().map(decode_versioned).transpose()?,
            epoch: epoch.as_ref().map(decode).transpose()?.unwrap_or(0),
            holder: holder.as_ref().map(decode).transpose()?,
            resync: resync.as_ref().map(decode).transpose()?.unwrap_or_default(),
        })
    }

    /// Reads one connector with its state.
    pub async fn connector(&self, name: &str) -> Result<ConnectorState, CatalogError> {
        let (_, kvs) = self.kv.get_many(&self.connector_keys(name)).await?;
        self.decode_connector(name, &kvs)
    }

    /// Lists every connector, sorted by name.
    pub async fn list_connectors(&self) -> Result<Vec<ConnectorState>, CatalogError> {
        let (_, kvs) = self
            .kv
            .range(self.keys.connectors_root().as_bytes())
            .await?;
        let mut by_name: std::collections::BTreeMap<String, Vec<Option<KeyValue>>> =
            Default::default();
        for kv in kvs {
            let Some(ParsedKey::Connector(name, which)) = self.keys.parse(&kv.key) else {
                continue;
            };
            let Some(slot) = ConnectorKey::ALL.iter().position(|(k, _)| *k == which) else {
                continue;
            };
            by_name
                .entry(name)
                .or_insert_with(|| vec![None; ConnectorKey::ALL.len()])[slot] = Some(kv);
        }
        by_name
            .iter()
            .filter(|(_, kvs)| kvs[0].is_some())
            .map(|(name, kvs)| self.decode_connector(name, kvs))
            .collect()
    }

    /// Deletes a connector and all its state. A worker still holding it is fenced: the epoch
    /// key goes, so its revision can never match again.
    pub async fn delete_connector(&self, name: &str) -> Result<(), CatalogError> {
        let spec_key = self.keys.connector(name, ConnectorKey::Spec);
        let (_, kvs) = self.kv.get_many(std::slice::from_ref(&spec_key)).await?;
        let revision = revision_of(&kvs[0]);
        if revision == 0 {
            return Err(CatalogError::NotFound(format!("connector `{name}`")));
        }
        let txn = Txn {
            compares: vec![Compare::mod_revision(spec_key, revision)],
            on_success: self
                .connector_keys(name)
                .into_iter()
                .map(Op::delete)
                .collect(),
            read_on_failure: Vec::new(),
        };
        if !self.kv.txn(txn).await?.succeeded {
            return Err(CatalogError::Unavailable(format!(
                "connector `{name}` changed while deleting it; retry"
            )));
        }
        Ok(())
    }

    /// Sets whether a connector should run (pause / resume).
    pub async fn set_desired_state(
        &self,
        name: &str,
        desired: DesiredState,
    ) -> Result<(), CatalogError> {
        self.put_if_connector_exists(name, ConnectorKey::Desired, encode(&desired)?)
            .await
    }

    /// Asks whoever syncs connector `name` to copy table `table` ([`crate::table_key`])
    /// again; returns the request's number, which the table's
    /// [`TableSyncState::resyncs`](crate::TableSyncState) reaches once it is served.
    pub async fn request_resync(&self, name: &str, table: &str) -> Result<u64, CatalogError> {
        let keys = [
            self.keys.connector(name, ConnectorKey::Spec),
            self.keys.connector(name, ConnectorKey::Resync),
        ];
        for _ in 0..MAX_CAS_ATTEMPTS {
            let (_, kvs) = self.kv.get_many(&keys).await?;
            if kvs[0].is_none() {
                return Err(CatalogError::NotFound(format!("connector `{name}`")));
            }
            let mut requests: BTreeMap<String, u64> =
                kvs[1].as_ref().map(decode).transpose()?.unwrap_or_default();
            let number = requests.get(table).copied().unwrap_or(0) + 1;
            requests.insert(table.to_owned(), number);
            let txn = Txn {
                compares: vec![
                    Compare::mod_revision(keys[0].clone(), revision_of(&kvs[0])),
                    Compare::mod_revision(keys[1].clone(), revision_of(&kvs[1])),
                ],
                on_success: vec![Op::put(keys[1].clone(), encode(&requests)?)],
                read_on_failure: Vec::new(),
            };
            if self.kv.txn(txn).await?.succeeded {
                return Ok(number);
            }
        }
        Err(CatalogError::Unavailable(format!(
            "the resync requests of connector `{name}` kept changing; retry"
        )))
    }

    async fn put_if_connector_exists(
        &self,
        name: &str,
        key: ConnectorKey,
        value: Vec<u8>,
    ) -> Result<(), CatalogError> {
        let spec_key = self.keys.connector(name, ConnectorKey::Spec);
        let (_, kvs) = self.kv.get_many(std::slice::from_ref(&spec_key)).await?;
        let revision = revision_of(&kvs[0]);
        if revision == 0 {
            return Err(CatalogError::NotFound(format!("connector `{name}`")));
        }
        let txn = Txn {
            compares: vec![Compare::mod_revision(spec_key, revision)],
            on_success: vec![Op::put(self.keys.connector(name, key), value)],
            read_on_failure: Vec::new(),
        };
        if !self.kv.txn(txn).await?.succeeded {
            return Err(CatalogError::NotFound(format!("connector `{name}`")));
        }
        Ok(())
    }

    /// Writes a connector's status under a claim: a fenced worker cannot overwrite the status
    /// its successor writes.
    pub async fn put_status(
        &self,
        claim: &ConnectorClaim,
        status: &ConnectorStatus,
    ) -> Result<(), CatalogError> {
        let fence = &claim.fence;
        let epoch_key = self.keys.connector(&fence.connector, ConnectorKey::Epoch);
        let txn = Txn {
            compares: vec![Compare::mod_revision(
                epoch_key.clone(),
                fence.epoch_revision,
            )],
            on_success: vec![Op::put(
                self.keys.connector(&fence.connector, ConnectorKey::Status),
                encode(status)?,
            )],
            read_on_failure: vec![epoch_key],
        };
        let outcome = self.kv.txn(txn).await?;
        if outcome.succeeded {
            return Ok(());
        }
        Err(self.fenced(fence, &outcome.reads[0])?)
    }

    /// A fenced catalog transaction: succeeds only while `fence` is the connector's current
    /// claim ([`CatalogError::Fenced`] once another worker has claimed it, or it was
    /// deleted). Workers run it right before every destructive step at the source.
    pub async fn check_claim(&self, fence: &ClaimFence) -> Result<(), CatalogError> {
        let epoch_key = self.keys.connector(&fence.connector, ConnectorKey::Epoch);
        let txn = Txn {
            compares: vec![Compare::mod_revision(
                epoch_key.clone(),
                fence.epoch_revision,
            )],
            on_success: Vec::new(),
            read_on_failure: vec![epoch_key],
        };
        let outcome = self.kv.txn(txn).await?;
        if outcome.succeeded {
            return Ok(());
        }
        Err(self.fenced(fence, &outcome.reads[0])?)
    }

    fn fenced(
        &self,
        fence: &ClaimFence,
        epoch_kv: &Option<KeyValue>,
    ) -> Result<CatalogError, CatalogError> {
        Ok(CatalogError::Fenced {
            connector: fence.connector.clone(),
            held: fence.epoch,
            current: epoch_kv
                .as_ref()
                .map(decode::<u64>)
                .transpose()?
                .unwrap_or(0),
        })
    }

    // ----- workers ------------------------------------------------------------------------

    /// Registers a live worker under a lease of `ttl`, kept alive in the background (every
    /// third of the TTL) until the session is dropped or closed.
    pub async fn start_session(
        &self,
        worker_id: &str,
        ttl: Duration,
    ) -> Result<WorkerSession, CatalogError> {
        validate_identifier("worker id", worker_id)?;
        let lease = self.kv.grant_lease(ttl).await?;
        let record = WorkerRecord {
            worker_id: worker_id.to_owned(),
            started_at_ms: now_ms(),
        };
        let txn = Txn {
            on_success: vec![Op::put_with_lease(
                self.keys.worker(worker_id),
                encode(&record)?,
                lease,
            )],
            ..Txn::default()
        };
        self.kv.txn(txn).await?;
        let (lost_tx, lost) = watch::channel(false);
        // Weak: a session must not keep a closed catalog's backend (and its file lock) alive.
        let kv = Arc::downgrade(&self.kv);
        let keeper = tokio::spawn(async move {
            let interval = (ttl / 3).max(Duration::from_millis(100));
            let mut last_ok = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(interval).await;
                let Some(kv) = kv.upgrade() else { return };
                match kv.keep_alive(lease).await {
                    Ok(()) => last_ok = tokio::time::Instant::now(),
                    Err(e) if e.is_retryable() && last_ok.elapsed() < ttl => {
                        tracing::warn!(error = %e, "catalog lease keep-alive failed; retrying");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "catalog lease lost");
                        let _ = lost_tx.send(true);
                        return;
                    }
                }
            }
        });
        Ok(WorkerSession {
            worker_id: worker_id.to_owned(),
            lease,
            lost,
            keeper,
            kv: Arc::clone(&self.kv),
        })
    }

    /// Claims a connector for `session`'s worker at a new, higher epoch. `Ok(None)` when another
    /// live worker holds it. The previous holder, if any, is fenced from here on.
    pub async fn claim_connector(
        &self,
        session: &WorkerSession,
        name: &str,
    ) -> Result<Option<ConnectorClaim>, CatalogError> {
        let keys = [
            self.keys.connector(name, ConnectorKey::Spec),
            self.keys.connector(name, ConnectorKey::Epoch),
            self.keys.connector(name, ConnectorKey::Holder),
            self.keys.connector(name, ConnectorKey::Cursor),
        ];
        for _ in 0..MAX_CAS_ATTEMPTS {
            let (_, kvs) = self.kv.get_many(&keys).await?;
            if kvs[0].is_none() {
                return Err(CatalogError::NotFound(format!("connector `{name}`")));
            }
            if kvs[2].is_some() {
                return Ok(None);
            }
            let epoch = kvs[1].as_ref().map(decode::<u64>).transpose()?.unwrap_or(0) + 1;
            let holder = ConnectorHolder {
                worker_id: session.worker_id.clone(),
                epoch,
                claimed_at_ms: now_ms(),
            };
            let txn = Txn {
                compares: vec![
                    Compare::mod_revision(keys[0].clone(), revision_of(&kvs[0])),
                    Compare::mod_revision(keys[1].clone(), revision_of(&kvs[1])),
                    Compare::mod_revision(keys[2].clone(), 0),
                    Compare::mod_revision(keys[3].clone(), revision_of(&kvs[3])),
                ],
                on_success: vec![
                    Op::put(keys[1].clone(), encode(&epoch)?),
                    Op::put_with_lease(keys[2].clone(), encode(&holder)?, session.lease),
                ],
                read_on_failure: Vec::new(),
            };
            let outcome = self.kv.txn(txn).await?;
            if outcome.succeeded {
                return Ok(Some(ConnectorClaim {
                    fence: ClaimFence {
                        connector: name.to_owned(),
                        epoch,
                        epoch_revision: outcome.revision,
                    },
                    cursor: kvs[3].as_ref().map(decode_versioned).transpose()?,
                }));
            }
        }
        Ok(None)
    }

    /// Gives a claim up (the holder key goes; the epoch stays, so the claim stays fenced once
    /// someone else claims).
    pub async fn release_connector(&self, claim: &ConnectorClaim) -> Result<(), CatalogError> {
        let fence = &claim.fence;
        let txn = Txn {
            compares: vec![Compare::mod_revision(
                self.keys.connector(&fence.connector, ConnectorKey::Epoch),
                fence.epoch_revision,
            )],
            on_success: vec![Op::delete(
                self.keys.connector(&fence.connector, ConnectorKey::Holder),
            )],
            read_on_failure: Vec::new(),
        };
        // A failed compare means someone else holds it already: nothing of ours to release.
        self.kv.txn(txn).await?;
        Ok(())
    }

    // ----- open writes --------------------------------------------------------------------

    /// Registers a write of `write.table_ids` that has not committed yet, under `lease` (a
    /// worker's): the garbage collector keeps its files while the registration lives. The
    /// write's commit must carry the registration ([`CatalogCommit::open_write`]).
    pub async fn register_write(
        &self,
        lease: LeaseId,
        write: &crate::model::OpenWrite,
    ) -> Result<WriteRegistration, CatalogError> {
        let key = self.keys.open_write(&Uuid::now_v7().to_string());
        let txn = Txn {
            compares: vec![Compare::mod_revision(key.clone(), 0)],
            on_success: vec![Op::put_with_lease(key.clone(), encode(write)?, lease)],
            read_on_failure: Vec::new(),
        };
        let outcome = self.kv.txn(txn).await?;
        if !outcome.succeeded {
            return Err(CatalogError::Storage(
                "a new write registration key existed already".into(),
            ));
        }
        Ok(WriteRegistration {
            key,
            revision: outcome.revision,
        })
    }

    /// Drops a registration whose write was abandoned (its files are garbage now).
    pub async fn release_write(
        &self,
        registration: &WriteRegistration,
    ) -> Result<(), CatalogError> {
        let txn = Txn {
            compares: vec![Compare::mod_revision(
                registration.key.clone(),
                registration.revision,
            )],
            on_success: vec![Op::delete(registration.key.clone())],
            read_on_failure: Vec::new(),
        };
        self.kv.txn(txn).await.map(|_| ())
    }

    /// Every registered open write.
    pub async fn open_writes(&self) -> Result<Vec<crate::model::OpenWrite>, CatalogError> {
        let (_, kvs) = self.kv.range(self.keys.writes_root().as_bytes()).await?;
        kvs.iter().map(decode).collect()
    }

    // ----- watch --------------------------------------------------------------------------

    /// Streams catalog changes from `start_revision` on (use the revision of a read plus one
    /// to miss nothing after that read). Ends with [`CatalogError::Compacted`] when the start is
    /// no longer in the backend's history: re-read, then watch again.
    pub async fn watch(
        &self,
        start_revision: Revision,
    ) -> Result<impl Stream<Item = Result<CatalogChange, CatalogError>> + Send + use<>, CatalogError>
    {
        let keys = self.keys.clone();
        let stream = self
            .kv
            .watch(keys.root().as_bytes(), start_revision)
            .await?;
        Ok(stream.map(move |batch| {
            let batch = batch?;
            Ok(CatalogChange {
                revision: batch.revision,
                events: catalog_events(&keys, &batch.events)?,
            })
        }))
    }
}

/// What the changes of one revision mean, each thing once. A dropped table's other keys (and
/// a deleted connector's) go in the same revision: only the drop is reported.
fn catalog_events(keys: &Keys, changes: &[WatchEvent]) -> Result<Vec<CatalogEvent>, CatalogError> {
    let mut events: Vec<CatalogEvent> = Vec::new();
    for event in changes {
        let deleted = event.kind == WatchEventKind::Delete;
        let meaning = match keys.parse(&event.kv.key) {
            Some(ParsedKey::Table(t, TableKey::Meta)) if deleted => {
                vec![CatalogEvent::TableDropped(t)]
            }
            Some(ParsedKey::Table(t, _)) => vec![CatalogEvent::TableChanged(t)],
            Some(ParsedKey::SyncShard(connector, _)) if !deleted => {
                let shard: crate::shards::SyncShard = decode(&event.kv)?;
                shard
                    .changed
                    .into_iter()
                    .map(|[schema, table]| {
                        CatalogEvent::TableChanged(TableRef::new(connector.clone(), schema, table))
                    })
                    .collect()
            }
            Some(ParsedKey::Connector(n, ConnectorKey::Spec)) if deleted => {
                vec![CatalogEvent::ConnectorDeleted(n)]
            }
            Some(ParsedKey::Connector(n, _)) => vec![CatalogEvent::ConnectorChanged(n)],
            Some(ParsedKey::Worker(w)) => vec![CatalogEvent::WorkerChanged(w)],
            _ => Vec::new(),
        };
        for e in meaning {
            if !events.contains(&e) {
                events.push(e);
            }
        }
    }
    let superseded: Vec<CatalogEvent> = events
        .iter()
        .filter_map(|e| match e {
            CatalogEvent::TableDropped(t) => Some(CatalogEvent::TableChanged(t.clone())),
            CatalogEvent::ConnectorDeleted(n) => Some(CatalogEvent::ConnectorChanged(n.clone())),
            _ => None,
        })
        .collect();
    events.retain(|e| !superseded.contains(e));
    Ok(events)
}

/// Refuses a connector URL that carries a password: secrets come from `secret_ref` only and
/// must never be stored in the catalog.
pub fn reject_password_in_url(url: &str) -> Result<(), CatalogError> {
    let Some((_, rest)) = url.split_once("://") else {
        return Err(CatalogError::invalid(
            "connection.url",
            "must be a URL such as postgres://user@host:5432/db",
        ));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if let Some((userinfo, _)) = authority.rsplit_once('@')
        && userinfo.contains(':')
    {
        return Err(CatalogError::invalid(
            "connection.url",
            "must not contain a password; put it in a secret and name it in connection.secret_ref",
        ));
    }
    Ok(())
}

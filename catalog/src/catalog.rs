//! The catalog API: tables, schemas, the atomic commit, connectors, worker sessions and claims,
//! and the watch.
//!
//! # The commit (exactly once)
//!
//! A [`CatalogCommit`] is one backend transaction that
//! 1. compares the connector's fencing epoch and cursor (for sync commits) and the snapshot and
//!    schema revisions of every table it touches, then
//! 2. installs the new cursor, the new snapshot pointers and any schema widening together.
//!
//! Either all of it lands or none of it does. On a conflict the transaction's failure branch
//! reads back the current values at the same revision, and [`CommitOutcome::Conflict`] hands
//! them to the caller to rebase. A worker whose epoch is no longer current gets
//! [`CatalogError::Fenced`] and can never commit again.
//!
//! Every commit carries a `commit_id`, written into the cursor and every snapshot it installs.
//! Commits are retried here while the backend is unavailable; when an earlier attempt did land
//! (its answer was lost), the retry finds its own `commit_id` and reports
//! [`CommitOutcome::Committed`] instead of applying twice. For sync commits this check is exact:
//! only the epoch holder writes the cursor. For commits without a connector it is exact as long
//! as no other writer committed to the same tables in between; when one did, the outcome is a
//! conflict whose current state the caller checks for its own extents.

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
    Compare, KeyValue, KvBackend, LeaseId, Op, Revision, Txn, WatchEventKind, backoff,
};
use crate::location::CatalogLocation;
use crate::model::{
    Column, ConnectorHolder, ConnectorSpec, ConnectorState, ConnectorStatus, DesiredState,
    SourceCursor, TableMeta, TableOrigin, TableRef, TableSchema, TableSnapshot, TableState,
    Versioned, WorkerRecord, now_ms, validate_identifier,
};

/// How long a commit keeps retrying while the backend is unavailable.
const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(30);
/// Optimistic loops (create, widen, claim) give up after this many lost races in a row.
const MAX_CAS_ATTEMPTS: usize = 64;

/// Handle on the catalog. Cheap to clone.
#[derive(Clone)]
pub struct Catalog {
    kv: Arc<dyn KvBackend>,
    keys: Keys,
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
        })
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
}

impl CatalogCommit {
    /// A commit of `tables` without a connector cursor (native ingest).
    pub fn tables(tables: Vec<TableCommit>) -> Self {
        Self {
            commit_id: Uuid::now_v7(),
            cursor: None,
            tables,
        }
    }

    /// A sync commit: `tables` and the cursor advance, under `claim`.
    pub fn sync(
        claim: &ConnectorClaim,
        position: impl Into<String>,
        tables: Vec<TableCommit>,
    ) -> Self {
        Self {
            commit_id: Uuid::now_v7(),
            cursor: Some(CursorAdvance {
                claim: claim.fence.clone(),
                base_cursor_revision: claim.cursor.as_ref().map_or(0, |c| c.mod_revision),
                position: position.into(),
            }),
            tables,
        }
    }
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

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CatalogError> {
    serde_json::to_vec(value)
        .map_err(|e| CatalogError::Storage(format!("cannot encode a catalog value: {e}")))
}

fn decode<T: DeserializeOwned>(kv: &KeyValue) -> Result<T, CatalogError> {
    serde_json::from_slice(&kv.value).map_err(|e| CatalogError::Corrupt {
        key: String::from_utf8_lossy(&kv.key).into_owned(),
        reason: e.to_string(),
    })
}

fn decode_versioned<T: DeserializeOwned>(kv: &KeyValue) -> Result<Versioned<T>, CatalogError> {
    Ok(Versioned {
        value: decode(kv)?,
        mod_revision: kv.mod_revision,
    })
}

fn revision_of(kv: &Option<KeyValue>) -> Revision {
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

    // ----- tables -------------------------------------------------------------------------

    /// Creates an empty table (snapshot version 0) with its first schema.
    pub async fn create_table(
        &self,
        table: &TableRef,
        origin: TableOrigin,
        columns: Vec<Column>,
    ) -> Result<TableState, CatalogError> {
        table.validate()?;
        let schema = TableSchema::initial(columns)?;
        let meta = TableMeta {
            id: Uuid::now_v7(),
            origin,
            created_at_ms: now_ms(),
        };
        let snapshot = TableSnapshot {
            version: 0,
            schema_version: schema.version,
            manifest: None,
            commit_id: None,
            committed_at_ms: meta.created_at_ms,
        };
        let txn = Txn {
            compares: vec![Compare::mod_revision(self.keys.table_meta(table), 0)],
            on_success: vec![
                Op::put(self.keys.table_meta(table), encode(&meta)?),
                Op::put(self.keys.table_schema(table), encode(&schema)?),
                Op::put(
                    self.keys.table_schema_version(table, schema.version),
                    encode(&schema)?,
                ),
                Op::put(self.keys.table_snapshot(table), encode(&snapshot)?),
            ],
            read_on_failure: Vec::new(),
        };
        let outcome = self.kv.txn(txn).await?;
        if !outcome.succeeded {
            return Err(CatalogError::AlreadyExists(format!("table {table}")));
        }
        let at = outcome.revision;
        Ok(TableState {
            table: table.clone(),
            meta,
            schema: Versioned {
                value: schema,
                mod_revision: at,
            },
            snapshot: Versioned {
                value: snapshot,
                mod_revision: at,
            },
        })
    }

    /// Drops a table: its keys go; its files are left to garbage collection.
    pub async fn drop_table(&self, table: &TableRef) -> Result<(), CatalogError> {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let (_, kvs) = self.kv.range(&self.keys.table_all(table)).await?;
            let guarded = self.table_keys(table);
            let compares: Vec<Compare> = guarded
                .iter()
                .map(|key| {
                    Compare::mod_revision(
                        key.clone(),
                        kvs.iter()
                            .find(|kv| &kv.key == key)
                            .map_or(0, |kv| kv.mod_revision),
                    )
                })
                .collect();
            if compares
                .iter()
                .all(|Compare::ModRevision { revision, .. }| *revision == 0)
            {
                return Err(CatalogError::NotFound(format!("table {table}")));
            }
            // Comparing meta, schema and snapshot means no commit or widening slipped in after
            // the range read, so every key of the table is in `kvs`.
            let txn = Txn {
                compares,
                on_success: kvs.into_iter().map(|kv| Op::delete(kv.key)).collect(),
                read_on_failure: Vec::new(),
            };
            if self.kv.txn(txn).await?.succeeded {
                return Ok(());
            }
        }
        Err(CatalogError::Unavailable(format!(
            "table {table} kept changing while dropping it; retry"
        )))
    }

    /// Reads one table.
    pub async fn table(&self, table: &TableRef) -> Result<TableState, CatalogError> {
        let (_, mut states) = self.tables(std::slice::from_ref(table)).await?;
        states
            .pop()
            .ok_or_else(|| CatalogError::NotFound(format!("table {table}")))
    }

    /// Reads several tables at one catalog revision (a consistent view across tables).
    pub async fn tables(
        &self,
        tables: &[TableRef],
    ) -> Result<(Revision, Vec<TableState>), CatalogError> {
        let keys: Vec<Vec<u8>> = tables.iter().flat_map(|t| self.table_keys(t)).collect();
        let (revision, values) = self.kv.get_many(&keys).await?;
        let states = tables
            .iter()
            .zip(values.chunks(3))
            .map(|(t, kvs)| {
                self.decode_table(t, kvs)?
                    .ok_or_else(|| CatalogError::NotFound(format!("table {t}")))
            })
            .collect::<Result<_, _>>()?;
        Ok((revision, states))
    }

    fn table_keys(&self, table: &TableRef) -> [Vec<u8>; 3] {
        [
            self.keys.table_meta(table),
            self.keys.table_schema(table),
            self.keys.table_snapshot(table),
        ]
    }

    fn decode_table(
        &self,
        table: &TableRef,
        kvs: &[Option<KeyValue>],
    ) -> Result<Option<TableState>, CatalogError> {
        let [Some(meta), Some(schema), Some(snapshot)] = kvs else {
            return Ok(None);
        };
        Ok(Some(TableState {
            table: table.clone(),
            meta: decode(meta)?,
            schema: decode_versioned(schema)?,
            snapshot: decode_versioned(snapshot)?,
        }))
    }

    /// Lists every table, or those of one catalog, at one revision, sorted by name.
    pub async fn list_tables(
        &self,
        catalog: Option<&str>,
    ) -> Result<(Revision, Vec<TableState>), CatalogError> {
        let prefix = match catalog {
            Some(c) => self.keys.catalog_prefix(c),
            None => self.keys.tables_root(),
        };
        let (revision, kvs) = self.kv.range(prefix.as_bytes()).await?;
        let mut parts: std::collections::BTreeMap<TableRef, [Option<KeyValue>; 3]> =
            Default::default();
        for kv in kvs {
            let Some(ParsedKey::Table(table, which)) = self.keys.parse(&kv.key) else {
                continue;
            };
            let slot = match which {
                TableKey::Meta => 0,
                TableKey::Schema => 1,
                TableKey::Snapshot => 2,
                TableKey::SchemaHistory => continue,
            };
            parts.entry(table).or_default()[slot] = Some(kv);
        }
        let mut states = Vec::with_capacity(parts.len());
        for (table, kvs) in parts {
            if let Some(state) = self.decode_table(&table, &kvs)? {
                states.push(state);
            }
        }
        Ok((revision, states))
    }

    /// Every schema version a table has had, oldest first.
    pub async fn schema_history(&self, table: &TableRef) -> Result<Vec<TableSchema>, CatalogError> {
        let prefix = String::from_utf8_lossy(&self.keys.table_schema_version(table, 0))
            .trim_end_matches('0')
            .to_owned();
        let (_, kvs) = self.kv.range(prefix.as_bytes()).await?;
        kvs.iter().map(decode).collect()
    }

    /// Widens a table's schema to hold `columns`, rebasing on concurrent widenings until it
    /// lands. Returns the schema now current (unchanged when nothing needed widening).
    pub async fn widen_schema(
        &self,
        table: &TableRef,
        columns: &[Column],
    ) -> Result<Versioned<TableSchema>, CatalogError> {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let state = self.table(table).await?;
            let Some(widened) = state.schema.value.widen(table, columns)? else {
                return Ok(state.schema);
            };
            let txn = Txn {
                compares: vec![Compare::mod_revision(
                    self.keys.table_schema(table),
                    state.schema.mod_revision,
                )],
                on_success: vec![
                    Op::put(self.keys.table_schema(table), encode(&widened)?),
                    Op::put(
                        self.keys.table_schema_version(table, widened.version),
                        encode(&widened)?,
                    ),
                ],
                read_on_failure: Vec::new(),
            };
            let outcome = self.kv.txn(txn).await?;
            if outcome.succeeded {
                return Ok(Versioned {
                    value: widened,
                    mod_revision: outcome.revision,
                });
            }
        }
        Err(CatalogError::Unavailable(format!(
            "schema of {table} kept changing under {MAX_CAS_ATTEMPTS} attempts to widen it"
        )))
    }

    // ----- the commit ---------------------------------------------------------------------

    /// Applies `commit` atomically. See the module docs for the guarantees.
    pub async fn commit(&self, commit: &CatalogCommit) -> Result<CommitOutcome, CatalogError> {
        let txn = self.commit_txn(commit)?;
        let deadline = tokio::time::Instant::now() + self.retry_for;
        let mut attempt = 0;
        let outcome = loop {
            match self.kv.txn(txn.clone()).await {
                Ok(outcome) => break outcome,
                Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, commit_id = %commit.commit_id, "catalog commit unavailable; retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        };
        if outcome.succeeded {
            return Ok(CommitOutcome::Committed {
                revision: outcome.revision,
            });
        }
        self.resolve_failed_commit(commit, &outcome.reads)
    }

    fn commit_txn(&self, commit: &CatalogCommit) -> Result<Txn, CatalogError> {
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
        let now = now_ms();
        let mut txn = Txn::default();
        if let Some(cursor) = &commit.cursor {
            let name = &cursor.claim.connector;
            txn.compares.push(Compare::mod_revision(
                self.keys.connector(name, ConnectorKey::Epoch),
                cursor.claim.epoch_revision,
            ));
            txn.compares.push(Compare::mod_revision(
                self.keys.connector(name, ConnectorKey::Cursor),
                cursor.base_cursor_revision,
            ));
            let value = SourceCursor {
                position: cursor.position.clone(),
                commit_id: commit.commit_id,
                epoch: cursor.claim.epoch,
                committed_at_ms: now,
            };
            txn.on_success.push(Op::put(
                self.keys.connector(name, ConnectorKey::Cursor),
                encode(&value)?,
            ));
            txn.read_on_failure
                .push(self.keys.connector(name, ConnectorKey::Epoch));
            txn.read_on_failure
                .push(self.keys.connector(name, ConnectorKey::Cursor));
        }
        for table in &commit.tables {
            txn.compares.push(Compare::mod_revision(
                self.keys.table_snapshot(&table.table),
                table.base_snapshot_revision,
            ));
            txn.compares.push(Compare::mod_revision(
                self.keys.table_schema(&table.table),
                table.base_schema_revision,
            ));
            let snapshot = TableSnapshot {
                commit_id: Some(commit.commit_id),
                committed_at_ms: now,
                ..table.snapshot.clone()
            };
            txn.on_success.push(Op::put(
                self.keys.table_snapshot(&table.table),
                encode(&snapshot)?,
            ));
            if let Some(schema) = &table.new_schema {
                txn.on_success.push(Op::put(
                    self.keys.table_schema(&table.table),
                    encode(schema)?,
                ));
                txn.on_success.push(Op::put(
                    self.keys.table_schema_version(&table.table, schema.version),
                    encode(schema)?,
                ));
            }
            txn.read_on_failure.extend(self.table_keys(&table.table));
        }
        Ok(txn)
    }

    /// Turns a failed commit's reads into fenced, already-committed, or a conflict to rebase on.
    fn resolve_failed_commit(
        &self,
        commit: &CatalogCommit,
        reads: &[Option<KeyValue>],
    ) -> Result<CommitOutcome, CatalogError> {
        let (cursor_reads, table_reads) =
            reads.split_at(if commit.cursor.is_some() { 2 } else { 0 });
        let mut current_cursor = None;
        if let Some(advance) = &commit.cursor {
            let epoch_kv = &cursor_reads[0];
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
            current_cursor = cursor_reads[1]
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
        let mut tables = Vec::with_capacity(commit.tables.len());
        for (table, kvs) in commit.tables.iter().zip(table_reads.chunks(3)) {
            let state = self
                .decode_table(&table.table, kvs)?
                .ok_or_else(|| CatalogError::NotFound(format!("table {}", table.table)))?;
            tables.push(state);
        }
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
        [
            ConnectorKey::Spec,
            ConnectorKey::Desired,
            ConnectorKey::Status,
            ConnectorKey::Cursor,
            ConnectorKey::Epoch,
            ConnectorKey::Holder,
        ]
        .into_iter()
        .map(|k| self.keys.connector(name, k))
        .collect()
    }

    fn decode_connector(
        &self,
        name: &str,
        kvs: &[Option<KeyValue>],
    ) -> Result<ConnectorState, CatalogError> {
        let [spec, desired, status, cursor, epoch, holder] = kvs else {
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
            let slot = match which {
                ConnectorKey::Spec => 0,
                ConnectorKey::Desired => 1,
                ConnectorKey::Status => 2,
                ConnectorKey::Cursor => 3,
                ConnectorKey::Epoch => 4,
                ConnectorKey::Holder => 5,
            };
            by_name.entry(name).or_insert_with(|| vec![None; 6])[slot] = Some(kv);
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
            let mut events: Vec<CatalogEvent> = Vec::new();
            for event in &batch.events {
                let deleted = event.kind == WatchEventKind::Delete;
                let catalog_event = match keys.parse(&event.kv.key) {
                    Some(ParsedKey::Table(t, TableKey::Meta)) if deleted => {
                        CatalogEvent::TableDropped(t)
                    }
                    Some(ParsedKey::Table(t, _)) => CatalogEvent::TableChanged(t),
                    Some(ParsedKey::Connector(n, ConnectorKey::Spec)) if deleted => {
                        CatalogEvent::ConnectorDeleted(n)
                    }
                    Some(ParsedKey::Connector(n, _)) => CatalogEvent::ConnectorChanged(n),
                    Some(ParsedKey::Worker(w)) => CatalogEvent::WorkerChanged(w),
                    None => continue,
                };
                if !events.contains(&catalog_event) {
                    events.push(catalog_event);
                }
            }
            // A dropped table's other keys go in the same revision: report the drop only.
            let dropped: Vec<TableRef> = events
                .iter()
                .filter_map(|e| {
                    if let CatalogEvent::TableDropped(t) = e {
                        Some(t.clone())
                    } else {
                        None
                    }
                })
                .collect();
            events.retain(|e| !matches!(e, CatalogEvent::TableChanged(t) if dropped.contains(t)));
            let deleted: Vec<String> = events
                .iter()
                .filter_map(|e| {
                    if let CatalogEvent::ConnectorDeleted(n) = e {
                        Some(n.clone())
                    } else {
                        None
                    }
                })
                .collect();
            events
                .retain(|e| !matches!(e, CatalogEvent::ConnectorChanged(n) if deleted.contains(n)));
            Ok(CatalogChange {
                revision: batch.revision,
                events,
            })
        }))
    }
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

//! The single-process backend for `kyma standalone`: a redb file on local disk.
//!
//! Durability: every successful write transaction is committed with redb's immediate
//! durability (fsync) before it returns, so a crash after `txn` returns loses nothing.
//!
//! Single process: redb locks the file; a second process (or a second open in this one) gets
//! [`CatalogError::AlreadyOpen`]. Several processes sharing one catalog use etcd.
//!
//! Revisions are stored in the same redb transaction as the data, so reads see a revision that
//! matches what they read. Leases and the watch history live in memory: they belong to this
//! process, so keys attached to a lease are deleted when the store is opened (their holder is
//! gone), and a watch can start from any revision written since the store was opened.
//!
//! Stored record layout (value of the `kv` table): `mod_revision: i64 LE`, `lease: i64 LE`,
//! then the value bytes.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use redb::{Database, DatabaseError, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{Notify, broadcast, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use super::{
    Compare, KeyValue, KvBackend, KvWatchStream, LeaseId, Op, Revision, Txn, TxnOutcome,
    WatchBatch, WatchEvent, WatchEventKind, check_txn_limits,
};
use crate::error::CatalogError;

const KV: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<'_, &str, i64> = TableDefinition::new("meta");
const REVISION_KEY: &str = "revision";
/// Batches kept for watches that start in the past.
const HISTORY_LEN: usize = 16_384;
const RECORD_HEADER: usize = 16;

/// A catalog backend in one redb file, for a single process.
#[derive(Clone)]
pub struct EmbeddedBackend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBackend")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

struct Inner {
    path: PathBuf,
    db: Database,
    /// Serialises writers and guards what lives in memory.
    state: Mutex<State>,
    events: broadcast::Sender<Arc<WatchBatch>>,
    /// When the earliest lease lapses; read by the reaper without touching the store, so an
    /// idle reaper never keeps a closed store open.
    earliest_deadline: Arc<Mutex<Option<Instant>>>,
    /// Woken when a lease is granted or renewed, so the reaper re-reads the deadline.
    leases_changed: Arc<Notify>,
}

struct State {
    revision: Revision,
    next_lease: LeaseId,
    leases: HashMap<LeaseId, Lease>,
    history: VecDeque<Arc<WatchBatch>>,
    /// The oldest revision a watch may start from.
    history_start: Revision,
}

struct Lease {
    ttl: Duration,
    deadline: Instant,
    keys: BTreeSet<Vec<u8>>,
}

fn storage<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> CatalogError {
    move |e| CatalogError::Storage(format!("embedded catalog {what}: {e}"))
}

fn encode_record(mod_revision: Revision, lease: LeaseId, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_HEADER + value.len());
    out.extend_from_slice(&mod_revision.to_le_bytes());
    out.extend_from_slice(&lease.to_le_bytes());
    out.extend_from_slice(value);
    out
}

fn decode_record(key: &[u8], record: &[u8]) -> Result<KeyValue, CatalogError> {
    let corrupt = || CatalogError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: format!(
            "embedded record of {} bytes is shorter than its header",
            record.len()
        ),
    };
    let mod_revision = record
        .get(0..8)
        .and_then(|b| b.try_into().ok())
        .map(i64::from_le_bytes)
        .ok_or_else(corrupt)?;
    let lease = record
        .get(8..16)
        .and_then(|b| b.try_into().ok())
        .map(i64::from_le_bytes)
        .ok_or_else(corrupt)?;
    Ok(KeyValue {
        key: key.to_vec(),
        value: record[RECORD_HEADER..].to_vec(),
        mod_revision,
        lease,
    })
}

impl EmbeddedBackend {
    /// Opens (creating if needed) the store at `path`.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, CatalogError> {
        let path = path.as_ref().to_path_buf();
        let inner = tokio::task::spawn_blocking(move || Inner::open(path))
            .await
            .map_err(storage("open"))??;
        let inner = Arc::new(inner);
        tokio::spawn(reap_leases(
            Arc::downgrade(&inner),
            Arc::clone(&inner.earliest_deadline),
            Arc::clone(&inner.leases_changed),
        ));
        Ok(Self { inner })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, CatalogError> + Send + 'static,
    ) -> Result<T, CatalogError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(storage("task"))?
    }
}

impl Inner {
    fn open(path: PathBuf) -> Result<Self, CatalogError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                CatalogError::Storage(format!(
                    "cannot create the catalog directory {}: {e}",
                    parent.display()
                ))
            })?;
        }
        let db = Database::create(&path).map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen => CatalogError::AlreadyOpen { path: path.clone() },
            other => CatalogError::Storage(format!(
                "cannot open the embedded catalog {}: {other}",
                path.display()
            )),
        })?;
        // Keys attached to leases belonged to the process that last had the store open.
        let write = db.begin_write().map_err(storage("open"))?;
        let revision = {
            let mut meta = write.open_table(META).map_err(storage("open"))?;
            let mut kv = write.open_table(KV).map_err(storage("open"))?;
            let mut revision = meta
                .get(REVISION_KEY)
                .map_err(storage("open"))?
                .map(|g| g.value())
                .unwrap_or(0);
            let mut leased = Vec::new();
            for entry in kv.iter().map_err(storage("open"))? {
                let (key, record) = entry.map_err(storage("open"))?;
                if decode_record(key.value(), record.value())?.lease != 0 {
                    leased.push(key.value().to_vec());
                }
            }
            if !leased.is_empty() {
                for key in &leased {
                    kv.remove(key.as_slice()).map_err(storage("open"))?;
                }
                revision += 1;
                meta.insert(REVISION_KEY, revision)
                    .map_err(storage("open"))?;
            }
            revision
        };
        write.commit().map_err(storage("open"))?;
        let (events, _) = broadcast::channel(1024);
        Ok(Self {
            path,
            db,
            state: Mutex::new(State {
                revision,
                next_lease: 1,
                leases: HashMap::new(),
                history: VecDeque::new(),
                history_start: revision + 1,
            }),
            events,
            earliest_deadline: Arc::new(Mutex::new(None)),
            leases_changed: Arc::new(Notify::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave redb half-written (its transaction is
        // dropped, i.e. aborted), so the state is still consistent: keep going.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records the earliest lease deadline for the reaper and wakes it. Call with the state
    /// lock held, after changing leases.
    fn publish_deadline(&self, state: &State) {
        let earliest = state.leases.values().map(|l| l.deadline).min();
        *self
            .earliest_deadline
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = earliest;
        self.leases_changed.notify_one();
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&redb::ReadOnlyTable<&'static [u8], &'static [u8]>) -> Result<T, CatalogError>,
    ) -> Result<(Revision, T), CatalogError> {
        let read = self.db.begin_read().map_err(storage("read"))?;
        let revision = match read.open_table(META) {
            Ok(meta) => meta
                .get(REVISION_KEY)
                .map_err(storage("read"))?
                .map(|g| g.value())
                .unwrap_or(0),
            Err(redb::TableError::TableDoesNotExist(_)) => 0,
            Err(e) => return Err(storage("read")(e)),
        };
        let kv = read.open_table(KV).map_err(storage("read"))?;
        Ok((revision, f(&kv)?))
    }

    /// Applies `txn` under the writer lock.
    fn apply(&self, txn: Txn) -> Result<TxnOutcome, CatalogError> {
        let mut state = self.lock();
        let write = self.db.begin_write().map_err(storage("write"))?;
        let mut events = Vec::new();
        let new_revision = state.revision + 1;
        {
            let mut kv = write.open_table(KV).map_err(storage("write"))?;
            let current = |kv: &redb::Table<'_, &[u8], &[u8]>,
                           key: &[u8]|
             -> Result<Option<KeyValue>, CatalogError> {
                kv.get(key)
                    .map_err(storage("read"))?
                    .map(|g| decode_record(key, g.value()))
                    .transpose()
            };
            let mut holds = true;
            for compare in &txn.compares {
                let Compare::ModRevision { key, revision } = compare;
                let actual = current(&kv, key)?.map(|kv| kv.mod_revision).unwrap_or(0);
                if actual != *revision {
                    holds = false;
                    break;
                }
            }
            if !holds {
                let reads = txn
                    .read_on_failure
                    .iter()
                    .map(|k| current(&kv, k))
                    .collect::<Result<_, _>>()?;
                return Ok(TxnOutcome {
                    succeeded: false,
                    revision: state.revision,
                    reads,
                });
            }
            for op in &txn.on_success {
                if let Op::Put {
                    lease: Some(lease), ..
                } = op
                {
                    let live = state
                        .leases
                        .get(lease)
                        .is_some_and(|l| l.deadline > Instant::now());
                    if !live {
                        return Err(CatalogError::LeaseExpired(*lease));
                    }
                }
            }
            for op in txn.on_success {
                let previous = current(&kv, op.key())?;
                if let Some(old_lease) = previous.as_ref().map(|p| p.lease).filter(|l| *l != 0)
                    && let Some(lease) = state.leases.get_mut(&old_lease)
                {
                    lease.keys.remove(op.key());
                }
                match op {
                    Op::Put { key, value, lease } => {
                        let lease = lease.unwrap_or(0);
                        kv.insert(
                            key.as_slice(),
                            encode_record(new_revision, lease, &value).as_slice(),
                        )
                        .map_err(storage("write"))?;
                        if let Some(l) = state.leases.get_mut(&lease) {
                            l.keys.insert(key.clone());
                        }
                        events.push(WatchEvent {
                            kind: WatchEventKind::Put,
                            kv: KeyValue {
                                key,
                                value,
                                mod_revision: new_revision,
                                lease,
                            },
                        });
                    }
                    Op::Delete { key } => {
                        if previous.is_some() {
                            kv.remove(key.as_slice()).map_err(storage("write"))?;
                            events.push(delete_event(key, new_revision));
                        }
                    }
                }
            }
        }
        if events.is_empty() {
            // Nothing changed: like etcd, no new revision.
            write.abort().map_err(storage("write"))?;
            return Ok(TxnOutcome {
                succeeded: true,
                revision: state.revision,
                reads: Vec::new(),
            });
        }
        self.commit(write, &mut state, new_revision, events)?;
        Ok(TxnOutcome {
            succeeded: true,
            revision: new_revision,
            reads: Vec::new(),
        })
    }

    /// Commits `write` as `revision` and publishes its events.
    fn commit(
        &self,
        write: redb::WriteTransaction,
        state: &mut State,
        revision: Revision,
        events: Vec<WatchEvent>,
    ) -> Result<(), CatalogError> {
        {
            let mut meta = write.open_table(META).map_err(storage("write"))?;
            meta.insert(REVISION_KEY, revision)
                .map_err(storage("write"))?;
        }
        write.commit().map_err(storage("commit"))?;
        state.revision = revision;
        let batch = Arc::new(WatchBatch { revision, events });
        state.history.push_back(Arc::clone(&batch));
        while state.history.len() > HISTORY_LEN {
            if let Some(dropped) = state.history.pop_front() {
                state.history_start = dropped.revision + 1;
            }
        }
        // No receiver is not an error: nobody is watching.
        let _ = self.events.send(batch);
        Ok(())
    }

    /// Deletes the keys of every lapsed lease, one revision per lease (as etcd does).
    fn expire_lapsed(&self) -> Result<(), CatalogError> {
        let mut state = self.lock();
        let now = Instant::now();
        let lapsed: Vec<LeaseId> = state
            .leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in lapsed {
            if let Some(lease) = state.leases.remove(&id) {
                self.delete_keys(&mut state, lease.keys)?;
            }
        }
        self.publish_deadline(&state);
        Ok(())
    }

    fn delete_keys(&self, state: &mut State, keys: BTreeSet<Vec<u8>>) -> Result<(), CatalogError> {
        if keys.is_empty() {
            return Ok(());
        }
        let revision = state.revision + 1;
        let write = self.db.begin_write().map_err(storage("write"))?;
        let mut events = Vec::new();
        {
            let mut kv = write.open_table(KV).map_err(storage("write"))?;
            for key in keys {
                if kv
                    .remove(key.as_slice())
                    .map_err(storage("write"))?
                    .is_some()
                {
                    events.push(delete_event(key, revision));
                }
            }
        }
        if events.is_empty() {
            write.abort().map_err(storage("write"))?;
            return Ok(());
        }
        self.commit(write, state, revision, events)
    }
}

fn delete_event(key: Vec<u8>, revision: Revision) -> WatchEvent {
    WatchEvent {
        kind: WatchEventKind::Delete,
        kv: KeyValue {
            key,
            value: Vec::new(),
            mod_revision: revision,
            lease: 0,
        },
    }
}

/// Deletes the keys of lapsed leases as their deadlines pass, until the store is dropped. It
/// holds the store only while a lease has actually lapsed.
async fn reap_leases(
    inner: Weak<Inner>,
    earliest: Arc<Mutex<Option<Instant>>>,
    leases_changed: Arc<Notify>,
) {
    loop {
        let notified = leases_changed.notified();
        let deadline = *earliest.lock().unwrap_or_else(|p| p.into_inner());
        if deadline.is_some_and(|d| d <= Instant::now()) {
            let Some(strong) = inner.upgrade() else {
                return;
            };
            match tokio::task::spawn_blocking(move || strong.expire_lapsed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "embedded catalog could not expire leases; retrying")
                }
                Err(_) => return,
            }
        }
        if inner.strong_count() == 0 {
            return;
        }
        // Wake at the deadline, when leases change, and at least every second so that a
        // dropped store is noticed.
        let cap = Instant::now() + Duration::from_secs(1);
        let wake = deadline.map_or(cap, |d| d.min(cap));
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            () = notified => {}
        }
    }
}

#[async_trait]
impl KvBackend for EmbeddedBackend {
    async fn get_many(
        &self,
        keys: &[Vec<u8>],
    ) -> Result<(Revision, Vec<Option<KeyValue>>), CatalogError> {
        let keys = keys.to_vec();
        self.blocking(move |inner| {
            inner.read(|kv| {
                keys.iter()
                    .map(|k| {
                        kv.get(k.as_slice())
                            .map_err(storage("read"))?
                            .map(|g| decode_record(k, g.value()))
                            .transpose()
                    })
                    .collect()
            })
        })
        .await
    }

    async fn range(&self, prefix: &[u8]) -> Result<(Revision, Vec<KeyValue>), CatalogError> {
        let prefix = prefix.to_vec();
        self.blocking(move |inner| {
            inner.read(|kv| {
                let mut out = Vec::new();
                for entry in kv.range(prefix.as_slice()..).map_err(storage("read"))? {
                    let (key, record) = entry.map_err(storage("read"))?;
                    if !key.value().starts_with(&prefix) {
                        break;
                    }
                    out.push(decode_record(key.value(), record.value())?);
                }
                Ok(out)
            })
        })
        .await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, CatalogError> {
        check_txn_limits(&txn)?;
        self.blocking(move |inner| inner.apply(txn)).await
    }

    async fn watch(
        &self,
        prefix: &[u8],
        start_revision: Revision,
    ) -> Result<KvWatchStream, CatalogError> {
        let prefix = prefix.to_vec();
        let filter = move |batch: &WatchBatch| -> Option<WatchBatch> {
            let events: Vec<WatchEvent> = batch
                .events
                .iter()
                .filter(|e| e.kv.key.starts_with(&prefix))
                .cloned()
                .collect();
            (!events.is_empty()).then_some(WatchBatch {
                revision: batch.revision,
                events,
            })
        };
        let (replay, mut live) = {
            let state = self.inner.lock();
            let start = if start_revision <= 0 {
                state.revision + 1
            } else {
                start_revision
            };
            if start < state.history_start {
                return Err(CatalogError::Compacted(state.history_start - 1));
            }
            let replay: Vec<WatchBatch> = state
                .history
                .iter()
                .filter(|b| b.revision >= start)
                .filter_map(|b| filter(b))
                .collect();
            // Subscribed under the lock: nothing committed after the replay can be missed.
            (replay, self.inner.events.subscribe())
        };
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            for batch in replay {
                if tx.send(Ok(batch)).await.is_err() {
                    return;
                }
            }
            loop {
                let received = tokio::select! {
                    r = live.recv() => r,
                    () = tx.closed() => return,
                };
                match received {
                    Ok(batch) => {
                        if let Some(batch) = filter(&batch)
                            && tx.send(Ok(batch)).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = tx.send(Err(CatalogError::Compacted(0))).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, CatalogError> {
        let id = {
            let mut state = self.inner.lock();
            let id = state.next_lease;
            state.next_lease += 1;
            state.leases.insert(
                id,
                Lease {
                    ttl,
                    deadline: Instant::now() + ttl,
                    keys: BTreeSet::new(),
                },
            );
            self.inner.publish_deadline(&state);
            id
        };
        Ok(id)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), CatalogError> {
        {
            let mut state = self.inner.lock();
            match state.leases.get_mut(&lease) {
                Some(l) if l.deadline > Instant::now() => l.deadline = Instant::now() + l.ttl,
                _ => return Err(CatalogError::LeaseExpired(lease)),
            }
            self.inner.publish_deadline(&state);
        }
        Ok(())
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), CatalogError> {
        self.blocking(move |inner| {
            let mut state = inner.lock();
            let Some(removed) = state.leases.remove(&lease) else {
                return Ok(());
            };
            inner.publish_deadline(&state);
            inner.delete_keys(&mut state, removed.keys)
        })
        .await
    }
}

//! The key-value backend the catalog is built on.
//!
//! A backend offers exactly what the catalog needs from etcd, and nothing more:
//!
//! - **Revisions.** Every successful write transaction bumps one global revision; every key
//!   remembers the revision that last modified it (`mod_revision`, 0 when absent). All puts in
//!   one transaction carry the same `mod_revision`.
//! - **Consistent reads.** [`KvBackend::get_many`] and [`KvBackend::range`] read at one revision.
//! - **Compare-and-swap transactions.** [`KvBackend::txn`] applies its operations only if every
//!   compare holds; otherwise it reads back the keys named in `read_on_failure` at the same
//!   revision, so the caller can rebase without another round trip.
//! - **Watches.** [`KvBackend::watch`] streams every change under a prefix from a revision on,
//!   grouped by revision, in order, without gaps. A watch whose start has left the backend's
//!   history ends with [`CatalogError::Compacted`]: re-read and watch again.
//! - **Leases.** Keys put with a lease vanish (with a delete event) when the lease lapses or is
//!   revoked. A lease lapses when no keep-alive reaches the backend within its TTL.
//!
//! Implementations: [`etcd::EtcdBackend`] (production) and [`embedded::EmbeddedBackend`]
//! (single process, on disk). One conformance suite (`catalog/tests/conformance.rs`) runs
//! against both.

pub mod embedded;
pub mod etcd;

use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use futures::Stream;

use crate::error::CatalogError;

/// A backend revision: increases by one with every successful write transaction.
pub type Revision = i64;

/// A backend lease. Keys put with it are deleted when it lapses or is revoked.
pub type LeaseId = i64;

/// One stored key with its revision metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The full key.
    pub key: Vec<u8>,
    /// The value (empty for a delete event).
    pub value: Vec<u8>,
    /// Revision of the transaction that last modified the key.
    pub mod_revision: Revision,
    /// Lease the key is attached to, 0 for none.
    pub lease: LeaseId,
}

/// A condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key was last modified at exactly this revision; 0 means the key is absent.
    ModRevision {
        /// The key compared.
        key: Vec<u8>,
        /// The expected `mod_revision`.
        revision: Revision,
    },
}

impl Compare {
    /// The key was last modified at `revision` (0: the key is absent).
    pub fn mod_revision(key: impl Into<Vec<u8>>, revision: Revision) -> Self {
        Compare::ModRevision {
            key: key.into(),
            revision,
        }
    }

    /// The key the compare is about.
    pub fn key(&self) -> &[u8] {
        match self {
            Compare::ModRevision { key, .. } => key,
        }
    }
}

/// A write applied when a transaction's compares hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Sets a key, optionally attached to a lease.
    Put {
        /// The key written.
        key: Vec<u8>,
        /// The new value.
        value: Vec<u8>,
        /// Lease to attach the key to.
        lease: Option<LeaseId>,
    },
    /// Removes a key (no-op when absent).
    Delete {
        /// The key removed.
        key: Vec<u8>,
    },
}

impl Op {
    /// A put without a lease.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: None,
        }
    }

    /// A put attached to `lease`.
    pub fn put_with_lease(
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        lease: LeaseId,
    ) -> Self {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: Some(lease),
        }
    }

    /// A delete.
    pub fn delete(key: impl Into<Vec<u8>>) -> Self {
        Op::Delete { key: key.into() }
    }

    /// The key the operation writes.
    pub fn key(&self) -> &[u8] {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key,
        }
    }

    /// Bytes the operation puts on the wire (key + value), for request-size limits.
    pub fn encoded_len(&self) -> usize {
        match self {
            Op::Put { key, value, .. } => key.len() + value.len(),
            Op::Delete { key } => key.len(),
        }
    }
}

/// A compare-and-swap transaction.
#[derive(Debug, Clone, Default)]
pub struct Txn {
    /// All must hold for `on_success` to apply.
    pub compares: Vec<Compare>,
    /// Applied atomically when every compare holds.
    pub on_success: Vec<Op>,
    /// Read at the same revision when a compare fails.
    pub read_on_failure: Vec<Vec<u8>>,
}

/// What a transaction did.
#[derive(Debug, Clone)]
pub struct TxnOutcome {
    /// Whether every compare held and the operations were applied.
    pub succeeded: bool,
    /// The revision the transaction executed at (the new revision when it wrote).
    pub revision: Revision,
    /// On failure: the keys of `read_on_failure`, in order.
    pub reads: Vec<Option<KeyValue>>,
}

/// Largest number of operations one transaction may carry (etcd's default `--max-txn-ops`).
pub const MAX_TXN_OPS: usize = 128;

/// Largest request one transaction may send; etcd refuses requests over 1.5 MiB, and we keep a
/// margin for framing.
pub const MAX_TXN_BYTES: usize = 1024 * 1024;

/// The kind of a watched change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchEventKind {
    /// The key was created or modified.
    Put,
    /// The key was deleted (explicitly or by a lapsed lease).
    Delete,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// Put or delete.
    pub kind: WatchEventKind,
    /// The key after the change (for deletes: the key, an empty value and the delete revision).
    pub kv: KeyValue,
}

/// All changes one transaction made under a watched prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchBatch {
    /// The transaction's revision.
    pub revision: Revision,
    /// Its changes under the prefix, in the order applied.
    pub events: Vec<WatchEvent>,
}

/// A stream of watch batches in revision order.
pub type KvWatchStream = Pin<Box<dyn Stream<Item = Result<WatchBatch, CatalogError>> + Send>>;

/// The storage the catalog runs on. See the module docs for the contract.
#[async_trait]
pub trait KvBackend: Send + Sync + 'static {
    /// Reads `keys` at one revision, returned with that revision.
    async fn get_many(
        &self,
        keys: &[Vec<u8>],
    ) -> Result<(Revision, Vec<Option<KeyValue>>), CatalogError>;

    /// Reads every key starting with `prefix`, sorted by key, at one revision.
    async fn range(&self, prefix: &[u8]) -> Result<(Revision, Vec<KeyValue>), CatalogError>;

    /// Runs a compare-and-swap transaction.
    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, CatalogError>;

    /// Streams every change under `prefix` from `start_revision` (inclusive) on.
    async fn watch(
        &self,
        prefix: &[u8],
        start_revision: Revision,
    ) -> Result<KvWatchStream, CatalogError>;

    /// Creates a lease that lapses `ttl` after the last keep-alive.
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, CatalogError>;

    /// Renews a lease; fails with [`CatalogError::LeaseExpired`] when it has already lapsed.
    async fn keep_alive(&self, lease: LeaseId) -> Result<(), CatalogError>;

    /// Revokes a lease now, deleting its keys. Revoking a lapsed lease is not an error.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), CatalogError>;
}

/// Checks a transaction against the limits every backend enforces alike, so that a commit that
/// works on the embedded store cannot fail on etcd for its size.
pub(crate) fn check_txn_limits(txn: &Txn) -> Result<(), CatalogError> {
    let ops = txn
        .compares
        .len()
        .max(txn.on_success.len())
        .max(txn.read_on_failure.len());
    if ops > MAX_TXN_OPS {
        return Err(CatalogError::TooLarge(format!(
            "a catalog transaction may carry at most {MAX_TXN_OPS} operations, this one has {ops}"
        )));
    }
    let bytes: usize = txn.on_success.iter().map(Op::encoded_len).sum::<usize>()
        + txn.compares.iter().map(|c| c.key().len()).sum::<usize>();
    if bytes > MAX_TXN_BYTES {
        return Err(CatalogError::TooLarge(format!(
            "a catalog transaction may carry at most {MAX_TXN_BYTES} bytes, this one has {bytes}"
        )));
    }
    Ok(())
}

/// Retry backoff shared by the backends' reconnect loops: doubles from 50 ms up to 2 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(50u64.saturating_mul(1 << attempt.min(6)).min(2_000))
}

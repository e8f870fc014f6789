//! The production backend: etcd v3.
//!
//! Every call has a request timeout, so an unreachable etcd surfaces as a retryable
//! [`CatalogError::Unavailable`] instead of a hang; the underlying gRPC channel reconnects by
//! itself when etcd comes back. Watches are resumed after a broken stream from the revision after
//! the last one delivered, so a watcher sees every revision exactly once across etcd restarts.

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, ConnectOptions, Error as EtcdError, EventType,
    GetOptions, PutOptions, Txn as EtcdTxn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use super::{
    Compare, KeyValue, KvBackend, KvWatchStream, LeaseId, Op, Revision, Txn, TxnOutcome,
    WatchBatch, WatchEvent, WatchEventKind, backoff, check_txn_limits,
};
use crate::error::CatalogError;

/// How long one etcd request may take before it counts as unavailable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A catalog backend on an etcd cluster.
#[derive(Clone)]
pub struct EtcdBackend {
    client: Client,
}

impl std::fmt::Debug for EtcdBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdBackend").finish_non_exhaustive()
    }
}

impl EtcdBackend {
    /// Connects to the given endpoints (`host:port`, or `http://host:port`).
    pub async fn connect(endpoints: &[String]) -> Result<Self, CatalogError> {
        if endpoints.is_empty() {
            return Err(CatalogError::invalid("catalog", "no etcd endpoint given"));
        }
        let options = ConnectOptions::new()
            .with_timeout(REQUEST_TIMEOUT)
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|e| map_etcd_error(e, "connect"))?;
        Ok(Self { client })
    }
}

/// Maps an etcd client error to the catalog's taxonomy.
fn map_etcd_error(error: EtcdError, what: &str) -> CatalogError {
    match &error {
        EtcdError::GRpcStatus(status) => {
            let message = status.message();
            match status.code() {
                Code::NotFound if message.contains("lease") => CatalogError::LeaseExpired(0),
                Code::OutOfRange if message.contains("compacted") => CatalogError::Compacted(0),
                Code::InvalidArgument if message.contains("too many operations") => {
                    CatalogError::TooLarge(message.to_owned())
                }
                Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Aborted
                | Code::Cancelled
                | Code::ResourceExhausted
                | Code::Unknown
                | Code::Internal => CatalogError::Unavailable(format!("etcd {what}: {message}")),
                _ => CatalogError::Storage(format!("etcd {what}: {message}")),
            }
        }
        EtcdError::InvalidArgs(message) => CatalogError::Storage(format!("etcd {what}: {message}")),
        // Transport, I/O, broken watch or keep-alive streams: the connection, not the request.
        _ => CatalogError::Unavailable(format!("etcd {what}: {error}")),
    }
}

fn convert_kv(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: kv.key().to_vec(),
        value: kv.value().to_vec(),
        mod_revision: kv.mod_revision(),
        lease: kv.lease(),
    }
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Revision {
    header.map(|h| h.revision()).unwrap_or_default()
}

fn gets_of(response: &etcd_client::TxnResponse) -> Vec<Option<KeyValue>> {
    response
        .op_responses()
        .iter()
        .filter_map(|op| match op {
            TxnOpResponse::Get(get) => Some(get.kvs().first().map(convert_kv)),
            _ => None,
        })
        .collect()
}

#[async_trait]
impl KvBackend for EtcdBackend {
    async fn get_many(
        &self,
        keys: &[Vec<u8>],
    ) -> Result<(Revision, Vec<Option<KeyValue>>), CatalogError> {
        if keys.is_empty() {
            let mut client = self.client.kv_client();
            let response = client
                .get(b"\0".to_vec(), None)
                .await
                .map_err(|e| map_etcd_error(e, "read"))?;
            return Ok((header_revision(response.header()), Vec::new()));
        }
        let mut revision = 0;
        let mut values = Vec::with_capacity(keys.len());
        // One transaction per chunk of MAX_TXN_OPS gets; several chunks are pinned to the first
        // chunk's revision so the whole read is at one revision.
        for chunk in keys.chunks(super::MAX_TXN_OPS) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|k| {
                    let options = (revision > 0).then(|| GetOptions::new().with_revision(revision));
                    TxnOp::get(k.clone(), options)
                })
                .collect();
            let response = self
                .client
                .kv_client()
                .txn(EtcdTxn::new().and_then(ops))
                .await
                .map_err(|e| map_etcd_error(e, "read"))?;
            if revision == 0 {
                revision = header_revision(response.header());
            }
            values.extend(gets_of(&response));
        }
        Ok((revision, values))
    }

    async fn range(&self, prefix: &[u8]) -> Result<(Revision, Vec<KeyValue>), CatalogError> {
        let response = self
            .client
            .kv_client()
            .get(prefix.to_vec(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| map_etcd_error(e, "range"))?;
        Ok((
            header_revision(response.header()),
            response.kvs().iter().map(convert_kv).collect(),
        ))
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, CatalogError> {
        check_txn_limits(&txn)?;
        let compares: Vec<EtcdCompare> = txn
            .compares
            .iter()
            .map(|c| match c {
                Compare::ModRevision { key, revision } => {
                    EtcdCompare::mod_revision(key.clone(), CompareOp::Equal, *revision)
                }
            })
            .collect();
        let ops: Vec<TxnOp> = txn
            .on_success
            .into_iter()
            .map(|op| match op {
                Op::Put { key, value, lease } => {
                    TxnOp::put(key, value, lease.map(|l| PutOptions::new().with_lease(l)))
                }
                Op::Delete { key } => TxnOp::delete(key, None),
            })
            .collect();
        let reads: Vec<TxnOp> = txn
            .read_on_failure
            .into_iter()
            .map(|k| TxnOp::get(k, None))
            .collect();
        let response = self
            .client
            .kv_client()
            .txn(EtcdTxn::new().when(compares).and_then(ops).or_else(reads))
            .await
            .map_err(|e| map_etcd_error(e, "transaction"))?;
        let succeeded = response.succeeded();
        Ok(TxnOutcome {
            succeeded,
            revision: header_revision(response.header()),
            reads: if succeeded {
                Vec::new()
            } else {
                gets_of(&response)
            },
        })
    }

    async fn watch(
        &self,
        prefix: &[u8],
        start_revision: Revision,
    ) -> Result<KvWatchStream, CatalogError> {
        let (tx, rx) = mpsc::channel(256);
        let client = self.client.clone();
        let prefix = prefix.to_vec();
        // Open the first watch here so that an unreachable etcd is reported to the caller.
        let first = open_watch(&client, &prefix, start_revision).await?;
        tokio::spawn(run_watch(client, prefix, start_revision, first, tx));
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, CatalogError> {
        let seconds = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let response = self
            .client
            .lease_client()
            .grant(seconds, None)
            .await
            .map_err(|e| map_etcd_error(e, "lease grant"))?;
        Ok(response.id())
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), CatalogError> {
        // The client sends one keep-alive and waits for its answer; a lapsed lease is answered
        // with TTL 0, which the client reports as "lease not found".
        match self.client.lease_client().keep_alive(lease).await {
            Ok(_) => Ok(()),
            Err(EtcdError::LeaseKeepAliveError(message)) if message.contains("not found") => {
                Err(CatalogError::LeaseExpired(lease))
            }
            Err(e) => Err(map_etcd_error(e, "lease keep-alive")),
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), CatalogError> {
        match self.client.lease_client().revoke(lease).await {
            Ok(_) => Ok(()),
            Err(e) => match map_etcd_error(e, "lease revoke") {
                CatalogError::LeaseExpired(_) => Ok(()),
                other => Err(other),
            },
        }
    }
}

async fn open_watch(
    client: &Client,
    prefix: &[u8],
    start_revision: Revision,
) -> Result<etcd_client::WatchStream, CatalogError> {
    let mut options = WatchOptions::new().with_prefix().with_progress_notify();
    if start_revision > 0 {
        options = options.with_start_revision(start_revision);
    }
    client
        .watch_client()
        .watch(prefix.to_vec(), Some(options))
        .await
        .map_err(|e| map_etcd_error(e, "watch"))
}

/// Forwards watch responses to `tx`, reopening the watch after the last delivered revision
/// whenever the stream breaks, until the receiver is dropped.
async fn run_watch(
    client: Client,
    prefix: Vec<u8>,
    start_revision: Revision,
    first: etcd_client::WatchStream,
    tx: mpsc::Sender<Result<WatchBatch, CatalogError>>,
) {
    let mut next_revision = start_revision;
    let mut stream = Some(first);
    let mut attempt = 0u32;
    loop {
        let mut current = match stream.take() {
            Some(s) => s,
            None => match open_watch(&client, &prefix, next_revision).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "etcd watch reconnect failed; retrying");
                    if tx.is_closed() {
                        return;
                    }
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt = attempt.saturating_add(1);
                    continue;
                }
            },
        };
        loop {
            let message = tokio::select! {
                m = current.message() => m,
                () = tx.closed() => return,
            };
            match message {
                Ok(Some(response)) => {
                    attempt = 0;
                    if response.compact_revision() > 0 {
                        let _ = tx
                            .send(Err(CatalogError::Compacted(response.compact_revision())))
                            .await;
                        return;
                    }
                    if response.canceled() {
                        tracing::debug!(
                            reason = response.cancel_reason(),
                            "etcd cancelled the watch; reopening"
                        );
                        break;
                    }
                    for batch in group_events(response.events()) {
                        next_revision = batch.revision + 1;
                        if tx.send(Ok(batch)).await.is_err() {
                            return;
                        }
                    }
                }
                Ok(None) | Err(_) => {
                    tracing::debug!(next_revision, "etcd watch stream broke; reopening");
                    break;
                }
            }
        }
    }
}

/// Groups one response's events by revision (one batch per transaction).
fn group_events(events: &[etcd_client::Event]) -> Vec<WatchBatch> {
    let mut batches: Vec<WatchBatch> = Vec::new();
    for event in events {
        let Some(kv) = event.kv() else { continue };
        let kv = convert_kv(kv);
        let kind = match event.event_type() {
            EventType::Put => WatchEventKind::Put,
            EventType::Delete => WatchEventKind::Delete,
        };
        match batches.last_mut() {
            Some(batch) if batch.revision == kv.mod_revision => {
                batch.events.push(WatchEvent { kind, kv })
            }
            _ => batches.push(WatchBatch {
                revision: kv.mod_revision,
                events: vec![WatchEvent { kind, kv }],
            }),
        }
    }
    batches
}

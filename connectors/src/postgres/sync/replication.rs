//! The replication stream: pg_walstream on its own task.
//!
//! [`PgReplicationStream`] owns a task that reads the slot and forwards decoded pgoutput
//! events over a bounded channel. Reading on a task of its own is what keeps keepalives
//! answered while the worker writes extents or waits on a catalog commit: pg_walstream
//! answers a keepalive while it reads. When the server has sent nothing for
//! [`IDLE_AFTER`], the task reports [`ReplicationMessage::Idle`] with the server's position
//! and sends the worker's acknowledged position, so an idle slot advances.
//!
//! Acknowledgement ([`PgReplicationStream::acknowledge`]) only moves the position the task
//! reports as flushed; the worker calls it after the catalog commit that covers it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pg_walstream::{
    CancellationToken, ChangeEvent, LogicalReplicationStream, ReplicationError,
    ReplicationSlotOptions, ReplicationStreamConfig, RetryConfig, SharedLsnFeedback, StreamingMode,
};
use tokio::sync::mpsc;

use super::setup::SyncNames;
use crate::error::ConnectorError;

/// How long without a message before the stream reports itself idle.
pub const IDLE_AFTER: Duration = Duration::from_millis(250);
/// Messages buffered between the reading task and the worker.
const CHANNEL_MESSAGES: usize = 16 * 1024;

/// What the stream delivers.
#[derive(Debug)]
pub enum ReplicationMessage {
    /// A decoded pgoutput message (begin, change, commit, relation, truncate…).
    Change(Box<ChangeEvent>),
    /// Nothing arrived for a while; the server has sent everything up to `server_lsn`.
    Idle {
        /// The server's WAL position as of its last message or keepalive.
        server_lsn: u64,
    },
}

/// A replication connection that has created the connector's slot and holds its exported
/// snapshot until [`SlotCreation::start`].
pub struct SlotCreation {
    /// The connection that created the slot: its snapshot lives while it stays idle.
    _connection: LogicalReplicationStream,
    snapshot: String,
}

impl std::fmt::Debug for SlotCreation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotCreation")
            .field("snapshot", &self.snapshot)
            .finish_non_exhaustive()
    }
}

/// How a replication connection treats its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotUse {
    /// Stream an existing slot.
    Stream,
    /// Create the connector's slot, exporting its snapshot.
    CreateExporting,
    /// Create a temporary slot (gone with the connection), exporting its snapshot.
    CreateTemporary,
}

fn config(slot: &str, publication: &str, slot_use: SlotUse) -> ReplicationStreamConfig {
    let options = ReplicationSlotOptions {
        snapshot: Some(
            if slot_use == SlotUse::Stream {
                "nothing"
            } else {
                "export"
            }
            .to_owned(),
        ),
        temporary: slot_use == SlotUse::CreateTemporary,
        ..ReplicationSlotOptions::default()
    };
    ReplicationStreamConfig::builder(slot.to_owned(), publication.to_owned())
        .with_protocol_version(1)
        .with_streaming_mode(StreamingMode::Off)
        .with_feedback_interval(Duration::from_secs(1))
        .with_connection_timeout(Duration::from_secs(10))
        .with_health_check_interval(Duration::from_secs(3600))
        .with_retry_config(RetryConfig {
            max_attempts: 1,
            ..RetryConfig::default()
        })
        .with_slot_options(options)
}

/// A replication error in connector terms: everything on the replication connection is
/// retried from the last commit, except a slot or publication that is gone.
fn replication_error(what: &str, e: &ReplicationError) -> ConnectorError {
    let text = e.to_string();
    if text.contains("does not exist") {
        ConnectorError::Source(format!("{what}: {text}"))
    } else {
        ConnectorError::Unreachable {
            field: "connection.url".into(),
            reason: format!("{what}: {text}"),
        }
    }
}

impl SlotCreation {
    /// Creates the connector's slot (it must not exist) with an exported snapshot.
    pub async fn create(conninfo: &str, names: &SyncNames) -> Result<Self, ConnectorError> {
        Self::new(
            conninfo,
            config(&names.slot, &names.publication, SlotUse::CreateExporting),
            &names.slot,
        )
        .await
    }

    /// Creates temporary slot `slot` with an exported snapshot: a consistent point to copy
    /// tables at while the connector's own slot stays where it is. The slot goes with the
    /// connection.
    pub async fn temporary(
        conninfo: &str,
        slot: &str,
        names: &SyncNames,
    ) -> Result<Self, ConnectorError> {
        Self::new(
            conninfo,
            config(slot, &names.publication, SlotUse::CreateTemporary),
            slot,
        )
        .await
    }

    /// Runs on a blocking thread: pg_walstream issues CREATE_REPLICATION_SLOT as a blocking
    /// libpq call, and the server answers it only once every transaction open at that moment
    /// has ended — a long one at the source would otherwise hold a runtime thread (in a
    /// standalone, the query node's too) for as long.
    async fn new(
        conninfo: &str,
        config: ReplicationStreamConfig,
        slot: &str,
    ) -> Result<Self, ConnectorError> {
        let conninfo = conninfo.to_owned();
        let runtime = tokio::runtime::Handle::current();
        let created = tokio::task::spawn_blocking(move || {
            runtime.block_on(async {
                let mut stream = LogicalReplicationStream::new(&conninfo, config)
                    .await
                    .map_err(|e| replication_error("opening a replication connection", &e))?;
                stream
                    .ensure_replication_slot()
                    .await
                    .map_err(|e| replication_error("creating a replication slot", &e))?;
                Ok::<_, ConnectorError>(stream)
            })
        })
        .await
        .map_err(|e| ConnectorError::Source(format!("creating a replication slot: {e}")))?;
        let stream = created?;
        let snapshot = stream
            .exported_snapshot_name()
            .map(str::to_owned)
            .ok_or_else(|| {
                ConnectorError::Source(format!(
                    "replication slot {slot} existed already, so it exported no snapshot"
                ))
            })?;
        Ok(Self {
            _connection: stream,
            snapshot,
        })
    }

    /// The exported snapshot's name (valid while this connection stays idle).
    pub fn snapshot(&self) -> &str {
        &self.snapshot
    }
}

/// A running replication stream. Dropping it stops the reading task and closes the
/// connection.
pub struct PgReplicationStream {
    messages: mpsc::Receiver<Result<ReplicationMessage, ConnectorError>>,
    feedback: Arc<SharedLsnFeedback>,
    received: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for PgReplicationStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgReplicationStream")
            .finish_non_exhaustive()
    }
}

impl Drop for PgReplicationStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PgReplicationStream {
    /// Streams the existing slot from `start_lsn` (the committed cursor).
    pub async fn resume(
        conninfo: &str,
        names: &SyncNames,
        start_lsn: u64,
    ) -> Result<Self, ConnectorError> {
        let stream = LogicalReplicationStream::new(
            conninfo,
            config(&names.slot, &names.publication, SlotUse::Stream),
        )
        .await
        .map_err(|e| replication_error("opening a replication connection", &e))?;
        Self::spawn(stream, start_lsn).await
    }

    async fn spawn(
        mut stream: LogicalReplicationStream,
        start_lsn: u64,
    ) -> Result<Self, ConnectorError> {
        stream
            .start(Some(start_lsn))
            .await
            .map_err(|e| replication_error("starting replication", &e))?;
        let feedback = stream.shared_lsn_feedback.clone();
        let received = Arc::new(AtomicU64::new(start_lsn));
        let (tx, messages) = mpsc::channel(CHANNEL_MESSAGES);
        let task = tokio::spawn(read_stream(stream, tx, received.clone()));
        Ok(Self {
            messages,
            feedback,
            received,
            task,
        })
    }

    /// The next message; `None` once the reading task has ended (after an error it sent).
    pub async fn next(&mut self) -> Option<Result<ReplicationMessage, ConnectorError>> {
        self.messages.recv().await
    }

    /// Reports everything up to `lsn` as durably applied (flush and apply LSN).
    pub fn acknowledge(&self, lsn: u64) {
        self.feedback.update_flushed_lsn(lsn);
        self.feedback.update_applied_lsn(lsn);
    }

    /// The server's WAL position as of the last message or keepalive read.
    pub fn server_lsn(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

/// The reading task: forwards events; when idle, reports it and sends feedback.
async fn read_stream(
    mut stream: LogicalReplicationStream,
    tx: mpsc::Sender<Result<ReplicationMessage, ConnectorError>>,
    received: Arc<AtomicU64>,
) {
    let token = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
    let events = Arc::new(AtomicU64::new(0));
    // The watchdog cancels the current read when no event came for IDLE_AFTER; the read
    // ends cleanly (pg_walstream checks the token between frames) and the loop goes on.
    let watchdog = {
        let token = token.clone();
        let events = events.clone();
        tokio::spawn(async move {
            let mut seen = events.load(Ordering::Relaxed);
            loop {
                tokio::time::sleep(IDLE_AFTER).await;
                let now = events.load(Ordering::Relaxed);
                if now == seen {
                    token.lock().unwrap_or_else(|p| p.into_inner()).cancel();
                }
                seen = now;
            }
        })
    };
    loop {
        let current = token.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let message = match stream.next_event(&current).await {
            Ok(event) => {
                events.fetch_add(1, Ordering::Relaxed);
                received.fetch_max(stream.current_lsn(), Ordering::Relaxed);
                Ok(ReplicationMessage::Change(Box::new(event)))
            }
            Err(ReplicationError::Cancelled(_)) => {
                *token.lock().unwrap_or_else(|p| p.into_inner()) = CancellationToken::new();
                if let Err(e) = stream.send_feedback().await {
                    let _ = tx
                        .send(Err(replication_error("answering the server", &e)))
                        .await;
                    break;
                }
                let server_lsn = stream.current_lsn();
                received.fetch_max(server_lsn, Ordering::Relaxed);
                Ok(ReplicationMessage::Idle { server_lsn })
            }
            Err(e) => Err(replication_error("reading the replication stream", &e)),
        };
        let failed = message.is_err();
        if tx.send(message).await.is_err() || failed {
            break;
        }
    }
    watchdog.abort();
}

//! Sync from MongoDB change streams (SPEC §6; see [`crate::sync`] for the seam).
//!
//! # Design
//!
//! - **Nothing durable at the source.** A change stream keeps no server-side state; the
//!   committed resume token is the whole cursor, so `prepare` creates nothing and `ack`
//!   releases nothing. Source identity = the replica set's name (a sharded cluster: the
//!   config servers' cluster id is not readable by a `read` user, so `sharded`); resuming
//!   on another deployment is refused.
//! - **Snapshot, then stream, exactly once** ([`MongoChangeSource::snapshot`]): open the
//!   change stream at the present and keep its post-batch resume token `R` (the first batch
//!   of a fresh stream is empty); open a snapshot read session and let the server pick its
//!   cluster time `T` (checked: no write can fall between `T` and `R`'s time); copy the
//!   collections in that session. The
//!   snapshot's position is `snapshot:T/R` ([`position`]): the stream resumes after `R`,
//!   and every event at a cluster time ≤ `T` is covered by the copy and dropped for its
//!   table. A copy that outlives the server's snapshot history
//!   (`minSnapshotHistoryWindowInSeconds`, 300 s by default) fails with `SnapshotTooOld`
//!   (error 239), naming that setting.
//! - **Stream** ([`stream`]): one change stream over the databases in scope (a database's
//!   stream when there is one, else the cluster's filtered on `ns.db`), `fullDocument:
//!   updateLookup`, or `whenAvailable` when every collection in scope records pre- and
//!   post-images. Always resumed with `startAfter`, which also passes an invalidate.
//! - **History lost** (error 286): [`ConnectorError::HistoryLost`], definite; the pipeline
//!   fails the connector, or copies everything again under `retention.on_history_lost:
//!   resnapshot`. Never "start from now".
//! - **Schema**: each collection's [`Shape`] is shared by discovery, the copy and the
//!   stream, and only widens ([`crate::mongodb::schema`]).
//!
//! The deployment is reached through [`deployment::Deployment`], so tests drive this logic
//! with an in-process deployment.

pub mod deployment;
pub mod position;
pub mod ranges;
pub mod snapshot;
pub mod stream;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use kyma_catalog::ConnectorSpec;

use self::deployment::{Deployment, DriverDeployment, FullDocument, StreamStart};
use self::position::MongoPosition;
use self::ranges::RangeMark;
use self::snapshot::MongoSnapshot;
use self::stream::MongoChangeStream;
use crate::error::ConnectorError;
use crate::mongodb::Topology;
use crate::mongodb::schema::Shape;
use crate::secrets::SecretResolver;
use crate::sync::{
    ChangeSource, ChangeStream, Fence, Prepared, Resume, RowChange, Snapshot, SourcePosition,
    SourceTable, TableId,
};

/// The collections' shapes, shared by discovery, the copy and the stream.
pub type Shapes = Arc<Mutex<BTreeMap<TableId, Shape>>>;

/// The shapes, locked (a panic elsewhere cannot poison them: they only widen).
pub(crate) fn lock(shapes: &Shapes) -> MutexGuard<'_, BTreeMap<TableId, Shape>> {
    shapes.lock().unwrap_or_else(|p| p.into_inner())
}

/// The change log of one MongoDB connector (see the module doc).
pub struct MongoChangeSource {
    spec: ConnectorSpec,
    deployment: Arc<dyn Deployment>,
    shapes: Shapes,
    /// Whether every collection in scope records post-images.
    images: bool,
}

impl MongoChangeSource {
    /// The change source of connector `spec`, through the driver.
    pub fn new(spec: &ConnectorSpec, secrets: &SecretResolver) -> Self {
        Self::with_deployment(spec, Box::new(DriverDeployment::new(spec, secrets)))
    }

    /// The change source of connector `spec` over `deployment`.
    pub fn with_deployment(spec: &ConnectorSpec, deployment: Box<dyn Deployment>) -> Self {
        Self {
            spec: spec.clone(),
            deployment: Arc::from(deployment),
            shapes: Arc::default(),
            images: false,
        }
    }

    fn full_document(&self) -> FullDocument {
        if self.images {
            FullDocument::WhenAvailable
        } else {
            FullDocument::UpdateLookup
        }
    }

    /// What positions are positions in: the replica set, or the sharded cluster.
    async fn source_id(&self) -> Result<String, ConnectorError> {
        let topology = self.deployment.topology().await?;
        topology.require_change_streams()?;
        Ok(match topology {
            Topology::ReplicaSet(name) => format!("replica set {name}"),
            _ => "sharded cluster".into(),
        })
    }
}

#[async_trait]
impl ChangeSource for MongoChangeSource {
    async fn preflight(&mut self) -> Result<(), ConnectorError> {
        self.deployment.topology().await?.require_change_streams()?;
        let databases: Vec<String> = self.spec.scope.include_schemas.clone();
        let missing = self.deployment.missing_privileges(&databases).await?;
        if missing.is_empty() {
            return Ok(());
        }
        Err(ConnectorError::invalid(
            "connection.url",
            format!(
                "the connector's user lacks {}; grant it the `read` role and `changeStream` on those databases",
                missing.join(", ")
            ),
        ))
    }

    async fn discover(&mut self) -> Result<Vec<SourceTable>, ConnectorError> {
        let collections = self.deployment.collections().await?;
        self.images = !collections.is_empty() && collections.iter().all(|c| c.images);
        let mut shapes = lock(&self.shapes);
        let mut tables = Vec::with_capacity(collections.len());
        for mut collection in collections {
            let shape = shapes
                .entry(collection.id.clone())
                .or_insert_with(|| collection.shape.clone());
            shape.absorb(&collection.shape);
            collection.shape = shape.clone();
            tables.push(collection.source_table());
        }
        Ok(tables)
    }

    async fn prepare(
        &mut self,
        _tables: &[&SourceTable],
        resume: Option<&Resume>,
        fence: &dyn Fence,
    ) -> Result<Prepared, ConnectorError> {
        let source_id = self.source_id().await?;
        match resume {
            Some(resume) => {
                if let Some(recorded) = resume.source_id.as_ref().filter(|r| **r != source_id) {
                    return Err(ConnectorError::Source(format!(
                        "the cursor is a position in {recorded}, but the connector now reaches {source_id}; resync the connector's tables to start over there"
                    )));
                }
                Ok(Prepared {
                    source_id,
                    initial: None,
                })
            }
            None => Ok(Prepared {
                source_id,
                initial: Some(self.snapshot(fence).await?),
            }),
        }
    }

    async fn snapshot(&mut self, _fence: &dyn Fence) -> Result<Box<dyn Snapshot>, ConnectorError> {
        let feed = self
            .deployment
            .watch(StreamStart::Now, self.full_document())
            .await?;
        let token = feed.resume_token().ok_or_else(|| {
            ConnectorError::Changed("the new change stream's first batch carried events, so it gave no resume point before them; opening it again".into())
        })?;
        drop(feed);
        let resume_point = MongoPosition::of_token(&token)?;
        let read = self.deployment.snapshot().await?;
        let time = read.cluster_time();
        // The stream delivers every event at or after the resume point's time; the copy
        // holds every write at or before `time`: no write may fall strictly between.
        let after_snapshot = time
            .1
            .checked_add(1)
            .map_or((time.0 + 1, 0), |i| (time.0, i));
        if resume_point.time > after_snapshot {
            return Err(ConnectorError::Changed(format!(
                "the snapshot's cluster time {}.{} is before the stream's resume point {}, which would leave a gap; taking it again",
                time.0, time.1, resume_point
            )));
        }
        let position = MongoPosition {
            time,
            snapshot: true,
            ..resume_point
        };
        Ok(Box::new(MongoSnapshot::new(
            read,
            &position,
            self.shapes.clone(),
            self.deployment.clone(),
        )))
    }

    async fn stream(
        &mut self,
        from: &SourcePosition,
    ) -> Result<Box<dyn ChangeStream>, ConnectorError> {
        let from = MongoPosition::parse(from)?;
        let feed = self
            .deployment
            .watch(StreamStart::After(from.token), self.full_document())
            .await?;
        Ok(Box::new(MongoChangeStream::new(feed, self.shapes.clone())))
    }

    fn covers(&self, mark: &SourcePosition, txn: &SourcePosition) -> Result<bool, ConnectorError> {
        let txn = MongoPosition::parse(txn)?;
        if RangeMark::is_one(mark) {
            return Ok(RangeMark::parse(mark)?.covers_all(txn.time));
        }
        Ok(MongoPosition::parse(mark)?.covers(&txn))
    }

    fn covers_row(
        &self,
        mark: &SourcePosition,
        txn: &SourcePosition,
        row: &RowChange,
    ) -> Result<bool, ConnectorError> {
        if !RangeMark::is_one(mark) {
            return self.covers(mark, txn);
        }
        let key = row.key_order.as_deref().ok_or_else(|| {
            ConnectorError::Source(format!(
                "{} was copied in _id ranges, and a change came for an `_id` of a type ranges cannot order; resync the table",
                row.table
            ))
        })?;
        Ok(RangeMark::parse(mark)?.covers_key(key, MongoPosition::parse(txn)?.time))
    }

    async fn teardown(&mut self) -> Result<(), ConnectorError> {
        // Nothing of the connector's lives at the source.
        Ok(())
    }
}

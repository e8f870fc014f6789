//! The I/O boundary of MongoDB sync: what the change source asks of the deployment, and the
//! driver's answers ([`DriverDeployment`]). Everything above it (positions, the hand-off,
//! transactions, schema widening, the history-lost policy) is plain logic that tests drive
//! with an in-process deployment.

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use kyma_catalog::{ConnectorSpec, ScopeSpec};
use mongodb::bson::{Bson, Document, Timestamp, doc};
use mongodb::change_stream::ChangeStream;
use mongodb::change_stream::event::ResumeToken;
use mongodb::options::{ChangeStreamOptions, FullDocumentType, SessionOptions};
use mongodb::{Client, ClientSession};

use super::position::ClusterTime;
use super::ranges::Bracket;
use crate::error::ConnectorError;
use crate::mongodb::schema::{self, Collection};
use crate::mongodb::{
    CHANGE_STREAM_HISTORY_LOST, SNAPSHOT_TOO_OLD, Topology, command_code, connect, refused,
    topology,
};
use crate::secrets::SecretResolver;
use crate::sync::TableId;

/// Where a change stream starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamStart {
    /// At the deployment's present.
    Now,
    /// After the event (or post-batch point) of this resume token (`_data`, hex).
    After(String),
}

/// The full document an update event carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullDocument {
    /// The document as it is when the server looks it up (majority read).
    UpdateLookup,
    /// The post-image recorded with the change (`changeStreamPreAndPostImages`).
    WhenAvailable,
}

/// A change stream's events as the server sends them.
#[async_trait]
pub trait ChangeFeed: Send {
    /// The next change event, or `None` when the server's latest batch ran dry: everything
    /// up to [`ChangeFeed::resume_token`] has been delivered.
    async fn next(&mut self) -> Result<Option<Document>, FeedError>;

    /// The token to resume after what was delivered (after a dry batch: the post-batch
    /// resume token).
    fn resume_token(&self) -> Option<String>;
}

/// A change stream failure: history lost (the oplog rolled past the resume point) is told
/// apart from every other error.
#[derive(Debug)]
pub enum FeedError {
    /// The resume point is no longer in the oplog (error 286).
    HistoryLost(String),
    /// Anything else.
    Other(ConnectorError),
}

impl From<FeedError> for ConnectorError {
    fn from(e: FeedError) -> Self {
        match e {
            FeedError::HistoryLost(why) => ConnectorError::HistoryLost(format!(
                "the oplog no longer holds the change stream's resume point ({why}); enlarge the oplog (replSetResizeOplog) so it outlasts pauses, then resync the connector's tables, or set retention.on_history_lost to resnapshot"
            )),
            FeedError::Other(e) => e,
        }
    }
}

/// A snapshot read session at one cluster time.
#[async_trait]
pub trait SnapshotRead: Send {
    /// The cluster time every read of the session sees.
    fn cluster_time(&self) -> ClusterTime;

    /// Every document of `collection` as of that time, in `_id` order.
    async fn documents<'a>(
        &'a mut self,
        collection: &'a TableId,
    ) -> Result<BoxStream<'a, Result<Document, ReadError>>, ConnectorError>;
}

/// A snapshot read's failure: one past the server's snapshot history is told apart (the copy
/// goes on in `_id` ranges, [`super::ranges`]).
#[derive(Debug)]
pub enum ReadError {
    /// The session's time fell out of the server's snapshot history (error 239).
    TooOld(String),
    /// Anything else.
    Other(ConnectorError),
}

/// One chunk of a ranged copy: documents in `_id` order and the time they were read at.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// The cluster time of the chunk's own snapshot read.
    pub time: ClusterTime,
    /// The documents.
    pub documents: Vec<Document>,
}

/// What MongoDB sync asks of the deployment.
#[async_trait]
pub trait Deployment: Send + Sync {
    /// What the deployment is (`hello`).
    async fn topology(&self) -> Result<Topology, ConnectorError>;

    /// The privileges the connector lacks to sync `databases`, each named for the operator.
    async fn missing_privileges(&self, databases: &[String])
    -> Result<Vec<String>, ConnectorError>;

    /// The collections in scope, sampled.
    async fn collections(&self) -> Result<Vec<Collection>, ConnectorError>;

    /// Opens the change stream of the databases in scope.
    async fn watch(
        &self,
        start: StreamStart,
        full: FullDocument,
    ) -> Result<Box<dyn ChangeFeed>, FeedError>;

    /// Up to `limit` documents of `collection` whose `_id`s are of `bracket` and, when
    /// `after` is given, sort after it, in `_id` order, read in a snapshot session of their
    /// own.
    async fn read_range(
        &self,
        collection: &TableId,
        bracket: Bracket,
        after: Option<&Bson>,
        limit: usize,
    ) -> Result<Chunk, ConnectorError>;

    /// The type of an `_id` in `collection` outside every [`Bracket`], if there is one.
    async fn other_id_type(&self, collection: &TableId) -> Result<Option<String>, ConnectorError>;

    /// Opens a snapshot read session at a cluster time the server picks.
    async fn snapshot(&self) -> Result<Box<dyn SnapshotRead>, ConnectorError>;
}

/// The deployment of a connector, through the driver; connects on first use.
pub struct DriverDeployment {
    spec: ConnectorSpec,
    secrets: SecretResolver,
    client: tokio::sync::OnceCell<Client>,
}

impl DriverDeployment {
    /// The deployment `spec` names.
    pub fn new(spec: &ConnectorSpec, secrets: &SecretResolver) -> Self {
        Self {
            spec: spec.clone(),
            secrets: secrets.clone(),
            client: tokio::sync::OnceCell::new(),
        }
    }

    async fn client(&self) -> Result<&Client, ConnectorError> {
        self.client
            .get_or_try_init(|| connect(&self.spec.connection, &self.secrets))
            .await
    }

    fn scope(&self) -> &ScopeSpec {
        &self.spec.scope
    }
}

#[async_trait]
impl Deployment for DriverDeployment {
    async fn topology(&self) -> Result<Topology, ConnectorError> {
        topology(self.client().await?).await
    }

    async fn missing_privileges(
        &self,
        databases: &[String],
    ) -> Result<Vec<String>, ConnectorError> {
        let status = self
            .client()
            .await?
            .database("admin")
            .run_command(doc! { "connectionStatus": 1, "showPrivileges": true })
            .await
            .map_err(refused)?;
        Ok(missing_privileges(&status, databases))
    }

    async fn collections(&self) -> Result<Vec<Collection>, ConnectorError> {
        schema::discover(self.client().await?, self.scope()).await
    }

    async fn watch(
        &self,
        start: StreamStart,
        full: FullDocument,
    ) -> Result<Box<dyn ChangeFeed>, FeedError> {
        let client = self.client().await.map_err(FeedError::Other)?;
        let databases = schema::databases(client, self.scope())
            .await
            .map_err(FeedError::Other)?;
        let full = match full {
            FullDocument::UpdateLookup => FullDocumentType::UpdateLookup,
            FullDocument::WhenAvailable => FullDocumentType::WhenAvailable,
        };
        let start_after = match start {
            StreamStart::Now => None,
            StreamStart::After(token) => Some(resume_token(&token).map_err(FeedError::Other)?),
        };
        let options = ChangeStreamOptions::builder()
            .full_document(Some(full))
            .start_after(start_after)
            .build();
        let opened = match databases.as_slice() {
            [one] => client.database(one).watch().with_options(options).await,
            many => {
                let filter = doc! { "$match": { "ns.db": { "$in": many.to_vec() } } };
                client
                    .watch()
                    .pipeline([filter])
                    .with_options(options)
                    .await
            }
        };
        let stream = opened.map_err(feed_error)?.with_type::<Document>();
        Ok(Box::new(DriverFeed { stream }))
    }

    async fn read_range(
        &self,
        collection: &TableId,
        bracket: Bracket,
        after: Option<&Bson>,
        limit: usize,
    ) -> Result<Chunk, ConnectorError> {
        let client = self.client().await?;
        let mut session = snapshot_session(client).await?;
        let filter = match after {
            Some(last) => doc! { "_id": { "$gt": last.clone() } },
            None => bracket.filter(),
        };
        let mut cursor = client
            .database(&collection.schema)
            .collection::<Document>(&collection.table)
            .find(filter)
            .sort(doc! { "_id": 1 })
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .session(&mut session)
            .await
            .map_err(refused)?;
        let mut documents = Vec::new();
        while let Some(document) = cursor.next(&mut session).await {
            documents.push(document.map_err(refused)?);
        }
        Ok(Chunk {
            time: session_time(&session)?,
            documents,
        })
    }

    async fn other_id_type(&self, collection: &TableId) -> Result<Option<String>, ConnectorError> {
        let ordered = ["int", "long", "string", "objectId"];
        let found = self
            .client()
            .await?
            .database(&collection.schema)
            .collection::<Document>(&collection.table)
            .find_one(doc! { "_id": { "$not": { "$type": ordered.to_vec() } } })
            .projection(doc! { "_id": 1 })
            .await
            .map_err(refused)?;
        Ok(found.and_then(|d| d.get("_id").map(|id| format!("{:?}", id.element_type()))))
    }

    async fn snapshot(&self) -> Result<Box<dyn SnapshotRead>, ConnectorError> {
        let client = self.client().await?;
        let mut session = snapshot_session(client).await?;
        // The session's first read fixes its cluster time; a collection that does not exist
        // answers empty at no cost.
        let databases = schema::databases(client, self.scope()).await?;
        let first = databases.first().map_or("admin", String::as_str);
        client
            .database(first)
            .collection::<Document>("kyma_snapshot_time")
            .find_one(doc! {})
            .session(&mut session)
            .await
            .map_err(refused)?;
        Ok(Box::new(DriverSnapshot {
            client: client.clone(),
            time: session_time(&session)?,
            session,
        }))
    }
}

/// A new snapshot session (its time is fixed by its first read).
async fn snapshot_session(client: &Client) -> Result<ClientSession, ConnectorError> {
    let options = SessionOptions::builder().snapshot(true).build();
    client
        .start_session()
        .with_options(options)
        .await
        .map_err(refused)
}

/// The cluster time a snapshot session's first read fixed.
fn session_time(session: &ClientSession) -> Result<ClusterTime, ConnectorError> {
    session.snapshot_time().map(cluster_time).ok_or_else(|| {
        ConnectorError::Source("the server gave the snapshot session no cluster time".into())
    })
}

/// A snapshot read's error: one older than the server keeps history names the setting.
fn snapshot_error(e: mongodb::error::Error) -> ReadError {
    if command_code(&e) == Some(SNAPSHOT_TOO_OLD) {
        return ReadError::TooOld(refused(e).to_string());
    }
    ReadError::Other(refused(e))
}

/// A resume token's `_data` as the driver takes it.
fn resume_token(data: &str) -> Result<ResumeToken, ConnectorError> {
    mongodb::bson::from_bson(Bson::Document(doc! { "_data": data }))
        .map_err(|e| ConnectorError::Source(format!("resume token `{data}`: {e}")))
}

/// The `_data` of a resume token.
fn token_data(token: &ResumeToken) -> Option<String> {
    match mongodb::bson::to_bson(token).ok()? {
        Bson::Document(d) => d.get_str("_data").ok().map(str::to_owned),
        _ => None,
    }
}

fn feed_error(e: mongodb::error::Error) -> FeedError {
    if command_code(&e) == Some(CHANGE_STREAM_HISTORY_LOST) {
        FeedError::HistoryLost(e.to_string())
    } else {
        FeedError::Other(refused(e))
    }
}

struct DriverFeed {
    stream: ChangeStream<Document>,
}

#[async_trait]
impl ChangeFeed for DriverFeed {
    async fn next(&mut self) -> Result<Option<Document>, FeedError> {
        self.stream.next_if_any().await.map_err(feed_error)
    }

    fn resume_token(&self) -> Option<String> {
        self.stream.resume_token().as_ref().and_then(token_data)
    }
}

struct DriverSnapshot {
    client: Client,
    session: ClientSession,
    time: ClusterTime,
}

#[async_trait]
impl SnapshotRead for DriverSnapshot {
    fn cluster_time(&self) -> ClusterTime {
        self.time
    }

    async fn documents<'a>(
        &'a mut self,
        collection: &'a TableId,
    ) -> Result<BoxStream<'a, Result<Document, ReadError>>, ConnectorError> {
        let cursor = self
            .client
            .database(&collection.schema)
            .collection::<Document>(&collection.table)
            .find(doc! {})
            .sort(doc! { "_id": 1 })
            .session(&mut self.session)
            .await
            .map_err(refused)?;
        let session = &mut self.session;
        Ok(
            futures::stream::unfold((cursor, session), |(mut cursor, session)| async move {
                let next = cursor.next(session).await?;
                Some((next.map_err(snapshot_error), (cursor, session)))
            })
            .boxed(),
        )
    }
}

/// The privileges `connectionStatus` (with `showPrivileges`) lacks for syncing `databases`:
/// `find` and `changeStream` on each. With authentication off (no user), none are missing.
pub fn missing_privileges(status: &Document, databases: &[String]) -> Vec<String> {
    let Ok(auth) = status.get_document("authInfo") else {
        return Vec::new();
    };
    if auth
        .get_array("authenticatedUsers")
        .map_or(true, |u| u.is_empty())
    {
        return Vec::new();
    }
    let grants: Vec<(&Document, Vec<&str>)> = auth
        .get_array("authenticatedUserPrivileges")
        .map(|privileges| {
            privileges
                .iter()
                .filter_map(Bson::as_document)
                .filter_map(|p| {
                    let resource = p.get_document("resource").ok()?;
                    let actions = p
                        .get_array("actions")
                        .ok()?
                        .iter()
                        .filter_map(Bson::as_str)
                        .collect();
                    Some((resource, actions))
                })
                .collect()
        })
        .unwrap_or_default();
    let allows = |database: &str, action: &str| {
        grants.iter().any(|(resource, actions)| {
            let covers = resource.get_bool("anyResource").unwrap_or(false)
                || (resource
                    .get_str("db")
                    .is_ok_and(|db| db.is_empty() || db == database)
                    && resource.get_str("collection").is_ok_and(str::is_empty));
            covers && actions.contains(&action)
        })
    };
    databases
        .iter()
        .flat_map(|db| {
            ["find", "changeStream"]
                .into_iter()
                .filter(move |action| !allows(db, action))
                .map(move |action| format!("`{action}` on database `{db}`"))
        })
        .collect()
}

/// A [`Timestamp`] as a cluster time.
pub fn cluster_time(t: Timestamp) -> ClusterTime {
    (t.time, t.increment)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privileges_come_from_connection_status() {
        let status = doc! { "authInfo": {
            "authenticatedUsers": [{ "user": "kyma", "db": "admin" }],
            "authenticatedUserPrivileges": [
                { "resource": { "db": "app", "collection": "" }, "actions": ["find", "changeStream"] },
                { "resource": { "db": "crm", "collection": "" }, "actions": ["find"] },
                { "resource": { "db": "", "collection": "" }, "actions": ["listCollections"] },
            ],
        }};
        let databases = ["app".to_string(), "crm".to_string()];
        assert_eq!(
            missing_privileges(&status, &databases),
            vec!["`changeStream` on database `crm`"]
        );
        let any = doc! { "authInfo": {
            "authenticatedUsers": [{ "user": "root", "db": "admin" }],
            "authenticatedUserPrivileges": [{ "resource": { "anyResource": true }, "actions": ["find", "changeStream"] }],
        }};
        assert!(missing_privileges(&any, &databases).is_empty());
        let no_auth =
            doc! { "authInfo": { "authenticatedUsers": [], "authenticatedUserPrivileges": [] } };
        assert!(missing_privileges(&no_auth, &databases).is_empty());
    }

    #[test]
    fn resume_tokens_round_trip_through_the_driver_type() {
        let token = resume_token("8265A1B2C3000000012B0229296E04").expect("test input");
        assert_eq!(
            token_data(&token).as_deref(),
            Some("8265A1B2C3000000012B0229296E04")
        );
    }
}

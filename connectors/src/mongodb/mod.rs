//! The MongoDB source (`type: "mongodb"`): replica sets and sharded clusters, MongoDB 6+.
//!
//! - Reaching the source ([`connect`]) with the connector's TLS policy, pool size and secret,
//!   and the probe registration runs ([`probe`]): a sync connector is refused on a standalone
//!   server, since change streams need a replica set or a sharded cluster.
//! - The schema: MongoDB has none, so kyma samples each collection and keeps what it infers
//!   in its own catalog, never in the source ([`schema`]); the one conversion of BSON values
//!   into kyma values that federation, the snapshot and the change stream share
//!   ([`values`]).
//! - Scope: `scope.include_schemas` names databases; collections are tables
//!   (`connector.database.collection`). Collection names may hold dots; the status names
//!   them unambiguously ([`kyma_catalog::table_key`]). System collections (`system.*`) and
//!   views are left out.
//! - Federation's execution of aggregation pipelines ([`query`]) and sync ([`sync`]).
//!
//! # TLS (`connection.tls`)
//!
//! - `disable`: plaintext.
//! - `prefer`: TLS without checking the certificate, retried in plaintext when the TLS
//!   attempt does not reach the server (the driver reports a failed handshake that way;
//!   MongoDB has no in-protocol upgrade to TLS).
//! - `required`: TLS or fail; the certificate is not checked.
//! - `verify-full`: TLS with the certificate checked against the Web PKI roots (or the
//!   connector's own CA, `connection.tls_ca_ref`: [`crate::source_ca`]) and the host.
//!
//! # Errors
//!
//! Failures are sorted by what to fix ([`refused`]): refused credentials name
//! `connection.secret_ref`; a missing privilege names the privilege and the database; an
//! unreachable deployment names `connection.url` (transient). No message carries the
//! password (the driver's errors never hold it: it is set on the credential, not the URL).

pub mod query;
pub mod schema;
pub mod sync;
pub mod values;

use std::time::Duration;

use kyma_catalog::{ConnectionSpec, ConnectorSpec, TlsMode};
use mongodb::Client;
use mongodb::bson::{Document, doc};
use mongodb::error::{Error as DriverError, ErrorKind};
use mongodb::options::{ClientOptions, Credential, Tls, TlsOptions};

use crate::error::ConnectorError;
use crate::registry::{SourceInfo, SourceKind};
use crate::secrets::SecretResolver;
use crate::source_ca::SourceCa;
use crate::sync::{ChangeSource, SourcePosition};

/// How long finding a server may take before the source counts as unreachable.
const SELECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// MongoDB's error code for a change stream whose resume point the oplog no longer holds.
pub const CHANGE_STREAM_HISTORY_LOST: i32 = 286;
/// MongoDB's error code for a snapshot read older than the server's snapshot history.
pub const SNAPSHOT_TOO_OLD: i32 = 239;
/// MongoDB's error code for a command the user has no privilege for.
const UNAUTHORIZED: i32 = 13;

/// MongoDB in the registry of source kinds.
#[derive(Debug)]
pub struct MongodbKind;

#[async_trait::async_trait]
impl SourceKind for MongodbKind {
    async fn probe(
        &self,
        spec: &ConnectorSpec,
        secrets: &SecretResolver,
    ) -> Result<SourceInfo, ConnectorError> {
        probe(spec, secrets).await
    }

    fn change_source(
        &self,
        spec: &ConnectorSpec,
        secrets: &SecretResolver,
    ) -> Box<dyn ChangeSource> {
        Box::new(sync::MongoChangeSource::new(spec, secrets))
    }

    fn reached(&self, cursor: &SourcePosition, wanted: &str) -> Result<bool, ConnectorError> {
        sync::position::reached(cursor, wanted)
    }
}

/// The driver's options for `spec` under `tls` (which overrides the spec's mode, for
/// `prefer`'s plaintext retry): the URL's hosts and options, the secret as the password.
async fn options(
    spec: &ConnectionSpec,
    secrets: &SecretResolver,
    tls: TlsMode,
) -> Result<ClientOptions, ConnectorError> {
    check_url(&spec.url)?;
    let mut options = ClientOptions::parse(&spec.url).await.map_err(|e| {
        let reason = format!("not a MongoDB connection string: {}", message(&e));
        match *e.kind {
            ErrorKind::DnsResolve { .. } => ConnectorError::Unreachable {
                field: "connection.url".into(),
                reason,
            },
            _ => ConnectorError::invalid("connection.url", reason),
        }
    })?;
    if let Some(name) = &spec.secret_ref {
        let password = secrets.resolve(name)?.expose().to_owned();
        let credential = options.credential.get_or_insert_with(Credential::default);
        if credential.username.is_none() {
            return Err(ConnectorError::invalid(
                "connection.url",
                "secret_ref is set but the URL names no user (mongodb://USER@HOST/…)",
            ));
        }
        credential.password = Some(password);
    }
    options.tls = Some(match tls {
        TlsMode::Disable => Tls::Disabled,
        TlsMode::Prefer | TlsMode::Required => Tls::Enabled(
            TlsOptions::builder()
                .allow_invalid_certificates(true)
                .build(),
        ),
        TlsMode::VerifyFull => Tls::Enabled(match SourceCa::of(spec, secrets)? {
            Some(ca) => TlsOptions::builder().ca_file_path(ca.file()?).build(),
            None => TlsOptions::default(),
        }),
    });
    options.max_pool_size = Some(spec.pool_size.max(1));
    options.server_selection_timeout = Some(SELECTION_TIMEOUT);
    options.connect_timeout = Some(SELECTION_TIMEOUT);
    options.app_name = Some("kyma".into());
    Ok(options)
}

/// Refuses URLs that carry a password (it belongs in a secret) or are not MongoDB's.
fn check_url(url: &str) -> Result<(), ConnectorError> {
    let rest = url
        .strip_prefix("mongodb://")
        .or_else(|| url.strip_prefix("mongodb+srv://"))
        .ok_or_else(|| {
            ConnectorError::invalid(
                "connection.url",
                "not a MongoDB URL: it must start with mongodb:// or mongodb+srv://",
            )
        })?;
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    if let Some((userinfo, _)) = authority.rsplit_once('@')
        && userinfo.contains(':')
    {
        return Err(ConnectorError::invalid(
            "connection.url",
            "the URL holds a password; put it in a secret and name it in connection.secret_ref",
        ));
    }
    Ok(())
}

/// A client for the source of `spec` that has answered a `ping`.
pub async fn connect(
    spec: &ConnectionSpec,
    secrets: &SecretResolver,
) -> Result<Client, ConnectorError> {
    match connect_with(spec, secrets, spec.tls).await {
        // The driver tells a failed TLS handshake only as a server it cannot reach, so any
        // unreachable TLS attempt is retried in plaintext.
        Err(ConnectorError::Unreachable { .. }) if spec.tls == TlsMode::Prefer => {
            connect_with(spec, secrets, TlsMode::Disable).await
        }
        other => other,
    }
}

async fn connect_with(
    spec: &ConnectionSpec,
    secrets: &SecretResolver,
    tls: TlsMode,
) -> Result<Client, ConnectorError> {
    let client = Client::with_options(options(spec, secrets, tls).await?).map_err(refused)?;
    client
        .database("admin")
        .run_command(doc! { "ping": 1 })
        .await
        .map_err(refused)?;
    Ok(client)
}

/// A driver error as the operator reads it (a server's refusal with its code name).
fn message(e: &DriverError) -> String {
    match &*e.kind {
        ErrorKind::Command(command) => {
            format!(
                "{} ({}, error {})",
                command.message, command.code_name, command.code
            )
        }
        other => other.to_string(),
    }
}

/// A driver error as a connector error, by what to fix: refused credentials, a missing
/// privilege and other server refusals are definite; a deployment that cannot be reached is
/// transient. History lost (error 286) is the stream's to judge ([`sync`]).
pub fn refused(e: DriverError) -> ConnectorError {
    let text = message(&e);
    match *e.kind {
        ErrorKind::Authentication { .. } => ConnectorError::invalid(
            "connection.secret_ref",
            format!("the source refused the credentials: {text}"),
        ),
        ErrorKind::Command(ref command) if command.code == UNAUTHORIZED => ConnectorError::invalid(
            "connection.url",
            format!(
                "the connector's user lacks a privilege: {text}; grant it `read` on the databases in scope (and `changeStream` for sync)"
            ),
        ),
        ErrorKind::Command(_) | ErrorKind::InvalidArgument { .. } => ConnectorError::Source(text),
        ErrorKind::InvalidTlsConfig { .. } => ConnectorError::invalid("connection.tls", text),
        _ if e.contains_label("RetryableError") => ConnectorError::Unreachable {
            field: "connection.url".into(),
            reason: text,
        },
        ErrorKind::ServerSelection { .. }
        | ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::DnsResolve { .. }
        | ErrorKind::Shutdown => ConnectorError::Unreachable {
            field: "connection.url".into(),
            reason: text,
        },
        _ => ConnectorError::Source(text),
    }
}

/// The code of a server's refusal, if `e` is one.
pub fn command_code(e: &DriverError) -> Option<i32> {
    match &*e.kind {
        ErrorKind::Command(command) => Some(command.code),
        _ => None,
    }
}

/// What the deployment says it is (`hello`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// A replica set, by name.
    ReplicaSet(String),
    /// A sharded cluster, through `mongos`.
    Sharded,
    /// A standalone server: no oplog, so no change streams.
    Standalone,
}

impl Topology {
    /// The topology `hello` answered.
    pub fn of(hello: &Document) -> Self {
        if let Ok(name) = hello.get_str("setName") {
            Topology::ReplicaSet(name.to_owned())
        } else if hello.get_str("msg") == Ok("isdbgrid") {
            Topology::Sharded
        } else {
            Topology::Standalone
        }
    }

    /// Refuses a standalone server for sync, naming the fix.
    pub fn require_change_streams(&self) -> Result<(), ConnectorError> {
        match self {
            Topology::Standalone => Err(ConnectorError::invalid(
                "connection.url",
                "the server is a standalone mongod: change streams (sync) need a replica set or a sharded cluster; run it as a replica set (a single-member one will do: --replSet and rs.initiate()) or use mode federation",
            )),
            _ => Ok(()),
        }
    }
}

/// Asks the deployment what it is.
pub async fn topology(client: &Client) -> Result<Topology, ConnectorError> {
    let hello = client
        .database("admin")
        .run_command(doc! { "hello": 1 })
        .await
        .map_err(refused)?;
    Ok(Topology::of(&hello))
}

/// Connects and checks what registration needs: the server answers, sync connectors have
/// change streams, and the collections in scope sample into a schema (their warnings).
pub async fn probe(
    spec: &ConnectorSpec,
    secrets: &SecretResolver,
) -> Result<SourceInfo, ConnectorError> {
    let client = connect(&spec.connection, secrets).await?;
    if spec.mode.syncs() {
        topology(&client).await?.require_change_streams()?;
    }
    let info = client
        .database("admin")
        .run_command(doc! { "buildInfo": 1 })
        .await
        .map_err(refused)?;
    let collections = schema::discover(&client, &spec.scope).await?;
    let warnings = collections
        .iter()
        .flat_map(|c| {
            c.shape
                .warnings()
                .into_iter()
                .map(move |w| format!("{}: {w}", c.id))
        })
        .collect();
    client.shutdown().await;
    Ok(SourceInfo {
        server_version: info.get_str("version").unwrap_or_default().to_owned(),
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_passwords_are_refused() {
        let e = check_url("mongodb://app:hunter2@db:27017/app").expect_err("must fail");
        assert_eq!(e.field(), Some("connection.url"));
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(check_url("mongodb://app@db:27017/app").is_ok());
        assert!(check_url("mongodb+srv://app@cluster.example.com/app").is_ok());
        assert!(check_url("postgres://app@db/app").is_err());
    }

    #[test]
    fn topology_comes_from_hello() {
        assert_eq!(
            Topology::of(&doc! { "isWritablePrimary": true, "setName": "rs0" }),
            Topology::ReplicaSet("rs0".into())
        );
        assert_eq!(Topology::of(&doc! { "msg": "isdbgrid" }), Topology::Sharded);
        let standalone = Topology::of(&doc! { "isWritablePrimary": true });
        let e = standalone.require_change_streams().expect_err("must fail");
        assert!(e.to_string().contains("replica set"), "{e}");
    }
}

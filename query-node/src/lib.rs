//! The query node: stateless, N replicas behind a load balancer (SPEC §2). It serves Arrow
//! Flight SQL over DataFusion on the `kyma` catalog, reading and writing the table format
//! through the catalog.

pub mod admin_grpc;
pub mod admin_http;
pub mod decoded;
pub mod dynamic_sql;
pub mod engine;
pub mod federation;
pub mod fence;
pub mod flight;
pub mod metrics;
pub mod provider;
pub mod queries;
pub mod synced;
pub mod table_functions;
pub mod view;
pub mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use base64::Engine as _;
use kyma_catalog::{Catalog, CatalogError};
use kyma_table::{ExtentStore, TableError};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Status};

pub use engine::{IngestMode, Outcome, QueryEngine, QueryRows};
pub use federation::FederationOptions;
pub use metrics::QueryMetrics;

/// How long a readiness probe waits for the catalog.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest gRPC message accepted or sent (bulk ingest sends big record batches).
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// How the gRPC port is served.
#[derive(Debug, Clone, Default)]
pub struct GrpcOptions {
    /// Required bearer token; `None` serves without authentication.
    pub auth_token: Option<String>,
    /// PEM certificate and key; `None` serves plaintext.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The connector admin service, served beside Flight SQL when set.
    pub admin: Option<kyma_connectors::ConnectorAdmin>,
}

/// Why serving stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS files could not be read.
    #[error("cannot read the TLS {what} {path}: {source}")]
    Tls {
        /// Certificate or key.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// A running query node.
#[derive(Debug, Clone)]
pub struct QueryNode {
    catalog: Catalog,
    engine: QueryEngine,
    metrics: Arc<QueryMetrics>,
}

impl QueryNode {
    /// A query node on `catalog` and `store`: loads the catalog view and builds the engine.
    pub async fn start(
        catalog: Catalog,
        store: ExtentStore,
        federation: FederationOptions,
    ) -> Result<Self, TableError> {
        let engine = QueryEngine::start(catalog.clone(), store, federation).await?;
        Ok(Self {
            catalog,
            engine,
            metrics: Arc::new(QueryMetrics::default()),
        })
    }

    /// The SQL engine.
    pub fn engine(&self) -> &QueryEngine {
        &self.engine
    }

    /// The node's counters.
    pub fn metrics(&self) -> &QueryMetrics {
        &self.metrics
    }

    /// Ready when the catalog answers.
    pub async fn ready(&self) -> Result<(), CatalogError> {
        match tokio::time::timeout(PROBE_TIMEOUT, self.catalog.ping()).await {
            Ok(result) => result.map(|_| ()),
            Err(_) => Err(CatalogError::Unavailable(
                "the catalog did not answer within 2s".into(),
            )),
        }
    }

    /// Binds `addr` (so a bad address fails at start), then serves Flight SQL until
    /// `shutdown` completes.
    pub async fn serve_grpc(
        &self,
        addr: SocketAddr,
        options: GrpcOptions,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let token: Option<Arc<str>> = options.auth_token.map(Arc::from);
        let service = flight::KymaFlightSqlService::new(
            self.engine.clone(),
            self.metrics.clone(),
            token.clone(),
        );
        let server = FlightServiceServer::new(service)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let auth = move |request: Request<()>| authenticate(request, token.as_deref());
        let service = InterceptedService::new(server, auth.clone());
        let admin = options.admin.map(|admin| {
            InterceptedService::new(
                admin_grpc::ConnectorAdminServer::new(admin_grpc::AdminService::new(admin)),
                auth,
            )
        });
        let mut builder = Server::builder();
        if let Some((cert, key)) = options.tls {
            let read = |what, path: PathBuf| {
                std::fs::read(&path).map_err(|source| ServeError::Tls { what, path, source })
            };
            let identity = Identity::from_pem(read("certificate", cert)?, read("key", key)?);
            // Two rustls crypto backends are linked (ring here, aws-lc-rs by the replication
            // client), so rustls cannot pick one by itself: kyma serves TLS with ring. An
            // error only means a provider is installed already.
            let _ = rustls::crypto::ring::default_provider().install_default();
            builder = builder.tls_config(ServerTlsConfig::new().identity(identity))?;
        }
        builder
            .add_service(service)
            .add_optional_service(admin)
            .serve_with_incoming_shutdown(
                // No Nagle: small replies (FlightInfo, a few rows) would wait for the
                // client's delayed ACK, ~40 ms per round trip.
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown,
            )
            .await?;
        Ok(())
    }
}

/// Accepts a call when no token is configured, or when it carries `Bearer <token>` or basic
/// auth whose password is the token (what a Flight handshake with user and password sends).
fn authenticate(request: Request<()>, token: Option<&str>) -> Result<Request<()>, Status> {
    let Some(token) = token else {
        return Ok(request);
    };
    let header = request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let presented = if let Some(bearer) = header.strip_prefix("Bearer ") {
        Some(bearer.to_owned())
    } else if let Some(basic) = header.strip_prefix("Basic ") {
        base64::engine::general_purpose::STANDARD
            .decode(basic.trim())
            .ok()
            .and_then(|raw| String::from_utf8(raw).ok())
            .and_then(|pair| {
                pair.split_once(':')
                    .map(|(_, password)| password.to_owned())
            })
    } else {
        None
    };
    match presented {
        Some(p) if constant_time_eq(p.as_bytes(), token.as_bytes()) => Ok(request),
        _ => Err(Status::unauthenticated(
            "kyma requires authentication: send `authorization: Bearer <token>`, or handshake with basic auth using the token as the password",
        )),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0_u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

//! Shared by the query node's integration tests: an in-process node serving Flight SQL on a
//! free loopback port, and a Flight SQL client on it.

#![allow(dead_code)]

pub mod corpus;

use std::net::SocketAddr;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{
    CommandStatementIngest, TableDefinitionOptions, TableExistsOption, TableNotExistOption,
};
use futures::TryStreamExt;
use kyma_catalog::{Catalog, CatalogLocation};
use kyma_connectors::{ConnectorAdmin, SecretResolver};
use kyma_query_node::{FederationOptions, GrpcOptions, QueryNode};
use kyma_table::columns::ColumnCache;
use kyma_table::{ExtentStore, S3Options, StoreLocation};
use tonic::transport::Channel;

/// The test node's decoded-column cache.
const COLUMN_CACHE_BYTES: u64 = 64 << 20;

/// A node serving on loopback until dropped.
pub struct ServedNode {
    pub node: QueryNode,
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub _dir: Option<tempfile::TempDir>,
}

impl Drop for ServedNode {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Serves `node` on a free port.
pub async fn serve(node: QueryNode, options: GrpcOptions) -> ServedNode {
    let port = kyma_test_harness::free_port().expect("a free port");
    let addr: SocketAddr = format!("127.0.0.1:{port}")
        .parse()
        .expect("loopback address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = node.clone();
    tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        if let Err(e) = serving.serve_grpc(addr, options, shutdown).await {
            panic!("serving Flight SQL failed: {e}");
        }
    });
    ServedNode {
        node,
        addr,
        stop: Some(stop),
        _dir: None,
    }
}

/// A node on an embedded catalog and a local directory, as `kyma standalone` runs it, with
/// the connector admin service (secrets from `secrets_dir(node)`).
pub async fn standalone(options: GrpcOptions) -> ServedNode {
    standalone_with_pushdown(options, true).await
}

/// [`standalone`], pushing work to federated sources or not.
pub async fn standalone_with_pushdown(options: GrpcOptions, pushdown: bool) -> ServedNode {
    standalone_with_storage(options, pushdown).await.0
}

/// [`standalone_with_pushdown`], with the node's catalog and extent store (to write tables
/// as a CDC worker would).
pub async fn standalone_with_storage(
    mut options: GrpcOptions,
    pushdown: bool,
) -> (ServedNode, Catalog, ExtentStore) {
    let dir = tempfile::tempdir().expect("temp dir");
    let catalog = Catalog::open(&CatalogLocation::Embedded {
        path: dir.path().join("catalog.redb"),
    })
    .await
    .expect("embedded catalog");
    let store = ExtentStore::open(
        &StoreLocation::File(dir.path().join("store")),
        &S3Options::default(),
    )
    .expect("local store")
    // As a query node runs (a small capacity: reads go through both scans).
    .with_column_cache(ColumnCache::new(COLUMN_CACHE_BYTES));
    let secrets = dir.path().join("secrets");
    std::fs::create_dir_all(&secrets).expect("secrets dir");
    let secrets = SecretResolver::new(secrets);
    options.admin = Some(ConnectorAdmin::new(catalog.clone(), secrets.clone()));
    let federation = FederationOptions { secrets, pushdown };
    let node = QueryNode::start(catalog.clone(), store.clone(), federation)
        .await
        .expect("query node");
    let mut served = serve(node, options).await;
    served._dir = Some(dir);
    (served, catalog, store)
}

/// Where a [`standalone`] node reads secrets.
pub fn secrets_dir(node: &ServedNode) -> std::path::PathBuf {
    node._dir
        .as_ref()
        .expect("a standalone node")
        .path()
        .join("secrets")
}

/// A Flight SQL client on `addr` (plaintext).
pub async fn client(addr: SocketAddr) -> FlightSqlServiceClient<Channel> {
    let endpoint = Channel::from_shared(format!("http://{addr}")).expect("endpoint");
    FlightSqlServiceClient::new(connect(endpoint).await)
}

/// A connector admin client on `node`.
pub async fn admin_client(
    node: &ServedNode,
) -> kyma_query_node::admin_grpc::proto::connector_admin_client::ConnectorAdminClient<Channel> {
    let endpoint = Channel::from_shared(format!("http://{}", node.addr)).expect("endpoint");
    kyma_query_node::admin_grpc::proto::connector_admin_client::ConnectorAdminClient::new(
        connect(endpoint).await,
    )
}

/// A Postgres connector in mode `federation` on `url`, with TLS policy `tls`.
pub fn pg_connector(
    name: &str,
    url: String,
    tls: &str,
) -> kyma_query_node::admin_grpc::proto::ConnectorSpec {
    federation_connector("postgres", name, url, tls)
}

/// A connector of `source_type` in mode `federation` on `url`, with TLS policy `tls`.
pub fn federation_connector(
    source_type: &str,
    name: &str,
    url: String,
    tls: &str,
) -> kyma_query_node::admin_grpc::proto::ConnectorSpec {
    use kyma_query_node::admin_grpc::proto::{Connection, ConnectorSpec};
    ConnectorSpec {
        name: name.into(),
        r#type: source_type.into(),
        mode: "federation".into(),
        connection: Some(Connection {
            url,
            secret_ref: None,
            tls: Some(tls.into()),
            pool_size: Some(4),
            tls_ca_ref: None,
        }),
        scope: None,
        retention: None,
    }
}

/// Connects, retrying until the server listens.
pub async fn connect(endpoint: tonic::transport::Endpoint) -> Channel {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match endpoint.connect().await {
            Ok(channel) => return channel,
            Err(e) if std::time::Instant::now() > deadline => {
                panic!("cannot connect to {}: {e:?}", endpoint.uri())
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
}

/// Fetches every endpoint of `info`.
pub async fn fetch(
    client: &mut FlightSqlServiceClient<Channel>,
    info: arrow_flight::FlightInfo,
) -> Result<Vec<RecordBatch>, arrow_flight::error::FlightError> {
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.expect("endpoint has a ticket");
        let stream = client.do_get(ticket).await?;
        batches.extend(stream.try_collect::<Vec<_>>().await?);
    }
    Ok(batches)
}

/// Runs a query and collects its batches.
pub async fn query(
    client: &mut FlightSqlServiceClient<Channel>,
    sql: &str,
) -> Result<Vec<RecordBatch>, arrow_flight::error::FlightError> {
    let info = client.execute(sql.to_owned(), None).await?;
    fetch(client, info).await
}

/// The query's result as text, one line per row (for readable assertions).
pub async fn query_text(client: &mut FlightSqlServiceClient<Channel>, sql: &str) -> String {
    let batches = query(client, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    arrow::util::pretty::pretty_format_batches(&batches)
        .expect("formats")
        .to_string()
}

/// An ingest command into `kyma.default.{table}`: create (fail if it exists) or append.
fn ingest_command(table: &str, create: bool) -> CommandStatementIngest {
    let (if_not_exist, if_exists) = if create {
        (TableNotExistOption::Create, TableExistsOption::Fail)
    } else {
        (TableNotExistOption::Fail, TableExistsOption::Append)
    };
    CommandStatementIngest {
        table_definition_options: Some(TableDefinitionOptions {
            if_not_exist: if_not_exist as i32,
            if_exists: if_exists as i32,
        }),
        table: table.to_owned(),
        schema: None,
        catalog: None,
        temporary: false,
        transaction_id: None,
        options: Default::default(),
    }
}

/// Bulk ingest (CommandStatementIngest) of `batches` into `kyma.default.{table}`.
pub async fn ingest(
    client: &mut FlightSqlServiceClient<Channel>,
    table: &str,
    create: bool,
    batches: Vec<RecordBatch>,
) -> Result<i64, arrow_flight::error::FlightError> {
    let command = ingest_command(table, create);
    client
        .execute_ingest(command, futures::stream::iter(batches.into_iter().map(Ok)))
        .await
}

/// Bulk ingest (create) whose stream sends a new schema message whenever the batch schema
/// changes, as the Flight protocol allows.
pub async fn ingest_changing_schema(
    client: &mut FlightSqlServiceClient<Channel>,
    table: &str,
    batches: Vec<RecordBatch>,
) -> Result<i64, arrow_flight::error::FlightError> {
    use arrow_flight::FlightDescriptor;
    use arrow_flight::encode::FlightDataEncoderBuilder;
    use arrow_flight::sql::{DoPutUpdateResult, ProstMessageExt};
    use prost::Message;
    let command = ingest_command(table, true);
    let mut messages = Vec::new();
    for (i, batch) in batches.into_iter().enumerate() {
        let descriptor =
            (i == 0).then(|| FlightDescriptor::new_cmd(command.as_any().encode_to_vec()));
        let encoded: Vec<_> = FlightDataEncoderBuilder::new()
            .with_flight_descriptor(descriptor)
            .build(futures::stream::iter([Ok(batch)]))
            .try_collect()
            .await?;
        messages.extend(encoded);
    }
    let mut results = client.do_put(futures::stream::iter(messages)).await?;
    let result = results.message().await?.expect("a put result");
    let update = DoPutUpdateResult::decode(&*result.app_metadata).expect("DoPutUpdateResult");
    Ok(update.record_count)
}

/// The gRPC status code of a Flight error, if it carries one.
pub fn code_of(error: &arrow_flight::error::FlightError) -> Option<tonic::Code> {
    match error {
        arrow_flight::error::FlightError::Tonic(status) => Some(status.code()),
        _ => None,
    }
}

/// A schema helper.
pub fn schema(fields: Vec<arrow::datatypes::Field>) -> Arc<Schema> {
    Arc::new(Schema::new(fields))
}

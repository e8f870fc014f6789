//! The `kyma` binary: `standalone`, `query-node` and `cdc-worker` (SPEC §2), and the
//! `connectors` client of the admin API (SPEC §4).

mod connectors;
mod ops_http;
mod settings;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use kyma_catalog::{Catalog, CatalogLocation};
use kyma_cdc_worker::{CdcWorker, SyncOptions};
use kyma_connectors::{ConnectorAdmin, SecretResolver};
use kyma_query_node::admin_http::admin_routes;
use kyma_query_node::{FederationOptions, GrpcOptions, QueryNode};
use kyma_table::{ExtentStore, S3Options, StoreLocation};
use settings::{Command, CommonArgs, Process, ServeArgs};
use tokio::sync::watch;

fn main() -> ExitCode {
    let cli = match settings::parse(std::env::args_os().collect()) {
        Ok(cli) => cli,
        // Help and version print and succeed; a bad flag prints its message and fails (exit 2).
        Err(e) => e.exit(),
    };
    let process = match cli.command {
        Command::Connectors(args) => return connectors::main(args),
        Command::Process(process) => process,
    };
    if process.common().check_config {
        return check_config(&process);
    }
    init_logging(process.common());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(process)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `--check-config`: the settings parsed, so they are valid; print them (secrets hidden).
fn check_config(process: &Process) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "the settings are valid:\n{process:#?}") {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

fn init_logging(common: &CommonArgs) {
    // pg_walstream logs every standby status update at INFO, many times a second per
    // connector: it stays at WARN unless KYMA_LOG names it.
    let directives = std::env::var("KYMA_LOG").unwrap_or_else(|_| "info".into());
    let directives = if directives.contains("pg_walstream") {
        directives
    } else {
        format!("{directives},pg_walstream=warn")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,pg_walstream=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if common.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Why a process stopped.
#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error(transparent)]
    Catalog(#[from] kyma_catalog::CatalogError),
    #[error(transparent)]
    Table(#[from] kyma_table::TableError),
    #[error(transparent)]
    Serve(#[from] kyma_query_node::ServeError),
    #[error("cannot serve HTTP on {addr}: {source}")]
    Http {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// A future that completes once the process is asked to stop; every server waits on one.
fn stop_signal(stop: &watch::Receiver<bool>) -> impl Future<Output = ()> + Send + 'static {
    let mut stop = stop.clone();
    async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    }
}

fn grpc_options(serve: &ServeArgs, admin: ConnectorAdmin) -> GrpcOptions {
    GrpcOptions {
        auth_token: serve.auth_token.as_ref().map(|t| t.expose().to_owned()),
        tls: serve.tls_cert.clone().zip(serve.tls_key.clone()),
        admin: Some(admin),
    }
}

/// Serves a query node's gRPC (Flight SQL) and HTTP ports until the process is asked to stop;
/// either failing stops both.
async fn serve_node(
    node: &QueryNode,
    admin: ConnectorAdmin,
    serve: &ServeArgs,
    http_addr: std::net::SocketAddr,
    probe: ops_http::Probe<'_>,
    stop: &watch::Receiver<bool>,
) -> Result<(), RunError> {
    let grpc = async {
        node.serve_grpc(
            serve.grpc_addr,
            grpc_options(serve, admin.clone()),
            stop_signal(stop),
        )
        .await
        .map_err(RunError::from)
    };
    let http = ops_http::serve(
        http_addr,
        probe,
        admin_routes(admin.clone()),
        stop_signal(stop),
    );
    tokio::try_join!(grpc, http).map(|_| ())
}

async fn run(process: Process) -> Result<(), RunError> {
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        ops_http::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    match process {
        Process::Standalone(args) => {
            let data_dir = std::path::absolute(&args.data_dir).map_err(|e| {
                kyma_table::TableError::invalid(
                    "--data-dir",
                    format!("{}: {e}", args.data_dir.display()),
                )
            })?;
            let catalog = Catalog::open(&CatalogLocation::Embedded {
                path: data_dir.join("catalog.redb"),
            })
            .await?;
            let store = ExtentStore::open(
                &StoreLocation::File(data_dir.join("store")),
                &S3Options::default(),
            )?
            .with_cache(args.serve.extent_cache())
            .with_column_cache(args.serve.column_cache());
            let worker = CdcWorker::start(
                catalog.clone(),
                store.clone(),
                SecretResolver::new(&args.common.secrets_dir),
                "standalone",
                Duration::from_secs(10),
                SyncOptions::default(),
            )
            .await?;
            let (node, admin) = start_node(catalog, store, &args.common, &args.serve).await?;
            tracing::info!(
                data_dir = %data_dir.display(),
                http = %args.common.http_addr,
                grpc = %args.serve.grpc_addr,
                "kyma standalone running"
            );
            let result = serve_node(
                &node,
                admin,
                &args.serve,
                args.common.http_addr,
                ops_http::Probe::Standalone(node.clone(), &worker),
                &stop,
            )
            .await;
            worker.shutdown().await?;
            result
        }
        Process::QueryNode(args) => {
            let catalog = Catalog::open(&args.cluster.catalog).await?;
            let store = ExtentStore::open(
                &args.cluster.store,
                &S3Options {
                    endpoint: args.cluster.s3_endpoint.clone(),
                },
            )?
            .with_cache(args.serve.extent_cache())
            .with_column_cache(args.serve.column_cache());
            let (node, admin) = start_node(catalog, store, &args.common, &args.serve).await?;
            tracing::info!(
                http = %args.common.http_addr,
                grpc = %args.serve.grpc_addr,
                store = ?args.cluster.store,
                "kyma query node running"
            );
            serve_node(
                &node,
                admin,
                &args.serve,
                args.common.http_addr,
                ops_http::Probe::QueryNode(node.clone()),
                &stop,
            )
            .await
        }
        Process::CdcWorker(args) => {
            let catalog = Catalog::open(&args.cluster.catalog).await?;
            let store = ExtentStore::open(
                &args.cluster.store,
                &S3Options {
                    endpoint: args.cluster.s3_endpoint.clone(),
                },
            )?;
            let worker_id = args.worker_id.unwrap_or_else(default_worker_id);
            let worker = CdcWorker::start(
                catalog,
                store,
                SecretResolver::new(&args.common.secrets_dir),
                &worker_id,
                Duration::from_secs(args.lease_ttl_secs),
                SyncOptions {
                    compact_after_extents: usize::try_from(args.compact_after_extents)
                        .unwrap_or(usize::MAX),
                    key_index_max_keys: args.key_index_max_keys,
                    ..SyncOptions::default()
                },
            )
            .await?;
            tracing::info!(
                %worker_id,
                http = %args.common.http_addr,
                store = ?args.cluster.store,
                "kyma cdc worker running"
            );
            let result = ops_http::serve(
                args.common.http_addr,
                ops_http::Probe::Worker(&worker),
                axum::Router::new(),
                stop_signal(&stop),
            )
            .await;
            worker.shutdown().await?;
            result
        }
    }
}

/// A query node and the connector admin beside it, sharing one secret resolver.
async fn start_node(
    catalog: Catalog,
    store: ExtentStore,
    common: &CommonArgs,
    serve: &ServeArgs,
) -> Result<(QueryNode, ConnectorAdmin), RunError> {
    let secrets = SecretResolver::new(&common.secrets_dir);
    let admin = ConnectorAdmin::new(catalog.clone(), secrets.clone());
    let federation = FederationOptions {
        secrets,
        pushdown: serve.federation_pushdown,
    };
    Ok((QueryNode::start(catalog, store, federation).await?, admin))
}

fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "worker".into());
    format!("{host}-{}", std::process::id())
}

//! The `kyma` binary: `standalone`, `query-node` and `cdc-worker` (SPEC §2).

mod ops_http;
mod settings;

use std::process::ExitCode;
use std::time::Duration;

use kyma_catalog::{Catalog, CatalogLocation};
use kyma_cdc_worker::CdcWorker;
use kyma_query_node::QueryNode;
use settings::{Command, CommonArgs};

fn main() -> ExitCode {
    let cli = match settings::parse(std::env::args_os().collect()) {
        Ok(cli) => cli,
        // Help and version print and succeed; a bad flag prints its message and fails (exit 2).
        Err(e) => e.exit(),
    };
    let common = match &cli.command {
        Command::Standalone(a) => &a.common,
        Command::QueryNode(a) => &a.common,
        Command::CdcWorker(a) => &a.common,
    };
    init_logging(common);
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
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(common: &CommonArgs) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KYMA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
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
    #[error("cannot serve HTTP on {addr}: {source}")]
    Http {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

async fn run(command: Command) -> Result<(), RunError> {
    match command {
        Command::Standalone(args) => {
            let catalog = Catalog::open(&CatalogLocation::Embedded {
                path: args.data_dir.join("catalog.redb"),
            })
            .await?;
            let worker =
                CdcWorker::start(catalog.clone(), "standalone", Duration::from_secs(10)).await?;
            let node = QueryNode::new(catalog);
            tracing::info!(
                data_dir = %args.data_dir.display(),
                http = %args.common.http_addr,
                grpc = %args.serve.grpc_addr,
                secrets_dir = %args.common.secrets_dir.display(),
                "kyma standalone running"
            );
            let result = ops_http::serve(
                args.common.http_addr,
                ops_http::Probe::Standalone(node, &worker),
            )
            .await;
            worker.shutdown().await?;
            result
        }
        Command::QueryNode(args) => {
            let catalog = Catalog::open(&args.cluster.catalog).await?;
            let node = QueryNode::new(catalog);
            tracing::info!(
                http = %args.common.http_addr,
                grpc = %args.serve.grpc_addr,
                store = ?args.cluster.store,
                s3_endpoint = ?args.cluster.s3_endpoint,
                secrets_dir = %args.common.secrets_dir.display(),
                "kyma query node running"
            );
            ops_http::serve(args.common.http_addr, ops_http::Probe::QueryNode(node)).await
        }
        Command::CdcWorker(args) => {
            let catalog = Catalog::open(&args.cluster.catalog).await?;
            let worker_id = args.worker_id.unwrap_or_else(default_worker_id);
            let worker = CdcWorker::start(
                catalog,
                &worker_id,
                Duration::from_secs(args.lease_ttl_secs),
            )
            .await?;
            tracing::info!(
                %worker_id,
                http = %args.common.http_addr,
                store = ?args.cluster.store,
                s3_endpoint = ?args.cluster.s3_endpoint,
                secrets_dir = %args.common.secrets_dir.display(),
                "kyma cdc worker running"
            );
            let result =
                ops_http::serve(args.common.http_addr, ops_http::Probe::Worker(&worker)).await;
            worker.shutdown().await?;
            result
        }
    }
}

fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "worker".into());
    format!("{host}-{}", std::process::id())
}

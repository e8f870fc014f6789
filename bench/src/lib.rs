//! What kyma's benchmarks share: an in-process query node on loopback, a Flight SQL client
//! for it, and a description of the machine for the report.

use std::error::Error;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::client::FlightSqlServiceClient;
use kyma_catalog::Catalog;
use kyma_query_node::view::CatalogView;
use kyma_query_node::{FederationOptions, GrpcOptions, QueryNode};
use kyma_table::ExtentStore;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};

/// The benchmarks' result type: a bench binary reports any failure and exits non-zero.
pub type BenchResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// Largest gRPC message the client accepts or sends (the server's own limit is 256 MiB).
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// A query node serving Flight SQL on a free loopback port until [`ServedNode::stop`].
pub struct ServedNode {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its catalog view (what its queries read).
    pub view: CatalogView,
    stop: tokio::sync::oneshot::Sender<()>,
    serving: JoinHandle<Result<(), kyma_query_node::ServeError>>,
}

impl ServedNode {
    /// Starts a node on `catalog` and `store`.
    pub async fn start(
        catalog: Catalog,
        store: ExtentStore,
        federation: FederationOptions,
    ) -> BenchResult<Self> {
        let node = QueryNode::start(catalog, store, federation).await?;
        let view = node.engine().view().clone();
        let addr = SocketAddr::from(([127, 0, 0, 1], kyma_test_harness::free_port()?));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(async move {
            let shutdown = async {
                // Either a stop message or the sender dropped: both mean stop.
                let _ = stopped.await;
            };
            node.serve_grpc(addr, GrpcOptions::default(), shutdown)
                .await
        });
        Ok(Self {
            addr,
            view,
            stop,
            serving,
        })
    }

    /// A Flight SQL client, retrying the connect while the server starts listening.
    pub async fn client(&self) -> BenchResult<FlightSqlServiceClient<Channel>> {
        let endpoint = Endpoint::from_shared(format!("http://{}", self.addr))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let channel = loop {
            match endpoint.connect().await {
                Ok(channel) => break channel,
                Err(e) if Instant::now() > deadline => {
                    return Err(
                        format!("the query node on {} did not accept: {e}", self.addr).into(),
                    );
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let inner = FlightServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(FlightSqlServiceClient::new_from_inner(inner))
    }

    /// Stops serving and waits for the server to end.
    pub async fn stop(self) -> BenchResult<()> {
        // The receiver may already be gone if the server stopped on its own; the join says why.
        let _ = self.stop.send(());
        self.serving.await??;
        Ok(())
    }
}

/// `nproc`, memory, kernel (`uname -r`), OS and CPU model, from /proc and /etc.
pub fn machine() -> String {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let kib: f64 = m
                .lines()
                .find(|l| l.starts_with("MemTotal:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some(format!("{:.1} GiB", kib / 1024.0 / 1024.0))
        })
        .unwrap_or_else(|| "unknown memory".into());
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|r| {
            r.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| "unknown OS".into());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("nproc {nproc}, {memory}, kernel {kernel} (uname -r), {os}, {cpu}")
}

//! The operations HTTP endpoints every process serves: `/healthz` (the process is up),
//! `/readyz` (it can do its work: the catalog answers, a worker's lease is alive) and
//! `/metrics` (Prometheus text), and on query nodes the REST admin API. Serves until the
//! process is asked to stop.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use kyma_cdc_worker::{CdcWorker, SyncMetrics};
use kyma_query_node::QueryNode;

use crate::RunError;

/// What `/readyz` checks.
pub enum Probe<'a> {
    /// A query node.
    QueryNode(QueryNode),
    /// A CDC worker.
    Worker(&'a CdcWorker),
    /// Both, in one process.
    Standalone(QueryNode, &'a CdcWorker),
}

impl Probe<'_> {
    async fn ready(&self) -> Result<(), kyma_catalog::CatalogError> {
        match self {
            Probe::QueryNode(node) => node.ready().await,
            Probe::Worker(worker) => worker.ready().await,
            Probe::Standalone(node, worker) => {
                node.ready().await?;
                worker.ready().await
            }
        }
    }
}

/// Serves the endpoints on `addr` until `shutdown` completes.
/// `routes` (the REST admin API on query nodes) are served beside the probes.
pub async fn serve(
    addr: SocketAddr,
    probe: Probe<'_>,
    routes: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Http { addr, source })?;
    // The router is 'static; readiness is answered here, in the serving task, over a channel.
    let (ask, mut asked) =
        tokio::sync::mpsc::channel::<tokio::sync::oneshot::Sender<Result<(), String>>>(16);
    let readyz = move || {
        let ask = ask.clone();
        async move {
            let (reply, answer) = tokio::sync::oneshot::channel();
            if ask.send(reply).await.is_err() {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "shutting down\n".to_owned(),
                );
            }
            match answer.await {
                Ok(Ok(())) => (StatusCode::OK, "ready\n".to_owned()),
                Ok(Err(why)) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {why}\n"),
                ),
                Err(_) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "shutting down\n".to_owned(),
                ),
            }
        }
    };
    let (node, worker) = match &probe {
        Probe::QueryNode(node) => (Some(node.clone()), None),
        Probe::Worker(worker) => (None, Some(worker.metrics())),
        Probe::Standalone(node, worker) => (Some(node.clone()), Some(worker.metrics())),
    };
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(move || metrics(node.clone(), worker.clone())),
        )
        .merge(routes);
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .into_future();
    tokio::pin!(server);
    loop {
        tokio::select! {
            result = &mut server => return result.map_err(|source| RunError::Http { addr, source }),
            Some(reply) = asked.recv() => {
                let _ = reply.send(probe.ready().await.map_err(|e| e.to_string()));
            }
        }
    }
}

async fn metrics(
    node: Option<QueryNode>,
    worker: Option<Arc<SyncMetrics>>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    let mut text = format!(
        "# HELP kyma_build_info kyma build.\n# TYPE kyma_build_info gauge\nkyma_build_info{{version=\"{}\"}} 1\n",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(node) = node {
        node.metrics().render(&mut text);
    }
    if let Some(worker) = worker {
        worker.render(&mut text);
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; stop with Ctrl-C");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
}

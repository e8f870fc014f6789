//! The generic connection pool with Postgres connections against a real server: reuse, the
//! session every connection runs with, the `pool_size` bound, and the connections it must
//! not lend again (dropped mid-stream, idle too long, too old).

use std::time::Duration;

use futures::FutureExt;
use kyma_catalog::{ConnectionSpec, TlsMode};
use kyma_connectors::SecretResolver;
use kyma_connectors::pool::{Pool, PoolLimits};
use kyma_connectors::postgres::{PgConnect, PgPool, PooledClient};
use kyma_test_harness::Postgres;

fn pool(pg: &Postgres, size: u32, limits: PoolLimits) -> std::sync::Arc<PgPool> {
    let db = pg.create_database("pool").expect("database");
    let spec = ConnectionSpec {
        url: pg.url(&db),
        secret_ref: None,
        tls: TlsMode::Disable,
        pool_size: size,
        tls_ca_ref: None,
    };
    Pool::new(
        PgConnect::new(spec, SecretResolver::new("/nonexistent")),
        size,
        limits,
    )
}

/// The backend process serving `client`.
async fn backend(client: &PooledClient) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .try_get(0)
        .expect("an int4 pid")
}

async fn setting(client: &PooledClient, name: &str) -> String {
    client
        .query_one(&format!("SHOW {name}"), &[])
        .await
        .expect("SHOW")
        .try_get(0)
        .expect("text")
}

#[tokio::test]
async fn a_returned_connection_serves_the_next_caller_with_the_federation_session() {
    let pool = pool(Postgres::shared(), 2, PoolLimits::default());
    let first = pool.get().await.expect("a connection");
    let pid = backend(&first).await;
    drop(first);
    let again = pool.get().await.expect("the idle connection");
    assert_eq!(backend(&again).await, pid, "the idle connection was reused");
    assert_eq!(setting(&again, "TimeZone").await, "UTC");
    assert_eq!(setting(&again, "DateStyle").await, "ISO, MDY");
    assert_eq!(setting(&again, "default_transaction_read_only").await, "on");
    assert_eq!(setting(&again, "application_name").await, "kyma-federation");
}

#[tokio::test]
async fn no_more_than_pool_size_connections_are_lent() {
    let pool = pool(Postgres::shared(), 1, PoolLimits::default());
    let held = pool.get().await.expect("the one connection");
    assert!(
        pool.get().now_or_never().is_none(),
        "a second caller waits while the only connection is lent"
    );
    let waiting = pool.get();
    drop(held);
    let next = waiting.await.expect("the connection, once returned");
    backend(&next).await;
}

#[tokio::test]
async fn a_connection_dropped_mid_stream_is_closed_not_reused() {
    let pool = pool(Postgres::shared(), 2, PoolLimits::default());
    let mut streaming = pool.get().await.expect("a connection");
    let pid = backend(&streaming).await;
    streaming.streaming(true);
    drop(streaming);
    let next = pool.get().await.expect("a new connection");
    assert_ne!(backend(&next).await, pid);
}

#[tokio::test]
async fn connections_idle_too_long_or_too_old_are_replaced() {
    let limits = [
        PoolLimits {
            idle_timeout: Duration::ZERO,
            ..PoolLimits::default()
        },
        PoolLimits {
            max_lifetime: Duration::ZERO,
            ..PoolLimits::default()
        },
    ];
    for limits in limits {
        let pool = pool(Postgres::shared(), 2, limits);
        let first = pool.get().await.expect("a connection");
        let pid = backend(&first).await;
        drop(first);
        let next = pool.get().await.expect("a new connection");
        assert_ne!(backend(&next).await, pid, "{limits:?}");
    }
}

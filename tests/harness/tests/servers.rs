//! The harness's own tests: each real server starts and answers a real client, configured the
//! way kyma's sources and catalog need it.

use std::sync::Arc;

use bytes::Bytes;
use kyma_test_harness::{Etcd, MariaDb, Postgres, S3};
use mysql_async::prelude::Queryable;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

#[tokio::test]
async fn etcd_starts_and_answers_a_put_and_get() {
    let etcd = Etcd::shared();
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .expect("connect to etcd");
    let key = kyma_test_harness::unique_name("harness");
    client.put(key.clone(), "hello", None).await.expect("put");
    let response = client.get(key, None).await.expect("get");
    assert_eq!(response.kvs()[0].value(), b"hello");
}

#[tokio::test]
async fn etcd_keeps_its_data_across_a_kill_and_restart() {
    let etcd = Etcd::start().expect("start a private etcd");
    {
        let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
            .await
            .expect("connect");
        client
            .put("survivor", "still here", None)
            .await
            .expect("put");
    }
    etcd.process().kill().expect("kill etcd");
    let options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(std::time::Duration::from_millis(300))
        .with_timeout(std::time::Duration::from_millis(300));
    let down = match etcd_client::Client::connect([etcd.endpoint()], Some(options)).await {
        Err(_) => true,
        Ok(mut client) => client.get("survivor", None).await.is_err(),
    };
    assert!(down, "etcd must be down after a kill");
    etcd.process().start_again().expect("start etcd again");
    etcd.wait_ready().expect("etcd ready again");
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .expect("reconnect");
    let response = client.get("survivor", None).await.expect("get");
    assert_eq!(response.kvs()[0].value(), b"still here");
}

#[tokio::test]
async fn postgres_starts_with_logical_wal_and_replication_slots() {
    let pg = Postgres::shared();
    let database = pg.create_database("harness").expect("create database");
    let (client, connection) = tokio_postgres::connect(&pg.url(&database), tokio_postgres::NoTls)
        .await
        .expect("connect to postgres");
    tokio::spawn(connection);
    let wal_level: String = client
        .query_one("SHOW wal_level", &[])
        .await
        .expect("SHOW wal_level")
        .get(0);
    assert_eq!(wal_level, "logical");
    let slots: String = client
        .query_one("SHOW max_replication_slots", &[])
        .await
        .expect("slots")
        .get(0);
    assert!(
        slots.parse::<u32>().expect("a number") >= 10,
        "max_replication_slots = {slots}"
    );
    // A logical slot with pgoutput can really be created (what the Postgres source needs).
    let slot = kyma_test_harness::unique_name("slot");
    client
        .execute(
            &format!("SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"),
            &[],
        )
        .await
        .expect("create a logical slot");
    client
        .execute(&format!("SELECT pg_drop_replication_slot('{slot}')"), &[])
        .await
        .expect("drop the slot");
}

#[test]
fn postgres_rows_tell_null_from_empty_text_and_run_in_utc() {
    let pg = Postgres::shared();
    let database = pg.create_database("rows").expect("create database");
    let rows = pg
        .rows(
            &database,
            "SELECT * FROM (VALUES (1, NULL::text, timestamptz '2024-01-01 02:00+02'), \
             (2, '', NULL), (3, 'a|b, \"c\"', NULL)) v ORDER BY 1",
        )
        .expect("rows");
    let text = |s: &str| Some(s.to_owned());
    assert_eq!(
        rows,
        [
            vec![text("1"), None, text("2024-01-01 00:00:00+00")],
            vec![text("2"), text(""), None],
            vec![text("3"), text("a|b, \"c\""), None],
        ]
    );
    let none = pg.rows(&database, "SELECT 1 WHERE false").expect("no rows");
    assert!(none.is_empty(), "{none:?}");
}

#[tokio::test]
async fn mariadb_starts_with_row_binlog_and_gtids() {
    let maria = MariaDb::shared();
    let database = maria.create_database("harness").expect("create database");
    let pool = mysql_async::Pool::new(maria.url(&database).as_str());
    let mut conn = pool.get_conn().await.expect("connect to mariadb");
    let (log_bin, format, image, strict): (String, String, String, String) = conn
        .query_first("SELECT @@log_bin, @@binlog_format, @@binlog_row_image, @@gtid_strict_mode")
        .await
        .expect("read binlog settings")
        .expect("one row");
    assert_eq!(
        (
            log_bin.as_str(),
            format.as_str(),
            image.as_str(),
            strict.as_str()
        ),
        ("1", "ROW", "FULL", "1")
    );
    conn.query_drop("CREATE TABLE t (id INT PRIMARY KEY)")
        .await
        .expect("create table");
    conn.query_drop("INSERT INTO t VALUES (1)")
        .await
        .expect("insert");
    let gtid: String = conn
        .query_first("SELECT @@gtid_binlog_pos")
        .await
        .expect("gtid")
        .expect("row");
    assert!(!gtid.is_empty(), "a write must produce a GTID");
    drop(conn);
    pool.disconnect().await.expect("disconnect");
}

#[tokio::test]
async fn s3_starts_and_supports_put_get_list_and_conditional_put() {
    let s3 = S3::shared();
    let bucket = s3.create_bucket("harness").expect("create bucket");
    let store: Arc<dyn ObjectStore> =
        Arc::new(s3.bucket(&bucket).build().expect("build the S3 store"));
    let path = Path::from("extents/a.parquet");
    store
        .put(&path, PutPayload::from_static(b"extent bytes"))
        .await
        .expect("put");
    let read = store
        .get(&path)
        .await
        .expect("get")
        .bytes()
        .await
        .expect("body");
    assert_eq!(read, Bytes::from_static(b"extent bytes"));
    let listed = store
        .list_with_delimiter(Some(&Path::from("extents")))
        .await
        .expect("list");
    assert_eq!(listed.objects.len(), 1);
    // Create-only puts: the second must be refused (what safe manifest writes rely on).
    let fresh = Path::from("manifests/1.json");
    let create = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    store
        .put_opts(&fresh, PutPayload::from_static(b"1"), create.clone())
        .await
        .expect("first create");
    let second = store
        .put_opts(&fresh, PutPayload::from_static(b"2"), create)
        .await;
    assert!(
        matches!(second, Err(object_store::Error::AlreadyExists { .. })),
        "second create-only put: {second:?}"
    );
}

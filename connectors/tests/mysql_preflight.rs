//! What MariaDB sync refuses before it starts, each refusal naming the setting or privilege
//! to fix, on real servers: one with a binary log whose settings the test turns wrong one at
//! a time (and back), and one without a binary log; compressed events met while streaming.
//! Plus registration's probe errors.

use kyma_catalog::{ConnectorSpec, SourceType};
use kyma_connectors::mysql::sync::MyChangeSource;
use kyma_connectors::sync::{ChangeSource, SourceEvent, SourcePosition};
use kyma_connectors::{ConnectorError, SecretResolver};
use kyma_test_harness::MariaDb;

fn spec(url: &str, secret_ref: Option<&str>) -> ConnectorSpec {
    serde_json::from_value(serde_json::json!({
        "name": "preflight",
        "type": "mysql",
        "mode": "sync",
        "connection": {"url": url, "tls": "disable", "secret_ref": secret_ref},
        "scope": {"include_schemas": ["shop"]},
    }))
    .expect("a connector spec")
}

async fn preflight(url: &str, secrets: &SecretResolver) -> Result<(), ConnectorError> {
    MyChangeSource::new(&spec(url, None), secrets)
        .preflight()
        .await
}

/// Asserts that `result` is a definite refusal naming `field`, whose reason contains `says`.
fn assert_refused(result: Result<(), ConnectorError>, field: &str, says: &str) {
    let e = result.expect_err(field);
    assert!(!e.is_retryable(), "{e}");
    assert_eq!(e.field(), Some(field), "{e}");
    assert!(e.to_string().contains(says), "{field}: {e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_refuses_each_setting_sync_cannot_work_with_by_name() {
    let server = MariaDb::start().expect("a private MariaDB");
    server
        .sql("CREATE DATABASE shop; CREATE TABLE shop.t (id INT PRIMARY KEY)")
        .expect("schema");
    let url = server.url("shop");
    let secrets = SecretResolver::new("/nonexistent");
    preflight(&url, &secrets)
        .await
        .expect("the harness server is fit for sync");

    let wrong = [
        (
            "binlog_format",
            "'STATEMENT'",
            "'ROW'",
            "set binlog_format=ROW",
        ),
        (
            "binlog_row_image",
            "'MINIMAL'",
            "'FULL'",
            "set binlog_row_image=FULL",
        ),
        ("gtid_strict_mode", "OFF", "ON", "set gtid_strict_mode=ON"),
        ("log_bin_compress", "ON", "OFF", "set log_bin_compress=OFF"),
    ];
    for (setting, bad, good, fix) in wrong {
        server
            .sql(&format!("SET GLOBAL {setting} = {bad}"))
            .expect("set");
        assert_refused(
            preflight(&url, &secrets).await,
            &format!("source setting {setting}"),
            fix,
        );
        server
            .sql(&format!("SET GLOBAL {setting} = {good}"))
            .expect("reset");
    }

    server
        .sql("CREATE TABLE shop.packed (id INT PRIMARY KEY, body VARCHAR(100) COMPRESSED)")
        .expect("compressed column");
    assert_refused(
        preflight(&url, &secrets).await,
        "source setting COMPRESSED columns",
        "shop.packed.body",
    );
    server.sql("DROP TABLE shop.packed").expect("drop");

    let dir = tempfile::tempdir().expect("secrets dir");
    std::fs::write(dir.path().join("reader_pw"), "s3cret-pw\n").expect("secret");
    server
        .sql(
            "CREATE USER 'reader'@'127.0.0.1' IDENTIFIED BY 's3cret-pw';
             GRANT SELECT ON shop.* TO 'reader'@'127.0.0.1';",
        )
        .expect("user");
    let reader_url = url.replace("root@", "reader@");
    let with_secret = SecretResolver::new(dir.path());
    let reader = MyChangeSource::new(&spec(&reader_url, Some("reader_pw")), &with_secret)
        .preflight()
        .await;
    assert_refused(
        reader,
        "source privilege REPLICATION SLAVE",
        "GRANT REPLICATION SLAVE ON *.*",
    );
    server
        .sql("GRANT REPLICATION SLAVE ON *.* TO 'reader'@'127.0.0.1'")
        .expect("grant");
    MyChangeSource::new(&spec(&reader_url, Some("reader_pw")), &with_secret)
        .preflight()
        .await
        .expect("granted, the user may sync");

    let without_binlog = MariaDb::start_without_binlog().expect("a MariaDB without binlog");
    without_binlog.sql("CREATE DATABASE shop").expect("schema");
    assert_refused(
        preflight(&without_binlog.url("shop"), &secrets).await,
        "source setting log_bin",
        "start the server with log_bin",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_names_the_field_for_a_wrong_password_database_or_host() {
    let server = MariaDb::shared();
    let kind = kyma_connectors::registry::kind(SourceType::Mysql).expect("mysql is a kind");
    let dir = tempfile::tempdir().expect("secrets dir");
    std::fs::write(dir.path().join("wrong_pw"), "not-the-password").expect("secret");
    let secrets = SecretResolver::new(dir.path());

    let info = kind
        .probe(&spec(&server.url("mysql"), None), &secrets)
        .await
        .expect("root reaches the server");
    assert!(info.server_version.contains("MariaDB"), "{info:?}");

    let wrong_password = kind
        .probe(&spec(&server.url("mysql"), Some("wrong_pw")), &secrets)
        .await
        .expect_err("a wrong password");
    assert_eq!(
        wrong_password.field(),
        Some("connection.secret_ref"),
        "{wrong_password}"
    );
    assert!(!wrong_password.to_string().contains("not-the-password"));

    let no_database = kind
        .probe(&spec(&server.url("no_such_db"), None), &secrets)
        .await
        .expect_err("an unknown database");
    assert_eq!(no_database.field(), Some("connection.url"), "{no_database}");
    assert!(
        no_database.to_string().contains("no_such_db"),
        "{no_database}"
    );

    let port = kyma_test_harness::free_port().expect("a free port");
    let unreachable = kind
        .probe(
            &spec(&format!("mysql://root@127.0.0.1:{port}/shop"), None),
            &secrets,
        )
        .await
        .expect_err("nothing listens");
    assert!(unreachable.is_retryable(), "{unreachable}");
    assert_eq!(unreachable.field(), Some("connection.url"), "{unreachable}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_binlog_events_fail_the_stream_closed_naming_the_setting() {
    let server = MariaDb::start().expect("a private MariaDB");
    server
        .sql("CREATE DATABASE shop; CREATE TABLE shop.t (id INT PRIMARY KEY, body TEXT)")
        .expect("schema");
    let secrets = SecretResolver::new("/nonexistent");
    let mut source = MyChangeSource::new(&spec(&server.url("shop"), None), &secrets);
    source.discover().await.expect("tables");
    let from = SourcePosition(
        server
            .sql("SELECT @@gtid_binlog_pos")
            .expect("position")
            .trim()
            .to_owned(),
    );
    let mut stream = source.stream(&from).await.expect("stream");

    // The first row is read; once the server compresses its events, the stream stops
    // with a definite error instead of skipping what it cannot read.
    server
        .sql("INSERT INTO shop.t VALUES (1, 'plain')")
        .expect("insert");
    server
        .sql(&format!(
            "SET GLOBAL log_bin_compress = ON; SET GLOBAL log_bin_compress_min_len = 10;
             INSERT INTO shop.t VALUES (2, '{}')",
            "x".repeat(1000)
        ))
        .expect("compressed insert");
    let mut rows = 0;
    let error = loop {
        let next = tokio::time::timeout(std::time::Duration::from_secs(30), stream.next());
        match next
            .await
            .expect("the stream reports the compressed events within 30 s")
        {
            Some(Ok(SourceEvent::Row(_))) => rows += 1,
            Some(Ok(_)) => {}
            Some(Err(e)) => break e,
            None => panic!("the stream ended without an error"),
        }
    };
    assert_eq!(rows, 1, "the uncompressed row was read");
    assert!(!error.is_retryable(), "{error}");
    assert_eq!(
        error.field(),
        Some("source setting log_bin_compress"),
        "{error}"
    );
}

//! Sources over TLS with `verify-full` against the connector's own CA
//! (`connection.tls_ca_ref`), on a real PostgreSQL and a real MariaDB serving certificates
//! from a test CA: Postgres' federation connection (rustls) and its replication connection's
//! libpq settings, and MariaDB's connection, verify the chain and the host name; another
//! CA, the Web PKI roots, or a CA without `verify-full` are refused naming the field to fix.

use std::process::Command;

use kyma_catalog::{ConnectionSpec, TlsMode};
use kyma_connectors::SecretResolver;
use kyma_connectors::postgres::connect;
use kyma_connectors::postgres::sync::replication_conninfo;
use kyma_test_harness::{MariaDb, Postgres, TestCa};

fn spec(url: String, tls: TlsMode, ca: Option<&str>) -> ConnectionSpec {
    ConnectionSpec {
        url,
        secret_ref: None,
        tls,
        pool_size: 1,
        tls_ca_ref: ca.map(str::to_owned),
    }
}

/// A test CA, a server it issues for, and secrets `source-ca` (that CA) and `other-ca` (a
/// CA that issued nothing the server shows).
fn cas<S>(name: &str, start: impl FnOnce(&TestCa) -> S) -> (S, tempfile::TempDir, SecretResolver) {
    let ca = TestCa::new(name).expect("CA");
    let stranger = TestCa::new(&format!("{name}-stranger")).expect("another CA");
    let server = start(&ca);
    let dir = tempfile::tempdir().expect("secrets");
    std::fs::write(dir.path().join("source-ca"), ca.pem().expect("pem")).expect("write");
    std::fs::write(dir.path().join("other-ca"), stranger.pem().expect("pem")).expect("write");
    let secrets = SecretResolver::new(dir.path());
    (server, dir, secrets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_checks_the_source_against_the_connectors_own_ca() {
    let (pg, _dir, secrets) = cas("postgres", |ca| {
        Postgres::start_tls(ca).expect("postgres with TLS")
    });
    let pg_spec = |host: &str, tls, ca| {
        spec(
            format!("postgres://postgres@{host}:{}/postgres", pg.port()),
            tls,
            ca,
        )
    };

    // Federation (rustls): the chain and the host name, by IP and by DNS name.
    for host in ["127.0.0.1", "localhost"] {
        let client = connect(
            &pg_spec(host, TlsMode::VerifyFull, Some("source-ca")),
            &secrets,
        )
        .await
        .unwrap_or_else(|e| panic!("verify-full to {host} with the right CA: {e}"));
        let encrypted: bool = client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .expect("pg_stat_ssl")
            .try_get(0)
            .expect("bool");
        assert!(encrypted, "the connection is encrypted");
    }
    for (tls, ca, field) in [
        (TlsMode::VerifyFull, Some("other-ca"), "connection.tls"),
        (TlsMode::VerifyFull, None, "connection.tls"),
        (
            TlsMode::Required,
            Some("source-ca"),
            "connection.tls_ca_ref",
        ),
        (
            TlsMode::VerifyFull,
            Some("no-such-ca"),
            "connection.tls_ca_ref",
        ),
    ] {
        let error = connect(&pg_spec("127.0.0.1", tls, ca), &secrets)
            .await
            .err()
            .unwrap_or_else(|| panic!("{tls:?} with {ca:?} must be refused"));
        assert_eq!(error.field(), Some(field), "{tls:?} with {ca:?}: {error}");
    }

    // Replication (libpq): the conninfo points sslrootcert at the CA, and libpq verifies.
    let psql = |conninfo: String| {
        Command::new(pg.program("psql"))
            .arg(conninfo)
            .args(["-Atc", "IDENTIFY_SYSTEM"])
            .output()
            .expect("run psql")
    };
    let good = replication_conninfo(
        &pg_spec("localhost", TlsMode::VerifyFull, Some("source-ca")),
        &secrets,
    )
    .expect("conninfo");
    let identified = psql(good);
    assert!(
        identified.status.success(),
        "libpq verify-full with the CA: {}",
        String::from_utf8_lossy(&identified.stderr)
    );
    let bad = replication_conninfo(
        &pg_spec("localhost", TlsMode::VerifyFull, Some("other-ca")),
        &secrets,
    )
    .expect("conninfo");
    let refused = psql(bad);
    assert!(
        !refused.status.success(),
        "libpq accepted a certificate from another CA"
    );
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("certificate verify failed"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_checks_a_mariadb_source_against_the_connectors_own_ca() {
    use mysql_async::prelude::Queryable;

    let (maria, _dir, secrets) = cas("mariadb", |ca| {
        MariaDb::start_tls(ca).expect("mariadb with TLS")
    });
    let maria_spec = |host: &str, tls, ca| {
        spec(
            format!("mysql://root@{host}:{}/mysql", maria.port()),
            tls,
            ca,
        )
    };
    for host in ["127.0.0.1", "localhost"] {
        let mut conn = kyma_connectors::mysql::connect(
            &maria_spec(host, TlsMode::VerifyFull, Some("source-ca")),
            &secrets,
        )
        .await
        .unwrap_or_else(|e| panic!("verify-full to {host} with the right CA: {e}"));
        let cipher: Option<(String, String)> = conn
            .query_first("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
            .await
            .expect("Ssl_cipher");
        assert!(
            cipher.is_some_and(|(_, cipher)| !cipher.is_empty()),
            "the session to {host} is encrypted"
        );
    }
    for (tls, ca) in [
        (TlsMode::VerifyFull, Some("other-ca")),
        (TlsMode::VerifyFull, None),
    ] {
        let error = kyma_connectors::mysql::connect(&maria_spec("127.0.0.1", tls, ca), &secrets)
            .await
            .err()
            .unwrap_or_else(|| panic!("{tls:?} with {ca:?} must be refused"));
        assert_eq!(
            error.field(),
            Some("connection.tls"),
            "{tls:?} with {ca:?}: {error}"
        );
    }
}

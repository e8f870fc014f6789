//! kyma through the Python clients (ADBC `adbc_driver_flightsql` and `pyarrow.flight`, and
//! pandas and Polars reading through ADBC) against real `kyma` processes: a standalone session
//! that survives a restart, the quick start's DataFrame reads, and two query nodes on etcd and S3
//! that see each other's commits. The script is tests/python/kyma_clients.py; `scripts/test`
//! installs the clients into a virtualenv and sets KYMA_TEST_PYTHON.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::Kyma;
use kyma_test_harness::{Etcd, S3, free_port, unique_name};

fn python() -> PathBuf {
    let python = std::env::var_os("KYMA_TEST_PYTHON")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/kyma/venv/bin/python"))
        })
        .expect("KYMA_TEST_PYTHON or HOME");
    assert!(
        python.is_file(),
        "{} is missing: run ./scripts/test, which installs adbc_driver_flightsql, pyarrow, pandas and polars into a virtualenv (or point KYMA_TEST_PYTHON at a Python that has them)",
        python.display()
    );
    python
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/python/kyma_clients.py")
}

/// Runs one command of the client script; fails the test with its output when it fails.
fn clients(args: &[&str], nodes: &[&Kyma]) {
    let output = Command::new(python())
        .arg(script())
        .args(args)
        .output()
        .expect("run python");
    let logs: Vec<String> = nodes.iter().map(|n| n.log()).collect();
    assert!(
        output.status.success(),
        "kyma_clients.py {args:?} failed:\n{}\n{}\nkyma logs:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        logs.join("\n---\n")
    );
}

fn grpc_port() -> (String, String) {
    let port = free_port().expect("port");
    (
        format!("--grpc-addr=127.0.0.1:{port}"),
        format!("grpc://127.0.0.1:{port}"),
    )
}

#[test]
fn python_adbc_session_against_standalone_survives_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().to_string_lossy().into_owned();
    let (grpc, uri) = grpc_port();
    let mut kyma = Kyma::spawn(&["standalone", "--data-dir", &data, &grpc]);
    kyma.wait_for_200("/readyz");
    clients(&["session", &uri], &[&kyma]);
    let metrics = kyma.wait_for_200("/metrics");
    assert!(metrics.contains("kyma_rows_ingested_total"), "{metrics}");
    assert!(kyma.terminate().success(), "SIGTERM is a clean shutdown");

    let mut again = Kyma::spawn(&["standalone", "--data-dir", &data, &grpc]);
    again.wait_for_200("/readyz");
    clients(&["after-restart", &uri], &[&again]);
}

#[test]
fn pandas_and_polars_read_a_standalone_through_adbc() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().to_string_lossy().into_owned();
    let (grpc, uri) = grpc_port();
    let mut kyma = Kyma::spawn(&["standalone", "--data-dir", &data, &grpc]);
    kyma.wait_for_200("/readyz");
    clients(&["dataframes", &uri], &[&kyma]);
}

#[test]
fn two_query_nodes_on_etcd_and_s3_see_each_others_commits() {
    let etcd = Etcd::shared();
    let s3 = S3::shared();
    let bucket = s3.create_bucket("nodes").expect("bucket");
    let catalog = format!(
        "--catalog=etcd://{}/{}",
        etcd.host_port(),
        unique_name("nodes")
    );
    let store = format!("--store=s3://{bucket}/extents");
    let endpoint = format!("--s3-endpoint={}", s3.endpoint());
    let env = [
        ("AWS_ACCESS_KEY_ID", S3::ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", S3::SECRET_KEY),
        ("AWS_REGION", S3::REGION),
    ];
    let (grpc_a, uri_a) = grpc_port();
    let (grpc_b, uri_b) = grpc_port();
    let mut a = Kyma::spawn_with_env(&["query-node", &catalog, &store, &endpoint, &grpc_a], &env);
    let mut b = Kyma::spawn_with_env(&["query-node", &catalog, &store, &endpoint, &grpc_b], &env);
    a.wait_for_200("/readyz");
    b.wait_for_200("/readyz");
    clients(&["write", &uri_a, "shared_events"], &[&a, &b]);
    clients(&["wait-read", &uri_b, "shared_events"], &[&a, &b]);
}

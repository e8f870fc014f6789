//! The `kyma` binary as a user runs it: real processes, real ports, real catalogs.

mod common;

use common::Kyma;
use kyma_test_harness::{Etcd, free_port, unique_name};

#[test]
fn standalone_serves_health_readiness_and_metrics_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let grpc = format!("--grpc-addr=127.0.0.1:{}", free_port().expect("port"));
    let mut kyma = Kyma::spawn(&["standalone", "--data-dir", &data.to_string_lossy(), &grpc]);
    assert!(kyma.wait_for_200("/healthz").ends_with("ok\n"));
    assert!(kyma.wait_for_200("/readyz").ends_with("ready\n"));
    assert!(
        kyma.wait_for_200("/metrics")
            .contains("kyma_build_info{version=")
    );
    assert!(
        data.join("catalog.redb").is_file(),
        "the embedded catalog lives in the data dir"
    );
    assert!(kyma.terminate().success(), "SIGTERM is a clean shutdown");
}

#[test]
fn a_second_standalone_on_the_same_data_dir_is_refused_naming_the_problem() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().to_string_lossy().into_owned();
    let grpc = format!("--grpc-addr=127.0.0.1:{}", free_port().expect("port"));
    let mut first = Kyma::spawn(&["standalone", "--data-dir", &data, &grpc]);
    first.wait_for_200("/readyz");
    let second = common::run(&[
        "standalone",
        "--data-dir",
        &data,
        &grpc,
        &format!("--http-addr=127.0.0.1:{}", free_port().expect("port")),
    ]);
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("already open in another process"),
        "{stderr}"
    );
}

#[test]
fn bad_flags_are_refused_at_start_naming_the_flag() {
    for (args, flag) in [
        (
            vec![
                "query-node",
                "--catalog",
                "redis://x",
                "--store",
                "memory://",
            ],
            "--catalog",
        ),
        (
            vec![
                "query-node",
                "--catalog",
                "etcd://h:2379/k",
                "--store",
                "ftp://x",
            ],
            "--store",
        ),
        (
            vec!["standalone", "--http-addr", "not-an-address"],
            "--http-addr",
        ),
        (
            vec![
                "cdc-worker",
                "--catalog",
                "etcd://h:2379/k",
                "--store",
                "memory://",
                "--lease-ttl-secs",
                "1",
            ],
            "--lease-ttl-secs",
        ),
        (vec!["standalone", "--no-such-flag"], "--no-such-flag"),
    ] {
        let output = common::run(&args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
}

#[test]
fn query_node_and_cdc_worker_run_on_etcd_and_the_worker_registers_under_a_lease() {
    let etcd = Etcd::shared();
    let prefix = unique_name("cli");
    let catalog = format!("--catalog=etcd://{}/{prefix}", etcd.host_port());
    let mut node = Kyma::spawn(&[
        "query-node",
        &catalog,
        "--store=memory://",
        &format!("--grpc-addr=127.0.0.1:{}", free_port().expect("port")),
    ]);
    node.wait_for_200("/readyz");
    let mut worker = Kyma::spawn(&[
        "cdc-worker",
        &catalog,
        "--store=memory://",
        "--worker-id=w-1",
        "--lease-ttl-secs=5",
    ]);
    worker.wait_for_200("/readyz");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let registered = |expected: bool| {
        runtime.block_on(async {
            let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
                .await
                .expect("connect");
            let response = client
                .get(format!("/{prefix}/workers/w-1"), None)
                .await
                .expect("get");
            let kv = response.kvs().first().cloned();
            assert_eq!(kv.is_some(), expected, "worker key present: {expected}");
            if let Some(kv) = kv {
                assert_ne!(kv.lease(), 0, "the worker key lives under a lease");
            }
        })
    };
    registered(true);
    assert!(worker.terminate().success());
    // A clean shutdown revokes the lease: the worker is gone at once, not after its TTL.
    registered(false);
}

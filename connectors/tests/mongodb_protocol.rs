//! Wire-level protocol tests of kyma's MongoDB driver calls (mongodb 3.9.1) against PyPI
//! `mockupdb`, MongoDB's wire-protocol test server, scripted per scenario by
//! `mongodb_protocol/server.py`: the handshake and topology check, a change stream whose empty
//! first batch carries the post-batch resume token, `getMore` batches and a dry one, a 286 on
//! resume, and a snapshot session's reads. These check what kyma sends and how it reads the
//! answers; they are not a stand-in for a MongoDB server (the real-server suites run when
//! `KYMA_TEST_MONGODB_URL` names a replica set).

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdout, Command, Stdio};

use futures::StreamExt;
use kyma_catalog::ConnectorSpec;
use kyma_connectors::mongodb::sync::MongoChangeSource;
use kyma_connectors::mongodb::sync::deployment::{
    Deployment, DriverDeployment, FeedError, FullDocument, StreamStart,
};
use kyma_connectors::sync::{ChangeSource, SourcePosition, TableId};
use kyma_connectors::{ConnectorError, SecretResolver};

/// A scripted mockupdb server.
struct Script {
    child: Child,
    stdout: BufReader<ChildStdout>,
    port: u16,
}

impl Script {
    /// Starts `scenario` and waits until it listens.
    fn start(scenario: &str) -> Self {
        let python = std::env::var("KYMA_TEST_PYTHON").unwrap_or_else(|_| {
            format!(
                "{}/.cache/kyma/venv/bin/python",
                std::env::var("HOME").unwrap_or_default()
            )
        });
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/mongodb_protocol/server.py"
        );
        let mut child = Command::new(&python)
            .args([script, scenario])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {python} ({e}); ./scripts/test installs it"));
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .expect("the script's first line");
        let Some(port) = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
        else {
            let mut stderr = String::new();
            let _ = child
                .stderr
                .take()
                .map(|mut e| e.read_to_string(&mut stderr));
            panic!(
                "the mockupdb script did not start (./scripts/test installs mockupdb): {line}{stderr}"
            );
        };
        Self {
            child,
            stdout,
            port,
        }
    }

    /// A sync connector on the script's server (plaintext, database `app`).
    fn spec(&self) -> ConnectorSpec {
        serde_json::from_value(serde_json::json!({
            "name": "mg", "type": "mongodb", "mode": "sync",
            "connection": {
                "url": format!("mongodb://localhost:{}/app?directConnection=true", self.port),
                "tls": "disable",
            },
            "scope": { "include_schemas": ["app"] },
        }))
        .expect("spec")
    }

    /// Waits for the script's end and fails the test unless it went as scripted.
    fn finish(mut self) {
        drop(self.child.stdin.take());
        let mut rest = String::new();
        let _ = self.stdout.read_to_string(&mut rest);
        let mut stderr = String::new();
        let _ = self
            .child
            .stderr
            .take()
            .map(|mut e| e.read_to_string(&mut stderr));
        let status = self.child.wait().expect("the script ends");
        assert!(
            status.success() && rest.contains("OK"),
            "the script failed: {rest}{stderr}"
        );
    }
}

fn secrets() -> SecretResolver {
    SecretResolver::new(std::env::temp_dir())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_stream_keeps_the_post_batch_resume_token_of_each_batch() {
    let script = Script::start("change_stream");
    let deployment = DriverDeployment::new(&script.spec(), &secrets());
    let mut feed = match deployment
        .watch(StreamStart::Now, FullDocument::UpdateLookup)
        .await
    {
        Ok(feed) => feed,
        Err(FeedError::HistoryLost(e)) => panic!("history lost: {e}"),
        Err(FeedError::Other(e)) => panic!("watch: {e}"),
    };
    assert_eq!(
        feed.resume_token().as_deref(),
        Some("82000003E800000002"),
        "the empty first batch's post-batch resume token, before any getMore"
    );
    let dry = feed
        .next()
        .await
        .map_err(|_| "next")
        .expect("the first batch");
    assert!(
        dry.is_none(),
        "the empty first batch is dry without a getMore"
    );
    let mut keys = Vec::new();
    while let Some(event) = feed.next().await.map_err(|_| "next").expect("an event") {
        keys.push(
            event
                .get_document("documentKey")
                .and_then(|k| k.get_i32("_id"))
                .expect("key"),
        );
        assert_eq!(event.get_str("operationType").expect("op"), "insert");
    }
    assert_eq!(keys, [1, 2]);
    assert_eq!(
        feed.resume_token().as_deref(),
        Some("82000003E800000009"),
        "the dry batch's token"
    );
    drop(feed);
    script.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_the_oplog_no_longer_holds_fails_as_history_lost() {
    let script = Script::start("history_lost");
    let mut source = MongoChangeSource::new(&script.spec(), &secrets());
    let from = SourcePosition("1000.2/82000003E800000002".into());
    let Err(e) = source.stream(&from).await else {
        panic!("the stream opened over lost history");
    };
    assert!(matches!(e, ConnectorError::HistoryLost(_)), "{e:?}");
    assert!(e.to_string().contains("retention.on_history_lost"), "{e}");
    script.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_session_reads_every_collection_at_the_time_the_server_picked() {
    let script = Script::start("snapshot");
    let deployment = DriverDeployment::new(&script.spec(), &secrets());
    let mut read = deployment.snapshot().await.expect("snapshot");
    assert_eq!(read.cluster_time(), (1000, 7));
    let documents: Vec<_> = read
        .documents(&TableId::new("app", "orders"))
        .await
        .expect("documents")
        .collect()
        .await;
    let keys: Vec<i32> = documents
        .into_iter()
        .map(|d| d.expect("document").get_i32("_id").expect("_id"))
        .collect();
    assert_eq!(keys, [1, 2]);
    drop(read);
    script.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_refuses_a_standalone_server_by_name() {
    let script = Script::start("standalone");
    let mut source = MongoChangeSource::new(&script.spec(), &secrets());
    let e = source
        .preflight()
        .await
        .expect_err("a standalone server cannot stream changes");
    assert_eq!(e.field(), Some("connection.url"), "{e}");
    assert!(e.to_string().contains("replica set"), "{e}");
    script.finish();
}

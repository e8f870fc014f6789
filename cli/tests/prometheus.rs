//! A real Prometheus (Debian's `prometheus`) scrapes a `kyma query-node` and a
//! `kyma cdc-worker` syncing a real PostgreSQL, and the series SPEC §8 names — queries,
//! latency, rows, pushdown counts, per-connector lag, rows and bytes synced, commits and
//! commit conflicts, errors — are read back through its HTTP API with sane values.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::runtime;
use common::sync::{SyncSetup, flight_rows};
use kyma_test_harness::free_port;
use serde_json::{Value, json};

const PROMETHEUS: &str = "/usr/bin/prometheus";

/// A Prometheus server scraping `targets` (job name, HTTP port) every second; killed on drop.
struct Prometheus {
    child: Child,
    port: u16,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(targets: &[(&str, u16)]) -> Self {
        assert!(
            std::path::Path::new(PROMETHEUS).exists(),
            "{PROMETHEUS} is missing: scripts/test installs Debian's prometheus"
        );
        let dir = tempfile::tempdir().expect("dir");
        let jobs: String = targets
            .iter()
            .map(|(job, port)| {
                format!(
                    "  - job_name: {job}\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
                )
            })
            .collect();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!("global:\n  scrape_interval: 1s\nscrape_configs:\n{jobs}"),
        )
        .expect("config");
        let port = free_port().expect("port");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Self {
            child,
            port,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The instant vector `query` evaluates to: each series' labels and value.
    async fn query(&self, query: &str) -> Option<Vec<(Value, f64)>> {
        let response = self
            .http
            .get(format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .query(&[("query", query)])
            .send()
            .await
            .ok()?;
        let body: Value = serde_json::from_str(&response.text().await.ok()?).ok()?;
        let result = body["data"]["result"].as_array()?;
        result
            .iter()
            .map(|series| {
                let value = series["value"][1].as_str()?.parse().ok()?;
                Some((series["metric"].clone(), value))
            })
            .collect()
    }

    /// Polls `query` until `ready` holds for its result; fails after 60 s.
    async fn until(
        &self,
        query: &str,
        ready: impl Fn(&[(Value, f64)]) -> bool,
    ) -> Vec<(Value, f64)> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let result = self.query(query).await.unwrap_or_default();
            if ready(&result) {
                return result;
            }
            assert!(
                Instant::now() < deadline,
                "`{query}` never satisfied the check; last result {result:?}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The one value of `query`, once it has one.
    async fn value(&self, query: &str) -> f64 {
        self.until(query, |r| r.len() == 1).await[0].1
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_real_prometheus_scrapes_the_series_the_spec_names_from_a_query_node_and_a_worker() {
    const SYNCED: &str = "pg_sync";
    runtime().block_on(async {
        let setup = SyncSetup::new("prom").await;
        setup.sql(
            "CREATE TABLE items (id int PRIMARY KEY, v text);
             INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 500) g;",
        );
        let worker = setup.worker("w-1");
        setup.register(SYNCED).await;
        setup.wait_caught_up(SYNCED, &worker).await;
        setup.sql("UPDATE items SET v = 'changed' WHERE id <= 10");
        setup.wait_caught_up(SYNCED, &worker).await;
        setup
            .create_connector(
                json!({"name": "pg_live", "type": "postgres", "mode": "federation",
                                     "connection": {"url": setup.source_url()}}),
            )
            .await;
        let (node, mut flight) = setup.query_node().await;
        let federated = "SELECT count(*) FROM pg_live.public.items WHERE id > 100";
        let deadline = Instant::now() + Duration::from_secs(30);
        while flight_rows(&mut flight, federated).await != Ok(vec!["400".to_owned()]) {
            assert!(
                Instant::now() < deadline,
                "the federated connector never answered"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let synced = flight_rows(&mut flight, "SELECT count(*) FROM pg_sync.public.items").await;
        assert_eq!(synced, Ok(vec!["500".to_owned()]));
        assert!(
            flight_rows(
                &mut flight,
                "SELECT no_such_column FROM pg_sync.public.items"
            )
            .await
            .is_err()
        );

        let prometheus = Prometheus::start(&[
            ("query-node", node.http_port),
            ("cdc-worker", worker.http_port),
        ]);
        prometheus.until("up == 1", |r| r.len() == 2).await;

        // Query node: statements, errors, latency, rows, pushdown.
        let statements = prometheus
            .value("kyma_statements_total{job=\"query-node\"}")
            .await;
        assert!(statements >= 3.0, "statements {statements}");
        let errors = prometheus
            .value("kyma_statement_errors_total{job=\"query-node\"}")
            .await;
        assert!(
            errors >= 1.0 && errors < statements,
            "errors {errors} of {statements}"
        );
        let count = prometheus
            .value("kyma_statement_duration_seconds_count")
            .await;
        assert!(count >= 3.0, "latency observations {count}");
        let all = prometheus
            .value("kyma_statement_duration_seconds_bucket{le=\"+Inf\"}")
            .await;
        assert_eq!(all, count, "the +Inf bucket holds every observation");
        let sum = prometheus
            .value("kyma_statement_duration_seconds_sum")
            .await;
        assert!(sum > 0.0 && sum < 60.0 * count, "latency sum {sum}");
        let buckets = prometheus
            .query("kyma_statement_duration_seconds_bucket")
            .await
            .unwrap_or_default();
        assert!(buckets.len() >= 10, "{buckets:?}");
        let rows = prometheus.value("kyma_rows_returned_total").await;
        assert!(rows >= 2.0, "rows returned {rows}");
        let filters = prometheus
            .value("kyma_pushdown_total{kind=\"filter\"}")
            .await;
        assert!(filters >= 1.0, "the WHERE ran at the source: {filters}");
        let aggregates = prometheus
            .value("kyma_pushdown_total{kind=\"aggregate\"}")
            .await;
        assert!(
            aggregates >= 1.0,
            "count(*) ran at the source: {aggregates}"
        );

        // Worker: per connector rows, bytes, commits, conflicts, lag, errors.
        let per = |name: &str| format!("{name}{{job=\"cdc-worker\",connector=\"{SYNCED}\"}}");
        assert_eq!(
            prometheus
                .value(&per("kyma_sync_snapshot_rows_total"))
                .await,
            500.0
        );
        let streamed = prometheus.value(&per("kyma_sync_rows_total")).await;
        assert!(streamed >= 10.0, "the 10 updates were streamed: {streamed}");
        let bytes = prometheus.value(&per("kyma_sync_bytes_total")).await;
        assert!(bytes > 1000.0, "bytes synced {bytes}");
        let commits = prometheus.value(&per("kyma_sync_commits_total")).await;
        assert!(
            commits >= 2.0,
            "a snapshot and a streaming commit: {commits}"
        );
        let conflicts = prometheus
            .value(&per("kyma_sync_commit_conflicts_total"))
            .await;
        assert!(
            conflicts >= 0.0 && conflicts <= commits,
            "conflicts {conflicts}"
        );
        let lag = prometheus.value(&per("kyma_sync_lag_seconds")).await;
        assert!((0.0..60.0).contains(&lag), "lag {lag}");
        let errors = prometheus
            .until(
                &format!("kyma_sync_errors_total{{connector=\"{SYNCED}\"}}"),
                |r| r.len() == 2,
            )
            .await;
        assert!(
            errors.iter().all(|(_, n)| *n == 0.0),
            "no sync errors: {errors:?}"
        );
    });
}

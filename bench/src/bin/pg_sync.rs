//! Postgres sync: kyma's CDC worker against what PostgreSQL itself streams and copies, and the
//! lag from a source commit to a query that sees it, in one run on one machine.
//!
//! The benchmark starts the real servers of `kyma-test-harness` — PostgreSQL 15
//! (`wal_level=logical`), etcd (the catalog) and s3s-fs (the extent store; `--store local`
//! puts the extents in a local directory instead) — and runs in this process a kyma CDC
//! worker ([`CdcWorker`] on a tokio runtime of its own, started as the `kyma cdc-worker`
//! binary starts it: default [`SyncOptions`], lease 10 s) and a query node serving Flight SQL
//! on loopback, each with its own catalog connection. Three phases, and an optional fourth:
//!
//! 1. **Snapshot.** `--snapshot-runs` times, a table of `--rows` rows is copied out with
//!    `COPY … TO STDOUT (FORMAT binary)` (a client drains it, counting rows by the tuple
//!    headers), then a new sync connector is registered over its database and timed until
//!    its snapshot is committed (the connector's cursor appears in the catalog) and until a
//!    Flight SQL `count(*)` of the synced table answers with every row (polled from the
//!    commit on, so the polls take nothing from the copy); the ratio is on the latter. Each
//!    run's ratio is against its own COPY, taken just before it, so that a machine whose
//!    speed drifts between runs skews neither; the report gives each run and the median. The
//!    worker reports each copy's stages (`kyma_cdc_worker::COPY_STAGES` debug events). All
//!    but the last run's connectors are deleted (their slots dropped) before the next run.
//! 2. **Steady-state stream.** A second connector is registered over a database holding
//!    `bench_changes`, snapshotted and caught up, then paused. Two more pgoutput slots are
//!    created, and a workload of `--changes` row changes (inserts, updates and deletes of
//!    distinct rows in transactions of `--txn-changes`) runs. The identical WAL range is then
//!    consumed by one consumer at a time: `pg_recvlogical` (pgoutput, proto 1, the
//!    connector's publication, `--endpos` at the end of the workload, to `/dev/null`);
//!    `pg_logical_slot_get_binary_changes` (the server decoding alone, for reference); and
//!    kyma after resuming the connector, until its committed cursor passes the workload's
//!    last commit. The two streaming consumers are timed from their slot turning active.
//! 3. **Lag.** With the connector running, `--lag-rate` small transactions a second for
//!    `--lag-secs` each insert one probe row (and update a few rows of `bench_changes`); a
//!    Flight SQL client polls `SELECT max(id)` of the synced probe table every `--poll-ms`.
//!    The lag of a row is from its client-side commit acknowledgement to the answer of the
//!    first poll that includes it (and, as a lower bound, to that poll's start). The worker
//!    reports each streaming commit's stages (`kyma_cdc_worker::COMMIT_STAGES` debug events,
//!    collected by a tracing layer) and the query node's view records when it applies each
//!    catalog revision: together, a per-stage breakdown of a change's trip.
//! 4. **Reads** (`--read-update-every N`). A grouped aggregate over the snapshot's synced
//!    table, timed on kyma and on Postgres: settled, right after one source transaction
//!    updating every `N`th row (kyma's query fenced on the transaction's LSN, so it reads
//!    the burst), and once compaction has left no delta extent.
//!
//! Run it with `./scripts/bench pg-sync` (release build).

#![allow(
    clippy::print_stdout,
    reason = "a benchmark's report is what it prints on standard output"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, Int64Array, RecordBatch};
use arrow::datatypes::DataType;
use arrow_flight::sql::client::FlightSqlServiceClient;
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use kyma_bench::{BenchResult, ServedNode, machine};
use kyma_catalog::{Catalog, CatalogLocation, ConnectorSpec, DesiredState, TableRef};
use kyma_cdc_worker::{COMMIT_STAGES, COPY_STAGES, CdcWorker, SyncOptions};
use kyma_connectors::SecretResolver;
use kyma_connectors::postgres::sync::{SyncNames, parse_lsn};
use kyma_query_node::FederationOptions;
use kyma_query_node::view::CatalogView;
use kyma_table::cache::{ExtentCache, QUERY_NODE_CAPACITY_MB, QUERY_NODE_MAX_OBJECT_MB};
use kyma_table::columns;
use kyma_table::writer::current_manifest;
use kyma_table::{
    CompactionOptions, ExtentEntry, ExtentStore, S3Options, StoreLocation, needs_compaction,
};
use kyma_test_harness::{Etcd, Postgres, S3, unique_name};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio_postgres::{Client, NoTls};
use tonic::transport::Channel;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The snapshot phase's connector and table.
const SNAP_CONNECTOR: &str = "snap";
/// The stream and lag phases' connector.
const CDC_CONNECTOR: &str = "cdc";
/// The slot `pg_recvlogical` reads.
const RECV_SLOT: &str = "bench_recvlogical";
/// The slot the SQL decoding function reads.
const SQL_SLOT: &str = "bench_sql_decoding";
/// How often a timing loop looks at the slot and the catalog.
const TICK: Duration = Duration::from_millis(5);
/// How long after its commit a copy's stage event may come before the report goes without.
const STAGE_EVENT_WITHIN: Duration = Duration::from_secs(5);
/// The longest any consumer may take to catch up before the run fails.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(1800);
/// How long the query node may take to show a commit it has not shown yet.
const VISIBLE_WITHIN: Duration = Duration::from_secs(60);
/// How often a check that kyma shows what the source holds asks again.
const ANSWER_POLL: Duration = Duration::from_millis(50);
/// The columns of both benchmark tables (after the key).
const COLUMNS: &str = "account int NOT NULL, amount numeric(12,2), note text, \
                       updated_at timestamptz NOT NULL, active bool";
/// What kyma's snapshot copies of `snap_rows` (`connectors::postgres::sync::snapshot`): its
/// columns are of their kyma types already (the `numeric` read as `real` is parsed in kyma),
/// so the table itself, by its column list.
const KYMA_COPY: &str = "snap_rows (id, account, amount, note, updated_at, active)";
/// Row `g` of both tables, as a `SELECT` list over `g`.
const ROW_OF_G: &str = "g, (g % 1000)::int, (g % 100000) / 100.0, 'note-' || g, \
                        '2026-01-01 00:00:00+00'::timestamptz + g * interval '1 second', g % 2 = 0";

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(
    name = "pg-sync",
    about = "kyma's Postgres sync against pg_recvlogical and COPY binary, and commit-to-query lag"
)]
struct Args {
    /// Rows in the snapshot phase's table.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Paired runs of `COPY … TO STDOUT (FORMAT binary)` then a kyma snapshot of the same
    /// table (the report gives each run's ratio and the median).
    #[arg(long, default_value_t = 5)]
    snapshot_runs: usize,
    /// Row changes in the steady-state workload (rounded up to whole transactions).
    #[arg(long, default_value_t = 1_000_000)]
    changes: u64,
    /// Row changes per workload transaction: half (rounded up) inserts, 30% updates, the
    /// rest deletes, each of a distinct row.
    #[arg(long, default_value_t = 100)]
    txn_changes: u64,
    /// Probe transactions a second in the lag phase.
    #[arg(long, default_value_t = 50)]
    lag_rate: u32,
    /// Seconds of probe transactions in the lag phase.
    #[arg(long, default_value_t = 30)]
    lag_secs: u64,
    /// Milliseconds between the starts of two visibility polls in the lag phase.
    #[arg(long, default_value_t = 10)]
    poll_ms: u64,
    /// Where the extents go: the S3 server (s3s-fs, as the tests run it) or a local
    /// directory (no object-store round trips).
    #[arg(long, value_enum, default_value_t = StoreKind::S3)]
    store: StoreKind,
    /// After the lag phase, time a `GROUP BY` over the snapshot's table on kyma and on
    /// Postgres, settled, right after one transaction updating every `N`th row, and once
    /// compaction caught up (0: skip this phase).
    #[arg(long, default_value_t = 0)]
    read_update_every: u64,
    /// Runs of each timed query in the read phase (the report gives the median).
    #[arg(long, default_value_t = 3)]
    read_runs: usize,
    /// The query node's decoded-column cache, in MiB (as `kyma query-node
    /// --column-cache-mb`; 0: every query decodes Parquet).
    #[arg(long, default_value_t = columns::QUERY_NODE_CAPACITY_MB)]
    column_cache_mb: u64,
    /// Last, measure the process's peak memory through a snapshot of this many tables
    /// (1,000 rows each) and then one source transaction of `--memory-txn-mb` (0: skip).
    #[arg(long, default_value_t = 0)]
    memory_tables: u32,
    /// The size of the memory phase's one transaction, in MB of row data.
    #[arg(long, default_value_t = 1024)]
    memory_txn_mb: u64,
}

/// The extent store the benchmark runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum StoreKind {
    /// s3s-fs on loopback, through the S3 API.
    S3,
    /// A temporary local directory.
    Local,
}

/// The shape of one workload transaction: inserts of new rows, updates and deletes of rows
/// the previous transaction inserted.
#[derive(Debug, Clone, Copy)]
struct TxnShape {
    inserts: i64,
    updates: i64,
    deletes: i64,
}

impl TxnShape {
    fn of(changes: u64) -> BenchResult<Self> {
        let changes = i64::try_from(changes)?;
        if changes < 3 {
            return Err("--txn-changes must be at least 3".into());
        }
        let inserts = (changes + 1) / 2;
        let updates = (changes * 3 / 10).max(1);
        let deletes = changes - inserts - updates;
        if deletes < 1 {
            return Err("--txn-changes leaves no deletes; take at least 3".into());
        }
        Ok(Self {
            inserts,
            updates,
            deletes,
        })
    }

    fn changes(&self) -> i64 {
        self.inserts + self.updates + self.deletes
    }
}

/// Where the catalog and the extents live: a prefix on the etcd, and a bucket on the S3
/// server or a local directory.
#[derive(Debug, Clone)]
struct Deployment {
    etcd: String,
    prefix: String,
    extents: Extents,
}

/// Where the extents live.
#[derive(Debug, Clone)]
enum Extents {
    S3 { endpoint: String, bucket: String },
    Local(std::path::PathBuf),
}

impl Deployment {
    /// A new catalog connection (each party — worker, query node, benchmark — has its own).
    async fn catalog(&self) -> BenchResult<Catalog> {
        Ok(Catalog::open(&CatalogLocation::Etcd {
            endpoints: vec![self.etcd.clone()],
            prefix: format!("/{}", self.prefix),
        })
        .await?)
    }

    /// The extent store: on the S3 server (the bucket, prefix `extents`) or the directory.
    fn store(&self) -> BenchResult<ExtentStore> {
        let (endpoint, bucket) = match &self.extents {
            Extents::S3 { endpoint, bucket } => (endpoint, bucket),
            Extents::Local(dir) => {
                return Ok(ExtentStore::open(
                    &StoreLocation::File(dir.clone()),
                    &S3Options::default(),
                )?);
            }
        };
        let s3 = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_endpoint(endpoint)
            .with_allow_http(true)
            .with_access_key_id(S3::ACCESS_KEY)
            .with_secret_access_key(S3::SECRET_KEY)
            .with_region(S3::REGION)
            .with_virtual_hosted_style_request(false)
            .build()?;
        let store: Arc<dyn object_store::ObjectStore> =
            Arc::new(object_store::prefix::PrefixStore::new(s3, "extents"));
        Ok(ExtentStore::from_object_store(store))
    }
}

/// Everything the phases share.
struct Bench {
    args: Args,
    postgres_port: u16,
    /// `postgres://…/snap…` and `postgres://…/cdc…`.
    snap_url: String,
    cdc_url: String,
    cdc_database: String,
    /// `postgres://…/mem…`: the memory phase's database.
    mem_url: String,
    pg_bin: std::path::PathBuf,
    deployment: Deployment,
    /// The benchmark's own catalog connection.
    catalog: Catalog,
    /// The runtime the CDC worker runs on.
    worker_runtime: Handle,
    /// The worker's per-commit stage events ([`StageEvents`]).
    stages: tokio::sync::Mutex<mpsc::UnboundedReceiver<CommitStage>>,
    /// The worker's per-copy stage events.
    copy_stages: tokio::sync::Mutex<mpsc::UnboundedReceiver<CopyStage>>,
}

/// One streaming commit's stages, as the CDC worker reports them ([`COMMIT_STAGES`]).
#[derive(Debug, Clone, Copy, Default)]
struct CommitStage {
    /// When the event came: the commit had just completed.
    at: Option<Instant>,
    revision: i64,
    arrival_ms: f64,
    batching_ms: f64,
    writing_ms: f64,
    catalog_ms: f64,
}

impl tracing::field::Visit for CommitStage {
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        match field.name() {
            "arrival_ms" => self.arrival_ms = value,
            "batching_ms" => self.batching_ms = value,
            "writing_ms" => self.writing_ms = value,
            "catalog_ms" => self.catalog_ms = value,
            _ => {}
        }
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        if field.name() == "revision" {
            self.revision = value;
        }
    }

    fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
}

impl StageEvent for CommitStage {
    fn arrived(at: Instant) -> Self {
        Self {
            at: Some(at),
            ..Self::default()
        }
    }
}

/// One table copy's stages, as the CDC worker reports them ([`COPY_STAGES`]).
#[derive(Debug, Clone, Default)]
struct CopyStage {
    connector: String,
    opening_ms: f64,
    copying_ms: f64,
    writing_ms: f64,
    catalog_ms: f64,
}

impl tracing::field::Visit for CopyStage {
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        match field.name() {
            "opening_ms" => self.opening_ms = value,
            "copying_ms" => self.copying_ms = value,
            "writing_ms" => self.writing_ms = value,
            "catalog_ms" => self.catalog_ms = value,
            _ => {}
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "connector" {
            value.clone_into(&mut self.connector);
        }
    }

    fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
}

impl StageEvent for CopyStage {
    fn arrived(_: Instant) -> Self {
        Self::default()
    }
}

/// A worker's stage event, recorded from its tracing fields.
trait StageEvent: tracing::field::Visit + Send + 'static {
    /// An empty event that arrived `at`.
    fn arrived(at: Instant) -> Self;
}

/// A tracing layer handing the worker's stage events of one kind to the benchmark.
struct StageEvents<T>(mpsc::UnboundedSender<T>);

impl<S: tracing::Subscriber, T: StageEvent> tracing_subscriber::Layer<S> for StageEvents<T> {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut stage = T::arrived(Instant::now());
        event.record(&mut stage);
        let _ = self.0.send(stage);
    }
}

fn main() -> BenchResult<()> {
    let args = Args::parse();
    if args.rows == 0 || args.snapshot_runs == 0 || args.changes == 0 || args.lag_rate == 0 {
        return Err("--rows, --snapshot-runs, --changes and --lag-rate must be at least 1".into());
    }
    TxnShape::of(args.txn_changes)?;
    let (stage_events, stages) = mpsc::unbounded_channel();
    let (copy_stage_events, copy_stages) = mpsc::unbounded_channel();
    let log = tracing_subscriber::EnvFilter::try_from_env("KYMA_LOG")
        .ok()
        .map(|filter| {
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(filter)
        });
    tracing_subscriber::registry()
        .with(
            StageEvents(stage_events).with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target(COMMIT_STAGES, tracing::Level::DEBUG),
            ),
        )
        .with(
            StageEvents(copy_stage_events).with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target(COPY_STAGES, tracing::Level::DEBUG),
            ),
        )
        .with(log)
        .init();

    let started = Instant::now();
    eprintln!("starting PostgreSQL, etcd and the extent store ...");
    let postgres = Postgres::start()?;
    let etcd = Etcd::start()?;
    // Kept until the end: the S3 server stops, the directory goes, when dropped.
    let (_s3, _dir, extents) = match args.store {
        StoreKind::S3 => {
            let s3 = S3::start()?;
            let extents = Extents::S3 {
                endpoint: s3.endpoint(),
                bucket: s3.create_bucket("kyma-bench")?,
            };
            (Some(s3), None, extents)
        }
        StoreKind::Local => {
            let dir = tempfile::Builder::new().prefix("kyma-bench-").tempdir()?;
            let extents = Extents::Local(dir.path().join("extents"));
            (None, Some(dir), extents)
        }
    };
    let snap_database = postgres.create_database("snap")?;
    let cdc_database = postgres.create_database("cdc")?;
    let mem_database = postgres.create_database("mem")?;
    let pg_version = postgres.psql("postgres", "SHOW server_version")?;
    let deployment = Deployment {
        etcd: etcd.endpoint(),
        prefix: unique_name("kyma_bench"),
        extents,
    };

    // The worker gets a runtime of its own, as if it were its own process: the query node,
    // the pollers and the benchmark's clients run on the main one.
    let worker_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("cdc-worker")
        .enable_all()
        .build()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("bench")
        .enable_all()
        .build()?;
    let pg_bin = std::path::PathBuf::from(
        std::env::var("KYMA_TEST_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into()),
    );
    let handle = worker_runtime.handle().clone();
    let result = runtime.block_on(async {
        let catalog = deployment.catalog().await?;
        let bench = Bench {
            snap_url: postgres.url(&snap_database),
            cdc_url: postgres.url(&cdc_database),
            mem_url: postgres.url(&mem_database),
            cdc_database,
            postgres_port: postgres.port(),
            pg_bin,
            deployment,
            catalog,
            worker_runtime: handle,
            stages: tokio::sync::Mutex::new(stages),
            copy_stages: tokio::sync::Mutex::new(copy_stages),
            args,
        };
        run(&bench, pg_version.trim()).await
    });
    eprintln!("the benchmark took {:.1}s", started.elapsed().as_secs_f64());
    drop(runtime);
    drop(worker_runtime);
    result
}

/// The three phases and the report.
async fn run(bench: &Bench, pg_version: &str) -> BenchResult<()> {
    let worker = start_worker(bench).await?;
    // The query node's caches as `kyma query-node` sizes them by default.
    let store = bench
        .deployment
        .store()?
        .with_cache(ExtentCache::new(
            QUERY_NODE_CAPACITY_MB << 20,
            QUERY_NODE_MAX_OBJECT_MB << 20,
        ))
        .with_column_cache(columns::ColumnCache::new(bench.args.column_cache_mb << 20));
    let node = ServedNode::start(
        bench.deployment.catalog().await?,
        store.clone(),
        FederationOptions::default(),
    )
    .await?;
    let mut flight = node.client().await?;

    let mut loads = vec![("at the start", load_average())];
    let snapshot = snapshot_phase(bench, &mut flight).await?;
    loads.push(("after the snapshot", load_average()));
    let stream = stream_phase(bench, &mut flight).await?;
    loads.push(("after the stream", load_average()));
    let lag = lag_phase(bench, &mut flight, &node.view, &store, &stream).await?;
    loads.push(("after the lag phase", load_average()));
    let read = if bench.args.read_update_every > 0 {
        let read = read_phase(bench, &mut flight, &store).await?;
        loads.push(("after the read phase", load_average()));
        Some(read)
    } else {
        None
    };

    let memory = if bench.args.memory_tables > 0 {
        Some(memory_phase(bench).await?)
    } else {
        None
    };

    report(bench, pg_version, &loads, &snapshot, &stream, &lag);
    if let Some(read) = &read {
        report_read(bench, read);
    }
    if let Some(memory) = &memory {
        report_memory(bench, memory);
    }

    let worker_runtime = bench.worker_runtime.clone();
    worker_runtime
        .spawn(async move { worker.shutdown().await })
        .await??;
    node.stop().await
}

/// Starts the CDC worker on its runtime, with its own catalog connection and store.
async fn start_worker(bench: &Bench) -> BenchResult<CdcWorker> {
    let deployment = bench.deployment.clone();
    bench
        .worker_runtime
        .spawn(async move {
            let catalog = deployment.catalog().await?;
            let store = deployment.store()?;
            let worker = CdcWorker::start(
                catalog,
                store,
                SecretResolver::new("/nonexistent"),
                "bench-worker",
                Duration::from_secs(10),
                SyncOptions::default(),
            )
            .await?;
            BenchResult::Ok(worker)
        })
        .await?
}

/// A tokio-postgres connection whose driver runs on the current runtime.
async fn connect(url: &str) -> BenchResult<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("a PostgreSQL connection failed: {e}");
        }
    });
    Ok(client)
}

/// Registers sync connector `name` over the database at `url`.
async fn register(catalog: &Catalog, name: &str, url: &str) -> BenchResult<()> {
    let spec: ConnectorSpec = serde_json::from_value(serde_json::json!({
        "name": name,
        "type": "postgres",
        "mode": "sync",
        "connection": {"url": url, "tls": "disable"},
    }))?;
    catalog.create_connector(&spec).await?;
    Ok(())
}

/// A replication slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone, Copy)]
struct SlotState {
    /// A consumer streams from it.
    active: bool,
    /// Where it has confirmed.
    confirmed: Option<u64>,
    /// The walsender serving the consumer.
    walsender: Option<u32>,
}

/// Slot `name`, if it exists.
async fn slot(pg: &Client, name: &str) -> BenchResult<Option<SlotState>> {
    let row = pg
        .query_opt(
            "SELECT active, confirmed_flush_lsn::text, active_pid \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&name],
        )
        .await?;
    row.map(|r| {
        let lsn: Option<String> = r.get(1);
        let pid: Option<i32> = r.get(2);
        Ok(SlotState {
            active: r.get(0),
            confirmed: lsn.map(|l| parse_lsn(&l)).transpose()?,
            walsender: pid.and_then(|p| u32::try_from(p).ok()),
        })
    })
    .transpose()
}

/// CPU seconds (user + system) process `pid` (or this process) has used so far, from
/// `/proc/PID/stat` (in clock ticks of 1/100 s, Linux's USER_HZ).
fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may hold spaces) start at the state, field 3;
    // utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// The 1-minute load average, from `/proc/loadavg`.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// An LSN function's value (`pg_current_wal_lsn()`, …) as a number.
async fn lsn(pg: &Client, function: &str) -> BenchResult<u64> {
    let text: String = pg
        .query_one(&format!("SELECT {function}()::text"), &[])
        .await?
        .get(0);
    Ok(parse_lsn(&text)?)
}

/// The connector's committed cursor, if any.
async fn cursor(catalog: &Catalog, connector: &str) -> BenchResult<Option<u64>> {
    let state = catalog.connector(connector).await?;
    Ok(state
        .cursor
        .map(|c| parse_lsn(&c.value.position))
        .transpose()?)
}

/// Waits until `check` holds, polling every [`TICK`], for at most `limit`.
async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F) -> BenchResult<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = BenchResult<bool>>,
{
    let deadline = Instant::now() + limit;
    while !check().await? {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}").into());
        }
        tokio::time::sleep(TICK).await;
    }
    Ok(())
}

/// Every batch of `sql` through Flight SQL.
async fn query(
    flight: &mut FlightSqlServiceClient<Channel>,
    sql: &str,
) -> BenchResult<Vec<RecordBatch>> {
    let info = flight.execute(sql.to_owned(), None).await?;
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.ok_or("an endpoint without a ticket")?;
        batches.extend(flight.do_get(ticket).await?.try_collect::<Vec<_>>().await?);
    }
    Ok(batches)
}

/// The first row of `sql`'s answer as 64-bit integers (NULL as `None`).
async fn query_ints(
    flight: &mut FlightSqlServiceClient<Channel>,
    sql: &str,
) -> BenchResult<Vec<Option<i64>>> {
    let batches = query(flight, sql).await?;
    let batch = batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .ok_or_else(|| format!("`{sql}` answered no rows"))?;
    batch
        .columns()
        .iter()
        .map(|column| {
            let cast = arrow::compute::cast(column, &DataType::Int64)?;
            let ints = cast
                .as_any()
                .downcast_ref::<Int64Array>()
                .ok_or("a cast to Int64 gave another type")?;
            Ok((!ints.is_null(0)).then(|| ints.value(0)))
        })
        .collect()
}

/// Asks kyma `sql` every `every` until its answer equals `expected` (the query node shows a
/// commit one catalog-watch round trip after it; a query failing meanwhile, as one over a
/// table the node's view does not hold yet, counts as not yet): when that answer arrived,
/// and how long its query took.
async fn wait_for_answer(
    flight: &mut FlightSqlServiceClient<Channel>,
    sql: &str,
    expected: &[Option<i64>],
    every: Duration,
) -> BenchResult<(Instant, Duration)> {
    let deadline = Instant::now() + VISIBLE_WITHIN;
    loop {
        let started = Instant::now();
        let got = query_ints(flight, sql).await;
        if got.as_deref().is_ok_and(|got| got == expected) {
            return Ok((Instant::now(), started.elapsed()));
        }
        if Instant::now() > deadline {
            return Err(format!("kyma answers {got:?} to `{sql}`, the source {expected:?}").into());
        }
        tokio::time::sleep(every).await;
    }
}

// ----- Phase 1: snapshot ---------------------------------------------------------------------

/// One timed `COPY … TO STDOUT (FORMAT binary)`.
#[derive(Debug, Clone, Copy)]
struct CopyRun {
    rows: u64,
    bytes: u64,
    elapsed: Duration,
    /// CPU seconds of the server backend that ran the COPY.
    server_cpu: Option<f64>,
}

/// What the snapshot phase measured.
struct SnapshotResult {
    load: Duration,
    /// The paired runs, in order.
    runs: Vec<SnapshotRun>,
    /// For reference: one run of the COPY kyma's snapshot sends.
    kyma_copy: CopyRun,
    /// kyma's `count(*)` of the last run's synced table afterwards.
    count_query: Duration,
}

impl SnapshotResult {
    /// The run of the median ratio.
    fn median_run(&self) -> &SnapshotRun {
        let mut sorted: Vec<&SnapshotRun> = self.runs.iter().collect();
        sorted.sort_by(|a, b| a.ratio().total_cmp(&b.ratio()));
        sorted[(sorted.len() - 1) / 2]
    }
}

/// One paired run: `COPY … (FORMAT binary)`, then a new connector's snapshot of the table.
struct SnapshotRun {
    copy: CopyRun,
    /// From registering the connector to its slot existing (claim, preflight, slot creation).
    to_slot: Duration,
    /// From registering to the snapshot's commit.
    to_commit: Duration,
    /// From registering to a query over Flight SQL answering with every row: the commit,
    /// the query node's view applying it, the query.
    to_answered: Duration,
    /// CPU seconds this process (the worker, the idle query node) used from registering
    /// to the commit.
    kyma_cpu: Option<f64>,
    /// The worker's breakdown of the copy.
    stages: Option<CopyStage>,
}

impl SnapshotRun {
    /// The snapshot's speed (register → a query answering with every row) as a multiple of
    /// the COPY's.
    fn ratio(&self) -> f64 {
        seconds(self.copy.elapsed) / seconds(self.to_answered)
    }

    /// The most [`SnapshotRun::ratio`] could be on `cores` cores: the snapshot runs the same
    /// COPY on the server (taking the CPU the baseline's took) and kyma's work besides, so at
    /// best both spread over every core with none idle, and it never beats the COPY alone.
    /// A ratio near its ceiling is held back by kyma's work per row; one far below it, by
    /// the pipeline idling.
    fn ceiling(&self, cores: usize) -> Option<f64> {
        let (kyma, server) = (self.kyma_cpu?, self.copy.server_cpu?);
        let copy = seconds(self.copy.elapsed);
        let fastest = (server.max(0.0) + kyma) / cores.max(1) as f64;
        Some((copy / fastest.max(copy)).min(1.0))
    }
}

async fn snapshot_phase(
    bench: &Bench,
    flight: &mut FlightSqlServiceClient<Channel>,
) -> BenchResult<SnapshotResult> {
    let rows = bench.args.rows;
    let pg = connect(&bench.snap_url).await?;
    eprintln!("snapshot: loading {rows} rows into snap_rows ...");
    let started = Instant::now();
    pg.batch_execute(&format!(
        "CREATE TABLE snap_rows (id bigint PRIMARY KEY, {COLUMNS});
         INSERT INTO snap_rows SELECT {ROW_OF_G} FROM generate_series(1::bigint, {rows}) g;"
    ))
    .await?;
    pg.batch_execute("VACUUM ANALYZE snap_rows").await?;
    let load = started.elapsed();

    let kyma_copy = copy_binary(&pg, KYMA_COPY).await?;
    if kyma_copy.rows != rows {
        return Err(format!("the COPY kyma sends returned {} rows", kyma_copy.rows).into());
    }
    let mut runs = Vec::with_capacity(bench.args.snapshot_runs);
    for run in 1..=bench.args.snapshot_runs {
        // The later phases use the last run's connector.
        let last = run == bench.args.snapshot_runs;
        let connector = if last {
            SNAP_CONNECTOR.to_owned()
        } else {
            format!("{SNAP_CONNECTOR}_{run}")
        };
        let timed = snapshot_run(bench, &pg, flight, &connector).await?;
        eprintln!(
            "snapshot: run {run}: COPY binary {:.3}s, kyma register -> commit {:.3}s, -> \
             answered {:.3}s ({:.3}x)",
            seconds(timed.copy.elapsed),
            seconds(timed.to_commit),
            seconds(timed.to_answered),
            timed.ratio()
        );
        if !last {
            bench.catalog.delete_connector(&connector).await?;
            wait_for_slot_dropped(&pg, &SyncNames::of(&connector).slot).await?;
        }
        runs.push(timed);
    }

    let expected = [Some(i64::try_from(rows)?)];
    let (_, count_query) = wait_for_answer(
        flight,
        &format!("SELECT count(*) FROM {SNAP_CONNECTOR}.public.snap_rows"),
        &expected,
        ANSWER_POLL,
    )
    .await?;
    // The paused connector's stream stops: it takes no part in the next phases.
    bench
        .catalog
        .set_desired_state(SNAP_CONNECTOR, DesiredState::Paused)
        .await?;
    Ok(SnapshotResult {
        load,
        runs,
        kyma_copy,
        count_query,
    })
}

/// Times `COPY snap_rows … (FORMAT binary)`, then registers `connector` and times its
/// snapshot of the same table.
async fn snapshot_run(
    bench: &Bench,
    pg: &Client,
    flight: &mut FlightSqlServiceClient<Channel>,
    connector: &str,
) -> BenchResult<SnapshotRun> {
    let rows = bench.args.rows;
    let copy = copy_binary(pg, "snap_rows").await?;
    if copy.rows != rows {
        return Err(format!("COPY returned {} rows, expected {rows}", copy.rows).into());
    }
    let names = SyncNames::of(connector);
    let mut copy_stages = bench.copy_stages.lock().await;
    let started = Instant::now();
    let cpu_before = cpu_seconds(None);
    register(&bench.catalog, connector, &bench.snap_url).await?;
    let mut to_slot = None;
    let deadline = started + CATCH_UP_LIMIT;
    let to_commit = loop {
        if to_slot.is_none() && slot(pg, &names.slot).await?.is_some() {
            to_slot = Some(started.elapsed());
        }
        if cursor(&bench.catalog, connector).await?.is_some() {
            break started.elapsed();
        }
        if Instant::now() > deadline {
            let status = bench.catalog.connector(connector).await?.status;
            return Err(format!("the snapshot did not commit; status {status:?}").into());
        }
        tokio::time::sleep(TICK).await;
    };
    let kyma_cpu = cpu_seconds(None)
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    let to_slot = to_slot.ok_or("the snapshot committed before its slot was seen")?;
    // Polled from the commit on, so the polls take nothing from the copy.
    let count = format!("SELECT count(*) FROM {connector}.public.snap_rows");
    let (answered, _) =
        wait_for_answer(flight, &count, &[Some(i64::try_from(rows)?)], TICK).await?;
    let to_answered = answered - started;
    // The worker reports the stages just after its commit, which may be seen first.
    let stages = tokio::time::timeout(STAGE_EVENT_WITHIN, async {
        while let Some(stage) = copy_stages.recv().await {
            if stage.connector == connector {
                return Some(stage);
            }
        }
        None
    })
    .await
    .ok()
    .flatten();
    Ok(SnapshotRun {
        copy,
        to_slot,
        to_commit,
        to_answered,
        kyma_cpu,
        stages,
    })
}

/// Waits until the worker has dropped slot `name` (a deleted connector's).
async fn wait_for_slot_dropped(pg: &Client, name: &str) -> BenchResult<()> {
    let deadline = Instant::now() + CATCH_UP_LIMIT;
    while slot(pg, name).await?.is_some() {
        if Instant::now() > deadline {
            return Err(format!("slot {name} was not dropped").into());
        }
        tokio::time::sleep(TICK).await;
    }
    Ok(())
}

/// Drains `COPY table TO STDOUT (FORMAT binary)`, counting the rows by the tuple headers.
async fn copy_binary(pg: &Client, table: &str) -> BenchResult<CopyRun> {
    let backend: i32 = pg
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .try_get(0)?;
    let backend = u32::try_from(backend).ok();
    let server_cpu_before = backend.and_then(|pid| cpu_seconds(Some(pid)));
    let started = Instant::now();
    let stream = pg
        .copy_out(&format!("COPY {table} TO STDOUT (FORMAT binary)"))
        .await?;
    let mut stream = std::pin::pin!(stream);
    let mut counter = CopyBinaryCounter::default();
    let mut bytes = 0_u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        bytes += chunk.len() as u64;
        counter.feed(&chunk)?;
    }
    if !counter.done {
        return Err("the binary COPY ended without its trailer".into());
    }
    let elapsed = started.elapsed();
    let server_cpu_after = backend.and_then(|pid| cpu_seconds(Some(pid)));
    Ok(CopyRun {
        rows: counter.rows,
        bytes,
        elapsed,
        server_cpu: server_cpu_before
            .zip(server_cpu_after)
            .map(|(before, after)| after - before),
    })
}

/// What a [`CopyBinaryCounter`] reads next.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum CopyPart {
    /// The 19-byte header: signature, flags, extension length.
    #[default]
    Header,
    /// A tuple's field count (-1: the trailer).
    FieldCount,
    /// A field's length (-1: NULL).
    FieldLength,
}

/// Counts the tuples of a binary COPY stream without decoding the values: it reads the
/// tuple and field headers and skips the field bodies.
#[derive(Debug, Default)]
struct CopyBinaryCounter {
    part: CopyPart,
    /// The bytes of the header being read.
    pending: Vec<u8>,
    /// Bytes of a field body (or the header extension) still to skip.
    skip: usize,
    fields_left: i16,
    rows: u64,
    done: bool,
}

impl CopyBinaryCounter {
    fn feed(&mut self, mut data: &[u8]) -> BenchResult<()> {
        while !self.done {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                data = &data[n..];
                self.skip -= n;
                if self.skip > 0 {
                    return Ok(());
                }
            }
            let want = match self.part {
                CopyPart::Header => 19,
                CopyPart::FieldCount => 2,
                CopyPart::FieldLength => 4,
            };
            let take = (want - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() < want {
                return Ok(());
            }
            let p = &self.pending;
            match self.part {
                CopyPart::Header => {
                    if &p[..11] != b"PGCOPY\n\xff\r\n\0" {
                        return Err("not a binary COPY stream".into());
                    }
                    self.skip = usize::try_from(u32::from_be_bytes([p[15], p[16], p[17], p[18]]))?;
                    self.part = CopyPart::FieldCount;
                }
                CopyPart::FieldCount => {
                    let fields = i16::from_be_bytes([p[0], p[1]]);
                    if fields == -1 {
                        self.done = true;
                    } else {
                        self.rows += 1;
                        self.fields_left = fields;
                        if fields > 0 {
                            self.part = CopyPart::FieldLength;
                        }
                    }
                }
                CopyPart::FieldLength => {
                    let length = i32::from_be_bytes([p[0], p[1], p[2], p[3]]);
                    self.skip = usize::try_from(length.max(0))?;
                    self.fields_left -= 1;
                    if self.fields_left == 0 {
                        self.part = CopyPart::FieldCount;
                    }
                }
            }
            self.pending.clear();
        }
        Ok(())
    }
}

// ----- Phase 2: steady-state stream ----------------------------------------------------------

/// One consumer's pass over the workload's WAL.
#[derive(Debug, Clone, Copy)]
struct Consumption {
    /// From starting the consumer (spawning `pg_recvlogical`, resuming the connector) to its
    /// slot turning active.
    to_active: Duration,
    /// From the slot turning active to the consumer being done (`pg_recvlogical` exited at
    /// `--endpos`; kyma's committed cursor past the last workload commit).
    active_to_done: Duration,
    /// CPU seconds of the walsender serving the pass (its whole life, to the last sample).
    walsender_cpu: Option<f64>,
    /// CPU seconds of the consumer: the `pg_recvlogical` process; for kyma this benchmark's
    /// process from resuming the connector (the worker, the idle query node, the poller).
    consumer_cpu: Option<f64>,
}

/// Follows one consumer's pass over the workload: when its slot turns active, and the CPU
/// its walsender and the consumer use (sampled every [`TICK`]).
struct PassClock {
    slot: String,
    started: Instant,
    active_at: Option<Instant>,
    walsender: Option<u32>,
    walsender_cpu: Option<f64>,
    /// The consumer's pid; `None`: this process.
    consumer: Option<u32>,
    consumer_cpu_at_start: f64,
    consumer_cpu: Option<f64>,
}

impl PassClock {
    fn start(slot: &str, consumer: Option<u32>) -> Self {
        Self {
            slot: slot.to_owned(),
            started: Instant::now(),
            active_at: None,
            walsender: None,
            walsender_cpu: None,
            consumer,
            consumer_cpu_at_start: if consumer.is_none() {
                cpu_seconds(None).unwrap_or(0.0)
            } else {
                0.0
            },
            consumer_cpu: None,
        }
    }

    async fn tick(&mut self, pg: &Client) -> BenchResult<()> {
        if self.active_at.is_none()
            && let Some(state) = slot(pg, &self.slot).await?
            && state.active
        {
            self.active_at = Some(Instant::now());
            self.walsender = state.walsender;
        }
        if self.active_at.is_some() {
            if let Some(cpu) = self.walsender.and_then(|p| cpu_seconds(Some(p))) {
                self.walsender_cpu = Some(cpu);
            }
            if let Some(cpu) = cpu_seconds(self.consumer) {
                self.consumer_cpu = Some(cpu - self.consumer_cpu_at_start);
            }
        }
        Ok(())
    }

    /// The pass, done at `done_at`. A pass that ended before a tick saw its slot active
    /// (a small workload) is timed from its start: an upper bound, and said so.
    fn done(self, done_at: Instant) -> Consumption {
        let active_at = self.active_at.unwrap_or_else(|| {
            eprintln!(
                "stream: slot {} ended its pass before a tick saw it active; timed from the start",
                self.slot
            );
            self.started
        });
        Consumption {
            to_active: active_at - self.started,
            active_to_done: done_at - active_at,
            walsender_cpu: self.walsender_cpu,
            consumer_cpu: self.consumer_cpu,
        }
    }
}

/// What the stream phase measured.
struct StreamResult {
    shape: TxnShape,
    transactions: i64,
    changes: i64,
    /// The workload's run time at the source.
    generate: Duration,
    /// WAL bytes from the start of the workload to its last commit.
    wal_bytes: u64,
    recvlogical: Consumption,
    sql_decoding: SqlDecoding,
    kyma: Consumption,
    /// Rows of `bench_changes` after the workload (checked in kyma).
    final_rows: i64,
    /// The highest id the workload inserted (the lag probes update the rows below it).
    last_id: i64,
}

async fn stream_phase(
    bench: &Bench,
    flight: &mut FlightSqlServiceClient<Channel>,
) -> BenchResult<StreamResult> {
    let shape = TxnShape::of(bench.args.txn_changes)?;
    let per_txn = u64::try_from(shape.changes())?;
    let transactions = i64::try_from(bench.args.changes.div_ceil(per_txn))?;
    let changes = transactions * shape.changes();
    let TxnShape {
        inserts,
        updates,
        deletes,
    } = shape;
    let pg = connect(&bench.cdc_url).await?;
    pg.batch_execute(&format!(
        "CREATE TABLE bench_changes (id bigint PRIMARY KEY, {COLUMNS});
         CREATE TABLE lag_probe (id bigint PRIMARY KEY, note text);
         INSERT INTO bench_changes SELECT {ROW_OF_G} FROM generate_series({}::bigint, 0) g;
         -- Transaction t inserts rows t*ins+1 ..= (t+1)*ins, and updates and deletes the
         -- first upd and the next del rows of those transaction t-1 inserted.
         CREATE PROCEDURE bench_workload(first bigint, last bigint, ins bigint, upd bigint, del bigint)
         LANGUAGE plpgsql AS $$
         DECLARE
           t bigint;
           base bigint;
         BEGIN
           FOR t IN first..last LOOP
             base := t * ins;
             INSERT INTO bench_changes SELECT {ROW_OF_G} FROM generate_series(base + 1, base + ins) g;
             UPDATE bench_changes SET amount = amount + 1, note = note || '+', updated_at = now()
              WHERE id BETWEEN base - ins + 1 AND base - ins + upd;
             DELETE FROM bench_changes WHERE id BETWEEN base - ins + upd + 1 AND base - ins + upd + del;
             COMMIT;
           END LOOP;
         END $$;",
        1 - inserts
    ))
    .await?;

    eprintln!("stream: registering connector `{CDC_CONNECTOR}` and waiting for its snapshot ...");
    let names = SyncNames::of(CDC_CONNECTOR);
    register(&bench.catalog, CDC_CONNECTOR, &bench.cdc_url).await?;
    let target = lsn(&pg, "pg_current_wal_insert_lsn").await?;
    wait_until("the connector's snapshot", CATCH_UP_LIMIT, || async {
        let committed = cursor(&bench.catalog, CDC_CONNECTOR).await?.is_some();
        let confirmed = slot(&pg, &names.slot).await?.and_then(|s| s.confirmed);
        Ok(committed && confirmed.is_some_and(|c| c >= target))
    })
    .await?;

    // Pause kyma: the workload's WAL waits in both slots until each consumer's turn.
    bench
        .catalog
        .set_desired_state(CDC_CONNECTOR, DesiredState::Paused)
        .await?;
    wait_until("the paused connector to let go", CATCH_UP_LIMIT, || async {
        let released = bench
            .catalog
            .connector(CDC_CONNECTOR)
            .await?
            .holder
            .is_none();
        let idle = slot(&pg, &names.slot).await?.is_some_and(|s| !s.active);
        Ok(released && idle)
    })
    .await?;
    for name in [RECV_SLOT, SQL_SLOT] {
        pg.execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&name],
        )
        .await?;
    }

    eprintln!(
        "stream: generating {changes} changes in {transactions} transactions \
         ({inserts} inserts, {updates} updates, {deletes} deletes each) ..."
    );
    let start_lsn = lsn(&pg, "pg_current_wal_lsn").await?;
    let started = Instant::now();
    if transactions > 1 {
        pg.batch_execute(&format!(
            "CALL bench_workload(0, {}, {inserts}, {updates}, {deletes})",
            transactions - 2
        ))
        .await?;
    }
    // Only the last transaction commits past `before_last`: kyma is done once its committed
    // cursor (always a commit's end) passes it.
    let before_last = lsn(&pg, "pg_current_wal_lsn").await?;
    pg.batch_execute(&format!(
        "CALL bench_workload({0}, {0}, {inserts}, {updates}, {deletes})",
        transactions - 1
    ))
    .await?;
    let generate = started.elapsed();
    let end_lsn = lsn(&pg, "pg_current_wal_flush_lsn").await?;
    eprintln!(
        "stream: generated in {:.1}s, {:.1} MB of WAL",
        generate.as_secs_f64(),
        end_lsn.saturating_sub(start_lsn) as f64 / 1e6
    );

    eprintln!("stream: pg_recvlogical ...");
    let recvlogical = run_recvlogical(bench, &pg, &names.publication, end_lsn).await?;
    pg.execute("SELECT pg_drop_replication_slot($1)", &[&RECV_SLOT])
        .await?;
    eprintln!(
        "stream: pg_recvlogical {:.3}s from its slot turning active",
        recvlogical.active_to_done.as_secs_f64()
    );

    eprintln!("stream: pg_logical_slot_get_binary_changes ...");
    let sql_decoding = decode_in_sql(&pg, &names.publication, end_lsn).await?;
    pg.execute("SELECT pg_drop_replication_slot($1)", &[&SQL_SLOT])
        .await?;

    eprintln!("stream: kyma ...");
    let mut clock = PassClock::start(&names.slot, None);
    bench
        .catalog
        .set_desired_state(CDC_CONNECTOR, DesiredState::Running)
        .await?;
    let mut last_error = None;
    let deadline = clock.started + CATCH_UP_LIMIT;
    let done_at = loop {
        clock.tick(&pg).await?;
        if cursor(&bench.catalog, CDC_CONNECTOR)
            .await?
            .is_some_and(|c| c > before_last)
        {
            break Instant::now();
        }
        let status = bench.catalog.connector(CDC_CONNECTOR).await?.status;
        if status.last_error.is_some() && status.last_error != last_error {
            eprintln!("stream: the connector reports {:?}", status.last_error);
            last_error = status.last_error;
        }
        if Instant::now() > deadline {
            return Err("kyma did not catch up".into());
        }
        tokio::time::sleep(TICK).await;
    };
    let kyma = clock.done(done_at);
    eprintln!(
        "stream: kyma {:.3}s from its slot turning active",
        kyma.active_to_done.as_secs_f64()
    );

    // The synced table equals the source: the same rows, the same updates.
    let source: Vec<Option<i64>> = {
        let row = pg
            .query_one(
                "SELECT count(*), sum(length(note))::bigint FROM bench_changes",
                &[],
            )
            .await?;
        vec![Some(row.try_get(0)?), Some(row.try_get(1)?)]
    };
    wait_for_answer(
        flight,
        &format!("SELECT count(*), sum(length(note)) FROM {CDC_CONNECTOR}.public.bench_changes"),
        &source,
        ANSWER_POLL,
    )
    .await?;
    let final_rows = source[0].unwrap_or(0);
    if final_rows != inserts * (transactions + 1) - deletes * transactions {
        return Err(format!("the source holds {final_rows} rows after the workload").into());
    }
    Ok(StreamResult {
        shape,
        transactions,
        changes,
        generate,
        wal_bytes: end_lsn.saturating_sub(start_lsn),
        recvlogical,
        sql_decoding,
        kyma,
        final_rows,
        last_id: transactions * inserts,
    })
}

/// The server decoding the workload by itself: `pg_logical_slot_get_binary_changes` from
/// [`SQL_SLOT`], counted in the backend (no replication protocol, nothing on the network).
#[derive(Debug, Clone, Copy)]
struct SqlDecoding {
    elapsed: Duration,
    /// pgoutput messages decoded (Begin, Relation, Insert, … Commit).
    messages: i64,
    /// CPU seconds of the backend running it.
    backend_cpu: Option<f64>,
}

async fn decode_in_sql(pg: &Client, publication: &str, end_lsn: u64) -> BenchResult<SqlDecoding> {
    let pid: i32 = pg.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
    let pid = u32::try_from(pid).ok();
    let cpu_before = pid.and_then(|p| cpu_seconds(Some(p)));
    let started = Instant::now();
    let messages: i64 = pg
        .query_one(
            &format!(
                "SELECT count(*) FROM pg_logical_slot_get_binary_changes('{SQL_SLOT}', '{}', NULL, \
                 'proto_version', '1', 'publication_names', '{publication}')",
                kyma_connectors::postgres::sync::format_lsn(end_lsn)
            ),
            &[],
        )
        .await?
        .get(0);
    let elapsed = started.elapsed();
    let cpu_after = pid.and_then(|p| cpu_seconds(Some(p)));
    Ok(SqlDecoding {
        elapsed,
        messages,
        backend_cpu: cpu_before.zip(cpu_after).map(|(b, a)| a - b),
    })
}

/// `pg_recvlogical` from [`RECV_SLOT`] to `end_lsn`, output to `/dev/null`.
async fn run_recvlogical(
    bench: &Bench,
    pg: &Client,
    publication: &str,
    end_lsn: u64,
) -> BenchResult<Consumption> {
    let endpos = kyma_connectors::postgres::sync::format_lsn(end_lsn);
    let mut child = tokio::process::Command::new(bench.pg_bin.join("pg_recvlogical"))
        .args(["-h", "127.0.0.1", "-p"])
        .arg(bench.postgres_port.to_string())
        .args([
            "-U",
            "postgres",
            "-d",
            &bench.cdc_database,
            "--slot",
            RECV_SLOT,
        ])
        .args(["--start", "--no-loop", "-f", "/dev/null"])
        .args(["-o", "proto_version=1", "-o"])
        .arg(format!("publication_names={publication}"))
        .arg(format!("--endpos={endpos}"))
        .kill_on_drop(true)
        .spawn()?;
    let mut clock = PassClock::start(RECV_SLOT, child.id());
    let deadline = clock.started + CATCH_UP_LIMIT;
    let (status, done_at) = loop {
        if let Some(status) = child.try_wait()? {
            break (status, Instant::now());
        }
        clock.tick(pg).await?;
        if Instant::now() > deadline {
            return Err("pg_recvlogical did not reach its end position".into());
        }
        tokio::time::sleep(TICK).await;
    };
    if !status.success() {
        return Err(format!("pg_recvlogical failed: {status}").into());
    }
    Ok(clock.done(done_at))
}

// ----- Phase 3: lag ---------------------------------------------------------------------------

/// One visibility poll.
#[derive(Debug, Clone, Copy)]
struct Poll {
    started: Instant,
    answered: Instant,
    /// The highest probe id in the answer.
    max: i64,
    /// The probe table's delta extents at the last manifest sample before the poll.
    delta_extents: usize,
}

impl Poll {
    fn round_trip(&self) -> Duration {
        self.answered - self.started
    }
}

/// What the lag phase measured.
struct LagResult {
    probes: usize,
    /// From the first probe's start to the last one's acknowledgement.
    writing: Duration,
    /// Per probe, sorted: from its commit acknowledgement to the answer of the first poll
    /// that held it (an upper bound of the lag).
    lags: Vec<Duration>,
    /// Per probe, sorted: from its commit acknowledgement to the start of that poll (a lower
    /// bound; zero when the poll started before the acknowledgement arrived).
    lags_low: Vec<Duration>,
    polls: Vec<Poll>,
    /// After the last probe showed: the probe table's delta extents, and the median round
    /// trip of five polls with nothing being written.
    idle: (usize, Duration),
    /// The worker's streaming commits during the phase, each with the time from its
    /// completion to the query node's view applying it (ms; `None`: not seen).
    commits: Vec<(CommitStage, Option<f64>)>,
}

impl LagResult {
    /// Median and p99 round trip of the polls made while the probe table had `range` delta
    /// extents, and how many there were.
    fn round_trips(&self, range: std::ops::Range<usize>) -> (usize, Duration, Duration) {
        let mut trips: Vec<Duration> = self
            .polls
            .iter()
            .filter(|p| range.contains(&p.delta_extents))
            .map(Poll::round_trip)
            .collect();
        trips.sort();
        (
            trips.len(),
            percentile(&trips, 50.0),
            percentile(&trips, 99.0),
        )
    }
}

/// Delta and compacted extents of `table` now.
async fn extents(
    catalog: &Catalog,
    store: &ExtentStore,
    table: &TableRef,
) -> BenchResult<(usize, usize)> {
    let state = catalog.table(table).await?;
    let manifest = kyma_table::writer::current_manifest(store, &state).await?;
    let delta = manifest.extents.iter().filter(|e| !e.compacted).count();
    Ok((delta, manifest.extents.len() - delta))
}

async fn lag_phase(
    bench: &Bench,
    flight: &mut FlightSqlServiceClient<Channel>,
    view: &CatalogView,
    store: &ExtentStore,
    stream: &StreamResult,
) -> BenchResult<LagResult> {
    let probes = u64::from(bench.args.lag_rate) * bench.args.lag_secs;
    let probes = i64::try_from(probes.max(1))?;
    let rate = f64::from(bench.args.lag_rate);
    let update_rows = stream.shape.inserts.min(10);
    let update_from = stream.last_id - update_rows + 1;
    eprintln!(
        "lag: {probes} probe transactions at {rate}/s, polling kyma every {} ms ...",
        bench.args.poll_ms
    );
    let sqls: Vec<String> = (1..=probes)
        .map(|id| {
            format!(
                "BEGIN;
                 INSERT INTO lag_probe VALUES ({id}, 'probe');
                 UPDATE bench_changes SET amount = amount + 1, updated_at = now()
                  WHERE id BETWEEN {update_from} AND {};
                 COMMIT;",
                stream.last_id
            )
        })
        .collect();
    let mut stages = bench.stages.lock().await;
    // The earlier phases' commits are not this phase's.
    while stages.try_recv().is_ok() {}
    let applied = Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorder = tokio::spawn({
        let (view, applied) = (view.clone(), applied.clone());
        async move {
            // Never ready: records when the node's view applies each revision, until aborted.
            view.wait_until(CATCH_UP_LIMIT, |revision| {
                if let Ok(mut applied) = applied.lock() {
                    applied.push((revision, Instant::now()));
                }
                false
            })
            .await
        }
    });
    // The writer runs on a thread of its own, so its acknowledgement times do not wait for
    // the query node's tasks.
    let (sent, mut written) = tokio::sync::oneshot::channel();
    let url = bench.cdc_url.clone();
    std::thread::spawn(move || {
        let _ = sent.send(write_probes(&url, rate, sqls));
    });

    let probe_table = TableRef::new(CDC_CONNECTOR, "public", "lag_probe");
    let interval = Duration::from_millis(bench.args.poll_ms);
    let mut polls: Vec<Poll> = Vec::new();
    let mut acks = None;
    let mut deadline = None;
    let mut delta_extents = 0;
    let mut sampled_at: Option<Instant> = None;
    let sql = format!("SELECT max(id) FROM {CDC_CONNECTOR}.public.lag_probe");
    loop {
        if sampled_at.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
            delta_extents = extents(&bench.catalog, store, &probe_table).await?.0;
            sampled_at = Some(Instant::now());
        }
        let started = Instant::now();
        let max = query_ints(flight, &sql).await?[0].unwrap_or(0);
        polls.push(Poll {
            started,
            answered: Instant::now(),
            max,
            delta_extents,
        });
        if acks.is_none()
            && let Ok(result) = written.try_recv()
        {
            acks = Some(result?);
            deadline = Some(Instant::now() + VISIBLE_WITHIN);
        }
        if max >= probes && acks.is_some() {
            break;
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            return Err(format!("kyma showed probes up to {max} of {probes}").into());
        }
        tokio::time::sleep_until(tokio::time::Instant::from_std(started + interval)).await;
    }
    let (acks, writing) = acks.ok_or("the probe writer did not finish")?;
    let mut lags = Vec::with_capacity(acks.len());
    let mut lags_low = Vec::with_capacity(acks.len());
    // Answers only grow (kyma commits in source order), so one pass pairs each probe with
    // the first poll that held it.
    let mut answer = polls.iter();
    let mut current = answer.next();
    for (i, ack) in acks.iter().enumerate() {
        let id = i64::try_from(i)? + 1;
        while let Some(poll) = current
            && poll.max < id
        {
            current = answer.next();
        }
        let poll = current.ok_or("a probe never became visible")?;
        lags.push(poll.answered.saturating_duration_since(*ack));
        lags_low.push(poll.started.saturating_duration_since(*ack));
    }
    lags.sort();
    lags_low.sort();
    recorder.abort();
    let applied = applied.lock().map(|a| a.clone()).unwrap_or_default();
    let commits = std::iter::from_fn(|| stages.try_recv().ok())
        .map(|stage| {
            let shown = applied
                .iter()
                .find(|(revision, _)| *revision >= stage.revision)
                .zip(stage.at)
                .map(|((_, shown), at)| millis(shown.saturating_duration_since(at)));
            (stage, shown)
        })
        .collect();

    // The same query with nothing being written: its cost at the extents the table has now.
    let delta_extents = extents(&bench.catalog, store, &probe_table).await?.0;
    let mut idle = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        query_ints(flight, &sql).await?;
        idle.push(started.elapsed());
    }
    idle.sort();
    Ok(LagResult {
        probes: acks.len(),
        writing,
        lags,
        lags_low,
        polls,
        idle: (delta_extents, percentile(&idle, 50.0)),
        commits,
    })
}

// ----- Phase 4: current-state reads of a synced table that churns ------------------------------

/// The read phase's query on each side: a grouped aggregate over the whole table.
const READ_QUERY: &str =
    "SELECT account, count(*), min(id), max(updated_at) FROM {} GROUP BY account";

/// The timings of `--read-runs` runs of one query.
#[derive(Debug, Clone, Copy)]
struct Runs {
    median: Duration,
    /// The first run: kyma's may decode what later runs read from memory.
    first: Duration,
}

/// The read phase's timings.
#[derive(Debug)]
struct ReadResult {
    /// Rows updated by the burst.
    updated: u64,
    /// Before the burst: Postgres, kyma.
    settled: (Runs, Runs),
    /// From the burst's commit to kyma's cursor passing it.
    burst_synced: Duration,
    /// Right after: Postgres, kyma, and the delta extents kyma read.
    after_burst: (Runs, Runs, usize),
    /// What compaction did after the burst.
    compaction: AfterBurst,
}

/// Compaction after the read phase's burst.
#[derive(Debug)]
enum AfterBurst {
    /// A full compaction left no delta extent: how long after the burst's commit, and
    /// kyma's times then.
    Compacted(Duration, Runs),
    /// The worker has nothing to gain from compacting (the table's positions are resolved
    /// and too few of its rows deleted): the fraction of its rows deleted by position.
    NotNeeded(f64),
    /// No full compaction within the wait.
    NotWithin(Duration),
}

async fn read_phase(
    bench: &Bench,
    flight: &mut FlightSqlServiceClient<Channel>,
    store: &ExtentStore,
) -> BenchResult<ReadResult> {
    let pg = connect(&bench.snap_url).await?;
    let table = TableRef::new(SNAP_CONNECTOR, "public", "snap_rows");
    let kyma_sql = READ_QUERY.replace("{}", "snap.public.snap_rows");
    let pg_sql = READ_QUERY.replace("{}", "snap_rows");
    let groups = (bench.args.rows).min(1000) as usize;
    let settled = (
        median_run(bench, || pg_groups(&pg, &pg_sql, groups)).await?,
        median_run(bench, || kyma_groups(flight.clone(), &kyma_sql, groups)).await?,
    );
    eprintln!("read: settled (Postgres, kyma): {settled:?}");

    bench
        .catalog
        .set_desired_state(SNAP_CONNECTOR, DesiredState::Running)
        .await?;
    let every = bench.args.read_update_every;
    let burst = format!(
        "UPDATE snap_rows SET updated_at = updated_at + interval '1 day' WHERE id % {every} = 0"
    );
    let updated = pg.execute(burst.as_str(), &[]).await?;
    let committed = Instant::now();
    let lsn: String = pg
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .try_get(0)?;
    let wanted = parse_lsn(&lsn)?;
    wait_until("the burst to sync", CATCH_UP_LIMIT, || async {
        Ok(cursor(&bench.catalog, SNAP_CONNECTOR)
            .await?
            .is_some_and(|c| c >= wanted))
    })
    .await?;
    let burst_synced = committed.elapsed();
    // The query node shows the burst once its view applied the commit: the fence waits.
    let mut fenced = flight.clone();
    fenced.set_header("x-kyma-min-position", format!("{SNAP_CONNECTOR}={lsn}"));
    fenced.set_header("x-kyma-min-position-timeout-ms", "60000");
    let deltas = extents(&bench.catalog, store, &table).await?.0;
    let after_burst = (
        median_run(bench, || pg_groups(&pg, &pg_sql, groups)).await?,
        median_run(bench, || kyma_groups(fenced.clone(), &kyma_sql, groups)).await?,
        deltas,
    );
    eprintln!(
        "read: after the burst of {updated} updates (Postgres, kyma, delta extents): {after_burst:?}"
    );

    let manifest = current_manifest(store, &bench.catalog.table(&table).await?).await?;
    let compaction = if !needs_compaction(&manifest, &CompactionOptions::default()) {
        let live: u64 = manifest.extents.iter().map(ExtentEntry::live_rows).sum();
        AfterBurst::NotNeeded(1.0 - live as f64 / manifest.rows().max(1) as f64)
    } else {
        const WAIT: Duration = Duration::from_secs(300);
        match wait_until("a full compaction", WAIT, || async {
            Ok(extents(&bench.catalog, store, &table).await?.0 == 0)
        })
        .await
        {
            Ok(()) => AfterBurst::Compacted(
                committed.elapsed(),
                median_run(bench, || kyma_groups(flight.clone(), &kyma_sql, groups)).await?,
            ),
            Err(_) => AfterBurst::NotWithin(WAIT),
        }
    };
    bench
        .catalog
        .set_desired_state(SNAP_CONNECTOR, DesiredState::Paused)
        .await?;
    Ok(ReadResult {
        updated,
        settled,
        burst_synced,
        after_burst,
        compaction,
    })
}

/// The times of `--read-runs` runs of `run`.
async fn median_run<F, Fut>(bench: &Bench, mut run: F) -> BenchResult<Runs>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = BenchResult<()>>,
{
    let mut times = Vec::with_capacity(bench.args.read_runs);
    for _ in 0..bench.args.read_runs.max(1) {
        let started = Instant::now();
        run().await?;
        times.push(started.elapsed());
    }
    let first = times[0];
    times.sort();
    Ok(Runs {
        median: percentile(&times, 50.0),
        first,
    })
}

/// Runs the read query on Postgres; checks it answered `groups` groups.
async fn pg_groups(pg: &Client, sql: &str, groups: usize) -> BenchResult<()> {
    let rows = pg.query(sql, &[]).await?.len();
    if rows != groups {
        return Err(format!("Postgres answered {rows} groups, not {groups}").into());
    }
    Ok(())
}

/// Runs the read query on kyma; checks it answered `groups` groups.
async fn kyma_groups(
    mut flight: FlightSqlServiceClient<Channel>,
    sql: &str,
    groups: usize,
) -> BenchResult<()> {
    let rows: usize = query(&mut flight, sql)
        .await?
        .iter()
        .map(RecordBatch::num_rows)
        .sum();
    if rows != groups {
        return Err(format!("kyma answered {rows} groups, not {groups}").into());
    }
    Ok(())
}

fn report_read(bench: &Bench, read: &ReadResult) {
    let ratio = |pg: Duration, kyma: Duration| seconds(pg) / seconds(kyma).max(1e-9);
    println!();
    println!(
        "-- current-state reads: `{}` over the synced snap_rows ({} rows), median of {} and kyma's first run --",
        READ_QUERY.replace("{}", "…"),
        bench.args.rows,
        bench.args.read_runs
    );
    println!(
        "{:<58} {:>10} {:>10} {:>8} {:>12} {:>8}",
        "", "Postgres", "kyma", "ratio", "kyma 1st run", "ratio"
    );
    let line = |what: &str, pg: Runs, kyma: Runs| {
        println!(
            "{what:<58} {:>9.1}ms {:>9.1}ms {:>7.2}x {:>10.1}ms {:>7.2}x",
            millis(pg.median),
            millis(kyma.median),
            ratio(pg.median, kyma.median),
            millis(kyma.first),
            ratio(pg.median, kyma.first)
        )
    };
    let (pg, kyma) = read.settled;
    line("settled (only the snapshot's extents)", pg, kyma);
    let (pg, kyma, deltas) = read.after_burst;
    line(
        &format!(
            "right after {} updates in one transaction ({deltas} delta extents)",
            read.updated
        ),
        pg,
        kyma,
    );
    match read.compaction {
        AfterBurst::Compacted(after, kyma) => {
            line("after compaction", pg, kyma);
            println!(
                "(compacted {:.1}s after the burst's commit)",
                seconds(after)
            );
        }
        AfterBurst::NotNeeded(deleted) => println!(
            "no compaction: the table reads without merging and {:.1}% of its rows are deleted by position, below the worker's threshold",
            deleted * 100.0
        ),
        AfterBurst::NotWithin(wait) => {
            println!("no full compaction within {}s of the burst", wait.as_secs())
        }
    }
    println!(
        "(ratio: Postgres' median time over kyma's; the burst reached kyma's catalog {:.2}s after its commit)",
        seconds(read.burst_synced)
    );
}

// ----- Phase 5: memory ------------------------------------------------------------------------

/// The memory phase's connector.
const MEM_CONNECTOR: &str = "mem";

/// Peak resident memory of this process (MiB) in each part of the memory phase, and the
/// resident memory before it.
#[derive(Debug)]
struct MemoryResult {
    before_mib: f64,
    snapshot_peak_mib: f64,
    snapshot: Duration,
    txn_rows: u64,
    txn_peak_mib: f64,
    txn_synced: Duration,
}

async fn memory_phase(bench: &Bench) -> BenchResult<MemoryResult> {
    let pg = connect(&bench.mem_url).await?;
    let tables = bench.args.memory_tables;
    eprintln!("memory: creating {tables} tables of 1,000 rows ...");
    for t in 0..tables {
        pg.batch_execute(&format!(
            "CREATE TABLE t_{t} (id bigint PRIMARY KEY, note text);
             INSERT INTO t_{t} SELECT g, repeat('n', 100) FROM generate_series(1, 1000) g;"
        ))
        .await?;
    }
    let before_mib = memory_mib("VmRSS")?;
    reset_peak_memory()?;
    let started = Instant::now();
    register(&bench.catalog, MEM_CONNECTOR, &bench.mem_url).await?;
    wait_until("the tables' copies", CATCH_UP_LIMIT, || async {
        let (_, states) = bench.catalog.list_tables(Some(MEM_CONNECTOR)).await?;
        Ok(states.len() == tables as usize
            && states.iter().all(|t| {
                t.sync
                    .as_ref()
                    .is_some_and(|s| s.phase == kyma_catalog::SyncPhase::Streaming)
            }))
    })
    .await?;
    let snapshot = started.elapsed();
    let snapshot_peak_mib = memory_mib("VmHWM")?;
    eprintln!("memory: {tables} tables copied in {snapshot:?}, peak {snapshot_peak_mib:.0} MiB");

    // Rows of about 1 KB, one transaction.
    let txn_rows = bench.args.memory_txn_mb * 1000;
    reset_peak_memory()?;
    let started = Instant::now();
    pg.batch_execute(&format!(
        "INSERT INTO t_0 SELECT 1000000 + g, repeat(md5(g::text), 31) FROM generate_series(1, {txn_rows}) g"
    ))
    .await?;
    let lsn: String = pg
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .try_get(0)?;
    let wanted = parse_lsn(&lsn)?;
    eprintln!(
        "memory: {txn_rows} rows committed in {:?}; syncing ...",
        started.elapsed()
    );
    wait_until("the large transaction to sync", CATCH_UP_LIMIT, || async {
        Ok(cursor(&bench.catalog, MEM_CONNECTOR)
            .await?
            .is_some_and(|c| c >= wanted))
    })
    .await?;
    let txn_synced = started.elapsed();
    let txn_peak_mib = memory_mib("VmHWM")?;
    bench
        .catalog
        .set_desired_state(MEM_CONNECTOR, DesiredState::Paused)
        .await?;
    Ok(MemoryResult {
        before_mib,
        snapshot_peak_mib,
        snapshot,
        txn_rows,
        txn_peak_mib,
        txn_synced,
    })
}

/// A `/proc/self/status` memory line (`VmRSS`, `VmHWM`) in MiB.
fn memory_mib(field: &str) -> BenchResult<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .ok_or_else(|| format!("no {field} in /proc/self/status"))?;
    Ok(kib / 1024.0)
}

/// Starts the peak resident memory (`VmHWM`) over from the current one (Linux `clear_refs`).
fn reset_peak_memory() -> BenchResult<()> {
    std::fs::write("/proc/self/clear_refs", "5")?;
    Ok(())
}

fn report_memory(bench: &Bench, memory: &MemoryResult) {
    println!();
    println!(
        "-- memory: peak resident memory of this process (the CDC worker, the idle query node and the benchmark's clients) --"
    );
    println!("resident before the phase: {:.0} MiB", memory.before_mib);
    println!(
        "snapshot of {} tables of 1,000 rows: peak {:.0} MiB ({:.1}s from registering to every table streaming)",
        bench.args.memory_tables,
        memory.snapshot_peak_mib,
        seconds(memory.snapshot)
    );
    println!(
        "one transaction of {} rows (~{} MB of row data): peak {:.0} MiB ({:.1}s from its start to kyma's cursor past it)",
        memory.txn_rows,
        bench.args.memory_txn_mb,
        memory.txn_peak_mib,
        seconds(memory.txn_synced)
    );
}

/// Runs `sqls` (one transaction each) at `rate` a second on a runtime of its own, returning
/// each one's acknowledgement time and the time from the first start to the last ack.
fn write_probes(url: &str, rate: f64, sqls: Vec<String>) -> BenchResult<(Vec<Instant>, Duration)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let pg = connect(url).await?;
        let started = tokio::time::Instant::now();
        let mut acks = Vec::with_capacity(sqls.len());
        for (i, sql) in sqls.iter().enumerate() {
            tokio::time::sleep_until(started + Duration::from_secs_f64(i as f64 / rate)).await;
            pg.batch_execute(sql).await?;
            acks.push(Instant::now());
        }
        Ok((acks, started.elapsed()))
    })
}

// ----- Report -------------------------------------------------------------------------------

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn report_snapshot(args: &Args, snap: &SnapshotResult) {
    println!();
    println!(
        "-- snapshot: snap_rows(id bigint primary key, account int, amount numeric(12,2), note text, \
         updated_at timestamptz, active bool), {} rows, {:.1} MB as COPY binary (loaded in {:.1}s) --",
        args.rows,
        snap.kyma_copy.bytes as f64 / 1e6,
        seconds(snap.load)
    );
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let cpu = |cpu: Option<f64>| cpu.map_or_else(|| "-".to_owned(), |cpu| format!("{cpu:.2}s"));
    let ratio = |ratio: Option<f64>| ratio.map_or_else(|| "-".to_owned(), |r| format!("{r:.3}x"));
    println!(
        "{:<4} {:>9} {:>8} {:>9} {:>9} {:>9} {:>7} {:>8} {:>8} | {:>8} {:>8} {:>8} {:>8}",
        "run",
        "COPY s",
        "its CPU",
        "to slot",
        "commit s",
        "answer s",
        "ratio",
        "kyma CPU",
        "ceiling",
        "open ms",
        "copy ms",
        "write ms",
        "catalog"
    );
    for (i, run) in snap.runs.iter().enumerate() {
        let stage = |ms: fn(&CopyStage) -> f64| {
            run.stages
                .as_ref()
                .map_or_else(|| "-".to_owned(), |s| format!("{:.0}", ms(s)))
        };
        println!(
            "{:<4} {:>9.3} {:>8} {:>9.3} {:>9.3} {:>9.3} {:>6.3}x {:>8} {:>8} | {:>8} {:>8} {:>8} {:>8}",
            i + 1,
            seconds(run.copy.elapsed),
            cpu(run.copy.server_cpu),
            seconds(run.to_slot),
            seconds(run.to_commit),
            seconds(run.to_answered),
            run.ratio(),
            cpu(run.kyma_cpu),
            ratio(run.ceiling(cores)),
            stage(|s| s.opening_ms),
            stage(|s| s.copying_ms),
            stage(|s| s.writing_ms),
            stage(|s| s.catalog_ms),
        );
    }
    println!(
        "(COPY s: `COPY snap_rows TO STDOUT (FORMAT binary)` drained by a client, just before \
         the run; its CPU: the server backend's; to slot / commit s / answer s: from \
         registering the connector to its slot existing, to the snapshot's commit, to a Flight \
         SQL `count(*)` answering every row (polled from the commit on); ratio: COPY s over \
         answer s; kyma CPU: this process, register -> commit; ceiling: the most the ratio \
         could be on {cores} cores, the server's COPY and kyma's CPU spread over all of them; \
         then the worker's stages of the copy: until the first rows are decoded, copying them \
         into extents, finishing the extents, the catalog commit)"
    );
    let mut ratios: Vec<f64> = snap.runs.iter().map(SnapshotRun::ratio).collect();
    ratios.sort_by(f64::total_cmp);
    let median = snap.median_run();
    println!(
        "ratio (rows/s): kyma snapshot, register -> answered = {:.3}x COPY binary (median of {} \
         runs, each against its own COPY; {:.3}x–{:.3}x; that run's ceiling {})",
        median.ratio(),
        ratios.len(),
        ratios.first().copied().unwrap_or_default(),
        ratios.last().copied().unwrap_or_default(),
        ratio(median.ceiling(cores))
    );
    println!(
        "for reference: the COPY kyma sends ({KYMA_COPY}) took {:.3}s once; kyma `SELECT \
         count(*)` of the synced table afterwards: {:.3}s",
        seconds(snap.kyma_copy.elapsed),
        seconds(snap.count_query)
    );
}

/// The nearest-rank percentile `p` (0–100) of sorted `values`.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn report(
    bench: &Bench,
    pg_version: &str,
    loads: &[(&str, String)],
    snap: &SnapshotResult,
    stream: &StreamResult,
    lag: &LagResult,
) {
    let args = &bench.args;
    println!();
    println!(
        "== Postgres sync: kyma CDC worker vs pg_recvlogical and COPY binary; commit-to-query lag =="
    );
    println!("machine:    {}", machine());
    println!("postgresql: {pg_version}");
    let extents = match bench.args.store {
        StoreKind::S3 => "extents on s3s-fs (S3 API on loopback)",
        StoreKind::Local => "extents in a local directory",
    };
    println!(
        "kyma:       CDC worker in this process (own 2-thread tokio runtime, default SyncOptions), \
         catalog on etcd, {extents}; query node in this process, Flight SQL on loopback"
    );
    let loads: Vec<String> = loads.iter().map(|(at, l)| format!("{l} {at}")).collect();
    println!("load avg:   {} (1 min)", loads.join(", "));

    report_snapshot(args, snap);

    let changes = stream.changes as f64;
    let wal_mb = stream.wal_bytes as f64 / 1e6;
    println!();
    println!(
        "-- steady-state stream: {} changes in {} transactions of {} ({} inserts, {} updates, \
         {} deletes) on bench_changes (same columns), {:.1} MB of WAL --",
        stream.changes,
        stream.transactions,
        stream.shape.changes(),
        stream.shape.inserts,
        stream.shape.updates,
        stream.shape.deletes,
        wal_mb
    );
    println!(
        "source: generated by a PL/pgSQL loop in {:.3}s ({:.0} changes/s); {} rows at the end",
        seconds(stream.generate),
        changes / seconds(stream.generate),
        stream.final_rows
    );
    println!(
        "{:<44} {:>8} {:>8} {:>11} {:>9} {:>12} {:>12}",
        "", "start s", "seconds", "changes/s", "WAL MB/s", "walsndr CPU", "consumer CPU"
    );
    let cpu = |c: Option<f64>| c.map_or_else(|| "?".to_owned(), |c| format!("{c:.2}s"));
    let line = |label: &str, c: &Consumption| {
        println!(
            "{:<44} {:>8.3} {:>8.3} {:>11.0} {:>9.1} {:>12} {:>12}",
            label,
            seconds(c.to_active),
            seconds(c.active_to_done),
            changes / seconds(c.active_to_done),
            wal_mb / seconds(c.active_to_done),
            cpu(c.walsender_cpu),
            cpu(c.consumer_cpu)
        );
    };
    line(
        "pg_recvlogical (pgoutput) -> /dev/null",
        &stream.recvlogical,
    );
    line("kyma (resume -> committed past the last txn)", &stream.kyma);
    let sql = &stream.sql_decoding;
    println!(
        "{:<44} {:>8} {:>8.3} {:>11.0} {:>9.1} {:>12} {:>12}",
        "server decoding alone (SQL function)",
        "",
        seconds(sql.elapsed),
        changes / seconds(sql.elapsed),
        wal_mb / seconds(sql.elapsed),
        cpu(sql.backend_cpu),
        format!("{} msgs", sql.messages)
    );
    println!(
        "(start s: from spawning pg_recvlogical / resuming the connector to its slot turning \
         active; seconds and rates: from then to done. The last line is \
         pg_logical_slot_get_binary_changes over the same WAL from a third slot: the walsndr \
         column is that backend's CPU)"
    );
    println!(
        "ratio (changes/s): kyma = {:.3}x pg_recvlogical",
        seconds(stream.recvlogical.active_to_done) / seconds(stream.kyma.active_to_done)
    );

    println!();
    println!(
        "-- lag: {} probe transactions (1 insert into lag_probe + {} updates of bench_changes) \
         at {}/s, polled every {} ms --",
        lag.probes,
        stream.shape.inserts.min(10),
        args.lag_rate,
        args.poll_ms
    );
    println!(
        "writer: {:.1}s for {} probes ({:.1}/s achieved)",
        seconds(lag.writing),
        lag.probes,
        lag.probes as f64 / seconds(lag.writing)
    );
    let mut trips: Vec<Duration> = lag.polls.iter().map(Poll::round_trip).collect();
    trips.sort();
    println!(
        "poll round trip (SELECT max(id) FROM cdc.public.lag_probe over Flight SQL): median {:.1} ms, \
         p99 {:.1} ms, max {:.1} ms, {} polls",
        millis(percentile(&trips, 50.0)),
        millis(percentile(&trips, 99.0)),
        millis(trips.last().copied().unwrap_or_default()),
        trips.len()
    );
    for (label, range) in [
        ("0-15", 0..16),
        ("16-63", 16..64),
        ("64-255", 64..256),
        ("256+", 256..usize::MAX),
    ] {
        let (n, p50, p99) = lag.round_trips(range);
        if n > 0 {
            println!(
                "  while lag_probe had {label:>6} delta extents: {n:>5} polls, median {:.1} ms, p99 {:.1} ms",
                millis(p50),
                millis(p99)
            );
        }
    }
    println!(
        "  afterwards, nothing being written, {} delta extents: median {:.1} ms (5 polls)",
        lag.idle.0,
        millis(lag.idle.1)
    );
    let mean = lag.lags.iter().map(|d| millis(*d)).sum::<f64>() / lag.lags.len().max(1) as f64;
    println!(
        "lag (commit ack -> answer of the first poll showing it): p50 {:.0} ms, p99 {:.0} ms, \
         max {:.0} ms, min {:.0} ms, mean {:.0} ms",
        millis(percentile(&lag.lags, 50.0)),
        millis(percentile(&lag.lags, 99.0)),
        millis(lag.lags.last().copied().unwrap_or_default()),
        millis(lag.lags.first().copied().unwrap_or_default()),
        mean
    );
    println!(
        "lag lower bound (commit ack -> start of that poll): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        millis(percentile(&lag.lags_low, 50.0)),
        millis(percentile(&lag.lags_low, 99.0)),
        millis(lag.lags_low.last().copied().unwrap_or_default()),
    );
    report_stages(lag);
}

/// The per-stage breakdown of the worker's commits during the lag phase.
fn report_stages(lag: &LagResult) {
    println!(
        "per-stage breakdown, per streaming commit during the phase ({} commits; for each, its first transaction):",
        lag.commits.len()
    );
    println!("{:<62} {:>8} {:>8} {:>8}", "", "p50 ms", "p99 ms", "max ms");
    type Stage = fn(&(CommitStage, Option<f64>)) -> Option<f64>;
    let stages: [(&str, Stage); 5] = [
        ("source commit -> worker has its commit event", |(s, _)| {
            Some(s.arrival_ms)
        }),
        ("-> the batch closes (batching)", |(s, _)| {
            Some(s.batching_ms)
        }),
        (
            "-> extents encoded and uploaded, manifests stored",
            |(s, _)| Some(s.writing_ms),
        ),
        ("-> catalog transaction committed (etcd)", |(s, _)| {
            Some(s.catalog_ms)
        }),
        (
            "-> the query node's view has applied it (watch)",
            |(_, shown)| *shown,
        ),
    ];
    for (name, stage) in stages {
        let mut values: Vec<Duration> = lag
            .commits
            .iter()
            .filter_map(stage)
            .map(|ms| Duration::from_secs_f64(ms.max(0.0) / 1000.0))
            .collect();
        values.sort();
        println!(
            "{name:<62} {:>8.1} {:>8.1} {:>8.1}",
            millis(percentile(&values, 50.0)),
            millis(percentile(&values, 99.0)),
            millis(values.last().copied().unwrap_or_default())
        );
    }
    println!(
        "then a poll that starts after the view applied it (every poll interval) and its round trip (planning, fetching, merging)"
    );
}

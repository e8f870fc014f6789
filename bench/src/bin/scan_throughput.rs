//! Scan throughput: Flight SQL `SELECT *` from a kyma table against PostgreSQL's
//! `COPY … TO STDOUT` of the same rows, in one run on one machine.
//!
//! The benchmark starts a real PostgreSQL (through `kyma-test-harness`) and an in-process
//! kyma query node (embedded catalog, local-directory extent store), loads the same `N` rows
//! into both — `bench(id bigint, n int, s text)` with `(g, g % 1000, 'row-' || g)` for
//! `g` in `1..=N` — and then times, `--runs` times each and interleaved:
//!
//! * PostgreSQL: `COPY bench TO STDOUT` (text format) through tokio-postgres `copy_out`,
//!   draining every byte and counting the rows by their newlines;
//! * kyma: `SELECT * FROM bench` through a Flight SQL client — `GetFlightInfo`, then `DoGet`
//!   on every endpoint's ticket, decoding every record batch and counting its rows.
//!
//! It prints rows, seconds, rows/s and MB/s of each, and the ratio of kyma's rows/s to
//! PostgreSQL's. Run it with `./scripts/bench` (release build).

#![allow(
    clippy::print_stdout,
    reason = "a benchmark's report is what it prints on standard output"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Int32Array, Int64Array, RecordBatch, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{
    CommandStatementIngest, TableDefinitionOptions, TableExistsOption, TableNotExistOption,
};
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use kyma_bench::{BenchResult, ServedNode, machine};
use kyma_catalog::{Catalog, CatalogLocation};
use kyma_query_node::FederationOptions;
use kyma_table::{ExtentStore, S3Options, StoreLocation};
use kyma_test_harness::Postgres;
use tonic::transport::Channel;

/// Rows per record batch sent by the bulk ingest.
const INGEST_BATCH_ROWS: i64 = 128 * 1024;
/// The table name on both sides.
const TABLE: &str = "bench";

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(
    name = "scan-throughput",
    about = "Flight SQL SELECT * from kyma against PostgreSQL COPY TO STDOUT of the same rows"
)]
struct Args {
    /// Rows in the table.
    #[arg(long, default_value_t = 10_000_000)]
    rows: u64,
    /// Timed runs of each side (the report gives the median and the best).
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

/// One timed scan.
#[derive(Debug, Clone, Copy)]
struct Scan {
    /// Rows received.
    rows: u64,
    /// Payload bytes received: COPY text for PostgreSQL, Arrow IPC (message headers and
    /// bodies) for kyma.
    bytes: u64,
    /// Wall-clock time from sending the statement to the last byte.
    elapsed: Duration,
}

impl Scan {
    fn seconds(&self) -> f64 {
        self.elapsed.as_secs_f64()
    }

    fn rows_per_second(&self) -> f64 {
        self.rows as f64 / self.seconds()
    }

    fn megabytes_per_second(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds()
    }
}

fn main() -> BenchResult<()> {
    let args = Args::parse();
    if args.rows == 0 || args.runs == 0 {
        return Err("--rows and --runs must be at least 1".into());
    }
    let rows = i64::try_from(args.rows).map_err(|_| "--rows must fit in a bigint")?;

    // PostgreSQL setup is synchronous (psql), before the async runtime starts.
    eprintln!("starting PostgreSQL and loading {rows} rows ...");
    let started = Instant::now();
    let postgres = Postgres::start()?;
    let database = postgres.create_database("bench")?;
    postgres.psql(
        &database,
        &format!("CREATE TABLE {TABLE} (id bigint, n int, s text)"),
    )?;
    postgres.psql(
        &database,
        &format!(
            "INSERT INTO {TABLE} SELECT g, g % 1000, 'row-' || g \
             FROM generate_series(1::bigint, {rows}) g"
        ),
    )?;
    // VACUUM cannot run inside the implicit transaction of a multi-statement psql -c.
    postgres.psql(&database, &format!("VACUUM ANALYZE {TABLE}"))?;
    let pg_version = postgres.psql(&database, "SHOW server_version")?;
    let pg_load = started.elapsed();
    eprintln!("PostgreSQL loaded in {:.1}s", pg_load.as_secs_f64());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(
        args,
        rows,
        &postgres.url(&database),
        pg_version.trim(),
        pg_load,
    ))
}

/// Everything after the PostgreSQL load: the kyma node, its load, the timed scans, the report.
async fn run(
    args: Args,
    rows: i64,
    pg_url: &str,
    pg_version: &str,
    pg_load: Duration,
) -> BenchResult<()> {
    // kyma: embedded catalog and local extent store in a temporary directory.
    let dir = tempfile::Builder::new().prefix("kyma-bench-").tempdir()?;
    let catalog = Catalog::open(&CatalogLocation::Embedded {
        path: dir.path().join("catalog.redb"),
    })
    .await?;
    let store = ExtentStore::open(
        &StoreLocation::File(dir.path().join("store")),
        &S3Options::default(),
    )?;
    let node = ServedNode::start(catalog, store, FederationOptions::default()).await?;
    let mut flight = node.client().await?;

    eprintln!("loading {rows} rows into kyma through Flight SQL bulk ingest ...");
    let started = Instant::now();
    let ingested = ingest(&mut flight, rows).await?;
    let kyma_load = started.elapsed();
    if ingested != rows {
        return Err(format!("kyma ingested {ingested} rows, expected {rows}").into());
    }
    eprintln!("kyma loaded in {:.1}s", kyma_load.as_secs_f64());

    let (pg, connection) = tokio_postgres::connect(pg_url, tokio_postgres::NoTls).await?;
    let pg_connection = tokio::spawn(connection);

    let expected = u64::try_from(rows)?;
    let mut pg_scans = Vec::with_capacity(args.runs);
    let mut kyma_scans = Vec::with_capacity(args.runs);
    // Interleaved, so that drift on the machine touches both sides alike.
    for run in 1..=args.runs {
        let scan = scan_postgres(&pg).await?;
        check_rows("PostgreSQL COPY", scan.rows, expected)?;
        eprintln!("run {run}: PostgreSQL COPY {:.3}s", scan.seconds());
        pg_scans.push(scan);
        let scan = scan_kyma(&mut flight).await?;
        check_rows("kyma SELECT *", scan.rows, expected)?;
        eprintln!("run {run}: kyma SELECT *   {:.3}s", scan.seconds());
        kyma_scans.push(scan);
    }

    report(
        &args,
        pg_version,
        (pg_load, kyma_load),
        &pg_scans,
        &kyma_scans,
    );

    drop(pg);
    pg_connection.await??;
    node.stop().await
}

/// The benchmark table's Arrow schema: the same columns as the PostgreSQL table.
fn bench_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("n", DataType::Int32, true),
        Field::new("s", DataType::Utf8, true),
    ]))
}

/// Rows `first..=last` as PostgreSQL generates them: `(g, g % 1000, 'row-' || g)`.
fn bench_batch(schema: &SchemaRef, first: i64, last: i64) -> Result<RecordBatch, FlightError> {
    let len = usize::try_from(last - first + 1).unwrap_or(0);
    let mut strings = StringBuilder::with_capacity(len, len * "row-".len() + len * 8);
    for g in first..=last {
        strings.append_value(format!("row-{g}"));
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(first..=last)),
        // g % 1000 lies in 0..1000, so the conversion never fails.
        Arc::new(Int32Array::from_iter_values(
            (first..=last).map(|g| i32::try_from(g % 1000).unwrap_or(i32::MAX)),
        )),
        Arc::new(strings.finish()),
    ];
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// Creates kyma table `bench` by Flight SQL bulk ingest (create; fail if it exists) and
/// returns the row count the server reports.
async fn ingest(flight: &mut FlightSqlServiceClient<Channel>, rows: i64) -> BenchResult<i64> {
    let schema = bench_schema();
    let step = usize::try_from(INGEST_BATCH_ROWS)?;
    // Generated lazily, one batch at a time, as the client sends them.
    let batches =
        futures::stream::iter((1..=rows).step_by(step).map(move |first| {
            bench_batch(&schema, first, (first + INGEST_BATCH_ROWS - 1).min(rows))
        }));
    let command = CommandStatementIngest {
        table_definition_options: Some(TableDefinitionOptions {
            if_not_exist: TableNotExistOption::Create.into(),
            if_exists: TableExistsOption::Fail.into(),
        }),
        table: TABLE.into(),
        schema: None,
        catalog: None,
        temporary: false,
        transaction_id: None,
        options: Default::default(),
    };
    Ok(flight.execute_ingest(command, batches).await?)
}

/// One `COPY bench TO STDOUT`, draining every byte and counting rows by their newlines (text
/// format escapes newlines inside values, so each row ends with exactly one).
async fn scan_postgres(pg: &tokio_postgres::Client) -> BenchResult<Scan> {
    let started = Instant::now();
    let stream = pg.copy_out(&format!("COPY {TABLE} TO STDOUT")).await?;
    let mut stream = std::pin::pin!(stream);
    let (mut rows, mut bytes) = (0_u64, 0_u64);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        bytes += chunk.len() as u64;
        rows += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
    }
    Ok(Scan {
        rows,
        bytes,
        elapsed: started.elapsed(),
    })
}

/// One `SELECT * FROM bench` over Flight SQL: `GetFlightInfo`, then `DoGet` on every endpoint,
/// decoding every record batch. Bytes are the Arrow IPC messages received (headers and
/// bodies, without gRPC framing).
async fn scan_kyma(flight: &mut FlightSqlServiceClient<Channel>) -> BenchResult<Scan> {
    let started = Instant::now();
    let info = flight
        .execute(format!("SELECT * FROM {TABLE}"), None)
        .await?;
    let (mut rows, mut bytes) = (0_u64, 0_u64);
    for endpoint in info.endpoint {
        let ticket = endpoint
            .ticket
            .ok_or("the query node sent an endpoint without a ticket")?;
        // The raw FlightData stream, to count the bytes on the wire before decoding them.
        let data = flight.inner_mut().do_get(ticket).await?.into_inner();
        let received = Arc::new(AtomicU64::new(0));
        let counter = received.clone();
        let counted = data
            .inspect_ok(move |d| {
                let len = d.data_header.len() + d.data_body.len();
                counter.fetch_add(len as u64, Ordering::Relaxed);
            })
            .map_err(FlightError::from);
        let mut batches = FlightRecordBatchStream::new_from_flight_data(counted);
        while let Some(batch) = batches.next().await {
            rows += batch?.num_rows() as u64;
        }
        bytes += received.load(Ordering::Relaxed);
    }
    Ok(Scan {
        rows,
        bytes,
        elapsed: started.elapsed(),
    })
}

/// Fails unless a scan returned every row.
fn check_rows(what: &str, got: u64, expected: u64) -> BenchResult<()> {
    if got == expected {
        Ok(())
    } else {
        Err(format!("{what} returned {got} rows, expected {expected}").into())
    }
}

/// The median scan (by time; the faster middle one for an even count) and the best.
fn median_and_best(scans: &[Scan]) -> (Scan, Scan) {
    let mut sorted = scans.to_vec();
    sorted.sort_by_key(|s| s.elapsed);
    let median = sorted[(sorted.len() - 1) / 2];
    (median, sorted[0])
}

/// Prints the machine, the load times, every run, and the summary with the ratio.
fn report(
    args: &Args,
    pg_version: &str,
    (pg_load, kyma_load): (Duration, Duration),
    pg_scans: &[Scan],
    kyma_scans: &[Scan],
) {
    let (pg_median, pg_best) = median_and_best(pg_scans);
    let (kyma_median, kyma_best) = median_and_best(kyma_scans);

    println!();
    println!("== Scan throughput: Flight SQL SELECT * vs PostgreSQL COPY TO STDOUT ==");
    println!("machine:    {}", machine());
    println!("postgresql: {pg_version}");
    println!(
        "table:      bench(id bigint, n int, s text), {} rows; {} timed runs each, interleaved",
        args.rows, args.runs
    );
    println!(
        "load:       PostgreSQL INSERT … SELECT + VACUUM ANALYZE {:.1}s; kyma Flight SQL bulk ingest {:.1}s",
        pg_load.as_secs_f64(),
        kyma_load.as_secs_f64()
    );
    println!();
    println!(
        "{:<34} {:>11} {:>9} {:>13} {:>9} {:>9}",
        "scan", "rows", "seconds", "rows/s", "MB", "MB/s"
    );
    let line = |label: &str, scan: &Scan| {
        println!(
            "{:<34} {:>11} {:>9.3} {:>13.0} {:>9.1} {:>9.1}",
            label,
            scan.rows,
            scan.seconds(),
            scan.rows_per_second(),
            scan.bytes as f64 / 1e6,
            scan.megabytes_per_second()
        );
    };
    for (i, scan) in pg_scans.iter().enumerate() {
        line(&format!("PostgreSQL COPY TO STDOUT, run {}", i + 1), scan);
    }
    for (i, scan) in kyma_scans.iter().enumerate() {
        line(&format!("kyma Flight SQL SELECT *, run {}", i + 1), scan);
    }
    println!();
    line("PostgreSQL COPY TO STDOUT, median", &pg_median);
    line("PostgreSQL COPY TO STDOUT, best", &pg_best);
    line("kyma Flight SQL SELECT *, median", &kyma_median);
    line("kyma Flight SQL SELECT *, best", &kyma_best);
    println!();
    println!(
        "ratio (rows/s, median): kyma SELECT * = {:.2}x PostgreSQL COPY TO STDOUT",
        kyma_median.rows_per_second() / pg_median.rows_per_second()
    );
    println!(
        "ratio (rows/s, best):   kyma SELECT * = {:.2}x PostgreSQL COPY TO STDOUT",
        kyma_best.rows_per_second() / pg_best.rows_per_second()
    );
}

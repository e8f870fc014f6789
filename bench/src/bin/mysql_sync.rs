//! MariaDB sync: kyma's binlog decoding and snapshot against MariaDB's own tools, on one
//! binlog, in one run on one machine.
//!
//! The benchmark starts a private MariaDB 10.11 of `kyma-test-harness` (binlog ROW, FULL
//! images, strict GTIDs) and writes a workload into one table of `--rows` rows (a mix of
//! integer, decimal, text, date-time and boolean columns, like an orders table): the rows
//! inserted in transactions of `--txn-rows`, half of them updated (before and after images),
//! a tenth deleted. Then, on that binlog:
//!
//! 1. **Decode** (CPU only): the binlog files, read into memory, are decoded `--runs` times
//!    by kyma's decoder — the per-TABLE_MAP [`TableDecoder`] and the value conversion sync
//!    uses, producing the pipeline's row changes — and by `mariadb-binlog` (default output,
//!    and `--verbose`, which decodes row values as pseudo-SQL) to `/dev/null`.
//! 2. **Stream**: kyma's change stream ([`MyChangeStream`]: `COM_BINLOG_DUMP` from the
//!    server, GTID positioning, decoding into source events) reads the whole binlog from the
//!    empty position to the end of the workload.
//! 3. **Snapshot**: the table is copied `--runs` times by kyma's snapshot reader (consistent
//!    snapshot, binary protocol, Arrow batches of 8,192 rows), by a plain client read of
//!    `SELECT *` (mysql_async, binary protocol, rows drained), and by
//!    `SELECT … INTO OUTFILE` (the server writing the rows to a file itself).
//!
//! Figures are medians of the runs; MiB/s are of binlog bytes. Run it with
//! `./scripts/bench mysql-sync` (release build).

#![allow(
    clippy::print_stdout,
    reason = "a benchmark's report is what it prints on standard output"
)]

use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use kyma_bench::{BenchResult, machine};
use kyma_catalog::{ConnectionSpec, ConnectorSpec, ScopeSpec, TlsMode};
use kyma_connectors::SecretResolver;
use kyma_connectors::mysql::sync::decode::TableDecoder;
use kyma_connectors::mysql::sync::gtid::GtidPosition;
use kyma_connectors::mysql::sync::snapshot::{Layout, MySnapshot};
use kyma_connectors::mysql::sync::stream::MyChangeStream;
use kyma_connectors::mysql::sync::{Layouts, MyChangeSource, read_layouts};
use kyma_connectors::sync::{
    ChangeSource, ChangeStream, Snapshot, SourceEvent, SourcePosition, TableId,
};
use kyma_test_harness::MariaDb;
use mysql_async::prelude::Queryable;
use mysql_common::binlog::consts::BinlogVersion;
use mysql_common::binlog::events::EventData;

/// The benchmark's database.
const DATABASE: &str = "bench";

#[derive(Debug, Parser)]
#[command(about = "MariaDB sync: binlog decode and snapshot vs mariadb-binlog and a client read")]
struct Args {
    /// Rows in the table (each inserted; half updated, a tenth deleted).
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Rows per workload transaction.
    #[arg(long, default_value_t = 1_000)]
    txn_rows: u64,
    /// Timed runs of each decoder and copier (the report gives the median).
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

fn main() -> BenchResult<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(&args))
}

async fn run(args: &Args) -> BenchResult<()> {
    println!("# mysql-sync\n\n{}", machine());
    let server = MariaDb::start()?;
    let version = server.sql("SELECT VERSION()")?;
    println!(
        "- MariaDB {} (harness settings), {} rows, {} per transaction, {} runs\n",
        version.trim(),
        args.rows,
        args.txn_rows,
        args.runs
    );
    let spec = connector(&server);
    let written = Instant::now();
    let changes = workload(&server, args)?;
    println!(
        "workload: {changes} row changes written in {:.1} s",
        written.elapsed().as_secs_f64()
    );
    let files = binlog_files(&server)?;
    let bytes: u64 = files.iter().map(|f| f.len() as u64).sum();
    println!("binlog: {} files, {:.1} MiB\n", files.len(), mib(bytes));

    let secrets = SecretResolver::new("/nonexistent");
    let mut conn = kyma_connectors::mysql::connect(&spec.connection, &secrets).await?;
    let layouts = read_layouts(&mut conn, &spec.scope).await?;
    drop(conn);

    println!("## Decode (binlog in memory, CPU only)\n");
    println!("| decoder | median s | MiB/s | row changes/s |\n|---|---|---|---|");
    let kyma = median(args.runs, || decode(&files, &layouts.tables))?;
    let decoded = decode(&files, &layouts.tables)?;
    row("kyma TableDecoder → row changes", kyma, bytes, decoded);
    let paths = binlog_paths(&server)?;
    for (label, verbose) in [
        ("mariadb-binlog > /dev/null", false),
        ("mariadb-binlog --verbose > /dev/null", true),
    ] {
        let took = median(args.runs, || mariadb_binlog(&paths, verbose))?;
        row(label, took, bytes, decoded);
    }

    println!("\n## Stream (COM_BINLOG_DUMP from the server, into source events)\n");
    let (took, streamed) = stream(&spec, &secrets, &layouts, &server).await?;
    println!("| reader | s | MiB/s | row changes/s |\n|---|---|---|---|");
    row("kyma MyChangeStream", took, bytes, streamed);

    println!(
        "\n## Snapshot ({} rows after the workload)\n",
        table_rows(&server)?
    );
    println!("| reader | median s | rows/s | vs client read |\n|---|---|---|---|");
    let rows = table_rows(&server)?;
    let mut snapshot_times = Vec::new();
    let mut client_times = Vec::new();
    for _ in 0..args.runs.max(1) {
        snapshot_times.push(snapshot(&spec, &secrets).await?);
        client_times.push(client_read(&spec, &secrets).await?);
    }
    let client = middle(client_times);
    let kyma_snapshot = middle(snapshot_times);
    let outfile = median(args.runs, || into_outfile(&server))?;
    for (label, took) in [
        ("kyma snapshot (Arrow batches)", kyma_snapshot),
        ("client read SELECT * (mysql_async)", client),
        ("SELECT … INTO OUTFILE (server)", outfile),
    ] {
        println!(
            "| {label} | {:.2} | {:.0} | {:.2}x |",
            took.as_secs_f64(),
            rows as f64 / took.as_secs_f64(),
            client.as_secs_f64() / took.as_secs_f64()
        );
    }
    Ok(())
}

fn connector(server: &MariaDb) -> ConnectorSpec {
    ConnectorSpec {
        name: "bench".into(),
        source_type: kyma_catalog::SourceType::Mysql,
        mode: kyma_catalog::ConnectorMode::Sync,
        connection: ConnectionSpec {
            url: server.url(DATABASE),
            secret_ref: None,
            tls: TlsMode::Disable,
            pool_size: 1,
            tls_ca_ref: None,
        },
        scope: ScopeSpec {
            include_schemas: vec![DATABASE.into()],
            ..ScopeSpec::default()
        },
        retention: Default::default(),
    }
}

/// Writes the workload; returns the number of row changes.
fn workload(server: &MariaDb, args: &Args) -> BenchResult<u64> {
    server.sql(&format!(
        "CREATE DATABASE {DATABASE}; CREATE TABLE {DATABASE}.orders (
           id BIGINT PRIMARY KEY, customer INT NOT NULL, amount DECIMAL(12,2),
           status VARCHAR(16), note VARCHAR(64), created DATETIME(6), paid TINYINT(1))"
    ))?;
    let step = args.txn_rows.max(1);
    let mut statements = Vec::new();
    let mut changes = 0;
    for from in (1..=args.rows).step_by(step as usize) {
        let to = (from + step - 1).min(args.rows);
        statements.push(format!(
            "INSERT INTO {DATABASE}.orders SELECT seq, seq % 10000, seq * 0.01, \
               ELT(1 + seq % 4, 'new', 'paid', 'shipped', 'done'), CONCAT('order note ', seq), \
               TIMESTAMP('2024-01-01') + INTERVAL seq SECOND, seq % 2 FROM seq_{from}_to_{to}"
        ));
        changes += to - from + 1;
    }
    for from in (1..=args.rows).step_by(2 * step as usize) {
        let to = (from + 2 * step - 1).min(args.rows);
        statements.push(format!(
            "UPDATE {DATABASE}.orders SET status = 'done', amount = amount + 1 \
               WHERE id BETWEEN {from} AND {to} AND id % 2 = 0"
        ));
        statements.push(format!(
            "DELETE FROM {DATABASE}.orders WHERE id BETWEEN {from} AND {to} AND id % 10 = 1"
        ));
    }
    // Each statement is a transaction of its own (the client autocommits); a few hundred go
    // to one client call, under the kernel's limit on one argument's length.
    for chunk in statements.chunks(200) {
        server.sql(&format!("USE {DATABASE};\n{}", chunk.join(";\n")))?;
    }
    let updated = (1..=args.rows).filter(|id| id % 2 == 0).count() as u64;
    let deleted = (1..=args.rows).filter(|id| id % 10 == 1).count() as u64;
    Ok(changes + updated + deleted)
}

fn binlog_paths(server: &MariaDb) -> BenchResult<Vec<String>> {
    let base = server.sql("SELECT @@log_bin_basename")?;
    let base = base.trim();
    let names = server.sql("SHOW BINARY LOGS")?;
    let dir = std::path::Path::new(base)
        .parent()
        .ok_or("the binlog has no directory")?;
    Ok(names
        .lines()
        .filter_map(|l| l.split('\t').next())
        .map(|name| dir.join(name).display().to_string())
        .collect())
}

fn binlog_files(server: &MariaDb) -> BenchResult<Vec<Vec<u8>>> {
    server.sql("FLUSH BINARY LOGS")?;
    let mut files = Vec::new();
    for path in binlog_paths(server)? {
        files.push(std::fs::read(path)?);
    }
    Ok(files)
}

/// Decodes every rows event of `files` of tables in `layouts` into row changes; returns how
/// many.
fn decode(files: &[Vec<u8>], layouts: &BTreeMap<TableId, Layout>) -> BenchResult<u64> {
    let mut changes = 0;
    for file in files {
        let mut decoders: HashMap<u64, Option<TableDecoder>> = HashMap::new();
        for event in
            mysql_common::binlog::BinlogFile::new(BinlogVersion::Version4, Cursor::new(file))?
        {
            let event = event?;
            match event.read_data()? {
                Some(EventData::TableMapEvent(map)) => {
                    let id = TableId::new(map.database_name(), map.table_name());
                    let decoder = layouts
                        .get(&id)
                        .map(|layout| TableDecoder::new(&map, id, layout))
                        .transpose()?;
                    decoders.insert(map.table_id(), decoder);
                }
                Some(EventData::RowsEvent(rows)) => {
                    if let Some(Some(decoder)) = decoders.get(&rows.table_id()) {
                        changes += decoder.changes(&rows)?.len() as u64;
                    }
                }
                _ => {}
            }
        }
    }
    Ok(changes)
}

fn mariadb_binlog(paths: &[String], verbose: bool) -> BenchResult<()> {
    let mut command = Command::new("mariadb-binlog");
    command.arg("--no-defaults");
    if verbose {
        command.arg("--verbose");
    }
    let status = command
        .args(paths)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if !status.success() {
        return Err(format!("mariadb-binlog failed: {status}").into());
    }
    Ok(())
}

/// Reads the whole binlog through kyma's change stream; returns the time and row changes.
async fn stream(
    spec: &ConnectorSpec,
    secrets: &SecretResolver,
    layouts: &Layouts,
    server: &MariaDb,
) -> BenchResult<(Duration, u64)> {
    let end = GtidPosition::parse(server.sql("SELECT @@gtid_binlog_pos")?.trim())?;
    let started = Instant::now();
    let mut stream = MyChangeStream::open(
        spec,
        secrets,
        layouts.clone(),
        &SourcePosition(String::new()),
    )
    .await?;
    let mut changes = 0;
    while let Some(event) = stream.next().await {
        match event? {
            SourceEvent::Row(_) => changes += 1,
            SourceEvent::Commit { position }
            | SourceEvent::Idle {
                position: Some(position),
                ..
            } if GtidPosition::parse(&position.0)?.contains(&end) => break,
            _ => {}
        }
    }
    Ok((started.elapsed(), changes))
}

async fn snapshot(spec: &ConnectorSpec, secrets: &SecretResolver) -> BenchResult<Duration> {
    let mut source = MyChangeSource::new(spec, secrets);
    let tables = source.discover().await?;
    let table = tables.first().ok_or("no table")?;
    let mut conn = kyma_connectors::mysql::connect(&spec.connection, secrets).await?;
    let layouts = read_layouts(&mut conn, &spec.scope).await?;
    let started = Instant::now();
    let mut snapshot = MySnapshot::open(conn, Arc::new(layouts.tables)).await?;
    let mut rows = 0;
    {
        let mut batches = snapshot.copy(table, 8192).await?;
        while let Some(batch) = batches.next().await {
            rows += batch?.num_rows();
        }
    }
    Box::new(snapshot).close().await?;
    let took = started.elapsed();
    std::hint::black_box(rows);
    Ok(took)
}

async fn client_read(spec: &ConnectorSpec, secrets: &SecretResolver) -> BenchResult<Duration> {
    let mut conn = kyma_connectors::mysql::connect(&spec.connection, secrets).await?;
    let started = Instant::now();
    let mut result = conn.exec_iter("SELECT * FROM orders", ()).await?;
    let mut rows = 0u64;
    while let Some(row) = result.next().await? {
        std::hint::black_box(row);
        rows += 1;
    }
    drop(result);
    std::hint::black_box(rows);
    Ok(started.elapsed())
}

fn into_outfile(server: &MariaDb) -> BenchResult<()> {
    let path = std::env::temp_dir().join(format!("kyma-bench-{}.tsv", std::process::id()));
    let _ = std::fs::remove_file(&path);
    server.sql(&format!(
        "SELECT * FROM {DATABASE}.orders INTO OUTFILE '{}'",
        path.display()
    ))?;
    let _ = std::fs::remove_file(&path);
    Ok(())
}

fn table_rows(server: &MariaDb) -> BenchResult<u64> {
    Ok(server
        .sql(&format!("SELECT COUNT(*) FROM {DATABASE}.orders"))?
        .trim()
        .parse()?)
}

/// The median time of `runs` runs of `f`.
fn median<T>(runs: usize, mut f: impl FnMut() -> BenchResult<T>) -> BenchResult<Duration> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        std::hint::black_box(f()?);
        times.push(started.elapsed());
    }
    Ok(middle(times))
}

fn middle(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn row(label: &str, took: Duration, bytes: u64, changes: u64) {
    let secs = took.as_secs_f64();
    println!(
        "| {label} | {secs:.2} | {:.0} | {:.0} |",
        mib(bytes) / secs,
        changes as f64 / secs
    );
}

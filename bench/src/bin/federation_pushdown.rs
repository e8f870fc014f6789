//! Federation pushdown: a selective query and a grouped aggregate over a Postgres table,
//! through kyma's federation against the same SQL sent straight to Postgres, and the bytes
//! kyma received from the source with pushdown and without it — in one run.
//!
//! The benchmark starts a real PostgreSQL (through `kyma-test-harness`) holding
//! `events(id bigint primary key, user_id int, kind text, amount float8, at timestamptz)`
//! with `N` rows and an index on `user_id`, and two in-process kyma query nodes on one
//! embedded catalog where the table is registered as connector `pg`: one pushes work to the
//! source (the default), one has pushdown off (`--federation-pushdown=false`), so it reads
//! whole rows and runs everything itself. Each query runs `--runs` times per side,
//! interleaved:
//!
//! * Postgres direct: tokio-postgres `query` (extended protocol, binary rows), every row
//!   received;
//! * kyma: Flight SQL `GetFlightInfo` + `DoGet`, every record batch decoded.
//!
//! Bytes from the source come from `kyma.system.queries.source_bytes` of each run (the
//! binary COPY payload the federated scan received).

#![allow(
    clippy::print_stdout,
    reason = "a benchmark's report is what it prints on standard output"
)]

use std::time::{Duration, Instant};

use arrow_flight::sql::client::FlightSqlServiceClient;
use clap::Parser;
use futures::TryStreamExt;
use kyma_bench::{BenchResult, ServedNode, machine};
use kyma_catalog::{Catalog, CatalogLocation};
use kyma_connectors::{ConnectorAdmin, SecretResolver};
use kyma_query_node::FederationOptions;
use kyma_table::{ExtentStore, S3Options, StoreLocation};
use kyma_test_harness::Postgres;
use tonic::transport::Channel;

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(
    name = "federation-pushdown",
    about = "kyma federation vs direct Postgres, and source bytes with and without pushdown"
)]
struct Args {
    /// Rows in the source table.
    #[arg(long, default_value_t = 2_000_000)]
    rows: u64,
    /// Timed runs of each query per side (the report gives the median).
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

/// One benchmark query: kyma's text and Postgres' text of the same question.
struct Query {
    label: &'static str,
    kyma: &'static str,
    postgres: &'static str,
}

const QUERIES: [Query; 2] = [
    Query {
        label: "selective (user_id = 4242)",
        kyma: "SELECT id, kind, amount FROM pg.public.events WHERE user_id = 4242",
        postgres: "SELECT id, kind, amount FROM events WHERE user_id = 4242",
    },
    Query {
        label: "grouped aggregate (GROUP BY kind)",
        kyma: "SELECT kind, count(*), avg(amount), max(at) FROM pg.public.events GROUP BY kind",
        postgres: "SELECT kind, count(*), avg(amount), max(at) FROM events GROUP BY kind",
    },
];

/// One timed run.
#[derive(Debug, Clone, Copy)]
struct Run {
    rows: u64,
    elapsed: Duration,
    /// Bytes received from the source (kyma only).
    source_bytes: u64,
}

fn main() -> BenchResult<()> {
    let args = Args::parse();
    if args.rows == 0 || args.runs == 0 {
        return Err("--rows and --runs must be at least 1".into());
    }
    eprintln!("starting PostgreSQL and loading {} rows ...", args.rows);
    let postgres = Postgres::start()?;
    let database = postgres.create_database("fedbench")?;
    postgres.psql(
        &database,
        &format!(
            "CREATE TABLE events (id bigint PRIMARY KEY, user_id int, kind text, amount float8, at timestamptz);
             INSERT INTO events
             SELECT g, (g * 7919) % 100000, (ARRAY['click','view','buy','refund','share'])[1 + g % 5],
                    (g % 10000) / 100.0, timestamptz '2024-01-01' + (g || ' seconds')::interval
               FROM generate_series(1::bigint, {}) g;
             CREATE INDEX events_user ON events (user_id);",
            args.rows
        ),
    )?;
    postgres.psql(&database, "VACUUM ANALYZE events")?;
    let version = postgres.psql(&database, "SHOW server_version")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(&args, &postgres.url(&database), version.trim()))
}

async fn run(args: &Args, url: &str, pg_version: &str) -> BenchResult<()> {
    let dir = tempfile::Builder::new()
        .prefix("kyma-fedbench-")
        .tempdir()?;
    let catalog = Catalog::open(&CatalogLocation::Embedded {
        path: dir.path().join("catalog.redb"),
    })
    .await?;
    let store = ExtentStore::open(
        &StoreLocation::File(dir.path().join("store")),
        &S3Options::default(),
    )?;
    let secrets = SecretResolver::new(dir.path().join("secrets"));
    ConnectorAdmin::new(catalog.clone(), secrets.clone())
        .create(&serde_json::json!({
            "name": "pg", "type": "postgres", "mode": "federation",
            "connection": {"url": url, "tls": "disable", "pool_size": 4}
        }))
        .await?;
    let federation = |pushdown| FederationOptions {
        secrets: secrets.clone(),
        pushdown,
    };
    let pushing = ServedNode::start(catalog.clone(), store.clone(), federation(true)).await?;
    let whole_rows = ServedNode::start(catalog, store, federation(false)).await?;
    let mut kyma = pushing.client().await?;
    let mut kyma_whole = whole_rows.client().await?;
    let (pg, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let pg_connection = tokio::spawn(connection);

    println!();
    println!("== Federation pushdown: kyma over Postgres vs Postgres direct ==");
    println!("machine:    {}", machine());
    println!("postgresql: {pg_version}");
    println!(
        "table:      events(id bigint pk, user_id int indexed, kind text, amount float8, at timestamptz), {} rows; {} runs per side, interleaved",
        args.rows, args.runs
    );
    for query in &QUERIES {
        let mut direct = Vec::new();
        let mut federated = Vec::new();
        for _ in 0..args.runs {
            direct.push(run_postgres(&pg, query.postgres).await?);
            federated.push(run_kyma(&mut kyma, query.kyma).await?);
        }
        let without = run_kyma(&mut kyma_whole, query.kyma).await?;
        let (direct, federated) = (median(&direct), median(&federated));
        if direct.rows != federated.rows || without.rows != direct.rows {
            return Err(format!(
                "{}: Postgres returned {} rows, kyma {} (pushdown) and {} (no pushdown)",
                query.label, direct.rows, federated.rows, without.rows
            )
            .into());
        }
        println!();
        println!("{} — {} rows", query.label, direct.rows);
        println!(
            "  Postgres direct             {:>9.2} ms (median)",
            ms(direct.elapsed)
        );
        println!(
            "  kyma, pushdown              {:>9.2} ms (median)   = {:.2}x Postgres' time",
            ms(federated.elapsed),
            federated.elapsed.as_secs_f64() / direct.elapsed.as_secs_f64()
        );
        println!(
            "  kyma, no pushdown           {:>9.2} ms (one run)",
            ms(without.elapsed)
        );
        println!(
            "  bytes from the source: {} with pushdown, {} without = {:.0}x fewer",
            federated.source_bytes,
            without.source_bytes,
            without.source_bytes as f64 / federated.source_bytes.max(1) as f64
        );
    }
    drop(pg);
    pg_connection.await??;
    pushing.stop().await?;
    whole_rows.stop().await
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(runs: &[Run]) -> Run {
    let mut sorted = runs.to_vec();
    sorted.sort_by_key(|r| r.elapsed);
    sorted[(sorted.len() - 1) / 2]
}

async fn run_postgres(pg: &tokio_postgres::Client, sql: &str) -> BenchResult<Run> {
    let started = Instant::now();
    let rows = pg.query(sql, &[]).await?;
    Ok(Run {
        rows: rows.len() as u64,
        elapsed: started.elapsed(),
        source_bytes: 0,
    })
}

/// Runs `sql` through Flight SQL, then reads what the node logged about it.
async fn run_kyma(flight: &mut FlightSqlServiceClient<Channel>, sql: &str) -> BenchResult<Run> {
    let started = Instant::now();
    let (rows, query_id) = fetch(flight, sql).await?;
    let elapsed = started.elapsed();
    let (logged, _) = fetch_batches(
        flight,
        &format!("SELECT source_bytes FROM kyma.system.queries WHERE query_id = '{query_id}'"),
    )
    .await?;
    let source_bytes = logged
        .first()
        .filter(|b| b.num_rows() == 1)
        .and_then(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<arrow::array::UInt64Array>()
        })
        .map(|a| a.value(0))
        .ok_or("the query is missing from kyma.system.queries")?;
    Ok(Run {
        rows,
        elapsed,
        source_bytes,
    })
}

async fn fetch(
    flight: &mut FlightSqlServiceClient<Channel>,
    sql: &str,
) -> BenchResult<(u64, String)> {
    let (batches, query_id) = fetch_batches(flight, sql).await?;
    Ok((batches.iter().map(|b| b.num_rows() as u64).sum(), query_id))
}

/// Every batch of `sql`, and the query id its FlightInfo announced.
async fn fetch_batches(
    flight: &mut FlightSqlServiceClient<Channel>,
    sql: &str,
) -> BenchResult<(Vec<arrow::array::RecordBatch>, String)> {
    let info = flight.execute(sql.to_owned(), None).await?;
    let metadata: serde_json::Value = serde_json::from_slice(&info.app_metadata)?;
    let query_id = metadata["query_id"]
        .as_str()
        .ok_or("the FlightInfo carries no query_id")?
        .to_owned();
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.ok_or("an endpoint without a ticket")?;
        batches.extend(flight.do_get(ticket).await?.try_collect::<Vec<_>>().await?);
    }
    Ok((batches, query_id))
}

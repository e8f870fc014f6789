//! Postgres sync under faults (issue 5): `kyma cdc-worker` processes killed with SIGKILL at
//! random moments, two workers racing for one connector (one of them frozen with SIGSTOP and
//! woken after a takeover), Postgres restarted and crashed, etcd restarted and crashed — each
//! while a workload keeps changing the source, and afterwards every synced table equals the
//! source row by row, no row lost or duplicated.
//!
//! The random choices (the workload's transactions, when a worker is killed) come from one
//! seed, printed with every failure; `KYMA_FAULT_SEED=N` replays a run's choices (the timing
//! of real processes still varies).

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::sync::{SyncSetup, connect_source};
use common::{Kyma, runtime};
use kyma_catalog::{ConnectorState, TablePhase};
use kyma_test_harness::{Etcd, Postgres};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The synced tables: one with a single-column key, one with a composite key.
const TABLES: [&str; 2] = ["accounts", "items"];
/// Owners of the initial items.
const OWNERS: i64 = 500;

/// Runs `test` with a seed (`KYMA_FAULT_SEED`, else a random one) and puts the seed in the
/// message of any failure, so that the run's random choices can be replayed.
fn with_seed(name: &str, test: impl FnOnce(u64)) {
    let seed = match std::env::var("KYMA_FAULT_SEED") {
        Ok(seed) => seed.parse().expect("KYMA_FAULT_SEED is a u64"),
        Err(_) => rand::random(),
    };
    eprintln!("{name}: seed {seed}");
    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| test(seed))) {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        panic!("{message}\n[{name} failed with seed {seed}: replay with KYMA_FAULT_SEED={seed}]");
    }
}

/// Creates the source tables with `accounts` accounts and `items` items.
fn create_tables(setup: &SyncSetup<'_>, accounts: i64, items: i64) {
    setup.sql(&format!(
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL, name text,
             touched int NOT NULL DEFAULT 0, active bool);
         CREATE TABLE items (owner bigint, n int, qty int NOT NULL, price numeric(12,2),
             note varchar(40), at timestamptz, PRIMARY KEY (owner, n));
         INSERT INTO accounts SELECT i, 1000, 'account ' || i, 0, i % 3 = 0
           FROM generate_series(1, {accounts}) i;
         INSERT INTO items SELECT i % {OWNERS} + 1, i, i % 7, i * 0.25, 'item ' || i,
             '2024-01-01 00:00:00+00'::timestamptz + i * interval '1 second'
           FROM generate_series(1, {items}) i;"
    ));
}

/// What a workload did.
#[derive(Debug)]
struct WorkloadReport {
    committed: u64,
    failed: u64,
    connections: u64,
    last_error: Option<String>,
}

/// Source transactions on a thread of their own until stopped: inserts, updates, deletes,
/// primary-key changes (single and composite), transactions over both tables, several
/// changes of one row in one transaction, rolled-back transactions. It reconnects when the
/// source goes away; a transaction whose fate a lost connection hides needs no bookkeeping,
/// since the checker compares kyma with the source itself.
struct Workload {
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<WorkloadReport>,
}

impl Workload {
    fn start(url: String, seed: u64, accounts: i64, items: i64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicU64::new(0));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            let committed = committed.clone();
            move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("workload runtime")
                    .block_on(run_workload(url, seed, accounts, items, &stop, &committed))
            }
        });
        Self {
            stop,
            committed,
            thread,
        }
    }

    /// Transactions committed so far.
    fn committed(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }

    /// Waits until `more` transactions have committed after this call.
    async fn wait_for_more(&self, more: u64) {
        let target = self.committed() + more;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.committed() < target {
            assert!(
                Instant::now() < deadline,
                "the workload did not commit {more} more transactions in time"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn stop(self) -> WorkloadReport {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the workload thread panicked")
    }
}

async fn run_workload(
    url: String,
    seed: u64,
    accounts: i64,
    items: i64,
    stop: &AtomicBool,
    committed: &AtomicU64,
) -> WorkloadReport {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut report = WorkloadReport {
        committed: 0,
        failed: 0,
        connections: 0,
        last_error: None,
    };
    let mut next_account = accounts + 1;
    let mut next_n = items + 1;
    let mut client = None;
    while !stop.load(Ordering::Relaxed) {
        let Some(source) = client
            .as_ref()
            .filter(|c: &&tokio_postgres::Client| !c.is_closed())
        else {
            match connect_source(&url).await {
                Ok(c) => {
                    client = Some(c);
                    report.connections += 1;
                }
                // The source is down: try again shortly.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
            continue;
        };
        let sql = transaction(&mut rng, &mut next_account, &mut next_n);
        // One simple query of several statements runs as one transaction.
        match source.batch_execute(&sql).await {
            Ok(()) => {
                report.committed += 1;
                committed.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                report.failed += 1;
                report.last_error = Some(format!("{e}: {sql}"));
            }
        }
        // Pacing, so that a debug-build worker on two cores can keep up.
        tokio::time::sleep(Duration::from_millis(rng.random_range(3..15))).await;
    }
    report
}

/// One random source transaction (several statements, run as one).
fn transaction(rng: &mut StdRng, next_account: &mut i64, next_n: &mut i64) -> String {
    let top = *next_account;
    let account = |rng: &mut StdRng| rng.random_range(1..top);
    let a = account(rng);
    let b = account(rng);
    let delta = rng.random_range(-50..50);
    let name = if rng.random_bool(0.2) {
        "NULL".to_owned()
    } else {
        format!("'name {}'", rng.random_range(0..1_000_000))
    };
    match rng.random_range(0..10) {
        // New accounts with items: one transaction over both tables.
        0 => {
            let id = *next_account;
            *next_account += 1;
            let n = *next_n;
            *next_n += 2;
            format!(
                "INSERT INTO accounts VALUES ({id}, {delta}, {name}, 0, NULL);
                 INSERT INTO items VALUES ({id}, {n}, 1, 9.99, 'new', now()),
                                          ({id}, {}, 2, NULL, NULL, NULL)",
                n + 1
            )
        }
        // Updates.
        1 => {
            let ids: Vec<String> = (0..rng.random_range(1..10))
                .map(|_| account(rng).to_string())
                .collect();
            format!(
                "UPDATE accounts SET balance = balance + {delta}, touched = touched + 1, name = {name}
                  WHERE id IN ({})",
                ids.join(", ")
            )
        }
        // A transfer: two accounts and an item.
        2 => {
            let n = *next_n;
            *next_n += 1;
            format!(
                "UPDATE accounts SET balance = balance - {delta} WHERE id = {a};
                 UPDATE accounts SET balance = balance + {delta} WHERE id = {b};
                 INSERT INTO items VALUES ({a}, {n}, {delta}, {delta}.5, 'transfer to {b}', now())"
            )
        }
        // An account and its items deleted.
        3 => format!("DELETE FROM accounts WHERE id = {a}; DELETE FROM items WHERE owner = {a}"),
        // A primary-key change, carried to the composite keys of its items.
        4 => {
            let id = *next_account;
            *next_account += 1;
            format!(
                "UPDATE accounts SET id = {id}, touched = touched + 1 WHERE id = {a};
                 UPDATE items SET owner = {id} WHERE owner = {a}"
            )
        }
        // A composite-key change of one item.
        5 => {
            let n = *next_n;
            *next_n += 1;
            let owner = rng.random_range(1..=OWNERS);
            format!(
                "UPDATE items SET n = {n}, qty = qty + 1
                  WHERE (owner, n) IN (SELECT owner, n FROM items WHERE owner = {owner} LIMIT 1)"
            )
        }
        // A wider update.
        6 => {
            let modulus = 211;
            let rest = rng.random_range(0..modulus);
            format!(
                "UPDATE items SET qty = qty + 1, note = 'bulk {delta}' WHERE n % {modulus} = {rest}"
            )
        }
        // One row changed several times in one transaction; a row inserted and deleted.
        7 => {
            let id = *next_account;
            *next_account += 1;
            format!(
                "UPDATE accounts SET balance = 1 WHERE id = {a};
                 UPDATE accounts SET balance = 2, name = {name} WHERE id = {a};
                 INSERT INTO accounts VALUES ({id}, 7, 'short-lived', 0, true);
                 UPDATE accounts SET balance = 8 WHERE id = {id};
                 DELETE FROM accounts WHERE id = {id}"
            )
        }
        // Rolled back: must never show.
        8 => format!(
            "BEGIN; DELETE FROM accounts WHERE id = {a}; UPDATE items SET qty = -1 WHERE owner = {b}; ROLLBACK"
        ),
        // Single-row changes.
        _ => format!(
            "UPDATE items SET price = price + 1, at = now()
              WHERE (owner, n) IN (SELECT owner, n FROM items WHERE owner = {} LIMIT 3);
             UPDATE accounts SET active = NOT coalesce(active, false) WHERE id = {b}",
            rng.random_range(1..=OWNERS)
        ),
    }
}

/// Polls the connector until `done` holds; fails after `within` with `what` and `logs`.
async fn wait_for_state(
    setup: &SyncSetup<'_>,
    connector: &str,
    what: &str,
    within: Duration,
    logs: impl Fn() -> String,
    done: impl Fn(&ConnectorState) -> bool,
) -> ConnectorState {
    let deadline = Instant::now() + within;
    loop {
        let state = setup.catalog.connector(connector).await;
        if let Ok(state) = &state
            && done(state)
        {
            return state.clone();
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {what}; connector: {state:?}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn holder(state: &ConnectorState) -> Option<&str> {
    state.holder.as_ref().map(|h| h.worker_id.as_str())
}

/// After the faults: the source stands still, `worker` catches up, and every table equals
/// the source; no table failed.
async fn assert_all_synced(
    setup: &SyncSetup<'_>,
    connector: &str,
    worker: &Kyma,
) -> ConnectorState {
    setup.wait_caught_up(connector, worker).await;
    for table in TABLES {
        setup.assert_synced(connector, "public", table).await;
    }
    let state = setup.catalog.connector(connector).await.expect("connector");
    for table in TABLES {
        let status = &state.status.tables[&format!("public.{table}")];
        assert_eq!(status.phase, TablePhase::Streaming, "{table}: {status:?}");
    }
    state
}

#[test]
fn a_worker_sigkilled_at_random_moments_loses_and_duplicates_no_row() {
    // Connector names are distinct: they name the replication slots on a shared Postgres.
    const CONNECTOR: &str = "pg_sigkill";
    const KILLS: usize = 22;
    with_seed("sigkill", |seed| {
        runtime().block_on(async {
            let setup = SyncSetup::new("pgfaultkill").await;
            let (accounts, items) = (30_000, 30_000);
            create_tables(&setup, accounts, items);
            setup.register(CONNECTOR).await;
            let workload = Workload::start(setup.source_url(), seed, accounts, items);
            let mut rng = StdRng::seed_from_u64(seed.rotate_left(17));

            // The first kill lands in the initial snapshot.
            let mut worker = setup.worker("w-0");
            wait_for_state(
                &setup,
                CONNECTOR,
                "w-0 snapshots",
                Duration::from_secs(30),
                || worker.log(),
                |s| {
                    s.status
                        .tables
                        .values()
                        .any(|t| matches!(t.phase, TablePhase::Snapshotting { .. }))
                },
            )
            .await;
            worker.crash();
            let state = setup.catalog.connector(CONNECTOR).await.expect("connector");
            assert!(
                state.cursor.is_none(),
                "the first kill was meant to land before the snapshot committed: {state:?}"
            );
            let mut claims = 1_u64;
            // Where the kills landed: before the worker claimed, in a snapshot, streaming.
            let mut landed = [0, 1, 0];

            // Then at random moments: every fourth worker a random time after its start
            // (often before or while it claims), the others a random time after their claim
            // (resuming, streaming, committing, compacting, or in a snapshot started over).
            for round in 1..KILLS {
                let id = format!("w-{round}");
                let mut worker = setup.worker(&id);
                if round % 4 != 0 {
                    wait_for_state(
                        &setup,
                        CONNECTOR,
                        &format!("{id} claims the connector"),
                        Duration::from_secs(30),
                        || worker.log(),
                        |s| holder(s) == Some(id.as_str()),
                    )
                    .await;
                    claims += 1;
                }
                let run = Duration::from_millis(if round % 4 == 0 {
                    rng.random_range(0..4000)
                } else {
                    rng.random_range(0..2500)
                });
                tokio::time::sleep(run).await;
                let state = setup.catalog.connector(CONNECTOR).await.expect("connector");
                worker.crash();
                landed[match (holder(&state) == Some(id.as_str()), &state.cursor) {
                    (false, _) => 0,
                    (true, None) => 1,
                    (true, Some(_)) => 2,
                }] += 1;
            }
            let during = workload.committed();
            let report = workload.stop();
            eprintln!(
                "{KILLS} kills: {} before a claim, {} in a snapshot, {} streaming; workload: {report:?}",
                landed[0], landed[1], landed[2]
            );
            assert!(
                during >= 500 && report.failed == 0,
                "the workload ran throughout: {report:?}"
            );

            let last = setup.worker("w-last");
            let state = assert_all_synced(&setup, CONNECTOR, &last).await;
            assert_eq!(holder(&state), Some("w-last"), "{state:?}");
            assert!(
                state.epoch > claims,
                "every takeover claimed at a higher epoch: epoch {}, {claims} claims seen before the last worker",
                state.epoch
            );
        })
    });
}

#[test]
fn two_workers_race_for_a_connector_and_a_frozen_one_is_fenced() {
    const CONNECTOR: &str = "pg_race";
    with_seed("race", |seed| {
        runtime().block_on(async {
            let setup = SyncSetup::new("pgfaultrace").await;
            let (accounts, items) = (5_000, 5_000);
            create_tables(&setup, accounts, items);
            setup.register(CONNECTOR).await;
            let workload = Workload::start(setup.source_url(), seed, accounts, items);

            // Two workers start at once; exactly one claims the connector.
            let mut a = setup.spawn_worker("w-a");
            let mut b = setup.spawn_worker("w-b");
            a.wait_for_200("/readyz");
            b.wait_for_200("/readyz");
            let logs = || format!("w-a:\n{}\nw-b:\n{}", a.log(), b.log());
            let state = wait_for_state(
                &setup,
                CONNECTOR,
                "a worker commits the snapshot",
                Duration::from_secs(60),
                logs,
                |s| s.holder.is_some() && s.cursor.is_some(),
            )
            .await;
            let (stale, fresh, fresh_id) = if holder(&state) == Some("w-a") {
                (a, b, "w-b")
            } else {
                (b, a, "w-a")
            };
            setup.wait_caught_up(CONNECTOR, &stale).await;
            let state = setup.catalog.connector(CONNECTOR).await.expect("connector");
            assert_eq!(state.epoch, 1, "one claim only: {state:?}");
            assert!(
                !fresh.log().contains("claimed"),
                "the other worker never claimed:\n{}",
                fresh.log()
            );

            // The holder freezes (paused, not dead): its lease lapses and the other worker
            // takes over at a higher epoch, resuming from the committed cursor.
            stale.signal("STOP");
            let logs = || format!("stale:\n{}\nfresh:\n{}", stale.log(), fresh.log());
            let state = wait_for_state(
                &setup,
                CONNECTOR,
                "the other worker takes over",
                Duration::from_secs(30),
                &logs,
                |s| holder(s) == Some(fresh_id),
            )
            .await;
            assert_eq!(
                state.epoch, 2,
                "the takeover claimed a new epoch: {state:?}"
            );
            wait_for_state(
                &setup,
                CONNECTOR,
                "the new holder commits",
                Duration::from_secs(30),
                &logs,
                |s| s.cursor.as_ref().is_some_and(|c| c.value.epoch == 2),
            )
            .await;

            // Woken, the stale worker finds its commits fenced and its lease gone: it stops
            // the connector and registers again, finding the connector held.
            stale.signal("CONT");
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stale.log().contains("registered again") {
                assert!(
                    Instant::now() < deadline,
                    "the woken worker did not notice its lapsed lease:\n{}",
                    stale.log()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let log = stale.log();
            assert!(log.contains("lease is lost"), "{log}");
            eprintln!(
                "stale worker: a commit was fenced: {}",
                log.contains("fenced")
            );
            // The new holder goes on committing (a commit of the stale worker would have
            // moved the cursor under it and fenced it).
            let before = setup
                .catalog
                .connector(CONNECTOR)
                .await
                .expect("connector")
                .cursor
                .map_or(0, |c| c.mod_revision);
            wait_for_state(
                &setup,
                CONNECTOR,
                "the new holder commits after the stale worker woke",
                Duration::from_secs(30),
                &logs,
                |s| s.cursor.as_ref().is_some_and(|c| c.mod_revision > before),
            )
            .await;
            workload.wait_for_more(20).await;
            let report = workload.stop();
            assert_eq!(report.failed, 0, "{report:?}");

            let state = assert_all_synced(&setup, CONNECTOR, &fresh).await;
            assert_eq!(
                (state.epoch, holder(&state)),
                (2, Some(fresh_id)),
                "nobody claimed after the takeover: {state:?}"
            );
            assert_eq!(
                state.cursor.as_ref().map(|c| c.value.epoch),
                Some(2),
                "{state:?}"
            );
            assert!(
                !fresh.log().contains("fenced"),
                "the new holder was never fenced: nobody else committed\n{}",
                fresh.log()
            );
        })
    });
}

#[test]
fn a_worker_rides_out_postgres_restarts_and_crashes() {
    const CONNECTOR: &str = "pg_restarts";
    with_seed("postgres", |seed| {
        let postgres = Postgres::start().expect("a private Postgres");
        runtime().block_on(async {
            let setup = SyncSetup::on("pgfaultpg", &postgres, Etcd::shared()).await;
            let (accounts, items) = (5_000, 5_000);
            create_tables(&setup, accounts, items);
            let worker = setup.worker("w-1");
            setup.register(CONNECTOR).await;
            setup.wait_caught_up(CONNECTOR, &worker).await;
            let workload = Workload::start(setup.source_url(), seed, accounts, items);
            workload.wait_for_more(50).await;

            // A clean (fast) restart, then a crash, each mid-workload; after each the worker
            // resumes from its committed cursor and catches up.
            postgres.process().restart().expect("restart Postgres");
            postgres.wait_ready().expect("Postgres back");
            workload.wait_for_more(50).await;
            setup.wait_caught_up(CONNECTOR, &worker).await;

            postgres
                .crash_restart()
                .expect("crash and restart Postgres");
            workload.wait_for_more(50).await;
            setup.wait_caught_up(CONNECTOR, &worker).await;

            let report = workload.stop();
            assert!(
                report.connections >= 3,
                "the workload saw both outages: {report:?}"
            );
            let state = assert_all_synced(&setup, CONNECTOR, &worker).await;
            assert_eq!(
                (state.epoch, holder(&state)),
                (1, Some("w-1")),
                "the same worker resumed by itself: {state:?}"
            );
            let log = worker.log();
            assert!(
                log.contains("sync run failed"),
                "the worker saw the outages:\n{log}"
            );
            assert_resumed_without_snapshot(&log);
        })
    });
}

#[test]
fn a_worker_rides_out_etcd_restarts_and_crashes() {
    const CONNECTOR: &str = "pg_etcd_restarts";
    with_seed("etcd", |seed| {
        let etcd = Etcd::start().expect("a private etcd");
        runtime().block_on(async {
            let setup = SyncSetup::on("pgfaultetcd", Postgres::shared(), &etcd).await;
            let (accounts, items) = (5_000, 5_000);
            create_tables(&setup, accounts, items);
            let worker = setup.worker("w-1");
            setup.register(CONNECTOR).await;
            setup.wait_caught_up(CONNECTOR, &worker).await;
            let workload = Workload::start(setup.source_url(), seed, accounts, items);
            workload.wait_for_more(50).await;

            etcd.restart().expect("restart etcd");
            workload.wait_for_more(50).await;
            setup.wait_caught_up(CONNECTOR, &worker).await;

            etcd.process().kill().expect("kill etcd");
            etcd.process().start_again().expect("start etcd again");
            etcd.wait_ready().expect("etcd back after a crash");
            workload.wait_for_more(50).await;
            setup.wait_caught_up(CONNECTOR, &worker).await;

            // An outage longer than the worker's lease: etcd crashes and stays down until the
            // worker has given its lease up. Back, it registers again, claims the connector
            // at a new epoch and resumes from the committed cursor.
            etcd.process().kill().expect("kill etcd");
            let deadline = Instant::now() + Duration::from_secs(30);
            while !worker.log().contains("catalog lease lost") {
                assert!(
                    Instant::now() < deadline,
                    "the worker did not give its lease up while etcd was down:\n{}",
                    worker.log()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            etcd.process().start_again().expect("start etcd again");
            etcd.wait_ready().expect("etcd back after a long outage");
            workload.wait_for_more(50).await;
            setup.wait_caught_up(CONNECTOR, &worker).await;

            let report = workload.stop();
            assert_eq!(report.failed, 0, "{report:?}");
            let state = assert_all_synced(&setup, CONNECTOR, &worker).await;
            let log = worker.log();
            assert!(
                log.contains("registered again"),
                "the worker registered again after the long outage:\n{log}"
            );
            assert_resumed_without_snapshot(&log);
            assert_eq!(holder(&state), Some("w-1"), "{state:?}");
            assert!(
                state.epoch >= 2,
                "the worker claimed again after its lease lapsed: {state:?}"
            );
        })
    });
}

/// Asserts that the worker whose log is `log` copied each table once only: after every fault
/// it resumed from its committed cursor.
fn assert_resumed_without_snapshot(log: &str) {
    assert_eq!(
        log.matches("table copied").count(),
        TABLES.len(),
        "the worker resumed from its cursor, without a new snapshot:\n{log}"
    );
}

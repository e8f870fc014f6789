//! Sync under faults (issue 5), for every source (`common::source`): `kyma cdc-worker`
//! processes killed with SIGKILL at random moments, two workers racing for one connector
//! (one of them frozen with SIGSTOP and woken after a takeover), the source restarted and
//! crashed, etcd restarted and crashed — each while a workload keeps changing the source,
//! and afterwards every synced table equals the source row by row, no row lost or
//! duplicated.
//!
//! Each test is a generic body in `cases`, over a [`SourceFixture`], instantiated per source
//! by [`for_every_source!`] (`postgres::a_worker_sigkilled_…`); a source joins by adding its
//! fixture there (MariaDB and MongoDB: see `common::source`).
//!
//! The random choices (the workload's transactions, when a worker is killed) come from one
//! seed, printed with every failure; `KYMA_FAULT_SEED=N` replays a run's choices (the timing
//! of real processes still varies).

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::source::{
    EPOCH_2024, OWNERS, Op, Select, Set, SourceFixture, Table, Transaction, Value, for_every_source,
};
use common::sync::Deployment;
use common::{Kyma, runtime};
use kyma_catalog::{ConnectorState, TablePhase};
use kyma_test_harness::Etcd;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

for_every_source!(
    a_worker_sigkilled_at_random_moments_loses_and_duplicates_no_row,
    two_workers_race_for_a_connector_and_a_frozen_one_is_fenced,
    a_worker_rides_out_source_restarts_and_crashes,
    a_worker_rides_out_etcd_restarts_and_crashes,
);

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

/// Runs fault test `name` on `source` (none: the source is not available here, and the
/// fixture said so) under [`with_seed`], on a runtime.
fn fault_test<F: SourceFixture>(name: &str, source: Option<F>, test: impl AsyncFnOnce(&F, u64)) {
    let Some(source) = source else {
        return;
    };
    with_seed(&format!("{}::{name}", F::NAME), |seed| {
        runtime().block_on(test(&source, seed));
    });
}

/// Seeds `source` with `rows` accounts and `rows` items, registers `connector` on `kyma`
/// and starts a workload on the source (no worker runs yet).
async fn register_under_load<F: SourceFixture + 'static>(
    source: &F,
    kyma: &Deployment<'_>,
    connector: &str,
    rows: i64,
    seed: u64,
) -> Workload {
    source.create_and_seed(rows, rows).await;
    kyma.register_source(source, connector).await;
    Workload::start(source, seed, rows, rows)
}

/// Syncs `source` (5,000 accounts and items) with worker `w-1`, then starts a workload on
/// the source and waits for its first 50 commits: a worker streaming under load.
async fn stream_under_load<F: SourceFixture + 'static>(
    source: &F,
    kyma: &Deployment<'_>,
    connector: &str,
    seed: u64,
) -> (Kyma, Workload) {
    const ROWS: i64 = 5_000;
    let worker = kyma.start_synced(source, connector, ROWS, ROWS).await;
    let workload = Workload::start(source, seed, ROWS, ROWS);
    workload.wait_for_more(50).await;
    (worker, workload)
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
/// key changes (single and composite), transactions over both tables, several changes of one
/// row in one transaction, rolled-back transactions. It reconnects when the source goes
/// away; a transaction whose fate a lost connection hides needs no bookkeeping, since the
/// checker compares kyma with the source itself.
struct Workload {
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<WorkloadReport>,
}

impl Workload {
    /// Starts the workload on `source`, whose tables were seeded with `accounts` accounts and
    /// `items` items.
    fn start<F: SourceFixture + 'static>(source: &F, seed: u64, accounts: i64, items: i64) -> Self {
        let url = source.url();
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
                    .block_on(run_workload::<F>(
                        url, seed, accounts, items, &stop, &committed,
                    ))
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

async fn run_workload<F: SourceFixture>(
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
        let Some(session) = client.as_mut().filter(|s| F::is_open(s)) else {
            match F::connect(&url).await {
                Ok(c) => {
                    client = Some(c);
                    report.connections += 1;
                }
                // The source is down: try again shortly.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
            continue;
        };
        let transaction = transaction(&mut rng, &mut next_account, &mut next_n);
        match F::execute(session, &transaction).await {
            Ok(()) => {
                report.committed += 1;
                committed.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                report.failed += 1;
                report.last_error = Some(e);
            }
        }
        // Pacing, so that a debug-build worker on two cores can keep up.
        tokio::time::sleep(Duration::from_millis(rng.random_range(3..15))).await;
    }
    report
}

/// One random source transaction (several changes, made as one transaction).
fn transaction(rng: &mut StdRng, next_account: &mut i64, next_n: &mut i64) -> Transaction {
    use Table::{Accounts, Items};
    let top = *next_account;
    let account = |rng: &mut StdRng| rng.random_range(1..top);
    let a = account(rng);
    let b = account(rng);
    let delta = rng.random_range(-50..50);
    let name = if rng.random_bool(0.2) {
        Value::Null
    } else {
        Value::text(format!("name {}", rng.random_range(0..1_000_000)))
    };
    let now = Value::Timestamp(EPOCH_2024 + rng.random_range(0..100_000_000));
    let key = |id: i64| Select::Key(vec![id]);
    let of_owner = |owner: i64| Select::In("owner", vec![owner]);
    let update = |table, rows, set| Op::Update { table, rows, set };
    match rng.random_range(0..10) {
        // New accounts with items: one transaction over both tables.
        0 => {
            let id = *next_account;
            *next_account += 1;
            let n = *next_n;
            *next_n += 2;
            Transaction::commit(vec![
                Op::Insert {
                    table: Accounts,
                    rows: vec![vec![
                        Value::Int(id),
                        Value::Int(delta),
                        name,
                        Value::Int(0),
                        Value::Null,
                    ]],
                },
                Op::Insert {
                    table: Items,
                    rows: vec![
                        vec![
                            Value::Int(id),
                            Value::Int(n),
                            Value::Int(1),
                            Value::Decimal(999),
                            Value::text("new"),
                            now,
                        ],
                        vec![
                            Value::Int(id),
                            Value::Int(n + 1),
                            Value::Int(2),
                            Value::Null,
                            Value::Null,
                            Value::Null,
                        ],
                    ],
                },
            ])
        }
        // Updates.
        1 => {
            let ids = (0..rng.random_range(1..10)).map(|_| account(rng)).collect();
            Transaction::commit(vec![update(
                Accounts,
                Select::In("id", ids),
                vec![
                    ("balance", Set::Add(delta)),
                    ("touched", Set::Add(1)),
                    ("name", Set::To(name)),
                ],
            )])
        }
        // A transfer: two accounts and an item.
        2 => {
            let n = *next_n;
            *next_n += 1;
            Transaction::commit(vec![
                update(Accounts, key(a), vec![("balance", Set::Add(-delta))]),
                update(Accounts, key(b), vec![("balance", Set::Add(delta))]),
                Op::Insert {
                    table: Items,
                    rows: vec![vec![
                        Value::Int(a),
                        Value::Int(n),
                        Value::Int(delta),
                        Value::Decimal(delta * 100 + 50),
                        Value::text(format!("transfer to {b}")),
                        now,
                    ]],
                },
            ])
        }
        // An account and its items deleted.
        3 => Transaction::commit(vec![
            Op::Delete {
                table: Accounts,
                rows: key(a),
            },
            Op::Delete {
                table: Items,
                rows: of_owner(a),
            },
        ]),
        // A key change, carried to the composite keys of its items.
        4 => {
            let id = *next_account;
            *next_account += 1;
            Transaction::commit(vec![
                update(
                    Accounts,
                    key(a),
                    vec![("id", Set::To(Value::Int(id))), ("touched", Set::Add(1))],
                ),
                update(Items, of_owner(a), vec![("owner", Set::To(Value::Int(id)))]),
            ])
        }
        // A composite-key change of one item.
        5 => {
            let n = *next_n;
            *next_n += 1;
            let owner = rng.random_range(1..=OWNERS);
            Transaction::commit(vec![update(
                Items,
                Select::First {
                    column: "owner",
                    value: owner,
                    limit: 1,
                },
                vec![("n", Set::To(Value::Int(n))), ("qty", Set::Add(1))],
            )])
        }
        // A wider update.
        6 => {
            let modulus = 211;
            let rest = rng.random_range(0..modulus);
            Transaction::commit(vec![update(
                Items,
                Select::Modulo("n", modulus, rest),
                vec![
                    ("qty", Set::Add(1)),
                    ("note", Set::To(Value::text(format!("bulk {delta}")))),
                ],
            )])
        }
        // One row changed several times in one transaction; a row inserted and deleted.
        7 => {
            let id = *next_account;
            *next_account += 1;
            Transaction::commit(vec![
                update(Accounts, key(a), vec![("balance", Set::To(Value::Int(1)))]),
                update(
                    Accounts,
                    key(a),
                    vec![("balance", Set::To(Value::Int(2))), ("name", Set::To(name))],
                ),
                Op::Insert {
                    table: Accounts,
                    rows: vec![vec![
                        Value::Int(id),
                        Value::Int(7),
                        Value::text("short-lived"),
                        Value::Int(0),
                        Value::Bool(true),
                    ]],
                },
                update(Accounts, key(id), vec![("balance", Set::To(Value::Int(8)))]),
                Op::Delete {
                    table: Accounts,
                    rows: key(id),
                },
            ])
        }
        // Rolled back: must never show.
        8 => Transaction::rollback(vec![
            Op::Delete {
                table: Accounts,
                rows: key(a),
            },
            update(Items, of_owner(b), vec![("qty", Set::To(Value::Int(-1)))]),
        ]),
        // Single-row changes.
        _ => Transaction::commit(vec![
            update(
                Items,
                Select::First {
                    column: "owner",
                    value: rng.random_range(1..=OWNERS),
                    limit: 3,
                },
                vec![("price", Set::Add(1)), ("at", Set::To(now))],
            ),
            update(Accounts, key(b), vec![("active", Set::Flip)]),
        ]),
    }
}

/// Polls the connector until `done` holds; fails after `within` with `what` and `logs`.
async fn wait_for_state(
    kyma: &Deployment<'_>,
    connector: &str,
    what: &str,
    within: Duration,
    logs: impl Fn() -> String,
    done: impl Fn(&ConnectorState) -> bool,
) -> ConnectorState {
    let deadline = Instant::now() + within;
    loop {
        let state = kyma.catalog.connector(connector).await;
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
    kyma: &Deployment<'_>,
    source: &impl SourceFixture,
    connector: &str,
    worker: &Kyma,
) -> ConnectorState {
    kyma.wait_caught_up_with(source, connector, worker).await;
    kyma.assert_tables_synced(source, connector).await;
    let state = kyma.catalog.connector(connector).await.expect("connector");
    for table in Table::ALL {
        let status = &state.status.tables[&format!("{}.{}", source.schema(), table.name())];
        assert_eq!(status.phase, TablePhase::Streaming, "{table:?}: {status:?}");
    }
    state
}

/// Asserts that the worker whose log is `log` copied each table once only: after every fault
/// it resumed from its committed cursor.
fn assert_resumed_without_snapshot(log: &str) {
    assert_eq!(
        log.matches("table copied").count(),
        Table::ALL.len(),
        "the worker resumed from its cursor, without a new snapshot:\n{log}"
    );
}

/// The tests, generic over the source.
mod cases {
    use super::*;

    pub fn a_worker_sigkilled_at_random_moments_loses_and_duplicates_no_row<
        F: SourceFixture + 'static,
    >() {
        // Connector names are distinct: they name source objects (Postgres: replication
        // slots) on a shared server.
        const CONNECTOR: &str = "sigkill";
        const KILLS: usize = 22;
        fault_test(
            "sigkill",
            F::shared("faultkill"),
            async |source: &F, seed| {
                let kyma = Deployment::new("faultkill").await;
                let workload = register_under_load(source, &kyma, CONNECTOR, 30_000, seed).await;
                let mut rng = StdRng::seed_from_u64(seed.rotate_left(17));

                // The first kill lands in the initial snapshot.
                let mut worker = kyma.worker("w-0");
                wait_for_state(
                    &kyma,
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
                let state = kyma.catalog.connector(CONNECTOR).await.expect("connector");
                assert!(
                    state.cursor.is_none(),
                    "the first kill was meant to land before the snapshot committed: {state:?}"
                );
                let mut claims = 1_u64;
                // Where the kills landed: before the worker claimed, in a snapshot, streaming.
                let mut landed = [0, 1, 0];

                // Then at random moments: every fourth worker a random time after its start
                // (often before or while it claims), the others a random time after their
                // claim (resuming, streaming, committing, compacting, or in a snapshot
                // started over).
                for round in 1..KILLS {
                    let id = format!("w-{round}");
                    let mut worker = kyma.worker(&id);
                    if round % 4 != 0 {
                        wait_for_state(
                            &kyma,
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
                    let state = kyma.catalog.connector(CONNECTOR).await.expect("connector");
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

                let last = kyma.worker("w-last");
                let state = assert_all_synced(&kyma, source, CONNECTOR, &last).await;
                assert_eq!(holder(&state), Some("w-last"), "{state:?}");
                assert!(
                    state.epoch > claims,
                    "every takeover claimed at a higher epoch: epoch {}, {claims} claims seen before the last worker",
                    state.epoch
                );
            },
        );
    }

    pub fn two_workers_race_for_a_connector_and_a_frozen_one_is_fenced<
        F: SourceFixture + 'static,
    >() {
        const CONNECTOR: &str = "race";
        fault_test("race", F::shared("faultrace"), async |source: &F, seed| {
            let kyma = Deployment::new("faultrace").await;
            let workload = register_under_load(source, &kyma, CONNECTOR, 5_000, seed).await;

            // Two workers start at once; exactly one claims the connector.
            let mut a = kyma.spawn_worker("w-a");
            let mut b = kyma.spawn_worker("w-b");
            a.wait_for_200("/readyz");
            b.wait_for_200("/readyz");
            let logs = || format!("w-a:\n{}\nw-b:\n{}", a.log(), b.log());
            let state = wait_for_state(
                &kyma,
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
            kyma.wait_caught_up_with(source, CONNECTOR, &stale).await;
            let state = kyma.catalog.connector(CONNECTOR).await.expect("connector");
            assert_eq!(state.epoch, 1, "one claim only: {state:?}");
            assert!(
                !fresh.log().contains("claimed"),
                "the other worker never claimed:\n{}",
                fresh.log()
            );

            // The holder freezes (paused, not dead): its lease lapses and the other
            // worker takes over at a higher epoch, resuming from the committed cursor.
            stale.signal("STOP");
            let logs = || format!("stale:\n{}\nfresh:\n{}", stale.log(), fresh.log());
            let state = wait_for_state(
                &kyma,
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
                &kyma,
                CONNECTOR,
                "the new holder commits",
                Duration::from_secs(30),
                &logs,
                |s| s.cursor.as_ref().is_some_and(|c| c.value.epoch == 2),
            )
            .await;

            // Woken, the stale worker finds its commits fenced and its lease gone: it
            // stops the connector and registers again, finding the connector held.
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
            let before = kyma
                .catalog
                .connector(CONNECTOR)
                .await
                .expect("connector")
                .cursor
                .map_or(0, |c| c.mod_revision);
            wait_for_state(
                &kyma,
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

            let state = assert_all_synced(&kyma, source, CONNECTOR, &fresh).await;
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
        });
    }

    pub fn a_worker_rides_out_source_restarts_and_crashes<F: SourceFixture + 'static>() {
        const CONNECTOR: &str = "restarts";
        fault_test(
            "source",
            F::private("faultsource"),
            async |source: &F, seed| {
                let kyma = Deployment::new("faultsource").await;
                let (worker, workload) = stream_under_load(source, &kyma, CONNECTOR, seed).await;

                // A clean (fast) restart, then a crash, each mid-workload; after each the
                // worker resumes from its committed cursor and catches up.
                source.restart();
                workload.wait_for_more(50).await;
                kyma.wait_caught_up_with(source, CONNECTOR, &worker).await;

                source.crash();
                workload.wait_for_more(50).await;
                kyma.wait_caught_up_with(source, CONNECTOR, &worker).await;

                let report = workload.stop();
                assert!(
                    report.connections >= 3,
                    "the workload saw both outages: {report:?}"
                );
                let state = assert_all_synced(&kyma, source, CONNECTOR, &worker).await;
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
            },
        );
    }

    pub fn a_worker_rides_out_etcd_restarts_and_crashes<F: SourceFixture + 'static>() {
        const CONNECTOR: &str = "etcd_restarts";
        fault_test("etcd", F::shared("faultetcd"), async |source: &F, seed| {
            let etcd = Etcd::start().expect("a private etcd");
            let kyma = Deployment::on("faultetcd", &etcd).await;
            let (worker, workload) = stream_under_load(source, &kyma, CONNECTOR, seed).await;

            etcd.restart().expect("restart etcd");
            workload.wait_for_more(50).await;
            kyma.wait_caught_up_with(source, CONNECTOR, &worker).await;

            etcd.process().kill().expect("kill etcd");
            etcd.process().start_again().expect("start etcd again");
            etcd.wait_ready().expect("etcd back after a crash");
            workload.wait_for_more(50).await;
            kyma.wait_caught_up_with(source, CONNECTOR, &worker).await;

            // An outage longer than the worker's lease: etcd crashes and stays down
            // until the worker has given its lease up. Back, it registers again, claims
            // the connector at a new epoch and resumes from the committed cursor.
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
            kyma.wait_caught_up_with(source, CONNECTOR, &worker).await;

            let report = workload.stop();
            assert_eq!(report.failed, 0, "{report:?}");
            let state = assert_all_synced(&kyma, source, CONNECTOR, &worker).await;
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
        });
    }
}

//! Sync end to end, for every source (`common::source`): a `kyma cdc-worker` process syncing
//! a real source into S3 under an etcd catalog, checked row by row against the source.
//!
//! Each test is a generic body in `cases`, over a [`SourceFixture`], instantiated per source
//! by [`for_every_source!`] (`postgres::snapshot_then_stream_…`); a source joins by adding
//! its fixture there (MariaDB and MongoDB: see `common::source`). What is specific to one
//! source (its column types, TOAST, …) is tested in its own file (`sync_postgres.rs`).

mod common;

use arrow_flight::sql::client::FlightSqlServiceClient;
use common::source::{
    Op, Select, Set, SourceFixture, Table, Transaction, Value, for_every_source, on_shared_source,
};
use common::sync::flight_rows;
use kyma_catalog::{TablePhase, TableRef};
use tonic::transport::Channel;

for_every_source!(
    snapshot_then_stream_keeps_every_table_equal_to_the_source,
    a_worker_killed_mid_stream_is_replaced_without_losing_or_duplicating_a_row,
    a_query_fenced_on_a_source_position_waits_for_it_across_a_worker_kill,
    commits_that_cross_the_compaction_threshold_compact_and_survive_a_kill,
);

/// The MongoDB fixture's rendering, checked without a server (its tests need one): seeded
/// rows as documents (`_id` the key, `items`' a document `{owner, n}`, decimals as
/// Decimal128) and those documents displayed as kyma displays them.
#[test]
fn mongodb_fixture_documents_read_as_kyma_shows_them() {
    use common::source::mongodb::{document, rows};
    let canonical = |document| {
        ::mongodb::bson::Bson::Document(document)
            .into_canonical_extjson()
            .to_string()
    };
    assert_eq!(
        canonical(document(Table::Accounts, &Table::Accounts.seed_row(3))),
        r#"{"_id":{"$numberLong":"3"},"balance":{"$numberLong":"1000"},"name":"account 3","touched":{"$numberInt":"0"},"active":true}"#
    );
    assert_eq!(
        canonical(document(Table::Items, &Table::Items.seed_row(10))),
        r#"{"_id":{"owner":{"$numberLong":"11"},"n":{"$numberInt":"10"}},"qty":{"$numberInt":"3"},"price":{"$numberDecimal":"2.50"},"note":"item 10","at":{"$date":{"$numberLong":"1704067210000"}}}"#
    );
    let items: Vec<_> = (1..=4)
        .map(|i| document(Table::Items, &Table::Items.seed_row(i)))
        .chain([document(Table::Items, &item(7, 9, 2))])
        .collect();
    let shown = rows(Default::default(), &items);
    let keys: Vec<&String> = shown.keys().collect();
    assert_eq!(
        keys,
        [
            r#"{"owner":2,"n":1}"#,
            r#"{"owner":3,"n":2}"#,
            r#"{"owner":4,"n":3}"#,
            r#"{"owner":5,"n":4}"#,
            r#"{"owner":7,"n":9}"#
        ]
    );
    let row = |key: &str| format!("{:?}", shown[key]);
    assert_eq!(
        row(r#"{"owner":5,"n":4}"#),
        r#"{"_id": "{\"owner\":5,\"n\":4}", "at": "2024-01-01T00:00:04Z", "note": "item 4", "price": "1.0", "qty": "4"}"#,
        "a Decimal128 column with fractions reads as real"
    );
    assert_eq!(
        row(r#"{"owner":7,"n":9}"#),
        r#"{"_id": "{\"owner\":7,\"n\":9}", "at": "NULL", "note": "NULL", "price": "NULL", "qty": "2"}"#
    );
}

/// An account row: `id`, `balance`, `name`, `touched` 0, `active`.
fn account(id: i64, balance: i64, name: Value, active: Value) -> Vec<Value> {
    vec![
        Value::Int(id),
        Value::Int(balance),
        name,
        Value::Int(0),
        active,
    ]
}

/// An item row: `owner`, `n`, `qty`, then `price`, `note` and `at` NULL.
fn item(owner: i64, n: i64, qty: i64) -> Vec<Value> {
    vec![
        Value::Int(owner),
        Value::Int(n),
        Value::Int(qty),
        Value::Null,
        Value::Null,
        Value::Null,
    ]
}

/// The tests, generic over the source.
mod cases {
    use super::*;
    use Table::{Accounts, Items};

    pub fn snapshot_then_stream_keeps_every_table_equal_to_the_source<F: SourceFixture>() {
        const CONNECTOR: &str = "src";
        on_shared_source("sync", async |source: &F, kyma| {
            let mut worker = kyma.start_synced(source, CONNECTOR, 2000, 3000).await;
            kyma.assert_tables_synced(source, CONNECTOR).await;
            let metrics = worker.wait_for_200("/metrics");
            assert!(
                metrics.contains("kyma_sync_snapshot_rows_total{connector=\"src\"} 5000"),
                "the worker counts the snapshot's 2,000 + 3,000 rows:\n{metrics}"
            );
            let status = kyma
                .catalog
                .connector(CONNECTOR)
                .await
                .expect("connector")
                .status;
            for table in Table::ALL {
                let name = format!("{}.{}", source.schema(), table.name());
                assert_eq!(
                    status.tables[&name].phase,
                    TablePhase::Streaming,
                    "{status:?}"
                );
                assert_eq!(status.tables[&name].last_error, None, "{status:?}");
            }

            // Inserts (NULLs among them), updates (to NULL too), deletes, key changes
            // (single-column and composite, one row and many), several changes of one row
            // and an insert then delete in one transaction, a wider update, transactions
            // over both tables, a deleted key inserted again, a rolled-back transaction.
            let set = |table, rows, set| Op::Update { table, rows, set };
            let delete = |table, rows| Op::Delete { table, rows };
            source
                .run(&[
                    Transaction::commit(vec![Op::Insert {
                        table: Accounts,
                        rows: vec![account(5001, 0, Value::Null, Value::Null)],
                    }]),
                    Transaction::commit(vec![set(
                        Accounts,
                        Select::Modulo("id", 7, 0),
                        vec![
                            ("name", Set::To(Value::text("changed"))),
                            ("balance", Set::Add(1)),
                        ],
                    )]),
                    Transaction::commit(vec![set(
                        Items,
                        Select::Modulo("n", 13, 0),
                        vec![
                            ("price", Set::To(Value::Null)),
                            ("at", Set::To(Value::Null)),
                        ],
                    )]),
                    Transaction::commit(vec![delete(Accounts, Select::Modulo("id", 11, 0))]),
                    Transaction::commit(vec![set(
                        Items,
                        Select::In("owner", vec![3]),
                        vec![("n", Set::Add(100_000))],
                    )]),
                    Transaction::commit(vec![
                        set(
                            Accounts,
                            Select::Key(vec![12]),
                            vec![("id", Set::To(Value::Int(7012))), ("touched", Set::Add(1))],
                        ),
                        set(
                            Items,
                            Select::In("owner", vec![12]),
                            vec![("owner", Set::To(Value::Int(7012)))],
                        ),
                    ]),
                    Transaction::commit(vec![set(
                        Items,
                        Select::First {
                            column: "owner",
                            value: 5,
                            limit: 1,
                        },
                        vec![("n", Set::To(Value::Int(200_000))), ("qty", Set::Add(1))],
                    )]),
                    Transaction::commit(vec![
                        Op::Insert {
                            table: Items,
                            rows: vec![item(5001, 1, 9), item(5001, 2, 8)],
                        },
                        set(
                            Accounts,
                            Select::Key(vec![5001]),
                            vec![
                                ("active", Set::Flip),
                                ("name", Set::To(Value::text("both"))),
                            ],
                        ),
                        delete(Items, Select::In("owner", vec![4])),
                    ]),
                    Transaction::commit(vec![
                        set(
                            Accounts,
                            Select::Key(vec![1]),
                            vec![("balance", Set::To(Value::Int(1)))],
                        ),
                        set(
                            Accounts,
                            Select::Key(vec![1]),
                            vec![("balance", Set::Add(1)), ("name", Set::To(Value::Null))],
                        ),
                        Op::Insert {
                            table: Accounts,
                            rows: vec![account(
                                6000,
                                7,
                                Value::text("short-lived"),
                                Value::Bool(true),
                            )],
                        },
                        delete(Accounts, Select::Key(vec![6000])),
                    ]),
                    Transaction::commit(vec![set(
                        Items,
                        Select::Modulo("n", 3, 1),
                        vec![("qty", Set::Add(1)), ("note", Set::To(Value::text("bulk")))],
                    )]),
                    Transaction::commit(vec![Op::Insert {
                        table: Accounts,
                        rows: vec![account(11, 1, Value::text("back again"), Value::Bool(true))],
                    }]),
                    Transaction::rollback(vec![
                        delete(Accounts, Select::Key(vec![2])),
                        set(
                            Items,
                            Select::In("owner", vec![6]),
                            vec![("qty", Set::To(Value::Int(-1)))],
                        ),
                    ]),
                ])
                .await;
            kyma.wait_caught_up_with(source, CONNECTOR, &worker).await;
            kyma.assert_tables_synced(source, CONNECTOR).await;
            let (accounts, _) = kyma
                .kyma_rows(&TableRef::new(CONNECTOR, source.schema(), "accounts"))
                .await;
            assert!(
                accounts.contains_key("7012") && !accounts.contains_key("12"),
                "the key change moved account 12 to 7012"
            );
            assert!(
                accounts.contains_key("11") && !accounts.contains_key("6000"),
                "a deleted key came back; a row inserted and deleted in one transaction never shows"
            );
            // Each commit of changes recorded what they superseded (checked above, by
            // `kyma_rows`, against the versions).
            let accounts = TableRef::new(CONNECTOR, source.schema(), "accounts");
            assert!(kyma.positions_resolved(&accounts).await);
            worker.assert_counts_streamed_rows(CONNECTOR);
        });
    }

    pub fn a_worker_killed_mid_stream_is_replaced_without_losing_or_duplicating_a_row<
        F: SourceFixture,
    >() {
        const CONNECTOR: &str = "kill";
        on_shared_source("kill", async |source: &F, kyma| {
            let mut first = kyma.start_synced(source, CONNECTOR, 5000, 500).await;
            // A workload runs while the worker is killed with SIGKILL and a second one takes
            // over from the committed cursor at a higher epoch.
            for round in 0..6 {
                let inserted = (1..=200)
                    .map(|i| {
                        account(
                            100_000 + round * 1000 + i,
                            round,
                            Value::text("r"),
                            Value::Null,
                        )
                    })
                    .collect();
                source
                    .run(&[Transaction::commit(vec![
                        Op::Update {
                            table: Accounts,
                            rows: Select::Modulo("id", 6, round),
                            set: vec![("balance", Set::Add(1))],
                        },
                        Op::Delete {
                            table: Accounts,
                            rows: Select::Modulo("id", 97, round),
                        },
                        Op::Insert {
                            table: Accounts,
                            rows: inserted,
                        },
                    ])])
                    .await;
                if round == 2 {
                    first.crash();
                    first = kyma.worker("w-2");
                }
            }
            kyma.wait_caught_up_with(source, CONNECTOR, &first).await;
            kyma.assert_tables_synced(source, CONNECTOR).await;
            let state = kyma.catalog.connector(CONNECTOR).await.expect("connector");
            assert!(
                state.epoch >= 2,
                "the second worker claimed at a higher epoch: {state:?}"
            );
        });
    }

    /// Read-your-writes: a query carrying the source's position after a write answers only
    /// once kyma holds that write, waiting through a worker's crash and replacement; with
    /// no worker it fails after its timeout saying how far the connector has come; bad
    /// fences are refused at once.
    pub fn a_query_fenced_on_a_source_position_waits_for_it_across_a_worker_kill<
        F: SourceFixture,
    >() {
        const CONNECTOR: &str = "fence";
        on_shared_source("fence", async |source: &F, kyma| {
            let mut worker = kyma.start_synced(source, CONNECTOR, 20, 20).await;
            let (_node, flight) = kyma.query_node().await;
            let count = format!(
                r#"SELECT count(*) FROM "{CONNECTOR}"."{}"."accounts" WHERE id = 9001"#,
                source.schema()
            );
            let caught_up = source.write_position().await;
            let fenced = |position: &str, timeout_ms: u64| {
                fenced_client(&flight, &format!("{CONNECTOR}={position}"), timeout_ms)
            };
            assert_eq!(
                flight_rows(&mut fenced(&caught_up, 30_000), &count).await,
                Ok(vec!["0".to_owned()]),
                "a position the connector has reached (after its idle commit) answers"
            );
            for (fence, expected) in [
                (
                    "nope=1".to_owned(),
                    "connector `nope`, which does not exist",
                ),
                (format!("{CONNECTOR}=not a position"), "is not a"),
                (CONNECTOR.to_owned(), "<connector>=<position>"),
            ] {
                let error = flight_rows(&mut fenced_client(&flight, &fence, 30_000), &count)
                    .await
                    .expect_err("refused");
                assert!(error.contains(expected), "{fence}: {error}");
            }

            worker.crash();
            source
                .run(&[Transaction::commit(vec![Op::Insert {
                    table: Accounts,
                    rows: vec![account(9001, 1, Value::text("fenced"), Value::Null)],
                }])])
                .await;
            let written = source.write_position().await;
            let error = flight_rows(&mut fenced(&written, 300), &count)
                .await
                .expect_err("no worker: the fence times out");
            assert!(
                error.contains(&format!("connector `{CONNECTOR}` has not reached position"))
                    && error.contains("its data is committed up to"),
                "{error}"
            );

            // The query is sent before a worker runs: only the replacement's commit can
            // release it, and it must then see the row.
            let mut waiting = fenced(&written, 60_000);
            let answer = tokio::spawn(async move { flight_rows(&mut waiting, &count).await });
            let replacement = kyma.worker("w-2");
            assert_eq!(
                answer.await.expect("the query task"),
                Ok(vec!["1".to_owned()]),
                "the fenced query sees the write\n{}",
                replacement.log()
            );
            kyma.wait_caught_up_with(source, CONNECTOR, &replacement)
                .await;
            kyma.assert_tables_synced(source, CONNECTOR).await;
        });
    }

    /// Small commits, one per source transaction, compact a table as soon as they have
    /// added three delta extents (not on the worker's periodic sweep), and a worker killed
    /// right after such a commit — while its compaction runs — is replaced without losing or
    /// duplicating a row.
    pub fn commits_that_cross_the_compaction_threshold_compact_and_survive_a_kill<
        F: SourceFixture,
    >() {
        const CONNECTOR: &str = "compact";
        const FLAGS: &[&str] = &["--compact-after-extents=3"];
        on_shared_source("compact", async |source: &F, kyma| {
            source.create_and_seed(300, 30).await;
            let mut worker = kyma.worker_with("w-1", FLAGS);
            kyma.register_source(source, CONNECTOR).await;
            kyma.wait_caught_up_with(source, CONNECTOR, &worker).await;
            let accounts = TableRef::new(CONNECTOR, source.schema(), "accounts");
            for round in 0..18 {
                source
                    .run(&[Transaction::commit(vec![
                        Op::Update {
                            table: Accounts,
                            rows: Select::Modulo("id", 5, round % 5),
                            set: vec![("balance", Set::Add(1))],
                        },
                        Op::Insert {
                            table: Accounts,
                            rows: vec![account(50_000 + round, round, Value::Null, Value::Null)],
                        },
                    ])])
                    .await;
                // Each transaction its own commit, so commits cross the threshold.
                kyma.wait_caught_up_with(source, CONNECTOR, &worker).await;
                if round == 8 {
                    assert!(
                        worker
                            .log()
                            .contains("a commit crossed the compaction threshold"),
                        "nine one-extent commits crossed three extents:\n{}",
                        worker.log()
                    );
                    worker.crash();
                    worker = kyma.worker_with("w-2", FLAGS);
                }
            }
            kyma.assert_tables_synced(source, CONNECTOR).await;
            let metrics = worker.wait_for_200("/metrics");
            let compactions = metrics
                .lines()
                .find_map(|l| {
                    l.strip_prefix(&format!(
                        "kyma_sync_compactions_total{{connector=\"{CONNECTOR}\"}} "
                    ))
                })
                .and_then(|n| n.trim().parse::<u64>().ok());
            assert!(
                compactions.is_some_and(|n| n >= 1),
                "the replacement compacted after its commits crossed the threshold:\n{metrics}"
            );
            let deltas = kyma.delta_extents(&accounts).await;
            assert!(
                deltas < 9,
                "nine commits since the replacement started, yet {deltas} delta extents: compaction keeps up"
            );
        });
    }
}

/// A client of the same node whose calls carry `x-kyma-min-position: FENCE` and the timeout.
fn fenced_client(
    flight: &FlightSqlServiceClient<Channel>,
    fence: &str,
    timeout_ms: u64,
) -> FlightSqlServiceClient<Channel> {
    let mut client = flight.clone();
    client.set_header("x-kyma-min-position", fence);
    client.set_header("x-kyma-min-position-timeout-ms", timeout_ms.to_string());
    client
}

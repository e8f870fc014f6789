//! The sync framework's guarantees against a real Postgres (issue 12): a connector over
//! hundreds of tables, a server whose session defaults differ from kyma's, tables that enter
//! the scope later and resyncs, a frozen worker that wakes after a takeover, a crash in the
//! middle of a multi-table snapshot, and deleting a paused connector. Each runs `kyma
//! cdc-worker` processes (and, where the admin API is the point, a `kyma query-node`) on
//! real etcd and S3, and checks the synced tables against the source row by row.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::sync::{SyncSetup, connect_source, poll};
use common::{Kyma, runtime};
use kyma_catalog::{SyncPhase, TablePhase, TableRef, TableState};
use kyma_connectors::postgres::sync::SyncNames;
use kyma_query_node::admin_grpc::proto::ResyncTableRequest;
use kyma_query_node::admin_grpc::proto::connector_admin_client::ConnectorAdminClient;
use kyma_test_harness::{S3, free_port};

/// The synced tables of `connector`, by table name.
async fn synced_tables(setup: &SyncSetup<'_>, connector: &str) -> BTreeMap<String, TableState> {
    let (_, tables) = setup
        .catalog
        .list_tables(Some(connector))
        .await
        .expect("tables");
    tables
        .into_iter()
        .map(|t| (t.table.table.clone(), t))
        .collect()
}

/// The phase of each synced table of `connector`.
async fn phases(setup: &SyncSetup<'_>, connector: &str) -> BTreeMap<String, SyncPhase> {
    synced_tables(setup, connector)
        .await
        .into_iter()
        .filter_map(|(name, t)| Some((name, t.sync?.phase)))
        .collect()
}

/// A `kyma query-node` process on the setup's catalog and store, with its gRPC port.
fn query_node(setup: &SyncSetup<'_>) -> (Kyma, u16) {
    let grpc = free_port().expect("port");
    let s3 = S3::shared();
    let mut node = Kyma::spawn_with_env(
        &[
            "query-node",
            &format!(
                "--catalog=etcd://{}/{}",
                setup.etcd.host_port(),
                setup.prefix
            ),
            &format!("--store=s3://{}/extents", setup.bucket),
            &format!("--s3-endpoint={}", s3.endpoint()),
            &format!("--grpc-addr=127.0.0.1:{grpc}"),
        ],
        &[
            ("AWS_ACCESS_KEY_ID", S3::ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", S3::SECRET_KEY),
            ("AWS_REGION", S3::REGION),
        ],
    );
    node.wait_for_200("/readyz");
    (node, grpc)
}

/// Calls the query node's REST admin API.
async fn rest(node: &Kyma, method: reqwest::Method, path: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .request(method, format!("http://127.0.0.1:{}{path}", node.http_port))
        .send()
        .await
        .expect("HTTP call");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

#[test]
fn a_connector_with_200_tables_snapshots_and_commits_a_transaction_over_120_of_them_at_once() {
    const CONNECTOR: &str = "pg_wide";
    runtime().block_on(async {
        let setup = SyncSetup::new("pgwide").await;
        setup.sql(
            "DO $$ BEGIN FOR i IN 0..199 LOOP
               EXECUTE format('CREATE TABLE t%s (id int PRIMARY KEY, v text)', lpad(i::text, 3, '0'));
               EXECUTE format('INSERT INTO t%s SELECT g, ''v'' || g FROM generate_series(1, 3) g',
                              lpad(i::text, 3, '0'));
             END LOOP; END $$;",
        );
        let worker = setup.worker("w-1");
        setup.register(CONNECTOR).await;
        setup.wait_caught_up(CONNECTOR, &worker).await;
        let copied = phases(&setup, CONNECTOR).await;
        assert_eq!(copied.len(), 200);
        assert!(
            copied.values().all(|p| *p == SyncPhase::Streaming),
            "{copied:?}"
        );

        // One source transaction over 120 tables: an update and an insert in each.
        setup.sql(
            "DO $$ BEGIN FOR i IN 0..119 LOOP
               EXECUTE format('UPDATE t%s SET v = ''big'' WHERE id = 1', lpad(i::text, 3, '0'));
               EXECUTE format('INSERT INTO t%s VALUES (100, ''new'')', lpad(i::text, 3, '0'));
             END LOOP; END $$;",
        );
        setup.wait_caught_up(CONNECTOR, &worker).await;
        let tables = synced_tables(&setup, CONNECTOR).await;
        let touched: Vec<&TableState> = (0..120)
            .map(|i| &tables[&format!("t{i:03}")])
            .collect();
        let commit = touched[0].snapshot.value.commit_id;
        assert!(
            touched
                .iter()
                .all(|t| t.snapshot.value.commit_id == commit),
            "the transaction's 120 tables became visible in one catalog commit"
        );
        for name in tables.keys() {
            setup.assert_synced(CONNECTOR, "public", name).await;
        }
        let status = setup.catalog.connector(CONNECTOR).await.expect("connector").status;
        assert_eq!(status.last_error, None, "{status:?}");
    });
}

#[test]
fn a_server_in_new_york_writing_sql_dmy_dates_syncs_a_table_keyed_by_timestamptz() {
    const CONNECTOR: &str = "pg_ny";
    runtime().block_on(async {
        let setup = SyncSetup::new("pgnewyork").await;
        // Every session of this database, the walsender's included, defaults to these.
        setup.sql(&format!(
            "ALTER DATABASE {db} SET timezone TO 'America/New_York';
             ALTER DATABASE {db} SET datestyle TO 'SQL, DMY';
             ALTER DATABASE {db} SET intervalstyle TO 'sql_standard';
             ALTER DATABASE {db} SET extra_float_digits TO -3;",
            db = setup.database
        ));
        setup.sql(
            "CREATE TABLE events (at timestamptz PRIMARY KEY, day date, local timestamp,
                                  score float8, note text);
             INSERT INTO events SELECT '2026-03-08 01:00:00-05'::timestamptz + i * interval '37 minutes 13.25 seconds',
                 '2026-08-03'::date + i, '2026-08-03 03:21:00'::timestamp + i * interval '1 hour',
                 1 / 3.0 + i, 'row ' || i
               FROM generate_series(1, 300) i;",
        );
        let worker = setup.worker("w-1");
        setup.register(CONNECTOR).await;
        setup.wait_caught_up(CONNECTOR, &worker).await;
        setup.assert_synced(CONNECTOR, "public", "events").await;

        // Updates, a key change, deletes and inserts arrive through the stream, whose values
        // the walsender writes under its session settings.
        setup.sql(
            "UPDATE events SET note = 'updated', score = score * 7 / 3, local = local + interval '1 day'
               WHERE extract(minute FROM at) < 30;
             UPDATE events SET at = at + interval '1 year' WHERE note = 'row 7';
             DELETE FROM events WHERE score > 250 AND score < 260;
             INSERT INTO events VALUES ('2026-11-01 01:30:00-04', '2026-11-01', '2026-11-01 01:30:00', 0.1, 'dst'),
                                       ('2026-11-01 01:30:00-05', '2026-11-01', '2026-11-01 01:30:00', 0.2, 'dst 2');",
        );
        setup.wait_caught_up(CONNECTOR, &worker).await;
        setup.assert_synced(CONNECTOR, "public", "events").await;
        let state = setup.catalog.connector(CONNECTOR).await.expect("connector");
        let events = &state.status.tables["public.events"];
        assert_eq!(events.phase, TablePhase::Streaming, "{:?}", state.status);
        assert_eq!(events.last_error, None, "{:?}", state.status);
    });
}

#[test]
fn a_table_created_after_the_first_snapshot_is_synced_and_a_resync_copies_a_table_again() {
    const CONNECTOR: &str = "pg_late";
    runtime().block_on(async {
        let setup = SyncSetup::new("pglate").await;
        setup.sql(
            "CREATE TABLE a (id int PRIMARY KEY, v text);
             CREATE TABLE b (id int PRIMARY KEY, v text);
             INSERT INTO a SELECT i, 'a' || i FROM generate_series(1, 500) i;
             INSERT INTO b SELECT i, 'b' || i FROM generate_series(1, 500) i;",
        );
        let worker = setup.worker("w-1");
        setup.register(CONNECTOR).await;
        setup.wait_caught_up(CONNECTOR, &worker).await;

        // A table created after the first snapshot, written to while the worker streams.
        setup.sql(
            "CREATE TABLE c (id int PRIMARY KEY, v text);
             INSERT INTO c SELECT i, 'c' || i FROM generate_series(1, 200) i;
             UPDATE a SET v = 'changed' WHERE id <= 10;",
        );
        poll(
            "the new table is copied",
            Duration::from_secs(60),
            || worker.log(),
            || async {
                let phases = phases(&setup, CONNECTOR).await;
                (phases.get("c") == Some(&SyncPhase::Streaming)).then_some(())
            },
        )
        .await;
        setup.sql("UPDATE c SET v = 'later' WHERE id > 150; DELETE FROM c WHERE id <= 5;");
        setup.wait_caught_up(CONNECTOR, &worker).await;
        for table in ["a", "b", "c"] {
            setup.assert_synced(CONNECTOR, "public", table).await;
        }

        // A resync over REST, then one over gRPC: each copies the table again, replacing its
        // rows (one version per key, nothing left of the copy before).
        let (node, grpc) = query_node(&setup);
        let before = synced_tables(&setup, CONNECTOR).await["b"].clone();
        let (status, body) = rest(
            &node,
            reqwest::Method::POST,
            &format!("/v1/connectors/{CONNECTOR}/tables/public.b/resync"),
        )
        .await;
        assert_eq!(status, 202, "{body}");
        let copied = wait_resynced(&setup, CONNECTOR, "b", 1, &worker).await;
        assert!(
            copied.sync.as_ref().and_then(|s| s.copy_seq)
                > before.sync.as_ref().and_then(|s| s.copy_seq),
            "a new copy: {copied:?}"
        );
        let endpoint = format!("http://127.0.0.1:{grpc}");
        let mut client = ConnectorAdminClient::connect(endpoint).await.expect("gRPC");
        let answer = client
            .resync_table(ResyncTableRequest {
                name: CONNECTOR.into(),
                table: "public.b".into(),
            })
            .await
            .expect("resync over gRPC");
        assert_eq!(answer.into_inner().request, 2);
        wait_resynced(&setup, CONNECTOR, "b", 2, &worker).await;
        setup.wait_caught_up(CONNECTOR, &worker).await;
        setup.assert_synced(CONNECTOR, "public", "b").await;
        let b = TableRef::new(CONNECTOR, "public", "b");
        let versions = setup.kyma_versions(&b).await;
        assert_eq!(
            versions, 500,
            "a resync replaces the table's rows: one version per key"
        );

        // An unknown table is refused, naming the field.
        let (status, body) = rest(
            &node,
            reqwest::Method::POST,
            &format!("/v1/connectors/{CONNECTOR}/tables/public.nope/resync"),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("\"field\":\"table\""), "{body}");
    });
}

/// Waits until `table`'s sync state has served `request` resyncs (and is streaming).
async fn wait_resynced(
    setup: &SyncSetup<'_>,
    connector: &str,
    table: &str,
    request: u64,
    worker: &Kyma,
) -> TableState {
    poll(
        &format!("resync {request} of {table} is served"),
        Duration::from_secs(60),
        || worker.log(),
        || async {
            let state = synced_tables(setup, connector).await.remove(table)?;
            let sync = state.sync.as_ref()?;
            (sync.resyncs >= request && sync.phase == SyncPhase::Streaming).then_some(state)
        },
    )
    .await
}

#[test]
fn a_truncate_empties_only_the_table_of_its_schema() {
    const CONNECTOR: &str = "pg_truncate";
    runtime().block_on(async {
        let setup = SyncSetup::new("pgtruncate").await;
        setup.sql(
            "CREATE SCHEMA one; CREATE SCHEMA two;
             CREATE TABLE one.t (id int PRIMARY KEY, v text);
             CREATE TABLE two.t (id int PRIMARY KEY, v text);
             INSERT INTO one.t SELECT i, 'one' FROM generate_series(1, 50) i;
             INSERT INTO two.t SELECT i, 'two' FROM generate_series(1, 50) i;",
        );
        let worker = setup.worker("w-1");
        setup.register(CONNECTOR).await;
        setup.wait_caught_up(CONNECTOR, &worker).await;
        setup.sql("TRUNCATE two.t; INSERT INTO two.t VALUES (7, 'after');");
        setup.wait_caught_up(CONNECTOR, &worker).await;
        setup.assert_synced(CONNECTOR, "one", "t").await;
        setup.assert_synced(CONNECTOR, "two", "t").await;
        let one = setup
            .kyma_rows(&TableRef::new(CONNECTOR, "one", "t"))
            .await
            .0;
        assert_eq!(one.len(), 50, "the other schema's table kept its rows");
    });
}

#[test]
fn a_worker_frozen_before_it_prepares_the_slot_cannot_make_the_new_owner_skip_a_transaction() {
    const CONNECTOR: &str = "pg_frozen";
    runtime().block_on(async {
        let setup = SyncSetup::new("pgfrozen").await;
        setup.sql(
            "CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL);
             INSERT INTO accounts SELECT i, 100 FROM generate_series(1, 1000) i;",
        );
        // A lock on the table holds the first worker in its publication step, just before
        // it would drop and create the replication slot.
        let locker = connect_source(&setup.source_url()).await.expect("connect");
        locker
            .batch_execute("BEGIN; LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE")
            .await
            .expect("lock");
        setup.register(CONNECTOR).await;
        let stale = setup.worker("w-1");
        let waiting = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' \
               AND backend_type = 'client backend' AND wait_event_type = 'Lock' \
               AND query LIKE 'CREATE PUBLICATION%'",
            setup.database
        );
        poll(
            "w-1 waits on the lock in its publication step",
            Duration::from_secs(30),
            || stale.log(),
            || async { (setup.sql(&waiting) == "1").then_some(()) },
        )
        .await;
        stale.signal("STOP");
        assert_eq!(
            setup.sql(&waiting),
            "1",
            "w-1 is frozen while it waits in its publication step"
        );
        locker.batch_execute("COMMIT").await.expect("unlock");

        // Its lease lapses; another worker claims the connector, snapshots and streams.
        let fresh = setup.worker("w-2");
        setup.wait_caught_up(CONNECTOR, &fresh).await;
        let state = setup.catalog.connector(CONNECTOR).await.expect("connector");
        assert_eq!(
            state
                .holder
                .as_ref()
                .map(|h| (h.worker_id.as_str(), h.epoch)),
            Some(("w-2", 2)),
            "{state:?}"
        );
        let slot = state
            .cursor
            .as_ref()
            .and_then(|c| c.value.source_id.clone());
        setup.sql("UPDATE accounts SET balance = balance + 1 WHERE id <= 100;");
        setup.wait_caught_up(CONNECTOR, &fresh).await;

        // Woken, the first worker goes on from where it froze: its next destructive step is
        // refused, so the new owner's slot stays, and no transaction is skipped.
        stale.signal("CONT");
        poll(
            "the woken worker is fenced",
            Duration::from_secs(30),
            || stale.log(),
            || async { stale.log().contains("fenced").then_some(()) },
        )
        .await;
        eprintln!("the woken worker's log:\n{}", stale.log());
        for round in 0..5 {
            setup.sql(&format!(
                "UPDATE accounts SET balance = balance - 1 WHERE id % 5 = {round};
                 INSERT INTO accounts VALUES ({}, {round});",
                2000 + round
            ));
        }
        setup.wait_caught_up(CONNECTOR, &fresh).await;
        setup.assert_synced(CONNECTOR, "public", "accounts").await;
        let state = setup.catalog.connector(CONNECTOR).await.expect("connector");
        assert_eq!(
            state
                .cursor
                .as_ref()
                .and_then(|c| c.value.source_id.clone()),
            slot,
            "the slot the new owner created is the one it streams from"
        );
        assert_eq!(state.status.last_error, None, "{:?}", state.status);
        assert!(
            !stale.log().contains("creating replication slot"),
            "the frozen worker never created a slot:\n{}",
            stale.log()
        );
    });
}

#[test]
fn a_worker_killed_in_a_multi_table_snapshot_resumes_without_copying_the_done_tables_again() {
    const CONNECTOR: &str = "pg_resume_copy";
    const TABLES: usize = 12;
    runtime().block_on(async {
        let setup = SyncSetup::new("pgresumecopy").await;
        setup.sql(&format!(
            "DO $$ BEGIN FOR i IN 1..{TABLES} LOOP
               EXECUTE format('CREATE TABLE t%s (id int PRIMARY KEY, v text, n float8)', lpad(i::text, 2, '0'));
               EXECUTE format('INSERT INTO t%s SELECT g, md5(g::text), g / 7.0 FROM generate_series(1, 60000) g',
                              lpad(i::text, 2, '0'));
             END LOOP; END $$;"
        ));
        setup.register(CONNECTOR).await;
        let mut first = setup.worker("w-1");
        let done = poll(
            "some tables are copied and some are not",
            Duration::from_secs(120),
            || first.log(),
            || async {
                let tables = synced_tables(&setup, CONNECTOR).await;
                let done: BTreeMap<String, u64> = tables
                    .iter()
                    .filter_map(|(name, t)| {
                        let sync = t.sync.as_ref()?;
                        (sync.phase == SyncPhase::Streaming).then_some((name.clone(), sync.copy_seq?))
                    })
                    .collect();
                (done.len() >= 2 && done.len() < TABLES).then_some(done)
            },
        )
        .await;
        first.crash();
        let after_kill = synced_tables(&setup, CONNECTOR).await;
        let done: BTreeMap<String, u64> = done
            .into_iter()
            .chain(after_kill.iter().filter_map(|(name, t)| {
                let sync = t.sync.as_ref()?;
                (sync.phase == SyncPhase::Streaming).then_some((name.clone(), sync.copy_seq?))
            }))
            .collect();
        assert!(done.len() < TABLES, "the kill landed before the last table was copied");

        let second = setup.worker("w-2");
        setup.wait_caught_up(CONNECTOR, &second).await;
        let tables = synced_tables(&setup, CONNECTOR).await;
        for (name, seq) in &done {
            assert_eq!(
                tables[name].sync.as_ref().and_then(|s| s.copy_seq),
                Some(*seq),
                "{name} was copied before the kill and not again"
            );
        }
        assert_eq!(
            second.log().matches("table copied").count(),
            TABLES - done.len(),
            "the second worker copied only the tables still pending:\n{}",
            second.log()
        );
        for name in tables.keys() {
            setup.assert_synced(CONNECTOR, "public", name).await;
        }
    });
}

/// Registers `connector` over one small table and waits until a worker streams it.
async fn streaming_one_table(setup: &SyncSetup<'_>, connector: &str) -> Kyma {
    setup.sql(
        "CREATE TABLE t (id int PRIMARY KEY);
         INSERT INTO t SELECT generate_series(1, 10);",
    );
    let worker = setup.worker("w-1");
    setup.register(connector).await;
    setup.wait_caught_up(connector, &worker).await;
    worker
}

/// SQL counting `connector`'s replication slot and publication at the source (0 to 2).
fn source_objects(connector: &str) -> String {
    let names = SyncNames::of(connector);
    format!(
        "SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{}')
              + (SELECT count(*) FROM pg_publication WHERE pubname = '{}')",
        names.slot, names.publication
    )
}

#[test]
fn deleting_a_running_connector_right_after_its_snapshot_drops_its_slot_and_publication() {
    const CONNECTOR: &str = "pg_running_delete";
    runtime().block_on(async {
        let setup = SyncSetup::new("pgrunningdelete").await;
        let worker = streaming_one_table(&setup, CONNECTOR).await;
        let objects = source_objects(CONNECTOR);
        assert_eq!(
            setup.sql(&objects),
            "2",
            "the slot and the publication exist"
        );
        // Deleted from the catalog while the worker streams it: whether the worker sees the
        // deletion or its fenced task ends first, the source's objects go.
        setup
            .catalog
            .delete_connector(CONNECTOR)
            .await
            .expect("delete");
        poll(
            "the worker tears the deleted connector's slot and publication down",
            Duration::from_secs(30),
            || worker.log(),
            || async { (setup.sql(&objects) == "0").then_some(()) },
        )
        .await;
        assert!(
            worker
                .log()
                .contains("tore the deleted connector's source objects down"),
            "{}",
            worker.log()
        );
    });
}

#[test]
fn deleting_a_paused_connector_drops_its_slot_and_publication() {
    const CONNECTOR: &str = "pg_paused_delete";
    runtime().block_on(async {
        let setup = SyncSetup::new("pgpauseddelete").await;
        let worker = streaming_one_table(&setup, CONNECTOR).await;
        let (node, _) = query_node(&setup);
        let (status, body) = rest(
            &node,
            reqwest::Method::POST,
            &format!("/v1/connectors/{CONNECTOR}/pause"),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        poll(
            "the worker lets the paused connector go",
            Duration::from_secs(30),
            || worker.log(),
            || async {
                let state = setup.catalog.connector(CONNECTOR).await.ok()?;
                state.holder.is_none().then_some(())
            },
        )
        .await;
        let objects = source_objects(CONNECTOR);
        assert_eq!(
            setup.sql(&objects),
            "2",
            "the paused connector keeps its slot"
        );

        let (status, body) = rest(
            &node,
            reqwest::Method::DELETE,
            &format!("/v1/connectors/{CONNECTOR}"),
        )
        .await;
        assert_eq!(status, 204, "{body}");
        assert_eq!(
            setup.sql(&objects),
            "0",
            "the slot and the publication are gone with the connector"
        );
    });
}

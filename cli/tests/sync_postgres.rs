//! Postgres-only sync tests: a `kyma cdc-worker` process syncing a real Postgres into S3
//! under an etcd catalog, checked row by row against the source, on what only Postgres has:
//! its column types (numeric, real, date, arrays, jsonb, …) through the snapshot (COPY) and
//! the stream (pgoutput), keyless tables, `ALTER TABLE … ADD COLUMN`, unchanged TOAST
//! values, a million-row snapshot under writes. The source-neutral end-to-end tests (every
//! kind of change, a worker killed mid-stream) run for every source in `sync_suite.rs`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::runtime;
use common::sync::SyncSetup;
use kyma_catalog::{TablePhase, TableRef};

#[test]
fn postgres_types_sync_while_a_keyless_table_is_refused_and_an_added_column_widens_the_table() {
    runtime().block_on(async {
        let setup = SyncSetup::new("pgsync").await;
        setup.sql(
            "CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL, score numeric(10,2), \
                 ratio real, seen timestamptz, born date, tags text[], doc jsonb, ok bool);
             CREATE TABLE orders (user_id int, n int, amount float8, note varchar(20), PRIMARY KEY (user_id, n));
             CREATE TABLE no_key (a int, b text);
             INSERT INTO users SELECT i, 'user' || i || '@example.com', i * 1.25, i / 3.0,
                 '2024-01-01 00:00:00+00'::timestamptz + i * interval '1 minute',
                 '2020-02-29'::date + i, ARRAY['a' || i, 'b'], jsonb_build_object('i', i, 'n', i * 0.5),
                 i % 2 = 0
               FROM generate_series(1, 2000) i;
             INSERT INTO orders SELECT i % 100, i, i * 0.1, 'note:' || i FROM generate_series(1, 3000) i;
             INSERT INTO no_key VALUES (1, 'x');",
        );
        let mut worker = setup.worker("w-1");
        setup.register("pg_src").await;
        setup.wait_caught_up("pg_src", &worker).await;
        setup.assert_synced("pg_src", "public", "users").await;
        setup.assert_synced("pg_src", "public", "orders").await;
        let metrics = worker.wait_for_200("/metrics");
        assert!(
            metrics.contains("kyma_sync_snapshot_rows_total{connector=\"pg_src\"} 5000"),
            "the worker counts the snapshot's 2,000 + 3,000 rows:\n{metrics}"
        );

        let status = setup.catalog.connector("pg_src").await.expect("connector").status;
        let no_key = &status.tables["public.no_key"];
        assert_eq!(no_key.phase, TablePhase::Failed, "{status:?}");
        assert_eq!(no_key.last_error.as_deref(), Some("table has no primary key"));
        assert_eq!(status.tables["public.users"].phase, TablePhase::Streaming, "{status:?}");
        assert!(
            setup
                .catalog
                .table(&TableRef::new("pg_src", "public", "no_key"))
                .await
                .is_err(),
            "a table without a primary key is not synced"
        );

        // Changes of every column type through the stream: inserts, updates, deletes, a key
        // change, a multi-table transaction, NULLs.
        setup.sql(
            "INSERT INTO users VALUES (5001, 'new@example.com', NULL, NULL, NULL, NULL, NULL, NULL, NULL);
             UPDATE users SET email = 'changed' || id, score = score + 1 WHERE id % 7 = 0;
             DELETE FROM users WHERE id % 11 = 0;
             UPDATE orders SET n = n + 100000 WHERE user_id = 3;
             BEGIN;
               INSERT INTO orders VALUES (5001, 1, 9.5, 'both');
               UPDATE users SET doc = '{\"nested\": [1, 2, {\"x\": null}]}' WHERE id = 5001;
               DELETE FROM orders WHERE user_id = 4;
             COMMIT;
             INSERT INTO users VALUES (11, 'back again', 1, 1, now(), now(), '{}', 'null', true);",
        );
        setup.wait_caught_up("pg_src", &worker).await;
        setup.assert_synced("pg_src", "public", "users").await;
        setup.assert_synced("pg_src", "public", "orders").await;

        // ADD COLUMN mid-stream widens the kyma table.
        setup.sql(
            "ALTER TABLE users ADD COLUMN plan text;
             UPDATE users SET plan = 'pro' WHERE id <= 10;
             INSERT INTO users (id, email, plan) VALUES (6000, 'plan@example.com', 'free');",
        );
        setup.wait_caught_up("pg_src", &worker).await;
        setup.assert_synced("pg_src", "public", "users").await;
        worker.assert_counts_streamed_rows("pg_src");
        let schema = setup
            .catalog
            .table(&TableRef::new("pg_src", "public", "users"))
            .await
            .expect("users")
            .schema
            .value;
        assert!(schema.column("plan").is_some(), "{schema:?}");
    });
}

#[test]
fn updates_that_leave_toast_values_unchanged_keep_the_source_value() {
    runtime().block_on(async {
        let setup = SyncSetup::new("pgtoast").await;
        // EXTERNAL storage keeps the 8 kB bodies out of line and uncompressed, so an update
        // that does not touch them sends them as "unchanged". `docs_full` has REPLICA
        // IDENTITY FULL: its old rows carry the values.
        setup.sql(
            "CREATE TABLE docs (id int PRIMARY KEY, title text, body text, extra jsonb);
             ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
             ALTER TABLE docs ALTER COLUMN extra SET STORAGE EXTERNAL;
             CREATE TABLE docs_full (id int PRIMARY KEY, title text, body text);
             ALTER TABLE docs_full ALTER COLUMN body SET STORAGE EXTERNAL;
             ALTER TABLE docs_full REPLICA IDENTITY FULL;
             INSERT INTO docs SELECT i, 'v1', repeat(md5(i::text), 256),
                 jsonb_build_object('pad', repeat(md5((i * 7)::text), 200))
               FROM generate_series(1, 40) i;
             INSERT INTO docs_full SELECT i, 'v1', repeat(md5(i::text), 256)
               FROM generate_series(1, 10) i;",
        );
        let worker = setup.worker("w-1");
        setup.register("pg_toast").await;
        setup.wait_caught_up("pg_toast", &worker).await;

        // The previous version is in the snapshot (committed, compacted).
        setup.sql(
            "UPDATE docs SET title = 'v2' WHERE id <= 20;
             UPDATE docs_full SET title = 'v2' WHERE id <= 5;",
        );
        setup.wait_caught_up("pg_toast", &worker).await;
        assert_streaming(&setup, "pg_toast", &["public.docs", "public.docs_full"]).await;
        setup.assert_synced("pg_toast", "public", "docs").await;
        setup.assert_synced("pg_toast", "public", "docs_full").await;

        // In one transaction: the previous version in the same batch (an insert, then a
        // chain of updates), a key change carrying the value to a new key, and an update
        // that changes one TOAST column and leaves the other.
        setup.sql(
            "BEGIN;
               INSERT INTO docs VALUES (100, 'new', repeat('n', 9000), '{\"big\": true}');
               UPDATE docs SET title = 'new-2' WHERE id = 100;
               UPDATE docs SET title = 'new-3' WHERE id = 100;
               UPDATE docs SET id = 1005, title = 'moved' WHERE id = 5;
               UPDATE docs SET body = repeat('b', 9000) WHERE id = 6;
               UPDATE docs SET title = 'v3' WHERE id BETWEEN 1 AND 10;
             COMMIT;
             UPDATE docs SET title = 'v4' WHERE id = 1005;",
        );
        setup.wait_caught_up("pg_toast", &worker).await;
        setup.assert_synced("pg_toast", "public", "docs").await;

        assert_streaming(&setup, "pg_toast", &["public.docs", "public.docs_full"]).await;
        let moved = setup
            .kyma_rows(&TableRef::new("pg_toast", "public", "docs"))
            .await
            .0
            .remove("1005")
            .expect("the moved key");
        assert_eq!(
            moved["body"].len(),
            32 * 256,
            "the body followed the key change"
        );
    });
}

/// Asserts that `tables` of `connector` are streaming without an error.
async fn assert_streaming(setup: &SyncSetup<'_>, connector: &str, tables: &[&str]) {
    let status = setup
        .catalog
        .connector(connector)
        .await
        .expect("connector")
        .status;
    for table in tables {
        assert_eq!(
            status.tables[*table].phase,
            TablePhase::Streaming,
            "{status:?}"
        );
        assert_eq!(status.tables[*table].last_error, None, "{status:?}");
    }
}

#[test]
fn a_million_row_snapshot_under_concurrent_writes_shows_progress_and_loses_nothing() {
    runtime().block_on(async {
        let setup = SyncSetup::new("pgbig").await;
        setup.sql(
            "CREATE TABLE big (id bigint PRIMARY KEY, v int NOT NULL, s text);
             INSERT INTO big SELECT i, 0, 'row-' || i FROM generate_series(1, 1000000) i;
             ANALYZE big;",
        );
        let worker = setup.worker("w-1");
        // Writes run on their own thread, one small transaction after another, until the
        // snapshot is committed.
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let writes = {
            let (stop, rounds, database) = (stop.clone(), rounds.clone(), setup.database.clone());
            std::thread::spawn(move || {
                let postgres = kyma_test_harness::Postgres::shared();
                while !stop.load(Ordering::SeqCst) {
                    let r = rounds.load(Ordering::SeqCst);
                    postgres
                        .psql(
                            &database,
                            &format!(
                                "UPDATE big SET v = v + 1 WHERE id % 1000 = {m};
                                 DELETE FROM big WHERE id = {gone};
                                 INSERT INTO big VALUES ({new}, {r}, 'written during the snapshot');",
                                m = r % 1000,
                                gone = 1_000_000 - r,
                                new = 2_000_000 + r,
                            ),
                        )
                        .expect("a write during the snapshot");
                    rounds.fetch_add(1, Ordering::SeqCst);
                }
            })
        };
        setup.register("pg_big").await;

        // Poll the status while the snapshot runs: it reports rows done of rows estimated.
        let mut progress = Vec::new();
        let mut rounds_at_start = None;
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let state = setup.catalog.connector("pg_big").await.expect("connector");
            if state.cursor.is_some() {
                break;
            }
            if let Some(TablePhase::Snapshotting { rows_done, rows_estimated }) =
                state.status.tables.get("public.big").map(|t| t.phase.clone())
            {
                rounds_at_start.get_or_insert(rounds.load(Ordering::SeqCst));
                progress.push((rows_done, rows_estimated));
            }
            assert!(Instant::now() < deadline, "the snapshot did not finish:\n{}", worker.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let rounds_at_commit = rounds.load(Ordering::SeqCst);
        stop.store(true, Ordering::SeqCst);
        writes.join().expect("the writer thread");

        assert!(
            progress
                .iter()
                .any(|&(done, estimated)| done > 0 && done < 1_000_000 && estimated >= 900_000),
            "the status showed the snapshot part-way, with the table's estimate: {progress:?}"
        );
        let started = rounds_at_start.expect("the snapshot phase was visible in the status");
        assert!(
            rounds_at_commit > started,
            "source transactions committed while the snapshot ran ({started} before, {rounds_at_commit} at its commit)"
        );
        setup.wait_caught_up("pg_big", &worker).await;
        setup.assert_synced("pg_big", "public", "big").await;
    });
}

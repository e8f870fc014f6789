//! Postgres sync end to end: a `kyma cdc-worker` process syncing a real Postgres into S3
//! under an etcd catalog, checked row by row against the source.

mod common;

use common::sync::SyncSetup;
use kyma_catalog::{TablePhase, TableRef};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn snapshot_then_stream_keeps_every_table_equal_to_the_source() {
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
        let worker = setup.worker("w-1");
        setup.register("pg_src").await;
        setup.wait_caught_up("pg_src", &worker).await;
        setup.assert_synced("pg_src", "public", "users").await;
        setup.assert_synced("pg_src", "public", "orders").await;

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

        // Inserts, updates, deletes, a key change, a multi-table transaction, NULLs.
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
fn a_worker_killed_mid_stream_is_replaced_without_losing_or_duplicating_a_row() {
    runtime().block_on(async {
        let setup = SyncSetup::new("pgkill").await;
        setup.sql(
            "CREATE TABLE events (id bigint PRIMARY KEY, v int NOT NULL, body text);
             INSERT INTO events SELECT i, 0, repeat('x', 50) FROM generate_series(1, 5000) i;",
        );
        let mut first = setup.worker("w-1");
        setup.register("pg_kill").await;
        setup.wait_caught_up("pg_kill", &first).await;
        // A workload runs while the worker is killed with SIGKILL and a second one takes
        // over from the committed cursor at a higher epoch.
        for round in 0..6 {
            setup.sql(&format!(
                "UPDATE events SET v = v + 1 WHERE id % 6 = {round};
                 DELETE FROM events WHERE id % 97 = {round};
                 INSERT INTO events SELECT 100000 + {round} * 1000 + i, {round}, 'r' FROM generate_series(1, 200) i;"
            ));
            if round == 2 {
                first.child.kill().expect("SIGKILL the worker");
                first.child.wait().expect("reap");
                first = setup.worker("w-2");
            }
        }
        setup.wait_caught_up("pg_kill", &first).await;
        setup.assert_synced("pg_kill", "public", "events").await;
        let state = setup.catalog.connector("pg_kill").await.expect("connector");
        assert!(state.epoch >= 2, "the second worker claimed at a higher epoch: {state:?}");
    });
}

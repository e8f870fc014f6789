//! MariaDB-only sync tests: a `kyma cdc-worker` process syncing a real MariaDB 10.11 into S3
//! under an etcd catalog, on what only MySQL-family sources have: their column types through
//! the snapshot (binary protocol) and the binlog (row events), and DDL in the binlog. The
//! source-neutral suites (every kind of change, kills, restarts, fencing) run for MariaDB in
//! `sync_suite.rs` and `sync_faults.rs`.

mod common;

use std::collections::BTreeMap;

use common::source::mariadb::MariaDbSource;
use common::source::{SourceFixture, on_shared_source};
use common::sync::poll;
use kyma_catalog::{TablePhase, TableRef};

/// Every row of the MySQL mapping table (seeds/schema-mappings.txt), one column each.
const TYPES_TABLE: &str = "CREATE TABLE types (
    id INT PRIMARY KEY,
    b1 TINYINT(1), ti TINYINT, su SMALLINT UNSIGNED, mi MEDIUMINT, i INT, iu INT UNSIGNED,
    bi BIGINT, bu BIGINT UNSIGNED,
    d_small DECIMAL(10,2), d_big DECIMAL(30,4), f FLOAT, dbl DOUBLE,
    bit1 BIT(1), bit5 BIT(5),
    dt DATE, dtt DATETIME(6), ts TIMESTAMP(3) NULL DEFAULT NULL, tm TIME(6), yr YEAR,
    c CHAR(5), vc VARCHAR(20), tx TEXT, lat VARCHAR(10) CHARACTER SET latin1,
    en ENUM('small', 'it''s', 'large'), st SET('a', 'b', 'c'),
    bn BINARY(4), vb VARBINARY(8), bl BLOB,
    js JSON, geo GEOMETRY
) ENGINE=InnoDB";

/// The values of a full row (after `id`), in the column order of [`TYPES_TABLE`].
const FULL_ROW: &str = "1, -128, 65535, -8388608, -2147483648, 4294967295, \
    -9223372036854775808, 18446744073709551615, \
    12345678.91, -12345678901234567890.1234, 1.5, 0.1, \
    b'1', b'10101', \
    '2024-02-29', '2024-01-02 03:04:05.678901', '2038-01-19 03:14:07.123', '-01:02:03.500000', 2024, \
    'ab', 'Grüße', CONCAT('line1', CHAR(10), 'line2'), 'café', \
    'it''s', 'a,c', \
    'ab', x'00ff', 'hello', \
    '{\"a\": [1, 2.5, null, \"x\"]}', ST_GeomFromText('POINT(1 2)')";

/// A row of edge values: false, zero dates and year, the empty set.
const EDGE_ROW: &str = "0, 0, 0, 0, 0, 0, 0, 5, \
    0, 0, 0, 0, \
    b'0', b'0', \
    '0000-00-00', '0000-00-00 00:00:00', '1970-01-01 00:00:01', '838:59:59', 0, \
    '', '', '', '', \
    'small', '', \
    '', '', '', \
    'null', ST_GeomFromText('LINESTRING(0 0, 1 1.5)')";

/// What kyma must hold for [`FULL_ROW`] and [`EDGE_ROW`], column by column, as kyma displays
/// its values (dynamic values are checked separately: they display as CBOR).
fn expected(row: &str) -> BTreeMap<&'static str, &'static str> {
    let full = [
        ("b1", "true"),
        ("ti", "-128"),
        ("su", "65535"),
        ("mi", "-8388608"),
        ("i", "-2147483648"),
        ("iu", "4294967295"),
        ("bi", "-9223372036854775808"),
        ("bu", "18446744073709551615"),
        ("d_small", "12345678.91"),
        ("d_big", "-12345678901234567890.1234"),
        ("f", "1.5"),
        ("dbl", "0.1"),
        ("bit1", "true"),
        ("dt", "2024-02-29T00:00:00Z"),
        ("dtt", "2024-01-02T03:04:05.678901Z"),
        ("ts", "2038-01-19T03:14:07.123Z"),
        ("tm", "1969-12-31T22:57:56.500Z"),
        ("yr", "2024-01-01T00:00:00Z"),
        ("c", "ab"),
        ("vc", "Grüße"),
        ("tx", "line1\nline2"),
        ("lat", "café"),
        ("en", "it's"),
        ("st", "a,c"),
        ("bn", "YWIAAA=="),
        ("vb", "AP8="),
        ("bl", "aGVsbG8="),
        ("geo", "POINT(1 2)"),
    ];
    let edge = [
        ("b1", "false"),
        ("ti", "0"),
        ("bu", "5"),
        ("d_small", "0.0"),
        ("d_big", "0.0000"),
        ("bit1", "false"),
        ("dt", "NULL"),
        ("dtt", "NULL"),
        ("ts", "1970-01-01T00:00:01Z"),
        ("tm", "1970-02-04T22:59:59Z"),
        ("yr", "NULL"),
        ("c", ""),
        ("en", "small"),
        ("st", ""),
        ("bn", "AAAAAA=="),
        ("vb", ""),
        ("geo", "LINESTRING(0 0,1 1.5)"),
    ];
    match row {
        "full" => full.into_iter().collect(),
        _ => edge.into_iter().collect(),
    }
}

/// Asserts that `rows[key]` holds `expected`, naming the key.
fn assert_row(rows: &common::sync::Rows, key: &str, expected: &BTreeMap<&str, &str>) {
    let row = rows
        .get(key)
        .unwrap_or_else(|| panic!("kyma has no row {key}: {:?}", rows.keys()));
    for (column, value) in expected {
        assert_eq!(
            row.get(*column).map(String::as_str),
            Some(*value),
            "row {key} column {column}: {row:?}"
        );
    }
}

#[test]
fn every_mapped_type_reads_the_same_through_the_snapshot_and_the_binlog() {
    on_shared_source::<MariaDbSource>("mytypes", async |source, kyma| {
        source.sql(&format!(
            "SET time_zone = '+00:00'; {TYPES_TABLE};
             INSERT INTO types VALUES (1, {FULL_ROW}), (2, {EDGE_ROW});
             INSERT INTO types (id) VALUES (3);"
        ));
        let worker = kyma.worker("w-1");
        kyma.register_source(source, "my_types").await;
        kyma.wait_caught_up_with(source, "my_types", &worker).await;

        // The same values again, through the binlog: inserted, and set by an update.
        source.sql(&format!(
            "SET time_zone = '+00:00';
             INSERT INTO types VALUES (1001, {FULL_ROW}), (1002, {EDGE_ROW});
             INSERT INTO types (id) VALUES (1003), (1004);
             UPDATE types SET id = 1005 WHERE id = 1004;
             INSERT INTO types (id) VALUES (1006);
             UPDATE types t JOIN types s ON s.id = 1 SET
               t.b1 = s.b1, t.ti = s.ti, t.su = s.su, t.mi = s.mi, t.i = s.i, t.iu = s.iu,
               t.bi = s.bi, t.bu = s.bu, t.d_small = s.d_small, t.d_big = s.d_big, t.f = s.f,
               t.dbl = s.dbl, t.bit1 = s.bit1, t.bit5 = s.bit5, t.dt = s.dt, t.dtt = s.dtt,
               t.ts = s.ts, t.tm = s.tm, t.yr = s.yr, t.c = s.c, t.vc = s.vc, t.tx = s.tx,
               t.lat = s.lat, t.en = s.en, t.st = s.st, t.bn = s.bn, t.vb = s.vb, t.bl = s.bl,
               t.js = s.js, t.geo = s.geo
             WHERE t.id = 1006;"
        ));
        kyma.wait_caught_up_with(source, "my_types", &worker).await;

        let table = TableRef::new("my_types", source.database(), "types");
        let (rows, duplicates) = kyma.kyma_rows(&table).await;
        assert!(duplicates.is_empty(), "{duplicates:?}");
        for key in ["1", "1001", "1006"] {
            assert_row(&rows, key, &expected("full"));
        }
        for key in ["2", "1002"] {
            assert_row(&rows, key, &expected("edge"));
        }
        // Snapshot and binlog agree on every column, dynamic ones included.
        let without_id = |key: &str| {
            let mut row = rows[key].clone();
            row.remove("id");
            row
        };
        assert_eq!(without_id("1"), without_id("1001"), "full row");
        assert_eq!(without_id("1"), without_id("1006"), "full row, by update");
        assert_eq!(without_id("2"), without_id("1002"), "edge row");
        assert_eq!(without_id("3"), without_id("1003"), "NULL row");
        assert!(
            rows["3"]
                .iter()
                .filter(|(c, _)| *c != "id")
                .all(|(_, v)| v == "NULL"),
            "{:?}",
            rows["3"]
        );
        assert!(!rows.contains_key("1004") && rows.contains_key("1005"));
        let json = kyma_table::dynamic::encode(&kyma_table::dynamic::from_json(
            &serde_json::json!({"a": [1, 2.5, null, "x"]}),
        ));
        let hex: String = json.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(rows["1"]["js"], hex, "json as dynamic");
        let bits = kyma_table::dynamic::encode(&ciborium::Value::Integer(21.into()));
        let hex: String = bits.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(rows["1"]["bit5"], hex, "bit(5) as a dynamic integer");

        // And the source agrees, row by row.
        kyma.assert_rows(
            "my_types",
            source.database(),
            "types",
            &source.rows_of("types").await,
        )
        .await;
        let status = kyma
            .catalog
            .connector("my_types")
            .await
            .expect("connector")
            .status;
        let warnings = &status.tables[&format!("{}.types", source.database())].warnings;
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("`bu`") && w.contains("long range")),
            "bigint unsigned read as string says so: {warnings:?}"
        );
    });
}

#[test]
fn a_keyless_table_is_refused_and_ddl_widens_truncates_or_copies_a_table_again() {
    on_shared_source::<MariaDbSource>("myddl", async |source, kyma| {
        source.sql(
            "CREATE TABLE users (id INT PRIMARY KEY, email VARCHAR(40), score DECIMAL(10,2));
             CREATE TABLE events (id INT PRIMARY KEY, kind VARCHAR(10));
             CREATE TABLE no_key (a INT, b TEXT);
             INSERT INTO users VALUES (1, 'a@x', 1.25), (2, 'b@x', 2.55), (3, NULL, NULL);
             INSERT INTO events VALUES (1, 'click'), (2, 'view');
             INSERT INTO no_key VALUES (1, 'x');",
        );
        let worker = kyma.worker("w-1");
        kyma.register_source(source, "my_ddl").await;
        kyma.wait_caught_up_with(source, "my_ddl", &worker).await;
        let db = source.database();
        let status = kyma
            .catalog
            .connector("my_ddl")
            .await
            .expect("connector")
            .status;
        let no_key = &status.tables[&format!("{db}.no_key")];
        assert_eq!(no_key.phase, TablePhase::Failed, "{status:?}");
        assert_eq!(
            no_key.last_error.as_deref(),
            Some("table has no primary key")
        );

        // A nullable column added at the end widens the kyma table, in the stream.
        source.sql(
            "ALTER TABLE users ADD COLUMN plan VARCHAR(10);
             UPDATE users SET plan = 'pro' WHERE id = 1;
             INSERT INTO users VALUES (4, 'd@x', 4, 'free');",
        );
        kyma.wait_caught_up_with(source, "my_ddl", &worker).await;
        kyma.assert_rows("my_ddl", db, "users", &source.rows_of("users").await)
            .await;
        let users = TableRef::new("my_ddl", db, "users");
        let schema = kyma
            .catalog
            .table(&users)
            .await
            .expect("users")
            .schema
            .value;
        assert!(schema.column("plan").is_some(), "{schema:?}");

        // A type change rewrites the existing rows at the source without row events (2.55
        // rounds to 2.6): the table is copied again, and equals the source.
        let copies_before = kyma.catalog.table(&users).await.expect("users").sync;
        source.sql(
            "ALTER TABLE users MODIFY score DECIMAL(10,1);
             INSERT INTO users VALUES (5, 'e@x', 5.5, NULL);",
        );
        kyma.wait_caught_up_with(source, "my_ddl", &worker).await;
        let source_users = source.rows_of("users").await;
        assert_eq!(source_users["2"]["score"], "2.6", "the source rounded");
        kyma.assert_rows("my_ddl", db, "users", &source_users).await;
        let copies_after = kyma.catalog.table(&users).await.expect("users").sync;
        assert_ne!(
            copies_before.map(|s| s.since),
            copies_after.map(|s| s.since),
            "the table was copied again under a new snapshot"
        );

        // TRUNCATE empties only its table; the other keeps streaming.
        source.sql(
            "TRUNCATE TABLE events;
             INSERT INTO events VALUES (3, 'after');
             INSERT INTO users VALUES (6, 'f@x', 6, NULL);",
        );
        kyma.wait_caught_up_with(source, "my_ddl", &worker).await;
        for table in ["users", "events"] {
            kyma.assert_rows("my_ddl", db, table, &source.rows_of(table).await)
                .await;
        }
        assert_eq!(source.rows_of("events").await.len(), 1);
    });
}

#[test]
fn a_schema_change_while_no_worker_runs_copies_the_table_again_rather_than_misreading_rows() {
    on_shared_source::<MariaDbSource>("myoffline", async |source, kyma| {
        source.sql(
            "CREATE TABLE orders (id INT PRIMARY KEY, qty INT, note VARCHAR(20));
             INSERT INTO orders VALUES (1, 10, 'a'), (2, 20, 'b');
             CREATE TABLE pairs (id INT PRIMARY KEY, a INT, b INT);
             INSERT INTO pairs VALUES (1, 10, 20);",
        );
        let worker = kyma.worker("w-1");
        kyma.register_source(source, "my_offline").await;
        kyma.wait_caught_up_with(source, "my_offline", &worker)
            .await;
        let orders = TableRef::new("my_offline", source.database(), "orders");
        let copied = kyma.catalog.table(&orders).await.expect("orders").sync;
        worker.terminate();

        // Rows under the old layout, a column dropped (no row events for the rows it
        // rewrites), rows under the new one: the binlog's first rows no longer match the
        // table's definition when the next worker reads them.
        source.sql(
            "INSERT INTO orders VALUES (3, 30, 'c');
             ALTER TABLE orders DROP COLUMN qty;
             INSERT INTO orders VALUES (4, 'd');
             UPDATE orders SET note = 'a2' WHERE id = 1;",
        );
        // Two columns of one type swap names (existing rows change without row events): the
        // binlog's layout (two ints) fits the new definition as well as the old one, so only
        // knowing that the definition was read after the change sends the table to be copied.
        source.sql(
            "INSERT INTO pairs VALUES (2, 30, 40);
             ALTER TABLE pairs CHANGE a c INT;
             ALTER TABLE pairs CHANGE b a INT;
             ALTER TABLE pairs CHANGE c b INT;
             INSERT INTO pairs VALUES (3, 50, 60);",
        );
        let worker = kyma.worker("w-2");
        kyma.wait_caught_up_with(source, "my_offline", &worker)
            .await;
        assert_eq!(
            source.rows_of("pairs").await["1"]["a"],
            "20",
            "the source swapped"
        );
        for table in ["orders", "pairs"] {
            let rows = source.rows_of(table).await;
            kyma.assert_rows("my_offline", source.database(), table, &rows)
                .await;
        }
        let recopied = kyma.catalog.table(&orders).await.expect("orders").sync;
        assert_ne!(
            copied.map(|s| s.since),
            recopied.map(|s| s.since),
            "the table was copied again under a new snapshot"
        );
    });
}

/// Syncs table `t` of `source` under connector `connector` (registered as `body` says), stops
/// the worker, changes `t` and purges the binlogs holding those changes, then starts a worker
/// again (returned).
async fn purge_behind_a_stopped_worker(
    source: &MariaDbSource,
    kyma: &common::sync::Deployment<'_>,
    connector: &str,
    body: serde_json::Value,
) -> common::Kyma {
    source.sql(
        "CREATE TABLE t (id INT PRIMARY KEY);
         INSERT INTO t VALUES (1), (9);",
    );
    let worker = kyma.worker("w-1");
    kyma.create_connector(body).await;
    kyma.wait_caught_up_with(source, connector, &worker).await;
    worker.terminate();
    // While no worker runs, the binlog holding the cursor's position is purged.
    source.sql(
        "INSERT INTO t VALUES (2);
         DELETE FROM t WHERE id = 9;
         FLUSH BINARY LOGS;
         INSERT INTO t VALUES (3);
         FLUSH BINARY LOGS;",
    );
    // MariaDB skips a file a binlog dump thread still reads: the stopped worker's thread
    // ends only once the server notices its connection closed. Purge until only the
    // current file is left.
    poll(
        "the old binlogs are purged",
        std::time::Duration::from_secs(30),
        String::new,
        || async {
            let files =
                source.sql("PURGE BINARY LOGS BEFORE NOW() + INTERVAL 1 DAY; SHOW BINARY LOGS;");
            (files.lines().count() == 1).then_some(())
        },
    )
    .await;
    kyma.worker("w-2")
}

#[test]
fn a_cursor_the_binlog_no_longer_holds_fails_the_connector_naming_the_fix() {
    let Some(source) = <MariaDbSource as SourceFixture>::private("mypurged") else {
        return;
    };
    common::runtime().block_on(async {
        let kyma = common::sync::Deployment::new("mypurged").await;
        let body = source.connector("my_purged");
        let worker = purge_behind_a_stopped_worker(&source, &kyma, "my_purged", body).await;
        let error = poll(
            "the connector shows an error",
            std::time::Duration::from_secs(60),
            || worker.log(),
            || async {
                let state = kyma.catalog.connector("my_purged").await.ok()?;
                state.status.last_error
            },
        )
        .await;
        assert!(
            error.contains("no longer holds")
                && error.contains("resync")
                && error.contains("retention.on_history_lost"),
            "{error}"
        );
    });
}

#[test]
fn a_lost_history_under_the_resnapshot_policy_copies_every_table_again() {
    let Some(source) = <MariaDbSource as SourceFixture>::private("myresnap") else {
        return;
    };
    common::runtime().block_on(async {
        let kyma = common::sync::Deployment::new("myresnap").await;
        let mut body = source.connector("my_resnap");
        body["retention"] = serde_json::json!({ "on_history_lost": "resnapshot" });
        let table = TableRef::new("my_resnap", source.database(), "t");
        let worker = purge_behind_a_stopped_worker(&source, &kyma, "my_resnap", body).await;
        let copied = kyma.catalog.table(&table).await.expect("t").sync;
        let caught_up_and_equal = async || {
            kyma.wait_caught_up_with(&source, "my_resnap", &worker)
                .await;
            kyma.assert_rows(
                "my_resnap",
                source.database(),
                "t",
                &source.rows_of("t").await,
            )
            .await;
        };
        // The purged changes (an insert, a delete, another insert) are in kyma: by the copy.
        caught_up_and_equal().await;
        let recopied = kyma.catalog.table(&table).await.expect("t").sync;
        assert_ne!(
            copied.map(|s| s.since),
            recopied.map(|s| s.since),
            "the table was copied again under a new snapshot"
        );
        let state = kyma.catalog.connector("my_resnap").await.expect("state");
        let warnings = format!("{:?}", state.status.tables);
        assert!(
            warnings.contains("on_history_lost is resnapshot"),
            "{warnings}"
        );
        // And it streams on from the new snapshot.
        source.sql("INSERT INTO t VALUES (4);");
        caught_up_and_equal().await;
    });
}

#[test]
fn binlog_text_in_a_character_set_kyma_does_not_read_fails_its_table_not_the_others() {
    on_shared_source::<MariaDbSource>("mycharset", async |source, kyma| {
        source.sql(
            "CREATE TABLE wide (id INT PRIMARY KEY, name VARCHAR(20) CHARACTER SET utf16);
             CREATE TABLE plain (id INT PRIMARY KEY, name VARCHAR(20));
             INSERT INTO wide VALUES (1, 'snapshot');
             INSERT INTO plain VALUES (1, 'snapshot');",
        );
        let worker = kyma.worker("w-1");
        kyma.register_source(source, "my_charset").await;
        kyma.wait_caught_up_with(source, "my_charset", &worker)
            .await;
        let db = source.database();
        // The snapshot reads it (the server converts to UTF-8); the binlog carries UTF-16.
        kyma.assert_rows("my_charset", db, "wide", &source.rows_of("wide").await)
            .await;

        source.sql(
            "INSERT INTO wide VALUES (2, 'streamed');
             INSERT INTO plain VALUES (2, 'streamed');",
        );
        kyma.wait_caught_up_with(source, "my_charset", &worker)
            .await;
        kyma.assert_rows("my_charset", db, "plain", &source.rows_of("plain").await)
            .await;
        let status = kyma
            .catalog
            .connector("my_charset")
            .await
            .expect("connector")
            .status;
        let wide = &status.tables[&format!("{db}.wide")];
        assert_eq!(wide.phase, TablePhase::Failed, "{status:?}");
        assert!(
            wide.last_error
                .as_deref()
                .is_some_and(|e| e.contains("character set") && e.contains("utf8mb4")),
            "{wide:?}"
        );
    });
}

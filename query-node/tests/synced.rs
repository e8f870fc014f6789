//! Synced tables on the query node (SPEC §3 "Synced tables", §4 modes): a table written as a
//! CDC worker writes it — a compacted base and delta extents holding several versions per
//! key, updates and tombstones of base keys and of delta keys, re-inserts after a delete —
//! read over Flight SQL by name (the current state), with `raw()` (every version) and with
//! `live()` (the source, through federation).

mod common;

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, TimeUnit};
use arrow_flight::sql::client::FlightSqlServiceClient;
use common::{client, fetch, query, schema, standalone_with_storage};
use kyma_catalog::{
    Catalog, CatalogCommit, Column, CommitOutcome, ConnectionSpec, ConnectorMode, ConnectorSpec,
    KymaType, Revision, ScopeSpec, SourceType, TableOrigin, TableRef, TlsMode,
};
use kyma_query_node::GrpcOptions;
use kyma_table::key_index::KeyIndex;
use kyma_table::synced::{ChangeOp, system_columns};
use kyma_table::types::UTC;
use kyma_table::{
    CompactionOptions, CompactionOutcome, ExtentStore, TableWriter, WriteOptions, compact,
};
use kyma_test_harness::{MariaDb, Postgres};
use tonic::transport::Channel;

use ChangeOp::{Delete, Insert, Update};

/// How long the node may take to show a commit.
const VISIBLE_WITHIN: Duration = Duration::from_secs(30);

/// One stored row: a version of the key `id` (`_kyma_pk` is `id` as text).
#[derive(Debug, Clone, Copy)]
struct Version {
    id: i64,
    op: ChangeOp,
    seq: i64,
    name: Option<&'static str>,
    score: Option<i64>,
}

const fn version(
    id: i64,
    op: ChangeOp,
    seq: i64,
    name: Option<&'static str>,
    score: Option<i64>,
) -> Version {
    Version {
        id,
        op,
        seq,
        name,
        score,
    }
}

const fn tombstone(id: i64, seq: i64) -> Version {
    version(id, Delete, seq, None, None)
}

/// The compacted base: one row per key (key 7 a tombstone compaction kept).
const BASE: &[Version] = &[
    version(1, Insert, 0, Some("a"), Some(10)),
    version(2, Insert, 0, Some("b"), Some(20)),
    version(3, Insert, 0, Some("c"), Some(30)),
    version(4, Insert, 0, Some("d"), Some(40)),
    version(5, Insert, 0, Some("e"), Some(50)),
    version(6, Insert, 0, Some("f"), Some(60)),
    tombstone(7, 5),
];

/// The first delta extent.
const DELTA_1: &[Version] = &[
    version(2, Update, 10, Some("b2"), Some(21)),
    tombstone(3, 11),
    version(8, Insert, 12, Some("h"), Some(80)),
    version(9, Insert, 13, Some("i"), Some(90)),
    version(4, Update, 14, Some("d2"), Some(5)),
    // Newer than key 5's version in the second extent: order is `_kyma_seq`, not position.
    version(5, Update, 31, Some("e3"), Some(56)),
];

/// The second delta extent.
const DELTA_2: &[Version] = &[
    version(2, Update, 20, Some("b3"), Some(22)),
    tombstone(8, 21),
    version(3, Insert, 22, Some("c2"), Some(33)),
    version(10, Insert, 23, Some("j"), Some(100)),
    tombstone(10, 24),
    // Stored before the delete it follows.
    version(11, Insert, 26, Some("k"), Some(110)),
    tombstone(11, 25),
    tombstone(6, 27),
    version(5, Update, 30, Some("e2"), Some(55)),
];

/// The current state the versions above make, as (key, `_kyma_seq`) of each key's newest
/// version: 2 updated twice, 3 deleted and re-inserted, 4 updated, 5 updated out of order,
/// 9 inserted, 11 re-inserted; 6 and 7 (base) and 8 and 10 (delta) deleted.
const CURRENT: &[(i64, i64)] = &[
    (1, 0),
    (2, 20),
    (3, 22),
    (4, 14),
    (5, 31),
    (9, 13),
    (11, 26),
];

/// A source's columns as the synced table holds them (the system columns follow).
fn source_columns() -> Vec<Column> {
    vec![
        Column::new("id", KymaType::Long).not_null(),
        Column::new("name", KymaType::String),
        Column::new("score", KymaType::Long),
    ]
}

fn lsn(seq: i64) -> String {
    format!("0/{seq:X}")
}

/// `_kyma_event_at`: 2024-01-01T00:00:00Z plus `seq` seconds.
fn event_at_micros(seq: i64) -> i64 {
    (1_704_067_200 + seq) * 1_000_000
}

/// The versions as a batch in the synced table's column order.
fn batch(versions: &[Version]) -> RecordBatch {
    let each = |f: fn(&Version) -> i64| versions.iter().map(f).collect::<Vec<_>>();
    RecordBatch::try_new(
        schema(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("score", DataType::Int64, true),
            Field::new("_kyma_pk", DataType::Utf8, false),
            Field::new("_kyma_op", DataType::Utf8, false),
            Field::new("_kyma_lsn", DataType::Utf8, false),
            Field::new(
                "_kyma_event_at",
                DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into())),
                false,
            ),
            Field::new("_kyma_seq", DataType::Int64, false),
        ]),
        vec![
            Arc::new(Int64Array::from(each(|v| v.id))),
            Arc::new(versions.iter().map(|v| v.name).collect::<StringArray>()),
            Arc::new(versions.iter().map(|v| v.score).collect::<Int64Array>()),
            Arc::new(
                versions
                    .iter()
                    .map(|v| Some(v.id.to_string()))
                    .collect::<StringArray>(),
            ),
            Arc::new(
                versions
                    .iter()
                    .map(|v| Some(v.op.as_str()))
                    .collect::<StringArray>(),
            ),
            Arc::new(
                versions
                    .iter()
                    .map(|v| Some(lsn(v.seq)))
                    .collect::<StringArray>(),
            ),
            Arc::new(
                TimestampMicrosecondArray::from(each(|v| event_at_micros(v.seq)))
                    .with_timezone(UTC),
            ),
            Arc::new(Int64Array::from(each(|v| v.seq))),
        ],
    )
    .expect("batch")
}

/// A row as the node answers `SELECT *` of a synced table, one text cell per column.
fn row(v: &Version) -> String {
    [
        v.id.to_string(),
        v.name.unwrap_or_default().to_owned(),
        v.score.map(|s| s.to_string()).unwrap_or_default(),
        v.id.to_string(),
        v.op.as_str().to_owned(),
        lsn(v.seq),
        event_at_text(v.seq),
        v.seq.to_string(),
    ]
    .join("|")
}

/// `_kyma_event_at` as Arrow displays it (seq < 60: within the first minute).
fn event_at_text(seq: i64) -> String {
    assert!((0..60).contains(&seq), "seconds only");
    format!("2024-01-01T00:00:{seq:02}Z")
}

fn all_versions() -> Vec<Version> {
    [BASE, DELTA_1, DELTA_2].concat()
}

fn find(id: i64, seq: i64) -> Version {
    *all_versions()
        .iter()
        .find(|v| v.id == id && v.seq == seq)
        .unwrap_or_else(|| panic!("no version ({id}, {seq})"))
}

/// Creates a synced table of `connector` in the catalog, as a CDC worker does.
async fn create_synced(catalog: &Catalog, table: &TableRef) {
    let mut columns = source_columns();
    columns.extend(system_columns());
    catalog
        .create_table(
            table,
            TableOrigin::Synced {
                connector: table.catalog.clone(),
            },
            columns,
        )
        .await
        .expect("synced table");
}

/// Writes `versions` as one extent (compacted or delta) and commits; returns the revision.
async fn write(
    catalog: &Catalog,
    store: &ExtentStore,
    table: &TableRef,
    compacted: bool,
    versions: &[Version],
) -> Revision {
    let options = WriteOptions {
        compacted,
        ..WriteOptions::default()
    };
    let mut writer = TableWriter::open(catalog, store, table, options)
        .await
        .expect("writer");
    writer.write(&batch(versions)).await.expect("write");
    let summary = writer.commit().await.expect("commit");
    summary.revision.expect("a commit revision")
}

/// Writes `versions` as one delta extent the way a CDC worker commits changes: what they
/// supersede resolved through `index` and recorded as deleted rows. Returns the revision.
async fn write_resolved(
    catalog: &Catalog,
    store: &ExtentStore,
    table: &TableRef,
    index: &mut KeyIndex,
    versions: &[Version],
) -> Revision {
    let options = WriteOptions {
        record_keys: true,
        ..WriteOptions::default()
    };
    let mut writer = TableWriter::open(catalog, store, table, options)
        .await
        .expect("writer");
    writer.write(&batch(versions)).await.expect("write");
    let written = writer.finish().await.expect("extents");
    let state = catalog.table(table).await.expect("table state");
    let (commit, resolution) = written
        .resolved_table_commit(store, &state, index, u64::MAX)
        .await
        .expect("resolved commit");
    let outcome = catalog
        .commit(&CatalogCommit::tables(vec![commit]))
        .await
        .expect("catalog commit");
    let CommitOutcome::Committed { revision } = outcome else {
        panic!("nothing else commits: {outcome:?}");
    };
    assert!(index.committed(resolution.expect("within the budget")));
    revision
}

/// A Postgres connector spec (not checked against the source: written to the catalog as is).
fn connector(name: &str, mode: ConnectorMode, url: String) -> ConnectorSpec {
    connector_of(SourceType::Postgres, name, mode, url)
}

fn connector_of(
    source_type: SourceType,
    name: &str,
    mode: ConnectorMode,
    url: String,
) -> ConnectorSpec {
    ConnectorSpec {
        name: name.into(),
        source_type,
        mode,
        connection: ConnectionSpec {
            url,
            secret_ref: None,
            tls: TlsMode::Disable,
            pool_size: 2,
            tls_ca_ref: None,
        },
        scope: ScopeSpec::default(),
        retention: Default::default(),
    }
}

/// Waits until the node's view shows everything committed to `catalog` so far.
async fn until_visible(node: &common::ServedNode, catalog: &Catalog) {
    let revision = catalog.ping().await.expect("catalog revision");
    assert!(
        node.node
            .engine()
            .view()
            .wait_for(revision, VISIBLE_WITHIN)
            .await,
        "the node's view did not reach revision {revision}"
    );
}

/// Each row of the answer, its cells joined with `|` (NULL as empty).
async fn rows(flight: &mut FlightSqlServiceClient<Channel>, sql: &str) -> Vec<String> {
    let batches = query(flight, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    batches
        .iter()
        .flat_map(|b| {
            (0..b.num_rows()).map(move |r| {
                (0..b.num_columns())
                    .map(|c| {
                        arrow::util::display::array_value_to_string(b.column(c), r)
                            .expect("displayable")
                    })
                    .collect::<Vec<_>>()
                    .join("|")
            })
        })
        .collect()
}

/// The error message a statement fails with.
async fn error_of(flight: &mut FlightSqlServiceClient<Channel>, sql: &str) -> String {
    match query(flight, sql).await {
        Ok(batches) => panic!("{sql} answered {} batches", batches.len()),
        Err(e) => e.to_string(),
    }
}

/// `EXPLAIN`'s plan text.
async fn explain(flight: &mut FlightSqlServiceClient<Channel>, sql: &str) -> String {
    rows(flight, &format!("EXPLAIN {sql}")).await.join("\n")
}

/// The scans of a physical plan (of Parquet or of decoded columns), one line each.
fn scans(plan: &str) -> Vec<&str> {
    plan.lines()
        .filter(|l| l.contains("DataSourceExec") || l.contains("DecodedExtentsExec"))
        .collect()
}

/// Whether a plan merges versions by key (an anti-join and a window).
fn merges(plan: &str) -> bool {
    plan.contains("Join") || plan.contains("row_number")
}

/// A node with connector `pg_sync` (mode sync) and its synced table `public.users`, empty.
async fn node_with_empty_users() -> (common::ServedNode, Catalog, ExtentStore, TableRef) {
    let (node, catalog, store) = standalone_with_storage(GrpcOptions::default(), true).await;
    catalog
        .create_connector(&connector(
            "pg_sync",
            ConnectorMode::Sync,
            "postgres://app@127.0.0.1:9/app".into(),
        ))
        .await
        .expect("connector");
    let users = TableRef::new("pg_sync", "public", "users");
    create_synced(&catalog, &users).await;
    (node, catalog, store, users)
}

/// A node with connector `pg_sync` (mode sync) and its synced table `public.users` holding
/// [`BASE`], [`DELTA_1`] and [`DELTA_2`].
async fn node_with_users() -> (common::ServedNode, Catalog) {
    let (node, catalog, store, users) = node_with_empty_users().await;
    write(&catalog, &store, &users, true, BASE).await;
    write(&catalog, &store, &users, false, DELTA_1).await;
    write(&catalog, &store, &users, false, DELTA_2).await;
    until_visible(&node, &catalog).await;
    (node, catalog)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synced_table_reads_as_one_newest_row_per_key_without_tombstones() {
    let (node, _catalog) = node_with_users().await;
    let mut flight = client(node.addr).await;

    let expected: Vec<String> = CURRENT
        .iter()
        .map(|&(id, seq)| row(&find(id, seq)))
        .collect();
    assert_eq!(
        rows(
            &mut flight,
            "SELECT * FROM pg_sync.public.users ORDER BY id"
        )
        .await,
        expected
    );
    assert_eq!(
        rows(&mut flight, "SELECT count(*) FROM pg_sync.public.users").await,
        vec![CURRENT.len().to_string()]
    );
    let columns = rows(
        &mut flight,
        "SELECT column_name FROM information_schema.columns \
         WHERE table_catalog = 'pg_sync' AND table_schema = 'public' AND table_name = 'users' \
         ORDER BY ordinal_position",
    )
    .await;
    assert_eq!(
        columns,
        [
            "id",
            "name",
            "score",
            "_kyma_pk",
            "_kyma_op",
            "_kyma_lsn",
            "_kyma_event_at",
            "_kyma_seq"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_judge_only_the_newest_version_of_each_key() {
    let (node, _catalog) = node_with_users().await;
    let mut flight = client(node.addr).await;

    // Old versions of 4 (40), 6 (60, deleted), 8 (80, deleted), 10 (100, deleted) and 5 (50,
    // 55) match; only the newest versions may answer.
    assert_eq!(
        rows(
            &mut flight,
            "SELECT id, score FROM pg_sync.public.users WHERE score >= 30 ORDER BY id"
        )
        .await,
        ["3|33", "5|56", "9|90", "11|110"]
    );
    // Key 4 was `d` before its update.
    assert!(
        rows(
            &mut flight,
            "SELECT id FROM pg_sync.public.users WHERE name = 'd'"
        )
        .await
        .is_empty()
    );
    // Asking for tombstones finds none: they are not part of the current state.
    assert!(
        rows(
            &mut flight,
            "SELECT id FROM pg_sync.public.users WHERE _kyma_op = 'delete'"
        )
        .await
        .is_empty()
    );
    // Older versions are in the table, not in the answer.
    assert!(
        rows(
            &mut flight,
            "SELECT id FROM pg_sync.public.users WHERE _kyma_seq < 20 AND id IN (2, 3, 5)"
        )
        .await
        .is_empty()
    );
    // A key filter finds the key's newest version.
    assert_eq!(
        rows(
            &mut flight,
            "SELECT name, _kyma_seq FROM pg_sync.public.users WHERE _kyma_pk = '2'"
        )
        .await,
        ["b3|20"]
    );
    assert_eq!(
        rows(
            &mut flight,
            "SELECT u.id, u.name FROM pg_sync.public.users u \
             JOIN (SELECT 3 AS id UNION ALL SELECT 8) k ON u.id = k.id"
        )
        .await,
        ["3|c2"]
    );

    // The plan: a filter on a non-key column reaches the compacted scan (extent skipping and
    // Parquet pruning) but not the delta scan under the window.
    let plan = explain(
        &mut flight,
        "SELECT id FROM pg_sync.public.users WHERE score >= 30",
    )
    .await;
    let scans = scans(&plan);
    assert_eq!(scans.len(), 3, "compacted, delta keys, delta:\n{plan}");
    assert_eq!(
        scans.iter().filter(|l| l.contains("score@")).count(),
        1,
        "only the compacted scan filters on score:\n{plan}"
    );
    assert!(plan.contains("LeftAnti"), "{plan}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_delta_extents_the_read_is_the_compacted_scan_minus_tombstones() {
    let (node, catalog, store, users) = node_with_empty_users().await;
    write(&catalog, &store, &users, true, BASE).await;
    until_visible(&node, &catalog).await;
    let mut flight = client(node.addr).await;

    let expected: Vec<String> = BASE.iter().filter(|v| v.op != Delete).map(row).collect();
    assert_eq!(
        rows(
            &mut flight,
            "SELECT * FROM pg_sync.public.users ORDER BY id"
        )
        .await,
        expected
    );
    let plan = explain(
        &mut flight,
        "SELECT * FROM pg_sync.public.users WHERE score > 15",
    )
    .await;
    assert!(
        !merges(&plan),
        "no join and no window without delta extents:\n{plan}"
    );
    assert_eq!(scans(&plan).len(), 1, "{plan}");
    assert!(
        scans(&plan).iter().any(|l| l.contains("score@")),
        "the filter reaches the scan:\n{plan}"
    );
}

/// Versions written after [`DELTA_2`] and a compaction: key 1 updated, 9 deleted, 12 new.
const DELTA_3: &[Version] = &[
    version(1, Update, 40, Some("a2"), Some(11)),
    tombstone(9, 41),
    version(12, Insert, 42, Some("l"), Some(120)),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_superseded_rows_deleted_by_position_the_read_is_one_scan_and_the_same_state() {
    let (node, catalog, store, users) = node_with_empty_users().await;
    // The copy is committed as a worker commits it (unresolved); the first commit of changes
    // reads it into the index.
    write(&catalog, &store, &users, true, BASE).await;
    let table_id = catalog.table(&users).await.expect("state").meta.id;
    let mut index = KeyIndex::new(table_id);
    write_resolved(&catalog, &store, &users, &mut index, DELTA_1).await;
    write_resolved(&catalog, &store, &users, &mut index, DELTA_2).await;
    until_visible(&node, &catalog).await;
    let mut flight = client(node.addr).await;

    let expected: Vec<String> = CURRENT
        .iter()
        .map(|&(id, seq)| row(&find(id, seq)))
        .collect();
    let all = "SELECT * FROM pg_sync.public.users ORDER BY id";
    assert_eq!(rows(&mut flight, all).await, expected);
    let plan = explain(&mut flight, all).await;
    assert!(
        plan.contains("DecodedExtentsExec: extents=[tables/"),
        "read again from the decoded columns, deleted rows skipped there:\n{plan}"
    );
    assert_eq!(rows(&mut flight, all).await, expected);
    assert_eq!(
        rows(
            &mut flight,
            "SELECT id, score FROM pg_sync.public.users WHERE score >= 30 ORDER BY id"
        )
        .await,
        ["3|33", "5|56", "9|90", "11|110"]
    );
    let plan = explain(
        &mut flight,
        "SELECT id FROM pg_sync.public.users WHERE score >= 30",
    )
    .await;
    assert!(!merges(&plan), "no merge by key:\n{plan}");
    assert_eq!(
        scans(&plan).iter().filter(|l| l.contains("score@")).count(),
        1,
        "one scan of every extent, filtered:\n{plan}"
    );
    // Every stored version is still there for raw().
    assert_eq!(
        rows(
            &mut flight,
            "SELECT count(*) FROM raw(pg_sync.public.users)"
        )
        .await,
        [all_versions().len().to_string()]
    );

    // A compaction rewrites the extents the index points into; the next commit catches up.
    let options = CompactionOptions {
        min_delta_extents: 1,
        ..CompactionOptions::default()
    };
    let compacted = compact(&catalog, &store, &users, &options)
        .await
        .expect("compaction");
    assert!(
        matches!(compacted.outcome, CompactionOutcome::Committed { .. }),
        "{compacted:?}"
    );
    write_resolved(&catalog, &store, &users, &mut index, DELTA_3).await;
    until_visible(&node, &catalog).await;
    let mut expected: Vec<Version> = CURRENT
        .iter()
        .filter(|(id, _)| ![1, 9].contains(id))
        .map(|&(id, seq)| find(id, seq))
        .collect();
    expected.extend([DELTA_3[0], DELTA_3[2]]);
    expected.sort_by_key(|v| v.id);
    assert_eq!(
        rows(&mut flight, all).await,
        expected.iter().map(row).collect::<Vec<_>>()
    );
    let plan = explain(
        &mut flight,
        "SELECT id, score FROM pg_sync.public.users WHERE score >= 30",
    )
    .await;
    assert!(!merges(&plan), "no merge by key:\n{plan}");
    let scans = scans(&plan);
    assert_eq!(
        scans.len(),
        2,
        "the compacted extents (no tombstone left) and the new delta:\n{plan}"
    );
    assert_eq!(
        scans.iter().filter(|l| l.contains("_kyma_op")).count(),
        1,
        "only the extent that may hold a tombstone reads `_kyma_op`:\n{plan}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_reads_every_stored_version_and_says_what_to_name() {
    let (node, catalog) = node_with_users().await;
    catalog
        .create_connector(&connector(
            "pg_fed",
            ConnectorMode::Federation,
            "postgres://app@127.0.0.1:9/app".into(),
        ))
        .await
        .expect("connector");
    catalog
        .create_table(
            &TableRef::new("kyma", "default", "native"),
            TableOrigin::Native,
            vec![Column::new("x", KymaType::Long)],
        )
        .await
        .expect("native table");
    until_visible(&node, &catalog).await;
    let mut flight = client(node.addr).await;

    let mut expected: Vec<Version> = all_versions();
    expected.sort_by_key(|v| (v.id, v.seq));
    let expected: Vec<String> = expected.iter().map(row).collect();
    assert_eq!(
        rows(
            &mut flight,
            "SELECT * FROM raw(pg_sync.public.users) ORDER BY id, _kyma_seq"
        )
        .await,
        expected
    );
    assert_eq!(
        rows(
            &mut flight,
            "SELECT * FROM raw('pg_sync.public.users') r ORDER BY r.id, r._kyma_seq"
        )
        .await,
        expected
    );
    assert_eq!(
        rows(
            &mut flight,
            "SELECT count(*) FROM raw(pg_sync.public.users) WHERE _kyma_op = 'delete'"
        )
        .await,
        [all_versions()
            .iter()
            .filter(|v| v.op == Delete)
            .count()
            .to_string()]
    );

    for (sql, says) in [
        (
            "SELECT * FROM raw(pg_sync.public.nope)",
            "connector `pg_sync` has no synced table `public.nope`",
        ),
        (
            "SELECT * FROM raw(nobody.public.users)",
            "there is no connector `nobody`",
        ),
        (
            "SELECT * FROM raw(pg_fed.public.users)",
            "does not sync (mode federation), so it stores no rows; register it with mode sync or both",
        ),
        (
            "SELECT * FROM raw(native)",
            "kyma.default.native is a kyma table, which keeps no versions",
        ),
        (
            "SELECT * FROM raw(users)",
            "there is no table kyma.default.users; name a synced table as connector.schema.table",
        ),
        ("SELECT * FROM raw(1)", "raw() takes one table name"),
        (
            "SELECT * FROM raw(pg_sync.public.users, 2)",
            "raw() takes one table name",
        ),
    ] {
        let error = error_of(&mut flight, sql).await;
        assert!(error.contains(says), "{sql}: {error}");
    }
    let error = error_of(
        &mut flight,
        "INSERT INTO pg_sync.public.users (id, _kyma_pk, _kyma_op, _kyma_lsn, _kyma_event_at, _kyma_seq) \
         VALUES (1, '1', 'insert', '0/0', now(), 0)",
    )
    .await;
    assert!(
        error.contains("is a synced table: only its connector's CDC worker writes it"),
        "{error}"
    );
}

/// `pushdown_summary` entries of a FlightInfo.
fn summary_of(info: &arrow_flight::FlightInfo) -> Vec<serde_json::Value> {
    let metadata: serde_json::Value =
        serde_json::from_slice(&info.app_metadata).expect("app_metadata is JSON");
    metadata["pushdown_summary"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_reads_the_source_of_a_both_connector_whose_plain_names_read_the_synced_copy() {
    let pg = Postgres::shared();
    let db = pg.create_database("synced").expect("database");
    pg.psql(
        &db,
        "CREATE TABLE users (id bigint PRIMARY KEY, name text, score bigint);
         INSERT INTO users VALUES (1, 'source-a', 1), (2, 'source-b', 2), (3, 'source-c', 3);",
    )
    .expect("source table");
    let (node, catalog, store) = standalone_with_storage(GrpcOptions::default(), true).await;
    for (name, mode) in [
        ("pg_both", ConnectorMode::Both),
        ("pg_sync", ConnectorMode::Sync),
        ("pg_fed", ConnectorMode::Federation),
    ] {
        catalog
            .create_connector(&connector(name, mode, pg.url(&db)))
            .await
            .expect("connector");
    }
    for connector in ["pg_both", "pg_sync"] {
        let users = TableRef::new(connector, "public", "users");
        create_synced(&catalog, &users).await;
        write(
            &catalog,
            &store,
            &users,
            true,
            &[
                version(1, Insert, 0, Some("synced-a"), Some(1)),
                version(2, Insert, 0, Some("synced-b"), Some(2)),
            ],
        )
        .await;
    }
    until_visible(&node, &catalog).await;
    let mut flight = client(node.addr).await;

    // Plain names of a `both` connector read the synced extents (system columns and all).
    assert_eq!(
        rows(
            &mut flight,
            "SELECT id, name, _kyma_op FROM pg_both.public.users ORDER BY id"
        )
        .await,
        ["1|synced-a|insert", "2|synced-b|insert"]
    );

    // live() reads the source, with pushdown and its summary.
    let sql = "SELECT id, name FROM live(pg_both.public.users) WHERE id >= 2 ORDER BY id";
    let info = flight.execute(sql.to_owned(), None).await.expect(sql);
    let summary = summary_of(&info);
    let batches = fetch(&mut flight, info).await.expect(sql);
    let got: Vec<String> = batches
        .iter()
        .flat_map(|b| {
            let ids = b
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("bigint id")
                .clone();
            let names = b
                .column(1)
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("text name")
                .clone();
            (0..b.num_rows()).map(move |r| format!("{}|{}", ids.value(r), names.value(r)))
        })
        .collect();
    assert_eq!(got, ["2|source-b", "3|source-c"]);
    assert_eq!(summary.len(), 1, "{summary:?}");
    assert_eq!(summary[0]["source"], "pg_both", "{summary:?}");
    let pushed = |part: &str, detail: &str| {
        summary[0]["pushed"].as_array().is_some_and(|parts| {
            parts.iter().any(|p| {
                p["part"] == part && p["detail"].as_str().is_some_and(|d| d.contains(detail))
            })
        })
    };
    assert!(
        pushed("scan", "pg_both.public.users") && pushed("filter", "id >= 2"),
        "the scan names the source table and the filter runs at the source: {summary:?}"
    );
    assert!(
        summary[0]["sql"]
            .as_str()
            .is_some_and(|s| s.contains("WHERE")),
        "{summary:?}"
    );

    // The name as a string literal, and an alias.
    assert_eq!(
        rows(
            &mut flight,
            "SELECT s.name FROM live('pg_both.public.users') s WHERE s.id = 1"
        )
        .await,
        ["source-a"]
    );
    // A table created at the source after the connector's tables were listed.
    pg.psql(
        &db,
        "CREATE TABLE late (x int); INSERT INTO late VALUES (7);",
    )
    .expect("late table");
    assert_eq!(
        rows(&mut flight, "SELECT x FROM live(pg_both.public.late)").await,
        ["7"]
    );

    // In mode federation, live() is the plain name.
    assert_eq!(
        rows(
            &mut flight,
            "SELECT id, name FROM live(pg_fed.public.users) ORDER BY id"
        )
        .await,
        rows(
            &mut flight,
            "SELECT id, name FROM pg_fed.public.users ORDER BY id"
        )
        .await
    );

    // A `sync` connector does not federate.
    let error = error_of(&mut flight, "SELECT * FROM live(pg_sync.public.users)").await;
    assert!(
        error.contains("connector `pg_sync` does not federate (mode sync)")
            && error.contains("register the connector with mode both"),
        "{error}"
    );
    let error = error_of(&mut flight, "SELECT * FROM live(pg_both.public.nope)").await;
    assert!(
        error.contains("connector `pg_both` has no table `public.nope`"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_reads_mariadb_for_a_both_connector_whose_plain_names_read_the_synced_copy() {
    let maria = MariaDb::shared();
    let db = maria.create_database("synced").expect("database");
    maria
        .sql(&format!(
            "CREATE TABLE `{db}`.users (id BIGINT PRIMARY KEY, name TEXT, score BIGINT);
             INSERT INTO `{db}`.users VALUES (1, 'source-a', 1), (2, 'source-b', 2), (3, 'source-c', 3);"
        ))
        .expect("source table");
    let (node, catalog, store) = standalone_with_storage(GrpcOptions::default(), true).await;
    let mut spec = connector_of(
        SourceType::Mysql,
        "my_both",
        ConnectorMode::Both,
        maria.url(&db),
    );
    spec.scope.include_schemas = vec![db.clone()];
    catalog.create_connector(&spec).await.expect("connector");
    let users = TableRef::new("my_both", &db, "users");
    create_synced(&catalog, &users).await;
    write(
        &catalog,
        &store,
        &users,
        true,
        &[version(1, Insert, 0, Some("synced-a"), Some(1))],
    )
    .await;
    until_visible(&node, &catalog).await;
    let mut flight = client(node.addr).await;

    assert_eq!(
        rows(
            &mut flight,
            &format!("SELECT id, name FROM my_both.{db}.users")
        )
        .await,
        ["1|synced-a"],
        "the plain name reads the synced copy"
    );
    let sql = format!("SELECT id, name FROM live(my_both.{db}.users) WHERE id >= 2 ORDER BY id");
    let info = flight.execute(sql.clone(), None).await.expect("live query");
    let summary = summary_of(&info);
    assert_eq!(
        rows(&mut flight, &sql).await,
        ["2|source-b", "3|source-c"],
        "live() reads the source"
    );
    assert_eq!(summary.len(), 1, "{summary:?}");
    let sent = summary[0]["sql"].as_str().unwrap_or_default();
    assert!(
        sent.contains("WHERE") && sent.contains("`users`"),
        "the filter runs at MariaDB, in its dialect: {summary:?}"
    );
}

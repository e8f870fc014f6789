//! Compaction and garbage collection of synced tables on the harness's real S3 server and an
//! embedded catalog: versions collapse to one per key, tombstones follow the retention, rows
//! written under older schemas keep their values, concurrent commits survive, and garbage goes
//! only after the grace and never from the current snapshot.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray};
use arrow::array::{TimestampMicrosecondArray, new_null_array};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, TimeUnit};
use futures::TryStreamExt;
use kyma_catalog::{
    Catalog, CatalogCommit, CatalogLocation, Column, CommitOutcome, KymaType, OpenWrite,
    TableOrigin, TableRef,
};
use kyma_table::compaction::{CompactionOutcome, PreparedCompaction};
use kyma_table::deletes::RowBitmap;
use kyma_table::key_index::KeyIndex;
use kyma_table::synced::{self, ChangeOp};
use kyma_table::versions::key_versions;
use kyma_table::{
    CompactionOptions, ExtentStore, GcOptions, Manifest, StatValue, TableError, TableWriter,
    WriteOptions, collect_garbage, compact, needs_compaction,
};
use kyma_test_harness::S3;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

const DAY: Duration = Duration::from_secs(86_400);

/// The instant the tests measure tombstone ages at.
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn micros(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .expect("after the epoch")
        .as_micros() as i64
}

/// Older than the 30-day retention.
fn old() -> i64 {
    micros(now() - 40 * DAY)
}

/// Within the retention.
fn young() -> i64 {
    micros(now() - DAY)
}

struct Fixture {
    catalog: Catalog,
    store: ExtentStore,
    table: TableRef,
    _dir: tempfile::TempDir,
}

async fn fixture(test: &str) -> Fixture {
    let s3 = S3::shared();
    let bucket = s3.create_bucket(test).expect("bucket");
    let store =
        ExtentStore::from_object_store(Arc::new(s3.bucket(&bucket).build().expect("S3 store")));
    let dir = tempfile::tempdir().expect("dir");
    let catalog = Catalog::open(&CatalogLocation::Embedded {
        path: dir.path().join("catalog.redb"),
    })
    .await
    .expect("catalog");
    let table = TableRef::new("pg", "public", "users");
    create_synced(&catalog, &table).await;
    Fixture {
        catalog,
        store,
        table,
        _dir: dir,
    }
}

async fn create_synced(catalog: &Catalog, table: &TableRef) {
    let mut columns = vec![
        Column::new("id", KymaType::Long),
        Column::new("name", KymaType::String),
    ];
    columns.extend(synced::system_columns());
    catalog
        .create_table(
            table,
            TableOrigin::Synced {
                connector: "pg".into(),
            },
            columns,
        )
        .await
        .expect("create the synced table");
}

/// One version of a row, as the CDC worker writes it.
#[derive(Clone, Copy)]
struct V {
    key: i64,
    seq: i64,
    op: ChangeOp,
    at: i64,
    name: Option<&'static str>,
    email: Option<&'static str>,
}

fn v(key: i64, seq: i64, op: ChangeOp, at: i64, name: Option<&'static str>) -> V {
    V {
        key,
        seq,
        op,
        at,
        name,
        email: None,
    }
}

/// A batch of versions; `with_email` adds the column the table does not have at first.
fn batch(rows: &[V], with_email: bool) -> RecordBatch {
    let strings = |f: fn(&V) -> Option<String>| -> ArrayRef {
        Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>()))
    };
    let mut fields = vec![
        Field::new("id", DataType::Int64, true),
        Field::new("name", DataType::Utf8, true),
        Field::new(synced::PK, DataType::Utf8, false),
        Field::new(synced::OP, DataType::Utf8, false),
        Field::new(synced::LSN, DataType::Utf8, false),
        Field::new(
            synced::EVENT_AT,
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new(synced::SEQ, DataType::Int64, false),
    ];
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(
            rows.iter().map(|r| r.key).collect::<Vec<_>>(),
        )),
        strings(|r| r.name.map(str::to_owned)),
        strings(|r| Some(r.key.to_string())),
        strings(|r| Some(r.op.as_str().to_owned())),
        strings(|r| Some(format!("0/{:X}", r.seq))),
        Arc::new(
            TimestampMicrosecondArray::from(rows.iter().map(|r| r.at).collect::<Vec<_>>())
                .with_timezone("UTC"),
        ),
        Arc::new(Int64Array::from(
            rows.iter().map(|r| r.seq).collect::<Vec<_>>(),
        )),
    ];
    if with_email {
        fields.push(Field::new("email", DataType::Utf8, true));
        columns.push(strings(|r| r.email.map(str::to_owned)));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("batch")
}

/// Commits `rows` as one extent: a delta, or part of the compacted base (the initial
/// snapshot).
async fn commit(f: &Fixture, rows: &[V], with_email: bool, compacted: bool) {
    let mut writer = TableWriter::open(
        &f.catalog,
        &f.store,
        &f.table,
        WriteOptions {
            compacted,
            ..WriteOptions::default()
        },
    )
    .await
    .expect("open");
    writer.write(&batch(rows, with_email)).await.expect("write");
    writer.commit().await.expect("commit");
}

/// Keys 1-6 from the initial snapshot, then three deltas of updates, deletes (old and young)
/// and re-inserts, the second widening the table with `email`.
async fn history(f: &Fixture) {
    let base: Vec<V> = ["one", "two", "three", "four", "five", "six"]
        .iter()
        .zip(1..)
        .map(|(name, key)| v(key, 0, ChangeOp::Insert, old(), Some(name)))
        .collect();
    commit(f, &base, false, true).await;
    commit(
        f,
        &[
            v(1, 10, ChangeOp::Update, young(), Some("one-v2")),
            v(2, 11, ChangeOp::Delete, old(), None),
            v(3, 12, ChangeOp::Delete, young(), None),
            v(4, 13, ChangeOp::Update, young(), Some("four-v2")),
        ],
        false,
        false,
    )
    .await;
    commit(
        f,
        &[
            V {
                email: Some("four@x"),
                ..v(4, 20, ChangeOp::Update, young(), Some("four-v3"))
            },
            v(2, 21, ChangeOp::Insert, young(), Some("two-again")),
            V {
                email: Some("seven@x"),
                ..v(7, 22, ChangeOp::Insert, young(), Some("seven"))
            },
            v(5, 23, ChangeOp::Delete, old(), None),
        ],
        true,
        false,
    )
    .await;
    commit(
        f,
        &[
            // Older than delta 1's version of key 1 although written later: seq decides.
            v(1, 9, ChangeOp::Update, young(), Some("one-stale")),
            v(7, 30, ChangeOp::Delete, young(), None),
            V {
                email: Some("s@x"),
                ..v(7, 31, ChangeOp::Insert, young(), Some("seven-again"))
            },
        ],
        true,
        false,
    )
    .await;
}

fn options() -> CompactionOptions {
    CompactionOptions {
        min_delta_extents: 1,
        now: Some(now()),
        ..CompactionOptions::default()
    }
}

async fn manifest(f: &Fixture) -> Manifest {
    let state = f.catalog.table(&f.table).await.expect("table");
    Manifest::load(
        &f.store,
        state
            .snapshot
            .value
            .manifest
            .as_deref()
            .expect("a manifest"),
    )
    .await
    .expect("manifest")
}

/// A raw row: key, seq, op, name, email.
type Raw = (String, i64, String, Option<String>, Option<String>);

/// Every row of the current snapshot, sorted by key and seq (columns an extent lacks are
/// null).
async fn raw_rows(f: &Fixture) -> Vec<Raw> {
    stored_rows(f, false).await
}

/// The rows of the current snapshot not deleted by position, sorted by key and seq.
async fn live_rows(f: &Fixture) -> Vec<Raw> {
    stored_rows(f, true).await
}

async fn stored_rows(f: &Fixture, skip_deleted: bool) -> Vec<Raw> {
    let mut rows = Vec::new();
    for extent in manifest(f).await.extents {
        let deleted = match (&extent.deleted, skip_deleted) {
            (Some(deleted), true) => deleted.load(&f.store).await.expect("deleted rows"),
            _ => RowBitmap::default(),
        };
        let mut position = 0_u32;
        let bytes = f
            .store
            .object_store()
            .get(&Path::from(extent.path.as_str()))
            .await
            .expect("get extent")
            .bytes()
            .await
            .expect("read extent");
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .expect("parquet")
            .build()
            .expect("reader");
        for batch in reader {
            for row in raws(&batch.expect("batch")) {
                if !deleted.contains(position) {
                    rows.push(row);
                }
                position += 1;
            }
        }
    }
    rows.sort();
    rows
}

/// Commits `rows` as one delta extent the way a CDC worker commits changes, resolving what
/// they supersede through `index` within `max_keys`; whether it did.
async fn commit_resolved(f: &Fixture, rows: &[V], index: &mut KeyIndex, max_keys: u64) -> bool {
    let options = WriteOptions {
        record_keys: true,
        ..WriteOptions::default()
    };
    let mut writer = TableWriter::open(&f.catalog, &f.store, &f.table, options)
        .await
        .expect("open");
    writer.write(&batch(rows, false)).await.expect("write");
    let written = writer.finish().await.expect("extents");
    let state = f.catalog.table(&f.table).await.expect("table");
    let (commit, resolution) = written
        .resolved_table_commit(&f.store, &state, index, max_keys)
        .await
        .expect("resolved commit");
    let outcome = f
        .catalog
        .commit(&CatalogCommit::tables(vec![commit]))
        .await
        .expect("catalog commit");
    assert!(
        matches!(outcome, CommitOutcome::Committed { .. }),
        "{outcome:?}"
    );
    match resolution {
        Some(resolution) => index.committed(resolution),
        None => false,
    }
}

/// Each key's newest stored version (tombstones included), sorted by key.
async fn newest_versions(f: &Fixture) -> Vec<Raw> {
    let mut newest: Vec<Raw> = Vec::new();
    for row in raw_rows(f).await {
        match newest.last_mut() {
            Some(last) if last.0 == row.0 => *last = row,
            _ => newest.push(row),
        }
    }
    newest
}

#[tokio::test]
async fn a_resolved_table_is_compacted_for_its_dead_rows_not_for_its_delta_rows() {
    let f = fixture("dead-rows").await;
    let base: Vec<V> = (1..=20)
        .map(|k| v(k, 0, ChangeOp::Insert, young(), Some("base")))
        .collect();
    commit(&f, &base, false, true).await;
    let table_id = f.catalog.table(&f.table).await.expect("table").meta.id;
    let mut index = KeyIndex::new(table_id);
    let options = CompactionOptions {
        now: Some(now()),
        ..CompactionOptions::default()
    };
    let update = |keys: std::ops::RangeInclusive<i64>, seq: i64| -> Vec<V> {
        keys.map(|k| v(k, seq, ChangeOp::Update, young(), Some("new")))
            .collect()
    };
    // A tenth of the rows updated: delta rows past `min_delta_fraction`, nothing to gain.
    assert!(commit_resolved(&f, &update(1..=2, 1), &mut index, u64::MAX).await);
    assert!(!needs_compaction(&manifest(&f).await, &options));
    // 6 of 26 rows dead: still below a quarter.
    assert!(commit_resolved(&f, &update(3..=6, 2), &mut index, u64::MAX).await);
    assert!(!needs_compaction(&manifest(&f).await, &options));
    // 8 of 28: a full compaction drops them.
    assert!(commit_resolved(&f, &update(7..=8, 3), &mut index, u64::MAX).await);
    assert!(needs_compaction(&manifest(&f).await, &options));
    let summary = compact(&f.catalog, &f.store, &f.table, &options)
        .await
        .expect("compaction");
    assert!(!summary.counts.deltas_only, "{summary:?}");
    assert_eq!(summary.counts.versions_dropped, 8);
    let after = manifest(&f).await;
    assert!(after.positions_resolved && after.extents.iter().all(|e| e.compacted));
    assert_eq!(live_rows(&f).await, newest_versions(&f).await);
    assert_eq!(live_rows(&f).await.len(), 20);
}

#[tokio::test]
async fn a_resolved_commit_after_a_racing_compaction_deletes_what_the_race_superseded() {
    let f = fixture("resolved").await;
    history(&f).await;
    let table_id = f.catalog.table(&f.table).await.expect("table").meta.id;
    let mut index = KeyIndex::new(table_id);
    // The first resolved commit reads the whole history into the index.
    assert!(
        commit_resolved(
            &f,
            &[v(2, 30, ChangeOp::Update, young(), Some("two-v3"))],
            &mut index,
            u64::MAX
        )
        .await
    );
    assert!(manifest(&f).await.positions_resolved);
    assert_eq!(live_rows(&f).await, newest_versions(&f).await);

    // A compaction reads; a resolved delta supersedes a row it is rewriting; it commits.
    let prepared = PreparedCompaction::prepare(&f.catalog, &f.store, &f.table, &options())
        .await
        .expect("prepare")
        .expect("something to compact");
    let racing = [v(1, 40, ChangeOp::Update, young(), Some("one-latest"))];
    assert!(commit_resolved(&f, &racing, &mut index, u64::MAX).await);
    let summary = prepared.commit().await.expect("compaction commit");
    assert!(
        matches!(summary.outcome, CompactionOutcome::Committed { .. }),
        "{summary:?}"
    );
    assert!(
        !manifest(&f).await.positions_resolved,
        "the compaction's rows superseded meanwhile are not recorded as deleted yet"
    );
    assert_ne!(live_rows(&f).await, newest_versions(&f).await);

    // The next resolved commit catches up with the compaction and records them.
    assert!(
        commit_resolved(
            &f,
            &[v(9, 41, ChangeOp::Insert, young(), Some("nine"))],
            &mut index,
            u64::MAX
        )
        .await
    );
    assert!(manifest(&f).await.positions_resolved);
    let live = live_rows(&f).await;
    assert_eq!(live, newest_versions(&f).await);
    assert!(live.contains(&raw("1", 40, ChangeOp::Update, Some("one-latest"), None)));

    // Past the key budget a commit is not resolved, and says so in the manifest.
    let mut small = KeyIndex::new(table_id);
    assert!(
        !commit_resolved(
            &f,
            &[v(3, 42, ChangeOp::Update, young(), Some("three"))],
            &mut small,
            2
        )
        .await
    );
    assert!(!manifest(&f).await.positions_resolved);
}

/// The rows of `batch` as [`Raw`] rows (columns it lacks are null).
fn raws(batch: &RecordBatch) -> Vec<Raw> {
    let column = |name: &str| {
        batch
            .column_by_name(name)
            .cloned()
            .unwrap_or_else(|| new_null_array(&DataType::Utf8, batch.num_rows()))
    };
    let (pk, op, name, email) = (
        column(synced::PK),
        column(synced::OP),
        column("name"),
        column("email"),
    );
    let seq = column(synced::SEQ);
    let text = |a: &ArrayRef, i: usize| {
        let a = a.as_string::<i32>();
        (!a.is_null(i)).then(|| a.value(i).to_owned())
    };
    (0..batch.num_rows())
        .map(|i| {
            (
                text(&pk, i).expect("pk"),
                seq.as_primitive::<Int64Type>().value(i),
                text(&op, i).expect("op"),
                text(&name, i),
                text(&email, i),
            )
        })
        .collect()
}

fn raw(key: &str, seq: i64, op: ChangeOp, name: Option<&str>, email: Option<&str>) -> Raw {
    (
        key.to_owned(),
        seq,
        op.as_str().to_owned(),
        name.map(str::to_owned),
        email.map(str::to_owned),
    )
}

#[tokio::test]
async fn compaction_keeps_each_keys_newest_version_and_only_young_tombstones() {
    let f = fixture("compact").await;
    history(&f).await;
    let before = manifest(&f).await;
    assert!(needs_compaction(&before, &options()));
    let thresholds_only = CompactionOptions {
        tombstone_retention: 365 * DAY,
        min_delta_fraction: f64::INFINITY,
        now: Some(now()),
        ..CompactionOptions::default()
    };
    assert!(
        !needs_compaction(&before, &thresholds_only),
        "3 delta extents and 11 rows are below the default thresholds, and no tombstone is a year old"
    );

    let summary = compact(&f.catalog, &f.store, &f.table, &options())
        .await
        .expect("compact");
    assert!(
        matches!(summary.outcome, CompactionOutcome::Committed { .. }),
        "{summary:?}"
    );
    let counts = &summary.counts;
    assert_eq!(
        (
            counts.extents_read,
            counts.rows_read,
            counts.extents_replaced
        ),
        (4, 17, 4)
    );
    assert_eq!(
        (
            counts.versions_dropped,
            counts.tombstones_dropped,
            counts.tombstones_kept
        ),
        (10, 1, 1),
        "17 rows of 7 keys; key 5's newest version is an old tombstone, key 3's a young one"
    );
    assert_eq!((counts.extents_written, counts.rows_written), (2, 6));

    assert_eq!(
        raw_rows(&f).await,
        vec![
            raw("1", 10, ChangeOp::Update, Some("one-v2"), None),
            raw("2", 21, ChangeOp::Insert, Some("two-again"), None),
            raw("3", 12, ChangeOp::Delete, None, None),
            raw("4", 20, ChangeOp::Update, Some("four-v3"), Some("four@x")),
            raw("6", 0, ChangeOp::Insert, Some("six"), None),
            raw("7", 31, ChangeOp::Insert, Some("seven-again"), Some("s@x")),
        ],
        "one row per key, its newest; key 5 (deleted long ago) is gone"
    );
    let after = manifest(&f).await;
    assert!(after.extents.iter().all(|e| e.compacted), "{after:?}");
    let state = f.catalog.table(&f.table).await.expect("table");
    assert_eq!(after.schema_version, state.schema.value.version);
    let tombstones: Vec<_> = after
        .extents
        .iter()
        .filter(|e| e.columns[synced::OP].max == Some(StatValue::Str("delete".into())))
        .collect();
    assert_eq!(
        tombstones.len(),
        1,
        "the young tombstone has its own extent"
    );
    assert_eq!(tombstones[0].rows, 1);
    assert!(
        !needs_compaction(&after, &options()),
        "nothing to gain right after compacting"
    );
    let again = compact(&f.catalog, &f.store, &f.table, &options())
        .await
        .expect("compact again");
    assert_eq!(again.outcome, CompactionOutcome::Skipped);

    // A month later key 3's tombstone has expired: only its extent is read and replaced.
    let later = CompactionOptions {
        now: Some(now() + 30 * DAY),
        ..options()
    };
    assert!(needs_compaction(&after, &later));
    let expire = compact(&f.catalog, &f.store, &f.table, &later)
        .await
        .expect("expire");
    assert!(
        matches!(expire.outcome, CompactionOutcome::Committed { .. }),
        "{expire:?}"
    );
    assert_eq!(
        (
            expire.counts.extents_read,
            expire.counts.tombstones_dropped,
            expire.counts.extents_written
        ),
        (1, 1, 0)
    );
    let last = manifest(&f).await;
    let live: Vec<_> = after
        .extents
        .iter()
        .filter(|e| e.path != tombstones[0].path)
        .collect();
    assert_eq!(
        last.extents.iter().collect::<Vec<_>>(),
        live,
        "the extent without tombstones is kept as it is"
    );
    let keys: Vec<String> = raw_rows(&f).await.into_iter().map(|r| r.0).collect();
    assert_eq!(keys, ["1", "2", "4", "6", "7"]);
}

#[tokio::test]
async fn small_deltas_merge_among_themselves_and_leave_the_base_alone_until_they_grow() {
    let f = fixture("merge-deltas").await;
    let base: Vec<V> = (1..=100)
        .map(|key| v(key, 0, ChangeOp::Insert, old(), Some("base")))
        .collect();
    commit(&f, &base, false, true).await;
    let base_paths: Vec<String> = manifest(&f)
        .await
        .extents
        .into_iter()
        .map(|e| e.path)
        .collect();
    for rows in [
        vec![
            v(1, 10, ChangeOp::Update, young(), Some("one-v2")),
            v(2, 11, ChangeOp::Delete, young(), None),
        ],
        vec![
            v(1, 12, ChangeOp::Update, young(), Some("one-v3")),
            v(200, 13, ChangeOp::Insert, young(), Some("new")),
        ],
        vec![v(200, 14, ChangeOp::Delete, young(), None)],
    ] {
        commit(&f, &rows, false, false).await;
    }

    let merged = compact(&f.catalog, &f.store, &f.table, &options())
        .await
        .expect("compact");
    assert!(
        matches!(merged.outcome, CompactionOutcome::Committed { .. }),
        "{merged:?}"
    );
    assert!(
        merged.counts.deltas_only,
        "5 delta rows over a 100-row base: {merged:?}"
    );
    assert_eq!(merged.counts.extents_read, 3, "only the deltas are read");
    assert_eq!(
        merged.counts.versions_dropped, 2,
        "key 1's and key 200's older versions"
    );
    let after = manifest(&f).await;
    let kept_base: Vec<&str> = after
        .extents
        .iter()
        .filter(|e| e.compacted)
        .map(|e| e.path.as_str())
        .collect();
    assert_eq!(kept_base, base_paths, "the base is not rewritten");
    let deltas: Vec<Raw> = raw_rows(&f)
        .await
        .into_iter()
        .filter(|(_, seq, ..)| *seq > 0)
        .collect();
    assert_eq!(
        deltas,
        [
            raw("1", 12, ChangeOp::Update, Some("one-v3"), None),
            raw("2", 11, ChangeOp::Delete, None, None),
            raw("200", 14, ChangeOp::Delete, None, None),
        ],
        "each key's newest delta version, tombstones kept: they shadow base rows"
    );

    let burst: Vec<V> = (3..=40)
        .map(|key| v(key, 100 + key, ChangeOp::Update, young(), Some("burst")))
        .collect();
    commit(&f, &burst, false, false).await;
    let full = compact(&f.catalog, &f.store, &f.table, &options())
        .await
        .expect("compact");
    assert!(
        !full.counts.deltas_only,
        "41 delta rows reach a quarter of the base: {full:?}"
    );
    assert!(
        manifest(&f).await.extents.iter().all(|e| e.compacted),
        "a full compaction leaves no delta"
    );
}

#[tokio::test]
async fn a_delta_committed_while_compaction_runs_survives_it() {
    let f = fixture("concurrent").await;
    history(&f).await;
    let prepared = PreparedCompaction::prepare(&f.catalog, &f.store, &f.table, &options())
        .await
        .expect("prepare")
        .expect("something to compact");
    let version_read = f
        .catalog
        .table(&f.table)
        .await
        .expect("table")
        .snapshot
        .value
        .version;

    // The CDC worker commits a delta between the compaction's read and its commit.
    commit(
        &f,
        &[
            v(1, 40, ChangeOp::Update, young(), Some("one-latest")),
            v(8, 41, ChangeOp::Insert, young(), Some("eight")),
        ],
        false,
        false,
    )
    .await;
    let delta = manifest(&f).await.extents.pop().expect("the new delta");

    let summary = prepared.commit().await.expect("commit");
    assert!(
        matches!(summary.outcome, CompactionOutcome::Committed { .. }),
        "{summary:?}"
    );
    let state = f.catalog.table(&f.table).await.expect("table");
    assert_eq!(state.snapshot.value.version, version_read + 2);
    let after = manifest(&f).await;
    assert!(
        after.extents.contains(&delta),
        "the concurrent delta is still in the snapshot, still a delta: {after:?}"
    );
    assert_eq!(after.extents.iter().filter(|e| !e.compacted).count(), 1);
    let rows = raw_rows(&f).await;
    assert!(rows.contains(&raw("1", 40, ChangeOp::Update, Some("one-latest"), None)));
    assert!(rows.contains(&raw("8", 41, ChangeOp::Insert, Some("eight"), None)));
    assert!(
        rows.contains(&raw("1", 10, ChangeOp::Update, Some("one-v2"), None)),
        "the base holds the newest version the compaction saw"
    );
    assert_eq!(rows.len(), 8);

    // Again, with the delta's commit racing the compaction's: both land, whichever rebases.
    let prepared = PreparedCompaction::prepare(&f.catalog, &f.store, &f.table, &options())
        .await
        .expect("prepare")
        .expect("the delta is something to compact");
    let racing = [
        v(8, 50, ChangeOp::Update, young(), Some("eight-v2")),
        v(9, 51, ChangeOp::Insert, young(), Some("nine")),
    ];
    let (summary, ()) = tokio::join!(prepared.commit(), commit(&f, &racing, false, false));
    assert!(
        matches!(
            summary.expect("commit").outcome,
            CompactionOutcome::Committed { .. }
        ),
        "a racing delta is rebased on, not a reason to give up"
    );
    let rows = raw_rows(&f).await;
    assert!(rows.contains(&raw("8", 50, ChangeOp::Update, Some("eight-v2"), None)));
    assert!(rows.contains(&raw("9", 51, ChangeOp::Insert, Some("nine"), None)));
    assert!(rows.contains(&raw("1", 40, ChangeOp::Update, Some("one-latest"), None)));
}

#[tokio::test]
async fn a_compaction_whose_extents_were_replaced_meanwhile_is_abandoned() {
    let f = fixture("abandon").await;
    history(&f).await;
    let first = PreparedCompaction::prepare(&f.catalog, &f.store, &f.table, &options())
        .await
        .expect("prepare")
        .expect("something to compact");
    let second = PreparedCompaction::prepare(&f.catalog, &f.store, &f.table, &options())
        .await
        .expect("prepare")
        .expect("something to compact");
    let won = second.commit().await.expect("second commits");
    assert!(matches!(won.outcome, CompactionOutcome::Committed { .. }));
    let compacted = manifest(&f).await;

    let lost = first.commit().await.expect("first resolves");
    let CompactionOutcome::Abandoned { reason } = &lost.outcome else {
        panic!("expected abandoned: {lost:?}");
    };
    assert!(reason.contains("no longer in the table"), "{reason}");
    assert_eq!(
        manifest(&f).await,
        compacted,
        "the table is as the winner left it"
    );
}

#[tokio::test]
async fn key_versions_reads_every_version_of_the_wanted_keys_and_nothing_else() {
    let f = fixture("keyversions").await;
    history(&f).await;
    let state = f.catalog.table(&f.table).await.expect("table");
    let extents = manifest(&f).await.extents;
    let keys = ["4", "7", "404"].map(str::to_owned).into_iter().collect();
    let found = key_versions(
        &f.store,
        &state.schema.value,
        &extents,
        &keys,
        &["name".to_owned(), "email".to_owned()],
    )
    .await
    .expect("key versions");
    let mut rows = raws(&found);
    rows.sort();
    assert_eq!(
        rows,
        vec![
            raw("4", 0, ChangeOp::Insert, Some("four"), None),
            raw("4", 13, ChangeOp::Update, Some("four-v2"), None),
            raw("4", 20, ChangeOp::Update, Some("four-v3"), Some("four@x")),
            raw("7", 22, ChangeOp::Insert, Some("seven"), Some("seven@x")),
            raw("7", 30, ChangeOp::Delete, None, None),
            raw("7", 31, ChangeOp::Insert, Some("seven-again"), Some("s@x")),
        ],
        "the versions of keys 4 and 7, with the column an older extent lacks as null"
    );

    let unknown = key_versions(
        &f.store,
        &state.schema.value,
        &extents,
        &keys,
        &["no_such_column".to_owned()],
    )
    .await
    .expect_err("an unknown column is refused");
    assert!(unknown.to_string().contains("no_such_column"), "{unknown}");
}

#[tokio::test]
async fn only_synced_tables_are_compacted() {
    let f = fixture("native").await;
    let native = TableRef::new("kyma", "default", "events");
    f.catalog
        .create_table(
            &native,
            TableOrigin::Native,
            vec![Column::new("id", KymaType::Long)],
        )
        .await
        .expect("create");
    let err = compact(&f.catalog, &f.store, &native, &options())
        .await
        .expect_err("a native table has no versions");
    assert!(matches!(err, TableError::InvalidArgument { .. }), "{err}");
    assert!(!err.is_retryable());
}

/// Every object under `tables/{table_id}/`.
async fn objects(f: &Fixture, table_id: uuid::Uuid) -> BTreeSet<String> {
    f.store
        .object_store()
        .list(Some(&Path::from(format!("tables/{table_id}"))))
        .map_ok(|meta| meta.location.to_string())
        .try_collect()
        .await
        .expect("list")
}

#[tokio::test]
async fn garbage_collection_deletes_unreferenced_files_only_after_the_grace() {
    let f = fixture("gc").await;
    let id = f.catalog.table(&f.table).await.expect("table").meta.id;
    commit(
        &f,
        &[v(1, 1, ChangeOp::Insert, young(), Some("a"))],
        false,
        false,
    )
    .await;
    commit(
        &f,
        &[v(1, 2, ChangeOp::Update, young(), Some("b"))],
        false,
        false,
    )
    .await;

    // A commit that failed after writing its extent and its manifest.
    let mut failed = TableWriter::open(&f.catalog, &f.store, &f.table, WriteOptions::default())
        .await
        .expect("open");
    failed
        .write(&batch(
            &[v(2, 3, ChangeOp::Insert, young(), Some("lost"))],
            false,
        ))
        .await
        .expect("write");
    let failed = failed.finish().await.expect("finish");
    let state = f.catalog.table(&f.table).await.expect("table");
    failed
        .table_commit(&f.store, &state)
        .await
        .expect("its manifest is written; the catalog commit never happens");

    let summary = compact(&f.catalog, &f.store, &f.table, &options())
        .await
        .expect("compact");
    assert!(matches!(
        summary.outcome,
        CompactionOutcome::Committed { .. }
    ));

    // A dropped table's files.
    let gone = TableRef::new("pg", "public", "gone");
    create_synced(&f.catalog, &gone).await;
    let gone_id = f.catalog.table(&gone).await.expect("gone").meta.id;
    let mut writer = TableWriter::open(&f.catalog, &f.store, &gone, WriteOptions::default())
        .await
        .expect("open");
    writer
        .write(&batch(
            &[v(1, 1, ChangeOp::Insert, young(), Some("x"))],
            false,
        ))
        .await
        .expect("write");
    writer.commit().await.expect("commit");
    f.catalog.drop_table(&gone).await.expect("drop");

    let current = manifest(&f).await;
    let state = f.catalog.table(&f.table).await.expect("table");
    let mut live: BTreeSet<String> = current.extents.iter().map(|e| e.path.clone()).collect();
    live.insert(state.snapshot.value.manifest.clone().expect("manifest"));
    let all = objects(&f, id).await;
    assert_eq!(
        all.len(),
        live.len() + 6,
        "2 delta extents, 1 failed extent, 2 committed manifests and 1 failed one besides the live files: {all:?}"
    );
    let dropped_files = objects(&f, gone_id).await;
    assert_eq!(dropped_files.len(), 2, "{dropped_files:?}");

    // Everything is young: nothing goes, and the dropped table is marked.
    let first = collect_garbage(&f.catalog, &f.store, &GcOptions::default())
        .await
        .expect("gc");
    assert_eq!(
        (first.deleted, first.dropped_tables_marked),
        (0, 1),
        "{first:?}"
    );
    assert_eq!(first.kept_young, 6 + 2, "{first:?}");
    assert_eq!(objects(&f, id).await, all);
    assert_eq!(objects(&f, gone_id).await.len(), 3, "files and marker");

    // Still within the grace.
    let grace = GcOptions::default().grace;
    let almost = GcOptions {
        now: Some(SystemTime::now() + grace - Duration::from_secs(600)),
        ..GcOptions::default()
    };
    let second = collect_garbage(&f.catalog, &f.store, &almost)
        .await
        .expect("gc");
    assert_eq!(second.deleted, 0, "{second:?}");

    // Past the grace: everything unreferenced goes, the current snapshot's files stay.
    let past = GcOptions {
        now: Some(SystemTime::now() + grace + Duration::from_secs(600)),
        ..GcOptions::default()
    };
    let third = collect_garbage(&f.catalog, &f.store, &past)
        .await
        .expect("gc");
    assert_eq!(objects(&f, id).await, live, "{third:?}");
    assert!(objects(&f, gone_id).await.is_empty(), "{third:?}");
    assert_eq!((third.deleted, third.dropped_tables_removed), (6 + 3, 1));
    assert_eq!(raw_rows(&f).await.len(), 1, "the table still reads");

    let fourth = collect_garbage(&f.catalog, &f.store, &past)
        .await
        .expect("gc");
    assert_eq!(fourth.deleted, 0, "{fourth:?}");
}

#[tokio::test]
async fn garbage_collection_spares_a_registered_open_write_past_the_grace() {
    let f = fixture("gcopen").await;
    let id = f.catalog.table(&f.table).await.expect("table").meta.id;
    let session = f
        .catalog
        .start_session("long-writer", Duration::from_secs(60))
        .await
        .expect("session");
    let started_at_ms = i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("ms");
    // Two writes that have not committed: one registered (a long sync batch), one not.
    let mut writes = Vec::new();
    for (key, name) in [(1, "registered"), (2, "unregistered")] {
        let mut writer = TableWriter::open(&f.catalog, &f.store, &f.table, WriteOptions::default())
            .await
            .expect("open");
        writer
            .write(&batch(
                &[v(key, key, ChangeOp::Insert, young(), Some(name))],
                false,
            ))
            .await
            .expect("write");
        writes.push(writer.finish().await.expect("finish"));
    }
    let registration = f
        .catalog
        .register_write(
            session.lease(),
            &OpenWrite {
                table_ids: vec![id],
                started_at_ms,
                writer: "test".into(),
            },
        )
        .await
        .expect("register");
    let registered = writes[0].extents[0].path.clone();
    let unregistered = writes[1].extents[0].path.clone();

    // A collection long after the grace, while the registered write is still open, spares
    // its extent (and, registered per table, the other one written since it started).
    let past = GcOptions {
        now: Some(SystemTime::now() + GcOptions::default().grace + Duration::from_secs(600)),
        ..GcOptions::default()
    };
    let summary = collect_garbage(&f.catalog, &f.store, &past)
        .await
        .expect("gc");
    assert_eq!(
        (summary.deleted, summary.kept_for_open_writes),
        (0, 2),
        "{summary:?}"
    );
    let files = objects(&f, id).await;
    assert!(files.contains(&registered) && files.contains(&unregistered));

    // Its commit lands with the registration, and the table reads its row.
    let state = f.catalog.table(&f.table).await.expect("table");
    let mut commit = CatalogCommit::tables(vec![
        writes[0]
            .table_commit(&f.store, &state)
            .await
            .expect("manifest"),
    ]);
    commit.open_write = Some(registration);
    assert!(matches!(
        f.catalog.commit(&commit).await.expect("commit"),
        CommitOutcome::Committed { .. }
    ));
    assert_eq!(raw_rows(&f).await.len(), 1);

    // With no registration left, the next collection takes the write that never committed.
    let summary = collect_garbage(&f.catalog, &f.store, &past)
        .await
        .expect("gc");
    assert_eq!(summary.kept_for_open_writes, 0, "{summary:?}");
    let files = objects(&f, id).await;
    assert!(files.contains(&registered), "committed: {files:?}");
    assert!(!files.contains(&unregistered), "garbage: {files:?}");
}

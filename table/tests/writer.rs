//! The table writer on a real catalog (embedded) and a local store: commits, concurrent
//! widening, and failed writes that leave nothing behind in the snapshot.

use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use kyma_catalog::{Catalog, CatalogLocation, Column, KymaType, TableOrigin, TableRef};
use kyma_table::{ExtentStore, Manifest, S3Options, StoreLocation, TableWriter, WriteOptions};
use object_store::ObjectStoreExt;

struct Fixture {
    catalog: Catalog,
    store: ExtentStore,
    table: TableRef,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("dir");
    let catalog = Catalog::open(&CatalogLocation::Embedded {
        path: dir.path().join("catalog.redb"),
    })
    .await
    .expect("catalog");
    let store = ExtentStore::open(
        &StoreLocation::File(dir.path().join("store")),
        &S3Options::default(),
    )
    .expect("store");
    let table = TableRef::new("kyma", "default", "events");
    catalog
        .create_table(
            &table,
            TableOrigin::Native,
            vec![Column::new("id", KymaType::Long).not_null()],
        )
        .await
        .expect("create");
    Fixture {
        catalog,
        store,
        table,
        _dir: dir,
    }
}

fn batch(ids: &[i64], extra: (&str, DataType)) -> RecordBatch {
    let values: Arc<dyn arrow::array::Array> = match extra.1 {
        DataType::Utf8 => Arc::new(StringArray::from(
            ids.iter().map(|i| format!("v{i}")).collect::<Vec<_>>(),
        )),
        _ => Arc::new(Float64Array::from(
            ids.iter().map(|i| *i as f64).collect::<Vec<_>>(),
        )),
    };
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new(extra.0, extra.1, true),
        ])),
        vec![Arc::new(Int64Array::from(ids.to_vec())), values],
    )
    .expect("batch")
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

#[tokio::test]
async fn concurrent_writers_with_different_new_columns_both_commit() {
    let f = fixture().await;
    let mut a = TableWriter::open(&f.catalog, &f.store, &f.table, WriteOptions::default())
        .await
        .expect("open a");
    let mut b = TableWriter::open(&f.catalog, &f.store, &f.table, WriteOptions::default())
        .await
        .expect("open b");
    a.write(&batch(&[1, 2], ("region", DataType::Utf8)))
        .await
        .expect("write a");
    b.write(&batch(&[3, 4, 5], ("latency", DataType::Float64)))
        .await
        .expect("write b");
    let (ra, rb) = tokio::join!(a.commit(), b.commit());
    assert_eq!(ra.expect("a commits").rows, 2);
    assert_eq!(rb.expect("b commits (rebased)").rows, 3);

    let state = f.catalog.table(&f.table).await.expect("table");
    let names: Vec<&str> = state
        .schema
        .value
        .columns
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(
        names.contains(&"region") && names.contains(&"latency"),
        "{names:?}"
    );
    assert_eq!(state.snapshot.value.version, 2, "two commits, neither lost");
    let manifest = manifest(&f).await;
    assert_eq!(manifest.extents.len(), 2);
    assert_eq!(manifest.rows(), 5);
    assert_eq!(manifest.schema_version, state.schema.value.version);
}

#[tokio::test]
async fn extents_record_row_counts_and_column_statistics() {
    let f = fixture().await;
    let mut w = TableWriter::open(
        &f.catalog,
        &f.store,
        &f.table,
        WriteOptions {
            extent_rows: 3,
            ..WriteOptions::default()
        },
    )
    .await
    .expect("open");
    w.write(&batch(&[5, 1, 9], ("region", DataType::Utf8)))
        .await
        .expect("write");
    w.write(&batch(&[20, 30], ("region", DataType::Utf8)))
        .await
        .expect("write");
    w.commit().await.expect("commit");
    let manifest = manifest(&f).await;
    let rows: Vec<u64> = manifest.extents.iter().map(|e| e.rows).collect();
    assert_eq!(rows, vec![3, 2], "a new extent starts after extent_rows");
    let id = &manifest.extents[0].columns["id"];
    assert_eq!(
        (id.min.clone(), id.max.clone(), id.null_count),
        (
            Some(kyma_table::StatValue::Int(1)),
            Some(kyma_table::StatValue::Int(9)),
            0
        )
    );
    let region = &manifest.extents[1].columns["region"];
    assert_eq!(region.min, Some(kyma_table::StatValue::Str("v20".into())));
    assert!(manifest.extents.iter().all(|e| e.bytes > 0));

    // The file itself records its schema version too.
    let bytes = f
        .store
        .object_store()
        .get(&object_store::path::Path::from(
            manifest.extents[0].path.as_str(),
        ))
        .await
        .expect("get extent")
        .bytes()
        .await
        .expect("read extent");
    let reader = parquet::file::reader::SerializedFileReader::new(bytes).expect("parquet");
    let kv = parquet::file::reader::FileReader::metadata(&reader)
        .file_metadata()
        .key_value_metadata()
        .cloned()
        .unwrap_or_default();
    assert!(
        kv.iter()
            .any(|e| e.key == kyma_table::extent::SCHEMA_VERSION_KEY
                && e.value.as_deref() == Some("2")),
        "{kv:?}"
    );
}

#[tokio::test]
async fn a_failed_write_leaves_the_snapshot_unchanged() {
    let f = fixture().await;
    let mut w = TableWriter::open(&f.catalog, &f.store, &f.table, WriteOptions::default())
        .await
        .expect("open");
    w.write(&batch(&[1], ("region", DataType::Utf8)))
        .await
        .expect("good batch");
    let bad = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, false)])),
        vec![Arc::new(StringArray::from(vec!["x"]))],
    )
    .expect("batch");
    let err = w
        .write(&bad)
        .await
        .expect_err("a string into a long column");
    assert!(err.to_string().contains("column `id` is long"), "{err}");
    assert!(!err.is_retryable());
    drop(w);
    let state = f.catalog.table(&f.table).await.expect("table");
    assert_eq!(state.snapshot.value.version, 0, "nothing committed");
    assert!(state.snapshot.value.manifest.is_none());
}

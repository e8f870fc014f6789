//! A sync batch older than the garbage collector's grace (a long copy, a huge source
//! transaction) keeps its files until it commits: it registers its write, the collector
//! spares it, and the commit lands. A batch whose registration lapsed with its worker's lease
//! is refused instead of committing files that may be gone. Real etcd and S3.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kyma_catalog::{
    Catalog, CatalogLocation, Column, ConnectorClaim, ConnectorSpec, KymaType, TableOrigin,
    TableRef, WorkerSession,
};
use kyma_cdc_worker::SyncError;
use kyma_cdc_worker::batch::{CursorFence, CursorValue, KeyIndexes, SyncBatch};
use kyma_table::synced::{ChangeOp, RowMeta, SyncedRowsBuilder, system_columns};
use kyma_table::{ExtentStore, GcOptions, KymaValueRef, WriteOptions, collect_garbage};
use kyma_test_harness::{Etcd, S3, unique_name};
use object_store::ObjectStoreExt;
use object_store::path::Path;

struct Fixture {
    catalog: Catalog,
    store: ExtentStore,
    table: TableRef,
    session: WorkerSession,
    claim: ConnectorClaim,
}

async fn fixture(name: &str) -> Fixture {
    let s3 = S3::shared();
    let bucket = s3.create_bucket(name).expect("bucket");
    let store =
        ExtentStore::from_object_store(Arc::new(s3.bucket(&bucket).build().expect("S3 store")));
    let catalog = Catalog::open(&CatalogLocation::Etcd {
        endpoints: vec![Etcd::shared().endpoint()],
        prefix: format!("/{}", unique_name(name)),
    })
    .await
    .expect("catalog");
    let spec: ConnectorSpec = serde_json::from_value(serde_json::json!({
        "name": "pg", "type": "postgres", "mode": "sync",
        "connection": {"url": "postgres://app@db.invalid/app"}}))
    .expect("spec");
    catalog.create_connector(&spec).await.expect("connector");
    let table = TableRef::new("pg", "public", "t");
    let columns = std::iter::once(Column::new("id", KymaType::Long))
        .chain(system_columns())
        .collect();
    let origin = TableOrigin::Synced {
        connector: "pg".into(),
    };
    catalog
        .create_table(&table, origin, columns)
        .await
        .expect("table");
    let session = catalog
        .start_session("w", Duration::from_secs(30))
        .await
        .expect("session");
    let claim = catalog
        .claim_connector(&session, "pg")
        .await
        .expect("claim")
        .expect("free");
    Fixture {
        catalog,
        store,
        table,
        session,
        claim,
    }
}

/// A batch with one row in a closed extent, registered as an open write at once.
async fn registered_batch(f: &Fixture) -> SyncBatch {
    let mut rows = SyncedRowsBuilder::new(vec![Column::new("id", KymaType::Long)]).expect("rows");
    let meta = RowMeta {
        pk: "1",
        op: ChangeOp::Insert,
        lsn: "0/1",
        event_at_micros: 0,
        seq: 1,
    };
    rows.push(&[Some(KymaValueRef::Long(1))], &meta)
        .expect("row");
    let mut batch = SyncBatch::new(&f.catalog, &f.store, WriteOptions::default());
    batch
        .write(&f.table, &rows.finish().expect("batch"))
        .await
        .expect("write");
    // A long batch closes an extent every million rows: this one's is in the store now.
    batch
        .writer(&f.table)
        .await
        .expect("writer")
        .seal()
        .await
        .expect("seal");
    let id = f.catalog.table(&f.table).await.expect("table").meta.id;
    assert!(batch.needs_registration(Duration::ZERO));
    batch
        .register(f.session.lease(), "w", &[id])
        .await
        .expect("register");
    assert!(!batch.needs_registration(Duration::ZERO));
    batch
}

fn fence(f: &Fixture) -> CursorFence {
    CursorFence {
        claim: f.claim.fence.clone(),
        cursor_revision: 0,
    }
}

fn cursor() -> CursorValue {
    CursorValue {
        position: "0/2".into(),
        next_seq: 2,
        source_id: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_collection_past_the_grace_leaves_an_open_batch_whose_commit_then_lands() {
    let f = fixture("openbatch").await;
    let batch = registered_batch(&f).await;

    let long_after = GcOptions {
        now: Some(SystemTime::now() + GcOptions::default().grace + Duration::from_secs(600)),
        ..GcOptions::default()
    };
    let summary = collect_garbage(&f.catalog, &f.store, &long_after)
        .await
        .expect("gc");
    assert_eq!(
        (summary.deleted, summary.kept_for_open_writes),
        (0, 1),
        "{summary:?}"
    );

    let committed = batch
        .commit(
            &mut fence(&f),
            &mut KeyIndexes::new(u64::MAX),
            cursor(),
            &BTreeMap::new(),
        )
        .await
        .expect("commit");
    assert_eq!(committed.rows.get(&f.table), Some(&1));
    let state = f.catalog.table(&f.table).await.expect("table");
    let manifest = kyma_table::writer::current_manifest(&f.store, &state)
        .await
        .expect("manifest");
    for extent in &manifest.extents {
        f.store
            .object_store()
            .head(&Path::from(extent.path.as_str()))
            .await
            .expect("the committed extent is in the store");
    }
    assert!(
        f.catalog.open_writes().await.expect("list").is_empty(),
        "the commit ended the registration"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_registration_lapsed_with_its_lease_is_not_committed() {
    let f = fixture("lapsedbatch").await;
    let batch = registered_batch(&f).await;
    let mut fence = fence(&f);
    let Fixture {
        catalog,
        session,
        table,
        ..
    } = f;
    // The lease lapses (revoked here, as a frozen worker's runs out): the collector no longer
    // spares the batch, so its commit must not land.
    session.close().await.expect("revoke");
    let outcome = batch
        .commit(
            &mut fence,
            &mut KeyIndexes::new(u64::MAX),
            cursor(),
            &BTreeMap::new(),
        )
        .await;
    assert!(
        matches!(outcome, Err(SyncError::Transient(ref m)) if m.contains("lapsed")),
        "{outcome:?}"
    );
    let state = catalog.table(&table).await.expect("table");
    assert_eq!(state.snapshot.value.manifest, None, "nothing committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_batch_gives_its_registration_up() {
    let f = fixture("abandonedbatch").await;
    let batch = registered_batch(&f).await;
    assert_eq!(f.catalog.open_writes().await.expect("list").len(), 1);
    drop(batch);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f.catalog.open_writes().await.expect("list").is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dropped batch still holds its registration"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

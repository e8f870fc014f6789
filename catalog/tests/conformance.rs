//! The catalog conformance suite: every case runs against etcd (a real server from the harness)
//! and against the embedded store. Backend-specific cases (etcd restart, embedded reopen and
//! single-process lock) follow at the end.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use kyma_catalog::kv::embedded::EmbeddedBackend;
use kyma_catalog::kv::etcd::EtcdBackend;
use kyma_catalog::kv::{KvBackend, Op, Txn};
use kyma_catalog::{
    Catalog, CatalogChange, CatalogCommit, CatalogError, CatalogEvent, Column, CommitOutcome,
    ConnectionSpec, ConnectorClaim, ConnectorMode, ConnectorSpec, DesiredState, KymaType,
    OpenWrite, SourceType, SyncPhase, TableCommit, TableOrigin, TableRef, TableState,
    TableSyncState, WorkerSession, table_key,
};
use kyma_test_harness::{Etcd, unique_name};

/// A catalog on a fresh namespace of one backend (keeps the embedded store's directory alive).
struct Fixture {
    catalog: Catalog,
    kv: Arc<dyn KvBackend>,
    _dir: Option<tempfile::TempDir>,
}

async fn etcd_fixture_on(endpoint: String) -> Fixture {
    let kv: Arc<dyn KvBackend> = Arc::new(
        EtcdBackend::connect(&[endpoint])
            .await
            .expect("connect to etcd"),
    );
    let prefix = format!("/{}", unique_name("conformance"));
    Fixture {
        catalog: Catalog::new(Arc::clone(&kv), &prefix),
        kv,
        _dir: None,
    }
}

async fn etcd_fixture() -> Fixture {
    etcd_fixture_on(Etcd::shared().endpoint()).await
}

async fn embedded_fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let kv: Arc<dyn KvBackend> = Arc::new(
        EmbeddedBackend::open(dir.path().join("catalog.redb"))
            .await
            .expect("open embedded"),
    );
    Fixture {
        catalog: Catalog::new(Arc::clone(&kv), ""),
        kv,
        _dir: Some(dir),
    }
}

fn table(name: &str) -> TableRef {
    TableRef::new("kyma", "default", name)
}

fn connector_spec(name: &str) -> ConnectorSpec {
    ConnectorSpec {
        name: name.into(),
        source_type: SourceType::Postgres,
        mode: ConnectorMode::Sync,
        connection: ConnectionSpec {
            url: "postgres://app@db.invalid:5432/app".into(),
            secret_ref: Some("pg_password".into()),
            tls: Default::default(),
            pool_size: 4,
            tls_ca_ref: None,
        },
        scope: Default::default(),
        retention: Default::default(),
    }
}

/// Commits `manifest` on top of the table's current state, rebasing on conflicts, and returns
/// the snapshot version it won.
async fn commit_until_won(
    catalog: &Catalog,
    t: &TableRef,
    manifest: &str,
    columns: &[Column],
) -> u64 {
    let base = catalog.table(t).await.expect("read table");
    commit_until_won_on(catalog, base, manifest, columns).await
}

/// Commits `manifest` on top of `base`, rebasing on conflicts; returns the version it won.
async fn commit_until_won_on(
    catalog: &Catalog,
    mut base: TableState,
    manifest: &str,
    columns: &[Column],
) -> u64 {
    loop {
        let change = TableCommit::on(&base, manifest, columns).expect("widen");
        let version = change.snapshot.version;
        match catalog
            .commit(&CatalogCommit::tables(vec![change]))
            .await
            .expect("commit")
        {
            CommitOutcome::Committed { .. } => return version,
            CommitOutcome::Conflict(conflict) => {
                base = conflict.tables.into_iter().next().expect("one table")
            }
        }
    }
}

/// Consumes watch changes until `done` holds for everything seen so far, or fails after a
/// generous deadline (a missing event must fail the test, not hang it).
async fn watch_until(
    stream: &mut (impl Stream<Item = Result<CatalogChange, CatalogError>> + Unpin),
    seen: &mut Vec<CatalogChange>,
    mut done: impl FnMut(&[CatalogChange]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done(seen) {
        let next = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("watch delivered in time");
        seen.push(next.expect("watch still open").expect("watch event"));
    }
}

/// Starts worker `worker`'s session (lease `ttl`) and claims `connector`, which must be free.
async fn session_and_claim(
    catalog: &Catalog,
    worker: &str,
    ttl: Duration,
    connector: &str,
) -> (WorkerSession, ConnectorClaim) {
    let session = catalog.start_session(worker, ttl).await.expect("session");
    let claim = catalog
        .claim_connector(&session, connector)
        .await
        .expect("claim")
        .expect("free to claim");
    (session, claim)
}

/// Two tables of `names` whose synced state lives in one shard.
fn same_shard_pair(names: &[TableRef]) -> (TableRef, TableRef) {
    let shard = |t: &TableRef| kyma_catalog::keys::sync_shard(&t.schema, &t.table);
    names
        .iter()
        .enumerate()
        .find_map(|(i, a)| {
            names[i + 1..]
                .iter()
                .find(|b| shard(b) == shard(a))
                .map(|b| (a.clone(), b.clone()))
        })
        .expect("300 tables in 64 shards share one")
}

mod cases {
    use super::*;

    pub async fn tables_are_created_read_listed_and_dropped(f: Fixture) {
        let c = &f.catalog;
        let hostile = TableRef::new("kyma", "we/ird", "x\"; DROP TABLE y; --");
        let columns = vec![
            Column::new("id", KymaType::Long).not_null(),
            Column::new("attributes", KymaType::Dynamic),
        ];
        let created = c
            .create_table(&hostile, TableOrigin::Native, columns.clone())
            .await
            .expect("create");
        assert_eq!(created.snapshot.value.version, 0);
        assert_eq!(created.schema.value.columns, columns);
        let again = c
            .create_table(&hostile, TableOrigin::Native, columns.clone())
            .await;
        assert!(
            matches!(again, Err(CatalogError::AlreadyExists(_))),
            "{again:?}"
        );
        c.create_table(
            &table("plain"),
            TableOrigin::Native,
            vec![Column::new("v", KymaType::Vector(3))],
        )
        .await
        .expect("create");

        let read = c.table(&hostile).await.expect("read");
        assert_eq!(read, created);
        let (_, listed) = c.list_tables(Some("kyma")).await.expect("list");
        let names: Vec<_> = listed.iter().map(|t| t.table.clone()).collect();
        assert_eq!(names, vec![table("plain"), hostile.clone()]);

        c.drop_table(&hostile).await.expect("drop");
        assert!(matches!(
            c.table(&hostile).await,
            Err(CatalogError::NotFound(_))
        ));
        assert!(matches!(
            c.drop_table(&hostile).await,
            Err(CatalogError::NotFound(_))
        ));
        let bad = c
            .create_table(&TableRef::new("kyma", "", "t"), TableOrigin::Native, vec![])
            .await;
        assert!(
            matches!(bad, Err(CatalogError::InvalidArgument { ref field, .. }) if field == "schema"),
            "{bad:?}"
        );
    }

    pub async fn racing_committers_win_each_version_exactly_once(f: Fixture) {
        const WRITERS: usize = 6;
        const WINS_EACH: usize = 8;
        let t = table("raced");
        f.catalog
            .create_table(
                &t,
                TableOrigin::Native,
                vec![Column::new("id", KymaType::Long)],
            )
            .await
            .expect("create");
        let mut tasks = Vec::new();
        for writer in 0..WRITERS {
            let catalog = f.catalog.clone();
            let t = t.clone();
            tasks.push(tokio::spawn(async move {
                let mut won = Vec::new();
                for i in 0..WINS_EACH {
                    won.push((
                        commit_until_won(&catalog, &t, &format!("m/{writer}/{i}"), &[]).await,
                        format!("m/{writer}/{i}"),
                    ));
                }
                won
            }));
        }
        let mut by_version = BTreeMap::new();
        for task in tasks {
            for (version, manifest) in task.await.expect("writer task") {
                assert!(
                    by_version.insert(version, manifest).is_none(),
                    "version {version} won twice"
                );
            }
        }
        let total = (WRITERS * WINS_EACH) as u64;
        assert_eq!(
            by_version.keys().copied().collect::<Vec<_>>(),
            (1..=total).collect::<Vec<_>>(),
            "no lost update"
        );
        let last = f.catalog.table(&t).await.expect("read");
        assert_eq!(last.snapshot.value.version, total);
        assert_eq!(
            last.snapshot.value.manifest.as_ref(),
            by_version.get(&total)
        );
    }

    pub async fn concurrent_schema_widenings_both_land(f: Fixture) {
        let t = table("widened");
        let base = f
            .catalog
            .create_table(
                &t,
                TableOrigin::Native,
                vec![Column::new("id", KymaType::Long).not_null()],
            )
            .await
            .expect("create");
        // Two writers widen from the same base; the CAS loser rebases and both land.
        let a =
            TableCommit::on(&base, "m/a", &[Column::new("a", KymaType::String)]).expect("widen a");
        let b =
            TableCommit::on(&base, "m/b", &[Column::new("b", KymaType::Dynamic)]).expect("widen b");
        let (a, b) = (
            CatalogCommit::tables(vec![a]),
            CatalogCommit::tables(vec![b]),
        );
        let (ra, rb) = tokio::join!(f.catalog.commit(&a), f.catalog.commit(&b));
        let outcomes = [ra.expect("commit a"), rb.expect("commit b")];
        let lost = outcomes
            .iter()
            .filter(|o| matches!(o, CommitOutcome::Conflict(_)))
            .count();
        assert_eq!(
            lost, 1,
            "exactly one of two racing commits from one base wins: {outcomes:?}"
        );
        for (outcome, (manifest, column)) in outcomes.iter().zip([("m/a", "a"), ("m/b", "b")]) {
            if let CommitOutcome::Conflict(conflict) = outcome {
                let ty = if column == "a" {
                    KymaType::String
                } else {
                    KymaType::Dynamic
                };
                commit_until_won_on(
                    &f.catalog,
                    conflict.tables[0].clone(),
                    manifest,
                    &[Column::new(column, ty)],
                )
                .await;
            }
        }
        let now = f.catalog.table(&t).await.expect("read");
        let names: Vec<&str> = now
            .schema
            .value
            .columns
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert!(
            names.contains(&"a") && names.contains(&"b") && names[0] == "id",
            "{names:?}"
        );
        assert_eq!(now.schema.value.version, 3);
        assert!(
            now.schema
                .value
                .columns
                .iter()
                .filter(|c| c.name != "id")
                .all(|c| c.nullable),
            "added columns are nullable"
        );
        let history: Vec<u64> = f
            .catalog
            .schema_history(&t)
            .await
            .expect("history")
            .iter()
            .map(|s| s.version)
            .collect();
        assert_eq!(history, vec![1, 2, 3]);

        // The dedicated widening call races too, and both land.
        let (x, y) = (
            [Column::new("x", KymaType::Int)],
            [Column::new("y", KymaType::Timestamp)],
        );
        let (x, y) = tokio::join!(
            f.catalog.widen_schema(&t, &x),
            f.catalog.widen_schema(&t, &y)
        );
        x.expect("widen x");
        y.expect("widen y");
        let schema = f.catalog.table(&t).await.expect("read").schema.value;
        assert!(schema.column("x").is_some() && schema.column("y").is_some());
        assert_eq!(schema.version, 5);

        // Narrowing or retyping is refused with the column named; nothing changes.
        let refused = f
            .catalog
            .widen_schema(&t, &[Column::new("id", KymaType::Int)])
            .await;
        assert!(
            matches!(&refused, Err(CatalogError::SchemaChange { reason, .. }) if reason.contains("`id` is long")),
            "{refused:?}"
        );
        // Loosening NOT NULL is a widening.
        let loosened = f
            .catalog
            .widen_schema(&t, &[Column::new("id", KymaType::Long)])
            .await
            .expect("loosen");
        assert!(loosened.value.column("id").is_some_and(|c| c.nullable));
    }

    pub async fn a_multi_table_commit_is_all_or_nothing(f: Fixture) {
        let (t1, t2) = (table("orders"), table("users"));
        for t in [&t1, &t2] {
            f.catalog
                .create_table(
                    t,
                    TableOrigin::Native,
                    vec![Column::new("id", KymaType::Long)],
                )
                .await
                .expect("create");
        }
        let (_, states) = f
            .catalog
            .tables(&[t1.clone(), t2.clone()])
            .await
            .expect("consistent read");
        let both = CatalogCommit::tables(vec![
            TableCommit::on(&states[0], "m/orders/1", &[]).expect("on"),
            TableCommit::on(&states[1], "m/users/1", &[]).expect("on"),
        ]);
        let CommitOutcome::Committed { revision } = f.catalog.commit(&both).await.expect("commit")
        else {
            panic!("first commit conflicts")
        };
        let (_, after) = f
            .catalog
            .tables(&[t1.clone(), t2.clone()])
            .await
            .expect("read");
        assert!(
            after
                .iter()
                .all(|t| t.snapshot.mod_revision == revision && t.snapshot.value.version == 1)
        );

        // Someone else advances t2 only; a commit built on the old states touches neither.
        commit_until_won(&f.catalog, &t2, "m/users/other", &[]).await;
        let stale = CatalogCommit::tables(vec![
            TableCommit::on(&after[0], "m/orders/2", &[]).expect("on"),
            TableCommit::on(&after[1], "m/users/2", &[]).expect("on"),
        ]);
        let CommitOutcome::Conflict(conflict) = f.catalog.commit(&stale).await.expect("commit")
        else {
            panic!("stale commit landed")
        };
        assert_eq!(
            conflict.tables[1].snapshot.value.manifest.as_deref(),
            Some("m/users/other"),
            "conflict returns current values"
        );
        let orders = f.catalog.table(&t1).await.expect("read");
        assert_eq!(
            orders.snapshot.value.manifest.as_deref(),
            Some("m/orders/1"),
            "the other table was not half-applied"
        );
    }

    pub async fn a_retried_commit_applies_once(f: Fixture) {
        let t = table("retried");
        let base = f
            .catalog
            .create_table(&t, TableOrigin::Native, vec![])
            .await
            .expect("create");
        let commit = CatalogCommit::tables(vec![TableCommit::on(&base, "m/1", &[]).expect("on")]);
        let first = f.catalog.commit(&commit).await.expect("first");
        // The same commit again (as after a lost answer): recognised, not applied twice.
        let second = f.catalog.commit(&commit).await.expect("retry");
        assert_eq!(first, second);
        assert_eq!(
            f.catalog
                .table(&t)
                .await
                .expect("read")
                .snapshot
                .value
                .version,
            1
        );
    }

    pub async fn a_sync_commit_over_hundreds_of_tables_lands_at_once(f: Fixture) {
        const TABLES: usize = 300;
        let c = &f.catalog;
        c.create_connector(&connector_spec("pg_wide"))
            .await
            .expect("connector");
        let names: Vec<TableRef> = (0..TABLES)
            .map(|i| TableRef::new("pg_wide", "public", format!("t{i}")))
            .collect();
        for t in &names {
            let state = c
                .create_table(
                    t,
                    TableOrigin::Synced {
                        connector: "pg_wide".into(),
                    },
                    vec![Column::new("id", KymaType::Long)],
                )
                .await
                .expect("synced table");
            assert_eq!(state.sync, Some(TableSyncState::default()), "{t}");
        }
        let (_session, claim) =
            session_and_claim(c, "wide", Duration::from_secs(10), "pg_wide").await;
        let revision = c.ping().await.expect("ping") + 1;
        let mut watch = Box::pin(c.watch(revision).await.expect("watch"));
        let (_, states) = c.tables(&names).await.expect("read");
        let streaming = TableSyncState {
            phase: SyncPhase::Streaming,
            since: Some("0/10".into()),
            ..TableSyncState::default()
        };
        let tables = states
            .iter()
            .map(|s| {
                TableCommit::on(s, format!("m/{}", s.table.table), &[])
                    .expect("on")
                    .with_sync(streaming.clone())
            })
            .collect();
        let mut commit = CatalogCommit::sync(&claim, "0/10", tables);
        if let Some(cursor) = commit.cursor.as_mut() {
            cursor.next_seq = 7;
            cursor.source_id = Some("slot@0/10".into());
        }
        let CommitOutcome::Committed { revision } = c.commit(&commit).await.expect("commit") else {
            panic!("the first commit conflicts");
        };
        let (_, after) = c.list_tables(Some("pg_wide")).await.expect("list");
        assert_eq!(after.len(), TABLES);
        for state in &after {
            assert_eq!(state.snapshot.value.commit_id, Some(commit.commit_id));
            assert_eq!(state.snapshot.value.version, 1);
            assert_eq!(state.sync.as_ref(), Some(&streaming), "{}", state.table);
        }
        let cursor = c
            .connector("pg_wide")
            .await
            .expect("read")
            .cursor
            .expect("cursor");
        assert_eq!(
            (cursor.value.next_seq, cursor.value.source_id.as_deref()),
            (7, Some("slot@0/10"))
        );
        // One watch change reports every table the commit touched.
        let mut seen = Vec::new();
        watch_until(&mut watch, &mut seen, |s| {
            s.iter().any(|ch| ch.revision == revision)
        })
        .await;
        let change = seen
            .iter()
            .find(|ch| ch.revision == revision)
            .expect("the commit");
        for t in &names {
            assert!(
                change
                    .events
                    .contains(&CatalogEvent::TableChanged(t.clone())),
                "{t} missing from {:?}",
                change.events
            );
        }

        // A compaction-like commit of one table (no cursor) and a sync commit of another
        // table of the same shard: the later one rebases and neither loses the other's entry.
        let (a, b) = same_shard_pair(&names);
        let (_, base) = c.tables(&[a.clone(), b.clone()]).await.expect("read");
        let compaction = CatalogCommit::tables(vec![
            TableCommit::on(&base[0], "m/compacted", &[]).expect("on"),
        ]);
        assert!(matches!(
            c.commit(&compaction).await.expect("compaction"),
            CommitOutcome::Committed { .. }
        ));
        let claim = ConnectorClaim {
            cursor: c.connector("pg_wide").await.expect("read").cursor,
            ..claim
        };
        let stale = CatalogCommit::sync(
            &claim,
            "0/20",
            vec![TableCommit::on(&base[1], "m/b/2", &[]).expect("on")],
        );
        let CommitOutcome::Conflict(conflict) = c.commit(&stale).await.expect("commit") else {
            panic!("a commit on a stale shard landed");
        };
        let rebased = CatalogCommit::sync(
            &claim,
            "0/20",
            vec![TableCommit::on(&conflict.tables[0], "m/b/2", &[]).expect("on")],
        );
        assert!(matches!(
            c.commit(&rebased).await.expect("rebased"),
            CommitOutcome::Committed { .. }
        ));
        let (_, now) = c.tables(&[a.clone(), b.clone()]).await.expect("read");
        assert_eq!(
            now[0].snapshot.value.manifest.as_deref(),
            Some("m/compacted")
        );
        assert_eq!(now[1].snapshot.value.manifest.as_deref(), Some("m/b/2"));
        assert_eq!(
            now[1].sync.as_ref(),
            Some(&streaming),
            "kept by TableCommit::on"
        );

        // Dropping one synced table leaves its shard's other tables.
        c.drop_table(&a).await.expect("drop");
        assert!(matches!(c.table(&a).await, Err(CatalogError::NotFound(_))));
        assert_eq!(
            c.table(&b)
                .await
                .expect("read")
                .snapshot
                .value
                .manifest
                .as_deref(),
            Some("m/b/2")
        );
    }

    pub async fn resync_requests_count_up_per_table(f: Fixture) {
        let c = &f.catalog;
        assert!(matches!(
            c.request_resync("nobody", "public.users").await,
            Err(CatalogError::NotFound(_))
        ));
        c.create_connector(&connector_spec("pg_resync"))
            .await
            .expect("connector");
        let users = table_key("public", "users");
        let dotted = table_key("app", "orders.2024");
        assert_eq!(dotted, "app.\"orders.2024\"");
        assert_eq!(c.request_resync("pg_resync", &users).await.expect("1"), 1);
        assert_eq!(c.request_resync("pg_resync", &users).await.expect("2"), 2);
        assert_eq!(c.request_resync("pg_resync", &dotted).await.expect("1"), 1);
        let state = c.connector("pg_resync").await.expect("read");
        assert_eq!(state.resync, BTreeMap::from([(users, 2), (dotted, 1)]));
    }

    pub async fn an_open_write_lives_with_its_lease_and_a_lapsed_one_cannot_commit(f: Fixture) {
        let c = &f.catalog;
        let t = table("long_write");
        let base = c
            .create_table(&t, TableOrigin::Native, vec![])
            .await
            .expect("create");
        let write = OpenWrite {
            table_ids: vec![base.meta.id],
            started_at_ms: 1,
            writer: "w".into(),
        };
        let session = c
            .start_session("writer", Duration::from_secs(10))
            .await
            .expect("session");
        let registration = c
            .register_write(session.lease(), &write)
            .await
            .expect("register");
        assert_eq!(c.open_writes().await.expect("list"), vec![write.clone()]);
        let mut commit =
            CatalogCommit::tables(vec![TableCommit::on(&base, "m/1", &[]).expect("on")]);
        commit.open_write = Some(registration);
        assert!(matches!(
            c.commit(&commit).await.expect("commit"),
            CommitOutcome::Committed { .. }
        ));
        assert!(
            c.open_writes().await.expect("list").is_empty(),
            "the commit ends it"
        );

        // A registration whose lease is gone: its commit is refused, nothing changes.
        let registration = c
            .register_write(session.lease(), &write)
            .await
            .expect("register");
        session.close().await.expect("revoke");
        assert!(
            c.open_writes().await.expect("list").is_empty(),
            "gone with the lease"
        );
        let state = c.table(&t).await.expect("read");
        let mut late =
            CatalogCommit::tables(vec![TableCommit::on(&state, "m/2", &[]).expect("on")]);
        late.open_write = Some(registration);
        assert!(matches!(
            c.commit(&late).await,
            Err(CatalogError::WriteLapsed(_))
        ));
        assert_eq!(
            c.table(&t)
                .await
                .expect("read")
                .snapshot
                .value
                .manifest
                .as_deref(),
            Some("m/1")
        );
    }

    pub async fn connectors_are_registered_without_secrets_and_managed(f: Fixture) {
        let c = &f.catalog;
        let spec = connector_spec("pg_prod");
        c.create_connector(&spec).await.expect("create");
        assert!(matches!(
            c.create_connector(&spec).await,
            Err(CatalogError::AlreadyExists(_))
        ));
        let mut leaky = connector_spec("leaky");
        leaky.connection.url = "postgres://app:hunter2@db:5432/app".into();
        let refused = c
            .create_connector(&leaky)
            .await
            .expect_err("a password in the URL is refused");
        assert!(
            refused.to_string().contains("connection.url")
                && !refused.to_string().contains("hunter2"),
            "{refused}"
        );

        let state = c.connector("pg_prod").await.expect("get");
        assert_eq!(state.spec, spec);
        assert_eq!(state.desired, DesiredState::Running);
        assert_eq!(
            (state.epoch, state.holder.clone(), state.cursor.clone()),
            (0, None, None)
        );
        c.set_desired_state("pg_prod", DesiredState::Paused)
            .await
            .expect("pause");
        assert_eq!(
            c.connector("pg_prod").await.expect("get").desired,
            DesiredState::Paused
        );
        assert_eq!(c.list_connectors().await.expect("list").len(), 1);
        c.delete_connector("pg_prod").await.expect("delete");
        assert!(matches!(
            c.connector("pg_prod").await,
            Err(CatalogError::NotFound(_))
        ));
        assert!(matches!(
            c.set_desired_state("pg_prod", DesiredState::Running).await,
            Err(CatalogError::NotFound(_))
        ));
    }

    pub async fn a_lapsed_lease_is_taken_over_and_the_old_worker_is_fenced(f: Fixture) {
        let c = &f.catalog;
        c.create_connector(&connector_spec("pg_sync"))
            .await
            .expect("create connector");
        let t = TableRef::new("pg_sync", "public", "users");
        c.create_table(
            &t,
            TableOrigin::Synced {
                connector: "pg_sync".into(),
            },
            vec![Column::new("id", KymaType::Long)],
        )
        .await
        .expect("table");

        let (worker_a, claim_a) =
            session_and_claim(c, "worker-a", Duration::from_secs(2), "pg_sync").await;
        assert_eq!(claim_a.fence.epoch, 1);
        let state = c.table(&t).await.expect("read");
        let first = CatalogCommit::sync(
            &claim_a,
            "0/16B3748",
            vec![TableCommit::on(&state, "m/a/1", &[]).expect("on")],
        );
        assert!(matches!(
            c.commit(&first).await.expect("commit"),
            CommitOutcome::Committed { .. }
        ));

        // While A is alive, B cannot claim.
        let worker_b = c
            .start_session("worker-b", Duration::from_secs(2))
            .await
            .expect("session b");
        assert_eq!(
            c.claim_connector(&worker_b, "pg_sync")
                .await
                .expect("claim"),
            None
        );

        // A stops renewing (as a crashed or paused process); its lease lapses.
        let revision = c.ping().await.expect("ping");
        let mut watch = Box::pin(c.watch(revision + 1).await.expect("watch"));
        drop(worker_a);
        let mut seen = Vec::new();
        let catalog = c.clone();
        let mut holder_gone = false;
        while !holder_gone {
            watch_until(&mut watch, &mut seen, |s| {
                s.iter().any(|ch| {
                    ch.events
                        .contains(&CatalogEvent::ConnectorChanged("pg_sync".into()))
                })
            })
            .await;
            holder_gone = catalog
                .connector("pg_sync")
                .await
                .expect("read")
                .holder
                .is_none();
            seen.clear();
        }

        // B takes over with a higher epoch, resuming from A's committed cursor.
        let claim_b = c
            .claim_connector(&worker_b, "pg_sync")
            .await
            .expect("claim")
            .expect("lapsed lease is free");
        assert_eq!(claim_b.fence.epoch, 2);
        assert_eq!(
            claim_b
                .cursor
                .as_ref()
                .map(|cur| cur.value.position.as_str()),
            Some("0/16B3748")
        );

        // A's fenced check before a destructive step at the source fails; B's passes.
        assert!(matches!(
            c.check_claim(&claim_a.fence).await,
            Err(CatalogError::Fenced {
                held: 1,
                current: 2,
                ..
            })
        ));
        c.check_claim(&claim_b.fence)
            .await
            .expect("B holds the claim");

        // A (still running, unaware) tries to commit: fenced, and nothing changes.
        let state = c.table(&t).await.expect("read");
        let zombie = CatalogCommit::sync(
            &claim_a,
            "0/FFFFFFF",
            vec![TableCommit::on(&state, "m/a/2", &[]).expect("on")],
        );
        let fenced = c.commit(&zombie).await;
        assert!(
            matches!(
                fenced,
                Err(CatalogError::Fenced {
                    held: 1,
                    current: 2,
                    ..
                })
            ),
            "{fenced:?}"
        );
        assert!(!fenced.as_ref().expect_err("fenced").is_retryable());
        assert!(matches!(
            c.put_status(&claim_a, &Default::default()).await,
            Err(CatalogError::Fenced { .. })
        ));

        // B commits from where A left off.
        let next = CatalogCommit::sync(
            &claim_b,
            "0/16B3800",
            vec![TableCommit::on(&state, "m/b/1", &[]).expect("on")],
        );
        assert!(matches!(
            c.commit(&next).await.expect("commit"),
            CommitOutcome::Committed { .. }
        ));
        let connector = c.connector("pg_sync").await.expect("read");
        let cursor = connector.cursor.expect("cursor");
        assert_eq!(
            (
                cursor.value.position.as_str(),
                cursor.value.epoch,
                connector.epoch
            ),
            ("0/16B3800", 2, 2)
        );
        assert_eq!(
            connector.holder.map(|h| h.worker_id),
            Some("worker-b".into())
        );

        // A closed session releases at once.
        worker_b.close().await.expect("close");
        let (_worker_c, claim_c) =
            session_and_claim(c, "worker-c", Duration::from_secs(2), "pg_sync").await;
        assert_eq!(claim_c.fence.epoch, 3);
    }

    pub async fn a_watch_sees_every_commit_in_order(f: Fixture) {
        let c = &f.catalog;
        let t = table("watched");
        let start = c.ping().await.expect("ping") + 1;
        let mut watch = Box::pin(c.watch(start).await.expect("watch"));
        c.create_table(&t, TableOrigin::Native, vec![])
            .await
            .expect("create");
        let mut revisions = Vec::new();
        for i in 0..5 {
            let state = c.table(&t).await.expect("read");
            let commit = CatalogCommit::tables(vec![
                TableCommit::on(&state, format!("m/{i}"), &[]).expect("on"),
            ]);
            let CommitOutcome::Committed { revision } = c.commit(&commit).await.expect("commit")
            else {
                panic!("conflict")
            };
            revisions.push(revision);
        }
        c.create_connector(&connector_spec("watched_conn"))
            .await
            .expect("connector");
        let mut seen = Vec::new();
        watch_until(&mut watch, &mut seen, |s| {
            s.iter().any(|ch| {
                ch.events
                    .contains(&CatalogEvent::ConnectorChanged("watched_conn".into()))
            })
        })
        .await;
        let table_revisions: Vec<i64> = seen
            .iter()
            .filter(|ch| ch.events.contains(&CatalogEvent::TableChanged(t.clone())))
            .map(|ch| ch.revision)
            .collect();
        assert_eq!(
            table_revisions[1..],
            revisions[..],
            "creation, then each commit, in order"
        );
        assert!(seen.windows(2).all(|w| w[0].revision < w[1].revision));

        // A watch may start in the past: it replays from there.
        let mut replay = Box::pin(c.watch(revisions[2]).await.expect("watch from the past"));
        let mut replayed = Vec::new();
        watch_until(&mut replay, &mut replayed, |s| s.len() >= 3).await;
        assert_eq!(
            replayed
                .iter()
                .map(|ch| ch.revision)
                .take(3)
                .collect::<Vec<_>>(),
            revisions[2..]
        );

        c.drop_table(&t).await.expect("drop");
        watch_until(&mut watch, &mut seen, |s| {
            s.iter()
                .any(|ch| ch.events.contains(&CatalogEvent::TableDropped(t.clone())))
        })
        .await;
    }

    pub async fn leased_keys_vanish_with_their_lease(f: Fixture) {
        let kv = &f.kv;
        let lease = kv
            .grant_lease(Duration::from_secs(30))
            .await
            .expect("grant");
        let key = format!("/{}/leased", unique_name("lease")).into_bytes();
        kv.txn(Txn {
            on_success: vec![Op::put_with_lease(key.clone(), b"v".to_vec(), lease)],
            ..Txn::default()
        })
        .await
        .expect("put");
        kv.keep_alive(lease).await.expect("renew a live lease");
        assert!(
            kv.get_many(std::slice::from_ref(&key))
                .await
                .expect("get")
                .1[0]
                .is_some()
        );
        kv.revoke_lease(lease).await.expect("revoke");
        assert!(
            kv.get_many(std::slice::from_ref(&key))
                .await
                .expect("get")
                .1[0]
                .is_none(),
            "revoked lease took its key"
        );
        assert!(matches!(
            kv.keep_alive(lease).await,
            Err(CatalogError::LeaseExpired(_))
        ));
        let put = kv
            .txn(Txn {
                on_success: vec![Op::put_with_lease(key, b"v".to_vec(), lease)],
                ..Txn::default()
            })
            .await;
        assert!(put.is_err(), "a put under a dead lease is refused");
    }
}

macro_rules! conformance {
    ($backend:ident, $fixture:ident) => {
        mod $backend {
            use super::*;
            conformance!(@cases $fixture;
                tables_are_created_read_listed_and_dropped,
                racing_committers_win_each_version_exactly_once,
                concurrent_schema_widenings_both_land,
                a_multi_table_commit_is_all_or_nothing,
                a_retried_commit_applies_once,
                connectors_are_registered_without_secrets_and_managed,
                a_lapsed_lease_is_taken_over_and_the_old_worker_is_fenced,
                a_watch_sees_every_commit_in_order,
                leased_keys_vanish_with_their_lease,
                a_sync_commit_over_hundreds_of_tables_lands_at_once,
                resync_requests_count_up_per_table,
                an_open_write_lives_with_its_lease_and_a_lapsed_one_cannot_commit,
            );
        }
    };
    (@cases $fixture:ident; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                cases::$case($fixture().await).await;
            }
        )*
    };
}

conformance!(etcd, etcd_fixture);
conformance!(embedded, embedded_fixture);

// ----- embedded only -------------------------------------------------------------------------

#[tokio::test]
async fn embedded_data_survives_closing_and_reopening_the_store() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("catalog.redb");
    let t = table("durable");
    {
        let catalog = Catalog::new(
            Arc::new(EmbeddedBackend::open(&path).await.expect("open")),
            "",
        );
        let state = catalog
            .create_table(
                &t,
                TableOrigin::Native,
                vec![Column::new("id", KymaType::Long)],
            )
            .await
            .expect("create");
        let commit = CatalogCommit::tables(vec![
            TableCommit::on(&state, "m/1", &[Column::new("extra", KymaType::String)]).expect("on"),
        ]);
        catalog.commit(&commit).await.expect("commit");
        catalog
            .create_connector(&connector_spec("kept"))
            .await
            .expect("connector");
        session_and_claim(&catalog, "w", Duration::from_secs(60), "kept").await;
    }
    // Everything of the first open is dropped here: the file lock is released with it.
    let reopened = Catalog::new(
        Arc::new(EmbeddedBackend::open(&path).await.expect("reopen")),
        "",
    );
    let state = reopened.table(&t).await.expect("table survived");
    assert_eq!(state.snapshot.value.manifest.as_deref(), Some("m/1"));
    assert!(state.schema.value.column("extra").is_some());
    let connector = reopened
        .connector("kept")
        .await
        .expect("connector survived");
    assert_eq!(connector.epoch, 1, "the fencing epoch survives");
    assert_eq!(
        connector.holder, None,
        "a holder from the previous process is gone with its lease"
    );
}

#[tokio::test]
async fn a_second_open_of_the_embedded_store_is_refused_clearly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("catalog.redb");
    let _first = EmbeddedBackend::open(&path).await.expect("open");
    let second = EmbeddedBackend::open(&path)
        .await
        .expect_err("second open must fail");
    assert!(
        matches!(second, CatalogError::AlreadyOpen { .. }),
        "{second:?}"
    );
    assert!(
        second
            .to_string()
            .contains("already open in another process"),
        "{second}"
    );
}

// ----- etcd only -----------------------------------------------------------------------------

/// The version at which the entry `mine` landed, if `state`'s manifest (each version's entry
/// appended to its base's) holds it.
fn landed_at(state: &TableState, mine: &str) -> Option<u64> {
    let manifest = state.snapshot.value.manifest.as_deref()?;
    let at = manifest.split('|').position(|entry| entry == mine)?;
    u64::try_from(at).ok().map(|at| at + 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_restart_mid_run_loses_and_half_applies_nothing() {
    let etcd = Arc::new(Etcd::start().expect("private etcd"));
    let f = etcd_fixture_on(etcd.endpoint()).await;
    let catalog = f.catalog.clone().with_retry_for(Duration::from_secs(60));
    let (t1, t2) = (table("r1"), table("r2"));
    for t in [&t1, &t2] {
        catalog
            .create_table(t, TableOrigin::Native, vec![])
            .await
            .expect("create");
    }
    let start = catalog.ping().await.expect("ping") + 1;
    let mut watch = Box::pin(catalog.watch(start).await.expect("watch"));

    // Writers commit to both tables at once, retrying through the outage. Like real manifests
    // (each lists every live extent), each commit's manifest is its base's with the writer's
    // own entry appended, so the last one holds every version's entry in order. Before each
    // attempt a writer checks, as a table writer does, whether an earlier attempt landed with
    // its answer lost in the outage: the catalog recognises its own retry only while no other
    // commit came in between, and answers a conflict otherwise.
    const WRITERS: usize = 3;
    const COMMITS_EACH: usize = 12;
    let committed = Arc::new(tokio::sync::Semaphore::new(0));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let catalog = catalog.clone();
        let (t1, t2) = (t1.clone(), t2.clone());
        let committed = Arc::clone(&committed);
        tasks.push(tokio::spawn(async move {
            let mut won = Vec::new();
            for i in 0..COMMITS_EACH {
                let mine = format!("m/{w}/{i}");
                loop {
                    let states = match catalog.tables(&[t1.clone(), t2.clone()]).await {
                        Ok((_, states)) => states,
                        Err(e) if e.is_retryable() => {
                            tokio::time::sleep(Duration::from_millis(50)).await; // backoff while etcd is down
                            continue;
                        }
                        Err(e) => panic!("read: {e}"),
                    };
                    // An earlier attempt may have landed, its answer lost in the outage.
                    if let Some(version) = landed_at(&states[0], &mine) {
                        won.push((version, mine.clone()));
                        committed.add_permits(1);
                        break;
                    }
                    let manifest = match &states[0].snapshot.value.manifest {
                        Some(base) => format!("{base}|{mine}"),
                        None => mine.clone(),
                    };
                    let commit = CatalogCommit::tables(vec![
                        TableCommit::on(&states[0], &manifest, &[]).expect("on"),
                        TableCommit::on(&states[1], &manifest, &[]).expect("on"),
                    ]);
                    match catalog.commit(&commit).await {
                        Ok(CommitOutcome::Committed { .. }) => {
                            won.push((commit.tables[0].snapshot.version, mine.clone()));
                            committed.add_permits(1);
                            break;
                        }
                        // Read again: the next turn finds the entry if this commit landed.
                        Ok(CommitOutcome::Conflict(_)) => continue,
                        Err(e) if e.is_retryable() => {
                            tokio::time::sleep(Duration::from_millis(50)).await; // backoff while etcd is down
                            continue;
                        }
                        Err(e) => panic!("commit: {e}"),
                    }
                }
            }
            won
        }));
    }
    // Restart etcd once a third of the commits have landed.
    let third = u32::try_from(WRITERS * COMMITS_EACH / 3).expect("small");
    committed
        .acquire_many(third)
        .await
        .expect("semaphore")
        .forget();
    etcd.restart().expect("restart etcd");

    let mut by_version = BTreeMap::new();
    for task in tasks {
        for (version, manifest) in task.await.expect("writer") {
            assert!(
                by_version.insert(version, manifest).is_none(),
                "version {version} won twice"
            );
        }
    }
    let total = (WRITERS * COMMITS_EACH) as u64;
    assert_eq!(
        by_version.keys().copied().collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>()
    );
    let (_, states) = catalog
        .tables(&[t1.clone(), t2.clone()])
        .await
        .expect("read");
    for state in &states {
        assert_eq!(
            state.snapshot.value.version, total,
            "both tables advanced together"
        );
        let entries: Vec<&str> = state
            .snapshot
            .value
            .manifest
            .as_deref()
            .map_or_else(Vec::new, |m| m.split('|').collect());
        assert_eq!(
            entries,
            by_version.values().map(String::as_str).collect::<Vec<_>>(),
            "every commit's entry once, at the version its writer was told"
        );
    }
    // The watch reconnected by itself and saw every commit exactly once, in order.
    let mut seen = Vec::new();
    watch_until(&mut watch, &mut seen, |s| {
        s.iter()
            .filter(|ch| ch.events.contains(&CatalogEvent::TableChanged(t1.clone())))
            .count() as u64
            >= total
    })
    .await;
    let revisions: Vec<i64> = seen.iter().map(|ch| ch.revision).collect();
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]),
        "in order, no repeats: {revisions:?}"
    );
    assert!(
        seen.iter().all(
            |ch| ch.events.contains(&CatalogEvent::TableChanged(t1.clone()))
                == ch.events.contains(&CatalogEvent::TableChanged(t2.clone()))
        ),
        "every revision changed both tables or neither"
    );
}

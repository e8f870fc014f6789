//! The sync checker: compares a source table with kyma's synced table row by row, and
//! helpers to run a CDC worker process against real etcd and S3 ([`Deployment`]), with a
//! Postgres source for the Postgres-only tests ([`SyncSetup`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::util::display::array_value_to_string;
use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::TryStreamExt;
use kyma_catalog::{Catalog, CatalogLocation, ConnectorSpec, TableRef};
use kyma_table::ExtentStore;
use kyma_table::synced;
use kyma_table::writer::{conform_batch, current_manifest};
use kyma_test_harness::{Etcd, Postgres, S3, free_port, unique_name};
use object_store::ObjectStoreExt;
use object_store::path::Path;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tonic::transport::Channel;

use super::Kyma;
// `connect_source` lives with the Postgres fixture; re-exported for the Postgres-only tests.
#[allow(unused_imports)]
pub use super::source::postgres::{PostgresSource, connect_source};

/// Runs `sql` through Flight SQL: each row's cells joined with `|`, or the error's text.
pub async fn flight_rows(
    client: &mut FlightSqlServiceClient<Channel>,
    sql: &str,
) -> Result<Vec<String>, String> {
    let info = client
        .execute(sql.to_owned(), None)
        .await
        .map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.ok_or("an endpoint without a ticket")?;
        let batches: Vec<RecordBatch> = client
            .do_get(ticket)
            .await
            .map_err(|e| e.to_string())?
            .try_collect()
            .await
            .map_err(|e| e.to_string())?;
        for batch in &batches {
            for row in 0..batch.num_rows() {
                let cells: Vec<String> = batch
                    .columns()
                    .iter()
                    .map(|c| array_value_to_string(c, row).expect("displayable"))
                    .collect();
                rows.push(cells.join("|"));
            }
        }
    }
    Ok(rows)
}

/// Rows keyed by `_kyma_pk`: column name → displayed value.
pub type Rows = BTreeMap<String, BTreeMap<String, String>>;

/// kyma's side of a sync deployment, whatever the source: a catalog prefix on an etcd and a
/// bucket on the shared S3 server, with `kyma cdc-worker` processes on them. The source side
/// is a [`super::source::SourceFixture`] (or, for the Postgres-only tests, [`SyncSetup`]).
pub struct Deployment<'a> {
    pub etcd: &'a Etcd,
    pub prefix: String,
    pub bucket: String,
    pub catalog: Catalog,
    pub store: ExtentStore,
}

impl Deployment<'static> {
    /// A deployment on the shared etcd.
    pub async fn new(name: &str) -> Self {
        Deployment::on(name, Etcd::shared()).await
    }
}

impl<'a> Deployment<'a> {
    /// A deployment on `etcd` (and the shared S3 server).
    pub async fn on(name: &str, etcd: &'a Etcd) -> Self {
        let s3 = S3::shared();
        let prefix = unique_name(name);
        let bucket = s3.create_bucket(name).expect("bucket");
        let catalog = Catalog::open(&CatalogLocation::Etcd {
            endpoints: vec![etcd.endpoint()],
            prefix: format!("/{prefix}"),
        })
        .await
        .expect("catalog");
        let store = ExtentStore::from_object_store(
            s3.bucket(&bucket)
                .build()
                .map(|s| -> std::sync::Arc<dyn object_store::ObjectStore> {
                    std::sync::Arc::new(object_store::prefix::PrefixStore::new(s, "extents"))
                })
                .expect("store"),
        );
        Self {
            etcd,
            prefix,
            bucket,
            catalog,
            store,
        }
    }

    /// Starts a `kyma cdc-worker` process on this deployment and waits until it is ready.
    pub fn worker(&self, id: &str) -> Kyma {
        let mut worker = self.spawn_worker(id);
        worker.wait_for_200("/readyz");
        worker
    }

    /// Starts a `kyma cdc-worker` process on this deployment without waiting for it.
    pub fn spawn_worker(&self, id: &str) -> Kyma {
        self.spawn_worker_with(id, &[])
    }

    /// As [`Deployment::worker`], with extra flags.
    pub fn worker_with(&self, id: &str, flags: &[&str]) -> Kyma {
        let mut worker = self.spawn_worker_with(id, flags);
        worker.wait_for_200("/readyz");
        worker
    }

    fn spawn_worker_with(&self, id: &str, flags: &[&str]) -> Kyma {
        let worker_id = format!("--worker-id={id}");
        let mut args = vec!["cdc-worker", worker_id.as_str(), "--lease-ttl-secs=2"];
        args.extend_from_slice(flags);
        self.spawn(&args)
    }

    /// How many delta (not compacted) extents `table` has now.
    pub async fn delta_extents(&self, table: &TableRef) -> usize {
        let state = self.catalog.table(table).await.expect("kyma table");
        current_manifest(&self.store, &state)
            .await
            .expect("manifest")
            .extents
            .iter()
            .filter(|e| !e.compacted)
            .count()
    }

    /// Starts a `kyma query-node` process on this deployment and waits until it is ready;
    /// returns it and a Flight SQL client of it.
    pub async fn query_node(&self) -> (Kyma, FlightSqlServiceClient<Channel>) {
        let port = free_port().expect("port");
        let mut node = self.spawn(&["query-node", &format!("--grpc-addr=127.0.0.1:{port}")]);
        node.wait_for_200("/readyz");
        let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .expect("endpoint")
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect to the query node: {e}\n{}", node.log()));
        (node, FlightSqlServiceClient::new(channel))
    }

    /// Starts `kyma ROLE_ARGS` on this deployment's catalog and store.
    fn spawn(&self, role_args: &[&str]) -> Kyma {
        let s3 = S3::shared();
        let deployment = [
            format!("--catalog=etcd://{}/{}", self.etcd.host_port(), self.prefix),
            format!("--store=s3://{}/extents", self.bucket),
            format!("--s3-endpoint={}", s3.endpoint()),
        ];
        let args: Vec<&str> = role_args
            .iter()
            .copied()
            .chain(deployment.iter().map(String::as_str))
            .collect();
        Kyma::spawn_with_env(
            &args,
            &[
                ("AWS_ACCESS_KEY_ID", S3::ACCESS_KEY),
                ("AWS_SECRET_ACCESS_KEY", S3::SECRET_KEY),
                ("AWS_REGION", S3::REGION),
                ("KYMA_LOG", "info,kyma_cdc_worker=debug"),
            ],
        )
    }

    /// Registers a connector from its JSON body (as `POST /v1/connectors` takes it).
    pub async fn create_connector(&self, body: serde_json::Value) -> ConnectorSpec {
        let spec: ConnectorSpec = serde_json::from_value(body).expect("spec");
        self.catalog
            .create_connector(&spec)
            .await
            .expect("register");
        spec
    }

    /// kyma's current state of a synced table: per key its newest version, tombstones
    /// dropped; read straight from the extents (independently of the query engine). Also
    /// every version (`_kyma_pk`, `_kyma_seq`) found more than once: a source change applied
    /// twice. When the manifest says its positions are resolved, asserts that the rows not
    /// deleted by position are exactly each key's newest version (what queries then read).
    pub async fn kyma_rows(&self, table: &TableRef) -> (Rows, Vec<(String, i64)>) {
        let state = self.catalog.table(table).await.expect("kyma table");
        let manifest = current_manifest(&self.store, &state)
            .await
            .expect("manifest");
        let mut versions: BTreeMap<String, (i64, bool, BTreeMap<String, String>)> = BTreeMap::new();
        let mut seen = std::collections::HashSet::new();
        let mut duplicates = Vec::new();
        // Every row not deleted by position: (key, version).
        let mut live: Vec<(String, i64)> = Vec::new();
        for extent in &manifest.extents {
            let deleted = match &extent.deleted {
                Some(deleted) => deleted.load(&self.store).await.expect("deleted rows"),
                None => Default::default(),
            };
            let mut position: u32 = 0;
            let bytes = self
                .store
                .object_store()
                .get(&Path::from(extent.path.as_str()))
                .await
                .expect("extent")
                .bytes()
                .await
                .expect("extent bytes");
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
                .expect("parquet")
                .build()
                .expect("reader");
            for batch in reader {
                let batch =
                    conform_batch(&state.schema.value, &batch.expect("batch")).expect("conform");
                let seq = batch
                    .column_by_name(synced::SEQ)
                    .expect("seq")
                    .as_primitive::<arrow::datatypes::Int64Type>()
                    .clone();
                let op = batch
                    .column_by_name(synced::OP)
                    .expect("op")
                    .as_string::<i32>()
                    .clone();
                for (i, (pk, values)) in row_values(&batch).into_iter().enumerate() {
                    if !seen.insert((pk.clone(), seq.value(i))) {
                        duplicates.push((pk.clone(), seq.value(i)));
                    }
                    if !deleted.contains(position) {
                        live.push((pk.clone(), seq.value(i)));
                    }
                    position += 1;
                    let newer = versions.get(&pk).is_none_or(|(s, _, _)| seq.value(i) > *s);
                    if newer {
                        versions.insert(pk, (seq.value(i), op.value(i) == "delete", values));
                    }
                }
            }
        }
        if manifest.positions_resolved {
            let newest: Vec<(String, i64)> = versions
                .iter()
                .map(|(pk, (seq, _, _))| (pk.clone(), *seq))
                .collect();
            live.sort();
            assert_eq!(
                live, newest,
                "{table}: the rows not deleted by position are not each key's newest version"
            );
        }
        let rows = versions
            .into_iter()
            .filter(|(_, (_, deleted, _))| !deleted)
            .map(|(pk, (_, _, values))| (pk, values))
            .collect();
        (rows, duplicates)
    }

    /// Whether `table`'s snapshot records what each version superseded (see
    /// [`Deployment::kyma_rows`]).
    pub async fn positions_resolved(&self, table: &TableRef) -> bool {
        let state = self.catalog.table(table).await.expect("kyma table");
        current_manifest(&self.store, &state)
            .await
            .expect("manifest")
            .positions_resolved
    }

    /// How many rows (versions and tombstones) kyma stores for `table`.
    pub async fn kyma_versions(&self, table: &TableRef) -> u64 {
        let state = self.catalog.table(table).await.expect("kyma table");
        current_manifest(&self.store, &state)
            .await
            .expect("manifest")
            .rows()
    }

    /// Whether every synced table of `connector` is out of its `pending` phase (copied, or
    /// failed).
    pub async fn all_copied(&self, connector: &str) -> bool {
        self.catalog
            .list_tables(Some(connector))
            .await
            .is_ok_and(|(_, tables)| {
                tables.iter().all(|t| {
                    t.sync
                        .as_ref()
                        .is_some_and(|s| s.phase != kyma_catalog::SyncPhase::Pending)
                })
            })
    }

    /// Asserts that kyma's table `schema.table` of `connector` equals `source` (the
    /// source's rows), row by row, on the source's columns, and that no source change was
    /// applied twice.
    pub async fn assert_rows(&self, connector: &str, schema: &str, table: &str, source: &Rows) {
        let (kyma, duplicates) = self
            .kyma_rows(&TableRef::new(connector, schema, table))
            .await;
        assert!(
            duplicates.is_empty(),
            "{schema}.{table}: {} versions (_kyma_pk, _kyma_seq) applied more than once, e.g. {:?}",
            duplicates.len(),
            &duplicates[..duplicates.len().min(5)]
        );
        let only_source: Vec<_> = source
            .keys()
            .filter(|k| !kyma.contains_key(*k))
            .take(5)
            .collect();
        let only_kyma: Vec<_> = kyma
            .keys()
            .filter(|k| !source.contains_key(*k))
            .take(5)
            .collect();
        assert!(
            only_source.is_empty() && only_kyma.is_empty(),
            "{schema}.{table}: {} source rows, {} kyma rows; missing in kyma {only_source:?}, extra in kyma {only_kyma:?}",
            source.len(),
            kyma.len()
        );
        for (pk, values) in source {
            let synced = &kyma[pk];
            for (column, value) in values {
                assert_eq!(
                    synced.get(column).map(String::as_str).unwrap_or("<absent>"),
                    value,
                    "{schema}.{table} key {pk} column {column}"
                );
            }
        }
    }
}

/// A sync deployment on Postgres, for the Postgres-only tests: kyma's side ([`Deployment`],
/// whose fields and methods it derefs to) and a fresh database on a Postgres.
/// [`SyncSetup::new`] uses the etcd and Postgres shared by the tests of the binary; a test
/// that restarts a server builds on its own with [`SyncSetup::on`]. The generic suites use
/// [`Deployment`] with a [`super::source::SourceFixture`] instead.
pub struct SyncSetup<'a> {
    pub postgres: &'a Postgres,
    pub database: String,
    pub kyma: Deployment<'a>,
}

impl<'a> std::ops::Deref for SyncSetup<'a> {
    type Target = Deployment<'a>;

    fn deref(&self) -> &Self::Target {
        &self.kyma
    }
}

impl SyncSetup<'static> {
    /// A deployment on the shared etcd and Postgres.
    pub async fn new(name: &str) -> Self {
        SyncSetup::on(name, Postgres::shared(), Etcd::shared()).await
    }
}

impl<'a> SyncSetup<'a> {
    /// A deployment on `postgres` and `etcd` (and the shared S3 server).
    pub async fn on(name: &str, postgres: &'a Postgres, etcd: &'a Etcd) -> Self {
        let kyma = Deployment::on(name, etcd).await;
        let database = postgres.create_database(name).expect("database");
        Self {
            postgres,
            database,
            kyma,
        }
    }

    /// The source database as a [`super::source::SourceFixture`].
    pub fn source(&self) -> PostgresSource<'a> {
        PostgresSource::on(self.postgres, self.database.clone())
    }

    /// Runs SQL on the source database.
    pub fn sql(&self, sql: &str) -> String {
        self.source().sql(sql)
    }

    /// Registers a sync connector over the source database.
    pub async fn register(&self, name: &str) -> ConnectorSpec {
        self.kyma.register_source(&self.source(), name).await
    }

    /// Waits until the connector's slot has confirmed everything the source wrote so far:
    /// every change made before this call is committed in kyma.
    pub async fn wait_caught_up(&self, connector: &str, worker: &Kyma) {
        self.kyma
            .wait_caught_up_with(&self.source(), connector, worker)
            .await;
    }

    /// The URL of the source database.
    pub fn source_url(&self) -> String {
        self.postgres.url(&self.database)
    }

    /// The source table's rows, read through the same typed relation the snapshot uses.
    pub async fn source_rows(&self, schema: &str, table: &str) -> Rows {
        self.source().rows_of(schema, table).await
    }

    /// Asserts that kyma's table equals the source's, row by row, on the source's columns,
    /// and that no source change was applied twice.
    pub async fn assert_synced(&self, connector: &str, schema: &str, table: &str) {
        let source = self.source_rows(schema, table).await;
        self.kyma
            .assert_rows(connector, schema, table, &source)
            .await;
    }
}

/// Every row of `batch` in order: its `_kyma_pk` and its source columns' displayed values.
pub fn row_values(batch: &RecordBatch) -> Vec<(String, BTreeMap<String, String>)> {
    let pk = batch
        .column_by_name(synced::PK)
        .expect("pk")
        .as_string::<i32>()
        .clone();
    let schema = batch.schema();
    (0..batch.num_rows())
        .map(|row| {
            let values = schema
                .fields()
                .iter()
                .zip(batch.columns())
                .filter(|(field, _)| !synced::is_system_column(field.name()))
                .map(|(field, column)| {
                    let value = if column.is_null(row) {
                        "NULL".to_owned()
                    } else {
                        array_value_to_string(column, row).expect("display")
                    };
                    (field.name().clone(), value)
                })
                .collect();
            (pk.value(row).to_owned(), values)
        })
        .collect()
}

/// Polls `probe` every 50 ms until it yields a value; fails after `within` with `what` and
/// the logs.
pub async fn poll<T, F: Future<Output = Option<T>>>(
    what: &str,
    within: Duration,
    logs: impl Fn() -> String,
    mut probe: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {what}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

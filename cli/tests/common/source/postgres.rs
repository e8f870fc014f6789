//! The Postgres fixture: a fresh database on a PostgreSQL 15 of the harness, abstract
//! operations rendered as Postgres SQL, rows read back through the typed relation the
//! snapshot uses, catching up judged by the connector's replication slot.

use std::pin::pin;

use futures::StreamExt;
use kyma_catalog::ConnectorState;
use kyma_connectors::SecretResolver;
use kyma_connectors::postgres::sync::snapshot::SnapshotSession;
use kyma_connectors::postgres::sync::{SyncNames, discover_tables};
use kyma_table::synced;
use kyma_test_harness::Postgres;

use super::sql::{Spelling, key_list, statement};
use super::{Kind, SourceFixture, Table, Transaction};
use crate::common::sync::{Rows, row_values};

/// A database on a Postgres: borrowed (the binary's shared server, or one a test owns) or
/// on a server of its own ([`SourceFixture::private`]).
pub struct PostgresSource<'a> {
    server: Server<'a>,
    database: String,
}

enum Server<'a> {
    Borrowed(&'a Postgres),
    Owned(Box<Postgres>),
}

impl<'a> PostgresSource<'a> {
    /// Database `database` on `postgres`.
    pub fn on(postgres: &'a Postgres, database: String) -> Self {
        Self {
            server: Server::Borrowed(postgres),
            database,
        }
    }

    /// The server.
    pub fn postgres(&self) -> &Postgres {
        match &self.server {
            Server::Borrowed(postgres) => postgres,
            Server::Owned(postgres) => postgres,
        }
    }

    /// The database's name.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// Runs SQL on the database with psql; its output, trimmed.
    pub fn sql(&self, sql: &str) -> String {
        self.postgres()
            .psql(&self.database, sql)
            .expect("source sql")
            .trim()
            .to_owned()
    }

    /// Table `schema.table`'s rows, read through the same typed relation the snapshot uses.
    pub async fn rows_of(&self, schema: &str, table: &str) -> Rows {
        let client = connect_source(&self.url()).await.expect("connect");
        let tables = discover_tables(&client, &Default::default())
            .await
            .expect("tables");
        let source = tables
            .into_iter()
            .find(|t| t.schema == schema && t.name == table)
            .expect("source table");
        let key: Vec<usize> = source
            .key
            .iter()
            .map(|k| {
                source
                    .columns
                    .iter()
                    .position(|(c, _)| &c.name == k)
                    .expect("key column")
            })
            .collect();
        let session = SnapshotSession::open(client, None).await.expect("session");
        let mut rows = Rows::new();
        let mut batches = pin!(session.copy_table(&source, 4096).await.expect("copy"));
        while let Some(batch) = batches.next().await {
            let batch = batch.expect("batch");
            let keys: Vec<_> = key.iter().map(|&i| batch.column(i).clone()).collect();
            let meta = synced::SnapshotMeta {
                lsn: "",
                at_micros: 0,
                seq: 0,
            };
            rows.extend(row_values(
                &synced::snapshot_rows(&batch, &keys, meta).expect("keys"),
            ));
        }
        rows
    }
}

impl SourceFixture for PostgresSource<'_> {
    const NAME: &'static str = "postgres";

    type Session = tokio_postgres::Client;

    fn shared(name: &str) -> Option<Self> {
        let postgres = Postgres::shared();
        let database = postgres.create_database(name).expect("database");
        Some(Self::on(postgres, database))
    }

    fn private(name: &str) -> Option<Self> {
        let postgres = Postgres::start().expect("a private Postgres");
        let database = postgres.create_database(name).expect("database");
        Some(Self {
            server: Server::Owned(Box::new(postgres)),
            database,
        })
    }

    fn url(&self) -> String {
        self.postgres().url(&self.database)
    }

    fn connector(&self, name: &str) -> serde_json::Value {
        serde_json::json!({
            "name": name,
            "type": "postgres",
            "mode": "sync",
            "connection": {"url": self.url(), "tls": "disable"},
        })
    }

    fn schema(&self) -> String {
        "public".to_owned()
    }

    async fn create_tables(&self) {
        let ddl: Vec<String> = Table::ALL.iter().map(|&t| create_table(t)).collect();
        self.sql(&ddl.join(";\n"));
    }

    async fn connect(url: &str) -> Result<Self::Session, String> {
        connect_source(url).await.map_err(|e| e.to_string())
    }

    fn is_open(session: &Self::Session) -> bool {
        !session.is_closed()
    }

    async fn execute(session: &mut Self::Session, transaction: &Transaction) -> Result<(), String> {
        let sql = render(transaction);
        session
            .batch_execute(&sql)
            .await
            .map_err(|e| format!("{e}: {sql}"))
    }

    async fn rows(&self, table: Table) -> Rows {
        self.rows_of(&self.schema(), table.name()).await
    }

    async fn write_position(&self) -> String {
        self.sql("SELECT pg_current_wal_insert_lsn()")
    }

    async fn confirmed(
        &self,
        connector: &str,
        _: Option<&ConnectorState>,
        position: &str,
    ) -> Result<(), String> {
        let slot = SyncNames::of(connector).slot;
        let confirmed = self
            .postgres()
            .psql(
                &self.database,
                &format!(
                    "SELECT confirmed_flush_lsn >= '{position}'::pg_lsn, confirmed_flush_lsn
                       FROM pg_replication_slots WHERE slot_name = '{slot}'"
                ),
            )
            .map_err(|e| format!("slot {slot}: {e}"))?;
        match confirmed.trim().split_once('|') {
            Some(("t", _)) => Ok(()),
            Some((_, at)) => Err(format!("slot {slot} confirmed {at} only")),
            None => Err(format!("no slot {slot}")),
        }
    }

    fn restart(&self) {
        self.postgres()
            .process()
            .restart()
            .expect("restart Postgres");
        self.postgres().wait_ready().expect("Postgres back");
    }

    fn crash(&self) {
        self.postgres()
            .crash_restart()
            .expect("crash and restart Postgres");
    }
}

/// A client of the source database at `url` (the connection runs on the current runtime).
pub async fn connect_source(
    url: &str,
) -> Result<tokio_postgres::Client, kyma_connectors::ConnectorError> {
    let spec = kyma_catalog::ConnectionSpec {
        url: url.to_owned(),
        secret_ref: None,
        tls: kyma_catalog::TlsMode::Disable,
        pool_size: 1,
        tls_ca_ref: None,
    };
    kyma_connectors::postgres::connect(&spec, &SecretResolver::new("/nonexistent")).await
}

/// `CREATE TABLE` for `table`.
fn create_table(table: Table) -> String {
    let columns: Vec<String> = table
        .columns()
        .iter()
        .map(|c| {
            let ty = match c.kind {
                Kind::Int64 => "bigint".to_owned(),
                Kind::Int32 => "int".to_owned(),
                Kind::Bool => "bool".to_owned(),
                Kind::Text { max: None } => "text".to_owned(),
                Kind::Text { max: Some(max) } => format!("varchar({max})"),
                Kind::Decimal => "numeric(12,2)".to_owned(),
                Kind::Timestamp => "timestamptz".to_owned(),
            };
            let null = if c.nullable { "" } else { " NOT NULL" };
            format!("{} {ty}{null}", c.name)
        })
        .collect();
    format!(
        "CREATE TABLE {} ({}, PRIMARY KEY ({}))",
        table.name(),
        columns.join(", "),
        table.key().join(", ")
    )
}

/// The SQL of `transaction`. Committed, it is one simple query of several statements, which
/// Postgres runs as one transaction (and rolls back whole if a statement fails); rolled back,
/// an explicit `BEGIN; …; ROLLBACK`.
fn render(transaction: &Transaction) -> String {
    let statements: Vec<String> = transaction.ops.iter().map(statement::<Pg>).collect();
    let statements = statements.join(";\n");
    if transaction.rolled_back {
        format!("BEGIN;\n{statements};\nROLLBACK")
    } else {
        statements
    }
}

/// How the suite's statements are spelled for Postgres.
struct Pg;

impl Spelling for Pg {
    fn ident(name: &str) -> String {
        kyma_connectors::postgres::quote_ident(name)
    }

    fn timestamp(seconds: i64) -> String {
        format!("to_timestamp({seconds})")
    }

    fn first(table: Table, column: &str, value: i64, limit: u32) -> String {
        let key = key_list::<Self>(table);
        format!(
            "WHERE ({key}) IN (SELECT {key} FROM {} WHERE {} = {value} ORDER BY {key} LIMIT {limit})",
            Self::ident(table.name()),
            Self::ident(column)
        )
    }
}

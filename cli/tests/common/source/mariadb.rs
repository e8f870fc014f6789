//! The MariaDB fixture: a fresh database on a MariaDB 10.11 of the harness (binlog ROW, FULL
//! images, strict GTIDs), abstract operations rendered as MySQL SQL, rows read back through
//! the connector's own snapshot reader, catching up judged by the committed cursor's GTID
//! position.

use std::pin::pin;
use std::sync::Arc;

use futures::StreamExt;
use kyma_catalog::{ConnectionSpec, ConnectorState, TlsMode};
use kyma_connectors::SecretResolver;
use kyma_connectors::mysql::sync::gtid::GtidPosition;
use kyma_connectors::mysql::sync::snapshot::MySnapshot;
use kyma_connectors::mysql::sync::{MyChangeSource, read_layouts};
use kyma_connectors::sync::{ChangeSource, Snapshot, TableId};
use kyma_table::synced;
use kyma_test_harness::MariaDb;
use mysql_async::prelude::Queryable;

use super::sql::{Spelling, key_list, statement};
use super::{Kind, SourceFixture, Table, Transaction};
use crate::common::sync::{Rows, row_values};

/// A database on a MariaDB: the binary's shared server, or one of its own
/// ([`SourceFixture::private`]).
pub struct MariaDbSource {
    server: Server,
    database: String,
}

enum Server {
    Shared(&'static MariaDb),
    Owned(Box<MariaDb>),
}

/// A session that runs transactions, and whether its connection broke.
pub struct Session {
    conn: mysql_async::Conn,
    broken: bool,
}

impl MariaDbSource {
    /// The server.
    pub fn mariadb(&self) -> &MariaDb {
        match &self.server {
            Server::Shared(server) => server,
            Server::Owned(server) => server,
        }
    }

    /// The database's name (the schema of its tables in kyma).
    pub fn database(&self) -> &str {
        &self.database
    }

    /// Runs SQL in the database as root; its output, trimmed.
    pub fn sql(&self, sql: &str) -> String {
        self.mariadb()
            .sql(&format!("USE `{}`; {sql}", self.database))
            .expect("source sql")
            .trim()
            .to_owned()
    }

    /// The connection of the connector (and of sessions).
    pub fn connection(url: &str) -> ConnectionSpec {
        ConnectionSpec {
            url: url.to_owned(),
            secret_ref: None,
            tls: TlsMode::Disable,
            pool_size: 1,
            tls_ca_ref: None,
        }
    }

    /// Table `table`'s rows, read through the connector's snapshot reader.
    pub async fn rows_of(&self, table: &str) -> Rows {
        let spec: kyma_catalog::ConnectorSpec =
            serde_json::from_value(self.connector("rows")).expect("a connector spec");
        let secrets = SecretResolver::new("/nonexistent");
        let mut source = MyChangeSource::new(&spec, &secrets);
        let tables = source.discover().await.expect("tables");
        let id = TableId::new(&self.database, table);
        let found = tables
            .into_iter()
            .find(|t| t.id == id)
            .expect("source table");
        let key: Vec<usize> = found
            .key
            .iter()
            .map(|k| {
                found
                    .columns
                    .iter()
                    .position(|c| &c.name == k)
                    .expect("key column")
            })
            .collect();
        let mut conn = kyma_connectors::mysql::connect(&spec.connection, &secrets)
            .await
            .expect("connect");
        let layouts = read_layouts(&mut conn, &spec.scope).await.expect("layouts");
        let mut snapshot = MySnapshot::open(conn, Arc::new(layouts.tables))
            .await
            .expect("snapshot");
        let mut rows = Rows::new();
        {
            let mut batches = pin!(snapshot.copy(&found, 4096).await.expect("copy"));
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
        }
        Box::new(snapshot).close().await.expect("close");
        rows
    }
}

impl SourceFixture for MariaDbSource {
    const NAME: &'static str = "mariadb";

    type Session = Session;

    fn shared(name: &str) -> Option<Self> {
        let server = MariaDb::shared();
        let database = server.create_database(name).expect("database");
        Some(Self {
            server: Server::Shared(server),
            database,
        })
    }

    fn private(name: &str) -> Option<Self> {
        let server = MariaDb::start().expect("a private MariaDB");
        let database = server.create_database(name).expect("database");
        Some(Self {
            server: Server::Owned(Box::new(server)),
            database,
        })
    }

    fn url(&self) -> String {
        self.mariadb().url(&self.database)
    }

    fn connector(&self, name: &str) -> serde_json::Value {
        serde_json::json!({
            "name": name,
            "type": "mysql",
            "mode": "sync",
            "connection": {"url": self.url(), "tls": "disable"},
            "scope": {"include_schemas": [self.database]},
        })
    }

    fn schema(&self) -> String {
        self.database.clone()
    }

    async fn create_tables(&self) {
        let ddl: Vec<String> = Table::ALL.iter().map(|&t| create_table(t)).collect();
        self.sql(&ddl.join(";\n"));
    }

    async fn connect(url: &str) -> Result<Self::Session, String> {
        let conn = kyma_connectors::mysql::connect(
            &Self::connection(url),
            &SecretResolver::new("/nonexistent"),
        )
        .await
        .map_err(|e| e.to_string())?;
        Ok(Session {
            conn,
            broken: false,
        })
    }

    fn is_open(session: &Self::Session) -> bool {
        !session.broken
    }

    async fn execute(session: &mut Self::Session, transaction: &Transaction) -> Result<(), String> {
        let end = if transaction.rolled_back {
            "ROLLBACK"
        } else {
            "COMMIT"
        };
        let statements = std::iter::once("START TRANSACTION".to_owned())
            .chain(transaction.ops.iter().map(statement::<Maria>))
            .chain(std::iter::once(end.to_owned()));
        for sql in statements {
            if let Err(e) = session.conn.query_drop(&sql).await {
                session.broken |= !matches!(e, mysql_async::Error::Server(_));
                if !session.broken {
                    let _ = session.conn.query_drop("ROLLBACK").await;
                }
                return Err(format!("{e}: {sql}"));
            }
        }
        Ok(())
    }

    async fn rows(&self, table: Table) -> Rows {
        self.rows_of(table.name()).await
    }

    async fn write_position(&self) -> String {
        self.mariadb()
            .sql("SELECT @@gtid_binlog_pos")
            .expect("gtid_binlog_pos")
            .trim()
            .to_owned()
    }

    async fn confirmed(
        &self,
        _connector: &str,
        state: Option<&ConnectorState>,
        position: &str,
    ) -> Result<(), String> {
        let target = GtidPosition::parse(position).map_err(|e| e.to_string())?;
        let cursor = state
            .and_then(|s| s.cursor.as_ref())
            .map(|c| c.value.position.clone())
            .ok_or("no cursor yet")?;
        let committed = GtidPosition::parse(&cursor).map_err(|e| e.to_string())?;
        if committed.contains(&target) {
            Ok(())
        } else {
            Err(format!("the cursor is at {cursor}, not yet at {position}"))
        }
    }

    fn restart(&self) {
        self.mariadb().process().restart().expect("restart MariaDB");
        self.mariadb().wait_ready().expect("MariaDB back");
    }

    fn crash(&self) {
        let process = self.mariadb().process();
        process.kill().expect("kill MariaDB");
        process.start_again().expect("start MariaDB again");
        self.mariadb().wait_ready().expect("MariaDB back");
    }
}

/// `CREATE TABLE` for `table`.
fn create_table(table: Table) -> String {
    let columns: Vec<String> = table
        .columns()
        .iter()
        .map(|c| {
            let ty = match c.kind {
                Kind::Int64 => "BIGINT".to_owned(),
                Kind::Int32 => "INT".to_owned(),
                Kind::Bool => "BOOLEAN".to_owned(),
                Kind::Text { max: None } => "TEXT".to_owned(),
                Kind::Text { max: Some(max) } => format!("VARCHAR({max})"),
                Kind::Decimal => "DECIMAL(12,2)".to_owned(),
                Kind::Timestamp => "TIMESTAMP".to_owned(),
            };
            let null = if c.nullable {
                " NULL DEFAULT NULL"
            } else {
                " NOT NULL"
            };
            format!("`{}` {ty}{null}", c.name)
        })
        .collect();
    format!(
        "CREATE TABLE `{}` ({}, PRIMARY KEY ({})) ENGINE=InnoDB",
        table.name(),
        columns.join(", "),
        table.key().join(", ")
    )
}

/// How the suite's statements are spelled for MariaDB.
struct Maria;

impl Spelling for Maria {
    fn ident(name: &str) -> String {
        kyma_connectors::mysql::quote_ident(name)
    }

    fn timestamp(seconds: i64) -> String {
        format!("FROM_UNIXTIME({seconds})")
    }

    /// A single-table UPDATE or DELETE takes `ORDER BY … LIMIT`, and MySQL refuses `LIMIT`
    /// in an `IN` subquery.
    fn first(table: Table, column: &str, value: i64, limit: u32) -> String {
        format!(
            "WHERE {} = {value} ORDER BY {} LIMIT {limit}",
            Self::ident(column),
            key_list::<Self>(table)
        )
    }
}

//! The seam between federation and a source: what every federated source promises, and how
//! "the same source" is decided (SPEC §5).
//!
//! # What a source promises
//!
//! A [`FederatedSource`] is one connector's source as federation sees it. The optimizer rule
//! ([`super::rule`]), the catalog ([`super::catalog`]), the scan ([`super::scan`]) and the
//! `pushdown_summary` ([`super::summary`]) know nothing else about it:
//!
//! - **tables** ([`FederatedSource::discover`]): the tables in the connector's scope, each
//!   column with its kyma type and its [`Semantics`] (whether the source compares and sorts
//!   its values exactly as kyma does). Every table is read through its *relation*: the
//!   source's own expression of the table read as kyma types, so whatever is pushed above it
//!   sees exactly kyma's values.
//! - **capabilities** ([`FederatedSource::capabilities`]): which operators, functions,
//!   literals, casts, aggregates and joins the source computes exactly as DataFusion does.
//!   From these and the semantics alone, the rule grows the largest subtree of a plan that
//!   the source can answer; when in doubt nothing is pushed.
//! - **compile** ([`FederatedSource::compile`]): such a subtree becomes one [`SourceQuery`]
//!   whose rows are exactly the subtree's output columns, in order. Compiling may fail; the
//!   subtree then stays in kyma.
//! - **execute** ([`FederatedSource::execute`]): runs a query the source compiled and streams
//!   its rows as Arrow batches of the subtree's schema, reporting every byte received (the
//!   `source_bytes` metric). Failures are [`ConnectorError`]s with their retryability; the
//!   scan wraps them in a [`SourceError`] naming the connector.
//!
//! # The same source
//!
//! A join is pushed only when both sides are at the same source *and connection*, so that one
//! query on one connection reads both. That is decided by [`SourceIdentity`] (source type,
//! host, port, database, user and TLS policy), never by pointer: two connectors registered on
//! the same database as the same user are one source, and a source rebuilt between two table
//! lookups is still itself. Each table keeps its own relation, so each connector's type
//! options still apply inside the joined query. A source that cannot name a single endpoint
//! (a Postgres URL listing several hosts reaches whichever answers) has no identity and is
//! the same as no other.
//!
//! # The sources
//!
//! - **SQL sources** share [`super::sql`]: [`SqlFederation`](super::sql::SqlFederation)
//!   implements this trait for any [`SqlDialect`](super::sql::SqlDialect) (DataFusion's
//!   unparser and parser dialects, identifier quoting, capabilities, the typed relation of a
//!   table) with an [`SqlExecutor`](super::sql::SqlExecutor) (discovery and execution over
//!   the source's driver, in the connectors crate). Postgres ([`super::postgres`]) is one
//!   dialect and one executor.
//! - **MySQL and MariaDB** will be one more pair: the MySQL unparser and parser dialects,
//!   backtick quoting, MySQL's capabilities, and per-column semantics from
//!   `information_schema.COLUMNS.COLLATION_NAME`: a `*_bin` collation without PAD SPACE
//!   compares and sorts as kyma does; PAD SPACE loses equality (trailing blanks compare
//!   equal); `_ci` and `_ai` collations lose both, so string equality, LIKE and ORDER BY on
//!   such columns stay in kyma.
//! - **MongoDB** ([`super::mongodb`]) implements this trait directly: `compile` turns the
//!   subtree into an aggregation pipeline (filters into query-language `$match` with a type
//!   guard per column, the projection into `$project`, ORDER BY into `$sort` over typed keys,
//!   LIMIT into `$skip`/`$limit`, GROUP BY and aggregates into `$group`), a
//!   [`SourceQuery::Pipeline`] shown as the `aggregate` command's JSON in the summary's `sql`
//!   field. A table accepts only the filters that compile ([`FederatedSource::accepts_filter`]).
//!   Values compare bytewise (every pipeline runs under the simple collation); a field
//!   whose BSON types MongoDB compares differently from kyma is opaque.

use std::fmt;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::common::{DataFusionError, Result};
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_plan::metrics::Count;
use futures::StreamExt;
use futures::stream::BoxStream;
use kyma_catalog::{ConnectorSpec, KymaType, SourceType, TlsMode};
use kyma_connectors::ConnectorError;
use kyma_connectors::mongodb::schema::Kind;
use kyma_connectors::pool::Endpoint;

use super::capabilities::{Capabilities, Semantics};

/// One connector's source as federation sees it (see the module doc).
#[async_trait]
pub trait FederatedSource: fmt::Debug + Send + Sync + 'static {
    /// The registration it was built from.
    fn spec(&self) -> &ConnectorSpec;

    /// The connector's name: its catalog name, and the `source` of its summaries.
    fn name(&self) -> &str {
        &self.spec().name
    }

    /// Where its queries run; sources of equal identity may share a query. `None`: unknown,
    /// the same as no other source.
    fn identity(&self) -> Option<&SourceIdentity>;

    /// Reads the tables in the connector's scope from the source.
    async fn discover(&self) -> Result<Vec<SourceTable>, ConnectorError>;

    /// What it computes exactly as DataFusion does.
    fn capabilities(&self) -> &dyn Capabilities;

    /// Whether filter `filter` on `table`, which the capability checks admit, can also be
    /// written as the source's query: a table pushes only filters it can compile (by default
    /// every admitted one; MongoDB's `$match` compares a field with constants only).
    fn accepts_filter(&self, table: &SourceTable, filter: &Expr) -> Result<(), String> {
        let _ = (table, filter);
        Ok(())
    }

    /// The query answering `subtree` (whose every expression passed the capability checks
    /// and whose scans are all of sources with this one's identity).
    fn compile(&self, subtree: &LogicalPlan) -> Result<SourceQuery>;

    /// Runs `query` (compiled by this source), streaming its rows as `output` asks.
    fn execute(&self, query: &SourceQuery, output: QueryOutput) -> RecordBatches;
}

/// The rows of a source query, as they arrive.
pub type RecordBatches = BoxStream<'static, Result<RecordBatch, ConnectorError>>;

/// What a source query's rows become.
#[derive(Debug, Clone)]
pub struct QueryOutput {
    /// The batches' schema: the compiled subtree's output.
    pub schema: SchemaRef,
    /// Rows per batch, at most.
    pub batch_rows: usize,
    /// Every byte received from the source is added here (`source_bytes`).
    pub received: Count,
}

impl QueryOutput {
    /// The schema, the rows per batch, and what to call with the size of each value received.
    pub fn into_parts(self) -> (SchemaRef, usize, impl Fn(usize) + Send + Sync + 'static) {
        let received = self.received;
        (self.schema, self.batch_rows, move |bytes| {
            received.add(bytes)
        })
    }
}

/// Where a source's queries run: two sources of equal identity are the same source and
/// connection, so one query may read tables of both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceIdentity {
    /// The kind of source.
    pub source_type: SourceType,
    /// Host name (lower case) or socket directory.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// The database (the default schema for MySQL).
    pub database: String,
    /// The user queries run as (what they may read).
    pub user: String,
    /// The TLS policy of the connection.
    pub tls: TlsMode,
}

impl SourceIdentity {
    /// The identity of a `source_type` source at `endpoint` under `tls`.
    pub fn new(source_type: SourceType, endpoint: Endpoint, tls: TlsMode) -> Self {
        Self {
            source_type,
            host: endpoint.host,
            port: endpoint.port,
            database: endpoint.database,
            user: endpoint.user,
            tls,
        }
    }

    /// Whether two sources are the same source and connection: both identities known and
    /// equal.
    pub fn same(a: Option<&Self>, b: Option<&Self>) -> bool {
        matches!((a, b), (Some(a), Some(b)) if a == b)
    }
}

/// A query in the source's own language.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceQuery {
    /// SQL in the source's dialect.
    Sql(String),
    /// A MongoDB aggregation ([`super::mongodb`]).
    Pipeline {
        /// The database.
        database: String,
        /// The collection.
        collection: String,
        /// The stages as relaxed Extended JSON (an array), as the summary shows them.
        shown: String,
        /// The stages as sent: each one BSON document.
        stages: Vec<Vec<u8>>,
        /// How each output column reads from the result documents: its path and kind.
        columns: Vec<(Vec<String>, Kind)>,
    },
}

impl fmt::Display for SourceQuery {
    /// The query as the summary and EXPLAIN show it: SQL, or the `aggregate` command
    /// (`{"aggregate": "<collection>", "$db": "<database>", "pipeline": [...]}`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceQuery::Sql(sql) => f.write_str(sql),
            SourceQuery::Pipeline {
                database,
                collection,
                shown,
                ..
            } => write!(
                f,
                "{{\"aggregate\": {}, \"$db\": {}, \"pipeline\": {shown}}}",
                serde_json::Value::from(collection.as_str()),
                serde_json::Value::from(database.as_str()),
            ),
        }
    }
}

/// One column of a source table, as discovery finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederatedColumn {
    /// The column name.
    pub name: String,
    /// Its kyma type.
    pub ty: KymaType,
    /// Whether it may be NULL.
    pub nullable: bool,
    /// What the source may compare or sort on it.
    pub semantics: Semantics,
}

/// One source table: its columns, their kyma types and how pushdown may treat them.
#[derive(Debug)]
pub struct SourceTable {
    /// Source schema (database for MySQL and MongoDB).
    pub schema: String,
    /// Source table (collection).
    pub table: String,
    /// The Arrow schema kyma reads it as.
    pub arrow: SchemaRef,
    /// Per column: what the source may compare or sort on it.
    pub semantics: Vec<Semantics>,
    /// The source's expression of the table read as kyma types: for SQL sources the typed
    /// relation's `SELECT`.
    pub relation: String,
}

impl SourceTable {
    /// The table `schema.table` of `columns`, read through `relation`.
    pub fn new(
        schema: String,
        table: String,
        columns: Vec<FederatedColumn>,
        relation: String,
    ) -> Self {
        let fields: Vec<Field> = columns
            .iter()
            .map(|c| Field::new(&c.name, kyma_table::types::arrow_type(c.ty), c.nullable))
            .collect();
        Self {
            schema,
            table,
            arrow: Arc::new(Schema::new(fields)),
            semantics: columns.into_iter().map(|c| c.semantics).collect(),
            relation,
        }
    }
}

/// The rows of a query a source did not compile: none, and a failure saying so.
pub fn refused_query(query: &SourceQuery) -> RecordBatches {
    let error = ConnectorError::Source(format!("this source did not compile the query {query}"));
    futures::stream::once(async move { Err(error) }).boxed()
}

/// An error from a federated source, naming its connector.
#[derive(Debug, thiserror::Error)]
#[error("connector `{connector}`: {source}")]
pub struct SourceError {
    /// The connector.
    pub connector: String,
    /// What failed.
    #[source]
    pub source: ConnectorError,
}

impl SourceError {
    /// `source` from connector `connector` as a DataFusion error.
    pub fn datafusion(connector: &str, source: ConnectorError) -> DataFusionError {
        DataFusionError::External(Box::new(Self {
            connector: connector.to_owned(),
            source,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(database: &str, user: &str, tls: TlsMode) -> SourceIdentity {
        let endpoint = Endpoint {
            host: "db".into(),
            port: 5432,
            database: database.into(),
            user: user.into(),
        };
        SourceIdentity::new(SourceType::Postgres, endpoint, tls)
    }

    #[test]
    fn equal_identities_are_the_same_source() {
        let a = identity("app", "kyma", TlsMode::Disable);
        assert!(SourceIdentity::same(Some(&a), Some(&a.clone())));
    }

    #[test]
    fn any_difference_makes_another_source() {
        let a = identity("app", "kyma", TlsMode::Disable);
        let others = [
            identity("billing", "kyma", TlsMode::Disable),
            identity("app", "reporter", TlsMode::Disable),
            identity("app", "kyma", TlsMode::Required),
            SourceIdentity {
                port: 5433,
                ..a.clone()
            },
            SourceIdentity {
                host: "db2".into(),
                ..a.clone()
            },
            SourceIdentity {
                source_type: SourceType::Mysql,
                ..a.clone()
            },
        ];
        for other in &others {
            assert!(!SourceIdentity::same(Some(&a), Some(other)), "{other:?}");
        }
    }

    #[test]
    fn an_unknown_identity_is_the_same_as_none() {
        let a = identity("app", "kyma", TlsMode::Disable);
        assert!(!SourceIdentity::same(None, Some(&a)));
        assert!(!SourceIdentity::same(Some(&a), None));
        assert!(!SourceIdentity::same(None, None));
    }
}

//! MongoDB behind the federation seam: a [`FederatedSource`] of its own (MongoDB speaks no
//! SQL). The only module of the query node that knows MongoDB.
//!
//! - **Tables**: every collection in scope, sampled into a [`Shape`] by
//!   `kyma_connectors::mongodb::schema::discover`; each column reads the value at its path as
//!   its [`Kind`] says (`values::kyma_value`), the same conversion as sync.
//! - **Semantics** ([`semantics`]): ints, longs, booleans, strings, ObjectIds (their hex text
//!   sorts as their bytes) and dates compare and sort at MongoDB as in kyma, once a type guard
//!   keeps only the values the column reads ([`pipeline`]). `_id` compares by equality only.
//!   Doubles, Decimal128 text, UUIDs, other binaries, BSON timestamps, dynamic columns and
//!   fields the query language cannot address are never compared at the source.
//! - **Capabilities** ([`MongoCapabilities`]): comparisons of a field with constants,
//!   AND/OR/NOT, IS NULL, IN, BETWEEN, LIKE without an escape; COUNT, MIN/MAX, SUM of ints.
//!   No arithmetic, functions, casts or joins.
//! - **Queries**: [`pipeline::compile`] writes the subtree as an aggregation pipeline, a
//!   [`SourceQuery::Pipeline`]; it runs through `kyma_connectors::mongodb::query::run_pipeline`
//!   under the simple collation. The client connects on first use, never while planning.

pub mod pipeline;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use arrow::datatypes::DataType;
use async_trait::async_trait;
use datafusion::common::{DFSchema, DataFusionError, Result as DfResult, ScalarValue};
use datafusion::logical_expr::expr::{Like, ScalarFunction};
use datafusion::logical_expr::{Expr, JoinType, LogicalPlan, Operator};
use futures::{StreamExt, TryStreamExt};
use kyma_catalog::ConnectorSpec;
use kyma_connectors::mongodb::query::{PipelineQuery, run_pipeline};
use kyma_connectors::mongodb::schema::{FieldColumn, Kind, Shape};
use kyma_connectors::sync::TableId;
use kyma_connectors::{ConnectorError, SecretResolver};
use mongodb::Client;
use mongodb::bson::Document;
use tokio::sync::OnceCell;

use super::capabilities::{AggregateResult, Capabilities, FunctionResult, Semantics};
use super::source::{
    FederatedColumn, FederatedSource, QueryOutput, RecordBatches, SourceIdentity, SourceQuery,
    SourceTable, refused_query,
};
use super::table::federated_table;

/// The federated source of MongoDB connector `spec`; connects lazily.
pub fn source(spec: ConnectorSpec, secrets: SecretResolver) -> Arc<dyn FederatedSource> {
    Arc::new(MongoFederation::new(spec, secrets))
}

/// A MongoDB deployment as a federated source: its collections' shapes (from the last
/// discovery) and a client made on first use.
#[derive(Debug)]
pub struct MongoFederation {
    spec: ConnectorSpec,
    secrets: SecretResolver,
    client: Arc<OnceCell<Client>>,
    shapes: RwLock<HashMap<TableId, Arc<Shape>>>,
}

impl MongoFederation {
    /// The source of `spec`, its collections unknown until discovery.
    pub fn new(spec: ConnectorSpec, secrets: SecretResolver) -> Self {
        Self {
            spec,
            secrets,
            client: Arc::new(OnceCell::new()),
            shapes: RwLock::new(HashMap::new()),
        }
    }

    /// The source of `spec` with the shapes of `tables` already known: for planning and
    /// compiling without discovery (tests and tools; executing still connects).
    pub fn with_tables(spec: ConnectorSpec, tables: Vec<(TableId, Shape)>) -> Self {
        let source = Self::new(spec, SecretResolver::new("/nonexistent"));
        source.remember(tables);
        source
    }

    /// The tables of the known shapes, ordered by database and collection.
    pub fn tables(&self) -> Vec<SourceTable> {
        let shapes = self.shapes.read().unwrap_or_else(|p| p.into_inner());
        let mut tables: Vec<(&TableId, &Arc<Shape>)> = shapes.iter().collect();
        tables.sort_by(|a, b| a.0.cmp(b.0));
        tables
            .into_iter()
            .map(|(id, shape)| source_table(id, shape))
            .collect()
    }

    fn remember(&self, tables: Vec<(TableId, Shape)>) {
        let mut shapes = self.shapes.write().unwrap_or_else(|p| p.into_inner());
        *shapes = tables
            .into_iter()
            .map(|(id, shape)| (id, Arc::new(shape)))
            .collect();
    }

    /// The shape of collection `schema.table`, if known.
    fn shape(&self, schema: &str, table: &str) -> Result<Arc<Shape>, String> {
        let shapes = self.shapes.read().unwrap_or_else(|p| p.into_inner());
        shapes
            .get(&TableId::new(schema, table))
            .cloned()
            .ok_or_else(|| format!("the collection `{schema}.{table}` has not been discovered"))
    }

    async fn client(&self) -> Result<Client, ConnectorError> {
        let connect = || kyma_connectors::mongodb::connect(&self.spec.connection, &self.secrets);
        self.client.get_or_try_init(connect).await.cloned()
    }
}

/// The federated table of collection `id` read as `shape`.
fn source_table(id: &TableId, shape: &Shape) -> SourceTable {
    let columns = shape
        .columns()
        .iter()
        .map(|c| FederatedColumn {
            name: c.name.clone(),
            ty: c.kind.kyma_type(),
            nullable: true,
            semantics: semantics(c),
        })
        .collect();
    SourceTable::new(
        id.schema.clone(),
        id.table.clone(),
        columns,
        format!("{}.{}", id.schema, id.table),
    )
}

/// A column MongoDB never compares, with why.
fn opaque(note: &str) -> Semantics {
    Semantics {
        note: Some(note.into()),
        ..Semantics::OPAQUE
    }
}

/// What MongoDB may compare or sort on `column` and still agree with kyma (see the module
/// doc and [`pipeline`] for the type guard this relies on).
pub fn semantics(column: &FieldColumn) -> Semantics {
    if !column.addressable() {
        return opaque(
            "a field under a key holding `.` or starting with `$`, which the query language cannot address",
        );
    }
    match column.kind {
        Kind::Int | Kind::Long | Kind::Bool | Kind::String | Kind::ObjectId | Kind::Date => {
            Semantics::COMPARABLE
        }
        Kind::Key => Semantics {
            eq: true,
            order: false,
            collation: None,
            note: Some(
                "the stringified `_id`, which MongoDB sorts by BSON type and value, not as text"
                    .into(),
            ),
        },
        Kind::Real => opaque(
            "a double: MongoDB compares long and double exactly and orders NaN first, kyma converts the long to double",
        ),
        Kind::DecimalText => {
            opaque("a Decimal128 read as its text; MongoDB compares it by value (1.0 = 1.00)")
        }
        Kind::Uuid => opaque(
            "a UUID; binaries of other subtypes read NULL here, which the query language cannot tell apart",
        ),
        Kind::Binary => opaque("binary data read as base64; MongoDB compares length first"),
        Kind::Timestamp => opaque(
            "a BSON timestamp, which MongoDB compares by seconds and increment; kyma reads its seconds",
        ),
        Kind::Dynamic => opaque("dynamic data, which MongoDB compares by BSON type and value"),
    }
}

#[async_trait]
impl FederatedSource for MongoFederation {
    fn spec(&self) -> &ConnectorSpec {
        &self.spec
    }

    /// No joins are pushed to MongoDB, so no two sources share a query.
    fn identity(&self) -> Option<&SourceIdentity> {
        None
    }

    async fn discover(&self) -> Result<Vec<SourceTable>, ConnectorError> {
        let client = self.client().await?;
        let found = kyma_connectors::mongodb::schema::discover(&client, &self.spec.scope).await?;
        self.remember(found.into_iter().map(|c| (c.id, c.shape)).collect());
        Ok(self.tables())
    }

    fn capabilities(&self) -> &dyn Capabilities {
        &MongoCapabilities
    }

    fn accepts_filter(&self, table: &SourceTable, filter: &Expr) -> Result<(), String> {
        let shape = self.shape(&table.schema, &table.table)?;
        let schema = DFSchema::try_from(table.arrow.as_ref().clone()).map_err(|e| e.to_string())?;
        pipeline::check_filter(&shape, &schema, filter)
    }

    fn compile(&self, subtree: &LogicalPlan) -> DfResult<SourceQuery> {
        let shapes = |scan: &datafusion::logical_expr::TableScan| {
            let table = federated_table(scan)
                .ok_or_else(|| "the scan is not of a MongoDB collection".to_owned())?;
            let shape = self.shape(&table.meta.schema, &table.meta.table)?;
            Ok((TableId::new(&table.meta.schema, &table.meta.table), shape))
        };
        let (id, compiled) = pipeline::compile(subtree, &shapes).map_err(DataFusionError::Plan)?;
        Ok(compiled.into_query(id))
    }

    fn execute(&self, query: &SourceQuery, output: QueryOutput) -> RecordBatches {
        let SourceQuery::Pipeline {
            database,
            collection,
            stages,
            columns,
            ..
        } = query
        else {
            return refused_query(query);
        };
        let stages: Result<Vec<Document>, _> = stages
            .iter()
            .map(|bytes| Document::from_reader(bytes.as_slice()))
            .collect();
        let stages = match stages {
            Ok(stages) => stages,
            Err(e) => {
                let error = ConnectorError::Source(format!("a compiled stage does not read: {e}"));
                return futures::stream::once(async move { Err(error) }).boxed();
            }
        };
        let (schema, batch_rows, received) = output.into_parts();
        let columns = schema
            .fields()
            .iter()
            .zip(columns)
            .map(|(field, (path, kind))| FieldColumn {
                name: field.name().clone(),
                path: path.clone(),
                kind: *kind,
                warning: None,
            })
            .collect();
        let query = PipelineQuery {
            collection: TableId::new(database, collection),
            pipeline: stages,
            columns,
        };
        let client = self.client.clone();
        let (connection, secrets) = (self.spec.connection.clone(), self.secrets.clone());
        futures::stream::once(async move {
            let client = client
                .get_or_try_init(|| kyma_connectors::mongodb::connect(&connection, &secrets))
                .await?
                .clone();
            Ok::<_, ConnectorError>(run_pipeline(client, query, schema, batch_rows, received))
        })
        .try_flatten()
        .boxed()
    }
}

/// What MongoDB computes as DataFusion does (see the module doc).
#[derive(Debug, Clone, Copy)]
pub struct MongoCapabilities;

impl Capabilities for MongoCapabilities {
    fn operator(&self, op: Operator) -> Result<(), String> {
        match op {
            Operator::Eq
            | Operator::NotEq
            | Operator::Lt
            | Operator::LtEq
            | Operator::Gt
            | Operator::GtEq
            | Operator::And
            | Operator::Or => Ok(()),
            other => Err(format!(
                "`{other}` is not pushed: MongoDB's $match compares fields with constants only"
            )),
        }
    }

    fn literal(&self, value: &ScalarValue) -> Result<(), String> {
        // Doubles are compared with double columns only, which are opaque.
        if value.is_null() || matches!(value, ScalarValue::Float32(_) | ScalarValue::Float64(_)) {
            return Ok(());
        }
        pipeline::literal(value).map(|_| ())
    }

    fn like(&self, like: &Like) -> Result<(), String> {
        if like.case_insensitive {
            return Err("ILIKE is not pushed to MongoDB (case folding differs)".into());
        }
        if like.escape_char.is_some() {
            return Err("LIKE with ESCAPE is not pushed to MongoDB".into());
        }
        match like.pattern.as_ref() {
            Expr::Literal(value, _) => match value.try_as_str().flatten() {
                Some(pattern) => pipeline::like_regex(pattern).map(|_| ()),
                None => Err("a LIKE pattern must be text to be pushed".into()),
            },
            _ => Err("only LIKE with a constant pattern is pushed to MongoDB".into()),
        }
    }

    /// Only int to long, which DataFusion puts under SUM (the pipeline sums the ints).
    fn cast(&self, from: &DataType, to: &DataType) -> bool {
        matches!((from, to), (DataType::Int32, DataType::Int64))
    }

    fn function(
        &self,
        call: &ScalarFunction,
        _schema: &DFSchema,
    ) -> Result<FunctionResult, String> {
        Err(format!(
            "`{}` is not pushed: functions are not pushed to MongoDB",
            call.name()
        ))
    }

    fn aggregate(&self, name: &str, types: &[DataType]) -> Result<AggregateResult, String> {
        match (name, types) {
            ("count", _) => Ok(AggregateResult::Comparable),
            ("min" | "max", _) => Ok(AggregateResult::Ordered),
            ("sum", [DataType::Int32 | DataType::Int64]) => Ok(AggregateResult::Comparable),
            ("sum", _) => Err(
                "SUM is pushed over int fields only: MongoDB's $sum turns an overflowing long into a double"
                    .into(),
            ),
            (other, _) => Err(format!("`{other}` is not pushed to MongoDB")),
        }
    }

    fn join(&self, _join_type: JoinType) -> bool {
        false
    }
}

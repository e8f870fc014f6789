//! The SQL engine of a query node: a DataFusion session over the `kyma` catalog, the
//! connectors' catalogs and the table functions `raw()` and `live()`
//! ([`crate::table_functions`]), plus the statements DataFusion does not own here — kyma DDL
//! (`CREATE TABLE` with kyma types, `DROP TABLE`, `ALTER TABLE … ADD COLUMN`, promotion of a
//! dynamic path) and bulk ingest.
//!
//! Promotion is written as a generated column:
//! `ALTER TABLE t ADD COLUMN service string GENERATED ALWAYS AS (attributes['service.name'])`.
//! New rows fill `service` from the path when the writer does not send it; reads return
//! `coalesce(service, attributes['service.name'])` so older rows keep answering.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::{
    DataFusionError, ParamValues, Result, ScalarValue, plan_datafusion_err, plan_err,
};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::SessionStateDefaults;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::logical_expr::planner::ExprPlanner;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{ExecutionPlan, execute_stream};
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use datafusion::sql::parser::{DFParser, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::{
    AccessExpr, AlterTableOperation, ColumnDef, ColumnOption, CreateTable, Expr as SqlExpr, Ident,
    ObjectName, ObjectNamePart, ObjectType, Statement, Subscript, Value,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use futures::{Stream, StreamExt};
use kyma_catalog::{Catalog, CatalogError, Column, KymaType, PromotedPath, TableOrigin, TableRef};
use kyma_table::writer::columns_of;
use kyma_table::{ExtentStore, TableError};

use crate::dynamic_sql::{DynamicFunctions, DynamicPlanner};
use crate::federation::rule::FederationPushdown;
use crate::federation::scan::KymaQueryPlanner;
use crate::federation::summary::{SourceSummary, summaries};
use crate::federation::{FederatedSources, FederationOptions, KymaCatalogList};
use crate::provider::{
    DEFAULT_SCHEMA, KYMA_CATALOG, KymaCatalogProvider, NodeTables, count_batch, resolve, to_df,
};
use crate::queries::QueryLog;
use crate::table_functions::{LIVE, LiveFunction, RAW, RawFunction, load_live_tables};
use crate::view::CatalogView;

/// What running a statement produced.
pub enum Outcome {
    /// A query's rows, streamed.
    Rows(QueryRows),
    /// A command's count of affected rows (0 for DDL).
    Count(u64),
}

/// A running query.
pub struct QueryRows {
    /// The schema [`QueryEngine::describe`] announces for it (from the plan before
    /// optimization): the stream's may differ in nullability (a folded constant is never
    /// null), and clients check what they get against what was announced.
    pub schema: SchemaRef,
    /// Its rows.
    pub stream: SendableRecordBatchStream,
    /// Its physical plan (metrics such as bytes read from sources are read from it when the
    /// stream ends).
    pub plan: Arc<dyn ExecutionPlan>,
    /// What each federated source runs.
    pub pushdown: Vec<SourceSummary>,
}

/// How bulk ingest treats the target table (ADBC's ingest modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestMode {
    /// Create the table; fail when it exists.
    Create,
    /// Append; fail when the table does not exist.
    Append,
    /// Drop the table if it exists, then create it.
    Replace,
    /// Create the table when missing, then append.
    CreateAppend,
}

/// The SQL engine of one query node. Cheap to clone.
#[derive(Clone)]
pub struct QueryEngine {
    ctx: SessionContext,
    tables: Arc<NodeTables>,
    sources: Arc<FederatedSources>,
}

/// The row of `EXPLAIN` output that carries the `pushdown_summary`.
const EXPLAIN_SUMMARY_ROW: &str = "pushdown_summary";

impl std::fmt::Debug for QueryEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryEngine").finish_non_exhaustive()
    }
}

impl QueryEngine {
    /// Loads the catalog view and builds the session; connectors federate per `federation`.
    pub async fn start(
        catalog: Catalog,
        store: ExtentStore,
        federation: FederationOptions,
    ) -> Result<Self, TableError> {
        let view = CatalogView::start(catalog.clone(), store.clone()).await?;
        let sources = Arc::new(FederatedSources::new(view.clone(), federation));
        let store_url = ObjectStoreUrl::parse("kyma://extents")
            .map_err(|e| TableError::invalid("store", e.to_string()))?;
        let functions = DynamicFunctions::default();
        let tables = Arc::new(NodeTables {
            catalog,
            store: store.clone(),
            view,
            store_url: store_url.clone(),
            functions: functions.clone(),
            queries: Arc::new(QueryLog::default()),
        });
        let runtime = RuntimeEnvBuilder::new()
            .build_arc()
            .map_err(|e| TableError::invalid("runtime", e.to_string()))?;
        runtime.register_object_store(store_url.as_ref(), store.object_store().clone());
        let config = SessionConfig::new()
            .with_default_catalog_and_schema(KYMA_CATALOG, DEFAULT_SCHEMA)
            .with_create_default_catalog_and_schema(false)
            .with_information_schema(true);
        let mut planners: Vec<Arc<dyn ExprPlanner>> =
            vec![Arc::new(DynamicPlanner::new(functions.clone()))];
        planners.extend(SessionStateDefaults::default_expr_planners());
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            .with_expr_planners(planners)
            .with_catalog_list(Arc::new(KymaCatalogList::new(
                tables.clone(),
                sources.clone(),
            )))
            .with_query_planner(Arc::new(KymaQueryPlanner))
            .with_optimizer_rule(Arc::new(FederationPushdown))
            .build();
        let ctx = SessionContext::new_with_state(state);
        ctx.register_catalog(
            KYMA_CATALOG,
            Arc::new(KymaCatalogProvider::native(tables.clone())),
        );
        for udf in functions.udfs() {
            ctx.register_udf(udf.as_ref().clone());
        }
        ctx.register_udtf(RAW, Arc::new(RawFunction::new(tables.clone())));
        ctx.register_udtf(LIVE, Arc::new(LiveFunction::new(sources.clone())));
        Ok(Self {
            ctx,
            tables,
            sources,
        })
    }

    /// The DataFusion session (catalog listing for metadata commands).
    pub fn session(&self) -> &SessionContext {
        &self.ctx
    }

    /// The watched catalog view.
    pub fn view(&self) -> &CatalogView {
        &self.tables.view
    }

    /// The log behind `kyma.system.queries`.
    pub fn queries(&self) -> &Arc<QueryLog> {
        &self.tables.queries
    }

    /// Plans `sql` and returns its result schema, whether it is a query (rows) rather than a
    /// command, and the types of its parameters, without running it.
    pub async fn describe(&self, sql: &str) -> Result<Described> {
        let statement = parse_one(sql)?;
        if kyma_command(&statement).is_some() {
            return Ok(Described {
                schema: count_batch(0)?.schema(),
                is_query: false,
                parameters: Vec::new(),
                pushdown: Vec::new(),
            });
        }
        let plan = self.plan(statement).await?;
        let mut parameters: Vec<(String, Option<arrow::datatypes::DataType>)> =
            plan.get_parameter_types()?.into_iter().collect();
        parameters.sort_by_key(|(name, _)| placeholder_index(name));
        let is_query = !matches!(plan, LogicalPlan::Dml(_) | LogicalPlan::Ddl(_));
        let schema = if is_query {
            Arc::new(plan.schema().as_arrow().clone())
        } else {
            count_batch(0)?.schema()
        };
        // Planning with placeholders unbound would show less than runs: summarise only
        // what is complete.
        let pushdown = if parameters.is_empty() {
            summaries(&self.ctx.state().optimize(&plan)?)
        } else {
            Vec::new()
        };
        Ok(Described {
            schema,
            is_query,
            parameters,
            pushdown,
        })
    }

    /// Runs one statement with `params` bound to its placeholders (`$1`, `$2`, … or `?`).
    pub async fn execute(&self, sql: &str, params: Vec<ScalarValue>) -> Result<Outcome> {
        let statement = parse_one(sql)?;
        if let Some(command) = kyma_command(&statement) {
            return self.run_kyma_command(command).await.map(Outcome::Count);
        }
        let mut plan = self.plan(statement).await?;
        if !params.is_empty() {
            plan = plan.with_param_values(ParamValues::List(
                params.into_iter().map(Into::into).collect(),
            ))?;
        }
        let is_command = matches!(plan, LogicalPlan::Dml(_));
        let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
        let is_explain = matches!(plan, LogicalPlan::Explain(_));
        let state = self.ctx.state();
        let optimized = state.optimize(&plan)?;
        let pushdown = summaries(&optimized);
        let physical = state
            .query_planner()
            .create_physical_plan(&optimized, &state)
            .await?;
        let stream = execute_stream(physical.clone(), self.ctx.task_ctx())?;
        if is_command {
            let batches = datafusion::physical_plan::common::collect(stream).await?;
            let count = batches
                .iter()
                .filter_map(|b| {
                    b.column(0)
                        .as_any()
                        .downcast_ref::<arrow::array::UInt64Array>()
                })
                .map(|a| a.iter().flatten().sum::<u64>())
                .sum();
            return Ok(Outcome::Count(count));
        }
        let stream = if is_explain && !pushdown.is_empty() {
            explain_with_summary(stream, &pushdown)?
        } else {
            stream
        };
        Ok(Outcome::Rows(QueryRows {
            schema,
            stream,
            plan: physical,
            pushdown,
        }))
    }

    async fn plan(&self, statement: DfStatement) -> Result<LogicalPlan> {
        load_live_tables(&statement, &self.sources).await?;
        let plan = self.ctx.state().statement_to_plan(statement).await?;
        let plan = self.tables.functions.parse_inserted_text(plan)?;
        SQLOptions::new()
            .with_allow_ddl(false)
            .verify_plan(&plan)
            .map_err(|_| {
                plan_datafusion_err!(
                    "this statement is not supported: kyma runs CREATE TABLE, DROP TABLE, ALTER TABLE … ADD COLUMN, INSERT and queries"
                )
            })?;
        Ok(plan)
    }

    async fn run_kyma_command(&self, command: KymaCommand<'_>) -> Result<u64> {
        let catalog = &self.tables.catalog;
        let revision = match command {
            KymaCommand::Create(create) => return self.create_table(create).await,
            KymaCommand::Drop { names, if_exists } => {
                let mut revision = None;
                for name in names {
                    let table = native_table(name)?;
                    match catalog.drop_table(&table).await {
                        Ok(()) => revision = Some(catalog.ping().await.map_err(catalog_df)?),
                        Err(CatalogError::NotFound(_)) if if_exists => {}
                        Err(e) => return Err(catalog_df(e)),
                    }
                }
                revision
            }
            KymaCommand::AddColumn { table, column } => {
                let table = native_table(table)?;
                let state = catalog.table(&table).await.map_err(catalog_df)?;
                let column = column_of(column, Some(&state.schema.value))?;
                Some(
                    catalog
                        .widen_schema(&table, &[column])
                        .await
                        .map_err(catalog_df)?
                        .mod_revision,
                )
            }
        };
        self.tables.await_visible(revision).await;
        Ok(0)
    }

    async fn create_table(&self, create: &CreateTable) -> Result<u64> {
        let table = native_table(&create.name)?;
        let (columns, rows) = match &create.query {
            None => {
                let columns = create
                    .columns
                    .iter()
                    .map(|c| column_of(c, None))
                    .collect::<Result<Vec<_>>>()?;
                (columns, None)
            }
            Some(query) => {
                if !create.columns.is_empty() {
                    return plan_err!(
                        "CREATE TABLE … AS takes its columns from the query; drop the column list"
                    );
                }
                let plan = self
                    .plan(DfStatement::Statement(Box::new(Statement::Query(
                        query.clone(),
                    ))))
                    .await?;
                let columns = columns_of(plan.schema().as_arrow()).map_err(to_df)?;
                let stream = self
                    .ctx
                    .execute_logical_plan(plan)
                    .await?
                    .execute_stream()
                    .await?;
                (columns, Some(stream))
            }
        };
        match self
            .tables
            .catalog
            .create_table(&table, TableOrigin::Native, columns)
            .await
        {
            Ok(state) => {
                self.tables
                    .await_visible(Some(state.schema.mod_revision))
                    .await
            }
            Err(CatalogError::AlreadyExists(_)) if create.if_not_exists => return Ok(0),
            Err(e) => return Err(catalog_df(e)),
        }
        match rows {
            None => Ok(0),
            Some(stream) => self.write(&table, stream).await,
        }
    }

    /// Bulk ingest of `batches` into `table` (what Flight SQL `CommandStatementIngest` runs).
    pub async fn ingest(
        &self,
        table: &TableRef,
        mode: IngestMode,
        schema: &arrow::datatypes::Schema,
        batches: impl Stream<Item = Result<RecordBatch>> + Send + Unpin,
    ) -> Result<u64> {
        check_native(table)?;
        let schema = &crate::wire::ingested_schema(schema);
        let batches = batches.map(|batch| {
            batch
                .and_then(|batch| crate::wire::ingested_batch(batch).map_err(DataFusionError::from))
        });
        let catalog = &self.tables.catalog;
        if mode == IngestMode::Replace {
            match catalog.drop_table(table).await {
                Ok(()) | Err(CatalogError::NotFound(_)) => {}
                Err(e) => return Err(catalog_df(e)),
            }
        }
        let columns = columns_of(schema).map_err(to_df)?;
        match mode {
            IngestMode::Append => {
                catalog.table(table).await.map_err(catalog_df)?;
            }
            IngestMode::Create | IngestMode::Replace | IngestMode::CreateAppend => {
                match catalog
                    .create_table(table, TableOrigin::Native, columns)
                    .await
                {
                    Ok(_) => {}
                    Err(CatalogError::AlreadyExists(_)) if mode == IngestMode::CreateAppend => {}
                    Err(e) => return Err(catalog_df(e)),
                }
            }
        }
        self.write(table, batches).await
    }

    async fn write(
        &self,
        table: &TableRef,
        batches: impl Stream<Item = Result<RecordBatch>> + Send + Unpin,
    ) -> Result<u64> {
        self.tables.write(table, batches).await
    }
}

/// What [`QueryEngine::describe`] found.
#[derive(Debug, Clone)]
pub struct Described {
    /// The result's schema (a `count` column for commands).
    pub schema: SchemaRef,
    /// Whether it returns rows.
    pub is_query: bool,
    /// Placeholders in order, with their types when the planner could infer them.
    pub parameters: Vec<(String, Option<arrow::datatypes::DataType>)>,
    /// What each federated source would run (empty while placeholders are unbound).
    pub pushdown: Vec<SourceSummary>,
}

/// `EXPLAIN` output with one more row: the `pushdown_summary` as pretty JSON.
fn explain_with_summary(
    stream: SendableRecordBatchStream,
    pushdown: &[SourceSummary],
) -> Result<SendableRecordBatchStream> {
    let schema = stream.schema();
    let json = serde_json::to_string_pretty(pushdown)
        .map_err(|e| DataFusionError::Internal(e.to_string()))?;
    let columns: Vec<arrow::array::ArrayRef> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, _)| {
            let value = if i == 0 {
                EXPLAIN_SUMMARY_ROW
            } else {
                json.as_str()
            };
            Arc::new(arrow::array::StringArray::from(vec![value])) as arrow::array::ArrayRef
        })
        .collect();
    let summary = RecordBatch::try_new(schema.clone(), columns)?;
    let rows = stream.chain(futures::stream::once(async move { Ok(summary) }));
    Ok(Box::pin(RecordBatchStreamAdapter::new(schema, rows)))
}

/// The statements kyma runs itself.
enum KymaCommand<'a> {
    Create(&'a CreateTable),
    Drop {
        names: &'a [ObjectName],
        if_exists: bool,
    },
    AddColumn {
        table: &'a ObjectName,
        column: &'a ColumnDef,
    },
}

fn kyma_command(statement: &DfStatement) -> Option<KymaCommand<'_>> {
    let DfStatement::Statement(statement) = statement else {
        return None;
    };
    match statement.as_ref() {
        Statement::CreateTable(create) => Some(KymaCommand::Create(create)),
        Statement::Drop {
            object_type: ObjectType::Table,
            names,
            if_exists,
            ..
        } => Some(KymaCommand::Drop {
            names,
            if_exists: *if_exists,
        }),
        Statement::AlterTable(alter) => match alter.operations.as_slice() {
            [AlterTableOperation::AddColumn { column_def, .. }] => Some(KymaCommand::AddColumn {
                table: &alter.name,
                column: column_def,
            }),
            _ => None,
        },
        _ => None,
    }
}

/// Parses exactly one statement, turning `?` placeholders into `$1`, `$2`, ….
fn parse_one(sql: &str) -> Result<DfStatement> {
    let sql = number_placeholders(sql)?;
    let mut statements = DFParser::parse_sql_with_dialect(&sql, &GenericDialect {})?;
    match (statements.pop_front(), statements.is_empty()) {
        (Some(statement), true) => Ok(statement),
        (None, _) => plan_err!("the SQL text holds no statement"),
        (Some(_), false) => plan_err!("send one statement at a time"),
    }
}

/// Rewrites JDBC/ODBC-style `?` placeholders as DataFusion's `$n`, leaving strings, quoted
/// identifiers and comments untouched (the tokenizer tells them apart).
fn number_placeholders(sql: &str) -> Result<String> {
    if !sql.contains('?') {
        return Ok(sql.to_owned());
    }
    let tokens = Tokenizer::new(&GenericDialect {}, sql)
        .tokenize_with_location()
        .map_err(|e| DataFusionError::SQL(Box::new(e.into()), None))?;
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(sql.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let offset = |line: u64, column: u64| -> Option<usize> {
        let start = *line_starts.get(usize::try_from(line).ok()?.checked_sub(1)?)?;
        let skip = usize::try_from(column).ok()?.checked_sub(1)?;
        sql[start..]
            .char_indices()
            .nth(skip)
            .map(|(i, _)| start + i)
    };
    let mut out = String::with_capacity(sql.len() + 8);
    let mut copied = 0;
    let mut n = 0;
    for token in tokens {
        if token.token == Token::Placeholder("?".into()) {
            let Some(at) = offset(token.span.start.line, token.span.start.column) else {
                return plan_err!("cannot locate a `?` placeholder in the SQL text");
            };
            n += 1;
            out.push_str(&sql[copied..at]);
            out.push_str(&format!("${n}"));
            copied = at + 1;
        }
    }
    out.push_str(&sql[copied..]);
    Ok(out)
}

fn placeholder_index(name: &str) -> usize {
    name.trim_start_matches('$').parse().unwrap_or(usize::MAX)
}

/// An identifier as DataFusion normalizes it: unquoted names fold to lower case.
pub(crate) fn normalize(ident: &Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_lowercase()
    }
}

fn name_parts(name: &ObjectName) -> Result<Vec<String>> {
    name.0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(ident) => Ok(normalize(ident)),
            ObjectNamePart::Function(_) => plan_err!("`{name}` is not a table name"),
        })
        .collect()
}

fn native_table(name: &ObjectName) -> Result<TableRef> {
    let table = resolve(&name_parts(name)?)?;
    check_native(&table)?;
    Ok(table)
}

fn check_native(table: &TableRef) -> Result<()> {
    if table.catalog != KYMA_CATALOG {
        return plan_err!(
            "{table}: kyma tables live in catalog `{KYMA_CATALOG}`; `{}` is not writable here",
            table.catalog
        );
    }
    table.validate().map_err(catalog_df)
}

/// A column definition as a kyma column. `existing` (for ALTER TABLE) resolves promotion.
fn column_of(def: &ColumnDef, existing: Option<&kyma_catalog::TableSchema>) -> Result<Column> {
    let name = normalize(&def.name);
    let ty = kyma_type_of(&name, &def.data_type.to_string())?;
    let mut column = Column::new(&name, ty);
    for option in &def.options {
        match &option.option {
            ColumnOption::NotNull => column.nullable = false,
            ColumnOption::Null => column.nullable = true,
            ColumnOption::Generated {
                generation_expr: Some(expr),
                ..
            } => {
                let promoted = promoted_path(expr).ok_or_else(|| {
                    plan_datafusion_err!(
                        "column `{name}`: a generated column must read a dynamic path, like GENERATED ALWAYS AS (attributes['service.name'])"
                    )
                })?;
                match existing.and_then(|s| s.column(&promoted.column)) {
                    Some(source) if source.ty == KymaType::Dynamic => {}
                    Some(source) => {
                        return plan_err!(
                            "column `{name}`: `{}` is {}, only dynamic columns can be promoted from",
                            promoted.column,
                            source.ty
                        );
                    }
                    None => {
                        return plan_err!(
                            "column `{name}`: the table has no dynamic column `{}`",
                            promoted.column
                        );
                    }
                }
                column.promoted_from = Some(promoted);
            }
            other => {
                return plan_err!("column `{name}`: `{other}` is not supported on kyma columns");
            }
        }
    }
    Ok(column)
}

/// `attributes['a']['b']` as a promotion source.
fn promoted_path(expr: &SqlExpr) -> Option<PromotedPath> {
    match expr {
        SqlExpr::Nested(inner) => promoted_path(inner),
        SqlExpr::CompoundFieldAccess { root, access_chain } => {
            let SqlExpr::Identifier(column) = root.as_ref() else {
                return None;
            };
            let path = access_chain
                .iter()
                .map(|access| match access {
                    AccessExpr::Subscript(Subscript::Index {
                        index: SqlExpr::Value(v),
                    }) => match &v.value {
                        Value::SingleQuotedString(s) => Some(s.clone()),
                        Value::Number(n, _) => Some(n.to_string()),
                        _ => None,
                    },
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?;
            Some(PromotedPath {
                column: normalize(column),
                path,
            })
        }
        _ => None,
    }
}

/// A SQL type name as a kyma type; common SQL spellings are accepted as aliases.
fn kyma_type_of(column: &str, sql_type: &str) -> Result<KymaType> {
    let lower = sql_type.trim().to_ascii_lowercase();
    let base = lower.split('(').next().unwrap_or_default().trim();
    let ty = match base {
        "int" | "integer" | "int4" | "smallint" | "int2" | "tinyint" => KymaType::Int,
        "long" | "bigint" | "int8" => KymaType::Long,
        "real" | "double" | "double precision" | "float" | "float4" | "float8" => KymaType::Real,
        "bool" | "boolean" => KymaType::Bool,
        "string" | "text" | "varchar" | "char" | "character varying" => KymaType::String,
        "timestamp" | "timestamptz" => KymaType::Timestamp,
        "dynamic" | "json" | "jsonb" => KymaType::Dynamic,
        _ => lower.parse::<KymaType>().map_err(|_| {
            plan_datafusion_err!(
                "column `{column}`: `{sql_type}` is not a kyma type; use int, long, real, bool, string, timestamp, dynamic or vector(N)"
            )
        })?,
    };
    Ok(ty)
}

fn catalog_df(e: CatalogError) -> DataFusionError {
    to_df(TableError::Catalog(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_marks_become_numbered_placeholders_outside_strings() {
        let sql = "SELECT '?' AS q, a FROM t WHERE a = ? AND\n b = ? -- ?";
        assert_eq!(
            number_placeholders(sql).expect("rewrites"),
            "SELECT '?' AS q, a FROM t WHERE a = $1 AND\n b = $2 -- ?"
        );
    }

    #[test]
    fn sql_type_names_map_to_kyma_types() {
        assert_eq!(kyma_type_of("c", "BIGINT").expect("long"), KymaType::Long);
        assert_eq!(
            kyma_type_of("c", "vector(3)").expect("vector"),
            KymaType::Vector(3)
        );
        assert_eq!(
            kyma_type_of("c", "VARCHAR(20)").expect("string"),
            KymaType::String
        );
        let err = kyma_type_of("c", "money").expect_err("unknown");
        assert!(err.to_string().contains("not a kyma type"), "{err}");
    }

    #[test]
    fn promotion_reads_a_bracket_path() {
        let statement = parse_one(
            "ALTER TABLE t ADD COLUMN svc string GENERATED ALWAYS AS (attributes['service.name'])",
        )
        .expect("parses");
        let Some(KymaCommand::AddColumn { column, .. }) = kyma_command(&statement) else {
            panic!("not an ADD COLUMN");
        };
        let Some(ColumnOption::Generated {
            generation_expr: Some(expr),
            ..
        }) = column.options.first().map(|o| &o.option)
        else {
            panic!("no generated expression");
        };
        assert_eq!(
            promoted_path(expr),
            Some(PromotedPath {
                column: "attributes".into(),
                path: vec!["service.name".into()]
            })
        );
    }
}

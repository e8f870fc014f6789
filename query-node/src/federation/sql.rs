//! What SQL sources share: a dialect, SQL generation from a plan subtree, and
//! [`SqlFederation`], the [`FederatedSource`] of any dialect and executor.
//!
//! # SQL generation
//!
//! The SQL of a subtree is written by DataFusion's unparser in the source's dialect, which
//! quotes every identifier and escapes every literal; each table reference is then replaced
//! by the table's *typed relation* (a `SELECT` that reads each column as its kyma type),
//! parsed with the source's parser dialect. No user text reaches the source except as a
//! quoted identifier or an escaped literal. The select list is exactly the subtree's output
//! fields, in order, so the rows decode straight into the subtree's schema.

use std::collections::HashMap;
use std::fmt;
use std::ops::ControlFlow;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::{
    Aggregate, Expr, ExprSchemable, LogicalPlan, LogicalPlanBuilder, Projection, SortExpr,
};
use datafusion::sql::sqlparser::ast::{self, VisitMut, VisitorMut};
use datafusion::sql::sqlparser::dialect::Dialect as ParserDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::unparser::Unparser;
use datafusion::sql::unparser::dialect::Dialect as UnparserDialect;
use kyma_catalog::ConnectorSpec;
use kyma_connectors::ConnectorError;

use super::capabilities::Capabilities;
use super::source::{
    FederatedColumn, FederatedSource, QueryOutput, RecordBatches, SourceIdentity, SourceQuery,
    SourceTable, refused_query,
};
use super::table::federated_table;

/// How a SQL source spells things.
pub trait SqlDialect: fmt::Debug + Send + Sync + 'static {
    /// DataFusion's unparser dialect for the source.
    fn unparser(&self) -> &dyn UnparserDialect;

    /// The parser dialect its typed relations are read back with.
    fn parser(&self) -> &dyn ParserDialect;

    /// `name` as an identifier: always quoted, so any name is just a name.
    fn quote_ident(&self, name: &str) -> String;

    /// What the source computes exactly as DataFusion does.
    fn capabilities(&self) -> &dyn Capabilities;

    /// Whether the source's SQL has no `OFFSET` without a `LIMIT` (MySQL): an offset alone
    /// is then written with the largest limit.
    fn offset_needs_limit(&self) -> bool {
        false
    }

    /// The typed relation of `table`: each column read through its typed expression under
    /// its own name.
    fn relation(&self, table: &SqlTable) -> String {
        let selects: Vec<String> = table
            .columns
            .iter()
            .map(|c| format!("{} AS {}", c.select, self.quote_ident(&c.column.name)))
            .collect();
        format!(
            "SELECT {} FROM {}.{}",
            selects.join(", "),
            self.quote_ident(&table.schema),
            self.quote_ident(&table.table)
        )
    }
}

/// The driver side of a SQL source: its catalog and its result streams.
#[async_trait]
pub trait SqlExecutor: fmt::Debug + Send + Sync + 'static {
    /// The tables in the scope of `spec`, each column with its typed expression.
    async fn discover(&self, spec: &ConnectorSpec) -> Result<Vec<SqlTable>, ConnectorError>;

    /// Runs `sql`, streaming its rows as `output` asks.
    fn execute(&self, sql: String, output: QueryOutput) -> RecordBatches;
}

/// A source table as a SQL source describes it.
#[derive(Debug, Clone)]
pub struct SqlTable {
    /// Source schema.
    pub schema: String,
    /// Source table.
    pub table: String,
    /// Its columns, in order.
    pub columns: Vec<SqlColumn>,
}

impl SqlTable {
    /// The tables of `columns` (each with its schema and table, in table order) that the
    /// scope of `spec` covers, each column read as `typed` says.
    pub fn in_scope<C>(
        spec: &ConnectorSpec,
        columns: impl IntoIterator<Item = (String, String, C)>,
        typed: impl Fn(&ConnectorSpec, &C) -> SqlColumn,
    ) -> Vec<Self> {
        let mut tables: Vec<Self> = Vec::new();
        for (schema, table, column) in columns {
            if !spec.scope.covers(&schema, &table) {
                continue;
            }
            let column = typed(spec, &column);
            match tables.last_mut() {
                Some(t) if t.schema == schema && t.table == table => t.columns.push(column),
                _ => tables.push(Self {
                    schema,
                    table,
                    columns: vec![column],
                }),
            }
        }
        tables
    }
}

/// A column and the SQL that reads it as its kyma type.
#[derive(Debug, Clone)]
pub struct SqlColumn {
    /// The column.
    pub column: FederatedColumn,
    /// The expression reading it as its kyma type, e.g. `"id"::int8`.
    pub select: String,
}

/// A SQL source: dialect `D` over executor `E`.
#[derive(Debug)]
pub struct SqlFederation<D, E> {
    spec: ConnectorSpec,
    identity: Option<SourceIdentity>,
    dialect: D,
    executor: E,
}

impl<D: SqlDialect, E: SqlExecutor> SqlFederation<D, E> {
    /// The source of `spec` at `identity`.
    pub fn new(
        spec: ConnectorSpec,
        identity: Option<SourceIdentity>,
        dialect: D,
        executor: E,
    ) -> Self {
        Self {
            spec,
            identity,
            dialect,
            executor,
        }
    }
}

#[async_trait]
impl<D: SqlDialect, E: SqlExecutor> FederatedSource for SqlFederation<D, E> {
    fn spec(&self) -> &ConnectorSpec {
        &self.spec
    }

    fn identity(&self) -> Option<&SourceIdentity> {
        self.identity.as_ref()
    }

    async fn discover(&self) -> Result<Vec<SourceTable>, ConnectorError> {
        let tables = self.executor.discover(&self.spec).await?;
        Ok(tables
            .into_iter()
            .map(|table| {
                let relation = self.dialect.relation(&table);
                let columns = table.columns.into_iter().map(|c| c.column).collect();
                SourceTable::new(table.schema, table.table, columns, relation)
            })
            .collect())
    }

    fn capabilities(&self) -> &dyn Capabilities {
        self.dialect.capabilities()
    }

    fn compile(&self, subtree: &LogicalPlan) -> Result<SourceQuery> {
        generate_sql(subtree, &self.dialect).map(SourceQuery::Sql)
    }

    fn execute(&self, query: &SourceQuery, output: QueryOutput) -> RecordBatches {
        // A SQL source compiles only SQL.
        match query {
            SourceQuery::Sql(sql) => self.executor.execute(sql.clone(), output),
            other => refused_query(other),
        }
    }
}

/// The SQL of a subtree (see the module doc).
pub fn generate_sql(plan: &LogicalPlan, dialect: &dyn SqlDialect) -> Result<String> {
    let mut relations = HashMap::new();
    plan.apply(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && let Some(table) = federated_table(scan)
        {
            let name = &scan.table_name;
            let parts: Vec<String> = [name.catalog(), name.schema(), Some(name.table())]
                .into_iter()
                .flatten()
                .map(str::to_owned)
                .collect();
            relations.insert(
                parts,
                (table.meta.relation.clone(), name.table().to_owned()),
            );
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    let root = select_list_exact(simplify_for_sql(plan.clone())?)?;
    let root = spell_out_for_dialect(root, dialect)?;
    let mut statement = Unparser::new(dialect.unparser()).plan_to_sql(&root)?;
    let mut replacer = TypedRelations {
        relations,
        dialect,
        error: None,
    };
    let _ = statement.visit(&mut replacer);
    if let Some(e) = replacer.error {
        return Err(e);
    }
    Ok(statement.to_string())
}

/// Makes the statement's select list exactly the plan's output: a projection of every
/// output column goes under the root's Sort and Limit nodes (which keep their input's
/// columns), unless a projection is already there.
fn select_list_exact(plan: LogicalPlan) -> Result<LogicalPlan> {
    match plan {
        LogicalPlan::Projection(_) => Ok(plan),
        LogicalPlan::Sort(_) | LogicalPlan::Limit(_) => plan
            .map_children(|input| select_list_exact(input).map(Transformed::yes))
            .map(|t| t.data),
        other => {
            let columns: Vec<Expr> = other
                .schema()
                .columns()
                .into_iter()
                .map(Expr::Column)
                .collect();
            LogicalPlanBuilder::from(other).project(columns)?.build()
        }
    }
}

/// Reshapes a subtree where DataFusion's unparser would otherwise write SQL that fails or,
/// worse, answers differently:
///
/// - a projection over a projection (common subexpressions) or column-pruning projection
///   under an aggregate would become a derived table whose columns lose their qualifiers:
///   the projections are merged into their parent;
/// - a LIMIT … OFFSET over a Sort that carries its own fetch would be written with the
///   sort's fetch as the LIMIT: the sort's fetch is dropped, the LIMIT says it all.
fn simplify_for_sql(plan: LogicalPlan) -> Result<LogicalPlan> {
    plan.transform_up(|node| match node {
        LogicalPlan::Projection(outer)
            if matches!(outer.input.as_ref(), LogicalPlan::Projection(_)) =>
        {
            merge_projections(outer)
        }
        LogicalPlan::Aggregate(aggregate)
            if matches!(aggregate.input.as_ref(), LogicalPlan::Projection(p)
                if p.expr.iter().all(|e| matches!(e, Expr::Column(_)))) =>
        {
            unprune_aggregate(aggregate)
        }
        LogicalPlan::Limit(limit)
            if limit.skip.is_some()
                && matches!(limit.input.as_ref(), LogicalPlan::Sort(s) if s.fetch.is_some()) =>
        {
            let LogicalPlan::Sort(sort) = limit.input.as_ref() else {
                return Ok(Transformed::no(LogicalPlan::Limit(limit)));
            };
            let mut unbounded = sort.clone();
            unbounded.fetch = None;
            let mut limit = limit;
            limit.input = Arc::new(LogicalPlan::Sort(unbounded));
            Ok(Transformed::yes(LogicalPlan::Limit(limit)))
        }
        other => Ok(Transformed::no(other)),
    })
    .map(|t| t.data)
}

/// Writes what the dialect's SQL cannot say as DataFusion means it:
///
/// - where the unparser drops `NULLS FIRST`/`NULLS LAST` (its dialect does not support
///   them, e.g. MySQL, which sorts NULLs first ascending and last descending), each sort key
///   that may be NULL is preceded by `key IS NULL`, ascending for NULLs last and descending
///   for NULLs first, so the source's own NULL order never decides;
/// - an `OFFSET` without a `LIMIT` gets the largest limit where the dialect needs one.
fn spell_out_for_dialect(plan: LogicalPlan, dialect: &dyn SqlDialect) -> Result<LogicalPlan> {
    let nulls_written = dialect.unparser().supports_nulls_first_in_sort();
    let offset_needs_limit = dialect.offset_needs_limit();
    plan.transform_up(|node| match node {
        LogicalPlan::Sort(mut sort) if !nulls_written => {
            let schema = sort.input.schema().clone();
            let mut keys = Vec::with_capacity(sort.expr.len() * 2);
            for key in sort.expr {
                if key.expr.nullable(schema.as_ref())? {
                    keys.push(SortExpr::new(
                        Expr::IsNull(Box::new(key.expr.clone())),
                        !key.nulls_first,
                        false,
                    ));
                }
                keys.push(key);
            }
            sort.expr = keys;
            Ok(Transformed::yes(LogicalPlan::Sort(sort)))
        }
        LogicalPlan::Limit(mut limit)
            if offset_needs_limit && limit.skip.is_some() && limit.fetch.is_none() =>
        {
            limit.fetch = Some(Box::new(Expr::Literal(
                ScalarValue::Int64(Some(i64::MAX)),
                None,
            )));
            Ok(Transformed::yes(LogicalPlan::Limit(limit)))
        }
        other => Ok(Transformed::no(other)),
    })
    .map(|t| t.data)
}

/// A projection over a projection, as one.
fn merge_projections(outer: Projection) -> Result<Transformed<LogicalPlan>> {
    let LogicalPlan::Projection(inner) = outer.input.as_ref() else {
        return Ok(Transformed::no(LogicalPlan::Projection(outer)));
    };
    let mut merged = Vec::with_capacity(outer.expr.len());
    for (i, expr) in outer.expr.iter().enumerate() {
        let (qualifier, field) = outer.schema.qualified_field(i);
        let inlined = inline_columns(expr.clone(), inner)?;
        merged.push(
            inlined
                .unalias()
                .alias_qualified(qualifier.cloned(), field.name()),
        );
    }
    let projection = Projection::try_new(merged, inner.input.clone())?;
    Ok(Transformed::yes(LogicalPlan::Projection(projection)))
}

/// An aggregate over a column-pruning projection, without the projection.
fn unprune_aggregate(aggregate: Aggregate) -> Result<Transformed<LogicalPlan>> {
    let LogicalPlan::Projection(projection) = aggregate.input.as_ref() else {
        return Ok(Transformed::no(LogicalPlan::Aggregate(aggregate)));
    };
    let pruned = Aggregate::try_new(
        projection.input.clone(),
        aggregate.group_expr.clone(),
        aggregate.aggr_expr.clone(),
    )?;
    Ok(Transformed::yes(LogicalPlan::Aggregate(pruned)))
}

/// `expr` with each column of `inner`'s output replaced by the expression computing it.
fn inline_columns(expr: Expr, inner: &Projection) -> Result<Expr> {
    expr.transform_up(|e| match e {
        Expr::Column(column) => {
            let index = inner.schema.index_of_column(&column)?;
            Ok(Transformed::yes(inner.expr[index].clone().unalias()))
        }
        other => Ok(Transformed::no(other)),
    })
    .map(|t| t.data)
}

/// Replaces each source table in the unparsed statement with its typed relation.
struct TypedRelations<'a> {
    /// Table name parts → (typed relation, the name it is visible under).
    relations: HashMap<Vec<String>, (String, String)>,
    dialect: &'a dyn SqlDialect,
    error: Option<DataFusionError>,
}

impl TypedRelations<'_> {
    /// The typed relation `relation` as a derived table named `table`.
    fn derived(&self, relation: &str, table: &str) -> Result<ast::TableFactor> {
        let sql = format!(
            "SELECT 1 FROM ({relation}) AS {}",
            self.dialect.quote_ident(table)
        );
        let query = Parser::new(self.dialect.parser())
            .try_with_sql(&sql)
            .and_then(|mut p| p.parse_query())
            .map_err(|e| {
                DataFusionError::Internal(format!("the typed relation does not parse: {e}"))
            })?;
        if let ast::SetExpr::Select(select) = *query.body
            && let Some(from) = select.from.into_iter().next()
        {
            return Ok(from.relation);
        }
        Err(DataFusionError::Internal(
            "the typed relation did not parse as a table".into(),
        ))
    }
}

impl VisitorMut for TypedRelations<'_> {
    type Break = ();

    fn pre_visit_table_factor(&mut self, factor: &mut ast::TableFactor) -> ControlFlow<()> {
        let ast::TableFactor::Table { name, alias, .. } = factor else {
            return ControlFlow::Continue(());
        };
        let parts: Vec<String> = name
            .0
            .iter()
            .filter_map(|p| p.as_ident().map(|i| i.value.clone()))
            .collect();
        let Some((relation, table)) = self.relations.get(&parts) else {
            return ControlFlow::Continue(());
        };
        let original_alias = alias.clone();
        match self.derived(relation, table) {
            Ok(derived) => {
                *factor = derived;
                if let (Some(original), ast::TableFactor::Derived { alias, .. }) =
                    (original_alias, &mut *factor)
                {
                    *alias = Some(original);
                }
                ControlFlow::Continue(())
            }
            Err(e) => {
                self.error = Some(e);
                ControlFlow::Break(())
            }
        }
    }
}

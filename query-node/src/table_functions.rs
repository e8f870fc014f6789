//! Table functions over a connector's tables (SPEC §3, §4):
//!
//! - `raw(pg_prod.public.users)`: every stored row of a synced table — all versions and
//!   tombstones, with the system columns — where reading it by name gives the current state;
//! - `live(pg_prod.public.users)`: the source table itself, read through federation (pushdown
//!   and `pushdown_summary` included), for a connector in mode `both` (whose plain names read
//!   the synced copy) or `federation` (where it equals the plain name).
//!
//! # The argument
//!
//! DataFusion plans a table function's arguments as expressions over an empty schema, so the
//! table name in `raw(pg_prod.public.users)` reaches [`TableFunctionImpl::call_with_args`] as
//! a column reference: `Expr::Column` named `users` whose relation is the partial table
//! reference `pg_prod.public` (a two-part name arrives as a column qualified by a bare table,
//! one part as an unqualified column). Both functions take that form or the name as a string
//! literal, `raw('pg_prod.public.users')`, whose parts are SQL identifiers (unquoted ones fold
//! to lower case, as in the first form). Names resolve as table names do: `t` is
//! `kyma.default.t`, `s.t` is `kyma.s.t`.
//!
//! # live() and planning
//!
//! DataFusion calls table functions synchronously while planning, but a source's table list
//! is read from the source. So before a statement is planned, [`load_live_tables`] loads the
//! table each `live()` call names (re-reading the source's list when it is stale, as a lookup
//! by name does), and `live()` takes it from the loaded list.

use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{Result, ScalarValue, TableReference, plan_err};
use datafusion::logical_expr::Expr;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{
    Expr as SqlExpr, FunctionArg, FunctionArgExpr, ObjectNamePart, TableFactor, Value, Visit,
    Visitor,
};
use kyma_catalog::{ConnectorMode, TableOrigin, TableRef};

use crate::engine::normalize;
use crate::federation::FederatedSources;
use crate::provider::{KYMA_CATALOG, KymaTable, NodeTables, resolve};

/// The name `raw()` is registered under.
pub const RAW: &str = "raw";
/// The name `live()` is registered under.
pub const LIVE: &str = "live";

/// `raw(connector.schema.table)`: every stored row of a synced table.
#[derive(Debug)]
pub struct RawFunction {
    tables: Arc<NodeTables>,
}

impl RawFunction {
    /// `raw()` over the tables of `tables`' view.
    pub fn new(tables: Arc<NodeTables>) -> Self {
        Self { tables }
    }

    /// Why `table` is not a synced table, saying what to name instead.
    fn missing(&self, table: &TableRef) -> String {
        let example =
            "name a synced table as connector.schema.table, like raw(pg_prod.public.users)";
        if table.catalog == KYMA_CATALOG {
            return format!("{RAW}(): there is no table {table}; {example}");
        }
        match self.tables.view.connector(&table.catalog) {
            None => format!(
                "{RAW}(): there is no connector `{}` (in {table}); {example}",
                table.catalog
            ),
            Some(spec) if !spec.mode.syncs() => format!(
                "{RAW}(): connector `{}` does not sync (mode {}), so it stores no rows; register it with mode sync or both",
                spec.name,
                spelled(spec.mode)
            ),
            Some(spec) => format!(
                "{RAW}(): connector `{}` has no synced table `{}.{}`; its synced tables are listed in information_schema.tables under catalog `{}`",
                spec.name, table.schema, table.table, spec.name
            ),
        }
    }
}

impl TableFunctionImpl for RawFunction {
    fn call_with_args(&self, args: TableFunctionArgs<'_, '_>) -> Result<Arc<dyn TableProvider>> {
        let table = named_table(RAW, args.exprs())?;
        let Some(entry) = self.tables.view.table(&table) else {
            return plan_err!("{}", self.missing(&table));
        };
        match &entry.state.meta.origin {
            TableOrigin::Synced { .. } => Ok(Arc::new(KymaTable::new(self.tables.clone(), entry))),
            TableOrigin::Native => plan_err!(
                "{RAW}(): {table} is a kyma table, which keeps no versions: query it by name; {RAW}() reads a synced table, named connector.schema.table"
            ),
        }
    }
}

/// `live(connector.schema.table)`: the source table, read through federation.
#[derive(Debug)]
pub struct LiveFunction {
    sources: Arc<FederatedSources>,
}

impl LiveFunction {
    /// `live()` over the federated `sources`.
    pub fn new(sources: Arc<FederatedSources>) -> Self {
        Self { sources }
    }
}

impl TableFunctionImpl for LiveFunction {
    fn call_with_args(&self, args: TableFunctionArgs<'_, '_>) -> Result<Arc<dyn TableProvider>> {
        let table = named_table(LIVE, args.exprs())?;
        if table.catalog == KYMA_CATALOG {
            return plan_err!(
                "{LIVE}(): {table} is a kyma table: query it by name; {LIVE}() reads a connector's source, named connector.schema.table"
            );
        }
        let Some(spec) = self.sources.connector(&table.catalog) else {
            return plan_err!(
                "{LIVE}(): there is no connector `{}` (in {table}); name a source table as connector.schema.table, like live(pg_prod.public.users)",
                table.catalog
            );
        };
        if spec.mode == ConnectorMode::Sync {
            return plan_err!(
                "{LIVE}(): connector `{}` does not federate (mode sync), so kyma does not query its source; read the synced table by name ({table}), or register the connector with mode both to read the source with {LIVE}()",
                spec.name
            );
        }
        let Some(source) = self.sources.source(&spec.name) else {
            return plan_err!(
                "{LIVE}(): connector `{}` is a {} source, which kyma does not federate yet",
                spec.name,
                spelled(spec.source_type)
            );
        };
        let Some(provider) = source.loaded_table(&table.schema, &table.table) else {
            return plan_err!(
                "{LIVE}(): connector `{}` has no table `{}.{}` in its scope at the source",
                spec.name,
                table.schema,
                table.table
            );
        };
        // The same provider as the plain name of a federated table: the federation rule
        // (which recognises its scans by the provider) pushes work to the source alike.
        Ok(Arc::new(provider))
    }
}

/// Loads the source table of every `live()` call in `statement` (see the module doc). A call
/// that does not name a federated table is left for `live()` to explain.
pub async fn load_live_tables(statement: &DfStatement, sources: &FederatedSources) -> Result<()> {
    let mut calls = LiveCalls::default();
    collect_live_calls(statement, &mut calls);
    for table in calls.tables {
        if let Some(source) = sources.source(&table.catalog) {
            source.table(&table.schema, &table.table).await?;
        }
    }
    Ok(())
}

fn collect_live_calls(statement: &DfStatement, calls: &mut LiveCalls) {
    match statement {
        DfStatement::Statement(statement) => {
            let _ = statement.visit(calls);
        }
        DfStatement::Explain(explain) => collect_live_calls(&explain.statement, calls),
        _ => {}
    }
}

/// The tables named by `live()` calls in a statement.
#[derive(Default)]
struct LiveCalls {
    tables: Vec<TableRef>,
}

impl Visitor for LiveCalls {
    type Break = ();

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        if let TableFactor::Table {
            name,
            args: Some(args),
            ..
        } = factor
            && let [ObjectNamePart::Identifier(function)] = name.0.as_slice()
            && normalize(function) == LIVE
            && let [FunctionArg::Unnamed(FunctionArgExpr::Expr(arg))] = args.args.as_slice()
            && let Some(table) = sql_name_parts(arg).and_then(|parts| resolve(&parts).ok())
        {
            self.tables.push(table);
        }
        ControlFlow::Continue(())
    }
}

/// The name parts a table function's SQL argument spells (before DataFusion plans it).
fn sql_name_parts(arg: &SqlExpr) -> Option<Vec<String>> {
    match arg {
        SqlExpr::Identifier(ident) => Some(vec![normalize(ident)]),
        SqlExpr::CompoundIdentifier(idents) => Some(idents.iter().map(normalize).collect()),
        SqlExpr::Value(value) => match &value.value {
            Value::SingleQuotedString(name) => {
                Some(reference_parts(&TableReference::from(name.as_str())))
            }
            _ => None,
        },
        _ => None,
    }
}

/// The table a table function's planned arguments name (see the module doc).
fn named_table(function: &str, args: &[Expr]) -> Result<TableRef> {
    let parts = match args {
        [Expr::Column(column)] => {
            let mut parts = column
                .relation
                .as_ref()
                .map(reference_parts)
                .unwrap_or_default();
            parts.push(column.name.clone());
            parts
        }
        [Expr::Literal(ScalarValue::Utf8(Some(name)), _)]
        | [Expr::Literal(ScalarValue::LargeUtf8(Some(name)), _)]
        | [Expr::Literal(ScalarValue::Utf8View(Some(name)), _)] => {
            reference_parts(&TableReference::from(name.as_str()))
        }
        _ => {
            return plan_err!(
                "{function}() takes one table name, like {function}(pg_prod.public.users) or {function}('pg_prod.public.users')"
            );
        }
    };
    resolve(&parts)
}

fn reference_parts(reference: &TableReference) -> Vec<String> {
    [
        reference.catalog(),
        reference.schema(),
        Some(reference.table()),
    ]
    .into_iter()
    .flatten()
    .map(str::to_owned)
    .collect()
}

/// A catalog enum as the connector API spells it (`sync`, `postgres`).
fn spelled(value: impl serde::Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

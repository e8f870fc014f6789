//! What runs at a federated source, and the `pushdown_summary` that says so (SPEC §5).
//!
//! # How the decision is made
//!
//! [`FederationPushdown`] runs after DataFusion's own optimizer rules, so filters, limits
//! and projections already sit on the scans (a source table accepts a filter only when
//! [`check_filter`] finds it safe). It then walks the plan bottom-up and grows, from each
//! source scan, the largest subtree that one source query can answer:
//!
//! - scan (projection, safe filters, limit), `Filter`, `Projection`, `Sort`, `Limit`,
//!   `SubqueryAlias` over such a subtree, when every expression in them is safe;
//! - `Aggregate` with COUNT, COUNT(DISTINCT), SUM, AVG, MIN, MAX and GROUP BY;
//! - inner and outer joins whose two sides are subtrees of the *same* connector.
//!
//! A filter that is only partly safe is split: its safe conjuncts go to the source, the rest
//! runs above. The first node that cannot go ends the subtree: the subtree becomes a
//! [`FederatedScan`](super::scan::FederatedScan) carrying its SQL and its summary, and the
//! node records why it was not pushed.
//!
//! # What is safe
//!
//! Safe means the source computes exactly what DataFusion would. Sources read through typed
//! relations (see [`super::postgres`]), so values arrive as kyma types; what remains is how
//! the source compares them ([`Semantics`]): text sorts by its collation (pushed only under a
//! byte-order collation such as `C`), equality needs a deterministic collation, dynamic and
//! vector data are never compared at the source. Functions are pushed from a short list
//! (COALESCE, date_trunc with a literal unit); LOWER/UPPER are not, since Postgres maps case
//! by the collation's locale and DataFusion by Unicode; kyma-only functions never are.
//! ILIKE is not pushed for the same reason as LOWER. When in doubt, nothing is pushed: a
//! slow answer beats a wrong one.
//!
//! # SQL
//!
//! The SQL is written by DataFusion's unparser with its Postgres dialect, which quotes every
//! identifier and escapes every literal; each table reference is then replaced by the
//! table's typed relation. No user text reaches the source except as a quoted identifier or
//! an escaped literal.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, DataFusionError, Result, ScalarValue, plan_err};
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::expr::{AggregateFunction, Like};
use datafusion::logical_expr::utils::{conjunction, split_conjunction};
use datafusion::logical_expr::{
    Aggregate, BinaryExpr, Expr, ExprSchemable, Extension, Filter, JoinType, LogicalPlan,
    LogicalPlanBuilder, Operator, TableScan, TableScanBuilder,
};
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};
use datafusion::sql::sqlparser::ast::{self, VisitMut, VisitorMut};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect as PgParserDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::unparser::Unparser;
use datafusion::sql::unparser::dialect::PostgreSqlDialect;
use serde::Serialize;

use super::postgres::{PgSource, PgTable};
use super::scan::FederatedScan;

/// What the source may do with an expression's value and still agree with DataFusion.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Semantics {
    /// `=`, `!=`, IN, GROUP BY, COUNT(DISTINCT), joins on it.
    pub eq: bool,
    /// `<` and friends, ORDER BY, MIN/MAX.
    pub order: bool,
    /// For text: the collation the source compares it under (named in reasons).
    pub collation: Option<Arc<str>>,
}

impl Semantics {
    /// Numbers, booleans, timestamps: the source compares them as kyma does.
    pub const COMPARABLE: Self = Self {
        eq: true,
        order: true,
        collation: None,
    };
    /// Dynamic and vector data: readable, never compared at the source.
    pub const OPAQUE: Self = Self {
        eq: false,
        order: false,
        collation: None,
    };

    fn both(&self, other: &Self) -> Self {
        Self {
            eq: self.eq && other.eq,
            order: self.order && other.order,
            collation: self.collation.clone().or_else(|| other.collation.clone()),
        }
    }
}

/// The columns an expression may reference: a schema and each field's [`Semantics`].
struct Scope<'a> {
    schema: &'a DFSchema,
    semantics: &'a [Semantics],
}

impl Scope<'_> {
    fn column(&self, column: &Column) -> Option<Semantics> {
        let index = self.schema.index_of_column(column).ok().or_else(|| {
            let mut matches = self
                .schema
                .fields()
                .iter()
                .enumerate()
                .filter(|(_, f)| f.name() == &column.name);
            match (matches.next(), matches.next()) {
                (Some((i, _)), None) => Some(i),
                _ => None,
            }
        })?;
        self.semantics.get(index).cloned()
    }
}

/// Whether the boolean expression `filter` over a table with `semantics` per column can run
/// at the source; `Err` says why not.
pub fn check_filter(
    filter: &Expr,
    schema: &DFSchema,
    semantics: &[Semantics],
) -> Result<(), String> {
    check_expr(filter, &Scope { schema, semantics }).map(|_| ())
}

fn shown(expr: &Expr) -> String {
    expr.human_display().to_string()
}

fn require(semantics: &Semantics, order: bool, expr: &Expr) -> Result<(), String> {
    if (order && semantics.order) || (!order && semantics.eq) {
        return Ok(());
    }
    let verb = if order { "sorts" } else { "compares" };
    Err(match &semantics.collation {
        Some(collation) => format!(
            "`{}` is text under collation `{collation}`, which {verb} differently from kyma (byte order)",
            shown(expr)
        ),
        None => format!(
            "`{}` is dynamic or vector data, which the source cannot compare as kyma does",
            shown(expr)
        ),
    })
}

/// Functions whose Postgres result equals DataFusion's, for the argument kinds checked.
const DATE_TRUNC_UNITS: &[&str] = &[
    "microseconds",
    "milliseconds",
    "second",
    "minute",
    "hour",
    "day",
    "week",
    "month",
    "quarter",
    "year",
];

/// kyma's own functions (never pushed).
const KYMA_FUNCTIONS: &[&str] = &[
    "dynamic_get",
    "dynamic_long",
    "dynamic_real",
    "dynamic_string",
    "dynamic_bool",
    "dynamic_timestamp",
    "dynamic_to_json",
    "cosine_distance",
];

fn check_expr(expr: &Expr, scope: &Scope<'_>) -> Result<Semantics, String> {
    match expr {
        Expr::Column(column) => scope
            .column(column)
            .ok_or_else(|| format!("column `{column}` is not from the source")),
        Expr::Literal(value, _) => check_literal(value),
        Expr::Alias(alias) => check_expr(&alias.expr, scope),
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let l = check_expr(left, scope)?;
            let r = check_expr(right, scope)?;
            match op {
                Operator::Eq | Operator::NotEq => {
                    require(&l, false, left)?;
                    require(&r, false, right)?;
                }
                Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq => {
                    require(&l, true, left)?;
                    require(&r, true, right)?;
                }
                Operator::And | Operator::Or => {}
                other => {
                    return Err(format!(
                        "operator `{other}` is not pushed (its overflow and rounding rules differ between Postgres and DataFusion)"
                    ));
                }
            }
            Ok(Semantics::COMPARABLE)
        }
        Expr::Not(inner) => check_expr(inner, scope).map(|_| Semantics::COMPARABLE),
        // COALESCE arrives simplified to CASE WHEN x IS NOT NULL THEN x ELSE y END.
        Expr::Case(case) => {
            if let Some(operand) = &case.expr {
                let s = check_expr(operand, scope)?;
                require(&s, false, operand)?;
            }
            let mut semantics = Semantics::COMPARABLE;
            for (when, then) in &case.when_then_expr {
                check_expr(when, scope)?;
                semantics = semantics.both(&check_expr(then, scope)?);
            }
            if let Some(otherwise) = &case.else_expr {
                semantics = semantics.both(&check_expr(otherwise, scope)?);
            }
            Ok(semantics)
        }
        Expr::IsNull(inner) | Expr::IsNotNull(inner) => {
            check_expr(inner, scope).map(|_| Semantics::COMPARABLE)
        }
        Expr::InList(list) => {
            let s = check_expr(&list.expr, scope)?;
            require(&s, false, &list.expr)?;
            for item in &list.list {
                let i = check_expr(item, scope)?;
                require(&i, false, item)?;
            }
            Ok(Semantics::COMPARABLE)
        }
        Expr::Between(between) => {
            for e in [&between.expr, &between.low, &between.high] {
                let s = check_expr(e, scope)?;
                require(&s, true, e)?;
            }
            Ok(Semantics::COMPARABLE)
        }
        Expr::Like(Like {
            expr: target,
            pattern,
            case_insensitive,
            ..
        }) => {
            if *case_insensitive {
                return Err(
                    "ILIKE is not pushed: Postgres folds case by the collation's locale, DataFusion by Unicode"
                        .into(),
                );
            }
            for e in [target, pattern] {
                let s = check_expr(e, scope)?;
                require(&s, false, e)?;
            }
            Ok(Semantics::COMPARABLE)
        }
        Expr::Cast(cast) => {
            let inner = check_expr(&cast.expr, scope)?;
            let from = cast
                .expr
                .get_type(scope.schema)
                .map_err(|e| e.to_string())?;
            let to = cast.field.data_type();
            let widening = matches!(
                (&from, to),
                (DataType::Int32, DataType::Int64)
                    | (DataType::Int32 | DataType::Int64, DataType::Float64)
            );
            if widening {
                Ok(inner)
            } else {
                Err(format!(
                    "the cast of `{}` to {to} is not pushed",
                    shown(&cast.expr)
                ))
            }
        }
        Expr::ScalarFunction(function) => {
            let name = function.name();
            match name {
                "coalesce" => {
                    let mut semantics = Semantics::COMPARABLE;
                    for arg in &function.args {
                        semantics = semantics.both(&check_expr(arg, scope)?);
                    }
                    Ok(semantics)
                }
                "date_trunc" => {
                    let [unit, value] = function.args.as_slice() else {
                        return Err("date_trunc takes two arguments".into());
                    };
                    let unit_ok = matches!(
                        unit,
                        Expr::Literal(ScalarValue::Utf8(Some(u)), _)
                            if DATE_TRUNC_UNITS.contains(&u.to_ascii_lowercase().as_str())
                    );
                    let is_timestamp = matches!(
                        value.get_type(scope.schema),
                        Ok(DataType::Timestamp(_, Some(_)))
                    );
                    if !unit_ok || !is_timestamp {
                        return Err(format!(
                            "`{}` is pushed only with a literal unit ({}) on a timestamp",
                            shown(expr),
                            DATE_TRUNC_UNITS.join(", ")
                        ));
                    }
                    check_expr(value, scope)
                }
                "lower" | "upper" => Err(format!(
                    "`{name}` is not pushed: Postgres maps case by the collation's locale, DataFusion by Unicode, and they differ on some characters"
                )),
                kyma if KYMA_FUNCTIONS.contains(&kyma) => Err(format!(
                    "`{kyma}` is a kyma function; the source has no such function"
                )),
                other => Err(format!(
                    "`{other}` is not among the functions whose Postgres semantics match DataFusion's"
                )),
            }
        }
        other => Err(format!("`{}` is not pushed", shown(other))),
    }
}

fn check_literal(value: &ScalarValue) -> Result<Semantics, String> {
    match value {
        ScalarValue::Null
        | ScalarValue::Boolean(_)
        | ScalarValue::Int8(_)
        | ScalarValue::Int16(_)
        | ScalarValue::Int32(_)
        | ScalarValue::Int64(_)
        | ScalarValue::UInt8(_)
        | ScalarValue::UInt16(_)
        | ScalarValue::UInt32(_)
        | ScalarValue::TimestampMicrosecond(_, Some(_)) => Ok(Semantics::COMPARABLE),
        ScalarValue::Float64(v) if v.is_none_or(|v| v.is_finite()) => Ok(Semantics::COMPARABLE),
        // Postgres text cannot hold NUL.
        ScalarValue::Utf8(v) | ScalarValue::Utf8View(v) | ScalarValue::LargeUtf8(v)
            if v.as_deref().is_none_or(|s| !s.contains('\0')) =>
        {
            Ok(Semantics::COMPARABLE)
        }
        other => Err(format!(
            "a literal of type {} is not pushed",
            other.data_type()
        )),
    }
}

fn check_aggregate(expr: &Expr, scope: &Scope<'_>) -> Result<Semantics, String> {
    let inner = match expr {
        Expr::Alias(alias) => alias.expr.as_ref(),
        other => other,
    };
    let Expr::AggregateFunction(AggregateFunction { func, params }) = inner else {
        return Err(format!(
            "`{}` is not an aggregate the source can run",
            shown(expr)
        ));
    };
    if params.filter.is_some() || !params.order_by.is_empty() || params.null_treatment.is_some() {
        return Err(format!(
            "`{}` has FILTER, ORDER BY or null treatment, which are not pushed",
            shown(expr)
        ));
    }
    let name = func.name();
    let mut args = Vec::with_capacity(params.args.len());
    for arg in &params.args {
        let semantics = check_expr(arg, scope)?;
        if params.distinct {
            require(&semantics, false, arg)?;
        }
        args.push(semantics);
    }
    match name {
        "count" => Ok(Semantics::COMPARABLE),
        "sum" | "avg" => {
            for arg in &params.args {
                let ty = arg.get_type(scope.schema).map_err(|e| e.to_string())?;
                if !matches!(ty, DataType::Int32 | DataType::Int64 | DataType::Float64) {
                    return Err(format!("`{name}` of {ty} is not pushed"));
                }
            }
            Ok(Semantics::COMPARABLE)
        }
        "min" | "max" => {
            let [arg] = params.args.as_slice() else {
                return Err(format!("`{name}` takes one argument"));
            };
            require(&args[0], true, arg)?;
            Ok(args[0].clone())
        }
        other => Err(format!(
            "aggregate `{other}` is not pushed: count, sum, avg, min and max are"
        )),
    }
}

// ----- summary ---------------------------------------------------------------------------

/// One part of a plan that ran at a source.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Serialize)]
pub struct PushedPart {
    /// scan, projection, filter, limit, order, aggregate or join.
    pub part: String,
    /// The expression or columns.
    pub detail: String,
}

/// One part of a plan that did not run at the source, and why.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Serialize)]
pub struct NotPushed {
    /// projection, filter, limit, order, aggregate, join, …
    pub part: String,
    /// The expression or node.
    pub detail: String,
    /// Why it stayed in kyma.
    pub reason: String,
}

/// What one source query covers: the `pushdown_summary` entry of one federated scan.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Serialize)]
pub struct SourceSummary {
    /// The connector.
    pub source: String,
    /// The exact SQL sent.
    pub sql: String,
    /// What the source ran.
    pub pushed: Vec<PushedPart>,
    /// What kyma ran above the source query instead, with the reason.
    pub not_pushed: Vec<NotPushed>,
}

/// Every federated scan's summary in `plan` (subqueries included), in plan order.
pub fn summaries(plan: &LogicalPlan) -> Vec<SourceSummary> {
    let mut out = Vec::new();
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::Extension(Extension { node }) = node
            && let Some(scan) = node.as_any().downcast_ref::<FederatedScan>()
        {
            out.push(scan.summary.clone());
        }
        Ok(TreeNodeRecursion::Continue)
    });
    out
}

fn pushed_parts(plan: &LogicalPlan, out: &mut Vec<PushedPart>) {
    for input in plan.inputs() {
        pushed_parts(input, out);
    }
    let mut add = |part: &str, detail: String| {
        out.push(PushedPart {
            part: part.into(),
            detail,
        });
    };
    let list = |exprs: &[Expr]| exprs.iter().map(shown).collect::<Vec<_>>().join(", ");
    match plan {
        LogicalPlan::TableScan(scan) => {
            // The source table's name, also when it is read as `live(…)`.
            let table = pg_table(scan).map_or_else(
                || scan.table_name.to_string(),
                |table| table.reference().to_string(),
            );
            add("scan", table);
            if scan.projection.is_some() {
                let columns: Vec<String> = scan
                    .projected_schema
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .collect();
                add("projection", columns.join(", "));
            }
            for filter in &scan.filters {
                for conjunct in split_conjunction(filter) {
                    add("filter", shown(conjunct));
                }
            }
            if let Some(fetch) = scan.fetch {
                add("limit", fetch.to_string());
            }
        }
        LogicalPlan::Filter(filter) => {
            for conjunct in split_conjunction(&filter.predicate) {
                add("filter", shown(conjunct));
            }
        }
        LogicalPlan::Projection(projection) => add("projection", list(&projection.expr)),
        LogicalPlan::Aggregate(aggregate) => {
            let mut detail = list(&aggregate.aggr_expr);
            if !aggregate.group_expr.is_empty() {
                detail = format!("{detail} GROUP BY {}", list(&aggregate.group_expr));
            }
            add("aggregate", detail);
        }
        LogicalPlan::Sort(sort) => {
            let keys: Vec<String> = sort
                .expr
                .iter()
                .map(|s| {
                    format!(
                        "{} {} NULLS {}",
                        shown(&s.expr),
                        if s.asc { "ASC" } else { "DESC" },
                        if s.nulls_first { "FIRST" } else { "LAST" }
                    )
                })
                .collect();
            add("order", keys.join(", "));
            if let Some(fetch) = sort.fetch {
                add("limit", fetch.to_string());
            }
        }
        LogicalPlan::Limit(limit) => {
            let detail = match (&limit.skip, &limit.fetch) {
                (Some(skip), Some(fetch)) => format!("{} OFFSET {}", shown(fetch), shown(skip)),
                (None, Some(fetch)) => shown(fetch),
                (Some(skip), None) => format!("OFFSET {}", shown(skip)),
                (None, None) => "none".into(),
            };
            add("limit", detail);
        }
        LogicalPlan::Join(join) => {
            let on: Vec<String> = join
                .on
                .iter()
                .map(|(l, r)| format!("{} = {}", shown(l), shown(r)))
                .chain(join.filter.iter().map(shown))
                .collect();
            add(
                "join",
                format!("{} JOIN ON {}", join.join_type, on.join(" AND ")),
            );
        }
        _ => {}
    }
}

// ----- the rule --------------------------------------------------------------------------

/// The optimizer rule that moves work to federated sources (see the module doc).
#[derive(Debug, Default)]
pub struct FederationPushdown;

/// A subtree that one source query can answer.
struct Candidate {
    source: Arc<PgSource>,
    /// Per output field of the subtree.
    semantics: Vec<Semantics>,
}

fn pg_table(scan: &TableScan) -> Option<PgTable> {
    let provider = source_as_provider(&scan.source).ok()?;
    provider.downcast_ref::<PgTable>().cloned()
}

impl OptimizerRule for FederationPushdown {
    fn name(&self) -> &str {
        "kyma_federation_pushdown"
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let federated = plan.exists(|node| {
            Ok(matches!(node, LogicalPlan::TableScan(scan) if pg_table(scan).is_some()))
        })?;
        if !federated {
            return Ok(Transformed::no(plan));
        }
        let (plan, candidate) = visit(plan)?;
        let plan = match candidate {
            Some(candidate) => wrap(plan, candidate, Vec::new())?,
            None => plan,
        };
        Ok(Transformed::yes(plan))
    }
}

/// Rebuilds `plan` bottom-up; returns it with the candidate it is, if it is one.
fn visit(plan: LogicalPlan) -> Result<(LogicalPlan, Option<Candidate>)> {
    if let LogicalPlan::TableScan(scan) = &plan {
        return match pg_table(scan) {
            Some(table) => visit_scan(plan, &table),
            None => Ok((plan, None)),
        };
    }
    let mut candidates = Vec::new();
    let plan = plan
        .map_children(|child| {
            let (child, candidate) = visit(child)?;
            candidates.push(candidate);
            Ok(Transformed::yes(child))
        })?
        .data;
    if candidates.iter().all(Option::is_none) {
        return Ok((plan, None));
    }
    if let LogicalPlan::Filter(filter) = &plan
        && let [Some(child)] = candidates.as_slice()
        && !all_conjuncts_safe(filter, child)
    {
        let LogicalPlan::Filter(filter) = plan else {
            return plan_err!("not a filter");
        };
        return visit_filter_split(filter, candidates);
    }
    match decide(&plan, &candidates) {
        Ok(semantics) => {
            let source = candidates
                .iter()
                .flatten()
                .next()
                .map(|c| c.source.clone())
                .ok_or_else(|| DataFusionError::Internal("no candidate".into()))?;
            match generate_sql(&plan) {
                Ok(_) => Ok((plan, Some(Candidate { source, semantics }))),
                Err(e) => {
                    let reason = NotPushed {
                        part: part_name(&plan).into(),
                        detail: node_detail(&plan),
                        reason: format!("kyma cannot write this as source SQL: {e}"),
                    };
                    block(plan, candidates, reason)
                }
            }
        }
        Err(reason) => block(plan, candidates, reason),
    }
}

/// Whether every conjunct of the filter is safe over `child`.
fn all_conjuncts_safe(filter: &Filter, child: &Candidate) -> bool {
    let scope = Scope {
        schema: filter.input.schema(),
        semantics: &child.semantics,
    };
    split_conjunction(&filter.predicate)
        .into_iter()
        .all(|c| check_expr(c, &scope).is_ok())
}

/// A filter with unsafe conjuncts: the safe ones (if any) join the source query, the rest
/// stay above it.
fn visit_filter_split(
    filter: Filter,
    mut candidates: Vec<Option<Candidate>>,
) -> Result<(LogicalPlan, Option<Candidate>)> {
    let Some(child) = candidates.pop().flatten() else {
        return plan_err!("a filter over a source scan lost its input");
    };
    let (safe, unsafe_): (Vec<Expr>, Vec<(Expr, String)>) = {
        let scope = Scope {
            schema: filter.input.schema(),
            semantics: &child.semantics,
        };
        let mut safe = Vec::new();
        let mut unsafe_ = Vec::new();
        for conjunct in split_conjunction(&filter.predicate) {
            match check_expr(conjunct, &scope) {
                Ok(_) => safe.push(conjunct.clone()),
                Err(reason) => unsafe_.push((conjunct.clone(), reason)),
            }
        }
        (safe, unsafe_)
    };
    let not_pushed: Vec<NotPushed> = unsafe_
        .iter()
        .map(|(expr, reason)| NotPushed {
            part: "filter".into(),
            detail: shown(expr),
            reason: reason.clone(),
        })
        .collect();
    let input = Arc::unwrap_or_clone(filter.input);
    let inner = match conjunction(safe) {
        Some(predicate) => LogicalPlan::Filter(Filter::try_new(predicate, Arc::new(input))?),
        None => input,
    };
    let inner = wrap(inner, child, not_pushed)?;
    let kept = conjunction(unsafe_.into_iter().map(|(e, _)| e))
        .ok_or_else(|| DataFusionError::Internal("a split filter kept nothing".into()))?;
    Ok((
        LogicalPlan::Filter(Filter::try_new(kept, Arc::new(inner))?),
        None,
    ))
}

/// A scan of a source table: a candidate when pushdown is on; otherwise a whole-row source
/// query with the projection applied in kyma.
fn visit_scan(plan: LogicalPlan, table: &PgTable) -> Result<(LogicalPlan, Option<Candidate>)> {
    let LogicalPlan::TableScan(scan) = plan else {
        return plan_err!("not a scan");
    };
    let indices: Vec<usize> = scan
        .projection
        .clone()
        .unwrap_or_else(|| (0..table.meta.arrow.fields().len()).collect());
    if table.source.pushdown() {
        let semantics = indices
            .iter()
            .map(|&i| table.meta.semantics[i].clone())
            .collect();
        let candidate = Candidate {
            source: table.source.clone(),
            semantics,
        };
        return Ok((LogicalPlan::TableScan(scan), Some(candidate)));
    }
    let reason = "pushdown is off on this query node (--federation-pushdown=false)";
    let mut not_pushed = Vec::new();
    if scan.projection.is_some() {
        not_pushed.push(NotPushed {
            part: "projection".into(),
            detail: scan
                .projected_schema
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect::<Vec<_>>()
                .join(", "),
            reason: reason.into(),
        });
    }
    if let Some(fetch) = scan.fetch {
        not_pushed.push(NotPushed {
            part: "limit".into(),
            detail: fetch.to_string(),
            reason: reason.into(),
        });
    }
    let whole = LogicalPlan::TableScan(
        TableScanBuilder::new(scan.table_name.clone(), scan.source.clone()).build()?,
    );
    let candidate = Candidate {
        source: table.source.clone(),
        semantics: table.meta.semantics.clone(),
    };
    let wrapped = wrap(whole, candidate, not_pushed)?;
    let columns: Vec<Expr> = scan
        .projected_schema
        .columns()
        .into_iter()
        .map(Expr::Column)
        .collect();
    let projected = LogicalPlanBuilder::from(wrapped).project(columns)?;
    let projected = match scan.fetch {
        Some(fetch) => projected.limit(0, Some(fetch))?,
        None => projected,
    };
    Ok((projected.build()?, None))
}

/// Whether `plan` (whose inputs are given as candidates or not) can join its candidate
/// inputs at the source; the output semantics if so.
fn decide(plan: &LogicalPlan, inputs: &[Option<Candidate>]) -> Result<Vec<Semantics>, NotPushed> {
    let blocked = |reason: String| NotPushed {
        part: part_name(plan).into(),
        detail: node_detail(plan),
        reason,
    };
    let only = |inputs: &[Option<Candidate>]| match inputs {
        [Some(c)] => Some(c.semantics.clone()),
        _ => None,
    };
    match plan {
        LogicalPlan::SubqueryAlias(_) => {
            only(inputs).ok_or_else(|| blocked("its input is not at one source".into()))
        }
        LogicalPlan::Limit(limit) => {
            let literal = |e: &Option<Box<Expr>>| {
                e.as_deref()
                    .is_none_or(|e| matches!(e, Expr::Literal(ScalarValue::Int64(Some(_)), _)))
            };
            if !literal(&limit.skip) || !literal(&limit.fetch) {
                return Err(blocked("only literal LIMIT and OFFSET are pushed".into()));
            }
            only(inputs).ok_or_else(|| blocked("its input is not at one source".into()))
        }
        // Reached only when every conjunct is safe (see `visit`).
        LogicalPlan::Filter(_) => {
            only(inputs).ok_or_else(|| blocked("its input is not at one source".into()))
        }
        LogicalPlan::Projection(projection) => {
            let input =
                only(inputs).ok_or_else(|| blocked("its input is not at one source".into()))?;
            let scope = Scope {
                schema: projection.input.schema(),
                semantics: &input,
            };
            projection
                .expr
                .iter()
                .map(|e| {
                    check_expr(e, &scope).map_err(|reason| NotPushed {
                        part: "projection".into(),
                        detail: shown(e),
                        reason,
                    })
                })
                .collect()
        }
        LogicalPlan::Sort(sort) => {
            let input =
                only(inputs).ok_or_else(|| blocked("its input is not at one source".into()))?;
            let scope = Scope {
                schema: sort.input.schema(),
                semantics: &input,
            };
            for key in &sort.expr {
                check_expr(&key.expr, &scope)
                    .and_then(|s| require(&s, true, &key.expr))
                    .map_err(blocked)?;
            }
            Ok(input)
        }
        LogicalPlan::Aggregate(aggregate) => decide_aggregate(aggregate, inputs).map_err(blocked),
        LogicalPlan::Join(join) => {
            let [Some(left), Some(right)] = inputs else {
                let other = inputs
                    .iter()
                    .zip(plan.inputs())
                    .find(|(c, _)| c.is_none())
                    .map(|(_, p)| relation_names(p).join(", "))
                    .unwrap_or_default();
                return Err(blocked(format!(
                    "the other side ({other}) is not at this source: each side runs where it lives and DataFusion joins the streams"
                )));
            };
            if !Arc::ptr_eq(&left.source, &right.source) {
                return Err(blocked(format!(
                    "cross-source join of `{}` and `{}`: each side runs at its source and DataFusion joins the streams",
                    left.source.name(),
                    right.source.name()
                )));
            }
            if !matches!(
                join.join_type,
                JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full
            ) {
                return Err(blocked(format!("{} joins are not pushed", join.join_type)));
            }
            if join.null_equality != datafusion::common::NullEquality::NullEqualsNothing {
                return Err(blocked("joins that match NULL keys are not pushed".into()));
            }
            let mut names = relation_names(&join.left);
            names.extend(relation_names(&join.right));
            names.sort();
            if let Some(twice) = names.windows(2).find(|w| w[0] == w[1]) {
                return Err(blocked(format!(
                    "two relations are named `{}`; give them aliases",
                    twice[0]
                )));
            }
            let semantics: Vec<Semantics> = left
                .semantics
                .iter()
                .chain(&right.semantics)
                .cloned()
                .collect();
            let scope = Scope {
                schema: &join.schema,
                semantics: &semantics,
            };
            for (l, r) in &join.on {
                for key in [l, r] {
                    check_expr(key, &scope)
                        .and_then(|s| require(&s, false, key))
                        .map_err(blocked)?;
                }
            }
            if let Some(filter) = &join.filter {
                check_expr(filter, &scope).map_err(blocked)?;
            }
            Ok(semantics)
        }
        other => Err(blocked(format!("{} is not pushed", other.display()))),
    }
}

fn decide_aggregate(
    aggregate: &Aggregate,
    inputs: &[Option<Candidate>],
) -> Result<Vec<Semantics>, String> {
    let [Some(input)] = inputs else {
        return Err("its input is not at one source".into());
    };
    let scope = Scope {
        schema: aggregate.input.schema(),
        semantics: &input.semantics,
    };
    let mut out = Vec::new();
    for group in &aggregate.group_expr {
        if matches!(group, Expr::GroupingSet(_)) {
            return Err("GROUPING SETS, ROLLUP and CUBE are not pushed".into());
        }
        let semantics = check_expr(group, &scope)?;
        require(&semantics, false, group)?;
        out.push(semantics);
    }
    for aggr in &aggregate.aggr_expr {
        out.push(check_aggregate(aggr, &scope)?);
    }
    Ok(out)
}

fn part_name(plan: &LogicalPlan) -> &'static str {
    match plan {
        LogicalPlan::Projection(_) => "projection",
        LogicalPlan::Filter(_) => "filter",
        LogicalPlan::Aggregate(_) => "aggregate",
        LogicalPlan::Sort(_) => "order",
        LogicalPlan::Limit(_) => "limit",
        LogicalPlan::Join(_) => "join",
        LogicalPlan::Window(_) => "window",
        LogicalPlan::Union(_) => "union",
        _ => "plan",
    }
}

fn node_detail(plan: &LogicalPlan) -> String {
    let mut detail = Vec::new();
    pushed_parts_of_node(plan, &mut detail);
    detail
        .into_iter()
        .map(|p| p.detail)
        .next()
        .unwrap_or_else(|| plan.display().to_string())
}

fn pushed_parts_of_node(plan: &LogicalPlan, out: &mut Vec<PushedPart>) {
    // Describe the node alone (its inputs are described where they run).
    let alone = plan.clone().map_children(|_| {
        Ok(Transformed::yes(LogicalPlan::EmptyRelation(
            datafusion::logical_expr::EmptyRelation {
                produce_one_row: false,
                schema: Arc::new(DFSchema::empty()),
            },
        )))
    });
    if let Ok(alone) = alone {
        pushed_parts(&alone.data, out);
    }
}

/// The names a plan's relations are visible under: aliases, else table names.
fn relation_names(plan: &LogicalPlan) -> Vec<String> {
    match plan {
        LogicalPlan::SubqueryAlias(alias) => vec![alias.alias.table().to_owned()],
        LogicalPlan::TableScan(scan) => vec![scan.table_name.table().to_owned()],
        LogicalPlan::Extension(_) => Vec::new(),
        other => other
            .inputs()
            .into_iter()
            .flat_map(relation_names)
            .collect(),
    }
}

/// Wraps the candidate subtree `plan` into one federated scan.
fn wrap(
    plan: LogicalPlan,
    candidate: Candidate,
    not_pushed: Vec<NotPushed>,
) -> Result<LogicalPlan> {
    let sql = generate_sql(&plan)?;
    let mut pushed = Vec::new();
    pushed_parts(&plan, &mut pushed);
    pushed.dedup();
    let summary = SourceSummary {
        source: candidate.source.name().to_owned(),
        sql: sql.clone(),
        pushed,
        not_pushed,
    };
    Ok(LogicalPlan::Extension(Extension {
        node: Arc::new(FederatedScan::new(candidate.source, plan, sql, summary)),
    }))
}

/// A node that cannot go to the source: its candidate inputs become federated scans, each
/// recording `reason`.
fn block(
    plan: LogicalPlan,
    candidates: Vec<Option<Candidate>>,
    reason: NotPushed,
) -> Result<(LogicalPlan, Option<Candidate>)> {
    let mut candidates = candidates.into_iter();
    let plan = plan
        .map_children(|child| match candidates.next().flatten() {
            Some(candidate) => Ok(Transformed::yes(wrap(
                child,
                candidate,
                vec![reason.clone()],
            )?)),
            None => Ok(Transformed::no(child)),
        })?
        .data;
    Ok((plan, None))
}

// ----- SQL -------------------------------------------------------------------------------

/// The source SQL of a candidate subtree: DataFusion's unparser in its Postgres dialect,
/// with every source table replaced by its typed relation. The select list is exactly the
/// subtree's output fields, in order.
pub fn generate_sql(plan: &LogicalPlan) -> Result<String> {
    let mut relations = HashMap::new();
    plan.apply(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && let Some(table) = pg_table(scan)
        {
            let name = &scan.table_name;
            let parts: Vec<String> = [name.catalog(), name.schema(), Some(name.table())]
                .into_iter()
                .flatten()
                .map(str::to_owned)
                .collect();
            relations.insert(
                parts,
                (table.meta.relation_sql.clone(), name.table().to_owned()),
            );
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    let root = select_list_exact(simplify_for_sql(plan.clone())?)?;
    let mut statement = Unparser::new(&PostgreSqlDialect {}).plan_to_sql(&root)?;
    let mut replacer = TypedRelations {
        relations,
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

/// Reshapes a candidate subtree where DataFusion's unparser would otherwise write SQL that
/// fails or, worse, answers differently:
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
            let projection =
                datafusion::logical_expr::Projection::try_new(merged, inner.input.clone())?;
            Ok(Transformed::yes(LogicalPlan::Projection(projection)))
        }
        LogicalPlan::Aggregate(aggregate)
            if matches!(aggregate.input.as_ref(), LogicalPlan::Projection(p)
                if p.expr.iter().all(|e| matches!(e, Expr::Column(_)))) =>
        {
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

/// `expr` with each column of `inner`'s output replaced by the expression computing it.
fn inline_columns(expr: Expr, inner: &datafusion::logical_expr::Projection) -> Result<Expr> {
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
struct TypedRelations {
    relations: HashMap<Vec<String>, (String, String)>,
    error: Option<DataFusionError>,
}

impl VisitorMut for TypedRelations {
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
        let sql = format!(
            "SELECT 1 FROM ({relation}) AS {}",
            kyma_connectors::postgres::quote_ident(table)
        );
        let parsed = Parser::new(&PgParserDialect {})
            .try_with_sql(&sql)
            .and_then(|mut p| p.parse_query());
        match parsed {
            Ok(query) => {
                if let ast::SetExpr::Select(select) = *query.body
                    && let Some(from) = select.from.into_iter().next()
                {
                    *factor = from.relation;
                    if let (Some(original), ast::TableFactor::Derived { alias, .. }) =
                        (original_alias, &mut *factor)
                    {
                        *alias = Some(original);
                    }
                    return ControlFlow::Continue(());
                }
                self.error = Some(DataFusionError::Internal(
                    "the typed relation did not parse as a table".into(),
                ));
                ControlFlow::Break(())
            }
            Err(e) => {
                self.error = Some(DataFusionError::Internal(format!(
                    "the typed relation does not parse: {e}"
                )));
                ControlFlow::Break(())
            }
        }
    }
}

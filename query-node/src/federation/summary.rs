//! The `pushdown_summary` (SPEC §5): per source query, the exact query sent and each part of
//! the plan that ran at the source or stayed in kyma, with the reason. It reaches clients as
//! JSON — `{"source", "sql", "pushed": [{"part", "detail"}], "not_pushed": [{"part",
//! "detail", "reason"}]}` — in the FlightInfo's app_metadata, in `EXPLAIN` and in
//! `kyma.system.queries`. The field `sql` holds whatever the source runs, SQL or not.

use std::sync::Arc;

use datafusion::common::DFSchema;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{
    EmptyRelation, Expr, Extension, Join, Limit, LogicalPlan, Sort, TableScan,
};
use serde::Serialize;

use super::capabilities::shown;
use super::scan::FederatedScan;
use super::table::federated_table;

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
    /// The exact query sent (SQL, or the source's own query language).
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

/// The parts of `plan` (a subtree that runs at a source), inputs first.
pub fn pushed_parts(plan: &LogicalPlan, out: &mut Vec<PushedPart>) {
    for input in plan.inputs() {
        pushed_parts(input, out);
    }
    let mut add = |part: &str, detail: String| {
        out.push(PushedPart {
            part: part.into(),
            detail,
        });
    };
    match plan {
        LogicalPlan::TableScan(scan) => scan_parts(scan, &mut add),
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
            add("order", order_detail(sort));
            if let Some(fetch) = sort.fetch {
                add("limit", fetch.to_string());
            }
        }
        LogicalPlan::Limit(limit) => add("limit", limit_detail(limit)),
        LogicalPlan::Join(join) => add("join", join_detail(join)),
        _ => {}
    }
}

fn list(exprs: &[Expr]) -> String {
    exprs.iter().map(shown).collect::<Vec<_>>().join(", ")
}

fn scan_parts(scan: &TableScan, add: &mut impl FnMut(&str, String)) {
    // The source table's name, also when it is read as `live(…)`.
    let table = federated_table(scan).map_or_else(
        || scan.table_name.to_string(),
        |table| table.reference().to_string(),
    );
    add("scan", table);
    if scan.projection.is_some() {
        add("projection", column_names(scan));
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

/// The columns a scan produces, comma-separated.
pub(crate) fn column_names(scan: &TableScan) -> String {
    scan.projected_schema
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect::<Vec<_>>()
        .join(", ")
}

fn order_detail(sort: &Sort) -> String {
    sort.expr
        .iter()
        .map(|s| {
            format!(
                "{} {} NULLS {}",
                shown(&s.expr),
                if s.asc { "ASC" } else { "DESC" },
                if s.nulls_first { "FIRST" } else { "LAST" }
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn limit_detail(limit: &Limit) -> String {
    match (&limit.skip, &limit.fetch) {
        (Some(skip), Some(fetch)) => format!("{} OFFSET {}", shown(fetch), shown(skip)),
        (None, Some(fetch)) => shown(fetch),
        (Some(skip), None) => format!("OFFSET {}", shown(skip)),
        (None, None) => "none".into(),
    }
}

fn join_detail(join: &Join) -> String {
    let on: Vec<String> = join
        .on
        .iter()
        .map(|(l, r)| format!("{} = {}", shown(l), shown(r)))
        .chain(join.filter.iter().map(shown))
        .collect();
    format!("{} JOIN ON {}", join.join_type, on.join(" AND "))
}

/// The summary's name for the kind of node `plan` is.
pub(crate) fn part_name(plan: &LogicalPlan) -> &'static str {
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

/// The node `plan` alone (its inputs are described where they run), as the summary shows
/// it.
pub(crate) fn node_detail(plan: &LogicalPlan) -> String {
    let alone = plan.clone().map_children(|_| {
        Ok(Transformed::yes(LogicalPlan::EmptyRelation(
            EmptyRelation {
                produce_one_row: false,
                schema: Arc::new(DFSchema::empty()),
            },
        )))
    });
    let mut parts = Vec::new();
    if let Ok(alone) = alone {
        pushed_parts(&alone.data, &mut parts);
    }
    parts
        .into_iter()
        .map(|p| p.detail)
        .next()
        .unwrap_or_else(|| plan.display().to_string())
}

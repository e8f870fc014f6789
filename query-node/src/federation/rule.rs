//! The optimizer rule that moves work to federated sources (SPEC §5), for every source.
//!
//! [`FederationPushdown`] runs after DataFusion's own optimizer rules, so filters, limits
//! and projections already sit on the scans (a source table accepts a filter only when
//! [`check_filter`](super::capabilities::check_filter) finds it safe). It then walks the
//! plan bottom-up and grows, from each scan of a [`FederatedTable`], the largest subtree that
//! one source query can answer:
//!
//! - scan (projection, safe filters, limit), `Filter`, `Projection`, `Sort`, `Limit`,
//!   `SubqueryAlias` over such a subtree, when every expression in them is safe;
//! - `Aggregate` with the aggregates the source's capabilities admit, and GROUP BY;
//! - joins the source admits whose two sides are subtrees of the *same* source
//!   ([`SourceIdentity::same`]).
//!
//! Safe means the source computes exactly what DataFusion would: its
//! [`Capabilities`](super::capabilities::Capabilities) admit every operation and the values'
//! [`Semantics`] allow every comparison (see [`super::capabilities`]). When in doubt,
//! nothing is pushed: a slow answer beats a wrong one.
//!
//! A filter that is only partly safe is split: its safe conjuncts go to the source, the rest
//! runs above. The first node that cannot go ends the subtree: the subtree becomes a
//! [`FederatedScan`] carrying the source's query and its summary, and the node records why
//! it was not pushed. A subtree the source cannot compile stays in kyma the same way.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DataFusionError, NullEquality, Result, ScalarValue, plan_err};
use datafusion::logical_expr::utils::{conjunction, split_conjunction};
use datafusion::logical_expr::{
    Aggregate, Expr, Extension, Filter, Join, Limit, LogicalPlan, LogicalPlanBuilder, Projection,
    Sort, TableScan, TableScanBuilder,
};
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

use super::capabilities::{Scope, Semantics, check_aggregate, check_expr, require, shown};
use super::scan::FederatedScan;
use super::source::{FederatedSource, SourceIdentity};
use super::summary::{
    NotPushed, SourceSummary, column_names, node_detail, part_name, pushed_parts,
};
use super::table::{FederatedTable, federated_table};

/// The optimizer rule that moves work to federated sources (see the module doc).
#[derive(Debug, Default)]
pub struct FederationPushdown;

/// A subtree that one source query can answer.
struct Candidate {
    source: Arc<dyn FederatedSource>,
    /// Per output field of the subtree.
    semantics: Vec<Semantics>,
}

impl Candidate {
    /// Expressions over `schema`, the subtree's output.
    fn scope<'a>(&'a self, schema: &'a datafusion::common::DFSchema) -> Scope<'a> {
        Scope {
            schema,
            semantics: &self.semantics,
            capabilities: self.source.capabilities(),
        }
    }
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
            Ok(matches!(node, LogicalPlan::TableScan(scan) if federated_table(scan).is_some()))
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
        return match federated_table(scan) {
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
        Ok(semantics) => grow(plan, candidates, semantics),
        Err(reason) => block(plan, candidates, reason),
    }
}

/// `plan` joins its inputs' source query, if the source can compile it.
fn grow(
    plan: LogicalPlan,
    candidates: Vec<Option<Candidate>>,
    semantics: Vec<Semantics>,
) -> Result<(LogicalPlan, Option<Candidate>)> {
    let source = candidates
        .iter()
        .flatten()
        .next()
        .map(|c| c.source.clone())
        .ok_or_else(|| DataFusionError::Internal("no candidate".into()))?;
    match source.compile(&plan) {
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

/// Whether every conjunct of the filter is safe over `child`.
fn all_conjuncts_safe(filter: &Filter, child: &Candidate) -> bool {
    let scope = child.scope(filter.input.schema());
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
    let mut safe = Vec::new();
    let mut kept = Vec::new();
    let mut not_pushed = Vec::new();
    {
        let scope = child.scope(filter.input.schema());
        for conjunct in split_conjunction(&filter.predicate) {
            match check_expr(conjunct, &scope) {
                Ok(_) => safe.push(conjunct.clone()),
                Err(reason) => {
                    not_pushed.push(NotPushed {
                        part: "filter".into(),
                        detail: shown(conjunct),
                        reason,
                    });
                    kept.push(conjunct.clone());
                }
            }
        }
    }
    let input = Arc::unwrap_or_clone(filter.input);
    let inner = match conjunction(safe) {
        Some(predicate) => LogicalPlan::Filter(Filter::try_new(predicate, Arc::new(input))?),
        None => input,
    };
    let inner = wrap(inner, child, not_pushed)?;
    let kept = conjunction(kept)
        .ok_or_else(|| DataFusionError::Internal("a split filter kept nothing".into()))?;
    Ok((
        LogicalPlan::Filter(Filter::try_new(kept, Arc::new(inner))?),
        None,
    ))
}

/// A scan of a source table: a candidate when pushdown is on; otherwise a whole-row source
/// query.
fn visit_scan(
    plan: LogicalPlan,
    table: &FederatedTable,
) -> Result<(LogicalPlan, Option<Candidate>)> {
    let LogicalPlan::TableScan(scan) = plan else {
        return plan_err!("not a scan");
    };
    if !table.pushdown {
        return whole_rows(scan, table).map(|plan| (plan, None));
    }
    let indices: Vec<usize> = scan
        .projection
        .clone()
        .unwrap_or_else(|| (0..table.meta.arrow.fields().len()).collect());
    let candidate = Candidate {
        source: table.source.clone(),
        semantics: indices
            .iter()
            .map(|&i| table.meta.semantics[i].clone())
            .collect(),
    };
    Ok((LogicalPlan::TableScan(scan), Some(candidate)))
}

/// With pushdown off: the source query reads whole rows; the scan's projection and limit
/// run in kyma, and the summary says so.
fn whole_rows(scan: TableScan, table: &FederatedTable) -> Result<LogicalPlan> {
    let reason = "pushdown is off on this query node (--federation-pushdown=false)";
    let mut not_pushed = Vec::new();
    if scan.projection.is_some() {
        not_pushed.push(NotPushed {
            part: "projection".into(),
            detail: column_names(&scan),
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
    projected.build()
}

/// Whether `plan` (whose inputs are given as candidates or not) can join its candidate
/// inputs at the source; the output semantics if so.
fn decide(plan: &LogicalPlan, inputs: &[Option<Candidate>]) -> Result<Vec<Semantics>, NotPushed> {
    let blocked = |reason: String| NotPushed {
        part: part_name(plan).into(),
        detail: node_detail(plan),
        reason,
    };
    let result = match plan {
        // A Filter is reached only when every conjunct is safe (see `visit`).
        LogicalPlan::SubqueryAlias(_) | LogicalPlan::Filter(_) => {
            only(inputs).map(|c| c.semantics.clone())
        }
        LogicalPlan::Limit(limit) => decide_limit(limit, inputs),
        LogicalPlan::Projection(projection) => {
            let input = only(inputs).map_err(blocked)?;
            return decide_projection(projection, input);
        }
        LogicalPlan::Sort(sort) => decide_sort(sort, inputs),
        LogicalPlan::Aggregate(aggregate) => decide_aggregate(aggregate, inputs),
        LogicalPlan::Join(join) => decide_join(join, inputs),
        other => Err(format!("{} is not pushed", other.display())),
    };
    result.map_err(blocked)
}

/// The one input, when it is a candidate.
fn only(inputs: &[Option<Candidate>]) -> Result<&Candidate, String> {
    match inputs {
        [Some(c)] => Ok(c),
        _ => Err("its input is not at one source".into()),
    }
}

fn decide_limit(limit: &Limit, inputs: &[Option<Candidate>]) -> Result<Vec<Semantics>, String> {
    let literal = |e: &Option<Box<Expr>>| {
        e.as_deref()
            .is_none_or(|e| matches!(e, Expr::Literal(ScalarValue::Int64(Some(_)), _)))
    };
    if !literal(&limit.skip) || !literal(&limit.fetch) {
        return Err("only literal LIMIT and OFFSET are pushed".into());
    }
    only(inputs).map(|c| c.semantics.clone())
}

/// A projection: each expression that cannot run at the source is named on its own.
fn decide_projection(
    projection: &Projection,
    input: &Candidate,
) -> Result<Vec<Semantics>, NotPushed> {
    let scope = input.scope(projection.input.schema());
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

fn decide_sort(sort: &Sort, inputs: &[Option<Candidate>]) -> Result<Vec<Semantics>, String> {
    let input = only(inputs)?;
    let scope = input.scope(sort.input.schema());
    for key in &sort.expr {
        check_expr(&key.expr, &scope).and_then(|s| require(&s, true, &key.expr))?;
    }
    Ok(input.semantics.clone())
}

fn decide_aggregate(
    aggregate: &Aggregate,
    inputs: &[Option<Candidate>],
) -> Result<Vec<Semantics>, String> {
    let input = only(inputs)?;
    let scope = input.scope(aggregate.input.schema());
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

/// A join of two subtrees of the same source, on keys both compare as kyma does.
fn decide_join(join: &Join, inputs: &[Option<Candidate>]) -> Result<Vec<Semantics>, String> {
    let [Some(left), Some(right)] = inputs else {
        let other = inputs
            .iter()
            .zip([&join.left, &join.right])
            .find(|(c, _)| c.is_none())
            .map(|(_, p)| relation_names(p.as_ref()).join(", "))
            .unwrap_or_default();
        return Err(format!(
            "the other side ({other}) is not at this source: each side runs where it lives and DataFusion joins the streams"
        ));
    };
    if !SourceIdentity::same(left.source.identity(), right.source.identity()) {
        return Err(format!(
            "cross-source join of `{}` and `{}`: each side runs at its source and DataFusion joins the streams",
            left.source.name(),
            right.source.name()
        ));
    }
    if !left.source.capabilities().join(join.join_type) {
        return Err(format!("{} joins are not pushed", join.join_type));
    }
    if join.null_equality != NullEquality::NullEqualsNothing {
        return Err("joins that match NULL keys are not pushed".into());
    }
    unique_relation_names(join)?;
    let semantics: Vec<Semantics> = left
        .semantics
        .iter()
        .chain(&right.semantics)
        .cloned()
        .collect();
    let scope = Scope {
        schema: &join.schema,
        semantics: &semantics,
        capabilities: left.source.capabilities(),
    };
    for (l, r) in &join.on {
        for key in [l, r] {
            check_expr(key, &scope).and_then(|s| require(&s, false, key))?;
        }
    }
    if let Some(filter) = &join.filter {
        check_expr(filter, &scope)?;
    }
    Ok(semantics)
}

/// `Err` when two relations of the join would be visible under one name in its SQL.
fn unique_relation_names(join: &Join) -> Result<(), String> {
    let mut names = relation_names(&join.left);
    names.extend(relation_names(&join.right));
    names.sort();
    match names.windows(2).find(|w| w[0] == w[1]) {
        Some(twice) => Err(format!(
            "two relations are named `{}`; give them aliases",
            twice[0]
        )),
        None => Ok(()),
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
    let query = candidate.source.compile(&plan)?;
    let mut pushed = Vec::new();
    pushed_parts(&plan, &mut pushed);
    pushed.dedup();
    let summary = SourceSummary {
        source: candidate.source.name().to_owned(),
        sql: query.to_string(),
        pushed,
        not_pushed,
    };
    Ok(LogicalPlan::Extension(Extension {
        node: Arc::new(FederatedScan::new(candidate.source, plan, query, summary)),
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

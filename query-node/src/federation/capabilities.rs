//! Whether an expression is safe to run at a source: the source computes exactly what
//! DataFusion would (SPEC §5: "anything whose source semantics differ from DataFusion's"
//! stays in kyma).
//!
//! Two questions are asked of every expression node:
//!
//! - *Does the source compute this node as DataFusion does?* That depends on the source
//!   alone: its [`Capabilities`] (operators, functions, literals, casts, aggregates, joins).
//! - *Does the source compare the values as kyma does?* That depends on the values:
//!   [`Semantics`], filled per column by the source at discovery (e.g. from a column's
//!   collation) and carried through expressions here. Equality (`=`, IN, LIKE, GROUP BY,
//!   COUNT(DISTINCT), join keys) needs `eq`; ordering (`<`, BETWEEN, ORDER BY, MIN/MAX)
//!   needs `order`.
//!
//! The walk itself is the same for every source; kyma's own functions are never pushed.

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::logical_expr::expr::{AggregateFunction, Case, Cast, Like, ScalarFunction};
use datafusion::logical_expr::{BinaryExpr, Expr, ExprSchemable, JoinType, Operator};

/// What the source may do with an expression's value and still agree with DataFusion.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Semantics {
    /// `=`, `!=`, IN, GROUP BY, COUNT(DISTINCT), joins on it.
    pub eq: bool,
    /// `<` and friends, ORDER BY, MIN/MAX.
    pub order: bool,
    /// For text: the collation the source compares it under (named in reasons).
    pub collation: Option<Arc<str>>,
    /// What the value is at the source when that is why it does not compare as in kyma
    /// (e.g. "text under collation `utf8mb4_general_ci` (case- and accent-insensitive)"),
    /// named in reasons instead of the generic wording.
    pub note: Option<Arc<str>>,
}

impl Semantics {
    /// Numbers, booleans, timestamps: the source compares them as kyma does.
    pub const COMPARABLE: Self = Self {
        eq: true,
        order: true,
        collation: None,
        note: None,
    };
    /// Dynamic and vector data: readable, never compared at the source.
    pub const OPAQUE: Self = Self {
        eq: false,
        order: false,
        collation: None,
        note: None,
    };

    fn both(&self, other: &Self) -> Self {
        Self {
            eq: self.eq && other.eq,
            order: self.order && other.order,
            collation: self.collation.clone().or_else(|| other.collation.clone()),
            note: self.note.clone().or_else(|| other.note.clone()),
        }
    }
}

/// How a pushed function's result compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FunctionResult {
    /// As all its arguments together (COALESCE): each is checked.
    LikeAllArguments,
    /// As its argument at this index, the only one checked here (`date_trunc`'s value;
    /// the capability has checked the rest, e.g. a literal unit).
    LikeArgument(usize),
}

/// How a pushed aggregate's result compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggregateResult {
    /// A number the source computes as kyma does (COUNT, SUM, AVG).
    Comparable,
    /// Its one argument's value, which must sort as kyma sorts (MIN, MAX).
    Ordered,
}

/// What a source computes exactly as DataFusion does: its allow-lists. An `Err` says why not,
/// in words for the `pushdown_summary`.
pub trait Capabilities: fmt::Debug + Send + Sync {
    /// Binary operator `op`. Comparisons also need their operands' semantics (checked
    /// generically); any other operator admitted yields a [`Semantics::COMPARABLE`] value.
    fn operator(&self, op: Operator) -> Result<(), String>;

    /// A literal value, as the source's SQL (or query) would write and compare it.
    fn literal(&self, value: &ScalarValue) -> Result<(), String>;

    /// `LIKE`, or `ILIKE` when `like.case_insensitive` (operands need equality semantics,
    /// checked generically; the pattern and escape are the source's to judge).
    fn like(&self, like: &Like) -> Result<(), String>;

    /// Whether the source compares a value of type `left` with one of type `right` as
    /// DataFusion does (`=`, `<`, IN, BETWEEN, LIKE operands); by default it does, since
    /// DataFusion has coerced both sides to one type.
    fn compare(&self, left: &DataType, right: &DataType) -> Result<(), String> {
        let _ = (left, right);
        Ok(())
    }

    /// Whether a cast from `from` to `to` is exact at the source (the value keeps its
    /// operand's semantics).
    fn cast(&self, from: &DataType, to: &DataType) -> bool;

    /// Scalar function `call` (never a kyma function), its arguments typed by `schema`.
    fn function(&self, call: &ScalarFunction, schema: &DFSchema) -> Result<FunctionResult, String>;

    /// Aggregate `name` over arguments of `types` (FILTER, ORDER BY and DISTINCT are
    /// handled generically).
    fn aggregate(&self, name: &str, types: &[DataType]) -> Result<AggregateResult, String>;

    /// Whether joins of `join_type` run at the source as in DataFusion.
    fn join(&self, join_type: JoinType) -> bool;
}

/// kyma's own functions (never pushed, whatever the source).
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

/// The columns an expression may reference (a schema and each field's [`Semantics`]) and
/// the source's capabilities.
pub(crate) struct Scope<'a> {
    pub(crate) schema: &'a DFSchema,
    pub(crate) semantics: &'a [Semantics],
    pub(crate) capabilities: &'a dyn Capabilities,
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
/// at a source with `capabilities`; `Err` says why not.
pub fn check_filter(
    filter: &Expr,
    schema: &DFSchema,
    semantics: &[Semantics],
    capabilities: &dyn Capabilities,
) -> Result<(), String> {
    let scope = Scope {
        schema,
        semantics,
        capabilities,
    };
    check_expr(filter, &scope).map(|_| ())
}

/// An expression as the summary shows it.
pub(crate) fn shown(expr: &Expr) -> String {
    expr.human_display().to_string()
}

/// `Err` unless `semantics` allows ordering (`order`) or equality of `expr`.
pub(crate) fn require(semantics: &Semantics, order: bool, expr: &Expr) -> Result<(), String> {
    if (order && semantics.order) || (!order && semantics.eq) {
        return Ok(());
    }
    let verb = if order { "sorts" } else { "compares" };
    let what = match (&semantics.note, &semantics.collation) {
        (Some(note), _) => note.to_string(),
        (None, Some(collation)) => format!("text under collation `{collation}`"),
        (None, None) => "dynamic or vector data".to_owned(),
    };
    Err(if semantics.collation.is_some() {
        format!(
            "`{}` is {what}, which {verb} differently from kyma (byte order)",
            shown(expr)
        )
    } else {
        format!(
            "`{}` is {what}, which the source cannot {} as kyma does",
            shown(expr),
            if order { "sort" } else { "compare" }
        )
    })
}

/// The semantics of `expr`'s value at the source, or why the source cannot compute it.
pub(crate) fn check_expr(expr: &Expr, scope: &Scope<'_>) -> Result<Semantics, String> {
    match expr {
        Expr::Column(column) => scope
            .column(column)
            .ok_or_else(|| format!("column `{column}` is not from the source")),
        Expr::Literal(value, _) => scope
            .capabilities
            .literal(value)
            .map(|()| Semantics::COMPARABLE),
        Expr::Alias(alias) => check_expr(&alias.expr, scope),
        Expr::BinaryExpr(binary) => check_binary(binary, scope),
        Expr::Not(inner) | Expr::IsNull(inner) | Expr::IsNotNull(inner) => {
            check_expr(inner, scope).map(|_| Semantics::COMPARABLE)
        }
        // COALESCE arrives simplified to CASE WHEN x IS NOT NULL THEN x ELSE y END.
        Expr::Case(case) => check_case(case, scope),
        Expr::InList(list) => compared(
            std::iter::once(list.expr.as_ref()).chain(&list.list),
            false,
            scope,
        ),
        Expr::Between(between) => {
            compared([&*between.expr, &*between.low, &*between.high], true, scope)
        }
        Expr::Like(like) => check_like(like, scope),
        Expr::Cast(cast) => check_cast(cast, scope),
        Expr::ScalarFunction(call) => check_function(call, scope),
        other => Err(format!("`{}` is not pushed", shown(other))),
    }
}

/// Each of `exprs` is computable and compared (ordered when `order`) as kyma does; the
/// result is a boolean.
fn compared<'e>(
    exprs: impl IntoIterator<Item = &'e Expr>,
    order: bool,
    scope: &Scope<'_>,
) -> Result<Semantics, String> {
    let mut first: Option<(&Expr, DataType)> = None;
    for expr in exprs {
        let semantics = check_expr(expr, scope)?;
        require(&semantics, order, expr)?;
        match &first {
            None => first = Some((expr, type_of(expr, scope)?)),
            Some((left, left_type)) => {
                compare_types(left, left_type, expr, &type_of(expr, scope)?, scope)?;
            }
        }
    }
    Ok(Semantics::COMPARABLE)
}

/// The type of `expr` over the scope's schema; its columns may be qualified where the
/// schema's are not (a table's filters), as [`Scope::column`] allows.
fn type_of(expr: &Expr, scope: &Scope<'_>) -> Result<DataType, String> {
    expr.get_type(scope.schema).or_else(|e| {
        let unqualified = expr
            .clone()
            .transform(|e| match e {
                Expr::Column(column) => Ok(Transformed::yes(Expr::Column(
                    Column::new_unqualified(column.name),
                ))),
                other => Ok(Transformed::no(other)),
            })
            .map_err(|_| e.to_string())?
            .data;
        unqualified
            .get_type(scope.schema)
            .map_err(|_| e.to_string())
    })
}

/// `Err` unless the source compares `left` (of `left_type`) with `right` as DataFusion does.
fn compare_types(
    left: &Expr,
    left_type: &DataType,
    right: &Expr,
    right_type: &DataType,
    scope: &Scope<'_>,
) -> Result<(), String> {
    if matches!(left_type, DataType::Null) || matches!(right_type, DataType::Null) {
        return Ok(());
    }
    scope
        .capabilities
        .compare(left_type, right_type)
        .map_err(|why| format!("`{}` against `{}`: {why}", shown(left), shown(right)))
}

fn check_binary(binary: &BinaryExpr, scope: &Scope<'_>) -> Result<Semantics, String> {
    let BinaryExpr { left, op, right } = binary;
    let l = check_expr(left, scope)?;
    let r = check_expr(right, scope)?;
    scope.capabilities.operator(*op)?;
    let order = match op {
        Operator::Eq | Operator::NotEq => false,
        Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq => true,
        _ => return Ok(Semantics::COMPARABLE),
    };
    require(&l, order, left)?;
    require(&r, order, right)?;
    compare_types(
        left,
        &type_of(left, scope)?,
        right,
        &type_of(right, scope)?,
        scope,
    )?;
    Ok(Semantics::COMPARABLE)
}

fn check_case(case: &Case, scope: &Scope<'_>) -> Result<Semantics, String> {
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

fn check_like(like: &Like, scope: &Scope<'_>) -> Result<Semantics, String> {
    scope.capabilities.like(like)?;
    compared([&*like.expr, &*like.pattern], false, scope)
}

fn check_cast(cast: &Cast, scope: &Scope<'_>) -> Result<Semantics, String> {
    let inner = check_expr(&cast.expr, scope)?;
    let from = type_of(&cast.expr, scope)?;
    let to = cast.field.data_type();
    if scope.capabilities.cast(&from, to) {
        Ok(inner)
    } else {
        Err(format!(
            "the cast of `{}` to {to} is not pushed",
            shown(&cast.expr)
        ))
    }
}

fn check_function(call: &ScalarFunction, scope: &Scope<'_>) -> Result<Semantics, String> {
    let name = call.name();
    if KYMA_FUNCTIONS.contains(&name) {
        return Err(format!(
            "`{name}` is a kyma function; the source has no such function"
        ));
    }
    match scope.capabilities.function(call, scope.schema)? {
        FunctionResult::LikeAllArguments => {
            let mut semantics = Semantics::COMPARABLE;
            for arg in &call.args {
                semantics = semantics.both(&check_expr(arg, scope)?);
            }
            Ok(semantics)
        }
        FunctionResult::LikeArgument(index) => match call.args.get(index) {
            Some(arg) => check_expr(arg, scope),
            None => Err(format!("`{name}` lacks argument {}", index + 1)),
        },
    }
}

/// The semantics of aggregate `expr`'s result at the source, or why it cannot run there.
pub(crate) fn check_aggregate(expr: &Expr, scope: &Scope<'_>) -> Result<Semantics, String> {
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
    let mut args = Vec::with_capacity(params.args.len());
    let mut types = Vec::with_capacity(params.args.len());
    for arg in &params.args {
        let semantics = check_expr(arg, scope)?;
        if params.distinct {
            require(&semantics, false, arg)?;
        }
        args.push(semantics);
        types.push(arg.get_type(scope.schema).map_err(|e| e.to_string())?);
    }
    match scope.capabilities.aggregate(func.name(), &types)? {
        AggregateResult::Comparable => Ok(Semantics::COMPARABLE),
        AggregateResult::Ordered => {
            let ([arg], [semantics]) = (params.args.as_slice(), args.as_slice()) else {
                return Err(format!("`{}` takes one argument", func.name()));
            };
            require(semantics, true, arg)?;
            Ok(semantics.clone())
        }
    }
}

//! A subtree of a plan written as a MongoDB aggregation pipeline, exactly.
//!
//! # Why the pipeline answers what kyma would
//!
//! kyma reads a column as typed only when the BSON value at its path is a scalar, not an
//! array, of one of the BSON types its kind reads (`Kind::bson_types`), every step before the
//! last being a sub-document; anything else (null, missing, an array, another type) reads
//! NULL. MongoDB's query language instead matches array elements, type-brackets `$gt`, and
//! says `$ne`/`$nin` of null and missing fields. So every predicate on a column `c` is
//! *guarded*: g(c) = for every proper prefix `p` of the path `{p: {$not: {$type: "array"}}}`,
//! and `{path: {$type: T, $not: {$type: "array"}}}` for one of the types T (one `$or`
//! alternative per type). Under the guard the field holds one value that kyma reads, and
//! MongoDB compares it with a constant of the column's type as kyma does (numbers by value,
//! strings byte-wise under the simple collation every pipeline runs with, dates by
//! milliseconds).
//!
//! SQL's three values are compiled exactly: every predicate becomes a pair of query
//! documents ([`Truth`]) matching the documents where it is TRUE and where it is FALSE; NOT
//! swaps them, AND is (all true, any false), OR is (any true, all false), IS NULL is "neither"
//! and a `$match` keeps the TRUE side. Filters are query-language `$match` only (no `$expr`),
//! so they use indexes.
//!
//! - `c op k`: guard and `{c: {$op: k}}` / guard and the negated operator. A timestamp
//!   constant is a date only with whole milliseconds; integers fit the column.
//! - `c IN (…)`: `$in` / `$nin` under the guard; a NULL in the list leaves no FALSE side.
//! - `c LIKE p`: an anchored regex (`^…(?!.)`, `s`: `(?!.)` is the absolute end, where `$`
//!   would also match before a final newline) of the escaped pattern.
//! - `_id` reads any BSON value as its text (`values::key_text`); `_id = 'L'` matches the
//!   exact preimages of L: the string, the ObjectId of 24 lowercase hex digits, the int and
//!   long of canonical decimal text (`{$eq: n, $type: "int"}`: a bare `5` would also match
//!   the double 5.0, whose text is `5.0`), the double whose text L is, the booleans, the UUID
//!   of lowercase hyphenated text. Text starting with `{` or `[` (documents, dates and other
//!   Extended JSON, which MongoDB compares by value) and zero doubles (`-0.0 = 0.0`) are not
//!   pushed.
//!
//! The rest of the pipeline: after the scan's `$match`, one `$project` puts each top-level
//! key that is read under a positional name (`f0`, …) through `$getField`, so kyma extracts
//! nested paths with sync's own code. Sorts add typed keys (`$cond` of `$type` in the
//! column's types, else null: arrays and paths through arrays read null, as in kyma) and a
//! null-order key when SQL's NULL order is not MongoDB's (nulls first ascending). `$group`
//! groups on typed keys; COUNT is `$sum` of 1 or of the typed check, MIN/MAX ignore nulls as
//! SQL does, SUM (ints only: it cannot overflow a long below 2^32 rows) is NULL when it
//! summed nothing. Without GROUP BY the group runs in a `$facet` so that no rows still give
//! one row, as in SQL.
//!
//! What is not exact: a `long` column reads integral Decimal128 values and the guard admits
//! every Decimal128, so a fractional or out-of-range Decimal128 (never in the sample that made
//! the column `long`, else it would be `real`) reads NULL in kyma but is compared at MongoDB.

use std::collections::HashMap;

use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::logical_expr::expr::{AggregateFunction, Between, InList, Like};
use datafusion::logical_expr::{
    Aggregate, BinaryExpr, Expr, Limit, LogicalPlan, Operator, Sort, TableScan,
};
use kyma_connectors::mongodb::schema::{FieldColumn, Kind, Shape};
use kyma_connectors::mongodb::values::key_text;
use kyma_connectors::sync::TableId;
use mongodb::bson::oid::ObjectId;
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{Binary, Bson, DateTime, Document, Regex, doc};

use crate::federation::capabilities::shown;
use crate::federation::source::SourceQuery;

/// Where one output column of a pipeline reads: its path in the documents at that point and
/// what it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// The keys from the document's top.
    pub path: Vec<String>,
    /// What it reads.
    pub kind: Kind,
    /// Whether the query language can address it (see `FieldColumn::addressable`).
    pub addressable: bool,
}

impl Field {
    fn of(column: &FieldColumn) -> Self {
        Self {
            path: column.path.clone(),
            kind: column.kind,
            addressable: column.addressable(),
        }
    }

    fn dotted(&self) -> String {
        self.path.join(".")
    }

    /// `$path`, the field in aggregation expressions.
    fn expression(&self) -> String {
        format!("${}", self.dotted())
    }
}

/// A compiled pipeline and where its output columns are.
#[derive(Debug, Clone, PartialEq)]
pub struct Compiled {
    /// The stages.
    pub stages: Vec<Document>,
    /// Per output column of the subtree, in order.
    pub fields: Vec<Field>,
}

impl Compiled {
    /// The source query running it on collection `id`.
    pub fn into_query(self, id: TableId) -> SourceQuery {
        let shown = relaxed_json(&Bson::Array(
            self.stages.iter().cloned().map(Bson::Document).collect(),
        ));
        let stages = self
            .stages
            .iter()
            .map(|stage| {
                let mut bytes = Vec::new();
                // Writing into a Vec cannot fail for a document built here.
                let _ = stage.to_writer(&mut bytes);
                bytes
            })
            .collect();
        SourceQuery::Pipeline {
            database: id.schema,
            collection: id.table,
            shown,
            stages,
            columns: self.fields.into_iter().map(|f| (f.path, f.kind)).collect(),
        }
    }
}

/// `value` as relaxed Extended JSON, keys in document order.
pub fn relaxed_json(value: &Bson) -> String {
    let mut out = String::new();
    write_json(value, &mut out);
    out
}

fn write_json(value: &Bson, out: &mut String) {
    match value {
        Bson::Document(document) => {
            out.push('{');
            for (i, (key, value)) in document.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::from(key.as_str()).to_string());
                out.push(':');
                write_json(value, out);
            }
            out.push('}');
        }
        Bson::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.clone().into_relaxed_extjson().to_string()),
    }
}

/// Finds the collection and shape a scan reads.
pub type Shapes<'a> = dyn Fn(&TableScan) -> Result<(TableId, std::sync::Arc<Shape>), String> + 'a;

/// The pipeline answering `plan`, with the collection it reads; `Err` says why not.
pub fn compile(plan: &LogicalPlan, shapes: &Shapes<'_>) -> Result<(TableId, Compiled), String> {
    match plan {
        LogicalPlan::TableScan(scan) => {
            let (id, shape) = shapes(scan)?;
            Ok((id, compile_scan(scan, &shape)?))
        }
        LogicalPlan::SubqueryAlias(alias) => compile(&alias.input, shapes),
        LogicalPlan::Filter(filter) => {
            let (id, mut c) = compile(&filter.input, shapes)?;
            let truth = predicate(&filter.predicate, &bindings(&filter.input, &c))?;
            c.stages.push(doc! { "$match": truth.yes });
            Ok((id, c))
        }
        LogicalPlan::Projection(projection) => {
            let (id, c) = compile(&projection.input, shapes)?;
            let b = bindings(&projection.input, &c);
            let fields = projection
                .expr
                .iter()
                .map(|e| b.field(e).cloned())
                .collect::<Result<_, _>>()?;
            Ok((id, Compiled { fields, ..c }))
        }
        LogicalPlan::Sort(sort) => {
            let (id, c) = compile(&sort.input, shapes)?;
            Ok((id, compile_sort(sort, c)?))
        }
        LogicalPlan::Limit(limit) => {
            let (id, mut c) = compile(&limit.input, shapes)?;
            c.stages.extend(limit_stages(limit)?);
            Ok((id, c))
        }
        LogicalPlan::Aggregate(aggregate) => {
            let (id, c) = compile(&aggregate.input, shapes)?;
            Ok((id, compile_aggregate(aggregate, c)?))
        }
        other => Err(format!(
            "{} is not pushed to MongoDB",
            other.display().to_string().to_lowercase()
        )),
    }
}

/// `Err` unless `filter` over a collection read as `shape` (whose columns `schema` names)
/// compiles into a `$match`.
pub fn check_filter(shape: &Shape, schema: &DFSchema, filter: &Expr) -> Result<(), String> {
    let fields: Vec<Field> = shape.columns().iter().map(Field::of).collect();
    predicate(
        filter,
        &Bindings {
            schema,
            fields: &fields,
        },
    )
    .map(|_| ())
}

/// The output columns of a plan node's input and where they are.
struct Bindings<'a> {
    schema: &'a DFSchema,
    fields: &'a [Field],
}

fn bindings<'a>(input: &'a LogicalPlan, c: &'a Compiled) -> Bindings<'a> {
    Bindings {
        schema: input.schema(),
        fields: &c.fields,
    }
}

impl Bindings<'_> {
    fn index(&self, column: &Column) -> Option<usize> {
        self.schema.index_of_column(column).ok().or_else(|| {
            let mut named = self
                .schema
                .fields()
                .iter()
                .enumerate()
                .filter(|(_, f)| f.name() == &column.name);
            match (named.next(), named.next()) {
                (Some((i, _)), None) => Some(i),
                _ => None,
            }
        })
    }

    /// The field `expr` (a column, maybe aliased) is.
    fn field(&self, expr: &Expr) -> Result<&Field, String> {
        match expr {
            Expr::Column(column) => self
                .index(column)
                .and_then(|i| self.fields.get(i))
                .ok_or_else(|| format!("column `{column}` is not in the pipeline")),
            Expr::Alias(alias) => self.field(&alias.expr),
            other => Err(format!(
                "`{}` is not a field; MongoDB computes no expressions here",
                shown(other)
            )),
        }
    }

    /// The field `expr` is, when MongoDB may compare it: addressable and typed.
    fn compared(&self, expr: &Expr) -> Result<&Field, String> {
        let field = self.field(expr)?;
        if !field.addressable {
            return Err(format!(
                "`{}` is under a key the query language cannot address",
                shown(expr)
            ));
        }
        if field.kind != Kind::Key && field.kind.bson_types().is_empty() {
            return Err(format!("`{}` reads any BSON type", shown(expr)));
        }
        Ok(field)
    }
}

// ---------------------------------------------------------------------------------------
// Scan, projection, limit

fn compile_scan(scan: &TableScan, shape: &Shape) -> Result<Compiled, String> {
    let all: Vec<Field> = shape.columns().iter().map(Field::of).collect();
    let mut stages = Vec::new();
    if !scan.filters.is_empty() {
        let schema =
            DFSchema::try_from(scan.source.schema().as_ref().clone()).map_err(|e| e.to_string())?;
        let b = Bindings {
            schema: &schema,
            fields: &all,
        };
        let yes = scan
            .filters
            .iter()
            .map(|f| predicate(f, &b).map(|t| t.yes))
            .collect::<Result<Vec<_>, _>>()?;
        stages.push(doc! { "$match": all_of(yes) });
    }
    let read: Vec<&Field> = match &scan.projection {
        Some(indices) => indices.iter().filter_map(|&i| all.get(i)).collect(),
        None => all.iter().collect(),
    };
    let (project, fields) = positional(&read);
    stages.push(doc! { "$project": project });
    if let Some(fetch) = scan.fetch {
        stages.extend(skip_limit(0, Some(fetch)));
    }
    Ok(Compiled { stages, fields })
}

/// The `$project` putting each top-level key `fields` read under a positional name, and the
/// fields' paths under those names.
fn positional(fields: &[&Field]) -> (Document, Vec<Field>) {
    let mut project = doc! { "_id": 0 };
    let mut names: HashMap<&str, String> = HashMap::new();
    let mut out = Vec::with_capacity(fields.len());
    for field in fields {
        let Some((top, rest)) = field.path.split_first() else {
            continue;
        };
        let count = names.len();
        let name = names.entry(top.as_str()).or_insert_with(|| {
            let name = format!("f{count}");
            let value = if top == "_id" {
                Bson::String("$_id".into())
            } else {
                Bson::Document(doc! {
                    "$getField": { "field": { "$literal": top.as_str() }, "input": "$$ROOT" }
                })
            };
            project.insert(name.clone(), value);
            name
        });
        let mut path = vec![name.clone()];
        path.extend(rest.iter().cloned());
        out.push(Field {
            path,
            ..(*field).clone()
        });
    }
    if names.is_empty() {
        // Nothing read (COUNT(*)): the smallest document.
        project = doc! { "_id": 1 };
    }
    (project, out)
}

fn limit_stages(limit: &Limit) -> Result<Vec<Document>, String> {
    let constant = |e: &Option<Box<Expr>>| -> Result<Option<usize>, String> {
        match e.as_deref() {
            None => Ok(None),
            Some(Expr::Literal(ScalarValue::Int64(Some(n)), _)) => usize::try_from(*n)
                .map(Some)
                .map_err(|_| "a negative LIMIT or OFFSET".to_owned()),
            Some(_) => Err("only constant LIMIT and OFFSET are pushed".into()),
        }
    };
    let skip = constant(&limit.skip)?.unwrap_or(0);
    Ok(skip_limit(skip, constant(&limit.fetch)?))
}

fn skip_limit(skip: usize, fetch: Option<usize>) -> Vec<Document> {
    let mut stages = Vec::new();
    if skip > 0 {
        stages.push(doc! { "$skip": count(skip) });
    }
    match fetch {
        // `$limit: 0` is an error at MongoDB.
        Some(0) => stages.push(doc! { "$match": nothing() }),
        Some(n) => stages.push(doc! { "$limit": count(n) }),
        None => {}
    }
    stages
}

fn count(n: usize) -> Bson {
    i64::try_from(n).map_or(Bson::Int64(i64::MAX), Bson::Int64)
}

// ---------------------------------------------------------------------------------------
// Predicates

/// The documents where a predicate is TRUE and where it is FALSE (elsewhere it is NULL).
#[derive(Debug, Clone, PartialEq)]
pub struct Truth {
    /// Where it is TRUE.
    pub yes: Document,
    /// Where it is FALSE.
    pub no: Document,
}

impl Truth {
    fn not(self) -> Self {
        Self {
            yes: self.no,
            no: self.yes,
        }
    }

    fn unknown() -> Self {
        Self {
            yes: nothing(),
            no: nothing(),
        }
    }
}

/// A query matching no document.
fn nothing() -> Document {
    doc! { "$nor": [{}] }
}

/// Every one of `docs` (flattening nested `$and`s).
fn all_of(docs: Vec<Document>) -> Document {
    combine("$and", docs, Document::new())
}

/// Any one of `docs` (flattening nested `$or`s).
fn any_of(docs: Vec<Document>) -> Document {
    combine("$or", docs, nothing())
}

fn combine(op: &str, docs: Vec<Document>, empty: Document) -> Document {
    let mut parts = Vec::new();
    for d in docs {
        match d.get_array(op) {
            Ok(inner) if d.len() == 1 => parts.extend(inner.iter().cloned()),
            _ => parts.push(Bson::Document(d)),
        }
    }
    match parts.len() {
        0 => empty,
        1 => match parts.pop() {
            Some(Bson::Document(d)) => d,
            _ => empty,
        },
        _ => doc! { op: parts },
    }
}

/// The guard of `field`: the documents where kyma reads a typed value (see the module doc).
fn guard(field: &Field) -> Vec<Document> {
    let dotted = field.dotted();
    if field.kind == Kind::Key {
        return vec![doc! { dotted: { "$ne": null } }];
    }
    let mut conjuncts: Vec<Document> = (1..field.path.len())
        .map(|n| doc! { field.path[..n].join("."): { "$not": { "$type": "array" } } })
        .collect();
    let typed = field
        .kind
        .bson_types()
        .iter()
        .map(|t| doc! { dotted.clone(): { "$type": *t, "$not": { "$type": "array" } } })
        .collect();
    conjuncts.push(any_of(typed));
    conjuncts
}

/// The guard and `condition`.
fn guarded(field: &Field, condition: Option<Document>) -> Document {
    let mut conjuncts = guard(field);
    conjuncts.extend(condition);
    all_of(conjuncts)
}

/// The [`Truth`] of boolean `expr`.
fn predicate(expr: &Expr, b: &Bindings<'_>) -> Result<Truth, String> {
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::And | Operator::Or => {
                let (l, r) = (predicate(left, b)?, predicate(right, b)?);
                Ok(if *op == Operator::And {
                    Truth {
                        yes: all_of(vec![l.yes, r.yes]),
                        no: any_of(vec![l.no, r.no]),
                    }
                } else {
                    Truth {
                        yes: any_of(vec![l.yes, r.yes]),
                        no: all_of(vec![l.no, r.no]),
                    }
                })
            }
            _ => comparison(left, *op, right, b),
        },
        Expr::Not(inner) => predicate(inner, b).map(Truth::not),
        Expr::IsNull(inner) => is_null(inner, b),
        Expr::IsNotNull(inner) => is_null(inner, b).map(Truth::not),
        Expr::InList(list) => in_list(list, b),
        Expr::Between(between) => compile_between(between, b),
        Expr::Like(like) => compile_like(like, b),
        Expr::Literal(ScalarValue::Boolean(value), _) => Ok(match value {
            Some(true) => Truth {
                yes: Document::new(),
                no: nothing(),
            },
            Some(false) => Truth {
                yes: nothing(),
                no: Document::new(),
            },
            None => Truth::unknown(),
        }),
        Expr::Column(_) => {
            let field = b.compared(expr)?;
            if field.kind != Kind::Bool {
                return Err(format!("`{}` is not a boolean", shown(expr)));
            }
            let is = |value: bool| guarded(field, Some(doc! { field.dotted(): { "$eq": value } }));
            Ok(Truth {
                yes: is(true),
                no: is(false),
            })
        }
        other => Err(format!(
            "`{}` is not pushed to MongoDB's $match",
            shown(other)
        )),
    }
}

fn is_null(inner: &Expr, b: &Bindings<'_>) -> Result<Truth, String> {
    if let Ok(field) = b.compared(inner) {
        let typed = guarded(field, None);
        return Ok(Truth {
            yes: doc! { "$nor": [typed.clone()] },
            no: typed,
        });
    }
    let truth = predicate(inner, b)?;
    Ok(Truth {
        yes: doc! { "$nor": [truth.yes.clone(), truth.no.clone()] },
        no: any_of(vec![truth.yes, truth.no]),
    })
}

/// `field op constant` or `constant op field`, as the field and the operator seen from it.
fn field_and_constant<'e>(
    left: &'e Expr,
    op: Operator,
    right: &'e Expr,
) -> Result<(&'e Expr, Operator, &'e ScalarValue), String> {
    match (left, right) {
        (_, Expr::Literal(value, _)) => Ok((left, op, value)),
        (Expr::Literal(value, _), _) => op
            .swap()
            .map(|op| (right, op, value))
            .ok_or_else(|| format!("`{op}` is not pushed")),
        _ => Err(format!(
            "`{} {op} {}` compares two expressions; MongoDB's $match compares a field with constants only",
            shown(left),
            shown(right)
        )),
    }
}

fn comparison(left: &Expr, op: Operator, right: &Expr, b: &Bindings<'_>) -> Result<Truth, String> {
    let (expr, op, value) = field_and_constant(left, op, right)?;
    let field = b.compared(expr)?;
    if value.is_null() {
        return Ok(Truth::unknown());
    }
    match op {
        Operator::Eq => membership(field, std::slice::from_ref(value), false),
        Operator::NotEq => membership(field, std::slice::from_ref(value), false).map(Truth::not),
        Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq => ordered(field, op, value),
        other => Err(format!("`{other}` is not pushed to MongoDB")),
    }
}

/// `field < value` and friends.
fn ordered(field: &Field, op: Operator, value: &ScalarValue) -> Result<Truth, String> {
    if !matches!(
        field.kind,
        Kind::Int | Kind::Long | Kind::Bool | Kind::String | Kind::ObjectId | Kind::Date
    ) {
        return Err(format!("`{}` is not ordered at MongoDB", field.dotted()));
    }
    let constant = constant(field.kind, value)?
        .ok_or_else(|| format!("{value} is no {:?} value", field.kind))?;
    let (yes, no) = match op {
        Operator::Lt => ("$lt", "$gte"),
        Operator::LtEq => ("$lte", "$gt"),
        Operator::Gt => ("$gt", "$lte"),
        _ => ("$gte", "$lt"),
    };
    let side = |op: &str| {
        guarded(
            field,
            Some(doc! { field.dotted(): { op: constant.clone() } }),
        )
    };
    Ok(Truth {
        yes: side(yes),
        no: side(no),
    })
}

/// `field IN (values)` (for one value: `field = value`); NULLs in `values` leave no FALSE.
fn membership(field: &Field, values: &[ScalarValue], list: bool) -> Result<Truth, String> {
    let has_null = values.iter().any(ScalarValue::is_null);
    let present = values.iter().filter(|v| !v.is_null());
    let no_false = |truth: Truth| {
        if has_null {
            Truth {
                no: nothing(),
                ..truth
            }
        } else {
            truth
        }
    };
    if field.kind == Kind::Key {
        let mut alternatives = Vec::new();
        for value in present {
            let text = value
                .try_as_str()
                .flatten()
                .ok_or_else(|| format!("`_id` is text; {value} is not"))?;
            alternatives.extend(key_preimages(&field.dotted(), text)?);
        }
        let no = match alternatives.is_empty() {
            true => guarded(field, None),
            false => guarded(field, Some(doc! { "$nor": alternatives.clone() })),
        };
        let yes = guarded(field, Some(any_of(alternatives)));
        return Ok(no_false(Truth { yes, no }));
    }
    let mut constants = Vec::new();
    for value in present {
        constants.extend(constant(field.kind, value)?);
    }
    let dotted = field.dotted();
    let (yes, no) = match (constants.as_slice(), list) {
        ([], _) => (nothing(), guarded(field, None)),
        ([one], false) => (
            guarded(field, Some(doc! { dotted.clone(): { "$eq": one.clone() } })),
            guarded(field, Some(doc! { dotted: { "$ne": one.clone() } })),
        ),
        (many, _) => (
            guarded(
                field,
                Some(doc! { dotted.clone(): { "$in": many.to_vec() } }),
            ),
            guarded(field, Some(doc! { dotted: { "$nin": many.to_vec() } })),
        ),
    };
    Ok(no_false(Truth { yes, no }))
}

fn in_list(list: &InList, b: &Bindings<'_>) -> Result<Truth, String> {
    let field = b.compared(&list.expr)?;
    let values = list
        .list
        .iter()
        .map(|e| match e {
            Expr::Literal(value, _) => Ok(value.clone()),
            other => Err(format!(
                "`{}` in an IN list is not a constant",
                shown(other)
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let truth = membership(field, &values, true)?;
    Ok(if list.negated { truth.not() } else { truth })
}

fn compile_between(between: &Between, b: &Bindings<'_>) -> Result<Truth, String> {
    let low = comparison(&between.expr, Operator::GtEq, &between.low, b)?;
    let high = comparison(&between.expr, Operator::LtEq, &between.high, b)?;
    let truth = Truth {
        yes: all_of(vec![low.yes, high.yes]),
        no: any_of(vec![low.no, high.no]),
    };
    Ok(if between.negated { truth.not() } else { truth })
}

fn compile_like(like: &Like, b: &Bindings<'_>) -> Result<Truth, String> {
    if like.case_insensitive || like.escape_char.is_some() {
        return Err("ILIKE and LIKE … ESCAPE are not pushed to MongoDB".into());
    }
    let field = b.compared(&like.expr)?;
    if field.kind != Kind::String {
        return Err(format!(
            "`{}` is not a string at MongoDB; $regex would not match it",
            shown(&like.expr)
        ));
    }
    let Expr::Literal(pattern, _) = like.pattern.as_ref() else {
        return Err("only LIKE with a constant pattern is pushed".into());
    };
    let Some(pattern) = pattern.try_as_str() else {
        return Err("a LIKE pattern must be text".into());
    };
    let Some(pattern) = pattern else {
        return Ok(Truth::unknown());
    };
    let regex = Bson::RegularExpression(Regex {
        pattern: like_regex(pattern)?,
        options: "s".into(),
    });
    let dotted = field.dotted();
    let truth = Truth {
        yes: guarded(
            field,
            Some(doc! { dotted.clone(): { "$regex": regex.clone() } }),
        ),
        no: guarded(field, Some(doc! { dotted: { "$not": regex } })),
    };
    Ok(if like.negated { truth.not() } else { truth })
}

/// The anchored regex (option `s`) matching what SQL pattern `pattern` matches; patterns
/// with a backslash (DataFusion's escape) are not pushed.
pub fn like_regex(pattern: &str) -> Result<String, String> {
    if pattern.contains('\\') {
        return Err("a LIKE pattern holding `\\` (an escape) is not pushed to MongoDB".into());
    }
    let mut regex = String::from("^");
    for c in pattern.chars() {
        match c {
            '%' => regex.push_str(".*"),
            '_' => regex.push('.'),
            c if c.is_ascii_punctuation() => {
                regex.push('\\');
                regex.push(c);
            }
            c => regex.push(c),
        }
    }
    // The absolute end: `$` also matches before a final newline.
    regex.push_str("(?!.)");
    Ok(regex)
}

// ---------------------------------------------------------------------------------------
// Constants

/// The BSON value a non-NULL constant is compared as, whatever the column (`Err`: MongoDB
/// cannot compare it as kyma does).
pub fn literal(value: &ScalarValue) -> Result<Bson, String> {
    let integer = |n: Option<i64>| match n {
        Some(n) => Ok(i32::try_from(n).map_or(Bson::Int64(n), Bson::Int32)),
        None => Err(format!("{value} is out of the long range")),
    };
    let millis = |v: &Option<i64>, per_milli: i64, per_second: i64| -> Result<Bson, String> {
        let v = v.ok_or("a NULL timestamp")?;
        let ms = match (per_milli, per_second) {
            (0, s) => v.checked_mul(1000 / s),
            (p, _) if v % p == 0 => Some(v / p),
            _ => {
                return Err(format!(
                    "{value} has a sub-millisecond part; MongoDB dates hold milliseconds"
                ));
            }
        };
        ms.map(|ms| Bson::DateTime(DateTime::from_millis(ms)))
            .ok_or_else(|| format!("{value} is out of MongoDB's date range"))
    };
    match value {
        ScalarValue::Int8(Some(n)) => integer(Some(i64::from(*n))),
        ScalarValue::Int16(Some(n)) => integer(Some(i64::from(*n))),
        ScalarValue::Int32(Some(n)) => integer(Some(i64::from(*n))),
        ScalarValue::Int64(Some(n)) => integer(Some(*n)),
        ScalarValue::UInt8(Some(n)) => integer(Some(i64::from(*n))),
        ScalarValue::UInt16(Some(n)) => integer(Some(i64::from(*n))),
        ScalarValue::UInt32(Some(n)) => integer(Some(i64::from(*n))),
        ScalarValue::UInt64(Some(n)) => integer(i64::try_from(*n).ok()),
        ScalarValue::Boolean(Some(b)) => Ok(Bson::Boolean(*b)),
        ScalarValue::TimestampSecond(v, _) => millis(v, 0, 1),
        ScalarValue::TimestampMillisecond(v, _) => millis(v, 1, 0),
        ScalarValue::TimestampMicrosecond(v, _) => millis(v, 1_000, 0),
        ScalarValue::TimestampNanosecond(v, _) => millis(v, 1_000_000, 0),
        other => match other.try_as_str().flatten() {
            Some(text) if text.starts_with(['{', '[']) => Err(format!(
                "{value} may be the Extended JSON of an `_id`, which MongoDB compares by value"
            )),
            Some(text) => Ok(Bson::String(text.to_owned())),
            None => Err(format!("{value} is not compared at MongoDB")),
        },
    }
}

/// The BSON value a constant is in a column of `kind`; `None` when no value of the column
/// reads as it (text that is no ObjectId's).
fn constant(kind: Kind, value: &ScalarValue) -> Result<Option<Bson>, String> {
    let bson = literal(value)?;
    let fits = match (kind, &bson) {
        (Kind::Int, Bson::Int32(_))
        | (Kind::Long, Bson::Int32(_) | Bson::Int64(_))
        | (Kind::Bool, Bson::Boolean(_))
        | (Kind::String, Bson::String(_))
        | (Kind::Date, Bson::DateTime(_)) => true,
        (Kind::ObjectId, Bson::String(text)) => return Ok(object_id(text).map(Bson::ObjectId)),
        _ => false,
    };
    if fits {
        Ok(Some(bson))
    } else {
        Err(format!("{value} is not compared with a {kind:?} field"))
    }
}

/// The ObjectId whose text `text` is (24 lowercase hex digits).
fn object_id(text: &str) -> Option<ObjectId> {
    let lower = text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    ObjectId::parse_str(text).ok().filter(|_| lower)
}

/// The conditions on `_id` (at `path`) matching exactly the values whose key text is `text`
/// (see the module doc).
pub fn key_preimages(path: &str, text: &str) -> Result<Vec<Document>, String> {
    if text.starts_with(['{', '[']) {
        return Err(format!(
            "`{text}` may be the Extended JSON of an `_id`, which MongoDB compares by value"
        ));
    }
    let mut alternatives = vec![doc! { path: { "$eq": text } }];
    if let Some(oid) = object_id(text) {
        alternatives.push(doc! { path: { "$eq": oid } });
    }
    if let Ok(n) = text.parse::<i64>()
        && n.to_string() == text
    {
        if let Ok(small) = i32::try_from(n) {
            alternatives.push(doc! { path: { "$eq": small, "$type": "int" } });
        }
        alternatives.push(doc! { path: { "$eq": n, "$type": "long" } });
    }
    if let Ok(d) = text.parse::<f64>()
        && key_text(&Bson::Double(d)) == text
    {
        if d == 0.0 {
            return Err(format!(
                "`{text}`: MongoDB's equality does not tell the double -0.0 from 0.0"
            ));
        }
        alternatives.push(doc! { path: { "$eq": d, "$type": "double" } });
    }
    if let Ok(b) = text.parse::<bool>() {
        alternatives.push(doc! { path: { "$eq": b } });
    }
    if let Ok(uuid) = uuid::Uuid::parse_str(text)
        && uuid.hyphenated().to_string() == text
    {
        let binary = Binary {
            subtype: BinarySubtype::Uuid,
            bytes: uuid.as_bytes().to_vec(),
        };
        alternatives.push(doc! { path: { "$eq": binary } });
    }
    Ok(alternatives)
}

// ---------------------------------------------------------------------------------------
// Sort and aggregate

/// The types `field` reads (`_id`: anything but null).
fn typed_check(field: &Field) -> Bson {
    let kind = Bson::Document(doc! { "$type": field.expression() });
    if field.kind == Kind::Key {
        let absent = vec!["missing", "null", "undefined"];
        return Bson::Document(doc! { "$not": [{ "$in": [kind, absent] }] });
    }
    let types: Vec<&str> = field.kind.bson_types().to_vec();
    Bson::Document(doc! { "$in": [kind, types] })
}

/// `field`'s value as kyma reads it: the value when typed, else null.
fn typed(field: &Field) -> Bson {
    Bson::Document(doc! { "$cond": [typed_check(field), field.expression(), null] })
}

fn compile_sort(sort: &Sort, mut c: Compiled) -> Result<Compiled, String> {
    let b = bindings(&sort.input, &c);
    let mut keys = Document::new();
    let mut order = Document::new();
    for (i, key) in sort.expr.iter().enumerate() {
        let field = b.compared(&key.expr)?;
        if field.kind == Kind::Key {
            return Err("`_id` does not sort at MongoDB as its text".into());
        }
        let name = format!("k{i}");
        keys.insert(name.clone(), typed(field));
        // MongoDB sorts null first ascending, last descending.
        if key.nulls_first != key.asc {
            let nulls = format!("n{i}");
            let is_null = doc! { "$cond": [{ "$eq": [format!("${name}"), null] }, 1, 0] };
            keys.insert(nulls.clone(), is_null);
            order.insert(nulls, if key.nulls_first { -1 } else { 1 });
        }
        order.insert(name, if key.asc { 1 } else { -1 });
    }
    let added: Vec<String> = keys.keys().cloned().collect();
    c.stages.push(doc! { "$addFields": keys });
    c.stages.push(doc! { "$sort": order });
    c.stages.push(doc! { "$unset": added });
    if let Some(fetch) = sort.fetch {
        c.stages.extend(skip_limit(0, Some(fetch)));
    }
    Ok(c)
}

/// The `$group` being written: its accumulators, the `$project` flattening them, and the
/// values of a group over no documents.
#[derive(Default)]
struct Group {
    accumulators: Document,
    flat: Document,
    empty: Document,
}

fn compile_aggregate(aggregate: &Aggregate, mut c: Compiled) -> Result<Compiled, String> {
    let b = bindings(&aggregate.input, &c);
    let mut id = Document::new();
    let mut group = Group {
        flat: doc! { "_id": 0 },
        ..Group::default()
    };
    let mut fields = Vec::new();
    for (i, expr) in aggregate.group_expr.iter().enumerate() {
        let field = b.compared(expr)?;
        if field.kind == Kind::Key {
            return Err("`_id` groups at MongoDB by BSON value, not by its text".into());
        }
        let name = format!("f{i}");
        id.insert(name.clone(), typed(field));
        group.flat.insert(name.clone(), format!("$_id.{name}"));
        fields.push(output(name, field.kind));
    }
    for (j, expr) in aggregate.aggr_expr.iter().enumerate() {
        let name = format!("f{}", aggregate.group_expr.len() + j);
        let kind = accumulate(expr, &b, &name, &mut group)?;
        fields.push(output(name, kind));
    }
    let mut stage = doc! { "_id": if id.is_empty() { Bson::Null } else { Bson::Document(id) } };
    stage.extend(group.accumulators);
    if aggregate.group_expr.is_empty() {
        // SQL answers one row over no rows; `$group` none.
        c.stages
            .push(doc! { "$facet": { "g": [{ "$group": stage }] } });
        let first = doc! { "$ifNull": [{ "$first": "$g" }, { "$literal": group.empty }] };
        c.stages.push(doc! { "$replaceWith": first });
    } else {
        c.stages.push(doc! { "$group": stage });
    }
    c.stages.push(doc! { "$project": group.flat });
    Ok(Compiled {
        stages: c.stages,
        fields,
    })
}

fn output(name: String, kind: Kind) -> Field {
    Field {
        path: vec![name],
        kind,
        addressable: true,
    }
}

/// Adds aggregate `expr` as `name` to `group`; the kind its result reads as.
fn accumulate(
    expr: &Expr,
    b: &Bindings<'_>,
    name: &str,
    group: &mut Group,
) -> Result<Kind, String> {
    let inner = match expr {
        Expr::Alias(alias) => alias.expr.as_ref(),
        other => other,
    };
    let Expr::AggregateFunction(AggregateFunction { func, params }) = inner else {
        return Err(format!("`{}` is not an aggregate", shown(expr)));
    };
    if params.distinct || params.filter.is_some() || !params.order_by.is_empty() {
        return Err(format!(
            "`{}`: DISTINCT, FILTER and ORDER BY in aggregates are not pushed to MongoDB",
            shown(expr)
        ));
    }
    let reference = format!("${name}");
    match (func.name(), params.args.as_slice()) {
        ("count", [] | [Expr::Literal(_, _)]) if params.args.iter().all(is_constant) => {
            group.accumulators.insert(name, doc! { "$sum": 1 });
            group.empty.insert(name, 0);
            group.flat.insert(name, reference);
            Ok(Kind::Long)
        }
        ("count", [arg]) => {
            let check = typed_check(b.compared(arg)?);
            group
                .accumulators
                .insert(name, doc! { "$sum": { "$cond": [check, 1, 0] } });
            group.empty.insert(name, 0);
            group.flat.insert(name, reference);
            Ok(Kind::Long)
        }
        (op @ ("min" | "max"), [arg]) => {
            let field = b.compared(arg)?;
            group
                .accumulators
                .insert(name, doc! { format!("${op}"): typed(field) });
            group.empty.insert(name, Bson::Null);
            group.flat.insert(name, reference);
            Ok(field.kind)
        }
        ("sum", [arg]) => {
            // DataFusion sums ints as longs: `sum(CAST(x AS BIGINT))`.
            let arg = match arg {
                Expr::Cast(cast) => cast.expr.as_ref(),
                other => other,
            };
            let field = b.compared(arg)?;
            if field.kind != Kind::Int {
                return Err("SUM is pushed over int fields only: MongoDB's $sum turns an overflowing long into a double".into());
            }
            let counted = format!("c{name}");
            group
                .accumulators
                .insert(name, doc! { "$sum": typed(field) });
            group.accumulators.insert(
                counted.clone(),
                doc! { "$sum": { "$cond": [typed_check(field), 1, 0] } },
            );
            group.empty.insert(name, 0);
            group.empty.insert(counted.clone(), 0);
            let sum = doc! { "$cond": [{ "$eq": [format!("${counted}"), 0] }, null, reference] };
            group.flat.insert(name, sum);
            Ok(Kind::Long)
        }
        (other, _) => Err(format!("`{other}` is not pushed to MongoDB")),
    }
}

fn is_constant(expr: &Expr) -> bool {
    matches!(expr, Expr::Literal(value, _) if !value.is_null())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_become_anchored_regexes_with_metacharacters_escaped() {
        assert_eq!(like_regex("a%b_c").expect("compiles"), "^a.*b.c(?!.)");
        assert_eq!(
            like_regex("1.5$ (x)*").expect("compiles"),
            r"^1\.5\$ \(x\)\*(?!.)"
        );
        assert_eq!(
            like_regex("[a]{2}|^?+").expect("compiles"),
            r"^\[a\]\{2\}\|\^\?\+(?!.)"
        );
        assert_eq!(like_regex("zürich\n").expect("compiles"), "^zürich\n(?!.)");
        assert!(like_regex(r"100\%").is_err());
    }

    #[test]
    fn timestamps_are_dates_only_with_whole_milliseconds() {
        let micros = |v| ScalarValue::TimestampMicrosecond(Some(v), None);
        assert_eq!(
            literal(&micros(1_700_000_000_123_000)).expect("compiles"),
            Bson::DateTime(DateTime::from_millis(1_700_000_000_123))
        );
        assert!(literal(&micros(1_700_000_000_123_001)).is_err());
        let nanos = ScalarValue::TimestampNanosecond(Some(1_700_000_000_123_000_001), None);
        assert!(literal(&nanos).is_err());
        let seconds = ScalarValue::TimestampSecond(Some(1_700_000_000), Some("UTC".into()));
        assert_eq!(
            literal(&seconds).expect("compiles"),
            Bson::DateTime(DateTime::from_millis(1_700_000_000_000))
        );
    }

    #[test]
    fn integers_keep_their_width_and_unsigned_beyond_long_is_refused() {
        assert_eq!(
            literal(&ScalarValue::Int64(Some(5))).expect("compiles"),
            Bson::Int32(5)
        );
        assert_eq!(
            literal(&ScalarValue::Int64(Some(1 << 40))).expect("compiles"),
            Bson::Int64(1 << 40)
        );
        assert!(literal(&ScalarValue::UInt64(Some(u64::MAX))).is_err());
        assert!(literal(&ScalarValue::Float64(Some(1.5))).is_err());
        assert!(literal(&ScalarValue::Utf8(Some("{\"a\": 1}".into()))).is_err());
        assert!(constant(Kind::Int, &ScalarValue::Int64(Some(1 << 40))).is_err());
        assert_eq!(
            constant(Kind::ObjectId, &ScalarValue::Utf8(Some("nope".into()))).expect("compiles"),
            None
        );
    }

    /// Every preimage the conditions admit has `text` as its key text, and the usual ones
    /// are there.
    #[test]
    fn id_text_compiles_to_its_exact_preimages() {
        let json = |text| {
            relaxed_json(&Bson::Array(
                key_preimages("_id", text)
                    .expect("compiles")
                    .into_iter()
                    .map(Bson::Document)
                    .collect(),
            ))
        };
        assert_eq!(
            json("5"),
            r#"[{"_id":{"$eq":"5"}},{"_id":{"$eq":5,"$type":"int"}},{"_id":{"$eq":5,"$type":"long"}}]"#
        );
        assert_eq!(
            json("5f0000000000000000000001"),
            r#"[{"_id":{"$eq":"5f0000000000000000000001"}},{"_id":{"$eq":{"$oid":"5f0000000000000000000001"}}}]"#
        );
        // Upper-case hex is no ObjectId's text.
        assert_eq!(
            json("5F0000000000000000000001"),
            r#"[{"_id":{"$eq":"5F0000000000000000000001"}}]"#
        );
        assert_eq!(
            json("2.5"),
            r#"[{"_id":{"$eq":"2.5"}},{"_id":{"$eq":2.5,"$type":"double"}}]"#
        );
        assert_eq!(
            json("true"),
            r#"[{"_id":{"$eq":"true"}},{"_id":{"$eq":true}}]"#
        );
        assert!(json("67e55044-10b1-426f-9247-bb680e5fe0c8").contains(r#""subType":"04""#));
        assert_eq!(json("05"), r#"[{"_id":{"$eq":"05"}}]"#);
        assert_eq!(
            json("5000000000"),
            r#"[{"_id":{"$eq":"5000000000"}},{"_id":{"$eq":5000000000,"$type":"long"}}]"#
        );
        assert!(key_preimages("_id", "0.0").is_err());
        assert!(key_preimages("_id", r#"{"$date":"2020-01-01T00:00:00Z"}"#).is_err());
    }
}

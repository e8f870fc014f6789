//! `dynamic` in SQL (SPEC §3): bracket paths into CBOR and comparisons against typed values.
//!
//! - `attributes['service.name']`, `attributes['http']['status_code']` plan to
//!   `dynamic_get(attributes, 'http', 'status_code')`, which returns the CBOR found (Binary).
//! - A comparison between such a path and a typed value reads the path as that value's type:
//!   numbers compare as doubles (`dynamic_real`), text as text (`dynamic_string`), booleans
//!   (`dynamic_bool`) and timestamps (`dynamic_timestamp`, from RFC 3339 text or epoch seconds)
//!   likewise. A value of another type, or a missing path, is NULL — so it matches neither
//!   `=` nor `!=`, as SQL NULL does.
//! - The typed readers (`dynamic_long`, `dynamic_real`, `dynamic_string`, `dynamic_bool`,
//!   `dynamic_timestamp`) and `dynamic_to_json` can also be called directly.
//! - `parse_json(text)` makes a dynamic value of JSON text (an error when it is not JSON);
//!   text an INSERT writes into a dynamic column goes through it
//!   ([`DynamicFunctions::parse_inserted_text`]). Clients read dynamic values as JSON text
//!   (`crate::wire`).

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, BinaryBuilder, StringArray};
use arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, ExprSchema, Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::planner::{
    ExprPlanner, PlannerResult, RawBinaryExpr, RawFieldAccessExpr,
};
use datafusion::logical_expr::{
    Cast, ColumnarValue, DmlStatement, Expr, ExprSchemable, GetFieldAccess, LogicalPlan,
    ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility, WriteOp, lit,
};
use datafusion::sql::sqlparser::ast::BinaryOperator;
use kyma_catalog::KymaType;
use kyma_table::dynamic;

/// Name of the path reader that returns CBOR.
pub const DYNAMIC_GET: &str = "dynamic_get";

/// Name of the function parsing JSON text into a dynamic value.
pub const PARSE_JSON: &str = "parse_json";

/// Reads a path out of a dynamic value as one kyma type (`Dynamic`: the CBOR found).
#[derive(Debug, PartialEq, Eq, Hash)]
struct DynamicRead {
    name: &'static str,
    ty: KymaType,
    signature: Signature,
}

impl ScalarUDFImpl for DynamicRead {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(kyma_table::types::arrow_type(self.ty))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let Some((value, steps)) = args.args.split_first() else {
            return exec_err!("{} needs a dynamic value", self.name);
        };
        let path = path_steps(self.name, steps)?;
        let path: Vec<&str> = path.iter().map(String::as_str).collect();
        let binary = binary_array(self.name, value, args.number_rows)?;
        Ok(ColumnarValue::Array(dynamic::extract_as(
            binary.as_binary::<i32>(),
            &path,
            self.ty,
        )))
    }
}

/// Renders dynamic values as JSON text.
#[derive(Debug, PartialEq, Eq, Hash)]
struct DynamicToJson {
    signature: Signature,
}

impl ScalarUDFImpl for DynamicToJson {
    fn name(&self) -> &str {
        "dynamic_to_json"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [value] = args.args.as_slice() else {
            return exec_err!("dynamic_to_json takes one dynamic value");
        };
        let binary = binary_array(self.name(), value, args.number_rows)?;
        let json: StringArray = binary
            .as_binary::<i32>()
            .iter()
            .map(|b| {
                b.and_then(dynamic::decode)
                    .map(|v| dynamic::to_json(&v).to_string())
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(json)))
    }
}

/// Parses JSON text into dynamic values; text that is not JSON is an error naming it.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ParseJson {
    signature: Signature,
}

/// The most characters of a bad value an error shows.
const SHOWN_CHARS: usize = 60;

impl ScalarUDFImpl for ParseJson {
    fn name(&self) -> &str {
        PARSE_JSON
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Binary)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [value] = args.args.as_slice() else {
            return exec_err!("parse_json takes one text value");
        };
        let text = arrow::compute::cast(&value.to_array(args.number_rows)?, &DataType::Utf8)?;
        let mut out = BinaryBuilder::with_capacity(text.len(), text.len() * 16);
        for value in text.as_string::<i32>() {
            let Some(value) = value else {
                out.append_null();
                continue;
            };
            match dynamic::from_json_text(value) {
                Ok(cbor) => out.append_value(cbor),
                Err(e) => {
                    let shown: String = value.chars().take(SHOWN_CHARS).collect();
                    let more = if shown.len() < value.len() { "…" } else { "" };
                    return exec_err!(
                        "text written into a dynamic value must be JSON (quote a plain string: '\"text\"'); `{shown}{more}` is not: {e}"
                    );
                }
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

fn path_steps(name: &str, steps: &[ColumnarValue]) -> Result<Vec<String>> {
    steps
        .iter()
        .map(|step| match step {
            ColumnarValue::Scalar(ScalarValue::Utf8(Some(s)))
            | ColumnarValue::Scalar(ScalarValue::LargeUtf8(Some(s)))
            | ColumnarValue::Scalar(ScalarValue::Utf8View(Some(s))) => Ok(s.clone()),
            ColumnarValue::Scalar(s) if s.data_type().is_integer() && !s.is_null() => {
                Ok(s.to_string())
            }
            _ => exec_err!("{name}: each path step must be a constant string or integer"),
        })
        .collect()
}

fn binary_array(name: &str, value: &ColumnarValue, rows: usize) -> Result<ArrayRef> {
    let array = value.to_array(rows)?;
    match array.data_type() {
        DataType::Binary => Ok(array),
        DataType::Null | DataType::LargeBinary | DataType::BinaryView => {
            Ok(arrow::compute::cast(&array, &DataType::Binary)?)
        }
        other => exec_err!("{name} reads dynamic (CBOR binary) values, not {other}"),
    }
}

/// The dynamic functions and the planner that turns bracket paths into them.
#[derive(Debug, Clone)]
pub struct DynamicFunctions {
    get: Arc<ScalarUDF>,
    long: Arc<ScalarUDF>,
    real: Arc<ScalarUDF>,
    string: Arc<ScalarUDF>,
    boolean: Arc<ScalarUDF>,
    timestamp: Arc<ScalarUDF>,
    to_json: Arc<ScalarUDF>,
    parse_json: Arc<ScalarUDF>,
}

impl Default for DynamicFunctions {
    fn default() -> Self {
        let read = |name, ty| {
            Arc::new(ScalarUDF::from(DynamicRead {
                name,
                ty,
                signature: Signature::variadic_any(Volatility::Immutable),
            }))
        };
        Self {
            get: read(DYNAMIC_GET, KymaType::Dynamic),
            long: read("dynamic_long", KymaType::Long),
            real: read("dynamic_real", KymaType::Real),
            string: read("dynamic_string", KymaType::String),
            boolean: read("dynamic_bool", KymaType::Bool),
            timestamp: read("dynamic_timestamp", KymaType::Timestamp),
            to_json: Arc::new(ScalarUDF::from(DynamicToJson {
                signature: Signature::any(1, Volatility::Immutable),
            })),
            parse_json: Arc::new(ScalarUDF::from(ParseJson {
                signature: Signature::string(1, Volatility::Immutable),
            })),
        }
    }
}

impl DynamicFunctions {
    /// Every function, to register with a session.
    pub fn udfs(&self) -> Vec<Arc<ScalarUDF>> {
        vec![
            self.get.clone(),
            self.long.clone(),
            self.real.clone(),
            self.string.clone(),
            self.boolean.clone(),
            self.timestamp.clone(),
            self.to_json.clone(),
            self.parse_json.clone(),
        ]
    }

    /// An INSERT's text written into dynamic columns is JSON: the planner casts it to
    /// Binary (kyma's dynamic storage type), which would store the text's bytes; each such
    /// cast becomes `parse_json`. Other plans are returned as they are.
    pub fn parse_inserted_text(&self, plan: LogicalPlan) -> Result<LogicalPlan> {
        let LogicalPlan::Dml(DmlStatement {
            op: WriteOp::Insert(_),
            ..
        }) = &plan
        else {
            return Ok(plan);
        };
        plan.transform_up(|node| {
            let schema = node.inputs().first().map_or_else(
                || Arc::new(DFSchema::empty()),
                |input| input.schema().clone(),
            );
            node.map_expressions(|expr| {
                expr.transform_up(|expr| match expr {
                    Expr::Cast(Cast { expr: text, field })
                        if field.data_type() == &DataType::Binary && is_text(&text, &schema) =>
                    {
                        Ok(Transformed::yes(self.parse_json.call(vec![*text])))
                    }
                    other => Ok(Transformed::no(other)),
                })
            })
        })
        .map(|transformed| transformed.data)
    }

    /// `dynamic_get(args)`, or the typed reader for `ty`.
    pub fn read(&self, ty: KymaType, args: Vec<Expr>) -> Expr {
        let udf = match ty {
            KymaType::Int | KymaType::Long => &self.long,
            KymaType::Real => &self.real,
            KymaType::String => &self.string,
            KymaType::Bool => &self.boolean,
            KymaType::Timestamp => &self.timestamp,
            KymaType::Dynamic | KymaType::Vector(_) => &self.get,
        };
        let read = udf.call(args);
        if ty == KymaType::Int {
            Expr::Cast(datafusion::logical_expr::Cast::new(
                Box::new(read),
                DataType::Int32,
            ))
        } else {
            read
        }
    }

    /// The typed reader a comparison against a value of `other` uses.
    fn reader_for(&self, other: &DataType) -> Option<&Arc<ScalarUDF>> {
        match other {
            t if t.is_numeric() => Some(&self.real),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Some(&self.string),
            DataType::Boolean => Some(&self.boolean),
            DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64 => {
                Some(&self.timestamp)
            }
            _ => None,
        }
    }
}

/// Plans bracket access into dynamic columns and typed comparisons against dynamic paths.
#[derive(Debug, Clone, Default)]
pub struct DynamicPlanner {
    functions: DynamicFunctions,
}

impl DynamicPlanner {
    /// A planner using `functions`.
    pub fn new(functions: DynamicFunctions) -> Self {
        Self { functions }
    }
}

fn is_text(expr: &Expr, schema: &DFSchema) -> bool {
    matches!(
        expr.get_type(schema as &dyn ExprSchema),
        Ok(DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
    )
}

fn is_dynamic(expr: &Expr, schema: &DFSchema) -> bool {
    matches!(
        expr.get_type(schema as &dyn ExprSchema),
        Ok(DataType::Binary | DataType::LargeBinary | DataType::BinaryView)
    )
}

/// The arguments of a `dynamic_get` call.
fn dynamic_get_args(expr: &Expr) -> Option<&Vec<Expr>> {
    match expr {
        Expr::ScalarFunction(ScalarFunction { func, args }) if func.name() == DYNAMIC_GET => {
            Some(args)
        }
        _ => None,
    }
}

impl ExprPlanner for DynamicPlanner {
    fn plan_field_access(
        &self,
        expr: RawFieldAccessExpr,
        schema: &DFSchema,
    ) -> Result<PlannerResult<RawFieldAccessExpr>> {
        if !is_dynamic(&expr.expr, schema) {
            return Ok(PlannerResult::Original(expr));
        }
        let step = match &expr.field_access {
            GetFieldAccess::NamedStructField { name } => lit(name.clone()),
            GetFieldAccess::ListIndex { key } => match key.as_ref() {
                Expr::Literal(..) => key.as_ref().clone(),
                _ => {
                    return plan_err!(
                        "a path into a dynamic value must be a constant, like attributes['service.name']"
                    );
                }
            },
            GetFieldAccess::ListRange { .. } => {
                return plan_err!(
                    "ranges ([a:b]) do not apply to dynamic values; use one key or index per bracket"
                );
            }
        };
        let mut args = dynamic_get_args(&expr.expr)
            .cloned()
            .unwrap_or_else(|| vec![expr.expr.clone()]);
        args.push(step);
        Ok(PlannerResult::Planned(self.functions.get.call(args)))
    }

    fn plan_binary_op(
        &self,
        expr: RawBinaryExpr,
        schema: &DFSchema,
    ) -> Result<PlannerResult<RawBinaryExpr>> {
        let comparison = matches!(
            expr.op,
            BinaryOperator::Eq
                | BinaryOperator::NotEq
                | BinaryOperator::Lt
                | BinaryOperator::LtEq
                | BinaryOperator::Gt
                | BinaryOperator::GtEq
        );
        if !comparison {
            return Ok(PlannerResult::Original(expr));
        }
        let retype = |side: &Expr, other: &Expr| -> Option<Expr> {
            let args = dynamic_get_args(side)?;
            if is_dynamic(other, schema) {
                return None;
            }
            let other_type = other.get_type(schema as &dyn ExprSchema).ok()?;
            Some(self.functions.reader_for(&other_type)?.call(args.clone()))
        };
        let RawBinaryExpr { op, left, right } = expr;
        let new_left = retype(&left, &right);
        let new_right = retype(&right, &left);
        Ok(PlannerResult::Original(RawBinaryExpr {
            op,
            left: new_left.unwrap_or(left),
            right: new_right.unwrap_or(right),
        }))
    }
}

//! Postgres behind the federation seam: a [`SqlFederation`] of the Postgres dialect and an
//! executor over the connector's pool. The only module of the query node that knows
//! Postgres.
//!
//! - **Tables**: every column of the tables in scope, from the source's catalog
//!   (`kyma_connectors::postgres::types::source_columns`), mapped to its kyma type. Each
//!   table is read through its *typed relation*, a `SELECT` that casts each column to its
//!   kyma type (`types::select_expr`): `uuid` as text, `numeric(10,2)` as double, `timestamp`
//!   as UTC. So the source filters, sorts and aggregates exactly the values kyma would see;
//!   Postgres inlines the subquery.
//! - **Semantics**: numbers, booleans and timestamps compare as in kyma. Text compares as in
//!   kyma only under a deterministic collation, and sorts as in kyma only under a byte-order
//!   one such as `C`. Dynamic and vector data are never compared at the source.
//! - **Capabilities** ([`PgCapabilities`]): comparisons and AND/OR, LIKE, COALESCE and
//!   `date_trunc` with a literal unit, widening integer casts, COUNT/SUM/AVG/MIN/MAX, inner
//!   and outer joins. LOWER/UPPER and ILIKE are not pushed: Postgres maps case by the
//!   collation's locale and DataFusion by Unicode. Text literals holding NUL are not (Postgres
//!   text cannot hold it).
//! - **Execution**: `kyma_connectors::postgres::query::copy_query` (prepare, then binary
//!   COPY), on pooled connections whose session is pinned to UTC, ISO dates, standard
//!   strings and read-only transactions.

use std::sync::Arc;

use arrow::datatypes::DataType;
use async_trait::async_trait;
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::logical_expr::expr::{Like, ScalarFunction};
use datafusion::logical_expr::{Expr, ExprSchemable, JoinType, Operator};
use datafusion::sql::sqlparser::dialect::{
    Dialect as ParserDialect, PostgreSqlDialect as PgParserDialect,
};
use datafusion::sql::unparser::dialect::{Dialect as UnparserDialect, PostgreSqlDialect};
use kyma_catalog::{ConnectorSpec, KymaType, SourceType};
use kyma_connectors::pool::{Pool, PoolLimits};
use kyma_connectors::postgres::types::{self, SourceColumn};
use kyma_connectors::postgres::{PgConnect, PgPool, query, quote_ident};
use kyma_connectors::{ConnectorError, SecretResolver};

use super::capabilities::{AggregateResult, Capabilities, FunctionResult, Semantics, shown};
use super::source::{FederatedColumn, FederatedSource, QueryOutput, RecordBatches, SourceIdentity};
use super::sql::{SqlColumn, SqlDialect, SqlExecutor, SqlFederation, SqlTable};

/// The federated source of Postgres connector `spec`; connects lazily.
pub fn source(spec: ConnectorSpec, secrets: SecretResolver) -> Arc<dyn FederatedSource> {
    let connect = PgConnect::new(spec.connection.clone(), secrets);
    let identity = connect
        .endpoint()
        .map(|e| SourceIdentity::new(SourceType::Postgres, e, spec.connection.tls));
    let pool = Pool::new(connect, spec.connection.pool_size, PoolLimits::default());
    Arc::new(SqlFederation::new(
        spec,
        identity,
        PgDialect,
        PgExecutor { pool },
    ))
}

/// Postgres SQL.
#[derive(Debug, Clone, Copy)]
pub struct PgDialect;

static UNPARSER: PostgreSqlDialect = PostgreSqlDialect {};
static PARSER: PgParserDialect = PgParserDialect {};

impl SqlDialect for PgDialect {
    fn unparser(&self) -> &dyn UnparserDialect {
        &UNPARSER
    }

    fn parser(&self) -> &dyn ParserDialect {
        &PARSER
    }

    fn quote_ident(&self, name: &str) -> String {
        quote_ident(name)
    }

    fn capabilities(&self) -> &dyn Capabilities {
        &PgCapabilities
    }
}

/// Reads Postgres' catalog and runs queries on the connector's pool.
#[derive(Debug)]
struct PgExecutor {
    pool: Arc<PgPool>,
}

#[async_trait]
impl SqlExecutor for PgExecutor {
    async fn discover(&self, spec: &ConnectorSpec) -> Result<Vec<SqlTable>, ConnectorError> {
        let client = self.pool.get().await?;
        let columns = types::source_columns(&client, &spec.scope.include_schemas).await?;
        drop(client);
        let placed = columns
            .into_iter()
            .map(|c| (c.schema.clone(), c.table.clone(), c));
        Ok(SqlTable::in_scope(spec, placed, typed_column))
    }

    fn execute(&self, sql: String, output: QueryOutput) -> RecordBatches {
        let (schema, batch_rows, received) = output.into_parts();
        query::copy_query(self.pool.clone(), sql, schema, batch_rows, received)
    }
}

/// A source column as kyma reads it: its kyma type (an unmapped type is logged), semantics
/// and typed expression.
fn typed_column(spec: &ConnectorSpec, column: &SourceColumn) -> SqlColumn {
    let mapped = types::kyma_type(&column.name, &column.pg_type, &spec.scope);
    if let Some(warning) = &mapped.warning {
        tracing::warn!(connector = %spec.name, table = %format!("{}.{}", column.schema, column.table), "{warning}");
    }
    SqlColumn {
        column: FederatedColumn {
            name: column.name.clone(),
            ty: mapped.ty,
            nullable: !column.not_null,
            semantics: column_semantics(column, mapped.ty),
        },
        select: types::select_expr(column, mapped.ty),
    }
}

/// What the source may compare or sort on a column read through its typed relation.
fn column_semantics(column: &SourceColumn, ty: KymaType) -> Semantics {
    match ty {
        KymaType::Int | KymaType::Long | KymaType::Real | KymaType::Bool | KymaType::Timestamp => {
            Semantics::COMPARABLE
        }
        KymaType::String => Semantics {
            eq: column.deterministic,
            order: column.deterministic && types::sorts_bytewise(&column.collation),
            collation: Some(column.collation.clone().into()),
            note: None,
        },
        KymaType::Dynamic | KymaType::Vector(_) => Semantics::OPAQUE,
    }
}

/// What Postgres computes exactly as DataFusion does (on sessions set up by the pool).
#[derive(Debug, Clone, Copy)]
pub struct PgCapabilities;

/// `date_trunc` units whose Postgres result equals DataFusion's on a UTC timestamp.
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

impl Capabilities for PgCapabilities {
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
                "operator `{other}` is not pushed (its overflow and rounding rules differ between Postgres and DataFusion)"
            )),
        }
    }

    fn literal(&self, value: &ScalarValue) -> Result<(), String> {
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
            | ScalarValue::TimestampMicrosecond(_, Some(_)) => Ok(()),
            ScalarValue::Float64(v) if v.is_none_or(|v| v.is_finite()) => Ok(()),
            // Postgres text cannot hold NUL.
            ScalarValue::Utf8(v) | ScalarValue::Utf8View(v) | ScalarValue::LargeUtf8(v)
                if v.as_deref().is_none_or(|s| !s.contains('\0')) =>
            {
                Ok(())
            }
            other => Err(format!(
                "a literal of type {} is not pushed",
                other.data_type()
            )),
        }
    }

    fn like(&self, like: &Like) -> Result<(), String> {
        if like.case_insensitive {
            return Err(
                "ILIKE is not pushed: Postgres folds case by the collation's locale, DataFusion by Unicode"
                    .into(),
            );
        }
        Ok(())
    }

    fn cast(&self, from: &DataType, to: &DataType) -> bool {
        matches!(
            (from, to),
            (DataType::Int32, DataType::Int64)
                | (DataType::Int32 | DataType::Int64, DataType::Float64)
        )
    }

    fn function(&self, call: &ScalarFunction, schema: &DFSchema) -> Result<FunctionResult, String> {
        match call.name() {
            "coalesce" => Ok(FunctionResult::LikeAllArguments),
            "date_trunc" => date_trunc(call, schema),
            name @ ("lower" | "upper") => Err(format!(
                "`{name}` is not pushed: Postgres maps case by the collation's locale, DataFusion by Unicode, and they differ on some characters"
            )),
            other => Err(format!(
                "`{other}` is not among the functions whose Postgres semantics match DataFusion's"
            )),
        }
    }

    fn aggregate(&self, name: &str, types: &[DataType]) -> Result<AggregateResult, String> {
        match name {
            "count" => Ok(AggregateResult::Comparable),
            "sum" | "avg" => match types
                .iter()
                .find(|ty| !matches!(ty, DataType::Int32 | DataType::Int64 | DataType::Float64))
            {
                Some(ty) => Err(format!("`{name}` of {ty} is not pushed")),
                None => Ok(AggregateResult::Comparable),
            },
            "min" | "max" => Ok(AggregateResult::Ordered),
            other => Err(format!(
                "aggregate `{other}` is not pushed: count, sum, avg, min and max are"
            )),
        }
    }

    fn join(&self, join_type: JoinType) -> bool {
        matches!(
            join_type,
            JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full
        )
    }
}

/// `date_trunc(unit, ts)`: pushed with a literal unit Postgres and DataFusion agree on, on a
/// timestamp with a time zone; the result compares as `ts`.
fn date_trunc(call: &ScalarFunction, schema: &DFSchema) -> Result<FunctionResult, String> {
    let [unit, value] = call.args.as_slice() else {
        return Err("date_trunc takes two arguments".into());
    };
    let unit_ok = matches!(
        unit,
        Expr::Literal(ScalarValue::Utf8(Some(u)), _)
            if DATE_TRUNC_UNITS.contains(&u.to_ascii_lowercase().as_str())
    );
    let is_timestamp = matches!(value.get_type(schema), Ok(DataType::Timestamp(_, Some(_))));
    if !unit_ok || !is_timestamp {
        return Err(format!(
            "`{}` is pushed only with a literal unit ({}) on a timestamp",
            shown(&Expr::ScalarFunction(call.clone())),
            DATE_TRUNC_UNITS.join(", ")
        ));
    }
    Ok(FunctionResult::LikeArgument(1))
}

#[cfg(test)]
mod tests {
    use arrow::datatypes::{Field, Schema, TimeUnit};
    use datafusion::functions::datetime::expr_fn::date_trunc;
    use datafusion::functions::string::expr_fn::lower;
    use datafusion::prelude::{cast, col, lit};
    use kyma_connectors::postgres::types::PgType;

    use super::*;
    use crate::federation::capabilities::check_filter;

    fn text_column(collation: &str, deterministic: bool) -> SourceColumn {
        SourceColumn {
            schema: "public".into(),
            table: "users".into(),
            name: "name".into(),
            pg_type: PgType {
                name: "text".into(),
                kind: 'b',
                category: 'S',
                typmod: -1,
            },
            not_null: false,
            collation: collation.into(),
            deterministic,
        }
    }

    /// `name` text under `collation`, `age` int, `score` double, `at` a UTC timestamp.
    fn check(filter: Expr, collation: &str) -> Result<(), String> {
        let schema = DFSchema::try_from(Schema::new(vec![
            Field::new("name", DataType::Utf8, true),
            Field::new("age", DataType::Int32, true),
            Field::new("score", DataType::Float64, true),
            Field::new(
                "at",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
        ]))
        .map_err(|e| e.to_string())?;
        let semantics = [
            column_semantics(&text_column(collation, true), KymaType::String),
            Semantics::COMPARABLE,
            Semantics::COMPARABLE,
            Semantics::COMPARABLE,
        ];
        check_filter(&filter, &schema, &semantics, &PgCapabilities)
    }

    #[test]
    fn text_compares_at_the_source_only_under_its_collation_rules() {
        let icu = column_semantics(&text_column("und-x-icu", true), KymaType::String);
        assert!(icu.eq && !icu.order, "ICU text: equality, not byte order");
        let c = column_semantics(&text_column("C", true), KymaType::String);
        assert!(c.eq && c.order, "C text: both");
        let nondeterministic = column_semantics(&text_column("ci", false), KymaType::String);
        assert!(!nondeterministic.eq && !nondeterministic.order);
        assert_eq!(
            column_semantics(&text_column("C", true), KymaType::Dynamic),
            Semantics::OPAQUE
        );
    }

    #[test]
    fn what_postgres_computes_as_datafusion_is_pushed() {
        let pushed = [
            col("name").eq(lit("bob")).and(col("age").lt(lit(30))),
            col("name").like(lit("a%")),
            col("name").in_list(vec![lit("a"), lit("b")], false),
            cast(col("age"), DataType::Float64).gt(lit(1.5)),
            date_trunc(lit("month"), col("at")).is_not_null(),
        ];
        for filter in pushed {
            assert_eq!(check(filter.clone(), "C"), Ok(()), "{filter}");
        }
    }

    #[test]
    fn what_postgres_computes_differently_is_not_pushed_and_says_why() {
        let refused = [
            (col("name").lt(lit("m")), "collation `und-x-icu`"),
            (lower(col("name")).eq(lit("bob")), "maps case"),
            (col("name").ilike(lit("a%")), "ILIKE"),
            ((col("age") + lit(1)).gt(lit(30)), "operator `+`"),
            (col("name").eq(lit("a\0b")), "literal"),
            (cast(col("score"), DataType::Int32).eq(lit(1)), "cast"),
            (
                date_trunc(lit("decade"), col("at")).is_not_null(),
                "literal unit",
            ),
        ];
        for (filter, reason) in refused {
            let error = check(filter.clone(), "und-x-icu").expect_err(&filter.to_string());
            assert!(error.contains(reason), "{filter}: {error}");
        }
    }
}

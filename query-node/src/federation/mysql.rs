//! MySQL and MariaDB behind the federation seam: a [`SqlFederation`] of the MySQL dialect and
//! an executor over the connector's pool. The only module of the query node that knows
//! MySQL.
//!
//! - **Tables**: every column of the tables in scope (`kyma_connectors::mysql::types::
//!   read_catalog`), read through its *typed relation* (`types::select_expr`): booleans as
//!   `x <> 0`, small decimals as doubles, binary data as base64, `time`/`year` as
//!   date-times. Databases are the catalog's schemas.
//! - **Semantics** ([`column_semantics`]): numbers, booleans and date-times compare as in
//!   kyma. Text compares (and sorts) as in kyma only under a binary collation without PAD
//!   SPACE (`types::compares_bytewise`): the server default `utf8mb4_general_ci` says
//!   `'a' = 'A'` and `'e' = 'é'`, and even `utf8mb4_bin` says `'a' = 'a '`. Enums never sort
//!   at the source (MySQL sorts them by declaration index); sets, decimals and unsigned
//!   bigints read as text, base64, WKT and dynamic values are never compared there.
//! - **Capabilities** ([`MyCapabilities`]): comparisons and AND/OR/NOT, IS NULL, IN, BETWEEN
//!   on operands of one type (MySQL compares `'abc' = 0` as numbers, and true); LIKE
//!   without a backslash in the pattern (the escape rules differ); COALESCE; integer casts
//!   that widen; COUNT, MIN/MAX, SUM of integers and doubles, AVG of double; inner and one-sided
//!   outer joins. Not pushed: arithmetic (`/` gives decimals and `x/0` NULL, `%` by zero
//!   NULL, overflow ERROR 1690), `||` (OR in MySQL), CONCAT (NULL-strict in MySQL),
//!   LOWER/UPPER/ILIKE, AVG of integers (a DECIMAL with four digits; DataFusion averages a
//!   double cast, which is pushed).
//! - **SQL**: DataFusion's MySQL unparser ([`MyUnparser`]) with timestamp literals as
//!   microsecond `DATETIME(6)` literals in UTC; ORDER BY spells out the NULL order
//!   (`x IS NULL, x`) since MySQL sorts NULLs first ascending and the unparser drops
//!   `NULLS FIRST/LAST` (see `sql::generate_sql`); an OFFSET always has a LIMIT.
//! - **Execution**: `kyma_connectors::mysql::query::run_query` (prepared statements, binary
//!   protocol), on pooled read-only sessions pinned to utf8mb4, UTC and a `sql_mode` with
//!   `NO_BACKSLASH_ESCAPES` (`kyma_connectors::mysql::SESSION_SETUP`).

use std::sync::Arc;

use arrow::datatypes::{DataType, TimeUnit};
use async_trait::async_trait;
use chrono::{DateTime, Datelike};
use datafusion::arrow::array::timezone::Tz;
use datafusion::common::{DFSchema, Result as DfResult, ScalarValue};
use datafusion::logical_expr::expr::{Like, ScalarFunction};
use datafusion::logical_expr::{Expr, JoinType, Operator};
use datafusion::sql::sqlparser::ast;
use datafusion::sql::sqlparser::dialect::{
    Dialect as ParserDialect, MySqlDialect as MyParserDialect,
};
use datafusion::sql::unparser::Unparser;
use datafusion::sql::unparser::dialect::{
    CharacterLengthStyle, DateFieldExtractStyle, Dialect as UnparserDialect, DistinctFromStyle,
    IntervalStyle, MySqlDialect,
};
use kyma_catalog::{ConnectorSpec, SourceType};
use kyma_connectors::mysql::types::{self, Reading, SourceColumn};
use kyma_connectors::mysql::{MyConnect, MyPool, query, quote_ident};
use kyma_connectors::{ConnectorError, SecretResolver};

use super::capabilities::{AggregateResult, Capabilities, FunctionResult, Semantics};
use super::source::{FederatedColumn, FederatedSource, QueryOutput, RecordBatches, SourceIdentity};
use super::sql::{SqlColumn, SqlDialect, SqlExecutor, SqlFederation, SqlTable};

/// The federated source of MySQL connector `spec`; connects lazily.
pub fn source(spec: ConnectorSpec, secrets: SecretResolver) -> Arc<dyn FederatedSource> {
    let connect = MyConnect::new(spec.connection.clone(), secrets.clone());
    let identity = connect
        .endpoint()
        .map(|e| SourceIdentity::new(SourceType::Mysql, e, spec.connection.tls));
    let pool = MyConnect::pool(spec.connection.clone(), secrets);
    Arc::new(SqlFederation::new(
        spec,
        identity,
        MyDialect,
        MyExecutor { pool },
    ))
}

/// MySQL SQL.
#[derive(Debug, Clone, Copy)]
pub struct MyDialect;

static UNPARSER: MyUnparser = MyUnparser;
static PARSER: MyParserDialect = MyParserDialect {};

impl SqlDialect for MyDialect {
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
        &MyCapabilities
    }

    fn offset_needs_limit(&self) -> bool {
        true
    }
}

/// DataFusion's [`MySqlDialect`], except that timestamp literals are written as MySQL reads
/// them exactly: `CAST('2024-01-02 03:04:05.123456' AS DATETIME(6))`, in UTC (DataFusion's
/// writes RFC 3339 with an offset, cast to a `DATETIME` that drops the fraction).
#[derive(Debug, Clone, Copy)]
pub struct MyUnparser;

static MYSQL: MySqlDialect = MySqlDialect {};

impl UnparserDialect for MyUnparser {
    fn identifier_quote_style(&self, identifier: &str) -> Option<char> {
        MYSQL.identifier_quote_style(identifier)
    }

    fn supports_nulls_first_in_sort(&self) -> bool {
        MYSQL.supports_nulls_first_in_sort()
    }

    fn interval_style(&self) -> IntervalStyle {
        MYSQL.interval_style()
    }

    fn utf8_cast_dtype(&self) -> ast::DataType {
        MYSQL.utf8_cast_dtype()
    }

    fn large_utf8_cast_dtype(&self) -> ast::DataType {
        MYSQL.large_utf8_cast_dtype()
    }

    fn date_field_extract_style(&self) -> DateFieldExtractStyle {
        MYSQL.date_field_extract_style()
    }

    fn distinct_from_style(&self) -> DistinctFromStyle {
        MYSQL.distinct_from_style()
    }

    fn character_length_style(&self) -> CharacterLengthStyle {
        MYSQL.character_length_style()
    }

    fn int64_cast_dtype(&self) -> ast::DataType {
        MYSQL.int64_cast_dtype()
    }

    fn int32_cast_dtype(&self) -> ast::DataType {
        MYSQL.int32_cast_dtype()
    }

    fn timestamp_cast_dtype(&self, _unit: &TimeUnit, _tz: &Option<Arc<str>>) -> ast::DataType {
        ast::DataType::Datetime(Some(6))
    }

    fn timestamp_with_tz_to_string(&self, dt: DateTime<Tz>, _unit: TimeUnit) -> String {
        dt.naive_utc().format("%Y-%m-%d %H:%M:%S%.6f").to_string()
    }

    fn requires_derived_table_alias(&self) -> bool {
        MYSQL.requires_derived_table_alias()
    }

    fn supports_qualify(&self) -> bool {
        MYSQL.supports_qualify()
    }

    fn scalar_function_to_sql_overrides(
        &self,
        unparser: &Unparser<'_>,
        func_name: &str,
        args: &[Expr],
    ) -> DfResult<Option<ast::Expr>> {
        MYSQL.scalar_function_to_sql_overrides(unparser, func_name, args)
    }
}

/// Reads MySQL's catalog and runs queries on the connector's pool.
#[derive(Debug)]
struct MyExecutor {
    pool: Arc<MyPool>,
}

#[async_trait]
impl SqlExecutor for MyExecutor {
    async fn discover(&self, spec: &ConnectorSpec) -> Result<Vec<SqlTable>, ConnectorError> {
        let mut conn = self.pool.get().await?;
        let catalog = types::read_catalog(&mut conn, &spec.scope.include_schemas).await?;
        drop(conn);
        let placed = catalog
            .columns
            .into_iter()
            .map(|c| (c.schema.clone(), c.table.clone(), c));
        Ok(SqlTable::in_scope(spec, placed, typed_column))
    }

    fn execute(&self, sql: String, output: QueryOutput) -> RecordBatches {
        let (schema, batch_rows, received) = output.into_parts();
        query::run_query(self.pool.clone(), sql, schema, batch_rows, received)
    }
}

/// A source column as kyma reads it: its kyma type (a lossy or missing mapping is logged),
/// semantics and typed expression.
fn typed_column(spec: &ConnectorSpec, column: &SourceColumn) -> SqlColumn {
    let mapped = types::reading(column, &spec.scope);
    if let Some(warning) = &mapped.warning {
        tracing::warn!(connector = %spec.name, table = %format!("{}.{}", column.schema, column.table), "{warning}");
    }
    SqlColumn {
        column: FederatedColumn {
            name: column.name.clone(),
            ty: mapped.reading.kyma_type(),
            nullable: !column.not_null,
            semantics: column_semantics(column, &mapped.reading),
        },
        select: types::select_expr(column, &mapped.reading),
    }
}

/// What the source may compare or sort on a column read through its typed relation.
fn column_semantics(column: &SourceColumn, reading: &Reading) -> Semantics {
    let opaque = |what: &str| Semantics {
        note: Some(what.into()),
        ..Semantics::OPAQUE
    };
    match reading {
        Reading::Int
        | Reading::Long
        | Reading::Real
        | Reading::Bool
        | Reading::Timestamp
        | Reading::Time
        | Reading::Year => Semantics::COMPARABLE,
        Reading::Text | Reading::Enum(_) => {
            let collation = column.collation.as_deref().unwrap_or("unknown");
            let bytewise = types::compares_bytewise(collation);
            let is_enum = matches!(reading, Reading::Enum(_));
            let mut note = format!(
                "text under collation `{collation}` ({})",
                collation_behaviour(collation)
            );
            if is_enum {
                note = format!(
                    "an enum under collation `{collation}` ({}; MySQL sorts enums by declaration index)",
                    collation_behaviour(collation)
                );
            }
            Semantics {
                eq: bytewise,
                order: bytewise && !is_enum,
                collation: Some(collation.into()),
                note: Some(note.into()),
            }
        }
        Reading::Set(_) => opaque("a set, which MySQL compares as a bitmask of its members"),
        Reading::UnsignedText => opaque("a bigint unsigned that kyma reads as text"),
        Reading::DecimalText => opaque("a decimal that kyma reads as text"),
        Reading::Bytes { .. } => opaque("binary data that kyma reads as base64"),
        Reading::Geometry => opaque("a spatial value that kyma reads as WKT"),
        Reading::Bits | Reading::Json | Reading::JsonOrInteger | Reading::Unmapped => {
            Semantics::OPAQUE
        }
    }
}

/// How text under `collation` compares, in words for the summary.
fn collation_behaviour(collation: &str) -> &'static str {
    let c = collation.to_ascii_lowercase();
    if types::compares_bytewise(&c) {
        "byte-wise, as kyma"
    } else if c.ends_with("_ci") {
        "case- and accent-insensitive: 'a' = 'A', 'e' = 'é'"
    } else if c.ends_with("_bin") {
        "PAD SPACE: trailing spaces are ignored, 'a' = 'a '"
    } else {
        "a linguistic order, not byte order"
    }
}

/// What MySQL computes exactly as DataFusion does (on sessions set up by the pool).
#[derive(Debug, Clone, Copy)]
pub struct MyCapabilities;

/// Type families MySQL compares as DataFusion does when both operands are in the same one.
#[derive(Debug, PartialEq, Eq)]
enum Family {
    Number,
    Text,
    Boolean,
    Timestamp,
    Other,
}

fn family(ty: &DataType) -> Family {
    match ty {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64
        | DataType::Float32
        | DataType::Float64 => Family::Number,
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => Family::Text,
        DataType::Boolean => Family::Boolean,
        DataType::Timestamp(_, _) => Family::Timestamp,
        _ => Family::Other,
    }
}

/// The longest double literal pushed, written out (MySQL's DECIMAL literals hold 65 digits,
/// 30 after the point).
const MAX_FLOAT_DIGITS: usize = 24;

/// The oldest and newest years a MySQL `DATETIME` holds.
const DATETIME_YEARS: std::ops::RangeInclusive<i32> = 1000..=9999;

impl Capabilities for MyCapabilities {
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
            Operator::Divide => Err(
                "operator `/` is not pushed: MySQL divides integers into a DECIMAL (5/2 = 2.5000, DataFusion 2) and x/0 is NULL there (DataFusion: an error, or infinity for doubles)"
                    .into(),
            ),
            Operator::Modulo => Err(
                "operator `%` is not pushed: x % 0 is NULL at MySQL and an error in DataFusion"
                    .into(),
            ),
            Operator::Plus | Operator::Minus | Operator::Multiply => Err(format!(
                "operator `{op}` is not pushed: MySQL fails with ERROR 1690 where 64-bit arithmetic overflows, and mixes in DECIMAL"
            )),
            Operator::StringConcat => Err(
                "operator `||` is not pushed: it means OR in MySQL (`'x' || 'y'` is 0)".into(),
            ),
            other => Err(format!(
                "operator `{other}` is not pushed (MySQL's semantics for it differ from DataFusion's)"
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
            | ScalarValue::TimestampMicrosecond(None, _) => Ok(()),
            ScalarValue::TimestampMicrosecond(Some(micros), _) => {
                match DateTime::from_timestamp_micros(*micros) {
                    Some(at) if DATETIME_YEARS.contains(&at.year()) => Ok(()),
                    _ => Err(format!(
                        "the timestamp literal {value} is outside MySQL's DATETIME range (years 1000 to 9999)"
                    )),
                }
            }
            // Written out in full (the unparser never uses an exponent), MySQL reads it as an
            // exact DECIMAL and compares it as the nearest double: only short ones.
            ScalarValue::Float64(v)
                if v.is_none_or(|v| v.is_finite() && v.to_string().len() <= MAX_FLOAT_DIGITS) =>
            {
                Ok(())
            }
            ScalarValue::Utf8(v) | ScalarValue::Utf8View(v) | ScalarValue::LargeUtf8(v)
                if v.as_deref().is_none_or(|s| !s.contains('\0')) =>
            {
                Ok(())
            }
            ScalarValue::TimestampNanosecond(..)
            | ScalarValue::TimestampMillisecond(..)
            | ScalarValue::TimestampSecond(..) => Err(format!(
                "a {} literal is not pushed: MySQL keeps microseconds, and kyma pushes timestamps only as microsecond literals",
                value.data_type()
            )),
            other => Err(format!(
                "a literal of type {} is not pushed",
                other.data_type()
            )),
        }
    }

    fn like(&self, like: &Like) -> Result<(), String> {
        if like.case_insensitive {
            return Err(
                "ILIKE is not pushed: MySQL has none, and folds case by the collation".into(),
            );
        }
        match like.pattern.as_ref() {
            Expr::Literal(
                ScalarValue::Utf8(Some(p))
                | ScalarValue::Utf8View(Some(p))
                | ScalarValue::LargeUtf8(Some(p)),
                _,
            ) if p.contains('\\') => Err(
                "LIKE with a backslash in the pattern is not pushed: MySQL's escape rules differ from DataFusion's"
                    .into(),
            ),
            Expr::Literal(..) => match like.escape_char {
                Some('\\') => Err("LIKE … ESCAPE '\\' is not pushed: MySQL's escape rules differ".into()),
                _ => Ok(()),
            },
            _ => Err("LIKE is pushed only with a literal pattern".into()),
        }
    }

    fn compare(&self, left: &DataType, right: &DataType) -> Result<(), String> {
        let (l, r) = (family(left), family(right));
        if l == r && l != Family::Other {
            return Ok(());
        }
        Err(format!(
            "MySQL compares {left} with {right} by its own conversions ('abc' = 0 is true there), so only operands of one type are pushed"
        ))
    }

    fn cast(&self, from: &DataType, to: &DataType) -> bool {
        matches!(
            (from, to),
            (DataType::Int32, DataType::Int64)
                | (DataType::Int32 | DataType::Int64, DataType::Float64)
        )
    }

    fn function(
        &self,
        call: &ScalarFunction,
        _schema: &DFSchema,
    ) -> Result<FunctionResult, String> {
        match call.name() {
            "coalesce" => Ok(FunctionResult::LikeAllArguments),
            name @ ("lower" | "upper") => Err(format!(
                "`{name}` is not pushed: MySQL maps case by the collation, DataFusion by Unicode"
            )),
            "concat" => Err(
                "`concat` is not pushed: MySQL's CONCAT is NULL when any argument is, DataFusion's skips NULLs"
                    .into(),
            ),
            other => Err(format!(
                "`{other}` is not among the functions whose MySQL semantics match DataFusion's"
            )),
        }
    }

    fn aggregate(&self, name: &str, types: &[DataType]) -> Result<AggregateResult, String> {
        let not_pushed = |why: &str| {
            let shown: Vec<String> = types.iter().map(ToString::to_string).collect();
            Err(format!(
                "`{name}` of {} is not pushed: {why}",
                shown.join(", ")
            ))
        };
        match (name, types) {
            ("count", _) => Ok(AggregateResult::Comparable),
            ("min" | "max", _) => Ok(AggregateResult::Ordered),
            // MySQL sums integers exactly in DECIMAL, read back as a long: the same answer
            // wherever DataFusion's 64-bit sum does not overflow (and an error, never a
            // wrapped value, where it would).
            (
                "sum",
                [
                    DataType::Int8
                    | DataType::Int16
                    | DataType::Int32
                    | DataType::Int64
                    | DataType::Float64,
                ],
            ) => Ok(AggregateResult::Comparable),
            ("avg", [DataType::Float64]) => Ok(AggregateResult::Comparable),
            ("avg", [DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64]) => {
                not_pushed(
                    "MySQL averages integers into a DECIMAL with four digits (avg(1, 2, 2) = 1.6667)",
                )
            }
            ("sum" | "avg", _) => not_pushed("its result type differs at MySQL"),
            (other, _) => Err(format!(
                "aggregate `{other}` is not pushed: count, sum, avg, min and max are"
            )),
        }
    }

    fn join(&self, join_type: JoinType) -> bool {
        // MySQL has no FULL JOIN.
        matches!(
            join_type,
            JoinType::Inner | JoinType::Left | JoinType::Right
        )
    }
}

#[cfg(test)]
mod tests {
    use arrow::datatypes::{Field, Schema};
    use datafusion::functions::string::expr_fn::{concat, lower};
    use datafusion::prelude::{cast, col, lit};

    use super::*;
    use crate::federation::capabilities::check_filter;

    fn column(data_type: &str, column_type: &str, collation: Option<&str>) -> SourceColumn {
        SourceColumn {
            schema: "shop".into(),
            table: "users".into(),
            name: "name".into(),
            data_type: data_type.into(),
            column_type: column_type.into(),
            precision: None,
            max_length: None,
            collation: collation.map(Into::into),
            not_null: false,
            json_checked: false,
            counter_fits_long: false,
            fills_existing_rows: false,
            in_primary_key: false,
        }
    }

    fn text(collation: &str) -> Semantics {
        column_semantics(
            &column("varchar", "varchar(40)", Some(collation)),
            &Reading::Text,
        )
    }

    /// `name` varchar under `collation`, `age` int, `score` double, `at` a UTC timestamp,
    /// `big` a bigint.
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
            Field::new("big", DataType::Int64, true),
        ]))
        .map_err(|e| e.to_string())?;
        let semantics = [
            text(collation),
            Semantics::COMPARABLE,
            Semantics::COMPARABLE,
            Semantics::COMPARABLE,
            Semantics::COMPARABLE,
        ];
        check_filter(&filter, &schema, &semantics, &MyCapabilities)
    }

    #[test]
    fn text_compares_at_the_source_only_under_a_binary_collation_without_pad_space() {
        for collation in ["utf8mb4_nopad_bin", "binary", "utf8mb4_0900_bin"] {
            let s = text(collation);
            assert!(s.eq && s.order, "{collation}");
        }
        for collation in ["utf8mb4_general_ci", "utf8mb4_bin", "utf8mb4_0900_as_cs"] {
            let s = text(collation);
            assert!(!s.eq && !s.order, "{collation}");
        }
        let status = column_semantics(
            &column("enum", "enum('new','paid')", Some("utf8mb4_nopad_bin")),
            &Reading::Enum(vec!["new".into(), "paid".into()]),
        );
        assert!(status.eq && !status.order, "enums sort by index");
        let unsigned = column_semantics(
            &column("bigint", "bigint(20) unsigned", None),
            &Reading::UnsignedText,
        );
        assert!(!unsigned.eq && !unsigned.order);
        for reading in [
            Reading::Int,
            Reading::Bool,
            Reading::Timestamp,
            Reading::Year,
        ] {
            assert_eq!(
                column_semantics(&column("int", "int(11)", None), &reading),
                Semantics::COMPARABLE
            );
        }
    }

    #[test]
    fn what_mysql_computes_as_datafusion_is_pushed() {
        let pushed = [
            col("name").eq(lit("bob")).and(col("age").lt(lit(30))),
            col("name").like(lit("a%")),
            col("name").in_list(vec![lit("a"), lit("b")], false),
            col("name").gt(lit("m")),
            cast(col("age"), DataType::Float64).gt(lit(1.5)),
            col("age").between(lit(1), lit(5)),
            col("at").gt(lit(ScalarValue::TimestampMicrosecond(
                Some(1_700_000_000_123_456),
                Some("UTC".into()),
            ))),
            col("big").is_null().or(col("score").lt_eq(lit(2.5))),
            col("score").gt(lit(-1234567.125)),
        ];
        for filter in pushed {
            assert_eq!(
                check(filter.clone(), "utf8mb4_nopad_bin"),
                Ok(()),
                "{filter}"
            );
        }
    }

    #[test]
    fn what_mysql_computes_differently_is_not_pushed_and_says_why() {
        let ci = "utf8mb4_general_ci";
        let refused = [
            (
                col("name").eq(lit("bob")),
                ci,
                "collation `utf8mb4_general_ci`",
            ),
            (col("name").eq(lit("bob")), "utf8mb4_bin", "PAD SPACE"),
            (
                col("name").like(lit("a%")),
                ci,
                "case- and accent-insensitive",
            ),
            (
                col("name").like(lit("a\\%")),
                "utf8mb4_nopad_bin",
                "backslash",
            ),
            (col("name").ilike(lit("a%")), "utf8mb4_nopad_bin", "ILIKE"),
            (
                lower(col("name")).eq(lit("bob")),
                "utf8mb4_nopad_bin",
                "`lower`",
            ),
            ((col("age") / lit(2)).eq(lit(1)), "utf8mb4_nopad_bin", "`/`"),
            ((col("age") % lit(2)).eq(lit(1)), "utf8mb4_nopad_bin", "`%`"),
            (
                (col("big") + lit(1)).gt(lit(0)),
                "utf8mb4_nopad_bin",
                "1690",
            ),
            (col("name").eq(lit(0)), "utf8mb4_nopad_bin", "'abc' = 0"),
            (
                concat(vec![col("name"), lit("!")]).eq(lit("a!")),
                "utf8mb4_nopad_bin",
                "CONCAT is NULL",
            ),
            (
                col("at").gt(lit(ScalarValue::TimestampNanosecond(
                    Some(1_700_000_000_123_456_789),
                    Some("UTC".into()),
                ))),
                "utf8mb4_nopad_bin",
                "microsecond",
            ),
            (
                cast(col("score"), DataType::Int32).eq(lit(1)),
                "utf8mb4_nopad_bin",
                "cast",
            ),
            (col("score").gt(lit(1e-300)), "utf8mb4_nopad_bin", "literal"),
            (col("score").gt(lit(1e300)), "utf8mb4_nopad_bin", "literal"),
        ];
        for (filter, collation, reason) in refused {
            let error = check(filter.clone(), collation).expect_err(&filter.to_string());
            assert!(error.contains(reason), "{filter}: {error}");
        }
    }

    #[test]
    fn aggregates_are_pushed_only_where_mysql_returns_the_same_type() {
        let ok = |name: &str, ty: DataType| MyCapabilities.aggregate(name, &[ty]).is_ok();
        assert!(ok("count", DataType::Utf8));
        assert!(ok("sum", DataType::Int32));
        assert!(ok("sum", DataType::Float64));
        assert!(ok("avg", DataType::Float64));
        assert!(ok("sum", DataType::Int64));
        assert!(!ok("sum", DataType::Utf8));
        assert!(!ok("avg", DataType::Int32));
        assert!(!MyCapabilities.join(JoinType::Full));
    }

    #[test]
    fn timestamp_literals_are_microsecond_datetimes_in_utc() {
        let dt = DateTime::from_timestamp_micros(1_700_000_000_000_001)
            .expect("in range")
            .with_timezone(&"+02:00".parse::<Tz>().expect("tz"));
        assert_eq!(
            MyUnparser.timestamp_with_tz_to_string(dt, TimeUnit::Microsecond),
            "2023-11-14 22:13:20.000001"
        );
        let unparser = Unparser::new(&MyUnparser);
        let sql = unparser
            .expr_to_sql(&lit(ScalarValue::TimestampMicrosecond(
                Some(1_700_000_000_000_001),
                Some("UTC".into()),
            )))
            .expect("unparses")
            .to_string();
        assert_eq!(sql, "CAST('2023-11-14 22:13:20.000001' AS DATETIME(6))");
    }
}

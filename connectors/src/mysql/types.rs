//! MySQL / MariaDB column types → kyma types (seeds/schema-mappings.txt, "MySQL → kyma"), and
//! the catalog queries behind them. Federation and sync both use this one mapping.
//!
//! A column's [`Reading`] says how its values become kyma values, whoever reads them: the
//! snapshot and federation (the binary protocol, through the *typed relation* of
//! [`select_expr`]) and the binlog decoder. It is decided from `information_schema`, because
//! the binlog alone cannot tell `tinyint(1)` from `tinyint`, nor MariaDB's JSON (a `longtext`
//! with a `json_valid` check) from text.
//!
//! | MySQL | kyma | note |
//! |---|---|---|
//! | `tinyint(1)`, `bit(1)` | bool | nonzero is true |
//! | tinyint, smallint, mediumint, int | int | `int unsigned` → long |
//! | bigint | long | `bigint unsigned` → long when it is an auto-increment key whose counter fits; else string, with a warning |
//! | decimal(p, s) | real for p ≤ 15, else string | `numeric_mode = "string"` forces string |
//! | float, double | real | |
//! | bit(n > 1) | dynamic | an unsigned integer |
//! | date, datetime, timestamp, time, year | timestamp (UTC) | time: since 1970-01-01; year: its 1 January; zero dates are NULL |
//! | char, varchar, text, enum, set | string | set: comma-joined |
//! | binary, varbinary, blob | string (base64) | `binary(n)` keeps its zero padding |
//! | json (MariaDB: `longtext` + `json_valid`) | dynamic | |
//! | geometry, point, … | string (WKT) | |
//!
//! Anything else is read as dynamic (its text as a JSON string) with a warning.

use std::collections::HashSet;

use kyma_catalog::{KymaType, ScopeSpec};
use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use super::{quote_ident, quote_literal, refused};
use crate::error::ConnectorError;

/// Largest `decimal` precision that still maps to `real` (beyond it a double loses digits).
const MAX_REAL_PRECISION: u64 = 15;

/// Schemas that are the server's own, never a source's tables.
const SYSTEM_SCHEMAS: &[&str] = &["mysql", "information_schema", "performance_schema", "sys"];

/// How a column's values become kyma values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading {
    /// A signed or small unsigned integer → int.
    Int,
    /// An integer that needs 64 bits → long.
    Long,
    /// A `bigint unsigned` whose values may exceed the long range → its decimal text.
    UnsignedText,
    /// float, double, or a decimal of small precision → real.
    Real,
    /// A decimal → its text with all its scale digits.
    DecimalText,
    /// `tinyint(1)`, `bit(1)` → bool (nonzero is true).
    Bool,
    /// Text, read as UTF-8.
    Text,
    /// An enum → its label (the binlog sends the 1-based index into these).
    Enum(Vec<String>),
    /// A set → its labels comma-joined (the binlog sends a bitmask over these).
    Set(Vec<String>),
    /// Binary data → base64; `binary(n)` values are zero-padded to `n` bytes.
    Bytes {
        /// The width of a `binary(n)` column.
        padded_to: Option<usize>,
    },
    /// `bit(n)` for n > 1 → dynamic unsigned integer.
    Bits,
    /// JSON → dynamic.
    Json,
    /// A query result that is dynamic: JSON text, or an integer (`bit(n)`).
    JsonOrInteger,
    /// A spatial value (SRID + WKB) → WKT.
    Geometry,
    /// date, datetime, timestamp → timestamp.
    Timestamp,
    /// time → timestamp since the epoch.
    Time,
    /// year → timestamp of its 1 January.
    Year,
    /// A type kyma does not map → dynamic (its text as a JSON string).
    Unmapped,
}

impl Reading {
    /// How a query result of kyma type `ty` is read: the values of [`select_expr`], and of
    /// expressions over them (aggregates, `COALESCE`), in the binary protocol.
    pub fn of_result(ty: KymaType) -> Self {
        match ty {
            KymaType::Int => Reading::Int,
            KymaType::Long => Reading::Long,
            KymaType::Real => Reading::Real,
            KymaType::Bool => Reading::Bool,
            KymaType::String => Reading::Text,
            KymaType::Timestamp => Reading::Timestamp,
            KymaType::Dynamic | KymaType::Vector(_) => Reading::JsonOrInteger,
        }
    }

    /// The kyma type of the values.
    pub fn kyma_type(&self) -> KymaType {
        match self {
            Reading::Int => KymaType::Int,
            Reading::Long => KymaType::Long,
            Reading::Real => KymaType::Real,
            Reading::Bool => KymaType::Bool,
            Reading::UnsignedText
            | Reading::DecimalText
            | Reading::Text
            | Reading::Enum(_)
            | Reading::Set(_)
            | Reading::Bytes { .. }
            | Reading::Geometry => KymaType::String,
            Reading::Timestamp | Reading::Time | Reading::Year => KymaType::Timestamp,
            Reading::Bits | Reading::Json | Reading::JsonOrInteger | Reading::Unmapped => {
                KymaType::Dynamic
            }
        }
    }
}

/// A column's reading and, when the mapping is lossy or missing, a warning for the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    /// How its values are read.
    pub reading: Reading,
    /// What the operator should know about it.
    pub warning: Option<String>,
}

impl Mapped {
    fn to(reading: Reading) -> Self {
        Self {
            reading,
            warning: None,
        }
    }
}

/// One column of a source table, as `information_schema` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceColumn {
    /// Its table's database.
    pub schema: String,
    /// Its table.
    pub table: String,
    /// The column name.
    pub name: String,
    /// `DATA_TYPE`, lower case (`int`, `varchar`, `longtext`).
    pub data_type: String,
    /// `COLUMN_TYPE`, lower case (`tinyint(1)`, `bigint(20) unsigned`, `enum('a','b')`).
    pub column_type: String,
    /// `NUMERIC_PRECISION` (decimal digits, or bits for `bit`).
    pub precision: Option<u64>,
    /// `CHARACTER_MAXIMUM_LENGTH` (bytes for binary types).
    pub max_length: Option<u64>,
    /// `COLLATION_NAME` for text columns.
    pub collation: Option<String>,
    /// `NOT NULL` at the source.
    pub not_null: bool,
    /// MariaDB: a `json_valid` check makes this `longtext` JSON.
    pub json_checked: bool,
    /// An `auto_increment` column whose table's counter fits a long (`bigint unsigned`).
    pub counter_fits_long: bool,
    /// Whether adding the column gives existing rows a value (a default other than NULL, or
    /// a generated expression) — which the binlog does not carry as row changes.
    pub fills_existing_rows: bool,
    /// Part of the table's primary key.
    pub in_primary_key: bool,
}

/// The reading of `column` under the connector's `scope`.
pub fn reading(column: &SourceColumn, scope: &ScopeSpec) -> Mapped {
    let unsigned = column.column_type.contains("unsigned");
    let reading = match column.data_type.as_str() {
        "tinyint" if column.column_type.starts_with("tinyint(1)") => Reading::Bool,
        "tinyint" | "smallint" | "mediumint" => Reading::Int,
        "int" | "integer" if unsigned => Reading::Long,
        "int" | "integer" => Reading::Int,
        "bigint" if unsigned && !column.counter_fits_long => {
            return Mapped {
                reading: Reading::UnsignedText,
                warning: Some(format!(
                    "column `{}` is bigint unsigned, whose values can exceed the long range; it is read as string",
                    column.name
                )),
            };
        }
        "bigint" => Reading::Long,
        "decimal" | "numeric" => {
            let forced_string = scope.numeric_mode.as_deref() == Some("string");
            match column.precision {
                Some(p) if p <= MAX_REAL_PRECISION && !forced_string => Reading::Real,
                _ => Reading::DecimalText,
            }
        }
        "float" | "double" | "real" => Reading::Real,
        "bit" if column.precision == Some(1) => Reading::Bool,
        "bit" => Reading::Bits,
        "date" | "datetime" | "timestamp" => Reading::Timestamp,
        "time" => Reading::Time,
        "year" => Reading::Year,
        "longtext" if column.json_checked => Reading::Json,
        "json" => Reading::Json,
        "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" => Reading::Text,
        "enum" => Reading::Enum(labels(&column.column_type)),
        "set" => Reading::Set(labels(&column.column_type)),
        "binary" => Reading::Bytes {
            padded_to: column.max_length.and_then(|n| usize::try_from(n).ok()),
        },
        "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => {
            Reading::Bytes { padded_to: None }
        }
        "geometry" | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring"
        | "multipolygon" | "geometrycollection" | "geomcollection" => Reading::Geometry,
        other => {
            return Mapped {
                reading: Reading::Unmapped,
                warning: Some(format!(
                    "column `{}` has type {other}, which kyma does not map; it is read as dynamic",
                    column.name
                )),
            };
        }
    };
    Mapped::to(reading)
}

/// The labels of an `enum('a','b')` or `set(…)` column type, in declaration order (quotes
/// inside labels are doubled in `COLUMN_TYPE`).
pub fn labels(column_type: &str) -> Vec<String> {
    let Some(open) = column_type.find('(') else {
        return Vec::new();
    };
    let mut labels = Vec::new();
    let mut chars = column_type[open + 1..].chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\'' {
            continue;
        }
        let mut label = String::new();
        while let Some(c) = chars.next() {
            if c == '\'' {
                if chars.peek() == Some(&'\'') {
                    chars.next();
                    label.push('\'');
                    continue;
                }
                break;
            }
            label.push(c);
        }
        labels.push(label);
    }
    labels
}

/// The SQL federation reads `column` through (its *typed relation*): an expression whose
/// value the source compares as kyma compares the column's kyma value, and whose binary
/// protocol value [`Reading::of_result`] of the kyma type reads — booleans as `0`/`1`
/// (`2` is true), small decimals as doubles, binary data as base64, spatial data as WKT,
/// `time` and `year` as date-times, JSON and unmapped values as JSON text.
pub fn select_expr(column: &SourceColumn, reading: &Reading) -> String {
    let name = quote_ident(&column.name);
    match reading {
        Reading::Bool => format!("({name} <> 0)"),
        Reading::Real if matches!(column.data_type.as_str(), "decimal" | "numeric") => {
            format!("CAST({name} AS DOUBLE)")
        }
        Reading::UnsignedText | Reading::DecimalText => format!("CAST({name} AS CHAR)"),
        Reading::Bytes { .. } => format!("REPLACE(TO_BASE64({name}), CHAR(10), '')"),
        Reading::Bits => format!("CAST({name} AS UNSIGNED)"),
        Reading::Geometry => format!("ST_AsText({name})"),
        Reading::Time => format!("ADDTIME(CAST('1970-01-01' AS DATETIME(6)), {name})"),
        Reading::Year => format!("MAKEDATE(NULLIF({name}, 0), 1)"),
        Reading::Unmapped => format!("JSON_QUOTE(CAST({name} AS CHAR))"),
        Reading::Int
        | Reading::Long
        | Reading::Real
        | Reading::Text
        | Reading::Enum(_)
        | Reading::Set(_)
        | Reading::Json
        | Reading::JsonOrInteger
        | Reading::Timestamp => name,
    }
}

/// Whether text under `collation` compares and sorts byte-wise, as kyma does: a binary
/// collation *without* PAD SPACE (`'a' = 'a '` is true under `utf8mb4_bin`).
pub fn compares_bytewise(collation: &str) -> bool {
    let c = collation.to_ascii_lowercase();
    c == "binary" || c == "utf8mb4_0900_bin" || (c.contains("_nopad_") && c.ends_with("_bin"))
}

/// The tables in scope and their columns and keys.
#[derive(Debug, Clone, Default)]
pub struct SourceCatalog {
    /// Every column of every table in `schemas`, in table and column order.
    pub columns: Vec<SourceColumn>,
    /// Primary key columns per table, in key order.
    pub keys: Vec<((String, String), Vec<String>)>,
    /// Estimated rows per table.
    pub estimated_rows: Vec<((String, String), u64)>,
}

/// Reads the columns, keys and row estimates of every table and view in `schemas` (every
/// non-system database when empty).
pub async fn read_catalog(
    conn: &mut Conn,
    schemas: &[String],
) -> Result<SourceCatalog, ConnectorError> {
    let in_scope = schema_filter(schemas);
    let rows: Vec<mysql_async::Row> = conn
        .query(format!(
            "SELECT c.TABLE_SCHEMA, c.TABLE_NAME, c.COLUMN_NAME, LOWER(c.DATA_TYPE), \
             LOWER(c.COLUMN_TYPE), c.NUMERIC_PRECISION, c.CHARACTER_MAXIMUM_LENGTH, \
             c.COLLATION_NAME, c.IS_NULLABLE, c.EXTRA, t.AUTO_INCREMENT, c.COLUMN_DEFAULT \
             FROM information_schema.COLUMNS c JOIN information_schema.TABLES t \
             ON t.TABLE_SCHEMA = c.TABLE_SCHEMA AND t.TABLE_NAME = c.TABLE_NAME \
             WHERE {in_scope} ORDER BY c.TABLE_SCHEMA, c.TABLE_NAME, c.ORDINAL_POSITION"
        ))
        .await
        .map_err(refused)?;
    let json = json_checked_columns(conn, &in_scope).await?;
    let mut columns = Vec::with_capacity(rows.len());
    for row in rows {
        columns.push(column(row, &json)?);
    }
    let keys = primary_keys(conn, &in_scope).await?;
    let key_columns: HashSet<(&str, &str, &str)> = keys
        .iter()
        .flat_map(|((schema, table), key)| {
            key.iter()
                .map(move |c| (schema.as_str(), table.as_str(), c.as_str()))
        })
        .collect();
    for column in &mut columns {
        column.in_primary_key =
            key_columns.contains(&(&column.schema, &column.table, &column.name));
    }
    let estimated_rows: Vec<(String, String, Option<u64>)> = conn
        .query(format!(
            "SELECT c.TABLE_SCHEMA, c.TABLE_NAME, c.TABLE_ROWS FROM information_schema.TABLES c \
             WHERE {in_scope}"
        ))
        .await
        .map_err(refused)?;
    Ok(SourceCatalog {
        columns,
        keys,
        estimated_rows: estimated_rows
            .into_iter()
            .map(|(s, t, n)| ((s, t), n.unwrap_or(0)))
            .collect(),
    })
}

/// The `WHERE` condition on `c.TABLE_SCHEMA` for `schemas`.
fn schema_filter(schemas: &[String]) -> String {
    let system: Vec<String> = SYSTEM_SCHEMAS.iter().map(|s| quote_literal(s)).collect();
    let mut filter = format!("c.TABLE_SCHEMA NOT IN ({})", system.join(", "));
    if !schemas.is_empty() {
        let wanted: Vec<String> = schemas.iter().map(|s| quote_literal(s)).collect();
        filter.push_str(&format!(" AND c.TABLE_SCHEMA IN ({})", wanted.join(", ")));
    }
    filter
}

fn column(
    row: mysql_async::Row,
    json: &HashSet<(String, String, String)>,
) -> Result<SourceColumn, ConnectorError> {
    type Fields = (
        String,
        String,
        String,
        String,
        String,
        Option<u64>,
        Option<u64>,
        Option<String>,
        String,
        String,
        Option<u64>,
        Option<String>,
    );
    let (
        schema,
        table,
        name,
        data_type,
        column_type,
        precision,
        max_length,
        collation,
        nullable,
        extra,
        counter,
        default,
    ): Fields = mysql_async::from_row_opt(row).map_err(|e| {
        ConnectorError::Source(format!(
            "information_schema.COLUMNS in an unexpected form: {e}"
        ))
    })?;
    let json_checked = json.contains(&(schema.clone(), table.clone(), name.clone()));
    let extra = extra.to_ascii_lowercase();
    let counter_fits_long =
        extra.contains("auto_increment") && counter.is_none_or(|c| i64::try_from(c).is_ok());
    // MariaDB shows "no default" on a nullable column as the text NULL, MySQL as SQL NULL.
    let fills_existing_rows = extra.contains("generated")
        || default.is_some_and(|d| !d.eq_ignore_ascii_case("NULL"))
        || nullable != "YES";
    Ok(SourceColumn {
        schema,
        table,
        name,
        data_type,
        column_type,
        precision,
        max_length,
        collation,
        not_null: nullable == "NO",
        json_checked,
        counter_fits_long,
        fills_existing_rows,
        in_primary_key: false,
    })
}

/// MariaDB's JSON columns: `longtext` with a `json_valid(`col`)` check. MySQL has a real
/// JSON type and no `TABLE_NAME` in `CHECK_CONSTRAINTS`, so there the query fails and
/// nothing is JSON-checked.
async fn json_checked_columns(
    conn: &mut Conn,
    in_scope: &str,
) -> Result<HashSet<(String, String, String)>, ConnectorError> {
    let rows: Result<Vec<(String, String, String)>, _> = conn
        .query(format!(
            "SELECT c.CONSTRAINT_SCHEMA, c.TABLE_NAME, c.CHECK_CLAUSE \
             FROM information_schema.CHECK_CONSTRAINTS c \
             WHERE {} AND c.CHECK_CLAUSE LIKE 'json_valid(%'",
            in_scope.replace("c.TABLE_SCHEMA", "c.CONSTRAINT_SCHEMA")
        ))
        .await;
    let rows = match rows {
        Ok(rows) => rows,
        // ER_BAD_FIELD_ERROR: MySQL's CHECK_CONSTRAINTS has no TABLE_NAME.
        Err(mysql_async::Error::Server(e)) if e.code == 1054 => return Ok(HashSet::new()),
        Err(e) => return Err(refused(e)),
    };
    Ok(rows
        .into_iter()
        .filter_map(|(schema, table, clause)| {
            let column = clause
                .strip_prefix("json_valid(`")?
                .strip_suffix("`)")?
                .replace("``", "`");
            Some((schema, table, column))
        })
        .collect())
}

async fn primary_keys(
    conn: &mut Conn,
    in_scope: &str,
) -> Result<Vec<((String, String), Vec<String>)>, ConnectorError> {
    let rows: Vec<(String, String, String)> = conn
        .query(format!(
            "SELECT c.TABLE_SCHEMA, c.TABLE_NAME, c.COLUMN_NAME \
             FROM information_schema.KEY_COLUMN_USAGE c \
             WHERE {in_scope} AND c.CONSTRAINT_NAME = 'PRIMARY' \
             ORDER BY c.TABLE_SCHEMA, c.TABLE_NAME, c.ORDINAL_POSITION"
        ))
        .await
        .map_err(refused)?;
    let mut keys: Vec<((String, String), Vec<String>)> = Vec::new();
    for (schema, table, column) in rows {
        match keys.last_mut() {
            Some((id, key)) if id.0 == schema && id.1 == table => key.push(column),
            _ => keys.push(((schema, table), vec![column])),
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(data_type: &str, column_type: &str) -> SourceColumn {
        SourceColumn {
            schema: "shop".into(),
            table: "t".into(),
            name: "c".into(),
            data_type: data_type.into(),
            column_type: column_type.into(),
            precision: None,
            max_length: None,
            collation: None,
            not_null: false,
            json_checked: false,
            counter_fits_long: false,
            fills_existing_rows: false,
            in_primary_key: false,
        }
    }

    #[test]
    fn integer_widths_and_flags_pick_the_kyma_type() {
        let scope = ScopeSpec::default();
        let of = |dt: &str, ct: &str| reading(&column(dt, ct), &scope).reading.kyma_type();
        assert_eq!(of("tinyint", "tinyint(1)"), KymaType::Bool);
        assert_eq!(of("tinyint", "tinyint(4)"), KymaType::Int);
        assert_eq!(of("int", "int(10) unsigned"), KymaType::Long);
        assert_eq!(of("mediumint", "mediumint(8) unsigned"), KymaType::Int);
        let unsigned = reading(&column("bigint", "bigint(20) unsigned"), &scope);
        assert_eq!(unsigned.reading, Reading::UnsignedText);
        assert!(unsigned.warning.is_some_and(|w| w.contains("long range")));
        let mut id = column("bigint", "bigint(20) unsigned");
        id.counter_fits_long = true;
        assert_eq!(reading(&id, &scope).reading, Reading::Long);
    }

    #[test]
    fn decimals_follow_precision_and_numeric_mode() {
        let mut price = column("decimal", "decimal(10,2)");
        price.precision = Some(10);
        assert_eq!(
            reading(&price, &ScopeSpec::default()).reading,
            Reading::Real
        );
        let forced = ScopeSpec {
            numeric_mode: Some("string".into()),
            ..ScopeSpec::default()
        };
        assert_eq!(reading(&price, &forced).reading, Reading::DecimalText);
        price.precision = Some(20);
        assert_eq!(
            reading(&price, &ScopeSpec::default()).reading,
            Reading::DecimalText
        );
    }

    #[test]
    fn enum_and_set_labels_are_parsed_with_doubled_quotes() {
        assert_eq!(labels("enum('a','it''s','x,y')"), ["a", "it's", "x,y"]);
        assert_eq!(labels("set('r','w')"), ["r", "w"]);
    }

    #[test]
    fn only_binary_collations_without_pad_space_compare_as_kyma() {
        assert!(compares_bytewise("utf8mb4_nopad_bin"));
        assert!(compares_bytewise("utf8mb4_0900_bin"));
        assert!(compares_bytewise("binary"));
        assert!(!compares_bytewise("utf8mb4_bin"), "PAD SPACE");
        assert!(!compares_bytewise("utf8mb4_general_ci"));
        assert!(!compares_bytewise("utf8mb4_0900_as_cs"));
    }
}

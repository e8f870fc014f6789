//! Postgres column types → kyma types (seeds/schema-mappings.txt, "Postgres → kyma"), and the
//! catalog query that reads a source's columns for it. Federation and sync both use this
//! one mapping.
//!
//! Domains unwrap to their base type. A type the table does not cover lands in `dynamic` with
//! a warning for the connector status.

use kyma_catalog::{KymaType, ScopeSpec};

use crate::error::ConnectorError;

/// Largest `numeric` precision that still maps to `real` (beyond it a double loses digits).
const MAX_REAL_PRECISION: i32 = 15;

/// A source column's type, as `pg_catalog` describes it (domains already unwrapped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgType {
    /// `pg_type.typname` of the (base) type, e.g. `int4`, `_text`, `vector`.
    pub name: String,
    /// `pg_type.typtype`: `b` base, `e` enum, `r` range, `m` multirange, `c` composite, `p`
    /// pseudo.
    pub kind: char,
    /// `pg_type.typcategory`: `A` marks arrays.
    pub category: char,
    /// `pg_attribute.atttypmod` (-1 when unconstrained).
    pub typmod: i32,
}

/// What a source column becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    /// The kyma type.
    pub ty: KymaType,
    /// Set when the type is not in the mapping table and fell back to `dynamic`.
    pub warning: Option<String>,
}

impl Mapped {
    fn to(ty: KymaType) -> Self {
        Self { ty, warning: None }
    }
}

/// The kyma type of a Postgres column of type `pg` under the connector's `scope`.
pub fn kyma_type(column: &str, pg: &PgType, scope: &ScopeSpec) -> Mapped {
    if pg.category == 'A' {
        return Mapped::to(KymaType::Dynamic);
    }
    match pg.kind {
        'e' => return Mapped::to(KymaType::String),
        'r' | 'm' => return Mapped::to(KymaType::Dynamic),
        _ => {}
    }
    let ty = match pg.name.as_str() {
        "int2" | "int4" => KymaType::Int,
        "int8" | "oid" => KymaType::Long,
        "float4" | "float8" => KymaType::Real,
        "numeric" => {
            let forced_string = scope.numeric_mode.as_deref() == Some("string");
            // typmod = ((precision << 16) | scale) + 4; -1 means unconstrained (any precision).
            let precision = (pg.typmod >= 4).then(|| ((pg.typmod - 4) >> 16) & 0xffff);
            match precision {
                Some(p) if p <= MAX_REAL_PRECISION && !forced_string => KymaType::Real,
                _ => KymaType::String,
            }
        }
        "bool" => KymaType::Bool,
        "text" | "varchar" | "bpchar" | "char" | "name" | "uuid" | "bytea" | "inet" | "cidr"
        | "macaddr" | "macaddr8" | "citext" | "xml" => KymaType::String,
        "timestamp" | "timestamptz" | "date" | "time" | "timetz" => KymaType::Timestamp,
        "json" | "jsonb" | "hstore" => KymaType::Dynamic,
        "geometry" | "geography" if scope.geometry_mode.as_deref() == Some("wkt") => {
            KymaType::String
        }
        "vector" if pg.typmod > 0 => KymaType::Vector(pg.typmod as u32),
        other => {
            return Mapped {
                ty: KymaType::Dynamic,
                warning: Some(format!(
                    "column `{column}` has type {other}, which kyma does not map; it is read as dynamic"
                )),
            };
        }
    };
    Mapped::to(ty)
}

/// One column of a source table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceColumn {
    /// Schema of its table.
    pub schema: String,
    /// Its table.
    pub table: String,
    /// The column name.
    pub name: String,
    /// Its type.
    pub pg_type: PgType,
    /// `NOT NULL` at the source.
    pub not_null: bool,
    /// The collation its text form compares under: the column's own for text types, the
    /// database default for the rest (what `::text` of it gets).
    pub collation: String,
    /// Whether that collation is deterministic (equal only when byte-wise equal).
    pub deterministic: bool,
}

/// Whether text under `collation` sorts in byte order, as kyma's strings do.
pub fn sorts_bytewise(collation: &str) -> bool {
    matches!(
        collation,
        "C" | "POSIX" | "ucs_basic" | "C.UTF-8" | "C.utf8" | "pg_c_utf8"
    )
}

/// The SQL that reads column `column` as its kyma type `ty`: federation and the snapshot
/// select through it, so the source compares, sorts and returns exactly what kyma holds
/// (e.g. `uuid` as its text, `numeric(10,2)` as a double, `timestamp` as UTC).
pub fn select_expr(column: &SourceColumn, ty: KymaType) -> String {
    let name = super::quote_ident(&column.name);
    match ty {
        KymaType::Int => format!("{name}::int4"),
        KymaType::Long => format!("{name}::int8"),
        KymaType::Real => format!("{name}::float8"),
        KymaType::Bool => format!("{name}::bool"),
        KymaType::String if matches!(column.pg_type.name.as_str(), "geometry" | "geography") => {
            format!("ST_AsText({name})")
        }
        KymaType::String => format!("{name}::text"),
        KymaType::Timestamp if matches!(column.pg_type.name.as_str(), "time" | "timetz") => {
            format!("('1970-01-01'::date + {name})::timestamptz")
        }
        KymaType::Timestamp => format!("{name}::timestamptz"),
        KymaType::Dynamic => format!("to_jsonb({name})"),
        KymaType::Vector(_) => format!("{name}::real[]"),
    }
}

/// What a snapshot copies of `column` read as `ty`: [`select_expr`], except that a `numeric`
/// read as `real` is sent as `numeric` and its digits parsed in kyma (as the stream parses
/// its text, with the same correctly rounded conversion), which spares the source the cast
/// on every row.
pub fn copy_expr(column: &SourceColumn, ty: KymaType) -> String {
    if ty == KymaType::Real && column.pg_type.name == "numeric" {
        format!("{}::numeric", super::quote_ident(&column.name))
    } else {
        select_expr(column, ty)
    }
}

/// Every column of every table, view and foreign table in `schemas` (all non-system schemas
/// when empty), in table and column order.
pub async fn source_columns(
    client: &tokio_postgres::Client,
    schemas: &[String],
) -> Result<Vec<SourceColumn>, ConnectorError> {
    const QUERY: &str = "
        SELECT n.nspname, c.relname, a.attname,
               COALESCE(bt.typname, t.typname)::text,
               COALESCE(bt.typtype, t.typtype)::text,
               COALESCE(bt.typcategory, t.typcategory)::text,
               CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END,
               a.attnotnull,
               COALESCE(NULLIF(co.collname, 'default'), d.datcollate)::text,
               COALESCE(co.collisdeterministic, true)
          FROM pg_catalog.pg_attribute a
          JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
          LEFT JOIN pg_catalog.pg_type bt ON t.typtype = 'd' AND bt.oid = t.typbasetype
          LEFT JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation
          JOIN pg_catalog.pg_database d ON d.datname = current_database()
         WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
           AND a.attnum > 0 AND NOT a.attisdropped
           AND n.nspname NOT IN ('pg_catalog', 'information_schema')
           AND n.nspname NOT LIKE 'pg_toast%'
           AND (cardinality($1::text[]) = 0 OR n.nspname = ANY($1::text[]))
         ORDER BY n.nspname, c.relname, a.attnum";
    let rows = client
        .query(QUERY, &[&schemas])
        .await
        .map_err(|e| ConnectorError::Unreachable {
            field: "connection.url".into(),
            reason: format!("reading the source's columns failed: {e}"),
        })?;
    rows.iter()
        .map(|row| {
            Ok(SourceColumn {
                schema: row.try_get(0).map_err(unreadable)?,
                table: row.try_get(1).map_err(unreadable)?,
                name: row.try_get(2).map_err(unreadable)?,
                pg_type: pg_type(row, 3)?,
                not_null: row.try_get(7).map_err(unreadable)?,
                collation: row.try_get(8).map_err(unreadable)?,
                deterministic: row.try_get(9).map_err(unreadable)?,
            })
        })
        .collect()
}

/// The type with OID `oid` and modifier `typmod` (a domain unwrapped to its base type), as a
/// replication stream's relation message names it.
pub async fn type_of_oid(
    client: &tokio_postgres::Client,
    oid: u32,
    typmod: i32,
) -> Result<PgType, ConnectorError> {
    const QUERY: &str = "
        SELECT COALESCE(bt.typname, t.typname)::text,
               COALESCE(bt.typtype, t.typtype)::text,
               COALESCE(bt.typcategory, t.typcategory)::text,
               CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE $2 END
          FROM pg_catalog.pg_type t
          LEFT JOIN pg_catalog.pg_type bt ON t.typtype = 'd' AND bt.oid = t.typbasetype
         WHERE t.oid = $1";
    let row = client
        .query_one(QUERY, &[&oid, &typmod])
        .await
        .map_err(|e| crate::postgres::sync::classify("reading a column type", &e))?;
    pg_type(&row, 0)
}

/// The [`PgType`] in columns `at..at + 4` of `row` (name, kind, category, modifier).
fn pg_type(row: &tokio_postgres::Row, at: usize) -> Result<PgType, ConnectorError> {
    let letter = |i: usize| -> Result<char, ConnectorError> {
        let text: String = row.try_get(at + i).map_err(unreadable)?;
        Ok(text.chars().next().unwrap_or(' '))
    };
    Ok(PgType {
        name: row.try_get(at).map_err(unreadable)?,
        kind: letter(1)?,
        category: letter(2)?,
        typmod: row.try_get(at + 3).map_err(unreadable)?,
    })
}

fn unreadable(e: tokio_postgres::Error) -> ConnectorError {
    ConnectorError::Source(format!(
        "the source's catalog answered in an unexpected form: {e}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(name: &str, typmod: i32) -> PgType {
        PgType {
            name: name.into(),
            kind: 'b',
            category: 'N',
            typmod,
        }
    }

    #[test]
    fn numeric_maps_by_precision_and_numeric_mode() {
        let scope = ScopeSpec::default();
        let numeric = |p: i32, s: i32| base("numeric", ((p << 16) | s) + 4);
        assert_eq!(kyma_type("n", &numeric(15, 2), &scope).ty, KymaType::Real);
        assert_eq!(kyma_type("n", &numeric(16, 2), &scope).ty, KymaType::String);
        assert_eq!(
            kyma_type("n", &base("numeric", -1), &scope).ty,
            KymaType::String
        );
        let forced = ScopeSpec {
            numeric_mode: Some("string".into()),
            ..ScopeSpec::default()
        };
        assert_eq!(
            kyma_type("n", &numeric(10, 0), &forced).ty,
            KymaType::String
        );
    }

    #[test]
    fn pgvector_geometry_and_unknown_types() {
        let scope = ScopeSpec::default();
        assert_eq!(
            kyma_type("v", &base("vector", 3), &scope).ty,
            KymaType::Vector(3)
        );
        let geometry = kyma_type("g", &base("geometry", -1), &scope);
        assert_eq!(geometry.ty, KymaType::Dynamic, "WKT only when opted in");
        assert!(geometry.warning.is_some());
        let wkt = ScopeSpec {
            geometry_mode: Some("wkt".into()),
            ..ScopeSpec::default()
        };
        assert_eq!(
            kyma_type("g", &base("geometry", -1), &wkt).ty,
            KymaType::String
        );
        let money = kyma_type("m", &base("money", -1), &scope);
        assert_eq!(money.ty, KymaType::Dynamic);
        assert!(
            money
                .warning
                .as_deref()
                .is_some_and(|w| w.contains("money")),
            "{money:?}"
        );
    }
}

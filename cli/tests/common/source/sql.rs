//! The suite's operations as SQL, for every SQL source: the statements are the same, a
//! [`Spelling`] says what differs (quoting, timestamp literals, selecting the first rows).

use super::{Op, Select, Set, Table, Value};

/// How a SQL source spells what the suite's statements need.
pub trait Spelling {
    /// `name` as an identifier.
    fn ident(name: &str) -> String;

    /// A timestamp `seconds` after the Unix epoch, UTC.
    fn timestamp(seconds: i64) -> String;

    /// What selects the first `limit` rows, in key order, whose `column` is `value`, in an
    /// UPDATE or DELETE: the whole clause from `WHERE` on.
    fn first(table: Table, column: &str, value: i64, limit: u32) -> String;
}

/// The SQL of `op`.
pub fn statement<S: Spelling>(op: &Op) -> String {
    match op {
        Op::Insert { table, rows } => {
            let rows: Vec<String> = rows
                .iter()
                .map(|row| {
                    let values: Vec<String> = row.iter().map(literal::<S>).collect();
                    format!("({})", values.join(", "))
                })
                .collect();
            format!(
                "INSERT INTO {} VALUES {}",
                S::ident(table.name()),
                rows.join(", ")
            )
        }
        Op::Update { table, rows, set } => {
            let set: Vec<String> = set
                .iter()
                .map(|(column, set)| {
                    let name = S::ident(column);
                    let value = match set {
                        Set::To(value) => literal::<S>(value),
                        Set::Add(n) => format!("{name} + ({n})"),
                        Set::Flip => format!("NOT COALESCE({name}, FALSE)"),
                    };
                    format!("{name} = {value}")
                })
                .collect();
            format!(
                "UPDATE {} SET {} {}",
                S::ident(table.name()),
                set.join(", "),
                selection::<S>(*table, rows)
            )
        }
        Op::Delete { table, rows } => format!(
            "DELETE FROM {} {}",
            S::ident(table.name()),
            selection::<S>(*table, rows)
        ),
    }
}

/// The clause, from `WHERE` on, that selects `rows` of `table`.
fn selection<S: Spelling>(table: Table, rows: &Select) -> String {
    let list = |values: &[i64]| {
        let values: Vec<String> = values.iter().map(i64::to_string).collect();
        values.join(", ")
    };
    match rows {
        Select::Key(values) => {
            assert_eq!(values.len(), table.key().len(), "a key of {table:?}");
            let parts: Vec<String> = table
                .key()
                .iter()
                .zip(values)
                .map(|(column, value)| format!("{} = {value}", S::ident(column)))
                .collect();
            format!("WHERE {}", parts.join(" AND "))
        }
        Select::In(_, values) if values.is_empty() => "WHERE FALSE".to_owned(),
        Select::In(column, values) => format!("WHERE {} IN ({})", S::ident(column), list(values)),
        Select::Modulo(column, modulus, rest) => {
            format!("WHERE {} % {modulus} = {rest}", S::ident(column))
        }
        Select::First {
            column,
            value,
            limit,
        } => S::first(table, column, *value, *limit),
    }
}

/// `value` as a literal.
pub fn literal<S: Spelling>(value: &Value) -> String {
    match value {
        Value::Null => "NULL".to_owned(),
        Value::Int(n) => n.to_string(),
        Value::Bool(b) => if *b { "TRUE" } else { "FALSE" }.to_owned(),
        Value::Text(text) => format!("'{}'", text.replace('\'', "''")),
        Value::Decimal(hundredths) => {
            let sign = if *hundredths < 0 { "-" } else { "" };
            let abs = hundredths.unsigned_abs();
            format!("{sign}{}.{:02}", abs / 100, abs % 100)
        }
        Value::Timestamp(seconds) => S::timestamp(*seconds),
    }
}

/// The key columns of `table` as spelled identifiers, comma-separated.
pub fn key_list<S: Spelling>(table: Table) -> String {
    let key: Vec<String> = table.key().iter().map(|k| S::ident(k)).collect();
    key.join(", ")
}

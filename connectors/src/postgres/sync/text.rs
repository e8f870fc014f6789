//! pgoutput's text values → kyma values.
//!
//! The replication stream carries each value in its type's text output, under the session
//! settings the replication connection pins (TimeZone UTC, DateStyle ISO, extra_float_digits
//! 3: see `setup::replication_conninfo`). Every conversion here yields exactly what the
//! snapshot reads through [`crate::postgres::types::copy_expr`] for the same value, so a
//! row has one form whether it arrived by snapshot or by stream:
//!
//! - `float4` is parsed as a float and widened (as `::float8` does), not re-read as a double;
//! - `timestamp` is UTC, `timestamptz` honours its offset, `date` is midnight UTC and
//!   `time`/`timetz` fall on 1970-01-01;
//! - `json`/`jsonb` become CBOR through the same JSON → CBOR mapping the snapshot uses;
//!   arrays become the JSON `to_jsonb` gives (numbers and booleans typed, the rest strings);
//!   any other type without a mapping becomes its text as a JSON string, as `to_jsonb` does.

use kyma_catalog::KymaType;
use kyma_table::KymaValue;

use crate::postgres::types::PgType;

/// How one column's text is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextFormat {
    /// `int2`, `int4`.
    Int,
    /// `int8`, `oid`.
    Long,
    /// `float8`, `numeric`.
    Double,
    /// `float4` (widened to a double).
    Float,
    /// `bool` (`t` / `f`).
    Bool,
    /// Any text form kept as it is.
    Text,
    /// `timestamptz`.
    TimestampTz,
    /// `timestamp` (read as UTC).
    Timestamp,
    /// `date` (midnight UTC).
    Date,
    /// `time` (on 1970-01-01 UTC).
    Time,
    /// `timetz` (on 1970-01-01, at its offset).
    TimeTz,
    /// `json`, `jsonb`.
    Json,
    /// An array whose elements are numbers.
    NumberArray,
    /// An array of booleans.
    BoolArray,
    /// An array of JSON documents.
    JsonArray,
    /// Any other array (elements as strings).
    TextArray,
    /// Text of a type without a mapping, as a JSON string.
    JsonString,
    /// pgvector's `[1,2,3]`.
    Vector(u32),
}

impl TextFormat {
    /// The format of a column of `pg` type stored as `ty`.
    pub fn of(pg: &PgType, ty: KymaType) -> Self {
        let name = pg.name.as_str();
        match ty {
            KymaType::Int => TextFormat::Int,
            KymaType::Long => TextFormat::Long,
            KymaType::Real if name == "float4" => TextFormat::Float,
            KymaType::Real => TextFormat::Double,
            KymaType::Bool => TextFormat::Bool,
            KymaType::String => TextFormat::Text,
            KymaType::Timestamp => match name {
                "timestamptz" => TextFormat::TimestampTz,
                "date" => TextFormat::Date,
                "time" => TextFormat::Time,
                "timetz" => TextFormat::TimeTz,
                _ => TextFormat::Timestamp,
            },
            KymaType::Vector(n) => TextFormat::Vector(n),
            KymaType::Dynamic if pg.category == 'A' => {
                match name.strip_prefix('_').unwrap_or(name) {
                    "int2" | "int4" | "int8" | "oid" | "float4" | "float8" | "numeric" => {
                        TextFormat::NumberArray
                    }
                    "bool" => TextFormat::BoolArray,
                    "json" | "jsonb" => TextFormat::JsonArray,
                    _ => TextFormat::TextArray,
                }
            }
            KymaType::Dynamic if matches!(name, "json" | "jsonb") => TextFormat::Json,
            KymaType::Dynamic => TextFormat::JsonString,
        }
    }
}

fn utf8(text: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(text).map_err(|_| "not UTF-8".to_owned())
}

/// The kyma value of `text`, a column of kyma type `ty` read as `format`.
pub fn parse_text(format: TextFormat, ty: KymaType, text: &[u8]) -> Result<KymaValue, String> {
    let s = utf8(text)?;
    let bad = |e: &dyn std::fmt::Display| format!("`{s}`: {e}");
    let value = match ty {
        KymaType::Int => KymaValue::Int(s.parse().map_err(|e| bad(&e))?),
        KymaType::Long => KymaValue::Long(s.parse().map_err(|e| bad(&e))?),
        KymaType::Real if format == TextFormat::Float => {
            KymaValue::Real(f64::from(parse_float::<f32>(s).map_err(|e| bad(&e))?))
        }
        KymaType::Real => KymaValue::Real(parse_float::<f64>(s).map_err(|e| bad(&e))?),
        KymaType::Bool => KymaValue::Bool(match s {
            "t" => true,
            "f" => false,
            _ => return Err(format!("`{s}` is not t or f")),
        }),
        KymaType::String => KymaValue::String(s.to_owned()),
        KymaType::Timestamp => KymaValue::Timestamp(parse_timestamp(s, format)?),
        KymaType::Dynamic => {
            let json = dynamic_json(s, format)?;
            KymaValue::Dynamic(kyma_table::dynamic::encode(
                &kyma_table::dynamic::from_json(&json),
            ))
        }
        KymaType::Vector(n) => {
            let inner = s
                .strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'))
                .ok_or_else(|| format!("`{s}` is not a vector"))?;
            let values: Vec<f32> = inner
                .split(',')
                .map(|v| v.trim().parse::<f32>().map_err(|e| bad(&e)))
                .collect::<Result<_, _>>()?;
            if values.len() != n as usize {
                return Err(format!(
                    "a vector of {} dimensions where the column has {n}",
                    values.len()
                ));
            }
            KymaValue::Vector(values)
        }
    };
    Ok(value)
}

/// Postgres spells the non-finite floats `NaN`, `Infinity` and `-Infinity`.
fn parse_float<F: std::str::FromStr>(s: &str) -> Result<F, F::Err> {
    match s {
        "Infinity" => "inf".parse(),
        "-Infinity" => "-inf".parse(),
        other => other.parse(),
    }
}

/// The JSON of a dynamic value's text (see the module docs).
fn dynamic_json(s: &str, format: TextFormat) -> Result<serde_json::Value, String> {
    match format {
        TextFormat::Json => serde_json::from_str(s).map_err(|e| format!("not JSON: {e}")),
        TextFormat::NumberArray
        | TextFormat::BoolArray
        | TextFormat::JsonArray
        | TextFormat::TextArray => ArrayParser::new(s, format).parse(),
        _ => Ok(serde_json::Value::String(s.to_owned())),
    }
}

/// Microseconds since the epoch of a date/time text in Postgres' ISO output.
fn parse_timestamp(s: &str, format: TextFormat) -> Result<i64, String> {
    let bad = || format!("`{s}` is not an ISO date/time");
    let (date, rest) = match format {
        TextFormat::Time | TextFormat::TimeTz => (
            chrono::NaiveDate::from_ymd_opt(1970, 1, 1).ok_or_else(bad)?,
            s,
        ),
        _ => {
            let (date, rest) = s.split_once(' ').unwrap_or((s, ""));
            let mut parts = date.rsplitn(3, '-');
            let (d, m, y) = (parts.next(), parts.next(), parts.next());
            let (Some(d), Some(m), Some(y)) = (d, m, y) else {
                return Err(bad());
            };
            let year: i32 = y.parse().map_err(|_| bad())?;
            let date = chrono::NaiveDate::from_ymd_opt(
                year,
                m.parse().map_err(|_| bad())?,
                d.parse().map_err(|_| bad())?,
            )
            .ok_or_else(bad)?;
            (date, rest)
        }
    };
    if rest.ends_with(" BC") {
        return Err(format!("`{s}` is before the common era"));
    }
    let days = i64::from((date - chrono::NaiveDate::default()).num_days() as i32);
    let mut micros = days * 86_400_000_000;
    if rest.is_empty() {
        return Ok(micros);
    }
    // HH:MM:SS[.ffffff][±HH[:MM[:SS]]]
    let offset_at = rest.find(['+', '-']);
    let (clock, offset) = match offset_at {
        Some(i) => (&rest[..i], Some(&rest[i..])),
        None => (rest, None),
    };
    let mut fields = clock.split(':');
    let hours: i64 = fields.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    let minutes: i64 = fields.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    let seconds = fields.next().ok_or_else(bad)?;
    let (whole, fraction) = seconds.split_once('.').unwrap_or((seconds, ""));
    let whole: i64 = whole.parse().map_err(|_| bad())?;
    let mut frac_micros: i64 = 0;
    for (i, digit) in fraction.bytes().take(6).enumerate() {
        if !digit.is_ascii_digit() {
            return Err(bad());
        }
        frac_micros += i64::from(digit - b'0') * 10_i64.pow(5 - i as u32);
    }
    micros += ((hours * 60 + minutes) * 60 + whole) * 1_000_000 + frac_micros;
    if let Some(offset) = offset {
        let sign = if offset.starts_with('-') { -1 } else { 1 };
        let mut seconds = 0;
        for (i, part) in offset[1..].split(':').enumerate() {
            let value: i64 = part.parse().map_err(|_| bad())?;
            seconds += value * [3600, 60, 1].get(i).copied().ok_or_else(bad)?;
        }
        micros -= sign * seconds * 1_000_000;
    }
    Ok(micros)
}

/// Parses Postgres' array output (`{1,2,NULL}`, `{{a,"b c"},{d,e}}`, `[0:1]={1,2}`) into
/// the JSON `to_jsonb` gives for it.
struct ArrayParser<'a> {
    bytes: &'a [u8],
    at: usize,
    format: TextFormat,
}

impl<'a> ArrayParser<'a> {
    fn new(s: &'a str, format: TextFormat) -> Self {
        // A lower bound other than 1 is written as a `[l:u]=` prefix; to_jsonb ignores it.
        let s = match (s.starts_with('['), s.find('=')) {
            (true, Some(i)) => &s[i + 1..],
            _ => s,
        };
        Self {
            bytes: s.as_bytes(),
            at: 0,
            format,
        }
    }

    fn parse(mut self) -> Result<serde_json::Value, String> {
        let value = self.array()?;
        if self.at != self.bytes.len() {
            return Err("trailing text after an array".into());
        }
        Ok(value)
    }

    fn array(&mut self) -> Result<serde_json::Value, String> {
        if self.bytes.get(self.at) != Some(&b'{') {
            return Err("an array must start with `{`".into());
        }
        self.at += 1;
        let mut items = Vec::new();
        if self.bytes.get(self.at) == Some(&b'}') {
            self.at += 1;
            return Ok(serde_json::Value::Array(items));
        }
        loop {
            let item = match self.bytes.get(self.at) {
                Some(b'{') => self.array()?,
                Some(b'"') => {
                    let text = self.quoted()?;
                    self.element(&text, true)?
                }
                Some(_) => {
                    let start = self.at;
                    while self
                        .bytes
                        .get(self.at)
                        .is_some_and(|b| !matches!(b, b',' | b'}'))
                    {
                        self.at += 1;
                    }
                    let text = String::from_utf8_lossy(&self.bytes[start..self.at]).into_owned();
                    self.element(&text, false)?
                }
                None => return Err("an array ends early".into()),
            };
            items.push(item);
            match self.bytes.get(self.at) {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    return Ok(serde_json::Value::Array(items));
                }
                _ => return Err("an array element is not followed by `,` or `}`".into()),
            }
        }
    }

    fn quoted(&mut self) -> Result<String, String> {
        self.at += 1;
        let mut out = Vec::new();
        loop {
            match self.bytes.get(self.at) {
                Some(b'\\') => {
                    out.push(*self.bytes.get(self.at + 1).ok_or("an array ends early")?);
                    self.at += 2;
                }
                Some(b'"') => {
                    self.at += 1;
                    return String::from_utf8(out).map_err(|_| "not UTF-8".into());
                }
                Some(b) => {
                    out.push(*b);
                    self.at += 1;
                }
                None => return Err("an array ends early".into()),
            }
        }
    }

    fn element(&self, text: &str, quoted: bool) -> Result<serde_json::Value, String> {
        use serde_json::Value as J;
        if !quoted && text == "NULL" {
            return Ok(J::Null);
        }
        Ok(match self.format {
            TextFormat::NumberArray => serde_json::from_str::<serde_json::Number>(text)
                .map_or_else(|_| J::String(text.to_owned()), J::Number),
            TextFormat::BoolArray => J::Bool(text == "t"),
            TextFormat::JsonArray => {
                serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?
            }
            _ => J::String(text.to_owned()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_timestamps_read_as_utc_micros() {
        let ts = |s, f| parse_timestamp(s, f).expect(s);
        assert_eq!(ts("1970-01-01 00:00:01", TextFormat::Timestamp), 1_000_000);
        assert_eq!(
            ts("2000-01-01 00:00:00.5+01", TextFormat::TimestampTz),
            946_684_800_000_000 - 3_600_000_000 + 500_000
        );
        assert_eq!(ts("1970-01-02", TextFormat::Date), 86_400_000_000);
        assert_eq!(ts("00:00:02.000001", TextFormat::Time), 2_000_001);
        assert_eq!(ts("01:00:00-02:30", TextFormat::TimeTz), 12_600_000_000);
        assert!(parse_timestamp("0044-03-15 BC", TextFormat::Date).is_err());
    }

    #[test]
    fn arrays_read_as_to_jsonb_writes_them() {
        let json = |s, f| dynamic_json(s, f).expect(s);
        assert_eq!(
            json("{1,2.50,NULL}", TextFormat::NumberArray),
            serde_json::json!([1, 2.50, null])
        );
        assert_eq!(
            json(r#"{{a,"b \"c\""},{"NULL",d}}"#, TextFormat::TextArray),
            serde_json::json!([["a", "b \"c\""], ["NULL", "d"]])
        );
        assert_eq!(
            json("[0:1]={t,f}", TextFormat::BoolArray),
            serde_json::json!([true, false])
        );
        assert_eq!(json("{}", TextFormat::TextArray), serde_json::json!([]));
    }

    #[test]
    fn float4_widens_like_a_cast() {
        let value = parse_text(TextFormat::Float, KymaType::Real, b"0.1").expect("float");
        assert_eq!(value, KymaValue::Real(f64::from(0.1_f32)));
    }
}

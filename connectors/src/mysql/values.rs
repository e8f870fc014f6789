//! MySQL values → kyma values: the one conversion federation, the snapshot and the binlog
//! decoder share, so that a row reads the same whichever way it came.
//!
//! Inputs are the driver's [`Value`]s as the *binary* protocol gives them (the snapshot and
//! federation use prepared statements); the binlog decoder turns the few encodings that are
//! its own (enum indexes, set bitmasks, `TIMESTAMP` seconds, trimmed `binary(n)`) into the
//! same form first. The mapping is [`super::types`]'.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::NaiveDate;
use kyma_table::KymaValue;
use mysql_common::Value;

use super::types::Reading;

const MICROS_PER_SECOND: i64 = 1_000_000;

/// The kyma value of `value` read as `reading` (`None` for NULL and for MySQL's zero
/// dates); `Err` says why it cannot be read.
pub fn kyma_value(reading: &Reading, value: Value) -> Result<Option<KymaValue>, String> {
    if value == Value::NULL {
        return Ok(None);
    }
    let converted = match reading {
        Reading::Int => KymaValue::Int(
            i32::try_from(integer(&value)?).map_err(|_| format!("{value:?} is not an int"))?,
        ),
        Reading::Long => {
            let n = integer(&value)?;
            KymaValue::Long(i64::try_from(n).map_err(|_| {
                format!("{n} exceeds the long range; set scope.numeric_mode or resync")
            })?)
        }
        Reading::UnsignedText => KymaValue::String(integer(&value)?.to_string()),
        Reading::Real => KymaValue::Real(real(&value)?),
        Reading::Bool => KymaValue::Bool(match &value {
            Value::Bytes(bits) => bits.iter().any(|b| *b != 0),
            other => integer(other)? != 0,
        }),
        Reading::DecimalText | Reading::Text | Reading::Enum(_) | Reading::Set(_) => {
            KymaValue::String(text(value)?)
        }
        Reading::Bytes { padded_to } => {
            let mut bytes = raw(value)?;
            if let Some(width) = padded_to {
                bytes.resize(bytes.len().max(*width), 0);
            }
            KymaValue::String(BASE64.encode(bytes))
        }
        Reading::Bits => {
            let bytes = raw(value)?;
            let number = bytes.iter().fold(0u64, |n, b| (n << 8) | u64::from(*b));
            KymaValue::Dynamic(kyma_table::dynamic::encode(&ciborium::Value::Integer(
                number.into(),
            )))
        }
        Reading::JsonOrInteger if !matches!(value, Value::Bytes(_)) => {
            KymaValue::Dynamic(kyma_table::dynamic::encode(&ciborium::Value::Integer(
                u64::try_from(integer(&value)?)
                    .map_err(|_| format!("{value:?} is not a bit value"))?
                    .into(),
            )))
        }
        Reading::Json | Reading::JsonOrInteger => {
            let json: serde_json::Value = serde_json::from_slice(&raw(value)?)
                .map_err(|e| format!("a JSON value that does not parse: {e}"))?;
            KymaValue::Dynamic(kyma_table::dynamic::encode(
                &kyma_table::dynamic::from_json(&json),
            ))
        }
        Reading::Geometry => KymaValue::String(wkt(&raw(value)?)?),
        Reading::Timestamp => match timestamp(&value)? {
            Some(micros) => KymaValue::Timestamp(micros),
            None => return Ok(None),
        },
        Reading::Time => KymaValue::Timestamp(time(&value)?),
        Reading::Year => match integer(&value)? {
            0 => return Ok(None),
            year => {
                let micros = i32::try_from(year)
                    .ok()
                    .and_then(|y| NaiveDate::from_ymd_opt(y, 1, 1))
                    .and_then(|d| d.and_hms_opt(0, 0, 0))
                    .map(|t| t.and_utc().timestamp_micros())
                    .ok_or_else(|| format!("{year} is not a year"))?;
                KymaValue::Timestamp(micros)
            }
        },
        Reading::Unmapped => {
            let shown = match value {
                Value::Bytes(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                other => other.as_sql(true),
            };
            KymaValue::Dynamic(kyma_table::dynamic::encode(&ciborium::Value::Text(shown)))
        }
    };
    Ok(Some(converted))
}

/// An integer value, as i128 so that every MySQL integer fits.
fn integer(value: &Value) -> Result<i128, String> {
    match value {
        Value::Int(v) => Ok(i128::from(*v)),
        Value::UInt(v) => Ok(i128::from(*v)),
        Value::Bytes(text) => std::str::from_utf8(text)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .ok_or_else(|| format!("{value:?} is not an integer")),
        other => Err(format!("{other:?} is not an integer")),
    }
}

fn real(value: &Value) -> Result<f64, String> {
    match value {
        Value::Float(v) => Ok(f64::from(*v)),
        Value::Double(v) => Ok(*v),
        Value::Int(v) => Ok(*v as f64),
        Value::UInt(v) => Ok(*v as f64),
        Value::Bytes(text) => std::str::from_utf8(text)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .ok_or_else(|| format!("{value:?} is not a number")),
        other => Err(format!("{other:?} is not a number")),
    }
}

fn raw(value: Value) -> Result<Vec<u8>, String> {
    match value {
        Value::Bytes(bytes) => Ok(bytes),
        other => Err(format!("{other:?} is not a string of bytes")),
    }
}

fn text(value: Value) -> Result<String, String> {
    String::from_utf8(raw(value)?).map_err(|_| "text that is not UTF-8".to_owned())
}

/// A date or date-time as microseconds since the epoch; `None` for zero or partial dates.
fn timestamp(value: &Value) -> Result<Option<i64>, String> {
    let Value::Date(year, month, day, hour, minute, second, micros) = *value else {
        return Err(format!("{value:?} is not a date"));
    };
    let Some(date) = NaiveDate::from_ymd_opt(i32::from(year), u32::from(month), u32::from(day))
    else {
        return Ok(None);
    };
    let at = date
        .and_hms_micro_opt(
            u32::from(hour),
            u32::from(minute),
            u32::from(second),
            micros,
        )
        .ok_or_else(|| format!("{value:?} is not a time of day"))?;
    Ok(Some(at.and_utc().timestamp_micros()))
}

/// A `time` as microseconds since midnight (negative and beyond a day included).
fn time(value: &Value) -> Result<i64, String> {
    let Value::Time(negative, days, hours, minutes, seconds, micros) = *value else {
        return Err(format!("{value:?} is not a time"));
    };
    let whole = ((i64::from(days) * 24 + i64::from(hours)) * 60 + i64::from(minutes)) * 60
        + i64::from(seconds);
    let magnitude = whole * MICROS_PER_SECOND + i64::from(micros);
    Ok(if negative { -magnitude } else { magnitude })
}

/// A spatial value (MySQL's internal form: a 4-byte SRID, then WKB) as WKT.
pub fn wkt(stored: &[u8]) -> Result<String, String> {
    let wkb = stored
        .get(4..)
        .ok_or("a spatial value shorter than its SRID")?;
    let mut reader = Wkb { bytes: wkb, at: 0 };
    let mut out = String::new();
    reader.geometry(&mut out, true)?;
    Ok(out)
}

/// A cursor over WKB.
struct Wkb<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Wkb<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let slice = self
            .bytes
            .get(self.at..self.at + N)
            .ok_or("a spatial value that ends early")?;
        self.at += N;
        let mut out = [0; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    fn u32(&mut self, little: bool) -> Result<u32, String> {
        let b = self.take::<4>()?;
        Ok(if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    }

    fn point(&mut self, little: bool, out: &mut String) -> Result<(), String> {
        let mut coordinate = || -> Result<f64, String> {
            let b = self.take::<8>()?;
            Ok(if little {
                f64::from_le_bytes(b)
            } else {
                f64::from_be_bytes(b)
            })
        };
        let (x, y) = (coordinate()?, coordinate()?);
        out.push_str(&format!("{x} {y}"));
        Ok(())
    }

    fn points(&mut self, little: bool, out: &mut String) -> Result<(), String> {
        let n = self.u32(little)?;
        out.push('(');
        for i in 0..n {
            if i > 0 {
                out.push(',');
            }
            self.point(little, out)?;
        }
        out.push(')');
        Ok(())
    }

    fn rings(&mut self, little: bool, out: &mut String) -> Result<(), String> {
        let n = self.u32(little)?;
        out.push('(');
        for i in 0..n {
            if i > 0 {
                out.push(',');
            }
            self.points(little, out)?;
        }
        out.push(')');
        Ok(())
    }

    /// One geometry; `named` writes its type name (members of a MULTI* are written bare).
    fn geometry(&mut self, out: &mut String, named: bool) -> Result<(), String> {
        let [order] = self.take::<1>()?;
        let little = order == 1;
        let kind = self.u32(little)?;
        let name = match kind {
            1 => "POINT",
            2 => "LINESTRING",
            3 => "POLYGON",
            4 => "MULTIPOINT",
            5 => "MULTILINESTRING",
            6 => "MULTIPOLYGON",
            7 => "GEOMETRYCOLLECTION",
            other => return Err(format!("WKB geometry type {other} is not known")),
        };
        if named {
            out.push_str(name);
        }
        match kind {
            1 => {
                out.push('(');
                self.point(little, out)?;
                out.push(')');
            }
            2 => self.points(little, out)?,
            3 => self.rings(little, out)?,
            _ => {
                let n = self.u32(little)?;
                out.push('(');
                for i in 0..n {
                    if i > 0 {
                        out.push(',');
                    }
                    // MULTIPOINT(1 1,2 2); MULTILINESTRING((…),(…)); collections name members.
                    let mut member = String::new();
                    self.geometry(&mut member, kind == 7)?;
                    let bare = if kind == 4 {
                        member.trim_start_matches('(').trim_end_matches(')')
                    } else {
                        member.as_str()
                    };
                    out.push_str(bare);
                }
                out.push(')');
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(reading: Reading, value: Value) -> Option<KymaValue> {
        kyma_value(&reading, value).expect("readable")
    }

    #[test]
    fn dates_times_and_years_are_utc_microseconds_and_zero_dates_null() {
        assert_eq!(
            read(Reading::Timestamp, Value::Date(1970, 1, 2, 0, 0, 1, 5)),
            Some(KymaValue::Timestamp(86_401_000_005))
        );
        assert_eq!(
            read(Reading::Timestamp, Value::Date(0, 0, 0, 0, 0, 0, 0)),
            None
        );
        assert_eq!(
            read(Reading::Time, Value::Time(true, 1, 1, 0, 0, 0)),
            Some(KymaValue::Timestamp(-(25 * 3600) * MICROS_PER_SECOND))
        );
        assert_eq!(read(Reading::Year, Value::Int(0)), None);
        assert_eq!(
            read(Reading::Year, Value::Int(1971)),
            Some(KymaValue::Timestamp(365 * 86_400 * MICROS_PER_SECOND))
        );
    }

    #[test]
    fn integers_that_do_not_fit_are_errors_not_wrapped() {
        assert!(kyma_value(&Reading::Long, Value::UInt(u64::MAX)).is_err());
        assert_eq!(
            read(Reading::UnsignedText, Value::UInt(u64::MAX)),
            Some(KymaValue::String(u64::MAX.to_string()))
        );
        assert!(kyma_value(&Reading::Int, Value::Int(i64::from(i32::MAX) + 1)).is_err());
    }

    #[test]
    fn binary_values_are_base64_and_binary_n_keeps_its_padding() {
        assert_eq!(
            read(
                Reading::Bytes { padded_to: Some(4) },
                Value::Bytes(vec![1, 2])
            ),
            Some(KymaValue::String(BASE64.encode([1, 2, 0, 0])))
        );
        assert_eq!(
            read(Reading::Bool, Value::Bytes(vec![0])),
            Some(KymaValue::Bool(false))
        );
    }

    #[test]
    fn wkb_becomes_wkt() {
        let mut point = vec![0, 0, 0, 0, 1, 1, 0, 0, 0];
        point.extend(1.5f64.to_le_bytes());
        point.extend((-2.0f64).to_le_bytes());
        assert_eq!(wkt(&point).as_deref(), Ok("POINT(1.5 -2)"));
        let mut multi = vec![0, 0, 0, 0, 1, 4, 0, 0, 0, 2, 0, 0, 0];
        for (x, y) in [(1.0f64, 1.0f64), (2.0, 2.0)] {
            multi.extend([1, 1, 0, 0, 0]);
            multi.extend(x.to_le_bytes());
            multi.extend(y.to_le_bytes());
        }
        assert_eq!(wkt(&multi).as_deref(), Ok("MULTIPOINT(1 1,2 2)"));
        assert!(wkt(&[0, 0, 0, 0, 1, 1, 0]).is_err());
    }
}

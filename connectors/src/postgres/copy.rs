//! Postgres `COPY … TO STDOUT (FORMAT binary)` into Arrow record batches.
//!
//! The binary COPY stream is the fastest way out of Postgres: no per-row protocol messages
//! and no text parsing. The stream is an 11-byte signature, a flags word and a header
//! extension, then one tuple per row (a 16-bit field count, then per field a 32-bit length,
//! -1 for NULL, and the value in the type's binary send format), then a field count of -1.
//! Chunks arrive on arbitrary byte boundaries; the decoder keeps the partial tail.
//!
//! Each column is decoded from its wire type (known from the statement's description) into
//! the kyma Arrow type the plan expects. Only conversions that lose nothing the kyma type can
//! hold are accepted; anything else is an error naming the column.

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef};
use bytes::{Buf, BytesMut};
use kyma_catalog::KymaType;
use kyma_table::types::kyma_type_of;
use kyma_table::{KymaColumnBuilder, KymaValueRef};
use tokio_postgres::types::Type;

use crate::error::ConnectorError;

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
/// Microseconds from the Unix epoch to Postgres' epoch (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Decodes a binary COPY stream into batches of the target schema.
pub struct CopyBinaryDecoder {
    schema: SchemaRef,
    columns: Vec<ColumnDecoder>,
    buffer: BytesMut,
    /// Where each field of the tuple being read lies (kept to spare an allocation per row).
    spans: Vec<Option<(usize, usize)>>,
    header_read: bool,
    finished: bool,
    rows: usize,
    batch_rows: usize,
}

impl std::fmt::Debug for CopyBinaryDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyBinaryDecoder")
            .field("schema", &self.schema)
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

impl CopyBinaryDecoder {
    /// A decoder producing `schema`, whose columns arrive as `wire` types (in order), in
    /// batches of up to `batch_rows` rows.
    pub fn new(
        schema: SchemaRef,
        wire: &[Type],
        batch_rows: usize,
    ) -> Result<Self, ConnectorError> {
        if schema.fields().len() != wire.len() {
            return Err(ConnectorError::Source(format!(
                "the source returned {} columns where {} were expected",
                wire.len(),
                schema.fields().len()
            )));
        }
        let columns = schema
            .fields()
            .iter()
            .zip(wire)
            .map(|(field, ty)| ColumnDecoder::new(field.name(), ty, field.data_type(), batch_rows))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            schema,
            columns,
            buffer: BytesMut::new(),
            spans: Vec::with_capacity(wire.len()),
            header_read: false,
            finished: false,
            rows: 0,
            batch_rows: batch_rows.max(1),
        })
    }

    /// Takes the next chunk of the stream; returns the batches it completed. A chunk that
    /// starts a tuple (the server sends one message per row) is decoded where it lies; only
    /// a partial tail is kept for the next chunk.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<RecordBatch>, ConnectorError> {
        let mut batches = Vec::new();
        if self.header_read && self.buffer.is_empty() {
            let used = self.read_tuples(chunk, &mut batches)?;
            self.buffer.extend_from_slice(&chunk[used..]);
            return Ok(batches);
        }
        self.buffer.extend_from_slice(chunk);
        if !self.header_read {
            if !self.read_header()? {
                return Ok(batches);
            }
            self.header_read = true;
        }
        let buffer = std::mem::take(&mut self.buffer);
        let used = self.read_tuples(&buffer, &mut batches);
        self.buffer = buffer;
        self.buffer.advance(used?);
        Ok(batches)
    }

    /// Ends the stream: the last, partial batch (if any rows are left). Fails when the stream
    /// stopped mid-row or before its trailer.
    pub fn finish(&mut self) -> Result<Option<RecordBatch>, ConnectorError> {
        if !self.finished || !self.buffer.is_empty() {
            return Err(ConnectorError::Source(
                "the COPY stream ended before its trailer".into(),
            ));
        }
        if self.rows == 0 {
            return Ok(None);
        }
        self.flush().map(Some)
    }

    fn read_header(&mut self) -> Result<bool, ConnectorError> {
        let fixed = SIGNATURE.len() + 8;
        if self.buffer.len() < fixed {
            return Ok(false);
        }
        if &self.buffer[..SIGNATURE.len()] != SIGNATURE {
            return Err(ConnectorError::Source(
                "the COPY stream is not in binary format".into(),
            ));
        }
        let extension = read_i32(&self.buffer[SIGNATURE.len() + 4..]);
        let extension = usize::try_from(extension)
            .map_err(|_| ConnectorError::Source("bad COPY header extension".into()))?;
        if self.buffer.len() < fixed + extension {
            return Ok(false);
        }
        self.buffer.advance(fixed + extension);
        Ok(true)
    }

    /// Decodes the complete tuples at the start of `bytes` (and the trailer); the bytes used.
    fn read_tuples(
        &mut self,
        bytes: &[u8],
        batches: &mut Vec<RecordBatch>,
    ) -> Result<usize, ConnectorError> {
        let mut used = 0;
        while !self.finished {
            let Some(tuple) = self.read_tuple(&bytes[used..])? else {
                break;
            };
            used += tuple;
            if self.rows >= self.batch_rows {
                batches.push(self.flush()?);
            }
        }
        Ok(used)
    }

    /// Decodes one tuple (or the trailer) when `bytes` starts with a complete one: the bytes
    /// it took; `None` when more are needed.
    fn read_tuple(&mut self, bytes: &[u8]) -> Result<Option<usize>, ConnectorError> {
        if bytes.len() < 2 {
            return Ok(None);
        }
        let fields = i16::from_be_bytes([bytes[0], bytes[1]]);
        if fields == -1 {
            self.finished = true;
            return Ok(Some(2));
        }
        if usize::try_from(fields).ok() != Some(self.columns.len()) {
            return Err(ConnectorError::Source(format!(
                "a COPY row has {fields} fields where {} were expected",
                self.columns.len()
            )));
        }
        // Find the tuple's extent first, so a partial tuple is never half-appended.
        self.spans.clear();
        let mut at = 2;
        for _ in 0..self.columns.len() {
            if bytes.len() < at + 4 {
                return Ok(None);
            }
            let len = read_i32(&bytes[at..]);
            at += 4;
            if len < 0 {
                self.spans.push(None);
                continue;
            }
            let len = len as usize;
            if bytes.len() < at + len {
                return Ok(None);
            }
            self.spans.push(Some((at, at + len)));
            at += len;
        }
        for (column, span) in self.columns.iter_mut().zip(&self.spans) {
            column.append(span.map(|(start, end)| &bytes[start..end]))?;
        }
        self.rows += 1;
        Ok(Some(at))
    }

    fn flush(&mut self) -> Result<RecordBatch, ConnectorError> {
        let arrays: Vec<ArrayRef> = self
            .columns
            .iter_mut()
            .map(|c| c.builder.finish_sized())
            .collect();
        self.rows = 0;
        RecordBatch::try_new(self.schema.clone(), arrays)
            .map_err(|e| ConnectorError::Source(format!("the source's rows do not fit: {e}")))
    }
}

fn read_i32(bytes: &[u8]) -> i32 {
    i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// One column: its wire type and the builder of its kyma type.
struct ColumnDecoder {
    name: String,
    wire: Type,
    builder: KymaColumnBuilder,
}

impl ColumnDecoder {
    fn new(
        name: &str,
        wire: &Type,
        target: &DataType,
        capacity: usize,
    ) -> Result<Self, ConnectorError> {
        let ty = kyma_type_of(target).ok_or_else(|| {
            ConnectorError::Source(format!(
                "column `{name}`: kyma cannot read {target} from a Postgres {wire}"
            ))
        })?;
        Ok(Self {
            name: name.to_owned(),
            wire: wire.clone(),
            builder: KymaColumnBuilder::new(ty, capacity),
        })
    }

    fn append(&mut self, value: Option<&[u8]>) -> Result<(), ConnectorError> {
        let Some(raw) = value else {
            self.builder.append_null();
            return Ok(());
        };
        let wire = &self.wire;
        let appended: Result<(), String> =
            match self.builder.kyma_type() {
                KymaType::Int => integer(wire, raw).and_then(|v| {
                    let v = i32::try_from(v).map_err(|_| format!("{v} is out of range for int"))?;
                    self.builder.append(Some(KymaValueRef::Int(v)))
                }),
                KymaType::Long => integer(wire, raw)
                    .and_then(|v| self.builder.append(Some(KymaValueRef::Long(v)))),
                KymaType::Real => {
                    float(wire, raw).and_then(|v| self.builder.append(Some(KymaValueRef::Real(v))))
                }
                KymaType::Bool => match *wire {
                    Type::BOOL => fixed::<1>(raw)
                        .and_then(|[v]| self.builder.append(Some(KymaValueRef::Bool(v != 0)))),
                    _ => Err(unreadable(wire)),
                },
                KymaType::String => text(wire, raw)
                    .and_then(|v| self.builder.append(Some(KymaValueRef::String(&v)))),
                KymaType::Timestamp => timestamp(wire, raw)
                    .and_then(|v| self.builder.append(Some(KymaValueRef::Timestamp(v)))),
                KymaType::Dynamic => dynamic(wire, raw)
                    .and_then(|v| self.builder.append(Some(KymaValueRef::Dynamic(&v)))),
                KymaType::Vector(n) => vector(wire, raw, n as usize)
                    .and_then(|v| self.builder.append(Some(KymaValueRef::Vector(&v)))),
            };
        appended.map_err(|reason| {
            ConnectorError::Source(format!("column `{}` ({}): {reason}", self.name, self.wire))
        })
    }
}

fn unreadable(wire: &Type) -> String {
    format!("kyma has no conversion from Postgres {wire} to this column's type")
}

fn fixed<const N: usize>(raw: &[u8]) -> Result<[u8; N], String> {
    raw.try_into()
        .map_err(|_| format!("a value of {} bytes where {N} were expected", raw.len()))
}

fn integer(wire: &Type, raw: &[u8]) -> Result<i64, String> {
    match *wire {
        Type::INT2 => fixed(raw).map(|b| i64::from(i16::from_be_bytes(b))),
        Type::INT4 => fixed(raw).map(|b| i64::from(i32::from_be_bytes(b))),
        Type::INT8 => fixed(raw).map(i64::from_be_bytes),
        Type::OID => fixed(raw).map(|b| i64::from(u32::from_be_bytes(b))),
        Type::NUMERIC => {
            let text = numeric_text(raw)?;
            let integral = text.split_once('.').map_or(text.as_str(), |(i, f)| {
                if f.bytes().all(|d| d == b'0') { i } else { "" }
            });
            integral
                .parse()
                .map_err(|_| format!("{text} is not a 64-bit integer"))
        }
        _ => Err(unreadable(wire)),
    }
}

fn float(wire: &Type, raw: &[u8]) -> Result<f64, String> {
    match *wire {
        Type::FLOAT4 => fixed(raw).map(|b| f64::from(f32::from_be_bytes(b))),
        Type::FLOAT8 => fixed(raw).map(f64::from_be_bytes),
        Type::NUMERIC => match numeric_fast_f64(raw) {
            Some(value) => Ok(value),
            None => {
                let text = numeric_text(raw)?;
                text.parse().map_err(|_| format!("{text} is not a number"))
            }
        },
        Type::INT2 | Type::INT4 | Type::INT8 => integer(wire, raw).map(|v| v as f64),
        _ => Err(unreadable(wire)),
    }
}

fn text<'a>(wire: &Type, raw: &'a [u8]) -> Result<std::borrow::Cow<'a, str>, String> {
    match *wire {
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN | Type::JSON => {
            std::str::from_utf8(raw)
                .map(std::borrow::Cow::Borrowed)
                .map_err(|_| "is not valid UTF-8".to_owned())
        }
        Type::NUMERIC => numeric_text(raw).map(std::borrow::Cow::Owned),
        _ => Err(unreadable(wire)),
    }
}

fn timestamp(wire: &Type, raw: &[u8]) -> Result<i64, String> {
    let micros = match *wire {
        Type::TIMESTAMPTZ | Type::TIMESTAMP => {
            let v = i64::from_be_bytes(fixed(raw)?);
            if v == i64::MAX || v == i64::MIN {
                return Err("is infinity, which a kyma timestamp cannot hold".into());
            }
            v.checked_add(PG_EPOCH_MICROS)
        }
        Type::DATE => {
            let days = i32::from_be_bytes(fixed(raw)?);
            if days == i32::MAX || days == i32::MIN {
                return Err("is infinity, which a kyma timestamp cannot hold".into());
            }
            i64::from(days)
                .checked_mul(MICROS_PER_DAY)
                .and_then(|v| v.checked_add(PG_EPOCH_MICROS))
        }
        _ => return Err(unreadable(wire)),
    };
    micros.ok_or_else(|| "is out of the range of a kyma timestamp".into())
}

fn dynamic(wire: &Type, raw: &[u8]) -> Result<Vec<u8>, String> {
    let json = match *wire {
        // jsonb's binary format is a version byte (1) and the JSON text.
        Type::JSONB => match raw.split_first() {
            Some((1, json)) => json,
            _ => return Err("has an unknown jsonb binary version".into()),
        },
        Type::JSON => raw,
        _ => return Err(unreadable(wire)),
    };
    let value: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| format!("is not JSON: {e}"))?;
    Ok(kyma_table::dynamic::encode(
        &kyma_table::dynamic::from_json(&value),
    ))
}

fn vector(wire: &Type, raw: &[u8], dimension: usize) -> Result<Vec<f32>, String> {
    if *wire != Type::FLOAT4_ARRAY {
        return Err(unreadable(wire));
    }
    let word = |at: usize| -> Result<i32, String> {
        raw.get(at..at + 4)
            .map(read_i32)
            .ok_or_else(|| "is a truncated array".to_owned())
    };
    let dimensions = word(0)?;
    let length = match dimensions {
        0 => 0,
        1 => usize::try_from(word(12)?).map_err(|_| "has a negative length".to_owned())?,
        n => return Err(format!("is a {n}-dimensional array, not a vector")),
    };
    if length != dimension {
        return Err(format!(
            "has {length} dimensions where the column has {dimension}"
        ));
    }
    let mut at = if dimensions == 0 { 12 } else { 20 };
    let mut values = Vec::with_capacity(length);
    for _ in 0..length {
        if word(at)? != 4 {
            return Err("has a NULL or malformed element".into());
        }
        let bytes = raw
            .get(at + 4..at + 8)
            .ok_or_else(|| "is a truncated array".to_owned())?;
        values.push(f32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]));
        at += 8;
    }
    Ok(values)
}

/// Powers of ten a double holds exactly.
const EXACT_POWERS_OF_TEN: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// A finite numeric as the nearest double, without its text, when that is one correctly
/// rounded operation: its digits fit 2^53 and its power of ten is at most 10^22 (Clinger's
/// fast path, which `str::parse` takes too, so the value is the one the text would give).
/// `None`: take the text path (NaN, infinities, long or far values, digits past `dscale`).
fn numeric_fast_f64(raw: &[u8]) -> Option<f64> {
    let short = |at: usize| {
        raw.get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    let ndigits = i32::from(short(0)?);
    let weight = i32::from(short(2)? as i16);
    let negative = match short(4)? {
        0x0000 => false,
        0x4000 => true,
        _ => return None,
    };
    let dscale = i32::from(short(6)?);
    let mut mantissa: u64 = 0;
    for i in 0..ndigits {
        let digit = short(8 + 2 * usize::try_from(i).ok()?)?;
        if digit >= 10_000 {
            return None;
        }
        mantissa = mantissa
            .checked_mul(10_000)?
            .checked_add(u64::from(digit))?;
    }
    if mantissa > 1 << 53 {
        return None;
    }
    // The text shows `dscale` fraction digits: the digits past them must be zero.
    let exponent = 4 * (weight - ndigits + 1);
    let hidden = -exponent - dscale;
    if hidden > 0 {
        let unit = 10_u64.checked_pow(u32::try_from(hidden).ok()?)?;
        if !mantissa.is_multiple_of(unit) {
            return None;
        }
    }
    let power = *EXACT_POWERS_OF_TEN.get(usize::try_from(exponent.unsigned_abs()).ok()?)?;
    let magnitude = if exponent >= 0 {
        mantissa as f64 * power
    } else {
        mantissa as f64 / power
    };
    Some(if negative { -magnitude } else { magnitude })
}

/// A `numeric` in its binary form (base-10000 digits) as decimal text, or NaN / ±Infinity.
fn numeric_text(raw: &[u8]) -> Result<String, String> {
    let short = |at: usize| -> Result<i32, String> {
        raw.get(at..at + 2)
            .map(|b| i32::from(u16::from_be_bytes([b[0], b[1]])))
            .ok_or_else(|| "is a truncated numeric".to_owned())
    };
    let ndigits = short(0)?;
    let weight = i32::from(short(2)? as u16 as i16);
    let sign = short(4)?;
    let dscale = usize::try_from(short(6)?).unwrap_or(0);
    match sign {
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        _ => {}
    }
    let digit = |i: i32| -> Result<i32, String> {
        if (0..ndigits).contains(&i) {
            short(8 + 2 * usize::try_from(i).unwrap_or(0))
        } else {
            Ok(0)
        }
    };
    let mut out = String::new();
    if sign == 0x4000 {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        for i in 0..=weight {
            let d = digit(i)?;
            if i == 0 {
                out.push_str(&d.to_string());
            } else {
                out.push_str(&format!("{d:04}"));
            }
        }
    }
    if dscale > 0 {
        let mut fraction = String::new();
        let mut i = weight + 1;
        while fraction.len() < dscale {
            fraction.push_str(&format!("{:04}", digit(i)?));
            i += 1;
        }
        fraction.truncate(dscale);
        out.push('.');
        out.push_str(&fraction);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Field, Int64Type, Schema};

    use super::*;

    /// A binary COPY stream of `rows` (id int8, name text or NULL), and its trailer.
    fn stream(rows: &[(i64, Option<&str>)]) -> Vec<Vec<u8>> {
        let mut header = SIGNATURE.to_vec();
        header.extend_from_slice(&[0; 8]);
        let mut messages = vec![header];
        for (id, name) in rows {
            let mut tuple = 2_i16.to_be_bytes().to_vec();
            tuple.extend_from_slice(&8_i32.to_be_bytes());
            tuple.extend_from_slice(&id.to_be_bytes());
            match name {
                Some(name) => {
                    tuple.extend_from_slice(&(name.len() as i32).to_be_bytes());
                    tuple.extend_from_slice(name.as_bytes());
                }
                None => tuple.extend_from_slice(&(-1_i32).to_be_bytes()),
            }
            messages.push(tuple);
        }
        messages.push((-1_i16).to_be_bytes().to_vec());
        messages
    }

    fn decode(chunks: impl IntoIterator<Item = Vec<u8>>) -> Vec<(i64, Option<String>)> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
        ]));
        let mut decoder =
            CopyBinaryDecoder::new(schema, &[Type::INT8, Type::TEXT], 2).expect("decoder");
        let mut batches = Vec::new();
        for chunk in chunks {
            batches.extend(decoder.push(&chunk).expect("push"));
        }
        batches.extend(decoder.finish().expect("finish"));
        let mut rows = Vec::new();
        for batch in batches {
            let ids = batch.column(0).as_primitive::<Int64Type>();
            let names = batch.column(1).as_string::<i32>();
            for row in 0..batch.num_rows() {
                let name = names.is_valid(row).then(|| names.value(row).to_owned());
                rows.push((ids.value(row), name));
            }
        }
        rows
    }

    #[test]
    fn tuples_decode_alike_one_message_each_or_split_at_any_byte() {
        let rows = [
            (1, Some("ä")),
            (-7, None),
            (i64::MAX, Some("")),
            (42, Some("x")),
        ];
        let messages = stream(&rows);
        let expected: Vec<(i64, Option<String>)> = rows
            .iter()
            .map(|(id, name)| (*id, name.map(str::to_owned)))
            .collect();
        assert_eq!(decode(messages.clone()), expected, "one message per tuple");
        let whole: Vec<u8> = messages.concat();
        for split in 1..whole.len() {
            let parts = vec![whole[..split].to_vec(), whole[split..].to_vec()];
            assert_eq!(decode(parts), expected, "split at byte {split}");
        }
        let bytes: Vec<Vec<u8>> = whole.iter().map(|b| vec![*b]).collect();
        assert_eq!(decode(bytes), expected, "a byte at a time");
    }

    fn numeric(ndigits: &[u16], weight: i16, sign: u16, dscale: u16) -> Vec<u8> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(ndigits.len() as u16).to_be_bytes());
        raw.extend_from_slice(&weight.to_be_bytes());
        raw.extend_from_slice(&sign.to_be_bytes());
        raw.extend_from_slice(&dscale.to_be_bytes());
        for d in ndigits {
            raw.extend_from_slice(&d.to_be_bytes());
        }
        raw
    }

    #[test]
    fn numeric_binary_renders_as_decimal_text() {
        // 12345.678 = [1, 2345, 6780] weight 1, dscale 3
        assert_eq!(
            numeric_text(&numeric(&[1, 2345, 6780], 1, 0, 3)).as_deref(),
            Ok("12345.678")
        );
        // -0.0005 = [5] weight -1, dscale 4
        assert_eq!(
            numeric_text(&numeric(&[5], -1, 0x4000, 4)).as_deref(),
            Ok("-0.0005")
        );
        // 0.00000001 = [1] weight -2, dscale 8
        assert_eq!(
            numeric_text(&numeric(&[1], -2, 0, 8)).as_deref(),
            Ok("0.00000001")
        );
        // 20000 = [2] weight 1, dscale 0 (trailing zero groups are dropped)
        assert_eq!(
            numeric_text(&numeric(&[2], 1, 0, 0)).as_deref(),
            Ok("20000")
        );
        assert_eq!(
            numeric_text(&numeric(&[], 0, 0xC000, 0)).as_deref(),
            Ok("NaN")
        );
        assert_eq!(integer(&Type::NUMERIC, &numeric(&[2], 1, 0, 2)), Ok(20000));
        assert!(integer(&Type::NUMERIC, &numeric(&[1, 5000], 0, 0, 1)).is_err());
    }

    #[test]
    fn numerics_read_as_doubles_equal_their_text_parsed() {
        let cases = [
            numeric(&[1, 2345, 6780], 1, 0, 3),
            numeric(&[5], -1, 0x4000, 4),
            numeric(&[1], -2, 0, 8),
            numeric(&[2], 1, 0, 0),
            numeric(&[123, 4500], 0, 0, 2),
            numeric(&[9999, 9999, 9999, 9999], 3, 0, 0),
            numeric(&[9999, 9999, 9999, 9999, 9999], 0, 0x4000, 16),
            numeric(&[1], 30, 0, 0),
            numeric(&[3333], -10, 0, 44),
            numeric(&[], 0, 0, 0),
            numeric(&[], 0, 0xC000, 0),
            numeric(&[], 0, 0xD000, 0),
        ];
        for raw in cases {
            let text = numeric_text(&raw).expect("text");
            let parsed: f64 = text.parse().expect("a number");
            let read = float(&Type::NUMERIC, &raw).expect("a double");
            assert!(
                read == parsed || (read.is_nan() && parsed.is_nan()),
                "{text}: {read} != {parsed}"
            );
        }
        assert_eq!(
            numeric_fast_f64(&numeric(&[123, 4500], 0, 0, 2)),
            Some(123.45)
        );
        assert_eq!(
            numeric_fast_f64(&numeric(&[1, 5000], 0, 0, 1)),
            Some(1.5),
            "a trailing zero past dscale"
        );
        assert_eq!(
            numeric_fast_f64(&numeric(&[1, 5001], 0, 0, 2)),
            None,
            "a nonzero digit past dscale goes through the text"
        );
    }
}

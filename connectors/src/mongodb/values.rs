//! BSON values → kyma values: the one conversion federation, the snapshot and the change
//! stream share, so a document reads the same whichever way it came.
//!
//! A column reads the value at its path ([`value_at`]: every step but the last must be a
//! sub-document, so `a.b` of `{a: [{b: 1}]}` is missing) as its [`Kind`] says
//! ([`kyma_value`]). A value of a BSON type the kind does not read (an array in an `int`
//! column, a string where numbers were sampled) is NULL there: the typed column holds
//! exactly the values of its type. Sync never meets that case, since the stream widens the
//! shape before it reads a document; federation reads the shape discovered last.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Field, Schema, SchemaRef};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ciborium::Value as Cbor;
use kyma_table::KymaValue;
use kyma_table::value::KymaColumnBuilder;
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{Bson, Decimal128, Document};

use super::schema::{FieldColumn, Kind};
use crate::error::ConnectorError;

/// The value at `path` in `document`, if every step before the last is a sub-document.
pub fn value_at<'d>(document: &'d Document, path: &[String]) -> Option<&'d Bson> {
    let (last, steps) = path.split_last()?;
    let mut current = document;
    for step in steps {
        match current.get(step)? {
            Bson::Document(inner) => current = inner,
            _ => return None,
        }
    }
    current.get(last)
}

/// `_kyma_pk` and the `_id` column: the stringified `_id`. ObjectId → its 24 hex digits,
/// strings as they are, integers in decimal, UUIDs hyphenated; anything else as relaxed
/// Extended JSON.
pub fn key_text(id: &Bson) -> String {
    match id {
        Bson::ObjectId(oid) => oid.to_hex(),
        Bson::String(s) => s.clone(),
        Bson::Int32(n) => n.to_string(),
        Bson::Int64(n) => n.to_string(),
        Bson::Binary(b) if b.subtype == BinarySubtype::Uuid && b.bytes.len() == 16 => {
            uuid_text(&b.bytes)
        }
        other => other.clone().into_relaxed_extjson().to_string(),
    }
}

/// A Decimal128 that holds an integer within the `long` range, as that integer.
pub fn decimal_integer(value: &Decimal128) -> Option<i64> {
    let text = value.to_string();
    let (digits, exponent) = match text.split_once(['E', 'e']) {
        Some((digits, exponent)) => (digits, exponent.parse::<i32>().ok()?),
        None => (text.as_str(), 0),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let exponent = exponent - i32::try_from(fraction.len()).ok()?;
    let mut significand: String = format!("{whole}{fraction}");
    if exponent < 0 {
        let cut = usize::try_from(-exponent).ok()?;
        let keep = significand.len().checked_sub(cut)?;
        if !significand[keep..].bytes().all(|b| b == b'0') {
            return None;
        }
        significand.truncate(keep);
    } else {
        significand.push_str(&"0".repeat(usize::try_from(exponent).ok()?));
    }
    match significand.as_str() {
        "" | "-" | "+" => None,
        digits => digits.parse().ok(),
    }
}

fn uuid_text(bytes: &[u8]) -> String {
    uuid::Uuid::from_slice(bytes)
        .map(|u| u.hyphenated().to_string())
        .unwrap_or_default()
}

/// The kyma value of `value` in a column of `kind` (`None`: NULL, or a value of a BSON
/// type the kind does not read).
pub fn kyma_value(value: &Bson, kind: Kind) -> Option<KymaValue> {
    Some(match (kind, value) {
        (_, Bson::Null | Bson::Undefined) => return None,
        (Kind::Key, id) => KymaValue::String(key_text(id)),
        (Kind::Dynamic, any) => KymaValue::Dynamic(kyma_table::dynamic::encode(&cbor(any))),
        (Kind::Int, Bson::Int32(n)) => KymaValue::Int(*n),
        (Kind::Long, Bson::Int32(n)) => KymaValue::Long(i64::from(*n)),
        (Kind::Long, Bson::Int64(n)) => KymaValue::Long(*n),
        (Kind::Long, Bson::Decimal128(d)) => KymaValue::Long(decimal_integer(d)?),
        (Kind::Real, number) => KymaValue::Real(real(number)?),
        (Kind::DecimalText, Bson::Decimal128(d)) => KymaValue::String(d.to_string()),
        (Kind::Bool, Bson::Boolean(b)) => KymaValue::Bool(*b),
        (Kind::String, Bson::String(s)) => KymaValue::String(s.clone()),
        (Kind::ObjectId, Bson::ObjectId(oid)) => KymaValue::String(oid.to_hex()),
        (Kind::Uuid, Bson::Binary(b))
            if b.subtype == BinarySubtype::Uuid && b.bytes.len() == 16 =>
        {
            KymaValue::String(uuid_text(&b.bytes))
        }
        (Kind::Binary, Bson::Binary(b)) if b.subtype != BinarySubtype::Uuid => {
            KymaValue::String(BASE64.encode(&b.bytes))
        }
        (Kind::Date, Bson::DateTime(t)) => {
            KymaValue::Timestamp(t.timestamp_millis().checked_mul(1000)?)
        }
        (Kind::Timestamp, Bson::Timestamp(t)) => {
            KymaValue::Timestamp(i64::from(t.time) * 1_000_000)
        }
        _ => return None,
    })
}

/// A number as a `real`.
fn real(value: &Bson) -> Option<f64> {
    match value {
        Bson::Int32(n) => Some(f64::from(*n)),
        // Exact below 2^53, the nearest double above (as DataFusion casts a long).
        Bson::Int64(n) => Some(*n as f64),
        Bson::Double(d) => Some(*d),
        Bson::Decimal128(d) => d.to_string().parse().ok(),
        _ => None,
    }
}

/// A BSON value as a `dynamic` (CBOR) value: documents as maps, arrays as arrays, dates as
/// RFC 3339 text, ObjectIds as hex text, Decimal128 as its text, binary as bytes (UUIDs as
/// text); the rare types as their Extended JSON.
pub fn cbor(value: &Bson) -> Cbor {
    match value {
        Bson::Null | Bson::Undefined => Cbor::Null,
        Bson::Boolean(b) => Cbor::Bool(*b),
        Bson::Int32(n) => Cbor::Integer((*n).into()),
        Bson::Int64(n) => Cbor::Integer((*n).into()),
        Bson::Double(d) => Cbor::Float(*d),
        Bson::String(s) | Bson::Symbol(s) => Cbor::Text(s.clone()),
        Bson::Document(d) => Cbor::Map(
            d.iter()
                .map(|(k, v)| (Cbor::Text(k.clone()), cbor(v)))
                .collect(),
        ),
        Bson::Array(items) => Cbor::Array(items.iter().map(cbor).collect()),
        Bson::ObjectId(oid) => Cbor::Text(oid.to_hex()),
        Bson::DateTime(t) => Cbor::Text(
            t.try_to_rfc3339_string()
                .unwrap_or_else(|_| t.timestamp_millis().to_string()),
        ),
        Bson::Decimal128(d) => Cbor::Text(d.to_string()),
        Bson::Binary(b) if b.subtype == BinarySubtype::Uuid && b.bytes.len() == 16 => {
            Cbor::Text(uuid_text(&b.bytes))
        }
        Bson::Binary(b) => Cbor::Bytes(b.bytes.clone()),
        Bson::Timestamp(t) => Cbor::Map(vec![
            (Cbor::Text("t".into()), Cbor::Integer(t.time.into())),
            (Cbor::Text("i".into()), Cbor::Integer(t.increment.into())),
        ]),
        other => Cbor::Text(other.clone().into_relaxed_extjson().to_string()),
    }
}

/// Builds record batches of kyma-typed columns from documents, each column read by its
/// path and kind.
pub struct DocumentBatcher {
    schema: SchemaRef,
    columns: Vec<FieldColumn>,
    builders: Vec<KymaColumnBuilder>,
    batch_rows: usize,
    rows: usize,
}

impl DocumentBatcher {
    /// Batches of up to `batch_rows` rows of `columns`, named as in `schema` (whose fields
    /// are the columns' kyma types, in order).
    pub fn new(schema: SchemaRef, columns: Vec<FieldColumn>, batch_rows: usize) -> Self {
        let builders = columns
            .iter()
            .map(|c| KymaColumnBuilder::new(c.kind.kyma_type(), batch_rows))
            .collect();
        Self {
            schema,
            columns,
            builders,
            batch_rows: batch_rows.max(1),
            rows: 0,
        }
    }

    /// Batches of `columns` under their own names.
    pub fn for_columns(columns: Vec<FieldColumn>, batch_rows: usize) -> Self {
        let fields: Vec<Field> = columns
            .iter()
            .map(|c| {
                Field::new(
                    &c.name,
                    kyma_table::types::arrow_type(c.kind.kyma_type()),
                    true,
                )
            })
            .collect();
        Self::new(Arc::new(Schema::new(fields)), columns, batch_rows)
    }

    /// Adds a document's row.
    pub fn push(&mut self, document: &Document) -> Result<(), ConnectorError> {
        for (column, builder) in self.columns.iter().zip(&mut self.builders) {
            let value = value_at(document, &column.path).and_then(|v| kyma_value(v, column.kind));
            builder
                .append(value.as_ref().map(KymaValue::as_ref))
                .map_err(|e| ConnectorError::Source(format!("column `{}`: {e}", column.name)))?;
        }
        self.rows += 1;
        Ok(())
    }

    /// Whether a batch is full.
    pub fn is_full(&self) -> bool {
        self.rows >= self.batch_rows
    }

    /// Rows pushed since the last batch.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The rows pushed since the last batch, as one.
    pub fn finish(&mut self) -> Result<RecordBatch, ConnectorError> {
        self.rows = 0;
        let arrays = self
            .builders
            .iter_mut()
            .map(KymaColumnBuilder::finish)
            .collect();
        RecordBatch::try_new(self.schema.clone(), arrays)
            .map_err(|e| ConnectorError::Source(format!("building a batch: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use mongodb::bson::oid::ObjectId;
    use mongodb::bson::{Binary, DateTime, Timestamp, doc};

    use super::*;

    #[test]
    fn keys_stringify() {
        let oid = ObjectId::parse_str("507f1f77bcf86cd799439011").expect("test input");
        assert_eq!(key_text(&Bson::ObjectId(oid)), "507f1f77bcf86cd799439011");
        assert_eq!(key_text(&Bson::String("k".into())), "k");
        assert_eq!(key_text(&Bson::Int32(7)), "7");
        assert_eq!(key_text(&Bson::Int64(-7)), "-7");
        let uuid = Bson::Binary(Binary {
            subtype: BinarySubtype::Uuid,
            bytes: (0..16).collect(),
        });
        assert_eq!(key_text(&uuid), "00010203-0405-0607-0809-0a0b0c0d0e0f");
        assert_eq!(key_text(&Bson::Document(doc! { "a": 1 })), r#"{"a":1}"#);
    }

    #[test]
    fn decimals_that_hold_integers_read_as_longs() {
        let d = |s: &str| s.parse::<Decimal128>().expect("test input");
        assert_eq!(decimal_integer(&d("42")), Some(42));
        assert_eq!(decimal_integer(&d("-42")), Some(-42));
        assert_eq!(decimal_integer(&d("4.20E+1")), Some(42));
        assert_eq!(decimal_integer(&d("42.000")), Some(42));
        assert_eq!(decimal_integer(&d("1E+3")), Some(1000));
        assert_eq!(decimal_integer(&d("4.2")), None);
        assert_eq!(decimal_integer(&d("9223372036854775808")), None);
        assert_eq!(decimal_integer(&d("NaN")), None);
        assert_eq!(decimal_integer(&d("Infinity")), None);
    }

    #[test]
    fn values_read_only_into_their_kind() {
        assert_eq!(
            kyma_value(&Bson::Int32(5), Kind::Long),
            Some(KymaValue::Long(5))
        );
        assert_eq!(
            kyma_value(&Bson::Int64(5), Kind::Int),
            None,
            "an Int64 is not an int"
        );
        assert_eq!(kyma_value(&Bson::String("5".into()), Kind::Long), None);
        assert_eq!(
            kyma_value(&Bson::Array(vec![Bson::Int32(5)]), Kind::Int),
            None
        );
        assert_eq!(kyma_value(&Bson::Null, Kind::Dynamic), None);
        let at = DateTime::from_millis(1_700_000_000_123);
        assert_eq!(
            kyma_value(&Bson::DateTime(at), Kind::Date),
            Some(KymaValue::Timestamp(1_700_000_000_123_000))
        );
        let ts = Timestamp {
            time: 10,
            increment: 3,
        };
        assert_eq!(
            kyma_value(&Bson::Timestamp(ts), Kind::Timestamp),
            Some(KymaValue::Timestamp(10_000_000))
        );
        let bin = Bson::Binary(Binary {
            subtype: BinarySubtype::Generic,
            bytes: vec![0xff, 0],
        });
        assert_eq!(
            kyma_value(&bin, Kind::Binary),
            Some(KymaValue::String("/wA=".into()))
        );
        let dec = Bson::Decimal128("1.10".parse().expect("test input"));
        assert_eq!(
            kyma_value(&dec, Kind::DecimalText),
            Some(KymaValue::String("1.10".into()))
        );
        assert_eq!(kyma_value(&dec, Kind::Real), Some(KymaValue::Real(1.1)));
    }

    #[test]
    fn dynamic_values_keep_structure() {
        let value = Bson::Document(doc! { "tags": ["a", 1], "at": DateTime::from_millis(0) });
        let Some(KymaValue::Dynamic(bytes)) = kyma_value(&value, Kind::Dynamic) else {
            panic!("not dynamic");
        };
        let decoded = kyma_table::dynamic::decode(&bytes).expect("test input");
        assert_eq!(
            kyma_table::dynamic::to_json(&decoded),
            serde_json::json!({ "tags": ["a", 1], "at": "1970-01-01T00:00:00Z" })
        );
    }

    #[test]
    fn paths_walk_sub_documents_only() {
        let document = doc! { "a": { "b": 1 }, "arr": [{ "b": 2 }] };
        let path = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            value_at(&document, &path(&["a", "b"])),
            Some(&Bson::Int32(1))
        );
        assert_eq!(value_at(&document, &path(&["arr", "b"])), None);
        assert_eq!(value_at(&document, &path(&["a", "c"])), None);
    }
}

//! One kyma value and the one builder that turns values into an Arrow column of a kyma type.
//!
//! Every source converts its native values (a Postgres binary or text datum, a binlog cell, a
//! BSON value) into [`KymaValue`]s (or borrowed [`KymaValueRef`]s on hot paths) and appends
//! them to a [`KymaColumnBuilder`]; nothing else in kyma builds kyma-typed Arrow columns by
//! hand. [`KymaValueRef::key_text`] is the canonical text of a value as part of a synced row's
//! `_kyma_pk` (see [`crate::synced`]): it depends on the value only, never on how the source
//! spelled it, so a row has one key whether it arrived by snapshot or by stream.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayBuilder, ArrayRef, AsArray, BinaryBuilder, BooleanBuilder, FixedSizeListBuilder,
    Float32Builder, Float64Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Float32Type, Float64Type, Int32Type, Int64Type};
use kyma_catalog::KymaType;

use crate::types::UTC;

/// One non-null value of a kyma type.
#[derive(Debug, Clone, PartialEq)]
pub enum KymaValue {
    /// `int`.
    Int(i32),
    /// `long`.
    Long(i64),
    /// `real`.
    Real(f64),
    /// `bool`.
    Bool(bool),
    /// `string`.
    String(String),
    /// `timestamp`: microseconds since the Unix epoch, UTC.
    Timestamp(i64),
    /// `dynamic`: CBOR.
    Dynamic(Vec<u8>),
    /// `vector(N)`.
    Vector(Vec<f32>),
}

/// A borrowed [`KymaValue`], for appending without an allocation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KymaValueRef<'a> {
    /// `int`.
    Int(i32),
    /// `long`.
    Long(i64),
    /// `real`.
    Real(f64),
    /// `bool`.
    Bool(bool),
    /// `string`.
    String(&'a str),
    /// `timestamp`: microseconds since the Unix epoch, UTC.
    Timestamp(i64),
    /// `dynamic`: CBOR.
    Dynamic(&'a [u8]),
    /// `vector(N)`.
    Vector(&'a [f32]),
}

impl KymaValue {
    /// The value borrowed.
    pub fn as_ref(&self) -> KymaValueRef<'_> {
        match self {
            KymaValue::Int(v) => KymaValueRef::Int(*v),
            KymaValue::Long(v) => KymaValueRef::Long(*v),
            KymaValue::Real(v) => KymaValueRef::Real(*v),
            KymaValue::Bool(v) => KymaValueRef::Bool(*v),
            KymaValue::String(v) => KymaValueRef::String(v),
            KymaValue::Timestamp(v) => KymaValueRef::Timestamp(*v),
            KymaValue::Dynamic(v) => KymaValueRef::Dynamic(v),
            KymaValue::Vector(v) => KymaValueRef::Vector(v),
        }
    }
}

impl<'a> KymaValueRef<'a> {
    /// The kyma type of the value (a vector's dimension is its length).
    pub fn kyma_type(&self) -> KymaType {
        match self {
            KymaValueRef::Int(_) => KymaType::Int,
            KymaValueRef::Long(_) => KymaType::Long,
            KymaValueRef::Real(_) => KymaType::Real,
            KymaValueRef::Bool(_) => KymaType::Bool,
            KymaValueRef::String(_) => KymaType::String,
            KymaValueRef::Timestamp(_) => KymaType::Timestamp,
            KymaValueRef::Dynamic(_) => KymaType::Dynamic,
            KymaValueRef::Vector(v) => KymaType::Vector(u32::try_from(v.len()).unwrap_or(0)),
        }
    }

    /// The value as a `dynamic` (CBOR) value: what a column that can no longer hold its
    /// source's type stores instead. Timestamps become RFC 3339 text, which the dynamic
    /// accessors read back as timestamps.
    pub fn to_dynamic(&self) -> Vec<u8> {
        use ciborium::Value as C;
        let value = match *self {
            KymaValueRef::Dynamic(cbor) => return cbor.to_vec(),
            KymaValueRef::Int(v) => C::Integer(v.into()),
            KymaValueRef::Long(v) => C::Integer(v.into()),
            KymaValueRef::Real(v) => C::Float(v),
            KymaValueRef::Bool(v) => C::Bool(v),
            KymaValueRef::String(v) => C::Text(v.to_owned()),
            KymaValueRef::Timestamp(micros) => C::Text(timestamp_text(micros, true)),
            KymaValueRef::Vector(v) => {
                C::Array(v.iter().map(|f| C::Float(f64::from(*f))).collect())
            }
        };
        crate::dynamic::encode(&value)
    }

    /// The canonical text of the value as part of a `_kyma_pk`: integers in decimal, reals in
    /// their shortest round-trip form, `true`/`false`, strings as they are, timestamps as
    /// `YYYY-MM-DD HH:MM:SS[.ffffff]+00` (what Postgres prints for a UTC `timestamptz`),
    /// dynamic values as JSON, vectors as `[1,2,3]`.
    pub fn key_text(&self) -> String {
        match *self {
            KymaValueRef::Int(v) => v.to_string(),
            KymaValueRef::Long(v) => v.to_string(),
            KymaValueRef::Real(v) => v.to_string(),
            KymaValueRef::Bool(v) => v.to_string(),
            KymaValueRef::String(v) => v.to_owned(),
            KymaValueRef::Timestamp(micros) => timestamp_text(micros, false),
            KymaValueRef::Dynamic(cbor) => crate::dynamic::decode(cbor)
                .map(|v| crate::dynamic::to_json(&v).to_string())
                .unwrap_or_default(),
            KymaValueRef::Vector(v) => {
                let items: Vec<String> = v.iter().map(f32::to_string).collect();
                format!("[{}]", items.join(","))
            }
        }
    }

    /// The value in row `row` of `array` (an Arrow column of a kyma type); `None` when it is
    /// NULL or the array is not of a kyma type.
    pub fn at(array: &'a dyn Array, row: usize) -> Option<Self> {
        if array.is_null(row) {
            return None;
        }
        let value = match array.data_type() {
            DataType::Int32 => KymaValueRef::Int(array.as_primitive::<Int32Type>().value(row)),
            DataType::Int64 => KymaValueRef::Long(array.as_primitive::<Int64Type>().value(row)),
            DataType::Float64 => KymaValueRef::Real(array.as_primitive::<Float64Type>().value(row)),
            DataType::Boolean => KymaValueRef::Bool(array.as_boolean().value(row)),
            DataType::Utf8 => KymaValueRef::String(array.as_string::<i32>().value(row)),
            DataType::Timestamp(_, _) => KymaValueRef::Timestamp(
                array
                    .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                    .value(row),
            ),
            DataType::Binary => KymaValueRef::Dynamic(array.as_binary::<i32>().value(row)),
            DataType::FixedSizeList(_, n) => {
                let list = array.as_fixed_size_list();
                let values = list.values().as_primitive::<Float32Type>().values();
                let n = usize::try_from(*n).ok()?;
                let start = list.value_offset(row) as usize;
                KymaValueRef::Vector(values.get(start..start + n)?)
            }
            _ => return None,
        };
        Some(value)
    }
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff]+00` (`T`-separated with a `Z` when `rfc3339`); the fraction
/// only as long as it needs to be.
fn timestamp_text(micros: i64, rfc3339: bool) -> String {
    let Some(at) = chrono::DateTime::from_timestamp_micros(micros) else {
        return micros.to_string();
    };
    let fraction = at.timestamp_subsec_micros();
    let mut text = at
        .format(if rfc3339 {
            "%Y-%m-%dT%H:%M:%S"
        } else {
            "%Y-%m-%d %H:%M:%S"
        })
        .to_string();
    if fraction > 0 {
        let digits = format!("{fraction:06}");
        text.push('.');
        text.push_str(digits.trim_end_matches('0'));
    }
    text.push_str(if rfc3339 { "Z" } else { "+00" });
    text
}

/// Builds one Arrow column of a kyma type from values (SPEC §3: the eight kyma types on
/// Arrow). The column it finishes has exactly [`crate::types::arrow_type`] of its type.
#[derive(Debug)]
pub enum KymaColumnBuilder {
    /// `int`.
    Int(Int32Builder),
    /// `long`.
    Long(Int64Builder),
    /// `real`.
    Real(Float64Builder),
    /// `bool`.
    Bool(BooleanBuilder),
    /// `string`.
    String(StringBuilder),
    /// `timestamp`.
    Timestamp(TimestampMicrosecondBuilder),
    /// `dynamic`.
    Dynamic(BinaryBuilder),
    /// `vector(N)`, with N.
    Vector(FixedSizeListBuilder<Float32Builder>, usize),
}

impl KymaColumnBuilder {
    /// An empty builder for a column of `ty`, with room for `capacity` values.
    pub fn new(ty: KymaType, capacity: usize) -> Self {
        Self::with_capacities(ty, capacity, capacity * 16)
    }

    /// An empty builder for a column of `ty`, with room for `capacity` values and, for a
    /// string or dynamic column, `data_bytes` bytes of them.
    fn with_capacities(ty: KymaType, capacity: usize, data_bytes: usize) -> Self {
        match ty {
            KymaType::Int => Self::Int(Int32Builder::with_capacity(capacity)),
            KymaType::Long => Self::Long(Int64Builder::with_capacity(capacity)),
            KymaType::Real => Self::Real(Float64Builder::with_capacity(capacity)),
            KymaType::Bool => Self::Bool(BooleanBuilder::with_capacity(capacity)),
            KymaType::String => Self::String(StringBuilder::with_capacity(capacity, data_bytes)),
            KymaType::Timestamp => Self::Timestamp(
                TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone(UTC),
            ),
            KymaType::Dynamic => Self::Dynamic(BinaryBuilder::with_capacity(capacity, data_bytes)),
            KymaType::Vector(n) => {
                let dim = usize::try_from(n).unwrap_or(0);
                let item = Arc::new(Field::new_list_field(DataType::Float32, true));
                let builder = FixedSizeListBuilder::with_capacity(
                    Float32Builder::with_capacity(capacity * dim),
                    i32::try_from(n).unwrap_or(0),
                    capacity,
                )
                .with_field(item);
                Self::Vector(builder, dim)
            }
        }
    }

    /// The kyma type of the column.
    pub fn kyma_type(&self) -> KymaType {
        match self {
            Self::Int(_) => KymaType::Int,
            Self::Long(_) => KymaType::Long,
            Self::Real(_) => KymaType::Real,
            Self::Bool(_) => KymaType::Bool,
            Self::String(_) => KymaType::String,
            Self::Timestamp(_) => KymaType::Timestamp,
            Self::Dynamic(_) => KymaType::Dynamic,
            Self::Vector(_, n) => KymaType::Vector(u32::try_from(*n).unwrap_or(0)),
        }
    }

    /// Appends a value (`None`: NULL). A value of another type is refused with a message
    /// saying both types; nothing is appended then.
    pub fn append(&mut self, value: Option<KymaValueRef<'_>>) -> Result<(), String> {
        let Some(value) = value else {
            self.append_null();
            return Ok(());
        };
        match (self, value) {
            (Self::Int(b), KymaValueRef::Int(v)) => b.append_value(v),
            (Self::Long(b), KymaValueRef::Long(v)) => b.append_value(v),
            (Self::Real(b), KymaValueRef::Real(v)) => b.append_value(v),
            (Self::Bool(b), KymaValueRef::Bool(v)) => b.append_value(v),
            (Self::String(b), KymaValueRef::String(v)) => b.append_value(v),
            (Self::Timestamp(b), KymaValueRef::Timestamp(v)) => b.append_value(v),
            (Self::Dynamic(b), KymaValueRef::Dynamic(v)) => b.append_value(v),
            (Self::Vector(b, n), KymaValueRef::Vector(v)) if v.len() == *n => {
                b.values().append_slice(v);
                b.append(true);
            }
            (builder, value) => {
                return Err(format!(
                    "a {} value where the column is {}",
                    value.kyma_type(),
                    builder.kyma_type()
                ));
            }
        }
        Ok(())
    }

    /// Appends a NULL.
    pub fn append_null(&mut self) {
        match self {
            Self::Int(b) => b.append_null(),
            Self::Long(b) => b.append_null(),
            Self::Real(b) => b.append_null(),
            Self::Bool(b) => b.append_null(),
            Self::String(b) => b.append_null(),
            Self::Timestamp(b) => b.append_null(),
            Self::Dynamic(b) => b.append_null(),
            Self::Vector(b, n) => {
                b.values().append_nulls(*n);
                b.append(false);
            }
        }
    }

    /// Values appended since the last [`KymaColumnBuilder::finish`].
    pub fn len(&self) -> usize {
        match self {
            Self::Int(b) => b.len(),
            Self::Long(b) => b.len(),
            Self::Real(b) => b.len(),
            Self::Bool(b) => b.len(),
            Self::String(b) => b.len(),
            Self::Timestamp(b) => b.len(),
            Self::Dynamic(b) => b.len(),
            Self::Vector(b, _) => b.len(),
        }
    }

    /// Whether nothing was appended since the last [`KymaColumnBuilder::finish`].
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The column built so far; the builder starts empty again.
    pub fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Int(b) => Arc::new(b.finish()),
            Self::Long(b) => Arc::new(b.finish()),
            Self::Real(b) => Arc::new(b.finish()),
            Self::Bool(b) => Arc::new(b.finish()),
            Self::String(b) => Arc::new(b.finish()),
            Self::Timestamp(b) => Arc::new(b.finish()),
            Self::Dynamic(b) => Arc::new(b.finish()),
            Self::Vector(b, _) => Arc::new(b.finish()),
        }
    }

    /// [`KymaColumnBuilder::finish`], then room for as many values (and bytes of them) as
    /// the column built: for a caller whose batches are alike (a copy's), so they do not
    /// regrow their buffers from nothing each time. The room is taken at once.
    pub fn finish_sized(&mut self) -> ArrayRef {
        let (ty, values) = (self.kyma_type(), self.len());
        let built = self.finish();
        let data_bytes = match built.data_type() {
            DataType::Utf8 => built.as_string::<i32>().values().len(),
            DataType::Binary => built.as_binary::<i32>().values().len(),
            _ => 0,
        };
        *self = Self::with_capacities(ty, values, data_bytes);
        built
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::arrow_type;

    #[test]
    fn a_builder_finished_sized_has_room_for_as_many_values_and_builds_them_again() {
        let mut strings = KymaColumnBuilder::new(KymaType::String, 0);
        let mut longs = KymaColumnBuilder::new(KymaType::Long, 0);
        for round in 0..2 {
            for i in 0..100_i64 {
                let text = format!("value {i} of round {round}");
                strings
                    .append(Some(KymaValueRef::String(&text)))
                    .expect("string");
                longs.append(Some(KymaValueRef::Long(i))).expect("long");
            }
            let built = strings.finish_sized();
            assert_eq!(built.len(), 100);
            assert_eq!(
                built.as_string::<i32>().value(99),
                format!("value 99 of round {round}")
            );
            assert_eq!(
                longs.finish_sized().as_primitive::<Int64Type>().value(99),
                99
            );
            assert!(strings.is_empty() && longs.is_empty());
            let KymaColumnBuilder::Long(room) = &longs else {
                panic!("a long builder stays one");
            };
            assert!(room.capacity() >= 100, "room for {}", room.capacity());
        }
    }

    #[test]
    fn every_builder_finishes_the_arrow_type_of_its_kyma_type() {
        let values: Vec<(KymaType, KymaValue)> = vec![
            (KymaType::Int, KymaValue::Int(7)),
            (KymaType::Long, KymaValue::Long(-7)),
            (KymaType::Real, KymaValue::Real(0.5)),
            (KymaType::Bool, KymaValue::Bool(true)),
            (KymaType::String, KymaValue::String("x".into())),
            (KymaType::Timestamp, KymaValue::Timestamp(1)),
            (KymaType::Dynamic, KymaValue::Dynamic(vec![0xf6])),
            (KymaType::Vector(2), KymaValue::Vector(vec![1.0, 2.0])),
        ];
        for (ty, value) in values {
            let mut builder = KymaColumnBuilder::new(ty, 2);
            builder.append(Some(value.as_ref())).expect("same type");
            builder.append_null();
            let array = builder.finish();
            assert_eq!(array.data_type(), &arrow_type(ty), "{ty}");
            assert_eq!((array.len(), array.null_count()), (2, 1), "{ty}");
            assert_eq!(
                KymaValueRef::at(array.as_ref(), 0),
                Some(value.as_ref()),
                "{ty}"
            );
        }
    }

    #[test]
    fn a_value_of_another_type_is_refused() {
        let mut builder = KymaColumnBuilder::new(KymaType::Int, 1);
        let err = builder
            .append(Some(KymaValueRef::Long(1)))
            .expect_err("long into int");
        assert_eq!(err, "a long value where the column is int");
        assert!(builder.is_empty());
        let mut vector = KymaColumnBuilder::new(KymaType::Vector(3), 1);
        assert!(vector.append(Some(KymaValueRef::Vector(&[1.0]))).is_err());
    }

    #[test]
    fn key_text_is_canonical() {
        assert_eq!(KymaValueRef::Real(1.5).key_text(), "1.5");
        assert_eq!(KymaValueRef::Real(3.0).key_text(), "3");
        assert_eq!(KymaValueRef::Bool(false).key_text(), "false");
        assert_eq!(
            KymaValueRef::Timestamp(1_785_741_660_000_000).key_text(),
            "2026-08-03 07:21:00+00"
        );
        assert_eq!(
            KymaValueRef::Timestamp(946_684_800_500_000).key_text(),
            "2000-01-01 00:00:00.5+00"
        );
        assert_eq!(KymaValueRef::Vector(&[1.0, 2.5]).key_text(), "[1,2.5]");
    }
}

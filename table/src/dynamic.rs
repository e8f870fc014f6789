//! `dynamic` values: CBOR in an Arrow Binary column (SPEC §3).
//!
//! Writers turn any Arrow value (structs, maps, lists, scalars) into CBOR here; readers look up
//! bracket paths (`attributes['http']['status_code']`) and read the value found as a typed
//! scalar. A map key matches a path step when it is the same text; an array element matches
//! when the step is its decimal index. A step that matches nothing yields no value (SQL NULL).

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BinaryBuilder, BooleanArray, MapArray, StructArray,
};
use arrow::datatypes::{
    DataType, Float16Type, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type,
    UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use ciborium::Value;

use crate::error::TableError;

/// Decodes one CBOR value.
pub fn decode(bytes: &[u8]) -> Option<Value> {
    ciborium::de::from_reader(bytes).ok()
}

/// Encodes one CBOR value.
pub fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail for a well-formed Value.
    if ciborium::ser::into_writer(value, &mut out).is_err() {
        out.clear();
    }
    out
}

/// Follows `path` into `value`: map keys by text, array elements by decimal index.
pub fn lookup<'a>(mut value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    for step in path {
        value = match value {
            Value::Map(entries) => entries.iter().find_map(|(k, v)| match k {
                Value::Text(t) if t == step => Some(v),
                Value::Integer(i) if step.parse::<i128>().ok() == Some(i128::from(*i)) => Some(v),
                _ => None,
            })?,
            Value::Array(items) => items.get(step.parse::<usize>().ok()?)?,
            Value::Tag(_, inner) => lookup(inner, std::slice::from_ref(step))?,
            _ => return None,
        };
    }
    Some(value)
}

fn untag(value: &Value) -> &Value {
    match value {
        Value::Tag(_, inner) => untag(inner),
        other => other,
    }
}

/// The value as a 64-bit integer: CBOR integers in range, and floats with an integral value.
pub fn as_i64(value: &Value) -> Option<i64> {
    match untag(value) {
        Value::Integer(i) => i64::try_from(i128::from(*i)).ok(),
        Value::Float(f) if f.fract() == 0.0 && f.abs() < 9.2e18 => Some(*f as i64),
        _ => None,
    }
}

/// The value as a double: CBOR integers and floats.
pub fn as_f64(value: &Value) -> Option<f64> {
    match untag(value) {
        Value::Integer(i) => Some(i128::from(*i) as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    }
}

/// The value as text: CBOR text strings only (numbers do not turn into text).
pub fn as_str(value: &Value) -> Option<&str> {
    match untag(value) {
        Value::Text(t) => Some(t),
        _ => None,
    }
}

/// The value as a boolean.
pub fn as_bool(value: &Value) -> Option<bool> {
    match untag(value) {
        Value::Bool(b) => Some(*b),
        _ => None,
    }
}

/// The value as a UTC timestamp in microseconds: RFC 3339 text, or an epoch number of seconds
/// (CBOR tag 1 or a plain number).
pub fn as_timestamp_micros(value: &Value) -> Option<i64> {
    match untag(value) {
        Value::Text(t) => {
            let micros = arrow::compute::kernels::cast_utils::string_to_timestamp_nanos(t).ok()?;
            Some(micros.div_euclid(1000))
        }
        Value::Integer(i) => i64::try_from(i128::from(*i)).ok()?.checked_mul(1_000_000),
        Value::Float(f) if f.is_finite() => Some((f * 1e6) as i64),
        _ => None,
    }
}

/// The dynamic value (CBOR) of JSON text.
pub fn from_json_text(text: &str) -> Result<Vec<u8>, serde_json::Error> {
    Ok(encode(&from_json(&serde_json::from_str(text)?)))
}

/// The CBOR value of a JSON value (the inverse of [`to_json`] for JSON's own types).
pub fn from_json(value: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match value {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Integer(i.into()),
            (None, Some(u)) => Value::Integer(u.into()),
            _ => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => Value::Text(s.clone()),
        J::Array(items) => Value::Array(items.iter().map(from_json).collect()),
        J::Object(entries) => Value::Map(
            entries
                .iter()
                .map(|(k, v)| (Value::Text(k.clone()), from_json(v)))
                .collect(),
        ),
    }
}

/// Renders a value as JSON text (bytes as hex strings, tags dropped), for display.
pub fn to_json(value: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        Value::Integer(i) => {
            let i = i128::from(*i);
            i64::try_from(i).map_or_else(|_| J::String(i.to_string()), J::from)
        }
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        Value::Text(t) => J::String(t.clone()),
        Value::Bool(b) => J::Bool(*b),
        Value::Null => J::Null,
        Value::Bytes(b) => J::String(b.iter().map(|x| format!("{x:02x}")).collect()),
        Value::Array(items) => J::Array(items.iter().map(to_json).collect()),
        Value::Map(entries) => J::Object(
            entries
                .iter()
                .map(|(k, v)| {
                    let key = match k {
                        Value::Text(t) => t.clone(),
                        other => to_json(other).to_string(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        Value::Tag(_, inner) => to_json(inner),
        _ => J::Null,
    }
}

/// Converts every row of `array` to CBOR; Arrow nulls stay nulls. `column` names the column
/// in errors.
pub fn encode_array(column: &str, array: &dyn Array) -> Result<ArrayRef, TableError> {
    if let Some(binary) = array.as_binary_opt::<i32>() {
        // Binary input is taken as CBOR already: check it, keep it.
        for (row, value) in binary.iter().enumerate() {
            if let Some(bytes) = value
                && decode(bytes).is_none()
            {
                return Err(TableError::mismatch(
                    column,
                    "dynamic",
                    format!("the binary value at row {row} is not CBOR"),
                ));
            }
        }
        return Ok(Arc::new(binary.clone()));
    }
    let mut builder = BinaryBuilder::with_capacity(array.len(), array.len() * 16);
    for row in 0..array.len() {
        if array.is_null(row) {
            builder.append_null();
        } else {
            builder.append_value(encode(&value_at(column, array, row)?));
        }
    }
    Ok(Arc::new(builder.finish()))
}

/// The CBOR value of one row of an Arrow array.
fn value_at(column: &str, array: &dyn Array, row: usize) -> Result<Value, TableError> {
    if array.is_null(row) {
        return Ok(Value::Null);
    }
    macro_rules! int {
        ($t:ty) => {
            Value::Integer(array.as_primitive::<$t>().value(row).into())
        };
    }
    let value = match array.data_type() {
        DataType::Null => Value::Null,
        DataType::Boolean => Value::Bool(array.as_boolean().value(row)),
        DataType::Int8 => int!(Int8Type),
        DataType::Int16 => int!(Int16Type),
        DataType::Int32 => int!(Int32Type),
        DataType::Int64 => int!(Int64Type),
        DataType::UInt8 => int!(UInt8Type),
        DataType::UInt16 => int!(UInt16Type),
        DataType::UInt32 => int!(UInt32Type),
        DataType::UInt64 => int!(UInt64Type),
        DataType::Float16 => Value::Float(array.as_primitive::<Float16Type>().value(row).to_f64()),
        DataType::Float32 => {
            Value::Float(f64::from(array.as_primitive::<Float32Type>().value(row)))
        }
        DataType::Float64 => Value::Float(array.as_primitive::<Float64Type>().value(row)),
        DataType::Binary => decode(array.as_binary::<i32>().value(row))
            .unwrap_or_else(|| Value::Bytes(array.as_binary::<i32>().value(row).to_vec())),
        DataType::LargeBinary => Value::Bytes(array.as_binary::<i64>().value(row).to_vec()),
        DataType::FixedSizeBinary(_) => {
            Value::Bytes(array.as_fixed_size_binary().value(row).to_vec())
        }
        DataType::BinaryView => Value::Bytes(array.as_binary_view().value(row).to_vec()),
        DataType::Struct(_) => struct_value(column, array.as_struct(), row)?,
        DataType::Map(_, _) => map_value(column, array.as_map(), row)?,
        DataType::List(_) => items_value(column, &array.as_list::<i32>().value(row))?,
        DataType::LargeList(_) => items_value(column, &array.as_list::<i64>().value(row))?,
        DataType::FixedSizeList(_, _) => {
            items_value(column, &array.as_fixed_size_list().value(row))?
        }
        DataType::Dictionary(_, _) => {
            let dict = array.as_any_dictionary();
            let key = dict.normalized_keys()[row];
            value_at(column, dict.values().as_ref(), key)?
        }
        DataType::Utf8
        | DataType::LargeUtf8
        | DataType::Utf8View
        | DataType::Timestamp(_, _)
        | DataType::Date32
        | DataType::Date64
        | DataType::Time32(_)
        | DataType::Time64(_)
        | DataType::Duration(_)
        | DataType::Interval(_)
        | DataType::Decimal32(_, _)
        | DataType::Decimal64(_, _)
        | DataType::Decimal128(_, _)
        | DataType::Decimal256(_, _) => {
            let text = arrow::compute::cast(&array.slice(row, 1), &DataType::Utf8)?;
            Value::Text(text.as_string::<i32>().value(0).to_owned())
        }
        other => {
            return Err(TableError::UnmappedType {
                column: column.to_owned(),
                arrow_type: other.to_string(),
            });
        }
    };
    Ok(value)
}

fn struct_value(column: &str, array: &StructArray, row: usize) -> Result<Value, TableError> {
    let mut entries = Vec::with_capacity(array.num_columns());
    for (field, child) in array.fields().iter().zip(array.columns()) {
        entries.push((
            Value::Text(field.name().clone()),
            value_at(column, child.as_ref(), row)?,
        ));
    }
    Ok(Value::Map(entries))
}

fn map_value(column: &str, array: &MapArray, row: usize) -> Result<Value, TableError> {
    let offsets = array.value_offsets();
    let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
    let (keys, values) = (array.keys(), array.values());
    let mut entries = Vec::with_capacity(end - start);
    for i in start..end {
        entries.push((
            value_at(column, keys.as_ref(), i)?,
            value_at(column, values.as_ref(), i)?,
        ));
    }
    Ok(Value::Map(entries))
}

/// The items of one list row as a CBOR array.
fn items_value(column: &str, items: &ArrayRef) -> Result<Value, TableError> {
    (0..items.len())
        .map(|i| value_at(column, items.as_ref(), i))
        .collect::<Result<_, _>>()
        .map(Value::Array)
}

/// Reads `path` out of every row of a dynamic column and converts what is found with
/// `convert`; rows without the path (or of another type) are null.
pub fn extract<T>(
    dynamic: &BinaryArray,
    path: &[&str],
    convert: impl Fn(&Value) -> Option<T>,
) -> Vec<Option<T>> {
    dynamic
        .iter()
        .map(|bytes| {
            let value = decode(bytes?)?;
            lookup(&value, path).and_then(&convert)
        })
        .collect()
}

/// The booleans of [`extract`] as an Arrow array.
pub fn extract_bool(dynamic: &BinaryArray, path: &[&str]) -> BooleanArray {
    extract(dynamic, path, as_bool).into_iter().collect()
}

/// Reads `path` out of every row of a dynamic column as kyma type `ty`: values of another
/// type, and rows without the path, are null. `dynamic` returns the CBOR of what is found.
pub fn extract_as(dynamic: &BinaryArray, path: &[&str], ty: kyma_catalog::KymaType) -> ArrayRef {
    use arrow::array::{
        Float64Array, Int32Array, Int64Array, StringArray, TimestampMicrosecondArray,
    };
    use kyma_catalog::KymaType;
    match ty {
        KymaType::Int => Arc::new(
            extract(dynamic, path, |v| {
                as_i64(v).and_then(|i| i32::try_from(i).ok())
            })
            .into_iter()
            .collect::<Int32Array>(),
        ),
        KymaType::Long => Arc::new(
            extract(dynamic, path, as_i64)
                .into_iter()
                .collect::<Int64Array>(),
        ),
        KymaType::Real => Arc::new(
            extract(dynamic, path, as_f64)
                .into_iter()
                .collect::<Float64Array>(),
        ),
        KymaType::Bool => Arc::new(extract_bool(dynamic, path)),
        KymaType::String => Arc::new(
            extract(dynamic, path, |v| as_str(v).map(str::to_owned))
                .into_iter()
                .collect::<StringArray>(),
        ),
        KymaType::Timestamp => Arc::new(
            extract(dynamic, path, as_timestamp_micros)
                .into_iter()
                .collect::<TimestampMicrosecondArray>()
                .with_timezone(crate::types::UTC),
        ),
        KymaType::Dynamic => Arc::new(
            extract(dynamic, path, |v| Some(encode(v)))
                .into_iter()
                .collect::<BinaryArray>(),
        ),
        KymaType::Vector(_) => {
            arrow::array::new_null_array(&crate::types::arrow_type(ty), dynamic.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{Field, Fields};

    #[test]
    fn structs_become_maps_and_paths_find_nested_values() {
        let inner = StructArray::from(vec![(
            Arc::new(Field::new("status_code", DataType::Int64, true)),
            Arc::new(Int64Array::from(vec![503, 200])) as ArrayRef,
        )]);
        let outer = StructArray::new(
            Fields::from(vec![
                Field::new("service.name", DataType::Utf8, true),
                Field::new("http", inner.data_type().clone(), true),
            ]),
            vec![
                Arc::new(StringArray::from(vec!["auth-svc", "web"])) as ArrayRef,
                Arc::new(inner),
            ],
            None,
        );
        let encoded = encode_array("attributes", &outer).expect("encodes");
        let binary = encoded.as_binary::<i32>();
        assert_eq!(
            extract(binary, &["service.name"], |v| as_str(v).map(str::to_owned)),
            vec![Some("auth-svc".to_owned()), Some("web".to_owned())]
        );
        assert_eq!(
            extract(binary, &["http", "status_code"], as_i64),
            vec![Some(503), Some(200)]
        );
        assert_eq!(extract(binary, &["missing"], as_i64), vec![None, None]);
    }

    #[test]
    fn binary_that_is_not_cbor_is_refused_naming_the_row() {
        let bad = BinaryArray::from(vec![Some(&[0xa1_u8][..]), Some(&[0xff, 0xff][..])]);
        let err = encode_array("attrs", &bad).expect_err("not CBOR");
        assert!(err.to_string().contains("row 0"), "{err}");
    }
}

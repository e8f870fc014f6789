//! What Flight SQL clients receive: kyma's types as Arrow clients read them.
//!
//! Inside kyma a `dynamic` value is CBOR in a Binary column (storage, bracket paths, every
//! expression). Clients get it as JSON text in a Utf8 column carrying Arrow's canonical
//! `arrow.json` extension type, so pandas, Polars and JDBC see text they can parse. Kyma has
//! no plain binary type, so every Binary result column is `dynamic`; the rare bytes that are
//! not CBOR (a binary literal) go out as a JSON string of their hex digits. CBOR that JSON
//! cannot hold is rendered as `dynamic_to_json` renders it: bytes as hex strings, integers
//! beyond 64 bits as strings, NaN and infinities as null, tags dropped.
//!
//! Binary inside lists and structs (`array_agg` of a dynamic column) is converted the same
//! way; the schema a client is promised ([`client_schema`]) and the batches it gets
//! ([`client_batch`]) are converted by the same rules.
//!
//! The other way, a column a client ingests with the `arrow.json` extension type is JSON
//! text to be stored as `dynamic` ([`ingested_schema`], [`ingested_batch`]): a new table
//! gets a dynamic column for it, and text that is not JSON is refused naming the column and
//! the row.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, GenericListArray, OffsetSizeTrait, RecordBatch,
    RecordBatchOptions, StringBuilder, StructArray,
};
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Schema, SchemaRef};
use arrow::error::ArrowError;
use kyma_table::dynamic;

/// The Arrow extension type name of JSON text.
pub const JSON_EXTENSION: &str = "arrow.json";

const EXTENSION_NAME_KEY: &str = "ARROW:extension:name";
const EXTENSION_METADATA_KEY: &str = "ARROW:extension:metadata";

/// Whether `field` carries the `arrow.json` extension type.
pub fn is_json(field: &Field) -> bool {
    field.metadata().get(EXTENSION_NAME_KEY).map(String::as_str) == Some(JSON_EXTENSION)
}

/// `schema` as clients receive it.
pub fn client_schema(schema: &Schema) -> SchemaRef {
    if !schema.fields().iter().any(|f| has_binary(f.data_type())) {
        return Arc::new(schema.clone());
    }
    let fields: Vec<FieldRef> = schema.fields().iter().map(client_field).collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// `batch` as clients receive it, of `schema` (from [`client_schema`]: the announced schema,
/// whose nullability and metadata the batch takes).
pub fn client_batch(batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
    let columns = if batch
        .schema()
        .fields()
        .iter()
        .any(|f| has_binary(f.data_type()))
    {
        batch
            .columns()
            .iter()
            .map(client_array)
            .collect::<Result<Vec<_>, _>>()?
    } else {
        batch.columns().to_vec()
    };
    // Checks the data, not the field flags: a column announced non-null holds no null.
    let rows = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(schema.clone(), columns, &rows)
}

/// A client's ingest schema as kyma stores it: `arrow.json` columns are dynamic (Binary).
pub fn ingested_schema(schema: &Schema) -> Schema {
    let fields: Vec<FieldRef> = schema
        .fields()
        .iter()
        .map(|field| {
            if is_json(field) {
                Arc::new(Field::new(
                    field.name(),
                    DataType::Binary,
                    field.is_nullable(),
                ))
            } else {
                field.clone()
            }
        })
        .collect();
    Schema::new_with_metadata(fields, schema.metadata().clone())
}

/// A client's ingested batch as kyma stores it: `arrow.json` columns parsed into dynamic
/// values.
pub fn ingested_batch(batch: RecordBatch) -> Result<RecordBatch, ArrowError> {
    let schema = batch.schema();
    if !schema.fields().iter().any(|f| is_json(f)) {
        return Ok(batch);
    }
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        columns.push(if is_json(field) {
            parsed_json(field.name(), column)?
        } else {
            column.clone()
        });
    }
    RecordBatch::try_new(Arc::new(ingested_schema(&schema)), columns)
}

fn parsed_json(name: &str, column: &ArrayRef) -> Result<ArrayRef, ArrowError> {
    let text = arrow::compute::cast(column, &DataType::Utf8)?;
    let mut out = BinaryBuilder::with_capacity(text.len(), text.len() * 16);
    for (row, value) in text.as_string::<i32>().iter().enumerate() {
        match value.map(dynamic::from_json_text) {
            None => out.append_null(),
            Some(Ok(cbor)) => out.append_value(cbor),
            Some(Err(e)) => {
                return Err(ArrowError::InvalidArgumentError(format!(
                    "column `{name}` is arrow.json, but its row {row} is not JSON: {e}"
                )));
            }
        }
    }
    Ok(Arc::new(out.finish()))
}

fn has_binary(data_type: &DataType) -> bool {
    match data_type {
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => true,
        DataType::List(item) | DataType::LargeList(item) => has_binary(item.data_type()),
        DataType::Struct(fields) => fields.iter().any(|f| has_binary(f.data_type())),
        _ => false,
    }
}

fn client_field(field: &FieldRef) -> FieldRef {
    let converted = match field.data_type() {
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
            let mut metadata: HashMap<String, String> = field.metadata().clone();
            metadata.insert(EXTENSION_NAME_KEY.into(), JSON_EXTENSION.into());
            metadata.insert(EXTENSION_METADATA_KEY.into(), String::new());
            return Arc::new(
                Field::new(field.name(), DataType::Utf8, field.is_nullable())
                    .with_metadata(metadata),
            );
        }
        DataType::List(item) => DataType::List(client_field(item)),
        DataType::LargeList(item) => DataType::LargeList(client_field(item)),
        DataType::Struct(fields) => {
            DataType::Struct(fields.iter().map(client_field).collect::<Fields>())
        }
        _ => return field.clone(),
    };
    Arc::new(field.as_ref().clone().with_data_type(converted))
}

fn client_array(array: &ArrayRef) -> Result<ArrayRef, ArrowError> {
    match array.data_type() {
        DataType::Binary => Ok(json_text(array.as_binary::<i32>().iter(), array.len())),
        DataType::LargeBinary => Ok(json_text(array.as_binary::<i64>().iter(), array.len())),
        DataType::BinaryView => Ok(json_text(array.as_binary_view().iter(), array.len())),
        DataType::List(_) => client_list(array.as_list::<i32>()),
        DataType::LargeList(_) => client_list(array.as_list::<i64>()),
        DataType::Struct(_) => {
            let structs = array.as_struct();
            let columns = structs
                .columns()
                .iter()
                .map(client_array)
                .collect::<Result<Vec<_>, _>>()?;
            let fields: Fields = structs.fields().iter().map(client_field).collect();
            Ok(Arc::new(StructArray::try_new(
                fields,
                columns,
                structs.nulls().cloned(),
            )?))
        }
        _ => Ok(array.clone()),
    }
}

fn client_list<O: OffsetSizeTrait>(list: &GenericListArray<O>) -> Result<ArrayRef, ArrowError> {
    let (DataType::List(item) | DataType::LargeList(item)) = list.data_type() else {
        return Err(ArrowError::InvalidArgumentError("not a list".into()));
    };
    Ok(Arc::new(GenericListArray::<O>::try_new(
        client_field(item),
        list.offsets().clone(),
        client_array(list.values())?,
        list.nulls().cloned(),
    )?))
}

/// Each value's JSON text; nulls stay null.
fn json_text<'a>(values: impl Iterator<Item = Option<&'a [u8]>>, len: usize) -> ArrayRef {
    let mut text = StringBuilder::with_capacity(len, len * 16);
    for value in values {
        match value {
            Some(bytes) => {
                let json = match dynamic::decode(bytes) {
                    Some(value) => dynamic::to_json(&value),
                    None => serde_json::Value::String(
                        bytes.iter().map(|b| format!("{b:02x}")).collect(),
                    ),
                };
                text.append_value(json.to_string());
            }
            None => text.append_null(),
        }
    }
    Arc::new(text.finish())
}

#[cfg(test)]
mod tests {
    use arrow::array::{BinaryArray, Int64Array, ListArray};
    use arrow::buffer::OffsetBuffer;
    use ciborium::Value;

    use super::*;

    #[test]
    fn dynamic_columns_go_out_as_arrow_json_text_and_other_columns_untouched() {
        let doc = dynamic::encode(&Value::Map(vec![
            (Value::Text("a".into()), Value::Integer(1.into())),
            (
                Value::Text("b".into()),
                Value::Array(vec![Value::Bool(true), Value::Null]),
            ),
        ]));
        let docs: ArrayRef = Arc::new(BinaryArray::from(vec![
            Some(doc.as_slice()),
            None,
            Some(&[0xff_u8, 0x00][..]),
        ]));
        let items = Field::new("item", DataType::Binary, true);
        let lists: ArrayRef = Arc::new(ListArray::new(
            Arc::new(items.clone()),
            OffsetBuffer::from_lengths([2, 1, 0]),
            Arc::new(BinaryArray::from(vec![
                doc.as_slice(),
                dynamic::encode(&Value::Text("x".into())).as_slice(),
                dynamic::encode(&Value::Float(f64::NAN)).as_slice(),
            ])),
            None,
        ));
        let ids: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 3]));
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("doc", DataType::Binary, true),
            Field::new("docs", DataType::List(Arc::new(items)), true),
        ]);
        let batch =
            RecordBatch::try_new(Arc::new(schema.clone()), vec![ids, docs, lists]).expect("batch");
        let client = client_schema(&schema);
        assert_eq!(client.field(0), schema.field(0));
        assert!(is_json(client.field(1)) && client.field(1).data_type() == &DataType::Utf8);
        let out = client_batch(batch, &client).expect("converted");
        assert_eq!(out.schema(), client);
        let text: Vec<Option<&str>> = out.column(1).as_string::<i32>().iter().collect();
        assert_eq!(
            text,
            [Some(r#"{"a":1,"b":[true,null]}"#), None, Some(r#""ff00""#)]
        );
        let list = out.column(2).as_list::<i32>();
        let items: Vec<Option<&str>> = list.values().as_string::<i32>().iter().collect();
        assert_eq!(
            items,
            [
                Some(r#"{"a":1,"b":[true,null]}"#),
                Some(r#""x""#),
                Some("null")
            ]
        );
    }
}

//! The eight kyma types on Arrow (SPEC §3), what an incoming Arrow column becomes, and how
//! a batch's values are made to fit a table's columns.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeListArray, Float32Builder, GenericListArray,
    OffsetSizeTrait, new_null_array,
};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, Field, Float32Type, Schema, SchemaRef, TimeUnit};
use arrow::util::display::FormatOptions;
use kyma_catalog::{Column, KymaType, TableSchema};

use crate::error::TableError;

/// The time zone of every kyma timestamp.
pub const UTC: &str = "UTC";

/// The Arrow type of a kyma type.
pub fn arrow_type(ty: KymaType) -> DataType {
    match ty {
        KymaType::Int => DataType::Int32,
        KymaType::Long => DataType::Int64,
        KymaType::Real => DataType::Float64,
        KymaType::Bool => DataType::Boolean,
        KymaType::String => DataType::Utf8,
        KymaType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into())),
        KymaType::Dynamic => DataType::Binary,
        KymaType::Vector(n) => DataType::FixedSizeList(
            Arc::new(Field::new_list_field(DataType::Float32, true)),
            n as i32,
        ),
    }
}

/// The kyma type whose Arrow type is `data_type` (the inverse of [`arrow_type`]); `None` for
/// an Arrow type no kyma type has.
pub fn kyma_type_of(data_type: &DataType) -> Option<KymaType> {
    let ty = match data_type {
        DataType::Int32 => KymaType::Int,
        DataType::Int64 => KymaType::Long,
        DataType::Float64 => KymaType::Real,
        DataType::Boolean => KymaType::Bool,
        DataType::Utf8 => KymaType::String,
        DataType::Timestamp(TimeUnit::Microsecond, _) => KymaType::Timestamp,
        DataType::Binary => KymaType::Dynamic,
        DataType::FixedSizeList(item, n) if item.data_type() == &DataType::Float32 => {
            KymaType::Vector(u32::try_from(*n).ok()?)
        }
        _ => return None,
    };
    Some(ty)
}

/// The Arrow field of a column.
pub fn arrow_field(column: &Column) -> Field {
    Field::new(&column.name, arrow_type(column.ty), column.nullable)
}

/// The Arrow schema of a table schema, columns in table order.
pub fn arrow_schema(schema: &TableSchema) -> SchemaRef {
    Arc::new(Schema::new(
        schema.columns.iter().map(arrow_field).collect::<Vec<_>>(),
    ))
}

/// The kyma type an incoming Arrow column gets when the table does not have it yet. Whatever
/// has no typed home (structs, maps, variable lists, times, intervals) becomes `dynamic`.
pub fn infer_kyma_type(column: &str, data_type: &DataType) -> Result<KymaType, TableError> {
    let ty = match data_type {
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::UInt8 | DataType::UInt16 => {
            KymaType::Int
        }
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => KymaType::Long,
        DataType::Float16 | DataType::Float32 | DataType::Float64 => KymaType::Real,
        DataType::Boolean => KymaType::Bool,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => KymaType::String,
        DataType::Decimal32(p, 0) | DataType::Decimal64(p, 0) | DataType::Decimal128(p, 0)
            if *p <= 18 =>
        {
            KymaType::Long
        }
        // Exact decimals keep every digit as text rather than round through a double.
        DataType::Decimal32(..)
        | DataType::Decimal64(..)
        | DataType::Decimal128(..)
        | DataType::Decimal256(..) => KymaType::String,
        DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64 => KymaType::Timestamp,
        DataType::FixedSizeList(item, n) if item.data_type().is_floating() && *n > 0 => {
            KymaType::Vector(*n as u32)
        }
        DataType::Dictionary(_, value) => infer_kyma_type(column, value)?,
        DataType::Null
        | DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_)
        | DataType::Struct(_)
        | DataType::Map(_, _)
        | DataType::List(_)
        | DataType::LargeList(_)
        | DataType::FixedSizeList(_, _)
        | DataType::Time32(_)
        | DataType::Time64(_)
        | DataType::Duration(_)
        | DataType::Interval(_) => KymaType::Dynamic,
        other => {
            return Err(TableError::UnmappedType {
                column: column.to_owned(),
                arrow_type: other.to_string(),
            });
        }
    };
    Ok(ty)
}

/// Makes `input` fit `column`: casts what converts without loss of meaning, refuses the rest
/// with a message naming the column, and checks NOT NULL.
pub fn conform(column: &Column, input: &ArrayRef) -> Result<ArrayRef, TableError> {
    let target = arrow_type(column.ty);
    let out = if input.data_type() == &target {
        input.clone()
    } else if input.data_type() == &DataType::Null {
        new_null_array(&target, input.len())
    } else {
        convert(column, input, &target)?
    };
    if !column.nullable && out.null_count() > 0 {
        return Err(TableError::NullInNotNull {
            column: column.name.clone(),
        });
    }
    Ok(out)
}

fn convert(column: &Column, input: &ArrayRef, target: &DataType) -> Result<ArrayRef, TableError> {
    let found = input.data_type();
    let source = match found {
        DataType::Dictionary(_, value) => value.as_ref(),
        other => other,
    };
    let castable = match column.ty {
        KymaType::Int | KymaType::Long => source.is_integer(),
        KymaType::Real => source.is_numeric(),
        KymaType::Bool => source == &DataType::Boolean,
        KymaType::String => matches!(
            source,
            DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Utf8View
                | DataType::Decimal32(..)
                | DataType::Decimal64(..)
                | DataType::Decimal128(..)
                | DataType::Decimal256(..)
        ),
        KymaType::Timestamp => matches!(
            source,
            DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64
        ),
        KymaType::Dynamic => return crate::dynamic::encode_array(&column.name, input.as_ref()),
        KymaType::Vector(n) => return to_vector(column, n, input),
    };
    if !castable {
        return Err(TableError::mismatch(
            &column.name,
            column.ty,
            format!(
                "the batch has {found} values; send {} values or write to a new column",
                target
            ),
        ));
    }
    let options = CastOptions {
        safe: false,
        format_options: FormatOptions::default(),
    };
    cast_with_options(input, target, &options).map_err(|e| {
        TableError::mismatch(
            &column.name,
            column.ty,
            format!("a {found} value does not fit: {e}"),
        )
    })
}

/// Float lists of exactly `n` items become `vector(n)`; any other dimension is refused.
fn to_vector(column: &Column, n: u32, input: &ArrayRef) -> Result<ArrayRef, TableError> {
    let mismatch = |found: String| TableError::mismatch(&column.name, column.ty, found);
    match input.data_type() {
        DataType::FixedSizeList(item, m) if item.data_type().is_numeric() => {
            if *m as u32 != n {
                return Err(mismatch(format!(
                    "the batch has vectors of dimension {m}; every vector must have {n} values"
                )));
            }
            Ok(cast_with_options(
                input,
                &arrow_type(column.ty),
                &CastOptions::default(),
            )?)
        }
        DataType::List(item) if item.data_type().is_numeric() => {
            from_lists(column, n, input.as_list::<i32>())
        }
        DataType::LargeList(item) if item.data_type().is_numeric() => {
            from_lists(column, n, input.as_list::<i64>())
        }
        other => Err(mismatch(format!(
            "the batch has {other} values; send lists of {n} floats"
        ))),
    }
}

fn from_lists<O: OffsetSizeTrait>(
    column: &Column,
    n: u32,
    list: &GenericListArray<O>,
) -> Result<ArrayRef, TableError> {
    let dim = n as usize;
    let mut values = Float32Builder::with_capacity(list.len() * dim);
    for row in 0..list.len() {
        if list.is_null(row) {
            values.append_nulls(dim);
            continue;
        }
        let items = list.value(row);
        if items.len() != dim {
            return Err(TableError::mismatch(
                &column.name,
                column.ty,
                format!(
                    "the vector at row {row} has {} values; every vector must have {n}",
                    items.len()
                ),
            ));
        }
        let floats = cast_with_options(&items, &DataType::Float32, &CastOptions::default())?;
        values.extend(floats.as_primitive::<Float32Type>().iter());
    }
    let field = Arc::new(Field::new_list_field(DataType::Float32, true));
    let list = FixedSizeListArray::try_new(
        field,
        n as i32,
        Arc::new(values.finish()),
        list.logical_nulls(),
    )?;
    Ok(Arc::new(list))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, ListArray, StringArray};
    use arrow::datatypes::Float64Type;

    #[test]
    fn ints_narrow_only_when_they_fit() {
        let col = Column::new("n", KymaType::Int);
        let fits: ArrayRef = Arc::new(Int64Array::from(vec![1, 2]));
        assert_eq!(
            conform(&col, &fits).expect("fits").data_type(),
            &DataType::Int32
        );
        let big: ArrayRef = Arc::new(Int64Array::from(vec![1, i64::MAX]));
        let err = conform(&col, &big).expect_err("overflow");
        assert!(err.to_string().contains("column `n` is int"), "{err}");
    }

    #[test]
    fn strings_into_an_int_column_are_a_type_mismatch() {
        let col = Column::new("n", KymaType::Long);
        let s: ArrayRef = Arc::new(StringArray::from(vec!["x"]));
        let err = conform(&col, &s).expect_err("mismatch");
        assert!(err.to_string().contains("Utf8"), "{err}");
    }

    #[test]
    fn vectors_of_another_dimension_fail_loudly() {
        let col = Column::new("v", KymaType::Vector(3));
        let ok: ArrayRef = Arc::new(ListArray::from_iter_primitive::<Float64Type, _, _>(vec![
            Some(vec![Some(1.0), Some(2.0), Some(3.0)]),
        ]));
        let out = conform(&col, &ok).expect("dimension 3");
        assert_eq!(out.data_type(), &arrow_type(KymaType::Vector(3)));
        let bad: ArrayRef = Arc::new(ListArray::from_iter_primitive::<Float64Type, _, _>(vec![
            Some(vec![Some(1.0), Some(2.0)]),
        ]));
        let err = conform(&col, &bad).expect_err("dimension 2");
        assert!(err.to_string().contains("has 2 values"), "{err}");
    }

    #[test]
    fn not_null_columns_refuse_nulls() {
        let col = Column::new("id", KymaType::Long).not_null();
        let a: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), None]));
        assert!(matches!(
            conform(&col, &a),
            Err(TableError::NullInNotNull { .. })
        ));
    }
}

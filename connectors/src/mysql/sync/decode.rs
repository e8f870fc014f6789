//! Row events → row changes, through a decoder prepared once per TABLE_MAP.
//!
//! A [`TableDecoder`] is built when a TABLE_MAP event maps a table in scope: for each
//! column it keeps the binlog type, its metadata, its signedness (from `information_schema`:
//! the binlog carries it only with `binlog_row_metadata`) and its [`Reading`]. Rows then
//! decode value by value with no per-row lookups — mysql_common's `BinlogRow` rebuilds the
//! optional metadata for every row, which is what makes naive decoders slow.
//!
//! The TABLE_MAP must agree with the table's definition as kyma read it: the same number of
//! columns, each of a binlog type its `information_schema` type is written as, and (with
//! `binlog_row_metadata=FULL`) the same names. When it does not, the binlog holds rows of a
//! layout kyma did not see (a schema change it missed), and [`TableDecoder::new`] says so
//! instead of decoding them into the wrong columns.
//!
//! Values go through [`kyma_value`] like the snapshot's, after the binlog's own encodings
//! are turned into the binary protocol's: enum indexes and set bitmasks into labels,
//! `TIMESTAMP` seconds into microseconds, latin1 text into UTF-8, a `year` of 0 (written as
//! 1900 by the driver) into NULL.

use std::sync::Arc;

use kyma_table::KymaValue;
use mysql_common::Value;
use mysql_common::binlog::events::{RowsEventData, TableMapEvent};
use mysql_common::binlog::value::BinlogValue;
use mysql_common::constants::ColumnType;
use mysql_common::io::ParseBuf;
use mysql_common::proto::MyDeserialize;

use super::super::types::{Reading, SourceColumn};
use super::super::values::kyma_value;
use super::binary::{self, Encoding};
use crate::sync::{Cell, ChangeOp, OldRow, RowChange, TableId};

/// The character set of a text column's bytes in the binlog (the snapshot reads UTF-8
/// always).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Charset {
    /// UTF-8 (`utf8mb4`, `utf8mb3`) and its subset `ascii`.
    Utf8,
    /// MySQL's `latin1`, which is Windows-1252.
    Latin1,
    /// Any other: its text is not read from the binlog (it would be misread as UTF-8).
    Other,
}

/// How one column decodes.
#[derive(Debug)]
struct ColumnDecoder {
    name: String,
    binlog_type: ColumnType,
    metadata: Vec<u8>,
    unsigned: bool,
    reading: Reading,
    charset: Charset,
    /// How its values are read from a row image.
    encoding: Encoding,
    /// Part of the primary key.
    in_key: bool,
}

/// A table's rows as one TABLE_MAP lays them out (see the module doc).
#[derive(Debug)]
pub struct TableDecoder {
    table: Arc<TableId>,
    columns: Vec<ColumnDecoder>,
}

impl TableDecoder {
    /// The decoder of `map` for `table`, whose columns kyma read as `layout`; `Err` says how
    /// the binlog's layout differs from it.
    pub fn new(
        map: &TableMapEvent<'_>,
        table: TableId,
        layout: &[(SourceColumn, Reading)],
    ) -> Result<Self, String> {
        let count = usize::try_from(map.columns_count()).unwrap_or(usize::MAX);
        if count != layout.len() {
            return Err(format!(
                "the binlog has {count} columns for the table where its definition has {}",
                layout.len()
            ));
        }
        let names = binlog_names(map);
        let mut columns = Vec::with_capacity(count);
        for (i, (column, reading)) in layout.iter().enumerate() {
            let binlog_type = map
                .get_column_type(i)
                .map_err(|e| format!("column `{}`: {e}", column.name))?
                .ok_or_else(|| format!("column `{}` is not in the TABLE_MAP", column.name))?;
            if !written_as(&column.data_type, binlog_type) {
                return Err(format!(
                    "column `{}` is {} but the binlog writes a {binlog_type:?}",
                    column.name, column.data_type
                ));
            }
            if let Some(name) = names.as_ref().and_then(|n| n.get(i))
                && name != &column.name
            {
                return Err(format!(
                    "column {} is `{}` but the binlog names it `{name}`",
                    i + 1,
                    column.name
                ));
            }
            let metadata = map.get_column_metadata(i).unwrap_or(&[]).to_vec();
            let charset = charset(column);
            columns.push(ColumnDecoder {
                name: column.name.clone(),
                encoding: Encoding::of(binlog_type, &metadata, reading, charset == Charset::Utf8),
                binlog_type,
                metadata,
                unsigned: column.column_type.contains("unsigned"),
                reading: reading.clone(),
                charset,
                in_key: column.in_primary_key,
            });
        }
        Ok(Self {
            table: Arc::new(table),
            columns,
        })
    }

    /// The table it decodes.
    pub fn table(&self) -> &TableId {
        &self.table
    }

    /// The row changes of one rows event; `Err` says why they cannot be read.
    pub fn changes(&self, event: &RowsEventData<'_>) -> Result<Vec<RowChange>, String> {
        let op = match event {
            RowsEventData::WriteRowsEventV1(_) | RowsEventData::WriteRowsEvent(_) => {
                ChangeOp::Insert
            }
            RowsEventData::UpdateRowsEventV1(_) | RowsEventData::UpdateRowsEvent(_) => {
                ChangeOp::Update
            }
            RowsEventData::DeleteRowsEventV1(_) | RowsEventData::DeleteRowsEvent(_) => {
                ChangeOp::Delete
            }
            RowsEventData::PartialUpdateRowsEvent(_) => {
                return Err(
                    "a partial JSON update (binlog_row_value_options=PARTIAL_JSON) cannot be read"
                        .into(),
                );
            }
        };
        let before: Option<Vec<bool>> = event
            .columns_before_image()
            .map(|bits| bits.iter().by_vals().collect());
        let after: Option<Vec<bool>> = event
            .columns_after_image()
            .map(|bits| bits.iter().by_vals().collect());
        let mut buf = ParseBuf(event.rows_data());
        let mut changes = Vec::new();
        // An update's before image, read for its key: kept only when the key changed.
        let mut before_key = Vec::with_capacity(self.columns.len());
        while !buf.is_empty() {
            let change = match (op, &before, &after) {
                (ChangeOp::Insert, _, Some(after)) => RowChange {
                    table: self.table.clone(),
                    op,
                    cells: self.image(after, &mut buf, Cell::Unchanged, false)?,
                    old: None,
                    key_order: None,
                },
                (ChangeOp::Delete, Some(before), _) => RowChange {
                    table: self.table.clone(),
                    op,
                    cells: self.image(before, &mut buf, Cell::Null, true)?,
                    old: None,
                    key_order: None,
                },
                (ChangeOp::Update, Some(before), Some(after)) => {
                    self.read_image(before, &mut buf, Cell::Null, true, &mut before_key)?;
                    let cells = self.image(after, &mut buf, Cell::Unchanged, false)?;
                    let key_changed = self
                        .columns
                        .iter()
                        .zip(before_key.iter().zip(&cells))
                        .any(|(c, (was, is))| c.in_key && was != is);
                    RowChange {
                        table: self.table.clone(),
                        op,
                        cells,
                        old: key_changed.then(|| OldRow {
                            cells: before_key.clone(),
                            whole: false,
                        }),
                        key_order: None,
                    }
                }
                _ => return Err("a rows event without the image it needs".into()),
            };
            changes.push(change);
        }
        Ok(changes)
    }

    /// One row image as a new vector of cells (see [`TableDecoder::read_image`]).
    fn image(
        &self,
        present: &[bool],
        buf: &mut ParseBuf<'_>,
        absent: Cell,
        key_only: bool,
    ) -> Result<Vec<Cell>, String> {
        let mut cells = Vec::with_capacity(self.columns.len());
        self.read_image(present, buf, absent, key_only, &mut cells)?;
        Ok(cells)
    }

    /// One row image into `cells` (cleared first): its null bitmap, then the values of the
    /// present, non-null columns; `absent` stands for the columns the image leaves out. With
    /// `key_only`, only the key columns are decoded (the others are skipped and read as
    /// NULL): what a delete or an update's before image is needed for.
    fn read_image(
        &self,
        present: &[bool],
        buf: &mut ParseBuf<'_>,
        absent: Cell,
        key_only: bool,
        cells: &mut Vec<Cell>,
    ) -> Result<(), String> {
        cells.clear();
        let sent = present.iter().filter(|p| **p).count();
        let nulls = buf
            .checked_eat(sent.div_ceil(8))
            .ok_or("a row image that ends in its null bitmap")?;
        let mut index = 0;
        for (column, present) in self.columns.iter().zip(present) {
            if !present {
                cells.push(absent.clone());
                continue;
            }
            let null = nulls[index / 8] & (1 << (index % 8)) != 0;
            index += 1;
            let cell = if null {
                Cell::Null
            } else if key_only && !column.in_key {
                column.skip(buf)?;
                Cell::Null
            } else {
                let value = column
                    .read(buf)
                    .map_err(|e| format!("column `{}`: {e}", column.name))?;
                value.map_or(Cell::Null, Cell::Value)
            };
            cells.push(cell);
        }
        Ok(())
    }
}

impl ColumnDecoder {
    /// Reads one value: the common encodings directly ([`super::binary`]; mysql_common would
    /// also read a signed MEDIUMINT without its sign), the rest through mysql_common.
    fn read(&self, buf: &mut ParseBuf<'_>) -> Result<Option<KymaValue>, String> {
        let value = match self.encoding {
            Encoding::Integer(width) => {
                let n = binary::integer(buf, width, self.unsigned)?;
                match i64::try_from(n) {
                    Ok(signed) => Value::Int(signed),
                    Err(_) => Value::UInt(u64::try_from(n).map_err(|e| e.to_string())?),
                }
            }
            Encoding::Float => Value::Float(f32::from_le_bytes(fixed(buf)?)),
            Encoding::Double => Value::Double(f64::from_le_bytes(fixed(buf)?)),
            Encoding::Text(prefix) => {
                let bytes = binary::text(buf, prefix)?;
                let text = String::from_utf8(bytes.to_vec())
                    .map_err(|_| "text that is not UTF-8".to_owned())?;
                return Ok(Some(KymaValue::String(text)));
            }
            Encoding::Decimal(precision, scale) => {
                let text = binary::decimal(buf, precision, scale)?;
                if self.reading == Reading::Real {
                    let real = text
                        .as_str()
                        .parse()
                        .map_err(|_| format!("`{}` is not a number", text.as_str()))?;
                    return Ok(Some(KymaValue::Real(real)));
                }
                Value::Bytes(text.as_str().as_bytes().to_vec())
            }
            Encoding::Datetime(digits) => {
                return Ok(binary::datetime(buf, digits)?.map(KymaValue::Timestamp));
            }
            Encoding::Other => return self.read_other(buf),
        };
        kyma_value(&self.reading, value)
    }

    /// Moves past one value without converting it.
    fn skip(&self, buf: &mut ParseBuf<'_>) -> Result<(), String> {
        if !self.encoding.skip(buf)? {
            self.read_other(buf)?;
        }
        Ok(())
    }

    /// Reads a value of an encoding mysql_common decodes.
    fn read_other(&self, buf: &mut ParseBuf<'_>) -> Result<Option<KymaValue>, String> {
        // The value borrows from both the metadata and the row, so it is read from a view of
        // the row with their common lifetime, and the row then skips what it consumed.
        let mut view = ParseBuf(buf.0);
        let value = BinlogValue::deserialize(
            (
                self.binlog_type,
                self.metadata.as_slice(),
                self.unsigned,
                false,
            ),
            &mut view,
        )
        .map_err(|e| format!("does not decode: {e}"))?;
        buf.skip(buf.len() - view.len());
        let value = match value {
            BinlogValue::Value(value) => value,
            BinlogValue::Jsonb(json) => {
                let json = serde_json::Value::try_from(json)
                    .map_err(|e| format!("a JSON value that does not decode: {e}"))?;
                Value::Bytes(json.to_string().into_bytes())
            }
            BinlogValue::JsonDiff(_) => return Err("a partial JSON update".into()),
        };
        if let Some(micros) = self.timestamp_micros(&value)? {
            return Ok(Some(KymaValue::Timestamp(micros)));
        }
        kyma_value(&self.reading, self.normalized(value)?)
    }

    /// `TIMESTAMP` values, which the binlog carries as seconds (`sec` or `sec.micros`).
    fn timestamp_micros(&self, value: &Value) -> Result<Option<i64>, String> {
        let (
            ColumnType::MYSQL_TYPE_TIMESTAMP2 | ColumnType::MYSQL_TYPE_TIMESTAMP,
            Reading::Timestamp,
        ) = (self.binlog_type, &self.reading)
        else {
            return Ok(None);
        };
        let seconds = match value {
            Value::Int(s) => return Ok(Some(s * 1_000_000)),
            Value::Bytes(text) => std::str::from_utf8(text).map_err(|e| e.to_string())?,
            other => return Err(format!("{other:?} is not a timestamp")),
        };
        let (whole, fraction) = seconds.split_once('.').unwrap_or((seconds, "0"));
        let whole: i64 = whole
            .parse()
            .map_err(|_| format!("`{seconds}` is not a timestamp"))?;
        let micros: i64 = format!("{fraction:0<6}")[..6]
            .parse()
            .map_err(|_| format!("`{seconds}` is not a timestamp"))?;
        Ok(Some(whole * 1_000_000 + micros))
    }

    /// The binlog's own encodings as the binary protocol's.
    fn normalized(&self, value: Value) -> Result<Value, String> {
        Ok(match (&self.reading, value) {
            (Reading::Enum(labels), Value::Int(index)) => {
                let label = usize::try_from(index)
                    .ok()
                    .and_then(|i| i.checked_sub(1))
                    .and_then(|i| labels.get(i))
                    .map_or("", String::as_str);
                Value::Bytes(label.as_bytes().to_vec())
            }
            (Reading::Set(labels), Value::Bytes(mask)) => {
                let bits = mask
                    .iter()
                    .rev()
                    .fold(0u64, |n, b| (n << 8) | u64::from(*b));
                let chosen: Vec<&str> = labels
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i < 64 && bits & (1 << i) != 0)
                    .map(|(_, l)| l.as_str())
                    .collect();
                Value::Bytes(chosen.join(",").into_bytes())
            }
            (Reading::Year, Value::Bytes(text)) => match text.as_slice() {
                b"1900" => Value::NULL,
                digits => Value::Bytes(digits.to_vec()),
            },
            (Reading::Text | Reading::Json, Value::Bytes(bytes)) => match self.charset {
                Charset::Utf8 => Value::Bytes(bytes),
                Charset::Latin1 => Value::Bytes(windows_1252(&bytes).into_bytes()),
                Charset::Other => {
                    return Err(
                        "its character set is neither UTF-8 nor latin1, which kyma reads from the binlog; convert the column to utf8mb4"
                            .into(),
                    );
                }
            },
            (_, value) => value,
        })
    }
}

/// The next `N` bytes.
fn fixed<const N: usize>(buf: &mut ParseBuf<'_>) -> Result<[u8; N], String> {
    let bytes = buf
        .checked_eat(N)
        .ok_or("a row image that ends inside a value")?;
    let mut out = [0; N];
    out.copy_from_slice(bytes);
    Ok(out)
}

/// The column names a TABLE_MAP carries (`binlog_row_metadata=FULL`), if it does.
fn binlog_names(map: &TableMapEvent<'_>) -> Option<Vec<String>> {
    let extractor =
        mysql_common::binlog::events::OptionalMetaExtractor::new(map.iter_optional_meta()).ok()?;
    let names: Vec<String> = extractor
        .iter_column_name()
        .map(|n| n.map(|n| n.name().into_owned()))
        .collect::<Result<_, _>>()
        .ok()?;
    (!names.is_empty()).then_some(names)
}

/// The character set a text column's bytes have in the binlog.
fn charset(column: &SourceColumn) -> Charset {
    match column.collation.as_deref() {
        None => Charset::Utf8,
        Some(c) if c.starts_with("latin1") => Charset::Latin1,
        Some(c) if ["utf8", "ascii", "binary"].iter().any(|p| c.starts_with(p)) => Charset::Utf8,
        Some(_) => Charset::Other,
    }
}

/// Whether the binlog writes a column of `information_schema` type `data_type` as `written`.
fn written_as(data_type: &str, written: ColumnType) -> bool {
    use ColumnType::*;
    let expected: &[ColumnType] = match data_type {
        "tinyint" => &[MYSQL_TYPE_TINY],
        "smallint" => &[MYSQL_TYPE_SHORT],
        "mediumint" => &[MYSQL_TYPE_INT24],
        "int" | "integer" => &[MYSQL_TYPE_LONG],
        "bigint" => &[MYSQL_TYPE_LONGLONG],
        "float" => &[MYSQL_TYPE_FLOAT],
        "double" | "real" => &[MYSQL_TYPE_DOUBLE],
        "decimal" | "numeric" => &[MYSQL_TYPE_NEWDECIMAL],
        "date" => &[MYSQL_TYPE_NEWDATE, MYSQL_TYPE_DATE],
        "datetime" => &[MYSQL_TYPE_DATETIME2, MYSQL_TYPE_DATETIME],
        "timestamp" => &[MYSQL_TYPE_TIMESTAMP2, MYSQL_TYPE_TIMESTAMP],
        "time" => &[MYSQL_TYPE_TIME2, MYSQL_TYPE_TIME],
        "year" => &[MYSQL_TYPE_YEAR],
        "bit" => &[MYSQL_TYPE_BIT],
        "char" | "binary" => &[MYSQL_TYPE_STRING],
        "varchar" | "varbinary" => &[MYSQL_TYPE_VARCHAR, MYSQL_TYPE_VAR_STRING],
        "tinytext" | "text" | "mediumtext" | "longtext" | "tinyblob" | "blob" | "mediumblob"
        | "longblob" => &[
            MYSQL_TYPE_BLOB,
            MYSQL_TYPE_TINY_BLOB,
            MYSQL_TYPE_MEDIUM_BLOB,
            MYSQL_TYPE_LONG_BLOB,
        ],
        "json" => &[MYSQL_TYPE_JSON, MYSQL_TYPE_BLOB],
        "enum" => &[MYSQL_TYPE_ENUM],
        "set" => &[MYSQL_TYPE_SET],
        "geometry" | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring"
        | "multipolygon" | "geometrycollection" | "geomcollection" => &[MYSQL_TYPE_GEOMETRY],
        _ => return true,
    };
    expected.contains(&written)
}

/// Windows-1252 (MySQL's `latin1`) as UTF-8.
fn windows_1252(bytes: &[u8]) -> String {
    /// 0x80–0x9F; the five bytes Windows-1252 leaves undefined map to the C1 controls, as
    /// MySQL's conversion does.
    const HIGH: [char; 32] = [
        '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8d}', 'Ž',
        '\u{8f}', '\u{90}', '‘', '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9d}',
        'ž', 'Ÿ',
    ];
    bytes
        .iter()
        .map(|b| match b {
            0x80..=0x9f => HIGH[usize::from(b - 0x80)],
            other => char::from(*other),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latin1_is_windows_1252() {
        assert_eq!(windows_1252(b"caf\xe9 \x80"), "café €");
    }

    #[test]
    fn schema_types_map_to_the_binlog_types_they_are_written_as() {
        assert!(written_as("int", ColumnType::MYSQL_TYPE_LONG));
        assert!(!written_as("int", ColumnType::MYSQL_TYPE_LONGLONG));
        assert!(written_as("longtext", ColumnType::MYSQL_TYPE_BLOB));
        assert!(written_as("enum", ColumnType::MYSQL_TYPE_ENUM));
    }
}

//! The binlog's encodings of the commonest column types, read straight from a row image
//! into kyma values: integers, floats, UTF-8 text and decimals, which make up most rows.
//! These paths allocate at most the value's own string; every other type goes through
//! mysql_common's `BinlogValue` (see [`super::decode`]). Each reader can also *skip* its
//! value, which is how an update's before image is read for its key columns alone.
//!
//! Encodings (MySQL `log_event.cc` / `decimal.c`; the same in MariaDB):
//!
//! - integers: little-endian, 1, 2, 3, 4 or 8 bytes; `float`, `double`: IEEE little-endian;
//! - `varchar`: a 1-byte length when the column's maximum byte length is below 256, else 2
//!   bytes, then the bytes; text and blob types: a length of 1–4 bytes (the TABLE_MAP
//!   metadata), then the bytes;
//! - `decimal(p, s)`: the integer digits, then the fraction digits, in big-endian groups of
//!   nine digits in four bytes, the partial group at the outer end of each in as few bytes
//!   as its digits need; the first byte's top bit set for a positive number, and every bit
//!   inverted for a negative one.

use mysql_common::constants::ColumnType;
use mysql_common::io::ParseBuf;

use super::super::types::Reading;

/// Bytes that hold a group of 0–9 decimal digits.
const DIGIT_BYTES: [usize; 10] = [0, 1, 1, 2, 2, 3, 3, 4, 4, 4];
/// Digits in a full group.
const GROUP_DIGITS: usize = 9;
/// The bytes of a `datetime` without its fraction.
const DATETIME_BYTES: usize = 5;
/// A decimal's text at most: 65 digits, a sign and a point.
const DECIMAL_TEXT: usize = 68;

/// How a column's values are read from a row image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// A little-endian integer of this many bytes.
    Integer(u8),
    /// A 4-byte float.
    Float,
    /// An 8-byte double.
    Double,
    /// Text behind a length of this many bytes.
    Text(u8),
    /// `decimal(precision, scale)`.
    Decimal(u8, u8),
    /// `datetime(n)` with this many fraction digits, read as a timestamp.
    Datetime(u8),
    /// Anything else (mysql_common decodes it).
    Other,
}

impl Encoding {
    /// The encoding of a column written as `binlog_type` with `metadata`, read as
    /// `reading`; text is read directly only when it is UTF-8 (`utf8`).
    pub fn of(binlog_type: ColumnType, metadata: &[u8], reading: &Reading, utf8: bool) -> Self {
        use ColumnType::*;
        match binlog_type {
            MYSQL_TYPE_TINY => Encoding::Integer(1),
            MYSQL_TYPE_SHORT => Encoding::Integer(2),
            MYSQL_TYPE_INT24 => Encoding::Integer(3),
            MYSQL_TYPE_LONG => Encoding::Integer(4),
            MYSQL_TYPE_LONGLONG => Encoding::Integer(8),
            MYSQL_TYPE_FLOAT => Encoding::Float,
            MYSQL_TYPE_DATETIME2 if *reading == Reading::Timestamp => match metadata.first() {
                Some(digits @ 0..=6) => Encoding::Datetime(*digits),
                _ => Encoding::Other,
            },
            MYSQL_TYPE_DOUBLE => Encoding::Double,
            MYSQL_TYPE_NEWDECIMAL => match metadata {
                [precision, scale, ..] if precision >= scale && *precision <= 65 => {
                    Encoding::Decimal(*precision, *scale)
                }
                _ => Encoding::Other,
            },
            MYSQL_TYPE_VARCHAR | MYSQL_TYPE_VAR_STRING if *reading == Reading::Text && utf8 => {
                match metadata {
                    [low, high, ..] => Encoding::Text(if u16::from_le_bytes([*low, *high]) < 256 {
                        1
                    } else {
                        2
                    }),
                    _ => Encoding::Other,
                }
            }
            MYSQL_TYPE_BLOB
            | MYSQL_TYPE_TINY_BLOB
            | MYSQL_TYPE_MEDIUM_BLOB
            | MYSQL_TYPE_LONG_BLOB
                if *reading == Reading::Text && utf8 =>
            {
                match metadata.first() {
                    Some(n @ 1..=4) => Encoding::Text(*n),
                    _ => Encoding::Other,
                }
            }
            _ => Encoding::Other,
        }
    }

    /// Moves `buf` past one value; `false` for [`Encoding::Other`], whose length only its
    /// decoder knows.
    pub fn skip(self, buf: &mut ParseBuf<'_>) -> Result<bool, String> {
        let width = match self {
            Encoding::Integer(n) => usize::from(n),
            Encoding::Float => 4,
            Encoding::Double => 8,
            Encoding::Decimal(precision, scale) => decimal_size(precision, scale),
            Encoding::Datetime(digits) => DATETIME_BYTES + usize::from(digits).div_ceil(2),
            Encoding::Text(prefix) => text_length(buf, prefix)?,
            Encoding::Other => return Ok(false),
        };
        if buf.checked_skip(width) {
            Ok(true)
        } else {
            Err("a row image that ends inside a value".into())
        }
    }
}

/// A little-endian integer of `width` bytes, sign-extended unless `unsigned`.
pub fn integer(buf: &mut ParseBuf<'_>, width: u8, unsigned: bool) -> Result<i128, String> {
    let bytes = buf
        .checked_eat(usize::from(width))
        .ok_or("a row image that ends inside an integer")?;
    let mut raw = [0u8; 8];
    raw[..bytes.len()].copy_from_slice(bytes);
    let value = u64::from_le_bytes(raw);
    if unsigned {
        return Ok(i128::from(value));
    }
    // Sign-extend from the value's width.
    let shift = 64 - 8 * u32::from(width);
    Ok(i128::from(((value << shift) as i64) >> shift))
}

/// The bytes of a length-prefixed text value.
pub fn text<'a>(buf: &mut ParseBuf<'a>, prefix: u8) -> Result<&'a [u8], String> {
    let length = text_length(buf, prefix)?;
    buf.checked_eat(length)
        .ok_or_else(|| "a row image that ends inside a text value".to_owned())
}

fn text_length(buf: &mut ParseBuf<'_>, prefix: u8) -> Result<usize, String> {
    let bytes = buf
        .checked_eat(usize::from(prefix))
        .ok_or("a row image that ends inside a length")?;
    let mut raw = [0u8; 8];
    raw[..bytes.len()].copy_from_slice(bytes);
    usize::try_from(u64::from_le_bytes(raw)).map_err(|_| "a text length beyond memory".into())
}

/// Reads a `datetime(digits)` as microseconds since the epoch (`None` for a zero or partial
/// date). Five big-endian bytes hold, above an offset of 2^39, `((year * 13 + month) << 5 |
/// day) << 17 | hour << 12 | minute << 6 | second`; the fraction follows in
/// `ceil(digits / 2)` big-endian bytes, in units of 10^(6 - 2 * ceil(digits / 2)) µs.
pub fn datetime(buf: &mut ParseBuf<'_>, digits: u8) -> Result<Option<i64>, String> {
    let fraction_bytes = usize::from(digits).div_ceil(2);
    let bytes = buf
        .checked_eat(DATETIME_BYTES + fraction_bytes)
        .ok_or("a row image that ends inside a datetime")?;
    let packed = bytes[..DATETIME_BYTES]
        .iter()
        .fold(0i64, |n, b| (n << 8) | i64::from(*b))
        - (1 << 39);
    let fraction = bytes[DATETIME_BYTES..]
        .iter()
        .fold(0i64, |n, b| (n << 8) | i64::from(*b));
    let micros = fraction * 100i64.pow(3 - u32::try_from(fraction_bytes).unwrap_or(3));
    let (ymd, hms) = (packed >> 17, packed & 0x1ffff);
    let (year_month, day) = (ymd >> 5, ymd & 0x1f);
    let (year, month) = (year_month / 13, year_month % 13);
    let time = |v: i64| u32::try_from(v).unwrap_or(u32::MAX);
    let at = i32::try_from(year)
        .ok()
        .and_then(|y| chrono::NaiveDate::from_ymd_opt(y, time(month), time(day)))
        .and_then(|date| {
            date.and_hms_micro_opt(
                time(hms >> 12),
                time((hms >> 6) & 0x3f),
                time(hms & 0x3f),
                time(micros),
            )
        });
    Ok(at.map(|t| t.and_utc().timestamp_micros()))
}

/// The bytes a `decimal(precision, scale)` takes.
fn decimal_size(precision: u8, scale: u8) -> usize {
    let (integer, fraction) = (usize::from(precision - scale), usize::from(scale));
    integer / GROUP_DIGITS * 4
        + DIGIT_BYTES[integer % GROUP_DIGITS]
        + fraction / GROUP_DIGITS * 4
        + DIGIT_BYTES[fraction % GROUP_DIGITS]
}

/// A decimal's text, as MySQL writes it (`-12.50`: no leading zeros, every scale digit).
#[derive(Debug)]
pub struct DecimalText {
    text: [u8; DECIMAL_TEXT],
    len: usize,
}

impl DecimalText {
    /// The text.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits, '-' and '.' are ever written.
        std::str::from_utf8(&self.text[..self.len]).unwrap_or_default()
    }

    fn push(&mut self, byte: u8) {
        if self.len < DECIMAL_TEXT {
            self.text[self.len] = byte;
            self.len += 1;
        }
    }

    /// `value` as exactly `digits` digits (leading zeros kept).
    fn push_digits(&mut self, value: u32, digits: usize) {
        let mut divisor = 10u32.pow(u32::try_from(digits.saturating_sub(1)).unwrap_or(0));
        for _ in 0..digits {
            self.push(b'0' + u8::try_from(value / divisor % 10).unwrap_or(0));
            divisor = (divisor / 10).max(1);
        }
    }
}

/// Reads a `decimal(precision, scale)`.
pub fn decimal(buf: &mut ParseBuf<'_>, precision: u8, scale: u8) -> Result<DecimalText, String> {
    let bytes = buf
        .checked_eat(decimal_size(precision, scale))
        .ok_or("a row image that ends inside a decimal")?;
    let negative = bytes.first().is_some_and(|b| b & 0x80 == 0);
    let mask = if negative { 0xff } else { 0 };
    let mut at = 0;
    let mut group = |digits: usize| -> u32 {
        let n = DIGIT_BYTES[digits];
        let mut value = 0u32;
        for (i, stored) in bytes.iter().enumerate().skip(at).take(n) {
            let mut byte = stored ^ mask;
            if i == 0 {
                byte ^= 0x80;
            }
            value = (value << 8) | u32::from(byte);
        }
        at += n;
        value
    };
    let (integer, fraction) = (usize::from(precision - scale), usize::from(scale));
    let mut out = DecimalText {
        text: [0; DECIMAL_TEXT],
        len: 0,
    };
    if negative {
        out.push(b'-');
    }
    let sign_len = out.len;
    let lead = integer % GROUP_DIGITS;
    let mut significant = false;
    let mut groups = (lead > 0)
        .then_some(lead)
        .into_iter()
        .chain(std::iter::repeat_n(GROUP_DIGITS, integer / GROUP_DIGITS));
    for digits in groups.by_ref() {
        let value = group(digits);
        if significant {
            out.push_digits(value, digits);
        } else if value > 0 {
            significant = true;
            let shown = value.checked_ilog10().map_or(1, |l| l as usize + 1);
            out.push_digits(value, shown);
        }
    }
    if !significant {
        out.push(b'0');
    }
    let mut any_fraction = false;
    if fraction > 0 {
        out.push(b'.');
        let tail = fraction % GROUP_DIGITS;
        let full = std::iter::repeat_n(GROUP_DIGITS, fraction / GROUP_DIGITS);
        for digits in full.chain((tail > 0).then_some(tail)) {
            let value = group(digits);
            any_fraction |= value > 0;
            out.push_digits(value, digits);
        }
    }
    if negative && !significant && !any_fraction {
        // Negative zero is written as zero.
        out.text.copy_within(sign_len..out.len, 0);
        out.len -= sign_len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `text` as MySQL stores a `decimal(precision, scale)`.
    fn stored(text: &str, precision: u8, scale: u8) -> Vec<u8> {
        let negative = text.starts_with('-');
        let (int, frac) = text
            .trim_start_matches('-')
            .split_once('.')
            .unwrap_or((text.trim_start_matches('-'), ""));
        let (integer, fraction) = (usize::from(precision - scale), usize::from(scale));
        let int = format!("{int:0>integer$}");
        let frac = format!("{frac:0<fraction$}");
        let mut bytes: Vec<u8> = Vec::new();
        let mut put = |digits: &str| {
            if digits.is_empty() {
                return;
            }
            let value: u32 = digits.parse().expect("digits");
            let n = DIGIT_BYTES[digits.len()];
            bytes.extend(&value.to_be_bytes()[4 - n..]);
        };
        let lead = integer % GROUP_DIGITS;
        put(&int[..lead]);
        for chunk in int.as_bytes()[lead..].chunks(GROUP_DIGITS) {
            put(std::str::from_utf8(chunk).expect("ascii"));
        }
        for chunk in frac.as_bytes().chunks(GROUP_DIGITS) {
            put(std::str::from_utf8(chunk).expect("ascii"));
        }
        bytes[0] ^= 0x80;
        if negative {
            bytes.iter_mut().for_each(|b| *b = !*b);
        }
        bytes
    }

    fn read(text: &str, precision: u8, scale: u8) -> String {
        let bytes = stored(text, precision, scale);
        let mut buf = ParseBuf(&bytes);
        let value = decimal(&mut buf, precision, scale).expect("a decimal");
        assert!(buf.is_empty(), "{text}: the whole value is read");
        value.as_str().to_owned()
    }

    #[test]
    fn decimals_read_as_mysql_writes_them() {
        assert_eq!(read("12345678.91", 10, 2), "12345678.91");
        assert_eq!(read("0.5", 12, 2), "0.50");
        assert_eq!(read("-0.5", 12, 2), "-0.50");
        assert_eq!(read("0", 12, 2), "0.00");
        assert_eq!(
            read("-12345678901234567890.1234", 30, 4),
            "-12345678901234567890.1234"
        );
        assert_eq!(read("1000000000", 10, 0), "1000000000");
        assert_eq!(read("7", 65, 30), format!("7.{}", "0".repeat(30)));
    }

    /// `datetime` as MySQL stores it with `digits` fraction digits.
    fn stored_datetime(
        ymd: (i64, i64, i64),
        hms: (i64, i64, i64),
        fraction: i64,
        digits: u8,
    ) -> Vec<u8> {
        let packed =
            ((((ymd.0 * 13 + ymd.1) << 5) | ymd.2) << 17 | hms.0 << 12 | hms.1 << 6 | hms.2)
                + (1 << 39);
        let mut bytes = packed.to_be_bytes()[3..].to_vec();
        let n = usize::from(digits).div_ceil(2);
        bytes.extend(&fraction.to_be_bytes()[8 - n..]);
        bytes
    }

    #[test]
    fn datetimes_read_to_the_microsecond_and_zero_dates_as_null() {
        let read = |bytes: Vec<u8>, digits| datetime(&mut ParseBuf(&bytes), digits);
        let second = 1_704_164_645; // 2024-01-02 03:04:05 UTC
        assert_eq!(
            read(stored_datetime((2024, 1, 2), (3, 4, 5), 0, 0), 0),
            Ok(Some(second * 1_000_000))
        );
        assert_eq!(
            read(stored_datetime((2024, 1, 2), (3, 4, 5), 6789, 4), 4),
            Ok(Some(second * 1_000_000 + 678_900))
        );
        assert_eq!(
            read(stored_datetime((2024, 1, 2), (3, 4, 5), 678_901, 6), 6),
            Ok(Some(second * 1_000_000 + 678_901))
        );
        assert_eq!(
            read(stored_datetime((0, 0, 0), (0, 0, 0), 0, 0), 0),
            Ok(None)
        );
    }

    #[test]
    fn integers_extend_their_sign_unless_unsigned() {
        let mut buf = ParseBuf(&[0x00, 0x00, 0x80]);
        assert_eq!(integer(&mut buf, 3, false), Ok(-8_388_608));
        let mut buf = ParseBuf(&[0xff, 0xff, 0xff]);
        assert_eq!(integer(&mut buf, 3, true), Ok(16_777_215));
        let mut buf = ParseBuf(&u64::MAX.to_le_bytes());
        assert_eq!(integer(&mut buf, 8, true), Ok(i128::from(u64::MAX)));
        let mut buf = ParseBuf(&(-2i64).to_le_bytes());
        assert_eq!(integer(&mut buf, 8, false), Ok(-2));
    }
}

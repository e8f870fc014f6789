//! Copying a collection in `_id` ranges, each at its own cluster time, when one snapshot
//! session cannot hold the whole copy (the server keeps snapshot history for
//! `minSnapshotHistoryWindowInSeconds`, 300 s by default; past it a read fails with
//! `SnapshotTooOld`, error 239).
//!
//! # Why it stays exact
//!
//! The copy reads in `_id` order. When the snapshot session gives out after key `k`, every
//! key up to `k` was read at the session's time `T0`. The rest is read in chunks, each a
//! snapshot read of its own at its own time `Tᵢ` covering the keys after the last chunk's
//! last key up to its own last key. The collection's copy then stands at a list of ranges,
//! each `(upper key, time)`: a streamed change of key `x` at time `t` is already in the
//! copy exactly when `t` ≤ the time of the range `x` falls in ([`RangeMark::covers_key`]) —
//! Estuary's per-key filter, made durable as the table's `since`.
//!
//! `$gt` is type-bracketed in MongoDB (`{_id: {$gt: 5}}` never returns a string), so the
//! chunks go bracket by bracket in BSON order — numbers, strings, ObjectIds — and each
//! bracket's end is a range of its own, at the time its last chunk saw nothing more. `_id`s
//! of other types (documents, binary, dates, doubles) have no range order here: a
//! collection holding them cannot be copied in ranges, and says so.
//!
//! # Key order
//!
//! [`key_order`] writes an `_id` as bytes that compare as MongoDB orders `_id`s under the
//! simple collation: a bracket tag, then integers as big-endian with the sign flipped,
//! strings as their UTF-8 bytes, ObjectIds as their 12 bytes.

use mongodb::bson::{Bson, doc};

use super::position::ClusterTime;
use crate::error::ConnectorError;
use crate::sync::SourcePosition;

/// Documents per chunk of a ranged copy.
pub const RANGE_DOCUMENTS: usize = 10_000;

/// The `_id` types a ranged copy reads, in MongoDB's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Bracket {
    /// Int32 and Int64.
    Integer,
    /// Strings.
    Text,
    /// ObjectIds.
    ObjectId,
}

impl Bracket {
    /// Every bracket, in MongoDB's order.
    pub const ALL: [Bracket; 3] = [Bracket::Integer, Bracket::Text, Bracket::ObjectId];

    /// The bracket of `id`, if it has one.
    pub fn of(id: &Bson) -> Option<Self> {
        match id {
            Bson::Int32(_) | Bson::Int64(_) => Some(Bracket::Integer),
            Bson::String(_) => Some(Bracket::Text),
            Bson::ObjectId(_) => Some(Bracket::ObjectId),
            _ => None,
        }
    }

    fn tag(self) -> u8 {
        match self {
            Bracket::Integer => 0x10,
            Bracket::Text => 0x20,
            Bracket::ObjectId => 0x70,
        }
    }

    /// The query-language filter of the bracket's `_id`s (its first chunk).
    pub fn filter(self) -> mongodb::bson::Document {
        let alias = match self {
            // `number` would take doubles and decimals, which have no key order here.
            Bracket::Integer => {
                return doc! { "$or": [ { "_id": { "$type": "int" } }, { "_id": { "$type": "long" } } ] };
            }
            Bracket::Text => "string",
            Bracket::ObjectId => "objectId",
        };
        doc! { "_id": { "$type": alias } }
    }

    /// An upper bound above every key of the bracket (no key's bytes start with `FF`
    /// thirteen times).
    pub fn end(self) -> Vec<u8> {
        let mut end = vec![self.tag()];
        end.extend([0xFF; 13]);
        end
    }
}

/// `id` as bytes that sort as MongoDB sorts `_id`s; `None` for types a ranged copy does not
/// read.
pub fn key_order(id: &Bson) -> Option<Vec<u8>> {
    let bracket = Bracket::of(id)?;
    let mut out = vec![bracket.tag()];
    match id {
        Bson::Int32(n) => out.extend((i64::from(*n) ^ i64::MIN).to_be_bytes()),
        Bson::Int64(n) => out.extend((n ^ i64::MIN).to_be_bytes()),
        Bson::String(s) => out.extend(s.as_bytes()),
        Bson::ObjectId(oid) => out.extend(oid.bytes()),
        _ => return None,
    }
    Some(out)
}

/// Where a collection copied in ranges stands: per range of keys, the time it was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeMark {
    /// The token the stream resumes after (the snapshot's).
    pub token: String,
    /// `(inclusive upper key, time)` in key order; the last range has no upper key.
    pub ranges: Vec<(Option<Vec<u8>>, ClusterTime)>,
}

const PREFIX: &str = "ranges:";

impl RangeMark {
    /// Whether `position` is a range mark.
    pub fn is_one(position: &SourcePosition) -> bool {
        position.0.starts_with(PREFIX)
    }

    /// Reads a mark the pipeline stored: `ranges:TOKEN/T.I@HEX,…,T.I@*`.
    pub fn parse(position: &SourcePosition) -> Result<Self, ConnectorError> {
        let bad = || ConnectorError::Source(format!("`{position}` is not a MongoDB range mark"));
        let rest = position.0.strip_prefix(PREFIX).ok_or_else(bad)?;
        let (token, ranges) = rest.split_once('/').ok_or_else(bad)?;
        let ranges = ranges
            .split(',')
            .map(|range| {
                let (time, upper) = range.split_once('@')?;
                let (s, i) = time.split_once('.')?;
                let time = (s.parse().ok()?, i.parse().ok()?);
                let upper = match upper {
                    "*" => None,
                    hex => Some(decode_hex(hex)?),
                };
                Some((upper, time))
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(bad)?;
        Ok(Self {
            token: token.to_owned(),
            ranges,
        })
    }

    /// The mark as the pipeline stores it.
    pub fn to_source(&self) -> SourcePosition {
        let ranges: Vec<String> = self
            .ranges
            .iter()
            .map(|(upper, (s, i))| match upper {
                Some(key) => format!("{s}.{i}@{}", encode_hex(key)),
                None => format!("{s}.{i}@*"),
            })
            .collect();
        SourcePosition(format!("{PREFIX}{}/{}", self.token, ranges.join(",")))
    }

    /// Whether a change of the key sorting at `key` at time `time` is in the copy.
    pub fn covers_key(&self, key: &[u8], time: ClusterTime) -> bool {
        self.ranges
            .iter()
            .find(|(upper, _)| upper.as_deref().is_none_or(|upper| key <= upper))
            .is_some_and(|(_, read_at)| time <= *read_at)
    }

    /// Whether a change at `time` is in the copy whatever its key.
    pub fn covers_all(&self, time: ClusterTime) -> bool {
        self.ranges.iter().all(|(_, read_at)| time <= *read_at)
    }
}

fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use mongodb::bson::oid::ObjectId;

    use super::*;

    #[test]
    fn key_order_sorts_as_mongodb_sorts_ids() {
        let oid = |hex: &str| Bson::ObjectId(ObjectId::parse_str(hex).expect("oid"));
        let ids = [
            Bson::Int64(i64::MIN),
            Bson::Int32(-5),
            Bson::Int64(-1),
            Bson::Int32(0),
            Bson::Int64(7),
            Bson::Int32(i32::MAX),
            Bson::Int64(i64::MAX),
            Bson::String(String::new()),
            Bson::String("A".into()),
            Bson::String("a".into()),
            Bson::String("ab".into()),
            Bson::String("é".into()),
            oid("000000000000000000000000"),
            oid("5f0000000000000000000001"),
            oid("ffffffffffffffffffffffff"),
        ];
        let keys: Vec<Vec<u8>> = ids
            .iter()
            .map(|id| key_order(id).expect("ordered"))
            .collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
        assert_eq!(
            key_order(&Bson::Int32(3)),
            key_order(&Bson::Int64(3)),
            "one number"
        );
        for bracket in Bracket::ALL {
            let inside = keys.iter().filter(|k| k[0] == bracket.tag());
            assert!(inside.clone().count() > 0);
            assert!(inside.into_iter().all(|k| *k < bracket.end()));
        }
        assert_eq!(key_order(&Bson::Double(1.0)), None);
    }

    #[test]
    fn a_change_is_covered_by_the_range_its_key_falls_in() {
        let key = |n: i64| key_order(&Bson::Int64(n)).expect("key");
        let mark = RangeMark {
            token: "82000003E800000001".into(),
            ranges: vec![
                (key(100).into(), (1000, 5)),
                (Some(Bracket::Integer.end()), (1000, 9)),
                (None, (1000, 12)),
            ],
        };
        let round_trip = RangeMark::parse(&mark.to_source()).expect("parse");
        assert_eq!(round_trip, mark);
        assert!(mark.covers_key(&key(100), (1000, 5)));
        assert!(!mark.covers_key(&key(100), (1000, 6)), "read at 5");
        assert!(mark.covers_key(&key(101), (1000, 9)));
        assert!(!mark.covers_key(&key(101), (1000, 10)));
        let text = key_order(&Bson::String("z".into())).expect("key");
        assert!(mark.covers_key(&text, (1000, 12)));
        assert!(mark.covers_all((1000, 5)));
        assert!(!mark.covers_all((1000, 6)));
        assert!(RangeMark::is_one(&mark.to_source()));
    }
}

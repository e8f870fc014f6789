//! Positions in a MongoDB change stream, as the sync seam stores them.
//!
//! - An **event** position is the event's cluster time and its resume token:
//!   `T.I/TOKEN` (`TOKEN` is the token's `_data`, upper-case hex). Idle positions are the
//!   post-batch resume token's, read the same way.
//! - A **snapshot** position is the snapshot's cluster time and the token of the change
//!   stream opened before it: `snapshot:T.I/TOKEN`. The stream resumes after `TOKEN` and
//!   the pipeline drops, per table, what the snapshot already holds.
//!
//! `covers(mark, txn)`: a snapshot at `T` holds every write at a cluster time ≤ `T` (a
//! multi-document transaction commits at one cluster time); an event position holds every
//! event whose resume token sorts at or before its own. Resume tokens (`_data`) are
//! KeyStrings: their bytes, hence their hex text, sort in stream order, and they start
//! with the cluster time (type byte `82`, then seconds and increment, big-endian), which is
//! how a post-batch resume token's time is read.

use std::cmp::Ordering;
use std::fmt;

use crate::error::ConnectorError;
use crate::sync::SourcePosition;

/// A MongoDB cluster time: seconds and increment.
pub type ClusterTime = (u32, u32);

/// A position in a MongoDB change stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MongoPosition {
    /// The cluster time of the event, or of the snapshot.
    pub time: ClusterTime,
    /// The resume token's `_data`, upper-case hex: where a stream resumes.
    pub token: String,
    /// Whether this is a snapshot's position (`time` is the snapshot's).
    pub snapshot: bool,
}

impl MongoPosition {
    /// The position of a resume token, its time read from the token itself.
    pub fn of_token(token: &str) -> Result<Self, ConnectorError> {
        let token = token.to_ascii_uppercase();
        let time = token_time(&token).ok_or_else(|| {
            ConnectorError::Source(format!(
                "resume token `{token}` does not start with a cluster time"
            ))
        })?;
        Ok(Self {
            time,
            token,
            snapshot: false,
        })
    }

    /// Reads a position the pipeline stored.
    pub fn parse(position: &SourcePosition) -> Result<Self, ConnectorError> {
        let bad = || {
            ConnectorError::Source(format!(
                "`{position}` is not a MongoDB change stream position"
            ))
        };
        let (snapshot, rest) = match position.0.strip_prefix("snapshot:") {
            Some(rest) => (true, rest),
            None => (false, position.0.as_str()),
        };
        let (time, token) = rest.split_once('/').ok_or_else(bad)?;
        let (seconds, increment) = time.split_once('.').ok_or_else(bad)?;
        let time = (
            seconds.parse().map_err(|_| bad())?,
            increment.parse().map_err(|_| bad())?,
        );
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        Ok(Self {
            time,
            token: token.to_ascii_uppercase(),
            snapshot,
        })
    }

    /// The position as the pipeline stores it.
    pub fn to_source(&self) -> SourcePosition {
        SourcePosition(self.to_string())
    }

    /// Whether the change at `txn` (an event position) is contained in data taken at
    /// `self` (see the module doc).
    pub fn covers(&self, txn: &MongoPosition) -> bool {
        if self.snapshot {
            txn.time <= self.time
        } else {
            compare_tokens(&txn.token, &self.token) != Ordering::Greater
        }
    }
}

impl fmt::Display for MongoPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.snapshot {
            f.write_str("snapshot:")?;
        }
        write!(f, "{}.{}/{}", self.time.0, self.time.1, self.token)
    }
}

/// Resume tokens in stream order (KeyString bytes; upper-case hex keeps their order).
fn compare_tokens(a: &str, b: &str) -> Ordering {
    a.cmp(b)
}

/// The cluster time a resume token's `_data` starts with.
pub fn token_time(token: &str) -> Option<ClusterTime> {
    let rest = token.strip_prefix("82")?;
    let seconds = u32::from_str_radix(rest.get(..8)?, 16).ok()?;
    let increment = u32::from_str_radix(rest.get(8..16)?, 16).ok()?;
    Some((seconds, increment))
}

/// Read-your-writes: whether a cursor at `cursor` holds every write at or before `wanted`,
/// the operation time an application's session reports after its write: `T.I`,
/// `Timestamp(T, I)` or `Timestamp({ t: T, i: I })` as mongosh prints it. A cursor holds
/// every write at a cluster time up to its own (a transaction's events share one).
pub fn reached(cursor: &SourcePosition, wanted: &str) -> Result<bool, ConnectorError> {
    let wanted = parse_operation_time(wanted).ok_or_else(|| {
        ConnectorError::invalid(
            "position",
            format!(
                "`{wanted}` is not a MongoDB operation time: pass your session's operationTime after the write as `T.I` (seconds and increment), e.g. `1700000000.3`"
            ),
        )
    })?;
    Ok(!cursor.0.is_empty() && MongoPosition::parse(cursor)?.time >= wanted)
}

/// `T.I`, `Timestamp(T, I)` or `Timestamp({ t: T, i: I })`.
fn parse_operation_time(text: &str) -> Option<ClusterTime> {
    let text = text.trim();
    let inner = match text.strip_prefix("Timestamp(") {
        Some(rest) => rest.strip_suffix(')')?,
        None => text,
    };
    let inner = inner.trim().trim_start_matches('{').trim_end_matches('}');
    let (seconds, increment) = inner.split_once([',', '.'])?;
    let number = |part: &str, label: &str| {
        let part = part.trim();
        part.strip_prefix(label)
            .map_or(part, |rest| rest.trim_start().trim_start_matches(':'))
            .trim()
            .parse()
            .ok()
    };
    Some((number(seconds, "t")?, number(increment, "i")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reaches_every_operation_time_up_to_its_own() {
        let cursor = SourcePosition(format!("1700000000.3/{}", token(1_700_000_000, 3, "04")));
        for wanted in [
            "1700000000.3",
            "Timestamp(1700000000, 2)",
            "Timestamp({ t: 1700000000, i: 3 })",
            "1699999999.9",
        ] {
            assert!(reached(&cursor, wanted).expect(wanted), "{wanted}");
        }
        assert!(!reached(&cursor, "1700000000.4").expect("a time"));
        let empty = SourcePosition(String::new());
        assert!(
            !reached(&empty, "1.0").expect("a time"),
            "an empty cursor reaches nothing"
        );
        assert!(
            reached(&empty, "0-1-42").is_err(),
            "the notation is checked first"
        );
        let snapshot = SourcePosition(format!("snapshot:1700000001.0/{}", token(1, 1, "04")));
        assert!(reached(&snapshot, "1700000000.9").expect("a time"));
        let error = reached(&cursor, "0/16B3748")
            .expect_err("not a time")
            .to_string();
        assert!(error.contains("operationTime"), "{error}");
    }

    /// A token of cluster time `(t, i)` followed by `rest`, as the server writes them.
    fn token(t: u32, i: u32, rest: &str) -> String {
        format!("82{t:08X}{i:08X}{rest}")
    }

    #[test]
    fn positions_round_trip() {
        let event =
            MongoPosition::of_token(&token(1_700_000_000, 3, "2b0229296e04")).expect("test input");
        assert_eq!(event.time, (1_700_000_000, 3));
        assert_eq!(
            event.token,
            token(1_700_000_000, 3, "2B0229296E04"),
            "hex is upper-cased"
        );
        assert_eq!(
            MongoPosition::parse(&event.to_source()).expect("test input"),
            event
        );
        let snapshot = MongoPosition {
            snapshot: true,
            time: (1_700_000_005, 1),
            ..event
        };
        assert!(snapshot.to_string().starts_with("snapshot:1700000005.1/82"));
        assert_eq!(
            MongoPosition::parse(&snapshot.to_source()).expect("test input"),
            snapshot
        );
        for bad in ["", "12/34", "1.2/", "1.2/xyz", "a.b/82"] {
            assert!(
                MongoPosition::parse(&SourcePosition(bad.into())).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_snapshot_covers_what_happened_at_or_before_its_time() {
        let event = |t, i| MongoPosition::of_token(&token(t, i, "01")).expect("test input");
        let snapshot = MongoPosition {
            snapshot: true,
            ..event(100, 5)
        };
        assert!(snapshot.covers(&event(100, 5)));
        assert!(snapshot.covers(&event(99, 9)));
        assert!(!snapshot.covers(&event(100, 6)));
        assert!(!snapshot.covers(&event(101, 0)));
    }

    #[test]
    fn an_event_position_covers_the_events_sorting_at_or_before_it() {
        // Two events of one cluster time (a sharded cluster, or one transaction's
        // statements) sort by what follows the time in their tokens.
        let first = MongoPosition::of_token(&token(100, 5, "0A")).expect("test input");
        let second = MongoPosition::of_token(&token(100, 5, "0B")).expect("test input");
        let high_water_mark = MongoPosition::of_token(&token(100, 5, "")).expect("test input");
        assert!(second.covers(&first));
        assert!(second.covers(&second));
        assert!(!first.covers(&second));
        assert!(
            !high_water_mark.covers(&first),
            "an idle mark at T does not hold T's events"
        );
        assert!(first.covers(&MongoPosition::of_token(&token(99, 1, "FF")).expect("test input")));
    }
}

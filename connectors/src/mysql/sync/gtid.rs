//! MariaDB GTID positions: the connector's cursor and every snapshot's position.
//!
//! A GTID is `domain-server-sequence`. A *position* is the last GTID applied per replication
//! domain, comma-separated (`0-1-951,1-2-17`), the form `@@gtid_binlog_pos`,
//! `BINLOG_GTID_POS()` and `@slave_connect_state` use. Under `gtid_strict_mode` sequence
//! numbers only grow within a domain, so "is this transaction contained in that data" is a
//! comparison per domain — which is why preflight requires strict mode. MySQL's UUID-based
//! GTID sets are a different notation and are never compared with these.

use std::collections::BTreeMap;
use std::fmt;

use crate::error::ConnectorError;
use crate::sync::SourcePosition;

/// One transaction's GTID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gtid {
    /// Replication domain.
    pub domain: u32,
    /// The server that originated it.
    pub server: u32,
    /// Its sequence number within the domain.
    pub sequence: u64,
}

impl fmt::Display for Gtid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.domain, self.server, self.sequence)
    }
}

impl Gtid {
    /// Parses `domain-server-sequence`.
    pub fn parse(text: &str) -> Result<Self, ConnectorError> {
        let bad = || ConnectorError::Source(format!("`{text}` is not a MariaDB GTID"));
        let mut parts = text.trim().splitn(3, '-');
        let mut next = || parts.next().ok_or_else(bad);
        Ok(Self {
            domain: next()?.parse().map_err(|_| bad())?,
            server: next()?.parse().map_err(|_| bad())?,
            sequence: next()?.parse().map_err(|_| bad())?,
        })
    }

    /// Reads the body of a MariaDB GTID event (type 162): sequence (8 bytes), domain
    /// (4 bytes), flags; the server is the event header's.
    pub fn from_event(body: &[u8], server: u32) -> Result<(Self, u8), ConnectorError> {
        let short = || ConnectorError::Source("a GTID event shorter than 13 bytes".into());
        let sequence = body.get(0..8).ok_or_else(short)?;
        let domain = body.get(8..12).ok_or_else(short)?;
        let flags = *body.get(12).ok_or_else(short)?;
        let mut seq = [0; 8];
        seq.copy_from_slice(sequence);
        let mut dom = [0; 4];
        dom.copy_from_slice(domain);
        Ok((
            Self {
                domain: u32::from_le_bytes(dom),
                server,
                sequence: u64::from_le_bytes(seq),
            },
            flags,
        ))
    }
}

/// The last GTID per domain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GtidPosition {
    last: BTreeMap<u32, Gtid>,
}

impl GtidPosition {
    /// Parses a position (empty: nothing applied yet).
    pub fn parse(text: &str) -> Result<Self, ConnectorError> {
        let mut position = Self::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            position.advance(Gtid::parse(part)?);
        }
        Ok(position)
    }

    /// Records `gtid` as its domain's last.
    pub fn advance(&mut self, gtid: Gtid) {
        self.last.insert(gtid.domain, gtid);
    }

    /// Whether everything in `other` is contained in this position: for every domain of
    /// `other`, this position is at or past its sequence.
    pub fn contains(&self, other: &GtidPosition) -> bool {
        other.last.values().all(|gtid| {
            self.last
                .get(&gtid.domain)
                .is_some_and(|mine| mine.sequence >= gtid.sequence)
        })
    }
}

impl fmt::Display for GtidPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.last.values().map(Gtid::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

/// Read-your-writes: whether a cursor at `cursor` holds every transaction of `wanted`, the
/// GTID position an application reads after its commit (`@@last_gtid` of its session, or
/// `@@gtid_binlog_pos`).
pub fn reached(cursor: &SourcePosition, wanted: &str) -> Result<bool, ConnectorError> {
    let wanted = GtidPosition::parse(wanted).map_err(|_| {
        ConnectorError::invalid(
            "position",
            format!(
                "`{wanted}` is not a MariaDB GTID position: pass `@@last_gtid` or `@@gtid_binlog_pos` read after your commit, e.g. `0-1-42`"
            ),
        )
    })?;
    Ok(GtidPosition::parse(&cursor.0)?.contains(&wanted))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reaches_a_position_once_past_it_in_every_domain() {
        let cursor = SourcePosition("0-1-42,1-2-7".into());
        assert!(reached(&cursor, "0-1-42").expect("a GTID"));
        assert!(reached(&cursor, "0-1-40,1-2-7").expect("a position"));
        assert!(!reached(&cursor, "0-1-43").expect("a GTID"));
        assert!(
            !reached(&cursor, "2-1-1").expect("a GTID"),
            "a domain it has not seen"
        );
        let empty = SourcePosition(String::new());
        assert!(
            !reached(&empty, "0-1-1").expect("a GTID"),
            "an empty cursor reaches nothing"
        );
        assert!(
            reached(&empty, "0/16B3748").is_err(),
            "the notation is checked first"
        );
        let error = reached(&cursor, "0/16B3748")
            .expect_err("not a GTID")
            .to_string();
        assert!(error.contains("@@last_gtid"), "{error}");
    }

    fn position(text: &str) -> GtidPosition {
        GtidPosition::parse(text).expect("a position")
    }

    #[test]
    fn positions_round_trip_in_domain_order() {
        assert_eq!(position("1-2-17, 0-1-951").to_string(), "0-1-951,1-2-17");
        assert_eq!(position("").to_string(), "");
        assert!(GtidPosition::parse("0-1").is_err());
        assert!(GtidPosition::parse("a-b-c").is_err());
    }

    #[test]
    fn containment_is_per_domain() {
        let mark = position("0-1-10,1-1-5");
        assert!(mark.contains(&position("0-1-10")));
        assert!(mark.contains(&position("0-2-3,1-1-5")));
        assert!(!mark.contains(&position("0-1-11")));
        assert!(
            !mark.contains(&position("2-1-1")),
            "a domain the mark has not seen"
        );
        assert!(mark.contains(&position("")));
        assert!(!position("").contains(&position("0-1-1")));
    }

    #[test]
    fn a_gtid_event_body_is_sequence_domain_flags() {
        let mut body = 951u64.to_le_bytes().to_vec();
        body.extend(3u32.to_le_bytes());
        body.push(1);
        let (gtid, flags) = Gtid::from_event(&body, 7).expect("an event");
        assert_eq!(gtid.to_string(), "3-7-951");
        assert_eq!(flags, 1);
        assert!(Gtid::from_event(&body[..12], 7).is_err());
    }
}

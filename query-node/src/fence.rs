//! Read-your-writes over synced tables: an application that has just committed on a source
//! passes the source's position after its commit (a Postgres LSN, a MariaDB GTID, a MongoDB
//! operation time), per sync connector; the statement runs only once this node's catalog
//! view holds that connector's data up to the position, or fails after a timeout saying how
//! far the connector has come and what to check.
//!
//! # When a position is reached
//!
//! A sync worker commits a connector's cursor in the same catalog transaction as the
//! tables' data it covers (and commits the position of an idle source too, so a fence on a
//! quiet connector completes). The view applies each catalog revision whole before it
//! publishes it. So once the view has applied the revision that installed a cursor
//! covering the position (the cursor's `mod_revision`), every *streaming* table of the
//! connector holds every change up to it. A table still being copied holds nothing yet: the
//! fence waits for it too. A table that failed and that kyma will not retry by itself
//! never reaches anything: the fence fails at once, naming it.
//!
//! A worker crash changes none of this: the cursor only ever moves forward through
//! commits, so a fence completes when the replacement worker has committed past the
//! position, and never shows a row that is later taken back.
//!
//! # Over Flight SQL
//!
//! The call header `x-kyma-min-position: <connector>=<position>` (several connectors:
//! separated by `;`, or the header repeated) on a statement's calls — ADBC: the statement
//! or connection option `adbc.flight.sql.rpc.call_header.x-kyma-min-position` — and
//! optionally `x-kyma-min-position-timeout-ms` (default [`DEFAULT_TIMEOUT`], at most
//! [`MAX_TIMEOUT`]).

use std::time::{Duration, Instant};

use kyma_catalog::{SyncPhase, now_ms, table_key};
use kyma_connectors::registry::{self, SourceKind};
use kyma_connectors::sync::SourcePosition;
use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::view::CatalogView;

/// The header naming the positions to wait for.
pub const MIN_POSITION_HEADER: &str = "x-kyma-min-position";
/// The header giving how long to wait, in milliseconds.
pub const TIMEOUT_HEADER: &str = "x-kyma-min-position-timeout-ms";
/// How long a fence waits when the call does not say.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait a call may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(300);

/// One connector's position to wait for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MinPosition {
    /// The sync connector.
    pub connector: String,
    /// The position, in the source's own notation.
    pub position: String,
}

/// What a call asks to wait for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PositionFence {
    /// The positions, each of its connector.
    pub positions: Vec<MinPosition>,
    /// How long to wait for all of them.
    pub timeout: Duration,
}

impl PositionFence {
    /// The fence a call's headers ask for, if any (a malformed header is an error naming it).
    pub fn from_headers(metadata: &MetadataMap) -> Result<Option<Self>, Status> {
        let mut positions = Vec::new();
        for value in metadata.get_all(MIN_POSITION_HEADER) {
            let text = value.to_str().map_err(|_| {
                Status::invalid_argument(format!("{MIN_POSITION_HEADER} must be ASCII text"))
            })?;
            for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
                positions.push(min_position(part)?);
            }
        }
        if positions.is_empty() {
            return Ok(None);
        }
        let timeout = match metadata.get(TIMEOUT_HEADER) {
            None => DEFAULT_TIMEOUT,
            Some(value) => value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_millis)
                .filter(|t| *t <= MAX_TIMEOUT)
                .ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "{TIMEOUT_HEADER} must be a whole number of milliseconds up to {}",
                        MAX_TIMEOUT.as_millis()
                    ))
                })?,
        };
        Ok(Some(Self { positions, timeout }))
    }

    /// Waits until `view` holds every position (see the module doc).
    pub async fn wait(&self, view: &CatalogView) -> Result<(), Status> {
        let deadline = Instant::now() + self.timeout;
        for wanted in &self.positions {
            let kind = sync_kind(view, wanted)?;
            let mut last = Progress::Behind(String::new());
            let remaining = deadline.saturating_duration_since(Instant::now());
            view.wait_until(remaining, |applied| {
                last = progress(view, kind, wanted, applied);
                !matches!(last, Progress::Behind(_))
            })
            .await;
            match last {
                Progress::Reached => {}
                Progress::Refused(status) => return Err(status),
                Progress::Behind(why) => {
                    return Err(Status::deadline_exceeded(format!(
                        "connector `{}` has not reached position {} within {} ms: {why}; is a CDC worker running it (GET /v1/connectors/{})? To wait longer, raise {TIMEOUT_HEADER}",
                        wanted.connector,
                        wanted.position,
                        self.timeout.as_millis(),
                        wanted.connector,
                    )));
                }
            }
        }
        Ok(())
    }
}

/// `connector=position`.
fn min_position(part: &str) -> Result<MinPosition, Status> {
    let (connector, position) = part
        .split_once('=')
        .map(|(c, p)| (c.trim(), p.trim()))
        .filter(|(c, p)| !c.is_empty() && !p.is_empty())
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "{MIN_POSITION_HEADER} takes `<connector>=<position>` (e.g. `pg_prod=0/16B3748`), not `{part}`"
            ))
        })?;
    Ok(MinPosition {
        connector: connector.to_owned(),
        position: position.to_owned(),
    })
}

/// The source kind of `wanted`'s connector, once it is known to sync and the position is
/// in its source's notation.
fn sync_kind(view: &CatalogView, wanted: &MinPosition) -> Result<&'static dyn SourceKind, Status> {
    let spec = view.connector(&wanted.connector).ok_or_else(|| {
        Status::not_found(format!(
            "{MIN_POSITION_HEADER} names connector `{}`, which does not exist",
            wanted.connector
        ))
    })?;
    if !spec.mode.syncs() {
        return Err(Status::invalid_argument(format!(
            "{MIN_POSITION_HEADER}: connector `{}` only federates, so its queries already read the source live; name a sync connector",
            wanted.connector
        )));
    }
    let kind =
        registry::kind(spec.source_type).map_err(|e| Status::failed_precondition(e.to_string()))?;
    // An empty cursor reaches nothing: this only checks the notation.
    kind.reached(&SourcePosition(String::new()), &wanted.position)
        .map_err(|e| {
            Status::invalid_argument(format!(
                "{MIN_POSITION_HEADER} for connector `{}`: {e}",
                wanted.connector
            ))
        })?;
    Ok(kind)
}

/// Where a connector stands against a wanted position, at applied revision `applied`.
enum Progress {
    Reached,
    /// Not yet: how far it has come.
    Behind(String),
    /// It never will without an operator.
    Refused(Status),
}

fn progress(
    view: &CatalogView,
    kind: &dyn SourceKind,
    wanted: &MinPosition,
    applied: i64,
) -> Progress {
    let mut copying = Vec::new();
    for entry in view.tables() {
        let table = &entry.state.table;
        let Some(sync) = entry
            .state
            .sync
            .as_ref()
            .filter(|_| table.catalog == wanted.connector)
        else {
            continue;
        };
        match (&sync.phase, &sync.failure) {
            (SyncPhase::Streaming, _) => {}
            (SyncPhase::Failed, Some(failure)) if !failure.retries => {
                return Progress::Refused(Status::failed_precondition(format!(
                    "connector `{}`: table {} failed and will not reach position {}: {}; {}",
                    wanted.connector, table, wanted.position, failure.reason, failure.fix
                )));
            }
            _ => copying.push(table_key(&table.schema, &table.table)),
        }
    }
    let Some(cursor) = view.cursor(&wanted.connector) else {
        return Progress::Behind("it has committed nothing yet".into());
    };
    let position = SourcePosition(cursor.value.position.clone());
    match kind.reached(&position, &wanted.position) {
        Err(e) => Progress::Refused(Status::internal(format!(
            "connector `{}`: cannot compare its committed position: {e}",
            wanted.connector
        ))),
        Ok(true) if copying.is_empty() && cursor.mod_revision <= applied => Progress::Reached,
        Ok(reached) => {
            let age_ms = now_ms().saturating_sub(cursor.value.committed_at_ms);
            let mut why = format!(
                "its data is committed up to {} ({age_ms} ms ago)",
                cursor.value.position
            );
            if reached && copying.is_empty() {
                why.push_str(", not yet applied by this node");
            }
            if !copying.is_empty() {
                why.push_str(&format!(
                    "; tables not streaming yet: {}",
                    copying.join(", ")
                ));
            }
            Progress::Behind(why)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> MetadataMap {
        let mut map = MetadataMap::new();
        for (name, value) in pairs {
            map.append(*name, MetadataValue::from_static(value));
        }
        map
    }

    #[test]
    fn headers_name_positions_per_connector_and_a_timeout() {
        assert_eq!(
            PositionFence::from_headers(&headers(&[])).expect("none"),
            None
        );
        let fence = PositionFence::from_headers(&headers(&[
            (MIN_POSITION_HEADER, "pg = 0/16B3748; maria=0-1-42,1-2-7"),
            (MIN_POSITION_HEADER, "mongo=Timestamp(1700000000, 3)"),
            (TIMEOUT_HEADER, "2500"),
        ]))
        .expect("valid")
        .expect("a fence");
        let named: Vec<(&str, &str)> = fence
            .positions
            .iter()
            .map(|p| (p.connector.as_str(), p.position.as_str()))
            .collect();
        assert_eq!(
            named,
            [
                ("pg", "0/16B3748"),
                ("maria", "0-1-42,1-2-7"),
                ("mongo", "Timestamp(1700000000, 3)")
            ]
        );
        assert_eq!(fence.timeout, Duration::from_millis(2500));
    }

    #[test]
    fn malformed_headers_are_refused_naming_the_header() {
        for (pairs, expected) in [
            (
                vec![(MIN_POSITION_HEADER, "0/16B3748")],
                "<connector>=<position>",
            ),
            (vec![(MIN_POSITION_HEADER, "pg=")], "<connector>=<position>"),
            (
                vec![(MIN_POSITION_HEADER, "pg=0/1"), (TIMEOUT_HEADER, "soon")],
                TIMEOUT_HEADER,
            ),
            (
                vec![(MIN_POSITION_HEADER, "pg=0/1"), (TIMEOUT_HEADER, "300001")],
                "up to 300000",
            ),
        ] {
            let error = PositionFence::from_headers(&headers(&pairs)).expect_err("malformed");
            assert_eq!(error.code(), tonic::Code::InvalidArgument);
            assert!(error.message().contains(expected), "{}", error.message());
        }
    }
}

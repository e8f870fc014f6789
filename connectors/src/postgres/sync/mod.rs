//! Postgres sync: the [`ChangeSource`] of a Postgres connector (SPEC §6; the contract is
//! [`crate::sync`]).
//!
//! # Design
//!
//! A connector in mode `sync` or `both` owns one **publication** and one **logical
//! replication slot** (pgoutput) at the source, both named after the connector
//! ([`SyncNames`]). The publication lists the tables the pipeline syncs (in scope, with a
//! primary key), by name: a table without a primary key is never published, since
//! publishing it would make the application's own UPDATEs and DELETEs on it fail.
//!
//! - **Positions** are LSNs (`16/B374D848`). A transaction's position is its commit LSN;
//!   the stream resumes after its end LSN. [`PgChangeSource::covers`]: a transaction is in
//!   data taken at a mark when its commit LSN is before the mark — for a snapshot taken at a
//!   slot's consistent point, exactly the transactions the snapshot sees.
//! - **The first snapshot** ([`ChangeSource::prepare`] without a cursor): the slot is
//!   created on a replication connection with `EXPORT_SNAPSHOT`, and an ordinary connection
//!   imports that snapshot and copies tables with binary `COPY` while the replication
//!   connection stays idle ([`snapshot`]). **Later snapshots** (a table added to the scope,
//!   a resync, a copy a crash interrupted) come from a *temporary* slot created the same
//!   way: it exports a snapshot at its own consistent point and disappears with its
//!   connection, while the connector's slot stays where the cursor is.
//! - **The stream** ([`stream`], on [`replication`]): pgoutput protocol 1 with streaming
//!   off, read on a task of its own that keeps answering keepalives while the pipeline
//!   writes and commits. The replication session pins TimeZone, DateStyle, IntervalStyle and
//!   extra_float_digits ([`setup::replication_conninfo`]), so text values read the same
//!   whatever the server's defaults; [`text`] turns them into kyma values equal to what the
//!   snapshot copies.
//! - **Fencing**: every destructive step — changing the publication, dropping or creating
//!   the slot, ending the slot's current reader — runs right after [`Fence::check`]. The
//!   slot's identity (name and creation LSN) is recorded with the cursor, and resuming is
//!   refused when the slot is gone or its confirmed position is past the cursor (it was
//!   created again: the pipeline acknowledges only committed positions, so a slot of its own
//!   is never ahead), instead of streaming on and silently skipping what lies between.
//!
//! Preflight ([`setup::preflight`]) refuses, naming the setting: `wal_level` other than
//! `logical`, a role without `REPLICATION`, too few free replication slots.

pub mod replication;
pub mod setup;
pub mod snapshot;
pub mod stream;
pub mod text;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use kyma_catalog::ConnectorSpec;

pub use setup::{
    SlotState, SyncNames, SyncTable, classify, discover_tables, drop_source_objects, format_lsn,
    parse_lsn, preflight, replication_conninfo, slot_state,
};

use self::replication::{PgReplicationStream, SlotCreation};
use self::snapshot::PgSnapshot;
use self::stream::PgChangeStream;
use crate::error::ConnectorError;
use crate::postgres::connect;
use crate::secrets::SecretResolver;
use crate::sync::{
    ChangeSource, ChangeStream, Fence, Prepared, Resume, Snapshot, SourcePosition, SourceTable,
    TableId,
};

/// The change log of one Postgres connector (see the module docs).
pub struct PgChangeSource {
    spec: ConnectorSpec,
    secrets: SecretResolver,
    names: SyncNames,
    client: Option<tokio_postgres::Client>,
    tables: Arc<BTreeMap<TableId, SyncTable>>,
}

impl std::fmt::Debug for PgChangeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgChangeSource")
            .field("connector", &self.spec.name)
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

impl PgChangeSource {
    /// The source of connector `spec`; connects on first use.
    pub fn new(spec: &ConnectorSpec, secrets: &SecretResolver) -> Self {
        Self {
            names: SyncNames::of(&spec.name),
            spec: spec.clone(),
            secrets: secrets.clone(),
            client: None,
            tables: Arc::default(),
        }
    }

    /// An ordinary connection (reconnecting when the last one broke).
    async fn client(&mut self) -> Result<&tokio_postgres::Client, ConnectorError> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = Some(connect(&self.spec.connection, &self.secrets).await?);
        }
        self.client
            .as_ref()
            .ok_or_else(|| ConnectorError::Source("no connection to the source".into()))
    }

    /// The confirmed position of a slot that was just created: its consistent point.
    async fn consistent_point(&mut self, slot: &str) -> Result<SourcePosition, ConnectorError> {
        let client = self.client().await?;
        let lsn = slot_state(client, slot)
            .await?
            .and_then(|s| s.confirmed_flush)
            .ok_or_else(|| ConnectorError::Unreachable {
                field: "connection.url".into(),
                reason: format!("the new replication slot {slot} has no position yet"),
            })?;
        Ok(SourcePosition(format_lsn(lsn)))
    }

    /// A snapshot exported by `slot` (just created), copied through a new connection.
    async fn open_snapshot(
        &mut self,
        slot: SlotCreation,
        name: &str,
    ) -> Result<Box<dyn Snapshot>, ConnectorError> {
        let position = self.consistent_point(name).await?;
        let reader = connect(&self.spec.connection, &self.secrets).await?;
        let snapshot = PgSnapshot::open(slot, reader, position, self.tables.clone()).await?;
        Ok(Box::new(snapshot))
    }

    /// Creates the connector's slot (dropping one an abandoned attempt left) and returns its
    /// first snapshot.
    async fn create_slot(&mut self, fence: &dyn Fence) -> Result<Prepared, ConnectorError> {
        let slot = self.names.slot.clone();
        fence
            .check(&format!(
                "dropping replication slot {slot} left by an earlier attempt"
            ))
            .await?;
        let names = self.names.clone();
        setup::release_slot(self.client().await?, &names, true).await?;
        fence
            .check(&format!("creating replication slot {slot}"))
            .await?;
        let conninfo = replication_conninfo(&self.spec.connection, &self.secrets)?;
        let creation = SlotCreation::create(&conninfo, &self.names).await?;
        let snapshot = self.open_snapshot(creation, &slot).await?;
        Ok(Prepared {
            source_id: format!("{slot}@{}", snapshot.position()),
            initial: Some(snapshot),
        })
    }

    /// The connector's slot; fails (definitely) when it is gone or confirmed past `cursor`:
    /// it was dropped (and maybe created again), so the changes after the cursor are lost.
    async fn check_slot_not_past(
        &mut self,
        cursor: &SourcePosition,
    ) -> Result<SlotState, ConnectorError> {
        let slot = self.names.slot.clone();
        let lsn = parse_lsn(&cursor.0)?;
        let recreate = "delete the connector and register it again to copy every table again";
        match slot_state(self.client().await?, &slot).await? {
            None => Err(ConnectorError::Source(format!(
                "replication slot {slot} was dropped at the source, so changes after {cursor} are lost to kyma; {recreate}"
            ))),
            Some(SlotState {
                confirmed_flush: Some(confirmed),
                ..
            }) if confirmed > lsn => Err(ConnectorError::Source(format!(
                "replication slot {slot} is at {}, past kyma's cursor {cursor}: it was dropped and created again, and the changes between are lost to kyma; {recreate}",
                format_lsn(confirmed)
            ))),
            Some(state) => Ok(state),
        }
    }

    /// Checks that the connector's slot is the one `resume` is a position in, and frees it
    /// from a previous reader.
    async fn resume_slot(
        &mut self,
        resume: &Resume,
        fence: &dyn Fence,
    ) -> Result<Prepared, ConnectorError> {
        let slot = self.names.slot.clone();
        if let Some(recorded) = &resume.source_id
            && recorded.split('@').next() != Some(slot.as_str())
        {
            return Err(ConnectorError::Source(format!(
                "kyma's cursor is a position in replication slot {recorded}, but the connector's slot is {slot}; delete the connector and register it again to copy every table again"
            )));
        }
        let state = self.check_slot_not_past(&resume.position).await?;
        if let Some(pid) = state.active_pid {
            fence
                .check(&format!(
                    "ending the reader of replication slot {slot} (pid {pid})"
                ))
                .await?;
            let names = self.names.clone();
            setup::release_slot(self.client().await?, &names, false).await?;
        }
        Ok(Prepared {
            source_id: resume.source_id.clone().unwrap_or(slot),
            initial: None,
        })
    }
}

#[async_trait]
impl ChangeSource for PgChangeSource {
    async fn preflight(&mut self) -> Result<(), ConnectorError> {
        let names = self.names.clone();
        preflight(self.client().await?, &names).await
    }

    async fn discover(&mut self) -> Result<Vec<SourceTable>, ConnectorError> {
        let scope = self.spec.scope.clone();
        let tables = discover_tables(self.client().await?, &scope).await?;
        let neutral = tables.iter().map(SyncTable::to_source).collect();
        self.tables = Arc::new(tables.into_iter().map(|t| (t.id(), t)).collect());
        Ok(neutral)
    }

    async fn prepare(
        &mut self,
        tables: &[&SourceTable],
        resume: Option<&Resume>,
        fence: &dyn Fence,
    ) -> Result<Prepared, ConnectorError> {
        let catalog = self.tables.clone();
        let published: Vec<&SyncTable> = tables.iter().filter_map(|t| catalog.get(&t.id)).collect();
        let names = self.names.clone();
        setup::ensure_publication(self.client().await?, &names, &published, fence).await?;
        match resume {
            None => self.create_slot(fence).await,
            Some(resume) => self.resume_slot(resume, fence).await,
        }
    }

    async fn snapshot(&mut self, _fence: &dyn Fence) -> Result<Box<dyn Snapshot>, ConnectorError> {
        // A temporary slot touches nothing of the connector's: no fence is needed.
        let name = temporary_slot_name(&self.names);
        let conninfo = replication_conninfo(&self.spec.connection, &self.secrets)?;
        let creation = SlotCreation::temporary(&conninfo, &name, &self.names).await?;
        self.open_snapshot(creation, &name).await
    }

    async fn stream(
        &mut self,
        from: &SourcePosition,
    ) -> Result<Box<dyn ChangeStream>, ConnectorError> {
        let conninfo = replication_conninfo(&self.spec.connection, &self.secrets)?;
        let stream =
            PgReplicationStream::resume(&conninfo, &self.names, parse_lsn(&from.0)?).await?;
        // pg_walstream creates a slot that is missing when it starts: one dropped since
        // `prepare` checked it would come back at today's position, past the cursor.
        self.check_slot_not_past(from).await?;
        let types = connect(&self.spec.connection, &self.secrets).await?;
        Ok(Box::new(PgChangeStream::new(
            stream,
            types,
            self.spec.scope.clone(),
        )))
    }

    fn covers(&self, mark: &SourcePosition, txn: &SourcePosition) -> Result<bool, ConnectorError> {
        Ok(parse_lsn(&txn.0)? < parse_lsn(&mark.0)?)
    }

    async fn teardown(&mut self) -> Result<(), ConnectorError> {
        let names = self.names.clone();
        drop_source_objects(self.client().await?, &names).await
    }
}

/// A temporary slot's name: the connector's slot name and a random suffix (at most 63
/// bytes of `[a-z0-9_]`), so that concurrent snapshots never collide.
fn temporary_slot_name(names: &SyncNames) -> String {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{}_c{}", names.slot, &suffix[..6])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_slot_names_are_valid_and_distinct() {
        let names = SyncNames::of(&"x".repeat(300));
        let (a, b) = (temporary_slot_name(&names), temporary_slot_name(&names));
        assert_ne!(a, b);
        for name in [a, b] {
            assert!(name.len() <= 63, "{name}");
            assert!(
                name.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_'),
                "{name}"
            );
        }
    }

    #[test]
    fn a_transaction_is_covered_when_it_commits_before_the_mark() {
        let source = PgChangeSource::new(
            &serde_json::from_value(serde_json::json!({
                "name": "pg", "type": "postgres", "mode": "sync",
                "connection": {"url": "postgres://u@h/db"}}))
            .expect("spec"),
            &SecretResolver::new("/nonexistent"),
        );
        let p = |s: &str| SourcePosition(s.into());
        assert!(source.covers(&p("0/20"), &p("0/1F")).expect("lsn"));
        assert!(!source.covers(&p("0/20"), &p("0/20")).expect("lsn"));
        assert!(source.covers(&p("x"), &p("0/1")).is_err());
    }
}

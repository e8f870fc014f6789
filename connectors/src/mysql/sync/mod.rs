//! MariaDB sync: the binlog behind the [`ChangeSource`] seam.
//!
//! # Design
//!
//! - **Nothing to create at the source.** MariaDB has no slots: the binlog is read by
//!   position, kept by the server's retention. `prepare` records the server's identity and,
//!   for a connector without a cursor, takes the first snapshot; `teardown` has nothing to
//!   drop.
//! - **Positions** are MariaDB GTID positions ([`gtid`]): the cursor after each committed
//!   batch, and each snapshot's position. `covers(mark, txn)` compares per GTID domain.
//! - **Snapshot** ([`snapshot`]): `START TRANSACTION WITH CONSISTENT SNAPSHOT` and
//!   `BINLOG_GTID_POS(Binlog_snapshot_file, Binlog_snapshot_position)`, no lock. Each copy
//!   commits with its table's `since` = that position; streamed transactions it covers are
//!   dropped for the table, so snapshot and stream meet exactly.
//! - **Stream** ([`stream`]): GTID-positioned `COM_BINLOG_DUMP`, MariaDB's own GTID event
//!   parsed here, heartbeats so an idle source still advances, DDL as a schema checkpoint.
//!   Rows decode through a decoder prepared per TABLE_MAP ([`decode`]) and the value
//!   conversion the snapshot uses, so both agree value for value.
//! - **Exactly once** comes from the pipeline: a batch's rows and the GTID position after its
//!   last transaction commit in one catalog transaction; after a crash the stream resumes at
//!   the committed position and transactions the cursor covers are skipped. There is nothing
//!   to acknowledge at the source.
//! - **Preflight** ([`setup`]) refuses, by name, the settings and privileges sync cannot work
//!   with. MySQL proper is refused for sync (its snapshot path is not verified).

pub mod binary;
pub mod decode;
pub mod gtid;
pub mod setup;
pub mod snapshot;
pub mod stream;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use kyma_catalog::{ConnectorSpec, ScopeSpec};
use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use super::connect;
use super::types::{self, read_catalog};
use crate::error::ConnectorError;
use crate::secrets::SecretResolver;
use crate::sync::{
    ChangeSource, ChangeStream, Fence, Prepared, Resume, Snapshot, SourceColumn, SourcePosition,
    SourceTable, TableId,
};
use gtid::GtidPosition;
use snapshot::{Layout, MySnapshot};
use stream::MyChangeStream;

/// The binlog of a MariaDB connector (see the module doc).
pub struct MyChangeSource {
    spec: ConnectorSpec,
    secrets: SecretResolver,
    /// The tables in scope as last discovered, with how each column reads.
    layouts: Layouts,
}

/// The tables in scope with how each column reads, as defined at `read_at`: the binlog
/// position read just *after* the definitions, so that every schema change they reflect is
/// at or before it.
#[derive(Debug, Clone, Default)]
pub struct Layouts {
    /// Each table's columns.
    pub tables: BTreeMap<TableId, Layout>,
    /// Where the binlog was when they had been read.
    pub read_at: GtidPosition,
}

impl MyChangeSource {
    /// The change log of connector `spec`.
    pub fn new(spec: &ConnectorSpec, secrets: &SecretResolver) -> Self {
        Self {
            spec: spec.clone(),
            secrets: secrets.clone(),
            layouts: Layouts::default(),
        }
    }

    async fn connect(&self) -> Result<Conn, ConnectorError> {
        connect(&self.spec.connection, &self.secrets).await
    }

    async fn open_snapshot(&self) -> Result<Box<dyn Snapshot>, ConnectorError> {
        let conn = self.connect().await?;
        let layouts = Arc::new(self.layouts.tables.clone());
        Ok(Box::new(MySnapshot::open(conn, layouts).await?))
    }
}

/// The columns of every table in `scope`, each with its reading, and where the binlog was
/// once they had been read.
pub async fn read_layouts(conn: &mut Conn, scope: &ScopeSpec) -> Result<Layouts, ConnectorError> {
    let catalog = read_catalog(conn, &scope.include_schemas).await?;
    Ok(Layouts {
        tables: layouts_of(catalog.columns, scope),
        read_at: binlog_position(conn).await?,
    })
}

/// Where the binlog is now (`@@gtid_binlog_pos`).
async fn binlog_position(conn: &mut Conn) -> Result<GtidPosition, ConnectorError> {
    let position: Option<String> = conn
        .query_first("SELECT @@gtid_binlog_pos")
        .await
        .map_err(super::refused)?;
    GtidPosition::parse(&position.unwrap_or_default())
}

fn layouts_of(columns: Vec<types::SourceColumn>, scope: &ScopeSpec) -> BTreeMap<TableId, Layout> {
    let mut layouts: BTreeMap<TableId, Layout> = BTreeMap::new();
    for column in columns {
        if !scope.covers(&column.schema, &column.table) {
            continue;
        }
        let reading = types::reading(&column, scope).reading;
        layouts
            .entry(TableId::new(&column.schema, &column.table))
            .or_default()
            .push((column, reading));
    }
    layouts
}

/// A layout's columns as the pipeline sees them: names, kyma types and warnings.
pub fn columns_of(layout: &Layout, scope: &ScopeSpec) -> Vec<SourceColumn> {
    layout
        .iter()
        .map(|(column, reading)| SourceColumn {
            name: column.name.clone(),
            ty: reading.kyma_type(),
            warning: types::reading(column, scope).warning,
        })
        .collect()
}

#[async_trait]
impl ChangeSource for MyChangeSource {
    async fn preflight(&mut self) -> Result<(), ConnectorError> {
        let mut conn = self.connect().await?;
        let checked = setup::preflight(&mut conn, &self.spec.scope).await;
        let _ = conn.disconnect().await;
        checked
    }

    async fn discover(&mut self) -> Result<Vec<SourceTable>, ConnectorError> {
        let mut conn = self.connect().await?;
        let catalog = read_catalog(&mut conn, &self.spec.scope.include_schemas).await?;
        let read_at = binlog_position(&mut conn).await?;
        let _ = conn.disconnect().await;
        let layouts = layouts_of(catalog.columns, &self.spec.scope);
        let keys: BTreeMap<TableId, Vec<String>> = catalog
            .keys
            .into_iter()
            .map(|((s, t), key)| (TableId::new(s, t), key))
            .collect();
        let estimates: BTreeMap<TableId, u64> = catalog
            .estimated_rows
            .into_iter()
            .map(|((s, t), n)| (TableId::new(s, t), n))
            .collect();
        let tables = layouts
            .iter()
            .map(|(id, layout)| SourceTable {
                id: id.clone(),
                columns: columns_of(layout, &self.spec.scope),
                key: keys.get(id).cloned().unwrap_or_default(),
                estimated_rows: estimates.get(id).copied().unwrap_or(0),
            })
            .collect();
        self.layouts = Layouts {
            tables: layouts,
            read_at,
        };
        Ok(tables)
    }

    async fn prepare(
        &mut self,
        _tables: &[&SourceTable],
        resume: Option<&Resume>,
        _fence: &dyn Fence,
    ) -> Result<Prepared, ConnectorError> {
        let mut conn = self.connect().await?;
        let source_id = setup::source_id(&mut conn).await?;
        let _ = conn.disconnect().await;
        if let Some(resume) = resume {
            if let Some(recorded) = &resume.source_id
                && recorded != &source_id
            {
                return Err(ConnectorError::Source(format!(
                    "the cursor ({}) is a position on {recorded}, but the source is now {source_id}; its GTID history is not the one the cursor counts in: resync the connector",
                    resume.position
                )));
            }
            return Ok(Prepared {
                source_id,
                initial: None,
            });
        }
        Ok(Prepared {
            source_id,
            initial: Some(self.open_snapshot().await?),
        })
    }

    async fn snapshot(&mut self, _fence: &dyn Fence) -> Result<Box<dyn Snapshot>, ConnectorError> {
        self.open_snapshot().await
    }

    async fn stream(
        &mut self,
        from: &SourcePosition,
    ) -> Result<Box<dyn ChangeStream>, ConnectorError> {
        let stream =
            MyChangeStream::open(&self.spec, &self.secrets, self.layouts.clone(), from).await?;
        Ok(Box::new(stream))
    }

    fn covers(&self, mark: &SourcePosition, txn: &SourcePosition) -> Result<bool, ConnectorError> {
        Ok(GtidPosition::parse(&mark.0)?.contains(&GtidPosition::parse(&txn.0)?))
    }

    async fn teardown(&mut self) -> Result<(), ConnectorError> {
        // Nothing was created at the source.
        Ok(())
    }
}

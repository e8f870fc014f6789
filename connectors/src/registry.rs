//! The registry of source kinds: the one place that knows which [`SourceType`]s exist and
//! what each can do. Everything else — registration, the CDC worker, connector deletion —
//! asks here instead of matching on the type.

use async_trait::async_trait;
use kyma_catalog::{ConnectorSpec, SourceType};

use crate::error::ConnectorError;
use crate::secrets::SecretResolver;
use crate::sync::{ChangeSource, SourcePosition};
use crate::{mongodb, mysql, postgres};

/// What registration learns from a source before it stores a connector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceInfo {
    /// The server's version, as it reports it.
    pub server_version: String,
    /// Columns in scope whose types kyma does not map (they read as `dynamic`).
    pub warnings: Vec<String>,
}

/// One kind of source.
#[async_trait]
pub trait SourceKind: Send + Sync {
    /// Reaches the source with the connector's settings and secret and checks what
    /// registration needs (naming the field or setting at fault).
    async fn probe(
        &self,
        spec: &ConnectorSpec,
        secrets: &SecretResolver,
    ) -> Result<SourceInfo, ConnectorError>;

    /// The change log of connector `spec`, for sync.
    fn change_source(
        &self,
        spec: &ConnectorSpec,
        secrets: &SecretResolver,
    ) -> Box<dyn ChangeSource>;

    /// Whether data committed at `cursor` (a sync connector's committed position) holds
    /// every transaction the source committed at or before `wanted`, a position in the
    /// notation an application reads from the source after its own commit (read-your-writes,
    /// no connection needed). A `wanted` in another notation is [`ConnectorError::Invalid`]
    /// naming the notation and where to read it; `wanted` is checked before `cursor`, and
    /// an empty cursor reaches nothing, so `reached(&SourcePosition(String::new()), wanted)`
    /// checks the notation alone (as the read-your-writes fence does before it waits).
    fn reached(&self, cursor: &SourcePosition, wanted: &str) -> Result<bool, ConnectorError>;
}

/// The URL schemes a connector of `source_type` takes (the first is the one to suggest).
pub fn url_schemes(source_type: SourceType) -> &'static [&'static str] {
    match source_type {
        SourceType::Postgres => &["postgres", "postgresql"],
        SourceType::Mysql => &["mysql", "mariadb"],
        SourceType::Mongodb => &["mongodb", "mongodb+srv"],
    }
}

/// The kind of `source_type`, or why this kyma cannot run it.
pub fn kind(source_type: SourceType) -> Result<&'static dyn SourceKind, ConnectorError> {
    match source_type {
        SourceType::Postgres => Ok(&postgres::PostgresKind),
        SourceType::Mysql => Ok(&mysql::MysqlKind),
        SourceType::Mongodb => Ok(&mongodb::MongodbKind),
    }
}

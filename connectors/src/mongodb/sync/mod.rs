//! Sync from MongoDB change streams (being built: every call fails for now).

use async_trait::async_trait;
use kyma_catalog::ConnectorSpec;

use crate::error::ConnectorError;
use crate::secrets::SecretResolver;
use crate::sync::{
    ChangeSource, ChangeStream, Fence, Prepared, Resume, Snapshot, SourcePosition, SourceTable,
};

/// The change log of one MongoDB connector.
#[derive(Debug)]
pub struct MongoChangeSource {
    spec: ConnectorSpec,
    secrets: SecretResolver,
}

impl MongoChangeSource {
    /// The change source of connector `spec`.
    pub fn new(spec: &ConnectorSpec, secrets: &SecretResolver) -> Self {
        Self {
            spec: spec.clone(),
            secrets: secrets.clone(),
        }
    }

    fn unbuilt(&self) -> ConnectorError {
        let _ = &self.secrets;
        ConnectorError::invalid(
            "mode",
            format!(
                "sync of MongoDB connector `{}` is not built yet",
                self.spec.name
            ),
        )
    }
}

#[async_trait]
impl ChangeSource for MongoChangeSource {
    async fn preflight(&mut self) -> Result<(), ConnectorError> {
        Err(self.unbuilt())
    }
    async fn discover(&mut self) -> Result<Vec<SourceTable>, ConnectorError> {
        Err(self.unbuilt())
    }
    async fn prepare(
        &mut self,
        _tables: &[&SourceTable],
        _resume: Option<&Resume>,
        _fence: &dyn Fence,
    ) -> Result<Prepared, ConnectorError> {
        Err(self.unbuilt())
    }
    async fn snapshot(&mut self, _fence: &dyn Fence) -> Result<Box<dyn Snapshot>, ConnectorError> {
        Err(self.unbuilt())
    }
    async fn stream(
        &mut self,
        _from: &SourcePosition,
    ) -> Result<Box<dyn ChangeStream>, ConnectorError> {
        Err(self.unbuilt())
    }
    fn covers(
        &self,
        _mark: &SourcePosition,
        _txn: &SourcePosition,
    ) -> Result<bool, ConnectorError> {
        Err(self.unbuilt())
    }
    async fn teardown(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }
}

//! MySQL / MariaDB sync: being built.

use async_trait::async_trait;
use kyma_catalog::ConnectorSpec;

use crate::error::ConnectorError;
use crate::secrets::SecretResolver;
use crate::sync::{
    ChangeSource, ChangeStream, Fence, Prepared, Resume, Snapshot, SourcePosition, SourceTable,
};

/// The binlog of a MySQL / MariaDB connector.
pub struct MyChangeSource {
    spec: ConnectorSpec,
}

impl MyChangeSource {
    /// The change log of connector `spec`.
    pub fn new(spec: &ConnectorSpec, _secrets: &SecretResolver) -> Self {
        Self { spec: spec.clone() }
    }

    fn not_yet(&self) -> ConnectorError {
        ConnectorError::invalid(
            "mode",
            format!("{}: mysql sync is not available yet", self.spec.name),
        )
    }
}

#[async_trait]
impl ChangeSource for MyChangeSource {
    async fn preflight(&mut self) -> Result<(), ConnectorError> {
        Err(self.not_yet())
    }
    async fn discover(&mut self) -> Result<Vec<SourceTable>, ConnectorError> {
        Err(self.not_yet())
    }
    async fn prepare(
        &mut self,
        _t: &[&SourceTable],
        _r: Option<&Resume>,
        _f: &dyn Fence,
    ) -> Result<Prepared, ConnectorError> {
        Err(self.not_yet())
    }
    async fn snapshot(&mut self, _f: &dyn Fence) -> Result<Box<dyn Snapshot>, ConnectorError> {
        Err(self.not_yet())
    }
    async fn stream(
        &mut self,
        _from: &SourcePosition,
    ) -> Result<Box<dyn ChangeStream>, ConnectorError> {
        Err(self.not_yet())
    }
    fn covers(&self, _m: &SourcePosition, _t: &SourcePosition) -> Result<bool, ConnectorError> {
        Err(self.not_yet())
    }
    async fn teardown(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }
}

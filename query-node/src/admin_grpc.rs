//! The connector admin service over gRPC (`proto/kyma/admin/v1/admin.proto`), served on the
//! gRPC port beside Flight SQL. Requests become the REST API's JSON and go through the same
//! [`ConnectorAdmin`] checks, so both APIs accept and refuse exactly the same things.
//! INVALID_ARGUMENT messages start with the field to fix.

use kyma_catalog::{ConnectorSpec, DesiredState};
use kyma_connectors::{ConnectorAdmin, ConnectorError, ConnectorView};
use serde_json::{Map, Value, json};
use tonic::{Request, Response, Status};

/// Code generated from `admin.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("kyma.admin.v1");
}

use proto::connector_admin_server::ConnectorAdmin as ConnectorAdminRpc;
pub use proto::connector_admin_server::ConnectorAdminServer;

/// The service implementation.
#[derive(Debug, Clone)]
pub struct AdminService {
    admin: ConnectorAdmin,
}

impl AdminService {
    /// The service over `admin`.
    pub fn new(admin: ConnectorAdmin) -> Self {
        Self { admin }
    }

    /// Pause and resume: set the desired state, answer the connector as it is now.
    async fn set_state(
        &self,
        name: &str,
        state: DesiredState,
    ) -> Result<Response<proto::Connector>, Status> {
        let view = self.admin.set_state(name, state).await.map_err(status_of)?;
        Ok(Response::new(connector_of(view)))
    }
}

fn status_of(e: ConnectorError) -> Status {
    let message = e.to_string();
    match e {
        ConnectorError::Invalid { .. } | ConnectorError::Unreachable { .. } => {
            Status::invalid_argument(message)
        }
        ConnectorError::Source(_) | ConnectorError::HistoryLost(_) => {
            Status::failed_precondition(message)
        }
        ConnectorError::Changed(_) => Status::unavailable(message),
        ConnectorError::NotFound(_) => Status::not_found(message),
        ConnectorError::Fenced { .. } => Status::aborted(message),
        ConnectorError::Catalog(c) if c.is_retryable() => Status::unavailable(message),
        ConnectorError::Catalog(_) => Status::internal(message),
    }
}

/// A registration as the REST API's JSON, leaving out what the request left unset.
pub fn spec_json(spec: &proto::ConnectorSpec) -> Value {
    let mut body = Map::new();
    body.insert("name".into(), json!(spec.name));
    body.insert("type".into(), json!(spec.r#type));
    body.insert("mode".into(), json!(spec.mode));
    if let Some(c) = &spec.connection {
        let mut connection = Map::new();
        connection.insert("url".into(), json!(c.url));
        let optional = [
            ("secret_ref", c.secret_ref.as_ref().map(|v| json!(v))),
            ("tls", c.tls.as_ref().map(|v| json!(v))),
            ("pool_size", c.pool_size.map(|v| json!(v))),
            ("tls_ca_ref", c.tls_ca_ref.as_ref().map(|v| json!(v))),
        ];
        connection.extend(
            optional
                .into_iter()
                .filter_map(|(k, v)| Some((k.to_owned(), v?))),
        );
        body.insert("connection".into(), Value::Object(connection));
    }
    if let Some(s) = &spec.scope {
        let lists = [
            ("include_schemas", &s.include_schemas),
            ("include_tables", &s.include_tables),
            ("exclude_tables", &s.exclude_tables),
        ];
        let mut scope: Map<String, Value> = lists
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.to_owned(), json!(v)))
            .collect();
        let optional = [
            ("geometry_mode", s.geometry_mode.as_ref().map(|v| json!(v))),
            ("numeric_mode", s.numeric_mode.as_ref().map(|v| json!(v))),
            ("flatten_depth", s.flatten_depth.map(|v| json!(v))),
            (
                "decimal128_mode",
                s.decimal128_mode.as_ref().map(|v| json!(v)),
            ),
        ];
        scope.extend(
            optional
                .into_iter()
                .filter_map(|(k, v)| Some((k.to_owned(), v?))),
        );
        body.insert("scope".into(), Value::Object(scope));
    }
    if let Some(retention) = &spec.retention {
        let mut fields = serde_json::Map::new();
        if let Some(days) = retention.tombstone_days {
            fields.insert("tombstone_days".into(), json!(days));
        }
        if let Some(policy) = &retention.on_history_lost {
            fields.insert("on_history_lost".into(), json!(policy));
        }
        body.insert("retention".into(), Value::Object(fields));
    }
    Value::Object(body)
}

/// A stored connector as the service answers it.
fn connector_of(view: ConnectorView) -> proto::Connector {
    proto::Connector {
        spec: Some(spec_proto(&view.spec)),
        state: json_name(&view.state),
        status_json: serde_json::to_string(&view.status).unwrap_or_default(),
        cursor: view.cursor.clone(),
        epoch: view.epoch,
        holder: view.holder.as_ref().map(|h| h.worker_id.clone()),
    }
}

/// A registration as the service's messages carry it, every field set.
pub fn spec_proto(spec: &ConnectorSpec) -> proto::ConnectorSpec {
    proto::ConnectorSpec {
        name: spec.name.clone(),
        r#type: json_name(&spec.source_type),
        mode: json_name(&spec.mode),
        connection: Some(proto::Connection {
            url: spec.connection.url.clone(),
            secret_ref: spec.connection.secret_ref.clone(),
            tls: Some(json_name(&spec.connection.tls)),
            pool_size: Some(spec.connection.pool_size),
            tls_ca_ref: spec.connection.tls_ca_ref.clone(),
        }),
        scope: Some(proto::Scope {
            include_schemas: spec.scope.include_schemas.clone(),
            include_tables: spec.scope.include_tables.clone(),
            exclude_tables: spec.scope.exclude_tables.clone(),
            geometry_mode: spec.scope.geometry_mode.clone(),
            numeric_mode: spec.scope.numeric_mode.clone(),
            flatten_depth: spec.scope.flatten_depth,
            decimal128_mode: spec.scope.decimal128_mode.clone(),
        }),
        retention: Some(proto::Retention {
            tombstone_days: Some(spec.retention.tombstone_days),
            on_history_lost: Some(json_name(&spec.retention.on_history_lost)),
        }),
    }
}

/// The JSON name of a unit enum value (`postgres`, `paused`, `verify-full`).
fn json_name(value: &impl serde::Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[tonic::async_trait]
impl ConnectorAdminRpc for AdminService {
    async fn create_connector(
        &self,
        request: Request<proto::CreateConnectorRequest>,
    ) -> Result<Response<proto::Connector>, Status> {
        let spec = request
            .into_inner()
            .spec
            .ok_or_else(|| Status::invalid_argument("spec: is required"))?;
        let view = self
            .admin
            .create(&spec_json(&spec))
            .await
            .map_err(status_of)?;
        Ok(Response::new(connector_of(view)))
    }

    async fn get_connector(
        &self,
        request: Request<proto::GetConnectorRequest>,
    ) -> Result<Response<proto::Connector>, Status> {
        let view = self
            .admin
            .get(&request.into_inner().name)
            .await
            .map_err(status_of)?;
        Ok(Response::new(connector_of(view)))
    }

    async fn list_connectors(
        &self,
        _request: Request<proto::ListConnectorsRequest>,
    ) -> Result<Response<proto::ListConnectorsResponse>, Status> {
        let connectors = self.admin.list().await.map_err(status_of)?;
        Ok(Response::new(proto::ListConnectorsResponse {
            connectors: connectors.into_iter().map(connector_of).collect(),
        }))
    }

    async fn delete_connector(
        &self,
        request: Request<proto::DeleteConnectorRequest>,
    ) -> Result<Response<proto::DeleteConnectorResponse>, Status> {
        let warnings = self
            .admin
            .delete(&request.into_inner().name)
            .await
            .map_err(status_of)?;
        Ok(Response::new(proto::DeleteConnectorResponse { warnings }))
    }

    async fn pause_connector(
        &self,
        request: Request<proto::PauseConnectorRequest>,
    ) -> Result<Response<proto::Connector>, Status> {
        self.set_state(&request.into_inner().name, DesiredState::Paused)
            .await
    }

    async fn resume_connector(
        &self,
        request: Request<proto::ResumeConnectorRequest>,
    ) -> Result<Response<proto::Connector>, Status> {
        self.set_state(&request.into_inner().name, DesiredState::Running)
            .await
    }

    async fn resync_table(
        &self,
        request: Request<proto::ResyncTableRequest>,
    ) -> Result<Response<proto::ResyncTableResponse>, Status> {
        let request = request.into_inner();
        let number = self
            .admin
            .resync(&request.name, &request.table)
            .await
            .map_err(status_of)?;
        Ok(Response::new(proto::ResyncTableResponse {
            request: number,
        }))
    }
}

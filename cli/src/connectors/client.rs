//! The admin gRPC client: the node's address, TLS and bearer token, and which [`Exit`] each
//! failure maps to.

use std::time::Duration;

use kyma_query_node::admin_grpc::proto;
use kyma_query_node::admin_grpc::proto::connector_admin_client::ConnectorAdminClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};

use super::{CliError, Exit, ServerArgs};

/// Adds `authorization: Bearer <token>` to every call when a token is set.
#[derive(Debug, Clone)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A connection to one node's connector admin service.
#[derive(Debug)]
pub struct AdminClient {
    rpc: ConnectorAdminClient<InterceptedService<Channel, BearerToken>>,
}

impl AdminClient {
    /// Connects to the node `server` names.
    pub async fn connect(server: &ServerArgs) -> Result<Self, CliError> {
        let (uri, tls) = address(&server.server)?;
        let timeout = Duration::from_secs(server.timeout_secs.max(1));
        let mut endpoint = Endpoint::from_shared(uri.clone())
            .map_err(|e| usage(format!("--server {}: {e}", server.server)))?
            .connect_timeout(timeout)
            .timeout(timeout);
        if tls || server.tls_ca.is_some() {
            endpoint = endpoint
                .tls_config(tls_config(server)?)
                .map_err(|e| usage(format!("--server {}: {}", server.server, chain(&e))))?;
        }
        let channel = endpoint.connect().await.map_err(|e| {
            CliError::new(
                Exit::Unreachable,
                format!("cannot reach the node at {uri}: {}", chain(&e)),
            )
        })?;
        let token = server
            .auth_token
            .as_ref()
            .map(|t| format!("Bearer {}", t.expose()).parse())
            .transpose()
            .map_err(|_| usage("--auth-token: not a valid header value"))?;
        Ok(Self {
            rpc: ConnectorAdminClient::with_interceptor(channel, BearerToken(token)),
        })
    }

    /// Registers `spec`.
    pub async fn create(
        &mut self,
        spec: proto::ConnectorSpec,
    ) -> Result<proto::Connector, CliError> {
        let request = proto::CreateConnectorRequest { spec: Some(spec) };
        Ok(self
            .rpc
            .create_connector(request)
            .await
            .map_err(failed)?
            .into_inner())
    }

    /// Connector `name`.
    pub async fn get(&mut self, name: &str) -> Result<proto::Connector, CliError> {
        let request = proto::GetConnectorRequest { name: name.into() };
        Ok(self
            .rpc
            .get_connector(request)
            .await
            .map_err(failed)?
            .into_inner())
    }

    /// Every connector.
    pub async fn list(&mut self) -> Result<Vec<proto::Connector>, CliError> {
        let request = proto::ListConnectorsRequest {};
        let response = self.rpc.list_connectors(request).await.map_err(failed)?;
        Ok(response.into_inner().connectors)
    }

    /// Pauses `name`.
    pub async fn pause(&mut self, name: &str) -> Result<proto::Connector, CliError> {
        let request = proto::PauseConnectorRequest { name: name.into() };
        Ok(self
            .rpc
            .pause_connector(request)
            .await
            .map_err(failed)?
            .into_inner())
    }

    /// Resumes `name`.
    pub async fn resume(&mut self, name: &str) -> Result<proto::Connector, CliError> {
        let request = proto::ResumeConnectorRequest { name: name.into() };
        Ok(self
            .rpc
            .resume_connector(request)
            .await
            .map_err(failed)?
            .into_inner())
    }

    /// Asks for `table` of `name` to be copied again; the request's number.
    pub async fn resync(&mut self, name: &str, table: &str) -> Result<u64, CliError> {
        let request = proto::ResyncTableRequest {
            name: name.into(),
            table: table.into(),
        };
        let response = self.rpc.resync_table(request).await.map_err(failed)?;
        Ok(response.into_inner().request)
    }

    /// Deletes `name`; warnings name source objects left to drop by hand.
    pub async fn delete(&mut self, name: &str) -> Result<Vec<String>, CliError> {
        let request = proto::DeleteConnectorRequest { name: name.into() };
        let response = self.rpc.delete_connector(request).await.map_err(failed)?;
        Ok(response.into_inner().warnings)
    }
}

/// The URI to connect to and whether it asks for TLS.
fn address(server: &str) -> Result<(String, bool), CliError> {
    let schemes = [
        ("http://", "http://", false),
        ("grpc://", "http://", false),
        ("https://", "https://", true),
        ("grpc+tls://", "https://", true),
    ];
    schemes
        .iter()
        .find_map(|(given, scheme, tls)| {
            server
                .strip_prefix(given)
                .map(|rest| (format!("{scheme}{rest}"), *tls))
        })
        .ok_or_else(|| {
            usage(format!(
                "--server {server}: give http://HOST:PORT or https://HOST:PORT (or grpc://, grpc+tls://)"
            ))
        })
}

fn tls_config(server: &ServerArgs) -> Result<ClientTlsConfig, CliError> {
    let mut config = match &server.tls_ca {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| usage(format!("--tls-ca {}: {e}", path.display())))?;
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem))
        }
        None => ClientTlsConfig::new().with_webpki_roots(),
    };
    if let Some(domain) = &server.tls_domain {
        config = config.domain_name(domain.clone());
    }
    Ok(config)
}

fn usage(message: impl Into<String>) -> CliError {
    CliError::new(Exit::Usage, message)
}

/// A refused or failed call, with the exit code its gRPC status calls for. A status that
/// wraps a lower error did not come from the server (the connection broke, or the node
/// speaks no gRPC there: plaintext to a TLS port): the node was not reached.
fn failed(status: Status) -> CliError {
    let exit = match status.code() {
        _ if std::error::Error::source(&status).is_some() => Exit::Unreachable,
        Code::NotFound => Exit::NotFound,
        Code::Unavailable | Code::Unauthenticated | Code::DeadlineExceeded | Code::Unknown => {
            Exit::Unreachable
        }
        _ => Exit::Refused,
    };
    let hint = match status.code() {
        Code::Unauthenticated => " (pass the node's token with --auth-token or KYMA_AUTH_TOKEN)",
        _ => "",
    };
    let message = if status.message().is_empty() {
        format!("{}{hint}", chain(&status))
    } else {
        format!("{}{hint}", status.message())
    };
    CliError::new(exit, message)
}

/// An error with its causes, `outer: inner: innermost`.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

//! The Postgres source.
//!
//! Today: reaching the source, with the connector's TLS policy and its secret, the preflight
//! probe that registration runs, and the type mapping with the catalog query behind it
//! ([`types`]). Federation and sync build on [`connect`] and [`types`].
//!
//! # TLS (`connection.tls`)
//!
//! - `disable`: plaintext.
//! - `prefer`: TLS when the server offers it, else plaintext; the certificate is not checked
//!   (libpq's `prefer`).
//! - `required`: TLS or fail; the certificate is not checked (libpq's `require`).
//! - `verify-full`: TLS with the certificate checked against the Web PKI roots (or the
//!   connector's own CA, `connection.tls_ca_ref`: [`crate::source_ca`]) and the host name.
//!
//! # Errors
//!
//! Connection failures are sorted by what to fix: an unreachable host names
//! `connection.url` (transient), bad credentials name `connection.secret_ref`, a server that
//! does not offer TLS when it is required names `connection.tls`. No message carries the
//! password.

pub mod copy;
pub mod pool;
pub mod query;
pub mod sync;
pub mod types;

pub use copy::CopyBinaryDecoder;
pub use pool::{PgConnect, PgPool, PooledClient};

use std::sync::Arc;
use std::time::Duration;

use kyma_catalog::{ConnectionSpec, ConnectorSpec, ScopeSpec, TlsMode};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::ConnectorError;
use crate::registry::{SourceInfo, SourceKind};
use crate::secrets::SecretResolver;
use crate::source_ca::SourceCa;
use crate::sync::{ChangeSource, SourcePosition};

/// How long connecting may take before the source counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Postgres in the registry of source kinds.
#[derive(Debug)]
pub struct PostgresKind;

#[async_trait::async_trait]
impl SourceKind for PostgresKind {
    async fn probe(
        &self,
        spec: &ConnectorSpec,
        secrets: &SecretResolver,
    ) -> Result<SourceInfo, ConnectorError> {
        probe(&spec.connection, &spec.scope, secrets).await
    }

    fn change_source(
        &self,
        spec: &ConnectorSpec,
        secrets: &SecretResolver,
    ) -> Box<dyn ChangeSource> {
        Box::new(sync::PgChangeSource::new(spec, secrets))
    }

    fn reached(&self, cursor: &SourcePosition, wanted: &str) -> Result<bool, ConnectorError> {
        sync::setup::reached(cursor, wanted)
    }
}

/// Connects to the source of `spec`; the connection runs on a background task until the
/// client is dropped.
pub async fn connect(
    spec: &ConnectionSpec,
    secrets: &SecretResolver,
) -> Result<tokio_postgres::Client, ConnectorError> {
    let mut config: tokio_postgres::Config = spec.url.parse().map_err(|e| {
        ConnectorError::invalid(
            "connection.url",
            format!("not a Postgres URL (postgres://USER@HOST:PORT/DB): {e}"),
        )
    })?;
    let user = config.get_user().unwrap_or("postgres").to_owned();
    if let Some(name) = &spec.secret_ref {
        config.password(secrets.resolve(name)?.expose());
    }
    config.ssl_mode(match spec.tls {
        TlsMode::Disable => SslMode::Disable,
        TlsMode::Prefer => SslMode::Prefer,
        TlsMode::Required | TlsMode::VerifyFull => SslMode::Require,
    });
    config.connect_timeout(CONNECT_TIMEOUT);
    let where_ = endpoint(&config);
    let ca = SourceCa::of(spec, secrets)?;
    let connecting = config.connect(tls_connector(spec.tls, ca.as_ref())?);
    let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| ConnectorError::Unreachable {
            field: "connection.url".into(),
            reason: format!(
                "{where_} did not answer within {}s",
                CONNECT_TIMEOUT.as_secs()
            ),
        })?
        .map_err(|e| classify(&e, &where_, &user, spec.tls))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
    Ok(client)
}

/// Connects and asks the server who it is: what registration checks before it stores a
/// connector.
pub async fn probe(
    spec: &ConnectionSpec,
    scope: &ScopeSpec,
    secrets: &SecretResolver,
) -> Result<SourceInfo, ConnectorError> {
    let client = connect(spec, secrets).await?;
    let row = client
        .query_one("SELECT current_setting('server_version')", &[])
        .await
        .map_err(|e| ConnectorError::Unreachable {
            field: "connection.url".into(),
            reason: format!("the server answered the probe with an error: {e}"),
        })?;
    let warnings = types::source_columns(&client, &scope.include_schemas)
        .await?
        .iter()
        .filter(|c| scope.covers(&c.schema, &c.table))
        .filter_map(|c| {
            types::kyma_type(&c.name, &c.pg_type, scope)
                .warning
                .map(|w| format!("{}.{}: {w}", c.schema, c.table))
        })
        .collect();
    Ok(SourceInfo {
        server_version: row.try_get(0).map_err(|e| ConnectorError::Unreachable {
            field: "connection.url".into(),
            reason: format!("the server answered the probe in an unexpected form: {e}"),
        })?,
        warnings,
    })
}

/// `name` as a Postgres identifier: always quoted, inner quotes doubled, so any name (even
/// `x"; DROP TABLE y; --`) is just a name.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn endpoint(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}")
}

/// Sorts a connection error by the field to fix.
fn classify(e: &tokio_postgres::Error, where_: &str, user: &str, tls: TlsMode) -> ConnectorError {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        return match code {
            // invalid_password, invalid_authorization_specification
            "28P01" | "28000" => ConnectorError::invalid(
                "connection.secret_ref",
                format!(
                    "{where_} refused the credentials of user `{user}`: {}",
                    db.message()
                ),
            ),
            // invalid_catalog_name: the database does not exist
            "3D000" => ConnectorError::invalid("connection.url", db.message().to_owned()),
            _ => ConnectorError::Unreachable {
                field: "connection.url".into(),
                reason: format!("{where_}: {} (SQLSTATE {code})", db.message()),
            },
        };
    }
    let text = e.to_string();
    if text.contains("does not support TLS") {
        return ConnectorError::invalid(
            "connection.tls",
            format!(
                "{where_} does not offer TLS but tls is {tls:?}; enable ssl on the server or set tls to prefer or disable"
            ),
        );
    }
    if text.contains("TLS") || text.contains("certificate") {
        return ConnectorError::invalid(
            "connection.tls",
            format!("TLS with {where_} failed: {text}"),
        );
    }
    ConnectorError::Unreachable {
        field: "connection.url".into(),
        reason: format!("cannot reach {where_}: {text}"),
    }
}

fn tls_connector(
    mode: TlsMode,
    ca: Option<&SourceCa>,
) -> Result<MakeRustlsConnect, ConnectorError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectorError::invalid("connection.tls", e.to_string()))?;
    let config = if mode == TlsMode::VerifyFull {
        let roots = ca.map_or_else(
            || {
                let mut roots = RootCertStore::empty();
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                roots
            },
            SourceCa::roots,
        );
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(UncheckedCertificate(provider)))
            .with_no_client_auth()
    };
    Ok(MakeRustlsConnect::new(config))
}

/// `prefer` and `required`: encrypt, but accept any certificate (handshake signatures are
/// still checked).
#[derive(Debug)]
struct UncheckedCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for UncheckedCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

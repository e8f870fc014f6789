//! A connector's own certificate authority (`connection.tls_ca_ref`): with `tls:
//! verify-full`, the source's certificate must chain to these PEM certificates instead of
//! the Web PKI roots, and carry the URL's host name (a private CA, as libpq's `sslrootcert`).
//!
//! The certificates are a secret resolved like `secret_ref` (an environment variable or a
//! file of the secrets directory, so every node and worker reads the same mounted Secret or
//! ConfigMap); a CA is not secret, but this keeps an API caller from naming an arbitrary file
//! of the server. Drivers that only take a path (libpq, MongoDB's) get a copy written under
//! the temporary directory, named by its content's hash.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;

use kyma_catalog::{ConnectionSpec, TlsMode};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::error::ConnectorError;
use crate::secrets::SecretResolver;

/// The field that names the CA.
const FIELD: &str = "connection.tls_ca_ref";

/// The CA certificates a connector trusts.
#[derive(Debug, Clone)]
pub struct SourceCa {
    pem: Arc<str>,
    roots: RootCertStore,
}

impl SourceCa {
    /// The CA `spec` names, if any. An error names `connection.tls_ca_ref`: set without
    /// `tls: verify-full`, not found, or holding no PEM certificate.
    pub fn of(
        spec: &ConnectionSpec,
        secrets: &SecretResolver,
    ) -> Result<Option<Self>, ConnectorError> {
        let Some(name) = &spec.tls_ca_ref else {
            return Ok(None);
        };
        if spec.tls != TlsMode::VerifyFull {
            return Err(ConnectorError::invalid(
                FIELD,
                "a CA is only used to verify the source's certificate: set tls to verify-full",
            ));
        }
        let pem = secrets.resolve_of(FIELD, name)?;
        Self::from_pem(name, pem.expose()).map(Some)
    }

    fn from_pem(name: &str, pem: &str) -> Result<Self, ConnectorError> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert = cert.map_err(|e| {
                ConnectorError::invalid(FIELD, format!("`{name}` is not PEM certificates: {e}"))
            })?;
            roots.add(cert).map_err(|e| {
                ConnectorError::invalid(FIELD, format!("`{name}` holds a bad certificate: {e}"))
            })?;
        }
        if roots.is_empty() {
            return Err(ConnectorError::invalid(
                FIELD,
                format!("`{name}` holds no PEM certificate (-----BEGIN CERTIFICATE-----)"),
            ));
        }
        Ok(Self {
            pem: Arc::from(pem),
            roots,
        })
    }

    /// The certificates as rustls roots.
    pub fn roots(&self) -> RootCertStore {
        self.roots.clone()
    }

    /// The PEM text.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A file holding the PEM, for drivers that take a path.
    pub fn file(&self) -> Result<PathBuf, ConnectorError> {
        let mut hasher = std::hash::DefaultHasher::new();
        self.pem.hash(&mut hasher);
        let path =
            std::env::temp_dir().join(format!("kyma-source-ca-{:016x}.pem", hasher.finish()));
        if !path.exists() {
            // Written aside and renamed: a reader never sees half a file.
            let partial = path.with_extension(format!("{}.part", std::process::id()));
            std::fs::write(&partial, self.pem.as_bytes())
                .and_then(|()| std::fs::rename(&partial, &path))
                .map_err(|e| {
                    ConnectorError::invalid(
                        FIELD,
                        format!("cannot write the CA file {}: {e}", path.display()),
                    )
                })?;
        }
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(tls: TlsMode, ca: Option<&str>) -> ConnectionSpec {
        ConnectionSpec {
            url: "postgres://app@db/app".into(),
            secret_ref: None,
            tls,
            pool_size: 1,
            tls_ca_ref: ca.map(str::to_owned),
        }
    }

    #[test]
    fn a_ca_needs_verify_full_and_pem_certificates_and_errors_name_the_field() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("not-pem"), "hello").expect("write");
        let secrets = SecretResolver::new(dir.path());
        assert!(
            SourceCa::of(&spec(TlsMode::VerifyFull, None), &secrets)
                .expect("none")
                .is_none()
        );
        for (tls, name, says) in [
            (TlsMode::Required, "not-pem", "set tls to verify-full"),
            (TlsMode::VerifyFull, "missing", "not found"),
            (TlsMode::VerifyFull, "not-pem", "holds no PEM certificate"),
            (TlsMode::VerifyFull, "../etc/passwd", "a secret name uses"),
        ] {
            let error = SourceCa::of(&spec(tls, Some(name)), &secrets).expect_err(name);
            assert_eq!(error.field(), Some(FIELD), "{error}");
            assert!(error.to_string().contains(says), "{name}: {error}");
        }
    }
}

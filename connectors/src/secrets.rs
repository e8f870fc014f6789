//! Secrets named by `connection.secret_ref`, resolved at connect time and never stored,
//! logged or returned (SPEC §4).
//!
//! A secret `pg_prod_password` is read from the environment variable
//! `KYMA_SECRET_PG_PROD_PASSWORD` (upper-cased; characters other than letters and digits become
//! `_`), else from the file `<secrets-dir>/pg_prod_password` (a Kubernetes Secret mounted as a
//! directory; one trailing newline is dropped).

use std::path::PathBuf;

use crate::error::ConnectorError;

/// A secret value: its debug form is `***`.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value (a token from the environment, a password read from a file).
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the one call that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Resolves secret names from the environment and a secrets directory.
#[derive(Debug, Clone)]
pub struct SecretResolver {
    dir: PathBuf,
}

impl SecretResolver {
    /// A resolver reading files under `dir` (`--secrets-dir`).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The environment variable that holds secret `name`.
    pub fn env_var(name: &str) -> String {
        let upper: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        format!("KYMA_SECRET_{upper}")
    }

    /// Checks that `name` can name a secret (letters, digits, `_`, `-`, `.`; no path).
    pub fn check_name(name: &str) -> Result<(), ConnectorError> {
        Self::check_name_of("connection.secret_ref", name)
    }

    /// As [`SecretResolver::check_name`], for the secret named by `field`.
    pub fn check_name_of(field: &str, name: &str) -> Result<(), ConnectorError> {
        let ok = !name.is_empty()
            && name.len() <= 253
            && !name.starts_with('.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if ok {
            Ok(())
        } else {
            Err(ConnectorError::invalid(
                field,
                "a secret name uses letters, digits, `_`, `-` and `.` (and does not start with `.`)",
            ))
        }
    }

    /// The value of secret `name` (named by `connection.secret_ref`).
    pub fn resolve(&self, name: &str) -> Result<Secret, ConnectorError> {
        self.resolve_of("connection.secret_ref", name)
    }

    /// The value of secret `name`, named by `field` (errors name it).
    pub fn resolve_of(&self, field: &str, name: &str) -> Result<Secret, ConnectorError> {
        Self::check_name_of(field, name)?;
        let var = Self::env_var(name);
        if let Ok(value) = std::env::var(&var) {
            return Ok(Secret(value));
        }
        let path = self.dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(mut value) => {
                if value.ends_with('\n') {
                    value.pop();
                    if value.ends_with('\r') {
                        value.pop();
                    }
                }
                Ok(Secret(value))
            }
            Err(e) => Err(ConnectorError::invalid(
                field,
                format!(
                    "secret `{name}` not found: set {var} or put it in {} ({})",
                    path.display(),
                    e.kind()
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_come_from_files_and_errors_name_where_to_put_them() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("pg-pass"), "s3cr3t\n").expect("write");
        let resolver = SecretResolver::new(dir.path());
        let secret = resolver.resolve("pg-pass").expect("resolves");
        assert_eq!(secret.expose(), "s3cr3t");
        assert_eq!(format!("{secret:?}"), "***");
        let err = resolver.resolve("missing").expect_err("missing");
        assert!(err.to_string().contains("KYMA_SECRET_MISSING"), "{err}");
        let err = resolver.resolve("../etc/passwd").expect_err("a path");
        assert_eq!(err.field(), Some("connection.secret_ref"));
        assert_eq!(
            SecretResolver::env_var("pg_prod.password"),
            "KYMA_SECRET_PG_PROD_PASSWORD"
        );
    }
}

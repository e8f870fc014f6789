//! The MySQL / MariaDB source (`type: "mysql"`).
//!
//! - Reaching the source ([`connect`]), with the connector's TLS policy and its secret, on
//!   sessions pinned to what kyma's SQL and decoders rely on ([`SESSION_SETUP`]); the
//!   preflight probe registration runs ([`probe`]).
//! - The type mapping and the catalog queries behind it ([`types`]), and the one conversion
//!   of MySQL values into kyma values ([`values`]) that federation, the snapshot and the
//!   binlog decoder share — so the three agree value for value.
//! - Federation's query execution ([`query`]) and sync ([`sync`]).
//!
//! # TLS (`connection.tls`)
//!
//! - `disable`: plaintext.
//! - `prefer`: TLS when the server offers it, else plaintext; the certificate is not checked.
//! - `required`: TLS or fail; the certificate is not checked.
//! - `verify-full`: TLS with the certificate checked against the Web PKI roots (or the
//!   connector's own CA, `connection.tls_ca_ref`: [`crate::source_ca`]) and the host name.
//!
//! # Errors
//!
//! Connection failures are sorted by what to fix: an unreachable host names `connection.url`
//! (transient), refused credentials name `connection.secret_ref`, an unknown database names
//! `connection.url`, a server without TLS when it is required names `connection.tls`. No
//! message carries the password.

pub mod pool;
pub mod query;
pub mod sync;
pub mod types;
pub mod values;

pub use pool::{MyConnect, MyPool};

use std::time::Duration;

use kyma_catalog::{ConnectionSpec, ConnectorSpec, ScopeSpec, TlsMode};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, SslOpts};

use crate::error::ConnectorError;
use crate::pool::Endpoint;
use crate::registry::{SourceInfo, SourceKind};
use crate::secrets::SecretResolver;
use crate::source_ca::SourceCa;
use crate::sync::{ChangeSource, SourcePosition};

/// How long connecting may take before the source counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// MySQL's default port.
pub const DEFAULT_PORT: u16 = 3306;

/// What every connection runs first, because kyma's SQL and decoders rely on it:
///
/// - `SET NAMES utf8mb4 COLLATE utf8mb4_bin`: text arrives as UTF-8 whatever the server's
///   default (MariaDB's is latin1), and literals compare byte-wise;
/// - `time_zone = '+00:00'`: `TIMESTAMP` values read as UTC, as the binlog carries them;
/// - `sql_mode`: `NO_BACKSLASH_ESCAPES` (a backslash in a literal is just a backslash, as the
///   generated SQL escapes literals), no `PIPES_AS_CONCAT` and no `ANSI_QUOTES` (generated SQL
///   quotes identifiers with backticks and never writes `||`), strict arithmetic
///   (`ERROR_FOR_DIVISION_BY_ZERO`).
pub const SESSION_SETUP: [&str; 3] = [
    "SET NAMES utf8mb4 COLLATE utf8mb4_bin",
    "SET time_zone = '+00:00'",
    "SET sql_mode = 'NO_BACKSLASH_ESCAPES,STRICT_ALL_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION,ONLY_FULL_GROUP_BY'",
];

/// MySQL and MariaDB in the registry of source kinds.
#[derive(Debug)]
pub struct MysqlKind;

#[async_trait::async_trait]
impl SourceKind for MysqlKind {
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
        Box::new(sync::MyChangeSource::new(spec, secrets))
    }

    fn reached(&self, cursor: &SourcePosition, wanted: &str) -> Result<bool, ConnectorError> {
        sync::gtid::reached(cursor, wanted)
    }
}

/// Where a `mysql://USER@HOST:PORT/DATABASE` URL points (the database may be empty).
pub fn endpoint(url: &str) -> Result<Endpoint, ConnectorError> {
    let bad = |why: &str| {
        ConnectorError::invalid(
            "connection.url",
            format!("not a MySQL URL (mysql://USER@HOST:PORT/DATABASE): {why}"),
        )
    };
    let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    if !matches!(parsed.scheme(), "mysql" | "mariadb") {
        return Err(bad("the scheme must be mysql or mariadb"));
    }
    if parsed.password().is_some() {
        return Err(ConnectorError::invalid(
            "connection.url",
            "the URL holds a password; put it in a secret and name it in connection.secret_ref",
        ));
    }
    let host = parsed
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| bad("no host"))?;
    let user = percent_decoded(parsed.username());
    if user.is_empty() {
        return Err(bad("no user"));
    }
    Ok(Endpoint {
        host: host.trim_matches(['[', ']']).to_ascii_lowercase(),
        port: parsed.port().unwrap_or(DEFAULT_PORT),
        database: percent_decoded(parsed.path().trim_start_matches('/')),
        user,
    })
}

/// `text` with its `%XX` escapes decoded (a `+` stays a `+`, as in a URL's user and path).
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| text.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The driver's options for `spec`: endpoint, secret, TLS (`tls` overrides the spec's mode,
/// for `prefer`'s plaintext retry), the session setup, and no switch to a Unix socket.
fn options(
    spec: &ConnectionSpec,
    secrets: &SecretResolver,
    tls: TlsMode,
) -> Result<Opts, ConnectorError> {
    let at = endpoint(&spec.url)?;
    let password = match &spec.secret_ref {
        Some(name) => Some(secrets.resolve(name)?.expose().to_owned()),
        None => None,
    };
    let ssl = match tls {
        TlsMode::Disable => None,
        TlsMode::Prefer | TlsMode::Required => Some(
            SslOpts::default()
                .with_danger_accept_invalid_certs(true)
                .with_danger_skip_domain_validation(true),
        ),
        TlsMode::VerifyFull => Some(match SourceCa::of(spec, secrets)? {
            Some(ca) => SslOpts::default()
                .with_root_certs(vec![ca.pem().as_bytes().to_vec().into()])
                .with_disable_built_in_roots(true),
            None => SslOpts::default(),
        }),
    };
    let builder = OptsBuilder::default()
        .ip_or_hostname(at.host)
        .tcp_port(at.port)
        .user(Some(at.user))
        .pass(password)
        .db_name((!at.database.is_empty()).then_some(at.database))
        .prefer_socket(false)
        .ssl_opts(ssl)
        .init(SESSION_SETUP.to_vec())
        .stmt_cache_size(0);
    Ok(Opts::from(builder))
}

/// Connects to the source of `spec`, on a session set up by [`SESSION_SETUP`].
pub async fn connect(
    spec: &ConnectionSpec,
    secrets: &SecretResolver,
) -> Result<Conn, ConnectorError> {
    match connect_with(spec, secrets, spec.tls).await {
        Err(NoTls) if spec.tls == TlsMode::Prefer => connect_with(spec, secrets, TlsMode::Disable)
            .await
            .unwrap_or_else(|NoTls| Err(tls_unavailable(spec))),
        Err(NoTls) => Err(tls_unavailable(spec)),
        Ok(result) => result,
    }
}

/// The server does not offer TLS.
struct NoTls;

fn tls_unavailable(spec: &ConnectionSpec) -> ConnectorError {
    let at =
        endpoint(&spec.url).map_or_else(|_| spec.url.clone(), |e| format!("{}:{}", e.host, e.port));
    ConnectorError::invalid(
        "connection.tls",
        format!(
            "{at} does not offer TLS but tls is {:?}; enable TLS on the server or set tls to prefer or disable",
            spec.tls
        ),
    )
}

async fn connect_with(
    spec: &ConnectionSpec,
    secrets: &SecretResolver,
    tls: TlsMode,
) -> Result<Result<Conn, ConnectorError>, NoTls> {
    let opts = match options(spec, secrets, tls) {
        Ok(opts) => opts,
        Err(e) => return Ok(Err(e)),
    };
    let at = format!("{}:{}", opts.ip_or_hostname(), opts.tcp_port());
    let user = opts.user().unwrap_or_default().to_owned();
    match tokio::time::timeout(CONNECT_TIMEOUT, Conn::new(opts)).await {
        Err(_) => Ok(Err(ConnectorError::Unreachable {
            field: "connection.url".into(),
            reason: format!("{at} did not answer within {}s", CONNECT_TIMEOUT.as_secs()),
        })),
        Ok(Ok(conn)) => Ok(Ok(conn)),
        Ok(Err(mysql_async::Error::Driver(
            mysql_async::DriverError::NoClientSslFlagFromServer,
        ))) => Err(NoTls),
        Ok(Err(e)) => Ok(Err(classify(&e, &at, &user))),
    }
}

/// Sorts a connection error by the field to fix.
fn classify(e: &mysql_async::Error, at: &str, user: &str) -> ConnectorError {
    match e {
        mysql_async::Error::Server(server) => match server.code {
            // ER_ACCESS_DENIED_ERROR, ER_DBACCESS_DENIED_ERROR (no right to the database)
            1045 => ConnectorError::invalid(
                "connection.secret_ref",
                format!(
                    "{at} refused the credentials of user `{user}`: {}",
                    server.message
                ),
            ),
            1044 => ConnectorError::invalid(
                "connection.url",
                format!(
                    "{at}: user `{user}` may not use the database: {}",
                    server.message
                ),
            ),
            // ER_BAD_DB_ERROR
            1049 => ConnectorError::invalid("connection.url", server.message.clone()),
            code => ConnectorError::Unreachable {
                field: "connection.url".into(),
                reason: format!("{at}: {} (error {code})", server.message),
            },
        },
        mysql_async::Error::Io(mysql_async::IoError::Tls(tls)) => {
            ConnectorError::invalid("connection.tls", format!("TLS with {at} failed: {tls}"))
        }
        // With rustls, a refused certificate arrives as an I/O error carrying rustls' own.
        mysql_async::Error::Io(mysql_async::IoError::Io(io))
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>()) =>
        {
            ConnectorError::invalid("connection.tls", format!("TLS with {at} failed: {io}"))
        }
        other => ConnectorError::Unreachable {
            field: "connection.url".into(),
            reason: format!("cannot reach {at}: {other}"),
        },
    }
}

/// A query the server refused, or a connection that broke, as a connector error: errors the
/// server sent are definite ([`ConnectorError::Source`], with the server's code); the rest
/// mean the source is unreachable now.
pub fn refused(e: mysql_async::Error) -> ConnectorError {
    match e {
        mysql_async::Error::Server(server) => ConnectorError::Source(format!(
            "{} (error {}, SQLSTATE {})",
            server.message, server.code, server.state
        )),
        other => ConnectorError::Unreachable {
            field: "connection.url".into(),
            reason: other.to_string(),
        },
    }
}

/// Connects and asks the server who it is: what registration checks before it stores a
/// connector.
pub async fn probe(
    spec: &ConnectionSpec,
    scope: &ScopeSpec,
    secrets: &SecretResolver,
) -> Result<SourceInfo, ConnectorError> {
    let mut conn = connect(spec, secrets).await?;
    let version: Option<String> = conn
        .query_first("SELECT VERSION()")
        .await
        .map_err(refused)?;
    let catalog = types::read_catalog(&mut conn, &scope.include_schemas).await?;
    let warnings = catalog
        .columns
        .iter()
        .filter(|c| scope.covers(&c.schema, &c.table))
        .filter_map(|c| {
            types::reading(c, scope)
                .warning
                .map(|w| format!("{}.{}: {w}", c.schema, c.table))
        })
        .collect();
    let _ = conn.disconnect().await;
    Ok(SourceInfo {
        server_version: version.unwrap_or_default(),
        warnings,
    })
}

/// `name` as a MySQL identifier: always in backticks, inner backticks doubled, so any name
/// is just a name.
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// `text` as a MySQL string literal under `NO_BACKSLASH_ESCAPES` (inner quotes doubled).
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_fills_in_defaults_and_refuses_passwords() {
        let at = endpoint("mysql://App@DB.example/shop").expect("valid");
        assert_eq!(
            at,
            Endpoint {
                host: "db.example".into(),
                port: DEFAULT_PORT,
                database: "shop".into(),
                user: "App".into(),
            }
        );
        assert_eq!(
            endpoint("mysql://a+b@h/db").map(|e| e.user).ok().as_deref(),
            Some("a+b")
        );
        assert_eq!(
            endpoint("mariadb://a%40b@h:3307")
                .map(|e| (e.user, e.port, e.database))
                .ok(),
            Some(("a@b".into(), 3307, String::new()))
        );
        for bad in ["mysql://h/db", "postgres://u@h/db", "not a url"] {
            let e = endpoint(bad).expect_err(bad);
            assert_eq!(e.field(), Some("connection.url"), "{bad}");
        }
        let e = endpoint("mysql://u:hunter2@h/db").expect_err("password");
        assert!(e.to_string().contains("secret_ref"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn identifiers_and_literals_are_always_quoted() {
        assert_eq!(quote_ident("a`b"), "`a``b`");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}

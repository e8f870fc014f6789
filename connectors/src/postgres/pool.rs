//! Postgres connections for federation, pooled by the generic [`crate::pool::Pool`]: how one
//! is opened (with the connector's TLS policy and secret, [`super::connect`]) and the session
//! it runs with.
//!
//! Every connection is set up the same way before use, because pushed-down SQL relies on it:
//! `TimeZone = 'UTC'` (kyma timestamps are UTC, so timestamp casts and `date_trunc` agree
//! with DataFusion), `standard_conforming_strings = on` (a backslash in a literal is just a
//! backslash), `DateStyle = ISO`, and read-only transactions (federation never writes).
//! A connection that broke is dropped rather than returned.

use std::sync::Arc;

use kyma_catalog::ConnectionSpec;

use crate::error::ConnectorError;
use crate::pool::{Connect, Endpoint, Pool, PoolLimits, Pooled};
use crate::secrets::SecretResolver;

/// The session settings every pooled connection runs with.
const SESSION_SETUP: &str = "SET TimeZone = 'UTC'; SET standard_conforming_strings = on; \
     SET DateStyle = 'ISO'; SET default_transaction_read_only = on; \
     SET application_name = 'kyma-federation'";

/// Postgres' default port.
const DEFAULT_PORT: u16 = 5432;

/// Up to `pool_size` federation connections to one Postgres source.
pub type PgPool = Pool<PgConnect>;

/// A connection on loan from a [`PgPool`].
pub type PooledClient = Pooled<PgConnect>;

/// How federation connects to one Postgres source.
#[derive(Debug, Clone)]
pub struct PgConnect {
    spec: ConnectionSpec,
    secrets: SecretResolver,
}

impl PgConnect {
    /// Connections to the source of `spec`, with the password from `secrets`.
    pub fn new(spec: ConnectionSpec, secrets: SecretResolver) -> Self {
        Self { spec, secrets }
    }

    /// A pool of up to `connection.pool_size` such connections; connects lazily.
    pub fn pool(spec: ConnectionSpec, secrets: SecretResolver) -> Arc<PgPool> {
        let size = spec.pool_size;
        Pool::new(Self::new(spec, secrets), size, PoolLimits::default())
    }

    /// Where the connections go, when the URL names exactly one server and a user (a URL
    /// listing several hosts reaches whichever answers, so it has no single endpoint).
    /// The database defaults to the user's name, as in libpq.
    pub fn endpoint(&self) -> Option<Endpoint> {
        let config: tokio_postgres::Config = self.spec.url.parse().ok()?;
        let [host] = config.get_hosts() else {
            return None;
        };
        let host = match host {
            tokio_postgres::config::Host::Tcp(name) => name.to_ascii_lowercase(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        };
        let port = match config.get_ports() {
            [] => DEFAULT_PORT,
            [port] => *port,
            _ => return None,
        };
        let user = config.get_user()?.to_owned();
        let database = config
            .get_dbname()
            .map_or_else(|| user.clone(), str::to_owned);
        Some(Endpoint {
            host,
            port,
            database,
            user,
        })
    }
}

impl Connect for PgConnect {
    type Conn = tokio_postgres::Client;

    async fn open(&self) -> Result<Self::Conn, ConnectorError> {
        super::connect(&self.spec, &self.secrets).await
    }

    async fn set_up(&self, conn: &mut Self::Conn) -> Result<(), ConnectorError> {
        conn.batch_execute(SESSION_SETUP)
            .await
            .map_err(|e| ConnectorError::Unreachable {
                field: "connection.url".into(),
                reason: format!("setting up the session failed: {e}"),
            })
    }

    fn is_broken(&self, conn: &Self::Conn) -> bool {
        conn.is_closed()
    }
}

#[cfg(test)]
mod tests {
    use kyma_catalog::TlsMode;

    use super::*;

    fn endpoint(url: &str) -> Option<Endpoint> {
        let spec = ConnectionSpec {
            url: url.into(),
            secret_ref: None,
            tls: TlsMode::Disable,
            pool_size: 1,
            tls_ca_ref: None,
        };
        PgConnect::new(spec, SecretResolver::new("/nonexistent")).endpoint()
    }

    #[test]
    fn the_endpoint_fills_in_postgres_defaults() {
        assert_eq!(
            endpoint("postgres://App@DB.example:6543/sales"),
            Some(Endpoint {
                host: "db.example".into(),
                port: 6543,
                database: "sales".into(),
                user: "App".into(),
            })
        );
        assert_eq!(
            endpoint("postgres://app@db"),
            Some(Endpoint {
                host: "db".into(),
                port: DEFAULT_PORT,
                database: "app".into(),
                user: "app".into(),
            }),
            "port 5432, database named after the user"
        );
        assert_eq!(
            endpoint("host=db user=app dbname=sales"),
            endpoint("postgres://app@db:5432/sales"),
            "key=value and URL forms name the same endpoint"
        );
    }

    #[test]
    fn several_hosts_or_no_user_have_no_endpoint() {
        assert_eq!(endpoint("postgres://app@a,b/sales"), None);
        assert_eq!(endpoint("postgres://db/sales"), None);
        assert_eq!(endpoint("not a url"), None);
    }
}

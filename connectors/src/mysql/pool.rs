//! MySQL connections for federation, pooled by the generic [`crate::pool::Pool`]: each is
//! opened by [`super::connect`] (TLS policy, secret, the pinned session of
//! [`super::SESSION_SETUP`]) and made read-only, since federation never writes.

use std::sync::Arc;

use kyma_catalog::ConnectionSpec;
use mysql_async::prelude::Queryable;

use crate::error::ConnectorError;
use crate::pool::{Connect, Endpoint, Pool, PoolLimits, Pooled};
use crate::secrets::SecretResolver;

/// Up to `pool_size` federation connections to one MySQL source.
pub type MyPool = Pool<MyConnect>;

/// A connection on loan from a [`MyPool`].
pub type PooledConn = Pooled<MyConnect>;

/// How federation connects to one MySQL source.
#[derive(Debug, Clone)]
pub struct MyConnect {
    spec: ConnectionSpec,
    secrets: SecretResolver,
}

impl MyConnect {
    /// Connections to the source of `spec`, with the password from `secrets`.
    pub fn new(spec: ConnectionSpec, secrets: SecretResolver) -> Self {
        Self { spec, secrets }
    }

    /// A pool of up to `connection.pool_size` such connections; connects lazily.
    pub fn pool(spec: ConnectionSpec, secrets: SecretResolver) -> Arc<MyPool> {
        let size = spec.pool_size;
        Pool::new(Self::new(spec, secrets), size, PoolLimits::default())
    }

    /// Where the connections go.
    pub fn endpoint(&self) -> Option<Endpoint> {
        super::endpoint(&self.spec.url).ok()
    }
}

impl Connect for MyConnect {
    type Conn = mysql_async::Conn;

    async fn open(&self) -> Result<Self::Conn, ConnectorError> {
        super::connect(&self.spec, &self.secrets).await
    }

    async fn set_up(&self, conn: &mut Self::Conn) -> Result<(), ConnectorError> {
        conn.query_drop("SET SESSION TRANSACTION READ ONLY")
            .await
            .map_err(|e| ConnectorError::Unreachable {
                field: "connection.url".into(),
                reason: format!("setting up the session failed: {e}"),
            })
    }

    fn is_broken(&self, _conn: &Self::Conn) -> bool {
        // mysql_async notices a broken connection only on its next use; a query on one fails
        // as unreachable and the connection is dropped with its error.
        false
    }
}

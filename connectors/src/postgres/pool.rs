//! A bounded pool of read-only source connections (`connection.pool_size`) for federation.
//!
//! Every connection is set up the same way before use, because pushed-down SQL relies on it:
//! `TimeZone = 'UTC'` (kyma timestamps are UTC, so timestamp casts and `date_trunc` agree
//! with DataFusion), `standard_conforming_strings = on` (a backslash in a literal is just a
//! backslash), `DateStyle = ISO`, and read-only transactions (federation never writes).
//! A connection that broke is dropped rather than returned.

use std::ops::Deref;
use std::sync::{Arc, Mutex};

use kyma_catalog::ConnectionSpec;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ConnectorError;
use crate::secrets::SecretResolver;

/// The session settings every pooled connection runs with.
const SESSION_SETUP: &str = "SET TimeZone = 'UTC'; SET standard_conforming_strings = on; \
     SET DateStyle = 'ISO'; SET default_transaction_read_only = on; \
     SET application_name = 'kyma-federation'";

/// Up to `pool_size` connections to one source, shared by all queries of a node.
#[derive(Debug)]
pub struct PgPool {
    spec: ConnectionSpec,
    secrets: SecretResolver,
    idle: Mutex<Vec<tokio_postgres::Client>>,
    permits: Arc<Semaphore>,
}

impl PgPool {
    /// A pool for the source of `spec`; connects lazily.
    pub fn new(spec: ConnectionSpec, secrets: SecretResolver) -> Arc<Self> {
        let size = usize::try_from(spec.pool_size.max(1)).unwrap_or(1);
        Arc::new(Self {
            spec,
            secrets,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(size)),
        })
    }

    /// A connection: an idle one, or a new one when none is idle. Waits while `pool_size`
    /// connections are in use.
    pub async fn get(self: &Arc<Self>) -> Result<PooledClient, ConnectorError> {
        let permit = self.permits.clone().acquire_owned().await.map_err(|_| {
            ConnectorError::Unreachable {
                field: "connection.pool_size".into(),
                reason: "the connection pool is closed".into(),
            }
        })?;
        let reused = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            std::iter::from_fn(|| idle.pop()).find(|c| !c.is_closed())
        };
        let client = match reused {
            Some(client) => client,
            None => {
                let client = super::connect(&self.spec, &self.secrets).await?;
                client.batch_execute(SESSION_SETUP).await.map_err(|e| {
                    ConnectorError::Unreachable {
                        field: "connection.url".into(),
                        reason: format!("setting up the session failed: {e}"),
                    }
                })?;
                client
            }
        };
        Ok(PooledClient {
            client: Some(client),
            pool: self.clone(),
            reusable: true,
            _permit: permit,
        })
    }
}

/// A connection on loan from a [`PgPool`]; it goes back when dropped, unless it broke or is
/// mid-stream (see [`PooledClient::streaming`]).
#[derive(Debug)]
pub struct PooledClient {
    client: Option<tokio_postgres::Client>,
    pool: Arc<PgPool>,
    reusable: bool,
    _permit: OwnedSemaphorePermit,
}

impl PooledClient {
    /// Marks a result stream as running (`true`) or fully read (`false`). Dropped while a
    /// stream runs, the connection is closed rather than pooled: closing it ends the query
    /// at the source, where pooling it would leave the next user behind the rest of the
    /// stream.
    pub fn streaming(&mut self, running: bool) {
        self.reusable = !running;
    }
}

impl Deref for PooledClient {
    type Target = tokio_postgres::Client;

    fn deref(&self) -> &Self::Target {
        // Only `drop` takes the client out.
        self.client.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for PooledClient {
    fn drop(&mut self) {
        if let Some(client) = self.client.take()
            && self.reusable
            && !client.is_closed()
        {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(client);
        }
    }
}

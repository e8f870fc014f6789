//! A bounded pool of source connections (`connection.pool_size`), the same for every source.
//!
//! A source says how to open a connection, how to set up its session and how to tell that
//! one broke ([`Connect`]); the pool does the rest:
//!
//! - at most `pool_size` connections are on loan at once (a semaphore); a caller waits for
//!   one to come back;
//! - a returned connection is reused, newest first, unless it broke, sat idle longer than
//!   [`PoolLimits::idle_timeout`] or is older than [`PoolLimits::max_lifetime`]; otherwise a
//!   new one is opened and set up;
//! - a connection dropped while a result stream runs on it ([`Pooled::streaming`]) is closed
//!   rather than returned: closing it ends the query at the source, where pooling it would
//!   leave the next user behind the rest of the stream.

use std::fmt;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ConnectorError;

/// How one source's connections are made: what a [`Pool`] needs from a source.
pub trait Connect: fmt::Debug + Send + Sync + 'static {
    /// A connection (the source's client).
    type Conn: Send + 'static;

    /// Opens a connection.
    fn open(&self) -> impl Future<Output = Result<Self::Conn, ConnectorError>> + Send;

    /// Sets up a newly opened connection's session, once, before its first use.
    fn set_up(
        &self,
        conn: &mut Self::Conn,
    ) -> impl Future<Output = Result<(), ConnectorError>> + Send;

    /// Whether the connection broke (it is then dropped, never lent again).
    fn is_broken(&self, conn: &Self::Conn) -> bool;
}

/// Where a source's connections go: one server, one database, as one user (no password).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Host name (lower case) or Unix socket directory.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Database (for Postgres; the default schema for MySQL).
    pub database: String,
    /// The user connected as.
    pub user: String,
}

/// How long a connection may be kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    /// An idle connection older than this (since it was returned) is closed, not reused:
    /// servers and middleboxes drop idle connections silently.
    pub idle_timeout: Duration,
    /// A connection older than this (since it was opened) is closed, not reused, so that
    /// session state and server-side memory do not grow forever.
    pub max_lifetime: Duration,
}

impl Default for PoolLimits {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(10 * 60),
            max_lifetime: Duration::from_secs(60 * 60),
        }
    }
}

/// An idle connection and its ages.
struct Idle<T> {
    conn: T,
    opened: Instant,
    returned: Instant,
}

/// Up to `pool_size` connections to one source, shared by all queries of a node.
pub struct Pool<C: Connect> {
    connect: C,
    limits: PoolLimits,
    idle: Mutex<Vec<Idle<C::Conn>>>,
    permits: Arc<Semaphore>,
}

impl<C: Connect> fmt::Debug for Pool<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let idle = self.idle.lock().map_or(0, |idle| idle.len());
        f.debug_struct("Pool")
            .field("connect", &self.connect)
            .field("limits", &self.limits)
            .field("idle", &idle)
            .field("available", &self.permits.available_permits())
            .finish()
    }
}

impl<C: Connect> Pool<C> {
    /// A pool of up to `size` (at least 1) connections made by `connect`; connects lazily.
    pub fn new(connect: C, size: u32, limits: PoolLimits) -> Arc<Self> {
        let size = usize::try_from(size.max(1)).unwrap_or(1);
        Arc::new(Self {
            connect,
            limits,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(size)),
        })
    }

    /// A connection: an idle one, or a new one when none is usable. Waits while `pool_size`
    /// connections are on loan.
    pub async fn get(self: &Arc<Self>) -> Result<Pooled<C>, ConnectorError> {
        let permit = self.permits.clone().acquire_owned().await.map_err(|_| {
            ConnectorError::Unreachable {
                field: "connection.pool_size".into(),
                reason: "the connection pool is closed".into(),
            }
        })?;
        let (conn, opened) = match self.reusable() {
            Some(idle) => (idle.conn, idle.opened),
            None => {
                let mut conn = self.connect.open().await?;
                self.connect.set_up(&mut conn).await?;
                (conn, Instant::now())
            }
        };
        Ok(Pooled {
            conn: Some(conn),
            opened,
            pool: self.clone(),
            reusable: true,
            _permit: permit,
        })
    }

    /// The newest idle connection still fit for use; unfit ones met on the way are closed.
    fn reusable(&self) -> Option<Idle<C::Conn>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        std::iter::from_fn(|| idle.pop()).find(|c| {
            !self.connect.is_broken(&c.conn)
                && c.returned.elapsed() < self.limits.idle_timeout
                && c.opened.elapsed() < self.limits.max_lifetime
        })
    }
}

/// A connection on loan from a [`Pool`]; it goes back when dropped, unless it broke or is
/// mid-stream (see [`Pooled::streaming`]).
pub struct Pooled<C: Connect> {
    conn: Option<C::Conn>,
    opened: Instant,
    pool: Arc<Pool<C>>,
    reusable: bool,
    _permit: OwnedSemaphorePermit,
}

impl<C: Connect> fmt::Debug for Pooled<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pooled")
            .field("connect", &self.pool.connect)
            .field("reusable", &self.reusable)
            .finish_non_exhaustive()
    }
}

impl<C: Connect> Pooled<C> {
    /// Marks a result stream as running (`true`) or fully read (`false`). Dropped while a
    /// stream runs, the connection is closed rather than pooled (see the module doc).
    pub fn streaming(&mut self, running: bool) {
        self.reusable = !running;
    }
}

impl<C: Connect> Deref for Pooled<C> {
    type Target = C::Conn;

    fn deref(&self) -> &Self::Target {
        // Only `drop` takes the connection out.
        self.conn.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl<C: Connect> DerefMut for Pooled<C> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        // Only `drop` takes the connection out.
        self.conn.as_mut().unwrap_or_else(|| unreachable!())
    }
}

impl<C: Connect> Drop for Pooled<C> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take()
            && self.reusable
            && !self.pool.connect.is_broken(&conn)
        {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Idle {
                    conn,
                    opened: self.opened,
                    returned: Instant::now(),
                });
        }
    }
}

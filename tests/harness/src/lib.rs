//! Real servers for kyma's tests: etcd, PostgreSQL (logical WAL), MariaDB (ROW binlog, GTIDs)
//! and an S3-compatible server (s3s-fs), each started on free loopback ports in a temporary
//! directory.
//!
//! # Lifecycle
//!
//! Every server runs under a small `sh` supervisor whose standard input is a pipe held by the
//! test process. When the test process exits — normally, by panic or by SIGKILL — the pipe
//! closes, the supervisor stops the server and waits for it, and a per-process janitor removes
//! the temporary directory. Tests can also stop a server on purpose ([`ServerProcess::stop`],
//! [`ServerProcess::kill`]) and start it again on the same port and data.
//!
//! `shared_*()` returns one server per test binary (tests isolate by database, key prefix or
//! bucket, see [`unique_name`]); `start()` gives a test its own server, for tests that restart
//! or kill it.
//!
//! PostgreSQL and MariaDB refuse to run as root; when the tests run as root (CI does), they
//! run as the `postgres` and `mysql` users their Debian packages create.

mod process;
mod servers;
mod tls;

pub use process::{HarnessError, ServerProcess, free_port, http_get};
pub use servers::{Etcd, MariaDb, Postgres, S3};
pub use tls::{Issued, TestCa};

use std::sync::atomic::{AtomicU64, Ordering};

/// A name unique within this test run, for isolating tests on a shared server:
/// `{prefix}_{pid}_{counter}`, lower-case ASCII, valid as a database name, key prefix or bucket
/// (bucket names use `-`: see [`S3::bucket_name`]).
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Prints the line a test prints when it skips for a missing optional server, and says whether
/// to skip. MongoDB cannot be installed here: its tests run when `KYMA_TEST_MONGODB_URL` names
/// a replica set.
pub fn mongodb_url_or_skip(test: &str) -> Option<String> {
    match std::env::var("KYMA_TEST_MONGODB_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("SKIP {test}: set KYMA_TEST_MONGODB_URL to a MongoDB replica set to run it");
            None
        }
    }
}

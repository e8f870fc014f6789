//! The four servers.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::process::{
    HarnessError, Launch, RunAs, ServerProcess, accepts, free_port, http_get, io, output, require,
    run, running_as_root, scratch_dir, system_user,
};
use crate::tls::TestCa;

/// How [`Postgres::rows`] has psql separate cells and records and show NULL: control
/// characters that no test data holds.
const ROWS_FIELD: &str = "\u{1f}";
const ROWS_RECORD: &str = "\u{1e}";
const ROWS_NULL: &str = "\u{1}";

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Returns the shared instance, starting it on first use. Panics with the harness error: this
/// is test setup, and a missing server must fail the test loudly, naming what to install.
fn shared<T>(
    cell: &'static OnceLock<T>,
    start: impl FnOnce() -> Result<T, HarnessError>,
) -> &'static T {
    cell.get_or_init(|| start().unwrap_or_else(|e| panic!("test server failed to start: {e}")))
}

/// The user a server that refuses root runs as.
fn service_user(name: &str) -> Result<Option<RunAs>, HarnessError> {
    if running_as_root() {
        system_user(name).map(Some)
    } else {
        Ok(None)
    }
}

// ----- etcd ----------------------------------------------------------------------------------

/// An etcd server (Debian `etcd-server`).
#[derive(Debug)]
pub struct Etcd {
    client_port: u16,
    process: ServerProcess,
}

impl Etcd {
    /// Starts a single-member etcd on free loopback ports.
    pub fn start() -> Result<Self, HarnessError> {
        let program = require("etcd", "Debian package etcd-server")?;
        let dir = scratch_dir("etcd", None)?;
        let client_port = free_port()?;
        let peer_port = free_port()?;
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let args = vec![
            "--name=kyma-test".into(),
            format!("--data-dir={}", dir.join("data").display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster=kyma-test={peer}"),
            "--log-level=warn".into(),
            "--logger=zap".into(),
        ];
        let process = ServerProcess::start(Launch {
            name: "etcd".into(),
            program,
            args,
            run_as: None,
            log: dir.join("etcd.log"),
            stop_signal: "TERM",
        })?;
        let etcd = Self {
            client_port,
            process,
        };
        etcd.wait_ready()?;
        Ok(etcd)
    }

    /// The etcd shared by every test in this binary.
    pub fn shared() -> &'static Self {
        static CELL: OnceLock<Etcd> = OnceLock::new();
        shared(&CELL, Self::start)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// `127.0.0.1:PORT`, as `--catalog etcd://…/prefix` takes it.
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// Waits until etcd reports itself healthy.
    pub fn wait_ready(&self) -> Result<(), HarnessError> {
        self.process.wait_ready(READY_TIMEOUT, || {
            http_get(self.client_port, "/health").is_some_and(|r| r.contains("\"health\":\"true\""))
        })
    }

    /// The supervised process (stop, kill, restart).
    pub fn process(&self) -> &ServerProcess {
        &self.process
    }

    /// Stops etcd cleanly, starts it again on the same port and data, and waits until healthy.
    pub fn restart(&self) -> Result<(), HarnessError> {
        self.process.restart()?;
        self.wait_ready()
    }
}

// ----- PostgreSQL ----------------------------------------------------------------------------

/// A PostgreSQL 15 server with `wal_level=logical`, trusting loopback connections except for
/// members of role `password_login` (created at start), who need their password.
#[derive(Debug)]
pub struct Postgres {
    port: u16,
    bin: PathBuf,
    data: PathBuf,
    run_as: Option<RunAs>,
    process: ServerProcess,
}

impl Postgres {
    /// Runs initdb and starts the server on a free loopback port.
    pub fn start() -> Result<Self, HarnessError> {
        Self::launch(None)
    }

    /// As [`Postgres::start`], serving TLS with a certificate `ca` issues for `127.0.0.1`
    /// and `localhost` (not shared: each call starts a server).
    pub fn start_tls(ca: &TestCa) -> Result<Self, HarnessError> {
        Self::launch(Some(ca))
    }

    fn launch(ca: Option<&TestCa>) -> Result<Self, HarnessError> {
        let bin = PathBuf::from(
            std::env::var("KYMA_TEST_PG_BIN")
                .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into()),
        );
        let postgres = require(
            &bin.join("postgres").to_string_lossy(),
            "Debian package postgresql-15",
        )?;
        let run_as = service_user("postgres")?;
        let dir = scratch_dir("postgres", run_as)?;
        let data = dir.join("data");
        run(
            "initdb",
            Command::new(bin.join("initdb"))
                .args([
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                    "-D",
                ])
                .arg(&data),
            run_as,
        )?;
        // Members of role `password_login` must log in with a password (tests of bad
        // credentials); everyone else is trusted on loopback.
        let hba = data.join("pg_hba.conf");
        let trusted = fs::read_to_string(&hba).map_err(io("reading pg_hba.conf"))?;
        fs::write(
            &hba,
            format!("host all +password_login 127.0.0.1/32 scram-sha-256\n{trusted}"),
        )
        .map_err(io("writing pg_hba.conf"))?;
        let port = free_port()?;
        let args = vec![
            "-D".into(),
            data.display().to_string(),
            "-p".into(),
            port.to_string(),
            "-k".into(),
            dir.display().to_string(),
            "-c".into(),
            "listen_addresses=127.0.0.1".into(),
            "-c".into(),
            "wal_level=logical".into(),
            "-c".into(),
            "max_replication_slots=32".into(),
            "-c".into(),
            "max_wal_senders=32".into(),
            "-c".into(),
            "max_connections=200".into(),
            "-c".into(),
            "fsync=off".into(),
        ];
        let args = match ca {
            Some(ca) => [args, tls_args(ca, &dir, run_as)?].concat(),
            None => args,
        };
        let process = ServerProcess::start(Launch {
            name: "postgres".into(),
            program: postgres,
            args,
            run_as,
            log: dir.join("postgres.log"),
            // SIGINT is PostgreSQL's fast shutdown: it does not wait for clients to leave.
            stop_signal: "INT",
        })?;
        let server = Self {
            port,
            bin,
            data,
            run_as,
            process,
        };
        server.wait_ready()?;
        server.psql("postgres", "CREATE ROLE password_login NOLOGIN")?;
        Ok(server)
    }

    /// The server shared by every test in this binary.
    pub fn shared() -> &'static Self {
        static CELL: OnceLock<Postgres> = OnceLock::new();
        shared(&CELL, Self::start)
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A program of this server's installation (`psql`, `pg_recvlogical`, …).
    pub fn program(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// A URL for `database` as the `postgres` superuser.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Waits until the server accepts connections.
    pub fn wait_ready(&self) -> Result<(), HarnessError> {
        let pg_isready = self.bin.join("pg_isready");
        self.process.wait_ready(READY_TIMEOUT, || {
            Command::new(&pg_isready)
                .args([
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                ])
                .status()
                .is_ok_and(|s| s.success())
        })
    }

    /// Crashes the server (SIGKILL to the postmaster; its backends notice and exit on their
    /// own), starts it again on the same port and data (crash recovery) and waits until it
    /// accepts connections. A new postmaster refuses to start while a backend of the old one
    /// is still attached to the old shared memory, so this waits until they have all left.
    pub fn crash_restart(&self) -> Result<(), HarnessError> {
        let interlock = self.shared_memory_id();
        self.process.kill()?;
        if let Some(id) = interlock {
            self.process
                .wait_ready(READY_TIMEOUT, || !shared_memory_attached(&id))?;
        }
        self.process.start_again()?;
        self.wait_ready()
    }

    /// The id of the System V shared memory segment the running postmaster interlocks on
    /// (the second number on line 7 of `postmaster.pid`).
    fn shared_memory_id(&self) -> Option<String> {
        let pid_file = fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        pid_file
            .lines()
            .nth(6)?
            .split_whitespace()
            .nth(1)
            .map(str::to_owned)
    }

    /// Runs SQL with psql against `database`, returning its unaligned output.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, HarnessError> {
        run("psql", &mut self.psql_command(database, sql), self.run_as)
    }

    /// Runs one query with psql against `database` in a UTC session and returns its rows,
    /// each cell as the server's text (`None` for NULL): what a simple-query client gets.
    pub fn rows(
        &self,
        database: &str,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, HarnessError> {
        let mut command = self.psql_command(database, sql);
        command
            .args(["-F", ROWS_FIELD, "-R", ROWS_RECORD, "-P"])
            .arg(format!("null={ROWS_NULL}"))
            .env("PGTZ", "UTC");
        let output = output("psql", &mut command, self.run_as)?;
        let text = String::from_utf8_lossy(&output.stdout);
        // Records are separated, not terminated, and the last ends with a newline.
        let Some(text) = text.strip_suffix('\n') else {
            return Ok(Vec::new());
        };
        Ok(text
            .split(ROWS_RECORD)
            .map(|record| {
                record
                    .split(ROWS_FIELD)
                    .map(|cell| (cell != ROWS_NULL).then(|| cell.to_owned()))
                    .collect()
            })
            .collect())
    }

    fn psql_command(&self, database: &str, sql: &str) -> Command {
        let mut command = Command::new(self.bin.join("psql"));
        command
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-p",
            ])
            .arg(self.port.to_string())
            .args(["-d", database, "-c", sql]);
        command
    }

    /// Creates a fresh database named after `prefix` and returns its name.
    pub fn create_database(&self, prefix: &str) -> Result<String, HarnessError> {
        let name = crate::unique_name(prefix);
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""))?;
        Ok(name)
    }

    /// The supervised process (stop, kill, restart).
    pub fn process(&self) -> &ServerProcess {
        &self.process
    }
}

/// Whether a process is attached to System V shared memory segment `id` (Linux).
fn shared_memory_attached(id: &str) -> bool {
    let Ok(table) = fs::read_to_string("/proc/sysvipc/shm") else {
        return false;
    };
    // Columns: key shmid perms size cpid lpid nattch …
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&id) && fields.get(6).is_some_and(|n| *n != "0")
    })
}

/// The server settings for TLS with a certificate `ca` issues.
fn tls_args(ca: &TestCa, dir: &Path, run_as: Option<RunAs>) -> Result<Vec<String>, HarnessError> {
    let (cert, key) = server_certificate(ca, "postgres", dir, run_as)?;
    Ok(vec![
        "-c".into(),
        "ssl=on".into(),
        "-c".into(),
        format!("ssl_cert_file={}", cert.display()),
        "-c".into(),
        format!("ssl_key_file={}", key.display()),
    ])
}

/// A certificate `ca` issues to server `name` for `127.0.0.1` and `localhost`, with its key:
/// copied into the server's directory `dir` and handed to its user (servers refuse a key
/// others can read).
fn server_certificate(
    ca: &TestCa,
    name: &str,
    dir: &Path,
    run_as: Option<RunAs>,
) -> Result<(PathBuf, PathBuf), HarnessError> {
    let issued = ca.issue(name, &["DNS:localhost", "IP:127.0.0.1"])?;
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    fs::copy(&issued.cert, &cert).map_err(io("copying the server certificate"))?;
    fs::copy(&issued.key, &key).map_err(io("copying the server key"))?;
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600))
        .map_err(io("restricting the server key"))?;
    if let Some(owner) = run_as {
        for file in [&cert, &key] {
            std::os::unix::fs::chown(file, Some(owner.uid), Some(owner.gid))
                .map_err(io("handing the TLS files to the server's user"))?;
        }
    }
    Ok((cert, key))
}

// ----- MariaDB -------------------------------------------------------------------------------

/// A MariaDB server with `log_bin`, `binlog_format=ROW`, `binlog_row_image=FULL` and strict
/// GTIDs; user `root` without a password from 127.0.0.1.
#[derive(Debug)]
pub struct MariaDb {
    port: u16,
    socket: PathBuf,
    process: ServerProcess,
}

impl MariaDb {
    /// Installs a fresh data directory and starts the server on a free loopback port.
    pub fn start() -> Result<Self, HarnessError> {
        Self::start_with_binlog(true)
    }

    /// As [`MariaDb::start`], without a binary log (for tests of what needs one).
    pub fn start_without_binlog() -> Result<Self, HarnessError> {
        Self::start_with_binlog(false)
    }

    /// As [`MariaDb::start`], serving TLS with a certificate `ca` issues for `127.0.0.1` and
    /// `localhost` (not shared: each call starts a server).
    pub fn start_tls(ca: &TestCa) -> Result<Self, HarnessError> {
        Self::launch(true, Some(ca))
    }

    fn start_with_binlog(binlog: bool) -> Result<Self, HarnessError> {
        Self::launch(binlog, None)
    }

    fn launch(binlog: bool, ca: Option<&TestCa>) -> Result<Self, HarnessError> {
        let mariadbd = require("mariadbd", "Debian package mariadb-server")?;
        let install_db = require("mariadb-install-db", "Debian package mariadb-server")?;
        let run_as = service_user("mysql")?;
        let dir = scratch_dir("mariadb", run_as)?;
        let data = dir.join("data");
        run(
            "mariadb-install-db",
            Command::new(install_db)
                .arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
                // Temporary tables of its own: bootstraps running at once must not share /tmp.
                .arg(format!("--tmpdir={}", dir.display())),
            run_as,
        )?;
        let port = free_port()?;
        let socket = dir.join("mysqld.sock");
        let log_bin = if binlog {
            format!("--log-bin={}", dir.join("binlog").display())
        } else {
            "--skip-log-bin".into()
        };
        let args = vec![
            "--no-defaults".into(),
            format!("--datadir={}", data.display()),
            format!("--port={port}"),
            "--bind-address=127.0.0.1".into(),
            format!("--socket={}", socket.display()),
            format!("--pid-file={}", dir.join("mysqld.pid").display()),
            format!("--tmpdir={}", dir.display()),
            log_bin,
            "--server-id=1".into(),
            "--binlog-format=ROW".into(),
            "--binlog-row-image=FULL".into(),
            "--gtid-strict-mode=ON".into(),
            "--log-slave-updates=ON".into(),
            "--innodb-buffer-pool-size=64M".into(),
            "--max-connections=300".into(),
            "--character-set-server=utf8mb4".into(),
        ];
        let args = match ca {
            Some(ca) => {
                let (cert, key) = server_certificate(ca, "mariadb", &dir, run_as)?;
                let tls = [
                    format!("--ssl-cert={}", cert.display()),
                    format!("--ssl-key={}", key.display()),
                ];
                [args, tls.to_vec()].concat()
            }
            None => args,
        };
        let process = ServerProcess::start(Launch {
            name: "mariadb".into(),
            program: mariadbd,
            args,
            run_as,
            log: dir.join("mariadb.log"),
            stop_signal: "TERM",
        })?;
        let server = Self {
            port,
            socket,
            process,
        };
        server.wait_ready()?;
        server.sql("CREATE USER IF NOT EXISTS 'root'@'127.0.0.1'; GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;")?;
        Ok(server)
    }

    /// The server shared by every test in this binary.
    pub fn shared() -> &'static Self {
        static CELL: OnceLock<MariaDb> = OnceLock::new();
        shared(&CELL, Self::start)
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for `database` as `root`.
    pub fn url(&self, database: &str) -> String {
        format!("mysql://root@127.0.0.1:{}/{database}", self.port)
    }

    /// Waits until the server answers on its socket.
    pub fn wait_ready(&self) -> Result<(), HarnessError> {
        self.process.wait_ready(READY_TIMEOUT, || {
            accepts(self.port) && self.sql("SELECT 1").is_ok()
        })
    }

    /// Runs SQL as root over the server's socket.
    pub fn sql(&self, sql: &str) -> Result<String, HarnessError> {
        let client = require("mariadb", "Debian package mariadb-client")?;
        run(
            "mariadb",
            Command::new(client)
                .arg("--no-defaults")
                .arg(format!("--socket={}", self.socket.display()))
                .args(["-uroot", "-N", "-B", "-e", sql]),
            None,
        )
    }

    /// Creates a fresh database named after `prefix` and returns its name.
    pub fn create_database(&self, prefix: &str) -> Result<String, HarnessError> {
        let name = crate::unique_name(prefix);
        self.sql(&format!("CREATE DATABASE `{name}`"))?;
        Ok(name)
    }

    /// The supervised process (stop, kill, restart).
    pub fn process(&self) -> &ServerProcess {
        &self.process
    }
}

// ----- S3 ------------------------------------------------------------------------------------

/// An S3-compatible server (s3s-fs) with path-style addressing and static credentials.
#[derive(Debug)]
pub struct S3 {
    port: u16,
    root: PathBuf,
    process: ServerProcess,
}

impl S3 {
    /// Access key the server accepts.
    pub const ACCESS_KEY: &'static str = "kyma-test-access";
    /// Secret key the server accepts.
    pub const SECRET_KEY: &'static str = "kyma-test-secret";
    /// Region to sign requests for.
    pub const REGION: &'static str = "us-east-1";

    /// Starts s3s-fs on a free loopback port.
    pub fn start() -> Result<Self, HarnessError> {
        let program = require(
            "s3s-fs",
            "cargo install --locked s3s-fs@0.14.1 --features binary",
        )?;
        let dir = scratch_dir("s3", None)?;
        let root = dir.join("root");
        fs::create_dir_all(&root).map_err(io("creating the S3 root"))?;
        let port = free_port()?;
        let args = vec![
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            port.to_string(),
            "--access-key".into(),
            Self::ACCESS_KEY.into(),
            "--secret-key".into(),
            Self::SECRET_KEY.into(),
            root.display().to_string(),
        ];
        let process = ServerProcess::start(Launch {
            name: "s3s-fs".into(),
            program,
            args,
            run_as: None,
            log: dir.join("s3s-fs.log"),
            stop_signal: "TERM",
        })?;
        let server = Self {
            port,
            root,
            process,
        };
        server.process.wait_ready(READY_TIMEOUT, || {
            http_get(port, "/").is_some_and(|r| r.starts_with("HTTP/"))
        })?;
        Ok(server)
    }

    /// The server shared by every test in this binary.
    pub fn shared() -> &'static Self {
        static CELL: OnceLock<S3> = OnceLock::new();
        shared(&CELL, Self::start)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A bucket-safe unique name (S3 bucket names take no `_`).
    pub fn bucket_name(prefix: &str) -> String {
        crate::unique_name(prefix).replace('_', "-")
    }

    /// Creates a fresh bucket named after `prefix` and returns its name. (s3s-fs keeps a bucket
    /// as a directory under its root.)
    pub fn create_bucket(&self, prefix: &str) -> Result<String, HarnessError> {
        let name = Self::bucket_name(prefix);
        fs::create_dir_all(self.root.join(&name)).map_err(io("creating a bucket"))?;
        Ok(name)
    }

    /// A client of `bucket` on this server, configured (build it, or add to it first).
    pub fn bucket(&self, bucket: &str) -> object_store::aws::AmazonS3Builder {
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_bucket_name(bucket)
            .with_region(Self::REGION)
            .with_access_key_id(Self::ACCESS_KEY)
            .with_secret_access_key(Self::SECRET_KEY)
            .with_virtual_hosted_style_request(false)
    }

    /// The supervised process (stop, kill, restart).
    pub fn process(&self) -> &ServerProcess {
        &self.process
    }
}

//! `kyma connectors` end to end: a real `kyma standalone` (with an auth token) syncing a real
//! PostgreSQL, driven only through the CLI as an operator or a CI job would. Every lifecycle
//! step, the snapshot watched to streaming, a watch that times out while a table is locked,
//! and every bad input giving a message naming the fix and the documented exit code; the
//! source password appears in no output.

mod common;

use std::process::Command;

use common::Kyma;
use kyma_test_harness::{Postgres, free_port, unique_name};
use serde_json::Value;

const KYMA: &str = env!("CARGO_BIN_EXE_kyma");
const TOKEN: &str = "cli-test-token-7f3a";
const PASSWORD: &str = "s3cret-source-pw";

/// What one `kyma connectors …` run gave.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn expect(self, code: i32, what: &str) -> Self {
        assert_eq!(
            self.code, code,
            "{what}: exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        assert!(
            !self.stdout.contains(PASSWORD) && !self.stderr.contains(PASSWORD),
            "{what}: the source password leaked"
        );
        self
    }

    /// Asserts that standard error names `needle` (what to fix).
    fn says(self, needle: &str) -> Self {
        assert!(
            self.stderr.contains(needle),
            "stderr does not say `{needle}`:\n{}",
            self.stderr
        );
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }
}

/// The CLI pointed at one node.
struct Cli {
    server: String,
}

impl Cli {
    fn run(&self, args: &[&str]) -> Run {
        self.run_with(args, &[("KYMA_AUTH_TOKEN", TOKEN)])
    }

    fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let output = Command::new(KYMA)
            .arg("connectors")
            .args(args)
            .env("KYMA_SERVER", &self.server)
            .env_remove("KYMA_AUTH_TOKEN")
            .envs(env.iter().copied())
            .output()
            .expect("run kyma connectors");
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// A `kyma standalone` requiring [`TOKEN`], started with `flags`, and its gRPC port.
struct Node {
    kyma: Kyma,
    grpc_port: u16,
    _data: tempfile::TempDir,
}

impl Node {
    fn start(flags: &[String]) -> Self {
        let data = tempfile::tempdir().expect("data");
        let grpc_port = free_port().expect("port");
        let data_dir = format!("--data-dir={}", data.path().display());
        let grpc = format!("--grpc-addr=127.0.0.1:{grpc_port}");
        let mut args = vec!["standalone", data_dir.as_str(), grpc.as_str()];
        args.extend(flags.iter().map(String::as_str));
        let mut kyma = Kyma::spawn_with_env(&args, &[("KYMA_AUTH_TOKEN", TOKEN)]);
        kyma.wait_for_200("/readyz");
        Self {
            kyma,
            grpc_port,
            _data: data,
        }
    }
}

fn phases(connector: &Value) -> Vec<(String, String)> {
    let tables = connector["status"]["tables"].as_object().expect("tables");
    tables
        .iter()
        .map(|(name, t)| (name.clone(), t["phase"].as_str().unwrap_or("-").to_owned()))
        .collect()
}

#[test]
fn connectors_are_managed_end_to_end_from_the_cli() {
    let pg = Postgres::shared();
    let role = unique_name("cli");
    let database = pg.create_database("cli").expect("database");
    pg.psql(
        "postgres",
        &format!(
            "CREATE ROLE {role} LOGIN REPLICATION PASSWORD '{PASSWORD}' IN ROLE password_login"
        ),
    )
    .expect("role");
    pg.psql(
        &database,
        &format!(
            "CREATE TABLE orders (id bigint PRIMARY KEY, amount int);
             INSERT INTO orders SELECT g, g % 97 FROM generate_series(1, 20000) g;
             CREATE TABLE customers (id int PRIMARY KEY, name text);
             INSERT INTO customers SELECT g, 'c' || g FROM generate_series(1, 300) g;
             ALTER TABLE orders OWNER TO {role}; ALTER TABLE customers OWNER TO {role};
             ANALYZE;"
        ),
    )
    .expect("tables");
    let secrets = tempfile::tempdir().expect("secrets");
    std::fs::write(secrets.path().join("pg-password"), PASSWORD).expect("secret");
    let node = Node::start(&[format!("--secrets-dir={}", secrets.path().display())]);
    let cli = Cli {
        server: format!("grpc://127.0.0.1:{}", node.grpc_port),
    };
    let specs = tempfile::tempdir().expect("specs");
    let url = format!("postgres://{role}@127.0.0.1:{}/{database}", pg.port());
    let spec = |name: &str, extra: &str| {
        let path = specs.path().join(format!("{name}.yaml"));
        let text = format!(
            "name: {name}\ntype: postgres\nmode: sync\nconnection:\n  url: {url}\n  secret_ref: pg-password\n{extra}"
        );
        std::fs::write(&path, text).expect("spec");
        path.to_string_lossy().into_owned()
    };

    // A role that may not create the publication: the watch ends naming the privilege.
    cli.run(&["create", "-f", &spec("denied", ""), "--watch"])
        .expect(1, "create --watch without CREATE on the database")
        .says("needs CREATE on the database");
    cli.run(&["delete", "denied"]).expect(0, "delete");
    pg.psql(
        "postgres",
        &format!("GRANT CREATE ON DATABASE {database} TO {role}"),
    )
    .expect("grant");

    // Create and watch the snapshot to streaming.
    let created = cli
        .run(&["create", "-f", &spec("shop", ""), "--watch"])
        .expect(0, "create --watch");
    assert!(
        created
            .stdout
            .contains("shop: every table is streaming (2 tables"),
        "{}",
        created.stdout
    );
    let listed = cli.run(&["list"]).expect(0, "list");
    let line = listed
        .stdout
        .lines()
        .find(|l| l.starts_with("shop "))
        .expect("listed");
    assert!(line.contains("postgres") && line.contains("2/2"), "{line}");
    let shown = cli.run(&["get", "shop"]).expect(0, "get");
    let orders = shown
        .stdout
        .lines()
        .find(|l| l.starts_with("public.orders"))
        .expect("row");
    assert!(
        orders.contains("streaming") && orders.contains("20,000"),
        "{orders}"
    );
    let json = cli
        .run(&["get", "shop", "-o", "json"])
        .expect(0, "get -o json")
        .json();
    assert_eq!(json["state"], "running");
    assert_eq!(json["connection"]["secret_ref"], "pg-password");
    assert_eq!(
        phases(&json),
        [
            ("public.customers".into(), "streaming".into()),
            ("public.orders".into(), "streaming".into())
        ]
    );

    // Resync a table; it is copied again and streams.
    let resync = cli
        .run(&["resync", "shop", "public.customers", "-o", "json"])
        .expect(0, "resync");
    assert!(
        resync.json()["request"].as_u64().is_some_and(|n| n >= 1),
        "{}",
        resync.stdout
    );
    cli.run(&["get", "shop", "--watch"])
        .expect(0, "get --watch after resync");

    // Pause and resume; a paused connector's watch ends naming the fix.
    let paused = cli.run(&["pause", "shop", "-o", "json"]).expect(0, "pause");
    assert_eq!(paused.json()["state"], "paused");
    cli.run(&["get", "shop", "--watch"])
        .expect(1, "watch a paused connector")
        .says("kyma connectors resume shop");
    let resumed = cli
        .run(&["resume", "shop", "-o", "json"])
        .expect(0, "resume");
    assert_eq!(resumed.json()["state"], "running");

    // A snapshot that cannot progress (its table is locked) times out with exit 5, then
    // finishes once the lock is gone.
    let runtime = common::runtime();
    let locker = runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(
            &pg.url(&database).replace("postgres://", "postgresql://"),
            tokio_postgres::NoTls,
        )
        .await
        .expect("connect");
        tokio::spawn(connection);
        client
            .batch_execute("BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
            .await
            .expect("lock");
        client
    });
    cli.run(&[
        "create",
        "-f",
        &spec("locked", ""),
        "--watch",
        "--watch-timeout",
        "2",
    ])
    .expect(5, "watch a locked snapshot")
    .says("--watch-timeout");
    runtime.block_on(async { locker.batch_execute("ROLLBACK").await.expect("unlock") });
    cli.run(&["get", "locked", "--watch"])
        .expect(0, "the snapshot finishes once unlocked");

    // Bad inputs: a clear message and the documented exit code.
    cli.run(&["create", "-f", "/no/such/spec.yaml"])
        .expect(2, "missing file")
        .says("cannot read the spec file");
    cli.run(&["create", "-f", &spec("typo", "  password: hunter2\n")])
        .expect(2, "unknown field")
        .says("unknown field `password`");
    let too_big = specs.path().join("big.json");
    std::fs::write(
        &too_big,
        format!(r#"{{"name": "big", "type": "postgres", "mode": "federation",
                    "connection": {{"url": "{url}", "secret_ref": "pg-password", "pool_size": 5000}}}}"#),
    )
    .expect("spec");
    cli.run(&["create", "-f", &too_big.to_string_lossy()])
        .expect(1, "pool_size")
        .says("connection.pool_size");
    cli.run(&["create", "-f", &spec("shop", "")])
        .expect(1, "duplicate name")
        .says("shop");
    let wrong_port = url.replace(
        &format!(":{}/", pg.port()),
        &format!(":{}/", free_port().expect("port")),
    );
    let unreachable_source = specs.path().join("away.yaml");
    std::fs::write(
        &unreachable_source,
        format!("name: away\ntype: postgres\nmode: federation\nconnection:\n  url: {wrong_port}\n  secret_ref: pg-password\n"),
    )
    .expect("spec");
    cli.run(&["create", "-f", &unreachable_source.to_string_lossy()])
        .expect(1, "unreachable source")
        .says("connection.url");
    cli.run(&["get", "nobody"])
        .expect(3, "unknown connector")
        .says("nobody");
    cli.run(&["pause", "nobody"])
        .expect(3, "pause an unknown connector");
    cli.run(&["resync", "shop", "public.nope"])
        .expect(1, "unknown table")
        .says("public.nope");
    cli.run_with(&["list"], &[("KYMA_AUTH_TOKEN", "wrong-token")])
        .expect(4, "wrong token")
        .says("--auth-token");
    cli.run_with(&["list"], &[]).expect(4, "no token");
    let nowhere = Cli {
        server: format!("http://127.0.0.1:{}", free_port().expect("port")),
    };
    nowhere
        .run(&["list"])
        .expect(4, "no server")
        .says("cannot reach the node");
    let scheme = Cli {
        server: "ftp://127.0.0.1:1".into(),
    };
    scheme
        .run(&["list"])
        .expect(2, "bad scheme")
        .says("--server");
    cli.run(&["resync", "shop"]).expect(2, "missing argument");

    // Delete: gone, and a second delete says so.
    for name in ["shop", "locked"] {
        let deleted = cli.run(&["delete", name, "-o", "json"]).expect(0, "delete");
        assert_eq!(deleted.json()["deleted"], name);
    }
    cli.run(&["get", "shop"]).expect(3, "deleted");
    cli.run(&["delete", "shop"]).expect(3, "deleted twice");
    let log = node.kyma.log();
    assert!(
        !log.contains(PASSWORD),
        "the password leaked into the node's log"
    );
}

#[test]
fn the_cli_verifies_a_tls_node_against_the_ca_it_is_given() {
    let ca = kyma_test_harness::TestCa::new("node").expect("CA");
    let issued = ca
        .issue("node", &["DNS:localhost", "IP:127.0.0.1"])
        .expect("certificate");
    let ca_file = tempfile::NamedTempFile::new().expect("CA file");
    std::fs::write(ca_file.path(), ca.pem().expect("pem")).expect("write");
    let node = Node::start(&[
        format!("--tls-cert={}", issued.cert.display()),
        format!("--tls-key={}", issued.key.display()),
    ]);
    let ca_path = ca_file.path().to_string_lossy().into_owned();
    let https = Cli {
        server: format!("https://127.0.0.1:{}", node.grpc_port),
    };
    let listed = https
        .run(&["list", "--tls-ca", &ca_path, "-o", "json"])
        .expect(0, "TLS with the CA");
    assert_eq!(listed.json(), serde_json::json!([]));
    https
        .run(&["list", "--tls-ca", &ca_path, "--tls-domain", "localhost"])
        .expect(0, "TLS naming the certificate's DNS name");
    https
        .run(&["list"])
        .expect(4, "TLS against the Web PKI roots")
        .says("cannot reach the node");
    let plaintext = Cli {
        server: format!("grpc://127.0.0.1:{}", node.grpc_port),
    };
    plaintext
        .run(&["list"])
        .expect(4, "plaintext to a TLS node");
}

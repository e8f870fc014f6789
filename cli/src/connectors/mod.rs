//! `kyma connectors …`: the connector admin API (SPEC §4) from a terminal or a CI job,
//! through a node's admin gRPC service (the port Flight SQL is served on).
//!
//! Every command prints a readable table, or with `--output json` the connector as the REST
//! API shows it (one JSON document; with `--watch`, one per line as the status changes).
//! Exit codes are part of the interface, for scripts: see [`Exit`].

mod client;
mod show;
mod spec;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use kyma_connectors::Secret;
use kyma_query_node::admin_grpc::proto;

use crate::settings::parse_secret;
use client::AdminClient;

/// What `kyma connectors` exits with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Done; with `--watch`, every table is streaming.
    Done = 0,
    /// The server refused the request (it names the field or state to fix), or a watched
    /// table failed.
    Refused = 1,
    /// A bad command line or spec file: nothing was sent.
    Usage = 2,
    /// No such connector or table.
    NotFound = 3,
    /// The server could not be reached or cannot answer now (transport, TLS, authentication,
    /// unavailable): nothing changed, or a retry is safe.
    Unreachable = 4,
    /// `--watch-timeout` passed before every table was streaming.
    TimedOut = 5,
}

const EXIT_CODES: &str = "Exit codes: 0 done (with --watch: every table streaming); 1 refused by the server, \
or a watched table failed; 2 bad command line or spec file (nothing sent); 3 no such connector \
or table; 4 server unreachable, TLS or authentication failed, or unavailable (safe to retry); \
5 --watch-timeout passed.";

/// A failed command: what to print and what to exit with.
#[derive(Debug)]
pub struct CliError {
    /// The exit code.
    pub exit: Exit,
    /// What went wrong, naming what to fix.
    pub message: String,
}

impl CliError {
    /// An error exiting with `exit`.
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self {
            exit,
            message: message.into(),
        }
    }
}

/// `kyma connectors`.
#[derive(Debug, Args)]
#[command(after_help = EXIT_CODES)]
pub struct ConnectorsArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// How to print results.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    action: Action,
}

/// How to reach the node.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// The node's gRPC address: http://HOST:PORT or https://HOST:PORT (grpc:// and
    /// grpc+tls://, as ADBC writes them, work too).
    #[arg(
        long,
        global = true,
        env = "KYMA_SERVER",
        default_value = "http://127.0.0.1:50051",
        value_name = "URL"
    )]
    server: String,
    /// The node's bearer token (its --auth-token); prefer the environment variable.
    #[arg(
        long,
        global = true,
        env = "KYMA_AUTH_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        value_parser = parse_secret
    )]
    auth_token: Option<Secret>,
    /// PEM file of the CA that signed the node's certificate (implies TLS). Without it, an
    /// https:// server is verified against the Web PKI roots.
    #[arg(long, global = true, env = "KYMA_TLS_CA", value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// The name the node's certificate must carry (default: the server URL's host).
    #[arg(long, global = true, value_name = "NAME")]
    tls_domain: Option<String>,
    /// Seconds to wait for the node to answer one request.
    #[arg(long, global = true, default_value_t = 30, value_name = "SECS")]
    timeout_secs: u64,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Readable tables.
    Table,
    /// JSON, as the REST API answers.
    Json,
}

/// `--watch` and its limit.
#[derive(Debug, Args)]
struct WatchArgs {
    /// Follow the snapshot (per table: rows copied of estimated, rate, time left) until every
    /// table is streaming.
    #[arg(long)]
    watch: bool,
    /// With --watch: give up after this many seconds (exit 5); 0 waits as long as it takes.
    #[arg(long, default_value_t = 0, value_name = "SECS", requires = "watch")]
    watch_timeout: u64,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Register a connector from a spec file (JSON or YAML, as the REST API takes; `-` reads
    /// standard input).
    Create {
        /// The spec file, read and checked before anything is sent.
        #[arg(long = "file", short = 'f', value_name = "FILE", value_parser = spec::read)]
        spec: Box<proto::ConnectorSpec>,
        #[command(flatten)]
        watch: WatchArgs,
    },
    /// Every connector: type, mode, state, tables streaming, lag, last error.
    List,
    /// One connector, with per-table phase, rows, lag and last error.
    Get {
        /// The connector.
        name: String,
        #[command(flatten)]
        watch: WatchArgs,
    },
    /// Hold syncing where it is.
    Pause {
        /// The connector.
        name: String,
    },
    /// Resume a paused connector.
    Resume {
        /// The connector.
        name: String,
    },
    /// Copy one table again (its worker re-snapshots it, then streams).
    Resync {
        /// The connector.
        name: String,
        /// The table, `schema.table` as `get` lists it.
        table: String,
    },
    /// Remove a connector and its replication objects at the source.
    Delete {
        /// The connector.
        name: String,
    },
}

/// Runs `kyma connectors …` and exits as [`Exit`] says.
pub fn main(args: ConnectorsArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            show::error(&format!("cannot start the async runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::from(Exit::Done as u8),
        Err(e) => {
            show::error(&e.message);
            ExitCode::from(e.exit as u8)
        }
    }
}

async fn run(args: ConnectorsArgs) -> Result<(), CliError> {
    let output = args.output;
    let mut client = AdminClient::connect(&args.server).await?;
    match args.action {
        Action::Create { spec, watch } => {
            let connector = client.create(*spec).await?;
            finish(&mut client, connector, output, &watch).await
        }
        Action::List => {
            let connectors = client.list().await?;
            show::connectors(&connectors, output)
        }
        Action::Get { name, watch } => {
            let connector = client.get(&name).await?;
            finish(&mut client, connector, output, &watch).await
        }
        Action::Pause { name } => show::connector(&client.pause(&name).await?, output),
        Action::Resume { name } => show::connector(&client.resume(&name).await?, output),
        Action::Resync { name, table } => {
            let request = client.resync(&name, &table).await?;
            show::resync(&name, &table, request, output)
        }
        Action::Delete { name } => {
            let warnings = client.delete(&name).await?;
            show::deleted(&name, &warnings, output)
        }
    }
}

/// Shows `connector`, then follows it when `--watch` asks.
async fn finish(
    client: &mut AdminClient,
    connector: proto::Connector,
    output: Output,
    watch: &WatchArgs,
) -> Result<(), CliError> {
    if !watch.watch {
        return show::connector(&connector, output);
    }
    let limit = (watch.watch_timeout > 0).then(|| Duration::from_secs(watch.watch_timeout));
    watch::follow(client, connector, output, limit).await
}

//! Command-line settings. Every setting is a flag, an environment variable (`KYMA_…`) and a key
//! of the config file given with `--config` (same name as the flag, without the dashes);
//! precedence: flag, then environment, then config file, then default. A bad value is refused
//! at start with a message naming the flag.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand};
use kyma_catalog::CatalogLocation;
use kyma_connectors::Secret;
use kyma_table::StoreLocation;
use kyma_table::cache::{ExtentCache, QUERY_NODE_CAPACITY_MB, QUERY_NODE_MAX_OBJECT_MB};
use kyma_table::columns;

use crate::connectors::ConnectorsArgs;

/// kyma: SQL over Arrow Flight SQL across kyma tables and operational databases.
#[derive(Debug, Parser)]
#[command(name = "kyma", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// A process to run, or a client command.
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant, reason = "parsed once per process")]
pub enum Command {
    /// The three processes.
    #[command(flatten)]
    Process(Process),
    /// Manage connectors on a running node through its admin gRPC API.
    Connectors(ConnectorsArgs),
}

/// The three processes.
#[derive(Debug, Subcommand)]
pub enum Process {
    /// Query node and one CDC worker in one process, on an embedded catalog and local storage.
    Standalone(StandaloneArgs),
    /// A stateless query node on an etcd catalog and object storage.
    QueryNode(QueryNodeArgs),
    /// A CDC worker on an etcd catalog and object storage.
    CdcWorker(CdcWorkerArgs),
}

impl Process {
    /// The settings every process has.
    pub fn common(&self) -> &CommonArgs {
        match self {
            Process::Standalone(a) => &a.common,
            Process::QueryNode(a) => &a.common,
            Process::CdcWorker(a) => &a.common,
        }
    }
}

/// Settings every process has.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Config file (TOML); its keys are the flag names, e.g. `http-addr = "0.0.0.0:8080"`.
    #[arg(long, env = "KYMA_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// HTTP address: /healthz, /readyz, /metrics (and the REST admin API on query nodes).
    #[arg(
        long,
        env = "KYMA_HTTP_ADDR",
        default_value = "127.0.0.1:8080",
        value_name = "ADDR"
    )]
    pub http_addr: SocketAddr,
    /// Log format.
    #[arg(long, env = "KYMA_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Directory of mounted secrets (one file per secret).
    #[arg(
        long,
        env = "KYMA_SECRETS_DIR",
        default_value = "/var/run/secrets/kyma",
        value_name = "DIR"
    )]
    pub secrets_dir: PathBuf,
    /// Check the settings (flags, environment, config file) and exit without starting: 0
    /// when they are valid, printing them (secrets hidden); 2 naming the one to fix. Files
    /// the settings name (TLS certificates, secrets) are not read.
    #[arg(long)]
    pub check_config: bool,
}

/// Settings of processes that serve queries.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Flight SQL and admin gRPC address.
    #[arg(
        long,
        env = "KYMA_GRPC_ADDR",
        default_value = "127.0.0.1:50051",
        value_name = "ADDR"
    )]
    pub grpc_addr: SocketAddr,
    /// Require this bearer token from Flight SQL clients (a basic-auth handshake presents it
    /// as the password). Off when unset; prefer the environment variable to the flag.
    #[arg(
        long,
        env = "KYMA_AUTH_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        value_parser = parse_secret
    )]
    pub auth_token: Option<Secret>,
    /// PEM certificate for TLS on the gRPC port (with --tls-key). Plaintext when unset.
    #[arg(long, env = "KYMA_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS on the gRPC port (with --tls-cert).
    #[arg(long, env = "KYMA_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Push filters, projections, limits, aggregates and joins to federated sources. Off
    /// reads whole rows and runs everything in kyma (for diagnosis).
    #[arg(
        long,
        env = "KYMA_FEDERATION_PUSHDOWN",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_name = "BOOL"
    )]
    pub federation_pushdown: bool,
    /// Memory for extents and manifests read from object storage, kept across queries (they
    /// never change, so a cached copy is never stale), in MiB.
    #[arg(long, env = "KYMA_EXTENT_CACHE_MB", default_value_t = QUERY_NODE_CAPACITY_MB, value_name = "MIB")]
    pub extent_cache_mb: u64,
    /// Extents up to this size are fetched whole and cached; larger ones are read by range,
    /// uncached. In MiB.
    #[arg(long, env = "KYMA_EXTENT_CACHE_MAX_OBJECT_MB", default_value_t = QUERY_NODE_MAX_OBJECT_MB, value_name = "MIB")]
    pub extent_cache_max_object_mb: u64,
    /// Memory for decoded columns of the extents queries read (extents never change, so
    /// they are decoded once), in MiB; 0 decodes every read. A column of an extent larger
    /// than a quarter of this is not held.
    #[arg(long, env = "KYMA_COLUMN_CACHE_MB", default_value_t = columns::QUERY_NODE_CAPACITY_MB, value_name = "MIB")]
    pub column_cache_mb: u64,
}

impl ServeArgs {
    /// The decoded-column cache these settings ask for.
    pub fn column_cache(&self) -> columns::ColumnCache {
        columns::ColumnCache::new(self.column_cache_mb.saturating_mul(1 << 20))
    }

    /// The extent cache these settings ask for.
    pub fn extent_cache(&self) -> ExtentCache {
        ExtentCache::new(
            self.extent_cache_mb.saturating_mul(1 << 20),
            self.extent_cache_max_object_mb.saturating_mul(1 << 20),
        )
    }
}

/// `kyma standalone`.
#[derive(Debug, Args)]
pub struct StandaloneArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Directory holding the embedded catalog and the extents.
    #[arg(
        long,
        env = "KYMA_DATA_DIR",
        default_value = "./kyma-data",
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// `kyma query-node`.
#[derive(Debug, Args)]
pub struct QueryNodeArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// `kyma cdc-worker`.
#[derive(Debug, Args)]
pub struct CdcWorkerArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// This worker's id (default: host name and process id).
    #[arg(long, env = "KYMA_WORKER_ID", value_name = "ID")]
    pub worker_id: Option<String>,
    /// Seconds without a keep-alive after which this worker's claims may be taken over.
    #[arg(long, env = "KYMA_LEASE_TTL_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(2..=300))]
    pub lease_ttl_secs: u64,
    /// Compact a synced table as soon as commits have added this many delta extents to it
    /// (fewer: fresher reads, more compaction work).
    #[arg(long, env = "KYMA_COMPACT_AFTER_EXTENTS", default_value_t = 16, value_parser = clap::value_parser!(u64).range(2..=10_000))]
    pub compact_after_extents: u64,
    /// Keys the key indexes of one connector's tables may hold in this worker (40–80 bytes
    /// each). They let each commit record the rows its changes supersede, so queries read a
    /// synced table without merging versions; a table past the budget is read by merging.
    #[arg(long, env = "KYMA_KEY_INDEX_MAX_KEYS", default_value_t = 16 << 20)]
    pub key_index_max_keys: u64,
}

/// Where the shared catalog and storage are.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// The catalog: etcd://HOST:PORT[,HOST:PORT]/PREFIX.
    #[arg(long, env = "KYMA_CATALOG", value_name = "URL", value_parser = parse_catalog)]
    pub catalog: CatalogLocation,
    /// Object storage for extents: file:///DIR, s3://BUCKET/PREFIX, gs://…, az://…, memory://.
    #[arg(long, env = "KYMA_STORE", value_name = "URL", value_parser = parse_store)]
    pub store: StoreLocation,
    /// Endpoint of an S3-compatible server (else AWS_ENDPOINT_URL, else AWS).
    #[arg(long, env = "KYMA_S3_ENDPOINT", value_name = "URL")]
    pub s3_endpoint: Option<String>,
}

fn parse_catalog(value: &str) -> Result<CatalogLocation, String> {
    match CatalogLocation::parse("--catalog", value) {
        Ok(CatalogLocation::Embedded { .. }) => {
            Err("the embedded catalog is for `kyma standalone`; separate processes share an etcd catalog: etcd://HOST:PORT/PREFIX".into())
        }
        Ok(location) => Ok(location),
        Err(e) => Err(e.to_string()),
    }
}

/// A secret given on the command line or in the environment: refused when empty.
pub fn parse_secret(value: &str) -> Result<Secret, String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(Secret::new(value))
}

fn parse_store(value: &str) -> Result<StoreLocation, String> {
    StoreLocation::parse("--store", value).map_err(|e| e.to_string())
}

/// A refused setting, naming what to fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SettingsError(String);

/// Parses `args` (including the program name), merging the config file: its keys fill in what
/// neither a flag nor an environment variable set.
pub fn parse(args: Vec<OsString>) -> Result<Cli, clap::Error> {
    let args = merge_config_file(args)
        .map_err(|e| Cli::command().error(clap::error::ErrorKind::InvalidValue, e.0))?;
    Cli::try_parse_from(args)
}

fn merge_config_file(mut args: Vec<OsString>) -> Result<Vec<OsString>, SettingsError> {
    let strings: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let from_flag = strings.iter().enumerate().find_map(|(i, a)| {
        if a == "--config" {
            strings.get(i + 1).cloned()
        } else {
            a.strip_prefix("--config=").map(str::to_owned)
        }
    });
    let Some(path) = from_flag.or_else(|| std::env::var("KYMA_CONFIG").ok()) else {
        return Ok(args);
    };
    // The subcommand is the first argument naming one; file values go right after it.
    let command = Cli::command();
    let Some((position, sub)) = strings
        .iter()
        .enumerate()
        .skip(1)
        .find_map(|(i, a)| command.find_subcommand(a).map(|s| (i, s)))
    else {
        return Ok(args);
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| SettingsError(format!("cannot read the config file {path}: {e}")))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| SettingsError(format!("config file {path} is not valid TOML: {e}")))?;
    let mut injected = Vec::new();
    for (key, value) in table {
        let flag = key.replace('_', "-");
        let arg = sub
            .get_arguments()
            .find(|a| a.get_long() == Some(flag.as_str()) && flag != "config")
            .ok_or_else(|| {
                SettingsError(format!(
                    "config file {path}: unknown key `{key}` for `kyma {}`",
                    sub.get_name()
                ))
            })?;
        let given_as_flag = strings
            .iter()
            .any(|a| a == &format!("--{flag}") || a.starts_with(&format!("--{flag}=")));
        let given_in_env = arg
            .get_env()
            .is_some_and(|var| std::env::var_os(var).is_some());
        if given_as_flag || given_in_env {
            continue;
        }
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                return Err(SettingsError(format!(
                    "config file {path}: key `{key}` must be a string, number or boolean, not {}",
                    other.type_str()
                )));
            }
        };
        injected.push(OsString::from(format!("--{flag}={value}")));
    }
    let tail = args.split_off(position + 1);
    args.extend(injected);
    args.extend(tail);
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_auth_token_never_shows_in_debug_output() {
        let cli = parse(args(&[
            "kyma",
            "standalone",
            "--auth-token",
            "hunter2-token",
        ]))
        .expect("parses");
        let Command::Process(Process::Standalone(a)) = &cli.command else {
            panic!("standalone");
        };
        assert_eq!(
            a.serve.auth_token.as_ref().map(Secret::expose),
            Some("hunter2-token")
        );
        let shown = format!("{cli:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn a_bad_flag_value_is_refused_naming_the_flag() {
        let error = parse(args(&[
            "kyma",
            "query-node",
            "--catalog",
            "redis://x",
            "--store",
            "memory://",
        ]))
        .expect_err("refused");
        let text = error.to_string();
        assert!(
            text.contains("--catalog") && text.contains("etcd://HOST:PORT"),
            "{text}"
        );
    }

    #[test]
    fn config_file_fills_in_what_flags_do_not_set() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("kyma.toml");
        std::fs::write(
            &file,
            "http-addr = \"127.0.0.1:9999\"\ngrpc_addr = \"127.0.0.1:7777\"\n",
        )
        .expect("write");
        let cli = parse(args(&[
            "kyma",
            "standalone",
            "--config",
            &file.to_string_lossy(),
            "--grpc-addr",
            "127.0.0.1:1234",
        ]))
        .expect("parse");
        let Command::Process(Process::Standalone(s)) = cli.command else {
            panic!("standalone")
        };
        assert_eq!(s.common.http_addr.port(), 9999, "from the file");
        assert_eq!(
            s.serve.grpc_addr.port(),
            1234,
            "the flag wins over the file"
        );
    }

    #[test]
    fn an_unknown_config_key_is_refused_naming_it() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("kyma.toml");
        std::fs::write(&file, "htp-addr = \"x\"\n").expect("write");
        let error = parse(args(&[
            "kyma",
            "standalone",
            "--config",
            &file.to_string_lossy(),
        ]))
        .expect_err("refused");
        assert!(
            error.to_string().contains("unknown key `htp-addr`"),
            "{error}"
        );
    }
}

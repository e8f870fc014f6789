//! What the catalog stores: tables with versioned schemas and snapshot pointers, connectors with
//! their desired state, status, cursor and fencing epoch, and worker leases.
//!
//! Every value is stored as JSON, so `etcdctl get --prefix` shows something a person can read.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::CatalogError;

/// A table's three-part name: `catalog.schema.table`.
///
/// Native tables live in catalog `kyma`; synced tables under their connector's name. Any
/// characters are allowed in each part: the key layout escapes them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TableRef {
    /// The catalog (`kyma`, or a connector name).
    pub catalog: String,
    /// The schema within the catalog.
    pub schema: String,
    /// The table within the schema.
    pub table: String,
}

impl TableRef {
    /// A table reference from its three parts.
    pub fn new(
        catalog: impl Into<String>,
        schema: impl Into<String>,
        table: impl Into<String>,
    ) -> Self {
        Self {
            catalog: catalog.into(),
            schema: schema.into(),
            table: table.into(),
        }
    }

    /// Refuses empty parts and control characters, naming the part at fault.
    pub fn validate(&self) -> Result<(), CatalogError> {
        for (field, value) in [
            ("catalog", &self.catalog),
            ("schema", &self.schema),
            ("table", &self.table),
        ] {
            validate_identifier(field, value)?;
        }
        Ok(())
    }
}

/// Refuses names that cannot be a kyma identifier: empty, over 255 bytes, or with control
/// characters. Everything else, quotes and slashes included, is a valid name.
pub fn validate_identifier(field: &str, value: &str) -> Result<(), CatalogError> {
    if value.is_empty() {
        return Err(CatalogError::invalid(field, "must not be empty"));
    }
    if value.len() > 255 {
        return Err(CatalogError::invalid(
            field,
            format!("is {} bytes long; at most 255 are allowed", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(CatalogError::invalid(
            field,
            format!("{value:?} contains a control character"),
        ));
    }
    Ok(())
}

impl fmt::Display for TableRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, part) in [&self.catalog, &self.schema, &self.table]
            .into_iter()
            .enumerate()
        {
            if i > 0 {
                f.write_str(".")?;
            }
            let plain = part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !part.starts_with(|c: char| c.is_ascii_digit());
            if plain {
                f.write_str(part)?;
            } else {
                write!(f, "\"{}\"", part.replace('"', "\"\""))?;
            }
        }
        Ok(())
    }
}

/// The eight kyma column types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KymaType {
    /// 32-bit signed integer (Arrow Int32).
    Int,
    /// 64-bit signed integer (Arrow Int64).
    Long,
    /// IEEE-754 double (Arrow Float64).
    Real,
    /// Boolean.
    Bool,
    /// UTF-8 string.
    String,
    /// Microsecond timestamp in UTC.
    Timestamp,
    /// CBOR-encoded structured data (Arrow Binary).
    Dynamic,
    /// A fixed-dimension float32 vector (Arrow FixedSizeList<Float32, N>).
    Vector(u32),
}

impl fmt::Display for KymaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KymaType::Int => f.write_str("int"),
            KymaType::Long => f.write_str("long"),
            KymaType::Real => f.write_str("real"),
            KymaType::Bool => f.write_str("bool"),
            KymaType::String => f.write_str("string"),
            KymaType::Timestamp => f.write_str("timestamp"),
            KymaType::Dynamic => f.write_str("dynamic"),
            KymaType::Vector(n) => write!(f, "vector({n})"),
        }
    }
}

impl FromStr for KymaType {
    type Err = CatalogError;

    /// Parses a kyma type name, case-insensitively: `int`, `long`, `real`, `bool`, `string`,
    /// `timestamp`, `dynamic`, `vector(N)` with 1 ≤ N ≤ 65536.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        let ty = match lower.as_str() {
            "int" => KymaType::Int,
            "long" => KymaType::Long,
            "real" => KymaType::Real,
            "bool" => KymaType::Bool,
            "string" => KymaType::String,
            "timestamp" => KymaType::Timestamp,
            "dynamic" => KymaType::Dynamic,
            other => {
                let dim = other
                    .strip_prefix("vector(")
                    .and_then(|rest| rest.strip_suffix(')'))
                    .and_then(|n| n.trim().parse::<u32>().ok())
                    .filter(|n| (1..=65_536).contains(n))
                    .ok_or_else(|| {
                        CatalogError::invalid(
                            "type",
                            format!("`{s}` is not a kyma type: use int, long, real, bool, string, timestamp, dynamic or vector(N) with 1 <= N <= 65536"),
                        )
                    })?;
                KymaType::Vector(dim)
            }
        };
        Ok(ty)
    }
}

impl Serialize for KymaType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for KymaType {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a promoted column's values also live: a path inside a dynamic column. Reads union
/// the typed column and the dynamic copy with coalesce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromotedPath {
    /// The dynamic column.
    pub column: String,
    /// The path of keys inside it.
    pub path: Vec<String>,
}

/// One column of a table schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    /// The column name (any characters).
    pub name: String,
    /// Its kyma type.
    #[serde(rename = "type")]
    pub ty: KymaType,
    /// Whether it may hold nulls.
    pub nullable: bool,
    /// Set when the column was promoted from a dynamic path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_from: Option<PromotedPath>,
}

impl Column {
    /// A nullable column.
    pub fn new(name: impl Into<String>, ty: KymaType) -> Self {
        Self {
            name: name.into(),
            ty,
            nullable: true,
            promoted_from: None,
        }
    }

    /// The same column, NOT NULL.
    pub fn not_null(mut self) -> Self {
        self.nullable = false;
        self
    }
}

/// One version of a table's schema. Versions start at 1 and only ever widen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSchema {
    /// The schema version.
    pub version: u64,
    /// The columns, in table order.
    pub columns: Vec<Column>,
}

impl TableSchema {
    /// The first version of a schema. Refuses empty and duplicate column names.
    pub fn initial(columns: Vec<Column>) -> Result<Self, CatalogError> {
        check_columns(&columns)?;
        Ok(Self {
            version: 1,
            columns,
        })
    }

    /// The column named `name`.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Widens this schema so that it also holds `proposed`, returning the next version, or
    /// `None` when `proposed` changes nothing. The rules (SPEC §3, seeds/schema-model.txt):
    ///
    /// - a column not in the schema is appended, always nullable (old extents null-fill it);
    /// - a column in the schema keeps its type; a NOT NULL column proposed nullable loosens
    ///   to nullable, never the other way;
    /// - a column proposed with another type is refused (never narrow or retype: the writer
    ///   routes such values to a dynamic column instead); so is another promotion source;
    /// - columns the proposal does not mention are kept.
    pub fn widen(
        &self,
        table: &TableRef,
        proposed: &[Column],
    ) -> Result<Option<Self>, CatalogError> {
        check_columns(proposed)?;
        let refuse = |reason: String| CatalogError::SchemaChange {
            table: table.to_string(),
            reason,
        };
        let mut columns = self.columns.clone();
        let mut changed = false;
        for column in proposed {
            match columns.iter_mut().find(|c| c.name == column.name) {
                None => {
                    columns.push(Column {
                        nullable: true,
                        ..column.clone()
                    });
                    changed = true;
                }
                Some(existing) => {
                    if existing.ty != column.ty {
                        return Err(refuse(format!(
                            "column `{}` is {}, it cannot become {}",
                            column.name, existing.ty, column.ty
                        )));
                    }
                    if column.promoted_from.is_some()
                        && existing.promoted_from != column.promoted_from
                    {
                        return Err(refuse(format!(
                            "column `{}` exists already and is not promoted from that dynamic path",
                            column.name
                        )));
                    }
                    if column.nullable && !existing.nullable {
                        existing.nullable = true;
                        changed = true;
                    }
                }
            }
        }
        Ok(changed.then(|| TableSchema {
            version: self.version + 1,
            columns,
        }))
    }
}

fn check_columns(columns: &[Column]) -> Result<(), CatalogError> {
    let mut seen = std::collections::HashSet::new();
    for column in columns {
        validate_identifier("column name", &column.name)?;
        if !seen.insert(column.name.as_str()) {
            return Err(CatalogError::invalid(
                "columns",
                format!("column `{}` appears twice", column.name),
            ));
        }
    }
    Ok(())
}

/// Where a table came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TableOrigin {
    /// Created in kyma (SQL or bulk ingest).
    Native,
    /// Synced from a connector's source.
    Synced {
        /// The connector.
        connector: String,
    },
}

/// What does not change over a table's life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableMeta {
    /// Unique id: object-storage paths use it, so a dropped and recreated table never sees the
    /// old table's files.
    pub id: Uuid,
    /// Native or synced.
    pub origin: TableOrigin,
    /// Creation time, Unix milliseconds.
    pub created_at_ms: i64,
}

/// The pointer to a table's current data: its manifest in object storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSnapshot {
    /// Snapshot number: 0 for a new, empty table, then +1 per commit.
    pub version: u64,
    /// Schema version the snapshot is read with.
    pub schema_version: u64,
    /// Object-storage path of the manifest listing the live extents; `None` while empty.
    pub manifest: Option<String>,
    /// The commit that installed it (lets a retried commit recognise that it landed).
    pub commit_id: Option<Uuid>,
    /// Commit time, Unix milliseconds.
    pub committed_at_ms: i64,
}

/// A value read from the catalog together with the revision that last wrote it; commits
/// compare on that revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    /// The value.
    pub value: T,
    /// Backend revision that last modified it.
    pub mod_revision: i64,
}

/// A table as read at one catalog revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableState {
    /// Its name.
    pub table: TableRef,
    /// Its fixed metadata.
    pub meta: TableMeta,
    /// The current schema.
    pub schema: Versioned<TableSchema>,
    /// The current snapshot pointer. For a synced table its `mod_revision` is the revision of
    /// the shard holding it (see [`crate::keys`]), which other tables of the shard move too.
    pub snapshot: Versioned<TableSnapshot>,
    /// Where a synced table stands in its connector's sync (`None` for native tables).
    pub sync: Option<TableSyncState>,
}

/// Where one synced table stands in its connector's sync: committed together with the
/// table's data (and the connector's cursor), so that a crash never separates the two.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TableSyncState {
    /// Pending, streaming or failed.
    pub phase: SyncPhase,
    /// The source position of the table's snapshot: the changes it contains. Changes at or
    /// before it are never applied again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// `_kyma_seq` of the snapshot's rows (identifies the copy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_seq: Option<u64>,
    /// How many resync requests of the table have been served (see
    /// [`ConnectorState::resync`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub resyncs: u64,
    /// Why the table failed, what to fix, and whether kyma retries by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<TableFailure>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The durable phase of a synced table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncPhase {
    /// To be copied (new, in scope again, resync requested, or a copy was interrupted).
    #[default]
    Pending,
    /// Copied; changes after its snapshot are applied.
    Streaming,
    /// Stopped on a definite error; the rest of the connector goes on.
    Failed,
}

/// Why a synced table failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableFailure {
    /// What went wrong.
    pub reason: String,
    /// What the operator should do.
    pub fix: String,
    /// Whether kyma retries by itself once the cause is gone (`false`: only a resync does).
    pub retries: bool,
}

/// How the connector status and resync requests name a source table: `schema.table`, with a
/// part that holds `.` or `"` double-quoted (inner quotes doubled), so that every name reads
/// back unambiguously (MongoDB collection names may contain dots).
pub fn table_key(schema: &str, table: &str) -> String {
    let part = |p: &str| {
        if p.contains(['.', '"']) {
            format!("\"{}\"", p.replace('"', "\"\""))
        } else {
            p.to_owned()
        }
    };
    format!("{}.{}", part(schema), part(table))
}

/// The schema and table of a [`table_key`]; `None` when `key` is not one.
pub fn parse_table_key(key: &str) -> Option<(String, String)> {
    let (schema, rest) = parse_key_part(key)?;
    let rest = rest.strip_prefix('.')?;
    let (table, rest) = parse_key_part(rest)?;
    rest.is_empty().then_some((schema, table))
}

/// One part of a table key and what follows it.
fn parse_key_part(text: &str) -> Option<(String, &str)> {
    let Some(quoted) = text.strip_prefix('"') else {
        let end = text.find(['.', '"']).unwrap_or(text.len());
        return Some((text[..end].to_owned(), &text[end..]));
    };
    let mut part = String::new();
    let mut chars = quoted.char_indices();
    while let Some((i, c)) = chars.next() {
        if c != '"' {
            part.push(c);
        } else if quoted[i + 1..].starts_with('"') {
            part.push('"');
            chars.next();
        } else {
            return Some((part, &quoted[i + 1..]));
        }
    }
    None
}

/// Source type of a connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceType {
    /// PostgreSQL.
    Postgres,
    /// MySQL or MariaDB.
    Mysql,
    /// MongoDB.
    Mongodb,
}

/// What a connector does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectorMode {
    /// Queries read the source live.
    Federation,
    /// CDC workers replicate the source into kyma extents.
    Sync,
    /// Both; plain names read the synced extents, `live(...)` the source.
    Both,
}

impl ConnectorMode {
    /// Whether CDC workers sync this connector.
    pub fn syncs(self) -> bool {
        matches!(self, ConnectorMode::Sync | ConnectorMode::Both)
    }
}

/// TLS policy towards a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it.
    #[default]
    Prefer,
    /// TLS or fail, without verifying the certificate's name.
    Required,
    /// TLS with full certificate and host-name verification.
    VerifyFull,
}

/// How to reach the source. Holds no secret: the password comes from `secret_ref` at connect
/// time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionSpec {
    /// Source URL without a password.
    pub url: String,
    /// Name of the secret holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<String>,
    /// TLS policy.
    #[serde(default)]
    pub tls: TlsMode,
    /// Connections to open to the source at most.
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
    /// With `tls: verify-full`: names a secret (resolved like `secret_ref`) holding the PEM
    /// certificates of the CAs the source's certificate must chain to, instead of the Web PKI
    /// roots: a private CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca_ref: Option<String>,
}

fn default_pool_size() -> u32 {
    10
}

/// Which parts of the source a connector covers, and how types map (seeds/schema-mappings.txt).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeSpec {
    /// Source schemas (databases for MySQL/Mongo) to include; empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include_schemas: Vec<String>,
    /// Tables to include (`schema.table`); empty means all in the included schemas.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include_tables: Vec<String>,
    /// Tables to leave out (`schema.table`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_tables: Vec<String>,
    /// PostGIS geometry mapping (`wkt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geometry_mode: Option<String>,
    /// Numeric mapping (`string` forces string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numeric_mode: Option<String>,
    /// Mongo nested-object flattening depth (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flatten_depth: Option<u32>,
    /// Mongo Decimal128 mapping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decimal128_mode: Option<String>,
}

impl ScopeSpec {
    /// Whether table `schema.table` is in scope.
    pub fn covers(&self, schema: &str, table: &str) -> bool {
        let qualified = format!("{schema}.{table}");
        (self.include_schemas.is_empty() || self.include_schemas.iter().any(|s| s == schema))
            && (self.include_tables.is_empty() || self.include_tables.contains(&qualified))
            && !self.exclude_tables.contains(&qualified)
    }

    /// Whether schema `schema` is in scope.
    pub fn covers_schema(&self, schema: &str) -> bool {
        self.include_schemas.is_empty() || self.include_schemas.iter().any(|s| s == schema)
    }
}

/// Retention of synced data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSpec {
    /// Days a tombstone is kept before compaction drops it.
    #[serde(default = "default_tombstone_days")]
    pub tombstone_days: u32,
    /// What to do when the source no longer retains the change history the cursor needs.
    #[serde(default)]
    pub on_history_lost: HistoryLostPolicy,
}

impl Default for RetentionSpec {
    fn default() -> Self {
        Self {
            tombstone_days: default_tombstone_days(),
            on_history_lost: HistoryLostPolicy::default(),
        }
    }
}

/// What sync does when the source's change log no longer holds the connector's cursor (a
/// purged binlog, an oplog that rolled past the resume token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HistoryLostPolicy {
    /// Fail the connector, naming the fix (the default: changes were missed, and only the
    /// operator can decide that copying everything again is acceptable).
    #[default]
    Fail,
    /// Copy every table again under a new snapshot, then stream from there. Never "resume
    /// from now": that would silently skip what was lost.
    Resnapshot,
}

fn default_tombstone_days() -> u32 {
    30
}

/// A connector as registered (SPEC §4), without secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorSpec {
    /// Unique name; also the DataFusion catalog name of its tables.
    pub name: String,
    /// Source type.
    #[serde(rename = "type")]
    pub source_type: SourceType,
    /// Federation, sync or both.
    pub mode: ConnectorMode,
    /// How to reach the source.
    pub connection: ConnectionSpec,
    /// What to cover.
    #[serde(default)]
    pub scope: ScopeSpec,
    /// Retention of synced data.
    #[serde(default)]
    pub retention: RetentionSpec,
}

/// Whether an operator wants the connector running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    /// Sync (and serve) it.
    #[default]
    Running,
    /// Hold syncing where it is.
    Paused,
}

/// Phase of one synced table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum TablePhase {
    /// Waiting for a worker.
    Pending,
    /// Initial copy running.
    Snapshotting {
        /// Rows copied so far.
        rows_done: u64,
        /// Rows the source estimates.
        rows_estimated: u64,
    },
    /// Following the change log.
    Streaming,
    /// Held by an operator.
    Paused,
    /// Stopped on a definite error (see `last_error`).
    Failed,
}

/// Status of one table of a connector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSyncStatus {
    /// The phase.
    #[serde(flatten)]
    pub phase: TablePhase,
    /// Rows synced so far.
    #[serde(default)]
    pub rows_synced: u64,
    /// Bytes written so far.
    #[serde(default)]
    pub bytes_synced: u64,
    /// The last definite error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// With `last_error`: what the operator should do about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// With `last_error`: whether kyma retries by itself once the cause is gone (`false`:
    /// only a resync of the table does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<bool>,
    /// Warnings such as a type that fell back to dynamic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl TableSyncStatus {
    /// A table in `phase` that has synced nothing yet.
    pub fn new(phase: TablePhase) -> Self {
        Self {
            phase,
            rows_synced: 0,
            bytes_synced: 0,
            last_error: None,
            fix: None,
            retries: None,
            warnings: Vec::new(),
        }
    }
}

/// Status of a connector, written by whoever runs it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ConnectorStatus {
    /// Per table (`schema.table`).
    #[serde(default)]
    pub tables: BTreeMap<String, TableSyncStatus>,
    /// The last connector-wide error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// With `last_error`: whether it may pass by itself (a source restarting, a network
    /// cut: retried with backoff), or fails again until someone fixes what it names (a
    /// privilege, a setting: tried again only every half minute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<bool>,
    /// Connector-wide warnings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Replication lag behind the source, milliseconds, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_ms: Option<u64>,
    /// Replication lag behind the source, bytes, when the source tells.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_bytes: Option<u64>,
    /// When written, Unix milliseconds.
    #[serde(default)]
    pub updated_at_ms: i64,
}

/// How far a connector has synced: the source position its last commit covered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceCursor {
    /// The source's position (LSN, GTID set, file:pos, resume token), opaque to the catalog.
    pub position: String,
    /// The next `_kyma_seq` to assign: versions get their order from the pipeline, not from
    /// the source position.
    #[serde(default)]
    pub next_seq: u64,
    /// What the position is a position in (a replication slot and where it was created, a
    /// server id): a worker refuses to resume on anything else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_id: Option<String>,
    /// The commit that installed it.
    pub commit_id: Uuid,
    /// The worker epoch that committed it.
    pub epoch: u64,
    /// Commit time, Unix milliseconds.
    pub committed_at_ms: i64,
}

/// Who holds a connector right now (stored under the holder's lease: it vanishes with it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectorHolder {
    /// The worker.
    pub worker_id: String,
    /// The epoch it claimed.
    pub epoch: u64,
    /// Claim time, Unix milliseconds.
    pub claimed_at_ms: i64,
}

/// A batch whose files are not committed yet and may be older than the garbage collector's
/// grace (stored under its writer's lease): the collector keeps every file of its tables from
/// `started_at_ms` on. See `kyma_table::gc`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenWrite {
    /// The ids of the tables it writes.
    pub table_ids: Vec<Uuid>,
    /// When it wrote its first file, Unix milliseconds.
    pub started_at_ms: i64,
    /// Who writes it (for people reading the catalog).
    pub writer: String,
}

/// A live worker (stored under its lease).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRecord {
    /// The worker's id.
    pub worker_id: String,
    /// Start time, Unix milliseconds.
    pub started_at_ms: i64,
}

/// A connector as read from the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectorState {
    /// The registration.
    pub spec: ConnectorSpec,
    /// Running or paused.
    pub desired: DesiredState,
    /// The status its runner last wrote.
    pub status: ConnectorStatus,
    /// The committed cursor, if it has synced anything.
    pub cursor: Option<Versioned<SourceCursor>>,
    /// The current fencing epoch (0 before any claim).
    pub epoch: u64,
    /// Who holds it now.
    pub holder: Option<ConnectorHolder>,
    /// Resync requests per table ([`table_key`]): the request count, which a table's
    /// [`TableSyncState::resyncs`] reaches once the table was copied again.
    pub resync: BTreeMap<String, u64>,
}

/// Current time in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_keys_read_back_whatever_the_names() {
        for (schema, table) in [
            ("public", "users"),
            ("app", "orders.2024"),
            ("we.ird", "x\"y"),
            ("a", ""),
            ("\"", "."),
        ] {
            let key = table_key(schema, table);
            assert_eq!(
                parse_table_key(&key),
                Some((schema.to_owned(), table.to_owned())),
                "{key}"
            );
        }
        assert_eq!(table_key("public", "users"), "public.users");
        assert_eq!(parse_table_key("users"), None);
        assert_eq!(parse_table_key("a.b.c"), None);
        assert_eq!(parse_table_key("\"a.b"), None);
    }
}

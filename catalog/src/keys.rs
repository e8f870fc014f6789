//! The catalog's key layout. Every key starts with the catalog prefix `P` (for example
//! `/kyma`); every name segment is escaped (see [`escape`]), so a `/` or any other byte in a
//! name can neither collide with another name nor escape its prefix.
//!
//! ```text
//! P/tables/{catalog}/{schema}/{table}/meta            TableMeta     (id, origin; never changes)
//! P/tables/{catalog}/{schema}/{table}/schema          TableSchema   (current version)
//! P/tables/{catalog}/{schema}/{table}/schemas/{v:020} TableSchema   (every version, for history)
//! P/tables/{catalog}/{schema}/{table}/snapshot        TableSnapshot (manifest pointer; native tables)
//! P/tables/{connector}/!sync/{shard:02}               SyncShard: snapshot pointers and sync states
//!                                                     of the connector's synced tables that hash
//!                                                     to this shard (0..SYNC_SHARDS)
//! P/connectors/{name}/spec                            ConnectorSpec (no secrets)
//! P/connectors/{name}/desired                         DesiredState
//! P/connectors/{name}/status                          ConnectorStatus
//! P/connectors/{name}/cursor                          SourceCursor  (written only by commits)
//! P/connectors/{name}/epoch                           u64 fencing epoch (bumped by each claim)
//! P/connectors/{name}/holder                          ConnectorHolder, under the holder's lease
//! P/connectors/{name}/resync                          resync requests: table → request count
//! P/workers/{worker_id}                               WorkerRecord, under the worker's lease
//! P/writes/{write_id}                                 OpenWrite, under its writer's lease
//! ```
//!
//! Manifests and extent lists live in object storage, never here: etcd caps a request at
//! 1.5 MiB and 128 operations, so a commit carries pointers only.
//!
//! # Why synced tables keep their pointers in shards
//!
//! One source transaction may touch any number of a connector's tables, and its commit must
//! install all of them at once with the connector's cursor (SPEC §6). With a key per table,
//! a commit costs a compare and a put per table and stops fitting etcd's 128 operations past
//! about 40 tables. So a synced table's snapshot pointer and its sync state live in one of
//! [`SYNC_SHARDS`] shard keys of its connector (chosen by a stable hash of schema and table):
//! a commit costs at most one compare and one put per shard, whatever the table count. The
//! price is that a commit rewrites whole shards (a few hundred bytes per table in them) and
//! that two commits to different tables of one shard conflict (and rebase). A shard segment
//! starts with `!`, which [`escape`] never produces, so it cannot collide with a schema name.

use crate::model::TableRef;

/// How many shard keys hold the synced tables of one connector (see the module docs).
pub const SYNC_SHARDS: u64 = 64;

/// The path segment under a connector's catalog prefix that holds its shards.
const SHARDS_SEGMENT: &str = "!sync";

/// The shard of a synced table: a stable hash (FNV-1a) of its schema and name.
pub fn sync_shard(schema: &str, table: &str) -> u64 {
    let hash = schema
        .bytes()
        .chain(std::iter::once(0))
        .chain(table.bytes())
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    hash % SYNC_SHARDS
}

/// Escapes one name segment: bytes outside `[A-Za-z0-9_.-]` become `%XX`; `.` and `..` alone
/// are escaped too, so no segment reads like a path step.
pub fn escape(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' || byte == b'.' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    if out == "." || out == ".." {
        out = out.replace('.', "%2E");
    }
    out
}

/// Reverses [`escape`]; `None` when `segment` is not something [`escape`] produced.
pub fn unescape(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Builds and parses the catalog's keys under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

/// A key the catalog's watch understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParsedKey {
    /// One of a table's keys.
    Table(TableRef, TableKey),
    /// One of a connector's keys.
    Connector(String, ConnectorKey),
    /// A worker's liveness key.
    Worker(String),
    /// A shard of a connector's synced tables: (connector, shard).
    SyncShard(String, u64),
    /// An open write's registration.
    OpenWrite(String),
}

/// Which key of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKey {
    /// `meta`.
    Meta,
    /// `schema`.
    Schema,
    /// `schemas/{v}`.
    SchemaHistory,
    /// `snapshot`.
    Snapshot,
}

/// Which key of a connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectorKey {
    /// `spec`.
    Spec,
    /// `desired`.
    Desired,
    /// `status`.
    Status,
    /// `cursor`.
    Cursor,
    /// `epoch`.
    Epoch,
    /// `holder`.
    Holder,
    /// `resync`.
    Resync,
}

impl ConnectorKey {
    /// Every connector key, in the order connector reads return them.
    pub const ALL: [(ConnectorKey, &'static str); 7] = [
        (ConnectorKey::Spec, "spec"),
        (ConnectorKey::Desired, "desired"),
        (ConnectorKey::Status, "status"),
        (ConnectorKey::Cursor, "cursor"),
        (ConnectorKey::Epoch, "epoch"),
        (ConnectorKey::Holder, "holder"),
        (ConnectorKey::Resync, "resync"),
    ];

    fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(k, _)| *k == self)
            .map(|(_, n)| *n)
            .unwrap_or("spec")
    }
}

impl Keys {
    /// Keys under `prefix` (a trailing `/` is ignored; an empty prefix is the root).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.trim_end_matches('/').to_owned(),
        }
    }

    /// The prefix every catalog key starts with (ends with `/`).
    pub fn root(&self) -> String {
        format!("{}/", self.prefix)
    }

    /// Prefix of every table key.
    pub fn tables_root(&self) -> String {
        format!("{}/tables/", self.prefix)
    }

    /// Prefix of the tables of one schema (`catalog.schema`).
    pub fn schema_prefix(&self, catalog: &str, schema: &str) -> String {
        format!(
            "{}{}/{}/",
            self.tables_root(),
            escape(catalog),
            escape(schema)
        )
    }

    /// Prefix of the tables of one catalog.
    pub fn catalog_prefix(&self, catalog: &str) -> String {
        format!("{}{}/", self.tables_root(), escape(catalog))
    }

    fn table_prefix(&self, table: &TableRef) -> String {
        format!(
            "{}{}/",
            self.schema_prefix(&table.catalog, &table.schema),
            escape(&table.table)
        )
    }

    /// `…/meta` of a table.
    pub fn table_meta(&self, table: &TableRef) -> Vec<u8> {
        format!("{}meta", self.table_prefix(table)).into_bytes()
    }

    /// `…/schema` of a table.
    pub fn table_schema(&self, table: &TableRef) -> Vec<u8> {
        format!("{}schema", self.table_prefix(table)).into_bytes()
    }

    /// `…/schemas/{version}` of a table.
    pub fn table_schema_version(&self, table: &TableRef, version: u64) -> Vec<u8> {
        format!("{}schemas/{version:020}", self.table_prefix(table)).into_bytes()
    }

    /// `…/snapshot` of a table.
    pub fn table_snapshot(&self, table: &TableRef) -> Vec<u8> {
        format!("{}snapshot", self.table_prefix(table)).into_bytes()
    }

    /// Every key of a table (to drop it).
    pub fn table_all(&self, table: &TableRef) -> Vec<u8> {
        self.table_prefix(table).into_bytes()
    }

    /// The shard key holding synced table `table`'s snapshot pointer and sync state (the
    /// shard lives under the table's catalog, its connector).
    pub fn sync_shard_of(&self, table: &TableRef) -> Vec<u8> {
        self.sync_shard(&table.catalog, sync_shard(&table.schema, &table.table))
    }

    /// Shard `shard` of connector `connector`'s synced tables.
    pub fn sync_shard(&self, connector: &str, shard: u64) -> Vec<u8> {
        format!(
            "{}{SHARDS_SEGMENT}/{shard:02}",
            self.catalog_prefix(connector)
        )
        .into_bytes()
    }

    /// Prefix of every connector key.
    pub fn connectors_root(&self) -> String {
        format!("{}/connectors/", self.prefix)
    }

    /// One key of a connector.
    pub fn connector(&self, name: &str, key: ConnectorKey) -> Vec<u8> {
        format!("{}{}/{}", self.connectors_root(), escape(name), key.name()).into_bytes()
    }

    /// Prefix of worker liveness keys.
    pub fn workers_root(&self) -> String {
        format!("{}/workers/", self.prefix)
    }

    /// A worker's liveness key.
    pub fn worker(&self, worker_id: &str) -> Vec<u8> {
        format!("{}{}", self.workers_root(), escape(worker_id)).into_bytes()
    }

    /// Prefix of open-write registrations.
    pub fn writes_root(&self) -> String {
        format!("{}/writes/", self.prefix)
    }

    /// An open write's registration key.
    pub fn open_write(&self, write_id: &str) -> Vec<u8> {
        format!("{}{}", self.writes_root(), escape(write_id)).into_bytes()
    }

    /// Parses a key under this prefix; `None` for keys the catalog does not define.
    pub fn parse(&self, key: &[u8]) -> Option<ParsedKey> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(&self.root())?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            ["tables", connector, SHARDS_SEGMENT, shard] => Some(ParsedKey::SyncShard(
                unescape(connector)?,
                shard.parse().ok()?,
            )),
            ["tables", catalog, schema, table, leaf @ ..] => {
                let table = TableRef::new(unescape(catalog)?, unescape(schema)?, unescape(table)?);
                let which = match leaf {
                    ["meta"] => TableKey::Meta,
                    ["schema"] => TableKey::Schema,
                    ["schemas", _] => TableKey::SchemaHistory,
                    ["snapshot"] => TableKey::Snapshot,
                    _ => return None,
                };
                Some(ParsedKey::Table(table, which))
            }
            ["connectors", name, leaf] => {
                let which = ConnectorKey::ALL
                    .iter()
                    .find(|(_, n)| n == leaf)
                    .map(|(k, _)| *k)?;
                Some(ParsedKey::Connector(unescape(name)?, which))
            }
            ["workers", id] => Some(ParsedKey::Worker(unescape(id)?)),
            ["writes", id] => Some(ParsedKey::OpenWrite(unescape(id)?)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_round_trip_and_stay_inside_their_prefix() {
        let keys = Keys::new("/kyma");
        let hostile = TableRef::new("kyma", "a/b", "x\"; DROP TABLE y; --/../..");
        let key = keys.table_snapshot(&hostile);
        let text = String::from_utf8(key.clone()).expect("keys are ASCII");
        assert!(text.starts_with("/kyma/tables/kyma/a%2Fb/"), "{text}");
        assert_eq!(
            text.matches('/').count(),
            6,
            "escaped names add no path steps: {text}"
        );
        assert_eq!(
            keys.parse(&key),
            Some(ParsedKey::Table(hostile, TableKey::Snapshot))
        );
    }

    #[test]
    fn a_schema_prefix_does_not_match_a_longer_schema_name() {
        let keys = Keys::new("/p");
        let short = keys.schema_prefix("kyma", "s");
        let longer =
            String::from_utf8(keys.table_meta(&TableRef::new("kyma", "s2", "t"))).expect("ascii");
        assert!(!longer.starts_with(&short));
    }

    #[test]
    fn shard_keys_parse_and_never_read_as_a_table() {
        let keys = Keys::new("/kyma");
        let table = TableRef::new("pg_prod", "public", "users");
        let key = keys.sync_shard_of(&table);
        let shard = sync_shard("public", "users");
        assert!(shard < SYNC_SHARDS);
        assert_eq!(
            keys.parse(&key),
            Some(ParsedKey::SyncShard("pg_prod".into(), shard))
        );
        // A schema literally named `!sync` escapes to another segment.
        assert_ne!(escape("!sync"), SHARDS_SEGMENT);
    }

    #[test]
    fn dot_segments_are_escaped() {
        assert_eq!(escape(".."), "%2E%2E");
        assert_eq!(unescape("%2E%2E").as_deref(), Some(".."));
        assert_eq!(unescape("%zz"), None);
    }
}

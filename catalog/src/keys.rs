//! The catalog's key layout. Every key starts with the catalog prefix `P` (for example
//! `/kyma`); every name segment is escaped (see [`escape`]), so a `/` or any other byte in a
//! name can neither collide with another name nor escape its prefix.
//!
//! ```text
//! P/tables/{catalog}/{schema}/{table}/meta            TableMeta     (id, origin; never changes)
//! P/tables/{catalog}/{schema}/{table}/schema          TableSchema   (current version)
//! P/tables/{catalog}/{schema}/{table}/schemas/{v:020} TableSchema   (every version, for history)
//! P/tables/{catalog}/{schema}/{table}/snapshot        TableSnapshot (manifest pointer)
//! P/connectors/{name}/spec                            ConnectorSpec (no secrets)
//! P/connectors/{name}/desired                         DesiredState
//! P/connectors/{name}/status                          ConnectorStatus
//! P/connectors/{name}/cursor                          SourceCursor  (written only by commits)
//! P/connectors/{name}/epoch                           u64 fencing epoch (bumped by each claim)
//! P/connectors/{name}/holder                          ConnectorHolder, under the holder's lease
//! P/workers/{worker_id}                               WorkerRecord, under the worker's lease
//! ```
//!
//! Manifests and extent lists live in object storage, never here: etcd caps a request at
//! 1.5 MiB and 128 operations, so a commit carries pointers only.

use crate::model::TableRef;

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
}

impl ConnectorKey {
    const ALL: [(ConnectorKey, &'static str); 6] = [
        (ConnectorKey::Spec, "spec"),
        (ConnectorKey::Desired, "desired"),
        (ConnectorKey::Status, "status"),
        (ConnectorKey::Cursor, "cursor"),
        (ConnectorKey::Epoch, "epoch"),
        (ConnectorKey::Holder, "holder"),
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

    /// Parses a key under this prefix; `None` for keys the catalog does not define.
    pub fn parse(&self, key: &[u8]) -> Option<ParsedKey> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(&self.root())?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
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
    fn dot_segments_are_escaped() {
        assert_eq!(escape(".."), "%2E%2E");
        assert_eq!(unescape("%2E%2E").as_deref(), Some(".."));
        assert_eq!(unescape("%zz"), None);
    }
}

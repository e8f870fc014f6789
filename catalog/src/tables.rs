//! Tables in the catalog: create, read, list, widen, drop.
//!
//! A native table keeps its snapshot pointer in its own `snapshot` key; a synced table keeps
//! it, with its sync state, in a shard of its connector (see [`crate::keys`] for why). Both
//! read back as one [`TableState`]; callers never see the difference except in
//! [`TableState::sync`].

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::catalog::{Catalog, MAX_CAS_ATTEMPTS, decode, decode_versioned, encode, revision_of};
use crate::error::CatalogError;
use crate::keys::{ParsedKey, TableKey, sync_shard};
use crate::kv::{Compare, KeyValue, Op, Revision, Txn};
use crate::model::{
    Column, TableMeta, TableOrigin, TableRef, TableSchema, TableSnapshot, TableState,
    TableSyncState, Versioned, now_ms,
};
use crate::shards::SyncShard;

/// A shard as read: its value and revision (0: absent).
pub(crate) type ReadShard = (SyncShard, Revision);

/// Decodes a shard key's value (absent: an empty shard at revision 0).
pub(crate) fn read_shard(kv: &Option<KeyValue>) -> Result<ReadShard, CatalogError> {
    Ok((
        kv.as_ref().map(decode).transpose()?.unwrap_or_default(),
        revision_of(kv),
    ))
}

impl Catalog {
    /// Creates an empty table (snapshot version 0) with its first schema; a synced table
    /// starts in sync phase `pending`.
    pub async fn create_table(
        &self,
        table: &TableRef,
        origin: TableOrigin,
        columns: Vec<Column>,
    ) -> Result<TableState, CatalogError> {
        table.validate()?;
        let schema = TableSchema::initial(columns)?;
        let synced = matches!(origin, TableOrigin::Synced { .. });
        let meta = TableMeta {
            id: Uuid::now_v7(),
            origin,
            created_at_ms: now_ms(),
        };
        let snapshot = TableSnapshot {
            version: 0,
            schema_version: schema.version,
            manifest: None,
            commit_id: None,
            committed_at_ms: meta.created_at_ms,
        };
        let sync = synced.then(TableSyncState::default);
        for _ in 0..MAX_CAS_ATTEMPTS {
            let mut txn = Txn {
                compares: vec![Compare::mod_revision(self.keys.table_meta(table), 0)],
                on_success: vec![
                    Op::put(self.keys.table_meta(table), encode(&meta)?),
                    Op::put(self.keys.table_schema(table), encode(&schema)?),
                    Op::put(
                        self.keys.table_schema_version(table, schema.version),
                        encode(&schema)?,
                    ),
                ],
                read_on_failure: vec![self.keys.table_meta(table)],
            };
            match &sync {
                Some(state) => {
                    let key = self.keys.sync_shard_of(table);
                    let (_, kvs) = self.kv.get_many(std::slice::from_ref(&key)).await?;
                    let (mut shard, revision) = read_shard(&kvs[0])?;
                    shard.begin_write();
                    shard.set(table, snapshot.clone(), state.clone());
                    txn.compares
                        .push(Compare::mod_revision(key.clone(), revision));
                    txn.on_success.push(Op::put(key, encode(&shard)?));
                }
                None => txn
                    .on_success
                    .push(Op::put(self.keys.table_snapshot(table), encode(&snapshot)?)),
            }
            let outcome = self.kv.txn(txn).await?;
            if outcome.succeeded {
                let at = outcome.revision;
                return Ok(TableState {
                    table: table.clone(),
                    meta,
                    schema: Versioned {
                        value: schema,
                        mod_revision: at,
                    },
                    snapshot: Versioned {
                        value: snapshot,
                        mod_revision: at,
                    },
                    sync,
                });
            }
            if outcome.reads[0].is_some() {
                return Err(CatalogError::AlreadyExists(format!("table {table}")));
            }
            // Another table of the shard changed meanwhile: read it again.
        }
        Err(CatalogError::Unavailable(format!(
            "the shard of {table} kept changing while creating it; retry"
        )))
    }

    /// Drops a table: its keys (and its shard entry) go; its files are left to garbage
    /// collection.
    pub async fn drop_table(&self, table: &TableRef) -> Result<(), CatalogError> {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let (_, kvs) = self.kv.range(&self.keys.table_all(table)).await?;
            let revision = |key: &Vec<u8>| {
                kvs.iter()
                    .find(|kv| &kv.key == key)
                    .map_or(0, |kv| kv.mod_revision)
            };
            let guarded = [
                self.keys.table_meta(table),
                self.keys.table_schema(table),
                self.keys.table_snapshot(table),
            ];
            if guarded.iter().all(|key| revision(key) == 0) {
                return Err(CatalogError::NotFound(format!("table {table}")));
            }
            // Comparing meta, schema and snapshot means no commit or widening slipped in after
            // the range read, so every key of the table is in `kvs`.
            let mut txn = Txn {
                compares: guarded
                    .iter()
                    .map(|key| Compare::mod_revision(key.clone(), revision(key)))
                    .collect(),
                on_success: kvs.iter().map(|kv| Op::delete(kv.key.clone())).collect(),
                read_on_failure: Vec::new(),
            };
            let shard_key = self.keys.sync_shard_of(table);
            let (_, shard_kv) = self.kv.get_many(std::slice::from_ref(&shard_key)).await?;
            let (mut shard, shard_revision) = read_shard(&shard_kv[0])?;
            if shard.get(table).is_some() {
                shard.begin_write();
                shard.remove(table);
                txn.compares
                    .push(Compare::mod_revision(shard_key.clone(), shard_revision));
                txn.on_success.push(Op::put(shard_key, encode(&shard)?));
            }
            if self.kv.txn(txn).await?.succeeded {
                return Ok(());
            }
        }
        Err(CatalogError::Unavailable(format!(
            "table {table} kept changing while dropping it; retry"
        )))
    }

    /// Reads one table.
    pub async fn table(&self, table: &TableRef) -> Result<TableState, CatalogError> {
        let (_, mut states) = self.tables(std::slice::from_ref(table)).await?;
        states
            .pop()
            .ok_or_else(|| CatalogError::NotFound(format!("table {table}")))
    }

    /// Reads several tables at one catalog revision (a consistent view across tables).
    pub async fn tables(
        &self,
        tables: &[TableRef],
    ) -> Result<(Revision, Vec<TableState>), CatalogError> {
        let keys: Vec<Vec<u8>> = tables.iter().flat_map(|t| self.table_keys(t)).collect();
        let (revision, values) = self.kv.get_many(&keys).await?;
        let states = tables
            .iter()
            .zip(values.chunks(4))
            .map(|(t, kvs)| {
                let shard = read_shard(&kvs[3])?;
                self.decode_table(t, &kvs[..3], &shard)?
                    .ok_or_else(|| CatalogError::NotFound(format!("table {t}")))
            })
            .collect::<Result<_, _>>()?;
        Ok((revision, states))
    }

    /// Meta, schema, snapshot and shard keys of a table.
    fn table_keys(&self, table: &TableRef) -> [Vec<u8>; 4] {
        [
            self.keys.table_meta(table),
            self.keys.table_schema(table),
            self.keys.table_snapshot(table),
            self.keys.sync_shard_of(table),
        ]
    }

    /// A table from its meta, schema and snapshot keys and its shard; `None` when it does
    /// not exist (completely).
    fn decode_table(
        &self,
        table: &TableRef,
        kvs: &[Option<KeyValue>],
        (shard, shard_revision): &ReadShard,
    ) -> Result<Option<TableState>, CatalogError> {
        let [Some(meta), Some(schema), snapshot] = kvs else {
            return Ok(None);
        };
        let meta: TableMeta = decode(meta)?;
        let (snapshot, sync) = match meta.origin {
            TableOrigin::Native => match snapshot {
                Some(kv) => (decode_versioned(kv)?, None),
                None => return Ok(None),
            },
            TableOrigin::Synced { .. } => match shard.get(table) {
                Some(entry) => (
                    Versioned {
                        value: entry.snapshot.clone(),
                        mod_revision: *shard_revision,
                    },
                    Some(entry.sync.clone()),
                ),
                None => return Ok(None),
            },
        };
        Ok(Some(TableState {
            table: table.clone(),
            meta,
            schema: decode_versioned(schema)?,
            snapshot,
            sync,
        }))
    }

    /// Lists every table, or those of one catalog, at one revision, sorted by name.
    pub async fn list_tables(
        &self,
        catalog: Option<&str>,
    ) -> Result<(Revision, Vec<TableState>), CatalogError> {
        let prefix = match catalog {
            Some(c) => self.keys.catalog_prefix(c),
            None => self.keys.tables_root(),
        };
        let (revision, kvs) = self.kv.range(prefix.as_bytes()).await?;
        let mut parts: BTreeMap<TableRef, [Option<KeyValue>; 3]> = BTreeMap::new();
        let mut shards: BTreeMap<(String, u64), ReadShard> = BTreeMap::new();
        for kv in kvs {
            let slot = match self.keys.parse(&kv.key) {
                Some(ParsedKey::SyncShard(connector, shard)) => {
                    shards.insert((connector, shard), read_shard(&Some(kv))?);
                    continue;
                }
                Some(ParsedKey::Table(table, which)) => match which {
                    TableKey::Meta => (table, 0),
                    TableKey::Schema => (table, 1),
                    TableKey::Snapshot => (table, 2),
                    TableKey::SchemaHistory => continue,
                },
                _ => continue,
            };
            parts.entry(slot.0).or_default()[slot.1] = Some(kv);
        }
        let empty = ReadShard::default();
        let mut states = Vec::with_capacity(parts.len());
        for (table, kvs) in parts {
            let shard = shards
                .get(&(
                    table.catalog.clone(),
                    sync_shard(&table.schema, &table.table),
                ))
                .unwrap_or(&empty);
            if let Some(state) = self.decode_table(&table, &kvs, shard)? {
                states.push(state);
            }
        }
        Ok((revision, states))
    }

    /// Every schema version a table has had, oldest first.
    pub async fn schema_history(&self, table: &TableRef) -> Result<Vec<TableSchema>, CatalogError> {
        let prefix = String::from_utf8_lossy(&self.keys.table_schema_version(table, 0))
            .trim_end_matches('0')
            .to_owned();
        let (_, kvs) = self.kv.range(prefix.as_bytes()).await?;
        kvs.iter().map(decode).collect()
    }

    /// Widens a table's schema to hold `columns`, rebasing on concurrent widenings until it
    /// lands. Returns the schema now current (unchanged when nothing needed widening).
    pub async fn widen_schema(
        &self,
        table: &TableRef,
        columns: &[Column],
    ) -> Result<Versioned<TableSchema>, CatalogError> {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let state = self.table(table).await?;
            let Some(widened) = state.schema.value.widen(table, columns)? else {
                return Ok(state.schema);
            };
            let txn = Txn {
                compares: vec![Compare::mod_revision(
                    self.keys.table_schema(table),
                    state.schema.mod_revision,
                )],
                on_success: vec![
                    Op::put(self.keys.table_schema(table), encode(&widened)?),
                    Op::put(
                        self.keys.table_schema_version(table, widened.version),
                        encode(&widened)?,
                    ),
                ],
                read_on_failure: Vec::new(),
            };
            let outcome = self.kv.txn(txn).await?;
            if outcome.succeeded {
                return Ok(Versioned {
                    value: widened,
                    mod_revision: outcome.revision,
                });
            }
        }
        Err(CatalogError::Unavailable(format!(
            "schema of {table} kept changing under {MAX_CAS_ATTEMPTS} attempts to widen it"
        )))
    }
}

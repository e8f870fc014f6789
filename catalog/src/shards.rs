//! The shard value that holds synced tables' snapshot pointers and sync states (why: see
//! [`crate::keys`]).
//!
//! A shard is read whole and written whole: every write compares the shard's revision, so two
//! writers of one shard (a sync commit and a compaction, say) never lose each other's entries;
//! the loser rebases. Each write also records which tables it changed, so that a watch reports
//! exactly those (a shard holds other tables that did not change).

use serde::{Deserialize, Serialize};

use crate::model::{TableRef, TableSnapshot, TableSyncState};

/// One synced table in a shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ShardEntry {
    /// Its schema.
    pub schema: String,
    /// Its name.
    pub table: String,
    /// Its snapshot pointer.
    pub snapshot: TableSnapshot,
    /// Its sync state.
    pub sync: TableSyncState,
}

/// The value of a shard key.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub(crate) struct SyncShard {
    /// The tables, sorted by schema and name.
    pub tables: Vec<ShardEntry>,
    /// The tables (`[schema, table]`) the last write changed, created or removed.
    #[serde(default)]
    pub changed: Vec<[String; 2]>,
}

impl SyncShard {
    /// The entry of `table`.
    pub fn get(&self, table: &TableRef) -> Option<&ShardEntry> {
        self.tables
            .iter()
            .find(|e| e.schema == table.schema && e.table == table.table)
    }

    /// Starts a write: forgets what the previous write changed.
    pub fn begin_write(&mut self) {
        self.changed.clear();
    }

    /// Sets `table`'s entry (adding it when new) and records the change.
    pub fn set(&mut self, table: &TableRef, snapshot: TableSnapshot, sync: TableSyncState) {
        self.remove(table);
        self.tables.push(ShardEntry {
            schema: table.schema.clone(),
            table: table.table.clone(),
            snapshot,
            sync,
        });
        self.tables
            .sort_by(|a, b| (&a.schema, &a.table).cmp(&(&b.schema, &b.table)));
        self.mark(table);
    }

    /// Removes `table`'s entry and records the change.
    pub fn remove(&mut self, table: &TableRef) {
        self.tables
            .retain(|e| e.schema != table.schema || e.table != table.table);
        self.mark(table);
    }

    fn mark(&mut self, table: &TableRef) {
        let name = [table.schema.clone(), table.table.clone()];
        if !self.changed.contains(&name) {
            self.changed.push(name);
        }
    }
}

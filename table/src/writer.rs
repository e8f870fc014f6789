//! The table writer: one ingest (a bulk load, an INSERT, a sync batch) into one table, with
//! mid-batch schema evolution and an atomic commit (SPEC §3, §7; seeds/schema-model.txt).
//!
//! # Protocol
//!
//! 1. Batches stream into extents ([`ExtentWriter`]) under the table's current schema. A
//!    batch carrying a column the schema lacks first **flushes** the open extent, then
//!    **widens** the schema through the catalog (a CAS; the loser of a race re-reads and
//!    widens again, so concurrent writers with different columns both succeed), then resumes
//!    under the new schema. No row is ever refused for an undeclared column.
//!    An extent that reaches [`WriteOptions::extent_rows`] finishes (its last row group
//!    encoded, its upload completed) on a task of its own while the next one fills; at most
//!    one finishes at a time, and every one has finished before a commit names it.
//! 2. [`TableWriter::commit`] writes a new manifest (the current snapshot's extents plus the
//!    new ones) and swaps the snapshot pointer with one catalog commit. Files are written
//!    before the pointer moves, so a crash leaves only unreferenced files, never a snapshot
//!    naming a missing file.
//! 3. On a conflict (another writer committed first) the writer rebases: it re-reads the
//!    table, builds the manifest on the new snapshot and commits again. When an earlier
//!    attempt's answer was lost, the catalog's `commit_id` check or, failing that, finding its
//!    own extents in the current manifest tells the writer that it already landed.

use arrow::array::{ArrayRef, AsArray, RecordBatch, new_null_array};
use arrow::datatypes::Int64Type;
use kyma_catalog::{
    Catalog, CatalogCommit, CatalogError, Column, CommitOutcome, Revision, TableCommit, TableRef,
    TableSchema, TableState, Versioned,
};
use parquet::errors::ParquetError;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::deletes::delete_rows;
use crate::error::TableError;
use crate::extent::ExtentWriter;
use crate::key_index::{KeyIndex, KeyVersion, Resolution, key_hash};
use crate::manifest::{ExtentEntry, Manifest};
use crate::store::ExtentStore;
use crate::synced::{PK, SEQ};
use crate::types::{arrow_type, conform, infer_kyma_type};

/// Rebases a commit at most this many times before giving up (as retryable).
const MAX_REBASES: usize = 64;

/// Tuning of a [`TableWriter`].
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// Rows per extent before a new one starts.
    pub extent_rows: u64,
    /// Mark the extents as part of a synced table's compacted base (see
    /// [`crate::synced`]): only for rows with one version per key, older than any delta.
    pub compacted: bool,
    /// Remember each row's key and version ([`WrittenExtents::keys`]) for the commit to
    /// resolve what they supersede ([`crate::key_index`]): synced delta writes.
    pub record_keys: bool,
    /// Columns every written row holds one value in (a copy's system columns,
    /// [`crate::synced::SNAPSHOT_ONE_VALUED`]): written without a dictionary or Parquet
    /// statistics ([`ExtentWriter::one_valued`]).
    pub one_valued: &'static [&'static str],
}

impl Default for WriteOptions {
    fn default() -> Self {
        Self {
            extent_rows: 1_000_000,
            compacted: false,
            record_keys: false,
            one_valued: &[],
        }
    }
}

/// What a [`TableWriter`] wrote and has not committed yet: its part of a catalog commit.
#[derive(Debug, Clone)]
pub struct WrittenExtents {
    /// The table.
    pub table: TableRef,
    /// The table's id when the write started (a dropped and recreated table is another).
    pub table_id: Uuid,
    /// The new extents.
    pub extents: Vec<ExtentEntry>,
    /// Rows in them.
    pub rows: u64,
    /// The extents replace the table's current ones instead of adding to them (a source
    /// `TRUNCATE`).
    pub replace: bool,
    /// With [`WriteOptions::record_keys`]: each extent's rows' keys and versions, in row
    /// order (else empty).
    pub keys: Vec<Vec<KeyVersion>>,
}

impl WrittenExtents {
    /// Stores the manifest of the snapshot after `state` (its extents, unless replacing, plus
    /// these) and returns the table's part of the commit.
    pub async fn table_commit(
        &self,
        store: &ExtentStore,
        state: &TableState,
    ) -> Result<TableCommit, TableError> {
        let manifest = self.base_manifest(store, state).await?;
        self.unresolved_commit(store, state, manifest).await
    }

    /// The commit adding these extents to `manifest` without resolving what they may
    /// supersede.
    async fn unresolved_commit(
        &self,
        store: &ExtentStore,
        state: &TableState,
        mut manifest: Manifest,
    ) -> Result<TableCommit, TableError> {
        manifest.positions_resolved &= self.extents.is_empty();
        manifest.extents.extend(self.extents.iter().cloned());
        self.stored_commit(store, state, &manifest).await
    }

    /// [`WrittenExtents::table_commit`] for a synced table's rows whose keys were recorded,
    /// with the rows they supersede recorded as deleted, so the new snapshot's positions are
    /// resolved ([`crate::key_index`]): `index` catches up with the snapshot on the way.
    /// When the table's live rows pass `max_keys` it commits without resolving and returns
    /// no [`Resolution`]; drop the index then. On success, hand the resolution to
    /// [`KeyIndex::committed`].
    pub async fn resolved_table_commit(
        &self,
        store: &ExtentStore,
        state: &TableState,
        index: &mut KeyIndex,
        max_keys: u64,
    ) -> Result<(TableCommit, Option<Resolution>), TableError> {
        let mut manifest = self.base_manifest(store, state).await?;
        let live_rows: u64 = manifest.extents.iter().map(ExtentEntry::live_rows).sum();
        if self.keys.len() != self.extents.len() || live_rows + self.rows > max_keys {
            return Ok((self.unresolved_commit(store, state, manifest).await?, None));
        }
        index.catch_up(store, &manifest).await?;
        let written: Vec<(String, Vec<KeyVersion>)> = self
            .extents
            .iter()
            .map(|e| e.path.clone())
            .zip(self.keys.iter().cloned())
            .collect();
        let resolution = index.resolve(&written)?;
        manifest.extents.extend(self.extents.iter().cloned());
        delete_rows(&mut manifest, &resolution.deleted, store).await?;
        manifest.positions_resolved = true;
        let commit = self.stored_commit(store, state, &manifest).await?;
        Ok((commit, Some(resolution)))
    }

    /// The manifest the commit builds on: `state`'s, or an empty one when replacing.
    async fn base_manifest(
        &self,
        store: &ExtentStore,
        state: &TableState,
    ) -> Result<Manifest, TableError> {
        if state.meta.id != self.table_id {
            return Err(CatalogError::NotFound(format!(
                "table {} (it was dropped while this write ran)",
                self.table
            ))
            .into());
        }
        let mut manifest = if self.replace {
            Manifest::empty(self.table_id, state.schema.value.version)
        } else {
            current_manifest(store, state).await?
        };
        manifest.schema_version = state.schema.value.version;
        Ok(manifest)
    }

    async fn stored_commit(
        &self,
        store: &ExtentStore,
        state: &TableState,
        manifest: &Manifest,
    ) -> Result<TableCommit, TableError> {
        let path = manifest
            .store(store, state.snapshot.value.version + 1)
            .await?;
        Ok(TableCommit::on(state, path, &[])?)
    }

    /// Whether these extents are in `state`'s manifest already (an earlier attempt of the
    /// commit landed and its answer was lost).
    pub async fn landed_in(
        &self,
        store: &ExtentStore,
        state: &TableState,
    ) -> Result<bool, TableError> {
        if state.meta.id != self.table_id || state.snapshot.value.manifest.is_none() {
            return Ok(false);
        }
        let Some(ours) = self.extents.first() else {
            return Ok(false);
        };
        let manifest = current_manifest(store, state).await?;
        Ok(manifest.extents.iter().any(|e| e.path == ours.path))
    }
}

/// The manifest `state` points at (empty while the table has none).
pub async fn current_manifest(
    store: &ExtentStore,
    state: &TableState,
) -> Result<Manifest, TableError> {
    match &state.snapshot.value.manifest {
        Some(path) => Manifest::load(store, path).await,
        None => Ok(Manifest::empty(state.meta.id, state.schema.value.version)),
    }
}

/// Appends the key and version of each row of `batch` (a synced table's) to `keys`.
fn record_keys(batch: &RecordBatch, keys: &mut Vec<KeyVersion>) -> Result<(), TableError> {
    let missing = |column: &str| {
        TableError::invalid(
            column,
            format!("rows whose keys are recorded need a `{column}` column of their type"),
        )
    };
    let pk = batch
        .column_by_name(PK)
        .and_then(|c| c.as_string_opt::<i32>())
        .ok_or_else(|| missing(PK))?;
    let seq = batch
        .column_by_name(SEQ)
        .and_then(|c| c.as_primitive_opt::<Int64Type>())
        .ok_or_else(|| missing(SEQ))?;
    keys.reserve(batch.num_rows());
    for (pk, seq) in pk.iter().zip(seq.iter()) {
        let (Some(pk), Some(seq)) = (pk, seq) else {
            return Err(TableError::invalid(
                PK,
                "a synced row without its key or version",
            ));
        };
        keys.push(KeyVersion {
            key: key_hash(pk),
            seq,
        });
    }
    Ok(())
}

/// What a committed write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteSummary {
    /// Rows written.
    pub rows: u64,
    /// Catalog revision at which everything the write did is visible (`None`: it changed
    /// nothing).
    pub revision: Option<Revision>,
}

/// Writes batches into one table. See the module docs.
#[derive(Debug)]
pub struct TableWriter {
    catalog: Catalog,
    store: ExtentStore,
    table: TableRef,
    table_id: Uuid,
    schema: Versioned<TableSchema>,
    open: Option<ExtentWriter>,
    /// With [`WriteOptions::record_keys`]: the open extent's keys.
    open_keys: Vec<KeyVersion>,
    /// The full extent finishing while the next one fills; at most one.
    closing: Option<Closing>,
    written: Vec<ExtentEntry>,
    written_keys: Vec<Vec<KeyVersion>>,
    rows: u64,
    replace: bool,
    options: WriteOptions,
}

/// An extent finishing on a task of its own, with its keys (when recorded).
#[derive(Debug)]
struct Closing {
    task: JoinHandle<Result<ExtentEntry, TableError>>,
    keys: Vec<KeyVersion>,
}

impl TableWriter {
    /// A writer on the table as it is now.
    pub async fn open(
        catalog: &Catalog,
        store: &ExtentStore,
        table: &TableRef,
        options: WriteOptions,
    ) -> Result<Self, TableError> {
        let state = catalog.table(table).await?;
        Ok(Self {
            catalog: catalog.clone(),
            store: store.clone(),
            table: table.clone(),
            table_id: state.meta.id,
            schema: state.schema,
            open: None,
            open_keys: Vec::new(),
            closing: None,
            written: Vec::new(),
            written_keys: Vec::new(),
            rows: 0,
            replace: false,
            options,
        })
    }

    /// The schema batches are written with now.
    pub fn schema(&self) -> &TableSchema {
        &self.schema.value
    }

    /// Writes a batch: widens the schema first when the batch has columns the table lacks.
    pub async fn write(&mut self, batch: &RecordBatch) -> Result<(), TableError> {
        let new_columns = new_columns(&self.schema.value, batch)?;
        if !new_columns.is_empty() {
            self.close_extent().await?;
            let widened = self.catalog.widen_schema(&self.table, &new_columns).await?;
            tracing::debug!(table = %self.table, version = widened.value.version, "schema widened mid-batch");
            self.schema = widened;
        }
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let conformed = conform_batch(&self.schema.value, batch)?;
        if self.open.is_none() {
            self.open = Some(
                ExtentWriter::create(&self.store, self.table_id, &self.schema.value)?
                    .one_valued(self.options.one_valued),
            );
        }
        if self.options.record_keys {
            record_keys(&conformed, &mut self.open_keys)?;
        }
        if let Some(extent) = &mut self.open {
            extent.write(&conformed).await?;
            self.rows += conformed.num_rows() as u64;
            if extent.rows() >= self.options.extent_rows {
                self.start_closing().await?;
            }
        }
        Ok(())
    }

    /// Starts finishing the open extent on a task of its own, so the next extent fills
    /// meanwhile; waits first for the one finishing before, if any.
    async fn start_closing(&mut self) -> Result<(), TableError> {
        self.await_closing().await?;
        if let Some(extent) = self.open.take() {
            let keys = std::mem::take(&mut self.open_keys);
            let task = tokio::spawn(extent.finish());
            self.closing = Some(Closing { task, keys });
        }
        Ok(())
    }

    /// Waits for the extent finishing, and adds it to what was written.
    async fn await_closing(&mut self) -> Result<(), TableError> {
        if let Some(Closing { task, keys }) = self.closing.take() {
            let mut entry = task.await.map_err(|e| {
                TableError::Parquet(ParquetError::General(format!(
                    "finishing an extent failed: {e}"
                )))
            })??;
            entry.compacted = self.options.compacted;
            self.written.push(entry);
            if self.options.record_keys {
                self.written_keys.push(keys);
            }
        }
        Ok(())
    }

    /// Finishes the open extent and the one finishing, if any.
    async fn close_extent(&mut self) -> Result<(), TableError> {
        self.start_closing().await?;
        self.await_closing().await
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Closes the open extent, so that everything written so far can be read back before the
    /// commit, and returns those extents (the next write starts a new one).
    pub async fn seal(&mut self) -> Result<&[ExtentEntry], TableError> {
        self.close_extent().await?;
        Ok(&self.written)
    }

    /// Whether the commit replaces the table's extents ([`TableWriter::truncate`] was called)
    /// instead of adding to them.
    pub fn replaces(&self) -> bool {
        self.replace
    }

    /// Forgets everything written so far and makes the commit replace the table's extents
    /// (a source `TRUNCATE`): rows written after this call are the table's only rows. The
    /// abandoned files are left to garbage collection.
    pub async fn truncate(&mut self) -> Result<(), TableError> {
        self.close_extent().await?;
        self.written.clear();
        self.written_keys.clear();
        self.rows = 0;
        self.replace = true;
        Ok(())
    }

    /// Closes the open extent and hands over what was written, for a commit that may span
    /// several tables (a sync batch).
    pub async fn finish(mut self) -> Result<WrittenExtents, TableError> {
        self.close_extent().await?;
        Ok(WrittenExtents {
            table: self.table,
            table_id: self.table_id,
            extents: self.written,
            rows: self.rows,
            replace: self.replace,
            keys: self.written_keys,
        })
    }

    /// Commits everything written as the table's next snapshot (rebasing on concurrent
    /// commits). Writes nothing when no row was written.
    pub async fn commit(self) -> Result<WriteSummary, TableError> {
        let catalog = self.catalog.clone();
        let store = self.store.clone();
        let schema_revision = self.schema.mod_revision;
        let written = self.finish().await?;
        if written.extents.is_empty() && !written.replace {
            return Ok(WriteSummary {
                rows: written.rows,
                revision: Some(schema_revision),
            });
        }
        let revision = commit_one(&catalog, &store, &written).await?;
        Ok(WriteSummary {
            rows: written.rows,
            revision: Some(revision),
        })
    }
}

/// The commit half of a one-table write: the extents are written, the snapshot pointer moves.
async fn commit_one(
    catalog: &Catalog,
    store: &ExtentStore,
    written: &WrittenExtents,
) -> Result<Revision, TableError> {
    let mut state = catalog.table(&written.table).await?;
    for _ in 0..MAX_REBASES {
        let commit = CatalogCommit::tables(vec![written.table_commit(store, &state).await?]);
        match catalog.commit(&commit).await? {
            CommitOutcome::Committed { revision } => return Ok(revision),
            CommitOutcome::Conflict(conflict) => {
                let Some(current) = conflict.tables.into_iter().next() else {
                    return Err(CatalogError::NotFound(format!("table {}", written.table)).into());
                };
                if written.landed_in(store, &current).await? {
                    return Ok(current.snapshot.mod_revision);
                }
                tracing::debug!(table = %written.table, "commit lost a race; rebasing");
                state = current;
            }
        }
    }
    Err(CatalogError::Unavailable(format!(
        "table {} kept changing under {MAX_REBASES} commit attempts; retry",
        written.table
    ))
    .into())
}

/// The columns of `batch` that `schema` lacks, typed by inference.
pub fn new_columns(schema: &TableSchema, batch: &RecordBatch) -> Result<Vec<Column>, TableError> {
    batch
        .schema()
        .fields()
        .iter()
        .filter(|f| schema.column(f.name()).is_none())
        .map(|f| {
            Ok(Column::new(
                f.name(),
                infer_kyma_type(f.name(), f.data_type())?,
            ))
        })
        .collect()
}

/// The columns a new table gets from an Arrow schema (all nullable, as bulk ingest sends).
pub fn columns_of(schema: &arrow::datatypes::Schema) -> Result<Vec<Column>, TableError> {
    schema
        .fields()
        .iter()
        .map(|f| {
            let column = Column::new(f.name(), infer_kyma_type(f.name(), f.data_type())?);
            Ok(if f.is_nullable() {
                column
            } else {
                column.not_null()
            })
        })
        .collect()
}

/// Makes `batch` fit `schema` exactly: columns in table order, converted to their kyma types,
/// missing ones null (promoted columns filled from their dynamic path when the batch has it).
pub fn conform_batch(schema: &TableSchema, batch: &RecordBatch) -> Result<RecordBatch, TableError> {
    let input = batch.schema();
    let mut conformed: Vec<ArrayRef> = Vec::with_capacity(schema.columns.len());
    for column in &schema.columns {
        let array = match input.index_of(&column.name) {
            Ok(i) => conform(column, batch.column(i))?,
            Err(_) => conform(column, &fill_missing(schema, column, batch)?)?,
        };
        conformed.push(array);
    }
    Ok(RecordBatch::try_new(
        crate::types::arrow_schema(schema),
        conformed,
    )?)
}

/// A column the batch lacks: from its dynamic source path when promoted, else nulls.
fn fill_missing(
    schema: &TableSchema,
    column: &Column,
    batch: &RecordBatch,
) -> Result<ArrayRef, TableError> {
    if let Some(promoted) = &column.promoted_from
        && let Some(source) = schema.column(&promoted.column)
        && let Ok(i) = batch.schema().index_of(&promoted.column)
    {
        let dynamic = conform(source, batch.column(i))?;
        let path: Vec<&str> = promoted.path.iter().map(String::as_str).collect();
        return Ok(crate::dynamic::extract_as(
            dynamic.as_binary::<i32>(),
            &path,
            column.ty,
        ));
    }
    Ok(new_null_array(&arrow_type(column.ty), batch.num_rows()))
}

//! Values an update left unchanged: updates whose new row leaves columns out.
//!
//! Sources do not always send every value of an updated row: Postgres leaves out TOAST values
//! the UPDATE did not change (unless REPLICA IDENTITY is FULL, when the old row carries them
//! and the pipeline takes them from there), MySQL with minimal row images leaves out every
//! unchanged column, a MongoDB update description names only the changed fields. The source
//! marks such values [`Cell::Unchanged`](kyma_connectors::sync::Cell). kyma never stores
//! them as NULL or as a placeholder: the value is the one the key's previous version holds,
//! and kyma holds that version — in a committed extent, or in one the current batch wrote
//! (every version reaches kyma whole: a snapshot row or an insert carries all values, and
//! each later update is resolved in turn).
//!
//! # How
//!
//! Such an update is *held*: its row waits in [`HeldUpdates`] with the unchanged columns
//! empty while later changes go on. Before the batch commits (and whenever
//! [`HeldUpdates::len`] reaches the batch's row count, to bound memory), the worker writes
//! out the rows it collected and [`HeldUpdates::resolve`] seals what the batch wrote, reads
//! every version of the held keys from the table's committed extents and the batch's own
//! ([`key_versions`], which skips row groups by a bloom filter), and fills each held row's
//! unchanged columns from the key's newest version before it — which may be an earlier held
//! row of the same batch. The resolved rows are then written like any other; their
//! `_kyma_seq` places them among the versions wherever they land, so writing them after
//! later changes is correct.
//!
//! When the update changed the key too, the previous version is the old key's.

use std::collections::{HashMap, HashSet};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::{cast, interleave};
use arrow::datatypes::Int64Type;
use arrow::error::ArrowError;
use kyma_catalog::{Catalog, Column, TableRef};
use kyma_table::synced::{ChangeOp, RowMeta, SyncedRowsBuilder};
use kyma_table::versions::key_versions;
use kyma_table::writer::current_manifest;
use kyma_table::{ExtentStore, KymaValueRef};

use crate::batch::SyncBatch;
use crate::error::SyncError;

/// One held update.
#[derive(Debug)]
struct Held {
    /// The row's key.
    pk: String,
    /// The key of its previous version (the old key when the update changed it).
    prior_pk: String,
    /// Its `_kyma_seq`.
    seq: i64,
    /// The columns (indices) the update left unchanged, ascending.
    unchanged: Vec<usize>,
}

/// Updates of one table waiting for their unchanged values (see the module docs).
#[derive(Debug)]
pub(crate) struct HeldUpdates {
    rows: SyncedRowsBuilder,
    held: Vec<Held>,
}

impl HeldUpdates {
    /// No held update, for rows of `columns`.
    pub(crate) fn new(columns: Vec<Column>) -> Result<Self, SyncError> {
        Ok(Self {
            rows: SyncedRowsBuilder::new(columns)?,
            held: Vec::new(),
        })
    }

    /// Updates held.
    pub(crate) fn len(&self) -> usize {
        self.held.len()
    }

    /// Holds an update whose columns `unchanged` (their `values` are `None`) are to be taken
    /// from the previous version of key `prior_pk`.
    pub(crate) fn push(
        &mut self,
        values: &[Option<KymaValueRef<'_>>],
        meta: &RowMeta<'_>,
        prior_pk: String,
        unchanged: Vec<usize>,
    ) -> Result<(), String> {
        self.rows.push(values, meta)?;
        self.held.push(Held {
            pk: meta.pk.to_owned(),
            prior_pk,
            seq: meta.seq,
            unchanged,
        });
        Ok(())
    }

    /// Forgets the held updates (the table was truncated, or failed).
    pub(crate) fn discard(&mut self) -> Result<(), SyncError> {
        self.rows.finish()?;
        self.held.clear();
        Ok(())
    }

    /// The held updates with their unchanged columns filled in, ready to write into `table`
    /// through `batch` (`None` when nothing is held). Everything collected for the table
    /// before them must be written into `batch` first.
    ///
    /// The outer error is the worker's (storage or catalog: retry); the inner one says why
    /// the table's data cannot be resolved (a version kyma should hold is missing), which
    /// fails the table.
    pub(crate) async fn resolve(
        &mut self,
        catalog: &Catalog,
        store: &ExtentStore,
        batch: &mut SyncBatch,
        table: &TableRef,
    ) -> Result<Result<Option<RecordBatch>, String>, SyncError> {
        if self.held.is_empty() {
            return Ok(Ok(None));
        }
        let rows = self.rows.finish()?;
        let held = std::mem::take(&mut self.held);
        let columns: Vec<Column> = self.rows.columns().to_vec();

        // Every extent that may hold a previous version: the committed ones (unless this
        // batch truncated the table) and the batch's own.
        let state = catalog.table(table).await?;
        let writer = batch.writer(table).await?;
        let written = writer.seal().await?.to_vec();
        let mut extents = if writer.replaces() {
            Vec::new()
        } else {
            current_manifest(store, &state).await?.extents
        };
        extents.extend(written);

        let mut wanted: Vec<usize> = held.iter().flat_map(|h| h.unchanged.clone()).collect();
        wanted.sort_unstable();
        wanted.dedup();
        let names: Vec<String> = wanted.iter().map(|&i| columns[i].name.clone()).collect();
        let keys: HashSet<String> = held.iter().map(|h| h.prior_pk.clone()).collect();
        let versions = key_versions(store, &state.schema.value, &extents, &keys, &names).await?;

        let version_pk = versions.column(0).as_string::<i32>();
        let version_seq = versions.column(1).as_primitive::<Int64Type>();
        let version_op = versions.column(2).as_string::<i32>();
        let mut by_key: HashMap<&str, Vec<usize>> = HashMap::new();
        for row in 0..versions.num_rows() {
            by_key.entry(version_pk.value(row)).or_default().push(row);
        }

        // Per held row and wanted column: where its value comes from, as (array, row) for
        // `interleave` — array 0 is the held rows, array 1 the versions read.
        let mut sources: Vec<Vec<Option<(usize, usize)>>> = Vec::with_capacity(held.len());
        let mut last_held: HashMap<&str, usize> = HashMap::new();
        for (j, h) in held.iter().enumerate() {
            let from_extents = by_key
                .get(h.prior_pk.as_str())
                .into_iter()
                .flatten()
                .copied()
                .filter(|&row| version_seq.value(row) < h.seq)
                .max_by_key(|&row| version_seq.value(row));
            let from_held = last_held.get(h.prior_pk.as_str()).copied();
            let missing = |what: &str| {
                let column = h
                    .unchanged
                    .first()
                    .map_or("", |&i| columns[i].name.as_str());
                format!(
                    "an update of key {} left the value of column `{column}` unchanged, but {what}",
                    h.pk
                )
            };
            // The newest earlier version: a held row is newer than anything already written
            // (held rows are not written until resolved).
            let prior = match (from_held, from_extents) {
                (Some(i), Some(row)) if held[i].seq < version_seq.value(row) => Prior::Read(row),
                (Some(i), _) => Prior::Held(i),
                (None, Some(row)) => Prior::Read(row),
                (None, None) => {
                    return Ok(Err(missing("kyma holds no earlier version of that row")));
                }
            };
            if let Prior::Read(row) = prior
                && version_op.value(row) == ChangeOp::Delete.as_str()
            {
                return Ok(Err(missing(
                    "its newest earlier version in kyma is a delete",
                )));
            }
            let row_sources = wanted
                .iter()
                .enumerate()
                .map(|(position, c)| {
                    h.unchanged.contains(c).then(|| match prior {
                        Prior::Read(row) => (1, row),
                        Prior::Held(i) => sources[i][position].unwrap_or((0, i)),
                    })
                })
                .collect();
            sources.push(row_sources);
            last_held.insert(h.pk.as_str(), j);
        }

        let arrow = |e: ArrowError| {
            SyncError::Definite(format!("resolving unchanged values of {table}: {e}"))
        };
        let mut arrays: Vec<ArrayRef> = rows.columns().to_vec();
        for (position, &c) in wanted.iter().enumerate() {
            let index = rows.schema().index_of(&columns[c].name).map_err(arrow)?;
            let held_values = rows.column(index);
            let mut read = versions.column(3 + position).clone();
            if read.data_type() != held_values.data_type() {
                read = cast(&read, held_values.data_type()).map_err(arrow)?;
            }
            let picks: Vec<(usize, usize)> = sources
                .iter()
                .enumerate()
                .map(|(j, s)| s[position].unwrap_or((0, j)))
                .collect();
            arrays[index] =
                interleave(&[held_values.as_ref(), read.as_ref() as &dyn Array], &picks)
                    .map_err(arrow)?;
        }
        Ok(Ok(Some(
            RecordBatch::try_new(rows.schema(), arrays).map_err(arrow)?,
        )))
    }
}

/// Where a held row's previous version is.
#[derive(Debug, Clone, Copy)]
enum Prior {
    /// An earlier held row (by index).
    Held(usize),
    /// A version read from the extents (by row).
    Read(usize),
}

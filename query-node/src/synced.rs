//! Synced tables read by name: the source's current state (SPEC §3 "Synced tables").
//!
//! A synced table stores versions (see [`kyma_table::synced`]): the current state of a key is
//! its row with the largest `_kyma_seq`, and the key is absent when that row is a tombstone
//! (`_kyma_op = 'delete'`). Compacted extents hold at most one row per key, each older than
//! every delta row. [`SyncedTable`] reads the table as a logical plan over two
//! [`KymaTable`] scans, one of the compacted base and one of the delta extents:
//!
//! ```text
//! Union
//!   LeftAnti Join compacted._kyma_pk = delta_keys._kyma_pk     -- base rows no delta replaces
//!     Filter compacted._kyma_op != 'delete'
//!       TableScan compacted                                    -- compacted extents
//!     Projection delta_keys._kyma_pk
//!       TableScan delta_keys                                   -- delta extents
//!   Projection <the table's columns>                           -- each key's newest delta row
//!     Filter _kyma_version_rank = 1 AND _kyma_op != 'delete'
//!       WindowAggr row_number() PARTITION BY _kyma_pk ORDER BY _kyma_seq DESC
//!                  AS _kyma_version_rank
//!         TableScan delta                                      -- delta extents
//! ```
//!
//! In two cases the plan scans every extent, skipping its deleted rows, with no join and no
//! window: when the snapshot has no delta extent (right after the initial snapshot or a
//! compaction: every stored row is then its key's only one), and when its positions are
//! resolved (the worker recorded every superseded row as deleted by position,
//! [`kyma_table::deletes`]; the common case while a worker streams), however many deltas
//! there are. Extents whose statistics rule out tombstones (`_kyma_op`'s minimum is not
//! `delete`) are scanned as they are; the others under `Filter _kyma_op != 'delete'`, in a
//! union when the table has both kinds. The plan above is for the rest (a table past its
//! worker's key budget, or one whose resolution is catching up).
//!
//! # Filters
//!
//! The plan is inlined into the query (the provider hands DataFusion its logical plan), so
//! the optimizer sees through it. A query's filter goes into both union branches. In the base
//! branch it reaches the compacted scan (extent skipping and Parquet pruning work as for any
//! kyma table); it never reaches `delta_keys`, whose only column is the key, and filtering
//! base rows before the anti join equals filtering after it, since the join only removes
//! rows. In the delta branch DataFusion moves a conjunct below the window only when it reads
//! nothing but the partition key (`_kyma_pk`); any other filter stays above the rank filter,
//! so it judges each key's newest version and never brings back an older one. A filter on
//! `_kyma_pk` alone reaches all three scans.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{Column as DfColumn, Result, plan_err};
use datafusion::datasource::{ViewTable, provider_as_source};
use datafusion::functions_window::expr_fn::row_number;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{
    Expr, ExprFunctionExt, JoinType, LogicalPlan, LogicalPlanBuilder, TableProviderFilterPushDown,
    TableType, col, lit,
};
use datafusion::physical_plan::ExecutionPlan;
use kyma_catalog::TableRef;
use kyma_table::synced::{ChangeOp, OP, PK, SEQ, may_hold_tombstones};

use crate::provider::{Extents, KymaTable, NodeTables};
use crate::view::TableEntry;

/// The window column ranking a key's delta versions, newest first (never a table column:
/// `_kyma_` names are the system's).
const VERSION_RANK: &str = "_kyma_version_rank";

/// A synced table at one snapshot, read as its source's current state: one row per
/// `_kyma_pk` (its newest version, every column including the system ones), deleted keys
/// absent. See the module doc for the plan.
#[derive(Debug)]
pub struct SyncedTable {
    table: TableRef,
    current_state: ViewTable,
}

impl SyncedTable {
    /// The current state of the synced table `entry` holds.
    pub fn new(tables: Arc<NodeTables>, entry: Arc<TableEntry>) -> Result<Self> {
        let has_delta = entry
            .manifest
            .as_ref()
            .is_ok_and(|m| m.extents.iter().any(|e| !e.compacted));
        let resolved = entry.manifest.as_ref().is_ok_and(|m| m.positions_resolved);
        let scan = |name: &str, extents: Extents| {
            let extents = KymaTable::reading(tables.clone(), entry.clone(), extents);
            LogicalPlanBuilder::scan(name, provider_as_source(Arc::new(extents)), None)
        };
        let not_tombstone = |column: Expr| column.not_eq(lit(ChangeOp::Delete.as_str()));
        // Without deltas every row is its key's only one, deleted rows aside: no merge either.
        if resolved || !has_delta {
            let plan = match tombstones(&entry) {
                // Extents without a tombstone need no filter, nor their `_kyma_op` decoded.
                (false, _) => scan("live", Extents::LiveWithoutTombstones)?.build()?,
                (true, false) => scan("live", Extents::LiveWithTombstones)?
                    .filter(not_tombstone(col(qualified("live", OP))))?
                    .build()?,
                (true, true) => scan("live", Extents::LiveWithoutTombstones)?
                    .union(
                        scan("live_tombstones", Extents::LiveWithTombstones)?
                            .filter(not_tombstone(col(qualified("live_tombstones", OP))))?
                            .build()?,
                    )?
                    .build()?,
            };
            return Ok(Self {
                table: entry.state.table.clone(),
                current_state: ViewTable::new(plan, None),
            });
        }
        let base = scan("compacted", Extents::Compacted)?
            .filter(not_tombstone(col(qualified("compacted", OP))))?;
        let plan = {
            let delta_keys = scan("delta_keys", Extents::Delta)?
                .project([col(qualified("delta_keys", PK))])?
                .build()?;
            let columns: Vec<Expr> = entry
                .state
                .schema
                .value
                .columns
                .iter()
                .map(|c| col(DfColumn::new_unqualified(&c.name)))
                .collect();
            let rank = row_number()
                .partition_by(vec![col(qualified("delta", PK))])
                .order_by(vec![col(qualified("delta", SEQ)).sort(false, false)])
                .build()?
                .alias(VERSION_RANK);
            let newest_delta = scan("delta", Extents::Delta)?
                .window([rank])?
                .filter(
                    col(DfColumn::new_unqualified(VERSION_RANK))
                        .eq(lit(1_u64))
                        .and(not_tombstone(col(qualified("delta", OP)))),
                )?
                .project(columns)?
                .build()?;
            base.join(
                delta_keys,
                JoinType::LeftAnti,
                (
                    vec![qualified("compacted", PK)],
                    vec![qualified("delta_keys", PK)],
                ),
                None,
            )?
            .union(newest_delta)?
            .build()?
        };
        Ok(Self {
            table: entry.state.table.clone(),
            current_state: ViewTable::new(plan, None),
        })
    }
}

/// Whether `entry`'s extents include some that may hold tombstones, and some that do not.
fn tombstones(entry: &TableEntry) -> (bool, bool) {
    let extents = entry.manifest.as_ref().map_or(&[][..], |m| &m.extents[..]);
    let with = extents.iter().any(may_hold_tombstones);
    let without = extents.iter().any(|e| !may_hold_tombstones(e));
    (with, without)
}

/// `relation.name` as a column, whatever characters the name holds.
fn qualified(relation: &str, name: &str) -> DfColumn {
    DfColumn::new(Some(relation), name)
}

#[async_trait]
impl TableProvider for SyncedTable {
    fn schema(&self) -> arrow::datatypes::SchemaRef {
        self.current_state.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// The current-state plan: DataFusion inlines it into the query, so the optimizer (and
    /// EXPLAIN) see the whole read.
    fn get_logical_plan(&self) -> Option<std::borrow::Cow<'_, LogicalPlan>> {
        self.current_state.get_logical_plan()
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        self.current_state.supports_filters_pushdown(filters)
    }

    /// Used where DataFusion did not inline the plan: the filters go on top of it and the
    /// optimizer places them as described in the module doc.
    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.current_state
            .scan(state, projection, filters, limit)
            .await
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        _input: Arc<dyn ExecutionPlan>,
        _insert_op: InsertOp,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan_err!(
            "{} is a synced table: only its connector's CDC worker writes it; write to a table in catalog `kyma` instead",
            self.table
        )
    }
}

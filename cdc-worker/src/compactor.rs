//! Compaction started by the commit that crosses a table's threshold.
//!
//! Every sync commit reports what it added to each table ([`Compactor::committed`]: delta
//! extents and rows). Once a table has gathered [`CompactionOptions::min_delta_extents`]
//! extents, or [`ASK_AFTER_ROWS`] rows (fewer than [`CompactionOptions::min_delta_rows`]:
//! rows may also be worth compacting as a fraction of the table, which only the manifest
//! tells), since this worker last compacted it, it is queued — once, however many commits
//! follow; the compaction then decides from the manifest whether there is anything to gain. The worker's one compaction task
//! ([`Compactor::run`]) compacts queued tables one at a time in the order they crossed, so
//! compaction takes at most one task's share of the machine from the streams. A table's
//! count starts over when its compaction starts: deltas committed meanwhile stay deltas
//! (the compaction works on the snapshot it read) and count towards the next one.
//!
//! The worker's periodic sweep queues, through the same queue, what commits do not report:
//! deltas from before this worker started and tombstones that expire with time.
//!
//! Compaction never changes what a table holds (`kyma_table::compaction`), so when it runs
//! decides only how many delta extents a read merges (or, for a table whose positions are
//! resolved, how many files it opens and how many deleted rows it decodes) and how large
//! manifests grow.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use kyma_catalog::TableRef;
use kyma_table::{CompactionOptions, CompactionOutcome};
use tokio::sync::mpsc;

use crate::pipeline::SyncContext;

/// Delta rows after which a table is queued whatever the thresholds (its compaction checks
/// [`CompactionOptions::min_delta_fraction`] against the table's base).
pub const ASK_AFTER_ROWS: u64 = 65_536;

/// What a table gathered since its last compaction.
#[derive(Debug, Default)]
struct Gathered {
    extents: usize,
    rows: u64,
    queued: bool,
}

/// The compaction queue of one worker (see the module doc).
#[derive(Debug)]
pub struct Compactor {
    gathered: Mutex<HashMap<TableRef, Gathered>>,
    queue: mpsc::UnboundedSender<(TableRef, CompactionOptions)>,
}

impl Compactor {
    /// A queue and its receiving end, for [`Compactor::run`].
    pub fn new() -> (Self, mpsc::UnboundedReceiver<(TableRef, CompactionOptions)>) {
        let (queue, requests) = mpsc::unbounded_channel();
        let compactor = Self {
            gathered: Mutex::new(HashMap::new()),
            queue,
        };
        (compactor, requests)
    }

    /// A commit added `extents` delta extents of `rows` rows to `table`: queues it once it
    /// has gathered enough under `options`.
    pub fn committed(
        &self,
        table: &TableRef,
        extents: usize,
        rows: u64,
        options: &CompactionOptions,
    ) {
        let crossed = {
            let mut gathered = self.gathered();
            let entry = gathered.entry(table.clone()).or_default();
            entry.extents += extents;
            entry.rows += rows;
            let crossed = !entry.queued
                && (entry.extents >= options.min_delta_extents
                    || entry.rows >= options.min_delta_rows.min(ASK_AFTER_ROWS));
            entry.queued |= crossed;
            crossed
        };
        if crossed {
            tracing::debug!(table = %table, "a commit crossed the compaction threshold");
            let _ = self.queue.send((table.clone(), options.clone()));
        }
    }

    /// Queues `table` (the sweep found it worth compacting), unless it is queued already.
    pub fn request(&self, table: &TableRef, options: &CompactionOptions) {
        let fresh = {
            let mut gathered = self.gathered();
            let entry = gathered.entry(table.clone()).or_default();
            !std::mem::replace(&mut entry.queued, true)
        };
        if fresh {
            let _ = self.queue.send((table.clone(), options.clone()));
        }
    }

    /// Compacts queued tables one at a time, for as long as the worker runs.
    pub async fn run(
        &self,
        mut requests: mpsc::UnboundedReceiver<(TableRef, CompactionOptions)>,
        ctx: SyncContext,
    ) {
        while let Some((table, options)) = requests.recv().await {
            self.starting(&table);
            match kyma_table::compact(&ctx.catalog, &ctx.store, &table, &options).await {
                Ok(summary) => {
                    if matches!(summary.outcome, CompactionOutcome::Committed { .. }) {
                        ctx.metrics.compaction_committed(&table.catalog);
                    }
                    tracing::info!(table = %table, ?summary, "compacted");
                }
                Err(e) => tracing::warn!(table = %table, error = %e, "compaction failed"),
            }
        }
    }

    /// `table`'s compaction starts: what commits add from now on counts towards the next.
    fn starting(&self, table: &TableRef) {
        self.gathered().remove(table);
    }

    fn gathered(&self) -> std::sync::MutexGuard<'_, HashMap<TableRef, Gathered>> {
        self.gathered.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> CompactionOptions {
        CompactionOptions {
            min_delta_extents: 4,
            min_delta_rows: 1000,
            ..CompactionOptions::default()
        }
    }

    fn queued(
        requests: &mut mpsc::UnboundedReceiver<(TableRef, CompactionOptions)>,
    ) -> Vec<String> {
        std::iter::from_fn(|| requests.try_recv().ok())
            .map(|(table, _)| table.table)
            .collect()
    }

    #[test]
    fn the_commit_that_crosses_the_threshold_queues_the_table_once() {
        let (compactor, mut requests) = Compactor::new();
        let (a, b) = (TableRef::new("c", "s", "a"), TableRef::new("c", "s", "b"));
        for _ in 0..3 {
            compactor.committed(&a, 1, 10, &options());
        }
        compactor.committed(&b, 1, 999, &options());
        assert_eq!(
            queued(&mut requests),
            Vec::<String>::new(),
            "below both thresholds"
        );
        compactor.committed(&a, 1, 10, &options());
        compactor.committed(&b, 1, 1, &options());
        assert_eq!(queued(&mut requests), ["a", "b"], "4 extents; 1,000 rows");
        compactor.committed(&a, 9, 10_000, &options());
        compactor.request(&a, &options());
        assert_eq!(
            queued(&mut requests),
            Vec::<String>::new(),
            "queued already"
        );
    }

    #[test]
    fn counting_starts_over_when_a_compaction_starts() {
        let (compactor, mut requests) = Compactor::new();
        let a = TableRef::new("c", "s", "a");
        compactor.committed(&a, 4, 0, &options());
        assert_eq!(queued(&mut requests), ["a"]);
        compactor.starting(&a);
        compactor.committed(&a, 3, 0, &options());
        assert_eq!(queued(&mut requests), Vec::<String>::new());
        compactor.committed(&a, 1, 0, &options());
        assert_eq!(
            queued(&mut requests),
            ["a"],
            "deltas committed since count again"
        );
    }
}

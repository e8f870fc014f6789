//! Query node metrics in the Prometheus text format (SPEC §8).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Counters a query node keeps.
#[derive(Debug, Default)]
pub struct QueryMetrics {
    statements: AtomicU64,
    errors: AtomicU64,
    rows_returned: AtomicU64,
    rows_ingested: AtomicU64,
    statement_micros: AtomicU64,
}

impl QueryMetrics {
    /// A statement was planned (a query, whose rows then stream) or run (a command or an
    /// ingest); `ok` false: it failed.
    pub fn statement(&self, elapsed: Duration, ok: bool) {
        self.statements.fetch_add(1, Ordering::Relaxed);
        self.statement_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Rows sent to a client.
    pub fn rows_returned(&self, rows: u64) {
        self.rows_returned.fetch_add(rows, Ordering::Relaxed);
    }

    /// Rows written by ingest, INSERT or CREATE TABLE AS.
    pub fn rows_ingested(&self, rows: u64) {
        self.rows_ingested.fetch_add(rows, Ordering::Relaxed);
    }

    /// The metrics as Prometheus text.
    pub fn render(&self, out: &mut String) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let counters = [
            (
                "kyma_statements_total",
                "Statements run (queries, commands, ingests).",
                get(&self.statements),
            ),
            (
                "kyma_statement_errors_total",
                "Statements that failed.",
                get(&self.errors),
            ),
            (
                "kyma_rows_returned_total",
                "Rows streamed to clients.",
                get(&self.rows_returned),
            ),
            (
                "kyma_rows_ingested_total",
                "Rows written into kyma tables.",
                get(&self.rows_ingested),
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP kyma_statement_seconds_total Time spent planning queries (their rows stream afterwards) and running commands and ingests.\n# TYPE kyma_statement_seconds_total counter\nkyma_statement_seconds_total {}",
            get(&self.statement_micros) as f64 / 1e6
        );
    }
}

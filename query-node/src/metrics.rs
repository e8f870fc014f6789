//! Query node metrics in the Prometheus text format (SPEC §8): statements, errors, rows, a
//! latency histogram (arrival to the last row sent), and what federation pushed to sources.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::federation::summary::SourceSummary;

/// Upper bounds of the latency histogram's buckets, in seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Counters a query node keeps.
#[derive(Debug, Default)]
pub struct QueryMetrics {
    statements: AtomicU64,
    errors: AtomicU64,
    rows_returned: AtomicU64,
    rows_ingested: AtomicU64,
    statement_micros: AtomicU64,
    latency: Histogram,
    /// Per plan part (`filter`, `join`, …): how often it ran at a source, how often it stayed
    /// in kyma.
    pushdown: Mutex<BTreeMap<String, (u64, u64)>>,
}

/// A Prometheus histogram of durations.
#[derive(Debug, Default)]
struct Histogram {
    /// Observations per bucket (not cumulative); the last is above every bound.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, count) in self.buckets.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let bound = LATENCY_BUCKETS
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), f64::to_string);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
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

    /// A statement is over (its last row sent, or failed) `elapsed` after it arrived.
    pub fn completed(&self, elapsed: Duration) {
        self.latency.observe(elapsed);
    }

    /// A query ran with these source queries: counts what each pushed and kept.
    pub fn pushdown(&self, summaries: &[SourceSummary]) {
        if summaries.is_empty() {
            return;
        }
        let mut parts = self.pushdown.lock().unwrap_or_else(|p| p.into_inner());
        for summary in summaries {
            for pushed in &summary.pushed {
                parts.entry(pushed.part.clone()).or_default().0 += 1;
            }
            for kept in &summary.not_pushed {
                parts.entry(kept.part.clone()).or_default().1 += 1;
            }
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
        self.latency.render(
            "kyma_statement_duration_seconds",
            "Statements from arrival to their last row sent, or to their error.",
            out,
        );
        self.render_pushdown(out);
    }

    fn render_pushdown(&self, out: &mut String) {
        let parts = self
            .pushdown
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let series = [
            (
                "kyma_pushdown_total",
                "Plan parts (scan, projection, filter, limit, order, aggregate, join) that ran at a federated source.",
                true,
            ),
            (
                "kyma_pushdown_refused_total",
                "Plan parts over a federated source that ran in kyma instead (the pushdown_summary says why).",
                false,
            ),
        ];
        for (name, help, pushed) in series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (kind, (at_source, in_kyma)) in &parts {
                let n = if pushed { at_source } else { in_kyma };
                let _ = writeln!(out, "{name}{{kind=\"{kind}\"}} {n}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::federation::summary::{NotPushed, PushedPart};

    #[test]
    fn latency_buckets_are_cumulative_and_pushdown_is_counted_by_part() {
        let metrics = QueryMetrics::default();
        metrics.completed(Duration::from_micros(800));
        metrics.completed(Duration::from_millis(40));
        metrics.completed(Duration::from_secs(60));
        let part = |part: &str| PushedPart {
            part: part.into(),
            detail: String::new(),
        };
        metrics.pushdown(&[SourceSummary {
            source: "pg".into(),
            sql: "SELECT 1".into(),
            pushed: vec![part("scan"), part("filter"), part("filter")],
            not_pushed: vec![NotPushed {
                part: "filter".into(),
                detail: String::new(),
                reason: String::new(),
            }],
        }]);
        let mut text = String::new();
        metrics.render(&mut text);
        for line in [
            "kyma_statement_duration_seconds_bucket{le=\"0.001\"} 1",
            "kyma_statement_duration_seconds_bucket{le=\"0.025\"} 1",
            "kyma_statement_duration_seconds_bucket{le=\"0.05\"} 2",
            "kyma_statement_duration_seconds_bucket{le=\"30\"} 2",
            "kyma_statement_duration_seconds_bucket{le=\"+Inf\"} 3",
            "kyma_statement_duration_seconds_count 3",
            "kyma_statement_duration_seconds_sum 60.0408",
            "kyma_pushdown_total{kind=\"filter\"} 2",
            "kyma_pushdown_total{kind=\"scan\"} 1",
            "kyma_pushdown_refused_total{kind=\"filter\"} 1",
            "kyma_pushdown_refused_total{kind=\"scan\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        }
    }
}

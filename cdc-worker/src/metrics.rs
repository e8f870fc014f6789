//! A worker's sync metrics in the Prometheus text format (SPEC §8): per connector, rows,
//! bytes and commits synced, commits that rebased on a concurrent compaction, compactions, errors by
//! kind, and the lag of the last commit.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// What one commit synced.
#[derive(Debug, Clone, Copy, Default)]
pub struct Synced {
    /// Rows (versions and tombstones).
    pub rows: u64,
    /// Bytes of the extents written.
    pub bytes: u64,
}

/// Counters of one connector.
#[derive(Debug, Default, Clone)]
struct ConnectorCounters {
    rows: u64,
    bytes: u64,
    snapshot_rows: u64,
    commits: u64,
    rebases: u64,
    compactions: u64,
    transient_errors: u64,
    definite_errors: u64,
    lag_ms: Option<u64>,
}

/// The sync metrics of one worker, shared by its connector runs.
#[derive(Debug, Default)]
pub struct SyncMetrics {
    connectors: Mutex<BTreeMap<String, ConnectorCounters>>,
}

impl SyncMetrics {
    fn update(&self, connector: &str, change: impl FnOnce(&mut ConnectorCounters)) {
        let mut connectors = self.connectors.lock().unwrap_or_else(|p| p.into_inner());
        change(connectors.entry(connector.to_owned()).or_default());
    }

    /// The snapshot of a table of `connector` committed.
    pub fn snapshot_committed(&self, connector: &str, synced: Synced) {
        self.update(connector, |c| {
            c.snapshot_rows += synced.rows;
            c.bytes += synced.bytes;
            c.commits += 1;
        });
    }

    /// A streaming batch of `connector` committed after `rebases` rebases, `lag_ms` after its
    /// newest source commit.
    pub fn batch_committed(
        &self,
        connector: &str,
        synced: Synced,
        rebases: u64,
        lag_ms: Option<u64>,
    ) {
        self.update(connector, |c| {
            c.rows += synced.rows;
            c.bytes += synced.bytes;
            c.commits += 1;
            c.rebases += rebases;
            if lag_ms.is_some() {
                c.lag_ms = lag_ms;
            }
        });
    }

    /// A compaction of a synced table of `connector` committed.
    pub fn compaction_committed(&self, connector: &str) {
        self.update(connector, |c| c.compactions += 1);
    }

    /// A run of `connector` ended with an error (`retryable`: transient).
    pub fn error(&self, connector: &str, retryable: bool) {
        self.update(connector, |c| {
            if retryable {
                c.transient_errors += 1;
            } else {
                c.definite_errors += 1;
            }
        });
    }

    /// The metrics as Prometheus text, appended to `out`.
    pub fn render(&self, out: &mut String) {
        let connectors = self
            .connectors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        type Value = fn(&ConnectorCounters) -> Option<String>;
        let series: [(&str, &str, &str, Value); 7] = [
            (
                "kyma_sync_rows_total",
                "counter",
                "Rows (versions and tombstones) committed by streaming.",
                |c| Some(c.rows.to_string()),
            ),
            (
                "kyma_sync_bytes_total",
                "counter",
                "Bytes of the extents committed by snapshots and streaming.",
                |c| Some(c.bytes.to_string()),
            ),
            (
                "kyma_sync_snapshot_rows_total",
                "counter",
                "Rows committed by initial snapshots.",
                |c| Some(c.snapshot_rows.to_string()),
            ),
            (
                "kyma_sync_commits_total",
                "counter",
                "Catalog commits of sync batches and snapshots.",
                |c| Some(c.commits.to_string()),
            ),
            (
                "kyma_sync_commit_conflicts_total",
                "counter",
                "Sync commits that rebased on a concurrent table commit (compaction).",
                |c| Some(c.rebases.to_string()),
            ),
            (
                "kyma_sync_compactions_total",
                "counter",
                "Compactions of synced tables that committed (started by the commit crossing a table's threshold or by the periodic sweep).",
                |c| Some(c.compactions.to_string()),
            ),
            (
                "kyma_sync_lag_seconds",
                "gauge",
                "Time from the source commit of a batch's newest transaction to its catalog commit, at the last commit.",
                |c| c.lag_ms.map(|ms| (ms as f64 / 1000.0).to_string()),
            ),
        ];
        for (name, kind, help, value) in series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (connector, counters) in &connectors {
                if let Some(value) = value(counters) {
                    let _ = writeln!(
                        out,
                        "{name}{{connector=\"{}\"}} {value}",
                        escape_label(connector)
                    );
                }
            }
        }
        let name = "kyma_sync_errors_total";
        let _ = writeln!(
            out,
            "# HELP {name} Sync runs ended by an error, by kind (transient: retried with backoff; definite: needs a fix).\n# TYPE {name} counter"
        );
        for (connector, counters) in &connectors {
            for (kind, n) in [
                ("transient", counters.transient_errors),
                ("definite", counters.definite_errors),
            ] {
                let _ = writeln!(
                    out,
                    "{name}{{connector=\"{}\",kind=\"{kind}\"}} {n}",
                    escape_label(connector)
                );
            }
        }
    }
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_per_connector() {
        let metrics = SyncMetrics::default();
        let synced = |rows, bytes| Synced { rows, bytes };
        metrics.snapshot_committed("pg", synced(1000, 40_000));
        metrics.batch_committed("pg", synced(7, 900), 1, Some(250));
        metrics.batch_committed("pg", synced(3, 100), 0, None);
        metrics.error("pg", true);
        let mut text = String::new();
        metrics.render(&mut text);
        for line in [
            "kyma_sync_rows_total{connector=\"pg\"} 10",
            "kyma_sync_snapshot_rows_total{connector=\"pg\"} 1000",
            "kyma_sync_bytes_total{connector=\"pg\"} 41000",
            "kyma_sync_commits_total{connector=\"pg\"} 3",
            "kyma_sync_commit_conflicts_total{connector=\"pg\"} 1",
            "kyma_sync_lag_seconds{connector=\"pg\"} 0.25",
            "kyma_sync_errors_total{connector=\"pg\",kind=\"transient\"} 1",
            "kyma_sync_errors_total{connector=\"pg\",kind=\"definite\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        }
    }
}

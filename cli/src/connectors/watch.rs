//! `--watch`: follows a connector's snapshot until every table streams. On a terminal the
//! per-table progress (rows copied of the source's estimate, rate, time left) is redrawn in
//! place; otherwise a line is printed when a table changes phase, and every few seconds
//! while it copies; with `--output json`, the connector is printed, one line each time its
//! status changes.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use kyma_catalog::{ConnectorStatus, TablePhase, TableSyncStatus};
use kyma_query_node::admin_grpc::proto;

use super::client::AdminClient;
use super::show::{self, phase_name, thousands};
use super::{CliError, Exit, Output};

/// How often the connector is read again.
const POLL_EVERY: Duration = Duration::from_millis(500);

/// Off a terminal: at most one progress line per copying table this often.
const LINE_EVERY: Duration = Duration::from_secs(2);

/// Width of a progress bar, in characters.
const BAR_WIDTH: usize = 24;

/// Follows `connector` until every table streams (`Ok`), a table fails or the connector is
/// paused ([`Exit::Refused`]), or `limit` passes ([`Exit::TimedOut`]).
pub async fn follow(
    client: &mut AdminClient,
    mut connector: proto::Connector,
    output: Output,
    limit: Option<Duration>,
) -> Result<(), CliError> {
    let started = Instant::now();
    let name = connector
        .spec
        .as_ref()
        .map(|s| s.name.clone())
        .unwrap_or_default();
    let mut progress = Progress::new(output);
    loop {
        let status = show::status(&connector)?;
        progress.show(&connector, &status)?;
        match verdict(&connector, &status) {
            Verdict::Done(note) => {
                progress.finish(&name, &note);
                return Ok(());
            }
            Verdict::Stopped(why) => return Err(CliError::new(Exit::Refused, why)),
            Verdict::Copying => {}
        }
        if limit.is_some_and(|limit| started.elapsed() >= limit) {
            return Err(CliError::new(
                Exit::TimedOut,
                format!(
                    "{name}: not every table was streaming after {}s (--watch-timeout); the snapshot goes on",
                    started.elapsed().as_secs()
                ),
            ));
        }
        tokio::time::sleep(POLL_EVERY).await;
        connector = client.get(&name).await?;
    }
}

/// Where a watched connector stands.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Nothing left to copy; the note says why.
    Done(String),
    /// It will not get there without the operator; what to do.
    Stopped(String),
    /// Still copying (or waiting for a worker).
    Copying,
}

fn verdict(connector: &proto::Connector, status: &ConnectorStatus) -> Verdict {
    let spec = connector.spec.clone().unwrap_or_default();
    if spec.mode == "federation" {
        return Verdict::Done("federation only: there is nothing to copy".into());
    }
    if connector.state == "paused" {
        return Verdict::Stopped(format!(
            "{}: the connector is paused; resume it with `kyma connectors resume {}`",
            spec.name, spec.name
        ));
    }
    if let (Some(error), Some(false)) = (&status.last_error, status.retries) {
        return Verdict::Stopped(format!(
            "{}: {error} (this fails again until it is fixed; the worker tries again every half minute)",
            spec.name
        ));
    }
    if let Some((table, failed)) = status
        .tables
        .iter()
        .find(|(_, t)| t.phase == TablePhase::Failed)
    {
        let error = failed.last_error.as_deref().unwrap_or("no error recorded");
        let fix = failed
            .fix
            .as_deref()
            .map(|f| format!(" (fix: {f})"))
            .unwrap_or_default();
        return Verdict::Stopped(format!("{}: table {table} failed: {error}{fix}", spec.name));
    }
    let streaming = status
        .tables
        .values()
        .all(|t| t.phase == TablePhase::Streaming);
    if !status.tables.is_empty() && streaming {
        let rows: u64 = status.tables.values().map(|t| t.rows_synced).sum();
        return Verdict::Done(format!(
            "every table is streaming ({} tables, {} rows copied)",
            status.tables.len(),
            thousands(rows)
        ));
    }
    Verdict::Copying
}

/// When a table was first seen copying, for its rate.
#[derive(Debug, Clone, Copy)]
struct Seen {
    at: Instant,
    rows: u64,
}

/// What has been printed so far.
#[derive(Debug)]
struct Progress {
    output: Output,
    terminal: bool,
    /// Lines drawn last time (on a terminal, redrawn in place).
    drawn: usize,
    /// Per table: first seen copying.
    first: HashMap<String, Seen>,
    /// Per table, off a terminal: the phase last printed and when.
    printed: HashMap<String, (&'static str, Instant)>,
    last_json: Option<String>,
    /// The connector's error last printed.
    error_printed: Option<String>,
    /// Off a terminal: whether the wait for a worker was said.
    waiting_shown: bool,
}

impl Progress {
    fn new(output: Output) -> Self {
        Self {
            output,
            terminal: std::io::stdout().is_terminal(),
            drawn: 0,
            first: HashMap::new(),
            printed: HashMap::new(),
            last_json: None,
            error_printed: None,
            waiting_shown: false,
        }
    }

    fn show(
        &mut self,
        connector: &proto::Connector,
        status: &ConnectorStatus,
    ) -> Result<(), CliError> {
        if self.output == Output::Json {
            if self.last_json.as_deref() != Some(connector.status_json.as_str()) {
                show::print(&format!("{}\n", show::connector_json(connector)?));
                self.last_json = Some(connector.status_json.clone());
            }
            return Ok(());
        }
        let now = Instant::now();
        let width = status
            .tables
            .keys()
            .map(|n| n.chars().count())
            .max()
            .unwrap_or(0);
        let mut lines = Vec::new();
        for (name, table) in &status.tables {
            let line = self.line(name, table, width, now);
            let phase = phase_name(&table.phase);
            let due = match self.printed.get(name) {
                Some((printed, at)) => {
                    *printed != phase || (phase == "snapshotting" && now - *at >= LINE_EVERY)
                }
                None => true,
            };
            if self.terminal || due {
                lines.push(line);
                self.printed.insert(name.clone(), (phase, now));
            }
        }
        if status.tables.is_empty() && (self.terminal || !self.waiting_shown) {
            lines.push("waiting for a worker to take the connector ...".into());
            self.waiting_shown = true;
        }
        if status.last_error != self.error_printed || (self.terminal && status.last_error.is_some())
        {
            if let Some(error) = &status.last_error {
                lines.push(format!("retrying after: {error}"));
            }
            self.error_printed.clone_from(&status.last_error);
        }
        let mut text = String::new();
        if self.terminal && self.drawn > 0 {
            // Back to the first line drawn last time, and clear from there.
            text.push_str(&format!("\x1b[{}F\x1b[J", self.drawn));
        }
        for line in &lines {
            text.push_str(line);
            text.push('\n');
        }
        if self.terminal {
            self.drawn = lines.len();
        }
        show::print(&text);
        Ok(())
    }

    fn line(&mut self, name: &str, table: &TableSyncStatus, width: usize, now: Instant) -> String {
        let TablePhase::Snapshotting {
            rows_done,
            rows_estimated,
        } = table.phase
        else {
            let phase = phase_name(&table.phase);
            return format!(
                "{name:<width$}  {phase:<12}  {} rows",
                thousands(table.rows_synced)
            );
        };
        let first = *self.first.entry(name.to_owned()).or_insert(Seen {
            at: now,
            rows: rows_done,
        });
        let elapsed = (now - first.at).as_secs_f64();
        let rate =
            (elapsed >= 0.5).then(|| (rows_done.saturating_sub(first.rows)) as f64 / elapsed);
        let rate_text = rate.map_or_else(
            || "- rows/s".into(),
            |r| format!("{} rows/s", thousands(r as u64)),
        );
        let eta = match rate {
            Some(rate) if rate > 0.0 && rows_estimated > rows_done => {
                duration_text((rows_estimated - rows_done) as f64 / rate)
            }
            _ => "?".into(),
        };
        format!(
            "{name:<width$}  snapshotting  {}  {} of ~{} rows  {rate_text}  ETA {eta}",
            bar(rows_done, rows_estimated),
            thousands(rows_done),
            thousands(rows_estimated),
        )
    }

    fn finish(&mut self, name: &str, note: &str) {
        if self.output == Output::Table {
            show::print(&format!("{name}: {note}\n"));
        }
    }
}

/// `[#####.....]  42%`; an estimate the copy has passed shows 99%.
fn bar(done: u64, estimated: u64) -> String {
    if estimated == 0 {
        return format!("[{}]    ", ".".repeat(BAR_WIDTH));
    }
    let share = (done as f64 / estimated as f64).min(0.99);
    let filled = (share * BAR_WIDTH as f64).round() as usize;
    format!(
        "[{}{}] {:>3}%",
        "#".repeat(filled),
        ".".repeat(BAR_WIDTH - filled),
        (share * 100.0).floor() as u64
    )
}

/// `1h02m`, `3m05s`, `12s`.
fn duration_text(seconds: f64) -> String {
    let seconds = seconds.ceil() as u64;
    match seconds {
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connector(mode: &str, state: &str) -> proto::Connector {
        proto::Connector {
            spec: Some(proto::ConnectorSpec {
                name: "pg".into(),
                mode: mode.into(),
                ..Default::default()
            }),
            state: state.into(),
            ..Default::default()
        }
    }

    fn status(phases: &[TablePhase]) -> ConnectorStatus {
        let mut status = ConnectorStatus::default();
        for (i, phase) in phases.iter().enumerate() {
            let failed = *phase == TablePhase::Failed;
            let table = TableSyncStatus {
                rows_synced: 10,
                last_error: failed.then(|| "type does not map".into()),
                fix: failed.then(|| "exclude the column".into()),
                ..TableSyncStatus::new(phase.clone())
            };
            status.tables.insert(format!("public.t{i}"), table);
        }
        status
    }

    #[test]
    fn a_watch_ends_when_every_table_streams_and_stops_on_a_failure_or_a_pause() {
        let copying = TablePhase::Snapshotting {
            rows_done: 5,
            rows_estimated: 10,
        };
        let running = connector("sync", "running");
        assert_eq!(
            verdict(&running, &status(&[])),
            Verdict::Copying,
            "no worker yet"
        );
        assert_eq!(
            verdict(&running, &status(&[TablePhase::Streaming, copying])),
            Verdict::Copying
        );
        assert!(matches!(
            verdict(
                &running,
                &status(&[TablePhase::Streaming, TablePhase::Streaming])
            ),
            Verdict::Done(_)
        ));
        let Verdict::Stopped(why) = verdict(
            &running,
            &status(&[TablePhase::Streaming, TablePhase::Failed]),
        ) else {
            panic!("a failed table stops the watch");
        };
        assert!(
            why.contains("public.t1") && why.contains("fix: exclude the column"),
            "{why}"
        );
        let Verdict::Stopped(why) = verdict(&connector("sync", "paused"), &status(&[])) else {
            panic!("a paused connector stops the watch");
        };
        assert!(why.contains("kyma connectors resume pg"), "{why}");
        assert!(matches!(
            verdict(&connector("federation", "running"), &status(&[])),
            Verdict::Done(_)
        ));
    }

    #[test]
    fn a_copying_table_shows_rows_of_estimated_rate_and_time_left() {
        let mut progress = Progress::new(Output::Table);
        let table = |done| {
            TableSyncStatus::new(TablePhase::Snapshotting {
                rows_done: done,
                rows_estimated: 10_000,
            })
        };
        let start = Instant::now();
        let first = progress.line("public.orders", &table(1_000), 13, start);
        assert!(
            first.contains("1,000 of ~10,000 rows") && first.contains("ETA ?"),
            "{first}"
        );
        let later = progress.line(
            "public.orders",
            &table(3_000),
            13,
            start + Duration::from_secs(2),
        );
        assert!(
            later.starts_with("public.orders  snapshotting  [#######")
                && later.contains(" 30%")
                && later.contains("1,000 rows/s")
                && later.ends_with("ETA 7s"),
            "{later}"
        );
    }

    #[test]
    fn progress_shows_share_and_time_left() {
        assert_eq!(bar(0, 0), format!("[{}]    ", ".".repeat(BAR_WIDTH)));
        assert_eq!(
            bar(50, 100),
            format!("[{}{}]  50%", "#".repeat(12), ".".repeat(12))
        );
        assert!(
            bar(150, 100).ends_with(" 99%"),
            "an estimate passed: {}",
            bar(150, 100)
        );
        assert_eq!(duration_text(12.2), "13s");
        assert_eq!(duration_text(185.0), "3m05s");
        assert_eq!(duration_text(3720.0), "1h02m");
    }
}

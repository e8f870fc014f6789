//! What the federation corpora share: the expectations on a `pushdown_summary`, answers as
//! comparable cells, and running a query over Flight SQL with its summary.

use arrow::array::RecordBatch;
use arrow_flight::sql::client::FlightSqlServiceClient;
use serde_json::Value;
use tonic::transport::Channel;

/// What a query's summary must show.
#[derive(Debug, Clone, Copy)]
pub enum Expect {
    /// A pushed part whose detail contains the text.
    Pushed(&'static str, &'static str),
    /// A part kept in kyma whose reason contains the text.
    NotPushed(&'static str, &'static str),
    /// Some source SQL contains the text.
    SqlHas(&'static str),
    /// No source SQL contains the text.
    SqlLacks(&'static str),
    /// This many source queries.
    Scans(usize),
}

use Expect::{NotPushed, Pushed, Scans, SqlHas, SqlLacks};

/// One cell as comparable text: numbers compare by value, timestamps by instant (exactly),
/// booleans by truth (as 1 and 0).
#[derive(Debug, Clone, PartialEq, PartialOrd)]
pub enum Cell {
    /// NULL.
    Null,
    /// A number (or a boolean).
    Number(f64),
    /// A timestamp, in nanoseconds since the epoch.
    Instant(i64),
    /// Anything else.
    Text(String),
}

/// The cell a value shows as (`None` for NULL).
pub fn cell(text: Option<&str>) -> Cell {
    let Some(text) = text else {
        return Cell::Null;
    };
    match text {
        "t" | "true" => return Cell::Number(1.0),
        "f" | "false" => return Cell::Number(0.0),
        _ => {}
    }
    if let Ok(n) = text.parse::<f64>() {
        return Cell::Number(n);
    }
    if text.len() >= 19
        && text.as_bytes()[4] == b'-'
        && let Ok(nanos) = arrow::compute::kernels::cast_utils::string_to_timestamp_nanos(
            &text.replace("+00", "Z").replace("ZZ", "Z"),
        )
    {
        return Cell::Instant(nanos);
    }
    Cell::Text(text.to_owned())
}

/// Whether two cells are the same value (numbers up to rounding).
pub fn same(a: &Cell, b: &Cell) -> bool {
    match (a, b) {
        (Cell::Number(x), Cell::Number(y)) => (x - y).abs() <= 1e-9 * x.abs().max(1.0),
        _ => a == b,
    }
}

/// kyma's answer as cells.
pub fn kyma_rows(batches: &[RecordBatch]) -> Vec<Vec<Cell>> {
    let mut rows = Vec::new();
    for batch in batches {
        for row in 0..batch.num_rows() {
            rows.push(
                batch
                    .columns()
                    .iter()
                    .map(|c| {
                        if c.is_null(row) {
                            Cell::Null
                        } else {
                            let text = arrow::util::display::array_value_to_string(c, row)
                                .expect("displayable");
                            cell(Some(&text))
                        }
                    })
                    .collect(),
            );
        }
    }
    rows
}

/// `rows` in a canonical order.
pub fn sorted(mut rows: Vec<Vec<Cell>>) -> Vec<Vec<Cell>> {
    rows.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    rows
}

/// Records in `failures` how kyma's answer `got` to `sql` differs from the reference's
/// (`source` names it), in order when `ordered`.
pub fn compare_answers(
    sql: &str,
    source: &str,
    (got, expected): (Vec<Vec<Cell>>, Vec<Vec<Cell>>),
    ordered: bool,
    summary: &[Value],
    failures: &mut Vec<String>,
) {
    let (got, expected) = if ordered {
        (got, expected)
    } else {
        (sorted(got), sorted(expected))
    };
    let equal = got.len() == expected.len()
        && got
            .iter()
            .zip(&expected)
            .all(|(a, b)| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y)));
    if !equal {
        failures.push(format!(
            "{sql}: kyma returned {} rows, {source} {}\nkyma: {:?}\n{source}: {:?}\nsummary: {}",
            got.len(),
            expected.len(),
            got.iter().take(5).collect::<Vec<_>>(),
            expected.iter().take(5).collect::<Vec<_>>(),
            serde_json::to_string_pretty(summary).unwrap_or_default()
        ));
    }
}

/// The `pushdown_summary` of a FlightInfo.
pub fn summary_of(info: &arrow_flight::FlightInfo) -> Vec<Value> {
    let metadata: Value = serde_json::from_slice(&info.app_metadata).expect("app_metadata is JSON");
    assert!(metadata["query_id"].is_string(), "{metadata}");
    metadata["pushdown_summary"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Records in `failures` each expectation the summary of `sql` does not meet.
pub fn check_summary(sql: &str, summary: &[Value], expect: &[Expect], failures: &mut Vec<String>) {
    let parts = |key: &str| -> Vec<(String, String)> {
        summary
            .iter()
            .flat_map(|s| s[key].as_array().cloned().unwrap_or_default())
            .map(|p| {
                let text = if key == "pushed" {
                    &p["detail"]
                } else {
                    &p["reason"]
                };
                (
                    p["part"].as_str().unwrap_or_default().to_owned(),
                    text.as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    };
    let sqls: Vec<&str> = summary.iter().filter_map(|s| s["sql"].as_str()).collect();
    let shown = serde_json::to_string_pretty(summary).unwrap_or_default();
    for expectation in expect {
        let ok = match *expectation {
            Pushed(part, text) => parts("pushed")
                .iter()
                .any(|(p, d)| p == part && d.contains(text)),
            NotPushed(part, text) => parts("not_pushed")
                .iter()
                .any(|(p, r)| p == part && r.contains(text)),
            SqlHas(text) => sqls.iter().any(|s| s.contains(text)),
            SqlLacks(text) => sqls.iter().all(|s| !s.contains(text)),
            Scans(n) => summary.len() == n,
        };
        if !ok {
            failures.push(format!("{sql}: expected {expectation:?} in\n{shown}"));
        }
    }
}

/// Runs `sql` on kyma: its batches and its `pushdown_summary`.
pub async fn run_kyma(
    flight: &mut FlightSqlServiceClient<Channel>,
    sql: &str,
) -> Result<(Vec<RecordBatch>, Vec<Value>), String> {
    let info = flight
        .execute(sql.to_owned(), None)
        .await
        .map_err(|e| format!("kyma refused {sql}: {e}"))?;
    let summary = summary_of(&info);
    let batches = super::fetch(flight, info).await.map_err(|e| {
        format!(
            "kyma failed {sql}: {e}\n{}",
            serde_json::to_string_pretty(&summary).unwrap_or_default()
        )
    })?;
    Ok((batches, summary))
}

/// Registers connector `spec` on `node` and waits until the node sees its catalog.
pub async fn register(
    node: &super::ServedNode,
    spec: kyma_query_node::admin_grpc::proto::ConnectorSpec,
) {
    let name = spec.name.clone();
    let mut admin = super::admin_client(node).await;
    admin
        .create_connector(kyma_query_node::admin_grpc::proto::CreateConnectorRequest {
            spec: Some(spec),
        })
        .await
        .expect("connector registered");
    // The node learns of the connector through the catalog watch.
    let engine = node.node.engine().clone();
    eventually("the connector's catalog on the node", async || {
        engine.session().catalog(&name).is_some()
    })
    .await;
}

/// Polls `probe` until it holds: the catalog watch reaches a node asynchronously.
pub async fn eventually(what: &str, mut probe: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !probe().await {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} did not happen within 20s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Column `column` of `batches` as displayed text.
pub fn strings(batches: &[RecordBatch], column: usize) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| {
            (0..b.num_rows()).map(move |row| {
                arrow::util::display::array_value_to_string(b.column(column), row)
                    .expect("displayable")
            })
        })
        .collect()
}

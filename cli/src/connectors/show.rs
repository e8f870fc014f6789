//! What `kyma connectors` prints: readable tables, or the REST API's JSON.

use std::io::Write;

use kyma_catalog::{ConnectorStatus, TablePhase, TableSyncStatus};
use kyma_query_node::admin_grpc::{proto, spec_json};
use serde_json::{Value, json};

use super::{CliError, Exit, Output};

/// Prints `message` as the command's error.
pub fn error(message: &str) {
    let _ = writeln!(std::io::stderr().lock(), "error: {message}");
}

/// Prints `text` to standard output (a closed pipe is not an error worth a message).
pub fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// A connector as the REST API shows it: its spec, state, status, cursor, epoch, holder.
pub fn connector_json(connector: &proto::Connector) -> Result<Value, CliError> {
    let mut body = connector.spec.as_ref().map(spec_json).unwrap_or(json!({}));
    let status: Value = serde_json::from_str(&connector.status_json).map_err(|e| unreadable(&e))?;
    if let Value::Object(fields) = &mut body {
        fields.insert("state".into(), json!(connector.state));
        fields.insert("status".into(), status);
        fields.insert("cursor".into(), json!(connector.cursor));
        fields.insert("epoch".into(), json!(connector.epoch));
        fields.insert("holder".into(), json!(connector.holder));
    }
    Ok(body)
}

/// The status the node reported for `connector`.
pub fn status(connector: &proto::Connector) -> Result<ConnectorStatus, CliError> {
    serde_json::from_str(&connector.status_json).map_err(|e| unreadable(&e))
}

fn unreadable(e: &serde_json::Error) -> CliError {
    CliError::new(
        Exit::Refused,
        format!(
            "the node answered a connector status this client cannot read ({e}); is it a different kyma version?"
        ),
    )
}

/// `get`, `create`, `pause`, `resume`: one connector.
pub fn connector(connector: &proto::Connector, output: Output) -> Result<(), CliError> {
    match output {
        Output::Json => print(&format!("{:#}\n", connector_json(connector)?)),
        Output::Table => print(&details(connector)?),
    }
    Ok(())
}

/// `list`: every connector.
pub fn connectors(connectors: &[proto::Connector], output: Output) -> Result<(), CliError> {
    if output == Output::Json {
        let all = connectors
            .iter()
            .map(connector_json)
            .collect::<Result<Vec<_>, _>>()?;
        print(&format!("{:#}\n", Value::Array(all)));
        return Ok(());
    }
    let mut rows = Vec::with_capacity(connectors.len());
    for connector in connectors {
        let status = status(connector)?;
        let spec = connector.spec.clone().unwrap_or_default();
        let streaming = status
            .tables
            .values()
            .filter(|t| t.phase == TablePhase::Streaming)
            .count();
        rows.push(vec![
            spec.name,
            spec.r#type,
            spec.mode,
            connector.state.clone(),
            format!("{streaming}/{}", status.tables.len()),
            lag(&status),
            connector_error(&status),
        ]);
    }
    let headers = [
        "NAME",
        "TYPE",
        "MODE",
        "STATE",
        "STREAMING",
        "LAG",
        "LAST ERROR",
    ];
    print(&table(&headers, &rows));
    Ok(())
}

/// `resync`: the request taken.
pub fn resync(name: &str, table: &str, request: u64, output: Output) -> Result<(), CliError> {
    match output {
        Output::Json => print(&format!(
            "{}\n",
            json!({"connector": name, "table": table, "request": request})
        )),
        Output::Table => print(&format!(
            "{name}: {table} will be copied again (request {request}); follow it with `kyma connectors get {name} --watch`\n"
        )),
    }
    Ok(())
}

/// `delete`: done, with what was left at the source.
pub fn deleted(name: &str, warnings: &[String], output: Output) -> Result<(), CliError> {
    match output {
        Output::Json => print(&format!(
            "{}\n",
            json!({"deleted": name, "warnings": warnings})
        )),
        Output::Table => {
            let mut text = format!("{name}: deleted\n");
            for warning in warnings {
                text.push_str(&format!("warning: {warning}\n"));
            }
            print(&text);
        }
    }
    Ok(())
}

/// One connector's header and per-table lines.
fn details(connector: &proto::Connector) -> Result<String, CliError> {
    let status = status(connector)?;
    let spec = connector.spec.clone().unwrap_or_default();
    let mut text = format!(
        "connector  {} ({}, {})\nstate      {}\nsource     {}\n",
        spec.name,
        spec.r#type,
        spec.mode,
        connector.state,
        spec.connection.map(|c| c.url).unwrap_or_default()
    );
    if let Some(holder) = &connector.holder {
        text.push_str(&format!(
            "worker     {holder} (epoch {})\n",
            connector.epoch
        ));
    }
    if let Some(cursor) = &connector.cursor {
        text.push_str(&format!("cursor     {cursor}\n"));
    }
    text.push_str(&format!("lag        {}\n", lag(&status)));
    if let Some(error) = &status.last_error {
        text.push_str(&format!("error      {error}\n"));
    }
    for warning in &status.warnings {
        text.push_str(&format!("warning    {warning}\n"));
    }
    if !status.tables.is_empty() {
        let rows: Vec<Vec<String>> = status
            .tables
            .iter()
            .map(|(name, table)| table_row(name, table, &status))
            .collect();
        text.push('\n');
        text.push_str(&table(
            &["TABLE", "PHASE", "ROWS", "LAG", "LAST ERROR"],
            &rows,
        ));
    }
    Ok(text)
}

fn table_row(name: &str, table: &TableSyncStatus, status: &ConnectorStatus) -> Vec<String> {
    let rows = match &table.phase {
        TablePhase::Snapshotting {
            rows_done,
            rows_estimated,
        } => format!(
            "{} of ~{}",
            thousands(*rows_done),
            thousands(*rows_estimated)
        ),
        _ => thousands(table.rows_synced),
    };
    let lag = match table.phase {
        TablePhase::Streaming => lag(status),
        _ => "-".into(),
    };
    let error = match (&table.last_error, &table.fix) {
        (Some(error), Some(fix)) => format!("{error} (fix: {fix})"),
        (Some(error), None) => error.clone(),
        (None, _) => "-".into(),
    };
    vec![
        name.to_owned(),
        phase_name(&table.phase).into(),
        rows,
        lag,
        error,
    ]
}

/// The phase as the status JSON names it.
pub fn phase_name(phase: &TablePhase) -> &'static str {
    match phase {
        TablePhase::Pending => "pending",
        TablePhase::Snapshotting { .. } => "snapshotting",
        TablePhase::Streaming => "streaming",
        TablePhase::Paused => "paused",
        TablePhase::Failed => "failed",
    }
}

fn lag(status: &ConnectorStatus) -> String {
    match (status.lag_ms, status.lag_bytes) {
        (Some(ms), Some(bytes)) => format!("{ms} ms, {} bytes", thousands(bytes)),
        (Some(ms), None) => format!("{ms} ms"),
        (None, Some(bytes)) => format!("{} bytes", thousands(bytes)),
        (None, None) => "-".into(),
    }
}

fn connector_error(status: &ConnectorStatus) -> String {
    status
        .last_error
        .clone()
        .or_else(|| {
            status
                .tables
                .iter()
                .find_map(|(name, t)| Some(format!("{name}: {}", t.last_error.as_ref()?)))
        })
        .unwrap_or_else(|| "-".into())
}

/// `n` with thousands separators.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// Left-aligned columns, two spaces apart.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut text = line(headers.to_vec());
    for row in rows {
        text.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_get_thousands_separators_and_columns_line_up() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(12_345_678), "12,345,678");
        let text = table(
            &["A", "LONGER"],
            &[
                vec!["wide cell".into(), "x".into()],
                vec!["y".into(), "z".into()],
            ],
        );
        assert_eq!(text, "A          LONGER\nwide cell  x\ny          z\n");
    }
}

//! Connector administration (SPEC §4): the logic behind the admin gRPC service and the REST
//! API. Registration validates the request field by field, resolves the secret and probes the
//! source before anything is stored; the stored spec never holds the secret, and nothing this
//! module returns or logs does.

use kyma_catalog::{
    Catalog, CatalogError, ConnectorHolder, ConnectorSpec, ConnectorState, ConnectorStatus,
    DesiredState, TableRef, parse_table_key, validate_identifier,
};
use serde::Serialize;
use serde_json::Value;

use crate::error::ConnectorError;
use crate::registry;
use crate::secrets::SecretResolver;

/// Catalog names that connectors cannot take.
const RESERVED_NAMES: [&str; 3] = ["kyma", "information_schema", "datafusion"];
/// Largest `connection.pool_size` accepted.
const MAX_POOL_SIZE: u64 = 1000;

/// A connector as the admin API shows it: the registration (with `secret_ref`, never the
/// secret), the desired state, and what its runner reports.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectorView {
    /// The registration.
    #[serde(flatten)]
    pub spec: ConnectorSpec,
    /// `running` or `paused`.
    pub state: DesiredState,
    /// Per-table phases, errors, warnings and lag.
    pub status: ConnectorStatus,
    /// The committed source position, once something synced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// The current fencing epoch.
    pub epoch: u64,
    /// The worker holding it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder: Option<ConnectorHolder>,
}

impl From<ConnectorState> for ConnectorView {
    fn from(state: ConnectorState) -> Self {
        Self {
            spec: state.spec,
            state: state.desired,
            status: state.status,
            cursor: state.cursor.map(|c| c.value.position),
            epoch: state.epoch,
            holder: state.holder,
        }
    }
}

/// The admin operations over the catalog.
#[derive(Debug, Clone)]
pub struct ConnectorAdmin {
    catalog: Catalog,
    secrets: SecretResolver,
}

impl ConnectorAdmin {
    /// Admin over `catalog`, resolving secrets with `secrets`.
    pub fn new(catalog: Catalog, secrets: SecretResolver) -> Self {
        Self { catalog, secrets }
    }

    /// Registers a connector from its JSON form (SPEC §4): checks every field, reaches the
    /// source with the secret, then stores it (running).
    pub async fn create(&self, body: &Value) -> Result<ConnectorView, ConnectorError> {
        let spec = parse_spec(body)?;
        let info = registry::kind(spec.source_type)?
            .probe(&spec, &self.secrets)
            .await?;
        tracing::info!(connector = %spec.name, server_version = %info.server_version, "source reached");
        let warnings = info.warnings;
        let status = ConnectorStatus {
            warnings,
            ..ConnectorStatus::default()
        };
        self.catalog
            .create_connector_with_status(&spec, &status)
            .await?;
        self.get(&spec.name).await
    }

    /// One connector with its status.
    pub async fn get(&self, name: &str) -> Result<ConnectorView, ConnectorError> {
        self.catalog
            .connector(name)
            .await
            .map(ConnectorView::from)
            .map_err(|e| not_found(name, e))
    }

    /// Every connector, by name.
    pub async fn list(&self) -> Result<Vec<ConnectorView>, ConnectorError> {
        Ok(self
            .catalog
            .list_connectors()
            .await?
            .into_iter()
            .map(ConnectorView::from)
            .collect())
    }

    /// Removes a connector (its synced tables stay until dropped) and tears down what it
    /// owns at the source (a sync connector's replication slot and publication), also when
    /// no worker runs it (paused, or no worker up). The catalog delete comes first, so a
    /// worker still running it is fenced before its source objects go. A teardown that fails
    /// (the source is unreachable) does not undo the delete: its reason comes back as a
    /// warning naming what to drop by hand.
    pub async fn delete(&self, name: &str) -> Result<Vec<String>, ConnectorError> {
        let state = self
            .catalog
            .connector(name)
            .await
            .map_err(|e| not_found(name, e))?;
        self.catalog
            .delete_connector(name)
            .await
            .map_err(|e| not_found(name, e))?;
        if !state.spec.mode.syncs() {
            return Ok(Vec::new());
        }
        let torn_down = match registry::kind(state.spec.source_type) {
            Ok(kind) => {
                kind.change_source(&state.spec, &self.secrets)
                    .teardown()
                    .await
            }
            Err(e) => Err(e),
        };
        Ok(match torn_down {
            Ok(()) => {
                tracing::info!(connector = %name, "tore the deleted connector's source objects down");
                Vec::new()
            }
            Err(e) => {
                tracing::warn!(connector = %name, error = %e, "cannot tear the deleted connector's source objects down");
                vec![format!(
                    "the connector is deleted, but its replication objects at the source could not be dropped ({e}); a CDC worker retries if it still runs it, else drop them at the source"
                )]
            }
        })
    }

    /// Asks the connector's CDC worker to copy `table` (`schema.table`, as the status names
    /// it) again: its rows are replaced by a new snapshot and streaming goes on from it.
    /// Returns the request's number (the table's state counts the requests served).
    pub async fn resync(&self, name: &str, table: &str) -> Result<u64, ConnectorError> {
        let state = self
            .catalog
            .connector(name)
            .await
            .map_err(|e| not_found(name, e))?;
        if !state.spec.mode.syncs() {
            return Err(ConnectorError::invalid(
                "mode",
                format!(
                    "connector `{name}` does not sync (mode federation), so it has no synced table to resync"
                ),
            ));
        }
        let (schema, table_name) = parse_table_key(table).ok_or_else(|| {
            ConnectorError::invalid(
                "table",
                format!("`{table}` is not a table name: write schema.table as the connector status shows it"),
            )
        })?;
        let synced = TableRef::new(name, &schema, &table_name);
        match self.catalog.table(&synced).await {
            Ok(_) => {}
            Err(CatalogError::NotFound(_)) => {
                return Err(ConnectorError::invalid(
                    "table",
                    format!(
                        "connector `{name}` has no synced table {table}; its tables are listed in its status"
                    ),
                ));
            }
            Err(e) => return Err(e.into()),
        }
        Ok(self.catalog.request_resync(name, table).await?)
    }

    /// Pauses or resumes a connector; returns it as it is now.
    pub async fn set_state(
        &self,
        name: &str,
        state: DesiredState,
    ) -> Result<ConnectorView, ConnectorError> {
        self.catalog
            .set_desired_state(name, state)
            .await
            .map_err(|e| not_found(name, e))?;
        self.get(name).await
    }
}

fn not_found(name: &str, e: CatalogError) -> ConnectorError {
    match e {
        CatalogError::NotFound(_) => ConnectorError::NotFound(name.to_owned()),
        other => other.into(),
    }
}

/// Parses and checks a registration request, naming the field at fault.
pub fn parse_spec(body: &Value) -> Result<ConnectorSpec, ConnectorError> {
    let object = body.as_object().ok_or_else(|| {
        ConnectorError::invalid(
            "body",
            "must be a JSON object like {\"name\": …, \"type\": …}",
        )
    })?;
    let text = |field: &str, value: Option<&Value>| -> Result<String, ConnectorError> {
        match value {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(_) => Err(ConnectorError::invalid(field, "must be a non-empty string")),
            None => Err(ConnectorError::invalid(field, "is required")),
        }
    };
    let name = text("name", object.get("name"))?;
    validate_identifier("name", &name)?;
    if RESERVED_NAMES.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(ConnectorError::invalid(
            "name",
            format!("`{name}` is reserved; choose another name"),
        ));
    }
    let source_type = text("type", object.get("type"))?;
    if !["postgres", "mysql", "mongodb"].contains(&source_type.as_str()) {
        return Err(ConnectorError::invalid(
            "type",
            format!("`{source_type}` is not a source type: use postgres, mysql or mongodb"),
        ));
    }
    let mode = text("mode", object.get("mode"))?;
    if !["federation", "sync", "both"].contains(&mode.as_str()) {
        return Err(ConnectorError::invalid(
            "mode",
            format!("`{mode}` is not a mode: use federation, sync or both"),
        ));
    }
    let connection = match object.get("connection") {
        Some(Value::Object(c)) => c,
        Some(_) => {
            return Err(ConnectorError::invalid(
                "connection",
                "must be an object with url, secret_ref, tls, pool_size, tls_ca_ref",
            ));
        }
        None => return Err(ConnectorError::invalid("connection", "is required")),
    };
    text("connection.url", connection.get("url"))?;
    if let Some(pool) = connection.get("pool_size") {
        match pool.as_u64() {
            Some(n) if (1..=MAX_POOL_SIZE).contains(&n) => {}
            _ => {
                return Err(ConnectorError::invalid(
                    "connection.pool_size",
                    format!("must be a whole number from 1 to {MAX_POOL_SIZE}, not {pool}"),
                ));
            }
        }
    }
    if let Some(tls) = connection.get("tls") {
        let ok = tls
            .as_str()
            .is_some_and(|t| ["disable", "prefer", "required", "verify-full"].contains(&t));
        if !ok {
            return Err(ConnectorError::invalid(
                "connection.tls",
                format!("{tls} is not a TLS mode: use disable, prefer, required or verify-full"),
            ));
        }
    }
    if let Some(secret) = connection.get("secret_ref") {
        SecretResolver::check_name(secret.as_str().unwrap_or_default())?;
    }
    if let Some(ca) = connection.get("tls_ca_ref") {
        SecretResolver::check_name_of("connection.tls_ca_ref", ca.as_str().unwrap_or_default())?;
        if connection.get("tls").and_then(Value::as_str) != Some("verify-full") {
            return Err(ConnectorError::invalid(
                "connection.tls_ca_ref",
                "a CA is only used to verify the source's certificate: set tls to verify-full",
            ));
        }
    }
    let spec: ConnectorSpec = serde_json::from_value(body.clone())
        .map_err(|e| ConnectorError::invalid("body", format!("{e}")))?;
    let schemes = registry::url_schemes(spec.source_type);
    let scheme = spec.connection.url.split_once("://").map(|(s, _)| s);
    if !scheme.is_some_and(|s| schemes.contains(&s)) {
        return Err(ConnectorError::invalid(
            "connection.url",
            format!("a {source_type} connector takes a {}:// URL", schemes[0]),
        ));
    }
    kyma_catalog::catalog::reject_password_in_url(&spec.connection.url)?;
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body() -> Value {
        json!({"name": "pg_prod", "type": "postgres", "mode": "federation",
               "connection": {"url": "postgres://app@db:5432/app", "secret_ref": "pg_prod_password",
                              "tls": "required", "pool_size": 10},
               "scope": {"include_schemas": ["public", "billing"]}})
    }

    #[test]
    fn the_spec_example_parses() {
        let spec = parse_spec(&body()).expect("SPEC §4 example");
        assert_eq!(spec.connection.pool_size, 10);
        assert_eq!(spec.scope.include_schemas, vec!["public", "billing"]);
    }

    #[test]
    fn bad_input_names_the_field() {
        // (where in the body, the new value or None to remove it, the field the error names)
        let cases: Vec<(&[&str], Option<Value>, &str)> = vec![
            (&["type"], Some(json!("oracle")), "type"),
            (&["mode"], Some(json!("mirror")), "mode"),
            (&["connection", "url"], None, "connection.url"),
            (
                &["connection", "pool_size"],
                Some(json!(0)),
                "connection.pool_size",
            ),
            (
                &["connection", "pool_size"],
                Some(json!("ten")),
                "connection.pool_size",
            ),
            (
                &["connection", "tls"],
                Some(json!("maybe")),
                "connection.tls",
            ),
            (
                &["connection", "url"],
                Some(json!("postgres://app:pw@db/app")),
                "connection.url",
            ),
            (
                &["connection", "url"],
                Some(json!("mysql://db/app")),
                "connection.url",
            ),
            (&["name"], Some(json!("kyma")), "name"),
            (&["name"], Some(json!("")), "name"),
            (&["extra"], Some(json!(1)), "body"),
        ];
        for (path, value, field) in cases {
            let mut b = body();
            let (last, parents) = path.split_last().expect("a path");
            let parent = parents.iter().fold(&mut b, |v, k| &mut v[*k]);
            match (parent.as_object_mut(), value) {
                (Some(object), Some(value)) => {
                    object.insert((*last).to_owned(), value);
                }
                (Some(object), None) => {
                    object.remove(*last);
                }
                (None, _) => panic!("{path:?} is not inside an object"),
            }
            let err = parse_spec(&b).expect_err(field);
            assert_eq!(err.field(), Some(field), "{path:?}: {err}");
        }
    }
}

//! The connector admin API as JSON over HTTP (SPEC §4), on the query node's HTTP port:
//!
//! | method and path | does |
//! |---|---|
//! | `POST /v1/connectors` | register (body as in SPEC §4) → 201 and the connector |
//! | `GET /v1/connectors` | list → `{"connectors": [...]}` |
//! | `GET /v1/connectors/{name}` | one, with status |
//! | `DELETE /v1/connectors/{name}` | remove, tearing down its source objects → 204 (200 with `{"warnings": [...]}` when the teardown failed) |
//! | `POST /v1/connectors/{name}/pause`, `.../resume` | set the desired state |
//! | `POST /v1/connectors/{name}/tables/{schema}.{table}/resync` | copy one synced table again → 202 `{"connector", "table", "request"}` |
//!
//! Errors are `{"error": {"code", "field", "message"}}`: 400 for bad input and for a source
//! that cannot be reached or refuses the credentials (the field names what to fix), 404 for
//! an unknown connector, 503 when the catalog is unavailable.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kyma_catalog::DesiredState;
use kyma_connectors::{ConnectorAdmin, ConnectorError};
use serde::Serialize;

/// The admin routes over `admin`.
pub fn admin_routes(admin: ConnectorAdmin) -> Router {
    Router::new()
        .route("/v1/connectors", post(create).get(list))
        .route("/v1/connectors/{name}", get(one).delete(remove))
        .route("/v1/connectors/{name}/pause", post(pause))
        .route("/v1/connectors/{name}/resume", post(resume))
        .route("/v1/connectors/{name}/tables/{table}/resync", post(resync))
        .with_state(admin)
}

fn json(status: StatusCode, value: &impl Serialize) -> Response {
    match serde_json::to_string(value) {
        Ok(body) => (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => error_body(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            None,
            &e.to_string(),
        ),
    }
}

fn error_body(status: StatusCode, code: &str, field: Option<&str>, message: &str) -> Response {
    let body = serde_json::json!({"error": {"code": code, "field": field, "message": message}});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn failure(e: &ConnectorError) -> Response {
    let message = e.to_string();
    match e {
        ConnectorError::Invalid { field, .. } | ConnectorError::Unreachable { field, .. } => {
            error_body(
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                Some(field),
                &message,
            )
        }
        ConnectorError::Source(_) | ConnectorError::HistoryLost(_) => {
            error_body(StatusCode::BAD_GATEWAY, "source_error", None, &message)
        }
        ConnectorError::Changed(_) => error_body(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            None,
            &message,
        ),
        ConnectorError::NotFound(_) => {
            error_body(StatusCode::NOT_FOUND, "not_found", None, &message)
        }
        ConnectorError::Fenced { .. } => {
            error_body(StatusCode::CONFLICT, "conflict", None, &message)
        }
        ConnectorError::Catalog(c) if c.is_retryable() => error_body(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            None,
            &message,
        ),
        ConnectorError::Catalog(_) => error_body(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            None,
            &message,
        ),
    }
}

fn answer<T: Serialize>(status: StatusCode, result: Result<T, ConnectorError>) -> Response {
    match result {
        Ok(value) => json(status, &value),
        Err(e) => failure(&e),
    }
}

async fn create(State(admin): State<ConnectorAdmin>, body: Bytes) -> Response {
    let value: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return failure(&ConnectorError::invalid("body", format!("not JSON: {e}")));
        }
    };
    answer(StatusCode::CREATED, admin.create(&value).await)
}

async fn list(State(admin): State<ConnectorAdmin>) -> Response {
    answer(
        StatusCode::OK,
        admin
            .list()
            .await
            .map(|connectors| serde_json::json!({ "connectors": connectors })),
    )
}

async fn one(State(admin): State<ConnectorAdmin>, Path(name): Path<String>) -> Response {
    answer(StatusCode::OK, admin.get(&name).await)
}

async fn remove(State(admin): State<ConnectorAdmin>, Path(name): Path<String>) -> Response {
    match admin.delete(&name).await {
        Ok(warnings) if warnings.is_empty() => StatusCode::NO_CONTENT.into_response(),
        Ok(warnings) => json(StatusCode::OK, &serde_json::json!({ "warnings": warnings })),
        Err(e) => failure(&e),
    }
}

async fn pause(State(admin): State<ConnectorAdmin>, Path(name): Path<String>) -> Response {
    answer(
        StatusCode::OK,
        admin.set_state(&name, DesiredState::Paused).await,
    )
}

async fn resume(State(admin): State<ConnectorAdmin>, Path(name): Path<String>) -> Response {
    answer(
        StatusCode::OK,
        admin.set_state(&name, DesiredState::Running).await,
    )
}

async fn resync(
    State(admin): State<ConnectorAdmin>,
    Path((name, table)): Path<(String, String)>,
) -> Response {
    answer(
        StatusCode::ACCEPTED,
        admin.resync(&name, &table).await.map(
            |request| serde_json::json!({"connector": name, "table": table, "request": request}),
        ),
    )
}

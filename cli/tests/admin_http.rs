//! The REST admin API of a real `kyma standalone` against a real PostgreSQL: every bad input
//! answers 400 naming the field, the lifecycle works, and the secret appears in no response
//! and no log line.

mod common;

use common::Kyma;
use kyma_test_harness::{Postgres, free_port, unique_name};
use serde_json::{Value, json};

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
    ) -> (u16, String) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request.send().await.expect("HTTP call");
        let status = response.status().as_u16();
        (status, response.text().await.expect("body"))
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, String) {
        self.call(reqwest::Method::POST, path, Some(body.to_string()))
            .await
    }
}

fn field(body: &str) -> String {
    let value: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    value["error"]["field"].as_str().unwrap_or("-").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connector_admin_over_http() {
    let pg = Postgres::shared();
    let role = unique_name("rest");
    let password = "c0rrect-h0rse-battery";
    pg.psql(
        "postgres",
        &format!("CREATE ROLE {role} LOGIN PASSWORD '{password}' IN ROLE password_login"),
    )
    .expect("role");
    let secrets = tempfile::tempdir().expect("secrets");
    std::fs::write(secrets.path().join("wrong"), "not-it").expect("secret");
    std::fs::write(secrets.path().join("right"), password).expect("secret");
    let data = tempfile::tempdir().expect("data");
    let grpc = format!("--grpc-addr=127.0.0.1:{}", free_port().expect("port"));
    let secrets_flag = format!("--secrets-dir={}", secrets.path().display());
    let mut kyma = Kyma::spawn(&[
        "standalone",
        "--data-dir",
        &data.path().to_string_lossy(),
        &grpc,
        &secrets_flag,
    ]);
    kyma.wait_for_200("/readyz");
    let api = Api {
        http: reqwest::Client::new(),
        base: format!("http://127.0.0.1:{}", kyma.http_port),
    };

    let url = format!("postgres://{role}@127.0.0.1:{}/postgres", pg.port());
    let good = json!({"name": "pg_prod", "type": "postgres", "mode": "federation",
                      "connection": {"url": url, "secret_ref": "right", "tls": "prefer", "pool_size": 4}});
    let with = |path: &[&str], value: Value| {
        let mut b = good.clone();
        let (last, parents) = path.split_last().expect("path");
        let parent = parents.iter().fold(&mut b, |v, k| &mut v[*k]);
        parent[*last] = value;
        b
    };
    let unreachable = format!(
        "postgres://{role}@127.0.0.1:{}/postgres",
        free_port().expect("port")
    );
    for (body, expected) in [
        (with(&["type"], json!("oracle")), "type"),
        (with(&["mode"], json!("mirror")), "mode"),
        (with(&["connection", "url"], Value::Null), "connection.url"),
        (
            with(&["connection", "pool_size"], json!(-3)),
            "connection.pool_size",
        ),
        (
            with(&["connection", "url"], json!(unreachable)),
            "connection.url",
        ),
        (
            with(&["connection", "secret_ref"], json!("wrong")),
            "connection.secret_ref",
        ),
        (
            with(&["connection", "tls"], json!("required")),
            "connection.tls",
        ),
    ] {
        let (status, answer) = api.post("/v1/connectors", &body).await;
        assert_eq!(
            (status, field(&answer).as_str()),
            (400, expected),
            "{body}: {answer}"
        );
    }
    let (status, answer) = api
        .call(
            reqwest::Method::POST,
            "/v1/connectors",
            Some("{not json".into()),
        )
        .await;
    assert_eq!((status, field(&answer).as_str()), (400, "body"), "{answer}");

    let (status, created) = api.post("/v1/connectors", &good).await;
    assert_eq!(status, 201, "{created}");
    let (status, answer) = api.post("/v1/connectors", &good).await;
    assert_eq!(
        (status, field(&answer).as_str()),
        (400, "name"),
        "duplicate: {answer}"
    );

    let (status, listed) = api.call(reqwest::Method::GET, "/v1/connectors", None).await;
    assert_eq!(status, 200);
    let listed: Value = serde_json::from_str(&listed).expect("json");
    assert_eq!(listed["connectors"][0]["name"], "pg_prod");
    let (_, paused) = api.post("/v1/connectors/pg_prod/pause", &json!({})).await;
    assert_eq!(
        serde_json::from_str::<Value>(&paused).expect("json")["state"],
        "paused"
    );
    let (_, resumed) = api.post("/v1/connectors/pg_prod/resume", &json!({})).await;
    assert_eq!(
        serde_json::from_str::<Value>(&resumed).expect("json")["state"],
        "running"
    );
    let (status, one) = api
        .call(reqwest::Method::GET, "/v1/connectors/pg_prod", None)
        .await;
    assert_eq!(status, 200, "{one}");
    let (status, refused) = api
        .post(
            "/v1/connectors/pg_prod/tables/public.users/resync",
            &json!({}),
        )
        .await;
    assert_eq!(
        status, 400,
        "a federation connector has nothing to resync: {refused}"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&refused).expect("json")["error"]["field"],
        "mode"
    );

    for shown in [&created, &one, &paused] {
        assert!(!shown.contains(password), "{shown}");
    }
    assert!(
        !kyma.log().contains(password) && !kyma.log().contains("not-it"),
        "{}",
        kyma.log()
    );

    let (status, _) = api
        .call(reqwest::Method::DELETE, "/v1/connectors/pg_prod", None)
        .await;
    assert_eq!(status, 204);
    let (status, gone) = api
        .call(reqwest::Method::GET, "/v1/connectors/pg_prod", None)
        .await;
    assert_eq!(status, 404, "{gone}");
}

//! Connector administration against a real PostgreSQL: registration probes the source with
//! the secret and the TLS policy, bad input names the field, and the secret never shows.

use kyma_catalog::{Catalog, CatalogLocation, DesiredState};
use kyma_connectors::{ConnectorAdmin, ConnectorError, SecretResolver};
use kyma_test_harness::{Postgres, free_port, unique_name};
use serde_json::{Value, json};

struct Fixture {
    admin: ConnectorAdmin,
    secrets_dir: tempfile::TempDir,
    _catalog_dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let catalog_dir = tempfile::tempdir().expect("dir");
    let catalog = Catalog::open(&CatalogLocation::Embedded {
        path: catalog_dir.path().join("catalog.redb"),
    })
    .await
    .expect("catalog");
    let secrets_dir = tempfile::tempdir().expect("secrets dir");
    Fixture {
        admin: ConnectorAdmin::new(catalog, SecretResolver::new(secrets_dir.path())),
        secrets_dir,
        _catalog_dir: catalog_dir,
    }
}

fn registration(name: &str, url: &str) -> Value {
    json!({"name": name, "type": "postgres", "mode": "federation",
           "connection": {"url": url, "tls": "prefer", "pool_size": 4}})
}

fn field_of(result: Result<impl std::fmt::Debug, ConnectorError>) -> (String, String) {
    let err = result.expect_err("must be refused");
    (err.field().unwrap_or("-").to_owned(), err.to_string())
}

#[tokio::test]
async fn register_get_list_pause_resume_delete() {
    let pg = Postgres::shared();
    let f = fixture().await;
    let name = unique_name("pg");
    let created = f
        .admin
        .create(&registration(&name, &pg.url("postgres")))
        .await
        .expect("registers");
    assert_eq!(created.spec.name, name);
    assert_eq!(created.state, DesiredState::Running);
    assert!(
        f.admin
            .list()
            .await
            .expect("list")
            .iter()
            .any(|c| c.spec.name == name)
    );

    let paused = f
        .admin
        .set_state(&name, DesiredState::Paused)
        .await
        .expect("pause");
    assert_eq!(paused.state, DesiredState::Paused);
    let resumed = f
        .admin
        .set_state(&name, DesiredState::Running)
        .await
        .expect("resume");
    assert_eq!(resumed.state, DesiredState::Running);

    let (field, message) = field_of(
        f.admin
            .create(&registration(&name, &pg.url("postgres")))
            .await,
    );
    assert_eq!(field, "name", "{message}");

    f.admin.delete(&name).await.expect("delete");
    assert!(matches!(
        f.admin.get(&name).await,
        Err(ConnectorError::NotFound(_))
    ));
    assert!(matches!(
        f.admin.delete(&name).await,
        Err(ConnectorError::NotFound(_))
    ));
}

#[tokio::test]
async fn unreachable_hosts_missing_databases_and_tls_not_offered_name_the_field() {
    let pg = Postgres::shared();
    let f = fixture().await;
    let port = free_port().expect("port");
    let (field, message) = field_of(
        f.admin
            .create(&registration(
                "nowhere",
                &format!("postgres://app@127.0.0.1:{port}/app"),
            ))
            .await,
    );
    assert_eq!(field, "connection.url", "{message}");
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");

    let no_db = pg.url("no_such_database");
    let (field, message) = field_of(f.admin.create(&registration("nodb", &no_db)).await);
    assert_eq!(field, "connection.url", "{message}");
    assert!(message.contains("no_such_database"), "{message}");

    let mut required = registration("tls_required", &pg.url("postgres"));
    required["connection"]["tls"] = json!("required");
    let (field, message) = field_of(f.admin.create(&required).await);
    assert_eq!(field, "connection.tls", "{message}");

    let mongo_port = free_port().expect("port");
    let mut mongodb = registration("mongo", &format!("mongodb://127.0.0.1:{mongo_port}/x"));
    mongodb["type"] = json!("mongodb");
    let (field, message) = field_of(f.admin.create(&mongodb).await);
    assert_eq!(field, "connection.url", "{message}");
    assert!(
        message.contains(&format!("127.0.0.1:{mongo_port}")),
        "{message}"
    );
    assert!(
        f.admin.list().await.expect("list").is_empty(),
        "nothing refused was stored"
    );
}

#[tokio::test]
async fn the_secret_authenticates_and_never_shows_in_errors_or_answers() {
    let pg = Postgres::shared();
    let f = fixture().await;
    let role = unique_name("app");
    let password = "Tr0ub4dor-and-3";
    pg.psql(
        "postgres",
        &format!("CREATE ROLE {role} LOGIN PASSWORD '{password}' IN ROLE password_login"),
    )
    .expect("role");
    let url = format!("postgres://{role}@127.0.0.1:{}/postgres", pg.port());
    let mut body = registration("with_secret", &url);
    body["connection"]["secret_ref"] = json!("app_password");

    let (field, message) = field_of(f.admin.create(&body).await);
    assert_eq!(
        field, "connection.secret_ref",
        "a missing secret: {message}"
    );

    std::fs::write(
        f.secrets_dir.path().join("app_password"),
        "not-the-password\n",
    )
    .expect("write");
    let (field, message) = field_of(f.admin.create(&body).await);
    assert_eq!(
        field, "connection.secret_ref",
        "a wrong password: {message}"
    );
    assert!(!message.contains("not-the-password"), "{message}");

    std::fs::write(
        f.secrets_dir.path().join("app_password"),
        format!("{password}\n"),
    )
    .expect("write");
    let view = f
        .admin
        .create(&body)
        .await
        .expect("the right password registers");
    let shown = serde_json::to_string(&view).expect("json");
    assert!(shown.contains("\"secret_ref\":\"app_password\""), "{shown}");
    assert!(!shown.contains(password), "{shown}");
    let listed = serde_json::to_string(&f.admin.list().await.expect("list")).expect("json");
    assert!(!listed.contains(password), "{listed}");
}

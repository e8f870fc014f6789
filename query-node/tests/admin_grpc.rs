//! The connector admin service over gRPC against a real PostgreSQL: the lifecycle, bad input
//! as INVALID_ARGUMENT naming the field, and the auth token guarding it like Flight SQL.

mod common;

use common::{admin_client, secrets_dir, standalone};
use kyma_query_node::GrpcOptions;
use kyma_query_node::admin_grpc::proto::{
    Connection, ConnectorSpec, CreateConnectorRequest, DeleteConnectorRequest, GetConnectorRequest,
    ListConnectorsRequest, PauseConnectorRequest, ResumeConnectorRequest, ResyncTableRequest,
};
use kyma_test_harness::{Postgres, unique_name};
use tonic::Code;

fn spec(name: &str, url: String) -> ConnectorSpec {
    common::pg_connector(name, url, "prefer")
}

fn create(spec: ConnectorSpec) -> CreateConnectorRequest {
    CreateConnectorRequest { spec: Some(spec) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connector_lifecycle_and_bad_input_over_grpc() {
    let pg = Postgres::shared();
    let node = standalone(GrpcOptions::default()).await;
    let mut client = admin_client(&node).await;
    let url = pg.url("postgres");

    let role = unique_name("grpc");
    let password = "Sw0rdfish-grpc";
    pg.psql(
        "postgres",
        &format!("CREATE ROLE {role} LOGIN PASSWORD '{password}' IN ROLE password_login"),
    )
    .expect("role");
    std::fs::write(secrets_dir(&node).join("wrong"), "nope").expect("secret");
    let wrong_password = {
        let mut s = spec(
            "pw",
            format!("postgres://{role}@127.0.0.1:{}/postgres", pg.port()),
        );
        if let Some(c) = s.connection.as_mut() {
            c.secret_ref = Some("wrong".into());
        }
        s
    };
    let bad: Vec<(ConnectorSpec, &str)> = vec![
        (
            ConnectorSpec {
                r#type: "oracle".into(),
                ..spec("a", url.clone())
            },
            "type:",
        ),
        (
            ConnectorSpec {
                mode: "mirror".into(),
                ..spec("a", url.clone())
            },
            "mode:",
        ),
        (
            ConnectorSpec {
                connection: None,
                ..spec("a", url.clone())
            },
            "connection:",
        ),
        (
            ConnectorSpec {
                connection: Some(Connection {
                    pool_size: Some(0),
                    ..spec("a", url.clone()).connection.expect("c")
                }),
                ..spec("a", url.clone())
            },
            "connection.pool_size:",
        ),
        (wrong_password, "connection.secret_ref:"),
    ];
    for (request, field) in bad {
        let status = client
            .create_connector(create(request))
            .await
            .expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().starts_with(field),
            "{field}: {}",
            status.message()
        );
        assert!(!status.message().contains(password) && !status.message().contains("nope"));
    }

    let created = client
        .create_connector(create(spec("pg_prod", url.clone())))
        .await
        .expect("create")
        .into_inner();
    assert_eq!(created.state, "running");
    assert_eq!(
        created.spec.as_ref().map(|s| s.r#type.as_str()),
        Some("postgres")
    );
    let status = client
        .create_connector(create(spec("pg_prod", url)))
        .await
        .expect_err("duplicate");
    assert!(
        status.message().starts_with("name:"),
        "{}",
        status.message()
    );

    let listed = client
        .list_connectors(ListConnectorsRequest {})
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.connectors.len(), 1);
    let paused = client
        .pause_connector(PauseConnectorRequest {
            name: "pg_prod".into(),
        })
        .await
        .expect("pause");
    assert_eq!(paused.into_inner().state, "paused");
    let resumed = client
        .resume_connector(ResumeConnectorRequest {
            name: "pg_prod".into(),
        })
        .await
        .expect("resume");
    assert_eq!(resumed.into_inner().state, "running");
    let resync = client
        .resync_table(ResyncTableRequest {
            name: "pg_prod".into(),
            table: "public.users".into(),
        })
        .await
        .expect_err("a federation connector has nothing to resync");
    assert_eq!(resync.code(), Code::InvalidArgument);
    assert!(resync.message().starts_with("mode:"), "{resync:?}");
    client
        .delete_connector(DeleteConnectorRequest {
            name: "pg_prod".into(),
        })
        .await
        .expect("delete");
    let gone = client
        .get_connector(GetConnectorRequest {
            name: "pg_prod".into(),
        })
        .await
        .expect_err("gone");
    assert_eq!(gone.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_service_requires_the_token_too() {
    let node = standalone(GrpcOptions {
        auth_token: Some("admin-token".into()),
        ..GrpcOptions::default()
    })
    .await;
    let mut client = admin_client(&node).await;
    let status = client
        .list_connectors(ListConnectorsRequest {})
        .await
        .expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated);
    let mut request = tonic::Request::new(ListConnectorsRequest {});
    request.metadata_mut().insert(
        "authorization",
        "Bearer admin-token".parse().expect("header"),
    );
    client
        .list_connectors(request)
        .await
        .expect("with the token");
}

//! Flight SQL through arrow-flight's Rust client against an in-process query node on the
//! embedded catalog and a local store (what `kyma standalone` runs).

mod common;

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringArray, StructArray,
};
use arrow::datatypes::{DataType, Field, Fields, Int64Type};
use arrow_flight::sql::CommandGetTables;
use common::{code_of, ingest, query, query_text, schema, standalone};
use kyma_query_node::GrpcOptions;

fn people(ids: &[i64], names: &[&str]) -> RecordBatch {
    RecordBatch::try_new(
        schema(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]),
        vec![
            Arc::new(Int64Array::from(ids.to_vec())),
            Arc::new(StringArray::from(names.to_vec())),
        ],
    )
    .expect("batch")
}

fn ids_of(batches: &[RecordBatch]) -> Vec<i64> {
    batches
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_query_and_prepared_statement_with_a_parameter() {
    let node = standalone(GrpcOptions::default()).await;
    let mut client = common::client(node.addr).await;
    let rows = ingest(
        &mut client,
        "people",
        true,
        vec![people(&[1, 2, 3], &["ada", "bob", "cy"])],
    )
    .await
    .expect("ingest");
    assert_eq!(rows, 3);
    assert_eq!(
        ids_of(
            &query(
                &mut client,
                "SELECT id FROM kyma.default.people ORDER BY id"
            )
            .await
            .expect("query")
        ),
        vec![1, 2, 3]
    );

    let mut prepared = client
        .prepare("SELECT name FROM people WHERE id = $1".into(), None)
        .await
        .expect("prepare");
    prepared
        .set_parameters(
            RecordBatch::try_new(
                schema(vec![Field::new("$1", DataType::Int64, false)]),
                vec![Arc::new(Int64Array::from(vec![2]))],
            )
            .expect("params"),
        )
        .expect("bind");
    let info = prepared.execute().await.expect("execute prepared");
    let batches = common::fetch(&mut client, info).await.expect("rows");
    let names: Vec<&str> = batches
        .iter()
        .flat_map(|b| b.column(0).as_string::<i32>().iter().flatten())
        .collect();
    assert_eq!(names, vec!["bob"]);

    // INSERT through a prepared statement with `?` placeholders.
    let mut insert = client
        .prepare("INSERT INTO people VALUES (?, ?)".into(), None)
        .await
        .expect("prepare insert");
    insert
        .set_parameters(
            RecordBatch::try_new(
                schema(vec![
                    Field::new("a", DataType::Int64, false),
                    Field::new("b", DataType::Utf8, false),
                ]),
                vec![
                    Arc::new(Int64Array::from(vec![4])),
                    Arc::new(StringArray::from(vec!["dee"])),
                ],
            )
            .expect("params"),
        )
        .expect("bind");
    assert_eq!(insert.execute_update().await.expect("insert"), 1);
    assert_eq!(
        ids_of(
            &query(&mut client, "SELECT id FROM people ORDER BY id")
                .await
                .expect("query")
        ),
        vec![1, 2, 3, 4]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_ddl_and_insert_with_kyma_types() {
    let node = standalone(GrpcOptions::default()).await;
    let mut client = common::client(node.addr).await;
    client
        .execute_update(
            "CREATE TABLE kyma.default.docs (id long NOT NULL, title string, score real, ok bool, at timestamp, body dynamic, emb vector(3), n int)".into(),
            None,
        )
        .await
        .expect("create table");
    let inserted = client
        .execute_update(
            "INSERT INTO docs (id, title, score, ok, at, emb, n) VALUES (1, 'a', 0.5, true, TIMESTAMP '2026-01-02T03:04:05Z', [1.0, 2.0, 3.0], 7)".into(),
            None,
        )
        .await
        .expect("insert");
    assert_eq!(inserted, 1);
    let text = query_text(
        &mut client,
        "SELECT id, title, score, ok, at, emb, n FROM docs",
    )
    .await;
    assert!(
        text.contains("| 1  | a     | 0.5   | true | 2026-01-02T03:04:05Z | [1.0, 2.0, 3.0] | 7 |"),
        "{text}"
    );

    // The Arrow types are the kyma ones (SPEC §3); `dynamic` reaches clients as JSON text
    // of the canonical `arrow.json` extension type.
    let batches = query(&mut client, "SELECT * FROM docs")
        .await
        .expect("select *");
    let body = batches[0]
        .schema()
        .field_with_name("body")
        .expect("body")
        .clone();
    assert_eq!(
        body.metadata()
            .get("ARROW:extension:name")
            .map(String::as_str),
        Some("arrow.json"),
        "{body:?}"
    );
    let types: Vec<String> = batches[0]
        .schema()
        .fields()
        .iter()
        .map(|f| f.data_type().to_string())
        .collect();
    assert_eq!(
        types,
        vec![
            "Int64",
            "Utf8",
            "Float64",
            "Boolean",
            "Timestamp(µs, \"UTC\")",
            "Utf8",
            "FixedSizeList(3 x Float32)",
            "Int32"
        ]
    );

    // A vector of another dimension fails loudly, naming the column.
    let err = client
        .execute_update(
            "INSERT INTO docs (id, emb) VALUES (2, [1.0, 2.0])".into(),
            None,
        )
        .await
        .expect_err("dimension 2 into vector(3)");
    assert_eq!(code_of(&err), Some(tonic::Code::InvalidArgument), "{err}");
    assert!(err.to_string().contains("FixedSizeList(3)"), "{err}");

    client
        .execute_update("DROP TABLE docs".into(), None)
        .await
        .expect("drop");
    let err = query(&mut client, "SELECT * FROM docs")
        .await
        .expect_err("dropped");
    assert_eq!(code_of(&err), Some(tonic::Code::NotFound), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_statuses_and_the_connection_survives_them() {
    let node = standalone(GrpcOptions::default()).await;
    let mut client = common::client(node.addr).await;
    ingest(&mut client, "t", true, vec![people(&[1], &["x"])])
        .await
        .expect("ingest");

    let bad_sql = query(&mut client, "SELEC id FROM t")
        .await
        .expect_err("bad SQL");
    assert_eq!(
        code_of(&bad_sql),
        Some(tonic::Code::InvalidArgument),
        "{bad_sql}"
    );

    let unknown = query(&mut client, "SELECT * FROM nowhere")
        .await
        .expect_err("unknown table");
    assert_eq!(code_of(&unknown), Some(tonic::Code::NotFound), "{unknown}");
    assert!(unknown.to_string().contains("nowhere"), "{unknown}");

    let mismatch = ingest(
        &mut client,
        "t",
        false,
        vec![
            RecordBatch::try_new(
                schema(vec![Field::new("id", DataType::Utf8, false)]),
                vec![Arc::new(StringArray::from(vec!["not a number"]))],
            )
            .expect("batch"),
        ],
    )
    .await
    .expect_err("type mismatch");
    assert_eq!(
        code_of(&mismatch),
        Some(tonic::Code::InvalidArgument),
        "{mismatch}"
    );
    assert!(
        mismatch.to_string().contains("column `id` is long"),
        "{mismatch}"
    );

    let exists = ingest(&mut client, "t", true, vec![people(&[2], &["y"])])
        .await
        .expect_err("exists");
    assert_eq!(
        code_of(&exists),
        Some(tonic::Code::AlreadyExists),
        "{exists}"
    );

    let bad_type = client
        .execute_update("CREATE TABLE u (a money)".into(), None)
        .await
        .expect_err("not a kyma type");
    assert!(
        bad_type.to_string().contains("not a kyma type"),
        "{bad_type}"
    );

    // Nothing was lost or half-written, and the same connection still answers.
    assert_eq!(
        ids_of(&query(&mut client, "SELECT id FROM t").await.expect("query")),
        vec![1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_column_mid_ingest_widens_the_schema_and_old_rows_read_null() {
    let node = standalone(GrpcOptions::default()).await;
    let mut client = common::client(node.addr).await;
    let wider = RecordBatch::try_new(
        schema(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("score", DataType::Float64, true),
        ]),
        vec![
            Arc::new(Int64Array::from(vec![3])),
            Arc::new(StringArray::from(vec!["cy"])),
            Arc::new(Float64Array::from(vec![9.5])),
        ],
    )
    .expect("batch");
    // One ingest stream whose schema changes after the first batch.
    // Flight allows a new schema message mid-stream (arrow-flight's encoder never sends one,
    // so the helper builds the stream itself).
    let rows = common::ingest_changing_schema(
        &mut client,
        "w",
        vec![people(&[1, 2], &["ada", "bob"]), wider],
    )
    .await
    .expect("ingest");
    assert_eq!(rows, 3);
    let text = query_text(&mut client, "SELECT id, name, score FROM w ORDER BY id").await;
    assert_eq!(
        text,
        "+----+------+-------+\n| id | name | score |\n+----+------+-------+\n| 1  | ada  |       |\n| 2  | bob  |       |\n| 3  | cy   | 9.5   |\n+----+------+-------+"
    );
    let state = node
        .node
        .engine()
        .view()
        .table(&kyma_catalog::TableRef::new("kyma", "default", "w"))
        .expect("table in view");
    assert_eq!(state.state.schema.value.version, 2);
    let manifest = state.manifest.as_ref().expect("manifest");
    let versions: Vec<u64> = manifest.extents.iter().map(|e| e.schema_version).collect();
    assert_eq!(
        versions,
        vec![1, 2],
        "flushed before widening, resumed after"
    );
}

fn attributes(services: &[&str], codes: &[i64]) -> ArrayRef {
    let http = StructArray::from(vec![(
        Arc::new(Field::new("status_code", DataType::Int64, true)),
        Arc::new(Int64Array::from(codes.to_vec())) as ArrayRef,
    )]);
    Arc::new(StructArray::new(
        Fields::from(vec![
            Field::new("service.name", DataType::Utf8, true),
            Field::new("http", http.data_type().clone(), true),
        ]),
        vec![
            Arc::new(StringArray::from(services.to_vec())) as ArrayRef,
            Arc::new(http),
        ],
        None,
    ))
}

fn logs(ids: &[i64], services: &[&str], codes: &[i64]) -> RecordBatch {
    let attrs = attributes(services, codes);
    RecordBatch::try_new(
        schema(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("attributes", attrs.data_type().clone(), true),
        ]),
        vec![Arc::new(Int64Array::from(ids.to_vec())), attrs],
    )
    .expect("batch")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bracket_paths_read_dynamic_values_and_promotion_unions_old_and_new() {
    let node = standalone(GrpcOptions::default()).await;
    let mut client = common::client(node.addr).await;
    ingest(
        &mut client,
        "otel_logs",
        true,
        vec![logs(
            &[1, 2, 3],
            &["auth-svc", "web", "auth-svc"],
            &[503, 200, 404],
        )],
    )
    .await
    .expect("ingest");

    let hits = query(
        &mut client,
        "SELECT id FROM otel_logs WHERE attributes['service.name'] = 'auth-svc' AND attributes['http']['status_code'] >= 500",
    )
    .await
    .expect("bracket query");
    assert_eq!(ids_of(&hits), vec![1]);
    let text = query_text(
        &mut client,
        "SELECT id, dynamic_to_json(attributes['http']) AS http FROM otel_logs WHERE id = 2",
    )
    .await;
    assert!(text.contains(r#"{"status_code":200}"#), "{text}");

    // Promote the path; new rows fill the typed column from it, old rows answer from dynamic.
    client
        .execute_update(
            "ALTER TABLE otel_logs ADD COLUMN service string GENERATED ALWAYS AS (attributes['service.name'])".into(),
            None,
        )
        .await
        .expect("promote");
    ingest(
        &mut client,
        "otel_logs",
        false,
        vec![logs(&[4], &["billing"], &[500])],
    )
    .await
    .expect("append after promotion");
    let text = query_text(&mut client, "SELECT id, service FROM otel_logs ORDER BY id").await;
    assert_eq!(
        text,
        "+----+----------+\n| id | service  |\n+----+----------+\n| 1  | auth-svc |\n| 2  | web      |\n| 3  | auth-svc |\n| 4  | billing  |\n+----+----------+"
    );
    let filtered = query(
        &mut client,
        "SELECT id FROM otel_logs WHERE service = 'auth-svc' ORDER BY id",
    )
    .await
    .expect("filter on promoted column");
    assert_eq!(ids_of(&filtered), vec![1, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extents_outside_a_filter_are_skipped_from_manifest_statistics() {
    let node = standalone(GrpcOptions::default()).await;
    let mut client = common::client(node.addr).await;
    ingest(
        &mut client,
        "ranges",
        true,
        vec![people(&[1, 2, 3], &["a", "b", "c"])],
    )
    .await
    .expect("ingest 1");
    ingest(
        &mut client,
        "ranges",
        false,
        vec![people(&[101, 102], &["d", "e"])],
    )
    .await
    .expect("ingest 2");
    ingest(
        &mut client,
        "ranges",
        false,
        vec![people(&[201, 202], &["f", "g"])],
    )
    .await
    .expect("ingest 3");

    let plan = query_text(
        &mut client,
        "EXPLAIN SELECT name FROM ranges WHERE id >= 150",
    )
    .await;
    assert_eq!(
        plan.matches(".parquet").count(),
        1,
        "only the third extent is opened:\n{plan}"
    );
    let all = query_text(&mut client, "EXPLAIN SELECT name FROM ranges").await;
    assert_eq!(all.matches(".parquet").count(), 3, "{all}");
    assert_eq!(
        ids_of(
            &query(
                &mut client,
                "SELECT id FROM ranges WHERE id >= 150 ORDER BY id"
            )
            .await
            .expect("query")
        ),
        vec![201, 202]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_read_whole_or_filtered_twice_are_read_from_their_decoded_columns() {
    let node = standalone(GrpcOptions::default()).await;
    let mut client = common::client(node.addr).await;
    for table in ["whole", "filtered"] {
        for (create, batch) in [
            (true, people(&[1, 2, 3], &["a", "b", "c"])),
            (false, people(&[4, 5], &["d", "e"])),
        ] {
            ingest(&mut client, table, create, vec![batch])
                .await
                .expect("ingest");
        }
    }
    let ids = |batches: Result<Vec<RecordBatch>, _>| ids_of(&batches.expect("query"));
    let decoded =
        |plan: &str| plan.contains("DecodedExtentsExec") && !plan.contains("DataSourceExec");

    // A read of every row decodes the columns, from the first read on.
    let whole = "SELECT id, name FROM whole ORDER BY id";
    let plan = query_text(&mut client, &format!("EXPLAIN {whole}")).await;
    assert!(decoded(&plan), "{plan}");
    assert_eq!(ids(query(&mut client, whole).await), vec![1, 2, 3, 4, 5]);

    // A filtered read prunes the Parquet the first time, and decodes from the second on.
    // `nullif` makes the filter NULL for `b`: a NULL drops the row like false.
    let filtered = "SELECT id FROM filtered WHERE nullif(name, 'b') <> 'd' ORDER BY id";
    let first = query_text(&mut client, &format!("EXPLAIN {filtered}")).await;
    assert!(
        first.contains("DataSourceExec") && !first.contains("DecodedExtentsExec"),
        "{first}"
    );
    let second = query_text(&mut client, &format!("EXPLAIN {filtered}")).await;
    assert!(
        decoded(&second) && second.contains("predicate="),
        "{second}"
    );
    for _ in 0..2 {
        // Decoded, then read from the held columns.
        assert_eq!(ids(query(&mut client, filtered).await), vec![1, 3, 5]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_commands_list_catalogs_schemas_and_tables_with_schemas() {
    let node = standalone(GrpcOptions::default()).await;
    let mut client = common::client(node.addr).await;
    ingest(&mut client, "people", true, vec![people(&[1], &["a"])])
        .await
        .expect("ingest");

    let info = client.get_catalogs().await.expect("catalogs");
    let batches = common::fetch(&mut client, info).await.expect("rows");
    let catalogs: Vec<&str> = batches
        .iter()
        .flat_map(|b| b.column(0).as_string::<i32>().iter().flatten())
        .collect();
    assert_eq!(catalogs, vec!["kyma"]);

    let info = client
        .get_tables(CommandGetTables {
            catalog: Some("kyma".into()),
            db_schema_filter_pattern: Some("default".into()),
            table_name_filter_pattern: Some("peo%".into()),
            table_types: vec!["TABLE".into()],
            include_schema: true,
        })
        .await
        .expect("tables");
    let batches = common::fetch(&mut client, info).await.expect("rows");
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    let batch = &batches[0];
    assert_eq!(
        batch
            .column_by_name("table_name")
            .expect("table_name")
            .as_string::<i32>()
            .value(0),
        "people"
    );
    let ipc = batch
        .column_by_name("table_schema")
        .expect("table_schema")
        .as_binary::<i32>()
        .value(0);
    let schema = arrow::ipc::convert::try_schema_from_ipc_buffer(ipc).expect("schema IPC");
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, vec!["id", "name"]);
    assert!(!batch.column(0).is_null(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_required_when_configured_and_basic_handshake_obtains_it() {
    let node = standalone(GrpcOptions {
        auth_token: Some("s3cret-token".into()),
        ..GrpcOptions::default()
    })
    .await;
    let mut anonymous = common::client(node.addr).await;
    let err = query(&mut anonymous, "SELECT 1")
        .await
        .expect_err("no token");
    assert_eq!(code_of(&err), Some(tonic::Code::Unauthenticated), "{err}");

    let mut wrong = common::client(node.addr).await;
    let err = wrong
        .handshake("user", "guess")
        .await
        .expect_err("wrong password");
    assert!(err.to_string().contains("requires authentication"), "{err}");

    let mut client = common::client(node.addr).await;
    client
        .handshake("user", "s3cret-token")
        .await
        .expect("handshake");
    let batches = query(&mut client, "SELECT 1 AS one")
        .await
        .expect("query with bearer token");
    assert_eq!(batches[0].num_rows(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_clients_that_trust_the_certificate_and_refuses_plaintext() {
    let dir = tempfile::tempdir().expect("dir");
    let path = |name: &str| dir.path().join(name);
    // A test CA, and a server certificate for `localhost` signed by it.
    for extra in [
        vec![
            "-subj",
            "/CN=kyma-test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
        vec![
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
        ],
    ] {
        let made = std::process::Command::new("openssl")
            .current_dir(dir.path())
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args(["-nodes", "-days", "1"])
            .args(extra)
            .output()
            .expect("run openssl");
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
    }
    let (cert, key) = (path("cert.pem"), path("key.pem"));
    let node = standalone(GrpcOptions {
        tls: Some((cert, key)),
        ..GrpcOptions::default()
    })
    .await;

    let ca = tonic::transport::Certificate::from_pem(std::fs::read(path("ca.pem")).expect("CA"));
    let endpoint =
        tonic::transport::Channel::from_shared(format!("https://127.0.0.1:{}", node.addr.port()))
            .expect("endpoint")
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(ca)
                    .domain_name("localhost"),
            )
            .expect("tls config");
    let mut client =
        arrow_flight::sql::client::FlightSqlServiceClient::new(common::connect(endpoint).await);
    let batches = query(&mut client, "SELECT 1 AS one")
        .await
        .expect("query over TLS");
    assert_eq!(batches[0].num_rows(), 1);

    let mut plaintext = common::client(node.addr).await;
    query(&mut plaintext, "SELECT 1")
        .await
        .expect_err("plaintext on a TLS port");
}

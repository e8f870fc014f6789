//! Postgres federation against a real PostgreSQL: a corpus of queries, each answered by kyma
//! exactly as Postgres answers the same query, and each with its `pushdown_summary` checked
//! (what must run at the source does, what must not does not, with the reason).

mod common;

use std::sync::Arc;

use arrow::array::{Int32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field};
use arrow_flight::sql::client::FlightSqlServiceClient;
use common::corpus::Expect::{NotPushed, Pushed, Scans, SqlHas, SqlLacks};
use common::corpus::{
    Cell, Expect, cell, check_summary, compare_answers, eventually, kyma_rows, run_kyma, strings,
};
use common::{
    admin_client, client, fetch, ingest, query, schema, standalone, standalone_with_pushdown,
};
use kyma_query_node::GrpcOptions;
use kyma_query_node::admin_grpc::proto::{DeleteConnectorRequest, GetConnectorRequest};
use kyma_test_harness::{Postgres, unique_name};
use serde_json::Value;
use tonic::transport::Channel;

/// The source database: users, orders, a table with a hostile name, and a mirror of the
/// native `otel_logs` so Postgres can answer the cross-source queries itself.
fn source_database(pg: &Postgres) -> String {
    let db = unique_name("fed");
    pg.psql(
        "postgres",
        &format!(
            "CREATE DATABASE \"{db}\" TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'"
        ),
    )
    .expect("database");
    pg.psql(
        &db,
        r#"
        CREATE TABLE users (
            id int PRIMARY KEY, name text NOT NULL, email text, age int, score float8,
            balance numeric(10,2), active bool NOT NULL, created_at timestamptz,
            note text COLLATE "und-x-icu", profile jsonb);
        INSERT INTO users
        SELECT i,
               (ARRAY['alice','bob','carol','dave','erin','frank','grace','heidi'])[1 + i % 8]
                 || CASE WHEN i % 17 = 0 THEN '%' WHEN i % 19 = 0 THEN '_x' WHEN i % 23 = 0 THEN '\' ELSE '' END
                 || i,
               CASE WHEN i % 5 = 0 THEN NULL ELSE 'u' || i || '@example.com' END,
               CASE WHEN i % 11 = 0 THEN NULL ELSE 18 + (i * 7) % 60 END,
               CASE WHEN i % 13 = 0 THEN NULL ELSE (i * 37 % 1000) / 10.0 END,
               (i * 131 % 100000) / 100.0,
               i % 3 <> 0,
               timestamptz '2024-01-01 00:00:00+00' + (i * 7 || ' hours')::interval,
               (ARRAY['apple','Banana','cherry','date','Elder'])[1 + i % 5],
               jsonb_build_object('plan', (ARRAY['free','pro'])[1 + i % 2], 'seats', i % 4)
          FROM generate_series(1, 300) i;
        CREATE TABLE orders (id int PRIMARY KEY, user_id int, amount float8, status text, placed_at timestamp);
        INSERT INTO orders
        SELECT i, 1 + (i * 13) % 320, (i * 53 % 5000) / 10.0,
               (ARRAY['new','paid','shipped','void'])[1 + i % 4],
               timestamp '2024-02-01' + (i || ' hours')::interval
          FROM generate_series(1, 900) i;
        CREATE TABLE y (keep int);
        INSERT INTO y VALUES (1);
        CREATE TABLE "x""; DROP TABLE y; --" ("a""b" text, "select" int);
        INSERT INTO "x""; DROP TABLE y; --" VALUES ('it''s', 1), ('fine', 2);
        CREATE TABLE otel_logs (user_id int, severity text, service text);
        INSERT INTO otel_logs
        SELECT 1 + (i * 7) % 310, (ARRAY['INFO','WARN','ERROR'])[1 + i % 3], 'svc-' || (i % 4)
          FROM generate_series(1, 600) i;
        "#,
    )
    .expect("source tables");
    db
}

/// The native table: the same rows as the source's `otel_logs` mirror.
fn otel_logs() -> RecordBatch {
    let ids: Vec<i32> = (1..=600).map(|i| 1 + (i * 7) % 310).collect();
    let severity: Vec<&str> = (1..=600)
        .map(|i| ["INFO", "WARN", "ERROR"][(i % 3) as usize])
        .collect();
    let service: Vec<String> = (1..=600).map(|i| format!("svc-{}", i % 4)).collect();
    RecordBatch::try_new(
        schema(vec![
            Field::new("user_id", DataType::Int32, true),
            Field::new("severity", DataType::Utf8, true),
            Field::new("service", DataType::Utf8, true),
        ]),
        vec![
            Arc::new(Int32Array::from(ids)),
            Arc::new(StringArray::from(severity)),
            Arc::new(StringArray::from(service)),
        ],
    )
    .expect("batch")
}

async fn register(node: &common::ServedNode, name: &str, url: String) {
    common::corpus::register(node, common::pg_connector(name, url, "disable")).await;
}

/// One corpus query: kyma's SQL, Postgres' SQL when it must differ in names only, whether
/// the row order is part of the answer, and the summary's expectations.
struct Case {
    kyma: &'static str,
    postgres: Option<&'static str>,
    ordered: bool,
    expect: &'static [Expect],
}

const fn case(kyma: &'static str, ordered: bool, expect: &'static [Expect]) -> Case {
    Case {
        kyma,
        postgres: None,
        ordered,
        expect,
    }
}

const fn case_pg(
    kyma: &'static str,
    postgres: &'static str,
    ordered: bool,
    expect: &'static [Expect],
) -> Case {
    Case {
        kyma,
        postgres: Some(postgres),
        ordered,
        expect,
    }
}

const CORPUS: &[Case] = &[
    // Filters of every pushed kind.
    case(
        "SELECT id, name FROM pg.public.users WHERE age = 30",
        false,
        &[
            Pushed("filter", "age = 30"),
            Pushed("projection", "name"),
            Scans(1),
        ],
    ),
    case(
        "SELECT id FROM pg.public.users WHERE age <> 30",
        false,
        &[Pushed("filter", "age != 30")],
    ),
    case(
        "SELECT id FROM pg.public.users WHERE age < 25",
        false,
        &[Pushed("filter", "age < 25")],
    ),
    case(
        "SELECT id FROM pg.public.users WHERE age <= 25",
        false,
        &[Pushed("filter", "age <= 25")],
    ),
    case(
        "SELECT id, score FROM pg.public.users WHERE score > 50.5",
        false,
        &[Pushed("filter", "score > 50.5")],
    ),
    case(
        "SELECT id FROM pg.public.users WHERE score >= 50.5",
        false,
        &[Pushed("filter", "score >= 50.5")],
    ),
    case(
        "SELECT id FROM pg.public.users WHERE age IN (20, 30, 40)",
        false,
        &[Pushed("filter", "age = 20 OR")],
    ),
    case(
        "SELECT id FROM pg.public.users WHERE age IN (20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31)",
        false,
        &[Pushed("filter", "IN 20, 21")],
    ),
    case(
        "SELECT id FROM pg.public.users WHERE age NOT IN (20, 30)",
        false,
        &[Pushed("filter", "age != 20")],
    ),
    case(
        "SELECT id FROM pg.public.users WHERE email IS NULL",
        false,
        &[Pushed("filter", "email IS NULL")],
    ),
    case(
        "SELECT id FROM pg.public.users WHERE email IS NOT NULL AND age > 40",
        false,
        &[
            Pushed("filter", "email IS NOT NULL"),
            Pushed("filter", "age > 40"),
        ],
    ),
    case(
        "SELECT id, name FROM pg.public.users WHERE name LIKE 'a%'",
        false,
        &[Pushed("filter", "LIKE")],
    ),
    case(
        "SELECT id, name FROM pg.public.users WHERE name LIKE '%\\%%'",
        false,
        &[Pushed("filter", "LIKE")],
    ),
    case(
        "SELECT id, name FROM pg.public.users WHERE name LIKE '%!_x%' ESCAPE '!'",
        false,
        &[Pushed("filter", "LIKE"), SqlHas("ESCAPE")],
    ),
    case(
        "SELECT id, name FROM pg.public.users WHERE name LIKE '%\\\\%'",
        false,
        &[Pushed("filter", "LIKE")],
    ),
    case(
        "SELECT id FROM pg.public.users WHERE name NOT LIKE 'b%'",
        false,
        &[Pushed("filter", "NOT LIKE")],
    ),
    case(
        "SELECT id FROM pg.public.users WHERE (age > 50 OR active) AND NOT (name = 'bob9')",
        false,
        &[Pushed("filter", "OR"), SqlLacks("lower")],
    ),
    case(
        "SELECT id FROM pg.public.users WHERE active = true",
        false,
        &[Pushed("filter", "active")],
    ),
    case(
        "SELECT id FROM pg.public.users WHERE created_at >= '2024-03-01T00:00:00Z'",
        false,
        &[Pushed("filter", "created_at")],
    ),
    case(
        "SELECT id FROM pg.public.users WHERE age BETWEEN 20 AND 30",
        false,
        &[Pushed("filter", "age")],
    ),
    case(
        "SELECT id, balance FROM pg.public.users WHERE balance > 500",
        false,
        &[Pushed("filter", "balance > 500")],
    ),
    case(
        "SELECT id FROM pg.public.users WHERE coalesce(email, 'none') = 'none'",
        false,
        &[Pushed("filter", "CASE WHEN"), SqlHas("CASE WHEN")],
    ),
    case(
        "SELECT id FROM pg.public.users WHERE note = 'apple'",
        false,
        &[Pushed("filter", "note = ")],
    ),
    // Each aggregate, GROUP BY, HAVING.
    case(
        "SELECT count(*) FROM pg.public.users",
        false,
        &[Pushed("aggregate", "count"), SqlHas("count(")],
    ),
    case(
        "SELECT count(email) FROM pg.public.users",
        false,
        &[Pushed("aggregate", "count")],
    ),
    case(
        "SELECT sum(age), avg(score) FROM pg.public.users",
        false,
        &[Pushed("aggregate", "sum"), Pushed("aggregate", "avg")],
    ),
    case(
        "SELECT min(age), max(score), min(name) FROM pg.public.users",
        false,
        &[Pushed("aggregate", "min"), Pushed("aggregate", "max")],
    ),
    case(
        "SELECT count(DISTINCT age) FROM pg.public.users",
        false,
        &[Pushed("aggregate", ""), Scans(1)],
    ),
    case(
        "SELECT active, count(*), avg(age) FROM pg.public.users GROUP BY active",
        false,
        &[Pushed("aggregate", "GROUP BY"), SqlHas("GROUP BY")],
    ),
    case(
        "SELECT age, count(*) FROM pg.public.users WHERE age > 30 GROUP BY age HAVING count(*) > 4",
        false,
        &[
            Pushed("aggregate", "GROUP BY"),
            Pushed("filter", "age > 30"),
        ],
    ),
    case(
        "SELECT date_trunc('month', created_at) AS m, count(*) FROM pg.public.users GROUP BY 1",
        false,
        &[Pushed("aggregate", "date_trunc"), SqlHas("date_trunc")],
    ),
    case(
        "SELECT email, count(*) FROM pg.public.users GROUP BY email ORDER BY email NULLS FIRST LIMIT 3",
        true,
        &[
            Pushed("aggregate", "GROUP BY"),
            Pushed("order", "email"),
            Pushed("limit", "3"),
        ],
    ),
    // ORDER BY and LIMIT.
    case(
        "SELECT id, age FROM pg.public.users ORDER BY age DESC NULLS LAST, id LIMIT 10",
        true,
        &[
            Pushed("order", "age DESC"),
            Pushed("limit", "10"),
            SqlHas("LIMIT 10"),
        ],
    ),
    case(
        "SELECT id FROM pg.public.users ORDER BY id LIMIT 5 OFFSET 10",
        true,
        &[Pushed("order", "id"), SqlHas("OFFSET")],
    ),
    case(
        "SELECT id, name FROM pg.public.users ORDER BY name, id LIMIT 7",
        true,
        &[Pushed("order", "name"), Pushed("limit", "7")],
    ),
    // kyma compares text in byte order; `note` sorts by ICU at the source, so Postgres
    // answers kyma's question only with COLLATE "C" — and kyma does not push it.
    case_pg(
        "SELECT id, note FROM pg.public.users ORDER BY note, id LIMIT 5",
        "SELECT id, note FROM users ORDER BY note COLLATE \"C\", id LIMIT 5",
        true,
        &[NotPushed("order", "collation"), SqlLacks("ORDER BY")],
    ),
    case_pg(
        "SELECT id FROM pg.public.users WHERE note > 'cherry'",
        "SELECT id FROM users WHERE note COLLATE \"C\" > 'cherry'",
        false,
        &[NotPushed("filter", "collation"), SqlLacks("WHERE")],
    ),
    // Joins of one source, in one statement.
    case(
        "SELECT u.name, o.amount FROM pg.public.users u JOIN pg.public.orders o ON u.id = o.user_id WHERE o.amount > 400",
        false,
        &[Pushed("join", "Inner"), SqlHas("JOIN"), Scans(1)],
    ),
    case(
        "SELECT u.id, count(o.id) FROM pg.public.users u LEFT JOIN pg.public.orders o ON u.id = o.user_id GROUP BY u.id",
        false,
        &[
            Pushed("join", "Left"),
            Pushed("aggregate", "count"),
            Scans(1),
        ],
    ),
    case(
        "SELECT o.status, sum(o.amount) FROM pg.public.orders o JOIN pg.public.users u ON u.id = o.user_id WHERE u.active GROUP BY o.status ORDER BY o.status",
        true,
        &[Pushed("join", ""), Pushed("aggregate", "sum"), Scans(1)],
    ),
    case(
        "SELECT a.id, b.id FROM pg.public.users a JOIN pg.public.users b ON a.age = b.age AND a.id < b.id WHERE a.age = 30",
        false,
        &[Pushed("join", ""), Scans(1)],
    ),
    // Cross-source joins with the native table: each side at home.
    case_pg(
        "SELECT l.service, u.name FROM kyma.default.otel_logs l JOIN pg.public.users u ON l.user_id = u.id WHERE u.age > 30",
        "SELECT l.service, u.name FROM otel_logs l JOIN users u ON l.user_id = u.id WHERE u.age > 30",
        false,
        &[
            NotPushed("join", "not at this source"),
            Pushed("filter", "age > 30"),
            Scans(1),
        ],
    ),
    case_pg(
        "SELECT u.name, count(*) AS errors FROM kyma.default.otel_logs l JOIN pg.public.users u ON l.user_id = u.id \
         WHERE l.severity = 'ERROR' AND u.active GROUP BY u.name ORDER BY errors DESC, u.name LIMIT 5",
        "SELECT u.name, count(*) AS errors FROM otel_logs l JOIN users u ON l.user_id = u.id \
         WHERE l.severity = 'ERROR' AND u.active GROUP BY u.name ORDER BY errors DESC, u.name LIMIT 5",
        true,
        &[
            NotPushed("join", "not at this source"),
            Pushed("filter", "active"),
            SqlLacks("otel_logs"),
        ],
    ),
    // Functions that must not be pushed.
    case(
        "SELECT id FROM pg.public.users WHERE lower(name) = 'alice8'",
        false,
        &[NotPushed("filter", "lower"), SqlLacks("lower")],
    ),
    case(
        "SELECT id FROM pg.public.users WHERE upper(name) LIKE 'A%'",
        false,
        &[NotPushed("filter", "upper")],
    ),
    case(
        "SELECT id FROM pg.public.users WHERE name ILIKE 'A%'",
        false,
        &[NotPushed("filter", "ILIKE"), SqlLacks("ILIKE")],
    ),
    case(
        "SELECT id FROM pg.public.users WHERE age + 1 > 30",
        false,
        &[NotPushed("filter", "operator"), SqlLacks("WHERE")],
    ),
    case(
        "SELECT id, character_length(name) FROM pg.public.users WHERE age > 60",
        false,
        &[
            NotPushed("projection", "character_length"),
            Pushed("filter", "age > 60"),
        ],
    ),
    case(
        "SELECT id FROM pg.public.users WHERE character_length(name) > 6 AND age < 30",
        false,
        &[
            NotPushed("filter", "character_length"),
            Pushed("filter", "age < 30"),
        ],
    ),
    case_pg(
        "SELECT id FROM pg.public.users WHERE profile['plan'] = 'pro' AND age < 40",
        "SELECT id FROM users WHERE profile->>'plan' = 'pro' AND age < 40",
        false,
        &[
            NotPushed("filter", "kyma function"),
            Pushed("filter", "age < 40"),
        ],
    ),
    // NULL semantics.
    case(
        "SELECT count(*) FROM pg.public.users WHERE email = NULL",
        false,
        &[Scans(0)],
    ),
    case(
        "SELECT id, coalesce(age, -1) FROM pg.public.users WHERE age IS NULL OR age < 20",
        false,
        &[
            Pushed("projection", "coalesce"),
            SqlHas("CASE WHEN"),
            Pushed("filter", "IS NULL"),
        ],
    ),
    // Hostile identifiers are names, nothing more.
    case_pg(
        r#"SELECT "a""b", "select" FROM pg.public."x""; DROP TABLE y; --" WHERE "a""b" = 'it''s'"#,
        r#"SELECT "a""b", "select" FROM "x""; DROP TABLE y; --" WHERE "a""b" = 'it''s'"#,
        false,
        &[Pushed("filter", "it's"), Scans(1)],
    ),
];

/// Postgres' own answer to `sql` on `db` (in a UTC session).
fn postgres_rows(pg: &Postgres, db: &str, sql: &str) -> Vec<Vec<Cell>> {
    pg.rows(db, sql)
        .unwrap_or_else(|e| panic!("Postgres refused {sql}: {e}"))
        .iter()
        .map(|row| row.iter().map(|c| cell(c.as_deref())).collect())
        .collect()
}

/// Runs `case` on kyma and on Postgres (database `db`); records every difference in the
/// answers and every unmet expectation of the summary in `failures`.
async fn check_case(
    flight: &mut FlightSqlServiceClient<Channel>,
    pg: &Postgres,
    db: &str,
    case: &Case,
    failures: &mut Vec<String>,
) {
    let (batches, summary) = match run_kyma(flight, case.kyma).await {
        Ok(answer) => answer,
        Err(e) => {
            failures.push(e);
            return;
        }
    };
    let expected = postgres_rows(pg, db, case.postgres.unwrap_or(&strip_catalogs(case.kyma)));
    compare_answers(
        case.kyma,
        "Postgres",
        (kyma_rows(&batches), expected),
        case.ordered,
        &summary,
        failures,
    );
    check_summary(case.kyma, &summary, case.expect, failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_matches_postgres_with_the_promised_pushdown() {
    let pg = Postgres::shared();
    let db = source_database(pg);
    let node = standalone(GrpcOptions::default()).await;
    register(&node, "pg", pg.url(&db)).await;
    let mut flight = client(node.addr).await;
    ingest(&mut flight, "otel_logs", true, vec![otel_logs()])
        .await
        .expect("native otel_logs");
    assert!(
        CORPUS.len() >= 40,
        "the corpus has {} queries",
        CORPUS.len()
    );
    let mut failures = Vec::new();
    for case in CORPUS {
        check_case(&mut flight, pg, &db, case, &mut failures).await;
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n\n{}",
        failures.len(),
        CORPUS.len(),
        failures.join("\n\n")
    );

    let kept = postgres_rows(pg, &db, "SELECT keep FROM y");
    assert_eq!(kept.len(), 1, "the hostile table name dropped nothing");
}

/// `pg.public.users` → `users`: Postgres runs the same text without kyma's catalog prefix.
fn strip_catalogs(sql: &str) -> String {
    sql.replace("pg.public.", "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connectors_come_and_go_without_restart_and_every_query_is_logged() {
    let pg = Postgres::shared();
    let db = pg.create_database("live").expect("database");
    pg.psql(&db, "CREATE TABLE t1 (id int, price money); INSERT INTO t1 SELECT i, i FROM generate_series(1, 50) i;")
        .expect("t1");
    let node = standalone(GrpcOptions::default()).await;
    register(&node, "live", pg.url(&db)).await;
    let mut admin = admin_client(&node).await;
    let status = admin
        .get_connector(GetConnectorRequest {
            name: "live".into(),
        })
        .await
        .expect("get")
        .into_inner();
    let warnings = status.status_json;
    assert!(
        warnings.contains("public.t1") && warnings.contains("money"),
        "an unmapped type is a warning in the status: {warnings}"
    );

    let mut flight = client(node.addr).await;
    let rows = query(
        &mut flight,
        "SELECT count(*) FROM live.public.t1 WHERE id > 10",
    )
    .await
    .expect("federated count");
    assert_eq!(strings(&rows, 0), ["40"]);

    // Sequential queries reuse one pooled connection: a fully read result stream hands it
    // back.
    let backends = || {
        postgres_rows(
            pg,
            &db,
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'kyma-federation' \
               AND datname = current_database()",
        )
    };
    let first = backends();
    assert_eq!(first.len(), 1, "one pooled connection after one query");
    for _ in 0..3 {
        query(&mut flight, "SELECT id FROM live.public.t1 WHERE id < 3")
            .await
            .expect("federated query");
    }
    assert_eq!(backends(), first, "the same connection served every query");

    // A table created at the source after registration answers at once.
    pg.psql(
        &db,
        "CREATE TABLE t2 (k text); INSERT INTO t2 VALUES ('late');",
    )
    .expect("t2");
    let rows = query(&mut flight, "SELECT k FROM live.public.t2")
        .await
        .expect("a new source table without restart");
    assert_eq!(strings(&rows, 0), ["late"]);

    // EXPLAIN shows the source query and the summary.
    let explain = query(
        &mut flight,
        "EXPLAIN SELECT id FROM live.public.t1 WHERE id > 10 LIMIT 3",
    )
    .await
    .expect("explain");
    let kinds = strings(&explain, 0);
    let plans = strings(&explain, 1);
    let summary_row = kinds
        .iter()
        .position(|k| k == "pushdown_summary")
        .expect("a pushdown_summary row");
    assert!(
        plans[summary_row].contains("\"part\": \"filter\""),
        "{}",
        plans[summary_row]
    );
    assert!(
        plans.iter().any(|p| p.contains("FederatedScan")),
        "{plans:?}"
    );

    // The query log has the statement under the id the FlightInfo announced.
    let info = flight
        .execute("SELECT id FROM live.public.t1 WHERE id <= 5".into(), None)
        .await
        .expect("info");
    let announced: Value = serde_json::from_slice(&info.app_metadata).expect("app_metadata");
    let query_id = announced["query_id"].as_str().expect("query_id").to_owned();
    assert_eq!(
        fetch(&mut flight, info)
            .await
            .expect("rows")
            .iter()
            .map(|b| b.num_rows())
            .sum::<usize>(),
        5
    );
    let logged = query(
        &mut flight,
        &format!("SELECT rows, source_bytes, pushdown_summary, error FROM kyma.system.queries WHERE query_id = '{query_id}'"),
    )
    .await
    .expect("system.queries");
    assert_eq!(strings(&logged, 0), ["5"]);
    let bytes: u64 = strings(&logged, 1)[0].parse().expect("bytes");
    assert!(bytes > 0, "bytes from the source are counted");
    assert!(
        strings(&logged, 2)[0].contains("\"source\":\"live\""),
        "{:?}",
        strings(&logged, 2)
    );
    assert_eq!(strings(&logged, 3), [""], "no error");

    // Deleted: the catalog disappears from every node's view.
    admin
        .delete_connector(DeleteConnectorRequest {
            name: "live".into(),
        })
        .await
        .expect("delete");
    eventually("the deleted connector's catalog going away", async || {
        query(&mut flight, "SELECT count(*) FROM live.public.t1")
            .await
            .is_err()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_pushdown_off_every_scan_reads_whole_rows_and_says_so() {
    let pg = Postgres::shared();
    let db = pg.create_database("nopush").expect("database");
    pg.psql(&db, "CREATE TABLE t (id int, v text); INSERT INTO t SELECT i, 'v' || i FROM generate_series(1, 100) i;")
        .expect("t");
    let node = standalone_with_pushdown(GrpcOptions::default(), false).await;
    register(&node, "raw", pg.url(&db)).await;
    let mut flight = client(node.addr).await;
    let (batches, summary) = run_kyma(
        &mut flight,
        "SELECT id FROM raw.public.t WHERE id > 90 ORDER BY id LIMIT 3",
    )
    .await
    .expect("query");
    assert_eq!(strings(&batches, 0), ["91", "92", "93"]);
    let mut failures = Vec::new();
    check_summary(
        "pushdown off",
        &summary,
        &[
            NotPushed("projection", "pushdown is off"),
            SqlLacks("WHERE"),
            SqlLacks("LIMIT"),
            Scans(1),
        ],
        &mut failures,
    );
    assert!(failures.is_empty(), "{failures:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_source_is_unavailable_naming_the_connector_and_recovers() {
    // A server of its own: this test stops it.
    let pg = Postgres::start().expect("a private PostgreSQL");
    let db = pg.create_database("down").expect("database");
    pg.psql(
        &db,
        "CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2);",
    )
    .expect("t");
    let node = standalone(GrpcOptions::default()).await;
    register(&node, "flaky", pg.url(&db)).await;
    let mut flight = client(node.addr).await;
    let sql = "SELECT count(*) FROM flaky.public.t";
    assert_eq!(
        strings(&query(&mut flight, sql).await.expect("up"), 0),
        ["2"]
    );

    pg.process().stop().expect("stop PostgreSQL");
    let error = query(&mut flight, sql)
        .await
        .expect_err("the source is down");
    assert_eq!(
        common::code_of(&error),
        Some(tonic::Code::Unavailable),
        "{error}"
    );
    let message = error.to_string();
    assert!(
        message.contains("connector `flaky`") && message.contains("connection"),
        "the error names the connector and what failed: {message}"
    );

    pg.process().start_again().expect("start PostgreSQL");
    pg.wait_ready().expect("PostgreSQL ready");
    // Broken pooled connections are dropped, new ones made.
    assert_eq!(
        strings(&query(&mut flight, sql).await.expect("up again"), 0),
        ["2"]
    );
}

/// The join of `sales.public.users` and `orders` of another connector, as Postgres runs it in
/// one database.
const JOIN_ACROSS_CONNECTORS: &str =
    "SELECT u.name, o.amount FROM users u JOIN orders o ON u.id = o.user_id WHERE o.amount > 400";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_across_connectors_is_pushed_when_they_share_a_database_and_not_otherwise() {
    let pg = Postgres::shared();
    let db = source_database(pg);
    let copy = unique_name("fed_copy");
    pg.psql(
        "postgres",
        &format!("CREATE DATABASE \"{copy}\" TEMPLATE \"{db}\""),
    )
    .expect("a copy of the source database");
    let node = standalone(GrpcOptions::default()).await;
    register(&node, "sales", pg.url(&db)).await;
    register(&node, "sales_again", pg.url(&db)).await;
    register(&node, "archive", pg.url(&copy)).await;
    let mut flight = client(node.addr).await;

    let same_database = case_pg(
        "SELECT u.name, o.amount FROM sales.public.users u JOIN sales_again.public.orders o \
         ON u.id = o.user_id WHERE o.amount > 400",
        JOIN_ACROSS_CONNECTORS,
        false,
        &[
            Pushed("join", "Inner"),
            Pushed("scan", "sales_again.public.orders"),
            SqlHas("JOIN"),
            Scans(1),
        ],
    );
    let other_database = case_pg(
        "SELECT u.name, o.amount FROM sales.public.users u JOIN archive.public.orders o \
         ON u.id = o.user_id WHERE o.amount > 400",
        JOIN_ACROSS_CONNECTORS,
        false,
        &[
            NotPushed("join", "cross-source join of `sales` and `archive`"),
            Pushed("filter", "amount > 400"),
            SqlLacks("JOIN"),
            Scans(2),
        ],
    );
    let mut failures = Vec::new();
    for case in [&same_database, &other_database] {
        check_case(&mut flight, pg, &db, case, &mut failures).await;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));

    // EXPLAIN shows the one source query of the pushed join.
    let explain = query(&mut flight, &format!("EXPLAIN {}", same_database.kyma))
        .await
        .expect("explain");
    let scans: usize = strings(&explain, 1)
        .iter()
        .map(|plan| plan.matches("FederatedScan: source=sales sql=").count())
        .sum();
    assert_eq!(scans, 1, "{:?}", strings(&explain, 1));
}

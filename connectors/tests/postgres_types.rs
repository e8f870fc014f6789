//! The Postgres type mapping against a real server's catalog: every row of the seed's table
//! that a stock PostgreSQL 15 can create, domains unwrapped, unknown types warned about.

use kyma_catalog::{ConnectionSpec, KymaType, ScopeSpec, TlsMode};
use kyma_connectors::SecretResolver;
use kyma_connectors::postgres::{connect, types};
use kyma_test_harness::Postgres;

#[tokio::test]
async fn source_columns_map_per_the_seed_table() {
    let pg = Postgres::shared();
    let db = pg.create_database("types").expect("database");
    pg.psql(
        &db,
        "CREATE TYPE mood AS ENUM ('ok', 'sad');
         CREATE DOMAIN account_id AS bigint;
         CREATE SCHEMA billing;
         CREATE TABLE billing.everything (
           a smallint, b int, c bigint, d oid, e real, f double precision,
           g numeric(10,2), h numeric(20,2), i numeric, j boolean,
           k text, l varchar(8), m char(3), n name, o uuid, p bytea,
           q timestamp, r timestamptz, s date, t time,
           u json, v jsonb, w int[], x text[], y int4range, z tstzrange,
           aa mood, bb inet, cc cidr, dd macaddr, ee account_id NOT NULL, ff money);
         CREATE TABLE public.other (id int);",
    )
    .expect("schema");
    let spec = ConnectionSpec {
        url: pg.url(&db),
        secret_ref: None,
        tls: TlsMode::Disable,
        pool_size: 1,
        tls_ca_ref: None,
    };
    let client = connect(&spec, &SecretResolver::new("/nonexistent"))
        .await
        .expect("connect");
    let columns = types::source_columns(&client, &["billing".to_owned()])
        .await
        .expect("columns");
    assert!(
        columns
            .iter()
            .all(|c| c.schema == "billing" && c.table == "everything")
    );
    let scope = ScopeSpec::default();
    let mapped: Vec<(String, KymaType)> = columns
        .iter()
        .map(|c| {
            (
                c.name.clone(),
                types::kyma_type(&c.name, &c.pg_type, &scope).ty,
            )
        })
        .collect();
    use KymaType::{Bool, Dynamic, Int, Long, Real, String as Str, Timestamp};
    let expected = [
        ("a", Int),
        ("b", Int),
        ("c", Long),
        ("d", Long),
        ("e", Real),
        ("f", Real),
        ("g", Real),
        ("h", Str),
        ("i", Str),
        ("j", Bool),
        ("k", Str),
        ("l", Str),
        ("m", Str),
        ("n", Str),
        ("o", Str),
        ("p", Str),
        ("q", Timestamp),
        ("r", Timestamp),
        ("s", Timestamp),
        ("t", Timestamp),
        ("u", Dynamic),
        ("v", Dynamic),
        ("w", Dynamic),
        ("x", Dynamic),
        ("y", Dynamic),
        ("z", Dynamic),
        ("aa", Str),
        ("bb", Str),
        ("cc", Str),
        ("dd", Str),
        ("ee", Long),
        ("ff", Dynamic),
    ];
    let expected: Vec<(String, KymaType)> = expected
        .iter()
        .map(|(n, t)| ((*n).to_owned(), *t))
        .collect();
    assert_eq!(mapped, expected);
    let ee = columns.iter().find(|c| c.name == "ee").expect("ee");
    assert!(ee.not_null, "NOT NULL is read");
    let money = columns.iter().find(|c| c.name == "ff").expect("ff");
    assert!(
        types::kyma_type("ff", &money.pg_type, &scope)
            .warning
            .is_some()
    );

    let all = types::source_columns(&client, &[])
        .await
        .expect("all schemas");
    assert!(
        all.iter()
            .any(|c| c.schema == "public" && c.table == "other")
    );
}

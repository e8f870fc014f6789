//! The source objects and settings behind Postgres sync: preflight, the tables in scope,
//! the publication, the replication slot, the replication connection string.

use std::collections::BTreeSet;

use kyma_catalog::{ConnectionSpec, ScopeSpec, TlsMode};

use crate::error::ConnectorError;
use crate::postgres::quote_ident;
use crate::postgres::types::{Mapped, SourceColumn, kyma_type, source_columns};
use crate::secrets::SecretResolver;
use crate::source_ca::SourceCa;
use crate::sync::{Fence, SourcePosition, SourceTable, TableId};

/// The source objects a connector owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncNames {
    /// The logical replication slot.
    pub slot: String,
    /// The publication.
    pub publication: String,
}

impl SyncNames {
    /// The names for connector `connector`: `kyma_` + its name reduced to `[a-z0-9_]` + a
    /// hash of the full name (so two names reducing alike still differ), at most 63 bytes.
    pub fn of(connector: &str) -> Self {
        let mut reduced: String = connector
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        reduced.truncate(40);
        // FNV-1a: stable across builds and platforms.
        let hash = connector.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        let name = format!("kyma_{reduced}_{:08x}", hash & 0xffff_ffff);
        Self {
            slot: name.clone(),
            publication: name,
        }
    }
}

/// A source table in scope, as sync sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncTable {
    /// Its schema.
    pub schema: String,
    /// Its name.
    pub name: String,
    /// Its columns with their kyma mapping, in column order.
    pub columns: Vec<(SourceColumn, Mapped)>,
    /// Its primary key columns in key order (empty: no primary key).
    pub key: Vec<String>,
    /// The planner's row estimate (`pg_class.reltuples`), for progress.
    pub estimated_rows: u64,
}

impl SyncTable {
    /// Which table it is.
    pub fn id(&self) -> TableId {
        TableId::new(&self.schema, &self.name)
    }

    /// The table as the sync pipeline sees it: kyma types only.
    pub fn to_source(&self) -> SourceTable {
        SourceTable {
            id: self.id(),
            columns: self
                .columns
                .iter()
                .map(|(c, m)| crate::sync::SourceColumn {
                    name: c.name.clone(),
                    ty: m.ty,
                    warning: m.warning.clone(),
                })
                .collect(),
            key: self.key.clone(),
            estimated_rows: self.estimated_rows,
        }
    }

    /// `schema.table`, as the connector status names it.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// The table as quoted SQL.
    pub fn sql_name(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

/// Every ordinary table in `scope`, with columns, primary key and row estimate, sorted by
/// name.
pub async fn discover_tables(
    client: &tokio_postgres::Client,
    scope: &ScopeSpec,
) -> Result<Vec<SyncTable>, ConnectorError> {
    const TABLES: &str = "
        SELECT n.nspname, c.relname, GREATEST(c.reltuples, 0)::int8,
               COALESCE((SELECT array_agg(a.attname::text ORDER BY k.ord)
                           FROM pg_catalog.pg_index i
                           CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
                           JOIN pg_catalog.pg_attribute a
                             ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                          WHERE i.indrelid = c.oid AND i.indisprimary), '{}')
          FROM pg_catalog.pg_class c
          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind = 'r'
           AND n.nspname NOT IN ('pg_catalog', 'information_schema')
           AND n.nspname NOT LIKE 'pg_toast%'
           AND (cardinality($1::text[]) = 0 OR n.nspname = ANY($1::text[]))
         ORDER BY n.nspname, c.relname";
    let rows = client
        .query(TABLES, &[&scope.include_schemas])
        .await
        .map_err(|e| classify("listing the source's tables", &e))?;
    let columns = source_columns(client, &scope.include_schemas).await?;
    let mut tables = Vec::new();
    for row in rows {
        let read = |e: tokio_postgres::Error| classify("reading the source's tables", &e);
        let schema: String = row.try_get(0).map_err(read)?;
        let name: String = row.try_get(1).map_err(read)?;
        if !scope.covers(&schema, &name) {
            continue;
        }
        let estimated: i64 = row.try_get(2).map_err(read)?;
        let table_columns = columns
            .iter()
            .filter(|c| c.schema == schema && c.table == name)
            .map(|c| (c.clone(), kyma_type(&c.name, &c.pg_type, scope)))
            .collect();
        tables.push(SyncTable {
            schema,
            name,
            columns: table_columns,
            key: row.try_get(3).map_err(read)?,
            estimated_rows: u64::try_from(estimated).unwrap_or(0),
        });
    }
    Ok(tables)
}

/// Checks that the source can be synced at all, naming the setting to fix when it cannot:
/// `wal_level = logical`, a role with `REPLICATION` (or superuser), and a free replication
/// slot unless the connector's exists already.
pub async fn preflight(
    client: &tokio_postgres::Client,
    names: &SyncNames,
) -> Result<(), ConnectorError> {
    const CHECK: &str = "
        SELECT current_setting('wal_level'),
               current_user::text,
               (SELECT rolreplication OR rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user),
               current_setting('max_replication_slots')::int,
               (SELECT count(*)::int FROM pg_catalog.pg_replication_slots),
               EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = $1)";
    let row = client
        .query_one(CHECK, &[&names.slot])
        .await
        .map_err(|e| classify("checking the source's replication settings", &e))?;
    let read = |e: tokio_postgres::Error| classify("reading the source's replication settings", &e);
    let wal_level: String = row.try_get(0).map_err(read)?;
    if wal_level != "logical" {
        return Err(ConnectorError::invalid(
            "wal_level",
            format!(
                "the source runs with wal_level = {wal_level}; sync needs wal_level = logical (set it in postgresql.conf and restart the server)"
            ),
        ));
    }
    let user: String = row.try_get(1).map_err(read)?;
    if !row
        .try_get::<_, Option<bool>>(2)
        .map_err(read)?
        .unwrap_or(false)
    {
        return Err(ConnectorError::invalid(
            "connection.url",
            format!(
                "role `{user}` cannot replicate; grant it with ALTER ROLE {} REPLICATION",
                quote_ident(&user)
            ),
        ));
    }
    let max: i32 = row.try_get(3).map_err(read)?;
    let used: i32 = row.try_get(4).map_err(read)?;
    let ours: bool = row.try_get(5).map_err(read)?;
    // The connector's own slot, plus a temporary one while it copies a table added later.
    let needed = if ours { 1 } else { 2 };
    if used + needed > max {
        return Err(ConnectorError::invalid(
            "max_replication_slots",
            format!(
                "{used} of the source's {max} replication slots are in use and sync needs {needed} more (its slot, and a temporary one while it copies a table); raise max_replication_slots or drop an unused slot"
            ),
        ));
    }
    Ok(())
}

/// The tables the connector's publication lists now (`None`: it does not exist).
async fn published_tables(
    client: &tokio_postgres::Client,
    names: &SyncNames,
) -> Result<Option<BTreeSet<(String, String)>>, ConnectorError> {
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1",
            &[&names.publication],
        )
        .await
        .map_err(|e| classify("reading the source's publications", &e))?
        .is_some();
    if !exists {
        return Ok(None);
    }
    let rows = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_catalog.pg_publication_tables WHERE pubname = $1",
            &[&names.publication],
        )
        .await
        .map_err(|e| classify("reading the publication's tables", &e))?;
    let read = |e: tokio_postgres::Error| classify("reading the publication's tables", &e);
    rows.iter()
        .map(|row| Ok((row.try_get(0).map_err(read)?, row.try_get(1).map_err(read)?)))
        .collect::<Result<_, ConnectorError>>()
        .map(Some)
}

/// Creates or updates the connector's publication so that it lists exactly `tables`; checks
/// `fence` first when that changes anything.
pub async fn ensure_publication(
    client: &tokio_postgres::Client,
    names: &SyncNames,
    tables: &[&SyncTable],
    fence: &dyn Fence,
) -> Result<(), ConnectorError> {
    let wanted: BTreeSet<(String, String)> = tables
        .iter()
        .map(|t| (t.schema.clone(), t.name.clone()))
        .collect();
    let current = published_tables(client, names).await?;
    if current.as_ref() == Some(&wanted) {
        return Ok(());
    }
    fence
        .check(&format!("changing publication {}", names.publication))
        .await?;
    let list: Vec<String> = tables.iter().map(|t| t.sql_name()).collect();
    let publication = quote_ident(&names.publication);
    let sql = match (current.is_some(), list.is_empty()) {
        (false, true) => format!("CREATE PUBLICATION {publication}"),
        (false, false) => format!(
            "CREATE PUBLICATION {publication} FOR TABLE {}",
            list.join(", ")
        ),
        (true, true) => {
            // An empty publication: drop every table from it.
            format!("DROP PUBLICATION {publication}; CREATE PUBLICATION {publication}")
        }
        (true, false) => format!(
            "ALTER PUBLICATION {publication} SET TABLE {}",
            list.join(", ")
        ),
    };
    client.batch_execute(&sql).await.map_err(|e| {
        if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
            let said = e.as_db_error().map_or_else(|| e.to_string(), |db| db.message().to_owned());
            ConnectorError::invalid(
                "connection.url",
                format!(
                    "the role cannot create publication {}: it needs CREATE on the database and must own the synced tables (or be superuser); the server said: {said}",
                    names.publication
                ),
            )
        } else {
            classify("creating the publication", &e)
        }
    })
}

/// A replication slot as the source reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotState {
    /// `confirmed_flush_lsn`.
    pub confirmed_flush: Option<u64>,
    /// The backend streaming from it now, if any.
    pub active_pid: Option<i32>,
}

/// Slot `slot`, if it exists.
pub async fn slot_state(
    client: &tokio_postgres::Client,
    slot: &str,
) -> Result<Option<SlotState>, ConnectorError> {
    let row = client
        .query_opt(
            "SELECT confirmed_flush_lsn::text, active_pid FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| classify("reading the replication slot", &e))?;
    let Some(row) = row else {
        return Ok(None);
    };
    let read = |e: tokio_postgres::Error| classify("reading the replication slot", &e);
    let confirmed: Option<String> = row.try_get(0).map_err(read)?;
    Ok(Some(SlotState {
        confirmed_flush: confirmed.map(|l| parse_lsn(&l)).transpose()?,
        active_pid: row.try_get(1).map_err(read)?,
    }))
}

/// Ends the backend streaming from the connector's slot (a fenced worker's walsender, which
/// would keep the slot busy) and drops the slot when `drop` is set.
pub async fn release_slot(
    client: &tokio_postgres::Client,
    names: &SyncNames,
    drop: bool,
) -> Result<(), ConnectorError> {
    for _ in 0..50 {
        let Some(state) = slot_state(client, &names.slot).await? else {
            return Ok(());
        };
        match state.active_pid {
            Some(_) => {
                // The pid is read and signalled in one statement: a pid read earlier may
                // belong to another backend by now (pids wrap around quickly on busy hosts).
                client
                    .execute(
                        "SELECT pg_terminate_backend(active_pid) FROM pg_catalog.pg_replication_slots \
                          WHERE slot_name = $1 AND active_pid IS NOT NULL",
                        &[&names.slot],
                    )
                    .await
                    .map_err(|e| classify("ending the slot's previous reader", &e))?;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            None if drop => {
                client
                    .execute("SELECT pg_drop_replication_slot($1)", &[&names.slot])
                    .await
                    .map_err(|e| classify("dropping the old replication slot", &e))?;
                return Ok(());
            }
            None => return Ok(()),
        }
    }
    Err(ConnectorError::Unreachable {
        field: "connection.url".into(),
        reason: format!(
            "replication slot {} stays in use by another reader",
            names.slot
        ),
    })
}

/// Drops the connector's slot (ending its reader first) and publication.
pub async fn drop_source_objects(
    client: &tokio_postgres::Client,
    names: &SyncNames,
) -> Result<(), ConnectorError> {
    release_slot(client, names, true).await?;
    client
        .batch_execute(&format!(
            "DROP PUBLICATION IF EXISTS {}",
            quote_ident(&names.publication)
        ))
        .await
        .map_err(|e| classify("dropping the publication", &e))
}

/// The session settings of every replication connection: the walsender writes each value in
/// its type's text output under these, and the text decoder ([`super::text`]) reads exactly
/// this form — whatever the server's, the database's or the role's defaults are. They travel
/// in the startup packet (libpq's `options`), where they take precedence over every default.
/// (pg_walstream is built on libpq for this: its own wire client drops `options`.)
const REPLICATION_SESSION: &str =
    "-c TimeZone=UTC -c DateStyle=ISO,YMD -c IntervalStyle=postgres -c extra_float_digits=3";

/// The CA bundle `verify-full` replication connections check the server against (libpq has no
/// notion of the system's roots before version 16).
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A keyword/value connection string for a replication connection to the source of `spec`
/// (pg_walstream's format). Holds the password: never log it.
pub fn replication_conninfo(
    spec: &ConnectionSpec,
    secrets: &SecretResolver,
) -> Result<String, ConnectorError> {
    let config: tokio_postgres::Config = spec.url.parse().map_err(|e| {
        ConnectorError::invalid(
            "connection.url",
            format!("not a Postgres URL (postgres://USER@HOST:PORT/DB): {e}"),
        )
    })?;
    let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    let host = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .next()
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres");
    let dbname = config.get_dbname().unwrap_or(user);
    let sslmode = match spec.tls {
        TlsMode::Disable => "disable",
        TlsMode::Prefer => "prefer",
        TlsMode::Required => "require",
        TlsMode::VerifyFull => "verify-full",
    };
    let mut info = format!(
        "host={} port={port} user={} dbname={} replication=database sslmode={sslmode} application_name=kyma-sync connect_timeout=10 options={}",
        quote(&host),
        quote(user),
        quote(dbname),
        quote(REPLICATION_SESSION)
    );
    if spec.tls == TlsMode::VerifyFull {
        let roots = match SourceCa::of(spec, secrets)? {
            Some(ca) => ca.file()?.display().to_string(),
            None => SYSTEM_ROOTS.to_owned(),
        };
        info.push_str(&format!(" sslrootcert={}", quote(&roots)));
    }
    if let Some(name) = &spec.secret_ref {
        info.push_str(&format!(
            " password={}",
            quote(secrets.resolve(name)?.expose())
        ));
    }
    Ok(info)
}

/// Classifies a source error: a lost connection, a server shutting down or restarting, or
/// one that cannot accept connections yet is transient; anything else is definite.
pub fn classify(what: &str, e: &tokio_postgres::Error) -> ConnectorError {
    let transient = e.is_closed()
        || e.code().is_none()
        || e.code().is_some_and(|c| {
            let code = c.code();
            code.starts_with("08") || code.starts_with("57P") || code == "53300"
        });
    if transient {
        ConnectorError::Unreachable {
            field: "connection.url".into(),
            reason: format!("{what}: {e}"),
        }
    } else {
        ConnectorError::Source(format!("{what}: {e}"))
    }
}

/// Formats an LSN as Postgres does (`16/B374D848`).
pub fn format_lsn(lsn: u64) -> String {
    pg_walstream::format_lsn(lsn)
}

/// Parses an LSN (`16/B374D848`).
pub fn parse_lsn(text: &str) -> Result<u64, ConnectorError> {
    pg_walstream::parse_lsn(text)
        .map_err(|e| ConnectorError::Source(format!("`{text}` is not an LSN: {e}")))
}

/// Read-your-writes: whether a cursor at `cursor` (a commit's end or an idle server
/// position) holds every transaction committed at or before `wanted`, the LSN an
/// application reads with `pg_current_wal_lsn()` after its commit.
pub fn reached(cursor: &SourcePosition, wanted: &str) -> Result<bool, ConnectorError> {
    let wanted = parse_lsn(wanted.trim()).map_err(|_| {
        ConnectorError::invalid(
            "position",
            format!(
                "`{wanted}` is not a Postgres LSN: pass what `SELECT pg_current_wal_lsn()` returns after your commit, e.g. `0/16B3748`"
            ),
        )
    })?;
    Ok(!cursor.0.is_empty() && parse_lsn(&cursor.0)? >= wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reaches_every_lsn_up_to_its_own() {
        let cursor = SourcePosition("16/B374D848".into());
        assert!(reached(&cursor, "16/B374D848").expect("an LSN"));
        assert!(reached(&cursor, " 0/16B3748 ").expect("an LSN"));
        assert!(!reached(&cursor, "16/B374D849").expect("an LSN"));
        assert!(!reached(&SourcePosition(String::new()), "0/1").expect("an LSN"));
        assert!(
            reached(&SourcePosition(String::new()), "0-1-42").is_err(),
            "the notation is checked first"
        );
        let error = reached(&cursor, "0-1-42")
            .expect_err("not an LSN")
            .to_string();
        assert!(error.contains("pg_current_wal_lsn()"), "{error}");
    }

    #[test]
    fn the_replication_session_pins_the_settings_the_decoder_reads() {
        let spec = ConnectionSpec {
            url: "postgres://app@db.example:5433/shop".into(),
            secret_ref: None,
            tls: TlsMode::VerifyFull,
            pool_size: 1,
            tls_ca_ref: None,
        };
        let info =
            replication_conninfo(&spec, &SecretResolver::new("/nonexistent")).expect("conninfo");
        assert!(
            info.contains(&format!("options='{REPLICATION_SESSION}'")),
            "{info}"
        );
        assert!(REPLICATION_SESSION.contains("TimeZone=UTC"));
        assert!(REPLICATION_SESSION.contains("DateStyle=ISO"));
        assert!(
            info.contains("host='db.example' port=5433 user='app' dbname='shop'"),
            "{info}"
        );
        assert!(
            info.contains("sslmode=verify-full") && info.contains("sslrootcert="),
            "{info}"
        );
    }

    #[test]
    fn sync_names_are_valid_slot_names_and_differ_for_names_that_reduce_alike() {
        let a = SyncNames::of("PG-Prod");
        let b = SyncNames::of("pg_prod");
        assert_ne!(a.slot, b.slot);
        for names in [&a, &b, &SyncNames::of(&"x".repeat(300))] {
            assert!(names.slot.len() <= 63, "{names:?}");
            assert!(
                names
                    .slot
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_'),
                "{names:?}"
            );
        }
    }
}

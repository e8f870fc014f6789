//! What sync needs from the server, checked before anything else (preflight), and who the
//! server is.
//!
//! Preflight refuses, naming the setting or privilege to fix:
//!
//! - the binary log off (`log_bin`), `binlog_format` other than ROW, `binlog_row_image`
//!   other than FULL (minimal images would leave kyma without the values an update did not
//!   touch), MySQL's `binlog_row_value_options=PARTIAL_JSON`;
//! - MariaDB: compressed binlog events (`log_bin_compress`: kyma cannot read them) and
//!   `gtid_strict_mode` off (positions are compared per GTID domain, which needs sequence
//!   numbers that only grow); `COMPRESSED` columns in scope (the binlog writes them in a form
//!   no client decodes);
//! - a user without `REPLICATION SLAVE` (reading the binlog).
//!
//! Stock MySQL has no lock-free snapshot position (see [`super::snapshot`]); sync of MySQL
//! proper is refused, by name, until that path can be tested. MariaDB is the flavor synced.

use kyma_catalog::ScopeSpec;
use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use super::super::refused;
use crate::error::ConnectorError;

/// Which server family a connection reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// MariaDB (GTID positions `domain-server-sequence`).
    MariaDb,
    /// MySQL (UUID GTID sets).
    Mysql,
}

/// The server's family, from `VERSION()`.
pub async fn flavor(conn: &mut Conn) -> Result<Flavor, ConnectorError> {
    let version: Option<String> = conn
        .query_first("SELECT VERSION()")
        .await
        .map_err(refused)?;
    Ok(if version.is_some_and(|v| v.contains("MariaDB")) {
        Flavor::MariaDb
    } else {
        Flavor::Mysql
    })
}

/// The identity of what positions are positions in: the server's id (a cursor is refused
/// on another server, whose GTID history is not the one it counts in).
pub async fn source_id(conn: &mut Conn) -> Result<String, ConnectorError> {
    let id: Option<u64> = conn
        .query_first("SELECT @@server_id")
        .await
        .map_err(refused)?;
    Ok(format!("mariadb server_id={}", id.unwrap_or(0)))
}

/// The server id kyma's binlog reader registers with for connector `name`: stable per
/// connector, in the upper half of the id space (where servers' own ids rarely are), so that
/// two connectors never share one and a second reader of the same connector replaces the
/// first at the server.
pub fn reader_server_id(name: &str) -> u32 {
    // FNV-1a: stable across builds and platforms.
    let hash = name.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    0x8000_0000 | (hash & 0x7fff_ffff)
}

/// Checks the server settings and privileges sync needs (see the module doc).
pub async fn preflight(conn: &mut Conn, scope: &ScopeSpec) -> Result<(), ConnectorError> {
    if flavor(conn).await? == Flavor::Mysql {
        return Err(ConnectorError::invalid(
            "mode",
            "sync from MySQL (not MariaDB) is not available in this kyma: its snapshot position needs a table lock path that has not been verified; use mode federation",
        ));
    }
    let settings: Option<(String, String, String, String, String)> = conn
        .query_first(
            "SELECT CAST(@@log_bin AS CHAR), @@binlog_format, @@binlog_row_image, \
             CAST(@@log_bin_compress AS CHAR), CAST(@@gtid_strict_mode AS CHAR)",
        )
        .await
        .map_err(refused)?;
    let Some((log_bin, format, image, compress, strict)) = settings else {
        return Err(ConnectorError::Source(
            "the server did not report its settings".into(),
        ));
    };
    require(
        on(&log_bin),
        "log_bin",
        "the binary log is off; start the server with log_bin",
    )?;
    require(
        format.eq_ignore_ascii_case("ROW"),
        "binlog_format",
        &format!("is {format}; set binlog_format=ROW"),
    )?;
    require(
        image.eq_ignore_ascii_case("FULL"),
        "binlog_row_image",
        &format!("is {image}; set binlog_row_image=FULL"),
    )?;
    require(
        !on(&compress),
        "log_bin_compress",
        "binlog events are compressed, which kyma cannot read; set log_bin_compress=OFF",
    )?;
    require(
        on(&strict),
        "gtid_strict_mode",
        "is OFF; set gtid_strict_mode=ON so that GTID positions can be compared",
    )?;
    require_replication_privilege(conn).await?;
    refuse_compressed_columns(conn, scope).await
}

fn on(value: &str) -> bool {
    matches!(value.to_ascii_uppercase().as_str(), "1" | "ON")
}

fn require(ok: bool, setting: &str, reason: &str) -> Result<(), ConnectorError> {
    if ok {
        Ok(())
    } else {
        Err(ConnectorError::invalid(
            format!("source setting {setting}"),
            reason.to_owned(),
        ))
    }
}

/// `REPLICATION SLAVE`, granted globally to the connecting user.
async fn require_replication_privilege(conn: &mut Conn) -> Result<(), ConnectorError> {
    let privileges: Vec<String> = conn
        .query(
            "SELECT PRIVILEGE_TYPE FROM information_schema.USER_PRIVILEGES \
             WHERE GRANTEE = CONCAT('''', SUBSTRING_INDEX(CURRENT_USER(), '@', 1), '''@''', \
             SUBSTRING_INDEX(CURRENT_USER(), '@', -1), '''')",
        )
        .await
        .map_err(refused)?;
    if privileges
        .iter()
        .any(|p| p.eq_ignore_ascii_case("REPLICATION SLAVE"))
    {
        return Ok(());
    }
    let user: Option<String> = conn
        .query_first("SELECT CURRENT_USER()")
        .await
        .map_err(refused)?;
    Err(ConnectorError::invalid(
        "source privilege REPLICATION SLAVE",
        format!(
            "user {} may not read the binary log; GRANT REPLICATION SLAVE ON *.* TO it",
            user.unwrap_or_default()
        ),
    ))
}

/// MariaDB `COMPRESSED` columns in `scope`.
async fn refuse_compressed_columns(
    conn: &mut Conn,
    scope: &ScopeSpec,
) -> Result<(), ConnectorError> {
    let columns: Vec<(String, String, String)> = conn
        .query(
            "SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME FROM information_schema.COLUMNS \
             WHERE LOWER(COLUMN_TYPE) LIKE '%compressed%'",
        )
        .await
        .map_err(refused)?;
    let in_scope: Vec<String> = columns
        .into_iter()
        .filter(|(schema, table, _)| scope.covers(schema, table))
        .map(|(schema, table, column)| format!("{schema}.{table}.{column}"))
        .collect();
    require(
        in_scope.is_empty(),
        "COMPRESSED columns",
        &format!(
            "{} are COMPRESSED, which the binlog writes in a form kyma cannot read; ALTER them without COMPRESSED or leave their tables out of the scope",
            in_scope.join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_ids_are_stable_distinct_and_in_the_upper_half() {
        let a = reader_server_id("shop");
        assert_eq!(a, reader_server_id("shop"));
        assert_ne!(a, reader_server_id("shop2"));
        assert!(a >= 0x8000_0000);
    }
}

//! Where a catalog lives, as given on the command line.

use std::path::PathBuf;

use crate::error::CatalogError;

/// A catalog location: `etcd://HOST:PORT[,HOST:PORT…]/PREFIX`, or an embedded store's file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogLocation {
    /// An etcd cluster; every key under `prefix`.
    Etcd {
        /// `http://host:port` for each member.
        endpoints: Vec<String>,
        /// Key prefix, starting with `/`.
        prefix: String,
    },
    /// The embedded single-process store.
    Embedded {
        /// The database file.
        path: PathBuf,
    },
}

impl CatalogLocation {
    /// Parses `etcd://h1:2379,h2:2379/prefix` or `embedded:///path/to/catalog.redb`. The error
    /// names `field` (the flag the value came from) and what to write instead.
    pub fn parse(field: &str, value: &str) -> Result<Self, CatalogError> {
        let invalid = |reason: String| CatalogError::invalid(field, reason);
        if let Some(path) = value.strip_prefix("embedded://") {
            if path.is_empty() {
                return Err(invalid(
                    "embedded:// needs a file path, e.g. embedded:///var/lib/kyma/catalog.redb"
                        .into(),
                ));
            }
            return Ok(CatalogLocation::Embedded {
                path: PathBuf::from(path),
            });
        }
        let Some(rest) = value.strip_prefix("etcd://") else {
            return Err(invalid(format!(
                "`{value}` is not a catalog location: use etcd://HOST:PORT[,HOST:PORT]/PREFIX"
            )));
        };
        let (hosts, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_end_matches('/');
        if prefix.is_empty() {
            return Err(invalid(format!(
                "`{value}` has no key prefix: add one, e.g. etcd://{hosts}/kyma"
            )));
        }
        let mut endpoints = Vec::new();
        for host in hosts.split(',') {
            let (name, port) = host.rsplit_once(':').ok_or_else(|| {
                invalid(format!(
                    "etcd endpoint `{host}` needs a port, e.g. {host}:2379"
                ))
            })?;
            if name.is_empty() || port.parse::<u16>().is_err() {
                return Err(invalid(format!("etcd endpoint `{host}` is not HOST:PORT")));
            }
            endpoints.push(format!("http://{host}"));
        }
        Ok(CatalogLocation::Etcd {
            endpoints,
            prefix: format!("/{prefix}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_several_etcd_endpoints_and_a_prefix() {
        let parsed =
            CatalogLocation::parse("--catalog", "etcd://a:2379,b:2380/kyma/prod/").expect("valid");
        assert_eq!(
            parsed,
            CatalogLocation::Etcd {
                endpoints: vec!["http://a:2379".into(), "http://b:2380".into()],
                prefix: "/kyma/prod".into()
            }
        );
    }

    #[test]
    fn refusals_name_the_flag_and_the_fix() {
        for (bad, hint) in [
            ("postgres://x", "etcd://HOST:PORT"),
            ("etcd://a:2379", "no key prefix"),
            ("etcd://a/kyma", "needs a port"),
            ("etcd://a:notaport/kyma", "not HOST:PORT"),
        ] {
            let message = CatalogLocation::parse("--catalog", bad)
                .expect_err(bad)
                .to_string();
            assert!(
                message.contains("--catalog") && message.contains(hint),
                "{bad}: {message}"
            );
        }
    }
}

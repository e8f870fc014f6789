//! The query node: stateless, N replicas behind a load balancer (SPEC §2).
//!
//! Today it holds the catalog connection and answers readiness; Flight SQL, the admin service
//! and federation arrive with the issues that build them.

use std::time::Duration;

use kyma_catalog::{Catalog, CatalogError};

/// How long a readiness probe waits for the catalog.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A running query node.
#[derive(Debug, Clone)]
pub struct QueryNode {
    catalog: Catalog,
}

impl QueryNode {
    /// A query node on `catalog`.
    pub fn new(catalog: Catalog) -> Self {
        Self { catalog }
    }

    /// The catalog it serves.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Ready when the catalog answers.
    pub async fn ready(&self) -> Result<(), CatalogError> {
        match tokio::time::timeout(PROBE_TIMEOUT, self.catalog.ping()).await {
            Ok(result) => result.map(|_| ()),
            Err(_) => Err(CatalogError::Unavailable(
                "the catalog did not answer within 2s".into(),
            )),
        }
    }
}

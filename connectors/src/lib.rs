//! kyma's connectors (SPEC §4): registration and validation, secrets resolved at connect time,
//! the registry of source kinds ([`registry`]), the seam between a source's change log and
//! the sync pipeline ([`sync`]), and one module per source.

pub mod admin;
mod error;
pub mod mongodb;
pub mod mysql;
pub mod pool;
pub mod postgres;
pub mod registry;
pub mod secrets;
pub mod source_ca;
pub mod sync;

pub use admin::{ConnectorAdmin, ConnectorView};
pub use error::ConnectorError;
pub use secrets::{Secret, SecretResolver};

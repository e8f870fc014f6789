//! kyma's connectors (SPEC §4): registration and validation, secrets resolved at connect time,
//! and one module per source. Postgres comes first; its federation and sync build on
//! [`postgres::connect`].

pub mod admin;
mod error;
pub mod pool;
pub mod postgres;
pub mod secrets;

pub use admin::{ConnectorAdmin, ConnectorView};
pub use error::ConnectorError;
pub use secrets::{Secret, SecretResolver};

//! kyma's catalog: the single source of truth that links query nodes and CDC workers.
//!
//! It holds tables (with widen-only versioned schemas and snapshot pointers to manifests in
//! object storage), connectors (spec without secrets, desired state, status), each connector's
//! committed source cursor and fencing epoch, and worker leases. The key layout is documented
//! in [`keys`]; the exactly-once commit in [`catalog`]; the storage contract in [`kv`].
//!
//! Two backends implement [`kv::KvBackend`]: etcd for production, and an embedded redb file for
//! `kyma standalone`. One conformance suite runs against both.

pub mod catalog;
pub mod error;
pub mod keys;
pub mod kv;
pub mod location;
pub mod model;
mod shards;
mod tables;

pub use catalog::{
    Catalog, CatalogChange, CatalogCommit, CatalogEvent, ClaimFence, CommitConflict, CommitOutcome,
    ConnectorClaim, CursorAdvance, TableCommit, WorkerSession, WriteRegistration,
};
pub use error::CatalogError;
pub use kv::{LeaseId, Revision};
pub use location::CatalogLocation;
pub use model::*;

//! Durable [`dps_core::Store`] backends, and the embedded hub's durable
//! [`dps_hub::store::HubStore`].
//!
//! [`SqliteStore`] is the embedded default: one file, no server, durable commits, and enough
//! throughput for the register hot path through group commit (many concurrent registrations
//! share one transaction and one fsync). [`PostgresStore`] keeps the same documents in
//! PostgreSQL, for several stateless nodes on one database, with the same group commit; both
//! implement the store once (module `documents`) and pass the same conformance suite
//! (`dps_core::store::conformance`).
//!
//! [`HubDatabase`] keeps the registries of a server's embedded hubs in one file (`hub.db`, rows
//! keyed by hub), with the same writer, group commit, read pool and migration mechanism as
//! [`SqliteStore`]; each hub's [`SqliteHubStore`] passes the hub store conformance suite
//! (`dps_hub::store::conformance`).
//!
//! SQL stays inside this crate: the engine sees only the `Store` trait, the hub only `HubStore`.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod blobs;
mod documents;
mod hub_documents;
pub mod postgres;
pub mod sqlite;
mod stats;

pub use blobs::{BlobError, BlobProperties, BlobStore, BlobWrite};
pub use postgres::{PgOpenError, PostgresHubDatabase, PostgresHubStore, PostgresStore};
pub use sqlite::{HubDatabase, HubSlot, OpenError, SqliteHubStore, SqliteStore, StoreStats};

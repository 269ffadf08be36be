//! Durable [`dps_core::Store`] backends.
//!
//! [`SqliteStore`] is the embedded default: one file, no server, durable commits, and enough
//! throughput for the register hot path through group commit (many concurrent registrations
//! share one transaction and one fsync). A PostgreSQL backend for scale-out will live beside it
//! and pass the same conformance suite (`dps_core::store::conformance`).
//!
//! SQL stays inside this crate: the engine sees only the `Store` trait.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod sqlite;

pub use sqlite::{OpenError, SqliteStore, StoreStats};

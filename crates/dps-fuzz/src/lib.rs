//! The bodies of dps's fuzz targets, one `pub fn <target>(data: &[u8])` per parser of untrusted
//! bytes, listed in [`TARGETS`].
//!
//! They live in an ordinary crate of the main workspace, with no libfuzzer dependency, so that:
//! - `fuzz/` (a cargo-fuzz workspace, nightly) holds only three-line `fuzz_target!` wrappers;
//! - `tests/replay.rs` runs every committed corpus and regression input through the same bodies
//!   on stable, in CI, so no target can rot (docs/decisions/0010-fuzzing.md).
//!
//! A body panics exactly when it found a bug: a parser panicked, or an invariant that must hold
//! for every input failed (a round trip changed a value, a client's bad input produced a server
//! error or left something half-written). Everything runs in memory: no socket, no file, no
//! system clock (the engine and the hub are given a fixed time).

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod amqp;
mod amqp_frames;
mod bodies;
mod json;
mod mqtt;
mod pki;
mod portal;
mod query;
mod support;
mod text;

pub use amqp::amqp_connection;
pub use amqp_frames::amqp_frames;
pub use bodies::{hub_body, registration_body, service_body, telemetry_batch};
pub use mqtt::{mqtt_packet, mqtt_topic, mqtt_username, websocket_frames};
pub use pki::{certificate_request, revocation_list, tpm_public, x509_certificate};
pub use portal::portal_request;
pub use query::query;
pub use text::{blob_request, connection_string, event_selector, registration_id, rest_path, sas_token};

/// A fuzz target body.
pub type Target = fn(&[u8]);

/// Every target: its name (the `fuzz/fuzz_targets/<name>.rs` binary and the
/// `fuzz/corpus/<name>/` directory) and its body.
pub const TARGETS: &[(&str, Target)] = &[
    ("mqtt_packet", mqtt_packet),
    ("websocket_frames", websocket_frames),
    ("mqtt_username", mqtt_username),
    ("mqtt_topic", mqtt_topic),
    ("sas_token", sas_token),
    ("connection_string", connection_string),
    ("registration_id", registration_id),
    ("rest_path", rest_path),
    ("registration_body", registration_body),
    ("service_body", service_body),
    ("hub_body", hub_body),
    ("x509_certificate", x509_certificate),
    ("certificate_request", certificate_request),
    ("revocation_list", revocation_list),
    ("tpm_public", tpm_public),
    ("amqp_connection", amqp_connection),
    ("amqp_frames", amqp_frames),
    ("event_selector", event_selector),
    ("telemetry_batch", telemetry_batch),
    ("blob_request", blob_request),
    ("query", query),
    ("portal_request", portal_request),
];

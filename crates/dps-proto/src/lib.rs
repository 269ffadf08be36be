//! Wire formats shared by every `dps` component.
//!
//! This crate is deliberately free of I/O, runtimes and clocks: the server, the device client and the
//! CLI all speak the same bytes, so the formats live here once, with unit tests against the vectors in
//! the reference docs. Time is always passed in by the caller.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod amqp_conn;
pub mod amqp_encoding;
pub mod amqp_message;
pub mod api_version;
pub mod blob_storage;
pub mod connection_string;
pub mod dps_amqp;
pub mod dps_mqtt;
pub mod error;
pub mod event_hubs;
pub mod hub_amqp;
pub mod hub_http;
pub mod hub_mqtt;
pub mod keys;
pub mod model;
pub mod mqtt_header;
pub mod query;
pub mod registration_id;
pub mod rest;
pub mod sas;
pub mod timefmt;
pub mod twin_limits;

pub use error::{codes, ErrorDetails};

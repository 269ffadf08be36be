//! dps-server's integration tests: servers on loopback addresses driven by real clients
//! (MQTT, HTTPS, AMQP, WebSockets) and the HTTPS router driven without sockets. One test
//! executable holds them all, one module per surface: each executable links the whole server,
//! so thirty of them cost thirty links and gigabytes of disk for the same code.

mod common;

mod amqp;
mod amqp_dps;
mod bad_input_auth;
mod bad_input_http;
mod bad_input_mqtt;
mod bad_input_twin;
mod c2d;
mod credential_renewal;
mod embedded_hubs;
mod http_credential_policies;
mod http_cross_api;
mod http_csr;
mod http_device;
mod http_events;
mod http_file_upload;
mod http_hub;
mod http_hub_device;
mod http_portal;
mod http_revocations;
mod http_service;
mod hub_limits;
mod linked_hubs;
mod mqtt;
mod operations;
mod postgres_store;
mod registry_client;
mod revocation;
mod throttling;
mod tls;
mod tpm;
mod websocket;

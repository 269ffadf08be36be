//! The Rust device SDK for dps (and Azure IoT Hub DPS): provision a device, then talk to the IoT
//! hub it was assigned to.
//!
//! - [`ProvisioningClient`] registers over MQTT (8883), HTTPS (443) or AMQP (5671) with the DPS
//!   device protocol and polls until the registration completes, returning a [`RegistrationResult`].
//! - [`HubClient`] connects to the assigned hub over MQTT and sends telemetry, reads the twin,
//!   patches reported properties and receives desired-property patches; [`AmqpHubClient`] does
//!   the first two over AMQP.
//! - [`SecurityProvider`] abstracts the device secret (software key, TPM, X.509/DICE), so the
//!   clients never hold key material themselves; [`SymmetricKeyProvider`] is the software
//!   implementation for individual and group-derived keys; `TpmProvider` (cargo feature `tpm`)
//!   keeps the key in a TPM 2.0 and registers with TPM attestation over HTTPS or AMQP.
//!
//! Wire formats (topics, SAS tokens, JSON models) come from `dps-proto`, the same code the server
//! uses, so the two cannot drift apart. This crate adds only the I/O: rumqttc for MQTT, reqwest
//! for HTTPS, fe2o3-amqp for AMQP, rustls (configured by `dps-pki`) for TLS.
//!
//! ```no_run
//! # async fn demo() -> Result<(), dps_client::ClientError> {
//! use std::sync::Arc;
//! use dps_client::{HubClient, ProvisioningClient, SymmetricKeyProvider};
//! let ca = std::fs::read_to_string("dps-data/ca.pem").unwrap();
//! let provider = Arc::new(SymmetricKeyProvider::new("dev-01", "c2VjcmV0LWtleS0xMjM0NTY3OA==")?);
//! let reg = ProvisioningClient::new("dps.example.test", "0ne00000001", provider.clone(), &ca).register(None).await?;
//! let hub = HubClient::from_registration(&reg, provider, &ca).connect().await?;
//! hub.send_event(r#"{"temperature":21.5}"#, &[("$.ct", "application/json"), ("$.ce", "utf-8")]).await?;
//! hub.patch_reported(serde_json::json!({"firmware": "1.0.0"})).await?;
//! hub.disconnect().await?;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod amqp;
mod dice;
mod error;
mod events;
mod hub;
mod hub_amqp;
mod mqtt;
mod provisioning;
mod rest;
mod security;
mod service;
#[cfg(feature = "tpm")]
mod tpm;
mod x509;

use std::sync::Arc;

pub use dice::DiceProvider;
pub use error::{error_chain, ClientError};
pub use events::EventStream;
pub use hub::{DesiredPatch, HubClient, HubClientBuilder, HUB_API_VERSION};
pub use hub_amqp::{cbs_put_token, AmqpHubClient};
pub use provisioning::{
    PollOptions, ProvisioningClient, RegistrationResult, Transport, CLIENT_VERSION, CSR_API_VERSION,
    DEVICE_API_VERSION, GLOBAL_ENDPOINT, MIN_REPOLL_INTERVAL,
};
pub use rest::{Reply, RestClient};
pub use security::{
    sas_token, AttestationKind, SecurityProvider, SymmetricKeyProvider, TpmPublicKeys, CLIENT_KEY_HANDLE,
    DEFAULT_TPM_TCTI,
};
pub use service::{Policies, RegistryClient, ServiceClient};
#[cfg(feature = "tpm")]
pub use tpm::{TpmClientKey, TpmError, TpmProvider, EK_HANDLE, ID_KEY_HANDLE, SRK_HANDLE};
pub use x509::X509Provider;

/// The TLS client configuration for `provider`: trust `ca_pem`, and present the provider's
/// certificate when it has one.
fn tls_config(provider: &dyn SecurityProvider, ca_pem: &str) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    match (provider.tls_identity(), provider.tls_held_identity()) {
        (Some((chain, key)), _) => dps_pki::tls::client_config_with_identity(ca_pem, &chain, &key),
        (None, Some((chain, key))) => dps_pki::tls::client_config_with_held_key(ca_pem, &chain, key),
        (None, None) => dps_pki::tls::client_config(ca_pem),
    }
    .map_err(|e| ClientError::Tls(e.to_string()))
}

/// Whether `provider` authenticates with a TLS client certificate (and so sends no SAS token).
fn presents_certificate(provider: &dyn SecurityProvider) -> bool {
    provider.tls_identity().is_some() || provider.tls_held_identity().is_some()
}

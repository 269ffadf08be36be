//! TPM 2.0 attestation for the Device Provisioning Service, service side, in pure Rust.
//!
//! A TPM device proves itself by using a key that only its TPM can unwrap: the service builds an
//! *activation blob* (MakeCredential to the device's endorsement key, bound to its storage root
//! key, plus a duplicated HMAC key) — [`wrap_key`] — and later verifies SAS tokens the TPM signed
//! with that key using ordinary HMAC-SHA256. No maintained crate builds these structures without a
//! TPM, so they are written here from the TPM 2.0 specification (docs/decisions/0005).
//!
//! No sockets and no TSS library: the device side (tss-esapi) lives in `dps-client`. Features:
//! `swtpm` adds [`swtpm::SwTpm`], a real software TPM process for tests; `software-tpm` adds
//! [`software::SoftwareTpm`], which unwraps blobs with known private keys for fast tests.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod blob;
mod credential;
mod crypto;
mod duplication;
mod error;
mod marshal;
mod protection;
pub mod public;
mod registration_id;
#[cfg(feature = "software-tpm")]
pub mod software;
#[cfg(feature = "swtpm")]
pub mod swtpm;
mod wrap;

pub use blob::ActivationBlob;
pub use duplication::{identity_key_public, IDENTITY_KEY_ATTRIBUTES};
pub use error::TpmError;
pub use public::RsaPublic;
pub use registration_id::registration_id;
pub use wrap::{wrap_key, MAX_KEY_LEN};

//! X.509 for the provisioning service.
//!
//! Everything certificate-shaped that the engine, the listeners and the CLI need lives here, so
//! that DER is only ever touched through maintained crates (x509-parser to read, rcgen to write,
//! rustls/webpki to verify) and every caller gets the same tolerant input handling:
//!
//! - [`pem`] turns what users paste (PEM, CRLF PEM, one-line PEM, bare base64 DER) into DER;
//! - [`thumbprint`] computes the SHA-1/SHA-256 thumbprints the service API shows and matches on;
//! - [`info`] summarises a certificate for the API's `info` block, without tripping over the
//!   malformed extensions some device certificates carry;
//! - [`chain`] validates a device's certificate chain up to an enrolled certificate, with errors
//!   that name the failing link;
//! - [`ca`] is the local PKI for development and factories: roots, intermediates, server, device
//!   and proof-of-possession certificates;
//! - [`csr`] verifies devices' certificate signing requests and issues their certificates;
//! - [`held_key`] makes requests for, and TLS client identities with, keys that never leave
//!   their hardware (a TPM, a secure element);
//! - [`crl`] reads imported revocation lists and makes the ones the service serves;
//! - [`ek`] reads TPM endorsement key certificates and checks their manufacturer chains;
//! - [`tls`] builds the rustls configurations of the device/service listeners and of clients;
//! - [`x509`] reads DER certificates tolerantly (for the crates that need x509-parser's view).
//!
//! DICE identities (deriving device keys and certificates from a UDS and firmware) are the
//! `dps-dice` crate.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod ca;
pub mod chain;
pub mod crl;
pub mod csr;
pub mod ek;
pub mod error;
pub mod held_key;
pub mod info;
pub mod pem;
pub mod thumbprint;
pub mod tls;
pub mod x509;

pub use error::PkiError;
pub use rustls_pki_types::{CertificateDer, PrivateKeyDer};

//! The one error type of the crate.
//!
//! Variants carry the underlying library's error as a typed value, but it is shown in the
//! message rather than exposed as `source()`: callers such as the service API put `{e}` straight
//! into a response, and a source chain would print the same detail twice under `{:#}`.

use std::fmt;

/// Why a certificate, key or TLS configuration could not be read, made or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// The input held neither a `CERTIFICATE` PEM block nor base64 text (for example it was
    /// empty, or held only a private key).
    #[error("no certificate found in the input")]
    NoCertificate,

    /// The PEM armour was broken: a `BEGIN` line without its `END` line, a malformed marker, or
    /// a body that is not base64.
    #[error("malformed PEM: {0}")]
    Pem(rustls_pki_types::pem::Error),

    /// The input had no PEM armour, so it was taken as bare base64 DER, and it is not base64.
    #[error("certificate is neither PEM nor base64: {0}")]
    Base64(base64::DecodeError),

    /// The bytes decoded, but x509-parser cannot read them as an X.509 certificate (wrong
    /// structure, truncated, or not a certificate at all).
    #[error("not a valid X.509 certificate: {0}")]
    InvalidCertificate(String),

    /// The key input held no `PRIVATE KEY`, `EC PRIVATE KEY` or `RSA PRIVATE KEY` block.
    #[error("no private key found (expected a PKCS#8, SEC1 or PKCS#1 PEM block)")]
    NoPrivateKey,

    /// The key is well-formed but cannot be used here: the signing library (ring) loads CA keys
    /// only as PKCS#8, or the algorithm is not one it supports.
    #[error("unsupported private key: {0}")]
    UnsupportedKey(String),

    /// The private key's public half is not the certificate's public key, so anything signed
    /// with it would not verify against that certificate.
    #[error("the private key does not belong to the certificate")]
    KeyMismatch,

    /// The certificate given as the CA has no `basicConstraints` with `CA:TRUE`; certificates it
    /// issued would be rejected by every verifier.
    #[error("the CA certificate is not a CA (basicConstraints CA:TRUE is missing)")]
    NotACa,

    /// A server certificate was requested for an empty list of host names; the certificate's
    /// subject name comes from the first one.
    #[error("at least one host name is required")]
    NoHostnames,

    /// A host name cannot be put into a subjectAltName: it is empty or not ASCII (DNS names in
    /// certificates are IA5String; internationalised names must be given in punycode).
    #[error("invalid host name {name:?}: {reason}")]
    InvalidHostname {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A certificate was requested with a validity of less than one day (the count is of days
    /// after the start of validity, so zero or negative would make it expire before it starts).
    #[error("invalid validity of {days} days: at least 1 day is required")]
    InvalidValidity {
        /// The validity asked for.
        days: i64,
    },

    /// A listener configuration was asked for without any server certificate to present.
    #[error("a TLS listener needs at least one server certificate")]
    NoServerCertificate,

    /// A client was asked to trust the system's certificate authorities, and the system has
    /// none that rustls can use (no `/etc/ssl/certs`, or `SSL_CERT_FILE` names nothing usable),
    /// and no CA of its own was given either.
    #[error("no trusted certificate authorities: the system has none ({0}) and no CA file was given")]
    NoSystemRoots(String),

    /// rcgen failed to build or sign a certificate, or to load a key pair.
    #[error("certificate generation failed: {0}")]
    Generate(rcgen::Error),

    /// A key held elsewhere (a TPM, a secure element; [`crate::held_key::HeldKey`]) refused or
    /// failed to sign; the text is the holder's reason.
    #[error("the held key did not sign: {0}")]
    HeldKey(String),

    /// rustls rejected the configuration: unusable key, key not matching the certificate, a
    /// trust anchor webpki cannot parse, or an impossible protocol-version set.
    #[error("TLS configuration rejected: {0}")]
    Tls(rustls::Error),
}

// Manual `From` impls rather than `#[from]`, which would also make the inner error the
// `source()` and print it twice (see the module documentation).

impl From<rustls_pki_types::pem::Error> for PkiError {
    fn from(e: rustls_pki_types::pem::Error) -> Self {
        PkiError::Pem(e)
    }
}

impl From<base64::DecodeError> for PkiError {
    fn from(e: base64::DecodeError) -> Self {
        PkiError::Base64(e)
    }
}

impl From<rcgen::Error> for PkiError {
    fn from(e: rcgen::Error) -> Self {
        PkiError::Generate(e)
    }
}

impl From<rustls::Error> for PkiError {
    fn from(e: rustls::Error) -> Self {
        PkiError::Tls(e)
    }
}

impl PkiError {
    pub(crate) fn invalid_certificate(e: impl fmt::Display) -> Self {
        PkiError::InvalidCertificate(e.to_string())
    }
}

//! Why a TPM operation failed.
//!
//! The TSS errors are rendered into the message (with their source chain, deduplicated: tss-esapi
//! repeats "response code not recognized" and keeps the actual code in a source) rather than
//! exposed as `source()`, so `{:#}`-style printers do not repeat them; the typed error stays
//! reachable in the `error` fields.

use crate::error::error_chain;

/// A TPM failure, with enough context to tell a wiring problem (no TPM at that TCTI) from an
/// identity problem (a blob made for another TPM) without reading TSS logs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TpmError {
    /// The TCTI string is not one tss-esapi understands (`device:/dev/tpmrm0`,
    /// `swtpm:host=127.0.0.1,port=2321`, `mssim:...`, `tabrmd:...`).
    #[error("invalid TCTI '{tcti}': {}", error_chain(error))]
    InvalidTcti {
        /// The string as given.
        tcti: String,
        /// What tss-esapi objected to.
        error: tss_esapi::Error,
    },

    /// No TPM could be opened through the TCTI: the device node is missing or not accessible,
    /// the simulator is not listening, or the TCTI library (e.g. `libtss2-tcti-swtpm0`) is not
    /// installed.
    #[error(
        "cannot open the TPM at '{tcti}' (no TPM there, or no access to it?): {}",
        error_chain(error)
    )]
    Open {
        /// The TCTI that was tried.
        tcti: String,
        /// The TSS error.
        error: tss_esapi::Error,
    },

    /// A TPM command (or the TSS marshalling around it) failed. `hint` says what that usually
    /// means for DPS, e.g. that an activation blob was made for another TPM's keys.
    #[error("{what} failed: {}{hint}", error_chain(error))]
    Command {
        /// The step, e.g. `ActivateCredential`.
        what: &'static str,
        /// The TSS/TPM response code.
        error: tss_esapi::Error,
        /// `: ...` explanation for the operator, or empty.
        hint: &'static str,
    },

    /// The `authenticationKey` from the service is not an activation blob: its TPM2B fields do
    /// not parse.
    #[error("the activation blob is malformed: {0}")]
    Blob(dps_tpm::TpmError),

    /// A field of the activation blob parsed but does not fit the TPM structure it is for (too
    /// large, or a public area the TSS cannot unmarshal).
    #[error("the activation blob's {field} is not a valid TPM structure: {}", error_chain(error))]
    BlobField {
        /// The field, e.g. `credentialBlob`.
        field: &'static str,
        /// What the TSS objected to.
        error: tss_esapi::Error,
    },

    /// ActivateCredential released an inner wrapping key whose length matches no AES key size,
    /// so Import cannot be told which symmetric algorithm to use.
    #[error("the activation blob carries a {0}-byte inner wrapping key (expected 16 or 32 for AES-128/256-CFB)")]
    InnerKeySize(usize),

    /// The data to HMAC is larger than one TPM2_HMAC command takes. tss-esapi 7 has no
    /// HMAC_Start/SequenceUpdate, and SAS strings-to-sign are far below this limit.
    #[error("cannot HMAC {len} bytes in the TPM: at most {max} bytes per TPM2_HMAC")]
    DataTooLong {
        /// Size of the data.
        len: usize,
        /// The TPM input buffer limit.
        max: usize,
    },

    /// No identity key is persisted at 0x81000100 yet: nothing was imported, so there is
    /// nothing to sign with. The provisioning flow imports the service's blob first.
    #[error("no DPS identity key in the TPM (persistent handle 0x81000100): import an authenticationKey first")]
    NoIdentityKey,

    /// No client key is persisted at 0x81000101: none was made for a certificate signing
    /// request yet ([`crate::TpmProvider::create_client_key`]).
    #[error(
        "no client key in the TPM (persistent handle 0x81000101): make one for a certificate signing request first"
    )]
    NoClientKey,

    /// A client key was asked for with an algorithm the TPM keys here do not take: ECDSA
    /// P-256 and P-384 only (signing with them is what TLS 1.3 accepts without RSA-PSS).
    #[error("a TPM client key is ECDSA P-256 or P-384, not {0}")]
    UnsupportedClientKey(String),

    /// The thread that owns the TPM context is gone (it panicked); the provider is unusable.
    #[error("the TPM worker thread stopped")]
    WorkerGone,
}

impl TpmError {
    /// A failed command without a hint.
    pub(crate) fn command(what: &'static str) -> impl FnOnce(tss_esapi::Error) -> Self {
        move |error| Self::Command { what, error, hint: "" }
    }

    /// A failed command with an explanation of what it usually means.
    pub(crate) fn command_hint(what: &'static str, hint: &'static str) -> impl FnOnce(tss_esapi::Error) -> Self {
        move |error| Self::Command { what, error, hint }
    }
}

impl From<dps_tpm::TpmError> for TpmError {
    fn from(e: dps_tpm::TpmError) -> Self {
        Self::Blob(e)
    }
}

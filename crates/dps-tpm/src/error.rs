//! The one error type of this crate. Messages name the structure and field that was wrong, so a
//! device's bad `endorsementKey` can be reported to it as is.

/// Why TPM data was refused or a blob could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TpmError {
    /// The bytes end before a structure is complete.
    #[error("{what} is truncated: needs {needed} more byte(s) at offset {offset}")]
    Truncated {
        /// The structure or field being read.
        what: &'static str,
        /// Where it starts.
        offset: usize,
        /// How many bytes were missing.
        needed: usize,
    },
    /// Bytes remain after the last structure.
    #[error("{what} has {extra} unexpected byte(s) at its end")]
    TrailingBytes {
        /// The structure being read.
        what: &'static str,
        /// How many bytes were left over.
        extra: usize,
    },
    /// A TPM2B size prefix disagrees with the length of the buffer it came in.
    #[error("{what}: the TPM2B size says {declared} byte(s) but {actual} follow")]
    SizeMismatch {
        /// The structure being read.
        what: &'static str,
        /// The size in the prefix.
        declared: usize,
        /// The bytes actually present.
        actual: usize,
    },
    /// A public area is not the kind of key DPS attestation works with (RSA-2048, SHA-256 name,
    /// AES-128-CFB storage key).
    #[error("{what} is not usable for DPS TPM attestation: {reason}")]
    UnsupportedKey {
        /// Which key (`endorsement key`, `storage root key`).
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A value too long for its 16-bit TPM2B size prefix.
    #[error("{what} of {len} bytes does not fit a TPM2B (at most 65535)")]
    TooLong {
        /// The field.
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// The key to wrap has a length a keyed-hash object cannot hold.
    #[error("the key to wrap must be 1 to 64 bytes, got {0}")]
    KeyLength(usize),
    /// RSA-OAEP encryption of a seed to the EK or SRK failed.
    #[error("RSA-OAEP encryption to the {what} failed: {reason}")]
    Encryption {
        /// Which key the seed was encrypted to.
        what: &'static str,
        /// The RSA library's reason.
        reason: String,
    },
    /// An integrity HMAC did not verify (software unwrap only): the blob was made for another
    /// key or was altered.
    #[error("{what}: integrity check failed (made for another key, or altered)")]
    Integrity {
        /// The wrapper that failed.
        what: &'static str,
    },
}

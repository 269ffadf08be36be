//! The TPM's client key as a [`HeldKey`]: what a certificate signing request is made for and
//! what signs the device's TLS handshakes once the certificate is issued, without the key ever
//! leaving the TPM.

use std::fmt;
use std::sync::Arc;

use dps_pki::ca::KeyAlgorithm;
use dps_pki::held_key::HeldKey;
use tss_esapi::interface_types::ecc::EccCurve;

use super::worker::Worker;
use super::{TpmError, CLIENT_KEY_HANDLE};

/// The ECDSA key persisted at [`CLIENT_KEY_HANDLE`] (0x81000101). Signing runs on the TPM
/// thread and blocks its caller for the TPM's time (a few milliseconds on swtpm, tens on a
/// discrete TPM), once per request or handshake.
pub struct TpmClientKey {
    algorithm: KeyAlgorithm,
    public: Vec<u8>,
    worker: Arc<Worker>,
}

impl fmt::Debug for TpmClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TpmClientKey")
            .field("handle", &format_args!("0x{CLIENT_KEY_HANDLE:08x}"))
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl TpmClientKey {
    pub(super) fn new(curve: EccCurve, public: Vec<u8>, worker: Arc<Worker>) -> Result<Self, TpmError> {
        let algorithm = match curve {
            EccCurve::NistP256 => KeyAlgorithm::EcdsaP256,
            EccCurve::NistP384 => KeyAlgorithm::EcdsaP384,
            other => return Err(TpmError::UnsupportedClientKey(format!("{other:?}"))),
        };
        Ok(Self {
            algorithm,
            public,
            worker,
        })
    }

    /// The TPM curve for `algorithm`, refusing RSA.
    pub(super) fn curve(algorithm: KeyAlgorithm) -> Result<EccCurve, TpmError> {
        match algorithm {
            KeyAlgorithm::EcdsaP256 => Ok(EccCurve::NistP256),
            KeyAlgorithm::EcdsaP384 => Ok(EccCurve::NistP384),
            other => Err(TpmError::UnsupportedClientKey(other.to_string())),
        }
    }
}

impl HeldKey for TpmClientKey {
    fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    fn public_key(&self) -> &[u8] {
        &self.public
    }

    fn sign_digest(&self, digest: &[u8]) -> Result<(Vec<u8>, Vec<u8>), String> {
        let digest = digest.to_vec();
        self.worker
            .run(move |tpm| tpm.sign_with_client_key(&digest))
            .map_err(|e| e.to_string())
    }
}

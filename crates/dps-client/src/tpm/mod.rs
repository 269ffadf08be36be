//! TPM 2.0 security provider: the device's DPS identity lives in a TPM (a device node such as
//! `/dev/tpmrm0`, or a simulator like swtpm), reached through tss-esapi and the system libtss2.
//!
//! What the TPM holds and does (device-protocol.md §7, hub-dice-tpm.md §C):
//! - the endorsement key (EK, persistent handle 0x81010001) and storage root key (SRK,
//!   0x81000001), created from the DPS templates and persisted if the TPM has none yet, and
//!   sent to the service as marshalled TPM2B_PUBLIC; the default registration id is derived
//!   from the EK ([`dps_tpm::registration_id`]);
//! - the symmetric identity key, which the service sends wrapped so that only this TPM can
//!   unwrap it (ActivateCredential with the EK → Import under the SRK), persisted at
//!   0x81000100 and used for every SAS signature (TPM2_HMAC). The key never leaves the TPM.
//! - an ECDSA client key (P-256 or P-384), made in the TPM for a certificate signing request
//!   ([`TpmProvider::create_client_key`]) and persisted at 0x81000101: the issued certificate's
//!   key, which signs the device's TLS handshakes at its hub ([`TpmClientKey`], a
//!   [`dps_pki::held_key::HeldKey`]) and never leaves the TPM either.
//!
//! The TPM is chosen by a TCTI string, as tpm2-tools does (`device:/dev/tpmrm0`,
//! `swtpm:host=127.0.0.1,port=2321`, `mssim:...`, `tabrmd:...`).

mod client_key;
mod commands;
mod error;
mod templates;
mod worker;

use std::fmt;
use std::sync::Arc;

pub use client_key::TpmClientKey;
pub use error::TpmError;
use templates::CLIENT_KEY_HANDLE;
pub use templates::{EK_HANDLE, ID_KEY_HANDLE, SRK_HANDLE};

use crate::security::{AttestationKind, SecurityProvider, TpmPublicKeys};
use crate::ClientError;
use worker::Worker;

/// A DPS identity held by a TPM. Cheap to share (`Arc`); TPM commands are serialized on one
/// thread that owns the TPM context.
///
/// ```no_run
/// # fn demo() -> Result<(), dps_client::ClientError> {
/// use dps_client::{SecurityProvider, TpmProvider};
/// let tpm = TpmProvider::open("swtpm:host=127.0.0.1,port=2321")?;
/// println!("enroll {} with EK {} bytes", tpm.registration_id(), tpm.endorsement_key().len());
/// # Ok(()) }
/// ```
pub struct TpmProvider {
    registration_id: String,
    tcti: String,
    keys: TpmPublicKeys,
    /// Shared with the client key, which signs on the same thread.
    worker: Arc<Worker>,
}

impl fmt::Debug for TpmProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TpmProvider")
            .field("registration_id", &self.registration_id)
            .field("tcti", &self.tcti)
            .finish_non_exhaustive()
    }
}

impl TpmProvider {
    /// Opens the TPM behind `tcti`, creating and persisting the EK and SRK if they are missing.
    /// The registration id defaults to the one derived from the EK.
    pub fn open(tcti: &str) -> Result<Self, TpmError> {
        let worker = Arc::new(Worker::open(tcti)?);
        let keys = worker.run(|tpm| {
            Ok(TpmPublicKeys {
                endorsement_key: tpm.ek_public().to_vec(),
                storage_root_key: tpm.srk_public().to_vec(),
            })
        })?;
        Ok(Self {
            registration_id: dps_tpm::registration_id(&keys.endorsement_key),
            tcti: tcti.to_string(),
            keys,
            worker,
        })
    }

    /// Registers under `registration_id` instead of the EK-derived default (the enrollment's
    /// registration id must then be this one).
    pub fn with_registration_id(mut self, registration_id: impl Into<String>) -> Self {
        self.registration_id = registration_id.into();
        self
    }

    /// The EK-derived registration id: lower-case unpadded base32 of SHA-256 of the EK's
    /// TPM2B_PUBLIC, as the C and Node SDKs compute it.
    pub fn default_registration_id(&self) -> String {
        dps_tpm::registration_id(&self.keys.endorsement_key)
    }

    /// The EK's marshalled TPM2B_PUBLIC (what enrollments store, base64-encoded).
    pub fn endorsement_key(&self) -> &[u8] {
        &self.keys.endorsement_key
    }

    /// The SRK's marshalled TPM2B_PUBLIC.
    pub fn storage_root_key(&self) -> &[u8] {
        &self.keys.storage_root_key
    }

    /// The endorsement key certificate its manufacturer stored in the TPM (DER), if any: what
    /// an operator enrolls the TPM by when the service checks manufacturers' chains.
    pub fn endorsement_key_certificate(&self) -> Result<Option<Vec<u8>>, TpmError> {
        self.worker.run(|tpm| tpm.ek_certificate())
    }

    /// The TCTI the TPM was opened with.
    pub fn tcti(&self) -> &str {
        &self.tcti
    }

    /// Imports an activation blob (decoded `authenticationKey`) into the TPM; afterwards
    /// [`sign`](SecurityProvider::sign) uses the key it carries.
    pub fn import(&self, blob: &[u8]) -> Result<(), TpmError> {
        let blob = dps_tpm::ActivationBlob::parse(blob)?;
        self.worker.run(move |tpm| tpm.import(&blob))
    }

    /// Makes a new client key of `algorithm` (ECDSA P-256 or P-384) in the TPM, replacing the
    /// previous one, for a certificate signing request
    /// ([`dps_pki::held_key::certificate_request`]); the issued certificate is then presented
    /// with it ([`crate::X509Provider::with_held_key`]).
    pub fn create_client_key(&self, algorithm: dps_pki::ca::KeyAlgorithm) -> Result<Arc<TpmClientKey>, TpmError> {
        let curve = TpmClientKey::curve(algorithm)?;
        let public = self.worker.run(move |tpm| tpm.create_client_key(curve))?;
        Ok(Arc::new(TpmClientKey::new(curve, public, self.worker.clone())?))
    }

    /// The client key the TPM holds (made earlier, by this or another process), if any.
    pub fn client_key(&self) -> Result<Option<Arc<TpmClientKey>>, TpmError> {
        match self.worker.run(|tpm| tpm.client_key_public())? {
            Some((curve, public)) => Ok(Some(Arc::new(TpmClientKey::new(curve, public, self.worker.clone())?))),
            None => Ok(None),
        }
    }

    /// HMAC-SHA256 of `data`, computed by the TPM with the imported identity key.
    pub fn hmac(&self, data: &[u8]) -> Result<Vec<u8>, TpmError> {
        let data = data.to_vec();
        self.worker.run(move |tpm| tpm.hmac(&data))
    }
}

impl SecurityProvider for TpmProvider {
    fn registration_id(&self) -> &str {
        &self.registration_id
    }

    fn kind(&self) -> AttestationKind {
        AttestationKind::Tpm
    }

    fn sign(&self, data: &[u8]) -> Result<Vec<u8>, ClientError> {
        Ok(self.hmac(data)?)
    }

    fn tpm_keys(&self) -> Result<TpmPublicKeys, ClientError> {
        Ok(self.keys.clone())
    }

    fn import_authentication_key(&self, blob: &[u8]) -> Result<(), ClientError> {
        Ok(self.import(blob)?)
    }
}

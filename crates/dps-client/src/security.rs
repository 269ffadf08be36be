//! Security providers: where a device's identity secret lives and how it is used.
//!
//! The clients never see key material directly. They ask the provider for the two things the
//! protocols need — an HMAC signature over a SAS string-to-sign, or a TLS client identity — so a
//! key can live in software, a TPM, a secure element or a DICE engine without the clients
//! changing. This mirrors the Azure SDKs' HSM abstraction (`SecurityProvider` in C#/Java,
//! `hsm_client` in C).
//!
//! # How each attestation kind fits
//!
//! - **Symmetric key** ([`SymmetricKeyProvider`]): [`SecurityProvider::sign`] computes
//!   HMAC-SHA256 with the device key; the clients turn it into SAS tokens for DPS
//!   (`{scope}/registrations/{id}`) and the hub (`{host}/devices/{id}`).
//! - **X.509** (and **DICE**, which is X.509 with a chain derived on the device): return
//!   `Some((chain_pem, key_pem))` from [`SecurityProvider::tls_identity`]; the clients then
//!   present it as the TLS client certificate and send no SAS token, on both DPS and the hub.
//!   `sign` keeps its default (unsupported). A provider whose key cannot leave the hardware (a
//!   TPM, a secure element) returns its chain and a signing hook from
//!   [`SecurityProvider::tls_held_identity`] instead ([`crate::X509Provider::with_held_key`]).
//! - **TPM** (`TpmProvider`, cargo feature `tpm`): `sign` HMACs with the key the TPM holds.
//!   Registration needs two extra steps, which are default methods here (failing with
//!   "unsupported" for the other kinds, so they need not implement them):
//!   [`SecurityProvider::tpm_keys`] gives the endorsement/storage-root keys sent with the
//!   registration, and [`SecurityProvider::import_authentication_key`] imports the
//!   `authenticationKey` blobs the service returns (the challenge key, then the hub key).
//!   `kind()` lets the clients pick the TPM flow (HTTPS only, as in the Azure SDKs).

use std::fmt;
use std::sync::Arc;

use dps_pki::held_key::HeldKey;

use dps_proto::keys::derive_device_key;
use dps_proto::sas;

use crate::ClientError;

/// Which attestation mechanism a provider implements; decides how the clients authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AttestationKind {
    /// SAS tokens signed with a symmetric key (individual or group-derived).
    SymmetricKey,
    /// A TLS client certificate (includes DICE-derived certificates).
    X509,
    /// A TPM endorsement key and a TPM-held symmetric key.
    Tpm,
}

/// The HSM abstraction: a device identity the clients can authenticate with.
///
/// Implementations must be cheap to call repeatedly (a token is signed per connection) and
/// thread-safe (clients are shared across tasks).
pub trait SecurityProvider: Send + Sync {
    /// The registration id (DPS) this identity registers as. For X.509 it is the certificate's
    /// common name.
    fn registration_id(&self) -> &str;

    /// Which attestation mechanism this is.
    fn kind(&self) -> AttestationKind;

    /// HMAC-SHA256 of `data` with the device's symmetric key — the SAS signature. Providers that
    /// do not sign (X.509) keep the default, which fails with [`ClientError::Unsupported`].
    fn sign(&self, data: &[u8]) -> Result<Vec<u8>, ClientError> {
        let _ = data;
        Err(ClientError::Unsupported(format!(
            "{:?} security providers do not sign SAS tokens",
            self.kind()
        )))
    }

    /// The TLS client identity `(certificate chain PEM, leaf first; private key PEM)` for X.509
    /// providers; `None` (the default) for SAS-based providers.
    fn tls_identity(&self) -> Option<(String, String)> {
        None
    }

    /// The TLS client identity of an X.509 provider whose key cannot be read: `(certificate
    /// chain PEM, leaf first; the key's signing hook)`. Consulted when
    /// [`tls_identity`](Self::tls_identity) is `None`; `None` by default.
    fn tls_held_identity(&self) -> Option<(String, Arc<dyn HeldKey>)> {
        None
    }

    /// TPM providers: the endorsement and storage root keys sent with the registration. The
    /// default fails with [`ClientError::Unsupported`].
    fn tpm_keys(&self) -> Result<TpmPublicKeys, ClientError> {
        Err(ClientError::Unsupported(format!(
            "{:?} security providers have no TPM keys",
            self.kind()
        )))
    }

    /// TPM providers: imports an activation blob (the base64-decoded `authenticationKey` of the
    /// TPM challenge or of the assigned registration) so that [`sign`](Self::sign) uses the key
    /// it carries. The default fails with [`ClientError::Unsupported`].
    fn import_authentication_key(&self, blob: &[u8]) -> Result<(), ClientError> {
        let _ = blob;
        Err(ClientError::Unsupported(format!(
            "{:?} security providers cannot import a TPM activation blob",
            self.kind()
        )))
    }
}

/// The TCTI used when none is given: the kernel's TPM resource manager, as tpm2-tools.
pub const DEFAULT_TPM_TCTI: &str = "device:/dev/tpmrm0";

/// The TPM persistent handle of the ECDSA key a certificate signing request asks a certificate
/// for (the device's TLS client key at its hub), made in the TPM under the SRK and never
/// exported (`TpmProvider::create_client_key`, cargo feature `tpm`). Defined without the
/// feature so that tools can name it.
pub const CLIENT_KEY_HANDLE: u32 = 0x8100_0101;

/// A TPM's public keys as the device sends them: each a marshalled `TPM2B_PUBLIC` (u16 size,
/// then `TPMT_PUBLIC`), base64-encoded on the wire (device-protocol.md §7.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmPublicKeys {
    /// The endorsement key (EK): identifies the TPM; the enrollment stores it.
    pub endorsement_key: Vec<u8>,
    /// The storage root key (SRK): the parent the identity key is imported under.
    pub storage_root_key: Vec<u8>,
}

/// Builds a SAS token for `resource` signed by `provider`, in exactly the format of
/// [`dps_proto::sas::build_token`] (`sr` percent-encoded, then `sig`, `se`, optional `skn`).
///
/// Why not call `build_token` directly: it needs the key itself, and a provider may keep its key
/// in hardware and only offer signatures. The string-to-sign and encodings come from
/// `dps_proto::sas`, and a unit test pins the output to `build_token`'s byte for byte.
pub fn sas_token(
    provider: &dyn SecurityProvider,
    resource: &str,
    expiry: u64,
    key_name: Option<&str>,
) -> Result<String, ClientError> {
    sas::build_token_with(resource, expiry, key_name, |msg| provider.sign(msg))
}

/// A symmetric-key identity held in memory: an individual enrollment's key, or a key derived
/// from an enrollment-group key.
#[derive(Clone)]
pub struct SymmetricKeyProvider {
    registration_id: String,
    key_b64: String,
    key: Vec<u8>,
}

impl fmt::Debug for SymmetricKeyProvider {
    /// Never prints the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SymmetricKeyProvider")
            .field("registration_id", &self.registration_id)
            .finish_non_exhaustive()
    }
}

impl SymmetricKeyProvider {
    /// From the device's own base64 key (individual enrollment, or an already derived key).
    pub fn new(registration_id: impl Into<String>, device_key_b64: &str) -> Result<Self, ClientError> {
        let registration_id = registration_id.into();
        let key_b64 = device_key_b64.trim().to_string();
        let key =
            decode_key(&key_b64).ok_or_else(|| ClientError::Credential("the device key is not valid base64".into()))?;
        if key.is_empty() {
            return Err(ClientError::Credential("the device key is empty".into()));
        }
        Ok(Self {
            registration_id,
            key_b64,
            key,
        })
    }

    /// From an enrollment-group key: the device key is
    /// `base64(HMAC-SHA256(base64decode(groupKey), registrationId))` (what a factory computes
    /// with `dps compute-device-key`). Prefer provisioning devices with the derived key, so the
    /// group key never has to be on a device.
    pub fn from_group_key(registration_id: impl Into<String>, group_key_b64: &str) -> Result<Self, ClientError> {
        let registration_id = registration_id.into();
        let derived = derive_device_key(group_key_b64.trim(), &registration_id)
            .ok_or_else(|| ClientError::Credential("the group key is not valid base64".into()))?;
        Self::new(registration_id, &derived)
    }

    /// The device key, base64 (e.g. to print the derived key once).
    pub fn device_key(&self) -> &str {
        &self.key_b64
    }
}

fn decode_key(b64: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

impl SecurityProvider for SymmetricKeyProvider {
    fn registration_id(&self) -> &str {
        &self.registration_id
    }

    fn kind(&self) -> AttestationKind {
        AttestationKind::SymmetricKey
    }

    fn sign(&self, data: &[u8]) -> Result<Vec<u8>, ClientError> {
        Ok(sas::hmac_sha256(&self.key, data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGVzdFN0cmluZzE=";

    #[test]
    fn sas_token_equals_dps_proto_build_token() {
        let p = SymmetricKeyProvider::new("dev-01", KEY).unwrap();
        for (resource, skn) in [
            ("0ne0001234A/registrations/dev-01", Some("registration")),
            ("hub.example.test/devices/dev-01", None),
        ] {
            let ours = sas_token(&p, resource, 1_700_000_000, skn).unwrap();
            let theirs = sas::build_token(resource, KEY, 1_700_000_000, skn).unwrap();
            assert_eq!(ours, theirs);
            // And the server-side verifier accepts it for that audience.
            let t = sas::SasToken::parse(&ours).unwrap();
            t.check_audience_eq(resource).unwrap();
            t.verify_signature([KEY]).unwrap();
        }
    }

    #[test]
    fn group_key_derivation_matches_reference_vector() {
        // service-api.md §5.3
        let p = SymmetricKeyProvider::from_group_key(
            "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6",
            "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==",
        )
        .unwrap();
        assert_eq!(p.device_key(), "Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc=");
        assert_eq!(p.kind(), AttestationKind::SymmetricKey);
        assert!(p.tls_identity().is_none());
    }

    #[test]
    fn bad_keys_and_debug() {
        assert!(matches!(
            SymmetricKeyProvider::new("d", "not base64!"),
            Err(ClientError::Credential(_))
        ));
        assert!(matches!(
            SymmetricKeyProvider::new("d", ""),
            Err(ClientError::Credential(_))
        ));
        assert!(matches!(
            SymmetricKeyProvider::from_group_key("d", "%%"),
            Err(ClientError::Credential(_))
        ));
        let p = SymmetricKeyProvider::new("d", KEY).unwrap();
        assert!(!format!("{p:?}").contains(KEY));
    }

    struct CertOnly;
    impl SecurityProvider for CertOnly {
        fn registration_id(&self) -> &str {
            "c"
        }
        fn kind(&self) -> AttestationKind {
            AttestationKind::X509
        }
    }

    #[test]
    fn default_sign_is_unsupported() {
        assert!(matches!(CertOnly.sign(b"x"), Err(ClientError::Unsupported(_))));
        assert!(matches!(CertOnly.tpm_keys(), Err(ClientError::Unsupported(_))));
        let sym = SymmetricKeyProvider::new("d", KEY).unwrap();
        assert!(matches!(
            sym.import_authentication_key(b"blob"),
            Err(ClientError::Unsupported(m)) if m.contains("SymmetricKey")
        ));
        assert!(matches!(
            sas_token(&CertOnly, "r", 1, None),
            Err(ClientError::Unsupported(_))
        ));
    }
}

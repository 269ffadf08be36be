//! Keys held where they cannot be read — a TPM, a secure element, an HSM — and used through a
//! signing hook: a certificate signing request for such a key ([`certificate_request`]) and a
//! TLS client identity with it ([`crate::tls::client_config_with_held_key`]).
//!
//! Why one hook for both: a PKCS#10 signature and a TLS `CertificateVerify` with ECDSA are the
//! same operation (ECDSA over the SHA-2 digest of a message, DER `Ecdsa-Sig-Value`), so a device
//! whose key never leaves its hardware implements [`HeldKey::sign_digest`] once. The digest is
//! computed here, in software, because the message (a TLS transcript) can be longer than a TPM
//! hashes in one command; the TPM signs the digest with an unrestricted signing key.
//!
//! ECDSA only (P-256 with SHA-256, P-384 with SHA-384): what TPMs and secure elements sign with,
//! and what TLS 1.3 takes without RSA-PSS.

use std::fmt;
use std::sync::{Arc, Mutex};

use der::Encode;
use rcgen::{KeyPair, RemoteKeyPair, SignatureAlgorithm};
use rustls::pki_types::CertificateDer;
use rustls::sign::{Signer, SigningKey};
use sha2::Digest;

use crate::ca::KeyAlgorithm;
use crate::PkiError;

/// A private key that signs digests and never shows itself.
pub trait HeldKey: Send + Sync + fmt::Debug {
    /// The key's algorithm: [`KeyAlgorithm::EcdsaP256`] or [`KeyAlgorithm::EcdsaP384`].
    fn algorithm(&self) -> KeyAlgorithm;

    /// The public key: an uncompressed SEC1 point (`04 || x || y`).
    fn public_key(&self) -> &[u8];

    /// Signs `digest` (SHA-256 of the message for P-256, SHA-384 for P-384) and returns the
    /// signature's integers `r` and `s`, big-endian. The error says why the holder refused.
    fn sign_digest(&self, digest: &[u8]) -> Result<(Vec<u8>, Vec<u8>), String>;
}

/// A certificate signing request (DER PKCS#10) for `key`, with subject CN `common_name` (the
/// registration id): the held-key counterpart of [`crate::csr::new_key_and_request`].
pub fn certificate_request(common_name: &str, key: Arc<dyn HeldKey>) -> Result<Vec<u8>, PkiError> {
    let algorithm = rcgen_algorithm(key.algorithm())?;
    let refusal = Arc::new(Mutex::new(None));
    let pair = KeyPair::from_remote(Box::new(RcgenKey {
        key,
        algorithm,
        refusal: refusal.clone(),
    }))?;
    crate::csr::request_for(common_name, &pair).map_err(|e| match refusal.lock().ok().and_then(|mut r| r.take()) {
        // rcgen reports only that the remote key failed; the holder said why.
        Some(why) => PkiError::HeldKey(why),
        None => e,
    })
}

/// The rustls signing key for `key`, refusing RSA (no held key is RSA here).
pub(crate) fn signing_key(key: Arc<dyn HeldKey>) -> Result<Arc<dyn SigningKey>, PkiError> {
    let scheme = match key.algorithm() {
        KeyAlgorithm::EcdsaP256 => rustls::SignatureScheme::ECDSA_NISTP256_SHA256,
        KeyAlgorithm::EcdsaP384 => rustls::SignatureScheme::ECDSA_NISTP384_SHA384,
        KeyAlgorithm::Rsa2048 => return Err(not_ecdsa()),
    };
    Ok(Arc::new(TlsKey { key, scheme }))
}

/// Whether `leaf` (DER) certifies `key`: a chain presented with a key it does not certify fails
/// every handshake, so it is refused where it is configured, with a reason.
pub fn certifies(leaf: &CertificateDer<'_>, key: &dyn HeldKey) -> Result<(), PkiError> {
    let cert = crate::x509::parse(leaf)?;
    if cert.public_key().subject_public_key.data.as_ref() == key.public_key() {
        Ok(())
    } else {
        Err(PkiError::KeyMismatch)
    }
}

fn not_ecdsa() -> PkiError {
    PkiError::UnsupportedKey("a held key must be ECDSA P-256 or P-384".into())
}

fn rcgen_algorithm(alg: KeyAlgorithm) -> Result<&'static SignatureAlgorithm, PkiError> {
    match alg {
        KeyAlgorithm::EcdsaP256 => Ok(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyAlgorithm::EcdsaP384 => Ok(&rcgen::PKCS_ECDSA_P384_SHA384),
        KeyAlgorithm::Rsa2048 => Err(not_ecdsa()),
    }
}

/// ECDSA over `message` with `key`: the digest its curve takes, signed by the holder, as DER
/// `Ecdsa-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }` (what X.509, PKCS#10 and TLS carry).
fn sign_message(key: &dyn HeldKey, message: &[u8]) -> Result<Vec<u8>, String> {
    let digest = match key.algorithm() {
        KeyAlgorithm::EcdsaP256 => sha2::Sha256::digest(message).to_vec(),
        KeyAlgorithm::EcdsaP384 => sha2::Sha384::digest(message).to_vec(),
        KeyAlgorithm::Rsa2048 => return Err(not_ecdsa().to_string()),
    };
    let (r, s) = key.sign_digest(&digest)?;
    ecdsa_sig_value(&r, &s)
}

/// `Ecdsa-Sig-Value` (RFC 3279) of big-endian `r` and `s`: minimal, positive INTEGERs.
fn ecdsa_sig_value(r: &[u8], s: &[u8]) -> Result<Vec<u8>, String> {
    let int = |v| der::asn1::UintRef::new(v).map_err(|e| format!("a signature integer: {e}"));
    EcdsaSigValue { r: int(r)?, s: int(s)? }
        .to_der()
        .map_err(|e| format!("encoding the signature: {e}"))
}

#[derive(der::Sequence)]
struct EcdsaSigValue<'a> {
    r: der::asn1::UintRef<'a>,
    s: der::asn1::UintRef<'a>,
}

/// [`HeldKey`] as rcgen signs requests with it.
struct RcgenKey {
    key: Arc<dyn HeldKey>,
    algorithm: &'static SignatureAlgorithm,
    /// Why the holder refused to sign, for the error rcgen cannot carry.
    refusal: Arc<Mutex<Option<String>>>,
}

impl RemoteKeyPair for RcgenKey {
    fn public_key(&self) -> &[u8] {
        self.key.public_key()
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        sign_message(self.key.as_ref(), msg).map_err(|e| {
            if let Ok(mut r) = self.refusal.lock() {
                *r = Some(e);
            }
            rcgen::Error::RemoteKeyError
        })
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.algorithm
    }
}

/// [`HeldKey`] as rustls signs `CertificateVerify` with it.
#[derive(Debug)]
struct TlsKey {
    key: Arc<dyn HeldKey>,
    scheme: rustls::SignatureScheme,
}

impl SigningKey for TlsKey {
    fn choose_scheme(&self, offered: &[rustls::SignatureScheme]) -> Option<Box<dyn Signer>> {
        offered.contains(&self.scheme).then(|| {
            Box::new(TlsSigner {
                key: self.key.clone(),
                scheme: self.scheme,
            }) as Box<dyn Signer>
        })
    }

    fn algorithm(&self) -> rustls::SignatureAlgorithm {
        rustls::SignatureAlgorithm::ECDSA
    }
}

#[derive(Debug)]
struct TlsSigner {
    key: Arc<dyn HeldKey>,
    scheme: rustls::SignatureScheme,
}

impl Signer for TlsSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        sign_message(self.key.as_ref(), message)
            .map_err(|e| rustls::Error::General(format!("the held client key did not sign: {e}")))
    }

    fn scheme(&self) -> rustls::SignatureScheme {
        self.scheme
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_integers_are_minimal_and_positive() {
        assert_eq!(
            ecdsa_sig_value(&[0, 0, 0x7f], &[0x80]).unwrap(),
            [0x30, 7, 2, 1, 0x7f, 2, 2, 0, 0x80]
        );
        // P-384 with both top bits set: the longest signature here.
        let p384 = ecdsa_sig_value(&[0xff; 48], &[0xff; 48]).unwrap();
        assert_eq!(&p384[..5], &[0x30, 102, 2, 49, 0]);
        assert_eq!(p384.len(), 104);
    }
}

//! X.509 security provider: a device certificate (chain) and its private key, from files or
//! memory, or held where it cannot be read (a TPM, a secure element). The registration id is
//! the leaf certificate's common name, as the C SDK derives it.

use std::path::Path;
use std::sync::Arc;

use dps_pki::held_key::HeldKey;

use crate::security::{AttestationKind, SecurityProvider};
use crate::ClientError;

/// A device identity made of a PEM certificate chain (leaf first, optionally followed by the
/// intermediates the device should present) and the leaf's private key: a PEM (PKCS#8, SEC1
/// `EC PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`), or a key that signs through a hook
/// ([`X509Provider::with_held_key`]).
#[derive(Clone)]
pub struct X509Provider {
    registration_id: String,
    chain_pem: String,
    key: Key,
}

#[derive(Clone)]
enum Key {
    Pem(String),
    Held(Arc<dyn HeldKey>),
}

impl std::fmt::Debug for X509Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X509Provider")
            .field("registration_id", &self.registration_id)
            .finish_non_exhaustive()
    }
}

impl X509Provider {
    /// From PEM text. Fails when the chain or key does not parse or the leaf has no common name.
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<Self, ClientError> {
        dps_pki::pem::parse_private_key(key_pem).map_err(|e| ClientError::Credential(format!("private key: {e}")))?;
        Self::with_key(chain_pem, Key::Pem(key_pem.to_string()))
    }

    /// From a PEM chain whose leaf certifies `key`, a key held where it cannot be read (for
    /// example [`crate::TpmClientKey`]): the handshakes are signed by its holder. Fails when
    /// the chain does not parse, the leaf has no common name, or it certifies another key.
    pub fn with_held_key(chain_pem: &str, key: Arc<dyn HeldKey>) -> Result<Self, ClientError> {
        Self::with_key(chain_pem, Key::Held(key))
    }

    fn with_key(chain_pem: &str, key: Key) -> Result<Self, ClientError> {
        let certs = dps_pki::pem::parse_certificates(chain_pem)
            .map_err(|e| ClientError::Credential(format!("certificate: {e}")))?;
        let leaf = certs
            .first()
            .ok_or_else(|| ClientError::Credential("no certificate in the chain".into()))?;
        if let Key::Held(key) = &key {
            dps_pki::held_key::certifies(leaf, key.as_ref())
                .map_err(|e| ClientError::Credential(format!("device certificate for {key:?}: {e}")))?;
        }
        let summary =
            dps_pki::info::summarize(leaf).map_err(|e| ClientError::Credential(format!("device certificate: {e}")))?;
        let registration_id = summary.common_name.ok_or_else(|| {
            ClientError::Credential(format!(
                "device certificate '{}' has no common name to use as registration id",
                summary.subject_name
            ))
        })?;
        Ok(Self {
            registration_id,
            chain_pem: chain_pem.to_string(),
            key,
        })
    }

    /// From a certificate (chain) file and a key file.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, ClientError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| ClientError::Credential(format!("cannot read {}: {e}", p.display())))
        };
        Self::from_pem(&read(cert)?, &read(key)?)
    }
}

impl SecurityProvider for X509Provider {
    fn registration_id(&self) -> &str {
        &self.registration_id
    }

    fn kind(&self) -> AttestationKind {
        AttestationKind::X509
    }

    fn tls_identity(&self) -> Option<(String, String)> {
        match &self.key {
            Key::Pem(key_pem) => Some((self.chain_pem.clone(), key_pem.clone())),
            Key::Held(_) => None,
        }
    }

    fn tls_held_identity(&self) -> Option<(String, Arc<dyn HeldKey>)> {
        match &self.key {
            Key::Held(key) => Some((self.chain_pem.clone(), key.clone())),
            Key::Pem(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_id_is_the_common_name() {
        let ca = dps_pki::ca::LocalCa::generate("test CA").unwrap();
        let leaf = ca.issue_server_certificate(&["device-42".to_string()]).unwrap();
        let p = X509Provider::from_pem(&leaf.cert_pem, &leaf.key_pem).unwrap();
        assert_eq!(p.registration_id(), "device-42");
        assert_eq!(p.kind(), AttestationKind::X509);
        assert!(p.sign(b"x").is_err(), "X.509 providers do not sign SAS tokens");
        assert!(!format!("{p:?}").contains("PRIVATE"), "Debug never shows the key");
        assert!(matches!(
            X509Provider::from_pem("junk", &leaf.key_pem),
            Err(ClientError::Credential(_))
        ));
        assert!(matches!(
            X509Provider::from_pem(&leaf.cert_pem, "junk"),
            Err(ClientError::Credential(_))
        ));
    }
}

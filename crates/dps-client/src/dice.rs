//! DICE security provider: the device derives its identity at every boot from its Unique Device
//! Secret (UDS) and a measurement of its firmware, then authenticates with the derived alias
//! certificate as an X.509 device. Nothing secret is stored: a new firmware yields a new alias key
//! and certificate (under the same DeviceID in the TCG scheme).

use dps_dice::{devkit, tcg};

use crate::security::{AttestationKind, SecurityProvider};
use crate::x509::X509Provider;
use crate::ClientError;

/// A DICE-derived X.509 identity.
#[derive(Clone, Debug)]
pub struct DiceProvider {
    x509: X509Provider,
    /// SHA-256 of the measured firmware (what the alias certificate attests).
    pub fwid: [u8; 32],
}

impl DiceProvider {
    /// The layered TCG DICE identity (`dps-dice-v1`): DeviceID from the UDS alone, alias from the
    /// UDS and the firmware digest; the device presents `[alias, DeviceID]`.
    pub fn tcg(
        uds: &[u8; 32],
        firmware: &[u8],
        registration_id: &str,
        opts: &tcg::TcgOptions,
    ) -> Result<Self, ClientError> {
        let id = tcg::tcg_identity(uds, firmware, registration_id, opts)
            .map_err(|e| ClientError::Credential(format!("DICE derivation: {e}")))?;
        Ok(Self {
            x509: X509Provider::from_pem(&id.chain_pem, &id.alias_key_pem)?,
            fwid: id.fwid,
        })
    }

    /// The MXChip DevKit (RIoT) identity, exactly as `dps_cert_gen` and the board derive it: the
    /// device presents only its alias certificate.
    pub fn devkit(uds: &[u8; 32], image: &devkit::FirmwareImage, registration_id: &str) -> Result<Self, ClientError> {
        let id = devkit::devkit_identity(uds, image, registration_id)
            .map_err(|e| ClientError::Credential(format!("DevKit DICE derivation: {e}")))?;
        Ok(Self {
            x509: X509Provider::from_pem(&id.alias_cert_pem, &id.alias_key_pem)?,
            fwid: id.fwid,
        })
    }
}

impl SecurityProvider for DiceProvider {
    fn registration_id(&self) -> &str {
        self.x509.registration_id()
    }

    fn kind(&self) -> AttestationKind {
        AttestationKind::X509
    }

    fn tls_identity(&self) -> Option<(String, String)> {
        self.x509.tls_identity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firmware_update_changes_the_alias_not_the_device_id() {
        let uds = [7u8; 32];
        let opts = tcg::TcgOptions::default();
        let v1 = DiceProvider::tcg(&uds, b"firmware 1.0", "dice-dev-1", &opts).unwrap();
        let again = DiceProvider::tcg(&uds, b"firmware 1.0", "dice-dev-1", &opts).unwrap();
        let v2 = DiceProvider::tcg(&uds, b"firmware 2.0", "dice-dev-1", &opts).unwrap();
        assert_eq!(v1.registration_id(), "dice-dev-1");
        let chain = |p: &DiceProvider| dps_pki::pem::parse_certificates(&p.tls_identity().unwrap().0).unwrap();
        assert_eq!(chain(&v1), chain(&again), "derivation is deterministic");
        assert_ne!(chain(&v1)[0], chain(&v2)[0], "new firmware, new alias certificate");
        assert_eq!(chain(&v1)[1], chain(&v2)[1], "same DeviceID certificate");
        assert_ne!(v1.fwid, v2.fwid);
    }
}

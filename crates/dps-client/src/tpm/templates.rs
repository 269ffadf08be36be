//! The persistent handles and primary-key templates every DPS TPM stack agrees on
//! (device-protocol.md §7.1, hub-dice-tpm.md §C1).
//!
//! Why these exact values: the service identifies a device by its EK's marshalled public area,
//! so a device must produce byte-identical EK/SRK publics on every boot and with every stack
//! (C SDK, Node, this client). Keys already persisted at the handles are always reused first;
//! these templates only matter for a TPM that has none yet. Like the C SDK and Node we use an
//! **empty** `unique` field (the TCG profile's 256 zero bytes would yield a different EK).

use dps_tpm::public::EK_AUTH_POLICY;
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::structures::{
    Digest, EccScheme, HashScheme, Public, PublicBuilder, PublicKeyRsa, PublicRsaParametersBuilder, RsaExponent,
    RsaScheme, SymmetricDefinitionObject,
};

/// Endorsement key (TCG EK handle).
pub const EK_HANDLE: u32 = 0x8101_0001;
/// Storage root key.
pub const SRK_HANDLE: u32 = 0x8100_0001;
/// The HMAC identity key imported from the service's activation blob.
pub const ID_KEY_HANDLE: u32 = 0x8100_0100;
pub(crate) use crate::security::CLIENT_KEY_HANDLE;

/// The template of a client key on `curve`: an unrestricted ECDSA signing key (it signs
/// digests computed outside: a request's, a TLS transcript's) that cannot leave this TPM
/// (`fixedTPM`, `fixedParent`, generated inside: `sensitiveDataOrigin`), used with an empty
/// password.
pub(super) fn client_key_template(curve: EccCurve) -> tss_esapi::Result<Public> {
    let hash = match curve {
        EccCurve::NistP384 => HashingAlgorithm::Sha384,
        _ => HashingAlgorithm::Sha256,
    };
    tss_esapi::utils::create_unrestricted_signing_ecc_public(EccScheme::EcDsa(HashScheme::new(hash)), curve)
}

/// Which primary key a template is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Primary {
    /// The endorsement key, in the endorsement hierarchy.
    Endorsement,
    /// The storage root key, in the owner hierarchy.
    StorageRoot,
}

impl Primary {
    /// The persistent handle the key lives at.
    pub(super) fn handle(self) -> u32 {
        match self {
            Self::Endorsement => EK_HANDLE,
            Self::StorageRoot => SRK_HANDLE,
        }
    }

    /// Short name for messages.
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Endorsement => "EK",
            Self::StorageRoot => "SRK",
        }
    }

    /// The public template: RSA-2048, SHA-256, AES-128-CFB, restricted decryption key. The EK
    /// is admin-with-policy (EK profile); the SRK is usable with an empty password and exempt
    /// from dictionary-attack lockout, as the C SDK's `GetSrkTemplate`.
    pub(super) fn template(self) -> tss_esapi::Result<Public> {
        let attributes = ObjectAttributesBuilder::new()
            .with_fixed_tpm(true)
            .with_fixed_parent(true)
            .with_sensitive_data_origin(true)
            .with_restricted(true)
            .with_decrypt(true);
        let (attributes, policy) = match self {
            Self::Endorsement => (
                attributes.with_admin_with_policy(true),
                Digest::try_from(EK_AUTH_POLICY.to_vec())?,
            ),
            Self::StorageRoot => (attributes.with_user_with_auth(true).with_no_da(true), Digest::default()),
        };
        PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::Rsa)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(attributes.build()?)
            .with_auth_policy(policy)
            .with_rsa_parameters(
                PublicRsaParametersBuilder::new()
                    .with_symmetric(SymmetricDefinitionObject::AES_128_CFB)
                    .with_scheme(RsaScheme::Null)
                    .with_key_bits(RsaKeyBits::Rsa2048)
                    .with_exponent(RsaExponent::default())
                    .with_is_decryption_key(true)
                    .with_restricted(true)
                    .build()?,
            )
            .with_rsa_unique_identifier(PublicKeyRsa::default())
            .build()
    }
}

#[cfg(test)]
mod tests {
    use tss_esapi::traits::Marshall;

    use super::*;

    /// The templates marshal like the EK measured on swtpm (hub-dice-tpm.md §C1:
    /// `013a 0001 000b 000300b2 0020 8371...`, minus the modulus a TPM fills in), and exactly
    /// like the service side's (`dps_tpm`) idea of the EK and SRK templates.
    #[test]
    fn templates_marshal_as_the_reference() {
        let ek = Primary::Endorsement.template().unwrap().marshall().unwrap();
        assert_eq!(&ek[..10], &[0x00, 0x01, 0x00, 0x0b, 0x00, 0x03, 0x00, 0xb2, 0x00, 0x20]);
        assert_eq!(&ek[10..42], &EK_AUTH_POLICY);
        // sym AES(0006) 128(0080) CFB(0043), scheme NULL(0010), 2048 bits, exponent 0, empty unique.
        assert_eq!(&ek[42..], &[0, 6, 0, 0x80, 0, 0x43, 0, 0x10, 8, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(ek, dps_tpm::RsaPublic::endorsement_template(Vec::new()).to_tpmt());
        let srk = Primary::StorageRoot.template().unwrap().marshall().unwrap();
        // fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth|noDA|restricted|decrypt, no policy.
        assert_eq!(
            &srk[..10],
            &[0x00, 0x01, 0x00, 0x0b, 0x00, 0x03, 0x04, 0x72, 0x00, 0x00]
        );
        assert_eq!(srk, dps_tpm::RsaPublic::storage_template(Vec::new()).to_tpmt());
    }
}

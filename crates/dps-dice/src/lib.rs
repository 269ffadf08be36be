//! DICE device identities: deriving a device's keys and certificates from its Unique Device
//! Secret (UDS) and the firmware it runs.
//!
//! # The model
//!
//! DICE (Device Identifier Composition Engine, TCG) gives a device an identity without storing
//! a private key anywhere: at every boot, immutable code reads a per-device secret, the **UDS**,
//! measures (hashes) the next piece of code and combines the two into a **Compound Device
//! Identifier** (CDI). Each layer derives its keys from its CDI, and certifies the keys of the
//! layer after it. Change the code of a layer and its CDI changes, and with it every key derived
//! from that layer on. Two keys matter for provisioning:
//!
//! - the **DeviceID** key, derived from the first CDI. It identifies the device;
//! - the **Alias** key, derived from a later CDI that includes the firmware digest (the
//!   **FWID**). The device uses it in TLS. Its certificate is signed by the DeviceID key and
//!   names the firmware it was derived for.
//!
//! The device presents the Alias certificate as its TLS client certificate; the registration id
//! is the Alias certificate's common name. A firmware update always changes the Alias key and
//! certificate — that is the point: a compromised firmware cannot hold the keys of the firmware
//! it replaced, and the certificate tells the service which firmware is talking.
//!
//! # Two schemes
//!
//! [`tcg`] — the default for new devices. The DeviceID depends on the UDS only, so it is
//! **stable across firmware updates**, and it is a CA certificate (`CA:TRUE, pathLen 0`) that
//! issues the Alias certificate, which carries the TCG `DiceTcbInfo` extension with the firmware
//! digest. The device sends the chain *Alias, DeviceID*. That makes the DeviceID certificate —
//! or the CA that issued it — the thing to enroll:
//!
//! - An **enrollment group** whose certificate is the DeviceID certificate (one group per
//!   device), or the factory CA that issued the DeviceID certificates (one group for the
//!   product line), matches every Alias certificate the device will ever present, whatever the
//!   firmware: the chain *Alias → DeviceID → (CA)* verifies because the DeviceID key and
//!   certificate do not change. A firmware update needs no enrollment change; the new Alias
//!   certificate (new key, new FWID in its `DiceTcbInfo`) provisions the device under the same
//!   registration id, and the service can show the firmware digest from
//!   [`tcg::parse_tcb_info`].
//! - An **individual enrollment** on the Alias certificate also works, but it pins one firmware:
//!   after an update the new Alias certificate has a new thumbprint and the device no longer
//!   matches.
//!
//! [`devkit`] — compatibility with the MXChip IoT DevKit (AZ3166) and its `dps_cert_gen` /
//! `dice_device_enrollment` tool, byte for byte. That scheme derives the DeviceID from a CDI
//! that covers the RIoT Core code, and the Alias from the DeviceID seed plus the FWID, but the
//! device presents **only the Alias certificate**, and its issuer (`CN=devkitdice`) is the same
//! fixed name on every board; the DeviceID certificate is self-signed with fixed names and never
//! leaves the device. So there is nothing stable to enroll as a group: DevKit devices are
//! enrolled individually, by the Alias certificate, and every firmware change (a new FWID, so
//! a new Alias key and certificate) requires regenerating the certificate with the tool and
//! replacing the enrollment. The DevKit also signs with a constant ECDSA nonce, which makes its
//! certificates reproducible off the device but lets anyone with two DevKit signatures compute
//! the DeviceID private key; treat it as a compatibility mode, not as key protection.
//!
//! # What is shared
//!
//! Both schemes take the UDS as 32 bytes ([`parse_uds_hex`] reads the 64-digit hex form the
//! DevKit tooling uses), build their certificates with the RustCrypto `x509-cert`/`der` crates
//! and sign with `p256`, and fail with [`DiceError`].
//!
//! A crate of its own (it was half of `dps-pki`): the service never derives DICE identities —
//! it only verifies the chains they produce, with `dps-pki` — while the device client and the
//! CLI's `dps dice` do.

#![forbid(unsafe_code)]

pub mod devkit;
mod error;
pub mod tcg;
mod x509;

pub use error::DiceError;

/// Length of a UDS in bytes (256 bits, as the DevKit's STSAFE zone and the TCG scheme use).
pub const UDS_LEN: usize = 32;

/// Parses a UDS written as 64 hexadecimal digits, high nibble first (either case, surrounding
/// whitespace ignored).
///
/// This is the form the DevKit's enrollment tool prompts for and the DevKit stores in its
/// security chip, so a UDS copied from either works unchanged.
pub fn parse_uds_hex(text: &str) -> Result<[u8; UDS_LEN], DiceError> {
    let text = text.trim();
    if text.len() != UDS_LEN * 2 {
        return Err(DiceError::InvalidUds(format!(
            "expected {} hexadecimal digits, got {} characters",
            UDS_LEN * 2,
            text.chars().count()
        )));
    }
    let digit = |pos: usize| {
        let b = text.as_bytes()[pos];
        (b as char)
            .to_digit(16)
            .map(|d| d as u8)
            .ok_or_else(|| DiceError::InvalidUds(format!("character {} is not a hexadecimal digit", pos + 1)))
    };
    let mut uds = [0u8; UDS_LEN];
    for (i, byte) in uds.iter_mut().enumerate() {
        *byte = (digit(2 * i)? << 4) | digit(2 * i + 1)?;
    }
    Ok(uds)
}

/// Lower-case hex, for identifiers that appear in names.
pub(crate) fn lower_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uds_hex_round_trips_in_either_case() {
        let text = "19e25a259d0c2be03a02d416c05c48ccd0cc7d1743458aae1cb488b074993eae";
        let uds = parse_uds_hex(text).unwrap();
        assert_eq!(uds[0], 0x19);
        assert_eq!(uds[31], 0xae);
        assert_eq!(lower_hex(&uds), text);
        assert_eq!(parse_uds_hex(&format!(" {}\n", text.to_uppercase())).unwrap(), uds);
    }

    #[test]
    fn uds_hex_rejects_wrong_length_and_non_hex() {
        assert!(matches!(parse_uds_hex(""), Err(DiceError::InvalidUds(_))));
        assert!(matches!(parse_uds_hex(&"0".repeat(63)), Err(DiceError::InvalidUds(_))));
        let err = parse_uds_hex(&format!("{}g", "0".repeat(63))).unwrap_err();
        assert!(err.to_string().contains("character 64"), "{err}");
        // Multi-byte characters must not panic on slicing.
        assert!(parse_uds_hex(&"é".repeat(32)).is_err());
    }
}

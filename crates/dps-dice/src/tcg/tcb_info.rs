//! The TCG `DiceTcbInfo` certificate extension (OID 2.23.133.5.4.1).
//!
//! From the TCG DICE Attestation Architecture:
//!
//! ```text
//! DiceTcbInfo ::= SEQUENCE {
//!     vendor     [0] IMPLICIT UTF8String OPTIONAL,
//!     model      [1] IMPLICIT UTF8String OPTIONAL,
//!     version    [2] IMPLICIT UTF8String OPTIONAL,
//!     svn        [3] IMPLICIT INTEGER OPTIONAL,
//!     layer      [4] IMPLICIT INTEGER OPTIONAL,
//!     index      [5] IMPLICIT INTEGER OPTIONAL,
//!     fwids      [6] IMPLICIT FWIDLIST OPTIONAL,
//!     flags      [7] IMPLICIT OperationalFlags OPTIONAL,
//!     vendorInfo [8] IMPLICIT OCTET STRING OPTIONAL,
//!     type       [9] IMPLICIT OCTET STRING OPTIONAL,
//!     flagsMask  [10] IMPLICIT OperationalFlagsMask OPTIONAL }   -- added in v1.1
//! FWIDLIST ::= SEQUENCE SIZE (1..MAX) OF FWID
//! FWID ::= SEQUENCE { hashAlg OBJECT IDENTIFIER, digest OCTET STRING }
//! OperationalFlags ::= BIT STRING { notConfigured(0), notSecure(1), recovery(2), debug(3) }
//! ```

use der::asn1::{BitString, OctetString};
use der::{Decode, Encode, Sequence};
use x509_cert::spki::ObjectIdentifier;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::DiceError;

/// The TcbInfo extension's OID, dotted.
pub const TCB_INFO_OID: &str = "2.23.133.5.4.1";
/// The OID of SHA-256, as it appears in an [`Fwid`].
pub const SHA256_OID: &str = "2.16.840.1.101.3.4.2.1";

/// What a certificate's `DiceTcbInfo` extension says about the firmware its key belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TcbInfo {
    /// Who made the firmware.
    pub vendor: Option<String>,
    /// The product.
    pub model: Option<String>,
    /// The firmware version, as text.
    pub version: Option<String>,
    /// The security version number (raised when a release fixes a vulnerability).
    pub svn: Option<u64>,
    /// The DICE layer of the measured firmware.
    pub layer: Option<u64>,
    /// Which of several components of one layer this is.
    pub index: Option<u64>,
    /// The firmware digests.
    pub fwids: Vec<Fwid>,
    /// The operational flags, when present.
    pub flags: Option<OperationalFlags>,
    /// Vendor-defined data.
    pub vendor_info: Option<Vec<u8>>,
    /// Vendor-defined type of the measured environment.
    pub tcb_type: Option<Vec<u8>>,
}

impl TcbInfo {
    /// The first SHA-256 firmware digest: in certificates from
    /// [`tcg_identity`](crate::tcg::tcg_identity) this is SHA-256 of the firmware image.
    pub fn sha256_fwid(&self) -> Option<[u8; 32]> {
        self.fwids
            .iter()
            .filter(|f| f.hash_algorithm == SHA256_OID)
            .find_map(|f| f.digest.as_slice().try_into().ok())
    }
}

/// One firmware digest and the hash algorithm that produced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fwid {
    /// The hash algorithm's OID, dotted (e.g. [`SHA256_OID`]).
    pub hash_algorithm: String,
    /// The digest.
    pub digest: Vec<u8>,
}

/// The named bits of `OperationalFlags`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OperationalFlags {
    /// Bit 0: the device is not configured for normal operation.
    pub not_configured: bool,
    /// Bit 1: the device is not in a secure state.
    pub not_secure: bool,
    /// Bit 2: the device is in recovery mode.
    pub recovery: bool,
    /// Bit 3: debug is enabled.
    pub debug: bool,
}

impl OperationalFlags {
    fn from_bits(bits: &BitString) -> OperationalFlags {
        let bit = |n: usize| bits.bits().nth(n).unwrap_or(false);
        OperationalFlags {
            not_configured: bit(0),
            not_secure: bit(1),
            recovery: bit(2),
            debug: bit(3),
        }
    }

    fn to_bits(self) -> Result<BitString, DiceError> {
        let flags = [self.not_configured, self.not_secure, self.recovery, self.debug];
        // DER: named-bit lists drop trailing zero bits.
        let used = flags.iter().rposition(|&f| f).map_or(0, |last| last + 1);
        let mut byte = 0u8;
        for (i, _) in flags.iter().enumerate().filter(|(_, &f)| f) {
            byte |= 0x80 >> i;
        }
        let bytes: &[u8] = if used == 0 { &[] } else { std::slice::from_ref(&byte) };
        Ok(BitString::new(if used == 0 { 0 } else { (8 - used) as u8 }, bytes)?)
    }
}

#[derive(Sequence)]
struct DiceTcbInfo {
    #[asn1(context_specific = "0", tag_mode = "IMPLICIT", optional = "true")]
    vendor: Option<String>,
    #[asn1(context_specific = "1", tag_mode = "IMPLICIT", optional = "true")]
    model: Option<String>,
    #[asn1(context_specific = "2", tag_mode = "IMPLICIT", optional = "true")]
    version: Option<String>,
    #[asn1(context_specific = "3", tag_mode = "IMPLICIT", optional = "true")]
    svn: Option<u64>,
    #[asn1(context_specific = "4", tag_mode = "IMPLICIT", optional = "true")]
    layer: Option<u64>,
    #[asn1(context_specific = "5", tag_mode = "IMPLICIT", optional = "true")]
    index: Option<u64>,
    #[asn1(context_specific = "6", tag_mode = "IMPLICIT", optional = "true")]
    fwids: Option<Vec<FwidAsn1>>,
    #[asn1(context_specific = "7", tag_mode = "IMPLICIT", optional = "true")]
    flags: Option<BitString>,
    #[asn1(context_specific = "8", tag_mode = "IMPLICIT", optional = "true")]
    vendor_info: Option<OctetString>,
    #[asn1(context_specific = "9", tag_mode = "IMPLICIT", optional = "true")]
    tcb_type: Option<OctetString>,
    #[asn1(context_specific = "10", tag_mode = "IMPLICIT", optional = "true")]
    flags_mask: Option<BitString>,
}

#[derive(Sequence)]
struct FwidAsn1 {
    hash_algorithm: ObjectIdentifier,
    digest: OctetString,
}

/// The DER of a `DiceTcbInfo` (the extension value).
pub(crate) fn encode(info: &TcbInfo) -> Result<Vec<u8>, DiceError> {
    let fwids = info
        .fwids
        .iter()
        .map(|f| {
            Ok(FwidAsn1 {
                hash_algorithm: ObjectIdentifier::new(&f.hash_algorithm)
                    .map_err(|e| DiceError::InvalidOptions(format!("FWID hash algorithm: {e}")))?,
                digest: OctetString::new(f.digest.clone())?,
            })
        })
        .collect::<Result<Vec<_>, DiceError>>()?;
    let octets = |v: &Option<Vec<u8>>| v.clone().map(OctetString::new).transpose();
    Ok(DiceTcbInfo {
        vendor: info.vendor.clone(),
        model: info.model.clone(),
        version: info.version.clone(),
        svn: info.svn,
        layer: info.layer,
        index: info.index,
        fwids: (!fwids.is_empty()).then_some(fwids),
        flags: info.flags.map(OperationalFlags::to_bits).transpose()?,
        vendor_info: octets(&info.vendor_info)?,
        tcb_type: octets(&info.tcb_type)?,
        flags_mask: None,
    }
    .to_der()?)
}

/// Decodes a `DiceTcbInfo` extension value.
pub(crate) fn decode(value: &[u8]) -> Option<TcbInfo> {
    let info = DiceTcbInfo::from_der(value).ok()?;
    Some(TcbInfo {
        vendor: info.vendor,
        model: info.model,
        version: info.version,
        svn: info.svn,
        layer: info.layer,
        index: info.index,
        fwids: info
            .fwids
            .unwrap_or_default()
            .into_iter()
            .map(|f| Fwid {
                hash_algorithm: f.hash_algorithm.to_string(),
                digest: f.digest.into_bytes(),
            })
            .collect(),
        flags: info.flags.as_ref().map(OperationalFlags::from_bits),
        vendor_info: info.vendor_info.map(OctetString::into_bytes),
        tcb_type: info.tcb_type.map(OctetString::into_bytes),
    })
}

/// Reads the `DiceTcbInfo` extension of a DER certificate, if it has one that decodes.
///
/// This is what the service shows about a DICE device's firmware (its FWID, version and SVN).
/// It is deliberately lenient: a certificate that does not parse, has no such extension, or
/// carries something else under the OID (the RIoT reference code reused it for its own
/// structure) gives `None` rather than an error, because the extension is informational and
/// never a reason to refuse a device.
pub fn parse_tcb_info(cert_der: &[u8]) -> Option<TcbInfo> {
    let (_, cert) = X509Certificate::from_der(cert_der).ok()?;
    let extension = cert
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == TCB_INFO_OID)?;
    decode(extension.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_uses_implicit_context_tags() {
        let info = TcbInfo {
            vendor: Some("V".into()),
            svn: Some(1),
            fwids: vec![Fwid {
                hash_algorithm: SHA256_OID.into(),
                digest: vec![0xab; 2],
            }],
            flags: Some(OperationalFlags {
                debug: true,
                ..Default::default()
            }),
            ..Default::default()
        };
        let der = encode(&info).unwrap();
        #[rustfmt::skip]
        let expected = [
            0x30, 0x1d,
            0x80, 0x01, b'V',                       // vendor [0] IMPLICIT UTF8String
            0x83, 0x01, 0x01,                       // svn [3] IMPLICIT INTEGER
            0xa6, 0x11,                             // fwids [6] IMPLICIT SEQUENCE OF
            0x30, 0x0f,
            0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
            0x04, 0x02, 0xab, 0xab,
            0x87, 0x02, 0x04, 0x10,                 // flags [7] IMPLICIT BIT STRING: bit 3
        ];
        assert_eq!(der, expected);
        assert_eq!(decode(&der).unwrap(), info);
    }

    #[test]
    fn flags_round_trip() {
        for bits in 0..16u8 {
            let flags = OperationalFlags {
                not_configured: bits & 1 != 0,
                not_secure: bits & 2 != 0,
                recovery: bits & 4 != 0,
                debug: bits & 8 != 0,
            };
            assert_eq!(OperationalFlags::from_bits(&flags.to_bits().unwrap()), flags);
        }
    }

    #[test]
    fn other_structures_under_the_oid_are_ignored() {
        // The RIoT reference's own SEQUENCE { INTEGER 1, ... } under 2.23.133.5.4.1.
        assert!(decode(&[0x30, 0x03, 0x02, 0x01, 0x01]).is_none());
        assert!(decode(b"not der").is_none());
        assert_eq!(decode(&[0x30, 0x00]).unwrap(), TcbInfo::default());
    }
}

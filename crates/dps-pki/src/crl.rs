//! Certificate revocation lists: reading the ones operators import for their CAs (untrusted
//! until their signature verifies with a CA the service knows), and making the ones the
//! service serves for its credential policies' CAs.

use chrono::{DateTime, TimeDelta, Utc};
use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use rustls_pki_types::pem::{PemObject, SectionKind};
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use crate::ca::LocalCa;
use crate::thumbprint::upper_hex;
use crate::PkiError;

/// The largest list accepted: about 100,000 entries.
pub const MAX_CRL_BYTES: usize = 4 * 1024 * 1024;

/// One revoked certificate of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedEntry {
    /// The serial number's DER content bytes, upper-case hex (as [`crate::info`] shows them).
    pub serial_number: String,
    /// When the CA revoked it.
    pub revoked: DateTime<Utc>,
    /// The reason code's name (`keyCompromise`, …), when the list gives one.
    pub reason: Option<String>,
}

/// A parsed revocation list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crl {
    /// The DER bytes.
    pub der: Vec<u8>,
    /// The issuer's distinguished name, as [`crate::info`] shows certificates' names.
    pub issuer: String,
    /// thisUpdate.
    pub this_update: DateTime<Utc>,
    /// nextUpdate, when given.
    pub next_update: Option<DateTime<Utc>>,
    /// The revoked certificates.
    pub entries: Vec<RevokedEntry>,
}

fn invalid(reason: impl Into<String>) -> PkiError {
    PkiError::InvalidCertificate(reason.into())
}

impl Crl {
    /// Reads a list given as PEM (`X509 CRL`) or base64 DER, or as DER bytes.
    pub fn parse_text(text: &str) -> Result<Crl, PkiError> {
        let text = text.trim();
        let der = if text.contains("-----BEGIN") {
            let mut found = None;
            for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(text.as_bytes()) {
                match item.map_err(PkiError::Pem)? {
                    (SectionKind::Crl, der) => {
                        found = Some(der);
                        break;
                    }
                    _ => continue,
                }
            }
            found.ok_or_else(|| invalid("no X509 CRL block in the PEM text"))?
        } else {
            use base64::Engine as _;
            let compact: String = text.split_whitespace().collect();
            base64::engine::general_purpose::STANDARD
                .decode(compact)
                .map_err(PkiError::Base64)?
        };
        Crl::parse(&der)
    }

    /// Reads a DER list.
    pub fn parse(der: &[u8]) -> Result<Crl, PkiError> {
        if der.len() > MAX_CRL_BYTES {
            return Err(invalid(format!(
                "the revocation list is {} bytes; at most {MAX_CRL_BYTES} are accepted",
                der.len()
            )));
        }
        let (rest, crl) =
            CertificateRevocationList::from_der(der).map_err(|e| invalid(format!("not a DER revocation list: {e}")))?;
        if !rest.is_empty() {
            return Err(invalid(format!("{} bytes follow the revocation list", rest.len())));
        }
        let time = |t: x509_parser::time::ASN1Time| crate::info::to_chrono(&t);
        let entries = crl
            .iter_revoked_certificates()
            .map(|r| {
                Ok(RevokedEntry {
                    serial_number: upper_hex(r.raw_serial()),
                    revoked: time(r.revocation_date)?,
                    reason: r.reason_code().map(|(_, code)| format!("{code}")),
                })
            })
            .collect::<Result<Vec<_>, PkiError>>()?;
        Ok(Crl {
            der: der.to_vec(),
            issuer: crl.issuer().to_string(),
            this_update: time(crl.last_update())?,
            next_update: crl.next_update().map(time).transpose()?,
            entries,
        })
    }

    /// Whether the CA certificate `ca_der` signed this list (its subject is the list's issuer
    /// and its key verifies the signature).
    pub fn is_signed_by(&self, ca_der: &[u8]) -> bool {
        let (Ok(ca), Ok((_, crl))) = (
            crate::x509::parse(ca_der),
            CertificateRevocationList::from_der(&self.der),
        ) else {
            return false;
        };
        ca.subject().to_string() == self.issuer && crl.verify_signature(ca.public_key()).is_ok()
    }
}

impl LocalCa {
    /// A revocation list signed by this CA naming `revoked` (serial number bytes as upper-case
    /// hex, with their revocation times), valid from `now` for `validity`.
    pub fn issue_crl(
        &self,
        revoked: &[(String, DateTime<Utc>)],
        now: DateTime<Utc>,
        validity: TimeDelta,
        number: u64,
    ) -> Result<Vec<u8>, PkiError> {
        let offset = |t: DateTime<Utc>| {
            time::OffsetDateTime::from_unix_timestamp(t.timestamp()).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        };
        let revoked_certs = revoked
            .iter()
            .filter_map(|(serial, at)| {
                let bytes = (0..serial.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(serial.get(i..i + 2)?, 16).ok())
                    .collect::<Option<Vec<u8>>>()?;
                Some(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&bytes),
                    revocation_time: offset(*at),
                    reason_code: None,
                    invalidity_date: None,
                })
            })
            .collect();
        let params = CertificateRevocationListParams {
            this_update: offset(now - TimeDelta::minutes(5)),
            next_update: offset(now + validity),
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        self.sign_crl(params)
    }
}

//! TPM endorsement key certificates: the certificate a TPM manufacturer issues for each TPM's
//! endorsement key and stores in the TPM (NV index `0x01C00002` for the RSA-2048 EK). An
//! operator enrolls a TPM by it; the service takes the endorsement key from it and, with the
//! manufacturers' roots configured, checks that a manufacturer issued it.
//!
//! EK certificates are not TLS certificates (no subject at all in many, a critical
//! subjectAltName naming the TPM model, keyUsage keyEncipherment, EKU `tcg-kp-EKCertificate`):
//! only their signatures, validity and the issuers' CA constraints are judged here.

use chrono::{DateTime, Utc};
use x509_parser::public_key::PublicKey;

use crate::PkiError;

/// Most links from an EK certificate to a manufacturer root (EK, intermediates, root).
const MAX_LINKS: usize = 6;

/// The RSA public key of an endorsement key certificate: its modulus (big-endian, without a
/// sign byte) and exponent. Refuses keys the TPM attestation cannot use (anything but RSA-2048).
pub fn rsa_endorsement_key(der: &[u8]) -> Result<(Vec<u8>, u32), PkiError> {
    let cert = crate::x509::parse(der)?;
    match cert.public_key().parsed() {
        Ok(PublicKey::RSA(rsa)) => {
            let modulus: Vec<u8> = rsa.modulus.iter().copied().skip_while(|b| *b == 0).collect();
            if modulus.len() != 256 {
                return Err(PkiError::UnsupportedKey(format!(
                    "the endorsement key is RSA-{}; TPM attestation takes RSA-2048 endorsement keys",
                    modulus.len() * 8
                )));
            }
            let exponent = rsa
                .try_exponent()
                .ok()
                .and_then(|e| u32::try_from(e).ok())
                .ok_or_else(|| PkiError::UnsupportedKey("the endorsement key's exponent is too large".into()))?;
            Ok((modulus, exponent))
        }
        Ok(_) => Err(PkiError::UnsupportedKey(
            "the certificate's key is not RSA; TPM attestation takes RSA-2048 endorsement keys".into(),
        )),
        Err(e) => Err(PkiError::InvalidCertificate(format!(
            "its public key does not parse: {e}"
        ))),
    }
}

/// Checks that `chain[0]` (an EK certificate) was issued, through the other certificates of
/// `chain` (intermediates the operator gave) and of `roots`, by one of `roots`: every link's
/// signature, validity at `now` and the issuers' CA constraints. Returns the root's subject; an
/// error names the certificate where the path ends and why.
pub fn verify_ek_chain(chain: &[Vec<u8>], roots: &[Vec<u8>], now: DateTime<Utc>) -> Result<String, String> {
    let subject = |der: &[u8]| {
        crate::info::summarize(der)
            .map(|s| s.subject_name)
            .unwrap_or_else(|_| "?".into())
    };
    let mut current = chain.first().ok_or("no endorsement key certificate")?.clone();
    let candidates: Vec<(&Vec<u8>, bool)> = chain[1..]
        .iter()
        .map(|c| (c, false))
        .chain(roots.iter().map(|r| (r, true)))
        .collect();
    for _ in 0..MAX_LINKS {
        let issuer = crate::info::summarize(&current)
            .map(|s| s.issuer_name)
            .unwrap_or_default();
        // Only a certificate named as the issuer can be it; why that one fails is the answer.
        let mut failed = None;
        let mut next = None;
        for (candidate, is_root) in candidates.iter().filter(|(c, _)| subject(c) == issuer) {
            match crate::chain::verify_issued_by(&current, candidate, now) {
                Ok(()) => {
                    next = Some(((*candidate).clone(), *is_root));
                    break;
                }
                Err(e) => failed = Some(e.to_string()),
            }
        }
        match next {
            Some((root, true)) => return Ok(subject(&root)),
            Some((intermediate, false)) => current = intermediate,
            None => {
                return Err(match failed {
                    Some(why) => format!(
                        "'{}' does not verify with its issuer '{issuer}': {why}",
                        subject(&current)
                    ),
                    None => format!(
                        "'{}' is issued by '{issuer}', which is neither a configured TPM manufacturer root nor a \
                         given intermediate",
                        subject(&current)
                    ),
                })
            }
        }
    }
    Err(format!(
        "no manufacturer root within {MAX_LINKS} links of the endorsement key certificate"
    ))
}

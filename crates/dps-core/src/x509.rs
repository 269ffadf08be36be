//! Certificate facts for the service API (`X509CertificateInfo`) and the chain checks X.509
//! attestation and proof of possession need, with messages that name the failing certificate.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use dps_pki::info::CertificateSummary;
use dps_proto::model::service::X509CertificateInfo;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

/// Longest chain walked (leaf included).
const MAX_PATH: usize = 8;

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, x509_parser::nom::Err<x509_parser::error::X509Error>> {
    X509Certificate::from_der(der).map(|(_, c)| c)
}

/// The `info` block the service API shows for a certificate.
pub fn info_of(s: &CertificateSummary) -> X509CertificateInfo {
    X509CertificateInfo {
        subject_name: s.subject_name.clone(),
        sha1_thumbprint: s.sha1_thumbprint.clone(),
        sha256_thumbprint: s.sha256_thumbprint.clone(),
        issuer_name: s.issuer_name.clone(),
        not_before_utc: Some(s.not_before),
        not_after_utc: Some(s.not_after),
        serial_number: s.serial_number.clone(),
        version: s.version as i32,
    }
}

fn subject(c: &X509Certificate<'_>) -> String {
    c.subject().to_string()
}

fn check_validity(c: &X509Certificate<'_>, now: DateTime<Utc>, role: &str) -> Result<(), String> {
    let t = now.timestamp();
    let v = c.validity();
    if t < v.not_before.timestamp() {
        return Err(format!("{role} '{}' is not valid before {}", subject(c), v.not_before));
    }
    if t > v.not_after.timestamp() {
        return Err(format!("{role} '{}' expired at {}", subject(c), v.not_after));
    }
    Ok(())
}

/// An issuer must be a CA allowed to sign certificates.
fn check_issuer(c: &X509Certificate<'_>, below: usize) -> Result<(), String> {
    match c.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => {
            if let Some(len) = bc.value.path_len_constraint {
                if (len as usize) < below {
                    return Err(format!(
                        "issuer '{}' allows {len} intermediate(s) below it, the chain has {below}",
                        subject(c)
                    ));
                }
            }
        }
        _ => {
            return Err(format!(
                "issuer '{}' is not a CA (basicConstraints cA is not set)",
                subject(c)
            ))
        }
    }
    if let Ok(Some(ku)) = c.key_usage() {
        if !ku.value.key_cert_sign() {
            return Err(format!(
                "issuer '{}' may not sign certificates (keyUsage lacks keyCertSign)",
                subject(c)
            ));
        }
    }
    Ok(())
}

fn check_leaf_usage(c: &X509Certificate<'_>) -> Result<(), String> {
    if let Ok(Some(eku)) = c.extended_key_usage() {
        if !(eku.value.client_auth || eku.value.any) {
            return Err(format!(
                "device certificate '{}' is not for client authentication (extendedKeyUsage lacks clientAuth)",
                subject(c)
            ));
        }
    }
    Ok(())
}

/// Walks from the leaf (`chain[0]`) upward, finding each issuer among the certificates the device
/// sent and `extra`, until it reaches a certificate whose SHA-256 thumbprint is in `anchors`; checks
/// every link on the way (validity, issuer signature, CA constraints, key usage). Returns the
/// anchor's thumbprint. An enrolled intermediate is a sufficient anchor even when its own issuer
/// is unknown; the leaf itself may be the anchor (individual enrollments).
pub fn verify_to_anchor(
    chain: &[Vec<u8>],
    extra: &[&[u8]],
    anchors: &HashSet<&str>,
    now: DateTime<Utc>,
) -> Result<String, String> {
    let leaf_der = chain.first().ok_or("no certificate was presented")?;
    let leaf = parse(leaf_der).map_err(|e| format!("device certificate cannot be parsed: {e}"))?;
    check_validity(&leaf, now, "device certificate")?;
    check_leaf_usage(&leaf)?;
    let pool: Vec<(&[u8], X509Certificate<'_>)> = chain
        .iter()
        .skip(1)
        .map(Vec::as_slice)
        .chain(extra.iter().copied())
        .filter_map(|d| parse(d).ok().map(|c| (d, c)))
        .collect();
    let (mut der, mut cert): (&[u8], _) = (leaf_der, leaf);
    for depth in 0..MAX_PATH {
        let thumb = dps_pki::thumbprint::sha256_thumbprint(der);
        if anchors.contains(thumb.as_str()) {
            return Ok(thumb);
        }
        let candidates: Vec<&(&[u8], X509Certificate<'_>)> = pool
            .iter()
            .filter(|(d, c)| c.subject().as_raw() == cert.issuer().as_raw() && *d != der)
            .collect();
        if candidates.is_empty() {
            return Err(if cert.subject().as_raw() == cert.issuer().as_raw() {
                format!(
                    "'{}' is self-signed and not enrolled: no enrollment group trusts this chain",
                    subject(&cert)
                )
            } else {
                format!(
                    "unknown issuer '{}' of '{}': it was neither sent by the device nor enrolled",
                    cert.issuer(),
                    subject(&cert)
                )
            });
        }
        let Some((idder, issuer)) = candidates
            .iter()
            .find(|(_, i)| cert.verify_signature(Some(i.public_key())).is_ok())
            .copied()
        else {
            return Err(format!(
                "the signature of '{}' does not verify with the key of its issuer '{}'",
                subject(&cert),
                cert.issuer()
            ));
        };
        check_validity(issuer, now, "issuer")?;
        check_issuer(issuer, depth)?;
        der = idder;
        cert = issuer.clone();
    }
    Err(format!("the chain is longer than {MAX_PATH} certificates"))
}

/// Proof of possession: `leaf` must be a certificate valid now whose signature verifies with
/// `issuer`'s key, and `issuer` must be allowed to sign certificates.
pub fn verify_signed_by(leaf: &[u8], issuer: &[u8], now: DateTime<Utc>) -> Result<(), String> {
    let l = parse(leaf).map_err(|e| format!("cannot be parsed: {e}"))?;
    let i = parse(issuer).map_err(|e| format!("the CA certificate cannot be parsed: {e}"))?;
    check_validity(&l, now, "verification certificate")?;
    if l.issuer().as_raw() != i.subject().as_raw() {
        return Err(format!("it was issued by '{}', not by '{}'", l.issuer(), i.subject()));
    }
    l.verify_signature(Some(i.public_key()))
        .map_err(|_| format!("its signature does not verify with the key of '{}'", i.subject()))?;
    check_issuer(&i, 0)
}

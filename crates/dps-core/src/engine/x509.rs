//! X.509 attestation: the device proved possession of its leaf key in the TLS handshake; here the
//! engine judges the certificates against enrollments (service-api.md §5.1–5.2).
//!
//! - The leaf's common name must be the registration id, and the leaf must be within validity.
//! - An individual enrollment for the registration id takes precedence: the leaf must be its
//!   primary or secondary certificate (by SHA-256 or SHA-1 thumbprint), or chain to one of its
//!   CA references. A disabled individual enrollment blocks the device even when a group would
//!   accept it — Azure's way to revoke one device of a group.
//! - Otherwise the chain is walked from the leaf upward — through the certificates the device sent
//!   and the enrolled ones — and the first certificate enrolled by a group (signing certificate or
//!   verified CA reference) decides the group. Every link on the way is checked (signature,
//!   validity, CA constraints, key usage); failures name the link.

use chrono::{DateTime, Utc};
use dps_proto::model::service::{AttestationType, X509CertificateInfo, X509RegistrationResult};

use super::attestation::{Attested, DeviceRequest, Matched};
use super::groups::{anchors_of, Anchor};
use super::Engine;
use crate::error::{Error, X509Refusal};
use crate::hub::DeviceAuth;

impl Engine {
    pub(super) async fn attest_x509(
        &self,
        now: DateTime<Utc>,
        req: &DeviceRequest,
        chain: &[Vec<u8>],
    ) -> Result<Attested, Error> {
        let leaf = chain.first().ok_or(X509Refusal::NoCertificate)?;
        let summary = dps_pki::info::summarize(leaf).map_err(X509Refusal::Unparsable)?;
        let cn = summary.common_name.clone().ok_or_else(|| X509Refusal::NoCommonName {
            subject: summary.subject_name.clone(),
        })?;
        if !cn.eq_ignore_ascii_case(&req.registration_id) {
            return Err(X509Refusal::CommonNameMismatch {
                common_name: cn,
                registration_id: req.registration_id.clone(),
            }
            .into());
        }
        if now < summary.not_before {
            return Err(X509Refusal::NotYetValid {
                subject: summary.subject_name.clone(),
                not_before: summary.not_before,
            }
            .into());
        }
        if now > summary.not_after {
            return Err(X509Refusal::Expired {
                subject: summary.subject_name.clone(),
                not_after: summary.not_after,
            }
            .into());
        }
        // The device proved it holds the leaf's key: telling it which certificate is revoked
        // tells it nothing it should not know.
        if let Some(revoked) = self.revocations.revoked_in(chain) {
            tracing::info!(registration = %req.registration_id, subject = %revoked.subject, serial = %revoked.serial_number, "revoked device certificate refused");
            return Err(X509Refusal::Revoked {
                subject: revoked.subject,
                serial: revoked.serial_number,
                issuer: revoked.issuer,
            }
            .into());
        }
        let info = crate::x509::info_of(&summary);
        let hub_auth = DeviceAuth::SelfSigned {
            primary_thumbprint: summary.sha256_thumbprint.clone(),
            secondary_thumbprint: summary.sha256_thumbprint.clone(),
        };
        let certificates = self.groups.certificates();

        // Anyone can make a certificate with any CN, so until a chain reaches an enrolled
        // certificate the caller is unauthenticated: every "not enrolled" outcome gets the same
        // answer, which says nothing about which enrollments, groups or CAs exist.
        let not_enrolled = |why: &str| {
            tracing::info!(registration = %req.registration_id, reason = why, "device certificate refused");
            Error::from(X509Refusal::NotEnrolled {
                subject: summary.subject_name.clone(),
                sha256: summary.sha256_thumbprint.clone(),
                registration_id: req.registration_id.clone(),
            })
        };
        if let Some(e) = self.individual_enrollment(&req.registration_id).await? {
            if e.attestation.kind != AttestationType::X509 {
                return Err(not_enrolled(&format!(
                    "the individual enrollment uses {} attestation",
                    e.attestation.kind
                )));
            }
            let anchors = anchors_of(&e.attestation, &certificates);
            let leaf_enrolled = anchors
                .iter()
                .any(|a| a.ca_reference.is_none() && a.sha256 == summary.sha256_thumbprint)
                || e.attestation
                    .x509
                    .as_ref()
                    .and_then(|x| x.client_certificates.as_ref())
                    .into_iter()
                    .flat_map(|c| [c.primary.as_ref(), c.secondary.as_ref()])
                    .flatten()
                    .filter_map(|c| c.info.as_ref())
                    .any(|i| i.sha1_thumbprint.eq_ignore_ascii_case(&summary.sha1_thumbprint));
            if !leaf_enrolled {
                let ca_anchors: Vec<&Anchor> = anchors.iter().filter(|a| a.ca_reference.is_some()).collect();
                if ca_anchors.is_empty() {
                    return Err(not_enrolled(
                        "neither the primary nor the secondary certificate of the individual enrollment",
                    ));
                }
                let (reached, _) = verify_chain(chain, &ca_anchors, now).map_err(|e| e.refusal(&not_enrolled))?;
                check_verified(reached, &format!("individual enrollment '{}'", e.registration_id))?;
            }
            return Ok(Attested {
                matched: Matched::Individual(Box::new(e)),
                attestation: AttestationType::X509,
                hub_auth,
                x509: Some(X509RegistrationResult {
                    certificate_info: Some(info),
                    ..Default::default()
                }),
                tpm: None,
            });
        }

        let groups = self.groups.snapshot();
        let all: Vec<(usize, &Anchor)> = groups
            .iter()
            .enumerate()
            .flat_map(|(i, g)| g.anchors.iter().map(move |a| (i, a)))
            .collect();
        if all.is_empty() {
            return Err(not_enrolled("no individual enrollment and no X.509 enrollment group"));
        }
        let anchors: Vec<&Anchor> = all.iter().map(|(_, a)| *a).collect();
        let (reached, signing) = verify_chain(chain, &anchors, now).map_err(|e| e.refusal(&not_enrolled))?;
        // Several groups may enroll the same certificate; prefer one whose CA reference is verified.
        let candidates: Vec<&(usize, &Anchor)> = all.iter().filter(|(_, a)| a.sha256 == reached.sha256).collect();
        let (gi, anchor) = candidates
            .iter()
            .find(|(_, a)| a.ca_reference.as_ref().is_none_or(|(_, verified)| *verified))
            .or_else(|| candidates.first())
            .map(|(i, a)| (*i, *a))
            .expect("the reached anchor came from this list");
        let group = &groups[gi].group;
        check_verified(anchor, &format!("enrollment group '{}'", group.enrollment_group_id))?;
        Ok(Attested {
            matched: Matched::Group(Box::new(group.clone())),
            attestation: AttestationType::X509,
            hub_auth,
            x509: Some(X509RegistrationResult {
                certificate_info: Some(info),
                enrollment_group_id: Some(group.enrollment_group_id.clone()),
                signing_certificate_info: Some(signing),
            }),
            tpm: None,
        })
    }
}

/// Why [`verify_chain`] refused a chain.
enum ChainRefusal {
    /// Only about what the device itself sent (its certificate's validity, usage, parse errors,
    /// chain length): safe and useful to tell it.
    Presented(Error),
    /// The walk stopped at a missing or non-matching issuer (or one whose signature algorithm
    /// cannot be checked), or at an unenrolled root: telling which would reveal whether a CA
    /// with a given name is enrolled. Failures past a verified signature stay `Presented`: only
    /// a holder of a certificate that CA really issued reaches them.
    NotEnrolled(String),
}

impl ChainRefusal {
    fn refusal(self, not_enrolled: &dyn Fn(&str) -> Error) -> Error {
        match self {
            ChainRefusal::Presented(e) => e,
            ChainRefusal::NotEnrolled(why) => not_enrolled(&why),
        }
    }
}

/// Checks the device chain up to the first enrolled certificate; returns that anchor and its
/// `info` (from the summary the walk already made of it).
fn verify_chain<'a>(
    chain: &[Vec<u8>],
    anchors: &[&'a Anchor],
    now: DateTime<Utc>,
) -> Result<(&'a Anchor, X509CertificateInfo), ChainRefusal> {
    let extra: Vec<&[u8]> = anchors.iter().map(|a| a.der.as_slice()).collect();
    let path = dps_pki::chain::path_to_anchor(
        chain,
        &extra,
        |c| anchors.iter().any(|a| a.sha256 == c.sha256_thumbprint()),
        now,
    )
    .map_err(|e| {
        use dps_pki::chain::ChainError as C;
        match e {
            C::UnknownIssuer { .. } | C::BadSignature { .. } | C::UnsupportedSignature { .. } | C::NoAnchor { .. } => {
                ChainRefusal::NotEnrolled(format!("certificate chain rejected: {e}"))
            }
            other => ChainRefusal::Presented(X509Refusal::Chain(other).into()),
        }
    })?;
    let top = path.top();
    let anchor = anchors
        .iter()
        .find(|a| a.sha256 == top.sha256_thumbprint())
        .expect("path_to_anchor stops only at a certificate the predicate accepted");
    Ok((anchor, crate::x509::info_of(&top.summary)))
}

/// A CA reference counts only once proof of possession is done.
fn check_verified(anchor: &Anchor, whose: &str) -> Result<(), Error> {
    match &anchor.ca_reference {
        Some((name, false)) => Err(X509Refusal::CaNotVerified {
            ca: name.clone(),
            referenced_by: whose.to_string(),
        }
        .into()),
        _ => Ok(()),
    }
}

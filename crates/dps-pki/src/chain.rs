//! X.509 path validation for device certificate chains, with errors that name the failing link.
//!
//! # Why not webpki
//!
//! rustls/webpki verify a chain to a set of trust anchors, but their verdict is a bare
//! `UnknownIssuer`, `BadSignature` or `CertExpired`: it names neither the certificate nor the link
//! that failed. An operator whose factory line stopped provisioning needs "intermediate
//! 'CN=Contoso Int' expired at 2025-01-01T00:00:00Z" or "unknown issuer 'CN=Line 2' of
//! 'CN=dev-7'". Two more things do not fit a trust-anchor verifier:
//!
//! - **Azure's group rule** walks the device's chain upward and lets the *first* enrolled
//!   certificate decide; an enrolled intermediate is a sufficient anchor even when its own root is
//!   unknown (a device that sends only its leaf must work when the issuing intermediate is
//!   enrolled), and the leaf itself may be the enrolled certificate (individual enrollments).
//!   [`path_to_anchor`] therefore takes a predicate and stops at the first certificate it accepts,
//!   without looking at that certificate's issuer.
//! - **Real device certificates are odd.** The MXChip DevKit DICE alias certificate carries a
//!   *critical* subjectAltName that is not valid DER, and TCG DICE certificates carry critical
//!   extensions (TcbInfo) no general-purpose verifier knows. Certificates are read with
//!   x509-parser, which records an unreadable extension instead of failing the certificate, and
//!   only the extensions a check needs are consulted (see below). Unknown critical extensions are
//!   deliberately *not* rejected, for the DICE certificates' sake.
//!
//! So the walk and the policy are written here, while the cryptography stays in maintained
//! crates: signatures are verified by x509-parser's `verify` feature (ring) — ECDSA P-256/P-384
//! with SHA-256/384, RSA PKCS#1 v1.5 with SHA-1/256/384/512, Ed25519 — and RSASSA-PSS (which ring
//! cannot verify with arbitrary salt lengths and x509-parser does not offer) by the RustCrypto
//! `rsa` crate. RSA keys below 2048 bits are refused. SHA-1 RSA signatures are still accepted,
//! as x509-parser (ring's legacy verifier) accepts them, because long-lived device fleets carry
//! them and forging one needs a CA to sign attacker-chosen content; refusing them would be a
//! policy change to make deliberately, in the algorithm table of `verify_signature`.
//!
//! # What is checked
//!
//! For the device certificate (the first presented certificate): validity at `now`, and, when it
//! has an extendedKeyUsage, that it includes clientAuth (or anyExtendedKeyUsage). Being a CA is not
//! held against it (Azure accepts such leaves). For every link `child → issuer` on the way up:
//!
//! - the issuer is a certificate whose subject is the child's issuer name (byte-equal, or equal
//!   after case and whitespace folding), found among the presented certificates and the `extra`
//!   ones (enrolled signing certificates and CA certificates); when several qualify (renewed or
//!   cross-signed CAs) each is tried, those whose subjectKeyIdentifier matches the child's
//!   authorityKeyIdentifier first;
//! - the child's signature verifies with the issuer's public key (and the child's inner and
//!   outer signature algorithms agree);
//! - the issuer is valid at `now`, has basicConstraints cA=TRUE, has keyCertSign if it has a
//!   keyUsage at all, and its pathLenConstraint covers the intermediates below it.
//!
//! An extension a check needs but cannot read (malformed, or present twice) fails that check —
//! it cannot be shown to allow what is asked — while unreadable extensions nobody needs are
//! ignored. Paths are at most [`MAX_PATH_LEN`] certificates long, and a walk gives up after
//! [`MAX_SIGNATURE_CHECKS`] signature verifications so that a device presenting many certificates
//! with the same name cannot make the search expensive.
//!
//! When several candidate paths exist, the walk backtracks; if all fail, the error reported is
//! the one from the path that got furthest up (ties: the first tried), since that is the most
//! specific explanation.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use rustls_pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{BasicConstraints, ExtendedKeyUsage, KeyUsage, ParsedExtension};
use x509_parser::oid_registry::{
    Oid, OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_HASH_SHA256, OID_NIST_HASH_SHA384,
    OID_NIST_HASH_SHA512, OID_PKCS1_RSAENCRYPTION, OID_PKCS1_RSASSAPSS, OID_PKCS1_SHA1WITHRSA, OID_PKCS1_SHA256WITHRSA,
    OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA, OID_SHA1_WITH_RSA, OID_SIG_ECDSA_WITH_SHA256,
    OID_SIG_ECDSA_WITH_SHA384, OID_SIG_ED25519, OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER, OID_X509_EXT_BASIC_CONSTRAINTS,
    OID_X509_EXT_EXTENDED_KEY_USAGE, OID_X509_EXT_KEY_USAGE, OID_X509_EXT_SUBJECT_KEY_IDENTIFIER,
};
use x509_parser::x509::{SubjectPublicKeyInfo, X509Name};

use crate::info::CertificateSummary;

/// The longest path walked, leaf and anchor included. Azure documents no limit; eight covers
/// every real device PKI (root, a few intermediates, DICE DeviceID and alias) with room to spare.
pub const MAX_PATH_LEN: usize = 8;

/// Signature verifications one walk may spend before giving up (see [`ChainError::TooComplex`]).
/// A straight path of [`MAX_PATH_LEN`] needs at most that many plus one (a root's self-signature).
pub const MAX_SIGNATURE_CHECKS: usize = 64;

/// The smallest RSA modulus accepted, as ring and the CA/Browser Forum require.
const MIN_RSA_BITS: usize = 2048;

/// Why a certificate chain was rejected. Every variant names the certificate(s) involved by
/// subject DN, so the message can go to an operator as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// The device presented no certificate at all (a TLS connection without a client
    /// certificate reached X.509 attestation).
    #[error("no certificate was presented")]
    NoCertificate,

    /// A certificate the device presented is not readable X.509 (broken DER, truncated, or an
    /// out-of-range validity time). `index` counts from 0, the device certificate.
    #[error("certificate #{index} of the presented chain cannot be parsed: {reason}")]
    Parse {
        /// Position in the presented chain (0 = device certificate).
        index: usize,
        /// What the parser said.
        reason: String,
    },

    /// The device certificate's subject has no common name; X.509 devices are identified by the
    /// CN of their certificate (it is the registration id).
    #[error("device certificate '{subject}' has no common name (CN); the CN must be the registration id")]
    NoCommonName {
        /// Subject DN of the device certificate.
        subject: String,
    },

    /// A certificate on the path is past its notAfter at `now`.
    #[error("{role} '{subject}' expired at {}", rfc3339(.not_after))]
    Expired {
        /// Where the certificate sits in the chain.
        role: CertRole,
        /// Its subject DN.
        subject: String,
        /// Its notAfter.
        not_after: DateTime<Utc>,
    },

    /// A certificate on the path is before its notBefore at `now` (often a device or server
    /// clock that is off, or a certificate issued with a future start).
    #[error("{role} '{subject}' is not valid before {}", rfc3339(.not_before))]
    NotYetValid {
        /// Where the certificate sits in the chain.
        role: CertRole,
        /// Its subject DN.
        subject: String,
        /// Its notBefore.
        not_before: DateTime<Utc>,
    },

    /// The device certificate has an extendedKeyUsage that allows neither clientAuth nor any
    /// purpose (for example a TLS server certificate), or one that cannot be read.
    #[error("device certificate '{subject}' is not for client authentication (its extendedKeyUsage lacks clientAuth)")]
    LeafEku {
        /// Subject DN of the device certificate.
        subject: String,
    },

    /// No certificate named as `subject`'s issuer was presented by the device or enrolled, and
    /// no certificate below it is enrolled: the walk cannot go on.
    #[error(
        "unknown issuer '{issuer}' of '{subject}': no certificate with that name was presented by the device or is \
         enrolled, and no certificate below it is enrolled"
    )]
    UnknownIssuer {
        /// The certificate whose issuer is missing.
        subject: String,
        /// The issuer DN it names.
        issuer: String,
    },

    /// Certificates named as `subject`'s issuer exist, but the signature of `subject` verifies
    /// with none of their keys: it was signed by another key with the same name, or altered.
    #[error("the signature of '{subject}' does not verify with the key of its issuer '{issuer}'")]
    BadSignature {
        /// The certificate whose signature failed.
        subject: String,
        /// The issuer DN it names.
        issuer: String,
    },

    /// `subject` is signed with an algorithm (or key size) this service does not verify.
    #[error("'{subject}' is signed with {algorithm}, which is not supported")]
    UnsupportedSignature {
        /// The certificate whose signature could not be checked.
        subject: String,
        /// The algorithm, e.g. `ecdsa-with-SHA512` or `RSA with a 1024-bit key`.
        algorithm: String,
    },

    /// `issuer` signed `subject` but is not a CA: its basicConstraints is missing, says cA=FALSE,
    /// or cannot be read.
    #[error("'{issuer}' issued '{subject}' but is not a CA (basicConstraints cA is not set)")]
    IssuerNotCa {
        /// The would-be CA.
        issuer: String,
        /// The certificate it signed.
        subject: String,
    },

    /// `issuer` signed `subject`, but its keyUsage does not include keyCertSign (or cannot be
    /// read), so it may not sign certificates.
    #[error("'{issuer}' issued '{subject}' but its keyUsage does not allow signing certificates (keyCertSign)")]
    IssuerKeyUsage {
        /// The CA whose key usage forbids it.
        issuer: String,
        /// The certificate it signed.
        subject: String,
    },

    /// `issuer`'s pathLenConstraint allows fewer intermediate CAs below it than the chain has.
    #[error(
        "'{issuer}' allows at most {path_len} intermediate CA certificate(s) below it (pathLenConstraint), but the \
         chain has {intermediates}"
    )]
    PathLenExceeded {
        /// The constrained CA.
        issuer: String,
        /// Its pathLenConstraint.
        path_len: u32,
        /// How many (non-self-issued) intermediates are below it on this path.
        intermediates: usize,
    },

    /// The path would need more than [`MAX_PATH_LEN`] certificates to reach an anchor.
    #[error("the certificate chain is longer than {max} certificates")]
    TooLong {
        /// The limit.
        max: usize,
    },

    /// The walk gave up after [`MAX_SIGNATURE_CHECKS`] signature verifications: the presented
    /// and enrolled certificates offer too many candidate issuers with the same names.
    #[error("gave up after {signature_checks} signature checks: too many candidate issuers with the same names")]
    TooComplex {
        /// Signature verifications spent.
        signature_checks: usize,
    },

    /// The walk reached a self-signed certificate (a root, or a self-signed device certificate)
    /// without meeting a certificate the caller accepts as an anchor: nothing in the chain is
    /// enrolled.
    #[error(
        "no enrolled certificate in the chain: it ends at self-signed '{highest}' (SHA-256 {sha256_thumbprint}), \
         which is not enrolled"
    )]
    NoAnchor {
        /// Subject DN of the highest certificate reached.
        highest: String,
        /// Its SHA-256 thumbprint, to compare with enrollments.
        sha256_thumbprint: String,
    },

    /// (PoP and single-link checks) `subject` names another issuer than the CA it was checked
    /// against.
    #[error("'{subject}' was issued by '{issuer}', not by '{ca}'")]
    NotIssuedBy {
        /// The certificate checked.
        subject: String,
        /// The issuer it names.
        issuer: String,
        /// The CA it was expected to be issued by.
        ca: String,
    },
}

/// Where a certificate sits in a chain, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertRole {
    /// The first presented certificate: the device's own.
    Device,
    /// A CA certificate that is not self-issued.
    Intermediate,
    /// A self-issued CA certificate (subject = issuer).
    Root,
    /// A certificate checked on its own, e.g. a proof-of-possession verification certificate.
    Certificate,
}

impl fmt::Display for CertRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CertRole::Device => "device certificate",
            CertRole::Intermediate => "intermediate",
            CertRole::Root => "root",
            CertRole::Certificate => "certificate",
        })
    }
}

/// One certificate of a validated path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathCert {
    /// The certificate.
    pub der: CertificateDer<'static>,
    /// Subject, issuer, CN, SHA-1/SHA-256 thumbprints, validity, serial — what the service API
    /// shows, and what enrollments are matched on.
    pub summary: CertificateSummary,
    /// Position in the path: 0 is the device certificate, 1 its issuer, and so on.
    pub depth: usize,
    /// Its position in the presented chain, when the device sent it.
    pub presented_index: Option<usize>,
    /// Its position in the `extra` certificates, when it is one of them (so the caller can tell
    /// which enrolled certificate this is without comparing thumbprints).
    pub extra_index: Option<usize>,
}

impl PathCert {
    /// Subject DN as `CN=…, O=…`.
    pub fn subject(&self) -> &str {
        &self.summary.subject_name
    }

    /// The subject's first common name.
    pub fn common_name(&self) -> Option<&str> {
        self.summary.common_name.as_deref()
    }

    /// SHA-1 thumbprint, upper-case hex.
    pub fn sha1_thumbprint(&self) -> &str {
        &self.summary.sha1_thumbprint
    }

    /// SHA-256 thumbprint, upper-case hex.
    pub fn sha256_thumbprint(&self) -> &str {
        &self.summary.sha256_thumbprint
    }

    /// Whether `thumbprint` is this certificate's SHA-1 or SHA-256 thumbprint. Case and `:`/space
    /// separators are ignored, since users paste thumbprints from tools that print them so.
    pub fn matches_thumbprint(&self, thumbprint: &str) -> bool {
        let clean: String = thumbprint.chars().filter(|c| !matches!(c, ':' | ' ' | '-')).collect();
        clean.eq_ignore_ascii_case(self.sha256_thumbprint()) || clean.eq_ignore_ascii_case(self.sha1_thumbprint())
    }
}

/// How a validated path ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathEnd {
    /// At the first certificate the caller's `is_anchor` accepted (the last in the path). Its
    /// own issuer was not looked at.
    Anchor,
    /// At a self-signed certificate (a root, or a self-signed device certificate).
    SelfSignedRoot,
    /// At a certificate whose issuer was neither presented nor among the extra certificates.
    IssuerNotFound,
}

/// A path whose every link was checked: `certs[0]` is the device certificate, each next one the
/// issuer of the one before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedPath {
    /// Leaf first, then upward.
    pub certs: Vec<PathCert>,
    /// Why the path stops where it does.
    pub end: PathEnd,
}

impl VerifiedPath {
    /// The device certificate.
    pub fn leaf(&self) -> &PathCert {
        &self.certs[0]
    }

    /// The highest certificate of the path.
    pub fn top(&self) -> &PathCert {
        self.certs.last().unwrap_or(&self.certs[0])
    }

    /// The certificate `is_anchor` accepted, for paths from [`path_to_anchor`].
    pub fn anchor(&self) -> Option<&PathCert> {
        (self.end == PathEnd::Anchor).then(|| self.top())
    }
}

/// What X.509 attestation needs from the device certificate alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafInfo {
    /// The subject CN, which is the registration id.
    pub registration_id: String,
    /// The facts the service API shows (thumbprints, subject, validity, …).
    pub summary: CertificateSummary,
}

/// Reads the device certificate: its CN (the registration id) and its summary. Neither validity
/// nor usage is judged here; [`path_to_anchor`] does that.
pub fn leaf_info(der: &[u8]) -> Result<LeafInfo, ChainError> {
    let summary = crate::info::summarize(der).map_err(|e| parse_error(0, e))?;
    match summary.common_name.clone() {
        Some(cn) if !cn.is_empty() => Ok(LeafInfo {
            registration_id: cn,
            summary,
        }),
        _ => Err(ChainError::NoCommonName {
            subject: summary.subject_name,
        }),
    }
}

/// Walks from the device certificate (`presented[0]`) upward and stops at the first certificate
/// for which `is_anchor` returns true, checking every link on the way.
///
/// This is Azure's X.509 rule: the caller's `is_anchor` answers "is this certificate enrolled?"
/// (by thumbprint, see [`PathCert::matches_thumbprint`]), and the first enrolled certificate met
/// decides. The leaf is asked first (`depth == 0`, individual enrollments), then its issuer, and so
/// on; callers matching only groups return false for depth 0. The anchor's validity and CA
/// constraints are checked (as the issuer of the link below it, or as the device certificate), but
/// its own issuer is not looked for: an enrolled intermediate suffices even when its root is
/// unknown.
///
/// `presented` is what the device sent in TLS (leaf first, possibly only the leaf); `extra` are
/// further certificates that may serve as intermediates or anchors (enrolled signing certificates,
/// registered CA certificates). Unreadable `extra` certificates are skipped; unreadable presented
/// ones are an error. Errors: anything in [`ChainError`]; in particular [`ChainError::NoAnchor`]
/// when the walk reaches a self-signed certificate not accepted, and [`ChainError::UnknownIssuer`]
/// when it runs out of certificates before meeting an anchor.
pub fn path_to_anchor<P, E>(
    presented: &[P],
    extra: &[E],
    is_anchor: impl FnMut(&PathCert) -> bool,
    now: DateTime<Utc>,
) -> Result<VerifiedPath, ChainError>
where
    P: AsRef<[u8]>,
    E: AsRef<[u8]>,
{
    CertPool::new(extra).path_to_anchor(presented, is_anchor, now)
}

/// Walks from the device certificate (`presented[0]`) as high as the certificates allow — to a
/// self-signed root, or to the last certificate whose issuer is not available — checking every
/// link, and returns that path.
///
/// Use [`path_to_anchor`] to judge a device against enrollments: a failure above an enrolled
/// intermediate (say, an expired root) makes this function fail, but must not reject a device
/// whose group enrolls the intermediate.
pub fn verify_path<P, E>(presented: &[P], extra: &[E], now: DateTime<Utc>) -> Result<VerifiedPath, ChainError>
where
    P: AsRef<[u8]>,
    E: AsRef<[u8]>,
{
    CertPool::new(extra).verify_path(presented, now)
}

/// Checks one link: `cert` is valid at `now`, names `issuer` as its issuer, and is signed by its
/// key; `issuer` is valid at `now` and a CA allowed to sign certificates.
///
/// For proof of possession, where the verification certificate must be signed by the CA being
/// verified. Parse errors use index 0 for `cert` and 1 for `issuer`.
pub fn verify_issued_by(cert: &[u8], issuer: &[u8], now: DateTime<Utc>) -> Result<(), ChainError> {
    let child = Parsed::new(cert, 0).map_err(|e| parse_error(0, e))?;
    let ca = Parsed::new(issuer, 0).map_err(|e| parse_error(1, e))?;
    check_validity(&child.cert, CertRole::Certificate, now)?;
    if !names_match(child.cert.issuer(), ca.cert.subject()) {
        return Err(ChainError::NotIssuedBy {
            subject: name(child.cert.subject()),
            issuer: name(child.cert.issuer()),
            ca: name(ca.cert.subject()),
        });
    }
    match verify_signature(&child.cert, ca.cert.public_key()) {
        Sig::Valid => {}
        Sig::Invalid => {
            return Err(ChainError::BadSignature {
                subject: name(child.cert.subject()),
                issuer: name(child.cert.issuer()),
            })
        }
        Sig::Unsupported(algorithm) => {
            return Err(ChainError::UnsupportedSignature {
                subject: name(child.cert.subject()),
                algorithm,
            })
        }
    }
    check_issuer(&child.cert, &ca.cert, 0, now)
}

/// Certificates that may serve as intermediates or anchors, parsed once.
///
/// [`path_to_anchor`] and [`verify_path`] build one per call; a caller that walks several chains
/// against the same enrolled certificates (or wants to parse them once per snapshot) can build
/// it itself. It borrows the DER, so building it copies nothing.
#[derive(Debug)]
pub struct CertPool<'a> {
    entries: Vec<Parsed<'a>>,
}

impl<'a> CertPool<'a> {
    /// Parses `certs`; unreadable ones are skipped (they can never be an issuer). Positions in
    /// `certs` are kept and reported as [`PathCert::extra_index`].
    pub fn new<C>(certs: &'a [C]) -> CertPool<'a>
    where
        C: AsRef<[u8]>,
    {
        let entries = certs
            .iter()
            .enumerate()
            .filter_map(|(i, c)| Parsed::new(c.as_ref(), i).ok())
            .collect();
        CertPool { entries }
    }

    /// How many certificates were readable.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no certificate was readable.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// [`path_to_anchor`] with this pool as the extra certificates.
    pub fn path_to_anchor<P, F>(
        &self,
        presented: &[P],
        is_anchor: F,
        now: DateTime<Utc>,
    ) -> Result<VerifiedPath, ChainError>
    where
        P: AsRef<[u8]>,
        F: FnMut(&PathCert) -> bool,
    {
        self.walk(presented, Some(is_anchor), now)
    }

    /// [`verify_path`] with this pool as the extra certificates.
    pub fn verify_path<P>(&self, presented: &[P], now: DateTime<Utc>) -> Result<VerifiedPath, ChainError>
    where
        P: AsRef<[u8]>,
    {
        self.walk(presented, None::<fn(&PathCert) -> bool>, now)
    }

    fn walk<P, F>(&self, presented: &[P], is_anchor: Option<F>, now: DateTime<Utc>) -> Result<VerifiedPath, ChainError>
    where
        P: AsRef<[u8]>,
        F: FnMut(&PathCert) -> bool,
    {
        if presented.is_empty() {
            return Err(ChainError::NoCertificate);
        }
        let presented: Vec<Parsed<'_>> = presented
            .iter()
            .enumerate()
            .map(|(i, c)| Parsed::new(c.as_ref(), i).map_err(|e| parse_error(i, e)))
            .collect::<Result<_, _>>()?;
        let leaf = &presented[0].cert;
        check_validity(leaf, CertRole::Device, now)?;
        check_leaf_eku(leaf)?;

        let mut walk = Walk {
            presented: &presented,
            pool: &self.entries,
            is_anchor,
            now,
            signature_checks: 0,
        };
        let mut path = vec![walk.step(Node::Presented(0), 0)];
        match walk.extend(&mut path) {
            Ok(end) => Ok(VerifiedPath {
                certs: path.into_iter().map(|s| s.cert).collect(),
                end,
            }),
            Err(failure) => Err(failure.error),
        }
    }
}

/// A certificate parsed from borrowed DER, with its position in the list it came from.
#[derive(Debug)]
struct Parsed<'a> {
    der: &'a [u8],
    cert: X509Certificate<'a>,
    index: usize,
}

impl<'a> Parsed<'a> {
    fn new(der: &'a [u8], index: usize) -> Result<Parsed<'a>, crate::PkiError> {
        let cert = crate::x509::parse(der)?;
        // Validity must be representable, so that every later summary succeeds.
        crate::info::to_chrono(&cert.validity().not_before)?;
        crate::info::to_chrono(&cert.validity().not_after)?;
        Ok(Parsed { der, cert, index })
    }
}

fn parse_error(index: usize, e: crate::PkiError) -> ChainError {
    ChainError::Parse {
        index,
        reason: e.to_string(),
    }
}

/// A certificate of the walk: one the device presented, or one of the pool.
#[derive(Debug, Clone, Copy)]
enum Node {
    Presented(usize),
    Pool(usize),
}

struct Step {
    node: Node,
    cert: PathCert,
}

/// Why a branch of the walk failed, and how far up it got.
struct Failure {
    depth: usize,
    error: ChainError,
    /// Aborts the whole walk (the signature budget is spent).
    fatal: bool,
}

impl Failure {
    fn at(depth: usize, error: ChainError) -> Failure {
        Failure {
            depth,
            error,
            fatal: false,
        }
    }
}

struct Walk<'w, F> {
    presented: &'w [Parsed<'w>],
    pool: &'w [Parsed<'w>],
    is_anchor: Option<F>,
    now: DateTime<Utc>,
    signature_checks: usize,
}

impl<'w, F: FnMut(&PathCert) -> bool> Walk<'w, F> {
    /// The certificate behind `node`, borrowed from the lists rather than from the walk, so it
    /// can be held across the walk's mutable steps.
    fn get(&self, node: Node) -> &'w Parsed<'w> {
        match node {
            Node::Presented(i) => &self.presented[i],
            Node::Pool(i) => &self.pool[i],
        }
    }

    fn step(&self, node: Node, depth: usize) -> Step {
        let p = self.get(node);
        let summary = crate::info::summarize_parsed(p.der, &p.cert)
            .expect("validity was checked to be representable when the certificate was parsed");
        let presented_index = self.presented.iter().find(|q| q.der == p.der).map(|q| q.index);
        let extra_index = self.pool.iter().find(|q| q.der == p.der).map(|q| q.index);
        Step {
            node,
            cert: PathCert {
                der: CertificateDer::from(p.der.to_vec()),
                summary,
                depth,
                presented_index,
                extra_index,
            },
        }
    }

    fn verify(
        &mut self,
        cert: &X509Certificate<'_>,
        spki: &SubjectPublicKeyInfo<'_>,
        depth: usize,
    ) -> Result<Sig, Failure> {
        if self.signature_checks >= MAX_SIGNATURE_CHECKS {
            return Err(Failure {
                depth,
                error: ChainError::TooComplex {
                    signature_checks: self.signature_checks,
                },
                fatal: true,
            });
        }
        self.signature_checks += 1;
        Ok(verify_signature(cert, spki))
    }

    /// Extends `path` (whose last certificate has been checked) upward until an anchor, a root
    /// or a missing issuer. On success `path` is the validated path; on failure it is unchanged.
    fn extend(&mut self, path: &mut Vec<Step>) -> Result<PathEnd, Failure> {
        let depth = path.len() - 1;
        let top = path[depth].node;
        if let Some(is_anchor) = self.is_anchor.as_mut() {
            if is_anchor(&path[depth].cert) {
                return Ok(PathEnd::Anchor);
            }
        }
        let anchored = self.is_anchor.is_some();

        // A self-signed certificate ends the path. Self-issued ones (same name, another key, as
        // in a CA key rollover) go on to their issuer. A self-signature in an algorithm that
        // cannot be checked still ends it: nothing above a self-named certificate can be found.
        let top_cert = &self.get(top).cert;
        let (subject, issuer) = (name(top_cert.subject()), name(top_cert.issuer()));
        if self_issued(top_cert) && !matches!(self.verify(top_cert, top_cert.public_key(), depth)?, Sig::Invalid) {
            return if anchored {
                Err(Failure::at(
                    depth,
                    ChainError::NoAnchor {
                        highest: subject,
                        sha256_thumbprint: path[depth].cert.summary.sha256_thumbprint.clone(),
                    },
                ))
            } else {
                Ok(PathEnd::SelfSignedRoot)
            };
        }

        let candidates = self.candidates(top, path);
        if candidates.is_empty() {
            return if anchored {
                Err(Failure::at(depth, ChainError::UnknownIssuer { subject, issuer }))
            } else {
                Ok(PathEnd::IssuerNotFound)
            };
        }
        if path.len() >= MAX_PATH_LEN {
            return Err(Failure::at(depth, ChainError::TooLong { max: MAX_PATH_LEN }));
        }

        let mut best: Option<Failure> = None;
        let mut signed = false;
        let mut unsupported: Option<String> = None;
        for candidate in candidates {
            let ca = &self.get(candidate).cert;
            match self.verify(top_cert, ca.public_key(), depth)? {
                Sig::Valid => signed = true,
                Sig::Invalid => continue,
                Sig::Unsupported(algorithm) => {
                    unsupported.get_or_insert(algorithm);
                    continue;
                }
            }
            let below = path[1..]
                .iter()
                .filter(|s| !self_issued(&self.get(s.node).cert))
                .count();
            let result = match check_issuer(top_cert, ca, below, self.now) {
                Err(error) => Err(Failure::at(depth + 1, error)),
                Ok(()) => {
                    path.push(self.step(candidate, depth + 1));
                    let result = self.extend(path);
                    if result.is_err() {
                        path.pop();
                    }
                    result
                }
            };
            match result {
                Ok(end) => return Ok(end),
                Err(f) if f.fatal => return Err(f),
                Err(f) => {
                    if best.as_ref().is_none_or(|b| f.depth > b.depth) {
                        best = Some(f);
                    }
                }
            }
        }
        Err(match (best, signed, unsupported) {
            (Some(best), _, _) => best,
            (None, false, Some(algorithm)) => {
                Failure::at(depth, ChainError::UnsupportedSignature { subject, algorithm })
            }
            _ => Failure::at(depth, ChainError::BadSignature { subject, issuer }),
        })
    }

    /// Certificates named as the issuer of `child`, not already on the path, each once; those
    /// whose subjectKeyIdentifier matches the child's authorityKeyIdentifier first, those with a
    /// different one last, presented before extra within each group.
    fn candidates(&self, child: Node, path: &[Step]) -> Vec<Node> {
        let c = &self.get(child).cert;
        let aki = authority_key_id(c);
        let all = (1..self.presented.len())
            .map(Node::Presented)
            .chain((0..self.pool.len()).map(Node::Pool));
        let mut found: Vec<(u8, Node)> = Vec::new();
        for node in all {
            let p = self.get(node);
            if !names_match(c.issuer(), p.cert.subject())
                || path.iter().any(|s| self.get(s.node).der == p.der)
                || found.iter().any(|(_, n)| self.get(*n).der == p.der)
            {
                continue;
            }
            let rank = match (aki, subject_key_id(&p.cert)) {
                (Some(a), Some(s)) if a == s => 0,
                (Some(_), Some(_)) => 2,
                _ => 1,
            };
            found.push((rank, node));
        }
        found.sort_by_key(|(rank, _)| *rank);
        found.into_iter().map(|(_, n)| n).collect()
    }
}

fn rfc3339(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn name(n: &X509Name<'_>) -> String {
    n.to_string()
}

fn self_issued(c: &X509Certificate<'_>) -> bool {
    names_match(c.subject(), c.issuer())
}

fn role_of_issuer(c: &X509Certificate<'_>) -> CertRole {
    if self_issued(c) {
        CertRole::Root
    } else {
        CertRole::Intermediate
    }
}

/// Whether two names are the same: byte-equal, or with the same attributes whose string values
/// are equal after trimming, collapsing whitespace and ignoring case (a simplification of the
/// RFC 5280 §7.1 comparison that catches re-encoded names, e.g. PrintableString vs UTF8String).
/// A false match costs only a failed signature check.
fn names_match(a: &X509Name<'_>, b: &X509Name<'_>) -> bool {
    if a.as_raw() == b.as_raw() {
        return true;
    }
    let (ra, rb): (Vec<_>, Vec<_>) = (a.iter().collect(), b.iter().collect());
    ra.len() == rb.len()
        && ra.iter().zip(&rb).all(|(x, y)| {
            let (xa, ya): (Vec<_>, Vec<_>) = (x.iter().collect(), y.iter().collect());
            xa.len() == ya.len()
                && xa.iter().zip(&ya).all(|(p, q)| {
                    p.attr_type() == q.attr_type()
                        && match (p.as_str(), q.as_str()) {
                            (Ok(s), Ok(t)) => fold(s) == fold(t),
                            _ => p.attr_value() == q.attr_value(),
                        }
                })
        })
}

fn fold(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

/// An extension as a check sees it.
enum Ext<'e, T> {
    Absent,
    Present(&'e T),
    /// Present but malformed, or present more than once.
    Unreadable,
}

fn extension<'e, T>(
    cert: &'e X509Certificate<'_>,
    oid: &Oid<'_>,
    pick: impl FnOnce(&'e ParsedExtension<'_>) -> Option<&'e T>,
) -> Ext<'e, T> {
    match cert.get_extension_unique(oid) {
        Err(_) => Ext::Unreadable,
        Ok(None) => Ext::Absent,
        Ok(Some(ext)) => pick(ext.parsed_extension()).map_or(Ext::Unreadable, Ext::Present),
    }
}

fn basic_constraints<'e>(c: &'e X509Certificate<'_>) -> Ext<'e, BasicConstraints> {
    extension(c, &OID_X509_EXT_BASIC_CONSTRAINTS, |e| match e {
        ParsedExtension::BasicConstraints(bc) => Some(bc),
        _ => None,
    })
}

fn key_usage<'e>(c: &'e X509Certificate<'_>) -> Ext<'e, KeyUsage> {
    extension(c, &OID_X509_EXT_KEY_USAGE, |e| match e {
        ParsedExtension::KeyUsage(ku) => Some(ku),
        _ => None,
    })
}

fn extended_key_usage<'e>(c: &'e X509Certificate<'_>) -> Ext<'e, ExtendedKeyUsage<'e>> {
    extension(c, &OID_X509_EXT_EXTENDED_KEY_USAGE, |e| match e {
        ParsedExtension::ExtendedKeyUsage(eku) => Some(eku),
        _ => None,
    })
}

/// Key identifiers only order candidates, so an unreadable one is simply unknown.
fn authority_key_id<'e>(c: &'e X509Certificate<'_>) -> Option<&'e [u8]> {
    match c.get_extension_unique(&OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER) {
        Ok(Some(ext)) => match ext.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.as_ref().map(|k| k.0),
            _ => None,
        },
        _ => None,
    }
}

fn subject_key_id<'e>(c: &'e X509Certificate<'_>) -> Option<&'e [u8]> {
    match c.get_extension_unique(&OID_X509_EXT_SUBJECT_KEY_IDENTIFIER) {
        Ok(Some(ext)) => match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0),
            _ => None,
        },
        _ => None,
    }
}

fn check_validity(c: &X509Certificate<'_>, role: CertRole, now: DateTime<Utc>) -> Result<(), ChainError> {
    let v = c.validity();
    let t = now.timestamp();
    let time = |t: &x509_parser::time::ASN1Time| crate::info::to_chrono(t).unwrap_or_default();
    if t < v.not_before.timestamp() {
        return Err(ChainError::NotYetValid {
            role,
            subject: name(c.subject()),
            not_before: time(&v.not_before),
        });
    }
    if t > v.not_after.timestamp() {
        return Err(ChainError::Expired {
            role,
            subject: name(c.subject()),
            not_after: time(&v.not_after),
        });
    }
    Ok(())
}

fn check_leaf_eku(c: &X509Certificate<'_>) -> Result<(), ChainError> {
    match extended_key_usage(c) {
        Ext::Absent => Ok(()),
        Ext::Present(eku) if eku.client_auth || eku.any => Ok(()),
        _ => Err(ChainError::LeafEku {
            subject: name(c.subject()),
        }),
    }
}

/// The checks on `issuer` as the signer of `child` (the signature itself is checked by the
/// caller): validity, cA, keyCertSign, and pathLenConstraint against the `below` intermediates
/// (not counting self-issued ones, RFC 5280 §6.1.4) between it and the device certificate.
fn check_issuer(
    child: &X509Certificate<'_>,
    issuer: &X509Certificate<'_>,
    below: usize,
    now: DateTime<Utc>,
) -> Result<(), ChainError> {
    check_validity(issuer, role_of_issuer(issuer), now)?;
    let names = || (name(issuer.subject()), name(child.subject()));
    let path_len = match basic_constraints(issuer) {
        Ext::Present(bc) if bc.ca => bc.path_len_constraint,
        _ => {
            let (issuer, subject) = names();
            return Err(ChainError::IssuerNotCa { issuer, subject });
        }
    };
    match key_usage(issuer) {
        Ext::Absent => {}
        Ext::Present(ku) if ku.key_cert_sign() => {}
        _ => {
            let (issuer, subject) = names();
            return Err(ChainError::IssuerKeyUsage { issuer, subject });
        }
    }
    if let Some(path_len) = path_len {
        if below > path_len as usize {
            return Err(ChainError::PathLenExceeded {
                issuer: name(issuer.subject()),
                path_len,
                intermediates: below,
            });
        }
    }
    Ok(())
}

/// The outcome of one signature verification.
enum Sig {
    Valid,
    /// Not signed by this key (or altered, or the key cannot have made this kind of signature).
    Invalid,
    /// The algorithm or key size is not one this service verifies; says which.
    Unsupported(String),
}

/// Verifies `cert`'s signature with `spki`.
fn verify_signature(cert: &X509Certificate<'_>, spki: &SubjectPublicKeyInfo<'_>) -> Sig {
    // RFC 5280 §4.1.1.2: the outer algorithm must equal the one inside the signed part, or the
    // algorithm used for verification is not the one the signer committed to. Such a
    // certificate is malformed rather than forged, and reported as such.
    if cert.signature_algorithm != cert.tbs_certificate.signature {
        return Sig::Unsupported("mismatched inner and outer signature algorithms".into());
    }
    let alg = &cert.signature_algorithm.algorithm;
    let key_alg = &spki.algorithm.algorithm;
    let is_rsa_key = *key_alg == OID_PKCS1_RSAENCRYPTION || *key_alg == OID_PKCS1_RSASSAPSS;
    if *alg == OID_PKCS1_RSASSAPSS {
        return if is_rsa_key {
            verify_pss(cert, spki)
        } else {
            Sig::Invalid
        };
    }
    let pkcs1 = [
        &OID_PKCS1_SHA1WITHRSA,
        &OID_SHA1_WITH_RSA,
        &OID_PKCS1_SHA256WITHRSA,
        &OID_PKCS1_SHA384WITHRSA,
        &OID_PKCS1_SHA512WITHRSA,
    ];
    if pkcs1.contains(&alg) {
        if *key_alg != OID_PKCS1_RSAENCRYPTION {
            return Sig::Invalid;
        }
        if let Some(unsupported) = small_rsa_key(&spki.subject_public_key.data) {
            return unsupported;
        }
    } else if *alg == OID_SIG_ECDSA_WITH_SHA256 || *alg == OID_SIG_ECDSA_WITH_SHA384 {
        if *key_alg != OID_KEY_TYPE_EC_PUBLIC_KEY {
            return Sig::Invalid;
        }
        let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
        match curve {
            Some(c) if c == OID_EC_P256 || c == OID_NIST_EC_P384 => {}
            Some(c) => return Sig::Unsupported(format!("ECDSA on the curve {}", oid_name(&c))),
            None => return Sig::Invalid,
        }
    } else if *alg == OID_SIG_ED25519 {
        if *key_alg != OID_SIG_ED25519 {
            return Sig::Invalid;
        }
    } else {
        return Sig::Unsupported(oid_name(alg));
    }
    match x509_parser::verify::verify_signature(
        spki,
        &cert.signature_algorithm,
        &cert.signature_value,
        cert.tbs_certificate.as_ref(),
    ) {
        Ok(()) => Sig::Valid,
        Err(x509_parser::error::X509Error::SignatureUnsupportedAlgorithm) => Sig::Unsupported(oid_name(alg)),
        Err(_) => Sig::Invalid,
    }
}

/// `Some(Unsupported)` for an RSA key below [`MIN_RSA_BITS`], `Some(Invalid)` for one that is not
/// an RSAPublicKey at all.
fn small_rsa_key(rsa_public_key: &[u8]) -> Option<Sig> {
    use rsa::pkcs1::DecodeRsaPublicKey;
    use rsa::traits::PublicKeyParts;
    match rsa::RsaPublicKey::from_pkcs1_der(rsa_public_key) {
        Err(_) => Some(Sig::Invalid),
        Ok(key) => {
            let bits = key.n().bits();
            (bits < MIN_RSA_BITS).then(|| Sig::Unsupported(format!("RSA with a {bits}-bit key")))
        }
    }
}

/// RSASSA-PSS (RFC 4055) with SHA-256/384/512 and MGF1 over the same hash, any salt length.
fn verify_pss(cert: &X509Certificate<'_>, spki: &SubjectPublicKeyInfo<'_>) -> Sig {
    use rsa::pkcs1::DecodeRsaPublicKey;
    use rsa::Pss;
    use sha2::{Digest, Sha256, Sha384, Sha512};
    use x509_parser::signature_algorithm::SignatureAlgorithm;

    let unsupported = |what: &str| Sig::Unsupported(format!("RSASSA-PSS {what}"));
    let params = match SignatureAlgorithm::try_from(&cert.signature_algorithm) {
        Ok(SignatureAlgorithm::RSASSA_PSS(params)) => params,
        _ => return unsupported("with unreadable parameters"),
    };
    let hash = params.hash_algorithm_oid().clone();
    const MGF1: &str = "1.2.840.113549.1.1.8";
    match params.mask_gen_algorithm() {
        Ok(mgf) if mgf.mgf.to_id_string() == MGF1 && mgf.hash == hash => {}
        _ => return unsupported("with a mask generation other than MGF1 over the signature hash"),
    }
    if params.trailer_field() != 1 {
        return unsupported("with a trailer field other than 1");
    }
    if let Some(sig) = small_rsa_key(&spki.subject_public_key.data) {
        return sig;
    }
    let Ok(key) = rsa::RsaPublicKey::from_pkcs1_der(&spki.subject_public_key.data) else {
        return Sig::Invalid;
    };
    let salt = params.salt_length() as usize;
    let tbs = cert.tbs_certificate.as_ref();
    let sig = &cert.signature_value.data;
    let result = if hash == OID_NIST_HASH_SHA256 {
        key.verify(Pss::new_with_salt::<Sha256>(salt), &Sha256::digest(tbs), sig)
    } else if hash == OID_NIST_HASH_SHA384 {
        key.verify(Pss::new_with_salt::<Sha384>(salt), &Sha384::digest(tbs), sig)
    } else if hash == OID_NIST_HASH_SHA512 {
        key.verify(Pss::new_with_salt::<Sha512>(salt), &Sha512::digest(tbs), sig)
    } else {
        return unsupported(&format!("with the hash {}", oid_name(&hash)));
    };
    if result.is_ok() {
        Sig::Valid
    } else {
        Sig::Invalid
    }
}

/// An OID by its registered short name when x509-parser knows it, dotted otherwise.
fn oid_name(oid: &Oid<'_>) -> String {
    x509_parser::oid_registry::OidRegistry::default()
        .with_all_crypto()
        .with_x509()
        .get(oid)
        .map(|e| e.sn().to_owned())
        .unwrap_or_else(|| oid.to_id_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dn(pairs: &[(rcgen::DnType, &str)]) -> rcgen::DistinguishedName {
        let mut dn = rcgen::DistinguishedName::new();
        for (t, v) in pairs {
            dn.push(t.clone(), *v);
        }
        dn
    }

    fn cert_with_name(name: rcgen::DistinguishedName) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = name;
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn names_match_ignores_encoding_case_and_spacing() {
        let a = cert_with_name(dn(&[(rcgen::DnType::CommonName, "Contoso  Int")]));
        let mut printable = rcgen::DistinguishedName::new();
        printable.push(
            rcgen::DnType::CommonName,
            rcgen::DnValue::PrintableString("contoso int".try_into().unwrap()),
        );
        let b = cert_with_name(printable);
        let c = cert_with_name(dn(&[(rcgen::DnType::CommonName, "Contoso Int 2")]));
        let d = cert_with_name(dn(&[
            (rcgen::DnType::CommonName, "Contoso Int"),
            (rcgen::DnType::OrganizationName, "Contoso"),
        ]));
        let parse = |d: &[u8]| crate::x509::parse(d).map(|c| c.subject().as_raw().to_vec()).unwrap();
        assert_ne!(parse(&a), parse(&b), "the encodings differ");
        let (pa, pb, pc, pd) = (
            crate::x509::parse(&a).unwrap(),
            crate::x509::parse(&b).unwrap(),
            crate::x509::parse(&c).unwrap(),
            crate::x509::parse(&d).unwrap(),
        );
        assert!(names_match(pa.subject(), pb.subject()));
        assert!(!names_match(pa.subject(), pc.subject()));
        assert!(!names_match(pa.subject(), pd.subject()));
    }

    #[test]
    fn thumbprint_matching_is_lenient_about_format() {
        let der = cert_with_name(dn(&[(rcgen::DnType::CommonName, "x")]));
        let pc = PathCert {
            der: CertificateDer::from(der.clone()),
            summary: crate::info::summarize(&der).unwrap(),
            depth: 0,
            presented_index: Some(0),
            extra_index: None,
        };
        let sha256 = pc.sha256_thumbprint().to_owned();
        assert!(pc.matches_thumbprint(&sha256.to_lowercase()));
        let colons: Vec<String> = sha256
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).into())
            .collect();
        assert!(pc.matches_thumbprint(&colons.join(":")));
        assert!(pc.matches_thumbprint(pc.sha1_thumbprint()));
        assert!(!pc.matches_thumbprint(&sha256[..40]));
    }

    #[test]
    fn times_read_as_rfc3339() {
        let t = DateTime::from_timestamp(1_735_689_600, 0).unwrap();
        let e = ChainError::Expired {
            role: CertRole::Intermediate,
            subject: "CN=Contoso Int".into(),
            not_after: t,
        };
        assert_eq!(
            e.to_string(),
            "intermediate 'CN=Contoso Int' expired at 2025-01-01T00:00:00Z"
        );
    }
}

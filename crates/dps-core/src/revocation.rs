//! Revoked certificates (decision 0040): what the operator revoked by hand and what imported
//! revocation lists say, as one index every X.509 check reads — DPS registration
//! ([`crate::Engine`]'s X.509 attestation) and the embedded hubs' device authentication.
//!
//! Azure DPS has no revocation list (a device is blocked by disabling its enrollment); fleets
//! with per-device certificates ask for one, so dps keeps it beside its other resources and
//! answers a revoked certificate with `401` naming it.

use std::collections::HashSet;
use std::sync::Arc;

use arc_swap::ArcSwap;
use dps_pki::thumbprint::normalize_hex;
use dps_proto::model::revocation::Revocation;
use sha2::{Digest, Sha256};

/// A serial number as compared: upper-case hex, no separators, no leading zeros (`0` for zero).
pub fn normalize_serial(serial: &str) -> String {
    let hex = normalize_hex(serial);
    match hex.trim_start_matches('0') {
        "" => "0".into(),
        trimmed => trimmed.to_string(),
    }
}

/// A distinguished name as compared: case and the spaces after separators do not matter.
pub fn normalize_name(name: &str) -> String {
    name.split(',')
        .map(|part| part.trim().to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(",")
}

/// The id of the entry revoking `serial` of `issuer` (both as given; normalized here), the
/// same whoever revokes it.
pub fn serial_id(issuer: &str, serial: &str) -> String {
    let digest = Sha256::digest(normalize_name(issuer).as_bytes());
    let short: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("sn-{short}-{}", normalize_serial(serial).to_ascii_lowercase())
}

/// The id of the entry revoking a certificate by its SHA-256 thumbprint.
pub fn thumbprint_id(sha256: &str) -> String {
    format!("tp-{}", normalize_hex(sha256).to_ascii_lowercase())
}

/// Whom a check is about: a certificate's SHA-256 thumbprint, issuer and serial number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateId {
    /// SHA-256 thumbprint (any case).
    pub sha256_thumbprint: String,
    /// The issuer's distinguished name.
    pub issuer: String,
    /// The serial number (hex).
    pub serial_number: String,
    /// The subject, for the message.
    pub subject: String,
}

impl CertificateId {
    /// The facts of a DER certificate; `None` when it does not parse (the caller refuses it
    /// for that already).
    pub fn of(der: &[u8]) -> Option<CertificateId> {
        let s = dps_pki::info::summarize(der).ok()?;
        Some(CertificateId {
            sha256_thumbprint: s.sha256_thumbprint,
            issuer: s.issuer_name,
            serial_number: s.serial_number,
            subject: s.subject_name,
        })
    }
}

#[derive(Default)]
struct Index {
    thumbprints: HashSet<String>,
    /// (normalized issuer, normalized serial).
    serials: HashSet<(String, String)>,
}

/// The revoked certificates, swapped whole when they change: a check reads without a lock
/// and costs nothing while nothing is revoked.
#[derive(Default)]
pub struct RevocationSet {
    index: ArcSwap<Index>,
    /// Bumped on every [`RevocationSet::replace`]: what was made from the set (a served
    /// revocation list) is stale once it moved.
    generation: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for RevocationSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let index = self.index.load();
        f.debug_struct("RevocationSet")
            .field("thumbprints", &index.thumbprints.len())
            .field("serials", &index.serials.len())
            .finish()
    }
}

impl RevocationSet {
    /// An empty set, shared.
    pub fn new() -> Arc<RevocationSet> {
        Arc::new(RevocationSet::default())
    }

    /// Makes `entries` the revoked certificates.
    pub fn replace<'a>(&self, entries: impl IntoIterator<Item = &'a Revocation>) {
        let mut index = Index::default();
        for e in entries {
            if let Some(t) = &e.sha256_thumbprint {
                index.thumbprints.insert(normalize_hex(t));
            }
            if let (Some(issuer), Some(serial)) = (&e.issuer, &e.serial_number) {
                index.serials.insert((normalize_name(issuer), normalize_serial(serial)));
            }
        }
        self.index.store(Arc::new(index));
        self.generation.fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    /// How many times the set was replaced.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// How many entries (thumbprints and serials) are revoked.
    pub fn len(&self) -> usize {
        let index = self.index.load();
        index.thumbprints.len() + index.serials.len()
    }

    /// Whether nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `cert` is revoked, by its thumbprint or by its issuer and serial number.
    pub fn is_revoked(&self, cert: &CertificateId) -> bool {
        let index = self.index.load();
        if index.thumbprints.is_empty() && index.serials.is_empty() {
            return false;
        }
        index.thumbprints.contains(&normalize_hex(&cert.sha256_thumbprint))
            || index
                .serials
                .contains(&(normalize_name(&cert.issuer), normalize_serial(&cert.serial_number)))
    }

    /// The first revoked certificate of a DER chain (leaf first), if any.
    pub fn revoked_in(&self, chain: &[Vec<u8>]) -> Option<CertificateId> {
        if self.is_empty() {
            return None;
        }
        chain
            .iter()
            .filter_map(|der| CertificateId::of(der))
            .find(|c| self.is_revoked(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(issuer: Option<&str>, serial: Option<&str>, thumbprint: Option<&str>) -> Revocation {
        Revocation {
            id: "x".into(),
            issuer: issuer.map(str::to_string),
            serial_number: serial.map(str::to_string),
            sha256_thumbprint: thumbprint.map(str::to_string),
            source: "manual".into(),
            ..Default::default()
        }
    }

    #[test]
    fn serials_issuers_and_thumbprints_compare_loosely() {
        assert_eq!(normalize_serial("00:0a:FF"), "AFF");
        assert_eq!(normalize_serial("000"), "0");
        assert_eq!(
            normalize_name("CN=Contoso Root,  O=Contoso"),
            "cn=contoso root,o=contoso"
        );
        assert_eq!(normalize_hex("ab:cd"), "ABCD");
        assert_eq!(
            normalize_hex("ab_cd"),
            "AB_CD",
            "other characters stay, for the hex check"
        );
        assert_eq!(serial_id("CN=A, O=B", "0a"), serial_id("cn=a,o=b", "A"));
        assert_ne!(serial_id("CN=A", "0a"), serial_id("CN=B", "0a"));
        assert_eq!(thumbprint_id("AB:CD"), "tp-abcd");
    }

    #[test]
    fn a_certificate_is_revoked_by_thumbprint_or_by_issuer_and_serial() {
        let set = RevocationSet::default();
        let cert = |t: &str, issuer: &str, serial: &str| CertificateId {
            sha256_thumbprint: t.into(),
            issuer: issuer.into(),
            serial_number: serial.into(),
            subject: "CN=d".into(),
        };
        assert!(!set.is_revoked(&cert("AA", "CN=Root", "01")));
        set.replace(&[
            entry(Some("CN=Root, O=Contoso"), Some("00:1F"), None),
            entry(None, None, Some("bb")),
        ]);
        assert_eq!(set.len(), 2);
        assert!(set.is_revoked(&cert("AA", "cn=root,o=contoso", "1F")));
        assert!(
            !set.is_revoked(&cert("AA", "CN=Other", "1F")),
            "the same serial of another CA"
        );
        assert!(!set.is_revoked(&cert("AA", "CN=Root, O=Contoso", "20")));
        assert!(set.is_revoked(&cert("BB", "CN=Other", "99")));
        set.replace(&[]);
        assert!(set.is_empty());
        assert!(!set.is_revoked(&cert("BB", "CN=Other", "99")));
    }
}

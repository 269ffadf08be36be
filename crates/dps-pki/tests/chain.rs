//! Chain validation with real certificates: the paths X.509 attestation accepts, and every way a
//! link can fail, each reported with the certificate that failed.

use chrono::{Datelike, TimeDelta, TimeZone, Utc};
use dps_pki::ca::{DeviceCertificateRequest, IssuedCertificate, KeyAlgorithm, LocalCa};
use dps_pki::chain::{
    leaf_info, path_to_anchor, verify_issued_by, verify_path, CertPool, CertRole, ChainError, PathCert, PathEnd,
    MAX_PATH_LEN, MAX_SIGNATURE_CHECKS,
};
use dps_pki::pem::parse_certificates;
use dps_pki::thumbprint::{sha1_thumbprint, sha256_thumbprint};
use dps_pki::CertificateDer;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

type Der = CertificateDer<'static>;

const DEVKIT_PEM: &str = include_str!("fixtures/devkit-dps-sample.pem");
const DEVKIT_SHA256: &str = "AA86870A58EA46A789B6E76984FB212133E91D86246E5448CCED19B6EC155EE2";
const PSS_ROOT: &str = include_str!("fixtures/rsa-pss-root.crt");
const PSS_LEAF: &str = include_str!("fixtures/rsa-pss-leaf.crt");

fn der(pem: &str) -> Der {
    parse_certificates(pem).unwrap().remove(0)
}

fn leaf_der(issued: &IssuedCertificate) -> Der {
    der(&issued.cert_pem)
}

fn thumb(d: &[u8]) -> String {
    sha256_thumbprint(d)
}

fn never(_: &PathCert) -> bool {
    false
}

fn subjects(path: &[PathCert]) -> Vec<&str> {
    path.iter().map(|c| c.subject()).collect()
}

/// Root → intermediate (pathLen 0) → device, all P-256, as `dps ca` makes them.
struct Pki {
    root: LocalCa,
    int: LocalCa,
    leaf: Der,
}

fn pki() -> Pki {
    let root = LocalCa::generate("Contoso Root").unwrap();
    let int = root
        .issue_intermediate("Contoso Int", Some(0), KeyAlgorithm::EcdsaP256)
        .unwrap();
    let leaf = leaf_der(
        &int.issue_device_certificate("dev-1", 365, KeyAlgorithm::EcdsaP256)
            .unwrap(),
    );
    Pki { root, int, leaf }
}

/// A certificate made directly with rcgen, for shapes `LocalCa` refuses to make.
struct Raw {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Raw {
    fn der(&self) -> Der {
        self.cert.der().clone()
    }
}

fn params(cn: &str, ca: bool) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.use_authority_key_identifier_extension = true;
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(Utc::now().year() + 5, 1, 1);
    if ca {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    } else {
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    }
    p
}

fn raw(p: CertificateParams, issuer: Option<&Raw>) -> Raw {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = match issuer {
        Some(i) => p.signed_by(&key, &i.cert, &i.key).unwrap(),
        None => p.self_signed(&key).unwrap(),
    };
    Raw { cert, key }
}

// ---------------------------------------------------------------------------------------------
// Paths that are accepted

#[test]
fn full_chain_presented_reaches_the_root() {
    let p = pki();
    let presented = [p.leaf.clone(), p.int.cert_der(), p.root.cert_der()];
    let path = verify_path(&presented, &[] as &[Der], Utc::now()).unwrap();
    assert_eq!(path.end, PathEnd::SelfSignedRoot);
    assert_eq!(subjects(&path.certs), ["CN=dev-1", "CN=Contoso Int", "CN=Contoso Root"]);
    for (i, c) in path.certs.iter().enumerate() {
        assert_eq!(c.depth, i);
        assert_eq!(c.presented_index, Some(i));
        assert_eq!(c.extra_index, None);
        assert_eq!(c.der, presented[i]);
        assert_eq!(c.sha256_thumbprint(), thumb(&presented[i]));
        assert_eq!(c.sha1_thumbprint(), sha1_thumbprint(&presented[i]));
    }
    assert_eq!(path.leaf().common_name(), Some("dev-1"));
    assert_eq!(path.anchor(), None);

    // The chain as `dps ca` writes it for a device: leaf followed by the intermediate's chain.
    let mut presented = vec![p.leaf.clone()];
    presented.extend(p.int.chain_der());
    let root = thumb(&p.root.cert_der());
    let path = path_to_anchor(&presented, &[] as &[Der], |c| c.sha256_thumbprint() == root, Utc::now()).unwrap();
    assert_eq!(path.end, PathEnd::Anchor);
    assert_eq!(path.anchor().unwrap().subject(), "CN=Contoso Root");
}

#[test]
fn leaf_only_device_chains_through_enrolled_certificates() {
    let p = pki();
    let path = verify_path(std::slice::from_ref(&p.leaf), &[p.int.cert_der()], Utc::now()).unwrap();
    assert_eq!(path.end, PathEnd::IssuerNotFound);
    assert_eq!(subjects(&path.certs), ["CN=dev-1", "CN=Contoso Int"]);
    assert_eq!(path.certs[1].extra_index, Some(0));
    assert_eq!(path.certs[1].presented_index, None);

    // Extra certificates in any order, with unrelated and unreadable ones among them.
    let other = LocalCa::generate("Fabrikam Root").unwrap();
    let extra: Vec<Vec<u8>> = vec![
        other.cert_der().to_vec(),
        b"not a certificate".to_vec(),
        p.root.cert_der().to_vec(),
        p.int.cert_der().to_vec(),
    ];
    let path = verify_path(std::slice::from_ref(&p.leaf), &extra, Utc::now()).unwrap();
    assert_eq!(path.end, PathEnd::SelfSignedRoot);
    assert_eq!(subjects(&path.certs), ["CN=dev-1", "CN=Contoso Int", "CN=Contoso Root"]);
    assert_eq!(path.certs[1].extra_index, Some(3));
    assert_eq!(path.certs[2].extra_index, Some(2));
    assert_eq!(CertPool::new(&extra).len(), 3, "the unreadable one is skipped");
}

#[test]
fn an_enrolled_intermediate_suffices_without_its_root() {
    let p = pki();
    let int = thumb(&p.int.cert_der());
    let path = path_to_anchor(
        std::slice::from_ref(&p.leaf),
        &[p.int.cert_der()],
        |c| c.sha256_thumbprint() == int,
        Utc::now(),
    )
    .unwrap();
    assert_eq!(path.certs.len(), 2);
    assert_eq!(path.anchor().unwrap().subject(), "CN=Contoso Int");
    assert_eq!(path.anchor().unwrap().extra_index, Some(0));

    // The same when the device sends the intermediate itself and nothing is extra.
    let path = path_to_anchor(
        &[p.leaf.clone(), p.int.cert_der()],
        &[] as &[Der],
        |c| c.matches_thumbprint(&int.to_lowercase()),
        Utc::now(),
    )
    .unwrap();
    assert_eq!(path.anchor().unwrap().presented_index, Some(1));

    // What lies above the anchor is not judged: here a "root" with the intermediate's issuer
    // name but another key, which makes the full path fail.
    let impostor = LocalCa::generate("Contoso Root").unwrap();
    let extra = [p.int.cert_der(), impostor.cert_der()];
    assert!(matches!(
        verify_path(std::slice::from_ref(&p.leaf), &extra, Utc::now()),
        Err(ChainError::BadSignature { ref subject, ref issuer })
            if subject == "CN=Contoso Int" && issuer == "CN=Contoso Root"
    ));
    let path = path_to_anchor(
        std::slice::from_ref(&p.leaf),
        &extra,
        |c| c.sha256_thumbprint() == int,
        Utc::now(),
    )
    .unwrap();
    assert_eq!(path.certs.len(), 2);
}

#[test]
fn enrolled_root_anchors_and_the_first_enrolled_certificate_wins() {
    let p = pki();
    let root_sha1 = sha1_thumbprint(&p.root.cert_der());
    let int = thumb(&p.int.cert_der());
    let extra = [p.int.cert_der(), p.root.cert_der()];

    // A group on the root, matched by SHA-1.
    let path = path_to_anchor(
        std::slice::from_ref(&p.leaf),
        &extra,
        |c| c.matches_thumbprint(&root_sha1),
        Utc::now(),
    )
    .unwrap();
    assert_eq!(path.anchor().unwrap().subject(), "CN=Contoso Root");
    assert_eq!(path.certs.len(), 3);

    // Groups on both: walking up from the leaf, the intermediate is met first (Azure's rule).
    let mut asked = Vec::new();
    let path = path_to_anchor(
        std::slice::from_ref(&p.leaf),
        &extra,
        |c| {
            asked.push(c.depth);
            c.depth > 0 && (c.matches_thumbprint(&root_sha1) || c.sha256_thumbprint() == int)
        },
        Utc::now(),
    )
    .unwrap();
    assert_eq!(path.anchor().unwrap().subject(), "CN=Contoso Int");
    assert_eq!(asked, [0, 1], "the leaf is asked first, then upward");
}

#[test]
fn an_enrolled_leaf_is_a_path_of_one() {
    let p = pki();
    let leaf = thumb(&p.leaf);
    let path = path_to_anchor(
        std::slice::from_ref(&p.leaf),
        &[] as &[Der],
        |c| c.sha256_thumbprint() == leaf,
        Utc::now(),
    )
    .unwrap();
    assert_eq!(path.certs.len(), 1);
    assert_eq!(path.end, PathEnd::Anchor);
    assert_eq!(path.anchor().unwrap().depth, 0);

    // A self-signed device certificate, the usual individual-enrollment case.
    let own = raw(params("self-signed-dev", false), None);
    let t = thumb(&own.der());
    let path = path_to_anchor(&[own.der()], &[] as &[Der], |c| c.sha256_thumbprint() == t, Utc::now()).unwrap();
    assert_eq!(path.certs.len(), 1);
    // Not enrolled: it is its own root, so nothing in the chain is enrolled.
    let err = path_to_anchor(&[own.der()], &[] as &[Der], never, Utc::now()).unwrap_err();
    assert_eq!(
        err,
        ChainError::NoAnchor {
            highest: "CN=self-signed-dev".into(),
            sha256_thumbprint: t.clone()
        }
    );
    let path = verify_path(&[own.der()], &[] as &[Der], Utc::now()).unwrap();
    assert_eq!(path.end, PathEnd::SelfSignedRoot);
}

#[test]
fn devkit_alias_certificate_anchored_by_its_own_thumbprint() {
    // The MXChip DevKit alias certificate: critical subjectAltName that is not valid DER,
    // critical EKU clientAuth, issued by the DevKit's DeviceID key ("devkitdice").
    let devkit = der(DEVKIT_PEM);
    let now = Utc.with_ymd_and_hms(2027, 6, 1, 0, 0, 0).unwrap();
    let path = path_to_anchor(
        std::slice::from_ref(&devkit),
        &[] as &[Der],
        |c| c.sha256_thumbprint() == DEVKIT_SHA256,
        now,
    )
    .unwrap();
    assert_eq!(path.certs.len(), 1);
    assert_eq!(path.leaf().common_name(), Some("devkit-dps-sample"));

    let info = leaf_info(&devkit).unwrap();
    assert_eq!(info.registration_id, "devkit-dps-sample");
    assert_eq!(info.summary.sha256_thumbprint, DEVKIT_SHA256);

    // Not enrolled, and its issuer is nowhere: the message names both.
    let err = path_to_anchor(std::slice::from_ref(&devkit), &[] as &[Der], never, now).unwrap_err();
    assert_eq!(
        err,
        ChainError::UnknownIssuer {
            subject: "CN=devkit-dps-sample, C=US, O=DEVKIT_TEST".into(),
            issuer: "CN=devkitdice, C=US, O=DEVKIT_TEST".into(),
        }
    );
    // Its validity still counts when it is the anchor.
    let later = Utc.with_ymd_and_hms(2037, 1, 2, 0, 0, 0).unwrap();
    assert!(matches!(
        path_to_anchor(&[devkit], &[] as &[Der], |_| true, later),
        Err(ChainError::Expired {
            role: CertRole::Device,
            ..
        })
    ));
}

#[test]
fn rsa_2048_chain() {
    let root = LocalCa::generate_with("RSA Root", KeyAlgorithm::Rsa2048).unwrap();
    let int = root.issue_intermediate("RSA Int", None, KeyAlgorithm::Rsa2048).unwrap();
    let rsa_leaf = leaf_der(
        &int.issue_device_certificate("rsa-dev", 30, KeyAlgorithm::Rsa2048)
            .unwrap(),
    );
    let ec_leaf = leaf_der(
        &int.issue_device_certificate("ec-dev", 30, KeyAlgorithm::EcdsaP256)
            .unwrap(),
    );
    for leaf in [rsa_leaf, ec_leaf] {
        let path = verify_path(
            std::slice::from_ref(&leaf),
            &[int.cert_der(), root.cert_der()],
            Utc::now(),
        )
        .unwrap();
        assert_eq!(path.end, PathEnd::SelfSignedRoot);
        assert_eq!(path.certs.len(), 3);
    }
}

#[test]
fn rsa_pss_signatures_verify() {
    // Made with OpenSSL (rcgen cannot sign PSS): RSA-PSS SHA-256, salt 32.
    let (root, leaf) = (der(PSS_ROOT), der(PSS_LEAF));
    let now = Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap();
    let path = verify_path(std::slice::from_ref(&leaf), std::slice::from_ref(&root), now).unwrap();
    assert_eq!(
        path.end,
        PathEnd::SelfSignedRoot,
        "the root's own PSS signature verifies too"
    );
    assert_eq!(subjects(&path.certs), ["CN=pss-device", "CN=PSS Test Root"]);

    let mut tampered = leaf.to_vec();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert_eq!(
        verify_path(&[tampered], &[root], now).unwrap_err(),
        ChainError::BadSignature {
            subject: "CN=pss-device".into(),
            issuer: "CN=PSS Test Root".into()
        }
    );
}

#[test]
fn renewed_ca_with_the_same_name_and_key_is_found_by_backtracking() {
    // Two certificates for one intermediate key: an expired one and its renewal. Both verify the
    // leaf's signature; only the renewal passes, whichever order they come in.
    let root = raw(params("Renew Root", true), None);
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut old = params("Renew Int", true);
    old.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let old = old.signed_by(&key, &root.cert, &root.key).unwrap();
    let new = params("Renew Int", true)
        .signed_by(&key, &root.cert, &root.key)
        .unwrap();
    let new = Raw { cert: new, key };
    let leaf = raw(params("renew-dev", false), Some(&new)).der();

    for extra in [vec![old.der().clone(), new.der()], vec![new.der(), old.der().clone()]] {
        let root_t = thumb(&root.der());
        let mut extra = extra;
        extra.push(root.der());
        let path = path_to_anchor(
            std::slice::from_ref(&leaf),
            &extra,
            |c| c.sha256_thumbprint() == root_t,
            Utc::now(),
        )
        .unwrap();
        assert_eq!(path.certs[1].der, new.der());
    }
    // With only the expired one, that is what the error names.
    let err = verify_path(&[leaf], &[old.der().clone()], Utc::now()).unwrap_err();
    assert!(matches!(
        err,
        ChainError::Expired { role: CertRole::Intermediate, ref subject, .. } if subject == "CN=Renew Int"
    ));
    assert!(err
        .to_string()
        .starts_with("intermediate 'CN=Renew Int' expired at 2021-01-01T00:00:00Z"));
}

// ---------------------------------------------------------------------------------------------
// Every failure, with the certificate it names

#[test]
fn expired_device_certificate() {
    let p = pki();
    let old = leaf_der(
        &p.int
            .issue_device_certificate_with(&DeviceCertificateRequest {
                validity_days: 30,
                valid_from: Some(Utc::now() - TimeDelta::days(400)),
                ..DeviceCertificateRequest::new("dev-old")
            })
            .unwrap(),
    );
    let err = verify_path(&[old], &[p.int.cert_der()], Utc::now()).unwrap_err();
    let ChainError::Expired {
        role,
        ref subject,
        not_after,
    } = err
    else {
        panic!("unexpected {err:?}")
    };
    assert_eq!((role, subject.as_str()), (CertRole::Device, "CN=dev-old"));
    assert!(not_after < Utc::now() - TimeDelta::days(360));
    assert!(err
        .to_string()
        .starts_with("device certificate 'CN=dev-old' expired at "));
    assert!(err.to_string().ends_with("T00:00:00Z"));
}

#[test]
fn not_yet_valid_device_certificate() {
    let p = pki();
    let future = leaf_der(
        &p.int
            .issue_device_certificate_with(&DeviceCertificateRequest {
                valid_from: Some(Utc::now() + TimeDelta::days(10)),
                ..DeviceCertificateRequest::new("dev-future")
            })
            .unwrap(),
    );
    let err = path_to_anchor(&[future], &[p.int.cert_der()], |_| true, Utc::now()).unwrap_err();
    assert!(
        matches!(err, ChainError::NotYetValid { role: CertRole::Device, ref subject, .. } if subject == "CN=dev-future")
    );
    assert!(err
        .to_string()
        .starts_with("device certificate 'CN=dev-future' is not valid before "));
}

#[test]
fn expired_and_not_yet_valid_ca_certificates_are_named() {
    let p = pki();
    // Years ahead the intermediate (five years) has lapsed, and so has the leaf capped to it; the
    // leaf is judged first.
    let later = Utc::now() + TimeDelta::days(2000);
    assert!(matches!(
        verify_path(std::slice::from_ref(&p.leaf), &[p.int.cert_der()], later),
        Err(ChainError::Expired {
            role: CertRole::Device,
            ..
        })
    ));
    // A root that is not yet valid.
    let mut rp = params("Future Root", true);
    rp.not_before = rcgen::date_time_ymd(2200, 1, 1);
    rp.not_after = rcgen::date_time_ymd(2300, 1, 1);
    let root = raw(rp, None);
    let leaf = raw(params("dev-2", false), Some(&root)).der();
    let err = verify_path(&[leaf], &[root.der()], Utc::now()).unwrap_err();
    assert_eq!(
        err,
        ChainError::NotYetValid {
            role: CertRole::Root,
            subject: "CN=Future Root".into(),
            not_before: Utc.with_ymd_and_hms(2200, 1, 1, 0, 0, 0).unwrap(),
        }
    );
    assert_eq!(
        err.to_string(),
        "root 'CN=Future Root' is not valid before 2200-01-01T00:00:00Z"
    );
}

#[test]
fn issuer_without_the_ca_flag() {
    let root = raw(params("Root", true), None);
    // A device certificate used to sign another: CA:FALSE.
    let not_ca = raw(params("Not A CA", false), Some(&root));
    let leaf = raw(params("dev-3", false), Some(&not_ca)).der();
    let err = verify_path(&[leaf.clone(), not_ca.der()], &[root.der()], Utc::now()).unwrap_err();
    assert_eq!(
        err,
        ChainError::IssuerNotCa {
            issuer: "CN=Not A CA".into(),
            subject: "CN=dev-3".into()
        }
    );
    assert_eq!(
        err.to_string(),
        "'CN=Not A CA' issued 'CN=dev-3' but is not a CA (basicConstraints cA is not set)"
    );

    // No basicConstraints at all is no better.
    let mut p = params("No Constraints", false);
    p.is_ca = IsCa::NoCa;
    p.extended_key_usages.clear();
    let bare = raw(p, Some(&root));
    let leaf = raw(params("dev-4", false), Some(&bare)).der();
    assert!(matches!(
        verify_path(&[leaf], &[bare.der()], Utc::now()),
        Err(ChainError::IssuerNotCa { ref issuer, .. }) if issuer == "CN=No Constraints"
    ));
}

#[test]
fn issuer_whose_key_usage_forbids_signing_certificates() {
    let root = raw(params("Root", true), None);
    let mut p = params("Signing Only CA", true);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let ca = raw(p, Some(&root));
    let leaf = raw(params("dev-5", false), Some(&ca)).der();
    let err = verify_path(&[leaf], &[ca.der(), root.der()], Utc::now()).unwrap_err();
    assert_eq!(
        err,
        ChainError::IssuerKeyUsage {
            issuer: "CN=Signing Only CA".into(),
            subject: "CN=dev-5".into()
        }
    );
}

#[test]
fn leaf_signed_by_another_key_with_the_issuers_name() {
    let p = pki();
    // An unrelated CA that happens to (or pretends to) be called "Contoso Int".
    let impostor = LocalCa::generate("Contoso Int").unwrap();
    let forged = leaf_der(
        &impostor
            .issue_device_certificate("dev-1", 365, KeyAlgorithm::EcdsaP256)
            .unwrap(),
    );
    let int = thumb(&p.int.cert_der());
    let err = path_to_anchor(
        &[forged],
        &[p.int.cert_der(), p.root.cert_der()],
        |c| c.sha256_thumbprint() == int,
        Utc::now(),
    )
    .unwrap_err();
    assert_eq!(
        err,
        ChainError::BadSignature {
            subject: "CN=dev-1".into(),
            issuer: "CN=Contoso Int".into()
        }
    );
    assert_eq!(
        err.to_string(),
        "the signature of 'CN=dev-1' does not verify with the key of its issuer 'CN=Contoso Int'"
    );
}

#[test]
fn missing_issuer() {
    let p = pki();
    let err = path_to_anchor(std::slice::from_ref(&p.leaf), &[p.root.cert_der()], never, Utc::now()).unwrap_err();
    assert_eq!(
        err,
        ChainError::UnknownIssuer {
            subject: "CN=dev-1".into(),
            issuer: "CN=Contoso Int".into()
        }
    );
    assert!(err
        .to_string()
        .starts_with("unknown issuer 'CN=Contoso Int' of 'CN=dev-1'"));
}

#[test]
fn server_only_certificate_is_not_a_device_certificate() {
    let p = pki();
    let server = leaf_der(
        &p.int
            .issue_server_certificate(&["dev.example.test".to_string()])
            .unwrap(),
    );
    let err = path_to_anchor(&[server], &[p.int.cert_der()], |_| true, Utc::now()).unwrap_err();
    assert_eq!(
        err,
        ChainError::LeafEku {
            subject: "CN=dev.example.test".into()
        }
    );

    // Without any EKU a leaf is acceptable.
    let root = raw(params("Root", true), None);
    let mut np = params("no-eku", false);
    np.extended_key_usages.clear();
    let leaf = raw(np, Some(&root)).der();
    assert!(verify_path(&[leaf], &[root.der()], Utc::now()).is_ok());
}

#[test]
fn path_length_constraint_is_honoured() {
    let root = LocalCa::generate("PL Root").unwrap();
    let int1 = root
        .issue_intermediate("PL Int 1", Some(0), KeyAlgorithm::EcdsaP256)
        .unwrap();
    // pathLen 0 forbids another CA below, but LocalCa (like OpenSSL) issues what it is asked.
    let int2 = int1
        .issue_intermediate("PL Int 2", None, KeyAlgorithm::EcdsaP256)
        .unwrap();
    let leaf = leaf_der(
        &int2
            .issue_device_certificate("dev-6", 30, KeyAlgorithm::EcdsaP256)
            .unwrap(),
    );
    let mut presented = vec![leaf];
    presented.extend(int2.chain_der());
    assert_eq!(presented.len(), 4);
    let err = verify_path(&presented, &[] as &[Der], Utc::now()).unwrap_err();
    assert_eq!(
        err,
        ChainError::PathLenExceeded {
            issuer: "CN=PL Int 1".into(),
            path_len: 0,
            intermediates: 1
        }
    );
    assert_eq!(
        err.to_string(),
        "'CN=PL Int 1' allows at most 0 intermediate CA certificate(s) below it (pathLenConstraint), but the chain has 1"
    );
    // Anchored at int 2, int 1's constraint is never consulted.
    let t = thumb(&int2.cert_der());
    assert!(path_to_anchor(&presented, &[] as &[Der], |c| c.sha256_thumbprint() == t, Utc::now()).is_ok());
}

#[test]
fn paths_longer_than_the_limit_are_refused() {
    // Root, then `n` intermediates, then the leaf.
    let chain = |n: usize| -> Vec<Der> {
        let mut cas = vec![LocalCa::generate("Deep Root").unwrap()];
        for i in 0..n {
            let next = cas
                .last()
                .unwrap()
                .issue_intermediate(&format!("Deep Int {i}"), None, KeyAlgorithm::EcdsaP256)
                .unwrap();
            cas.push(next);
        }
        let leaf = cas
            .last()
            .unwrap()
            .issue_device_certificate("deep-dev", 30, KeyAlgorithm::EcdsaP256)
            .unwrap();
        let mut presented = vec![leaf_der(&leaf)];
        presented.extend(cas.last().unwrap().chain_der());
        presented
    };
    let longest = chain(MAX_PATH_LEN - 2);
    assert_eq!(longest.len(), MAX_PATH_LEN);
    let path = verify_path(&longest, &[] as &[Der], Utc::now()).unwrap();
    assert_eq!(path.certs.len(), MAX_PATH_LEN);
    assert_eq!(path.end, PathEnd::SelfSignedRoot);

    let too_long = chain(MAX_PATH_LEN - 1);
    let err = verify_path(&too_long, &[] as &[Der], Utc::now()).unwrap_err();
    assert_eq!(err, ChainError::TooLong { max: MAX_PATH_LEN });
    assert_eq!(err.to_string(), "the certificate chain is longer than 8 certificates");
}

#[test]
fn unreadable_presented_certificates_are_named_by_position() {
    let p = pki();
    let err = verify_path(
        &[p.leaf.to_vec(), vec![0x30, 0x03, 0x02, 0x01]],
        &[] as &[Der],
        Utc::now(),
    )
    .unwrap_err();
    assert!(matches!(err, ChainError::Parse { index: 1, .. }), "{err:?}");
    assert!(err
        .to_string()
        .starts_with("certificate #1 of the presented chain cannot be parsed: "));
    assert!(matches!(
        verify_path(&[b"junk".to_vec()], &[] as &[Der], Utc::now()),
        Err(ChainError::Parse { index: 0, .. })
    ));
    assert_eq!(
        verify_path(&[] as &[Der], &[] as &[Der], Utc::now()).unwrap_err(),
        ChainError::NoCertificate
    );
}

#[test]
fn chain_ending_at_an_unenrolled_root() {
    let p = pki();
    let presented = [p.leaf.clone(), p.int.cert_der(), p.root.cert_der()];
    let err = path_to_anchor(&presented, &[] as &[Der], never, Utc::now()).unwrap_err();
    assert_eq!(
        err,
        ChainError::NoAnchor {
            highest: "CN=Contoso Root".into(),
            sha256_thumbprint: thumb(&p.root.cert_der()),
        }
    );
    assert!(err
        .to_string()
        .starts_with("no enrolled certificate in the chain: it ends at self-signed 'CN=Contoso Root' (SHA-256 "));
}

#[test]
fn unsupported_signature_algorithm_is_named() {
    // Relabel the leaf's signature as ecdsa-with-SHA512 (both copies, inner and outer), which
    // ring's ECDSA verifiers do not offer for P-256.
    let p = pki();
    let sha256 = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
    let mut relabelled = p.leaf.to_vec();
    let mut replaced = 0;
    for i in 0..relabelled.len() - sha256.len() {
        if relabelled[i..i + sha256.len()] == sha256 {
            relabelled[i + sha256.len() - 1] = 0x04;
            replaced += 1;
        }
    }
    assert_eq!(replaced, 2);
    let err = verify_path(&[relabelled], &[p.int.cert_der()], Utc::now()).unwrap_err();
    assert_eq!(
        err,
        ChainError::UnsupportedSignature {
            subject: "CN=dev-1".into(),
            algorithm: "ecdsa-with-SHA512".into()
        }
    );
}

#[test]
fn inner_and_outer_signature_algorithms_must_agree() {
    let p = pki();
    let sha256 = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
    let mut outer_only = p.leaf.to_vec();
    let at = (0..outer_only.len() - sha256.len())
        .rev()
        .find(|&i| outer_only[i..i + sha256.len()] == sha256)
        .unwrap();
    outer_only[at + sha256.len() - 1] = 0x03; // ecdsa-with-SHA384 outside, SHA-256 inside
    let err = verify_path(&[outer_only], &[p.int.cert_der()], Utc::now()).unwrap_err();
    assert_eq!(
        err,
        ChainError::UnsupportedSignature {
            subject: "CN=dev-1".into(),
            algorithm: "mismatched inner and outer signature algorithms".into()
        }
    );
}

#[test]
fn p384_and_ed25519_chains() {
    for alg in [&rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519] {
        let root_key = KeyPair::generate_for(alg).unwrap();
        let root = params("Other Curve Root", true).self_signed(&root_key).unwrap();
        let root = Raw {
            cert: root,
            key: root_key,
        };
        let leaf_key = KeyPair::generate_for(alg).unwrap();
        let leaf = params("other-curve-dev", false)
            .signed_by(&leaf_key, &root.cert, &root.key)
            .unwrap();
        let path = verify_path(&[leaf.der().clone()], &[root.der()], Utc::now()).unwrap();
        assert_eq!(path.end, PathEnd::SelfSignedRoot, "{alg:?}");
    }
}

#[test]
fn many_same_named_candidates_exhaust_the_budget() {
    let p = pki();
    let impostors: Vec<Der> = (0..MAX_SIGNATURE_CHECKS + 5)
        .map(|_| raw(params("Contoso Int", true), None).der())
        .collect();
    let err = verify_path(std::slice::from_ref(&p.leaf), &impostors, Utc::now()).unwrap_err();
    assert_eq!(
        err,
        ChainError::TooComplex {
            signature_checks: MAX_SIGNATURE_CHECKS
        }
    );
    // A handful of impostors next to the real issuer is no problem.
    let mut extra: Vec<Der> = impostors[..5].to_vec();
    extra.push(p.int.cert_der());
    assert!(verify_path(std::slice::from_ref(&p.leaf), &extra, Utc::now()).is_ok());
}

// ---------------------------------------------------------------------------------------------
// Single links and the leaf alone

#[test]
fn proof_of_possession_link() {
    let p = pki();
    let pop = leaf_der(&p.int.issue_verification_certificate("0A1B2C3D").unwrap());
    assert_eq!(leaf_info(&pop).unwrap().registration_id, "0A1B2C3D");
    verify_issued_by(&pop, &p.int.cert_der(), Utc::now()).unwrap();

    assert_eq!(
        verify_issued_by(&pop, &p.root.cert_der(), Utc::now()).unwrap_err(),
        ChainError::NotIssuedBy {
            subject: "CN=0A1B2C3D".into(),
            issuer: "CN=Contoso Int".into(),
            ca: "CN=Contoso Root".into()
        }
    );
    let impostor = LocalCa::generate("Contoso Int").unwrap();
    assert!(matches!(
        verify_issued_by(&pop, &impostor.cert_der(), Utc::now()),
        Err(ChainError::BadSignature { .. })
    ));
    let expired = Utc::now() + TimeDelta::days(40);
    assert!(matches!(
        verify_issued_by(&pop, &p.int.cert_der(), expired),
        Err(ChainError::Expired {
            role: CertRole::Certificate,
            ..
        })
    ));
    assert!(matches!(
        verify_issued_by(&pop, b"junk", Utc::now()),
        Err(ChainError::Parse { index: 1, .. })
    ));
}

#[test]
fn leaf_info_needs_a_common_name() {
    let p = pki();
    let info = leaf_info(&p.leaf).unwrap();
    assert_eq!(info.registration_id, "dev-1");
    assert_eq!(info.summary.sha256_thumbprint, thumb(&p.leaf));

    let mut np = params("unused", false);
    np.distinguished_name = DistinguishedName::new();
    np.distinguished_name.push(DnType::OrganizationName, "Contoso");
    let no_cn = raw(np, None).der();
    assert_eq!(
        leaf_info(&no_cn).unwrap_err(),
        ChainError::NoCommonName {
            subject: "O=Contoso".into()
        }
    );
    assert!(matches!(leaf_info(b"junk"), Err(ChainError::Parse { index: 0, .. })));
}

#[test]
fn a_pool_serves_several_walks() {
    let p = pki();
    let extra = [p.int.cert_der(), p.root.cert_der()];
    let pool = CertPool::new(&extra);
    let other = leaf_der(
        &p.int
            .issue_device_certificate("dev-7", 30, KeyAlgorithm::EcdsaP256)
            .unwrap(),
    );
    let root = thumb(&p.root.cert_der());
    for leaf in [p.leaf.clone(), other] {
        let path = pool
            .path_to_anchor(&[leaf], |c| c.sha256_thumbprint() == root, Utc::now())
            .unwrap();
        assert_eq!(path.certs.len(), 3);
        assert_eq!(
            pool.verify_path(&[path.leaf().der.clone()], Utc::now())
                .unwrap()
                .certs
                .len(),
            3
        );
    }
}

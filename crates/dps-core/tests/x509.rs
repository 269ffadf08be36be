//! X.509 attestation and CA proof of possession in the engine, with real certificate chains
//! (rcgen) and an in-memory store: every success path and every named failure.

use chrono::{TimeZone, Utc};
use dps_core::{Credential, DeviceAuth, DeviceRequest, Engine};
use dps_proto::codes;
use dps_proto::model::certificate::{CertificateBody, VerificationCertificate};
use dps_proto::model::device::DeviceRegistration;
use dps_proto::model::service::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};

mod common;

use common::{engine, SCOPE};

fn now() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap()
}

/// A certificate and its key.
struct Issued {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Issued {
    fn der(&self) -> Vec<u8> {
        self.cert.der().to_vec()
    }
    fn pem(&self) -> String {
        self.cert.pem()
    }
}

#[derive(Clone)]
enum Role {
    Ca,
    NotCa,
    Leaf(ExtendedKeyUsagePurpose),
}

fn params(cn: &str, role: Role, years: (i32, i32)) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.not_before = rcgen::date_time_ymd(years.0, 1, 1);
    p.not_after = rcgen::date_time_ymd(years.1, 1, 1);
    match role {
        Role::Ca => {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        }
        Role::NotCa => p.is_ca = IsCa::ExplicitNoCa,
        Role::Leaf(eku) => {
            p.is_ca = IsCa::ExplicitNoCa;
            p.extended_key_usages = vec![eku];
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        }
    }
    p
}

fn root(cn: &str) -> Issued {
    let key = KeyPair::generate().unwrap();
    let cert = params(cn, Role::Ca, (2020, 2040)).self_signed(&key).unwrap();
    Issued { cert, key }
}

fn issue(issuer: &Issued, cn: &str, role: Role, years: (i32, i32)) -> Issued {
    let key = KeyPair::generate().unwrap();
    let cert = params(cn, role, years)
        .signed_by(&key, &issuer.cert, &issuer.key)
        .unwrap();
    Issued { cert, key }
}

fn device(issuer: &Issued, cn: &str) -> Issued {
    issue(
        issuer,
        cn,
        Role::Leaf(ExtendedKeyUsagePurpose::ClientAuth),
        (2025, 2030),
    )
}

fn x509_enrollment(cert_pem: &str) -> AttestationMechanism {
    AttestationMechanism {
        kind: AttestationType::X509,
        x509: Some(X509Attestation {
            client_certificates: Some(X509Certificates {
                primary: Some(X509CertificateWithInfo {
                    certificate: Some(cert_pem.into()),
                    info: None,
                }),
                secondary: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn x509_group(signing_pem: Option<&str>, ca_name: Option<&str>) -> AttestationMechanism {
    AttestationMechanism {
        kind: AttestationType::X509,
        x509: Some(X509Attestation {
            signing_certificates: signing_pem.map(|p| X509Certificates {
                primary: Some(X509CertificateWithInfo {
                    certificate: Some(p.into()),
                    info: None,
                }),
                secondary: None,
            }),
            ca_references: ca_name.map(|n| X509CaReferences {
                primary: Some(n.into()),
                secondary: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn req(reg: &str, chain: &[&Issued]) -> DeviceRequest {
    DeviceRequest {
        id_scope: SCOPE.into(),
        registration_id: reg.into(),
        credential: Credential::X509(chain.iter().map(|c| c.der()).collect()),
        api_version: None,
        source: None,
        transport: Default::default(),
    }
}

async fn register(
    e: &Engine,
    r: &DeviceRequest,
) -> Result<dps_proto::model::device::RegistrationOperationStatus, dps_core::Error> {
    let op = e.register(now(), r, &DeviceRegistration::default()).await?;
    Ok(e.operation_status(now(), r, &op.operation().unwrap().operation_id)
        .await?
        .body)
}

async fn refused(e: &Engine, r: &DeviceRequest) -> String {
    let err = register(e, r).await.unwrap_err();
    assert_eq!((err.status(), err.code()), (401, codes::UNAUTHORIZED), "{}", err);
    err.to_string()
}

#[tokio::test]
async fn individual_enrollment_matches_the_leaf() {
    let (e, hub) = engine().await;
    let ca = root("Factory Root");
    let leaf = device(&ca, "dev-x1");
    let created = e
        .put_enrollment(
            now(),
            "dev-x1",
            IndividualEnrollment {
                attestation: x509_enrollment(&leaf.pem()),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();
    let info = created
        .attestation
        .x509
        .unwrap()
        .client_certificates
        .unwrap()
        .primary
        .unwrap()
        .info
        .unwrap();
    let sha256 = dps_pki::thumbprint::sha256_thumbprint(&leaf.der());
    assert_eq!(info.sha256_thumbprint, sha256);
    assert_eq!(info.subject_name, "CN=dev-x1");

    let done = register(&e, &req("dev-x1", &[&leaf])).await.unwrap();
    assert_eq!(done.status, RegistrationStatus::Assigned);
    let x = done.registration_state.x509.unwrap();
    assert_eq!(x.certificate_info.unwrap().sha256_thumbprint, sha256);
    assert_eq!(
        hub.devices.lock()[0].auth,
        DeviceAuth::SelfSigned {
            primary_thumbprint: sha256.clone(),
            secondary_thumbprint: sha256
        }
    );
    // The service view of the record does not carry device-result blocks.
    assert!(e.get_registration("dev-x1").await.unwrap().x509.is_none());

    // Another certificate with the same CN is not this enrollment's.
    let other = device(&ca, "dev-x1");
    assert!(refused(&e, &req("dev-x1", &[&other]))
        .await
        .contains("is not enrolled for registration 'dev-x1'"));
    // CN must be the registration id.
    assert!(refused(&e, &req("dev-x2", &[&leaf]))
        .await
        .contains("CN 'dev-x1' does not match registration id 'dev-x2'"));
}

#[tokio::test]
async fn group_on_an_intermediate_with_leaf_only_or_full_chain() {
    let (e, _) = engine().await;
    let root_ca = root("Contoso Root");
    let int = issue(&root_ca, "Contoso Intermediate", Role::Ca, (2020, 2035));
    e.put_group(
        now(),
        "line-1",
        EnrollmentGroup {
            attestation: x509_group(Some(&int.pem()), None),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    let leaf = device(&int, "sensor-1");
    for chain in [vec![&leaf], vec![&leaf, &int], vec![&leaf, &int, &root_ca]] {
        let done = register(&e, &req("sensor-1", &chain)).await.unwrap();
        assert_eq!(done.status, RegistrationStatus::Assigned);
        let x = done.registration_state.x509.unwrap();
        assert_eq!(x.enrollment_group_id.as_deref(), Some("line-1"));
        assert_eq!(
            x.signing_certificate_info.unwrap().subject_name,
            "CN=Contoso Intermediate"
        );
    }
    // A device of another CA is not trusted.
    let stranger_ca = root("Stranger Root");
    let stranger = device(&stranger_ca, "sensor-9");
    let m = refused(&e, &req("sensor-9", &[&stranger])).await;
    // Not enrolled; which issuer was missing goes to the log, not to the device.
    assert!(m.contains("is not enrolled for registration 'sensor-9'"), "{m}");
    assert!(!m.contains("Stranger Root"), "{m}");
}

#[tokio::test]
async fn group_on_the_root_needs_the_intermediate_from_the_device() {
    let (e, _) = engine().await;
    let root_ca = root("Root R");
    let int = issue(&root_ca, "Int R", Role::Ca, (2020, 2035));
    e.put_group(
        now(),
        "by-root",
        EnrollmentGroup {
            attestation: x509_group(Some(&root_ca.pem()), None),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    let leaf = device(&int, "d-r");
    assert_eq!(
        register(&e, &req("d-r", &[&leaf, &int])).await.unwrap().status,
        RegistrationStatus::Assigned
    );
    let m = refused(&e, &req("d-r", &[&leaf])).await;
    assert!(m.contains("is not enrolled for registration 'd-r'"), "{m}");
}

#[tokio::test]
async fn every_broken_link_is_named() {
    let (e, _) = engine().await;
    let root_ca = root("Root B");
    e.put_group(
        now(),
        "b",
        EnrollmentGroup {
            attestation: x509_group(Some(&root_ca.pem()), None),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    // Expired and not-yet-valid leaves.
    let old = issue(
        &root_ca,
        "d-old",
        Role::Leaf(ExtendedKeyUsagePurpose::ClientAuth),
        (2020, 2021),
    );
    assert!(refused(&e, &req("d-old", &[&old]))
        .await
        .contains("expired at 2021-01-01T00:00:00Z"));
    let future = issue(
        &root_ca,
        "d-future",
        Role::Leaf(ExtendedKeyUsagePurpose::ClientAuth),
        (2030, 2031),
    );
    assert!(refused(&e, &req("d-future", &[&future]))
        .await
        .contains("is not valid before 2030-01-01T00:00:00Z"));
    // Server-only EKU.
    let server_only = issue(
        &root_ca,
        "d-eku",
        Role::Leaf(ExtendedKeyUsagePurpose::ServerAuth),
        (2025, 2030),
    );
    assert!(refused(&e, &req("d-eku", &[&server_only]))
        .await
        .contains("lacks clientAuth"));
    // An expired intermediate.
    let old_int = issue(&root_ca, "Old Int", Role::Ca, (2020, 2021));
    let under_old = device(&old_int, "d-oi");
    assert!(refused(&e, &req("d-oi", &[&under_old, &old_int]))
        .await
        .contains("intermediate 'CN=Old Int' expired at"));
    // An "intermediate" that is not a CA.
    let not_ca = issue(&root_ca, "Not A CA", Role::NotCa, (2020, 2035));
    let under_not_ca = device(&not_ca, "d-nc");
    assert!(refused(&e, &req("d-nc", &[&under_not_ca, &not_ca]))
        .await
        .contains("'CN=Not A CA' issued 'CN=d-nc' but is not a CA"));
    // Signed by an impostor with the root's name.
    let impostor = root("Root B");
    let forged = device(&impostor, "d-forged");
    // It must read like a certificate from an unknown CA: a different answer would tell anyone
    // that a CA named "Root B" is enrolled.
    let m = refused(&e, &req("d-forged", &[&forged])).await;
    assert!(m.contains("is not enrolled for registration 'd-forged'"), "{m}");
    let stranger = device(&root("Root C"), "d-forged");
    let m2 = refused(&e, &req("d-forged", &[&stranger])).await;
    let shape = |m: &str| {
        m.split(" (SHA-256")
            .nth(1)
            .and_then(|t| t.split_once(')'))
            .map(|(_, rest)| rest.to_string())
    };
    assert_eq!(shape(&m), shape(&m2), "{m}\n{m2}");
    // A CN breaking the registration-id rules never gets that far.
    let bad = device(&root_ca, "bad id");
    let err = register(&e, &req("bad id", &[&bad])).await.unwrap_err();
    assert_eq!((err.status(), err.code()), (400, codes::ARGUMENT_INVALID));
}

#[tokio::test]
async fn disabled_individual_blocks_one_device_of_an_enabled_group() {
    let (e, _) = engine().await;
    let root_ca = root("Root D");
    e.put_group(
        now(),
        "g",
        EnrollmentGroup {
            attestation: x509_group(Some(&root_ca.pem()), None),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    let revoked = device(&root_ca, "revoked-1");
    let fine = device(&root_ca, "fine-1");
    e.put_enrollment(
        now(),
        "revoked-1",
        IndividualEnrollment {
            attestation: x509_enrollment(&revoked.pem()),
            provisioning_status: Some(ProvisioningStatus::Disabled),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    let r = register(&e, &req("revoked-1", &[&revoked])).await.unwrap();
    assert_eq!(r.status, RegistrationStatus::Disabled);
    assert!(r
        .registration_state
        .error_message
        .unwrap()
        .contains("individual enrollment 'revoked-1' is disabled"));
    assert_eq!(
        register(&e, &req("fine-1", &[&fine])).await.unwrap().status,
        RegistrationStatus::Assigned
    );
    // Deleting (rather than disabling) the individual enrollment lets the device fall back to the group.
    e.delete_enrollment("revoked-1", None).await.unwrap();
    assert_eq!(
        register(&e, &req("revoked-1", &[&revoked])).await.unwrap().status,
        RegistrationStatus::Assigned
    );
}

#[tokio::test]
async fn ca_references_need_proof_of_possession() {
    let (e, _) = engine().await;
    let ca = root("PoP Root");
    e.put_certificate(
        now(),
        "pop-root",
        CertificateBody {
            certificate: ca.pem(),
            is_verified: false,
        },
        None,
    )
    .await
    .unwrap();
    e.put_group(
        now(),
        "by-ref",
        EnrollmentGroup {
            attestation: x509_group(None, Some("pop-root")),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    let leaf = device(&ca, "ref-dev");
    let m = refused(&e, &req("ref-dev", &[&leaf])).await;
    assert!(
        m.contains("CA certificate 'pop-root' referenced by enrollment group 'by-ref' is not verified"),
        "{m}"
    );

    // Verifying without a code, with the wrong CN, or with a certificate the CA did not sign fails.
    let fail = |code: u32| move |r: Result<_, dps_core::Error>| assert_eq!(r.unwrap_err().code(), code);
    let body = |i: &Issued| VerificationCertificate { certificate: i.pem() };
    fail(codes::CERTIFICATE_VERIFICATION_FAILED)(
        e.verify_certificate(now(), "pop-root", None, body(&device(&ca, "x")))
            .await,
    );
    let code = e
        .generate_verification_code(now(), "pop-root", None)
        .await
        .unwrap()
        .properties
        .verification_code
        .unwrap();
    assert_eq!(code.len(), 48);
    let wrong_cn = issue(&ca, "not-the-code", Role::NotCa, (2025, 2030));
    let m = e
        .verify_certificate(now(), "pop-root", None, body(&wrong_cn))
        .await
        .unwrap_err()
        .to_string();
    assert!(m.contains("CN 'not-the-code' is not the verification code"), "{m}");
    let other = root("Other Root");
    let by_other = issue(&other, &code, Role::NotCa, (2025, 2030));
    let m = e
        .verify_certificate(now(), "pop-root", None, body(&by_other))
        .await
        .unwrap_err()
        .to_string();
    assert!(m.contains("issued by 'CN=Other Root'"), "{m}");
    let proof = issue(&ca, &code, Role::NotCa, (2025, 2030));
    // A stale etag is refused and changes nothing.
    let err = e
        .verify_certificate(now(), "pop-root", Some("stale"), body(&proof))
        .await
        .unwrap_err();
    assert_eq!((err.status(), err.code()), (412, codes::CERTIFICATE_ETAG_MISMATCH));
    assert!(!e.get_certificate("pop-root").await.unwrap().properties.is_verified);
    let verified = e
        .verify_certificate(now(), "pop-root", None, body(&proof))
        .await
        .unwrap();
    assert!(verified.properties.is_verified);
    assert_eq!(
        register(&e, &req("ref-dev", &[&leaf])).await.unwrap().status,
        RegistrationStatus::Assigned
    );

    // Listing, conflicts, deletion.
    assert_eq!(e.list_certificates().await.unwrap().len(), 1);
    let err = e
        .put_certificate(
            now(),
            "pop-root",
            CertificateBody {
                certificate: ca.pem(),
                is_verified: false,
            },
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), codes::CERTIFICATE_EXISTS);
    let err = e
        .put_certificate(
            now(),
            "junk",
            CertificateBody {
                certificate: "not a cert".into(),
                is_verified: false,
            },
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), codes::CERTIFICATE_INVALID);
    e.delete_certificate("pop-root", None).await.unwrap();
    assert_eq!(
        e.get_certificate("pop-root").await.unwrap_err().code(),
        codes::CERTIFICATE_NOT_FOUND
    );
    // With the CA gone, the group no longer trusts the device.
    refused(&e, &req("ref-dev", &[&leaf])).await;
}

/// The MXChip DevKit alias certificate carries a malformed critical subjectAltName; strict
/// parsers reject it, DPS must not.
#[tokio::test]
async fn devkit_alias_certificate_with_malformed_san_is_accepted() {
    let (e, hub) = engine().await;
    let pem = include_str!("../../dps-pki/tests/fixtures/devkit-dps-sample.pem");
    e.put_enrollment(
        now(),
        "devkit-dps-sample",
        IndividualEnrollment {
            attestation: x509_enrollment(pem),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    let der = dps_pki::pem::parse_certificates(pem).unwrap().remove(0).to_vec();
    let r = DeviceRequest {
        id_scope: SCOPE.into(),
        registration_id: "devkit-dps-sample".into(),
        credential: Credential::X509(vec![der.clone()]),
        api_version: None,
        source: None,
        transport: Default::default(),
    };
    let done = register(&e, &r).await.unwrap();
    assert_eq!(done.status, RegistrationStatus::Assigned);
    assert_eq!(
        dps_pki::thumbprint::sha256_thumbprint(&der),
        "AA86870A58EA46A789B6E76984FB212133E91D86246E5448CCED19B6EC155EE2"
    );
    assert!(
        matches!(&hub.devices.lock()[0].auth, DeviceAuth::SelfSigned { primary_thumbprint, .. } if primary_thumbprint.starts_with("AA8687"))
    );
}

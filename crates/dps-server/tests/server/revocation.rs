//! Revocation (issue 17, point 4), end to end on a real server: a revoked device certificate is
//! refused at DPS registration (401 naming it) and at the hub; a CRL made with openssl for an
//! enrolled CA is imported and enforced, and a newer one replaces it; a certificate issued at
//! registration names the policy's CRL distribution point, whose list openssl reads.

use std::path::Path;
use std::sync::Arc;

use crate::common::*;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use dps_client::{ClientError, ProvisioningClient, Transport, X509Provider};
use dps_pki::ca::{KeyAlgorithm, LocalCa};
use dps_proto::model::revocation::{CrlImport, RevocationBody};
use dps_proto::model::service::{
    AttestationMechanism, AttestationType, EnrollmentGroup, X509Attestation, X509CertificateWithInfo, X509Certificates,
};

const IP: &str = "127.0.39.13";

/// Registers an X.509 device over HTTPS (where a refusal carries its message).
async fn register_x509(s: &dps_server::RunningServer, chain_pem: &str, key_pem: &str) -> Result<(), ClientError> {
    let ca = std::fs::read_to_string(s.services.config.data_dir.join("ca.pem")).unwrap();
    let provider = Arc::new(X509Provider::from_pem(chain_pem, key_pem).unwrap());
    ProvisioningClient::new(IP, &s.services.identity.id_scope, provider, &ca)
        .with_transport(Transport::Https)
        .with_port(s.https_addr.port())
        .with_max_retries(0)
        .register(None)
        .await
        .map(drop)
}

/// Runs openssl in `dir`, asserting success; returns stdout.
fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A CRL of `ca` (files `ca.pem`, `ca.key` in `dir`) made by `openssl ca -gencrl`, revoking the
/// certificate files `revoked`.
fn openssl_crl(dir: &Path, revoked: &[&str]) -> String {
    std::fs::write(dir.join("index.txt"), "").unwrap();
    std::fs::write(dir.join("crlnumber"), "01\n").unwrap();
    std::fs::write(
        dir.join("ca.cnf"),
        "[ ca ]\ndefault_ca = test\n[ test ]\ndatabase = index.txt\ncrlnumber = crlnumber\n\
         certificate = ca.pem\nprivate_key = ca.key\ndefault_md = sha256\ndefault_crl_days = 7\n",
    )
    .unwrap();
    for cert in revoked {
        openssl(
            dir,
            &[
                "ca",
                "-config",
                "ca.cnf",
                "-revoke",
                cert,
                "-crl_reason",
                "keyCompromise",
            ],
        );
    }
    openssl(dir, &["ca", "-config", "ca.cnf", "-gencrl", "-out", "crl.pem"]);
    std::fs::read_to_string(dir.join("crl.pem")).unwrap()
}

#[tokio::test]
async fn revoked_certificates_are_refused_at_registration_and_at_the_hub() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(IP, dir.path()).await;
    let engine = &s.services.engine;
    let now = chrono::Utc::now();

    // A group enrolling a factory CA; two devices under it.
    let work = tempfile::tempdir().unwrap();
    let ca = LocalCa::generate_with("Revocation Test CA", KeyAlgorithm::EcdsaP256).unwrap();
    std::fs::write(work.path().join("ca.pem"), ca.cert_pem()).unwrap();
    std::fs::write(work.path().join("ca.key"), ca.key_pem()).unwrap();
    let group = EnrollmentGroup {
        attestation: AttestationMechanism {
            kind: AttestationType::X509,
            x509: Some(X509Attestation {
                signing_certificates: Some(X509Certificates {
                    primary: Some(X509CertificateWithInfo {
                        certificate: Some(ca.cert_pem()),
                        info: None,
                    }),
                    secondary: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    engine.put_group(now, "factory", group, None).await.unwrap();
    let dev_a = ca
        .issue_device_certificate("dev-a", 30, KeyAlgorithm::EcdsaP256)
        .unwrap();
    let dev_b = ca
        .issue_device_certificate("dev-b", 30, KeyAlgorithm::EcdsaP256)
        .unwrap();
    std::fs::write(work.path().join("dev-a.pem"), &dev_a.cert_pem).unwrap();
    std::fs::write(work.path().join("dev-b.pem"), &dev_b.cert_pem).unwrap();
    for d in [&dev_a, &dev_b] {
        register_x509(&s, &d.cert_pem, &d.key_pem).await.unwrap();
    }
    hub_mqtt_x509(&s, "dev-a", &dev_a.cert_pem, &dev_a.key_pem)
        .await
        .unwrap();

    // Revoked by hand: refused at registration with its name, and at the hub.
    let revoked = engine
        .add_revocation(
            now,
            RevocationBody {
                certificate: Some(dev_a.cert_pem.clone()),
                reason: Some("stolen".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let err = register_x509(&s, &dev_a.cert_pem, &dev_a.key_pem).await.unwrap_err();
    assert_eq!(err.error_code(), Some(401000), "{err}");
    assert!(
        err.to_string().contains("'CN=dev-a'") && err.to_string().contains("is revoked"),
        "{err}"
    );
    let Err(refused) = hub_mqtt_x509(&s, "dev-a", &dev_a.cert_pem, &dev_a.key_pem).await else {
        panic!("a revoked certificate connected to the hub");
    };
    assert!(format!("{refused:?}").contains("NotAuthorized"), "{refused:?}");
    register_x509(&s, &dev_b.cert_pem, &dev_b.key_pem).await.unwrap();
    engine.delete_revocation(&revoked.id).await.unwrap();
    register_x509(&s, &dev_a.cert_pem, &dev_a.key_pem).await.unwrap();

    // A CRL made with openssl for the enrolled CA: dev-b is refused, dev-a is not.
    let crl = openssl_crl(work.path(), &["dev-b.pem"]);
    let imported = engine.import_crl(CrlImport { crl }).await.unwrap();
    assert_eq!((imported.revoked, imported.removed), (1, 0), "{imported:?}");
    assert!(imported.issuer.contains("Revocation Test CA"));
    let err = register_x509(&s, &dev_b.cert_pem, &dev_b.key_pem).await.unwrap_err();
    assert!(err.to_string().contains("'CN=dev-b'"), "{err}");
    assert!(hub_mqtt_x509(&s, "dev-b", &dev_b.cert_pem, &dev_b.key_pem)
        .await
        .is_err());
    hub_mqtt_x509(&s, "dev-a", &dev_a.cert_pem, &dev_a.key_pem)
        .await
        .unwrap();
    let entry = engine.list_revocations(None, None).await.unwrap().items;
    assert_eq!(entry.len(), 1);
    assert_eq!(entry[0].source, "crl");
    assert_eq!(entry[0].reason.as_deref(), Some("KeyCompromise"));

    // The next list of the same CA replaces it whole: dev-a revoked, dev-b no longer.
    std::fs::remove_file(work.path().join("index.txt")).unwrap();
    let crl = openssl_crl(work.path(), &["dev-a.pem"]);
    let imported = engine.import_crl(CrlImport { crl }).await.unwrap();
    assert_eq!((imported.revoked, imported.removed), (1, 1), "{imported:?}");
    register_x509(&s, &dev_b.cert_pem, &dev_b.key_pem).await.unwrap();
    assert!(register_x509(&s, &dev_a.cert_pem, &dev_a.key_pem).await.is_err());

    // A CRL no known CA signed changes nothing.
    let stranger = tempfile::tempdir().unwrap();
    let other = LocalCa::generate("Revocation Test CA").unwrap();
    std::fs::write(stranger.path().join("ca.pem"), other.cert_pem()).unwrap();
    std::fs::write(stranger.path().join("ca.key"), other.key_pem()).unwrap();
    let forged = openssl_crl(stranger.path(), &[]);
    let err = engine.import_crl(CrlImport { crl: forged }).await.unwrap_err();
    assert!(
        err.to_string().contains("not signed by a CA this service knows"),
        "{err}"
    );
    assert_eq!(engine.list_revocations(None, None).await.unwrap().items.len(), 1);
}

#[tokio::test]
async fn issued_certificates_name_their_crl_and_revoked_ones_are_listed_there() {
    let dir = tempfile::tempdir().unwrap();
    let ip = "127.0.39.17";
    let s = server(ip, dir.path()).await;
    let engine = &s.services.engine;
    let now = chrono::Utc::now();
    let issued = provision_with_csr(&s, ip, "crl-dev").await;
    let (chain, pem, key) = (issued.chain, issued.chain_pem, issued.key_pem);
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("leaf.pem"), &pem).unwrap();
    let text = openssl(work.path(), &["x509", "-in", "leaf.pem", "-noout", "-text"]);
    let url = match s.https_addr.port() {
        443 => format!("https://{ip}/crl/fleet"),
        port => format!("https://{ip}:{port}/crl/fleet"),
    };
    assert!(
        text.contains("CRL Distribution Points") && text.contains(&url),
        "{text}"
    );
    hub_mqtt_x509(&s, "crl-dev", &pem, &key).await.unwrap();

    // Revoked by thumbprint: the hub refuses it; the policy's list names its serial.
    let leaf = dps_pki::info::summarize(&B64.decode(&chain[0]).unwrap()).unwrap();
    engine
        .add_revocation(
            now,
            RevocationBody {
                issuer: Some(leaf.issuer_name.clone()),
                serial_number: Some(leaf.serial_number.clone()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(hub_mqtt_x509(&s, "crl-dev", &pem, &key).await.is_err());
    let (status, headers, body) = https_raw(&s, trusting_local_ca(&s), "GET", "/crl/fleet", &[], b"").await;
    assert_eq!(status, 200);
    assert!(
        headers.contains(&("content-type".into(), "application/pkix-crl".into())),
        "{headers:?}"
    );
    std::fs::write(work.path().join("fleet.crl"), &body).unwrap();
    std::fs::write(
        work.path().join("issuing.pem"),
        dps_pki::pem::to_pem("CERTIFICATE", &B64.decode(&chain[1]).unwrap()),
    )
    .unwrap();
    let listed = openssl(
        work.path(),
        &[
            "crl",
            "-inform",
            "DER",
            "-in",
            "fleet.crl",
            "-noout",
            "-text",
            "-CAfile",
            "issuing.pem",
        ],
    );
    let serial = leaf.serial_number.trim_start_matches("00");
    assert!(
        listed.to_ascii_uppercase().contains(serial),
        "{serial} not in\n{listed}"
    );
    // Unknown policies have no list.
    assert_eq!(https(&s, "GET", "/crl/nope", None, None).await.status, 404);
}

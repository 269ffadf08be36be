//! X.509 end to end with the Rust device client and the CLI: individual and group enrollments,
//! leaf-only and full-chain devices, CA references with proof of possession, and the hub
//! authenticating the device by its certificate.

mod common;

use common::{p, Server};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};

struct Issued {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn params(cn: &str, ca: bool, years: (i32, i32)) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.not_before = rcgen::date_time_ymd(years.0, 1, 1);
    p.not_after = rcgen::date_time_ymd(years.1, 1, 1);
    if ca {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    } else {
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    }
    p
}

fn root(cn: &str) -> Issued {
    let key = KeyPair::generate().unwrap();
    Issued {
        cert: params(cn, true, (2020, 2045)).self_signed(&key).unwrap(),
        key,
    }
}

fn issue(by: &Issued, cn: &str, ca: bool, years: (i32, i32)) -> Issued {
    let key = KeyPair::generate().unwrap();
    Issued {
        cert: params(cn, ca, years).signed_by(&key, &by.cert, &by.key).unwrap(),
        key,
    }
}

/// Writes `name.pem` (the chain) and `name.key`; returns their paths.
fn files(s: &Server, name: &str, chain: &[&Issued]) -> (String, String) {
    let cert = s.dir.path().join(format!("{name}.pem"));
    let key = s.dir.path().join(format!("{name}.key"));
    std::fs::write(&cert, chain.iter().map(|c| c.cert.pem()).collect::<String>()).unwrap();
    std::fs::write(&key, chain[0].key.serialize_pem()).unwrap();
    (p(&cert).to_string(), p(&key).to_string())
}

fn pem_file(s: &Server, name: &str, c: &Issued) -> String {
    let path = s.dir.path().join(format!("{name}-ca.pem"));
    std::fs::write(&path, c.cert.pem()).unwrap();
    p(&path).to_string()
}

#[test]
fn x509_devices_provision_and_reach_the_hub() {
    let s = Server::start("127.0.0.69");
    let root_ca = root("Rust Root");
    let int = issue(&root_ca, "Rust Intermediate", true, (2020, 2040));
    let int_pem = pem_file(&s, "int", &int);
    s.ok(&[
        "enrollment-group",
        "create",
        "--group-id",
        "line-x",
        "--attestation-type",
        "x509",
        "--certificate-path",
        &int_pem,
    ]);

    // Leaf only, over MQTT; then the full chain over HTTPS.
    let a = issue(&int, "x509-a", false, (2025, 2035));
    let (cert, key) = files(&s, "a", &[&a]);
    let out = s.json(&["device", "provision", "--x509-cert", &cert, "--x509-key", &key]);
    assert_eq!(out["registration"]["status"], "assigned", "{out}");
    assert_eq!(out["registration"]["deviceId"], "x509-a");
    assert_eq!(out["registration"]["enrollmentGroupId"], "line-x");
    assert_eq!(
        out["messageSent"], true,
        "the hub accepted the device by its certificate"
    );
    let b = issue(&int, "x509-b", false, (2025, 2035));
    let (cert, key) = files(&s, "b", &[&b, &int]);
    let out = s.json(&[
        "device",
        "provision",
        "--x509-cert",
        &cert,
        "--x509-key",
        &key,
        "--transport",
        "https",
    ]);
    assert_eq!(out["registration"]["status"], "assigned", "{out}");
    // The hub knows the device as selfSigned with the leaf's SHA-256 thumbprint.
    let dev = s.json(&["hub", "device", "show", "--device-id", "x509-b"]);
    assert_eq!(dev["authentication"]["type"], "selfSigned", "{dev}");
    let thumb = dps_pki::thumbprint::sha256_thumbprint(b.cert.der());
    assert_eq!(
        dev["authentication"]["x509Thumbprint"]["primaryThumbprint"],
        thumb.as_str()
    );

    // Individual enrollment by certificate.
    let c = issue(&root("Lone Root"), "x509-c", false, (2025, 2035));
    let (cert, key) = files(&s, "c", &[&c]);
    s.ok(&[
        "enrollment",
        "create",
        "--registration-id",
        "x509-c",
        "--attestation-type",
        "x509",
        "--certificate-path",
        &cert,
    ]);
    let out = s.json(&["device", "provision", "--x509-cert", &cert, "--x509-key", &key]);
    assert_eq!(out["registration"]["status"], "assigned", "{out}");

    // An expired device certificate is refused with the reason.
    let old = issue(&int, "x509-old", false, (2020, 2021));
    let (cert, key) = files(&s, "old", &[&old]);
    // Over MQTT the CONNECT is refused (CONNACK 5, as Azure does) and the reason is logged.
    let err = s.fail(&["device", "provision", "--x509-cert", &cert, "--x509-key", &key]);
    assert!(err.contains("refused the MQTT connection: NotAuthorized"), "{err}");
    assert!(
        s.log().contains("DPS connection refused") && s.log().contains("expired"),
        "{}",
        s.log()
    );
    // Over HTTPS the device reads the reason in the 401.
    let err = s.fail(&[
        "device",
        "provision",
        "--x509-cert",
        &cert,
        "--x509-key",
        &key,
        "--transport",
        "https",
    ]);
    assert!(err.contains("401000") && err.contains("expired"), "{err}");
}

#[test]
fn ca_reference_needs_proof_of_possession_through_the_cli() {
    let s = Server::start("127.0.0.74");
    let ca = root("PoP CLI Root");
    let ca_pem = pem_file(&s, "root", &ca);
    let created = s.json(&[
        "certificate",
        "create",
        "--name",
        "factory-root",
        "--certificate-path",
        &ca_pem,
    ]);
    assert_eq!(created["properties"]["isVerified"], false);
    s.ok(&[
        "enrollment-group",
        "create",
        "--group-id",
        "by-ref",
        "--attestation-type",
        "x509",
        "--ca-name",
        "factory-root",
    ]);
    let dev = issue(&ca, "ref-dev-1", false, (2025, 2035));
    let (cert, key) = files(&s, "dev", &[&dev]);
    let err = s.fail(&[
        "device",
        "provision",
        "--x509-cert",
        &cert,
        "--x509-key",
        &key,
        "--no-message",
    ]);
    // MQTT refuses the CONNECT (5) and logs why; HTTPS tells the device.
    assert!(err.contains("refused the MQTT connection: NotAuthorized"), "{err}");
    assert!(s.log().contains("not verified"), "{}", s.log());
    let err = s.fail(&[
        "device",
        "provision",
        "--x509-cert",
        &cert,
        "--x509-key",
        &key,
        "--no-message",
        "--transport",
        "https",
    ]);
    assert!(err.contains("not verified"), "{err}");

    let code = s
        .ok(&["certificate", "generate-verification-code", "--name", "factory-root"])
        .trim()
        .to_string();
    let proof = issue(&ca, &code, false, (2025, 2035));
    let proof_pem = pem_file(&s, "proof", &proof);
    let verified = s.json(&[
        "certificate",
        "verify",
        "--name",
        "factory-root",
        "--certificate-path",
        &proof_pem,
    ]);
    assert_eq!(verified["properties"]["isVerified"], true, "{verified}");
    let listed = s.json(&["certificate", "list"]);
    assert_eq!(listed[0]["name"], "factory-root");
    let out = s.json(&["device", "provision", "--x509-cert", &cert, "--x509-key", &key]);
    assert_eq!(out["registration"]["status"], "assigned", "{out}");
    s.ok(&["certificate", "delete", "--name", "factory-root"]);
    let err = s.fail(&["certificate", "show", "--name", "factory-root"]);
    assert!(err.contains("404301"), "{err}");
}

/// The whole X.509 flow with `dps ca` alone: root and intermediate, P-256 and RSA-2048 devices,
/// and a proof-of-possession certificate.
#[test]
fn local_pki_from_dps_ca() {
    let s = Server::start("127.0.0.77");
    let d = s.dir.path().join("pki");
    let dir = p(&d);
    let root = s.json(&["ca", "create-root", "--name", "Factory Root", "--out-dir", dir]);
    assert_eq!(root["sha256Thumbprint"].as_str().unwrap().len(), 64);
    let (root_pem, root_key) = (d.join("Factory Root.pem"), d.join("Factory Root.key"));
    s.ok(&[
        "ca",
        "create-intermediate",
        "--name",
        "Line 1",
        "--ca-cert",
        p(&root_pem),
        "--ca-key",
        p(&root_key),
        "--path-len",
        "0",
        "--out-dir",
        dir,
    ]);
    let (int_pem, int_key) = (d.join("Line 1.pem"), d.join("Line 1.key"));
    assert_eq!(
        dps_pki::pem::parse_certificates(&std::fs::read_to_string(&int_pem).unwrap())
            .unwrap()
            .len(),
        2
    );

    // Group on the root through a verified CA reference.
    s.ok(&[
        "certificate",
        "create",
        "--name",
        "factory",
        "--certificate-path",
        p(&root_pem),
    ]);
    let code = s
        .ok(&["certificate", "generate-verification-code", "--name", "factory"])
        .trim()
        .to_string();
    let proof = d.join("proof.pem");
    s.ok(&[
        "ca",
        "issue-verification",
        "--code",
        &code,
        "--ca-cert",
        p(&root_pem),
        "--ca-key",
        p(&root_key),
        "--out",
        p(&proof),
    ]);
    s.ok(&[
        "certificate",
        "verify",
        "--name",
        "factory",
        "--certificate-path",
        p(&proof),
    ]);
    s.ok(&[
        "enrollment-group",
        "create",
        "--group-id",
        "factory-line",
        "--attestation-type",
        "x509",
        "--ca-name",
        "factory",
    ]);

    for (id, alg) in [("pki-ec-1", "p256"), ("pki-rsa-1", "rsa2048")] {
        s.ok(&[
            "ca",
            "issue-device",
            "--registration-id",
            id,
            "--ca-cert",
            p(&int_pem),
            "--ca-key",
            p(&int_key),
            "--key-algorithm",
            alg,
            "--out-dir",
            dir,
        ]);
        let (cert, key) = (d.join(format!("{id}.pem")), d.join(format!("{id}.key")));
        let out = s.json(&["device", "provision", "--x509-cert", p(&cert), "--x509-key", p(&key)]);
        assert_eq!(out["registration"]["status"], "assigned", "{id}: {out}");
        assert_eq!(out["registration"]["enrollmentGroupId"], "factory-line");
        assert_eq!(out["messageSent"], true);
    }
}

//! TPM attestation end to end: a software TPM (swtpm) per test, `dps tpm info` for the values an
//! operator enrolls, `dps enrollment create --attestation-type tpm`, then `dps device provision
//! --tpm` over HTTPS (challenge → ActivateCredential/Import in the TPM → TPM-signed SAS →
//! assigned → hub key imported) and a message through the hub with the TPM-held key.

#![cfg(feature = "tpm")]

mod common;

use common::Server;
use dps_tpm::swtpm::SwTpm;
use serde_json::Value;

/// `dps tpm info --json` for the TPM at `tcti`.
fn tpm_info(s: &Server, tcti: &str) -> Value {
    s.json(&["tpm", "info", "--tcti", tcti])
}

fn field<'a>(v: &'a Value, name: &str) -> &'a str {
    v[name].as_str().unwrap_or_else(|| panic!("no {name} in {v}"))
}

/// The arguments of `dps device provision --tpm --tcti {tcti} {extra…}`.
fn provision<'a>(tcti: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["device", "provision", "--tpm", "--tcti", tcti];
    args.extend_from_slice(extra);
    args
}

/// The payloads of every message `device_id` sent through the hub, oldest first.
fn payloads_from(s: &Server, device_id: &str) -> Vec<Value> {
    let events = s.ok(&[
        "hub",
        "monitor-events",
        "--device-id",
        device_id,
        "--from-sequence",
        "0",
        "--timeout",
        "2",
        "--json",
    ]);
    events
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["event"]["payload"].clone())
        .collect()
}

/// Enrolls `registration_id` with the given EK and SRK (base64 TPM2B_PUBLIC).
fn enroll(s: &Server, registration_id: &str, ek: &str, srk: &str) {
    enroll_with(s, registration_id, ek, srk, &[]);
}

/// [`enroll`] with more `dps enrollment create` arguments.
fn enroll_with(s: &Server, registration_id: &str, ek: &str, srk: &str, extra: &[&str]) {
    let mut args = vec![
        "enrollment",
        "create",
        "--registration-id",
        registration_id,
        "--attestation-type",
        "tpm",
        "--endorsement-key",
        ek,
        "--storage-root-key",
        srk,
    ];
    args.extend_from_slice(extra);
    s.ok(&args);
}

#[test]
fn provision_a_tpm_device_then_use_the_hub() {
    let s = Server::start("127.0.0.90");
    let sw = SwTpm::start().expect("swtpm starts");
    let tcti = sw.tcti();

    // What the operator enrolls; stable across calls because the EK/SRK are persisted.
    let info = tpm_info(&s, &tcti);
    assert_eq!(info, tpm_info(&s, &tcti), "dps tpm info is stable");
    let id = field(&info, "registrationId").to_string();
    assert_eq!(id.len(), 52, "base32 of SHA-256 of the EK: {id}");
    assert!(
        id.chars().all(|c| c.is_ascii_lowercase() || ('2'..='7').contains(&c)),
        "{id}"
    );
    let human = s.ok(&["tpm", "info", "--tcti", &tcti]);
    assert!(
        human.contains(&id) && human.contains(field(&info, "endorsementKey")),
        "{human}"
    );
    enroll(&s, &id, field(&info, "endorsementKey"), field(&info, "storageRootKey"));

    // Provision over HTTPS (the default with --tpm), connect to the hub, send a message.
    let out = s.json(&provision(&tcti, &["--message", r#"{"n":1}"#]));
    assert_eq!(out["transport"], "https", "{out}");
    assert_eq!(out["registration"]["assignedHub"], s.ip.as_str(), "{out}");
    assert_eq!(out["registration"]["deviceId"], id.as_str(), "{out}");
    assert_eq!(out["registration"]["substatus"], "initialAssignment", "{out}");
    assert_eq!(out["messageSent"], true, "{out}");

    // The hub registry knows the device, with the symmetric key the TPM now holds.
    let device = s.json(&["hub", "device", "show", "-d", &id]);
    assert_eq!(device["deviceId"], id.as_str(), "{device}");
    assert_eq!(device["authentication"]["type"], "sas", "{device}");

    // Re-provisioning the same TPM works (a new challenge, a new hub key import).
    let human = s.ok(&provision(&tcti, &["--message", r#"{"n":2}"#]));
    assert!(human.contains(&format!("registered {id} over https")), "{human}");
    assert!(human.contains("sent message"), "{human}");

    // Both messages arrived, sent with hub SAS tokens signed in the TPM.
    let payloads = payloads_from(&s, &id);
    assert_eq!(
        payloads,
        [serde_json::json!({"n":1}), serde_json::json!({"n":2})],
        "{payloads:?}"
    );

    // The registration id may also be given explicitly (it must then be the enrolled one).
    let out = s.json(&provision(&tcti, &["--registration-id", &id, "--no-message"]));
    assert_eq!(out["registration"]["deviceId"], id.as_str(), "{out}");
    assert_eq!(tpm_info(&s, &tcti), info, "provisioning does not change the EK/SRK");
}

/// The same over AMQP: the challenge comes in the SASL `TPM` mechanism (EK in the init, SRK in
/// the first response, the activation blob in challenge segments, the TPM-signed SAS in the
/// last response), then the registration runs on the AMQP links.
#[test]
fn provision_a_tpm_device_over_amqp() {
    let s = Server::start("127.0.38.12");
    let sw = SwTpm::start().expect("swtpm starts");
    let tcti = sw.tcti();
    let info = tpm_info(&s, &tcti);
    let id = field(&info, "registrationId").to_string();
    enroll(&s, &id, field(&info, "endorsementKey"), field(&info, "storageRootKey"));

    let out = s.json(&provision(&tcti, &["--transport", "amqp", "--message", r#"{"n":1}"#]));
    assert_eq!(out["transport"], "amqp", "{out}");
    assert_eq!(out["registration"]["deviceId"], id.as_str(), "{out}");
    assert_eq!(out["registration"]["substatus"], "initialAssignment", "{out}");
    // The message went through the hub with a SAS signed by the hub key the TPM imported.
    assert_eq!(out["messageSent"], true, "{out}");
    // Again: a new challenge in a new SASL exchange.
    let human = s.ok(&provision(&tcti, &["--transport", "amqp", "--no-message"]));
    assert!(human.contains(&format!("registered {id} over amqp")), "{human}");

    // Another TPM, not enrolled: refused in the SASL exchange.
    let other = SwTpm::start().expect("swtpm starts");
    let err = s.fail(&provision(&other.tcti(), &["--transport", "amqp"]));
    assert!(err.contains("SASL TPM authentication failed"), "{err}");
}

#[test]
fn refused_tpm_devices_get_clear_errors() {
    let s = Server::start("127.0.0.91");
    let (a, b) = (SwTpm::start().unwrap(), SwTpm::start().unwrap());
    let (tcti_a, tcti_b) = (a.tcti(), b.tcti());
    let info_a = tpm_info(&s, &tcti_a);
    let info_b = tpm_info(&s, &tcti_b);
    let (id_a, id_b) = (field(&info_a, "registrationId"), field(&info_b, "registrationId"));
    assert_ne!(id_a, id_b);

    // The service refuses the challenge request itself: 401000 with its reason, printed as is
    // (docs/error-codes.md). Not enrolled at all:
    let refused = |tcti: &str, id: &str, why: &str| {
        let err = s.fail(&provision(tcti, &[]));
        assert!(err.contains(&format!("cannot provision '{id}'")), "{err}");
        assert!(err.contains("error 401000 (HTTP 401)") && err.contains(why), "{err}");
    };
    // Every mismatch reads the same, so the refusal tells nobody which ids are enrolled.
    const NO_MATCH: &str = "has the endorsement key and storage root key sent";
    refused(&tcti_a, id_a, NO_MATCH);
    // Enrolled with another TPM's endorsement key.
    let ek_b = field(&info_b, "endorsementKey");
    enroll(&s, id_a, ek_b, field(&info_b, "storageRootKey"));
    refused(&tcti_a, id_a, NO_MATCH);
    // The right endorsement key, but another TPM's storage root key.
    enroll(&s, id_b, ek_b, field(&info_a, "storageRootKey"));
    refused(&tcti_b, id_b, NO_MATCH);

    // TPM attestation needs HTTPS.
    let err = s.fail(&provision(&tcti_a, &["--transport", "mqtt"]));
    assert!(err.contains("TPM attestation needs the HTTPS transport"), "{err}");

    // No TPM behind the TCTI.
    let err = s.fail(&["tpm", "info", "--tcti", "swtpm:host=127.0.0.1,port=1"]);
    assert!(
        err.contains("cannot open the TPM at 'swtpm:host=127.0.0.1,port=1'"),
        "{err}"
    );
    assert!(
        !err.contains("ERROR"),
        "libtss2's and tss-esapi's own logs are silenced: {err}"
    );
}

/// Issue 17, point 5: a TPM as its manufacturer ships it (swtpm_setup stored an EK certificate
/// issued by a test manufacturer CA in NV). `dps tpm info` reads the certificate; the operator
/// enrolls the TPM by it alone; the server, configured with the manufacturer's root, checks the
/// chain and takes the endorsement key from it; the device provisions. A server that trusts
/// another manufacturer refuses the enrollment, naming the certificate.
#[test]
fn a_tpm_is_enrolled_by_its_endorsement_key_certificate() {
    let work = tempfile::tempdir().unwrap();
    let manufacturer =
        dps_pki::ca::LocalCa::generate_with("Test TPM Manufacturer Root", dps_pki::ca::KeyAlgorithm::Rsa2048).unwrap();
    let root = work.path().join("manufacturer.pem");
    std::fs::write(&root, manufacturer.cert_pem()).unwrap();
    let sw = SwTpm::start_manufactured(&manufacturer.cert_pem(), &manufacturer.key_pem()).expect("swtpm starts");
    let tcti = sw.tcti();

    let s = Server::start_with("127.0.39.19", &["--tpm-manufacturer-ca", root.to_str().unwrap()]);
    let ek_file = work.path().join("ek.pem");
    let info = s.json(&[
        "tpm",
        "info",
        "--tcti",
        &tcti,
        "--save-ek-certificate",
        ek_file.to_str().unwrap(),
    ]);
    let pem = field(&info, "endorsementKeyCertificate");
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{info}");
    assert_eq!(std::fs::read_to_string(&ek_file).unwrap(), pem);
    let id = field(&info, "registrationId").to_string();
    let human = s.ok(&["tpm", "info", "--tcti", &tcti]);
    assert!(human.contains("issued by 'CN=Test TPM Manufacturer Root'"), "{human}");

    // Enrolled by the certificate alone: the endorsement key the server takes from it is the
    // one the TPM reports.
    let by_certificate = [
        "enrollment",
        "create",
        "--registration-id",
        &id,
        "--attestation-type",
        "tpm",
        "--endorsement-key-certificate",
        ek_file.to_str().unwrap(),
    ];
    let enrollment = s.json(&by_certificate);
    assert_eq!(
        enrollment["attestation"]["tpm"]["endorsementKey"], info["endorsementKey"],
        "{enrollment}"
    );
    let out = s.json(&provision(&tcti, &["--no-message"]));
    assert_eq!(out["registration"]["deviceId"], id.as_str(), "{out}");

    // Another manufacturer's root: the certificate is refused and names why.
    let other = dps_pki::ca::LocalCa::generate("Other Manufacturer Root").unwrap();
    let other_root = work.path().join("other.pem");
    std::fs::write(&other_root, other.cert_pem()).unwrap();
    let strict = Server::start_with("127.0.39.28", &["--tpm-manufacturer-ca", other_root.to_str().unwrap()]);
    let err = strict.fail(&by_certificate);
    assert!(
        err.contains("endorsementKeyCertificate") && err.contains("Test TPM Manufacturer Root"),
        "{err}"
    );
}

/// Issue 17, point 2 with a TPM: `dps device provision --tpm --csr` makes the certificate's key
/// inside the TPM (0x81000101), the TPM signs the request, the credential policy issues the
/// certificate for that key, and the device reaches its hub with it — every TLS handshake signed
/// by the TPM; no key file is ever written. A new request replaces the key (P-384 here), and an
/// RSA key, which the TPM client key is not, is refused with the reason.
#[test]
fn a_tpm_device_gets_a_certificate_for_a_key_inside_its_tpm() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let work = tempfile::tempdir().unwrap();
    let issued = work.path().join("issued");
    let issued_dir = issued.to_str().unwrap();
    let s = Server::start("127.0.39.29");
    let sw = SwTpm::start().expect("swtpm starts");
    let tcti = sw.tcti();

    s.ok(&["credential-policy", "create", "--name", "tpm-fleet"]);
    let info = tpm_info(&s, &tcti);
    assert!(info["clientKey"].is_null(), "no client key before a CSR: {info}");
    let id = field(&info, "registrationId").to_string();
    enroll_with(
        &s,
        &id,
        field(&info, "endorsementKey"),
        field(&info, "storageRootKey"),
        &["--credential-policy", "tpm-fleet"],
    );

    for (n, key_type) in ["P-256", "P-384"].into_iter().enumerate() {
        let message = format!(r#"{{"tpmCertificate":{n}}}"#);
        let args = [
            "--csr",
            "--csr-key-type",
            key_type,
            "--issued-dir",
            issued_dir,
            "--message",
            &message,
        ];
        let out = s.json(&provision(&tcti, &args));
        assert_eq!(out["messageSent"], true, "{out}");
        assert!(out["issuedKeyPath"].is_null(), "{out}");
        assert_eq!(out["issuedKeyTpmHandle"], "0x81000101", "{out}");
        assert!(!issued.join(format!("{id}.issued.key")).exists(), "no key file");
        let cert = out["issuedCertificatePath"].as_str().unwrap().to_string();

        // The TPM holds the key the certificate certifies.
        let key = tpm_info(&s, &tcti)["clientKey"].clone();
        assert_eq!(key["algorithm"], key_type, "{key}");
        assert_eq!(key["handle"], "0x81000101", "{key}");
        let point = b64.decode(key["publicKey"].as_str().unwrap()).unwrap();
        let spki = openssl(&["x509", "-in", &cert, "-noout", "-pubkey"]);
        let spki: String = spki.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(
            b64.decode(spki).unwrap().ends_with(&point),
            "the issued certificate is for the TPM's key"
        );

        // openssl verifies the chain: leaf, the policy's issuing CA, its root.
        let chain = dps_pki::pem::parse_certificates(&std::fs::read_to_string(&cert).unwrap()).unwrap();
        assert_eq!(chain.len(), 3);
        let file = |name: &str, der: &[u8]| {
            let path = work.path().join(name);
            std::fs::write(&path, dps_pki::pem::to_pem("CERTIFICATE", der)).unwrap();
            path.to_str().unwrap().to_string()
        };
        let (leaf, issuing, root) = (
            file("leaf.pem", &chain[0]),
            file("ca.pem", &chain[1]),
            file("root.pem", &chain[2]),
        );
        let verified = openssl(&["verify", "-CAfile", &root, "-untrusted", &issuing, &leaf]);
        assert!(verified.trim().ends_with(": OK"), "{verified}");

        // The hub knows the device by that certificate, and the message arrived over a
        // connection whose handshake the TPM signed.
        let device = s.json(&["hub", "device", "show", "-d", &id]);
        assert_eq!(device["authentication"]["type"], "selfSigned", "{device}");
        let payloads = payloads_from(&s, &id);
        assert_eq!(
            payloads.last(),
            Some(&serde_json::json!({ "tpmCertificate": n })),
            "{payloads:?}"
        );
    }

    let err = s.fail(&provision(
        &tcti,
        &["--csr", "--csr-key-type", "RSA-2048", "--issued-dir", issued_dir],
    ));
    assert!(err.contains("ECDSA P-256 or P-384, not RSA-2048"), "{err}");
    let key = tpm_info(&s, &tcti)["clientKey"].clone();
    assert_eq!(key["algorithm"], "P-384", "a refused request leaves the key as it was");

    // Renewed through the hub for the same key: the TPM signs the request and the handshakes.
    let cert = issued.join(format!("{id}.issued.pem"));
    let before = openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-serial"]);
    let out = s.json(&[
        "device",
        "renew-certificate",
        "--tpm",
        "--tcti",
        &tcti,
        "--x509-cert",
        cert.to_str().unwrap(),
        "--out-dir",
        issued_dir,
    ]);
    assert_eq!(out["issuedKeyTpmHandle"], "0x81000101", "{out}");
    assert_ne!(
        openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-serial"]),
        before
    );
    let spki = openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-pubkey"]);
    let spki: String = spki.lines().filter(|l| !l.starts_with("-----")).collect();
    let point = b64.decode(key["publicKey"].as_str().unwrap()).unwrap();
    assert!(b64.decode(spki).unwrap().ends_with(&point), "renewed for the TPM's key");
    assert_eq!(tpm_info(&s, &tcti)["clientKey"], key, "the key stays");
}

/// What `openssl {args}` prints; fails the test when it fails.
fn openssl(args: &[&str]) -> String {
    let out = std::process::Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

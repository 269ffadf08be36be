//! `TpmProvider` against a real software TPM (swtpm): the EK/SRK it exports, the import of an
//! activation blob built by the service-side code (`dps_tpm::wrap_key`), and signatures made in
//! the TPM that equal software HMAC-SHA256 with the wrapped key — the property the service's SAS
//! verification relies on.

#![cfg(feature = "tpm")]

use dps_client::{ClientError, SecurityProvider, TpmError, TpmProvider};
use dps_tpm::swtpm::SwTpm;
use rand::RngCore;

fn key(rng: &mut impl RngCore) -> [u8; 32] {
    let mut k = [0u8; 32];
    rng.fill_bytes(&mut k);
    k
}

/// The service's activation blob for `key`, marshalled as sent.
fn wrap(ek: &[u8], srk: &[u8], key: &[u8], rng: &mut (impl RngCore + rand::CryptoRng)) -> Vec<u8> {
    dps_tpm::wrap_key(ek, srk, key, rng).unwrap().to_bytes().unwrap()
}

/// The TPM command an import failed in.
fn failed_step(e: &TpmError) -> &'static str {
    match e {
        TpmError::Command { what, .. } => what,
        other => panic!("not a TPM command failure: {other}"),
    }
}

#[test]
fn tpm_hmac_equals_software_hmac_with_the_wrapped_key() {
    let sw = SwTpm::start().expect("swtpm starts");
    let tpm = TpmProvider::open(&sw.tcti()).unwrap();
    let ek = tpm.endorsement_key().to_vec();
    let srk = tpm.storage_root_key().to_vec();
    // RSA-2048 EK/SRK, marshalled TPM2B_PUBLIC (device-protocol.md §7.1).
    assert_eq!(ek.len(), 316);
    assert_eq!(&ek[..10], &[0x01, 0x3a, 0x00, 0x01, 0x00, 0x0b, 0x00, 0x03, 0x00, 0xb2]);
    assert_eq!(srk.len(), 284);
    assert_eq!(tpm.registration_id(), dps_tpm::registration_id(&ek));
    assert_eq!(tpm.registration_id().len(), 52);

    // Nothing imported yet: nothing to sign with.
    assert!(matches!(tpm.sign(b"x"), Err(ClientError::Tpm(TpmError::NoIdentityKey))));

    let mut rng = rand::thread_rng();
    let data = b"0ne00000001%2Fregistrations%2Fdev\n1700000000";
    for _ in 0..2 {
        // A second import replaces the key at 0x81000100 (challenge key, then hub key).
        let k = key(&mut rng);
        let blob = wrap(&ek, &srk, &k, &mut rng);
        tpm.import_authentication_key(&blob).unwrap();
        assert_eq!(tpm.sign(data).unwrap(), dps_proto::sas::hmac_sha256(&k, data));
        assert_eq!(tpm.sign(b"").unwrap(), dps_proto::sas::hmac_sha256(&k, b""));
    }

    // Reopening finds the same persisted keys and the imported identity key.
    let k = key(&mut rng);
    let blob = wrap(&ek, &srk, &k, &mut rng);
    tpm.import_authentication_key(&blob).unwrap();
    drop(tpm);
    let again = TpmProvider::open(&sw.tcti()).unwrap().with_registration_id("custom-id");
    assert_eq!(again.endorsement_key(), &ek[..]);
    assert_eq!(again.storage_root_key(), &srk[..]);
    assert_eq!(again.registration_id(), "custom-id");
    assert_eq!(again.default_registration_id(), dps_tpm::registration_id(&ek));
    assert_eq!(again.sign(data).unwrap(), dps_proto::sas::hmac_sha256(&k, data));

    // More than one TPM2_HMAC takes is refused clearly, not truncated.
    assert!(matches!(
        again.sign(&[0u8; 4096]),
        Err(ClientError::Tpm(TpmError::DataTooLong { len: 4096, .. }))
    ));
}

#[test]
fn blobs_for_another_tpm_or_tampered_are_refused() {
    let (a, b) = (SwTpm::start().unwrap(), SwTpm::start().unwrap());
    let tpm_a = TpmProvider::open(&a.tcti()).unwrap();
    let tpm_b = TpmProvider::open(&b.tcti()).unwrap();
    assert_ne!(
        tpm_a.endorsement_key(),
        tpm_b.endorsement_key(),
        "every swtpm has its own EK"
    );
    let mut rng = rand::thread_rng();
    let k = key(&mut rng);
    let (ek_a, srk_a) = (tpm_a.endorsement_key(), tpm_a.storage_root_key());
    let srk_b = tpm_b.storage_root_key();

    let import_err = |tpm: &TpmProvider, blob: &[u8]| match tpm.import_authentication_key(blob) {
        Err(ClientError::Tpm(e)) => e,
        other => panic!("import should fail: {other:?}"),
    };
    // Made for A: B's EK cannot activate it.
    let blob = wrap(ek_a, srk_a, &k, &mut rng);
    let e = import_err(&tpm_b, &blob);
    assert_eq!(failed_step(&e), "ActivateCredential", "{e}");
    assert!(e.to_string().contains("not made for this TPM"), "{e}");
    // A's EK but B's SRK: the credential is bound to another SRK's name.
    let blob = wrap(ek_a, srk_b, &k, &mut rng);
    let e = import_err(&tpm_a, &blob);
    assert_eq!(failed_step(&e), "ActivateCredential", "{e}");
    // Tampered: a flipped bit in the duplicate (after the credential blob and secret) fails Import.
    let mut blob = wrap(ek_a, srk_a, &k, &mut rng);
    let parsed = dps_tpm::ActivationBlob::parse(&blob).unwrap();
    let dup_at = 2 + parsed.credential_blob.len() + 2 + parsed.secret.len() + 2 + 40;
    blob[dup_at] ^= 0x01;
    let e = import_err(&tpm_a, &blob);
    assert_eq!(failed_step(&e), "Import", "{e}");
    // Not a blob at all.
    assert!(matches!(import_err(&tpm_a, b"\x00\x05abc"), TpmError::Blob(_)));
    // After all that, a good blob still works.
    let blob = wrap(ek_a, srk_a, &k, &mut rng);
    tpm_a.import_authentication_key(&blob).unwrap();
    assert_eq!(tpm_a.sign(b"m").unwrap(), dps_proto::sas::hmac_sha256(&k, b"m"));
}

#[test]
fn bad_tcti_and_absent_tpm_are_clear_errors() {
    match TpmProvider::open("nonsense:") {
        Err(e @ TpmError::InvalidTcti { .. }) => assert!(e.to_string().contains("nonsense:"), "{e}"),
        other => panic!("{other:?}"),
    }
    // Nothing listens on this port.
    match TpmProvider::open("swtpm:host=127.0.0.1,port=1") {
        Err(e @ TpmError::Open { .. }) => assert!(e.to_string().contains("port=1"), "{e}"),
        other => panic!("{other:?}"),
    }
}

/// The client key a certificate signing request is made for: made in the TPM, its request
/// signed there (the parser verifies the signature against the key's public point), found again
/// by a later process, replaced by a new one, never RSA.
#[test]
fn the_tpm_makes_and_signs_with_a_client_key() {
    use dps_pki::ca::KeyAlgorithm;
    use dps_pki::held_key::{certificate_request, HeldKey};

    let sw = SwTpm::start().expect("swtpm starts");
    let tpm = TpmProvider::open(&sw.tcti()).unwrap();
    assert!(tpm.client_key().unwrap().is_none());

    let key = tpm.create_client_key(KeyAlgorithm::EcdsaP256).unwrap();
    assert_eq!(key.algorithm(), KeyAlgorithm::EcdsaP256);
    assert_eq!(key.public_key().len(), 65);
    assert_eq!(key.public_key()[0], 0x04, "an uncompressed point");
    let der = certificate_request("tpm-dev", key.clone()).unwrap();
    let request = dps_pki::csr::CertificateRequest::parse(&der).expect("the TPM's signature verifies");
    assert_eq!(request.common_name(), "tpm-dev");
    assert_eq!(request.public_key_bits(), key.public_key());

    // Another process finds the same key at 0x81000101.
    drop(tpm);
    let tpm = TpmProvider::open(&sw.tcti()).unwrap();
    let found = tpm.client_key().unwrap().expect("persisted");
    assert_eq!(found.public_key(), key.public_key());
    let again = certificate_request("tpm-dev", found).unwrap();
    dps_pki::csr::CertificateRequest::parse(&again).unwrap();

    // A new key replaces it (P-384 signs with SHA-384).
    let p384 = tpm.create_client_key(KeyAlgorithm::EcdsaP384).unwrap();
    assert_eq!(p384.public_key().len(), 97);
    let der = certificate_request("tpm-dev", p384.clone()).unwrap();
    dps_pki::csr::CertificateRequest::parse(&der).unwrap();
    assert_eq!(
        tpm.client_key().unwrap().unwrap().public_key(),
        p384.public_key(),
        "one client key at a time"
    );

    assert!(matches!(
        tpm.create_client_key(KeyAlgorithm::Rsa2048),
        Err(TpmError::UnsupportedClientKey(_))
    ));
}

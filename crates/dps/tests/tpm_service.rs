//! TPM enrollments through the CLI and the service API: what `dps enrollment create
//! --attestation-type tpm` accepts, what it refuses and how it says so. The device side of the
//! flow is in `tpm.rs` (swtpm) and in dps-server's and dps-core's `tpm.rs` tests.

mod common;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::Server;
use dps_tpm::RsaPublic;

/// Marshalled RSA-2048 public areas (made-up moduli) in the EK and SRK templates, base64.
fn keys() -> (String, String) {
    let ek = RsaPublic::endorsement_template(vec![0xc5; 256]).to_tpm2b();
    let srk = RsaPublic::storage_template(vec![0xa3; 256]).to_tpm2b();
    (B64.encode(ek), B64.encode(srk))
}

/// `dps enrollment create` arguments for a TPM enrollment.
fn create<'a>(id: &'a str, ek: &'a str, srk: Option<&'a str>) -> Vec<&'a str> {
    let mut args = vec![
        "enrollment",
        "create",
        "--registration-id",
        id,
        "--attestation-type",
        "tpm",
        "--endorsement-key",
        ek,
    ];
    if let Some(srk) = srk {
        args.extend(["--storage-root-key", srk]);
    }
    args
}

#[test]
fn tpm_enrollments_take_only_keys_the_challenge_can_be_built_for() {
    let s = Server::start("127.0.0.92");
    let (ek, srk) = keys();
    // EK and SRK, as `dps tpm info` prints them.
    let a = create("tpm-a", &ek, Some(&srk));
    let t = s.json(&a);
    assert_eq!(t["attestation"]["type"], "tpm", "{t}");
    assert_eq!(t["attestation"]["tpm"]["endorsementKey"], ek.as_str());
    assert_eq!(t["attestation"]["tpm"]["storageRootKey"], srk.as_str());
    // The EK is public: reads show it, and updates keep it.
    let shown = s.json(&["enrollment", "show", "--registration-id", "tpm-a"]);
    assert_eq!(shown["attestation"]["tpm"]["endorsementKey"], ek.as_str(), "{shown}");
    let human = s.ok(&["enrollment", "show", "--registration-id", "tpm-a"]);
    assert!(human.contains("endorsement key") && human.contains(&ek), "{human}");
    let t = s.json(&[
        "enrollment",
        "update",
        "--registration-id",
        "tpm-a",
        "--provisioning-status",
        "disabled",
    ]);
    assert_eq!(t["attestation"]["tpm"]["endorsementKey"], ek.as_str());

    // Without an SRK (the device's SRK is then taken as sent).
    let b = create("tpm-b", &ek, None);
    let t = s.json(&b);
    assert!(t["attestation"]["tpm"].get("storageRootKey").is_none(), "{t}");

    // Not a TPM2B_PUBLIC, a 1024-bit key, a non-key SRK, not base64: 400 with the reason.
    let junk = create("tpm-junk", "AAECAwQ=", None);
    let err = s.fail(&junk);
    assert!(
        err.contains("400") && err.contains("tpm endorsementKey: endorsement key: the TPM2B size says 1 byte(s)"),
        "{err}"
    );
    let mut small = RsaPublic::endorsement_template(vec![0xc5; 128]).to_tpmt();
    small[50..52].copy_from_slice(&1024u16.to_be_bytes());
    let small = B64.encode([&(small.len() as u16).to_be_bytes()[..], &small].concat());
    let err = s.fail(&create("tpm-small", &small, None));
    assert!(err.contains("key is RSA-1024, not RSA-2048"), "{err}");
    let err = s.fail(&create("tpm-srk", &ek, Some("bm90IGEga2V5")));
    assert!(err.contains("tpm storageRootKey: storage root key"), "{err}");
    let err = s.fail(&create("tpm-b64", "***", None));
    assert!(err.contains("tpm endorsementKey is not valid base64"), "{err}");
    // Nothing was written for the refused ones.
    let err = s.fail(&["enrollment", "show", "--registration-id", "tpm-junk"]);
    assert!(err.contains("404"), "{err}");
}

//! DICE end to end: the DevKit `dps_cert_gen` output reproduced by `dps dice cert-gen` and a DevKit
//! device provisioning with the identity it derives at boot; a TCG DICE device enrolled through a
//! group on its DeviceID certificate stays provisionable across a firmware update.

mod common;

use common::{p, Server};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../dps-dice/tests/fixtures/dice");
const DEVKIT_UDS: &str = "19e25a259d0c2be03a02d416c05c48ccd0cc7d1743458aae1cb488b074993eae";

#[test]
fn devkit_cert_gen_is_byte_exact_and_the_device_provisions() {
    let s = Server::start("127.0.0.75");
    let out = s.dir.path().join("certs");
    let bin = format!("{FIXTURES}/devkitdps.ino.bin");
    let map = format!("{FIXTURES}/devkitdps.ino.map");
    s.ok(&[
        "dice",
        "cert-gen",
        "--uds",
        DEVKIT_UDS,
        "--bin",
        &bin,
        "--map",
        &map,
        "--registration-id",
        "devkit-dps-sample",
        "--out-dir",
        p(&out),
    ]);
    let generated = std::fs::read(out.join("devkit-dps-sample.pem")).unwrap();
    let expected = std::fs::read(format!("{FIXTURES}/devkit-dps-sample.pem")).unwrap();
    assert_eq!(
        generated, expected,
        "byte-identical to the DevKit tool's alias certificate"
    );

    let cert = out.join("devkit-dps-sample.pem");
    s.ok(&[
        "enrollment",
        "create",
        "--registration-id",
        "devkit-dps-sample",
        "--attestation-type",
        "x509",
        "--certificate-path",
        p(&cert),
    ]);
    let r = s.json(&[
        "device",
        "provision",
        "--registration-id",
        "devkit-dps-sample",
        "--dice-uds",
        DEVKIT_UDS,
        "--dice-firmware",
        &bin,
        "--dice-map",
        &map,
        "--transport",
        "https",
    ]);
    assert_eq!(r["registration"]["status"], "assigned", "{r}");
    assert_eq!(r["messageSent"], true, "the hub accepted the DevKit alias certificate");
}

#[test]
fn tcg_dice_device_survives_a_firmware_update() {
    let s = Server::start("127.0.0.76");
    let uds = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let dir = s.dir.path();
    let device_id = dir.join("device-id.pem");
    s.ok(&["dice", "device-id", "--uds", uds, "--out", p(&device_id)]);
    s.ok(&[
        "enrollment-group",
        "create",
        "--group-id",
        "dice-fleet",
        "--attestation-type",
        "x509",
        "--certificate-path",
        p(&device_id),
    ]);
    let (fw1, fw2) = (dir.join("fw-1.0.bin"), dir.join("fw-2.0.bin"));
    std::fs::write(&fw1, b"firmware image version 1.0").unwrap();
    std::fs::write(&fw2, b"firmware image version 2.0").unwrap();

    let provision = |fw: &std::path::Path| {
        s.json(&[
            "device",
            "provision",
            "--registration-id",
            "dice-dev-7",
            "--dice-uds",
            uds,
            "--dice-firmware",
            p(fw),
        ])
    };
    let first = provision(&fw1);
    assert_eq!(first["registration"]["status"], "assigned", "{first}");
    assert_eq!(first["registration"]["enrollmentGroupId"], "dice-fleet");
    let thumb1 = s.json(&["hub", "device", "show", "--device-id", "dice-dev-7"])["authentication"]["x509Thumbprint"]
        ["primaryThumbprint"]
        .clone();
    // New firmware: new alias certificate, same DeviceID, same enrollment, same hub device.
    let second = provision(&fw2);
    assert_eq!(second["registration"]["status"], "assigned", "{second}");
    assert_eq!(second["registration"]["deviceId"], first["registration"]["deviceId"]);
    assert_eq!(
        second["registration"]["assignedHub"],
        first["registration"]["assignedHub"]
    );
    assert_eq!(second["messageSent"], true);
    let thumb2 = s.json(&["hub", "device", "show", "--device-id", "dice-dev-7"])["authentication"]["x509Thumbprint"]
        ["primaryThumbprint"]
        .clone();
    assert_ne!(thumb1, thumb2, "the hub now knows the new alias certificate");

    // `dps dice identity` writes the same chain the device derives.
    let out = s.json(&[
        "dice",
        "identity",
        "--uds",
        uds,
        "--firmware",
        p(&fw2),
        "--registration-id",
        "dice-dev-7",
        "--out-dir",
        p(dir),
    ]);
    let chain = std::fs::read_to_string(dir.join("dice-dev-7-chain.pem")).unwrap();
    let leaf = dps_pki::pem::parse_certificates(&chain).unwrap().remove(0);
    assert_eq!(serde_json::json!(dps_pki::thumbprint::sha256_thumbprint(&leaf)), thumb2);
    assert_eq!(out["deviceIdSha256Thumbprint"].as_str().unwrap().len(), 64);
}

//! The DevKit DICE scheme against the DevKit tool's own output: the sample firmware fixture
//! reproduced byte for byte, and the reference vector's certificates.

use dps_dice::devkit::{devkit_identity, FirmwareImage};
use dps_dice::parse_uds_hex;
use dps_pki::pem::{parse_certificates, parse_private_key};
use dps_pki::thumbprint::{sha1_thumbprint, sha256_thumbprint};
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

const BIN: &[u8] = include_bytes!("fixtures/dice/devkitdps.ino.bin");
const MAP: &[u8] = include_bytes!("fixtures/dice/devkitdps.ino.map");
const EXPECTED_PEM: &str = include_str!("fixtures/dice/devkit-dps-sample.pem");
const SAMPLE_UDS: &str = "19e25a259d0c2be03a02d416c05c48ccd0cc7d1743458aae1cb488b074993eae";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sample() -> dps_dice::devkit::DevkitIdentity {
    let image = FirmwareImage::from_bin_and_map(BIN, MAP).unwrap();
    devkit_identity(&parse_uds_hex(SAMPLE_UDS).unwrap(), &image, "devkit-dps-sample").unwrap()
}

#[test]
fn sample_ranges_match_the_fixture_readme() {
    let image = FirmwareImage::from_bin_and_map(BIN, MAP).unwrap();
    assert_eq!(image.riot_core().len(), 0x800);
    assert_eq!(image.riot_fw().len(), 0x3000);
    assert_eq!(
        hex(&Sha256::digest(image.riot_core())),
        "cefc145cfd5f12c03e74db3a6c50cc6d675773cf5f9f2bd2f97e27bf599795cd"
    );
    assert_eq!(
        hex(&Sha256::digest(image.riot_fw())),
        "266b9ba76ff671987047a0c7d82f76e056f43edd2c735b0eb4e5279f894678cd"
    );
}

#[test]
fn sample_alias_certificate_is_byte_identical_to_the_tool_output() {
    let id = sample();
    assert_eq!(id.alias_cert_pem, EXPECTED_PEM);
    assert_eq!(
        hex(&Sha256::digest(&id.alias_cert_der)),
        "aa86870a58ea46a789b6e76984fb212133e91d86246e5448cced19b6ec155ee2"
    );
    assert_eq!(
        hex(&id.fwid),
        "266b9ba76ff671987047a0c7d82f76e056f43edd2c735b0eb4e5279f894678cd"
    );
    assert_eq!(
        hex(&id.riot_core_digest),
        "cefc145cfd5f12c03e74db3a6c50cc6d675773cf5f9f2bd2f97e27bf599795cd"
    );
    assert_eq!(id.registration_id, "devkit-dps-sample");
}

#[test]
fn alias_certificate_verifies_under_the_device_id_key() {
    let id = sample();
    let (_, alias) = X509Certificate::from_der(&id.alias_cert_der).unwrap();
    let (_, device) = X509Certificate::from_der(&id.device_id_cert_der).unwrap();
    assert_eq!(
        device.public_key().subject_public_key.data.as_ref(),
        &id.device_id_public_key[..]
    );
    alias.verify_signature(Some(device.public_key())).unwrap();
    // The DeviceID certificate is self-signed.
    device.verify_signature(None).unwrap();
    // The fixture's own bytes verify too, so the fixture and the derived DeviceID agree.
    let fixture = parse_certificates(EXPECTED_PEM).unwrap().remove(0);
    let (_, fixture) = X509Certificate::from_der(&fixture).unwrap();
    fixture.verify_signature(Some(device.public_key())).unwrap();
}

#[test]
fn summary_accepts_the_generated_alias_certificate() {
    let id = sample();
    let s = dps_pki::info::summarize(&id.alias_cert_der).unwrap();
    assert_eq!(s.common_name.as_deref(), Some("devkit-dps-sample"));
    assert_eq!(s.subject_name, "CN=devkit-dps-sample, C=US, O=DEVKIT_TEST");
    assert_eq!(s.issuer_name, "CN=devkitdice, C=US, O=DEVKIT_TEST");
    assert_eq!(s.serial_number, "0A0B0C0D0E");
    let device = dps_pki::info::summarize(&id.device_id_cert_der).unwrap();
    assert_eq!(device.subject_name, "CN=devkitdice, C=US, O=DEVKIT_TEST");
    assert_eq!(device.serial_number, "0E0D0C0B0A");
}

#[test]
fn key_and_public_key_pems_have_the_devkit_shape() {
    let id = sample();
    // One base64 line each, LF line ends, as RIoT's DERtoPEM writes them.
    for (pem, label) in [
        (&id.alias_key_pem, "EC PRIVATE KEY"),
        (&id.device_id_cert_pem, "CERTIFICATE"),
        (&id.device_id_public_key_pem, "PUBLIC KEY"),
    ] {
        let lines: Vec<&str> = pem.split('\n').collect();
        assert_eq!(lines.len(), 4, "{pem}");
        assert_eq!(lines[0], format!("-----BEGIN {label}-----"));
        assert_eq!(lines[2], format!("-----END {label}-----"));
        assert_eq!(lines[3], "");
    }
    // The alias key is SEC1 and belongs to the alias certificate.
    assert!(matches!(
        parse_private_key(&id.alias_key_pem).unwrap(),
        dps_pki::PrivateKeyDer::Sec1(_)
    ));
    dps_pki::tls::client_config_with_identity(EXPECTED_PEM, &id.alias_cert_pem, &id.alias_key_pem)
        .expect("rustls accepts the alias certificate with its key");
    // SEC1 layout: version 1, 32-byte private key, [0] prime256v1, [1] public key.
    let sec1 = parse_private_key(&id.alias_key_pem).unwrap();
    let der = sec1.secret_der();
    assert_eq!(&der[..7], &[0x30, 0x77, 0x02, 0x01, 0x01, 0x04, 0x20]);
    assert_eq!(
        &der[39..51],
        &[0xa0, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]
    );
    assert_eq!(&der[51..56], &[0xa1, 0x44, 0x03, 0x42, 0x00]);
}

/// The reference vector (`hub-dice-tpm.md` B7): its certificates' sizes and thumbprints.
#[test]
fn reference_vector_certificates() {
    let uds: [u8; 32] = std::array::from_fn(|i| i as u8);
    let image = FirmwareImage::from_ranges(vec![0xaa; 64], (0..0x80).collect()).unwrap();
    let id = devkit_identity(&uds, &image, "my-device-01").unwrap();
    assert_eq!(id.alias_cert_der.len(), 565);
    assert_eq!(
        sha1_thumbprint(&id.alias_cert_der),
        "3AC3A9A85A5FF57DD0B8383E15782D62CD64E8E2"
    );
    assert_eq!(
        sha256_thumbprint(&id.alias_cert_der),
        "CB00B63A4548849BA73B59259FAED6997D04B2B79DA0DBE71E785F1C4A110C9C"
    );
    assert_eq!(
        sha1_thumbprint(&id.device_id_cert_der),
        "DF64C147A19FABF96AC0FA9B6709EAE992F4361A"
    );
    let (_, alias) = X509Certificate::from_der(&id.alias_cert_der).unwrap();
    let signature = p256::ecdsa::Signature::from_der(&alias.signature_value.data).unwrap();
    assert_eq!(
        hex(&signature.r().to_bytes()),
        "515c3d6eb9e396b904d3feca7f54fdcd0cc1e997bf375dca515ad0a6c3b4035f"
    );
    assert_eq!(
        hex(&id.device_id_public_key[1..33]),
        "45fefbfdf78a70d2e23d0faa1d765a6a3e918eb9a7b43fe56863d9492e018d0c"
    );
}

#[test]
fn the_device_id_survives_a_riot_fw_change_but_the_alias_does_not() {
    let uds = parse_uds_hex(SAMPLE_UDS).unwrap();
    let image = FirmwareImage::from_bin_and_map(BIN, MAP).unwrap();
    let mut fw = image.riot_fw().to_vec();
    fw[0] ^= 1;
    let updated = FirmwareImage::from_ranges(image.riot_core().to_vec(), fw).unwrap();
    let a = devkit_identity(&uds, &image, "devkit-dps-sample").unwrap();
    let b = devkit_identity(&uds, &updated, "devkit-dps-sample").unwrap();
    assert_eq!(a.device_id_cert_der, b.device_id_cert_der);
    assert_ne!(a.alias_cert_der, b.alias_cert_der);
    assert_ne!(a.alias_key_pem, b.alias_key_pem);
}

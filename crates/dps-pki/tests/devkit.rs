//! The MXChip DevKit DICE alias certificate: a real-world certificate with a malformed critical
//! subjectAltName (its otherName is not valid DER), which must still be summarised.

use chrono::{TimeZone, Utc};
use dps_pki::info::summarize;
use dps_pki::pem::parse_certificates;
use dps_pki::thumbprint::{sha1_thumbprint, sha256_thumbprint};

const DEVKIT_PEM: &str = include_str!("fixtures/devkit-dps-sample.pem");

// From `openssl x509 -noout -fingerprint -sha1` / `-sha256` on the fixture, separators removed.
const DEVKIT_SHA1: &str = "41502875929721B29B96278067A14DA2FC4754A2";
const DEVKIT_SHA256: &str = "AA86870A58EA46A789B6E76984FB212133E91D86246E5448CCED19B6EC155EE2";

#[test]
fn thumbprints_match_openssl() {
    let der = parse_certificates(DEVKIT_PEM).unwrap().remove(0);
    assert_eq!(sha1_thumbprint(&der), DEVKIT_SHA1);
    assert_eq!(sha256_thumbprint(&der), DEVKIT_SHA256);
}

#[test]
fn summary_of_a_certificate_with_a_malformed_san() {
    let der = parse_certificates(DEVKIT_PEM).unwrap().remove(0);
    let s = summarize(&der).unwrap();
    assert_eq!(s.subject_name, "CN=devkit-dps-sample, C=US, O=DEVKIT_TEST");
    assert_eq!(s.issuer_name, "CN=devkitdice, C=US, O=DEVKIT_TEST");
    assert_eq!(s.common_name.as_deref(), Some("devkit-dps-sample"));
    assert_eq!(s.sha1_thumbprint, DEVKIT_SHA1);
    assert_eq!(s.sha256_thumbprint, DEVKIT_SHA256);
    assert_eq!(s.not_before, Utc.with_ymd_and_hms(2017, 1, 1, 0, 0, 0).unwrap());
    assert_eq!(s.not_after, Utc.with_ymd_and_hms(2037, 1, 1, 0, 0, 0).unwrap());
    // openssl: "Serial Number: 43135012110 (0xa0b0c0d0e)".
    assert_eq!(s.serial_number, "0A0B0C0D0E");
    assert_eq!(s.version, 3);
}

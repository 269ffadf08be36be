//! Certificates (PEM, base64 and DER; chains as a device presents them), devices' certificate
//! signing requests, and TPM public areas.

use dps_pki::chain;
use dps_pki::info::summarize;
use dps_pki::pem::{parse_certificates, to_pem};
use dps_pki::thumbprint::{sha1_thumbprint, sha256_thumbprint};
use dps_tpm::RsaPublic;

use crate::support::now;

/// At most this many certificates in a chain (a device's TLS chain is a handful).
const MAX_CHAIN: usize = 8;

/// Splits `data` into DER certificates, each prefixed by its length (u16, big-endian).
fn der_chain(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let [a, b, rest @ ..] = data {
        let n = usize::from(u16::from_be_bytes([*a, *b])).min(rest.len());
        out.push(&rest[..n]);
        data = &rest[n..];
        if out.len() == MAX_CHAIN {
            break;
        }
    }
    out
}

/// Certificates from clients: the first byte picks the form. Even: text, as the service API
/// takes certificates (`PUT /certificates/{name}`, enrollment `clientCertificates` /
/// `signingCertificates`: PEM blocks or bare base64 DER). Odd: a DER chain as a device presents
/// it in TLS (u16 length prefixes). Each certificate is summarized and thumbprinted, and the
/// chain is walked as X.509 attestation walks it (to a self-signed root, and to the last
/// certificate as an enrolled anchor), at a fixed time.
pub fn x509_certificate(data: &[u8]) {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let ders: Vec<Vec<u8>> = if mode % 2 == 0 {
        let Ok(text) = std::str::from_utf8(rest) else {
            return;
        };
        match parse_certificates(text) {
            Ok(certs) => {
                let ders: Vec<Vec<u8>> = certs.iter().map(|c| c.to_vec()).collect();
                // What parses survives PEM armour: the server shows and stores PEM.
                let pem: String = ders.iter().map(|d| to_pem("CERTIFICATE", d)).collect();
                let back: Vec<Vec<u8>> = parse_certificates(&pem)
                    .unwrap_or_else(|e| panic!("re-armoured certificates do not parse: {e}"))
                    .iter()
                    .map(|c| c.to_vec())
                    .collect();
                assert_eq!(back, ders, "PEM round trip changed the certificates");
                ders.into_iter().take(MAX_CHAIN).collect()
            }
            Err(_) => return,
        }
    } else {
        der_chain(rest).into_iter().map(<[u8]>::to_vec).collect()
    };
    for der in &ders {
        let (sha1, sha256) = (sha1_thumbprint(der), sha256_thumbprint(der));
        assert_eq!((sha1.len(), sha256.len()), (40, 64));
        if let Ok(s) = summarize(der) {
            assert_eq!(
                (s.sha1_thumbprint.as_str(), s.sha256_thumbprint.as_str()),
                (sha1.as_str(), sha256.as_str())
            );
            assert!(s.version >= 1);
        }
    }
    let Some(leaf) = ders.first() else {
        return;
    };
    if let Ok(info) = chain::leaf_info(leaf) {
        assert!(!info.registration_id.is_empty());
    }
    let none: [&[u8]; 0] = [];
    if let Ok(path) = chain::verify_path(&ders, &none, now()) {
        assert_eq!(path.leaf().sha256_thumbprint(), sha256_thumbprint(leaf));
    }
    // The last certificate enrolled (a group's signing certificate), offered as an extra too.
    let last = sha256_thumbprint(ders.last().expect("non-empty"));
    let extra = [ders.last().expect("non-empty").as_slice()];
    if let Ok(path) = chain::path_to_anchor(&ders[..1], &extra, |c| c.matches_thumbprint(&last), now()) {
        assert!(
            path.top().matches_thumbprint(&last),
            "the walk stops only at the anchor"
        );
    }
    if let [cert, issuer, ..] = ders.as_slice() {
        let _ = chain::verify_issued_by(cert, issuer, now());
    }
}

/// TPM2B_PUBLIC of endorsement and storage root keys, as devices send them (register body
/// `tpm.endorsementKey` / `storageRootKey`, base64) and enrollments carry them. A key that
/// parses re-marshals to the same key, and its name and RSA key can be computed.
pub fn tpm_public(data: &[u8]) {
    let _ = dps_tpm::registration_id(data);
    for parsed in [
        RsaPublic::endorsement_key(data),
        RsaPublic::storage_root_key(data),
        RsaPublic::from_tpm2b_public(data),
    ] {
        let Ok(key) = parsed else { continue };
        let again = key.to_tpm2b();
        assert_eq!(
            RsaPublic::from_tpm2b_public(&again).as_ref(),
            Ok(&key),
            "TPM2B_PUBLIC round trip"
        );
        assert_eq!(key.name().len(), 34, "a SHA-256 name is the algorithm id and 32 bytes");
        let _ = key.rsa_key();
    }
}

/// A device's certificate signing request, as it arrives in `csr` of a registration (DER, once
/// base64 decoded) or in the older `clientCertificateCsr` (PEM or base64 text: input that does
/// not start as DER does is read as that text): parsed and verified; when accepted, a
/// certificate is issued for it by a fixed CA and must be for the request's own key, with the
/// subject the issuer chose.
pub fn certificate_request(data: &[u8]) {
    use dps_pki::csr::{CertificateRequest, IssuePolicy};
    static CA: std::sync::OnceLock<dps_pki::ca::LocalCa> = std::sync::OnceLock::new();
    let text_der;
    let der = if data.first() == Some(&0x30) {
        data
    } else {
        let Some(der) = std::str::from_utf8(data)
            .ok()
            .and_then(|t| dps_pki::pem::parse_certificate_request(t).ok())
        else {
            return;
        };
        text_der = der;
        &text_der
    };
    let Ok(request) = CertificateRequest::parse(der) else {
        return;
    };
    let ca = CA.get_or_init(|| dps_pki::ca::LocalCa::generate("Fuzz Issuing CA").expect("a CA"));
    let policy = IssuePolicy {
        common_name: "fuzz-device".into(),
        validity_days: 30,
        now: chrono::Utc::now(),
        crl_url: None,
    };
    let cert = ca
        .issue_for_request(&request, &policy)
        .unwrap_or_else(|e| panic!("an accepted request ({request:?}) was not issued for: {e}"));
    let issued = dps_pki::x509::parse(&cert).expect("the issued certificate parses");
    assert_eq!(
        issued.public_key().subject_public_key.data.as_ref(),
        request.public_key_bits(),
        "the certificate is for the request's key"
    );
    let summary = summarize(&cert).expect("the issued certificate summarizes");
    assert_eq!(summary.common_name.as_deref(), Some("fuzz-device"));
}

/// A certificate revocation list as an operator imports it (`POST /crls`): the first byte picks
/// text (PEM or base64, as the API takes it) or DER; a list that parses keeps its entries and
/// its signature is checked against a fixed CA (never signed by it).
pub fn revocation_list(data: &[u8]) {
    use dps_pki::crl::Crl;
    static CA: std::sync::OnceLock<dps_pki::ca::LocalCa> = std::sync::OnceLock::new();
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let parsed = if mode % 2 == 0 {
        match std::str::from_utf8(rest) {
            Ok(text) => Crl::parse_text(text),
            Err(_) => return,
        }
    } else {
        Crl::parse(rest)
    };
    let Ok(crl) = parsed else {
        return;
    };
    assert_eq!(
        Crl::parse(&crl.der).ok().as_ref(),
        Some(&crl),
        "a list parses the same twice"
    );
    let ca = CA.get_or_init(|| dps_pki::ca::LocalCa::generate("Fuzz CRL CA").expect("a CA"));
    assert!(!crl.is_signed_by(&ca.cert_der()) || crl.der.is_empty());
}

//! Tolerant X.509 reading shared by the other modules.

use x509_parser::certificate::{X509Certificate, X509CertificateParser};
use x509_parser::nom::Parser as _;

use crate::PkiError;

/// Parses a DER certificate, tolerating extensions x509-parser cannot decode.
///
/// Device certificates in the wild carry malformed extensions — the MXChip DevKit DICE alias
/// certificate has a *critical* subjectAltName whose otherName is not valid DER — and the service
/// must still summarise and thumbprint them (judging them is the engine's job). x509-parser
/// already records most extension errors per extension instead of failing; if the certificate
/// still fails, it is parsed again without decoding extension contents at all.
pub(crate) fn parse(der: &[u8]) -> Result<X509Certificate<'_>, PkiError> {
    match X509CertificateParser::new().parse(der) {
        Ok((_, cert)) => Ok(cert),
        Err(deep_error) => X509CertificateParser::new()
            .with_deep_parse_extensions(false)
            .parse(der)
            .map(|(_, cert)| cert)
            .map_err(|_| PkiError::invalid_certificate(deep_error)),
    }
}

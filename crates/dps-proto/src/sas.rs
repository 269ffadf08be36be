//! Shared-access-signature tokens: building, parsing and verifying.
//!
//! Every Azure SDK encodes the `sr` (audience) field differently — raw, `%2F`, `%2f`, lower-cased —
//! and each signs exactly the string it puts on the wire. Verification therefore HMACs the `sr`
//! text *as received* and only decodes it to compare the audience. Never canonicalise before hashing.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Clock skew tolerated when checking `se`, as the Azure service does (5 minutes).
pub const MAX_CLOCK_SKEW_SECS: u64 = 300;

const PREFIX: &str = "SharedAccessSignature ";

/// Characters left unescaped when *we* encode a token component (RFC 3986 unreserved).
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Why a SAS token was rejected. Messages are shown to the device or operator, so they say what
/// was wrong without revealing key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SasError {
    /// The header or password did not start with `SharedAccessSignature ` or a field was not `k=v`.
    #[error("malformed shared access signature: {0}")]
    Malformed(String),
    /// One of the mandatory fields `sr`, `sig`, `se` is absent.
    #[error("malformed shared access signature: missing '{0}' field")]
    MissingField(&'static str),
    /// `se` is in the past (beyond the allowed clock skew).
    #[error("shared access signature expired at {expiry} (now {now})")]
    Expired {
        /// Expiry carried by the token, seconds since the epoch.
        expiry: u64,
        /// Server time used for the check.
        now: u64,
    },
    /// The token was issued for another resource (`sr`).
    #[error("shared access signature audience '{got}' does not match '{expected}'")]
    AudienceMismatch {
        /// Audience the request needed.
        expected: String,
        /// Decoded audience found in the token.
        got: String,
    },
    /// The signature does not match any of the keys tried.
    #[error("shared access signature does not match the key")]
    SignatureMismatch,
    /// A key given to the verifier was not valid base64 (a configuration error, not a device error).
    #[error("invalid base64 key")]
    BadKey,
}

/// A parsed token. `sr` and `se` are kept exactly as they appeared, because they are what was signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SasToken {
    /// `sr` exactly as sent (possibly percent-encoded, possibly lower-cased).
    pub sr_raw: String,
    /// `se` exactly as sent.
    pub se_raw: String,
    /// `se` as an integer.
    pub expiry: u64,
    /// Decoded signature bytes.
    pub signature: Vec<u8>,
    /// `skn`, percent-decoded; `None` when absent or empty (device tokens from Python/C omit it).
    pub key_name: Option<String>,
}

impl SasToken {
    /// Parses `SharedAccessSignature sr=..&sig=..&se=..[&skn=..]`, fields in any order, keys
    /// case-insensitive.
    pub fn parse(token: &str) -> Result<Self, SasError> {
        let token = token.trim();
        let body = token
            .get(..PREFIX.len())
            .filter(|p| p.eq_ignore_ascii_case(PREFIX))
            .map(|_| &token[PREFIX.len()..])
            .ok_or_else(|| SasError::Malformed("must start with 'SharedAccessSignature '".into()))?;
        let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
        for field in body.split('&').filter(|f| !f.is_empty()) {
            let (k, v) = field
                .split_once('=')
                .ok_or_else(|| SasError::Malformed(format!("field '{field}' has no '='")))?;
            let slot = match k.to_ascii_lowercase().as_str() {
                "sr" => &mut sr,
                "sig" => &mut sig,
                "se" => &mut se,
                "skn" => &mut skn,
                _ => continue,
            };
            // A field given twice is ambiguous: a verifier reading the first and a signer using
            // the last would disagree on what the token grants.
            if slot.replace(v).is_some() {
                return Err(SasError::Malformed(format!(
                    "field '{}' appears more than once",
                    k.to_ascii_lowercase()
                )));
            }
        }
        let sr_raw = sr.ok_or(SasError::MissingField("sr"))?.to_string();
        let se_raw = se.ok_or(SasError::MissingField("se"))?.to_string();
        let sig = sig.ok_or(SasError::MissingField("sig"))?;
        let expiry = se_raw
            .parse::<u64>()
            .map_err(|_| SasError::Malformed(format!("'se' is not an integer: '{se_raw}'")))?;
        let signature = decode_signature(sig)?;
        let key_name = skn.map(decode_component).filter(|s| !s.is_empty());
        Ok(Self {
            sr_raw,
            se_raw,
            expiry,
            signature,
            key_name,
        })
    }

    /// The audience, percent-decoded, with an `http(s)://` prefix and trailing `/` removed, lower-cased.
    pub fn audience(&self) -> String {
        normalize_audience(&decode_component(&self.sr_raw))
    }

    /// Checks expiry against `now` (seconds since the epoch), with [`MAX_CLOCK_SKEW_SECS`] grace.
    pub fn check_expiry(&self, now: u64) -> Result<(), SasError> {
        if self.expiry.saturating_add(MAX_CLOCK_SKEW_SECS) < now {
            return Err(SasError::Expired {
                expiry: self.expiry,
                now,
            });
        }
        Ok(())
    }

    /// Checks that the decoded audience equals `expected` (case-insensitive).
    pub fn check_audience_eq(&self, expected: &str) -> Result<(), SasError> {
        let got = self.audience();
        if got == normalize_audience(expected) {
            Ok(())
        } else {
            Err(SasError::AudienceMismatch {
                expected: expected.to_string(),
                got,
            })
        }
    }

    /// Checks that the decoded audience is a prefix (by path segment) of `resource`, the rule the
    /// service APIs use: a token for `host` is valid for `host/devices/x`.
    pub fn check_audience_prefix(&self, resource: &str) -> Result<(), SasError> {
        let got = self.audience();
        let res = normalize_audience(resource);
        let ok = res == got || (res.starts_with(&got) && res.as_bytes().get(got.len()) == Some(&b'/'));
        if ok {
            Ok(())
        } else {
            Err(SasError::AudienceMismatch {
                expected: resource.to_string(),
                got,
            })
        }
    }

    /// Verifies the signature against each base64 key in turn; returns the index of the key that
    /// matched (0 = primary, 1 = secondary).
    pub fn verify_signature<'a>(&self, keys: impl IntoIterator<Item = &'a str>) -> Result<usize, SasError> {
        let mut bad_key = false;
        for (i, key) in keys.into_iter().enumerate() {
            let Ok(raw) = B64.decode(key) else {
                bad_key = true;
                continue;
            };
            let mac = hmac_sha256(&raw, self.string_to_sign().as_bytes());
            if mac.ct_eq(&self.signature).into() {
                return Ok(i);
            }
        }
        Err(if bad_key {
            SasError::BadKey
        } else {
            SasError::SignatureMismatch
        })
    }

    /// Verifies against raw (already decoded) key bytes; used on hot paths that cache decoded keys.
    pub fn verify_signature_raw(&self, key: &[u8]) -> bool {
        hmac_sha256(key, self.string_to_sign().as_bytes())
            .ct_eq(&self.signature)
            .into()
    }

    fn string_to_sign(&self) -> String {
        format!("{}\n{}", self.sr_raw, self.se_raw)
    }
}

/// Computes `base64(HMAC-SHA256(base64decode(key), sr + "\n" + se))`.
pub fn sign(key_b64: &str, sr: &str, expiry: u64) -> Result<String, SasError> {
    let key = B64.decode(key_b64).map_err(|_| SasError::BadKey)?;
    Ok(B64.encode(hmac_sha256(&key, format!("{sr}\n{expiry}").as_bytes())))
}

/// Builds a token the way the Python SDK does (`sr` percent-encoded with no safe characters),
/// which every verifier in the field accepts. `key_name` adds `skn`.
pub fn build_token(resource: &str, key_b64: &str, expiry: u64, key_name: Option<&str>) -> Result<String, SasError> {
    let key = B64.decode(key_b64).map_err(|_| SasError::BadKey)?;
    build_token_with(resource, expiry, key_name, |msg| Ok(hmac_sha256(&key, msg)))
}

/// Builds a token whose HMAC is computed by `sign` over the string-to-sign — for keys that never
/// leave a security module (a TPM signs inside the chip).
pub fn build_token_with<E>(
    resource: &str,
    expiry: u64,
    key_name: Option<&str>,
    sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, E>,
) -> Result<String, E> {
    let sr = encode_component(resource);
    let sig = B64.encode(sign(format!("{sr}\n{expiry}").as_bytes())?);
    let mut token = format!("{PREFIX}sr={sr}&sig={}&se={expiry}", encode_component(&sig));
    if let Some(skn) = key_name {
        token.push_str("&skn=");
        token.push_str(&encode_component(skn));
    }
    Ok(token)
}

/// HMAC-SHA256 of `msg` with `key`.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(msg);
    mac.finalize().into_bytes().to_vec()
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn encode_component(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

/// Percent-decodes (`%XX` only; `+` stays `+`, as base64 signatures need).
pub fn decode_component(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

fn decode_signature(sig: &str) -> Result<Vec<u8>, SasError> {
    let decoded = decode_component(sig);
    B64.decode(decoded.trim())
        .or_else(|_| B64.decode(decoded.replace(' ', "+")))
        .map_err(|_| SasError::Malformed("'sig' is not base64".into()))
}

fn normalize_audience(s: &str) -> String {
    let lower = s.trim().to_ascii_lowercase();
    let no_scheme = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
        .unwrap_or(&lower);
    no_scheme.trim_end_matches('/').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGVzdFN0cmluZzE=";

    #[test]
    fn service_vector_from_reference() {
        // service-api.md §4.3 worked example.
        let sig = sign(KEY, "mydps.azure-devices-provisioning.net", 1_700_000_000).unwrap();
        assert_eq!(sig, "B+52UIZrOfnttB8z7DOG24mG8cBQoF3EtdNWkGWofjQ=");
        let token = format!(
            "SharedAccessSignature sr=mydps.azure-devices-provisioning.net&sig={}&se=1700000000&skn=provisioningserviceowner",
            encode_component(&sig)
        );
        let t = SasToken::parse(&token).unwrap();
        assert_eq!(t.key_name.as_deref(), Some("provisioningserviceowner"));
        assert_eq!(t.verify_signature([KEY]).unwrap(), 0);
        t.check_audience_prefix("mydps.azure-devices-provisioning.net/enrollments/x")
            .unwrap();
    }

    /// One token per SDK encoding of `sr` (device-protocol.md §6.1); each must verify as sent.
    #[test]
    fn every_sdk_sr_encoding_verifies() {
        let expected = "0ne0001234A/registrations/dev-01";
        let variants = [
            "0ne0001234A%2Fregistrations%2Fdev-01", // Python, C#, Node TPM
            "0ne0001234A/registrations/dev-01",     // Node symmetric (raw)
            "0ne0001234A%2fregistrations%2fdev-01", // C (lower-case hex)
            "0ne0001234a%2fregistrations%2fdev-01", // identity-service (lower-cased)
        ];
        for sr in variants {
            let sig = sign(KEY, sr, 2_000_000_000).unwrap();
            // C encodes sig with lower-case hex; Python upper-case. Both decode the same.
            let sig_enc = encode_component(&sig).replace("%2B", "%2b");
            for token in [
                format!("SharedAccessSignature sr={sr}&sig={sig_enc}&se=2000000000"),
                format!("SharedAccessSignature sr={sr}&sig={sig_enc}&skn=registration&se=2000000000"),
                format!("SharedAccessSignature se=2000000000&skn=&sig={sig_enc}&sr={sr}"),
            ] {
                let t = SasToken::parse(&token).unwrap();
                t.check_audience_eq(expected).unwrap();
                t.verify_signature(["AAAA", KEY]).unwrap();
                t.check_expiry(1_999_999_999).unwrap();
            }
        }
    }

    #[test]
    fn secondary_key_is_reported() {
        let token = build_token("scope/registrations/a", KEY, 10, None).unwrap();
        let t = SasToken::parse(&token).unwrap();
        assert_eq!(t.verify_signature(["c2Vjb25k", KEY]).unwrap(), 1);
    }

    #[test]
    fn literal_slash_in_sig_and_scheme_in_sr() {
        // Old Python service SDK leaves '/' literal in sig; new one may sign "https%3A%2F%2Fhost".
        let sr = "https%3A%2F%2Fmydps.example.test";
        let sig = sign(KEY, sr, 5).unwrap();
        let t = SasToken::parse(&format!(
            "SharedAccessSignature sr={sr}&sig={}&se=5&skn=p",
            sig.replace('+', "%2B")
        ))
        .unwrap();
        t.verify_signature([KEY]).unwrap();
        t.check_audience_prefix("mydps.example.test/enrollments/x").unwrap();
    }

    #[test]
    fn rejections_say_why() {
        assert!(matches!(SasToken::parse("Bearer x"), Err(SasError::Malformed(_))));
        assert_eq!(
            SasToken::parse("SharedAccessSignature sig=a&se=1").unwrap_err(),
            SasError::MissingField("sr")
        );
        assert!(matches!(
            SasToken::parse("SharedAccessSignature sr=a&sig=a&se=x"),
            Err(SasError::Malformed(_))
        ));
        let token = build_token("s/registrations/a", KEY, 1000, None).unwrap();
        let t = SasToken::parse(&token).unwrap();
        assert_eq!(
            t.check_expiry(1000 + MAX_CLOCK_SKEW_SECS + 1),
            Err(SasError::Expired {
                expiry: 1000,
                now: 1301
            })
        );
        t.check_expiry(1000 + MAX_CLOCK_SKEW_SECS).unwrap();
        assert_eq!(t.verify_signature(["c2Vjb25k"]), Err(SasError::SignatureMismatch));
        assert!(matches!(
            t.check_audience_eq("s/registrations/b"),
            Err(SasError::AudienceMismatch { .. })
        ));
        assert!(t.check_audience_prefix("s/registrations/ab").is_err());
        for dup in [
            "SharedAccessSignature sr=a&sr=b&sig=YQ==&se=1",
            "SharedAccessSignature sr=a&sig=YQ==&SIG=YQ==&se=1",
            "SharedAccessSignature sr=a&sig=YQ==&se=1&se=2",
            "SharedAccessSignature sr=a&sig=YQ==&se=1&skn=p&skn=q",
        ] {
            match SasToken::parse(dup) {
                Err(SasError::Malformed(m)) => assert!(m.contains("appears more than once"), "{m}"),
                other => panic!("{dup}: {other:?}"),
            }
        }
    }

    /// A scoped audience covers its own resource and what lies below it, by whole path segments
    /// only, and never another host.
    #[test]
    fn scoped_audience_covers_by_segment() {
        let t = SasToken::parse(&build_token("Host/enrollments/x", KEY, 10, Some("p")).unwrap()).unwrap();
        t.check_audience_prefix("host/enrollments/x").unwrap();
        t.check_audience_prefix("host/enrollments/X/attestationmechanism")
            .unwrap();
        for other in [
            "host/enrollments/xy",
            "host/enrollments",
            "host",
            "host/enrollments/y",
            "other/enrollments/x",
            "host/enrollments/x%2fy",
        ] {
            assert!(t.check_audience_prefix(other).is_err(), "{other}");
        }
        let host = SasToken::parse(&build_token("host", KEY, 10, Some("p")).unwrap()).unwrap();
        host.check_audience_prefix("host/enrollments/x").unwrap();
        assert!(host.check_audience_prefix("hostile/enrollments/x").is_err());
        assert!(host.check_audience_prefix("host.evil/enrollments/x").is_err());
    }
}

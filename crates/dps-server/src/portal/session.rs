//! The portal's sessions and one-time sign-in links, kept by the browser and sealed by the
//! server: a cookie is the session's grants and expiry, MACed with the portal key of the
//! identity (`dps.json`, so every node of a cluster opens the cookies of every other). No
//! session table: nothing to lose on a restart, nothing to share between nodes.
//!
//! A grant names a policy and a tag of the key that signed in (the first bytes of its
//! SHA-256): the session stays good while the policy has that key, and ends when the policy
//! is deleted or that key made anew. Each MAC input starts with its purpose (`session`,
//! `csrf`, `link`), so a value made for one cannot pass for another.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use subtle::ConstantTimeEq;

/// How long a session lasts (a working day).
pub(crate) const SESSION_SECS: u64 = 8 * 3600;

/// How long a sign-in link may wait to be opened.
pub(crate) const LINK_SECS: u64 = 15 * 60;

/// The cookie's name.
pub(crate) const COOKIE: &str = "dps_portal";

/// Whose policy a grant is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Grant {
    /// `None`: the provisioning service's; else the hub's host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) hub: Option<String>,
    /// The policy's name.
    pub(crate) policy: String,
    /// The tag of the key that signed in ([`key_tag`]).
    pub(crate) key: String,
}

/// A session: who signed in, until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Session {
    #[serde(rename = "g")]
    pub(crate) grants: Vec<Grant>,
    /// Unix seconds.
    #[serde(rename = "e")]
    pub(crate) expires: u64,
    /// Makes every session's cookie (and CSRF token) different.
    #[serde(rename = "n")]
    pub(crate) nonce: String,
}

/// A one-time sign-in link's token: the owners of everything, until `expires`, once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Link {
    #[serde(rename = "e")]
    pub(crate) expires: u64,
    #[serde(rename = "n")]
    pub(crate) nonce: String,
}

/// The tag of a key a grant carries: 8 bytes of its SHA-256, hex (names the key without
/// revealing it).
pub(crate) fn key_tag(key: &str) -> String {
    let digest = sha2::Sha256::digest(key.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn mac(key: &[u8], purpose: &str, payload: &str) -> Vec<u8> {
    dps_proto::sas::hmac_sha256(key, format!("{purpose}\n{payload}").as_bytes())
}

/// `payload.mac`, both base64url.
fn seal_as<T: Serialize>(key: &[u8], purpose: &str, value: &T) -> String {
    let payload = B64URL.encode(serde_json::to_vec(value).expect("plain structs serialize"));
    let tag = B64URL.encode(mac(key, purpose, &payload));
    format!("{payload}.{tag}")
}

fn open_as<T: for<'de> Deserialize<'de>>(key: &[u8], purpose: &str, sealed: &str) -> Option<T> {
    let (payload, tag) = sealed.split_once('.')?;
    let given = B64URL.decode(tag).ok()?;
    if !bool::from(given.ct_eq(&mac(key, purpose, payload))) {
        return None;
    }
    serde_json::from_slice(&B64URL.decode(payload).ok()?).ok()
}

impl Session {
    /// The cookie value.
    pub(crate) fn seal(&self, key: &[u8]) -> String {
        seal_as(key, "session", self)
    }

    /// The session a cookie value holds, if the server made it and it has not expired.
    pub(crate) fn open(key: &[u8], cookie: &str, now: u64) -> Option<Session> {
        open_as::<Session>(key, "session", cookie).filter(|s| s.expires > now)
    }
}

/// The CSRF token of a session's cookie: what the page sends back in `X-CSRF-Token` on every
/// request that changes something (a page elsewhere cannot read it).
pub(crate) fn csrf_token(key: &[u8], cookie: &str) -> String {
    B64URL.encode(mac(key, "csrf", cookie))
}

/// Whether `given` is the CSRF token of `cookie`.
pub(crate) fn csrf_matches(key: &[u8], cookie: &str, given: &str) -> bool {
    bool::from(csrf_token(key, cookie).as_bytes().ct_eq(given.as_bytes()))
}

impl Link {
    /// The token of a link.
    pub(crate) fn seal(&self, key: &[u8]) -> String {
        seal_as(key, "link", self)
    }

    /// The link a token holds, if the server made it and it has not expired.
    pub(crate) fn open(key: &[u8], token: &str, now: u64) -> Option<Link> {
        open_as::<Link>(key, "link", token).filter(|l| l.expires > now)
    }
}

/// The cookie value of `name` in a `Cookie` header.
pub(crate) fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"portal key for the tests, 32 b!!";

    fn session() -> Session {
        Session {
            grants: vec![Grant {
                hub: None,
                policy: "provisioningserviceowner".into(),
                key: key_tag("abc"),
            }],
            expires: 1000,
            nonce: "n1".into(),
        }
    }

    #[test]
    fn sealed_values_open_only_with_the_key_for_their_purpose_until_they_expire() {
        let sealed = session().seal(KEY);
        assert_eq!(Session::open(KEY, &sealed, 999), Some(session()));
        assert_eq!(Session::open(KEY, &sealed, 1000), None, "expired");
        assert_eq!(Session::open(b"another key", &sealed, 0), None);
        let (payload, tag) = sealed.split_once('.').unwrap();
        let forged = format!("{}.{tag}", B64URL.encode(br#"{"g":[],"e":99999,"n":"x"}"#));
        assert_eq!(Session::open(KEY, &forged, 0), None);
        assert_eq!(Session::open(KEY, payload, 0), None);
        // A link token is no session, and a session no link.
        let link = Link {
            expires: 1000,
            nonce: "n1".into(),
        }
        .seal(KEY);
        assert_eq!(Session::open(KEY, &link, 0), None);
        assert_eq!(Link::open(KEY, &sealed, 0), None);
        assert!(Link::open(KEY, &link, 10).is_some());
    }

    #[test]
    fn csrf_tokens_belong_to_their_cookie() {
        let a = session().seal(KEY);
        let b = Session {
            nonce: "n2".into(),
            ..session()
        }
        .seal(KEY);
        let token = csrf_token(KEY, &a);
        assert!(csrf_matches(KEY, &a, &token));
        assert!(!csrf_matches(KEY, &b, &token));
        assert!(!csrf_matches(KEY, &a, ""));
        assert_eq!(cookie("x=1; dps_portal=abc.def; y=2", COOKIE), Some("abc.def"));
        assert_eq!(cookie("x=1", COOKIE), None);
    }
}

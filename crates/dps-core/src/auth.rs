//! Shared-access-policy authorization for the service and registry REST APIs.
//!
//! A request carries `Authorization: SharedAccessSignature sr=<host>&sig=..&se=..&skn=<policy>`;
//! the policy named by `skn` must exist, its primary or secondary key must have signed the token, the
//! token's audience must cover the requested resource, and the policy must hold the needed right.
//!
//! The policies change while the server runs (`dps policy …`, the portal): an authorizer is a
//! shared handle whose set is replaced whole ([`PolicyAuthorizer::replace`]), so a request
//! reads the set without a lock and sees either the old one or the new one. The rules a change
//! must follow are in [`manage`].

pub mod manage;

use std::sync::Arc;

use arc_swap::ArcSwap;
use dps_proto::sas::SasToken;
use serde::{Deserialize, Serialize};

use crate::error::{Error, SasRefusal};

/// A named policy with two keys and a set of rights (e.g. `provisioningserviceowner` with all DPS
/// rights, `iothubowner` with all hub rights).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SharedAccessPolicy {
    /// `skn` value.
    pub key_name: String,
    /// Base64 primary key.
    pub primary_key: String,
    /// Base64 secondary key.
    pub secondary_key: String,
    /// Right names, e.g. `EnrollmentRead`, `RegistryWrite`.
    pub rights: Vec<String>,
}

impl SharedAccessPolicy {
    /// Whether the policy holds `right` (case-insensitive).
    pub fn has_right(&self, right: &str) -> bool {
        self.rights.iter().any(|r| r.eq_ignore_ascii_case(right))
    }
}

/// Checks `Authorization` headers against a set of policies. Clones share the set: replacing
/// it through one ([`PolicyAuthorizer::replace`]) is seen by all.
#[derive(Debug, Clone, Default)]
pub struct PolicyAuthorizer {
    policies: Arc<ArcSwap<Vec<Arc<SharedAccessPolicy>>>>,
}

impl PolicyAuthorizer {
    /// An authorizer over these policies.
    pub fn new(policies: Vec<SharedAccessPolicy>) -> Self {
        let this = Self::default();
        this.replace(policies);
        this
    }

    /// The policies now.
    pub fn policies(&self) -> Arc<Vec<Arc<SharedAccessPolicy>>> {
        self.policies.load_full()
    }

    /// Replaces the policies whole (a policy was created, changed or deleted here or on
    /// another node): requests authorized from now on are judged by these.
    pub fn replace(&self, policies: Vec<SharedAccessPolicy>) {
        self.policies
            .store(Arc::new(policies.into_iter().map(Arc::new).collect()));
    }

    /// The policy named `name` (case-insensitive) that signed a token with one of its keys,
    /// where the signature is checked by `signed_with` (Event Hubs tokens are signed unlike
    /// IoT Hub's): what the AMQP Event Hubs endpoint's own token check uses.
    pub fn signed_by(&self, name: &str, signed_with: impl Fn(&str) -> bool) -> Option<Arc<SharedAccessPolicy>> {
        self.policies
            .load()
            .iter()
            .find(|p| p.key_name.eq_ignore_ascii_case(name))
            .filter(|p| signed_with(&p.primary_key) || signed_with(&p.secondary_key))
            .cloned()
    }

    /// Authorizes a request for the resource `path` on this server, needing any one of
    /// `rights`.
    ///
    /// `hosts` are the server's OWN names for the API (each also with its port, as SDKs sign
    /// `host:port` when the port is not 443) — never a client-supplied `Host`: the token's
    /// audience must be one of them, or a resource under one of them that covers `path` by
    /// whole segments (`host/enrollments/x` covers `/enrollments/x` and `/enrollments/x/...`,
    /// not `/enrollments/xy`). `path` is the canonical, decoded resource path of the route.
    ///
    /// Every failure is a 401. Messages say what was wrong with the token itself (malformed,
    /// expired, audience, rights) but not which policies exist: an unknown policy name and a
    /// wrong key get the same answer, and the precise reason goes to the server log.
    pub fn authorize(
        &self,
        now_unix: u64,
        header: Option<&str>,
        hosts: &[String],
        path: &str,
        rights: &[&str],
    ) -> Result<Arc<SharedAccessPolicy>, Error> {
        let header = header.ok_or(SasRefusal::MissingAuthorization)?;
        if header.trim_start().to_ascii_lowercase().starts_with("bearer ") {
            return Err(SasRefusal::Bearer.into());
        }
        let token = SasToken::parse(header).map_err(SasRefusal::Token)?;
        let name = token.key_name.as_deref().ok_or(SasRefusal::NoPolicyName)?;
        token.check_expiry(now_unix).map_err(SasRefusal::Token)?;
        let not_signed = || {
            Error::from(SasRefusal::NotSignedByPolicy {
                policy: name.to_string(),
            })
        };
        let policies = self.policies.load();
        let Some(policy) = policies.iter().find(|p| p.key_name.eq_ignore_ascii_case(name)) else {
            tracing::info!(policy = %name, "shared access signature refused: no such policy");
            return Err(not_signed());
        };
        if token
            .verify_signature([policy.primary_key.as_str(), policy.secondary_key.as_str()])
            .is_err()
        {
            tracing::info!(policy = %policy.key_name, "shared access signature refused: signed with neither key of the policy");
            return Err(not_signed());
        }
        if !hosts
            .iter()
            .any(|h| token.check_audience_prefix(&format!("{h}{path}")).is_ok())
        {
            return Err(SasRefusal::AudienceNotCovering {
                audience: token.audience().to_string(),
                path: path.to_string(),
                hosts: hosts.to_vec(),
            }
            .into());
        }
        if !rights.iter().any(|r| policy.has_right(r)) {
            return Err(Error::InsufficientRights {
                policy: policy.key_name.clone(),
                needed: rights.iter().map(|r| r.to_string()).collect(),
            });
        }
        Ok(policy.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dps_proto::sas::build_token;

    fn authz() -> PolicyAuthorizer {
        PolicyAuthorizer::new(vec![
            SharedAccessPolicy {
                key_name: "owner".into(),
                primary_key: "cHJpbWFyeWtleQ==".into(),
                secondary_key: "c2Vjb25kYXJ5a2V5".into(),
                rights: vec!["EnrollmentRead".into(), "EnrollmentWrite".into()],
            },
            SharedAccessPolicy {
                key_name: "reader".into(),
                primary_key: "cmVhZGVy".into(),
                secondary_key: "cmVhZGVyMg==".into(),
                rights: vec!["EnrollmentRead".into()],
            },
        ])
    }

    #[test]
    fn accepts_valid_and_explains_rejections() {
        let a = authz();
        let hosts = vec!["dps.example.test".to_string(), "dps.example.test:8443".to_string()];
        let path = "/enrollments/x";
        let tok = build_token("dps.example.test", "c2Vjb25kYXJ5a2V5", 1000, Some("owner")).unwrap();
        assert_eq!(
            a.authorize(500, Some(&tok), &hosts, path, &["EnrollmentWrite"])
                .unwrap()
                .key_name,
            "owner"
        );
        // SDKs sign `host:port` when the port is not 443.
        let with_port = build_token("dps.example.test:8443", "c2Vjb25kYXJ5a2V5", 1000, Some("owner")).unwrap();
        a.authorize(500, Some(&with_port), &hosts, path, &["EnrollmentWrite"])
            .unwrap();
        let err = |h: Option<&str>, right: &str, now: u64| a.authorize(now, h, &hosts, path, &[right]).unwrap_err();
        assert!(err(None, "EnrollmentRead", 0)
            .to_string()
            .contains("missing Authorization"));
        assert!(err(Some("Bearer abc"), "EnrollmentRead", 0)
            .to_string()
            .contains("bearer"));
        assert!(err(Some(&tok), "EnrollmentRead", 2000).to_string().contains("expired"));
        // A wrong key and an unknown policy read the same: refusals do not reveal policy names.
        let wrong_key = build_token("dps.example.test", "d3Jvbmc=", 1000, Some("owner")).unwrap();
        let unknown = build_token("dps.example.test", "d3Jvbmc=", 1000, Some("nobody")).unwrap();
        let (e1, e2) = (
            err(Some(&wrong_key), "EnrollmentRead", 0),
            err(Some(&unknown), "EnrollmentRead", 0),
        );
        assert_eq!(
            e1.to_string(),
            "shared access signature is not signed by a key of policy 'owner' (no such policy, or not its primary or secondary key)"
        );
        assert_eq!(e2.to_string(), e1.to_string().replace("'owner'", "'nobody'"));
        assert_eq!((e1.status(), e1.code()), (e2.status(), e2.code()));
        let other_host = build_token("other.example.test", "cHJpbWFyeWtleQ==", 1000, Some("owner")).unwrap();
        let e = err(Some(&other_host), "EnrollmentRead", 0);
        assert!(
            e.to_string()
                .contains("audience 'other.example.test' does not cover /enrollments/x"),
            "{}",
            e
        );
        assert!(
            e.to_string().contains("dps.example.test, dps.example.test:8443"),
            "{}",
            e
        );
        let reader = build_token("dps.example.test", "cmVhZGVy", 1000, Some("reader")).unwrap();
        let e = err(Some(&reader), "EnrollmentWrite", 0);
        assert_eq!((e.status(), e.code()), (401, dps_proto::codes::INSUFFICIENT_RIGHTS));
        assert!(e.to_string().contains("lacks the EnrollmentWrite right"));
        let e = a
            .authorize(0, Some(&reader), &hosts, path, &["EnrollmentWrite", "ServiceConfig"])
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("one of the rights EnrollmentWrite, ServiceConfig"),
            "{}",
            e
        );
        a.authorize(0, Some(&reader), &hosts, path, &["EnrollmentWrite", "EnrollmentRead"])
            .unwrap();
    }

    /// A token scoped to one resource reaches that resource and what is under it, nothing else.
    #[test]
    fn scoped_tokens_reach_only_their_scope() {
        let a = authz();
        let hosts = vec!["dps.example.test".to_string()];
        let scoped = build_token(
            "dps.example.test/enrollments/x",
            "cHJpbWFyeWtleQ==",
            1000,
            Some("owner"),
        )
        .unwrap();
        for ok in ["/enrollments/x", "/enrollments/X/attestationmechanism"] {
            a.authorize(0, Some(&scoped), &hosts, ok, &["EnrollmentRead"]).unwrap();
        }
        for off in [
            "/enrollments/xy",
            "/enrollments",
            "/enrollments/y",
            "/enrollmentgroups/x",
            "/",
        ] {
            let e = a
                .authorize(0, Some(&scoped), &hosts, off, &["EnrollmentRead"])
                .unwrap_err();
            assert_eq!(e.code(), dps_proto::codes::UNAUTHORIZED, "{off}");
            assert!(e.to_string().contains("does not cover"), "{off}: {}", e);
        }
        // Only the server's own names count, whatever host the token names.
        let forged = build_token("evil.test/enrollments/x", "cHJpbWFyeWtleQ==", 1000, Some("owner")).unwrap();
        assert!(a
            .authorize(0, Some(&forged), &hosts, "/enrollments/x", &["EnrollmentRead"])
            .is_err());
    }
}

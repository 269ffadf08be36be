//! Shared-access-policy authorization for the service and registry REST APIs.
//!
//! A request carries `Authorization: SharedAccessSignature sr=<host>&sig=..&se=..&skn=<policy>`;
//! the policy named by `skn` must exist, its primary or secondary key must have signed the token, the
//! token's audience must cover the requested resource, and the policy must hold the needed right.

use dps_proto::sas::SasToken;
use serde::{Deserialize, Serialize};

use crate::ApiError;
use dps_proto::codes;

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

/// Checks `Authorization` headers against a set of policies.
#[derive(Debug, Clone, Default)]
pub struct PolicyAuthorizer {
    policies: Vec<SharedAccessPolicy>,
}

impl PolicyAuthorizer {
    /// An authorizer over these policies.
    pub fn new(policies: Vec<SharedAccessPolicy>) -> Self {
        Self { policies }
    }

    /// The policies (for `dps info`).
    pub fn policies(&self) -> &[SharedAccessPolicy] {
        &self.policies
    }

    /// Authorizes a request for `resource` (`{host}{path}`, no scheme) needing `right`. Every
    /// failure is a 401 whose message says exactly what was wrong.
    pub fn authorize(
        &self,
        now_unix: u64,
        header: Option<&str>,
        resource: &str,
        right: &str,
    ) -> Result<&SharedAccessPolicy, ApiError> {
        let header = header
            .ok_or_else(|| ApiError::unauthorized("missing Authorization header (expected a SharedAccessSignature)"))?;
        if header.trim_start().to_ascii_lowercase().starts_with("bearer ") {
            return Err(ApiError::unauthorized(
                "bearer (Entra ID) tokens are not supported; use a SharedAccessSignature from a shared access policy",
            ));
        }
        let token = SasToken::parse(header).map_err(|e| ApiError::unauthorized(e.to_string()))?;
        let name = token
            .key_name
            .as_deref()
            .ok_or_else(|| ApiError::unauthorized("shared access signature has no 'skn' (policy name)"))?;
        let policy = self
            .policies
            .iter()
            .find(|p| p.key_name.eq_ignore_ascii_case(name))
            .ok_or_else(|| ApiError::unauthorized(format!("unknown shared access policy '{name}'")))?;
        token
            .check_expiry(now_unix)
            .map_err(|e| ApiError::unauthorized(e.to_string()))?;
        token
            .verify_signature([policy.primary_key.as_str(), policy.secondary_key.as_str()])
            .map_err(|_| {
                ApiError::unauthorized(format!(
                    "shared access signature does not match the keys of policy '{}'",
                    policy.key_name
                ))
            })?;
        token
            .check_audience_prefix(resource)
            .map_err(|e| ApiError::unauthorized(e.to_string()))?;
        if !policy.has_right(right) {
            return Err(ApiError::new(
                codes::INSUFFICIENT_RIGHTS,
                format!(
                    "policy '{}' lacks the {right} right needed for this operation",
                    policy.key_name
                ),
            ));
        }
        Ok(policy)
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
        let tok = build_token("dps.example.test", "c2Vjb25kYXJ5a2V5", 1000, Some("owner")).unwrap();
        assert_eq!(
            a.authorize(500, Some(&tok), "dps.example.test/enrollments/x", "EnrollmentWrite")
                .unwrap()
                .key_name,
            "owner"
        );
        let err = |h: Option<&str>, right: &str, now: u64| {
            a.authorize(now, h, "dps.example.test/enrollments/x", right)
                .unwrap_err()
        };
        assert!(err(None, "EnrollmentRead", 0).message.contains("missing Authorization"));
        assert!(err(Some("Bearer abc"), "EnrollmentRead", 0).message.contains("bearer"));
        assert!(err(Some(&tok), "EnrollmentRead", 2000).message.contains("expired"));
        let wrong_key = build_token("dps.example.test", "d3Jvbmc=", 1000, Some("owner")).unwrap();
        assert!(err(Some(&wrong_key), "EnrollmentRead", 0)
            .message
            .contains("does not match the keys of policy 'owner'"));
        let unknown = build_token("dps.example.test", "d3Jvbmc=", 1000, Some("nobody")).unwrap();
        assert!(err(Some(&unknown), "EnrollmentRead", 0)
            .message
            .contains("unknown shared access policy 'nobody'"));
        let other_host = build_token("other.example.test", "cHJpbWFyeWtleQ==", 1000, Some("owner")).unwrap();
        assert!(err(Some(&other_host), "EnrollmentRead", 0).message.contains("audience"));
        let reader = build_token("dps.example.test", "cmVhZGVy", 1000, Some("reader")).unwrap();
        let e = err(Some(&reader), "EnrollmentWrite", 0);
        assert_eq!((e.status, e.code), (401, codes::INSUFFICIENT_RIGHTS));
        assert!(e.message.contains("lacks the EnrollmentWrite right"));
    }
}

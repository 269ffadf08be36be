//! The audit trail's entries: every registration attempt and every change an operator or a
//! backend made through the service and hub APIs, as the store keeps them (decision 0036).
//!
//! An entry holds what was decided and by whom, never a secret: no keys, no tokens, no request
//! bodies (a change names the fields it sent, not their values).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What an entry is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AuditKind {
    /// A device's registration attempt (register, or a credential refused at connect).
    Registration,
    /// A change through the service or a hub's API (enrollments, groups, registrations, CA
    /// certificates, linked hubs, policies, devices, twins, modules, jobs).
    Change,
}

impl AuditKind {
    /// Its name in the store and in filters.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Registration => "registration",
            AuditKind::Change => "change",
        }
    }

    /// Parses a name (any case).
    pub fn parse(text: &str) -> Option<Self> {
        [AuditKind::Registration, AuditKind::Change]
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(text))
    }
}

/// One entry. Fields that do not apply to its kind are absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// Its place in the trail (given by the store; 0 before it is stored). Entries are read
    /// back in this order, and a page continues after the last one's.
    #[serde(default)]
    pub sequence: u64,
    /// When it happened.
    pub time: DateTime<Utc>,
    /// Registration attempt or change.
    pub kind: AuditKind,
    /// A registration: the status decided (`assigned`, `failed`, `disabled`), or `refused` (the
    /// device was answered with an error). A change: `succeeded` or `failed`.
    pub outcome: String,
    /// The device's registration id (registration attempts; changes to an enrollment or a
    /// registration record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_id: Option<String>,
    /// The DPS error code the caller was answered with, or the registration's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<u32>,
    /// What the error said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// The attestation of the enrollment matched (`symmetricKey`, `x509`, `tpm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<String>,
    /// `mqtt`, `amqp` or `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<String>,
    /// The caller's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The enrollment group the device matched (absent: its individual enrollment, or none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_group_id: Option<String>,
    /// The hub the device was assigned to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_hub: Option<String>,
    /// The device id it got there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// A change: the shared access policy that made it (absent when the request was refused
    /// before a policy was found).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// A change: the API it came through (`service`, or the hub's host name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    /// A change: method and path (`PUT /enrollments/dev-1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// A change: the HTTP status answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// A change: the fields of the body it sent (names only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
    /// A change: the etag it required (`If-Match`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_match: Option<String>,
    /// A change: the resource's etag after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
}

impl AuditEntry {
    /// An entry of `kind` at `time` with `outcome` and nothing else.
    pub fn new(time: DateTime<Utc>, kind: AuditKind, outcome: impl Into<String>) -> Self {
        Self {
            sequence: 0,
            time,
            kind,
            outcome: outcome.into(),
            registration_id: None,
            error_code: None,
            error_message: None,
            attestation: None,
            transport: None,
            source: None,
            enrollment_group_id: None,
            assigned_hub: None,
            device_id: None,
            policy: None,
            api: None,
            operation: None,
            status: None,
            fields: Vec::new(),
            if_match: None,
            etag: None,
        }
    }

    /// The registration id as the store indexes it (lower case: ids are case-insensitive).
    pub fn registration_key(&self) -> Option<String> {
        self.registration_id.as_deref().map(dps_proto::registration_id::key)
    }
}

/// Which entries a query wants; every field that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// At or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Before this time.
    pub until: Option<DateTime<Utc>>,
    /// Of this registration id (any case).
    pub registration_id: Option<String>,
    /// With this outcome (any case).
    pub outcome: Option<String>,
    /// Of this kind.
    pub kind: Option<AuditKind>,
    /// After this sequence number (the previous page's last).
    pub after: Option<u64>,
}

impl AuditFilter {
    /// Whether `entry` matches (what a store without indexes checks; the others say it in SQL).
    pub fn matches(&self, entry: &AuditEntry) -> bool {
        self.since.is_none_or(|t| entry.time >= t)
            && self.until.is_none_or(|t| entry.time < t)
            && self
                .registration_id
                .as_deref()
                .is_none_or(|id| entry.registration_key().as_deref() == Some(&dps_proto::registration_id::key(id)))
            && self
                .outcome
                .as_deref()
                .is_none_or(|o| entry.outcome.eq_ignore_ascii_case(o))
            && self.kind.is_none_or(|k| entry.kind == k)
            && self.after.is_none_or(|s| entry.sequence > s)
    }
}

/// Most entries one query answers.
pub const MAX_AUDIT_PAGE: usize = 1000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_every_field_set() {
        let t = |s: i64| DateTime::from_timestamp(s, 0).unwrap();
        let mut e = AuditEntry::new(t(100), AuditKind::Registration, "assigned");
        e.sequence = 7;
        e.registration_id = Some("Dev-1".into());
        assert!(AuditFilter::default().matches(&e));
        let f = AuditFilter {
            since: Some(t(100)),
            until: Some(t(101)),
            registration_id: Some("dev-1".into()),
            outcome: Some("ASSIGNED".into()),
            kind: Some(AuditKind::Registration),
            after: Some(6),
        };
        assert!(f.matches(&e));
        for miss in [
            AuditFilter {
                since: Some(t(101)),
                ..Default::default()
            },
            AuditFilter {
                until: Some(t(100)),
                ..Default::default()
            },
            AuditFilter {
                registration_id: Some("dev-2".into()),
                ..Default::default()
            },
            AuditFilter {
                outcome: Some("failed".into()),
                ..Default::default()
            },
            AuditFilter {
                kind: Some(AuditKind::Change),
                ..Default::default()
            },
            AuditFilter {
                after: Some(7),
                ..Default::default()
            },
        ] {
            assert!(!miss.matches(&e), "{miss:?}");
        }
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["kind"], "registration");
        assert!(json.get("policy").is_none() && json.get("fields").is_none());
        assert_eq!(serde_json::from_value::<AuditEntry>(json).unwrap(), e);
        assert_eq!(AuditKind::parse("Change"), Some(AuditKind::Change));
    }
}

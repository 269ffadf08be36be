//! The stored shape of a device or module (identity + twin) and the registry views built from
//! it. A module is a record of its own, with `moduleId` set and keyed under its device
//! ([`module_key`]), so that it has its own credentials, twin and session, as in IoT Hub.
//!
//! The record is what a hub store keeps (one JSON document per device in SQLite) and what the
//! in-memory cache holds behind an `Arc`, so readers never block writers. Connection state is *not* part of it:
//! it changes on every connect and telemetry message and is meaningless after a restart, so it
//! lives in the per-device live state instead (see `lib.rs`).

use chrono::{DateTime, Utc};
use dps_proto::keys::encode_key;
use dps_proto::model::hub::{
    AuthenticationMechanism, Device, Module, SymmetricKey, Twin, TwinProperties, X509Thumbprint,
};
use dps_proto::model::service::DeviceCapabilities;
use dps_proto::timefmt::format_record;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Registry status of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    Enabled,
    Disabled,
}

impl Status {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Status::Enabled => "enabled",
            Status::Disabled => "disabled",
        }
    }

    /// Case-insensitive parse of the registry API's `status`.
    pub(crate) fn parse(s: &str) -> Option<Self> {
        if s.eq_ignore_ascii_case("enabled") {
            Some(Status::Enabled)
        } else if s.eq_ignore_ascii_case("disabled") {
            Some(Status::Disabled)
        } else {
            None
        }
    }
}

/// One device: identity and twin, persisted as one JSON document.
///
/// Public because a [`crate::store::HubStore`] moves it to and from storage; its fields stay
/// private to the hub, so a store treats it as a document with a key (and, to count devices, a
/// status) and the hub alone decides what a device's state means.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRecord {
    /// Device id as first created (the registry is case-insensitive, the id keeps its spelling).
    pub(crate) device_id: String,
    /// The module id, when this is a module of `device_id` (spelling kept, as for devices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) module_id: Option<String>,
    /// A module's `managedBy` (e.g. `IotEdge`), as its creator set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) managed_by: Option<String>,
    pub(crate) generation_id: String,
    pub(crate) etag: String,
    pub(crate) status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) status_reason: Option<String>,
    pub(crate) status_updated_time: DateTime<Utc>,
    pub(crate) created_time: DateTime<Utc>,
    pub(crate) authentication: AuthenticationMechanism,
    #[serde(default)]
    pub(crate) capabilities: DeviceCapabilities,
    pub(crate) twin: TwinState,
    /// The DPS operation that created this device, when provisioning created it: lets a repeated
    /// upsert of that operation (start-up recovery, decision 0009) report `created` as the first
    /// attempt did. Not part of any API view.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) created_by_operation: Option<String>,
    /// When the device's certificate was issued under a credential policy (it registered with a
    /// CSR): the policy, which renewals use, and how long the certificate before the last
    /// renewal (the secondary thumbprint) is still accepted. Not part of any API view.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) issuance: Option<Issuance>,
}

/// [`DeviceRecord::issuance`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Issuance {
    /// The credential policy that issued the device's certificate.
    pub(crate) policy: String,
    /// After a renewal: the previous certificate (now the secondary thumbprint) is refused
    /// after this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) previous_valid_until: Option<DateTime<Utc>>,
    /// When the device last renewed its certificate through the hub (none since it
    /// registered): the next renewal waits for the hub's minimum interval after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) renewed_at: Option<DateTime<Utc>>,
}

/// The twin part of a device record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TwinState {
    pub etag: String,
    /// Bumped on every twin change (tags, desired, reported).
    pub version: i64,
    #[serde(default)]
    pub tags: Map<String, Value>,
    #[serde(default)]
    pub desired: Map<String, Value>,
    pub desired_version: i64,
    pub desired_updated: DateTime<Utc>,
    #[serde(default)]
    pub reported: Map<String, Value>,
    pub reported_version: i64,
    pub reported_updated: DateTime<Utc>,
}

impl TwinState {
    /// An empty twin as Azure creates it: versions start at 1.
    pub(crate) fn new(now: DateTime<Utc>) -> Self {
        Self {
            etag: new_etag(),
            version: 1,
            tags: Map::new(),
            desired: Map::new(),
            desired_version: 1,
            desired_updated: now,
            reported: Map::new(),
            reported_version: 1,
            reported_updated: now,
        }
    }

    /// Replaces the desired properties, bumping `$version` if they changed. Returns the patch a
    /// subscribed device should receive (only the changed part, no `$version` yet), or `None`.
    pub(crate) fn set_desired(&mut self, new: Map<String, Value>, now: DateTime<Utc>) -> Option<Map<String, Value>> {
        let diff = merge_diff(&self.desired, &new);
        if diff.is_empty() {
            return None;
        }
        self.desired = new;
        self.desired_version += 1;
        self.desired_updated = now;
        Some(diff)
    }

    /// The twin document a device receives for `$iothub/twin/GET`.
    pub(crate) fn device_document(&self) -> Value {
        let mut desired = self.desired.clone();
        desired.insert("$version".into(), self.desired_version.into());
        let mut reported = self.reported.clone();
        reported.insert("$version".into(), self.reported_version.into());
        serde_json::json!({ "desired": desired, "reported": reported })
    }

    /// Marks a committed twin change: new etag, next version.
    pub(crate) fn touch(&mut self) {
        self.version += 1;
        self.etag = new_etag();
    }
}

/// Connection facts kept outside the durable record.
#[derive(Debug, Clone, Default)]
pub(crate) struct LiveView {
    pub connected: bool,
    pub connection_state_updated: Option<DateTime<Utc>>,
    pub last_activity: Option<DateTime<Utc>>,
    pub c2d_queued: usize,
}

impl DeviceRecord {
    /// A new identity as IoT Hub creates one: a fresh generation id and etags, enabled, default
    /// capabilities, an empty twin (versions 1); callers set what their request says.
    pub(crate) fn created(
        device_id: String,
        module_id: Option<String>,
        authentication: AuthenticationMechanism,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            device_id,
            module_id,
            managed_by: None,
            generation_id: new_generation_id(),
            etag: new_etag(),
            status: Status::Enabled,
            status_reason: None,
            status_updated_time: now,
            created_time: now,
            authentication,
            capabilities: DeviceCapabilities::default(),
            twin: TwinState::new(now),
            created_by_operation: None,
            issuance: None,
        }
    }

    /// The device id as first created (its spelling kept; the registry ignores case).
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// The module id, for a module's record.
    pub fn module_id(&self) -> Option<&str> {
        self.module_id.as_deref()
    }

    /// The identity's etag and the twin's: every write changes one of them, so a store can tell
    /// whether the record it holds is still the one a writer read
    /// ([`crate::store::HubStore::put_device_if`]). Their JSON paths in the stored document are
    /// `etag` and `twin.etag`.
    pub fn etags(&self) -> (&str, &str) {
        (&self.etag, &self.twin.etag)
    }

    /// The storage key: the lower-cased device id ([`crate::store::device_key`]), or for a
    /// module [`crate::store::module_key`] of its ids.
    pub fn key(&self) -> String {
        identity_key(&self.device_id, self.module_id.as_deref())
    }

    /// The string leaves of a device's tags as (dotted path below `tags`, value), what a store
    /// indexes so that `WHERE tags.x.y = 'v'` finds devices without reading every one. A
    /// module's tags are not indexed (an empty list). Twin keys never contain `.`, so the path
    /// is unambiguous.
    pub fn string_tags(&self) -> Vec<(String, String)> {
        fn walk(prefix: &str, m: &Map<String, Value>, out: &mut Vec<(String, String)>) {
            for (k, v) in m {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match v {
                    Value::String(s) => out.push((path, s.clone())),
                    Value::Object(inner) => walk(&path, inner, out),
                    _ => {}
                }
            }
        }
        let mut out = Vec::new();
        if self.module_id.is_none() {
            walk("", &self.twin.tags, &mut out);
        }
        out
    }

    /// The identity's path in topics, addresses and SAS audiences (`d` or `d/modules/m`).
    pub(crate) fn path(&self) -> String {
        dps_proto::hub_mqtt::identity_path(&self.device_id, self.module_id.as_deref())
    }

    /// The registry `Module` view (`GET /devices/{id}/modules/{mid}`).
    pub(crate) fn module_view(&self, live: &LiveView) -> Module {
        Module {
            device_id: self.device_id.clone(),
            module_id: self.module_id.clone().unwrap_or_default(),
            generation_id: Some(self.generation_id.clone()),
            etag: Some(self.etag.clone()),
            connection_state: Some(connection_state(live).into()),
            connection_state_updated_time: Some(format_record(
                &live.connection_state_updated.unwrap_or(self.created_time),
            )),
            last_activity_time: live.last_activity.as_ref().map(format_record),
            cloud_to_device_message_count: 0,
            authentication: Some(self.authentication.clone()),
            managed_by: self.managed_by.clone(),
        }
    }

    /// Whether the device's registry status is `enabled` (what the statistics count).
    pub fn is_enabled(&self) -> bool {
        self.status == Status::Enabled
    }

    /// The registry `Device` view (`GET /devices/{id}`).
    pub(crate) fn device_view(&self, live: &LiveView) -> Device {
        Device {
            device_id: self.device_id.clone(),
            generation_id: Some(self.generation_id.clone()),
            etag: Some(self.etag.clone()),
            connection_state: Some(connection_state(live).into()),
            status: Some(self.status.as_str().into()),
            status_reason: self.status_reason.clone(),
            // msrest parses these as ISO-8601; never emit Azure's year-1 "never" placeholder.
            connection_state_updated_time: Some(format_record(
                &live.connection_state_updated.unwrap_or(self.created_time),
            )),
            status_updated_time: Some(format_record(&self.status_updated_time)),
            last_activity_time: live.last_activity.as_ref().map(format_record),
            cloud_to_device_message_count: live.c2d_queued as i64,
            authentication: Some(self.authentication.clone()),
            capabilities: Some(self.capabilities),
        }
    }

    /// The registry `Twin` view (`GET /twins/{id}`, query results).
    pub(crate) fn twin_view(&self, live: &LiveView) -> Twin {
        let t = &self.twin;
        let section = |props: &Map<String, Value>, updated: &DateTime<Utc>, version: i64| {
            let mut m = props.clone();
            m.insert(
                "$metadata".into(),
                serde_json::json!({ "$lastUpdated": format_record(updated) }),
            );
            m.insert("$version".into(), version.into());
            m
        };
        let module = self.module_id.is_some();
        Twin {
            device_id: self.device_id.clone(),
            module_id: self.module_id.clone(),
            etag: Some(t.etag.clone()),
            version: Some(t.version),
            tags: Some(t.tags.clone()),
            properties: Some(TwinProperties {
                desired: Some(section(&t.desired, &t.desired_updated, t.desired_version)),
                reported: Some(section(&t.reported, &t.reported_updated, t.reported_version)),
            }),
            // A module has no status, capabilities or cloud-to-device queue of its own.
            status: (!module).then(|| self.status.as_str().into()),
            connection_state: Some(connection_state(live).into()),
            last_activity_time: live.last_activity.as_ref().map(format_record),
            authentication_type: Some(self.authentication.kind.clone()),
            capabilities: (!module).then_some(self.capabilities),
            cloud_to_device_message_count: (!module).then_some(live.c2d_queued as i64),
        }
    }

    /// Base64 SAS keys, when the device authenticates with SAS.
    pub(crate) fn sas_keys(&self) -> Option<(&str, &str)> {
        if !self.authentication.kind.eq_ignore_ascii_case("sas") {
            return None;
        }
        let k = self.authentication.symmetric_key.as_ref()?;
        Some((
            k.primary_key.as_deref().unwrap_or_default(),
            k.secondary_key.as_deref().unwrap_or_default(),
        ))
    }
}

fn connection_state(live: &LiveView) -> &'static str {
    if live.connected {
        "Connected"
    } else {
        "Disconnected"
    }
}

/// A fresh opaque etag (base64 of 8 random bytes, the shape Azure's etags have). Random rather
/// than a counter so a stale `If-Match` can never match again after a restart.
pub(crate) fn new_etag() -> String {
    let mut b = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut b);
    encode_key(&b)
}

/// A fresh generation id: 18 decimal digits, like Azure's.
pub(crate) fn new_generation_id() -> String {
    let n = rand::thread_rng().next_u64() % 900_000_000_000_000_000 + 100_000_000_000_000_000;
    n.to_string()
}

/// A fresh 256-bit symmetric key, base64 (what Azure generates when keys are omitted).
pub(crate) fn new_key() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    encode_key(&b)
}

/// `authentication` for SAS keys.
pub(crate) fn sas_auth(primary: String, secondary: String) -> AuthenticationMechanism {
    AuthenticationMechanism {
        kind: "sas".into(),
        symmetric_key: Some(SymmetricKey {
            primary_key: Some(primary),
            secondary_key: Some(secondary),
        }),
        x509_thumbprint: None,
    }
}

/// `authentication` for self-signed X.509 thumbprints.
pub(crate) fn self_signed_auth(primary: String, secondary: String) -> AuthenticationMechanism {
    AuthenticationMechanism {
        kind: "selfSigned".into(),
        symmetric_key: None,
        x509_thumbprint: Some(X509Thumbprint {
            primary_thumbprint: Some(primary),
            secondary_thumbprint: Some(secondary).filter(|s| !s.is_empty()),
        }),
    }
}

/// The RFC 7396 merge patch that turns `old` into `new`: removed keys become `null`, changed
/// values are carried, nested objects recurse. This is the "only the changed part" a device gets.
pub(crate) fn merge_diff(old: &Map<String, Value>, new: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for k in old.keys() {
        if !new.contains_key(k) {
            out.insert(k.clone(), Value::Null);
        }
    }
    for (k, v) in new {
        match (old.get(k), v) {
            (Some(a), b) if a == b => {}
            (Some(Value::Object(a)), Value::Object(b)) => {
                out.insert(k.clone(), Value::Object(merge_diff(a, b)));
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

/// Normalises a property document received from a client: drops `$`-prefixed keys (`$version`,
/// `$metadata` echoed back) and `null` leaves, which have no meaning in a stored document.
pub(crate) fn clean_document(doc: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    dps_proto::model::hub::merge_patch(&mut out, doc);
    out
}

/// Checks an `If-Match` header value against the current etag. `None` and `*` match anything;
/// quotes and a weak `W/` prefix are ignored; a comma-separated list matches if any member does.
pub(crate) fn etag_matches(if_match: Option<&str>, current: &str) -> bool {
    let Some(h) = if_match.map(str::trim).filter(|h| !h.is_empty()) else {
        return true;
    };
    h.split(',').any(|e| {
        let e = e.trim();
        let e = e.strip_prefix("W/").unwrap_or(e);
        let e = e.trim_matches('"');
        e == "*" || e == current
    })
}

/// Whether an `If-Match` value is a real etag condition (not absent, not `*`).
pub(crate) fn is_conditional(if_match: Option<&str>) -> bool {
    if_match
        .map(str::trim)
        .is_some_and(|h| !h.is_empty() && h.trim_matches('"') != "*")
}

/// Azure's device id rule: 1–128 ASCII characters, alphanumerics and `- . + % _ # * ? ! ( ) , : = @ $ '`.
pub(crate) fn validate_device_id(id: &str) -> Result<(), String> {
    validate_id("device id", id, "-.+%_#*?!(),:=@$'")
}

/// Azure's module id rule: the device id rule without `+` and `#` (IoT Hub's identity registry
/// documentation: "`+` and `#` are not supported" in module ids; they are MQTT wildcards, and a
/// module's id is a segment of its topics).
pub(crate) fn validate_module_id(id: &str) -> Result<(), String> {
    validate_id("module id", id, "-.%_*?!(),:=@$'")
}

fn validate_id(what: &str, id: &str, punctuation: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 {
        return Err(format!("{what} must be 1 to 128 characters long, got {}", id.len()));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || punctuation.contains(*c)))
    {
        return Err(format!("{what} '{id}' contains the invalid character '{c}'"));
    }
    Ok(())
}

/// Longest `statusReason`, in characters (IoT Hub's SDK models: "A 128 char long string storing
/// the reason of suspension (all UTF-8 chars allowed)").
const STATUS_REASON_MAX_CHARS: usize = 128;

/// Azure's `statusReason` rule: at most 128 characters.
pub(crate) fn validate_status_reason(reason: &str) -> Result<(), String> {
    let n = reason.chars().count();
    if n > STATUS_REASON_MAX_CHARS {
        return Err(format!(
            "statusReason is {n} characters long; IoT Hub allows at most {STATUS_REASON_MAX_CHARS}"
        ));
    }
    Ok(())
}

/// Registry key of a device id (the registry is case-insensitive). A `/` (no valid id has one;
/// a decoded path segment may) becomes DEL, also invalid in ids: so a device key never contains
/// `/`, and no device id can name a module's key.
pub(crate) fn key_of(id: &str) -> String {
    let key = id.to_ascii_lowercase();
    if key.contains('/') {
        key.replace('/', "\u{7f}")
    } else {
        key
    }
}

/// Registry key of a module: `{device key}/modules/{module key}`, module ids compared without
/// case as device ids are. The only keys with a `/` ([`key_of`]).
pub(crate) fn module_key(device_id: &str, module_id: &str) -> String {
    format!("{}/modules/{}", key_of(device_id), key_of(module_id))
}

/// The registry key of a device ([`key_of`]) or, with `module_id`, of one of its modules
/// ([`module_key`]).
pub(crate) fn identity_key(device_id: &str, module_id: Option<&str>) -> String {
    match module_id {
        None => key_of(device_id),
        Some(m) => module_key(device_id, m),
    }
}

/// The device and module keys of a registry key (`None` for a device's key).
pub(crate) fn split_key(key: &str) -> (&str, Option<&str>) {
    dps_proto::hub_mqtt::split_identity_path(key)
}

/// Capabilities, defaulted.
pub(crate) fn caps(c: Option<DeviceCapabilities>) -> DeviceCapabilities {
    c.unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn diff_is_the_minimal_merge_patch() {
        let old = obj(json!({"a": 1, "b": {"c": 2, "d": 3}, "gone": true}));
        let new = obj(json!({"a": 1, "b": {"c": 5, "d": 3}, "e": [1]}));
        let d = merge_diff(&old, &new);
        assert_eq!(Value::Object(d.clone()), json!({"gone": null, "b": {"c": 5}, "e": [1]}));
        let mut applied = old.clone();
        dps_proto::model::hub::merge_patch(&mut applied, &d);
        assert_eq!(applied, new);
        assert!(merge_diff(&new, &new).is_empty());
    }

    #[test]
    fn if_match_rules() {
        assert!(etag_matches(None, "abc"));
        assert!(etag_matches(Some("*"), "abc"));
        assert!(etag_matches(Some("\"abc\""), "abc"));
        assert!(etag_matches(Some("W/\"abc\""), "abc"));
        assert!(etag_matches(Some("\"x\", \"abc\""), "abc"));
        assert!(!etag_matches(Some("\"abd\""), "abc"));
        assert!(!is_conditional(Some("\"*\"")));
        assert!(is_conditional(Some("\"abc\"")));
        assert!(!is_conditional(None));
    }

    #[test]
    fn device_ids() {
        validate_device_id("sn-007-888:abc@x").unwrap();
        assert!(validate_device_id("").is_err());
        assert!(validate_device_id("a/b").unwrap_err().contains("'/'"));
        assert!(validate_device_id(&"a".repeat(129)).is_err());
        validate_module_id("$edgeAgent").unwrap();
        assert_eq!(
            validate_module_id("m#1").unwrap_err(),
            "module id 'm#1' contains the invalid character '#'"
        );
    }

    #[test]
    fn status_reasons() {
        validate_status_reason(&"é".repeat(128)).unwrap();
        assert_eq!(
            validate_status_reason(&"x".repeat(129)).unwrap_err(),
            "statusReason is 129 characters long; IoT Hub allows at most 128"
        );
    }

    #[test]
    fn thumbprints_normalise() {
        assert_eq!(dps_pki::thumbprint::normalize_hex("ab:cd:ef"), "ABCDEF");
    }
}

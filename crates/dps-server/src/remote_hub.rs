//! A linked hub reached over the network: Azure IoT Hub, or another dps server's embedded hub,
//! driven through the IoT Hub registry REST API (`api-version` 2021-04-12) with the linked
//! hub's connection string, as DPS itself writes devices into a hub:
//!
//! - provisioning a device: `GET /devices/{id}`; absent, `PUT /devices/{id}` creates it enabled
//!   with its authentication and capabilities, then the enrollment's initial twin goes in with
//!   `PATCH /twins/{id}`; present, `PUT /devices/{id}` (`If-Match: *`) updates its
//!   authentication and capabilities, and a reset replaces its tags and desired properties with
//!   `PUT /twins/{id}`; a disabled device is refused, as the embedded hub refuses it;
//! - migrating a device: `GET /twins/{id}` reads its tags, desired properties and capabilities;
//!   `DELETE /devices/{id}` (`If-Match: *`) removes it from the hub it leaves.
//!
//! Every request carries a SAS token signed with the policy key for the hub's host name, has a
//! connect and a total deadline, reads at most 1 MiB of answer, and is retried (three attempts in all) when the hub cannot be
//! reached, is throttled (429) or fails (5xx). What the hub refuses says so: its status, its
//! error code and message, and for 401 that the policy needs `RegistryWrite`.
//!
//! One gap against the embedded hub: a remote hub cannot remember which DPS operation created a
//! device, so a registration that a crash interrupted after the device was created reports the
//! device as existing when start-up recovery finishes it (substatus `reprovisionedToInitialAssignment`
//! rather than `initialAssignment`).

use std::time::Duration;

use dps_core::{DeviceAuth, DeviceData, DeviceProvisioning, HubError, TwinPolicy, UpsertOutcome};
use dps_proto::connection_string::ConnectionString;
use dps_proto::error::error_chain;
use dps_proto::model::service::{DeviceCapabilities, InitialTwin, InitialTwinProperties, LinkedHubDescription};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::outbound::read_bounded;

/// Connecting to the hub.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One request, answer included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Attempts per request when the hub cannot be reached, throttles or fails.
const ATTEMPTS: usize = 3;

/// Waits between attempts.
const BACKOFF: [Duration; 2] = [Duration::from_millis(200), Duration::from_secs(1)];

/// Largest answer read from a hub (a twin is at most 128 KiB of JSON in IoT Hub's measure; a
/// device a few KiB).
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// How long each SAS token the client signs is valid.
const TOKEN_TTL_SECS: u64 = 3600;

/// What a device id escapes in a path: all but RFC 3986's unreserved characters.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// A client of one linked hub's registry API.
pub struct RemoteHub {
    host: String,
    key_name: String,
    key: String,
    base: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for RemoteHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteHub")
            .field("host", &self.host)
            .field("policy", &self.key_name)
            .finish_non_exhaustive()
    }
}

/// An answer: its status and JSON body (`Null` when there is none).
struct Answer {
    status: StatusCode,
    body: Value,
}

impl RemoteHub {
    /// A client for the linked hub `hub`: its connection string's host and policy, trusting the
    /// system's CAs and the hub's `caCertificates`.
    pub fn new(hub: &LinkedHubDescription) -> Result<Self, String> {
        let cs = ConnectionString::parse(&hub.connection_string).map_err(|e| format!("connectionString: {e}"))?;
        // Tokens name the hub; requests go to its gateway when the string names one (a server
        // whose hubs' names do not resolve).
        let base = format!("https://{}", cs.connect_host());
        let (Some(key_name), Some(key)) = (cs.key_name, cs.key) else {
            return Err("connectionString needs SharedAccessKeyName and SharedAccessKey".into());
        };
        let tls = dps_pki::tls::client_config_with_system_roots(hub.ca_certificates.as_deref())
            .map_err(|e| format!("caCertificates: {e}"))?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("dps/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTPS client: {e}"))?;
        Ok(Self {
            base,
            host: cs.host_name,
            key_name,
            key,
            http,
        })
    }

    fn path(kind: &str, device_id: &str) -> String {
        format!("/{kind}/{}", utf8_percent_encode(device_id, SEGMENT))
    }

    /// Sends one request, retrying what may pass; the answer, whatever its status, or why there
    /// was none.
    /// `replace`: send `If-Match: *` (replace whatever is there, as DPS does); a create must
    /// not carry it (IoT Hub reads it as "update what exists").
    async fn send(&self, method: Method, path: &str, body: Option<&Value>, replace: bool) -> Result<Answer, HubError> {
        let url = format!("{}{path}?api-version={}", self.base, dps_proto::api_version::HUB_CLIENT);
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(BACKOFF[attempt - 1]).await;
            }
            let expiry = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs()
                + TOKEN_TTL_SECS;
            let token = dps_proto::sas::build_token(&self.host, &self.key, expiry, Some(&self.key_name))
                .map_err(|e| HubError::unavailable(format!("cannot sign for IoT hub {}: {e}", self.host)))?;
            let mut req = self.http.request(method.clone(), &url).header("authorization", token);
            if replace {
                req = req.header("if-match", "*");
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    // A body that breaks off is no answer (a twin read in part would migrate
                    // part of a twin): tried again like a connection that failed.
                    let bytes = match read_bounded(resp, MAX_ANSWER_BYTES).await {
                        Ok(b) => b,
                        Err(e) => {
                            last = format!("IoT hub {}: {e}", self.host);
                            continue;
                        }
                    };
                    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                        last = refusal(&self.host, status, &body);
                        continue;
                    }
                    return Ok(Answer { status, body });
                }
                Err(e) => last = format!("IoT hub {} did not answer: {}", self.host, error_chain(&e)),
            }
        }
        tracing::warn!(hub = %self.host, "{last}");
        Err(HubError::unavailable(format!("{last} ({ATTEMPTS} attempts)")))
    }

    /// The answer when it has one of `ok`, else the hub's refusal: `Refused` for the device's
    /// own faults, `Unavailable` for the hub's or the policy's.
    fn expect(&self, answer: Answer, ok: &[StatusCode], device_id: &str) -> Result<Answer, HubError> {
        if ok.contains(&answer.status) {
            return Ok(answer);
        }
        let why = refusal(&self.host, answer.status, &answer.body);
        Err(match answer.status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => HubError::unavailable(format!(
                "{why}; the linked hub's policy needs RegistryWrite (and RegistryRead)"
            )),
            s if s.is_client_error() => HubError::Refused {
                device_id: device_id.to_string(),
                reason: why.into(),
            },
            _ => HubError::unavailable(why),
        })
    }

    /// Creates or updates the device, as [`dps_core::HubRegistry::upsert_device`] says.
    pub async fn upsert(&self, device: &DeviceProvisioning) -> Result<UpsertOutcome, HubError> {
        let id = &device.device_id;
        let path = Self::path("devices", id);
        let current = self.send(Method::GET, &path, None, false).await?;
        let current = self.expect(current, &[StatusCode::OK, StatusCode::NOT_FOUND], id)?;
        let created = current.status == StatusCode::NOT_FOUND;
        let mut doc = if created {
            json!({ "deviceId": id, "status": "enabled" })
        } else {
            if current.body.get("status").and_then(Value::as_str) == Some("disabled") {
                return Err(HubError::Refused {
                    device_id: id.clone(),
                    reason: format!("the device is disabled in IoT hub {}", self.host).into(),
                });
            }
            current.body
        };
        doc["authentication"] = authentication(&device.auth);
        doc["capabilities"] = json!({ "iotEdge": device.capabilities.iot_edge });
        let put = self.send(Method::PUT, &path, Some(&doc), !created).await?;
        self.expect(put, &[StatusCode::OK, StatusCode::CREATED], id)?;
        let twin_path = Self::path("twins", id);
        let twin = device.initial_twin.clone().unwrap_or_default();
        if created && device.initial_twin.is_some() {
            let patch = self
                .send(Method::PATCH, &twin_path, Some(&twin_doc(&twin)), true)
                .await?;
            self.expect(patch, &[StatusCode::OK], id)?;
        } else if !created && device.twin_policy == TwinPolicy::Reset {
            let replace = self.send(Method::PUT, &twin_path, Some(&twin_doc(&twin)), true).await?;
            self.expect(replace, &[StatusCode::OK], id)?;
        }
        tracing::info!(hub = %self.host, device = %id, created, "device provisioned in a linked hub");
        Ok(UpsertOutcome { created })
    }

    /// Removes the device; absent is fine.
    pub async fn delete(&self, device_id: &str) -> Result<(), HubError> {
        let answer = self
            .send(Method::DELETE, &Self::path("devices", device_id), None, true)
            .await?;
        self.expect(
            answer,
            &[StatusCode::OK, StatusCode::NO_CONTENT, StatusCode::NOT_FOUND],
            device_id,
        )?;
        Ok(())
    }

    /// The device's tags, desired properties and capabilities, or `None` when the hub has no
    /// such device.
    pub async fn device_data(&self, device_id: &str) -> Result<Option<DeviceData>, HubError> {
        let answer = self
            .send(Method::GET, &Self::path("twins", device_id), None, false)
            .await?;
        let answer = self.expect(answer, &[StatusCode::OK, StatusCode::NOT_FOUND], device_id)?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let twin = answer.body;
        let desired = twin.pointer("/properties/desired").cloned().map(without_metadata);
        Ok(Some(DeviceData {
            twin: InitialTwin {
                tags: twin.get("tags").cloned().filter(|t| !t.is_null()),
                properties: Some(InitialTwinProperties { desired }),
            },
            capabilities: DeviceCapabilities {
                iot_edge: twin
                    .pointer("/capabilities/iotEdge")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            },
        }))
    }
}

/// The registry API's `authentication` for the device's credential.
fn authentication(auth: &DeviceAuth) -> Value {
    match auth {
        DeviceAuth::Sas {
            primary_key,
            secondary_key,
        } => json!({
            "type": "sas",
            "symmetricKey": { "primaryKey": primary_key, "secondaryKey": secondary_key },
        }),
        DeviceAuth::SelfSigned {
            primary_thumbprint,
            secondary_thumbprint,
        } => json!({
            "type": "selfSigned",
            "x509Thumbprint": { "primaryThumbprint": primary_thumbprint, "secondaryThumbprint": secondary_thumbprint },
        }),
    }
}

/// A twin body of `tags` and desired properties (empty objects for what the twin lacks, so a
/// replacement clears them).
fn twin_doc(twin: &InitialTwin) -> Value {
    let desired = twin
        .properties
        .as_ref()
        .and_then(|p| p.desired.clone())
        .unwrap_or_else(|| json!({}));
    json!({
        "tags": twin.tags.clone().unwrap_or_else(|| json!({})),
        "properties": { "desired": desired },
    })
}

/// Desired properties without the hub's `$metadata` and `$version`, recursively.
fn without_metadata(v: Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(k, _)| k != "$metadata" && k != "$version")
                .map(|(k, v)| (k, without_metadata(v)))
                .collect(),
        ),
        other => other,
    }
}

/// What the hub said, for the registration's error message: status, IoT Hub's error code (in
/// `Message` as `ErrorCode:{name};{text}`, or `errorCode`) and text.
fn refusal(host: &str, status: StatusCode, body: &Value) -> String {
    let text = body
        .get("Message")
        .or_else(|| body.get("message"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    if text.is_empty() {
        format!("IoT hub {host} answered {status}")
    } else {
        format!("IoT hub {host} answered {status}: {text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_is_dropped_at_every_depth() {
        let v = json!({"$metadata": {}, "$version": 3, "a": {"$metadata": {}, "b": 1}});
        assert_eq!(without_metadata(v), json!({"a": {"b": 1}}));
    }

    #[test]
    fn a_connection_string_without_a_policy_is_refused() {
        let hub = LinkedHubDescription {
            name: "h.example.test".into(),
            connection_string: "HostName=h.example.test;DeviceId=d;SharedAccessKey=a2V5".into(),
            ..Default::default()
        };
        assert!(RemoteHub::new(&hub).unwrap_err().contains("SharedAccessKeyName"));
    }

    #[test]
    fn refusals_carry_the_hubs_message() {
        let body = json!({"Message": "ErrorCode:IotHubUnauthorizedAccess;Unauthorized", "ExceptionMessage": ""});
        assert_eq!(
            refusal("h", StatusCode::UNAUTHORIZED, &body),
            "IoT hub h answered 401 Unauthorized: ErrorCode:IotHubUnauthorizedAccess;Unauthorized"
        );
        assert_eq!(
            refusal("h", StatusCode::BAD_GATEWAY, &Value::Null),
            "IoT hub h answered 502 Bad Gateway"
        );
    }
}

//! Certificate renewal over the device's connection (issue 17, point 3), as IoT Hub's
//! certificate management (preview) offers it: the device publishes
//! `$iothub/credentials/POST/issueCertificate/?$rid={rid}` with `{"id", "csr", "replace"?}`
//! and hears on `$iothub/credentials/res/{status}/?$rid={rid}`: `202` with `{"correlationId",
//! "operationExpires"}`, then `200` with `{"certificates": [leaf, CA chain…], "correlationId"}`,
//! or an error `{"errorCode", "message", "trackingId", "timestampUtc", "info": {"correlationId",
//! "credentialError", "credentialMessage"}}` (shapes and codes from the Java device SDK's
//! `MqttCertificateSigning` and `IotHubCertificateSigning*` classes).
//!
//! The certificate is issued under the credential policy that issued the device's current one
//! (the provisioning engine does it, [`dps_core::CertificateIssuer`]); the new certificate
//! becomes the device's primary thumbprint and the one it replaces the secondary, accepted until
//! the hub's grace period ends.
//!
//! Each renewal costs a signature and a registry write, so a device may renew at most once per
//! [`RenewalLimits::min_interval`]: sooner is `429002` (ThrottleBacklogLimitExceeded), and a
//! renewal that lost a race with another one for the same device (two connections, or two
//! nodes) is `409005` (CredentialOperationActive). The time of the last renewal is kept in the
//! device record, so the limit holds across connections, restarts and nodes.

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use dps_core::{CertificateIssuer, IssueError, IssuedCertificate};
use dps_proto::hub_mqtt::credentials_response_topic;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{DeviceSession, Outbound, OutboundKind};
use crate::error::{RegistryError, SessionError};
use crate::record::self_signed_auth;
use crate::Hub;

/// How long an accepted request may take before the device should stop waiting
/// (`operationExpires`); issuing takes milliseconds.
const OPERATION_TTL: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

/// How renewals through a hub are bounded ([`Hub::set_certificate_issuer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewalLimits {
    /// How long a certificate replaced by a renewal keeps working: long enough for the device
    /// to reconnect with the new one.
    pub grace: Duration,
    /// The least time between two renewals of one device (zero: no limit). A device that
    /// renews sooner is refused with `429002`.
    pub min_interval: Duration,
}

/// What renews certificates for a hub's devices ([`Hub::set_certificate_issuer`]).
pub(crate) struct Renewal {
    /// Weak: the issuer (the engine) holds the hub, and a cycle would keep both alive after
    /// the server stopped.
    issuer: Weak<dyn CertificateIssuer>,
    limits: RenewalLimits,
}

impl Hub {
    /// Lets this hub's devices renew their certificates over MQTT, issued by `issuer` (the
    /// provisioning engine) under the policy that issued their current one, within `limits`.
    /// Set once, at start; later calls are ignored. Without it (or once the issuer is gone) a
    /// renewal is answered `503`. The hub keeps a weak reference: the issuer's owner keeps it
    /// alive.
    pub fn set_certificate_issuer(&self, issuer: &Arc<dyn CertificateIssuer>, limits: RenewalLimits) {
        let _ = self.inner.renewal.set(Renewal {
            issuer: Arc::downgrade(issuer),
            limits,
        });
    }
}

/// When a device that last renewed at `renewed_at` may renew again, if that is after `now`.
fn too_soon(renewed_at: Option<DateTime<Utc>>, min_interval: Duration, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let next = renewed_at? + chrono::TimeDelta::from_std(min_interval).unwrap_or(chrono::TimeDelta::MAX);
    (next > now).then_some(next)
}

/// Why a renewal was not recorded.
enum NotRecorded {
    /// Another renewal of the device was recorded since this one was checked.
    LostRace,
    Registry(RegistryError),
}

impl From<RegistryError> for NotRecorded {
    fn from(e: RegistryError) -> Self {
        Self::Registry(e)
    }
}

/// The request body.
#[derive(Deserialize)]
struct IssueRequest {
    /// The device id; must be the connected device's.
    id: String,
    /// Base64 DER PKCS#10.
    csr: String,
}

/// A response publish.
fn response(status: u16, rid: &str, body: Value) -> Outbound {
    Outbound {
        topic: credentials_response_topic(status, rid),
        payload: Bytes::from(body.to_string()),
        qos: 0,
        kind: OutboundKind::CredentialResponse {
            rid: rid.to_string(),
            status,
        },
    }
}

/// A refusal, as IoT Hub words it (`credentialError` names the cause, `credentialMessage`
/// explains it).
fn refusal(now: DateTime<Utc>, rid: &str, correlation_id: &str, code: u32, cause: &str, message: &str) -> Outbound {
    let status = (code / 1000) as u16;
    response(
        status,
        rid,
        json!({
            "errorCode": code,
            "message": "Credential management operation failed",
            "trackingId": uuid::Uuid::new_v4().to_string(),
            "timestampUtc": now.to_rfc3339_opts(SecondsFormat::Micros, true),
            "info": {
                "correlationId": correlation_id,
                "credentialError": cause,
                "credentialMessage": message,
            },
        }),
    )
}

/// IoT Hub's CredentialOperationFailed: the request cannot be issued for.
const OPERATION_FAILED: u32 = 400_040;
/// CredentialManagementPreconditionFailed: the device has no certificate from a policy.
const PRECONDITION_FAILED: u32 = 412_005;
/// ServiceUnavailable.
const UNAVAILABLE: u32 = 503_001;
/// ThrottleBacklogLimitExceeded: the device renewed too recently.
const THROTTLED: u32 = 429_002;
/// CredentialOperationActive: another renewal of the device was recorded meanwhile.
const ACTIVE: u32 = 409_005;

impl DeviceSession {
    /// Handles `$iothub/credentials/POST/issueCertificate/?$rid={rid}`: the `202` and the
    /// outcome, in that order.
    pub(super) async fn issue_certificate(
        &self,
        now: DateTime<Utc>,
        rid: &str,
        payload: &[u8],
    ) -> Result<Vec<Outbound>, SessionError> {
        let correlation_id = uuid::Uuid::new_v4().to_string();
        let refuse = |code: u32, cause: &str, message: String| {
            tracing::info!(device = %self.identity.device_id, code, cause, reason = %message, "certificate renewal refused");
            Ok(vec![refusal(now, rid, &correlation_id, code, cause, &message)])
        };
        let Some((renewal, issuer)) = self
            .hub
            .inner
            .renewal
            .get()
            .and_then(|r| r.issuer.upgrade().map(|i| (r, i)))
        else {
            return refuse(
                UNAVAILABLE,
                "ServiceUnavailable",
                "this hub does not issue certificates".into(),
            );
        };
        if self.identity.module_id.is_some() {
            return refuse(
                OPERATION_FAILED,
                "NotSupported",
                "modules have no issued certificates".into(),
            );
        }
        let request: IssueRequest = match serde_json::from_slice(payload) {
            Ok(r) => r,
            Err(e) => {
                return refuse(
                    OPERATION_FAILED,
                    "InvalidRequest",
                    format!("the request must be {{\"id\": deviceId, \"csr\": base64 DER}}: {e}"),
                )
            }
        };
        if !request.id.eq_ignore_ascii_case(&self.identity.device_id) {
            return refuse(
                OPERATION_FAILED,
                "DeviceIdMismatch",
                format!(
                    "the request is for device '{}', but this connection is device '{}'",
                    request.id, self.identity.device_id
                ),
            );
        }
        let rec = self.slot.record().ok_or_else(|| self.closed())?;
        let Some(issuance) = rec.issuance.as_ref() else {
            return refuse(
                PRECONDITION_FAILED,
                "NoCredentialPolicy",
                format!(
                    "device '{}' has no certificate issued by a credential policy: register it through DPS with a CSR first",
                    self.identity.device_id
                ),
            );
        };
        let limits = renewal.limits;
        if let Some(next) = too_soon(issuance.renewed_at, limits.min_interval, now) {
            return refuse(
                THROTTLED,
                "RenewalTooSoon",
                format!(
                    "device '{}' renewed its certificate less than {} s ago; renew again from {}",
                    self.identity.device_id,
                    limits.min_interval.as_secs(),
                    next.to_rfc3339_opts(SecondsFormat::Secs, true)
                ),
            );
        }
        let (policy, checked_renewal) = (issuance.policy.clone(), issuance.renewed_at);
        let accepted = response(
            202,
            rid,
            json!({
                "correlationId": correlation_id,
                "operationExpires": (now + OPERATION_TTL).to_rfc3339_opts(SecondsFormat::Millis, true),
            }),
        );
        let issued = issuer.issue(now, &policy, &self.identity.device_id, &request.csr).await;
        let outcome = match issued {
            Ok(issued) => match self.replace_certificate(now, &issued, checked_renewal, limits).await {
                Ok(()) => response(
                    200,
                    rid,
                    json!({ "certificates": issued.chain, "correlationId": correlation_id }),
                ),
                Err(NotRecorded::LostRace) => {
                    tracing::info!(device = %self.identity.device_id, "certificate renewal lost a race with another");
                    refusal(
                        now,
                        rid,
                        &correlation_id,
                        ACTIVE,
                        "CredentialOperationActive",
                        "another renewal of this device was recorded meanwhile; use the certificate it issued",
                    )
                }
                Err(NotRecorded::Registry(e)) => {
                    tracing::error!(device = %self.identity.device_id, error = %e, "renewed certificate not recorded");
                    refusal(
                        now,
                        rid,
                        &correlation_id,
                        UNAVAILABLE,
                        "ServiceUnavailable",
                        "the new certificate could not be recorded; ask again",
                    )
                }
            },
            Err(e) => {
                let (code, cause) = match &e {
                    IssueError::Request(_) => (OPERATION_FAILED, "InvalidCsr"),
                    IssueError::NoPolicy(_) => (PRECONDITION_FAILED, "NoCredentialPolicy"),
                    _ => (UNAVAILABLE, "ServiceUnavailable"),
                };
                tracing::info!(device = %self.identity.device_id, error = %e, "certificate renewal refused");
                refusal(now, rid, &correlation_id, code, cause, &e.to_string())
            }
        };
        Ok(vec![accepted, outcome])
    }

    /// Makes `issued` the device's primary certificate and its current one the secondary,
    /// accepted for the grace period, unless the device was renewed since `checked_renewal`
    /// (the last renewal this request was checked against).
    async fn replace_certificate(
        &self,
        now: DateTime<Utc>,
        issued: &IssuedCertificate,
        checked_renewal: Option<DateTime<Utc>>,
        limits: RenewalLimits,
    ) -> Result<(), NotRecorded> {
        let inner = &self.hub.inner;
        let recorded = crate::retrying_lost_races!(
            async {
                let (slot, _guard) =
                    inner
                        .lock_device(&self.key, false)
                        .await?
                        .ok_or_else(|| RegistryError::NotFound {
                            device_id: self.identity.device_id.clone(),
                        })?;
                let rec = slot.record().ok_or_else(|| RegistryError::NotFound {
                    device_id: self.identity.device_id.clone(),
                })?;
                if rec.issuance.as_ref().and_then(|i| i.renewed_at) != checked_renewal {
                    return Ok(false);
                }
                let mut new = (*rec).clone();
                let current = rec
                    .authentication
                    .x509_thumbprint
                    .as_ref()
                    .and_then(|t| t.primary_thumbprint.clone())
                    .unwrap_or_default();
                new.authentication = self_signed_auth(issued.sha256_thumbprint.clone(), current);
                if let Some(issuance) = new.issuance.as_mut() {
                    issuance.previous_valid_until =
                        Some(now + chrono::TimeDelta::from_std(limits.grace).unwrap_or(chrono::TimeDelta::MAX));
                    issuance.renewed_at = Some(now);
                }
                new.etag = crate::record::new_etag();
                inner.commit(&slot, new).await.map(|_| true)
            }
            .await
        )?;
        if recorded {
            Ok(())
        } else {
            Err(NotRecorded::LostRace)
        }
    }
}

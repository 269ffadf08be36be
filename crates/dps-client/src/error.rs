//! The one error type of the device SDK.
//!
//! Why one enum rather than one per client: a device application provisions and then talks to
//! its hub in one flow, and wants to branch on *what kind* of failure happened (the service said
//! no, the network is down, the local secret is unusable) rather than on which call failed.

use std::time::Duration;

use dps_proto::model::service::RegistrationStatus;

/// Why a provisioning or hub operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The TLS configuration could not be built: the trusted CA PEM holds no usable certificate,
    /// or an X.509 provider's certificate chain or private key could not be read. Nothing was
    /// sent; fix the local files.
    #[error("TLS configuration: {0}")]
    Tls(String),

    /// The security provider could not produce a credential (a key that is not base64, an HSM
    /// that refused to sign, a provider that cannot sign SAS tokens at all). Nothing was sent.
    #[error("security provider: {0}")]
    Credential(String),

    /// The requested combination is not supported, e.g. a provider kind over a transport that
    /// cannot carry it (TPM attestation over MQTT, as in the Azure SDKs).
    #[error("not supported: {0}")]
    Unsupported(String),

    /// The server could not be reached or the connection broke: DNS, TCP, TLS handshake
    /// (including an untrusted server certificate), or an HTTP/MQTT framing error. Usually
    /// transient or a wrong host/port/CA.
    #[error("{context}: {message}")]
    Connection {
        /// What was being attempted (`connecting to dps.example.test:8883`).
        context: String,
        /// The underlying error, rendered (the source types are not part of this API).
        message: String,
    },

    /// The MQTT server refused the CONNECT (bad credentials, disabled device, wrong client id).
    /// IoT Hub answers 5 (not authorized) for a bad SAS and 3 (server unavailable) for a
    /// disabled device.
    #[error("the server refused the MQTT connection: {reason}")]
    ConnectionRefused {
        /// The CONNACK return code, as rumqttc names it (`NotAuthorized`, ...).
        reason: String,
    },

    /// The AMQP server ended the SASL exchange with an outcome other than `ok`: it did not accept
    /// the credential (a SAS token signed with the wrong key, an expired token, a TPM whose
    /// endorsement key no enrollment holds). DPS judges an AMQP device's credential here, before
    /// the connection opens, so the outcome code is all the answer there is.
    #[error("the server refused the AMQP connection: SASL {mechanism} authentication failed (outcome '{code}'); the credential is not accepted for this registration")]
    SaslRefused {
        /// The SASL mechanism (`PLAIN`, `TPM`).
        mechanism: String,
        /// The SASL outcome code (`auth`, `sys`, ...).
        code: String,
    },

    /// The connection was closed while an operation was waiting for its answer.
    #[error("the connection closed while waiting for {0}")]
    Disconnected(String),

    /// No answer within the configured time.
    #[error("no answer to {what} within {after:?}")]
    Timeout {
        /// What was being waited for.
        what: String,
        /// The limit that expired.
        after: Duration,
    },

    /// The service answered with an error status and (usually) a DPS/IoT Hub error body:
    /// `{"errorCode":401000,"message":"..."}`. For 429 and 5xx this is only returned after the
    /// configured retries were spent.
    #[error("{}", service_message(*status, *error_code, message))]
    Service {
        /// HTTP status (or the status in the MQTT response topic; over AMQP, the status of a
        /// rejection's `errorCode`, or the one its condition stands for).
        status: u16,
        /// `errorCode` from the body (HTTP status × 1000 + sub-code), when the body had one.
        error_code: Option<u32>,
        /// `message` from the body, or the raw body when it was not a DPS error body.
        message: String,
        /// `trackingId` from the body, for correlating with server logs.
        tracking_id: Option<String>,
    },

    /// The registration operation completed, but not with an assignment: the service's result
    /// was `failed` (e.g. 400208 no hub could be assigned) or `disabled` (the enrollment is
    /// disabled). Carries `registrationState.errorCode` / `errorMessage`.
    #[error("registration {status}: {}", service_message(0, *error_code, message))]
    RegistrationFailed {
        /// `failed` or `disabled`.
        status: RegistrationStatus,
        /// `registrationState.errorCode`.
        error_code: Option<u32>,
        /// `registrationState.errorMessage` (or a description when absent).
        message: String,
    },

    /// The TPM could not be opened or refused a command (see [`crate::TpmError`]): the wrong
    /// TCTI, a blob made for another TPM's keys, no identity key imported yet.
    #[cfg(feature = "tpm")]
    #[error("TPM: {0}")]
    Tpm(crate::tpm::TpmError),

    /// The server's answer did not have the expected shape (not JSON, `assigned` without an
    /// `assignedHub`, an unexpected status value). A server or compatibility bug.
    #[error("unexpected response from the server: {0}")]
    Protocol(String),
}

/// Not `#[from]`: that would also make the TPM error the `source()`, and error printers that
/// walk the chain would print its message twice.
#[cfg(feature = "tpm")]
impl From<crate::tpm::TpmError> for ClientError {
    fn from(e: crate::tpm::TpmError) -> Self {
        Self::Tpm(e)
    }
}

fn service_message(status: u16, code: Option<u32>, message: &str) -> String {
    match (code, status) {
        (Some(c), 0) => format!("error {c}: {message}"),
        (Some(c), s) => format!("error {c} (HTTP {s}): {message}"),
        (None, 0) => message.to_string(),
        (None, s) => format!("HTTP {s}: {message}"),
    }
}

impl ClientError {
    /// The DPS / IoT Hub `errorCode`, when the failure came from the service.
    pub fn error_code(&self) -> Option<u32> {
        match self {
            Self::Service { error_code, .. } | Self::RegistrationFailed { error_code, .. } => *error_code,
            _ => None,
        }
    }

    /// Whether trying again later may succeed (network trouble, throttling, server errors,
    /// timeouts) as opposed to a configuration or authorization problem that will fail again.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connection { .. } | Self::Disconnected(_) | Self::Timeout { .. } => true,
            Self::Service { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }

    pub(crate) fn connection(context: impl Into<String>, err: &(dyn std::error::Error + 'static)) -> Self {
        Self::Connection {
            context: context.into(),
            message: error_chain(err),
        }
    }

    /// Builds a [`ClientError::Service`] from an error response body, which is normally a
    /// `ProvisioningServiceErrorDetails` JSON object but may be IoT-Hub style (`Message`), or
    /// not JSON at all (a proxy's HTML page). Public so that other HTTP clients of dps (the CLI's
    /// service and registry calls) report errors the same way.
    pub fn from_error_body(status: u16, body: &[u8]) -> Self {
        let text = String::from_utf8_lossy(body).trim().to_string();
        let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
        let field = |names: &[&str]| -> Option<serde_json::Value> {
            let obj = json.as_ref()?.as_object()?;
            names.iter().find_map(|n| {
                obj.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(n))
                    .map(|(_, v)| v.clone())
            })
        };
        let error_code = field(&["errorCode", "code"]).and_then(|v| match v {
            serde_json::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            serde_json::Value::String(s) => s.parse().ok(),
            _ => None,
        });
        let message = field(&["message", "errorMessage"])
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| {
                if text.is_empty() {
                    "(empty response body)".to_string()
                } else {
                    text.clone()
                }
            });
        // IoT Hub's certificate management words its refusals generically ("Credential
        // management operation failed") and says why in `info.credentialMessage`.
        let message = match field(&["info"]).and_then(|i| i.get("credentialMessage")?.as_str().map(str::to_string)) {
            Some(why) => format!("{message}: {why}"),
            None => message,
        };
        let tracking_id = field(&["trackingId"]).and_then(|v| v.as_str().map(str::to_string));
        Self::Service {
            status,
            error_code,
            message,
            tracking_id,
        }
    }
}

pub use dps_proto::error::error_chain;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dps_error_body() {
        let e = ClientError::from_error_body(
            401,
            br#"{"errorCode":401000,"trackingId":"t-1","message":"Unauthorized","timestampUtc":"2021-10-13T09:00:13.2276933Z"}"#,
        );
        match &e {
            ClientError::Service {
                status,
                error_code,
                message,
                tracking_id,
            } => {
                assert_eq!((*status, *error_code), (401, Some(401000)));
                assert_eq!(message, "Unauthorized");
                assert_eq!(tracking_id.as_deref(), Some("t-1"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(e.to_string(), "error 401000 (HTTP 401): Unauthorized");
        assert_eq!(e.error_code(), Some(401000));
        assert!(!e.is_transient());
    }

    #[test]
    fn other_error_bodies() {
        // identity-service aliases, string codes.
        let e = ClientError::from_error_body(404, br#"{"code":"404201","errorMessage":"not found"}"#);
        assert_eq!(e.error_code(), Some(404201));
        assert!(e.to_string().contains("not found"));
        // Not JSON: the text is the message.
        let e = ClientError::from_error_body(502, b"<html>Bad gateway</html>");
        assert_eq!(e.error_code(), None);
        assert_eq!(e.to_string(), "HTTP 502: <html>Bad gateway</html>");
        assert!(e.is_transient());
        let e = ClientError::from_error_body(500, b"");
        assert!(e.to_string().contains("empty response body"));
    }

    #[test]
    fn registration_failed_message() {
        let e = ClientError::RegistrationFailed {
            status: RegistrationStatus::Failed,
            error_code: Some(400208),
            message: "no hub".into(),
        };
        assert_eq!(e.to_string(), "registration failed: error 400208: no hub");
        assert_eq!(e.error_code(), Some(400208));
    }
}

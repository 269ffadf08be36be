//! Device and module authentication at MQTT CONNECT (hub-dice-tpm.md §A2, §A3, §A7), on AMQP's
//! CBS and per HTTPS request.
//!
//! A module authenticates as a device does, with its own keys or certificate, the SAS audience
//! being `{host}/devices/{deviceId}/modules/{moduleId}`; its device must exist and be enabled.
//!
//! SAS: the token's `sr` is HMACed exactly as the SDK sent it (Python percent-encodes it, C sends
//! it raw) — `dps_proto::sas::SasToken` does that — and only the decoded audience is compared.
//! X.509 `selfSigned`: the devices send no (or an empty) password and the TLS layer hands us the
//! leaf certificate's thumbprints. Only device credentials are accepted, never hub policy keys:
//! a policy token would let one secret impersonate every device.

use dps_proto::hub_mqtt::HubUsername;
use dps_proto::sas::{SasError, SasToken};

use crate::error::AuthError;
use crate::record::{DeviceRecord, Status};
use crate::Hub;
use dps_pki::thumbprint::normalize_hex;

/// Which of the device's two credentials matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialSlot {
    /// The primary key or thumbprint.
    Primary,
    /// The secondary key or thumbprint.
    Secondary,
}

/// How the device proved its identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// A SAS token signed with one of the device's symmetric keys.
    Sas(CredentialSlot),
    /// A TLS client certificate whose thumbprint is one of the device's `selfSigned` thumbprints.
    X509SelfSigned(CredentialSlot),
}

impl AuthMethod {
    /// The `type` IoT Hub stamps into `iothub-connection-auth-method` (`sas` / `x509`).
    pub fn type_name(self) -> &'static str {
        match self {
            AuthMethod::Sas(_) => "sas",
            AuthMethod::X509SelfSigned(_) => "x509",
        }
    }
}

/// An authenticated device or module. Only [`Hub::authenticate`] makes one, so holding it proves
/// the credentials were checked; [`Hub::open_session`] takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIdentity {
    pub(crate) device_id: String,
    /// The module's registry id, for a module.
    pub(crate) module_id: Option<String>,
    pub(crate) client_device_id: String,
    /// The identity's path as the client spelled its ids (`d` or `d/modules/m`): its topics
    /// use this spelling.
    pub(crate) client_path: String,
    pub(crate) generation_id: String,
    pub(crate) method: AuthMethod,
}

impl DeviceIdentity {
    /// Registry device id (as stored).
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// Registry module id (as stored), for a module.
    pub fn module_id(&self) -> Option<&str> {
        self.module_id.as_deref()
    }

    /// The [`dps_proto::hub_mqtt::identity_path`] of the identity, as the client spelled it.
    pub fn client_path(&self) -> &str {
        &self.client_path
    }

    /// The registry key of the identity (its slot).
    pub(crate) fn key(&self) -> String {
        crate::record::identity_key(&self.device_id, self.module_id.as_deref())
    }

    /// Device id as the device spelled it in its username; its topics use this spelling, and the
    /// server should check it equals the CONNECT client id.
    pub fn client_device_id(&self) -> &str {
        &self.client_device_id
    }

    /// Generation of the identity that authenticated (changes when the device is re-created).
    pub fn generation_id(&self) -> &str {
        &self.generation_id
    }

    /// Which credential matched.
    pub fn method(&self) -> AuthMethod {
        self.method
    }
}

/// The TLS client certificate a device presented (its leaf), as the hub judges it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientCertificate {
    /// SHA-1 thumbprint, hex.
    pub sha1_thumbprint: String,
    /// SHA-256 thumbprint, hex.
    pub sha256_thumbprint: String,
    /// The certificate (DER), read only when something is revoked: most connections never pay
    /// for parsing it.
    der: Option<Vec<u8>>,
}

impl ClientCertificate {
    /// The leaf of a TLS client chain (DER, leaf first); `None` without one.
    pub fn leaf_of(chain: &[Vec<u8>]) -> Option<ClientCertificate> {
        let leaf = chain.first()?;
        Some(ClientCertificate {
            sha1_thumbprint: dps_pki::thumbprint::sha1_thumbprint(leaf),
            sha256_thumbprint: dps_pki::thumbprint::sha256_thumbprint(leaf),
            der: Some(leaf.clone()),
        })
    }

    /// A certificate known by its thumbprints only.
    pub fn with_thumbprints(sha1: impl Into<String>, sha256: impl Into<String>) -> ClientCertificate {
        ClientCertificate {
            sha1_thumbprint: sha1.into(),
            sha256_thumbprint: sha256.into(),
            der: None,
        }
    }

    /// What revocation judges: issuer, serial and thumbprint (the thumbprint alone when the
    /// certificate is not known, or does not parse).
    fn revocation_id(&self) -> dps_core::revocation::CertificateId {
        self.der
            .as_deref()
            .and_then(dps_core::revocation::CertificateId::of)
            .unwrap_or_else(|| dps_core::revocation::CertificateId {
                sha256_thumbprint: self.sha256_thumbprint.clone(),
                issuer: String::new(),
                serial_number: String::new(),
                subject: String::new(),
            })
    }
}

impl Hub {
    /// Refuses devices whose certificate is in `revoked` (the provisioning engine's set, which
    /// changes as certificates are revoked). Set once, at start; later calls are ignored.
    pub fn set_revocations(&self, revoked: std::sync::Arc<dps_core::revocation::RevocationSet>) {
        let _ = self.inner.revocations.set(revoked);
    }

    /// Checks a device's CONNECT credentials.
    ///
    /// * `username` — the parsed CONNECT username; its host must be this hub (case-insensitive).
    /// * `password` — a SAS token for key devices; absent or empty for X.509 devices.
    /// * `client_cert` — the TLS client leaf certificate, if one was presented (the chain is not
    ///   judged here; `selfSigned` pins the leaf, which must not be revoked).
    ///
    /// Errors say exactly what was wrong (unknown device, expired token, wrong key, wrong
    /// audience, ...) so the server can log them; the device only sees the CONNACK code.
    pub async fn authenticate(
        &self,
        now_unix: u64,
        username: &HubUsername,
        password: Option<&[u8]>,
        client_cert: Option<ClientCertificate>,
    ) -> Result<DeviceIdentity, AuthError> {
        let device_id = username.device_id.as_str();
        let refuse = |reason: String| {
            let err = AuthError::NotAuthorized {
                device_id: device_id.to_string(),
                reason,
            };
            tracing::info!(error = %err, "device authentication refused");
            err
        };
        if !self.answers_to(&username.host_name) {
            return Err(refuse(format!(
                "username names host '{}' but this hub is '{}'",
                username.host_name, self.inner.host_name
            )));
        }
        let module_id = username.module_id.as_deref();
        let unavailable = |source| {
            let err = AuthError::Storage {
                device_id: device_id.to_string(),
                source,
            };
            tracing::warn!(error = %err, "device authentication not possible");
            err
        };
        let device = self.inner.find(device_id).await.map_err(unavailable)?;
        let (_, device) = device.ok_or_else(|| refuse("unknown device (not registered in this hub)".into()))?;
        let rec = match module_id {
            None => device.clone(),
            Some(m) => {
                let module = self.inner.find_key(&crate::record::module_key(device_id, m)).await;
                let (_, module) = module
                    .map_err(unavailable)?
                    .ok_or_else(|| refuse(format!("unknown module '{m}' (not registered on this device)")))?;
                module
            }
        };
        let client_path = dps_proto::hub_mqtt::identity_path(device_id, module_id);

        let password = password.filter(|p| !p.is_empty());
        let method = match password {
            Some(pw) => {
                let token = std::str::from_utf8(pw)
                    .map_err(|_| refuse("password is not UTF-8 (expected a SAS token)".into()))?;
                AuthMethod::Sas(self.check_sas(now_unix, &client_path, &rec, token).map_err(refuse)?)
            }
            None => {
                let revoked = self.inner.revocations.get().filter(|r| !r.is_empty());
                if let (Some(cert), Some(revoked)) = (&client_cert, revoked) {
                    let id = cert.revocation_id();
                    if revoked.is_revoked(&id) {
                        return Err(refuse(format!(
                            "client certificate '{}' (serial {}, issuer '{}') is revoked",
                            id.subject, id.serial_number, id.issuer
                        )));
                    }
                }
                AuthMethod::X509SelfSigned(check_thumbprint(now_unix, &rec, client_cert).map_err(refuse)?)
            }
        };
        // Checked after the credentials so a disabled device's status is not revealed to anyone
        // who merely knows its id. A module of a disabled device is refused with it.
        if device.status == Status::Disabled {
            let err = AuthError::DeviceDisabled {
                device_id: device.device_id.clone(),
            };
            tracing::info!(error = %err, "device authentication refused");
            return Err(err);
        }
        tracing::debug!(device = %rec.device_id, module = ?rec.module_id, method = ?method, "device authenticated");
        Ok(DeviceIdentity {
            device_id: rec.device_id.clone(),
            module_id: rec.module_id.clone(),
            client_device_id: device_id.to_string(),
            client_path,
            generation_id: rec.generation_id.clone(),
            method,
        })
    }

    /// Checks a SAS token of the identity at `path` (its ids as the client spelled them).
    fn check_sas(&self, now_unix: u64, path: &str, rec: &DeviceRecord, token: &str) -> Result<CredentialSlot, String> {
        let Some((primary, secondary)) = rec.sas_keys() else {
            return Err(format!(
                "device uses '{}' authentication but presented a SAS token",
                rec.authentication.kind
            ));
        };
        let token = SasToken::parse(token).map_err(|e| e.to_string())?;
        // The audience names the hub by any name it answers to (a token made before a rename
        // stays good); the path must be the identity's own.
        let got = token.audience();
        let host = got
            .split_once('/')
            .map(|(host, _)| host)
            .filter(|host| self.answers_to(host))
            .unwrap_or(&self.inner.host_name);
        let audience = format!("{host}/devices/{path}");
        token.check_audience_eq(&audience).map_err(|e| match e {
            SasError::AudienceMismatch { expected, got } => {
                format!("wrong SAS audience: token is for '{got}', expected '{expected}'")
            }
            other => other.to_string(),
        })?;
        token
            .check_expiry(now_unix)
            .map_err(|e| format!("SAS token expired: {e}"))?;
        match token.verify_signature([primary, secondary]) {
            Ok(0) => Ok(CredentialSlot::Primary),
            Ok(_) => Ok(CredentialSlot::Secondary),
            Err(SasError::BadKey) => Err("device key stored in the registry is not valid base64".into()),
            Err(_) => Err("SAS signature does not match the device's primary or secondary key (wrong key)".into()),
        }
    }
}

/// `now_unix`: a certificate replaced by a renewal (the secondary thumbprint) is accepted until
/// the renewal's grace period ends.
fn check_thumbprint(
    now_unix: u64,
    rec: &DeviceRecord,
    presented: Option<ClientCertificate>,
) -> Result<CredentialSlot, String> {
    let kind = rec.authentication.kind.as_str();
    if !kind.eq_ignore_ascii_case("selfSigned") {
        return Err(if kind.eq_ignore_ascii_case("sas") {
            "no SAS token in the password (the device uses SAS authentication)".to_string()
        } else {
            format!("'{kind}' authentication is not supported by this hub's device endpoint")
        });
    }
    let Some(ClientCertificate {
        sha1_thumbprint: sha1,
        sha256_thumbprint: sha256,
        ..
    }) = presented
    else {
        return Err("no password and no client certificate presented".into());
    };
    let (sha1, sha256) = (normalize_hex(&sha1), normalize_hex(&sha256));
    let tp = rec.authentication.x509_thumbprint.as_ref();
    let matches = |t: Option<&String>| {
        t.map(|t| normalize_hex(t))
            .is_some_and(|t| !t.is_empty() && (t == sha1 || t == sha256))
    };
    if matches(tp.and_then(|t| t.primary_thumbprint.as_ref())) {
        Ok(CredentialSlot::Primary)
    } else if matches(tp.and_then(|t| t.secondary_thumbprint.as_ref())) {
        let renewed_until = rec.issuance.as_ref().and_then(|i| i.previous_valid_until);
        match renewed_until {
            Some(until) if now_unix as i64 > until.timestamp() => Err(format!(
                "client certificate (SHA-1 {sha1}) was replaced by a renewal; it was accepted until {}",
                until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )),
            _ => Ok(CredentialSlot::Secondary),
        }
    } else {
        Err(format!(
            "client certificate (SHA-1 {sha1}) matches neither registered thumbprint"
        ))
    }
}

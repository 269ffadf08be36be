//! Who an AMQP client is, decided in its SASL exchange ([`super::sasl`]):
//!
//! - `PLAIN` with user name `{idScope}/registrations/{registrationId}` and a registration SAS
//!   token as password (Node `azure-iot-provisioning-device-amqp` `policyOverride`): a DPS
//!   device, judged by the engine before the connection opens, as MQTT judges CONNECT
//!   (decision 0011). Only that registration's node may then be attached.
//! - `TPM` (the DPS mechanism of the Node, C and C# SDKs): the init frame carries the ID scope,
//!   registration id and endorsement key, the client answers a 1-byte challenge with its storage
//!   root key, the server sends the activation blob in segments, and the client answers the last
//!   one with a SAS token signed by the key it imported — checked like any DPS SAS.
//! - `ANONYMOUS`, `EXTERNAL` and `MSSBCBS`, or no SASL layer at all: the client is known by its
//!   TLS certificate (X.509 devices) or authenticates each device later with CBS put-token (the
//!   hub's SAS devices).

use std::sync::Arc;

use dps_core::{Authenticated, Credential, DeviceRequest};
use dps_proto::dps_amqp::{self as wire, RegistrationNode, TpmInit};
use dps_proto::model::device::{DeviceRegistration, TpmKeys};
use fe2o3_amqp::types::sasl::SaslCode;

use super::sasl::{Authenticator, Step};
use crate::Services;

/// Who the client is, as far as the connection goes.
pub(crate) enum ConnIdentity {
    /// No credential yet: a TLS client certificate (checked when a link names the device) or
    /// CBS tokens (one per device) will say.
    Unnamed,
    /// A DPS device whose credential the engine accepted: only its registration node may be
    /// attached.
    Dps(Arc<DpsDevice>),
}

/// A DPS device the engine accepted, and on which credential.
pub(crate) struct DpsDevice {
    /// Scope, registration id and credential.
    pub(crate) request: DeviceRequest,
    /// The engine's acceptance, which stands in for attestation on its requests.
    pub(crate) authenticated: Authenticated,
}

/// Asks the engine whether `request`'s credential is good.
pub(crate) async fn authenticate_dps(
    services: &Services,
    request: DeviceRequest,
) -> Result<DpsDevice, dps_core::Error> {
    judge(services, request, false).await
}

/// Judges `request`'s credential; `challenged`: the SAS ends a TPM challenge exchange on this
/// connection, so it is judged (and the challenge spent) now rather than refused as a TPM
/// credential presented ahead of a register.
async fn judge(services: &Services, request: DeviceRequest, challenged: bool) -> Result<DpsDevice, dps_core::Error> {
    let now = services.clock.now();
    let judged = if challenged {
        services.engine.authenticate_challenged(now, &request).await
    } else {
        services.engine.authenticate(now, &request).await
    };
    match judged {
        Ok(authenticated) => Ok(DpsDevice { request, authenticated }),
        Err(e) => {
            tracing::info!(registration = ?request.registration_id, code = e.code(), error = ?e.to_string(), "AMQP DPS device refused: not authorized");
            Err(e)
        }
    }
}

impl ConnIdentity {
    /// Whether this connection belongs to a DPS device (and is held to the DPS session limit).
    pub(crate) fn is_dps(&self) -> bool {
        matches!(self, ConnIdentity::Dps(_))
    }
}

/// The SASL side of [`ConnIdentity`]: the mechanisms offered and how each is judged.
pub(crate) struct ConnAuthenticator<'a> {
    services: &'a Services,
    /// The client's address, carried into the device requests it authenticates.
    source: Option<std::net::IpAddr>,
    /// The TPM exchange under way, if the client chose `TPM`.
    tpm: Option<TpmExchange>,
}

/// The state of a `TPM` SASL exchange.
enum TpmExchange {
    /// The init arrived (scope, id, EK); the 1-byte challenge asking for the SRK is out.
    AwaitingSrk(TpmInit),
    /// The activation blob is being sent; `rest` are the segments not sent yet, in reverse.
    Sending { request: DeviceRequest, rest: Vec<Vec<u8>> },
    /// The last segment is out; the client's answer carries the SAS token.
    AwaitingToken { request: DeviceRequest },
}

impl<'a> ConnAuthenticator<'a> {
    pub(crate) fn new(services: &'a Services, source: Option<std::net::IpAddr>) -> Self {
        Self {
            services,
            source,
            tpm: None,
        }
    }

    /// Asks the engine whether `request`'s credential is good (`challenged`: the SAS answering
    /// a TPM challenge); the identity, or the refusal.
    async fn authenticate(&self, request: DeviceRequest, challenged: bool) -> Step<ConnIdentity> {
        match judge(self.services, request, challenged).await {
            Ok(device) => Step::Done(ConnIdentity::Dps(Arc::new(device))),
            Err(e) => Step::Refuse(SaslCode::Auth, e.to_string()),
        }
    }

    /// The first TPM step: the engine checks the EK and SRK against the enrollment and makes the
    /// activation blob, which goes out in segments.
    async fn tpm_challenge(&mut self, init: TpmInit, srk: &[u8]) -> Step<ConnIdentity> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let request = DeviceRequest {
            id_scope: init.id_scope,
            registration_id: init.registration_id,
            credential: Credential::None,
            api_version: None,
            source: self.source,
            transport: dps_core::Transport::Amqp,
        };
        let body = DeviceRegistration {
            registration_id: Some(request.registration_id.clone()),
            tpm: Some(TpmKeys {
                endorsement_key: b64.encode(&init.endorsement_key),
                storage_root_key: Some(b64.encode(srk)),
            }),
            ..Default::default()
        };
        let now = self.services.clock.now();
        let challenge = match self.services.engine.tpm_challenge(now, &request, &body).await {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(registration = ?request.registration_id, code = e.code(), error = ?e.to_string(), "AMQP TPM challenge refused");
                return Step::Refuse(SaslCode::Auth, e.to_string());
            }
        };
        let Ok(blob) = b64.decode(&challenge.authentication_key) else {
            return Step::Refuse(SaslCode::Sys, "activation blob is not base64".into());
        };
        let mut segments = wire::tpm_challenge_segments(&blob);
        segments.reverse();
        self.next_segment(request, segments)
    }

    fn next_segment(&mut self, request: DeviceRequest, mut rest: Vec<Vec<u8>>) -> Step<ConnIdentity> {
        match rest.pop() {
            Some(segment) => {
                self.tpm = Some(if rest.is_empty() {
                    TpmExchange::AwaitingToken { request }
                } else {
                    TpmExchange::Sending { request, rest }
                });
                Step::Challenge(segment)
            }
            None => Step::Refuse(SaslCode::Sys, "empty activation blob".into()),
        }
    }
}

impl Authenticator for ConnAuthenticator<'_> {
    type Identity = ConnIdentity;

    fn mechanisms(&self) -> &'static [&'static str] {
        &["EXTERNAL", "MSSBCBS", "PLAIN", "ANONYMOUS", wire::TPM_MECHANISM]
    }

    async fn init(&mut self, mechanism: &str, initial: Option<&[u8]>, _hostname: Option<&str>) -> Step<ConnIdentity> {
        match mechanism {
            "ANONYMOUS" | "EXTERNAL" | "MSSBCBS" => Step::Done(ConnIdentity::Unnamed),
            "PLAIN" => {
                let Some((user, password)) = initial.and_then(wire::parse_plain) else {
                    return Step::Refuse(SaslCode::Auth, "malformed PLAIN response".into());
                };
                match RegistrationNode::parse(&user) {
                    Some(node) => {
                        self.authenticate(
                            DeviceRequest {
                                id_scope: node.id_scope,
                                registration_id: node.registration_id,
                                credential: Credential::Sas(password),
                                api_version: None,
                                source: self.source,
                                transport: dps_core::Transport::Amqp,
                            },
                            false,
                        )
                        .await
                    }
                    None => Step::Refuse(
                        SaslCode::Auth,
                        format!("PLAIN user name {user:?} is not '{{idScope}}/registrations/{{registrationId}}'"),
                    ),
                }
            }
            wire::TPM_MECHANISM => match initial.map(TpmInit::parse) {
                Some(Ok(init)) => {
                    self.tpm = Some(TpmExchange::AwaitingSrk(init));
                    Step::Challenge(vec![0])
                }
                Some(Err(e)) => Step::Refuse(SaslCode::Auth, e.to_string()),
                None => Step::Refuse(SaslCode::Auth, "TPM init without its initial response".into()),
            },
            other => Step::Refuse(SaslCode::Auth, format!("SASL mechanism {other:?} is not offered")),
        }
    }

    async fn response(&mut self, data: &[u8]) -> Step<ConnIdentity> {
        match self.tpm.take() {
            Some(TpmExchange::AwaitingSrk(init)) => match wire::strip_response_marker(data) {
                Some(srk) if !srk.is_empty() => self.tpm_challenge(init, srk).await,
                _ => Step::Refuse(SaslCode::Auth, "TPM response carries no storage root key".into()),
            },
            Some(TpmExchange::Sending { request, rest }) => self.next_segment(request, rest),
            Some(TpmExchange::AwaitingToken { request }) => {
                match wire::strip_response_marker(data).map(|t| String::from_utf8_lossy(t).into_owned()) {
                    Some(token) if !token.is_empty() => {
                        self.authenticate(
                            DeviceRequest {
                                credential: Credential::Sas(token),
                                ..request
                            },
                            true,
                        )
                        .await
                    }
                    _ => Step::Refuse(SaslCode::Auth, "TPM response carries no SAS token".into()),
                }
            }
            None => Step::Refuse(SaslCode::Auth, "unexpected SASL response".into()),
        }
    }
}

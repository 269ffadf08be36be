//! The DPS device endpoint over MQTT: a thin adapter that turns publishes into engine calls and
//! engine results into response publishes (device-protocol.md §2).

use crate::ApiError;
use dps_core::{Authenticated, Credential, DeviceRequest};
use dps_proto::dps_mqtt::{response_topic, topic_rid, DpsRequestTopic, DpsUsername, RESPONSE_FILTER};

use crate::dps_device::DpsOperation;
use rumqttc::mqttbytes::v4::{
    Connect, ConnectReturnCode, Packet, PubAck, Publish, SubAck, SubscribeReasonCode, UnsubAck,
};
use rumqttc::mqttbytes::QoS;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::framed::{FrameError, Framed};
use crate::Services;

/// A DPS connection whose CONNECT was accepted.
pub(super) struct Session {
    request: DeviceRequest,
    authenticated: Authenticated,
    keep_alive: u16,
}

/// Judges a DPS CONNECT as Azure does, before anything else is served on the connection: the
/// user name (with a supported `api-version`), the client id (the registration id), and the
/// credential — the SAS in the password or the TLS client certificate, checked by the engine.
/// `Err` is the CONNACK code to refuse with; the reason is logged at info.
pub(super) async fn accept(
    services: &Services,
    connect: &Connect,
    user: DpsUsername,
    password: String,
    peer_certs: Vec<Vec<u8>>,
    source: Option<std::net::IpAddr>,
) -> Result<Session, ConnectReturnCode> {
    // An api-version this service does not know makes the user name unacceptable: 0x04, "the
    // data in the user name or password is malformed" (MQTT 3.1.1 §3.2.2.3), the code a
    // malformed DPS user name already gets.
    if let Err(e) = dps_proto::api_version::check(user.api_version.as_deref(), dps_proto::api_version::DEVICE) {
        tracing::info!(registration = ?user.registration_id, error = ?e.to_string(), "DPS connection refused");
        return Err(ConnectReturnCode::BadUserNamePassword);
    }
    if !connect.client_id.eq_ignore_ascii_case(&user.registration_id) {
        tracing::info!(client_id = ?connect.client_id, registration = ?user.registration_id, "DPS connection refused: the client id must equal the registration id");
        return Err(ConnectReturnCode::BadClientId);
    }
    let credential = if !password.is_empty() {
        Credential::Sas(password)
    } else if !peer_certs.is_empty() {
        Credential::X509(peer_certs)
    } else {
        Credential::None
    };
    let request = DeviceRequest {
        id_scope: user.id_scope,
        registration_id: user.registration_id,
        credential,
        api_version: user.api_version,
        source,
        transport: dps_core::Transport::Mqtt,
    };
    match services.engine.authenticate(services.clock.now(), &request).await {
        Ok(authenticated) => Ok(Session {
            request,
            authenticated,
            keep_alive: connect.keep_alive,
        }),
        Err(e) => {
            // Debug formatting: the id and the message carry client-chosen text, which must not
            // forge log lines.
            tracing::info!(registration = ?request.registration_id, code = e.code(), error = ?e.to_string(), "DPS connection refused: not authorized");
            Err(ConnectReturnCode::NotAuthorized)
        }
    }
}

/// Serves one DPS connection after its CONNACK, until the device disconnects, stays silent
/// for 1.5 × its keep-alive, breaks the protocol, or `deadline` (the DPS session limit) passes.
/// Requests are answered in order (the C SDK ignores `$rid` and keeps one request in flight),
/// each response published at QoS 1 (C# always PUBACKs).
pub(super) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut Framed<S>,
    services: &Services,
    session: Session,
    deadline: Instant,
) -> Result<(), FrameError> {
    let Session {
        request,
        authenticated,
        keep_alive,
    } = session;
    let idle = super::idle_limit(keep_alive);
    let mut next_pkid: u16 = 0;
    loop {
        let until = idle.map_or(deadline, |i| (Instant::now() + i).min(deadline));
        let packet = match tokio::time::timeout_at(until, io.next()).await {
            Ok(p) => p?,
            Err(_) => {
                let why = if Instant::now() >= deadline {
                    "the DPS session deadline passed"
                } else {
                    "no packet within 1.5 x keep-alive"
                };
                tracing::info!(registration = %request.registration_id, "closing DPS connection: {why}");
                break;
            }
        };
        let Some(packet) = packet else { break };
        if let Some(why) = super::ends_session(&packet) {
            tracing::info!(registration = %request.registration_id, "closing DPS connection: {why}");
            break;
        }
        match packet {
            Packet::Subscribe(s) => {
                let codes = s
                    .filters
                    .iter()
                    .map(|f| {
                        if f.path == RESPONSE_FILTER {
                            SubscribeReasonCode::Success(QoS::AtLeastOnce)
                        } else {
                            SubscribeReasonCode::Failure
                        }
                    })
                    .collect();
                io.send(&Packet::SubAck(SubAck::new(s.pkid, codes))).await?;
            }
            Packet::Unsubscribe(u) => io.send(&Packet::UnsubAck(UnsubAck::new(u.pkid))).await?,
            Packet::Publish(p) => {
                if p.qos == QoS::AtLeastOnce {
                    io.queue(&Packet::PubAck(PubAck::new(p.pkid)))?;
                }
                let (topic, body) = handle_publish(services, &request, &authenticated, &p).await;
                next_pkid = next_pkid.checked_add(1).unwrap_or(1);
                let mut reply = Publish::new(topic, QoS::AtLeastOnce, body);
                reply.pkid = next_pkid;
                io.queue(&Packet::Publish(reply))?;
                io.flush().await?;
            }
            Packet::PingReq => io.send(&Packet::PingResp).await?,
            Packet::Disconnect => break,
            // PUBACKs for our responses, and anything else a device may send, need no answer.
            _ => {}
        }
    }
    Ok(())
}

/// One request → (response topic, JSON body).
async fn handle_publish(
    services: &Services,
    request: &DeviceRequest,
    authenticated: &Authenticated,
    p: &Publish,
) -> (String, Vec<u8>) {
    let topic = match DpsRequestTopic::parse(&p.topic) {
        Ok(t) => t,
        Err(e) => {
            // Answered on the `$rid` the topic carried (empty when it had none), so the device
            // matches the error to its request.
            let err = ApiError::invalid(e.to_string());
            tracing::info!(registration = %request.registration_id, error = %err, "bad DPS topic");
            return (
                response_topic(err.status, &topic_rid(&p.topic), None),
                crate::dps_device::error_body(services, &err),
            );
        }
    };
    let rid = topic.rid().to_string();
    if p.payload.len() > services.config.max_message_bytes {
        let err = ApiError::new(
            dps_proto::codes::PAYLOAD_TOO_LARGE,
            format!(
                "request body of {} bytes exceeds the limit of {}",
                p.payload.len(),
                services.config.max_message_bytes
            ),
        );
        return (
            response_topic(err.status, &rid, None),
            crate::dps_device::error_body(services, &err),
        );
    }
    let op = match &topic {
        DpsRequestTopic::Register { .. } => DpsOperation::Register(&p.payload),
        DpsRequestTopic::OperationStatus { operation_id, .. } => DpsOperation::OperationStatus(operation_id),
    };
    match crate::dps_device::answer(services, request, authenticated, op).await {
        Ok(a) => (response_topic(a.status, &rid, a.retry_after), a.body),
        Err(err) => (
            response_topic(err.status, &rid, err.retry_after),
            crate::dps_device::error_body(services, &err),
        ),
    }
}

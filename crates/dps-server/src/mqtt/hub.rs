//! The embedded hub's device endpoint over MQTT: authenticate at CONNECT, then relay packets to
//! a `dps_hub::DeviceSession` and its outbound publishes (twin responses, desired-property
//! patches, direct methods, cloud-to-device messages) back to the socket.

use std::time::Duration;

use std::collections::HashMap;

use dps_hub::{AuthError, C2dOutcome, OutboundKind};
use dps_proto::hub_mqtt::HubUsername;
use rumqttc::mqttbytes::v4::{
    Connect, ConnectReturnCode, Packet, PubAck, Publish, SubAck, SubscribeReasonCode, UnsubAck,
};
use rumqttc::mqttbytes::QoS;
use tokio::io::{AsyncRead, AsyncWrite};

use super::connack;
use super::framed::{FrameError, Framed};
use crate::Services;

/// Serves one hub device connection.
pub(super) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut Framed<S>,
    services: &Services,
    connect: Connect,
    user: HubUsername,
    password: String,
    peer_certs: Vec<Vec<u8>>,
) -> Result<(), FrameError> {
    // The hub the username names (any name it answers to); a name no hub answers to goes to
    // the first, which refuses it by name.
    let hub = &services
        .hubs
        .named(&user.host_name)
        .unwrap_or_else(|| services.hubs.first())
        .hub;
    let now = services.clock.now();
    // Azure accepts a hub user name without `api-version` (MQTT bridges and hand-written clients
    // send `{host}/{deviceId}` alone), so only a version that is present is checked.
    if let Some(v) = user.api_version.as_deref() {
        if let Err(e) = dps_proto::api_version::check(Some(v), dps_proto::api_version::HUB) {
            tracing::info!(device = ?user.device_id, error = ?e.to_string(), "hub connection refused");
            return io.send(&connack(ConnectReturnCode::BadUserNamePassword)).await;
        }
    }
    let client_id_ok = match &user.module_id {
        None => connect.client_id == user.device_id,
        Some(m) => connect.client_id == format!("{}/{m}", user.device_id),
    };
    if !client_id_ok {
        tracing::info!(client_id = %connect.client_id, device = %user.device_id, "hub client id must equal the device id");
        return io.send(&connack(ConnectReturnCode::BadClientId)).await;
    }
    let client_cert = dps_hub::ClientCertificate::leaf_of(&peer_certs);
    let password = (!password.is_empty()).then_some(password.as_bytes());
    let identity = match hub
        .authenticate(dps_core::Engine::unix_time(now), &user, password, client_cert)
        .await
    {
        Ok(id) => id,
        Err(e) => {
            tracing::info!(error = %e, "hub connection refused");
            let code = match e {
                AuthError::DeviceDisabled { .. } | AuthError::Storage { .. } => ConnectReturnCode::ServiceUnavailable,
                AuthError::NotAuthorized { .. } => ConnectReturnCode::NotAuthorized,
                // A refusal this server version does not know: not authorized, the safe answer.
                _ => ConnectReturnCode::NotAuthorized,
            };
            return io.send(&connack(code)).await;
        }
    };
    let (session, mut outbound) = match hub.open_session(identity).await {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(error = %e, "hub connection refused");
            return io.send(&connack(ConnectReturnCode::ServiceUnavailable)).await;
        }
    };
    let _counted = services.metrics.session(hub.host_name(), "mqtt");
    io.send(&connack(ConnectReturnCode::Success)).await?;
    // IoT Hub closes connections idle for 1.5 × keep-alive; Python defaults to 60 s, max 1740 s.
    // A client without keep-alive is still closed after 30 minutes of silence.
    let idle = super::idle_limit(connect.keep_alive).unwrap_or(Duration::from_secs(30 * 60));
    let mut out = Publisher::default();
    loop {
        tokio::select! {
            packet = tokio::time::timeout(idle, io.next()) => {
                let packet = match packet {
                    Ok(p) => p?,
                    Err(_) => {
                        tracing::debug!(device = %user.device_id, "keep-alive expired");
                        break;
                    }
                };
                let Some(packet) = packet else { break };
                if let Some(why) = super::ends_session(&packet) {
                    tracing::info!(device = %user.device_id, "closing hub connection: {why}");
                    break;
                }
                match packet {
                    Packet::Subscribe(s) => {
                        let codes = s
                            .filters
                            .iter()
                            .map(|f| match session.subscribe(&f.path, f.qos as u8) {
                                Some(q) => SubscribeReasonCode::Success(if q == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce }),
                                None => SubscribeReasonCode::Failure,
                            })
                            .collect();
                        io.send(&Packet::SubAck(SubAck::new(s.pkid, codes))).await?;
                    }
                    Packet::Unsubscribe(u) => {
                        for f in &u.topics {
                            session.unsubscribe(f);
                        }
                        io.send(&Packet::UnsubAck(UnsubAck::new(u.pkid))).await?;
                    }
                    Packet::Publish(p) => {
                        match session.handle_publish(services.clock.now(), &p.topic, &p.payload).await {
                            Ok(replies) => {
                                // Acknowledge only after the hub accepted the message.
                                if p.qos == QoS::AtLeastOnce {
                                    io.queue(&Packet::PubAck(PubAck::new(p.pkid)))?;
                                }
                                for r in replies {
                                    out.queue(io, r)?;
                                }
                                io.flush().await?;
                            }
                            Err(e) => {
                                // IoT Hub disconnects a device that publishes where it may not.
                                tracing::info!(device = %user.device_id, error = %e, "closing hub connection");
                                break;
                            }
                        }
                    }
                    // The device has the cloud-to-device message: IoT Hub completes it.
                    Packet::PubAck(a) => {
                        if let Some(lock) = out.c2d_locks.remove(&a.pkid) {
                            session.settle_c2d(&lock, C2dOutcome::Complete);
                        }
                    }
                    Packet::PingReq => io.send(&Packet::PingResp).await?,
                    Packet::Disconnect => break,
                    _ => {}
                }
            }
            next = outbound.recv() => {
                match next {
                    Some(o) => {
                        out.queue(io, o)?;
                        io.flush().await?;
                    }
                    // The hub dropped this session (replaced by a newer connection, device deleted).
                    None => break,
                }
            }
        }
    }
    Ok(())
}

/// Publishes from the hub to the device: QoS 1 packet ids, and which cloud-to-device message
/// each id carries until the device acknowledges it.
#[derive(Default)]
struct Publisher {
    last_pkid: u16,
    /// Lock tokens of cloud-to-device messages by packet id; at most the hub's per-device
    /// limit, since each one is a message the hub holds locked.
    c2d_locks: HashMap<u16, String>,
}

impl Publisher {
    fn queue<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Framed<S>,
        o: dps_hub::Outbound,
    ) -> Result<(), FrameError> {
        let qos = if o.qos == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce };
        let mut p = Publish::new(o.topic, qos, o.payload.to_vec());
        if qos == QoS::AtLeastOnce {
            self.last_pkid = self.last_pkid.checked_add(1).unwrap_or(1);
            p.pkid = self.last_pkid;
            if let OutboundKind::C2d { lock_token, .. } = o.kind {
                self.c2d_locks.insert(p.pkid, lock_token);
            }
        }
        io.queue(&Packet::Publish(p))
    }
}

//! The MQTT adapter (port 8883, and tunnelled in WebSockets on 443): one endpoint for both the DPS
//! device endpoint and the embedded hub's device endpoint, dispatched on the CONNECT username —
//! `{scope}/registrations/{id}/...` is DPS, `{host}/{deviceId}/?...` is the hub. Python and C
//! hard-code 8883 (443 for WebSockets) for both.

mod dps;
pub mod framed;
mod hub;

use std::sync::Arc;
use std::time::Duration;

use dps_proto::dps_mqtt::DpsUsername;
use dps_proto::hub_mqtt::HubUsername;
use rumqttc::mqttbytes::v4::{ConnAck, ConnectReturnCode, Packet};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use framed::{First, Framed};

use crate::{ServerConfig, Services};

/// How long a client has to send CONNECT after the TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest MQTT packet a client may send: room for the topic and headers on top of the
/// largest accepted payload. One number for every transport (TLS on 8883, WebSockets on 443), so
/// a device's limits do not depend on which port it reaches the server through.
pub fn max_packet_bytes(config: &ServerConfig) -> usize {
    config.max_message_bytes + 64 * 1024
}

/// The largest CONNECT accepted. A CONNECT carries a client id, a user name and a SAS token (a few
/// hundred bytes from every SDK); before a client is authenticated it gets no room for more.
pub const MAX_CONNECT_BYTES: usize = 16 * 1024;

/// How long a connection may stay silent: 1.5 × the keep-alive the client declared, as MQTT
/// 3.1.1 §3.1.2.10 and IoT Hub do. `None` for keep-alive 0, which means the client sends none.
pub(crate) fn idle_limit(keep_alive: u16) -> Option<Duration> {
    (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500))
}

/// Why `packet` ends an established session, if it does: a second CONNECT (MQTT 3.1.1 §3.1.0
/// says close), or a QoS 2 PUBLISH (IoT Hub and DPS support QoS 0 and 1 and close the
/// connection on 2). Shared by the DPS and hub sessions so both follow the same rules.
pub(crate) fn ends_session(packet: &Packet) -> Option<&'static str> {
    match packet {
        Packet::Connect(_) => Some("a second CONNECT (MQTT 3.1.1 §3.1.0)"),
        Packet::Publish(p) if p.qos == rumqttc::mqttbytes::QoS::ExactlyOnce => Some("a QoS 2 publish"),
        _ => None,
    }
}

/// Serves one MQTT connection over any byte stream: TLS on 8883, or the WebSocket tunnel on 443
/// ([`crate::ws`]). `peer_certs` are the DER certificates the client sent in the TLS handshake
/// (empty for SAS clients); possession of the leaf key was proven by TLS.
pub async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    services: Arc<Services>,
    peer_certs: Vec<Vec<u8>>,
    source: Option<std::net::IpAddr>,
) {
    let deadline = Instant::now() + services.config.limits.dps_session_timeout();
    let mut io = Framed::new(stream, max_packet_bytes(&services.config));
    let connect = match tokio::time::timeout(CONNECT_TIMEOUT, io.first(MAX_CONNECT_BYTES)).await {
        Ok(Ok(Some(First::Connect(c)))) => c,
        Ok(Ok(Some(First::UnacceptableLevel(level)))) => {
            tracing::info!(
                level,
                "refusing MQTT connection: only MQTT 3.1.1 (protocol level 4) is supported"
            );
            let _ = io.send(&connack(ConnectReturnCode::RefusedProtocolVersion)).await;
            io.close().await;
            return;
        }
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "could not read CONNECT; closing");
            io.close().await;
            return;
        }
        Err(_) => {
            tracing::debug!("no CONNECT within {CONNECT_TIMEOUT:?}; closing");
            io.close().await;
            return;
        }
    };
    let (username, password) = match &connect.login {
        Some(l) => (l.username.clone(), l.password.clone()),
        None => (String::new(), String::new()),
    };
    let result = if let Some(user) = DpsUsername::parse(&username) {
        let accepted = match user {
            Ok(user) => dps::accept(&services, &connect, user, password, peer_certs, source).await,
            Err(e) => {
                tracing::info!(error = ?e.to_string(), "DPS connection refused");
                Err(ConnectReturnCode::BadUserNamePassword)
            }
        };
        match accepted {
            Ok(session) => match io.send(&connack(ConnectReturnCode::Success)).await {
                Ok(()) => dps::serve(&mut io, &services, session, deadline).await,
                Err(e) => Err(e),
            },
            Err(code) => io.send(&connack(code)).await,
        }
    } else if let Some(user) = HubUsername::parse(&username) {
        hub::serve(&mut io, &services, connect, user, password, peer_certs).await
    } else {
        tracing::info!(username = ?username, "CONNECT username is neither a DPS nor an IoT hub username");
        io.send(&connack(ConnectReturnCode::BadUserNamePassword)).await
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "MQTT connection ended with an error");
    }
    io.close().await;
}

fn connack(code: ConnectReturnCode) -> Packet {
    Packet::ConnAck(ConnAck::new(code, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_limit_is_one_and_a_half_keep_alives() {
        assert_eq!(idle_limit(0), None);
        assert_eq!(idle_limit(1), Some(Duration::from_millis(1500)));
        assert_eq!(idle_limit(60), Some(Duration::from_secs(90)));
        assert_eq!(idle_limit(u16::MAX), Some(Duration::from_millis(65_535 * 1500)));
    }
}

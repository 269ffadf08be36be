//! The MQTT adapter (port 8883, and tunnelled in WebSockets on 443): one endpoint for both the DPS
//! device endpoint and the embedded hub's device endpoint, dispatched on the CONNECT username —
//! `{scope}/registrations/{id}/...` is DPS, `{host}/{deviceId}/?...` is the hub. Python and C
//! hard-code 8883 (443 for WebSockets) for both.

mod dps;
pub mod framed;
mod hub;

use std::sync::Arc;
use std::time::Duration;

use dps_core::Credential;
use dps_proto::dps_mqtt::DpsUsername;
use dps_proto::hub_mqtt::HubUsername;
use rumqttc::mqttbytes::v4::{ConnAck, ConnectReturnCode, Packet};
use tokio::io::{AsyncRead, AsyncWrite};

use framed::Framed;

use crate::{ServerConfig, Services};

/// How long a client has to send CONNECT after the TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest MQTT packet a client may send: room for the topic and headers on top of the
/// largest accepted payload. One number for every transport (TLS on 8883, WebSockets on 443), so
/// a device's limits do not depend on which port it reaches the server through.
pub fn max_packet_bytes(config: &ServerConfig) -> usize {
    config.max_message_bytes + 64 * 1024
}

/// Serves one MQTT connection over any byte stream: TLS on 8883, or the WebSocket tunnel on 443
/// ([`crate::ws`]). `peer_certs` are the DER certificates the client sent in the TLS handshake
/// (empty for SAS clients); possession of the leaf key was proven by TLS.
pub async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    services: Arc<Services>,
    peer_certs: Vec<Vec<u8>>,
) {
    let mut io = Framed::new(stream, max_packet_bytes(&services.config));
    let connect = match tokio::time::timeout(CONNECT_TIMEOUT, io.next()).await {
        Ok(Ok(Some(Packet::Connect(c)))) => c,
        Ok(Ok(Some(other))) => {
            tracing::debug!(?other, "first packet is not CONNECT; closing");
            return;
        }
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "could not read CONNECT");
            return;
        }
        Err(_) => {
            tracing::debug!("no CONNECT within {CONNECT_TIMEOUT:?}; closing");
            return;
        }
    };
    let (username, password) = match &connect.login {
        Some(l) => (l.username.clone(), l.password.clone()),
        None => (String::new(), String::new()),
    };
    let result = if let Some(user) = DpsUsername::parse(&username) {
        let user = match user {
            Ok(u) => u,
            Err(e) => {
                tracing::info!(error = %e, "refusing DPS connection");
                let _ = io.send(&connack(ConnectReturnCode::BadUserNamePassword)).await;
                return;
            }
        };
        if !connect.client_id.eq_ignore_ascii_case(&user.registration_id) {
            tracing::info!(client_id = %connect.client_id, registration = %user.registration_id, "DPS client id must equal the registration id");
            let _ = io.send(&connack(ConnectReturnCode::BadClientId)).await;
            return;
        }
        let credential = if !password.is_empty() {
            Credential::Sas(password)
        } else if !peer_certs.is_empty() {
            Credential::X509(peer_certs)
        } else {
            Credential::None
        };
        // The credential is judged by the engine on each request, so the device gets a JSON
        // error that says what was wrong instead of a bare CONNACK code.
        if io.send(&connack(ConnectReturnCode::Success)).await.is_err() {
            return;
        }
        dps::serve(&mut io, &services, user, credential).await
    } else if let Some(user) = HubUsername::parse(&username) {
        hub::serve(&mut io, &services, connect, user, password, peer_certs).await
    } else {
        tracing::info!(username = %username, "CONNECT username is neither a DPS nor an IoT hub username");
        let _ = io.send(&connack(ConnectReturnCode::BadUserNamePassword)).await;
        return;
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "MQTT connection ended with an error");
    }
    io.close().await;
}

fn connack(code: ConnectReturnCode) -> Packet {
    Packet::ConnAck(ConnAck::new(code, false))
}

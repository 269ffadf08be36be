//! `GET /$iothub/websocket`: MQTT and AMQP tunnelled in WebSockets on the HTTPS port, for devices
//! behind firewalls that only let 443 out. Every Azure IoT device SDK's MQTT_WS and AMQP_WS
//! transports (Python `websockets=True`, Node `MqttWs`/`AmqpWs`) connect here, to the DPS host for
//! provisioning and to the hub host after.
//!
//! This module only answers the opening handshake (RFC 6455 §4.2); the upgraded connection is
//! wrapped in [`crate::ws::WsByteStream`] and served by the same [`crate::mqtt::serve_connection`]
//! as port 8883 (subprotocol `mqtt`) or [`crate::amqp::serve_connection`] as port 5671
//! (`AMQPWSB10`), with the TLS client certificates of the 443 connection (X.509 devices present
//! theirs in that handshake).
//!
//! What the SDKs send: `GET /$iothub/websocket` with `Sec-WebSocket-Version: 13` and the
//! subprotocol `mqtt` (paho-mqtt 1.6 `WebsocketWrapper._do_handshake` in the Python SDK), `MQTT`
//! from C (`MQTT_WS_PROTOCOL_NAME`) — echoed as offered. Java and C# append
//! `?iothub-no-client-cert=true`, which is ignored: the client certificate is optional here anyway.

use std::sync::Arc;

use crate::ApiError;
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use base64::Engine as _;
use http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{HeaderMap, HeaderValue, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use super::PeerCertificates;
use crate::ws::{server_config, WsByteStream};
use crate::{mqtt, Services};

/// MQTT 3.1.1's registered WebSocket subprotocol name.
const MQTT_SUBPROTOCOL: &str = "mqtt";
/// AMQP 1.0's WebSocket subprotocol name (AMQP over WebSockets binding), which every Azure SDK's
/// AMQP-over-WebSockets transport offers.
const AMQP_SUBPROTOCOL: &str = "AMQPWSB10";

/// The protocol tunnelled in the WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tunnel {
    /// MQTT 3.1.1 (subprotocol `mqtt`).
    Mqtt,
    /// AMQP 1.0 (subprotocol `AMQPWSB10`).
    Amqp,
}

/// What a valid upgrade request leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// `Sec-WebSocket-Accept`.
    accept: String,
    /// The subprotocol token exactly as the client offered it.
    protocol: HeaderValue,
    /// What the subprotocol says is tunnelled.
    tunnel: Tunnel,
}

/// Answers an upgrade request on `/$iothub/websocket`: `101` and, once hyper hands the
/// connection over, an MQTT session on it; or a `400` that says what the request lacks.
pub(super) fn upgrade(services: &Arc<Services>, mut req: Request) -> Result<Response, ApiError> {
    if req.version() != Version::HTTP_11 {
        return Err(ApiError::invalid(format!(
            "WebSocket upgrades need HTTP/1.1; this request is {:?}",
            req.version()
        )));
    }
    let accepted = check_handshake(req.headers())?;
    let tunnel = accepted.tunnel;
    // hyper attaches this to HTTP/1.1 requests that carry `Upgrade` on connections served
    // `with_upgrades`, which `HttpApp::serve_connection` does; a router driven without a
    // connection (unit tests) has none.
    let on_upgrade = req
        .extensions_mut()
        .remove::<OnUpgrade>()
        .ok_or_else(|| ApiError::invalid("this connection cannot be upgraded to a WebSocket"))?;
    let peer_certs = req
        .extensions()
        .get::<PeerCertificates>()
        .map(|c| c.0.as_ref().clone())
        .unwrap_or_default();
    // The connection's place under the connection caps goes with the WebSocket: hyper's
    // connection ends at the upgrade, the TCP connection does not.
    let permit = req.extensions_mut().remove::<super::HeldPermit>();
    let services = services.clone();
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket upgrade did not complete");
                return;
            }
        };
        let config = server_config(mqtt::max_packet_bytes(&services.config));
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
        let peer = permit.as_ref().map(|p| p.0.ip());
        match tunnel {
            Tunnel::Mqtt => {
                tracing::debug!(?peer, "MQTT over WebSocket connection opened");
                mqtt::serve_connection(WsByteStream::new(ws), services, peer_certs, peer).await;
            }
            Tunnel::Amqp => {
                tracing::debug!(?peer, "AMQP over WebSocket connection opened");
                crate::amqp::serve_connection(WsByteStream::new(ws), services, peer_certs, peer).await;
            }
        }
    });
    Ok(switching_protocols(accepted))
}

impl Accepted {
    /// `Sec-WebSocket-Accept` of the reply.
    pub fn accept(&self) -> &str {
        &self.accept
    }

    /// The subprotocol echoed in the reply, as the client offered it.
    pub fn protocol(&self) -> &HeaderValue {
        &self.protocol
    }

    /// The protocol tunnelled.
    pub fn tunnel(&self) -> Tunnel {
        self.tunnel
    }
}

/// Checks the opening handshake's headers (RFC 6455 §4.2.1) and picks the subprotocol. Public
/// (with [`Accepted`]) for the fuzz targets, which feed it client header blocks.
pub fn check_handshake(headers: &HeaderMap) -> Result<Accepted, ApiError> {
    const NOT_AN_UPGRADE: &str = "/$iothub/websocket is the MQTT and AMQP over WebSockets endpoint: the request must \
        be a WebSocket upgrade (Connection: Upgrade, Upgrade: websocket)";
    if !has_token(headers, &UPGRADE, "websocket") {
        return Err(ApiError::invalid(format!(
            "{NOT_AN_UPGRADE}; Upgrade: websocket is missing"
        )));
    }
    if !has_token(headers, &CONNECTION, "upgrade") {
        return Err(ApiError::invalid(format!(
            "{NOT_AN_UPGRADE}; Connection: Upgrade is missing"
        )));
    }
    match headers.get(SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes().trim_ascii()) {
        Some(b"13") => {}
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "WebSocket version {} is not supported; only 13 (RFC 6455) is",
                String::from_utf8_lossy(other)
            )))
        }
        None => {
            return Err(ApiError::invalid(
                "Sec-WebSocket-Version is missing; send 13 (RFC 6455)",
            ))
        }
    }
    let key = headers
        .get(SEC_WEBSOCKET_KEY)
        .map(|v| v.as_bytes().trim_ascii())
        .ok_or_else(|| ApiError::invalid("Sec-WebSocket-Key is missing"))?;
    if base64::engine::general_purpose::STANDARD
        .decode(key)
        .map_or(true, |k| k.len() != 16)
    {
        return Err(ApiError::invalid(
            "Sec-WebSocket-Key must be 16 random bytes in base64 (RFC 6455 §4.1)",
        ));
    }
    let offered = tokens(headers, &SEC_WEBSOCKET_PROTOCOL);
    let chosen = offered.iter().find_map(|t| {
        if t.eq_ignore_ascii_case(MQTT_SUBPROTOCOL) {
            Some((*t, Tunnel::Mqtt))
        } else if t.eq_ignore_ascii_case(AMQP_SUBPROTOCOL) {
            Some((*t, Tunnel::Amqp))
        } else {
            None
        }
    });
    let Some((protocol, tunnel)) = chosen else {
        return Err(ApiError::invalid(if offered.is_empty() {
            "no WebSocket subprotocol offered; this endpoint tunnels MQTT 3.1.1 (Sec-WebSocket-Protocol: mqtt) \
             and AMQP 1.0 (Sec-WebSocket-Protocol: AMQPWSB10), as every Azure IoT device SDK offers"
                .to_string()
        } else {
            format!(
                "WebSocket subprotocol {} is not served here; this endpoint tunnels MQTT 3.1.1 \
                 (Sec-WebSocket-Protocol: mqtt) and AMQP 1.0 (AMQPWSB10)",
                offered.join(", ")
            )
        }));
    };
    Ok(Accepted {
        accept: derive_accept_key(key),
        // A token from a header value is a valid header value.
        protocol: HeaderValue::from_str(protocol).unwrap_or(HeaderValue::from_static(MQTT_SUBPROTOCOL)),
        tunnel,
    })
}

fn switching_protocols(accepted: Accepted) -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(SEC_WEBSOCKET_PROTOCOL, accepted.protocol);
    if let Ok(v) = HeaderValue::from_str(&accepted.accept) {
        h.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}

/// The comma-separated tokens of every `name` header, trimmed, empty ones dropped.
fn tokens<'a>(headers: &'a HeaderMap, name: &http::header::HeaderName) -> Vec<&'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

/// Whether a request asks for a WebSocket (`Upgrade: websocket`), valid or not.
pub(super) fn is_upgrade(headers: &HeaderMap) -> bool {
    has_token(headers, &UPGRADE, "websocket")
}

fn has_token(headers: &HeaderMap, name: &http::header::HeaderName, token: &str) -> bool {
    tokens(headers, name).iter().any(|t| t.eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dps_proto::codes;

    /// The request paho-mqtt 1.6 (Python SDK, `websockets=True`) sends, key from RFC 6455 §1.3.
    fn paho() -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("Host", "dps.example:443"),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Origin", "https://dps.example:443"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-Websocket-Version", "13"),
            ("Sec-Websocket-Protocol", "mqtt"),
        ] {
            h.insert(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn accepts_the_sdks_handshakes_and_echoes_the_subprotocol() {
        let a = check_handshake(&paho()).unwrap();
        assert_eq!(a.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(a.protocol, "mqtt");
        // C offers upper case; browsers list several subprotocols and keep-alive in Connection.
        let mut h = paho();
        h.insert(SEC_WEBSOCKET_PROTOCOL, "chat, MQTT".parse().unwrap());
        h.insert(CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        assert_eq!(check_handshake(&h).unwrap().protocol, "MQTT");
    }

    #[test]
    fn refuses_what_is_not_an_mqtt_upgrade_with_the_reason() {
        let refused = |edit: &dyn Fn(&mut HeaderMap)| {
            let mut h = paho();
            edit(&mut h);
            let e = check_handshake(&h).unwrap_err();
            assert_eq!((e.status, e.code), (400, codes::ARGUMENT_INVALID));
            e.message
        };
        assert!(refused(&|h| drop(h.remove(UPGRADE))).contains("Upgrade: websocket"));
        assert!(refused(&|h| drop(h.insert(CONNECTION, "keep-alive".parse().unwrap()))).contains("Connection"));
        assert!(refused(&|h| drop(h.insert(SEC_WEBSOCKET_VERSION, "8".parse().unwrap()))).contains("version 8"));
        assert!(refused(&|h| drop(h.remove(SEC_WEBSOCKET_KEY))).contains("Sec-WebSocket-Key"));
        assert!(refused(&|h| drop(h.insert(SEC_WEBSOCKET_KEY, "c2hvcnQ=".parse().unwrap()))).contains("16 random"));
        assert!(refused(&|h| drop(h.remove(SEC_WEBSOCKET_PROTOCOL))).contains("no WebSocket subprotocol"));
        let other = refused(&|h| drop(h.insert(SEC_WEBSOCKET_PROTOCOL, "stomp".parse().unwrap())));
        assert!(other.contains("stomp is not served"), "{other}");
    }

    /// Node's `AmqpWs` (rhea over `ws`) and C's AMQP_WS transport offer `AMQPWSB10`.
    #[test]
    fn amqp_subprotocol_tunnels_amqp() {
        let mut h = paho();
        h.insert(SEC_WEBSOCKET_PROTOCOL, "AMQPWSB10".parse().unwrap());
        let a = check_handshake(&h).unwrap();
        assert_eq!((a.protocol.to_str().unwrap(), a.tunnel), ("AMQPWSB10", Tunnel::Amqp));
        assert_eq!(check_handshake(&paho()).unwrap().tunnel, Tunnel::Mqtt);
    }
}

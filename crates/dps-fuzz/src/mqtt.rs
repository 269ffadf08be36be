//! MQTT: packet framing (over TLS and over WebSockets), CONNECT usernames and topics.

use bytes::BytesMut;
use dps_proto::dps_mqtt::{self, DpsRequestTopic, DpsUsername};
use dps_proto::hub_mqtt::{self, HubPublish, HubUsername};
use dps_proto::registration_id;
use dps_server::mqtt::framed::{First, Framed};
use dps_server::ws::{server_config, WsByteStream};
use rumqttc::mqttbytes::v4::Packet;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use crate::support::{block_on, chunk_of, ReplayStream, DEVICE};

/// The packet size limit `dps serve` applies with its default configuration.
fn max_packet() -> usize {
    dps_server::mqtt::max_packet_bytes(&dps_server::ServerConfig::defaults())
}

/// Reads packets as the server does until the stream ends or fails, checking each. With
/// `from_start`, the first packet goes through [`Framed::first`] — the raw-header checks of
/// `dps_proto::mqtt_header` and the CONNECT size cap an unauthenticated client gets — as on a
/// new connection; without, every packet goes through [`Framed::next`], as in a session.
async fn drain<S: AsyncRead + AsyncWrite + Unpin>(io: &mut Framed<S>, from_start: bool) {
    if from_start {
        match io.first(dps_server::mqtt::MAX_CONNECT_BYTES).await {
            Ok(Some(First::Connect(c))) => check_packet(&Packet::Connect(c)),
            // The server answers CONNACK 1 and closes; nothing more is read.
            Ok(Some(First::UnacceptableLevel(level))) => {
                assert_ne!(level, dps_proto::mqtt_header::PROTOCOL_LEVEL, "3.1.1 is acceptable");
                return;
            }
            Ok(None) | Err(_) => return,
        }
    }
    // A packet is at least 2 bytes, so this bounds the loop by the input size.
    while let Ok(Some(packet)) = io.next().await {
        check_packet(&packet);
    }
}

/// A packet the server read must encode, and its encoding must read back as the same packet
/// (what the codec accepts, it can also write: nothing is lost between them).
fn check_packet(packet: &Packet) {
    let mut buf = BytesMut::new();
    let Ok(written) = packet.write(&mut buf, usize::MAX) else {
        // rumqttc refuses to write some packets it reads (e.g. a SUBSCRIBE with no filters);
        // the server never echoes client packets, so only what it writes must encode.
        return;
    };
    assert_eq!(written, buf.len(), "write reports its length");
    let back =
        Packet::read(&mut buf, usize::MAX).unwrap_or_else(|e| panic!("re-encoded {packet:?} does not read: {e:?}"));
    assert_eq!(&back, packet, "packet changed in a write/read round trip");
    assert!(buf.is_empty(), "a re-encoded packet leaves no bytes over");
}

/// MQTT 3.1.1 frames as the server reads them from TLS: `dps_server::mqtt::framed::Framed` (the
/// rumqttc v4 codec under the server's packet size limit) over a stream delivering the input in
/// chunks. The first byte picks the chunk size.
pub fn mqtt_packet(data: &[u8]) {
    let (chunk, from_start, data) = chunk_of(data);
    block_on(async {
        let mut io = Framed::new(ReplayStream::new(data, chunk), max_packet());
        drain(&mut io, from_start).await;
    });
}

/// WebSocket frames from a client, as `/$iothub/websocket` reads them: tungstenite with the
/// server's WebSocket configuration, `dps_server::ws::WsByteStream` turning binary messages
/// into a byte stream, and the MQTT framing on top. Pings are answered into a sink.
pub fn websocket_frames(data: &[u8]) {
    let (chunk, from_start, data) = chunk_of(data);
    block_on(async {
        let stream = ReplayStream::new(data, chunk);
        let ws = WebSocketStream::from_raw_socket(stream, Role::Server, Some(server_config(max_packet()))).await;
        let mut io = Framed::new(WsByteStream::new(ws), max_packet());
        drain(&mut io, from_start).await;
    });
}

/// Whether `s` can be written into a username or topic unencoded and read back unchanged.
fn plain(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b))
}

/// CONNECT usernames, dispatched as the server does: DPS (`{scope}/registrations/{id}/...`)
/// first, then the hub (`{host}/{deviceId}/?...`). What parses, when made of plain characters,
/// must survive formatting with the device-side formatter and parsing again.
pub fn mqtt_username(data: &[u8]) {
    let Ok(username) = std::str::from_utf8(data) else {
        return;
    };
    match DpsUsername::parse(username) {
        Some(Ok(u)) => {
            assert!(!u.id_scope.is_empty() && !u.id_scope.contains('/'), "{u:?}");
            assert!(!u.registration_id.is_empty(), "{u:?}");
            if let Some(api) = u.api_version.as_deref() {
                if plain(&u.id_scope) && registration_id::validate(&u.registration_id).is_ok() && plain(api) {
                    let client = u.client_version.clone().unwrap_or_default();
                    let again = dps_mqtt::username(&u.id_scope, &u.registration_id, api, &client);
                    let back = DpsUsername::parse(&again)
                        .expect("a DPS username")
                        .expect("well formed");
                    assert_eq!(back.id_scope, u.id_scope);
                    assert_eq!(back.registration_id, u.registration_id);
                    assert_eq!(back.api_version, u.api_version);
                    assert_eq!(back.client_version.unwrap_or_default(), client);
                }
            }
        }
        Some(Err(_)) => {}
        None => {
            if let Some(u) = HubUsername::parse(username) {
                assert!(!u.host_name.is_empty() && !u.host_name.contains('/'), "{u:?}");
                if let Some(api) = u.api_version.as_deref() {
                    if plain(&u.host_name) && plain(&u.device_id) && plain(api) && u.module_id.is_none() {
                        let again = hub_mqtt::username(&u.host_name, &u.device_id, api);
                        assert_eq!(HubUsername::parse(&again).as_ref(), Some(&u), "{again}");
                    }
                }
            }
        }
    }
}

/// Topics: DPS request topics and hub publish topics and subscription filters as the server
/// parses them, and the response topics it formats from what it parsed, which must carry the
/// device's `$rid` back unchanged.
pub fn mqtt_topic(data: &[u8]) {
    let (status, data) = match data {
        [a, b, rest @ ..] => (u16::from_be_bytes([*a, *b]), rest),
        _ => return,
    };
    let Ok(topic) = std::str::from_utf8(data) else {
        return;
    };
    let retry = (status % 7 != 0).then_some(u32::from(status % 61));

    // DPS requests, and the response the server sends to each.
    if let Ok(req) = DpsRequestTopic::parse(topic) {
        let again = match &req {
            DpsRequestTopic::Register { rid } => dps_mqtt::register_topic(rid),
            DpsRequestTopic::OperationStatus { rid, operation_id } => {
                dps_mqtt::operation_status_topic(rid, operation_id)
            }
        };
        assert_eq!(DpsRequestTopic::parse(&again).as_ref(), Ok(&req), "{again}");
        let res = dps_mqtt::response_topic(status, req.rid(), retry);
        assert_eq!(
            dps_mqtt::parse_response_topic(&res),
            Some((status, req.rid().to_string(), retry)),
            "{res}"
        );
    }
    let _ = dps_mqtt::parse_response_topic(topic);

    // Hub publishes, for a fixed device and for the device the topic names.
    let named = topic
        .strip_prefix("devices/")
        .and_then(|r| r.split('/').next())
        .filter(|d| registration_id::validate(d).is_ok());
    for device in [DEVICE].into_iter().chain(named) {
        match HubPublish::parse(topic, device) {
            Ok(HubPublish::Telemetry { properties }) => {
                let again = hub_mqtt::telemetry_topic(device, &properties);
                assert_eq!(
                    HubPublish::parse(&again, device),
                    Ok(HubPublish::Telemetry { properties }),
                    "{again}"
                );
            }
            Ok(HubPublish::TwinGet { rid } | HubPublish::TwinReportedPatch { rid }) => {
                let version = retry.map(i64::from);
                let res = hub_mqtt::twin_response_topic(status, &rid, version);
                assert_eq!(
                    hub_mqtt::parse_twin_response_topic(&res),
                    Some((status, rid, version)),
                    "{res}"
                );
            }
            Ok(HubPublish::IssueCertificate { rid }) => {
                let res = hub_mqtt::credentials_response_topic(status, &rid);
                assert_eq!(
                    hub_mqtt::parse_credentials_response_topic(&res),
                    Some((status, rid)),
                    "{res}"
                );
            }
            Ok(HubPublish::MethodResponse { .. }) | Err(_) => {}
        }
    }
    let _ = hub_mqtt::parse_credentials_response_topic(topic);
    let _ = hub_mqtt::parse_twin_response_topic(topic);
    let _ = hub_mqtt::parse_desired_patch_topic(topic);

    // Subscription filters: whatever is allowed must feed the device something.
    if hub_mqtt::subscription_allowed(topic, DEVICE) {
        assert!(
            !hub_mqtt::feeds_of(topic).is_empty(),
            "allowed filter '{topic}' feeds nothing"
        );
    }
}

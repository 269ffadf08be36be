//! The lean MQTT client: DPS registration and hub sessions written straight onto a framed TLS
//! stream, with no event-loop task, channel or per-device TLS configuration.
//!
//! Why it exists: with the device SDK (rumqttc under `dps_client`) the generator spent more CPU
//! per registration than the server did (see BENCHMARKS.md), so on a shared 2-core machine it
//! measured itself as much as the server. What it must not do is make the server's job easier:
//! the packets, their order and the round trips are those of the SDK — CONNECT, wait for CONNACK,
//! SUBSCRIBE, wait for SUBACK, PUBLISH, wait for the answer, PUBACK it, DISCONNECT — so the
//! server sees the same traffic either way. `--client sdk` keeps the real client available.

use std::time::Duration;

use dps_proto::{dps_mqtt, hub_mqtt};
use dps_server::mqtt::framed::{FrameError, Framed};
use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, ConnectReturnCode, Login, Packet, PubAck, Publish, Subscribe, SubscribeFilter,
    SubscribeReasonCode,
};
use rumqttc::mqttbytes::QoS;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::devices::{interpret, Assignment, Device, Registering};

/// Largest packet the bench accepts: DPS and twin answers are a few KiB.
const MAX_PACKET: usize = 64 * 1024;
/// Keep-alive announced on DPS connections (the SDK's).
const DPS_KEEP_ALIVE: u16 = 60;

fn frame_err(what: &str, e: FrameError) -> String {
    match e {
        FrameError::Io(e) => format!("{what}: {}", e.kind()),
        _ => format!("{what}: protocol error"),
    }
}

/// Sends `p` and flushes.
async fn send<S: AsyncRead + AsyncWrite + Unpin>(io: &mut Framed<S>, p: &Packet, what: &str) -> Result<(), String> {
    io.send(p).await.map_err(|e| frame_err(what, e))
}

/// The next packet; the connection closing is an error naming what was awaited.
async fn next<S: AsyncRead + AsyncWrite + Unpin>(io: &mut Framed<S>, what: &str) -> Result<Packet, String> {
    match io.next().await {
        Ok(Some(p)) => Ok(p),
        Ok(None) => Err(format!("closed awaiting {what}")),
        Err(e) => Err(frame_err(&format!("awaiting {what}"), e)),
    }
}

/// CONNECT (MQTT 3.1.1, clean session) and wait for the CONNACK.
async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut Framed<S>,
    client_id: &str,
    username: String,
    password: String,
    keep_alive: u16,
) -> Result<(), String> {
    let mut c = Connect::new(client_id);
    c.keep_alive = keep_alive;
    c.login = Some(Login { username, password });
    send(io, &Packet::Connect(c), "CONNECT").await?;
    match next(io, "the CONNACK").await? {
        Packet::ConnAck(ConnAck {
            code: ConnectReturnCode::Success,
            ..
        }) => Ok(()),
        Packet::ConnAck(a) => Err(format!("connection refused: {:?}", a.code)),
        _ => Err("protocol: first packet is not CONNACK".into()),
    }
}

/// SUBSCRIBE to `filters` at QoS 1 and wait for a SUBACK granting all of them.
async fn subscribe<S: AsyncRead + AsyncWrite + Unpin>(io: &mut Framed<S>, filters: &[&str]) -> Result<(), String> {
    let mut s = Subscribe::new_many(
        filters
            .iter()
            .map(|f| SubscribeFilter::new(f.to_string(), QoS::AtLeastOnce)),
    );
    s.pkid = 1;
    send(io, &Packet::Subscribe(s), "SUBSCRIBE").await?;
    loop {
        if let Packet::SubAck(ack) = next(io, "the SUBACK").await? {
            if ack
                .return_codes
                .iter()
                .any(|c| matches!(c, SubscribeReasonCode::Failure))
            {
                return Err("subscription refused".into());
            }
            return Ok(());
        }
    }
}

/// The next PUBLISH, acknowledging it when it is QoS 1.
async fn next_publish<S: AsyncRead + AsyncWrite + Unpin>(io: &mut Framed<S>, what: &str) -> Result<Publish, String> {
    loop {
        if let Packet::Publish(p) = next(io, what).await? {
            if p.qos == QoS::AtLeastOnce {
                send(io, &Packet::PubAck(PubAck::new(p.pkid)), "PUBACK").await?;
            }
            return Ok(p);
        }
    }
}

/// Registers `dev` with DPS over MQTT: register, then poll at once (a dps server assigns
/// synchronously) and, while still assigning, as often as Azure's poll limit allows, retrying
/// throttled or failed requests as the SDK does.
pub async fn register(dev: &Device<'_>) -> Result<Assignment, String> {
    let ctx = dev.ctx;
    let tls = super::wire::tls(&ctx.dps_mqtt, dev.source(), dev.tls_config()?).await?;
    let mut io = Framed::new(tls, MAX_PACKET);
    let password = dev
        .sas(
            &format!("{}/registrations/{}", ctx.id_scope, dev.id),
            Some("registration"),
        )
        .unwrap_or_default();
    let username = dps_mqtt::username(&ctx.id_scope, &dev.id, dev.api_version(), dps_client::CLIENT_VERSION);
    connect(&mut io, &dev.id, username, password, DPS_KEEP_ALIVE).await?;
    subscribe(&mut io, &[dps_mqtt::RESPONSE_FILTER]).await?;
    let body = dev.registration_body();
    let mut state = Registering::default();
    let mut pkid = 1u16;
    let result = loop {
        pkid = pkid.wrapping_add(1).max(2);
        let rid = pkid.to_string();
        let (topic, payload) = match &state.operation {
            None => (dps_mqtt::register_topic(&rid), body.clone()),
            Some(op) => (dps_mqtt::operation_status_topic(&rid, op), Vec::new()),
        };
        let mut publish = Publish::new(topic, QoS::AtLeastOnce, payload);
        publish.pkid = pkid;
        send(&mut io, &Packet::Publish(publish), "PUBLISH").await?;
        let answer = loop {
            let p = next_publish(&mut io, "the DPS response").await?;
            match dps_mqtt::parse_response_topic(&p.topic) {
                Some((status, r, retry_after)) if r == rid => break interpret(status, retry_after, &p.payload),
                _ => continue,
            }
        };
        if let Some(done) = state.follow(answer).await {
            break done;
        }
    };
    let _ = io.send(&Packet::Disconnect).await;
    result
}

/// A TLS connection of `dev` to the hub it was assigned to.
pub type HubStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Opens the TLS connection of `dev` to its hub.
pub async fn hub_tls(dev: &Device<'_>, a: &Assignment) -> Result<HubStream, String> {
    let ep = dev.ctx.hub_endpoint(&a.hub).await?;
    super::wire::tls(&ep, dev.source(), dev.tls_config()?).await
}

/// Starts a hub session as the SDK's `HubClient` does: CONNECT with a SAS token (or the TLS
/// client certificate alone), then SUBSCRIBE to twin responses and desired-property patches.
///
/// The framer borrows the stream so that a held session can drop it afterwards (see [`idle`]).
pub async fn hub_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut Framed<S>,
    dev: &Device<'_>,
    a: &Assignment,
    keep_alive: u16,
) -> Result<(), String> {
    let password = dev
        .sas(&format!("{}/devices/{}", a.hub, a.device_id), None)
        .unwrap_or_default();
    let username = hub_mqtt::username(&a.hub, &a.device_id, dps_client::HUB_API_VERSION);
    connect(io, &a.device_id, username, password, keep_alive)
        .await
        .map_err(|e| format!("hub {e}"))?;
    subscribe(io, &["$iothub/twin/res/#", "$iothub/twin/PATCH/properties/desired/#"])
        .await
        .map_err(|e| format!("hub {e}"))
}

/// A framer over a borrowed hub stream.
pub fn framed<S: AsyncRead + AsyncWrite + Unpin>(stream: S) -> Framed<S> {
    Framed::new(stream, MAX_PACKET)
}

/// The rest of a zero-touch cycle: one telemetry message (QoS 1, until its PUBACK), one twin
/// read (until its response), DISCONNECT.
pub async fn telemetry_and_twin<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut Framed<S>,
    device_id: &str,
) -> Result<(), String> {
    let mut telemetry = Publish::new(
        hub_mqtt::telemetry_topic(device_id, &[]),
        QoS::AtLeastOnce,
        &b"{\"bench\":true}"[..],
    );
    telemetry.pkid = 2;
    send(io, &Packet::Publish(telemetry), "telemetry").await?;
    loop {
        match next(io, "the telemetry PUBACK").await? {
            Packet::PubAck(a) if a.pkid == 2 => break,
            Packet::Publish(p) if p.qos == QoS::AtLeastOnce => {
                send(io, &Packet::PubAck(PubAck::new(p.pkid)), "PUBACK").await?
            }
            _ => {}
        }
    }
    let twin = Publish::new(hub_mqtt::twin_get_topic("1"), QoS::AtMostOnce, Vec::new());
    send(io, &Packet::Publish(twin), "twin request").await?;
    loop {
        let p = next_publish(io, "the twin response").await?;
        if let Some((status, rid, _)) = hub_mqtt::parse_twin_response_topic(&p.topic) {
            if rid == "1" {
                if !(200..300).contains(&status) {
                    return Err(format!("twin: status {status}"));
                }
                break;
            }
        }
    }
    let _ = io.send(&Packet::Disconnect).await;
    Ok(())
}

/// PINGREQ, as two raw bytes: an idle session no longer needs the framing buffers.
const PINGREQ: [u8; 2] = [0xC0, 0x00];
/// DISCONNECT.
const DISCONNECT: [u8; 2] = [0xE0, 0x00];

/// Keeps an established hub session open until `stop` turns true: a PINGREQ every `keep_alive`
/// seconds, any bytes from the hub taken as PINGRESPs. Returns `false` when the hub closed the
/// session first.
///
/// Why raw bytes: a held connection is idle by definition, and dropping the framer frees its two
/// 4 KiB buffers, so the bench's own memory per connection stays small at 50,000 connections.
pub async fn idle<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    keep_alive: u16,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> bool {
    use tokio::io::AsyncReadExt;
    let period = Duration::from_secs(u64::from(keep_alive.max(1)));
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut buf = [0u8; 64];
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(stopped);
    let open = loop {
        tokio::select! {
            _ = &mut stopped => break true,
            _ = ping.tick() => {
                if stream.write_all(&PINGREQ).await.is_err() || stream.flush().await.is_err() {
                    break false;
                }
            }
            r = stream.read(&mut buf) => match r {
                Ok(0) | Err(_) => break false,
                Ok(_) => {}
            },
        }
    };
    if open {
        let _ = stream.write_all(&DISCONNECT).await;
        let _ = stream.shutdown().await;
    }
    open
}

//! `dps bench telemetry`: devices (the Rust device SDK over MQTT) send 256-byte telemetry
//! messages while one Event Hubs consumer reads every partition of the hub's Event
//! Hub-compatible endpoint; reports messages/s acknowledged (ingested) and delivered, and the
//! end-to-end latency from send to the consumer.
//!
//! Each body starts with the microseconds since the run started at its send, so the consumer
//! measures send-to-delivery with one clock (same process, monotonic).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dps_client::HubClient;
use dps_proto::event_hubs as eh;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::messaging::{ApplicationProperties, Body, Message, Properties, Source};
use fe2o3_amqp::types::primitives::{OrderedMap, Value};
use fe2o3_amqp::{Connection, Receiver, Sender, Session};
use parking_lot::Mutex;
use serde_amqp::described::Described;
use serde_amqp::descriptor::Descriptor;
use serde_json::{json, Value as Json};

use super::devices::{Ctx, Device};
use super::report::{percentile, round3};
use super::sdk;

/// Bytes of every message's body (the target size).
pub const MESSAGE_BYTES: usize = 256;

/// What `dps bench telemetry` does.
pub struct TelemetryPlan {
    /// Devices sending.
    pub devices: usize,
    /// How long they send.
    pub duration: Duration,
    /// Messages per second over all devices (none: as fast as acknowledgements come).
    pub rate: Option<f64>,
}

/// Where and how the consumer reads: the hub's policy (name, key) for its CBS token.
pub struct Consumer {
    /// Hub host name (the endpoint's `sb://` host).
    pub host: String,
    /// AMQP port.
    pub port: u16,
    /// Shared access policy name and key with `ServiceConnect`.
    pub policy: (String, String),
}

/// Runs the plan and fills `report`.
pub async fn run(ctx: Arc<Ctx>, plan: TelemetryPlan, consumer: Consumer, report: &mut Json) -> Result<(), String> {
    // Untimed: register and connect the devices, attach the consumer at the end of every
    // partition.
    let prepared = Instant::now();
    let mut clients = Vec::with_capacity(plan.devices);
    for i in 0..plan.devices {
        let dev = Device::new(&ctx, i);
        let (a, provider) = sdk::register(&dev).await?;
        clients.push(Arc::new(sdk::hub_connect(&dev, &a, provider, 60).await?));
    }
    let start = Instant::now();
    let received = Arc::new(Mutex::new(Vec::<u64>::new()));
    // The session stays open as long as its receivers read (dropping it would end them).
    let (mut conn, session, receivers) = attach_consumer(&ctx, &consumer).await?;
    report["preparationSeconds"] = json!(round3(prepared.elapsed().as_secs_f64()));

    // Each reader runs until aborted at the end (fe2o3's recv is not cancel-safe, so it is
    // never raced against a timer).
    let mut readers = Vec::new();
    for mut r in receivers {
        let received = received.clone();
        readers.push(tokio::spawn(async move {
            while let Ok(d) = r.recv::<Body<Value>>().await {
                let now = start.elapsed().as_micros() as u64;
                let _ = r.accept(&d).await;
                if let Some(sent) = sent_at(d.message()) {
                    received.lock().push(now.saturating_sub(sent));
                }
            }
        }));
    }

    // Timed: every device sends until the deadline, each at its share of the rate.
    let acked = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let ack_us = Arc::new(Mutex::new(Vec::<u64>::new()));
    let deadline = Instant::now() + plan.duration;
    let every = plan.rate.map(|r| Duration::from_secs_f64(plan.devices as f64 / r));
    let t0 = Instant::now();
    let mut senders = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        let (client, acked, failed, ack_us) = (client.clone(), acked.clone(), failed.clone(), ack_us.clone());
        senders.push(tokio::spawn(async move {
            let mut next = Instant::now() + every.map_or(Duration::ZERO, |e| e.mul_f64(i as f64 / 16.0));
            while Instant::now() < deadline {
                if let Some(e) = every {
                    tokio::time::sleep_until(next.into()).await;
                    next += e;
                }
                let sent = start.elapsed().as_micros() as u64;
                let mut body = vec![b' '; MESSAGE_BYTES];
                body[..8].copy_from_slice(&sent.to_le_bytes());
                let t = Instant::now();
                match send(&client, body).await {
                    Ok(()) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                        ack_us.lock().push(t.elapsed().as_micros() as u64);
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for s in senders {
        let _ = s.await;
    }
    let send_seconds = t0.elapsed().as_secs_f64();
    let acked = acked.load(Ordering::Relaxed);
    // Let the consumer catch up (at most 10 s).
    let drain = Instant::now();
    while (received.lock().len() as u64) < acked && drain.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered_seconds = t0.elapsed().as_secs_f64();
    for r in readers {
        r.abort();
    }
    drop(session);
    let _ = conn.close().await;
    for c in clients {
        if let Ok(c) = Arc::try_unwrap(c) {
            let _ = c.disconnect().await;
        }
    }

    let mut e2e = received.lock().clone();
    e2e.sort_unstable();
    let mut acks = ack_us.lock().clone();
    acks.sort_unstable();
    let ms = |v: &[u64]| {
        json!({
            "p50": percentile(v, 50.0), "p90": percentile(v, 90.0), "p99": percentile(v, 99.0),
            "max": v.last().map_or(0.0, |m| *m as f64 / 1000.0),
        })
    };
    report["devices"] = json!(plan.devices);
    report["succeeded"] = json!(acked);
    report["failed"] = json!(failed.load(Ordering::Relaxed));
    report["elapsedSeconds"] = json!(round3(send_seconds));
    report["throughputPerSecond"] = json!(round3(acked as f64 / send_seconds.max(1e-9)));
    report["latencyMs"] = ms(&acks);
    report["telemetry"] = json!({
        "messageBytes": MESSAGE_BYTES,
        "ingestedPerSecond": round3(acked as f64 / send_seconds.max(1e-9)),
        "delivered": e2e.len(),
        "deliveredPerSecond": round3(e2e.len() as f64 / delivered_seconds.max(1e-9)),
        "endToEndMs": ms(&e2e),
        "ackMs": ms(&acks),
    });
    Ok(())
}

async fn send(client: &HubClient, body: Vec<u8>) -> Result<(), String> {
    client.send_event(body, &[]).await.map_err(|e| e.to_string())
}

/// The send time a bench message carries (its first 8 bytes).
fn sent_at(m: &Message<Body<Value>>) -> Option<u64> {
    let Body::Data(sections) = &m.body else { return None };
    let first = sections.first()?;
    let bytes: [u8; 8] = first.0.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// Opens the consumer's connection: a CBS token for the event hub, then one receiver per
/// partition from its end (`@latest`).
async fn attach_consumer(
    ctx: &Ctx,
    c: &Consumer,
) -> Result<
    (
        fe2o3_amqp::connection::ConnectionHandle<()>,
        SessionHandle<()>,
        Vec<Receiver>,
    ),
    String,
> {
    let tcp = tokio::net::TcpStream::connect((c.host.as_str(), c.port))
        .await
        .map_err(|e| fail("connect", e))?;
    let name = rustls_pki_types::ServerName::try_from(c.host.clone()).map_err(|e| fail("host", e))?;
    let tls = tokio_rustls::TlsConnector::from(ctx.trust.anonymous())
        .connect(name, tcp)
        .await
        .map_err(|e| fail("TLS", e))?;
    let mut conn = Connection::builder()
        .container_id("dps-bench-consumer")
        .hostname(c.host.as_str())
        .sasl_profile(SaslProfile::Anonymous)
        .open_with_stream(tls)
        .await
        .map_err(|e| fail("open", e))?;
    let mut session = Session::begin(&mut conn).await.map_err(|e| fail("session", e))?;
    let entity = dps_server::amqp::event_hub::event_hub_name(&c.host);
    put_token(&mut session, c, &entity).await?;
    let partitions = partition_ids(&mut session, &entity).await?;
    let mut receivers = Vec::new();
    for p in partitions {
        let mut filter = OrderedMap::new();
        filter.insert(
            eh::SELECTOR_FILTER.into(),
            Value::Described(Box::new(Described {
                descriptor: Descriptor::Code(eh::SELECTOR_FILTER_CODE),
                value: Value::String("amqp.annotation.x-opt-offset > '@latest'".into()),
            })),
        );
        let address = format!("{entity}/ConsumerGroups/{}/Partitions/{p}", eh::DEFAULT_CONSUMER_GROUP);
        let r = Receiver::builder()
            .name(format!("bench-{p}"))
            .source(Source::builder().address(address).filter(filter).build())
            .target("dps-bench")
            .credit_mode(fe2o3_amqp::link::receiver::CreditMode::Auto(1000))
            .attach(&mut session)
            .await
            .map_err(|e| fail("attach", e))?;
        receivers.push(r);
    }
    Ok((conn, session, receivers))
}

fn fail(what: &str, e: impl std::fmt::Display) -> String {
    format!("consumer {what}: {e}")
}

/// A `$management` request; the reply (from the node's own receiver).
async fn management_request(
    session: &mut SessionHandle<()>,
    app: ApplicationProperties,
) -> Result<Message<Body<Value>>, String> {
    let node = eh::MANAGEMENT_NODE;
    let mut tx = Sender::attach(session, format!("{node}-out"), node)
        .await
        .map_err(|e| e.to_string())?;
    let mut rx = Receiver::attach(session, format!("{node}-in"), node)
        .await
        .map_err(|e| e.to_string())?;
    let msg = Message::builder()
        .properties(
            Properties::builder()
                .message_id(String::from("1"))
                .reply_to(format!("{node}-in"))
                .build(),
        )
        .application_properties(app)
        .value(Value::Null)
        .build();
    tx.send(msg).await.map_err(|e| e.to_string())?;
    let reply = tokio::time::timeout(Duration::from_secs(10), rx.recv::<Body<Value>>())
        .await
        .map_err(|_| format!("no answer from {node}"))?
        .map_err(|e| e.to_string())?;
    let _ = rx.accept(&reply).await;
    let _ = tx.close().await;
    let _ = rx.close().await;
    Ok(reply.into_message())
}

async fn put_token(session: &mut SessionHandle<()>, c: &Consumer, entity: &str) -> Result<(), String> {
    let audience = format!("sb://{}/{entity}", c.host);
    let expiry = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs())
        + 3600;
    // Event Hubs tokens are signed with the key's text.
    let key = c.policy.1.clone();
    let token = dps_proto::sas::build_token_with(&audience, expiry, Some(&c.policy.0), |m| {
        Ok::<_, std::convert::Infallible>(dps_proto::sas::hmac_sha256(key.as_bytes(), m))
    })
    .map_err(|e| e.to_string())?;
    dps_client::cbs_put_token(session, &audience, token)
        .await
        .map_err(|e| format!("consumer token: {e}"))
}

async fn partition_ids(session: &mut SessionHandle<()>, entity: &str) -> Result<Vec<String>, String> {
    let app = ApplicationProperties::builder()
        .insert(eh::MGMT_OPERATION, eh::MGMT_READ)
        .insert(eh::MGMT_TYPE, eh::MGMT_TYPE_EVENTHUB)
        .insert(eh::MGMT_NAME, entity)
        .build();
    let reply = management_request(session, app).await?;
    let Body::Value(v) = reply.body else {
        return Err("the event hub's properties are not a map".into());
    };
    let Value::Map(m) = v.0 else {
        return Err("the event hub's properties are not a map".into());
    };
    match m.get(&Value::String("partition_ids".into())) {
        Some(Value::Array(a)) => Ok(a
            .0
            .iter()
            .filter_map(|v| match v {
                Value::String(s) => Some(s.clone()),
                _ => None,
            })
            .collect()),
        other => Err(format!("no partition ids: {other:?}")),
    }
}

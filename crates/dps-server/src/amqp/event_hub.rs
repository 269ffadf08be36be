//! The embedded hub's Event Hub-compatible endpoint over AMQP: what the official Event Hubs
//! consumers (`@azure/event-hubs`, `azure-eventhub`) need to read device telemetry, on the same
//! listener as the devices (newer-surfaces.md "The hub over AMQP"; wire facts in
//! `dps_proto::event_hubs`).
//!
//! - CBS put-token with an audience `sb://{hub host}/{event hub}[/…]`, signed by a hub policy
//!   with `ServiceConnect`: the connection may then use what the audience covers (Node puts one
//!   per link, Python one for the consumer group).
//! - `$management`: `READ` of the event hub (name, creation time, partition ids) and of a
//!   partition (first and last sequence numbers, last offset and enqueued time), answered on the
//!   client's `$management` receiver.
//! - `{event hub}/ConsumerGroups/{group}/Partitions/{id}`: a receiver starting where its
//!   selector filter says; events go out as the client grants credit, and wait for new
//!   telemetry when it has caught up.

use std::collections::HashMap;

use bytes::Bytes;
use dps_hub::TelemetryMessage;
use dps_proto::amqp_conn::{DeliveryRef, LinkId};
use dps_proto::event_hubs::{self as eh, EventPosition, PartitionAddress};
use fe2o3_amqp::types::definitions::AmqpError;
use fe2o3_amqp::types::messaging::{ApplicationProperties, Message, MessageAnnotations, Properties};
use fe2o3_amqp::types::primitives::{Array, Binary, OrderedMap, SimpleValue, Symbol, Timestamp, Value};
use tokio::sync::watch;

use super::links::{self, Refusal};
use super::message::{self, Incoming};
use super::{Conn, Route};

/// The right a token's policy needs to read events.
const SERVICE_CONNECT: &str = "ServiceConnect";

/// Most events read from the hub for one link at a time.
const READ_BATCH: u32 = 64;

/// Most token grants a connection keeps (Node puts a token with every `$management` request
/// and per link): past it the oldest goes.
const MAX_GRANTS: usize = 64;

/// Per-connection Event Hubs state.
#[derive(Default)]
pub(crate) struct EventHubState {
    /// What the CBS tokens put on this connection cover: the audience's path after the host
    /// (lower case, `/{event hub}/…`) and when it expires (Unix seconds).
    grants: Vec<(String, u64)>,
    /// Partition receivers, by link.
    readers: HashMap<LinkId, Reader>,
    /// Changes when telemetry arrives in any partition (one signal for all the readers: they are
    /// few per connection, and a pump of one that has nothing new costs a lock).
    arrivals: Option<watch::Receiver<u64>>,
}

/// A consumer's partition link.
struct Reader {
    partition: u32,
    /// The next partition sequence number to send.
    next: u64,
    /// Caught up with room for more: waits for arrivals (without room, the client's next credit
    /// wakes it instead).
    waiting: bool,
}

impl EventHubState {
    /// Ready when telemetry arrived while a reader was waiting for it: the connection then
    /// pumps its waiting readers ([`pump_waiting`]). Never ready without one.
    pub(super) async fn next_arrival(&mut self) {
        match &mut self.arrivals {
            Some(rx) if self.readers.values().any(|r| r.waiting) => {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            _ => std::future::pending().await,
        }
    }

    /// Keeps `grant`, in place of one for the same path; expired grants go, and at most
    /// [`MAX_GRANTS`] stay.
    fn keep(&mut self, grant: (String, u64), now: u64) {
        self.grants.retain(|(path, until)| *path != grant.0 && *until > now);
        if self.grants.len() >= MAX_GRANTS {
            self.grants.remove(0);
        }
        self.grants.push(grant);
    }

    /// Whether a put token covers `resource` (`/{event hub}/…`) now.
    fn covers(&self, resource: &str, now: u64) -> bool {
        let resource = resource.to_ascii_lowercase();
        self.grants.iter().any(|(path, until)| {
            *until > now
                && (resource == *path
                    || (resource.starts_with(path.as_str()) && resource.as_bytes().get(path.len()) == Some(&b'/')))
        })
    }
}

/// The event hub's name: the hub's first DNS label (Azure names the built-in endpoint after the
/// hub), or `dps-hub` when the hub is named by an IP address.
pub fn event_hub_name(hub_host: &str) -> String {
    let label = hub_host.split('.').next().unwrap_or_default();
    if hub_host.parse::<std::net::IpAddr>().is_ok() || label.is_empty() {
        "dps-hub".into()
    } else {
        label.to_ascii_lowercase()
    }
}

/// Whether a put-token's token is for the event hub (an `sb://` or `amqps://` audience).
pub(super) fn is_event_hub_token(token: &str) -> bool {
    dps_proto::sas::SasToken::parse(token).is_ok_and(|t| {
        let sr = percent_encoding::percent_decode_str(&t.sr_raw)
            .decode_utf8_lossy()
            .to_ascii_lowercase();
        sr.starts_with("sb://") || sr.starts_with("amqps://")
    })
}

/// Judges an event hub token: signed by a hub policy with `ServiceConnect`, for one of this
/// hub's names and its event hub; kept as a grant for what its audience covers.
pub(super) fn put_token(conn: &mut Conn, token: &str) -> (i32, String) {
    match grant_of(conn, token) {
        Ok(grant) => {
            let now = dps_core::Engine::unix_time(conn.services.clock.now());
            conn.hub.event_hub.keep(grant, now);
            (200, "OK".into())
        }
        Err(why) => (401, why),
    }
}

/// The grant a token gives (the path under the event hub it covers, and its expiry), binding
/// the connection to the token's hub.
fn grant_of(conn: &mut Conn, token: &str) -> Result<(String, u64), String> {
    let embedded = conn.embedded_for_token(token)?;
    let parsed = dps_proto::sas::SasToken::parse(token).map_err(|e| e.to_string())?;
    let full = parsed.audience();
    let audience = crate::hubs::without_scheme(&full);
    let host = embedded.host_name().to_ascii_lowercase();
    let entity = event_hub_name(&host);
    let path = embedded
        .hub
        .names()
        .find_map(|name| strip_prefix_ignore_case(audience, name))
        .filter(|p| {
            let p = p.strip_prefix('/').unwrap_or_default();
            p == entity || p.starts_with(&format!("{entity}/"))
        })
        .ok_or_else(|| {
            format!("the token's audience {audience:?} is not this hub's event hub (sb://{host}/{entity})")
        })?;
    let now = dps_core::Engine::unix_time(conn.services.clock.now());
    parsed.check_expiry(now).map_err(|e| e.to_string())?;
    // Event Hubs tokens are signed with the key's text itself (its UTF-8 bytes), not with the
    // key's base64-decoded bytes as IoT Hub's are: both SDKs sign that way.
    let name = parsed
        .key_name
        .as_deref()
        .ok_or("the token names no shared access policy (skn)")?;
    let policy = embedded
        .auth
        .signed_by(name, |key| parsed.verify_signature_raw(key.as_bytes()))
        .ok_or_else(|| format!("the token is not signed by the hub's policy '{name}'"))?;
    if !policy.has_right(SERVICE_CONNECT) {
        return Err(format!("policy '{}' lacks {SERVICE_CONNECT}", policy.key_name));
    }
    let grant = (path.to_string(), parsed.expiry);
    conn.bind_hub(embedded);
    Ok(grant)
}

/// `text` without `prefix` (compared without case), if it starts with it.
fn strip_prefix_ignore_case<'t>(text: &'t str, prefix: &str) -> Option<&'t str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &text[prefix.len()..])
}

/// What a link to a `$management` or partition node is for, if this connection may attach it.
pub(super) async fn attach(
    conn: &mut Conn,
    direction: dps_proto::amqp_conn::Direction,
    address: &str,
    selector: Option<&str>,
) -> Option<Result<Route, Refusal>> {
    use dps_proto::amqp_conn::Direction;
    if address.eq_ignore_ascii_case(eh::MANAGEMENT_NODE) {
        // Authorized per request: Node sends a token with each one.
        return Some(Ok(match direction {
            Direction::FromPeer => Route::EventHubManagement,
            Direction::ToPeer => Route::Out {
                address: eh::MANAGEMENT_NODE.into(),
            },
        }));
    }
    let node = PartitionAddress::parse(address)?;
    Some(attach_partition(conn, direction, &node, selector).await)
}

async fn attach_partition(
    conn: &mut Conn,
    direction: dps_proto::amqp_conn::Direction,
    node: &PartitionAddress,
    selector: Option<&str>,
) -> Result<Route, Refusal> {
    let embedded = conn.embedded();
    let host = embedded.host_name();
    let entity = event_hub_name(host);
    let not_found = |what: &str| {
        Refusal::NotFound(format!(
            "The messaging entity 'sb://{host}/{}/ConsumerGroups/{}/Partitions/{}' could not be found: {what}",
            node.entity, node.consumer_group, node.partition
        ))
    };
    if direction != dps_proto::amqp_conn::Direction::ToPeer {
        return Err(Refusal::NotFound(
            "a partition of the built-in endpoint is read, not written".into(),
        ));
    }
    if !node.entity.eq_ignore_ascii_case(&entity) {
        return Err(not_found(&format!("this hub's event hub is '{entity}'")));
    }
    if embedded.hub.consumer_group(&node.consumer_group).is_none() {
        return Err(not_found(&format!("no consumer group '{}'", node.consumer_group)));
    }
    let count = embedded.hub.partition_count();
    let partition = node
        .partition
        .parse::<u32>()
        .ok()
        .filter(|p| *p < count)
        .ok_or_else(|| {
            Refusal::Other(links::custom_error(
                "com.microsoft:argument-out-of-range",
                format!(
                    "partition '{}' does not exist: the partitions are 0 to {}",
                    node.partition,
                    count - 1
                ),
            ))
        })?;
    let now = dps_core::Engine::unix_time(conn.services.clock.now());
    let resource = format!(
        "/{entity}/consumergroups/{}/partitions/{partition}",
        node.consumer_group.to_ascii_lowercase()
    );
    if !conn.hub.event_hub.covers(&resource, now) {
        return Err(Refusal::Unauthorized(format!(
            "put a token for sb://{host}{resource} (or a prefix of it) on $cbs first, signed by a policy with {SERVICE_CONNECT}"
        )));
    }
    let position = match selector {
        Some(s) => EventPosition::parse_selector(s)
            .map_err(|why| Refusal::Other(links::condition_error(AmqpError::NotAllowed, why)))?,
        None => EventPosition::EARLIEST,
    };
    let next = embedded
        .hub
        .partition_start(partition, position)
        .await
        .map_err(|e| {
            Refusal::Other(links::condition_error(
                AmqpError::InternalError,
                format!("the hub's store: {e}"),
            ))
        })?
        .unwrap_or_default();
    tracing::debug!(partition, next, ?position, group = %node.consumer_group, "event hub consumer attached");
    Ok(Route::EventHubPartition(partition, next))
}

/// A partition link was attached: remember its reader (it starts sending on the client's credit).
pub(super) async fn attached(conn: &mut Conn, link: LinkId, partition: u32, next: u64) {
    if conn.hub.event_hub.arrivals.is_none() {
        conn.hub.event_hub.arrivals = Some(conn.embedded().hub.telemetry_arrivals());
    }
    let state = &mut conn.hub.event_hub;
    state.readers.insert(
        link,
        Reader {
            partition,
            next,
            waiting: false,
        },
    );
    pump(conn, link).await;
}

/// Telemetry arrived: every reader waiting for it reads on.
pub(super) async fn pump_waiting(conn: &mut Conn) {
    if let Some(rx) = conn.hub.event_hub.arrivals.as_mut() {
        // Seen now: an arrival after the reads below wakes the readers again.
        rx.borrow_and_update();
    }
    let waiting: Vec<LinkId> = conn
        .hub
        .event_hub
        .readers
        .iter()
        .filter(|(_, r)| r.waiting)
        .map(|(link, _)| *link)
        .collect();
    for link in waiting {
        pump(conn, link).await;
    }
}

/// The link is gone.
pub(super) fn detached(conn: &mut Conn, link: LinkId) {
    conn.hub.event_hub.readers.remove(&link);
}

/// Sends the partition's events from where the reader is, as far as the client's credit goes;
/// a reader that caught up with room left waits for arrivals.
pub(super) async fn pump(conn: &mut Conn, link: LinkId) {
    let Some(r) = conn.hub.event_hub.readers.get(&link) else {
        return;
    };
    let (partition, mut next) = (r.partition, r.next);
    let hub = conn.embedded().hub.clone();
    let waiting = loop {
        let room = conn.amqp.room(link);
        if room == 0 {
            break false;
        }
        let (events, after) = match hub.read_partition(partition, next, room.min(READ_BATCH) as usize).await {
            Ok(read) => read,
            Err(e) => {
                // Tried again on the next arrival or credit.
                tracing::warn!(error = %e, partition, "events not read from the hub's store");
                break true;
            }
        };
        if events.is_empty() {
            break true;
        }
        for e in &events {
            if let Err(err) = conn.amqp.send(link, event_message(e), None) {
                // Within the room counted above a send only fails on a link going away; the
                // reader stays at the event not sent, not past the batch.
                tracing::debug!(error = %err, "event not sent");
                break;
            }
            next = e.partition_sequence + 1;
        }
        if next != after {
            break false;
        }
    };
    if let Some(r) = conn.hub.event_hub.readers.get_mut(&link) {
        r.next = next;
        r.waiting = waiting;
    }
}

/// A telemetry message as the built-in endpoint delivers it: the Event Hubs annotations, IoT
/// Hub's system properties as message annotations (where `event.systemProperties` finds them),
/// the device's message properties, application properties and body.
fn event_message(m: &TelemetryMessage) -> Bytes {
    let mut annotations = MessageAnnotations::builder()
        .insert(
            Symbol::from(eh::SEQUENCE_NUMBER),
            Value::Long(m.partition_sequence as i64),
        )
        .insert(Symbol::from(eh::OFFSET), Value::String(m.sequence_number.to_string()))
        .insert(
            Symbol::from(eh::ENQUEUED_TIME),
            Value::Timestamp(Timestamp::from_milliseconds(m.enqueued_time.timestamp_millis())),
        );
    let mut p = Properties::builder();
    for (k, v) in &m.system_properties {
        match k.as_str() {
            "message-id" => p = p.message_id(v.clone()),
            "correlation-id" => p = p.correlation_id(v.clone()),
            "user-id" => p = p.user_id(Binary::from(v.as_bytes().to_vec())),
            "content-type" => p = p.content_type(Symbol::from(v.as_str())),
            "content-encoding" => p = p.content_encoding(Symbol::from(v.as_str())),
            "iothub-enqueuedtime" => {
                annotations = annotations.insert(
                    Symbol::from(k.as_str()),
                    Value::Timestamp(Timestamp::from_milliseconds(m.enqueued_time.timestamp_millis())),
                );
            }
            _ => annotations = annotations.insert(Symbol::from(k.as_str()), Value::String(v.clone())),
        }
    }
    let mut app = ApplicationProperties::builder();
    for (k, v) in &m.properties {
        app = app.insert(k.as_str(), SimpleValue::String(v.clone()));
    }
    let msg = Message::builder()
        .message_annotations(annotations.build())
        .properties(p.build())
        .application_properties(app.build())
        .data(Binary::from(m.body.to_vec()))
        .build();
    message::encode(msg)
}

/// A `$management` request: `READ` of the event hub or of a partition, answered on the client's
/// `$management` receiver with `status-code` and a map body.
pub(super) async fn management(conn: &mut Conn, delivery: Option<DeliveryRef>, msg: &Incoming) {
    conn.settle(delivery, Ok(()));
    let (status, description, body) = match read(conn, msg).await {
        Ok(body) => (200, "OK".to_string(), body),
        Err((status, why)) => (status, why, Value::Null),
    };
    let reply = message::status_reply(msg, status, description, body);
    if !conn.send_to(eh::MANAGEMENT_NODE, reply) {
        tracing::info!("$management reply dropped: the client attached no receiver link to $management");
    }
}

/// Judges and answers one `READ`: the map body, or an HTTP-like status and why.
async fn read(conn: &mut Conn, msg: &Incoming) -> Result<Value, (i32, String)> {
    let get = |name: &str| message::app_property_str(msg, name);
    if get(eh::MGMT_OPERATION).as_deref() != Some(eh::MGMT_READ) {
        return Err((
            400,
            format!("unsupported operation {:?}: only READ is", get(eh::MGMT_OPERATION)),
        ));
    }
    let host = conn.embedded().host_name().to_string();
    let entity = event_hub_name(&host);
    let name = get(eh::MGMT_NAME).unwrap_or_default();
    if !name.eq_ignore_ascii_case(&entity) {
        return Err((
            404,
            format!("The messaging entity 'sb://{host}/{name}' could not be found: this hub's event hub is '{entity}'"),
        ));
    }
    // Node sends a token with each request; Python put one on $cbs before.
    let now = dps_core::Engine::unix_time(conn.services.clock.now());
    if let Some(token) = get("security_token") {
        if let Ok(grant) = grant_of(conn, &token) {
            conn.hub.event_hub.keep(grant, now);
        }
    }
    if !conn.hub.event_hub.covers(&format!("/{entity}/$management"), now) {
        return Err((
            401,
            format!("put a token for sb://{host}/{entity} on $cbs first, signed by a policy with {SERVICE_CONNECT}"),
        ));
    }
    let hub = &conn.embedded().hub.clone();
    let text = |s: &str| Value::String(s.to_string());
    let map = |entries: Vec<(&str, Value)>| {
        Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (text(k), v))
                .collect::<OrderedMap<_, _>>(),
        )
    };
    match get(eh::MGMT_TYPE).as_deref() {
        Some(eh::MGMT_TYPE_EVENTHUB) => {
            let ids: Vec<Value> = (0..hub.partition_count()).map(|p| text(&p.to_string())).collect();
            Ok(map(vec![
                ("name", text(&entity)),
                ("type", text(eh::MGMT_TYPE_EVENTHUB)),
                // The hub keeps no creation time; when it was asked is as good to every client.
                (
                    "created_at",
                    Value::Timestamp(Timestamp::from_milliseconds(
                        conn.services.clock.now().timestamp_millis(),
                    )),
                ),
                ("partition_count", Value::Int(hub.partition_count() as i32)),
                ("partition_ids", Value::Array(Array::from(ids))),
            ]))
        }
        Some(eh::MGMT_TYPE_PARTITION) => {
            let id = get(eh::MGMT_PARTITION).unwrap_or_default();
            let missing = || (404, format!("partition '{id}' does not exist in event hub '{entity}'"));
            let partition = id.parse::<u32>().map_err(|_| missing())?;
            let info = hub
                .partition_info(partition)
                .await
                .map_err(|e| (500, format!("the hub's store: {e}")))?
                .ok_or_else(missing)?;
            let ms = |t: Option<chrono::DateTime<chrono::Utc>>| {
                Value::Timestamp(Timestamp::from_milliseconds(t.map_or(0, |t| t.timestamp_millis())))
            };
            Ok(map(vec![
                ("name", text(&entity)),
                ("type", text(eh::MGMT_TYPE_PARTITION)),
                ("partition", text(&id)),
                ("begin_sequence_number", Value::Long(info.begin_sequence_number as i64)),
                (
                    "last_enqueued_sequence_number",
                    Value::Long(info.last_sequence_number.map_or(-1, |n| n as i64)),
                ),
                (
                    "last_enqueued_offset",
                    text(&info.last_offset.map_or("-1".to_string(), |o| o.to_string())),
                ),
                ("last_enqueued_time_utc", ms(info.last_enqueued_time)),
                ("is_partition_empty", Value::Bool(info.is_empty)),
            ]))
        }
        other => Err((400, format!("unsupported type {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_cover_by_path_prefix_and_stay_bounded() {
        let mut s = EventHubState::default();
        s.keep(("/hub/consumergroups/$default".into(), 100), 10);
        assert!(s.covers("/hub/ConsumerGroups/$Default/Partitions/0", 50));
        assert!(!s.covers("/hub/consumergroups/other/partitions/0", 50));
        assert!(!s.covers("/hub/consumergroups/$defaultx", 50), "by whole segments");
        assert!(!s.covers("/hub/consumergroups/$default/partitions/0", 100), "expired");
        for i in 0..200 {
            s.keep((format!("/hub/p{i}"), 1_000), 10);
        }
        assert_eq!(s.grants.len(), MAX_GRANTS);
        s.keep(("/hub/p199".into(), 2_000), 10);
        assert_eq!(
            s.grants.iter().filter(|(p, _)| p == "/hub/p199").count(),
            1,
            "replaced, not added"
        );
        assert_eq!(event_hub_name("myhub.azure-devices.net"), "myhub");
        assert_eq!(event_hub_name("127.0.0.1"), "dps-hub");
    }
}

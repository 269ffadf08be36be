//! The embedded hub's device endpoint over AMQP (newer-surfaces.md "The hub over AMQP"; Node
//! `azure-iot-device-amqp`, `azure-iot-amqp-base`):
//!
//! - `$cbs`: claims-based security. A device (or several, multiplexed) puts a SAS token for
//!   `{host}/devices/{id}`; the reply carries `status-code` 200 or 401. The token is checked by
//!   the hub exactly as an MQTT password is. X.509 devices skip CBS: the TLS certificate names
//!   them.
//! - `/devices/{id}/messages/events`: telemetry, with the message's properties.
//! - `/devices/{id}/messages/devicebound`: cloud-to-device messages; accepted = complete,
//!   rejected = reject, released/modified = abandon (redelivered).
//! - `/devices/{id}/methods/devicebound`: direct-method calls (`IoThub-methodname`, the request
//!   id as correlation id) out, answers (`IoThub-status`) in.
//! - `/devices/{id}/twin`: `operation` GET / PATCH `/properties/reported` / PUT and DELETE
//!   `/notifications/twin/properties/desired` in; answers with `status` and `version` message
//!   annotations and desired-property patches (no correlation id) out.
//!
//! A link may only be attached for a device this connection authenticated (the same rule MQTT
//! applies: a device publishes and subscribes only under its own id). Everything the hub decides
//! is `dps_hub::DeviceSession`'s, as for MQTT; this module only frames it.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use dps_hub::{DeviceIdentity, DeviceSession, Outbound, OutboundKind};
use dps_proto::hub_amqp::{self as wire, HubNode};
use dps_proto::hub_mqtt::{Feed, HubPublish, HubUsername};
use fe2o3_amqp::acceptor::{LinkEndpoint, ListenerSessionHandle};
use fe2o3_amqp::link::delivery::DeliveryFut;
use fe2o3_amqp::link::SendError;
use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Body, Message, MessageAnnotations, MessageId, Outcome, Properties,
};
use fe2o3_amqp::types::performatives::Attach;
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Symbol, Value};
use fe2o3_amqp::{Delivery, Receiver};
use parking_lot::Mutex;
use tokio::sync::Mutex as AsyncMutex;
use tokio::task::JoinSet;

use super::links::{self, Refusal, ReplyLinks, SharedSender};
use super::message::{self, Incoming};
use super::Conn;

/// How long a message to a device may wait for link credit.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Per-connection hub state.
#[derive(Default)]
pub(crate) struct HubState {
    /// SAS tokens put on `$cbs`, by device id, with their expiry (Unix seconds).
    tokens: Mutex<HashMap<String, (String, u64)>>,
    /// The device sessions open on this connection, by device id.
    devices: AsyncMutex<HashMap<String, Arc<HubDevice>>>,
}

impl HubState {
    /// When the CBS token `device_id`'s links were opened with expired, if it has (IoT Hub
    /// closes a device's links then, unless it put a fresh token first). X.509 devices put none.
    fn token_expired(&self, device_id: &str, now_unix: u64) -> Option<u64> {
        self.tokens
            .lock()
            .get(device_id)
            .map(|(_, expiry)| *expiry)
            .filter(|expiry| *expiry <= now_unix)
    }

    /// Ends every device session of the connection (it is closing).
    pub(crate) async fn close(&self) {
        for (_, device) in self.devices.lock().await.drain() {
            device.pump.abort();
        }
    }
}

/// A device's session on this connection; hub-initiated messages go out on the connection's
/// links to the device's nodes.
struct HubDevice {
    session: DeviceSession,
    replies: Arc<ReplyLinks>,
    /// The task relaying the session's outbound messages to the links.
    pump: tokio::task::AbortHandle,
}

impl HubDevice {
    /// The link to the device's `node`, waiting briefly for the client to attach it.
    async fn link(&self, node: HubNode) -> Option<SharedSender> {
        self.replies.wait(&node_address(&node)).await
    }

    fn node(&self, make: fn(String) -> HubNode) -> HubNode {
        make(self.session.identity().client_device_id().to_string())
    }
}

/// A device node's address, as the link map files it.
fn node_address(node: &HubNode) -> String {
    match node {
        HubNode::Cbs => wire::CBS_NODE.to_string(),
        HubNode::Telemetry { device_id } => format!("/devices/{device_id}/messages/events"),
        HubNode::C2d { device_id } => format!("/devices/{device_id}/messages/devicebound"),
        HubNode::Methods { device_id } => format!("/devices/{device_id}/methods/devicebound"),
        HubNode::Twin { device_id } => format!("/devices/{device_id}/twin"),
        HubNode::Module { device_id, module_id } => format!("/devices/{device_id}/modules/{module_id}"),
    }
}

/// Attaches a link to a hub node, if this connection may.
pub(super) async fn attach(
    session: &mut ListenerSessionHandle,
    attach: Attach,
    node: HubNode,
    conn: &Arc<Conn>,
    tasks: &mut JoinSet<()>,
) {
    if let HubNode::Module { module_id, .. } = &node {
        let why = Refusal::NotFound(format!("module identities are not served (module '{module_id}')"));
        return links::refuse(session, attach, why).await;
    }
    let device = match &node {
        HubNode::Cbs => None,
        other => {
            let id = other.device_id().unwrap_or_default();
            match device(conn, id).await {
                Ok(d) => Some(d),
                Err(why) => return links::refuse(session, attach, why).await,
            }
        }
    };
    let acceptor = links::acceptor(conn.services.config.max_message_bytes);
    let endpoint = match acceptor.accept_incoming_attach(attach, session).await {
        Ok(e) => e,
        Err(e) => return tracing::debug!(error = %e, "hub link did not attach"),
    };
    let address = node_address(&node);
    match (node, endpoint, device) {
        (HubNode::Cbs, LinkEndpoint::Sender(s), _) => conn.replies.insert(&address, s),
        (HubNode::Cbs, LinkEndpoint::Receiver(r), _) => {
            tasks.spawn(serve_cbs(r, conn.clone()));
        }
        (HubNode::Telemetry { .. }, LinkEndpoint::Receiver(r), Some(d)) => {
            tasks.spawn(serve_requests(r, conn.clone(), d, Requests::Telemetry));
        }
        (HubNode::Twin { .. }, LinkEndpoint::Receiver(r), Some(d)) => {
            tasks.spawn(serve_requests(r, conn.clone(), d, Requests::Twin));
        }
        (HubNode::Methods { .. }, LinkEndpoint::Receiver(r), Some(d)) => {
            tasks.spawn(serve_requests(r, conn.clone(), d, Requests::MethodResponses));
        }
        (HubNode::C2d { .. }, LinkEndpoint::Sender(s), Some(d)) => {
            conn.replies.insert(&address, s);
            // After the link is in place: enabling delivers what is queued at once.
            d.session.enable(Feed::C2d);
        }
        (HubNode::Methods { .. }, LinkEndpoint::Sender(s), Some(d)) => {
            conn.replies.insert(&address, s);
            d.session.enable(Feed::Methods);
        }
        (HubNode::Twin { .. }, LinkEndpoint::Sender(s), Some(d)) => {
            conn.replies.insert(&address, s);
            d.session.enable(Feed::TwinResponses);
        }
        (node, LinkEndpoint::Sender(s), _) => {
            let why = Refusal::NotFound(format!("{node:?} does not send to devices"));
            links::close_sender(s, Some(why.error())).await;
        }
        (node, LinkEndpoint::Receiver(r), _) => {
            let why = Refusal::NotFound(format!("{node:?} does not take messages from devices"));
            links::close_receiver(r, Some(why.error())).await;
        }
    }
}

/// The session of `device_id` on this connection, opened on first use: the device must have put
/// a valid CBS token, or be the X.509 device the TLS certificate names.
async fn device(conn: &Arc<Conn>, device_id: &str) -> Result<Arc<HubDevice>, Refusal> {
    let mut devices = conn.hub.devices.lock().await;
    if let Some(d) = devices.get(device_id) {
        if d.session.is_current() {
            return Ok(d.clone());
        }
        d.pump.abort();
        devices.remove(device_id);
    }
    let identity = authenticate(conn, device_id).await?;
    let hub = &conn.services.hub;
    let (session, mut outbound) = hub.open_session(identity).await.map_err(|e| {
        tracing::info!(error = %e, "hub session refused");
        Refusal::Unauthorized(e.to_string())
    })?;
    let device = Arc::new_cyclic(|weak: &Weak<HubDevice>| {
        let weak = weak.clone();
        let pump = tokio::spawn(async move {
            while let Some(out) = outbound.recv().await {
                let Some(device) = weak.upgrade() else { break };
                deliver(&device, out).await;
            }
        });
        HubDevice {
            session,
            replies: conn.replies.clone(),
            pump: pump.abort_handle(),
        }
    });
    devices.insert(device_id.to_string(), device.clone());
    Ok(device)
}

/// Checks the device's credential: its CBS token, else the TLS client certificate.
async fn authenticate(conn: &Conn, device_id: &str) -> Result<DeviceIdentity, Refusal> {
    let token = conn.hub.tokens.lock().get(device_id).map(|(t, _)| t.clone());
    check_credential(conn, device_id, token)
        .await
        .map_err(Refusal::Unauthorized)
}

/// Asks the hub whether `token` (or else the TLS certificate) is `device_id`'s credential; the
/// refusal says why not.
async fn check_credential(conn: &Conn, device_id: &str, token: Option<String>) -> Result<DeviceIdentity, String> {
    let hub = &conn.services.hub;
    let username = HubUsername {
        host_name: hub.host_name().to_string(),
        device_id: device_id.to_string(),
        module_id: None,
        api_version: None,
    };
    let thumbprints = conn.peer_certs.first().map(|leaf| {
        (
            dps_pki::thumbprint::sha1_thumbprint(leaf),
            dps_pki::thumbprint::sha256_thumbprint(leaf),
        )
    });
    if token.is_none() && thumbprints.is_none() {
        return Err(format!(
            "device '{device_id}' is not authenticated on this connection: put a SAS token for it on $cbs first, \
             or connect with its X.509 certificate"
        ));
    }
    let now = dps_core::Engine::unix_time(conn.services.clock.now());
    hub.authenticate(now, &username, token.as_deref().map(str::as_bytes), thumbprints)
        .await
        .map_err(|e| e.to_string())
}

/// Answers CBS put-token requests.
async fn serve_cbs(mut receiver: Receiver, conn: Arc<Conn>) {
    if receiver.set_credit(links::LINK_CREDIT).await.is_err() {
        return;
    }
    while let Ok(delivery) = receiver.recv::<Body<Value>>().await {
        let msg = delivery.message();
        let (status, description) = put_token(&conn, msg).await;
        if receiver.accept(&delivery).await.is_err() {
            break;
        }
        let mut properties = Properties::builder();
        if let Some(id) = message::reply_correlation(msg) {
            properties = properties.correlation_id(id);
        }
        let app = ApplicationProperties::builder()
            .insert(wire::CBS_STATUS_CODE, SimpleValue::Int(status))
            .insert(wire::CBS_STATUS_DESCRIPTION, description)
            .build();
        let reply = Message::builder()
            .properties(properties.build())
            .application_properties(app)
            .value(Value::Null)
            .build();
        match conn.replies.wait(wire::CBS_NODE).await {
            Some(s) => send(&s, reply).await,
            None => tracing::info!("CBS reply dropped: the client attached no receiver link to $cbs"),
        }
    }
}

/// Judges one put-token request: `(status-code, status-description)`.
async fn put_token(conn: &Conn, msg: &Incoming) -> (i32, String) {
    let operation = message::app_property_str(msg, wire::CBS_OPERATION);
    if operation.as_deref() != Some(wire::PUT_TOKEN) {
        return (
            400,
            format!("unsupported CBS operation {operation:?}: only {} is", wire::PUT_TOKEN),
        );
    }
    let Some(token) = message::body_bytes(msg).and_then(|b| String::from_utf8(b).ok()) else {
        return (400, "the put-token body must be the SAS token as a string".into());
    };
    let Some(device_id) = device_of_token(&token) else {
        return (
            401,
            "the token's audience (sr) is not '{host}/devices/{deviceId}' of this hub".into(),
        );
    };
    // Checked now so the device learns at once; kept for the links it attaches next. A refused
    // token leaves an earlier good one in place.
    match check_credential(conn, &device_id, Some(token.clone())).await {
        Ok(_) => {
            let expiry = dps_proto::sas::SasToken::parse(&token).map_or(0, |t| t.expiry);
            conn.hub.tokens.lock().insert(device_id, (token, expiry));
            (200, "OK".into())
        }
        Err(why) => (401, why),
    }
}

/// The device a SAS token's audience (`{host}/devices/{id}`) names. Which host it names is
/// checked by the hub against its own name, not here.
fn device_of_token(token: &str) -> Option<String> {
    let parsed = dps_proto::sas::SasToken::parse(token).ok()?;
    let sr = percent_encoding::percent_decode_str(&parsed.sr_raw)
        .decode_utf8()
        .ok()?;
    let (_, rest) = sr.split_once("/devices/")?;
    let id = rest.split('/').next()?;
    (!id.is_empty()).then(|| id.to_string())
}

/// What a device sends on one of its links.
#[derive(Clone, Copy)]
enum Requests {
    Telemetry,
    Twin,
    MethodResponses,
}

/// Takes the messages a device sends on one link and hands them to its session.
async fn serve_requests(mut receiver: Receiver, conn: Arc<Conn>, device: Arc<HubDevice>, kind: Requests) {
    if receiver.set_credit(links::LINK_CREDIT).await.is_err() {
        return;
    }
    let limit = conn.services.config.max_message_bytes;
    loop {
        let delivery: Delivery<Body<Value>> = match receiver.recv().await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(device = %device.session.identity().device_id(), error = %e, "hub link ended");
                break;
            }
        };
        if !device.session.is_current() {
            let why = Refusal::Unauthorized(
                "the device's session ended (a newer connection, or the device was deleted or disabled)".into(),
            );
            let _ = receiver.reject(&delivery, why.error()).await;
            break;
        }
        let device_id = device.session.identity().client_device_id();
        let now_unix = dps_core::Engine::unix_time(conn.services.clock.now());
        if let Some(expiry) = conn.hub.token_expired(device_id, now_unix) {
            let why = Refusal::Unauthorized(format!(
                "the SAS token of device '{device_id}' expired at {expiry} (Unix time); put a fresh one on $cbs before it expires"
            ));
            tracing::info!(device = %device_id, expiry, "closing a hub link: its CBS token expired");
            let _ = receiver.reject(&delivery, why.error()).await;
            links::close_receiver(receiver, Some(why.error())).await;
            return;
        }
        let msg = delivery.message();
        let size = message::body_len(msg);
        if size > limit {
            let _ = receiver.reject(&delivery, links::too_large(size, limit)).await;
            continue;
        }
        let now = conn.services.clock.now();
        let body = message::body_bytes(msg).unwrap_or_default();
        let result = match kind {
            Requests::Telemetry => device
                .session
                .handle(
                    now,
                    HubPublish::Telemetry {
                        properties: telemetry_properties(msg),
                    },
                    &body,
                )
                .await
                .map(|_| ()),
            Requests::MethodResponses => {
                let rid = message::reply_correlation(msg)
                    .map(|c| method_rid(&c))
                    .unwrap_or_default();
                let status = message::app_property_str(msg, wire::METHOD_STATUS)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(200);
                device
                    .session
                    .handle(now, HubPublish::MethodResponse { status, rid }, &body)
                    .await
                    .map(|_| ())
            }
            Requests::Twin => twin_request(&device, now, msg, &body).await,
        };
        match result {
            Ok(()) => {
                if receiver.accept(&delivery).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                tracing::info!(device = %device.session.identity().device_id(), error = %e, "hub message refused");
                let error = links::custom_error("com.microsoft:argument-error", e.to_string());
                let _ = receiver.reject(&delivery, error).await;
            }
        }
    }
    links::close_receiver(receiver, None).await;
}

/// A telemetry message's properties as the hub keeps them: the AMQP system properties under
/// their MQTT `$.` names, then the application properties.
fn telemetry_properties(msg: &Incoming) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(p) = &msg.properties {
        if let Some(id) = &p.message_id {
            out.push(("$.mid".into(), correlation_text(id)));
        }
        if let Some(id) = &p.correlation_id {
            out.push(("$.cid".into(), correlation_text(id)));
        }
        if let Some(u) = &p.user_id {
            out.push(("$.uid".into(), String::from_utf8_lossy(u).into_owned()));
        }
        if let Some(ct) = &p.content_type {
            out.push(("$.ct".into(), ct.0.clone()));
        }
        if let Some(ce) = &p.content_encoding {
            out.push(("$.ce".into(), ce.0.clone()));
        }
    }
    if let Some(app) = &msg.application_properties {
        for (k, v) in app.0.iter() {
            if let Some(text) = simple_text(v) {
                out.push((k.clone(), text));
            }
        }
    }
    out
}

fn simple_text(v: &SimpleValue) -> Option<String> {
    Some(match v {
        SimpleValue::String(s) => s.clone(),
        SimpleValue::Symbol(s) => s.0.clone(),
        SimpleValue::Bool(b) => b.to_string(),
        SimpleValue::Ubyte(n) => n.to_string(),
        SimpleValue::Ushort(n) => n.to_string(),
        SimpleValue::Uint(n) => n.to_string(),
        SimpleValue::Ulong(n) => n.to_string(),
        SimpleValue::Byte(n) => n.to_string(),
        SimpleValue::Short(n) => n.to_string(),
        SimpleValue::Int(n) => n.to_string(),
        SimpleValue::Long(n) => n.to_string(),
        SimpleValue::Float(n) => n.to_string(),
        SimpleValue::Double(n) => n.to_string(),
        SimpleValue::Char(c) => c.to_string(),
        SimpleValue::Uuid(u) => uuid_text(u.as_inner()),
        _ => return None,
    })
}

/// A message id or correlation id as text (the hub's request ids are text; Node encodes
/// UUID-shaped ids as AMQP uuids).
fn correlation_text(id: &MessageId) -> String {
    match id {
        MessageId::String(s) => s.clone(),
        MessageId::Ulong(n) => n.to_string(),
        MessageId::Uuid(u) => uuid_text(u.as_inner()),
        MessageId::Binary(b) => String::from_utf8_lossy(b).into_owned(),
    }
}

/// A twin request's correlation id as the request id the hub carries and hands back with the
/// answer. The answer must carry the id in the AMQP type it came in (Node sends strings and
/// matches answers by string, C ulongs, others uuids), so the type travels in the text.
fn rid_of(id: &MessageId) -> String {
    match id {
        MessageId::String(s) => format!("s:{s}"),
        MessageId::Ulong(n) => format!("n:{n}"),
        MessageId::Uuid(u) => format!("u:{}", uuid_text(u.as_inner())),
        MessageId::Binary(b) => format!("b:{}", data_encoding::HEXLOWER.encode(b)),
    }
}

/// The correlation id [`rid_of`] carried, in its own type.
fn id_of_rid(rid: &str) -> MessageId {
    let (kind, text) = rid.split_at(rid.len().min(2));
    let parsed = match kind {
        "n:" => text.parse::<u64>().ok().map(MessageId::Ulong),
        "u:" => uuid::Uuid::parse_str(text)
            .ok()
            .map(|u| MessageId::Uuid(u.into_bytes().into())),
        "b:" => data_encoding::HEXLOWER
            .decode(text.as_bytes())
            .ok()
            .map(|b| MessageId::Binary(Binary::from(b))),
        "s:" => Some(MessageId::String(text.to_string())),
        _ => None,
    };
    parsed.unwrap_or_else(|| MessageId::String(rid.to_string()))
}

/// The correlation id of a direct-method request: an AMQP uuid (the C SDK refuses anything
/// else) made from the hub's numeric request id.
fn method_request_id(rid: &str) -> MessageId {
    match rid.parse::<u128>() {
        Ok(n) => MessageId::Uuid(uuid::Uuid::from_u128(n).into_bytes().into()),
        Err(_) => MessageId::String(rid.to_string()),
    }
}

/// The hub's request id back from a method response's correlation id.
fn method_rid(id: &MessageId) -> String {
    match id {
        MessageId::Uuid(u) => uuid::Uuid::from_bytes(*u.as_inner()).as_u128().to_string(),
        other => {
            let text = correlation_text(other);
            // Node hands a uuid request id to the application as text and sends it back as a
            // uuid when it looks like one; anything else is taken as sent.
            uuid::Uuid::parse_str(&text).map_or(text, |u| u.as_u128().to_string())
        }
    }
}

fn uuid_text(bytes: &[u8; 16]) -> String {
    uuid::Uuid::from_bytes(*bytes).hyphenated().to_string()
}

/// A twin request: the annotations `operation` and `resource` say which.
async fn twin_request(
    device: &Arc<HubDevice>,
    now: chrono::DateTime<chrono::Utc>,
    msg: &Incoming,
    body: &[u8],
) -> Result<(), dps_hub::SessionError> {
    let annotation = |name: &str| {
        msg.message_annotations.as_ref().and_then(|a| {
            a.0.iter().find_map(|(k, v)| match (k, v) {
                (fe2o3_amqp::types::messaging::annotations::OwnedKey::Symbol(s), Value::String(t)) if s.0 == name => {
                    Some(t.clone())
                }
                (fe2o3_amqp::types::messaging::annotations::OwnedKey::Symbol(s), Value::Symbol(t)) if s.0 == name => {
                    Some(t.0.clone())
                }
                _ => None,
            })
        })
    };
    let rid = message::reply_correlation(msg).map(|c| rid_of(&c)).unwrap_or_default();
    let operation = annotation(wire::TWIN_OPERATION).unwrap_or_default();
    let resource = annotation(wire::TWIN_RESOURCE);
    let replies = match (operation.as_str(), resource.as_deref()) {
        ("GET", _) => device.session.handle(now, HubPublish::TwinGet { rid }, body).await?,
        ("PATCH", Some(wire::REPORTED_RESOURCE)) => {
            device
                .session
                .handle(now, HubPublish::TwinReportedPatch { rid }, body)
                .await?
        }
        ("PUT", Some(wire::DESIRED_NOTIFICATIONS_RESOURCE)) => {
            device.session.enable(Feed::DesiredPatches);
            vec![acknowledgement(rid, 200)]
        }
        ("DELETE", Some(wire::DESIRED_NOTIFICATIONS_RESOURCE)) => {
            device.session.disable(Feed::DesiredPatches);
            vec![acknowledgement(rid, 200)]
        }
        (op, res) => vec![Outbound {
            topic: String::new(),
            payload: Bytes::from(
                serde_json::json!({
                    "errorCode": dps_proto::codes::HUB_ARGUMENT_INVALID,
                    "message": format!("unsupported twin operation {op:?} on resource {res:?}"),
                })
                .to_string(),
            ),
            qos: 0,
            kind: OutboundKind::TwinResponse {
                rid,
                status: 400,
                version: None,
            },
        }],
    };
    for r in replies {
        deliver(device, r).await;
    }
    Ok(())
}

/// A twin response with no body (a subscription change).
fn acknowledgement(rid: String, status: u16) -> Outbound {
    Outbound {
        topic: String::new(),
        payload: Bytes::new(),
        qos: 0,
        kind: OutboundKind::TwinResponse {
            rid,
            status,
            version: None,
        },
    }
}

/// Frames a hub message for its link and sends it.
async fn deliver(device: &Arc<HubDevice>, out: Outbound) {
    let (link, msg) = match out.kind {
        OutboundKind::TwinResponse { rid, status, version } => {
            let mut annotations =
                MessageAnnotations::builder().insert(Symbol::from(wire::TWIN_STATUS), Value::Int(i32::from(status)));
            if let Some(v) = version {
                annotations = annotations.insert(Symbol::from(wire::TWIN_VERSION), Value::Long(v));
            }
            let msg = Message::builder()
                .message_annotations(annotations.build())
                .properties(Properties::builder().correlation_id(id_of_rid(&rid)).build())
                .data(Binary::from(out.payload.to_vec()))
                .build();
            (device.node(|device_id| HubNode::Twin { device_id }), msg)
        }
        OutboundKind::DesiredPatch { version } => {
            let annotations =
                MessageAnnotations::builder().insert(Symbol::from(wire::TWIN_VERSION), Value::Long(version));
            let msg = Message::builder()
                .message_annotations(annotations.build())
                .data(Binary::from(out.payload.to_vec()))
                .build();
            (device.node(|device_id| HubNode::Twin { device_id }), msg)
        }
        OutboundKind::MethodRequest { name, rid } => {
            let app = ApplicationProperties::builder().insert(wire::METHOD_NAME, name).build();
            let msg = Message::builder()
                .properties(Properties::builder().correlation_id(method_request_id(&rid)).build())
                .application_properties(app)
                .data(Binary::from(out.payload.to_vec()))
                .build();
            (device.node(|device_id| HubNode::Methods { device_id }), msg)
        }
        OutboundKind::C2d { properties } => {
            return deliver_c2d(device, properties, out.payload).await;
        }
    };
    match device.link(link).await {
        Some(sender) => send(&sender, msg).await,
        None => {
            tracing::debug!(device = %device.session.identity().device_id(), "hub message dropped: its link is not attached")
        }
    }
}

/// Sends a cloud-to-device message and settles it by the device's outcome, in a task of its own:
/// the device may take its time to complete a message, and its other messages (methods, twin)
/// must not wait for that.
async fn deliver_c2d(device: &Arc<HubDevice>, properties: Vec<(String, String)>, payload: Bytes) {
    // No waiting here: the C2D feed is only on once its link is filed.
    let Some(sender) = device
        .replies
        .get(&node_address(&device.node(|device_id| HubNode::C2d { device_id })))
    else {
        device.session.disable(Feed::C2d);
        device.session.abandon_c2d(properties, payload);
        return;
    };
    let mut p = Properties::builder();
    let mut app = ApplicationProperties::builder();
    for (k, v) in &properties {
        match k.as_str() {
            "$.mid" => p = p.message_id(v.clone()),
            "$.to" => p = p.to(v.clone()),
            "$.cid" => p = p.correlation_id(v.clone()),
            "$.uid" => p = p.user_id(Binary::from(v.as_bytes().to_vec())),
            "$.ct" => p = p.content_type(Symbol::from(v.as_str())),
            "$.ce" => p = p.content_encoding(Symbol::from(v.as_str())),
            other if other.starts_with("$.") => {}
            other => app = app.insert(other, v.clone()),
        }
    }
    let msg = Message::builder()
        .properties(p.build())
        .application_properties(app.build())
        .data(Binary::from(payload.to_vec()))
        .build();
    let sent = {
        let mut s = sender.lock().await;
        tokio::time::timeout(SEND_TIMEOUT, s.send_batchable(msg)).await
    };
    let fut: DeliveryFut<Result<Outcome, SendError>> = match sent {
        Ok(Ok(f)) => f,
        _ => {
            // The link is gone or stalled: the message goes back to the queue for the next one.
            device.session.disable(Feed::C2d);
            device.session.abandon_c2d(properties, payload);
            return;
        }
    };
    let device = device.clone();
    tokio::spawn(async move {
        match fut.await {
            // Complete, or reject (IoT Hub dead-letters it): done with.
            Ok(Outcome::Accepted(_)) | Ok(Outcome::Rejected(_)) => {}
            // Abandon: delivered again.
            Ok(Outcome::Released(_)) | Ok(Outcome::Modified(_)) => device.session.abandon_c2d(properties, payload),
            Err(e) => {
                tracing::debug!(error = %e, "cloud-to-device message not settled");
                device.session.abandon_c2d(properties, payload);
            }
        }
    });
}

/// Sends a message whose outcome does not matter (answers, notifications), not waiting for the
/// device to settle it.
async fn send<T: fe2o3_amqp::types::messaging::SerializableBody>(sender: &SharedSender, msg: Message<T>) {
    let mut s = sender.lock().await;
    match tokio::time::timeout(SEND_TIMEOUT, s.send_batchable(msg)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "hub message not sent"),
        Err(_) => tracing::debug!("hub message not taken within {SEND_TIMEOUT:?}"),
    }
}

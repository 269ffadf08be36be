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
//! Modules have the same nodes under `/devices/{id}/modules/{mid}/` (no cloud-to-device node;
//! their `messages/events` node is also their input receiver, which only IoT Edge feeds), with
//! CBS tokens for `{host}/devices/{id}/modules/{mid}`. The connection keys its identities by
//! their path (`{id}` or `{id}/modules/{mid}`, `dps_proto::hub_mqtt::identity_path`): one
//! connection may carry a device and its modules, each with its own token and session.
//!
//! A link may only be attached for an identity this connection authenticated (the same rule MQTT
//! applies: a device publishes and subscribes only under its own id). Everything the hub decides
//! is `dps_hub::DeviceSession`'s, as for MQTT; this module only frames it.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use dps_hub::{C2dOutcome, DeviceIdentity, DeviceSession, Outbound, OutboundKind};
use dps_proto::amqp_conn::{DeliveryRef, Direction, LinkId};
use dps_proto::hub_amqp::{self as wire, HubNode};
use dps_proto::hub_mqtt::{Feed, HubPublish};
use fe2o3_amqp::types::messaging::{
    ApplicationProperties, DeliveryState, Message, MessageAnnotations, MessageId, Properties,
};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Symbol, Timestamp, Value};
use tokio::sync::mpsc;

use fe2o3_amqp::types::definitions::{AmqpError, LinkError};

use super::links::{self, Refusal};
use super::message::{self, Incoming};
use super::{Conn, Route};
use crate::hubs::EmbeddedHub;

/// Per-connection hub state.
#[derive(Default)]
pub(crate) struct HubState {
    /// SAS tokens put on `$cbs`, by identity path, with their expiry (Unix seconds).
    tokens: HashMap<String, (String, u64)>,
    /// The device and module sessions open on this connection, by identity path.
    devices: HashMap<String, HubDevice>,
    /// Cloud-to-device messages sent and awaiting the device's outcome, by token.
    c2d: HashMap<u64, C2dInFlight>,
    /// The last token handed out.
    last_token: u64,
    /// When the service token put on `$cbs` (a shared access policy with `ServiceConnect`)
    /// expires (Unix seconds), if one was put.
    service_until: Option<u64>,
    /// The service's feedback receiver, if it attached one.
    feedback: Option<OutletLink>,
    /// The service's file upload notification receiver, if it attached one.
    file_notifications: Option<OutletLink>,
    /// Event Hubs consumers' grants and partition readers.
    pub(super) event_hub: super::event_hub::EventHubState,
    /// The embedded hub the connection's first accepted token was for (see [`Conn::embedded`]).
    embedded: Option<Arc<EmbeddedHub>>,
}

impl Conn {
    /// The embedded hub this connection is for: the one its first accepted token named, else
    /// the one its open names, else the first. One connection serves one hub, as a connection
    /// to an IoT hub does.
    pub(super) fn embedded(&self) -> Arc<EmbeddedHub> {
        match &self.hub.embedded {
            Some(hub) => hub.clone(),
            None => self.services.hubs.for_request(None, self.amqp.peer_hostname()).clone(),
        }
    }

    /// The embedded hub `token` is to be judged by: the connection's, refusing a token that
    /// names another hub than the one the connection already serves.
    pub(super) fn embedded_for_token(&self, token: &str) -> Result<Arc<EmbeddedHub>, String> {
        let named = self.services.hubs.for_token(token);
        match (&self.hub.embedded, named) {
            (Some(bound), Some(named)) if !Arc::ptr_eq(bound, named) => Err(format!(
                "this connection serves hub '{}': a token for '{}' needs a connection of its own",
                bound.host_name(),
                named.host_name()
            )),
            (Some(bound), _) => Ok(bound.clone()),
            (None, Some(named)) => Ok(named.clone()),
            (None, None) => Ok(self.embedded()),
        }
    }

    /// Keeps serving `hub` from now on (after a token for it was accepted).
    pub(super) fn bind_hub(&mut self, hub: Arc<EmbeddedHub>) {
        self.hub.embedded.get_or_insert(hub);
    }
}

/// A service-bound queue a backend reads over a receiver link: feedback
/// (`/messages/serviceBound/feedback`, batches of records) or file upload notifications
/// (`/messages/serviceBound/filenotifications`, one per message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outlet {
    Feedback,
    FileNotifications,
}

impl Outlet {
    fn of(node: &HubNode) -> Option<Outlet> {
        match node {
            HubNode::ServiceFeedback => Some(Outlet::Feedback),
            HubNode::ServiceFileNotifications => Some(Outlet::FileNotifications),
            _ => None,
        }
    }

    fn signal(self, hub: &dps_hub::Hub) -> tokio::sync::watch::Receiver<u64> {
        match self {
            Outlet::Feedback => hub.feedback_signal(),
            Outlet::FileNotifications => hub.file_notification_signal(),
        }
    }

    /// The next batch, locked: its lock token, message body and content type. A store that
    /// cannot be read now sends nothing (the receiver is woken again when the store's channel
    /// comes back, or by the next record).
    async fn take(self, hub: &dps_hub::Hub) -> Option<(String, Vec<u8>, &'static str)> {
        let taken = match self {
            Outlet::Feedback => hub
                .receive_feedback(dps_hub::FEEDBACK_BATCH)
                .await
                .map(|b| b.map(|b| (b.lock_token.clone(), b.body().to_vec(), wire::FEEDBACK_CONTENT_TYPE))),
            Outlet::FileNotifications => hub.receive_file_notification().await.map(|b| {
                b.map(|b| {
                    let body = b.records.first().map(|n| n.to_wire().to_string()).unwrap_or_default();
                    (b.lock_token, body.into_bytes(), wire::FILE_NOTIFICATION_CONTENT_TYPE)
                })
            }),
        };
        taken
            .inspect_err(|e| tracing::warn!(error = %e, outlet = ?self, "service-bound batch not read"))
            .ok()
            .flatten()
    }

    /// Puts a batch back, in the background (on a shared store that is a write).
    fn abandon(self, hub: &dps_hub::Hub, lock: &str) {
        self.settle(hub, lock.to_string(), false);
    }

    /// The backend's outcome (`None`: its link or connection went first): accepted or rejected
    /// completes the batch (IoT Hub dead-letters rejected ones), anything else puts it back.
    fn settled(self, hub: &dps_hub::Hub, lock: String, state: Option<DeliveryState>) {
        let complete = matches!(state, Some(DeliveryState::Accepted(_) | DeliveryState::Rejected(_)));
        self.settle(hub, lock, complete);
    }

    /// Completes (`complete`) or puts back the batch `lock` holds, in the background; a failure
    /// leaves it to be read again when its lock runs out.
    fn settle(self, hub: &dps_hub::Hub, lock: String, complete: bool) {
        let hub = hub.clone();
        tokio::spawn(async move {
            let done = match (self, complete) {
                (Outlet::Feedback, true) => hub.complete_feedback(&lock).await,
                (Outlet::Feedback, false) => hub.abandon_feedback(&lock).await,
                (Outlet::FileNotifications, true) => hub.complete_file_notification(&lock).await,
                (Outlet::FileNotifications, false) => hub.abandon_file_notification(&lock).await,
            };
            if let Err(e) = done {
                tracing::warn!(error = %e, outlet = ?self, complete, "batch not settled; it is read again when its lock runs out");
            }
        });
    }
}

/// A backend's link on an [`Outlet`]: one batch at a time goes out on it, locked in the hub
/// until the backend settles it.
struct OutletLink {
    link: LinkId,
    /// Changes when the outlet may have something to read.
    signal: tokio::sync::watch::Receiver<u64>,
    /// The batch sent and not settled: its delivery token and the hub's lock.
    in_flight: Option<(u64, String)>,
}

impl OutletLink {
    /// Ready when the outlet may have something to send and nothing is out; never otherwise.
    async fn ready(link: &mut Option<OutletLink>) {
        match link {
            Some(f) if f.in_flight.is_none() => {
                if f.signal.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            _ => std::future::pending().await,
        }
    }
}

/// What the hub has for this connection.
pub(super) enum HubWake {
    /// A hub-initiated message for a device (`None`: the hub ended that device's session).
    Outbound(String, Option<Outbound>),
    /// Feedback or file upload notifications may be readable for the service's receivers.
    Outlets,
    /// Telemetry arrived while an Event Hubs partition reader was waiting for it.
    Events,
}

/// A device's session on this connection, and the hub-initiated messages it has for the device.
struct HubDevice {
    session: DeviceSession,
    outbound: mpsc::Receiver<Outbound>,
    /// Counts the session in the metrics while it lives.
    _counted: crate::metrics::CountedSession,
}

/// A cloud-to-device message the device has not settled yet: its device and the hub's lock.
struct C2dInFlight {
    device_id: String,
    lock_token: String,
}

impl HubState {
    /// When the CBS token `device_id`'s links were opened with expired, if it has (IoT Hub
    /// closes a device's links then, unless it put a fresh token first). X.509 devices put none.
    fn token_expired(&self, device_id: &str, now_unix: u64) -> Option<u64> {
        self.tokens
            .get(device_id)
            .map(|(_, expiry)| *expiry)
            .filter(|expiry| *expiry <= now_unix)
    }

    /// The next thing the hub has for this connection: a message for one of its devices, or
    /// news of feedback for its feedback receiver (while no batch is out on it). Never ready
    /// without either.
    pub(super) async fn next(&mut self) -> HubWake {
        let devices = &mut self.devices;
        let outbound = std::future::poll_fn(move |cx| {
            for (id, device) in devices.iter_mut() {
                if let Poll::Ready(out) = device.outbound.poll_recv(cx) {
                    return Poll::Ready((id.clone(), out));
                }
            }
            Poll::Pending
        });
        let feedback = OutletLink::ready(&mut self.feedback);
        let files = OutletLink::ready(&mut self.file_notifications);
        let events = self.event_hub.next_arrival();
        tokio::select! {
            (id, out) = outbound => HubWake::Outbound(id, out),
            () = feedback => HubWake::Outlets,
            () = files => HubWake::Outlets,
            () = events => HubWake::Events,
        }
    }

    /// The link slot of an outlet.
    fn outlet(&mut self, outlet: Outlet) -> &mut Option<OutletLink> {
        match outlet {
            Outlet::Feedback => &mut self.feedback,
            Outlet::FileNotifications => &mut self.file_notifications,
        }
    }

    /// Forgets a device whose session the hub ended (a newer connection, deleted, disabled).
    pub(super) fn drop_device(&mut self, device_id: &str) {
        self.devices.remove(device_id);
    }

    /// The peer's outcome for a message the server sent with `token` (`None`: the link or
    /// connection went first): a feedback or file notification batch, or a cloud-to-device
    /// message.
    pub(super) fn settled(&mut self, hub: &dps_hub::Hub, token: u64, state: Option<DeliveryState>) {
        for (outlet, link) in [
            (Outlet::Feedback, &mut self.feedback),
            (Outlet::FileNotifications, &mut self.file_notifications),
        ] {
            if let Some(f) = link
                .as_mut()
                .filter(|f| f.in_flight.as_ref().is_some_and(|(t, _)| *t == token))
            {
                if let Some((_, lock)) = f.in_flight.take() {
                    outlet.settled(hub, lock, state);
                }
                return;
            }
        }
        self.c2d_settled(token, state);
    }

    /// The device's outcome for a cloud-to-device message (`None`: the link or connection went
    /// first), handed to the hub: accepted completes, rejected dead-letters, released and
    /// modified abandon (IoT Hub's AMQP mapping); a message that never got an outcome goes
    /// back to the queue uncounted.
    fn c2d_settled(&mut self, token: u64, state: Option<DeliveryState>) {
        let Some(msg) = self.c2d.remove(&token) else {
            return;
        };
        let outcome = match state {
            Some(DeliveryState::Accepted(_)) => C2dOutcome::Complete,
            Some(DeliveryState::Rejected(_)) => C2dOutcome::Reject,
            Some(_) => C2dOutcome::Abandon,
            None => C2dOutcome::Release,
        };
        if let Some(device) = self.devices.get(&msg.device_id) {
            device.session.settle_c2d(&msg.lock_token, outcome);
        }
    }

    /// Stops cloud-to-device deliveries to this connection (it is closing): with the feed off,
    /// what the connection still holds unsettled goes back to the device's queue rather than to
    /// this connection again (the hub takes back what sits in the session's channel when the
    /// session ends).
    pub(super) fn stop_c2d(&mut self) {
        for device in self.devices.values_mut() {
            device.session.disable(Feed::C2d);
        }
    }

    /// Ends every device session of the connection (it is closing).
    pub(super) fn close(&mut self) {
        self.devices.clear();
    }
}

/// What a link to a hub node is for, if this connection may attach it.
pub(super) async fn attach(conn: &mut Conn, direction: Direction, node: HubNode) -> Result<Route, Refusal> {
    if let HubNode::ServiceC2d = node {
        return match direction {
            Direction::FromPeer => {
                service_authorized(conn).map_err(Refusal::Unauthorized)?;
                Ok(Route::ServiceC2d)
            }
            Direction::ToPeer => Err(Refusal::NotFound(
                "/messages/devicebound takes messages from the service; it sends none".into(),
            )),
        };
    }
    if Outlet::of(&node).is_some() {
        return match direction {
            Direction::ToPeer => {
                service_authorized(conn).map_err(Refusal::Unauthorized)?;
                Ok(Route::Out {
                    address: node.address(),
                })
            }
            Direction::FromPeer => Err(Refusal::NotFound(format!(
                "{} sends to the service; it takes nothing",
                node.address()
            ))),
        };
    }
    if !matches!(node, HubNode::Cbs) {
        device(conn, &node.identity_path().unwrap_or_default()).await?;
    }
    let address = node.address();
    let device_id = || node.identity_path().unwrap_or_default();
    match (&node, direction) {
        (HubNode::Cbs, Direction::FromPeer) => Ok(Route::Cbs),
        (HubNode::Telemetry { .. }, Direction::FromPeer) => Ok(Route::Device {
            device_id: device_id(),
            kind: Requests::Telemetry,
        }),
        (HubNode::Twin { .. }, Direction::FromPeer) => Ok(Route::Device {
            device_id: device_id(),
            kind: Requests::Twin,
        }),
        (HubNode::Methods { .. }, Direction::FromPeer) => Ok(Route::Device {
            device_id: device_id(),
            kind: Requests::MethodResponses,
        }),
        (HubNode::Cbs | HubNode::C2d { .. } | HubNode::Methods { .. } | HubNode::Twin { .. }, Direction::ToPeer) => {
            Ok(Route::Out { address })
        }
        // A module's input receiver: attached, fed only by IoT Edge (never by the hub).
        (HubNode::Telemetry { module_id: Some(_), .. }, Direction::ToPeer) => Ok(Route::Out { address }),
        (node, Direction::ToPeer) => Err(Refusal::NotFound(format!("{node:?} does not send to devices"))),
        (node, Direction::FromPeer) => Err(Refusal::NotFound(format!(
            "{node:?} does not take messages from devices"
        ))),
    }
}

/// The feed an identity's link to `address` carries, if it is one, with the identity's path.
fn feed_of(address: &str) -> Option<(String, Feed)> {
    let node = HubNode::parse(address)?;
    let feed = match node {
        HubNode::C2d { .. } => Feed::C2d,
        HubNode::Methods { .. } => Feed::Methods,
        HubNode::Twin { .. } => Feed::TwinResponses,
        _ => return None,
    };
    Some((node.identity_path()?, feed))
}

/// A link was attached: a link to a device's node turns its feed on (which delivers what is
/// queued at once).
pub(super) async fn attached(conn: &mut Conn, link: LinkId) {
    let Some(Route::Out { address }) = conn.routes.get(&link) else {
        return;
    };
    if let Some(outlet) = HubNode::parse(address).as_ref().and_then(Outlet::of) {
        let hub = conn.embedded().hub.clone();
        let slot = conn.hub.outlet(outlet);
        if let Some((_, lock)) = slot.take().and_then(|old| old.in_flight) {
            outlet.abandon(&hub, &lock);
        }
        *slot = Some(OutletLink {
            link,
            signal: outlet.signal(&hub),
            in_flight: None,
        });
        return send_outlets(conn).await;
    }
    if let Some((device_id, feed)) = feed_of(address) {
        if let Some(d) = conn.hub.devices.get(&device_id) {
            d.session.enable(feed);
        }
    }
}

/// Sends the next batch on each of the service's outlet links that has none out: feedback (one
/// message whose body is the JSON array of records) and file upload notifications (one per
/// message), as IoT Hub sends them (user id = the hub's name, the outlet's content type). A
/// batch stays locked in the hub until the service settles its message.
pub(super) async fn send_outlets(conn: &mut Conn) {
    for outlet in [Outlet::Feedback, Outlet::FileNotifications] {
        let Some(link) = conn
            .hub
            .outlet(outlet)
            .as_ref()
            .filter(|f| f.in_flight.is_none())
            .map(|f| f.link)
        else {
            continue;
        };
        let hub = conn.embedded().hub.clone();
        let Some((lock, body, content_type)) = outlet.take(&hub).await else {
            continue;
        };
        let properties = Properties::builder()
            .message_id(lock.clone())
            .user_id(Binary::from(hub.host_name().as_bytes().to_vec()))
            .content_type(Symbol::from(content_type))
            .build();
        let msg = Message::builder()
            .properties(properties)
            .data(Binary::from(body))
            .build();
        conn.hub.last_token += 1;
        let token = conn.hub.last_token;
        match conn.amqp.send(link, message::encode(msg), Some(token)) {
            Ok(()) => {
                tracing::debug!(?outlet, "service-bound batch sent");
                if let Some(f) = conn.hub.outlet(outlet).as_mut() {
                    f.in_flight = Some((token, lock));
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, ?outlet, "service-bound batch not sent");
                outlet.abandon(&hub, &lock);
            }
        }
    }
}

/// The client detached its link to `address`: the feed it carried is off.
pub(super) fn detached(conn: &mut Conn, address: &str) {
    if let Some(outlet) = HubNode::parse(address).as_ref().and_then(Outlet::of) {
        if let Some((_, lock)) = conn.hub.outlet(outlet).take().and_then(|f| f.in_flight) {
            outlet.abandon(&conn.embedded().hub, &lock);
        }
        return;
    }
    if let Some((device_id, feed)) = feed_of(address) {
        if let Some(d) = conn.hub.devices.get(&device_id) {
            d.session.disable(feed);
        }
    }
}

/// Opens the session of the identity at `device_id` (a device's or module's path) on this
/// connection on first use: it must have put a valid CBS token, or be the X.509 identity the TLS
/// certificate names.
async fn device(conn: &mut Conn, device_id: &str) -> Result<(), Refusal> {
    if let Some(d) = conn.hub.devices.get(device_id) {
        if d.session.is_current() {
            return Ok(());
        }
        conn.hub.devices.remove(device_id);
    }
    let token = conn.hub.tokens.get(device_id).map(|(t, _)| t.clone());
    let hub = conn.embedded().hub.clone();
    let identity = check_credential(conn, &hub, device_id, token)
        .await
        .map_err(Refusal::Unauthorized)?;
    let (session, outbound) = hub.open_session(identity).await.map_err(|e| {
        tracing::info!(error = %e, "hub session refused");
        Refusal::Unauthorized(e.to_string())
    })?;
    let counted = conn.services.metrics.session(hub.host_name(), "amqp");
    conn.hub.devices.insert(
        device_id.to_string(),
        HubDevice {
            session,
            outbound,
            _counted: counted,
        },
    );
    Ok(())
}

/// Asks `hub` whether `token` (or else the TLS certificate) is the credential of the identity
/// at `device_id` (a path); the refusal says why not.
async fn check_credential(
    conn: &Conn,
    hub: &dps_hub::Hub,
    device_id: &str,
    token: Option<String>,
) -> Result<DeviceIdentity, String> {
    let client_cert = dps_hub::ClientCertificate::leaf_of(&conn.peer_certs);
    if token.is_none() && client_cert.is_none() {
        return Err(format!(
            "device '{device_id}' is not authenticated on this connection: put a SAS token for it on $cbs first, \
             or connect with its X.509 certificate"
        ));
    }
    let now = dps_core::Engine::unix_time(conn.services.clock.now());
    let (device, module) = dps_proto::hub_mqtt::split_identity_path(device_id);
    hub.authenticate_identity(now, device, module, token.as_deref(), client_cert)
        .await
        .map_err(|e| e.to_string())
}

/// Answers a CBS put-token request on the client's `$cbs` receiver.
pub(super) async fn put_token_request(conn: &mut Conn, delivery: Option<DeliveryRef>, msg: &Incoming) {
    let (status, description) = put_token(conn, msg).await;
    conn.settle(delivery, Ok(()));
    let reply = message::status_reply(msg, status, description, Value::Null);
    if !conn.send_to(wire::CBS_NODE, reply) {
        tracing::info!("CBS reply dropped: the client attached no receiver link to $cbs");
    }
}

/// Judges one put-token request: `(status-code, status-description)`.
async fn put_token(conn: &mut Conn, msg: &Incoming) -> (i32, String) {
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
    if super::event_hub::is_event_hub_token(&token) {
        return super::event_hub::put_token(conn, &token);
    }
    if dps_proto::sas::SasToken::parse(&token).is_ok_and(|t| t.key_name.is_some()) {
        return put_service_token(conn, &token);
    }
    let Some(device_id) = device_of_token(&token) else {
        return (
            401,
            "the token's audience (sr) is not '{host}/devices/{deviceId}[/modules/{moduleId}]' of this hub, and it \
             names no shared access policy (skn)"
                .into(),
        );
    };
    let embedded = match conn.embedded_for_token(&token) {
        Ok(hub) => hub,
        Err(why) => return (401, why),
    };
    // Checked now so the device learns at once; kept for the links it attaches next. A refused
    // token leaves an earlier good one in place.
    match check_credential(conn, &embedded.hub, &device_id, Some(token.clone())).await {
        Ok(_) => {
            let expiry = dps_proto::sas::SasToken::parse(&token).map_or(0, |t| t.expiry);
            conn.bind_hub(embedded);
            conn.hub.tokens.insert(device_id, (token, expiry));
            (200, "OK".into())
        }
        Err(why) => (401, why),
    }
}

/// Judges a service token (one naming a shared access policy): it must be signed by one of the
/// hub's policies with `ServiceConnect`, for one of the hub's own names, and unexpired. Kept
/// for the service links attached next.
fn put_service_token(conn: &mut Conn, token: &str) -> (i32, String) {
    let embedded = match conn.embedded_for_token(token) {
        Ok(hub) => hub,
        Err(why) => return (401, why),
    };
    let now = dps_core::Engine::unix_time(conn.services.clock.now());
    let hosts: Vec<String> = embedded.hub.names().map(str::to_string).collect();
    match embedded
        .auth
        .authorize(now, Some(token), &hosts, wire::SERVICE_C2D_NODE, &[SERVICE_CONNECT])
    {
        Ok(_) => {
            let expiry = dps_proto::sas::SasToken::parse(token).map_or(0, |t| t.expiry);
            conn.bind_hub(embedded);
            conn.hub.service_until = Some(expiry);
            (200, "OK".into())
        }
        Err(e) => (401, e.to_string()),
    }
}

/// The right a service token's policy needs for the service nodes.
const SERVICE_CONNECT: &str = "ServiceConnect";

/// Whether this connection put a service token that still holds; why not otherwise.
fn service_authorized(conn: &Conn) -> Result<(), String> {
    let now = dps_core::Engine::unix_time(conn.services.clock.now());
    match conn.hub.service_until {
        Some(expiry) if expiry > now => Ok(()),
        Some(expiry) => Err(format!(
            "the service token expired at {expiry} (Unix time); put a fresh one on $cbs"
        )),
        None => Err(format!(
            "no service credential: put a SAS token of a shared access policy with {SERVICE_CONNECT} on $cbs first"
        )),
    }
}

/// A cloud-to-device message a backend sent on `/messages/devicebound`: its `to` names the
/// device; its properties go with it as IoT Hub keeps them (message id, correlation id, user id,
/// content type and encoding, application properties). Accepted once the hub has it (delivered
/// or queued); rejected with the hub's reason otherwise.
pub(super) async fn service_c2d(conn: &mut Conn, link: LinkId, delivery: Option<DeliveryRef>, msg: &Incoming) {
    if let Err(why) = service_authorized(conn) {
        let error = Refusal::Unauthorized(why).error();
        conn.settle(delivery, Err(error.clone()));
        conn.amqp.detach(link, Some(error));
        return;
    }
    let to = msg.properties.as_ref().and_then(|p| p.to.clone()).unwrap_or_default();
    let Some(HubNode::C2d { device_id }) = HubNode::parse(links::strip_uri(&to)) else {
        let error = links::custom_error(
            "com.microsoft:argument-error",
            format!("the message's 'to' must be /devices/{{deviceId}}/messages/devicebound, not {to:?}"),
        );
        return conn.settle(delivery, Err(error));
    };
    let body = message::body_bytes(msg).unwrap_or_default();
    let mut properties = telemetry_properties(msg);
    // The expiry travels as `$.exp`, as IoT Hub shows it to MQTT devices.
    if let Some(exp) = msg.properties.as_ref().and_then(|p| p.absolute_expiry_time.as_ref()) {
        let at = chrono::DateTime::from_timestamp_millis(exp.milliseconds()).unwrap_or_default();
        properties.push(("$.exp".into(), dps_proto::timefmt::format_record(&at)));
    }
    let result = conn.embedded().hub.send_c2d(&device_id, body, properties).await;
    let outcome = result.map_err(|e| {
        tracing::info!(device = %device_id, error = %e, "cloud-to-device message refused");
        let condition = match &e {
            dps_hub::C2dError::DeviceNotFound { .. } => AmqpError::NotFound,
            dps_hub::C2dError::QueueFull { .. } => AmqpError::ResourceLimitExceeded,
            dps_hub::C2dError::InvalidProperty { .. } => {
                return links::custom_error("com.microsoft:argument-error", e.to_string());
            }
            dps_hub::C2dError::TooLarge { .. } => {
                return links::condition_error_of(LinkError::MessageSizeExceeded, e.to_string());
            }
            _ => AmqpError::InternalError,
        };
        links::condition_error(condition, e.to_string())
    });
    conn.settle(delivery, outcome);
}

/// The path of the device or module a SAS token's audience (`{host}/devices/{id}` or
/// `{host}/devices/{id}/modules/{mid}`) names. Which host it names, and that the audience is
/// exactly that, is checked by the hub against its own name, not here.
fn device_of_token(token: &str) -> Option<String> {
    let parsed = dps_proto::sas::SasToken::parse(token).ok()?;
    let sr = percent_encoding::percent_decode_str(&parsed.sr_raw)
        .decode_utf8()
        .ok()?;
    let (_, rest) = sr.split_once("/devices/")?;
    let mut segments = rest.split('/');
    let id = segments.next().filter(|id| !id.is_empty())?;
    let module = match (segments.next(), segments.next()) {
        (Some("modules"), Some(m)) if !m.is_empty() => Some(m),
        _ => None,
    };
    Some(dps_proto::hub_mqtt::identity_path(id, module))
}

/// What a device sends on one of its links.
#[derive(Clone, Copy)]
pub(super) enum Requests {
    Telemetry,
    Twin,
    MethodResponses,
}

/// Hands a message a device sent on one of its links to its session, and settles it by the
/// session's answer.
pub(super) async fn device_message(
    conn: &mut Conn,
    link: LinkId,
    delivery: Option<DeliveryRef>,
    device_id: &str,
    kind: Requests,
    msg: &Incoming,
) {
    let now_unix = dps_core::Engine::unix_time(conn.services.clock.now());
    let current = conn.hub.devices.get(device_id).is_some_and(|d| d.session.is_current());
    let refusal = if !current {
        Some(Refusal::Unauthorized(
            "the device's session ended (a newer connection, or the device was deleted or disabled)".into(),
        ))
    } else {
        conn.hub.token_expired(device_id, now_unix).map(|expiry| {
            tracing::info!(device = %device_id, expiry, "closing a hub link: its CBS token expired");
            Refusal::Unauthorized(format!(
                "the SAS token of device '{device_id}' expired at {expiry} (Unix time); put a fresh one on $cbs before it expires"
            ))
        })
    };
    if let Some(why) = refusal {
        conn.settle(delivery, Err(why.error()));
        conn.amqp.detach(link, Some(why.error()));
        return;
    }
    let limit = conn.services.config.max_message_bytes;
    let size = message::body_len(msg);
    if size > limit {
        return conn.settle(delivery, Err(links::too_large(size, limit)));
    }
    let now = conn.services.clock.now();
    let body = message::body_bytes(msg).unwrap_or_default();
    let Some(device) = conn.hub.devices.get(device_id) else {
        return;
    };
    let session = &device.session;
    let result = match kind {
        Requests::Telemetry => {
            let properties = telemetry_properties(msg);
            session
                .handle(now, HubPublish::Telemetry { properties }, &body)
                .await
                .map(|_| Vec::new())
        }
        Requests::MethodResponses => {
            let rid = message::reply_correlation(msg)
                .map(|c| method_rid(&c))
                .unwrap_or_default();
            let status = message::app_property_str(msg, wire::METHOD_STATUS)
                .and_then(|s| s.parse().ok())
                .unwrap_or(200);
            session
                .handle(now, HubPublish::MethodResponse { status, rid }, &body)
                .await
                .map(|_| Vec::new())
        }
        Requests::Twin => twin_request(session, now, msg, &body).await,
    };
    match result {
        Ok(replies) => {
            conn.settle(delivery, Ok(()));
            for r in replies {
                deliver(conn, device_id, r);
            }
        }
        Err(e) => {
            tracing::info!(device = %device_id, error = %e, "hub message refused");
            let error = links::custom_error("com.microsoft:argument-error", e.to_string());
            conn.settle(delivery, Err(error));
        }
    }
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
/// The answers go back to the caller to send.
async fn twin_request(
    session: &DeviceSession,
    now: chrono::DateTime<chrono::Utc>,
    msg: &Incoming,
    body: &[u8],
) -> Result<Vec<Outbound>, dps_hub::SessionError> {
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
        ("GET", _) => session.handle(now, HubPublish::TwinGet { rid }, body).await?,
        ("PATCH", Some(wire::REPORTED_RESOURCE)) => {
            session.handle(now, HubPublish::TwinReportedPatch { rid }, body).await?
        }
        ("PUT", Some(wire::DESIRED_NOTIFICATIONS_RESOURCE)) => {
            session.enable(Feed::DesiredPatches);
            vec![acknowledgement(rid, 200)]
        }
        ("DELETE", Some(wire::DESIRED_NOTIFICATIONS_RESOURCE)) => {
            session.disable(Feed::DesiredPatches);
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
    Ok(replies)
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

/// Frames a hub message for its link and sends it: twin answers and desired patches on the
/// device's twin node, method calls on its methods node, cloud-to-device messages on its
/// devicebound node (awaiting the device's outcome).
pub(super) fn deliver(conn: &mut Conn, device_id: &str, out: Outbound) {
    let (device, module) = dps_proto::hub_mqtt::split_identity_path(device_id);
    let (device, module_id) = (device.to_string(), module.map(str::to_string));
    let (node, msg) = match out.kind {
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
            (
                HubNode::Twin {
                    device_id: device,
                    module_id,
                },
                msg,
            )
        }
        OutboundKind::DesiredPatch { version } => {
            let annotations =
                MessageAnnotations::builder().insert(Symbol::from(wire::TWIN_VERSION), Value::Long(version));
            let msg = Message::builder()
                .message_annotations(annotations.build())
                .data(Binary::from(out.payload.to_vec()))
                .build();
            (
                HubNode::Twin {
                    device_id: device,
                    module_id,
                },
                msg,
            )
        }
        OutboundKind::MethodRequest { name, rid } => {
            let app = ApplicationProperties::builder().insert(wire::METHOD_NAME, name).build();
            let msg = Message::builder()
                .properties(Properties::builder().correlation_id(method_request_id(&rid)).build())
                .application_properties(app)
                .data(Binary::from(out.payload.to_vec()))
                .build();
            (
                HubNode::Methods {
                    device_id: device,
                    module_id,
                },
                msg,
            )
        }
        OutboundKind::C2d { properties, lock_token } => {
            return deliver_c2d(conn, device_id, properties, lock_token, out.payload)
        }
        // Certificate renewal is an MQTT topic only: no AMQP request makes one.
        OutboundKind::CredentialResponse { .. } => {
            tracing::debug!(device = %device_id, "certificate renewal answer has no AMQP link; dropped");
            return;
        }
    };
    if !conn.send_to(&node.address(), message::encode(msg)) {
        tracing::debug!(device = %device_id, "hub message dropped: its link is not attached");
    }
}

/// Sends a cloud-to-device message unsettled; the device's outcome comes back through
/// [`HubState::c2d_settled`]. A message that cannot go out goes back to the device's queue.
fn deliver_c2d(
    conn: &mut Conn,
    device_id: &str,
    properties: Vec<(String, String)>,
    lock_token: String,
    payload: Bytes,
) {
    let address = HubNode::C2d {
        device_id: device_id.to_string(),
    }
    .address();
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
            "$.exp" => {
                if let Some(at) = dps_proto::timefmt::parse(v) {
                    p = p.absolute_expiry_time(Timestamp::from_milliseconds(at.timestamp_millis()));
                }
            }
            other if other.starts_with("$.") => {}
            other => app = app.insert(other, v.clone()),
        }
    }
    let msg = Message::builder()
        .properties(p.build())
        .application_properties(app.build())
        .data(Binary::from(payload.to_vec()))
        .build();
    conn.hub.last_token += 1;
    let token = conn.hub.last_token;
    let sent = conn
        .out_links
        .get(&address)
        .copied()
        .map(|link| conn.amqp.send(link, message::encode(msg), Some(token)));
    if let Some(Ok(())) = sent {
        let in_flight = C2dInFlight {
            device_id: device_id.to_string(),
            lock_token,
        };
        conn.hub.c2d.insert(token, in_flight);
    } else if let Some(device) = conn.hub.devices.get(device_id) {
        // The link is gone or its queue full: the message goes back to the device's queue, and
        // the feed waits for a link to take it.
        device.session.disable(Feed::C2d);
        device.session.settle_c2d(&lock_token, C2dOutcome::Release);
    }
}

//! The AMQP 1.0 adapter (port 5671, and tunnelled in WebSockets on 443 with subprotocol
//! `AMQPWSB10`): one endpoint for the DPS device endpoint and the embedded hub's device endpoint,
//! as with MQTT. The SASL layer is [`sasl`] (judged by [`auth`]); the AMQP layer (sessions,
//! links, flow control, settlement) is `dps_proto::amqp_conn`, a state machine without I/O
//! (decision 0021). This module owns the socket: one task per connection reads bytes into the
//! state machine, routes each link the client attaches by its address, turns messages into the
//! same engine and hub calls the MQTT adapter makes, and writes the answers.
//!
//! Addresses (device-protocol.md, newer-surfaces.md):
//! - `{idScope}/registrations/{registrationId}`: DPS requests (the client's sender) and their
//!   responses (the client's receiver) — [`dps`].
//! - `$cbs`, `/devices/{id}/...`: the hub — [`hub`].

/// `AsyncWrite` for a reader wrapper (`$wrapper<S>` with the wrapped stream in `inner`): writes
/// go straight through.
macro_rules! delegate_write {
    ($wrapper:ident) => {
        impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $wrapper<S> {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
            }

            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }
        }
    };
}
use delegate_write;

mod auth;
mod dps;
pub mod event_hub;
mod hub;
mod links;
mod message;
pub(crate) mod sasl;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use dps_proto::amqp_conn::{Connection, DeliveryRef, Direction, Event, Limits, LinkId};
use fe2o3_amqp::types::messaging::{Accepted, DeliveryState, Rejected};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::{Services, WRITE_TIMEOUT};
use auth::{ConnAuthenticator, ConnIdentity};
use links::Refusal;
use sasl::{Opened, Rewound};

/// How long a client has, once TLS is up, to finish SASL and open the AMQP connection. Every SDK
/// needs a few round trips; a client slower than this holds a connection without credentials.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest frame the server accepts and announces (`max-frame-size` in its open): room for
/// the largest message accepted (`max-message-bytes`) and its transfer performative, so no client
/// needs to split a message over frames (which the frame check refuses).
fn max_frame_bytes(config: &crate::ServerConfig) -> usize {
    config.max_message_bytes + 64 * 1024
}

/// Sessions one connection may begin. The SDKs use one (Node, C#) or a few (C multiplexing
/// devices over one connection).
const MAX_SESSIONS: u16 = 16;

/// Links one session may attach. A device uses at most 8 (CBS pair, telemetry, C2D, methods pair,
/// twin pair); the cap stops a client making the server hold link state without end.
const MAX_LINKS_PER_SESSION: usize = 64;

/// Messages the server queues on one link for a client that grants no credit: hub messages
/// (twin answers, desired patches, method calls) beyond this are dropped, cloud-to-device
/// messages go back to the device's queue.
const MAX_QUEUED_PER_LINK: usize = 64;

/// The idle time-out the server announces (`idle-time-out` in its open): a client must send
/// something (an empty frame at least) this often, or the connection is closed. Azure announces
/// 240 s; the SDKs send heartbeats at about half of what the server announces.
const IDLE_TIMEOUT: Duration = Duration::from_secs(240);

/// How long a connection may actually stay silent before it is closed: 1.5 × the announced
/// [`IDLE_TIMEOUT`], as MQTT closes at 1.5 × the keep-alive. Not the announced value itself:
/// fe2o3's client (the Rust device SDK's) sends its heartbeat at the full announced time-out
/// rather than half of it, so it would lose its connection to a race with its own heartbeat.
const SILENCE_LIMIT: Duration = Duration::from_secs(240 * 3 / 2);

/// The container id in the server's open frame.
const CONTAINER_ID: &str = "dps";

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 4096;

/// What the state machine announces and enforces for this server.
fn limits(config: &crate::ServerConfig) -> Limits {
    Limits {
        container_id: CONTAINER_ID.into(),
        max_frame: max_frame_bytes(config) as u32,
        channel_max: MAX_SESSIONS - 1,
        max_links_per_session: MAX_LINKS_PER_SESSION,
        idle_timeout: IDLE_TIMEOUT,
        max_queued_per_link: MAX_QUEUED_PER_LINK,
        max_message_size: config.max_message_bytes as u64,
    }
}

/// What a link the client attached is for.
enum Route {
    /// DPS requests of the device authenticated for the registration node `address`.
    DpsRequests {
        address: String,
        device: Arc<auth::DpsDevice>,
    },
    /// CBS put-token requests.
    Cbs,
    /// Messages of one hub device (telemetry, twin requests, method answers).
    Device { device_id: String, kind: hub::Requests },
    /// Cloud-to-device messages from a backend authorized by a service token.
    ServiceC2d,
    /// A link the server sends on, to the node `address` (registration node, `$cbs`, a device's
    /// twin, methods or cloud-to-device node, `$management`).
    Out { address: String },
    /// Event Hubs `$management` requests.
    EventHubManagement,
    /// An Event Hubs consumer's partition link being attached: the partition and where it
    /// starts (they move to the reader once the link is attached).
    EventHubPartition(u32, u64),
    /// An attached partition link (its reader is in the hub state).
    EventHubReader,
}

/// One AMQP connection after SASL: the protocol state machine and everything the link handlers
/// keep. Only its own task touches it.
pub(crate) struct Conn {
    services: Arc<Services>,
    /// Who the SASL layer (or the TLS certificate) says the client is.
    identity: ConnIdentity,
    /// The DER certificates the client sent in the TLS handshake (leaf first), empty for SAS.
    peer_certs: Vec<Vec<u8>>,
    /// The client's address (`geoLatency` allocation of the devices it registers).
    source: Option<std::net::IpAddr>,
    amqp: Connection,
    routes: HashMap<LinkId, Route>,
    /// The links the server sends on, by node address: a request that arrives on the client's
    /// sender is answered on the client's receiver attached to the same address.
    out_links: HashMap<String, LinkId>,
    /// Per-connection hub state: the CBS tokens put, the device sessions open, the
    /// cloud-to-device messages awaiting the device's outcome.
    hub: hub::HubState,
    /// DPS devices authenticated by the TLS client certificate, by registration node address.
    x509_devices: HashMap<String, Arc<auth::DpsDevice>>,
}

/// Serves one AMQP connection over any byte stream: TLS on 5671, or the WebSocket tunnel on 443.
/// `peer_certs` are the DER certificates the client sent in the TLS handshake (empty for SAS
/// clients); possession of the leaf's key was proven by TLS.
pub async fn serve_connection<S>(
    stream: S,
    services: Arc<Services>,
    peer_certs: Vec<Vec<u8>>,
    source: Option<std::net::IpAddr>,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin,
{
    let opened_by = Instant::now() + OPEN_TIMEOUT;
    let mut stream = Rewound::new(stream);
    let mut authenticator = ConnAuthenticator::new(&services, source);
    let identity = match tokio::time::timeout_at(opened_by, sasl::negotiate(&mut stream, &mut authenticator)).await {
        Ok(Ok(Opened::Sasl(identity))) => identity,
        Ok(Ok(Opened::NoSasl)) => ConnIdentity::Unnamed,
        Ok(Err(e)) => {
            tracing::info!(error = %e, "AMQP connection refused during SASL");
            return;
        }
        Err(_) => {
            tracing::debug!("AMQP client did not finish SASL within {OPEN_TIMEOUT:?}; closing");
            return;
        }
    };
    // A DPS connection lives as long as a DPS session may (as on MQTT); a hub connection as long
    // as its client keeps it alive.
    let session_deadline = identity
        .is_dps()
        .then(|| Instant::now() + services.config.limits.dps_session_timeout());
    let mut conn = Conn {
        amqp: Connection::new(limits(&services.config)),
        services,
        identity,
        peer_certs,
        source,
        routes: HashMap::new(),
        out_links: HashMap::new(),
        hub: hub::HubState::default(),
        x509_devices: HashMap::new(),
    };
    if let Err(e) = conn.run(&mut stream, opened_by, session_deadline).await {
        tracing::debug!(error = %e, "AMQP connection ended with an I/O error");
    }
    conn.finish();
    linger(&mut stream).await;
}

/// How long the server waits, after the close frames, for the client to end the transport.
const LINGER: Duration = Duration::from_secs(2);

/// Ends the transport once the close frame is out: the server reads (and drops) what the client
/// still sends until it ends its side, for at most [`LINGER`], then shuts down. Closing a socket
/// with unread bytes in it makes the kernel answer with a reset, which can discard the close
/// frame (and its error) before the client reads it.
async fn linger<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    let mut sink = [0u8; 256];
    let drained = async { while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(LINGER, drained).await;
    // The TLS close-notify is a write too: a client that takes nothing does not hold it up.
    let _ = tokio::time::timeout(LINGER, stream.shutdown()).await;
}

/// What woke the connection's task.
enum Wake {
    Read(std::io::Result<usize>),
    Outbound(String, Option<dps_hub::Outbound>),
    /// Feedback or file upload notifications may be readable for the service's links.
    Outlets,
    /// Telemetry arrived for the Event Hubs partition links waiting for it.
    Events,
    Heartbeat,
    /// The client sent nothing for the idle time-out (or did not open in time).
    Silent,
    /// The DPS session deadline passed.
    SessionOver,
}

impl Conn {
    /// Runs the connection until either side closes it.
    async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        opened_by: Instant,
        session_deadline: Option<Instant>,
    ) -> std::io::Result<()> {
        let mut buf = [0u8; READ_CHUNK];
        let mut last_read = Instant::now();
        let mut last_write = Instant::now();
        // The timers are set once and moved only when they fire early (a read or write since):
        // re-arming them on every frame would cost a timer-wheel update per round trip.
        let silent = tokio::time::sleep_until(opened_by);
        let heartbeat = tokio::time::sleep_until(opened_by);
        let session_over = sleep_until(session_deadline);
        tokio::pin!(silent, heartbeat, session_over);
        loop {
            if self.amqp.has_output() {
                let out = self.amqp.take_output();
                let written = async {
                    stream.write_all(&out).await?;
                    stream.flush().await
                };
                match tokio::time::timeout(WRITE_TIMEOUT, written).await {
                    Ok(result) => result?,
                    Err(_) => {
                        tracing::debug!("closing AMQP connection: the client took nothing for {WRITE_TIMEOUT:?}");
                        return Ok(());
                    }
                }
                last_write = Instant::now();
            }
            if self.amqp.is_closed() {
                return Ok(());
            }
            // `None` when the peer announced no idle time-out: then no heartbeats at all.
            let heartbeat_every = self.amqp.heartbeat_interval();
            let every = heartbeat_every.unwrap_or(IDLE_TIMEOUT);
            let wake = tokio::select! {
                read = stream.read(&mut buf) => Wake::Read(read),
                hub = self.hub.next() => match hub {
                    hub::HubWake::Outbound(device, out) => Wake::Outbound(device, out),
                    hub::HubWake::Outlets => Wake::Outlets,
                    hub::HubWake::Events => Wake::Events,
                },
                () = &mut heartbeat, if heartbeat_every.is_some() => {
                    let due = last_write + every;
                    if due <= Instant::now() {
                        heartbeat.as_mut().reset(Instant::now() + every);
                        Wake::Heartbeat
                    } else {
                        heartbeat.as_mut().reset(due);
                        continue;
                    }
                }
                () = &mut silent => {
                    let due = if self.amqp.is_open() { last_read + SILENCE_LIMIT } else { opened_by };
                    if due <= Instant::now() {
                        Wake::Silent
                    } else {
                        silent.as_mut().reset(due);
                        continue;
                    }
                }
                () = &mut session_over => Wake::SessionOver,
            };
            match wake {
                Wake::Read(Ok(0)) => return Ok(()),
                Wake::Read(Ok(n)) => {
                    last_read = Instant::now();
                    if let Err(e) = self.amqp.feed(&buf[..n]) {
                        tracing::info!(error = %e, "closing AMQP connection: protocol error");
                    }
                    self.handle_events().await;
                }
                Wake::Read(Err(e)) => return Err(e),
                Wake::Outbound(device, Some(out)) => {
                    hub::deliver(self, &device, out);
                    self.handle_events().await;
                }
                Wake::Outbound(device, None) => self.hub.drop_device(&device),
                Wake::Outlets => hub::send_outlets(self).await,
                Wake::Events => event_hub::pump_waiting(self).await,
                Wake::Heartbeat => self.amqp.heartbeat(),
                Wake::Silent => {
                    tracing::debug!("closing AMQP connection: the client sent nothing within its time-out");
                    self.amqp.close(Some(links::condition_error(
                        fe2o3_amqp::types::definitions::AmqpError::ResourceLimitExceeded,
                        format!("nothing received for {SILENCE_LIMIT:?} (1.5 × the idle time-out of {IDLE_TIMEOUT:?})"),
                    )));
                    self.handle_events().await;
                }
                Wake::SessionOver => {
                    tracing::info!("closing AMQP DPS connection: the DPS session deadline passed");
                    self.amqp.close(None);
                    self.handle_events().await;
                }
            }
        }
    }

    /// Acts on everything the client did.
    async fn handle_events(&mut self) {
        while let Some(event) = self.amqp.poll_event() {
            match event {
                Event::Attach {
                    link,
                    direction,
                    address,
                    selector,
                    api_version,
                } => {
                    self.attach(link, direction, &address, selector.as_deref(), api_version)
                        .await
                }
                Event::Credit { link } => event_hub::pump(self, link).await,
                Event::Message {
                    link,
                    delivery,
                    message,
                } => self.message(link, delivery, &message).await,
                Event::Outcome { token, state } => {
                    self.hub.settled(&self.embedded().hub, token, Some(state));
                    hub::send_outlets(self).await;
                }
                Event::Lost { token } => self.hub.settled(&self.embedded().hub, token, None),
                Event::Detached { link, .. } => self.detached(link),
                Event::Closed { .. } => {}
            }
        }
    }

    /// Attaches (or refuses) one link by its address.
    async fn attach(
        &mut self,
        link: LinkId,
        direction: Direction,
        address: &str,
        selector: Option<&str>,
        api_version: Option<String>,
    ) {
        let address = links::strip_uri(address);
        let route = if let Some(node) = dps_proto::dps_amqp::RegistrationNode::parse(address) {
            dps::attach(self, direction, node, api_version).await
        } else if let Some(route) = event_hub::attach(self, direction, address, selector).await {
            route
        } else if let Some(node) = dps_proto::hub_amqp::HubNode::parse(address) {
            hub::attach(self, direction, node).await
        } else {
            Err(Refusal::NotFound(format!("no node at address '{address}'")))
        };
        match route {
            Ok(route) => {
                let credit = match direction {
                    Direction::FromPeer => links::LINK_CREDIT,
                    Direction::ToPeer => 0,
                };
                if let Route::Out { address } = &route {
                    self.out_links.insert(address.clone(), link);
                }
                if let Route::EventHubPartition(partition, next) = route {
                    self.routes.insert(link, Route::EventHubReader);
                    self.amqp.accept(link, credit);
                    return event_hub::attached(self, link, partition, next).await;
                }
                self.routes.insert(link, route);
                self.amqp.accept(link, credit);
                // After the link is in place: enabling a feed delivers what is queued at once.
                hub::attached(self, link).await;
            }
            Err(why) => {
                tracing::info!(address, reason = ?why, "AMQP link refused");
                self.amqp.refuse(link, why.error());
            }
        }
    }

    /// Hands a message to its link's handler.
    async fn message(&mut self, link: LinkId, delivery: Option<DeliveryRef>, bytes: &[u8]) {
        let Some(route) = self.routes.get(&link) else {
            return;
        };
        let msg = match message::decode(bytes) {
            Ok(m) => m,
            Err(e) => {
                let error = links::condition_error(
                    fe2o3_amqp::types::definitions::AmqpError::DecodeError,
                    format!("the message does not decode: {e}"),
                );
                return self.settle(delivery, Err(error));
            }
        };
        match route {
            Route::DpsRequests { address, device } => {
                let (address, device) = (address.clone(), device.clone());
                dps::request(self, delivery, &address, &device, &msg).await;
            }
            Route::Cbs => hub::put_token_request(self, delivery, &msg).await,
            Route::ServiceC2d => hub::service_c2d(self, link, delivery, &msg).await,
            Route::EventHubManagement => event_hub::management(self, delivery, &msg).await,
            Route::Device { device_id, kind } => {
                let (device_id, kind) = (device_id.clone(), *kind);
                hub::device_message(self, link, delivery, &device_id, kind, &msg).await;
            }
            Route::Out { .. } | Route::EventHubPartition(..) | Route::EventHubReader => {}
        }
    }

    /// Settles a message the client sent unsettled: accepted, or rejected with an error.
    fn settle(&mut self, delivery: Option<DeliveryRef>, outcome: Result<(), fe2o3_amqp::types::definitions::Error>) {
        let Some(delivery) = delivery else { return };
        let state = match outcome {
            Ok(()) => DeliveryState::Accepted(Accepted {}),
            Err(error) => DeliveryState::Rejected(Rejected { error: Some(error) }),
        };
        self.amqp.settle(delivery, state);
    }

    /// Sends `message` on the link to `address`, if the client attached one; `false` if not.
    fn send_to(&mut self, address: &str, message: bytes::Bytes) -> bool {
        let Some(link) = self.out_links.get(address).copied() else {
            return false;
        };
        match self.amqp.send(link, message, None) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(address, error = %e, "AMQP message not sent");
                false
            }
        }
    }

    /// Forgets a link the client detached.
    fn detached(&mut self, link: LinkId) {
        let Some(route) = self.routes.remove(&link) else {
            return;
        };
        match route {
            Route::Out { address } if self.out_links.get(&address) == Some(&link) => {
                self.out_links.remove(&address);
                hub::detached(self, &address);
            }
            Route::EventHubReader => event_hub::detached(self, link),
            _ => {}
        }
    }

    /// After the connection ended: cloud-to-device messages still awaiting the device's outcome
    /// (or not yet sent) go back to its queue, then the device sessions end.
    fn finish(&mut self) {
        self.hub.stop_c2d();
        self.amqp.close(None);
        while let Some(event) = self.amqp.poll_event() {
            match event {
                Event::Outcome { token, state } => self.hub.settled(&self.embedded().hub, token, Some(state)),
                Event::Lost { token } => self.hub.settled(&self.embedded().hub, token, None),
                _ => {}
            }
        }
        self.hub.close();
    }
}

/// Sleeps until `at`, or forever when there is no `at`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

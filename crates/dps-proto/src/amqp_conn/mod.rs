//! The listening side of an AMQP 1.0 connection (OASIS AMQP 1.0 part 2), after SASL: the
//! protocol header, open and close, sessions, links, flow control and settlement — without I/O.
//! The server feeds it the bytes a peer sent ([`Connection::feed`]), takes the [`Event`]s they
//! caused, answers them (attach or refuse a link, settle a message, send one) and writes out
//! what [`Connection::take_output`] hands back. One connection is one struct: an idle device
//! costs its few hundred bytes, not tasks and channels (decision 0021).
//!
//! What it serves is what the Azure IoT SDKs use (device-protocol.md, `docs/amqp-wire-facts.md`):
//! sessions the peer begins, links the peer attaches, messages in one frame each on the way in
//! (the server announces a frame size that fits any message it takes), messages split over
//! frames on the way out when the peer's frame size asks for it. It never begins a session or
//! attaches a link of its own, and has no transactions.
//!
//! The types and their encoding are fe2o3-amqp-types' and serde_amqp's; every frame is
//! bounds-checked ([`crate::amqp_encoding`]) before it is decoded.

mod frame;
mod session;

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fe2o3_amqp_types::definitions::{AmqpError, ConnectionError, ErrorCondition};
use fe2o3_amqp_types::messaging::DeliveryState;
use fe2o3_amqp_types::performatives::{Close, Open, Performative};

pub use fe2o3_amqp_types::definitions::Error;
pub use frame::{write as write_frame, write_sasl as write_sasl_frame, PROTOCOL_HEADER};
use session::Session;

/// What the server announces and enforces on a connection.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The container id in the server's open.
    pub container_id: String,
    /// The largest frame the peer may send (`max-frame-size` in the server's open); also the
    /// largest message, since messages arrive in one frame.
    pub max_frame: u32,
    /// The highest channel the peer may begin a session on: sessions per connection − 1.
    pub channel_max: u16,
    /// Links one session may have attached.
    pub max_links_per_session: usize,
    /// The idle time-out the server announces: the peer must send a frame at least this often.
    pub idle_timeout: Duration,
    /// Messages the server queues on one link while the peer grants no credit.
    pub max_queued_per_link: usize,
    /// The largest message announced on each link (`max-message-size`).
    pub max_message_size: u64,
}

/// A link, as the events name it: stable while the link is attached, never reused on the same
/// connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinkId(u32);

/// An unsettled message the peer sent, to settle with [`Connection::settle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryRef {
    link: LinkId,
    id: u32,
}

/// Which way messages go on a link, seen from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The peer sends (it attached a sender; the server receives).
    FromPeer,
    /// The server sends (the peer attached a receiver).
    ToPeer,
}

/// What the peer did.
#[derive(Debug)]
pub enum Event {
    /// The peer asks to attach a link: answer with [`Connection::accept`] or [`Connection::refuse`].
    Attach {
        /// The link, as later events and calls name it.
        link: LinkId,
        /// Which way its messages go.
        direction: Direction,
        /// The node: the target address of the peer's sender, the source address of its
        /// receiver (empty when it gave none).
        address: String,
        /// The receiver's `apache.org:selector-filter:string` source filter, if it gave one
        /// (Event Hubs consumers say with it where they start).
        selector: Option<String>,
        /// The `com.microsoft:api-version` link property, if the peer sent one (the DPS device
        /// API version, which gates optional features such as `csr`).
        api_version: Option<String>,
    },
    /// A link the server sends on has credit and nothing queued: the peer can take more.
    Credit {
        /// The link.
        link: LinkId,
    },
    /// A message arrived on a link the server receives on.
    Message {
        /// The link it came on.
        link: LinkId,
        /// `Some` when the peer wants it settled ([`Connection::settle`]); `None` when it sent it
        /// settled.
        delivery: Option<DeliveryRef>,
        /// The message's encoded sections.
        message: Bytes,
    },
    /// The peer settled a message the server sent with a token ([`Connection::send`]).
    Outcome {
        /// The token it was sent with.
        token: u64,
        /// The peer's outcome (accepted, rejected, released or modified).
        state: DeliveryState,
    },
    /// A message the server sent (or queued) with a token will get no outcome: its link,
    /// session or connection ended first.
    Lost {
        /// The token it was sent with.
        token: u64,
    },
    /// The peer detached a link (the server answered it), or its session ended.
    Detached {
        /// The link.
        link: LinkId,
        /// The peer's error, if it gave one.
        error: Option<Error>,
    },
    /// The peer closed the connection (the server answered it).
    Closed {
        /// The peer's error, if it gave one.
        error: Option<Error>,
    },
}

/// Why the peer's bytes ended the connection. The connection has written its close (with the
/// error's condition) to the output: flush it, then end the transport.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The bytes are not AMQP 1.0 framing: another protocol header, a frame size out of bounds,
    /// a bad data offset or frame type.
    #[error("AMQP framing: {0}")]
    Framing(String),
    /// A value whose sizes or counts do not fit its bytes, or a transfer split over frames.
    #[error("AMQP encoding: {0}")]
    Encoding(#[from] crate::amqp_encoding::EncodingError),
    /// A performative that does not decode.
    #[error("AMQP decode: {0}")]
    Decode(String),
    /// A performative the connection's state does not allow (a transfer on a link never
    /// attached, a second open, a session beyond the channel limit...).
    #[error("AMQP protocol: {0}")]
    NotAllowed(String),
    /// A limit the server announced was exceeded (link credit, links per session).
    #[error("AMQP limit: {0}")]
    Limit(String),
}

impl ProtocolError {
    /// The error the server's close carries.
    fn close_error(&self) -> Error {
        let condition = match self {
            ProtocolError::Framing(_) => ErrorCondition::ConnectionError(ConnectionError::FramingError),
            ProtocolError::Encoding(_) | ProtocolError::Decode(_) => ErrorCondition::AmqpError(AmqpError::DecodeError),
            ProtocolError::NotAllowed(_) => ErrorCondition::AmqpError(AmqpError::NotAllowed),
            ProtocolError::Limit(_) => ErrorCondition::AmqpError(AmqpError::ResourceLimitExceeded),
        };
        Error::new(condition, Some(self.to_string()), None)
    }
}

/// Why a message could not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The link is not (or no longer) attached, or the server does not send on it.
    #[error("the link is not attached for sending")]
    NotAttached,
    /// The peer granted no credit and the link's queue is full.
    #[error("the peer takes no more messages on this link")]
    QueueFull,
}

/// Where the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the peer's protocol header.
    Header,
    /// Waiting for the peer's open.
    Open,
    Opened,
    /// Closed (by either side): nothing more is read or written but what is in the output.
    Closed,
}

/// The listening side of one AMQP connection (see the module documentation).
#[derive(Debug)]
pub struct Connection {
    limits: Limits,
    state: State,
    /// Bytes read from the peer, not yet a whole frame.
    input: BytesMut,
    /// Bytes for the peer.
    output: BytesMut,
    /// The largest frame the peer takes.
    peer_max_frame: usize,
    /// The peer's idle time-out, if it announced one.
    peer_idle_timeout: Option<Duration>,
    /// The host name the peer's open names (the virtual host it connects to), if any.
    peer_hostname: Option<String>,
    sessions: Vec<Session>,
    events: VecDeque<Event>,
    /// The last link id handed out.
    last_link: u32,
}

impl Connection {
    /// A connection whose peer is about to send the AMQP protocol header.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            state: State::Header,
            input: BytesMut::new(),
            output: BytesMut::new(),
            peer_max_frame: 512,
            peer_idle_timeout: None,
            peer_hostname: None,
            sessions: Vec::new(),
            events: VecDeque::new(),
            last_link: 0,
        }
    }

    /// Takes bytes the peer sent and acts on every whole frame in them; events and output
    /// follow. On a protocol error the connection is closed (its close is in the output).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), ProtocolError> {
        if self.state == State::Closed {
            return Ok(());
        }
        self.input.extend_from_slice(bytes);
        let result = self.process();
        if self.input.is_empty() {
            // An idle connection keeps no read buffer (a large message's would stay).
            self.input = BytesMut::new();
        }
        if let Err(e) = &result {
            self.close(Some(e.close_error()));
        }
        result
    }

    fn process(&mut self) -> Result<(), ProtocolError> {
        if self.state == State::Header {
            let Some(header) = self.input.get(..8) else {
                return Ok(());
            };
            if header != PROTOCOL_HEADER {
                // §2.2: answer with the header the server supports, then close the socket.
                self.output.extend_from_slice(&PROTOCOL_HEADER);
                self.state = State::Closed;
                return Err(ProtocolError::Framing(format!(
                    "protocol header {header:02x?} is not AMQP 1.0's"
                )));
            }
            let _ = self.input.split_to(8);
            self.output.extend_from_slice(&PROTOCOL_HEADER);
            self.state = State::Open;
        }
        while self.state != State::Closed {
            let Some(bytes) = frame::cut(&mut self.input, self.limits.max_frame as usize)? else {
                break;
            };
            let frame = frame::decode(&bytes)?;
            let Some(performative) = frame.performative else {
                continue; // a heartbeat
            };
            let payload = bytes.freeze().slice(frame.payload_at..);
            self.on_performative(frame.channel, performative, payload)?;
        }
        if self.state == State::Opened {
            let (sessions, mut ctx) = self.sessions_and_ctx();
            for s in sessions {
                s.renew_credit(&mut ctx);
            }
        }
        Ok(())
    }

    fn on_performative(&mut self, channel: u16, p: Performative, payload: Bytes) -> Result<(), ProtocolError> {
        match (self.state, p) {
            (State::Open, Performative::Open(open)) => self.on_open(open),
            (State::Open, other) => Err(ProtocolError::NotAllowed(format!("{} before open", name(&other)))),
            (_, Performative::Open(_)) => Err(ProtocolError::NotAllowed("a second open".into())),
            (_, Performative::Close(close)) => {
                self.lose_all();
                self.events.push_back(Event::Closed { error: close.error });
                if self.state != State::Closed {
                    frame::write(&mut self.output, 0, &Close { error: None }, &[]);
                }
                self.state = State::Closed;
                Ok(())
            }
            (_, Performative::Begin(begin)) => {
                if begin.remote_channel.is_some() {
                    return Err(ProtocolError::NotAllowed(
                        "a begin answering a session the server never began".into(),
                    ));
                }
                if self.sessions.iter().any(|s| s.remote_channel == channel) {
                    return Err(ProtocolError::NotAllowed(format!(
                        "channel {channel} already has a session"
                    )));
                }
                let Some(local) = (0..=self.limits.channel_max).find(|c| self.sessions.iter().all(|s| s.channel != *c))
                else {
                    return Err(ProtocolError::Limit(format!(
                        "at most {} sessions per connection",
                        u32::from(self.limits.channel_max) + 1
                    )));
                };
                let session = Session::begin(local, channel, &begin, &mut self.output);
                self.sessions.push(session);
                Ok(())
            }
            (_, p) => {
                let Some(i) = self.sessions.iter().position(|s| s.remote_channel == channel) else {
                    if matches!(p, Performative::Detach(_) | Performative::End(_)) {
                        // A peer ending a session may still send what it was closing in it:
                        // pyamqp (the Python Event Hubs and IoT SDKs) writes a session's END
                        // and then its links' DETACHes. Azure's AMQP stack drops a detach or
                        // end for a channel it no longer has rather than close the connection,
                        // and so does this one.
                        return Ok(());
                    }
                    return Err(ProtocolError::NotAllowed(format!(
                        "{} on channel {channel}, which has no session",
                        name(&p)
                    )));
                };
                let (sessions, mut ctx) = self.sessions_and_ctx();
                let ended = sessions[i].on_performative(p, payload, &mut ctx)?;
                if ended {
                    self.sessions.swap_remove(i);
                }
                Ok(())
            }
        }
    }

    fn on_open(&mut self, open: Open) -> Result<(), ProtocolError> {
        self.peer_max_frame = (u32::from(open.max_frame_size) as usize).max(512);
        self.peer_idle_timeout = open
            .idle_time_out
            .filter(|ms| *ms > 0)
            .map(|ms| Duration::from_millis(u64::from(ms)));
        // A host name is at most 255 bytes; a longer one names nothing and is not kept.
        self.peer_hostname = open.hostname.filter(|h| h.len() <= 255);
        let idle = self.limits.idle_timeout.as_millis().min(u128::from(u32::MAX)) as u32;
        let answer = self.open_frame(Some(idle));
        frame::write(&mut self.output, 0, &answer, &[]);
        self.state = State::Opened;
        Ok(())
    }

    /// The next thing the peer did, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Bytes to write to the peer (empty when there are none).
    pub fn take_output(&mut self) -> BytesMut {
        std::mem::take(&mut self.output)
    }

    /// Whether there are bytes to write.
    pub fn has_output(&self) -> bool {
        !self.output.is_empty()
    }

    /// Whether the connection is closed (by either side): write what output is left and end.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The host name the peer's open names (`hostname`, the virtual host it connects to: the
    /// SDKs send the hub's or the service's host name), if it named one.
    pub fn peer_hostname(&self) -> Option<&str> {
        self.peer_hostname.as_deref()
    }

    /// Whether the peer has opened the connection.
    pub fn is_open(&self) -> bool {
        self.state == State::Opened
    }

    /// How often the server must send something for the peer not to time it out: half the
    /// peer's idle time-out, as §2.4.5 advises.
    pub fn heartbeat_interval(&self) -> Option<Duration> {
        self.peer_idle_timeout.map(|t| t / 2)
    }

    /// Writes an empty frame (call when nothing else was written for
    /// [`Connection::heartbeat_interval`]).
    pub fn heartbeat(&mut self) {
        if self.state == State::Opened {
            frame::write_empty(&mut self.output);
        }
    }

    fn with_link<R>(&mut self, link: LinkId, f: impl FnOnce(&mut Session, &mut session::Ctx<'_>) -> R) -> Option<R> {
        if self.state != State::Opened {
            return None;
        }
        let (sessions, mut ctx) = self.sessions_and_ctx();
        let session = sessions.iter_mut().find(|s| s.has_link(link))?;
        Some(f(session, &mut ctx))
    }

    /// The sessions, and apart from them what their handlers need of the connection.
    fn sessions_and_ctx(&mut self) -> (&mut Vec<Session>, session::Ctx<'_>) {
        let ctx = session::Ctx {
            limits: &self.limits,
            output: &mut self.output,
            events: &mut self.events,
            peer_max_frame: self.peer_max_frame,
            last_link: &mut self.last_link,
        };
        (&mut self.sessions, ctx)
    }

    /// The server's open: its limits, and the idle time-out it holds the peer to.
    fn open_frame(&self, idle_time_out: Option<u32>) -> Open {
        Open {
            container_id: self.limits.container_id.clone(),
            hostname: None,
            max_frame_size: self.limits.max_frame.into(),
            channel_max: self.limits.channel_max.into(),
            idle_time_out,
            outgoing_locales: None,
            incoming_locales: None,
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        }
    }

    /// Attaches a link the peer asked for ([`Event::Attach`]); on a link the server receives on,
    /// the peer gets `credit` messages it may send at a time (renewed as they arrive).
    pub fn accept(&mut self, link: LinkId, credit: u32) {
        self.with_link(link, |s, ctx| s.accept(link, credit, ctx));
    }

    /// Refuses a link the peer asked for, as §2.6.3 says: the answering attach carries no
    /// terminus, and a detach with `error` follows.
    pub fn refuse(&mut self, link: LinkId, error: Error) {
        self.with_link(link, |s, ctx| s.refuse(link, error, ctx));
    }

    /// Detaches (closes) a link, with an error if there is one.
    pub fn detach(&mut self, link: LinkId, error: Option<Error>) {
        self.with_link(link, |s, ctx| s.detach(link, error, ctx));
    }

    /// Sends a message (its encoded sections) on a link the server sends on. With a `token` the
    /// message goes unsettled and its outcome comes back as [`Event::Outcome`] (or
    /// [`Event::Lost`]); without, it goes settled unless the peer asked for unsettled messages.
    /// Without credit from the peer it waits in the link's queue.
    pub fn send(&mut self, link: LinkId, message: Bytes, token: Option<u64>) -> Result<(), SendError> {
        match self.with_link(link, |s, ctx| s.send(link, message, token, ctx)) {
            Some(r) => r,
            None => Err(SendError::NotAttached),
        }
    }

    /// How many more messages `link` can take now (the peer's credit and window, less what is
    /// queued); 0 for a link that is not attached.
    pub fn room(&mut self, link: LinkId) -> u32 {
        self.with_link(link, |s, _| s.room(link)).unwrap_or(0)
    }

    /// Settles a message the peer sent unsettled, with its outcome.
    pub fn settle(&mut self, delivery: DeliveryRef, state: DeliveryState) {
        self.with_link(delivery.link, |s, ctx| s.settle(delivery, state, ctx));
    }

    /// Closes the connection, with an error if there is one. Messages sent with a token and not
    /// yet settled are reported [`Event::Lost`].
    pub fn close(&mut self, error: Option<Error>) {
        if self.state == State::Closed {
            return;
        }
        if self.state == State::Opened || self.state == State::Open {
            if self.state == State::Open {
                // §2.4.5: a close before the open is answered needs an open first.
                let open = self.open_frame(None);
                frame::write(&mut self.output, 0, &open, &[]);
            }
            frame::write(&mut self.output, 0, &Close { error }, &[]);
        }
        self.lose_all();
        self.state = State::Closed;
    }

    /// Reports every tracked message still unsettled as lost and forgets the sessions.
    fn lose_all(&mut self) {
        for mut s in self.sessions.drain(..) {
            s.lose_all(&mut self.events);
        }
    }
}

/// A performative's name, for errors.
fn name(p: &Performative) -> &'static str {
    match p {
        Performative::Open(_) => "open",
        Performative::Begin(_) => "begin",
        Performative::Attach(_) => "attach",
        Performative::Flow(_) => "flow",
        Performative::Transfer(_) => "transfer",
        Performative::Disposition(_) => "disposition",
        Performative::Detach(_) => "detach",
        Performative::End(_) => "end",
        Performative::Close(_) => "close",
    }
}

#[cfg(test)]
mod tests;

//! One session (§2.5) and its links (§2.6): session windows, link credit, deliveries and their
//! settlement. Transfer and delivery numbers are serial numbers (RFC 1982): all arithmetic on
//! them wraps.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use fe2o3_amqp_types::definitions::{Handle, ReceiverSettleMode, Role, SenderSettleMode};
use fe2o3_amqp_types::messaging::{Accepted, DeliveryState, TargetArchetype};
use fe2o3_amqp_types::performatives::{Attach, Begin, Detach, Disposition, End, Flow, Performative, Transfer};
use serde_amqp::primitives::Binary;

use super::{frame, DeliveryRef, Direction, Error, Event, Limits, LinkId, ProtocolError, SendError};

/// Transfers the server takes from the peer before it renews the session's incoming window.
const INCOMING_WINDOW: u32 = 2048;

/// The outgoing window the server announces (informational: the peer's incoming window bounds
/// what the server sends).
const OUTGOING_WINDOW: u32 = 2048;

/// Bytes kept free in each outgoing transfer frame for the frame header and the transfer
/// performative (at most ~70 bytes with a 16-byte delivery tag).
const TRANSFER_OVERHEAD: usize = 128;

/// What a session's handlers need of their connection.
pub(crate) struct Ctx<'a> {
    pub(crate) limits: &'a Limits,
    pub(crate) output: &'a mut BytesMut,
    pub(crate) events: &'a mut VecDeque<Event>,
    pub(crate) peer_max_frame: usize,
    pub(crate) last_link: &'a mut u32,
}

/// One session the peer began.
#[derive(Debug)]
pub(crate) struct Session {
    /// The server's channel for it.
    pub(crate) channel: u16,
    /// The peer's channel for it.
    pub(crate) remote_channel: u16,
    /// The transfer number of the server's next transfer.
    next_outgoing_id: u32,
    /// Transfers the peer still takes.
    remote_incoming_window: u32,
    /// The transfer number the peer's next transfer carries.
    next_incoming_id: u32,
    /// Transfers the server still takes before it renews the window.
    incoming_window: u32,
    links: Vec<Link>,
}

/// Where a link is.
#[derive(Debug)]
enum LinkState {
    /// The peer attached; the server has not answered. Its attach is kept for the answer.
    Asked(Box<Attach>),
    Attached,
    /// The server detached it and waits for the peer's detach.
    Detaching,
    /// The server refused it and waits for the peer's detach (the owner never had it).
    Refused,
}

#[derive(Debug)]
struct Link {
    id: LinkId,
    handle: u32,
    remote_handle: u32,
    direction: Direction,
    state: LinkState,
    /// Messages that went through the link (§2.6.7 delivery-count): the peer's count on a link
    /// the server receives on, the server's on one it sends on.
    delivery_count: u32,
    /// Messages the other side may still send: the peer on a receiving link, the server on a
    /// sending one.
    credit: u32,
    /// The credit the server grants on a receiving link, renewed when half is used.
    granted: u32,
    /// How the peer asked the server to settle what it sends.
    send_settle: SenderSettleMode,
    /// Messages waiting for credit, with their tokens.
    queue: VecDeque<(Bytes, Option<u64>)>,
    /// Messages sent unsettled with a token: (delivery id, token).
    unsettled: Vec<(u32, u64)>,
}

impl Session {
    /// Answers the peer's begin on `remote_channel` with the session on `channel`.
    pub(crate) fn begin(channel: u16, remote_channel: u16, begin: &Begin, output: &mut BytesMut) -> Self {
        let answer = Begin {
            remote_channel: Some(remote_channel),
            next_outgoing_id: 0,
            incoming_window: INCOMING_WINDOW,
            outgoing_window: OUTGOING_WINDOW,
            // One below the default, so that it is written out: a default field is left off the
            // wire, and Python's `azure-eventhub` (pyamqp) then takes the handle limit as None
            // and fails on its first link.
            handle_max: Handle(u32::MAX - 1),
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        };
        frame::write(output, channel, &answer, &[]);
        Self {
            channel,
            remote_channel,
            next_outgoing_id: 0,
            remote_incoming_window: begin.incoming_window,
            next_incoming_id: begin.next_outgoing_id,
            incoming_window: INCOMING_WINDOW,
            links: Vec::new(),
        }
    }

    pub(crate) fn has_link(&self, id: LinkId) -> bool {
        self.links.iter().any(|l| l.id == id)
    }

    fn link_index(&self, id: LinkId) -> Option<usize> {
        self.links.iter().position(|l| l.id == id)
    }

    fn remote_handle_index(&self, handle: u32) -> Option<usize> {
        self.links.iter().position(|l| l.remote_handle == handle)
    }

    fn by_remote_handle(&self, handle: u32, what: &str) -> Result<usize, ProtocolError> {
        self.remote_handle_index(handle)
            .ok_or_else(|| ProtocolError::NotAllowed(format!("{what} on handle {handle}, which is not attached")))
    }

    /// Acts on a performative of this session; `Ok(true)` when the session ended.
    pub(crate) fn on_performative(
        &mut self,
        p: Performative,
        payload: Bytes,
        ctx: &mut Ctx<'_>,
    ) -> Result<bool, ProtocolError> {
        match p {
            Performative::Attach(a) => self.on_attach(a, ctx)?,
            Performative::Flow(f) => self.on_flow(&f, ctx)?,
            Performative::Transfer(t) => self.on_transfer(&t, payload, ctx)?,
            Performative::Disposition(d) => self.on_disposition(&d, ctx),
            Performative::Detach(d) => self.on_detach(d, ctx)?,
            Performative::End(_) => {
                frame::write(ctx.output, self.channel, &End { error: None }, &[]);
                self.lose_all(ctx.events);
                return Ok(true);
            }
            Performative::Open(_) | Performative::Begin(_) | Performative::Close(_) => {
                unreachable!("connection performatives are handled by the connection")
            }
        }
        Ok(false)
    }

    fn on_attach(&mut self, a: Attach, ctx: &mut Ctx<'_>) -> Result<(), ProtocolError> {
        // Links over the cap are refused, and a refused link stays until the peer answers the
        // refusal with its detach; a peer that keeps attaching without answering is closed
        // rather than allowed to make the session hold refusals without end.
        if self.links.len() >= 2 * ctx.limits.max_links_per_session {
            return Err(ProtocolError::Limit(format!(
                "{} links attached or refused on one session without detaching",
                self.links.len()
            )));
        }
        if self.remote_handle_index(a.handle.0).is_some() {
            return Err(ProtocolError::NotAllowed(format!(
                "handle {} is already attached",
                a.handle.0
            )));
        }
        let direction = match a.role {
            Role::Sender => Direction::FromPeer,
            Role::Receiver => Direction::ToPeer,
        };
        let address = match direction {
            Direction::FromPeer => a.target.as_deref().and_then(|t| match t {
                TargetArchetype::Target(t) => t.address.clone(),
                #[allow(unreachable_patterns)]
                _ => None,
            }),
            Direction::ToPeer => a.source.as_ref().and_then(|s| s.address.clone()),
        };
        let selector = a.source.as_ref().and_then(|s| selector_of(s.filter.as_ref()?));
        let api_version = a.properties.as_ref().and_then(api_version_of);
        let handle = (0..)
            .find(|h| self.links.iter().all(|l| l.handle != *h))
            .unwrap_or(u32::MAX);
        *ctx.last_link += 1;
        let id = LinkId(*ctx.last_link);
        let full = self.links.len() >= ctx.limits.max_links_per_session;
        self.links.push(Link {
            id,
            handle,
            remote_handle: a.handle.0,
            direction,
            delivery_count: a.initial_delivery_count.unwrap_or(0),
            send_settle: a.snd_settle_mode.clone(),
            state: LinkState::Asked(Box::new(a)),
            credit: 0,
            granted: 0,
            queue: VecDeque::new(),
            unsettled: Vec::new(),
        });
        if full {
            let error = Error::new(
                fe2o3_amqp_types::definitions::AmqpError::ResourceLimitExceeded,
                Some(format!(
                    "at most {} links per session",
                    ctx.limits.max_links_per_session
                )),
                None,
            );
            self.refuse(id, error, ctx);
            return Ok(());
        }
        ctx.events.push_back(Event::Attach {
            link: id,
            direction,
            address: address.unwrap_or_default(),
            selector,
            api_version,
        });
        Ok(())
    }

    /// Answers an attach: the peer's terminus echoed, or none when `refused`.
    fn answer_attach(&mut self, i: usize, refused: bool, ctx: &mut Ctx<'_>) -> bool {
        let link = &mut self.links[i];
        let LinkState::Asked(asked) = std::mem::replace(&mut link.state, LinkState::Attached) else {
            return false;
        };
        let a = *asked;
        let ours_sends = link.direction == Direction::ToPeer;
        let answer = Attach {
            name: a.name,
            handle: Handle(link.handle),
            role: if ours_sends { Role::Sender } else { Role::Receiver },
            snd_settle_mode: a.snd_settle_mode,
            // The server settles what it receives at once (§2.6.12 "first").
            rcv_settle_mode: if ours_sends {
                a.rcv_settle_mode
            } else {
                ReceiverSettleMode::First
            },
            source: if refused && ours_sends { None } else { a.source },
            target: if refused && !ours_sends { None } else { a.target },
            unsettled: None,
            incomplete_unsettled: false,
            // Required of a sender; the C# SDK reads it on every link it receives on.
            initial_delivery_count: ours_sends.then_some(0),
            max_message_size: Some(ctx.limits.max_message_size),
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        };
        frame::write(ctx.output, self.channel, &answer, &[]);
        true
    }

    pub(crate) fn accept(&mut self, id: LinkId, credit: u32, ctx: &mut Ctx<'_>) {
        let Some(i) = self.link_index(id) else { return };
        if !self.answer_attach(i, false, ctx) {
            return;
        }
        let link = &mut self.links[i];
        if link.direction == Direction::FromPeer {
            link.granted = credit.max(1);
            link.credit = link.granted;
            self.write_link_flow(i, false, ctx);
        } else {
            // Credit the peer granted before the answer (it may flow right after its attach).
            self.pump(i, ctx);
            let link = &self.links[i];
            if link.queue.is_empty() && link.credit > 0 {
                ctx.events.push_back(Event::Credit { link: link.id });
            }
        }
    }

    /// How many more messages link `id` can take now: the peer's credit and session window,
    /// less what is queued.
    pub(crate) fn room(&self, id: LinkId) -> u32 {
        let Some(link) = self.links.iter().find(|l| l.id == id) else {
            return 0;
        };
        if !matches!(link.state, LinkState::Attached) {
            return 0;
        }
        link.credit
            .min(self.remote_incoming_window)
            .saturating_sub(link.queue.len() as u32)
    }

    pub(crate) fn refuse(&mut self, id: LinkId, error: Error, ctx: &mut Ctx<'_>) {
        let Some(i) = self.link_index(id) else { return };
        if !self.answer_attach(i, true, ctx) {
            return;
        }
        self.write_detach(i, Some(error), ctx);
        self.links[i].state = LinkState::Refused;
    }

    pub(crate) fn detach(&mut self, id: LinkId, error: Option<Error>, ctx: &mut Ctx<'_>) {
        let Some(i) = self.link_index(id) else { return };
        if matches!(self.links[i].state, LinkState::Attached) {
            self.write_detach(i, error, ctx);
        }
    }

    /// Writes the server's detach; the link stays (detaching) until the peer's answers.
    fn write_detach(&mut self, i: usize, error: Option<Error>, ctx: &mut Ctx<'_>) {
        let link = &mut self.links[i];
        link.state = LinkState::Detaching;
        let detach = Detach {
            handle: Handle(link.handle),
            closed: true,
            error,
        };
        frame::write(ctx.output, self.channel, &detach, &[]);
        lose(link, ctx.events);
    }

    fn on_detach(&mut self, d: Detach, ctx: &mut Ctx<'_>) -> Result<(), ProtocolError> {
        // A detach for a handle that is not attached (the link is already gone) changes
        // nothing: dropped, as Azure's AMQP stack drops it, where any other frame on such a
        // handle is an error.
        let Some(i) = self.remote_handle_index(d.handle.0) else {
            return Ok(());
        };
        let mut link = self.links.swap_remove(i);
        if matches!(link.state, LinkState::Refused) {
            return Ok(());
        }
        if !matches!(link.state, LinkState::Detaching) {
            let answer = Detach {
                handle: Handle(link.handle),
                closed: d.closed,
                error: None,
            };
            frame::write(ctx.output, self.channel, &answer, &[]);
        }
        lose(&mut link, ctx.events);
        ctx.events.push_back(Event::Detached {
            link: link.id,
            error: d.error,
        });
        Ok(())
    }

    fn on_flow(&mut self, f: &Flow, ctx: &mut Ctx<'_>) -> Result<(), ProtocolError> {
        // §2.5.6: what the peer still takes, from its view of the server's transfers.
        self.remote_incoming_window = f
            .next_incoming_id
            .unwrap_or(0)
            .wrapping_add(f.incoming_window)
            .wrapping_sub(self.next_outgoing_id);
        let Some(handle) = &f.handle else {
            if f.echo {
                self.write_session_flow(ctx);
            }
            self.pump_all(ctx);
            return Ok(());
        };
        let i = self.by_remote_handle(handle.0, "flow")?;
        let link = &mut self.links[i];
        if link.direction == Direction::ToPeer {
            // §2.6.7: link-credit(snd) = delivery-count(rcv) + link-credit(rcv) − delivery-count(snd).
            let peer_count = f.delivery_count.unwrap_or(0);
            link.credit = peer_count
                .wrapping_add(f.link_credit.unwrap_or(0))
                .wrapping_sub(link.delivery_count);
            if link.credit > u32::MAX / 2 {
                link.credit = 0; // a count from before the server's last transfers
            }
            self.pump(i, ctx);
            let link = &mut self.links[i];
            if f.drain && link.queue.is_empty() && link.credit > 0 {
                // §2.6.7 drain: use up the credit at once.
                link.delivery_count = link.delivery_count.wrapping_add(link.credit);
                link.credit = 0;
                self.write_link_flow(i, true, ctx);
                return Ok(());
            }
            if link.queue.is_empty() && link.credit > 0 && matches!(link.state, LinkState::Attached) {
                ctx.events.push_back(Event::Credit { link: link.id });
            }
        }
        if f.echo {
            self.write_link_flow(i, false, ctx);
        }
        self.pump_all(ctx);
        Ok(())
    }

    fn on_transfer(&mut self, t: &Transfer, payload: Bytes, ctx: &mut Ctx<'_>) -> Result<(), ProtocolError> {
        let i = self.by_remote_handle(t.handle.0, "transfer")?;
        if self.incoming_window == 0 {
            return Err(ProtocolError::Limit(
                "a transfer beyond the session's incoming window".into(),
            ));
        }
        self.incoming_window -= 1;
        if let Some(id) = t.delivery_id {
            self.next_incoming_id = id.wrapping_add(1);
        } else {
            self.next_incoming_id = self.next_incoming_id.wrapping_add(1);
        }
        if self.incoming_window < INCOMING_WINDOW / 2 {
            self.incoming_window = INCOMING_WINDOW;
            self.write_session_flow(ctx);
        }
        let link = &mut self.links[i];
        match (&link.state, link.direction) {
            (LinkState::Attached, Direction::FromPeer) => {}
            // Sent before the peer saw the server's detach: dropped with the link.
            (LinkState::Detaching | LinkState::Refused, _) => return Ok(()),
            (_, Direction::ToPeer) => {
                return Err(ProtocolError::NotAllowed(
                    "a transfer on a link where the peer receives".into(),
                ))
            }
            (LinkState::Asked(_), _) => {
                return Err(ProtocolError::Limit(
                    "a transfer before the link was granted credit".into(),
                ))
            }
        }
        if link.credit == 0 {
            return Err(ProtocolError::Limit("a transfer beyond the link's credit".into()));
        }
        link.credit -= 1;
        link.delivery_count = link.delivery_count.wrapping_add(1);
        if t.aborted {
            return Ok(());
        }
        let link = &self.links[i];
        let delivery = if t.settled == Some(true) {
            None
        } else {
            let id = t
                .delivery_id
                .ok_or_else(|| ProtocolError::Decode("an unsettled transfer without a delivery id".into()))?;
            Some(DeliveryRef { link: link.id, id })
        };
        ctx.events.push_back(Event::Message {
            link: link.id,
            delivery,
            message: payload,
        });
        Ok(())
    }

    fn on_disposition(&mut self, d: &Disposition, ctx: &mut Ctx<'_>) {
        if d.role != Role::Receiver {
            // The peer settling its own deliveries: the server settled them already.
            return;
        }
        let first = d.first;
        let span = d.last.unwrap_or(first).wrapping_sub(first);
        let terminal = d.state.as_ref().is_none_or(DeliveryState::is_terminal);
        if !terminal {
            return;
        }
        let in_range = |id: u32| id.wrapping_sub(first) <= span;
        for link in &mut self.links {
            link.unsettled.retain(|(id, token)| {
                if !in_range(*id) {
                    return true;
                }
                // Settled without a state: the peer is done with it (taken as accepted).
                let state = d.state.clone().unwrap_or(DeliveryState::Accepted(Accepted {}));
                ctx.events.push_back(Event::Outcome { token: *token, state });
                false
            });
        }
        if !d.settled {
            // The peer settles second (§2.6.12): the server settles now, with the peer's outcome.
            let settle = Disposition {
                role: Role::Sender,
                first,
                last: d.last,
                settled: true,
                state: d.state.clone(),
                batchable: false,
            };
            frame::write(ctx.output, self.channel, &settle, &[]);
        }
    }

    pub(crate) fn settle(&mut self, delivery: DeliveryRef, state: DeliveryState, ctx: &mut Ctx<'_>) {
        let disposition = Disposition {
            role: Role::Receiver,
            first: delivery.id,
            last: None,
            settled: true,
            state: Some(state),
            batchable: false,
        };
        frame::write(ctx.output, self.channel, &disposition, &[]);
    }

    pub(crate) fn send(
        &mut self,
        id: LinkId,
        message: Bytes,
        token: Option<u64>,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), SendError> {
        let i = self.link_index(id).ok_or(SendError::NotAttached)?;
        let link = &mut self.links[i];
        if !matches!(link.state, LinkState::Attached) || link.direction != Direction::ToPeer {
            return Err(SendError::NotAttached);
        }
        if link.queue.len() >= ctx.limits.max_queued_per_link {
            return Err(SendError::QueueFull);
        }
        link.queue.push_back((message, token));
        self.pump(i, ctx);
        Ok(())
    }

    fn pump_all(&mut self, ctx: &mut Ctx<'_>) {
        for i in 0..self.links.len() {
            self.pump(i, ctx);
        }
    }

    /// Sends what is queued on link `i` as far as credit and the peer's window allow.
    fn pump(&mut self, i: usize, ctx: &mut Ctx<'_>) {
        loop {
            let link = &mut self.links[i];
            if !matches!(link.state, LinkState::Attached) || link.credit == 0 || self.remote_incoming_window == 0 {
                return;
            }
            let Some((message, token)) = link.queue.pop_front() else {
                return;
            };
            let delivery_id = self.next_outgoing_id;
            self.next_outgoing_id = self.next_outgoing_id.wrapping_add(1);
            self.remote_incoming_window -= 1;
            link.credit -= 1;
            link.delivery_count = link.delivery_count.wrapping_add(1);
            let settled = match link.send_settle {
                SenderSettleMode::Settled => true,
                SenderSettleMode::Unsettled => false,
                SenderSettleMode::Mixed => token.is_none(),
            };
            if let Some(token) = token {
                if settled {
                    // The peer asked for settled messages: sent is all it will say.
                    ctx.events.push_back(Event::Outcome {
                        token,
                        state: DeliveryState::Accepted(Accepted {}),
                    });
                } else {
                    link.unsettled.push((delivery_id, token));
                }
            }
            // The delivery id is unique among the session's deliveries in flight, so it makes the
            // tag; 16 bytes, because the C# SDK reads a cloud-to-device message's tag as its lock
            // token (a GUID).
            let tag = Binary::from(u128::from(delivery_id).to_be_bytes().to_vec());
            let chunk = ctx.peer_max_frame.saturating_sub(TRANSFER_OVERHEAD).max(256);
            let handle = Handle(link.handle);
            let mut rest = &message[..];
            let mut first = true;
            loop {
                let n = rest.len().min(chunk);
                let (part, more) = (&rest[..n], n < rest.len());
                let transfer = Transfer {
                    handle: handle.clone(),
                    delivery_id: first.then_some(delivery_id),
                    delivery_tag: if first { Some(tag.clone()) } else { None },
                    message_format: first.then_some(0),
                    settled: first.then_some(settled),
                    more,
                    rcv_settle_mode: None,
                    state: None,
                    resume: false,
                    aborted: false,
                    batchable: false,
                };
                frame::write(ctx.output, self.channel, &transfer, part);
                rest = &rest[n..];
                first = false;
                if !more {
                    break;
                }
            }
        }
    }

    /// Renews the credit of every receiving link that used half of it. Called once the bytes
    /// at hand are processed, not per message: within what one read brought, a peer cannot send
    /// more than it was granted, so the credit bounds the messages one read hands the server.
    pub(crate) fn renew_credit(&mut self, ctx: &mut Ctx<'_>) {
        for i in 0..self.links.len() {
            let link = &mut self.links[i];
            if matches!(link.state, LinkState::Attached)
                && link.direction == Direction::FromPeer
                && link.credit <= link.granted / 2
            {
                link.credit = link.granted;
                self.write_link_flow(i, false, ctx);
            }
        }
    }

    /// Writes the session's flow state (no link).
    fn write_session_flow(&self, ctx: &mut Ctx<'_>) {
        frame::write(ctx.output, self.channel, &self.flow(), &[]);
    }

    fn flow(&self) -> Flow {
        Flow {
            next_incoming_id: Some(self.next_incoming_id),
            incoming_window: self.incoming_window,
            next_outgoing_id: self.next_outgoing_id,
            outgoing_window: OUTGOING_WINDOW,
            handle: None,
            delivery_count: None,
            link_credit: None,
            available: None,
            drain: false,
            echo: false,
            properties: None,
        }
    }

    /// Writes link `i`'s flow state.
    fn write_link_flow(&self, i: usize, drain: bool, ctx: &mut Ctx<'_>) {
        let link = &self.links[i];
        let flow = Flow {
            handle: Some(Handle(link.handle)),
            delivery_count: Some(link.delivery_count),
            link_credit: Some(link.credit),
            available: (link.direction == Direction::ToPeer).then_some(link.queue.len() as u32),
            drain,
            ..self.flow()
        };
        frame::write(ctx.output, self.channel, &flow, &[]);
    }

    /// Reports every tracked message of every link lost (the session or connection ended).
    pub(crate) fn lose_all(&mut self, events: &mut VecDeque<Event>) {
        for mut link in self.links.drain(..) {
            lose(&mut link, events);
            if matches!(link.state, LinkState::Attached) {
                events.push_back(Event::Detached {
                    link: link.id,
                    error: None,
                });
            }
        }
    }
}

/// Reports a link's tracked messages (queued or unsettled) lost.
fn lose(link: &mut Link, events: &mut VecDeque<Event>) {
    for (_, token) in link.queue.drain(..) {
        if let Some(token) = token {
            events.push_back(Event::Lost { token });
        }
    }
    for (_, token) in link.unsettled.drain(..) {
        events.push_back(Event::Lost { token });
    }
}

/// The string of a source's selector filter (`apache.org:selector-filter:string`), described by
/// its code (Node) or its name (Python), or given bare.
/// The `com.microsoft:api-version` link property, a string (or a symbol, leniently).
fn api_version_of(properties: &fe2o3_amqp_types::definitions::Fields) -> Option<String> {
    let key = serde_amqp::primitives::Symbol::from(crate::dps_amqp::API_VERSION_PROPERTY);
    match properties.get(&key)? {
        serde_amqp::Value::String(s) => Some(s.clone()),
        serde_amqp::Value::Symbol(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

fn selector_of(filter: &fe2o3_amqp_types::messaging::FilterSet) -> Option<String> {
    use crate::event_hubs::{SELECTOR_FILTER, SELECTOR_FILTER_CODE};
    use serde_amqp::descriptor::Descriptor;
    use serde_amqp::Value;
    filter.iter().find_map(|(key, value)| {
        let inner = match value {
            Value::Described(d) => {
                let ours = match &d.descriptor {
                    Descriptor::Code(c) => *c == SELECTOR_FILTER_CODE,
                    Descriptor::Name(n) => n.as_str() == SELECTOR_FILTER,
                };
                if !ours {
                    return None;
                }
                &d.value
            }
            other if key.as_str() == SELECTOR_FILTER => other,
            _ => return None,
        };
        match inner {
            Value::String(s) => Some(s.clone()),
            _ => None,
        }
    })
}

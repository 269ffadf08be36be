//! The connection state machine driven by a scripted peer: frames in, events and frames out.

use bytes::{Bytes, BytesMut};
use fe2o3_amqp_types::definitions::{AmqpError, ErrorCondition, Handle, ReceiverSettleMode, Role, SenderSettleMode};
use fe2o3_amqp_types::messaging::{Accepted, DeliveryState, Released, Source, Target, TargetArchetype};
use fe2o3_amqp_types::performatives::{
    Attach, Begin, Close, Detach, Disposition, End, Flow, Open, Performative, Transfer,
};
use serde_amqp::primitives::Binary;

use super::*;

fn limits() -> Limits {
    Limits {
        container_id: "test".into(),
        max_frame: 4096,
        channel_max: 1,
        max_links_per_session: 2,
        idle_timeout: Duration::from_secs(240),
        max_queued_per_link: 2,
        max_message_size: 1000,
    }
}

/// The peer's side: frames it sends, and the server's frames it reads back.
struct Peer {
    conn: Connection,
}

impl Peer {
    /// A connection through header, open and begin on channel 5.
    fn opened() -> Self {
        Self::opened_with(None)
    }

    fn opened_with(max_frame: Option<u32>) -> Self {
        let mut p = Peer {
            conn: Connection::new(limits()),
        };
        p.conn.feed(&PROTOCOL_HEADER).unwrap();
        p.send(0, &open(max_frame)).unwrap();
        p.send(5, &begin()).unwrap();
        let out = p.frames();
        assert!(
            matches!(&out[..], [(0, Performative::Open(_)), (0, Performative::Begin(b))] if b.remote_channel == Some(5))
        );
        p
    }

    fn send(&mut self, channel: u16, performative: &impl serde::Serialize) -> Result<(), ProtocolError> {
        self.send_with(channel, performative, &[])
    }

    fn send_with(
        &mut self,
        channel: u16,
        performative: &impl serde::Serialize,
        payload: &[u8],
    ) -> Result<(), ProtocolError> {
        let mut bytes = BytesMut::new();
        frame::write(&mut bytes, channel, performative, payload);
        self.conn.feed(&bytes)
    }

    /// The server's frames since the last call (the protocol header skipped), with payloads
    /// dropped.
    fn frames(&mut self) -> Vec<(u16, Performative)> {
        self.frames_with_payload().into_iter().map(|(c, p, _)| (c, p)).collect()
    }

    fn frames_with_payload(&mut self) -> Vec<(u16, Performative, Bytes)> {
        let mut out = self.conn.take_output();
        if out.starts_with(&PROTOCOL_HEADER) {
            let _ = out.split_to(8);
        }
        let mut frames = Vec::new();
        while let Some(bytes) = frame::cut(&mut out, usize::MAX).unwrap() {
            frames.extend(read_frame(&bytes));
        }
        frames
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.conn.poll_event()).collect()
    }

    /// [`Peer::events`] without the credit notices (what most tests do not look at).
    fn events_but_credit(&mut self) -> Vec<Event> {
        let mut events = self.events();
        events.retain(|e| !matches!(e, Event::Credit { .. }));
        events
    }

    /// Attaches a link with the peer's `role` to `address` on handle `handle`; returns its id.
    fn attach(&mut self, handle: u32, role: Role, address: &str) -> LinkId {
        let sends = matches!(role, Role::Sender);
        self.send(5, &attach(handle, role, address)).unwrap();
        match &self.events()[..] {
            [Event::Attach {
                link,
                address: a,
                direction,
                ..
            }] => {
                assert_eq!(a, address);
                assert_eq!(*direction == Direction::FromPeer, sends);
                *link
            }
            other => panic!("{other:?}"),
        }
    }
}

/// One frame the server wrote: channel, performative and payload (`None` for a heartbeat).
/// Read without the checks peers' frames get: the server's may carry part of a message.
fn read_frame(bytes: &[u8]) -> Option<(u16, Performative, Bytes)> {
    let channel = u16::from_be_bytes([bytes[6], bytes[7]]);
    let body = &bytes[usize::from(bytes[4]) * 4..];
    if body.is_empty() {
        return None;
    }
    let mut cursor = std::io::Cursor::new(body);
    let performative: Performative = serde_amqp::from_reader(&mut cursor).unwrap();
    let payload = Bytes::copy_from_slice(&body[cursor.position() as usize..]);
    Some((channel, performative, payload))
}

/// A message of one data section holding `bytes`.
fn data(bytes: &[u8]) -> Bytes {
    let mut m = vec![0x00, 0x53, 0x75, 0xa0, bytes.len() as u8];
    m.extend_from_slice(bytes);
    Bytes::from(m)
}

fn open(max_frame: Option<u32>) -> Open {
    Open {
        container_id: "peer".into(),
        hostname: Some("hub.example".into()),
        max_frame_size: max_frame.unwrap_or(u32::MAX).into(),
        channel_max: 7.into(),
        idle_time_out: Some(60_000),
        outgoing_locales: None,
        incoming_locales: None,
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    }
}

fn begin() -> Begin {
    Begin {
        remote_channel: None,
        next_outgoing_id: 100,
        incoming_window: 10,
        outgoing_window: 10,
        handle_max: Handle(u32::MAX),
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    }
}

fn attach(handle: u32, role: Role, address: &str) -> Attach {
    let sends = matches!(role, Role::Sender);
    Attach {
        name: format!("link-{handle}"),
        handle: Handle(handle),
        role,
        snd_settle_mode: SenderSettleMode::Mixed,
        rcv_settle_mode: ReceiverSettleMode::First,
        source: Some(Box::new(Source::builder().address(address).build())),
        target: Some(Box::new(TargetArchetype::Target(
            Target::builder().address(address).build(),
        ))),
        unsettled: None,
        incomplete_unsettled: false,
        initial_delivery_count: sends.then_some(0),
        max_message_size: None,
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    }
}

fn transfer(handle: u32, id: u32, settled: bool) -> Transfer {
    Transfer {
        handle: Handle(handle),
        delivery_id: Some(id),
        delivery_tag: Some(Binary::from(id.to_be_bytes().to_vec())),
        message_format: Some(0),
        settled: Some(settled),
        more: false,
        rcv_settle_mode: None,
        state: None,
        resume: false,
        aborted: false,
        batchable: false,
    }
}

fn link_flow(handle: u32, delivery_count: u32, credit: u32) -> Flow {
    Flow {
        next_incoming_id: Some(0),
        incoming_window: 10,
        next_outgoing_id: 100,
        outgoing_window: 10,
        handle: Some(Handle(handle)),
        delivery_count: Some(delivery_count),
        link_credit: Some(credit),
        available: None,
        drain: false,
        echo: false,
        properties: None,
    }
}

#[test]
fn messages_from_the_peer_arrive_within_credit_and_are_settled() {
    let mut p = Peer::opened();
    let link = p.attach(3, Role::Sender, "/devices/d/messages/events");
    p.conn.accept(link, 4);
    let out = p.frames();
    match &out[..] {
        [(0, Performative::Attach(a)), (0, Performative::Flow(f))] => {
            assert_eq!(
                (a.role.clone(), a.handle.0, a.rcv_settle_mode.clone()),
                (Role::Receiver, 0, ReceiverSettleMode::First)
            );
            assert_eq!(a.max_message_size, Some(1000));
            assert!(a.target.is_some());
            assert_eq!(
                (f.handle.clone(), f.link_credit, f.delivery_count),
                (Some(Handle(0)), Some(4), Some(0))
            );
            assert_eq!(
                f.next_incoming_id,
                Some(100),
                "the peer's next-outgoing-id from its begin"
            );
        }
        other => panic!("{other:?}"),
    }
    let mut both = BytesMut::new();
    frame::write(&mut both, 5, &transfer(3, 100, false), &data(b"x"));
    frame::write(&mut both, 5, &transfer(3, 101, true), &data(b"y"));
    p.conn.feed(&both).unwrap();
    let events = p.events();
    let delivery = match &events[..] {
        [Event::Message {
            link: l1,
            delivery: Some(d),
            message: m1,
        }, Event::Message {
            delivery: None,
            message: m2,
            ..
        }] => {
            assert_eq!(*l1, link);
            assert_eq!((m1, m2), (&data(b"x"), &data(b"y")));
            *d
        }
        other => panic!("{other:?}"),
    };
    // Half the credit used: renewed once the read is processed.
    assert!(
        matches!(&p.frames()[..], [(0, Performative::Flow(f))] if f.link_credit == Some(4) && f.delivery_count == Some(2))
    );
    p.conn.settle(delivery, DeliveryState::Accepted(Accepted {}));
    assert!(matches!(&p.frames()[..], [(0, Performative::Disposition(d))]
        if d.role == Role::Receiver && d.first == 100 && d.settled && matches!(d.state, Some(DeliveryState::Accepted(_)))));
}

#[test]
fn a_transfer_beyond_credit_closes_the_connection() {
    let mut p = Peer::opened();
    let link = p.attach(0, Role::Sender, "x");
    p.conn.accept(link, 2);
    p.frames();
    // Within one read the peer may send what it was granted, and not more.
    let mut burst = BytesMut::new();
    for id in 0..3 {
        frame::write(&mut burst, 5, &transfer(0, id, true), &data(b"m"));
    }
    let err = p.conn.feed(&burst).unwrap_err();
    assert!(matches!(err, ProtocolError::Limit(_)), "{err}");
    assert!(p.conn.is_closed());
    assert!(matches!(&p.frames().last(), Some((0, Performative::Close(c)))
        if c.error.as_ref().is_some_and(|e| e.condition == ErrorCondition::AmqpError(AmqpError::ResourceLimitExceeded))));
}

#[test]
fn messages_to_the_peer_wait_for_credit_and_report_their_outcome() {
    let mut p = Peer::opened();
    let link = p.attach(1, Role::Receiver, "/devices/d/messages/devicebound");
    p.conn.accept(link, 0);
    match &p.frames()[..] {
        [(0, Performative::Attach(a))] => {
            assert_eq!((a.role.clone(), a.initial_delivery_count), (Role::Sender, Some(0)));
            assert!(a.source.is_some());
        }
        other => panic!("{other:?}"),
    }
    p.conn.send(link, data(b"one"), Some(7)).unwrap();
    p.conn.send(link, data(b"two"), None).unwrap();
    assert_eq!(p.conn.send(link, data(b"three"), None), Err(SendError::QueueFull));
    assert!(p.frames().is_empty(), "no credit yet");
    p.send(5, &link_flow(1, 0, 5)).unwrap();
    let frames = p.frames_with_payload();
    match &frames[..] {
        [(0, Performative::Transfer(t1), b1), (0, Performative::Transfer(t2), b2)] => {
            assert_eq!(
                (t1.delivery_id, t1.settled, &b1[..]),
                (Some(0), Some(false), &data(b"one")[..])
            );
            assert_eq!(
                (t2.delivery_id, t2.settled, &b2[..]),
                (Some(1), Some(true), &data(b"two")[..])
            );
            assert_eq!(t1.delivery_tag.as_ref().map(|t| t.len()), Some(16));
            assert_ne!(t1.delivery_tag, t2.delivery_tag);
        }
        other => panic!("{other:?}"),
    }
    // Three credits left and nothing queued: the server may send more, and is told so.
    assert_eq!(p.conn.room(link), 3);
    assert!(matches!(&p.events()[..], [Event::Credit { link: l }] if *l == link));
    // The peer settles second: the server settles after it, and reports the outcome.
    let disposition = Disposition {
        role: Role::Receiver,
        first: 0,
        last: Some(1),
        settled: false,
        state: Some(DeliveryState::Released(Released {})),
        batchable: false,
    };
    p.send(5, &disposition).unwrap();
    assert!(matches!(
        &p.events_but_credit()[..],
        [Event::Outcome {
            token: 7,
            state: DeliveryState::Released(_)
        }]
    ));
    assert!(
        matches!(&p.frames()[..], [(0, Performative::Disposition(d))] if d.role == Role::Sender && d.settled && d.last == Some(1))
    );
}

#[test]
fn large_messages_to_the_peer_are_split_to_its_frame_size() {
    let mut p = Peer::opened_with(Some(512));
    let link = p.attach(0, Role::Receiver, "x");
    p.conn.accept(link, 0);
    p.send(5, &link_flow(0, 0, 1)).unwrap();
    p.frames();
    let message: Vec<u8> = (0..2000u32).map(|i| i as u8).collect();
    p.conn.send(link, Bytes::from(message.clone()), None).unwrap();
    let mut out = p.conn.take_output();
    let mut joined = Vec::new();
    let mut frames = 0;
    while let Some(bytes) = frame::cut(&mut out, 512).unwrap() {
        let Some((_, Performative::Transfer(t), payload)) = read_frame(&bytes) else {
            panic!()
        };
        assert_eq!(t.delivery_id.is_some(), frames == 0);
        joined.extend_from_slice(&payload);
        frames += 1;
        assert_eq!(t.more, joined.len() < message.len());
    }
    assert!(frames >= 4, "{frames} frames");
    assert_eq!(joined, message);
}

#[test]
fn refused_links_get_no_terminus_then_a_detach_with_the_error() {
    let mut p = Peer::opened();
    let link = p.attach(0, Role::Sender, "/devices/other/messages/events");
    let error = Error::new(AmqpError::UnauthorizedAccess, Some("not yours".into()), None);
    p.conn.refuse(link, error);
    match &p.frames()[..] {
        [(0, Performative::Attach(a)), (0, Performative::Detach(d))] => {
            assert!(a.target.is_none(), "{a:?}");
            assert!(d.closed);
            assert_eq!(
                d.error.as_ref().map(|e| e.condition.clone()),
                Some(ErrorCondition::AmqpError(AmqpError::UnauthorizedAccess))
            );
        }
        other => panic!("{other:?}"),
    }
    // The peer's answering detach ends it quietly; the handle may be used again.
    p.send(
        5,
        &Detach {
            handle: Handle(0),
            closed: true,
            error: None,
        },
    )
    .unwrap();
    assert!(p.frames().is_empty());
    p.attach(0, Role::Sender, "y");
}

#[test]
fn links_beyond_the_cap_are_refused_by_the_connection() {
    let mut p = Peer::opened();
    p.attach(0, Role::Sender, "a");
    p.attach(1, Role::Sender, "b");
    p.send(5, &attach(2, Role::Sender, "c")).unwrap();
    assert!(p.events().is_empty());
    assert!(
        matches!(&p.frames()[..], [(0, Performative::Attach(_)), (0, Performative::Detach(d))]
        if d.error.as_ref().is_some_and(|e| e.condition == ErrorCondition::AmqpError(AmqpError::ResourceLimitExceeded)))
    );
    // A peer that never answers the refusals is closed once they pile up.
    p.send(5, &attach(3, Role::Sender, "d")).unwrap();
    let err = p.send(5, &attach(4, Role::Sender, "e")).unwrap_err();
    assert!(matches!(err, ProtocolError::Limit(_)), "{err}");
    assert!(p.conn.is_closed());
}

#[test]
fn detach_end_and_close_are_answered_and_lose_what_is_in_flight() {
    let mut p = Peer::opened();
    let link = p.attach(0, Role::Receiver, "c2d");
    p.conn.accept(link, 0);
    p.send(5, &link_flow(0, 0, 1)).unwrap();
    p.conn.send(link, data(b"a"), Some(1)).unwrap();
    p.conn.send(link, data(b"b"), Some(2)).unwrap();
    p.frames();
    p.send(
        5,
        &Detach {
            handle: Handle(0),
            closed: true,
            error: None,
        },
    )
    .unwrap();
    assert!(matches!(&p.frames()[..], [(0, Performative::Detach(d))] if d.closed && d.handle.0 == 0));
    assert!(matches!(
        &p.events_but_credit()[..],
        [
            Event::Lost { token: 2 },
            Event::Lost { token: 1 },
            Event::Detached { .. }
        ]
    ));
    assert_eq!(p.conn.send(link, Bytes::new(), None), Err(SendError::NotAttached));

    let link = p.attach(0, Role::Receiver, "c2d");
    p.conn.accept(link, 0);
    p.conn.send(link, data(b"c"), Some(3)).unwrap();
    p.send(5, &End { error: None }).unwrap();
    assert!(matches!(p.frames().last(), Some((0, Performative::End(_)))));
    assert!(matches!(
        &p.events()[..],
        [Event::Lost { token: 3 }, Event::Detached { .. }]
    ));

    p.send(6, &begin()).unwrap();
    p.send(0, &Close { error: None }).unwrap();
    assert!(matches!(p.frames().last(), Some((0, Performative::Close(c))) if c.error.is_none()));
    assert!(p.conn.is_closed());
    assert!(matches!(&p.events()[..], [Event::Closed { error: None }]));
}

#[test]
fn sessions_are_capped_and_channels_checked() {
    let mut p = Peer::opened();
    p.send(6, &begin()).unwrap();
    assert!(matches!(&p.frames()[..], [(1, Performative::Begin(b))] if b.remote_channel == Some(6)));
    let err = p.send(7, &begin()).unwrap_err();
    assert!(matches!(err, ProtocolError::Limit(_)), "{err}");

    let mut p = Peer::opened();
    let err = p.send(9, &transfer(0, 0, true)).unwrap_err();
    assert!(matches!(err, ProtocolError::NotAllowed(_)), "{err}");
    let mut p = Peer::opened();
    let err = p.send(5, &transfer(4, 0, true)).unwrap_err();
    assert!(
        matches!(err, ProtocolError::NotAllowed(_)),
        "a handle never attached: {err}"
    );
}

/// pyamqp ends a session and then detaches its links (END, then DETACH on the same channel);
/// a detach or end for a channel or handle that is gone is dropped, as Azure's AMQP stack drops
/// it, and the connection serves on. Any other frame there is still a protocol error.
#[test]
fn detach_and_end_after_the_session_or_link_is_gone_are_dropped() {
    let mut p = Peer::opened();
    let link = p.attach(0, Role::Sender, "events");
    p.conn.accept(link, 1);
    p.frames();
    p.send(5, &End { error: None }).unwrap();
    assert!(matches!(&p.frames()[..], [(0, Performative::End(_))]));
    assert!(matches!(&p.events()[..], [Event::Detached { .. }]));
    let detach = Detach {
        handle: Handle(0),
        closed: true,
        error: None,
    };
    p.send(5, &detach).unwrap();
    p.send(5, &End { error: None }).unwrap();
    p.send(9, &End { error: None }).unwrap();
    assert!(!p.conn.is_closed());
    assert!(p.frames().is_empty() && p.events().is_empty());

    // The connection goes on: a new session, a detach of a handle it never attached.
    p.send(5, &begin()).unwrap();
    assert!(matches!(&p.frames()[..], [(0, Performative::Begin(b))] if b.remote_channel == Some(5)));
    p.send(5, &detach).unwrap();
    assert!(p.frames().is_empty() && !p.conn.is_closed());
    let link = p.attach(0, Role::Sender, "events");
    p.conn.accept(link, 1);
    assert!(matches!(
        &p.frames()[..],
        [(0, Performative::Attach(_)), (0, Performative::Flow(_))]
    ));

    let err = p.send(9, &transfer(0, 0, true)).unwrap_err();
    assert!(matches!(err, ProtocolError::NotAllowed(_)), "{err}");
    assert!(p.conn.is_closed());
}

#[test]
fn the_protocol_header_and_open_come_first() {
    let mut c = Connection::new(limits());
    assert!(matches!(c.feed(b"HTTP/1.1"), Err(ProtocolError::Framing(_))));
    assert_eq!(&c.take_output()[..8], &PROTOCOL_HEADER[..]);
    assert!(c.is_closed());

    let mut p = Peer {
        conn: Connection::new(limits()),
    };
    p.conn.feed(&PROTOCOL_HEADER[..3]).unwrap();
    p.conn.feed(&PROTOCOL_HEADER[3..]).unwrap();
    assert!(!p.conn.is_open());
    let err = p.send(0, &begin()).unwrap_err();
    assert!(matches!(err, ProtocolError::NotAllowed(_)), "{err}");
    // The close is preceded by the open the peer never got.
    assert!(matches!(
        &p.frames()[..],
        [(0, Performative::Open(_)), (0, Performative::Close(_))]
    ));
}

#[test]
fn the_peers_open_sets_heartbeats_and_frame_size() {
    let mut p = Peer::opened_with(Some(512));
    assert_eq!(p.conn.heartbeat_interval(), Some(Duration::from_secs(30)));
    // The virtual host it names tells which hub the connection is for.
    assert_eq!(p.conn.peer_hostname(), Some("hub.example"));
    p.conn.heartbeat();
    assert_eq!(&p.conn.take_output()[..], &[0, 0, 0, 8, 2, 0, 0, 0]);
    // Frames are cut at any byte boundary.
    let mut bytes = BytesMut::new();
    frame::write(&mut bytes, 5, &attach(0, Role::Sender, "split"), &[]);
    for b in bytes.chunks(3) {
        p.conn.feed(b).unwrap();
    }
    assert!(matches!(&p.events()[..], [Event::Attach { address, .. }] if address == "split"));
}

#[test]
fn drain_uses_up_the_credit_when_nothing_is_queued() {
    let mut p = Peer::opened();
    let link = p.attach(0, Role::Receiver, "x");
    p.conn.accept(link, 0);
    p.frames();
    let mut flow = link_flow(0, 0, 3);
    flow.drain = true;
    p.send(5, &flow).unwrap();
    assert!(matches!(&p.frames()[..], [(0, Performative::Flow(f))]
        if f.drain && f.link_credit == Some(0) && f.delivery_count == Some(3)));
}

#[test]
fn a_receivers_selector_filter_is_reported_with_its_attach() {
    use serde_amqp::described::Described;
    use serde_amqp::descriptor::Descriptor;
    use serde_amqp::primitives::{OrderedMap, Symbol};
    use serde_amqp::Value;
    let selector = "amqp.annotation.x-opt-offset > '-1'";
    // Node describes the filter by its code, Python by its name.
    let descriptors = [
        Descriptor::Code(crate::event_hubs::SELECTOR_FILTER_CODE),
        Descriptor::Name(Symbol::from(crate::event_hubs::SELECTOR_FILTER)),
    ];
    for (handle, descriptor) in descriptors.into_iter().enumerate() {
        let mut p = Peer::opened();
        let mut a = attach(
            handle as u32,
            Role::Receiver,
            "hub/ConsumerGroups/$Default/Partitions/0",
        );
        let mut filter = OrderedMap::new();
        filter.insert(
            Symbol::from(crate::event_hubs::SELECTOR_FILTER),
            Value::Described(Box::new(Described {
                descriptor,
                value: Value::String(selector.into()),
            })),
        );
        a.source = Some(Box::new(
            Source::builder()
                .address("hub/ConsumerGroups/$Default/Partitions/0")
                .filter(filter)
                .build(),
        ));
        p.send(5, &a).unwrap();
        match &p.events()[..] {
            [Event::Attach { selector: Some(s), .. }] => assert_eq!(s, selector),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_links_api_version_property_is_reported_with_its_attach() {
    use serde_amqp::primitives::{OrderedMap, Symbol};
    use serde_amqp::Value;
    for (handle, value) in [
        Value::String("2025-07-01-preview".into()),
        Value::Symbol(Symbol::from("2025-07-01-preview")),
    ]
    .into_iter()
    .enumerate()
    {
        let mut p = Peer::opened();
        let mut a = attach(handle as u32, Role::Sender, "0ne00000001/registrations/dev-1");
        let mut properties = OrderedMap::new();
        properties.insert(Symbol::from(crate::dps_amqp::API_VERSION_PROPERTY), value);
        a.properties = Some(properties);
        p.send(5, &a).unwrap();
        match &p.events()[..] {
            [Event::Attach { api_version, .. }] => assert_eq!(api_version.as_deref(), Some("2025-07-01-preview")),
            other => panic!("{other:?}"),
        }
    }
    // Without the property: none.
    let mut p = Peer::opened();
    p.send(5, &attach(0, Role::Sender, "x")).unwrap();
    assert!(matches!(&p.events()[..], [Event::Attach { api_version: None, .. }]));
}

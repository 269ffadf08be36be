//! The server's AMQP connection engine alone (`dps_proto::amqp_conn`), as port 5671 runs it once
//! SASL is done: a peer's bytes from its AMQP protocol header on, fed in chunks, every event
//! answered as the server may answer it (links accepted or refused, messages settled, a message
//! sent on every link the server may send on). Much faster per input than `amqp_connection`,
//! which runs the same engine behind the whole server; this one explores the state machine.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use dps_proto::amqp_conn::{Connection, Direction, Error, Event, Limits};
use fe2o3_amqp_types::definitions::AmqpError;
use fe2o3_amqp_types::messaging::{Accepted, DeliveryState};

use crate::support::chunk_of;

/// One message the server sends: a data section of two bytes.
const MESSAGE: &[u8] = &[0x00, 0x53, 0x75, 0xa0, 0x02, b'h', b'i'];

/// Feeds `data` (after its chunk byte) to a connection and answers its events. Nothing may
/// panic; every message sent with a token is reported exactly once (an outcome, or lost when
/// its link, session or connection ended); the output is a sequence of whole frames.
pub fn amqp_frames(data: &[u8]) {
    let (chunk, _, data) = chunk_of(data);
    let mut conn = Connection::new(Limits {
        container_id: "fuzz".into(),
        max_frame: 8192,
        channel_max: 3,
        max_links_per_session: 8,
        idle_timeout: Duration::from_secs(240),
        max_queued_per_link: 4,
        max_message_size: 4096,
    });
    let mut in_flight = HashSet::new();
    let mut last_token = 0u64;
    let mut output = OutputCheck::default();
    for piece in data.chunks(chunk) {
        let _ = conn.feed(piece);
        answer(&mut conn, &mut in_flight, &mut last_token);
        output.check(&conn.take_output());
        if conn.is_closed() {
            break;
        }
    }
    conn.close(None);
    answer(&mut conn, &mut in_flight, &mut last_token);
    output.check(&conn.take_output());
    assert!(in_flight.is_empty(), "messages never reported: {in_flight:?}");
}

/// Answers every pending event.
fn answer(conn: &mut Connection, in_flight: &mut HashSet<u64>, last_token: &mut u64) {
    while let Some(event) = conn.poll_event() {
        match event {
            Event::Attach {
                link,
                direction,
                address,
                ..
            } => {
                if address.len() % 3 == 2 {
                    let error = Error::new(AmqpError::NotFound, Some("no such node".into()), None);
                    conn.refuse(link, error);
                    continue;
                }
                conn.accept(link, 2);
                if direction == Direction::ToPeer {
                    for tracked in [true, false] {
                        *last_token += 1;
                        let token = tracked.then_some(*last_token);
                        if conn.send(link, Bytes::from_static(MESSAGE), token).is_ok() {
                            in_flight.extend(token);
                        }
                    }
                }
            }
            Event::Message { delivery: Some(d), .. } => conn.settle(d, DeliveryState::Accepted(Accepted {})),
            Event::Outcome { token, .. } | Event::Lost { token } => {
                assert!(in_flight.remove(&token), "token {token} reported twice, or never sent");
            }
            _ => {}
        }
    }
}

/// Checks that each output the server hands over is whole: its protocol header first, then
/// frames whose size fields add up to exactly what was handed over.
#[derive(Default)]
struct OutputCheck {
    header_seen: bool,
}

impl OutputCheck {
    fn check(&mut self, out: &[u8]) {
        let mut pos = 0;
        if !self.header_seen && !out.is_empty() {
            assert!(out.starts_with(b"AMQP"), "the output starts with the protocol header");
            self.header_seen = true;
            pos = 8;
        }
        while pos < out.len() {
            let size = out
                .get(pos..pos + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .expect("an output frame with its size");
            assert!(size >= 8, "an output frame of {size} bytes");
            assert_eq!(out.get(pos + 4), Some(&2), "the data offset of an output frame");
            pos += size;
        }
        assert_eq!(pos, out.len(), "the output ends inside a frame");
    }
}

//! AMQP 1.0 frames (§2.3): cutting a peer's byte stream into whole frames, checking each before
//! it is decoded, and writing frames.
//!
//! A frame is a 4-byte size, a data offset (in 4-byte words), a type and a channel, then one
//! performative and, for a transfer, the message bytes. Every frame a peer sends is checked by
//! [`crate::amqp_encoding::check_amqp_body`] before serde_amqp decodes it: serde_amqp trusts the
//! sizes inside values and fe2o3's own frame reader panics on a size below the header (both
//! found by the `amqp_connection` fuzz target).

use bytes::{BufMut, BytesMut};
use fe2o3_amqp_types::performatives::Performative;
use serde::Serialize;

use super::ProtocolError;

/// Bytes of a frame header; a frame is never shorter.
pub(crate) const HEADER: usize = 8;

/// Frame type of AMQP frames.
const AMQP_FRAME: u8 = 0;

/// Frame type of SASL frames (they come before the AMQP header).
const SASL_FRAME: u8 = 1;

/// Bytes reserved for a performative before it is serialized.
const PERFORMATIVE_ROOM: usize = 512;

/// The header of AMQP 1.0 proper (§2.2): `AMQP`, protocol id 0, version 1.0.0.
pub const PROTOCOL_HEADER: [u8; 8] = *b"AMQP\x00\x01\x00\x00";

/// One frame as read.
pub(crate) struct Frame {
    pub(crate) channel: u16,
    /// `None` for an empty frame (a heartbeat).
    pub(crate) performative: Option<Performative>,
    /// Where the payload starts in the frame's bytes.
    pub(crate) payload_at: usize,
}

/// Takes one whole frame off the front of `input`, if all of it is there. A size below the
/// header or above `max_frame` (what the server announced) is a framing error.
pub(crate) fn cut(input: &mut BytesMut, max_frame: usize) -> Result<Option<BytesMut>, ProtocolError> {
    let Some(size) = input.get(..4) else {
        return Ok(None);
    };
    let size = u32::from_be_bytes([size[0], size[1], size[2], size[3]]) as usize;
    if !(HEADER..=max_frame).contains(&size) {
        return Err(ProtocolError::Framing(format!(
            "a frame of {size} bytes (frames are {HEADER} to {max_frame} bytes)"
        )));
    }
    if input.len() < size {
        return Ok(None);
    }
    Ok(Some(input.split_to(size)))
}

/// Checks and decodes a whole frame.
pub(crate) fn decode(frame: &[u8]) -> Result<Frame, ProtocolError> {
    let offset = usize::from(frame[4]) * 4;
    if offset < HEADER || offset > frame.len() {
        return Err(ProtocolError::Framing(format!(
            "data offset {offset} outside the frame's {} bytes",
            frame.len()
        )));
    }
    if frame[5] != AMQP_FRAME {
        return Err(ProtocolError::Framing(format!(
            "frame type {} after the AMQP header",
            frame[5]
        )));
    }
    let channel = u16::from_be_bytes([frame[6], frame[7]]);
    let body = &frame[offset..];
    let performative_len = crate::amqp_encoding::check_amqp_body(body)?;
    if performative_len == 0 {
        return Ok(Frame {
            channel,
            performative: None,
            payload_at: frame.len(),
        });
    }
    let performative = serde_amqp::from_slice::<Performative>(&body[..performative_len])
        .map_err(|e| ProtocolError::Decode(e.to_string()))?;
    Ok(Frame {
        channel,
        performative: Some(performative),
        payload_at: offset + performative_len,
    })
}

/// Writes an AMQP frame: `performative` (one of fe2o3's performative structs), then `payload`.
pub fn write(out: &mut BytesMut, channel: u16, performative: &impl Serialize, payload: &[u8]) {
    write_typed(out, AMQP_FRAME, channel, performative, payload);
}

/// Writes a SASL frame (`sasl-init`, `sasl-response`...: fe2o3's SASL structs).
pub fn write_sasl(out: &mut BytesMut, performative: &impl Serialize) {
    write_typed(out, SASL_FRAME, 0, performative, &[]);
}

fn write_typed(out: &mut BytesMut, frame_type: u8, channel: u16, performative: &impl Serialize, payload: &[u8]) {
    // Room for the largest performative the server writes (an attach echoing the peer's
    // terminus and properties) at once, rather than growing the buffer byte by byte as the
    // serializer writes.
    out.reserve(PERFORMATIVE_ROOM + payload.len());
    let start = out.len();
    out.put_u32(0); // the size, set below
    out.put_u8(2); // data offset: no extended header
    out.put_u8(frame_type);
    out.put_u16(channel);
    let performative_start = out.len();
    let mut serializer = serde_amqp::ser::Serializer::new(out.writer());
    // Serializing our own well-formed performative into memory cannot fail.
    if let Err(e) = performative.serialize(&mut serializer) {
        unreachable!("AMQP performative does not serialize: {e}");
    }
    pad_fields(out, performative_start);
    out.put_slice(payload);
    let size = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
}

/// How many fields each performative has (§2.7, §5.3.3), by descriptor code.
fn field_count(code: u8) -> Option<usize> {
    Some(match code {
        0x10 => 10,              // open
        0x11 => 8,               // begin
        0x12 => 14,              // attach
        0x13 => 11,              // flow
        0x14 => 11,              // transfer
        0x15 => 6,               // disposition
        0x16 => 3,               // detach
        0x17 | 0x18 => 1,        // end, close
        0x40 | 0x42 | 0x43 => 1, // sasl-mechanisms, -challenge, -response
        0x41 => 3,               // sasl-init
        0x44 => 2,               // sasl-outcome
        _ => return None,
    })
}

/// Writes out the trailing null fields the serializer leaves off (§1.4 allows omitting them),
/// so that the performative at `start` carries every field. Python's `azure-eventhub` (pyamqp)
/// reads fields by position and fails on a short list: it finds a transfer's payload at field
/// 11, and an open's `max-frame-size` at field 2 of ten.
fn pad_fields(out: &mut BytesMut, start: usize) {
    // `00 53 <code>` then the list: list0 (45), list8 (c0 size count), list32 (d0 size count).
    let (Some(&[0x00, 0x53, _, list]), Some(full)) = (
        out.get(start..start + 4).and_then(|b| <&[u8; 4]>::try_from(b).ok()),
        out.get(start + 2).and_then(|c| field_count(*c)),
    ) else {
        return;
    };
    let header = start + 3;
    let (count, elements) = match list {
        0x45 => (0, out.split_off(header + 1)),
        0xc0 if out.len() >= header + 3 => (out[header + 2] as usize, out.split_off(header + 3)),
        0xd0 if out.len() >= header + 9 => {
            let count = u32::from_be_bytes([out[header + 5], out[header + 6], out[header + 7], out[header + 8]]);
            (count as usize, out.split_off(header + 9))
        }
        _ => return,
    };
    let missing = full.saturating_sub(count);
    let (count, len) = (count + missing, elements.len() + missing);
    out.truncate(header);
    if len < 255 && count <= 255 {
        out.put_u8(0xc0);
        out.put_u8((len + 1) as u8);
        out.put_u8(count as u8);
    } else {
        out.put_u8(0xd0);
        out.put_u32((len + 4) as u32);
        out.put_u32(count as u32);
    }
    out.put_slice(&elements);
    out.put_bytes(0x40, missing);
}

/// Writes an empty frame (a heartbeat: §2.4.5, it keeps the peer's idle timer from expiring).
pub(crate) fn write_empty(out: &mut BytesMut) {
    out.put_slice(&[0, 0, 0, 8, 2, AMQP_FRAME, 0, 0]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use fe2o3_amqp_types::performatives::{Close, Open};

    #[test]
    fn performatives_are_written_with_every_field() {
        use fe2o3_amqp_types::definitions::Handle;
        use fe2o3_amqp_types::performatives::Transfer;
        let t = Transfer {
            handle: Handle(1),
            delivery_id: Some(0),
            delivery_tag: Some(vec![1u8].into()),
            message_format: Some(0),
            settled: Some(true),
            more: false,
            rcv_settle_mode: None,
            state: None,
            resume: false,
            aborted: false,
            batchable: false,
        };
        let mut out = BytesMut::new();
        // The payload: one data section holding "x".
        let payload = [0x00, 0x53, 0x75, 0xa0, 0x01, b'x'];
        write(&mut out, 0, &t, &payload);
        // Eleven fields: the five set, then six nulls; the payload after them.
        assert_eq!(&out[8..14], &[0x00, 0x53, 0x14, 0xc0, 15, 11]);
        assert!(out[..out.len() - payload.len()].ends_with(&[0x40; 6]));
        assert_eq!(u32::from_be_bytes([out[0], out[1], out[2], out[3]]) as usize, out.len());
        let frame = decode(&out).unwrap();
        assert!(matches!(&frame.performative, Some(Performative::Transfer(back)) if *back == t));
        assert_eq!(&out[frame.payload_at..], &payload);
        // A list0 close gets its one field; a list32 attach keeps its elements.
        let mut out = BytesMut::new();
        write(
            &mut out,
            0,
            &fe2o3_amqp_types::performatives::Close { error: None },
            &[],
        );
        assert_eq!(&out[8..], &[0x00, 0x53, 0x18, 0xc0, 2, 1, 0x40]);
    }

    #[test]
    fn written_frames_read_back() {
        let mut out = BytesMut::new();
        let open = Open {
            container_id: "c".into(),
            hostname: None,
            max_frame_size: 512.into(),
            channel_max: 3.into(),
            idle_time_out: Some(1000),
            outgoing_locales: None,
            incoming_locales: None,
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        };
        write(&mut out, 7, &open, &[]);
        write_empty(&mut out);
        write(&mut out, 0, &Close { error: None }, &[]);
        let mut frames = Vec::new();
        while let Some(f) = cut(&mut out, 512).unwrap() {
            frames.push(decode(&f).unwrap());
        }
        assert!(out.is_empty());
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].channel, 7);
        assert!(
            matches!(&frames[0].performative, Some(Performative::Open(o)) if o.container_id == "c" && o.idle_time_out == Some(1000))
        );
        assert!(frames[1].performative.is_none());
        assert!(matches!(&frames[2].performative, Some(Performative::Close(_))));
    }

    #[test]
    fn bad_sizes_offsets_and_types_are_framing_errors() {
        for frame in [&[0u8, 0, 0, 4, 2, 0, 0, 0][..], &[0, 0, 2, 1, 2, 0, 0, 0]] {
            assert!(cut(&mut BytesMut::from(frame), 512).is_err(), "{frame:?}");
        }
        let mut truncated = BytesMut::from(&[0u8, 0, 0, 9, 2, 0, 0, 0, 0][..]);
        let whole = cut(&mut truncated, 512).unwrap().unwrap();
        assert!(decode(&whole).is_err(), "a descriptor with nothing after it");
        assert!(decode(&[0, 0, 0, 8, 1, 0, 0, 0]).is_err(), "data offset 4");
        assert!(decode(&[0, 0, 0, 8, 2, 1, 0, 0]).is_err(), "a SASL frame");
        // A string claiming 4 GiB inside the body.
        assert!(decode(&[0, 0, 0, 14, 2, 0, 0, 0, 0xb1, 0xff, 0xff, 0xff, 0xff, b'x']).is_err());
    }
}

//! Every AMQP frame a client sends, checked before fe2o3-amqp decodes it. Two defects of the
//! decoders make this necessary (both found by the `amqp_connection` fuzz target):
//!
//! - fe2o3 reads a frame's 8-byte header without checking that the frame is that long: a frame
//!   whose size field says 4 to 7 makes it panic;
//! - serde_amqp trusts the sizes and counts inside values: a few dozen bytes claiming a 4 GiB
//!   string or a billion-element array make it allocate gigabytes
//!   (`dps_proto::amqp_encoding`).
//!
//! So this reader cuts the client's stream into whole frames (after the 8-byte protocol header),
//! refuses a size below the frame header or above the frame size the server announced, runs the
//! bounds check on each frame's values, and only then hands the frame to fe2o3. A refusal fails
//! the stream, which fe2o3 reports as a transport error: the connection ends. A frame is held
//! whole (at most the announced frame size) until checked.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, ReadBuf};

/// Bytes of a frame header; a frame is never shorter.
const FRAME_HEADER: usize = 8;

/// Frame type of AMQP frames (SASL frames are type 1 and are read before this reader).
const AMQP_FRAME: u8 = 0;

/// `inner` with each frame checked (see the module documentation).
#[derive(Debug)]
pub(crate) struct FrameGuard<S> {
    inner: S,
    max_frame: usize,
    /// Protocol-header bytes still to pass through unchecked (fe2o3 checks the header itself).
    header_left: usize,
    /// Bytes read from the client, not yet cut into a whole frame.
    pending: BytesMut,
    /// Checked bytes, handed to fe2o3 as it reads.
    ready: BytesMut,
}

impl<S> FrameGuard<S> {
    /// Checks frames of at most `max_frame` bytes, starting at the AMQP protocol header.
    pub(crate) fn new(inner: S, max_frame: usize) -> Self {
        Self {
            inner,
            max_frame,
            header_left: 8,
            pending: BytesMut::new(),
            ready: BytesMut::new(),
        }
    }

    /// Moves what is complete from `pending` to `ready`: the protocol header, then whole frames
    /// that pass the checks. `Ok(false)` when more bytes are needed.
    fn cut(&mut self) -> io::Result<bool> {
        if self.header_left > 0 {
            let n = self.header_left.min(self.pending.len());
            self.ready.extend_from_slice(&self.pending.split_to(n));
            self.header_left -= n;
            return Ok(n > 0);
        }
        if self.pending.len() < 4 {
            return Ok(false);
        }
        let size = u32::from_be_bytes([self.pending[0], self.pending[1], self.pending[2], self.pending[3]]) as usize;
        if !(FRAME_HEADER..=self.max_frame).contains(&size) {
            return Err(invalid(format!(
                "AMQP frame of {size} bytes (frames are {FRAME_HEADER} to {} bytes)",
                self.max_frame
            )));
        }
        if self.pending.len() < size {
            return Ok(false);
        }
        let frame = self.pending.split_to(size);
        check(&frame)?;
        self.ready.extend_from_slice(&frame);
        Ok(true)
    }
}

/// The checks on one whole frame: its data offset, and the values of an AMQP frame's body.
fn check(frame: &[u8]) -> io::Result<()> {
    let offset = usize::from(frame[4]) * 4;
    if offset < FRAME_HEADER || offset > frame.len() {
        return Err(invalid(format!(
            "AMQP frame data offset {offset} outside its {} bytes",
            frame.len()
        )));
    }
    if frame[5] != AMQP_FRAME {
        return Err(invalid(format!("frame type {} after the AMQP header", frame[5])));
    }
    dps_proto::amqp_encoding::check_amqp_body(&frame[offset..]).map_err(|e| invalid(e.to_string()))
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

impl<S: AsyncRead + Unpin> AsyncRead for FrameGuard<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                if this.ready.is_empty() {
                    // An idle connection keeps no buffer (a large message's would stay).
                    this.ready = BytesMut::new();
                }
                return Poll::Ready(Ok(()));
            }
            if this.cut()? {
                if this.pending.is_empty() {
                    this.pending = BytesMut::new();
                }
                continue;
            }
            let mut chunk = [0u8; 4096];
            let mut read = ReadBuf::new(&mut chunk);
            std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // End of stream; a partial frame is dropped with it.
                return Poll::Ready(Ok(()));
            }
            this.pending.extend_from_slice(read.filled());
        }
    }
}

super::delegate_write!(FrameGuard);

#[cfg(test)]
mod tests {
    use super::*;

    fn cut_all(stream: &[u8], split: usize) -> io::Result<Vec<u8>> {
        let mut g = FrameGuard::new((), 64);
        let mut out = Vec::new();
        for chunk in stream.chunks(split) {
            g.pending.extend_from_slice(chunk);
            while g.cut()? {}
            out.extend_from_slice(&g.ready.split());
        }
        Ok(out)
    }

    #[test]
    fn frames_of_legal_sizes_pass_whole_in_any_split() {
        let mut stream = b"AMQP\x00\x01\x00\x00".to_vec();
        stream.extend_from_slice(&[0, 0, 0, 8, 2, 0, 0, 0]); // an empty frame (heartbeat)
                                                             // an open: described(0x10) list8 [str8 "c"]
        stream.extend_from_slice(&[
            0, 0, 0, 17, 2, 0, 0, 0, 0x00, 0x53, 0x10, 0xc0, 0x04, 0x01, 0xa1, 0x01, b'c',
        ]);
        for split in 1..stream.len() {
            assert_eq!(cut_all(&stream, split).unwrap(), stream, "split {split}");
        }
    }

    #[test]
    fn bad_sizes_offsets_types_and_values_are_caught() {
        let with = |frame: &[u8]| {
            let mut s = b"AMQP\x00\x01\x00\x00".to_vec();
            s.extend_from_slice(frame);
            cut_all(&s, 3)
        };
        for size in [0u8, 4, 7, 65] {
            assert!(with(&[0, 0, 0, size, 2, 0, 0, 0]).is_err(), "size {size}");
        }
        assert!(with(&[0, 0, 0, 8, 1, 0, 0, 0]).is_err(), "data offset 4");
        assert!(
            with(&[0, 0, 0, 8, 2, 1, 0, 0]).is_err(),
            "a SASL frame after the header"
        );
        // a string claiming 4 GiB
        assert!(with(&[0, 0, 0, 14, 2, 0, 0, 0, 0xb1, 0xff, 0xff, 0xff, 0xff, b'x']).is_err());
    }
}

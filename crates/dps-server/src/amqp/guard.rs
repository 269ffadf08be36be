//! A check of AMQP frame sizes in front of fe2o3-amqp's frame decoder. fe2o3 reads a frame's
//! 8-byte header without checking that the frame is that long, so a client sending a frame whose
//! size field says 4 to 7 makes the decoder panic (found by the `amqp_connection` fuzz target).
//! This reader follows the frame boundaries of what the client sends and fails the stream —
//! which fe2o3 reports as a transport error and the connection ends — on a size field below the
//! frame header (AMQP 1.0 §2.3.1) or above the frame size the server announced.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes of a frame header; a frame is never shorter.
const FRAME_HEADER: u32 = 8;

/// Where the reader is in the client's byte stream.
#[derive(Debug, Clone, Copy)]
enum Position {
    /// Inside the 8-byte protocol header; this many bytes of it are still to come.
    Header(u8),
    /// Reading a frame's size field; these bytes of it arrived so far.
    Size { have: u8, value: u32 },
    /// Inside a frame's body; this many bytes are still to come.
    Body(u32),
}

/// `inner` with the frame sizes it yields checked (see the module documentation).
#[derive(Debug)]
pub(crate) struct FrameGuard<S> {
    inner: S,
    max_frame: u32,
    at: Position,
}

impl<S> FrameGuard<S> {
    /// Checks frames of at most `max_frame` bytes, starting at the AMQP protocol header.
    pub(crate) fn new(inner: S, max_frame: u32) -> Self {
        Self {
            inner,
            max_frame,
            at: Position::Header(8),
        }
    }

    /// Follows `bytes` through the frame structure; the size that is out of bounds, if any.
    fn follow(&mut self, mut bytes: &[u8]) -> Result<(), u32> {
        while !bytes.is_empty() {
            self.at = match self.at {
                Position::Header(left) => {
                    let n = bytes.len().min(usize::from(left));
                    bytes = &bytes[n..];
                    match left - n as u8 {
                        0 => Position::Size { have: 0, value: 0 },
                        rest => Position::Header(rest),
                    }
                }
                Position::Size { have, value } => {
                    let value = (value << 8) | u32::from(bytes[0]);
                    bytes = &bytes[1..];
                    if have < 3 {
                        Position::Size { have: have + 1, value }
                    } else if !(FRAME_HEADER..=self.max_frame).contains(&value) {
                        return Err(value);
                    } else {
                        Position::Body(value - 4)
                    }
                }
                Position::Body(left) => {
                    let n = bytes.len().min(left as usize);
                    bytes = &bytes[n..];
                    match left - n as u32 {
                        0 => Position::Size { have: 0, value: 0 },
                        rest => Position::Body(rest),
                    }
                }
            };
        }
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FrameGuard<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let max = self.max_frame;
        match self.follow(&buf.filled()[before..]) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(size) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("AMQP frame of {size} bytes (frames are {FRAME_HEADER} to {max} bytes)"),
            ))),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FrameGuard<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> FrameGuard<()> {
        FrameGuard::new((), 64)
    }

    #[test]
    fn frames_of_legal_sizes_pass_in_any_split() {
        let mut stream = b"AMQP\x00\x01\x00\x00".to_vec();
        stream.extend_from_slice(&[0, 0, 0, 8, 2, 0, 0, 0]); // an empty frame
        stream.extend_from_slice(&[0, 0, 0, 12, 2, 0, 0, 0, 1, 2, 3, 4]);
        for split in 1..stream.len() {
            let mut g = guard();
            for chunk in stream.chunks(split) {
                assert_eq!(g.follow(chunk), Ok(()), "split {split}");
            }
        }
    }

    #[test]
    fn undersized_and_oversized_frames_are_caught() {
        for (size, bad) in [(0u32, true), (4, true), (7, true), (8, false), (64, false), (65, true)] {
            let mut stream = b"AMQP\x00\x01\x00\x00".to_vec();
            stream.extend_from_slice(&size.to_be_bytes());
            assert_eq!(guard().follow(&stream).is_err(), bad, "size {size}");
        }
    }
}

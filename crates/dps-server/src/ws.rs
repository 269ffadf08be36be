//! MQTT's (and AMQP's) byte stream over a WebSocket, so the adapters serve WebSocket clients
//! exactly as they serve TLS ones (both `serve_connection`s take any `AsyncRead + AsyncWrite`).
//!
//! MQTT over WebSockets (MQTT 3.1.1 §6) carries the ordinary MQTT byte stream in binary messages
//! with no alignment between messages and packets: one message may hold several packets or part
//! of one. So [`WsByteStream`] only turns messages back into bytes and bytes into messages; the
//! MQTT framing (and its packet size limit) stays in one place. The WebSocket protocol itself —
//! framing, masking, ping/pong, the close handshake — is `tungstenite`'s.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// Per-connection read buffer. tungstenite's default (128 KiB, allocated up front) is sized for
/// bulk transfers; a device's MQTT traffic is a few small packets, and a hub holds many devices.
/// Larger messages still arrive whole, read in several chunks.
const READ_BUFFER_BYTES: usize = 8 * 1024;

/// The server side's WebSocket settings for a tunnel whose MQTT packets may be up to
/// `max_packet` bytes (see [`crate::mqtt::max_packet_bytes`]).
///
/// - Messages and frames are limited to one maximal MQTT packet: every SDK writes one packet per
///   message, so anything larger is refused before it is buffered.
/// - Unmasked client frames are accepted: paho-mqtt 1.6 (the Python SDK's MQTT client) masks its
///   data frames but answers a server's Ping or Close with *unmasked* frames. RFC 6455 would have
///   the server drop the connection there; masking protects intermediaries' caches from
///   browser-scripted content, which no MQTT client is, so tolerating it costs nothing.
pub fn server_config(max_packet: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(Some(max_packet))
        .max_frame_size(Some(max_packet))
        .accept_unmasked_frames(true)
}

/// A WebSocket seen as a byte stream: binary messages in, binary messages out.
///
/// - Reads return the bytes of binary messages in order; a Close (answered by tungstenite) or the
///   end of the connection is end of stream. A text message is an error: MQTT 3.1.1 §6 requires
///   the connection be closed.
/// - Pings are answered by tungstenite while the stream is read, which the MQTT adapter always is.
/// - Each write becomes one binary message (the MQTT adapter writes whole packets at a time).
/// - Shutdown sends a Close frame, then shuts the underlying stream down (TLS `close_notify`).
pub struct WsByteStream<S> {
    ws: WebSocketStream<S>,
    /// The unread rest of the last binary message.
    pending: Bytes,
    /// The Close frame has been sent (shutdown is under way).
    close_sent: bool,
}

impl<S> std::fmt::Debug for WsByteStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsByteStream")
            .field("pending", &self.pending.len())
            .field("close_sent", &self.close_sent)
            .finish()
    }
}

impl<S> WsByteStream<S> {
    /// Wraps an established WebSocket (handshake done).
    pub fn new(ws: WebSocketStream<S>) -> Self {
        Self {
            ws,
            pending: Bytes::new(),
            close_sent: false,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsByteStream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending.split_to(n));
                return Poll::Ready(Ok(()));
            }
            match ready!(this.ws.poll_next_unpin(cx)) {
                Some(Ok(Message::Binary(data))) => this.pending = data,
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "MQTT over WebSockets travels in binary messages, but a text message arrived",
                    )))
                }
                // Pings are answered by tungstenite; a Close is answered on the next poll, which
                // then ends the stream. Raw frames are never returned by a read.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_))) => {}
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
                None => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsByteStream<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = self.get_mut();
        ready!(this.ws.poll_ready_unpin(cx)).map_err(to_io)?;
        this.ws
            .start_send_unpin(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(to_io)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().ws.poll_flush_unpin(cx).map_err(to_io)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent {
            // A peer that already closed, or a broken connection, leaves nothing to say.
            if let Err(e) = ready!(this.ws.poll_close_unpin(cx)) {
                tracing::debug!(error = %e, "WebSocket close failed");
            }
            this.close_sent = true;
        }
        // RFC 6455 §7.1.1: the server closes the TCP connection first, without waiting for the
        // client's Close.
        Pin::new(this.ws.get_mut()).poll_shutdown(cx)
    }
}

/// tungstenite's errors as I/O errors, keeping the OS error when there is one.
fn to_io(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "the WebSocket is closed")
        }
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::protocol::Role;

    async fn pair() -> (
        WsByteStream<tokio::io::DuplexStream>,
        WebSocketStream<tokio::io::DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let server = WebSocketStream::from_raw_socket(a, Role::Server, Some(server_config(1024))).await;
        let client = WebSocketStream::from_raw_socket(b, Role::Client, None).await;
        (WsByteStream::new(server), client)
    }

    #[tokio::test]
    async fn messages_are_one_byte_stream_and_pings_are_answered() {
        let (mut server, mut client) = pair().await;
        client.send(Message::binary(&b"ab"[..])).await.unwrap();
        client.send(Message::Ping(Bytes::from_static(b"p"))).await.unwrap();
        client.send(Message::binary(&b"cde"[..])).await.unwrap();
        let mut got = [0u8; 5];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"abcde");
        match client.next().await.unwrap().unwrap() {
            Message::Pong(p) => assert_eq!(&p[..], b"p"),
            other => panic!("expected a pong, got {other:?}"),
        }

        server.write_all(b"xyz").await.unwrap();
        server.flush().await.unwrap();
        match client.next().await.unwrap().unwrap() {
            Message::Binary(b) => assert_eq!(&b[..], b"xyz"),
            other => panic!("expected binary, got {other:?}"),
        }

        // The client's Close ends the stream and is answered.
        client.close(None).await.unwrap();
        let mut rest = Vec::new();
        assert_eq!(server.read_to_end(&mut rest).await.unwrap(), 0);
        assert!(matches!(client.next().await, Some(Ok(Message::Close(_))) | None));
    }

    #[tokio::test]
    async fn text_and_oversized_messages_are_errors() {
        let (mut server, mut client) = pair().await;
        client.send(Message::text("CONNECT")).await.unwrap();
        let err = server.read(&mut [0u8; 16]).await.unwrap_err();
        assert!(err.to_string().contains("binary"), "{err}");

        let (mut server, mut client) = pair().await;
        client.send(Message::binary(vec![0u8; 2048])).await.unwrap();
        let err = server.read(&mut [0u8; 16]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }

    #[tokio::test]
    async fn shutdown_sends_close() {
        let (mut server, mut client) = pair().await;
        server.shutdown().await.unwrap();
        assert!(matches!(client.next().await, Some(Ok(Message::Close(_)))));
    }
}

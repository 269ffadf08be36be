//! MQTT 3.1.1 packet framing over any async stream, using the `rumqttc` packet codec.

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::Packet;
use rumqttc::mqttbytes::Error as CodecError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why a connection's byte stream could not be framed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent something that is not MQTT 3.1.1 (or a packet over the size limit).
    #[error("protocol: {0}")]
    Protocol(CodecError),
}

/// A framed MQTT connection.
pub struct Framed<S> {
    stream: S,
    read: BytesMut,
    write: BytesMut,
    max_packet: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Framed<S> {
    /// Wraps a stream; packets larger than `max_packet` are a protocol error.
    pub fn new(stream: S, max_packet: usize) -> Self {
        Self {
            stream,
            read: BytesMut::with_capacity(4096),
            write: BytesMut::with_capacity(4096),
            max_packet,
        }
    }

    /// The next packet, or `None` on a clean end of stream.
    pub async fn next(&mut self) -> Result<Option<Packet>, FrameError> {
        loop {
            if !self.read.is_empty() {
                match Packet::read(&mut self.read, self.max_packet) {
                    Ok(p) => return Ok(Some(p)),
                    Err(CodecError::InsufficientBytes(_)) => {}
                    Err(e) => return Err(FrameError::Protocol(e)),
                }
            }
            if self.stream.read_buf(&mut self.read).await? == 0 {
                return if self.read.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()))
                };
            }
        }
    }

    /// Queues a packet; call [`Framed::flush`] to send.
    pub fn queue(&mut self, p: &Packet) -> Result<(), FrameError> {
        p.write(&mut self.write, usize::MAX)
            .map(drop)
            .map_err(FrameError::Protocol)
    }

    /// Sends queued packets.
    pub async fn flush(&mut self) -> Result<(), FrameError> {
        if !self.write.is_empty() {
            self.stream.write_all(&self.write).await?;
            self.write.clear();
            self.stream.flush().await?;
        }
        Ok(())
    }

    /// Queues and sends one packet.
    pub async fn send(&mut self, p: &Packet) -> Result<(), FrameError> {
        self.queue(p)?;
        self.flush().await
    }

    /// Shuts the write side down.
    pub async fn close(&mut self) {
        let _ = self.stream.shutdown().await;
    }
}

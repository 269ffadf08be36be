//! MQTT 3.1.1 packet framing over any async stream, using the `rumqttc` packet codec.

use bytes::BytesMut;
use dps_proto::mqtt_header::{check_fixed_header, inspect_connect, ConnectHeader, HeaderViolation};
use rumqttc::mqttbytes::v4::{Connect, Packet};
use rumqttc::mqttbytes::Error as CodecError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why a connection's byte stream could not be framed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent something that is not MQTT 3.1.1 (or a packet over the size limit).
    #[error("protocol: {0}")]
    Protocol(CodecError),
    /// The peer broke a header rule of MQTT 3.1.1 that obliges the server to close.
    #[error("protocol: {0}")]
    Header(#[from] HeaderViolation),
}

/// The first packet of a connection, once its header passed MQTT 3.1.1's rules.
#[derive(Debug)]
pub enum First {
    /// A CONNECT to serve.
    Connect(Connect),
    /// A CONNECT of another MQTT version: answer CONNACK 0x01 and close (§3.1.2.2).
    UnacceptableLevel(u8),
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

    /// The first packet, which must be a CONNECT of at most `max_len` bytes: its header is judged
    /// on the raw bytes ([`inspect_connect`]) before the codec decodes it. `None` when the peer
    /// closed before sending anything.
    pub async fn first(&mut self, max_len: usize) -> Result<Option<First>, FrameError> {
        loop {
            match inspect_connect(&self.read, max_len) {
                ConnectHeader::Violation(v) => return Err(v.into()),
                ConnectHeader::UnacceptableLevel { level } => return Ok(Some(First::UnacceptableLevel(level))),
                ConnectHeader::Acceptable => {
                    // The header says CONNECT, so the codec yields one or an error.
                    return match self.next().await? {
                        Some(Packet::Connect(c)) => Ok(Some(First::Connect(c))),
                        _ => Err(FrameError::Protocol(CodecError::MalformedPacket)),
                    };
                }
                ConnectHeader::Incomplete => {}
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    /// Reads more bytes; `false` on a clean end of stream before any byte of a packet.
    async fn fill(&mut self) -> Result<bool, FrameError> {
        if self.stream.read_buf(&mut self.read).await? == 0 {
            return if self.read.is_empty() {
                Ok(false)
            } else {
                Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()))
            };
        }
        Ok(true)
    }

    /// The next packet, or `None` on a clean end of stream. A fixed header that breaks
    /// MQTT 3.1.1 (reserved type or flags, PUBLISH QoS 3) is an error as soon as its first byte
    /// arrives.
    pub async fn next(&mut self) -> Result<Option<Packet>, FrameError> {
        loop {
            if let Some(&byte1) = self.read.first() {
                check_fixed_header(byte1)?;
                match Packet::read(&mut self.read, self.max_packet) {
                    Ok(p) => return Ok(Some(p)),
                    Err(CodecError::InsufficientBytes(_)) => {}
                    Err(e) => return Err(FrameError::Protocol(e)),
                }
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    /// Queues a packet; call [`Framed::flush`] to send.
    pub fn queue(&mut self, p: &Packet) -> Result<(), FrameError> {
        p.write(&mut self.write, usize::MAX)
            .map(drop)
            .map_err(FrameError::Protocol)
    }

    /// Sends queued packets, within [`crate::WRITE_TIMEOUT`].
    pub async fn flush(&mut self) -> Result<(), FrameError> {
        if !self.write.is_empty() {
            let written = async {
                self.stream.write_all(&self.write).await?;
                self.stream.flush().await
            };
            match tokio::time::timeout(crate::WRITE_TIMEOUT, written).await {
                Ok(result) => result?,
                Err(_) => return Err(FrameError::Io(std::io::ErrorKind::TimedOut.into())),
            }
            self.write.clear();
        }
        Ok(())
    }

    /// Queues and sends one packet.
    pub async fn send(&mut self, p: &Packet) -> Result<(), FrameError> {
        self.queue(p)?;
        self.flush().await
    }

    /// Shuts the write side down (a TLS close-notify is a write: bounded the same way).
    pub async fn close(&mut self) {
        let _ = tokio::time::timeout(crate::WRITE_TIMEOUT, self.stream.shutdown()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::mqttbytes::v4::Publish;
    use rumqttc::mqttbytes::QoS;

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_reads_nothing_fails_the_write_at_the_deadline() {
        // A 16-byte pipe nobody reads: the write can never complete.
        let (ours, _theirs) = tokio::io::duplex(16);
        let mut io = Framed::new(ours, 1024);
        io.queue(&Packet::Publish(Publish::new("t", QoS::AtMostOnce, vec![0u8; 100])))
            .unwrap();
        let started = tokio::time::Instant::now();
        match io.flush().await {
            Err(FrameError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::TimedOut),
            other => panic!("{other:?}"),
        }
        assert_eq!(started.elapsed(), crate::WRITE_TIMEOUT);
    }
}

//! The client side of the AMQP SASL layer (AMQP 1.0 §5.3), driven here rather than by
//! fe2o3-amqp because DPS's `TPM` mechanism is not one fe2o3 knows: its exchange imports an
//! activation blob into the TPM half-way through. PLAIN goes the same way so both report a
//! refusal alike. Frames are encoded and decoded by fe2o3-amqp's SASL codec; whole frames are
//! read (size first), so nothing after the outcome is consumed and the stream can then be handed
//! to `Connection::builder().open_with_stream`, which sends the plain AMQP header.

use bytes::{BufMut, BytesMut};
use fe2o3_amqp::frames::sasl::{Frame, FrameCodec};
use fe2o3_amqp::types::primitives::{Binary, Symbol};
use fe2o3_amqp::types::sasl::{SaslCode, SaslInit, SaslResponse};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder};

use crate::ClientError;

/// The protocol header that opens a SASL layer (AMQP 1.0 §5.3.1).
const SASL_HEADER: [u8; 8] = *b"AMQP\x03\x01\x00\x00";

/// The largest SASL frame read from the server. Its frames are small (the mechanism list, a
/// TPM challenge segment under 512 bytes); a larger size field means the peer is no DPS.
const MAX_FRAME: usize = 16 * 1024;

/// What the server answered to an init or response frame.
#[derive(Debug)]
pub(crate) enum Reply {
    /// A challenge: answer it with [`Sasl::respond`].
    Challenge(Vec<u8>),
    /// The exchange is over: the connection is authenticated.
    Ok,
}

/// One SASL exchange on `stream`, for one mechanism.
pub(crate) struct Sasl<'s, S> {
    stream: &'s mut S,
    mechanism: &'static str,
}

impl<'s, S: AsyncRead + AsyncWrite + Unpin> Sasl<'s, S> {
    /// Sends the SASL header and the init frame for `mechanism` with `initial_response`, after
    /// checking the server offers it.
    pub(crate) async fn start(
        stream: &'s mut S,
        mechanism: &'static str,
        initial_response: Vec<u8>,
    ) -> Result<Sasl<'s, S>, ClientError> {
        let mut s = Self { stream, mechanism };
        s.stream.write_all(&SASL_HEADER).await.map_err(|e| s.io(&e))?;
        s.stream.flush().await.map_err(|e| s.io(&e))?;
        let mut header = [0u8; 8];
        s.stream.read_exact(&mut header).await.map_err(|e| s.io(&e))?;
        if header != SASL_HEADER {
            return Err(s.protocol(format!("the server answered the SASL header with {header:02x?}")));
        }
        let offered = match s.read().await? {
            Frame::Mechanisms(m) => m.sasl_server_mechanisms.0,
            other => return Err(s.protocol(format!("expected sasl-mechanisms, got {other:?}"))),
        };
        if !offered.iter().any(|m| m.0 == mechanism) {
            let offered: Vec<&str> = offered.iter().map(|m| m.0.as_str()).collect();
            return Err(ClientError::Unsupported(format!(
                "the server does not offer the SASL mechanism {mechanism} (it offers {offered:?})"
            )));
        }
        let init = SaslInit {
            mechanism: Symbol::from(mechanism),
            initial_response: Some(Binary::from(initial_response)),
            hostname: None,
        };
        s.write(Frame::Init(init)).await?;
        Ok(s)
    }

    /// The server's next frame: a challenge, or the outcome. Any outcome but `ok` is the
    /// server refusing the credential.
    pub(crate) async fn reply(&mut self) -> Result<Reply, ClientError> {
        match self.read().await? {
            Frame::Challenge(c) => Ok(Reply::Challenge(c.challenge.into_vec())),
            Frame::Outcome(o) if o.code == SaslCode::Ok => Ok(Reply::Ok),
            Frame::Outcome(o) => Err(ClientError::SaslRefused {
                mechanism: self.mechanism.to_string(),
                code: format!("{:?}", o.code).to_lowercase(),
            }),
            other => Err(self.protocol(format!("expected sasl-challenge or sasl-outcome, got {other:?}"))),
        }
    }

    /// Answers a challenge.
    pub(crate) async fn respond(&mut self, response: Vec<u8>) -> Result<(), ClientError> {
        self.write(Frame::Response(SaslResponse {
            response: Binary::from(response),
        }))
        .await
    }

    /// Expects the outcome `ok` now.
    pub(crate) async fn finish(mut self) -> Result<(), ClientError> {
        match self.reply().await? {
            Reply::Ok => Ok(()),
            Reply::Challenge(c) => Err(self.protocol(format!("unexpected challenge of {} bytes", c.len()))),
        }
    }

    async fn read(&mut self) -> Result<Frame, ClientError> {
        let size = self.stream.read_u32().await.map_err(|e| self.io(&e))? as usize;
        // 8 bytes of frame header at least (§2.3.1), of which the size field is 4.
        if !(8..=MAX_FRAME).contains(&size) {
            return Err(self.protocol(format!("SASL frame of {size} bytes")));
        }
        let mut buf = BytesMut::zeroed(size - 4);
        self.stream.read_exact(&mut buf).await.map_err(|e| self.io(&e))?;
        match (FrameCodec {}).decode(&mut buf) {
            Ok(Some(frame)) => Ok(frame),
            Ok(None) => Err(self.protocol("empty SASL frame".into())),
            Err(e) => Err(self.protocol(format!("malformed SASL frame: {e}"))),
        }
    }

    async fn write(&mut self, frame: Frame) -> Result<(), ClientError> {
        let mut body = BytesMut::new();
        FrameCodec {}
            .encode(frame, &mut body)
            .map_err(|e| self.protocol(format!("cannot encode a SASL frame: {e}")))?;
        let mut out = BytesMut::with_capacity(body.len() + 4);
        out.put_u32((body.len() + 4) as u32);
        out.extend_from_slice(&body);
        self.stream.write_all(&out).await.map_err(|e| self.io(&e))?;
        self.stream.flush().await.map_err(|e| self.io(&e))
    }

    fn io(&self, e: &std::io::Error) -> ClientError {
        ClientError::connection(format!("AMQP SASL {} exchange", self.mechanism), e)
    }

    fn protocol(&self, what: String) -> ClientError {
        ClientError::Protocol(format!("AMQP SASL {}: {what}", self.mechanism))
    }
}

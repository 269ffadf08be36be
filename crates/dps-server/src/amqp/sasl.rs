//! The SASL layer of an AMQP connection (AMQP 1.0 §5.3), driven here rather than by fe2o3-amqp's
//! acceptor because the mechanisms need the engine: SASL PLAIN carries a DPS registration's SAS
//! token, judged before the connection opens, and the DPS `TPM` mechanism sends a challenge only
//! the engine can make. fe2o3's `SaslAcceptor` answers each frame synchronously, so it cannot wait
//! on a store. The frames themselves are encoded and decoded by fe2o3-amqp's SASL codec; this
//! module only reads whole frames (length first, so nothing past the SASL outcome is consumed)
//! and runs the exchange. What each mechanism accepts is the [`Authenticator`]'s business.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, BytesMut};
use fe2o3_amqp::frames::sasl::{Frame, FrameCodec};
use fe2o3_amqp::types::primitives::{Array, Binary, Symbol};
use fe2o3_amqp::types::sasl::{SaslCode, SaslMechanisms, SaslOutcome};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::codec::{Decoder, Encoder};

/// The protocol header that opens a SASL layer (AMQP 1.0 §5.3.1).
pub(crate) const SASL_HEADER: [u8; 8] = *b"AMQP\x03\x01\x00\x00";
/// The protocol header of AMQP itself (§2.2), sent directly by a client that skips SASL.
pub(crate) const AMQP_HEADER: [u8; 8] = *b"AMQP\x00\x01\x00\x00";

/// The largest SASL frame accepted. Every frame the SDKs send is small: a SAS token, or a TPM's
/// endorsement key (a few hundred bytes). AMQP guarantees a peer 512 bytes (§5.3.3); this leaves
/// room for long host names and tokens without letting an unauthenticated client make the server
/// buffer more.
pub(crate) const MAX_SASL_FRAME: usize = 16 * 1024;

/// Frames a client may exchange before the outcome: the init and at most this many responses.
/// The longest exchange served (TPM) takes a handful.
const MAX_SASL_ROUNDS: usize = 32;

/// Why the SASL layer ended without an authenticated connection.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SaslError {
    /// The connection failed or closed.
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    /// The client's first 8 bytes are no AMQP protocol header this server speaks.
    #[error("protocol header {0:02x?} is neither AMQP 1.0 nor its SASL layer")]
    Header([u8; 8]),
    /// A frame's size field is impossible or over [`MAX_SASL_FRAME`].
    #[error("SASL frame of {0} bytes (at most {MAX_SASL_FRAME} accepted)")]
    FrameSize(usize),
    /// A frame does not decode as a SASL frame.
    #[error("malformed SASL frame: {0}")]
    Malformed(String),
    /// A frame the server sends, or one out of turn (a response before the init).
    #[error("unexpected SASL frame: {0}")]
    Unexpected(&'static str),
    /// The exchange went on longer than any mechanism here needs.
    #[error("SASL exchange longer than {MAX_SASL_ROUNDS} frames")]
    TooLong,
    /// The mechanism refused the client (the outcome frame has been sent).
    #[error("SASL authentication refused: {0}")]
    Refused(String),
}

/// A mechanism's answer to an init or response frame.
#[derive(Debug)]
pub(crate) enum Step<I> {
    /// Send a challenge with these bytes and wait for the client's response.
    Challenge(Vec<u8>),
    /// Authenticated: send outcome `ok`.
    Done(I),
    /// Refused: send this outcome code; the reason is for the log (and the error).
    Refuse(SaslCode, String),
}

/// What decides a SASL exchange: the mechanisms offered and the answer to each frame.
pub(crate) trait Authenticator {
    /// Who the client turned out to be.
    type Identity;
    /// The mechanisms offered, in order of preference.
    fn mechanisms(&self) -> &'static [&'static str];
    /// Answers the init frame: the chosen mechanism, its initial response, the host name.
    fn init(
        &mut self,
        mechanism: &str,
        initial_response: Option<&[u8]>,
        hostname: Option<&str>,
    ) -> impl std::future::Future<Output = Step<Self::Identity>> + Send;
    /// Answers a response frame (to a challenge).
    fn response(&mut self, data: &[u8]) -> impl std::future::Future<Output = Step<Self::Identity>> + Send;
}

/// How the connection was opened.
#[derive(Debug)]
pub(crate) enum Opened<I> {
    /// The client skipped SASL and sent the AMQP header directly: it is known only by its TLS
    /// client certificate, or authenticates later (CBS).
    NoSasl,
    /// The client completed a SASL exchange.
    Sasl(I),
}

/// Runs the SASL layer on `stream` with `auth`. On success the stream is positioned at the
/// client's AMQP protocol header; a client that skipped SASL has its header put back by
/// [`Rewound`], so the AMQP layer reads the stream from its start either way.
pub(crate) async fn negotiate<S, A>(stream: &mut Rewound<S>, auth: &mut A) -> Result<Opened<A::Identity>, SaslError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    A: Authenticator,
{
    let mut header = [0u8; 8];
    stream.read_exact(&mut header).await?;
    if header == AMQP_HEADER {
        stream.rewind(header);
        return Ok(Opened::NoSasl);
    }
    if header != SASL_HEADER {
        // §2.2: answer with the header the server does support, then close.
        let _ = stream.write_all(&SASL_HEADER).await;
        let _ = stream.flush().await;
        return Err(SaslError::Header(header));
    }
    let mechanisms = SaslMechanisms {
        sasl_server_mechanisms: Array::from(auth.mechanisms().iter().map(|m| Symbol::from(*m)).collect::<Vec<_>>()),
    };
    // The header and the mechanisms in one write: one TLS record, one syscall.
    write_frame(stream, &SASL_HEADER, Frame::Mechanisms(mechanisms)).await?;
    let mut step = match read_frame(stream).await? {
        Frame::Init(init) => {
            let mechanism = init.mechanism.0;
            auth.init(
                &mechanism,
                init.initial_response.as_ref().map(|b| b.as_slice()),
                init.hostname.as_deref(),
            )
            .await
        }
        _ => return Err(SaslError::Unexpected("expected sasl-init")),
    };
    for _ in 0..MAX_SASL_ROUNDS {
        match step {
            Step::Challenge(bytes) => {
                let challenge = fe2o3_amqp::types::sasl::SaslChallenge {
                    challenge: Binary::from(bytes),
                };
                write_frame(stream, &[], Frame::Challenge(challenge)).await?;
                step = match read_frame(stream).await? {
                    Frame::Response(r) => auth.response(r.response.as_slice()).await,
                    _ => return Err(SaslError::Unexpected("expected sasl-response")),
                };
            }
            Step::Done(identity) => {
                write_outcome(stream, SaslCode::Ok).await?;
                return Ok(Opened::Sasl(identity));
            }
            Step::Refuse(code, why) => {
                write_outcome(stream, code).await?;
                return Err(SaslError::Refused(why));
            }
        }
    }
    write_outcome(stream, SaslCode::Auth).await?;
    Err(SaslError::TooLong)
}

async fn write_outcome<S: AsyncWrite + Unpin>(stream: &mut S, code: SaslCode) -> io::Result<()> {
    write_frame(
        stream,
        &[],
        Frame::Outcome(SaslOutcome {
            code,
            additional_data: None,
        }),
    )
    .await
}

/// Reads exactly one SASL frame (its size first), so no byte after it is taken from the stream.
pub(crate) async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Frame, SaslError> {
    let size = stream.read_u32().await? as usize;
    // 8 bytes of frame header at least (§2.3.1), of which the size field is 4.
    if !(8..=MAX_SASL_FRAME).contains(&size) {
        return Err(SaslError::FrameSize(size));
    }
    let mut buf = BytesMut::zeroed(size - 4);
    stream.read_exact(&mut buf).await?;
    decode_frame(&mut buf)
}

/// Decodes a SASL frame without its size field, once its values pass the bounds check
/// (`dps_proto::amqp_encoding`: the decoder would otherwise trust their sizes).
pub(crate) fn decode_frame(buf: &mut BytesMut) -> Result<Frame, SaslError> {
    if buf.len() < 4 {
        return Err(SaslError::FrameSize(buf.len() + 4));
    }
    // The data offset counts 4-byte words from the frame's start (at least the 8-byte header);
    // `buf` starts after the 4-byte size field.
    let body = (usize::from(buf[0]) * 4)
        .checked_sub(4)
        .filter(|at| *at >= 4)
        .and_then(|at| buf.get(at..))
        .ok_or(SaslError::Malformed("data offset below the frame header".into()))?;
    dps_proto::amqp_encoding::check_sasl_body(body).map_err(|e| SaslError::Malformed(e.to_string()))?;
    match (FrameCodec {}).decode(buf) {
        Ok(Some(frame)) => Ok(frame),
        Ok(None) => Err(SaslError::Malformed("empty frame".into())),
        Err(e) => Err(SaslError::Malformed(e.to_string())),
    }
}

/// Writes one SASL frame (after `head`, bytes to send before it) and flushes it: the client
/// answers each before the server writes again, and a WebSocket tunnel sends nothing until
/// flushed.
pub(crate) async fn write_frame<S: AsyncWrite + Unpin>(stream: &mut S, head: &[u8], frame: Frame) -> io::Result<()> {
    let mut body = BytesMut::with_capacity(256);
    FrameCodec {}
        .encode(frame, &mut body)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let mut out = BytesMut::with_capacity(head.len() + body.len() + 4);
    out.extend_from_slice(head);
    out.put_u32((body.len() + 4) as u32);
    out.extend_from_slice(&body);
    stream.write_all(&out).await?;
    stream.flush().await
}

/// A stream with bytes put back in front of it: the protocol header of a client that skipped
/// SASL, read to find that out, is read again by the AMQP layer.
#[derive(Debug)]
pub(crate) struct Rewound<S> {
    inner: S,
    head: [u8; 8],
    /// `head[pos..len]` is still to be read.
    pos: usize,
    len: usize,
}

impl<S> Rewound<S> {
    /// `inner` with nothing put back.
    pub(crate) fn new(inner: S) -> Self {
        Self {
            inner,
            head: [0; 8],
            pos: 0,
            len: 0,
        }
    }

    fn rewind(&mut self, header: [u8; 8]) {
        self.head = header;
        self.pos = 0;
        self.len = 8;
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewound<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.pos < self.len {
            let n = (self.len - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.head[start..start + n]);
            self.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

super::delegate_write!(Rewound);

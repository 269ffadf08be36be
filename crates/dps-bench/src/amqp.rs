//! The lean AMQP client: DPS registration over AMQP written straight onto a TLS stream, with no
//! connection or session engine, task or channel — the AMQP counterpart of [`super::mqtt`].
//!
//! Why it exists: the SDK's AMQP transport (fe2o3-amqp's client under `dps_client`) spends more
//! CPU per registration than the server does, so on a shared 2-core machine it measured itself.
//! What it must not do is make the server's job easier: the frames, their order and the round
//! trips are the Node SDK's (`azure-iot-provisioning-device-amqp` over rhea) — SASL header and
//! mechanisms, PLAIN init and outcome; AMQP header and open (pipelined, as rhea does), begin;
//! the receiver link attached (with its credit) and answered, the sender link attached and
//! answered with credit; each request sent unsettled and answered by its disposition and the
//! response message, which is accepted; close and its answer. `--client sdk` keeps the real
//! client available.

use std::io::Cursor;

use bytes::{Buf, BytesMut};
use dps_proto::amqp_conn::{write_frame, write_sasl_frame, PROTOCOL_HEADER};
use dps_proto::amqp_message::Incoming;
use dps_proto::dps_amqp::{self as wire, DpsAnswer, DpsRequest};
use fe2o3_amqp_types::definitions::{Handle, ReceiverSettleMode, Role, SenderSettleMode};
use fe2o3_amqp_types::messaging::message::__private::{Deserializable, Serializable};
use fe2o3_amqp_types::messaging::{Accepted, DeliveryState, Source, Target, TargetArchetype};
use fe2o3_amqp_types::performatives::{Attach, Begin, Close, Disposition, Flow, Open, Performative, Transfer};
use fe2o3_amqp_types::primitives::{Binary, Symbol, Value};
use fe2o3_amqp_types::sasl::{SaslCode, SaslInit, SaslOutcome};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::devices::{interpret, Assignment, Device, Registering};

/// The SASL layer's protocol header.
const SASL_HEADER: [u8; 8] = *b"AMQP\x03\x01\x00\x00";
/// The frame size the client announces (rhea's default is larger; the server's is what bounds
/// what it sends here, and DPS answers are a few KiB).
const MAX_FRAME: u32 = 64 * 1024;
/// Credit the client grants on its receiver link (rhea's default window).
const CREDIT: u32 = 100;
/// Handles of the two links.
const RECEIVER: u32 = 0;
const SENDER: u32 = 1;

/// A TLS stream with its read and write buffers.
struct Io<S> {
    stream: S,
    read: BytesMut,
    write: BytesMut,
}

/// One frame read: its type (0 AMQP, 1 SASL), its performative's bytes and its payload's.
struct Frame {
    kind: u8,
    bytes: BytesMut,
    body_at: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Io<S> {
    async fn flush(&mut self, what: &str) -> Result<(), String> {
        self.stream
            .write_all(&self.write)
            .await
            .map_err(|e| format!("{what}: {}", e.kind()))?;
        self.write.clear();
        self.stream.flush().await.map_err(|e| format!("{what}: {}", e.kind()))
    }

    async fn fill(&mut self, what: &str) -> Result<(), String> {
        match self.stream.read_buf(&mut self.read).await {
            Ok(0) => Err(format!("closed awaiting {what}")),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("awaiting {what}: {}", e.kind())),
        }
    }

    /// Reads the 8-byte protocol header the server answers with.
    async fn header(&mut self, expected: [u8; 8], what: &str) -> Result<(), String> {
        while self.read.len() < 8 {
            self.fill(what).await?;
        }
        if self.read.split_to(8)[..] != expected {
            return Err(format!("protocol: {what} is not the expected header"));
        }
        Ok(())
    }

    /// The next non-empty frame.
    async fn frame(&mut self, what: &str) -> Result<Frame, String> {
        loop {
            if self.read.len() >= 8 {
                let size = (&self.read[..4]).get_u32() as usize;
                if size < 8 {
                    return Err(format!("protocol: frame of {size} bytes awaiting {what}"));
                }
                if self.read.len() >= size {
                    let bytes = self.read.split_to(size);
                    let body_at = usize::from(bytes[4]) * 4;
                    if bytes.len() > body_at {
                        return Ok(Frame {
                            kind: bytes[5],
                            bytes,
                            body_at,
                        });
                    }
                    continue; // a heartbeat
                }
            }
            self.fill(what).await?;
        }
    }

    /// The next AMQP performative and the payload after it.
    async fn performative(&mut self, what: &str) -> Result<(Performative, Vec<u8>), String> {
        let f = self.frame(what).await?;
        if f.kind != 0 {
            return Err(format!("protocol: SASL frame awaiting {what}"));
        }
        let mut cursor = Cursor::new(&f.bytes[f.body_at..]);
        let p: Performative =
            serde_amqp::from_reader(&mut cursor).map_err(|_| format!("protocol: undecodable frame awaiting {what}"))?;
        let payload = f.bytes[f.body_at + cursor.position() as usize..].to_vec();
        if let Performative::Close(c) = &p {
            return Err(format!("connection closed awaiting {what}: {:?}", c.error));
        }
        Ok((p, payload))
    }

    /// Frames until `pick` takes one; others (flows, dispositions of no interest) are skipped.
    async fn until<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(Performative, &[u8]) -> Option<T>,
    ) -> Result<T, String> {
        loop {
            let (p, payload) = self.performative(what).await?;
            if let Some(t) = pick(p, &payload) {
                return Ok(t);
            }
        }
    }
}

/// Registers `dev` with DPS over AMQP: register, then poll at once (a dps server assigns
/// synchronously) and, while still assigning, as often as Azure's poll limit allows, retrying
/// throttled or failed requests as the SDK does.
pub async fn register(dev: &Device<'_>) -> Result<Assignment, String> {
    let ctx = dev.ctx;
    let tls = super::wire::tls(&ctx.dps_amqp, dev.source(), dev.tls_config()?).await?;
    let mut io = Io {
        stream: tls,
        read: BytesMut::with_capacity(4096),
        write: BytesMut::with_capacity(4096),
    };
    let node = wire::RegistrationNode {
        id_scope: ctx.id_scope.clone(),
        registration_id: dev.id.clone(),
    }
    .address();
    // X.509 devices skip SASL: the TLS client certificate is their credential, as in the SDKs.
    let token = dev.sas(
        &format!("{}/registrations/{}", ctx.id_scope, dev.id),
        Some("registration"),
    );
    if let Some(token) = token {
        sasl_plain(&mut io, &ctx.dps_host, &node, &token).await?;
    }
    open(&mut io, &ctx.dps_host, &dev.id).await?;
    attach_links(&mut io, &node, dev.api_version()).await?;
    let body = dev.registration_body();
    let mut state = Registering::default();
    let mut delivery_id = 0u32;
    let result = loop {
        let request = match &state.operation {
            None => DpsRequest::Register { body: &body },
            Some(op) => DpsRequest::OperationStatus { operation_id: op },
        };
        let correlation = format!("{}-{delivery_id}", dev.id);
        let answer = exchange(&mut io, delivery_id, &request, &correlation).await?;
        delivery_id += 1;
        if let Some(done) = state
            .follow(interpret(answer.status, answer.retry_after, &answer.body))
            .await
        {
            break done;
        }
    };
    write_frame(&mut io.write, 0, &Close { error: None }, &[]);
    io.flush("close").await?;
    // The server's close answers; the connection is done either way.
    let _ = io.until("the close", |_, _| None::<()>).await;
    result
}

/// SASL PLAIN with the registration SAS token: header, mechanisms, init, outcome.
async fn sasl_plain<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut Io<S>,
    host: &str,
    node: &str,
    token: &str,
) -> Result<(), String> {
    io.write.extend_from_slice(&SASL_HEADER);
    io.flush("the SASL header").await?;
    io.header(SASL_HEADER, "the SASL header").await?;
    io.frame("the SASL mechanisms").await?;
    let init = SaslInit {
        mechanism: Symbol::from("PLAIN"),
        initial_response: Some(Binary::from(wire::format_plain(node, token))),
        hostname: Some(host.to_string()),
    };
    write_sasl_frame(&mut io.write, &init);
    io.flush("the SASL init").await?;
    let f = io.frame("the SASL outcome").await?;
    let outcome: SaslOutcome =
        serde_amqp::from_slice(&f.bytes[f.body_at..]).map_err(|_| "protocol: SASL outcome expected".to_string())?;
    match outcome.code {
        SaslCode::Ok => Ok(()),
        code => Err(format!("SASL refused: {code:?}")),
    }
}

/// The AMQP header and open, pipelined as rhea sends them, then the session.
async fn open<S: AsyncRead + AsyncWrite + Unpin>(io: &mut Io<S>, host: &str, container: &str) -> Result<(), String> {
    io.write.extend_from_slice(&PROTOCOL_HEADER);
    let open = Open {
        container_id: container.to_string(),
        hostname: Some(host.to_string()),
        max_frame_size: MAX_FRAME.into(),
        channel_max: 0.into(),
        idle_time_out: None,
        outgoing_locales: None,
        incoming_locales: None,
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    };
    write_frame(&mut io.write, 0, &open, &[]);
    io.flush("the open").await?;
    io.header(PROTOCOL_HEADER, "the AMQP header").await?;
    io.until("the open", |p, _| matches!(p, Performative::Open(_)).then_some(()))
        .await?;
    let begin = Begin {
        remote_channel: None,
        next_outgoing_id: 0,
        incoming_window: 2048,
        outgoing_window: 2048,
        handle_max: Handle(u32::MAX),
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    };
    write_frame(&mut io.write, 0, &begin, &[]);
    io.flush("the begin").await?;
    io.until("the begin", |p, _| matches!(p, Performative::Begin(_)).then_some(()))
        .await
}

/// The receiver link (with its credit) and the sender link to the registration node, each
/// waited for; the sender's credit too.
async fn attach_links<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut Io<S>,
    node: &str,
    api_version: &str,
) -> Result<(), String> {
    let mut properties = fe2o3_amqp_types::definitions::Fields::new();
    properties.insert(
        Symbol::from(wire::API_VERSION_PROPERTY),
        Value::String(api_version.into()),
    );
    properties.insert(
        Symbol::from(wire::CLIENT_VERSION_PROPERTY),
        Value::String(dps_client::CLIENT_VERSION.into()),
    );
    for (handle, role) in [(RECEIVER, Role::Receiver), (SENDER, Role::Sender)] {
        let sends = matches!(role, Role::Sender);
        let attach = Attach {
            name: format!("{}-{handle}", if sends { "sender" } else { "receiver" }),
            handle: Handle(handle),
            role,
            snd_settle_mode: SenderSettleMode::Mixed,
            rcv_settle_mode: ReceiverSettleMode::First,
            source: Some(Box::new(Source::builder().address(node).build())),
            target: Some(Box::new(TargetArchetype::Target(
                Target::builder().address(node).build(),
            ))),
            unsettled: None,
            incomplete_unsettled: false,
            initial_delivery_count: sends.then_some(0),
            max_message_size: None,
            offered_capabilities: None,
            desired_capabilities: None,
            properties: Some(properties.clone()),
        };
        write_frame(&mut io.write, 0, &attach, &[]);
        if !sends {
            write_frame(&mut io.write, 0, &link_flow(RECEIVER, 0), &[]);
        }
        io.flush("an attach").await?;
        io.until("the attach", |p, _| match p {
            Performative::Attach(a) if a.handle.0 == handle => Some(()),
            _ => None,
        })
        .await?;
    }
    io.until("credit", |p, _| match p {
        Performative::Flow(f) if f.handle.as_ref().map(|h| h.0) == Some(SENDER) && f.link_credit > Some(0) => Some(()),
        _ => None,
    })
    .await
}

/// The flow granting [`CREDIT`] on link `handle`.
fn link_flow(handle: u32, delivery_count: u32) -> Flow {
    Flow {
        next_incoming_id: Some(0),
        incoming_window: 2048,
        next_outgoing_id: 0,
        outgoing_window: 2048,
        handle: Some(Handle(handle)),
        delivery_count: Some(delivery_count),
        link_credit: Some(CREDIT),
        available: None,
        drain: false,
        echo: false,
        properties: None,
    }
}

/// Sends one request unsettled and waits for its outcome and, when accepted, the response (which
/// is accepted in turn).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut Io<S>,
    delivery_id: u32,
    request: &DpsRequest<'_>,
    correlation: &str,
) -> Result<DpsAnswer, String> {
    let mut message = Vec::with_capacity(512);
    serde::Serialize::serialize(
        &Serializable(wire::request_message(request, correlation)),
        &mut serde_amqp::ser::Serializer::new(&mut message),
    )
    .map_err(|e| format!("encoding the request: {e}"))?;
    let transfer = Transfer {
        handle: Handle(SENDER),
        delivery_id: Some(delivery_id),
        delivery_tag: Some(Binary::from(delivery_id.to_be_bytes().to_vec())),
        message_format: Some(0),
        settled: Some(false),
        more: false,
        rcv_settle_mode: None,
        state: None,
        resume: false,
        aborted: false,
        batchable: false,
    };
    write_frame(&mut io.write, 0, &transfer, &message);
    io.flush("a request").await?;
    let mut outcome: Option<DeliveryState> = None;
    let mut response: Option<(u32, DpsAnswer)> = None;
    loop {
        let (p, payload) = io.performative("the DPS answer").await?;
        match p {
            Performative::Disposition(d) if d.role == Role::Receiver => outcome = d.state,
            Performative::Transfer(t) if t.handle.0 == RECEIVER => {
                let msg = serde_amqp::from_slice::<Deserializable<Incoming>>(&payload)
                    .map_err(|_| "protocol: undecodable DPS response".to_string())?
                    .0;
                let answers = msg
                    .properties
                    .as_ref()
                    .and_then(|p| p.correlation_id.as_ref())
                    .is_some_and(
                        |c| matches!(c, fe2o3_amqp_types::messaging::MessageId::String(s) if s == correlation),
                    );
                let id = t.delivery_id.unwrap_or_default();
                if t.settled != Some(true) {
                    let accept = Disposition {
                        role: Role::Receiver,
                        first: id,
                        last: None,
                        settled: true,
                        state: Some(DeliveryState::Accepted(Accepted {})),
                        batchable: false,
                    };
                    write_frame(&mut io.write, 0, &accept, &[]);
                }
                if answers {
                    response = Some((id, wire::response_answer(&msg)));
                }
            }
            _ => {}
        }
        match (&outcome, &response) {
            (Some(DeliveryState::Accepted(_)), Some(_)) => break,
            (Some(DeliveryState::Rejected(r)), _) => return Ok(wire::rejection_answer(r.error.as_ref())),
            (Some(DeliveryState::Accepted(_)), None) | (None, _) => {}
            (Some(other), _) => return Err(format!("protocol: request outcome {other:?}")),
        }
    }
    // The response's acceptance goes out with the next request (or the close).
    let (delivery, answer) = response.expect("the loop ends with a response");
    if delivery % CREDIT == CREDIT - 1 {
        write_frame(&mut io.write, 0, &link_flow(RECEIVER, delivery + 1), &[]);
    }
    Ok(answer)
}

//! Registration over AMQP 1.0 (device-protocol.md §4; amqp-wire notes §1-5): one TLS
//! connection, authenticated in its SASL layer — `PLAIN` with the registration SAS token for
//! symmetric keys, DPS's `TPM` mechanism for TPMs, none for X.509 devices (the TLS client
//! certificate is the credential) — then one session with a receiver and a sender link on
//! `{idScope}/registrations/{registrationId}`. Requests are messages with
//! `iotdps-operation-type` and a string correlation id; an accepted request is answered on the
//! receiver link by a message with the same correlation id (JSON body, `retry-after`); a refused
//! one is *rejected*, the DPS error JSON in the rejection's description.

use dps_proto::dps_amqp::{self as wire, DpsAnswer, DpsRequest, RegistrationNode, TpmInit};
use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::link::SendError;
use fe2o3_amqp::types::definitions::Fields;
use fe2o3_amqp::types::messaging::Outcome;
use fe2o3_amqp::types::primitives::{Symbol, Value};
use fe2o3_amqp::{Receiver, Sender, Session};
use tokio_rustls::client::TlsStream;

use super::{interpret, Next, ProvisioningClient, RegistrationResult, CLIENT_VERSION};
use crate::amqp;
use crate::amqp::sasl::{Reply, Sasl};
use crate::security::TpmPublicKeys;
use crate::ClientError;

/// The largest activation blob accepted in the TPM exchange. A blob for an RSA-2048 EK is about
/// 700 bytes; a server sending more is not a DPS.
const MAX_TPM_BLOB: usize = 16 * 1024;

/// What a request asks.
#[derive(Debug, Clone)]
enum Request {
    Register,
    Poll(String),
}

impl ProvisioningClient {
    /// Registers over AMQP; `tpm` holds the TPM's keys when the provider is a TPM.
    pub(super) async fn register_amqp(
        &self,
        body: Vec<u8>,
        tpm: Option<&TpmPublicKeys>,
    ) -> Result<RegistrationResult, ClientError> {
        let node = RegistrationNode {
            id_scope: self.id_scope.clone(),
            registration_id: self.provider.registration_id().to_string(),
        }
        .address();
        let mut stream = amqp::tls_stream(&self.host, self.port(), self.tls()?).await?;
        match tpm {
            Some(keys) => self.sasl_tpm(&mut stream, keys).await?,
            None => {
                // X.509 devices skip SASL: the TLS client certificate is their credential, as in
                // all three Azure SDKs.
                if let Some(token) = self.sas("registration")? {
                    Sasl::start(&mut stream, "PLAIN", wire::format_plain(&node, &token))
                        .await?
                        .finish()
                        .await?;
                }
            }
        }
        let mut connection = amqp::open(stream, &self.host).await?;
        let result = self.register_on(&mut connection, &node, body).await;
        // `register_on` closed it, unless it failed before its links were up.
        amqp::close(&mut connection).await;
        result
    }

    /// The `TPM` SASL mechanism: init with the EK, answer the 1-byte challenge with the SRK,
    /// collect the activation blob from the challenge segments, import it into the TPM as the
    /// HTTPS flow imports its 401 challenge, and answer with a SAS token signed by the key it
    /// carried.
    async fn sasl_tpm(
        &self,
        stream: &mut TlsStream<tokio::net::TcpStream>,
        keys: &TpmPublicKeys,
    ) -> Result<(), ClientError> {
        let init = TpmInit {
            id_scope: self.id_scope.clone(),
            registration_id: self.provider.registration_id().to_string(),
            endorsement_key: keys.endorsement_key.clone(),
        };
        let protocol = |what: String| ClientError::Protocol(format!("AMQP SASL TPM: {what}"));
        let mut sasl = Sasl::start(stream, wire::TPM_MECHANISM, init.to_bytes()).await?;
        match sasl.reply().await? {
            Reply::Challenge(c) if c == [0] => {}
            other => {
                return Err(protocol(format!(
                    "expected the 1-byte challenge for the SRK, got {other:?}"
                )))
            }
        }
        sasl.respond(wire::response_with_marker(&keys.storage_root_key)).await?;
        let mut blob = Vec::new();
        loop {
            let Reply::Challenge(segment) = sasl.reply().await? else {
                return Err(protocol(
                    "the exchange ended before the activation blob was sent".into(),
                ));
            };
            let (data, last) = wire::parse_challenge_segment(&segment).map_err(|e| protocol(e.to_string()))?;
            blob.extend_from_slice(data);
            if blob.len() > MAX_TPM_BLOB {
                return Err(protocol(format!("activation blob over {MAX_TPM_BLOB} bytes")));
            }
            if last {
                break;
            }
            sasl.respond(wire::response_with_marker(&[])).await?;
        }
        self.import_tpm_bytes(blob, "TPM challenge (SASL)").await?;
        tracing::debug!("TPM challenge imported; answering with a TPM-signed SAS");
        let token = self
            .sas("registration")?
            .ok_or_else(|| ClientError::Credential("the TPM provider signs no SAS token".into()))?;
        sasl.respond(wire::response_with_marker(token.as_bytes())).await?;
        sasl.finish().await
    }

    /// Attaches the two links to the registration node and registers, polling until the
    /// operation completes.
    async fn register_on(
        &self,
        connection: &mut ConnectionHandle<()>,
        node: &str,
        body: Vec<u8>,
    ) -> Result<RegistrationResult, ClientError> {
        let mut session = Session::begin(connection)
            .await
            .map_err(|e| ClientError::connection(format!("beginning the AMQP session for {node}"), &e))?;
        let mut properties = Fields::new();
        properties.insert(
            Symbol::from(wire::API_VERSION_PROPERTY),
            Value::String(self.api_version().into()),
        );
        properties.insert(
            Symbol::from(wire::CLIENT_VERSION_PROPERTY),
            Value::String(CLIENT_VERSION.into()),
        );
        let link = uuid::Uuid::new_v4().simple();
        // The receiver first, as the Node SDK: the answer to the first request must have a link
        // to arrive on.
        let mut receiver = Receiver::builder()
            .name(format!("dps-receiver-{link}"))
            .source(node)
            .properties(properties.clone())
            .attach(&mut session)
            .await
            .map_err(|e| amqp::link_failure(&format!("attaching the response link on {node}"), &e))?;
        let mut sender = Sender::builder()
            .name(format!("dps-sender-{link}"))
            .target(node)
            .properties(properties)
            .attach(&mut session)
            .await
            .map_err(|e| amqp::link_failure(&format!("attaching the request link on {node}"), &e))?;
        let result = self.requests(&mut sender, &mut receiver, body).await;
        // Closing the connection ends the session and its links with it (AMQP 1.0 §2.4.6), in
        // one round trip: detaching and ending one by one would cost three more. The handles
        // are dropped only once the connection is closed, so the detaches and end their drops
        // queue never race the close (fe2o3's client fails its own close when the answer to
        // an end it sent arrives after its close went out).
        amqp::close(connection).await;
        drop((sender, receiver, session));
        result
    }

    /// The register request, then polls, with the same retry rules as MQTT and HTTPS.
    async fn requests(
        &self,
        sender: &mut Sender,
        receiver: &mut Receiver,
        body: Vec<u8>,
    ) -> Result<RegistrationResult, ClientError> {
        let mut request = Request::Register;
        let mut retries = 0;
        loop {
            let answer = self.request(sender, receiver, &request, &body).await?;
            let polled = matches!(request, Request::Poll(_));
            let step = interpret(answer.status, answer.retry_after, &answer.body, &self.poll, polled)?;
            match self.follow(step, &mut retries)? {
                Next::Done(r) => return Ok(*r),
                Next::After { delay, poll } => {
                    if let Some(operation) = poll {
                        request = Request::Poll(operation);
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Sends one request and waits for its answer: the response message with its correlation
    /// id when the request is accepted, the rejection's error otherwise.
    async fn request(
        &self,
        sender: &mut Sender,
        receiver: &mut Receiver,
        request: &Request,
        body: &[u8],
    ) -> Result<DpsAnswer, ClientError> {
        let correlation = uuid::Uuid::new_v4().to_string();
        let request = match request {
            Request::Register => DpsRequest::Register { body },
            Request::Poll(operation) => DpsRequest::OperationStatus {
                operation_id: operation,
            },
        };
        let msg = wire::request_message(&request, &correlation);
        let outcome = sender.send(msg).await.map_err(|e| match e {
            // The link's max-message-size is the server's limit: checked before sending, so the
            // request never reaches the server to be refused with 413.
            SendError::MessageSizeExceeded(e) => ClientError::Unsupported(format!(
                "the registration request is larger than the server accepts on its link ({e}); send a smaller payload"
            )),
            e => amqp::link_failure("sending a DPS request over AMQP", &e),
        })?;
        match outcome {
            Outcome::Accepted(_) => self.response(receiver, &correlation).await,
            Outcome::Rejected(r) => Ok(wire::rejection_answer(r.error.as_ref())),
            // The server did not take the request (shutting down, overloaded): a server error,
            // retried as HTTP 503 is.
            Outcome::Released(_) | Outcome::Modified(_) => Ok(DpsAnswer {
                status: 503,
                retry_after: None,
                body: format!("the request was not processed ({outcome:?})").into_bytes(),
            }),
            #[allow(unreachable_patterns)]
            other => Err(ClientError::Protocol(format!("unexpected outcome {other:?}"))),
        }
    }

    /// The response to the request with `correlation` (a retry's late predecessor is skipped).
    async fn response(&self, receiver: &mut Receiver, correlation: &str) -> Result<DpsAnswer, ClientError> {
        let delivery = amqp::reply(receiver, correlation, "a DPS response over AMQP").await?;
        Ok(wire::response_answer(delivery.message()))
    }
}

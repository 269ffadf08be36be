//! Registration over AMQP 1.0 (device-protocol.md §4; amqp-wire notes §1-5): one TLS
//! connection, authenticated in its SASL layer — `PLAIN` with the registration SAS token for
//! symmetric keys, DPS's `TPM` mechanism for TPMs, none for X.509 devices (the TLS client
//! certificate is the credential) — then one session with a receiver and a sender link on
//! `{idScope}/registrations/{registrationId}`. Requests are messages with
//! `iotdps-operation-type` and a string correlation id; an accepted request is answered on the
//! receiver link by a message with the same correlation id (JSON body, `retry-after`); a refused
//! one is *rejected*, the DPS error JSON in the rejection's description.

use dps_proto::dps_amqp::{self as wire, RegistrationNode, TpmInit};
use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::link::SendError;
use fe2o3_amqp::types::definitions::Fields;
use fe2o3_amqp::types::messaging::{ApplicationProperties, Message, MessageId, Outcome, Properties};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Symbol, Value};
use fe2o3_amqp::{Receiver, Sender, Session};
use tokio_rustls::client::TlsStream;

use super::{interpret, Next, ProvisioningClient, RegistrationResult, CLIENT_VERSION, DEVICE_API_VERSION};
use crate::amqp::sasl::{Reply, Sasl};
use crate::amqp::{self, Incoming};
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

/// The answer to a request: its status as the HTTP and MQTT transports see it, `retry-after`,
/// and the JSON body (the operation status, or the DPS error).
struct Answer {
    status: u16,
    retry_after: Option<u32>,
    body: Vec<u8>,
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
        if let Err(e) = connection.close().await {
            tracing::debug!(error = %e, "the AMQP connection did not close cleanly");
        }
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
            Value::String(DEVICE_API_VERSION.into()),
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
        // Dropped, not closed one by one: each drop queues its detach (or end) without waiting
        // for the answer, and closing the connection ends them all anyway. Waiting for each
        // answer would cost the device three more round trips for nothing.
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
    ) -> Result<Answer, ClientError> {
        let correlation = uuid::Uuid::new_v4().to_string();
        let app = match request {
            Request::Register => ApplicationProperties::builder()
                .insert(wire::OPERATION_TYPE, wire::REGISTER)
                .insert(wire::FORCE_REGISTRATION, false),
            Request::Poll(operation) => ApplicationProperties::builder()
                .insert(wire::OPERATION_TYPE, wire::GET_OPERATION_STATUS)
                .insert(wire::OPERATION_ID, operation.as_str()),
        };
        // Polls carry no body; the server reads only their properties.
        let data = match request {
            Request::Register => body.to_vec(),
            Request::Poll(_) => Vec::new(),
        };
        let msg = Message::builder()
            .properties(
                Properties::builder()
                    .correlation_id(MessageId::String(correlation.clone()))
                    .content_type(Symbol::from("application/json"))
                    .build(),
            )
            .application_properties(app.build())
            .data(Binary::from(data))
            .build();
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
            Outcome::Rejected(r) => Ok(rejected(r.error)),
            // The server did not take the request (shutting down, overloaded): a server error,
            // retried as HTTP 503 is.
            Outcome::Released(_) | Outcome::Modified(_) => Ok(Answer {
                status: 503,
                retry_after: None,
                body: format!("the request was not processed ({outcome:?})").into_bytes(),
            }),
            #[allow(unreachable_patterns)]
            other => Err(ClientError::Protocol(format!("unexpected outcome {other:?}"))),
        }
    }

    /// The response to the request with `correlation` (a retry's late predecessor is skipped).
    async fn response(&self, receiver: &mut Receiver, correlation: &str) -> Result<Answer, ClientError> {
        let delivery = amqp::reply(receiver, correlation, "a DPS response over AMQP").await?;
        let msg: &Incoming = delivery.message();
        let retry_after = msg
            .application_properties
            .as_ref()
            .and_then(|p| p.0.get(wire::RETRY_AFTER).or_else(|| p.0.get(wire::RETRY_AFTER_CSHARP)))
            .and_then(amqp::seconds);
        Ok(Answer {
            status: 200,
            retry_after,
            body: amqp::body_bytes(msg),
        })
    }
}

/// A rejection as the status and error body the HTTPS transport would have seen: the status from
/// the description's `errorCode` (HTTP status × 1000 + sub-code, as the C# SDK reads it), else
/// from the condition; `retry-after` from the error's `info`.
fn rejected(error: Option<fe2o3_amqp::types::definitions::Error>) -> Answer {
    let Some(error) = error else {
        return Answer {
            status: 400,
            retry_after: None,
            body: b"the request was rejected without an error".to_vec(),
        };
    };
    let condition = amqp::condition_name(&error.condition);
    let body = error.description.unwrap_or_else(|| condition.clone()).into_bytes();
    let code = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("errorCode").and_then(serde_json::Value::as_u64))
        .and_then(|c| u16::try_from(c / 1000).ok())
        .filter(|s| (400..600).contains(s));
    let retry_after = error.info.as_ref().and_then(|info| {
        [wire::RETRY_AFTER, wire::RETRY_AFTER_CSHARP]
            .iter()
            .filter_map(|k| info.get(&Symbol::from(*k)))
            .find_map(|v| SimpleValue::try_from(v.clone()).ok().as_ref().and_then(amqp::seconds))
    });
    Answer {
        status: code.unwrap_or_else(|| wire::status_of_condition(&condition)),
        retry_after,
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fe2o3_amqp::types::definitions::{AmqpError, Error, ErrorCondition};

    fn error(condition: &str, description: Option<&str>, retry_after: Option<Value>) -> Error {
        let info = retry_after.map(|v| {
            let mut f = Fields::new();
            f.insert(Symbol::from(wire::RETRY_AFTER), v);
            f
        });
        // As the client decodes it: a standard condition becomes its own variant.
        let condition = match condition {
            "amqp:internal-error" => ErrorCondition::AmqpError(AmqpError::InternalError),
            "amqp:not-found" => ErrorCondition::AmqpError(AmqpError::NotFound),
            other => ErrorCondition::Custom(Symbol::from(other)),
        };
        Error::new(condition, description.map(str::to_string), info)
    }

    #[test]
    fn rejections_read_as_their_http_status() {
        let a = rejected(Some(error(
            "com.microsoft:device-container-throttled",
            Some(r#"{"errorCode":429001,"message":"slow down"}"#),
            Some(Value::Int(7)),
        )));
        assert_eq!((a.status, a.retry_after), (429, Some(7)));
        assert_eq!(
            ClientError::from_error_body(a.status, &a.body).error_code(),
            Some(429001)
        );
        // The errorCode wins over the condition; no JSON: the condition decides.
        let a = rejected(Some(error(
            "amqp:internal-error",
            Some(r#"{"errorCode":401002,"message":"m"}"#),
            None,
        )));
        assert_eq!(a.status, 401);
        let a = rejected(Some(error("amqp:not-found", Some("no such registration"), None)));
        assert_eq!(a.status, 404);
        assert_eq!(a.body, b"no such registration");
        let a = rejected(Some(error(
            "amqp:internal-error",
            None,
            Some(Value::String("3".into())),
        )));
        assert_eq!((a.status, a.retry_after), (500, Some(3)));
        assert_eq!(rejected(None).status, 400);
    }
}

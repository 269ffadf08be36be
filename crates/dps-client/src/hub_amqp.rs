//! [`AmqpHubClient`]: a device's connection to its IoT hub over AMQP 1.0, as the Node device SDK
//! makes it (amqp-wire notes §6-8): TLS without SASL, then, for a SAS device, a CBS put-token on
//! `$cbs` (a sender and a receiver for the reply); X.509 devices are known by their TLS
//! certificate and skip CBS. Telemetry goes on a sender to `/devices/{id}/messages/events`; twin
//! requests on a sender to `/devices/{id}/twin` with the `operation` annotation, answered on a
//! receiver from the same node with the request's correlation id and a `status` annotation.
//!
//! The subset of [`crate::HubClient`] a provisioned device needs first — telemetry and the twin
//! read — so the two transports can be compared on the same flows.

use std::sync::Arc;
use std::time::Duration;

use dps_proto::dps_amqp::{API_VERSION_PROPERTY, CLIENT_VERSION_PROPERTY};
use dps_proto::hub_amqp::{self as wire, HubNode};
use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::definitions::Fields;
use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Message, MessageAnnotations, MessageId, Outcome, Properties,
};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Symbol, Value};
use fe2o3_amqp::{Receiver, Sender, Session};
use serde_json::Value as Json;
use tokio::sync::Mutex;

use crate::amqp::{self, Incoming};
use crate::provisioning::expiry;
use crate::security::{sas_token, SecurityProvider};
use crate::{ClientError, CLIENT_VERSION, HUB_API_VERSION};

/// A device connected to its IoT hub over AMQP. Obtain with [`AmqpHubClient::connect`].
pub struct AmqpHubClient {
    device_id: String,
    timeout: Duration,
    connection: Mutex<ConnectionHandle<()>>,
    session: Mutex<SessionHandle<()>>,
    telemetry: Mutex<Sender>,
    /// The twin request link and its reply link, locked together: one request at a time.
    twin: Mutex<(Sender, Receiver)>,
}

impl std::fmt::Debug for AmqpHubClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpHubClient")
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

impl AmqpHubClient {
    /// Connects device `device_id` to hub `host` on `port` (5671 normally, see
    /// [`crate::Transport::default_port`]), trusting
    /// `ca_pem`: authenticates it (CBS put-token with a SAS the provider signs, valid for
    /// `sas_ttl`, or its TLS certificate) and attaches the telemetry and twin links. `timeout`
    /// bounds the connection and each later request.
    #[tracing::instrument(skip_all, fields(hub = %host, device_id = %device_id))]
    pub async fn connect(
        host: &str,
        port: u16,
        device_id: &str,
        provider: Arc<dyn SecurityProvider>,
        ca_pem: &str,
        timeout: Duration,
        sas_ttl: Duration,
    ) -> Result<Self, ClientError> {
        if device_id.is_empty() {
            return Err(ClientError::Credential("the device id is empty".into()));
        }
        let connect = async {
            let tls = crate::tls_config(provider.as_ref(), ca_pem)?;
            let stream = amqp::tls_stream(host, port, tls).await?;
            let mut connection = amqp::open(stream, host).await?;
            let mut session = Session::begin(&mut connection)
                .await
                .map_err(|e| ClientError::connection(format!("beginning the AMQP session with {host}"), &e))?;
            if !crate::presents_certificate(provider.as_ref()) {
                let resource = format!("{host}/devices/{device_id}");
                let token = sas_token(provider.as_ref(), &resource, expiry(sas_ttl), None)?;
                cbs_put_token(&mut session, &resource, token).await?;
            }
            let link = uuid::Uuid::new_v4().simple();
            let id = device_id.to_string();
            let telemetry = Sender::builder()
                .name(format!("telemetry-{link}"))
                .target(
                    HubNode::Telemetry {
                        device_id: id.clone(),
                        module_id: None,
                    }
                    .address(),
                )
                .properties(link_properties(None))
                .attach(&mut session)
                .await
                .map_err(|e| amqp::link_failure("attaching the telemetry link", &e))?;
            let twin_node = HubNode::Twin {
                device_id: id,
                module_id: None,
            }
            .address();
            let channel = format!("twin:{link}");
            let twin_replies = Receiver::builder()
                .name(format!("twin-receiver-{link}"))
                .source(twin_node.clone())
                .properties(link_properties(Some(&channel)))
                .attach(&mut session)
                .await
                .map_err(|e| amqp::link_failure("attaching the twin response link", &e))?;
            let twin_requests = Sender::builder()
                .name(format!("twin-sender-{link}"))
                .target(twin_node)
                .properties(link_properties(Some(&channel)))
                .attach(&mut session)
                .await
                .map_err(|e| amqp::link_failure("attaching the twin request link", &e))?;
            Ok::<_, ClientError>(Self {
                device_id: device_id.to_string(),
                timeout,
                connection: Mutex::new(connection),
                session: Mutex::new(session),
                telemetry: Mutex::new(telemetry),
                twin: Mutex::new((twin_requests, twin_replies)),
            })
        };
        let client = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| ClientError::Timeout {
                what: format!("the AMQP connection to {host}:{port}"),
                after: timeout,
            })??;
        tracing::info!("connected to the hub over AMQP");
        Ok(client)
    }

    /// The device id.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// Sends a device-to-cloud message. `properties` as for [`crate::HubClient::send_event`]:
    /// `$.ct`, `$.ce`, `$.mid`, `$.cid` become the message's content type, content encoding,
    /// message id and correlation id; other names are application properties.
    pub async fn send_event(&self, body: impl Into<Vec<u8>>, properties: &[(&str, &str)]) -> Result<(), ClientError> {
        let mut p = Properties::builder();
        let mut app = ApplicationProperties::builder();
        for (name, value) in properties {
            match *name {
                "$.ct" => p = p.content_type(Symbol::from(*value)),
                "$.ce" => p = p.content_encoding(Symbol::from(*value)),
                "$.mid" => p = p.message_id(value.to_string()),
                "$.cid" => p = p.correlation_id(value.to_string()),
                other => app = app.insert(other, *value),
            }
        }
        let msg = Message::builder()
            .properties(p.build())
            .application_properties(app.build())
            .data(Binary::from(body.into()))
            .build();
        let send = async {
            let outcome = self
                .telemetry
                .lock()
                .await
                .send(msg)
                .await
                .map_err(|e| amqp::link_failure("sending telemetry", &e))?;
            settled(outcome, "telemetry")
        };
        self.within("the telemetry acknowledgement", send).await
    }

    /// Reads the device twin: `{"desired": {...}, "reported": {...}}`.
    pub async fn get_twin(&self) -> Result<Json, ClientError> {
        let request = async {
            let mut twin = self.twin.lock().await;
            let (sender, receiver) = &mut *twin;
            let correlation = uuid::Uuid::new_v4().to_string();
            let msg = Message::builder()
                .properties(
                    Properties::builder()
                        .correlation_id(MessageId::String(correlation.clone()))
                        .build(),
                )
                .message_annotations(
                    MessageAnnotations::builder()
                        .insert(Symbol::from(wire::TWIN_OPERATION), Value::String("GET".into()))
                        .build(),
                )
                .data(Binary::from(b" ".to_vec()))
                .build();
            let outcome = sender
                .send(msg)
                .await
                .map_err(|e| amqp::link_failure("sending a twin request", &e))?;
            settled(outcome, "the twin request")?;
            // Desired-property notifications (no correlation id) are skipped.
            let delivery = amqp::reply(receiver, &correlation, "the twin").await?;
            let msg: &Incoming = delivery.message();
            let body = dps_proto::amqp_message::body_bytes(msg).unwrap_or_default();
            let status = twin_status(msg).unwrap_or(200);
            if !(200..300).contains(&status) {
                return Err(ClientError::from_error_body(status, &body));
            }
            serde_json::from_slice(&body).map_err(|e| {
                ClientError::Protocol(format!("the twin is not JSON: {e}: {}", String::from_utf8_lossy(&body)))
            })
        };
        self.within("the twin", request).await
    }

    /// Whether the connection is still open.
    pub fn is_connected(&self) -> bool {
        self.connection.try_lock().map_or(true, |c| !c.is_closed())
    }

    /// Closes the connection. The links and the session are dropped first, which queues their
    /// detach and end without waiting for each answer (closing the connection ends them anyway).
    pub async fn disconnect(self) -> Result<(), ClientError> {
        // The connection's close ends the session and its links (AMQP 1.0 §2.4.6); their
        // handles go only after, so the detaches and end their drops queue never race it (see
        // `provisioning::amqp`).
        let closed = self
            .connection
            .into_inner()
            .close()
            .await
            .map_err(|e| ClientError::connection("closing the AMQP connection", &e));
        drop((self.telemetry, self.twin, self.session));
        closed
    }

    async fn within<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        tokio::time::timeout(self.timeout, f)
            .await
            .map_err(|_| ClientError::Timeout {
                what: what.to_string(),
                after: self.timeout,
            })?
    }
}

/// The attach properties of a hub link: the API version, and the channel correlation id that
/// pairs the twin's request and reply links.
fn link_properties(channel: Option<&str>) -> Fields {
    let mut f = Fields::new();
    f.insert(
        Symbol::from(API_VERSION_PROPERTY),
        Value::String(HUB_API_VERSION.into()),
    );
    f.insert(
        Symbol::from(CLIENT_VERSION_PROPERTY),
        Value::String(CLIENT_VERSION.into()),
    );
    if let Some(c) = channel {
        f.insert(Symbol::from(wire::CHANNEL_CORRELATION_ID), Value::String(c.into()));
    }
    f
}

/// Puts `token` (for `audience`) on `$cbs` and waits for the reply: `status-code` 200, or the
/// refusal as [`ClientError::Service`] with the reply's status and description. Public for the
/// other AMQP clients of the project (the bench's Event Hubs consumer).
pub async fn cbs_put_token(session: &mut SessionHandle<()>, audience: &str, token: String) -> Result<(), ClientError> {
    let link = uuid::Uuid::new_v4().simple();
    let mut replies = Receiver::builder()
        .name(format!("cbs-receiver-{link}"))
        .source(wire::CBS_NODE)
        .attach(session)
        .await
        .map_err(|e| amqp::link_failure("attaching the $cbs reply link", &e))?;
    let mut requests = Sender::builder()
        .name(format!("cbs-sender-{link}"))
        .target(wire::CBS_NODE)
        .attach(session)
        .await
        .map_err(|e| amqp::link_failure("attaching the $cbs link", &e))?;
    let id = uuid::Uuid::new_v4().to_string();
    let msg = Message::builder()
        .properties(
            Properties::builder()
                .message_id(MessageId::String(id.clone()))
                .to(wire::CBS_NODE)
                .reply_to("cbs")
                .build(),
        )
        .application_properties(
            ApplicationProperties::builder()
                .insert(wire::CBS_OPERATION, wire::PUT_TOKEN)
                .insert(wire::CBS_TYPE, wire::SAS_TOKEN_TYPE)
                .insert(wire::CBS_NAME, audience)
                .build(),
        )
        .value(Value::String(token))
        .build();
    let outcome = requests
        .send(msg)
        .await
        .map_err(|e| amqp::link_failure("sending the CBS put-token", &e))?;
    settled(outcome, "the CBS put-token")?;
    let result = {
        let delivery = amqp::reply(&mut replies, &id, "the CBS reply").await?;
        let msg: &Incoming = delivery.message();
        let app = msg.application_properties.as_ref();
        let status = app
            .and_then(|a| a.0.get(wire::CBS_STATUS_CODE))
            .and_then(amqp::seconds)
            .and_then(|s| u16::try_from(s).ok())
            .unwrap_or(0);
        let description = match app.and_then(|a| a.0.get(wire::CBS_STATUS_DESCRIPTION)) {
            Some(SimpleValue::String(s)) => s.clone(),
            _ => String::new(),
        };
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(ClientError::Service {
                status,
                error_code: None,
                message: format!("CBS put-token for '{audience}' refused: {description}"),
                tracking_id: None,
            })
        }
    };
    // The token stands for the connection's lifetime; the CBS links are not needed after it.
    let _ = requests.close().await;
    let _ = replies.close().await;
    result
}

/// The `status` annotation of a twin response.
fn twin_status(msg: &Incoming) -> Option<u16> {
    msg.message_annotations
        .as_ref()?
        .0
        .iter()
        .find_map(|(k, v)| match (k, v) {
            (OwnedKey::Symbol(s), Value::Int(n)) if s.0 == wire::TWIN_STATUS => u16::try_from(*n).ok(),
            _ => None,
        })
}

/// A message the hub had to accept: any other outcome is its refusal.
fn settled(outcome: Outcome, what: &str) -> Result<(), ClientError> {
    match outcome {
        Outcome::Accepted(_) => Ok(()),
        Outcome::Rejected(r) => {
            let (condition, description) = r
                .error
                .map(|e| (amqp::condition_name(&e.condition), e.description.unwrap_or_default()))
                .unwrap_or_default();
            Err(ClientError::Service {
                status: dps_proto::dps_amqp::status_of_condition(&condition),
                error_code: None,
                message: format!("{what} was rejected ({condition}): {description}"),
                tracking_id: None,
            })
        }
        other => Err(ClientError::Protocol(format!("{what} was not accepted: {other:?}"))),
    }
}

//! The DPS registration node over AMQP: the device attaches a sender (its requests) and a
//! receiver (the responses) to `{idScope}/registrations/{registrationId}`. Each request message
//! carries `iotdps-operation-type` and a correlation id; a successful answer is accepted and
//! answered by a message on the receiver link with the same correlation id, the JSON body in a
//! data section and `retry-after` as an application property; a refusal rejects the request with
//! the DPS error (condition by status, the JSON error as description, `retry-after` in `info`).

use std::sync::Arc;
use std::time::Duration;

use dps_core::{Credential, DeviceRequest};
use dps_proto::dps_amqp::{self as wire, RegistrationNode};
use fe2o3_amqp::acceptor::{LinkEndpoint, ListenerSessionHandle};
use fe2o3_amqp::types::definitions::{self, ErrorCondition, Fields};
use fe2o3_amqp::types::messaging::{ApplicationProperties, Body, Properties};
use fe2o3_amqp::types::performatives::Attach;
use fe2o3_amqp::types::primitives::{SimpleValue, Symbol, Value};
use fe2o3_amqp::{Delivery, Receiver};
use tokio::task::JoinSet;

use super::auth::{authenticate_dps, ConnIdentity, DpsDevice};
use super::links::{self, Refusal};
use super::message::{self, Incoming};
use super::Conn;
use crate::dps_device::{self, Answer, DpsOperation};
use crate::ApiError;

/// How long a response may wait for the device to take it (link credit and settlement).
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Attaches a link to a registration node, if this connection may: one authenticated for this
/// registration by SASL (PLAIN or TPM), or one with a TLS client certificate the engine accepts
/// for it.
pub(super) async fn attach(
    session: &mut ListenerSessionHandle,
    attach: Attach,
    node: RegistrationNode,
    conn: &Arc<Conn>,
    tasks: &mut JoinSet<()>,
) {
    let device = match device_for(conn, &node).await {
        Ok(d) => d,
        Err(why) => return links::refuse(session, attach, why).await,
    };
    let address = node.address();
    let acceptor = links::acceptor(conn.services.config.max_message_bytes);
    match acceptor.accept_incoming_attach(attach, session).await {
        Ok(LinkEndpoint::Sender(sender)) => {
            // The responses' link: kept until the connection ends (or the device attaches another).
            conn.replies.insert(&address, sender);
        }
        Ok(LinkEndpoint::Receiver(receiver)) => {
            tasks.spawn(serve_requests(receiver, conn.clone(), address, device));
        }
        Err(e) => tracing::debug!(error = %e, "DPS link did not attach"),
    }
}

/// The device this connection speaks for on `node`, or why it may not attach there.
async fn device_for(conn: &Conn, node: &RegistrationNode) -> Result<Arc<DpsDevice>, Refusal> {
    if let ConnIdentity::Dps(device) = &conn.identity {
        let same = device.request.id_scope == node.id_scope
            && device
                .request
                .registration_id
                .eq_ignore_ascii_case(&node.registration_id);
        return if same {
            Ok(device.clone())
        } else {
            Err(Refusal::Unauthorized(format!(
                "this connection authenticated registration '{}' and may not attach '{}'",
                device.request.registration_id,
                node.address()
            )))
        };
    }
    if conn.peer_certs.is_empty() {
        return Err(Refusal::Unauthorized(
            "no credential: authenticate with SASL PLAIN (user '{idScope}/registrations/{registrationId}', \
             a registration SAS token as password), the TPM mechanism, or a TLS client certificate"
                .into(),
        ));
    }
    if let Some(d) = conn.x509_devices.lock().get(&node.address()) {
        return Ok(d.clone());
    }
    let request = DeviceRequest {
        id_scope: node.id_scope.clone(),
        registration_id: node.registration_id.clone(),
        credential: Credential::X509(conn.peer_certs.clone()),
        api_version: None,
    };
    let device = Arc::new(
        authenticate_dps(&conn.services, request)
            .await
            .map_err(|e| Refusal::Unauthorized(e.to_string()))?,
    );
    conn.x509_devices.lock().insert(node.address(), device.clone());
    Ok(device)
}

/// Answers the requests a device sends on its sender link, one at a time, until it detaches.
async fn serve_requests(mut receiver: Receiver, conn: Arc<Conn>, address: String, device: Arc<DpsDevice>) {
    if let Err(e) = receiver.set_credit(links::LINK_CREDIT).await {
        tracing::debug!(error = %e, "cannot grant credit on the DPS request link");
        return;
    }
    loop {
        let delivery: Delivery<Body<Value>> = match receiver.recv().await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(registration = %device.request.registration_id, error = %e, "DPS request link ended");
                break;
            }
        };
        let msg = delivery.message();
        match answer(&conn, &device, msg).await {
            Ok(answer) => {
                if let Err(e) = receiver.accept(&delivery).await {
                    tracing::debug!(error = %e, "cannot settle a DPS request");
                    break;
                }
                reply(&conn, &address, message::reply_correlation(msg), answer).await;
            }
            Err(err) => {
                if let Err(e) = receiver.reject(&delivery, rejection(&conn, &err)).await {
                    tracing::debug!(error = %e, "cannot settle a DPS request");
                    break;
                }
            }
        }
    }
    links::close_receiver(receiver, None).await;
}

/// The operation a request names, and its answer.
async fn answer(conn: &Conn, device: &DpsDevice, msg: &Incoming) -> Result<Answer, ApiError> {
    let limit = conn.services.config.max_message_bytes;
    let size = message::body_len(msg);
    if size > limit {
        return Err(ApiError::new(
            dps_proto::codes::PAYLOAD_TOO_LARGE,
            format!("request body of {size} bytes exceeds the limit of {limit}"),
        ));
    }
    let operation = message::app_property_str(msg, wire::OPERATION_TYPE);
    let body = message::body_bytes(msg).unwrap_or_default();
    let op = match operation.as_deref() {
        Some(wire::REGISTER) => DpsOperation::Register(&body),
        Some(wire::GET_OPERATION_STATUS) => {
            let Some(id) = message::app_property_str(msg, wire::OPERATION_ID) else {
                return Err(ApiError::invalid(format!(
                    "an {} request needs the application property {}",
                    wire::GET_OPERATION_STATUS,
                    wire::OPERATION_ID
                )));
            };
            return dps_device::answer(
                &conn.services,
                &device.request,
                &device.authenticated,
                DpsOperation::OperationStatus(&id),
            )
            .await;
        }
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "unknown {} {other:?}: expected {} or {}",
                wire::OPERATION_TYPE,
                wire::REGISTER,
                wire::GET_OPERATION_STATUS
            )))
        }
        None => {
            return Err(ApiError::invalid(format!(
                "the request has no application property {}",
                wire::OPERATION_TYPE
            )))
        }
    };
    // Node sends a register body with the registration id (and TPM keys, payload); C sends none
    // for SAS and X.509 devices: an empty body registers as `{}` would.
    let empty = b"{}";
    let op = match op {
        DpsOperation::Register(b) if b.iter().all(u8::is_ascii_whitespace) => DpsOperation::Register(empty),
        op => op,
    };
    dps_device::answer(&conn.services, &device.request, &device.authenticated, op).await
}

/// Sends the answer on the registration node's receiver link.
async fn reply(
    conn: &Conn,
    address: &str,
    correlation: Option<fe2o3_amqp::types::messaging::MessageId>,
    answer: Answer,
) {
    let Some(sender) = conn.replies.wait(address).await else {
        tracing::info!(
            address,
            "DPS response dropped: the device attached no receiver link to its registration node"
        );
        return;
    };
    let mut properties = Properties::builder().content_type(Symbol::from("application/json"));
    if let Some(c) = correlation {
        properties = properties.correlation_id(c);
    }
    let mut app = ApplicationProperties::builder();
    if let Some(r) = answer.retry_after {
        let seconds = SimpleValue::Int(i32::try_from(r).unwrap_or(i32::MAX));
        app = app
            .insert(wire::RETRY_AFTER, seconds.clone())
            .insert(wire::RETRY_AFTER_CSHARP, seconds);
    }
    let msg = message::data_message(properties.build(), Some(app.build()), answer.body);
    let mut sender = sender.lock().await;
    match tokio::time::timeout(REPLY_TIMEOUT, sender.send(msg)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "DPS response not delivered"),
        Err(_) => tracing::debug!("DPS response not taken within {REPLY_TIMEOUT:?}"),
    }
}

/// The rejection of a refused request: the condition the SDKs retry or fail on, the JSON error
/// as description, `retry-after` in `info` when the device should wait.
fn rejection(conn: &Conn, err: &ApiError) -> definitions::Error {
    let description = String::from_utf8_lossy(&dps_device::error_body(&conn.services, err)).into_owned();
    let info = err.retry_after.map(|r| {
        let seconds = Value::Int(i32::try_from(r).unwrap_or(i32::MAX));
        let mut f = Fields::new();
        f.insert(Symbol::from(wire::RETRY_AFTER), seconds.clone());
        f.insert(Symbol::from(wire::RETRY_AFTER_CSHARP), seconds);
        f
    });
    definitions::Error::new(
        ErrorCondition::Custom(Symbol::from(wire::error_condition(err.status))),
        Some(description),
        info,
    )
}

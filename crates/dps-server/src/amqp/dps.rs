//! The DPS registration node over AMQP: the device attaches a sender (its requests) and a
//! receiver (the responses) to `{idScope}/registrations/{registrationId}`. Each request message
//! carries `iotdps-operation-type` and a correlation id; a successful answer is accepted and
//! answered by a message on the receiver link with the same correlation id, the JSON body in a
//! data section and `retry-after` as an application property; a refusal rejects the request with
//! the DPS error (condition by status, the JSON error as description, `retry-after` in `info`).

use std::sync::Arc;

use dps_core::{Credential, DeviceRequest};
use dps_proto::amqp_conn::{DeliveryRef, Direction};
use dps_proto::dps_amqp::{self as wire, RegistrationNode};
use fe2o3_amqp::types::definitions::{self, ErrorCondition, Fields};
use fe2o3_amqp::types::messaging::{ApplicationProperties, MessageId, Properties};
use fe2o3_amqp::types::primitives::{SimpleValue, Symbol, Value};

use super::auth::{authenticate_dps, ConnIdentity, DpsDevice};
use super::links::Refusal;
use super::message::{self, Incoming};
use super::{Conn, Route};
use crate::dps_device::{self, Answer, DpsOperation};
use crate::ApiError;

/// Attaches a link to a registration node, if this connection may: one authenticated for this
/// registration by SASL (PLAIN or TPM), or one with a TLS client certificate the engine accepts
/// for it. The requests on a sender link name the device API version its attach did
/// (`com.microsoft:api-version`), as HTTPS requests name theirs in the query.
pub(super) async fn attach(
    conn: &mut Conn,
    direction: Direction,
    node: RegistrationNode,
    api_version: Option<String>,
) -> Result<Route, Refusal> {
    let device = device_for(conn, &node).await?;
    let address = node.address();
    Ok(match direction {
        // The responses' link: kept until the client detaches it (or attaches another).
        Direction::ToPeer => Route::Out { address },
        Direction::FromPeer => {
            let device = match api_version {
                Some(v) if device.request.api_version.as_deref() != Some(v.as_str()) => Arc::new(DpsDevice {
                    request: DeviceRequest {
                        api_version: Some(v),
                        ..device.request.clone()
                    },
                    authenticated: device.authenticated.clone(),
                }),
                _ => device,
            };
            Route::DpsRequests { address, device }
        }
    })
}

/// The device this connection speaks for on `node`, or why it may not attach there.
async fn device_for(conn: &mut Conn, node: &RegistrationNode) -> Result<Arc<DpsDevice>, Refusal> {
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
    if let Some(d) = conn.x509_devices.get(&node.address()) {
        return Ok(d.clone());
    }
    let request = DeviceRequest {
        id_scope: node.id_scope.clone(),
        registration_id: node.registration_id.clone(),
        credential: Credential::X509(conn.peer_certs.clone()),
        api_version: None,
        source: conn.source,
        transport: dps_core::Transport::Amqp,
    };
    let device = Arc::new(
        authenticate_dps(&conn.services, request)
            .await
            .map_err(|e| Refusal::Unauthorized(e.to_string()))?,
    );
    conn.x509_devices.insert(node.address(), device.clone());
    Ok(device)
}

/// Answers one request a device sent on its sender link: the request is settled (accepted, or
/// rejected with the DPS error), and an answer goes out on the device's receiver link.
pub(super) async fn request(
    conn: &mut Conn,
    delivery: Option<DeliveryRef>,
    address: &str,
    device: &DpsDevice,
    msg: &Incoming,
) {
    match answer(conn, device, msg).await {
        Ok(answer) => {
            conn.settle(delivery, Ok(()));
            reply(conn, address, message::reply_correlation(msg), answer);
        }
        Err(err) => {
            let rejection = rejection(conn, &err);
            conn.settle(delivery, Err(rejection));
        }
    }
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
fn reply(conn: &mut Conn, address: &str, correlation: Option<MessageId>, answer: Answer) {
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
    if !conn.send_to(address, message::encode(msg)) {
        tracing::info!(
            address,
            "DPS response dropped: the device attached no receiver link to its registration node"
        );
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

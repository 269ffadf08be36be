//! Reading and building the parts of AMQP messages the handlers use: bodies as bytes (a device
//! may send data sections or an amqp-value), application properties and correlation ids.

use bytes::Bytes;
use fe2o3_amqp::types::messaging::message::__private::{Deserializable, Serializable};
use fe2o3_amqp::types::messaging::{ApplicationProperties, Body, Message, MessageId, Properties, SerializableBody};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Value};

pub(crate) use dps_proto::amqp_message::{body_bytes, Incoming};

/// Decodes a message's sections (the bytes were bounds-checked with their frame).
pub(crate) fn decode(bytes: &[u8]) -> Result<Incoming, serde_amqp::Error> {
    serde_amqp::from_slice::<Deserializable<Incoming>>(bytes).map(|d| d.0)
}

/// Encodes a message's sections for a transfer.
pub(crate) fn encode<T: SerializableBody>(msg: Message<T>) -> Bytes {
    // Room for the sections around the body at once (growing from empty reallocates a dozen
    // times for a typical answer).
    let mut bytes = Vec::with_capacity(512);
    let mut serializer = serde_amqp::ser::Serializer::new(&mut bytes);
    match serde::Serialize::serialize(&Serializable(msg), &mut serializer) {
        Ok(()) => Bytes::from(bytes),
        // Messages the server builds always encode.
        Err(e) => unreachable!("AMQP message does not encode: {e}"),
    }
}

/// The size of the body in bytes, as far as [`body_bytes`] sees it.
pub(crate) fn body_len(msg: &Incoming) -> usize {
    match &msg.body {
        Body::Data(sections) => sections.iter().map(|d| d.0.len()).sum(),
        Body::Value(v) => match &v.0 {
            Value::Binary(b) => b.len(),
            Value::String(s) => s.len(),
            _ => 0,
        },
        _ => 0,
    }
}

/// An application property, if present.
pub(crate) fn app_property<'m>(msg: &'m Incoming, name: &str) -> Option<&'m SimpleValue> {
    msg.application_properties.as_ref().and_then(|p| p.0.get(name))
}

/// An application property as text (strings and symbols; numbers and booleans formatted).
pub(crate) fn app_property_str(msg: &Incoming, name: &str) -> Option<String> {
    Some(match app_property(msg, name)? {
        SimpleValue::String(s) => s.clone(),
        SimpleValue::Symbol(s) => s.0.clone(),
        SimpleValue::Bool(b) => b.to_string(),
        SimpleValue::Int(i) => i.to_string(),
        SimpleValue::Long(i) => i.to_string(),
        SimpleValue::Uint(i) => i.to_string(),
        SimpleValue::Ulong(i) => i.to_string(),
        _ => return None,
    })
}

/// The id a reply must carry as its correlation id: the request's correlation id if it has one
/// (DPS, twin and methods requests), else its message id (CBS).
pub(crate) fn reply_correlation(msg: &Incoming) -> Option<MessageId> {
    let p = msg.properties.as_ref()?;
    p.correlation_id.clone().or_else(|| p.message_id.clone())
}

/// A message with a data-section body.
pub(crate) fn data_message(
    properties: Properties,
    application_properties: Option<ApplicationProperties>,
    body: Vec<u8>,
) -> Message<fe2o3_amqp::types::messaging::Data> {
    Message::builder()
        .properties(properties)
        .application_properties(application_properties)
        .data(Binary::from(body))
        .build()
}

/// The answer of a node that replies with an HTTP-like status (`$cbs`, `$management`):
/// correlated with `request`, `status-code` and `status-description` application properties,
/// and `body` as an amqp-value.
pub(crate) fn status_reply(request: &Incoming, status: i32, description: String, body: Value) -> Bytes {
    let mut properties = Properties::builder();
    if let Some(id) = reply_correlation(request) {
        properties = properties.correlation_id(id);
    }
    let app = ApplicationProperties::builder()
        .insert(dps_proto::hub_amqp::CBS_STATUS_CODE, SimpleValue::Int(status))
        .insert(dps_proto::hub_amqp::CBS_STATUS_DESCRIPTION, description)
        .build();
    encode(
        Message::builder()
            .properties(properties.build())
            .application_properties(app)
            .value(body)
            .build(),
    )
}

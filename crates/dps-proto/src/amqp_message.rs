//! Reading the parts of AMQP messages both sides use: bodies as bytes (a peer may send data
//! sections or an amqp-value), whole seconds in properties, error condition names. The server,
//! the Rust device client and the bench all read messages this way.

use fe2o3_amqp_types::definitions::ErrorCondition;
use fe2o3_amqp_types::messaging::{Body, Message};
use fe2o3_amqp_types::primitives::{SimpleValue, Symbol, Value};

/// A message as received: any body.
pub type Incoming = Message<Body<Value>>;

/// The body's bytes: the data sections concatenated, or a binary or string amqp-value; empty
/// for an empty or null body. `None` for other amqp-values (lists, maps), which have no byte
/// form.
pub fn body_bytes(msg: &Incoming) -> Option<Vec<u8>> {
    match &msg.body {
        Body::Data(sections) => Some(sections.iter().flat_map(|d| d.0.iter().copied()).collect()),
        Body::Value(v) => match &v.0 {
            Value::Binary(b) => Some(b.to_vec()),
            Value::String(s) => Some(s.as_bytes().to_vec()),
            Value::Null => Some(Vec::new()),
            _ => None,
        },
        Body::Empty => Some(Vec::new()),
        _ => None,
    }
}

/// A whole number of seconds in an application property or `info` field, whatever its AMQP
/// type (the SDKs send int, the spec allows any integer or its decimal string).
pub fn seconds(value: &SimpleValue) -> Option<u32> {
    match value {
        SimpleValue::Int(i) => u32::try_from(*i).ok(),
        SimpleValue::Long(i) => u32::try_from(*i).ok(),
        SimpleValue::Uint(i) => Some(*i),
        SimpleValue::Ulong(i) => u32::try_from(*i).ok(),
        SimpleValue::Short(i) => u32::try_from(*i).ok(),
        SimpleValue::Ushort(i) => Some(u32::from(*i)),
        SimpleValue::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// An error condition's symbol (`amqp:not-found`, `com.microsoft:device-container-throttled`):
/// fe2o3 decodes the standard ones into their own variants.
pub fn condition_name(condition: &ErrorCondition) -> String {
    match condition {
        ErrorCondition::AmqpError(e) => Symbol::from(e).0,
        ErrorCondition::ConnectionError(e) => Symbol::from(e).0,
        ErrorCondition::SessionError(e) => Symbol::from(e).0,
        ErrorCondition::LinkError(e) => Symbol::from(e).0,
        ErrorCondition::Custom(s) => s.0.clone(),
        #[allow(unreachable_patterns)]
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fe2o3_amqp_types::definitions::AmqpError;
    use fe2o3_amqp_types::primitives::Binary;

    #[test]
    fn bodies_and_seconds_read_in_every_form() {
        use fe2o3_amqp_types::messaging::message::__private::{Deserializable, Serializable};
        let decoded = |bytes: Vec<u8>| serde_amqp::from_slice::<Deserializable<Incoming>>(&bytes).unwrap().0;
        let encoded = |msg| serde_amqp::to_vec(&Serializable(msg)).unwrap();
        let data = decoded(encoded(Message::builder().data(Binary::from(b"ab".to_vec())).build()));
        assert_eq!(body_bytes(&data), Some(b"ab".to_vec()));
        let text = Message::builder().value(Value::String("hi".into())).build();
        assert_eq!(
            body_bytes(&decoded(serde_amqp::to_vec(&Serializable(text)).unwrap())),
            Some(b"hi".to_vec())
        );
        let list = Message::builder().value(Value::List(vec![])).build();
        assert_eq!(
            body_bytes(&decoded(serde_amqp::to_vec(&Serializable(list)).unwrap())),
            None
        );
        assert_eq!(seconds(&SimpleValue::Long(3)), Some(3));
        assert_eq!(seconds(&SimpleValue::String(" 7 ".into())), Some(7));
        assert_eq!(seconds(&SimpleValue::Int(-1)), None);
        assert_eq!(
            condition_name(&ErrorCondition::AmqpError(AmqpError::NotFound)),
            "amqp:not-found"
        );
    }
}

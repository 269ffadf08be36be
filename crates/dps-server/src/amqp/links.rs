//! Link plumbing shared by the DPS and hub handlers: the address a client attaches to, and why
//! a link is refused.

use fe2o3_amqp::types::definitions::{self, AmqpError, ErrorCondition, LinkError};
use fe2o3_amqp::types::primitives::Symbol;

/// Messages a client may have in flight to the server on one link: the credit the server grants
/// (renewed as they arrive). Requests are answered one by one; a device sends few at a time.
pub(crate) const LINK_CREDIT: u32 = 16;

/// The node address a client attached to, with a leading `amqps://{host}` (the C SDK writes full
/// URIs) dropped.
pub(crate) fn strip_uri(address: &str) -> &str {
    for scheme in ["amqps://", "amqp://", "wss://"] {
        if let Some(rest) = address.strip_prefix(scheme) {
            // `host[:port]/path` → `/path` (hub addresses keep their leading slash; DPS ones have
            // none, so it goes too when the next segment is not `devices` or `messages`).
            return match rest.find('/') {
                Some(i) => {
                    let path = &rest[i..];
                    if path.starts_with("/devices/") || path.starts_with("/messages/") {
                        path
                    } else {
                        &path[1..]
                    }
                }
                None => "",
            };
        }
    }
    address
}

/// Why a link is refused.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// No such node (`amqp:not-found`).
    NotFound(String),
    /// The connection may not attach here (`amqp:unauthorized-access`).
    Unauthorized(String),
    /// Another reason, with its own condition.
    Other(definitions::Error),
}

impl Refusal {
    pub(crate) fn error(&self) -> definitions::Error {
        match self {
            Refusal::NotFound(t) => condition_error(AmqpError::NotFound, t.clone()),
            Refusal::Unauthorized(t) => condition_error(AmqpError::UnauthorizedAccess, t.clone()),
            Refusal::Other(e) => e.clone(),
        }
    }
}

/// An AMQP error with one of the standard conditions.
pub(crate) fn condition_error(condition: AmqpError, description: impl Into<String>) -> definitions::Error {
    condition_error_of(condition, description)
}

/// An AMQP error with any standard condition (`amqp:`, `amqp:link:`...).
pub(crate) fn condition_error_of(
    condition: impl Into<ErrorCondition>,
    description: impl Into<String>,
) -> definitions::Error {
    definitions::Error::new(condition.into(), Some(description.into()), None)
}

/// An AMQP error with a condition symbol of its own (`com.microsoft:...`).
pub(crate) fn custom_error(condition: &str, description: impl Into<String>) -> definitions::Error {
    definitions::Error::new(
        ErrorCondition::Custom(Symbol::from(condition)),
        Some(description.into()),
        None,
    )
}

/// The error for a message over the size limit.
pub(crate) fn too_large(size: usize, limit: usize) -> definitions::Error {
    condition_error_of(
        LinkError::MessageSizeExceeded,
        format!("message of {size} bytes exceeds the limit of {limit}"),
    )
}

//! Link plumbing shared by the DPS and hub handlers: the address a client attaches to, how a
//! link is accepted or refused, and the reply links of request/response nodes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fe2o3_amqp::acceptor::{LinkAcceptor, LinkEndpoint, ListenerSessionHandle};
use fe2o3_amqp::link::{Receiver, Sender};
use fe2o3_amqp::types::definitions::{self, AmqpError, ErrorCondition, LinkError, Role};
use fe2o3_amqp::types::messaging::{Source, Target};
use fe2o3_amqp::types::performatives::Attach;
use fe2o3_amqp::types::primitives::Symbol;
use parking_lot::Mutex;

/// How long a link's detach may wait for the client's answering detach.
const DETACH_TIMEOUT: Duration = Duration::from_secs(5);

/// Messages a client may have in flight to the server on one link: the credit the server grants.
/// Requests are answered one by one; a device sends few at a time.
pub(crate) const LINK_CREDIT: u32 = 16;

/// The node address a client attaches to: the target of its sender, the source of its receiver.
/// A leading `amqps://{host}` (the C SDK writes full URIs) is dropped.
pub(crate) fn address_of(attach: &Attach) -> String {
    let address = match attach.role {
        // The client sends: the address is its target.
        Role::Sender => attach.target.as_ref().and_then(|t| match t.as_ref() {
            fe2o3_amqp::types::messaging::TargetArchetype::Target(t) => t.address.clone(),
            #[allow(unreachable_patterns)]
            _ => None,
        }),
        Role::Receiver => attach.source.as_ref().and_then(|s| s.address.clone()),
    };
    strip_uri(&address.unwrap_or_default()).to_string()
}

fn strip_uri(address: &str) -> &str {
    for scheme in ["amqps://", "amqp://", "wss://"] {
        if let Some(rest) = address.strip_prefix(scheme) {
            // `host[:port]/path` → `/path` (hub addresses keep their leading slash; DPS ones have
            // none, so it goes too when the next segment is not `devices` or `$cbs`).
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
    /// A cap was reached (`amqp:resource-limit-exceeded`).
    ResourceLimit(String),
}

impl Refusal {
    pub(crate) fn error(&self) -> definitions::Error {
        let (condition, text) = match self {
            Refusal::NotFound(t) => (AmqpError::NotFound, t),
            Refusal::Unauthorized(t) => (AmqpError::UnauthorizedAccess, t),
            Refusal::ResourceLimit(t) => (AmqpError::ResourceLimitExceeded, t),
        };
        definitions::Error::new(ErrorCondition::AmqpError(condition), Some(text.clone()), None)
    }
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
    definitions::Error::new(
        ErrorCondition::LinkError(LinkError::MessageSizeExceeded),
        Some(format!("message of {size} bytes exceeds the limit of {limit}")),
        None,
    )
}

/// fe2o3's link acceptor with its default (refusing) dynamic-terminus handlers.
pub(crate) type Acceptor = LinkAcceptor<fn(Source) -> Option<Source>, fn(Target) -> Option<Target>>;

/// The acceptor for links this server serves: `max_message_size` announced, credit granted
/// explicitly by the handlers.
pub(crate) fn acceptor(max_message_size: usize) -> Acceptor {
    LinkAcceptor::builder()
        .max_message_size(max_message_size as u64)
        // C# reads it unconditionally on links where it receives, and uamqp detaches without it.
        .initial_delivery_count(0)
        .build()
}

/// Refuses a link as AMQP 1.0 §2.6.3 says: the answering attach carries no terminus (so the
/// client's attach fails), and a detach with the refusal's error follows (which every SDK
/// reports). fe2o3's acceptor answers with no terminus only for a dynamic one it declines, so
/// the client's terminus is marked dynamic before it is answered.
pub(crate) async fn refuse(session: &mut ListenerSessionHandle, mut attach: Attach, why: Refusal) {
    tracing::info!(link = ?attach.name, reason = ?why, "AMQP link refused");
    match attach.role {
        Role::Sender => {
            if let Some(fe2o3_amqp::types::messaging::TargetArchetype::Target(t)) = attach.target.as_deref_mut() {
                t.dynamic = true;
            }
        }
        Role::Receiver => {
            if let Some(s) = attach.source.as_deref_mut() {
                s.dynamic = true;
            }
        }
    }
    let error = why.error();
    match LinkAcceptor::new().accept_incoming_attach(attach, session).await {
        Ok(LinkEndpoint::Sender(s)) => close_sender(s, Some(error)).await,
        Ok(LinkEndpoint::Receiver(r)) => close_receiver(r, Some(error)).await,
        // The acceptor detaches by itself when it cannot complete the link.
        Err(e) => tracing::debug!(error = %e, "refused AMQP link detached"),
    }
}

/// Closes a sender link (with an error, if any), not waiting for the client forever.
pub(crate) async fn close_sender(s: Sender, error: Option<definitions::Error>) {
    let closing = async move {
        match error {
            Some(e) => s.close_with_error(e).await,
            None => s.close().await,
        }
    };
    let _ = tokio::time::timeout(DETACH_TIMEOUT, closing).await;
}

/// Closes a receiver link (with an error, if any), not waiting for the client forever.
pub(crate) async fn close_receiver(r: Receiver, error: Option<definitions::Error>) {
    let closing = async move {
        match error {
            Some(e) => r.close_with_error(e).await,
            None => r.close().await,
        }
    };
    let _ = tokio::time::timeout(DETACH_TIMEOUT, closing).await;
}

/// A link the server sends on, shared by the tasks that write to it.
pub(crate) type SharedSender = Arc<tokio::sync::Mutex<Sender>>;

/// How long an answer waits for the client to finish attaching the link it goes out on. A client
/// attaches its receiver and sender for a node one after the other and may send its first
/// request as soon as both attaches are answered — before the server's session task has filed
/// the receiver link.
pub(crate) const REPLY_LINK_WAIT: Duration = Duration::from_secs(5);

/// The links the server sends on, by node address (DPS registration nodes, `$cbs`, and each
/// device's twin, methods and C2D nodes): a request that arrives on the client's sender is
/// answered on the client's receiver attached to the same address.
#[derive(Default)]
pub(crate) struct ReplyLinks {
    links: Mutex<HashMap<String, SharedSender>>,
    attached: tokio::sync::Notify,
}

impl ReplyLinks {
    /// Records the link to `address` (replacing an earlier one).
    pub(crate) fn insert(&self, address: &str, sender: Sender) {
        let sender = Arc::new(tokio::sync::Mutex::new(sender));
        self.links.lock().insert(address.to_string(), sender);
        self.attached.notify_waiters();
    }

    /// The link to `address`, if the client attached one.
    pub(crate) fn get(&self, address: &str) -> Option<SharedSender> {
        self.links.lock().get(address).cloned()
    }

    /// The link to `address`, waiting up to [`REPLY_LINK_WAIT`] for it to be attached.
    pub(crate) async fn wait(&self, address: &str) -> Option<SharedSender> {
        let deadline = tokio::time::Instant::now() + REPLY_LINK_WAIT;
        loop {
            let notified = self.attached.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(s) = self.get(address) {
                return Some(s);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }
}

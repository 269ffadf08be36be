//! What the engine tells whoever watches it — metrics, an audit trail: every registration
//! attempt as it ends, and every request a quota refused. Watching never changes an answer: an
//! observer is called after the decision, synchronously, and must be cheap (count, or hand the
//! event to a queue of its own).

use std::time::Duration;

use dps_proto::model::service::{AttestationType, RegistrationState};

use super::DeviceRequest;
use crate::quota::Quota;
use crate::Error;

/// The transport a device request came over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Transport {
    /// MQTT over TLS (8883) or over WebSockets (443).
    Mqtt,
    /// AMQP over TLS (5671) or over WebSockets (443).
    Amqp,
    /// HTTPS (443).
    Https,
    /// Not said (tests, tools calling the engine directly).
    #[default]
    Unknown,
}

impl Transport {
    /// Its name in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Mqtt => "mqtt",
            Transport::Amqp => "amqp",
            Transport::Https => "https",
            Transport::Unknown => "unknown",
        }
    }
}

/// One registration attempt as it ended: decided (the registration's state: assigned, or failed
/// or disabled with the reason), or refused (the error the device was answered with: bad
/// credentials, throttled, the store away, ...).
#[derive(Debug)]
pub struct RegistrationAttempt<'a> {
    /// Who asked, how, from where.
    pub request: &'a DeviceRequest,
    /// The attestation of the enrollment the device matched, when it got that far.
    pub attestation: Option<AttestationType>,
    /// The outcome.
    pub outcome: Result<&'a RegistrationState, &'a Error>,
    /// From the request's arrival in the engine to its answer.
    pub elapsed: Duration,
}

/// Watches the engine ([`crate::Engine::set_observer`]).
pub trait Observer: Send + Sync + 'static {
    /// A registration attempt ended (a register request, or a device's credential refused
    /// when its connection opened).
    fn registration(&self, attempt: &RegistrationAttempt<'_>);

    /// A device request was refused by `quota` (429).
    fn throttled(&self, quota: Quota) {
        let _ = quota;
    }

    /// A custom allocation webhook answered (`ok`: with a 2xx and JSON) or failed, after `took`.
    fn webhook(&self, took: Duration, ok: bool) {
        let _ = (took, ok);
    }
}

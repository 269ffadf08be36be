//! The provisioning engine.
//!
//! Every transport (MQTT, HTTPS, later AMQP and WebSockets) turns its bytes into the same
//! [`engine::RegisterRequest`] and formats the same result, so a behaviour is implemented once, here.
//! The engine never touches a socket: storage and hubs sit behind the [`store::Store`] and
//! [`hub::HubRegistry`] traits, and the current time is passed into every call.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod audit;
pub mod auth;
pub mod cause;
pub mod clock;
pub mod engine;
pub mod error;
pub mod hub;
pub mod quota;
pub mod random;
pub mod revocation;
pub mod store;
pub mod x509;

pub use cause::Cause;
pub use clock::{Clock, FakeClock, SystemClock};
pub use engine::{
    AllocationWebhook, Authenticated, Credential, DeviceRequest, DeviceResponse, Engine, EngineConfig, GeoConfig,
    LinkedHub, Observer, Page, Recovery, Registered, RegistrationAttempt, Transport, MAX_LINKED_HUBS,
};
pub use error::{Error, STORE_RETRY_AFTER_SECS};
pub use hub::{
    CertificateIssuer, DeviceAuth, DeviceData, DeviceProvisioning, HubError, HubRegistry, IssueError,
    IssuedCertificate, TwinPolicy, UpsertOutcome,
};
pub use quota::{QuotaConfig, Quotas};
pub use random::{Random, SeededRandom, SystemRandom};
pub use store::{
    CaCertificateRecord, CredentialPolicyRecord, PreviousAssignment, RegistrationIntent, RegistrationRecord, Store,
    StoreError, WriteCondition,
};

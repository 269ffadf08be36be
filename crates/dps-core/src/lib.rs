//! The provisioning engine.
//!
//! Every transport (MQTT, HTTPS, later AMQP and WebSockets) turns its bytes into the same
//! [`engine::RegisterRequest`] and formats the same result, so a behaviour is implemented once, here.
//! The engine never touches a socket: storage and hubs sit behind the [`store::Store`] and
//! [`hub::HubRegistry`] traits, and the current time is passed into every call.

#![forbid(unsafe_code)]

pub mod clock;
pub mod hub;
pub mod store;

pub use clock::{Clock, FakeClock, SystemClock};
pub use hub::{DeviceAuth, DeviceProvisioning, HubError, HubRegistry, TwinPolicy, UpsertOutcome};
pub use store::{RegistrationRecord, Store, StoreError, WriteCondition};

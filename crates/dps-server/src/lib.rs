//! The edge of `dps serve`: TLS listeners and the MQTT (also tunnelled in WebSockets) and HTTPS
//! adapters over the provisioning engine (`dps-core`) and the embedded hub (`dps-hub`). Nothing
//! here makes provisioning decisions; adapters translate bytes to engine calls and back.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod amqp;
mod api_error;
pub mod audit;
pub mod config;
pub mod conn_limit;
mod dps_device;
/// The data directory, re-exported: it moved to its own crate so the client commands need not
/// link the server for it.
pub use dps_datadir as datadir;
pub mod fdlimit;
pub mod http;
pub mod hub_router;
pub mod hubs;
mod listener;
mod log_limit;
pub mod metrics;
pub mod mqtt;
mod observer;
mod outbound;
pub mod policies;
pub mod portal;
pub mod readiness;
pub mod remote_hub;
pub mod storage_account;
mod tls;
pub mod webhook;
pub mod ws;

use std::sync::Arc;

use dps_core::auth::PolicyAuthorizer;
use dps_core::{Clock, Engine};

pub use api_error::ApiError;

/// How long a write to a device connection (MQTT or AMQP) may wait for the peer to take bytes:
/// a peer that reads nothing (TCP back-pressure) loses its connection rather than holding the
/// connection's task, which waits on the write and so reads nothing a keep-alive could end.
pub const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
pub use config::{ConfigFileError, FileConfig, Limits, ServerConfig};

pub use datadir::{DataDir, DataDirError, HubIdentity, Identity};
pub use listener::{start, RunningServer, StartError};

/// Everything a connection handler needs, shared by all connections.
pub struct Services {
    /// The provisioning engine.
    pub engine: Arc<Engine>,
    /// The embedded hubs (one unless `--hub-hostname` was given more than once).
    pub hubs: hubs::EmbeddedHubs,
    /// Service API policies (`provisioningserviceowner`, ...).
    pub dps_auth: PolicyAuthorizer,
    /// ID scope, policies, and the embedded hubs' identities (those served first), as they were
    /// at start: the policies in force are the authorizers' ([`Services::policies`]).
    pub identity: Identity,
    /// The service's and the hubs' policies, changed while the server runs.
    pub policies: Arc<policies::PolicyBook>,
    /// Where registration attempts and changes are recorded.
    pub audit: Arc<audit::AuditTrail>,
    /// The web portal's key, used sign-in links and failed sign-ins.
    pub portal: Arc<portal::Portal>,
    /// Effective configuration.
    pub config: ServerConfig,
    /// Time source (a fake clock in tests).
    pub clock: Arc<dyn Clock>,
    /// The external storage account file uploads go to instead of the hubs' blob endpoints
    /// (`--file-upload-storage`).
    pub storage_account: Option<Arc<storage_account::StorageAccount>>,
    /// What `GET /metrics` reports (the engine and the listeners count into it).
    pub metrics: Arc<metrics::Metrics>,
    /// `GET /readyz`'s last answer, reused for a second.
    pub readiness: readiness::Readiness,
}

//! The edge of `dps serve`: TLS listeners and the MQTT (also tunnelled in WebSockets) and HTTPS
//! adapters over the provisioning engine (`dps-core`) and the embedded hub (`dps-hub`). Nothing
//! here makes provisioning decisions; adapters translate bytes to engine calls and back.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod amqp;
mod api_error;
pub mod config;
pub mod conn_limit;
mod dps_device;
/// The data directory, re-exported: it moved to its own crate so the client commands need not
/// link the server for it.
pub use dps_datadir as datadir;
pub mod fdlimit;
pub mod http;
pub mod hub_router;
mod listener;
mod log_limit;
pub mod mqtt;
mod outbound;
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

/// The (SHA-1, SHA-256) thumbprints of the leaf of a client's TLS chain (DER, leaf first), as
/// the hub matches X.509 devices; `None` without a client certificate.
pub(crate) fn leaf_thumbprints(peer_certs: &[Vec<u8>]) -> Option<(String, String)> {
    peer_certs.first().map(|leaf| {
        (
            dps_pki::thumbprint::sha1_thumbprint(leaf),
            dps_pki::thumbprint::sha256_thumbprint(leaf),
        )
    })
}
pub use datadir::{DataDir, DataDirError, Identity};
pub use listener::{start, RunningServer, StartError};

/// Everything a connection handler needs, shared by all connections.
pub struct Services {
    /// The provisioning engine.
    pub engine: Arc<Engine>,
    /// The embedded hub.
    pub hub: dps_hub::Hub,
    /// Service API policies (`provisioningserviceowner`, ...).
    pub dps_auth: PolicyAuthorizer,
    /// Hub registry API policies (`iothubowner`, ...).
    pub hub_auth: PolicyAuthorizer,
    /// ID scope, hub host name, policies.
    pub identity: Identity,
    /// Effective configuration.
    pub config: ServerConfig,
    /// Time source (a fake clock in tests).
    pub clock: Arc<dyn Clock>,
    /// The blob endpoint's files (file uploads, import and export jobs); `None`: not served.
    pub blobs: Option<dps_store::BlobStore>,
    /// The external storage account file uploads go to instead of [`Services::blobs`]
    /// (`--file-upload-storage`).
    pub storage_account: Option<Arc<storage_account::StorageAccount>>,
    /// The hub's import and export jobs.
    pub import_export: Arc<http::import_export::Jobs>,
}

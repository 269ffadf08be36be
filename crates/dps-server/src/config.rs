//! Server configuration: command-line flags, environment variables and an optional TOML file,
//! in that order of precedence, over built-in defaults that work with every official SDK on one
//! machine (MQTT 8883 and HTTPS 443 are hard-coded in the Python and C SDKs).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dps_core::QuotaConfig;
use serde::Deserialize;

/// Everything `dps serve` needs, after merging sources.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Data directory (identity, CA, databases).
    pub data_dir: PathBuf,
    /// Host names (DNS names or IP addresses) devices and services use to reach this server; the
    /// server certificate covers all of them. The first is the provisioning host.
    pub hostnames: Vec<String>,
    /// Host names of the embedded hubs, one hub each (`--hub-hostname`, repeatable); empty
    /// serves the hubs the data directory has, on first start one named by
    /// [`default_hub_host`](Self::default_hub_host). See `DataDir::init_identity` for how names
    /// find their hubs across restarts.
    pub hub_hostnames: Vec<String>,
    /// Where the DPS store and the embedded hubs keep their data: `None`, SQLite files in the
    /// data directory; a PostgreSQL URL (`postgres://user:pass@host:port/db`), that database
    /// (one node per database for now; the identity, CA and certificates stay in the data
    /// directory).
    pub store: Option<String>,
    /// Address to bind.
    pub bind: IpAddr,
    /// MQTT over TLS (DPS and hub device endpoints).
    pub mqtt_port: u16,
    /// HTTPS (device API, service API, hub registry API).
    pub https_port: u16,
    /// AMQP 1.0 over TLS (DPS and hub device endpoints; 5671 as in Azure, where the C#, Java
    /// and C SDKs connect).
    pub amqp_port: u16,
    /// Bring-your-own certificate chain (PEM) instead of one issued by the local CA.
    pub tls_cert: Option<PathBuf>,
    /// Key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Largest accepted MQTT packet / HTTP body, bytes (Azure's limit is 256 KiB for telemetry).
    pub max_message_bytes: usize,
    /// Telemetry messages the embedded hub keeps for `monitor-events`.
    pub telemetry_retention: usize,
    /// Reply to register requests with the final state at once (see
    /// `dps_core::EngineConfig::immediate_assignment`).
    pub immediate_assignment: bool,
    /// About how many idle hub devices the embedded hub keeps in memory after reading them
    /// (`dps_hub::HubConfig::device_cache`). Every other device is read from the hub database
    /// on demand, so this trades memory (about 1.2 KB per typical device) for store reads on a
    /// hub with more devices than the bound; connected devices are held besides.
    pub hub_device_cache: usize,
    /// Partitions of the hub's Event Hub-compatible endpoint (4, as an IoT hub's built-in
    /// endpoint by default; 1 to 32).
    pub event_hub_partitions: u32,
    /// Consumer groups of the Event Hub-compatible endpoint besides `$Default`.
    pub event_hub_consumer_groups: Vec<String>,
    /// Whether successful file uploads become notifications for the service
    /// (`/messages/serviceBound/filenotifications`; Azure's `enableFileUploadNotifications`).
    pub file_upload_notifications: bool,
    /// An Azure Storage account (its connection string) devices upload files to instead of the
    /// server's own blob endpoint, as an IoT hub's `storageEndpoints.$default`; `None`: the
    /// embedded endpoint on the HTTPS port, files under the data directory.
    pub file_upload_storage: Option<dps_proto::blob_storage::StorageAccountString>,
    /// The container of [`ServerConfig::file_upload_storage`] uploads go to (it must exist, as
    /// in IoT Hub); the embedded endpoint's is always `fileupload`.
    pub file_upload_container: String,
    /// CA certificate(s) (PEM) to trust for [`ServerConfig::file_upload_storage`] besides the
    /// system's (a storage emulator or a private endpoint with a certificate of its own).
    pub file_upload_storage_ca: Option<PathBuf>,
    /// Hubs linked at every start (`[[linked-hub]]` in the file), besides those linked through
    /// the service API: each is created or updated to these settings.
    pub linked_hubs: Vec<LinkedHubConfig>,
    /// CA certificate(s) (PEM) to trust for custom allocation webhooks besides the system's.
    pub allocation_webhook_ca: Option<PathBuf>,
    /// TPM manufacturers' root certificates (PEM): TPMs enrolled by their endorsement key
    /// certificate must chain to one of them.
    pub tpm_manufacturer_ca: Option<PathBuf>,
    /// A bearer token that lets a scraper read `GET /metrics` (`Authorization: Bearer …`), as
    /// Prometheus sends one; without it, only a DPS service policy's SAS token does.
    pub metrics_token: Option<String>,
    /// Where devices are, by the network they connect from (`[[geo-network]]`), for
    /// `geoLatency` allocation.
    pub geo_networks: Vec<GeoNetworkConfig>,
    /// Coordinates of locations besides Azure's regions (`[[geo-location]]`).
    pub geo_locations: Vec<GeoLocationConfig>,
    /// Limits and deadlines against slow, idle, flooding and runaway clients (`[limits]` in the
    /// file, `--max-connections` etc. on the command line).
    pub limits: Limits,
}

/// Devices connecting from `network` are in `location` (`[[geo-network]]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct GeoNetworkConfig {
    /// An address block, `10.1.0.0/16` or `fd00::/8`.
    pub network: String,
    /// A location: an Azure region (`westeurope`) or a `[[geo-location]]` name.
    pub location: String,
}

/// A location's coordinates (`[[geo-location]]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct GeoLocationConfig {
    /// Its name, as `[[geo-network]]` and linked hubs' `location` use it.
    pub name: String,
    /// Degrees north (-90 to 90).
    pub latitude: f64,
    /// Degrees east (-180 to 180).
    pub longitude: f64,
}

/// A hub to link at start (`[[linked-hub]]`), with the settings `dps linked-hub create` takes.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct LinkedHubConfig {
    /// `HostName=…;SharedAccessKeyName=…;SharedAccessKey=…` of a policy with `RegistryWrite`.
    pub connection_string: String,
    /// Relative weight for hashed allocation, 1 to 1000.
    pub allocation_weight: Option<u32>,
    /// Whether allocation policies may pick the hub.
    pub apply_allocation_policy: Option<bool>,
    /// The hub's region (`geoLatency`).
    pub location: Option<String>,
    /// PEM CA certificate(s) to trust for the hub besides the system's.
    pub ca: Option<PathBuf>,
}

impl std::fmt::Debug for LinkedHubConfig {
    /// Without the connection string: it holds the policy key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkedHubConfig")
            .field("allocation_weight", &self.allocation_weight)
            .field("apply_allocation_policy", &self.apply_allocation_policy)
            .field("location", &self.location)
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

/// Every limit and deadline the server enforces on what clients send, with its default. The
/// defaults are generous enough for a factory line or a load test on one machine, and tight
/// enough that no client can hold the server's memory, file descriptors or time forever.
/// `docs/security.md` lists each one with the attack it stops.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct Limits {
    /// Connections held at once over all listeners (MQTT and HTTPS together); beyond it a new
    /// connection is closed as soon as it is accepted, before TLS. `dps serve` lowers it to what
    /// the open-file limit can hold.
    pub max_connections: usize,
    /// Connections held at once from one source IP address, over all listeners; beyond it a new
    /// connection from that address is closed as soon as it is accepted.
    pub max_connections_per_ip: usize,
    /// Seconds a client has to send one whole HTTP request (headers and body) once it started.
    pub request_timeout_secs: u64,
    /// Seconds a DPS MQTT connection may stay open in all: a registration takes a few round
    /// trips, so a session that outlives this is abandoned or hostile.
    pub dps_session_timeout_secs: u64,
    /// Telemetry the embedded hub keeps for readers, in bytes of message bodies and properties.
    pub telemetry_retention_bytes: u64,
    /// Seconds the embedded hub keeps a telemetry message for readers.
    pub telemetry_retention_secs: u64,
    /// Register requests per second the service accepts from all devices together; 0 turns the
    /// limit off. `dps_core::QuotaConfig` says how each quota is counted and answered (429 +
    /// retry-after).
    pub registrations_per_second: u32,
    /// Device API requests (register, TPM challenge, status polls and lookups) per second from
    /// all devices together; 0 turns the limit off.
    pub operations_per_second: u32,
    /// Operation-status polls one registration id may make per 10 seconds (Azure: 5); 0 turns
    /// the limit off.
    pub polls_per_device_per_10s: u32,
    /// Seconds a cloud-to-device message waits for its device when the sender set no expiry
    /// (Azure's `defaultTtlAsIso8601`: 1 hour by default, 1 minute to 2 days).
    pub c2d_ttl_secs: u64,
    /// Largest file a device may upload, bytes (file upload's blob endpoint).
    pub max_upload_bytes: u64,
    /// Seconds a custom allocation webhook has to answer (connection included); past it the
    /// registration fails (400208).
    pub webhook_timeout_secs: u64,
    /// With a PostgreSQL store shared by several nodes: seconds after which a registration a
    /// node left unfinished (it died between the hub write and the record) is finished by
    /// another; longer than any registration takes on a live node.
    pub interrupted_registration_secs: u64,
    /// Days the audit trail keeps an entry (registration attempts and changes); older ones are
    /// removed in the background.
    pub audit_retention_days: u64,
    /// Seconds a device's certificate keeps working at its hub after the device renewed it
    /// (`$iothub/credentials/…`): long enough for the device to reconnect with the new one,
    /// short enough that a copy of the old one is soon useless. 0: refused at once.
    pub certificate_renewal_grace_secs: u64,
    /// The least seconds between two renewals of one device's certificate through its hub:
    /// each is a signature and a registry write, so a device (or a stolen credential) cannot
    /// make the service sign in a loop. Sooner is refused with `429002`. 0: no limit.
    pub certificate_renewal_interval_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 60_000,
            max_connections_per_ip: 30_000,
            request_timeout_secs: 30,
            dps_session_timeout_secs: 300,
            telemetry_retention_bytes: 256 * 1024 * 1024,
            telemetry_retention_secs: 24 * 3600,
            registrations_per_second: QuotaConfig::DEFAULT.registrations_per_second,
            operations_per_second: QuotaConfig::DEFAULT.operations_per_second,
            polls_per_device_per_10s: QuotaConfig::DEFAULT.polls_per_device_per_10s,
            c2d_ttl_secs: dps_hub::DEFAULT_C2D_TTL.as_secs(),
            max_upload_bytes: 256 * 1024 * 1024,
            webhook_timeout_secs: 10,
            interrupted_registration_secs: dps_core::engine::INTERRUPTED_REGISTRATION_AGE.as_secs(),
            audit_retention_days: 30,
            certificate_renewal_grace_secs: 24 * 3600,
            certificate_renewal_interval_secs: 60,
        }
    }
}

impl Limits {
    /// Refuses settings that would stop the server from serving anyone: a zero connection cap
    /// refuses every connection and a zero deadline times out every request or session at
    /// once. (The quotas take 0 as "off"; zero telemetry retention keeps nothing, on purpose.)
    pub fn validate(&self) -> Result<(), String> {
        let zero = [
            ("max-connections", self.max_connections as u64),
            ("max-connections-per-ip", self.max_connections_per_ip as u64),
            ("request-timeout-secs", self.request_timeout_secs),
            ("dps-session-timeout-secs", self.dps_session_timeout_secs),
            ("max-upload-bytes", self.max_upload_bytes),
            ("webhook-timeout-secs", self.webhook_timeout_secs),
            ("interrupted-registration-secs", self.interrupted_registration_secs),
            ("audit-retention-days", self.audit_retention_days),
        ];
        if let Some((name, _)) = zero.iter().find(|(_, v)| *v == 0) {
            return Err(format!(
                "limits: {name} must be at least 1 (0 would refuse every client)"
            ));
        }
        let ttl = 60..=dps_hub::MAX_C2D_TTL.as_secs();
        if !ttl.contains(&self.c2d_ttl_secs) {
            return Err(format!(
                "limits: c2d-ttl-secs must be from {} to {} (1 minute to 2 days, as in IoT Hub), not {}",
                ttl.start(),
                ttl.end(),
                self.c2d_ttl_secs
            ));
        }
        Ok(())
    }

    /// [`Limits::audit_retention_days`] as a duration.
    pub fn audit_retention(&self) -> Duration {
        Duration::from_secs(self.audit_retention_days.saturating_mul(24 * 3600))
    }

    /// How the hubs bound certificate renewals: [`Limits::certificate_renewal_grace_secs`] and
    /// [`Limits::certificate_renewal_interval_secs`].
    pub fn certificate_renewal(&self) -> dps_hub::RenewalLimits {
        dps_hub::RenewalLimits {
            grace: Duration::from_secs(self.certificate_renewal_grace_secs),
            min_interval: Duration::from_secs(self.certificate_renewal_interval_secs),
        }
    }

    /// [`Limits::c2d_ttl_secs`] as a duration.
    pub fn c2d_ttl(&self) -> Duration {
        Duration::from_secs(self.c2d_ttl_secs)
    }

    /// [`Limits::interrupted_registration_secs`] as a duration.
    pub fn interrupted_registration_age(&self) -> Duration {
        Duration::from_secs(self.interrupted_registration_secs)
    }

    /// [`Limits::webhook_timeout_secs`] as a duration.
    pub fn webhook_timeout(&self) -> Duration {
        Duration::from_secs(self.webhook_timeout_secs)
    }

    /// [`Limits::request_timeout_secs`] as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    /// [`Limits::dps_session_timeout_secs`] as a duration.
    pub fn dps_session_timeout(&self) -> Duration {
        Duration::from_secs(self.dps_session_timeout_secs)
    }

    /// [`Limits::telemetry_retention_secs`] as a duration.
    pub fn telemetry_retention_age(&self) -> Duration {
        Duration::from_secs(self.telemetry_retention_secs)
    }
}

/// The most embedded hubs one server serves (`--hub-hostname` values).
pub const MAX_EMBEDDED_HUBS: usize = 32;

/// A setting given as one value or a list of them (`hub-hostname = "a"` or `["a", "b"]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One value.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl OneOrMany {
    /// The values.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(v) => vec![v],
            OneOrMany::Many(v) => v,
        }
    }
}

/// The optional TOML file: the same settings, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FileConfig {
    /// See [`ServerConfig::data_dir`].
    pub data_dir: Option<PathBuf>,
    /// See [`ServerConfig::hostnames`].
    pub hostname: Option<Vec<String>>,
    /// See [`ServerConfig::hub_hostnames`]: one name, or a list of them.
    pub hub_hostname: Option<OneOrMany>,
    /// See [`ServerConfig::store`].
    pub store: Option<String>,
    /// See [`ServerConfig::bind`].
    pub bind: Option<IpAddr>,
    /// See [`ServerConfig::mqtt_port`].
    pub mqtt_port: Option<u16>,
    /// See [`ServerConfig::https_port`].
    pub https_port: Option<u16>,
    /// See [`ServerConfig::amqp_port`].
    pub amqp_port: Option<u16>,
    /// See [`ServerConfig::tls_cert`].
    pub tls_cert: Option<PathBuf>,
    /// See [`ServerConfig::tls_key`].
    pub tls_key: Option<PathBuf>,
    /// See [`ServerConfig::max_message_bytes`].
    pub max_message_bytes: Option<usize>,
    /// See [`ServerConfig::telemetry_retention`].
    pub telemetry_retention: Option<usize>,
    /// See [`ServerConfig::immediate_assignment`].
    pub immediate_assignment: Option<bool>,
    /// See [`ServerConfig::hub_device_cache`].
    pub hub_device_cache: Option<usize>,
    /// See [`ServerConfig::event_hub_partitions`].
    pub event_hub_partitions: Option<u32>,
    /// See [`ServerConfig::event_hub_consumer_groups`].
    pub event_hub_consumer_groups: Option<Vec<String>>,
    /// See [`ServerConfig::file_upload_notifications`].
    pub file_upload_notifications: Option<bool>,
    /// See [`ServerConfig::file_upload_storage`].
    pub file_upload_storage: Option<dps_proto::blob_storage::StorageAccountString>,
    /// See [`ServerConfig::file_upload_container`].
    pub file_upload_container: Option<String>,
    /// See [`ServerConfig::file_upload_storage_ca`].
    pub file_upload_storage_ca: Option<PathBuf>,
    /// See [`ServerConfig::linked_hubs`]: `[[linked-hub]]` tables.
    #[serde(rename = "linked-hub")]
    pub linked_hubs: Option<Vec<LinkedHubConfig>>,
    /// See [`ServerConfig::allocation_webhook_ca`].
    pub allocation_webhook_ca: Option<PathBuf>,
    /// See [`ServerConfig::tpm_manufacturer_ca`].
    pub tpm_manufacturer_ca: Option<PathBuf>,
    /// See [`ServerConfig::metrics_token`].
    pub metrics_token: Option<String>,
    /// See [`ServerConfig::geo_networks`]: `[[geo-network]]` tables.
    #[serde(rename = "geo-network")]
    pub geo_networks: Option<Vec<GeoNetworkConfig>>,
    /// See [`ServerConfig::geo_locations`]: `[[geo-location]]` tables.
    #[serde(rename = "geo-location")]
    pub geo_locations: Option<Vec<GeoLocationConfig>>,
    /// See [`ServerConfig::limits`]: a `[limits]` table; keys left out keep their defaults.
    pub limits: Option<Limits>,
}

impl FileConfig {
    /// Reads a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigFileError::Invalid {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Why a config file could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("invalid config file {}: {source}", .path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The parser's reason (names the key).
        source: toml::de::Error,
    },
}

impl ServerConfig {
    /// Where the data is, for logs and the start banner: the data directory, or the PostgreSQL
    /// URL without its password.
    pub fn store_display(&self) -> String {
        match &self.store {
            None => format!("SQLite files in {}", self.data_dir.display()),
            Some(url) => format!("PostgreSQL {}", dps_store::postgres::without_password(url)),
        }
    }

    /// Defaults: `./dps-data`, host names `localhost` and `127.0.0.1`, all interfaces, 8883/443/5671.
    pub fn defaults() -> Self {
        Self {
            data_dir: PathBuf::from("./dps-data"),
            hostnames: vec!["localhost".into(), "127.0.0.1".into()],
            hub_hostnames: Vec::new(),
            store: None,
            bind: IpAddr::from([0, 0, 0, 0]),
            mqtt_port: 8883,
            https_port: 443,
            amqp_port: 5671,
            tls_cert: None,
            tls_key: None,
            max_message_bytes: 256 * 1024,
            telemetry_retention: 10_000,
            immediate_assignment: false,
            hub_device_cache: dps_hub::DEFAULT_DEVICE_CACHE,
            event_hub_partitions: dps_hub::DEFAULT_PARTITIONS,
            event_hub_consumer_groups: Vec::new(),
            file_upload_notifications: true,
            file_upload_storage: None,
            file_upload_container: dps_proto::rest::FILE_UPLOAD_CONTAINER.to_string(),
            file_upload_storage_ca: None,
            linked_hubs: Vec::new(),
            allocation_webhook_ca: None,
            tpm_manufacturer_ca: None,
            metrics_token: None,
            geo_networks: Vec::new(),
            geo_locations: Vec::new(),
            limits: Limits::default(),
        }
    }

    /// Applies a file's settings over `self`.
    pub fn merge_file(mut self, f: FileConfig) -> Self {
        macro_rules! take {
            ($($field:ident),*) => { $(if let Some(v) = f.$field { self.$field = v; })* };
        }
        take!(
            data_dir,
            bind,
            mqtt_port,
            https_port,
            amqp_port,
            max_message_bytes,
            telemetry_retention,
            immediate_assignment,
            hub_device_cache,
            event_hub_partitions,
            event_hub_consumer_groups,
            file_upload_notifications,
            file_upload_container
        );
        self.file_upload_storage = f.file_upload_storage.or(self.file_upload_storage);
        self.file_upload_storage_ca = f.file_upload_storage_ca.or(self.file_upload_storage_ca);
        self.allocation_webhook_ca = f.allocation_webhook_ca.or(self.allocation_webhook_ca);
        self.tpm_manufacturer_ca = f.tpm_manufacturer_ca.or(self.tpm_manufacturer_ca);
        self.metrics_token = f.metrics_token.or(self.metrics_token);
        if let Some(g) = f.geo_networks {
            self.geo_networks = g;
        }
        if let Some(g) = f.geo_locations {
            self.geo_locations = g;
        }
        if let Some(h) = f.linked_hubs {
            self.linked_hubs = h;
        }
        if let Some(h) = f.hostname.filter(|h| !h.is_empty()) {
            self.hostnames = h;
        }
        if let Some(h) = f.hub_hostname {
            self.hub_hostnames = h.into_vec();
        }
        self.store = f.store.or(self.store);
        self.tls_cert = f.tls_cert.or(self.tls_cert);
        self.tls_key = f.tls_key.or(self.tls_key);
        if let Some(l) = f.limits {
            self.limits = l;
        }
        self
    }

    /// Refuses settings that make no sense, before anything is opened: a zero hub device cache
    /// (the hub reads every device through it; 0 is a typo, not a way to turn it off) and the
    /// zero limits [`Limits::validate`] refuses. The message names the setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.hub_device_cache == 0 {
            return Err("hub-device-cache must be at least 1 (the embedded hub reads every device through it)".into());
        }
        if !(1..=32).contains(&self.event_hub_partitions) {
            return Err(format!(
                "event-hub-partitions must be from 1 to 32 (as an IoT hub's built-in endpoint), not {}",
                self.event_hub_partitions
            ));
        }
        if let Some(bad) = self
            .event_hub_consumer_groups
            .iter()
            .find(|g| !dps_proto::event_hubs::valid_consumer_group_name(g))
        {
            return Err(format!(
                "event-hub-consumer-groups: {bad:?} is not a consumer group name (1 to 50 letters, digits, '.', '_', '-')"
            ));
        }
        if self.event_hub_consumer_groups.len() >= dps_proto::event_hubs::MAX_CONSUMER_GROUPS {
            return Err(format!(
                "event-hub-consumer-groups: at most {} besides $Default",
                dps_proto::event_hubs::MAX_CONSUMER_GROUPS - 1
            ));
        }
        self.check_hub_hostnames()?;
        if let Some(url) = &self.store {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err("store: expected a PostgreSQL URL (postgres://user:password@host:port/database)".into());
            }
        }
        self.geo()?;
        if self.metrics_token.as_deref().is_some_and(|t| t.len() < 16) {
            return Err(
                "metrics-token: at least 16 characters (a scraper's secret, not a password to remember)".into(),
            );
        }
        if !dps_proto::blob_storage::valid_container_name(&self.file_upload_container) {
            return Err(format!(
                "file-upload-container: {:?} is not a container name (3 to 63 lower-case letters, digits and '-')",
                self.file_upload_container
            ));
        }
        if self.file_upload_storage.is_none() {
            let set = if self.file_upload_storage_ca.is_some() {
                Some("file-upload-storage-ca")
            } else if self.file_upload_container != dps_proto::rest::FILE_UPLOAD_CONTAINER {
                Some("file-upload-container")
            } else {
                None
            };
            if let Some(name) = set {
                return Err(format!(
                    "{name} is a setting of an external storage account: set file-upload-storage too \
                     (the embedded blob endpoint always uses the container 'fileupload')"
                ));
            }
        }
        self.limits.validate()
    }

    /// The `geoLatency` settings of `[[geo-network]]` and `[[geo-location]]`, or what is wrong
    /// with them.
    pub fn geo(&self) -> Result<dps_core::GeoConfig, String> {
        let mut geo = dps_core::GeoConfig::default();
        for n in &self.geo_networks {
            let net = n.network.parse().map_err(|_| {
                format!(
                    "geo-network: {:?} is not an address block (10.1.0.0/16, fd00::/8)",
                    n.network
                )
            })?;
            geo.networks.push((net, n.location.clone()));
        }
        for l in &self.geo_locations {
            if !(-90.0..=90.0).contains(&l.latitude) || !(-180.0..=180.0).contains(&l.longitude) {
                return Err(format!(
                    "geo-location {:?}: latitude must be from -90 to 90 and longitude from -180 to 180",
                    l.name
                ));
            }
            geo.locations
                .insert(l.name.to_ascii_lowercase(), (l.latitude, l.longitude));
        }
        Ok(geo)
    }

    /// The provisioning host name (first host name).
    pub fn provisioning_host(&self) -> &str {
        self.hostnames.first().map(String::as_str).unwrap_or("localhost")
    }

    /// Each hub host name is a host name, named once, and there are at most
    /// [`MAX_EMBEDDED_HUBS`] (each is a linked hub, and a server links at most 50).
    fn check_hub_hostnames(&self) -> Result<(), String> {
        let names = &self.hub_hostnames;
        if names.len() > MAX_EMBEDDED_HUBS {
            return Err(format!(
                "hub-hostname: at most {MAX_EMBEDDED_HUBS} embedded hubs, not {}",
                names.len()
            ));
        }
        for (i, name) in names.iter().enumerate() {
            let valid = !name.is_empty()
                && name.len() <= 253
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']'));
            if !valid {
                return Err(format!("hub-hostname: {name:?} is not a host name"));
            }
            if names[..i].iter().any(|n| n.eq_ignore_ascii_case(name)) {
                return Err(format!("hub-hostname: {name} is named twice"));
            }
        }
        Ok(())
    }

    /// The hub host name to use on first start when none is configured.
    pub fn default_hub_host(&self) -> String {
        self.hostnames
            .iter()
            .find(|h| h.contains('.'))
            .cloned()
            .unwrap_or_else(|| "127.0.0.1".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_overrides_defaults() {
        let f: FileConfig = toml::from_str("hostname = [\"dps.example.test\"]\nmqtt-port = 18883\n").unwrap();
        let c = ServerConfig::defaults().merge_file(f);
        assert_eq!(c.hostnames, vec!["dps.example.test"]);
        assert_eq!(c.mqtt_port, 18883);
        assert_eq!(c.https_port, 443);
        assert_eq!(c.default_hub_host(), "dps.example.test");
        assert_eq!(ServerConfig::defaults().default_hub_host(), "127.0.0.1");
        assert!(toml::from_str::<FileConfig>("typo = 1").is_err());
        assert!(!c.immediate_assignment);
        let f: FileConfig = toml::from_str("immediate-assignment = true\n").unwrap();
        assert!(ServerConfig::defaults().merge_file(f).immediate_assignment);
    }

    #[test]
    fn hub_device_cache_is_read_from_the_file_and_zero_is_refused() {
        assert_eq!(ServerConfig::defaults().hub_device_cache, dps_hub::DEFAULT_DEVICE_CACHE);
        let f: FileConfig = toml::from_str("hub-device-cache = 1000\n").unwrap();
        let c = ServerConfig::defaults().merge_file(f);
        assert_eq!(c.hub_device_cache, 1000);
        assert_eq!(c.validate(), Ok(()));
        assert!(toml::from_str::<FileConfig>("hub-device-cache = -1\n").is_err());
        let zero: FileConfig = toml::from_str("hub-device-cache = 0\n").unwrap();
        let err = ServerConfig::defaults().merge_file(zero).validate().unwrap_err();
        assert!(err.contains("hub-device-cache must be at least 1"), "{err}");
    }

    #[test]
    fn event_hub_settings_are_read_from_the_file_and_checked() {
        let f: FileConfig =
            toml::from_str("event-hub-partitions = 2\nevent-hub-consumer-groups = [\"analytics\"]\n").unwrap();
        let c = ServerConfig::defaults().merge_file(f);
        assert_eq!(
            (c.event_hub_partitions, c.event_hub_consumer_groups.clone()),
            (2, vec!["analytics".into()])
        );
        assert_eq!(c.validate(), Ok(()));
        for (partitions, group, wrong) in [
            (0, "ok", "event-hub-partitions"),
            (33, "ok", "event-hub-partitions"),
            (4, "-x", "consumer group"),
            (4, "a b", "consumer group"),
        ] {
            let mut c = ServerConfig::defaults();
            c.event_hub_partitions = partitions;
            c.event_hub_consumer_groups = vec![group.into()];
            let err = c.validate().unwrap_err();
            assert!(err.contains(wrong), "{err}");
        }
    }

    #[test]
    fn c2d_time_to_live_is_read_from_the_limits_within_iot_hubs_range() {
        assert_eq!(Limits::default().c2d_ttl(), Duration::from_secs(3600));
        let f: FileConfig = toml::from_str("[limits]\nc2d-ttl-secs = 120\n").unwrap();
        let c = ServerConfig::defaults().merge_file(f);
        assert_eq!(c.limits.c2d_ttl(), Duration::from_secs(120));
        assert_eq!(c.validate(), Ok(()));
        for bad in [59, 48 * 3600 + 1] {
            let f: FileConfig = toml::from_str(&format!("[limits]\nc2d-ttl-secs = {bad}\n")).unwrap();
            let err = ServerConfig::defaults().merge_file(f).validate().unwrap_err();
            assert!(err.contains("c2d-ttl-secs must be from 60 to 172800"), "{err}");
        }
    }

    #[test]
    fn an_external_storage_account_is_read_from_the_file_and_checked() {
        let key = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
        let f: FileConfig = toml::from_str(&format!(
            "file-upload-storage = \"AccountName=contoso;AccountKey={key}\"\nfile-upload-container = \"uploads\"\n"
        ))
        .unwrap();
        let c = ServerConfig::defaults().merge_file(f);
        let account = c.file_upload_storage.as_ref().unwrap();
        assert_eq!(account.device_host(), "contoso.blob.core.windows.net");
        assert_eq!(c.file_upload_container, "uploads");
        assert_eq!(c.validate(), Ok(()));
        // A bad connection string is refused when the file is read, naming what is wrong.
        let err = toml::from_str::<FileConfig>("file-upload-storage = \"AccountName=contoso\"\n").unwrap_err();
        assert!(err.to_string().contains("has no AccountKey"), "{err}");
        let mut c = ServerConfig::defaults();
        c.file_upload_container = "Bad_Name".into();
        assert!(c.validate().unwrap_err().contains("not a container name"));
        // The external account's settings without the account are a mistake, not ignored.
        let mut c = ServerConfig::defaults();
        c.file_upload_container = "uploads".into();
        assert!(c.validate().unwrap_err().contains("set file-upload-storage too"));
    }

    #[test]
    fn geo_settings_are_read_from_the_file_and_checked() {
        let f: FileConfig = toml::from_str(
            "[[geo-network]]\nnetwork = \"10.1.0.0/16\"\nlocation = \"factory-a\"\n\
             [[geo-location]]\nname = \"Factory-A\"\nlatitude = 48.1\nlongitude = 11.6\n",
        )
        .unwrap();
        let c = ServerConfig::defaults().merge_file(f);
        let geo = c.geo().unwrap();
        assert_eq!(geo.device_location("10.1.2.3".parse().unwrap()), Some("factory-a"));
        assert_eq!(geo.locations.get("factory-a"), Some(&(48.1, 11.6)));
        let mut bad = c.clone();
        bad.geo_networks[0].network = "10.1.0.0/33".into();
        assert!(bad.validate().unwrap_err().contains("not an address block"));
        let mut bad = c;
        bad.geo_locations[0].latitude = 91.0;
        assert!(bad.validate().unwrap_err().contains("latitude must be from -90 to 90"));
    }

    #[test]
    fn linked_hubs_are_read_from_the_file() {
        let f: FileConfig = toml::from_str(
            "[[linked-hub]]\nconnection-string = \"HostName=h1;SharedAccessKeyName=p;SharedAccessKey=a2V5\"\n\
             allocation-weight = 3\nlocation = \"westeurope\"\nca = \"other/ca.pem\"\n\
             [[linked-hub]]\nconnection-string = \"HostName=h2;SharedAccessKeyName=p;SharedAccessKey=a2V5\"\n\
             apply-allocation-policy = false\n",
        )
        .unwrap();
        let c = ServerConfig::defaults().merge_file(f);
        assert_eq!(c.linked_hubs.len(), 2);
        assert_eq!(c.linked_hubs[0].allocation_weight, Some(3));
        assert_eq!(c.linked_hubs[0].ca.as_deref(), Some(Path::new("other/ca.pem")));
        assert_eq!(c.linked_hubs[1].apply_allocation_policy, Some(false));
        assert!(!format!("{c:?}").contains("a2V5"), "the key stays out of logs");
        assert!(toml::from_str::<FileConfig>("[[linked-hub]]\nweight = 1\n").is_err());
    }

    #[test]
    fn limits_table_keeps_defaults_for_keys_left_out() {
        let f: FileConfig = toml::from_str("[limits]\nmax-connections-per-ip = 50\n").unwrap();
        let c = ServerConfig::defaults().merge_file(f);
        assert_eq!(c.limits.max_connections_per_ip, 50);
        assert_eq!(c.limits.max_connections, Limits::default().max_connections);
        assert!(toml::from_str::<FileConfig>("[limits]\nmax-conections = 1\n").is_err());
        assert_eq!(Limits::default().validate(), Ok(()));
        let zero: FileConfig = toml::from_str("[limits]\nrequest-timeout-secs = 0\n").unwrap();
        let err = ServerConfig::defaults().merge_file(zero).limits.validate().unwrap_err();
        assert!(err.contains("request-timeout-secs must be at least 1"), "{err}");
    }

    #[test]
    fn a_store_is_a_postgresql_url_shown_without_its_password() {
        let mut c = ServerConfig::defaults();
        assert!(c.store_display().starts_with("SQLite files in"));
        c.store = Some("postgres://dps:s3cret@db.example:5432/dps".into());
        c.validate().unwrap();
        assert_eq!(c.store_display(), "PostgreSQL postgres://dps@db.example:5432/dps");
        c.store = Some("mysql://x@y/z".into());
        assert!(c.validate().unwrap_err().contains("PostgreSQL URL"));
    }
}

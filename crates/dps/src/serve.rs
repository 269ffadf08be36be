//! `dps serve`.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use dps_server::{FileConfig, ServerConfig};

/// Flags override environment variables, which override the config file, which overrides the
/// built-in defaults.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// TOML file with the same settings (kebab-case keys, e.g. `https-port = 8443`).
    #[arg(long, env = "DPS_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (identity, local CA, databases) [default: ./dps-data].
    #[arg(long, env = "DPS_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Host name or IP address devices use to reach this server; repeatable. The server
    /// certificate covers all of them [default: localhost, 127.0.0.1].
    #[arg(long = "hostname", env = "DPS_HOSTNAME", value_delimiter = ',')]
    hostnames: Vec<String>,
    /// Host name of an embedded IoT hub (devices are assigned to it); repeatable: each name is
    /// a hub of its own, with its own keys and devices, on the same ports [default: the hubs
    /// the data directory has; on first start one named by the first --hostname containing a
    /// dot].
    #[arg(long = "hub-hostname", env = "DPS_HUB_HOSTNAME", value_delimiter = ',')]
    hub_hostnames: Vec<String>,
    /// Keep the DPS store and the embedded hubs' data in PostgreSQL
    /// (`postgres://user:password@host:port/database`) instead of SQLite files in the data
    /// directory; one node per database for now [default: the data directory].
    #[arg(long, env = "DPS_STORE")]
    store: Option<String>,
    /// Address to listen on [default: 0.0.0.0].
    #[arg(long, env = "DPS_BIND")]
    bind: Option<IpAddr>,
    /// MQTT over TLS port (DPS and hub device endpoints) [default: 8883].
    #[arg(long, env = "DPS_MQTT_PORT")]
    mqtt_port: Option<u16>,
    /// HTTPS port (device, service and hub registry APIs; MQTT over WebSockets at
    /// `/$iothub/websocket`) [default: 443].
    #[arg(long, env = "DPS_HTTPS_PORT")]
    https_port: Option<u16>,
    /// AMQP over TLS port (DPS and hub device endpoints; AMQP over WebSockets is on the HTTPS
    /// port) [default: 5671].
    #[arg(long, env = "DPS_AMQP_PORT")]
    amqp_port: Option<u16>,
    /// PEM certificate chain to serve instead of one issued by the local CA.
    #[arg(long, env = "DPS_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "DPS_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Answer register requests with the final result (`200 assigned`) instead of Azure's
    /// `202 assigning` followed by a poll. Every official SDK accepts it; it saves devices a round
    /// trip (and Python devices their fixed 2 s wait before the first poll).
    #[arg(long, env = "DPS_IMMEDIATE_ASSIGNMENT")]
    immediate_assignment: bool,
    /// Idle hub devices kept in memory after they are read; every other device is read from the
    /// hub database when needed. Raise it when many more devices than this are in use at once
    /// and memory allows (about 1.2 KB each) [default: 65536].
    #[arg(long, env = "DPS_HUB_DEVICE_CACHE")]
    hub_device_cache: Option<usize>,
    /// Partitions of the hub's Event Hub-compatible endpoint, 1 to 32 [default: 4].
    #[arg(long, env = "DPS_EVENT_HUB_PARTITIONS")]
    event_hub_partitions: Option<u32>,
    /// A consumer group of the Event Hub-compatible endpoint besides `$Default` (repeatable).
    #[arg(long = "event-hub-consumer-group", value_name = "NAME")]
    event_hub_consumer_groups: Vec<String>,
    /// Whether successful file uploads become notifications for the service
    /// (`/messages/serviceBound/filenotifications`) [default: true].
    #[arg(long, env = "DPS_FILE_UPLOAD_NOTIFICATIONS", value_name = "BOOL")]
    file_upload_notifications: Option<bool>,
    /// Upload files to this Azure Storage account instead of the server's own blob endpoint:
    /// its connection string (`DefaultEndpointsProtocol=https;AccountName=…;AccountKey=…;…`,
    /// `BlobEndpoint=https://…` for an endpoint of its own). Devices get its host and a SAS
    /// signed with its key; the container must exist.
    #[arg(long, env = "DPS_FILE_UPLOAD_STORAGE", value_name = "CONNECTION_STRING", hide_env_values = true,
          value_parser = parse_storage_account)]
    file_upload_storage: Option<dps_proto::blob_storage::StorageAccountString>,
    /// The container of --file-upload-storage that uploads go to [default: fileupload].
    #[arg(long, env = "DPS_FILE_UPLOAD_CONTAINER", requires = "file_upload_storage")]
    file_upload_container: Option<String>,
    /// PEM CA certificate(s) to trust for --file-upload-storage besides the system's.
    #[arg(
        long,
        env = "DPS_FILE_UPLOAD_STORAGE_CA",
        value_name = "FILE",
        requires = "file_upload_storage"
    )]
    file_upload_storage_ca: Option<PathBuf>,
    /// PEM CA certificate(s) to trust for custom allocation webhooks besides the system's.
    #[arg(long, env = "DPS_ALLOCATION_WEBHOOK_CA", value_name = "FILE")]
    allocation_webhook_ca: Option<PathBuf>,
    /// PEM root certificates of TPM manufacturers: a TPM enrolled by its endorsement key
    /// certificate must chain to one of them.
    #[arg(long, env = "DPS_TPM_MANUFACTURER_CA", value_name = "FILE")]
    tpm_manufacturer_ca: Option<PathBuf>,
    /// A bearer token (16 characters or more) that lets a scraper read GET /metrics
    /// (`Authorization: Bearer <token>`); a DPS service policy's SAS token always can.
    #[arg(long, env = "DPS_METRICS_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    metrics_token: Option<String>,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `dps_server=debug`.
    #[arg(long, env = "DPS_LOG", default_value = "info")]
    log: String,
    /// Log lines as text (coloured only on a terminal) or as JSON objects, one per line, for
    /// log collectors.
    #[arg(long, env = "DPS_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Export a trace of every registration over OTLP (HTTP, protobuf) to the collector at this
    /// base URL (e.g. `http://localhost:4318`; traces go to `/v1/traces`).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// PEM CA certificate(s) to trust for an `https` collector besides the system's.
    #[arg(long, value_name = "FILE")]
    otlp_ca: Option<PathBuf>,
    #[command(flatten)]
    limits: LimitArgs,
}

/// Limits and deadlines (`[limits]` in the config file); each defaults to
/// `dps_server::config::Limits::default()`.
#[derive(Args, Debug, Default)]
struct LimitArgs {
    /// Connections held at once over all listeners; lowered to what the open-file limit can
    /// hold [default: 60000].
    #[arg(long, env = "DPS_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Connections held at once from one source IP address [default: 30000].
    #[arg(long, env = "DPS_MAX_CONNECTIONS_PER_IP")]
    max_connections_per_ip: Option<usize>,
    /// Seconds a client has to send a whole HTTP request [default: 30].
    #[arg(long, env = "DPS_REQUEST_TIMEOUT_SECS")]
    request_timeout_secs: Option<u64>,
    /// Seconds a DPS MQTT connection may stay open in all [default: 300].
    #[arg(long, env = "DPS_DPS_SESSION_TIMEOUT_SECS")]
    dps_session_timeout_secs: Option<u64>,
    /// Bytes of telemetry the embedded hub keeps for readers [default: 268435456].
    #[arg(long, env = "DPS_TELEMETRY_RETENTION_BYTES")]
    telemetry_retention_bytes: Option<u64>,
    /// Seconds the embedded hub keeps a telemetry message [default: 86400].
    #[arg(long, env = "DPS_TELEMETRY_RETENTION_SECS")]
    telemetry_retention_secs: Option<u64>,
    /// Register requests per second from all devices together; over it, 429 + retry-after
    /// [default: 10000; 0: no limit].
    #[arg(long, env = "DPS_REGISTRATIONS_PER_SECOND")]
    registrations_per_second: Option<u32>,
    /// Device API requests (register, poll, status lookup) per second from all devices
    /// together [default: 50000; 0: no limit].
    #[arg(long, env = "DPS_OPERATIONS_PER_SECOND")]
    operations_per_second: Option<u32>,
    /// Status polls one registration id may make per 10 seconds [default: 5, as Azure; 0: no
    /// limit].
    #[arg(long, env = "DPS_POLLS_PER_DEVICE_PER_10S")]
    polls_per_device_per_10s: Option<u32>,
    /// Seconds a cloud-to-device message waits for its device when its sender set no expiry
    /// [default: 3600, as IoT Hub; 60 to 172800].
    #[arg(long, env = "DPS_C2D_TTL_SECS")]
    c2d_ttl_secs: Option<u64>,
    /// Largest file a device may upload, bytes [default: 268435456 (256 MiB)].
    #[arg(long, env = "DPS_MAX_UPLOAD_BYTES")]
    max_upload_bytes: Option<u64>,
    /// Seconds a custom allocation webhook has to answer [default: 10].
    #[arg(long, env = "DPS_WEBHOOK_TIMEOUT_SECS")]
    webhook_timeout_secs: Option<u64>,
    /// With several nodes on one PostgreSQL store: seconds after which a registration a node
    /// left unfinished (it died mid-way) is finished by another [default: 60].
    #[arg(long, env = "DPS_INTERRUPTED_REGISTRATION_SECS")]
    interrupted_registration_secs: Option<u64>,
    /// Days the audit trail keeps registration attempts and changes [default: 30].
    #[arg(long, env = "DPS_AUDIT_RETENTION_DAYS")]
    audit_retention_days: Option<u64>,
    /// Seconds a device's certificate keeps working after the device renewed it through its
    /// hub [default: 86400; 0: refused at once].
    #[arg(long, env = "DPS_CERTIFICATE_RENEWAL_GRACE_SECS")]
    certificate_renewal_grace_secs: Option<u64>,
    /// The least seconds between two certificate renewals of one device through its hub
    /// [default: 60; 0: no limit].
    #[arg(long, env = "DPS_CERTIFICATE_RENEWAL_INTERVAL_SECS")]
    certificate_renewal_interval_secs: Option<u64>,
}

impl LimitArgs {
    fn apply(self, l: &mut dps_server::config::Limits) {
        macro_rules! take {
            ($($field:ident),*) => { $(if let Some(v) = self.$field { l.$field = v; })* };
        }
        take!(
            max_connections,
            max_connections_per_ip,
            request_timeout_secs,
            dps_session_timeout_secs,
            telemetry_retention_bytes,
            telemetry_retention_secs,
            registrations_per_second,
            operations_per_second,
            polls_per_device_per_10s,
            c2d_ttl_secs,
            max_upload_bytes,
            webhook_timeout_secs,
            interrupted_registration_secs,
            audit_retention_days,
            certificate_renewal_grace_secs,
            certificate_renewal_interval_secs
        );
    }
}

impl ServeArgs {
    fn into_config(self) -> Result<(ServerConfig, String)> {
        let mut c = ServerConfig::defaults();
        if let Some(path) = &self.config {
            c = c.merge_file(FileConfig::load(path)?);
        }
        if let Some(v) = self.data_dir {
            c.data_dir = v;
        }
        if !self.hostnames.is_empty() {
            c.hostnames = self.hostnames;
        }
        if !self.hub_hostnames.is_empty() {
            c.hub_hostnames = self.hub_hostnames;
        }
        if let Some(v) = self.store {
            c.store = Some(v);
        }
        if let Some(v) = self.bind {
            c.bind = v;
        }
        if let Some(v) = self.mqtt_port {
            c.mqtt_port = v;
        }
        if let Some(v) = self.https_port {
            c.https_port = v;
        }
        if let Some(v) = self.amqp_port {
            c.amqp_port = v;
        }
        if self.tls_cert.is_some() {
            c.tls_cert = self.tls_cert;
            c.tls_key = self.tls_key;
        }
        if self.immediate_assignment {
            c.immediate_assignment = true;
        }
        if let Some(v) = self.hub_device_cache {
            c.hub_device_cache = v;
        }
        if let Some(v) = self.event_hub_partitions {
            c.event_hub_partitions = v;
        }
        if !self.event_hub_consumer_groups.is_empty() {
            c.event_hub_consumer_groups = self.event_hub_consumer_groups;
        }
        if let Some(v) = self.file_upload_notifications {
            c.file_upload_notifications = v;
        }
        if let Some(v) = self.file_upload_storage {
            c.file_upload_storage = Some(v);
        }
        if let Some(v) = self.file_upload_container {
            c.file_upload_container = v;
        }
        if let Some(v) = self.metrics_token {
            c.metrics_token = Some(v);
        }
        if let Some(v) = self.file_upload_storage_ca {
            c.file_upload_storage_ca = Some(v);
        }
        if let Some(v) = self.allocation_webhook_ca {
            c.allocation_webhook_ca = Some(v);
        }
        if let Some(v) = self.tpm_manufacturer_ca {
            c.tpm_manufacturer_ca = Some(v);
        }
        self.limits.apply(&mut c.limits);
        Ok((c, self.log))
    }
}

/// `--file-upload-storage`: a storage connection string, refused with the reason.
fn parse_storage_account(s: &str) -> Result<dps_proto::blob_storage::StorageAccountString, String> {
    dps_proto::blob_storage::StorageAccountString::parse(s).map_err(|e| e.to_string())
}

/// The log filter `dps serve` runs with: the operator's, with rustls's complaint about clients
/// that send an IP address as SNI silenced unless the filter names rustls itself. The Node SDKs
/// (and others) do that on every connection to a server named by its address; rustls ignores
/// the extension, as it must, and a WARN per connection would bury the log (and let any client
/// write to it at will).
fn serve_log_filter(log: &str) -> String {
    if log.contains("rustls") {
        log.to_string()
    } else {
        format!("{log},rustls::msgs::handshake=error")
    }
}

/// How `dps serve` writes its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; colours only when stderr is a terminal.
    Text,
    /// One JSON object per line (timestamp, level, target, fields, message).
    Json,
}

/// Runs until Ctrl-C or SIGTERM.
pub async fn run(args: ServeArgs) -> Result<()> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    let format = args.log_format;
    let otlp_endpoint = args.otlp_endpoint.clone();
    let otlp = match &args.otlp_endpoint {
        Some(endpoint) => {
            let (endpoint, ca) = (endpoint.clone(), args.otlp_ca.clone());
            // The blocking HTTP client may not be made on the async threads.
            Some(tokio::task::spawn_blocking(move || crate::otel::provider(&endpoint, ca.as_deref())).await??)
        }
        None => None,
    };
    let (mut config, log) = args.into_config()?;
    let filter = tracing_subscriber::EnvFilter::try_new(serve_log_filter(&log)).unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Json => logs.json().boxed(),
        // Escape codes in a file or a journal are noise: colour only for a person at a terminal.
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(otlp.as_ref().map(crate::otel::layer))
        .init();
    if let Some(endpoint) = &otlp_endpoint {
        tracing::info!(endpoint, "registration traces exported over OTLP");
    }
    // Every device connection is a file descriptor; the soft limit a shell hands out (often
    // 1024) would refuse connections long before memory or CPU run out.
    match dps_server::fdlimit::raise(0) {
        Ok(limit) => {
            tracing::info!(limit, "open-file limit (connections this process can hold)");
            fit_connections_to_open_files(&mut config.limits, limit);
        }
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    let server = dps_server::start(config.clone()).await?;
    let info = crate::info::Info::from_services(&server.services, &config);
    let hubs: Vec<&str> = info.hubs.iter().map(|h| h.host_name.as_str()).collect();
    println!(
        "dps {} {} data directory {}\n\n  ID scope            {}\n  provisioning host   {} (MQTT {}, HTTPS {}, AMQP {})\n  IoT hub             {}\n  trust this CA       {}\n  service connection  {}\n  hub connection      {}\n  data                {}\n\n  `dps info --data-dir {} --json` prints these for scripts. Ctrl-C stops.",
        env!("CARGO_PKG_VERSION"),
        if server.initialized { "initialized" } else { "serving" },
        config.data_dir.display(),
        info.id_scope,
        info.provisioning_host,
        server.mqtt_addr,
        server.https_addr,
        server.amqp_addr,
        hubs.join(", "),
        info.trust().as_deref().unwrap_or("(your --tls-cert issuer)"),
        info.service_connection_string,
        info.hub_connection_string,
        config.store_display(),
        config.data_dir.display(),
    );
    shutdown_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await;
    if let Some(provider) = otlp {
        // What is batched goes to the collector before the process ends.
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
    Ok(())
}

/// File descriptors kept for everything that is not a client connection: the databases and
/// their journals, listeners, the runtime's own, and files opened by the service API (CA
/// uploads, logs). A quarter of the limit when that is less.
const RESERVED_FILES: u64 = 256;

/// Lowers `max_connections` to what the open-file limit can hold, keeping [`RESERVED_FILES`]
/// (or a quarter of a small limit).
///
/// Why: each connection is a file descriptor. With a cap above the open-file limit, a flood
/// runs the process out of descriptors before the cap bites, and then `accept` fails for
/// everyone and the databases cannot open their files: the service stops answering. With the
/// cap below it, the flood is refused at the door and the server keeps working.
fn fit_connections_to_open_files(limits: &mut dps_server::Limits, open_files: u64) {
    let reserved = RESERVED_FILES.min(open_files / 4);
    let room = usize::try_from(open_files - reserved).unwrap_or(usize::MAX);
    if limits.max_connections > room {
        tracing::warn!(
            configured = limits.max_connections,
            open_file_limit = open_files,
            effective = room,
            "--max-connections {} is more than the open-file limit ({open_files}) can hold; at most {room} \
             connections will be held (raise the hard limit, e.g. `ulimit -Hn`, to hold more)",
            limits.max_connections
        );
        limits.max_connections = room;
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn config(args: &[&str]) -> ServerConfig {
        let cli = Cli::try_parse_from(std::iter::once("dps").chain(args.iter().copied())).unwrap();
        cli.serve.into_config().unwrap().0
    }

    #[test]
    fn the_sni_warning_is_silenced_unless_rustls_is_asked_for() {
        let filter = serve_log_filter("info");
        assert_eq!(filter, "info,rustls::msgs::handshake=error");
        assert!(tracing_subscriber::EnvFilter::try_new(&filter).is_ok());
        assert_eq!(serve_log_filter("warn,rustls=debug"), "warn,rustls=debug");
    }

    #[test]
    fn the_event_hub_flags_reach_the_config() {
        let c = config(&[]);
        assert_eq!((c.event_hub_partitions, c.event_hub_consumer_groups.len()), (4, 0));
        let c = config(&[
            "--event-hub-partitions",
            "8",
            "--event-hub-consumer-group",
            "analytics",
            "--event-hub-consumer-group",
            "alerts",
        ]);
        assert_eq!(c.event_hub_partitions, 8);
        assert_eq!(c.event_hub_consumer_groups, ["analytics", "alerts"]);
    }

    #[test]
    fn the_hub_device_cache_flag_reaches_the_config() {
        assert_eq!(config(&[]).hub_device_cache, ServerConfig::defaults().hub_device_cache);
        assert_eq!(config(&["--hub-device-cache", "1000"]).hub_device_cache, 1000);
    }

    #[test]
    fn the_connection_cap_fits_under_the_open_file_limit() {
        let mut l = dps_server::Limits::default();
        fit_connections_to_open_files(&mut l, 20_000);
        assert_eq!(l.max_connections, 20_000 - RESERVED_FILES as usize);
        l.max_connections = 500;
        fit_connections_to_open_files(&mut l, 20_000);
        assert_eq!(l.max_connections, 500, "a cap that fits is kept");
        fit_connections_to_open_files(&mut l, 100);
        assert_eq!(l.max_connections, 75, "a small limit keeps a quarter for the rest");
    }
}

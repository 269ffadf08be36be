//! Start-up: data directory, TLS, store, hub, engine, and the TLS listeners (MQTT, HTTPS, AMQP).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dps_core::auth::PolicyAuthorizer;
use dps_core::{Engine, EngineConfig, QuotaConfig, SystemClock};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::conn_limit::{ConnectionLimits, ConnectionPermit};
use crate::datadir::{DataDir, HubIdentity, Identity};
use crate::hubs::{EmbeddedHub, EmbeddedHubs};
use crate::log_limit::{LogLimiter, LOG_PERIOD};
use crate::tls::ListenerTls;
use crate::{ServerConfig, Services};

/// How long a client has to finish the TLS handshake. Every SDK finishes in one or two round
/// trips; a client still handshaking after this is stalled or hostile, and holds a connection
/// before it has shown any credential.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A port could not be bound. The message says how to fix the common causes.
    #[error("cannot listen on {addr} ({what}): {source}{hint}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Which listener.
        what: &'static str,
        /// The OS error.
        source: io::Error,
        /// How to fix it.
        hint: String,
    },
    /// A setting makes no sense (a zero deadline, connection cap or hub device cache, see
    /// [`ServerConfig::validate`]).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The data directory (identity, local CA, server certificate) could not be set up.
    #[error(transparent)]
    DataDir(#[from] crate::datadir::DataDirError),
    /// A `--tls-cert` or `--tls-key` file could not be read.
    #[error("cannot read {flag} {}: {source}", .path.display())]
    TlsFile {
        /// `--tls-cert` or `--tls-key`.
        flag: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Only one of `--tls-cert` and `--tls-key` was given.
    #[error("--tls-cert and --tls-key must be given together")]
    TlsPair,
    /// The certificate chain and key cannot make a TLS configuration.
    #[error("TLS: {0}")]
    Tls(#[source] dps_pki::PkiError),
    /// The registration store could not be opened.
    #[error(transparent)]
    Store(#[from] dps_store::OpenError),
    /// The PostgreSQL store (`--store`) could not be reached or set up (address, credentials,
    /// a schema from a newer build).
    #[error(transparent)]
    Postgres(#[from] dps_store::PgOpenError),
    /// The embedded hub's database could not be opened.
    #[error(transparent)]
    Hub(#[from] dps_hub::HubOpenError),
    /// A consumer group of the `event-hub-consumer-groups` setting could not be created (the
    /// hub's store failed, or there are more than the hub may have).
    #[error("event-hub-consumer-groups: {0}")]
    ConsumerGroup(#[source] dps_hub::ConsumerGroupError),
    /// The engine could not load enrollments or finish interrupted registrations.
    #[error("cannot load enrollments: {0}")]
    Engine(#[source] dps_core::Error),
    /// The file upload directory could not be created.
    #[error("cannot create the file upload directory {}: {source}", .path.display())]
    Blobs {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The linked hubs could not be read or the embedded hub linked.
    #[error("linked hubs: {0}")]
    LinkedHubs(#[source] dps_core::StoreError),
    /// The custom allocation webhook client cannot be built: its CA file is unreadable, or no
    /// CA can be trusted.
    #[error("custom allocation webhooks: {0}")]
    Webhook(String),
    /// A hub of the configuration's `[[linked-hub]]` tables could not be linked.
    #[error("{0}")]
    LinkedHub(String),
    /// The external storage account for file uploads cannot be used: its CA file is
    /// unreadable, or no CA can be trusted for it.
    #[error("file upload storage account: {0}")]
    StorageAccount(String),
    /// A bound listener could not report its address.
    #[error("cannot read the bound address: {0}")]
    LocalAddr(#[source] io::Error),
}

/// A started server.
pub struct RunningServer {
    /// Bound MQTT address.
    pub mqtt_addr: SocketAddr,
    /// Bound HTTPS address.
    pub https_addr: SocketAddr,
    /// Bound AMQP address.
    pub amqp_addr: SocketAddr,
    /// Shared state (for tests and for the startup summary).
    pub services: Arc<Services>,
    /// Whether this start initialized the data directory.
    pub initialized: bool,
    /// The connection caps over both listeners (and the connections they hold now).
    pub connections: Arc<ConnectionLimits>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    /// With a PostgreSQL store, what this node hears from the others (decision 0031).
    _bus: Option<dps_store::postgres::NodeBus>,
}

impl RunningServer {
    /// Stops accepting connections and waits for the accept loops to end.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// The connection handler of a device-protocol listener (MQTT, AMQP): `$serve(stream,
/// services, peer_certs)`, holding the connection's place under the caps until it returns.
macro_rules! device_protocol {
    ($services:expr, $serve:path) => {{
        let services = $services.clone();
        move |stream, certs, permit| {
            let services = services.clone();
            async move {
                let source = Some(permit.ip());
                let _permit = permit;
                $serve(stream, services, certs, source).await
            }
        }
    }};
}

/// Initializes (or reuses) the data directory and starts listening.
pub async fn start(config: ServerConfig) -> Result<RunningServer, StartError> {
    config.validate().map_err(StartError::Config)?;
    // The ports first, before anything is written to the data directory or the database: a
    // port another server holds (or one this user may not bind) fails the start while nothing
    // is created yet. Bound, not listening: a connection is refused until the server is ready.
    let ports = [
        Port::reserve(SocketAddr::new(config.bind, config.mqtt_port), "MQTT", "--mqtt-port")?,
        Port::reserve(SocketAddr::new(config.bind, config.https_port), "HTTPS", "--https-port")?,
        Port::reserve(SocketAddr::new(config.bind, config.amqp_port), "AMQP", "--amqp-port")?,
    ];
    let dir = DataDir::new(&config.data_dir);
    let postgres = match &config.store {
        None => None,
        // Every node of the database serves the same service (decision 0031).
        Some(url) => Some(dps_store::PostgresStore::connect(url).await?),
    };
    let (identity, initialized, tls) = identity_and_tls(&config, &dir, postgres.as_ref()).await?;
    for hub in identity.hubs() {
        if !config.hostnames.iter().any(|h| h.eq_ignore_ascii_case(&hub.host_name)) {
            tracing::warn!(
                hub = %hub.host_name,
                hostnames = ?config.hostnames,
                "the hub host name is not one of the --hostname values: devices are told to connect to it, so it \
                 must resolve to this server (or its load balancer); add it with --hostname if it is one of its names"
            );
        }
    }
    let mqtt_acceptor = tls.without_alpn();
    let amqp_acceptor = mqtt_acceptor.clone();
    let acceptor = tls.https();

    let storage_account = storage_account(&config)?;
    let storage = Storage::open(&config, &dir, &identity, postgres).await?;
    let store = storage.store.clone();
    let mut hubs = Vec::new();
    let mut fresh = Vec::new();
    for (i, hub_identity) in identity.hubs().enumerate() {
        // The first hub also answers to the server's own names that name no other hub: a
        // device that reaches the server by its IP address names it so.
        let server_names = config
            .hostnames
            .iter()
            .filter(|_| i == 0)
            .filter(|n| identity.hub_named(n).is_none());
        let aliases = hub_identity
            .former_host_names
            .iter()
            .chain(server_names)
            .cloned()
            .collect();
        let (hub, held_before) = open_hub(&config, &dir, &storage, hub_identity, aliases).await?;
        fresh.push(!held_before);
        hubs.push(hub);
    }
    link_embedded_hubs(store.as_ref(), &identity, &fresh).await?;
    // Certificates issued to devices name where their CA's revocation list is served: the
    // HTTPS port under the server's first host name.
    let https_port = ports[1].socket.local_addr().map_or(config.https_port, |a| a.port());
    let crl_base_url = config.hostnames.first().map(|h| {
        let host = if h.contains(':') { format!("[{h}]") } else { h.clone() };
        match https_port {
            443 => format!("https://{host}/crl"),
            port => format!("https://{host}:{port}/crl"),
        }
    });
    let engine = Engine::new(
        EngineConfig {
            immediate_assignment: config.immediate_assignment,
            quotas: QuotaConfig {
                registrations_per_second: config.limits.registrations_per_second,
                operations_per_second: config.limits.operations_per_second,
                polls_per_device_per_10s: config.limits.polls_per_device_per_10s,
                ..QuotaConfig::DEFAULT
            },
            geo: config.geo().map_err(StartError::Config)?,
            interrupted_registration_age: config.limits.interrupted_registration_age(),
            crl_base_url,
            tpm_manufacturer_roots: tpm_manufacturer_roots(&config)?,
            ..EngineConfig::single_hub(identity.id_scope.clone(), identity.hub.host_name.clone())
        },
        store,
        Arc::new(crate::hub_router::HubRouter::new(
            hubs.iter().map(|h| h.hub.clone()).collect(),
        )),
    )
    .with_webhook(Arc::new(webhook_client(&config)?));
    engine.load().await.map_err(StartError::Engine)?;
    link_configured_hubs(&engine, &config.linked_hubs).await?;

    // Listening last: a port that accepts connections means the server is ready (tests and
    // operators wait for that, then read `server.json`).
    let [mqtt, https, amqp] = ports;
    let (mqtt, https, amqp) = (mqtt.listen()?, https.listen()?, amqp.listen()?);
    let (mqtt_addr, https_addr, amqp_addr) = (
        mqtt.local_addr().map_err(StartError::LocalAddr)?,
        https.local_addr().map_err(StartError::LocalAddr)?,
        amqp.local_addr().map_err(StartError::LocalAddr)?,
    );
    for h in &hubs {
        h.hub.set_file_upload(match &storage_account {
            Some(account) => account.file_upload_config(config.file_upload_notifications),
            None => file_upload_config(&h.identity, &config, https_addr.port()),
        });
    }

    // Services see the ports actually bound (port 0 picks one): SAS audiences and Host headers
    // carry the HTTPS port when it is not 443.
    let config = ServerConfig {
        mqtt_port: mqtt_addr.port(),
        https_port: https_addr.port(),
        amqp_port: amqp_addr.port(),
        ..config
    };
    let mut hubs = hubs.into_iter();
    let first = hubs.next().expect("a server has at least one embedded hub");
    let metrics = Arc::new(crate::metrics::Metrics::default());
    for (name, stats) in &storage.stats {
        metrics.watch_store(name, stats.clone());
    }
    let (tx, rx) = watch::channel(false);
    let audit = crate::audit::AuditTrail::start(storage.store.clone(), config.limits.audit_retention(), rx.clone());
    engine.set_observer(Arc::new(crate::observer::ServerObserver::new(
        metrics.clone(),
        audit.clone(),
    )));
    let hubs = EmbeddedHubs::new(first, hubs);
    let dps_auth = PolicyAuthorizer::new(identity.policies.clone());
    let keeper = match &storage.postgres {
        Some(store) => crate::policies::IdentityKeeper::Shared {
            store: store.clone(),
            mirror: dir.clone(),
        },
        None => crate::policies::IdentityKeeper::DataDir(dir.clone()),
    };
    let policies = Arc::new(crate::policies::PolicyBook::new(
        keeper,
        dps_auth.clone(),
        hubs.authorizers(),
    ));
    let engine = Arc::new(engine);
    // Devices renew certificates through their hub, issued by the engine under the credential
    // policy that issued the one they have,
    // and they refuse the certificates it knows are revoked.
    let issuer: Arc<dyn dps_core::CertificateIssuer> = engine.clone();
    for h in hubs.iter() {
        h.hub
            .set_certificate_issuer(&issuer, config.limits.certificate_renewal());
        h.hub.set_revocations(engine.revocations());
    }
    let services = Arc::new(Services {
        engine,
        hubs,
        dps_auth,
        policies,
        audit,
        portal: Arc::new(crate::portal::Portal::new(&identity.portal_key)),
        identity,
        config: config.clone(),
        clock: Arc::new(SystemClock),
        storage_account,
        metrics,
        readiness: Default::default(),
    });

    let portal = crate::portal::base_url(
        config.hostnames.first().map_or("localhost", String::as_str),
        https_addr.port(),
    );
    tracing::info!(url = %format!("{portal}/portal/"), "web portal: sign in with a shared access policy's name and key, or once with a link from `dps portal-link`");
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let now = dps_core::Engine::unix_time(services.clock.now());
        eprintln!(
            "portal sign-in link (once, within 15 minutes): {}",
            crate::portal::sign_in_link(&services.identity.portal_key, &portal, now)
        );
    }

    dir.record_runtime(&crate::datadir::Runtime {
        hostnames: config.hostnames.clone(),
        mqtt_port: mqtt_addr.port(),
        https_port: https_addr.port(),
        amqp_port: amqp_addr.port(),
        address: Some(config.bind).filter(|ip| {
            !ip.is_unspecified()
                && config
                    .hostnames
                    .iter()
                    .any(|h| h.parse::<std::net::IpAddr>() == Ok(*ip))
        }),
    })?;
    let mut tasks = JoinSet::new();
    let http_app = crate::http::HttpApp::new(services.clone());
    let connections = ConnectionLimits::new(config.limits.max_connections, config.limits.max_connections_per_ip);
    tasks.spawn(accept_loop(
        "MQTT",
        services.metrics.clone(),
        mqtt,
        mqtt_acceptor,
        connections.clone(),
        rx.clone(),
        device_protocol!(services, crate::mqtt::serve_connection),
    ));
    tasks.spawn(accept_loop(
        "AMQP",
        services.metrics.clone(),
        amqp,
        amqp_acceptor,
        connections.clone(),
        rx.clone(),
        device_protocol!(services, crate::amqp::serve_connection),
    ));
    for h in services.hubs.iter() {
        tasks.spawn(hub_sweeper(h.hub.clone(), h.blobs.clone(), rx.clone()));
    }
    if let (Some(bus), HubStorage::Postgres { db, .. }) = (&storage.bus, &storage.hubs) {
        // What the other nodes serving the database say (decision 0031).
        let hubs = services
            .hubs
            .iter()
            .filter_map(|h| Some((h.identity.number()?, h.hub.clone())))
            .collect();
        let hearing = db.clone().hear_other_nodes(bus.subscribe(), hubs);
        let dps = dps_store::PostgresStore::hear_other_nodes(bus.subscribe(), services.engine.clone());
        let policies = services.policies.clone().hear_other_nodes(bus.subscribe());
        tasks.spawn(finish_interrupted_registrations(
            db.clone(),
            services.engine.clone(),
            config.limits.interrupted_registration_age(),
            rx.clone(),
        ));
        tasks.spawn(share_quotas(db.live_nodes(), services.engine.clone(), rx.clone()));
        let mut shutdown = rx.clone();
        tasks.spawn(async move {
            tokio::select! {
                _ = hearing => {}
                _ = dps => {}
                _ = policies => {}
                _ = shutdown.changed() => {}
            }
        });
    }
    tasks.spawn(accept_loop(
        "HTTPS",
        services.metrics.clone(),
        https,
        acceptor,
        connections.clone(),
        rx,
        move |stream, certs, permit| {
            let app = http_app.clone();
            async move { app.serve_admitted(stream, certs, permit).await }
        },
    ));
    Ok(RunningServer {
        mqtt_addr,
        https_addr,
        amqp_addr,
        services,
        initialized,
        connections,
        shutdown: tx,
        tasks,
        _bus: storage.bus,
    })
}

/// Connections the kernel may queue before `accept` (capped by `net.core.somaxconn`, 4096 on
/// current Linux). A fleet reconnecting at once — after a hub restart, or a production line
/// powering up — arrives far faster than TLS handshakes complete; with the usual 128 the kernel
/// drops the surplus SYNs and those devices wait a full second for their retransmit.
const LISTEN_BACKLOG: u32 = 4096;

/// A listener's port, bound at start and listened on once the server is ready.
struct Port {
    socket: tokio::net::TcpSocket,
    addr: SocketAddr,
    what: &'static str,
    flag: &'static str,
}

impl Port {
    /// Binds `addr` for the `what` listener (whose port option is `flag`, for the hints).
    fn reserve(addr: SocketAddr, what: &'static str, flag: &'static str) -> Result<Port, StartError> {
        let bound = || -> io::Result<tokio::net::TcpSocket> {
            let socket = match addr {
                SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
            };
            // A restarted server can bind while the previous one's connections sit in TIME_WAIT.
            socket.set_reuseaddr(true)?;
            socket.bind(addr)?;
            Ok(socket)
        };
        match bound() {
            Ok(socket) => Ok(Port {
                socket,
                addr,
                what,
                flag,
            }),
            Err(source) => Err(port_error(addr, what, flag, source)),
        }
    }

    /// Starts accepting connections.
    fn listen(self) -> Result<TcpListener, StartError> {
        let Port {
            socket,
            addr,
            what,
            flag,
        } = self;
        socket
            .listen(LISTEN_BACKLOG)
            .map_err(|source| port_error(addr, what, flag, source))
    }
}

/// Why the `what` listener cannot have `addr`, with what to do about it.
fn port_error(addr: SocketAddr, what: &'static str, flag: &str, source: io::Error) -> StartError {
    let hint = match source.kind() {
            io::ErrorKind::PermissionDenied if addr.port() < 1024 => format!(
                "\n  ports below 1024 need privileges. Either allow this binary to bind them:\n    sudo setcap 'cap_net_bind_service=+ep' \"$(command -v dps)\"\n  or lower the unprivileged port floor:\n    sudo sysctl net.ipv4.ip_unprivileged_port_start={}\n  or use another port ({flag} ...), noting that the Python and C device SDKs only connect to 8883 (MQTT) and 443 (HTTPS, MQTT over WebSockets).",
                addr.port()
            ),
            io::ErrorKind::AddrInUse => format!("\n  another process is listening there; stop it, or bind another address with --bind or port with {flag}"),
            io::ErrorKind::AddrNotAvailable => "\n  that address is not assigned to any interface of this machine (--bind)".to_string(),
            _ => String::new(),
        };
    StartError::Bind {
        addr,
        what,
        source,
        hint,
    }
}

/// Accepts TCP connections, admits them under the connection caps (a refused one is closed at
/// once, before any TLS), completes TLS in a per-connection task, and hands the stream, the
/// client's certificates (if any) and the connection's permit to `serve`. `what` names the
/// listener in logs.
/// Runs the hub's housekeeping ([`dps_hub::Hub::sweep`]: message expiry, feedback locks) once a
/// second until shutdown.
/// Where devices upload files: the blob endpoint on the HTTPS port under the hub's host name, the
/// `fileupload` container, an account named like the event hub and keyed from the hub owner key.
fn file_upload_config(identity: &HubIdentity, config: &ServerConfig, https_port: u16) -> dps_hub::FileUploadConfig {
    let hub_host = &identity.host_name;
    let host = if https_port == 443 {
        hub_host.clone()
    } else {
        format!("{hub_host}:{https_port}")
    };
    let secret = identity
        .owner_policy()
        .map(|p| p.primary_key.clone())
        .unwrap_or_default();
    dps_hub::FileUploadConfig {
        host,
        container: dps_proto::rest::FILE_UPLOAD_CONTAINER.to_string(),
        account: crate::amqp::event_hub::event_hub_name(hub_host),
        key: dps_proto::blob_storage::derive_account_key(secret.as_bytes()),
        notifications: config.file_upload_notifications,
    }
}

/// Where the DPS store and the embedded hubs keep their data: SQLite files in the data
/// directory (the default), or one PostgreSQL database (`--store postgres://…`, issue 15,
/// decision 0030).
struct Storage {
    store: Arc<dyn dps_core::Store>,
    hubs: HubStorage,
    /// With a PostgreSQL store: the node's ear on the other nodes' writes, listening from before
    /// the hubs open, so that nothing written meanwhile goes unheard.
    bus: Option<dps_store::postgres::NodeBus>,
    /// The PostgreSQL store, which also keeps the identity every node shares.
    postgres: Option<Arc<dps_store::PostgresStore>>,
    /// The writers' counters of the DPS store and the hubs' store, for the metrics.
    stats: [(&'static str, crate::metrics::StoreStatsFn); 2],
}

enum HubStorage {
    Sqlite(Arc<dps_store::HubDatabase>),
    Postgres {
        db: Arc<dps_store::PostgresHubDatabase>,
        /// Hub numbers the database held before this start.
        held: Vec<u32>,
    },
}

impl Storage {
    async fn open(
        config: &ServerConfig,
        dir: &DataDir,
        identity: &Identity,
        postgres: Option<dps_store::PostgresStore>,
    ) -> Result<Storage, StartError> {
        let numbers = identity
            .hubs()
            .map(|hub| {
                hub.number().ok_or_else(|| {
                    StartError::Config(format!(
                        "dps.json names the files of hub {} {:?}, which this build does not know (it makes hub-2, hub-3, ...)",
                        hub.host_name, hub.files
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (Some(url), Some(store)) = (&config.store, postgres) else {
            let slots: Vec<_> = identity.hubs().map(|hub| dir.separate_hub_db_path_of(hub)).collect();
            let slots: Vec<_> = numbers
                .iter()
                .zip(&slots)
                .map(|(number, file)| dps_store::HubSlot {
                    number: *number,
                    separate_file: file.as_deref(),
                })
                .collect();
            let store = Arc::new(dps_store::SqliteStore::open(&dir.store_path())?);
            let hubs = dps_store::HubDatabase::open(&dir.hub_db_path(), &slots)?;
            return Ok(Storage {
                stats: [
                    ("dps", stats_of(&store, dps_store::SqliteStore::stats)),
                    ("hubs", stats_of(&hubs, dps_store::HubDatabase::stats)),
                ],
                store,
                hubs: HubStorage::Sqlite(hubs),
                bus: None,
                postgres: None,
            });
        };
        let bus = dps_store::postgres::NodeBus::listen(url).await?;
        let db = dps_store::PostgresHubDatabase::connect(url).await?;
        let held = db
            .hold(&numbers)
            .await?
            .into_iter()
            .zip(&numbers)
            .filter_map(|(held, n)| held.then_some(*n))
            .collect();
        tracing::info!(store = %config.store_display(), "data in PostgreSQL");
        let store = Arc::new(store);
        Ok(Storage {
            stats: [
                ("dps", stats_of(&store, dps_store::PostgresStore::stats)),
                ("hubs", stats_of(&db, dps_store::PostgresHubDatabase::stats)),
            ],
            postgres: Some(store.clone()),
            store,
            hubs: HubStorage::Postgres { db, held },
            bus: Some(bus),
        })
    }

    /// How hub `number` reaches the other nodes serving it: on PostgreSQL (decision 0031).
    fn peers(&self, number: u32) -> Option<Arc<dyn dps_hub::Peers>> {
        match &self.hubs {
            HubStorage::Sqlite(_) => None,
            HubStorage::Postgres { db, .. } => Some(Arc::new(db.hub(number))),
        }
    }

    /// Hub `number`'s blobs: in the directory `dir`, or in the database every node shares (then
    /// `dir` holds only this node's temporary files).
    fn blobs(&self, number: u32, dir: &std::path::Path, max_blob_bytes: u64) -> std::io::Result<dps_store::BlobStore> {
        match &self.hubs {
            HubStorage::Sqlite(_) => dps_store::BlobStore::open(dir, max_blob_bytes),
            HubStorage::Postgres { db, .. } => dps_store::BlobStore::in_database(dir, max_blob_bytes, db.hub(number)),
        }
    }

    /// Hub `number`'s store (`telemetry`: its telemetry file, when its data is in files), and
    /// whether the storage held the hub before this start.
    fn hub(
        &self,
        number: u32,
        telemetry: &std::path::Path,
    ) -> Result<(Arc<dyn dps_hub::store::HubStore>, bool), StartError> {
        Ok(match &self.hubs {
            HubStorage::Sqlite(db) => (Arc::new(db.hub(number, telemetry)?), db.held_before(number)),
            HubStorage::Postgres { db, held } => (Arc::new(db.hub(number)), held.contains(&number)),
        })
    }
}

/// On a database several nodes share: divides the service-wide quotas among the nodes alive,
/// as their number changes, so that the cluster accepts about the configured rates.
async fn share_quotas(mut nodes: watch::Receiver<u32>, engine: Arc<Engine>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let alive = *nodes.borrow_and_update();
        engine.quotas().share_among(alive);
        tracing::info!(
            nodes = alive,
            "nodes serving the database: each takes that share of the service-wide quotas"
        );
        tokio::select! {
            changed = nodes.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => return,
        }
    }
}

/// How the metrics read the writer counters of `store`.
fn stats_of<T: Send + Sync + 'static>(
    store: &Arc<T>,
    stats: fn(&T) -> dps_store::StoreStats,
) -> crate::metrics::StoreStatsFn {
    let store = store.clone();
    Arc::new(move || stats(&store))
}

/// On a database several nodes share, while this node runs the housekeeping (decision 0031):
/// every ten seconds, finishes the registrations a node left unfinished more than `age` ago
/// (it died between the hub write and the record, and may never start again), so that no
/// identity lacks its record for long.
async fn finish_interrupted_registrations(
    db: Arc<dps_store::PostgresHubDatabase>,
    engine: Arc<Engine>,
    age: std::time::Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(10));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.changed() => return,
        }
        if !db.runs_housekeeping() {
            continue;
        }
        if let Err(e) = engine.recover_stale_registrations(chrono::Utc::now(), age).await {
            tracing::warn!(error = %e, "registrations left unfinished by other nodes not finished; trying again");
        }
    }
}

/// The service's identity (created on first start) and the listeners' TLS. From the data
/// directory; or, with a PostgreSQL store, from the files every node of the database shares
/// (`dps_files`), created once by the first node, and adopted from this node's data directory
/// when the database holds none yet (a node of an earlier build kept them there). Those are
/// then mirrored into the data directory, for the client commands run beside the node.
async fn identity_and_tls(
    config: &ServerConfig,
    dir: &DataDir,
    postgres: Option<&dps_store::PostgresStore>,
) -> Result<(Identity, bool, ListenerTls), StartError> {
    let Some(store) = postgres else {
        let (identity, initialized) = dir.init_identity(&config.default_hub_host(), &config.hub_hostnames)?;
        let (config, dir, id) = (config.clone(), dir.clone(), identity.clone());
        let tls = tokio::task::spawn_blocking(move || {
            ListenerTls::load(&config, &id, |names| dir.init_server_certificates(names))
        })
        .await
        .expect("loading the TLS certificates does not panic")?;
        return Ok((identity, initialized, tls));
    };
    let (config, from) = (config.clone(), dir.clone());
    let (files, identity, initialized, tls) = store
        .update_files(move |stored| {
            let mut files = crate::datadir::FileSet::new(stored, "PostgreSQL dps_files");
            if files.is_empty() {
                let adopted = files.adopt(&from)?;
                if adopted > 0 {
                    tracing::info!(dir = %from.root().display(), files = adopted, "the database holds no identity yet: adopting this data directory's");
                }
            }
            let (identity, initialized) = files.init_identity(&config.default_hub_host(), &config.hub_hostnames)?;
            let tls = ListenerTls::load(&config, &identity, |names| files.init_server_certificates(names))?;
            Ok::<_, StartError>((files.changed(), (files, identity, initialized, tls)))
        })
        .await??;
    files.mirror_to(dir)?;
    Ok((identity, initialized, tls))
}

/// Opens an embedded hub on its rows of the shared registry, its telemetry file and its blob
/// directory, with the configured consumer groups (created once, then kept like any other).
/// Also says whether the registry held this hub before (a hub that is new gets linked).
async fn open_hub(
    config: &ServerConfig,
    dir: &DataDir,
    storage: &Storage,
    identity: &HubIdentity,
    aliases: Vec<String>,
) -> Result<(EmbeddedHub, bool), StartError> {
    let number = identity.number().expect("checked by Storage::open");
    // File uploads go to the blob endpoint on the HTTPS port, under the hub's name.
    let blobs_path = dir.blobs_path_of(identity);
    let blobs = storage
        .blobs(number, &blobs_path, config.limits.max_upload_bytes)
        .map_err(|source| StartError::Blobs {
            path: blobs_path,
            source,
        })?;
    let (hub_store, held_before) = storage.hub(number, &dir.telemetry_path_of(identity))?;
    let hub = dps_hub::Hub::open_with_store(
        dps_hub::HubConfig {
            host_name: identity.host_name.clone(),
            aliases,
            telemetry_retention: config.telemetry_retention,
            telemetry_retention_bytes: config.limits.telemetry_retention_bytes,
            telemetry_retention_age: config.limits.telemetry_retention_age(),
            device_cache: config.hub_device_cache,
            c2d_ttl: config.limits.c2d_ttl(),
            partitions: config.event_hub_partitions,
            // Set once the HTTPS port is bound (port 0 picks one).
            file_upload: None,
        },
        hub_store,
        Arc::new(SystemClock),
    )
    .await?;
    if let Some(peers) = storage.peers(number) {
        hub.set_peers(peers);
    }
    for group in &config.event_hub_consumer_groups {
        hub.create_consumer_group(group)
            .await
            .map_err(StartError::ConsumerGroup)?;
    }
    Ok((EmbeddedHub::new(hub, identity.clone(), Some(blobs)), held_before))
}

/// Keeps each embedded hub linked under its current host name. A hub is linked with its owner
/// policy when it is new (`fresh`: the registry did not hold it) or when the store links no hub
/// at all (a new server, or one from before hubs could be linked): from then on it is a linked
/// hub like any other, listed, weighted and unlinked like the rest. When a hub was renamed
/// (`--hub-hostname` changed), the link signed with its owner key moves to the new name,
/// keeping its settings: otherwise every registration would be assigned to a name the hub no
/// longer goes by. A hub the operator unlinked stays unlinked.
async fn link_embedded_hubs(
    store: &dyn dps_core::Store,
    identity: &Identity,
    fresh: &[bool],
) -> Result<(), StartError> {
    use dps_proto::connection_string::ConnectionString;
    let linked = store.list_linked_hubs().await.map_err(StartError::LinkedHubs)?;
    for (hub, fresh) in identity.hubs().zip(fresh) {
        let Some(owner) = hub.owner_policy() else {
            continue;
        };
        let host = &hub.host_name;
        if linked.iter().any(|h| h.name.eq_ignore_ascii_case(host)) {
            continue;
        }
        let signed_by_owner = |h: &&dps_proto::model::service::LinkedHubDescription| {
            ConnectionString::parse(&h.connection_string)
                .ok()
                .and_then(|c| c.key)
                .is_some_and(|k| k == owner.primary_key)
        };
        let renamed = linked.iter().find(signed_by_owner);
        if !fresh && !linked.is_empty() && renamed.is_none() {
            // The operator unlinked this hub: it stays unlinked.
            continue;
        }
        let description = dps_proto::model::service::LinkedHubDescription {
            name: host.to_ascii_lowercase(),
            connection_string: ConnectionString::service(host, &owner.key_name, &owner.primary_key).to_string(),
            ..renamed.cloned().unwrap_or_default()
        };
        if let Some(old) = renamed {
            store
                .delete_linked_hub(&old.name)
                .await
                .map_err(StartError::LinkedHubs)?;
            tracing::info!(old = %old.name, new = %host, "embedded hub relinked under its new host name");
        } else {
            tracing::info!(hub = %host, "embedded hub linked");
        }
        store
            .put_linked_hub(&description)
            .await
            .map_err(StartError::LinkedHubs)?;
    }
    Ok(())
}

/// The TPM manufacturers' roots of `--tpm-manufacturer-ca` (DER); none without it.
fn tpm_manufacturer_roots(config: &ServerConfig) -> Result<Vec<Vec<u8>>, StartError> {
    let Some(path) = &config.tpm_manufacturer_ca else {
        return Ok(Vec::new());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| StartError::Config(format!("cannot read --tpm-manufacturer-ca {}: {e}", path.display())))?;
    let roots = dps_pki::pem::parse_certificates(&text)
        .map_err(|e| StartError::Config(format!("--tpm-manufacturer-ca {}: {e}", path.display())))?;
    Ok(roots.into_iter().map(|c| c.to_vec()).collect())
}

/// The HTTPS client of custom allocation webhooks.
fn webhook_client(config: &ServerConfig) -> Result<crate::webhook::WebhookClient, StartError> {
    let ca = match &config.allocation_webhook_ca {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| StartError::Webhook(format!("cannot read the CA file {}: {e}", path.display())))?,
        ),
        None => None,
    };
    crate::webhook::WebhookClient::new(ca.as_deref(), config.limits.webhook_timeout()).map_err(StartError::Webhook)
}

/// Links (or updates) the hubs of the configuration's `[[linked-hub]]` tables, as `dps
/// linked-hub create` would; a hub the engine refuses stops the start, naming it.
async fn link_configured_hubs(engine: &Engine, hubs: &[crate::config::LinkedHubConfig]) -> Result<(), StartError> {
    for h in hubs {
        let refused = |why: String| StartError::LinkedHub(why);
        let host = dps_proto::connection_string::ConnectionString::parse(&h.connection_string)
            .map_err(|e| refused(format!("linked-hub connection-string: {e}")))?
            .host_name;
        let ca_certificates = match &h.ca {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| refused(format!("linked hub {host}: cannot read {}: {e}", path.display())))?,
            ),
            None => None,
        };
        let hub = dps_proto::model::service::LinkedHubDescription {
            connection_string: h.connection_string.clone(),
            allocation_weight: h.allocation_weight,
            apply_allocation_policy: h.apply_allocation_policy,
            location: h.location.clone(),
            ca_certificates,
            ..Default::default()
        };
        engine
            .put_linked_hub(&host, hub)
            .await
            .map_err(|e| refused(e.to_string()))?;
    }
    Ok(())
}

/// The external storage account file uploads go to, if one is configured; its container is
/// checked in the background (a storage outage must not keep the server from starting), and
/// the outcome logged.
fn storage_account(config: &ServerConfig) -> Result<Option<Arc<crate::storage_account::StorageAccount>>, StartError> {
    let Some(conn) = config.file_upload_storage.clone() else {
        return Ok(None);
    };
    let ca = match &config.file_upload_storage_ca {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| StartError::StorageAccount(format!("cannot read the CA file {}: {e}", path.display())))?,
        ),
        None => None,
    };
    let account =
        crate::storage_account::StorageAccount::new(conn, config.file_upload_container.clone(), ca.as_deref())
            .map_err(|e| StartError::StorageAccount(e.to_string()))?;
    let account = Arc::new(account);
    let check = account.clone();
    tokio::spawn(async move {
        match check.list(None, 1).await {
            Ok(_) => tracing::info!(
                endpoint = check.endpoint(),
                container = check.container(),
                "file uploads go to the storage account"
            ),
            Err(e) => tracing::warn!(
                endpoint = check.endpoint(),
                container = check.container(),
                "file uploads go to the storage account, which cannot list the container now: {e}"
            ),
        }
    });
    Ok(Some(account))
}

/// Runs the hub's one-second sweep, and once a minute removes staged blocks of file uploads
/// that were never committed (older than twice an upload's time to live).
async fn hub_sweeper(hub: dps_hub::Hub, blobs: Option<dps_store::BlobStore>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                hub.sweep();
                ticks += 1;
                if let Some(blobs) = blobs.clone().filter(|_| ticks.is_multiple_of(60)) {
                    match blobs.sweep(2 * dps_hub::FILE_UPLOAD_TTL).await {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(removed = n, "stale file upload blocks removed"),
                        Err(e) => tracing::warn!(error = %e, "stale file upload blocks not removed; trying again in a minute"),
                    }
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

async fn accept_loop<F, Fut>(
    what: &'static str,
    metrics: Arc<crate::metrics::Metrics>,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    limits: Arc<ConnectionLimits>,
    mut shutdown: watch::Receiver<bool>,
    serve: F,
) where
    F: Fn(tokio_rustls::server::TlsStream<TcpStream>, Vec<Vec<u8>>, ConnectionPermit) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let serve = Arc::new(serve);
    let accept_errors = LogLimiter::new(LOG_PERIOD);
    // The listener's name in the handshake metrics.
    let label = match what {
        "MQTT" => "mqtt",
        "AMQP" => "amqp",
        _ => "https",
    };
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning, and say so once per
                    // period, not 20 times a second.
                    if let Some(n) = accept_errors.record() {
                        tracing::warn!(listener = what, error = %e, failures_since_last_report = n,
                            "{what}: accepting a connection failed ({e}); {n} failure(s) since the last report. \
                             'Too many open files' means the process holds as many connections as its open-file \
                             limit allows: raise the limit or lower --max-connections");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let Ok(permit) = limits.admit(peer.ip()) else {
            // Refused (and logged, rate-limited, by `admit`): closed before any TLS.
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let serve = serve.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            // The TLS state (rustls' connection and buffers, some KiB) is only built once the
            // client has sent something: a connection silent until the deadline costs little
            // more than its task.
            let handshake = async {
                tcp.readable().await?;
                Box::pin(acceptor.accept(tcp)).await
            };

            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                Ok(Ok(s)) => {
                    metrics.handshake(label, crate::metrics::Handshake::Ok);
                    s
                }
                Ok(Err(e)) => {
                    metrics.handshake(label, crate::metrics::Handshake::Failed);
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    metrics.handshake(label, crate::metrics::Handshake::TimedOut);
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let certs = dps_pki::tls::peer_certificates(tls.get_ref().1)
                .into_iter()
                .map(|c| c.to_vec())
                .collect();
            // Boxed: a connection's serving state (hyper's or the MQTT session's, several KiB)
            // is allocated when its handshake is done, not reserved in every task from accept on.
            Box::pin(serve(tls, certs, permit)).await;
        });
    }
}

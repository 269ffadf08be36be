//! The data directory: identity (ID scope, policies, hub), local CAs, server certificates.
//!
//! First start creates everything; later starts reuse it, so devices and scripts keep working
//! across restarts. The only thing re-issued is a server certificate, when it no longer covers
//! the configured host names, is about to expire, or no longer chains to its CA.
//!
//! There are two local PKIs, each a root and the server certificate it issues: P-256
//! (`ca.pem`, `server.pem`), which every full TLS stack verifies and which is cheaper to serve,
//! and RSA-2048 (`ca-rsa.pem`, `server-rsa.pem`) for device stacks built without ECDSA, which
//! can verify neither an ECDSA leaf nor an ECDSA root's signature on an RSA leaf (decision
//! 0018). Data directories from before the RSA pair gain it on their next start; the P-256 files
//! are left as they are.
//!
//! Its own crate because both sides read it: `dps serve` creates it, and the client commands
//! (`dps enrollment …`, `dps hub …`, `dps bench`, `dps device provision`) find a local server's
//! connection string, CA and port in it without linking the server.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use dps_core::auth::SharedAccessPolicy;
use dps_pki::ca::{KeyAlgorithm, LocalCa};
use dps_pki::PkiError;
use rand::RngCore;
use serde::{Deserialize, Serialize};

/// Why the data directory could not be read or set up. Each message names the file; the cause
/// is the error's source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataDirError {
    /// The identity file is missing or unreadable: the directory was never initialized.
    #[error("{} is not an initialized dps data directory (run `dps serve --data-dir {}` once)", .root.display(), .root.display())]
    NotInitialized {
        /// The data directory.
        root: PathBuf,
        /// Why the identity file could not be read.
        #[source]
        source: io::Error,
    },
    /// A file or directory could not be read, written or created.
    #[error("cannot {action} {}", .path.display())]
    Io {
        /// What was attempted (`read`, `write`, `create data directory`, …).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A JSON file is not what dps writes.
    #[error("{} is corrupt", .path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where the JSON is wrong.
        #[source]
        source: serde_json::Error,
    },
    /// A local CA or a server certificate could not be loaded or issued.
    #[error("{what}")]
    Pki {
        /// What was attempted, naming the file when there is one.
        what: String,
        /// The certificate error.
        #[source]
        source: PkiError,
    },
    /// Only one of the CA certificate and key exists.
    #[error("{} and {} must both exist or both be absent", .cert.display(), .key.display())]
    HalfCa {
        /// The CA certificate file.
        cert: PathBuf,
        /// The CA key file.
        key: PathBuf,
    },
}

/// Results of this crate.
pub type Result<T, E = DataDirError> = std::result::Result<T, E>;

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> DataDirError {
    let path = path.to_path_buf();
    move |source| DataDirError::Io { action, path, source }
}

#[cfg(test)]
fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(io_error("read", path))
}

fn pki_error(what: impl Into<String>) -> impl FnOnce(PkiError) -> DataDirError {
    let what = what.into();
    move |source| DataDirError::Pki { what, source }
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).expect("plain structs serialize")
}

/// Rights of the default DPS owner policy: every right.
pub const DPS_OWNER_RIGHTS: &[&str] = dps_core::auth::manage::DPS_RIGHTS;
/// Rights of the default hub owner policy: every right.
pub const HUB_OWNER_RIGHTS: &[&str] = dps_core::auth::manage::HUB_RIGHTS;

/// The shared access policies a new IoT hub has in Azure, owner first (what `policies[0]` is
/// taken to be), each with its rights.
pub const HUB_DEFAULT_POLICIES: &[(&str, &[&str])] = &[
    ("iothubowner", HUB_OWNER_RIGHTS),
    ("service", &["ServiceConnect"]),
    ("device", &["DeviceConnect"]),
    ("registryRead", &["RegistryRead"]),
    ("registryReadWrite", &["RegistryRead", "RegistryWrite"]),
];

/// What `dps.json` holds. Secrets live here, so the file is created mode 0600.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    /// The service's ID scope (`0ne` + 8 upper-case hex digits).
    pub id_scope: String,
    /// Service API policies (`provisioningserviceowner` by default).
    pub policies: Vec<SharedAccessPolicy>,
    /// The embedded hub (the first, when the server has several).
    pub hub: HubIdentity,
    /// The server's further embedded hubs (`--hub-hostname` given more than once), each with
    /// its own policies, keys and database. After a start, the hubs that start served come
    /// first (`hub`, then these, in the order named), then any the data directory keeps but
    /// that start did not name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_hubs: Vec<HubIdentity>,
    /// The key the web portal signs its session cookies and one-time sign-in links with
    /// (base64, 32 bytes); made on the first start that lacks one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub portal_key: String,
}

impl Identity {
    /// The policy the client commands beside the server sign with: the first holding every
    /// right (policies can be changed, and the first may no longer be an owner), else the
    /// first.
    pub fn owner_policy(&self) -> Option<&SharedAccessPolicy> {
        owner_of(&self.policies, dps_core::auth::manage::PolicyScope::Dps)
    }

    /// The embedded hub answering to `host_name`, to change.
    pub fn hub_named_mut(&mut self, host_name: &str) -> Option<&mut HubIdentity> {
        std::iter::once(&mut self.hub)
            .chain(&mut self.other_hubs)
            .find(|h| h.answers_to(host_name))
    }

    /// Every embedded hub, the first one first.
    pub fn hubs(&self) -> impl Iterator<Item = &HubIdentity> {
        std::iter::once(&self.hub).chain(&self.other_hubs)
    }

    /// The embedded hub answering to `host_name` (its name or a former one), if any.
    pub fn hub_named(&self, host_name: &str) -> Option<&HubIdentity> {
        self.hubs().find(|h| h.answers_to(host_name))
    }
}

/// An embedded hub's identity.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HubIdentity {
    /// Host name devices are assigned to. Fixed at first start because registration records
    /// refer to it; change it with `--hub-hostname`.
    pub host_name: String,
    /// Registry API policies (`iothubowner` by default).
    pub policies: Vec<SharedAccessPolicy>,
    /// Names the hub had before it was renamed: devices assigned under them, and tokens made
    /// for them, are still this hub's (a rename must not make every device look migrated).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub former_host_names: Vec<String>,
    /// The stem of the hub's files in the data directory (`{stem}-telemetry.db`,
    /// `{stem}-blobs/`), `hub-N`, which also numbers its rows in the shared `hub.db`; absent
    /// for the first hub, whose files are `telemetry.db` and `blobs/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<String>,
}

/// The first of `policies` holding every right of `scope`, else the first.
fn owner_of(
    policies: &[SharedAccessPolicy],
    scope: dps_core::auth::manage::PolicyScope,
) -> Option<&SharedAccessPolicy> {
    policies.iter().find(|p| scope.is_owner(p)).or(policies.first())
}

impl HubIdentity {
    /// The hub's owner policy (see [`Identity::owner_policy`]).
    pub fn owner_policy(&self) -> Option<&SharedAccessPolicy> {
        owner_of(&self.policies, dps_core::auth::manage::PolicyScope::Hub)
    }

    /// A new hub with Azure's default policies, each with fresh keys.
    fn new(host_name: &str, files: Option<String>) -> Self {
        Self {
            host_name: host_name.to_string(),
            policies: HUB_DEFAULT_POLICIES
                .iter()
                .map(|(name, rights)| policy(name, rights))
                .collect(),
            former_host_names: Vec::new(),
            files,
        }
    }

    /// The hub's number, which keys its rows in the shared `hub.db`: 1 for the first hub, `N` for
    /// the one whose files are `hub-N` (`None` for a stem this build did not make).
    pub fn number(&self) -> Option<u32> {
        match &self.files {
            None => Some(1),
            Some(stem) => stem.strip_prefix("hub-")?.parse().ok().filter(|n| *n > 1),
        }
    }

    /// Whether `name` is this hub's host name or a former one (case-insensitive).
    pub fn answers_to(&self, name: &str) -> bool {
        std::iter::once(&self.host_name)
            .chain(&self.former_host_names)
            .any(|n| n.eq_ignore_ascii_case(name))
    }
}

/// How the last start was reachable (`server.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Runtime {
    /// Configured host names, provisioning host first.
    pub hostnames: Vec<String>,
    /// MQTT port.
    pub mqtt_port: u16,
    /// HTTPS port.
    pub https_port: u16,
    /// AMQP port (absent in files written before AMQP existed: 0 then, meaning unknown).
    #[serde(default)]
    pub amqp_port: u16,
    /// The address this node listens on, when it is a specific one that is also one of its
    /// host names: where the client commands beside it reach this node rather than whichever
    /// node its service host name leads to (several nodes serve one service, decision 0031).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<std::net::IpAddr>,
}

/// Paths inside the data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// A data directory at `root` (not created yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `dps.json`.
    pub fn identity_path(&self) -> PathBuf {
        self.root.join(IDENTITY_FILE)
    }
    /// The local (P-256) CA certificate devices and SDKs trust.
    pub fn ca_cert_path(&self) -> PathBuf {
        self.root.join(ECDSA.ca_cert)
    }
    /// The local CA private key.
    pub fn ca_key_path(&self) -> PathBuf {
        self.root.join(ECDSA.ca_key)
    }
    /// The local RSA CA certificate, for device TLS stacks that cannot verify ECDSA.
    pub fn rsa_ca_cert_path(&self) -> PathBuf {
        self.root.join(RSA.ca_cert)
    }
    /// The server certificate (leaf + CA).
    pub fn server_cert_path(&self) -> PathBuf {
        self.root.join(ECDSA.server_cert)
    }
    /// The server private key.
    pub fn server_key_path(&self) -> PathBuf {
        self.root.join(ECDSA.server_key)
    }
    /// The RSA server certificate (leaf + RSA CA).
    pub fn rsa_server_cert_path(&self) -> PathBuf {
        self.root.join(RSA.server_cert)
    }
    /// The provisioning database.
    pub fn store_path(&self) -> PathBuf {
        self.root.join("dps.db")
    }
    /// The first embedded hub's database.
    pub fn hub_db_path(&self) -> PathBuf {
        self.root.join("hub.db")
    }

    /// Where the first embedded hub's uploaded files are kept (`{container}/{deviceId}/{name}`).
    pub fn blobs_path(&self) -> PathBuf {
        self.root.join("blobs")
    }

    /// Where a build before the shared `hub.db` kept an embedded hub's registry in a file of its
    /// own (`{stem}.db`); `None` for the first hub, whose file was always `hub.db`.
    pub fn separate_hub_db_path_of(&self, hub: &HubIdentity) -> Option<PathBuf> {
        hub.files.as_ref().map(|stem| self.root.join(format!("{stem}.db")))
    }

    /// An embedded hub's retained telemetry (`telemetry.db` for the first hub,
    /// `{stem}-telemetry.db` for the others). One file per hub: hubs sharing one would read each
    /// other's events and overwrite them (each hub numbers its own events from 1).
    pub fn telemetry_path_of(&self, hub: &HubIdentity) -> PathBuf {
        match &hub.files {
            Some(stem) => self.root.join(format!("{stem}-telemetry.db")),
            None => self.root.join("telemetry.db"),
        }
    }

    /// Where an embedded hub's uploaded files are kept.
    pub fn blobs_path_of(&self, hub: &HubIdentity) -> PathBuf {
        match &hub.files {
            Some(stem) => self.root.join(format!("{stem}-blobs")),
            None => self.blobs_path(),
        }
    }

    /// Where the last start recorded its listeners (`dps info` reads it).
    pub fn runtime_path(&self) -> PathBuf {
        self.root.join("server.json")
    }

    /// Records how the server is reachable, so `dps info` can print connection strings with the
    /// right host name without being told again.
    pub fn record_runtime(&self, r: &Runtime) -> Result<()> {
        let path = self.runtime_path();
        fs::write(&path, to_json(r)).map_err(io_error("write", &path))
    }

    /// The runtime facts of the last start, if any.
    pub fn runtime(&self) -> Option<Runtime> {
        serde_json::from_str(&fs::read_to_string(self.runtime_path()).ok()?).ok()
    }

    /// The provisioning host name of the last start.
    pub fn last_provisioning_host(&self) -> Option<String> {
        self.runtime().and_then(|r| r.hostnames.into_iter().next())
    }

    /// Loads the identity; fails if the directory was never initialized.
    pub fn load_identity(&self) -> Result<Identity> {
        load_identity(&DirFiles(&self.root))
    }

    /// Reads the identity, lets `change` change it, and writes it back when it changed (whole,
    /// through a temporary file: a crash leaves the old or the new one). `change` failing
    /// writes nothing. The caller keeps other writers out (one server per data directory).
    pub fn update_identity<T, E: From<DataDirError>>(
        &self,
        change: impl FnOnce(&mut Identity) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        update_identity(&mut DirFiles(&self.root), change)
    }

    /// Creates the data directory readable by its owner only: the databases beside the identity
    /// hold enrollment keys and hub device keys, which SQLite writes with the process umask. An
    /// existing directory that others can read is left as the operator made it, with a warning.
    fn create_private_root(&self) -> Result<()> {
        let existed = self.root.is_dir();
        fs::create_dir_all(&self.root).map_err(io_error("create data directory", &self.root))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&self.root)
                .map_err(io_error("read data directory", &self.root))?
                .permissions()
                .mode()
                & 0o777;
            if !existed {
                fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700))
                    .map_err(io_error("restrict data directory", &self.root))?;
            } else if mode & 0o077 != 0 {
                tracing::warn!(
                    dir = %self.root.display(),
                    mode = format!("{mode:o}"),
                    "the data directory is accessible to other users; it holds enrollment and device keys (chmod 700 it)"
                );
            }
        }
        #[cfg(not(unix))]
        let _ = existed;
        Ok(())
    }

    /// Loads the identity, creating it on first start, and returns it with the embedded hubs
    /// this start serves first (see [`Identity::other_hubs`]) and whether it was created.
    ///
    /// `hub_hosts` are the `--hub-hostname` values: empty serves every hub the directory has
    /// (one named `default_hub_host` on first start). Otherwise each value is the hub answering
    /// to it (its name or a former one), or a new hub with keys of its own; hubs not named are
    /// kept, unserved. One name given to a directory with one hub that does not answer to it
    /// renames that hub, which keeps answering to its former name.
    pub fn init_identity(&self, default_hub_host: &str, hub_hosts: &[String]) -> Result<(Identity, bool)> {
        self.create_private_root()?;
        init_identity(&mut DirFiles(&self.root), default_hub_host, hub_hosts)
    }

    /// Loads the local (P-256) CA, creating it on first start.
    pub fn init_ca(&self) -> Result<LocalCa> {
        init_ca(&mut DirFiles(&self.root), &ECDSA)
    }

    /// Returns PEM (chain, key) of a P-256 server certificate covering `hostnames`, issuing a
    /// new one from `ca` when the stored one does not cover them or was not issued by `ca`.
    pub fn init_server_cert(&self, ca: &LocalCa, hostnames: &[String]) -> Result<(String, String)> {
        init_server_cert(&mut DirFiles(&self.root), &ECDSA, ca, hostnames)
    }

    /// The server certificates the listeners present when none was brought, P-256 first (the
    /// preferred one), then RSA: each loaded, or created with its CA, as
    /// [`init_server_cert`](Self::init_server_cert) does.
    pub fn init_server_certificates(&self, hostnames: &[String]) -> Result<Vec<ServerCertificate>> {
        init_server_certificates(&mut DirFiles(&self.root), hostnames)
    }
}

/// Where the identity and the local PKIs are kept: the data directory's files ([`DirFiles`]),
/// or a [`FileSet`] (the copy in a shared database, issue 15). What the files mean, and when
/// they are created or re-issued, is written once over this.
trait Files {
    /// The file's text; `None` when it does not exist.
    fn read(&self, name: &str) -> Result<Option<String>>;
    /// Creates or replaces the file (readable by its owner only when [`is_secret`]).
    fn write(&mut self, name: &str, text: &str) -> Result<()>;
    /// How messages name the file.
    fn location(&self, name: &str) -> PathBuf;
}

/// The files of a data directory.
struct DirFiles<'a>(&'a Path);

impl Files for DirFiles<'_> {
    fn read(&self, name: &str) -> Result<Option<String>> {
        let path = self.0.join(name);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("read", &path)(e)),
        }
    }

    fn write(&mut self, name: &str, text: &str) -> Result<()> {
        let path = self.0.join(name);
        if is_secret(name) {
            write_secret(&path, text.as_bytes())
        } else {
            fs::write(&path, text).map_err(io_error("write", &path))
        }
    }

    fn location(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

/// The identity and local PKI files held in memory: what a shared database keeps for every node
/// (issue 15), read before and written back after the same `init_*` steps a data directory
/// goes through. Remembers which files it created or changed.
#[derive(Clone, Default)]
pub struct FileSet {
    files: BTreeMap<String, String>,
    changed: BTreeSet<String>,
    /// How messages name the set (e.g. `PostgreSQL dps_files`).
    origin: PathBuf,
}

impl std::fmt::Debug for FileSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSet")
            .field("origin", &self.origin)
            .field("files", &self.files.keys().collect::<Vec<_>>())
            .field("changed", &self.changed)
            .finish()
    }
}

impl FileSet {
    /// The set holding `files` (name → text, as [`FileSet::changed`] gave them), named `origin`
    /// in messages. Names this build does not use are kept untouched.
    pub fn new(files: BTreeMap<String, String>, origin: impl Into<PathBuf>) -> Self {
        Self {
            files,
            changed: BTreeSet::new(),
            origin: origin.into(),
        }
    }

    /// Whether the set holds none of the identity's files yet.
    pub fn is_empty(&self) -> bool {
        !FILE_NAMES.iter().any(|name| self.files.contains_key(*name))
    }

    /// Copies in the identity and PKI files `dir` has (none when it was never initialized), so
    /// that a node's data directory seeds a database that holds none: its ID scope, keys and CA
    /// carry over. Returns how many files were copied.
    pub fn adopt(&mut self, dir: &DataDir) -> Result<usize> {
        let from = DirFiles(&dir.root);
        let mut copied = 0;
        for name in FILE_NAMES {
            if let Some(text) = from.read(name)? {
                self.write(name, &text)?;
                copied += 1;
            }
        }
        Ok(copied)
    }

    /// [`DataDir::init_identity`] over this set.
    pub fn init_identity(&mut self, default_hub_host: &str, hub_hosts: &[String]) -> Result<(Identity, bool)> {
        init_identity(self, default_hub_host, hub_hosts)
    }

    /// [`DataDir::load_identity`] over this set.
    pub fn load_identity(&self) -> Result<Identity> {
        load_identity(self)
    }

    /// [`DataDir::update_identity`] over this set (a changed identity is one of
    /// [`FileSet::changed`]).
    pub fn update_identity<T, E: From<DataDirError>>(
        &mut self,
        change: impl FnOnce(&mut Identity) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        update_identity(self, change)
    }

    /// [`DataDir::init_server_certificates`] over this set.
    pub fn init_server_certificates(&mut self, hostnames: &[String]) -> Result<Vec<ServerCertificate>> {
        init_server_certificates(self, hostnames)
    }

    /// The files created or changed since [`FileSet::new`], name and text.
    pub fn changed(&self) -> Vec<(String, String)> {
        self.changed
            .iter()
            .map(|name| (name.clone(), self.files[name].clone()))
            .collect()
    }

    /// Writes the set's identity and PKI files into `dir` (created private if absent), leaving
    /// alone those already identical, so that the client commands run beside a node (`dps
    /// info`, `dps enrollment …`) and devices given `ca.pem` find what the node serves.
    pub fn mirror_to(&self, dir: &DataDir) -> Result<()> {
        dir.create_private_root()?;
        let mut to = DirFiles(&dir.root);
        for name in FILE_NAMES {
            if let Some(text) = self.files.get(*name) {
                if to.read(name)?.as_deref() != Some(text.as_str()) {
                    to.write(name, text)?;
                }
            }
        }
        Ok(())
    }
}

impl Files for FileSet {
    fn read(&self, name: &str) -> Result<Option<String>> {
        Ok(self.files.get(name).cloned())
    }

    fn write(&mut self, name: &str, text: &str) -> Result<()> {
        if self.files.get(name).map(String::as_str) != Some(text) {
            self.files.insert(name.to_string(), text.to_string());
            self.changed.insert(name.to_string());
        }
        Ok(())
    }

    fn location(&self, name: &str) -> PathBuf {
        self.origin.join(name)
    }
}

/// The identity file's name.
const IDENTITY_FILE: &str = "dps.json";

/// Every file the identity and the local PKIs are made of.
const FILE_NAMES: &[&str] = &[
    IDENTITY_FILE,
    ECDSA.ca_cert,
    ECDSA.ca_key,
    ECDSA.server_cert,
    ECDSA.server_key,
    RSA.ca_cert,
    RSA.ca_key,
    RSA.server_cert,
    RSA.server_key,
];

/// Whether a file holds secrets (policy keys, private keys): such files are readable by their
/// owner only.
fn is_secret(name: &str) -> bool {
    name == IDENTITY_FILE || name.ends_with("-key.pem")
}

fn load_identity(files: &dyn Files) -> Result<Identity> {
    let p = files.location(IDENTITY_FILE);
    let Some(text) = files.read(IDENTITY_FILE)? else {
        return Err(DataDirError::NotInitialized {
            root: p.parent().map(Path::to_path_buf).unwrap_or_default(),
            source: io::Error::new(io::ErrorKind::NotFound, format!("{} does not exist", p.display())),
        });
    };
    serde_json::from_str(&text).map_err(|source| DataDirError::Corrupt { path: p, source })
}

/// See [`DataDir::update_identity`].
fn update_identity<T, E: From<DataDirError>>(
    files: &mut dyn Files,
    change: impl FnOnce(&mut Identity) -> std::result::Result<T, E>,
) -> std::result::Result<T, E> {
    let before = load_identity(files)?;
    let mut identity = before.clone();
    let value = change(&mut identity)?;
    if to_json(&identity) != to_json(&before) {
        files.write(IDENTITY_FILE, &to_json(&identity))?;
    }
    Ok(value)
}

/// See [`DataDir::init_identity`].
fn init_identity(files: &mut dyn Files, default_hub_host: &str, hub_hosts: &[String]) -> Result<(Identity, bool)> {
    if files.read(IDENTITY_FILE)?.is_none() {
        let mut names = hub_hosts.iter().map(String::as_str);
        let first = names.next().unwrap_or(default_hub_host);
        let mut id = Identity {
            id_scope: new_id_scope(),
            policies: vec![policy("provisioningserviceowner", DPS_OWNER_RIGHTS)],
            hub: HubIdentity::new(first, None),
            other_hubs: Vec::new(),
            portal_key: random_key(),
        };
        for name in names {
            add_hub(&mut id, name);
        }
        files.write(IDENTITY_FILE, &to_json(&id))?;
        return Ok((id, true));
    }
    let mut id = load_identity(files)?;
    if id.portal_key.is_empty() {
        // A directory from before the portal.
        id.portal_key = random_key();
        files.write(IDENTITY_FILE, &to_json(&id))?;
    }
    if hub_hosts.is_empty() {
        return Ok((id, false));
    }
    if let ([name], []) = (hub_hosts, id.other_hubs.as_slice()) {
        if !id.hub.answers_to(name) {
            tracing::warn!(old = %id.hub.host_name, new = %name, "embedded hub renamed; it keeps answering to its former name");
            let old = std::mem::replace(&mut id.hub.host_name, name.clone());
            id.hub.former_host_names.retain(|n| !n.eq_ignore_ascii_case(name));
            id.hub.former_host_names.push(old);
        }
    }
    for name in hub_hosts {
        if id.hub_named(name).is_none() {
            tracing::info!(hub = %name, "new embedded hub");
            add_hub(&mut id, name);
        }
    }
    // The hubs served, in the order named, then the ones kept.
    let mut all: Vec<HubIdentity> = std::iter::once(id.hub).chain(id.other_hubs).collect();
    let mut served = Vec::new();
    for name in hub_hosts {
        if let Some(i) = all.iter().position(|h| h.answers_to(name)) {
            served.push(all.remove(i));
        }
    }
    for kept in &all {
        tracing::warn!(hub = %kept.host_name, "embedded hub not named by --hub-hostname: its data is kept but it is not served");
    }
    let mut hubs = served.iter().cloned();
    let first = hubs.next().expect("every name given is served");
    let persisted = Identity {
        id_scope: id.id_scope.clone(),
        policies: id.policies.clone(),
        hub: first.clone(),
        other_hubs: hubs.chain(all).collect(),
        portal_key: id.portal_key.clone(),
    };
    files.write(IDENTITY_FILE, &to_json(&persisted))?;
    let served = Identity {
        other_hubs: served.into_iter().skip(1).collect(),
        ..persisted
    };
    Ok((served, false))
}

/// See [`DataDir::init_server_certificates`].
fn init_server_certificates(files: &mut dyn Files, hostnames: &[String]) -> Result<Vec<ServerCertificate>> {
    [&ECDSA, &RSA]
        .into_iter()
        .map(|pki| {
            let ca = init_ca(files, pki)?;
            let (chain_pem, key_pem) = init_server_cert(files, pki, &ca, hostnames)?;
            Ok(ServerCertificate {
                key_algorithm: pki.alg,
                chain_pem,
                key_pem,
            })
        })
        .collect()
}

fn init_ca(files: &mut dyn Files, pki: &Pki) -> Result<LocalCa> {
    let cert_path = files.location(pki.ca_cert);
    match (files.read(pki.ca_cert)?, files.read(pki.ca_key)?) {
        (Some(cert), Some(key)) => {
            return LocalCa::from_pem(&cert, &key).map_err(pki_error(format!(
                "cannot load the local CA from {}",
                cert_path.display()
            )));
        }
        (None, None) => {}
        _ => {
            return Err(DataDirError::HalfCa {
                cert: cert_path,
                key: files.location(pki.ca_key),
            })
        }
    }
    let ca = LocalCa::generate_with(pki.ca_name, pki.alg)
        .map_err(pki_error(format!("cannot create the local CA {}", cert_path.display())))?;
    files.write(pki.ca_key, &ca.key_pem())?;
    files.write(pki.ca_cert, &ca.cert_pem())?;
    Ok(ca)
}

fn init_server_cert(files: &mut dyn Files, pki: &Pki, ca: &LocalCa, hostnames: &[String]) -> Result<(String, String)> {
    if let (Some(chain), Some(key)) = (files.read(pki.server_cert)?, files.read(pki.server_key)?) {
        if dps_pki::ca::certificate_covers(&chain, hostnames).unwrap_or(false) && ends_with(&chain, ca) {
            return Ok((chain, key));
        }
        tracing::info!(
            file = %files.location(pki.server_cert).display(),
            "server certificate does not cover {:?} or its CA changed; issuing a new one",
            hostnames
        );
    }
    let issued = ca
        .issue_server_certificate_with(hostnames, pki.alg)
        .map_err(pki_error(format!(
            "cannot issue the server certificate {}",
            files.location(pki.server_cert).display()
        )))?;
    let chain = format!("{}{}", issued.cert_pem, ca.cert_pem());
    files.write(pki.server_key, &issued.key_pem)?;
    files.write(pki.server_cert, &chain)?;
    Ok((chain, issued.key_pem))
}

/// Whether a stored server chain ends with `ca`'s certificate, as this module writes it: a
/// chain ending elsewhere was issued by a CA since replaced, which clients no longer trust.
fn ends_with(chain_pem: &str, ca: &LocalCa) -> bool {
    dps_pki::pem::parse_certificates(chain_pem)
        .ok()
        .and_then(|certs| certs.last().cloned())
        .is_some_and(|last| last == ca.cert_der())
}

/// One of the local PKIs: a root of one key algorithm, the server certificate it issues, and
/// their files.
struct Pki {
    alg: KeyAlgorithm,
    /// The root's common name; distinct per algorithm, so verifiers that look issuers up by
    /// name never confuse the two roots.
    ca_name: &'static str,
    ca_cert: &'static str,
    ca_key: &'static str,
    server_cert: &'static str,
    server_key: &'static str,
}

/// The P-256 PKI, under the names every data directory has had.
const ECDSA: Pki = Pki {
    alg: KeyAlgorithm::EcdsaP256,
    ca_name: "dps local CA",
    ca_cert: "ca.pem",
    ca_key: "ca-key.pem",
    server_cert: "server.pem",
    server_key: "server-key.pem",
};

/// The RSA-2048 PKI: 2048 bits as Azure's own chains (DigiCert Global Root G2 and the hub
/// leaves), which constrained stacks are sized for (decision 0018).
const RSA: Pki = Pki {
    alg: KeyAlgorithm::Rsa2048,
    ca_name: "dps local RSA CA",
    ca_cert: "ca-rsa.pem",
    ca_key: "ca-rsa-key.pem",
    server_cert: "server-rsa.pem",
    server_key: "server-rsa-key.pem",
};

/// A server certificate chain (leaf, then its CA) and the leaf's key, as the listeners present
/// it.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerCertificate {
    /// The leaf's key algorithm.
    pub key_algorithm: KeyAlgorithm,
    /// The chain, leaf first, PEM.
    pub chain_pem: String,
    /// The leaf's private key, PKCS#8 PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for ServerCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCertificate")
            .field("key_algorithm", &self.key_algorithm)
            .field("chain_pem", &self.chain_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

fn policy(name: &str, rights: &[&str]) -> SharedAccessPolicy {
    SharedAccessPolicy {
        key_name: name.into(),
        primary_key: random_key(),
        secondary_key: random_key(),
        rights: rights.iter().map(|r| r.to_string()).collect(),
    }
}

/// A 32-byte random key, base64 (what Azure generates for policies).
pub fn random_key() -> String {
    dps_core::auth::manage::new_key()
}

/// `0ne` + 8 upper-case hex digits, as Azure scopes look.
fn new_id_scope() -> String {
    let mut raw = [0u8; 4];
    rand::thread_rng().fill_bytes(&mut raw);
    format!("0ne{:08X}", u32::from_be_bytes(raw))
}

/// Adds a new embedded hub named `name`, with files of its own (`hub-2`, `hub-3`, …).
fn add_hub(id: &mut Identity, name: &str) {
    let stem = (2..)
        .map(|n| format!("hub-{n}"))
        .find(|stem| !id.hubs().any(|h| h.files.as_deref() == Some(stem)))
        .expect("an unused number");
    id.other_hubs.push(HubIdentity::new(name, Some(stem)));
}

/// Writes a file readable only by its owner (keys, policies).
fn write_secret(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(io_error("write", &tmp))?;
        f.write_all(bytes).map_err(io_error("write", &tmp))?;
        f.sync_all().map_err(io_error("write", &tmp))?;
    }
    fs::rename(&tmp, path).map_err(io_error("write", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A change is written whole and read back; a refused one writes nothing; the owner the
    /// client commands sign with is the first policy holding every right.
    #[test]
    fn identity_updates_are_written_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let dd = DataDir::new(dir.path().join("data"));
        dd.init_identity("hub.test", &[]).unwrap();
        #[derive(Debug)]
        struct Refused;
        impl From<DataDirError> for Refused {
            fn from(e: DataDirError) -> Self {
                panic!("the identity reads: {e}")
            }
        }
        let refused: std::result::Result<(), Refused> = dd.update_identity(|id| {
            id.policies.clear();
            Err(Refused)
        });
        assert!(refused.is_err());
        assert_eq!(dd.load_identity().unwrap().policies.len(), 1);
        dd.update_identity(|id| {
            id.policies.insert(0, policy("reader", &["EnrollmentRead"]));
            id.hub_named_mut("hub.test")
                .unwrap()
                .policies
                .retain(|p| p.key_name != "device");
            Ok::<_, DataDirError>(())
        })
        .unwrap();
        let id = dd.load_identity().unwrap();
        assert_eq!(id.policies[0].key_name, "reader");
        assert_eq!(id.owner_policy().unwrap().key_name, "provisioningserviceowner");
        assert_eq!(id.hub.owner_policy().unwrap().key_name, "iothubowner");
        assert!(!id.hub.policies.iter().any(|p| p.key_name == "device"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dd.identity_path()).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "dps.json stays readable by its owner only");
        }
    }

    #[test]
    fn first_start_creates_and_later_starts_reuse() {
        let dir = tempfile::tempdir().unwrap();
        let dd = DataDir::new(dir.path().join("data"));
        let (id, created) = dd.init_identity("127.0.0.1", &[]).unwrap();
        assert!(created);
        assert!(id.id_scope.starts_with("0ne") && id.id_scope.len() == 11);
        assert!(id.id_scope[3..]
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase()));
        assert_eq!(id.policies[0].key_name, "provisioningserviceowner");
        assert_eq!(id.hub.policies[0].key_name, "iothubowner");
        // Azure's default hub policies, each with its rights.
        let hub: Vec<(&str, Vec<&str>)> = id
            .hub
            .policies
            .iter()
            .map(|p| (p.key_name.as_str(), p.rights.iter().map(String::as_str).collect()))
            .collect();
        assert_eq!(
            hub[1..],
            [
                ("service", vec!["ServiceConnect"]),
                ("device", vec!["DeviceConnect"]),
                ("registryRead", vec!["RegistryRead"]),
                ("registryReadWrite", vec!["RegistryRead", "RegistryWrite"]),
            ]
        );
        let (again, created) = dd.init_identity("other", &[]).unwrap();
        assert!(!created);
        assert_eq!(again.id_scope, id.id_scope);
        assert_eq!(again.hub.host_name, "127.0.0.1");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(dd.identity_path()).unwrap().permissions().mode() & 0o777,
                0o600
            );
            // The databases inherit the umask; the directory keeps other users out of them.
            assert_eq!(
                fs::metadata(dir.path().join("data")).unwrap().permissions().mode() & 0o777,
                0o700
            );
        }
        let ca = dd.init_ca().unwrap();
        let names = vec!["127.0.0.1".to_string(), "dps.example.test".to_string()];
        let (chain, _) = dd.init_server_cert(&ca, &names).unwrap();
        let (chain2, _) = dd.init_server_cert(&dd.init_ca().unwrap(), &names).unwrap();
        assert_eq!(chain, chain2, "reused while it covers the host names");
        let (chain3, _) = dd.init_server_cert(&ca, &["other.example.test".to_string()]).unwrap();
        assert_ne!(chain, chain3, "re-issued for new host names");
    }

    #[test]
    fn hub_hostnames_name_the_hubs_served_each_with_its_own_keys_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let dd = DataDir::new(dir.path());
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let hosts = |id: &Identity| id.hubs().map(|h| h.host_name.clone()).collect::<Vec<_>>();
        let (one, _) = dd.init_identity("127.0.0.1", &names(&["hub-a.test"])).unwrap();
        // A rename keeps the hub (its keys, its files) and its former name.
        let (renamed, created) = dd.init_identity("x", &names(&["hub-b.test"])).unwrap();
        assert!(!created);
        assert_eq!(hosts(&renamed), ["hub-b.test"]);
        assert_eq!(renamed.hub.former_host_names, ["hub-a.test"]);
        assert_eq!(renamed.hub.policies, one.hub.policies);
        assert!(renamed.hub.answers_to("HUB-A.test"));

        // More names: new hubs with keys and files of their own; the former name still finds
        // the first.
        let (three, _) = dd
            .init_identity("x", &names(&["hub-c.test", "hub-a.test", "hub-d.test"]))
            .unwrap();
        assert_eq!(hosts(&three), ["hub-c.test", "hub-b.test", "hub-d.test"]);
        assert_ne!(three.hub.policies[0].primary_key, one.hub.policies[0].primary_key);
        assert_eq!(three.other_hubs[0].policies, one.hub.policies);
        let numbers: Vec<_> = three.hubs().map(HubIdentity::number).collect();
        assert_eq!(numbers, [Some(2), Some(1), Some(3)]);
        let files: Vec<_> = three.hubs().map(|h| dd.separate_hub_db_path_of(h)).collect();
        assert_eq!(files[1], None);
        assert_eq!(files[0], Some(dir.path().join("hub-2.db")));
        assert_eq!(files[2], Some(dir.path().join("hub-3.db")));
        assert_eq!(dd.blobs_path_of(&three.hub), dir.path().join("hub-2-blobs"));
        let telemetry: Vec<_> = three.hubs().map(|h| dd.telemetry_path_of(h)).collect();
        assert_eq!(
            telemetry,
            ["hub-2-telemetry.db", "telemetry.db", "hub-3-telemetry.db"].map(|f| dir.path().join(f)),
            "each hub's telemetry is its own"
        );

        // Hubs not named are kept, unserved, and served again when named (or when none is).
        let (only_d, _) = dd.init_identity("x", &names(&["hub-d.test"])).unwrap();
        assert_eq!(hosts(&only_d), ["hub-d.test"]);
        assert_eq!(hosts(&dd.load_identity().unwrap()).len(), 3);
        let (all, _) = dd.init_identity("x", &[]).unwrap();
        assert_eq!(all.hub.host_name, "hub-d.test");
        assert_eq!(hosts(&all).len(), 3);
        assert_eq!(all.hub_named("hub-a.test").unwrap().host_name, "hub-b.test");
        assert_eq!(all.hub_named("hub-c.test").unwrap().policies, three.hub.policies);
    }

    /// The contents of the P-256 files.
    fn ecdsa_files(dd: &DataDir) -> Vec<Vec<u8>> {
        [ECDSA.ca_cert, ECDSA.ca_key, ECDSA.server_cert, ECDSA.server_key]
            .map(|f| fs::read(dd.root().join(f)).unwrap())
            .to_vec()
    }

    #[test]
    fn a_data_directory_from_before_rsa_gains_the_rsa_pair_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let dd = DataDir::new(dir.path());
        let names = vec!["127.0.0.1".to_string(), "dps.example.test".to_string()];
        // What earlier versions made: the P-256 CA and server certificate only.
        dd.init_server_cert(&dd.init_ca().unwrap(), &names).unwrap();
        let before = ecdsa_files(&dd);
        assert!(!dd.rsa_ca_cert_path().exists());

        let certs = dd.init_server_certificates(&names).unwrap();
        assert_eq!(ecdsa_files(&dd), before, "the P-256 CA and certificate are kept");
        let algs: Vec<_> = certs.iter().map(|c| c.key_algorithm).collect();
        assert_eq!(algs, [KeyAlgorithm::EcdsaP256, KeyAlgorithm::Rsa2048]);
        assert_eq!(certs[0].chain_pem.as_bytes(), before[2]);
        // The RSA leaf chains to the RSA root, which is what the chain ends with and what
        // ca-rsa.pem holds, and covers the same names.
        let rsa_chain = dps_pki::pem::parse_certificates(&certs[1].chain_pem).unwrap();
        let rsa_root = dps_pki::pem::parse_certificates(&read(&dd.rsa_ca_cert_path()).unwrap()).unwrap();
        assert_eq!(rsa_chain.len(), 2);
        assert_eq!(rsa_chain[1], rsa_root[0]);
        dps_pki::chain::verify_issued_by(&rsa_chain[0], &rsa_root[0], chrono::Utc::now()).unwrap();
        assert!(dps_pki::ca::certificate_covers(&certs[1].chain_pem, &names).unwrap());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for key in [RSA.ca_key, RSA.server_key] {
                let mode = fs::metadata(dd.root().join(key)).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{key}");
            }
        }

        // Later starts reuse everything.
        assert_eq!(dd.init_server_certificates(&names).unwrap(), certs);
        assert_eq!(ecdsa_files(&dd), before);
    }

    #[test]
    fn a_file_set_goes_through_the_same_steps_and_says_what_it_changed() {
        let names = vec!["dps.example.test".to_string()];
        let mut set = FileSet::new(BTreeMap::new(), "PostgreSQL dps_files");
        assert!(set.is_empty());
        let (id, created) = set.init_identity("hub.example.test", &[]).unwrap();
        assert!(created);
        let certs = set.init_server_certificates(&names).unwrap();
        let changed: Vec<_> = set.changed().into_iter().map(|(name, _)| name).collect();
        let mut all: Vec<_> = FILE_NAMES.iter().map(|n| n.to_string()).collect();
        all.sort();
        assert_eq!(changed, all, "every file was created");

        // Read back (as a database returns them), nothing changes; a new host name re-issues
        // the server certificates and nothing else.
        let stored: BTreeMap<_, _> = set.changed().into_iter().collect();
        let mut again = FileSet::new(stored.clone(), "PostgreSQL dps_files");
        assert!(!again.is_empty());
        let (same, created) = again.init_identity("other", &[]).unwrap();
        assert!(!created);
        assert_eq!(same.id_scope, id.id_scope);
        assert_eq!(again.init_server_certificates(&names).unwrap(), certs);
        assert!(again.changed().is_empty());
        again
            .init_server_certificates(&["new.example.test".to_string()])
            .unwrap();
        let changed: Vec<_> = again.changed().into_iter().map(|(name, _)| name).collect();
        assert_eq!(
            changed,
            ["server-key.pem", "server-rsa-key.pem", "server-rsa.pem", "server.pem"]
        );

        // Mirrored into a data directory, the client commands read the same identity, secrets
        // owner-only; a directory adopted into an empty set carries its identity over.
        let dir = tempfile::tempdir().unwrap();
        let dd = DataDir::new(dir.path().join("node"));
        again.mirror_to(&dd).unwrap();
        assert_eq!(dd.load_identity().unwrap().id_scope, id.id_scope);
        assert_eq!(read(&dd.ca_cert_path()).unwrap(), stored["ca.pem"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for name in FILE_NAMES.iter().filter(|n| is_secret(n)) {
                let mode = fs::metadata(dd.root().join(name)).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{name}");
            }
        }
        let mut adopted = FileSet::new(BTreeMap::new(), "PostgreSQL dps_files");
        assert_eq!(adopted.adopt(&dd).unwrap(), FILE_NAMES.len());
        assert_eq!(adopted.init_identity("x", &[]).unwrap().0.id_scope, id.id_scope);
        let empty = DataDir::new(dir.path().join("never-initialized"));
        assert_eq!(FileSet::default().adopt(&empty).unwrap(), 0);
    }

    #[test]
    fn a_server_certificate_from_a_replaced_ca_is_reissued() {
        let dir = tempfile::tempdir().unwrap();
        let dd = DataDir::new(dir.path());
        let names = vec!["dps.example.test".to_string()];
        let first = dd.init_server_certificates(&names).unwrap();
        fs::remove_file(dd.rsa_ca_cert_path()).unwrap();
        fs::remove_file(dd.root().join(RSA.ca_key)).unwrap();
        let second = dd.init_server_certificates(&names).unwrap();
        assert_eq!(second[0], first[0]);
        assert_ne!(second[1].chain_pem, first[1].chain_pem);
        let root = read(&dd.rsa_ca_cert_path()).unwrap();
        assert!(second[1].chain_pem.ends_with(&root));
    }
}

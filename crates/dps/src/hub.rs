//! `dps hub …`: the embedded (or any linked) IoT hub's registry REST API and telemetry stream,
//! shaped like `az iot hub device-identity …`, `az iot hub device-twin …`,
//! `az iot hub invoke-device-method`, `az iot hub show-stats` and `az iot hub monitor-events`.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use dps_proto::model::hub::{
    AuthenticationMechanism, CloudToDeviceMethod, Device, EventHubConsumerGroupInfo, RegistryStatistics,
    ServiceStatistics, Twin, TwinProperties,
};
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::output::{self, out, to_value};

use crate::remote::HubTarget;

/// `dps hub …`
#[derive(Subcommand, Debug)]
pub enum HubCommand {
    /// Device identities in the hub registry.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Call a direct method on a connected device and print its answer (like
    /// `az iot hub invoke-device-method`).
    InvokeDeviceMethod(InvokeMethod),
    /// Module identities of a device (like `az iot hub module-identity`).
    #[command(subcommand)]
    ModuleIdentity(ModuleCommand),
    /// Query twins with IoT Hub's query language and print the results as JSON (like
    /// `az iot hub query`).
    Query(HubQuery),
    /// Device counts: registered (by status) and connected now (like `az iot hub show-stats`).
    ShowStats(ShowStats),
    /// Print device-to-cloud messages as they arrive (like `az iot hub monitor-events`).
    MonitorEvents(MonitorArgs),
    /// Consumer groups of the Event Hub-compatible endpoint (like `az iot hub consumer-group`).
    #[command(subcommand)]
    ConsumerGroup(ConsumerGroupCommand),
    /// Files devices uploaded (IoT Hub file upload).
    #[command(subcommand)]
    File(FileCommand),
}

/// `dps hub file …`
#[derive(Subcommand, Debug)]
pub enum FileCommand {
    /// List uploaded files (name, device, size, time).
    List(FileList),
    /// Download an uploaded file.
    Download(FileDownload),
}

/// `dps hub file list`
#[derive(Args, Debug)]
pub struct FileList {
    /// Only this device's files.
    #[arg(long, short = 'd')]
    pub device_id: Option<String>,
    #[command(flatten)]
    pub target: HubTarget,
}

/// `dps hub file download`
#[derive(Args, Debug)]
pub struct FileDownload {
    /// The file's name as listed: `{deviceId}/{name}`.
    #[arg(long, short = 'n')]
    pub name: String,
    /// Where to write it [default: its last name segment, in the current directory].
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub target: HubTarget,
}

/// `dps hub module-identity …`
#[derive(Subcommand, Debug)]
pub enum ModuleCommand {
    /// Create a module identity (SAS keys generated).
    Create(ModuleName),
    /// List a device's module identities.
    List(ModuleDevice),
    /// Show a module identity, with its keys.
    Show(ModuleName),
    /// Delete a module identity.
    Delete(ModuleName),
}

/// `dps hub module-identity create|show|delete`
#[derive(Args, Debug)]
pub struct ModuleName {
    /// The device.
    #[arg(long, short = 'd')]
    pub device_id: String,
    /// The module.
    #[arg(long, short = 'm')]
    pub module_id: String,
    #[command(flatten)]
    pub target: HubTarget,
}

/// `dps hub module-identity list`
#[derive(Args, Debug)]
pub struct ModuleDevice {
    /// The device.
    #[arg(long, short = 'd')]
    pub device_id: String,
    #[command(flatten)]
    pub target: HubTarget,
}

/// `dps hub consumer-group …`
#[derive(Subcommand, Debug)]
pub enum ConsumerGroupCommand {
    /// Create a consumer group (creating one that exists changes nothing).
    Create(ConsumerGroupName),
    /// List the consumer groups, `$Default` first.
    List(ConsumerGroupList),
    /// Show a consumer group.
    Show(ConsumerGroupName),
    /// Delete a consumer group (`$Default` cannot be deleted).
    Delete(ConsumerGroupName),
}

/// `dps hub consumer-group create|show|delete`
#[derive(Args, Debug)]
pub struct ConsumerGroupName {
    /// The group's name: 1 to 50 letters, digits, '.', '_' or '-'.
    #[arg(long, short = 'n')]
    pub name: String,
    #[command(flatten)]
    pub target: HubTarget,
}

/// `dps hub consumer-group list`
#[derive(Args, Debug)]
pub struct ConsumerGroupList {
    #[command(flatten)]
    pub target: HubTarget,
}

/// `dps hub device …`
#[derive(Subcommand, Debug)]
pub enum DeviceCommand {
    /// List device identities.
    List(DeviceList),
    /// Show a device identity.
    Show(DeviceShow),
    /// Create a device identity (like `az iot hub device-identity create`): SAS keys (generated
    /// by the hub unless given), or X.509 thumbprints, or signed by an enrolled CA.
    Create(DeviceCreate),
    /// Change a device identity: enable or disable it, replace its keys or thumbprints.
    Update(DeviceUpdate),
    /// Delete a device identity (its modules and twin with it).
    Delete(DeviceDelete),
    /// A device's twin.
    #[command(subcommand)]
    Twin(TwinCommand),
}

/// `dps hub device twin …`
#[derive(Subcommand, Debug)]
pub enum TwinCommand {
    /// Show a device twin.
    Show(DeviceShow),
    /// Change a twin's desired properties and/or tags (JSON merge patch: null deletes).
    Update(TwinUpdate),
}

/// `dps hub device list`
#[derive(Args, Debug)]
pub struct DeviceList {
    /// Return at most this many devices [default: 1000].
    #[arg(long, default_value_t = 1000)]
    pub top: usize,
    #[command(flatten)]
    pub target: HubTarget,
}

/// How a device authenticates (`az iot hub device-identity create --auth-method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMethod {
    /// SAS tokens signed with the device's symmetric keys.
    #[value(name = "shared_private_key")]
    SharedPrivateKey,
    /// A self-signed (or any) certificate, by thumbprint.
    #[value(name = "x509_thumbprint")]
    X509Thumbprint,
    /// A certificate issued by a CA the hub trusts.
    #[value(name = "x509_ca")]
    X509Ca,
}

/// Enabled or disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceStatus {
    /// The device may connect.
    Enabled,
    /// The device may not connect (its connection ends).
    Disabled,
}

impl DeviceStatus {
    fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Enabled => "enabled",
            DeviceStatus::Disabled => "disabled",
        }
    }
}

/// The credentials of `dps hub device create|update`.
#[derive(Args, Debug, Default)]
pub struct DeviceCredentials {
    /// Primary SAS key (base64) [default on create: generated by the hub].
    #[arg(long, alias = "pk")]
    pub primary_key: Option<String>,
    /// Secondary SAS key (base64).
    #[arg(long, alias = "sk")]
    pub secondary_key: Option<String>,
    /// Primary certificate thumbprint (hex), for --auth-method x509_thumbprint.
    #[arg(long, alias = "ptp")]
    pub primary_thumbprint: Option<String>,
    /// Secondary certificate thumbprint (hex).
    #[arg(long, alias = "stp")]
    pub secondary_thumbprint: Option<String>,
}

/// `dps hub device create`
#[derive(Args, Debug)]
pub struct DeviceCreate {
    /// Device id.
    #[arg(long, short = 'd')]
    pub device_id: String,
    /// How the device authenticates.
    #[arg(long, value_enum, alias = "am", default_value = "shared_private_key")]
    pub auth_method: AuthMethod,
    #[command(flatten)]
    pub credentials: DeviceCredentials,
    /// Whether the device may connect.
    #[arg(long, value_enum, alias = "sta", default_value = "enabled")]
    pub status: DeviceStatus,
    /// Why it is disabled (free text).
    #[arg(long, alias = "star")]
    pub status_reason: Option<String>,
    /// An IoT Edge device.
    #[arg(long, alias = "ee")]
    pub edge_enabled: bool,
    #[command(flatten)]
    pub target: HubTarget,
}

/// `dps hub device update`
#[derive(Args, Debug)]
pub struct DeviceUpdate {
    /// Device id.
    #[arg(long, short = 'd')]
    pub device_id: String,
    /// Enable or disable the device.
    #[arg(long, value_enum, alias = "sta")]
    pub status: Option<DeviceStatus>,
    /// Why it is disabled (free text).
    #[arg(long, alias = "star")]
    pub status_reason: Option<String>,
    #[command(flatten)]
    pub credentials: DeviceCredentials,
    /// Only if the identity's etag is still this one [default: whatever it is now].
    #[arg(long)]
    pub etag: Option<String>,
    #[command(flatten)]
    pub target: HubTarget,
}

/// `dps hub device delete`
#[derive(Args, Debug)]
pub struct DeviceDelete {
    /// Device id.
    #[arg(long, short = 'd')]
    pub device_id: String,
    /// Only if the identity's etag is still this one [default: whatever it is now].
    #[arg(long)]
    pub etag: Option<String>,
    #[command(flatten)]
    pub target: HubTarget,
}

impl DeviceCredentials {
    /// Applies the keys or thumbprints given over `auth` (of kind `kind`); whether any was.
    fn apply(&self, auth: &mut AuthenticationMechanism) -> bool {
        let mut changed = false;
        if self.primary_key.is_some() || self.secondary_key.is_some() {
            let keys = auth.symmetric_key.get_or_insert_with(Default::default);
            keys.primary_key = self.primary_key.clone().or(keys.primary_key.take());
            keys.secondary_key = self.secondary_key.clone().or(keys.secondary_key.take());
            changed = true;
        }
        if self.primary_thumbprint.is_some() || self.secondary_thumbprint.is_some() {
            let prints = auth.x509_thumbprint.get_or_insert_with(Default::default);
            prints.primary_thumbprint = self.primary_thumbprint.clone().or(prints.primary_thumbprint.take());
            prints.secondary_thumbprint = self.secondary_thumbprint.clone().or(prints.secondary_thumbprint.take());
            changed = true;
        }
        changed
    }
}

/// `dps hub device show`, `dps hub device twin show`
#[derive(Args, Debug)]
pub struct DeviceShow {
    /// Device id.
    #[arg(long, short = 'd')]
    pub device_id: String,
    #[command(flatten)]
    pub target: HubTarget,
}

fn parse_json_object(s: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(s) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("expected a JSON object".into()),
        Err(e) => Err(format!("not valid JSON: {e}")),
    }
}

/// `dps hub device twin update`
#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("patch").required(true).multiple(true).args(["desired", "tags"]))]
pub struct TwinUpdate {
    /// Device id.
    #[arg(long, short = 'd')]
    pub device_id: String,
    /// Desired properties to merge, as a JSON object.
    #[arg(long, value_parser = parse_json_object, value_name = "JSON")]
    pub desired: Option<Map<String, Value>>,
    /// Tags to merge, as a JSON object.
    #[arg(long, value_parser = parse_json_object, value_name = "JSON")]
    pub tags: Option<Map<String, Value>>,
    /// Update only if the twin still has this etag.
    #[arg(long)]
    pub etag: Option<String>,
    #[command(flatten)]
    pub target: HubTarget,
}

/// `dps hub invoke-device-method`
#[derive(Args, Debug)]
pub struct InvokeMethod {
    /// Device id.
    #[arg(long, short = 'd')]
    pub device_id: String,
    /// The method's name, as the device subscribed to it.
    #[arg(long)]
    pub method_name: String,
    /// The request payload, any JSON [default: null].
    #[arg(long, value_parser = parse_json, value_name = "JSON")]
    pub method_payload: Option<Value>,
    /// Seconds to wait for the device's answer (5 to 300).
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    #[command(flatten)]
    pub target: HubTarget,
}

fn parse_json(s: &str) -> Result<Value, String> {
    serde_json::from_str(s).map_err(|e| format!("not valid JSON: {e}"))
}

/// `dps hub query`
#[derive(Args, Debug)]
pub struct HubQuery {
    /// The query, e.g. "SELECT * FROM devices WHERE tags.site = 'lab'" or
    /// "SELECT COUNT() AS n FROM devices.modules".
    #[arg(long = "query-command", short = 'q')]
    pub query: String,
    /// Return at most this many items [default: all].
    #[arg(long)]
    pub top: Option<usize>,
    #[command(flatten)]
    pub target: HubTarget,
}

/// `dps hub show-stats`
#[derive(Args, Debug)]
pub struct ShowStats {
    #[command(flatten)]
    pub target: HubTarget,
}

/// What `show-stats --json` prints: both statistics objects' fields in one object.
#[derive(Serialize)]
struct Stats {
    #[serde(flatten)]
    registry: RegistryStatistics,
    #[serde(flatten)]
    service: ServiceStatistics,
}

/// `dps hub monitor-events`
#[derive(Args, Debug)]
pub struct MonitorArgs {
    /// Only this device's messages.
    #[arg(long, short = 'd')]
    pub device_id: Option<String>,
    /// Stop after this many seconds without a message (0: run until Ctrl-C), as in az.
    #[arg(long, visible_alias = "to", default_value_t = 0)]
    pub timeout: u64,
    /// Stop after this many messages.
    #[arg(long)]
    pub max_events: Option<u64>,
    /// Start with the retained messages after this sequence number (0: every retained message)
    /// [default: only messages that arrive from now on].
    #[arg(long)]
    pub from_sequence: Option<u64>,
    #[command(flatten)]
    pub target: HubTarget,
}

/// Prints a device identity: its fields as a table, or JSON.
fn show_device(device: &Device, json: bool) -> Result<()> {
    output::show(
        &to_value(device)?,
        json,
        &[
            ("device id", "deviceId"),
            ("status", "status"),
            ("status reason", "statusReason"),
            ("connection", "connectionState"),
            ("authentication", "authentication/type"),
            ("primary key", "authentication/symmetricKey/primaryKey"),
            ("secondary key", "authentication/symmetricKey/secondaryKey"),
            ("primary thumbprint", "authentication/x509Thumbprint/primaryThumbprint"),
            ("edge enabled", "capabilities/iotEdge"),
            ("C2D queued", "cloudToDeviceMessageCount"),
            ("last activity", "lastActivityTime"),
            ("generation id", "generationId"),
            ("etag", "etag"),
        ],
    );
    Ok(())
}

/// Runs `dps hub …`.
pub async fn run(cmd: HubCommand) -> Result<()> {
    match cmd {
        HubCommand::Device(DeviceCommand::List(a)) => {
            let devices = a
                .target
                .client()?
                .list_devices(a.top)
                .await
                .context("cannot list devices")?;
            output::list(
                &to_value(&devices)?,
                a.target.server.json,
                &[
                    ("DEVICE ID", "deviceId"),
                    ("STATUS", "status"),
                    ("CONNECTION", "connectionState"),
                    ("AUTH", "authentication/type"),
                    ("LAST ACTIVITY", "lastActivityTime"),
                ],
            );
        }
        HubCommand::Device(DeviceCommand::Show(a)) => {
            let id = &a.device_id;
            let device = a
                .target
                .client()?
                .get_device(id)
                .await
                .with_context(|| format!("cannot show device '{id}'"))?;
            show_device(&device, a.target.server.json)?;
        }
        HubCommand::Device(DeviceCommand::Create(a)) => {
            let id = &a.device_id;
            let kind = match a.auth_method {
                AuthMethod::SharedPrivateKey => "sas",
                AuthMethod::X509Thumbprint => "selfSigned",
                AuthMethod::X509Ca => "certificateAuthority",
            };
            let given_keys = a.credentials.primary_key.is_some() || a.credentials.secondary_key.is_some();
            let given_prints =
                a.credentials.primary_thumbprint.is_some() || a.credentials.secondary_thumbprint.is_some();
            match a.auth_method {
                AuthMethod::SharedPrivateKey if given_prints => {
                    bail!("thumbprints are for --auth-method x509_thumbprint")
                }
                AuthMethod::X509Thumbprint if given_keys => bail!("keys are for --auth-method shared_private_key"),
                AuthMethod::X509Thumbprint if a.credentials.primary_thumbprint.is_none() => {
                    bail!("--auth-method x509_thumbprint needs --primary-thumbprint")
                }
                AuthMethod::X509Ca if given_keys || given_prints => {
                    bail!("a device signed by a CA has neither keys nor thumbprints")
                }
                _ => {}
            }
            let mut auth = AuthenticationMechanism {
                kind: kind.into(),
                symmetric_key: None,
                x509_thumbprint: None,
            };
            a.credentials.apply(&mut auth);
            let device = Device {
                device_id: id.clone(),
                status: Some(a.status.as_str().into()),
                status_reason: a.status_reason.clone(),
                authentication: Some(auth),
                capabilities: a
                    .edge_enabled
                    .then_some(dps_proto::model::service::DeviceCapabilities { iot_edge: true }),
                ..Device::default()
            };
            let created = a
                .target
                .client()?
                .put_device(&device, None)
                .await
                .with_context(|| format!("cannot create device '{id}'"))?;
            show_device(&created, a.target.server.json)?;
        }
        HubCommand::Device(DeviceCommand::Update(a)) => {
            let id = &a.device_id;
            let client = a.target.client()?;
            let mut device = client
                .get_device(id)
                .await
                .with_context(|| format!("cannot read device '{id}'"))?;
            let mut changed = false;
            if let Some(status) = a.status {
                device.status = Some(status.as_str().into());
                changed = true;
            }
            if let Some(reason) = &a.status_reason {
                device.status_reason = Some(reason.clone());
                changed = true;
            }
            if let Some(auth) = device.authentication.as_mut() {
                changed |= a.credentials.apply(auth);
            }
            if !changed {
                bail!("nothing to change: give --status, --status-reason, keys or thumbprints");
            }
            let etag = a.etag.clone().or(device.etag.clone());
            let updated = client
                .put_device(&device, etag.as_deref())
                .await
                .with_context(|| format!("cannot update device '{id}'"))?;
            show_device(&updated, a.target.server.json)?;
        }
        HubCommand::Device(DeviceCommand::Delete(a)) => {
            let id = &a.device_id;
            a.target
                .client()?
                .delete_device(id, a.etag.as_deref())
                .await
                .with_context(|| format!("cannot delete device '{id}'"))?;
            if a.target.server.json {
                output::json(&serde_json::json!({"deleted": id}));
            } else {
                out!("deleted device {id}");
            }
        }
        HubCommand::Device(DeviceCommand::Twin(TwinCommand::Show(a))) => {
            let id = &a.device_id;
            let twin = a
                .target
                .client()?
                .get_twin(id)
                .await
                .with_context(|| format!("cannot show the twin of '{id}'"))?;
            let v = to_value(&twin)?;
            // A twin is a JSON document either way.
            output::json(&v);
        }
        HubCommand::Device(DeviceCommand::Twin(TwinCommand::Update(a))) => {
            let id = &a.device_id;
            let patch = Twin {
                tags: a.tags,
                properties: a.desired.map(|d| TwinProperties {
                    desired: Some(d),
                    reported: None,
                }),
                ..Twin::default()
            };
            let twin = a
                .target
                .client()?
                .update_twin(id, &patch, a.etag.as_deref())
                .await
                .with_context(|| format!("cannot update the twin of '{id}'"))?;
            let v = to_value(&twin)?;
            output::json(&v);
        }
        HubCommand::InvokeDeviceMethod(a) => {
            let id = &a.device_id;
            let method = CloudToDeviceMethod {
                method_name: a.method_name.clone(),
                payload: a.method_payload.unwrap_or(Value::Null),
                response_timeout_in_seconds: Some(a.timeout),
                connect_timeout_in_seconds: None,
            };
            let answer = a
                .target
                .client()?
                .invoke_method(id, &method)
                .await
                .with_context(|| format!("cannot invoke method '{}' on '{id}'", a.method_name))?;
            // The device's answer is a JSON document either way (status and payload).
            output::json(&to_value(&answer)?);
        }
        HubCommand::Query(a) => {
            let items = a
                .target
                .client()?
                .query(&a.query, a.top)
                .await
                .context("the query failed")?;
            output::json(&Value::Array(items));
        }
        HubCommand::ShowStats(a) => {
            let client = a.target.client()?;
            let registry = client
                .device_statistics()
                .await
                .context("cannot read the device statistics")?;
            let service = client
                .service_statistics()
                .await
                .context("cannot read the service statistics")?;
            if a.target.server.json {
                output::json(&to_value(&Stats { registry, service })?);
            } else {
                output::fields(&[
                    ("devices", registry.total_device_count.to_string()),
                    ("enabled", registry.enabled_device_count.to_string()),
                    ("disabled", registry.disabled_device_count.to_string()),
                    ("connected", service.connected_device_count.to_string()),
                ]);
            }
        }
        HubCommand::MonitorEvents(a) => monitor(a).await?,
        HubCommand::ConsumerGroup(c) => consumer_group(c).await?,
        HubCommand::ModuleIdentity(c) => module_identity(c).await?,
        HubCommand::File(c) => file(c).await?,
    }
    Ok(())
}

/// Runs `dps hub file …`.
async fn file(cmd: FileCommand) -> Result<()> {
    match cmd {
        FileCommand::List(a) => {
            let files = a
                .target
                .client()?
                .list_files(a.device_id.as_deref())
                .await
                .context("cannot list uploaded files")?;
            let v = to_value(&files.value)?;
            if a.target.server.json {
                output::json(&v);
            } else {
                let rows: Vec<Vec<String>> = files
                    .value
                    .iter()
                    .map(|f| {
                        vec![
                            f.name.clone(),
                            f.device_id.clone(),
                            f.size.to_string(),
                            f.last_modified.clone(),
                        ]
                    })
                    .collect();
                output::table(&["NAME", "DEVICE", "BYTES", "LAST MODIFIED"], &rows);
            }
        }
        FileCommand::Download(a) => {
            let out = a
                .out
                .clone()
                .unwrap_or_else(|| std::path::PathBuf::from(a.name.rsplit('/').next().unwrap_or(a.name.as_str())));
            let mut resp = a
                .target
                .client()?
                .download_file(&a.name)
                .await
                .with_context(|| format!("cannot download '{}'", a.name))?;
            let mut file = tokio::fs::File::create(&out)
                .await
                .with_context(|| format!("cannot create {}", out.display()))?;
            let mut bytes = 0u64;
            while let Some(chunk) = resp.chunk().await.with_context(|| format!("reading '{}'", a.name))? {
                tokio::io::AsyncWriteExt::write_all(&mut file, &chunk)
                    .await
                    .with_context(|| format!("writing {}", out.display()))?;
                bytes += chunk.len() as u64;
            }
            tokio::io::AsyncWriteExt::flush(&mut file).await?;
            if a.target.server.json {
                output::json(&serde_json::json!({"name": a.name, "bytes": bytes, "path": out}));
            } else {
                out!("wrote {} ({bytes} bytes)", out.display());
            }
        }
    }
    Ok(())
}

/// Runs `dps hub module-identity …`.
async fn module_identity(cmd: ModuleCommand) -> Result<()> {
    let show = |json: bool, m: &dps_proto::model::hub::Module| -> Result<()> {
        output::show(
            &to_value(m)?,
            json,
            &[
                ("device id", "deviceId"),
                ("module id", "moduleId"),
                ("connection", "connectionState"),
                ("authentication", "authentication/type"),
                ("primary key", "authentication/symmetricKey/primaryKey"),
                ("secondary key", "authentication/symmetricKey/secondaryKey"),
                ("generation id", "generationId"),
            ],
        );
        Ok(())
    };
    match cmd {
        ModuleCommand::Create(a) => {
            let module = dps_proto::model::hub::Module {
                device_id: a.device_id.clone(),
                module_id: a.module_id.clone(),
                ..Default::default()
            };
            let created = a
                .target
                .client()?
                .put_module(&module, None)
                .await
                .with_context(|| format!("cannot create module '{}' on device '{}'", a.module_id, a.device_id))?;
            show(a.target.server.json, &created)?;
        }
        ModuleCommand::Show(a) => {
            let module = a
                .target
                .client()?
                .get_module(&a.device_id, &a.module_id)
                .await
                .with_context(|| format!("cannot show module '{}' of device '{}'", a.module_id, a.device_id))?;
            show(a.target.server.json, &module)?;
        }
        ModuleCommand::Delete(a) => {
            a.target
                .client()?
                .delete_module(&a.device_id, &a.module_id, None)
                .await
                .with_context(|| format!("cannot delete module '{}' of device '{}'", a.module_id, a.device_id))?;
            out!("deleted module '{}' of device '{}'", a.module_id, a.device_id);
        }
        ModuleCommand::List(a) => {
            let modules = a
                .target
                .client()?
                .list_modules(&a.device_id)
                .await
                .with_context(|| format!("cannot list the modules of device '{}'", a.device_id))?;
            output::list(
                &to_value(&modules)?,
                a.target.server.json,
                &[
                    ("MODULE ID", "moduleId"),
                    ("CONNECTION", "connectionState"),
                    ("AUTH", "authentication/type"),
                ],
            );
        }
    }
    Ok(())
}

/// Runs `dps hub consumer-group …`.
async fn consumer_group(cmd: ConsumerGroupCommand) -> Result<()> {
    let show = |json: bool, g: &EventHubConsumerGroupInfo| -> Result<()> {
        output::show(
            &to_value(g)?,
            json,
            &[("name", "name"), ("created", "properties/created")],
        );
        Ok(())
    };
    match cmd {
        ConsumerGroupCommand::Create(a) => {
            let group = a
                .target
                .client()?
                .create_consumer_group(&a.name)
                .await
                .with_context(|| format!("cannot create consumer group '{}'", a.name))?;
            show(a.target.server.json, &group)?;
        }
        ConsumerGroupCommand::Show(a) => {
            let group = a
                .target
                .client()?
                .get_consumer_group(&a.name)
                .await
                .with_context(|| format!("cannot show consumer group '{}'", a.name))?;
            show(a.target.server.json, &group)?;
        }
        ConsumerGroupCommand::Delete(a) => {
            a.target
                .client()?
                .delete_consumer_group(&a.name)
                .await
                .with_context(|| format!("cannot delete consumer group '{}'", a.name))?;
            out!("deleted consumer group '{}'", a.name);
        }
        ConsumerGroupCommand::List(a) => {
            let groups = a
                .target
                .client()?
                .list_consumer_groups()
                .await
                .context("cannot list consumer groups")?;
            output::list(
                &to_value(&groups.value)?,
                a.target.server.json,
                &[("NAME", "name"), ("CREATED", "properties/created")],
            );
        }
    }
    Ok(())
}

/// Reads the server's NDJSON telemetry stream and prints each event until Ctrl-C, the idle
/// timeout, or `--max-events`.
async fn monitor(a: MonitorArgs) -> Result<()> {
    let client = a.target.client()?;
    let mut events = client
        .monitor_events(a.device_id.as_deref(), a.from_sequence)
        .await
        .context("cannot monitor events")?;
    if !a.target.server.json {
        let filter = a
            .device_id
            .as_deref()
            .map(|d| format!(" of device {d}"))
            .unwrap_or_default();
        eprintln!("monitoring events{filter} on {} (Ctrl-C to stop)", client.rest().host());
    }
    let idle = (a.timeout > 0).then(|| Duration::from_secs(a.timeout));
    let mut deadline = idle.map(|d| Instant::now() + d);
    let mut seen: u64 = 0;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    while a.max_events.is_none_or(|m| seen < m) {
        // `EventStream::next` is cancel-safe: losing the race loses no event.
        let event = tokio::select! {
            e = events.next() => e.context("the event stream broke")?,
            _ = sleep_until_opt(deadline) => break,
            _ = &mut ctrl_c => break,
        };
        let Some(event) = event else {
            bail!("the server closed the event stream")
        };
        if a.target.server.json {
            out!("{event}");
        } else {
            output::json(&event);
        }
        seen += 1;
        deadline = idle.map(|d| Instant::now() + d);
    }
    if !a.target.server.json {
        eprintln!("{seen} event(s)");
    }
    Ok(())
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

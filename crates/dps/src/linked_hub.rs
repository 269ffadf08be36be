//! `dps linked-hub create|list|show|update|delete`: the IoT hubs devices may be assigned to
//! (`az iot dps linked-hub …`), through the service API's `/linkedHubs`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use dps_client::ServiceClient;
use dps_proto::connection_string::ConnectionString;
use dps_proto::model::service::LinkedHubDescription;
use serde_json::Value;

use crate::output::{self, out, to_value};
use crate::remote::{connect, Api, ServerArgs};

/// `dps linked-hub …`
#[derive(Subcommand, Debug)]
pub enum LinkedHubCommand {
    /// Link an IoT hub: Azure IoT Hub, or another dps server's embedded hub.
    Create(LinkedHubCreate),
    /// List the linked hubs.
    List(LinkedHubTarget),
    /// Show a linked hub.
    Show(LinkedHubName),
    /// Change a linked hub's settings.
    Update(LinkedHubUpdate),
    /// Unlink a hub (devices already there stay; enrollments naming it fail to register).
    Delete(LinkedHubName),
}

/// The service whose linked hubs these are. `--connection-string` and `--ca` name the hub here,
/// as in `az iot dps linked-hub create`; the service's own are `--dps-connection-string` and
/// `--dps-ca`.
#[derive(Args, Debug)]
pub struct LinkedHubTarget {
    /// The provisioning service's connection string [default: the data directory's owner
    /// policy].
    #[arg(long, env = "DPS_CONNECTION_STRING", hide_env_values = true)]
    pub dps_connection_string: Option<String>,
    /// Data directory of a local server: supplies the service's connection string, CA and port
    /// when they are not given explicitly.
    #[arg(long, env = "DPS_DATA_DIR", default_value = "./dps-data")]
    pub data_dir: PathBuf,
    /// PEM file with the CA certificate(s) to trust for the service [default: the data
    /// directory's ca.pem].
    #[arg(long, value_name = "FILE")]
    pub dps_ca: Option<PathBuf>,
    /// HTTPS port of the service [default: the port recorded in the data directory, else 443].
    #[arg(long)]
    pub port: Option<u16>,
    /// Print JSON (for scripts) instead of a human summary.
    #[arg(long)]
    pub json: bool,
}

impl LinkedHubTarget {
    fn client(&self) -> Result<ServiceClient> {
        let server = ServerArgs {
            data_dir: self.data_dir.clone(),
            ca: self.dps_ca.clone(),
            port: self.port,
            json: self.json,
        };
        connect(self.dps_connection_string.as_deref(), &server, Api::Dps).map(ServiceClient::new)
    }
}

/// Settings shared by `create` and `update`.
#[derive(Args, Debug)]
pub struct LinkedHubSettings {
    /// Relative weight for hashed allocation, 1 to 1000 [default: 1].
    #[arg(long)]
    pub allocation_weight: Option<u32>,
    /// Whether allocation policies may pick the hub [default: true].
    #[arg(long, value_name = "BOOL")]
    pub apply_allocation_policy: Option<bool>,
    /// The hub's region (for geoLatency allocation).
    #[arg(long)]
    pub location: Option<String>,
    /// PEM CA certificate(s) to trust for the hub besides the system's (another dps server's
    /// ca.pem).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
}

/// `dps linked-hub create`
#[derive(Args, Debug)]
pub struct LinkedHubCreate {
    /// The hub's connection string, of a policy with RegistryWrite
    /// (`HostName=…;SharedAccessKeyName=…;SharedAccessKey=…`).
    #[arg(long, hide_env_values = true)]
    pub connection_string: String,
    #[command(flatten)]
    pub settings: LinkedHubSettings,
    #[command(flatten)]
    pub target: LinkedHubTarget,
}

/// `dps linked-hub update`
#[derive(Args, Debug)]
pub struct LinkedHubUpdate {
    /// The linked hub's host name.
    #[arg(long)]
    pub hub_host_name: String,
    /// A new connection string [default: keep the linked one].
    #[arg(long)]
    pub connection_string: Option<String>,
    #[command(flatten)]
    pub settings: LinkedHubSettings,
    #[command(flatten)]
    pub target: LinkedHubTarget,
}

/// `dps linked-hub show|delete`
#[derive(Args, Debug)]
pub struct LinkedHubName {
    /// The linked hub's host name.
    #[arg(long)]
    pub hub_host_name: String,
    #[command(flatten)]
    pub target: LinkedHubTarget,
}

impl LinkedHubSettings {
    /// Applies the settings given over `hub`'s.
    fn apply(&self, hub: &mut LinkedHubDescription) -> Result<()> {
        if let Some(w) = self.allocation_weight {
            hub.allocation_weight = Some(w);
        }
        if let Some(a) = self.apply_allocation_policy {
            hub.apply_allocation_policy = Some(a);
        }
        if let Some(l) = &self.location {
            hub.location = Some(l.clone());
        }
        if let Some(path) = &self.ca {
            let pem = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            hub.ca_certificates = Some(pem);
        }
        Ok(())
    }
}

/// Runs `dps linked-hub …`.
pub async fn run(cmd: LinkedHubCommand) -> Result<()> {
    match cmd {
        LinkedHubCommand::Create(a) => {
            let host = ConnectionString::parse(&a.connection_string)
                .context("invalid --connection-string")?
                .host_name;
            let mut hub = LinkedHubDescription {
                connection_string: a.connection_string.clone(),
                ..Default::default()
            };
            a.settings.apply(&mut hub)?;
            let linked = a
                .target
                .client()?
                .put_linked_hub(&host, &hub)
                .await
                .with_context(|| format!("cannot link hub '{host}'"))?;
            show(&to_value(&linked)?, a.target.json);
        }
        LinkedHubCommand::List(t) => {
            let hubs = t
                .client()?
                .list_linked_hubs()
                .await
                .context("cannot list linked hubs")?;
            let v = to_value(&hubs)?;
            if t.json {
                output::json(&v);
            } else {
                let rows: Vec<Vec<String>> = hubs
                    .iter()
                    .map(|h| {
                        vec![
                            h.name.clone(),
                            h.allocation_weight.unwrap_or(1).to_string(),
                            h.apply_allocation_policy.unwrap_or(true).to_string(),
                            h.location.clone().unwrap_or_default(),
                        ]
                    })
                    .collect();
                output::table(&["HOST NAME", "WEIGHT", "APPLY ALLOCATION POLICY", "LOCATION"], &rows);
            }
        }
        LinkedHubCommand::Show(a) => {
            let hub = a
                .target
                .client()?
                .get_linked_hub(&a.hub_host_name)
                .await
                .with_context(|| format!("cannot show linked hub '{}'", a.hub_host_name))?;
            show(&to_value(&hub)?, a.target.json);
        }
        LinkedHubCommand::Update(a) => {
            let client = a.target.client()?;
            let mut hub = client
                .get_linked_hub(&a.hub_host_name)
                .await
                .with_context(|| format!("cannot read linked hub '{}'", a.hub_host_name))?;
            // The answer's key is redacted: send none, and the service keeps the linked one.
            hub.connection_string = a.connection_string.clone().unwrap_or_default();
            let before = hub.clone();
            a.settings.apply(&mut hub)?;
            if hub == before && a.connection_string.is_none() {
                bail!("nothing to update: give --connection-string, --allocation-weight, --apply-allocation-policy, --location or --ca");
            }
            let updated = client
                .put_linked_hub(&a.hub_host_name, &hub)
                .await
                .with_context(|| format!("cannot update linked hub '{}'", a.hub_host_name))?;
            show(&to_value(&updated)?, a.target.json);
        }
        LinkedHubCommand::Delete(a) => {
            a.target
                .client()?
                .delete_linked_hub(&a.hub_host_name)
                .await
                .with_context(|| format!("cannot unlink hub '{}'", a.hub_host_name))?;
            if a.target.json {
                output::deleted("name", &a.hub_host_name);
            } else {
                out!("unlinked hub {}", a.hub_host_name);
            }
        }
    }
    Ok(())
}

fn show(v: &Value, json: bool) {
    output::show(
        v,
        json,
        &[
            ("host name", "name"),
            ("connection string", "connectionString"),
            ("allocation weight", "allocationWeight"),
            ("apply allocation policy", "applyAllocationPolicy"),
            ("location", "location"),
        ],
    );
}

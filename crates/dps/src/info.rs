//! `dps info`: how to connect, read from the data directory (the server need not be running).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use dps_datadir::{DataDir, HubIdentity, Identity};
use dps_proto::connection_string::ConnectionString;
use dps_server::{ServerConfig, Services};
use serde::Serialize;

/// `dps info` flags.
#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Data directory of the server.
    #[arg(long, env = "DPS_DATA_DIR", default_value = "./dps-data")]
    data_dir: PathBuf,
    /// Host name to put in connection strings [default: the server's first --hostname, as
    /// recorded at its last start].
    #[arg(long)]
    hostname: Option<String>,
    /// Print one JSON object (for scripts).
    #[arg(long)]
    json: bool,
}

/// The facts scripts and tests rely on; field names are a stable contract.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Info {
    pub id_scope: String,
    pub provisioning_host: String,
    pub service_connection_string: String,
    pub hub_host_name: String,
    pub hub_connection_string: String,
    /// The hub's Event Hub-compatible endpoint, as the Event Hubs SDKs take it
    /// (`Endpoint=sb://{hub host}/;SharedAccessKeyName=…;SharedAccessKey=…;EntityPath=…`), with
    /// the hub's `service` policy (the first with `ServiceConnect` when there is none).
    pub event_hub_connection_string: String,
    /// Every embedded hub (the one above first; more when the server runs several,
    /// `--hub-hostname` given more than once), each with its own connection strings.
    pub hubs: Vec<HubInfo>,
    pub ca_certificate_path: Option<String>,
    /// The local RSA root. The server presents an RSA certificate chained to it to clients that
    /// offer only RSA signatures (device TLS stacks built without ECDSA), and the P-256 one
    /// chained to `caCertificatePath` to everyone else; such devices trust this file instead.
    pub rsa_ca_certificate_path: Option<String>,
    pub data_dir: String,
    /// The ports the server listens on (from its last start; absent before the first): MQTT
    /// (DPS and hub), HTTPS (device, service and registry APIs, MQTT and AMQP over WebSockets)
    /// and AMQP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mqtt_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub https_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amqp_port: Option<u16>,
}

/// One embedded hub: its host name and connection strings (owner policy; Event
/// Hub-compatible endpoint).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HubInfo {
    pub host_name: String,
    pub connection_string: String,
    pub event_hub_connection_string: String,
}

impl HubInfo {
    fn of(hub: &HubIdentity, amqp_port: Option<u16>) -> Self {
        let owner = hub.owner_policy().expect("a hub has a policy");
        HubInfo {
            host_name: hub.host_name.clone(),
            connection_string: ConnectionString::service(&hub.host_name, &owner.key_name, &owner.primary_key)
                .to_string(),
            event_hub_connection_string: event_hub_connection_string(hub, amqp_port),
        }
    }
}

/// The listening ports of a server: MQTT, HTTPS, AMQP (0: unknown, a data directory last served
/// by a version without AMQP).
type Ports = (u16, u16, u16);

impl Info {
    fn build(dir: &DataDir, id: &Identity, provisioning_host: &str, ports: Option<Ports>) -> Self {
        let owner = id.owner_policy().expect("a service has a policy");
        let (ca, rsa_ca) = (dir.ca_cert_path(), dir.rsa_ca_cert_path());
        let amqp_port = ports.map(|p| p.2);
        let first = HubInfo::of(&id.hub, amqp_port);
        Info {
            id_scope: id.id_scope.clone(),
            provisioning_host: provisioning_host.to_string(),
            service_connection_string: ConnectionString::service(
                provisioning_host,
                &owner.key_name,
                &owner.primary_key,
            )
            .to_string(),
            hub_host_name: first.host_name.clone(),
            hub_connection_string: first.connection_string.clone(),
            event_hub_connection_string: first.event_hub_connection_string.clone(),
            hubs: id.hubs().map(|h| HubInfo::of(h, amqp_port)).collect(),
            ca_certificate_path: ca.exists().then(|| absolute(&ca)),
            rsa_ca_certificate_path: rsa_ca.exists().then(|| absolute(&rsa_ca)),
            data_dir: absolute(dir.root()),
            mqtt_port: ports.map(|p| p.0),
            https_port: ports.map(|p| p.1),
            amqp_port: amqp_port.filter(|p| *p != 0),
        }
    }

    /// What clients trust, for people: the CA file, and the RSA one for TLS stacks without
    /// ECDSA when there is one. `None` when the data directory has no CA (a brought certificate).
    pub fn trust(&self) -> Option<String> {
        let ca = self.ca_certificate_path.as_deref()?;
        Some(match &self.rsa_ca_certificate_path {
            Some(rsa) => format!("{ca} ({rsa} for TLS stacks without ECDSA)"),
            None => ca.to_string(),
        })
    }

    /// From a running server.
    pub fn from_services(s: &Services, config: &ServerConfig) -> Self {
        let ports = (config.mqtt_port, config.https_port, config.amqp_port);
        Self::build(
            &DataDir::new(&config.data_dir),
            &s.identity,
            config.provisioning_host(),
            Some(ports),
        )
    }
}

/// The Event Hub-compatible connection string; the AMQP port goes into the endpoint when it is
/// not the standard 5671.
fn event_hub_connection_string(hub: &HubIdentity, amqp_port: Option<u16>) -> String {
    let policies = &hub.policies;
    let policy = policies
        .iter()
        .find(|p| p.key_name.eq_ignore_ascii_case("service"))
        .or_else(|| policies.iter().find(|p| p.has_right("ServiceConnect")))
        .or(hub.owner_policy())
        .expect("a hub has a policy");
    let port = amqp_port
        .filter(|p| *p != 0 && *p != 5671)
        .map(|p| format!(":{p}"))
        .unwrap_or_default();
    format!(
        "Endpoint=sb://{}{port}/;SharedAccessKeyName={};SharedAccessKey={};EntityPath={}",
        hub.host_name,
        policy.key_name,
        policy.primary_key,
        dps_server::amqp::event_hub::event_hub_name(&hub.host_name)
    )
}

fn absolute(p: &std::path::Path) -> String {
    std::fs::canonicalize(p)
        .unwrap_or_else(|_| p.to_path_buf())
        .display()
        .to_string()
}

/// Prints the info.
pub fn run(args: InfoArgs) -> Result<()> {
    let dir = DataDir::new(&args.data_dir);
    let id = dir.load_identity()?;
    let host = args
        .hostname
        .or_else(|| dir.last_provisioning_host())
        .unwrap_or_else(|| "localhost".into());
    let ports = dir.runtime().map(|r| (r.mqtt_port, r.https_port, r.amqp_port));
    let info = Info::build(&dir, &id, &host, ports);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        println!("ID scope            {}", info.id_scope);
        println!("provisioning host   {}", info.provisioning_host);
        if let (Some(m), Some(h)) = (info.mqtt_port, info.https_port) {
            let amqp = info.amqp_port.map(|a| format!(", AMQP {a}")).unwrap_or_default();
            println!("ports               MQTT {m}, HTTPS {h}{amqp}");
        }
        println!("IoT hub             {}", info.hub_host_name);
        println!("trust this CA       {}", info.trust().as_deref().unwrap_or("-"));
        println!("service connection  {}", info.service_connection_string);
        println!("hub connection      {}", info.hub_connection_string);
        println!("event hub endpoint  {}", info.event_hub_connection_string);
        for hub in &info.hubs[1..] {
            println!("IoT hub             {}", hub.host_name);
            println!("  hub connection    {}", hub.connection_string);
            println!("  event hub         {}", hub.event_hub_connection_string);
        }
    }
    Ok(())
}

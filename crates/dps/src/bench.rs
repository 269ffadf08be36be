//! `dps bench`: finds the server under test (flags, environment, data directory) and prints the
//! report of the load generator in `dps-bench`.

use std::sync::Arc;

use anyhow::{anyhow, Result};
use clap::Args;
use dps_client::{RegistryClient, ServiceClient};
use dps_datadir::DataDir;

use crate::output;
use crate::remote::{connect, read_ca, Api, ServerArgs};

/// `dps bench`
#[derive(Args, Debug)]
pub struct BenchCommand {
    #[command(flatten)]
    pub bench: dps_bench::BenchArgs,
    /// Service connection string [default: the data directory's owner policy].
    #[arg(long, env = "DPS_CONNECTION_STRING", hide_env_values = true)]
    pub connection_string: Option<String>,
    /// Hub connection string, to delete the hub devices the run created [default: the data
    /// directory's hub owner policy].
    #[arg(long, env = "DPS_HUB_CONNECTION_STRING", hide_env_values = true)]
    pub hub_connection_string: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// The server's local CA (certificate and key from its data directory).
fn local_ca(dir: &DataDir) -> Result<dps_pki::ca::LocalCa> {
    let read =
        |p: std::path::PathBuf| std::fs::read_to_string(&p).map_err(|e| anyhow!("cannot read {}: {e}", p.display()));
    dps_pki::ca::LocalCa::from_pem(&read(dir.ca_cert_path())?, &read(dir.ca_key_path())?)
        .map_err(|e| anyhow!("the data directory's CA: {e}"))
}

/// Runs the benchmark and prints its report.
pub async fn run(a: BenchCommand) -> Result<()> {
    let controls = a.bench.validate()?;
    let dir = DataDir::new(&a.server.data_dir);
    let identity = dir
        .load_identity()
        .map_err(|_| anyhow!("no ID scope: use --data-dir of a server"))?;
    let runtime = dir.runtime();
    let ca_pem = read_ca(a.server.ca.as_deref(), &dir)?;
    let dps = Arc::new(ServiceClient::new(connect(
        a.connection_string.as_deref(),
        &a.server,
        Api::Dps,
    )?));
    let hub = connect(a.hub_connection_string.as_deref(), &a.server, Api::Hub)
        .ok()
        .map(|r| Arc::new(RegistryClient::new(r)));
    // The server's other embedded hubs, reached at the server's address (their names need not
    // resolve), each with its own owner key.
    let other_hubs = match (&a.hub_connection_string, dir.last_provisioning_host()) {
        (None, Some(server_host)) => identity
            .other_hubs
            .iter()
            .filter_map(|h| {
                let owner = h.owner_policy()?;
                let mut cs = dps_proto::connection_string::ConnectionString::service(
                    &h.host_name,
                    &owner.key_name,
                    &owner.primary_key,
                );
                cs.gateway_host_name = Some(server_host.clone());
                let port = a.server.port.or(runtime.as_ref().map(|r| r.https_port)).unwrap_or(443);
                let rest = dps_client::RestClient::new(&cs, port, &ca_pem).ok()?;
                Some(Arc::new(RegistryClient::new(rest)))
            })
            .collect(),
        _ => Vec::new(),
    };
    let (mqtt_port, https_port, amqp_port) = runtime
        .as_ref()
        .map(|r| (r.mqtt_port, r.https_port, r.amqp_port))
        .unwrap_or((8883, 443, 5671));
    let target = dps_bench::Target {
        dps,
        hub,
        other_hubs,
        id_scope: identity.id_scope,
        hub_host: identity.hub.host_name.clone(),
        ca_pem,
        mqtt_port,
        https_port: a.server.port.unwrap_or(https_port),
        amqp_port,
        hub_policy: identity
            .hub
            .policies
            .iter()
            .find(|p| p.has_right("ServiceConnect"))
            .map(|p| (p.key_name.clone(), p.primary_key.clone())),
        webhook_ca: match a.bench.webhook_delay_ms {
            Some(_) => Some(local_ca(&dir)?),
            None => None,
        },
    };
    let report = dps_bench::run(&a.bench, controls, target).await?;
    if a.server.json {
        output::json(&report);
    } else {
        dps_bench::print_human(&report);
    }
    Ok(())
}

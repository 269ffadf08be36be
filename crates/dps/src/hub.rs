//! `dps hub …`: the embedded (or any linked) IoT hub's registry REST API and telemetry stream,
//! shaped like `az iot hub device-identity …`, `az iot hub device-twin …` and
//! `az iot hub monitor-events`.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use dps_proto::model::hub::{Twin, TwinProperties};
use dps_proto::rest::Route;
use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::output::{self, out, s, to_value};
use dps_client::error_chain as chain;

use crate::remote::HubTarget;

/// `dps hub …`
#[derive(Subcommand, Debug)]
pub enum HubCommand {
    /// Device identities in the hub registry.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Print device-to-cloud messages as they arrive (like `az iot hub monitor-events`).
    MonitorEvents(MonitorArgs),
}

/// `dps hub device …`
#[derive(Subcommand, Debug)]
pub enum DeviceCommand {
    /// List device identities.
    List(DeviceList),
    /// Show a device identity.
    Show(DeviceShow),
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
            let v = to_value(&devices)?;
            if a.target.server.json {
                output::json(&v);
            } else {
                let rows: Vec<Vec<String>> = v
                    .as_array()
                    .map(|a| a.as_slice())
                    .unwrap_or_default()
                    .iter()
                    .map(|d| {
                        vec![
                            s(d, "deviceId"),
                            s(d, "status"),
                            s(d, "connectionState"),
                            s(d, "authentication/type"),
                            s(d, "lastActivityTime"),
                        ]
                    })
                    .collect();
                output::table(&["DEVICE ID", "STATUS", "CONNECTION", "AUTH", "LAST ACTIVITY"], &rows);
            }
        }
        HubCommand::Device(DeviceCommand::Show(a)) => {
            let id = &a.device_id;
            let device = a
                .target
                .client()?
                .get_device(id)
                .await
                .with_context(|| format!("cannot show device '{id}'"))?;
            let v = to_value(&device)?;
            if a.target.server.json {
                output::json(&v);
            } else {
                output::fields(&[
                    ("device id", s(&v, "deviceId")),
                    ("status", s(&v, "status")),
                    ("status reason", s(&v, "statusReason")),
                    ("connection", s(&v, "connectionState")),
                    ("authentication", s(&v, "authentication/type")),
                    ("primary key", s(&v, "authentication/symmetricKey/primaryKey")),
                    ("secondary key", s(&v, "authentication/symmetricKey/secondaryKey")),
                    (
                        "primary thumbprint",
                        s(&v, "authentication/x509Thumbprint/primaryThumbprint"),
                    ),
                    ("edge enabled", s(&v, "capabilities/iotEdge")),
                    ("C2D queued", s(&v, "cloudToDeviceMessageCount")),
                    ("last activity", s(&v, "lastActivityTime")),
                    ("generation id", s(&v, "generationId")),
                    ("etag", s(&v, "etag")),
                ]);
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
        HubCommand::MonitorEvents(a) => monitor(a).await?,
    }
    Ok(())
}

/// Reads the server's NDJSON telemetry stream and prints each event until Ctrl-C, the idle
/// timeout, or `--max-events`.
async fn monitor(a: MonitorArgs) -> Result<()> {
    let client = a.target.client()?;
    let r = client.rest();
    let mut query: Vec<(&str, String)> = Vec::new();
    if let Some(d) = &a.device_id {
        query.push(("deviceId", d.clone()));
    }
    if let Some(n) = a.from_sequence {
        query.push(("from-sequence", n.to_string()));
    }
    let q: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut resp = r
        .request(&Route::MonitorEvents, &q)?
        .send()
        .await
        .map_err(|e| anyhow!("cannot reach {}: {}", r.host(), chain(&e)))?;
    if !resp.status().is_success() {
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap_or_default();
        return Err(
            anyhow::Error::from(dps_client::ClientError::from_error_body(status, &body))
                .context("cannot monitor events"),
        );
    }
    if !a.target.server.json {
        let filter = a
            .device_id
            .as_deref()
            .map(|d| format!(" of device {d}"))
            .unwrap_or_default();
        eprintln!("monitoring events{filter} on {} (Ctrl-C to stop)", r.host());
    }
    let idle = (a.timeout > 0).then(|| Duration::from_secs(a.timeout));
    let mut deadline = idle.map(|d| Instant::now() + d);
    let mut buf: Vec<u8> = Vec::new();
    let mut seen: u64 = 0;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        if a.max_events.is_some_and(|m| seen >= m) {
            break;
        }
        let chunk = tokio::select! {
            c = resp.chunk() => c.map_err(|e| anyhow!("the event stream broke: {}", chain(&e)))?,
            _ = sleep_until_opt(deadline) => break,
            _ = &mut ctrl_c => break,
        };
        let Some(chunk) = chunk else {
            bail!("the server closed the event stream")
        };
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let line = &line[..line.len() - 1];
            // Blank lines are the server's heartbeats.
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let event: Value = serde_json::from_slice(line)
                .with_context(|| format!("event is not JSON: {}", String::from_utf8_lossy(line)))?;
            if a.target.server.json {
                out!("{event}");
            } else {
                output::json(&event);
            }
            seen += 1;
            deadline = idle.map(|d| Instant::now() + d);
            if a.max_events.is_some_and(|m| seen >= m) {
                break;
            }
        }
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

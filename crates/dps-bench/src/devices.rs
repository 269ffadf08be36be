//! One simulated device: its identity within the run, what it shares with the others (`Ctx`),
//! and the per-device flows of each mode with either client.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use dps_client::Transport;
use dps_proto::model::device::DeviceRegistration;
use dps_proto::model::service::RegistrationStatus;
use rustls::ClientConfig;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use super::identity::{registration_id, Credentials};
use super::wire::{Endpoint, Trust};
use super::{amqp, https, mqtt, sdk, ClientKind, Mode};

/// Lifetime of the SAS tokens devices sign (the SDK's default).
const SAS_TTL_SECS: u64 = 3600;
/// Keep-alive of hub sessions in `cycle` (the SDK's default).
pub const HUB_KEEP_ALIVE: u16 = 60;
/// Wait before retrying a throttled request without `retry-after` (the SDK's default).
const DEFAULT_RETRY: Duration = Duration::from_secs(2);
/// Longest wait before retrying a throttled request (the SDK's cap).
const MAX_RETRY: Duration = Duration::from_secs(60);

/// What all devices of a run share.
pub struct Ctx {
    /// Which client implementation devices use.
    pub client: ClientKind,
    /// How devices reach DPS.
    pub transport: Transport,
    /// The DPS host name (for the SDK client).
    pub dps_host: String,
    /// The DPS MQTT listener.
    pub dps_mqtt: Endpoint,
    /// The DPS HTTPS listener.
    pub dps_https: Endpoint,
    /// The DPS AMQP listener.
    pub dps_amqp: Endpoint,
    /// `Host` header of HTTPS requests.
    pub https_authority: String,
    /// AMQP port (DPS and hub; the SDK client resolves the hosts itself).
    pub amqp_port: u16,
    /// MQTT port (DPS and hub).
    pub mqtt_port: u16,
    /// The ID scope.
    pub id_scope: String,
    /// The embedded hub's host name and its MQTT listener, resolved once.
    pub hub: (String, Endpoint),
    /// CA PEM (for the SDK client, which builds its own TLS configuration per device).
    pub ca_pem: String,
    /// TLS trust for the lean client.
    pub trust: Trust,
    /// How devices authenticate.
    pub credentials: Credentials,
    /// Prefix of the registration ids (also the enrollment group id).
    pub run_id: String,
    /// Source addresses, used round-robin by device index (lean client only).
    pub sources: Vec<IpAddr>,
    /// Devices send a certificate signing request with their registration.
    pub csr: bool,
}

impl Ctx {
    /// The MQTT endpoint of hub `host` (the resolved one for the embedded hub).
    pub async fn hub_endpoint(&self, host: &str) -> Result<Endpoint, String> {
        if host.eq_ignore_ascii_case(&self.hub.0) {
            return Ok(self.hub.1.clone());
        }
        Endpoint::resolve(host, self.mqtt_port)
            .await
            .map_err(|_| "resolve the hub".to_string())
    }
}

/// Device `index` of the run.
pub struct Device<'a> {
    /// The run.
    pub ctx: &'a Ctx,
    /// Position in the run (selects certificate and source address).
    pub index: usize,
    /// Registration id (= X.509 common name = hub device id).
    pub id: String,
}

impl<'a> Device<'a> {
    /// Device `index` of `ctx`'s run.
    pub fn new(ctx: &'a Ctx, index: usize) -> Self {
        Device {
            ctx,
            index,
            id: registration_id(&ctx.run_id, index),
        }
    }

    /// The source address this device connects from.
    pub fn source(&self) -> Option<IpAddr> {
        let s = &self.ctx.sources;
        (!s.is_empty()).then(|| s[self.index % s.len()])
    }

    /// Its TLS client configuration.
    pub fn tls_config(&self) -> Result<Arc<ClientConfig>, String> {
        self.ctx.credentials.tls_config(&self.ctx.trust, self.index)
    }

    /// A SAS token for `resource` signed with the device key; `None` for X.509 devices.
    pub fn sas(&self, resource: &str, key_name: Option<&str>) -> Option<String> {
        let key = self.ctx.credentials.device_key(&self.id)?;
        let expiry = unix_now() + SAS_TTL_SECS;
        dps_proto::sas::build_token_with(resource, expiry, key_name, |m| {
            Ok::<_, Infallible>(dps_proto::sas::hmac_sha256(&key, m))
        })
        .ok()
    }

    /// The device API version the registration names: the one that takes a `csr` when the run
    /// asks for certificates, as the SDK does.
    pub fn api_version(&self) -> &'static str {
        match self.ctx.csr {
            true => dps_client::CSR_API_VERSION,
            false => dps_client::DEVICE_API_VERSION,
        }
    }

    /// The register request body, exactly as the SDK serializes it; with a fresh P-256 key's
    /// certificate signing request when the run asks for certificates.
    pub fn registration_body(&self) -> Vec<u8> {
        let csr = self.ctx.csr.then(|| {
            dps_pki::csr::new_key_and_request(&self.id, dps_pki::ca::KeyAlgorithm::EcdsaP256)
                .map(|(_, der)| dps_proto::keys::encode_key(&der))
                .unwrap_or_default()
        });
        serde_json::to_vec(&DeviceRegistration {
            registration_id: Some(self.id.clone()),
            csr,
            ..Default::default()
        })
        .unwrap_or_default()
    }
}

/// Where DPS assigned a device.
#[derive(Debug, Clone)]
pub struct Assignment {
    /// Hub host name.
    pub hub: String,
    /// Device id in that hub.
    pub device_id: String,
}

/// What a DPS answer asks for next.
pub enum Answer {
    /// Registered.
    Assigned(Assignment),
    /// Poll this operation: at once after the register (a dps server has already assigned),
    /// after the delay when a poll was answered `assigning` again (the server's retry-after, at
    /// least `dps_client::MIN_REPOLL_INTERVAL`: Azure allows 5 polls per device per 10 s).
    Poll(String, Duration),
    /// Throttled or a server error: repeat after the delay; the kind if retries run out.
    Retry(Duration, String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OperationWire {
    #[serde(default)]
    operation_id: Option<String>,
    status: RegistrationStatus,
    #[serde(default)]
    registration_state: Option<StateWire>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StateWire {
    #[serde(default)]
    assigned_hub: Option<String>,
    #[serde(default)]
    device_id: Option<String>,
    #[serde(default)]
    error_code: Option<i64>,
}

/// Interprets a DPS answer (MQTT and HTTPS alike: same statuses, same bodies). Errors are kinds
/// for the report, the same as the SDK's errors produce.
pub fn interpret(status: u16, retry_after: Option<u32>, body: &[u8]) -> Result<Answer, String> {
    if status == 429 || status >= 500 {
        let delay = retry_after.map_or(DEFAULT_RETRY, |s| Duration::from_secs(u64::from(s)));
        return Ok(Answer::Retry(delay.min(MAX_RETRY), service_kind(status, body)));
    }
    if !(200..300).contains(&status) {
        return Err(service_kind(status, body));
    }
    let w: OperationWire = serde_json::from_slice(body).map_err(|_| "protocol: answer is not an operation status")?;
    let repoll = retry_after
        .map_or(DEFAULT_RETRY, |s| Duration::from_secs(u64::from(s)))
        .clamp(dps_client::MIN_REPOLL_INTERVAL, MAX_RETRY);
    match w.status {
        RegistrationStatus::Assigning => w
            .operation_id
            .filter(|o| !o.is_empty())
            .map(|op| Answer::Poll(op, repoll))
            .ok_or_else(|| "protocol: assigning without operationId".into()),
        RegistrationStatus::Assigned => {
            let s = w
                .registration_state
                .ok_or("protocol: assigned without registrationState")?;
            match (s.assigned_hub, s.device_id) {
                (Some(hub), Some(device_id)) => Ok(Answer::Assigned(Assignment { hub, device_id })),
                _ => Err("protocol: assigned without assignedHub/deviceId".into()),
            }
        }
        other => Err(format!(
            "registration {other:?} {}",
            w.registration_state.and_then(|s| s.error_code).unwrap_or_default()
        )),
    }
}

/// Registration requests repeated after 429/5xx before giving up (the SDK's default).
const MAX_RETRIES: u32 = 3;

/// Where a registration stands between requests: the operation to poll, retries used.
#[derive(Debug, Default)]
pub struct Registering {
    /// The operation id once the register was answered `assigning`.
    pub operation: Option<String>,
    retries: u32,
}

impl Registering {
    /// Acts on an answer as the SDK does: done (`Some`) when assigned or failed; otherwise waits
    /// (`None`): not at all before the first poll (a dps server assigns synchronously), the
    /// poll interval before later ones, the retry-after before repeating a throttled or failed
    /// request, at most [`MAX_RETRIES`] times.
    pub async fn follow(&mut self, answer: Result<Answer, String>) -> Option<Result<Assignment, String>> {
        match answer {
            Ok(Answer::Assigned(a)) => Some(Ok(a)),
            Ok(Answer::Poll(op, repoll)) => {
                if self.operation.replace(op).is_some() {
                    tokio::time::sleep(repoll).await;
                }
                None
            }
            Ok(Answer::Retry(delay, kind)) => {
                self.retries += 1;
                if self.retries > MAX_RETRIES {
                    return Some(Err(kind));
                }
                tokio::time::sleep(delay).await;
                None
            }
            Err(kind) => Some(Err(kind)),
        }
    }
}

fn service_kind(status: u16, body: &[u8]) -> String {
    error_kind(&dps_client::ClientError::from_error_body(status, body))
}

/// A report kind for an SDK error: the service error code, or the error's first words.
pub fn error_kind(e: &dps_client::ClientError) -> String {
    match e.error_code() {
        Some(code) => format!("service {code}"),
        None => format!("{e}").split(':').next().unwrap_or("error").to_string(),
    }
}

/// Registers device `index` with the run's client and transport.
pub async fn register(ctx: &Ctx, index: usize) -> Result<Assignment, String> {
    let dev = Device::new(ctx, index);
    match (ctx.client, ctx.transport) {
        (ClientKind::Lean, Transport::Mqtt) => mqtt::register(&dev).await,
        (ClientKind::Lean, Transport::Https) => https::register(&dev).await,
        (ClientKind::Lean, Transport::Amqp) => amqp::register(&dev).await,
        (ClientKind::Sdk, _) => sdk::register(&dev).await.map(|(a, _)| a),
    }
}

/// The timed flow of device `index` in `mode` (`hold` and `telemetry` have their own, see
/// `hold.rs` and `telemetry.rs`).
pub async fn run(ctx: &Ctx, mode: Mode, index: usize) -> Result<(), String> {
    match mode {
        Mode::Tls => handshake(&Device::new(ctx, index)).await,
        Mode::Register => register(ctx, index).await.map(drop),
        Mode::Hold | Mode::Telemetry | Mode::Query => Err("hold, telemetry and query run their own flows".into()),
        Mode::Cycle if ctx.client == ClientKind::Sdk => sdk::cycle(&Device::new(ctx, index)).await,
        Mode::Cycle => {
            let a = register(ctx, index).await?;
            let dev = Device::new(ctx, index);
            let mut tls = mqtt::hub_tls(&dev, &a).await?;
            let mut io = mqtt::framed(&mut tls);
            mqtt::hub_handshake(&mut io, &dev, &a, HUB_KEEP_ALIVE).await?;
            mqtt::telemetry_and_twin(&mut io, &a.device_id).await
        }
    }
}

/// A bare TLS handshake (with the device's certificate for X.509) and close_notify against the
/// MQTT listener.
async fn handshake(dev: &Device<'_>) -> Result<(), String> {
    let mut tls = super::wire::tls(&dev.ctx.dps_mqtt, dev.source(), dev.tls_config()?).await?;
    let _ = tls.shutdown().await;
    Ok(())
}

/// Seconds since the epoch (SAS token expiry).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dps_answers() {
        let assigned = br#"{"operationId":"o","status":"assigned","registrationState":{"registrationId":"d","status":"assigned","assignedHub":"h","deviceId":"d"}}"#;
        assert!(
            matches!(interpret(200, None, assigned), Ok(Answer::Assigned(a)) if a.hub == "h" && a.device_id == "d")
        );
        let assigning = br#"{"operationId":"o","status":"assigning"}"#;
        assert!(
            matches!(interpret(202, Some(3), assigning), Ok(Answer::Poll(o, d)) if o == "o" && d == Duration::from_secs(3))
        );
        assert!(
            matches!(interpret(202, Some(1), assigning), Ok(Answer::Poll(_, d)) if d == dps_client::MIN_REPOLL_INTERVAL)
        );
        assert!(matches!(
            interpret(429, Some(5), br#"{"errorCode":429001}"#),
            Ok(Answer::Retry(d, k)) if d == Duration::from_secs(5) && k == "service 429001"
        ));
        assert_eq!(
            interpret(401, None, br#"{"errorCode":401002,"message":"x"}"#)
                .err()
                .unwrap(),
            "service 401002"
        );
        let failed = br#"{"operationId":"o","status":"failed","registrationState":{"registrationId":"d","status":"failed","errorCode":400209}}"#;
        assert_eq!(
            interpret(200, None, failed).err().unwrap(),
            "registration Failed 400209"
        );
        assert!(interpret(200, None, b"junk").is_err());
    }
}

//! `ProvisioningClient`: register a device with DPS over MQTT, HTTPS or AMQP and wait for its
//! assignment (device-protocol.md §1.3, §2, §3, §4), including the TPM challenge flow over HTTPS
//! (§7.2) and AMQP's SASL `TPM` mechanism (§7.4, in [`amqp`]).

mod amqp;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use dps_proto::dps_mqtt;
use dps_proto::model::device::{DeviceRegistration, TpmKeys};
use dps_proto::model::service::{RegistrationState, RegistrationStatus, Substatus};
use dps_proto::rest::Route;
use rumqttc::{ConnectionError, Event, Packet, QoS, SubscribeReasonCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use crate::mqtt;
use crate::security::{sas_token, AttestationKind, SecurityProvider};
use crate::ClientError;

/// Device API version sent on every request ([`dps_proto::api_version::DEVICE_CLIENT`]).
pub const DEVICE_API_VERSION: &str = dps_proto::api_version::DEVICE_CLIENT;
/// Device API version sent with a certificate signing request ([`ProvisioningClient::with_csr`]):
/// Azure takes `csr` from this version on.
pub const CSR_API_VERSION: &str = dps_proto::api_version::CSR_FROM;

/// `ClientVersion` / `User-Agent` of this SDK.
pub const CLIENT_VERSION: &str = concat!("dps-rust/", env!("CARGO_PKG_VERSION"));

/// The public Azure global device endpoint (what devices use when talking to Azure DPS).
pub const GLOBAL_ENDPOINT: &str = "global.azure-devices-provisioning.net";

/// How the device talks to DPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// MQTT 3.1.1 over TLS, port 8883 by default.
    #[default]
    Mqtt,
    /// HTTPS, port 443 by default.
    Https,
    /// AMQP 1.0 over TLS, port 5671 by default.
    Amqp,
}

impl Transport {
    /// The standard port: 8883 for MQTT, 443 for HTTPS, 5671 for AMQP (hard-coded in the
    /// Python and C SDKs).
    pub fn default_port(self) -> u16 {
        match self {
            Self::Mqtt => 8883,
            Self::Https => 443,
            Self::Amqp => 5671,
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Mqtt => "mqtt",
            Self::Https => "https",
            Self::Amqp => "amqp",
        })
    }
}

impl FromStr for Transport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "mqtt" => Ok(Self::Mqtt),
            "https" | "http" => Ok(Self::Https),
            "amqp" | "amqps" => Ok(Self::Amqp),
            other => Err(format!("unknown transport '{other}' (expected mqtt, https or amqp)")),
        }
    }
}

/// How long to wait between requests.
///
/// Azure DPS answers a register with `202 assigning` and a `retry-after` (seconds), and the
/// device polls the operation until it completes. A dps server assigns synchronously, so the
/// first poll already returns the result and waiting the full `retry-after` (3 s) would only slow
/// devices down. Hence the defaults: poll first after `min(retry-after, 1 s)`. A server that is
/// still assigning after that is genuinely slow: later polls wait its `retry-after` in full, and
/// at least [`MIN_REPOLL_INTERVAL`], so a device never polls more than Azure's 5 times in 10 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollOptions {
    /// Never poll sooner than this (default 0).
    pub min_interval: Duration,
    /// Never wait longer than this before the first poll, whatever `retry-after` says
    /// (default 1 s).
    pub max_interval: Duration,
    /// Assumed when the server sends no `retry-after` (default 2 s, the Python/Node default),
    /// before clamping.
    pub default_interval: Duration,
}

impl Default for PollOptions {
    fn default() -> Self {
        Self {
            min_interval: Duration::ZERO,
            max_interval: Duration::from_secs(1),
            default_interval: Duration::from_secs(2),
        }
    }
}

/// Longest wait before retrying a throttled (429) or failed (5xx) request.
const MAX_RETRY_INTERVAL: Duration = Duration::from_secs(60);

/// Shortest wait between two polls of the same operation: Azure throttles a device that polls
/// more than 5 times in 10 seconds (`429`), so polling every 2 s is the fastest that is never
/// refused.
pub const MIN_REPOLL_INTERVAL: Duration = Duration::from_secs(2);

impl PollOptions {
    /// The wait before the next status poll: `retry_after` (seconds) or the default, clamped to
    /// `[min_interval, max_interval]`.
    pub fn poll_delay(&self, retry_after: Option<u32>) -> Duration {
        let wanted = retry_after
            .map(|s| Duration::from_secs(u64::from(s)))
            .unwrap_or(self.default_interval);
        wanted.min(self.max_interval).max(self.min_interval)
    }

    /// The wait before polling again after a poll was answered `assigning`: `retry_after` in
    /// full (up to 60 s), at least [`MIN_REPOLL_INTERVAL`].
    pub fn repoll_delay(&self, retry_after: Option<u32>) -> Duration {
        self.retry_delay(retry_after).max(MIN_REPOLL_INTERVAL)
    }

    /// The wait before retrying a throttled or failed request. Unlike polling, a throttling
    /// server's `retry-after` is honoured in full (up to 60 s): retrying sooner only earns
    /// another 429.
    pub fn retry_delay(&self, retry_after: Option<u32>) -> Duration {
        let wanted = retry_after
            .map(|s| Duration::from_secs(u64::from(s)))
            .unwrap_or(self.default_interval);
        wanted.min(MAX_RETRY_INTERVAL).max(self.min_interval)
    }
}

/// The outcome of a successful registration: where the device goes next.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationResult {
    /// Registration id the device registered as.
    pub registration_id: String,
    /// Host name of the IoT hub the device was assigned to.
    pub assigned_hub: String,
    /// Device id in that hub (the enrollment's `deviceId`, else the registration id).
    pub device_id: String,
    /// Always `assigned` (failed and disabled results are errors).
    pub status: RegistrationStatus,
    /// `initialAssignment`, `deviceDataMigrated`, ... (what happened on re-registration).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub substatus: Option<Substatus>,
    /// Custom-allocation payload returned by the service, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    /// The operation id of the registration.
    pub operation_id: String,
    /// The enrollment group the device matched, for group enrollments.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enrollment_group_id: Option<String>,
    /// When the registration record was created.
    #[serde(with = "dps_proto::timefmt::record", skip_serializing_if = "Option::is_none")]
    pub created_date_time_utc: Option<DateTime<Utc>>,
    /// When it last changed.
    #[serde(with = "dps_proto::timefmt::record", skip_serializing_if = "Option::is_none")]
    pub last_updated_date_time_utc: Option<DateTime<Utc>>,
    /// Registration record etag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// The certificate the service issued for the request's CSR
    /// ([`ProvisioningClient::with_csr`]), then its CA chain: base64 DER, leaf first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued_certificate_chain: Option<Vec<String>>,
    /// The complete `registrationState`, for attestation-specific blocks (TPM
    /// `authenticationKey`, X.509 certificate info).
    #[serde(skip)]
    pub registration_state: RegistrationState,
}

impl RegistrationResult {
    fn from_state(operation_id: String, state: RegistrationState) -> Result<Self, ClientError> {
        let missing = |what: &str| ClientError::Protocol(format!("the registration is assigned but has no {what}"));
        let assigned_hub = state
            .assigned_hub
            .clone()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| missing("assignedHub"))?;
        let device_id = state
            .device_id
            .clone()
            .filter(|d| !d.is_empty())
            .ok_or_else(|| missing("deviceId"))?;
        let enrollment_group_id = state
            .symmetric_key
            .as_ref()
            .and_then(|s| s.enrollment_group_id.clone())
            .or_else(|| state.x509.as_ref().and_then(|x| x.enrollment_group_id.clone()));
        Ok(Self {
            registration_id: state.registration_id.clone(),
            assigned_hub,
            device_id,
            status: RegistrationStatus::Assigned,
            substatus: state.substatus,
            payload: state.payload.clone().filter(|p| !p.is_null()),
            operation_id,
            enrollment_group_id,
            created_date_time_utc: state.created_date_time_utc,
            last_updated_date_time_utc: state.last_updated_date_time_utc,
            etag: state.etag.clone(),
            issued_certificate_chain: state.issued_certificate_chain.clone(),
            registration_state: state,
        })
    }
}

/// `RegistrationOperationStatus` as read by the device. Lenient where the proto model is strict
/// for the server's sake: real DPS may omit `registrationState` or `operationId` in some answers.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OperationStatusWire {
    #[serde(default)]
    operation_id: Option<String>,
    status: RegistrationStatus,
    #[serde(default)]
    registration_state: Option<RegistrationState>,
}

/// What to do after a response.
#[derive(Debug)]
enum Step {
    /// Registration complete.
    Done(Box<RegistrationResult>),
    /// Still assigning: poll `operation_id` after `delay`.
    Poll { operation_id: String, delay: Duration },
    /// Throttled or server error: repeat the same request after `delay`, unless retries are
    /// spent, in which case fail with `error`. Only server errors are `counted` against
    /// `max_retries`: a throttling server says when to come back, so a throttled device keeps
    /// coming back then, for as long as the registration's timeout allows.
    Retry {
        delay: Duration,
        error: ClientError,
        counted: bool,
    },
}

/// Interprets one response (HTTP or MQTT: same status codes, same bodies) to a register
/// request, or to a poll when `polled`. Pure, so every branch is unit-tested.
fn interpret(
    status: u16,
    retry_after: Option<u32>,
    body: &[u8],
    poll: &PollOptions,
    polled: bool,
) -> Result<Step, ClientError> {
    if status == 429 || status >= 500 {
        return Ok(Step::Retry {
            delay: poll.retry_delay(retry_after),
            error: ClientError::from_error_body(status, body),
            counted: status != 429,
        });
    }
    if !(200..300).contains(&status) {
        return Err(ClientError::from_error_body(status, body));
    }
    let wire: OperationStatusWire = serde_json::from_slice(body).map_err(|e| {
        ClientError::Protocol(format!(
            "status {status} body is not a RegistrationOperationStatus: {e}: {}",
            String::from_utf8_lossy(body)
        ))
    })?;
    let operation_id = wire.operation_id.unwrap_or_default();
    match wire.status {
        RegistrationStatus::Assigning => {
            if operation_id.is_empty() {
                return Err(ClientError::Protocol(
                    "status 'assigning' without an operationId to poll".into(),
                ));
            }
            let delay = if polled {
                poll.repoll_delay(retry_after)
            } else {
                poll.poll_delay(retry_after)
            };
            Ok(Step::Poll { operation_id, delay })
        }
        RegistrationStatus::Assigned => {
            let state = wire
                .registration_state
                .ok_or_else(|| ClientError::Protocol("status 'assigned' without a registrationState".into()))?;
            Ok(Step::Done(Box::new(RegistrationResult::from_state(
                operation_id,
                state,
            )?)))
        }
        s @ (RegistrationStatus::Failed | RegistrationStatus::Disabled) => {
            let state = wire.registration_state.unwrap_or_default();
            let message = state.error_message.unwrap_or_else(|| match s {
                RegistrationStatus::Disabled => "the enrollment for this device is disabled".to_string(),
                _ => "the service did not say why".to_string(),
            });
            Err(ClientError::RegistrationFailed {
                status: s,
                error_code: state.error_code,
                message,
            })
        }
        RegistrationStatus::Unassigned => Err(ClientError::Protocol(
            "status 'unassigned' (only expected in the TPM challenge flow)".into(),
        )),
    }
}

/// Registers a device with DPS and waits for its assignment.
///
/// ```no_run
/// # async fn demo() -> Result<(), dps_client::ClientError> {
/// use std::sync::Arc;
/// use dps_client::{ProvisioningClient, SymmetricKeyProvider, Transport};
/// let provider = Arc::new(SymmetricKeyProvider::from_group_key("dev-01", "R3JvdXBLZXk=")?);
/// let ca = std::fs::read_to_string("dps-data/ca.pem").unwrap();
/// let result = ProvisioningClient::new("dps.example.test", "0ne00000001", provider, &ca)
///     .with_transport(Transport::Https)
///     .register(None)
///     .await?;
/// println!("{} -> {}", result.device_id, result.assigned_hub);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ProvisioningClient {
    host: String,
    id_scope: String,
    provider: Arc<dyn SecurityProvider>,
    ca_pem: String,
    transport: Transport,
    port: Option<u16>,
    poll: PollOptions,
    timeout: Duration,
    max_retries: u32,
    sas_ttl: Duration,
    csr: Option<Vec<u8>>,
}

impl fmt::Debug for ProvisioningClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProvisioningClient")
            .field("host", &self.host)
            .field("port", &self.port())
            .field("id_scope", &self.id_scope)
            .field("registration_id", &self.provider.registration_id())
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

impl ProvisioningClient {
    /// A client for the DPS device endpoint `global_endpoint_host` (a dps server's host name, or
    /// [`GLOBAL_ENDPOINT`] for Azure), the service's `id_scope`, the device identity `provider`,
    /// trusting the CA certificate(s) in `ca_pem` for the server certificate. MQTT on 8883 unless
    /// configured otherwise. Nothing is validated or connected until [`register`](Self::register).
    pub fn new(global_endpoint_host: &str, id_scope: &str, provider: Arc<dyn SecurityProvider>, ca_pem: &str) -> Self {
        Self {
            host: global_endpoint_host.trim().to_string(),
            id_scope: id_scope.trim().to_string(),
            provider,
            ca_pem: ca_pem.to_string(),
            transport: Transport::Mqtt,
            port: None,
            poll: PollOptions::default(),
            timeout: Duration::from_secs(60),
            max_retries: 3,
            sas_ttl: Duration::from_secs(3600),
            csr: None,
        }
    }

    /// Sends a certificate signing request (DER PKCS#10, CN = the registration id) with the
    /// registration: the service issues the device's certificate by its enrollment's credential
    /// policy, and [`RegistrationResult::issued_certificate_chain`] carries it
    /// ([`dps_pki::csr::new_key_and_request`] makes a key and its request).
    pub fn with_csr(mut self, csr_der: Vec<u8>) -> Self {
        self.csr = Some(csr_der);
        self
    }

    /// Selects MQTT (default) or HTTPS.
    pub fn with_transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// Overrides the port (default: the transport's standard port, see [`Transport::default_port`]).
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Sets the polling policy (see [`PollOptions`]).
    pub fn with_poll_options(mut self, poll: PollOptions) -> Self {
        self.poll = poll;
        self
    }

    /// Bounds the whole registration, retries and polls included (default 60 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How often a failed (5xx) request is repeated before giving up (default 3). A throttled
    /// (429) request is repeated after the server's `retry-after` until the registration's
    /// timeout: throttling is the server pacing a fleet, not a failure of this device.
    pub fn with_max_retries(mut self, retries: u32) -> Self {
        self.max_retries = retries;
        self
    }

    /// Lifetime of the SAS tokens this client signs (default 1 h, as the Python SDK).
    pub fn with_sas_ttl(mut self, ttl: Duration) -> Self {
        self.sas_ttl = ttl;
        self
    }

    /// The device API version this client's requests name: [`CSR_API_VERSION`] when it sends
    /// a certificate signing request, else [`DEVICE_API_VERSION`].
    pub fn api_version(&self) -> &'static str {
        match self.csr {
            Some(_) => CSR_API_VERSION,
            None => DEVICE_API_VERSION,
        }
    }

    /// The transport in use.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// The port that will be used.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or_else(|| self.transport.default_port())
    }

    /// The registration id (from the security provider).
    pub fn registration_id(&self) -> &str {
        self.provider.registration_id()
    }

    /// Registers the device (with an optional custom-allocation `payload`), polls until the
    /// operation completes, and returns the assignment. A `failed` or `disabled` outcome is
    /// [`ClientError::RegistrationFailed`]; an error answer is [`ClientError::Service`] with
    /// the service's `errorCode` and message.
    #[tracing::instrument(skip_all, fields(registration_id = %self.provider.registration_id(), transport = %self.transport, host = %self.host))]
    pub async fn register(&self, payload: Option<Value>) -> Result<RegistrationResult, ClientError> {
        let reg_id = self.provider.registration_id();
        dps_proto::registration_id::validate(reg_id)
            .map_err(|e| ClientError::Credential(format!("registration id: {e}")))?;
        let tpm = self.provider.kind() == AttestationKind::Tpm;
        let tpm_keys = if tpm {
            if self.transport == Transport::Mqtt {
                return Err(ClientError::Unsupported(format!(
                    "TPM attestation needs the HTTPS transport or AMQP, not {} (its challenge is an \
                     HTTP 401 or a SASL exchange; the Azure SDKs have no TPM over MQTT either)",
                    self.transport
                )));
            }
            Some(self.provider.tpm_keys()?)
        } else {
            None
        };
        let body = serde_json::to_vec(&DeviceRegistration {
            registration_id: Some(reg_id.to_string()),
            tpm: tpm_keys.as_ref().map(|keys| TpmKeys {
                endorsement_key: b64(&keys.endorsement_key),
                storage_root_key: Some(b64(&keys.storage_root_key)),
            }),
            payload,
            csr: self.csr.as_deref().map(b64),
            ..Default::default()
        })
        .map_err(|e| ClientError::Protocol(format!("cannot serialize the registration body: {e}")))?;
        let started = Instant::now();
        let result = match tokio::time::timeout(self.timeout, async {
            let result = match self.transport {
                Transport::Mqtt => self.register_mqtt(body).await?,
                Transport::Https => self.register_https(body, tpm).await?,
                Transport::Amqp => self.register_amqp(body, tpm_keys.as_ref()).await?,
            };
            if tpm {
                self.import_hub_key(&result).await?;
            }
            Ok::<_, ClientError>(result)
        })
        .await
        {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout {
                what: "the registration".into(),
                after: self.timeout,
            }),
        };
        match &result {
            Ok(r) => {
                tracing::info!(device_id = %r.device_id, hub = %r.assigned_hub, elapsed = ?started.elapsed(), "registered")
            }
            Err(e) => tracing::info!(error = %e, "registration failed"),
        }
        result
    }

    fn tls(&self) -> Result<Arc<rustls::ClientConfig>, ClientError> {
        crate::tls_config(self.provider.as_ref(), &self.ca_pem)
    }

    /// The SAS token for the DPS audience, signed as `key_name` (`registration`, or what a TPM
    /// challenge named), or `None` for certificate-based providers.
    fn sas(&self, key_name: &str) -> Result<Option<String>, ClientError> {
        if crate::presents_certificate(self.provider.as_ref()) {
            return Ok(None);
        }
        let resource = format!("{}/registrations/{}", self.id_scope, self.provider.registration_id());
        sas_token(self.provider.as_ref(), &resource, expiry(self.sas_ttl), Some(key_name)).map(Some)
    }

    /// Imports a base64 activation blob into the provider's TPM, on a blocking thread: the
    /// import runs RSA decryptions in the TPM, which take a while on real hardware.
    async fn import_tpm_blob(&self, blob_b64: &str, what: &str) -> Result<(), ClientError> {
        use base64::Engine as _;
        let blob = base64::engine::general_purpose::STANDARD
            .decode(blob_b64.trim())
            .map_err(|e| ClientError::Protocol(format!("the {what} is not valid base64: {e}")))?;
        self.import_tpm_bytes(blob, what).await
    }

    /// [`Self::import_tpm_blob`] for a blob that arrived as bytes (AMQP's SASL challenge).
    async fn import_tpm_bytes(&self, blob: Vec<u8>, what: &str) -> Result<(), ClientError> {
        let provider = self.provider.clone();
        tokio::task::spawn_blocking(move || provider.import_authentication_key(&blob))
            .await
            .map_err(|e| ClientError::Credential(format!("the TPM import of the {what} did not finish: {e}")))?
    }

    /// TPM: the assigned registration carries a second blob with the device's hub key
    /// (device-protocol.md §7.5); after importing it the provider signs hub SAS tokens.
    async fn import_hub_key(&self, result: &RegistrationResult) -> Result<(), ClientError> {
        let blob = result
            .registration_state
            .tpm
            .as_ref()
            .map(|t| t.authentication_key.as_str())
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                ClientError::Protocol(
                    "the TPM registration is assigned but has no registrationState.tpm.authenticationKey \
                     (the device's hub key)"
                        .into(),
                )
            })?;
        self.import_tpm_blob(blob, "hub key (registrationState.tpm.authenticationKey)")
            .await?;
        tracing::debug!("hub key imported into the TPM");
        Ok(())
    }

    async fn register_mqtt(&self, body: Vec<u8>) -> Result<RegistrationResult, ClientError> {
        let reg_id = self.provider.registration_id();
        let port = self.port();
        let (client, eventloop) = mqtt::client(
            mqtt::Connect {
                host: &self.host,
                port,
                client_id: reg_id,
                username: dps_mqtt::username(&self.id_scope, reg_id, self.api_version(), CLIENT_VERSION),
                password: self.sas("registration")?.unwrap_or_default(),
                tls: self.tls()?,
                keep_alive: Duration::from_secs(60),
                connect_timeout: Duration::from_secs(30),
            },
            16,
        );
        let (tx, mut events) = mpsc::unbounded_channel();
        let _task = mqtt::TaskGuard(mqtt::spawn(eventloop, move |ev| {
            if tx.send(ev).is_err() {
                std::ops::ControlFlow::Break(())
            } else {
                std::ops::ControlFlow::Continue(())
            }
        }));
        let context = format!("MQTT connection to {}:{port}", self.host);

        #[derive(Clone)]
        enum Request {
            Register,
            Poll(String),
        }
        let publish = |req: &Request| -> Result<String, ClientError> {
            let rid = uuid::Uuid::new_v4().to_string();
            let (topic, payload) = match req {
                Request::Register => (dps_mqtt::register_topic(&rid), body.clone()),
                Request::Poll(op) => (dps_mqtt::operation_status_topic(&rid, op), Vec::new()),
            };
            tracing::debug!(%topic, "publishing");
            client
                .try_publish(topic, QoS::AtLeastOnce, false, payload)
                .map_err(|e| ClientError::connection("publishing a DPS request", &e))?;
            Ok(rid)
        };

        let mut current: Option<(String, Request)> = None;
        let mut next: Option<(Instant, Request)> = None;
        let mut retries = 0;
        let result = loop {
            let wake = next
                .as_ref()
                .map(|(at, _)| *at)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                ev = events.recv() => {
                    let Some(ev) = ev else { break Err(ClientError::Disconnected("the DPS response".into())) };
                    match ev {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            tracing::debug!("connected; subscribing");
                            if let Err(e) = client.try_subscribe(dps_mqtt::RESPONSE_FILTER, QoS::AtLeastOnce) {
                                break Err(ClientError::connection("subscribing to DPS responses", &e));
                            }
                        }
                        Ok(Event::Incoming(Packet::SubAck(ack))) => {
                            if ack.return_codes.iter().any(|c| matches!(c, SubscribeReasonCode::Failure)) {
                                break Err(ClientError::Protocol(format!("the server refused the subscription to {}", dps_mqtt::RESPONSE_FILTER)));
                            }
                            match publish(&Request::Register) {
                                Ok(rid) => current = Some((rid, Request::Register)),
                                Err(e) => break Err(e),
                            }
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            let Some((status, rid, retry_after)) = dps_mqtt::parse_response_topic(&p.topic) else {
                                tracing::debug!(topic = %p.topic, "ignoring a publish that is not a DPS response");
                                continue;
                            };
                            let Some((_, req)) = current.as_ref().filter(|(r, _)| *r == rid).cloned() else {
                                tracing::debug!(%rid, "ignoring a response to another request");
                                continue;
                            };
                            current = None;
                            let step = interpret(status, retry_after, &p.payload, &self.poll, matches!(req, Request::Poll(_)));
                            match step.and_then(|step| self.follow(step, &mut retries)) {
                                Ok(Next::Done(r)) => break Ok(*r),
                                Ok(Next::After { delay, poll }) => {
                                    next = Some((Instant::now() + delay, poll.map(Request::Poll).unwrap_or(req)));
                                }
                                Err(e) => break Err(e),
                            }
                        }
                        Ok(_) => {}
                        Err(ConnectionError::ConnectionRefused(code)) => {
                            break Err(ClientError::ConnectionRefused { reason: format!("{code:?}") })
                        }
                        Err(e) => break Err(ClientError::connection(context.clone(), &e)),
                    }
                }
                _ = sleep_until(wake), if next.is_some() => {
                    if let Some((_, req)) = next.take() {
                        match publish(&req) {
                            Ok(rid) => current = Some((rid, req)),
                            Err(e) => break Err(e),
                        }
                    }
                }
            }
        };
        // Leave politely (Python sends DISCONNECT too); the task ends once it is sent.
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(2), async { while events.recv().await.is_some() {} }).await;
        result
    }

    /// Registers over HTTPS. With `tpm`, the first PUT carries no Authorization: the service
    /// answers 401 with an activation blob (the TPM challenge), which is imported before the
    /// PUT is sent again, signed with the key it carried (device-protocol.md §7.2).
    async fn register_https(&self, body: Vec<u8>, tpm: bool) -> Result<RegistrationResult, ClientError> {
        let tls = self.tls()?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .connect_timeout(Duration::from_secs(30))
            .timeout(Duration::from_secs(30))
            .user_agent(CLIENT_VERSION)
            .build()
            .map_err(|e| {
                ClientError::Tls(format!(
                    "cannot build the HTTPS client: {}",
                    crate::error::error_chain(&e)
                ))
            })?;
        let base = format!("https://{}:{}", url_host(&self.host), self.port());
        let (scope, registration_id) = (self.id_scope.clone(), self.provider.registration_id().to_string());
        let mut operation: Option<String> = None;
        let mut retries = 0;
        // One token for the whole registration, register and polls alike, as the C SDK does: a
        // dps server accepts a TPM challenge key for one attestation and recognizes the polls of
        // that operation by the very same token. A TPM device has none until it is challenged.
        let mut authorization = if tpm { None } else { self.sas("registration")? };
        let mut challenge_pending = tpm;
        loop {
            let req = match &operation {
                None => {
                    let route = Route::Register {
                        scope: scope.clone(),
                        registration_id: registration_id.clone(),
                    };
                    http.put(format!("{base}{}?api-version={}", route.path(), self.api_version()))
                        .body(body.clone())
                }
                Some(op) => {
                    let route = Route::OperationStatus {
                        scope: scope.clone(),
                        registration_id: registration_id.clone(),
                        operation_id: op.clone(),
                    };
                    http.get(format!("{base}{}?api-version={}", route.path(), self.api_version()))
                }
            };
            let mut req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json; charset=utf-8")
                .header(reqwest::header::ACCEPT, "application/json");
            if let Some(token) = &authorization {
                req = req.header(reqwest::header::AUTHORIZATION, token);
            }
            let what = if operation.is_some() {
                "polling the registration"
            } else {
                "registering"
            };
            let resp = req
                .send()
                .await
                .map_err(|e| ClientError::connection(format!("{what} at {base}"), &e))?;
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u32>().ok());
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| ClientError::connection(format!("reading the answer to {what}"), &e))?;
            if challenge_pending && status == 401 {
                let challenge = TpmChallengeWire::parse(&bytes)?;
                self.import_tpm_blob(&challenge.authentication_key, "TPM challenge (authenticationKey)")
                    .await?;
                tracing::debug!(key_name = %challenge.key_name, "TPM challenge imported; registering with a TPM-signed SAS");
                authorization = self.sas(&challenge.key_name)?;
                challenge_pending = false;
                continue;
            }
            let step = interpret(status, retry_after, &bytes, &self.poll, operation.is_some())?;
            match self.follow(step, &mut retries)? {
                Next::Done(r) => return Ok(*r),
                Next::After { delay, poll } => {
                    if poll.is_some() {
                        operation = poll;
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Follows a [`Step`] the same way on every transport: the registration, or what to send
    /// after how long. A failed (5xx) request counts against `max_retries` in `retries`; once
    /// they are spent, its error is the result.
    fn follow(&self, step: Step, retries: &mut u32) -> Result<Next, ClientError> {
        match step {
            Step::Done(r) => Ok(Next::Done(r)),
            Step::Poll { operation_id, delay } => {
                tracing::debug!(%operation_id, ?delay, "assigning; polling");
                Ok(Next::After {
                    delay,
                    poll: Some(operation_id),
                })
            }
            Step::Retry { delay, error, counted } => {
                *retries += u32::from(counted);
                if *retries > self.max_retries {
                    return Err(error);
                }
                tracing::debug!(%error, ?delay, retries = *retries, "transient error; retrying");
                Ok(Next::After { delay, poll: None })
            }
        }
    }
}

/// What a transport does after a response, retries counted ([`ProvisioningClient::follow`]).
#[derive(Debug)]
enum Next {
    /// Registration complete.
    Done(Box<RegistrationResult>),
    /// Send a request after `delay`: a poll of `poll`'s operation, or (`None`) the same request
    /// again.
    After { delay: Duration, poll: Option<String> },
}

/// The TPM challenge: the body of the 401 answer to an unauthenticated TPM registration.
/// Lenient like the SDKs: only `authenticationKey` is required, `keyName` defaults to
/// `registration` (C#), `message` is informational.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TpmChallengeWire {
    authentication_key: String,
    #[serde(default = "default_key_name")]
    key_name: String,
}

fn default_key_name() -> String {
    "registration".into()
}

impl TpmChallengeWire {
    /// The challenge in a 401 body; a 401 without one is the service refusing the device (no
    /// enrollment for this EK, ...), reported as that error.
    fn parse(body: &[u8]) -> Result<Self, ClientError> {
        match serde_json::from_slice::<Self>(body) {
            Ok(c) if !c.authentication_key.is_empty() => Ok(c),
            _ => Err(ClientError::from_error_body(401, body)),
        }
    }
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Seconds since the epoch `ttl` from now.
pub(crate) fn expiry(ttl: Duration) -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + ttl.as_secs()
}

/// A host for a URL: IPv6 literals need brackets.
pub(crate) fn url_host(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_with_a_csr_names_the_version_that_takes_one() {
        let provider = Arc::new(crate::SymmetricKeyProvider::new("dev", "AAAA").unwrap());
        let client = ProvisioningClient::new("h", "0ne00000000", provider, "");
        assert_eq!(client.api_version(), DEVICE_API_VERSION);
        assert_eq!(client.with_csr(vec![1]).api_version(), CSR_API_VERSION);
        assert!(dps_proto::api_version::DEVICE.contains(&CSR_API_VERSION));
    }

    const ASSIGNED: &str = r#"{"operationId":"4.abc.1","status":"assigned",
        "registrationState":{"registrationId":"dev-01","createdDateTimeUtc":"2025-01-01T00:00:00.0000000Z",
        "assignedHub":"hub1.example.test","deviceId":"dev-01-device","status":"assigned",
        "substatus":"initialAssignment","lastUpdatedDateTimeUtc":"2025-01-01T00:00:01.0000000Z",
        "etag":"IjAxIg==","symmetricKey":{"enrollmentGroupId":"grp1"},"payload":{"k":"v"}}}"#;

    #[test]
    fn assigned_result_is_parsed() {
        let Step::Done(r) = interpret(200, None, ASSIGNED.as_bytes(), &PollOptions::default(), false).unwrap() else {
            panic!()
        };
        assert_eq!(r.registration_id, "dev-01");
        assert_eq!(r.assigned_hub, "hub1.example.test");
        assert_eq!(r.device_id, "dev-01-device");
        assert_eq!(r.status, RegistrationStatus::Assigned);
        assert_eq!(r.substatus, Some(Substatus::InitialAssignment));
        assert_eq!(r.payload, Some(serde_json::json!({"k": "v"})));
        assert_eq!(r.operation_id, "4.abc.1");
        assert_eq!(r.enrollment_group_id.as_deref(), Some("grp1"));
        assert_eq!(r.etag.as_deref(), Some("IjAxIg=="));
        assert!(r.created_date_time_utc.is_some());
        let json = serde_json::to_value(&*r).unwrap();
        assert_eq!(json["assignedHub"], "hub1.example.test");
        assert_eq!(json["status"], "assigned");
        assert!(json.get("registrationState").is_none());
    }

    #[test]
    fn assigning_polls_with_clamped_retry_after() {
        let body = br#"{"operationId":"4.x","status":"assigning","registrationState":{"registrationId":"d","status":"assigning"}}"#;
        let p = PollOptions::default();
        match interpret(202, Some(3), body, &p, false).unwrap() {
            Step::Poll { operation_id, delay } => {
                assert_eq!(operation_id, "4.x");
                assert_eq!(delay, Duration::from_secs(1), "min(retry-after, 1 s)");
            }
            other => panic!("{other:?}"),
        }
        // Real DPS may omit registrationState while assigning.
        let Step::Poll { delay, .. } =
            interpret(202, None, br#"{"operationId":"4.y","status":"assigning"}"#, &p, false).unwrap()
        else {
            panic!()
        };
        assert_eq!(delay, Duration::from_secs(1));
        // Still assigning after a poll: retry-after in full, never sooner than every 2 s.
        let Step::Poll { delay, .. } = interpret(202, Some(3), body, &p, true).unwrap() else {
            panic!()
        };
        assert_eq!(delay, Duration::from_secs(3));
        let Step::Poll { delay, .. } = interpret(202, Some(1), body, &p, true).unwrap() else {
            panic!()
        };
        assert_eq!(delay, MIN_REPOLL_INTERVAL);
        let fast = PollOptions {
            max_interval: Duration::ZERO,
            ..p
        };
        let Step::Poll { delay, .. } = interpret(202, None, body, &fast, true).unwrap() else {
            panic!()
        };
        assert_eq!(delay, MIN_REPOLL_INTERVAL);
        assert!(matches!(
            interpret(202, None, br#"{"status":"assigning"}"#, &p, false),
            Err(ClientError::Protocol(_))
        ));
    }

    #[test]
    fn poll_delay_rules() {
        let d = PollOptions::default();
        assert_eq!(d.poll_delay(Some(0)), Duration::ZERO);
        assert_eq!(d.poll_delay(Some(3)), Duration::from_secs(1));
        assert_eq!(d.poll_delay(None), Duration::from_secs(1));
        let slow = PollOptions {
            min_interval: Duration::from_secs(2),
            max_interval: Duration::from_secs(10),
            ..d
        };
        assert_eq!(slow.poll_delay(Some(0)), Duration::from_secs(2));
        assert_eq!(slow.poll_delay(Some(5)), Duration::from_secs(5));
        assert_eq!(slow.poll_delay(Some(50)), Duration::from_secs(10));
        assert_eq!(slow.poll_delay(None), Duration::from_secs(2));
        // Throttling honours retry-after beyond max_interval, up to 60 s.
        assert_eq!(d.retry_delay(Some(5)), Duration::from_secs(5));
        assert_eq!(d.retry_delay(Some(500)), Duration::from_secs(60));
        assert_eq!(d.retry_delay(None), Duration::from_secs(2));
    }

    #[test]
    fn failed_and_disabled_carry_the_error() {
        let body = br#"{"operationId":"o","status":"failed","registrationState":{"registrationId":"d","status":"failed","errorCode":400209,"errorMessage":"hub refused"}}"#;
        match interpret(200, None, body, &PollOptions::default(), false) {
            Err(ClientError::RegistrationFailed {
                status,
                error_code,
                message,
            }) => {
                assert_eq!(status, RegistrationStatus::Failed);
                assert_eq!(error_code, Some(400209));
                assert_eq!(message, "hub refused");
            }
            other => panic!("{other:?}"),
        }
        let body = br#"{"operationId":"o","status":"disabled","registrationState":{"registrationId":"d","status":"disabled"}}"#;
        match interpret(200, None, body, &PollOptions::default(), false) {
            Err(ClientError::RegistrationFailed {
                status: RegistrationStatus::Disabled,
                error_code: None,
                message,
            }) => {
                assert!(message.contains("disabled"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn error_statuses() {
        let p = PollOptions::default();
        match interpret(
            401,
            None,
            br#"{"errorCode":401000,"trackingId":"t","message":"bad sig","timestampUtc":"x"}"#,
            &p,
            false,
        ) {
            Err(ClientError::Service {
                status: 401,
                error_code: Some(401000),
                message,
                ..
            }) => assert_eq!(message, "bad sig"),
            other => panic!("{other:?}"),
        }
        match interpret(
            429,
            Some(7),
            br#"{"errorCode":429001,"message":"slow down"}"#,
            &p,
            false,
        )
        .unwrap()
        {
            Step::Retry { delay, error, counted } => {
                assert_eq!(delay, Duration::from_secs(7));
                assert_eq!(error.error_code(), Some(429001));
                assert!(!counted, "throttling is not a failure");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            interpret(503, None, b"", &p, false).unwrap(),
            Step::Retry { counted: true, .. }
        ));
        assert!(matches!(
            interpret(200, None, b"not json", &p, false),
            Err(ClientError::Protocol(_))
        ));
        assert!(matches!(
            interpret(200, None, br#"{"operationId":"o","status":"assigned","registrationState":{"registrationId":"d","status":"assigned"}}"#, &p, false),
            Err(ClientError::Protocol(m)) if m.contains("assignedHub")
        ));
        assert!(matches!(
            interpret(200, None, br#"{"operationId":"o","status":"unassigned"}"#, &p, false),
            Err(ClientError::Protocol(_))
        ));
    }

    #[test]
    fn transport_parsing_and_ports() {
        assert_eq!("MQTT".parse::<Transport>().unwrap(), Transport::Mqtt);
        assert_eq!("https".parse::<Transport>().unwrap(), Transport::Https);
        assert_eq!("amqp".parse::<Transport>().unwrap(), Transport::Amqp);
        assert!("ws".parse::<Transport>().is_err());
        assert_eq!(Transport::Mqtt.default_port(), 8883);
        assert_eq!(Transport::Https.default_port(), 443);
        assert_eq!(Transport::Amqp.default_port(), 5671);
        let p = Arc::new(crate::SymmetricKeyProvider::new("d", "dGVzdFN0cmluZzE=").unwrap());
        let c = ProvisioningClient::new("h", "s", p, "");
        assert_eq!(c.port(), 8883);
        let c = c.with_transport(Transport::Https);
        assert_eq!(c.port(), 443);
        assert_eq!(c.with_port(8443).port(), 8443);
    }

    #[test]
    fn sas_for_dps_audience() {
        let p = Arc::new(crate::SymmetricKeyProvider::new("dev-01", "dGVzdFN0cmluZzE=").unwrap());
        let c = ProvisioningClient::new("h", "0ne0001234A", p, "");
        let token = c.sas("registration").unwrap().unwrap();
        let t = dps_proto::sas::SasToken::parse(&token).unwrap();
        t.check_audience_eq("0ne0001234A/registrations/dev-01").unwrap();
        t.verify_signature(["dGVzdFN0cmluZzE="]).unwrap();
        assert_eq!(t.key_name.as_deref(), Some("registration"));
    }

    #[test]
    fn tpm_challenge_bodies() {
        let c =
            TpmChallengeWire::parse(br#"{"authenticationKey":"AAEC","keyName":"registration","message":"m"}"#).unwrap();
        assert_eq!(
            (c.authentication_key.as_str(), c.key_name.as_str()),
            ("AAEC", "registration")
        );
        let c = TpmChallengeWire::parse(br#"{"authenticationKey":"AAEC"}"#).unwrap();
        assert_eq!(c.key_name, "registration", "keyName defaults like the C# SDK");
        // A 401 that is a refusal, not a challenge, keeps the service's error.
        match TpmChallengeWire::parse(br#"{"errorCode":401002,"message":"no enrollment for this EK"}"#) {
            Err(ClientError::Service {
                status: 401,
                error_code: Some(401002),
                message,
                ..
            }) => assert_eq!(message, "no enrollment for this EK"),
            other => panic!("{other:?}"),
        }
        assert!(TpmChallengeWire::parse(br#"{"authenticationKey":""}"#).is_err());
    }

    /// A TPM-kind provider that has no TPM: enough to check the transport rule.
    struct NoTpm;
    impl SecurityProvider for NoTpm {
        fn registration_id(&self) -> &str {
            "tpm-dev"
        }
        fn kind(&self) -> AttestationKind {
            AttestationKind::Tpm
        }
    }

    #[tokio::test]
    async fn tpm_needs_https() {
        let c = ProvisioningClient::new("127.0.0.1", "0ne0001234A", Arc::new(NoTpm), "");
        match c.register(None).await {
            Err(ClientError::Unsupported(m)) => assert!(m.contains("HTTPS"), "{m}"),
            other => panic!("{other:?}"),
        }
        // Over HTTPS the provider is asked for its keys before anything is sent.
        let c = c.with_transport(Transport::Https);
        assert!(matches!(c.register(None).await, Err(ClientError::Unsupported(m)) if m.contains("TPM keys")));
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        assert_eq!(url_host("::1"), "[::1]");
        assert_eq!(url_host("127.0.0.1"), "127.0.0.1");
    }
}

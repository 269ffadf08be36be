//! `HubClient`: the device side of the IoT Hub MQTT protocol (hub-dice-tpm.md §A) — telemetry,
//! twin reads, reported-property patches, desired-property notifications, and certificate
//! renewal (IoT Hub certificate management: `$iothub/credentials/…`).
//!
//! One background task drives the MQTT connection. Callers wait on one-shot channels that the
//! task completes: a telemetry publish when its PUBACK arrives, a twin request when the response
//! with its `$rid` arrives. How a PUBACK is matched to the publish that caused it: rumqttc
//! assigns packet ids inside its event loop and reports them, in request order, as
//! `Outgoing::Publish(pkid)` events; publishes are queued under a lock together with a waiter in
//! a FIFO, so the n-th reported packet id belongs to the n-th waiter.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use dps_proto::hub_mqtt;
use rumqttc::{AsyncClient, ConnectionError, Event, Outgoing, Packet, QoS, SubscribeFilter, SubscribeReasonCode};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::mqtt;
use crate::provisioning::{expiry, RegistrationResult};
use crate::security::{sas_token, SecurityProvider};
use crate::ClientError;

/// Hub API version in the CONNECT username ([`dps_proto::api_version::HUB_CLIENT`]).
pub const HUB_API_VERSION: &str = dps_proto::api_version::HUB_CLIENT;

const TWIN_RESPONSE_FILTER: &str = "$iothub/twin/res/#";
/// Subscribed on the first renewal only: a hub without certificate management may refuse it.
const CREDENTIALS_RESPONSE_FILTER: &str = "$iothub/credentials/res/#";
const DESIRED_FILTER: &str = "$iothub/twin/PATCH/properties/desired/#";

/// A desired-properties change pushed by the hub.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredPatch {
    /// The desired properties' new `$version` (from the topic).
    pub version: Option<i64>,
    /// The changed properties (JSON merge patch; `null` deletes), including `$version`.
    pub patch: Value,
}

/// Settings for [`HubClient`]; obtain with [`HubClient::builder`] or
/// [`HubClient::from_registration`].
pub struct HubClientBuilder {
    host: String,
    device_id: String,
    provider: Arc<dyn SecurityProvider>,
    ca_pem: String,
    port: u16,
    timeout: Duration,
    keep_alive: Duration,
    sas_ttl: Duration,
}

impl HubClientBuilder {
    /// MQTT port (default 8883).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// How long to wait for the connection and for each acknowledgement or twin response
    /// (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// MQTT keep-alive (default 60 s, as the Python SDK).
    pub fn keep_alive(mut self, keep_alive: Duration) -> Self {
        self.keep_alive = keep_alive;
        self
    }

    /// Lifetime of the SAS token used as the CONNECT password (default 1 h). The hub checks it
    /// at CONNECT only; this client does not reconnect by itself.
    pub fn sas_ttl(mut self, ttl: Duration) -> Self {
        self.sas_ttl = ttl;
        self
    }

    /// Connects, subscribes to twin responses and desired-property patches, and returns once
    /// the hub acknowledged both.
    #[tracing::instrument(skip_all, fields(hub = %self.host, device_id = %self.device_id))]
    pub async fn connect(self) -> Result<HubClient, ClientError> {
        if self.device_id.is_empty() {
            return Err(ClientError::Credential("the device id is empty".into()));
        }
        let tls = crate::tls_config(self.provider.as_ref(), &self.ca_pem)?;
        let password = if crate::presents_certificate(self.provider.as_ref()) {
            String::new()
        } else {
            let resource = format!("{}/devices/{}", self.host, self.device_id);
            sas_token(self.provider.as_ref(), &resource, expiry(self.sas_ttl), None)?
        };
        let (client, eventloop) = mqtt::client(
            mqtt::Connect {
                host: &self.host,
                port: self.port,
                client_id: &self.device_id,
                username: hub_mqtt::username(&self.host, &self.device_id, HUB_API_VERSION),
                password,
                tls,
                keep_alive: self.keep_alive,
                connect_timeout: self.timeout,
            },
            64,
        );
        let (connack_tx, connack_rx) = oneshot::channel();
        let (suback_tx, suback_rx) = oneshot::channel();
        let (desired_tx, desired_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(StdMutex::new(Inner {
            connack: Some(connack_tx),
            suback: Some(suback_tx),
            desired: Some(desired_tx),
            ..Default::default()
        }));
        let context = format!("MQTT connection to {}:{}", self.host, self.port);
        let task = mqtt::spawn(eventloop, {
            let shared = shared.clone();
            move |ev| handle_event(&shared, &context, ev)
        });
        let hub = HubClient {
            host: self.host,
            device_id: self.device_id,
            client,
            shared,
            publish_lock: tokio::sync::Mutex::new(()),
            desired: StdMutex::new(Some(desired_rx)),
            next_rid: AtomicU64::new(1),
            credentials_subscribed: tokio::sync::Mutex::new(false),
            timeout: self.timeout,
            task,
        };
        hub.wait(connack_rx, "the CONNACK").await?;
        hub.client
            .try_subscribe_many([
                SubscribeFilter::new(TWIN_RESPONSE_FILTER.into(), QoS::AtLeastOnce),
                SubscribeFilter::new(DESIRED_FILTER.into(), QoS::AtLeastOnce),
            ])
            .map_err(|e| ClientError::connection("subscribing to twin topics", &e))?;
        hub.wait(suback_rx, "the SUBACK").await?;
        tracing::info!("connected to the hub");
        Ok(hub)
    }
}

/// A device connected to its IoT hub over MQTT.
pub struct HubClient {
    host: String,
    device_id: String,
    client: AsyncClient,
    shared: Arc<StdMutex<Inner>>,
    publish_lock: tokio::sync::Mutex<()>,
    desired: StdMutex<Option<mpsc::UnboundedReceiver<DesiredPatch>>>,
    next_rid: AtomicU64,
    /// Whether `$iothub/credentials/res/#` is subscribed (held while subscribing).
    credentials_subscribed: tokio::sync::Mutex<bool>,
    timeout: Duration,
    task: JoinHandle<()>,
}

impl fmt::Debug for HubClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubClient")
            .field("host", &self.host)
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

type Ack = oneshot::Sender<Result<(), ClientError>>;

/// Response to a twin or credentials request.
#[derive(Debug)]
struct Reply {
    status: u16,
    version: Option<i64>,
    body: Vec<u8>,
}

#[derive(Default)]
struct Inner {
    connack: Option<Ack>,
    suback: Option<Ack>,
    /// Publishes queued but not yet given a packet id, in request order.
    fifo: VecDeque<(QoS, Ack)>,
    /// QoS 1 publishes waiting for their PUBACK, by packet id.
    pubacks: HashMap<u16, Ack>,
    /// Twin and credentials requests waiting for their response, by `$rid` (one space: the
    /// client numbers them all).
    requests: HashMap<String, oneshot::Sender<Reply>>,
    desired: Option<mpsc::UnboundedSender<DesiredPatch>>,
    /// Why the connection ended, once it has.
    closed: Option<String>,
}

fn handle_event(shared: &StdMutex<Inner>, context: &str, ev: Result<Event, ConnectionError>) -> ControlFlow<()> {
    let mut inner = shared.lock().unwrap_or_else(|p| p.into_inner());
    match ev {
        Ok(Event::Incoming(Packet::ConnAck(_))) => {
            if let Some(tx) = inner.connack.take() {
                let _ = tx.send(Ok(()));
            }
        }
        Ok(Event::Incoming(Packet::SubAck(ack))) => {
            if let Some(tx) = inner.suback.take() {
                let refused = ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure));
                let _ = tx.send(if refused {
                    Err(ClientError::Protocol("the hub refused the subscription".into()))
                } else {
                    Ok(())
                });
            }
        }
        Ok(Event::Outgoing(Outgoing::Publish(pkid))) => match inner.fifo.pop_front() {
            Some((QoS::AtMostOnce, tx)) => {
                let _ = tx.send(Ok(()));
            }
            Some((_, tx)) => {
                inner.pubacks.insert(pkid, tx);
            }
            None => tracing::debug!(pkid, "publish without a waiter"),
        },
        Ok(Event::Incoming(Packet::PubAck(ack))) => {
            if let Some(tx) = inner.pubacks.remove(&ack.pkid) {
                let _ = tx.send(Ok(()));
            }
        }
        Ok(Event::Incoming(Packet::Publish(p))) => {
            let response = hub_mqtt::parse_twin_response_topic(&p.topic).or_else(|| {
                hub_mqtt::parse_credentials_response_topic(&p.topic).map(|(status, rid)| (status, rid, None))
            });
            if let Some((status, rid, version)) = response {
                if status == 202 && p.topic.starts_with("$iothub/credentials/") {
                    // A renewal accepted: its outcome follows under the same $rid.
                    tracing::debug!(%rid, "certificate renewal accepted");
                    return ControlFlow::Continue(());
                }
                match inner.requests.remove(&rid) {
                    Some(tx) => {
                        let _ = tx.send(Reply {
                            status,
                            version,
                            body: p.payload.to_vec(),
                        });
                    }
                    None => tracing::debug!(%rid, "response nobody waits for"),
                }
            } else if let Some(version) = hub_mqtt::parse_desired_patch_topic(&p.topic) {
                match serde_json::from_slice::<Value>(&p.payload) {
                    Ok(patch) => {
                        let version = version.or_else(|| patch.get("$version").and_then(Value::as_i64));
                        if let Some(tx) = &inner.desired {
                            let _ = tx.send(DesiredPatch { version, patch });
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "desired-property patch is not JSON; ignored"),
                }
            } else {
                tracing::debug!(topic = %p.topic, "ignoring a publish on an unexpected topic");
            }
        }
        Ok(Event::Outgoing(Outgoing::Disconnect)) => {
            fail_all(&mut inner, "disconnected by the device".into(), |what| {
                ClientError::Disconnected(what.into())
            });
            return ControlFlow::Break(());
        }
        Ok(_) => {}
        Err(e) => {
            tracing::info!(error = %e, "hub connection ended");
            let refused = match &e {
                ConnectionError::ConnectionRefused(code) => Some(format!("{code:?}")),
                _ => None,
            };
            let message = crate::error::error_chain(&e);
            if let Some(tx) = inner.connack.take() {
                let _ = tx.send(Err(match refused {
                    Some(reason) => ClientError::ConnectionRefused { reason },
                    None => ClientError::Connection {
                        context: context.to_string(),
                        message: message.clone(),
                    },
                }));
            }
            fail_all(&mut inner, message, |what| ClientError::Disconnected(what.into()));
            return ControlFlow::Break(());
        }
    }
    ControlFlow::Continue(())
}

fn fail_all(inner: &mut Inner, reason: String, err: impl Fn(&str) -> ClientError) {
    inner.closed = Some(reason);
    if let Some(tx) = inner.connack.take() {
        let _ = tx.send(Err(err("the CONNACK")));
    }
    if let Some(tx) = inner.suback.take() {
        let _ = tx.send(Err(err("the SUBACK")));
    }
    for (_, tx) in inner.fifo.drain(..) {
        let _ = tx.send(Err(err("the PUBACK")));
    }
    for (_, tx) in inner.pubacks.drain() {
        let _ = tx.send(Err(err("the PUBACK")));
    }
    // Dropping the senders wakes twin waiters with a closed channel.
    inner.requests.clear();
    inner.desired = None;
}

impl HubClient {
    /// Settings for connecting `device_id` to the hub at `hub_host` (an assigned hub's host
    /// name), authenticating with `provider` and trusting `ca_pem` for the hub's certificate.
    pub fn builder(
        hub_host: &str,
        device_id: &str,
        provider: Arc<dyn SecurityProvider>,
        ca_pem: &str,
    ) -> HubClientBuilder {
        HubClientBuilder {
            host: hub_host.trim().to_string(),
            device_id: device_id.trim().to_string(),
            provider,
            ca_pem: ca_pem.to_string(),
            port: 8883,
            timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(60),
            sas_ttl: Duration::from_secs(3600),
        }
    }

    /// Settings for the hub and device id a registration assigned.
    pub fn from_registration(
        result: &RegistrationResult,
        provider: Arc<dyn SecurityProvider>,
        ca_pem: &str,
    ) -> HubClientBuilder {
        Self::builder(&result.assigned_hub, &result.device_id, provider, ca_pem)
    }

    /// Connects with default settings (port 8883).
    pub async fn connect(
        hub_host: &str,
        device_id: &str,
        provider: Arc<dyn SecurityProvider>,
        ca_pem: &str,
    ) -> Result<Self, ClientError> {
        Self::builder(hub_host, device_id, provider, ca_pem).connect().await
    }

    /// The hub's host name.
    pub fn hub_host(&self) -> &str {
        &self.host
    }

    /// The device id.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// Sends a device-to-cloud message with application/system `properties` (e.g.
    /// `("$.ct", "application/json")`, `("$.ce", "utf-8")`, or any custom `key=value`), at QoS 1,
    /// and returns once the hub acknowledged it (PUBACK) — i.e. the hub has accepted it.
    pub async fn send_event(&self, body: impl Into<Vec<u8>>, properties: &[(&str, &str)]) -> Result<(), ClientError> {
        let props: Vec<(String, String)> = properties.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let topic = hub_mqtt::telemetry_topic(&self.device_id, &props);
        let ack = self.publish(topic, QoS::AtLeastOnce, body.into()).await?;
        self.wait(ack, "the telemetry PUBACK").await
    }

    /// Reads the device twin: `{"desired": {..., "$version": n}, "reported": {..., "$version": m}}`.
    pub async fn get_twin(&self) -> Result<Value, ClientError> {
        let reply = self
            .request(hub_mqtt::twin_get_topic, Vec::new(), "the twin response")
            .await?;
        serde_json::from_slice(&reply.body).map_err(|e| ClientError::Protocol(format!("the twin is not JSON: {e}")))
    }

    /// Merges `patch` into the reported properties (JSON merge patch: `null` deletes) and
    /// returns the new reported `$version`, when the hub sends one.
    pub async fn patch_reported(&self, patch: Value) -> Result<Option<i64>, ClientError> {
        let body = serde_json::to_vec(&patch)
            .map_err(|e| ClientError::Protocol(format!("cannot serialize the patch: {e}")))?;
        let reply = self
            .request(hub_mqtt::reported_patch_topic, body, "the twin response")
            .await?;
        Ok(reply.version)
    }

    /// Renews the device's certificate through the hub (IoT Hub certificate management): sends
    /// `csr_der` (a PKCS#10 request whose CN is the device id, for a new key or the same one),
    /// waits for the hub to accept it (`202`) and issue (`200`), and returns the new chain:
    /// base64 DER, leaf first, as registration returns it. The hub then knows the device by the
    /// new certificate; the one this connection used keeps working for the hub's grace period,
    /// so the caller reconnects with the new one before it ends. A refusal is
    /// [`ClientError::Service`] with IoT Hub's error code (`429002`: renewed too recently).
    pub async fn renew_certificate(&self, csr_der: &[u8]) -> Result<Vec<String>, ClientError> {
        use base64::Engine as _;
        self.subscribe_credentials().await?;
        let body = serde_json::json!({
            "id": self.device_id,
            "csr": base64::engine::general_purpose::STANDARD.encode(csr_der),
        });
        let reply = self
            .request(
                hub_mqtt::issue_certificate_topic,
                body.to_string().into_bytes(),
                "the renewed certificate",
            )
            .await?;
        let answer: Value = serde_json::from_slice(&reply.body)
            .map_err(|e| ClientError::Protocol(format!("the renewal answer is not JSON: {e}")))?;
        serde_json::from_value(answer["certificates"].clone())
            .map_err(|e| ClientError::Protocol(format!("the renewal answer has no certificate chain: {e}")))
    }

    /// Subscribes to the renewal answers once per connection.
    async fn subscribe_credentials(&self) -> Result<(), ClientError> {
        let mut subscribed = self.credentials_subscribed.lock().await;
        if *subscribed {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        self.shared.lock().unwrap_or_else(|p| p.into_inner()).suback = Some(tx);
        self.client
            .try_subscribe(CREDENTIALS_RESPONSE_FILTER, QoS::AtLeastOnce)
            .map_err(|e| ClientError::connection("subscribing to the credentials topic", &e))?;
        self.wait(rx, "the SUBACK of the credentials topic").await?;
        *subscribed = true;
        Ok(())
    }

    /// The stream of desired-property patches the hub pushes. Can be taken once (`None`
    /// afterwards). Patches arriving before it is taken are buffered; the stream ends when the
    /// connection does.
    pub fn desired_patches(&self) -> Option<mpsc::UnboundedReceiver<DesiredPatch>> {
        self.desired.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Whether the connection is still up.
    pub fn is_connected(&self) -> bool {
        self.shared.lock().unwrap_or_else(|p| p.into_inner()).closed.is_none()
    }

    /// Sends DISCONNECT and waits (briefly) for the connection to close.
    pub async fn disconnect(mut self) -> Result<(), ClientError> {
        if self.is_connected() {
            let _guard = self.publish_lock.lock().await;
            let _ = self.client.try_disconnect();
        }
        // Dropping `self` afterwards aborts the task if it has not ended by then.
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.task).await;
        Ok(())
    }

    /// Queues a publish with its waiter (see the module docs for why under a lock).
    async fn publish(
        &self,
        topic: String,
        qos: QoS,
        payload: Vec<u8>,
    ) -> Result<oneshot::Receiver<Result<(), ClientError>>, ClientError> {
        let _guard = self.publish_lock.lock().await;
        let (tx, rx) = oneshot::channel();
        {
            let mut inner = self.shared.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(reason) = &inner.closed {
                return Err(ClientError::Disconnected(format!(
                    "a publish (connection closed: {reason})"
                )));
            }
            inner.fifo.push_back((qos, tx));
        }
        tracing::debug!(%topic, bytes = payload.len(), "publishing");
        if let Err(e) = self.client.publish(topic, qos, false, payload).await {
            self.shared.lock().unwrap_or_else(|p| p.into_inner()).fifo.pop_back();
            return Err(ClientError::connection("queueing a publish", &e));
        }
        Ok(rx)
    }

    /// Publishes a request on `topic` (given its `$rid`) and waits for its answer (`what`, for
    /// errors); a non-2xx answer is the error its body describes.
    async fn request(
        &self,
        topic: impl FnOnce(&str) -> String,
        body: Vec<u8>,
        what: &str,
    ) -> Result<Reply, ClientError> {
        let rid = self.next_rid.fetch_add(1, Ordering::Relaxed).to_string();
        let (tx, rx) = oneshot::channel();
        self.shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .requests
            .insert(rid.clone(), tx);
        let sent = async {
            let ack = self.publish(topic(&rid), QoS::AtMostOnce, body).await?;
            self.wait(ack, "the request to be sent").await
        };
        if let Err(e) = sent.await {
            self.shared
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .requests
                .remove(&rid);
            return Err(e);
        }
        let reply = match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => return Err(ClientError::Disconnected(what.into())),
            Err(_) => {
                self.shared
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .requests
                    .remove(&rid);
                return Err(ClientError::Timeout {
                    what: what.into(),
                    after: self.timeout,
                });
            }
        };
        if !(200..300).contains(&reply.status) {
            return Err(ClientError::from_error_body(reply.status, &reply.body));
        }
        Ok(reply)
    }

    async fn wait(&self, rx: oneshot::Receiver<Result<(), ClientError>>, what: &str) -> Result<(), ClientError> {
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ClientError::Disconnected(what.into())),
            Err(_) => Err(ClientError::Timeout {
                what: what.into(),
                after: self.timeout,
            }),
        }
    }
}

impl Drop for HubClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twin_topics_round_trip_with_the_hub_formatters() {
        assert_eq!(
            hub_mqtt::parse_twin_response_topic(&hub_mqtt::twin_response_topic(200, "17", None)),
            Some((200, "17".into(), None))
        );
        assert_eq!(
            hub_mqtt::parse_twin_response_topic(&hub_mqtt::twin_response_topic(204, "3", Some(7))),
            Some((204, "3".into(), Some(7)))
        );
        assert_eq!(
            hub_mqtt::parse_twin_response_topic("$iothub/twin/res/400/?$rid=9"),
            Some((400, "9".into(), None))
        );
        assert_eq!(
            hub_mqtt::parse_twin_response_topic("$iothub/methods/POST/x/?$rid=1"),
            None
        );
        assert_eq!(
            hub_mqtt::parse_desired_patch_topic(&hub_mqtt::desired_patch_topic(2)),
            Some(Some(2))
        );
        assert_eq!(
            hub_mqtt::parse_desired_patch_topic("$iothub/twin/PATCH/properties/desired/"),
            Some(None)
        );
        assert_eq!(
            hub_mqtt::parse_desired_patch_topic("$iothub/twin/res/200/?$rid=1"),
            None
        );
    }

    #[test]
    fn outgoing_topics_are_what_the_hub_parses() {
        let t = hub_mqtt::telemetry_topic("d1", &[("$.ct".into(), "application/json".into())]);
        assert_eq!(
            hub_mqtt::HubPublish::parse(&t, "d1").unwrap(),
            hub_mqtt::HubPublish::Telemetry {
                properties: vec![("$.ct".into(), "application/json".into())]
            }
        );
        assert_eq!(
            hub_mqtt::HubPublish::parse("$iothub/twin/GET/?$rid=5", "d1").unwrap(),
            hub_mqtt::HubPublish::TwinGet { rid: "5".into() }
        );
        assert_eq!(
            hub_mqtt::HubPublish::parse("$iothub/twin/PATCH/properties/reported/?$rid=6", "d1").unwrap(),
            hub_mqtt::HubPublish::TwinReportedPatch { rid: "6".into() }
        );
    }

    #[test]
    fn events_complete_waiters_in_order() {
        let shared = StdMutex::new(Inner::default());
        let (tx0, mut rx0) = oneshot::channel();
        let (tx1, mut rx1) = oneshot::channel();
        shared.lock().unwrap().fifo.push_back((QoS::AtMostOnce, tx0));
        shared.lock().unwrap().fifo.push_back((QoS::AtLeastOnce, tx1));
        assert!(handle_event(&shared, "c", Ok(Event::Outgoing(Outgoing::Publish(0)))).is_continue());
        assert!(matches!(rx0.try_recv(), Ok(Ok(()))), "QoS 0 completes when sent");
        assert!(handle_event(&shared, "c", Ok(Event::Outgoing(Outgoing::Publish(42)))).is_continue());
        assert!(rx1.try_recv().is_err(), "QoS 1 waits for its PUBACK");
        assert!(handle_event(
            &shared,
            "c",
            Ok(Event::Incoming(Packet::PubAck(rumqttc::PubAck::new(42))))
        )
        .is_continue());
        assert!(matches!(rx1.try_recv(), Ok(Ok(()))));

        let (ttx, mut trx) = oneshot::channel();
        shared.lock().unwrap().requests.insert("7".into(), ttx);
        let p = rumqttc::Publish::new("$iothub/twin/res/204/?$rid=7&$version=3", QoS::AtMostOnce, Vec::new());
        assert!(handle_event(&shared, "c", Ok(Event::Incoming(Packet::Publish(p)))).is_continue());
        let reply = trx.try_recv().unwrap();
        assert_eq!((reply.status, reply.version), (204, Some(3)));

        let (dtx, mut drx) = mpsc::unbounded_channel();
        shared.lock().unwrap().desired = Some(dtx);
        let p = rumqttc::Publish::new(
            hub_mqtt::desired_patch_topic(4),
            QoS::AtMostOnce,
            br#"{"fan":true,"$version":4}"#.to_vec(),
        );
        assert!(handle_event(&shared, "c", Ok(Event::Incoming(Packet::Publish(p)))).is_continue());
        assert_eq!(
            drx.try_recv().unwrap(),
            DesiredPatch {
                version: Some(4),
                patch: serde_json::json!({"fan": true, "$version": 4})
            }
        );

        // A broken connection fails every waiter and ends the stream.
        let (tx2, mut rx2) = oneshot::channel();
        shared.lock().unwrap().pubacks.insert(1, tx2);
        let flow = handle_event(&shared, "c", Err(ConnectionError::NetworkTimeout));
        assert!(flow.is_break());
        assert!(matches!(rx2.try_recv(), Ok(Err(ClientError::Disconnected(_)))));
        assert!(drx.try_recv().is_err());
        assert!(shared.lock().unwrap().closed.is_some());
    }
}

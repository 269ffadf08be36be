//! How a node's embedded hub reaches the other nodes serving it (decision 0031,
//! [`dps_hub::Peers`], implemented by the hub's [`PostgresHubStore`]), through PostgreSQL
//! alone.
//!
//! - **Where devices are connected**: `hub_presence`, one row per connected identity naming its
//!   node and session, written when a session opens (with a `connected` notice, so that a
//!   session of the same identity on another node ends, one connection per device as in IoT
//!   Hub) and removed when it ends. A node killed outright leaves its rows: each node
//!   refreshes its row in `dps_nodes` every few seconds, and rows of a node silent for 15 s
//!   (three heartbeats) are not believed (its devices reconnect elsewhere).
//! - **Direct methods** for a device connected to another node: the caller stores the call in
//!   `hub_calls` and sends `call {id} {callee}`; the callee calls its device, stores the answer
//!   and sends `answer {id}`; the caller, woken, takes the answer and deletes the row. Rows and
//!   not notices carry requests and answers: a method payload may be 128 KB, a notice 8,000
//!   bytes.
//!
//! Both tables are UNLOGGED and written on connections that do not wait for the WAL: what they
//! hold is lost in a crash of PostgreSQL anyway (the connections go with it), and nodes record
//! their sessions again when they resync.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::Pool;
use dps_hub::store::HubStoreError;
use dps_hub::{Hub, MethodCall, MethodError, MethodResponse, PeerChange, Peers};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::oneshot;

use super::hub::{HubNotice, Notice, PostgresHubDatabase, PostgresHubStore};
use super::{BusEvent, PgOpenError, BUS_CHANNEL};

/// Connections of the pool for presence and calls.
pub(super) const EPHEMERAL_CONNECTIONS: usize = 4;

/// How often a node says it is alive. A node silent for three heartbeats (15 s, in the
/// statement that finds where a device is connected) is taken for dead.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// How much longer than the device's own time-out a caller waits for the callee's answer (the
/// callee enforces the time-out; this covers the round trips between them).
const CALL_MARGIN: Duration = Duration::from_secs(2);

/// How an answer row says the call ended.
mod outcome {
    /// The device answered; the row holds its answer.
    pub(super) const ANSWERED: i32 = 200;
    /// The device is not connected to the callee (any more).
    pub(super) const NOT_ONLINE: i32 = 404;
    /// The device did not answer in time.
    pub(super) const TIMED_OUT: i32 = 504;
    /// The callee could not call it (its store failed); the row holds why.
    pub(super) const FAILED: i32 = 500;
}

/// The session advisory lock of the node that runs the housekeeping every node would otherwise
/// repeat ("DPSL"): dead-lettering expired stored messages, trimming retained telemetry.
const HOUSEKEEPING_LOCK: i64 = 0x4450_534c;

/// Keeps trying to become the node that runs the housekeeping (holding [`HOUSEKEEPING_LOCK`] on
/// a connection of its own), and says in `leads` whether it is. A node that dies, or loses
/// its connection, loses the lock with it; another node takes it at its next try.
pub(super) fn start_housekeeping_election(
    config: super::connection::Settings,
    leads: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    use std::sync::atomic::Ordering;
    tokio::spawn(async move {
        loop {
            if let Ok((client, connection)) = config.connect().await {
                let connection = tokio::spawn(connection);
                loop {
                    // Held already: only check that the connection (and so the lock) lives.
                    let ask = match leads.load(Ordering::Relaxed) {
                        true => "SELECT true WHERE $1::bigint IS NOT NULL",
                        false => "SELECT pg_try_advisory_lock($1)",
                    };
                    let held = tokio::time::timeout(HEARTBEAT, client.query_one(ask, &[&HOUSEKEEPING_LOCK])).await;
                    match held {
                        Ok(Ok(row)) => {
                            let got: bool = row.try_get(0).unwrap_or(false);
                            if got != leads.swap(got, Ordering::Relaxed) {
                                tracing::info!(runs = got, "this node runs the hubs' housekeeping");
                            }
                        }
                        _ => break,
                    }
                    tokio::time::sleep(HEARTBEAT).await;
                }
                connection.abort();
            }
            leads.store(false, Ordering::Relaxed);
            tokio::time::sleep(HEARTBEAT).await;
        }
    })
}

/// Calls waiting for their answer, by id.
pub(super) type Pending = Mutex<HashMap<String, oneshot::Sender<()>>>;

/// Records this node in `dps_nodes` now and every [`HEARTBEAT`] after, tells `nodes` how many
/// nodes are alive (heard from in the last three heartbeats, this one included), and once a
/// minute removes what nodes silent for long left behind.
pub(super) async fn start_heartbeat(
    pool: &Pool,
    node: &str,
    nodes: tokio::sync::watch::Sender<u32>,
) -> Result<tokio::task::JoinHandle<()>, PgOpenError> {
    const BEAT: &str =
        "INSERT INTO dps_nodes (node, seen) VALUES ($1, now()) ON CONFLICT (node) DO UPDATE SET seen = now()";
    const ALIVE: &str = "SELECT count(*) FROM dps_nodes WHERE seen > now() - interval '15 seconds'";
    const SWEEP: &str = "DELETE FROM hub_presence WHERE node IN \
         (SELECT node FROM dps_nodes WHERE seen < now() - interval '1 minute'); \
         DELETE FROM dps_nodes WHERE seen < now() - interval '1 hour'; \
         DELETE FROM hub_calls WHERE created < now() - interval '10 minutes'";
    let client = pool.get().await.map_err(PgOpenError::Connect)?;
    client.execute(BEAT, &[&node]).await.map_err(PgOpenError::Node)?;
    drop(client);
    let (pool, node) = (pool.clone(), node.to_string());
    Ok(tokio::spawn(async move {
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for beat in 0u64.. {
            tick.tick().await;
            let Ok(client) = pool.get().await else {
                continue;
            };
            if let Err(e) = client.execute(BEAT, &[&node]).await {
                tracing::warn!(error = %e, "cannot record this node's heartbeat");
                continue;
            }
            if let Ok(row) = client.query_one(ALIVE, &[]).await {
                let alive = row.try_get::<_, i64>(0).unwrap_or(1);
                nodes.send_if_modified(|n| {
                    let alive = u32::try_from(alive).unwrap_or(u32::MAX).max(1);
                    std::mem::replace(n, alive) != alive
                });
            }
            if beat % 12 == 11 {
                if let Err(e) = client.batch_execute(SWEEP).await {
                    tracing::debug!(error = %e, "cannot sweep what silent nodes left");
                }
            }
        }
    }))
}

impl PostgresHubDatabase {
    /// Acts, for this node's embedded `hubs` (number, hub), on what the other nodes say, in the
    /// order heard, until `events` closes: changes go to the hub they concern
    /// ([`Hub::peer_changed`]); calls for devices connected here are served beside the
    /// notices (a device has its time-out to answer); answers wake this node's calls; a
    /// resync goes to every hub. The node's own notices are skipped: it acted on its writes
    /// and connections as it made them.
    pub async fn hear_other_nodes(self: Arc<Self>, mut events: broadcast::Receiver<BusEvent>, hubs: Vec<(u32, Hub)>) {
        loop {
            match events.recv().await {
                Ok(BusEvent::Notice(payload)) => {
                    let Some(notice) = HubNotice::parse(&payload).filter(|n| n.node != self.node) else {
                        continue;
                    };
                    let Some((number, hub)) = hubs.iter().find(|(n, _)| *n == notice.hub) else {
                        continue;
                    };
                    match notice.what {
                        Notice::Change(change) => hub.peer_changed(change).await,
                        Notice::Call { id, callee } if callee == self.node => {
                            let (db, hub, id, number) = (self.clone(), hub.clone(), id.to_string(), *number);
                            tokio::spawn(async move { db.serve_call(number, &id, &hub).await });
                        }
                        Notice::Call { .. } => {}
                        Notice::Answer { id } => self.answered(id),
                    }
                }
                Ok(BusEvent::Resync) | Err(RecvError::Lagged(_)) => {
                    for (_, hub) in &hubs {
                        hub.peer_changed(PeerChange::Resync).await;
                    }
                }
                Err(RecvError::Closed) => return,
            }
        }
    }

    /// Serves another node's call `id` to a device connected to this node (on `hub`, number
    /// `number`): calls it, stores the answer and tells the caller. A call that is not this
    /// node's, or gone, is ignored.
    async fn serve_call(&self, number: u32, id: &str, hub: &Hub) {
        const READ: &str =
            "SELECT key, method, payload, timeout_ms FROM hub_calls WHERE id = $1 AND hub = $2 AND callee = $3";
        const ANSWER: &str = "WITH a AS (UPDATE hub_calls SET status = $2, response = $3 WHERE id = $1 \
             RETURNING caller) SELECT pg_notify($4, $5) FROM a";
        let Ok(client) = self.ephemeral.get().await else {
            return;
        };
        let row = match client.query_opt(READ, &[&id, &i64::from(number), &self.node]).await {
            Ok(Some(row)) => row,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(call = id, error = %e, "cannot read another node's method call");
                return;
            }
        };
        let read = || -> Result<(String, String, String, i64), tokio_postgres::Error> {
            Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?))
        };
        let Ok((key, method, payload, timeout_ms)) = read() else {
            return;
        };
        drop(client);
        let (device, module) = dps_proto::hub_mqtt::split_identity_path(&key);
        let payload = serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null);
        let timeout = Duration::from_millis(u64::try_from(timeout_ms).unwrap_or(0));
        let (status, response) = match hub.invoke_method_here(device, module, &method, payload, timeout).await {
            Ok(answer) => (outcome::ANSWERED, serde_json::to_string(&answer).unwrap_or_default()),
            Err(
                MethodError::DeviceNotOnline { .. }
                | MethodError::DeviceNotFound { .. }
                | MethodError::ModuleNotFound { .. },
            ) => (outcome::NOT_ONLINE, String::new()),
            Err(MethodError::Timeout { .. }) => (outcome::TIMED_OUT, String::new()),
            Err(e) => (outcome::FAILED, e.to_string()),
        };
        let notice = format!("hub {number} {} answer {id}", self.node);
        let answered = match self.ephemeral.get().await {
            Ok(client) => client
                .execute(ANSWER, &[&id, &status, &response, &BUS_CHANNEL, &notice])
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = answered {
            tracing::warn!(call = id, error = %e, "cannot store the answer to another node's method call; it times out there");
        }
    }

    /// Wakes this node's call `id`, whose answer is stored (an answer nobody waits for any more
    /// is ignored).
    fn answered(&self, id: &str) {
        let waiting = self.calls.lock().expect("the calls map is never poisoned").remove(id);
        if let Some(wake) = waiting {
            let _ = wake.send(());
        }
    }
}

/// A call to `key` that failed in the database (`e`).
fn storage(key: &str, e: impl std::error::Error + 'static) -> MethodError {
    failed(key, super::describe(&e))
}

/// A call to `key` that failed, for `why`.
fn failed(key: &str, why: String) -> MethodError {
    MethodError::Storage {
        device_id: key.to_string(),
        source: HubStoreError::backend(why),
    }
}

/// A hub's store on PostgreSQL is also its way to the other nodes serving it, for
/// [`Hub::set_peers`].
#[async_trait]
impl Peers for PostgresHubStore {
    fn runs_housekeeping(&self) -> bool {
        self.db.runs_housekeeping()
    }

    async fn connected(&self, key: &str, session: u64) -> Result<(), HubStoreError> {
        const CONNECTED: &str = "WITH p AS (INSERT INTO hub_presence (hub, key, node, session) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (hub, key) DO UPDATE SET node = excluded.node, \
             session = excluded.session RETURNING 1) SELECT pg_notify($5, $6) FROM p";
        let db = &self.db;
        let notice = format!("hub {} {} connected {key}", self.hub, db.node);
        let session = i64::try_from(session).unwrap_or(i64::MAX);
        let client = db.ephemeral.get().await.map_err(super::hub::backend)?;
        client
            .execute(CONNECTED, &[&self.hub, &key, &db.node, &session, &BUS_CHANNEL, &notice])
            .await
            .map_err(super::hub::backend)?;
        Ok(())
    }

    async fn disconnected(&self, key: &str, session: u64) -> Result<(), HubStoreError> {
        const DISCONNECTED: &str =
            "DELETE FROM hub_presence WHERE hub = $1 AND key = $2 AND node = $3 AND session = $4";
        let session = i64::try_from(session).unwrap_or(i64::MAX);
        let client = self.db.ephemeral.get().await.map_err(super::hub::backend)?;
        client
            .execute(DISCONNECTED, &[&self.hub, &key, &self.db.node, &session])
            .await
            .map_err(super::hub::backend)?;
        Ok(())
    }

    async fn connected_elsewhere(&self, keys: &[String]) -> Result<std::collections::HashSet<String>, HubStoreError> {
        const WHERE: &str = "SELECT p.key FROM hub_presence p JOIN dps_nodes n ON n.node = p.node \
             WHERE p.hub = $1 AND p.key = ANY($2) AND p.node <> $3 AND n.seen > now() - interval '15 seconds'";
        let client = self.db.ephemeral.get().await.map_err(super::hub::backend)?;
        let rows = client
            .query(WHERE, &[&self.hub, &keys, &self.db.node])
            .await
            .map_err(super::hub::backend)?;
        rows.iter()
            .map(|row| row.try_get(0).map_err(super::hub::backend))
            .collect()
    }

    async fn devices_connected_elsewhere(&self) -> Result<u64, HubStoreError> {
        const COUNT: &str = "SELECT count(*) FROM hub_presence p JOIN dps_nodes n ON n.node = p.node \
             WHERE p.hub = $1 AND p.node <> $2 AND strpos(p.key, '/') = 0 AND n.seen > now() - interval '15 seconds'";
        let client = self.db.ephemeral.get().await.map_err(super::hub::backend)?;
        let count: i64 = client
            .query_one(COUNT, &[&self.hub, &self.db.node])
            .await
            .and_then(|row| row.try_get(0))
            .map_err(super::hub::backend)?;
        Ok(u64::try_from(count).unwrap_or_default())
    }

    async fn call(&self, call: &MethodCall) -> Result<Option<MethodResponse>, MethodError> {
        const WHERE: &str = "SELECT p.node FROM hub_presence p JOIN dps_nodes n ON n.node = p.node \
             WHERE p.hub = $1 AND p.key = $2 AND p.node <> $3 AND n.seen > now() - interval '15 seconds'";
        const CALL: &str = "WITH c AS (INSERT INTO hub_calls (id, hub, key, caller, callee, method, payload, \
             timeout_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING 1) SELECT pg_notify($9, $10) FROM c";
        const TAKE: &str = "DELETE FROM hub_calls WHERE id = $1 RETURNING status, response";
        let (db, key) = (&self.db, call.key.as_str());
        let client = db.ephemeral.get().await.map_err(|e| storage(key, e))?;
        let callee: String = match client
            .query_opt(WHERE, &[&self.hub, &key, &db.node])
            .await
            .map_err(|e| storage(key, e))?
        {
            Some(row) => row.try_get(0).map_err(|e| storage(key, e))?,
            None => return Ok(None),
        };
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (wake, woken) = oneshot::channel();
        db.calls
            .lock()
            .expect("the calls map is never poisoned")
            .insert(id.clone(), wake);
        let forget = || db.calls.lock().expect("the calls map is never poisoned").remove(&id);
        let timeout_ms = i64::try_from(call.timeout.as_millis()).unwrap_or(i64::MAX);
        let payload = call.payload.to_string();
        let notice = format!("hub {} {} call {id} {callee}", self.hub, db.node);
        let sent = client
            .execute(
                CALL,
                &[
                    &id,
                    &self.hub,
                    &key,
                    &db.node,
                    &callee,
                    &call.method,
                    &payload,
                    &timeout_ms,
                    &BUS_CHANNEL,
                    &notice,
                ],
            )
            .await;
        drop(client);
        if let Err(e) = sent {
            forget();
            return Err(storage(key, e));
        }
        tracing::debug!(key, method = %call.method, callee, call = %id, "direct method sent to another node");
        // Woken or not, the row says how the call ended: an answer stored just after the wait
        // still counts.
        let _ = tokio::time::timeout(call.timeout + CALL_MARGIN, woken).await;
        forget();
        let client = db.ephemeral.get().await.map_err(|e| storage(key, e))?;
        let row = client.query_opt(TAKE, &[&id]).await.map_err(|e| storage(key, e))?;
        let timed_out = || MethodError::Timeout {
            device_id: key.to_string(),
            method: call.method.clone(),
            timeout: call.timeout,
        };
        let Some(row) = row else {
            return Err(timed_out());
        };
        let status: Option<i32> = row.try_get(0).map_err(|e| storage(key, e))?;
        let response: Option<String> = row.try_get(1).map_err(|e| storage(key, e))?;
        match (status, response) {
            (Some(outcome::ANSWERED), Some(answer)) => serde_json::from_str(&answer)
                .map(Some)
                .map_err(|e| failed(key, format!("undecodable answer of another node: {e}"))),
            (Some(outcome::NOT_ONLINE), _) => Ok(None),
            (Some(outcome::FAILED), why) => Err(failed(key, why.unwrap_or_default())),
            _ => Err(timed_out()),
        }
    }
}

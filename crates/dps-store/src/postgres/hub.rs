//! [`PostgresHubDatabase`]: the embedded hubs' registries and retained telemetry in PostgreSQL,
//! every row keyed by its hub's number as in SQLite's shared `hub.db` (decision 0029);
//! [`PostgresHubStore`]: one hub's [`dps_hub::store::HubStore`] in it.
//!
//! The registry's statements and the `HubStore` contract are the SQLite store's
//! (`hub_documents`); what is PostgreSQL's own is how they run, and the telemetry queries. One
//! writer task per node commits registry writes, another telemetry, so that a telemetry flood
//! does not queue registrations behind it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::BytesMut;
use deadpool_postgres::{Object, Pool, Transaction};
use dps_hub::store::{decode_event, EventStart, HubStoreError, OutboxKind, PartitionBounds, TelemetryMessage};
use dps_hub::PeerChange;
use serde::de::DeserializeOwned;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};

use super::connection::Settings;
use super::writer::{run_in_order, Operation, Writer};
use super::{migrations, placeholders, PgOpenError};
use crate::hub_documents::{
    covering, event_int as int, event_rows, event_uint as uint, partition_bounds, undecodable, Arg, DeviceOp, EventRow,
    HubDocuments, Statement, CONFLICT_STATE, COUNT,
};
use crate::stats::StoreStats;

const INSERT_EVENT: &str = "INSERT INTO events (hub, seq, partition, pseq, device, enqueued_ms, size, doc) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (hub, seq) DO UPDATE SET \
     partition = excluded.partition, pseq = excluded.pseq, device = excluded.device, \
     enqueued_ms = excluded.enqueued_ms, size = excluded.size, doc = excluded.doc";
const READ_PARTITION: &str =
    "SELECT doc FROM events WHERE hub = $1 AND partition = $2 AND pseq >= $3 ORDER BY pseq LIMIT $4";
const FIND_OFFSET: &str =
    "SELECT pseq FROM events WHERE hub = $1 AND partition = $2 AND seq >= $3 ORDER BY pseq LIMIT 1";
const FIND_TIME: &str =
    "SELECT pseq FROM events WHERE hub = $1 AND partition = $2 AND enqueued_ms >= $3 ORDER BY pseq LIMIT 1";
const AFTER: &str = "SELECT doc FROM events WHERE hub = $1 AND seq > $2 AND ($3::text IS NULL OR device = $3) \
     ORDER BY seq LIMIT $4";
const NEWEST: &str = "SELECT doc FROM events WHERE hub = $1 AND ($2::text IS NULL OR device = $2) \
     ORDER BY seq DESC LIMIT $3";
const BOUNDS: &str = "SELECT partition, MIN(pseq), MAX(pseq), MAX(seq) FROM events WHERE hub = $1 GROUP BY partition";
/// The last message itself: its enqueued time to the nanosecond (the column holds milliseconds).
const LAST: &str = "SELECT doc FROM events WHERE hub = $1 AND seq = $2";
/// Rows looked at per trimming step: bounded transactions, however much has to go.
const TRIM_STEP: i64 = 10_000;
const TRIM_AGE: &str = "DELETE FROM events WHERE hub = $1 AND seq IN \
     (SELECT seq FROM events WHERE hub = $1 ORDER BY seq LIMIT $3) AND enqueued_ms < $2";
const OLDEST: &str = "SELECT seq, size FROM events WHERE hub = $1 ORDER BY seq LIMIT $2";
const DELETE_UP_TO: &str = "DELETE FROM events WHERE hub = $1 AND seq <= $2";
const BYTES: &str = "SELECT COALESCE((SELECT bytes FROM event_bytes WHERE hub = $1), 0)";

impl ToSql for Arg<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Arg::Int(n) => n.to_sql(ty, out),
            Arg::Text(s) => s.as_ref().to_sql(ty, out),
            Arg::OptText(s) => s.to_sql(ty, out),
            Arg::Bytes(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        <i64 as ToSql>::accepts(ty) || <&str as ToSql>::accepts(ty) || <&[u8] as ToSql>::accepts(ty)
    }

    to_sql_checked!();
}

/// The embedded hubs of a node, in one PostgreSQL database shared with every other node.
pub struct PostgresHubDatabase {
    pub(super) pool: Pool,
    /// For what may be lost in a crash (where devices are connected, method calls in flight):
    /// connections that do not wait for the WAL to be flushed.
    pub(super) ephemeral: Pool,
    /// This node's name in the notices its writes send (a fresh UUID per start), so that it
    /// can tell its own from the other nodes' (decision 0031).
    pub(super) node: String,
    registry: Writer<HubOp>,
    events: Writer<EventOp>,
    /// Direct-method calls this node made to devices on other nodes, waiting for their answer.
    pub(super) calls: super::peers::Pending,
    /// Keeps this node's heartbeat in `dps_nodes` (aborted on drop).
    heartbeat: tokio::task::JoinHandle<()>,
    /// How many nodes are alive (this one included), as the heartbeat last counted them.
    alive: tokio::sync::watch::Receiver<u32>,
    /// Whether this node runs the housekeeping every node would otherwise repeat.
    leads: Arc<std::sync::atomic::AtomicBool>,
    /// Keeps trying to (aborted on drop).
    election: tokio::task::JoinHandle<()>,
}

impl Drop for PostgresHubDatabase {
    fn drop(&mut self) {
        self.heartbeat.abort();
        self.election.abort();
    }
}

impl std::fmt::Debug for PostgresHubDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresHubDatabase").finish_non_exhaustive()
    }
}

impl PostgresHubDatabase {
    /// Connects to the database at `url`, creates or migrates the hubs' schema (safely when
    /// several nodes start at once) and starts the writer tasks.
    pub async fn connect(url: &str) -> Result<Arc<PostgresHubDatabase>, PgOpenError> {
        let pool = super::connect(url, &migrations::HUB).await?;
        let ephemeral = Settings::of(url, "dps-ephemeral")?
            .with("synchronous_commit", "off")
            .pool(super::peers::EPHEMERAL_CONNECTIONS)?;
        let node = uuid::Uuid::new_v4().simple().to_string();
        let (nodes, alive) = tokio::sync::watch::channel(1);
        let heartbeat = super::peers::start_heartbeat(&ephemeral, &node, nodes).await?;
        let leads = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let election = super::peers::start_housekeeping_election(Settings::of(url, "dps-housekeeping")?, leads.clone());
        Ok(Arc::new(PostgresHubDatabase {
            leads,
            election,
            registry: Writer::start(pool.clone()),
            events: Writer::start(pool.clone()),
            calls: Default::default(),
            heartbeat,
            alive,
            node,
            ephemeral,
            pool,
        }))
    }

    /// Records that the database holds hubs `numbers`; for each, whether it held it before (a
    /// hub that is new to the service gets linked at start). Race-free across nodes: of two
    /// nodes adding the same hub at once, one sees it new.
    pub async fn hold(&self, numbers: &[u32]) -> Result<Vec<bool>, PgOpenError> {
        let client = self.pool.get().await.map_err(PgOpenError::Connect)?;
        let fail = |source| PgOpenError::Migration { version: 0, source };
        let mut held = Vec::with_capacity(numbers.len());
        for n in numbers {
            let inserted = client
                .execute(
                    "INSERT INTO hubs (hub) VALUES ($1) ON CONFLICT DO NOTHING",
                    &[&i64::from(*n)],
                )
                .await
                .map_err(fail)?;
            held.push(inserted == 0);
        }
        Ok(held)
    }

    /// Hub `number`'s store.
    pub fn hub(self: &Arc<Self>, number: u32) -> PostgresHubStore {
        PostgresHubStore {
            db: Arc::clone(self),
            hub: i64::from(number),
        }
    }

    /// Whether this node runs the housekeeping that one node does for all (decision 0031): it
    /// holds the lock for it, which it tries to take every few seconds.
    pub fn runs_housekeeping(&self) -> bool {
        self.leads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// This node's name in the notices its writes send: [`HubNotice::node`] of a notice this
    /// node sent.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// How many nodes serve the database now (heard from in the last 15 s, this one
    /// included), updated every few seconds: what the nodes divide the service-wide quotas by.
    pub fn live_nodes(&self) -> tokio::sync::watch::Receiver<u32> {
        self.alive.clone()
    }

    /// What the registry writer has done since connect, for every hub.
    pub fn stats(&self) -> StoreStats {
        self.registry.stats()
    }
}

/// One embedded hub's [`dps_hub::store::HubStore`] on PostgreSQL, and its
/// [`dps_hub::Peers`] (module `peers`). Safe to share across tasks; cheap to clone.
#[derive(Clone)]
pub struct PostgresHubStore {
    pub(super) db: Arc<PostgresHubDatabase>,
    pub(super) hub: i64,
}

impl std::fmt::Debug for PostgresHubStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresHubStore").field("hub", &self.hub).finish()
    }
}

/// A registry write of one hub, and the notice it sends the other nodes when it commits.
struct HubOp {
    hub: i64,
    op: DeviceOp,
    notices: Vec<String>,
}

impl HubOp {
    fn statements(&self) -> Vec<Statement<'_>> {
        let mut statements = self.op.statements(self.hub);
        for notice in &self.notices {
            statements.push((NOTIFY, vec![Arg::Text(notice.as_str().into())]));
        }
        statements
    }
}

/// Sends a notice on the nodes' channel, delivered when the transaction commits.
pub(super) const NOTIFY: &str = "SELECT pg_notify('dps', $1)";

/// What a node hears from another about a hub (decision 0031): `hub {number} {node} {what}`,
/// where `what` is `record {key}` (a registry write, sent in its transaction), `c2d {key}`
/// (messages queued for the device, in the same way), `events {partition} {partition sequence}
/// {sequence} {enqueued ms}` (telemetry stored, in the same way), `connected {key}`
/// (a device connected to that node), `call {id} {callee}` (a direct method for a device
/// connected to `callee`), `answer {id}` (the callee's answer is stored), `job {id}` (a job's
/// record written or deleted), `consumer-groups {name}` (a consumer group created or deleted)
/// or `outbox {queue}` (records of a service-bound queue, `feedback` or `files`, stored or
/// released).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubNotice<'a> {
    /// The hub's number.
    pub hub: u32,
    /// The node that sent it ([`PostgresHubDatabase::node`]).
    pub node: &'a str,
    /// What it says.
    pub what: Notice<'a>,
}

/// What a [`HubNotice`] says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice<'a> {
    /// Something this node may hold changed: for [`dps_hub::Hub::peer_changed`].
    Change(PeerChange),
    /// A direct method call for node `callee` ([`PostgresHubDatabase::hear_other_nodes`]
    /// serves it there).
    Call {
        /// The call's id.
        id: &'a str,
        /// The node the device is connected to.
        callee: &'a str,
    },
    /// The answer to call `id` is stored (the caller, hearing it, takes it).
    Answer {
        /// The call's id.
        id: &'a str,
    },
}

impl<'a> HubNotice<'a> {
    /// The notice `payload` carries, if it is a hub's (other notices share the channel).
    pub fn parse(payload: &'a str) -> Option<HubNotice<'a>> {
        let mut parts = payload.splitn(5, ' ');
        if parts.next()? != "hub" {
            return None;
        }
        let hub = parts.next()?.parse().ok()?;
        let node = parts.next()?;
        let what = match (parts.next()?, parts.next()?) {
            ("record", key) => Notice::Change(PeerChange::Record { key: key.to_string() }),
            ("connected", key) => Notice::Change(PeerChange::Connected { key: key.to_string() }),
            ("c2d", key) => Notice::Change(PeerChange::C2dQueued { key: key.to_string() }),
            ("events", numbers) => {
                let mut n = numbers.split(' ');
                let mut next = || n.next();
                Notice::Change(PeerChange::Telemetry {
                    partition: next()?.parse().ok()?,
                    partition_sequence: next()?.parse().ok()?,
                    sequence_number: next()?.parse().ok()?,
                    enqueued_ms: next()?.parse().ok()?,
                })
            }
            ("call", rest) => {
                let (id, callee) = rest.split_once(' ')?;
                Notice::Call { id, callee }
            }
            ("answer", id) => Notice::Answer { id },
            ("job", id) => Notice::Change(PeerChange::Job { id: id.to_string() }),
            ("consumer-groups", _) => Notice::Change(PeerChange::ConsumerGroups),
            ("outbox", queue) => Notice::Change(PeerChange::Outbox {
                kind: outbox_of(queue)?,
            }),
            _ => return None,
        };
        Some(HubNotice { hub, node, what })
    }

    /// The notices of `op` by `node` on hub `hub`, for the writes other nodes must hear of: a
    /// record written, messages queued for a device (once per device).
    fn of(op: &DeviceOp, hub: i64, node: &str) -> Vec<String> {
        match op {
            DeviceOp::Put { key, .. }
            | DeviceOp::Delete { key }
            | DeviceOp::PutModule { key, .. }
            | DeviceOp::DeleteModule { key } => vec![format!("hub {hub} {node} record {key}")],
            DeviceOp::PutJob { key, .. } | DeviceOp::DeleteJob { key } => vec![job_notice(hub, node, key)],
            DeviceOp::PutGroup { key, .. } | DeviceOp::DeleteGroup { key } => {
                vec![format!("hub {hub} {node} consumer-groups {key}")]
            }
            DeviceOp::Queues {
                put_c2d,
                put_feedback,
                put_notifications,
                ..
            } => {
                let mut devices: Vec<&str> = put_c2d.iter().map(|(_, device, _)| device.as_str()).collect();
                devices.sort_unstable();
                devices.dedup();
                let outboxes = [
                    (OutboxKind::Feedback, put_feedback.is_empty()),
                    (OutboxKind::FileNotifications, put_notifications.is_empty()),
                ];
                devices
                    .into_iter()
                    .map(|key| format!("hub {hub} {node} c2d {key}"))
                    .chain(
                        outboxes
                            .into_iter()
                            .filter(|(_, empty)| !empty)
                            .map(|(kind, _)| outbox_notice(hub, node, kind)),
                    )
                    .collect()
            }
            _ => Vec::new(),
        }
    }
}

/// The notice that job `id`'s record was written or deleted.
fn job_notice(hub: i64, node: &str, id: &str) -> String {
    format!("hub {hub} {node} job {id}")
}

/// A service-bound queue's name in notices, and its table.
fn outbox_names(kind: OutboxKind) -> (&'static str, &'static str) {
    match kind {
        OutboxKind::Feedback => ("feedback", "feedback"),
        OutboxKind::FileNotifications => ("files", "file_notifications"),
    }
}

/// The queue a notice names.
fn outbox_of(name: &str) -> Option<OutboxKind> {
    [OutboxKind::Feedback, OutboxKind::FileNotifications]
        .into_iter()
        .find(|k| outbox_names(*k).0 == name)
}

/// The notice that records of `kind` are readable (stored, or released).
fn outbox_notice(hub: i64, node: &str, kind: OutboxKind) -> String {
    format!("hub {hub} {node} outbox {}", outbox_names(kind).0)
}

/// The statements of a service-bound queue's rows (decision 0031): `$1` is the hub; a lock is a
/// token and a time (ms since the epoch) after which the rows are free again.
struct OutboxSql {
    /// Locks unlocked rows, oldest first, skipping rows another node is locking now: `$2` the
    /// token, `$3` until, `$4` now, `$5` how many.
    lock: String,
    /// Deletes the rows of the live lock `$2` at `$3`.
    complete: String,
    /// Frees the rows of the live lock `$2` at `$3`.
    release: String,
    /// Frees the rows whose lock ran out at `$2`.
    release_stale: String,
    /// Deletes unlocked rows enqueued before `$2` (RFC 3339).
    expire: String,
    /// Deletes unlocked rows but the newest `$2`.
    bound: String,
}

impl OutboxSql {
    /// `kind`'s statements, made once.
    fn of(kind: OutboxKind) -> &'static OutboxSql {
        static BOTH: std::sync::LazyLock<[OutboxSql; 2]> = std::sync::LazyLock::new(|| {
            [
                OutboxSql::make(OutboxKind::Feedback),
                OutboxSql::make(OutboxKind::FileNotifications),
            ]
        });
        &BOTH[match kind {
            OutboxKind::Feedback => 0,
            OutboxKind::FileNotifications => 1,
        }]
    }

    fn make(kind: OutboxKind) -> OutboxSql {
        let table = outbox_names(kind).1;
        let enqueued = match kind {
            OutboxKind::Feedback => "enqueuedAt",
            OutboxKind::FileNotifications => "enqueuedTimeUtc",
        };
        OutboxSql {
            lock: format!(
                "UPDATE {table} SET lock_token = $2, locked_until = $3 WHERE hub = $1 AND seq IN \
                 (SELECT seq FROM {table} WHERE hub = $1 AND (locked_until IS NULL OR locked_until <= $4) \
                 ORDER BY seq LIMIT $5 FOR UPDATE SKIP LOCKED) RETURNING seq, doc"
            ),
            complete: format!("DELETE FROM {table} WHERE hub = $1 AND lock_token = $2 AND locked_until > $3"),
            release: format!(
                "UPDATE {table} SET lock_token = NULL, locked_until = NULL \
                 WHERE hub = $1 AND lock_token = $2 AND locked_until > $3"
            ),
            release_stale: format!(
                "UPDATE {table} SET lock_token = NULL, locked_until = NULL WHERE hub = $1 AND locked_until <= $2"
            ),
            expire: format!(
                "DELETE FROM {table} WHERE hub = $1 AND lock_token IS NULL \
                 AND (doc::jsonb ->> '{enqueued}')::timestamptz < CAST($2 AS TEXT)::timestamptz"
            ),
            bound: format!(
                "DELETE FROM {table} WHERE hub = $1 AND seq IN (SELECT seq FROM {table} \
                 WHERE hub = $1 AND lock_token IS NULL ORDER BY seq DESC OFFSET $2)"
            ),
        }
    }
}

#[async_trait]
impl Operation for HubOp {
    type Error = HubStoreError;

    fn backend(e: String) -> HubStoreError {
        HubStoreError::backend(e)
    }

    /// A conditional write whose expectation failed is the other node's win, not a failure
    /// of the database.
    fn failure(&self, e: &tokio_postgres::Error) -> HubStoreError {
        match (e.code(), &self.op) {
            (Some(state), DeviceOp::Put { key, .. } | DeviceOp::PutModule { key, .. })
                if state.code() == CONFLICT_STATE =>
            {
                HubStoreError::Conflict { key: key.clone() }
            }
            _ => HubStoreError::backend(super::describe(e)),
        }
    }

    fn pipelined(&self) -> Option<Vec<Statement<'_>>> {
        Some(self.statements())
    }

    async fn apply(&self, tx: &Transaction<'_>) -> Result<Result<(), HubStoreError>, tokio_postgres::Error> {
        run_in_order(tx, &self.statements()).await?;
        Ok(Ok(()))
    }
}

/// Takes `$4` numbers from counter `$2` of hub `$1` (-1: hub-wide, numbered from 1; else a
/// partition's, from 0; `$3` is where a new counter starts) and returns the first, in the
/// storing transaction: the row stays locked until it commits, so numbers are handed out in
/// commit order.
const TAKE_NUMBERS: &str =
    "INSERT INTO event_counters (hub, partition, next) VALUES ($1, $2, $3::bigint + $4::bigint) \
     ON CONFLICT (hub, partition) DO UPDATE SET next = event_counters.next + $4 RETURNING next - $4";

/// A telemetry write of one hub.
enum EventOp {
    /// Numbers `msg` among every node's messages, stores it, tells the other nodes, and leaves
    /// it numbered in `numbered`.
    Numbered {
        hub: i64,
        node: String,
        msg: TelemetryMessage,
        numbered: Arc<std::sync::Mutex<Option<TelemetryMessage>>>,
    },
    Append {
        hub: i64,
        rows: Vec<EventRow>,
    },
    /// Deletes what is older than the cutoff (ms), then the oldest until at most `max_bytes`
    /// remain; adds how many went to `deleted`.
    Trim {
        hub: i64,
        older_than_ms: i64,
        max_bytes: i64,
        deleted: Arc<AtomicU64>,
    },
}

#[async_trait]
impl Operation for EventOp {
    type Error = HubStoreError;

    fn backend(e: String) -> HubStoreError {
        HubStoreError::backend(e)
    }

    fn pipelined(&self) -> Option<Vec<Statement<'_>>> {
        let EventOp::Append { hub, rows } = self else {
            return None;
        };
        Some(rows.iter().map(|r| (INSERT_EVENT, r.args(*hub))).collect())
    }

    /// A run of messages to number: the counters each needs advanced once for the run (their
    /// questions pipelined), the messages numbered in order, then their rows and one notice per
    /// partition (its last message) sent in one pipeline.
    async fn apply_run(
        tx: &Transaction<'_>,
        ops: &[&Self],
    ) -> Result<Option<Vec<Result<(), HubStoreError>>>, tokio_postgres::Error> {
        let run: Vec<_> = ops
            .iter()
            .map_while(|op| match op {
                EventOp::Numbered {
                    hub,
                    node,
                    msg,
                    numbered,
                } => Some((*hub, node, msg, numbered)),
                _ => None,
            })
            .collect();
        if run.is_empty() {
            return Ok(None);
        }
        // How many numbers each counter gives: (hub, -1) and (hub, partition).
        let mut wanted: std::collections::BTreeMap<(i64, i64), i64> = std::collections::BTreeMap::new();
        for (hub, _, msg, _) in &run {
            *wanted.entry((*hub, -1)).or_default() += 1;
            *wanted.entry((*hub, i64::from(msg.partition))).or_default() += 1;
        }
        let take = tx.prepare_cached(TAKE_NUMBERS).await?;
        let counters: Vec<((i64, i64), i64)> = wanted.into_iter().collect();
        let firsts = futures_util::future::try_join_all(counters.iter().map(|((hub, counter), n)| {
            let start: i64 = if *counter < 0 { 1 } else { 0 };
            let take = &take;
            async move {
                tx.query_one(take, &[hub, counter, &start, n])
                    .await?
                    .try_get::<_, i64>(0)
            }
        }))
        .await?;
        let mut next: std::collections::BTreeMap<(i64, i64), i64> =
            counters.iter().map(|(k, _)| *k).zip(firsts).collect();
        let mut take_next = |k: (i64, i64)| {
            let n = next.get_mut(&k).expect("every counter of the run was advanced");
            *n += 1;
            *n - 1
        };
        let mut outcomes = Vec::with_capacity(run.len());
        let mut rows = Vec::with_capacity(run.len());
        let mut last: std::collections::BTreeMap<(i64, u32), (String, String)> = std::collections::BTreeMap::new();
        for (hub, node, msg, numbered) in &run {
            let (seq, pseq) = (take_next((*hub, -1)), take_next((*hub, i64::from(msg.partition))));
            let mut msg = (*msg).clone();
            let numbers = uint(seq).and_then(|seq| Ok((seq, uint(pseq)?)));
            let row = numbers.and_then(|(seq, pseq)| {
                (msg.sequence_number, msg.partition_sequence) = (seq, pseq);
                event_rows(&[Arc::new(msg.clone())])
            });
            match row {
                Ok(row) => {
                    rows.push((*hub, row));
                    last.insert(
                        (*hub, msg.partition),
                        (
                            node.to_string(),
                            format!("{pseq} {seq} {}", msg.enqueued_time.timestamp_millis()),
                        ),
                    );
                    *numbered.lock().expect("never poisoned") = Some(msg);
                    outcomes.push(Ok(()));
                }
                Err(e) => outcomes.push(Err(e)),
            }
        }
        let notices: Vec<String> = last
            .iter()
            .map(|((hub, partition), (node, numbers))| format!("hub {hub} {node} events {partition} {numbers}"))
            .collect();
        let mut statements: Vec<Statement<'_>> = rows
            .iter()
            .flat_map(|(hub, rows)| rows.iter().map(|r| (INSERT_EVENT, r.args(*hub))))
            .collect();
        statements.extend(notices.iter().map(|n| (NOTIFY, vec![Arg::Text(n.as_str().into())])));
        super::writer::pipeline(tx, &statements).await?;
        Ok(Some(outcomes))
    }

    async fn apply(&self, tx: &Transaction<'_>) -> Result<Result<(), HubStoreError>, tokio_postgres::Error> {
        match self {
            EventOp::Numbered { .. } => {
                if let Some(mut outcomes) = Self::apply_run(tx, &[self]).await? {
                    return Ok(outcomes.pop().unwrap_or(Ok(())));
                }
            }
            EventOp::Append { hub, rows } => {
                let insert = tx.prepare_cached(INSERT_EVENT).await?;
                for r in rows {
                    tx.execute(
                        &insert,
                        &[
                            hub,
                            &r.seq,
                            &r.partition,
                            &r.pseq,
                            &r.device,
                            &r.enqueued_ms,
                            &r.size,
                            &r.doc,
                        ],
                    )
                    .await?;
                }
            }
            EventOp::Trim {
                hub,
                older_than_ms,
                max_bytes,
                deleted,
            } => {
                let by_age = tx.prepare_cached(TRIM_AGE).await?;
                loop {
                    let n = tx.execute(&by_age, &[hub, older_than_ms, &TRIM_STEP]).await?;
                    deleted.fetch_add(n, Ordering::Relaxed);
                    if n == 0 {
                        break;
                    }
                }
                let (bytes, oldest, up_to) = (
                    tx.prepare_cached(BYTES).await?,
                    tx.prepare_cached(OLDEST).await?,
                    tx.prepare_cached(DELETE_UP_TO).await?,
                );
                loop {
                    let kept: i64 = tx.query_one(&bytes, &[hub]).await?.try_get(0)?;
                    if kept <= *max_bytes {
                        break;
                    }
                    // The oldest rows whose sizes cover the excess (at most a step of them).
                    let rows = tx
                        .query(&oldest, &[hub, &TRIM_STEP])
                        .await?
                        .iter()
                        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                        .collect::<Result<Vec<(i64, i64)>, tokio_postgres::Error>>()?;
                    let Some(last) = covering(&rows, kept - max_bytes) else {
                        break;
                    };
                    let n = tx.execute(&up_to, &[hub, &last]).await?;
                    deleted.fetch_add(n, Ordering::Relaxed);
                    if n == 0 {
                        break;
                    }
                }
            }
        }
        Ok(Ok(()))
    }
}

pub(super) fn backend(e: impl std::error::Error + 'static) -> HubStoreError {
    HubStoreError::backend(super::describe(&e))
}

fn undecodable_event(e: String) -> HubStoreError {
    HubStoreError::backend(format!("undecodable telemetry row: {e}"))
}

impl PostgresHubStore {
    pub(super) async fn client(&self) -> Result<Object, HubStoreError> {
        self.db.pool.get().await.map_err(backend)
    }

    /// Runs one write outside the writer task and, if it changed any row, sends `notice` in
    /// its transaction (delivered only if it commits); whether it changed any.
    async fn write_telling(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        notice: Option<String>,
    ) -> Result<bool, HubStoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        let stmt = tx.prepare_cached(sql).await.map_err(backend)?;
        let n = tx.execute(&stmt, params).await.map_err(backend)?;
        if let Some(notice) = notice.filter(|_| n > 0) {
            tx.execute(NOTIFY, &[&notice]).await.map_err(backend)?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(n > 0)
    }

    /// The telemetry rows `sql` selects (one column: the encoded message), decoded.
    async fn events(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<TelemetryMessage>, HubStoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql).await.map_err(backend)?;
        let rows = client.query(&stmt, params).await.map_err(backend)?;
        rows.iter()
            .map(|r| decode_event(r.try_get::<_, &[u8]>(0).map_err(backend)?).map_err(undecodable_event))
            .collect()
    }
}

crate::hub_documents::hub_store_over_documents!(PostgresHubStore;
    async fn put_upload(
        &self,
        upload: &dps_hub::store::ActiveUpload,
        now: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<bool, HubStoreError> {
        self.put_active_upload(upload, now, limit).await
    }

    async fn take_upload(
        &self,
        device_key: &str,
        correlation_id: &str,
    ) -> Result<Option<dps_hub::store::ActiveUpload>, HubStoreError> {
        self.take_active_upload(device_key, correlation_id).await
    }

    async fn expire_uploads(&self, before: chrono::DateTime<chrono::Utc>) -> Result<u64, HubStoreError> {
        self.expire_active_uploads(before).await
    }

    async fn create_import_export_job(
        &self,
        job: &dps_proto::model::hub::JobProperties,
        now: chrono::DateTime<chrono::Utc>,
        stale_before: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, HubStoreError> {
        self.insert_import_export_job(job, now, stale_before).await
    }

    async fn update_import_export_job(
        &self,
        job: &dps_proto::model::hub::JobProperties,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, HubStoreError> {
        self.write_active_import_export_job(job, now).await
    }

    async fn import_export_jobs(&self) -> Result<Vec<dps_hub::StoredImportExportJob>, HubStoreError> {
        self.read_import_export_jobs().await
    }
);

#[async_trait]
impl HubDocuments for PostgresHubStore {
    /// Every node of the database writes it.
    fn shared(&self) -> bool {
        true
    }

    async fn write(&self, op: DeviceOp) -> Result<(), HubStoreError> {
        let notices = HubNotice::of(&op, self.hub, &self.db.node);
        self.db
            .registry
            .write(HubOp {
                hub: self.hub,
                op,
                notices,
            })
            .await
    }

    async fn expired_c2d(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<Vec<dps_hub::store::C2dRecord>, HubStoreError> {
        const EXPIRED: &str = "SELECT CAST(seq AS TEXT), doc FROM c2d WHERE hub = $1 \
             AND (doc::jsonb ->> 'expiresAt')::timestamptz <= CAST($2 AS TEXT)::timestamptz ORDER BY seq LIMIT $3";
        let args = vec![
            Arg::Text(now.to_rfc3339().into()),
            crate::hub_documents::limit_arg(limit),
        ];
        self.collect("c2d", EXPIRED, args).await
    }

    async fn queue_seq(&self) -> Result<Option<u64>, HubStoreError> {
        let client = self.client().await?;
        let next: i64 = client
            .query_one("SELECT nextval('hub_queue_seq')", &[])
            .await
            .and_then(|row| row.try_get(0))
            .map_err(backend)?;
        u64::try_from(next).map(Some).map_err(backend)
    }

    async fn put_job_if_active(&self, key: &str, doc: String) -> Result<bool, HubStoreError> {
        const IF_ACTIVE: &str = "UPDATE jobs SET doc = $3 WHERE hub = $1 AND id = $2 \
             AND doc::jsonb ->> 'status' IN ('queued', 'running')";
        let notice = job_notice(self.hub, &self.db.node, key);
        self.write_telling(IF_ACTIVE, &[&self.hub, &key, &doc], Some(notice))
            .await
    }

    async fn lock_c2d(
        &self,
        device_key: &str,
        held: Option<&str>,
        lock_token: &str,
        now: chrono::DateTime<chrono::Utc>,
        until: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<dps_hub::store::C2dRecord>, HubStoreError> {
        /// The oldest free unexpired message (`$5` now in ms, `$6` now in RFC 3339).
        const NEXT: &str = "UPDATE c2d SET lock_token = $3, locked_until = $4 WHERE hub = $1 AND seq = \
             (SELECT seq FROM c2d WHERE hub = $1 AND device = $2 AND (locked_until IS NULL OR locked_until <= $5) \
             AND (doc::jsonb ->> 'expiresAt')::timestamptz > CAST($6 AS TEXT)::timestamptz \
             ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING CAST(seq AS TEXT), doc";
        /// The message lock `$5` holds at `$6` (ms).
        const HELD: &str = "UPDATE c2d SET lock_token = $3, locked_until = $4 \
             WHERE hub = $1 AND device = $2 AND lock_token = $5 AND locked_until > $6 \
             RETURNING CAST(seq AS TEXT), doc";
        let (now_ms, until) = (now.timestamp_millis(), until.timestamp_millis());
        let mut args = vec![
            Arg::Text(device_key.to_string().into()),
            Arg::Text(lock_token.to_string().into()),
            Arg::Int(until),
        ];
        let sql = match held {
            None => {
                args.extend([Arg::Int(now_ms), Arg::Text(now.to_rfc3339().into())]);
                NEXT
            }
            Some(held) => {
                args.extend([Arg::Text(held.to_string().into()), Arg::Int(now_ms)]);
                HELD
            }
        };
        Ok(self.collect("c2d", sql, args).await?.pop())
    }

    async fn unlock_c2d(&self, record: &dps_hub::store::C2dRecord) -> Result<(), HubStoreError> {
        const UNLOCK: &str =
            "UPDATE c2d SET doc = $3, lock_token = NULL, locked_until = NULL WHERE hub = $1 AND seq = $2";
        let seq = i64::try_from(record.seq).map_err(backend)?;
        let doc = serde_json::to_string(record).map_err(backend)?;
        let client = self.client().await?;
        client
            .execute(UNLOCK, &[&self.hub, &seq, &doc])
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn lock_outbox(
        &self,
        kind: OutboxKind,
        lock_token: &str,
        max: usize,
        now: chrono::DateTime<chrono::Utc>,
        until: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<String>, HubStoreError> {
        let sql = OutboxSql::of(kind);
        let client = self.client().await?;
        let stmt = client.prepare_cached(&sql.lock).await.map_err(backend)?;
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let (now, until) = (now.timestamp_millis(), until.timestamp_millis());
        let rows = client
            .query(&stmt, &[&self.hub, &lock_token, &until, &now, &max])
            .await
            .map_err(backend)?;
        let mut locked = rows
            .iter()
            .map(|r| Ok((r.try_get::<_, i64>(0)?, r.try_get::<_, String>(1)?)))
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()
            .map_err(backend)?;
        // RETURNING follows no order.
        locked.sort_unstable_by_key(|(seq, _)| *seq);
        Ok(locked.into_iter().map(|(_, doc)| doc).collect())
    }

    async fn settle_outbox(
        &self,
        kind: OutboxKind,
        lock_token: &str,
        complete: bool,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, HubStoreError> {
        let sql = OutboxSql::of(kind);
        // A release makes records readable again: the other nodes' receivers look.
        let notice = (!complete).then(|| outbox_notice(self.hub, &self.db.node, kind));
        let statement = if complete { &sql.complete } else { &sql.release };
        self.write_telling(statement, &[&self.hub, &lock_token, &now.timestamp_millis()], notice)
            .await
    }

    async fn tidy_outbox(
        &self,
        kind: OutboxKind,
        now: chrono::DateTime<chrono::Utc>,
        older_than: chrono::DateTime<chrono::Utc>,
        keep: usize,
    ) -> Result<bool, HubStoreError> {
        let sql = OutboxSql::of(kind);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        let released = tx
            .execute(&sql.release_stale, &[&self.hub, &now.timestamp_millis()])
            .await
            .map_err(backend)?;
        let expired = tx
            .execute(&sql.expire, &[&self.hub, &older_than.to_rfc3339()])
            .await
            .map_err(backend)?;
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        let over = tx.execute(&sql.bound, &[&self.hub, &keep]).await.map_err(backend)?;
        if released > 0 {
            tx.execute(NOTIFY, &[&outbox_notice(self.hub, &self.db.node, kind)])
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)?;
        if over > 0 {
            tracing::warn!(
                dropped = over,
                limit = keep,
                queue = outbox_names(kind).0,
                "unread records over the limit: the oldest were dropped"
            );
        }
        if released + expired > 0 {
            tracing::debug!(
                released,
                expired,
                queue = outbox_names(kind).0,
                "service-bound queue tidied"
            );
        }
        Ok(released > 0)
    }

    async fn get<T: DeserializeOwned + Send + 'static>(
        &self,
        _table: &'static str,
        sql: &'static str,
        key: String,
    ) -> Result<Option<T>, HubStoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(&placeholders(sql)).await.map_err(backend)?;
        let row = client.query_opt(&stmt, &[&self.hub, &key]).await.map_err(backend)?;
        row.map(|r| serde_json::from_str(r.try_get::<_, &str>(0).map_err(backend)?).map_err(|e| undecodable(&key, e)))
            .transpose()
    }

    async fn collect<T: DeserializeOwned + Send + 'static>(
        &self,
        _table: &'static str,
        sql: &'static str,
        args: Vec<Arg<'static>>,
    ) -> Result<Vec<T>, HubStoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(&placeholders(sql)).await.map_err(backend)?;
        let hub = Arg::Int(self.hub);
        let params: Vec<&(dyn ToSql + Sync)> = std::iter::once(&hub)
            .chain(&args)
            .map(|a| a as &(dyn ToSql + Sync))
            .collect();
        let rows = client.query(&stmt, &params).await.map_err(backend)?;
        rows.iter()
            .map(|r| {
                let key: &str = r.try_get(0).map_err(backend)?;
                let doc: &str = r.try_get(1).map_err(backend)?;
                serde_json::from_str(doc).map_err(|e| undecodable(key, e))
            })
            .collect()
    }

    async fn counts(&self) -> Result<(i64, i64), HubStoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(&placeholders(COUNT)).await.map_err(backend)?;
        let row = client.query_one(&stmt, &[&self.hub]).await.map_err(backend)?;
        Ok((row.try_get(0).map_err(backend)?, row.try_get(1).map_err(backend)?))
    }

    async fn c2d_count(&self) -> Result<i64, HubStoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&placeholders(crate::hub_documents::COUNT_C2D))
            .await
            .map_err(backend)?;
        let row = client.query_one(&stmt, &[&self.hub]).await.map_err(backend)?;
        row.try_get(0).map_err(backend)
    }

    async fn append_events(&self, events: &[Arc<TelemetryMessage>]) -> Result<(), HubStoreError> {
        let rows = event_rows(events)?;
        self.db.events.write(EventOp::Append { hub: self.hub, rows }).await
    }

    async fn append_numbered(&self, msg: TelemetryMessage) -> Result<TelemetryMessage, HubStoreError> {
        let numbered = Arc::new(std::sync::Mutex::new(None));
        self.db
            .events
            .write(EventOp::Numbered {
                hub: self.hub,
                node: self.db.node.clone(),
                msg,
                numbered: numbered.clone(),
            })
            .await?;
        let numbered = numbered.lock().expect("never poisoned").take();
        numbered.ok_or_else(|| HubStoreError::backend("the telemetry writer committed an unnumbered message"))
    }

    async fn read_partition(
        &self,
        partition: u32,
        from: u64,
        limit: usize,
    ) -> Result<Vec<TelemetryMessage>, HubStoreError> {
        let (partition, from, limit) = (i64::from(partition), int(from)?, int(limit as u64)?);
        self.events(READ_PARTITION, &[&self.hub, &partition, &from, &limit])
            .await
    }

    async fn find_in_partition(&self, partition: u32, start: EventStart) -> Result<Option<u64>, HubStoreError> {
        let (sql, value) = match start {
            EventStart::Offset(o) => (FIND_OFFSET, int(o)?),
            EventStart::EnqueuedAt(ms) => (FIND_TIME, ms),
        };
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql).await.map_err(backend)?;
        let row = client
            .query_opt(&stmt, &[&self.hub, &i64::from(partition), &value])
            .await
            .map_err(backend)?;
        row.map(|r| uint(r.try_get(0).map_err(backend)?)).transpose()
    }

    async fn recent_events(
        &self,
        device_id: Option<&str>,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<TelemetryMessage>, HubStoreError> {
        let device = device_id.map(dps_hub::store::device_key);
        let limit = int(limit as u64)?;
        match after.map(int).transpose()? {
            Some(after) => self.events(AFTER, &[&self.hub, &after, &device, &limit]).await,
            None => {
                let mut newest = self.events(NEWEST, &[&self.hub, &device, &limit]).await?;
                newest.reverse();
                Ok(newest)
            }
        }
    }

    async fn partition_bounds(&self) -> Result<Vec<PartitionBounds>, HubStoreError> {
        let rows: Vec<(i64, i64, i64, i64)> = {
            let client = self.client().await?;
            let stmt = client.prepare_cached(BOUNDS).await.map_err(backend)?;
            client
                .query(&stmt, &[&self.hub])
                .await
                .map_err(backend)?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
                .collect::<Result<_, tokio_postgres::Error>>()
                .map_err(backend)?
        };
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let last_enqueued = self
                .events(LAST, &[&self.hub, &row.3])
                .await?
                .first()
                .map(|m| m.enqueued_time)
                .unwrap_or_default();
            out.push(partition_bounds(row, last_enqueued)?);
        }
        Ok(out)
    }

    async fn trim_events(
        &self,
        older_than: chrono::DateTime<chrono::Utc>,
        max_bytes: u64,
    ) -> Result<u64, HubStoreError> {
        let deleted = Arc::new(AtomicU64::new(0));
        self.db
            .events
            .write(EventOp::Trim {
                hub: self.hub,
                older_than_ms: older_than.timestamp_millis(),
                max_bytes: i64::try_from(max_bytes).unwrap_or(i64::MAX),
                deleted: deleted.clone(),
            })
            .await?;
        Ok(deleted.load(Ordering::Relaxed))
    }
}

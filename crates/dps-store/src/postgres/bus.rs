//! The nodes' channel (decision 0031): each node LISTENs on one connection of its own, and a
//! write other nodes must hear of sends `pg_notify` on [`BUS_CHANNEL`] in its transaction, so
//! the notice is delivered only if, and once, the write commits. No broker besides PostgreSQL.
//!
//! A node whose listening connection dropped cannot know what it missed while it was away:
//! after it listens again it hears [`BusEvent::Resync`], and must treat everything it caches
//! from the database as stale.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::broadcast;
use tokio_postgres::{AsyncMessage, Client};

use super::connection::Settings;
use super::{backend, PgOpenError, PostgresStore};
use dps_core::StoreError;

/// The channel every node listens on.
pub const BUS_CHANNEL: &str = "dps";

/// The longest payload PostgreSQL's NOTIFY carries (bytes); anything larger goes in a row the
/// notice names.
pub const MAX_NOTICE: usize = 7999;

/// Notices a subscriber may fall behind by before it misses some (it is then told to resync,
/// as after a lost connection: [`broadcast::error::RecvError::Lagged`]).
const BACKLOG: usize = 4096;

/// How often the listening connection proves it is alive: a connection that stopped answering
/// (a network that drops packets silently) is otherwise noticed only by TCP, hours later.
const PING_EVERY: Duration = Duration::from_secs(10);

/// How long a ping may take before the connection is taken for dead.
const PING_DEADLINE: Duration = Duration::from_secs(5);

/// The longest wait between attempts to listen again while PostgreSQL is away.
const MOST_BACKOFF: Duration = Duration::from_secs(5);

/// What a node hears on the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusEvent {
    /// A notice another node (or this one) sent: its payload.
    Notice(Arc<str>),
    /// The node listens again after its connection was lost: notices sent meanwhile are gone,
    /// so whatever it caches may be stale.
    Resync,
}

/// A node's ear on the database; dropping it stops listening.
pub struct NodeBus {
    events: broadcast::Sender<BusEvent>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for NodeBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeBus").finish_non_exhaustive()
    }
}

impl Drop for NodeBus {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl NodeBus {
    /// Listens on [`BUS_CHANNEL`] of the database at `url`; fails when it cannot now, then
    /// keeps listening (reconnecting with back-off) until dropped.
    pub async fn listen(url: &str) -> Result<NodeBus, PgOpenError> {
        let config = Settings::of(url, "dps-bus")?;
        let (events, _) = broadcast::channel(BACKLOG);
        let first = listening(&config, &events).await.map_err(PgOpenError::Listen)?;
        let task = tokio::spawn(keep_listening(config, events.clone(), first));
        Ok(NodeBus { events, task })
    }

    /// What the node hears from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<BusEvent> {
        self.events.subscribe()
    }
}

impl PostgresStore {
    /// Tells every listening node `payload` (at most [`MAX_NOTICE`] bytes) now, outside any
    /// write: for notices no write carries.
    pub async fn notify(&self, payload: &str) -> Result<(), StoreError> {
        if payload.len() > MAX_NOTICE {
            return Err(StoreError::backend(format!(
                "a notice of {} bytes is over PostgreSQL's {MAX_NOTICE}",
                payload.len()
            )));
        }
        let client = self.client().await?;
        client
            .execute("SELECT pg_notify($1, $2)", &[&BUS_CHANNEL, &payload])
            .await
            .map_err(backend)?;
        Ok(())
    }
}

/// A connection listening on the channel: its client (which keeps the connection open) and the
/// task forwarding its notices, which ends when the connection does.
struct Listening {
    client: Client,
    forwarding: tokio::task::JoinHandle<()>,
}

async fn listening(
    config: &Settings,
    events: &broadcast::Sender<BusEvent>,
) -> Result<Listening, tokio_postgres::Error> {
    let (client, mut connection) = config.connect().await?;
    let forward = events.clone();
    let forwarding = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    // No subscriber yet is no error: nothing listens for what nobody needs.
                    let _ = forward.send(BusEvent::Notice(n.payload().into()));
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "the PostgreSQL listening connection failed");
                    return;
                }
            }
        }
    });
    client.batch_execute(&format!("LISTEN {BUS_CHANNEL}")).await?;
    Ok(Listening { client, forwarding })
}

async fn keep_listening(config: Settings, events: broadcast::Sender<BusEvent>, mut current: Listening) {
    loop {
        alive(&mut current).await;
        current.forwarding.abort();
        tracing::warn!("lost the PostgreSQL listening connection; listening again");
        let mut backoff = Duration::from_millis(100);
        current = loop {
            match listening(&config, &events).await {
                Ok(l) => break l,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot listen on PostgreSQL yet");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MOST_BACKOFF);
                }
            }
        };
        let _ = events.send(BusEvent::Resync);
    }
}

/// Returns when `l`'s connection ended or stopped answering pings.
async fn alive(l: &mut Listening) {
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            _ = &mut l.forwarding => return,
            _ = ping.tick() => {
                match tokio::time::timeout(PING_DEADLINE, l.client.batch_execute("SELECT 1")).await {
                    Ok(Ok(())) => {}
                    _ => return,
                }
            }
        }
    }
}

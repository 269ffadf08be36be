//! The AMQP 1.0 adapter (port 5671, and tunnelled in WebSockets on 443 with subprotocol
//! `AMQPWSB10`): one endpoint for the DPS device endpoint and the embedded hub's device endpoint,
//! as with MQTT. The AMQP protocol engine (framing, sessions, links, flow control, settlement) is
//! fe2o3-amqp's (decision 0019); this module authenticates the connection ([`auth`] over
//! [`sasl`]), routes each link a client attaches by its address, and turns messages into the
//! same engine and hub calls the MQTT adapter makes.
//!
//! Addresses (device-protocol.md, newer-surfaces.md):
//! - `{idScope}/registrations/{registrationId}`: DPS requests (the client's sender) and their
//!   responses (the client's receiver) — [`dps`].
//! - `$cbs`, `/devices/{id}/...`: the hub — [`hub`].

/// `AsyncWrite` for a reader wrapper (`$wrapper<S>` with the wrapped stream in `inner`): writes
/// go straight through.
macro_rules! delegate_write {
    ($wrapper:ident) => {
        impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $wrapper<S> {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
            }

            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }
        }
    };
}
use delegate_write;

mod auth;
mod dps;
mod guard;
mod hub;
mod links;
mod message;
pub(crate) mod sasl;

use std::sync::Arc;
use std::time::Duration;

use fe2o3_amqp::acceptor::{ConnectionAcceptor, ListenerConnectionHandle, ListenerSessionHandle, SessionAcceptor};
use fe2o3_amqp::types::performatives::Attach;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::Services;
use auth::{ConnAuthenticator, ConnIdentity};
use sasl::{Opened, Rewound};

/// How long a client has, once TLS is up, to finish SASL and open the AMQP connection. Every SDK
/// needs a few round trips; a client slower than this holds a connection without credentials.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest frame the server accepts and announces (`max-frame-size` in its open): room for
/// the largest message accepted (`max-message-bytes`) and its transfer performative, so no client
/// needs to split a message over frames (which the frame check refuses, see [`guard`]).
fn max_frame_bytes(config: &crate::ServerConfig) -> usize {
    config.max_message_bytes + 64 * 1024
}

/// Sessions one connection may begin. The SDKs use one (Node, C#) or a few (C multiplexing
/// devices over one connection); each costs the server a task and its buffers.
const MAX_SESSIONS: u16 = 16;

/// Links one session may attach. A device uses at most 8 (CBS pair, telemetry, C2D, methods pair,
/// twin pair); the cap stops a client making the server hold link state without end.
const MAX_LINKS_PER_SESSION: usize = 64;

/// The idle time-out the server announces (`idle-time-out` in its open): a client must send
/// something (an empty frame at least) this often. Azure announces 240 s; the SDKs send
/// heartbeats at about half of what the server announces.
const IDLE_TIMEOUT_MS: u32 = 240_000;

/// The container id in the server's open frame.
const CONTAINER_ID: &str = "dps";

/// What every link handler of a connection shares.
pub(crate) struct Conn {
    pub(crate) services: Arc<Services>,
    /// Who the SASL layer (or the TLS certificate) says the client is.
    pub(crate) identity: ConnIdentity,
    /// The DER certificates the client sent in the TLS handshake (leaf first), empty for SAS.
    pub(crate) peer_certs: Vec<Vec<u8>>,
    /// Per-connection hub state: the CBS tokens put, and the device sessions open.
    pub(crate) hub: hub::HubState,
    /// The links the server sends on (the client's receivers), by node address.
    pub(crate) replies: Arc<links::ReplyLinks>,
    /// DPS devices authenticated by the TLS client certificate, by registration node address.
    pub(crate) x509_devices: parking_lot::Mutex<std::collections::HashMap<String, Arc<auth::DpsDevice>>>,
}

/// Serves one AMQP connection over any byte stream: TLS on 5671, or the WebSocket tunnel on 443.
/// `peer_certs` are the DER certificates the client sent in the TLS handshake (empty for SAS
/// clients); possession of the leaf's key was proven by TLS.
pub async fn serve_connection<S>(stream: S, services: Arc<Services>, peer_certs: Vec<Vec<u8>>)
where
    S: AsyncRead + AsyncWrite + std::fmt::Debug + Send + Unpin + 'static,
{
    let opened_by = Instant::now() + OPEN_TIMEOUT;
    let mut stream = Rewound::new(stream);
    let mut authenticator = ConnAuthenticator::new(&services);
    let identity = match tokio::time::timeout_at(opened_by, sasl::negotiate(&mut stream, &mut authenticator)).await {
        Ok(Ok(Opened::Sasl(identity))) => identity,
        Ok(Ok(Opened::NoSasl)) => ConnIdentity::Unnamed,
        Ok(Err(e)) => {
            tracing::info!(error = %e, "AMQP connection refused during SASL");
            return;
        }
        Err(_) => {
            tracing::debug!("AMQP client did not finish SASL within {OPEN_TIMEOUT:?}; closing");
            return;
        }
    };
    let acceptor = ConnectionAcceptor::builder()
        .container_id(CONTAINER_ID)
        .max_frame_size(max_frame_bytes(&services.config) as u32)
        .channel_max(MAX_SESSIONS - 1)
        .idle_time_out(IDLE_TIMEOUT_MS)
        .build();
    let stream = guard::FrameGuard::new(stream, max_frame_bytes(&services.config));
    let mut connection = match tokio::time::timeout_at(opened_by, acceptor.accept(stream)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "AMQP open failed");
            return;
        }
        Err(_) => {
            tracing::debug!("AMQP client did not open within {OPEN_TIMEOUT:?}; closing");
            return;
        }
    };
    // A DPS connection lives as long as a DPS session may (as on MQTT); a hub connection as long
    // as its client keeps it alive.
    let deadline = identity
        .is_dps()
        .then(|| Instant::now() + services.config.limits.dps_session_timeout());
    let conn = Arc::new(Conn {
        services,
        identity,
        peer_certs,
        hub: hub::HubState::default(),
        replies: Arc::default(),
        x509_devices: Default::default(),
    });
    let mut sessions = JoinSet::new();
    loop {
        let next = async {
            match deadline {
                Some(d) => tokio::time::timeout_at(d, connection.next_incoming_session())
                    .await
                    .ok(),
                None => Some(connection.next_incoming_session().await),
            }
        };
        let incoming = match next.await {
            Some(Some(incoming)) => incoming,
            // The client closed the connection.
            Some(None) => break,
            None => {
                tracing::info!("closing AMQP DPS connection: the DPS session deadline passed");
                break;
            }
        };
        match SessionAcceptor::new()
            .accept_incoming_session(incoming, &mut connection)
            .await
        {
            Ok(session) => {
                sessions.spawn(serve_session(session, conn.clone()));
            }
            Err(e) => {
                tracing::debug!(error = %e, "AMQP session refused");
                break;
            }
        }
    }
    sessions.abort_all();
    conn.hub.close().await;
    close(connection).await;
}

async fn close(mut connection: ListenerConnectionHandle) {
    if let Err(e) = connection.close().await {
        tracing::debug!(error = %e, "AMQP connection did not close cleanly");
    }
}

/// Serves one session: every link the client attaches is routed by its address to a handler
/// task, until the session ends.
async fn serve_session(mut session: ListenerSessionHandle, conn: Arc<Conn>) {
    let mut links = JoinSet::new();
    while let Some(attach) = session.next_incoming_attach().await {
        // Finished link tasks are reaped so the cap counts live links only.
        while links.try_join_next().is_some() {}
        if links.len() >= MAX_LINKS_PER_SESSION {
            links::refuse(
                &mut session,
                attach,
                links::Refusal::ResourceLimit(format!("at most {MAX_LINKS_PER_SESSION} links per session")),
            )
            .await;
            continue;
        }
        route(&mut session, attach, &conn, &mut links).await;
    }
    links.abort_all();
    if let Err(e) = session.end().await {
        tracing::debug!(error = %e, "AMQP session did not end cleanly");
    }
}

/// Attaches (or refuses) one link by its address.
async fn route(session: &mut ListenerSessionHandle, attach: Attach, conn: &Arc<Conn>, links: &mut JoinSet<()>) {
    let address = links::address_of(&attach);
    if let Some(node) = dps_proto::dps_amqp::RegistrationNode::parse(&address) {
        dps::attach(session, attach, node, conn, links).await;
    } else if let Some(node) = dps_proto::hub_amqp::HubNode::parse(&address) {
        hub::attach(session, attach, node, conn, links).await;
    } else {
        links::refuse(
            session,
            attach,
            links::Refusal::NotFound(format!("no node at address '{address}'")),
        )
        .await;
    }
}

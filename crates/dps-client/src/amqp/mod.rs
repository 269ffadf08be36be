//! AMQP 1.0 plumbing shared by the clients: the TLS stream (opened here, so TLS and CA handling
//! are the same as for MQTT and HTTPS), the SASL layer ([`sasl`]), and the AMQP connection
//! itself, whose protocol engine (sessions, links, flow control, settlement) is fe2o3-amqp's,
//! the same crate the server uses (decision 0019).

pub(crate) mod sasl;

use std::sync::Arc;
use std::time::Duration;

use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::link::{DetachError, LinkStateError, ReceiverAttachError, RecvError, SendError, SenderAttachError};
use fe2o3_amqp::types::definitions;
use fe2o3_amqp::types::messaging::{Body, MessageId};
use fe2o3_amqp::types::primitives::Value;
use fe2o3_amqp::{Connection, Delivery, Receiver};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::ClientError;

/// The largest frame this client accepts (`max-frame-size` in its open), as the C# SDK: larger
/// messages arrive in several transfers.
const MAX_FRAME_BYTES: u32 = 64 * 1024;

/// How long TCP connect plus the TLS handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A TLS connection to `host:port`, trusting what `tls` trusts and presenting its client
/// certificate, if any.
pub(crate) async fn tls_stream(
    host: &str,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
) -> Result<TlsStream<TcpStream>, ClientError> {
    let context = format!("AMQP connection to {host}:{port}");
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| ClientError::connection(context.clone(), &e))?;
    let connect = async {
        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(|e| ClientError::connection(context.clone(), &e))?;
        // Requests are small and answered one by one: Nagle would only delay them.
        let _ = tcp.set_nodelay(true);
        tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| ClientError::connection(format!("{context} (TLS handshake)"), &e))
    };
    tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| ClientError::Timeout {
            what: context.clone(),
            after: CONNECT_TIMEOUT,
        })?
}

/// Opens the AMQP connection on `stream` (after its SASL layer, if any): fe2o3 sends the plain
/// AMQP header and the open frame with `host` as hostname.
pub(crate) async fn open(stream: TlsStream<TcpStream>, host: &str) -> Result<ConnectionHandle<()>, ClientError> {
    let container = uuid::Uuid::new_v4().to_string();
    Connection::builder()
        .container_id(container)
        .hostname(host)
        .scheme("amqp")
        .max_frame_size(MAX_FRAME_BYTES)
        .open_with_stream(stream)
        .await
        .map_err(|e| ClientError::connection(format!("opening the AMQP connection to {host}"), &e))
}

/// Closes the connection if it is still open; a failure to close cleanly is only logged (the
/// device's work on it is done).
pub(crate) async fn close(connection: &mut ConnectionHandle<()>) {
    if connection.is_closed() {
        return;
    }
    if let Err(e) = connection.close().await {
        tracing::debug!(error = %e, "the AMQP connection did not close cleanly");
    }
}

pub(crate) use dps_proto::amqp_message::{condition_name, seconds, Incoming};

/// The reply to the request whose id is `correlation` (a string, as the Node SDK sends): the
/// next message on `receiver` with that correlation id. Every message is settled; others (the
/// late answer to an earlier request, a notification) are skipped. `what` names the reply in
/// errors.
pub(crate) async fn reply(
    receiver: &mut Receiver,
    correlation: &str,
    what: &str,
) -> Result<Delivery<Body<Value>>, ClientError> {
    loop {
        let delivery = receiver
            .recv::<Body<Value>>()
            .await
            .map_err(|e| link_failure(&format!("receiving {what}"), &e))?;
        receiver
            .accept(&delivery)
            .await
            .map_err(|e| ClientError::connection(format!("settling {what}"), &e))?;
        let answers = delivery
            .message()
            .properties
            .as_ref()
            .and_then(|p| p.correlation_id.as_ref())
            .is_some_and(|c| matches!(c, MessageId::String(s) if s == correlation));
        if answers {
            return Ok(delivery);
        }
        tracing::debug!("skipping a message that does not answer the request for {what}");
    }
}

/// The error the server closed (or detached) a link with: how it refuses a link this connection
/// may not attach (`amqp:unauthorized-access`, `amqp:not-found`) or ends one. `None` when the
/// link failed for another reason (the connection broke).
pub(crate) trait LinkRefusal {
    /// The server's error, if it gave one.
    fn refusal(&self) -> Option<&definitions::Error>;
}

impl LinkRefusal for LinkStateError {
    fn refusal(&self) -> Option<&definitions::Error> {
        match self {
            Self::RemoteDetachedWithError(e) | Self::RemoteClosedWithError(e) => Some(e),
            _ => None,
        }
    }
}

impl LinkRefusal for DetachError {
    fn refusal(&self) -> Option<&definitions::Error> {
        match self {
            Self::RemoteDetachedWithError(e) | Self::RemoteClosedWithError(e) => Some(e),
            _ => None,
        }
    }
}

impl LinkRefusal for SendError {
    fn refusal(&self) -> Option<&definitions::Error> {
        match self {
            Self::LinkStateError(e) => e.refusal(),
            Self::Detached(e) => e.refusal(),
            _ => None,
        }
    }
}

impl LinkRefusal for RecvError {
    fn refusal(&self) -> Option<&definitions::Error> {
        match self {
            Self::LinkStateError(e) => e.refusal(),
            _ => None,
        }
    }
}

impl LinkRefusal for SenderAttachError {
    fn refusal(&self) -> Option<&definitions::Error> {
        match self {
            Self::RemoteClosedWithError(e) => Some(e),
            _ => None,
        }
    }
}

impl LinkRefusal for ReceiverAttachError {
    fn refusal(&self) -> Option<&definitions::Error> {
        match self {
            Self::RemoteClosedWithError(e) => Some(e),
            _ => None,
        }
    }
}

/// A failed link operation as the client's error: a refusal by the server is
/// [`ClientError::Service`] with the status its condition stands for and its description (so an
/// unauthorized device is told why, and not retried as a network failure); anything else is a
/// connection failure while doing `what`.
pub(crate) fn link_failure<E>(what: &str, e: &E) -> ClientError
where
    E: LinkRefusal + std::error::Error + 'static,
{
    match e.refusal() {
        Some(refusal) => {
            let condition = condition_name(&refusal.condition);
            ClientError::Service {
                status: dps_proto::dps_amqp::status_of_condition(&condition),
                error_code: None,
                message: refusal.description.clone().unwrap_or(condition),
                tracking_id: None,
            }
        }
        None => ClientError::connection(what.to_string(), e),
    }
}

//! The rumqttc plumbing both clients share: options with TLS and credentials, and a task that
//! drives the event loop.
//!
//! Why a task per connection rather than polling the event loop inline: the event loop must be
//! polled continuously (keep-alive pings, PUBACKs for the server's QoS 1 publishes) even while the
//! caller is sleeping between polls or waiting on something else, and a dedicated task makes the
//! event loop's cancellation behaviour irrelevant — callers only ever `select!` on channels.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, NetworkOptions, Outgoing, TlsConfiguration,
};
use tokio::task::JoinHandle;

/// Largest packet accepted or sent: IoT Hub's 256 KiB message limit plus room for the topic.
pub(crate) const MAX_PACKET: usize = 256 * 1024 + 64 * 1024;

/// Connection parameters common to DPS and hub connections.
pub(crate) struct Connect<'a> {
    pub host: &'a str,
    pub port: u16,
    pub client_id: &'a str,
    pub username: String,
    /// Empty for X.509 (the TLS client certificate is the credential).
    pub password: String,
    pub tls: Arc<rustls::ClientConfig>,
    pub keep_alive: Duration,
    pub connect_timeout: Duration,
}

/// Builds the client and event loop. MQTT 3.1.1, clean session (the servers keep no session
/// state anyway), TLS with the given configuration.
pub(crate) fn client(c: Connect<'_>, capacity: usize) -> (AsyncClient, EventLoop) {
    let mut opts = MqttOptions::new(c.client_id, c.host, c.port);
    opts.set_transport(rumqttc::Transport::tls_with_config(TlsConfiguration::Rustls(c.tls)));
    opts.set_keep_alive(c.keep_alive.max(Duration::from_secs(5)));
    opts.set_clean_session(true);
    opts.set_max_packet_size(MAX_PACKET, MAX_PACKET);
    opts.set_credentials(c.username, c.password);
    let (client, mut eventloop) = AsyncClient::new(opts, capacity);
    let mut net = NetworkOptions::new();
    net.set_connection_timeout(c.connect_timeout.as_secs().max(1));
    eventloop.set_network_options(net);
    (client, eventloop)
}

/// Drives `eventloop` in a task, handing every event to `handler` until it breaks, the
/// connection fails (the error is handed over first), or a DISCONNECT was sent.
pub(crate) fn spawn<F>(mut eventloop: EventLoop, mut handler: F) -> JoinHandle<()>
where
    F: FnMut(Result<Event, ConnectionError>) -> ControlFlow<()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let ev = eventloop.poll().await;
            let last = matches!(ev, Err(_) | Ok(Event::Outgoing(Outgoing::Disconnect)));
            if handler(ev).is_break() || last {
                break;
            }
        }
    })
}

/// Aborts the event-loop task when dropped — also when the future owning it is cancelled (a
/// caller's timeout), so a connection never outlives the operation that opened it.
pub(crate) struct TaskGuard(pub JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

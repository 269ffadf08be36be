//! AMQP from a client, as port 5671 (and the `AMQPWSB10` WebSocket tunnel) reads it: the
//! server's SASL layer (PLAIN, TPM, ANONYMOUS...), its AMQP connection engine (framing, open,
//! sessions, links: `dps_proto::amqp_conn`), and the DPS and hub handlers behind them, all in one connection over an in-memory
//! stream against an in-memory engine and hub with one enrolled and provisioned device.
//!
//! Time is paused, so every deadline (open, link detach, sends) fires as soon as the connection
//! is idle: an input runs in microseconds whatever it leaves waiting. A fresh runtime per input
//! drops whatever tasks the connection spawned.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use dps_core::auth::PolicyAuthorizer;
use dps_core::FakeClock;
use dps_datadir::{HubIdentity, Identity};
use dps_server::hubs::{EmbeddedHub, EmbeddedHubs};
use dps_server::{ServerConfig, Services};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::bodies::{enroll_device, hub_device};
use crate::support::{chunk_of, engine, hub, now, HUB_HOST, ID_SCOPE};

/// One client connection's bytes (after TLS) into the AMQP adapter. Nothing may panic, and the
/// only device in the hub stays the fixture's: no input makes the server create another.
pub fn amqp_connection(data: &[u8]) {
    let (chunk, _, data) = chunk_of(data);
    crate::support::block_on_paused(async {
        let services = services().await;
        let stream = OwnedReplay {
            data: data.to_vec(),
            pos: 0,
            chunk,
        };
        dps_server::amqp::serve_connection(stream, services.clone(), Vec::new(), None).await;
        let devices = services
            .hubs
            .first()
            .hub
            .statistics()
            .await
            .expect("in-memory statistics")
            .total_device_count;
        assert!(devices <= 1, "a connection created hub devices: {devices}");
    });
}

/// The server's shared state over the in-memory engine and hub: `DEVICE` enrolled with `KEY`
/// and present in the hub with `KEY`, so seeds with valid tokens reach the links.
pub(crate) async fn services() -> Arc<Services> {
    let hub = hub();
    let engine = engine(&hub);
    enroll_device(&engine).await;
    hub_device(&hub).await;
    let mut config = ServerConfig::defaults();
    config.max_message_bytes = 4096;
    let service = vec![service_policy()];
    let hub_identity = HubIdentity {
        host_name: HUB_HOST.into(),
        policies: service,
        ..Default::default()
    };
    let hubs = EmbeddedHubs::new(EmbeddedHub::new(hub, hub_identity.clone(), None), []);
    let dps_auth = PolicyAuthorizer::new(Vec::new());
    // AMQP changes no policy: a data directory that does not exist keeps none.
    let policies = Arc::new(dps_server::policies::PolicyBook::new(
        dps_server::policies::IdentityKeeper::DataDir(dps_server::DataDir::new("/nonexistent/dps-fuzz")),
        dps_auth.clone(),
        hubs.authorizers(),
    ));
    Arc::new(Services {
        engine: Arc::new(engine),
        hubs,
        dps_auth,
        policies,
        audit: dps_server::audit::AuditTrail::start(
            Arc::new(dps_core::store::memory::MemoryStore::new()),
            std::time::Duration::from_secs(86400),
            tokio::sync::watch::channel(false).1,
        ),
        portal: Arc::new(dps_server::portal::Portal::new("")),
        identity: Identity {
            id_scope: ID_SCOPE.into(),
            policies: Vec::new(),
            hub: hub_identity,
            other_hubs: Vec::new(),
            portal_key: String::new(),
        },
        config,
        clock: Arc::new(FakeClock::at(now())),
        storage_account: None,
        metrics: Default::default(),
        readiness: Default::default(),
    })
}

/// The hub's one shared access policy: `service`, with `KEY` and `ServiceConnect`, so seeds with
/// its token reach the service's cloud-to-device node.
fn service_policy() -> dps_core::auth::SharedAccessPolicy {
    dps_core::auth::SharedAccessPolicy {
        key_name: SERVICE_POLICY.into(),
        primary_key: crate::support::KEY.into(),
        secondary_key: crate::support::KEY.into(),
        rights: vec!["ServiceConnect".into()],
    }
}

/// The name of [`service_policy`].
const SERVICE_POLICY: &str = "service";

/// [`crate::support::ReplayStream`] owning its bytes: the AMQP adapter's tasks outlive any borrow.
#[derive(Debug)]
struct OwnedReplay {
    data: Vec<u8>,
    pos: usize,
    chunk: usize,
}

impl AsyncRead for OwnedReplay {
    fn poll_read(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let n = (this.data.len() - this.pos).min(this.chunk).min(buf.remaining());
        buf.put_slice(&this.data[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for OwnedReplay {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Writes the seed corpus of `amqp_connection`: what real AMQP clients (fe2o3-amqp's, as the
/// SDKs speak it) send on a connection that provisions `DEVICE` over PLAIN, and one that puts a
/// CBS token and uses the hub's links. Run by hand when the protocol handling changes:
/// `cargo test -p dps-fuzz --lib amqp::seeds -- --ignored`.
#[cfg(test)]
mod seeds {
    use std::sync::Mutex;

    use dps_proto::sas;
    use fe2o3_amqp::sasl_profile::SaslProfile;
    use fe2o3_amqp::types::messaging::{ApplicationProperties, Body, Message, MessageAnnotations, Properties};
    use fe2o3_amqp::types::primitives::{Binary, Symbol, Value};
    use fe2o3_amqp::{Connection, Receiver, Sender, Session};

    use super::*;
    use crate::support::{now_unix, DEVICE, KEY};

    /// The client half of a duplex, recording what the client writes.
    #[derive(Debug)]
    struct Recording {
        inner: tokio::io::DuplexStream,
        sent: Arc<Mutex<Vec<u8>>>,
    }

    impl AsyncRead for Recording {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Recording {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
            self.sent.lock().unwrap().extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    async fn record<F, Fut>(name: &str, profile: SaslProfile, client: F)
    where
        F: FnOnce(fe2o3_amqp::connection::ConnectionHandle<()>) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let services = services().await;
        let server = tokio::spawn(dps_server::amqp::serve_connection(b, services, Vec::new(), None));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let stream = Recording {
            inner: a,
            sent: sent.clone(),
        };
        let connection = Connection::builder()
            .container_id("seed")
            .hostname(HUB_HOST)
            .sasl_profile(profile)
            .open_with_stream(stream)
            .await
            .expect("the seed client connects");
        client(connection).await;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), server).await;
        let mut bytes = vec![0x3f]; // chunks of 64 bytes
        bytes.extend_from_slice(&sent.lock().unwrap());
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/amqp_connection");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
    }

    /// Puts `token` for the audience `name` on `$cbs` as the SDKs do, and takes the reply.
    async fn put_token(session: &mut fe2o3_amqp::session::SessionHandle<()>, name: String, token: String) {
        let mut cbs_tx = Sender::attach(session, "cbs-tx", "$cbs").await.unwrap();
        let mut cbs_rx = Receiver::attach(session, "cbs-rx", "$cbs").await.unwrap();
        let app = ApplicationProperties::builder()
            .insert("operation", "put-token")
            .insert("type", "servicebus.windows.net:sastoken")
            .insert("name", name)
            .build();
        let msg = Message::builder()
            .properties(
                Properties::builder()
                    .message_id(String::from("1"))
                    .reply_to("cbs")
                    .build(),
            )
            .application_properties(app)
            .value(Value::String(token))
            .build();
        cbs_tx.send(msg).await.unwrap();
        let reply = cbs_rx.recv::<Body<Value>>().await.unwrap();
        cbs_rx.accept(&reply).await.unwrap();
    }

    #[tokio::test]
    #[ignore = "writes the seed corpus; run by hand"]
    async fn write_seeds() {
        let registration = format!("{ID_SCOPE}/registrations/{DEVICE}");
        let dps_token = sas::build_token(&registration, KEY, now_unix() + 3600, Some("registration")).unwrap();
        let node = registration.clone();
        record(
            "dps-plain",
            SaslProfile::Plain {
                username: registration,
                password: dps_token,
            },
            |mut c| async move {
                let mut session = Session::begin(&mut c).await.unwrap();
                let mut rx = Receiver::attach(&mut session, "rx", node.as_str()).await.unwrap();
                let mut tx = Sender::attach(&mut session, "tx", node.as_str()).await.unwrap();
                let app = ApplicationProperties::builder()
                    .insert("iotdps-operation-type", "iotdps-register")
                    .insert("iotdps-forceRegistration", false)
                    .build();
                let msg = Message::builder()
                    .properties(Properties::builder().correlation_id(String::from("c-1")).build())
                    .application_properties(app)
                    .data(Binary::from(format!(r#"{{"registrationId":"{DEVICE}"}}"#).into_bytes()))
                    .build();
                tx.send(msg).await.unwrap();
                let reply = rx.recv::<Body<Value>>().await.unwrap();
                rx.accept(&reply).await.unwrap();
                let app = ApplicationProperties::builder()
                    .insert("iotdps-operation-type", "iotdps-get-operationstatus")
                    .insert("iotdps-operation-id", "op")
                    .build();
                let msg = Message::builder()
                    .properties(Properties::builder().correlation_id(String::from("c-2")).build())
                    .application_properties(app)
                    .data(Binary::from(Vec::new()))
                    .build();
                let _ = tx.send(msg).await;
                c.close().await.unwrap();
            },
        )
        .await;

        let service_token = sas::build_token(HUB_HOST, KEY, now_unix() + 3600, Some(SERVICE_POLICY)).unwrap();
        record("service-c2d", SaslProfile::Anonymous, |mut c| async move {
            let mut session = Session::begin(&mut c).await.unwrap();
            put_token(&mut session, HUB_HOST.into(), service_token).await;
            let mut tx = Sender::attach(&mut session, "svc", "/messages/devicebound")
                .await
                .unwrap();
            for to in [
                format!("/devices/{DEVICE}/messages/devicebound"),
                "/devices/ghost/messages/devicebound".into(),
            ] {
                let msg = Message::builder()
                    .properties(Properties::builder().message_id(String::from("c-1")).to(to).build())
                    .application_properties(ApplicationProperties::builder().insert("k", "v").build())
                    .data(Binary::from(b"hello".to_vec()))
                    .build();
                let _ = tx.send(msg).await;
            }
            c.close().await.unwrap();
        })
        .await;

        let hub_token =
            sas::build_token(&format!("{HUB_HOST}/devices/{DEVICE}"), KEY, now_unix() + 3600, None).unwrap();
        record("hub-cbs", SaslProfile::Anonymous, |mut c| async move {
            let mut session = Session::begin(&mut c).await.unwrap();
            put_token(&mut session, format!("{HUB_HOST}/devices/{DEVICE}"), hub_token).await;
            let events = format!("/devices/{DEVICE}/messages/events");
            let mut tx = Sender::attach(&mut session, "events", events.as_str()).await.unwrap();
            let msg = Message::builder()
                .properties(
                    Properties::builder()
                        .message_id(String::from("m-1"))
                        .content_type(Symbol::from("application/json"))
                        .build(),
                )
                .application_properties(ApplicationProperties::builder().insert("k", "v").build())
                .data(Binary::from(br#"{"t":21.5}"#.to_vec()))
                .build();
            tx.send(msg).await.unwrap();
            let twin = format!("/devices/{DEVICE}/twin");
            let mut twin_rx = Receiver::attach(&mut session, "twin-rx", twin.as_str()).await.unwrap();
            let mut twin_tx = Sender::attach(&mut session, "twin-tx", twin.as_str()).await.unwrap();
            for (op, resource, body) in [
                ("GET", None, " "),
                ("PATCH", Some("/properties/reported"), r#"{"fw":"1.0"}"#),
                ("PUT", Some("/notifications/twin/properties/desired"), " "),
            ] {
                let mut annotations = MessageAnnotations::builder().insert(Symbol::from("operation"), op);
                if let Some(r) = resource {
                    annotations = annotations.insert(Symbol::from("resource"), r);
                }
                let msg = Message::builder()
                    .message_annotations(annotations.build())
                    .properties(Properties::builder().correlation_id(format!("t-{op}")).build())
                    .data(Binary::from(body.as_bytes().to_vec()))
                    .build();
                twin_tx.send(msg).await.unwrap();
                let reply = twin_rx.recv::<Body<Value>>().await.unwrap();
                twin_rx.accept(&reply).await.unwrap();
            }
            let c2d = format!("/devices/{DEVICE}/messages/devicebound");
            let _c2d = Receiver::attach(&mut session, "c2d", c2d.as_str()).await.unwrap();
            let methods = format!("/devices/{DEVICE}/methods/devicebound");
            let _m_rx = Receiver::attach(&mut session, "m-rx", methods.as_str()).await.unwrap();
            let mut m_tx = Sender::attach(&mut session, "m-tx", methods.as_str()).await.unwrap();
            let msg = Message::builder()
                .properties(Properties::builder().correlation_id(String::from("1")).build())
                .application_properties(ApplicationProperties::builder().insert("IoThub-status", 200).build())
                .data(Binary::from(b"{}".to_vec()))
                .build();
            let _ = m_tx.send(msg).await;
            c.close().await.unwrap();
        })
        .await;
    }
}

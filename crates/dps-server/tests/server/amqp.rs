//! The AMQP listener (5671) against what a client may get wrong or do on purpose: malformed
//! protocol headers and frames, unknown SASL mechanisms, links to another device's addresses,
//! oversized messages — each gets a clear AMQP answer or a close, nothing is stored, and the
//! next client is served — and cloud-to-device settlement (complete, reject, abandon). The
//! official SDKs' happy paths are in tests/interop/test_node_amqp.py.
//!
//! Servers bind 127.0.39.x.

use crate::common;
use std::time::Duration;

use crate::common::{enroll, server, trusting_local_ca, KEY, MAX_MESSAGE_BYTES};
use dps_proto::sas::build_token;
use dps_server::RunningServer;
use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::messaging::{ApplicationProperties, Body, Message, Outcome, Properties};
use fe2o3_amqp::types::primitives::Value;
use fe2o3_amqp::{Connection, Receiver, Sender, Session};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const SASL_HEADER: &[u8; 8] = b"AMQP\x03\x01\x00\x00";

async fn tls(s: &RunningServer) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(s.amqp_addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(s.amqp_addr.ip().to_string()).unwrap();
    tokio_rustls::TlsConnector::from(trusting_local_ca(s))
        .connect(name, tcp)
        .await
        .unwrap()
}

/// Reads until the server closes the connection (or 5 s pass): what it sent.
async fn read_to_close(io: &mut TlsStream<TcpStream>) -> Vec<u8> {
    read_to_close_within(io, Duration::from_secs(5), "").await
}

async fn read_to_close_within(io: &mut TlsStream<TcpStream>, limit: Duration, what: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, io.read_to_end(&mut out))
        .await
        .unwrap_or_else(|_| panic!("the server closes the connection ({what})"));
    out
}

/// An AMQP connection with SASL `profile` (none: the AMQP header directly).
async fn open(s: &RunningServer, profile: Option<SaslProfile>) -> Result<ConnectionHandle<()>, String> {
    let mut b = Connection::builder()
        .container_id("test")
        .hostname(s.services.identity.hub.host_name.as_str());
    if let Some(p) = profile {
        b = b.sasl_profile(p);
    }
    b.open_with_stream(tls(s).await).await.map_err(|e| e.to_string())
}

fn plain(user: String, password: String) -> Option<SaslProfile> {
    Some(SaslProfile::Plain {
        username: user,
        password,
    })
}

fn device_sas(s: &RunningServer, device: &str) -> String {
    device_sas_for(s, device, 600)
}

/// A device SAS token valid for `seconds`.
fn device_sas_for(s: &RunningServer, device: &str, seconds: u64) -> String {
    let expiry = chrono::Utc::now().timestamp() as u64 + seconds;
    let audience = format!("{}/devices/{device}", s.services.identity.hub.host_name);
    build_token(&audience, KEY, expiry, None).unwrap()
}

/// Provisions `reg` (enrolled with [`KEY`]) into the hub through the engine, as any transport would.
async fn provision(s: &RunningServer, reg: &str) {
    enroll(s, reg, KEY).await;
    let out = common::register_raw(s, reg, &common::dps_sas(s, reg, KEY)).await;
    assert_eq!(out["status"], "assigned", "{out}");
}

/// Puts a SAS token for `device` on `$cbs`; the reply's `status-code`.
async fn put_token(session: &mut SessionHandle<()>, s: &RunningServer, device: &str, token: String) -> i32 {
    let audience = format!("{}/devices/{device}", s.services.identity.hub.host_name);
    put_token_for(session, audience, token).await
}

/// Puts a SAS token for `audience` on `$cbs`; the reply's `status-code`.
async fn put_token_for(session: &mut SessionHandle<()>, audience: String, token: String) -> i32 {
    let n = next_link();
    let mut sender = Sender::attach(session, format!("cbs-out-{n}"), "$cbs").await.unwrap();
    let mut receiver = Receiver::attach(session, format!("cbs-in-{n}"), "$cbs").await.unwrap();
    let app = ApplicationProperties::builder()
        .insert("operation", "put-token")
        .insert("type", "servicebus.windows.net:sastoken")
        .insert("name", audience)
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
    let outcome = sender.send(msg).await.unwrap();
    assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
    let reply = tokio::time::timeout(Duration::from_secs(5), receiver.recv::<Body<Value>>())
        .await
        .unwrap()
        .unwrap();
    receiver.accept(&reply).await.unwrap();
    let reply = reply.message();
    assert_eq!(
        reply.properties.as_ref().and_then(|p| p.correlation_id.clone()),
        Some(String::from("1").into()),
        "the reply correlates with the request's message id"
    );
    match reply.application_properties.as_ref().unwrap().0.get("status-code") {
        Some(fe2o3_amqp::types::primitives::SimpleValue::Int(code)) => *code,
        other => panic!("status-code must be an int, got {other:?}"),
    }
}

#[tokio::test]
async fn a_foreign_protocol_header_is_answered_with_amqps_and_closed() {
    let dir = tempfile::tempdir().unwrap();
    let s = server("127.0.39.1", dir.path()).await;
    let mut io = tls(&s).await;
    io.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let answer = read_to_close(&mut io).await;
    assert_eq!(
        answer, SASL_HEADER,
        "the header the server speaks, then close (AMQP 1.0 §2.2)"
    );
    // The listener goes on serving.
    assert!(open(&s, Some(SaslProfile::Anonymous)).await.is_ok());
    s.shutdown().await;
}

#[tokio::test]
async fn a_silent_or_stalled_client_is_closed_at_the_open_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let s = server("127.0.39.9", dir.path()).await;
    // Silent after the TLS handshake.
    let mut silent = tls(&s).await;
    // Stalled in the middle of the SASL exchange (header sent, no init).
    let mut stalled = tls(&s).await;
    stalled.write_all(SASL_HEADER).await.unwrap();
    let started = std::time::Instant::now();
    read_to_close_within(&mut silent, Duration::from_secs(15), "silent client").await;
    read_to_close_within(&mut stalled, Duration::from_secs(15), "stalled SASL").await;
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "closed by the 10 s open deadline"
    );
    assert!(open(&s, Some(SaslProfile::Anonymous)).await.is_ok());
    s.shutdown().await;
}

#[tokio::test]
async fn an_unknown_sasl_mechanism_gets_the_auth_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let s = server("127.0.39.2", dir.path()).await;
    let mut io = tls(&s).await;
    io.write_all(SASL_HEADER).await.unwrap();
    // sasl-init (0x41) with mechanism "KERBEROS": list of one symbol.
    let mut body = vec![0x00, 0x53, 0x41, 0xc0, 0x0b, 0x01, 0xa3, 0x08];
    body.extend_from_slice(b"KERBEROS");
    let mut frame = ((body.len() + 8) as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&[0x02, 0x01, 0x00, 0x00]);
    frame.extend_from_slice(&body);
    io.write_all(&frame).await.unwrap();
    let answer = read_to_close(&mut io).await;
    assert_eq!(&answer[..8], SASL_HEADER);
    // Then the mechanisms frame, then the outcome: descriptor 0x44 with code 1 (auth).
    let outcome = answer
        .windows(3)
        .position(|w| w == [0x00, 0x53, 0x44])
        .expect("a sasl-outcome frame");
    let code = answer[outcome + 3..].iter().skip_while(|b| **b != 0x50).nth(1).copied();
    assert_eq!(code, Some(1), "sasl-outcome code auth: {answer:02x?}");
    s.shutdown().await;
}

#[tokio::test]
async fn malformed_frames_close_the_connection_and_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let s = server("127.0.39.3", dir.path()).await;

    // A SASL frame claiming 4 GiB: closed before anything is buffered.
    let mut io = tls(&s).await;
    io.write_all(SASL_HEADER).await.unwrap();
    io.write_all(&[0xff, 0xff, 0xff, 0xff, 0x02, 0x01, 0, 0]).await.unwrap();
    read_to_close_within(&mut io, Duration::from_secs(5), "4 GiB SASL frame").await;

    // A SASL frame whose body is not a SASL performative.
    let mut io = tls(&s).await;
    io.write_all(SASL_HEADER).await.unwrap();
    io.write_all(&[0, 0, 0, 12, 0x02, 0x01, 0, 0, 0xde, 0xad, 0xbe, 0xef])
        .await
        .unwrap();
    read_to_close_within(&mut io, Duration::from_secs(5), "garbage SASL frame").await;

    // After the AMQP header, a frame of garbage where the open should be.
    let mut io = tls(&s).await;
    io.write_all(b"AMQP\x00\x01\x00\x00").await.unwrap();
    io.write_all(&[0, 0, 0, 16, 0x02, 0x00, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8])
        .await
        .unwrap();
    // fe2o3 answers with a close and waits for the client's close, which this one never sends:
    // the server's open deadline (10 s) ends the connection.
    let answer = read_to_close_within(&mut io, Duration::from_secs(15), "garbage open frame").await;
    assert!(
        answer.windows(3).any(|w| w == [0x00, 0x53, 0x18]),
        "a close frame: {answer:02x?}"
    );

    assert!(open(&s, Some(SaslProfile::Anonymous)).await.is_ok());
    assert_eq!(
        common::hub(&s).statistics().await.unwrap().total_device_count,
        0,
        "nothing was stored"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn a_wrong_registration_sas_is_refused_in_sasl() {
    let dir = tempfile::tempdir().unwrap();
    let s = server("127.0.39.4", dir.path()).await;
    let user = format!("{}/registrations/dev-1", s.services.identity.id_scope);
    let wrong = common::dps_sas(&s, "dev-1", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    let err = open(&s, plain(user.clone(), wrong)).await.unwrap_err();
    assert!(err.to_lowercase().contains("sasl") || err.contains("Auth"), "{err}");
    // The right one opens.
    assert!(open(&s, plain(user, common::dps_sas(&s, "dev-1", KEY))).await.is_ok());
    s.shutdown().await;
}

#[tokio::test]
async fn a_dps_connection_attaches_only_its_own_registration() {
    let dir = tempfile::tempdir().unwrap();
    let s = server("127.0.39.5", dir.path()).await;
    enroll(&s, "dev-2", KEY).await;
    let scope = s.services.identity.id_scope.clone();
    let mut c = open(
        &s,
        plain(
            format!("{scope}/registrations/dev-1"),
            common::dps_sas(&s, "dev-1", KEY),
        ),
    )
    .await
    .unwrap();
    let mut session = Session::begin(&mut c).await.unwrap();
    assert!(
        Sender::attach(&mut session, "own", format!("{scope}/registrations/dev-1"))
            .await
            .is_ok()
    );
    let other = Sender::attach(&mut session, "other", format!("{scope}/registrations/dev-2")).await;
    assert_unauthorized(other, "another registration's node is refused");
    s.shutdown().await;
}

#[tokio::test]
async fn hub_links_need_the_devices_own_credential() {
    let dir = tempfile::tempdir().unwrap();
    let s = server("127.0.39.6", dir.path()).await;
    provision(&s, "hub-a").await;
    provision(&s, "hub-b").await;
    let mut c = open(&s, Some(SaslProfile::Anonymous)).await.unwrap();
    let mut session = Session::begin(&mut c).await.unwrap();

    // No token put yet: refused.
    let refused = Sender::attach(&mut session, "t0", "/devices/hub-a/messages/events").await;
    assert!(refused.is_err(), "a link without a credential is refused");
    let mut session = Session::begin(&mut c).await.unwrap();

    // A token signed with the wrong key: 401 on $cbs.
    let wrong = {
        let expiry = chrono::Utc::now().timestamp() as u64 + 600;
        let audience = format!("{}/devices/hub-a", s.services.identity.hub.host_name);
        build_token(&audience, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", expiry, None).unwrap()
    };
    assert_eq!(put_token(&mut session, &s, "hub-a", wrong).await, 401);

    // hub-a's own token: 200, and hub-a's links attach — but not hub-b's.
    let mut session = Session::begin(&mut c).await.unwrap();
    assert_eq!(put_token(&mut session, &s, "hub-a", device_sas(&s, "hub-a")).await, 200);
    assert!(Sender::attach(&mut session, "t1", "/devices/hub-a/messages/events")
        .await
        .is_ok());
    let other = Sender::attach(&mut session, "t2", "/devices/hub-b/messages/events").await;
    assert_unauthorized(other, "another device's address is refused");
    s.shutdown().await;
}

#[tokio::test]
async fn links_end_when_the_cbs_token_expires() {
    let dir = tempfile::tempdir().unwrap();
    let s = server("127.0.39.10", dir.path()).await;
    provision(&s, "hub-a").await;
    let mut c = open(&s, Some(SaslProfile::Anonymous)).await.unwrap();
    let mut session = Session::begin(&mut c).await.unwrap();
    assert_eq!(
        put_token(&mut session, &s, "hub-a", device_sas_for(&s, "hub-a", 2)).await,
        200
    );
    let mut sender = Sender::attach(&mut session, "t", "/devices/hub-a/messages/events")
        .await
        .unwrap();
    let msg = || {
        Message::builder()
            .data(fe2o3_amqp::types::primitives::Binary::from(br#"{"n":1}"#.to_vec()))
            .build()
    };
    assert!(matches!(sender.send(msg()).await.unwrap(), Outcome::Accepted(_)));
    tokio::time::sleep(Duration::from_millis(3100)).await;
    match sender.send(msg()).await {
        Ok(Outcome::Rejected(r)) => {
            let e = r.error.expect("the rejection says why");
            assert!(
                e.description.unwrap_or_default().contains("expired"),
                "{:?}",
                e.condition
            );
        }
        Err(_) => {} // the link was closed with the error before the disposition arrived
        other => panic!("expected a refusal after the token expired, got {other:?}"),
    }
    s.shutdown().await;
}

#[tokio::test]
async fn oversized_telemetry_is_rejected_and_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let s = server("127.0.39.7", dir.path()).await;
    provision(&s, "hub-a").await;
    let mut events = common::hub(&s).subscribe_events();
    let mut c = open(&s, Some(SaslProfile::Anonymous)).await.unwrap();
    let mut session = Session::begin(&mut c).await.unwrap();
    assert_eq!(put_token(&mut session, &s, "hub-a", device_sas(&s, "hub-a")).await, 200);
    let mut sender = Sender::attach(&mut session, "t", "/devices/hub-a/messages/events")
        .await
        .unwrap();

    let big = Message::builder()
        .data(fe2o3_amqp::types::primitives::Binary::from(vec![
            b'x';
            MAX_MESSAGE_BYTES + 1
        ]))
        .build();
    match sender.send(big).await {
        Ok(Outcome::Rejected(r)) => {
            let e = r.error.expect("the rejection says why");
            assert!(
                e.description.unwrap_or_default().contains("exceeds"),
                "{:?}",
                e.condition
            );
        }
        // fe2o3 may refuse to send past the link's announced max-message-size itself.
        Err(e) => assert!(format!("{e:?}").contains("MessageSize"), "{e:?}"),
        other => panic!("expected a rejection, got {other:?}"),
    }
    let ok = Message::builder()
        .application_properties(ApplicationProperties::builder().insert("k", "v").build())
        .data(fe2o3_amqp::types::primitives::Binary::from(br#"{"n":1}"#.to_vec()))
        .build();
    assert!(matches!(sender.send(ok).await.unwrap(), Outcome::Accepted(_)));
    common::expect_telemetry(&mut events, "hub-a", serde_json::json!({"n": 1})).await;
    assert!(
        events.try_recv().is_err(),
        "only the message within the limit was stored"
    );
    s.shutdown().await;
}

async fn recv(rx: &mut Receiver) -> fe2o3_amqp::Delivery<Body<Value>> {
    tokio::time::timeout(Duration::from_secs(5), rx.recv::<Body<Value>>())
        .await
        .expect("a message")
        .unwrap()
}

#[tokio::test]
async fn cloud_to_device_messages_settle_as_complete_reject_and_abandon() {
    let dir = tempfile::tempdir().unwrap();
    let s = server("127.0.39.8", dir.path()).await;
    provision(&s, "hub-a").await;
    let hub = common::hub(&s).clone();
    let send = |body: &'static str| {
        let hub = hub.clone();
        async move {
            hub.send_c2d("hub-a", body.as_bytes().to_vec(), vec![("k".into(), "v".into())])
                .await
                .unwrap()
        }
    };
    // Queued while the device is offline.
    send("one").await;
    send("two").await;

    let mut c = open(&s, Some(SaslProfile::Anonymous)).await.unwrap();
    let mut session = Session::begin(&mut c).await.unwrap();
    assert_eq!(put_token(&mut session, &s, "hub-a", device_sas(&s, "hub-a")).await, 200);
    let mut rx = Receiver::attach(&mut session, "c2d", "/devices/hub-a/messages/devicebound")
        .await
        .unwrap();
    let body = |d: &fe2o3_amqp::Delivery<Body<Value>>| match &d.message().body {
        Body::Data(b) => String::from_utf8(b.iter().flat_map(|d| d.0.to_vec()).collect()).unwrap(),
        other => panic!("C2D bodies are data sections, got {other:?}"),
    };

    // Abandon (released): the same message comes again.
    let first = recv(&mut rx).await;
    assert_eq!(body(&first), "one");
    let p = first.message().properties.clone().unwrap();
    assert!(p.message_id.is_some(), "a message id");
    assert_eq!(p.to.as_deref(), Some("/devices/hub-a/messages/deviceBound"));
    let app = first.message().application_properties.clone().unwrap();
    assert_eq!(app.0.get("k"), Some(&"v".to_string().into()));
    rx.release(&first).await.unwrap();
    // "two" may already be on its way: the abandoned "one" comes back after it.
    let mut next = [recv(&mut rx).await, recv(&mut rx).await];
    next.sort_by_key(|d| body(d));
    assert_eq!(
        [body(&next[0]), body(&next[1])],
        ["one", "two"],
        "an abandoned message is delivered again"
    );
    // Complete (accepted) and reject: both are gone for good.
    rx.accept(&next[0]).await.unwrap();
    rx.reject(&next[1], None).await.unwrap();
    let nothing = tokio::time::timeout(Duration::from_millis(500), rx.recv::<Body<Value>>()).await;
    assert!(nothing.is_err(), "completed and rejected messages are not redelivered");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let view = hub.get_device("hub-a").await.unwrap();
    assert_eq!(view.cloud_to_device_message_count, 0, "{view:?}");
    s.shutdown().await;
}

/// Asserts that an attach was refused as unauthorized (`what` says what was attached).
fn assert_unauthorized<T, E: std::fmt::Debug>(attached: Result<T, E>, what: &str) {
    let err = match attached {
        Ok(_) => panic!("{what}"),
        Err(e) => format!("{e:?}"),
    };
    assert!(
        err.contains("UnauthorizedAccess") || err.contains("unauthorized"),
        "{err}"
    );
}

/// A service token for the hub's owner policy, signed with `key` (the policy's, or not).
fn service_sas(s: &RunningServer, key: Option<&str>) -> String {
    let policy = &s.services.identity.hub.policies[0];
    let expiry = chrono::Utc::now().timestamp() as u64 + 600;
    let key = key.unwrap_or(&policy.primary_key);
    build_token(&s.services.identity.hub.host_name, key, expiry, Some(&policy.key_name)).unwrap()
}

/// A cloud-to-device message from the service, addressed to `to`.
fn c2d_message(to: &str) -> Message<fe2o3_amqp::types::messaging::Data> {
    Message::builder()
        .properties(Properties::builder().message_id(String::from("m-1")).to(to).build())
        .data(fe2o3_amqp::types::primitives::Binary::from(b"hello".to_vec()))
        .build()
}

#[tokio::test]
async fn the_service_endpoint_needs_a_service_token_and_a_known_device() {
    let dir = tempfile::tempdir().unwrap();
    let s = server("127.0.39.14", dir.path()).await;
    provision(&s, "c2d-a").await;
    let mut c = open(&s, Some(SaslProfile::Anonymous)).await.unwrap();

    // No service token: the service node is refused; a device's token does not make one.
    let mut session = Session::begin(&mut c).await.unwrap();
    assert_unauthorized(
        Sender::attach(&mut session, "svc0", "/messages/devicebound").await,
        "the service node without a service token",
    );
    let mut session = Session::begin(&mut c).await.unwrap();
    assert_eq!(put_token(&mut session, &s, "c2d-a", device_sas(&s, "c2d-a")).await, 200);
    assert_unauthorized(
        Sender::attach(&mut session, "svc1", "/messages/devicebound").await,
        "the service node with only a device token",
    );
    let mut session = Session::begin(&mut c).await.unwrap();
    assert_eq!(put_token(&mut session, &s, "c2d-a", device_sas(&s, "c2d-a")).await, 200);
    assert_unauthorized(
        Receiver::attach(&mut session, "fb1", "/messages/serviceBound/feedback").await,
        "the feedback node with only a device token",
    );

    // A token naming the owner policy but signed with another key: 401.
    let mut session = Session::begin(&mut c).await.unwrap();
    let forged = service_sas(&s, Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="));
    assert_eq!(put_token(&mut session, &s, "c2d-a", forged).await, 401);

    // The policy's own token: messages to a known device are accepted and queued for it; to an
    // unknown device or without a device address, rejected with the reason.
    let mut session = Session::begin(&mut c).await.unwrap();
    assert_eq!(put_token(&mut session, &s, "c2d-a", service_sas(&s, None)).await, 200);
    let mut sender = Sender::attach(&mut session, "svc", "/messages/devicebound")
        .await
        .unwrap();
    let outcome = sender
        .send(c2d_message("/devices/c2d-a/messages/devicebound"))
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
    match sender
        .send(c2d_message("/devices/ghost/messages/devicebound"))
        .await
        .unwrap()
    {
        Outcome::Rejected(r) => {
            let e = r.error.expect("an error");
            assert!(format!("{:?}", e.condition).contains("NotFound"), "{e:?}");
            assert!(e.description.unwrap_or_default().contains("ghost"));
        }
        other => panic!("{other:?}"),
    }
    match sender.send(c2d_message("/devices/c2d-a/twin")).await.unwrap() {
        Outcome::Rejected(r) => {
            let description = r.error.and_then(|e| e.description).unwrap_or_default();
            assert!(description.contains("'to'"), "{description}");
        }
        other => panic!("{other:?}"),
    }
    let _ = c.close().await;

    // The device receives the accepted message when it attaches its C2D link.
    let mut c = open(&s, Some(SaslProfile::Anonymous)).await.unwrap();
    let mut session = Session::begin(&mut c).await.unwrap();
    assert_eq!(put_token(&mut session, &s, "c2d-a", device_sas(&s, "c2d-a")).await, 200);
    let mut receiver = Receiver::attach(&mut session, "c2d", "/devices/c2d-a/messages/devicebound")
        .await
        .unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(5), receiver.recv::<Body<Value>>())
        .await
        .expect("the queued message within 5 s")
        .unwrap();
    assert_eq!(
        delivery
            .message()
            .properties
            .as_ref()
            .and_then(|p| p.message_id.clone()),
        Some(String::from("m-1").into())
    );
    receiver.accept(&delivery).await.unwrap();
    let _ = c.close().await;
    s.shutdown().await;
}

#[tokio::test]
async fn cloud_to_device_messages_unsettled_at_disconnect_are_delivered_again() {
    let dir = tempfile::tempdir().unwrap();
    let s = server("127.0.39.15", dir.path()).await;
    provision(&s, "c2d-b").await;
    common::hub(&s)
        .send_c2d("c2d-b", &b"keep me"[..], vec![])
        .await
        .unwrap();
    // The device receives the message and disconnects without settling it, twice: each time it
    // goes back to the queue and comes again on the next connection.
    for round in 0..3 {
        let mut c = open(&s, Some(SaslProfile::Anonymous)).await.unwrap();
        let mut session = Session::begin(&mut c).await.unwrap();
        assert_eq!(put_token(&mut session, &s, "c2d-b", device_sas(&s, "c2d-b")).await, 200);
        let mut rx = Receiver::attach(&mut session, "c2d", "/devices/c2d-b/messages/devicebound")
            .await
            .unwrap();
        let delivery = tokio::time::timeout(Duration::from_secs(5), rx.recv::<Body<Value>>())
            .await
            .unwrap_or_else(|_| panic!("the message in round {round}"))
            .unwrap();
        if round == 2 {
            rx.accept(&delivery).await.unwrap();
        }
        // The connection closes with the link still attached (and its message unsettled).
        let _ = c.close().await;
        drop(rx);
        // Let the server see the connection end before the next one.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.shutdown().await;
}

/// A number for a link name no other link of the test process has.
fn next_link() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// An Event Hubs token for `sb://{hub}/{path}`, signed the Event Hubs way (the key's text is the
/// HMAC key) with the hub's owner policy, or with `key` instead.
fn event_hub_sas(s: &RunningServer, path: &str, key: Option<&str>) -> (String, String) {
    let hub = &s.services.identity.hub;
    let policy = &hub.policies[0];
    let audience = format!("sb://{}/{path}", hub.host_name);
    let expiry = chrono::Utc::now().timestamp() as u64 + 600;
    let key = key.unwrap_or(&policy.primary_key).to_string();
    let token = dps_proto::sas::build_token_with(&audience, expiry, Some(&policy.key_name), |m| {
        Ok::<_, ()>(dps_proto::sas::hmac_sha256(key.as_bytes(), m))
    })
    .unwrap();
    (audience, token)
}

/// A consumer's receiver on `address` starting where `selector` says.
async fn consumer(
    session: &mut SessionHandle<()>,
    name: &str,
    address: &str,
    selector: &str,
) -> Result<Receiver, fe2o3_amqp::link::ReceiverAttachError> {
    use fe2o3_amqp::types::messaging::Source;
    use fe2o3_amqp::types::primitives::OrderedMap;
    use serde_amqp::described::Described;
    use serde_amqp::descriptor::Descriptor;
    let mut filter = OrderedMap::new();
    filter.insert(
        dps_proto::event_hubs::SELECTOR_FILTER.into(),
        Value::Described(Box::new(Described {
            descriptor: Descriptor::Code(dps_proto::event_hubs::SELECTOR_FILTER_CODE),
            value: Value::String(selector.into()),
        })),
    );
    Receiver::builder()
        .name(name)
        .source(Source::builder().address(address).filter(filter).build())
        .target("consumer")
        .attach(session)
        .await
}

/// One `$management` READ; the status code and the map body.
async fn management_read(
    session: &mut SessionHandle<()>,
    kind: &str,
    name: &str,
    partition: Option<&str>,
) -> (i32, Value) {
    let n = next_link();
    let mut sender = Sender::attach(session, format!("mgmt-out-{n}"), "$management")
        .await
        .unwrap();
    let mut receiver = Receiver::attach(session, format!("mgmt-in-{n}"), "$management")
        .await
        .unwrap();
    let mut app = ApplicationProperties::builder()
        .insert("operation", "READ")
        .insert("type", kind)
        .insert("name", name);
    if let Some(p) = partition {
        app = app.insert("partition", p);
    }
    let msg = Message::builder()
        .properties(
            Properties::builder()
                .message_id(String::from("m-1"))
                .reply_to("mgmt-in")
                .build(),
        )
        .application_properties(app.build())
        .value(Value::Null)
        .build();
    sender.send(msg).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), receiver.recv::<Body<Value>>())
        .await
        .unwrap()
        .unwrap();
    receiver.accept(&reply).await.unwrap();
    let _ = sender.close().await;
    let _ = receiver.close().await;
    let reply = reply.message();
    let status = match reply.application_properties.as_ref().unwrap().0.get("status-code") {
        Some(fe2o3_amqp::types::primitives::SimpleValue::Int(code)) => *code,
        other => panic!("status-code must be an int, got {other:?}"),
    };
    let body = match &reply.body {
        Body::Value(v) => v.0.clone(),
        other => panic!("{other:?}"),
    };
    (status, body)
}

fn map_get<'a>(map: &'a Value, key: &str) -> &'a Value {
    match map {
        Value::Map(m) => m
            .get(&Value::String(key.into()))
            .unwrap_or_else(|| panic!("no {key} in {map:?}")),
        other => panic!("not a map: {other:?}"),
    }
}

#[tokio::test]
async fn event_hub_consumers_read_telemetry_that_survives_a_restart_and_bad_requests_are_refused() {
    use dps_proto::event_hubs::{ENQUEUED_TIME, OFFSET, SEQUENCE_NUMBER};
    let dir = tempfile::tempdir().unwrap();
    let ip = "127.0.39.16";
    let s = common::hub_server_with(ip, dir.path(), |_| {}).await;
    common::hub_device(&s, "eh-dev").await;
    let (c, mut ev) = common::hub_mqtt(&s, "eh-dev").await;
    for i in 0..3 {
        common::publish_acked(
            &c,
            &mut ev,
            "devices/eh-dev/messages/events/k=v",
            format!("{{\"i\":{i}}}"),
        )
        .await;
    }
    let entity = dps_server::amqp::event_hub::event_hub_name(&s.services.identity.hub.host_name);
    let partition = dps_hub::partition_of("eh-dev", common::hub(&s).partition_count()).to_string();
    let address = format!("{entity}/ConsumerGroups/$Default/Partitions/{partition}");
    let earliest = "amqp.annotation.x-opt-offset > '-1'";

    let mut conn = open(&s, Some(SaslProfile::Anonymous)).await.unwrap();
    let mut session = Session::begin(&mut conn).await.unwrap();
    // Nothing without a token, nor with a device's or a forged one.
    assert_unauthorized(
        consumer(&mut session, "c0", &address, earliest).await,
        "a consumer without a token",
    );
    let mut session = Session::begin(&mut conn).await.unwrap();
    let (audience, forged) = event_hub_sas(&s, &entity, Some("bm90IHRoZSBrZXk="));
    assert_eq!(put_token_for(&mut session, audience, forged).await, 401);
    let (audience, other_hub) = (
        format!("sb://elsewhere.example/{entity}"),
        event_hub_sas(&s, &entity, None).1.replace(ip, "elsewhere.example"),
    );
    assert_eq!(put_token_for(&mut session, audience, other_hub).await, 401);
    let (audience, token) = event_hub_sas(&s, &entity, None);
    assert_eq!(put_token_for(&mut session, audience, token).await, 200);

    let (status, hub) = management_read(&mut session, "com.microsoft:eventhub", &entity, None).await;
    assert_eq!(status, 200);
    assert_eq!(map_get(&hub, "name"), &Value::String(entity.clone()));
    assert!(matches!(map_get(&hub, "partition_ids"), Value::Array(a) if a.0.len() == 4));
    let (status, p) = management_read(&mut session, "com.microsoft:partition", &entity, Some(&partition)).await;
    assert_eq!(status, 200);
    assert_eq!(map_get(&p, "last_enqueued_sequence_number"), &Value::Long(2));
    assert_eq!(map_get(&p, "is_partition_empty"), &Value::Bool(false));
    assert_eq!(
        management_read(&mut session, "com.microsoft:partition", &entity, Some("9"))
            .await
            .0,
        404
    );
    assert_eq!(
        management_read(&mut session, "com.microsoft:eventhub", "other", None)
            .await
            .0,
        404
    );

    let mut receiver = consumer(&mut session, "c1", &address, earliest).await.unwrap();
    let mut offsets = Vec::new();
    for i in 0..3i64 {
        let d = tokio::time::timeout(Duration::from_secs(5), receiver.recv::<Body<Value>>())
            .await
            .expect("an event within 5 s")
            .unwrap();
        receiver.accept(&d).await.unwrap();
        let m = d.message();
        let annotations = &m.message_annotations.as_ref().unwrap().0;
        let get = |k: &str| {
            annotations
                .get(&fe2o3_amqp::types::messaging::annotations::OwnedKey::from(k))
                .cloned()
        };
        assert_eq!(get(SEQUENCE_NUMBER), Some(Value::Long(i)));
        assert!(matches!(get(ENQUEUED_TIME), Some(Value::Timestamp(_))));
        assert_eq!(get("iothub-connection-device-id"), Some(Value::String("eh-dev".into())));
        offsets.push(get(OFFSET));
        assert_eq!(m.application_properties.as_ref().unwrap().0.get("k"), Some(&"v".into()));
    }
    let _ = receiver.close().await;
    // A consumer starting after the second event's offset gets the third.
    let Some(Value::String(second)) = offsets[1].clone() else {
        panic!("{offsets:?}")
    };
    let mut receiver = consumer(
        &mut session,
        "c2",
        &address,
        &format!("amqp.annotation.x-opt-offset > '{second}'"),
    )
    .await
    .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(5), receiver.recv::<Body<Value>>())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        d.message().message_annotations.as_ref().unwrap().0.get(
            &fe2o3_amqp::types::messaging::annotations::OwnedKey::from(SEQUENCE_NUMBER)
        ),
        Some(&Value::Long(2))
    );
    let _ = receiver.close().await;

    // A consumer at the end of the partition gets what arrives after it attached, as it arrives.
    let mut receiver = consumer(&mut session, "c3", &address, "amqp.annotation.x-opt-offset > '@latest'")
        .await
        .unwrap();
    for i in 3..8i64 {
        common::publish_acked(&c, &mut ev, "devices/eh-dev/messages/events/", format!("{{\"i\":{i}}}")).await;
        let d = tokio::time::timeout(Duration::from_secs(5), receiver.recv::<Body<Value>>())
            .await
            .unwrap_or_else(|_| panic!("live event {i} within 5 s"))
            .unwrap();
        receiver.accept(&d).await.unwrap();
        assert_eq!(
            d.message().message_annotations.as_ref().unwrap().0.get(
                &fe2o3_amqp::types::messaging::annotations::OwnedKey::from(SEQUENCE_NUMBER)
            ),
            Some(&Value::Long(i))
        );
    }
    let _ = receiver.close().await;

    // Bad requests: each refused with its reason.
    let refused = |r: Result<Receiver, fe2o3_amqp::link::ReceiverAttachError>| match r {
        Ok(_) => panic!("attached"),
        Err(e) => format!("{e:?}"),
    };
    let mut session = Session::begin(&mut conn).await.unwrap();
    let (audience, token) = event_hub_sas(&s, &entity, None);
    assert_eq!(put_token_for(&mut session, audience, token).await, 200);
    let bad_group = refused(
        consumer(
            &mut session,
            "b1",
            &format!("{entity}/ConsumerGroups/nobody/Partitions/0"),
            earliest,
        )
        .await,
    );
    assert!(
        bad_group.contains("NotFound") || bad_group.contains("not-found"),
        "{bad_group}"
    );
    let mut session = Session::begin(&mut conn).await.unwrap();
    let (audience, token) = event_hub_sas(&s, &entity, None);
    assert_eq!(put_token_for(&mut session, audience, token).await, 200);
    let bad_partition = refused(
        consumer(
            &mut session,
            "b2",
            &format!("{entity}/ConsumerGroups/$Default/Partitions/9"),
            earliest,
        )
        .await,
    );
    assert!(bad_partition.contains("argument-out-of-range"), "{bad_partition}");
    let mut session = Session::begin(&mut conn).await.unwrap();
    let (audience, token) = event_hub_sas(&s, &entity, None);
    assert_eq!(put_token_for(&mut session, audience, token).await, 200);
    let bad_selector = refused(consumer(&mut session, "b3", &address, "amqp.annotation.x-opt-offset < '1'").await);
    assert!(
        bad_selector.contains("NotAllowed") || bad_selector.contains("not-allowed"),
        "{bad_selector}"
    );
    let _ = conn.close().await;
    drop((c, ev));

    // Restarted on the same data: the events are still there, and new ones continue the numbers.
    s.shutdown().await;
    let s = common::hub_server_with(ip, dir.path(), |_| {}).await;
    let mut conn = open(&s, Some(SaslProfile::Anonymous)).await.unwrap();
    let mut session = Session::begin(&mut conn).await.unwrap();
    let (audience, token) = event_hub_sas(&s, &entity, None);
    assert_eq!(put_token_for(&mut session, audience, token).await, 200);
    let mut receiver = consumer(&mut session, "r1", &address, earliest).await.unwrap();
    for i in 0..3i64 {
        let d = tokio::time::timeout(Duration::from_secs(5), receiver.recv::<Body<Value>>())
            .await
            .expect("a retained event after the restart")
            .unwrap();
        receiver.accept(&d).await.unwrap();
        let seq = d
            .message()
            .message_annotations
            .as_ref()
            .unwrap()
            .0
            .get(&fe2o3_amqp::types::messaging::annotations::OwnedKey::from(
                SEQUENCE_NUMBER,
            ))
            .cloned();
        assert_eq!(seq, Some(Value::Long(i)));
    }
    let _ = conn.close().await;
    s.shutdown().await;
}

/// Issue 17: a certificate signing request hand-framed over AMQP, as the SDKs' AMQP transports
/// frame a registration: both links on `{scope}/registrations/{id}` naming
/// `com.microsoft:api-version` `2025-07-01-preview`, the request a data section with
/// `iotdps-operation-type` and a correlation id, the answers on the receiver link; the
/// operation's `registrationState.issuedCertificateChain` carries the certificate for the
/// request's key.
#[tokio::test]
async fn a_csr_hand_framed_over_amqp_gets_its_certificate() {
    use base64::Engine as _;
    use fe2o3_amqp::types::definitions::Fields;
    use fe2o3_amqp::types::primitives::Symbol;

    let dir = tempfile::tempdir().unwrap();
    let s = server("127.0.39.31", dir.path()).await;
    common::enroll_with_credential_policy(&s, "csr-amqp").await;
    let (_, csr) = dps_pki::csr::new_key_and_request("csr-amqp", dps_pki::ca::KeyAlgorithm::EcdsaP384).unwrap();
    let node = format!("{}/registrations/csr-amqp", s.services.identity.id_scope);
    let mut c = open(&s, plain(node.clone(), common::dps_sas(&s, "csr-amqp", KEY)))
        .await
        .unwrap();
    let mut session = Session::begin(&mut c).await.unwrap();
    let mut properties = Fields::new();
    properties.insert(
        Symbol::from("com.microsoft:api-version"),
        Value::String("2025-07-01-preview".into()),
    );
    let mut receiver = Receiver::builder()
        .name("csr-rx")
        .source(node.clone())
        .properties(properties.clone())
        .attach(&mut session)
        .await
        .unwrap();
    let mut sender = Sender::builder()
        .name("csr-tx")
        .target(node)
        .properties(properties)
        .attach(&mut session)
        .await
        .unwrap();
    let register = ApplicationProperties::builder()
        .insert("iotdps-operation-type", "iotdps-register")
        .insert("iotdps-forceRegistration", false)
        .build();
    let body = serde_json::json!({
        "registrationId": "csr-amqp",
        "csr": base64::engine::general_purpose::STANDARD.encode(&csr),
    });
    let accepted = ask(
        &mut sender,
        &mut receiver,
        "register",
        register,
        body.to_string().into_bytes(),
    )
    .await;
    assert_eq!(accepted["status"], "assigning", "{accepted}");
    let op = accepted["operationId"].as_str().unwrap().to_string();
    let mut done = accepted;
    for correlation in ["poll-1", "poll-2", "poll-3", "poll-4", "poll-5"] {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let poll = ApplicationProperties::builder()
            .insert("iotdps-operation-type", "iotdps-get-operationstatus")
            .insert("iotdps-operation-id", op.clone())
            .build();
        done = ask(&mut sender, &mut receiver, correlation, poll, Vec::new()).await;
        if done["status"] != "assigning" {
            break;
        }
    }
    assert_eq!(done["status"], "assigned", "{done}");
    common::assert_issued_for(&done["registrationState"]["issuedCertificateChain"], "csr-amqp", &csr);
    s.shutdown().await;
}

/// Sends one DPS request (a data section with `app` properties and `correlation`) and returns
/// the JSON answer that correlates with it.
async fn ask(
    sender: &mut Sender,
    receiver: &mut Receiver,
    correlation: &str,
    app: ApplicationProperties,
    body: Vec<u8>,
) -> serde_json::Value {
    use fe2o3_amqp::types::messaging::MessageId;
    let msg = Message::builder()
        .properties(
            Properties::builder()
                .correlation_id(MessageId::String(correlation.into()))
                .build(),
        )
        .application_properties(app)
        .data(fe2o3_amqp::types::primitives::Binary::from(body))
        .build();
    let outcome = sender.send(msg).await.unwrap();
    assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
    let reply = recv(receiver).await;
    receiver.accept(&reply).await.unwrap();
    let reply = reply.message();
    assert_eq!(
        reply.properties.as_ref().and_then(|p| p.correlation_id.clone()),
        Some(MessageId::String(correlation.into()))
    );
    let bytes: Vec<u8> = match &reply.body {
        Body::Data(b) => b.iter().flat_map(|d| d.0.to_vec()).collect(),
        other => panic!("DPS answers are data sections, got {other:?}"),
    };
    serde_json::from_slice(&bytes).unwrap()
}

//! A flood of unauthenticated DPS MQTT CONNECTs against `dps serve` as a child process: every
//! one is refused with CONNACK 5 and closed, a good device registers over MQTT during and after
//! the flood, and the server's open files and memory return to their baseline afterwards.
//! Bounded in count, concurrency and time; timings are reported, never asserted.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Server;
use dps_server::mqtt::framed::Framed;
use rumqttc::mqttbytes::v4::{Connect, ConnectReturnCode, Login, Packet};
use tokio::net::TcpStream;

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const WRONG_KEY: &str = "d3Jvbmcgd3Jvbmcgd3Jvbmcgd3Jvbmc=";
const CONNECTS: usize = 1000;
const CONCURRENCY: usize = 50;

/// A field of `/proc/<pid>/status`, in kB.
fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// One unauthenticated CONNECT: a SAS signed with a key no enrollment has (or none at all);
/// returns the CONNACK code, after checking that the server closed the connection.
async fn refused_connect(
    addr: (String, u16),
    tls: Arc<rustls::ClientConfig>,
    scope: String,
    i: usize,
) -> ConnectReturnCode {
    let tcp = TcpStream::connect((addr.0.as_str(), addr.1)).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(addr.0.parse::<std::net::IpAddr>().unwrap().into());
    let stream = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await.unwrap();
    let mut io = Framed::new(stream, 64 * 1024);
    let reg = format!("flood-{i}");
    let mut c = Connect::new(reg.as_str());
    let user = format!("{scope}/registrations/{reg}/api-version=2019-03-31&ClientVersion=flood");
    let password = if i.is_multiple_of(2) {
        let expiry = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600;
        dps_proto::sas::build_token(
            &format!("{scope}/registrations/{reg}"),
            WRONG_KEY,
            expiry,
            Some("registration"),
        )
        .unwrap()
    } else {
        String::new()
    };
    c.login = Some(Login::new(user, password));
    io.send(&Packet::Connect(c)).await.unwrap();
    let code = match io.next().await {
        Ok(Some(Packet::ConnAck(a))) => a.code,
        other => panic!("connection {i}: expected a CONNACK, got {other:?}"),
    };
    match io.next().await {
        Ok(None) | Err(_) => {}
        Ok(Some(p)) => panic!("connection {i}: expected a close after the CONNACK, got {p:?}"),
    }
    code
}

fn provision_good(s: &Server) {
    let out = s.json(&[
        "device",
        "provision",
        "--registration-id",
        "good",
        "--symmetric-key",
        KEY,
        "--transport",
        "mqtt",
        "--no-message",
    ]);
    assert_eq!(out["registration"]["status"], "assigned", "{out}");
}

#[test]
fn a_thousand_unauthenticated_connects_are_refused_and_leave_nothing_behind() {
    let s = Server::start("127.0.10.10");
    s.ok(&[
        "enrollment",
        "create",
        "--registration-id",
        "good",
        "--primary-key",
        KEY,
    ]);
    let scope = s.info()["idScope"].as_str().unwrap().to_string();
    let tls = dps_pki::tls::client_config(&s.ca()).unwrap();
    let pid = s.pid();

    // Warm up (first TLS handshakes, first registration), then take the baseline.
    provision_good(&s);
    let base_rss = status_kb(pid, "VmRSS:");
    let base_fds = open_fds(pid);

    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let flood = {
        let (ip, tls, scope) = (s.ip.clone(), tls.clone(), scope.clone());
        rt.spawn(async move {
            let gate = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..CONNECTS {
                let permit = gate.clone().acquire_owned().await.unwrap();
                let (ip, tls, scope) = (ip.clone(), tls.clone(), scope.clone());
                tasks.spawn(async move {
                    let code = refused_connect((ip, 8883), tls, scope, i).await;
                    drop(permit);
                    code
                });
            }
            let mut codes = Vec::new();
            while let Some(r) = tasks.join_next().await {
                codes.push(r.unwrap());
            }
            codes
        })
    };
    // A good device is served while the flood runs.
    provision_good(&s);
    let peak_rss = status_kb(pid, "VmRSS:");
    let codes = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(300), flood).await })
        .expect("the flood finishes within 5 minutes")
        .unwrap();
    let flood_time = started.elapsed();
    assert_eq!(codes.len(), CONNECTS);
    assert!(
        codes.iter().all(|c| *c == ConnectReturnCode::NotAuthorized),
        "every unauthenticated CONNECT gets CONNACK 5"
    );

    // And after it.
    provision_good(&s);
    // Every refused connection is closed: the server's descriptors return to the baseline.
    let deadline = Instant::now() + Duration::from_secs(30);
    while open_fds(pid) > base_fds + 8 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let after_fds = open_fds(pid);
    assert!(
        after_fds <= base_fds + 8,
        "open files {base_fds} before, {after_fds} after"
    );
    let after_rss = status_kb(pid, "VmRSS:");
    eprintln!(
        "{CONNECTS} refused CONNECTs ({CONCURRENCY} at a time) in {flood_time:?}; RSS {base_rss} kB before, {peak_rss} kB during, {after_rss} kB after; fds {base_fds} -> {after_fds}"
    );
    // Generous slack: the allocator keeps freed pages, but nothing per connection may remain.
    assert!(
        after_rss <= base_rss + 64 * 1024,
        "RSS {base_rss} kB before, {after_rss} kB after the flood"
    );
    let refusals = s.log().matches("DPS connection refused").count();
    assert!(
        refusals >= CONNECTS,
        "each refusal is logged with its reason ({refusals})"
    );
}

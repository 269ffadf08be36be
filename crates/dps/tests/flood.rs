//! Floods against a `dps serve` child process, bounded in count and time: thousands of idle TCP
//! connections, hundreds of slowloris HTTP requests, and the connection caps. During each, a
//! good client is served (`dps device provision` over HTTPS, and a service API call); after each,
//! the server's memory returns near its baseline. Deadlines are shortened by flags so the floods
//! end in seconds; nothing here asserts how fast anything is.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
/// Past every deadline the server runs with here (TLS handshake 10 s, requests 2–4 s): waiting
/// this long for a close that should come means it never will.
const GIVE_UP: Duration = Duration::from_secs(60);

/// Raises this process's open-file limit for thousands of sockets (the hard limit here is 20,000).
fn raise_open_files(needed: u64) {
    let (soft, hard) = rlimit::Resource::NOFILE.get().unwrap();
    if soft < hard {
        rlimit::Resource::NOFILE.set(hard, hard).unwrap();
    }
    assert!(
        hard >= needed,
        "this test needs {needed} open files; the hard limit is {hard}"
    );
}

/// The server's resident memory, bytes (`VmRSS` in /proc/<pid>/status).
fn rss(s: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// Waits until the server's memory is back within `slack` of `baseline`; returns the last value.
async fn rss_returns(s: &Server, baseline: u64, slack: u64, what: &str) -> u64 {
    let deadline = tokio::time::Instant::now() + GIVE_UP;
    loop {
        let now = rss(s);
        if now <= baseline + slack {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: server RSS {} MB did not return within {} MB of its baseline {} MB",
            now >> 20,
            slack >> 20,
            baseline >> 20
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Starts a server with `flags` and enrolls `flood-dev`, then serves a good client once.
fn start(ip: &str, flags: &[&str]) -> Arc<Server> {
    let s = Server::start_with(ip, flags);
    s.ok(&[
        "enrollment",
        "create",
        "--registration-id",
        "flood-dev",
        "--primary-key",
        KEY,
    ]);
    let s = Arc::new(s);
    good_client(&s);
    s
}

/// A good client: registers `flood-dev` over HTTPS with the CLI, and reads its registration
/// record through the service API.
fn good_client(s: &Server) {
    let r = s.json(&[
        "device",
        "provision",
        "--registration-id",
        "flood-dev",
        "--symmetric-key",
        KEY,
        "--transport",
        "https",
        "--no-message",
    ]);
    assert_eq!(r["registration"]["status"], "assigned", "{r}");
    assert_eq!(r["registration"]["deviceId"], "flood-dev", "{r}");
    let record = s.json(&["registration", "show", "--registration-id", "flood-dev"]);
    assert_eq!(record["status"], "assigned", "{record}");
}

/// Runs the good client on a blocking thread (the CLI is a child process).
async fn good_client_async(s: &Arc<Server>) {
    let s = s.clone();
    tokio::task::spawn_blocking(move || good_client(&s)).await.unwrap();
}

/// A flood source address: 127.0.`block`.`host`.
fn source(block: u8, host: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, block, host))
}

/// A TCP connection from `from` (any port) to `to`.
async fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(to).await
}

fn addr(s: &Server, port: u16) -> SocketAddr {
    SocketAddr::new(s.ip.parse().unwrap(), port)
}

fn tls_config(s: &Server) -> Arc<rustls::ClientConfig> {
    dps_pki::tls::client_config(&s.ca()).unwrap()
}

/// A TLS connection from `from`; an error when the server closes it before the handshake ends
/// (which is how a refused connection looks).
async fn tls_from(
    s: &Server,
    config: &Arc<rustls::ClientConfig>,
    from: IpAddr,
    port: u16,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = connect_from(from, addr(s, port)).await?;
    let name = rustls::pki_types::ServerName::IpAddress(s.ip.parse::<IpAddr>().unwrap().into());
    tokio::time::timeout(GIVE_UP, TlsConnector::from(config.clone()).connect(name, tcp))
        .await
        .expect("the handshake ends one way or the other")
}

/// Reads until the server closes the connection (EOF or reset); false if it is still open after
/// [`GIVE_UP`]. Returns what was read too.
async fn until_closed<S: tokio::io::AsyncRead + Unpin>(io: &mut S) -> (bool, Vec<u8>) {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(GIVE_UP, io.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (true, got),
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
            Err(_) => return (false, got),
        }
    }
}

/// What memory may stay with the server after a flood: the allocator keeps freed memory for
/// reuse rather than give it back, so "near the baseline" is generous; a leak shows as growth from
/// one flood to the next instead.
const RSS_SLACK: u64 = 64 << 20;
/// Growth allowed from one identical flood to the next.
const RSS_GROWTH: u64 = 16 << 20;

/// Opens `n` idle TCP connections (not one TLS byte), alternately to the MQTT and HTTPS ports,
/// from `sources` source addresses in 127.0.21.x; runs the good client while they are held;
/// checks the server ends every one of them at its TLS handshake deadline, sending nothing.
async fn idle_flood(s: &Arc<Server>, n: usize, sources: u8) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let to = addr(s, if i % 2 == 0 { 8883 } else { 443 });
        let from = source(21, 1 + (i % sources as usize) as u8);
        tasks.spawn(async move { connect_from(from, to).await });
    }
    let mut idle = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        idle.push(r.unwrap().expect("the server (or its backlog) takes every connection"));
    }
    good_client_async(s).await;
    let mut closers = tokio::task::JoinSet::new();
    for mut c in idle {
        closers.spawn(async move { until_closed(&mut c).await });
    }
    let mut closed = 0;
    while let Some(r) = closers.join_next().await {
        let (was_closed, got) = r.unwrap();
        assert!(was_closed, "an idle connection outlived the handshake deadline");
        assert!(got.is_empty(), "nothing is sent to a client that said nothing: {got:?}");
        closed += 1;
    }
    assert_eq!(closed, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_idle_tcp_connections_from_several_addresses() {
    const CONNECTIONS: usize = 5000;
    raise_open_files(CONNECTIONS as u64 + 500);
    let s = start("127.0.11.10", &["--request-timeout-secs", "2"]);
    let baseline = rss(&s);
    idle_flood(&s, CONNECTIONS, 10).await;
    good_client_async(&s).await;
    let first = rss_returns(&s, baseline, RSS_SLACK, "idle flood").await;
    // The same flood again reuses what the first one left: no growth, no leak.
    idle_flood(&s, CONNECTIONS, 10).await;
    let second = rss_returns(&s, first, RSS_GROWTH, "second idle flood").await;
    eprintln!(
        "idle floods of {CONNECTIONS}: server RSS baseline {} MB, after the first {} MB, after the second {} MB",
        baseline >> 20,
        first >> 20,
        second >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_slowloris_requests() {
    const SLOTS: usize = 500;
    /// Rounds a slot may run while the good client is at work (each round is one request).
    const MAX_ROUNDS: usize = 4;
    raise_open_files(SLOTS as u64 + 500);
    let s = start(
        "127.0.11.11",
        &["--request-timeout-secs", "3", "--immediate-assignment"],
    );
    let baseline = rss(&s);
    let config = tls_config(&s);
    let scope = s.info()["idScope"].as_str().unwrap().to_string();
    let good_done = Arc::new(AtomicBool::new(false));
    let (cut_headers, timed_out_bodies, requests) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let ready = Arc::new(tokio::sync::Barrier::new(SLOTS + 1));

    let mut slots = tokio::task::JoinSet::new();
    for slot in 0..SLOTS {
        let (s, config, scope, good_done, ready) = (
            s.clone(),
            config.clone(),
            scope.clone(),
            good_done.clone(),
            ready.clone(),
        );
        let (cut_headers, timed_out_bodies, requests) =
            (cut_headers.clone(), timed_out_bodies.clone(), requests.clone());
        slots.spawn(async move {
            let from = source(22, 1 + (slot % 5) as u8);
            for round in 0..MAX_ROUNDS {
                let mut io = tls_from(&s, &config, from, 443).await.expect("TLS handshake");
                requests.fetch_add(1, Ordering::Relaxed);
                if slot % 2 == 0 {
                    // Headers, one byte at a time, never finished.
                    io.write_all(format!("GET /enrollments/flood-dev?api-version=2021-10-01 HTTP/1.1\r\nHost: {}\r\nX-Slow: ", s.ip).as_bytes())
                        .await
                        .unwrap();
                    if round == 0 {
                        ready.wait().await;
                    }
                    let mut chunk = [0u8; 1024];
                    let mut closed = false;
                    for _ in 0..(GIVE_UP.as_millis() / 250) {
                        tokio::select! {
                            r = io.read(&mut chunk) => {
                                let n = r.unwrap_or(0);
                                assert_eq!(n, 0, "no answer to unfinished headers: {:?}", String::from_utf8_lossy(&chunk[..n]));
                                closed = true;
                                break;
                            }
                            _ = tokio::time::sleep(Duration::from_millis(250)) => {
                                if io.write_all(b"a").await.is_err() {
                                    closed = true;
                                    break;
                                }
                            }
                        }
                    }
                    assert!(closed, "trickled headers outlived the request deadline");
                    cut_headers.fetch_add(1, Ordering::Relaxed);
                } else {
                    // A register request whose body stops after 10 of 100 bytes.
                    io.write_all(
                        format!(
                            "PUT /{scope}/registrations/slow-{slot}/register?api-version=2021-06-01 HTTP/1.1\r\nHost: {}\r\n\
                             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"registr",
                            s.ip
                        )
                        .as_bytes(),
                    )
                    .await
                    .unwrap();
                    if round == 0 {
                        ready.wait().await;
                    }
                    let (closed, got) = until_closed(&mut io).await;
                    assert!(closed, "a stalled body outlived the request deadline");
                    let text = String::from_utf8_lossy(&got);
                    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
                    assert!(text.contains("\"errorCode\":408001"), "{text}");
                    timed_out_bodies.fetch_add(1, Ordering::Relaxed);
                }
                if good_done.load(Ordering::Relaxed) {
                    break;
                }
            }
        });
    }
    // Every slot has its first slow request under way: the good client is served meanwhile.
    tokio::time::timeout(GIVE_UP, ready.wait())
        .await
        .expect("every slot starts its slow request");
    good_client_async(&s).await;
    good_done.store(true, Ordering::Relaxed);
    let peak = rss(&s);
    while let Some(r) = slots.join_next().await {
        r.unwrap();
    }
    let (cut, timed_out, total) = (
        cut_headers.load(Ordering::Relaxed),
        timed_out_bodies.load(Ordering::Relaxed),
        requests.load(Ordering::Relaxed),
    );
    assert!(total >= SLOTS, "{total} slow requests");
    assert_eq!(cut + timed_out, total, "every slow request was ended by the server");
    assert!(
        cut >= SLOTS / 2 && timed_out >= SLOTS / 2,
        "{cut} cut, {timed_out} timed out"
    );
    good_client_async(&s).await;
    let after = rss_returns(&s, baseline, RSS_SLACK, "slowloris").await;
    eprintln!(
        "slowloris: {total} requests ({cut} headers cut, {timed_out} bodies 408); RSS baseline {} MB, peak {} MB, after {} MB",
        baseline >> 20,
        peak >> 20,
        after >> 20
    );
    // Nothing was registered by the stalled register requests.
    let hub = s.json(&["hub", "device", "list"]);
    assert_eq!(hub.as_array().map(Vec::len), Some(1), "only flood-dev: {hub}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_caps_per_address_and_in_total() {
    const PER_IP: usize = 50;
    const TOTAL: usize = 130;
    raise_open_files(1000);
    let s = start(
        "127.0.11.12",
        &[
            "--max-connections-per-ip",
            &PER_IP.to_string(),
            "--max-connections",
            &TOTAL.to_string(),
        ],
    );
    let baseline = rss(&s);
    let started = std::time::Instant::now();
    let config = tls_config(&s);
    let (a, b, c, d) = (source(23, 1), source(23, 2), source(23, 3), source(23, 4));
    let hold = |from: IpAddr, n: usize| {
        let (s, config) = (s.clone(), config.clone());
        async move {
            let mut held = Vec::new();
            for _ in 0..n {
                // TLS done and idle on HTTPS: held for the keep-alive idle time (minutes).
                held.push(tls_from(&s, &config, from, 443).await.expect("admitted"));
            }
            held
        }
    };

    // A holds its 50: its next connection is refused on either port (the cap spans listeners),
    // closed before the TLS handshake; B is still served, and so is the good client.
    let held_a = hold(a, PER_IP).await;
    for port in [443, 8883, 443] {
        assert!(
            tls_from(&s, &config, a, port).await.is_err(),
            "over the per-address cap on {port}"
        );
    }
    let b1 = tls_from(&s, &config, b, 8883).await.expect("another address is served");
    drop(b1);
    good_client_async(&s).await;
    // A's places come back when its connections end.
    drop(held_a);
    let deadline = tokio::time::Instant::now() + GIVE_UP;
    let again = loop {
        if let Ok(io) = tls_from(&s, &config, a, 443).await {
            break io;
        }
        assert!(tokio::time::Instant::now() < deadline, "A never got its places back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    drop(again);

    // The total cap: A, B and C hold 130 in all; D is refused; when C lets go, D is served.
    let held_a = hold(a, PER_IP).await;
    let held_b = hold(b, PER_IP).await;
    let held_c = hold(c, TOTAL - 2 * PER_IP).await;
    assert!(tls_from(&s, &config, d, 443).await.is_err(), "over the total cap");
    assert!(tls_from(&s, &config, d, 8883).await.is_err(), "over the total cap");
    drop(held_c);
    let deadline = tokio::time::Instant::now() + GIVE_UP;
    loop {
        if tls_from(&s, &config, d, 443).await.is_ok() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "D was never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop((held_a, held_b));
    tokio::time::sleep(Duration::from_millis(500)).await;
    good_client_async(&s).await;

    // Each cap said so in the log, at most once per period (10 s), however many it refused.
    let log = s.log();
    let most = 1 + started.elapsed().as_secs() as usize / 10 + 1;
    let per_ip_lines = log.lines().filter(|l| l.contains("--max-connections-per-ip")).count();
    let total_lines = log.lines().filter(|l| l.contains("(--max-connections)")).count();
    assert!(
        (1..=most).contains(&per_ip_lines),
        "{per_ip_lines} per-address lines:\n{log}"
    );
    assert!(
        (1..=most).contains(&total_lines),
        "{total_lines} total-cap lines:\n{log}"
    );
    assert!(log.contains("127.0.23.1 holds its maximum of 50 connections"), "{log}");
    rss_returns(&s, baseline, RSS_SLACK, "caps").await;
}

//! The bad-input matrix for the HTTPS port: broken HTTP framing and broken TLS, sent over real
//! sockets to `dps serve` in-process. Each case asserts the exact outcome — the status and DPS
//! `errorCode`, hyper's bodiless status for what never becomes a request, or the connection
//! closed without an answer — then that nothing was persisted (no registration record, the
//! enrollments and hub devices unchanged) and that a good client is served right after.
//!
//! The server runs with a 2 s request timeout so the stalled cases end in seconds; the TLS
//! handshake deadline is the listener's fixed 10 s.

use crate::common;
use std::sync::Arc;
use std::time::Duration;

use crate::common::{dps_sas, server_with, KEY, MAX_MESSAGE_BYTES};
use dps_proto::sas::build_token;
use dps_server::RunningServer;
use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const IP: &str = "127.0.11.1";
/// The server's `limits.request_timeout` in these tests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a case waits for an answer or a close before failing: well past every deadline
/// (request 2 s, TLS handshake 10 s), so a pass never depends on the machine's speed.
const GIVE_UP: Duration = Duration::from_secs(40);

/// One step of what a client sends.
enum Step {
    Send(Vec<u8>),
    /// Stop sending, keeping the connection open.
    Stall,
}

/// What the server must do.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// A DPS error: status, `errorCode` (body and `x-ms-error-code`), then what follows.
    Dps(u16, u32, After),
    /// hyper's own answer to bytes that never became a request: a status with no body, then the
    /// connection closed.
    Bare(u16),
    /// The connection closed with no HTTP answer at all.
    Closed,
}

/// What happens on the connection after the answer.
#[derive(Debug, Clone, Copy)]
enum After {
    /// It is closed (nothing more is read from it).
    Closed,
    /// It stays usable: the good request on it is served.
    KeepAlive,
    /// The bytes after the request are not a request: hyper answers them with this bare status
    /// and closes.
    ThenBare(u16),
}

struct Case {
    name: &'static str,
    steps: Vec<Step>,
    expect: Expect,
}

/// The test's view of the server.
struct Env {
    s: RunningServer,
    tls: Arc<rustls::ClientConfig>,
}

impl Env {
    fn host(&self) -> &str {
        IP
    }

    fn scope(&self) -> &str {
        &self.s.services.identity.id_scope
    }

    /// A `provisioningserviceowner` SAS for the service API.
    fn owner(&self) -> String {
        let p = &self.s.services.identity.policies[0];
        build_token(IP, &p.primary_key, expiry(), Some(&p.key_name)).unwrap()
    }

    /// A good service API request: read the `dev-1` enrollment.
    fn good_request(&self) -> Vec<u8> {
        format!(
            "GET /enrollments/dev-1?api-version=2021-10-01 HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\n\r\n",
            self.host(),
            self.owner()
        )
        .into_bytes()
    }

    /// The head of `dev-1`'s register request with a valid SAS, up to the blank line.
    fn register_head(&self, extra_headers: &str) -> String {
        format!(
            "PUT /{}/registrations/dev-1/register?api-version=2021-06-01 HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\nContent-Type: application/json\r\n{extra_headers}\r\n",
            self.scope(),
            self.host(),
            dps_sas(&self.s, "dev-1", KEY)
        )
    }

    async fn tls(&self, config: Arc<rustls::ClientConfig>) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.s.https_addr).await.unwrap();
        let name = rustls::pki_types::ServerName::IpAddress(self.s.https_addr.ip().into());
        TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .expect("TLS handshake")
    }

    /// What the server persisted: enrollments, groups, hub devices, and `dev-1`'s record.
    async fn persisted(&self) -> Value {
        let store = self.s.services.engine.store();
        let enrollments: Vec<String> = store
            .list_enrollments(None, 1000)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.registration_id)
            .collect();
        let groups = store.list_groups(None, 1000).await.unwrap().len();
        let devices: Vec<String> = common::hub(&self.s)
            .list_devices(None, 1000)
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.device_id)
            .collect();
        let record = self.s.services.engine.get_registration("dev-1").await.is_ok();
        serde_json::json!({"enrollments": enrollments, "groups": groups, "devices": devices, "dev1Record": record})
    }
}

fn expiry() -> u64 {
    chrono::Utc::now().timestamp() as u64 + 600
}

/// A parsed HTTP response.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response (skipping `100 Continue`); `None` when the connection closes (or fails)
/// before a whole one arrived. `buf` keeps bytes read past it.
async fn read_response<S: AsyncRead + Unpin>(io: &mut S, buf: &mut Vec<u8>) -> Option<Response> {
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let mut chunk = [0u8; 16384];
            match tokio::time::timeout(GIVE_UP, io.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => panic!(
                    "no answer and no close within {GIVE_UP:?}; got {:?}",
                    String::from_utf8_lossy(buf)
                ),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        buf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        assert!(status_line.starts_with("HTTP/1.1 "), "not an HTTP response: {head:?}");
        let status: u16 = status_line[9..12].parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        if status == 100 {
            continue;
        }
        let mut resp = Response {
            status,
            headers,
            body: Vec::new(),
        };
        let len: usize = resp.header("content-length").map_or(0, |v| v.parse().unwrap());
        while buf.len() < len {
            let mut chunk = [0u8; 16384];
            match tokio::time::timeout(GIVE_UP, io.read(&mut chunk)).await.expect("body") {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        resp.body = buf.drain(..len).collect();
        return Some(resp);
    }
}

/// Waits for the server to close the connection; returns what it sent before (TLS alerts and the
/// like are not an HTTP answer).
async fn closed<S: AsyncRead + Unpin>(io: &mut S) -> Vec<u8> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(GIVE_UP, io.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("the connection is still open after {GIVE_UP:?}"),
        }
    }
}

/// Asserts a good client is served on `io`: `200` and the `dev-1` enrollment.
async fn good_on<S: AsyncRead + AsyncWrite + Unpin>(env: &Env, io: &mut S, buf: &mut Vec<u8>, case: &str) {
    io.write_all(&env.good_request()).await.unwrap();
    let resp = read_response(io, buf)
        .await
        .unwrap_or_else(|| panic!("{case}: the good request got no answer"));
    assert_eq!(resp.status, 200, "{case}: {}", String::from_utf8_lossy(&resp.body));
    let v: Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(v["registrationId"], "dev-1", "{case}: {v}");
}

/// Asserts a good client is served on a fresh connection.
async fn good_client(env: &Env, case: &str) {
    let mut io = env.tls(env.tls.clone()).await;
    good_on(env, &mut io, &mut Vec::new(), case).await;
}

/// Runs one HTTP case over TLS and checks its outcome.
async fn run(env: &Env, case: &Case) {
    let mut io = env.tls(env.tls.clone()).await;
    for step in &case.steps {
        match step {
            Step::Send(bytes) => {
                // The server may close (and reset) before it read everything: that is an outcome
                // the expectation judges, not a test failure.
                if io.write_all(bytes).await.is_err() {
                    break;
                }
                let _ = io.flush().await;
            }
            Step::Stall => {}
        }
    }
    let mut buf = Vec::new();
    match case.expect {
        Expect::Closed => {
            let rest = closed(&mut io).await;
            assert!(
                !rest.starts_with(b"HTTP/"),
                "{}: expected a close without an answer, got {:?}",
                case.name,
                String::from_utf8_lossy(&rest)
            );
        }
        Expect::Bare(status) => {
            let resp = read_response(&mut io, &mut buf)
                .await
                .unwrap_or_else(|| panic!("{}: closed without the expected {status}", case.name));
            assert_eq!(resp.status, status, "{}: {resp:?}", case.name);
            assert!(resp.body.is_empty(), "{}: {resp:?}", case.name);
            assert!(
                buf.is_empty() && closed(&mut io).await.is_empty(),
                "{}: nothing follows",
                case.name
            );
        }
        Expect::Dps(status, code, after) => {
            let resp = read_response(&mut io, &mut buf)
                .await
                .unwrap_or_else(|| panic!("{}: closed without the expected {status}", case.name));
            let body: Value = serde_json::from_slice(&resp.body)
                .unwrap_or_else(|e| panic!("{}: not a DPS error body ({e}): {resp:?}", case.name));
            assert_eq!(
                (resp.status, body["errorCode"].as_u64()),
                (status, Some(code as u64)),
                "{}: {body}",
                case.name
            );
            assert_eq!(
                resp.header("x-ms-error-code"),
                Some(code.to_string().as_str()),
                "{}",
                case.name
            );
            assert!(
                body["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{}: {body}",
                case.name
            );
            match after {
                After::Closed => {
                    assert!(
                        buf.is_empty() && closed(&mut io).await.is_empty(),
                        "{}: the connection is closed after the answer",
                        case.name
                    );
                }
                After::KeepAlive => good_on(env, &mut io, &mut buf, case.name).await,
                After::ThenBare(status) => {
                    let resp = read_response(&mut io, &mut buf).await;
                    assert!(
                        resp.as_ref().is_some_and(|r| r.status == status && r.body.is_empty()),
                        "{}: then {status}: {resp:?}",
                        case.name
                    );
                    assert!(
                        buf.is_empty() && closed(&mut io).await.is_empty(),
                        "{}: then closed",
                        case.name
                    );
                }
            }
        }
    }
}

fn bytes(s: impl Into<String>) -> Step {
    Step::Send(s.into().into_bytes())
}

fn http_cases(env: &Env) -> Vec<Case> {
    let host = env.host();
    let register = |extra: &str| env.register_head(extra);
    let body = r#"{"registrationId":"dev-1"}"#;
    let big_header = "a".repeat(500 * 1024);
    let many_headers: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let long_query = "&".repeat(60 * 1024);
    let huge_uri = format!("/enrollments/x?api-version=2021-10-01&q={}", "a".repeat(70 * 1024));
    let chunked_over = {
        let chunk = "x".repeat(1000);
        let mut s = register("Transfer-Encoding: chunked\r\n");
        for _ in 0..(MAX_MESSAGE_BYTES / 1000 + 2) {
            s += &format!("3e8\r\n{chunk}\r\n");
        }
        s + "0\r\n\r\n"
    };
    vec![
        Case {
            name: "request line that is not one",
            steps: vec![bytes("GARBAGE\r\n\r\n")],
            expect: Expect::Bare(400),
        },
        Case {
            name: "method with a character not allowed in a token",
            steps: vec![bytes(format!("G@T / HTTP/1.1\r\nHost: {host}\r\n\r\n"))],
            expect: Expect::Bare(400),
        },
        Case {
            name: "unknown HTTP version",
            steps: vec![bytes(format!("GET / HTTP/3.7\r\nHost: {host}\r\n\r\n"))],
            expect: Expect::Bare(400),
        },
        Case {
            name: "header line without a colon",
            steps: vec![bytes(format!("GET / HTTP/1.1\r\nHost: {host}\r\nNoColonHere\r\n\r\n"))],
            expect: Expect::Bare(400),
        },
        Case {
            name: "obsolete folded header line",
            steps: vec![bytes(format!("GET / HTTP/1.1\r\nHost: {host}\r\nX-A: b\r\n c\r\n\r\n"))],
            expect: Expect::Bare(400),
        },
        Case {
            name: "body longer than its Content-Length (the rest is not a request)",
            steps: vec![bytes(format!("{}{body}", register("Content-Length: 2\r\n")))],
            expect: Expect::Dps(400, 400_004, After::ThenBare(400)),
        },
        Case {
            name: "body shorter than its Content-Length, then silence",
            steps: vec![
                bytes(format!("{}{}", register("Content-Length: 100\r\n"), &body[..10])),
                Step::Stall,
            ],
            expect: Expect::Dps(408, 408_001, After::Closed),
        },
        Case {
            name: "Expect: 100-continue and the body never comes",
            steps: vec![
                bytes(register("Content-Length: 26\r\nExpect: 100-continue\r\n")),
                Step::Stall,
            ],
            expect: Expect::Dps(408, 408_001, After::Closed),
        },
        Case {
            name: "chunked body that stops mid-chunk",
            steps: vec![
                bytes(format!("{}10\r\n{{\"reg", register("Transfer-Encoding: chunked\r\n"))),
                Step::Stall,
            ],
            expect: Expect::Dps(408, 408_001, After::Closed),
        },
        Case {
            name: "headers that never end",
            steps: vec![
                bytes(format!(
                    "GET /enrollments/dev-1?api-version=2021-10-01 HTTP/1.1\r\nHost: {host}\r\n"
                )),
                Step::Stall,
            ],
            expect: Expect::Closed,
        },
        Case {
            name: "two different Content-Length headers",
            steps: vec![bytes(format!(
                "{}{body}",
                register("Content-Length: 26\r\nContent-Length: 2\r\n")
            ))],
            expect: Expect::Bare(400),
        },
        Case {
            name: "Content-Length that is not a number",
            steps: vec![bytes(format!("{}{body}", register("Content-Length: -26\r\n")))],
            expect: Expect::Bare(400),
        },
        Case {
            name: "Content-Length and chunked together, smuggling a second request",
            // Transfer-Encoding wins (the chunked body is empty) and the connection closes after
            // the answer, so the bytes after the chunked body are never read as a request.
            steps: vec![bytes(format!(
                "PUT /enrollments/smuggled?api-version=2021-10-01 HTTP/1.1\r\nHost: {host}\r\nAuthorization: {}\r\n\
                 Content-Type: application/json\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{}",
                env.owner(),
                String::from_utf8(env.good_request()).unwrap()
            ))],
            expect: Expect::Dps(400, 400_004, After::Closed),
        },
        Case {
            name: "Transfer-Encoding other than chunked",
            steps: vec![bytes(format!("{}{body}", register("Transfer-Encoding: gzip\r\n")))],
            expect: Expect::Bare(400),
        },
        Case {
            name: "chunked body with a chunk size that is not hex",
            steps: vec![bytes(format!(
                "{}zz\r\n{body}\r\n0\r\n\r\n",
                register("Transfer-Encoding: chunked\r\n")
            ))],
            expect: Expect::Dps(400, 400_004, After::Closed),
        },
        Case {
            name: "declared body over the size limit",
            steps: vec![bytes(register("Content-Length: 1000000\r\n"))],
            expect: Expect::Dps(413, 413_001, After::Closed),
        },
        Case {
            name: "chunked body over the size limit",
            steps: vec![bytes(chunked_over)],
            expect: Expect::Dps(413, 413_001, After::Closed),
        },
        Case {
            name: "one header of 500 KiB",
            steps: vec![bytes(format!(
                "GET / HTTP/1.1\r\nHost: {host}\r\nX-Big: {big_header}\r\n\r\n"
            ))],
            expect: Expect::Bare(431),
        },
        Case {
            name: "200 headers",
            steps: vec![bytes(format!("GET / HTTP/1.1\r\nHost: {host}\r\n{many_headers}\r\n"))],
            expect: Expect::Bare(431),
        },
        Case {
            name: "HTTP/2 connection preface on the HTTP/1.1 port",
            steps: vec![Step::Send(
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00".to_vec(),
            )],
            expect: Expect::Closed,
        },
        Case {
            name: "raw byte 0xFF in the path",
            steps: vec![Step::Send(
                [
                    b"GET /enrollments/\xff\xfe?api-version=2021-10-01 HTTP/1.1\r\nHost: ".as_slice(),
                    host.as_bytes(),
                    b"\r\n\r\n",
                ]
                .concat(),
            )],
            expect: Expect::Bare(400),
        },
        Case {
            name: "percent-encoded non-UTF-8 registration id",
            steps: vec![bytes(format!(
                "{}{body}",
                register("Content-Length: 26\r\n").replacen("/registrations/dev-1/", "/registrations/%FF%FE/", 1)
            ))],
            // A path that does not decode to text names no resource.
            expect: Expect::Dps(404, 404_002, After::KeepAlive),
        },
        Case {
            name: "raw NUL in the path",
            steps: vec![Step::Send(
                [
                    b"GET /enrollments/a\x00b?api-version=2021-10-01 HTTP/1.1\r\nHost: ".as_slice(),
                    host.as_bytes(),
                    b"\r\n\r\n",
                ]
                .concat(),
            )],
            expect: Expect::Bare(400),
        },
        Case {
            name: "percent-encoded NUL in a registration id",
            steps: vec![bytes(format!(
                "{}{body}",
                register("Content-Length: 26\r\n").replacen("/registrations/dev-1/", "/registrations/dev%00-1/", 1)
            ))],
            expect: Expect::Dps(400, 400_001, After::KeepAlive),
        },
        Case {
            name: "60 KiB of query separators",
            steps: vec![bytes(format!(
                "GET /enrollments/dev-1?api-version=2021-10-01{long_query} HTTP/1.1\r\nHost: {host}\r\n\r\n"
            ))],
            expect: Expect::Dps(401, 401_000, After::KeepAlive),
        },
        Case {
            name: "URI over 64 KiB",
            steps: vec![bytes(format!("GET {huge_uri} HTTP/1.1\r\nHost: {host}\r\n\r\n"))],
            expect: Expect::Bare(414),
        },
    ]
}

/// A client certificate that is not a certificate, with a real key to sign the handshake.
#[derive(Debug)]
struct NotACertificate(Arc<CertifiedKey>);

impl ResolvesClientCert for NotACertificate {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A ClientHello offering only `version` (0x0301 TLS 1.0, 0x0302 TLS 1.1), with no
/// `supported_versions` extension. It offers suites the server has (ECDHE with AES-GCM) besides
/// the old ones, so the version is the only thing wrong with it.
fn legacy_client_hello(version: [u8; 2]) -> Vec<u8> {
    let mut hello = Vec::new();
    hello.extend_from_slice(&version);
    hello.extend_from_slice(&[0x42; 32]); // random
    hello.push(0); // no session id
    let suites: [u16; 6] = [0xc02b, 0xc02f, 0xc013, 0xc014, 0x002f, 0x0035];
    hello.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        hello.extend_from_slice(&s.to_be_bytes());
    }
    hello.extend_from_slice(&[1, 0]); // null compression
    let mut handshake = vec![1]; // ClientHello
    handshake.extend_from_slice(&(hello.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

/// Sends `bytes` on a plain TCP connection to the HTTPS port and asserts the server closes it
/// without an HTTP answer; returns what it sent before closing.
async fn raw_closed(env: &Env, bytes: &[u8]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(env.s.https_addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    let got = closed(&mut tcp).await;
    assert!(!got.starts_with(b"HTTP/"), "{:?}", String::from_utf8_lossy(&got));
    got
}

/// A TLS alert record (content type 21) is the first thing the server sent.
fn is_alert(got: &[u8]) -> bool {
    got.first() == Some(&0x15)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_framing_and_tls_bad_input_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let s = server_with(IP, dir.path(), |c| {
        c.limits.request_timeout_secs = REQUEST_TIMEOUT.as_secs();
    })
    .await;
    let ca = std::fs::read_to_string(s.services.config.data_dir.join("ca.pem")).unwrap();
    let tls = dps_pki::tls::client_config(&ca).unwrap();
    let env = Env { s, tls };
    good_client(&env, "before anything").await;
    let baseline = env.persisted().await;
    assert_eq!(baseline["dev1Record"], false);
    let mut count = 0;

    // The handshake that never finishes takes the listener's 10 s: it runs alongside the rest.
    let half_hello = {
        let mut h = legacy_client_hello([0x03, 0x03]);
        h.truncate(20);
        h
    };
    let stalled_handshake = {
        let addr = env.s.https_addr;
        tokio::spawn(async move {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            tcp.write_all(&half_hello).await.unwrap();
            closed(&mut tcp).await
        })
    };

    // A WebSocket upgrade (MQTT over WebSockets) that then says nothing: it keeps its place
    // under the connection caps after hyper lets go of it, and the MQTT CONNECT deadline (10 s)
    // closes it.
    let mut silent_ws = env.tls(env.tls.clone()).await;
    silent_ws
        .write_all(
            format!(
                "GET /$iothub/websocket HTTP/1.1\r\nHost: {IP}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut ws_buf = Vec::new();
    let resp = read_response(&mut silent_ws, &mut ws_buf)
        .await
        .expect("upgrade answered");
    assert_eq!(resp.status, 101);
    // Once the earlier good client's connection is gone, this one is still counted.
    while env.s.connections.total() > 1 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(env.s.connections.total(), 1, "the upgraded connection holds its place");
    let silent_ws = tokio::spawn(async move { closed(&mut silent_ws).await });

    for case in http_cases(&env) {
        run(&env, &case).await;
        assert_eq!(env.persisted().await, baseline, "{}: nothing persisted", case.name);
        good_client(&env, case.name).await;
        count += 1;
    }

    // TLS: a client that sends no SNI (it connects by IP address, as here) is served.
    {
        let mut config = (*env.tls).clone();
        config.enable_sni = false;
        let mut io = env.tls(Arc::new(config)).await;
        good_on(&env, &mut io, &mut Vec::new(), "no SNI").await;
        count += 1;
    }
    // Garbage instead of a ClientHello, plain HTTP on the TLS port: closed, no HTTP answer.
    for (name, bytes) in [
        (
            "garbage instead of a ClientHello",
            b"\x00\x01\x02\x03garbage\r\n\r\n".to_vec(),
        ),
        (
            "plain HTTP on the TLS port",
            format!("GET / HTTP/1.1\r\nHost: {IP}\r\n\r\n").into_bytes(),
        ),
    ] {
        raw_closed(&env, &bytes).await;
        assert_eq!(env.persisted().await, baseline, "{name}");
        good_client(&env, name).await;
        count += 1;
    }
    // ClientHellos of TLS 1.0 and 1.1 only: a fatal handshake_failure alert (rustls's answer to
    // a client without TLS 1.2 or 1.3), then closed.
    for (name, version) in [("TLS 1.0 only", [0x03, 0x01]), ("TLS 1.1 only", [0x03, 0x02])] {
        let got = raw_closed(&env, &legacy_client_hello(version)).await;
        assert!(is_alert(&got), "{name}: {got:?}");
        assert_eq!(
            got.get(5..7),
            Some([2u8, 40].as_slice()),
            "{name}: fatal handshake_failure: {got:?}"
        );
        good_client(&env, name).await;
        count += 1;
    }
    // A client certificate that is not a certificate: the handshake fails, the request is never
    // answered.
    {
        let device = dps_pki::ca::LocalCa::generate("bad input CA")
            .unwrap()
            .issue_device_certificate("dev-1", 30, dps_pki::ca::KeyAlgorithm::EcdsaP256)
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(device.key_pem.as_bytes()).unwrap();
        let signer = rustls::crypto::ring::default_provider()
            .key_provider
            .load_private_key(key)
            .unwrap();
        let garbage = CertificateDer::from(b"\x30\x03not a certificate".to_vec());
        let mut config = (*env.tls).clone();
        config.client_auth_cert_resolver =
            Arc::new(NotACertificate(Arc::new(CertifiedKey::new(vec![garbage], signer))));
        let tcp = TcpStream::connect(env.s.https_addr).await.unwrap();
        let name = rustls::pki_types::ServerName::IpAddress(env.s.https_addr.ip().into());
        // TLS 1.3 clients finish before the server has judged their certificate: the refusal
        // comes as an alert on the first read.
        if let Ok(mut io) = TlsConnector::from(Arc::new(config)).connect(name, tcp).await {
            let _ = io.write_all(&env.good_request()).await;
            let got = closed(&mut io).await;
            assert!(got.is_empty(), "no HTTP answer: {:?}", String::from_utf8_lossy(&got));
        }
        assert_eq!(env.persisted().await, baseline, "certificate that is not one");
        good_client(&env, "certificate that is not one").await;
        count += 1;
    }
    // The handshake that never finished was closed (after the deadline), without an answer.
    let got = tokio::time::timeout(GIVE_UP, stalled_handshake)
        .await
        .expect("the stalled handshake is closed")
        .unwrap();
    assert!(got.is_empty() || is_alert(&got), "{got:?}");
    good_client(&env, "after the stalled handshake").await;
    count += 1;
    let got = tokio::time::timeout(GIVE_UP, silent_ws)
        .await
        .expect("the silent WebSocket is closed")
        .unwrap();
    assert!(!got.starts_with(b"HTTP/"), "{got:?}");
    good_client(&env, "after the silent WebSocket").await;
    count += 1;

    assert!(count >= 20, "{count} cases");
    assert_eq!(env.persisted().await, baseline);
    // And a device still registers over HTTPS: the same register request, framed properly.
    let mut io = env.tls(env.tls.clone()).await;
    let mut buf = Vec::new();
    let body = r#"{"registrationId":"dev-1"}"#;
    io.write_all(format!("{}{body}", env.register_head("Content-Length: 26\r\n")).as_bytes())
        .await
        .unwrap();
    let resp = read_response(&mut io, &mut buf).await.expect("register answered");
    assert_eq!(resp.status, 202, "{}", String::from_utf8_lossy(&resp.body));
    // Every connection the matrix opened is given back to the connection caps.
    drop(io);
    let deadline = tokio::time::Instant::now() + GIVE_UP;
    while env.s.connections.total() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} connections still held",
            env.s.connections.total()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(env.s.connections.addresses(), 0);
}

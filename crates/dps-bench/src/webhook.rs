//! A custom allocation webhook for `dps bench register --webhook-delay-ms MS`: an HTTPS server in
//! the bench process that answers every `AllocationRequest` after `MS` milliseconds with the
//! first hub it was offered, so that a run measures what custom allocation costs the server
//! (one call per registration, over kept-alive connections) against a webhook of known speed.
//!
//! HTTP/1.1 read with `httparse`, as the bench's lean clients read it: a request line, headers
//! and a `Content-Length` body, answered `200` with JSON, the connection kept for the next.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::BenchError;

/// Largest request read (an `AllocationRequest` is about 1 KB).
const MAX_REQUEST: usize = 64 * 1024;

/// The running webhook.
pub struct Webhook {
    /// `https://{addr}/api/allocate?code=bench`.
    pub url: String,
    /// Requests answered.
    pub calls: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the webhook on `bind` (any free port) with a certificate for it issued by `ca`.
pub async fn start(bind: IpAddr, ca: &dps_pki::ca::LocalCa, delay: Duration) -> Result<Webhook, BenchError> {
    let issued = ca
        .issue_server_certificate(&[bind.to_string()])
        .map_err(|e| BenchError::controls(format!("cannot issue the webhook's certificate: {e}")))?;
    let chain = format!("{}{}", issued.cert_pem, ca.chain_pem());
    let tls = dps_pki::tls::server_config(&chain, &issued.key_pem, false)
        .map_err(|e| BenchError::controls(format!("webhook TLS: {e}")))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let listener = TcpListener::bind(SocketAddr::new(bind, 0))
        .await
        .map_err(|e| BenchError::controls(format!("cannot listen for the webhook on {bind}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| BenchError::controls(format!("webhook address: {e}")))?;
    let calls = Arc::new(AtomicU64::new(0));
    let counted = calls.clone();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            let (acceptor, calls) = (acceptor.clone(), counted.clone());
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    serve(tls, delay, &calls).await;
                }
            });
        }
    });
    Ok(Webhook {
        url: format!("https://{addr}/api/allocate?code=bench"),
        calls,
        task,
    })
}

/// Answers requests on one connection until it closes or sends what is not a request.
async fn serve<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut io: S, delay: Duration, calls: &AtomicU64) {
    let mut buf = Vec::with_capacity(4096);
    loop {
        let Some((head, length)) = read_head(&mut io, &mut buf).await else {
            return;
        };
        while buf.len() < head + length {
            let mut chunk = [0u8; 4096];
            match io.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let request: Value = serde_json::from_slice(&buf[head..head + length]).unwrap_or(Value::Null);
        buf.drain(..head + length);
        let hub = request["linkedHubs"].get(0).cloned().unwrap_or(Value::Null);
        tokio::time::sleep(delay).await;
        let body = json!({ "iotHubHostName": hub }).to_string();
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if io.write_all(response.as_bytes()).await.is_err() {
            return;
        }
        calls.fetch_add(1, Ordering::Relaxed);
    }
}

/// Reads until a whole request head is in `buf`: its length and the body's `Content-Length`.
async fn read_head<S: tokio::io::AsyncRead + Unpin>(io: &mut S, buf: &mut Vec<u8>) -> Option<(usize, usize)> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = req.parse(buf) {
            let length = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                .unwrap_or(0);
            return (length <= MAX_REQUEST).then_some((head, length));
        }
        if buf.len() > MAX_REQUEST {
            return None;
        }
        let mut chunk = [0u8; 4096];
        match io.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

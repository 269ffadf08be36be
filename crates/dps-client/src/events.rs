//! [`EventStream`]: the hub's telemetry stream (`GET /messages/events`) as
//! [`RegistryClient::monitor_events`](crate::RegistryClient::monitor_events) opens it.
//!
//! The server sends one JSON event per line (NDJSON) and a blank line as a heartbeat when
//! nothing happens, so that a vanished reader is noticed; the stream never ends on its own.

use serde_json::Value;

use crate::ClientError;

/// An open telemetry stream. Each event is the hub's monitor-events JSON
/// (`{"event": {"origin", "properties", "annotations", "payload", ...}}`), kept as a `Value`:
/// readers print or pick from it, and a newer server's fields pass through unchanged.
#[derive(Debug)]
pub struct EventStream {
    resp: reqwest::Response,
    /// Bytes received after the last complete line.
    buf: Vec<u8>,
}

impl EventStream {
    pub(crate) fn new(resp: reqwest::Response) -> Self {
        Self { resp, buf: Vec::new() }
    }

    /// The next event, waiting for it; `None` when the server closed the stream. Heartbeats are
    /// skipped. Cancel-safe: dropping the future (a timeout, Ctrl-C) loses no event, so it can
    /// be raced in `tokio::select!`.
    pub async fn next(&mut self) -> Result<Option<Value>, ClientError> {
        loop {
            while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let line = &line[..line.len() - 1];
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return serde_json::from_slice(line).map(Some).map_err(|e| {
                    ClientError::Protocol(format!("event is not JSON ({e}): {}", String::from_utf8_lossy(line)))
                });
            }
            match self.resp.chunk().await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk),
                Ok(None) => return Ok(None),
                Err(e) => return Err(ClientError::connection("reading the event stream", &e)),
            }
        }
    }
}

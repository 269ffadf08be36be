//! `GET /messages/events`: the embedded hub's telemetry as a never-ending NDJSON stream, for
//! `dps hub monitor-events`.
//!
//! - Each line is one event in the hub's monitor-events shape ([`TelemetryMessage::to_monitor_event`]:
//!   `{"event": {"origin", ..., "annotations": {"x-opt-sequence-number", ...}, "payload"}}`).
//! - `from-sequence=N`: first the retained events with sequence number **greater than** N (pass the
//!   last sequence number seen to resume; `0` for everything retained), then live ones. Without
//!   it, only events that arrive after the request.
//! - `deviceId=X`: only that device's events (case-insensitive).
//! - A blank line is sent every [`HEARTBEAT`] without events, so a vanished client is noticed
//!   (the write fails) and proxies keep the connection; consumers must skip empty lines.
//! - A consumer that falls behind the live broadcast catches up from the retention ring; what the
//!   ring no longer holds is skipped.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use crate::ApiError;
use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use dps_hub::{Hub, TelemetryMessage};
use dps_proto::model::device::to_ascii_json;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::{parse_count, Ctx};

/// Content type of the stream.
pub(super) const NDJSON: &str = "application/x-ndjson";
/// Idle time after which a blank line is sent.
pub(super) const HEARTBEAT: Duration = Duration::from_secs(15);
/// Events fetched from the retention ring per step while catching up.
const CATCH_UP_PAGE: usize = 256;

struct State {
    hub: Hub,
    rx: broadcast::Receiver<Arc<TelemetryMessage>>,
    device: Option<String>,
    pending: VecDeque<Arc<TelemetryMessage>>,
    /// `Some(n)`: read retained events after `n` before going back to the live feed.
    catch_up_after: Option<u64>,
    /// Highest sequence number sent (live events at or below it are duplicates).
    last_sent: u64,
    heartbeat: Interval,
}

pub(super) fn stream(ctx: &Ctx<'_>, hub: Hub) -> Result<Response, ApiError> {
    let device = ctx
        .query
        .get("deviceId")
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(str::to_string);
    let from = parse_count(ctx.query.get("from-sequence"), "from-sequence")?.map(|n| n as u64);
    // Subscribe before reading the ring, so nothing falls between the two.
    let rx = hub.subscribe_events();
    let mut heartbeat = tokio::time::interval_at(Instant::now() + HEARTBEAT, HEARTBEAT);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tracing::debug!(device = device.as_deref().unwrap_or("*"), from = ?from, "monitor-events stream started");
    let state = State {
        hub,
        rx,
        device,
        pending: VecDeque::new(),
        catch_up_after: from,
        last_sent: from.unwrap_or(0),
        heartbeat,
    };
    let body = futures_util::stream::unfold(state, |mut s| async move {
        let chunk = s.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), s))
    });
    let mut resp = Response::new(Body::from_stream(body));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(resp)
}

impl State {
    /// The next line to send, or `None` when the hub is gone.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if let Some(m) = self.pending.pop_front() {
                if m.sequence_number <= self.last_sent {
                    continue;
                }
                self.last_sent = m.sequence_number;
                self.heartbeat.reset();
                let mut line = to_ascii_json(&m.to_monitor_event());
                line.push(b'\n');
                return Some(Bytes::from(line));
            }
            if let Some(after) = self.catch_up_after {
                let page = self
                    .hub
                    .recent_events(self.device.as_deref(), Some(after), CATCH_UP_PAGE)
                    .await;
                self.catch_up_after = match page.last() {
                    Some(last) if page.len() == CATCH_UP_PAGE => Some(last.sequence_number),
                    _ => None,
                };
                self.pending.extend(page);
                continue;
            }
            tokio::select! {
                r = self.rx.recv() => match r {
                    Ok(m) => {
                        if self.device.as_deref().is_none_or(|d| m.device_id.eq_ignore_ascii_case(d)) {
                            self.pending.push_back(m);
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        tracing::debug!(skipped = n, "monitor-events consumer fell behind; catching up from retained events");
                        if self.last_sent > 0 {
                            self.catch_up_after = Some(self.last_sent);
                        }
                    }
                    Err(RecvError::Closed) => return None,
                },
                _ = self.heartbeat.tick() => return Some(Bytes::from_static(b"\n")),
            }
        }
    }
}

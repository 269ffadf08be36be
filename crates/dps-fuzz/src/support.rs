//! What several targets share: an async executor, the fixed time, in-memory byte streams and a
//! provisioning engine with an embedded hub, all in memory.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use chrono::{DateTime, TimeZone, Utc};
use dps_core::store::memory::MemoryStore;
use dps_core::{Engine, EngineConfig, FakeClock};
use dps_hub::{Hub, HubConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The ID scope of the fuzzing engine.
pub(crate) const ID_SCOPE: &str = "0ne00FUZZ01";
/// The embedded hub's host name.
pub(crate) const HUB_HOST: &str = "hub.fuzz.test";
/// A symmetric key (base64 of 32 bytes) for the devices and enrollments the fixtures create.
pub(crate) const KEY: &str = "ZnV6emluZy1rZXktZm9yLWRwcy0wMTIzNDU2Nzg5YWI=";
/// The device / registration id the fixtures provision.
pub(crate) const DEVICE: &str = "fuzz-device";

/// The one instant every target runs at (the engine and the hub never read the system clock).
/// Certificates in the seed corpus were issued in December 2026 and are valid then.
pub(crate) fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2027, 1, 1, 12, 0, 0)
        .single()
        .expect("a valid date")
}

/// Seconds since the epoch at [`now`].
pub(crate) fn now_unix() -> u64 {
    now().timestamp().unsigned_abs()
}

thread_local! {
    /// One current-thread runtime per thread (the replay test runs targets on several threads).
    static RUNTIME: RefCell<Option<tokio::runtime::Runtime>> = const { RefCell::new(None) };
}

/// Runs a future to completion on this thread's runtime. It has timers (a scheduled job waits
/// for its start) but no I/O driver: no target does I/O.
pub(crate) fn block_on<F: Future>(f: F) -> F::Output {
    RUNTIME.with(|rt| {
        let mut rt = rt.borrow_mut();
        let rt = rt.get_or_insert_with(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("a current-thread runtime")
        });
        rt.block_on(f)
    })
}

/// Runs a future on a fresh current-thread runtime whose time is paused, so every deadline
/// fires as soon as the work idles; dropping the runtime drops whatever tasks the input left.
pub(crate) fn block_on_paused<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime")
        .block_on(f)
}

/// A byte stream that reads `data` in chunks of at most `chunk` bytes (so parsers see packets
/// split at arbitrary points, as TCP delivers them) and discards what is written to it.
pub(crate) struct ReplayStream<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl<'a> ReplayStream<'a> {
    /// A stream over `data`; `chunk` is clamped to at least 1.
    pub(crate) fn new(data: &'a [u8], chunk: usize) -> Self {
        Self {
            data,
            chunk: chunk.max(1),
        }
    }
}

impl AsyncRead for ReplayStream<'_> {
    fn poll_read(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let n = this.data.len().min(this.chunk).min(buf.remaining());
        let (head, rest) = this.data.split_at(n);
        buf.put_slice(head);
        this.data = rest;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ReplayStream<'_> {
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

/// A fresh in-memory hub at the fixed time.
pub(crate) fn hub() -> Hub {
    Hub::open_with_clock(HubConfig::in_memory(HUB_HOST), Arc::new(FakeClock::at(now()))).expect("an in-memory hub")
}

/// A fresh engine over an in-memory store, linked to `hub`, configured as `dps serve` configures
/// its own.
pub(crate) fn engine(hub: &Hub) -> Engine {
    Engine::new(
        EngineConfig {
            // Every input runs at the same fixed instant: quotas would refuse all but the first.
            quotas: dps_core::QuotaConfig::UNLIMITED,
            ..EngineConfig::single_hub(ID_SCOPE, HUB_HOST)
        },
        Arc::new(MemoryStore::new()),
        Arc::new(hub.clone()),
    )
}

/// How a read hands the parser its bytes, from the first input byte: its low six bits give the
/// chunk size (so the fuzzer explores packets split at every point), its top bit a flag for the
/// target (the MQTT targets: whether the stream is read as a connection's start).
pub(crate) fn chunk_of(data: &[u8]) -> (usize, bool, &[u8]) {
    match data.split_first() {
        Some((c, rest)) => (usize::from(*c) % 64 + 1, c & 0x80 != 0, rest),
        None => (1, false, data),
    }
}

//! The HTTP request deadline: from the first byte of a request, a client has
//! `limits.request_timeout` to send all of it (headers and body); and a client that stops reading
//! its responses is dropped after the same time.
//!
//! Why: hyper bounds only the wait for a request's *headers*, and that bound
//! ([`super::HEADER_READ_TIMEOUT`]) is also how long an idle keep-alive connection may wait for its
//! next request, so it must be generous. Without more, a client that trickles its headers, or
//! declares `Content-Length: 100` and sends 10 bytes, or never reads what it asked for, holds a
//! connection (a file descriptor, buffers, a task) for minutes or forever. A few hundred such
//! clients cost nothing to run and would starve every device.
//!
//! How, per connection and without a lock:
//! - [`Timed`] wraps the connection's stream. The first bytes read while no request is under way
//!   start the clock ([`RequestClock`]); a write that cannot proceed (the client is not reading)
//!   starts the write clock, cleared by the next write that does.
//! - When hyper has parsed a request's headers it calls the service, which takes the start
//!   instant ([`RequestClock::begin`]) for the body deadline: [`super::Ctx::body`] answers
//!   `408` with a DPS error body when the body is not in by then, and closes the connection.
//! - [`RequestClock::expired`] resolves when headers or a blocked write outlive the deadline; the
//!   connection is then dropped (closed): there is no request to answer yet, or no reader.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// No request under way (between requests, or hyper is answering one).
const IDLE: u64 = 0;
/// hyper has the request's headers; the body deadline is [`super::Ctx::body`]'s.
const IN_SERVICE: u64 = u64::MAX;

/// Which deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expired {
    /// A request began but its headers did not all arrive in time.
    Headers,
    /// A response could not be written for that long: the client is not reading.
    Write,
}

/// One connection's request clock. Shared by the stream wrapper, the service and the watchdog.
#[derive(Debug)]
pub(crate) struct RequestClock {
    /// Origin of the millisecond stamps below.
    base: Instant,
    timeout: Duration,
    /// [`IDLE`], [`IN_SERVICE`], or 1 + milliseconds since `base` at a request's first byte.
    request: AtomicU64,
    /// 0, or 1 + milliseconds since `base` when a write first could not proceed.
    write_blocked: AtomicU64,
    /// Wakes the watchdog when a clock starts.
    started: Notify,
}

impl RequestClock {
    /// A clock for a connection whose requests get `timeout` each.
    pub(super) fn new(timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            timeout,
            request: AtomicU64::new(IDLE),
            write_blocked: AtomicU64::new(0),
            started: Notify::new(),
        })
    }

    fn stamp(&self) -> u64 {
        1 + u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX - 2)
    }

    fn instant(&self, stamp: u64) -> Instant {
        self.base + Duration::from_millis(stamp - 1)
    }

    /// Bytes arrived: if no request was under way, one starts now.
    fn on_read(&self) {
        if self.request.load(Ordering::Relaxed) == IDLE
            && self
                .request
                .compare_exchange(IDLE, self.stamp(), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.started.notify_one();
        }
    }

    fn on_write(&self, blocked: bool) {
        let was = self.write_blocked.load(Ordering::Relaxed);
        if blocked && was == 0 {
            self.write_blocked.store(self.stamp(), Ordering::Relaxed);
            self.started.notify_one();
        } else if !blocked && was != 0 {
            self.write_blocked.store(0, Ordering::Relaxed);
        }
    }

    /// hyper parsed a request's headers: returns when its first byte arrived (now, when its bytes
    /// came in with the previous request's), for the body deadline. The returned guard marks the
    /// connection idle again when the service is done with the request (or dropped).
    pub(super) fn begin(self: &Arc<Self>) -> (Instant, InService) {
        let was = self.request.swap(IN_SERVICE, Ordering::Relaxed);
        let started = if was == IDLE || was == IN_SERVICE {
            Instant::now()
        } else {
            self.instant(was)
        };
        (started, InService(self.clone()))
    }

    /// Resolves when a request's headers, or a blocked write, outlive the timeout.
    pub(super) async fn expired(&self) -> Expired {
        loop {
            let notified = self.started.notified();
            let request = self.request.load(Ordering::Relaxed);
            let write = self.write_blocked.load(Ordering::Relaxed);
            let head_deadline =
                (request != IDLE && request != IN_SERVICE).then(|| self.instant(request) + self.timeout);
            let write_deadline = (write != 0).then(|| self.instant(write) + self.timeout);
            let deadline = match (head_deadline, write_deadline) {
                (Some(h), Some(w)) => h.min(w),
                (Some(d), None) | (None, Some(d)) => d,
                (None, None) => {
                    notified.await;
                    continue;
                }
            };
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                // A clock that starts later cannot pass sooner, but a write clock may start while
                // only the headers clock runs, or the other way round.
                _ = notified => continue,
            }
            // Still the same request, or the same blocked write?
            if head_deadline.is_some() && self.request.load(Ordering::Relaxed) == request {
                return Expired::Headers;
            }
            if write_deadline.is_some() && self.write_blocked.load(Ordering::Relaxed) == write {
                return Expired::Write;
            }
        }
    }
}

/// Held while the service handles a request; dropping it marks the connection idle, so the next
/// bytes start the next request's clock.
#[derive(Debug)]
pub(crate) struct InService(Arc<RequestClock>);

impl Drop for InService {
    fn drop(&mut self) {
        let _ = self
            .0
            .request
            .compare_exchange(IN_SERVICE, IDLE, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// The connection's stream, reporting reads and blocked writes to its [`RequestClock`].
pub(crate) struct Timed<S> {
    inner: S,
    clock: Arc<RequestClock>,
}

impl<S> Timed<S> {
    /// Wraps `inner`.
    pub(super) fn new(inner: S, clock: Arc<RequestClock>) -> Self {
        Self { inner, clock }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Timed<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.clock.on_read();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Timed<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.clock.on_write(r.is_pending());
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.clock.on_write(r.is_pending());
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.clock.on_write(r.is_pending());
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.clock.on_write(r.is_pending());
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Short enough for a quick test, long enough for a loaded machine to keep up.
    const T: Duration = Duration::from_millis(600);

    fn watchdog(clock: &Arc<RequestClock>) -> tokio::task::JoinHandle<Expired> {
        let clock = clock.clone();
        tokio::spawn(async move { clock.expired().await })
    }

    #[tokio::test]
    async fn headers_that_trickle_expire_a_request_in_service_does_not() {
        let clock = RequestClock::new(T);
        let (mut client, server) = tokio::io::duplex(1024);
        let mut server = Timed::new(server, clock.clone());
        let watchdog = watchdog(&clock);
        let mut buf = [0u8; 64];
        // Idle: nothing runs, however long.
        tokio::time::sleep(T * 2).await;
        assert!(!watchdog.is_finished());
        // A request starts and is in service; its first byte's instant is the body's start.
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert!(server.read(&mut buf).await.unwrap() > 0);
        let first_byte = Instant::now();
        tokio::time::sleep(T / 3).await;
        let (started, guard) = clock.begin();
        assert!(started <= first_byte && first_byte - started < T / 3);
        // The service owns the body deadline: body bytes and time in service do not expire.
        client.write_all(b"body").await.unwrap();
        assert!(server.read(&mut buf).await.unwrap() > 0);
        tokio::time::sleep(T * 2).await;
        assert!(!watchdog.is_finished());
        drop(guard);
        tokio::time::sleep(T * 2).await;
        assert!(!watchdog.is_finished(), "idle again");
        // The next request's headers trickle: expired a timeout after its first byte.
        let first_byte = Instant::now();
        client.write_all(b"G").await.unwrap();
        assert!(server.read(&mut buf).await.unwrap() > 0);
        for _ in 0..3 {
            tokio::time::sleep(T / 6).await;
            client.write_all(b"E").await.unwrap();
            assert!(server.read(&mut buf).await.unwrap() > 0);
        }
        assert_eq!(watchdog.await.unwrap(), Expired::Headers);
        assert!(first_byte.elapsed() >= T);
    }

    #[tokio::test]
    async fn a_request_whose_bytes_came_early_starts_when_served() {
        let clock = RequestClock::new(T);
        let before = Instant::now();
        let (started, _guard) = clock.begin();
        assert!(started >= before);
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_expires() {
        let clock = RequestClock::new(T);
        let (_client, server) = tokio::io::duplex(16);
        let mut server = Timed::new(server, clock.clone());
        let watchdog = watchdog(&clock);
        let blocked = Instant::now();
        let writer = tokio::spawn(async move { server.write_all(&[0u8; 64]).await });
        assert_eq!(watchdog.await.unwrap(), Expired::Write);
        assert!(blocked.elapsed() >= T);
        writer.abort();
    }
}

//! A log line that is written at most once per period, counting the events in between.
//!
//! Why: the events worth telling an operator about under attack or overload — a connection cap
//! biting, `accept` failing for want of file descriptors — come thousands of times a second
//! exactly when they matter. One line per event would flood the log (and the disk, and the CPU)
//! and bury everything else; one line per period with the count says the same.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often each rate-limited line may be written.
pub(crate) const LOG_PERIOD: Duration = Duration::from_secs(10);

/// Counts events and says when a line is due. Lock-free: one atomic add per event, and a
/// compare-and-swap only when the period has passed.
#[derive(Debug)]
pub(crate) struct LogLimiter {
    /// Origin of the millisecond clock below.
    start: Instant,
    /// The period, in milliseconds.
    period_ms: u64,
    /// Milliseconds since `start` before which no line is due.
    next_ms: AtomicU64,
    /// Events since the last line.
    pending: AtomicU64,
}

impl LogLimiter {
    /// A limiter whose first event is reported at once, then at most one line per `period`.
    pub(crate) fn new(period: Duration) -> Self {
        Self {
            start: Instant::now(),
            period_ms: u64::try_from(period.as_millis()).unwrap_or(u64::MAX),
            next_ms: AtomicU64::new(0),
            pending: AtomicU64::new(0),
        }
    }

    /// Records one event. Returns `Some(n)` when a line is due now, `n` being the events since
    /// the last line (this one included); exactly one caller per period gets it.
    pub(crate) fn record(&self) -> Option<u64> {
        self.pending.fetch_add(1, Ordering::Relaxed);
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let due = self.next_ms.load(Ordering::Relaxed);
        if now < due {
            return None;
        }
        self.next_ms
            .compare_exchange(
                due,
                now.saturating_add(self.period_ms),
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .ok()?;
        Some(self.pending.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_event_is_reported_then_one_line_per_period_with_the_count() {
        let l = LogLimiter::new(Duration::from_millis(200));
        assert_eq!(l.record(), Some(1));
        for _ in 0..99 {
            assert_eq!(l.record(), None);
        }
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(l.record(), Some(100), "the 99 held back and this one");
        assert_eq!(l.record(), None);
    }

    #[test]
    fn concurrent_events_give_one_line_and_lose_no_count() {
        let l = std::sync::Arc::new(LogLimiter::new(Duration::from_secs(3600)));
        let lines: u64 = (0..4)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || (0..1000).filter_map(|_| l.record()).count() as u64)
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .sum();
        assert_eq!(lines, 1);
        assert!(
            l.pending.load(Ordering::Relaxed) < 4000,
            "one line took the count so far"
        );
    }
}

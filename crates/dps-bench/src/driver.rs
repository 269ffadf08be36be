//! Runs one phase: starts device flows under the controls (how many, how many in flight, how
//! fast, for how long), times each one, and shows a progress line while it runs.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::report::{Outcome, Tally};

/// A device that has not finished after this long counts as failed (`timeout`), so one stuck
/// connection cannot stall a run.
const DEVICE_TIMEOUT: Duration = Duration::from_secs(60);
/// With `--rate`, starts that fell behind (all slots busy) are caught up by at most this much
/// time's worth, so a stall is not followed by a burst that would distort latencies.
const MAX_CATCH_UP: Duration = Duration::from_millis(50);

/// The controls of one phase.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Devices to start; `None` = until `duration` ends.
    pub devices: Option<usize>,
    /// Devices in flight at most.
    pub concurrency: usize,
    /// Target starts per second; `None` = as fast as the slots free up.
    pub rate: Option<f64>,
    /// No device starts after this long.
    pub duration: Option<Duration>,
}

/// Starts `flow(0)`, `flow(1)`, ... under `plan` and waits for all of them. A flow returns
/// `Err(kind)` on failure; kinds are counted, latencies of successes kept.
pub async fn run<F, Fut>(label: &str, plan: Plan, flow: F) -> Outcome
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let tally = Arc::new(Tally::default());
    let done = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(plan.concurrency.max(1)));
    let started_at = Instant::now();
    let deadline = plan.duration.map(|d| started_at + d);
    let period = plan.rate.filter(|r| *r > 0.0).map(|r| Duration::from_secs_f64(1.0 / r));
    let progress = progress(label.to_string(), plan.devices, done.clone());
    let mut tasks = JoinSet::new();
    let mut next_start = started_at;
    let mut started = 0;
    while plan.devices.is_none_or(|n| started < n) {
        let acquire = gate.clone().acquire_owned();
        let permit = match deadline {
            Some(d) => match tokio::time::timeout_at(d, acquire).await {
                Ok(p) => p,
                Err(_) => break,
            },
            None => acquire.await,
        }
        .expect("the semaphore is never closed");
        if let Some(p) = period {
            let now = Instant::now();
            next_start = next_start.max(now - MAX_CATCH_UP.min(now - started_at));
            if next_start > now {
                tokio::time::sleep_until(next_start).await;
            }
            next_start += p;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let fut = flow(started);
        let (tally, done) = (tally.clone(), done.clone());
        tasks.spawn(async move {
            let t0 = Instant::now();
            match tokio::time::timeout(DEVICE_TIMEOUT, fut).await {
                Ok(Ok(())) => tally.ok(t0.elapsed()),
                Ok(Err(kind)) => tally.fail(kind),
                Err(_) => tally.fail("timeout".into()),
            }
            done.fetch_add(1, Ordering::Relaxed);
            drop(permit);
        });
        started += 1;
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started_at.elapsed();
    progress.abort();
    eprintln!();
    tally.finish(started, elapsed)
}

/// Prints `label: done/total, rate/s` on stderr once a second until aborted.
fn progress(label: String, total: Option<usize>, done: Arc<AtomicUsize>) -> tokio::task::JoinHandle<()> {
    let started = Instant::now();
    let total = total.map(|t| format!("/{t}")).unwrap_or_default();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let n = done.load(Ordering::Relaxed);
            let secs = started.elapsed().as_secs_f64();
            eprint!("\r{label}: {n}{total}, {:.0}/s   ", n as f64 / secs.max(1e-9));
        }
    })
}

//! The answer of `GET /readyz`, kept for a second.
//!
//! Why: the endpoint takes no credentials (load balancers probe it), and each answer reads the
//! DPS store and every hub's. Uncached, anyone could make a node read its stores as fast as they
//! can send requests; cached, a node probes its stores at most once a second however many
//! clients ask, and concurrent askers wait for the one probe in flight. A second is well inside
//! any load balancer's probe interval, so a failing store is still reported within it.

use std::future::Future;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// How long an answer is reused.
pub const READINESS_TTL: Duration = Duration::from_secs(1);

/// The last readiness answer: `Ok`, or what failed.
#[derive(Default)]
pub struct Readiness {
    last: Mutex<Option<(Instant, Result<(), String>)>>,
}

impl Readiness {
    /// The answer of the last [`READINESS_TTL`], or `probe`'s now (one probe at a time).
    pub async fn get<F, Fut>(&self, probe: F) -> Result<(), String>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let mut last = self.last.lock().await;
        if let Some((at, answer)) = last.as_ref() {
            if at.elapsed() < READINESS_TTL {
                return answer.clone();
            }
        }
        let answer = probe().await;
        *last = Some((Instant::now(), answer.clone()));
        answer
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_probe_a_second_whoever_asks() {
        let readiness = Readiness::default();
        let probes = AtomicUsize::new(0);
        let probe = || async {
            probes.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>("DPS store: away".to_string())
        };
        for _ in 0..5 {
            assert_eq!(readiness.get(probe).await, Err("DPS store: away".into()));
        }
        assert_eq!(probes.load(Ordering::SeqCst), 1, "answers within the second are reused");
        tokio::time::advance(READINESS_TTL).await;
        let _ = readiness.get(probe).await;
        assert_eq!(probes.load(Ordering::SeqCst), 2, "an older answer is probed again");
    }
}

//! Azure's DPS quotas as token buckets: registrations and device-API operations per second for
//! the whole service, and operation-status polls per device per 10 seconds.
//!
//! The policy is pure and deterministic: every call takes `now`, so tests drive it with a fake
//! clock, and every transport gets the same answer because the engine's device entry points are
//! the only callers. A refusal says how long to wait, which the transports send as
//! `Retry-After` (HTTPS) or `&retry-after=` (MQTT response topic).
//!
//! Each bucket is stored as one number, GCRA's "theoretical arrival time": the instant at which
//! the bucket would be full again. Taking a token moves it one refill interval later; a request
//! is refused when that would put it more than a full bucket ahead of now. So:
//! - the service-wide buckets are a single `AtomicI64` updated by compare-and-swap: no lock on
//!   the register path;
//! - a device's poll bucket whose instant has passed is exactly a full bucket, so its entry can
//!   be dropped without changing any answer. That is what keeps the per-device map bounded: an
//!   entry outlives its device's last poll by at most one period (10 s), expired entries are
//!   swept, and a hard cap ([`QuotaConfig::max_tracked_devices`]) bounds the rest.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use dashmap::DashMap;

/// Quotas the engine enforces on the device API. A rate of 0 turns that limit off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaConfig {
    /// Register requests per second from all devices together, with a burst of one second's
    /// worth. Azure: 1,000 per minute per unit (adjustable).
    pub registrations_per_second: u32,
    /// Device-API requests (register, TPM challenge, operation-status polls, registration
    /// status lookups) per second from all devices together, with a burst of one second's
    /// worth. Azure counts 1,000 operations per minute per unit.
    pub operations_per_second: u32,
    /// Operation-status polls one registration id may make per 10 seconds: a burst of this many,
    /// then one every `10 s / n`. Azure: 5 (not adjustable).
    pub polls_per_device_per_10s: u32,
    /// Devices whose poll buckets are tracked at once. When the map is full even after expired
    /// entries are swept, a device not yet tracked is not limited per device (its polls still
    /// count against `operations_per_second`) and a warning is logged: failing open keeps
    /// well-behaved devices served, and the map's memory stays bounded.
    pub max_tracked_devices: usize,
}

impl QuotaConfig {
    /// The defaults: service-wide rates generous enough for a load test on one machine (600
    /// times Azure's default of 1,000 registrations per minute), and Azure's own per-device
    /// poll limit, which every official SDK stays within.
    pub const DEFAULT: QuotaConfig = QuotaConfig {
        registrations_per_second: 10_000,
        operations_per_second: 50_000,
        polls_per_device_per_10s: 5,
        max_tracked_devices: 1_000_000,
    };

    /// Every quota turned off (a starting point for configurations that set only some).
    pub const UNLIMITED: QuotaConfig = QuotaConfig {
        registrations_per_second: 0,
        operations_per_second: 0,
        polls_per_device_per_10s: 0,
        max_tracked_devices: 0,
    };
}

impl Default for QuotaConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Which quota refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    /// [`QuotaConfig::registrations_per_second`].
    Registrations,
    /// [`QuotaConfig::operations_per_second`].
    Operations,
    /// [`QuotaConfig::polls_per_device_per_10s`].
    DevicePolls,
}

/// A refused request: which quota, its configured rate, and when to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    /// The quota that is exhausted.
    pub quota: Quota,
    /// Its configured rate (per second, or per 10 s for device polls).
    pub limit: u32,
    /// Time until the request would be accepted.
    pub wait: Duration,
}

impl Throttled {
    /// The wait in whole seconds, rounded up and at least 1: what `retry-after` carries (the C
    /// SDK reads anything below 1 s as "missing" and waits its own default).
    pub fn retry_after_secs(&self) -> u32 {
        let secs = self.wait.as_secs() + u64::from(self.wait.subsec_nanos() > 0);
        secs.clamp(1, u64::from(u32::MAX)) as u32
    }
}

/// A refill rate: one token every `interval` ns, at most `burst` tokens held (stored as
/// `burst * interval` ns, the furthest the full-again instant may run ahead of now).
#[derive(Debug, Clone, Copy)]
struct Rate {
    interval: i64,
    horizon: i64,
}

impl Rate {
    /// `count` tokens per `period`, a full bucket holding `count`; `None` when `count` is 0.
    fn per(count: u32, period: Duration) -> Option<Rate> {
        if count == 0 {
            return None;
        }
        let period = i64::try_from(period.as_nanos()).unwrap_or(i64::MAX);
        let interval = (period / i64::from(count)).max(1);
        Some(Rate {
            interval,
            horizon: interval.saturating_mul(i64::from(count)),
        })
    }

    /// Takes one token from the bucket whose full-again instant is `tat`: the new instant, or
    /// how long (ns) until a token is there.
    fn take(&self, tat: i64, now: i64) -> Result<i64, i64> {
        let next = tat.max(now).saturating_add(self.interval);
        let ahead = next.saturating_sub(now);
        if ahead > self.horizon {
            Err(ahead - self.horizon)
        } else {
            Ok(next)
        }
    }
}

/// A service-wide bucket: lock-free, one atomic for its state and two for its rate, which
/// changes when the nodes sharing the quota come and go ([`Quotas::share_among`]).
#[derive(Debug)]
struct SharedBucket {
    /// The configured count per second (0: no limit).
    per_second: u32,
    /// The rate now: [`Rate::interval`] and [`Rate::horizon`] (0: no limit). A request that
    /// reads them while they change may use one of each: one token's worth of error, once.
    interval: AtomicI64,
    horizon: AtomicI64,
    tat: AtomicI64,
}

impl SharedBucket {
    fn new(per_second: u32) -> Self {
        let bucket = Self {
            per_second,
            interval: AtomicI64::new(0),
            horizon: AtomicI64::new(0),
            tat: AtomicI64::new(i64::MIN),
        };
        bucket.share_among(1);
        bucket
    }

    /// This node's share when `nodes` count the quota between them: the configured rate
    /// divided among them (rounded up, at least one per second).
    fn share_among(&self, nodes: u32) {
        let share = self.per_second.div_ceil(nodes.max(1));
        let (interval, horizon) = Rate::per(share, Duration::from_secs(1)).map_or((0, 0), |r| (r.interval, r.horizon));
        self.interval.store(interval, Ordering::Relaxed);
        self.horizon.store(horizon, Ordering::Relaxed);
    }

    fn rate(&self) -> Option<Rate> {
        let interval = self.interval.load(Ordering::Relaxed);
        (interval > 0).then(|| Rate {
            interval,
            horizon: self.horizon.load(Ordering::Relaxed),
        })
    }

    fn take(&self, now: i64) -> Result<(), i64> {
        let Some(rate) = self.rate() else { return Ok(()) };
        let mut current = self.tat.load(Ordering::Relaxed);
        loop {
            let next = rate.take(current, now)?;
            match self
                .tat
                .compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(actual) => current = actual,
            }
        }
    }

    /// Puts back a token taken by [`SharedBucket::take`].
    fn refund(&self) {
        if let Some(rate) = self.rate() {
            let _ = self.tat.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                Some(tat.saturating_sub(rate.interval))
            });
        }
    }
}

/// New entries between two sweeps of expired poll buckets, so an idle server's map shrinks back
/// without a timer task.
const SWEEP_EVERY: u64 = 1 << 16;
/// Shortest time between two sweeps forced by a full map (a sweep walks every entry).
const FULL_SWEEP_INTERVAL_NS: i64 = 1_000_000_000;
/// Shortest time between two "map is full" warnings.
const FULL_WARN_INTERVAL_NS: i64 = 60_000_000_000;

/// The per-device poll buckets, keyed by a keyed hash of the registration key (8 bytes per key
/// whatever the id's length; the random hash key means ids cannot be chosen to collide).
struct PollBuckets {
    rate: Option<Rate>,
    cap: usize,
    hasher: std::collections::hash_map::RandomState,
    map: DashMap<u64, i64>,
    inserts: AtomicU64,
    last_full_sweep: AtomicI64,
    last_full_warn: AtomicI64,
}

impl PollBuckets {
    fn take(&self, registration_key: &str, now: i64) -> Result<(), i64> {
        let Some(rate) = self.rate else { return Ok(()) };
        let key = self.hasher.hash_one(registration_key);
        if let Some(mut tat) = self.map.get_mut(&key) {
            *tat = rate.take(*tat, now)?;
            return Ok(());
        }
        if self.map.len() >= self.cap && !self.make_room(now) {
            return Ok(());
        }
        if (self.inserts.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(SWEEP_EVERY) {
            self.sweep(now);
        }
        // Another caller may have inserted the same device meanwhile: take from its bucket.
        let mut tat = self.map.entry(key).or_insert(i64::MIN);
        *tat = rate.take(*tat, now)?;
        Ok(())
    }

    /// Sweeps expired entries when the map is full (at most once a second); whether there is
    /// room now. Without room the device goes untracked, and that is logged once a minute.
    fn make_room(&self, now: i64) -> bool {
        let last = self.last_full_sweep.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= FULL_SWEEP_INTERVAL_NS
            && self
                .last_full_sweep
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.sweep(now);
        }
        if self.map.len() < self.cap {
            return true;
        }
        let warned = self.last_full_warn.load(Ordering::Relaxed);
        if now.saturating_sub(warned) >= FULL_WARN_INTERVAL_NS
            && self
                .last_full_warn
                .compare_exchange(warned, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                tracked = self.map.len(),
                cap = self.cap,
                "per-device poll limit: more devices polled within 10 s than can be tracked; devices not yet tracked are limited only by operations per second"
            );
        }
        false
    }

    /// Drops the entries of full buckets: they answer exactly as a missing entry does.
    fn sweep(&self, now: i64) {
        self.map.retain(|_, tat| *tat > now);
    }
}

/// Shortest time between two log lines about refusals of one quota.
const REFUSAL_LOG_INTERVAL_NS: i64 = 10_000_000_000;

/// Counts the refusals of one quota and reports them in one log line at most every 10 s: a
/// throttled fleet is refused thousands of times a second, and a line for each would flood the
/// log (the transports log refusals at debug). The first refusal is reported at once.
#[derive(Default)]
struct RefusalLog {
    refused: AtomicU64,
    last_report: AtomicI64,
}

impl RefusalLog {
    fn record(&self, now: i64, quota: Quota, limit: u32) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        let last = self.last_report.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= REFUSAL_LOG_INTERVAL_NS;
        if due
            && self
                .last_report
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let refused = self.refused.swap(0, Ordering::Relaxed);
            let since = if last == 0 {
                "first refusal".to_string()
            } else {
                format!("{} s", now.saturating_sub(last) / 1_000_000_000)
            };
            tracing::info!(?quota, limit, refused, %since, "device requests throttled (429) by a quota since the last report");
        }
    }
}

/// The quota state of one service.
pub struct Quotas {
    config: QuotaConfig,
    registrations: SharedBucket,
    operations: SharedBucket,
    polls: PollBuckets,
    /// Refusals per quota, in [`Quota`] order.
    refusals: [RefusalLog; 3],
}

impl Quotas {
    /// Empty (full) buckets for `config`.
    pub fn new(config: QuotaConfig) -> Self {
        Self {
            registrations: SharedBucket::new(config.registrations_per_second),
            operations: SharedBucket::new(config.operations_per_second),
            polls: PollBuckets {
                rate: Rate::per(config.polls_per_device_per_10s, Duration::from_secs(10)),
                cap: config.max_tracked_devices,
                hasher: Default::default(),
                map: DashMap::new(),
                inserts: AtomicU64::new(0),
                last_full_sweep: AtomicI64::new(i64::MIN),
                last_full_warn: AtomicI64::new(i64::MIN),
            },
            refusals: Default::default(),
            config,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &QuotaConfig {
        &self.config
    }

    /// Counts the service-wide quotas (registrations and operations per second) as one of
    /// `nodes` serving the service together (decision 0031): each takes an equal share, so the
    /// cluster accepts about the configured rate when its load balancer spreads devices evenly.
    /// The per-device poll limit stays whole on every node: a device polls on its one
    /// connection, or a few nodes at most, and halving it would refuse the official SDKs.
    pub fn share_among(&self, nodes: u32) {
        self.registrations.share_among(nodes);
        self.operations.share_among(nodes);
    }

    /// Counts one device-API request against `operations_per_second`.
    pub fn operation(&self, now: DateTime<Utc>) -> Result<(), Throttled> {
        let now = nanos(now);
        self.operations
            .take(now)
            .map_err(|wait| self.refuse(Quota::Operations, now, wait))
    }

    /// Counts one register request against `registrations_per_second`. Call it before the
    /// device is authenticated (a TPM device's challenge key is spent by authentication, so a
    /// request refused after it could not be retried), and [`Quotas::refund_registration`] when
    /// authentication fails, so requests with bad credentials do not use up the registrations
    /// of genuine devices.
    pub fn registration(&self, now: DateTime<Utc>) -> Result<(), Throttled> {
        let now = nanos(now);
        self.registrations
            .take(now)
            .map_err(|wait| self.refuse(Quota::Registrations, now, wait))
    }

    /// Gives back the token of a register request that was not a registration after all (its
    /// device failed authentication).
    pub fn refund_registration(&self) {
        self.registrations.refund();
    }

    /// Counts one operation-status poll of the device whose registration key (lower-cased id)
    /// is `registration_key` against `polls_per_device_per_10s`.
    pub fn device_poll(&self, now: DateTime<Utc>, registration_key: &str) -> Result<(), Throttled> {
        let now = nanos(now);
        self.polls
            .take(registration_key, now)
            .map_err(|wait| self.refuse(Quota::DevicePolls, now, wait))
    }

    /// Devices whose poll buckets are currently held (for tests and diagnostics).
    pub fn tracked_devices(&self) -> usize {
        self.polls.map.len()
    }

    fn refuse(&self, quota: Quota, now: i64, wait_ns: i64) -> Throttled {
        let (limit, log) = match quota {
            Quota::Registrations => (self.config.registrations_per_second, &self.refusals[0]),
            Quota::Operations => (self.config.operations_per_second, &self.refusals[1]),
            Quota::DevicePolls => (self.config.polls_per_device_per_10s, &self.refusals[2]),
        };
        log.record(now, quota, limit);
        Throttled {
            quota,
            limit,
            wait: Duration::from_nanos(wait_ns.max(0) as u64),
        }
    }
}

/// `now` as nanoseconds since the Unix epoch (saturating outside 1677..2262).
fn nanos(now: DateTime<Utc>) -> i64 {
    now.timestamp_nanos_opt()
        .unwrap_or(if now.timestamp() < 0 { i64::MIN } else { i64::MAX })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_is_a_token_bucket() {
        let r = Rate::per(5, Duration::from_secs(10)).unwrap();
        let mut tat = i64::MIN;
        for _ in 0..5 {
            tat = r.take(tat, 0).unwrap();
        }
        assert_eq!(r.take(tat, 0), Err(2_000_000_000));
        assert_eq!(r.take(tat, 1_500_000_000), Err(500_000_000));
        assert!(r.take(tat, 2_000_000_000).is_ok());
        assert!(Rate::per(0, Duration::from_secs(1)).is_none());

        let b = SharedBucket::new(1);
        assert!(b.take(0).is_ok());
        assert_eq!(b.take(0), Err(1_000_000_000));
        b.refund();
        assert!(b.take(0).is_ok());
        assert!(b.take(0).is_err());
        assert!(SharedBucket::new(0).take(0).is_ok());
    }

    #[test]
    fn nodes_share_the_service_wide_rates() {
        let q = Quotas::new(QuotaConfig {
            registrations_per_second: 10,
            operations_per_second: 3,
            ..QuotaConfig::UNLIMITED
        });
        let at = |ns: i64| DateTime::from_timestamp_nanos(ns);
        let taken = |f: &dyn Fn() -> Result<(), Throttled>| (0..100).take_while(|_| f().is_ok()).count();
        assert_eq!(taken(&|| q.registration(at(0))), 10);
        // Four nodes: a quarter each (3 of 10 a second, rounded up; 1 of 3, at least one).
        q.share_among(4);
        let later = 10_000_000_000;
        assert_eq!(taken(&|| q.registration(at(later))), 3);
        assert_eq!(taken(&|| q.operation(at(later))), 1);
        // Back to one node.
        q.share_among(1);
        assert_eq!(taken(&|| q.registration(at(2 * later))), 10);
        assert_eq!(taken(&|| q.operation(at(2 * later))), 3);
        // Per-device polls are not shared.
        let polls = Quotas::new(QuotaConfig {
            polls_per_device_per_10s: 5,
            max_tracked_devices: 10,
            ..QuotaConfig::UNLIMITED
        });
        polls.share_among(3);
        assert_eq!(taken(&|| polls.device_poll(at(0), "dev")), 5);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let t = |ms| Throttled {
            quota: Quota::Operations,
            limit: 1,
            wait: Duration::from_millis(ms),
        };
        assert_eq!(t(1).retry_after_secs(), 1);
        assert_eq!(t(0).retry_after_secs(), 1);
        assert_eq!(t(1000).retry_after_secs(), 1);
        assert_eq!(t(1001).retry_after_secs(), 2);
    }
}

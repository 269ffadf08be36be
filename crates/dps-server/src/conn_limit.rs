//! Caps on the connections held at once, in total and per source address, over every listener
//! (MQTT 8883 and HTTPS 443 share them).
//!
//! Why: every connection costs a file descriptor and some memory before its client has proved
//! anything. Without a cap, one host opening connections and sending nothing (or a botnet doing
//! it) uses up the process's file descriptors, after which `accept` fails for everyone — and so
//! do the databases, which need descriptors too. The per-address cap keeps one host from taking
//! the whole budget; the total cap keeps many hosts from taking more than the process can hold.
//!
//! A refused connection is closed at once, before its TLS handshake: it costs one `accept` and
//! one `close`, and the client sees the connection end instead of hanging in the backlog.
//!
//! Admission is on the accept path of every connection, so it takes no global lock: the total
//! is one atomic counter, the per-address counts a sharded concurrent map whose entries are
//! removed when they drop to zero (the map holds only addresses with open connections). The
//! [`ConnectionPermit`] releases both counts when dropped — when its connection task ends,
//! panics or is cancelled.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use crate::log_limit::{LogLimiter, LOG_PERIOD};

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The server holds `max-connections` connections already.
    #[error("the server holds its maximum of {limit} connections (--max-connections)")]
    Total {
        /// The cap.
        limit: usize,
    },
    /// The source address holds `max-connections-per-ip` connections already.
    #[error("{ip} holds its maximum of {limit} connections (--max-connections-per-ip)")]
    PerIp {
        /// The source address.
        ip: IpAddr,
        /// The cap.
        limit: usize,
    },
}

/// The connection caps of one server. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct ConnectionLimits {
    max_total: usize,
    max_per_ip: usize,
    total: AtomicUsize,
    per_ip: DashMap<IpAddr, usize>,
    total_log: LogLimiter,
    per_ip_log: LogLimiter,
}

impl ConnectionLimits {
    /// Caps of `max_total` connections in all and `max_per_ip` from one source address.
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_ip,
            total: AtomicUsize::new(0),
            per_ip: DashMap::new(),
            total_log: LogLimiter::new(LOG_PERIOD),
            per_ip_log: LogLimiter::new(LOG_PERIOD),
        })
    }

    /// Admits a connection from `ip`, or refuses it (and logs the refusal, at most once per
    /// [`LOG_PERIOD`] per cap, with the count refused since the last line).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionPermit, Refused> {
        // IPv4 clients of a dual-stack listener arrive as ::ffff:a.b.c.d; count them as a.b.c.d.
        let ip = ip.to_canonical();
        // A compare-and-swap increment, so the count never passes the cap even for an instant
        // (a plain add-then-undo would let a reader see one over).
        let max = self.max_total;
        if self
            .total
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < max).then_some(n + 1))
            .is_err()
        {
            let refused = Refused::Total { limit: self.max_total };
            if let Some(n) = self.total_log.record() {
                tracing::warn!(
                    limit = self.max_total,
                    refused_since_last_report = n,
                    "connection refused: {refused}; {n} refused since the last report"
                );
            }
            return Err(refused);
        }
        let admitted = match self.per_ip.entry(ip) {
            Entry::Occupied(mut o) if *o.get() < self.max_per_ip => {
                *o.get_mut() += 1;
                true
            }
            Entry::Occupied(_) => false,
            Entry::Vacant(v) if self.max_per_ip > 0 => {
                v.insert(1);
                true
            }
            Entry::Vacant(_) => false,
        };
        if !admitted {
            self.total.fetch_sub(1, Ordering::Relaxed);
            let refused = Refused::PerIp {
                ip,
                limit: self.max_per_ip,
            };
            if let Some(n) = self.per_ip_log.record() {
                tracing::warn!(%ip, limit = self.max_per_ip, refused_since_last_report = n,
                    "connection refused: {refused}; {n} refused (from all addresses at their cap) since the last report");
            }
            return Err(refused);
        }
        Ok(ConnectionPermit {
            limits: self.clone(),
            ip,
        })
    }

    /// Connections held now.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Connections held now from `ip`.
    pub fn from_ip(&self, ip: IpAddr) -> usize {
        self.per_ip.get(&ip.to_canonical()).map_or(0, |n| *n)
    }

    /// Source addresses holding connections now.
    pub fn addresses(&self) -> usize {
        self.per_ip.len()
    }

    fn release(&self, ip: IpAddr) {
        if let Entry::Occupied(mut o) = self.per_ip.entry(ip) {
            if *o.get() <= 1 {
                o.remove();
            } else {
                *o.get_mut() -= 1;
            }
        }
        self.total.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One admitted connection's place under the caps; dropping it gives the place back.
#[derive(Debug)]
pub struct ConnectionPermit {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl ConnectionPermit {
    /// The connection's source address.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.limits.release(self.ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_ip_cap_refuses_that_address_only_and_entries_go_at_zero() {
        let l = ConnectionLimits::new(10, 2);
        let a1 = l.admit(ip("10.0.0.1")).unwrap();
        let a2 = l.admit(ip("::ffff:10.0.0.1")).unwrap();
        assert_eq!(a2.ip(), ip("10.0.0.1"), "IPv4-mapped addresses count as IPv4");
        assert_eq!(
            l.admit(ip("10.0.0.1")).unwrap_err(),
            Refused::PerIp {
                ip: ip("10.0.0.1"),
                limit: 2
            }
        );
        let b = l.admit(ip("10.0.0.2")).unwrap();
        assert_eq!((l.total(), l.from_ip(ip("10.0.0.1")), l.addresses()), (3, 2, 2));
        drop(a1);
        let a3 = l.admit(ip("10.0.0.1")).unwrap();
        drop((a2, a3, b));
        assert_eq!((l.total(), l.addresses()), (0, 0), "no entry outlives its connections");
    }

    #[test]
    fn total_cap_refuses_every_address_and_a_refusal_holds_nothing() {
        let l = ConnectionLimits::new(3, 100);
        let held: Vec<_> = (1..=3).map(|i| l.admit(ip(&format!("10.0.0.{i}"))).unwrap()).collect();
        for _ in 0..5 {
            assert_eq!(l.admit(ip("10.0.0.9")).unwrap_err(), Refused::Total { limit: 3 });
        }
        assert_eq!((l.total(), l.addresses()), (3, 3));
        drop(held);
        assert_eq!((l.total(), l.addresses()), (0, 0));
        assert!(l.admit(ip("10.0.0.9")).is_ok());
    }

    #[test]
    fn zero_per_ip_refuses_everything() {
        let l = ConnectionLimits::new(3, 0);
        assert!(matches!(l.admit(ip("10.0.0.1")), Err(Refused::PerIp { .. })));
        assert_eq!(l.total(), 0);
    }

    #[tokio::test]
    async fn a_panicking_or_cancelled_connection_task_gives_its_place_back() {
        let l = ConnectionLimits::new(10, 10);
        let p = l.admit(ip("10.0.0.1")).unwrap();
        let r = tokio::spawn(async move {
            let _p = p;
            panic!("handler bug");
        })
        .await;
        assert!(r.unwrap_err().is_panic());
        let p = l.admit(ip("10.0.0.1")).unwrap();
        let t = tokio::spawn(async move {
            let _p = p;
            std::future::pending::<()>().await;
        });
        tokio::task::yield_now().await;
        assert_eq!(l.total(), 1);
        t.abort();
        assert!(t.await.unwrap_err().is_cancelled());
        assert_eq!((l.total(), l.addresses()), (0, 0));
    }

    #[test]
    fn concurrent_admissions_never_exceed_the_caps() {
        let l = ConnectionLimits::new(1000, 50);
        // Threads 0 and 2 share addresses 10.0.0.0-3, threads 1 and 3 10.0.1.0-3: each pair
        // races for the same 4 x 50 per-address slots.
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let l = l.clone();
                std::thread::spawn(move || {
                    let (mut held, mut admitted) = (Vec::new(), 0);
                    for i in 0..500 {
                        let addr = ip(&format!("10.0.{}.{}", t % 2, i % 4));
                        if let Ok(p) = l.admit(addr) {
                            held.push(p);
                            admitted += 1;
                        }
                        assert!(l.total() <= 1000);
                        assert!(l.from_ip(addr) <= 50);
                        if i % 7 == 0 {
                            held.pop();
                        }
                    }
                    admitted
                })
            })
            .collect();
        let admitted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        // However the threads interleave, each pair fills its 200 slots: one thread may starve
        // the other, so this is the only count that holds on every schedule.
        assert!(admitted >= 400, "only {admitted} admissions");
        assert_eq!(
            (l.total(), l.addresses()),
            (0, 0),
            "permits were dropped with their threads"
        );
    }
}

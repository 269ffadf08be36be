//! The audit trail (decision 0036): every registration attempt and every change made through
//! the service and hub APIs, kept in the DPS store beside what they changed, queried through
//! `GET /audit` and `dps audit`.
//!
//! Two paths, for two speeds. A registration attempt is handed to a bounded queue and written
//! by one task in batches (whatever queued while the last batch was written goes in the next
//! commit): the register path never waits on the trail, and when the trail cannot keep up
//! (the queue is full) entries are dropped and counted rather than the devices slowed. A
//! change that succeeded is answered only after its entry is committed: changes are rare, and
//! an operator reading the trail after a change must find it. Refused changes take the queue
//! (anyone can send a refused request, as fast as they like).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use dps_core::audit::{AuditEntry, AuditKind};
use dps_core::{RegistrationAttempt, Store};
use dps_proto::rest::Route;
use tokio::sync::{mpsc, watch};

/// Entries waiting to be written before new ones are dropped.
const QUEUE: usize = 65_536;

/// Most entries one commit writes.
const BATCH: usize = 2_048;

/// How often retention runs a step.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// The trail: where entries go, and what was lost.
pub struct AuditTrail {
    shared: Arc<Shared>,
    queue: mpsc::Sender<AuditEntry>,
}

/// What the trail and its writer share (the writer does not hold the queue's sender: it stops
/// when the trail is dropped).
struct Shared {
    store: Arc<dyn Store>,
    dropped: AtomicU64,
    failures: crate::log_limit::LogLimiter,
}

impl AuditTrail {
    /// A trail over `store`, with its writer and its retention (entries older than
    /// `retention` are removed) running until `shutdown` says stop (or the trail is
    /// dropped); the writer writes what is queued before it stops.
    pub fn start(store: Arc<dyn Store>, retention: Duration, shutdown: watch::Receiver<bool>) -> Arc<Self> {
        let (queue, entries) = mpsc::channel(QUEUE);
        let shared = Arc::new(Shared {
            store,
            dropped: AtomicU64::new(0),
            failures: crate::log_limit::LogLimiter::new(Duration::from_secs(10)),
        });
        tokio::spawn(write_queued(shared.clone(), entries, shutdown.clone()));
        tokio::spawn(prune(shared.store.clone(), retention, shutdown));
        Arc::new(Self { shared, queue })
    }

    /// Entries dropped because the queue was full, or lost with a batch that failed.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Queues `entry` without waiting; dropped (and counted) when the queue is full.
    pub fn queue(&self, entry: AuditEntry) {
        if self.queue.try_send(entry).is_err() {
            self.shared.lost(
                1,
                "the audit queue is full: entries are dropped until the store catches up",
            );
        }
    }

    /// Writes `entry` and returns once it is committed; a failure is logged and counted (the
    /// change it records is made either way).
    pub async fn commit(&self, entry: AuditEntry) {
        if let Err(e) = self.shared.store.append_audit(std::slice::from_ref(&entry)).await {
            self.shared.lost(1, &format!("an audit entry was not written: {e}"));
        }
    }

    /// The entries `filter` selects, in sequence order, at most `limit`.
    pub async fn query(
        &self,
        filter: &dps_core::audit::AuditFilter,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, dps_core::StoreError> {
        self.shared.store.query_audit(filter, limit).await
    }

    /// Queues the entry of a registration attempt. Throttled attempts are counted by the
    /// metrics only: a flood must not become a flood of writes.
    pub fn registration(&self, attempt: &RegistrationAttempt<'_>) {
        if matches!(&attempt.outcome, Err(e) if e.status() == 429) {
            return;
        }
        self.queue(registration_entry(attempt));
    }
}

impl Shared {
    fn lost(&self, n: u64, why: &str) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
        if let Some(count) = self.failures.record() {
            tracing::warn!(dropped_since_last_line = count, "{why}");
        }
    }
}

/// Resolves when `shutdown` says stop; never, once its sender is gone without saying it.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The entry of a registration attempt: its outcome (as the metrics label it), the error, and
/// what the decision used, without any credential.
pub(crate) fn registration_entry(attempt: &RegistrationAttempt<'_>) -> AuditEntry {
    let request = attempt.request;
    let mut entry = AuditEntry::new(
        Utc::now(),
        AuditKind::Registration,
        crate::metrics::outcome_label(&attempt.outcome),
    );
    entry.registration_id = Some(request.registration_id.clone());
    entry.attestation = attempt
        .attestation
        .map(|a| crate::metrics::attestation_label(Some(a)).to_string());
    entry.transport =
        (request.transport != dps_core::Transport::Unknown).then(|| request.transport.as_str().to_string());
    entry.source = request.source.map(|ip| ip.to_string());
    match &attempt.outcome {
        Ok(state) => {
            entry.error_code = state.error_code;
            entry.error_message = state.error_message.clone();
            entry.assigned_hub = state.assigned_hub.clone();
            entry.device_id = state.device_id.clone();
            entry.enrollment_group_id = state
                .symmetric_key
                .as_ref()
                .and_then(|s| s.enrollment_group_id.clone())
                .or_else(|| state.x509.as_ref().and_then(|x| x.enrollment_group_id.clone()));
        }
        Err(e) => {
            entry.error_code = Some(e.code());
            entry.error_message = Some(e.to_string());
        }
    }
    entry
}

/// Whether a request on `route` changes something the trail records: enrollments, groups,
/// registration records, CA certificates, linked hubs, credential and shared access policies,
/// revocations, hub devices, twins,
/// modules, jobs, consumer groups. Reads, queries, direct methods and messages are not
/// changes.
pub(crate) fn is_change(route: &Route) -> bool {
    use Route::*;
    matches!(
        route,
        PutEnrollment(_)
            | DeleteEnrollment(_)
            | BulkEnrollments
            | PutGroup(_)
            | DeleteGroup(_)
            | BulkGroups
            | DeleteRegistration(_)
            | ReprovisionRegistration(_)
            | PutCertificate(_)
            | DeleteCertificate(_)
            | GenerateVerificationCode(_)
            | VerifyCertificate(_)
            | PutLinkedHub(_)
            | DeleteLinkedHub(_)
            | PutCredentialPolicy(_)
            | DeleteCredentialPolicy(_)
            | AddRevocation
            | DeleteRevocation(_)
            | ImportCrl
            | PutPolicy(..)
            | DeletePolicy(..)
            | RegeneratePolicyKey(..)
            | PutDevice(_)
            | DeleteDevice(_)
            | BulkDevices
            | ReplaceTwin(_)
            | UpdateTwin(_)
            | PutModule(..)
            | DeleteModule(..)
            | ReplaceModuleTwin(..)
            | UpdateModuleTwin(..)
            | PutJob(_)
            | CancelJob(_)
            | CreateImportExportJob
            | CancelImportExportJob(_)
            | PurgeC2d(_)
            | PutConsumerGroup(_)
            | DeleteConsumerGroup(_)
    )
}

/// The registration id a change is about (an enrollment's, a registration record's), if any.
pub(crate) fn registration_of(route: &Route) -> Option<&str> {
    use Route::*;
    match route {
        PutEnrollment(id) | DeleteEnrollment(id) | DeleteRegistration(id) | ReprovisionRegistration(id) => Some(id),
        _ => None,
    }
}

/// The hub device a change is about, if any.
pub(crate) fn device_of(route: &Route) -> Option<&str> {
    use Route::*;
    match route {
        PutDevice(id) | DeleteDevice(id) | ReplaceTwin(id) | UpdateTwin(id) | PurgeC2d(id) => Some(id),
        PutModule(id, _) | DeleteModule(id, _) | ReplaceModuleTwin(id, _) | UpdateModuleTwin(id, _) => Some(id),
        _ => None,
    }
}

/// Writes what is queued, a batch per commit, until `shutdown`; then what is left.
async fn write_queued(
    trail: Arc<Shared>,
    mut entries: mpsc::Receiver<AuditEntry>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            n = entries.recv_many(&mut batch, BATCH) => if n == 0 { return },
            _ = stopped(&mut shutdown) => {
                while let Ok(entry) = entries.try_recv() {
                    batch.push(entry);
                    if batch.len() == BATCH {
                        write(&trail, &mut batch).await;
                    }
                }
                write(&trail, &mut batch).await;
                return;
            }
        }
        write(&trail, &mut batch).await;
    }
}

async fn write(trail: &Shared, batch: &mut Vec<AuditEntry>) {
    if batch.is_empty() {
        return;
    }
    if let Err(e) = trail.store.append_audit(batch).await {
        trail.lost(batch.len() as u64, &format!("audit entries were not written: {e}"));
    }
    batch.clear();
}

/// Removes entries older than `retention`, a bounded step at a time.
async fn prune(store: Arc<dyn Store>, retention: Duration, mut shutdown: watch::Receiver<bool>) {
    let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    let mut every = tokio::time::interval(PRUNE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stopped(&mut shutdown) => return,
        }
        let Some(before) = Utc::now().checked_sub_signed(retention) else {
            continue;
        };
        if let Err(e) = store.prune_audit(before).await {
            tracing::debug!(error = %e, "audit retention step failed; trying again");
        }
    }
}

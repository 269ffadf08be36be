//! Finishing a registration after its intent is stored, on the hot path and at start-up.
//!
//! A registration writes to two places that share no transaction: the hub (the device identity)
//! and the store (the registration record). The engine first stores a [`RegistrationIntent`]
//! holding everything both writes need, then upserts the identity, then commits the record, which
//! removes the intent in the same transaction. Every step after the intent is idempotent, so an
//! intent found at start-up — a crash came between it and the record — is finished by running
//! the same steps again (roll forward; decision 0009 says why not roll back). Hub identities that
//! provisioning did not write (an operator's, or those whose record an operator deleted) have no
//! intent and are never touched.

use dps_proto::model::service::Substatus;

use super::Engine;
use crate::hub::{HubError, TwinPolicy};
use crate::store::{RegistrationIntent, RegistrationRecord, StoreError};
use crate::Error;

/// Intents read per store round trip at start-up.
const RECOVERY_PAGE: usize = 500;

/// Why a registration could not be finished.
#[derive(Debug)]
pub(super) enum Incomplete {
    /// The hub refused (it changed nothing: the intent can be dropped) or failed (it may have
    /// written the identity, now or on an earlier attempt: the intent stays).
    Hub(HubError),
    /// The record could not be committed; the intent stays for the next start-up.
    Store(StoreError),
}

/// What start-up recovery did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Interrupted registrations finished: identity and record both written.
    pub completed: usize,
    /// Interrupted registrations given up because the hub refused them (a rule of its, or a
    /// disabled device); nothing of theirs stays.
    pub abandoned: usize,
    /// Interrupted registrations dropped because the device's record is newer (it registered
    /// again since, on a store several nodes share).
    pub superseded: usize,
    /// Interrupted registrations left for next time because the hub failed (it may have
    /// written the identity): their intents stay.
    pub postponed: usize,
}

/// The substatus of a finished registration: what the previous record said and whether the hub
/// created the device decide it (service-api.md, reprovisioning).
fn substatus(intent: &RegistrationIntent, created: bool) -> Substatus {
    let Some(previous) = &intent.previous else {
        return if created {
            Substatus::InitialAssignment
        } else {
            Substatus::ReprovisionedToInitialAssignment
        };
    };
    let same_hub = previous
        .hub
        .as_deref()
        .is_some_and(|h| h.eq_ignore_ascii_case(&intent.hub));
    if intent.device.twin_policy == TwinPolicy::Reset {
        Substatus::DeviceDataReset
    } else if !same_hub {
        Substatus::DeviceDataMigrated
    } else {
        previous.substatus.unwrap_or(Substatus::InitialAssignment)
    }
}

impl Engine {
    /// The steps after the intent: the identity in the hub, the identity in the previous hub
    /// removed (when the device moved), the record committed (dropping the intent). Returns the
    /// committed record.
    pub(super) async fn complete_registration(
        &self,
        intent: &RegistrationIntent,
    ) -> Result<RegistrationRecord, Incomplete> {
        let outcome = self
            .hubs
            .upsert_device(&intent.hub, &intent.device)
            .await
            .map_err(Incomplete::Hub)?;
        let mut record = intent.record.clone();
        record.state.substatus = Some(substatus(intent, outcome.created));
        // Before the record, so that the intent still covers it: a crash in between repeats it.
        if let Some((old_hub, old_device)) = intent.previous.as_ref().and_then(|p| {
            let hub = p.hub.as_deref().filter(|h| !h.eq_ignore_ascii_case(&intent.hub))?;
            Some((hub, p.device_id.as_deref().unwrap_or(&intent.device.device_id)))
        }) {
            if let Err(e) = self.hubs.delete_device(old_hub, old_device).await {
                tracing::warn!(hub = %old_hub, device = %old_device, error = %e, "could not remove migrated device from its previous hub");
            }
        }
        self.store
            .commit_registration(&record)
            .await
            .map_err(Incomplete::Store)?;
        Ok(record)
    }

    /// Finishes the registrations a crash interrupted (their intents are still stored). Runs
    /// before the server serves anyone ([`Engine::load`]). Intents are finished oldest first, so
    /// when one device had two registrations in flight the later one ends up in its record, as it
    /// would have without the crash. A store failure stops recovery (the intents stay, and the
    /// server should not start on a store it cannot write).
    pub async fn recover_registrations(&self) -> Result<Recovery, Error> {
        self.recover_interrupted(None).await
    }

    /// On a store several nodes share (decision 0031), where a node may die in the middle of
    /// registrations and never start again: finishes the registrations whose intent was
    /// stored before `now - older_than` (longer than a registration takes on a live node, so
    /// none of them is still being finished by its own node). The node that runs the
    /// housekeeping calls it every few seconds; a node starting calls it instead of
    /// [`Engine::recover_registrations`], which would finish the other nodes' registrations in
    /// flight.
    pub async fn recover_stale_registrations(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        older_than: std::time::Duration,
    ) -> Result<Recovery, Error> {
        let cutoff = now - chrono::Duration::from_std(older_than).unwrap_or(chrono::Duration::MAX);
        self.recover_interrupted(Some(cutoff)).await
    }

    /// Finishes the stored intents (stored before `cutoff`, if given), oldest first.
    async fn recover_interrupted(&self, cutoff: Option<chrono::DateTime<chrono::Utc>>) -> Result<Recovery, Error> {
        let mut intents = Vec::new();
        loop {
            let after = intents.last().map(|i: &RegistrationIntent| i.operation_id.clone());
            let page = self
                .store
                .list_registration_intents(after.as_deref(), RECOVERY_PAGE)
                .await?;
            let done = page.len() < RECOVERY_PAGE;
            intents.extend(page);
            if done {
                break;
            }
        }
        let stored_at = |i: &RegistrationIntent| i.record.state.last_updated_date_time_utc;
        if let Some(cutoff) = cutoff {
            intents.retain(|i| stored_at(i).is_some_and(|t| t < cutoff));
        }
        intents.sort_by(|a, b| {
            a.record
                .state
                .last_updated_date_time_utc
                .cmp(&b.record.state.last_updated_date_time_utc)
                .then_with(|| a.operation_id.cmp(&b.operation_id))
        });
        let mut report = Recovery::default();
        for intent in &intents {
            let registration = &intent.record.state.registration_id;
            if self.superseded(intent).await? {
                // The device registered again since (through another node, or after this
                // one came back): its newer record stays.
                self.store.delete_registration_intent(&intent.operation_id).await?;
                report.superseded += 1;
                tracing::info!(registration = %registration, operation = %intent.operation_id, "dropped an interrupted registration: the device registered again since");
                continue;
            }
            match self.complete_registration(intent).await {
                Ok(_) => {
                    report.completed += 1;
                    tracing::info!(registration = %registration, operation = %intent.operation_id, hub = %intent.hub, device = %intent.device.device_id, "finished a registration interrupted by a crash");
                }
                Err(Incomplete::Hub(e @ HubError::Unavailable(_))) => {
                    // It may have written the identity before failing (or an earlier attempt
                    // did): the intent stays, to be finished next time.
                    report.postponed += 1;
                    tracing::warn!(registration = %registration, operation = %intent.operation_id, hub = %intent.hub, error = %e, "could not finish a registration interrupted by a crash now: the hub failed; it is tried again");
                }
                Err(Incomplete::Hub(e)) => {
                    self.store.delete_registration_intent(&intent.operation_id).await?;
                    report.abandoned += 1;
                    tracing::warn!(registration = %registration, operation = %intent.operation_id, hub = %intent.hub, error = %e, "gave up a registration interrupted by a crash: the hub refused it");
                }
                Err(Incomplete::Store(e)) => return Err(e.into()),
            }
        }
        if !intents.is_empty() {
            tracing::info!(
                completed = report.completed,
                abandoned = report.abandoned,
                superseded = report.superseded,
                postponed = report.postponed,
                "recovered registrations interrupted by a crash"
            );
        }
        Ok(report)
    }

    /// Whether the device's stored record came from a later registration than `intent`.
    async fn superseded(&self, intent: &RegistrationIntent) -> Result<bool, Error> {
        let key = dps_proto::registration_id::key(&intent.record.state.registration_id);
        let Some(record) = self.store.get_registration(&key).await? else {
            return Ok(false);
        };
        let (theirs, ours) = (
            record.state.last_updated_date_time_utc,
            intent.record.state.last_updated_date_time_utc,
        );
        Ok(record.operation_id.as_deref() != Some(intent.operation_id.as_str()) && theirs > ours)
    }
}

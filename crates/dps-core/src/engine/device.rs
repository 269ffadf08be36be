//! The device API: register, operation status, registration status lookup.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use dps_proto::keys::derive_device_key;
use dps_proto::model::device::{DeviceRegistration, RegistrationOperationStatus};
use dps_proto::model::service::{
    AllocationPolicy, AttestationType, RegistrationState, RegistrationStatus, SymmetricKeyRegistrationResult,
};
use dps_proto::registration_id;
use dps_proto::sas::{hmac_sha256, SasToken};
use sha2::{Digest, Sha256};

use super::attestation::{check_body_id, sas_refused, Attested, Credential, DeviceRequest, Matched};
use super::groups::CachedGroup;
use super::recovery::Incomplete;
use super::tpm::TpmUse;
use super::{DeviceResponse, Engine, Registered};
use crate::error::{AllocationError, Error, InvalidArgument, SasRefusal};
use crate::hub::{DeviceAuth, DeviceProvisioning, HubError, TwinPolicy};
use crate::store::{PreviousAssignment, RegistrationIntent, RegistrationRecord, StoreError};

/// The `tracing` target of the span each registration runs in (what `dps serve
/// --otlp-endpoint` exports).
pub const REGISTRATION_SPAN_TARGET: &str = "dps::registration";

/// Why [`Engine::assign`] did not assign the device.
enum NotAssigned {
    /// A completed-but-failed state (`failed`, `disabled`), reported to the device.
    Failed(Box<RegistrationState>),
    /// The store cannot be reached now: nothing was decided, the request fails and the device
    /// retries.
    Retry(Error),
}

/// How long a completed operation can be polled from memory before polls fall back to the store.
const OPERATION_TTL: Duration = Duration::from_secs(600);
/// Most completed operations kept in memory (about 1 KB each, so ~100 MB).
///
/// Why a cap as well as the TTL: at the default registration quota (10,000/s) ten minutes of
/// operations would be six million entries. Devices poll seconds after registering (the
/// retry-after is 1-3 s), so when the cap is reached the oldest entries go first: a poll of an
/// evicted operation is still answered from the registration record, only TPM devices (whose
/// challenge was spent) must ask for a new challenge, and only after the cache had turned over.
const OPERATION_CACHE_CAP: usize = 100_000;
/// Inserts between checks of the cap, so the O(n) sweep costs a few hundred nanoseconds per
/// insert; the cache can exceed the cap by at most this many entries.
const OPERATION_SWEEP_EVERY: u64 = 1024;

/// Completed operations by id. Polls are answered from here without touching the store; a poll
/// after a restart (or after eviction) falls back to the registration record, which carries its
/// operation id.
#[derive(Default)]
pub(crate) struct OperationCache {
    ops: DashMap<String, CachedOperation>,
    inserts: AtomicU64,
}

struct CachedOperation {
    registration_key: String,
    /// SHA-256 of the credential that started the operation: a poll with the same credential
    /// needs no second attestation.
    credential_digest: [u8; 32],
    /// When that credential stops being acceptable (SAS expiry plus the allowed skew).
    credential_valid_until: Option<i64>,
    body: RegistrationOperationStatus,
    expires: DateTime<Utc>,
}

impl OperationCache {
    fn insert(&self, now: DateTime<Utc>, op: CachedOperation) {
        self.insert_bounded(now, op, OPERATION_CACHE_CAP);
    }

    /// Inserts, and every [`OPERATION_SWEEP_EVERY`] inserts past `cap` drops expired entries,
    /// then (if still over) keeps only the newest: the age kept halves until the cache fits.
    /// No lock beyond DashMap's per-shard ones, so registrations never queue behind a sweep of
    /// another shard.
    fn insert_bounded(&self, now: DateTime<Utc>, op: CachedOperation, cap: usize) {
        let n = self.inserts.fetch_add(1, Ordering::Relaxed);
        if n.is_multiple_of(OPERATION_SWEEP_EVERY) && self.ops.len() > cap {
            let ttl = chrono::Duration::from_std(OPERATION_TTL).unwrap_or_default();
            let mut kept_age = ttl;
            // expires = created + TTL, so "created after now - age" is "expires after now + TTL - age".
            self.ops.retain(|_, o| o.expires > now);
            while self.ops.len() > cap && kept_age > chrono::Duration::milliseconds(1) {
                kept_age = kept_age / 2;
                let horizon = now + ttl - kept_age;
                self.ops.retain(|_, o| o.expires > horizon);
            }
            tracing::debug!(
                entries = self.ops.len(),
                kept_secs = kept_age.num_seconds(),
                "operation cache swept"
            );
        }
        self.ops.insert(op.body.operation_id.clone(), op);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.ops.len()
    }
}

/// A device credential the engine accepted ahead of any request ([`Engine::authenticate`]).
///
/// MQTT checks the credential at CONNECT, as Azure does, and registers on the same connection
/// moments later; carrying this into [`Engine::register_authenticated`] spares the register a
/// second signature check or X.509 chain walk. It is reused only while everything it was
/// judged against is unchanged: the same credential (and, for a SAS, before its expiry), the
/// same snapshot of groups and CA certificates, and the same individual enrollment (by etag, or
/// still none) — otherwise the register attests afresh, so a revoked or edited enrollment is
/// never served from a stale result.
#[derive(Clone)]
pub struct Authenticated {
    attested: Attested,
    registration_key: String,
    credential_digest: [u8; 32],
    credential_valid_until: Option<i64>,
    groups: Arc<Vec<CachedGroup>>,
    /// `None`: no individual enrollment existed; `Some(etag)`: the one that matched.
    individual_etag: Option<Option<String>>,
}

impl std::fmt::Debug for Authenticated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticated")
            .field("registration_key", &self.registration_key)
            .field("attestation", &self.attested.attestation)
            .field("enrollment_group_id", &self.attested.matched.group_id())
            .finish_non_exhaustive()
    }
}

impl Authenticated {
    /// The attestation kind the credential proved (symmetric key or X.509).
    pub fn attestation(&self) -> AttestationType {
        self.attested.attestation
    }
}

fn digest(c: &Credential) -> [u8; 32] {
    let mut h = Sha256::new();
    match c {
        Credential::None => h.update(b"none"),
        Credential::Sas(s) => {
            h.update(b"sas:");
            h.update(s.as_bytes());
        }
        Credential::X509(chain) => {
            h.update(b"x509:");
            for c in chain {
                h.update((c.len() as u64).to_be_bytes());
                h.update(c);
            }
        }
    }
    h.finalize().into()
}

/// The last second at which `c` is still acceptable, for credentials that expire.
fn valid_until(c: &Credential) -> Option<i64> {
    match c {
        Credential::Sas(t) => SasToken::parse(t)
            .ok()
            .map(|t| (t.expiry.saturating_add(dps_proto::sas::MAX_CLOCK_SKEW_SECS)).min(i64::MAX as u64) as i64),
        Credential::None | Credential::X509(_) => None,
    }
}

fn new_operation_id(random: &dyn crate::Random, registration_key: &str) -> String {
    let h = Sha256::digest(registration_key.as_bytes());
    format!(
        "4.{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}.{}",
        h[0],
        h[1],
        h[2],
        h[3],
        h[4],
        h[5],
        h[6],
        h[7],
        crate::random::uuid(random)
    )
}

impl Engine {
    pub(super) fn check_request(&self, req: &DeviceRequest) -> Result<(), Error> {
        if req.id_scope != self.config.id_scope {
            return Err(Error::UnknownIdScope {
                id_scope: req.id_scope.clone(),
            });
        }
        registration_id::validate(&req.registration_id).map_err(|e| InvalidArgument::RegistrationId(e).into())
    }

    /// What every device request goes through first: [`Engine::check_request`], then one token
    /// of the service's operations quota. Counted before authentication, so the quota bounds
    /// the attestation work bad credentials can cause, too.
    pub(super) fn admit(&self, now: DateTime<Utc>, req: &DeviceRequest) -> Result<(), Error> {
        self.check_request(req)?;
        self.quotas.operation(now).map_err(|t| self.refused(req, t))
    }

    /// Logs a throttled request at debug (the quota reports refusals in summary lines; one line
    /// per refusal would flood the log) and turns it into the `429` answer.
    pub(super) fn refused(&self, req: &DeviceRequest, t: crate::quota::Throttled) -> Error {
        tracing::debug!(registration = %req.registration_id, quota = ?t.quota, wait = ?t.wait, "device request throttled");
        if let Some(observer) = self.observer.get() {
            observer.throttled(t.quota);
        }
        t.into()
    }

    /// Tells the observer, if any, how a registration attempt ended.
    fn observe(
        &self,
        req: &DeviceRequest,
        started: std::time::Instant,
        outcome: Result<(&RegistrationState, AttestationType), &Error>,
    ) {
        if let Some(observer) = self.observer.get() {
            observer.registration(&super::RegistrationAttempt {
                request: req,
                attestation: outcome.as_ref().ok().map(|(_, a)| *a),
                outcome: outcome.map(|(state, _)| state),
                elapsed: started.elapsed(),
            });
        }
    }

    /// Handles a register request. On success the registration is committed before this returns,
    /// and the outcome is [`Registered::Assigning`] with an operation id the device polls — or,
    /// with [`EngineConfig::immediate_assignment`](super::EngineConfig::immediate_assignment),
    /// [`Registered::Done`] with the final state. A request without a credential that carries TPM
    /// keys is the first step of TPM attestation and gets [`Registered::TpmChallenge`] (see
    /// [`Engine::tpm_challenge`]).
    pub async fn register(
        &self,
        now: DateTime<Utc>,
        req: &DeviceRequest,
        body: &DeviceRegistration,
    ) -> Result<Registered, Error> {
        if req.credential == Credential::None && body.tpm.is_some() {
            return self.tpm_challenge(now, req, body).await.map(Registered::TpmChallenge);
        }
        self.register_with(now, req, None, body).await
    }

    /// [`Engine::register`] for a device whose credential [`Engine::authenticate`] already
    /// accepted (MQTT, at CONNECT): the earlier result stands in for attestation while it is
    /// still current (see [`Authenticated`]).
    pub async fn register_authenticated(
        &self,
        now: DateTime<Utc>,
        req: &DeviceRequest,
        authenticated: &Authenticated,
        body: &DeviceRegistration,
    ) -> Result<Registered, Error> {
        self.register_with(now, req, Some(authenticated), body).await
    }

    /// Checks a device's credential without registering it: the ID scope, the registration id,
    /// and proof of identity — a SAS signed with the individual enrollment's key or the group's
    /// derived key, for the audience `{scope}/registrations/{id}` and not expired, or an X.509
    /// chain that the enrollment accepts. The enrollment's provisioning status is not judged
    /// here: a disabled enrollment is a registration *result* (status `disabled`, 401003), which
    /// is how Azure reports it and what the SDKs expect. TPM cannot be authenticated ahead of a
    /// register: its proof is the one-use challenge the register request itself obtains.
    pub async fn authenticate(&self, now: DateTime<Utc>, req: &DeviceRequest) -> Result<Authenticated, Error> {
        self.authenticate_with(now, req, TpmUse::Refuse).await
    }

    /// [`Engine::authenticate`] for a TPM device at the end of a challenge exchange on its
    /// connection (AMQP's SASL `TPM` mechanism, where [`Engine::tpm_challenge`] was asked inside
    /// the exchange): the SAS signed with the challenge's key is judged and the challenge spent
    /// here, as the register request of the HTTPS flow would; the registration then proceeds on
    /// this acceptance. Any other credential is judged as by `authenticate`.
    pub async fn authenticate_challenged(
        &self,
        now: DateTime<Utc>,
        req: &DeviceRequest,
    ) -> Result<Authenticated, Error> {
        self.authenticate_with(now, req, TpmUse::Spend).await
    }

    /// `tpm`: what a SAS for a TPM enrollment may do.
    async fn authenticate_with(
        &self,
        now: DateTime<Utc>,
        req: &DeviceRequest,
        tpm: TpmUse,
    ) -> Result<Authenticated, Error> {
        let started = std::time::Instant::now();
        self.check_request(req)?;
        let groups = self.groups.snapshot();
        let attested = match self.attest(now, req, tpm).await {
            Ok(attested) => attested,
            Err(e) => {
                // A device refused as its connection opens made a registration attempt too.
                self.observe(req, started, Err(&e));
                return Err(e);
            }
        };
        let individual_etag = match &attested.matched {
            Matched::Individual(e) => Some(e.etag.clone()),
            Matched::Group(_) => None,
        };
        Ok(Authenticated {
            attested,
            registration_key: registration_id::key(&req.registration_id),
            credential_digest: digest(&req.credential),
            credential_valid_until: valid_until(&req.credential),
            groups,
            individual_etag,
        })
    }

    /// The earlier attestation if it still holds for `req` at `now`, else a fresh one.
    async fn reattest(&self, now: DateTime<Utc>, req: &DeviceRequest, auth: &Authenticated) -> Result<Attested, Error> {
        let current = auth.registration_key == registration_id::key(&req.registration_id)
            && auth.credential_digest == digest(&req.credential)
            && auth.credential_valid_until.is_none_or(|t| now.timestamp() <= t)
            && Arc::ptr_eq(&auth.groups, &self.groups.snapshot());
        if current {
            // The one store read attestation would make anyway: has the individual enrollment
            // appeared, gone or changed since?
            let individual = self.individual_enrollment(&req.registration_id).await?.map(|e| e.etag);
            if individual == auth.individual_etag {
                return Ok(auth.attested.clone());
            }
        }
        self.attest(now, req, TpmUse::Spend).await
    }

    async fn register_with(
        &self,
        now: DateTime<Utc>,
        req: &DeviceRequest,
        authenticated: Option<&Authenticated>,
        body: &DeviceRegistration,
    ) -> Result<Registered, Error> {
        let started = std::time::Instant::now();
        // One span per registration (exported as a trace by `dps serve --otlp-endpoint`), its
        // outcome recorded when it ends.
        let span = tracing::info_span!(
            target: REGISTRATION_SPAN_TARGET,
            "registration",
            registration_id = %req.registration_id,
            transport = req.transport.as_str(),
            attestation = tracing::field::Empty,
            status = tracing::field::Empty,
            error_code = tracing::field::Empty,
            assigned_hub = tracing::field::Empty,
        );
        let registering = self.register_unobserved(now, req, authenticated, body);
        let outcome = tracing::Instrument::instrument(registering, span.clone()).await;
        match outcome {
            Ok((registered, (state, attestation))) => {
                span.record("attestation", attestation.as_str());
                span.record("status", state.status.as_str());
                if let Some(code) = state.error_code {
                    span.record("error_code", code);
                }
                if let Some(hub) = &state.assigned_hub {
                    span.record("assigned_hub", hub.as_str());
                }
                self.observe(req, started, Ok((&state, attestation)));
                Ok(registered)
            }
            Err(e) => {
                span.record("status", "refused");
                span.record("error_code", e.code());
                self.observe(req, started, Err(&e));
                Err(e)
            }
        }
    }

    /// [`register_with`](Self::register_with), and the state and attestation it decided.
    async fn register_unobserved(
        &self,
        now: DateTime<Utc>,
        req: &DeviceRequest,
        authenticated: Option<&Authenticated>,
        body: &DeviceRegistration,
    ) -> Result<(Registered, (RegistrationState, AttestationType)), Error> {
        self.admit(now, req)?;
        check_body_id(req, body)?;
        // Before attestation, which spends a TPM device's challenge: a throttled device must be
        // able to send the very same request again. A request that fails attestation gives its
        // registration back (it is bounded by the operations quota instead), so bad
        // credentials cannot use up the registrations of genuine devices.
        self.quotas.registration(now).map_err(|t| self.refused(req, t))?;
        let attested = match authenticated {
            Some(auth) => self.reattest(now, req, auth).await,
            None => self.attest(now, req, TpmUse::Spend).await,
        };
        let attested = match attested {
            Ok(a) => a,
            Err(e) => {
                self.quotas.refund_registration();
                return Err(e);
            }
        };
        // Before anything is written: a request that cannot be issued for is refused whole.
        let issued = match self.issue_for_registration(now, req, body, &attested).await {
            Ok(issued) => issued,
            Err(e) => {
                self.quotas.refund_registration();
                return Err(e);
            }
        };
        let key = registration_id::key(&req.registration_id);
        let operation_id = new_operation_id(self.random.as_ref(), &key);
        let final_state = match self
            .assign(now, req, body, &attested, issued.as_ref(), &operation_id)
            .await
        {
            Ok(state) => state,
            Err(NotAssigned::Failed(failure)) => *failure,
            // Nothing was decided: the device is told to retry the registration (503 with a
            // time to wait), as it would be while the service is away, rather than given a
            // final `failed` it would not retry.
            Err(NotAssigned::Retry(e)) => return Err(e),
        };
        let status = final_state.status;
        let decided = (final_state.clone(), attested.attestation);
        let body = RegistrationOperationStatus {
            operation_id: operation_id.clone(),
            status,
            registration_state: final_state,
        };
        // Even an immediate answer is kept: a device that polls anyway (or re-polls after a lost
        // reply) gets the same result.
        self.operations.insert(
            now,
            CachedOperation {
                registration_key: key,
                credential_digest: digest(&req.credential),
                credential_valid_until: valid_until(&req.credential),
                body: body.clone(),
                expires: now + chrono::Duration::from_std(OPERATION_TTL).unwrap_or_default(),
            },
        );
        if self.config.immediate_assignment {
            return Ok((Registered::Done(body), decided));
        }
        let assigning = Registered::Assigning {
            retry_after: self.config.retry_after_secs,
            operation: RegistrationOperationStatus {
                operation_id,
                status: RegistrationStatus::Assigning,
                registration_state: RegistrationState {
                    registration_id: req.registration_id.clone(),
                    status: RegistrationStatus::Assigning,
                    ..Default::default()
                },
            },
        };
        Ok((assigning, decided))
    }

    /// Handles an operation-status poll.
    pub async fn operation_status(
        &self,
        now: DateTime<Utc>,
        req: &DeviceRequest,
        operation_id: &str,
    ) -> Result<DeviceResponse, Error> {
        self.admit(now, req)?;
        let key = registration_id::key(&req.registration_id);
        let not_found = || Error::OperationNotFound {
            operation_id: operation_id.to_string(),
            registration_id: req.registration_id.clone(),
        };
        let cached = self.operations.ops.get(operation_id).map(|o| {
            (
                o.registration_key.clone(),
                o.credential_digest,
                o.credential_valid_until,
                o.body.clone(),
            )
        });
        if let Some((op_key, cred, valid_until, body)) = cached {
            if op_key != key {
                // Authenticate first, as for an unknown id, so the answer does not tell an
                // unauthenticated caller that this operation exists for another registration.
                self.attest(now, req, TpmUse::Check).await?;
                return Err(not_found());
            }
            let still_valid = valid_until.is_none_or(|t| now.timestamp() <= t);
            if cred != digest(&req.credential) || !still_valid {
                self.attest(now, req, TpmUse::Check).await?;
            }
            self.count_poll(now, req, &key)?;
            return Ok(DeviceResponse {
                status: 200,
                retry_after: None,
                body,
            });
        }
        self.attest(now, req, TpmUse::Check).await?;
        self.count_poll(now, req, &key)?;
        let record = self.store.get_registration(&key).await?.ok_or_else(not_found)?;
        if record.operation_id.as_deref() != Some(operation_id) {
            return Err(not_found());
        }
        let state = self.device_view(&record);
        Ok(DeviceResponse {
            status: 200,
            retry_after: None,
            body: RegistrationOperationStatus {
                operation_id: operation_id.to_string(),
                status: state.status,
                registration_state: state,
            },
        })
    }

    /// Handles `POST /{scope}/registrations/{id}`: the device's current registration record.
    pub async fn registration_status(
        &self,
        now: DateTime<Utc>,
        req: &DeviceRequest,
    ) -> Result<RegistrationState, Error> {
        self.admit(now, req)?;
        self.attest(now, req, TpmUse::Check).await?;
        let record = self
            .store
            .get_registration(&req.registration_id)
            .await?
            .ok_or_else(|| Error::NoRegistrationRecord {
                registration_id: req.registration_id.clone(),
            })?;
        // Azure answers the issued chain to the registration and its operation only.
        let mut state = self.device_view(&record);
        state.issued_certificate_chain = None;
        state.issued_client_certificate = None;
        Ok(state)
    }

    /// Counts a poll against the device's own quota. Only after the device proved who it is:
    /// otherwise anyone who knows a registration id could use up its polls and lock it out, and
    /// unauthenticated requests could fill the map of tracked devices.
    fn count_poll(&self, now: DateTime<Utc>, req: &DeviceRequest, key: &str) -> Result<(), Error> {
        self.quotas.device_poll(now, key).map_err(|t| self.refused(req, t))
    }

    fn device_view(&self, record: &RegistrationRecord) -> RegistrationState {
        let mut state = record.state.clone();
        if record.attestation == AttestationType::SymmetricKey {
            state.symmetric_key = Some(SymmetricKeyRegistrationResult {
                enrollment_group_id: record.enrollment_group_id.clone(),
            });
        }
        state
    }

    /// Proves the device is who it says it is, and finds its enrollment; `tpm` says what a SAS
    /// for a TPM enrollment may do.
    async fn attest(&self, now: DateTime<Utc>, req: &DeviceRequest, tpm: TpmUse) -> Result<Attested, Error> {
        match &req.credential {
            Credential::Sas(token) => self.attest_sas(now, req, token, tpm).await,
            Credential::X509(chain) => self.attest_x509(now, req, chain).await,
            Credential::None => Err(Error::NoCredential),
        }
    }

    /// `tpm`: what a SAS for a TPM enrollment may do.
    async fn attest_sas(
        &self,
        now: DateTime<Utc>,
        req: &DeviceRequest,
        token: &str,
        tpm: TpmUse,
    ) -> Result<Attested, Error> {
        let token = SasToken::parse(token).map_err(SasRefusal::Token)?;
        let audience = format!("{}/registrations/{}", req.id_scope, req.registration_id);
        token.check_audience_eq(&audience).map_err(SasRefusal::Token)?;
        token
            .check_expiry(now.timestamp().max(0) as u64)
            .map_err(SasRefusal::Token)?;

        if let Some(e) = self.individual_enrollment(&req.registration_id).await? {
            if e.attestation.kind == AttestationType::Tpm {
                if tpm == TpmUse::Refuse {
                    return Err(crate::error::TpmRefusal::NotAheadOfRegister {
                        registration_id: e.registration_id,
                    }
                    .into());
                }
                return self.attest_tpm(now, req, &token, e, tpm == TpmUse::Spend).await;
            }
            if e.attestation.kind != AttestationType::SymmetricKey {
                return Err(sas_refused(
                    req,
                    &format!("the individual enrollment uses {} attestation", e.attestation.kind),
                ));
            }
            let sk = e.attestation.symmetric_key.clone().unwrap_or_default();
            let keys: Vec<&str> = [&sk.primary_key, &sk.secondary_key]
                .into_iter()
                .flatten()
                .map(String::as_str)
                .collect();
            token.verify_signature(keys).map_err(|_| {
                sas_refused(
                    req,
                    "signed with neither the primary nor the secondary key of the individual enrollment",
                )
            })?;
            let hub_auth = DeviceAuth::Sas {
                primary_key: sk.primary_key.unwrap_or_default(),
                secondary_key: sk.secondary_key.unwrap_or_default(),
            };
            return Ok(Attested {
                matched: Matched::Individual(Box::new(e)),
                attestation: AttestationType::SymmetricKey,
                hub_auth,
                x509: None,
                tpm: None,
            });
        }

        let groups = self.groups.snapshot();
        for cached in groups.iter().filter(|g| !g.keys.is_empty()) {
            let derived: Vec<Vec<u8>> = cached
                .keys
                .iter()
                .map(|k| hmac_sha256(k, req.registration_id.as_bytes()))
                .collect();
            if derived.iter().any(|d| token.verify_signature_raw(d)) {
                let sk = cached.group.attestation.symmetric_key.clone().unwrap_or_default();
                let derive = |k: &Option<String>| {
                    k.as_deref()
                        .and_then(|k| derive_device_key(k, &req.registration_id))
                        .unwrap_or_default()
                };
                let hub_auth = DeviceAuth::Sas {
                    primary_key: derive(&sk.primary_key),
                    secondary_key: derive(&sk.secondary_key),
                };
                return Ok(Attested {
                    matched: Matched::Group(Box::new(cached.group.clone())),
                    attestation: AttestationType::SymmetricKey,
                    hub_auth,
                    x509: None,
                    tpm: None,
                });
            }
        }
        // Diagnose the commonest mistake: signing with the group key itself. Only a holder of
        // that group key gets here, so naming the group reveals nothing to anyone else.
        if let Some(g) = groups
            .iter()
            .find(|g| g.keys.iter().any(|k| token.verify_signature_raw(k)))
        {
            return Err(SasRefusal::GroupKey {
                group_id: g.group.enrollment_group_id.clone(),
            }
            .into());
        }
        let n = groups.iter().filter(|g| !g.keys.is_empty()).count();
        Err(sas_refused(
            req,
            &format!("no individual enrollment, and none of the {n} symmetric-key group(s) derives the signing key"),
        ))
    }

    /// Allocation, hub update and durable commit. `Err` carries a completed-but-failed state
    /// (status `failed` or `disabled`), which is reported to the device but not persisted, or
    /// the store's unavailability, which the device is told to retry.
    async fn assign(
        &self,
        now: DateTime<Utc>,
        req: &DeviceRequest,
        body: &DeviceRegistration,
        attested: &Attested,
        issued: Option<&super::issuance::Issued>,
        operation_id: &str,
    ) -> Result<RegistrationState, NotAssigned> {
        // The code and message come from the one mapping of causes ([`Error::code`]).
        let failed = |status: RegistrationStatus, why: Error| {
            NotAssigned::Failed(Box::new(RegistrationState {
                registration_id: req.registration_id.clone(),
                status,
                error_code: Some(why.code()),
                error_message: Some(why.to_string()),
                created_date_time_utc: Some(now),
                last_updated_date_time_utc: Some(now),
                ..Default::default()
            }))
        };
        let storage = |e: StoreError| match e.is_unavailable() {
            true => NotAssigned::Retry(Error::Storage(e)),
            false => failed(RegistrationStatus::Failed, Error::Storage(e)),
        };
        if let Some(why) = attested.matched.disabled() {
            return Err(failed(RegistrationStatus::Disabled, why));
        }
        let mut previous = match self.store.get_registration(&req.registration_id).await {
            Ok(p) => p.filter(|p| p.state.status == RegistrationStatus::Assigned),
            Err(e) => return Err(storage(e)),
        };
        // A device assigned under a hub's former name is on that hub now (renamed, not moved).
        if let Some(hub) = previous.as_mut().and_then(|p| p.state.assigned_hub.as_mut()) {
            if let Some(current) = self.hubs.current_name(hub) {
                *hub = current;
            }
        }
        let (policy, reprovision, initial_twin, capabilities, iot_hubs, legacy_hub, device_id) = match &attested.matched
        {
            Matched::Individual(e) => (
                e.allocation_policy,
                e.reprovision_policy,
                e.initial_twin.clone(),
                e.capabilities.unwrap_or_default(),
                e.iot_hubs.clone(),
                e.iot_hub_host_name.clone(),
                e.device_id
                    .clone()
                    .filter(|d| !d.is_empty())
                    .unwrap_or_else(|| req.registration_id.clone()),
            ),
            Matched::Group(g) => (
                g.allocation_policy,
                g.reprovision_policy,
                g.initial_twin.clone(),
                g.capabilities.unwrap_or_default(),
                g.iot_hubs.clone(),
                g.iot_hub_host_name.clone(),
                req.registration_id.clone(),
            ),
        };
        let reprovision = reprovision.unwrap_or_default();
        // An operator's reprovision request makes the assignment run again, whatever the
        // enrollment says.
        let update_hub_assignment =
            reprovision.update_hub_assignment || previous.as_ref().is_some_and(|p| p.reprovision_requested);
        let sticky_hub = previous
            .as_ref()
            .filter(|_| !update_hub_assignment)
            .and_then(|p| p.state.assigned_hub.clone());
        let policy = policy.unwrap_or(self.config.default_allocation);
        let mut custom = None;
        let hub = match sticky_hub {
            Some(h) => h,
            None => {
                // One reference count, not a copy of the hubs: every registration reads them.
                let linked = self.linked.load_full();
                let allocated = match candidates(&linked, iot_hubs.as_deref(), legacy_hub.as_deref()) {
                    Err(why) => Err(why),
                    Ok((candidates, _)) if policy == AllocationPolicy::Custom => self
                        .allocate_custom(
                            attested,
                            &req.registration_id,
                            body.payload.as_ref(),
                            previous.as_ref(),
                            &candidates,
                        )
                        .await
                        .map(|c| custom.insert(c).hub.clone()),
                    Ok((candidates, named)) => self.allocate(policy, &candidates, named, req),
                };
                match allocated {
                    Ok(h) => h,
                    Err(why) => return Err(failed(RegistrationStatus::Failed, why.into())),
                }
            }
        };
        // A webhook's initial twin replaces the enrollment's and any migration (Azure: "it will
        // override any twin migration settings in the enrollment").
        let (custom_twin, custom_payload) = match custom {
            Some(c) => (c.initial_twin, c.payload),
            None => (None, None),
        };
        let reset = previous.is_some()
            && (custom_twin.is_some() || (!reprovision.migrate_device_data && update_hub_assignment));
        // A device moving to another hub with `migrateDeviceData` takes its data along (twin,
        // capabilities) instead of the enrollment's initial configuration. Read before the intent
        // is stored, so that recovery replays the same data after the old identity is gone.
        let moving_from = previous
            .as_ref()
            .filter(|_| reprovision.migrate_device_data && custom_twin.is_none())
            .and_then(|p| {
                let old_hub = p.state.assigned_hub.as_deref()?;
                let old_device = p.state.device_id.as_deref().unwrap_or(&device_id);
                (!old_hub.eq_ignore_ascii_case(&hub)).then_some((old_hub, old_device))
            });
        let initial_twin = custom_twin.or(initial_twin);
        let (initial_twin, capabilities) = match moving_from {
            None => (initial_twin, capabilities),
            Some((old_hub, old_device)) => match self.hubs.device_data(old_hub, old_device).await {
                Ok(Some(data)) => (Some(data.twin), data.capabilities),
                // Nothing to migrate (deleted from its old hub, or that hub is no longer linked):
                // the device starts from the enrollment's initial configuration, as a new one.
                Ok(None) | Err(HubError::UnknownHub(_)) => (initial_twin, capabilities),
                Err(e) => {
                    // 400209 with the hub's reason: the same as a hub refusing the device.
                    return Err(failed(RegistrationStatus::Failed, Error::Hub(e)));
                }
            },
        };
        let state = RegistrationState {
            registration_id: req.registration_id.clone(),
            created_date_time_utc: Some(
                previous
                    .as_ref()
                    .and_then(|p| p.state.created_date_time_utc)
                    .unwrap_or(now),
            ),
            assigned_hub: Some(hub.clone()),
            device_id: Some(device_id.clone()),
            status: RegistrationStatus::Assigned,
            // Decided once the hub says whether it created the device.
            substatus: None,
            last_updated_date_time_utc: Some(now),
            etag: Some(self.new_etag()),
            payload: custom_payload,
            // Kept in the record so a poll after a restart shows them; the service view strips them.
            x509: attested.x509.clone(),
            tpm: attested.tpm.clone(),
            issued_certificate_chain: issued.filter(|i| !i.older_api).map(|i| i.chain.clone()),
            issued_client_certificate: issued.filter(|i| i.older_api).and_then(|i| i.leaf_pem()),
            ..Default::default()
        };
        let intent = RegistrationIntent {
            operation_id: operation_id.to_string(),
            hub,
            device: DeviceProvisioning {
                device_id,
                // A device that asked for a certificate connects with it.
                auth: issued.map_or_else(|| attested.hub_auth.clone(), |i| i.hub_auth.clone()),
                capabilities,
                initial_twin,
                twin_policy: if reset { TwinPolicy::Reset } else { TwinPolicy::Keep },
                operation_id: operation_id.to_string(),
                credential_policy: issued.map(|i| i.policy.clone()),
            },
            record: RegistrationRecord {
                state,
                enrollment_group_id: attested.matched.group_id().map(str::to_string),
                attestation: attested.attestation,
                operation_id: Some(operation_id.to_string()),
                reprovision_requested: false,
            },
            previous: previous.map(|p| PreviousAssignment {
                hub: p.state.assigned_hub,
                device_id: p.state.device_id,
                substatus: p.state.substatus,
            }),
        };
        // Durable before the hub write, so a crash after it is finished at start-up (decision 0009).
        if let Err(e) = self.store.put_registration_intent(&intent).await {
            return Err(storage(e));
        }
        match self.complete_registration(&intent).await {
            Ok(record) => Ok(self.device_view(&record)),
            Err(Incomplete::Hub(e)) => {
                // Nothing reached the hub: the intent has nothing left to finish.
                if let Err(se) = self.store.delete_registration_intent(operation_id).await {
                    tracing::warn!(operation = %operation_id, error = %se, "could not drop the intent of a registration the hub refused; the next start-up retries it");
                }
                Err(failed(RegistrationStatus::Failed, Error::Hub(e)))
            }
            // The intent stays: the next start-up finishes the registration.
            Err(Incomplete::Store(e)) => Err(storage(e)),
        }
    }

    /// Picks a hub among `candidates` by a built-in policy. `hashed` uses weighted rendezvous
    /// hashing of the lower-cased registration id: deterministic, proportional to weight, and
    /// stable when hubs are added or removed; `geoLatency` hashes among the hubs nearest the
    /// device ([`super::GeoConfig`]).
    fn allocate(
        &self,
        policy: AllocationPolicy,
        candidates: &[&super::LinkedHub],
        named: bool,
        req: &DeviceRequest,
    ) -> Result<String, AllocationError> {
        match policy {
            AllocationPolicy::Static => {
                // Azure: "a single IoT hub, which must be specified on the enrollment"; the linked
                // hubs are no default, even when there is only one.
                let found = if named { candidates.len() } else { 0 };
                if found == 1 {
                    Ok(candidates[0].host_name.clone())
                } else {
                    Err(AllocationError::StaticNeedsOneHub(found))
                }
            }
            // Decided by the webhook before this is reached ([`Engine::allocate_custom`]).
            AllocationPolicy::Custom => Err(AllocationError::CustomUnsupported),
            AllocationPolicy::Hashed | AllocationPolicy::GeoLatency => {
                let key = registration_id::key(&req.registration_id);
                let near = match policy {
                    AllocationPolicy::GeoLatency => self.config.geo.nearest(req.source, candidates),
                    _ => candidates.to_vec(),
                };
                let best = near
                    .into_iter()
                    .map(|h| {
                        let d = Sha256::digest(format!("{}\n{key}", h.host_name.to_ascii_lowercase()).as_bytes());
                        let x = u64::from_be_bytes(d[..8].try_into().expect("8 bytes"));
                        // Weighted rendezvous: score = -w / ln(u), u uniform in (0,1).
                        let u = (x as f64 + 1.0) / (u64::MAX as f64 + 2.0);
                        let score = -(h.allocation_weight.max(1) as f64) / u.ln();
                        (score, h)
                    })
                    .max_by(|a, b| a.0.total_cmp(&b.0))
                    .map(|(_, h)| h.host_name.clone())
                    .expect("candidates is not empty");
                Ok(best)
            }
        }
    }
}

/// The hubs an enrollment may be assigned to, among `linked`: those it names (`iotHubs`, else the
/// legacy `iotHubHostName`) that are linked, or when it names none every linked hub allocation
/// policies may pick; and whether it named any.
fn candidates<'a>(
    linked: &'a [super::LinkedHub],
    iot_hubs: Option<&[String]>,
    legacy_hub: Option<&str>,
) -> Result<(Vec<&'a super::LinkedHub>, bool), AllocationError> {
    let named: Vec<&str> = match (iot_hubs.filter(|h| !h.is_empty()), legacy_hub) {
        (Some(h), _) => h.iter().map(String::as_str).collect(),
        (None, Some(h)) => vec![h],
        (None, None) => vec![],
    };
    let candidates: Vec<&super::LinkedHub> = if named.is_empty() {
        linked.iter().filter(|h| h.apply_allocation_policy).collect()
    } else {
        linked
            .iter()
            .filter(|h| named.iter().any(|n| n.eq_ignore_ascii_case(&h.host_name)))
            .collect()
    };
    if candidates.is_empty() {
        return Err(if named.is_empty() {
            AllocationError::NoLinkedHub
        } else {
            AllocationError::HubsNotLinked(named.iter().map(|h| h.to_string()).collect())
        });
    }
    Ok((candidates, !named.is_empty()))
}

#[cfg(test)]
mod cache_tests {
    use super::*;

    fn op(id: usize, created: DateTime<Utc>) -> CachedOperation {
        CachedOperation {
            registration_key: format!("d{id}"),
            credential_digest: [0; 32],
            credential_valid_until: None,
            body: RegistrationOperationStatus {
                operation_id: format!("op{id}"),
                status: RegistrationStatus::Assigned,
                registration_state: RegistrationState::default(),
            },
            expires: created + chrono::Duration::from_std(OPERATION_TTL).unwrap(),
        }
    }

    #[test]
    fn a_full_cache_keeps_the_newest_operations_within_its_cap() {
        let cache = OperationCache::default();
        let start = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let cap = 2_000;
        // 10,000 operations, one every 10 ms, all within the TTL: only the cap bounds them.
        for i in 0..10_000 {
            let now = start + chrono::Duration::milliseconds(10 * i as i64);
            cache.insert_bounded(now, op(i, now), cap);
            assert!(
                cache.len() <= cap + OPERATION_SWEEP_EVERY as usize + 1,
                "{} entries after {i}",
                cache.len()
            );
        }
        // The newest are still answered from memory, the oldest were evicted first.
        assert!(cache.ops.contains_key("op9999"));
        assert!(!cache.ops.contains_key("op0"));
    }

    #[test]
    fn expired_operations_go_before_live_ones() {
        let cache = OperationCache::default();
        let start = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        for i in 0..1_500 {
            cache.insert_bounded(start, op(i, start), 1_000);
        }
        // Past the TTL of the first batch: the next sweep drops all of it, and nothing younger.
        let later = start + chrono::Duration::from_std(OPERATION_TTL).unwrap() + chrono::Duration::seconds(1);
        for i in 1_500..(2 * OPERATION_SWEEP_EVERY as usize + 1_500) {
            cache.insert_bounded(later, op(i, later), 1_000);
        }
        assert!(!cache.ops.contains_key("op0"));
        assert!(cache
            .ops
            .contains_key(&format!("op{}", 2 * OPERATION_SWEEP_EVERY as usize + 1_499)));
    }
}

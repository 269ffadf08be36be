//! TPM attestation (device-protocol.md §7, hub-dice-tpm.md §C), individual enrollments only.
//!
//! 1. [`Engine::tpm_challenge`]: the device asks without a credential, sending its EK and SRK. If
//!    an individual enrollment for the registration id is a TPM enrollment with that EK (and that
//!    SRK, when the enrollment names one), the engine wraps a fresh random 32-byte key for that
//!    TPM (`dps_tpm::wrap_key`) and remembers it for [`CHALLENGE_TTL_SECS`]. The enrollment's
//!    registration id is whatever the operator chose — Azure does not require the TPM's default
//!    id (base32 of the EK hash) — so the lookup is by the id in the request, like every device.
//! 2. The device activates the blob in its TPM and registers with a SAS token the TPM signed with
//!    that key. The engine verifies it with plain HMAC-SHA256 and *spends* the challenge: a
//!    challenge key starts one registration, so a captured token cannot start a second. Polls
//!    of the operation it started (the C and Node SDKs poll with the same token) and the
//!    device's registration status are still answered: through the operation cache's credential
//!    digest for as long as the token is valid, and through the spent challenge while it lasts
//!    ([`TpmUse::Check`]); anything else needs a new challenge.
//! 3. The hub device gets new random keys on every registration, and the device gets the primary
//!    one wrapped the same way in `registrationState.tpm.authenticationKey`; it imports that blob
//!    and signs its hub SAS tokens with it.
//!
//! The challenge keys live in memory only on a store of one node: after a restart a device
//! simply asks again. On a store several nodes share they live in the store
//! ([`crate::Store::put_tpm_challenge`]), so that the device's second request may reach another
//! node than its first; the node whose write marks the challenge spent is the one that spent
//! it. Keys are never logged; [`SecretKey`]'s `Debug` redacts them and they are wiped
//! when dropped.

use std::sync::atomic::{AtomicU64, Ordering};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use dps_proto::keys::encode_key;
use dps_proto::model::device::{DeviceRegistration, TpmChallenge};
use dps_proto::model::service::{AttestationType, IndividualEnrollment, TpmRegistrationResult};
use dps_proto::registration_id;
use dps_proto::sas::SasToken;
use dps_tpm::RsaPublic;
use zeroize::Zeroizing;

use super::attestation::{check_body_id, sas_refused, Attested, DeviceRequest, Matched, CHALLENGE_TTL_SECS};
use super::Engine;
use crate::error::{Error, TpmRefusal};
use crate::hub::DeviceAuth;
use crate::random::{Random, RngOf};
use crate::store::StoredTpmChallenge;

/// Challenges kept per registration; the oldest goes first. More than one, so a device retrying
/// (or a second request racing it) does not invalidate the challenge another attempt is using.
const MAX_OUTSTANDING: usize = 4;
/// Registrations with challenges held before expired ones are swept.
const SWEEP_THRESHOLD: usize = 10_000;
/// The `keyName` of the challenge, which devices put in `skn`.
pub const KEY_NAME: &str = "registration";
/// Bytes of every key the engine wraps (challenge and hub keys).
const KEY_LEN: usize = 32;

/// A random symmetric key: redacted in `Debug`, wiped on drop.
pub(crate) struct SecretKey(Zeroizing<[u8; KEY_LEN]>);

impl SecretKey {
    fn random(random: &dyn Random) -> Self {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        random.fill(k.as_mut());
        Self(k)
    }

    fn bytes(&self) -> &[u8] {
        self.0.as_ref()
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// What a SAS token for a TPM enrollment may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TpmUse {
    /// Nothing: this request may not follow a challenge (the device must register first).
    Refuse,
    /// Start a registration: spends the challenge whose key signed it.
    Spend,
    /// Read what the device's registration made (a poll, its registration status): any
    /// unexpired challenge of the device whose key signed it, spent or not, authenticates it,
    /// and nothing is spent. So a poll reaching another node than the one that registered (or
    /// after the operation left this node's cache) is answered, as long as the challenge lasts.
    Check,
}

/// An outstanding challenge.
#[derive(Debug)]
struct Challenge {
    key: SecretKey,
    /// The EK and SRK (`TPM2B_PUBLIC`) the blob was built for; the hub key is wrapped for them too.
    ek: Vec<u8>,
    srk: Vec<u8>,
    expires: DateTime<Utc>,
    /// Spent by a registration: it authenticates reads only ([`TpmUse::Check`]).
    spent: bool,
}

/// What [`ChallengeCache::take`] found.
enum Taken {
    /// The challenge whose key signed the token: its EK and SRK.
    Challenge { ek: Vec<u8>, srk: Vec<u8> },
    /// Nothing outstanding (never asked, expired, or spent).
    None,
    /// Outstanding challenges exist, but none of their keys signed the token.
    NoMatch,
}

/// Outstanding challenges by registration key.
#[derive(Default)]
pub(crate) struct ChallengeCache {
    by_registration: DashMap<String, Vec<Challenge>>,
    inserts: AtomicU64,
}

impl ChallengeCache {
    fn insert(&self, now: DateTime<Utc>, registration_key: String, challenge: Challenge) {
        let n = self.inserts.fetch_add(1, Ordering::Relaxed);
        if n.is_multiple_of(1024) && self.by_registration.len() > SWEEP_THRESHOLD {
            self.by_registration.retain(|_, list| {
                list.retain(|c| c.expires > now);
                !list.is_empty()
            });
        }
        let mut list = self.by_registration.entry(registration_key).or_default();
        list.retain(|c| c.expires > now);
        if list.len() >= MAX_OUTSTANDING {
            list.remove(0);
        }
        list.push(challenge);
    }

    /// Finds the unexpired challenge whose key signed `token` (for [`TpmUse::Spend`]: an
    /// unspent one, which it spends).
    fn take(&self, now: DateTime<Utc>, registration_key: &str, token: &SasToken, spend: bool) -> Taken {
        let taken = match self.by_registration.get_mut(registration_key) {
            None => return Taken::None,
            Some(mut list) => {
                list.retain(|c| c.expires > now);
                let usable = |c: &Challenge| !(spend && c.spent);
                if !list.iter().any(usable) {
                    Taken::None
                } else {
                    match list
                        .iter_mut()
                        .find(|c| usable(c) && token.verify_signature_raw(c.key.bytes()))
                    {
                        Some(c) => {
                            c.spent |= spend;
                            Taken::Challenge {
                                ek: c.ek.clone(),
                                srk: c.srk.clone(),
                            }
                        }
                        None => Taken::NoMatch,
                    }
                }
            }
        };
        self.by_registration
            .remove_if(registration_key, |_, list| list.is_empty());
        taken
    }
}

/// Decodes a base64 `TPM2B_PUBLIC` the device sent.
fn decode_device_key(b64: &str, field: &'static str) -> Result<Vec<u8>, TpmRefusal> {
    B64.decode(b64.trim()).map_err(|_| TpmRefusal::KeyEncoding { field })
}

/// The EK and SRK an enrollment names (validated when it was written).
fn enrolled_keys(e: &IndividualEnrollment) -> Result<(Vec<u8>, Option<Vec<u8>>), TpmRefusal> {
    let tpm = e.attestation.tpm.as_ref();
    let broken = |key: &'static str| TpmRefusal::EnrollmentBroken {
        registration_id: e.registration_id.clone(),
        key,
    };
    let ek = tpm
        .and_then(|t| t.endorsement_key.as_deref())
        .and_then(|k| B64.decode(k.trim()).ok())
        .ok_or_else(|| broken("endorsementKey"))?;
    let srk = match tpm.and_then(|t| t.storage_root_key.as_deref()) {
        Some(k) => Some(B64.decode(k.trim()).map_err(|_| broken("storageRootKey"))?),
        None => None,
    };
    Ok((ek, srk))
}

/// The base64 activation blob carrying `key` for the TPM with `ek` and `srk`.
fn wrap(random: &dyn Random, ek: &[u8], srk: &[u8], key: &SecretKey) -> Result<String, TpmRefusal> {
    let blob = dps_tpm::wrap_key(ek, srk, key.bytes(), &mut RngOf(random))
        .and_then(|b| b.to_bytes())
        .map_err(TpmRefusal::ActivationBlob)?;
    Ok(B64.encode(blob))
}

impl Engine {
    /// The first, unauthenticated step of TPM attestation: checks the device's EK (and SRK)
    /// against its individual enrollment and answers the activation blob of a new challenge key,
    /// which the transport sends as the HTTP 401 body (device-protocol.md §7.2; the AMQP SASL
    /// `TPM` mechanism carries the same blob). [`Engine::register`] answers a register request
    /// without a credential that carries TPM keys with it ([`super::Registered::TpmChallenge`]).
    ///
    /// A disabled enrollment still gets a challenge: the registration that follows reports
    /// `disabled`, as for every other attestation.
    pub async fn tpm_challenge(
        &self,
        now: DateTime<Utc>,
        req: &DeviceRequest,
        body: &DeviceRegistration,
    ) -> Result<TpmChallenge, Error> {
        self.admit(now, req)?;
        check_body_id(req, body)?;
        let keys = body.tpm.as_ref().ok_or(TpmRefusal::KeysMissing)?;
        let ek = decode_device_key(&keys.endorsement_key, "endorsementKey")?;
        let srk = match keys.storage_root_key.as_deref() {
            Some(k) if !k.trim().is_empty() => decode_device_key(k, "storageRootKey")?,
            _ => return Err(TpmRefusal::StorageRootKeyMissing.into()),
        };
        // One refusal for every mismatch (no enrollment, another attestation, another EK or
        // SRK): whoever asks without a credential learns only whether these exact keys are
        // enrolled under this id, which the holder of the TPM knows anyway.
        let refuse = |why: &str| {
            tracing::info!(registration = %req.registration_id, reason = why, "TPM challenge refused");
            Error::from(TpmRefusal::NotEnrolled {
                registration_id: req.registration_id.clone(),
            })
        };
        let e = self
            .store
            .get_enrollment(&req.registration_id)
            .await?
            .ok_or_else(|| refuse("no individual enrollment"))?;
        if e.attestation.kind != AttestationType::Tpm {
            return Err(refuse(&format!(
                "the enrollment uses {} attestation",
                e.attestation.kind
            )));
        }
        let (enrolled_ek, enrolled_srk) = enrolled_keys(&e)?;
        if ek != enrolled_ek {
            return Err(refuse("another endorsement key"));
        }
        if enrolled_srk.as_ref().is_some_and(|s| *s != srk) {
            return Err(refuse("another storage root key"));
        }
        RsaPublic::storage_root_key(&srk).map_err(TpmRefusal::StorageRootKey)?;
        let random = self.random.as_ref();
        let key = SecretKey::random(random);
        let authentication_key = wrap(random, &ek, &srk, &key)?;
        let (registration_key, expires) = (
            registration_id::key(&req.registration_id),
            now + chrono::Duration::seconds(CHALLENGE_TTL_SECS),
        );
        match self.store.shared() {
            true => {
                let stored = StoredTpmChallenge {
                    id: 0,
                    registration_key,
                    key: Zeroizing::new(key.bytes().to_vec()),
                    ek,
                    srk,
                    expires,
                    spent: false,
                };
                self.store.put_tpm_challenge(now, &stored, MAX_OUTSTANDING).await?;
            }
            false => self.tpm.insert(
                now,
                registration_key,
                Challenge {
                    key,
                    ek,
                    srk,
                    expires,
                    spent: false,
                },
            ),
        }
        tracing::info!(registration = %req.registration_id, "TPM challenge issued");
        Ok(TpmChallenge {
            authentication_key,
            key_name: KEY_NAME.to_string(),
            message: format!(
                "TPM challenge: import authenticationKey into the TPM (ActivateCredential, Import) and send the register request again with a SAS token signed by the imported key (skn={KEY_NAME}) within {CHALLENGE_TTL_SECS} seconds"
            ),
        })
    }

    /// The second step: `token` (audience and expiry already checked) must be signed by the key
    /// of an unexpired challenge for this registration, which `spend` spends (an unspent one).
    pub(super) async fn attest_tpm(
        &self,
        now: DateTime<Utc>,
        req: &DeviceRequest,
        token: &SasToken,
        e: IndividualEnrollment,
        spend: bool,
    ) -> Result<Attested, Error> {
        let registration_key = registration_id::key(&req.registration_id);
        let taken = match self.store.shared() {
            true => self.take_stored_challenge(now, &registration_key, token, spend).await?,
            false => self.tpm.take(now, &registration_key, token, spend),
        };
        // Both refusals read like any other unmatched SAS token: a distinct answer would tell
        // an unauthenticated caller that this id has a TPM enrollment.
        let (challenge_ek, challenge_srk) = match taken {
            Taken::Challenge { ek, srk } => (ek, srk),
            Taken::None => {
                return Err(sas_refused(
                    req,
                    "TPM enrollment with no outstanding challenge (never asked, expired, or used)",
                ))
            }
            Taken::NoMatch => {
                return Err(sas_refused(
                    req,
                    "TPM enrollment: not signed by the key of an outstanding challenge",
                ))
            }
        };
        let (ek, srk) = enrolled_keys(&e)?;
        if ek != challenge_ek || srk.is_some_and(|s| s != challenge_srk) {
            return Err(TpmRefusal::KeysChanged {
                registration_id: e.registration_id,
            }
            .into());
        }
        let random = self.random.as_ref();
        let (primary, secondary) = (SecretKey::random(random), SecretKey::random(random));
        let authentication_key = wrap(random, &challenge_ek, &challenge_srk, &primary)?;
        Ok(Attested {
            matched: Matched::Individual(Box::new(e)),
            attestation: AttestationType::Tpm,
            hub_auth: DeviceAuth::Sas {
                primary_key: encode_key(primary.bytes()),
                secondary_key: encode_key(secondary.bytes()),
            },
            x509: None,
            tpm: Some(TpmRegistrationResult { authentication_key }),
        })
    }
}

impl Engine {
    /// [`ChallengeCache::take`] for challenges kept in a shared store; when another node spent
    /// the challenge first, [`Taken::None`].
    async fn take_stored_challenge(
        &self,
        now: DateTime<Utc>,
        registration_key: &str,
        token: &SasToken,
        spend: bool,
    ) -> Result<Taken, Error> {
        let mut usable = self.store.tpm_challenges(now, registration_key).await?;
        usable.retain(|c| !(spend && c.spent));
        if usable.is_empty() {
            return Ok(Taken::None);
        }
        let Some(signed) = usable.into_iter().find(|c| token.verify_signature_raw(&c.key)) else {
            return Ok(Taken::NoMatch);
        };
        if spend && !self.store.spend_tpm_challenge(signed.id).await? {
            return Ok(Taken::None);
        }
        Ok(Taken::Challenge {
            ek: signed.ek,
            srk: signed.srk,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_redacted() {
        let k = SecretKey::random(&crate::SystemRandom);
        assert_eq!(format!("{k:?}"), "SecretKey(<redacted>)");
        let c = Challenge {
            key: k,
            ek: vec![],
            srk: vec![],
            expires: Utc::now(),
            spent: false,
        };
        assert!(format!("{c:?}").contains("<redacted>"));
    }
}

//! The service API: enrollments, enrollment groups, registration records.
//!
//! Output shaping follows the real service (service-api.md §3.10): PUT responses carry secrets
//! (including generated keys), GET and query strip them, only `attestationmechanism` returns them
//! on reads; X.509 certificates are never echoed, only their `info`. On update, absent keys and
//! certificates mean "keep the stored ones", so GET → modify → PUT round trips never rotate them.

use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use dps_proto::keys::{encode_key, validate_symmetric_key};
use dps_proto::model::service::{
    AllocationPolicy, AttestationMechanism, AttestationType, BulkEnrollmentGroupOperation, BulkEnrollmentOperation,
    BulkMode, BulkOperationError, BulkOperationResult, CustomAllocationDefinition, EnrollmentGroup,
    IndividualEnrollment, InitialTwin, RegistrationState, RegistrationStatus, SymmetricKeyAttestation,
    X509Certificates,
};
use dps_proto::registration_id;
use dps_proto::twin_limits;

use super::Engine;
use crate::error::{BulkInvalid, Error, InvalidArgument, Resource};
use crate::random::Random;
use crate::store::{StoreError, WriteCondition};

/// One page of a query: items and the continuation token for the next page (absent when the
/// collection is exhausted — Node loops forever on an empty token, Python demands full pages).
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// Items of this page.
    pub items: Vec<T>,
    /// Token for `x-ms-continuation`, only when more items exist.
    pub continuation: Option<String>,
}

/// Azure's limit on items per bulk request.
const BULK_MAX: usize = 10;
/// Page size when the client sends no `x-ms-max-item-count`.
pub(super) const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest page served.
pub(super) const MAX_PAGE_SIZE: usize = 1000;

/// Which resource an error is about, for its code.
#[derive(Clone, Copy)]
enum Kind {
    Enrollment,
    Group,
    Registration,
}

impl Kind {
    fn resource(self) -> Resource {
        match self {
            Kind::Enrollment => Resource::Enrollment,
            Kind::Group => Resource::Group,
            Kind::Registration => Resource::Registration,
        }
    }

    fn map(self, e: StoreError, id: &str) -> Error {
        Error::from_store(e, self.resource(), id)
    }

    fn not_found(self, id: &str) -> Error {
        self.map(StoreError::NotFound, id)
    }
}

fn generate_key(random: &dyn Random) -> String {
    let mut raw = [0u8; 64];
    random.fill(&mut raw);
    encode_key(&raw)
}

fn encode_continuation(last_key: &str) -> String {
    B64URL.encode(last_key.as_bytes())
}

fn decode_continuation(token: Option<&str>) -> Result<Option<String>, Error> {
    token
        .filter(|t| !t.is_empty())
        .map(|t| {
            B64URL
                .decode(t.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| InvalidArgument::Continuation(t.to_string()).into())
        })
        .transpose()
}

fn page_size(requested: Option<usize>) -> usize {
    requested
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_PAGE_SIZE)
        .min(MAX_PAGE_SIZE)
}

/// One page of a DPS query: the items of a collection, in key order from after the
/// continuation, that match the query's `WHERE`.
///
/// Azure's DPS answers every query with the whole collection, whatever its text (the C# SDK's
/// maintainers: "we support only `select * from enrollments`"); dps applies the `WHERE` — a
/// query written for Azure keeps working, with fewer items when it filters — and ignores `FROM`,
/// as DPS does. A text that does not parse is refused only when it has a `WHERE` (Azure's users
/// send `SELECT *` and `*`, which Azure answers with everything). Projections and aggregates are
/// refused. `TOP n` caps the page and ends the query there.
struct Scan {
    query: dps_proto::query::Query,
    after: Option<String>,
    size: usize,
}

/// Whether a query text has a `WHERE` (as a word, in any case).
fn has_where(text: &str) -> bool {
    text.split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .any(|w| w.eq_ignore_ascii_case("where"))
}

/// Items examined per store read while filtering.
const SCAN_BATCH: usize = 500;

impl Scan {
    fn new(text: &str, collection: &str, continuation: Option<&str>, page: Option<usize>) -> Result<Self, Error> {
        use dps_proto::query::{Query, QueryError, Select};
        let invalid = |e: QueryError| Error::from(InvalidArgument::Query(e));
        let query = match Query::parse(text, collection) {
            Ok(q) => q,
            // Azure's DPS ignores the text, and its users send things that are not queries
            // (`SELECT *`, `*`); only a text with a condition must mean what it says.
            Err(_) if !has_where(text) => Query::parse("", collection).map_err(invalid)?,
            Err(e) => return Err(invalid(e)),
        };
        if query.select != Select::All || query.is_aggregate() {
            return Err(invalid(QueryError {
                position: 7.min(text.len()),
                message: "DPS queries select whole items: use SELECT *".into(),
            }));
        }
        let mut size = page_size(page);
        if let Some(top) = query.top {
            size = size.min(usize::try_from(top).unwrap_or(usize::MAX));
        }
        Ok(Self {
            query,
            after: decode_continuation(continuation)?,
            size,
        })
    }

    /// Reads `list(after, n)` pages (each item `prepare`d into its service view, then judged as
    /// JSON) until a page of matches is full or the collection ends.
    async fn run<T, F, Fut>(
        self,
        list: F,
        key: impl Fn(&T) -> String,
        mut prepare: impl FnMut(&mut T),
    ) -> Result<Page<T>, Error>
    where
        T: serde::Serialize,
        F: Fn(Option<String>, usize) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<T>, crate::store::StoreError>>,
    {
        let Scan { query, mut after, size } = self;
        let capped = query.top.is_some();
        let mut items = Vec::new();
        if size == 0 {
            return Ok(Page {
                items,
                continuation: None,
            });
        }
        loop {
            let want = if query.filter.is_none() {
                size + 1 - items.len()
            } else {
                SCAN_BATCH
            };
            let batch = list(after.clone(), want).await?;
            let exhausted = batch.len() < want;
            for mut item in batch {
                if items.len() == size {
                    // One more item exists: the page ends at the last one kept.
                    let continuation = (!capped)
                        .then(|| items.last().map(|i| encode_continuation(&key(i))))
                        .flatten();
                    return Ok(Page { items, continuation });
                }
                after = Some(key(&item));
                prepare(&mut item);
                let doc = serde_json::to_value(&item).unwrap_or_default();
                if query.matches(&doc) {
                    items.push(item);
                }
            }
            if exhausted {
                return Ok(Page {
                    items,
                    continuation: None,
                });
            }
        }
    }
}

/// The endorsement key (base64 TPM2B_PUBLIC, the TCG default EK template around the
/// certificate's RSA-2048 key) of an EK certificate (PEM, maybe followed by intermediates, or
/// base64 DER), after checking its chain up to one of `roots` when any are configured; `given`,
/// an endorsement key sent with it, must be the same key.
fn endorsement_key_of_certificate(
    text: &str,
    given: Option<&str>,
    roots: &[Vec<u8>],
    now: DateTime<Utc>,
) -> Result<String, String> {
    let refused = |why: String| format!("tpm endorsementKeyCertificate: {why}");
    let chain: Vec<Vec<u8>> = dps_pki::pem::parse_certificates(text)
        .map_err(|e| refused(e.to_string()))?
        .into_iter()
        .map(|c| c.to_vec())
        .collect();
    let leaf = chain.first().ok_or_else(|| refused("no certificate found".into()))?;
    let (modulus, exponent) = dps_pki::ek::rsa_endorsement_key(leaf).map_err(|e| refused(e.to_string()))?;
    if exponent != 65537 {
        return Err(refused(format!(
            "the endorsement key's exponent is {exponent}; TPM endorsement keys use 65537"
        )));
    }
    if !roots.is_empty() {
        dps_pki::ek::verify_ek_chain(&chain, roots, now).map_err(refused)?;
    }
    if let Some(given) = given {
        let ek = B64
            .decode(given.trim())
            .map_err(|_| "tpm endorsementKey is not valid base64".to_string())?;
        let ek = dps_tpm::RsaPublic::endorsement_key(&ek).map_err(|e| format!("tpm endorsementKey: {e}"))?;
        if ek.modulus != modulus {
            return Err(refused("it is not the certificate of the given endorsementKey".into()));
        }
        return Ok(given.trim().to_string());
    }
    Ok(B64.encode(dps_tpm::RsaPublic::endorsement_template(modulus).to_tpm2b()))
}

/// Validates and completes an attestation on write. `stored` is the attestation already stored (on
/// update), whose secrets are kept where the request leaves them out.
fn prepare_attestation(
    random: &dyn Random,
    att: &mut AttestationMechanism,
    stored: Option<&AttestationMechanism>,
    individual: bool,
    tpm_roots: &[Vec<u8>],
    now: DateTime<Utc>,
) -> Result<(), String> {
    match att.kind {
        AttestationType::None => {
            return Err("attestation type 'none' is not allowed; use symmetricKey, x509 or tpm".into())
        }
        AttestationType::SymmetricKey => {
            let stored_sk = stored
                .filter(|s| s.kind == AttestationType::SymmetricKey)
                .and_then(|s| s.symmetric_key.clone());
            let sk = att.symmetric_key.get_or_insert_with(SymmetricKeyAttestation::default);
            for (slot, old) in [
                (
                    &mut sk.primary_key,
                    stored_sk.as_ref().and_then(|s| s.primary_key.clone()),
                ),
                (
                    &mut sk.secondary_key,
                    stored_sk.as_ref().and_then(|s| s.secondary_key.clone()),
                ),
            ] {
                match slot {
                    Some(k) if !k.is_empty() => validate_symmetric_key(k).map_err(|e| format!("symmetric key: {e}"))?,
                    _ => *slot = Some(old.unwrap_or_else(|| generate_key(random))),
                }
            }
            att.tpm = None;
            att.x509 = None;
        }
        AttestationType::Tpm => {
            if !individual {
                return Err("enrollment groups do not support TPM attestation".into());
            }
            let stored_tpm = stored
                .filter(|s| s.kind == AttestationType::Tpm)
                .and_then(|s| s.tpm.clone());
            let tpm = att.tpm.get_or_insert_with(Default::default);
            if tpm
                .endorsement_key_certificate
                .as_deref()
                .is_some_and(|c| c.trim().is_empty())
            {
                tpm.endorsement_key_certificate = None;
            }
            if let Some(cert) = tpm.endorsement_key_certificate.clone() {
                tpm.endorsement_key = Some(endorsement_key_of_certificate(
                    &cert,
                    tpm.endorsement_key.as_deref().filter(|k| !k.trim().is_empty()),
                    tpm_roots,
                    now,
                )?);
            }
            if tpm.endorsement_key.as_deref().is_none_or(str::is_empty) {
                tpm.endorsement_key = stored_tpm.as_ref().and_then(|t| t.endorsement_key.clone());
                tpm.endorsement_key_certificate =
                    stored_tpm.as_ref().and_then(|t| t.endorsement_key_certificate.clone());
            }
            let ek = tpm
                .endorsement_key
                .as_deref()
                .ok_or("tpm attestation needs an endorsementKey")?;
            // The challenge blob can only be built for RSA-2048 storage keys: refuse anything
            // else now, not when the device first asks.
            let ek = B64
                .decode(ek.trim())
                .map_err(|_| "tpm endorsementKey is not valid base64".to_string())?;
            dps_tpm::RsaPublic::endorsement_key(&ek).map_err(|e| format!("tpm endorsementKey: {e}"))?;
            if tpm.storage_root_key.as_deref().is_some_and(|k| k.trim().is_empty()) {
                tpm.storage_root_key = None;
            }
            if let Some(srk) = tpm.storage_root_key.as_deref() {
                let srk = B64
                    .decode(srk.trim())
                    .map_err(|_| "tpm storageRootKey is not valid base64".to_string())?;
                dps_tpm::RsaPublic::storage_root_key(&srk).map_err(|e| format!("tpm storageRootKey: {e}"))?;
            }
            att.symmetric_key = None;
            att.x509 = None;
        }
        AttestationType::X509 => {
            let stored_x = stored
                .filter(|s| s.kind == AttestationType::X509)
                .and_then(|s| s.x509.clone());
            let x = att.x509.get_or_insert_with(Default::default);
            let (certs, stored_certs, what) = if individual {
                (
                    &mut x.client_certificates,
                    stored_x.as_ref().and_then(|s| s.client_certificates.clone()),
                    "clientCertificates",
                )
            } else {
                (
                    &mut x.signing_certificates,
                    stored_x.as_ref().and_then(|s| s.signing_certificates.clone()),
                    "signingCertificates",
                )
            };
            if let Some(c) = certs.as_mut() {
                complete_certificates(c, stored_certs.as_ref())?;
            }
            let has_certs = certs.as_ref().is_some_and(|c| c.primary.is_some());
            let has_refs = x.ca_references.as_ref().is_some_and(|r| r.primary.is_some());
            if !has_certs && !has_refs {
                return Err(format!(
                    "x509 attestation needs {what} with a primary certificate, or caReferences"
                ));
            }
            att.symmetric_key = None;
            att.tpm = None;
        }
    }
    Ok(())
}

/// Fills `info` for each certificate given as PEM or base64 DER; entries without `certificate`
/// keep the stored certificate (a GET → PUT round trip).
fn complete_certificates(c: &mut X509Certificates, stored: Option<&X509Certificates>) -> Result<(), String> {
    for (slot, old, which) in [
        (&mut c.primary, stored.and_then(|s| s.primary.clone()), "primary"),
        (&mut c.secondary, stored.and_then(|s| s.secondary.clone()), "secondary"),
    ] {
        let Some(entry) = slot.as_mut() else { continue };
        match entry.certificate.as_deref().filter(|c| !c.trim().is_empty()) {
            Some(text) => {
                let der = dps_pki::pem::parse_certificates(text).map_err(|e| format!("{which} certificate: {e}"))?;
                let first = der
                    .first()
                    .ok_or_else(|| format!("{which} certificate: no certificate found"))?;
                let s = dps_pki::info::summarize(first).map_err(|e| format!("{which} certificate: {e}"))?;
                entry.info = Some(crate::x509::info_of(&s));
            }
            None => match old {
                Some(o) if o.certificate.is_some() => *entry = o,
                _ => return Err(format!("{which} certificate has no 'certificate' (PEM or base64 DER)")),
            },
        }
    }
    Ok(())
}

/// Removes secrets for GET / query output.
pub(super) fn strip_secrets(att: &mut AttestationMechanism) {
    if let Some(sk) = att.symmetric_key.as_mut() {
        sk.primary_key = None;
        sk.secondary_key = None;
    }
    strip_certificates(att);
}

/// Certificates are never echoed, only their info.
fn strip_certificates(att: &mut AttestationMechanism) {
    if let Some(x) = att.x509.as_mut() {
        for c in [x.client_certificates.as_mut(), x.signing_certificates.as_mut()]
            .into_iter()
            .flatten()
        {
            for e in [c.primary.as_mut(), c.secondary.as_mut()].into_iter().flatten() {
                e.certificate = None;
            }
        }
    }
}

fn condition(if_match: Option<&str>, body_etag: Option<&str>) -> WriteCondition {
    WriteCondition::from_if_match(if_match.or(body_etag))
}

fn unix(now: DateTime<Utc>) -> u64 {
    now.timestamp().max(0) as u64
}

/// What individual enrollments and enrollment groups share, so one code path validates, stamps
/// and bulk-processes both.
trait EnrollmentDocument: Sized {
    const KIND: Kind;
    /// TPM is allowed on individual enrollments only.
    const INDIVIDUAL: bool;
    fn id(&self) -> &str;
    fn id_mut(&mut self) -> &mut String;
    fn attestation(&self) -> &AttestationMechanism;
    fn attestation_mut(&mut self) -> &mut AttestationMechanism;
    fn etag_mut(&mut self) -> &mut Option<String>;
    fn created(&self) -> Option<DateTime<Utc>>;
    fn set_times(&mut self, created: DateTime<Utc>, updated: DateTime<Utc>);
    fn initial_twin(&self) -> Option<&InitialTwin>;
    /// The hubs the document names (`iotHubs`, and the legacy `iotHubHostName`).
    fn named_hubs(&self) -> Vec<&str>;
    /// The allocation policy and the custom allocation webhook.
    fn allocation(&self) -> (Option<AllocationPolicy>, Option<&CustomAllocationDefinition>);
    /// The engine's PUT for this kind of document.
    fn put(
        engine: &Engine,
        now: DateTime<Utc>,
        doc: Self,
        if_match: Option<String>,
    ) -> impl std::future::Future<Output = Result<(), Error>> + Send + '_;
    /// The engine's DELETE for this kind of document.
    fn delete(
        engine: &Engine,
        id: String,
        if_match: Option<String>,
    ) -> impl std::future::Future<Output = Result<(), Error>> + Send + '_;
}

macro_rules! enrollment_document {
    ($t:ty, $id:ident, $kind:expr, $individual:expr, $put:ident, $delete:ident) => {
        impl EnrollmentDocument for $t {
            const KIND: Kind = $kind;
            const INDIVIDUAL: bool = $individual;
            fn id(&self) -> &str {
                &self.$id
            }
            fn id_mut(&mut self) -> &mut String {
                &mut self.$id
            }
            fn attestation(&self) -> &AttestationMechanism {
                &self.attestation
            }
            fn attestation_mut(&mut self) -> &mut AttestationMechanism {
                &mut self.attestation
            }
            fn etag_mut(&mut self) -> &mut Option<String> {
                &mut self.etag
            }
            fn created(&self) -> Option<DateTime<Utc>> {
                self.created_date_time_utc
            }
            fn set_times(&mut self, created: DateTime<Utc>, updated: DateTime<Utc>) {
                self.created_date_time_utc = Some(created);
                self.last_updated_date_time_utc = Some(updated);
            }
            fn initial_twin(&self) -> Option<&InitialTwin> {
                self.initial_twin.as_ref()
            }
            fn allocation(&self) -> (Option<AllocationPolicy>, Option<&CustomAllocationDefinition>) {
                (self.allocation_policy, self.custom_allocation_definition.as_ref())
            }
            fn named_hubs(&self) -> Vec<&str> {
                let listed = self.iot_hubs.iter().flatten().map(String::as_str);
                listed
                    .chain(self.iot_hub_host_name.as_deref())
                    .filter(|h| !h.is_empty())
                    .collect()
            }
            async fn put(
                engine: &Engine,
                now: DateTime<Utc>,
                doc: Self,
                if_match: Option<String>,
            ) -> Result<(), Error> {
                let id = doc.$id.clone();
                engine.$put(now, &id, doc, if_match.as_deref()).await.map(drop)
            }
            async fn delete(engine: &Engine, id: String, if_match: Option<String>) -> Result<(), Error> {
                engine.$delete(&id, if_match.as_deref()).await
            }
        }
    };
}

enrollment_document!(
    IndividualEnrollment,
    registration_id,
    Kind::Enrollment,
    true,
    put_enrollment,
    delete_enrollment
);
enrollment_document!(
    EnrollmentGroup,
    enrollment_group_id,
    Kind::Group,
    false,
    put_group,
    delete_group
);

/// Validates the path id against the body, completes the attestation (keeping stored secrets),
/// and stamps a new etag and the timestamps. Returns the write condition (`If-Match`, else the
/// body's etag).
fn prepare_write<T: EnrollmentDocument>(
    engine: &Engine,
    now: DateTime<Utc>,
    path_id: &str,
    doc: &mut T,
    stored: Option<&T>,
    if_match: Option<&str>,
) -> Result<WriteCondition, Error> {
    let resource = T::KIND.resource();
    registration_id::validate(path_id).map_err(|source| InvalidArgument::ResourceId { resource, source })?;
    if doc.id().is_empty() {
        *doc.id_mut() = path_id.to_string();
    } else if !doc.id().eq_ignore_ascii_case(path_id) {
        return Err(InvalidArgument::BodyId {
            resource,
            body_id: doc.id().to_string(),
            path_id: path_id.to_string(),
        }
        .into());
    }
    // The hub applies the initial twin when a device registers; checking IoT Hub's twin rules
    // here means a device never fails to register because of its enrollment's twin.
    if let Some(twin) = doc.initial_twin() {
        twin_limits::validate_initial_twin(twin).map_err(|source| InvalidArgument::InitialTwin { resource, source })?;
    }
    // Azure refuses an enrollment naming a hub that is not linked when it is written, so that
    // no device fails later for it.
    let unlinked: Vec<String> = doc
        .named_hubs()
        .into_iter()
        .filter(|h| !engine.is_linked(h))
        .map(str::to_string)
        .collect();
    if !unlinked.is_empty() {
        return Err(InvalidArgument::HubsNotLinked {
            resource,
            hubs: unlinked,
        }
        .into());
    }
    if let (Some(AllocationPolicy::Custom), definition) = doc.allocation() {
        check_webhook(definition).map_err(|reason| InvalidArgument::CustomAllocation { resource, reason })?;
    }
    let cond = condition(if_match, doc.etag_mut().as_deref());
    prepare_attestation(
        engine.random.as_ref(),
        doc.attestation_mut(),
        stored.map(|s| s.attestation()),
        T::INDIVIDUAL,
        &engine.config.tpm_manufacturer_roots,
        now,
    )
    .map_err(InvalidArgument::Attestation)?;
    *doc.etag_mut() = Some(engine.new_etag());
    doc.set_times(stored.and_then(|s| s.created()).unwrap_or(now), now);
    Ok(cond)
}

/// A custom allocation definition as Azure requires one: an `https` webhook URL with a host,
/// and the API version of the requests it takes.
fn check_webhook(definition: Option<&CustomAllocationDefinition>) -> Result<(), String> {
    let d = definition.ok_or("custom allocation needs customAllocationDefinition {webhookUrl, apiVersion}")?;
    let url: http::Uri = d
        .webhook_url
        .parse()
        .map_err(|e| format!("customAllocationDefinition.webhookUrl is not a URL ({e})"))?;
    if url.scheme_str() != Some("https") || url.host().is_none_or(str::is_empty) {
        return Err(format!(
            "customAllocationDefinition.webhookUrl must be https://host/…, not '{}'",
            d.webhook_url.split('?').next().unwrap_or_default()
        ));
    }
    if d.api_version.trim().is_empty() {
        return Err("customAllocationDefinition.apiVersion is required (e.g. 2021-10-01)".into());
    }
    Ok(())
}

/// Runs a bulk operation item by item: per-item failures are reported, not fatal.
async fn run_bulk<T: EnrollmentDocument>(
    engine: &Engine,
    now: DateTime<Utc>,
    mode: BulkMode,
    items: Vec<T>,
) -> Result<BulkOperationResult, Error> {
    let ids: Vec<String> = items.iter().map(|i| i.id().to_string()).collect();
    check_bulk(&ids)?;
    let mut errors = Vec::new();
    for mut item in items {
        let id = item.id().to_string();
        let etag = item.etag_mut().clone();
        let result = match mode {
            BulkMode::Create => {
                *item.etag_mut() = None;
                T::put(engine, now, item, None).await
            }
            BulkMode::Update => T::put(engine, now, item, etag).await,
            BulkMode::UpdateIfMatchEtag => match etag {
                Some(t) => T::put(engine, now, item, Some(t)).await,
                None => Err(T::KIND.map(StoreError::EtagMismatch, &id)),
            },
            BulkMode::Delete => T::delete(engine, id.clone(), etag).await,
        };
        if let Err(err) = result {
            let (registration_id, enrollment_group_id) = match T::KIND {
                Kind::Group => (None, Some(id)),
                _ => (Some(id), None),
            };
            errors.push(BulkOperationError {
                registration_id,
                enrollment_group_id,
                error_code: err.code(),
                error_status: err.to_string(),
            });
        }
    }
    Ok(BulkOperationResult {
        is_successful: errors.is_empty(),
        errors,
    })
}

impl Engine {
    // ---------------------------------------------------------------- individual enrollments

    /// `PUT /enrollments/{id}`.
    pub async fn put_enrollment(
        &self,
        now: DateTime<Utc>,
        id: &str,
        mut e: IndividualEnrollment,
        if_match: Option<&str>,
    ) -> Result<IndividualEnrollment, Error> {
        if let Some(d) = e.device_id.as_deref().filter(|d| !d.is_empty()) {
            validate_device_id(d)?;
        }
        self.check_named_credential_policy(
            Resource::Enrollment,
            e.credential_policy_name.as_deref(),
            e.client_certificate_issuance_policy.as_ref(),
        )
        .await?;
        let stored = self.store.get_enrollment(id).await?;
        let cond = prepare_write(self, now, id, &mut e, stored.as_ref(), if_match)?;
        e.registration_state = None;
        let written = self.store.put_enrollment(&e, &cond).await;
        // After the write (committed or not): a read that raced it must not stay remembered.
        self.absent.forget(&registration_id::key(id));
        written.map_err(|err| Kind::Enrollment.map(err, id))?;
        strip_certificates(&mut e.attestation);
        Ok(e)
    }

    /// `GET /enrollments/{id}`: secrets stripped, registration state embedded.
    pub async fn get_enrollment(&self, id: &str) -> Result<IndividualEnrollment, Error> {
        let mut e = self
            .store
            .get_enrollment(id)
            .await?
            .ok_or_else(|| Kind::Enrollment.not_found(id))?;
        strip_secrets(&mut e.attestation);
        let state = self.store.get_registration(id).await?.map(|r| service_view(r.state));
        e.registration_state = Some(state.unwrap_or_else(|| RegistrationState {
            registration_id: e.registration_id.clone(),
            status: RegistrationStatus::Unassigned,
            ..Default::default()
        }));
        Ok(e)
    }

    /// `DELETE /enrollments/{id}` (also deletes its registration record).
    pub async fn delete_enrollment(&self, id: &str, if_match: Option<&str>) -> Result<(), Error> {
        let deleted = self
            .store
            .delete_enrollment(id, &WriteCondition::from_if_match(if_match))
            .await;
        self.absent.forget(&registration_id::key(id));
        deleted.map_err(|e| Kind::Enrollment.map(e, id))
    }

    /// `POST /enrollments/{id}/attestationmechanism`: the attestation with its secrets.
    pub async fn enrollment_attestation(&self, id: &str) -> Result<AttestationMechanism, Error> {
        let mut e = self
            .store
            .get_enrollment(id)
            .await?
            .ok_or_else(|| Kind::Enrollment.not_found(id))?;
        strip_certificates(&mut e.attestation);
        Ok(e.attestation)
    }

    /// `POST /enrollments/query`: a page of the enrollments that match `query`'s `WHERE`
    /// (empty, or without `WHERE`: all of them), as the service API shows them.
    pub async fn query_enrollments(
        &self,
        query: &str,
        continuation: Option<&str>,
        page: Option<usize>,
    ) -> Result<Page<IndividualEnrollment>, Error> {
        let scan = Scan::new(query, "enrollments", continuation, page)?;
        scan.run(
            |after, n| async move { self.store.list_enrollments(after.as_deref(), n).await },
            |e| registration_id::key(&e.registration_id),
            |e| {
                strip_secrets(&mut e.attestation);
                e.registration_state = None;
            },
        )
        .await
    }

    /// `POST /enrollments`: bulk create/update/delete of up to 10 enrollments.
    pub async fn bulk_enrollments(
        &self,
        now: DateTime<Utc>,
        op: BulkEnrollmentOperation,
    ) -> Result<BulkOperationResult, Error> {
        run_bulk(self, now, op.mode, op.enrollments).await
    }

    // ---------------------------------------------------------------- enrollment groups

    /// `PUT /enrollmentGroups/{id}`.
    pub async fn put_group(
        &self,
        now: DateTime<Utc>,
        id: &str,
        mut g: EnrollmentGroup,
        if_match: Option<&str>,
    ) -> Result<EnrollmentGroup, Error> {
        self.check_named_credential_policy(
            Resource::Group,
            g.credential_policy_name.as_deref(),
            g.client_certificate_issuance_policy.as_ref(),
        )
        .await?;
        let stored = self.store.get_group(id).await?;
        let cond = prepare_write(self, now, id, &mut g, stored.as_ref(), if_match)?;
        let result = self
            .store
            .put_group(&g, &cond)
            .await
            .map_err(|err| Kind::Group.map(err, id));
        self.groups.reload(self.store.as_ref()).await?;
        result?;
        strip_certificates(&mut g.attestation);
        Ok(g)
    }

    /// `GET /enrollmentGroups/{id}`: secrets stripped.
    pub async fn get_group(&self, id: &str) -> Result<EnrollmentGroup, Error> {
        let mut g = self
            .store
            .get_group(id)
            .await?
            .ok_or_else(|| Kind::Group.not_found(id))?;
        strip_secrets(&mut g.attestation);
        Ok(g)
    }

    /// `DELETE /enrollmentGroups/{id}` (registration records stay, as in Azure).
    pub async fn delete_group(&self, id: &str, if_match: Option<&str>) -> Result<(), Error> {
        let result = self
            .store
            .delete_group(id, &WriteCondition::from_if_match(if_match))
            .await
            .map_err(|e| Kind::Group.map(e, id));
        self.groups.reload(self.store.as_ref()).await?;
        result
    }

    /// `POST /enrollmentGroups/{id}/attestationmechanism`.
    pub async fn group_attestation(&self, id: &str) -> Result<AttestationMechanism, Error> {
        let mut g = self
            .store
            .get_group(id)
            .await?
            .ok_or_else(|| Kind::Group.not_found(id))?;
        strip_certificates(&mut g.attestation);
        Ok(g.attestation)
    }

    /// `POST /enrollmentGroups/query`: as [`Engine::query_enrollments`], over groups.
    pub async fn query_groups(
        &self,
        query: &str,
        continuation: Option<&str>,
        page: Option<usize>,
    ) -> Result<Page<EnrollmentGroup>, Error> {
        let scan = Scan::new(query, "enrollmentGroups", continuation, page)?;
        scan.run(
            |after, n| async move { self.store.list_groups(after.as_deref(), n).await },
            |g| registration_id::key(&g.enrollment_group_id),
            |g| strip_secrets(&mut g.attestation),
        )
        .await
    }

    /// `POST /enrollmentGroups`: bulk operation on up to 10 groups.
    pub async fn bulk_groups(
        &self,
        now: DateTime<Utc>,
        op: BulkEnrollmentGroupOperation,
    ) -> Result<BulkOperationResult, Error> {
        run_bulk(self, now, op.mode, op.enrollment_groups).await
    }

    // ---------------------------------------------------------------- registration records

    /// `GET /registrations/{id}`.
    pub async fn get_registration(&self, id: &str) -> Result<RegistrationState, Error> {
        let r = self
            .store
            .get_registration(id)
            .await?
            .ok_or_else(|| Kind::Registration.not_found(id))?;
        Ok(service_view(r.state))
    }

    /// `DELETE /registrations/{id}`: forgets the registration (the hub device stays); the device's
    /// next registration is treated as initial.
    pub async fn delete_registration(&self, id: &str, if_match: Option<&str>) -> Result<(), Error> {
        self.store
            .delete_registration(id, &WriteCondition::from_if_match(if_match))
            .await
            .map_err(|e| Kind::Registration.map(e, id))
    }

    /// `POST /registrations/{id}/reprovision` (dps's own): the device is reprovisioned at its
    /// next registration — allocation runs again over the enrollment's hubs and policy as they
    /// are then, and its data migrates or resets as the enrollment's `migrateDeviceData` says —
    /// even when the enrollment's `updateHubAssignment` is false (the operator's way to move
    /// devices that stick to their hub). Answers the record as `GET` does.
    pub async fn request_reprovision(&self, id: &str) -> Result<RegistrationState, Error> {
        self.store
            .request_reprovision(id)
            .await
            .map_err(|e| Kind::Registration.map(e, id))?;
        tracing::info!(registration = %id, "reprovisioning requested for the next registration");
        self.get_registration(id).await
    }

    /// `POST /registrations/{groupId}/query`: records of devices registered through a group
    /// that match `query`'s `WHERE` (the spec sends no query; Node and C# send one).
    pub async fn query_registrations(
        &self,
        group_id: &str,
        query: &str,
        continuation: Option<&str>,
        page: Option<usize>,
    ) -> Result<Page<RegistrationState>, Error> {
        let scan = Scan::new(query, "deviceRegistrations", continuation, page)?;
        let page = scan
            .run(
                |after, n| async move {
                    let records = self
                        .store
                        .list_registrations_by_group(group_id, after.as_deref(), n)
                        .await?;
                    Ok(records
                        .into_iter()
                        .map(|r| {
                            let key = r.key();
                            (key, service_view(r.state))
                        })
                        .collect())
                },
                |(key, _)| key.clone(),
                |_| {},
            )
            .await?;
        Ok(Page {
            items: page.items.into_iter().map(|(_, state)| state).collect(),
            continuation: page.continuation,
        })
    }

    /// Seconds since the epoch, for SAS checks by the service layer.
    pub fn unix_time(now: DateTime<Utc>) -> u64 {
        unix(now)
    }
}

/// The service API shows a registration record without the device-result blocks.
fn service_view(mut state: RegistrationState) -> RegistrationState {
    state.x509 = None;
    state.tpm = None;
    state.symmetric_key = None;
    state.issued_certificate_chain = None;
    state.issued_client_certificate = None;
    state
}

fn check_bulk(ids: &[String]) -> Result<(), BulkInvalid> {
    if ids.is_empty() {
        return Err(BulkInvalid::Empty);
    }
    if ids.len() > BULK_MAX {
        return Err(BulkInvalid::TooMany {
            count: ids.len(),
            max: BULK_MAX,
        });
    }
    let mut seen = std::collections::HashSet::new();
    for id in ids {
        if id.is_empty() {
            return Err(BulkInvalid::NoId);
        }
        if !seen.insert(registration_id::key(id)) {
            return Err(BulkInvalid::Duplicate(id.clone()));
        }
    }
    Ok(())
}

/// IoT Hub device-id rules: ≤128 ASCII letters, digits and `- . % _ * ? ! ( ) , : = @ $ '`.
fn validate_device_id(id: &str) -> Result<(), InvalidArgument> {
    let ok = id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.%_*?!(),:=@$'".contains(c));
    if ok {
        Ok(())
    } else {
        Err(InvalidArgument::DeviceId(id.to_string()))
    }
}

//! The store conformance suite: every [`Store`] backend runs exactly these checks
//! (`dps-store` runs them against SQLite and PostgreSQL).

use chrono::{TimeZone, Utc};
use dps_proto::model::service::{
    AttestationMechanism, AttestationType, EnrollmentGroup, IndividualEnrollment, LinkedHubDescription,
    RegistrationState, RegistrationStatus, SymmetricKeyAttestation,
};

use super::{
    CaCertificateRecord, CredentialPolicyRecord, PreviousAssignment, RegistrationIntent, RegistrationRecord, Store,
    StoreError, WriteCondition,
};
use crate::hub::{DeviceAuth, DeviceProvisioning, TwinPolicy};

fn enrollment(id: &str, etag: &str) -> IndividualEnrollment {
    IndividualEnrollment {
        registration_id: id.into(),
        etag: Some(etag.into()),
        attestation: AttestationMechanism {
            kind: AttestationType::SymmetricKey,
            symmetric_key: Some(SymmetricKeyAttestation {
                primary_key: Some("cHJpbWFyeQ==".into()),
                secondary_key: None,
            }),
            ..Default::default()
        },
        created_date_time_utc: Some(Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 5).unwrap()),
        ..Default::default()
    }
}

fn group(id: &str, etag: &str) -> EnrollmentGroup {
    EnrollmentGroup {
        enrollment_group_id: id.into(),
        etag: Some(etag.into()),
        ..Default::default()
    }
}

fn record(id: &str, group: Option<&str>, etag: &str) -> RegistrationRecord {
    RegistrationRecord {
        state: RegistrationState {
            registration_id: id.into(),
            status: RegistrationStatus::Assigned,
            assigned_hub: Some("hub.example.test".into()),
            device_id: Some(id.into()),
            etag: Some(etag.into()),
            ..Default::default()
        },
        enrollment_group_id: group.map(Into::into),
        attestation: AttestationType::SymmetricKey,
        operation_id: Some("4.op".into()),
        reprovision_requested: false,
    }
}

/// Runs every check. Each check uses its own ids, so a backend needs to start empty only once.
pub async fn run_all(store: &dyn Store) {
    enrollments_crud_and_etags(store).await;
    enrollments_are_case_insensitive_and_paged(store).await;
    groups_crud(store).await;
    registrations(store).await;
    deleting_an_enrollment_deletes_its_record(store).await;
    failed_preconditions_change_nothing(store).await;
    deleting_a_group_keeps_its_records(store).await;
    certificates(store).await;
    credential_policies(store).await;
    revocations(store).await;
    registration_intents(store).await;
    linked_hubs(store).await;
    reprovision_requests(store).await;
    audit_trail(store).await;
    spent_nonces(store).await;
}

/// A nonce is spent once: the first spend says so, every later one says it was spent already
/// (another nonce is its own); one expired is dropped by a later spend, so only unexpired ones
/// are kept.
async fn spent_nonces(s: &dyn Store) {
    let at = |secs: i64| Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap();
    assert!(s.spend_nonce(at(0), "nonce-a", at(900)).await.unwrap());
    assert!(!s.spend_nonce(at(0), "nonce-a", at(900)).await.unwrap());
    assert!(
        !s.spend_nonce(at(10), "nonce-a", at(910)).await.unwrap(),
        "spent is spent"
    );
    assert!(s.spend_nonce(at(0), "nonce-b", at(60)).await.unwrap());
    // At 100 s nonce-b has expired (its token is refused by then) and goes; nonce-a stays.
    assert!(s.spend_nonce(at(100), "nonce-c", at(1000)).await.unwrap());
    assert!(s.spend_nonce(at(100), "nonce-b", at(1000)).await.unwrap());
    assert!(!s.spend_nonce(at(100), "nonce-a", at(1000)).await.unwrap());
}

/// Entries come back in the order appended, each with its sequence, filtered by time,
/// registration id (any case), outcome and kind, a page continuing after the last; retention
/// removes the old ones and keeps the sequence going.
async fn audit_trail(s: &dyn Store) {
    use crate::audit::{AuditEntry, AuditFilter, AuditKind};
    let at = |secs: i64| Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap();
    let attempt = |secs: i64, id: &str, outcome: &str| {
        let mut e = AuditEntry::new(at(secs), AuditKind::Registration, outcome);
        e.registration_id = Some(id.into());
        e.transport = Some("mqtt".into());
        e
    };
    let mut change = AuditEntry::new(at(5), AuditKind::Change, "succeeded");
    change.policy = Some("provisioningserviceowner".into());
    change.operation = Some("PUT /enrollments/Audit-1".into());
    change.registration_id = Some("Audit-1".into());
    change.fields = vec!["attestation".into(), "provisioningStatus".into()];
    s.append_audit(&[
        attempt(1, "Audit-1", "refused"),
        attempt(2, "audit-2", "assigned"),
        change.clone(),
    ])
    .await
    .unwrap();
    s.append_audit(&[attempt(10, "AUDIT-1", "Assigned")]).await.unwrap();
    s.append_audit(&[]).await.unwrap();

    let all = s.query_audit(&AuditFilter::default(), 100).await.unwrap();
    assert_eq!(all.len(), 4);
    assert!(all.windows(2).all(|w| w[0].sequence < w[1].sequence), "{all:?}");
    assert!(all[0].sequence > 0);
    let mut stored = change.clone();
    stored.sequence = all[2].sequence;
    assert_eq!(all[2], stored, "an entry reads back as written");

    let of = |filter: AuditFilter| async move {
        s.query_audit(&filter, 100)
            .await
            .unwrap()
            .iter()
            .map(|e| e.time.timestamp() - 1_800_000_000)
            .collect::<Vec<_>>()
    };
    let id = |id: &str| Some(id.to_string());
    assert_eq!(
        of(AuditFilter {
            registration_id: id("audit-1"),
            ..Default::default()
        })
        .await,
        [1, 5, 10]
    );
    assert_eq!(
        of(AuditFilter {
            registration_id: id("AUDIT-1"),
            outcome: id("assigned"),
            ..Default::default()
        })
        .await,
        [10]
    );
    assert_eq!(
        of(AuditFilter {
            kind: Some(AuditKind::Change),
            ..Default::default()
        })
        .await,
        [5]
    );
    assert_eq!(
        of(AuditFilter {
            since: Some(at(2)),
            until: Some(at(10)),
            ..Default::default()
        })
        .await,
        [2, 5]
    );
    assert_eq!(
        of(AuditFilter {
            after: Some(all[1].sequence),
            ..Default::default()
        })
        .await,
        [5, 10]
    );
    let page = s.query_audit(&AuditFilter::default(), 2).await.unwrap();
    assert_eq!(page.len(), 2);

    s.prune_audit(at(5)).await.unwrap();
    assert_eq!(of(AuditFilter::default()).await, [5, 10]);
    s.append_audit(&[attempt(11, "audit-3", "failed")]).await.unwrap();
    let after = s.query_audit(&AuditFilter::default(), 100).await.unwrap();
    assert!(
        after[2].sequence > all[3].sequence,
        "the sequence goes on after pruning"
    );
}

async fn reprovision_requests(s: &dyn Store) {
    let r = record("reprov-1", Some("grp-r"), "r1");
    s.commit_registration(&r).await.unwrap();
    s.request_reprovision("REPROV-1").await.unwrap();
    let marked = s.get_registration("reprov-1").await.unwrap().unwrap();
    assert!(marked.reprovision_requested);
    assert_eq!(
        RegistrationRecord {
            reprovision_requested: false,
            ..marked
        },
        r,
        "nothing else changed"
    );
    // The next commit (the device's registration) clears it.
    s.commit_registration(&r).await.unwrap();
    assert!(
        !s.get_registration("reprov-1")
            .await
            .unwrap()
            .unwrap()
            .reprovision_requested
    );
    assert_eq!(s.request_reprovision("reprov-none").await, Err(StoreError::NotFound));
}

async fn linked_hubs(s: &dyn Store) {
    let hub = |name: &str, weight: u32| LinkedHubDescription {
        name: name.into(),
        connection_string: format!("HostName={name};SharedAccessKeyName=iothubowner;SharedAccessKey=a2V5"),
        allocation_weight: Some(weight),
        location: Some("westeurope".into()),
        ..Default::default()
    };
    assert_eq!(s.list_linked_hubs().await.unwrap(), vec![]);
    s.put_linked_hub(&hub("Hub-B.example.test", 1)).await.unwrap();
    s.put_linked_hub(&hub("hub-a.example.test", 1)).await.unwrap();
    // A write under the same name in another case replaces it.
    s.put_linked_hub(&hub("hub-b.example.test", 7)).await.unwrap();
    assert_eq!(
        s.list_linked_hubs().await.unwrap(),
        vec![hub("hub-a.example.test", 1), hub("hub-b.example.test", 7)]
    );
    s.delete_linked_hub("HUB-A.example.test").await.unwrap();
    assert_eq!(
        s.delete_linked_hub("hub-a.example.test").await,
        Err(StoreError::NotFound)
    );
    assert_eq!(s.list_linked_hubs().await.unwrap(), vec![hub("hub-b.example.test", 7)]);
    s.delete_linked_hub("hub-b.example.test").await.unwrap();
}

async fn enrollments_crud_and_etags(s: &dyn Store) {
    let e = enrollment("crud-1", "e1");
    assert_eq!(s.get_enrollment("crud-1").await.unwrap(), None);
    s.put_enrollment(&e, &WriteCondition::None).await.unwrap();
    assert_eq!(s.get_enrollment("crud-1").await.unwrap(), Some(e.clone()));
    assert_eq!(
        s.put_enrollment(&e, &WriteCondition::None).await,
        Err(StoreError::AlreadyExists)
    );
    let e2 = enrollment("crud-1", "e2");
    assert_eq!(
        s.put_enrollment(&e2, &WriteCondition::Etag("stale".into())).await,
        Err(StoreError::EtagMismatch)
    );
    s.put_enrollment(&e2, &WriteCondition::Etag("e1".into())).await.unwrap();
    assert_eq!(
        s.get_enrollment("crud-1").await.unwrap().unwrap().etag.as_deref(),
        Some("e2")
    );
    s.put_enrollment(&enrollment("crud-1", "e3"), &WriteCondition::Any)
        .await
        .unwrap();
    assert_eq!(
        s.put_enrollment(&enrollment("crud-absent", "x"), &WriteCondition::Etag("x".into()))
            .await,
        Err(StoreError::NotFound)
    );
    assert_eq!(
        s.delete_enrollment("crud-1", &WriteCondition::Etag("e2".into())).await,
        Err(StoreError::EtagMismatch)
    );
    s.delete_enrollment("crud-1", &WriteCondition::Etag("e3".into()))
        .await
        .unwrap();
    assert_eq!(
        s.delete_enrollment("crud-1", &WriteCondition::None).await,
        Err(StoreError::NotFound)
    );
    assert_eq!(s.get_enrollment("crud-1").await.unwrap(), None);
}

async fn enrollments_are_case_insensitive_and_paged(s: &dyn Store) {
    for i in 0..7 {
        s.put_enrollment(&enrollment(&format!("Page-{i}"), "p"), &WriteCondition::None)
            .await
            .unwrap();
    }
    let got = s.get_enrollment("PAGE-3").await.unwrap().unwrap();
    assert_eq!(got.registration_id, "Page-3", "original casing is kept");
    let mut seen = vec![];
    let mut after: Option<String> = None;
    loop {
        let page = s.list_enrollments(after.as_deref(), 3).await.unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|e| e.registration_id.clone());
        seen.extend(
            page.into_iter()
                .map(|e| e.registration_id)
                .filter(|id| id.starts_with("Page-")),
        );
    }
    assert_eq!(seen, (0..7).map(|i| format!("Page-{i}")).collect::<Vec<_>>());
    for i in 0..7 {
        s.delete_enrollment(&format!("page-{i}"), &WriteCondition::Any)
            .await
            .unwrap();
    }
}

async fn groups_crud(s: &dyn Store) {
    s.put_group(&group("Grp-1", "g1"), &WriteCondition::None).await.unwrap();
    assert_eq!(
        s.put_group(&group("grp-1", "g2"), &WriteCondition::None).await,
        Err(StoreError::AlreadyExists)
    );
    s.put_group(&group("grp-1", "g2"), &WriteCondition::Etag("g1".into()))
        .await
        .unwrap();
    assert_eq!(s.get_group("GRP-1").await.unwrap().unwrap().etag.as_deref(), Some("g2"));
    s.put_group(&group("grp-2", "g"), &WriteCondition::None).await.unwrap();
    let all = s.list_groups(None, 100).await.unwrap();
    assert!(all.iter().any(|g| g.enrollment_group_id == "grp-2"));
    assert_eq!(
        s.list_groups(Some("grp-1"), 100)
            .await
            .unwrap()
            .first()
            .map(|g| g.enrollment_group_id.as_str()),
        Some("grp-2")
    );
    s.delete_group("grp-1", &WriteCondition::None).await.unwrap();
    s.delete_group("grp-2", &WriteCondition::None).await.unwrap();
    assert_eq!(s.get_group("grp-1").await.unwrap(), None);
}

async fn registrations(s: &dyn Store) {
    s.commit_registration(&record("Reg-1", Some("g-a"), "r1"))
        .await
        .unwrap();
    s.commit_registration(&record("reg-2", Some("G-A"), "r2"))
        .await
        .unwrap();
    s.commit_registration(&record("reg-3", None, "r3")).await.unwrap();
    let r = s.get_registration("REG-1").await.unwrap().unwrap();
    assert_eq!(r, record("Reg-1", Some("g-a"), "r1"));
    // Replacing keeps one row.
    s.commit_registration(&record("reg-1", Some("g-a"), "r1b"))
        .await
        .unwrap();
    assert_eq!(
        s.get_registration("reg-1")
            .await
            .unwrap()
            .unwrap()
            .state
            .etag
            .as_deref(),
        Some("r1b")
    );
    let by_group = s.list_registrations_by_group("g-A", None, 10).await.unwrap();
    assert_eq!(
        by_group.iter().map(|r| r.key()).collect::<Vec<_>>(),
        vec!["reg-1", "reg-2"]
    );
    assert_eq!(
        s.list_registrations_by_group("g-a", Some("reg-1"), 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        s.delete_registration("reg-2", &WriteCondition::Etag("nope".into()))
            .await,
        Err(StoreError::EtagMismatch)
    );
    s.delete_registration("reg-2", &WriteCondition::Etag("r2".into()))
        .await
        .unwrap();
    assert_eq!(
        s.delete_registration("reg-2", &WriteCondition::None).await,
        Err(StoreError::NotFound)
    );
    // Concurrent commits all land.
    let futs: Vec<_> = (0..50).map(|i| record(&format!("conc-{i}"), None, "c")).collect();
    let results = futures_join(s, &futs).await;
    assert!(results.iter().all(Result::is_ok));
    for i in 0..50 {
        assert!(s.get_registration(&format!("conc-{i}")).await.unwrap().is_some());
    }
}

async fn futures_join(s: &dyn Store, recs: &[RegistrationRecord]) -> Vec<Result<(), StoreError>> {
    // No futures crate here: drive the commits concurrently by polling them all in one task.
    let futs: Vec<_> = recs.iter().map(|r| s.commit_registration(r)).collect();
    join_all(futs).await
}

async fn join_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    use std::pin::Pin;
    use std::task::Poll;
    let mut futs: Vec<Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = (0..futs.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in futs.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => out[i] = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|o| o.expect("all ready")).collect()
}

async fn deleting_an_enrollment_deletes_its_record(s: &dyn Store) {
    s.put_enrollment(&enrollment("with-rec", "w"), &WriteCondition::None)
        .await
        .unwrap();
    s.commit_registration(&record("with-rec", None, "r")).await.unwrap();
    s.delete_enrollment("WITH-REC", &WriteCondition::None).await.unwrap();
    assert_eq!(s.get_registration("with-rec").await.unwrap(), None);
}

async fn failed_preconditions_change_nothing(s: &dyn Store) {
    let original = enrollment("pre-1", "v1");
    s.put_enrollment(&original, &WriteCondition::None).await.unwrap();
    let mut changed = enrollment("pre-1", "v2");
    changed.device_id = Some("other".into());
    assert_eq!(
        s.put_enrollment(&changed, &WriteCondition::None).await,
        Err(StoreError::AlreadyExists)
    );
    assert_eq!(
        s.put_enrollment(&changed, &WriteCondition::Etag("stale".into())).await,
        Err(StoreError::EtagMismatch)
    );
    assert_eq!(s.get_enrollment("pre-1").await.unwrap(), Some(original));
    s.delete_enrollment("pre-1", &WriteCondition::None).await.unwrap();
}

async fn deleting_a_group_keeps_its_records(s: &dyn Store) {
    s.put_group(&group("Keep-G", "k"), &WriteCondition::None).await.unwrap();
    s.commit_registration(&record("keep-dev", Some("Keep-G"), "r"))
        .await
        .unwrap();
    s.delete_group("keep-g", &WriteCondition::None).await.unwrap();
    assert!(
        s.get_registration("keep-dev").await.unwrap().is_some(),
        "Azure keeps orphaned records"
    );
    // Paging with a mixed-case `after` pages by the lower-cased key.
    let page = s
        .list_registrations_by_group("KEEP-G", Some("KEEP-DEV"), 10)
        .await
        .unwrap();
    assert!(page.is_empty());
    s.delete_registration("keep-dev", &WriteCondition::None).await.unwrap();
}

async fn certificates(s: &dyn Store) {
    let t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let cert = |etag: &str, verified: bool| CaCertificateRecord {
        name: "Root-CA".into(),
        etag: etag.into(),
        certificate: "MIIB".into(),
        is_verified: verified,
        verification_code: (!verified).then(|| "ABC123".into()),
        created: t,
        updated: t,
    };
    assert_eq!(s.get_certificate("root-ca").await.unwrap(), None);
    s.put_certificate(&cert("c1", false), &WriteCondition::None)
        .await
        .unwrap();
    assert_eq!(
        s.put_certificate(&cert("c2", false), &WriteCondition::None).await,
        Err(StoreError::AlreadyExists)
    );
    assert_eq!(
        s.put_certificate(&cert("c2", true), &WriteCondition::Etag("stale".into()))
            .await,
        Err(StoreError::EtagMismatch)
    );
    s.put_certificate(&cert("c2", true), &WriteCondition::Etag("c1".into()))
        .await
        .unwrap();
    let got = s.get_certificate("ROOT-CA").await.unwrap().unwrap();
    assert_eq!(got, cert("c2", true));
    assert_eq!(s.list_certificates().await.unwrap(), vec![cert("c2", true)]);
    assert_eq!(
        s.delete_certificate("root-ca", &WriteCondition::Etag("c1".into()))
            .await,
        Err(StoreError::EtagMismatch)
    );
    s.delete_certificate("root-ca", &WriteCondition::None).await.unwrap();
    assert_eq!(
        s.delete_certificate("root-ca", &WriteCondition::None).await,
        Err(StoreError::NotFound)
    );
    assert!(s.list_certificates().await.unwrap().is_empty());
}

/// Credential policies: created once, replaced and deleted under their etag, found in any case,
/// listed by name, the CA key kept exactly.
async fn credential_policies(s: &dyn Store) {
    use dps_proto::model::credential_policy::CertificateAuthorityKind;
    let t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let policy = |name: &str, etag: &str, days: u32| CredentialPolicyRecord {
        name: name.into(),
        etag: etag.into(),
        key_type: "P-256".into(),
        validity_in_days: days,
        kind: CertificateAuthorityKind::BuiltIn,
        ca_certificates: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
        ca_key: "-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n".into(),
        created: t,
        updated: t,
    };
    assert_eq!(s.get_credential_policy("fleet").await.unwrap(), None);
    s.put_credential_policy(&policy("Fleet", "p1", 30), &WriteCondition::None)
        .await
        .unwrap();
    s.put_credential_policy(&policy("another", "a1", 7), &WriteCondition::None)
        .await
        .unwrap();
    assert_eq!(
        s.put_credential_policy(&policy("FLEET", "p2", 30), &WriteCondition::None)
            .await,
        Err(StoreError::AlreadyExists)
    );
    assert_eq!(
        s.put_credential_policy(&policy("Fleet", "p2", 90), &WriteCondition::Etag("stale".into()))
            .await,
        Err(StoreError::EtagMismatch)
    );
    s.put_credential_policy(&policy("Fleet", "p2", 90), &WriteCondition::Etag("p1".into()))
        .await
        .unwrap();
    assert_eq!(
        s.get_credential_policy("fLEET").await.unwrap(),
        Some(policy("Fleet", "p2", 90))
    );
    assert_eq!(
        s.list_credential_policies().await.unwrap(),
        vec![policy("another", "a1", 7), policy("Fleet", "p2", 90)]
    );
    assert_eq!(
        s.delete_credential_policy("fleet", &WriteCondition::Etag("p1".into()))
            .await,
        Err(StoreError::EtagMismatch)
    );
    s.delete_credential_policy("fleet", &WriteCondition::None)
        .await
        .unwrap();
    s.delete_credential_policy("another", &WriteCondition::Any)
        .await
        .unwrap();
    assert_eq!(
        s.delete_credential_policy("fleet", &WriteCondition::None).await,
        Err(StoreError::NotFound)
    );
    assert!(s.list_credential_policies().await.unwrap().is_empty());
}

/// Revocations: written and removed together, listed by id in pages, removing an absent one
/// is fine.
async fn revocations(s: &dyn Store) {
    use dps_proto::model::revocation::Revocation;
    let entry = |id: &str, serial: &str| Revocation {
        id: id.into(),
        issuer: Some("CN=Conformance Root".into()),
        serial_number: Some(serial.into()),
        source: "crl".into(),
        revoked_date_time_utc: Some(Utc.with_ymd_and_hms(2026, 2, 3, 4, 5, 6).unwrap()),
        ..Default::default()
    };
    assert_eq!(s.get_revocation("sn-a").await.unwrap(), None);
    s.change_revocations(&[entry("sn-a", "0A"), entry("sn-b", "0B"), entry("sn-c", "0C")], &[])
        .await
        .unwrap();
    assert_eq!(s.get_revocation("sn-b").await.unwrap(), Some(entry("sn-b", "0B")));
    let first = s.list_revocations(None, 2).await.unwrap();
    assert_eq!(first, vec![entry("sn-a", "0A"), entry("sn-b", "0B")]);
    assert_eq!(
        s.list_revocations(Some("sn-b"), 2).await.unwrap(),
        vec![entry("sn-c", "0C")]
    );
    // A new list replaces the old in one commit.
    s.change_revocations(
        &[entry("sn-d", "0D"), entry("sn-a", "AA")],
        &["sn-b".into(), "sn-c".into(), "gone".into()],
    )
    .await
    .unwrap();
    assert_eq!(
        s.list_revocations(None, 10).await.unwrap(),
        vec![entry("sn-a", "AA"), entry("sn-d", "0D")]
    );
    s.change_revocations(&[], &["sn-a".into(), "sn-d".into()])
        .await
        .unwrap();
    assert!(s.list_revocations(None, 10).await.unwrap().is_empty());
}

fn intent(operation_id: &str, registration_id: &str) -> RegistrationIntent {
    let mut r = record(registration_id, Some("intent-group"), &format!("etag-{operation_id}"));
    r.operation_id = Some(operation_id.into());
    RegistrationIntent {
        operation_id: operation_id.into(),
        hub: "hub.example.test".into(),
        device: DeviceProvisioning {
            device_id: registration_id.into(),
            auth: DeviceAuth::Sas {
                primary_key: "cHJpbWFyeQ==".into(),
                secondary_key: "c2Vjb25kYXJ5".into(),
            },
            capabilities: Default::default(),
            initial_twin: None,
            twin_policy: TwinPolicy::Reset,
            operation_id: operation_id.into(),
            credential_policy: None,
        },
        record: r,
        previous: Some(PreviousAssignment {
            hub: Some("old-hub.example.test".into()),
            device_id: Some(registration_id.into()),
            substatus: Some(dps_proto::model::service::Substatus::InitialAssignment),
        }),
    }
}

/// Intents are stored whole, listed in operation-id order, and the record commit of their
/// operation removes them in the same transaction (and no other intent).
async fn registration_intents(s: &dyn Store) {
    let list = |after: Option<&'static str>, limit| s.list_registration_intents(after, limit);
    assert!(list(None, 10).await.unwrap().is_empty());
    let (a, b, c) = (
        intent("4.aa.1", "int-a"),
        intent("4.bb.2", "int-b"),
        intent("4.cc.3", "int-c"),
    );
    for i in [&c, &a, &b] {
        s.put_registration_intent(i).await.unwrap();
    }
    assert_eq!(list(None, 10).await.unwrap(), vec![a.clone(), b.clone(), c.clone()]);
    assert_eq!(list(None, 1).await.unwrap(), vec![a.clone()]);
    assert_eq!(list(Some("4.aa.1"), 10).await.unwrap(), vec![b.clone(), c.clone()]);
    // Same operation id: replaced, not duplicated.
    let mut b2 = b.clone();
    b2.hub = "hub2.example.test".into();
    s.put_registration_intent(&b2).await.unwrap();
    assert_eq!(list(Some("4.aa.1"), 1).await.unwrap(), vec![b2.clone()]);

    // Committing b's record removes b's intent only.
    s.commit_registration(&b2.record).await.unwrap();
    assert_eq!(s.get_registration("INT-B").await.unwrap(), Some(b2.record.clone()));
    assert_eq!(list(None, 10).await.unwrap(), vec![a.clone(), c.clone()]);
    // A record without an operation id, or of another operation, removes none.
    let mut other = c.record.clone();
    other.operation_id = None;
    s.commit_registration(&other).await.unwrap();
    other.operation_id = Some("4.zz.9".into());
    s.commit_registration(&other).await.unwrap();
    assert_eq!(list(None, 10).await.unwrap(), vec![a.clone(), c.clone()]);

    s.delete_registration_intent("4.aa.1").await.unwrap();
    s.delete_registration_intent("4.aa.1").await.unwrap();
    s.delete_registration_intent("4.cc.3").await.unwrap();
    assert!(list(None, 10).await.unwrap().is_empty());
    for id in ["int-b", "int-c"] {
        s.delete_registration(id, &WriteCondition::None).await.unwrap();
    }
}

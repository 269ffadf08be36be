//! DPS service API (service-api.md §2): enrollments, enrollment groups, registration records,
//! CA certificates with proof of possession, and linked hubs and credential policies (dps's own
//! resources, `ServiceConfig`).
//! Authorized by the DPS shared-access policies; status codes exactly as the Python SDKs expect
//! (PUT 200, DELETE 204, everything else 200).

use crate::ApiError;
use axum::response::Response;
use dps_core::Page;
use dps_proto::model::certificate::{CertificateBody, VerificationCertificate};
use dps_proto::model::credential_policy::{CredentialPolicyBody, CredentialPolicyList};
use dps_proto::model::revocation::{CrlImport, RevocationBody, RevocationList};
use dps_proto::model::service::{
    BulkEnrollmentGroupOperation, BulkEnrollmentOperation, EnrollmentGroup, IndividualEnrollment, LinkedHubDescription,
    LinkedHubList, QuerySpecification,
};
use serde::Serialize;

/// The largest `POST /crls` body: a revocation list of [`dps_pki::crl::MAX_CRL_BYTES`] as PEM
/// (base64, a line break every 64 characters, each escaped in JSON) with room to spare. Larger
/// than the message limit on purpose: a big CA's list is larger than any device message, and only
/// holders of the `ServiceConfig` right, authenticated before the body is read, may send one.
const CRL_IMPORT_BODY_BYTES: usize = dps_pki::crl::MAX_CRL_BYTES / 3 * 4 * 11 / 10 + 64 * 1024;

use super::{no_content, ok, parse_count, set_header, Ctx};
use dps_proto::rest::Route;

const ENROLLMENT_READ: &str = "EnrollmentRead";
const ENROLLMENT_WRITE: &str = "EnrollmentWrite";
const REGISTRATION_READ: &str = "RegistrationStatusRead";
const REGISTRATION_WRITE: &str = "RegistrationStatusWrite";
const SERVICE_CONFIG: &str = "ServiceConfig";

fn right(route: &Route) -> &'static str {
    use Route::*;
    match route {
        GetEnrollment(_)
        | EnrollmentAttestation(_)
        | QueryEnrollments
        | GetGroup(_)
        | GroupAttestation(_)
        | QueryGroups => ENROLLMENT_READ,
        PutEnrollment(_) | DeleteEnrollment(_) | BulkEnrollments | PutGroup(_) | DeleteGroup(_) | BulkGroups => {
            ENROLLMENT_WRITE
        }
        GetRegistration(_) | QueryRegistrations(_) => REGISTRATION_READ,
        DeleteRegistration(_) | ReprovisionRegistration(_) => REGISTRATION_WRITE,
        ListCertificates
        | GetCertificate(_)
        | PutCertificate(_)
        | DeleteCertificate(_)
        | GenerateVerificationCode(_)
        | VerifyCertificate(_)
        | ListCredentialPolicies
        | GetCredentialPolicy(_)
        | PutCredentialPolicy(_)
        | DeleteCredentialPolicy(_)
        | ListRevocations
        | AddRevocation
        | GetRevocation(_)
        | DeleteRevocation(_)
        | ImportCrl
        | ListLinkedHubs
        | GetLinkedHub(_)
        | PutLinkedHub(_)
        | DeleteLinkedHub(_)
        | ListPolicies(_)
        | GetPolicy(..)
        | PutPolicy(..)
        | DeletePolicy(..)
        | RegeneratePolicyKey(..)
        | QueryAudit => SERVICE_CONFIG,
        other => unreachable!("not a service route: {other:?}"),
    }
}

pub(super) async fn handle(ctx: &mut Ctx<'_>, route: Route) -> Result<Response, ApiError> {
    // The audience is judged against this service's own host names, never the Host header.
    let names = ctx.services.config.hostnames.iter().map(String::as_str);
    let caller = ctx.authorize(&ctx.services.dps_auth, names, &route, &[right(&route)])?;
    if let Route::ListPolicies(_)
    | Route::GetPolicy(..)
    | Route::PutPolicy(..)
    | Route::DeletePolicy(..)
    | Route::RegeneratePolicyKey(..) = route
    {
        return super::policies::handle(ctx, route, crate::policies::Whose::Service, caller).await;
    }
    if route == Route::QueryAudit {
        return super::audit::handle(ctx).await;
    }

    let engine = ctx.services.engine.clone();
    let now = ctx.now;
    let if_match = ctx.if_match().map(str::to_string);
    let if_match = if_match.as_deref();
    let resp = match route {
        Route::GetEnrollment(id) => ok(&engine.get_enrollment(&id).await?),
        Route::PutEnrollment(id) => {
            let e: IndividualEnrollment = ctx.json("IndividualEnrollment").await?;
            ok(&engine.put_enrollment(now, &id, e, if_match).await?)
        }
        Route::DeleteEnrollment(id) => {
            engine.delete_enrollment(&id, if_match).await?;
            no_content()
        }
        Route::EnrollmentAttestation(id) => {
            let _ = ctx.body().await?;
            ok(&engine.enrollment_attestation(&id).await?)
        }
        Route::QueryEnrollments => {
            let query = query_text(ctx).await?;
            let (continuation, size) = paging(ctx)?;
            page_response(
                engine.query_enrollments(&query, continuation.as_deref(), size).await?,
                "Enrollment",
            )
        }
        Route::BulkEnrollments => {
            let op: BulkEnrollmentOperation = ctx.json("BulkEnrollmentOperation").await?;
            ok(&engine.bulk_enrollments(now, op).await?)
        }
        Route::GetGroup(id) => ok(&engine.get_group(&id).await?),
        Route::PutGroup(id) => {
            let g: EnrollmentGroup = ctx.json("EnrollmentGroup").await?;
            ok(&engine.put_group(now, &id, g, if_match).await?)
        }
        Route::DeleteGroup(id) => {
            engine.delete_group(&id, if_match).await?;
            no_content()
        }
        Route::GroupAttestation(id) => {
            let _ = ctx.body().await?;
            ok(&engine.group_attestation(&id).await?)
        }
        Route::QueryGroups => {
            let query = query_text(ctx).await?;
            let (continuation, size) = paging(ctx)?;
            page_response(
                engine.query_groups(&query, continuation.as_deref(), size).await?,
                "EnrollmentGroup",
            )
        }
        Route::BulkGroups => {
            let op: BulkEnrollmentGroupOperation = ctx.json("BulkEnrollmentGroupOperation").await?;
            ok(&engine.bulk_groups(now, op).await?)
        }
        Route::GetRegistration(id) => ok(&engine.get_registration(&id).await?),
        Route::DeleteRegistration(id) => {
            engine.delete_registration(&id, if_match).await?;
            no_content()
        }
        Route::ReprovisionRegistration(id) => {
            let _ = ctx.body().await?;
            ok(&engine.request_reprovision(&id).await?)
        }
        Route::QueryRegistrations(group_id) => {
            // Node and C# send a QuerySpecification here; the spec has none (then: every record).
            let query = query_text(ctx).await?;
            let (continuation, size) = paging(ctx)?;
            page_response(
                engine
                    .query_registrations(&group_id, &query, continuation.as_deref(), size)
                    .await?,
                "DeviceRegistration",
            )
        }
        Route::ListLinkedHubs => ok(&LinkedHubList {
            value: engine.list_linked_hubs().await?,
        }),
        Route::GetLinkedHub(name) => ok(&engine.get_linked_hub(&name).await?),
        Route::PutLinkedHub(name) => {
            let hub: LinkedHubDescription = ctx.json("LinkedHubDescription").await?;
            ok(&engine.put_linked_hub(&name, hub).await?)
        }
        Route::DeleteLinkedHub(name) => {
            engine.delete_linked_hub(&name).await?;
            no_content()
        }
        Route::ListCredentialPolicies => ok(&CredentialPolicyList {
            value: engine.list_credential_policies().await?,
        }),
        Route::GetCredentialPolicy(name) => ok(&engine.get_credential_policy(&name).await?),
        Route::PutCredentialPolicy(name) => {
            let body: CredentialPolicyBody = ctx.json("CredentialPolicy").await?;
            ok(&engine.put_credential_policy(now, &name, body, if_match).await?)
        }
        Route::DeleteCredentialPolicy(name) => {
            engine.delete_credential_policy(&name, if_match).await?;
            no_content()
        }
        Route::ListRevocations => {
            let (continuation, size) = paging(ctx)?;
            let page = engine.list_revocations(continuation.as_deref(), size).await?;
            let mut resp = ok(&RevocationList { value: page.items });
            if let Some(c) = page.continuation.as_deref() {
                set_header(&mut resp, "x-ms-continuation", c);
            }
            resp
        }
        Route::AddRevocation => {
            let body: RevocationBody = ctx.json("Revocation").await?;
            ok(&engine.add_revocation(now, body).await?)
        }
        Route::GetRevocation(id) => ok(&engine.get_revocation(&id).await?),
        Route::DeleteRevocation(id) => {
            engine.delete_revocation(&id).await?;
            no_content()
        }
        Route::ImportCrl => {
            let limit = ctx.services.config.max_message_bytes.max(CRL_IMPORT_BODY_BYTES);
            let body: CrlImport = ctx.json_limited("CrlImport", limit).await?;
            ok(&engine.import_crl(body).await?)
        }
        Route::ListCertificates => ok(&engine.list_certificates().await?),
        Route::GetCertificate(name) => ok(&engine.get_certificate(&name).await?),
        Route::PutCertificate(name) => {
            let body: CertificateBody = ctx.json("CertificateBody").await?;
            ok(&engine.put_certificate(now, &name, body, if_match).await?)
        }
        Route::DeleteCertificate(name) => {
            engine.delete_certificate(&name, if_match).await?;
            no_content()
        }
        Route::GenerateVerificationCode(name) => {
            let _ = ctx.body().await?;
            ok(&engine.generate_verification_code(now, &name, if_match).await?)
        }
        Route::VerifyCertificate(name) => {
            let body: VerificationCertificate = ctx.json("VerificationCertificate").await?;
            ok(&engine.verify_certificate(now, &name, if_match, body).await?)
        }
        other => unreachable!("not a service route: {other:?}"),
    };
    Ok(resp)
}

/// `x-ms-continuation` and `x-ms-max-item-count` request headers.
fn paging(ctx: &Ctx<'_>) -> Result<(Option<String>, Option<usize>), ApiError> {
    let continuation = ctx.header("x-ms-continuation").map(str::to_string);
    let size = parse_count(ctx.header("x-ms-max-item-count"), "x-ms-max-item-count")?;
    Ok((continuation, size))
}

/// A query page: bare JSON array, `x-ms-item-type` always, `x-ms-continuation` only when more.
fn page_response<T: Serialize>(page: Page<T>, item_type: &'static str) -> Response {
    let mut resp = ok(&page.items);
    set_header(&mut resp, "x-ms-item-type", item_type);
    if let Some(c) = page.continuation.as_deref().filter(|c| !c.is_empty()) {
        set_header(&mut resp, "x-ms-continuation", c);
    }
    resp
}

/// The text of a query request's optional `QuerySpecification` body (empty: the whole
/// collection).
pub(super) async fn query_text(ctx: &mut Ctx<'_>) -> Result<String, ApiError> {
    let spec: Option<QuerySpecification> = ctx.optional_json("QuerySpecification").await?;
    Ok(spec.map(|s| s.query).unwrap_or_default())
}

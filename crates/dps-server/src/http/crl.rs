//! `GET /crl/{policy}`: a credential policy's revocation list, the CRL distribution point its
//! issued certificates name. Public, as CRLs are: it says only which serial numbers its CA
//! revoked, and its signature is what a verifier trusts. Signed once and served until the policy
//! or the revocations change, or for an hour (`dps_core::Engine::policy_crl`).

use axum::body::Body;
use axum::response::Response;
use dps_proto::rest::Route;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::StatusCode;

use super::Ctx;
use crate::ApiError;

pub(super) async fn handle(ctx: &mut Ctx<'_>, route: Route) -> Result<Response, ApiError> {
    let Route::GetPolicyCrl(name) = route else {
        unreachable!("not a revocation list route: {route:?}")
    };
    let name = name.strip_suffix(".crl").unwrap_or(&name).to_string();
    let der = ctx.services.engine.policy_crl(ctx.now, &name).await?;
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, "application/pkix-crl")
        .header(CACHE_CONTROL, "max-age=3600")
        .body(Body::from(der.to_vec()))
        .expect("a valid response"))
}

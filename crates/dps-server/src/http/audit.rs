//! `GET /audit` on the service API (`ServiceConfig`): the audit trail's entries, oldest first,
//! filtered by `since` and `until` (RFC 3339), `registrationId`, `outcome` and `kind`
//! (`registration`, `change`), at most `top` (1 to 1000, default 100) a page; the next page is
//! asked for with the `x-ms-continuation` header the previous answer carried. `Accept:
//! application/x-ndjson` answers JSON lines (an export); otherwise a JSON array.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use dps_core::audit::{AuditFilter, AuditKind, MAX_AUDIT_PAGE};

use super::{ok, parse_count, set_header, Ctx};
use crate::ApiError;

/// Entries a page holds when `top` is not given.
const DEFAULT_PAGE: usize = 100;

/// The media type of JSON lines.
const NDJSON: &str = "application/x-ndjson";

pub(super) async fn handle(ctx: &mut Ctx<'_>) -> Result<Response, ApiError> {
    let time = |name: &str| -> Result<Option<DateTime<Utc>>, ApiError> {
        ctx.query
            .get(name)
            .map(|text| {
                DateTime::parse_from_rfc3339(text)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|e| ApiError::invalid(format!("{name}: '{text}' is not an RFC 3339 time ({e})")))
            })
            .transpose()
    };
    let text = |name: &str| ctx.query.get(name).filter(|v| !v.is_empty()).map(str::to_string);
    let kind = text("kind")
        .map(|k| {
            AuditKind::parse(&k)
                .ok_or_else(|| ApiError::invalid(format!("kind: '{k}' is neither 'registration' nor 'change'")))
        })
        .transpose()?;
    let after = ctx
        .header("x-ms-continuation")
        .map(|c| {
            c.parse::<u64>()
                .map_err(|_| ApiError::invalid(format!("x-ms-continuation: '{c}' is not one this service gave")))
        })
        .transpose()?;
    let top = parse_count(ctx.query.get("top"), "top")?.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_AUDIT_PAGE).contains(&top) {
        return Err(ApiError::invalid(format!(
            "top must be from 1 to {MAX_AUDIT_PAGE}, not {top}"
        )));
    }
    let filter = AuditFilter {
        since: time("since")?,
        until: time("until")?,
        registration_id: text("registrationId"),
        outcome: text("outcome"),
        kind,
        after,
    };
    let entries = ctx
        .services
        .audit
        .query(&filter, top)
        .await
        .map_err(|e| ApiError::from(dps_core::Error::Storage(e)))?;
    let wants_lines = ctx.header("accept").is_some_and(|a| a.contains(NDJSON));
    let mut resp = if wants_lines {
        let mut lines = String::new();
        for entry in &entries {
            lines.push_str(&serde_json::to_string(entry).expect("entries serialize"));
            lines.push('\n');
        }
        let mut resp = Response::new(Body::from(lines));
        *resp.status_mut() = StatusCode::OK;
        resp.headers_mut()
            .insert(axum::http::header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
        resp
    } else {
        ok(&entries)
    };
    if entries.len() == top {
        if let Some(last) = entries.last() {
            set_header(&mut resp, "x-ms-continuation", &last.sequence.to_string());
        }
    }
    Ok(resp)
}

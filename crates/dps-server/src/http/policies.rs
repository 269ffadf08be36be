//! Shared access policies over REST: `/keys/{keyName}` on the service API, `/iotHubKeys/{keyName}`
//! on a hub's (the paths of Azure's management API, whose `SharedAccessSignatureAuthorizationRule`
//! body they take). Authorized like the rest of each API (`ServiceConfig`, `RegistryWrite`);
//! what the caller may then do is [`dps_core::auth::manage`]'s to say, and keeping the change is
//! [`crate::policies::PolicyBook`]'s.

use std::sync::Arc;

use axum::response::Response;
use dps_core::auth::manage::{KeyToRenew, PolicyScope, PolicyWrite};
use dps_core::auth::SharedAccessPolicy;
use dps_core::error::InvalidArgument;
use dps_proto::model::service::{AuthorizationRule, AuthorizationRuleList, PolicyKeyType, RegenerateKeyRequest};
use dps_proto::rest::Route;

use super::{no_content, ok, Ctx};
use crate::policies::Whose;
use crate::ApiError;

/// Answers a policy route for `whose` policies, asked by `caller` (already authorized).
pub(super) async fn handle(
    ctx: &mut Ctx<'_>,
    route: Route,
    whose: Whose,
    caller: Arc<SharedAccessPolicy>,
) -> Result<Response, ApiError> {
    let book = ctx.services.policies.clone();
    let scope = match whose {
        Whose::Service => PolicyScope::Dps,
        Whose::Hub(_) => PolicyScope::Hub,
    };
    let caller = (*caller).clone();
    let resp = match route {
        Route::ListPolicies(_) => ok(&AuthorizationRuleList {
            value: book
                .read(&whose, &caller, |set| Ok(set.list()))?
                .iter()
                .map(rule)
                .collect(),
        }),
        Route::GetPolicy(_, name) => ok(&rule(&book.read(&whose, &caller, |set| set.show(&name))?)),
        Route::PutPolicy(_, name) => {
            let body: AuthorizationRule = ctx.json("SharedAccessSignatureAuthorizationRule").await?;
            if !body.key_name.is_empty() && !body.key_name.eq_ignore_ascii_case(&name) {
                return Err(invalid(
                    &name,
                    format!("the body's keyName '{}' is not the path's", body.key_name),
                ));
            }
            let rights = body
                .rights
                .as_deref()
                .map(|text| scope.parse_rights(text))
                .transpose()
                .map_err(|reason| invalid(&name, reason))?;
            let write = PolicyWrite {
                rights,
                primary_key: body.primary_key,
                secondary_key: body.secondary_key,
            };
            let (policy, _created) = book
                .change(whose, caller, move |set| {
                    set.put(&name, write, dps_core::auth::manage::new_key)
                })
                .await?;
            ok(&rule(&policy))
        }
        Route::DeletePolicy(_, name) => {
            book.change(whose, caller, move |set| set.delete(&name)).await?;
            no_content()
        }
        Route::RegeneratePolicyKey(_, name) => {
            let body: RegenerateKeyRequest = ctx.json("RegenerateKeyRequest").await?;
            let which = match body.key_type {
                PolicyKeyType::Primary => KeyToRenew::Primary,
                PolicyKeyType::Secondary => KeyToRenew::Secondary,
                PolicyKeyType::Swap => KeyToRenew::Swap,
            };
            let policy = book
                .change(whose, caller, move |set| {
                    set.renew_key(&name, which, dps_core::auth::manage::new_key)
                })
                .await?;
            ok(&rule(&policy))
        }
        other => unreachable!("not a policy route: {other:?}"),
    };
    Ok(resp)
}

/// A policy as the management API writes it (blank keys: not shown to this caller).
fn rule(policy: &SharedAccessPolicy) -> AuthorizationRule {
    let key = |k: &str| (!k.is_empty()).then(|| k.to_string());
    AuthorizationRule {
        key_name: policy.key_name.clone(),
        primary_key: key(&policy.primary_key),
        secondary_key: key(&policy.secondary_key),
        rights: Some(policy.rights.join(", ")),
    }
}

fn invalid(name: &str, reason: String) -> ApiError {
    dps_core::Error::from(InvalidArgument::Policy {
        name: name.to_string(),
        reason,
    })
    .into()
}

//! `dps registration show|list|delete`: device registration records (`az iot dps
//! enrollment-group registration …` / `az iot dps enrollment registration …`).

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde_json::Value;

use crate::output::{self, out, s, to_value};
use crate::remote::DpsTarget;

/// `dps registration …`
#[derive(Subcommand, Debug)]
pub enum RegistrationCommand {
    /// Show a device's registration record.
    Show(RegistrationShow),
    /// List the registration records of the devices of an enrollment group.
    List(RegistrationList),
    /// Delete a device's registration record (the device may register again).
    Delete(RegistrationDelete),
}

/// `dps registration show`
#[derive(Args, Debug)]
pub struct RegistrationShow {
    /// Registration id.
    #[arg(long)]
    pub registration_id: String,
    #[command(flatten)]
    pub target: DpsTarget,
}

/// `dps registration list`
#[derive(Args, Debug)]
pub struct RegistrationList {
    /// Enrollment group whose registrations to list.
    #[arg(long, visible_alias = "enrollment-id")]
    pub group_id: String,
    /// Return at most this many records [default: all].
    #[arg(long)]
    pub top: Option<usize>,
    #[command(flatten)]
    pub target: DpsTarget,
}

/// `dps registration delete`
#[derive(Args, Debug)]
pub struct RegistrationDelete {
    /// Registration id.
    #[arg(long)]
    pub registration_id: String,
    /// Delete only if the record still has this etag.
    #[arg(long)]
    pub etag: Option<String>,
    #[command(flatten)]
    pub target: DpsTarget,
}

/// Runs `dps registration …`.
pub async fn run(cmd: RegistrationCommand) -> Result<()> {
    match cmd {
        RegistrationCommand::Show(a) => {
            let id = &a.registration_id;
            let r = a.target.client()?;
            let v = to_value(
                &r.get_registration(id)
                    .await
                    .with_context(|| format!("cannot show registration '{id}'"))?,
            )?;
            if a.target.server.json {
                output::json(&v);
            } else {
                summary(&v);
            }
        }
        RegistrationCommand::List(a) => {
            let r = a.target.client()?;
            let records = r
                .query_registrations(&a.group_id, a.top)
                .await
                .with_context(|| format!("cannot list the registrations of group '{}'", a.group_id))?;
            let items: Vec<Value> = records.iter().map(to_value).collect::<Result<_>>()?;
            if a.target.server.json {
                output::json(&Value::Array(items));
            } else {
                let rows: Vec<Vec<String>> = items
                    .iter()
                    .map(|v| {
                        vec![
                            s(v, "registrationId"),
                            s(v, "deviceId"),
                            s(v, "status"),
                            s(v, "assignedHub"),
                            s(v, "lastUpdatedDateTimeUtc"),
                        ]
                    })
                    .collect();
                output::table(&["REGISTRATION ID", "DEVICE ID", "STATUS", "HUB", "UPDATED"], &rows);
            }
        }
        RegistrationCommand::Delete(a) => {
            let id = &a.registration_id;
            a.target
                .client()?
                .delete_registration(id, a.etag.as_deref())
                .await
                .with_context(|| format!("cannot delete registration '{id}'"))?;
            if a.target.server.json {
                output::deleted("registrationId", id);
            } else {
                out!("deleted registration {id}");
            }
        }
    }
    Ok(())
}

fn summary(v: &Value) {
    output::fields(&[
        ("registration id", s(v, "registrationId")),
        ("status", s(v, "status")),
        ("substatus", s(v, "substatus")),
        ("assigned hub", s(v, "assignedHub")),
        ("device id", s(v, "deviceId")),
        ("error code", s(v, "errorCode")),
        ("error message", s(v, "errorMessage")),
        ("payload", output::compact(v, "payload")),
        ("etag", s(v, "etag")),
        ("created", s(v, "createdDateTimeUtc")),
        ("updated", s(v, "lastUpdatedDateTimeUtc")),
    ]);
}

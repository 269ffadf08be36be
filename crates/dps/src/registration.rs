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
    /// Reprovision devices at their next registration: allocation runs again (and their data
    /// migrates or resets as the enrollment says), even where the enrollment keeps devices on
    /// their hub.
    Reprovision(RegistrationReprovision),
}

/// `dps registration reprovision`
#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("which").required(true).multiple(true))]
pub struct RegistrationReprovision {
    /// A device's registration id (repeatable).
    #[arg(long, group = "which")]
    pub registration_id: Vec<String>,
    /// Every device registered through this enrollment group.
    #[arg(long, visible_alias = "enrollment-id", group = "which")]
    pub group_id: Option<String>,
    #[command(flatten)]
    pub target: DpsTarget,
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
        RegistrationCommand::Reprovision(a) => {
            let r = a.target.client()?;
            let mut ids = a.registration_id.clone();
            if let Some(g) = &a.group_id {
                let records = r
                    .query_registrations(g, None)
                    .await
                    .with_context(|| format!("cannot list the registrations of group '{g}'"))?;
                ids.extend(records.into_iter().map(|s| s.registration_id));
            }
            let mut marked = Vec::new();
            for id in &ids {
                let state = r
                    .request_reprovision(id)
                    .await
                    .with_context(|| format!("cannot reprovision registration '{id}'"))?;
                marked.push(to_value(&state)?);
            }
            if a.target.server.json {
                output::json(&Value::Array(marked));
            } else {
                out!(
                    "{} device(s) will be reprovisioned at their next registration",
                    marked.len()
                );
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

//! `dps revocation add|import-crl|list|show|remove`: revoked device certificates, refused at
//! DPS registration and at the hub (decision 0040).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use dps_proto::model::revocation::{CrlImport, RevocationBody};
use serde_json::Value;

use crate::output::{self, out, to_value};
use crate::remote::DpsTarget;

/// `dps revocation …`
#[derive(Subcommand, Debug)]
pub enum RevocationCommand {
    /// Revoke a certificate: by its file, by issuer and serial number, or by thumbprint.
    Add(RevocationAdd),
    /// Import a CA's revocation list (PEM or DER), replacing the one imported from it before.
    ImportCrl(ImportCrl),
    /// List the revoked certificates.
    List(RevocationList),
    /// Show one revocation.
    Show(RevocationId),
    /// Accept a revoked certificate again.
    Remove(RevocationId),
}

/// `dps revocation add`
#[derive(Args, Debug)]
pub struct RevocationAdd {
    /// The certificate to revoke (PEM or DER file).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["issuer", "serial_number", "thumbprint"])]
    pub certificate_path: Option<PathBuf>,
    /// The issuer's distinguished name (as `dps certificate show` prints names), with
    /// --serial-number.
    #[arg(long, requires = "serial_number")]
    pub issuer: Option<String>,
    /// The serial number in hex (colons allowed), with --issuer.
    #[arg(long, requires = "issuer")]
    pub serial_number: Option<String>,
    /// A SHA-256 thumbprint (hex).
    #[arg(long, conflicts_with_all = ["issuer", "serial_number"])]
    pub thumbprint: Option<String>,
    /// Why (kept for the operator).
    #[arg(long)]
    pub reason: Option<String>,
    #[command(flatten)]
    pub target: DpsTarget,
}

/// `dps revocation import-crl`
#[derive(Args, Debug)]
pub struct ImportCrl {
    /// The revocation list (PEM `X509 CRL`, or DER).
    #[arg(long, value_name = "FILE")]
    pub crl_path: PathBuf,
    #[command(flatten)]
    pub target: DpsTarget,
}

/// `dps revocation list`
#[derive(Args, Debug)]
pub struct RevocationList {
    #[command(flatten)]
    pub target: DpsTarget,
}

/// `dps revocation show` / `remove`
#[derive(Args, Debug)]
pub struct RevocationId {
    /// The revocation's id (from `dps revocation list`).
    #[arg(long)]
    pub id: String,
    #[command(flatten)]
    pub target: DpsTarget,
}

/// Runs `dps revocation …`.
pub async fn run(cmd: RevocationCommand) -> Result<()> {
    match cmd {
        RevocationCommand::Add(a) => {
            let body = RevocationBody {
                certificate: a
                    .certificate_path
                    .as_deref()
                    .map(crate::remote::read_pem_or_der)
                    .transpose()?,
                issuer: a.issuer.clone(),
                serial_number: a.serial_number.clone(),
                sha256_thumbprint: a.thumbprint.clone(),
                reason: a.reason.clone(),
            };
            if body.certificate.is_none() && body.issuer.is_none() && body.sha256_thumbprint.is_none() {
                bail!("name the certificate: --certificate-path, --issuer with --serial-number, or --thumbprint");
            }
            let r = a
                .target
                .client()?
                .add_revocation(&body)
                .await
                .context("cannot revoke the certificate")?;
            show(&to_value(&r)?, a.target.server.json);
        }
        RevocationCommand::ImportCrl(a) => {
            let body = CrlImport {
                crl: crate::remote::read_pem_or_der(&a.crl_path)?,
            };
            let r = a
                .target
                .client()?
                .import_crl(&body)
                .await
                .with_context(|| format!("cannot import {}", a.crl_path.display()))?;
            if a.target.server.json {
                output::json(&to_value(&r)?);
            } else {
                out!(
                    "imported the revocation list of '{}': {} revoked, {} no longer",
                    r.issuer,
                    r.revoked,
                    r.removed
                );
            }
        }
        RevocationCommand::List(a) => {
            let list = a
                .target
                .client()?
                .list_revocations()
                .await
                .context("cannot list revocations")?;
            output::list(
                &to_value(&list)?,
                a.target.server.json,
                &[
                    ("ID", "id"),
                    ("SOURCE", "source"),
                    ("ISSUER", "issuer"),
                    ("SERIAL", "serialNumber"),
                    ("THUMBPRINT (SHA-256)", "sha256Thumbprint"),
                ],
            );
        }
        RevocationCommand::Show(a) => {
            let r = a
                .target
                .client()?
                .get_revocation(&a.id)
                .await
                .with_context(|| format!("cannot show revocation '{}'", a.id))?;
            show(&to_value(&r)?, a.target.server.json);
        }
        RevocationCommand::Remove(a) => {
            a.target
                .client()?
                .delete_revocation(&a.id)
                .await
                .with_context(|| format!("cannot remove revocation '{}'", a.id))?;
            if a.target.server.json {
                output::deleted("id", &a.id);
            } else {
                out!("removed revocation {}", a.id);
            }
        }
    }
    Ok(())
}

fn show(v: &Value, json: bool) {
    output::show(
        v,
        json,
        &[
            ("id", "id"),
            ("subject", "subject"),
            ("issuer", "issuer"),
            ("serial number", "serialNumber"),
            ("thumbprint (SHA-256)", "sha256Thumbprint"),
            ("reason", "reason"),
            ("source", "source"),
            ("revoked", "revokedDateTimeUtc"),
        ],
    );
}

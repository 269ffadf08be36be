//! `dps credential-policy create|update|list|show|delete`: the CAs that issue certificates to
//! devices sending a CSR when they register (decision 0039). Enrollments name one with
//! `--credential-policy`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use dps_proto::model::credential_policy::{BroughtCertificateAuthority, CredentialPolicyBody};
use serde_json::Value;

use crate::output::{self, out, to_value};
use crate::remote::DpsTarget;

/// `dps credential-policy …`
#[derive(Subcommand, Debug)]
pub enum CredentialPolicyCommand {
    /// Create a policy: a built-in issuing CA (made now), or a brought one (--ca-cert, --ca-key).
    Create(CredentialPolicyWrite),
    /// Change a policy's validity, key type (a new built-in CA) or brought CA.
    Update(CredentialPolicyWrite),
    /// List the policies.
    List(CredentialPolicyList),
    /// Show a policy (its CA chain with --json).
    Show(CredentialPolicyName),
    /// Delete a policy.
    Delete(CredentialPolicyName),
}

/// `dps credential-policy create` / `update`
#[derive(Args, Debug)]
pub struct CredentialPolicyWrite {
    /// Policy name (what enrollments' credentialPolicyName names).
    #[arg(long)]
    pub name: String,
    /// The issuing CA's key type: P-256 (default for a new policy), P-384 or RSA-2048.
    #[arg(long)]
    pub key_type: Option<String>,
    /// Validity of issued device certificates, in days (default 30).
    #[arg(long)]
    pub validity_days: Option<u32>,
    /// Bring the issuing CA: its certificate (PEM, followed by its own chain).
    #[arg(long, value_name = "FILE", requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// Bring the issuing CA: its PKCS#8 private key (PEM).
    #[arg(long, value_name = "FILE", requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
    /// Replace only if the policy still has this etag ('*' for any; update's default).
    #[arg(long)]
    pub etag: Option<String>,
    #[command(flatten)]
    pub target: DpsTarget,
}

/// `dps credential-policy list`
#[derive(Args, Debug)]
pub struct CredentialPolicyList {
    #[command(flatten)]
    pub target: DpsTarget,
}

/// `dps credential-policy show` / `delete`
#[derive(Args, Debug)]
pub struct CredentialPolicyName {
    /// Policy name.
    #[arg(long)]
    pub name: String,
    /// Delete only if the policy still has this etag.
    #[arg(long)]
    pub etag: Option<String>,
    #[command(flatten)]
    pub target: DpsTarget,
}

fn read(path: &PathBuf) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// The PUT body of `create` / `update`.
fn body(a: &CredentialPolicyWrite) -> Result<CredentialPolicyBody> {
    let certificate_authority = match (&a.ca_cert, &a.ca_key) {
        (Some(cert), Some(key)) => Some(BroughtCertificateAuthority {
            certificates: read(cert)?,
            private_key: read(key)?,
        }),
        _ => None,
    };
    Ok(CredentialPolicyBody {
        key_type: a.key_type.clone(),
        validity_in_days: a.validity_days,
        certificate_authority,
        etag: None,
    })
}

/// Runs `dps credential-policy …`.
pub async fn run(cmd: CredentialPolicyCommand) -> Result<()> {
    match cmd {
        CredentialPolicyCommand::Create(a) => write(a, None).await?,
        CredentialPolicyCommand::Update(a) => write(a, Some("*")).await?,
        CredentialPolicyCommand::List(a) => {
            let list = a
                .target
                .client()?
                .list_credential_policies()
                .await
                .context("cannot list credential policies")?;
            output::list(
                &to_value(&list)?,
                a.target.server.json,
                &[
                    ("NAME", "name"),
                    ("KEY TYPE", "keyType"),
                    ("VALIDITY (DAYS)", "validityInDays"),
                    ("CA", "certificateAuthority/kind"),
                    ("CA EXPIRES", "certificateAuthority/notAfterUtc"),
                ],
            );
        }
        CredentialPolicyCommand::Show(a) => {
            let p = a
                .target
                .client()?
                .get_credential_policy(&a.name)
                .await
                .with_context(|| format!("cannot show credential policy '{}'", a.name))?;
            show(&to_value(&p)?, a.target.server.json);
        }
        CredentialPolicyCommand::Delete(a) => {
            a.target
                .client()?
                .delete_credential_policy(&a.name, a.etag.as_deref())
                .await
                .with_context(|| format!("cannot delete credential policy '{}'", a.name))?;
            if a.target.server.json {
                output::deleted("name", &a.name);
            } else {
                out!("deleted credential policy {}", a.name);
            }
        }
    }
    Ok(())
}

/// `create` (create-only unless --etag) and `update` (replace whatever is there unless --etag).
async fn write(a: CredentialPolicyWrite, default_etag: Option<&str>) -> Result<()> {
    let body = body(&a)?;
    let etag = a.etag.as_deref().or(default_etag);
    let p = a
        .target
        .client()?
        .put_credential_policy(&a.name, &body, etag)
        .await
        .with_context(|| format!("cannot write credential policy '{}'", a.name))?;
    show(&to_value(&p)?, a.target.server.json);
    Ok(())
}

fn show(v: &Value, json: bool) {
    output::show(
        v,
        json,
        &[
            ("name", "name"),
            ("key type", "keyType"),
            ("validity (days)", "validityInDays"),
            ("CA", "certificateAuthority/kind"),
            ("CA subject", "certificateAuthority/subject"),
            ("CA expires", "certificateAuthority/notAfterUtc"),
            ("CA thumbprint (SHA-256)", "certificateAuthority/sha256Thumbprint"),
            ("etag", "etag"),
        ],
    );
}

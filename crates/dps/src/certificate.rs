//! `dps certificate create|list|show|generate-verification-code|verify|delete`: CA certificates
//! with proof of possession (`az iot dps certificate …`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use dps_proto::model::certificate::{CertificateBody, VerificationCertificate};
use serde_json::Value;

use crate::output::{self, out, to_value};
use crate::remote::DpsTarget;

/// `dps certificate …`
#[derive(Subcommand, Debug)]
pub enum CertificateCommand {
    /// Upload a CA certificate (unverified unless --verified).
    Create(CertificateCreate),
    /// List the CA certificates.
    List(CertificateList),
    /// Show a CA certificate.
    Show(CertificateName),
    /// Generate the code a proof-of-possession certificate must carry as its CN.
    GenerateVerificationCode(CertificateEtag),
    /// Complete proof of possession with a certificate the CA signed whose CN is the code.
    Verify(CertificateVerify),
    /// Delete a CA certificate.
    Delete(CertificateEtag),
}

/// `dps certificate create`
#[derive(Args, Debug)]
pub struct CertificateCreate {
    /// Certificate name (what enrollments' caReferences use).
    #[arg(long)]
    pub name: String,
    /// PEM or DER-base64 file of the CA certificate.
    #[arg(long, visible_alias = "path")]
    pub certificate_path: PathBuf,
    /// Mark verified at upload, skipping proof of possession.
    #[arg(long)]
    pub verified: bool,
    /// Replace an existing certificate with this etag ('*' for any).
    #[arg(long)]
    pub etag: Option<String>,
    #[command(flatten)]
    pub target: DpsTarget,
}

/// `dps certificate list`
#[derive(Args, Debug)]
pub struct CertificateList {
    #[command(flatten)]
    pub target: DpsTarget,
}

/// `dps certificate show`
#[derive(Args, Debug)]
pub struct CertificateName {
    /// Certificate name.
    #[arg(long)]
    pub name: String,
    #[command(flatten)]
    pub target: DpsTarget,
}

/// `dps certificate generate-verification-code` / `delete`
#[derive(Args, Debug)]
pub struct CertificateEtag {
    /// Certificate name.
    #[arg(long)]
    pub name: String,
    /// Act only if the certificate still has this etag.
    #[arg(long)]
    pub etag: Option<String>,
    #[command(flatten)]
    pub target: DpsTarget,
}

/// `dps certificate verify`
#[derive(Args, Debug)]
pub struct CertificateVerify {
    /// Certificate name.
    #[arg(long)]
    pub name: String,
    /// PEM file of the verification certificate (CN = the verification code, signed by the CA).
    #[arg(long, visible_alias = "path")]
    pub certificate_path: PathBuf,
    /// Act only if the certificate still has this etag.
    #[arg(long)]
    pub etag: Option<String>,
    #[command(flatten)]
    pub target: DpsTarget,
}

fn read(path: &PathBuf) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Runs `dps certificate …`.
pub async fn run(cmd: CertificateCommand) -> Result<()> {
    match cmd {
        CertificateCommand::Create(a) => {
            let body = CertificateBody {
                certificate: read(&a.certificate_path)?,
                is_verified: a.verified,
            };
            let c = a
                .target
                .client()?
                .put_certificate(&a.name, &body, a.etag.as_deref())
                .await
                .with_context(|| format!("cannot upload CA certificate '{}'", a.name))?;
            show(&to_value(&c)?, a.target.server.json);
        }
        CertificateCommand::List(a) => {
            let list = a
                .target
                .client()?
                .list_certificates()
                .await
                .context("cannot list CA certificates")?;
            output::list(
                &to_value(&list)?,
                a.target.server.json,
                &[
                    ("NAME", "name"),
                    ("SUBJECT", "properties/subject"),
                    ("VERIFIED", "properties/isVerified"),
                    ("EXPIRES", "properties/expiry"),
                    ("THUMBPRINT (SHA-1)", "properties/thumbprint"),
                ],
            );
        }
        CertificateCommand::Show(a) => {
            let c = a
                .target
                .client()?
                .get_certificate(&a.name)
                .await
                .with_context(|| format!("cannot show CA certificate '{}'", a.name))?;
            show(&to_value(&c)?, a.target.server.json);
        }
        CertificateCommand::GenerateVerificationCode(a) => {
            let c = a
                .target
                .client()?
                .generate_verification_code(&a.name, a.etag.as_deref())
                .await
                .with_context(|| format!("cannot generate a verification code for '{}'", a.name))?;
            if a.target.server.json {
                output::json(&to_value(&c)?);
            } else {
                out!("{}", c.properties.verification_code.unwrap_or_default());
            }
        }
        CertificateCommand::Verify(a) => {
            let proof = VerificationCertificate {
                certificate: read(&a.certificate_path)?,
            };
            let c = a
                .target
                .client()?
                .verify_certificate(&a.name, &proof, a.etag.as_deref())
                .await
                .with_context(|| format!("cannot verify CA certificate '{}'", a.name))?;
            show(&to_value(&c)?, a.target.server.json);
        }
        CertificateCommand::Delete(a) => {
            a.target
                .client()?
                .delete_certificate(&a.name, a.etag.as_deref())
                .await
                .with_context(|| format!("cannot delete CA certificate '{}'", a.name))?;
            if a.target.server.json {
                output::deleted("name", &a.name);
            } else {
                out!("deleted CA certificate {}", a.name);
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
            ("name", "name"),
            ("subject", "properties/subject"),
            ("verified", "properties/isVerified"),
            ("expires", "properties/expiry"),
            ("thumbprint (SHA-1)", "properties/thumbprint"),
            ("thumbprint (SHA-256)", "properties/sha256Thumbprint"),
            ("etag", "etag"),
        ],
    );
}

//! `dps ca …`: a local PKI for development and factories — roots, intermediates, device
//! certificates and proof-of-possession certificates, P-256 by default or RSA-2048.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use dps_pki::ca::{KeyAlgorithm, LocalCa};
use serde_json::json;

use crate::output::{self, out};

/// `dps ca …`
#[derive(Subcommand, Debug)]
pub enum CaCommand {
    /// Create a self-signed root CA: `{name}.pem` and `{name}.key`.
    CreateRoot(CreateRoot),
    /// Issue an intermediate CA under a CA: `{name}.pem` (with its issuer chain) and `{name}.key`.
    CreateIntermediate(CreateIntermediate),
    /// Issue a device certificate (CN = registration id, clientAuth): `{id}.pem` (leaf + the CA
    /// chain unless --leaf-only) and `{id}.key`.
    IssueDevice(IssueDevice),
    /// Issue a proof-of-possession certificate whose CN is a verification code.
    IssueVerification(IssueVerification),
}

/// Key algorithm flag.
#[derive(ValueEnum, Clone, Copy, Debug, Default)]
pub enum Alg {
    /// ECDSA P-256.
    #[default]
    P256,
    /// ECDSA P-384.
    P384,
    /// RSA-2048.
    Rsa2048,
}

impl From<Alg> for KeyAlgorithm {
    fn from(a: Alg) -> Self {
        match a {
            Alg::P256 => KeyAlgorithm::EcdsaP256,
            Alg::P384 => KeyAlgorithm::EcdsaP384,
            Alg::Rsa2048 => KeyAlgorithm::Rsa2048,
        }
    }
}

/// The issuing CA's files.
#[derive(Args, Debug)]
pub struct Issuer {
    /// The issuing CA's certificate (PEM; may be followed by its own chain).
    #[arg(long = "ca-cert", value_name = "FILE")]
    pub cert: PathBuf,
    /// The issuing CA's private key (PKCS#8 PEM).
    #[arg(long = "ca-key", value_name = "FILE")]
    pub key: PathBuf,
}

impl Issuer {
    fn load(&self) -> Result<LocalCa> {
        let read = |p: &Path| std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()));
        Ok(LocalCa::from_pem(&read(&self.cert)?, &read(&self.key)?)?)
    }
}

/// `dps ca create-root`
#[derive(Args, Debug)]
pub struct CreateRoot {
    /// Common name, also the file name.
    #[arg(long)]
    pub name: String,
    /// Key algorithm.
    #[arg(long, value_enum, default_value_t)]
    pub key_algorithm: Alg,
    /// Output directory.
    #[arg(long, default_value = ".")]
    pub out_dir: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `dps ca create-intermediate`
#[derive(Args, Debug)]
pub struct CreateIntermediate {
    /// Common name, also the file name.
    #[arg(long)]
    pub name: String,
    #[command(flatten)]
    pub issuer: Issuer,
    /// How many CAs may sit below this one.
    #[arg(long)]
    pub path_len: Option<u8>,
    /// Key algorithm.
    #[arg(long, value_enum, default_value_t)]
    pub key_algorithm: Alg,
    /// Output directory.
    #[arg(long, default_value = ".")]
    pub out_dir: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `dps ca issue-device`
#[derive(Args, Debug)]
pub struct IssueDevice {
    /// Registration id (the certificate's CN), also the file name.
    #[arg(long)]
    pub registration_id: String,
    #[command(flatten)]
    pub issuer: Issuer,
    /// Validity in days.
    #[arg(long, default_value_t = 365)]
    pub days: i64,
    /// Key algorithm.
    #[arg(long, value_enum, default_value_t)]
    pub key_algorithm: Alg,
    /// Write only the leaf, without the issuing CA chain.
    #[arg(long)]
    pub leaf_only: bool,
    /// Output directory.
    #[arg(long, default_value = ".")]
    pub out_dir: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `dps ca issue-verification`
#[derive(Args, Debug)]
pub struct IssueVerification {
    /// The verification code from `dps certificate generate-verification-code`.
    #[arg(long)]
    pub code: String,
    #[command(flatten)]
    pub issuer: Issuer,
    /// Where to write the certificate.
    #[arg(long, default_value = "verification.pem")]
    pub out: PathBuf,
}

/// Writes `{name}.pem` and `{name}.key` in `dir`; the key readable by its owner only.
pub(crate) fn write_pair(dir: &Path, name: &str, cert: &str, key: &str) -> Result<(PathBuf, PathBuf)> {
    let c = write_certificate(dir, name, cert)?;
    let k = dir.join(format!("{name}.key"));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    std::io::Write::write_all(
        &mut opts.open(&k).with_context(|| format!("cannot write {}", k.display()))?,
        key.as_bytes(),
    )
    .with_context(|| format!("cannot write {}", k.display()))?;
    Ok((c, k))
}

/// Writes `{name}.pem` in `dir` (made if missing) and returns its path.
pub(crate) fn write_certificate(dir: &Path, name: &str, cert: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let c = dir.join(format!("{name}.pem"));
    std::fs::write(&c, cert).with_context(|| format!("cannot write {}", c.display()))?;
    Ok(c)
}

fn report(json: bool, what: &str, cert: &Path, key: &Path, leaf_der: &[u8]) {
    let thumb = dps_pki::thumbprint::sha256_thumbprint(leaf_der);
    if json {
        output::json(&json!({ "certificate": cert, "key": key, "sha256Thumbprint": thumb }));
    } else {
        out!(
            "wrote {what} {} and {} (SHA-256 {thumb})",
            cert.display(),
            key.display()
        );
    }
}

fn first_der(pem: &str) -> Result<Vec<u8>> {
    Ok(dps_pki::pem::parse_certificates(pem)?.remove(0).to_vec())
}

/// Runs `dps ca …`.
pub fn run(cmd: CaCommand) -> Result<()> {
    match cmd {
        CaCommand::CreateRoot(a) => {
            let ca = LocalCa::generate_with(&a.name, a.key_algorithm.into())?;
            let (c, k) = write_pair(&a.out_dir, &a.name, &ca.cert_pem(), &ca.key_pem())?;
            report(a.json, "root CA", &c, &k, &ca.cert_der());
        }
        CaCommand::CreateIntermediate(a) => {
            let int = a
                .issuer
                .load()?
                .issue_intermediate(&a.name, a.path_len, a.key_algorithm.into())?;
            let (c, k) = write_pair(&a.out_dir, &a.name, &int.chain_pem(), &int.key_pem())?;
            report(a.json, "intermediate CA", &c, &k, &int.cert_der());
        }
        CaCommand::IssueDevice(a) => {
            let ca = a.issuer.load()?;
            let leaf = ca.issue_device_certificate(&a.registration_id, a.days, a.key_algorithm.into())?;
            let chain = if a.leaf_only {
                leaf.cert_pem.clone()
            } else {
                format!("{}{}", leaf.cert_pem, ca.chain_pem())
            };
            let (c, k) = write_pair(&a.out_dir, &a.registration_id, &chain, &leaf.key_pem)?;
            report(a.json, "device certificate", &c, &k, &first_der(&leaf.cert_pem)?);
        }
        CaCommand::IssueVerification(a) => {
            let cert = a.issuer.load()?.issue_verification_certificate(&a.code)?;
            std::fs::write(&a.out, &cert.cert_pem).with_context(|| format!("cannot write {}", a.out.display()))?;
            out!("wrote {}", a.out.display());
        }
    }
    Ok(())
}

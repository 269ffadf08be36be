//! `dps dice …`: DICE identities for devices and factories.
//!
//! - `cert-gen` reproduces the MXChip DevKit `dps_cert_gen` tool byte for byte: it reads the
//!   riot_core and riot_fw ranges from the firmware image and map, and writes the alias
//!   certificate `{registrationId}.pem` to upload as an individual X.509 enrollment.
//! - `identity` derives the layered TCG DICE identity (`dps-dice-v1`) a device derives at boot.
//! - `device-id` prints only the DeviceID certificate — stable across firmware updates — for an
//!   enrollment group (or to have a factory CA issue it).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use clap::{Args, Subcommand};
use dps_dice::{devkit, parse_uds_hex, tcg};
use serde_json::json;

use crate::output::{self, out};

/// `dps dice …`
#[derive(Subcommand, Debug)]
pub enum DiceCommand {
    /// MXChip DevKit: generate the alias certificate exactly as `dps_cert_gen` does.
    CertGen(CertGenArgs),
    /// Derive the TCG DICE identity (DeviceID + alias with the firmware digest) for a device.
    Identity(IdentityArgs),
    /// Print the TCG DICE DeviceID certificate only (stable across firmware updates).
    DeviceId(DeviceIdArgs),
}

/// `dps dice cert-gen`
#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("id").required(true).args(["registration_id", "mac"]))]
pub struct CertGenArgs {
    /// The Unique Device Secret: 64 hex digits.
    #[arg(long)]
    pub uds: String,
    /// The firmware image (`{name}.ino.bin`).
    #[arg(long)]
    pub bin: PathBuf,
    /// The linker map (`{name}.ino.map`).
    #[arg(long)]
    pub map: PathBuf,
    /// Registration id (lower-case letters, digits and '-').
    #[arg(long)]
    pub registration_id: Option<String>,
    /// Device MAC (12 hex digits), to build the id `az-{mac}v{version}` as the tool does.
    #[arg(long, requires = "firmware_version")]
    pub mac: Option<String>,
    /// Firmware version, e.g. 1.2.3 (with --mac).
    #[arg(long)]
    pub firmware_version: Option<String>,
    /// Where to write the files [default: current directory].
    #[arg(long, default_value = ".")]
    pub out_dir: PathBuf,
    /// Also write the alias private key (`{id}-alias-key.pem`, SEC1).
    #[arg(long)]
    pub alias_key: bool,
    /// Also write the DeviceID certificate (`{id}-device-id.pem`).
    #[arg(long)]
    pub device_id_cert: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `dps dice identity`
#[derive(Args, Debug)]
pub struct IdentityArgs {
    /// The Unique Device Secret: 64 hex digits.
    #[arg(long)]
    pub uds: String,
    /// The firmware image to measure.
    #[arg(long)]
    pub firmware: PathBuf,
    /// Registration id (the alias certificate's CN).
    #[arg(long)]
    pub registration_id: String,
    /// Where to write `{id}-chain.pem`, `{id}-alias-key.pem` and `{id}-device-id.pem`.
    #[arg(long, default_value = ".")]
    pub out_dir: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `dps dice device-id`
#[derive(Args, Debug)]
pub struct DeviceIdArgs {
    /// The Unique Device Secret: 64 hex digits.
    #[arg(long)]
    pub uds: String,
    /// Write the certificate here instead of printing it.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

fn write(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn uds(text: &str) -> Result<[u8; 32]> {
    parse_uds_hex(text).map_err(|e| anyhow!("--uds: {e}"))
}

/// Runs `dps dice …`.
pub fn run(cmd: DiceCommand) -> Result<()> {
    match cmd {
        DiceCommand::CertGen(a) => {
            let bin = std::fs::read(&a.bin).with_context(|| format!("cannot read {}", a.bin.display()))?;
            let map = std::fs::read(&a.map).with_context(|| format!("cannot read {}", a.map.display()))?;
            let image = devkit::FirmwareImage::from_bin_and_map(&bin, &map)?;
            let id = match (&a.registration_id, &a.mac, &a.firmware_version) {
                (Some(id), _, _) => id.clone(),
                (None, Some(mac), Some(v)) => devkit::auto_registration_id(mac, v)?,
                _ => unreachable!("clap requires --registration-id or --mac with --firmware-version"),
            };
            let identity = devkit::devkit_identity(&uds(&a.uds)?, &image, &id)?;
            let cert = write(&a.out_dir, &format!("{id}.pem"), &identity.alias_cert_pem)?;
            let key = a
                .alias_key
                .then(|| write(&a.out_dir, &format!("{id}-alias-key.pem"), &identity.alias_key_pem))
                .transpose()?;
            let device_id = a
                .device_id_cert
                .then(|| write(&a.out_dir, &format!("{id}-device-id.pem"), &identity.device_id_cert_pem))
                .transpose()?;
            if a.json {
                output::json(&json!({
                    "registrationId": id,
                    "aliasCertificate": cert,
                    "aliasKey": key,
                    "deviceIdCertificate": device_id,
                    "fwid": hex(&identity.fwid),
                    "sha256Thumbprint": dps_pki::thumbprint::sha256_thumbprint(&identity.alias_cert_der),
                }));
            } else {
                out!("wrote {} (alias certificate of {id}; upload it as the primary certificate of an individual X.509 enrollment)", cert.display());
                for p in key.iter().chain(device_id.iter()) {
                    out!("wrote {}", p.display());
                }
            }
        }
        DiceCommand::Identity(a) => {
            let fw = std::fs::read(&a.firmware).with_context(|| format!("cannot read {}", a.firmware.display()))?;
            let id = tcg::tcg_identity(&uds(&a.uds)?, &fw, &a.registration_id, &tcg::TcgOptions::default())?;
            let rid = &a.registration_id;
            let chain = write(&a.out_dir, &format!("{rid}-chain.pem"), &id.chain_pem)?;
            let key = write(&a.out_dir, &format!("{rid}-alias-key.pem"), &id.alias_key_pem)?;
            let device_id = write(&a.out_dir, &format!("{rid}-device-id.pem"), &id.device_id_cert_pem)?;
            let device_id_thumb = dps_pki::thumbprint::sha256_thumbprint(&id.device_id_cert_der);
            if a.json {
                output::json(&json!({
                    "registrationId": rid,
                    "chain": chain,
                    "aliasKey": key,
                    "deviceIdCertificate": device_id,
                    "deviceIdSha256Thumbprint": device_id_thumb,
                    "fwid": hex(&id.fwid),
                }));
            } else {
                out!(
                    "wrote {} (alias + DeviceID), {}, {}",
                    chain.display(),
                    key.display(),
                    device_id.display()
                );
                out!("DeviceID SHA-256 {device_id_thumb}; firmware digest {}", hex(&id.fwid));
            }
        }
        DiceCommand::DeviceId(a) => {
            let cert = tcg::device_id_certificate(&uds(&a.uds)?, &tcg::TcgOptions::default())?;
            match a.out {
                Some(p) => {
                    std::fs::write(&p, &cert.cert_pem).with_context(|| format!("cannot write {}", p.display()))?;
                }
                None => print!("{}", cert.cert_pem),
            }
        }
    }
    Ok(())
}

//! Device-side commands: `dps device provision` (the Rust device SDK end to end: register, then
//! connect to the assigned hub and send a message; with a symmetric key, an X.509 or DICE
//! identity, or a TPM), `dps device renew-certificate` (renew an issued certificate through the
//! hub) and `dps compute-device-key` (what a factory runs to give each device its group-derived
//! key).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use clap::Args;
use dps_client::{
    DiceProvider, HubClient, PollOptions, ProvisioningClient, SecurityProvider, SymmetricKeyProvider, Transport,
    X509Provider,
};
use dps_datadir::DataDir;
use serde_json::{json, Value};

use crate::output::{self, out};
use crate::remote::read_ca;

/// `dps compute-device-key`
#[derive(Args, Debug)]
pub struct ComputeKeyArgs {
    /// The enrollment group's symmetric key (base64).
    #[arg(long)]
    pub key: String,
    /// The device's registration id.
    #[arg(long)]
    pub registration_id: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Prints the device key derived from a group key: no server involved.
pub fn compute_key(a: ComputeKeyArgs) -> Result<()> {
    dps_proto::registration_id::validate(&a.registration_id).map_err(|e| anyhow!("registration id: {e}"))?;
    let key = dps_proto::keys::derive_device_key(a.key.trim(), &a.registration_id)
        .ok_or_else(|| anyhow!("--key is not valid base64"))?;
    if a.json {
        output::json(&json!({ "registrationId": a.registration_id, "derivedKey": key }));
    } else {
        out!("{key}");
    }
    Ok(())
}

/// `dps device provision`
#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("credential").required(true).args(["symmetric_key", "group_key", "x509_cert", "dice_uds", "tpm"]))]
pub struct ProvisionArgs {
    /// The device's registration id [default for X.509: the certificate's common name; for a
    /// TPM: the id derived from its endorsement key].
    #[arg(long, required_unless_present_any = ["x509_cert", "tpm"])]
    pub registration_id: Option<String>,
    /// The device's own symmetric key (individual enrollment, or an already derived key).
    #[arg(long)]
    pub symmetric_key: Option<String>,
    /// An enrollment group's key; the device key is derived from it and the registration id.
    #[arg(long)]
    pub group_key: Option<String>,
    /// X.509: PEM certificate chain of the device (leaf first, optionally its intermediates).
    #[arg(long, value_name = "FILE", requires = "x509_key", visible_alias = "x509")]
    pub x509_cert: Option<PathBuf>,
    /// X.509: the device's private key (PKCS#8, SEC1 or PKCS#1 PEM).
    #[arg(long, value_name = "FILE", requires = "x509_cert")]
    pub x509_key: Option<PathBuf>,
    /// DICE: the Unique Device Secret (64 hex digits); the identity is derived now, as at boot.
    #[arg(long, value_name = "HEX", requires = "dice_firmware", visible_alias = "dice")]
    pub dice_uds: Option<String>,
    /// DICE: the firmware image to measure.
    #[arg(long, value_name = "FILE", requires = "dice_uds")]
    pub dice_firmware: Option<PathBuf>,
    /// DICE: the DevKit linker map; selects the MXChip DevKit (RIoT) derivation instead of TCG DICE.
    #[arg(long, value_name = "FILE", requires = "dice_uds")]
    pub dice_map: Option<PathBuf>,
    /// TPM attestation: the identity lives in the TPM chosen by --tcti (HTTPS only). Needs a
    /// dps built with the `tpm` feature.
    #[arg(long)]
    pub tpm: bool,
    #[command(flatten)]
    pub tpm_at: crate::tpm::TctiArgs,
    /// ID scope [default: the data directory's].
    #[arg(long)]
    pub id_scope: Option<String>,
    /// DPS device endpoint host [default: the data directory's provisioning host, else Azure's
    /// global.azure-devices-provisioning.net].
    #[arg(long)]
    pub provisioning_host: Option<String>,
    /// How to talk to DPS: mqtt, https or amqp [default: mqtt; https with --tpm, whose challenge
    /// needs HTTP or AMQP's SASL].
    #[arg(long, value_parser = parse_transport)]
    pub transport: Option<Transport>,
    /// DPS port [default: the data directory's MQTT/HTTPS/AMQP port, else 8883/443/5671].
    #[arg(long)]
    pub port: Option<u16>,
    /// The assigned hub's MQTT port [default: the data directory's MQTT port, else 8883].
    #[arg(long)]
    pub hub_port: Option<u16>,
    /// Ask for an operational certificate: make a key (--csr-key-type) and send a certificate
    /// signing request with the registration; the enrollment's credential policy issues it. The
    /// issued chain (and a software key) are written to --issued-dir, and the hub is reached
    /// with them. With --tpm the key is made in the TPM (persistent handle 0x81000101) and
    /// never leaves it: the TPM signs the request and the TLS handshakes.
    #[arg(long)]
    pub csr: bool,
    /// The key type of --csr: P-256 (default), P-384 or RSA-2048 (with --tpm: P-256 or P-384).
    #[arg(long, default_value = "P-256", requires = "csr", value_parser = parse_key_type)]
    pub csr_key_type: dps_pki::ca::KeyAlgorithm,
    /// Where --csr writes `{registration id}.issued.pem` (the chain) and `.issued.key` (a
    /// software key; none with --tpm).
    #[arg(long, default_value = ".", requires = "csr", value_name = "DIR")]
    pub issued_dir: PathBuf,
    /// Custom allocation payload sent with the registration, as JSON.
    #[arg(long, value_name = "JSON", value_parser = parse_json)]
    pub payload: Option<Value>,
    /// The device-to-cloud message to send after connecting to the hub.
    #[arg(long, default_value = r#"{"hello":"from dps"}"#)]
    pub message: String,
    /// Only register; do not connect to the hub.
    #[arg(long)]
    pub no_message: bool,
    #[command(flatten)]
    pub common: DeviceCommon,
}

/// What every `dps device` command takes: how long to wait, whom to trust, which local server,
/// how to print.
#[derive(Args, Debug)]
pub struct DeviceCommon {
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// PEM file with the CA certificate(s) to trust [default: the data directory's ca.pem].
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Data directory of a local server (ID scope, hosts, ports, CA).
    #[arg(long, env = "DPS_DATA_DIR", default_value = "./dps-data")]
    pub data_dir: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_key_type(s: &str) -> Result<dps_pki::ca::KeyAlgorithm, String> {
    dps_pki::ca::KeyAlgorithm::from_name(s).ok_or_else(|| format!("'{s}' is not one of P-256, P-384, RSA-2048"))
}

fn parse_transport(s: &str) -> Result<Transport, String> {
    s.parse()
}

fn parse_json(s: &str) -> Result<Value, String> {
    serde_json::from_str(s).map_err(|e| format!("not valid JSON: {e}"))
}

/// Derives the DICE identity the device would derive at boot.
fn dice_provider(a: &ProvisionArgs) -> Result<DiceProvider> {
    let uds =
        dps_dice::parse_uds_hex(a.dice_uds.as_deref().unwrap_or_default()).map_err(|e| anyhow!("--dice-uds: {e}"))?;
    let fw_path = a
        .dice_firmware
        .as_ref()
        .ok_or_else(|| anyhow!("--dice-firmware is required"))?;
    let firmware = std::fs::read(fw_path).with_context(|| format!("cannot read {}", fw_path.display()))?;
    let id = registration_id(a)?;
    Ok(match &a.dice_map {
        Some(map) => {
            let map = std::fs::read(map).with_context(|| format!("cannot read {}", map.display()))?;
            let image = dps_dice::devkit::FirmwareImage::from_bin_and_map(&firmware, &map)?;
            DiceProvider::devkit(&uds, &image, id)?
        }
        None => DiceProvider::tcg(&uds, &firmware, id, &dps_dice::tcg::TcgOptions::default())?,
    })
}

fn registration_id(a: &ProvisionArgs) -> Result<&str> {
    a.registration_id
        .as_deref()
        .ok_or_else(|| anyhow!("--registration-id is required with a symmetric key"))
}

/// Registers with the Rust device SDK, then sends one message through the assigned hub.
pub async fn provision(a: ProvisionArgs) -> Result<()> {
    let dir = DataDir::new(&a.common.data_dir);
    let identity = dir.load_identity().ok();
    let runtime = dir.runtime();
    let id_scope = match a
        .id_scope
        .clone()
        .or_else(|| identity.as_ref().map(|i| i.id_scope.clone()))
    {
        Some(s) => s,
        None => anyhow::bail!("no ID scope: pass --id-scope, or --data-dir of a server"),
    };
    let host = a
        .provisioning_host
        .clone()
        .or_else(|| dir.last_provisioning_host())
        .unwrap_or_else(|| dps_client::GLOBAL_ENDPOINT.to_string());
    let ca = read_ca(a.common.ca.as_deref(), &dir)?;
    let transport = a
        .transport
        .unwrap_or(if a.tpm { Transport::Https } else { Transport::Mqtt });
    let tpm = match a.tpm {
        true => Some(crate::tpm::TpmDevice::open(
            &a.tpm_at.tcti,
            a.registration_id.as_deref(),
        )?),
        false => None,
    };
    let provider: Arc<dyn SecurityProvider> = match (&a.symmetric_key, &a.group_key, &a.x509_cert, &a.x509_key) {
        _ if tpm.is_some() => tpm.as_ref().map(|t| t.provider()).expect("checked"),
        (_, _, Some(cert), Some(key)) => {
            let p = X509Provider::from_files(cert, key)?;
            if let Some(id) = a
                .registration_id
                .as_deref()
                .filter(|id| !id.eq_ignore_ascii_case(p.registration_id()))
            {
                anyhow::bail!(
                    "--registration-id '{id}' differs from the certificate's common name '{}'",
                    p.registration_id()
                );
            }
            Arc::new(p)
        }
        _ if a.dice_uds.is_some() => Arc::new(dice_provider(&a)?),
        (Some(k), _, _, _) => Arc::new(SymmetricKeyProvider::new(registration_id(&a)?, k)?),
        (None, Some(g), _, _) => Arc::new(SymmetricKeyProvider::from_group_key(registration_id(&a)?, g)?),
        _ => unreachable!("clap requires one credential"),
    };
    let reg_id = provider.registration_id().to_string();
    let port = a.port.or_else(|| {
        runtime.as_ref().map(|r| match transport {
            Transport::Mqtt => r.mqtt_port,
            Transport::Https => r.https_port,
            Transport::Amqp => r.amqp_port,
        })
    });
    let timeout = Duration::from_secs(a.common.timeout.max(1));
    let mut client = ProvisioningClient::new(&host, &id_scope, provider.clone(), &ca)
        .with_transport(transport)
        .with_timeout(timeout)
        .with_poll_options(PollOptions::default());
    if let Some(p) = port {
        client = client.with_port(p);
    }
    // With a TPM the key is made in it and never leaves it; otherwise in software, kept in a file.
    let csr_key = match (a.csr, &tpm) {
        (false, _) => None,
        (true, Some(tpm)) => {
            let (csr, key) = tpm
                .new_csr_key(&reg_id, a.csr_key_type)
                .context("cannot make the key and certificate signing request in the TPM")?;
            client = client.with_csr(csr);
            Some(CsrKey::Held(key))
        }
        (true, None) => {
            let (key_pem, csr) = dps_pki::csr::new_key_and_request(&reg_id, a.csr_key_type)
                .context("cannot make the key and certificate signing request")?;
            client = client.with_csr(csr);
            Some(CsrKey::Pem(key_pem))
        }
    };
    let registration = client.register(a.payload.clone()).await.with_context(|| {
        format!(
            "cannot provision '{}' at {host}:{} ({})",
            reg_id,
            client.port(),
            transport
        )
    })?;
    if !a.common.json {
        out!(
            "registered {} over {} -> assigned to hub {} as device {}{}",
            reg_id,
            transport,
            registration.assigned_hub,
            registration.device_id,
            registration.substatus.map(|s| format!(" ({s})")).unwrap_or_default()
        );
        if let Some(p) = &registration.payload {
            out!("allocation payload {p}");
        }
    }
    // With --csr the device goes on with its issued certificate, as a device would.
    let (provider, issued_files) = match csr_key {
        None => (provider, None),
        Some(key) => {
            let chain = registration.issued_certificate_chain.as_deref();
            let (hub_provider, files) = keep_issued(&a.issued_dir, &reg_id, chain, key)?;
            if !a.common.json {
                out!("issued certificate saved to {}", files.describe());
            }
            (hub_provider, Some(files))
        }
    };
    let mut sent = false;
    if !a.no_message {
        let hub_port = a
            .hub_port
            .or_else(|| runtime.as_ref().map(|r| r.mqtt_port))
            .unwrap_or(8883);
        let hub = HubClient::from_registration(&registration, provider, &ca)
            .port(hub_port)
            .timeout(timeout)
            .connect()
            .await
            .with_context(|| {
                format!(
                    "cannot connect to hub {}:{hub_port} as '{}'",
                    registration.assigned_hub, registration.device_id
                )
            })?;
        let is_json = serde_json::from_str::<Value>(&a.message).is_ok();
        let props: &[(&str, &str)] = if is_json {
            &[("$.ct", "application/json"), ("$.ce", "utf-8")]
        } else {
            &[]
        };
        hub.send_event(a.message.as_bytes().to_vec(), props)
            .await
            .context("cannot send the message")?;
        hub.disconnect().await?;
        sent = true;
        if !a.common.json {
            out!("sent message {}", a.message);
        }
    }
    if a.common.json {
        output::json(&json!({
            "registration": registration,
            "transport": transport,
            "messageSent": sent,
            "issuedCertificatePath": issued_files.as_ref().map(|f| f.certificate.display().to_string()),
            "issuedKeyPath": issued_files.as_ref().and_then(|f| f.key.as_ref()).map(|k| k.display().to_string()),
            "issuedKeyTpmHandle": issued_files
                .as_ref()
                .filter(|f| f.key.is_none())
                .map(|_| format!("0x{:08x}", dps_client::CLIENT_KEY_HANDLE)),
            "message": if sent { Value::String(a.message.clone()) } else { Value::Null },
        }));
    }
    Ok(())
}

/// The key a `--csr` request was made for.
enum CsrKey {
    /// Made in software: written beside the issued chain.
    Pem(String),
    /// Made in the TPM, where it stays.
    Held(Arc<dyn dps_pki::held_key::HeldKey>),
}

/// Where `--csr` wrote the issued chain and its key.
struct IssuedFiles {
    certificate: PathBuf,
    /// None when the key is held by the TPM.
    key: Option<PathBuf>,
}

impl IssuedFiles {
    /// `{certificate} (key {file})`, or where the TPM holds the key.
    fn describe(&self) -> String {
        match &self.key {
            Some(key) => format!("{} (key {})", self.certificate.display(), key.display()),
            None => format!(
                "{} (key held by the TPM at 0x{:08x})",
                self.certificate.display(),
                dps_client::CLIENT_KEY_HANDLE
            ),
        }
    }
}

/// Writes the issued chain to `dir` (`{id}.issued.pem`), and a software key beside it
/// (`{id}.issued.key`, readable by its owner only), and returns the X.509 identity they make,
/// with the file paths (no key file for a key held by the TPM).
fn keep_issued(
    dir: &std::path::Path,
    reg_id: &str,
    chain: Option<&[String]>,
    key: CsrKey,
) -> Result<(Arc<dyn SecurityProvider>, IssuedFiles)> {
    use base64::Engine as _;
    let chain = chain
        .filter(|c| !c.is_empty())
        .ok_or_else(|| anyhow!("the service issued no certificate for the CSR"))?;
    let mut pem = String::new();
    for c in chain {
        let der = base64::engine::general_purpose::STANDARD
            .decode(c)
            .context("the issued certificate chain is not base64")?;
        pem.push_str(&dps_pki::pem::to_pem("CERTIFICATE", &der));
    }
    let name = format!("{reg_id}.issued");
    let (provider, files) = match key {
        CsrKey::Pem(key_pem) => {
            let (certificate, key) = crate::ca::write_pair(dir, &name, &pem, &key_pem)?;
            let files = IssuedFiles {
                certificate,
                key: Some(key),
            };
            (X509Provider::from_pem(&pem, &key_pem), files)
        }
        CsrKey::Held(key) => {
            let certificate = crate::ca::write_certificate(dir, &name, &pem)?;
            let files = IssuedFiles { certificate, key: None };
            (X509Provider::with_held_key(&pem, key), files)
        }
    };
    let provider = provider.context("the issued certificate does not load")?;
    Ok((Arc::new(provider), files))
}

/// `dps device renew-certificate`
#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("key").required(true).args(["x509_key", "tpm"]))]
pub struct RenewArgs {
    /// The device's current certificate chain (PEM, leaf first), e.g. `{id}.issued.pem` from
    /// `dps device provision --csr`.
    #[arg(long, value_name = "FILE", visible_alias = "x509")]
    pub x509_cert: PathBuf,
    /// The device id at the hub [default: the certificate's common name, the registration id;
    /// give it when the enrollment named another device id].
    #[arg(long)]
    pub device_id: Option<String>,
    /// The certificate's private key (PKCS#8 PEM).
    #[arg(long, value_name = "FILE")]
    pub x509_key: Option<PathBuf>,
    /// The key is the TPM's client key (made by `dps device provision --tpm --csr`); the renewed
    /// certificate is for the same key, which never leaves the TPM.
    #[arg(long)]
    pub tpm: bool,
    #[command(flatten)]
    pub tpm_at: crate::tpm::TctiArgs,
    /// Make a new key (--csr-key-type) instead of keeping the current one (software keys only:
    /// the TPM holds one client key, which a failed renewal must not lose).
    #[arg(long, conflicts_with = "tpm")]
    pub new_key: bool,
    /// The key type of --new-key: P-256 (default), P-384 or RSA-2048.
    #[arg(long, default_value = "P-256", requires = "new_key", value_parser = parse_key_type)]
    pub csr_key_type: dps_pki::ca::KeyAlgorithm,
    /// The hub the device belongs to [default: the data directory's hub].
    #[arg(long)]
    pub hub: Option<String>,
    /// The hub's MQTT port [default: the data directory's MQTT port, else 8883].
    #[arg(long)]
    pub hub_port: Option<u16>,
    /// Where to write `{device id}.issued.pem` (and `.issued.key` with --new-key).
    #[arg(long, default_value = ".", value_name = "DIR")]
    pub out_dir: PathBuf,
    #[command(flatten)]
    pub common: DeviceCommon,
}

/// Connects to the hub with the current certificate, renews it, keeps the new chain, and
/// connects again with it, as a device would.
pub async fn renew(a: RenewArgs) -> Result<()> {
    let dir = DataDir::new(&a.common.data_dir);
    let ca = read_ca(a.common.ca.as_deref(), &dir)?;
    let chain_pem =
        std::fs::read_to_string(&a.x509_cert).with_context(|| format!("cannot read {}", a.x509_cert.display()))?;
    let tpm = match a.tpm {
        true => Some(crate::tpm::TpmDevice::open(&a.tpm_at.tcti, None)?),
        false => None,
    };
    // The current identity and its key.
    let (current, key): (X509Provider, CsrKey) = match (&tpm, &a.x509_key) {
        (Some(tpm), _) => {
            let key = tpm.client_key()?;
            (X509Provider::with_held_key(&chain_pem, key.clone())?, CsrKey::Held(key))
        }
        (None, Some(path)) => {
            let key_pem = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            (X509Provider::from_pem(&chain_pem, &key_pem)?, CsrKey::Pem(key_pem))
        }
        (None, None) => unreachable!("clap requires --x509-key or --tpm"),
    };
    let device_id = a
        .device_id
        .clone()
        .unwrap_or_else(|| current.registration_id().to_string());
    // The request, for the same key or (--new-key) a new one.
    let (key, csr) = match key {
        CsrKey::Pem(_) if a.new_key => {
            dps_pki::csr::new_key_and_request(&device_id, a.csr_key_type).map(|(pem, csr)| (CsrKey::Pem(pem), csr))
        }
        CsrKey::Pem(pem) => dps_pki::csr::request_for_key_pem(&device_id, &pem).map(|csr| (CsrKey::Pem(pem), csr)),
        CsrKey::Held(key) => {
            dps_pki::held_key::certificate_request(&device_id, key.clone()).map(|csr| (CsrKey::Held(key), csr))
        }
    }
    .context("cannot make the certificate signing request")?;
    let hub = a
        .hub
        .clone()
        .or_else(|| dir.load_identity().ok().map(|i| i.hub.host_name))
        .ok_or_else(|| anyhow!("no hub: pass --hub, or --data-dir of a server"))?;
    let port = a
        .hub_port
        .or_else(|| dir.runtime().map(|r| r.mqtt_port))
        .unwrap_or(8883);
    let timeout = Duration::from_secs(a.common.timeout.max(1));
    let connect = |provider: Arc<dyn SecurityProvider>| {
        HubClient::builder(&hub, &device_id, provider, &ca)
            .port(port)
            .timeout(timeout)
            .connect()
    };
    let client = connect(Arc::new(current))
        .await
        .with_context(|| format!("cannot connect to hub {hub}:{port} as '{device_id}'"))?;
    let renewed = client.renew_certificate(&csr).await;
    let _ = client.disconnect().await;
    let chain = renewed.with_context(|| format!("hub {hub} did not renew the certificate of '{device_id}'"))?;
    let (provider, files) = keep_issued(&a.out_dir, &device_id, Some(&chain), key)?;
    // As a device would: the next connection uses the new certificate.
    connect(provider)
        .await
        .with_context(|| format!("the renewed certificate does not connect to hub {hub}"))?
        .disconnect()
        .await?;
    if a.common.json {
        output::json(&json!({
            "deviceId": device_id,
            "hub": hub,
            "issuedCertificatePath": files.certificate.display().to_string(),
            "issuedKeyPath": files.key.as_ref().map(|k| k.display().to_string()),
            "issuedKeyTpmHandle": files.key.is_none().then(|| format!("0x{:08x}", dps_client::CLIENT_KEY_HANDLE)),
            "issuedCertificateChain": chain,
        }));
    } else {
        out!(
            "renewed the certificate of {device_id} at hub {hub}: saved to {}",
            files.describe()
        );
    }
    Ok(())
}

//! `dps tpm …`: look at a TPM 2.0 the way an operator enrolling it needs to, and open it as a
//! device identity for `dps device provision --tpm`.
//!
//! The TPM is chosen by a TCTI string, as tpm2-tools does (`--tcti`, or `TPM2TOOLS_TCTI`):
//! `device:/dev/tpmrm0` (the default), `swtpm:host=127.0.0.1,port=2321`, `mssim:…`, `tabrmd:…`.
//! TPM support is the cargo feature `tpm` (it links the system libtss2); a build without it
//! still has these commands and says how to get them working.

use std::sync::Arc;

use anyhow::Result;
use clap::{Args, Subcommand};
use dps_client::SecurityProvider;

/// `dps tpm …`
#[derive(Subcommand, Debug)]
pub enum TpmCommand {
    /// Print the TPM's endorsement key, storage root key, registration id and endorsement key
    /// certificate, for an individual enrollment (`dps enrollment create --attestation-type
    /// tpm`). Creates and persists the EK (0x81010001) and SRK (0x81000001) if the TPM has none
    /// yet.
    Info(InfoArgs),
}

/// Which TPM: shared by `dps tpm`, `dps device provision --tpm` and
/// `dps device renew-certificate --tpm`.
#[derive(Args, Debug, Clone)]
pub struct TctiArgs {
    /// The TPM, as a TCTI string: `device:/dev/tpmrm0`, `swtpm:host=H,port=P`, `mssim:…`.
    #[arg(long, env = "TPM2TOOLS_TCTI", default_value = dps_client::DEFAULT_TPM_TCTI)]
    pub tcti: String,
}

/// `dps tpm info`
#[derive(Args, Debug)]
pub struct InfoArgs {
    #[command(flatten)]
    pub tpm: TctiArgs,
    /// Print JSON: `registrationId`, and `endorsementKey` / `storageRootKey` base64 as the
    /// service API's `attestation.tpm` takes them, `endorsementKeyCertificate` (PEM) when the
    /// TPM holds one, and `clientKey` (`handle`, `algorithm`, `publicKey`: base64 of the
    /// uncompressed point) when a `--csr` key was made in it.
    #[arg(long)]
    pub json: bool,
    /// Write the TPM's endorsement key certificate (PEM) to this file, for
    /// `dps enrollment create --endorsement-key-certificate`.
    #[arg(long, value_name = "FILE")]
    pub save_ek_certificate: Option<std::path::PathBuf>,
}

/// Runs a `dps tpm` command.
pub fn run(c: TpmCommand) -> Result<()> {
    match c {
        TpmCommand::Info(a) => info(a),
    }
}

#[cfg(feature = "tpm")]
fn info(a: InfoArgs) -> Result<()> {
    use base64::Engine as _;
    use serde_json::json;

    use crate::output::{self, out};

    let tpm = open(&a.tpm.tcti)?;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let (ek, srk) = (b64(tpm.endorsement_key()), b64(tpm.storage_root_key()));
    let ek_certificate = tpm
        .endorsement_key_certificate()
        .map_err(|e| anyhow::anyhow!("cannot read the TPM's endorsement key certificate: {e}"))?
        .map(|der| dps_pki::pem::to_pem("CERTIFICATE", &der));
    let client_key = tpm
        .client_key()
        .map_err(|e| anyhow::anyhow!("cannot read the TPM's client key: {e}"))?;
    let client_key_json = client_key.as_ref().map(|k| {
        use dps_pki::held_key::HeldKey as _;
        json!({
            "handle": format!("0x{:08x}", dps_client::CLIENT_KEY_HANDLE),
            "algorithm": k.algorithm().name(),
            "publicKey": b64(k.public_key()),
        })
    });
    if let (Some(path), Some(pem)) = (&a.save_ek_certificate, &ek_certificate) {
        std::fs::write(path, pem).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    if a.json {
        output::json(&json!({
            "registrationId": tpm.registration_id(),
            "endorsementKey": ek,
            "storageRootKey": srk,
            "endorsementKeyCertificate": ek_certificate,
            "clientKey": client_key_json,
        }));
    } else {
        out!("registration id   {}", tpm.registration_id());
        out!("endorsement key   {ek}");
        out!("storage root key  {srk}");
        let issuer = ek_certificate
            .as_deref()
            .and_then(|pem| dps_pki::pem::parse_certificates(pem).ok())
            .and_then(|c| c.first().and_then(|d| dps_pki::info::summarize(d).ok()))
            .map(|s| s.issuer_name);
        match (&issuer, &a.save_ek_certificate) {
            (Some(issuer), Some(path)) => out!("EK certificate    issued by '{issuer}', saved to {}", path.display()),
            (Some(issuer), None) => {
                out!("EK certificate    issued by '{issuer}' (save it with --save-ek-certificate FILE)")
            }
            (None, _) => out!("EK certificate    none in the TPM"),
        }
        match &client_key {
            Some(k) => out!(
                "client key        {} at 0x{:08x} (made for a certificate signing request)",
                dps_pki::held_key::HeldKey::algorithm(k.as_ref()),
                dps_client::CLIENT_KEY_HANDLE
            ),
            None => out!("client key        none (dps device provision --tpm --csr makes one)"),
        }
        out!("");
        match (&issuer, &a.save_ek_certificate) {
            (Some(_), Some(path)) => out!(
                "enroll with: dps enrollment create --registration-id {} --attestation-type tpm \
                 --endorsement-key-certificate {} --storage-root-key {srk}",
                tpm.registration_id(),
                path.display()
            ),
            _ => out!(
                "enroll with: dps enrollment create --registration-id {} --attestation-type tpm --endorsement-key {ek} \
                 --storage-root-key {srk}",
                tpm.registration_id()
            ),
        }
    }
    Ok(())
}

#[cfg(not(feature = "tpm"))]
fn info(_: InfoArgs) -> Result<()> {
    Err(no_tpm_support())
}

/// libtss2 logs every TPM error response to stderr by itself (`ERROR:esys:…`), in front of the
/// error dps reports with context; silence it unless the user asked for TSS logs (`TSS2_LOG`).
/// Must run before any thread starts: changing the environment is only sound single-threaded.
#[cfg(feature = "tpm")]
pub fn quiet_tss_logs() {
    if std::env::var_os("TSS2_LOG").is_none() {
        std::env::set_var("TSS2_LOG", "all+NONE");
    }
}

/// Opens the TPM at `tcti` (its errors name the TCTI).
#[cfg(feature = "tpm")]
fn open(tcti: &str) -> Result<dps_client::TpmProvider> {
    Ok(dps_client::TpmProvider::open(tcti)?)
}

/// The device for `dps device provision --tpm`: its identity in the TPM, and the TPM to make
/// a `--csr` key in.
#[cfg(feature = "tpm")]
pub struct TpmDevice {
    tpm: Arc<dps_client::TpmProvider>,
}

/// Without the `tpm` feature there is no TPM device: [`TpmDevice::open`] says how to get one.
#[cfg(not(feature = "tpm"))]
pub enum TpmDevice {}

#[cfg(feature = "tpm")]
impl TpmDevice {
    /// The TPM at `tcti`, registering as `registration_id` or, by default, the id derived from
    /// its EK.
    pub fn open(tcti: &str, registration_id: Option<&str>) -> Result<Self> {
        let tpm = open(tcti)?;
        let tpm = match registration_id {
            Some(id) => tpm.with_registration_id(id),
            None => tpm,
        };
        Ok(Self { tpm: Arc::new(tpm) })
    }

    /// The identity the device registers with (TPM attestation).
    pub fn provider(&self) -> Arc<dyn SecurityProvider> {
        self.tpm.clone()
    }

    /// A new client key of `algorithm` made in the TPM (replacing the previous one at
    /// 0x81000101) and a certificate signing request for it with CN `registration_id`.
    pub fn new_csr_key(
        &self,
        registration_id: &str,
        algorithm: dps_pki::ca::KeyAlgorithm,
    ) -> Result<(Vec<u8>, Arc<dyn dps_pki::held_key::HeldKey>)> {
        let key = self.tpm.create_client_key(algorithm)?;
        let csr = dps_pki::held_key::certificate_request(registration_id, key.clone())?;
        Ok((csr, key))
    }

    /// The client key a `--csr` made earlier (0x81000101).
    pub fn client_key(&self) -> Result<Arc<dyn dps_pki::held_key::HeldKey>> {
        match self.tpm.client_key()? {
            Some(key) => Ok(key),
            None => anyhow::bail!(
                "the TPM holds no client key (0x{:08x}): dps device provision --tpm --csr makes one",
                dps_client::CLIENT_KEY_HANDLE
            ),
        }
    }
}

/// Without the `tpm` feature: opening fails with the error that says how to get TPM support.
#[cfg(not(feature = "tpm"))]
impl TpmDevice {
    /// Fails: this build has no TPM support.
    pub fn open(_tcti: &str, _registration_id: Option<&str>) -> Result<Self> {
        Err(no_tpm_support())
    }

    /// No value exists to call this on.
    pub fn provider(&self) -> Arc<dyn SecurityProvider> {
        match *self {}
    }

    /// No value exists to call this on.
    pub fn client_key(&self) -> Result<Arc<dyn dps_pki::held_key::HeldKey>> {
        match *self {}
    }

    /// No value exists to call this on.
    pub fn new_csr_key(
        &self,
        _registration_id: &str,
        _algorithm: dps_pki::ca::KeyAlgorithm,
    ) -> Result<(Vec<u8>, Arc<dyn dps_pki::held_key::HeldKey>)> {
        match *self {}
    }
}

#[cfg(not(feature = "tpm"))]
fn no_tpm_support() -> anyhow::Error {
    anyhow::anyhow!(
        "this dps was built without TPM support; rebuild it with `cargo build --release --features tpm` \
         (needs the TPM2 software stack: on Debian `apt-get install libtss2-dev pkg-config`, and \
         `libtss2-tcti-swtpm0` for swtpm)"
    )
}

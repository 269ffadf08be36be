//! `dps portal-link`: a one-time sign-in link to the web portal of the server whose data
//! directory this is (the owner of the service and of every hub, once, within 15 minutes),
//! signed with the identity's portal key.

use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use clap::Args;
use dps_datadir::DataDir;

/// `dps portal-link`
#[derive(Args, Debug)]
pub struct PortalLinkArgs {
    /// Data directory of the server (its identity holds the portal key).
    #[arg(long, env = "DPS_DATA_DIR", default_value = "./dps-data")]
    pub data_dir: PathBuf,
    /// The host name the browser reaches the server by [default: the server's first
    /// `--hostname`].
    #[arg(long)]
    pub host: Option<String>,
    /// The server's HTTPS port [default: the one it recorded, else 443].
    #[arg(long)]
    pub port: Option<u16>,
}

/// Prints the link.
pub fn run(a: PortalLinkArgs) -> Result<()> {
    let dir = DataDir::new(&a.data_dir);
    let identity = dir
        .load_identity()
        .with_context(|| format!("{} is not a server's data directory", a.data_dir.display()))?;
    if identity.portal_key.is_empty() {
        return Err(anyhow!(
            "the identity has no portal key yet: start the server once with this build"
        ));
    }
    let runtime = dir.runtime();
    let host = a
        .host
        .or_else(|| runtime.as_ref().and_then(|r| r.hostnames.first().cloned()))
        .unwrap_or_else(|| "localhost".into());
    let port = a.port.or(runtime.map(|r| r.https_port)).unwrap_or(443);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let base = dps_server::portal::base_url(&host, port);
    crate::output::line(&dps_server::portal::sign_in_link(&identity.portal_key, &base, now));
    Ok(())
}

//! Runs a real software TPM (`swtpm`, Debian package `swtpm`) for tests: one process per
//! [`SwTpm`], each on its own loopback address so tests run in parallel on the standard ports,
//! killed on drop. Tests bind only 127.0.0.0/8.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// swtpm's command port (the TCG simulator's default); the control port is the next one.
const SERVER_PORT: u16 = 2321;
/// How long swtpm may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// Addresses tried before giving up (another process may hold one).
const ATTEMPTS: u32 = 8;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A running swtpm with a fresh state directory (so a fresh EK seed).
pub struct SwTpm {
    child: Child,
    host: Ipv4Addr,
    // Kept until the process is gone: it holds the TPM state.
    _state: tempfile::TempDir,
}

impl std::fmt::Debug for SwTpm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwTpm").field("tcti", &self.tcti()).finish()
    }
}

/// A loopback address in 127.77.0.0/16 that this process has not used, spread by pid so
/// concurrent test binaries rarely meet.
fn next_address() -> Ipv4Addr {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let v = std::process::id().wrapping_mul(131).wrapping_add(n) % (250 * 250);
    Ipv4Addr::new(127, 77, (v / 250 + 1) as u8, (v % 250 + 2) as u8)
}

fn ports_free(host: Ipv4Addr) -> bool {
    [SERVER_PORT, SERVER_PORT + 1]
        .iter()
        .all(|p| TcpListener::bind((host, *p)).is_ok())
}

impl SwTpm {
    /// Starts swtpm (TPM 2.0, already started up: `not-need-init,startup-clear`) and waits until it
    /// accepts connections.
    pub fn start() -> io::Result<SwTpm> {
        let mut last_err = None;
        for _ in 0..ATTEMPTS {
            let host = next_address();
            if !ports_free(host) {
                continue;
            }
            match Self::start_on(host, tempfile::tempdir()?) {
                Ok(t) => return Ok(t),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(e),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::new(io::ErrorKind::AddrInUse, "no free loopback address for swtpm")))
    }

    /// Starts swtpm as a TPM manufacturer ships it: `swtpm_setup` first creates its endorsement
    /// keys and stores their certificates, issued by the CA `ca_cert_pem` / `ca_key_pem` (PEM;
    /// the key unencrypted), in NV (RSA-2048 at `0x01C00002`, as the TCG profile says).
    pub fn start_manufactured(ca_cert_pem: &str, ca_key_pem: &str) -> io::Result<SwTpm> {
        let state = tempfile::tempdir()?;
        let ca = tempfile::tempdir()?;
        let path = |name: &str| ca.path().join(name);
        std::fs::write(path("ca.pem"), ca_cert_pem)?;
        std::fs::write(path("ca.key"), ca_key_pem)?;
        std::fs::write(path("certserial"), "1\n")?;
        std::fs::write(path("localca.options"), "")?;
        std::fs::create_dir(path("localca"))?;
        std::fs::write(
            path("localca.conf"),
            format!(
                "statedir = {}\nsigningkey = {}\nissuercert = {}\ncertserial = {}\n",
                path("localca").display(),
                path("ca.key").display(),
                path("ca.pem").display(),
                path("certserial").display()
            ),
        )?;
        std::fs::write(
            path("setup.conf"),
            format!(
                "create_certs_tool = swtpm_localca\ncreate_certs_tool_config = {}\ncreate_certs_tool_options = {}\n",
                path("localca.conf").display(),
                path("localca.options").display()
            ),
        )?;
        let out = Command::new("swtpm_setup")
            .arg("--tpm2")
            .arg("--tpmstate")
            .arg(state.path())
            .arg("--create-ek-cert")
            .arg("--config")
            .arg(path("setup.conf"))
            .arg("--overwrite")
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "swtpm_setup failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Self::start_with(state)
    }

    /// Starts swtpm on a loopback address whose ports are free now, once (its manufactured
    /// state cannot be tried again elsewhere once swtpm used it).
    fn start_with(state: tempfile::TempDir) -> io::Result<SwTpm> {
        let host = (0..ATTEMPTS)
            .map(|_| next_address())
            .find(|h| ports_free(*h))
            .ok_or_else(|| io::Error::new(io::ErrorKind::AddrInUse, "no free loopback address for swtpm"))?;
        Self::start_on(host, state)
    }

    fn start_on(host: Ipv4Addr, state: tempfile::TempDir) -> io::Result<SwTpm> {
        let child = Command::new("swtpm")
            .arg("socket")
            .arg("--tpm2")
            .arg("--tpmstate")
            .arg(format!("dir={}", state.path().display()))
            .arg("--server")
            .arg(format!("type=tcp,port={SERVER_PORT},bindaddr={host}"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={},bindaddr={host}", SERVER_PORT + 1))
            .arg("--flags")
            .arg("not-need-init,startup-clear")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => io::Error::new(
                    e.kind(),
                    "the swtpm binary is not on PATH (Debian: apt-get install swtpm swtpm-tools; see scripts/install-deps.sh)",
                ),
                _ => e,
            })?;
        let mut tpm = SwTpm {
            child,
            host,
            _state: state,
        };
        tpm.wait_ready()?;
        Ok(tpm)
    }

    fn wait_ready(&mut self) -> io::Result<()> {
        let addr = SocketAddr::from((self.host, SERVER_PORT));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                let mut stderr = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = io::Read::read_to_string(&mut e, &mut stderr);
                }
                return Err(io::Error::other(format!(
                    "swtpm on {} exited with {status}: {}",
                    self.host,
                    stderr.trim()
                )));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("swtpm did not accept connections on {addr} within {START_TIMEOUT:?}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The TCTI string for tss libraries and tpm2-tools (`TPM2TOOLS_TCTI`).
    pub fn tcti(&self) -> String {
        format!("swtpm:host={},port={SERVER_PORT}", self.host)
    }

    /// The loopback address swtpm listens on.
    pub fn host(&self) -> String {
        self.host.to_string()
    }

    /// The command port.
    pub fn port(&self) -> u16 {
        SERVER_PORT
    }
}

impl Drop for SwTpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

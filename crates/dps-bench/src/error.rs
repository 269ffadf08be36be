//! [`BenchError`]: why a run could not start or was cut short.
//!
//! Each variant's message says what failed, in the operator's terms (a flag, the open-file limit,
//! the server's address); its [`source`](std::error::Error::source) is the typed cause. Print the
//! whole chain (`{:#}` of `anyhow`, as `dps bench` does) to show both: "cannot read the CA
//! certificate: no certificate found in the input". Failures of single simulated devices are not
//! errors of the run: they are counted in the report.

use std::net::AddrParseError;

use dps_client::ClientError;
use dps_pki::PkiError;

/// Why a run could not start or was cut short.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// The controls are out of range or contradict each other (`--devices 0`, x509 attestation
    /// without a device count, a hold that needs more client ports than one source address
    /// has). Nothing was sent; the message names the flag and what to give instead.
    #[error("{0}")]
    Controls(String),
    /// An item of `--source-addresses` is not an address. Nothing was sent.
    #[error("--source-addresses: '{item}' is not {expected}")]
    SourceAddress {
        /// The item as given.
        item: String,
        /// What it should have been ("an IPv4 address" in a range, "an IP address" alone).
        expected: &'static str,
        /// The parser's reason.
        source: AddrParseError,
    },
    /// The operating system refused to report or raise this process's open-file limit.
    #[error("cannot raise the open-file limit")]
    OpenFileLimit(#[source] std::io::Error),
    /// The run needs more open files (sockets) than this process may open, and the hard limit
    /// cannot be raised without privileges.
    #[error(
        "this run needs about {wanted} open files, but this process may open only {limit} (its hard limit; \
         raising that needs CAP_SYS_RESOURCE: `ulimit -Hn {wanted}` as root in the shell that starts the bench)"
    )]
    TooFewFiles {
        /// Open files the run needs.
        wanted: u64,
        /// The limit this process got.
        limit: u64,
    },
    /// The server (`--server-pid`) may open fewer files than the connections a hold keeps open.
    #[error(
        "the server (PID {pid}) may open only {limit} files, too few for {held} connections: start it \
         from a shell with a higher limit (`ulimit -n {suggested}`)"
    )]
    ServerTooFewFiles {
        /// The server's process id.
        pid: u32,
        /// The server's soft open-file limit.
        limit: u64,
        /// Connections the hold keeps open.
        held: u64,
        /// The limit to start the server with.
        suggested: u64,
    },
    /// The bench's own certificates (its CA, the device intermediate, a device certificate)
    /// could not be made or read back; `what` says which.
    #[error("{what}")]
    Certificates {
        /// Which certificate, e.g. "cannot issue the certificate of bench-1a2b3c4d-7".
        what: String,
        /// The PKI error.
        source: PkiError,
    },
    /// The task issuing the device certificates ended without its result (a panic in one of
    /// its threads, or the runtime shutting down).
    #[error("the certificate issuing task failed")]
    CertificateTask(#[source] tokio::task::JoinError),
    /// The service API refused or could not take the bench's enrollment group (a wrong
    /// connection string, an unreachable server, a refused attestation).
    #[error("cannot create the bench enrollment group")]
    CreateGroup(#[source] ClientError),
    /// A host name of the target is not a valid TLS server name.
    #[error("'{host}' is not a valid host name")]
    HostName {
        /// The host name.
        host: String,
        /// Why rustls refuses it.
        source: rustls_pki_types::InvalidDnsNameError,
    },
    /// A host name of the target could not be resolved.
    #[error("cannot resolve {host}")]
    Resolve {
        /// The host name.
        host: String,
        /// The resolver's error.
        source: std::io::Error,
    },
    /// A host name of the target resolved to no address.
    #[error("{host} has no address")]
    NoAddress {
        /// The host name.
        host: String,
    },
    /// The server's CA certificate (the data directory's `ca.pem` or `--ca`) is not readable
    /// PEM.
    #[error("cannot read the CA certificate")]
    CaCertificate(#[source] PkiError),
    /// rustls refused the CA certificate as a trust root.
    #[error("cannot trust the CA certificate")]
    Trust(#[source] rustls::Error),
    /// rustls could not make a client configuration (its crypto provider supports none of the
    /// safe default protocol versions).
    #[error("cannot build the TLS client configuration")]
    TlsConfig(#[source] rustls::Error),
    /// The CA certificate cannot verify server certificates (rustls's verifier refused it).
    #[error("cannot verify with the CA certificate")]
    Verifier(#[source] rustls::client::VerifierBuilderError),
    /// The server under test refused or failed a request the run depends on (the query mode's
    /// seeding or queries); the message names it.
    #[error("server: {0}")]
    Server(String),
    /// The telemetry run could not set up: a device did not register or connect, or the Event
    /// Hubs consumer could not open, authenticate or attach (the message says which).
    #[error("telemetry: {0}")]
    Telemetry(String),
}

impl BenchError {
    /// A [`BenchError::Server`] failure: the server under test answered what it should not.
    pub(crate) fn server(message: impl Into<String>) -> Self {
        Self::Server(message.into())
    }

    /// A [`BenchError::Controls`] refusal.
    pub(crate) fn controls(message: impl Into<String>) -> Self {
        Self::Controls(message.into())
    }

    /// A [`BenchError::Certificates`] failure: `what` failed because of `source`.
    pub(crate) fn certificates(what: impl Into<String>, source: PkiError) -> Self {
        Self::Certificates {
            what: what.into(),
            source,
        }
    }
}

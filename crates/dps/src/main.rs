//! The `dps` command line: `dps serve` runs the service; the other commands are shaped like
//! `az iot dps` / `az iot hub` and talk to a running server's REST API.

#![forbid(unsafe_code)]

mod audit;
mod bench;
mod ca;
mod certificate;
mod credential_policy;
mod device;
mod dice;
mod enrollment;
mod hub;
mod info;
mod linked_hub;
mod otel;
mod output;
mod policy;
mod portal;
mod registration;
mod remote;
mod revocation;
mod serve;
mod tpm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// jemalloc rather than glibc's allocator: on the telemetry path glibc's malloc and free took
/// about a fifth of the server's CPU (arena locking and consolidation across tokio's worker
/// threads; BENCHMARKS.md, decision 0025).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A self-hosted, Azure-compatible IoT Hub Device Provisioning Service.
#[derive(Parser)]
#[command(name = "dps", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the provisioning service and its embedded IoT hub.
    Serve(serve::ServeArgs),
    /// Print how to connect to the service in a data directory (ID scope, connection strings, CA).
    Info(info::InfoArgs),
    /// Individual enrollments (like `az iot dps enrollment`).
    #[command(subcommand)]
    Enrollment(enrollment::EnrollmentCommand),
    /// Enrollment groups (like `az iot dps enrollment-group`).
    #[command(subcommand)]
    EnrollmentGroup(enrollment::GroupCommand),
    /// Device registration records.
    #[command(subcommand)]
    Registration(registration::RegistrationCommand),
    /// Load generator: many distinct devices registering (and using the hub) at once.
    Bench(bench::BenchCommand),
    /// A local PKI: root and intermediate CAs, device and verification certificates.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// CA certificates with proof of possession (like `az iot dps certificate`).
    #[command(subcommand)]
    Certificate(certificate::CertificateCommand),
    /// Credential policies: the CAs that issue certificates to devices sending a CSR.
    #[command(subcommand)]
    CredentialPolicy(credential_policy::CredentialPolicyCommand),
    /// Revoked device certificates, refused at registration and at the hub; CRL import.
    #[command(subcommand)]
    Revocation(revocation::RevocationCommand),
    /// The IoT hubs devices may be assigned to (like `az iot dps linked-hub`).
    #[command(subcommand)]
    LinkedHub(linked_hub::LinkedHubCommand),
    /// A one-time sign-in link to the web portal (as the owner, within 15 minutes).
    PortalLink(portal::PortalLinkArgs),
    /// The audit trail: registration attempts and changes (list, export as JSON lines).
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Shared access policies of the service, or of an embedded hub with --hub-name (like
    /// `az iot dps policy`, `az iot hub policy`).
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Derive a device's key from an enrollment group key (offline).
    ComputeDeviceKey(device::ComputeKeyArgs),
    /// DICE identities: DevKit `dps_cert_gen`-exact alias certificates and TCG DICE identities.
    #[command(subcommand)]
    Dice(dice::DiceCommand),
    /// The IoT hub: device registry, twins, telemetry (like `az iot hub`).
    #[command(subcommand)]
    Hub(hub::HubCommand),
    /// Act as a device, with the Rust device SDK.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// TPM 2.0: a TPM's endorsement key, storage root key and registration id (for enrollment).
    #[command(subcommand)]
    Tpm(tpm::TpmCommand),
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// Register with DPS, connect to the assigned hub and send a message.
    Provision(Box<device::ProvisionArgs>),
    /// Renew a device's certificate through its hub (IoT Hub certificate management): connect
    /// with the current one, send a certificate signing request, keep the new chain.
    RenewCertificate(Box<device::RenewArgs>),
}

/// Logging for the client commands: warnings only unless `DPS_LOG` says otherwise, on stderr so
/// `--json` output stays clean. (`dps serve` sets up its own.)
fn init_client_logging() {
    // tss-esapi logs every failed TPM call at ERROR through `log`; dps reports the same failure
    // with context, so it is silent unless DPS_LOG asks for it.
    let filter = std::env::var("DPS_LOG").unwrap_or_else(|_| "warn,tss_esapi=off".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    #[cfg(feature = "tpm")]
    tpm::quiet_tss_logs();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(a) => serve::run(a).await,
            Command::Info(a) => info::run(a),
            other => {
                init_client_logging();
                match other {
                    Command::Enrollment(c) => enrollment::run_enrollment(c).await,
                    Command::EnrollmentGroup(c) => enrollment::run_group(c).await,
                    Command::Registration(c) => registration::run(c).await,
                    Command::Certificate(c) => certificate::run(c).await,
                    Command::CredentialPolicy(c) => credential_policy::run(c).await,
                    Command::Revocation(c) => revocation::run(c).await,
                    Command::LinkedHub(c) => linked_hub::run(c).await,
                    Command::Policy(c) => policy::run(c).await,
                    Command::Audit(c) => audit::run(c).await,
                    Command::PortalLink(a) => portal::run(a),
                    Command::Ca(c) => ca::run(c),
                    Command::Bench(a) => bench::run(a).await,
                    Command::ComputeDeviceKey(a) => device::compute_key(a),
                    Command::Dice(c) => dice::run(c),
                    Command::Hub(c) => hub::run(c).await,
                    Command::Device(DeviceCommand::Provision(a)) => device::provision(*a).await,
                    Command::Device(DeviceCommand::RenewCertificate(a)) => device::renew(*a).await,
                    Command::Tpm(c) => tpm::run(c),
                    Command::Serve(_) | Command::Info(_) => unreachable!("handled above"),
                }
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("dps").chain(args.iter().copied()))
    }

    #[test]
    fn command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn enrollment_create_flags() {
        let cli = parse(&[
            "enrollment",
            "create",
            "--registration-id",
            "dev-1",
            "--primary-key",
            "cA==",
            "--provisioning-status",
            "Disabled",
            "--initial-twin-properties",
            r#"{"fw":"1"}"#,
            "--iot-hubs",
            "h1,h2",
            "--allocation-policy",
            "geolatency",
            "--edge-enabled",
            "--connection-string",
            "HostName=h;SharedAccessKeyName=p;SharedAccessKey=cA==",
            "--json",
        ])
        .unwrap();
        let Command::Enrollment(enrollment::EnrollmentCommand::Create(c)) = cli.command else {
            panic!()
        };
        assert_eq!(c.registration_id, "dev-1");
        assert_eq!(c.settings.primary_key.as_deref(), Some("cA=="));
        assert_eq!(
            c.settings.provisioning_status,
            Some(dps_proto::model::service::ProvisioningStatus::Disabled)
        );
        assert_eq!(c.settings.iot_hubs, Some(vec!["h1".to_string(), "h2".to_string()]));
        assert_eq!(
            c.settings.allocation_policy,
            Some(dps_proto::model::service::AllocationPolicy::GeoLatency)
        );
        assert_eq!(c.settings.edge_enabled, Some(true));
        assert!(c.target.server.json);
        assert!(c.target.connection_string.is_some());
        // az's spelling of the id flag works too, and `--edge-enabled false`.
        let cli = parse(&[
            "enrollment",
            "update",
            "--enrollment-id",
            "d",
            "--edge-enabled",
            "false",
        ])
        .unwrap();
        let Command::Enrollment(enrollment::EnrollmentCommand::Update(u)) = cli.command else {
            panic!()
        };
        assert_eq!(
            (u.registration_id.as_str(), u.settings.edge_enabled),
            ("d", Some(false))
        );
    }

    #[test]
    fn bad_values_are_refused() {
        for args in [
            &[
                "enrollment",
                "create",
                "--registration-id",
                "d",
                "--provisioning-status",
                "maybe",
            ][..],
            &[
                "enrollment",
                "create",
                "--registration-id",
                "d",
                "--allocation-policy",
                "random",
            ],
            &[
                "enrollment",
                "create",
                "--registration-id",
                "d",
                "--initial-twin-tags",
                "[1]",
            ],
            &[
                "enrollment",
                "create",
                "--registration-id",
                "d",
                "--attestation-type",
                "psk",
            ],
            &[
                "enrollment",
                "create",
                "--registration-id",
                "d",
                "--webhook-url",
                "https://x",
            ],
            &["enrollment", "create"],
            &["device", "provision", "--registration-id", "d"],
            &[
                "device",
                "provision",
                "--registration-id",
                "d",
                "--symmetric-key",
                "a",
                "--group-key",
                "b",
            ],
            &[
                "device",
                "provision",
                "--registration-id",
                "d",
                "--symmetric-key",
                "a",
                "--transport",
                "websocket",
            ],
            &["hub", "device", "twin", "update", "--device-id", "d"],
            &["compute-device-key", "--key", "k"],
        ] {
            assert!(parse(args).is_err(), "{args:?} should be refused");
        }
    }

    #[test]
    fn group_registration_hub_and_device_flags() {
        let cli = parse(&[
            "enrollment-group",
            "show",
            "--group-id",
            "g",
            "--show-keys",
            "--port",
            "8443",
            "--ca",
            "ca.pem",
        ])
        .unwrap();
        let Command::EnrollmentGroup(enrollment::GroupCommand::Show(s)) = cli.command else {
            panic!()
        };
        assert!(s.show_keys);
        assert_eq!(s.target.server.port, Some(8443));
        assert_eq!(s.target.server.ca.as_deref(), Some(std::path::Path::new("ca.pem")));

        let cli = parse(&["registration", "list", "--group-id", "g", "--top", "5"]).unwrap();
        assert!(
            matches!(cli.command, Command::Registration(registration::RegistrationCommand::List(ref l)) if l.top == Some(5))
        );

        let cli = parse(&[
            "hub",
            "monitor-events",
            "--device-id",
            "d",
            "--timeout",
            "5",
            "--max-events",
            "1",
        ])
        .unwrap();
        let Command::Hub(hub::HubCommand::MonitorEvents(m)) = cli.command else {
            panic!()
        };
        assert_eq!(
            (m.device_id.as_deref(), m.timeout, m.max_events),
            (Some("d"), 5, Some(1))
        );

        let cli = parse(&["hub", "device", "twin", "show", "-d", "dev"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Hub(hub::HubCommand::Device(hub::DeviceCommand::Twin(_)))
        ));

        for (name, transport) in [
            ("HTTPS", dps_client::Transport::Https),
            ("amqp", dps_client::Transport::Amqp),
        ] {
            let cli = parse(&[
                "device",
                "provision",
                "--registration-id",
                "d",
                "--group-key",
                "Zw==",
                "--transport",
                name,
            ])
            .unwrap();
            let Command::Device(DeviceCommand::Provision(p)) = cli.command else {
                panic!()
            };
            assert_eq!(p.transport, Some(transport));
            assert_eq!(p.message, r#"{"hello":"from dps"}"#);
            assert_eq!(p.group_key.as_deref(), Some("Zw=="));
        }

        // A TPM needs no registration id (it is derived from the EK) and takes a TCTI.
        let cli = parse(&[
            "device",
            "provision",
            "--tpm",
            "--tcti",
            "swtpm:host=127.0.0.1,port=2321",
        ])
        .unwrap();
        let Command::Device(DeviceCommand::Provision(p)) = cli.command else {
            panic!()
        };
        assert!(p.tpm && p.registration_id.is_none() && p.transport.is_none());
        assert_eq!(p.tpm_at.tcti, "swtpm:host=127.0.0.1,port=2321");
        let cli = parse(&["tpm", "info", "--json"]).unwrap();
        assert!(matches!(cli.command, Command::Tpm(tpm::TpmCommand::Info(ref i)) if i.json));

        let cli = parse(&["compute-device-key", "--key", "Zw==", "--registration-id", "d"]).unwrap();
        assert!(matches!(cli.command, Command::ComputeDeviceKey(_)));
    }
}

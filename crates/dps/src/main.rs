//! The `dps` command line: `dps serve` runs the service; the other commands are shaped like
//! `az iot dps` / `az iot hub` and talk to a running server's REST API.

#![forbid(unsafe_code)]

mod info;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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

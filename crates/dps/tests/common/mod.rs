//! A `dps serve` child process on its own loopback address, and helpers to run the CLI against
//! it. Every test uses a different 127.0.0.X, so all of them can use the standard ports 8883 and
//! 443 at once (the tests run as root).

#![allow(dead_code)]

pub mod storm;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `dps` binary under test.
pub fn dps_bin() -> &'static str {
    env!("CARGO_BIN_EXE_dps")
}

/// A running server; killed when dropped.
pub struct Server {
    child: Child,
    pub ip: String,
    pub dir: tempfile::TempDir,
    /// The extra `dps serve` flags it was started with (kept for [`Server::restart`]).
    extra_args: Vec<String>,
}

impl Server {
    /// Starts `dps serve` on `ip` (hostname and hub host name are `ip` too) and waits until its
    /// HTTPS and MQTT ports accept connections.
    pub fn start(ip: &str) -> Server {
        Server::start_with(ip, &[])
    }

    /// The server's process id (for `dps bench --server-pid`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The data directory.
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    /// The local CA, PEM.
    pub fn ca(&self) -> String {
        std::fs::read_to_string(self.data().join("ca.pem")).unwrap()
    }

    /// A CLI command with this server's data directory and no connection strings from the
    /// environment.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(dps_bin());
        c.args(args)
            .env("DPS_DATA_DIR", self.data())
            .env_remove("DPS_CONNECTION_STRING")
            .env_remove("DPS_HUB_CONNECTION_STRING")
            .env_remove("DPS_LOG");
        c
    }

    /// Runs the CLI to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("dps runs")
    }

    /// Runs the CLI, asserting success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "dps {args:?} failed ({}):\nstdout: {}\nstderr: {}\nserver log: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs the CLI with `--json`, asserting success; returns the parsed output.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let text = self.ok(&a);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("dps {a:?} printed no JSON ({e}): {text}"))
    }

    /// Runs the CLI, asserting failure; returns stderr.
    pub fn fail(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "dps {args:?} should have failed:\nstdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    /// `dps info --json`.
    pub fn info(&self) -> Value {
        self.json(&["info"])
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for a child process to exit, killing it after `limit`.
pub fn wait_with_limit(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait().unwrap() {
            Some(_) => return child.wait_with_output().unwrap(),
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "process did not exit within {limit:?}:\nstdout: {}\nstderr: {}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// A path's string form.
pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

impl Server {
    /// [`Server::start`] with more `dps serve` flags (limits, deadlines).
    pub fn start_with(ip: &str, extra_args: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
        let mut server = Server {
            child: spawn_serve(ip, &dir.path().join("data"), extra_args, log),
            ip: ip.to_string(),
            dir,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
        };
        server.wait_until_up("dps serve");
        server
    }

    /// SIGKILLs the server — no shutdown of any kind, as a crash or `kill -9` — and reaps it.
    pub fn kill9(&mut self) {
        // `Child::kill` is SIGKILL on Unix.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts `dps serve` again on the same data directory, address and flags (after
    /// [`Server::kill9`]), appending to the same log, and waits until both ports accept
    /// connections.
    pub fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("serve.log"))
            .unwrap();
        let extra: Vec<&str> = self.extra_args.iter().map(String::as_str).collect();
        self.child = spawn_serve(&self.ip, &self.data(), &extra, log);
        self.wait_until_up("restarted dps serve");
    }

    /// Waits (up to 60 s) until the server recorded its listeners and both ports accept
    /// connections; panics with the log if it exits first.
    fn wait_until_up(&mut self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{what} exited with {status}: {}", self.log());
            }
            let ip = self.ip.as_str();
            if self.data().join("server.json").exists()
                && TcpStream::connect((ip, 443)).is_ok()
                && TcpStream::connect((ip, 8883)).is_ok()
            {
                return;
            }
            assert!(Instant::now() < deadline, "{what} did not come up: {}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Spawns `dps serve` on `ip` with `data` and `extra_args` (host name `ip` unless they give
/// theirs), its stderr into `log`, with no environment setting that would change where it
/// listens.
fn spawn_serve(ip: &str, data: &Path, extra_args: &[&str], log: std::fs::File) -> Child {
    // Host names given (the nodes of one service all take the same ones) replace the address.
    let hostname: &[&str] = match extra_args.contains(&"--hostname") {
        true => &[],
        false => &["--hostname", ip],
    };
    Command::new(dps_bin())
        .args(["serve", "--data-dir"])
        .arg(data)
        .args(["--bind", ip, "--log", "info"])
        .args(hostname)
        .args(extra_args)
        .env_remove("DPS_CONFIG")
        .env_remove("DPS_HTTPS_PORT")
        .env_remove("DPS_MQTT_PORT")
        .env_remove("DPS_HUB_HOSTNAME")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("dps serve starts")
}

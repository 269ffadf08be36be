//! `dps serve` configuration end to end: config file, environment, flags (and their precedence),
//! reuse of the data directory across restarts, a brought-your-own certificate, and the message a
//! port conflict produces.

mod common;

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{dps_bin, p, wait_with_limit};
use serde_json::Value;

fn serve(args: &[&str], envs: &[(&str, &str)], log: &Path) -> Child {
    let mut c = Command::new(dps_bin());
    c.arg("serve").args(args);
    for k in [
        "DPS_CONFIG",
        "DPS_DATA_DIR",
        "DPS_HOSTNAME",
        "DPS_HUB_HOSTNAME",
        "DPS_BIND",
        "DPS_MQTT_PORT",
        "DPS_HTTPS_PORT",
    ] {
        c.env_remove(k);
    }
    c.envs(envs.iter().copied());
    c.stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("dps serve starts")
}

fn wait_for(child: &mut Child, ip: &str, ports: &[u16], log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ports.iter().all(|port| TcpStream::connect((ip, *port)).is_ok()) {
        if let Ok(Some(s)) = child.try_wait() {
            panic!(
                "dps serve exited with {s}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "dps serve did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn info(data: &Path) -> Value {
    let out = Command::new(dps_bin())
        .args(["info", "--json", "--data-dir", p(data)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn config_file_env_and_flags_with_precedence_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("serve.log");
    let config = dir.path().join("dps.toml");
    std::fs::write(
        &config,
        format!(
            "data-dir = \"{}\"\nhostname = [\"127.0.0.67\", \"dps.example.test\"]\nbind = \"127.0.0.67\"\nhttps-port = 18443\nmqtt-port = 18883\namqp-port = 15671\n",
            p(&data)
        ),
    )
    .unwrap();
    // File sets 18443; the environment says 28443 and wins; the MQTT flag beats its variable.
    let mut child = serve(
        &["--config", p(&config), "--mqtt-port", "18884"],
        &[
            ("DPS_HTTPS_PORT", "28443"),
            ("DPS_MQTT_PORT", "28883"),
            ("DPS_HUB_HOSTNAME", "hub.example.test"),
        ],
        &log,
    );
    wait_for(&mut child, "127.0.0.67", &[28443, 18884, 15671], &log);
    let first = info(&data);
    // The ports the server listens on, AMQP's from the file.
    assert_eq!(
        (
            first["mqttPort"].as_u64(),
            first["httpsPort"].as_u64(),
            first["amqpPort"].as_u64()
        ),
        (Some(18884), Some(28443), Some(15671))
    );
    assert_eq!(first["provisioningHost"], "127.0.0.67");
    assert_eq!(first["hubHostName"], "hub.example.test");
    assert!(first["idScope"].as_str().unwrap().starts_with("0ne"));
    assert!(first["rsaCaCertificatePath"].as_str().unwrap().ends_with("ca-rsa.pem"));
    let chain = std::fs::read_to_string(data.join("server.pem")).unwrap();
    let names: Vec<String> = ["127.0.0.67", "dps.example.test", "hub.example.test"]
        .map(String::from)
        .to_vec();
    assert!(
        dps_pki::ca::certificate_covers(&chain, &names).unwrap(),
        "server certificate covers every host name"
    );
    // The CLI finds the non-standard HTTPS port through the data directory.
    let out = Command::new(dps_bin())
        .args(["enrollment", "list", "--json", "--data-dir", p(&data)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ca = std::fs::read(data.join("ca.pem")).unwrap();
    stop(child);

    // A later start reuses the identity and the CA.
    let mut child = serve(
        &[
            "--data-dir",
            p(&data),
            "--bind",
            "127.0.0.67",
            "--hostname",
            "127.0.0.67",
            "--https-port",
            "28443",
        ],
        &[],
        &log,
    );
    wait_for(&mut child, "127.0.0.67", &[28443, 8883], &log);
    let second = info(&data);
    assert_eq!(second["idScope"], first["idScope"]);
    assert_eq!(second["serviceConnectionString"], first["serviceConnectionString"]);
    assert_eq!(second["hubHostName"], "hub.example.test", "the hub host name is kept");
    assert_eq!(std::fs::read(data.join("ca.pem")).unwrap(), ca);

    // A second server on the same address and port says what is wrong and how to fix it.
    let other = dir.path().join("other");
    let clash = serve(
        &[
            "--data-dir",
            p(&other),
            "--bind",
            "127.0.0.67",
            "--https-port",
            "28443",
            "--mqtt-port",
            "28884",
        ],
        &[],
        &dir.path().join("clash.log"),
    );
    let out = wait_with_limit(clash, Duration::from_secs(30));
    assert!(!out.status.success());
    let err = std::fs::read_to_string(dir.path().join("clash.log")).unwrap();
    assert!(
        err.contains("cannot listen on 127.0.0.67:28443") && err.contains("another process is listening"),
        "{err}"
    );
    // Nothing was written: the ports are bound before the data directory is touched.
    assert!(!other.exists(), "a failed start made {}", other.display());
    stop(child);
}

#[test]
fn serves_a_brought_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("serve.log");
    let ca = dps_pki::ca::LocalCa::generate("my own CA").unwrap();
    let leaf = ca.issue_server_certificate(&["127.0.0.68".to_string()]).unwrap();
    let (cert, key, ca_path) = (
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
        dir.path().join("my-ca.pem"),
    );
    std::fs::write(&cert, format!("{}{}", leaf.cert_pem, ca.cert_pem())).unwrap();
    std::fs::write(&key, &leaf.key_pem).unwrap();
    std::fs::write(&ca_path, ca.cert_pem()).unwrap();
    let mut child = serve(
        &[
            "--data-dir",
            p(&data),
            "--bind",
            "127.0.0.68",
            "--hostname",
            "127.0.0.68",
            "--tls-cert",
            p(&cert),
            "--tls-key",
            p(&key),
        ],
        &[],
        &log,
    );
    wait_for(&mut child, "127.0.0.68", &[443, 8883], &log);
    assert!(
        !data.join("ca.pem").exists(),
        "no local CA is created when a certificate is brought"
    );
    let list = |ca: &Path| {
        Command::new(dps_bin())
            .args(["enrollment", "list", "--json", "--data-dir", p(&data), "--ca", p(ca)])
            .output()
            .unwrap()
    };
    let ok = list(&ca_path);
    assert!(
        ok.status.success(),
        "trusting the brought CA works: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let wrong = dir.path().join("wrong.pem");
    std::fs::write(&wrong, dps_pki::ca::LocalCa::generate("another CA").unwrap().cert_pem()).unwrap();
    assert!(
        !list(&wrong).status.success(),
        "the server really presents the brought certificate"
    );
    stop(child);
}

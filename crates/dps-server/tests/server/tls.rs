//! Every TLS listener serves device stacks that cannot do ECDSA (decision 0018): such a client
//! gets the RSA certificate and provisions, a full TLS stack still gets the P-256 one, a data
//! directory from before the RSA certificate gains it on restart, and a brought certificate is
//! served alone as before.
//!
//! Servers bind 127.0.36.x.

use crate::common;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use dps_pki::pem::parse_certificates;
use dps_pki::tls::client_config_without_ecdsa;
use dps_pki::CertificateDer;
use dps_server::RunningServer;
use rustls::pki_types::ServerName;
use serde_json::json;

use crate::common::{dps_sas, https_with, register_raw_with, server, server_with, trusting_local_ca, KEY};

/// The chain the listener at `addr` presents to a client configured as `tls`, leaf first.
async fn presented_chain(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Vec<CertificateDer<'static>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .unwrap_or_else(|e| panic!("TLS handshake with {addr}: {e}"));
    let chain = stream.get_ref().1.peer_certificates().unwrap_or_default();
    chain.iter().map(|c| c.clone().into_owned()).collect()
}

/// Every TLS listener of `s`, by name. (AMQP on 5671 joins this list when it exists.)
fn listeners(s: &RunningServer) -> [(&'static str, SocketAddr); 3] {
    [("MQTT", s.mqtt_addr), ("HTTPS", s.https_addr), ("AMQP", s.amqp_addr)]
}

fn file_chain(data: &Path, file: &str) -> Vec<CertificateDer<'static>> {
    parse_certificates(&std::fs::read_to_string(data.join(file)).unwrap()).unwrap()
}

/// A client without ECDSA, trusting the server's RSA root, speaking `version`.
fn rsa_only(data: &Path, version: &'static rustls::SupportedProtocolVersion) -> Arc<rustls::ClientConfig> {
    let ca = std::fs::read_to_string(data.join("ca-rsa.pem")).unwrap();
    client_config_without_ecdsa(&ca, &[version]).unwrap()
}

/// Registers `reg` over HTTPS with the TLS client `tls` and returns the reply's status.
async fn register_https_with(s: &RunningServer, tls: Arc<rustls::ClientConfig>, reg: &str) -> u16 {
    let path = format!(
        "/{}/registrations/{reg}/register?api-version=2021-06-01",
        s.services.identity.id_scope
    );
    let sas = dps_sas(s, reg, KEY);
    let body = json!({ "registrationId": reg });
    https_with(s, tls, "PUT", &path, Some(&sas), Some(&body)).await.status
}

#[tokio::test]
async fn a_device_without_ecdsa_provisions_and_others_keep_ecdsa() {
    let dir = tempfile::tempdir().unwrap();
    let s = server("127.0.36.1", dir.path()).await;
    let data = dir.path();
    for (what, addr) in listeners(&s) {
        for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
            assert_eq!(
                presented_chain(addr, rsa_only(data, version)).await,
                file_chain(data, "server-rsa.pem"),
                "{what} {version:?}: a client without ECDSA gets the RSA chain"
            );
        }
        assert_eq!(
            presented_chain(addr, trusting_local_ca(&s)).await,
            file_chain(data, "server.pem"),
            "{what}: a client with ECDSA gets the P-256 chain"
        );
    }
    // Beyond the handshake: the TLS 1.2, ECDHE-RSA-only client of an mbedTLS without ECDSA
    // registers over MQTT and over HTTPS.
    let tls12 = rsa_only(data, &rustls::version::TLS12);
    let status = register_raw_with(&s, tls12.clone(), "dev-1", &dps_sas(&s, "dev-1", KEY)).await;
    assert_eq!(status["status"], "assigned", "{status}");
    common::enroll(&s, "dev-2", KEY).await;
    assert_eq!(register_https_with(&s, tls12, "dev-2").await, 202);
    s.shutdown().await;
}

#[tokio::test]
async fn a_data_directory_from_before_rsa_serves_rsa_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let s = server("127.0.36.2", data).await;
    let config = s.services.config.clone();
    s.shutdown().await;
    // Make it look like a data directory of an earlier version: no RSA files.
    for f in ["ca-rsa.pem", "ca-rsa-key.pem", "server-rsa.pem", "server-rsa-key.pem"] {
        std::fs::remove_file(data.join(f)).unwrap();
    }
    let p256 = ["ca.pem", "ca-key.pem", "server.pem", "server-key.pem"].map(|f| std::fs::read(data.join(f)).unwrap());

    let s = dps_server::start(config).await.expect("the server restarts");
    let after = ["ca.pem", "ca-key.pem", "server.pem", "server-key.pem"].map(|f| std::fs::read(data.join(f)).unwrap());
    assert_eq!(after, p256, "the P-256 CA and server certificate are kept");
    for (what, addr) in listeners(&s) {
        assert_eq!(
            presented_chain(addr, rsa_only(data, &rustls::version::TLS12)).await,
            file_chain(data, "server-rsa.pem"),
            "{what}"
        );
        assert_eq!(
            presented_chain(addr, trusting_local_ca(&s)).await,
            file_chain(data, "server.pem"),
            "{what}"
        );
    }
    s.shutdown().await;
}

#[tokio::test]
async fn a_brought_certificate_is_served_alone() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dps_pki::ca::LocalCa::generate("my own CA").unwrap();
    let leaf = ca.issue_server_certificate(&["127.0.36.3".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let chain = format!("{}{}", leaf.cert_pem, ca.cert_pem());
    std::fs::write(&cert, &chain).unwrap();
    std::fs::write(&key, &leaf.key_pem).unwrap();
    let data = dir.path().join("data");
    let s = server_with("127.0.36.3", &data, |c| {
        c.tls_cert = Some(cert.clone());
        c.tls_key = Some(key.clone());
    })
    .await;
    assert!(!data.join("ca-rsa.pem").exists() && !data.join("server-rsa.pem").exists());
    let full = dps_pki::tls::client_config(&ca.cert_pem()).unwrap();
    let without_ecdsa = client_config_without_ecdsa(&ca.cert_pem(), &[&rustls::version::TLS12]).unwrap();
    for (what, addr) in listeners(&s) {
        assert_eq!(
            presented_chain(addr, full.clone()).await,
            parse_certificates(&chain).unwrap(),
            "{what}"
        );
        // Only the brought (P-256) certificate is there, so a client without ECDSA is refused,
        // as it was before the listeners had RSA.
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let refused = tokio_rustls::TlsConnector::from(without_ecdsa.clone())
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await;
        assert!(refused.is_err(), "{what}");
    }
    s.shutdown().await;
}

//! Certificate renewal through the hub (issue 17, point 3): a device provisioned with a CSR by
//! the Rust client renews its certificate over MQTT (`$iothub/credentials/…`, 202 then 200 with
//! the chain), connects with the new one, and its old one is refused once the grace period is
//! over; refusals come as IoT Hub words them.

use crate::common;
use std::time::Duration;

use crate::common::*;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use dps_pki::ca::KeyAlgorithm;
use dps_proto::hub_mqtt::{issue_certificate_topic, parse_credentials_response_topic};
use rumqttc::{Packet, QoS};
use serde_json::{json, Value};

const IP: &str = "127.0.39.12";

/// PEM of a base64 DER chain.
fn pem_of(chain: &[String]) -> String {
    chain
        .iter()
        .map(|c| dps_pki::pem::to_pem("CERTIFICATE", &B64.decode(c).unwrap()))
        .collect()
}

/// Publishes a renewal request and returns the answers (status, body) until one is final.
async fn renew(c: &rumqttc::AsyncClient, ev: &mut rumqttc::EventLoop, rid: &str, body: Value) -> Vec<(u16, Value)> {
    c.publish(issue_certificate_topic(rid), QoS::AtLeastOnce, false, body.to_string())
        .await
        .unwrap();
    let mut answers = Vec::new();
    loop {
        let (status, got_rid, body) = hub_mqtt_until(ev, |p| match p {
            Packet::Publish(p) => parse_credentials_response_topic(&p.topic)
                .map(|(status, rid)| (status, rid, serde_json::from_slice::<Value>(&p.payload).unwrap())),
            _ => None,
        })
        .await
        .unwrap();
        assert_eq!(got_rid, rid);
        answers.push((status, body));
        if status != 202 {
            return answers;
        }
    }
}

/// Checks that the last of `answers` is IoT Hub's refusal: `status`, `code`, the
/// `credentialError` `cause`, a `credentialMessage` saying `says`, a tracking id and a time.
fn assert_refused(answers: &[(u16, Value)], status: u16, code: u32, cause: &str, says: &str) {
    let (got, error) = answers.last().unwrap();
    assert_eq!(*got, status, "{answers:?}");
    assert_eq!(error["errorCode"], code, "{error}");
    assert_eq!(error["info"]["credentialError"], cause, "{error}");
    let message = error["info"]["credentialMessage"].as_str().unwrap();
    assert!(message.contains(says), "{message}");
    assert!(error["trackingId"].is_string() && error["timestampUtc"].is_string());
}

/// The device's (primary, secondary) thumbprints at the hub.
async fn thumbprints(s: &dps_server::RunningServer, id: &str) -> (Option<String>, Option<String>) {
    let t = hub(s)
        .get_device(id)
        .await
        .unwrap()
        .authentication
        .unwrap()
        .x509_thumbprint
        .unwrap();
    (t.primary_thumbprint, t.secondary_thumbprint)
}

async fn subscribe_credentials(c: &rumqttc::AsyncClient, ev: &mut rumqttc::EventLoop) {
    c.subscribe("$iothub/credentials/res/#", QoS::AtMostOnce).await.unwrap();
    hub_mqtt_until(ev, |p| match p {
        Packet::SubAck(a) => Some(a.return_codes.clone()),
        _ => None,
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_device_renews_its_certificate_over_mqtt_and_the_old_one_lapses() {
    let dir = tempfile::tempdir().unwrap();
    let s = server_with(IP, dir.path(), |c| {
        c.limits.certificate_renewal_grace_secs = 3;
        c.limits.certificate_renewal_interval_secs = 3;
    })
    .await;
    // Provisioned with a CSR by the Rust client: the first certificate.
    let first = provision_with_csr(&s, IP, "renew-dev").await;
    let (chain1, pem1, key1) = (first.chain, first.chain_pem, first.key_pem);
    let (c, mut ev) = hub_mqtt_x509(&s, "renew-dev", &pem1, &key1).await.unwrap();
    subscribe_credentials(&c, &mut ev).await;

    // Renewal with a new key: 202 (accepted), then 200 with the chain.
    let (key2, csr2) = dps_pki::csr::new_key_and_request("renew-dev", KeyAlgorithm::EcdsaP384).unwrap();
    let answers = renew(&c, &mut ev, "r1", json!({"id": "renew-dev", "csr": B64.encode(&csr2)})).await;
    assert_eq!(answers.len(), 2, "{answers:?}");
    let (accepted, done) = (&answers[0], &answers[1]);
    assert_eq!(accepted.0, 202);
    let correlation = accepted.1["correlationId"].as_str().unwrap();
    assert!(
        accepted.1["operationExpires"].as_str().unwrap().ends_with('Z'),
        "{accepted:?}"
    );
    assert_eq!(done.0, 200, "{done:?}");
    assert_eq!(done.1["correlationId"], correlation);
    let chain2: Vec<String> = serde_json::from_value(done.1["certificates"].clone()).unwrap();
    assert_eq!(chain2.len(), 3);
    assert_eq!(chain2[1..], chain1[1..], "the same policy's CA issued it");
    let leaf2 = B64.decode(&chain2[0]).unwrap();
    let summary2 = dps_pki::info::summarize(&leaf2).unwrap();
    assert_eq!(summary2.common_name.as_deref(), Some("renew-dev"));
    let issuing = B64.decode(&chain1[1]).unwrap();
    dps_pki::chain::verify_issued_by(&leaf2, &issuing, chrono::Utc::now()).unwrap();
    let summary1 = dps_pki::info::summarize(&B64.decode(&chain1[0]).unwrap()).unwrap();
    let renewed = (
        Some(summary2.sha256_thumbprint.clone()),
        Some(summary1.sha256_thumbprint.clone()),
    );
    assert_eq!(thumbprints(&s, "renew-dev").await, renewed);

    // Renewing again at once is too soon: refused as IoT Hub throttles, nothing changes.
    let (_, csr_again) = dps_pki::csr::new_key_and_request("renew-dev", KeyAlgorithm::EcdsaP256).unwrap();
    let answers = renew(
        &c,
        &mut ev,
        "r1b",
        json!({"id": "renew-dev", "csr": B64.encode(&csr_again)}),
    )
    .await;
    assert_refused(
        &answers,
        429,
        429002,
        "RenewalTooSoon",
        "less than 3 s ago; renew again from",
    );
    assert_eq!(thumbprints(&s, "renew-dev").await, renewed);
    drop((c, ev));

    // The new certificate connects; the old one too, until the grace period is over.
    let pem2 = pem_of(&chain2);
    hub_mqtt_x509(&s, "renew-dev", &pem2, &key2).await.unwrap();
    hub_mqtt_x509(&s, "renew-dev", &pem1, &key1).await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let Err(refused) = hub_mqtt_x509(&s, "renew-dev", &pem1, &key1).await else {
        panic!("the old certificate still connects after the grace period");
    };
    assert!(format!("{refused:?}").contains("NotAuthorized"), "{refused:?}");
    let (c, mut ev) = hub_mqtt_x509(&s, "renew-dev", &pem2, &key2).await.unwrap();

    // Refusals, as IoT Hub words them: another device's id, a request that is no CSR, a CSR
    // for another name; nothing changes.
    subscribe_credentials(&c, &mut ev).await;
    let (_, csr3) = dps_pki::csr::new_key_and_request("someone-else", KeyAlgorithm::EcdsaP256).unwrap();
    for (rid, body, status, code, cause, says) in [
        (
            "r2",
            json!({"id": "other", "csr": B64.encode(&csr2)}),
            400,
            400040,
            "DeviceIdMismatch",
            "device 'other'",
        ),
        (
            "r3",
            json!({"id": "renew-dev", "csr": "bm90IGEgY3Ny"}),
            400,
            400040,
            "InvalidCsr",
            "PKCS#10",
        ),
        (
            "r4",
            json!({"id": "renew-dev", "csr": B64.encode(&csr3)}),
            400,
            400040,
            "InvalidCsr",
            "is not the device id 'renew-dev'",
        ),
        ("r5", json!({"csr": 7}), 400, 400040, "InvalidRequest", "\"id\""),
    ] {
        let answers = renew(&c, &mut ev, rid, body).await;
        assert_refused(&answers, status, code, cause, says);
    }
    assert_eq!(thumbprints(&s, "renew-dev").await.0, renewed.0);

    // A SAS device has no certificate from a policy to renew.
    hub_device(&s, "sas-dev").await;
    let (c, mut ev) = hub_mqtt(&s, "sas-dev").await;
    subscribe_credentials(&c, &mut ev).await;
    let answers = renew(&c, &mut ev, "r6", json!({"id": "sas-dev", "csr": B64.encode(&csr2)})).await;
    assert_refused(
        &answers,
        412,
        412005,
        "NoCredentialPolicy",
        "register it through DPS with a CSR first",
    );
}

/// The Rust device client renews through its hub connection (`HubClient::renew_certificate`),
/// reconnects with the new certificate, and is told when it asks again too soon.
#[tokio::test]
async fn the_rust_client_renews_and_reconnects_with_the_new_certificate() {
    const IP: &str = "127.0.39.32";
    let dir = tempfile::tempdir().unwrap();
    let s = server(IP, dir.path()).await;
    let first = provision_with_csr(&s, IP, "client-renew").await;
    let ca = std::fs::read_to_string(s.services.config.data_dir.join("ca.pem")).unwrap();
    let hub_host = s.services.identity.hub.host_name.clone();
    let connect = |chain_pem: &str, key_pem: &str| {
        let provider = std::sync::Arc::new(dps_client::X509Provider::from_pem(chain_pem, key_pem).unwrap());
        dps_client::HubClient::builder(&hub_host, "client-renew", provider, &ca)
            .port(s.mqtt_addr.port())
            .connect()
    };
    let client = connect(&first.chain_pem, &first.key_pem).await.unwrap();

    let (key2, csr2) = dps_pki::csr::new_key_and_request("client-renew", KeyAlgorithm::EcdsaP256).unwrap();
    let chain2 = client.renew_certificate(&csr2).await.unwrap();
    assert_eq!(chain2.len(), 3);
    assert_eq!(chain2[1..], first.chain[1..], "the same policy issued it");
    common::assert_issued_for(&serde_json::json!(chain2), "client-renew", &csr2);

    // Too soon: IoT Hub's throttling code, and the hub's reason in the message.
    let (_, csr3) = dps_pki::csr::new_key_and_request("client-renew", KeyAlgorithm::EcdsaP256).unwrap();
    match client.renew_certificate(&csr3).await {
        Err(dps_client::ClientError::Service {
            status: 429,
            error_code: Some(429002),
            message,
            ..
        }) => assert!(
            message.contains("renewed its certificate less than 60 s ago"),
            "{message}"
        ),
        other => panic!("expected a 429002 refusal, got {other:?}"),
    }
    client.disconnect().await.unwrap();

    // The new certificate connects and sends.
    let renewed = connect(&pem_of(&chain2), &key2).await.unwrap();
    renewed.send_event(r#"{"renewed":true}"#, &[]).await.unwrap();
    renewed.disconnect().await.unwrap();
}

//! The operator endpoints on the HTTPS port (issue 16): `/healthz`, `/readyz`, and `/metrics`
//! in Prometheus' text format behind a bearer token or a DPS service policy's SAS, counting
//! registrations by outcome, attestation and transport, TLS handshakes, and the hub's devices.

use crate::common;
use crate::common::{https_raw, trusting_local_ca};
use dps_server::RunningServer;

const TOKEN: &str = "scraper-secret-0123456789";

async fn get(s: &RunningServer, path: &str, auth: Option<&str>) -> (u16, Vec<(String, String)>, String) {
    let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
    let (status, headers, body) = https_raw(s, trusting_local_ca(s), "GET", path, &headers, &[]).await;
    (status, headers, String::from_utf8(body).unwrap())
}

/// The value of the sample named `sample` (name and labels exactly as written), if present.
fn sample(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let s = common::server_with("127.0.41.1", dir.path(), |c| c.metrics_token = Some(TOKEN.into())).await;

    let (status, _, body) = get(&s, "/healthz", None).await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, _, body) = get(&s, "/readyz", None).await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));

    // Refused without the token, or with another; the refusal says so.
    let (status, headers, body) = get(&s, "/metrics", None).await;
    assert_eq!(status, 401, "{body}");
    assert!(headers
        .iter()
        .any(|(n, v)| n == "www-authenticate" && v.starts_with("Bearer")));
    let (status, _, body) = get(&s, "/metrics", Some("Bearer not-the-token-at-all")).await;
    assert_eq!(status, 401);
    assert!(body.contains("not the configured metrics token"), "{body}");

    // One device registered over MQTT, one refused for its key.
    let done = common::register_raw(&s, "dev-1", &common::dps_sas(&s, "dev-1", common::KEY)).await;
    assert_eq!(done["status"], "assigned", "{done}");
    let wrong = common::dps_sas(&s, "dev-1", "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3I=");
    let mut c = common::RawMqtt::open(&s).await;
    c.send_packet(&common::connect_packet(
        "dev-1",
        &common::dps_user(&s, "dev-1"),
        &wrong,
        60,
    ))
    .await;
    assert!(
        matches!(c.packet().await, Some(rumqttc::Packet::ConnAck(a)) if a.code != rumqttc::mqttbytes::v4::ConnectReturnCode::Success)
    );

    // One telemetry message from the registered device.
    let (client, mut ev) = common::hub_mqtt(&s, "dev-1").await;
    common::publish_acked(&client, &mut ev, "devices/dev-1/messages/events/", b"{}".to_vec()).await;

    // And one cloud-to-device message for it, queued (it did not subscribe).
    common::hub(&s)
        .send_c2d("dev-1", b"hello".to_vec(), Vec::new())
        .await
        .unwrap();

    let (status, headers, text) = get(&s, "/metrics", Some(&format!("Bearer {TOKEN}"))).await;
    assert_eq!(status, 200, "{text}");
    assert!(headers
        .iter()
        .any(|(n, v)| n == "content-type" && v.starts_with("application/openmetrics-text")));
    assert_eq!(
        sample(
            &text,
            r#"dps_registrations_total{status="assigned",attestation="symmetricKey",transport="mqtt"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"dps_registrations_total{status="unauthorized",attestation="unknown",transport="mqtt"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"dps_registration_duration_seconds_count{transport="mqtt"}"#),
        Some(2.0),
        "{text}"
    );
    assert!(
        sample(&text, r#"dps_tls_handshakes_total{listener="mqtt",result="ok"}"#).unwrap_or(0.0) >= 2.0,
        "{text}"
    );
    let hub = &s.services.identity.hub.host_name;
    assert_eq!(
        sample(&text, &format!(r#"dps_hub_devices{{hub="{hub}",status="enabled"}}"#)),
        Some(1.0),
        "{text}"
    );
    for (name, value) in [
        (format!(r#"dps_hub_c2d_queued{{hub="{hub}"}}"#), 1.0),
        (format!(r#"dps_hub_messages_total{{hub="{hub}",kind="c2d_sent"}}"#), 1.0),
    ] {
        assert_eq!(sample(&text, &name), Some(value), "{name}: {text}");
    }
    // The device's hub connection is still open.
    assert_eq!(
        sample(&text, &format!(r#"dps_hub_sessions{{hub="{hub}",transport="mqtt"}}"#)),
        Some(1.0),
        "{text}"
    );
    drop((client, ev));
    assert_eq!(
        sample(
            &text,
            &format!(r#"dps_hub_messages_total{{hub="{hub}",kind="telemetry_in"}}"#)
        ),
        Some(1.0),
        "{text}"
    );
    // The registration's commits: the DPS store's writer and the hubs'.
    for store in ["dps", "hubs"] {
        let committed = sample(&text, &format!(r#"dps_store_transactions_total{{store="{store}"}}"#));
        assert!(committed.unwrap_or(0.0) >= 1.0, "{store}: {text}");
        let seconds = sample(&text, &format!(r#"dps_store_commit_seconds_total{{store="{store}"}}"#));
        assert!(seconds.unwrap_or(0.0) > 0.0, "{store}: {text}");
    }
    assert!(text.trim_end().ends_with("# EOF"), "{text}");

    // A DPS service policy's SAS token reads them too; a hub policy's does not.
    let policy = &s.services.identity.policies[0];
    let expiry = chrono::Utc::now().timestamp() as u64 + 600;
    let host = s.https_addr.ip().to_string();
    let sas = dps_proto::sas::build_token(&host, &policy.primary_key, expiry, Some(&policy.key_name)).unwrap();
    let (status, _, body) = get(&s, "/metrics", Some(&sas)).await;
    assert_eq!(status, 200, "{body}");
    let hub_policy = &s.services.identity.hub.policies[0];
    let hub_sas =
        dps_proto::sas::build_token(&host, &hub_policy.primary_key, expiry, Some(&hub_policy.key_name)).unwrap();
    let (status, _, _) = get(&s, "/metrics", Some(&hub_sas)).await;
    assert_eq!(status, 401);
    s.shutdown().await;
}

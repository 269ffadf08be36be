//! The management and device commands of the CLI against a real `dps serve` child process:
//! enrollments, enrollment groups, registrations, the hub registry, monitor-events, and
//! `dps device provision` with individual and group keys over MQTT and HTTPS.

mod common;

/// A marshalled RSA-2048 EK public area (TCG template, made-up modulus), base64: enrollments
/// accept only keys the TPM challenge can be built for.
const TPM_EK: &str = "AToAAQALAAMAsgAgg3GXZ0SEs/gakMyNRqXXJP1S124GUgtk8qHaGzMUaaoABgCAAEMAEAgAAAAAAAEAxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFAQ==";

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use common::{p, wait_with_limit, Server};
use dps_proto::codes;
use serde_json::Value;

const KEY1: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const KEY2: &str = "HxwdHhscGRoXGBUWExQREg8QDQ4LDAkKBwgFBgMEAQI=";

/// Whether an error message carries the service error `code`.
fn has(err: &str, code: u32) -> bool {
    err.contains(&code.to_string())
}

/// A DPS MQTT CONNECT refused as Azure refuses a bad credential: CONNACK 5.
fn not_authorized_at_connect(err: &str) -> bool {
    err.contains("refused the MQTT connection") && err.contains("NotAuthorized")
}

#[test]
fn enrollment_lifecycle() {
    let s = Server::start("127.0.0.61");
    let created = s.json(&[
        "enrollment",
        "create",
        "--registration-id",
        "dev-1",
        "--device-id",
        "device-one",
        "--initial-twin-properties",
        r#"{"fw":"1.0"}"#,
        "--initial-twin-tags",
        r#"{"site":"lab"}"#,
        "--iot-hubs",
        "127.0.0.61",
        "--allocation-policy",
        "hashed",
        "--edge-enabled",
        "--reprovision-policy",
        "reprovisionandresetdata",
    ]);
    assert_eq!(created["registrationId"], "dev-1");
    assert_eq!(created["deviceId"], "device-one");
    assert_eq!(created["attestation"]["type"], "symmetricKey");
    let primary = created["attestation"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!primary.is_empty(), "the server generates keys");
    assert_eq!(created["initialTwin"]["properties"]["desired"]["fw"], "1.0");
    assert_eq!(created["initialTwin"]["tags"]["site"], "lab");
    assert_eq!(created["iotHubs"], serde_json::json!(["127.0.0.61"]));
    assert_eq!(created["capabilities"]["iotEdge"], true);
    assert_eq!(created["reprovisionPolicy"]["migrateDeviceData"], false);

    // Creating it again is a conflict, reported with the service's code.
    let err = s.fail(&["enrollment", "create", "--registration-id", "dev-1"]);
    assert!(has(&err, codes::ENROLLMENT_EXISTS), "{err}");

    // show: keys stripped unless --show-keys; the human form is a summary.
    let shown = s.json(&["enrollment", "show", "--registration-id", "dev-1"]);
    assert!(shown["attestation"]["symmetricKey"]["primaryKey"].is_null());
    assert_eq!(shown["registrationState"]["status"], "unassigned");
    let with_keys = s.json(&["enrollment", "show", "--registration-id", "dev-1", "--show-keys"]);
    assert_eq!(with_keys["attestation"]["symmetricKey"]["primaryKey"], primary.as_str());
    let human = s.ok(&["enrollment", "show", "--registration-id", "dev-1"]);
    assert!(
        human.contains("registration id") && human.contains("device-one") && human.contains("unassigned"),
        "{human}"
    );

    s.ok(&[
        "enrollment",
        "create",
        "--registration-id",
        "dev-2",
        "--primary-key",
        KEY1,
        "--secondary-key",
        KEY2,
    ]);
    let list = s.json(&["enrollment", "list"]);
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["registrationId"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids.contains(&"dev-1") && ids.contains(&"dev-2"));
    assert_eq!(
        s.json(&["enrollment", "list", "--top", "1"]).as_array().unwrap().len(),
        1
    );
    let table = s.ok(&["enrollment", "list"]);
    assert!(table.starts_with("REGISTRATION ID"), "{table}");

    // update: only the given settings change; keys and other settings are kept.
    let etag_before = shown["etag"].as_str().unwrap().to_string();
    let updated = s.json(&[
        "enrollment",
        "update",
        "--registration-id",
        "dev-1",
        "--provisioning-status",
        "disabled",
        "--initial-twin-tags",
        r#"{"site":"field"}"#,
    ]);
    assert_eq!(updated["provisioningStatus"], "disabled");
    assert_eq!(updated["initialTwin"]["tags"]["site"], "field");
    assert_eq!(updated["initialTwin"]["properties"]["desired"]["fw"], "1.0");
    assert_eq!(updated["deviceId"], "device-one");
    assert_eq!(updated["attestation"]["symmetricKey"]["primaryKey"], primary.as_str());
    assert_ne!(updated["etag"].as_str().unwrap(), etag_before);
    let rotated = s.json(&[
        "enrollment",
        "update",
        "--registration-id",
        "dev-2",
        "--secondary-key",
        KEY1,
    ]);
    assert_eq!(rotated["attestation"]["symmetricKey"]["primaryKey"], KEY1);
    assert_eq!(rotated["attestation"]["symmetricKey"]["secondaryKey"], KEY1);

    // A stale etag is refused (412) on update and delete.
    let err = s.fail(&[
        "enrollment",
        "update",
        "--registration-id",
        "dev-1",
        "--etag",
        &etag_before,
        "--edge-enabled",
        "false",
    ]);
    assert!(has(&err, codes::ENROLLMENT_ETAG_MISMATCH), "{err}");
    let err = s.fail(&[
        "enrollment",
        "delete",
        "--registration-id",
        "dev-1",
        "--etag",
        &etag_before,
    ]);
    assert!(has(&err, codes::ENROLLMENT_ETAG_MISMATCH), "{err}");

    let deleted = s.ok(&["enrollment", "delete", "--registration-id", "dev-1"]);
    assert!(deleted.contains("deleted enrollment dev-1"), "{deleted}");
    let err = s.fail(&["enrollment", "show", "--registration-id", "dev-1"]);
    assert!(has(&err, codes::ENROLLMENT_NOT_FOUND), "{err}");
    let del2 = s.json(&[
        "enrollment",
        "delete",
        "--registration-id",
        "dev-2",
        "--etag",
        rotated["etag"].as_str().unwrap(),
    ]);
    assert_eq!(del2, serde_json::json!({"deleted": true, "registrationId": "dev-2"}));
    assert_eq!(s.json(&["enrollment", "list"]), serde_json::json!([]));
}

#[test]
fn enrollment_group_lifecycle_and_compute_device_key() {
    let s = Server::start("127.0.0.62");
    let g = s.json(&[
        "enrollment-group",
        "create",
        "--group-id",
        "grp-1",
        "--primary-key",
        KEY1,
        "--initial-twin-tags",
        r#"{"t":1}"#,
    ]);
    assert_eq!(g["enrollmentGroupId"], "grp-1");
    assert_eq!(g["attestation"]["symmetricKey"]["primaryKey"], KEY1);
    let shown = s.json(&["enrollment-group", "show", "--enrollment-id", "grp-1"]);
    assert!(shown["attestation"]["symmetricKey"]["primaryKey"].is_null());
    let keys = s.json(&["enrollment-group", "show", "--group-id", "grp-1", "--show-keys"]);
    assert_eq!(keys["attestation"]["symmetricKey"]["primaryKey"], KEY1);
    s.ok(&["enrollment-group", "create", "--group-id", "grp-2"]);
    assert_eq!(s.json(&["enrollment-group", "list"]).as_array().unwrap().len(), 2);
    let u = s.json(&[
        "enrollment-group",
        "update",
        "--group-id",
        "grp-1",
        "--allocation-policy",
        "static",
        "--iot-hubs",
        "127.0.0.62",
    ]);
    assert_eq!(u["allocationPolicy"], "static");
    assert_eq!(u["initialTwin"]["tags"]["t"], 1);
    s.ok(&["enrollment-group", "delete", "--group-id", "grp-2"]);
    let err = s.fail(&["enrollment-group", "show", "--group-id", "grp-2"]);
    assert!(has(&err, codes::ENROLLMENT_GROUP_NOT_FOUND), "{err}");

    // X.509 groups and TPM enrollments: the JSON shapes the server expects, kept across updates.
    let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/other-ca.pem");
    let x = s.json(&[
        "enrollment-group",
        "create",
        "--group-id",
        "x509-grp",
        "--attestation-type",
        "x509",
        "--certificate-path",
        ca,
    ]);
    let info = &x["attestation"]["x509"]["signingCertificates"]["primary"]["info"];
    assert_eq!(info["subjectName"], "CN=untrusted test CA", "{x}");
    let x = s.json(&["enrollment-group", "update", "--group-id", "x509-grp", "--edge-enabled"]);
    assert_eq!(
        x["attestation"]["x509"]["signingCertificates"]["primary"]["info"]["subjectName"],
        "CN=untrusted test CA"
    );
    assert_eq!(x["capabilities"]["iotEdge"], true);
    let t = s.json(&[
        "enrollment",
        "create",
        "--registration-id",
        "tpm-1",
        "--attestation-type",
        "tpm",
        "--endorsement-key",
        TPM_EK,
    ]);
    assert_eq!(t["attestation"]["tpm"]["endorsementKey"], TPM_EK);
    let t = s.json(&[
        "enrollment",
        "update",
        "--registration-id",
        "tpm-1",
        "--provisioning-status",
        "disabled",
    ]);
    assert_eq!(t["attestation"]["tpm"]["endorsementKey"], TPM_EK);
    let err = s.fail(&[
        "enrollment-group",
        "create",
        "--group-id",
        "g-tpm",
        "--attestation-type",
        "tpm",
    ]);
    assert!(err.contains("TPM"), "{err}");

    // Offline: the derived key is what dps-proto derives (and the reference vector).
    let derived = s.ok(&[
        "compute-device-key",
        "--key",
        "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==",
        "--registration-id",
        "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6",
    ]);
    assert_eq!(derived.trim(), "Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc=");
    let j = s.json(&["compute-device-key", "--key", KEY1, "--registration-id", "dev-9"]);
    assert_eq!(
        j["derivedKey"].as_str(),
        dps_proto::keys::derive_device_key(KEY1, "dev-9").as_deref()
    );
    let err = s.fail(&["compute-device-key", "--key", "***", "--registration-id", "d"]);
    assert!(err.contains("base64"), "{err}");
}

#[test]
fn provision_individual_enrollment_over_mqtt_and_https() {
    let s = Server::start("127.0.0.63");
    s.ok(&[
        "enrollment",
        "create",
        "--registration-id",
        "dev-m",
        "--primary-key",
        KEY1,
    ]);
    s.ok(&[
        "enrollment",
        "create",
        "--registration-id",
        "dev-h",
        "--primary-key",
        KEY2,
        "--device-id",
        "http-device",
    ]);

    let m = s.json(&[
        "device",
        "provision",
        "--registration-id",
        "dev-m",
        "--symmetric-key",
        KEY1,
    ]);
    assert_eq!(m["registration"]["assignedHub"], "127.0.0.63");
    assert_eq!(m["registration"]["deviceId"], "dev-m");
    assert_eq!(m["registration"]["status"], "assigned");
    assert_eq!(m["registration"]["substatus"], "initialAssignment");
    assert_eq!(m["transport"], "mqtt");
    assert_eq!(m["messageSent"], true);

    let h = s.json(&[
        "device",
        "provision",
        "--registration-id",
        "dev-h",
        "--symmetric-key",
        KEY2,
        "--transport",
        "https",
        "--message",
        "plain text",
    ]);
    assert_eq!(h["registration"]["deviceId"], "http-device");
    assert_eq!(h["transport"], "https");

    // Human output.
    let again = s.ok(&[
        "device",
        "provision",
        "--registration-id",
        "dev-m",
        "--symmetric-key",
        KEY1,
        "--no-message",
    ]);
    assert!(again.contains("assigned to hub 127.0.0.63 as device dev-m"), "{again}");
    assert!(!again.contains("sent message"));

    // The registration is visible through the service API, the devices through the hub's.
    let reg = s.json(&["registration", "show", "--registration-id", "dev-h"]);
    assert_eq!(reg["status"], "assigned");
    assert_eq!(reg["deviceId"], "http-device");
    let dev = s.json(&["hub", "device", "show", "--device-id", "http-device"]);
    assert_eq!(dev["deviceId"], "http-device");
    assert_eq!(dev["authentication"]["type"], "sas");
    assert_eq!(dev["authentication"]["symmetricKey"]["primaryKey"], KEY2);
    let devices = s.json(&["hub", "device", "list"]);
    assert_eq!(devices.as_array().unwrap().len(), 2);
    let table = s.ok(&["hub", "device", "list"]);
    assert!(table.contains("dev-m") && table.contains("http-device"), "{table}");
    let twin: Value = serde_json::from_str(&s.ok(&["hub", "device", "twin", "show", "-d", "dev-m"])).unwrap();
    assert_eq!(twin["deviceId"], "dev-m");
    let err = s.fail(&["hub", "device", "show", "--device-id", "ghost"]);
    assert!(has(&err, codes::DEVICE_NOT_FOUND), "{err}");
    // IoT Hub's query language, as `az iot hub query -q`.
    let found = s.json(&[
        "hub",
        "query",
        "-q",
        "SELECT deviceId FROM devices WHERE STARTSWITH(deviceId, 'http')",
    ]);
    assert_eq!(found, serde_json::json!([{"deviceId": "http-device"}]));
    let counted = s.json(&["hub", "query", "-q", "SELECT COUNT() AS n FROM devices"]);
    assert_eq!(counted, serde_json::json!([{"n": 2}]));
    let err = s.fail(&["hub", "query", "-q", "SELECT * FROM devices WHERE"]);
    assert!(err.contains("the query is invalid at character 27"), "{err}");
    // Module identities, as `az iot hub module-identity`.
    let created = s.json(&["hub", "module-identity", "create", "-d", "dev-m", "-m", "agent"]);
    assert_eq!(
        (&created["deviceId"], &created["moduleId"]),
        (&Value::from("dev-m"), &Value::from("agent"))
    );
    assert_eq!(
        created["authentication"]["symmetricKey"]["primaryKey"]
            .as_str()
            .unwrap()
            .len(),
        44
    );
    let listed = s.json(&["hub", "module-identity", "list", "-d", "dev-m"]);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert!(s
        .ok(&["hub", "module-identity", "list", "-d", "dev-m"])
        .contains("agent"));
    let shown = s.json(&["hub", "module-identity", "show", "-d", "dev-m", "-m", "agent"]);
    assert_eq!(shown["generationId"], created["generationId"]);
    let err = s.fail(&["hub", "module-identity", "create", "-d", "dev-m", "-m", "agent"]);
    assert!(has(&err, codes::MODULE_EXISTS), "{err}");
    let out = s.ok(&["hub", "module-identity", "delete", "-d", "dev-m", "-m", "agent"]);
    assert!(out.contains("deleted module 'agent' of device 'dev-m'"), "{out}");
    let err = s.fail(&["hub", "module-identity", "show", "-d", "dev-m", "-m", "agent"]);
    assert!(has(&err, codes::MODULE_NOT_FOUND), "{err}");
    // Statistics, and a direct method refused (the answered case is dps-server's
    // registry_client test: it needs a device that answers).
    let stats = s.json(&["hub", "show-stats"]);
    assert_eq!(
        (
            &stats["totalDeviceCount"],
            &stats["enabledDeviceCount"],
            &stats["disabledDeviceCount"]
        ),
        (&Value::from(2), &Value::from(2), &Value::from(0)),
        "{stats}"
    );
    // The provisioning clients may still be disconnecting.
    assert!(
        stats["connectedDeviceCount"].as_u64().is_some_and(|n| n <= 2),
        "{stats}"
    );
    let table = s.ok(&["hub", "show-stats"]);
    assert!(table.contains("devices") && table.contains("connected"), "{table}");
    let err = s.fail(&[
        "hub",
        "invoke-device-method",
        "-d",
        "ghost",
        "--method-name",
        "reboot",
        "--method-payload",
        r#"{"delay":5}"#,
    ]);
    assert!(
        err.contains("cannot invoke method 'reboot' on 'ghost'") && has(&err, codes::DEVICE_NOT_FOUND),
        "{err}"
    );

    // Both messages were retained by the hub: replay them from the start.
    let out = s.ok(&[
        "hub",
        "monitor-events",
        "--from-sequence",
        "0",
        "--max-events",
        "3",
        "--timeout",
        "3",
        "--json",
    ]);
    let events: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events.len(), 2, "{out}");
    let by_origin = |o: &str| {
        events
            .iter()
            .find(|e| e["event"]["origin"] == o)
            .unwrap_or_else(|| panic!("{o}: {out}"))
    };
    assert_eq!(
        by_origin("dev-m")["event"]["payload"],
        serde_json::json!({"hello": "from dps"})
    );
    assert_eq!(by_origin("http-device")["event"]["payload"], "plain text");
    let only = s.ok(&[
        "hub",
        "monitor-events",
        "--from-sequence",
        "0",
        "--device-id",
        "dev-m",
        "--timeout",
        "2",
        "--json",
    ]);
    assert_eq!(only.lines().count(), 1, "{only}");
}

#[test]
fn provision_over_amqp() {
    let s = Server::start("127.0.38.11");
    s.ok(&[
        "enrollment",
        "create",
        "--registration-id",
        "dev-a",
        "--primary-key",
        KEY1,
    ]);
    s.ok(&[
        "enrollment-group",
        "create",
        "--group-id",
        "fleet",
        "--primary-key",
        KEY2,
    ]);
    // The AMQP port comes from the data directory's runtime file, as the other ports do.
    let a = s.json(&[
        "device",
        "provision",
        "--registration-id",
        "dev-a",
        "--symmetric-key",
        KEY1,
        "--transport",
        "amqp",
    ]);
    assert_eq!(a["transport"], "amqp", "{a}");
    assert_eq!(a["registration"]["assignedHub"], "127.0.38.11", "{a}");
    assert_eq!(a["registration"]["deviceId"], "dev-a", "{a}");
    assert_eq!(a["registration"]["substatus"], "initialAssignment", "{a}");
    assert_eq!(a["messageSent"], true, "{a}");
    let g = s.ok(&[
        "device",
        "provision",
        "--registration-id",
        "fleet-a",
        "--group-key",
        KEY2,
        "--transport",
        "amqp",
        "--no-message",
    ]);
    assert!(g.contains("registered fleet-a over amqp"), "{g}");

    // A wrong key is refused in the SASL layer, and says so.
    let err = s.fail(&[
        "device",
        "provision",
        "--registration-id",
        "dev-a",
        "--symmetric-key",
        KEY2,
        "--transport",
        "amqp",
    ]);
    assert!(err.contains("cannot provision 'dev-a'"), "{err}");
    assert!(err.contains("SASL PLAIN authentication failed"), "{err}");
}

#[test]
fn provision_with_group_key_over_mqtt_and_https() {
    let s = Server::start("127.0.0.64");
    s.ok(&[
        "enrollment-group",
        "create",
        "--group-id",
        "fleet",
        "--primary-key",
        KEY1,
    ]);
    let m = s.json(&[
        "device",
        "provision",
        "--registration-id",
        "fleet-dev-1",
        "--group-key",
        KEY1,
    ]);
    assert_eq!(m["registration"]["deviceId"], "fleet-dev-1");
    assert_eq!(m["registration"]["enrollmentGroupId"], "fleet");
    let h = s.json(&[
        "device",
        "provision",
        "--registration-id",
        "fleet-dev-2",
        "--group-key",
        KEY1,
        "--transport",
        "https",
    ]);
    assert_eq!(h["registration"]["assignedHub"], "127.0.0.64");
    assert_eq!(h["registration"]["enrollmentGroupId"], "fleet");

    // A device given the derived key (the factory flow) registers the same way.
    let derived = s.ok(&["compute-device-key", "--key", KEY1, "--registration-id", "fleet-dev-3"]);
    s.json(&[
        "device",
        "provision",
        "--registration-id",
        "fleet-dev-3",
        "--symmetric-key",
        derived.trim(),
        "--no-message",
    ]);

    let regs = s.json(&["registration", "list", "--group-id", "fleet"]);
    let mut ids: Vec<&str> = regs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["registrationId"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["fleet-dev-1", "fleet-dev-2", "fleet-dev-3"]);
    let table = s.ok(&["registration", "list", "--group-id", "fleet"]);
    assert!(table.contains("fleet-dev-2") && table.contains("assigned"), "{table}");
    s.ok(&["registration", "delete", "--registration-id", "fleet-dev-1"]);
    let err = s.fail(&["registration", "show", "--registration-id", "fleet-dev-1"]);
    assert!(has(&err, codes::REGISTRATION_NOT_FOUND), "{err}");
    assert_eq!(
        s.json(&["registration", "list", "--group-id", "fleet", "--top", "1"])
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // A wrong group key fails with the service's error code and a non-zero exit.
    let err = s.fail(&[
        "device",
        "provision",
        "--registration-id",
        "fleet-dev-4",
        "--group-key",
        KEY2,
    ]);
    // Over MQTT (the default) the CONNECT itself is refused, as Azure does.
    assert!(not_authorized_at_connect(&err), "{err}");
}

#[test]
fn monitor_events_sees_the_device_message() {
    let s = Server::start("127.0.0.65");
    s.ok(&[
        "enrollment",
        "create",
        "--registration-id",
        "watched",
        "--primary-key",
        KEY1,
    ]);
    let mut monitor = s
        .cmd(&[
            "hub",
            "monitor-events",
            "--device-id",
            "watched",
            "--timeout",
            "20",
            "--max-events",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the stream is open (the CLI says so on stderr), so the message cannot be missed.
    let stderr = monitor.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let first = lines.next().expect("monitor prints a banner").unwrap();
    assert!(first.starts_with("monitoring events of device watched"), "{first}");
    s.ok(&[
        "device",
        "provision",
        "--registration-id",
        "watched",
        "--symmetric-key",
        KEY1,
        "--message",
        r#"{"temp":21.5}"#,
    ]);
    let out = wait_with_limit(monitor, Duration::from_secs(30));
    assert!(out.status.success());
    let event: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(event["event"]["origin"], "watched");
    assert_eq!(event["event"]["payload"], serde_json::json!({"temp": 21.5}));
    assert_eq!(
        event["event"]["properties"]["system"]["content_type"],
        "application/json"
    );

    // --timeout alone ends a quiet stream, successfully.
    let started = std::time::Instant::now();
    let out = s.run(&["hub", "monitor-events", "--timeout", "1"]);
    assert!(out.status.success());
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(String::from_utf8_lossy(&out.stderr).contains("0 event(s)"));
}

#[test]
fn errors_and_target_resolution() {
    let s = Server::start("127.0.0.66");
    let info = s.info();
    let service_cs = info["serviceConnectionString"].as_str().unwrap().to_string();
    let hub_cs = info["hubConnectionString"].as_str().unwrap().to_string();
    let ca_path = s.data().join("ca.pem");
    let empty = tempfile::tempdir().unwrap();

    // No data directory and no connection string: say what to pass.
    let err = s.fail(&["enrollment", "list", "--data-dir", p(empty.path())]);
    assert!(
        err.contains("--connection-string") && err.contains("DPS_CONNECTION_STRING"),
        "{err}"
    );
    let err = s.fail(&["hub", "device", "list", "--data-dir", p(empty.path())]);
    assert!(err.contains("--hub-connection-string"), "{err}");

    // Explicit connection string, CA and port work without a data directory ...
    let ok = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend([
            "--data-dir",
            p(empty.path()),
            "--ca",
            p(&ca_path),
            "--port",
            "443",
            "--json",
        ]);
        serde_json::from_str::<Value>(&s.ok(&a)).unwrap()
    };
    ok(&[
        "enrollment",
        "create",
        "--registration-id",
        "cs-dev",
        "--connection-string",
        &service_cs,
    ]);
    assert_eq!(
        ok(&["enrollment", "list", "--connection-string", &service_cs])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        ok(&["hub", "device", "list", "--hub-connection-string", &hub_cs]),
        serde_json::json!([])
    );
    // ... and from the environment.
    let out = s
        .cmd(&[
            "enrollment",
            "show",
            "--registration-id",
            "cs-dev",
            "--json",
            "--data-dir",
            p(empty.path()),
            "--ca",
            p(&ca_path),
        ])
        .env("DPS_CONNECTION_STRING", &service_cs)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // A wrong key is the server's 401000.
    let wrong_key = format!(
        "HostName={};SharedAccessKeyName=provisioningserviceowner;SharedAccessKey={KEY2}",
        info["provisioningHost"].as_str().unwrap()
    );
    let err = s.fail(&["enrollment", "list", "--connection-string", &wrong_key]);
    assert!(has(&err, codes::UNAUTHORIZED), "{err}");
    // A connection string without a key is refused before any request.
    let err = s.fail(&["enrollment", "list", "--connection-string", "HostName=127.0.0.66"]);
    assert!(err.contains("SharedAccessKey"), "{err}");
    // An untrusted CA is a TLS failure, not a hang.
    let other_ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(other_ca.path(), include_str!("data/other-ca.pem")).unwrap();
    let err = s.fail(&["enrollment", "list", "--ca", p(other_ca.path())]);
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    // Device errors: wrong key, disabled enrollment, unknown scope.
    s.ok(&[
        "enrollment",
        "create",
        "--registration-id",
        "off",
        "--primary-key",
        KEY1,
        "--provisioning-status",
        "disabled",
    ]);
    for transport in ["mqtt", "https"] {
        let err = s.fail(&[
            "device",
            "provision",
            "--registration-id",
            "cs-dev",
            "--symmetric-key",
            KEY2,
            "--transport",
            transport,
        ]);
        // HTTPS: the service's 401000; MQTT: CONNACK 5, as Azure answers a bad SAS.
        let refused = match transport {
            "mqtt" => not_authorized_at_connect(&err),
            _ => has(&err, codes::UNAUTHORIZED),
        };
        assert!(refused, "{transport}: {err}");
        let err = s.fail(&[
            "device",
            "provision",
            "--registration-id",
            "off",
            "--symmetric-key",
            KEY1,
            "--transport",
            transport,
        ]);
        assert!(
            has(&err, codes::ENROLLMENT_DISABLED) && err.contains("disabled"),
            "{transport}: {err}"
        );
        let err = s.fail(&[
            "device",
            "provision",
            "--registration-id",
            "off",
            "--symmetric-key",
            KEY1,
            "--id-scope",
            "0ne00000000",
            "--transport",
            transport,
        ]);
        let refused = match transport {
            "mqtt" => not_authorized_at_connect(&err),
            _ => has(&err, codes::ID_SCOPE_NOT_FOUND),
        };
        assert!(refused, "{transport}: {err}");
    }
    // The operator finds why in the server's log at the default level, as plain text (the log
    // is a file, not a terminal: no colour codes).
    let log = s.log();
    assert!(!log.contains('\u{1b}'), "colour codes in a log file");
    assert!(
        log.lines()
            .any(|l| l.contains(" INFO ") && l.contains("registration refused") && l.contains("registration=off")),
        "{log}"
    );
}

/// `dps serve --log-format json`: every line a JSON object with its level and fields, as log
/// collectors read them.
#[test]
fn serve_logs_json_lines() {
    let s = Server::start_with("127.0.0.83", &["--log-format", "json"]);
    let err = s.fail(&[
        "device",
        "provision",
        "--registration-id",
        "nobody",
        "--symmetric-key",
        KEY1,
        "--transport",
        "mqtt",
    ]);
    assert!(not_authorized_at_connect(&err), "{err}");
    let log = s.log();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines
        .iter()
        .all(|l| l["level"].is_string() && l["timestamp"].is_string()));
    assert!(
        lines.iter().any(|l| l["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("registration refused"))
            && l["fields"]["registration"] == "nobody"
            && l["fields"]["transport"] == "mqtt"),
        "{log}"
    );
}

/// `dps hub consumer-group`: create, list, show and delete the built-in endpoint's consumer
/// groups, kept across a restart; groups of the `--event-hub-consumer-group` flag exist from the
/// start.
#[test]
fn consumer_groups_survive_a_restart() {
    let mut s = Server::start_with("127.0.0.82", &["--event-hub-consumer-group", "from-flag"]);
    let created = s.json(&["hub", "consumer-group", "create", "--name", "analytics"]);
    assert_eq!(created["name"], "analytics");
    assert!(created["properties"]["created"].is_string(), "{created}");
    let out = s.ok(&["hub", "consumer-group", "create", "-n", "alerts"]);
    assert!(out.contains("alerts"), "{out}");
    let names = |s: &Server| -> Vec<String> {
        s.json(&["hub", "consumer-group", "list"])
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&s), ["$Default", "alerts", "analytics", "from-flag"]);

    s.kill9();
    s.restart();
    assert_eq!(names(&s), ["$Default", "alerts", "analytics", "from-flag"]);
    let table = s.ok(&["hub", "consumer-group", "list"]);
    assert!(table.starts_with("NAME") && table.contains("analytics"), "{table}");
    let shown = s.json(&["hub", "consumer-group", "show", "-n", "ANALYTICS"]);
    assert_eq!(shown, created);

    let out = s.ok(&["hub", "consumer-group", "delete", "-n", "analytics"]);
    assert!(out.contains("deleted consumer group 'analytics'"), "{out}");
    let err = s.fail(&["hub", "consumer-group", "show", "-n", "analytics"]);
    assert!(has(&err, codes::CONSUMER_GROUP_NOT_FOUND), "{err}");
    let err = s.fail(&["hub", "consumer-group", "delete", "-n", "$Default"]);
    assert!(err.contains("cannot be deleted"), "{err}");
    let err = s.fail(&["hub", "consumer-group", "create", "-n", "no spaces"]);
    assert!(has(&err, codes::HUB_ARGUMENT_INVALID), "{err}");
    assert_eq!(names(&s), ["$Default", "alerts", "from-flag"]);
}

/// `dps hub device create|update|delete`, as `az iot hub device-identity` does them: keys the
/// hub generates or the operator gives, thumbprints, a CA-signed device; disabled and enabled
/// again with a reason; deleted; and the mistakes each is told about.
#[test]
fn hub_devices_are_created_updated_and_deleted_from_the_cli() {
    let s = Server::start("127.0.0.84");
    let created = s.json(&["hub", "device", "create", "-d", "cli-sas"]);
    assert_eq!(created["status"], "enabled");
    assert_eq!(created["authentication"]["type"], "sas");
    let generated = created["authentication"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!generated.is_empty());
    let own = s.json(&[
        "hub",
        "device",
        "create",
        "-d",
        "cli-own",
        "--primary-key",
        KEY1,
        "--secondary-key",
        KEY2,
    ]);
    assert_eq!(own["authentication"]["symmetricKey"]["primaryKey"], KEY1);
    let thumb = "A1".repeat(20);
    let x509 = s.json(&[
        "hub",
        "device",
        "create",
        "-d",
        "cli-x509",
        "--auth-method",
        "x509_thumbprint",
        "--primary-thumbprint",
        &thumb,
    ]);
    assert_eq!(x509["authentication"]["type"], "selfSigned");
    let ca = s.json(&[
        "hub",
        "device",
        "create",
        "-d",
        "cli-ca",
        "--auth-method",
        "x509_ca",
        "--edge-enabled",
    ]);
    assert_eq!(ca["authentication"]["type"], "certificateAuthority");
    assert_eq!(ca["capabilities"]["iotEdge"], true);

    // Disabled with a reason, then enabled; the keys replaced, one at a time.
    let off = s.json(&[
        "hub",
        "device",
        "update",
        "-d",
        "cli-sas",
        "--status",
        "disabled",
        "--status-reason",
        "lost",
    ]);
    assert_eq!(
        (off["status"].as_str(), off["statusReason"].as_str()),
        (Some("disabled"), Some("lost"))
    );
    let on = s.json(&[
        "hub",
        "device",
        "update",
        "-d",
        "cli-sas",
        "--status",
        "enabled",
        "--primary-key",
        KEY2,
    ]);
    assert_eq!(on["status"], "enabled");
    assert_eq!(on["authentication"]["symmetricKey"]["primaryKey"], KEY2);
    assert_ne!(on["authentication"]["symmetricKey"]["secondaryKey"], KEY2);
    let err = s.fail(&[
        "hub",
        "device",
        "update",
        "-d",
        "cli-sas",
        "--etag",
        "\"stale\"",
        "--status",
        "disabled",
    ]);
    assert!(err.contains("412") || err.to_lowercase().contains("etag"), "{err}");
    let err = s.fail(&["hub", "device", "update", "-d", "cli-sas"]);
    assert!(err.contains("nothing to change"), "{err}");

    // Mistakes told before any request.
    let err = s.fail(&["hub", "device", "create", "-d", "bad", "--primary-thumbprint", &thumb]);
    assert!(err.contains("x509_thumbprint"), "{err}");
    let err = s.fail(&[
        "hub",
        "device",
        "create",
        "-d",
        "bad",
        "--auth-method",
        "x509_thumbprint",
    ]);
    assert!(err.contains("--primary-thumbprint"), "{err}");
    let err = s.fail(&["hub", "device", "create", "-d", "cli-own"]);
    assert!(err.contains("409") || err.to_lowercase().contains("exists"), "{err}");

    let deleted = s.json(&["hub", "device", "delete", "-d", "cli-sas"]);
    assert_eq!(deleted["deleted"], "cli-sas");
    let err = s.fail(&["hub", "device", "show", "-d", "cli-sas"]);
    assert!(
        err.contains("404") || err.contains("not found") || err.contains("DeviceNotFound"),
        "{err}"
    );
    let table = s.ok(&["hub", "device", "delete", "-d", "cli-own"]);
    assert!(table.contains("deleted device cli-own"), "{table}");
}

/// `dps policy …` (`az iot dps policy`, `az iot hub policy`): a policy created with rights is
/// in force at once and only for those rights; a key made anew retires the old one; a policy
/// cannot be a way up (it grants nothing it lacks, sees no stronger policy's keys); the last
/// owner stays; the changes are in `dps.json` and outlive a restart; a deleted policy's tokens
/// are refused.
#[test]
fn policies_are_managed_from_the_cli_and_enforced() {
    let mut s = Server::start("127.0.39.20");
    let cs = |name: &str, key: &str| format!("HostName=127.0.39.20;SharedAccessKeyName={name};SharedAccessKey={key}");
    let key_of = |v: &Value, which: &str| v[which].as_str().unwrap().to_string();

    let listed = s.json(&["policy", "list"]);
    assert_eq!(listed[0]["keyName"], "provisioningserviceowner", "{listed}");
    assert_eq!(
        listed[0]["rights"],
        "ServiceConfig, EnrollmentRead, EnrollmentWrite, DeviceConnect, RegistrationStatusRead, RegistrationStatusWrite"
    );

    // A reader: reads enrollments, writes none.
    let reader = s.json(&[
        "policy",
        "create",
        "--pn",
        "enroll-reader",
        "--rights",
        "enrollmentread",
    ]);
    assert_eq!(reader["rights"], "EnrollmentRead");
    let old = cs("enroll-reader", &key_of(&reader, "primaryKey"));
    s.ok(&["enrollment", "list", "--connection-string", &old]);
    let err = s.fail(&[
        "enrollment",
        "create",
        "--registration-id",
        "e1",
        "--connection-string",
        &old,
    ]);
    assert!(has(&err, codes::INSUFFICIENT_RIGHTS), "{err}");
    let err = s.fail(&[
        "policy",
        "create",
        "--pn",
        "enroll-reader",
        "--rights",
        "EnrollmentRead",
    ]);
    assert!(err.contains("already has a policy 'enroll-reader'"), "{err}");

    // A fresh primary key: the old one is refused, the new one works; the secondary stays.
    let renewed = s.json(&["policy", "regenerate-key", "--pn", "enroll-reader", "--rk", "primary"]);
    assert_eq!(renewed["secondaryKey"], reader["secondaryKey"]);
    let err = s.fail(&["enrollment", "list", "--connection-string", &old]);
    assert!(has(&err, codes::UNAUTHORIZED), "{err}");
    let new = cs("enroll-reader", &key_of(&renewed, "primaryKey"));
    s.ok(&["enrollment", "list", "--connection-string", &new]);

    // ServiceConfig alone manages policies, but grants nothing it lacks and sees no stronger
    // policy's keys.
    let config = s.json(&["policy", "create", "--pn", "config-only", "--rights", "ServiceConfig"]);
    let config = cs("config-only", &key_of(&config, "primaryKey"));
    let err = s.fail(&[
        "policy",
        "create",
        "--pn",
        "sneaky",
        "--rights",
        "EnrollmentWrite",
        "--connection-string",
        &config,
    ]);
    assert!(
        has(&err, codes::INSUFFICIENT_RIGHTS) && err.contains("EnrollmentWrite"),
        "{err}"
    );
    let owner = s.json(&[
        "policy",
        "show",
        "--pn",
        "provisioningserviceowner",
        "--connection-string",
        &config,
    ]);
    assert!(owner.get("primaryKey").is_none(), "{owner}");
    let err = s.fail(&["policy", "list", "--connection-string", &new]);
    assert!(has(&err, codes::INSUFFICIENT_RIGHTS), "{err}");

    // The last owner stays.
    let err = s.fail(&["policy", "delete", "--pn", "provisioningserviceowner"]);
    assert!(err.contains("no policy would hold every right"), "{err}");
    let err = s.fail(&[
        "policy",
        "update",
        "--pn",
        "provisioningserviceowner",
        "--rights",
        "ServiceConfig",
    ]);
    assert!(has(&err, codes::ARGUMENT_INVALID), "{err}");
    let err = s.fail(&["policy", "create", "--pn", "bad", "--rights", "RegistryRead"]);
    assert!(err.contains("unknown right 'RegistryRead'"), "{err}");

    // A hub's policies: a backend policy reads the registry, and cannot change policies.
    let hub = ["--hub-name", "127.0.39.20"];
    let backend = s.json(
        &[
            &[
                "policy",
                "create",
                "--pn",
                "backend",
                "--rights",
                "ServiceConnect,RegistryRead",
            ][..],
            &hub[..],
        ]
        .concat(),
    );
    assert_eq!(backend["rights"], "RegistryRead, ServiceConnect");
    let backend_cs = cs("backend", &key_of(&backend, "primaryKey"));
    s.ok(&["hub", "device", "list", "--hub-connection-string", &backend_cs]);
    let err = s.fail(
        &[
            &["policy", "list", "--hub-connection-string", &backend_cs][..],
            &hub[..],
        ]
        .concat(),
    );
    assert!(has(&err, codes::INSUFFICIENT_RIGHTS), "{err}");
    let hub_list = s.json(&[&["policy", "list"][..], &hub[..]].concat());
    let names: Vec<&str> = hub_list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["keyName"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "iothubowner",
            "service",
            "device",
            "registryRead",
            "registryReadWrite",
            "backend"
        ]
    );

    // Kept in dps.json, and in force after a restart.
    let kept = std::fs::read_to_string(s.data().join("dps.json")).unwrap();
    assert!(kept.contains("enroll-reader") && kept.contains("backend"), "{kept}");
    s.kill9();
    s.restart();
    s.ok(&["enrollment", "list", "--connection-string", &new]);
    s.ok(&["hub", "device", "list", "--hub-connection-string", &backend_cs]);

    // Deleted: its tokens are refused.
    s.ok(&["policy", "delete", "--pn", "enroll-reader"]);
    let err = s.fail(&["enrollment", "list", "--connection-string", &new]);
    assert!(has(&err, codes::UNAUTHORIZED), "{err}");
    let err = s.fail(&["policy", "show", "--pn", "enroll-reader"]);
    assert!(has(&err, codes::PATH_NOT_FOUND), "{err}");
}

/// `dps audit list|export`: a change is in the trail when its answer comes (who made it, the
/// operation, the fields sent, the etag); registration attempts follow within moments, the
/// assigned one with its hub and the refused one with its error; filters by registration id,
/// kind, outcome and time; an export is JSON lines of the same entries; no key is written.
#[test]
fn the_audit_trail_records_registrations_and_changes() {
    let s = Server::start("127.0.39.23");
    s.ok(&[
        "enrollment",
        "create",
        "--registration-id",
        "Audited-1",
        "--primary-key",
        KEY1,
    ]);
    // A change the trail has by the time the command returns.
    let changes = s.json(&["audit", "list", "--kind", "change", "--registration-id", "audited-1"]);
    let change = &changes[0];
    assert_eq!(change["outcome"], "succeeded", "{changes}");
    assert_eq!(change["policy"], "provisioningserviceowner");
    assert_eq!(change["operation"], "PUT /enrollments/Audited-1");
    assert_eq!(change["status"], 200);
    assert!(
        change["fields"].as_array().unwrap().iter().any(|f| f == "attestation"),
        "{change}"
    );

    s.json(&[
        "device",
        "provision",
        "--registration-id",
        "Audited-1",
        "--symmetric-key",
        KEY1,
    ]);
    s.fail(&[
        "device",
        "provision",
        "--registration-id",
        "Audited-1",
        "--symmetric-key",
        KEY2,
    ]);
    let mut attempts = Value::Null;
    for _ in 0..100 {
        attempts = s.json(&["audit", "list", "--kind", "registration", "--rid", "AUDITED-1"]);
        if attempts.as_array().unwrap().len() >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let attempts = attempts.as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0]["outcome"], "assigned");
    assert_eq!(attempts[0]["transport"], "mqtt");
    assert_eq!(attempts[0]["attestation"], "symmetricKey");
    assert_eq!(attempts[0]["assignedHub"], "127.0.39.23");
    assert_eq!(attempts[0]["source"], "127.0.0.1");
    assert_eq!(attempts[1]["outcome"], "unauthorized");
    assert_eq!(attempts[1]["errorCode"], 401000, "{:?}", attempts[1]);
    let refused = s.json(&["audit", "list", "--outcome", "unauthorized"]);
    assert_eq!(refused.as_array().unwrap().len(), 1);
    assert!(s.json(&["audit", "list", "--since", "1h"]).as_array().unwrap().len() >= 3);
    assert!(s
        .json(&["audit", "list", "--since", "2099-01-01T00:00:00Z"])
        .as_array()
        .unwrap()
        .is_empty());

    // A change refused is in the trail too, with its error.
    let reader = s.json(&["policy", "create", "--pn", "reader", "--rights", "EnrollmentRead"]);
    let cs = format!(
        "HostName=127.0.39.23;SharedAccessKeyName=reader;SharedAccessKey={}",
        reader["primaryKey"].as_str().unwrap()
    );
    s.fail(&[
        "enrollment",
        "delete",
        "--registration-id",
        "Audited-1",
        "--connection-string",
        &cs,
    ]);
    let mut failed = Value::Null;
    for _ in 0..100 {
        failed = s.json(&["audit", "list", "--kind", "change", "--outcome", "failed"]);
        if !failed.as_array().unwrap().is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(failed[0]["policy"], "reader", "{failed}");
    assert_eq!(failed[0]["errorCode"], 401001);
    assert_eq!(failed[0]["operation"], "DELETE /enrollments/Audited-1");
    let policy = s.json(&["audit", "list", "--kind", "change"]);
    assert!(
        policy
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["operation"] == "PUT /keys/reader"),
        "{policy}"
    );

    // The export: every entry, one JSON object per line; no key anywhere.
    let file = s.dir.path().join("audit.jsonl");
    s.ok(&["audit", "export", "-o", p(&file)]);
    let text = std::fs::read_to_string(&file).unwrap();
    let all = s.json(&["audit", "list", "--top", "1000"]);
    assert_eq!(text.lines().count(), all.as_array().unwrap().len());
    for line in text.lines() {
        serde_json::from_str::<Value>(line).unwrap();
    }
    for secret in [KEY1, KEY2, reader["primaryKey"].as_str().unwrap()] {
        assert!(!text.contains(secret), "a key is in the audit trail");
    }
    let table = s.ok(&["audit", "list"]);
    assert!(
        table.contains("PUT /enrollments/Audited-1") && table.contains("unauthorized"),
        "{table}"
    );
}

/// `dps serve --otlp-endpoint`: a registration becomes a trace span sent over OTLP/HTTP
/// (protobuf) to the collector, named `registration` and carrying the registration id, the
/// transport and the outcome; the collector here is a bare HTTP listener that keeps what it is
/// sent.
#[test]
fn registrations_are_exported_as_otlp_traces() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::sync::{Arc, Mutex};
    let collector = std::net::TcpListener::bind("127.0.39.27:4318").unwrap();
    /// The request lines and bodies the collector was sent.
    type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;
    let received: Received = Arc::default();
    let keep = received.clone();
    std::thread::spawn(move || {
        for conn in collector.incoming().flatten() {
            let keep = keep.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut conn = conn;
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut length = 0usize;
                    loop {
                        let mut line = String::new();
                        reader.read_line(&mut line).unwrap();
                        if line.trim().is_empty() {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':') {
                            if k.eq_ignore_ascii_case("content-length") {
                                length = v.trim().parse().unwrap();
                            }
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    keep.lock().unwrap().push((request_line.trim().to_string(), body));
                    conn.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
                    )
                    .unwrap();
                }
            });
        }
    });
    let s = Server::start_with("127.0.39.26", &["--otlp-endpoint", "http://127.0.39.27:4318"]);
    s.ok(&[
        "enrollment",
        "create",
        "--registration-id",
        "traced-1",
        "--primary-key",
        KEY1,
    ]);
    s.json(&[
        "device",
        "provision",
        "--registration-id",
        "traced-1",
        "--symmetric-key",
        KEY1,
    ]);
    let has = |body: &[u8], what: &str| body.windows(what.len()).any(|w| w == what.as_bytes());
    let mut found = None;
    for _ in 0..300 {
        found = received
            .lock()
            .unwrap()
            .iter()
            .find(|(_, body)| has(body, "traced-1"))
            .cloned();
        if found.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (request, body) = found.expect("the registration's span reached the collector within 30 s");
    assert_eq!(request, "POST /v1/traces HTTP/1.1");
    for expected in [
        "registration",
        "registration_id",
        "mqtt",
        "assigned",
        "127.0.39.26",
        "dps",
    ] {
        assert!(has(&body, expected), "the span has no {expected:?}");
    }
    assert!(s.log().contains("registration traces exported over OTLP"));
}

/// Issue 17, point 1: credential policies from the CLI, built in and brought; their CA chains
/// verify with openssl; enrollments name them; the key never shows.
#[test]
fn credential_policies_are_managed_from_the_cli() {
    let s = Server::start("127.0.39.11");
    let work = tempfile::tempdir().unwrap();

    let built = s.json(&["credential-policy", "create", "--name", "fleet"]);
    assert_eq!(built["keyType"], "P-256", "{built}");
    assert_eq!(built["validityInDays"], 30);
    assert_eq!(built["certificateAuthority"]["kind"], "builtIn");
    let p384 = s.json(&[
        "credential-policy",
        "create",
        "--name",
        "fleet-384",
        "--key-type",
        "P-384",
        "--validity-days",
        "7",
    ]);
    assert_eq!(p384["keyType"], "P-384", "{p384}");
    let err = s.fail(&["credential-policy", "create", "--name", "fleet"]);
    assert!(has(&err, codes::CREDENTIAL_POLICY_EXISTS), "{err}");
    let updated = s.json(&[
        "credential-policy",
        "update",
        "--name",
        "fleet",
        "--validity-days",
        "90",
    ]);
    assert_eq!(updated["validityInDays"], 90);
    assert_eq!(updated["certificateAuthority"], built["certificateAuthority"]);

    // openssl trusts the root alone and verifies the issuing CA under it.
    for (policy, name) in [(&built, "fleet"), (&p384, "fleet-384")] {
        let chain: Vec<String> = policy["certificateAuthority"]["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                use base64::Engine as _;
                let der = base64::engine::general_purpose::STANDARD
                    .decode(c.as_str().unwrap())
                    .unwrap();
                dps_pki::pem::to_pem("CERTIFICATE", &der)
            })
            .collect();
        let issuing = work.path().join(format!("{name}-issuing.pem"));
        let root = work.path().join(format!("{name}-root.pem"));
        std::fs::write(&issuing, &chain[0]).unwrap();
        std::fs::write(&root, &chain[1]).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["verify", "-x509_strict", "-CAfile", p(&root), p(&issuing)])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    // A brought CA made with `dps ca`.
    let dir = p(work.path());
    s.ok(&["ca", "create-root", "--name", "Contoso Root", "--out-dir", dir]);
    s.ok(&[
        "ca",
        "create-intermediate",
        "--name",
        "Contoso Issuing",
        "--ca-cert",
        &format!("{dir}/Contoso Root.pem"),
        "--ca-key",
        &format!("{dir}/Contoso Root.key"),
        "--path-len",
        "0",
        "--out-dir",
        dir,
    ]);
    let brought = s.json(&[
        "credential-policy",
        "create",
        "--name",
        "contoso",
        "--ca-cert",
        &format!("{dir}/Contoso Issuing.pem"),
        "--ca-key",
        &format!("{dir}/Contoso Issuing.key"),
    ]);
    assert_eq!(brought["certificateAuthority"]["kind"], "brought", "{brought}");
    assert!(brought["certificateAuthority"]["subject"]
        .as_str()
        .unwrap()
        .contains("Contoso Issuing"));
    let shown = s.ok(&["credential-policy", "show", "--name", "contoso", "--json"]);
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");

    let table = s.ok(&["credential-policy", "list"]);
    for expected in ["contoso", "fleet", "fleet-384", "P-384", "brought", "builtIn"] {
        assert!(table.contains(expected), "{expected} missing from:\n{table}");
    }

    // Enrollments name one; an unknown one is refused with its name.
    let err = s.fail(&[
        "enrollment",
        "create",
        "--registration-id",
        "cert-dev",
        "--credential-policy",
        "nope",
    ]);
    assert!(err.contains("credential policy 'nope' does not exist"), "{err}");
    let e = s.json(&[
        "enrollment",
        "create",
        "--registration-id",
        "cert-dev",
        "--credential-policy",
        "fleet",
    ]);
    assert_eq!(e["credentialPolicyName"], "fleet", "{e}");
    let shown = s.ok(&["enrollment", "show", "--registration-id", "cert-dev"]);
    assert!(
        shown.contains("credential policy") && shown.contains("fleet"),
        "{shown}"
    );
    let g = s.json(&[
        "enrollment-group",
        "create",
        "--group-id",
        "cert-group",
        "--credential-policy",
        "contoso",
    ]);
    assert_eq!(g["credentialPolicyName"], "contoso", "{g}");

    s.ok(&["credential-policy", "delete", "--name", "fleet-384"]);
    let err = s.fail(&["credential-policy", "show", "--name", "fleet-384"]);
    assert!(has(&err, codes::CREDENTIAL_POLICY_NOT_FOUND), "{err}");

    // Issue 17, point 2: the Rust device client asks for its certificate over each transport,
    // keeps it, and reaches the hub with it.
    s.ok(&[
        "enrollment",
        "update",
        "--registration-id",
        "cert-dev",
        "--primary-key",
        KEY1,
        "--secondary-key",
        KEY2,
    ]);
    let issued = work.path().join("issued");
    let mut thumbprints = Vec::new();
    for (transport, key_type) in [("mqtt", "P-256"), ("https", "P-384"), ("amqp", "RSA-2048")] {
        let out = s.json(&[
            "device",
            "provision",
            "--registration-id",
            "cert-dev",
            "--symmetric-key",
            KEY1,
            "--transport",
            transport,
            "--csr",
            "--csr-key-type",
            key_type,
            "--issued-dir",
            p(&issued),
        ]);
        assert_eq!(out["messageSent"], true, "{transport}: {out}");
        let cert = out["issuedCertificatePath"].as_str().unwrap().to_string();
        let key = out["issuedKeyPath"].as_str().unwrap().to_string();
        assert!(cert.ends_with("cert-dev.issued.pem"), "{cert}");
        assert_eq!(
            out["registration"]["issuedCertificateChain"].as_array().unwrap().len(),
            3
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "the key is its owner's only");
        }
        // The chain file: the device's certificate for its own key, then the policy's CAs.
        let text = std::process::Command::new("openssl")
            .args(["x509", "-in", &cert, "-noout", "-subject", "-fingerprint", "-sha256"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&text.stdout).to_string();
        assert!(text.contains("CN = cert-dev") || text.contains("CN=cert-dev"), "{text}");
        thumbprints.push(text);
        let key_text = std::fs::read_to_string(&key).unwrap();
        assert!(key_text.contains("PRIVATE KEY"));
    }
    thumbprints.dedup();
    assert_eq!(thumbprints.len(), 3, "each registration issued a new certificate");
    let hub_device = s.json(&["hub", "device", "show", "--device-id", "cert-dev"]);
    assert_eq!(hub_device["authentication"]["type"], "selfSigned", "{hub_device}");

    // Issue 17, point 4: the last issued certificate revoked from the CLI, and accepted again.
    let issued_pem = issued.join("cert-dev.issued.pem");
    let revoked = s.json(&[
        "revocation",
        "add",
        "--certificate-path",
        p(&issued_pem),
        "--reason",
        "decommissioned",
    ]);
    assert_eq!(revoked["subject"], "CN=cert-dev", "{revoked}");
    let id = revoked["id"].as_str().unwrap().to_string();
    let table = s.ok(&["revocation", "list"]);
    assert!(table.contains(&id) && table.contains("manual"), "{table}");
    let shown = s.ok(&["revocation", "show", "--id", &id]);
    assert!(shown.contains("decommissioned"), "{shown}");
    let err = s.fail(&["revocation", "add", "--thumbprint", "abc"]);
    assert!(err.contains("64 hex digits"), "{err}");
    let stranger = work.path().join("stranger.crl");
    std::fs::write(&stranger, "-----BEGIN X509 CRL-----\nMAA=\n-----END X509 CRL-----\n").unwrap();
    let err = s.fail(&["revocation", "import-crl", "--crl-path", p(&stranger)]);
    assert!(err.contains("revocation list"), "{err}");
    s.ok(&["revocation", "remove", "--id", &id]);
    assert!(s.ok(&["revocation", "list"]).contains("(none)"));

    // Issue 17, point 3 from the CLI: the device renews through its hub with a new key and
    // reconnects with the new certificate; the hub knows it by that one, the old one as the
    // secondary (until the grace period ends); asking again at once is refused as IoT Hub
    // throttles.
    let thumbprints = |d: &serde_json::Value| {
        let t = &d["authentication"]["x509Thumbprint"];
        (t["primaryThumbprint"].clone(), t["secondaryThumbprint"].clone())
    };
    let (old, _) = thumbprints(&s.json(&["hub", "device", "show", "--device-id", "cert-dev"]));
    let renewed_dir = work.path().join("renewed");
    let out = s.json(&[
        "device",
        "renew-certificate",
        "--x509-cert",
        p(&issued_pem),
        "--x509-key",
        p(&issued.join("cert-dev.issued.key")),
        "--new-key",
        "--out-dir",
        p(&renewed_dir),
    ]);
    assert_eq!(out["deviceId"], "cert-dev", "{out}");
    assert_eq!(out["issuedCertificateChain"].as_array().unwrap().len(), 3, "{out}");
    let (new_cert, new_key) = (
        renewed_dir.join("cert-dev.issued.pem"),
        renewed_dir.join("cert-dev.issued.key"),
    );
    assert_eq!(out["issuedKeyPath"], p(&new_key), "{out}");
    let (primary, secondary) = thumbprints(&s.json(&["hub", "device", "show", "--device-id", "cert-dev"]));
    assert_ne!(primary, old);
    assert_eq!(
        secondary, old,
        "the replaced certificate works on until the grace period ends"
    );
    let err = s.fail(&[
        "device",
        "renew-certificate",
        "--x509-cert",
        p(&new_cert),
        "--x509-key",
        p(&new_key),
        "--device-id",
        "cert-dev",
    ]);
    assert!(
        err.contains("429002") && err.contains("renewed its certificate less than 60 s ago"),
        "{err}"
    );
}

//! Writes the hand-made seed inputs of every fuzz target into `<dir>/<target>/` (default
//! `fuzz/corpus`): what the Azure SDKs actually send (device-protocol.md, service-api.md,
//! hub-dice-tpm.md), certificates from the repository's fixtures and freshly issued chains,
//! and TPM public areas. Run before a first fuzzing session or after adding a target, then let
//! `cargo fuzz cmin` keep what adds coverage:
//!
//! ```text
//! cargo run -p dps-fuzz --example seed -- fuzz/corpus
//! ```

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::BytesMut;
use dps_pki::ca::{KeyAlgorithm, LocalCa};
use dps_proto::{dps_mqtt, hub_mqtt, sas};
use dps_tpm::RsaPublic;
use rumqttc::mqttbytes::v4::{Connect, Packet, PubAck, Publish, Subscribe, Unsubscribe};
use rumqttc::mqttbytes::QoS;

const KEY: &str = "ZnV6emluZy1rZXktZm9yLWRwcy0wMTIzNDU2Nzg5YWI=";
const SCOPE: &str = "0ne00FUZZ01";
const HUB: &str = "hub.fuzz.test";

struct Seeds {
    root: PathBuf,
}

impl Seeds {
    fn put(&self, target: &str, name: &str, data: impl AsRef<[u8]>) {
        let dir = self.root.join(target);
        std::fs::create_dir_all(&dir).expect("corpus directory");
        std::fs::write(dir.join(format!("seed-{name}")), data).expect("seed written");
    }
}

fn packet(p: Packet) -> Vec<u8> {
    let mut b = BytesMut::new();
    p.write(&mut b, usize::MAX).expect("a seed packet encodes");
    b.to_vec()
}

fn connect(client_id: &str, username: &str, password: &str) -> Vec<u8> {
    let mut c = Connect::new(client_id);
    c.keep_alive = 60;
    if !username.is_empty() {
        c.set_login(username, password);
    }
    packet(Packet::Connect(c))
}

fn publish(topic: &str, qos: QoS, pkid: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = Publish::new(topic, qos, payload.to_vec());
    p.pkid = if qos == QoS::AtMostOnce { 0 } else { pkid };
    packet(Packet::Publish(p))
}

fn subscribe(filter: &str, pkid: u16) -> Vec<u8> {
    let mut s = Subscribe::new(filter, QoS::AtLeastOnce);
    s.pkid = pkid;
    packet(Packet::Subscribe(s))
}

/// Masked binary WebSocket frames, one per chunk of `data`, as a client sends them.
fn ws_frames(data: &[u8], per_frame: usize, mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in data.chunks(per_frame.max(1)) {
        out.push(0x82);
        match chunk.len() {
            n @ 0..=125 => out.push(0x80 | n as u8),
            n @ 126..=65535 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(chunk.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    }
    out
}

fn main() {
    let root = std::env::args().nth(1).unwrap_or_else(|| "fuzz/corpus".into());
    let s = Seeds {
        root: PathBuf::from(root),
    };
    let device = "fuzz-device";

    // ---- credentials and identifiers
    let dps_token = sas::build_token(
        &format!("{SCOPE}/registrations/{device}"),
        KEY,
        1_900_000_000,
        Some("registration"),
    )
    .expect("token");
    let hub_token = sas::build_token(&format!("{HUB}/devices/{device}"), KEY, 1_900_000_000, None).expect("token");
    let service_token =
        sas::build_token("dps.fuzz.test", KEY, 1_900_000_000, Some("provisioningserviceowner")).expect("token");
    let sig = sas::sign(KEY, "0ne0001234A/registrations/dev-01", 1_735_689_600).expect("sig");
    let sas_seeds = [
        dps_token.clone(),
        hub_token.clone(),
        service_token,
        // Node symmetric key: raw sr; C: lower-case hex; identity service: lower-cased sr.
        format!(
            "SharedAccessSignature sr=0ne0001234A/registrations/dev-01&sig={}&se=1735689600",
            sas::encode_component(&sig)
        ),
        format!(
            "SharedAccessSignature sr=0ne0001234a%2fregistrations%2fdev-01&sig={}&se=1735689600&skn=registration",
            sas::encode_component(&sig).replace("%2B", "%2b")
        ),
        format!("SharedAccessSignature se=1735689600&skn=&sig={sig}&sr=https%3A%2F%2Fmydps.example.test"),
    ];
    for (i, t) in sas_seeds.iter().enumerate() {
        s.put("sas_token", &format!("{i}"), t);
    }
    for (i, c) in [
        "HostName=dps.fuzz.test;SharedAccessKeyName=provisioningserviceowner;SharedAccessKey=ZnV6eg==",
        "HostName=hub.fuzz.test;DeviceId=fuzz-device;SharedAccessKey=ZnV6eg==",
        "hostname=h;sharedaccesskey=k;deviceid=d;GatewayHostName=gw",
        "HostName=hub.fuzz.test;SharedAccessKeyName=iothubowner;SharedAccessKey=ZnV6eg==;",
    ]
    .iter()
    .enumerate()
    {
        s.put("connection_string", &format!("{i}"), c);
    }
    for (i, id) in [
        "dev-01",
        "sym_enrollment_abf63bb6",
        "A:b.c",
        "x-",
        "-dev",
        "dev 1",
        "d\u{e9}v",
        &"a".repeat(129),
    ]
    .iter()
    .enumerate()
    {
        s.put("registration_id", &format!("{i}"), id);
    }

    // ---- MQTT usernames and topics
    let dps_user = "0ne0001234A/registrations/dev-01/api-version=2019-03-31&ClientVersion=azure-iot-device-provisioning-py%2F2.14.0%283.11.4%3BLinux%20x%3Bx86_64%29";
    let hub_user =
        "hub.fuzz.test/fuzz-device/?api-version=2021-04-12&DeviceClientType=azure-iot-device-iothub-py%2F2.14.0";
    for (i, u) in [
        dps_user,
        "scope/registrations/dev/api-version=2021-06-01&ClientVersion=1.15.0",
        "scope/registrations/dev/?api-version=2021-06-01",
        "scope/registrations/dev",
        hub_user,
        "hub.fuzz.test/fuzz-device/?api-version=2020-09-30&DeviceClientType=iothubclient%2F1.11.0&model-id=dtmi%3Acom%3Aexample%3AThermostat%3B1",
        "hub.fuzz.test/fuzz-device/module-1/?api-version=2021-04-12",
    ]
    .iter()
    .enumerate()
    {
        s.put("mqtt_username", &format!("{i}"), u);
    }
    let topics = [
        "$dps/registrations/PUT/iotdps-register/?$rid=7b3e1c2a-5d1f-4f0e-9d2b-3a4c5d6e7f80".to_string(),
        "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=42&operationId=4.abc.7d9e2f0a-1b2c-3d4e-5f60-718293a4b5c6".into(),
        "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=1&operationId=4%2Eabc".into(),
        "$dps/registrations/res/202/?$rid=7b3e&retry-after=3".into(),
        "devices/fuzz-device/messages/events/%24.ct=application%2Fjson&%24.ce=utf-8&k=v".into(),
        "devices/fuzz-device/messages/events/".into(),
        "devices/fuzz-device/modules/m1/messages/events/".into(),
        "$iothub/twin/GET/?$rid=17".into(),
        "$iothub/twin/PATCH/properties/reported/?$rid=ab-c".into(),
        "$iothub/methods/res/200/?$rid=5".into(),
        "$iothub/twin/res/204/?$rid=3&$version=7".into(),
        "$iothub/twin/PATCH/properties/desired/?$version=2".into(),
        "devices/+/messages/devicebound/#".into(),
        "$iothub/twin/#".into(),
        hub_mqtt::c2d_topic(device, &[("$.mid".into(), "1".into()), ("k".into(), "a b".into())]),
    ];
    for (i, t) in topics.iter().enumerate() {
        let status: u16 = [200, 202, 204, 400, 401, 429][i % 6];
        let mut data = status.to_be_bytes().to_vec();
        data.extend_from_slice(t.as_bytes());
        s.put("mqtt_topic", &format!("{i}"), data);
    }

    // ---- MQTT packets and WebSocket frames
    let register_body = br#"{"registrationId":"fuzz-device","payload":{"modelId":"dtmi:com:example:Thermostat;1"}}"#;
    let dps_session = [
        connect("dev-01", dps_user, &dps_token),
        subscribe(dps_mqtt::RESPONSE_FILTER, 1),
        publish(&dps_mqtt::register_topic("1"), QoS::AtLeastOnce, 2, register_body),
        publish(
            &dps_mqtt::operation_status_topic("2", "4.abc.d-e"),
            QoS::AtMostOnce,
            0,
            b"",
        ),
        packet(Packet::PingReq),
        packet(Packet::Disconnect),
    ]
    .concat();
    let hub_session = [
        connect(device, hub_user, &hub_token),
        subscribe("$iothub/twin/res/#", 1),
        subscribe(&format!("devices/{device}/messages/devicebound/#"), 2),
        publish(&hub_mqtt::twin_get_topic("1"), QoS::AtMostOnce, 0, b""),
        publish(
            &hub_mqtt::reported_patch_topic("2"),
            QoS::AtLeastOnce,
            3,
            br#"{"temp":21.5}"#,
        ),
        publish(
            &hub_mqtt::telemetry_topic(device, &[("$.ct".into(), "application/json".into())]),
            QoS::AtLeastOnce,
            4,
            br#"{"t":1}"#,
        ),
        packet(Packet::PubAck(PubAck::new(1))),
        packet(Packet::Unsubscribe(Unsubscribe::new("$iothub/twin/res/#"))),
        packet(Packet::Disconnect),
    ]
    .concat();
    let singles = [
        connect("dev-01", "", ""),
        connect("x", "scope/registrations/x/api-version=2019-03-31", ""),
        publish("$iothub/methods/res/200/?$rid=5", QoS::AtMostOnce, 0, b"{}"),
    ];
    for (i, (chunk, data)) in [(0u8, &dps_session), (63, &hub_session), (7, &dps_session)]
        .into_iter()
        .chain(singles.iter().map(|p| (3u8, p)))
        .enumerate()
    {
        s.put("mqtt_packet", &format!("{i}"), [&[chunk][..], data].concat());
    }
    let mut ws = vec![
        (0u8, ws_frames(&dps_session, usize::MAX, [1, 2, 3, 4])),
        (20, ws_frames(&hub_session, 40, [0x37, 0xfa, 0x21, 0x3d])),
        (5, ws_frames(&singles[0], 3, [0, 0, 0, 0])),
    ];
    // A ping, then a packet, then a close (status 1000).
    let mut control = vec![0x89, 0x82, 9, 9, 9, 9, b'p' ^ 9, b'g' ^ 9];
    control.extend(ws_frames(&packet(Packet::PingReq), 10, [5, 6, 7, 8]));
    control.extend([0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8]);
    ws.push((1, control));
    // A fragmented binary message (continuation frames) and a text frame.
    let conn = connect("dev-01", dps_user, &dps_token);
    let (a, b) = conn.split_at(conn.len() / 2);
    let mut frag = ws_frames(a, usize::MAX, [0; 4]);
    frag[0] = 0x02;
    let mut cont = ws_frames(b, usize::MAX, [0; 4]);
    cont[0] = 0x80;
    frag.extend(cont);
    ws.push((2, frag));
    let mut text = ws_frames(b"CONNECT", usize::MAX, [0; 4]);
    text[0] = 0x81;
    ws.push((2, text));
    for (i, (chunk, data)) in ws.into_iter().enumerate() {
        s.put("websocket_frames", &format!("{i}"), [&[chunk][..], &data].concat());
    }

    // ---- REST request targets (method index: GET 0, PUT 1, POST 2, DELETE 3, PATCH 4)
    for (i, (m, target)) in [
        (1u8, "/0ne0001234A/registrations/dev-01/register?api-version=2021-06-01"),
        (
            0,
            "/0ne0001234A/registrations/dev-01/operations/4.abc.7d9?api-version=2021-06-01",
        ),
        (2, "/0ne0001234A/registrations/dev-01?api-version=2019-03-31"),
        (1, "/enrollments/dev-01?api-version=2021-10-01"),
        (2, "/enrollments/?api-version=2021-10-01"),
        (2, "/enrollmentGroups/query?api-version=2021-10-01"),
        (0, "/enrollmentgroups/grp-1/attestationmechanism?api-version=2021-10-01"),
        (2, "/registrations/grp-1/query?api-version=2021-10-01"),
        (1, "/certificates/root-1?api-version=2021-10-01"),
        (
            2,
            "/certificates/root-1/generateVerificationCode?api-version=2021-10-01",
        ),
        (1, "/devices/fuzz-device?api-version=2021-04-12"),
        (4, "/twins/fuzz-device?api-version=2021-04-12"),
        (2, "/twins/fuzz-device/methods?api-version=2021-04-12"),
        (0, "/messages/events?api-version=2021-04-12"),
        (0, "/statistics/devices?api-version=2021-04-12"),
        (0, "/$iothub/websocket?iothub-no-client-cert=true"),
        (
            0,
            "/$iothub/websocket\nHost: dps.fuzz.test:443\nUpgrade: websocket\nConnection: keep-alive, Upgrade\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\nSec-WebSocket-Version: 13\nSec-WebSocket-Protocol: MQTT",
        ),
        (
            0,
            "/$iothub/websocket\nUpgrade: WebSocket\nConnection: Upgrade\nSec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\n\
             Sec-WebSocket-Version: 8\nSec-WebSocket-Protocol: AMQPWSB10, mqtt",
        ),
        (
            0,
            "/enrollments/dev%3A01%2Fx?api-version=2021-10-01&top=5&deviceId=a%3Ab&flag&x=a+b",
        ),
        (3, "https://dps.fuzz.test/enrollments/dev-01?api-version=2021-10-01"),
    ]
    .iter()
    .enumerate()
    {
        s.put("rest_path", &format!("{i}"), [&[*m][..], target.as_bytes()].concat());
    }

    // ---- certificates
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut pems: Vec<(String, String)> = Vec::new();
    for rel in [
        "crates/dps-pki/tests/fixtures/devkit-dps-sample.pem",
        "crates/dps-pki/tests/fixtures/ec-sec1.crt",
        "crates/dps-pki/tests/fixtures/rsa-pss-root.crt",
        "crates/dps-pki/tests/fixtures/rsa-pss-leaf.crt",
        "crates/dps/tests/data/other-ca.pem",
    ] {
        let text = std::fs::read_to_string(repo.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        pems.push((rel.rsplit('/').next().expect("a name").into(), text));
    }
    let root = LocalCa::generate("Fuzz Root CA").expect("CA");
    let inter = root
        .issue_intermediate("Fuzz Intermediate CA", Some(0), KeyAlgorithm::EcdsaP256)
        .expect("intermediate");
    let leaf = inter
        .issue_device_certificate(device, 3650, KeyAlgorithm::EcdsaP256)
        .expect("leaf");
    let rsa_root = LocalCa::generate_with("Fuzz RSA Root", KeyAlgorithm::Rsa2048).expect("RSA CA");
    let rsa_leaf = rsa_root
        .issue_device_certificate(device, 3650, KeyAlgorithm::Rsa2048)
        .expect("RSA leaf");
    let chain_pem = format!("{}{}", leaf.cert_pem, inter.chain_pem());
    pems.push(("chain".into(), chain_pem.clone()));
    pems.push((
        "rsa-chain".into(),
        format!("{}{}", rsa_leaf.cert_pem, rsa_root.cert_pem()),
    ));
    for (name, text) in &pems {
        s.put(
            "x509_certificate",
            &format!("pem-{name}"),
            [&[0u8][..], text.as_bytes()].concat(),
        );
    }
    let der_of = |pem: &str| -> Vec<Vec<u8>> {
        dps_pki::pem::parse_certificates(pem)
            .expect("seed certificates parse")
            .iter()
            .map(|c| c.to_vec())
            .collect()
    };
    let leaf_der = der_of(&leaf.cert_pem).remove(0);
    s.put(
        "x509_certificate",
        "b64-leaf",
        [&[2u8][..], B64.encode(&leaf_der).as_bytes()].concat(),
    );
    for (name, pem) in [
        ("chain", chain_pem.as_str()),
        ("rsa", &format!("{}{}", rsa_leaf.cert_pem, rsa_root.cert_pem())),
    ] {
        let mut data = vec![1u8];
        for der in der_of(pem) {
            data.extend_from_slice(&(der.len() as u16).to_be_bytes());
            data.extend_from_slice(&der);
        }
        s.put("x509_certificate", &format!("der-{name}"), data);
    }

    // ---- certificate signing requests of every key type devices send
    for alg in KeyAlgorithm::ALL {
        let (_, csr) = dps_pki::csr::new_key_and_request(device, alg).expect("a request");
        s.put("certificate_request", alg.name(), csr);
    }

    // ---- revocation lists, as the service makes them (DER, and PEM text)
    let crl_ca = LocalCa::generate("Fuzz CRL CA").expect("a CA");
    let now = chrono::Utc::now();
    let crl = crl_ca
        .issue_crl(
            &[("0A1B".into(), now), ("7F".into(), now)],
            now,
            chrono::TimeDelta::days(7),
            1,
        )
        .expect("a CRL");
    s.put("revocation_list", "der", [&[1u8][..], &crl].concat());
    let pem = dps_pki::pem::to_pem("X509 CRL", &crl);
    s.put("revocation_list", "pem", [&[0u8][..], pem.as_bytes()].concat());

    // ---- TPM public areas (EK and SRK templates around a 2048-bit modulus)
    let modulus: Vec<u8> = (0..256u32).map(|i| (i * 151 + 7) as u8 | 0x80).collect();
    let ek = RsaPublic::endorsement_template(modulus.clone()).to_tpm2b();
    let srk = RsaPublic::storage_template(modulus).to_tpm2b();
    s.put("tpm_public", "ek", &ek);
    s.put("tpm_public", "srk", &srk);
    s.put("tpm_public", "short", &ek[..40]);

    // ---- JSON bodies
    for (i, body) in [
        "".to_string(),
        "null".into(),
        r#"{"registrationId":"fuzz-device"}"#.into(),
        r#"{"registrationId":"fuzz-device","payload":{"modelId":"dtmi:com:example:Thermostat;1","n":[1,2.5e3,-0.0,true,null]}}"#.into(),
        r#"{"registrationId":"other-device"}"#.into(),
        format!(
            r#"{{"registrationId":"fuzz-device","tpm":{{"endorsementKey":"{}","storageRootKey":"{}"}}}}"#,
            B64.encode(&ek),
            B64.encode(&srk)
        ),
        r#"{"registrationId":"fuzz-device","csr":"MIIBFTCBvAIBADAaMRgwFgYDVQQDDA9mdXp6LWRldmljZQ=="}"#.into(),
    ]
    .iter()
    .enumerate()
    {
        s.put("registration_body", &format!("{i}"), body);
    }
    let leaf_pem_json = serde_json::to_string(&leaf.cert_pem).expect("a string");
    let root_pem_json = serde_json::to_string(&root.cert_pem()).expect("a string");
    let service = [
        format!(r#"{{"registrationId":"dev-01","attestation":{{"type":"symmetricKey","symmetricKey":{{"primaryKey":"{KEY}","secondaryKey":""}}}},"deviceId":"dev-01","provisioningStatus":"enabled","allocationPolicy":"hashed","iotHubs":["hub.fuzz.test"],"reprovisionPolicy":{{"updateHubAssignment":true,"migrateDeviceData":true}},"initialTwin":{{"tags":{{"a":1}},"properties":{{"desired":{{"x":{{"y":2}}}}}}}},"capabilities":{{"iotEdge":false}}}}"#),
        format!(r#"{{"registrationId":"tpm-01","attestation":{{"type":"tpm","tpm":{{"endorsementKey":"{}","storageRootKey":"{}"}}}}}}"#, B64.encode(&ek), B64.encode(&srk)),
        format!(r#"{{"registrationId":"x509-01","attestation":{{"type":"x509","x509":{{"clientCertificates":{{"primary":{{"certificate":{leaf_pem_json}}}}}}}}}}}"#),
        format!(r#"{{"enrollmentGroupId":"grp-1","attestation":{{"type":"x509","x509":{{"signingCertificates":{{"primary":{{"certificate":{root_pem_json}}},"secondary":{{"certificate":"{}"}}}}}}}},"allocationPolicy":"geoLatency"}}"#, B64.encode(&leaf_der)),
        r#"{"enrollmentGroupId":"grp-2","attestation":{"type":"x509","x509":{"caReferences":{"primary":"root-1"}}}}"#.to_string(),
        r#"{"enrollmentGroupId":"grp-3","attestation":{"type":"symmetricKey"},"etag":"\"abc\"","provisioningStatus":"disabled","createdDateTimeUtc":"2024-01-02T03:04:05.1234567Z"}"#.to_string(),
        r#"{"mode":"create","enrollments":[{"registrationId":"b-1","attestation":{"type":"symmetricKey"}},{"registrationId":"b-2","attestation":{"type":"symmetricKey"}}]}"#.to_string(),
        r#"{"mode":"updateIfMatchETag","enrollments":[{"registrationId":"b-1","etag":"x","attestation":{"type":"symmetricKey"}}]}"#.to_string(),
        r#"{"mode":"delete","enrollmentGroups":[{"enrollmentGroupId":"g-1","attestation":{"type":"symmetricKey"}}]}"#.to_string(),
        r#"{"registrationId":"dev-02","attestation":{"type":"none"},"customAllocationDefinition":{"webhookUrl":"https://x","apiVersion":"2019-03-31"},"optionalDeviceInformation":{"k":"v"}}"#.to_string(),
    ];
    for (i, body) in service.iter().enumerate() {
        s.put("service_body", &format!("{i}"), body);
    }
    for (i, body) in [
        r#"{"temperature":21.5,"fw":{"version":"1.0","ok":true},"$version":3}"#,
        r#"{"deviceId":"fuzz-device","etag":"AAAAAAAAAAE=","tags":{"site":{"floor":3}},"properties":{"desired":{"interval":30,"cfg":{"a":null}}}}"#,
        r#"{"tags":{"a":null},"properties":{"desired":{"$metadata":{},"x":[1,{"y":"z"}]},"reported":{"r":1}}}"#,
        r#"{"deviceId":"dev-2","status":"disabled","authentication":{"type":"sas","symmetricKey":{"primaryKey":"ZnV6eg==","secondaryKey":"ZnV6eg=="}},"capabilities":{"iotEdge":true}}"#,
        r#"{"deviceId":"dev-3","authentication":{"type":"selfSigned","x509Thumbprint":{"primaryThumbprint":"0123456789ABCDEF0123456789ABCDEF01234567","secondaryThumbprint":null}}}"#,
        r#"{"deviceId":"fuzz-device","etag":"*","status":"enabled","authentication":{"type":"certificateAuthority"}}"#,
        "null",
    ]
    .iter()
    .enumerate()
    {
        s.put("hub_body", &format!("{i}"), body);
    }
    // Telemetry batches as the Node, C and C# HTTP transports write them, and headers.
    for (i, body) in [
        r#"[{"body": "AAEC/w==", "properties":{"iothub-app-a":"b"}},{"body": "cGxhaW4="}]"#,
        r#"[{"body":"{\"t\":1}","base64Encoded":false,"properties":{"iothub-app-k":"v"}}]"#,
        r#"[{"body":"aGk=","properties":{"iothub-messageid":"m","iothub-correlationid":"c","iothub-contenttype":"application/json","dt-subject":"c1","iothub-app-x":"y"}}]"#,
        r#"[{"body":"aGk=","base64Encoded":true,"properties":{"iothub-creation-time-utc":"2026-01-01T00:00:00Z"}}]"#,
        "iothub-messageid: m\niothub-app-color: red\ndt-subject: thermostat\niothub-expiry: 2026-01-01T00:00:00Z",
        r#"{"blobName":"reports/today.txt"}"#,
        r#"{"correlationId":"abc","isSuccess":true,"statusCode":201,"statusDescription":"OK"}"#,
    ]
    .iter()
    .enumerate()
    {
        s.put("telemetry_batch", &format!("{i}"), body);
    }
    // Blob endpoint inputs: block lists as Node, Python and C write them, a SAS query, ranges.
    let sas = dps_proto::blob_storage::sign_sas(
        KEY.as_bytes(),
        "hub",
        "fileupload",
        "dev/f.txt",
        "rw",
        chrono::Utc::now(),
    );
    for (i, body) in [
        r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?><BlockList><Latest>AAAA</Latest><Latest>AAAB</Latest></BlockList>"#.to_string(),
        "<?xml version='1.0' encoding='utf-8'?>\n<BlockList><Latest>MDA=</Latest></BlockList>".to_string(),
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\r\n<BlockList><Latest>ICAgICAw</Latest></BlockList>".to_string(),
        "<BlockList><Committed>AQ==</Committed><Uncommitted>Ag==</Uncommitted></BlockList>".to_string(),
        format!("comp=block&blockid=AAAA&{}", &sas[1..]),
        "bytes=0-33554431".to_string(),
        "dev 1/logs/today.txt".to_string(),
    ]
    .iter()
    .enumerate()
    {
        s.put("blob_request", &format!("{i}"), body);
    }
    println!("seeds written under {}", s.root.display());
}

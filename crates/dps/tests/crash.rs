//! Crash consistency end to end (decision 0009): `dps serve` is SIGKILLed in the middle of a
//! registration storm, at a different moment in each round, and restarted on the same data
//! directory. After every restart, every acknowledged registration (the device was told
//! `assigned`) has its record and its hub identity, no hub identity written by provisioning lacks
//! its record, and no record lacks its identity — while the hub devices provisioning did not leave
//! unfinished (an operator's own, one whose record was deleted) are left alone.
//!
//! Devices register over HTTPS with keys derived from one enrollment group, many at once
//! (`common::storm`).

mod common;

use std::collections::BTreeSet;

use common::storm::{check, create_group, storm, Storm};
use common::Server;
use dps_proto::sas::build_token;
use serde_json::Value;

const IP: &str = "127.0.12.1";
/// Devices per round.
const DEVICES: usize = 260;
/// The server is killed once this many devices of the round were acknowledged: early, halfway,
/// late in the storm. Counted in acknowledgements, not time, so each kill lands mid-storm on a
/// fast machine and a slow one alike.
const KILL_AFTER: [usize; 3] = [20, 120, 200];
/// Registered and deleted (through the service API) before the storms: Azure keeps its hub
/// device, so a hub identity without a record that recovery must not touch.
const FORGOTTEN: &str = "forgotten-device";
/// Created by an operator through the hub registry API: never has a record.
const OPERATOR_MADE: &str = "operator-made";
/// The identities recovery must leave alone.
const KEPT: &[&str] = &[FORGOTTEN, OPERATOR_MADE];

/// A hub registry call with the data directory's hub owner policy.
fn hub_put_device(rt: &tokio::runtime::Runtime, server: &Server, info: &Value, device_id: &str) {
    let cs = info["hubConnectionString"].as_str().unwrap();
    let part = |name: &str| {
        cs.split(';')
            .find_map(|p| p.strip_prefix(&format!("{name}=")))
            .unwrap()
            .to_string()
    };
    let (host, key_name, key) = (part("HostName"), part("SharedAccessKeyName"), part("SharedAccessKey"));
    let token = build_token(&host, &key, 4_000_000_000, Some(&key_name)).unwrap();
    let tls = dps_pki::tls::client_config(&server.ca()).unwrap();
    let http = reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .build()
        .unwrap();
    let status = rt.block_on(async {
        http.put(format!("https://{IP}/devices/{device_id}?api-version=2021-04-12"))
            .header("authorization", token)
            .json(&serde_json::json!({ "deviceId": device_id }))
            .send()
            .await
            .unwrap()
            .status()
    });
    assert!(status.is_success(), "creating {device_id} in the hub: {status}");
}

#[test]
fn sigkill_during_a_registration_storm_loses_nothing_and_orphans_nothing() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut server = Server::start(IP);
    create_group(&server);
    let info = server.info();
    let scope = info["idScope"].as_str().unwrap().to_string();

    // The identities recovery must leave alone.
    let first = storm(&rt, Storm::new(&server, &scope, IP), vec![FORGOTTEN.to_string()], None);
    assert_eq!(first.acknowledged, [FORGOTTEN]);
    server.ok(&["registration", "delete", "--registration-id", FORGOTTEN]);
    hub_put_device(&rt, &server, &info, OPERATOR_MADE);

    let mut acknowledged = BTreeSet::new();
    let mut interrupted = 0;
    for (round, kill_after) in KILL_AFTER.into_iter().enumerate() {
        let ids: Vec<String> = (0..DEVICES).map(|i| format!("storm-{round}-{i:04}")).collect();
        let seen = storm(
            &rt,
            Storm::new(&server, &scope, IP),
            ids,
            Some((&mut server, kill_after)),
        );
        interrupted += seen.not_acknowledged;
        acknowledged.extend(seen.acknowledged);
        server.restart();
        check(&server, IP, KEPT, &acknowledged, &format!("after kill {}", round + 1));
    }
    // Each kill cut registrations off mid-flight, and start-up had some to finish; otherwise this
    // test proved nothing.
    assert!(interrupted > 0, "no registration was in flight at any kill");
    let recovered = server
        .log()
        .matches("finished a registration interrupted by a crash")
        .count();
    eprintln!(
        "{} acknowledged, {interrupted} not acknowledged, {recovered} finished by start-up recovery",
        acknowledged.len()
    );
    assert!(recovered > 0, "no kill left a registration to recover");

    // The devices that never got their answer simply register again, and the server stays
    // consistent; the acknowledged ones are still there.
    let leftovers: Vec<String> = (0..KILL_AFTER.len())
        .flat_map(|round| (0..DEVICES).map(move |i| format!("storm-{round}-{i:04}")))
        .filter(|id| !acknowledged.contains(id))
        .collect();
    let last = storm(&rt, Storm::new(&server, &scope, IP), leftovers.clone(), None);
    assert_eq!(last.not_acknowledged, 0, "devices could not register after the crashes");
    assert_eq!(last.acknowledged.len(), leftovers.len());
    acknowledged.extend(leftovers);
    let registered = check(&server, IP, KEPT, &acknowledged, "after the leftovers registered");
    assert_eq!(registered.len(), KILL_AFTER.len() * DEVICES);
}

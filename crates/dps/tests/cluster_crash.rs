//! Several `dps serve` nodes on one PostgreSQL (issue 15 point 4, decision 0031): a node is
//! SIGKILLed in the middle of a registration storm. The registrations the dead node left
//! unfinished are finished by the survivor once they are old enough to be no live node's, so
//! that every acknowledged registration has its record and its hub identity, no identity lacks
//! its record and no record its identity; the devices that got no answer then register through
//! the survivor, which serves on.
//!
//! Needs `DPS_TEST_POSTGRES` (a database URL whose user may create databases), which
//! `scripts/test.sh` sets from its throwaway cluster.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::storm::{check, create_group, storm, Storm};
use common::Server;

const NODES: [&str; 2] = ["127.0.12.21", "127.0.12.22"];
/// Devices of the storm.
const DEVICES: usize = 300;
/// Storms (each killed) before giving up on catching a registration mid-way.
const STORMS: usize = 3;
/// The first node is killed once this many were acknowledged through it.
const KILL_AFTER: usize = 100;
/// How old a registration left unfinished must be before the survivor finishes it (seconds;
/// short here, so that the test need not wait a minute).
const INTERRUPTED_AGE: &str = "3";

#[test]
fn a_node_killed_in_a_registration_storm_loses_nothing_and_the_others_serve_on() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let url = rt.block_on(dps_store::postgres::testing::fresh_database());
    let args = [
        "--store",
        &url,
        "--hostname",
        NODES[0],
        "--hostname",
        NODES[1],
        "--interrupted-registration-secs",
        INTERRUPTED_AGE,
    ];
    let mut a = Server::start_with(NODES[0], &args);
    let b = Server::start_with(NODES[1], &args);
    create_group(&a);
    let info = b.info();
    let scope = info["idScope"].as_str().unwrap().to_string();
    let hub = info["hubHostName"].as_str().unwrap().to_string();
    assert_eq!(a.info()["idScope"], scope.as_str(), "one service");

    // What the dead node left unfinished (its intents: an identity perhaps written, its record
    // not yet) is finished by the survivor once it is old enough to be no live node's.
    let store = rt.block_on(dps_store::PostgresStore::connect(&url)).unwrap();
    let intents = || {
        use dps_core::Store;
        rt.block_on(store.list_registration_intents(None, 1000)).unwrap().len()
    };
    // What the kill left: the intents still there, and those the survivor may have finished
    // already (on a loaded machine the storm can outlast the age it waits for), read while
    // the survivor finished none.
    let finished_so_far = || {
        b.log()
            .matches("finished a registration interrupted by a crash")
            .count()
    };
    // A kill that fell between registrations (none past its intent, none committed) proves
    // nothing: the node is started again and another storm is killed, a few times at most.
    let mut ids: Vec<String> = Vec::new();
    let mut acknowledged: BTreeSet<String> = BTreeSet::new();
    let mut left = 0;
    for attempt in 0..STORMS {
        let batch: Vec<String> = (0..DEVICES).map(|i| format!("cluster-{attempt}-{i:04}")).collect();
        ids.extend(batch.iter().cloned());
        let seen = storm(&rt, Storm::new(&a, &scope, &hub), batch, Some((&mut a, KILL_AFTER)));
        acknowledged.extend(seen.acknowledged);
        assert!(seen.not_acknowledged > 0, "no registration was in flight at the kill");
        left = loop {
            let before = finished_so_far();
            let still = intents();
            if finished_so_far() == before {
                break before + still;
            }
        };
        if left > 0 {
            break;
        }
        eprintln!("storm {attempt}: the kill left no registration unfinished; killing another");
        a.restart();
    }
    assert!(
        left > 0,
        "the kill left no registration unfinished: this test proved nothing"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while intents() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the survivor did not finish the dead node's registrations within 60 s:\n{}",
            b.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let finished = finished_so_far();
    assert_eq!(finished, left, "each one finished: {}", b.log());
    check(&b, &hub, &[], &acknowledged, "after the kill");

    // The devices that got no answer try the other node, which serves on.
    let rest: Vec<String> = ids.iter().filter(|id| !acknowledged.contains(*id)).cloned().collect();
    let again = storm(&rt, Storm::new(&b, &scope, &hub), rest.clone(), None);
    assert_eq!(
        again.not_acknowledged, 0,
        "devices could not register through the surviving node"
    );
    acknowledged.extend(again.acknowledged);
    let registered = check(&b, &hub, &[], &acknowledged, "after the rest registered");
    assert_eq!(registered.len(), ids.len());
    eprintln!(
        "{} acknowledged before the kill, {finished} finished by the survivor, {} registered through it",
        ids.len() - rest.len(),
        rest.len()
    );
}

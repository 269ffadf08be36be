//! A registration storm: many devices of one symmetric-key enrollment group registering over
//! HTTPS at once (`PUT …/register`, then `GET …/operations/{id}` until the answer is final), a
//! server SIGKILLed in the middle of it, and the invariants checked afterwards: every
//! acknowledged registration has its record and its hub identity, no identity lacks its record,
//! no record lacks its identity (decision 0009; across nodes, decision 0031).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dps_proto::keys::derive_device_key;
use dps_proto::sas::build_token;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::{Notify, Semaphore};

use super::Server;

pub const GROUP: &str = "storm";
pub const GROUP_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const API: &str = "2021-06-01";
/// How many devices register at once.
const CONCURRENCY: usize = 48;

/// Creates the storm's enrollment group through `server`.
pub fn create_group(server: &Server) {
    server.ok(&[
        "enrollment-group",
        "create",
        "--group-id",
        GROUP,
        "--primary-key",
        GROUP_KEY,
    ]);
}

/// How a device's registration ended.
enum Outcome {
    /// Told `assigned`.
    Acknowledged,
    /// Anything else: connection lost to the kill, refused, failed.
    NotAcknowledged,
}

/// Devices registering through one node.
pub struct Storm {
    http: reqwest::Client,
    scope: String,
    /// The node's address.
    ip: String,
    /// The hub every device must be assigned to.
    hub: String,
}

impl Storm {
    /// Devices of ID scope `scope` registering through `server`, to be assigned to `hub`.
    pub fn new(server: &Server, scope: &str, hub: &str) -> Storm {
        let tls = dps_pki::tls::client_config(&server.ca()).unwrap();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        Storm {
            http,
            scope: scope.to_string(),
            ip: server.ip.clone(),
            hub: hub.to_string(),
        }
    }

    /// One device's registration: register, then poll at once until final (the record is
    /// committed before the server answers the register request, so there is nothing to wait for).
    async fn register(&self, id: &str) -> Outcome {
        let key = derive_device_key(GROUP_KEY, id).unwrap();
        let sr = format!("{}/registrations/{id}", self.scope);
        let token = build_token(&sr, &key, 4_000_000_000, Some("registration")).unwrap();
        let base = format!("https://{}/{sr}", self.ip);
        let mut request = self
            .http
            .put(format!("{base}/register?api-version={API}"))
            .json(&serde_json::json!({ "registrationId": id }));
        for _ in 0..20 {
            let reply = match request
                .header("authorization", &token)
                .header("content-type", "application/json")
                .send()
                .await
            {
                Ok(r) => r,
                Err(_) => return Outcome::NotAcknowledged,
            };
            let status = reply.status().as_u16();
            let Ok(body) = reply.json::<Value>().await else {
                return Outcome::NotAcknowledged;
            };
            match (status, body["status"].as_str()) {
                (200, Some("assigned")) => {
                    assert_eq!(body["registrationState"]["deviceId"], id, "{body}");
                    assert_eq!(body["registrationState"]["assignedHub"], self.hub.as_str(), "{body}");
                    return Outcome::Acknowledged;
                }
                (200 | 202, Some("assigning")) => {
                    let op = body["operationId"].as_str().unwrap();
                    request = self.http.get(format!("{base}/operations/{op}?api-version={API}"));
                }
                _ => return Outcome::NotAcknowledged,
            }
        }
        Outcome::NotAcknowledged
    }
}

/// What one storm round saw.
#[derive(Default)]
pub struct Round {
    pub acknowledged: Vec<String>,
    pub not_acknowledged: usize,
}

/// Registers `ids` through `storm`, CONCURRENCY at a time. With `kill`, SIGKILLs that server
/// once that many of them were acknowledged (or when all are done, if fewer ever are).
pub fn storm(
    rt: &tokio::runtime::Runtime,
    storm: Storm,
    ids: Vec<String>,
    kill: Option<(&mut Server, usize)>,
) -> Round {
    let client = Arc::new(storm);
    let round = Arc::new(Mutex::new(Round::default()));
    let acked = Arc::new(AtomicUsize::new(0));
    let reached = Arc::new(Notify::new());
    let kill_after = kill.as_ref().map(|(_, n)| *n);
    rt.block_on(async {
        let gate = Arc::new(Semaphore::new(CONCURRENCY));
        let mut tasks = tokio::task::JoinSet::new();
        for id in ids {
            let (client, round, acked, reached, gate) = (
                client.clone(),
                round.clone(),
                acked.clone(),
                reached.clone(),
                gate.clone(),
            );
            tasks.spawn(async move {
                let _permit = gate.acquire_owned().await.unwrap();
                match client.register(&id).await {
                    Outcome::Acknowledged => {
                        round.lock().acknowledged.push(id);
                        if Some(acked.fetch_add(1, Ordering::SeqCst) + 1) == kill_after {
                            reached.notify_one();
                        }
                    }
                    Outcome::NotAcknowledged => round.lock().not_acknowledged += 1,
                }
            });
        }
        if let Some((server, _)) = kill {
            tokio::select! {
                _ = reached.notified() => {}
                _ = async { while tasks.join_next().await.is_some() {} } => {}
            }
            server.kill9();
        }
        // After a kill the rest fail fast (connection refused or reset).
        while tasks.join_next().await.is_some() {}
    });
    Arc::try_unwrap(round).ok().unwrap().into_inner()
}

/// Checks the invariants on the running `server`, whose devices are assigned to `hub`: the
/// identities in `kept` (not provisioning's to finish) stay and have no record; every other
/// identity has its record and every record its identity; every `acknowledged` registration has
/// its record. Returns the registration ids that have records.
pub fn check(
    server: &Server,
    hub: &str,
    kept: &[&str],
    acknowledged: &BTreeSet<String>,
    when: &str,
) -> BTreeSet<String> {
    let records = server.json(&["registration", "list", "--group-id", GROUP]);
    let mut registered = BTreeSet::new();
    for r in records.as_array().unwrap() {
        let id = r["registrationId"].as_str().unwrap().to_string();
        assert_eq!(r["status"], "assigned", "{when}: {r}");
        assert_eq!(r["assignedHub"], hub, "{when}: {r}");
        assert_eq!(r["deviceId"], id.as_str(), "{when}: {r}");
        registered.insert(id);
    }
    let devices = server.json(&["hub", "device", "list", "--top", "1000"]);
    let devices = devices.as_array().unwrap();
    assert!(devices.len() < 1000, "{when}: the listing must not be truncated");
    let mut identities: BTreeSet<String> = devices
        .iter()
        .map(|d| d["deviceId"].as_str().unwrap().to_string())
        .collect();
    for kept in kept {
        assert!(identities.remove(*kept), "{when}: hub device '{kept}' was removed");
        assert!(!registered.contains(*kept), "{when}: '{kept}' got a record");
    }

    let lost: Vec<&String> = acknowledged.difference(&registered).collect();
    assert!(lost.is_empty(), "{when}: acknowledged registrations lost: {lost:?}");
    let orphans: Vec<&String> = identities.difference(&registered).collect();
    assert!(
        orphans.is_empty(),
        "{when}: {} hub identities without a registration record: {orphans:?}",
        orphans.len()
    );
    let hollow: Vec<&String> = registered.difference(&identities).collect();
    assert!(
        hollow.is_empty(),
        "{when}: {} registration records without a hub identity: {hollow:?}",
        hollow.len()
    );
    registered
}

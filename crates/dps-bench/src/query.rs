//! `dps bench query`: IoT Hub's query language over a large registry, through the server's own
//! `POST /devices/query`, as a backend's `Registry.createQuery` sends it.
//!
//! Prepare (untimed, kept for the next run): `--devices` twins `qb-0000000`, `qb-0000001`, …,
//! created through the bulk registry API, 100 per request, each with the tags `benchSite`
//! (`site-00000` …; about 100 devices a site) and `benchN` (its number). A registry that already
//! holds the last of them is not seeded again.
//!
//! Timed: each query kind `--warmup`-independent, `RUNS` times, each run fetching every page of
//! its answer: a selective tag condition (`tags.benchSite = '…'`, ~100 twins), a count over it,
//! ten device ids, and once a condition no index serves (`tags.benchN = …`, a scan of the whole
//! registry) for contrast. Latencies are reported, never asserted.

use std::sync::Arc;
use std::time::Instant;

use dps_client::RegistryClient;
use dps_proto::model::hub::ExportImportDevice;
use serde_json::{json, Map, Value};

use crate::error::BenchError;
use crate::report::{percentile, round3};

/// Devices per site: selective conditions match about this many twins.
const PER_SITE: usize = 100;
/// Timed runs of each indexed query kind.
const RUNS: usize = 50;
/// Bulk requests in flight while seeding.
const SEED_CONCURRENCY: usize = 8;

fn device_id(i: usize) -> String {
    format!("qb-{i:07}")
}

fn site(i: usize) -> String {
    format!("site-{:05}", i / PER_SITE)
}

/// Creates the twins the registry lacks; returns how many it created.
async fn seed(hub: &Arc<RegistryClient>, twins: usize) -> Result<usize, BenchError> {
    if hub.get_device(&device_id(twins - 1)).await.is_ok() && hub.get_device(&device_id(0)).await.is_ok() {
        return Ok(0);
    }
    let chunks: Vec<Vec<ExportImportDevice>> = (0..twins)
        .collect::<Vec<_>>()
        .chunks(100)
        .map(|c| {
            c.iter()
                .map(|&i| {
                    let mut tags = Map::new();
                    tags.insert("benchSite".into(), Value::String(site(i)));
                    tags.insert("benchN".into(), Value::from(i));
                    ExportImportDevice {
                        id: device_id(i),
                        import_mode: Some("createOrUpdate".into()),
                        tags: Some(tags),
                        ..Default::default()
                    }
                })
                .collect()
        })
        .collect();
    let created = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let queue = Arc::new(tokio::sync::Mutex::new(chunks.into_iter()));
    let mut workers = Vec::new();
    for _ in 0..SEED_CONCURRENCY {
        let (hub, queue, created) = (hub.clone(), queue.clone(), created.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let Some(chunk) = queue.lock().await.next() else {
                    return Ok::<(), BenchError>(());
                };
                let n = chunk.len();
                let result = hub
                    .bulk(&chunk)
                    .await
                    .map_err(|e| BenchError::server(format!("seeding twins: {e}")))?;
                if !result.is_successful {
                    return Err(BenchError::server(format!(
                        "seeding twins: {:?}",
                        result.errors.first()
                    )));
                }
                created.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    for w in workers {
        w.await
            .map_err(|e| BenchError::server(format!("seeding twins: {e}")))??;
    }
    Ok(created.load(std::sync::atomic::Ordering::Relaxed))
}

/// Runs `query` `runs` times (each fetching every page), with a fresh text per run; returns the
/// latency summary and the items of the last answer.
async fn time_query(
    hub: &RegistryClient,
    runs: usize,
    mut text: impl FnMut(usize) -> String,
) -> Result<(Value, usize), BenchError> {
    let mut micros = Vec::with_capacity(runs);
    let mut items = 0;
    for run in 0..runs {
        let q = text(run);
        let started = Instant::now();
        let answer = hub
            .query(&q, None)
            .await
            .map_err(|e| BenchError::server(format!("{q}: {e}")))?;
        micros.push(started.elapsed().as_micros() as u64);
        items = answer.len();
    }
    micros.sort_unstable();
    Ok((
        json!({
            "runs": runs,
            "items": items,
            "ms": {"p50": percentile(&micros, 50.0), "p90": percentile(&micros, 90.0),
                    "p99": percentile(&micros, 99.0), "max": percentile(&micros, 100.0)},
        }),
        items,
    ))
}

/// The query benchmark's report.
pub(crate) async fn run(hub: Arc<RegistryClient>, twins: usize) -> Result<Value, BenchError> {
    let started = Instant::now();
    let seeded = seed(&hub, twins).await?;
    let seed_secs = started.elapsed().as_secs_f64();
    let sites = twins.div_ceil(PER_SITE).max(1);
    // A spread of sites, the same every run.
    let pick = |run: usize| (run * 7919) % sites;
    let (selective, _) = time_query(&hub, RUNS, |r| {
        format!("SELECT * FROM devices WHERE tags.benchSite = 'site-{:05}'", pick(r))
    })
    .await?;
    let (count, _) = time_query(&hub, RUNS, |r| {
        format!(
            "SELECT COUNT() AS n FROM devices WHERE tags.benchSite = 'site-{:05}'",
            pick(r)
        )
    })
    .await?;
    let (ids, _) = time_query(&hub, RUNS, |r| {
        let list: Vec<String> = (0..10)
            .map(|k| format!("'{}'", device_id((r * 104_729 + k * 7) % twins)))
            .collect();
        format!("SELECT * FROM devices WHERE deviceId IN [{}]", list.join(", "))
    })
    .await?;
    let (scan, _) = time_query(&hub, 1, |r| {
        format!(
            "SELECT * FROM devices WHERE tags.benchN = {}",
            (r * 7919 + 4242) % twins
        )
    })
    .await?;
    Ok(json!({
        "mode": "query",
        "twins": twins,
        "seeded": seeded,
        "seedSeconds": round3(seed_secs),
        "seedRatePerSecond": if seeded > 0 { round3(seeded as f64 / seed_secs) } else { 0.0 },
        "queries": {
            "selectiveTag": selective,
            "countByTag": count,
            "tenDeviceIds": ids,
            "unindexedScan": scan,
        },
    }))
}

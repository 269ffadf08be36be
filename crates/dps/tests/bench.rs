//! `dps bench` smoke run: a few hundred devices through every mode, over both transports. It
//! checks correctness (every device assigned, the bench cleans up), never speed.

mod common;

use common::Server;

#[test]
fn bench_smoke_every_device_is_assigned_and_the_bench_cleans_up() {
    let s = Server::start("127.0.0.79");
    for (mode, transport, devices) in [
        ("tls", "mqtt", "200"),
        ("register", "mqtt", "300"),
        ("register", "https", "200"),
        ("cycle", "mqtt", "200"),
    ] {
        let r = s.json(&[
            "bench",
            mode,
            "--devices",
            devices,
            "--concurrency",
            "50",
            "--transport",
            transport,
        ]);
        assert_eq!(r["mode"], mode);
        assert_eq!(r["failed"], 0, "{mode}/{transport}: {r}");
        assert_eq!(r["succeeded"].as_u64().unwrap().to_string(), devices, "{r}");
        assert!(r["throughputPerSecond"].as_f64().unwrap() > 0.0);
        let l = &r["latencyMs"];
        assert!(
            l["p50"].as_f64().unwrap() <= l["p99"].as_f64().unwrap()
                && l["p99"].as_f64().unwrap() <= l["max"].as_f64().unwrap()
        );
    }
    let groups = s.json(&["enrollment-group", "list"]);
    assert_eq!(groups, serde_json::json!([]), "bench groups are deleted afterwards");
}

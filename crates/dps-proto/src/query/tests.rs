//! The documented examples of IoT Hub's query language (docs/query-language-facts.md §1), over
//! twins shaped as the registry API shows them, and bad queries.

use serde_json::{json, Value};

use super::*;

fn twins() -> Vec<Value> {
    vec![
        json!({"deviceId": "AZ3166Device", "status": "enabled", "connectionState": "Disconnected",
               "lastActivityTime": "2021-05-07T00:50:38.0543092Z", "capabilities": {"iotEdge": false},
               "tags": {"location": {"region": "US", "plant": "Redmond43"}},
               "properties": {"desired": {"$version": 1},
                              "reported": {"$version": 4, "connectivity": "wifi",
                                           "telemetryConfig": {"sendFrequencyInSecs": 60, "status": "Success"}}}}),
        json!({"deviceId": "dev-2", "status": "enabled", "connectionState": "Connected",
               "tags": {"location": {"region": "US"}},
               "properties": {"desired": {}, "reported": {"connectivity": "cellular",
                              "telemetryConfig": {"sendFrequencyInSecs": 30, "status": "Pending"}}}}),
        json!({"deviceId": "test-3", "status": "disabled", "connectionState": "Disconnected",
               "tags": {"location": {"region": "EU"}, "nothing": null},
               "properties": {"desired": {}, "reported": {"connectivity": "wired",
                              "telemetryConfig": {"sendFrequencyInSecs": 90, "status": "Success"}}}}),
        json!({"deviceId": "test-4", "status": "enabled", "connectionState": "Disconnected",
               "tags": {}, "properties": {"desired": {}, "reported": {}}}),
    ]
}

fn ids(q: &str) -> Vec<String> {
    let q = Query::parse(q, "devices").unwrap();
    twins()
        .iter()
        .filter(|t| q.matches(t))
        .map(|t| t["deviceId"].as_str().unwrap().to_string())
        .collect()
}

fn rows(q: &str) -> Vec<Value> {
    let q = Query::parse(q, "devices").unwrap();
    let mut agg = q.aggregator();
    for t in twins().iter().filter(|t| q.matches(t)) {
        agg.add(t);
    }
    agg.finish()
}

#[test]
fn the_documented_examples() {
    assert_eq!(ids("SELECT * FROM devices").len(), 4);
    assert_eq!(
        rows("SELECT COUNT() as totalNumberOfDevices FROM devices"),
        vec![json!({"totalNumberOfDevices": 4})]
    );
    assert_eq!(
        ids("SELECT * FROM devices WHERE tags.location.region = 'US'"),
        ["AZ3166Device", "dev-2"]
    );
    assert_eq!(
        ids("SELECT * FROM devices WHERE tags.location.region = 'US' AND properties.reported.telemetryConfig.sendFrequencyInSecs >= 60"),
        ["AZ3166Device"]
    );
    assert_eq!(
        ids("SELECT * FROM devices WHERE properties.reported.connectivity IN ['wired', 'wifi']"),
        ["AZ3166Device", "test-3"]
    );
    assert_eq!(
        ids("SELECT * FROM devices WHERE is_defined(properties.reported.connectivity)"),
        ["AZ3166Device", "dev-2", "test-3"]
    );
    let mut groups = rows(
        "SELECT properties.reported.telemetryConfig.status AS status, COUNT() AS numberOfDevices \
         FROM devices GROUP BY properties.reported.telemetryConfig.status",
    );
    groups.sort_by_key(|g| g.to_string());
    assert_eq!(
        groups,
        vec![
            json!({"numberOfDevices": 1}),
            json!({"numberOfDevices": 1, "status": "Pending"}),
            json!({"numberOfDevices": 2, "status": "Success"}),
        ]
    );
    let q = Query::parse(
        "SELECT DeviceId, LastActivityTime FROM devices WHERE status = 'enabled' AND connectionState = 'Disconnected'",
        "devices",
    )
    .unwrap();
    let projected: Vec<Value> = twins().iter().filter(|t| q.matches(t)).map(|t| q.project(t)).collect();
    assert_eq!(
        projected,
        vec![
            json!({"deviceId": "AZ3166Device", "lastActivityTime": "2021-05-07T00:50:38.0543092Z"}),
            json!({"deviceId": "test-4"}),
        ]
    );
    let q = Query::parse("Select * from devices.modules where properties.reported.status = 'scanning' and deviceId IN ['device1', 'device2']", "devices").unwrap();
    assert_eq!(q.from, "devices.modules");
}

#[test]
fn logic_is_three_valued_and_types_do_not_mix() {
    // An undefined property matches neither a comparison nor its negation.
    assert_eq!(
        ids("SELECT * FROM devices WHERE tags.location.region != 'US'"),
        ["test-3"]
    );
    assert_eq!(
        ids("SELECT * FROM devices WHERE NOT (tags.location.region = 'US')"),
        ["test-3"]
    );
    // `false AND undefined` is false, `true OR undefined` is true.
    assert_eq!(
        ids("SELECT * FROM devices WHERE NOT (status = 'disabled' AND tags.x = 1)"),
        ["AZ3166Device", "dev-2", "test-4"]
    );
    assert_eq!(
        ids("SELECT * FROM devices WHERE status = 'disabled' OR tags.x = 1"),
        ["test-3"]
    );
    // A string is not a number; objects are not compared.
    assert!(
        ids("SELECT * FROM devices WHERE properties.reported.telemetryConfig.sendFrequencyInSecs = '60'").is_empty()
    );
    assert!(ids("SELECT * FROM devices WHERE tags.location = tags.location").is_empty());
    // IS_DEFINED counts a null.
    assert_eq!(ids("SELECT * FROM devices WHERE IS_DEFINED(tags.nothing)"), ["test-3"]);
    assert_eq!(ids("SELECT * FROM devices WHERE tags.nothing = null"), ["test-3"]);
    // Only `true` passes: a bare string or number is not a condition.
    assert!(ids("SELECT * FROM devices WHERE 'yes'").is_empty());
    assert_eq!(
        ids("SELECT * FROM devices WHERE capabilities.iotEdge = false"),
        ["AZ3166Device"]
    );
    assert_eq!(
        ids("SELECT * FROM devices WHERE properties.reported.telemetryConfig.sendFrequencyInSecs NIN [30, 60]"),
        ["test-3"]
    );
    assert_eq!(
        ids("SELECT * FROM devices WHERE properties.reported.telemetryConfig.sendFrequencyInSecs * 2 > 0x78"),
        ["test-3"]
    );
}

#[test]
fn functions_and_spellings() {
    assert_eq!(
        ids("SELECT * FROM devices WHERE STARTSWITH(deviceId, 'test')"),
        ["test-3", "test-4"]
    );
    assert_eq!(
        ids("select * from devices where starts_with(DEVICEID, \"dev\")"),
        ["dev-2"]
    );
    assert_eq!(ids("SELECT * FROM devices WHERE ENDSWITH(deviceId, '-4')"), ["test-4"]);
    assert_eq!(
        ids("SELECT * FROM devices WHERE LOWER(deviceId) = 'az3166device'"),
        ["AZ3166Device"]
    );
    assert_eq!(
        ids("SELECT * FROM devices WHERE tags['location'].region = 'EU'"),
        ["test-3"]
    );
    assert_eq!(
        ids("SELECT * FROM devices WHERE deviceId = 'it\\'s'"),
        Vec::<String>::new()
    );
}

#[test]
fn pushdown_hints() {
    let q = Query::parse(
        "SELECT * FROM devices WHERE tags.a = 1 AND deviceId IN ['x', 'y'] AND STARTSWITH(moduleId, 'm')",
        "devices",
    )
    .unwrap();
    assert_eq!(q.pinned_values("DeviceId"), Some(vec![json!("x"), json!("y")]));
    assert_eq!(q.required_prefix("moduleId").as_deref(), Some("m"));
    let q = Query::parse("SELECT * FROM devices WHERE deviceId = 'x' OR tags.a = 1", "devices").unwrap();
    assert_eq!(q.pinned_values("deviceId"), None, "an OR does not pin");
    let q = Query::parse(
        "SELECT * FROM devices WHERE status = 'enabled' AND Tags.location.site IN ['a', 'b']",
        "devices",
    )
    .unwrap();
    assert_eq!(
        q.pinned_under("tags"),
        Some((
            vec!["location".to_string(), "site".to_string()],
            vec![json!("a"), json!("b")]
        ))
    );
    assert_eq!(q.pinned_under("properties"), None);
}

#[test]
fn top_aggregates_and_defaults() {
    let q = Query::parse("SELECT TOP 2 * FROM devices", "devices").unwrap();
    assert_eq!(q.top, Some(2));
    assert!(!q.is_aggregate());
    assert_eq!(Query::parse("", "enrollments").unwrap().from, "enrollments");
    assert_eq!(Query::parse("*", "enrollments").unwrap().select, Select::All);
    assert_eq!(
        rows(
            "SELECT SUM(properties.reported.telemetryConfig.sendFrequencyInSecs) AS s, MAX(deviceId) AS m, \
              AVG(properties.reported.telemetryConfig.sendFrequencyInSecs) AS a FROM devices"
        ),
        vec![json!({"s": 180, "m": "test-4", "a": 60})]
    );
    assert_eq!(
        rows("SELECT COUNT() AS n FROM devices WHERE status = 'none'"),
        vec![json!({"n": 0})]
    );
}

#[test]
fn bad_queries_say_where() {
    let err = |q: &str| Query::parse(q, "devices").unwrap_err();
    let e = err("SELECT * FORM devices");
    assert_eq!(e.position, 9);
    assert_eq!(e.message, "expected FROM, found 'FORM'");
    assert_eq!(
        e.to_string(),
        "the query is invalid at character 9: expected FROM, found 'FORM'"
    );
    assert_eq!(
        err("SELECT * FROM devices WHERE").message,
        "expected a property path, a constant, a function or '(', found the end of the query"
    );
    assert_eq!(err("SELECT * FROM devices WHERE tags.a = 'x").position, 37);
    assert!(err("SELECT * FROM devices WHERE tags.a IN ('x')")
        .message
        .contains("'['"));
    assert!(err("SELECT * FROM devices WHERE FOO(deviceId)")
        .message
        .contains("unknown function 'FOO'"));
    assert!(err("SELECT * FROM devices WHERE STARTSWITH(deviceId)")
        .message
        .contains("takes 2"));
    assert!(err("SELECT deviceId, COUNT() FROM devices")
        .message
        .contains("GROUP BY"));
    assert!(err("SELECT * FROM devices GROUP BY status")
        .message
        .contains("GROUP BY needs"));
    assert!(err("SELECT * FROM devices WHERE a = 1 extra")
        .message
        .contains("end of the query"));
    assert!(err("SELECT * FROM devices WHERE a # 1")
        .message
        .contains("unexpected character '#'"));
    assert!(err(&format!(
        "SELECT * FROM devices WHERE {}1{}",
        "(".repeat(100),
        ")".repeat(100)
    ))
    .message
    .contains("nested"));
    assert!(err(&format!("SELECT * FROM devices WHERE {}a", "NOT ".repeat(100)))
        .message
        .contains("nested"));
    assert!(err(&"x".repeat(MAX_QUERY_CHARS + 1)).message.contains("8192"));
}

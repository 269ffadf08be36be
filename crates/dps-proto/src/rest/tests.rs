//! Format and parse, tested against each other.

use http::Method;

use super::*;

/// Ids that need encoding: path and query delimiters, `%`, spaces, `+`, non-ASCII, and ids that
/// spell a literal segment.
const IDS: &[&str] = &[
    "dev-1",
    "a/b",
    "a%2Fb",
    "100%",
    "x?y=1&z#f",
    "with space",
    "a+b",
    "my:dev.1_~",
    "é中",
    "query",
    "QUERY",
    "register",
    "$iothub",
    "enrollments",
];

/// One of every route, with `id` wherever the route takes one. ID scopes get a prefix: a scope
/// that spells a collection (`enrollments/registrations/x/register`) is that collection's path,
/// and real scopes (`0ne…`) never do.
fn every_route(id: &str) -> Vec<Route> {
    use Route::*;
    let s = || id.to_string();
    let scope = format!("0ne-{id}");
    vec![
        Register {
            scope: "0ne00ABC".into(),
            registration_id: s(),
        },
        OperationStatus {
            scope: scope.clone(),
            registration_id: s(),
            operation_id: s(),
        },
        RegistrationStatus {
            scope,
            registration_id: s(),
        },
        GetEnrollment(s()),
        PutEnrollment(s()),
        DeleteEnrollment(s()),
        EnrollmentAttestation(s()),
        QueryEnrollments,
        BulkEnrollments,
        GetGroup(s()),
        PutGroup(s()),
        DeleteGroup(s()),
        GroupAttestation(s()),
        QueryGroups,
        BulkGroups,
        GetRegistration(s()),
        DeleteRegistration(s()),
        QueryRegistrations(s()),
        ReprovisionRegistration(s()),
        ListCertificates,
        GetCertificate(s()),
        PutCertificate(s()),
        DeleteCertificate(s()),
        GenerateVerificationCode(s()),
        VerifyCertificate(s()),
        ListCredentialPolicies,
        GetCredentialPolicy(s()),
        PutCredentialPolicy(s()),
        DeleteCredentialPolicy(s()),
        ListRevocations,
        AddRevocation,
        GetRevocation(s()),
        DeleteRevocation(s()),
        ImportCrl,
        GetPolicyCrl(s()),
        ListLinkedHubs,
        GetLinkedHub(s()),
        PutLinkedHub(s()),
        DeleteLinkedHub(s()),
        ListPolicies(PolicyOwner::Service),
        GetPolicy(PolicyOwner::Service, s()),
        PutPolicy(PolicyOwner::Hub, s()),
        DeletePolicy(PolicyOwner::Hub, s()),
        RegeneratePolicyKey(PolicyOwner::Service, s()),
        ListPolicies(PolicyOwner::Hub),
        QueryAudit,
        SendC2d(s()),
        ListDevices,
        QueryDevices,
        BulkDevices,
        GetDevice(s()),
        PutDevice(s()),
        DeleteDevice(s()),
        GetTwin(s()),
        ReplaceTwin(s()),
        UpdateTwin(s()),
        InvokeMethod(s()),
        ListModules(s()),
        GetModule(s(), s()),
        PutModule(s(), s()),
        DeleteModule(s(), s()),
        GetModuleTwin(s(), s()),
        ReplaceModuleTwin(s(), s()),
        UpdateModuleTwin(s(), s()),
        InvokeModuleMethod(s(), s()),
        PutJob(s()),
        GetJob(s()),
        CancelJob(s()),
        QueryJobs,
        CreateImportExportJob,
        ListImportExportJobs,
        GetImportExportJob(s()),
        CancelImportExportJob(s()),
        MonitorEvents,
        PurgeC2d(s()),
        ReceiveFeedback,
        CompleteFeedback(s()),
        AbandonFeedback(s()),
        DeviceStatistics,
        ServiceStatistics,
        SendDeviceEvent(s()),
        ReceiveC2d(s()),
        CompleteC2d {
            device_id: s(),
            lock_token: s(),
        },
        AbandonC2d {
            device_id: s(),
            lock_token: s(),
        },
        CreateFileUpload(s()),
        CompleteFileUpload {
            device_id: s(),
            correlation_id: None,
        },
        CompleteFileUpload {
            device_id: s(),
            correlation_id: Some(s()),
        },
        ListFiles,
        ListConsumerGroups,
        GetConsumerGroup(s()),
        PutConsumerGroup(s()),
        DeleteConsumerGroup(s()),
        MqttWebSocket,
    ]
}

#[test]
fn every_route_formats_to_a_path_that_parses_back() {
    for id in IDS {
        for r in every_route(id) {
            if matches!(&r, Route::GetJob(id) if id.eq_ignore_ascii_case("query")) {
                // `GET /jobs/v2/query` lists jobs, as in IoT Hub: a job called `query` is read
                // through the list.
                continue;
            }
            let path = r.path();
            assert!(path.starts_with('/'), "{path}");
            assert_eq!(Route::parse(&r.method(), &path), Ok(r.clone()), "{path}");
            // An id never opens a segment, a query or a fragment.
            let segments_of_route = segments(&path).unwrap();
            assert_eq!(segments_of_route.len(), path.matches('/').count(), "{path}");
            assert!(!path.contains(['?', '#', ' ']), "{path}");
            // The query is the API's client version, then the extras.
            let q = QueryParams::from_pairs([("top", id.to_string()), ("deviceId", id.to_string())]);
            let full = r.path_and_query(&q);
            let (p, query) = full.split_once('?').unwrap();
            assert_eq!(p, path);
            let parsed = QueryParams::parse(Some(query));
            assert_eq!(parsed.get(API_VERSION), Some(r.api().client_version()));
            assert!(r.api().supported().contains(&r.api().client_version()));
            assert_eq!(parsed.get("top"), Some(*id));
            assert_eq!(parsed.get("deviceid"), Some(*id));
        }
    }
}

#[test]
fn paths_are_what_the_sdks_send() {
    assert_eq!(
        Route::Register {
            scope: "0ne00ABC".into(),
            registration_id: "my:dev 1".into()
        }
        .path_and_query(&QueryParams::default()),
        "/0ne00ABC/registrations/my%3Adev%201/register?api-version=2021-06-01"
    );
    assert_eq!(
        Route::GenerateVerificationCode("root".into()).path(),
        "/certificates/root/generateVerificationCode"
    );
    assert_eq!(Route::PutGroup("g/1".into()).path(), "/enrollmentGroups/g%2F1");
    assert_eq!(
        Route::QueryRegistrations("g".into()).path_and_query(&QueryParams::default()),
        "/registrations/g/query?api-version=2021-10-01"
    );
    assert_eq!(
        Route::ListDevices.path_and_query(&QueryParams::from_pairs([("top", "5")])),
        "/devices?api-version=2021-04-12&top=5"
    );
    assert_eq!(Route::UpdateTwin("d".into()).method(), Method::PATCH);
}

#[test]
fn query_params_parse_and_round_trip() {
    let q = QueryParams::parse(Some("api-version=2021-10-01&top=5&deviceId=a%3Ab&flag&x=a+b&y=%2B"));
    assert_eq!(q.get("API-VERSION"), Some("2021-10-01"));
    assert_eq!(q.get("top"), Some("5"));
    assert_eq!(q.get("deviceid"), Some("a:b"));
    assert_eq!(q.get("flag"), Some(""));
    assert_eq!(q.get("x"), Some("a+b"));
    assert_eq!(q.get("y"), Some("+"));
    assert_eq!(q.get("missing"), None);
    assert_eq!(QueryParams::parse(None).get("a"), None);
    assert_eq!(QueryParams::parse(Some(&q.to_string())), q);
    let odd = QueryParams::from_pairs(IDS.iter().map(|i| (*i, *i)).chain([("", ""), ("=", "&")]));
    assert_eq!(QueryParams::parse(Some(&odd.to_string())), odd);
    assert_eq!(odd.all("a/b").count(), 1);
}

#[test]
fn percent_decoding() {
    assert_eq!(decode_segment("a%3Ab%3a").as_deref(), Some("a:b:"));
    assert_eq!(decode_segment("a+b").as_deref(), Some("a+b"));
    assert_eq!(decode_segment("100%").as_deref(), Some("100%"));
    assert_eq!(decode_segment("%4").as_deref(), Some("%4"));
    assert_eq!(decode_segment("%zz%41").as_deref(), Some("%zzA"));
    assert_eq!(decode_segment("%C3%A9").as_deref(), Some("é"));
    assert_eq!(decode_segment("%C3"), None);
    for id in IDS {
        assert_eq!(decode_segment(&encode_segment(id)).as_deref(), Some(*id));
    }
    // Encoded slash stays inside the segment.
    assert_eq!(
        segments("/enrollments/a%2Fb"),
        Some(vec!["enrollments".to_string(), "a/b".to_string()])
    );
    assert_eq!(
        Route::parse(&Method::GET, "/enrollments/a%2Fb"),
        Ok(Route::GetEnrollment("a/b".into()))
    );
    // Node's encodeUriComponentStrict escapes !'()*.
    assert_eq!(
        Route::parse(&Method::POST, "/enrollments/a%21%28%29%2A/attestationmechanism"),
        Ok(Route::EnrollmentAttestation("a!()*".into()))
    );
}

#[test]
fn file_upload_paths_as_the_sdks_send_them() {
    // Node and Python keep the blob name's `/`; C and C# send it as `%2F`; C's trailing slashes.
    for path in [
        "/fileupload/dev%201/a/b.txt",
        "/fileupload/dev%201%2Fa%2Fb.txt",
        "/fileupload/dev%201/a%2Fb.txt",
    ] {
        let blob = Route::PutBlob {
            container: "fileupload".into(),
            blob: "dev 1/a/b.txt".into(),
        };
        assert_eq!(Route::parse(&Method::PUT, path), Ok(blob.clone()), "{path}");
        assert_eq!(Route::parse(&Method::PUT, &blob.path()), Ok(blob));
        assert!(matches!(Route::parse(&Method::HEAD, path), Ok(Route::GetBlob { .. })));
    }
    assert_eq!(
        Route::parse(&Method::POST, "/devices/d1/files/"),
        Ok(Route::CreateFileUpload("d1".into()))
    );
    assert_eq!(
        Route::parse(&Method::POST, "/devices/d1/files/notifications/"),
        Ok(Route::CompleteFileUpload {
            device_id: "d1".into(),
            correlation_id: None
        })
    );
    assert_eq!(
        Route::parse(&Method::POST, "/devices/d1/files/notifications/abc%3D%3D"),
        Ok(Route::CompleteFileUpload {
            device_id: "d1".into(),
            correlation_id: Some("abc==".into())
        })
    );
    assert_eq!(
        Route::parse(&Method::GET, "/files/dev%201/a%2Fb.txt"),
        Ok(Route::GetFile("dev 1/a/b.txt".into()))
    );
    assert_eq!(Route::parse(&Method::GET, "/files"), Ok(Route::ListFiles));
    // The container alone is no blob; another first segment is no container.
    assert_eq!(Route::parse(&Method::PUT, "/fileupload"), Err(NoRoute::NotFound));
    assert_eq!(Route::parse(&Method::PUT, "/FileUpload/d/x"), Err(NoRoute::NotFound));
    assert!(matches!(
        Route::parse(&Method::DELETE, "/fileupload/d/x"),
        Err(NoRoute::MethodNotAllowed(_))
    ));
}

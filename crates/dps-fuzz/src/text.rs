//! Text credentials and identifiers: SAS tokens, connection strings, registration ids, REST
//! paths and query strings.

use dps_proto::connection_string::ConnectionString;
use dps_proto::rest::{self, QueryParams, Route};
use dps_proto::sas::{self, SasToken};
use dps_proto::{api_version, registration_id as rid};
use dps_server::http::websocket;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Uri};

use crate::support::{now_unix, KEY};

/// SAS tokens (MQTT password, HTTP `Authorization`), parsed and checked as the engine and the
/// hub do. A parsed token rebuilt from its fields parses to the same token, and a token signed
/// for its audience verifies.
pub fn sas_token(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(token) = SasToken::parse(text) else {
        return;
    };
    let audience = token.audience();
    let _ = token.check_expiry(now_unix());
    let _ = token.check_audience_eq("0ne00FUZZ01/registrations/fuzz-device");
    let _ = token.check_audience_prefix("hub.fuzz.test/devices/fuzz-device");
    assert!(token.verify_signature(["not base64!"]).is_err());
    let _ = token.verify_signature([KEY]);
    let _ = token.verify_signature_raw(b"raw key");

    // The same fields, written canonically, are the same token (the signed fields kept raw).
    let sig = sas::encode_component(&base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        &token.signature,
    ));
    let mut again = format!(
        "SharedAccessSignature sr={}&se={}&sig={sig}",
        token.sr_raw, token.se_raw
    );
    if let Some(skn) = &token.key_name {
        again.push_str("&skn=");
        again.push_str(&sas::encode_component(skn));
    }
    assert_eq!(SasToken::parse(&again).as_ref(), Ok(&token), "{again}");

    // A token we sign for this audience verifies and names it.
    let built = sas::build_token(&audience, KEY, token.expiry, token.key_name.as_deref()).expect("KEY is base64");
    let signed = SasToken::parse(&built).unwrap_or_else(|e| panic!("{built}: {e}"));
    assert_eq!(signed.verify_signature([KEY]), Ok(0), "{built}");
    assert_eq!(signed.check_audience_eq(&audience), Ok(()), "{built}");
    assert_eq!(signed.key_name, token.key_name, "{built}");
}

/// Connection strings (`dps` CLI and device client input): parse → format → parse is the same.
pub fn connection_string(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cs) = ConnectionString::parse(text) else {
        return;
    };
    assert!(!cs.host_name.is_empty());
    let again = cs.to_string();
    assert_eq!(ConnectionString::parse(&again).as_ref(), Ok(&cs), "{again}");
}

/// Registration ids and enrollment-group ids: a valid id is 1–128 characters of
/// `[A-Za-z0-9-._:]`, its storage key is valid too, and it survives percent-encoding into a URL.
pub fn registration_id(data: &[u8]) {
    let Ok(id) = std::str::from_utf8(data) else {
        return;
    };
    let key = rid::key(id);
    assert_eq!(rid::key(&key), key, "the key is idempotent");
    if rid::validate(id).is_ok() {
        assert!((1..=128).contains(&id.len()), "valid ids are 1-128 ASCII characters");
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b)));
        assert_eq!(rid::validate(&key), Ok(()), "the key of a valid id is valid");
        let get = Route::GetEnrollment(id.to_string());
        let path = get.path();
        assert_eq!(Route::parse(&Method::GET, &path), Ok(get), "{path}");
    }
}

const METHODS: [Method; 8] = [
    Method::GET,
    Method::PUT,
    Method::POST,
    Method::DELETE,
    Method::PATCH,
    Method::HEAD,
    Method::OPTIONS,
    Method::TRACE,
];

/// The header block after the request target: `name: value` lines, the ones hyper would accept.
fn headers(block: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in block.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            map.append(n, v);
        }
    }
    map
}

/// REST requests: the first byte picks the method, then comes the request target as hyper hands
/// it over (parsed by `http::Uri`, as hyper does), then optionally a newline and header lines.
/// The dispatcher and the query parser must not panic, re-encoding the decoded path segments must
/// route the same, a route formats to a path that parses back to it (the clients' side of the
/// grammar), a query formats to one that parses back to it, and the WebSocket upgrade check
/// (`/$iothub/websocket`) judges the headers.
pub fn rest_path(data: &[u8]) {
    let Some((m, request)) = data.split_first() else {
        return;
    };
    let (target, header_block) = match request.iter().position(|b| *b == b'\n') {
        Some(i) => (&request[..i], &request[i + 1..]),
        None => (request, &[][..]),
    };
    let headers = headers(header_block);
    if let Ok(accepted) = websocket::check_handshake(&headers) {
        assert_eq!(accepted.accept().len(), 28, "Sec-WebSocket-Accept is base64 of a SHA-1");
        // The subprotocol echoed is the one tunnelled: `mqtt` for MQTT, `AMQPWSB10` for AMQP.
        let expected: &[u8] = match accepted.tunnel() {
            websocket::Tunnel::Mqtt => b"mqtt",
            websocket::Tunnel::Amqp => b"AMQPWSB10",
        };
        assert!(accepted.protocol().as_bytes().eq_ignore_ascii_case(expected));
    }
    let method = &METHODS[usize::from(*m) % METHODS.len()];
    let Ok(uri) = Uri::try_from(target) else {
        // hyper answers 400 before routing; the dispatcher still must survive any &str.
        if let Ok(s) = std::str::from_utf8(target) {
            let _ = Route::parse(method, s);
        }
        return;
    };
    let path = uri.path();
    // The Host check, with the server's own names: accepted only for one of them, and the SAS
    // audience a route needs is built from those names, never from the header.
    let names = ["dps.example.test", "127.0.0.1", "::1"];
    let host = headers.get(http::header::HOST).and_then(|v| v.to_str().ok());
    if dps_server::http::host::check_host(host, uri.authority().map(|a| a.as_str()), names, 443).is_ok() {
        let h = host.map(str::trim).unwrap_or_default().to_ascii_lowercase();
        let audiences = dps_server::http::host::audience_hosts(names, 443);
        assert!(
            audiences
                .iter()
                .any(|a| h.trim_end_matches('.') == a || h.starts_with(a.as_str())),
            "accepted Host {h:?} names none of {audiences:?}"
        );
    }
    let routed = Route::parse(method, path);
    if let Ok(r) = &routed {
        let _ = r.api();
        let audience = r.audience_path();
        assert!(audience.starts_with('/'), "{audience}");
        assert_eq!(&r.method(), method, "{r:?}");
        let formatted = r.path();
        assert_eq!(
            Route::parse(method, &formatted).as_ref(),
            Ok(r),
            "{path} vs {formatted}"
        );
    }
    if let Some(segs) = rest::segments(path) {
        let again = format!(
            "/{}/",
            segs.iter()
                .map(|s| dps_proto::sas::encode_component(s))
                .collect::<Vec<_>>()
                .join("/")
        );
        assert_eq!(rest::segments(&again).as_ref(), Some(&segs), "{again}");
        assert_eq!(Route::parse(method, &again), routed, "{path} vs {again}");
    }
    let query = QueryParams::parse(uri.query());
    assert_eq!(QueryParams::parse(Some(&query.to_string())), query, "{query}");
    let given = query.get(rest::API_VERSION);
    for supported in [api_version::DEVICE, api_version::SERVICE, api_version::HUB] {
        if api_version::check(given, supported).is_ok() {
            assert!(given.is_some_and(|g| supported.iter().any(|s| s.eq_ignore_ascii_case(g.trim()))));
        }
    }
    let _ = rest::decode_segment(uri.query().unwrap_or_default());
}

/// Event Hubs consumers' selector filters and partition addresses (what a consumer attaches
/// with): parsing never panics, a parsed comparison is the one the text wrote, and a parsed
/// address has no empty or slash-holding part.
pub fn event_selector(data: &[u8]) {
    use dps_proto::event_hubs::{EventPosition, PartitionAddress};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match EventPosition::parse_selector(text) {
        Ok(EventPosition::Latest) => assert!(text.to_ascii_lowercase().contains("@latest")),
        Ok(
            EventPosition::Offset { inclusive, .. }
            | EventPosition::SequenceNumber { inclusive, .. }
            | EventPosition::EnqueuedTime { inclusive, .. },
        ) => assert_eq!(inclusive, text.contains(">="), "{text:?}"),
        Err(why) => assert!(!why.is_empty()),
    }
    if let Some(a) = PartitionAddress::parse(text) {
        for part in [&a.entity, &a.consumer_group, &a.partition] {
            assert!(!part.is_empty() && !part.contains('/'), "{a:?}");
        }
    }
}

/// The file upload blob endpoint's parsers: a Put Block List body (every id it yields is 1 to 64
/// bytes, at most 50,000 of them; a refusal has a Storage code), the same bytes as a SAS query
/// checked against the endpoint's key (never a panic; a forged SAS is never accepted — no input
/// here carries the right signature), as a read range (always inside the blob), and as a blob
/// name (a valid one never leaves its container); and as an external storage account's List
/// Blobs answer (never more blobs than asked for).
pub fn blob_request(data: &[u8]) {
    // The bytes as an import or export job's container URI (`dps_server::http::import_export`):
    // accepted only on the server's own host, naming a valid container.
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(container) = dps_server::http::import_export::container_of(text, &["hub.fuzz.test".to_string()]) {
            assert!(
                (3..=63).contains(&container.len())
                    && container
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{container}"
            );
        }
    }
    use dps_proto::blob_storage as storage;
    match storage::parse_block_list(data) {
        Ok(ids) => {
            assert!(ids.len() <= storage::MAX_BLOCKS, "too many blocks accepted");
            for id in &ids {
                assert!(
                    (1..=storage::MAX_BLOCK_ID).contains(&id.len()),
                    "a block id of {} bytes",
                    id.len()
                );
            }
        }
        Err(e) => assert!(!e.code().is_empty()),
    }
    // The bytes as an external storage account's List Blobs answer (`dps hub file list`).
    if let Ok(page) = storage::parse_blob_list(data, 3) {
        assert!(page.blobs.len() <= 3, "more blobs kept than asked for");
        assert!(page.next_marker.as_deref() != Some(""), "an empty marker is no marker");
    }
    let text = String::from_utf8_lossy(data);
    let query = QueryParams::parse(Some(&text));
    let key = KEY.as_bytes();
    let now = crate::support::now();
    assert!(
        storage::verify_sas(key, "hub", "fileupload", "dev/f.txt", &query, now, 'w').is_err(),
        "a SAS nobody signed was accepted: {text:?}"
    );
    if let Some((start, len)) = storage::parse_range(&text, 1000) {
        assert!(
            len >= 1 && start + len <= 1000,
            "range {start}+{len} outside a 1000-byte blob"
        );
    }
    if storage::valid_blob_name(&text) {
        assert!(
            text.split('/').all(|s| !s.is_empty() && s != "." && s != "..") && !text.contains('\\'),
            "{text:?} is a valid blob name"
        );
    }
}

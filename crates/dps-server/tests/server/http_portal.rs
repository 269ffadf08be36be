//! The web portal's HTTP side against the in-process router: the page and the redirect of
//! browsers; sign-in by a policy's name and key (any scope holding it), refused with a message,
//! limited when failing fast; the session cookie's attributes; requests forwarded to the
//! service and hub APIs as the session's policy, whose rights the APIs enforce; writes without
//! the CSRF token or from another origin refused; a tampered cookie, a deleted policy or a
//! renewed key ending the session; one-time links working once. (The browser side is
//! tests/interop/test_portal.py.)

use crate::common::router::*;
use axum::body::Body;
use http::{Method, StatusCode};
use serde_json::{json, Value};

/// Signs in; returns the cookie (`dps_portal=…`) and the session's JSON.
async fn sign_in(f: &Fixture, name: &str, key: &str) -> (String, Value) {
    let r = f
        .call(
            Method::POST,
            "/portal/api/sign-in",
            &[("content-type", "application/json")],
            Body::from(json!({ "policyName": name, "key": key }).to_string()),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    let set = r.header("set-cookie").unwrap().to_string();
    for attribute in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/portal", "Max-Age=28800"] {
        assert!(set.contains(attribute), "{set}");
    }
    (set.split(';').next().unwrap().to_string(), r.json())
}

#[tokio::test]
async fn browsers_get_the_page_and_others_the_api() {
    let f = fixture().await;
    let r = f
        .call(Method::GET, "/", &[("accept", "text/html,*/*")], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.header("location"), Some("/portal/"));
    let r = f.call(Method::GET, "/", &[], Body::empty()).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "an API client keeps its 404");
    let page = f.call(Method::GET, "/portal/", &[], Body::empty()).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&page.body).contains("/portal/app.js"));
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    for asset in ["/portal/app.js", "/portal/app.css"] {
        assert_eq!(
            f.call(Method::GET, asset, &[], Body::empty()).await.status,
            StatusCode::OK
        );
    }
    let other = f
        .call(Method::GET, "/portal/", &[("host", "evil.example.test")], Body::empty())
        .await;
    assert_eq!(other.status, StatusCode::BAD_REQUEST, "only the server's own names");
}

#[tokio::test]
async fn a_session_acts_as_its_policy_through_the_apis() {
    let f = fixture().await;
    let (cookie, session) = sign_in(&f, "provisioningserviceowner", OWNER_KEY).await;
    assert_eq!(session["grants"][0]["policy"], "provisioningserviceowner");
    assert_eq!(
        session["grants"].as_array().unwrap().len(),
        1,
        "the hub has no such policy"
    );
    let csrf = session["csrf"].as_str().unwrap().to_string();

    // Reads need no token; writes need the session's.
    let query = f
        .call(
            Method::POST,
            "/portal/api/service/enrollments/query",
            &[
                ("cookie", &cookie),
                ("x-csrf-token", &csrf),
                ("content-type", "application/json"),
            ],
            Body::from(r#"{"query":"*"}"#),
        )
        .await;
    assert_eq!(query.status, StatusCode::OK, "{}", String::from_utf8_lossy(&query.body));
    let body = sym_enrollment("portal-1", None);
    let put = |headers: Vec<(&'static str, String)>| {
        let f = &f;
        let body = body.clone();
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            f.call(
                Method::PUT,
                "/portal/api/service/enrollments/portal-1",
                &h,
                Body::from(body),
            )
            .await
        }
    };
    let json_type = ("content-type", "application/json".to_string());
    let r = put(vec![("cookie", cookie.clone()), json_type.clone()]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(String::from_utf8_lossy(&r.body).contains("CSRF"));
    let r = put(vec![
        ("cookie", cookie.clone()),
        ("x-csrf-token", csrf.clone()),
        ("origin", "https://evil.example.test".into()),
        json_type.clone(),
    ])
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "another site's page");
    let r = put(vec![
        ("cookie", cookie.clone()),
        ("x-csrf-token", csrf.clone()),
        ("origin", format!("https://{DPS_HOST}")),
        json_type.clone(),
    ])
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["registrationId"], "portal-1");
    // Under the policy's name in the audit trail.
    let trail = f
        .services
        .audit
        .query(&dps_core::audit::AuditFilter::default(), 10)
        .await
        .unwrap();
    assert!(trail
        .iter()
        .any(|e| e.operation.as_deref() == Some("PUT /enrollments/portal-1")
            && e.policy.as_deref() == Some("provisioningserviceowner")));

    // The session holds no hub policy: the hub's API is not reachable through it.
    let hub = f
        .call(
            Method::GET,
            &format!("/portal/api/hub/{HUB_HOST}/statistics/devices"),
            &[("cookie", &cookie)],
            Body::empty(),
        )
        .await;
    assert_eq!(hub.status, StatusCode::FORBIDDEN);

    // A read-only policy: its write is refused by the API itself, with the API's message.
    let (reader, session) = sign_in(&f, "reader", READER_KEY).await;
    let csrf = session["csrf"].as_str().unwrap();
    let r = f
        .call(
            Method::DELETE,
            "/portal/api/service/enrollments/portal-1",
            &[("cookie", &reader), ("x-csrf-token", csrf)],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.json()["message"].as_str().unwrap().contains("lacks"), "{}", r.json());
}

#[tokio::test]
async fn sessions_end_with_their_policy_and_cannot_be_forged() {
    let f = fixture().await;
    let (cookie, _) = sign_in(&f, "iothubowner", HUB_OWNER_KEY).await;
    let stats = |cookie: String| {
        let f = &f;
        async move {
            f.call(
                Method::GET,
                &format!("/portal/api/hub/{HUB_HOST}/statistics/devices"),
                &[("cookie", &cookie)],
                Body::empty(),
            )
            .await
        }
    };
    assert_eq!(stats(cookie.clone()).await.status, StatusCode::OK);
    let mut tampered = cookie.clone();
    tampered.insert(cookie.find('=').unwrap() + 3, 'x');
    let r = stats(tampered).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json()["signedIn"], false);

    // The key that signed in is made anew (the fixture's policies have it as both keys): the
    // session ends.
    use dps_core::auth::manage::{new_key, KeyToRenew};
    for which in [KeyToRenew::Primary, KeyToRenew::Secondary] {
        let owner = f.services.hubs.first().auth.policies()[0].as_ref().clone();
        f.services
            .policies
            .change(dps_server::policies::Whose::Hub(HUB_HOST.into()), owner, move |set| {
                set.renew_key("iothubowner", which, new_key)
            })
            .await
            .unwrap();
    }
    let r = stats(cookie).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.json()["message"].as_str().unwrap().contains("sign in again"));
}

#[tokio::test]
async fn sign_in_failures_say_so_and_are_limited() {
    let f = fixture().await;
    let attempt = || async {
        f.call(
            Method::POST,
            "/portal/api/sign-in",
            &[("content-type", "application/json")],
            Body::from(json!({ "policyName": "provisioningserviceowner", "key": READER_KEY }).to_string()),
        )
        .await
    };
    let first = attempt().await;
    assert_eq!(first.status, StatusCode::UNAUTHORIZED);
    assert!(first.json()["message"]
        .as_str()
        .unwrap()
        .contains("no policy of that name has that key"));
    let mut limited = false;
    for _ in 0..20 {
        if attempt().await.status == StatusCode::TOO_MANY_REQUESTS {
            limited = true;
            break;
        }
    }
    assert!(limited, "failed sign-ins are limited");
    let garbage = f
        .call(Method::POST, "/portal/api/sign-in", &[], Body::from("not json"))
        .await;
    assert_eq!(garbage.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_sign_in_link_works_once_for_the_owners() {
    let f = fixture().await;
    let now = dps_core::Engine::unix_time(dps_core::Clock::now(f.clock.as_ref()));
    let link = dps_server::portal::sign_in_link(&f.services.identity.portal_key, "https://x", now);
    let path = link.strip_prefix("https://x").unwrap();
    let r = f.call(Method::GET, path, &[], Body::empty()).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let cookie = r.header("set-cookie").unwrap().split(';').next().unwrap().to_string();
    let session = f
        .call(
            Method::GET,
            "/portal/api/session",
            &[("cookie", &cookie)],
            Body::empty(),
        )
        .await
        .json();
    let policies: Vec<&str> = session["grants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["policy"].as_str().unwrap())
        .collect();
    assert_eq!(policies, ["provisioningserviceowner", "iothubowner"]);
    let again = f.call(Method::GET, path, &[], Body::empty()).await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&again.body).contains("used already"));
    let other_key = dps_server::portal::sign_in_link(&dps_server::datadir::random_key(), "https://x", now);
    let forged = f
        .call(
            Method::GET,
            other_key.strip_prefix("https://x").unwrap(),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(forged.status, StatusCode::BAD_REQUEST);
}

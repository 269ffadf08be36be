//! The web portal's parsers of what a browser (or anyone) sends, through the server's router in
//! memory: the bytes as a session cookie, as a sign-in body, as a one-time link's token and as
//! the path a session forwards to the APIs. Nothing may panic or answer 5xx, and no input opens
//! a session: cookies and links are MACed with a key the input cannot know.

use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

/// One input, four ways.
pub fn portal_request(data: &[u8]) {
    crate::support::block_on_paused(async {
        let services = crate::amqp::services().await;
        let app = dps_server::http::router(services);
        let text = String::from_utf8_lossy(data);
        let call = |method: &'static str, uri: String, cookie: Option<String>, body: Vec<u8>| {
            let app = app.clone();
            async move {
                let mut req = Request::builder().method(method).uri(uri).header("host", "localhost");
                if let Some(c) = cookie {
                    req = req.header("cookie", c);
                }
                let Ok(req) = req.body(Body::from(body)) else {
                    return None;
                };
                let resp = app.oneshot(req).await.expect("the router answers");
                let status = resp.status();
                let _ = resp.into_body().collect().await;
                assert!(!status.is_server_error(), "{method} answered {status}");
                Some(status)
            }
        };
        let cookie = format!("dps_portal={text}");
        if http::HeaderValue::from_str(&cookie).is_ok() {
            let status = call("GET", "/portal/api/session".into(), Some(cookie), Vec::new()).await;
            assert_eq!(status, Some(StatusCode::UNAUTHORIZED), "an input opened a session");
        }
        call("POST", "/portal/api/sign-in".into(), None, data.to_vec()).await;
        let escaped: String = text
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let link = call("GET", format!("/portal/sign-in?link={escaped}"), None, Vec::new()).await;
        assert_ne!(link, Some(StatusCode::SEE_OTHER), "an input passed for a sign-in link");
        if let Some(status) = call("GET", format!("/portal/api/service/{escaped}"), None, Vec::new()).await {
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "a request without a session was forwarded"
            );
        }
    });
}

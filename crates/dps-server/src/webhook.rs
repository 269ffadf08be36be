//! The custom allocation webhook's transport: POSTs the engine's `AllocationRequest` to the
//! enrollment's webhook URL over HTTPS (its `?code=` function key kept in the URL, as Azure
//! Functions expects it) and hands back the answer's JSON. The engine decides what to send and
//! judges the answer (`dps_core` `engine/custom_allocation.rs`); this decides nothing.
//!
//! Bounded like every outbound call: a connect deadline, a deadline on the whole exchange
//! (`[limits] webhook-timeout-secs`, `--webhook-timeout-secs`), at most [`MAX_ANSWER_BYTES`] of answer, no redirects,
//! TLS checked against the system's CAs and `--allocation-webhook-ca`. Connections are kept
//! and reused, so a busy webhook costs one round trip per registration, not a handshake.

use std::time::Duration;

use async_trait::async_trait;
use dps_core::AllocationWebhook;
use dps_proto::error::error_chain;
use serde_json::Value;

use crate::outbound::read_bounded;

/// Largest answer read from a webhook.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Connecting to a webhook.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// An HTTPS client for custom allocation webhooks.
#[derive(Debug, Clone)]
pub struct WebhookClient {
    http: reqwest::Client,
}

impl WebhookClient {
    /// A client trusting the system's CAs and those in `extra_ca_pem`, giving each call
    /// `timeout` in all.
    pub fn new(extra_ca_pem: Option<&str>, timeout: Duration) -> Result<Self, String> {
        let tls = dps_pki::tls::client_config_with_system_roots(extra_ca_pem).map_err(|e| e.to_string())?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .https_only(true)
            .connect_timeout(CONNECT_TIMEOUT.min(timeout))
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(256)
            .user_agent(concat!("dps/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self { http })
    }
}

#[async_trait]
impl AllocationWebhook for WebhookClient {
    async fn call(&self, url: &str, request: &Value) -> Result<Value, String> {
        // Errors name the URL without its query: that is where the function key is.
        let shown = url.split('?').next().unwrap_or_default();
        let resp = self
            .http
            .post(url)
            .json(request)
            .send()
            .await
            // Without the URL reqwest adds to its errors: it holds the key.
            .map_err(|e| format!("{shown} did not answer: {}", error_chain(&e.without_url())))?;
        let status = resp.status();
        let body = read_bounded(resp, MAX_ANSWER_BYTES)
            .await
            .map_err(|e| format!("{shown}: {e}"))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body);
            let text: String = text.chars().take(200).collect();
            return Err(format!("{shown} answered {status}: {text}"));
        }
        serde_json::from_slice(&body)
            .map_err(|e| format!("{shown} answered {status} with something that is not JSON: {e}"))
    }
}

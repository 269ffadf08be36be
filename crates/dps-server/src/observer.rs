//! What the server does with what the engine reports ([`dps_core::Observer`]): counts every
//! registration attempt into the metrics, and tells the log of the ones refused — at the default
//! level, because an operator asking "why did this device not come up?" should find the answer
//! without turning on debug logs: a disabled enrollment, no linked hub, a hub that refused the
//! device, a bad credential. At most ten lines a second: a fleet with the wrong key, or an
//! attacker, would otherwise bury everything else; each line counts the refusals since the last.

use std::sync::Arc;
use std::time::Duration;

use dps_core::{Observer, RegistrationAttempt};
use dps_proto::model::service::RegistrationStatus;

use crate::log_limit::LogLimiter;
use crate::metrics::Metrics;

/// The server's observer of its engine.
pub(crate) struct ServerObserver {
    metrics: Arc<Metrics>,
    audit: Arc<crate::audit::AuditTrail>,
    refusals: LogLimiter,
}

impl ServerObserver {
    pub(crate) fn new(metrics: Arc<Metrics>, audit: Arc<crate::audit::AuditTrail>) -> Self {
        Self {
            metrics,
            audit,
            refusals: LogLimiter::new(Duration::from_millis(100)),
        }
    }
}

impl Observer for ServerObserver {
    fn registration(&self, attempt: &RegistrationAttempt<'_>) {
        self.metrics.registration(attempt);
        self.audit.registration(attempt);
        let (code, why) = match &attempt.outcome {
            Ok(state) if matches!(state.status, RegistrationStatus::Failed | RegistrationStatus::Disabled) => (
                state.error_code.unwrap_or_default(),
                state.error_message.clone().unwrap_or_else(|| {
                    format!(
                        "the registration is {}",
                        crate::metrics::outcome_label(&attempt.outcome)
                    )
                }),
            ),
            Ok(_) => return,
            // Throttling is summarized by the engine's quotas (and counted in the metrics).
            Err(e) if e.status() == 429 => return,
            // The HTTPS dispatcher logs every refused request already, with its path.
            Err(_) if attempt.request.transport == dps_core::Transport::Https => return,
            Err(e) => (e.code(), e.to_string()),
        };
        let Some(count) = self.refusals.record() else { return };
        let request = attempt.request;
        tracing::info!(
            registration = %request.registration_id,
            outcome = crate::metrics::outcome_label(&attempt.outcome),
            code,
            attestation = crate::metrics::attestation_label(attempt.attestation),
            transport = request.transport.as_str(),
            source = ?request.source,
            refused_since_last_line = count,
            "registration refused: {why}"
        );
    }

    fn throttled(&self, quota: dps_core::quota::Quota) {
        self.metrics.throttled(quota);
    }

    fn webhook(&self, took: Duration, ok: bool) {
        self.metrics.webhook(took, ok);
    }
}

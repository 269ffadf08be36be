//! The server's embedded hubs: one, or several when `--hub-hostname` is given more than once,
//! so that allocation among hubs can be tried on one machine. Each has its own host name,
//! policies and keys, registry, sessions, files and jobs; all share the listeners.
//!
//! A request is told to its hub by the name it carries, never by where it arrived: the host of
//! an MQTT username, of a SAS token's audience (HTTPS, AMQP's CBS), or else the HTTP `Host`
//! header or the AMQP open's host name. A name no hub answers to goes to the first hub, which
//! also answers to the server's own host names (a device reaching the server by its IP
//! address). Credentials are then judged by that hub's keys and names alone, so naming another
//! hub gains nothing without its keys.

use std::sync::Arc;

use dps_core::auth::PolicyAuthorizer;
use dps_datadir::HubIdentity;

/// One embedded hub and what the server keeps beside it.
pub struct EmbeddedHub {
    /// The hub.
    pub hub: dps_hub::Hub,
    /// Its host name, policies and keys as they were at start (the policies in force are
    /// [`EmbeddedHub::auth`]'s).
    pub identity: HubIdentity,
    /// Its registry API policies (`iothubowner`, …).
    pub auth: PolicyAuthorizer,
    /// Its blob endpoint's files (file uploads, import and export jobs); `None`: not served.
    pub blobs: Option<dps_store::BlobStore>,
    /// Its import and export jobs.
    pub import_export: Arc<crate::http::import_export::Jobs>,
}

impl EmbeddedHub {
    /// A hub with `identity`'s policies and no import or export job yet.
    pub fn new(hub: dps_hub::Hub, identity: HubIdentity, blobs: Option<dps_store::BlobStore>) -> Self {
        Self {
            auth: PolicyAuthorizer::new(identity.policies.clone()),
            hub,
            identity,
            blobs,
            import_export: Default::default(),
        }
    }

    /// The hub's host name.
    pub fn host_name(&self) -> &str {
        self.hub.host_name()
    }
}

/// The embedded hubs, the first one first (never empty).
pub struct EmbeddedHubs {
    hubs: Vec<Arc<EmbeddedHub>>,
}

impl EmbeddedHubs {
    /// The hubs, `first` being the one requests naming no hub go to.
    pub fn new(first: EmbeddedHub, others: impl IntoIterator<Item = EmbeddedHub>) -> Self {
        Self {
            hubs: std::iter::once(first).chain(others).map(Arc::new).collect(),
        }
    }

    /// The first hub: the one a request naming no hub (or an unknown name) is for.
    pub fn first(&self) -> &Arc<EmbeddedHub> {
        &self.hubs[0]
    }

    /// Each hub's host name and the authorizer its registry requests are judged by (shared:
    /// replacing its policies is seen by every request).
    pub fn authorizers(&self) -> Vec<(String, PolicyAuthorizer)> {
        self.hubs
            .iter()
            .map(|h| (h.host_name().to_string(), h.auth.clone()))
            .collect()
    }

    /// Every hub, the first one first.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<EmbeddedHub>> + Clone {
        self.hubs.iter()
    }

    /// The hub answering to `host` (a host name, with or without `:port`), if any.
    pub fn named(&self, host: &str) -> Option<&Arc<EmbeddedHub>> {
        let host = strip_port(host);
        self.hubs.iter().find(|h| h.hub.answers_to(host))
    }

    /// The hub a request is for: the one its SAS token (`authorization`) names, else the one
    /// its `host` names, else the first.
    pub fn for_request(&self, authorization: Option<&str>, host: Option<&str>) -> &Arc<EmbeddedHub> {
        authorization
            .and_then(|t| self.for_token(t))
            .or_else(|| host.and_then(|h| self.named(h)))
            .unwrap_or_else(|| self.first())
    }

    /// The hub whose name a SAS token's audience starts with (`{host}/devices/…`,
    /// `sb://{host}/{eventHub}`), if the token parses and names one.
    pub fn for_token(&self, token: &str) -> Option<&Arc<EmbeddedHub>> {
        let audience = dps_proto::sas::SasToken::parse(token).ok()?.audience();
        let host = without_scheme(&audience).split('/').next().unwrap_or_default();
        self.named(host)
    }
}

/// A token audience without the `sb://` or `amqps://` an Event Hubs audience starts with.
pub(crate) fn without_scheme(audience: &str) -> &str {
    ["sb://", "amqps://"]
        .into_iter()
        .find_map(|scheme| audience.strip_prefix(scheme))
        .unwrap_or(audience)
}

/// `host` without a `:port` suffix (IPv6 literals in brackets keep their colons).
fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && (!h.contains(':') || h.ends_with(']')) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::strip_port;

    #[test]
    fn ports_are_stripped_and_ipv6_literals_kept() {
        assert_eq!(strip_port("hub.test:8443"), "hub.test");
        assert_eq!(strip_port("hub.test"), "hub.test");
        assert_eq!(strip_port("[::1]:443"), "[::1]");
        assert_eq!(strip_port("::1"), "::1");
    }
}

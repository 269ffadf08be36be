//! Linked hubs: the IoT hubs devices may be assigned to, managed as `az iot dps linked-hub`
//! manages them (`/linkedHubs/{name}` here; Azure keeps them in the service's ARM resource).
//!
//! The store holds each hub's description with its connection string; the engine keeps the
//! settings allocation reads ([`LinkedHub`]) in an `ArcSwap`, so a registration reads them
//! without a lock and a change replaces them whole. The hub registry is told of every hub
//! linked ([`HubRegistry::link`](crate::HubRegistry::link)) before the hub is used, so a
//! registry that reaches hubs over the network has its client ready, and can refuse a hub it
//! cannot reach (an unusable CA) while the operator is still there to hear it.

use std::sync::Arc;

use base64::Engine as _;
use dps_proto::connection_string::ConnectionString;
use dps_proto::model::service::LinkedHubDescription;

use super::{Engine, LinkedHub};
use crate::error::{Error, InvalidArgument, Resource};

/// Most hubs one service links (Azure's limit).
pub const MAX_LINKED_HUBS: usize = 50;

impl Engine {
    /// Reads the linked hubs from the store and links each with the hub registry; when the
    /// store links none, the configuration's stay ([`crate::EngineConfig::linked_hubs`]).
    pub(crate) async fn load_linked_hubs(&self) -> Result<(), Error> {
        let stored = self.store.list_linked_hubs().await?;
        if stored.is_empty() {
            return Ok(());
        }
        for hub in &stored {
            if let Err(e) = self.hubs.link(hub).await {
                tracing::error!(hub = %hub.name, error = %e, "linked hub cannot be used; registrations assigned to it fail until it is updated");
            }
        }
        self.linked
            .store(Arc::new(stored.iter().map(LinkedHub::from_description).collect()));
        Ok(())
    }

    /// Reads the linked hubs again after another node changed them (decision 0031): the stored
    /// ones are linked with the hub registry and become allocation's, the ones gone are
    /// unlinked, as on the node that made the change.
    pub(crate) async fn reload_linked_hubs(&self) -> Result<(), Error> {
        let stored = self.store.list_linked_hubs().await?;
        for hub in &stored {
            if let Err(e) = self.hubs.link(hub).await {
                tracing::error!(hub = %hub.name, error = %e, "linked hub cannot be used; registrations assigned to it fail until it is updated");
            }
        }
        let before = self
            .linked
            .swap(Arc::new(stored.iter().map(LinkedHub::from_description).collect()));
        for gone in before
            .iter()
            .filter(|h| !stored.iter().any(|s| s.name.eq_ignore_ascii_case(&h.host_name)))
        {
            self.hubs.unlink(&gone.host_name).await;
        }
        Ok(())
    }

    /// Whether `host` is a linked hub.
    pub fn is_linked(&self, host: &str) -> bool {
        self.linked
            .load()
            .iter()
            .any(|h| h.host_name.eq_ignore_ascii_case(host))
    }

    /// The linked hubs as allocation sees them.
    pub fn linked_hubs(&self) -> Vec<LinkedHub> {
        self.linked.load().as_ref().clone()
    }

    /// `GET /linkedHubs`: every linked hub, keys redacted.
    pub async fn list_linked_hubs(&self) -> Result<Vec<LinkedHubDescription>, Error> {
        let hubs = self.store.list_linked_hubs().await?;
        Ok(hubs.iter().map(LinkedHubDescription::redacted).collect())
    }

    /// `GET /linkedHubs/{name}`, key redacted.
    pub async fn get_linked_hub(&self, name: &str) -> Result<LinkedHubDescription, Error> {
        self.stored_linked_hub(name)
            .await?
            .map(|h| h.redacted())
            .ok_or_else(|| Error::NotFound {
                resource: Resource::LinkedHub,
                id: name.to_string(),
            })
    }

    async fn stored_linked_hub(&self, name: &str) -> Result<Option<LinkedHubDescription>, Error> {
        let hubs = self.store.list_linked_hubs().await?;
        Ok(hubs.into_iter().find(|h| h.name.eq_ignore_ascii_case(name)))
    }

    /// `PUT /linkedHubs/{name}`: links the hub `name`, or replaces a linked hub's settings (a
    /// description without a connection string keeps the stored one). The hub registry links
    /// it before it is stored; the answer is the description with its key redacted.
    pub async fn put_linked_hub(
        &self,
        name: &str,
        mut hub: LinkedHubDescription,
    ) -> Result<LinkedHubDescription, Error> {
        let invalid = |reason: String| InvalidArgument::LinkedHub {
            name: name.to_string(),
            reason,
        };
        if !hub.name.is_empty() && !hub.name.eq_ignore_ascii_case(name) {
            return Err(InvalidArgument::BodyId {
                resource: Resource::LinkedHub,
                body_id: hub.name,
                path_id: name.to_string(),
            }
            .into());
        }
        hub.name = name.to_ascii_lowercase();
        let stored = self.store.list_linked_hubs().await?;
        let existing = stored.iter().find(|h| h.name.eq_ignore_ascii_case(name));
        if hub.connection_string.trim().is_empty() {
            hub.connection_string = existing
                .map(|h| h.connection_string.clone())
                .ok_or_else(|| invalid("connectionString is required to link a hub".into()))?;
        }
        validate(&hub).map_err(invalid)?;
        if existing.is_none() && stored.len() >= MAX_LINKED_HUBS {
            return Err(invalid(format!("a service links at most {MAX_LINKED_HUBS} hubs")).into());
        }
        self.hubs.link(&hub).await.map_err(|e| invalid(e.to_string()))?;
        self.store
            .put_linked_hub(&hub)
            .await
            .map_err(|e| Error::from_store(e, Resource::LinkedHub, name))?;
        let linked = LinkedHub::from_description(&hub);
        self.linked.rcu(|current| {
            let mut hubs: Vec<LinkedHub> = current
                .iter()
                .filter(|h| !h.host_name.eq_ignore_ascii_case(name))
                .cloned()
                .collect();
            hubs.push(linked.clone());
            hubs.sort_by_key(|h| h.host_name.to_ascii_lowercase());
            hubs
        });
        tracing::info!(hub = %hub.name, weight = linked.allocation_weight, allocation = linked.apply_allocation_policy, "hub linked");
        Ok(hub.redacted())
    }

    /// `DELETE /linkedHubs/{name}`: unlinks the hub. Devices already assigned to it stay there;
    /// enrollments that name it fail to register until they name another.
    pub async fn delete_linked_hub(&self, name: &str) -> Result<(), Error> {
        self.store
            .delete_linked_hub(name)
            .await
            .map_err(|e| Error::from_store(e, Resource::LinkedHub, name))?;
        self.linked.rcu(|current| {
            current
                .iter()
                .filter(|h| !h.host_name.eq_ignore_ascii_case(name))
                .cloned()
                .collect::<Vec<_>>()
        });
        self.hubs.unlink(name).await;
        tracing::info!(hub = %name, "hub unlinked");
        Ok(())
    }
}

/// A linked hub's settings as Azure checks them: a connection string of this hub with a policy
/// name and a base64 key, a weight from 1 to 1000, a location that says something.
fn validate(hub: &LinkedHubDescription) -> Result<(), String> {
    let cs = ConnectionString::parse(&hub.connection_string).map_err(|e| format!("connectionString: {e}"))?;
    if !cs.host_name.eq_ignore_ascii_case(&hub.name) {
        return Err(format!(
            "connectionString names HostName={}, not this hub",
            cs.host_name
        ));
    }
    let (Some(_), Some(key)) = (&cs.key_name, &cs.key) else {
        return Err(
            "connectionString needs SharedAccessKeyName and SharedAccessKey (a hub policy with RegistryWrite)".into(),
        );
    };
    if base64::engine::general_purpose::STANDARD.decode(key).is_err() {
        return Err("connectionString's SharedAccessKey is not base64".into());
    }
    if let Some(w) = hub.allocation_weight {
        if !(1..=1000).contains(&w) {
            return Err(format!("allocationWeight must be from 1 to 1000, not {w}"));
        }
    }
    if hub.location.as_deref().is_some_and(|l| l.trim().is_empty()) {
        return Err("location is empty".into());
    }
    Ok(())
}

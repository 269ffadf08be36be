//! The hub registry the engine provisions through: the embedded hubs in-process, every other
//! linked hub over its registry REST API ([`RemoteHub`]). The engine names a hub by host name;
//! the router sends the call to whichever serves it, so allocation, reprovisioning and recovery
//! work the same for every linked hub. An embedded hub is found by any name it answers to (a
//! former name after a rename), and [`HubRegistry::current_name`] tells the engine its name
//! now.

use std::sync::Arc;

use async_trait::async_trait;
use dashmap::DashMap;
use dps_core::{DeviceData, DeviceProvisioning, HubError, HubRegistry, UpsertOutcome};
use dps_proto::model::service::LinkedHubDescription;

use crate::remote_hub::RemoteHub;

/// The embedded hubs and the clients of the linked hubs elsewhere, by lower-cased host name.
pub struct HubRouter {
    embedded: Vec<dps_hub::Hub>,
    remote: DashMap<String, Arc<RemoteHub>>,
}

impl HubRouter {
    /// A router with the embedded hubs and no other hub yet.
    pub fn new(embedded: Vec<dps_hub::Hub>) -> Self {
        Self {
            embedded,
            remote: DashMap::new(),
        }
    }

    /// The client of `hub`, when it is a linked hub elsewhere.
    fn remote(&self, hub: &str) -> Option<Arc<RemoteHub>> {
        self.remote.get(&hub.to_ascii_lowercase()).map(|r| r.clone())
    }

    /// The embedded hub answering to `hub`, if any.
    fn embedded(&self, hub: &str) -> Option<&dps_hub::Hub> {
        self.embedded.iter().find(|h| h.answers_to(hub))
    }

    /// The embedded hub answering to `hub`, or the refusal the engine expects for a hub that
    /// is neither embedded nor linked elsewhere.
    fn embedded_or_unknown(&self, hub: &str) -> Result<&dps_hub::Hub, HubError> {
        self.embedded(hub).ok_or_else(|| HubError::UnknownHub(hub.to_string()))
    }
}

#[async_trait]
impl HubRegistry for HubRouter {
    async fn upsert_device(&self, hub: &str, device: &DeviceProvisioning) -> Result<UpsertOutcome, HubError> {
        match self.remote(hub) {
            Some(r) => r.upsert(device).await,
            None => HubRegistry::upsert_device(self.embedded_or_unknown(hub)?, hub, device).await,
        }
    }

    async fn delete_device(&self, hub: &str, device_id: &str) -> Result<(), HubError> {
        match self.remote(hub) {
            Some(r) => r.delete(device_id).await,
            None => HubRegistry::delete_device(self.embedded_or_unknown(hub)?, hub, device_id).await,
        }
    }

    async fn device_data(&self, hub: &str, device_id: &str) -> Result<Option<DeviceData>, HubError> {
        match self.remote(hub) {
            Some(r) => r.device_data(device_id).await,
            None => HubRegistry::device_data(self.embedded_or_unknown(hub)?, hub, device_id).await,
        }
    }

    /// The embedded hub is served in-process whatever its connection string says; any other
    /// hub gets a client, refused when its connection string or CA cannot be used.
    async fn link(&self, hub: &LinkedHubDescription) -> Result<(), HubError> {
        let key = hub.name.to_ascii_lowercase();
        if self.embedded(&hub.name).is_some() {
            self.remote.remove(&key);
            return Ok(());
        }
        let client = RemoteHub::new(hub).map_err(HubError::unavailable)?;
        self.remote.insert(key, Arc::new(client));
        Ok(())
    }

    async fn unlink(&self, hub: &str) {
        self.remote.remove(&hub.to_ascii_lowercase());
    }

    fn current_name(&self, hub: &str) -> Option<String> {
        let embedded = self.embedded(hub)?;
        (!embedded.host_name().eq_ignore_ascii_case(hub)).then(|| embedded.host_name().to_string())
    }
}

//! What this node hears from the other nodes serving the same PostgreSQL database (decision
//! 0031): the notices their writes send, handed to the embedded hub they concern
//! ([`dps_hub::Hub::peer_changed`]), and a resync of every hub when the node may have missed
//! some. The node's own notices are skipped: it acted on its writes as it made them.

use dps_store::postgres::{BusEvent, HubNotice};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};

use std::sync::Arc;

use crate::Services;

/// Runs until shutdown (or until the channel closes), one notice at a time, in the order heard.
pub(crate) async fn hear_other_nodes(
    mut events: broadcast::Receiver<BusEvent>,
    node: String,
    services: Arc<Services>,
    mut shutdown: watch::Receiver<bool>,
) {
    let hubs = &services.hubs;
    loop {
        let event = tokio::select! {
            e = events.recv() => e,
            _ = shutdown.changed() => return,
        };
        match event {
            Ok(BusEvent::Notice(payload)) => {
                let Some(notice) = HubNotice::parse(&payload) else {
                    continue;
                };
                if notice.node == node {
                    continue;
                }
                let hub = hubs.iter().find(|h| h.identity.number() == Some(notice.hub));
                if let Some(h) = hub {
                    h.hub.peer_changed(notice.change).await;
                }
            }
            Ok(BusEvent::Resync) | Err(RecvError::Lagged(_)) => {
                for h in hubs.iter() {
                    h.hub.peer_changed(dps_hub::PeerChange::Resync).await;
                }
            }
            Err(RecvError::Closed) => return,
        }
    }
}

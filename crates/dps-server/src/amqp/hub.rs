//! The embedded hub's device endpoint over AMQP.

use std::sync::Arc;

use dps_proto::hub_amqp::HubNode;
use fe2o3_amqp::acceptor::ListenerSessionHandle;
use fe2o3_amqp::types::performatives::Attach;
use tokio::task::JoinSet;

use super::links::{self, Refusal};
use super::Conn;

/// Per-connection hub state.
#[derive(Default)]
pub(crate) struct HubState {}

pub(super) async fn attach(
    session: &mut ListenerSessionHandle,
    attach: Attach,
    node: HubNode,
    _conn: &Arc<Conn>,
    _tasks: &mut JoinSet<()>,
) {
    links::refuse(
        session,
        attach,
        Refusal::NotFound(format!("{node:?} is not served yet")),
    )
    .await;
}

//! The shared access policies of the service and of its embedded hubs while the server runs:
//! changed through the service and hub APIs (`dps policy …`, the portal), kept where the
//! identity is kept, and in force for every request once the change is written.
//!
//! The identity file (`dps.json`) stays the one place policies live, so the client commands
//! beside a server (`dps info`, `dps enrollment …`) keep finding an owner key in the data
//! directory. A change is judged by [`PolicyChange`] (the rules: no way up, an owner always
//! left), written (the data directory's file replaced whole; or, on PostgreSQL, the shared
//! `dps_files` row in one transaction under the files' lock, mirrored into this node's data
//! directory), and only then handed to the authorizers. On PostgreSQL the write tells every
//! node ([`dps_store::postgres::FILES_NOTICE`]), and each reads the identity again
//! ([`PolicyBook::hear_other_nodes`]).

use std::sync::Arc;

use dps_core::auth::manage::{PolicyChange, PolicyScope};
use dps_core::auth::{PolicyAuthorizer, SharedAccessPolicy};
use dps_datadir::{DataDir, DataDirError, FileSet, Identity};

use crate::ApiError;

/// Where the identity is kept.
pub enum IdentityKeeper {
    /// The data directory's `dps.json`.
    DataDir(DataDir),
    /// PostgreSQL's `dps_files`, every node's; mirrored into this node's data directory.
    Shared {
        /// The store holding the files.
        store: Arc<dps_store::PostgresStore>,
        /// This node's data directory.
        mirror: DataDir,
    },
}

/// Whose policies a change is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Whose {
    /// The provisioning service's.
    Service,
    /// The embedded hub with this host name.
    Hub(String),
}

impl Whose {
    fn scope(&self) -> PolicyScope {
        match self {
            Whose::Service => PolicyScope::Dps,
            Whose::Hub(_) => PolicyScope::Hub,
        }
    }
}

/// The policies in force and where they are kept. One change at a time on this node (a rare
/// operator action; the registration path never waits on it); across nodes, the files' lock.
pub struct PolicyBook {
    keeper: IdentityKeeper,
    writing: tokio::sync::Mutex<()>,
    service: PolicyAuthorizer,
    /// Each embedded hub's host name and authorizer.
    hubs: Vec<(String, PolicyAuthorizer)>,
}

/// Why a change was not made: refused by the rules, or the identity could not be kept.
enum ChangeError {
    Refused(dps_core::Error),
    Kept(String),
}

impl From<DataDirError> for ChangeError {
    fn from(e: DataDirError) -> Self {
        ChangeError::Kept(e.to_string())
    }
}

impl From<ChangeError> for ApiError {
    fn from(e: ChangeError) -> Self {
        match e {
            ChangeError::Refused(e) => e.into(),
            ChangeError::Kept(why) => ApiError::internal(format!("the policies could not be written: {why}")),
        }
    }
}

impl PolicyBook {
    /// The book over `keeper`, putting the policies in force through `service` and the hubs'
    /// authorizers (shared handles: the ones requests are judged by).
    pub fn new(keeper: IdentityKeeper, service: PolicyAuthorizer, hubs: Vec<(String, PolicyAuthorizer)>) -> Self {
        Self {
            keeper,
            writing: tokio::sync::Mutex::new(()),
            service,
            hubs,
        }
    }

    /// The authorizer of `whose` policies; `None` for a hub this server does not serve.
    pub fn authorizer(&self, whose: &Whose) -> Option<&PolicyAuthorizer> {
        match whose {
            Whose::Service => Some(&self.service),
            Whose::Hub(host) => self
                .hubs
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(host))
                .map(|(_, auth)| auth),
        }
    }

    /// Reads `whose` policies as `caller` may see them (`read` gets the rules over a copy).
    pub fn read<T>(
        &self,
        whose: &Whose,
        caller: &SharedAccessPolicy,
        read: impl FnOnce(&PolicyChange<'_>) -> Result<T, dps_core::Error>,
    ) -> Result<T, ApiError> {
        let auth = self.authorizer(whose).ok_or_else(|| not_served(whose))?;
        let mut policies: Vec<SharedAccessPolicy> = auth.policies().iter().map(|p| (**p).clone()).collect();
        let change = PolicyChange {
            scope: whose.scope(),
            policies: &mut policies,
            caller,
        };
        read(&change).map_err(ApiError::from)
    }

    /// Changes `whose` policies as `caller` asks (`change` gets the rules over the stored set),
    /// writes them, and puts them in force; nothing changes when `change` refuses.
    pub async fn change<T: Send + 'static>(
        &self,
        whose: Whose,
        caller: SharedAccessPolicy,
        change: impl FnOnce(&mut PolicyChange<'_>) -> Result<T, dps_core::Error> + Send + 'static,
    ) -> Result<T, ApiError> {
        self.authorizer(&whose).ok_or_else(|| not_served(&whose))?;
        let _one_at_a_time = self.writing.lock().await;
        let apply = move |identity: &mut Identity| -> Result<(T, Identity), ChangeError> {
            let scope = whose.scope();
            let policies = match &whose {
                Whose::Service => &mut identity.policies,
                Whose::Hub(host) => {
                    &mut identity
                        .hub_named_mut(host)
                        .ok_or_else(|| ChangeError::Kept(format!("the identity holds no hub '{host}'")))?
                        .policies
                }
            };
            let mut rules = PolicyChange {
                scope,
                policies,
                caller: &caller,
            };
            let value = change(&mut rules).map_err(ChangeError::Refused)?;
            Ok((value, identity.clone()))
        };
        let (value, identity) = match &self.keeper {
            IdentityKeeper::DataDir(dir) => {
                let dir = dir.clone();
                blocking(move || dir.update_identity(apply)).await?
            }
            IdentityKeeper::Shared { store, mirror } => {
                let changed = store
                    .update_files(move |files| {
                        let mut set = FileSet::new(files, "PostgreSQL dps_files");
                        let (value, identity) = set.update_identity(apply)?;
                        Ok::<_, ChangeError>((set.changed(), (value, identity, set)))
                    })
                    .await
                    .map_err(|e| ChangeError::Kept(e.to_string()))??;
                let (value, identity, set) = changed;
                mirror_into(mirror, set).await;
                (value, identity)
            }
        };
        self.put_in_force(&identity);
        Ok(value)
    }

    /// Reads the identity again and puts its policies in force: another node changed them.
    pub async fn reload(&self) -> Result<(), String> {
        let IdentityKeeper::Shared { store, mirror } = &self.keeper else {
            return Ok(());
        };
        let (identity, set) = store
            .update_files(|files| {
                let set = FileSet::new(files, "PostgreSQL dps_files");
                let identity = set.load_identity()?;
                Ok::<_, DataDirError>((Vec::new(), (identity, set)))
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        mirror_into(mirror, set).await;
        self.put_in_force(&identity);
        Ok(())
    }

    /// Reads the identity again whenever another node says the shared files changed, or after
    /// the channel to the other nodes was lost; for as long as `events` runs.
    pub async fn hear_other_nodes(
        self: Arc<Self>,
        mut events: tokio::sync::broadcast::Receiver<dps_store::postgres::BusEvent>,
    ) {
        use dps_store::postgres::{BusEvent, FILES_NOTICE};
        use tokio::sync::broadcast::error::RecvError;
        loop {
            match events.recv().await {
                Ok(BusEvent::Notice(payload)) if &*payload == FILES_NOTICE => {}
                Ok(BusEvent::Notice(_)) => continue,
                Ok(BusEvent::Resync) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            }
            if let Err(e) = self.reload().await {
                tracing::warn!(error = %e, "shared access policies changed by another node not read; the ones in force stay");
            }
        }
    }

    /// Hands the identity's policies to the authorizers requests are judged by.
    fn put_in_force(&self, identity: &Identity) {
        self.service.replace(identity.policies.clone());
        for (host, auth) in &self.hubs {
            if let Some(hub) = identity.hub_named(host) {
                auth.replace(hub.policies.clone());
            }
        }
    }
}

/// A hub this server does not serve (its routes are for the hubs it serves, so only a hub
/// removed from the identity meanwhile gets here).
fn not_served(whose: &Whose) -> ApiError {
    ApiError::invalid(format!("no policies of {whose:?} are served here"))
}

/// Runs file work off the async threads.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// Mirrors the shared files into this node's data directory, for the client commands beside
/// it; a failure is logged (the change is made and in force either way).
async fn mirror_into(dir: &DataDir, set: FileSet) {
    let dir = dir.clone();
    if let Err(e) = blocking(move || set.mirror_to(&dir)).await {
        tracing::warn!(error = %e, "the changed policies were not mirrored into the data directory");
    }
}

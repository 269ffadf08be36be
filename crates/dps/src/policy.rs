//! `dps policy create|list|show|update|delete|regenerate-key`: the shared access policies of the
//! provisioning service (`az iot dps policy …`) or, with `--hub-name`, of one of the server's
//! embedded hubs (`az iot hub policy …`), through the APIs' `/keys` and `/iotHubKeys`.

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use dps_client::{Policies, RegistryClient, ServiceClient};
use dps_proto::model::service::{AuthorizationRule, PolicyKeyType};

use crate::output::{self, out, to_value};
use crate::remote::{connect, connect_hub_named, Api, ServerArgs};

/// `dps policy …`
#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Create a policy with rights (its keys are made unless given).
    Create(PolicyPut),
    /// List the policies.
    List(PolicyTarget),
    /// Show a policy with its keys.
    Show(PolicyName),
    /// Change a policy's rights or keys.
    Update(PolicyPut),
    /// Delete a policy (tokens signed with its keys stop working).
    Delete(PolicyName),
    /// Make a policy's primary or secondary key anew, or swap the two.
    RegenerateKey(PolicyRegenerate),
}

/// Whose policies: the provisioning service's, or an embedded hub's (`--hub-name`).
#[derive(Args, Debug)]
pub struct PolicyTarget {
    /// The embedded hub whose policies these are [default: the provisioning service's].
    #[arg(long)]
    pub hub_name: Option<String>,
    /// The service's connection string, of a policy with ServiceConfig [default: the data
    /// directory's owner policy].
    #[arg(long, env = "DPS_CONNECTION_STRING", hide_env_values = true)]
    pub connection_string: Option<String>,
    /// The hub's connection string, of a policy with RegistryWrite [default: the data
    /// directory's owner policy of the hub].
    #[arg(long, env = "DPS_HUB_CONNECTION_STRING", hide_env_values = true)]
    pub hub_connection_string: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// A client of the API whose policies the target names.
enum Client {
    Service(ServiceClient),
    Registry(RegistryClient),
}

impl Client {
    fn policies(&self) -> Policies<'_> {
        match self {
            Client::Service(c) => c.policies(),
            Client::Registry(c) => c.policies(),
        }
    }
}

impl PolicyTarget {
    fn client(&self) -> Result<Client> {
        Ok(match &self.hub_name {
            None => Client::Service(ServiceClient::new(connect(
                self.connection_string.as_deref(),
                &self.server,
                Api::Dps,
            )?)),
            Some(hub) => Client::Registry(RegistryClient::new(connect_hub_named(
                self.hub_connection_string.as_deref(),
                &self.server,
                hub,
            )?)),
        })
    }

    /// How messages name the policy set.
    fn whose(&self) -> String {
        match &self.hub_name {
            None => "the provisioning service".into(),
            Some(hub) => format!("hub '{hub}'"),
        }
    }
}

/// `dps policy show|delete`
#[derive(Args, Debug)]
pub struct PolicyName {
    /// The policy's name.
    #[arg(long, visible_alias = "pn")]
    pub policy_name: String,
    #[command(flatten)]
    pub target: PolicyTarget,
}

/// Rights and keys `create` and `update` set.
#[derive(Args, Debug)]
pub struct PolicySettings {
    /// Rights, space- or comma-separated (the service's: ServiceConfig, EnrollmentRead,
    /// EnrollmentWrite, DeviceConnect, RegistrationStatusRead, RegistrationStatusWrite; a
    /// hub's: RegistryRead, RegistryWrite, ServiceConnect, DeviceConnect).
    #[arg(long, num_args = 1.., value_delimiter = ',')]
    pub rights: Vec<String>,
    /// A primary key to use (base64 of 16 to 64 bytes) [default: made, or kept].
    #[arg(long)]
    pub primary_key: Option<String>,
    /// A secondary key to use [default: made, or kept].
    #[arg(long)]
    pub secondary_key: Option<String>,
}

impl PolicySettings {
    fn rule(&self, name: &str) -> AuthorizationRule {
        AuthorizationRule {
            key_name: name.to_string(),
            primary_key: self.primary_key.clone(),
            secondary_key: self.secondary_key.clone(),
            rights: (!self.rights.is_empty()).then(|| self.rights.join(", ")),
        }
    }
}

/// `dps policy create|update`
#[derive(Args, Debug)]
pub struct PolicyPut {
    /// The policy's name.
    #[arg(long, visible_alias = "pn")]
    pub policy_name: String,
    #[command(flatten)]
    pub settings: PolicySettings,
    #[command(flatten)]
    pub target: PolicyTarget,
}

/// Which key `regenerate-key` makes anew.
#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum RenewKey {
    /// A fresh primary key.
    Primary,
    /// A fresh secondary key.
    Secondary,
    /// The primary and secondary keys trade places.
    Swap,
}

/// `dps policy regenerate-key`
#[derive(Args, Debug)]
pub struct PolicyRegenerate {
    /// The policy's name.
    #[arg(long, visible_alias = "pn")]
    pub policy_name: String,
    /// Which key.
    #[arg(long, visible_alias = "rk", value_enum)]
    pub renew_key: RenewKey,
    #[command(flatten)]
    pub target: PolicyTarget,
}

/// Runs `dps policy …`.
pub async fn run(cmd: PolicyCommand) -> Result<()> {
    match cmd {
        PolicyCommand::Create(a) => {
            let client = a.target.client()?;
            let policies = client.policies();
            let name = &a.policy_name;
            // `PUT` creates or replaces; `create` must not change a policy that is there.
            match policies.get(name).await {
                Ok(_) => anyhow::bail!(
                    "{} already has a policy '{name}'; change it with `dps policy update`",
                    a.target.whose()
                ),
                Err(dps_client::ClientError::Service { status: 404, .. }) => {}
                Err(e) => return Err(e).with_context(|| format!("cannot create policy '{name}'")),
            }
            if a.settings.rights.is_empty() {
                anyhow::bail!("--rights is required to create a policy");
            }
            let made = policies
                .put(name, &a.settings.rule(name))
                .await
                .with_context(|| format!("cannot create policy '{name}'"))?;
            show(&made, a.target.server.json)?;
        }
        PolicyCommand::List(t) => {
            let list = t
                .client()?
                .policies()
                .list()
                .await
                .with_context(|| format!("cannot list the policies of {}", t.whose()))?;
            if t.server.json {
                output::json(&to_value(&list)?);
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|p| vec![p.key_name.clone(), p.rights.clone().unwrap_or_default()])
                    .collect();
                output::table(&["NAME", "RIGHTS"], &rows);
            }
        }
        PolicyCommand::Show(a) => {
            let policy = a
                .target
                .client()?
                .policies()
                .get(&a.policy_name)
                .await
                .with_context(|| format!("cannot show policy '{}'", a.policy_name))?;
            show(&policy, a.target.server.json)?;
        }
        PolicyCommand::Update(a) => {
            let name = &a.policy_name;
            let changed = a
                .target
                .client()?
                .policies()
                .put(name, &a.settings.rule(name))
                .await
                .with_context(|| format!("cannot update policy '{name}'"))?;
            show(&changed, a.target.server.json)?;
        }
        PolicyCommand::Delete(a) => {
            a.target
                .client()?
                .policies()
                .delete(&a.policy_name)
                .await
                .with_context(|| format!("cannot delete policy '{}'", a.policy_name))?;
            if a.target.server.json {
                output::deleted("keyName", &a.policy_name);
            } else {
                out!("deleted policy {}", a.policy_name);
            }
        }
        PolicyCommand::RegenerateKey(a) => {
            let key_type = match a.renew_key {
                RenewKey::Primary => PolicyKeyType::Primary,
                RenewKey::Secondary => PolicyKeyType::Secondary,
                RenewKey::Swap => PolicyKeyType::Swap,
            };
            let renewed = a
                .target
                .client()?
                .policies()
                .regenerate_key(&a.policy_name, key_type)
                .await
                .with_context(|| format!("cannot regenerate a key of policy '{}'", a.policy_name))?;
            show(&renewed, a.target.server.json)?;
        }
    }
    Ok(())
}

fn show(policy: &AuthorizationRule, json: bool) -> Result<()> {
    output::show(
        &to_value(policy)?,
        json,
        &[
            ("Name", "keyName"),
            ("Rights", "rights"),
            ("Primary key", "primaryKey"),
            ("Secondary key", "secondaryKey"),
        ],
    );
    Ok(())
}

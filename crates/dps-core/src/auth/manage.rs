//! The rules a change to a set of shared access policies follows, whoever asks for it (the
//! service API, `dps policy …`, the portal), apart from where the set is kept.
//!
//! Azure manages policies through its management plane, with the subscription's roles; here
//! the caller is itself a policy, so two rules keep a policy from being a way up:
//!
//! - A caller acts only on policies whose rights it holds all of, and grants only rights it
//!   holds: a policy with `ServiceConfig` alone can neither make an `EnrollmentWrite` policy
//!   nor take the owner's keys. Keys of policies beyond the caller's rights are not shown.
//! - Some policy always holds every right of the set (an owner), so the service can always
//!   be managed with the keys in its data directory.

use dps_proto::keys::validate_symmetric_key;

use super::SharedAccessPolicy;
use crate::error::{Error, InvalidArgument, Resource};

/// Whose policies: the provisioning service's or an IoT hub's. Each has its own rights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyScope {
    /// The provisioning service's (`provisioningserviceowner`, …).
    Dps,
    /// An IoT hub's (`iothubowner`, `service`, `device`, …).
    Hub,
}

/// Rights of a provisioning service's policies, as Azure names them.
pub const DPS_RIGHTS: &[&str] = &[
    "ServiceConfig",
    "EnrollmentRead",
    "EnrollmentWrite",
    "DeviceConnect",
    "RegistrationStatusRead",
    "RegistrationStatusWrite",
];

/// Rights of an IoT hub's policies, as Azure names them.
pub const HUB_RIGHTS: &[&str] = &["RegistryRead", "RegistryWrite", "ServiceConnect", "DeviceConnect"];

/// Longest policy name Azure accepts.
pub const MAX_NAME_LEN: usize = 64;

/// Most policies one service or hub holds (Azure's limit for a hub).
pub const MAX_POLICIES: usize = 16;

impl PolicyScope {
    /// Every right a policy of this scope may hold, in Azure's order.
    pub fn rights(self) -> &'static [&'static str] {
        match self {
            PolicyScope::Dps => DPS_RIGHTS,
            PolicyScope::Hub => HUB_RIGHTS,
        }
    }

    /// The right managing the policies needs (besides holding what is granted).
    pub fn manage_right(self) -> &'static str {
        match self {
            PolicyScope::Dps => "ServiceConfig",
            PolicyScope::Hub => "RegistryWrite",
        }
    }

    /// Whether `policy` holds every right of the scope.
    pub fn is_owner(self, policy: &SharedAccessPolicy) -> bool {
        self.rights().iter().all(|r| policy.has_right(r))
    }

    /// Parses rights as Azure writes them (`"RegistryRead, RegistryWrite"`; commas, spaces or
    /// both between names, any case) into this scope's names, each once, in Azure's order.
    pub fn parse_rights(self, text: &str) -> Result<Vec<String>, String> {
        let mut named = Vec::new();
        for word in text.split([',', ' ', '\t']).filter(|w| !w.is_empty()) {
            let Some(right) = self.rights().iter().find(|r| r.eq_ignore_ascii_case(word)) else {
                return Err(format!(
                    "unknown right '{word}'; the rights are {}",
                    self.rights().join(", ")
                ));
            };
            named.push(*right);
        }
        if named.is_empty() {
            return Err(format!("no rights: name one or more of {}", self.rights().join(", ")));
        }
        Ok(self
            .rights()
            .iter()
            .filter(|r| named.contains(r))
            .map(|r| r.to_string())
            .collect())
    }
}

/// A fresh policy key: 32 random bytes, base64 (what Azure makes).
pub fn new_key() -> String {
    use crate::random::Random as _;
    let mut raw = [0u8; 32];
    crate::random::SystemRandom.fill(&mut raw);
    dps_proto::keys::encode_key(&raw)
}

/// Which key of a policy to make anew (`az iot hub policy renew-key --renew-key`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyToRenew {
    /// A fresh primary key.
    Primary,
    /// A fresh secondary key.
    Secondary,
    /// The primary and secondary keys trade places (nothing new is made).
    Swap,
}

/// What a create-or-update of a policy sets; `None` keeps what the policy has (or, for a new
/// policy, makes fresh keys; rights are then required).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyWrite {
    /// The rights, already parsed ([`PolicyScope::parse_rights`]).
    pub rights: Option<Vec<String>>,
    /// A primary key the caller chose (base64 of 16 to 64 bytes).
    pub primary_key: Option<String>,
    /// A secondary key the caller chose.
    pub secondary_key: Option<String>,
}

/// A set of policies and the rules changing it, for one caller.
pub struct PolicyChange<'a> {
    /// Whose policies.
    pub scope: PolicyScope,
    /// The set, changed in place (only when the change is allowed).
    pub policies: &'a mut Vec<SharedAccessPolicy>,
    /// The policy asking, whose rights bound what it may do.
    pub caller: &'a SharedAccessPolicy,
}

impl PolicyChange<'_> {
    /// Creates the policy `name`, or updates the one there; returns it and whether it was
    /// created. `new_key` makes a fresh key when one is needed.
    pub fn put(
        &mut self,
        name: &str,
        write: PolicyWrite,
        mut new_key: impl FnMut() -> String,
    ) -> Result<(SharedAccessPolicy, bool), Error> {
        check_name(name)?;
        let invalid = |reason: String| invalid(name, reason);
        for key in [&write.primary_key, &write.secondary_key].into_iter().flatten() {
            validate_symmetric_key(key).map_err(|e| invalid(e.to_string()))?;
        }
        let at = self.find(name);
        if at.is_none() && self.policies.len() >= MAX_POLICIES {
            return Err(invalid(format!("a set holds at most {MAX_POLICIES} policies")));
        }
        let mut policy = match at {
            Some(i) => {
                self.check_reach(&self.policies[i])?;
                self.policies[i].clone()
            }
            None => SharedAccessPolicy {
                key_name: name.to_string(),
                primary_key: String::new(),
                secondary_key: String::new(),
                rights: write
                    .rights
                    .clone()
                    .ok_or_else(|| invalid("a new policy needs rights".into()))?,
            },
        };
        if let Some(rights) = write.rights {
            policy.rights = rights;
        }
        self.check_reach(&policy)?;
        policy.primary_key = write
            .primary_key
            .or((!policy.primary_key.is_empty()).then(|| policy.primary_key.clone()))
            .unwrap_or_else(&mut new_key);
        policy.secondary_key = write
            .secondary_key
            .or((!policy.secondary_key.is_empty()).then(|| policy.secondary_key.clone()))
            .unwrap_or_else(&mut new_key);
        let created = at.is_none();
        let mut after = self.policies.clone();
        match at {
            Some(i) => after[i] = policy.clone(),
            None => after.push(policy.clone()),
        }
        self.commit(name, after)?;
        Ok((policy, created))
    }

    /// Deletes the policy `name`.
    pub fn delete(&mut self, name: &str) -> Result<(), Error> {
        let i = self.find(name).ok_or_else(|| not_found(name))?;
        self.check_reach(&self.policies[i])?;
        let mut after = self.policies.clone();
        after.remove(i);
        self.commit(name, after)
    }

    /// Makes a key of the policy `name` anew (or swaps its keys); returns the policy.
    pub fn renew_key(
        &mut self,
        name: &str,
        which: KeyToRenew,
        new_key: impl FnOnce() -> String,
    ) -> Result<SharedAccessPolicy, Error> {
        let i = self.find(name).ok_or_else(|| not_found(name))?;
        self.check_reach(&self.policies[i])?;
        let policy = &mut self.policies[i];
        match which {
            KeyToRenew::Primary => policy.primary_key = new_key(),
            KeyToRenew::Secondary => policy.secondary_key = new_key(),
            KeyToRenew::Swap => std::mem::swap(&mut policy.primary_key, &mut policy.secondary_key),
        }
        Ok(policy.clone())
    }

    /// The policy `name`, its keys blank when it holds rights the caller does not.
    pub fn show(&self, name: &str) -> Result<SharedAccessPolicy, Error> {
        let i = self.find(name).ok_or_else(|| not_found(name))?;
        Ok(self.shown(&self.policies[i]))
    }

    /// Every policy, as [`PolicyChange::show`] shows it.
    pub fn list(&self) -> Vec<SharedAccessPolicy> {
        self.policies.iter().map(|p| self.shown(p)).collect()
    }

    fn shown(&self, policy: &SharedAccessPolicy) -> SharedAccessPolicy {
        let mut shown = policy.clone();
        if self.check_reach(policy).is_err() {
            shown.primary_key.clear();
            shown.secondary_key.clear();
        }
        shown
    }

    fn find(&self, name: &str) -> Option<usize> {
        self.policies.iter().position(|p| p.key_name.eq_ignore_ascii_case(name))
    }

    /// Refuses a policy holding a right the caller lacks.
    fn check_reach(&self, policy: &SharedAccessPolicy) -> Result<(), Error> {
        let beyond: Vec<String> = policy
            .rights
            .iter()
            .filter(|r| !self.caller.has_right(r))
            .cloned()
            .collect();
        if beyond.is_empty() {
            return Ok(());
        }
        Err(Error::InsufficientRights {
            policy: self.caller.key_name.clone(),
            needed: beyond,
        })
    }

    /// Replaces the set with `after` when some policy of it still holds every right.
    fn commit(&mut self, name: &str, after: Vec<SharedAccessPolicy>) -> Result<(), Error> {
        if !after.iter().any(|p| self.scope.is_owner(p)) {
            return Err(invalid(
                name,
                format!(
                    "no policy would hold every right ({}); one must, so that the {} can still be managed",
                    self.scope.rights().join(", "),
                    match self.scope {
                        PolicyScope::Dps => "service",
                        PolicyScope::Hub => "hub",
                    }
                ),
            ));
        }
        *self.policies = after;
        Ok(())
    }
}

/// The policy's name: 1 to 64 letters, digits, `.`, `_`, `-`.
fn check_name(name: &str) -> Result<(), Error> {
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(invalid(
            name,
            format!("a policy name is 1 to {MAX_NAME_LEN} letters, digits, '.', '_' or '-'"),
        ));
    }
    Ok(())
}

fn invalid(name: &str, reason: String) -> Error {
    InvalidArgument::Policy {
        name: name.to_string(),
        reason,
    }
    .into()
}

fn not_found(name: &str) -> Error {
    Error::NotFound {
        resource: Resource::SharedAccessPolicy,
        id: name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, rights: &[&str]) -> SharedAccessPolicy {
        SharedAccessPolicy {
            key_name: name.into(),
            primary_key: format!("{name}-primary"),
            secondary_key: format!("{name}-secondary"),
            rights: rights.iter().map(|r| r.to_string()).collect(),
        }
    }

    fn hub_set() -> Vec<SharedAccessPolicy> {
        vec![
            policy("iothubowner", HUB_RIGHTS),
            policy("registryReadWrite", &["RegistryRead", "RegistryWrite"]),
            policy("service", &["ServiceConnect"]),
        ]
    }

    fn counter() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("fresh-{n}")
        }
    }

    #[test]
    fn rights_parse_as_azure_writes_them() {
        let hub = PolicyScope::Hub;
        assert_eq!(
            hub.parse_rights("serviceconnect, RegistryRead,RegistryRead").unwrap(),
            vec!["RegistryRead", "ServiceConnect"]
        );
        assert!(hub
            .parse_rights("EnrollmentRead")
            .unwrap_err()
            .contains("unknown right 'EnrollmentRead'"));
        assert!(hub.parse_rights(" , ").unwrap_err().contains("no rights"));
        assert_eq!(
            PolicyScope::Dps.parse_rights("ServiceConfig").unwrap(),
            vec!["ServiceConfig"]
        );
    }

    #[test]
    fn owner_creates_updates_renews_and_deletes() {
        let mut set = hub_set();
        let owner = set[0].clone();
        let mut change = PolicyChange {
            scope: PolicyScope::Hub,
            policies: &mut set,
            caller: &owner,
        };
        let write = PolicyWrite {
            rights: Some(vec!["DeviceConnect".into()]),
            ..Default::default()
        };
        let (made, created) = change.put("Gateway.1", write, counter()).unwrap();
        assert!(created);
        assert_eq!(
            (made.primary_key.as_str(), made.secondary_key.as_str()),
            ("fresh-1", "fresh-2")
        );
        // An update keeps the keys it does not name.
        let key = dps_proto::keys::encode_key(&[7u8; 32]);
        let write = PolicyWrite {
            rights: Some(vec!["DeviceConnect".into(), "ServiceConnect".into()]),
            secondary_key: Some(key.clone()),
            ..Default::default()
        };
        let (updated, created) = change.put("gateway.1", write, counter()).unwrap();
        assert!(!created);
        assert_eq!(updated.primary_key, "fresh-1");
        assert_eq!(updated.secondary_key, key);
        assert_eq!(updated.key_name, "Gateway.1");
        let swapped = change
            .renew_key("gateway.1", KeyToRenew::Swap, || unreachable!())
            .unwrap();
        assert_eq!(
            (swapped.primary_key.as_str(), swapped.secondary_key.as_str()),
            (key.as_str(), "fresh-1")
        );
        let renewed = change
            .renew_key("gateway.1", KeyToRenew::Primary, || "new".into())
            .unwrap();
        assert_eq!(renewed.primary_key, "new");
        change.delete("GATEWAY.1").unwrap();
        assert_eq!(set.len(), 3);
    }

    #[test]
    fn bad_names_keys_and_new_policies_without_rights_are_refused() {
        let mut set = hub_set();
        let owner = set[0].clone();
        let mut change = PolicyChange {
            scope: PolicyScope::Hub,
            policies: &mut set,
            caller: &owner,
        };
        let rights = || Some(vec!["DeviceConnect".to_string()]);
        for (name, write, says) in [
            (
                "has space",
                PolicyWrite {
                    rights: rights(),
                    ..Default::default()
                },
                "a policy name is",
            ),
            (
                &"x".repeat(65) as &str,
                PolicyWrite {
                    rights: rights(),
                    ..Default::default()
                },
                "1 to 64",
            ),
            ("new", PolicyWrite::default(), "a new policy needs rights"),
            (
                "short",
                PolicyWrite {
                    rights: rights(),
                    primary_key: Some(dps_proto::keys::encode_key(&[1u8; 8])),
                    ..Default::default()
                },
                "got 8",
            ),
            (
                "notbase64",
                PolicyWrite {
                    rights: rights(),
                    secondary_key: Some("!!".into()),
                    ..Default::default()
                },
                "not valid base64",
            ),
        ] {
            let e = change.put(name, write, counter()).unwrap_err();
            assert_eq!(e.code(), dps_proto::codes::ARGUMENT_INVALID, "{name}");
            assert!(e.to_string().contains(says), "{name}: {e}");
        }
        assert_eq!(set, hub_set());
    }

    #[test]
    fn a_policy_is_no_way_up() {
        let mut set = hub_set();
        let rw = set[1].clone();
        let mut change = PolicyChange {
            scope: PolicyScope::Hub,
            policies: &mut set,
            caller: &rw,
        };
        // It cannot grant what it lacks, nor touch a policy holding more than it.
        let write = PolicyWrite {
            rights: Some(vec!["ServiceConnect".into()]),
            ..Default::default()
        };
        let e = change.put("sneaky", write, counter()).unwrap_err();
        assert_eq!(e.code(), dps_proto::codes::INSUFFICIENT_RIGHTS);
        assert!(e.to_string().contains("ServiceConnect"), "{e}");
        let e = change
            .renew_key("iothubowner", KeyToRenew::Primary, || "x".into())
            .unwrap_err();
        assert_eq!(e.code(), dps_proto::codes::INSUFFICIENT_RIGHTS);
        assert!(change.delete("service").is_err());
        // Within its rights it may.
        let write = PolicyWrite {
            rights: Some(vec!["RegistryRead".into()]),
            ..Default::default()
        };
        change.put("reader", write, counter()).unwrap();
        // It sees the others' names and rights, not their keys.
        let shown = change.list();
        assert_eq!(shown.len(), 4);
        assert!(shown[0].primary_key.is_empty() && shown[2].secondary_key.is_empty());
        assert_eq!(shown[1].primary_key, "registryReadWrite-primary");
        assert!(change.show("service").unwrap().primary_key.is_empty());
    }

    #[test]
    fn some_policy_always_holds_every_right() {
        let mut set = hub_set();
        let owner = set[0].clone();
        let mut change = PolicyChange {
            scope: PolicyScope::Hub,
            policies: &mut set,
            caller: &owner,
        };
        let e = change.delete("iothubowner").unwrap_err();
        assert!(e.to_string().contains("no policy would hold every right"), "{e}");
        let demote = PolicyWrite {
            rights: Some(vec!["RegistryRead".into()]),
            ..Default::default()
        };
        assert!(change.put("iothubowner", demote.clone(), counter()).is_err());
        // With a second owner, the first may go.
        let owner2 = PolicyWrite {
            rights: Some(HUB_RIGHTS.iter().map(|r| r.to_string()).collect()),
            ..Default::default()
        };
        change.put("owner2", owner2, counter()).unwrap();
        change.put("iothubowner", demote, counter()).unwrap();
        change.delete("iothubowner").unwrap();
        let e = change.show("iothubowner").unwrap_err();
        assert_eq!(e.code(), dps_proto::codes::PATH_NOT_FOUND);
    }
}

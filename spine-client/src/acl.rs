//! Linked ACL maps for security admins (DESIGN.md §6): grant and revoke roles, link and unlink
//! maps, and resolve an aggregate from the Spine to check and explain a principal's roles.
//!
//! Conventions: an ACL map's key is a principal — a user (`alice`) or a full CA name
//! (`alice-phone`) — and its value the principal's roles, a JSON array of strings (a single
//! string counts as one role). The key `__link_key__` holds an array of full map names whose
//! grants the map includes. A CA is granted what its full name or its owner has.
//!
//! Edits read the map and write one compare-and-swap change set, retrying on conflicts, so
//! concurrent admins never lose each other's grants.

use std::collections::BTreeSet;
use std::sync::Arc;

use authz_aggregate::{AggregateIndex, AggregateSnapshot, Explanation, LINK_KEY};
use serde_json::Value;
use sharing_map::{AppName, CaName, ChangeSet, Entry, MIN_USER_LEN, MapName, SharingMap, UpdateId};

use crate::{Client, ClientError, PUT_CONFLICT_RETRIES};

/// Why an ACL edit or query failed.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    /// The Spine refused or could not be reached.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A principal is neither a user name nor a CA name.
    #[error(
        "principal {0:?} is neither a user (at least {MIN_USER_LEN} of [a-z0-9]) nor a CA (owner-local)"
    )]
    BadPrincipal(String),
    /// A role is not a plain name.
    #[error("role {0:?} must be non-empty and printable, without spaces")]
    BadRole(String),
    /// An existing value is not a role list or link list.
    #[error("map {map} key {key:?} holds {value}, not a list of {what}; fix or remove it first")]
    NotAList {
        /// The map.
        map: String,
        /// The key.
        key: String,
        /// What it holds.
        value: String,
        /// Roles or map names.
        what: &'static str,
    },
    /// A generated update id broke a limit (a bug).
    #[error(transparent)]
    Limit(#[from] sharing_map::LimitError),
    /// Too many concurrent edits.
    #[error("map {0} kept changing under {PUT_CONFLICT_RETRIES} attempts; try again")]
    Contended(String),
}

/// A principal as ACL maps key it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AclPrincipal {
    /// Every CA of this user.
    User(String),
    /// One CA.
    Ca(CaName),
}

impl AclPrincipal {
    /// Parses `alice` or `alice-phone`.
    pub fn parse(text: &str) -> Result<Self, AclError> {
        if text.contains('-') {
            return CaName::parse(text)
                .map(AclPrincipal::Ca)
                .map_err(|_| AclError::BadPrincipal(text.to_string()));
        }
        if text.len() >= MIN_USER_LEN
            && text
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        {
            Ok(AclPrincipal::User(text.to_string()))
        } else {
            Err(AclError::BadPrincipal(text.to_string()))
        }
    }

    /// The key it has in an ACL map.
    pub fn key(&self) -> String {
        match self {
            AclPrincipal::User(u) => u.clone(),
            AclPrincipal::Ca(ca) => ca.to_string(),
        }
    }

    /// The keys whose values grant it: a CA's full name and its owner; a user's name.
    pub fn granting_keys(&self) -> Vec<String> {
        match self {
            AclPrincipal::User(u) => vec![u.clone()],
            AclPrincipal::Ca(ca) => vec![ca.to_string(), ca.owner().to_string()],
        }
    }
}

fn check_role(role: &str) -> Result<(), AclError> {
    if role.is_empty() || role.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(AclError::BadRole(role.to_string()));
    }
    Ok(())
}

/// The roles a value grants: a string is one role, an array its string items; anything else
/// none.
pub fn roles_of(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

/// A list value (roles or links) from an existing entry, which must be absent, a string or an
/// array of strings.
fn list(map: &SharingMap, key: &str, what: &'static str) -> Result<Vec<String>, AclError> {
    match map.get_value(key) {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => Ok(items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()),
        Some(other) => Err(AclError::NotAList {
            map: map.name().to_string(),
            key: key.to_string(),
            value: other.to_string(),
            what,
        }),
    }
}

fn list_entry(items: Vec<String>) -> Option<Entry> {
    (!items.is_empty()).then(|| Entry::value(Value::from(items)))
}

/// What an edit did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edited {
    /// The map's version after the edit (unchanged if nothing needed changing).
    pub version: u64,
    /// Whether the map changed.
    pub changed: bool,
}

impl Client {
    /// Reads `key` of `map`, computes its new value with `edit` (`None` removes it) and writes
    /// it with compare-and-swap, retrying on conflicts. Creates the map when `create` is set.
    async fn edit_list(
        &self,
        app: &AppName,
        map: &MapName,
        key: &str,
        what: &'static str,
        create: bool,
        edit: impl Fn(Vec<String>) -> Vec<String>,
    ) -> Result<Edited, AclError> {
        if create {
            self.create_map(app, map, Vec::new()).await?;
        }
        let update_id = UpdateId::parse(&format!("acl-{:016x}", rand::random::<u64>()))?;
        for _ in 0..=PUT_CONFLICT_RETRIES {
            let current = self
                .get_keys(app, map, vec![key.to_string()], false)
                .await?;
            let before = list(&current, key, what)?;
            let after = edit(before.clone());
            if after == before {
                return Ok(Edited {
                    version: current.version(),
                    changed: false,
                });
            }
            let cs = ChangeSet::from_ops(
                map.clone(),
                current.version(),
                update_id.clone(),
                [(Arc::from(key), list_entry(after))],
            );
            match self.update(app, vec![cs]).await {
                Ok(versions) => {
                    return Ok(Edited {
                        version: versions.first().copied().unwrap_or_default(),
                        changed: true,
                    });
                }
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AclError::Contended(map.to_string()))
    }

    /// Gives `principal` `role` in ACL map `map` (created if missing).
    pub async fn acl_grant(
        &self,
        app: &AppName,
        map: &MapName,
        principal: &AclPrincipal,
        role: &str,
    ) -> Result<Edited, AclError> {
        check_role(role)?;
        self.edit_list(app, map, &principal.key(), "roles", true, |mut roles| {
            if !roles.iter().any(|r| r == role) {
                roles.push(role.to_string());
            }
            roles
        })
        .await
    }

    /// Takes `role` (or, without one, every role) from `principal` in `map`.
    pub async fn acl_revoke(
        &self,
        app: &AppName,
        map: &MapName,
        principal: &AclPrincipal,
        role: Option<&str>,
    ) -> Result<Edited, AclError> {
        self.edit_list(
            app,
            map,
            &principal.key(),
            "roles",
            false,
            |roles| match role {
                Some(role) => roles.into_iter().filter(|r| r != role).collect(),
                None => Vec::new(),
            },
        )
        .await
    }

    /// Makes `map` include the grants of `target` (and of everything `target` links to).
    pub async fn acl_link(
        &self,
        app: &AppName,
        map: &MapName,
        target: &MapName,
    ) -> Result<Edited, AclError> {
        let target = target.to_string();
        self.edit_list(app, map, LINK_KEY, "map names", true, |mut links| {
            if !links.contains(&target) {
                links.push(target.clone());
            }
            links
        })
        .await
    }

    /// Removes the link from `map` to `target`.
    pub async fn acl_unlink(
        &self,
        app: &AppName,
        map: &MapName,
        target: &MapName,
    ) -> Result<Edited, AclError> {
        let target = target.to_string();
        self.edit_list(app, map, LINK_KEY, "map names", false, |links| {
            links.into_iter().filter(|l| *l != target).collect()
        })
        .await
    }

    /// Resolves the aggregate rooted at `root` from the Spine's current state: the root and
    /// every map reachable through links (linearizable reads, one map at a time; maps that do
    /// not exist are reported missing). For a consistent view that follows updates, use the
    /// node agent's `Aggregate`.
    pub async fn acl_aggregate(
        &self,
        app: &AppName,
        root: &MapName,
    ) -> Result<AggregateSnapshot, AclError> {
        let mut index = AggregateIndex::new(root.clone());
        let mut tried: BTreeSet<MapName> = BTreeSet::new();
        loop {
            let next: Vec<MapName> = index
                .wanted()
                .into_iter()
                .filter(|m| index.held(m).is_none() && !tried.contains(m))
                .collect();
            if next.is_empty() {
                return Ok(index.snapshot());
            }
            for name in next {
                tried.insert(name.clone());
                match self.get_map(app, &name, false).await {
                    Ok(map) => {
                        index.update_map(map);
                    }
                    Err(e) if e.code() == tonic::Code::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
}

/// The roles `principal` has in an aggregate, with where each comes from.
pub fn explain(
    snapshot: &AggregateSnapshot,
    principal: &AclPrincipal,
) -> Vec<(String, Explanation)> {
    principal
        .granting_keys()
        .into_iter()
        .flat_map(|key| {
            snapshot
                .explain(&key)
                .into_iter()
                .map(move |e| (key.clone(), e))
        })
        .collect()
}

/// Whether `principal` has `role` in an aggregate; without a role, whether any value grants it
/// (as aggregate rules decide).
pub fn check(snapshot: &AggregateSnapshot, principal: &AclPrincipal, role: Option<&str>) -> bool {
    principal.granting_keys().iter().any(|key| {
        snapshot.get_all(key).iter().any(|found| match role {
            // Like the aggregate rules: any value grants.
            None => true,
            Some(role) => roles_of(found.value()).iter().any(|r| r == role),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn principals_parse_and_grant_through_owner_and_full_name() -> Result<(), AclError> {
        assert_eq!(
            AclPrincipal::parse("alice")?.granting_keys(),
            vec!["alice".to_string()]
        );
        assert_eq!(
            AclPrincipal::parse("alice-phone")?.granting_keys(),
            vec!["alice-phone".to_string(), "alice".to_string()]
        );
        for bad in ["al", "Alice", "alice-", "a-b-c-d", ""] {
            assert!(AclPrincipal::parse(bad).is_err(), "{bad}");
        }
        Ok(())
    }

    #[test]
    fn roles_are_strings_or_arrays_of_strings() {
        assert_eq!(roles_of(&json!("admin")), vec!["admin"]);
        assert_eq!(roles_of(&json!(["a", 3, "b"])), vec!["a", "b"]);
        assert!(roles_of(&json!({"x": 1})).is_empty());
        assert!(check_role("clerk").is_ok());
        assert!(check_role("two words").is_err());
        assert!(check_role("").is_err());
    }
}

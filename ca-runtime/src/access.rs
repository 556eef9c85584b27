//! Who may call a CA (DESIGN.md §6, §9.9): its owner, or a caller a rule of the app's access
//! policy grants. A pure core: the activation pins the policy's aggregates with the message
//! (the node agent's snapshot of the turn) and asks [`AccessPolicy::authorize`].
//!
//! The caller is the CA a client's token speaks for ([`Sender::Client::caller`]). A caller with
//! the called CA's owner (`alice-tablet` calling `alice-phone`, or an owner's or admin's token
//! speaking as the CA itself) is the owner: it may call every method, open sessions and create
//! the CA. Any other caller needs a rule for each method of its message, runtime methods too
//! (`@listen`, `@ack`, `@begin`, `@end`): simple rules on the caller's owner, local name and the
//! method, or aggregate rules granted when the caller's owner or name has a value in an ACL
//! aggregate. An aggregate rule's root may name `{ca}` and `{owner}` of the *called* CA, so
//! `{"aggregate": "{ca}-acl", "method": "*"}` lets each CA's owner grant access in its own map
//! `alice-phone-acl`. A grant takes effect at the first message that pins the map version
//! holding it, a revoke at the first that pins the one removing it.
//!
//! [`Sender::Client::caller`]: crate::turn::Sender::Client

use std::collections::BTreeMap;

use authz_aggregate::{Caller, Context, Policy, Rule};
use serde::Deserialize;
use sharing_map::{CaName, MapName};

use crate::CaError;
use crate::checkpoint::state_map_name;
use crate::reads::{Pins, ReadSpec};

/// One rule as configured: `{"owner", "local", "method"}` or `{"aggregate", "method"}` (the
/// aggregate's root may hold `{ca}` and `{owner}`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum RuleSpec {
    /// A simple rule (patterns with `*`, `!SELF`, `!CA_LOCAL`).
    Simple {
        /// The caller's owner.
        owner: String,
        /// The caller's local name.
        local: String,
        /// The method.
        method: String,
    },
    /// An aggregate rule.
    Aggregate {
        /// The root map of the ACL aggregate, e.g. `{ca}-acl`.
        aggregate: String,
        /// The method.
        method: String,
    },
}

/// An app's access policy: who besides the owner may call its CAs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessPolicy {
    rules: Vec<RuleSpec>,
}

/// Whether `caller` counts as `ca`'s owner.
pub fn is_owner(caller: &CaName, ca: &CaName) -> bool {
    caller.owner() == ca.owner()
}

impl AccessPolicy {
    /// A policy of `rules`; each is checked now (against an example CA), so a bad pattern or
    /// root is refused at start, not at the first call.
    pub fn new(rules: Vec<RuleSpec>) -> Result<Self, String> {
        let policy = Self { rules };
        let example = CaName::parse("someone-device").map_err(|e| e.to_string())?;
        policy
            .rules_for(&example)
            .map_err(|e| format!("access rule: {}", e.message))?;
        Ok(policy)
    }

    /// A policy from its JSON form, a list of rules.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, String> {
        let rules: Vec<RuleSpec> = serde_json::from_value(value.clone()).map_err(|e| {
            format!(
                "access rules must be a list of {{\"owner\", \"local\", \"method\"}} or {{\"aggregate\", \"method\"}}: {e}"
            )
        })?;
        Self::new(rules)
    }

    /// What a message from a caller other than the owner reads: the aggregates of the rules.
    pub fn reads(&self) -> Vec<ReadSpec> {
        self.rules
            .iter()
            .filter_map(|r| match r {
                RuleSpec::Aggregate { aggregate, .. } => {
                    Some(ReadSpec::Aggregate(aggregate.clone()))
                }
                RuleSpec::Simple { .. } => None,
            })
            .collect()
    }

    fn rules_for(&self, ca: &CaName) -> Result<Vec<Rule>, CaError> {
        let bad = |e: authz_aggregate::RuleError| CaError::invalid(e.to_string());
        self.rules
            .iter()
            .map(|r| match r {
                RuleSpec::Simple {
                    owner,
                    local,
                    method,
                } => Rule::simple(owner, local, method).map_err(bad),
                RuleSpec::Aggregate { aggregate, method } => {
                    let text = aggregate
                        .replace("{ca}", ca.as_str())
                        .replace("{owner}", ca.owner());
                    let root = MapName::parse(&text).map_err(|e| {
                        CaError::invalid(format!(
                            "aggregate root {text:?} (from {aggregate:?}): {e}"
                        ))
                    })?;
                    Rule::aggregate(root, method).map_err(bad)
                }
            })
            .collect()
    }

    /// Whether `caller` may call each of `methods` of CA `ca`, with the aggregates `pins` holds
    /// for this message. An owner may call anything; anyone else needs a rule per method. The
    /// denial says which method, why, and at which versions the aggregates were read.
    pub fn authorize<'m>(
        &self,
        caller: &CaName,
        ca: &CaName,
        methods: impl IntoIterator<Item = &'m str>,
        pins: &Pins,
    ) -> Result<(), CaError> {
        if is_owner(caller, ca) {
            return Ok(());
        }
        let policy = Policy::new(self.rules_for(ca)?);
        let resource = state_map_name(ca)?;
        let roots: Vec<MapName> = policy
            .rules
            .iter()
            .filter_map(|r| match r {
                Rule::Aggregate { root, .. } => Some(root.clone()),
                Rule::Simple { .. } => None,
            })
            .collect();
        let mut context = Context::new(&resource);
        let mut versions = BTreeMap::new();
        for root in &roots {
            if let Some(a) = pins.aggregate(root.as_str()) {
                context = context.with_aggregate(a);
                versions.extend(a.version_vector());
            }
        }
        let who = Caller::Ca(caller.clone());
        for method in methods {
            let decision = policy.is_authorized(&who, method, &context);
            if !decision.is_allowed() {
                let at: BTreeMap<String, u64> =
                    versions.iter().map(|(m, v)| (m.to_string(), *v)).collect();
                return Err(CaError::not_authorized(format!(
                    "CA {caller} may not call {method} of CA {ca}: only its owner {} may, or a caller an access rule grants ({decision}; aggregates read at versions {})",
                    ca.owner(),
                    serde_json::to_string(&at).unwrap_or_default()
                )));
            }
        }
        Ok(())
    }
}

/// The access policies of a host's apps (`host.json`: env `rules` of component `host`, by app).
pub type Access = BTreeMap<sharing_map::AppName, AccessPolicy>;

#[cfg(test)]
mod tests {
    use super::*;
    use authz_aggregate::AggregateIndex;
    use serde_json::json;
    use sharing_map::{Entry, SharingMap};
    use std::sync::Arc;

    fn ca(name: &str) -> CaName {
        CaName::parse(name).expect("ca")
    }

    fn acl(version_entries: &[(&str, serde_json::Value)]) -> authz_aggregate::AggregateSnapshot {
        let name = MapName::parse("alice-phone-acl").expect("map");
        let map = SharingMap::with_entries(
            name.clone(),
            version_entries
                .iter()
                .map(|(k, v)| (Arc::from(*k), Entry::value(v.clone()))),
        );
        let mut index = AggregateIndex::new(name);
        index.update_map(map);
        index.snapshot()
    }

    #[test]
    fn owners_may_do_anything_others_need_a_rule_per_method() {
        let policy = AccessPolicy::from_json(&json!([
            {"owner": "*", "local": "*", "method": "get"},
            {"aggregate": "{ca}-acl", "method": "*"}
        ]))
        .expect("policy");
        assert_eq!(policy.reads(), vec![ReadSpec::Aggregate("{ca}-acl".into())]);
        let (alice, bob) = (ca("alice-phone"), ca("bob-phone"));
        let none = Pins::default();
        assert!(
            policy
                .authorize(&ca("alice-tablet"), &alice, ["increment", "@listen"], &none)
                .is_ok()
        );
        assert!(policy.authorize(&bob, &alice, ["get"], &none).is_ok());
        let e = policy
            .authorize(&bob, &alice, ["get", "increment"], &none)
            .expect_err("no rule");
        assert_eq!(e.code, ca_client::ErrorCode::NotAuthorized);
        assert!(
            e.message.contains("increment") && e.message.contains("alice-phone-acl"),
            "{e}"
        );
        let granted = Pins::default().with_aggregate(acl(&[("bob-phone", json!(["caller"]))]));
        assert!(
            policy
                .authorize(&bob, &alice, ["increment", "@listen"], &granted)
                .is_ok()
        );
        let other = Pins::default().with_aggregate(acl(&[("carl", json!(["caller"]))]));
        let e = policy
            .authorize(&bob, &alice, ["increment"], &other)
            .expect_err("not granted");
        assert!(e.message.contains("{\"alice-phone-acl\":0}"), "{e}");
        // An owner's name grants all of its CAs.
        let by_owner = Pins::default().with_aggregate(acl(&[("bob", json!(["caller"]))]));
        assert!(
            policy
                .authorize(&ca("bob-laptop"), &alice, ["x"], &by_owner)
                .is_ok()
        );
    }

    #[test]
    fn an_empty_policy_admits_only_the_owner_and_bad_rules_are_refused() {
        let policy = AccessPolicy::default();
        assert!(
            policy
                .authorize(&ca("alice-x"), &ca("alice-phone"), ["m"], &Pins::default())
                .is_ok()
        );
        assert!(
            policy
                .authorize(&ca("bob-x"), &ca("alice-phone"), ["m"], &Pins::default())
                .is_err()
        );
        for bad in [
            json!([{"owner": "Bob", "local": "*", "method": "*"}]),
            json!([{"aggregate": "{ca}-ACL", "method": "*"}]),
            json!([{"aggregate": "x", "method": ""}]),
            json!({"rules": []}),
        ] {
            assert!(AccessPolicy::from_json(&bad).is_err(), "{bad}");
        }
    }
}

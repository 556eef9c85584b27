//! Authorization rules: who may call which method of a map.
//!
//! A [`Policy`] is an ordered list of [`Rule`]s; the first rule that matches grants the call, and
//! a call no rule grants is denied. Two kinds of rule:
//!
//! - **simple**: patterns for the caller's CA owner, the caller's CA local name and the method.
//!   A pattern is a literal, or contains `*` wildcards (any run of characters, `*` alone matches
//!   everything). Two special values refer to the *resource*, the map whose method is called,
//!   through its writer CA `owner-local` (DESIGN.md §2):
//!   - `!SELF` (owner pattern only): the caller's owner is the writer's owner, i.e. the caller
//!     is one of the CAs of the user who owns the map;
//!   - `!CA_LOCAL` (local pattern only): the caller's local name is the writer's local name
//!     (`*-phone` for a map written by `alice-phone`).
//!
//!   So `!SELF` / `!CA_LOCAL` together match exactly the map's writer CA.
//! - **aggregate**: granted when the caller's owner (`alice`) or full CA name (`alice-phone`) is
//!   a key with any value in the aggregate rooted at a given map, as pinned in the [`Context`].
//!
//! System methods, whose names start with [`SYSTEM_METHOD_PREFIX`] (`__`, like the reserved
//! `__link_key__`), are denied to every caller but [`Caller::System`], whatever the rules say.
//! The system may call anything.

use std::fmt;

use serde::{Deserialize, Serialize};
use sharing_map::{CaName, MapName};

use crate::aggregate::AggregateSnapshot;

/// Methods whose names start with this are system methods.
pub const SYSTEM_METHOD_PREFIX: &str = "__";

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Caller {
    /// The platform itself (replication, administration): allowed everything.
    System,
    /// A Cloud Assistant.
    Ca(CaName),
}

/// A rule that could not be built, quoting the pattern and the rule it broke.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field} pattern {pattern:?}: {rule}")]
pub struct RuleError {
    /// Which pattern: "owner", "local" or "method".
    pub field: &'static str,
    /// The pattern as given.
    pub pattern: String,
    /// What is wrong with it.
    pub rule: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Matcher {
    Any,
    Exact,
    /// The pattern split at its `*`s; at least two parts.
    Glob(Vec<String>),
    WriterOwner,
    WriterLocal,
}

/// One pattern of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    matcher: Matcher,
}

impl Pattern {
    /// A pattern for the caller's CA owner: a name part with optional `*`s, or `!SELF`.
    pub fn owner(text: &str) -> Result<Self, RuleError> {
        Self::parse("owner", text, "!SELF", Matcher::WriterOwner)
    }

    /// A pattern for the caller's CA local name: a name part with optional `*`s, or `!CA_LOCAL`.
    pub fn local(text: &str) -> Result<Self, RuleError> {
        Self::parse("local", text, "!CA_LOCAL", Matcher::WriterLocal)
    }

    /// A pattern for the method name: any non-empty text with optional `*`s.
    pub fn method(text: &str) -> Result<Self, RuleError> {
        let fail = |rule: &str| RuleError {
            field: "method",
            pattern: text.to_string(),
            rule: rule.to_string(),
        };
        if text.is_empty() {
            return Err(fail("is empty; use \"*\" for any method"));
        }
        if text.starts_with('!') {
            return Err(fail(
                "special values (!SELF, !CA_LOCAL) apply to the owner and local patterns only",
            ));
        }
        Ok(Self::glob(text))
    }

    fn parse(
        field: &'static str,
        text: &str,
        special: &str,
        special_matcher: Matcher,
    ) -> Result<Self, RuleError> {
        if text == special {
            return Ok(Self {
                text: text.to_string(),
                matcher: special_matcher,
            });
        }
        let fail = |rule: String| RuleError {
            field,
            pattern: text.to_string(),
            rule,
        };
        if text.is_empty() {
            return Err(fail("is empty; use \"*\" for any".to_string()));
        }
        if let Some(bad) = text
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '*'))
        {
            return Err(fail(format!(
                "contains {bad:?}; a {field} pattern is [a-z0-9] with '*' wildcards, or {special}"
            )));
        }
        Ok(Self::glob(text))
    }

    fn glob(text: &str) -> Self {
        let matcher = if text.chars().all(|c| c == '*') {
            Matcher::Any
        } else if text.contains('*') {
            Matcher::Glob(text.split('*').map(str::to_string).collect())
        } else {
            Matcher::Exact
        };
        Self {
            text: text.to_string(),
            matcher,
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `value` matches; `writer` is the resource's writer CA for the special values.
    fn matches(&self, value: &str, writer: &CaName) -> bool {
        match &self.matcher {
            Matcher::Any => true,
            Matcher::Exact => self.text == value,
            Matcher::Glob(parts) => glob_matches(parts, value),
            Matcher::WriterOwner => value == writer.owner(),
            Matcher::WriterLocal => value == writer.local(),
        }
    }
}

/// `parts` is a pattern split at `*`: the first part is a prefix, the last a suffix, the middle
/// ones occur in order between them. Greedy leftmost matching of the middle parts is exact here
/// because `*` matches any run.
fn glob_matches(parts: &[String], value: &str) -> bool {
    let (Some(first), Some(last)) = (parts.first(), parts.last()) else {
        return true;
    };
    if value.len() < first.len() + last.len()
        || !value.starts_with(first.as_str())
        || !value.ends_with(last.as_str())
    {
        return false;
    }
    let mut rest = &value[first.len()..value.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part.as_str()) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// One rule of a policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RuleWire", into = "RuleWire")]
pub enum Rule {
    /// Granted when the caller's owner, local name and the method all match.
    Simple {
        /// The caller's CA owner.
        owner: Pattern,
        /// The caller's CA local name.
        local: Pattern,
        /// The method.
        method: Pattern,
    },
    /// Granted when the method matches and the caller's owner or full CA name has a value in the
    /// aggregate rooted at `root`.
    Aggregate {
        /// The aggregate's root map.
        root: MapName,
        /// The method.
        method: Pattern,
    },
}

impl Rule {
    /// A simple rule, e.g. `Rule::simple("!SELF", "*", "get*")`.
    pub fn simple(owner: &str, local: &str, method: &str) -> Result<Self, RuleError> {
        Ok(Rule::Simple {
            owner: Pattern::owner(owner)?,
            local: Pattern::local(local)?,
            method: Pattern::method(method)?,
        })
    }

    /// An aggregate rule over the aggregate rooted at `root`.
    pub fn aggregate(root: MapName, method: &str) -> Result<Self, RuleError> {
        Ok(Rule::Aggregate {
            root,
            method: Pattern::method(method)?,
        })
    }
}

/// The JSON form of a rule: `{"owner", "local", "method"}` or `{"aggregate", "method"}`.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum RuleWire {
    Simple {
        owner: String,
        local: String,
        method: String,
    },
    Aggregate {
        aggregate: MapName,
        method: String,
    },
}

impl TryFrom<RuleWire> for Rule {
    type Error = RuleError;
    fn try_from(wire: RuleWire) -> Result<Self, RuleError> {
        match wire {
            RuleWire::Simple {
                owner,
                local,
                method,
            } => Rule::simple(&owner, &local, &method),
            RuleWire::Aggregate { aggregate, method } => Rule::aggregate(aggregate, &method),
        }
    }
}

impl From<Rule> for RuleWire {
    fn from(rule: Rule) -> Self {
        match rule {
            Rule::Simple {
                owner,
                local,
                method,
            } => RuleWire::Simple {
                owner: owner.text,
                local: local.text,
                method: method.text,
            },
            Rule::Aggregate { root, method } => RuleWire::Aggregate {
                aggregate: root,
                method: method.text,
            },
        }
    }
}

/// What a decision is about besides the caller and the method: the map whose method is called,
/// and the aggregates aggregate rules may consult (pinned for the whole message).
#[derive(Clone, Debug)]
pub struct Context<'a> {
    resource: &'a MapName,
    aggregates: Vec<&'a AggregateSnapshot>,
}

impl<'a> Context<'a> {
    /// A context for a call of a method of `resource`.
    pub fn new(resource: &'a MapName) -> Self {
        Self {
            resource,
            aggregates: Vec::new(),
        }
    }

    /// Makes a pinned aggregate available to aggregate rules (looked up by its root).
    pub fn with_aggregate(mut self, aggregate: &'a AggregateSnapshot) -> Self {
        self.aggregates.push(aggregate);
        self
    }

    fn aggregate(&self, root: &MapName) -> Option<&'a AggregateSnapshot> {
        self.aggregates.iter().copied().find(|a| a.root() == root)
    }
}

/// Why a call was allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Grant {
    /// The system may call anything.
    System,
    /// The simple rule at this index matched.
    Rule {
        /// Index in the policy.
        index: usize,
    },
    /// The aggregate rule at this index matched: `key` has a value in `map`.
    Aggregate {
        /// Index in the policy.
        index: usize,
        /// The caller's owner or full CA name.
        key: String,
        /// The first map (by name) of the aggregate holding a value under `key`.
        map: MapName,
    },
}

/// Why a call was denied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denial {
    /// A system method, and the caller is not the system.
    SystemMethod {
        /// The method.
        method: String,
    },
    /// No rule matched.
    NoMatchingRule {
        /// Aggregates that rules refer to but the context did not provide.
        unavailable: Vec<MapName>,
    },
}

/// The outcome of [`Policy::is_authorized`], with its reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed.
    Allow(Grant),
    /// Denied.
    Deny(Denial),
}

impl Decision {
    /// Whether the call is allowed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Allow(Grant::System) => f.write_str("allowed: the system may call anything"),
            Decision::Allow(Grant::Rule { index }) => write!(f, "allowed by rule {index}"),
            Decision::Allow(Grant::Aggregate { index, key, map }) => write!(
                f,
                "allowed by aggregate rule {index}: {key:?} has a value in map {map}"
            ),
            Decision::Deny(Denial::SystemMethod { method }) => write!(
                f,
                "denied: {method:?} is a system method (prefix {SYSTEM_METHOD_PREFIX:?}); only the system may call it"
            ),
            Decision::Deny(Denial::NoMatchingRule { unavailable }) if unavailable.is_empty() => {
                f.write_str("denied: no rule matches")
            }
            Decision::Deny(Denial::NoMatchingRule { unavailable }) => {
                write!(f, "denied: no rule matches (aggregates not available:")?;
                for root in unavailable {
                    write!(f, " {root}")?;
                }
                f.write_str(")")
            }
        }
    }
}

/// An ordered list of rules.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Policy {
    /// The rules, tried in order.
    pub rules: Vec<Rule>,
}

impl Policy {
    /// A policy of these rules.
    pub fn new(rules: Vec<Rule>) -> Self {
        Self { rules }
    }

    /// Whether `caller` may call `method` on the context's resource, and why.
    pub fn is_authorized(&self, caller: &Caller, method: &str, ctx: &Context<'_>) -> Decision {
        let ca = match caller {
            Caller::System => return Decision::Allow(Grant::System),
            Caller::Ca(ca) => ca,
        };
        if method.starts_with(SYSTEM_METHOD_PREFIX) {
            return Decision::Deny(Denial::SystemMethod {
                method: method.to_string(),
            });
        }
        let writer = ctx.resource.writer();
        let mut unavailable = Vec::new();
        for (index, rule) in self.rules.iter().enumerate() {
            match rule {
                Rule::Simple {
                    owner,
                    local,
                    method: pattern,
                } => {
                    if pattern.matches(method, &writer)
                        && owner.matches(ca.owner(), &writer)
                        && local.matches(ca.local(), &writer)
                    {
                        return Decision::Allow(Grant::Rule { index });
                    }
                }
                Rule::Aggregate {
                    root,
                    method: pattern,
                } => {
                    if !pattern.matches(method, &writer) {
                        continue;
                    }
                    let Some(aggregate) = ctx.aggregate(root) else {
                        if !unavailable.contains(root) {
                            unavailable.push(root.clone());
                        }
                        continue;
                    };
                    for key in [ca.owner(), ca.as_str()] {
                        if let Some(found) = aggregate.get_all(key).first() {
                            return Decision::Allow(Grant::Aggregate {
                                index,
                                key: key.to_string(),
                                map: found.map().clone(),
                            });
                        }
                    }
                }
            }
        }
        Decision::Deny(Denial::NoMatchingRule { unavailable })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{AggregateIndex, LINK_KEY};
    use serde_json::json;
    use sharing_map::{Entry, SharingMap};
    use std::sync::Arc;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn ca(s: &str) -> Result<Caller, sharing_map::NameError> {
        Ok(Caller::Ca(CaName::parse(s)?))
    }

    #[test]
    fn globs_match_like_shell_wildcards() {
        let cases = [
            ("get*", "get", true),
            ("get*", "getall", true),
            ("get*", "xget", false),
            ("*all", "getall", true),
            ("g*t*l", "getall", true),
            ("g*t*l", "gtl", true),
            ("a*a", "a", false),
            ("a*a", "aa", true),
            ("*x*", "abc", false),
            ("**", "", true),
        ];
        for (pattern, value, expected) in cases {
            let p = Pattern::method(pattern).unwrap_or_else(|e| panic!("{e}"));
            let writer = CaName::parse("alice-phone").unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(p.matches(value, &writer), expected, "{pattern} ~ {value}");
        }
    }

    #[test]
    fn self_and_ca_local_refer_to_the_maps_writer() -> TestResult {
        let map = MapName::parse("alice-phone-prices")?;
        let ctx = Context::new(&map);
        let writer_only = Policy::new(vec![Rule::simple("!SELF", "!CA_LOCAL", "*")?]);
        assert!(
            writer_only
                .is_authorized(&ca("alice-phone")?, "set", &ctx)
                .is_allowed()
        );
        assert!(
            !writer_only
                .is_authorized(&ca("alice-tablet")?, "set", &ctx)
                .is_allowed()
        );
        assert!(
            !writer_only
                .is_authorized(&ca("bob-phone")?, "set", &ctx)
                .is_allowed()
        );

        let same_user = Policy::new(vec![Rule::simple("!SELF", "*", "get*")?]);
        assert!(
            same_user
                .is_authorized(&ca("alice-tablet")?, "getall", &ctx)
                .is_allowed()
        );
        assert!(
            !same_user
                .is_authorized(&ca("alice-tablet")?, "set", &ctx)
                .is_allowed()
        );

        let same_device = Policy::new(vec![Rule::simple("*", "!CA_LOCAL", "sync")?]);
        assert_eq!(
            same_device.is_authorized(&ca("bob-phone")?, "sync", &ctx),
            Decision::Allow(Grant::Rule { index: 0 })
        );
        assert!(
            !same_device
                .is_authorized(&ca("bob-tv")?, "sync", &ctx)
                .is_allowed()
        );
        Ok(())
    }

    #[test]
    fn system_methods_are_for_the_system_only() -> TestResult {
        let map = MapName::parse("alice-phone-prices")?;
        let ctx = Context::new(&map);
        let everyone = Policy::new(vec![Rule::simple("*", "*", "*")?]);
        let d = everyone.is_authorized(&ca("alice-phone")?, "__compact", &ctx);
        assert!(
            matches!(d, Decision::Deny(Denial::SystemMethod { .. })),
            "{d}"
        );
        assert!(d.to_string().contains("system method"));
        assert_eq!(
            Policy::default().is_authorized(&Caller::System, "__compact", &ctx),
            Decision::Allow(Grant::System)
        );
        Ok(())
    }

    #[test]
    fn aggregate_rules_grant_by_owner_or_full_name() -> TestResult {
        let root = MapName::parse("acme-admin-roles")?;
        let mut agg = AggregateIndex::new(root.clone());
        agg.update_map(SharingMap::with_entries(
            root.clone(),
            [
                (Arc::from("alice"), Entry::value(json!("admin"))),
                (
                    Arc::from(LINK_KEY),
                    Entry::value(json!(["acme-shop-roles"])),
                ),
            ],
        ));
        agg.update_map(SharingMap::with_entries(
            MapName::parse("acme-shop-roles")?,
            [(Arc::from("bob-tv"), Entry::value(json!("clerk")))],
        ));
        let snap = agg.snapshot();
        let map = MapName::parse("acme-shop-prices")?;
        let policy = Policy::new(vec![Rule::aggregate(root.clone(), "*")?]);

        let ctx = Context::new(&map).with_aggregate(&snap);
        assert!(matches!(
            policy.is_authorized(&ca("alice-anything")?, "set", &ctx),
            Decision::Allow(Grant::Aggregate { ref key, .. }) if key == "alice"
        ));
        assert!(matches!(
            policy.is_authorized(&ca("bob-tv")?, "set", &ctx),
            Decision::Allow(Grant::Aggregate { ref map, .. }) if map.as_str() == "acme-shop-roles"
        ));
        assert!(
            !policy
                .is_authorized(&ca("bob-phone")?, "set", &ctx)
                .is_allowed()
        );

        let without = Context::new(&map);
        assert_eq!(
            policy.is_authorized(&ca("alice-phone")?, "set", &without),
            Decision::Deny(Denial::NoMatchingRule {
                unavailable: vec![root]
            })
        );
        Ok(())
    }

    #[test]
    fn rules_round_trip_as_json_and_bad_patterns_are_quoted() -> TestResult {
        let policy: Policy = serde_json::from_value(json!([
            {"owner": "!SELF", "local": "*", "method": "get*"},
            {"aggregate": "acme-admin-roles", "method": "*"}
        ]))?;
        assert_eq!(policy.rules.len(), 2);
        assert_eq!(
            serde_json::to_value(&policy)?,
            json!([
                {"owner": "!SELF", "local": "*", "method": "get*"},
                {"aggregate": "acme-admin-roles", "method": "*"}
            ])
        );
        let cases = [
            (Rule::simple("!CA_LOCAL", "*", "*"), "owner", "!CA_LOCAL"),
            (Rule::simple("*", "!SELF", "*"), "local", "!SELF"),
            (Rule::simple("Al", "*", "*"), "owner", "'A'"),
            (Rule::simple("*", "*", ""), "method", "empty"),
            (Rule::simple("*", "*", "!SELF"), "method", "special"),
        ];
        for (result, field, needle) in cases {
            let Err(e) = result else {
                panic!("{field} pattern with {needle} accepted");
            };
            assert_eq!(e.field, field);
            assert!(e.to_string().contains(needle), "{e}");
        }
        let bad: Result<Policy, _> =
            serde_json::from_value(json!([{"owner": "x!", "local": "*", "method": "*"}]));
        assert!(bad.is_err());
        Ok(())
    }
}

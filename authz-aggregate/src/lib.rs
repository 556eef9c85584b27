//! Authorization over Sharing Maps (DESIGN.md §6): aggregates of linked maps, rules, and
//! attenuable tokens. A pure core: no I/O, no threads; callers pass in map versions and the
//! current time.
//!
//! ```text
//!  node agent replicas ──update_map / apply_change──▶ AggregateIndex ──snapshot()──▶ AggregateSnapshot
//!   (one per map in          (rooted at one map; follows __link_key__,             get_all(key), explain(key),
//!    wanted())                cycle-safe; key → values index kept incrementally)   version_vector()
//!                                                                                        │
//!  caller CA, method, map ─────────────────────────▶ Policy::is_authorized ◀── Context ──┘
//!                                                    (simple + aggregate rules; system methods: system only)
//!
//!  RootKey ──issue(constraints)──▶ Token ──attenuate (holder, offline, narrow only)──▶ Token
//!                                              verify(root public key, principal, now) ──▶ Constraints
//! ```
//!
//! - [`aggregate`]: [`AggregateIndex`] keeps every map reachable from a root through
//!   `__link_key__` and, for each key, its values across them; [`AggregateSnapshot`] pins one
//!   version of every map in it.
//! - [`rules`]: [`Policy`] of [`Rule`]s deciding whether a [`Caller`] may call a method.
//! - [`token`]: biscuit tokens with up to five constraints, attenuated offline, verified against a
//!   [`Principal`].
//!
//! ```
//! use std::sync::Arc;
//! use std::time::{Duration, SystemTime};
//! use authz_aggregate::{
//!     AggregateIndex, Caller, Constraints, Context, LINK_KEY, Policy, Principal, RootKey, Rule,
//!     TokenError, attenuate, issue, verify,
//! };
//! use serde_json::json;
//! use sharing_map::{AppName, CaName, Entry, MapName, SharingMap};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let map = |name: &str, entries: Vec<(&str, serde_json::Value)>| -> Result<SharingMap, sharing_map::NameError> {
//!     Ok(SharingMap::with_entries(
//!         MapName::parse(name)?,
//!         entries.into_iter().map(|(k, v)| (Arc::from(k), Entry::value(v))),
//!     ))
//! };
//!
//! // acme-admin-roles links to acme-shop-roles, which links back: a cycle.
//! let root = MapName::parse("acme-admin-roles")?;
//! let mut roles = AggregateIndex::new(root.clone());
//! roles.update_map(map("acme-admin-roles", vec![
//!     ("alice", json!("admin")),
//!     (LINK_KEY, json!(["acme-shop-roles"])),
//! ])?);
//! roles.update_map(map("acme-shop-roles", vec![
//!     ("alice", json!("clerk")),
//!     (LINK_KEY, json!(["acme-admin-roles"])),
//! ])?);
//! let pinned = roles.snapshot();
//! let alice: Vec<_> = pinned.get_all("alice").iter().map(|f| f.value().clone()).collect();
//! assert_eq!(alice, [json!("admin"), json!("clerk")]);
//! assert_eq!(pinned.explain("alice")[1].path.len(), 2); // admin-roles → shop-roles
//!
//! // Anyone alice owns may call methods of acme-shop-prices; __ methods are the system's.
//! let prices = MapName::parse("acme-shop-prices")?;
//! let policy = Policy::new(vec![Rule::aggregate(root, "*")?]);
//! let ctx = Context::new(&prices).with_aggregate(&pinned);
//! let caller = Caller::Ca(CaName::parse("alice-phone")?);
//! assert!(policy.is_authorized(&caller, "set_price", &ctx).is_allowed());
//! assert!(!policy.is_authorized(&caller, "__compact", &ctx).is_allowed());
//!
//! // A token for alice-phone, narrowed offline to expire in an hour.
//! let key = RootKey::generate();
//! let now = SystemTime::now();
//! let token = issue(&key, &Constraints::any().ca(&CaName::parse("alice-phone")?))?;
//! let short = attenuate(&key.public(), &token, &Constraints::any().expires_at(now + Duration::from_secs(3600)))?;
//! let app = AppName::parse("acme-shop")?;
//! verify(&key.public(), &short, &Principal::writer_of(&app, &MapName::parse("alice-phone-notes")?), now)?;
//! assert!(matches!(
//!     verify(&key.public(), &short, &Principal::writer_of(&app, &MapName::parse("bob-phone-notes")?), now),
//!     Err(TokenError::ConstraintMismatch { .. })
//! ));
//! # Ok(())
//! # }
//! ```

pub mod aggregate;
pub mod rules;
pub mod token;

pub use aggregate::{
    AggregateError, AggregateIndex, AggregateSnapshot, Explanation, Found, LINK_KEY, Update,
    links_of,
};
pub use rules::{
    Caller, Context, Decision, Denial, Grant, Pattern, Policy, Rule, RuleError,
    SYSTEM_METHOD_PREFIX,
};
pub use token::{
    Authenticated, ConstraintKind, Constraints, Principal, RootKey, RootPublicKey, Token,
    TokenError, Verifier, attenuate, inspect, issue, verify,
};

/// Every error of this crate.
#[derive(Debug, thiserror::Error)]
pub enum AuthzError {
    /// An aggregate could not take an update.
    #[error(transparent)]
    Aggregate(#[from] AggregateError),
    /// A rule could not be built.
    #[error(transparent)]
    Rule(#[from] RuleError),
    /// A token could not be issued, attenuated or verified.
    #[error(transparent)]
    Token(#[from] TokenError),
}

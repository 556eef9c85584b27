//! Rust client for the Spine, and the `spinectl` command.
//!
//! ```text
//!  Client ──(any node; round robin on failure, until a deadline)──▶ Spine nodes
//!    create_map / update / put / get_map / list_maps / history      (unary calls)
//!    cluster_status / add_learner / promote / remove_node / transfer_leader
//!    subscribe ─▶ Subscription::next() ─▶ SubscriptionEvent { applied_index, [MapUpdate] }
//!                   (resumes on another node from the last versions delivered)
//! ```
//!
//! The main types: [`Client`] (a cheap, cloneable handle holding lazy connections to every
//! endpoint), [`ClientError`] (a server's status verbatim, or [`ClientError::Unavailable`] when no
//! node answered in time), [`Subscription`] (ordered, gap-free, exactly-once map updates across
//! node failures, over the pure [`ResumeState`]), and [`convert`] (wire ↔ domain conversions,
//! from `spine-wire`, which the server uses too). Values are sharing-map's:
//! [`sharing_map::SharingMap`], [`sharing_map::ChangeSet`], [`sharing_map::Entry`].
//!
//! A `Client` must be created inside a Tokio runtime (its connections run background tasks).
//!
//! ```no_run
//! use std::sync::Arc;
//! use serde_json::json;
//! use sharing_map::{AppName, Entry, MapName, UpdateId};
//! use spine_client::{Client, SubscriptionSpec};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::new(vec!["127.0.0.1:7401".into(), "127.0.0.1:7402".into()])?;
//! let app = AppName::parse("acme-shop")?;
//! let map = MapName::parse("alice-phone-prices")?;
//! client.create_map(&app, &map, vec![]).await?;
//!
//! let mut updates = client.subscribe(vec![SubscriptionSpec::map(app.clone(), &map)]).await?;
//! // Read the current version, apply one change set, retry on conflicts: the new version.
//! let ops = vec![(Arc::from("apple"), Some(Entry::value(json!(3))))];
//! let version = client.put(&app, &map, ops, UpdateId::parse("u-1")?).await?;
//! // Per map: versions in order, deltas contiguous, each once, across node failures.
//! loop {
//!     let event = updates.next().await?;
//!     if event.updates.iter().any(|u| u.version() >= version) {
//!         break;
//!     }
//! }
//! let prices = client.get_map(&app, &map, false).await?;
//! assert_eq!(prices.get_value("apple"), Some(&json!(3)));
//! # Ok(())
//! # }
//! ```

pub mod acl;
pub mod apps;
mod client;
mod cluster;
mod error;
pub mod load;
mod maps;
mod resume;
mod subscribe;

pub use client::{
    Client, ClientBuilder, Credentials, DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_RESUME_DEADLINE, DEFAULT_TIMEOUT, DEV_TOKEN_FILE, TOKEN_METADATA, resolve_token,
};
pub use cluster::{ClusterStatus, NodeDigest, NodeInfo};
pub use error::ClientError;
pub use maps::{CreateOutcome, History, MAX_NAMES_PER_LIST, MapInfo, PUT_CONFLICT_RETRIES};
pub use resume::{Accepted, ResumeState};
pub use spine_wire::convert;
pub use subscribe::{MapUpdate, Subscription, SubscriptionEvent, SubscriptionSpec};
pub use tonic::Code;

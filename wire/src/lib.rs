//! Spine's wire messages as domain values, below both ends of the API.
//!
//! ```text
//!   spine-server ──┐                       ┌── spine-client (and the node agent through it)
//!                  ▼                       ▼
//!               spine-wire: convert (pb ⇄ sharing-map types), SubscriptionSpec
//!                  │                       │
//!                  ▼                       ▼
//!              spine-proto (generated)   sharing-map (domain)
//! ```
//!
//! The server and the client convert with the same functions, so both ends agree on one mapping,
//! and neither depends on the other. A subscription's spec ([`SubscriptionSpec`]) is here for
//! the same reason: the client resumes streams with it, the server decides what to send with it,
//! and both ask it whether it covers a map. `spine-proto` stays generated code only;
//! `sharing-map` knows nothing of the wire.
//!
//! ```
//! use std::sync::Arc;
//! use sharing_map::{ChangeSet, Entry, MapName, UpdateId};
//! use spine_wire::convert::{change_set_from_pb, change_set_to_pb};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cs = ChangeSet::from_ops(
//!     MapName::parse("alice-phone-prices")?,
//!     0,
//!     UpdateId::parse("u-1")?,
//!     [(Arc::from("apple"), Some(Entry::value(serde_json::json!(3))))],
//! );
//! assert_eq!(change_set_from_pb(change_set_to_pb(&cs))?, cs);
//! # Ok(())
//! # }
//! ```

pub mod convert;
mod subscription;

pub use convert::ConvertError;
pub use subscription::SubscriptionSpec;

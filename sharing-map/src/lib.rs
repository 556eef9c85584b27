//! Sharing Maps: single-writer, versioned maps of JSON values and sandboxed methods.
//!
//! This crate is the pure core of Spine: no I/O, no threads, no clocks. The Spine server, the node
//! agent and the CA runtime all build on it.
//!
//! ```text
//!  writer CA                      Spine (Raft)                     node agent / reader CA
//!  ─────────                      ────────────                     ──────────────────────
//!  Transaction::new(map)
//!    put / remove / set_method
//!    prepare(update_id) ──ChangeSet──▶ SharingMap::apply (CAS) ──ChangeSet──▶ VersionWindow::apply_delta
//!                                      (Duplicate on retry,                    (old: ignored,
//!                                       Conflict when stale)                    skip: Gap → reset(dump))
//!                                                                             pin() ─▶ Snapshot (immutable)
//!                                                                                 get / invoke
//! ```
//!
//! The main types: [`SharingMap`] (one immutable version; versions share structure through
//! `rpds`), [`ChangeSet`] (one transaction's normalized effect), [`Transaction`] (the writer's
//! read-your-writes view), [`VersionWindow`] and [`Snapshot`] (the replica's newest few versions and
//! a reader's pinned one), [`MethodRuntime`] (the Rhai sandbox), and the names of §2
//! ([`CaName`], [`MapName`], [`AppName`], and [`MapKey`], a map in its app).
//!
//! ```
//! use sharing_map::{Applied, MapName, SharingMap, Transaction, UpdateId, VersionWindow};
//! use serde_json::json;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let name = MapName::parse("alice-phone-prices")?;
//! let master = SharingMap::new(name.clone());
//! let mut replica = VersionWindow::new(SharingMap::new(name), 3);
//!
//! // The writer's changes while handling one message become one change set.
//! let mut tx = Transaction::new(master.clone());
//! tx.put("apple", json!(3))?;
//! tx.set_method("total", vec!["n".into()], "this.get(\"apple\") * n")?;
//! let cs = tx.prepare(UpdateId::parse("msg-1")?)?.ok_or("nothing changed")?;
//!
//! // The master copy applies it with compare-and-swap on the version...
//! let Applied::New(master) = master.apply(&cs)? else { unreachable!() };
//! assert_eq!(master.version(), 1);
//!
//! // ...and a replica applies the same delta; a reader pins one version for a whole message.
//! let before = replica.pin();
//! replica.apply_delta(&cs)?;
//! let now = replica.pin();
//! assert_eq!(before.get("apple"), None);
//! assert_eq!(now.get("apple"), Some(&json!(3)));
//! assert_eq!(now.invoke("total", &[json!(2)])?, json!(6));
//! # Ok(())
//! # }
//! ```

mod change_set;
pub mod codec;
mod entry;
mod error;
mod map;
mod methods;
mod name;
mod transaction;
mod window;

pub use change_set::{ChangeSet, Limits, MAX_UPDATE_ID_LEN, UpdateId};
pub use entry::{Entry, Json, Method};
pub use error::{ApplyError, CodecError, Error, LimitError, MethodError, NameError};
pub use map::{Applied, MapDump, SharingMap};
pub use methods::{MethodLimits, MethodRuntime, sandbox};
pub use name::{AppName, CaName, MAX_NAME_LEN, MIN_USER_LEN, MapKey, MapName, PRIVATE_STATE_MAP};
pub use transaction::Transaction;
pub use window::{DeltaOutcome, Snapshot, VersionWindow};

//! The CA runtime (DESIGN.md §9): hosts of Cloud Assistants, transactional actors whose every
//! message is one transaction, checkpointed in the Spine before any reply or side effect leaves.
//!
//! - [`turn`]: the turn engine, a pure core: a turn runs on a copy of the CA, an error or a panic
//!   drops the copy (abort), and everything run since the last checkpoint becomes one atomic
//!   Spine update (delta of the private state map, CAS on its version, the CA's map writes).
//! - [`checkpoint`]: the private state map's layout, decoded; intents and their keys.
//! - [`app`]: the app API in Rust (the [`App`] trait and the [`Cx`] its methods get).
//! - [`activation`]: one active CA, the async shell: load, first turn, messages, the output gate.
//! - [`committer`]: group commit of many CAs' checkpoints through `UpdateBatch`.
//! - [`host`]: routing calls to activations; [`placement`]: which host serves a CA (partition
//!   leases in the Spine); [`service`]: the `ca.v1` gRPC endpoint, forwarding to the holder.
//! - [`clients`]: what the client endpoints share: callers from tokens, listening, inspection.
//! - [`wakeups`]: the host's wake index: which CAs to activate for their timers, per partition
//!   in the Spine, so that an inactive CA costs no activation.
//! - [`reads`]: the read-only half of the `sharing` plugin: other writers' maps and aggregates
//!   through the node agent, pinned once per message ([`reads::Pins`]).
//! - [`plugins`]: plugins: [`turn::TurnPlugin`]s take part in every turn over checkpointed state
//!   of their own; [`plugins::IntentPlugin`]s carry out intents after commit (`log`) and may
//!   answer the CA with a message through a [`plugins::Courier`].
//! - [`access`]: who may call a CA: its owner, or callers the app's rules grant.
//! - [`apps`]: example apps (`counter`).
//! - [`web`]: the WebSocket endpoint (JSON frames, same operations as `ca.v1`) and the web page.
//! - [`scripted`]: apps written in Rhai and published as code maps, served without a restart;
//!   each message runs one pinned code version, upgrades run before the next message.
//! - [`assembly`]: the host as JSON components (`ca-runtime/host.json`) and their factories.

pub mod access;
pub mod activation;
pub mod app;
pub mod apps;
pub mod assembly;
pub mod checkpoint;
pub mod clients;
pub mod committer;
pub mod error;
pub mod host;
pub mod metrics;
pub mod placement;
pub mod plugins;
pub mod reads;
pub mod scripted;
pub mod service;
pub mod turn;
pub mod wakeups;
pub mod web;

pub use activation::Reply;
pub use app::{App, CodeVersion, Cx, MethodError, MethodResult, ReadSpec, TurnMeter};
pub use error::CaError;
pub use host::{Host, HostConfig};

//! The node agent: the per-machine replica cache that CA runtimes read Sharing Maps through.
//!
//! ```text
//!   readers ── agent.replica(app, map) ──▶ owner task ── one Subscribe stream ──▶ Spine node
//!      │            (lease, ref-counted)      │  Registry: VersionWindow per map    (fails over to
//!      └─ replica.pin() ◀── watch<Snapshot> ──┘  (newest K versions)               another node)
//! ```
//!
//! - **Isolation**: [`Replica::pin`] returns an immutable snapshot; it does not change while held,
//!   whatever arrives after.
//! - **Fairness**: pinning again gives the newest version the node has; a reader holding an old
//!   snapshot holds back nobody.
//! - **Failover**: the subscription resumes on another Spine node from the last version of every
//!   map, so readers see no error, only (bounded) staleness.
//! - Maps nobody used for [`AgentConfig::idle_timeout`] are unsubscribed and freed.
//! - **Out-of-process readers**: the `spine-agent` daemon ([`daemon`]) serves this API over gRPC
//!   on a Unix socket (`spine.agent.v1.NodeAgent`: pin, get, invoke, release, watch, status), so
//!   reader processes in any language share one agent per machine.
//! - **Aggregates** ([`aggregate::Aggregate`]): the maps linked from a root ACL map through
//!   `__link_key__`, followed live, with one immutable snapshot of all of them per message for
//!   `check`/`explain` (DESIGN.md §6).
//! - **Metrics**: [`metrics::render`] turns [`Agent::status`] into Prometheus text (agent-wide
//!   figures only, no series per map); `spine-agent --metrics-listen` serves it.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use node_agent::{Agent, AgentConfig};
//! use sharing_map::{AppName, MapName};
//!
//! let agent = Agent::connect(vec!["127.0.0.1:7401".into()], AgentConfig::default()).await?;
//! let prices = agent
//!     .replica(&AppName::parse("dev-app")?, &MapName::parse("alice-phone-prices")?)
//!     .await?;
//! let snapshot = prices.pin(); // one consistent version for this whole message
//! println!("apple = {:?} at version {}", snapshot.get("apple"), snapshot.version());
//! # Ok(())
//! # }
//! ```

mod agent;
pub mod aggregate;
pub mod daemon;
pub mod metrics;
pub mod registry;

pub use agent::{Agent, AgentConfig, AgentError, AgentStatus, Pinned, Replica};
pub use aggregate::Aggregate;
pub use registry::MapStatus;
pub use sharing_map::MapKey;

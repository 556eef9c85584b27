//! The Raft node: one task owns raft-rs's `RawNode`, the storage and the state machine; everything
//! else talks to it through a [`NodeHandle`] (handle + mailbox + owner task).
//!
//! ```text
//!  gRPC handlers ──Msg──▶ mailbox ──▶ node loop: step / propose / tick
//!  peers ───PeerEvent──▶ inbox ──▶   │ Ready: one log batch (entries + hard state) ─▶ fsync ─▶ send
//!                                   │        apply committed entries (in memory, maps marked dirty)
//!                                   │ every second: checkpoint dirty maps ─▶ fsync ─▶ compact log
//!                                   ▼
//!           watch<Arc<State>> (readers), broadcast<AppliedEvent> (subscribers), replies
//! ```
//!
//! Proposals that arrive together are appended and fsync'd together (group commit), and go to
//! each follower in one append. A client is answered by the node it asked, when that node
//! applies the entry, after a majority fsync'd it.
//! The log is what makes an update durable; the state machine is checkpointed, and a restart
//! replays the log after the last checkpoint.
//!
//! One file per concern; the decisions are pure and tested without a node:
//! - [`handle`]: the handle, its messages and errors, what the loop publishes;
//! - `raft_loop`: the owner task, the only code that touches `RawNode`, storage and the network;
//! - [`pending`]: the book of requests waiting on Raft (hold until a leader, send again on a
//!   leadership change, expire, fail all);
//! - [`request_numbers`]: how those requests are named, uniquely across nodes and restarts;
//! - [`membership`]: which membership changes are allowed and what applying one does;
//! - [`checkpoint`]: when to checkpoint the state machine and how far to compact the log.

use std::time::Duration;

use crate::state::ApplyConfig;

pub mod checkpoint;
pub mod handle;
pub mod membership;
pub mod pending;
mod raft_loop;
pub mod request_numbers;

pub use handle::{AppliedEvent, Msg, NodeError, NodeHandle, RaftStatus};
pub use membership::Membership;
pub use raft_loop::{StartError, start};

/// Tuning of one node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's id (non-zero).
    pub id: u64,
    /// Settings every node must share.
    pub apply: ApplyConfig,
    /// Raft tick.
    pub tick: Duration,
    /// Ticks without a leader before an election.
    pub election_ticks: usize,
    /// Ticks between leader heartbeats.
    pub heartbeat_ticks: usize,
    /// Compact the log once this many applied entries are in it.
    pub compact_after: u64,
    /// Checkpoint the state machine at least this often while it changes.
    pub checkpoint_interval: Duration,
    /// ... and at least every this many applied entries.
    pub checkpoint_entries: u64,
    /// Entries kept after compaction for followers that are only a little behind.
    pub keep_entries: u64,
    /// How long a proposal or read may wait for its entry before the client is told to retry.
    pub request_timeout: Duration,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            id: 1,
            apply: ApplyConfig::default(),
            tick: Duration::from_millis(100),
            election_ticks: 10,
            heartbeat_ticks: 2,
            compact_after: 2_000,
            checkpoint_interval: Duration::from_secs(1),
            checkpoint_entries: 5_000,
            keep_entries: 1_000,
            request_timeout: Duration::from_secs(5),
        }
    }
}

//! What the node loop needs from the network: Raft messages sent to peers by id.
//!
//! [`crate::transport::Transport`] sends them over gRPC; tests put an in-memory network here that
//! drops, delays, duplicates and partitions.

use std::sync::Arc;

use raft::eraftpb::Message;

/// Outgoing Raft messages. Delivery is best effort: Raft retransmits what is lost.
pub trait RaftNetwork: Send + Sync + std::fmt::Debug + 'static {
    /// Queues a message for `m.to`; drops it if the peer is unknown or far behind.
    fn send(&self, m: Message);
    /// Adds a peer, or moves it to a new address.
    fn set_peer(self: Arc<Self>, id: u64, addr: String);
    /// Drops every peer not in `members`.
    fn retain(&self, members: &[u64]);
}

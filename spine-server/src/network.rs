//! The seam between the node loop and the network, both ways: [`RaftNetwork`] is what the loop
//! sends through, [`PeerInbox`] is how the network hands the loop what came in (messages from
//! peers, reports on what it sent).
//!
//! ```text
//!   node loop ──RaftNetwork::send──▶ transport.rs (gRPC, one task per peer) ──▶ peers
//!       ▲                                   │ Unreachable / SnapshotSent
//!       └──────── PeerInbox ◀───────────────┴──────── peer_service.rs ◀── peers
//! ```
//!
//! The inbox is a channel made before either side, so the transport, the incoming service and
//! the node loop are built in any order and none holds the other. Tests put an in-memory network
//! on both sides that drops, delays, duplicates and partitions.

use std::sync::Arc;

use raft::eraftpb::{Message, MessageType};
use tokio::sync::mpsc;

/// Outgoing Raft messages. Delivery is best effort: Raft retransmits what is lost.
pub trait RaftNetwork: Send + Sync + std::fmt::Debug + 'static {
    /// Queues a message for `m.to`; drops it if the peer is unknown or far behind.
    fn send(&self, m: Message);
    /// Adds a peer, or moves it to a new address.
    fn set_peer(self: Arc<Self>, id: u64, addr: String);
    /// Drops every peer not in `members`.
    fn retain(&self, members: &[u64]);
}

/// What the network tells the node loop.
#[derive(Debug)]
pub enum PeerEvent {
    /// A Raft message from a peer.
    Message(Box<Message>),
    /// A message to this peer could not be sent (Raft backs off its replication).
    Unreachable(u64),
    /// A snapshot to a peer was delivered, or failed (Raft retries it).
    SnapshotSent {
        /// The peer.
        to: u64,
        /// Whether it was delivered.
        ok: bool,
    },
}

/// How many events wait for the node loop before [`PeerInbox::try_deliver`] drops new ones.
const INBOX: usize = 4096;

/// The node loop's door for the network (cloneable; the loop holds the receiving end).
#[derive(Clone, Debug)]
pub struct PeerInbox {
    tx: mpsc::Sender<PeerEvent>,
}

/// The node loop stopped: nothing takes peer events any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the node is shutting down")]
pub struct InboxClosed;

impl PeerInbox {
    /// An inbox and the receiver the node loop reads it from.
    pub fn channel() -> (Self, mpsc::Receiver<PeerEvent>) {
        let (tx, rx) = mpsc::channel(INBOX);
        (Self { tx }, rx)
    }

    /// Hands an event to the loop without waiting; dropped if the inbox is full or the loop is
    /// gone (for reports, which Raft can do without).
    pub fn try_deliver(&self, event: PeerEvent) {
        let _ = self.tx.try_send(event);
    }

    /// Hands an event to the loop, waiting for room (received messages: back-pressure on the
    /// sending peer instead of loss).
    pub async fn deliver(&self, event: PeerEvent) -> Result<(), InboxClosed> {
        self.tx.send(event).await.map_err(|_| InboxClosed)
    }
}

/// Whether a message carries a snapshot (the network reports its delivery).
pub fn is_snapshot(m: &Message) -> bool {
    m.get_msg_type() == MessageType::MsgSnapshot
}

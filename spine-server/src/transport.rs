//! The outgoing side of node-to-node traffic: one task per peer sends Raft messages in batches
//! over gRPC (`RaftPeer.Send`). Received ones come in through [`crate::peer_service`].
//!
//! Raft tolerates loss, so a full queue or an unreachable peer drops messages instead of
//! blocking the node loop; the loop is told through its [`PeerInbox`] so it can back off (and
//! retry snapshots).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protobuf::Message as _;
use raft::eraftpb::Message;
use spine_proto::v1 as pb;
use tokio::sync::mpsc;

use crate::network::{PeerEvent, PeerInbox, is_snapshot};

/// Largest message between nodes (snapshots carry the whole state).
pub const MAX_PEER_MESSAGE: usize = 1024 * 1024 * 1024;
const QUEUE: usize = 4096;
const BATCH: usize = 512;

struct Peer {
    addr: String,
    tx: mpsc::Sender<Message>,
    task: tokio::task::AbortHandle,
}

/// Outgoing connections to every other member.
pub struct Transport {
    id: u64,
    /// The admin token presented to peers, as `authorization` metadata.
    token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    /// Mutual TLS to peers, when on.
    tls: Option<tonic::transport::ClientTlsConfig>,
    peers: Mutex<HashMap<u64, Peer>>,
    /// Where delivery reports go.
    inbox: PeerInbox,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport").field("id", &self.id).finish()
    }
}

impl Transport {
    /// A transport for node `id` with no peers yet, presenting `token` to them and reporting
    /// failed deliveries into `inbox`.
    pub fn new(
        id: u64,
        token: Option<authz_aggregate::Token>,
        tls: Option<tonic::transport::ClientTlsConfig>,
        inbox: PeerInbox,
    ) -> Arc<Self> {
        let token = token.and_then(|t| format!("Bearer {}", t.to_base64()).parse().ok());
        Arc::new(Self {
            id,
            token,
            tls,
            peers: Mutex::new(HashMap::new()),
            inbox,
        })
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Peer>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn report(&self, event: PeerEvent) {
        self.inbox.try_deliver(event);
    }
}

impl crate::network::RaftNetwork for Transport {
    fn set_peer(self: Arc<Self>, id: u64, addr: String) {
        let mut peers = self.peers();
        if peers.get(&id).is_some_and(|p| p.addr == addr) {
            return;
        }
        if let Some(old) = peers.remove(&id) {
            old.task.abort();
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(run_peer(self.clone(), id, addr.clone(), rx)).abort_handle();
        peers.insert(id, Peer { addr, tx, task });
    }

    fn retain(&self, members: &[u64]) {
        self.peers().retain(|id, p| {
            let keep = members.contains(id);
            if !keep {
                p.task.abort();
            }
            keep
        });
    }

    fn send(&self, m: Message) {
        let to = m.to;
        let sent = self
            .peers()
            .get(&to)
            .is_some_and(|p| p.tx.try_send(m).is_ok());
        if !sent {
            self.report(PeerEvent::Unreachable(to));
        }
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        for p in self.peers().values() {
            p.task.abort();
        }
    }
}

async fn run_peer(
    transport: Arc<Transport>,
    to: u64,
    addr: String,
    mut rx: mpsc::Receiver<Message>,
) {
    let scheme = if transport.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let endpoint =
        tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}")).and_then(|e| {
            match &transport.tls {
                Some(tls) => e.tls_config(tls.clone()),
                None => Ok(e),
            }
        });
    let endpoint = match endpoint {
        Ok(e) => e.connect_timeout(Duration::from_secs(1)).tcp_nodelay(true),
        Err(e) => {
            tracing::error!(peer = to, %addr, error = %e, "invalid peer address or TLS settings");
            return;
        }
    };
    let mut client = pb::raft_peer_client::RaftPeerClient::new(endpoint.connect_lazy())
        .max_encoding_message_size(MAX_PEER_MESSAGE)
        .max_decoding_message_size(MAX_PEER_MESSAGE);
    let mut failures = 0u32;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let has_snapshot = batch.iter().any(is_snapshot);
        let request = pb::RaftBatch {
            from: transport.id,
            messages: batch
                .iter()
                .map(|m| m.write_to_bytes().unwrap_or_default())
                .collect(),
        };
        let limit = if has_snapshot {
            Duration::from_secs(60)
        } else {
            Duration::from_secs(2)
        };
        let mut request = tonic::Request::new(request);
        if let Some(token) = &transport.token {
            request
                .metadata_mut()
                .insert(crate::auth::METADATA_KEY, token.clone());
        }
        let sent = tokio::time::timeout(limit, client.send(request)).await;
        if let Ok(Err(status)) = &sent
            && matches!(
                status.code(),
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
            )
        {
            tracing::warn!(peer = to, %addr, error = %status.message(), "peer refused our token");
        }
        let ok = matches!(sent, Ok(Ok(_)));
        if has_snapshot {
            transport.report(PeerEvent::SnapshotSent { to, ok });
        }
        if ok {
            failures = 0;
        } else {
            transport.report(PeerEvent::Unreachable(to));
            failures = failures.saturating_add(1);
            if failures > 1 {
                tracing::debug!(peer = to, %addr, "peer unreachable");
            }
            // Back off a little so an unreachable peer does not spin; Raft retransmits.
            let pause = Duration::from_millis(20 * u64::from(failures.min(10)));
            tokio::time::sleep(pause).await;
            // Drop what queued up meanwhile: it is stale, and Raft will send fresh state.
            while rx.try_recv().is_ok() {}
        }
    }
}

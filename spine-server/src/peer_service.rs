//! The incoming side of node-to-node traffic: the `RaftPeer` gRPC service, which checks who is
//! sending and hands each received Raft message to the local node loop's [`PeerInbox`].

use protobuf::Message as _;
use raft::eraftpb::Message;
use spine_proto::v1 as pb;

use crate::network::{PeerEvent, PeerInbox};

/// The `RaftPeer` gRPC service: receives batches from other nodes.
#[derive(Debug, Clone)]
pub struct PeerService {
    inbox: PeerInbox,
    require_client_cert: bool,
}

impl PeerService {
    /// Delivers into `inbox`; with `require_client_cert` (TLS on), only connections that
    /// presented a certificate chaining to the deployment's CA may send Raft messages.
    pub fn new(inbox: PeerInbox, require_client_cert: bool) -> Self {
        Self {
            inbox,
            require_client_cert,
        }
    }
}

#[tonic::async_trait]
impl pb::raft_peer_server::RaftPeer for PeerService {
    async fn send(
        &self,
        request: tonic::Request<pb::RaftBatch>,
    ) -> Result<tonic::Response<pb::SendAck>, tonic::Status> {
        crate::auth::Access::of(&request)?.admin("Raft peer traffic")?;
        if self.require_client_cert && request.peer_certs().is_none_or(|c| c.is_empty()) {
            return Err(tonic::Status::permission_denied(
                "Raft peer traffic needs mutual TLS: connect with a node certificate signed by the deployment's CA",
            ));
        }
        let batch = request.into_inner();
        for bytes in batch.messages {
            let m = Message::parse_from_bytes(&bytes).map_err(|e| {
                tonic::Status::invalid_argument(format!(
                    "undecodable raft message from node {}: {e}",
                    batch.from
                ))
            })?;
            self.inbox
                .deliver(PeerEvent::Message(Box::new(m)))
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        }
        Ok(tonic::Response::new(pb::SendAck {}))
    }
}

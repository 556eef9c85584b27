//! Cluster status and membership changes.

use serde::Serialize;
use spine_proto::v1 as pb;

use crate::{Client, ClientError};

/// One member of the Raft group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeInfo {
    /// The node's Raft id.
    pub id: u64,
    /// The address it serves on.
    pub addr: String,
    /// `voter` or `learner`.
    pub role: String,
}

/// The Raft group as one node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClusterStatus {
    /// The answering node's id.
    pub id: u64,
    /// The leader it knows of (0: none).
    pub leader_id: u64,
    /// Its current term.
    pub term: u64,
    /// Its commit index.
    pub commit_index: u64,
    /// Its applied index.
    pub applied_index: u64,
    /// `leader`, `follower`, `candidate` or `pre-candidate`.
    pub state: String,
    /// The members of the group.
    pub nodes: Vec<NodeInfo>,
    /// How many maps its state machine holds.
    pub maps: u64,
}

/// A digest of one node's applied state, to compare replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct NodeDigest {
    /// The applied index the digest describes.
    pub applied_index: u64,
    /// The digest of every map's name, version and content.
    pub digest: u64,
    /// How many maps it covers.
    pub maps: u64,
}

impl From<pb::NodeStatus> for NodeInfo {
    fn from(n: pb::NodeStatus) -> Self {
        NodeInfo {
            id: n.id,
            addr: n.addr,
            role: n.role,
        }
    }
}

impl From<pb::ClusterStatusResponse> for ClusterStatus {
    fn from(s: pb::ClusterStatusResponse) -> Self {
        ClusterStatus {
            id: s.id,
            leader_id: s.leader_id,
            term: s.term,
            commit_index: s.commit_index,
            applied_index: s.applied_index,
            state: s.state,
            nodes: s.nodes.into_iter().map(NodeInfo::from).collect(),
            maps: s.maps,
        }
    }
}

fn members(answer: pb::MembershipResponse) -> Vec<NodeInfo> {
    answer.nodes.into_iter().map(NodeInfo::from).collect()
}

impl Client {
    /// The status as seen by the first endpoint that answers.
    pub async fn cluster_status(&self) -> Result<ClusterStatus, ClientError> {
        self.call(|mut rpc| async move { rpc.cluster_status(pb::ClusterStatusRequest {}).await })
            .await
            .map(ClusterStatus::from)
    }

    /// The status as seen by one endpoint (one of the client's or any other), asked once.
    pub async fn cluster_status_of(&self, endpoint: &str) -> Result<ClusterStatus, ClientError> {
        let budget = self.settings().attempt_timeout;
        self.call_on(endpoint, budget, |mut rpc| async move {
            rpc.cluster_status(pb::ClusterStatusRequest {}).await
        })
        .await
        .map(ClusterStatus::from)
    }

    /// A digest of one endpoint's applied state (a pass over all its maps), asked once. Equal
    /// digests at equal applied indexes mean equal replicas.
    pub async fn digest_of(&self, endpoint: &str) -> Result<NodeDigest, ClientError> {
        // A digest is a pass over every map: it gets the whole deadline, not one attempt's.
        let budget = self.settings().timeout;
        self.call_on(endpoint, budget, |mut rpc| async move {
            rpc.digest(pb::DigestRequest {}).await
        })
        .await
        .map(|d| NodeDigest {
            applied_index: d.applied_index,
            digest: d.digest,
            maps: d.maps,
        })
    }

    /// Adds node `id`, serving at `addr`, as a learner. Returns the new membership.
    pub async fn add_learner(&self, id: u64, addr: &str) -> Result<Vec<NodeInfo>, ClientError> {
        let request = pb::AddLearnerRequest {
            id,
            addr: addr.to_string(),
        };
        self.call(|mut rpc| {
            let request = request.clone();
            async move { rpc.add_learner(request).await }
        })
        .await
        .map(members)
    }

    /// Makes learner `id` a voter. Returns the new membership.
    pub async fn promote(&self, id: u64) -> Result<Vec<NodeInfo>, ClientError> {
        self.call(|mut rpc| async move { rpc.promote(pb::PromoteRequest { id }).await })
            .await
            .map(members)
    }

    /// Removes node `id` from the group. Returns the new membership.
    pub async fn remove_node(&self, id: u64) -> Result<Vec<NodeInfo>, ClientError> {
        self.call(|mut rpc| async move { rpc.remove_node(pb::RemoveNodeRequest { id }).await })
            .await
            .map(members)
    }

    /// Asks the leader to hand leadership to node `id`. Returns the membership.
    pub async fn transfer_leader(&self, id: u64) -> Result<Vec<NodeInfo>, ClientError> {
        self.call(
            |mut rpc| async move { rpc.transfer_leader(pb::TransferLeaderRequest { id }).await },
        )
        .await
        .map(members)
    }
}

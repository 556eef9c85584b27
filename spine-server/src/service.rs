//! The `Spine` gRPC service: the edge where wire messages become domain values, requests go to
//! the node, and errors become `tonic::Status` codes with messages a person can act on.

use std::sync::Arc;

use sharing_map::{AppName, ApplyError, Limits, MapName, NameError};
use spine_proto::v1 as pb;
use spine_wire::convert::{self, ConvertError};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::auth::Access;
use crate::metrics::Metrics;
use crate::node::{Membership, NodeError, NodeHandle};
use crate::state::{self, Command, MapKey, Outcome, Rejection, State};

/// Serves the client API of one node.
#[derive(Debug, Clone)]
pub struct SpineService {
    node: NodeHandle,
    limits: Limits,
    metrics: Arc<Metrics>,
}

impl SpineService {
    /// Serves `node`, checking requests against `limits`.
    pub fn new(node: NodeHandle, limits: Limits, metrics: Arc<Metrics>) -> Self {
        Self {
            node,
            limits,
            metrics,
        }
    }

    async fn read_state(&self, stale_ok: bool) -> Result<Arc<State>, Status> {
        if stale_ok {
            Ok(self.node.state())
        } else {
            self.node.linearizable().await.map_err(node_status)
        }
    }
}

/// At most this many updates go in one `UpdateBatch` request.
pub const MAX_BATCH_UPDATES: usize = 10_000;

impl SpineService {
    /// Parses, authorizes and validates one update.
    fn check_update(
        &self,
        access: &Access,
        r: pb::UpdateRequest,
    ) -> Result<(AppName, Vec<sharing_map::ChangeSet>), Status> {
        let app = app(&r.app)?;
        let change_sets = r
            .change_sets
            .into_iter()
            .map(convert::change_set_from_pb)
            .collect::<Result<Vec<_>, _>>()
            .map_err(convert_status)?;
        for cs in &change_sets {
            access.write(&app, cs.map())?;
        }
        state::validate_update(&change_sets, &self.limits).map_err(rejection_status)?;
        Ok((app, change_sets))
    }
}

/// The versions an applied update produced, or the status of its refusal.
fn update_outcome(outcome: Outcome) -> Result<Vec<u64>, Status> {
    match outcome {
        Outcome::Updated { versions } => Ok(versions),
        Outcome::Rejected(r) => Err(rejection_status(r)),
        other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
    }
}

/// The result of a refused update of a batch.
fn refused(status: &Status) -> pb::UpdateResult {
    pb::UpdateResult {
        code: status.code() as i32,
        message: status.message().to_string(),
        versions: Vec::new(),
    }
}

fn node_status(e: NodeError) -> Status {
    match e {
        NodeError::Unavailable { .. } | NodeError::Stopped => Status::unavailable(e.to_string()),
        NodeError::Invalid(m) => Status::invalid_argument(m),
    }
}

fn rejection_status(r: Rejection) -> Status {
    match r {
        Rejection::NotFound { .. } => {
            Status::not_found(format!("{r}; create it first with `spinectl map create`"))
        }
        Rejection::Apply(ApplyError::Conflict {
            map,
            current,
            expected,
        }) => Status::failed_precondition(format!(
            "version conflict on map {map}: the change set is for version {expected} but the current version is {current}; re-read the map and retry"
        )),
        Rejection::Apply(ApplyError::Limit(e)) => Status::invalid_argument(e.to_string()),
        Rejection::Apply(e) => Status::invalid_argument(e.to_string()),
        Rejection::Invalid(m) => Status::invalid_argument(m),
    }
}

fn name_status(e: NameError) -> Status {
    Status::invalid_argument(e.to_string())
}

fn convert_status(e: ConvertError) -> Status {
    Status::invalid_argument(e.to_string())
}

fn app(s: &str) -> Result<AppName, Status> {
    if s.is_empty() {
        return Err(Status::invalid_argument(
            "the request names no app; every map lives in an app's namespace (publisher-app)",
        ));
    }
    AppName::parse(s).map_err(name_status)
}

fn map(s: &str) -> Result<MapName, Status> {
    MapName::parse(s).map_err(name_status)
}

/// Most names one `ListMaps` may ask for.
pub const MAX_LISTED_NAMES: usize = 10_000;

/// The exact names a `ListMaps` asks for, if it asks for names rather than a prefix.
fn listed_names(r: &pb::ListMapsRequest) -> Result<Option<Vec<MapName>>, Status> {
    if r.names.is_empty() {
        return Ok(None);
    }
    if !r.prefix.is_empty() {
        return Err(Status::invalid_argument(
            "ListMaps takes either a prefix or names, not both",
        ));
    }
    if r.names.len() > MAX_LISTED_NAMES {
        return Err(Status::invalid_argument(format!(
            "ListMaps asked for {} names; at most {MAX_LISTED_NAMES} per request",
            r.names.len()
        )));
    }
    r.names
        .iter()
        .map(|n| map(n))
        .collect::<Result<_, _>>()
        .map(Some)
}

fn membership_to_pb(m: &state::Membership) -> Vec<pb::NodeStatus> {
    let mut ids: Vec<(u64, &str)> = m
        .voters
        .iter()
        .map(|v| (*v, "voter"))
        .chain(m.learners.iter().map(|l| (*l, "learner")))
        .collect();
    ids.sort();
    ids.into_iter()
        .map(|(id, role)| pb::NodeStatus {
            id,
            addr: m.addrs.get(&id).cloned().unwrap_or_default(),
            role: role.into(),
        })
        .collect()
}

type EventStream = ReceiverStream<Result<pb::SubscribeEvent, Status>>;

#[tonic::async_trait]
impl pb::spine_server::Spine for SpineService {
    async fn create_map(
        &self,
        request: Request<pb::CreateMapRequest>,
    ) -> Result<Response<pb::CreateMapResponse>, Status> {
        let access = Access::of(&request)?;
        let r = request.into_inner();
        let key = MapKey {
            app: app(&r.app)?,
            map: map(&r.map)?,
        };
        access.write(&key.app, &key.map)?;
        let initial = convert::entries_from_pb(r.initial).map_err(convert_status)?;
        state::validate_create(&key.map, &initial, &self.limits)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (outcome, _) = self
            .node
            .propose(Command::Create { key, initial })
            .await
            .map_err(node_status)?;
        match outcome {
            Outcome::Created { version, created } => {
                Ok(Response::new(pb::CreateMapResponse { version, created }))
            }
            Outcome::Rejected(r) => Err(rejection_status(r)),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn update(
        &self,
        request: Request<pb::UpdateRequest>,
    ) -> Result<Response<pb::UpdateResponse>, Status> {
        let access = Access::of(&request)?;
        let (app, change_sets) = self.check_update(&access, request.into_inner())?;
        let (outcome, index) = self
            .node
            .propose(Command::Update { app, change_sets })
            .await
            .map_err(node_status)?;
        let versions = update_outcome(outcome)?;
        Ok(Response::new(pb::UpdateResponse { versions, index }))
    }

    async fn update_batch(
        &self,
        request: Request<pb::UpdateBatchRequest>,
    ) -> Result<Response<pb::UpdateBatchResponse>, Status> {
        let access = Access::of(&request)?;
        let updates = request.into_inner().updates;
        if updates.is_empty() {
            return Err(Status::invalid_argument("the batch holds no update"));
        }
        if updates.len() > MAX_BATCH_UPDATES {
            return Err(Status::invalid_argument(format!(
                "the batch holds {} updates; at most {MAX_BATCH_UPDATES} go in one request",
                updates.len()
            )));
        }
        // Each update is checked and authorized on its own: one that is refused leaves a result
        // in its place and the others go on.
        let mut results: Vec<Option<pb::UpdateResult>> = Vec::with_capacity(updates.len());
        let mut proposed = Vec::new();
        let mut positions = Vec::new();
        for (i, u) in updates.into_iter().enumerate() {
            match self.check_update(&access, u) {
                Ok((app, change_sets)) => {
                    proposed.push(state::Update { app, change_sets });
                    positions.push(i);
                    results.push(None);
                }
                Err(status) => results.push(Some(refused(&status))),
            }
        }
        let mut index = 0;
        if !proposed.is_empty() {
            let (outcome, at) = self
                .node
                .propose(Command::Batch { updates: proposed })
                .await
                .map_err(node_status)?;
            index = at;
            let Outcome::Batch(outcomes) = outcome else {
                return Err(Status::internal(format!("unexpected outcome {outcome:?}")));
            };
            if outcomes.len() != positions.len() {
                return Err(Status::internal(format!(
                    "{} outcomes for {} updates",
                    outcomes.len(),
                    positions.len()
                )));
            }
            for (i, outcome) in positions.into_iter().zip(outcomes) {
                results[i] = Some(match update_outcome(outcome) {
                    Ok(versions) => pb::UpdateResult {
                        code: tonic::Code::Ok as i32,
                        message: String::new(),
                        versions,
                    },
                    Err(status) => refused(&status),
                });
            }
        }
        Ok(Response::new(pb::UpdateBatchResponse {
            results: results.into_iter().flatten().collect(),
            index,
        }))
    }

    async fn get_map(
        &self,
        request: Request<pb::GetMapRequest>,
    ) -> Result<Response<pb::GetMapResponse>, Status> {
        let access = Access::of(&request)?;
        let r = request.into_inner();
        let (app, name) = (app(&r.app)?, map(&r.map)?);
        access.read_map(&app, &name)?;
        let state = self.read_state(r.stale_ok).await?;
        let ms = state
            .get(&app, &name)
            .ok_or_else(|| Status::not_found(format!("map {name} does not exist in app {app}")))?;
        let mut dump = ms.map.dump();
        if !r.keys.is_empty() {
            let wanted: std::collections::BTreeSet<&str> =
                r.keys.iter().map(String::as_str).collect();
            dump.entries.retain(|(k, _)| wanted.contains(&**k));
        }
        Ok(Response::new(pb::GetMapResponse {
            map: Some(convert::dump_to_pb(&dump)),
        }))
    }

    async fn list_maps(
        &self,
        request: Request<pb::ListMapsRequest>,
    ) -> Result<Response<pb::ListMapsResponse>, Status> {
        let access = Access::of(&request)?;
        let r = request.into_inner();
        let app = app(&r.app)?;
        access.read(&app)?;
        let names = listed_names(&r)?;
        let state = self.read_state(r.stale_ok).await?;
        let limit = if r.limit == 0 {
            usize::MAX
        } else {
            r.limit as usize
        };
        let info = |name: &MapName, s: &crate::state::MapState| pb::MapInfo {
            map: name.to_string(),
            version: s.map.version(),
            entries: s.map.len() as u64,
        };
        // Private state maps are left out unless the token may read them.
        let private_ok = access.sees_private();
        let shown = |name: &MapName| private_ok || !name.is_private_state();
        let maps = match names {
            Some(names) => names
                .iter()
                .filter(|n| shown(n))
                .filter_map(|n| state.get(&app, n).map(|s| info(n, s)))
                .take(limit)
                .collect(),
            None => state
                .with_prefix(&app, &r.prefix)
                .filter(|(k, _)| shown(&k.map))
                .take(limit)
                .map(|(k, s)| info(&k.map, s))
                .collect(),
        };
        Ok(Response::new(pb::ListMapsResponse { maps }))
    }

    async fn history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        let access = Access::of(&request)?;
        let r = request.into_inner();
        let (app, name) = (app(&r.app)?, map(&r.map)?);
        access.read_map(&app, &name)?;
        let state = self.read_state(r.stale_ok).await?;
        let ms = state
            .get(&app, &name)
            .ok_or_else(|| Status::not_found(format!("map {name} does not exist in app {app}")))?;
        let change_sets = ms
            .history
            .iter()
            .filter(|cs| cs.version() >= r.after_version)
            .map(|cs| convert::change_set_to_pb(cs))
            .collect();
        Ok(Response::new(pb::HistoryResponse {
            change_sets,
            oldest_retained: ms.oldest_retained(),
            current_version: ms.map.version(),
        }))
    }

    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        request: Request<tonic::Streaming<pb::SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let access = Access::of(&request)?;
        let inbound = request.into_inner();
        // A small queue: a slow client makes its session lag behind the shared event ring, and
        // the session then replaces the backlog with snapshots.
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(crate::subscribe::run_session(
            self.node.clone(),
            access,
            inbound,
            tx,
            self.metrics.clone(),
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn cluster_status(
        &self,
        request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        // Any valid token may see the cluster's shape (the interceptor checked it).
        Access::of(&request)?;
        let status = self.node.status();
        let state = self.node.state();
        Ok(Response::new(pb::ClusterStatusResponse {
            id: status.id,
            leader_id: status.leader_id,
            term: status.term,
            commit_index: status.commit,
            applied_index: state.applied_index,
            state: status.role.into(),
            nodes: membership_to_pb(&state.membership),
            maps: state.maps.size() as u64,
        }))
    }

    async fn digest(
        &self,
        request: Request<pb::DigestRequest>,
    ) -> Result<Response<pb::DigestResponse>, Status> {
        Access::of(&request)?.admin("the state digest")?;
        let state = self.node.state();
        Ok(Response::new(pb::DigestResponse {
            applied_index: state.applied_index,
            digest: state.digest(),
            maps: state.maps.size() as u64,
        }))
    }

    async fn add_learner(
        &self,
        request: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        Access::of(&request)?.admin("adding a learner")?;
        let r = request.into_inner();
        if r.addr.parse::<std::net::SocketAddr>().is_err() && !r.addr.contains(':') {
            return Err(Status::invalid_argument(format!(
                "address {:?} is not host:port",
                r.addr
            )));
        }
        self.membership(Membership::AddLearner {
            id: r.id,
            addr: r.addr,
        })
        .await
    }

    async fn promote(
        &self,
        request: Request<pb::PromoteRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        Access::of(&request)?.admin("promoting a learner")?;
        let id = request.into_inner().id;
        self.membership(Membership::Promote { id }).await
    }

    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        Access::of(&request)?.admin("removing a node")?;
        let id = request.into_inner().id;
        self.membership(Membership::Remove { id }).await
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        Access::of(&request)?.admin("transferring leadership")?;
        let id = request.into_inner().id;
        self.node.transfer_leader(id).await.map_err(node_status)?;
        Ok(Response::new(pb::MembershipResponse {
            nodes: membership_to_pb(&self.node.state().membership),
        }))
    }
}

impl SpineService {
    async fn membership(
        &self,
        change: Membership,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let m = self
            .node
            .change_membership(change)
            .await
            .map_err(node_status)?;
        Ok(Response::new(pb::MembershipResponse {
            nodes: membership_to_pb(&m),
        }))
    }
}

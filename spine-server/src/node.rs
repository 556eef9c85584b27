//! The Raft node: one task owns raft-rs's `RawNode`, the storage and the state machine; everything
//! else talks to it through a [`NodeHandle`] (handle + mailbox + owner task).
//!
//! ```text
//!  gRPC handlers ──Msg──▶ mailbox ──▶ node loop: step / propose / tick
//!  peers ───PeerEvent──▶ inbox ──▶   │ Ready: append log + hard state ─▶ fsync ─▶ send messages
//!                                   │        apply committed entries (in memory, maps marked dirty)
//!                                   │ every second: checkpoint dirty maps ─▶ fsync ─▶ compact log
//!                                   ▼
//!           watch<Arc<State>> (readers), broadcast<AppliedEvent> (subscribers), replies
//! ```
//!
//! Proposals that arrive together are appended and fsync'd together (group commit). A client is
//! answered by the node it asked, when that node applies the entry, after a majority fsync'd it.
//! The log is what makes an update durable; the state machine is checkpointed, and a restart
//! replays the log after the last checkpoint.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType, Entry, EntryType, Message};
use raft::{RawNode, StateRole};
use serde::{Deserialize, Serialize};
use sharing_map::codec;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
// tokio's clock, so that tests with a paused clock drive timeouts too.
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::network::{PeerEvent, RaftNetwork};
use crate::pending::{RequestNumbers, parse_read_context, read_context};
use crate::state::{ApplyConfig, Change, Command, Outcome, Proposal, State};
use crate::store::{Dirty, RaftStore, StateStore, Store, StoreError};

/// Why the node could not serve a request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NodeError {
    /// No leader, no quorum, or the leader changed while the request was in flight. Safe to
    /// retry (updates are idempotent by update id).
    #[error("{reason}{}", leader_hint(*leader, addr.as_deref()))]
    Unavailable {
        /// What happened.
        reason: String,
        /// The leader this node knows of, if any.
        leader: Option<u64>,
        /// Its address.
        addr: Option<String>,
    },
    /// The node is shutting down.
    #[error("the node is shutting down")]
    Stopped,
    /// The request is not valid for the cluster's membership.
    #[error("{0}")]
    Invalid(String),
}

fn leader_hint(leader: Option<u64>, addr: Option<&str>) -> String {
    match (leader, addr) {
        (Some(id), Some(addr)) => format!("; leader hint: node {id} at {addr}"),
        (Some(id), None) => format!("; leader hint: node {id}"),
        _ => "; no leader is known (is a majority of nodes up?)".into(),
    }
}

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

/// Role and progress of this node, published after every step.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RaftStatus {
    /// This node.
    pub id: u64,
    /// The leader it follows (0 when unknown).
    pub leader_id: u64,
    /// Current term.
    pub term: u64,
    /// "leader", "follower", "candidate" or "pre-candidate".
    pub role: &'static str,
    /// Highest committed index known.
    pub commit: u64,
    /// First index still in the log.
    pub first_index: u64,
}

/// What one applied entry changed; subscribers read these from a broadcast channel.
#[derive(Clone, Debug)]
pub struct AppliedEvent {
    /// The log index.
    pub index: u64,
    /// What changed (updates committed together are in one event).
    pub changes: Vec<Change>,
    /// The whole state was replaced by a snapshot: subscribers must resynchronize.
    pub reset: bool,
}

/// A membership change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Membership {
    /// Add a non-voting member at an address.
    AddLearner {
        /// Its id.
        id: u64,
        /// Its address.
        addr: String,
    },
    /// Make a learner a voter.
    Promote {
        /// Its id.
        id: u64,
    },
    /// Remove a member.
    Remove {
        /// Its id.
        id: u64,
    },
}

type Reply<T> = oneshot::Sender<Result<T, NodeError>>;

/// A message to the node loop.
#[derive(Debug)]
pub enum Msg {
    /// Propose a command; answered with its outcome and log index when applied here.
    Propose(Command, Reply<(Outcome, u64)>),
    /// Ask for a linearizable read index; answered once this node applied up to it.
    ReadIndex(Reply<u64>),
    /// A membership change; answered with the new membership when applied here.
    ChangeMembership(Membership, Reply<crate::state::Membership>),
    /// Hand leadership to another voter.
    TransferLeader(u64, Reply<()>),
}

/// Context carried by conf-change entries so the proposer can answer.
#[derive(Serialize, Deserialize)]
struct ConfContext {
    origin: u64,
    request: u64,
    addr: Option<String>,
}

/// A cloneable handle to the node loop.
#[derive(Clone, Debug)]
pub struct NodeHandle {
    id: u64,
    tx: mpsc::Sender<Msg>,
    state: watch::Receiver<Arc<State>>,
    status: watch::Receiver<RaftStatus>,
    events: broadcast::Sender<Arc<AppliedEvent>>,
    shutdown: Arc<watch::Sender<bool>>,
    request_timeout: Duration,
    election_timeout: Duration,
}

impl NodeHandle {
    /// This node's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The newest applied state on this node.
    pub fn state(&self) -> Arc<State> {
        self.state.borrow().clone()
    }

    /// A receiver of applied states, to wait for progress.
    pub fn watch_state(&self) -> watch::Receiver<Arc<State>> {
        self.state.clone()
    }

    /// The newest Raft status.
    pub fn status(&self) -> RaftStatus {
        self.status.borrow().clone()
    }

    /// Subscribes to applied events (call before reading [`state`](Self::state) so nothing is
    /// missed between the two).
    pub fn events(&self) -> broadcast::Receiver<Arc<AppliedEvent>> {
        self.events.subscribe()
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Msg) -> Result<T, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| NodeError::Stopped)?;
        // The loop answers every request within its request timeout; the extra margin only
        // covers a loop that stopped without answering.
        match tokio::time::timeout(self.request_timeout * 2, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(NodeError::Stopped),
            Err(_) => Err(self.unavailable("the request timed out")),
        }
    }

    fn unavailable(&self, reason: &str) -> NodeError {
        let status = self.status();
        let state = self.state();
        let leader = (status.leader_id != 0).then_some(status.leader_id);
        NodeError::Unavailable {
            reason: reason.into(),
            leader,
            addr: leader.and_then(|l| state.membership.addrs.get(&l).cloned()),
        }
    }

    /// Proposes a command and waits until it is applied here.
    pub async fn propose(&self, command: Command) -> Result<(Outcome, u64), NodeError> {
        self.ask(|r| Msg::Propose(command, r)).await
    }

    /// Waits until this node has applied everything committed when the call was made
    /// (ReadIndex), so that reading its state afterwards is linearizable.
    pub async fn linearizable(&self) -> Result<Arc<State>, NodeError> {
        let index = self.ask(Msg::ReadIndex).await?;
        let mut rx = self.state.clone();
        let state = rx
            .wait_for(|s| s.applied_index >= index)
            .await
            .map_err(|_| NodeError::Stopped)?;
        Ok(state.clone())
    }

    /// Changes membership and waits until the change is applied here.
    pub async fn change_membership(
        &self,
        change: Membership,
    ) -> Result<crate::state::Membership, NodeError> {
        self.ask(|r| Msg::ChangeMembership(change, r)).await
    }

    /// Asks the group to move leadership to `to`.
    ///
    /// Returns once `to` leads. raft-rs abandons a transfer the target cannot complete within an
    /// election timeout (for example while it catches up, or while this node does not yet know
    /// the leader), so the request is repeated until it succeeds or the request timeout passes.
    pub async fn transfer_leader(&self, to: u64) -> Result<(), NodeError> {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let attempt = self.election_timeout.max(Duration::from_millis(200));
        loop {
            if self.status().leader_id == to {
                return Ok(());
            }
            self.ask(|r| Msg::TransferLeader(to, r)).await?;
            let mut status = self.status.clone();
            let moved = tokio::time::timeout(attempt, status.wait_for(|s| s.leader_id == to)).await;
            if matches!(moved, Ok(Ok(_))) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(self.unavailable(&format!(
                    "leadership did not move to node {to} in time (is it running, reachable and caught up?)"
                )));
            }
        }
    }

    /// Resolves once [`shutdown`](Self::shutdown) was called.
    pub async fn stopped(&self) {
        let mut rx = self.shutdown.subscribe();
        let _ = rx.wait_for(|stopped| *stopped).await;
    }

    /// Stops the loop; pending requests are answered with [`NodeError::Stopped`].
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }
}

struct Pending<T> {
    reply: Reply<T>,
    since: Instant,
}

/// A proposal waiting for its entry to apply here.
struct PendingProposal {
    reply: Reply<(Outcome, u64)>,
    since: Instant,
    /// The encoded entry, kept to propose it again when leadership changes: a proposal in
    /// flight to a leader that fails is lost, and one in its log may be overwritten. Proposing
    /// again is safe because every command is idempotent (create-if-absent, updates by update
    /// id); whichever copy applies first answers.
    data: Vec<u8>,
    /// The term it was last proposed in; `None` while no leader took it.
    proposed_in: Option<u64>,
}

/// A linearizable read waiting for a leader to confirm a read index.
struct PendingRead {
    reply: Reply<u64>,
    since: Instant,
    /// Its ReadIndex context: this node's id and the request number.
    ctx: Vec<u8>,
    /// The leadership it was last sent to, and when; `None` while no leader was known.
    sent: Option<(Leadership, Instant)>,
}

/// Who leads, as this node sees it. When it changes, requests in flight may have been lost: a
/// leader that fails takes forwarded proposals and reads with it, and a new leader ignores reads
/// until it has committed an entry of its term (`ready`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Leadership {
    term: u64,
    leader: u64,
    ready: bool,
}

impl Leadership {
    fn of(raw: &RawNode<RaftStore>) -> Self {
        let raft = &raw.raft;
        let committed = raft.raft_log.committed;
        Self {
            term: raft.term,
            leader: raft.leader_id,
            ready: raft.raft_log.term(committed).ok() == Some(raft.term),
        }
    }
}

/// Hands a proposal to Raft if a leader is known (a follower forwards it).
fn propose_entry(raw: &mut RawNode<RaftStore>, p: &mut PendingProposal) {
    if raw.raft.leader_id == 0 {
        return;
    }
    match raw.propose(Vec::new(), p.data.clone()) {
        Ok(()) => p.proposed_in = Some(raw.raft.term),
        Err(e) => tracing::debug!(error = %e, "proposal not taken yet; it is proposed again"),
    }
}

/// Asks for a read index if a leader is known.
fn send_read(raw: &mut RawNode<RaftStore>, r: &mut PendingRead, now: Instant) {
    if raw.raft.leader_id == 0 {
        return;
    }
    raw.read_index(r.ctx.clone());
    r.sent = Some((Leadership::of(raw), now));
}

/// The node loop's state.
struct NodeLoop {
    cfg: NodeConfig,
    raw: RawNode<RaftStore>,
    store: Store,
    states: StateStore,
    state: State,
    transport: Arc<dyn RaftNetwork>,
    metrics: Arc<Metrics>,
    state_tx: watch::Sender<Arc<State>>,
    status_tx: watch::Sender<RaftStatus>,
    events: broadcast::Sender<Arc<AppliedEvent>>,
    /// Numbers for requests, unique across this node's lives.
    numbers: RequestNumbers,
    /// Requests waiting for Raft, by number. Those that arrive while no leader is known wait
    /// here too (raft-rs would drop them) and are sent when one is.
    proposals: HashMap<u64, PendingProposal>,
    conf_changes: HashMap<u64, Pending<crate::state::Membership>>,
    reads: HashMap<u64, PendingRead>,
    ready_reads: Vec<(u64, Reply<u64>)>,
    /// The leadership pending requests were last sent to.
    leadership: Leadership,
    last_resend: Instant,
    /// A storage failure met where it could not be returned; it stops the loop.
    broken: Option<StoreError>,
    /// Maps changed since the last checkpoint of the state machine.
    dirty: Dirty,
    /// The applied index of the last checkpoint: the log is kept after it.
    checkpointed: u64,
    last_checkpoint: Instant,
}

/// Errors that stop a node.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// raft-rs refused the configuration or stored state.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
}

/// Opens storage and starts the node loop. `initial_voters` bootstraps a new group (every
/// founding member passes the same list); empty means "join an existing group as a new member".
/// The loop sends through `transport` and reads what the network delivers from `peer_events`
/// (the receiving end of a [`crate::network::PeerInbox`]).
pub fn start(
    cfg: NodeConfig,
    store: Store,
    initial_voters: &[u64],
    addrs: std::collections::BTreeMap<u64, String>,
    transport: Arc<dyn RaftNetwork>,
    peer_events: mpsc::Receiver<PeerEvent>,
    metrics: Arc<Metrics>,
) -> Result<(NodeHandle, tokio::task::JoinHandle<()>), StartError> {
    let raft_store = RaftStore::open(&store, initial_voters)?;
    let states = StateStore::open(&store)?;
    let mut state = states.load()?;
    if state.membership.voters.is_empty() && !initial_voters.is_empty() {
        state.membership.voters = initial_voters.to_vec();
    }
    // Addresses given on the command line win over replicated ones (they may route through a
    // proxy or another interface).
    for (id, addr) in &addrs {
        state.membership.addrs.insert(*id, addr.clone());
    }
    raft_store.set_applied(Arc::new(state.clone()));
    let hs = raft_store.hard_state();
    let raft_cfg = raft::Config {
        id: cfg.id,
        election_tick: cfg.election_ticks,
        heartbeat_tick: cfg.heartbeat_ticks,
        applied: state.applied_index.min(hs.commit),
        max_size_per_msg: 1024 * 1024,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        ..Default::default()
    };
    raft_cfg.validate()?;
    let logger = crate::logging::raft_logger(cfg.id);
    let raw = RawNode::new(&raft_cfg, raft_store.clone(), &logger)?;
    for (id, addr) in &state.membership.addrs {
        if *id != cfg.id {
            transport.clone().set_peer(*id, addr.clone());
        }
    }
    let first = raft_store.reserve_requests(RequestNumbers::BLOCK)?;
    let numbers = RequestNumbers::new(first, first.saturating_add(RequestNumbers::BLOCK));
    let (tx, rx) = mpsc::channel(4096);
    let (state_tx, state_rx) = watch::channel(Arc::new(state.clone()));
    let (status_tx, status_rx) = watch::channel(RaftStatus {
        id: cfg.id,
        ..Default::default()
    });
    let (events, _) = broadcast::channel(1024);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let handle = NodeHandle {
        id: cfg.id,
        tx,
        state: state_rx,
        status: status_rx,
        events: events.clone(),
        shutdown: Arc::new(shutdown_tx),
        request_timeout: cfg.request_timeout,
        election_timeout: cfg.tick * cfg.election_ticks as u32 * 2,
    };
    let applied = state.applied_index;
    let node = NodeLoop {
        cfg,
        raw,
        store,
        states,
        state,
        transport,
        metrics,
        state_tx,
        status_tx,
        events,
        numbers,
        proposals: HashMap::new(),
        conf_changes: HashMap::new(),
        reads: HashMap::new(),
        ready_reads: Vec::new(),
        leadership: Leadership::default(),
        last_resend: Instant::now(),
        broken: None,
        dirty: Dirty::default(),
        checkpointed: applied,
        last_checkpoint: Instant::now(),
    };
    let task = tokio::spawn(node.run(rx, peer_events, shutdown_rx));
    Ok((handle, task))
}

impl NodeLoop {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Msg>,
        mut peers: mpsc::Receiver<PeerEvent>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut ticker = tokio::time::interval(self.cfg.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_sweep = Instant::now();
        let mut peers_open = true;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                msg = rx.recv() => {
                    let Some(msg) = msg else { break };
                    self.handle(msg);
                    self.take_queued(&mut rx, &mut peers);
                }
                event = peers.recv(), if peers_open => {
                    match event {
                        Some(event) => self.on_peer_event(event),
                        // Nothing can deliver any more (a test's network went away).
                        None => peers_open = false,
                    }
                    self.take_queued(&mut rx, &mut peers);
                }
                _ = ticker.tick() => {
                    self.raw.tick();
                }
            }
            let result = self
                .on_ready()
                .and_then(|()| {
                    self.resend(Instant::now());
                    self.on_ready()
                })
                .and_then(|()| self.maybe_checkpoint(false));
            if let Err(e) = self.broken.take().map_or(result, Err) {
                tracing::error!(error = %e, "storage failed; stopping the node");
                break;
            }
            if last_sweep.elapsed() >= self.cfg.tick {
                self.expire();
                last_sweep = Instant::now();
            }
        }
        // A last checkpoint makes the next start quick (nothing to replay); without it nothing
        // is lost, the log has every entry after the previous one.
        if let Err(e) = self.maybe_checkpoint(true) {
            tracing::warn!(error = %e, "no checkpoint at shutdown; the log will be replayed");
        }
        self.fail_all(|| NodeError::Stopped);
        tracing::info!(id = self.cfg.id, "node loop stopped");
    }

    fn unavailable(&self, reason: &str) -> NodeError {
        let leader = self.raw.raft.leader_id;
        let leader = (leader != 0).then_some(leader);
        NodeError::Unavailable {
            reason: reason.into(),
            leader,
            addr: leader.and_then(|l| self.state.membership.addrs.get(&l).cloned()),
        }
    }

    /// The next request number; `None` if a new block could not be reserved (the loop stops).
    fn request_id(&mut self) -> Option<u64> {
        if let Some(n) = self.numbers.take() {
            return Some(n);
        }
        match self.raw.store().reserve_requests(RequestNumbers::BLOCK) {
            Ok(first) => {
                self.numbers =
                    RequestNumbers::new(first, first.saturating_add(RequestNumbers::BLOCK));
                self.numbers.take()
            }
            Err(e) => {
                self.broken = Some(e);
                None
            }
        }
    }

    /// Sends pending requests again where they may have been lost: to a new leader, to a
    /// leader that became able to serve reads, once a leader is known, and (reads only, which
    /// are cheap to repeat) every few heartbeats as a last resort against lost messages.
    fn resend(&mut self, now: Instant) {
        let current = Leadership::of(&self.raw);
        if current.leader == 0 {
            return;
        }
        let changed = current != self.leadership;
        self.leadership = current;
        let every = self.cfg.tick * (2 * self.cfg.heartbeat_ticks.max(1)) as u32;
        let periodic = now.duration_since(self.last_resend) >= every;
        if !changed && !periodic {
            return;
        }
        if periodic {
            self.last_resend = now;
        }
        for p in self.proposals.values_mut() {
            if p.proposed_in != Some(current.term) {
                propose_entry(&mut self.raw, p);
            }
        }
        for r in self.reads.values_mut() {
            let stale = match r.sent {
                None => true,
                Some((to, at)) => to != current || now.duration_since(at) >= every,
            };
            if stale {
                send_read(&mut self.raw, r, now);
            }
        }
    }

    /// Group commit: takes everything already queued (requests and peer traffic) before one
    /// Ready and one fsync.
    fn take_queued(&mut self, rx: &mut mpsc::Receiver<Msg>, peers: &mut mpsc::Receiver<PeerEvent>) {
        for _ in 0..4096 {
            match rx.try_recv() {
                Ok(msg) => self.handle(msg),
                Err(_) => break,
            }
        }
        for _ in 0..4096 {
            match peers.try_recv() {
                Ok(event) => self.on_peer_event(event),
                Err(_) => break,
            }
        }
    }

    fn on_peer_event(&mut self, event: PeerEvent) {
        match event {
            PeerEvent::Message(m) => {
                if let Err(e) = self.raw.step(*m) {
                    tracing::debug!(error = %e, "dropped raft message");
                }
            }
            PeerEvent::SnapshotSent { to, ok } => {
                let status = if ok {
                    raft::SnapshotStatus::Finish
                } else {
                    raft::SnapshotStatus::Failure
                };
                self.raw.report_snapshot(to, status);
            }
            PeerEvent::Unreachable(to) => self.raw.report_unreachable(to),
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Propose(command, reply) => {
                let Some(request) = self.request_id() else {
                    let _ = reply.send(Err(self.unavailable("the node's storage failed")));
                    return;
                };
                let proposal = Proposal {
                    origin: self.cfg.id,
                    request,
                    command,
                };
                self.metrics.proposals.inc();
                let mut pending = PendingProposal {
                    reply,
                    since: Instant::now(),
                    data: codec::encode(&proposal),
                    proposed_in: None,
                };
                propose_entry(&mut self.raw, &mut pending);
                self.proposals.insert(request, pending);
            }
            Msg::ReadIndex(reply) => {
                let Some(request) = self.request_id() else {
                    let _ = reply.send(Err(self.unavailable("the node's storage failed")));
                    return;
                };
                let now = Instant::now();
                let mut pending = PendingRead {
                    reply,
                    since: now,
                    ctx: read_context(self.cfg.id, request),
                    sent: None,
                };
                send_read(&mut self.raw, &mut pending, now);
                self.reads.insert(request, pending);
            }
            Msg::ChangeMembership(change, reply) => self.propose_membership(change, reply),
            Msg::TransferLeader(to, reply) => {
                let known = self.state.membership.voters.contains(&to);
                if !known {
                    let _ = reply.send(Err(NodeError::Invalid(format!(
                        "node {to} is not a voter; leadership can only go to a voter"
                    ))));
                } else {
                    self.raw.transfer_leader(to);
                    let _ = reply.send(Ok(()));
                }
            }
        }
    }

    fn propose_membership(&mut self, change: Membership, reply: Reply<crate::state::Membership>) {
        let m = &self.state.membership;
        let (kind, id, addr) = match change {
            Membership::AddLearner { id, addr } => {
                if m.voters.contains(&id) || m.learners.contains(&id) {
                    let _ = reply.send(Err(NodeError::Invalid(format!(
                        "node {id} is already a member"
                    ))));
                    return;
                }
                (ConfChangeType::AddLearnerNode, id, Some(addr))
            }
            Membership::Promote { id } => {
                if !m.learners.contains(&id) {
                    let _ = reply.send(Err(NodeError::Invalid(format!(
                        "node {id} is not a learner; add it with `cluster add` first"
                    ))));
                    return;
                }
                (ConfChangeType::AddNode, id, None)
            }
            Membership::Remove { id } => {
                if !m.voters.contains(&id) && !m.learners.contains(&id) {
                    let _ = reply.send(Err(NodeError::Invalid(format!(
                        "node {id} is not a member"
                    ))));
                    return;
                }
                if m.voters == [id] {
                    let _ = reply.send(Err(NodeError::Invalid(format!(
                        "node {id} is the last voter and cannot be removed"
                    ))));
                    return;
                }
                (ConfChangeType::RemoveNode, id, None)
            }
        };
        if id == 0 {
            let _ = reply.send(Err(NodeError::Invalid("node ids start at 1".into())));
            return;
        }
        let Some(request) = self.request_id() else {
            let _ = reply.send(Err(self.unavailable("the node's storage failed")));
            return;
        };
        let mut cc = ConfChange::default();
        cc.set_change_type(kind);
        cc.node_id = id;
        cc.context = codec::encode(&ConfContext {
            origin: self.cfg.id,
            request,
            addr,
        })
        .into();
        match self.raw.propose_conf_change(Vec::new(), cc) {
            Ok(()) => {
                self.conf_changes.insert(
                    request,
                    Pending {
                        reply,
                        since: Instant::now(),
                    },
                );
            }
            Err(e) => {
                let _ = reply.send(Err(
                    self.unavailable(&format!("the membership change was refused ({e})"))
                ));
            }
        }
    }

    /// Answers requests that waited too long, so clients retry elsewhere.
    fn expire(&mut self) {
        let now = Instant::now();
        let limit = self.cfg.request_timeout;
        let no_leader = self.unavailable("no leader was elected in time");
        let timeout = self.unavailable(
            "the update was not committed in time (it may still commit; retrying with the same update id is safe)",
        );
        for p in take_expired(&mut self.proposals, |p| p.since, now, limit) {
            let err = if p.proposed_in.is_some() {
                &timeout
            } else {
                &no_leader
            };
            let _ = p.reply.send(Err(err.clone()));
        }
        let timeout = self.unavailable("no leader confirmed the read in time");
        for r in take_expired(&mut self.reads, |r| r.since, now, limit) {
            let err = if r.sent.is_some() {
                &timeout
            } else {
                &no_leader
            };
            let _ = r.reply.send(Err(err.clone()));
        }
        let timeout = self.unavailable("the membership change was not committed in time");
        for c in take_expired(&mut self.conf_changes, |c| c.since, now, limit) {
            let _ = c.reply.send(Err(timeout.clone()));
        }
    }

    fn fail_all(&mut self, err: impl Fn() -> NodeError) {
        for (_, p) in self.proposals.drain() {
            let _ = p.reply.send(Err(err()));
        }
        for (_, p) in self.reads.drain() {
            let _ = p.reply.send(Err(err()));
        }
        for (_, p) in self.conf_changes.drain() {
            let _ = p.reply.send(Err(err()));
        }
        for (_, r) in self.ready_reads.drain(..) {
            let _ = r.send(Err(err()));
        }
    }

    fn on_ready(&mut self) -> Result<(), StoreError> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut rd = self.raw.ready();
        let store = self.raw.store().clone();

        if !rd.messages().is_empty() {
            self.send(rd.take_messages());
        }
        if !rd.snapshot().is_empty() {
            let snap = rd.snapshot().clone();
            self.state = store.install_snapshot(&snap, &self.states)?;
            // The snapshot replaced the whole stored state: nothing older is dirty.
            self.dirty = Dirty::default();
            self.checkpointed = self.state.applied_index;
            tracing::info!(index = self.state.applied_index, "installed a snapshot");
            self.after_membership_change();
            self.publish(vec![Arc::new(AppliedEvent {
                index: self.state.applied_index,
                changes: Vec::new(),
                reset: true,
            })]);
        }
        for rs in rd.take_read_states() {
            if let Some((node, request)) = parse_read_context(&rs.request_ctx)
                && node == self.cfg.id
                && let Some(p) = self.reads.remove(&request)
            {
                self.ready_reads.push((rs.index, p.reply));
            }
        }
        if let Some(hs) = rd.hs() {
            store.set_hard_state(hs)?;
        }
        let committed = rd.take_committed_entries();
        self.apply(committed)?;
        if !rd.entries().is_empty() {
            store.append(rd.entries())?;
        }
        if let Some(ss) = rd.ss() {
            self.on_role_change(ss.raft_state);
        }
        if rd.must_sync() || !rd.entries().is_empty() {
            self.store.sync()?;
        }
        if !rd.persisted_messages().is_empty() {
            self.send(rd.take_persisted_messages());
        }
        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            store.set_commit(commit)?;
        }
        self.send(light.take_messages());
        let committed = light.take_committed_entries();
        self.apply(committed)?;
        self.raw.advance_apply();
        self.answer_reads();
        self.maybe_compact()?;
        self.publish_status();
        Ok(())
    }

    /// Proposals of an older term are proposed again by [`resend`](Self::resend), not failed.
    fn on_role_change(&mut self, role: StateRole) {
        let term = self.raw.raft.term;
        tracing::info!(
            id = self.cfg.id,
            ?role,
            term,
            leader = self.raw.raft.leader_id,
            "raft role changed"
        );
    }

    fn send(&self, msgs: Vec<Message>) {
        for m in msgs {
            self.transport.send(m);
        }
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut changes_all = Vec::new();
        let mut events = Vec::new();
        let mut replies = Vec::new();
        let mut conf_replies = Vec::new();
        for entry in entries {
            if entry.index <= self.state.applied_index {
                continue;
            }
            let mut changes = Vec::new();
            match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => {}
                EntryType::EntryNormal => match codec::decode::<Proposal>(&entry.data) {
                    Ok(p) => {
                        let (outcome, ch) = self.state.apply(&p.command, &self.cfg.apply);
                        changes = ch;
                        if p.origin == self.cfg.id {
                            replies.push((p.request, outcome, entry.index));
                        }
                    }
                    Err(e) => {
                        tracing::error!(index = entry.index, error = %e, "undecodable log entry skipped");
                    }
                },
                EntryType::EntryConfChange => match ConfChange::parse_from_bytes(&entry.data) {
                    Ok(cc) => {
                        let ctx: Option<ConfContext> = codec::decode(&cc.context).ok();
                        match self.raw.apply_conf_change(&cc) {
                            Ok(cs) => {
                                self.raw.store().set_conf_state(&cs)?;
                                let m = &mut self.state.membership;
                                m.voters = cs.voters.clone();
                                m.learners = cs.learners.clone();
                                match cc.get_change_type() {
                                    ConfChangeType::RemoveNode => {
                                        m.addrs.remove(&cc.node_id);
                                    }
                                    _ => {
                                        if let Some(addr) =
                                            ctx.as_ref().and_then(|c| c.addr.clone())
                                        {
                                            m.addrs.entry(cc.node_id).or_insert(addr);
                                        }
                                    }
                                }
                                self.after_membership_change();
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "membership change not applied");
                            }
                        }
                        if let Some(ctx) = ctx
                            && ctx.origin == self.cfg.id
                        {
                            conf_replies.push(ctx.request);
                        }
                    }
                    Err(e) => {
                        tracing::error!(index = entry.index, error = %e, "undecodable conf change skipped");
                    }
                },
                EntryType::EntryConfChangeV2 => {
                    tracing::warn!(
                        index = entry.index,
                        "joint-consensus changes are not used; skipped"
                    );
                }
            }
            self.state.applied_index = entry.index;
            self.state.applied_term = entry.term;
            if !changes.is_empty() {
                events.push(Arc::new(AppliedEvent {
                    index: entry.index,
                    changes: changes.clone(),
                    reset: false,
                }));
                changes_all.extend(changes);
            }
        }
        self.dirty.record(&changes_all);
        self.publish(events);
        for (request, outcome, index) in replies {
            if let Some(p) = self.proposals.remove(&request) {
                self.metrics
                    .commit_latency
                    .observe(p.since.elapsed().as_secs_f64());
                let _ = p.reply.send(Ok((outcome, index)));
            }
        }
        for request in conf_replies {
            if let Some(p) = self.conf_changes.remove(&request) {
                let _ = p.reply.send(Ok(self.state.membership.clone()));
            }
        }
        Ok(())
    }

    fn after_membership_change(&mut self) {
        let m = &self.state.membership;
        let members: Vec<u64> = m.voters.iter().chain(m.learners.iter()).copied().collect();
        for (id, addr) in &m.addrs {
            if *id != self.cfg.id && members.contains(id) {
                self.transport.clone().set_peer(*id, addr.clone());
            }
        }
        self.transport.retain(&members);
    }

    fn publish(&mut self, events: Vec<Arc<AppliedEvent>>) {
        let state = Arc::new(self.state.clone());
        self.raw.store().set_applied(state.clone());
        self.metrics
            .applied_index
            .set(self.state.applied_index as i64);
        self.state_tx.send_replace(state);
        for e in events {
            // No subscriber is not an error.
            let _ = self.events.send(e);
        }
    }

    fn answer_reads(&mut self) {
        let applied = self.state.applied_index;
        let mut waiting = Vec::new();
        for (index, reply) in self.ready_reads.drain(..) {
            if index <= applied {
                let _ = reply.send(Ok(index));
            } else {
                waiting.push((index, reply));
            }
        }
        self.ready_reads = waiting;
    }

    /// Writes the maps changed since the last checkpoint, when it is time (or `now`).
    fn maybe_checkpoint(&mut self, now: bool) -> Result<(), StoreError> {
        let behind = self.state.applied_index.saturating_sub(self.checkpointed);
        if behind == 0 {
            return Ok(());
        }
        if !now
            && behind < self.cfg.checkpoint_entries
            && self.last_checkpoint.elapsed() < self.cfg.checkpoint_interval
        {
            return Ok(());
        }
        let dirty = std::mem::take(&mut self.dirty);
        let maps = dirty.maps();
        let started = Instant::now();
        self.states.checkpoint(&self.state, dirty)?;
        self.metrics
            .checkpoint_seconds
            .observe(started.elapsed().as_secs_f64());
        tracing::debug!(
            index = self.state.applied_index,
            entries = behind,
            maps,
            "checkpoint"
        );
        self.checkpointed = self.state.applied_index;
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    fn maybe_compact(&mut self) -> Result<(), StoreError> {
        let store = self.raw.store().clone();
        // Entries after the last checkpoint are needed to recover the state machine.
        let applied = self.checkpointed;
        let first = store.first();
        if applied.saturating_sub(first) >= self.cfg.compact_after {
            let to = applied.saturating_sub(self.cfg.keep_entries).max(first);
            if to > first {
                store.compact(to)?;
                tracing::debug!(to, "compacted the raft log");
            }
        }
        Ok(())
    }

    fn publish_status(&self) {
        let raft = &self.raw.raft;
        let role = match raft.state {
            StateRole::Leader => "leader",
            StateRole::Follower => "follower",
            StateRole::Candidate => "candidate",
            StateRole::PreCandidate => "pre-candidate",
        };
        let status = RaftStatus {
            id: self.cfg.id,
            leader_id: raft.leader_id,
            term: raft.term,
            role,
            commit: raft.raft_log.committed,
            first_index: self.raw.store().first(),
        };
        self.status_tx.send_if_modified(|s| {
            if *s != status {
                *s = status;
                true
            } else {
                false
            }
        });
    }
}

/// Removes and returns the entries of `pending` older than `limit`.
fn take_expired<V>(
    pending: &mut HashMap<u64, V>,
    since: impl Fn(&V) -> Instant,
    now: Instant,
    limit: Duration,
) -> Vec<V> {
    let ids: Vec<u64> = pending
        .iter()
        .filter(|(_, v)| now.duration_since(since(v)) > limit)
        .map(|(k, _)| *k)
        .collect();
    ids.iter().filter_map(|id| pending.remove(id)).collect()
}

//! The node loop: the one task that owns raft-rs's `RawNode`, the storage and the state machine,
//! and the only code here that touches them, the network and the clock. Decisions it does not
//! make itself are asked of the pure parts beside it: which requests to send again or expire
//! ([`super::pending`]), whether a membership change is valid and what it does
//! ([`super::membership`]), when to checkpoint and compact ([`super::checkpoint`]).

use std::sync::Arc;

use protobuf::Message as _;
use raft::eraftpb::{ConfChange, Entry, EntryType, Message, MessageType};
use raft::{RawNode, StateRole};
use sharing_map::codec;
use tokio::sync::{broadcast, mpsc, watch};
// tokio's clock, so that tests with a paused clock drive timeouts too.
use tokio::time::Instant;

use super::NodeConfig;
use super::checkpoint::CheckpointPolicy;
use super::handle::{AppliedEvent, Msg, NodeError, NodeHandle, RaftStatus, Reply};
use super::membership::{self, ConfChangeRequest, ConfContext, Membership};
use super::pending::{Leadership, PendingRequests, RaftRequests};
use super::request_numbers::{RequestNumbers, parse_read_context, read_context};
use crate::metrics::Metrics;
use crate::network::{PeerEvent, RaftNetwork};
use crate::state::{self, Proposal, State};
use crate::store::{Dirty, LogWrite, RaftLog, RaftStore, StateStore, Store, StoreError};

/// Who leads, as `raw` sees it; a new leader is `ready` for reads once it has committed an
/// entry of its term.
fn leadership<L: raft::Storage>(raw: &RawNode<L>) -> Leadership {
    let raft = &raw.raft;
    let committed = raft.raft_log.committed;
    Leadership {
        term: raft.term,
        leader: raft.leader_id,
        ready: raft.raft_log.term(committed).ok() == Some(raft.term),
    }
}

/// The proposals of one turn of the loop, stepped into raft-rs together
/// ([`NodeLoop::step_proposals`]): raft-rs sends each follower an append for every proposal
/// stepped, so one at a time a turn's proposals would travel (and be answered) as one message
/// per entry and follower.
struct Proposer<'a, L: raft::Storage> {
    raw: &'a mut RawNode<L>,
    /// Request numbers and entries, in the order offered.
    batch: &'a mut Vec<(u64, Entry)>,
}

impl<L: raft::Storage> RaftRequests for Proposer<'_, L> {
    fn propose(&mut self, request: u64, data: &[u8]) -> Option<u64> {
        if self.raw.raft.leader_id == 0 {
            return None;
        }
        let entry = Entry {
            data: data.to_vec().into(),
            ..Default::default()
        };
        self.batch.push((request, entry));
        Some(self.raw.raft.term)
    }

    fn read_index(&mut self, ctx: &[u8]) -> Option<Leadership> {
        if self.raw.raft.leader_id == 0 {
            return None;
        }
        RawNode::read_index(self.raw, ctx.to_vec());
        Some(leadership(self.raw))
    }
}

/// "Unavailable", with the leader this node knows of and its address as a hint.
fn unavailable(leader: u64, state: &State, reason: &str) -> NodeError {
    let leader = (leader != 0).then_some(leader);
    NodeError::Unavailable {
        reason: reason.into(),
        leader,
        addr: leader.and_then(|l| state.membership.addrs.get(&l).cloned()),
    }
}

/// The node loop's state.
struct NodeLoop<L: RaftLog> {
    cfg: NodeConfig,
    /// raft-rs's node over the log: the loop reaches the log through it ([`RaftLog`]).
    raw: RawNode<L>,
    states: StateStore,
    state: State,
    transport: Arc<dyn RaftNetwork>,
    metrics: Arc<Metrics>,
    state_tx: watch::Sender<Arc<State>>,
    status_tx: watch::Sender<RaftStatus>,
    events: broadcast::Sender<Arc<AppliedEvent>>,
    /// Numbers for requests, unique across this node's lives.
    numbers: RequestNumbers,
    /// Requests waiting for Raft.
    pending: PendingRequests,
    /// Proposals offered this turn, stepped into Raft together before the next Ready.
    proposing: Vec<(u64, Entry)>,
    /// A storage failure met where it could not be returned; it stops the loop.
    broken: Option<StoreError>,
    /// When to checkpoint and how far to compact.
    policy: CheckpointPolicy,
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
    state.membership = membership::at_start(state.membership, initial_voters, &addrs);
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
    let policy = CheckpointPolicy::of(&cfg);
    let node = NodeLoop {
        cfg,
        raw,
        states,
        state,
        transport,
        metrics,
        state_tx,
        status_tx,
        events,
        numbers,
        pending: PendingRequests::new(Instant::now()),
        proposing: Vec::new(),
        broken: None,
        policy,
        dirty: Dirty::default(),
        checkpointed: applied,
        last_checkpoint: Instant::now(),
    };
    let task = tokio::spawn(node.run(rx, peer_events, shutdown_rx));
    Ok((handle, task))
}

impl<L: RaftLog> NodeLoop<L> {
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
                    self.resend();
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
        self.pending.fail_all(|| NodeError::Stopped);
        tracing::info!(id = self.cfg.id, "node loop stopped");
    }

    fn unavailable(&self, reason: &str) -> NodeError {
        unavailable(self.raw.raft.leader_id, &self.state, reason)
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

    /// Sends pending requests again where they may have been lost (see [`PendingRequests::resend`]).
    fn resend(&mut self) {
        let current = leadership(&self.raw);
        let every = self.cfg.tick * (2 * self.cfg.heartbeat_ticks.max(1)) as u32;
        let mut proposer = Proposer {
            raw: &mut self.raw,
            batch: &mut self.proposing,
        };
        self.pending
            .resend(&mut proposer, current, Instant::now(), every);
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
                let mut proposer = Proposer {
                    raw: &mut self.raw,
                    batch: &mut self.proposing,
                };
                self.pending.propose(
                    &mut proposer,
                    request,
                    codec::encode(&proposal),
                    reply,
                    Instant::now(),
                );
            }
            Msg::ReadIndex(reply) => {
                let Some(request) = self.request_id() else {
                    let _ = reply.send(Err(self.unavailable("the node's storage failed")));
                    return;
                };
                let ctx = read_context(self.cfg.id, request);
                let mut proposer = Proposer {
                    raw: &mut self.raw,
                    batch: &mut self.proposing,
                };
                self.pending
                    .read(&mut proposer, request, ctx, reply, Instant::now());
            }
            Msg::ChangeMembership(change, reply) => self.propose_membership(change, reply),
            Msg::TransferLeader(to, reply) => {
                let checked = membership::check_transfer(to, &self.state.membership);
                if checked.is_ok() {
                    self.raw.transfer_leader(to);
                }
                let _ = reply.send(checked);
            }
        }
    }

    fn propose_membership(&mut self, change: Membership, reply: Reply<state::Membership>) {
        let ConfChangeRequest { kind, id, addr } =
            match membership::check(change, &self.state.membership) {
                Ok(checked) => checked,
                Err(e) => {
                    let _ = reply.send(Err(e));
                    return;
                }
            };
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
            Ok(()) => self.pending.conf_change(request, reply, Instant::now()),
            Err(e) => {
                let _ = reply.send(Err(
                    self.unavailable(&format!("the membership change was refused ({e})"))
                ));
            }
        }
    }

    /// Answers requests that waited too long, so clients retry elsewhere.
    fn expire(&mut self) {
        let limit = self.cfg.request_timeout;
        let (raft, state) = (&self.raw.raft, &self.state);
        let unavailable = |reason: &str| unavailable(raft.leader_id, state, reason);
        self.pending.expire(Instant::now(), limit, unavailable);
    }

    /// Steps this turn's proposals into Raft as one proposal message: one append per follower
    /// for all of them. Those Raft refuses are offered again later.
    fn step_proposals(&mut self) {
        if self.proposing.is_empty() {
            return;
        }
        let (requests, entries): (Vec<u64>, Vec<Entry>) = self.proposing.drain(..).unzip();
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgPropose);
        m.from = self.cfg.id;
        m.set_entries(entries.into());
        // What `RawNode::propose` does with one entry.
        if let Err(e) = self.raw.raft.step(m) {
            tracing::debug!(error = %e, proposals = requests.len(), "proposals not taken yet; they are proposed again");
            self.pending.not_taken(&requests);
        }
    }

    fn on_ready(&mut self) -> Result<(), StoreError> {
        self.step_proposals();
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut rd = self.raw.ready();
        let store = self.raw.store().clone();

        if !rd.messages().is_empty() {
            self.send(rd.take_messages());
        }
        // What this Ready persists goes to the log as one batch: the snapshot's position, the
        // entries, the hard state.
        let mut write = LogWrite::default();
        if !rd.snapshot().is_empty() {
            let snap = rd.snapshot();
            // The state machine first, synced, then the log: a crash in between leaves a newer
            // state over an older log, whose entries `apply` skips.
            self.state = self.states.install(&snap.data)?;
            write.snapshot = Some(snap.get_metadata().clone());
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
            {
                self.pending.read_confirmed(request, rs.index);
            }
        }
        write.entries = rd.take_entries();
        write.hard_state = rd.hs().cloned();
        let must_sync = rd.must_sync() || !write.entries.is_empty() || write.snapshot.is_some();
        store.write(write)?;
        // Committed entries are on a majority's disks already; applying them needs no sync of
        // what this Ready wrote (a conf change applied here is written after it).
        let committed = rd.take_committed_entries();
        self.apply(committed)?;
        if let Some(ss) = rd.ss() {
            self.on_role_change(ss.raft_state);
        }
        // One fsync for everything above, before any message or acknowledgement that depends
        // on it.
        if must_sync {
            store.sync()?;
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
        self.pending.answer_reads(self.state.applied_index);
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
                                membership::after_conf_change(
                                    &mut self.state.membership,
                                    cc.get_change_type(),
                                    cc.node_id,
                                    &cs,
                                    ctx.as_ref().and_then(|c| c.addr.clone()),
                                );
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
            if let Some(since) = self.pending.proposal_applied(request, outcome, index) {
                self.metrics
                    .commit_latency
                    .observe(since.elapsed().as_secs_f64());
            }
        }
        for request in conf_replies {
            self.pending
                .conf_change_applied(request, &self.state.membership);
        }
        Ok(())
    }

    fn after_membership_change(&mut self) {
        let m = &self.state.membership;
        for (id, addr) in membership::peers(m, self.cfg.id) {
            self.transport.clone().set_peer(id, addr);
        }
        self.transport.retain(&membership::members(m));
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

    /// Writes the maps changed since the last checkpoint, when it is time (or `now`).
    fn maybe_checkpoint(&mut self, now: bool) -> Result<(), StoreError> {
        let (applied, since_last) = (self.state.applied_index, self.last_checkpoint.elapsed());
        if !self
            .policy
            .checkpoint_due(applied, self.checkpointed, since_last, now)
        {
            return Ok(());
        }
        let behind = applied - self.checkpointed;
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
        let store = self.raw.store();
        // Entries after the last checkpoint are needed to recover the state machine.
        if let Some(to) = self.policy.compact_to(self.checkpointed, store.first()) {
            store.compact(to)?;
            tracing::debug!(to, "compacted the raft log");
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

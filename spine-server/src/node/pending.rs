//! The book of requests waiting on Raft: proposals until their entry applies here, linearizable
//! reads until a leader confirms a read index and this node has applied up to it, membership
//! changes until they apply.
//!
//! Pure: no clock (callers pass `now`) and no Raft (what the book asks of Raft goes through
//! [`RaftRequests`]), so each rule below is tested without a node.
//! - A request that arrives while no leader is known waits here (raft-rs would drop it) and is
//!   sent once one is.
//! - When the leadership changes, a proposal not proposed in the current term and a read not
//!   sent to the current leadership are sent again: a leader that fails takes forwarded
//!   proposals and reads with it, an entry in its log may be overwritten, and a new leader
//!   ignores reads until it has committed an entry of its term. Proposing again is safe because
//!   every command is idempotent (create-if-absent, updates by update id); whichever copy
//!   applies first answers. Reads, cheap to repeat, are also sent again every few heartbeats
//!   as a last resort against lost messages.
//! - A request older than the request timeout is answered "unavailable", saying whether a
//!   leader ever took it, so the client retries elsewhere.
//! - When the loop stops, every request is answered.

use std::collections::HashMap;
use std::time::Duration;

// tokio's clock, so that tests with a paused clock drive timeouts too.
use tokio::time::Instant;

use super::NodeError;
use super::handle::Reply;
use crate::state::{Membership, Outcome};

/// Who leads, as this node sees it. When it changes, requests in flight may have been lost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Leadership {
    /// The term.
    pub term: u64,
    /// The leader (0 when none is known).
    pub leader: u64,
    /// Whether the leader has committed an entry of its term, and so serves reads.
    pub ready: bool,
}

/// What the book asks of Raft. The node loop implements it over raft-rs's `RawNode`.
pub trait RaftRequests {
    /// Hands encoded proposal `request` to Raft (a follower forwards it to the leader): the
    /// term it was taken in, or `None` when no leader is known or Raft did not take it now.
    /// Raft may refuse it later, when the proposals of one turn are stepped together
    /// ([`PendingRequests::not_taken`]).
    fn propose(&mut self, request: u64, data: &[u8]) -> Option<u64>;
    /// Asks for a read index for `ctx`: the leadership it went to, or `None` when no leader is
    /// known.
    fn read_index(&mut self, ctx: &[u8]) -> Option<Leadership>;
}

#[derive(Debug)]
struct Proposal {
    reply: Reply<(Outcome, u64)>,
    since: Instant,
    /// The encoded entry, kept to propose it again.
    data: Vec<u8>,
    /// The term it was last proposed in; `None` while no leader took it.
    proposed_in: Option<u64>,
}

#[derive(Debug)]
struct Read {
    reply: Reply<u64>,
    since: Instant,
    /// Its ReadIndex context.
    ctx: Vec<u8>,
    /// The leadership it was last sent to, and when; `None` while no leader was known.
    sent: Option<(Leadership, Instant)>,
}

#[derive(Debug)]
struct ConfChange {
    reply: Reply<Membership>,
    since: Instant,
}

/// Requests waiting on Raft, by request number.
#[derive(Debug)]
pub struct PendingRequests {
    proposals: HashMap<u64, Proposal>,
    reads: HashMap<u64, Read>,
    conf_changes: HashMap<u64, ConfChange>,
    /// Reads with a confirmed read index, waiting for this node to apply up to it.
    ready_reads: Vec<(u64, Reply<u64>)>,
    /// The leadership pending requests were last sent to.
    leadership: Leadership,
    last_resend: Instant,
}

impl PendingRequests {
    /// An empty book at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            proposals: HashMap::new(),
            reads: HashMap::new(),
            conf_changes: HashMap::new(),
            ready_reads: Vec::new(),
            leadership: Leadership::default(),
            last_resend: now,
        }
    }

    /// How many requests wait, of every kind.
    pub fn len(&self) -> usize {
        self.proposals.len() + self.reads.len() + self.conf_changes.len() + self.ready_reads.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A new proposal: offered to Raft now, and kept until it applies.
    pub fn propose(
        &mut self,
        raft: &mut impl RaftRequests,
        request: u64,
        data: Vec<u8>,
        reply: Reply<(Outcome, u64)>,
        now: Instant,
    ) {
        let proposed_in = raft.propose(request, &data);
        self.proposals.insert(
            request,
            Proposal {
                reply,
                since: now,
                data,
                proposed_in,
            },
        );
    }

    /// Raft refused proposals it had been offered (they were stepped after the offer): they
    /// count as never proposed, so [`resend`](Self::resend) offers them again.
    pub fn not_taken(&mut self, requests: &[u64]) {
        for request in requests {
            if let Some(p) = self.proposals.get_mut(request) {
                p.proposed_in = None;
            }
        }
    }

    /// A new linearizable read: a read index asked for now, and kept until confirmed.
    pub fn read(
        &mut self,
        raft: &mut impl RaftRequests,
        request: u64,
        ctx: Vec<u8>,
        reply: Reply<u64>,
        now: Instant,
    ) {
        let sent = raft.read_index(&ctx).map(|to| (to, now));
        self.reads.insert(
            request,
            Read {
                reply,
                since: now,
                ctx,
                sent,
            },
        );
    }

    /// A membership change Raft took: kept until it applies.
    pub fn conf_change(&mut self, request: u64, reply: Reply<Membership>, now: Instant) {
        self.conf_changes
            .insert(request, ConfChange { reply, since: now });
    }

    /// A leader confirmed read `request` at `index`; it is answered once this node applied
    /// that far ([`answer_reads`](Self::answer_reads)). Unknown requests (answered already, or
    /// another life's) are ignored.
    pub fn read_confirmed(&mut self, request: u64, index: u64) {
        if let Some(r) = self.reads.remove(&request) {
            self.ready_reads.push((index, r.reply));
        }
    }

    /// Answers reads confirmed at or below `applied`.
    pub fn answer_reads(&mut self, applied: u64) {
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

    /// Proposal `request` applied here with `outcome` at `index`: answers it and returns when
    /// it was asked for (for latency figures); `None` if it is not pending (another copy of it
    /// applied first, or it expired).
    pub fn proposal_applied(
        &mut self,
        request: u64,
        outcome: Outcome,
        index: u64,
    ) -> Option<Instant> {
        let p = self.proposals.remove(&request)?;
        let _ = p.reply.send(Ok((outcome, index)));
        Some(p.since)
    }

    /// Membership change `request` applied here: answers it with the new membership.
    pub fn conf_change_applied(&mut self, request: u64, membership: &Membership) {
        if let Some(c) = self.conf_changes.remove(&request) {
            let _ = c.reply.send(Ok(membership.clone()));
        }
    }

    /// Sends pending requests again where they may have been lost: to a new leader, to a
    /// leader that became able to serve reads, once a leader is known, and (reads only) every
    /// `every` as a last resort against lost messages.
    pub fn resend(
        &mut self,
        raft: &mut impl RaftRequests,
        current: Leadership,
        now: Instant,
        every: Duration,
    ) {
        if current.leader == 0 {
            return;
        }
        let changed = current != self.leadership;
        self.leadership = current;
        let periodic = now.duration_since(self.last_resend) >= every;
        if !changed && !periodic {
            return;
        }
        if periodic {
            self.last_resend = now;
        }
        for (&request, p) in self.proposals.iter_mut() {
            if p.proposed_in != Some(current.term)
                && let Some(term) = raft.propose(request, &p.data)
            {
                p.proposed_in = Some(term);
            }
        }
        for r in self.reads.values_mut() {
            let stale = match r.sent {
                None => true,
                Some((to, at)) => to != current || now.duration_since(at) >= every,
            };
            if stale && let Some(to) = raft.read_index(&r.ctx) {
                r.sent = Some((to, now));
            }
        }
    }

    /// Answers requests older than `limit` with "unavailable" errors made by `unavailable`
    /// (which adds the leader hint), so clients retry elsewhere.
    pub fn expire(
        &mut self,
        now: Instant,
        limit: Duration,
        unavailable: impl Fn(&str) -> NodeError,
    ) {
        let no_leader = unavailable("no leader was elected in time");
        let timeout = unavailable(
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
        let timeout = unavailable("no leader confirmed the read in time");
        for r in take_expired(&mut self.reads, |r| r.since, now, limit) {
            let err = if r.sent.is_some() {
                &timeout
            } else {
                &no_leader
            };
            let _ = r.reply.send(Err(err.clone()));
        }
        let timeout = unavailable("the membership change was not committed in time");
        for c in take_expired(&mut self.conf_changes, |c| c.since, now, limit) {
            let _ = c.reply.send(Err(timeout.clone()));
        }
    }

    /// Answers every request with `err()` (the loop is stopping).
    pub fn fail_all(&mut self, err: impl Fn() -> NodeError) {
        for (_, p) in self.proposals.drain() {
            let _ = p.reply.send(Err(err()));
        }
        for (_, r) in self.reads.drain() {
            let _ = r.reply.send(Err(err()));
        }
        for (_, c) in self.conf_changes.drain() {
            let _ = c.reply.send(Err(err()));
        }
        for (_, r) in self.ready_reads.drain(..) {
            let _ = r.send(Err(err()));
        }
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

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot;

    use super::*;

    /// Raft as the book sees it: a leadership the test sets, and a record of what was sent.
    #[derive(Debug, Default)]
    struct FakeRaft {
        now: Leadership,
        proposed: Vec<Vec<u8>>,
        reads: Vec<Vec<u8>>,
    }

    impl FakeRaft {
        fn led(term: u64, leader: u64, ready: bool) -> Self {
            Self {
                now: Leadership {
                    term,
                    leader,
                    ready,
                },
                ..Self::default()
            }
        }
    }

    impl RaftRequests for FakeRaft {
        fn propose(&mut self, _request: u64, data: &[u8]) -> Option<u64> {
            if self.now.leader == 0 {
                return None;
            }
            self.proposed.push(data.to_vec());
            Some(self.now.term)
        }
        fn read_index(&mut self, ctx: &[u8]) -> Option<Leadership> {
            if self.now.leader == 0 {
                return None;
            }
            self.reads.push(ctx.to_vec());
            Some(self.now)
        }
    }

    type Answer<T> = oneshot::Receiver<Result<T, NodeError>>;

    fn answer<T>(rx: &mut Answer<T>) -> Option<Result<T, String>> {
        rx.try_recv().ok().map(|r| r.map_err(|e| e.to_string()))
    }

    const EVERY: Duration = Duration::from_millis(400);
    const LIMIT: Duration = Duration::from_secs(5);

    fn unavailable(reason: &str) -> NodeError {
        NodeError::Unavailable {
            reason: reason.into(),
            leader: None,
            addr: None,
        }
    }

    fn propose(
        book: &mut PendingRequests,
        raft: &mut FakeRaft,
        n: u64,
        t: Instant,
    ) -> Answer<(Outcome, u64)> {
        let (tx, rx) = oneshot::channel();
        book.propose(raft, n, vec![n as u8], tx, t);
        rx
    }

    fn resend(book: &mut PendingRequests, raft: &mut FakeRaft, at: Instant) {
        let current = raft.now;
        book.resend(raft, current, at, EVERY);
    }

    /// The error text of an answer, or "" when there is none or it is not an error.
    fn error<T>(rx: &mut Answer<T>) -> String {
        answer(rx).and_then(Result::err).unwrap_or_default()
    }

    fn read(book: &mut PendingRequests, raft: &mut FakeRaft, n: u64, t: Instant) -> Answer<u64> {
        let (tx, rx) = oneshot::channel();
        book.read(raft, n, vec![n as u8], tx, t);
        rx
    }

    #[test]
    fn requests_without_a_leader_wait_and_go_out_once_one_is_known() {
        let t0 = Instant::now();
        let mut book = PendingRequests::new(t0);
        let mut raft = FakeRaft::default();
        let mut p = propose(&mut book, &mut raft, 1, t0);
        let mut r = read(&mut book, &mut raft, 2, t0);
        assert!(raft.proposed.is_empty() && raft.reads.is_empty());
        // Still nobody leads: nothing is sent, nothing is answered.
        resend(&mut book, &mut raft, t0 + EVERY);
        assert!(raft.proposed.is_empty() && raft.reads.is_empty());
        raft.now = FakeRaft::led(3, 2, true).now;
        resend(&mut book, &mut raft, t0 + EVERY);
        assert_eq!(
            (raft.proposed.as_slice(), raft.reads.as_slice()),
            ([vec![1]].as_slice(), [vec![2]].as_slice())
        );
        assert_eq!((answer(&mut p), answer(&mut r)), (None, None));
        assert_eq!(book.len(), 2);
    }

    #[test]
    fn a_new_leader_gets_what_the_old_one_may_have_lost() {
        let t0 = Instant::now();
        let mut book = PendingRequests::new(t0);
        let mut raft = FakeRaft::led(2, 1, true);
        resend(&mut book, &mut raft, t0);
        let _p = propose(&mut book, &mut raft, 1, t0);
        let _r = read(&mut book, &mut raft, 2, t0);
        assert_eq!((raft.proposed.len(), raft.reads.len()), (1, 1));
        // Same leadership, before the period: nothing again.
        resend(&mut book, &mut raft, t0 + EVERY / 2);
        assert_eq!((raft.proposed.len(), raft.reads.len()), (1, 1));
        // The period passed: reads go out again, proposals (not cheap, not lost) do not.
        resend(&mut book, &mut raft, t0 + EVERY);
        assert_eq!((raft.proposed.len(), raft.reads.len()), (1, 2));
        // A new term: both again.
        raft.now = FakeRaft::led(3, 2, false).now;
        resend(&mut book, &mut raft, t0 + EVERY + EVERY / 4);
        assert_eq!((raft.proposed.len(), raft.reads.len()), (2, 3));
        // The new leader commits an entry of its term and serves reads: the read goes again,
        // the proposal, already proposed in this term, does not.
        raft.now.ready = true;
        resend(&mut book, &mut raft, t0 + EVERY + EVERY / 2);
        assert_eq!((raft.proposed.len(), raft.reads.len()), (2, 4));
    }

    #[test]
    fn a_proposal_raft_refused_after_taking_it_is_offered_again() {
        let t0 = Instant::now();
        let mut book = PendingRequests::new(t0);
        let mut raft = FakeRaft::led(2, 1, true);
        resend(&mut book, &mut raft, t0);
        let _p = propose(&mut book, &mut raft, 1, t0);
        let _q = propose(&mut book, &mut raft, 2, t0);
        assert_eq!(raft.proposed.len(), 2);
        // Stepped with the rest of its turn, proposal 1 was dropped (a leader transfer, say).
        book.not_taken(&[1]);
        resend(&mut book, &mut raft, t0 + EVERY);
        assert_eq!(raft.proposed, [vec![1], vec![2], vec![1]]);
    }

    #[test]
    fn the_first_copy_to_apply_answers_and_reads_wait_for_their_index() {
        let t0 = Instant::now();
        let mut book = PendingRequests::new(t0);
        let mut raft = FakeRaft::led(1, 1, true);
        let mut p = propose(&mut book, &mut raft, 7, t0);
        let outcome = Outcome::Updated { versions: vec![4] };
        assert_eq!(book.proposal_applied(7, outcome.clone(), 12), Some(t0));
        assert_eq!(answer(&mut p), Some(Ok((outcome.clone(), 12))));
        // A second copy of the same proposal (proposed again after a leader change) applies
        // later: nobody is left to answer.
        assert_eq!(book.proposal_applied(7, outcome, 13), None);

        let mut r = read(&mut book, &mut raft, 8, t0);
        book.read_confirmed(8, 20);
        book.read_confirmed(99, 20); // not ours, or answered already
        book.answer_reads(19);
        assert_eq!(answer(&mut r), None);
        book.answer_reads(20);
        assert_eq!(answer(&mut r), Some(Ok(20)));
        assert!(book.is_empty());
    }

    #[test]
    fn old_requests_expire_saying_whether_a_leader_took_them() {
        let t0 = Instant::now();
        let mut book = PendingRequests::new(t0);
        let mut nobody = FakeRaft::default();
        let mut unproposed = propose(&mut book, &mut nobody, 1, t0);
        let mut unsent = read(&mut book, &mut nobody, 2, t0);
        let mut leader = FakeRaft::led(1, 1, true);
        let mut proposed = propose(&mut book, &mut leader, 3, t0);
        let mut sent = read(&mut book, &mut leader, 4, t0);
        let (tx, mut conf) = oneshot::channel();
        book.conf_change(5, tx, t0);
        let mut young = propose(&mut book, &mut leader, 6, t0 + LIMIT);
        book.expire(t0 + LIMIT, LIMIT, unavailable);
        assert_eq!(book.len(), 6, "nothing is older than the limit yet");
        book.expire(t0 + LIMIT + Duration::from_millis(1), LIMIT, unavailable);
        assert!(error(&mut unproposed).starts_with("no leader was elected in time"));
        assert!(error(&mut unsent).starts_with("no leader was elected in time"));
        assert!(error(&mut proposed).contains("not committed in time"));
        assert!(error(&mut sent).starts_with("no leader confirmed the read in time"));
        assert!(error(&mut conf).starts_with("the membership change was not committed"));
        assert_eq!(answer(&mut young), None);
        assert_eq!(book.len(), 1);
    }

    #[test]
    fn stopping_answers_everything() {
        let t0 = Instant::now();
        let mut book = PendingRequests::new(t0);
        let mut raft = FakeRaft::led(1, 1, true);
        let mut p = propose(&mut book, &mut raft, 1, t0);
        let mut r = read(&mut book, &mut raft, 2, t0);
        let mut confirmed = read(&mut book, &mut raft, 3, t0);
        book.read_confirmed(3, 10);
        let (tx, mut c) = oneshot::channel();
        book.conf_change(4, tx, t0);
        book.fail_all(|| NodeError::Stopped);
        let stopped = "the node is shutting down";
        assert_eq!(error(&mut p), stopped);
        assert_eq!(error(&mut r), stopped);
        assert_eq!(error(&mut confirmed), stopped);
        assert_eq!(error(&mut c), stopped);
        assert!(book.is_empty());
    }
}

//! The membership rules, free of Raft and I/O: which changes a client may ask for, the Raft
//! configuration change each one becomes, what applying one does to the replicated membership,
//! and which peers a node talks to.
//!
//! ```text
//!  Membership (request) ─check─▶ ConfChangeRequest ─(proposed with a ConfContext, committed)─▶
//!      Raft's new ConfState ─after_conf_change─▶ state::Membership ─peers─▶ transport
//! ```

use std::collections::BTreeMap;

use raft::eraftpb::{ConfChangeType, ConfState};
use serde::{Deserialize, Serialize};

use super::NodeError;
use crate::state::Membership as Members;

/// A membership change a client asks for.
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

/// A change that passed [`check`]: what to propose to Raft.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfChangeRequest {
    /// Raft's kind of change.
    pub kind: ConfChangeType,
    /// The node it is about.
    pub id: u64,
    /// The address of a node being added, replicated with the change.
    pub addr: Option<String>,
}

/// Context carried by conf-change entries so the proposer can answer, and every node learns an
/// added node's address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfContext {
    /// The node that proposed the change.
    pub origin: u64,
    /// Its request number.
    pub request: u64,
    /// The added node's address.
    pub addr: Option<String>,
}

/// Whether `change` is valid for the membership `m`; the configuration change to propose.
pub fn check(change: Membership, m: &Members) -> Result<ConfChangeRequest, NodeError> {
    let invalid = |text: String| Err(NodeError::Invalid(text));
    let (kind, id, addr) = match change {
        Membership::AddLearner { id, addr } => {
            if m.voters.contains(&id) || m.learners.contains(&id) {
                return invalid(format!("node {id} is already a member"));
            }
            (ConfChangeType::AddLearnerNode, id, Some(addr))
        }
        Membership::Promote { id } => {
            if !m.learners.contains(&id) {
                return invalid(format!(
                    "node {id} is not a learner; add it with `cluster add` first"
                ));
            }
            (ConfChangeType::AddNode, id, None)
        }
        Membership::Remove { id } => {
            if !m.voters.contains(&id) && !m.learners.contains(&id) {
                return invalid(format!("node {id} is not a member"));
            }
            if m.voters == [id] {
                return invalid(format!("node {id} is the last voter and cannot be removed"));
            }
            (ConfChangeType::RemoveNode, id, None)
        }
    };
    if id == 0 {
        return invalid("node ids start at 1".into());
    }
    Ok(ConfChangeRequest { kind, id, addr })
}

/// Whether leadership may move to `to`: only a voter can lead.
pub fn check_transfer(to: u64, m: &Members) -> Result<(), NodeError> {
    if m.voters.contains(&to) {
        Ok(())
    } else {
        Err(NodeError::Invalid(format!(
            "node {to} is not a voter; leadership can only go to a voter"
        )))
    }
}

/// The membership a node starts with: what it had applied, the founding voters when it has
/// none yet, and the addresses it was given, which win over replicated ones (they may route
/// through a proxy or another interface).
pub fn at_start(mut m: Members, initial_voters: &[u64], addrs: &BTreeMap<u64, String>) -> Members {
    if m.voters.is_empty() && !initial_voters.is_empty() {
        m.voters = initial_voters.to_vec();
    }
    for (id, addr) in addrs {
        m.addrs.insert(*id, addr.clone());
    }
    m
}

/// Records a configuration change Raft applied: voters and learners are Raft's; a removed node's
/// address is forgotten; an added node's address is learnt, unless one is already known (a
/// node's own configuration wins, see [`at_start`]).
pub fn after_conf_change(
    m: &mut Members,
    kind: ConfChangeType,
    id: u64,
    cs: &ConfState,
    addr: Option<String>,
) {
    m.voters = cs.voters.clone();
    m.learners = cs.learners.clone();
    match kind {
        ConfChangeType::RemoveNode => {
            m.addrs.remove(&id);
        }
        _ => {
            if let Some(addr) = addr {
                m.addrs.entry(id).or_insert(addr);
            }
        }
    }
}

/// Every member: the voters, then the learners.
pub fn members(m: &Members) -> Vec<u64> {
    m.voters.iter().chain(m.learners.iter()).copied().collect()
}

/// The members node `me` talks to, with their addresses: every other member whose address is
/// known.
pub fn peers(m: &Members, me: u64) -> Vec<(u64, String)> {
    let members = members(m);
    m.addrs
        .iter()
        .filter(|(id, _)| **id != me && members.contains(id))
        .map(|(id, addr)| (*id, addr.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(voters: &[u64], learners: &[u64]) -> Members {
        Members {
            voters: voters.to_vec(),
            learners: learners.to_vec(),
            addrs: voters
                .iter()
                .chain(learners)
                .map(|id| (*id, format!("h{id}:1")))
                .collect(),
        }
    }

    fn refused(change: Membership, m: &Members) -> String {
        match check(change, m) {
            Err(NodeError::Invalid(text)) => text,
            other => format!("not refused: {other:?}"),
        }
    }

    #[test]
    fn only_new_nodes_are_added_and_only_learners_promoted() {
        let m = members(&[1, 2, 3], &[4]);
        let add = Membership::AddLearner {
            id: 5,
            addr: "h5:1".into(),
        };
        assert_eq!(
            check(add, &m).ok(),
            Some(ConfChangeRequest {
                kind: ConfChangeType::AddLearnerNode,
                id: 5,
                addr: Some("h5:1".into())
            })
        );
        for id in [2, 4] {
            let again = Membership::AddLearner {
                id,
                addr: "x:1".into(),
            };
            assert_eq!(refused(again, &m), format!("node {id} is already a member"));
        }
        assert_eq!(
            check(Membership::Promote { id: 4 }, &m)
                .map(|c| c.kind)
                .ok(),
            Some(ConfChangeType::AddNode)
        );
        assert!(refused(Membership::Promote { id: 2 }, &m).contains("not a learner"));
        assert!(refused(Membership::Promote { id: 9 }, &m).contains("`cluster add` first"));
        let zero = Membership::AddLearner {
            id: 0,
            addr: "x:1".into(),
        };
        assert_eq!(refused(zero, &m), "node ids start at 1");
    }

    #[test]
    fn members_are_removed_but_never_the_last_voter() {
        let m = members(&[1, 2], &[3]);
        for id in [2, 3] {
            assert_eq!(
                check(Membership::Remove { id }, &m).map(|c| c.kind).ok(),
                Some(ConfChangeType::RemoveNode)
            );
        }
        assert_eq!(
            refused(Membership::Remove { id: 7 }, &m),
            "node 7 is not a member"
        );
        let alone = members(&[1], &[3]);
        assert_eq!(
            refused(Membership::Remove { id: 1 }, &alone),
            "node 1 is the last voter and cannot be removed"
        );
        // Removing the last learner is fine.
        assert!(check(Membership::Remove { id: 3 }, &alone).is_ok());
    }

    #[test]
    fn leadership_goes_only_to_voters() {
        let m = members(&[1, 2], &[3]);
        assert!(check_transfer(2, &m).is_ok());
        for to in [3, 9] {
            assert!(
                matches!(check_transfer(to, &m), Err(NodeError::Invalid(t)) if t.contains("not a voter"))
            );
        }
    }

    #[test]
    fn applied_changes_take_raft_s_members_and_keep_known_addresses() {
        let mut m = members(&[1, 2, 3], &[]);
        let cs = ConfState {
            voters: vec![1, 2, 3],
            learners: vec![4],
            ..Default::default()
        };
        after_conf_change(
            &mut m,
            ConfChangeType::AddLearnerNode,
            4,
            &cs,
            Some("h4:1".into()),
        );
        assert_eq!(m.learners, [4]);
        assert_eq!(m.addrs.get(&4).map(String::as_str), Some("h4:1"));
        // A node's own address for a peer is not replaced by a replicated one.
        after_conf_change(
            &mut m,
            ConfChangeType::AddLearnerNode,
            4,
            &cs,
            Some("elsewhere:1".into()),
        );
        assert_eq!(m.addrs.get(&4).map(String::as_str), Some("h4:1"));
        let cs = ConfState {
            voters: vec![1, 2],
            learners: vec![4],
            ..Default::default()
        };
        after_conf_change(&mut m, ConfChangeType::RemoveNode, 3, &cs, None);
        assert_eq!(
            (m.voters.as_slice(), m.addrs.contains_key(&3)),
            ([1, 2].as_slice(), false)
        );
        assert_eq!(
            peers(&m, 1),
            vec![(2, "h2:1".to_string()), (4, "h4:1".to_string())]
        );
    }

    #[test]
    fn a_node_starts_with_founders_and_its_own_addresses() {
        let given = BTreeMap::from([(1, "me:1".to_string()), (2, "proxy:2".to_string())]);
        let fresh = at_start(Members::default(), &[1, 2, 3], &given);
        assert_eq!(fresh.voters, [1, 2, 3]);
        assert_eq!(fresh.addrs.get(&2).map(String::as_str), Some("proxy:2"));
        // A node that has applied a membership keeps it; given addresses still win.
        let applied = members(&[1, 2, 4], &[]);
        let restarted = at_start(applied, &[1, 2, 3], &given);
        assert_eq!(restarted.voters, [1, 2, 4]);
        assert_eq!(restarted.addrs.get(&2).map(String::as_str), Some("proxy:2"));
        assert_eq!(restarted.addrs.get(&4).map(String::as_str), Some("h4:1"));
        // Joining: no founders, nothing to vote with yet.
        assert!(at_start(Members::default(), &[], &given).voters.is_empty());
    }
}

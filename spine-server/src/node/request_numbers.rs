//! How the node loop names the requests it waits on, so that an answer reaches only the request
//! it belongs to.
//!
//! A proposal's log entry carries `(origin node, request number)`; the node that applies an
//! entry it proposed answers the pending request with that number. A read's ReadIndex context
//! carries the same pair. Both must be unique across the node's restarts (an entry proposed by a
//! node's previous life may apply after it restarted) and across nodes (the leader ignores a
//! read whose context is already pending). Numbers are handed out from blocks reserved durably
//! in the node's store ([`crate::store::RaftLog::reserve_requests`]), so a new life never
//! reuses a number an earlier one may have put in the log.
//!
//! ```
//! use spine_server::node::request_numbers::{RequestNumbers, read_context, parse_read_context};
//! let mut numbers = RequestNumbers::new(7, 9);
//! assert_eq!(numbers.take(), Some(7));
//! assert_eq!(numbers.take(), Some(8));
//! assert_eq!(numbers.take(), None); // reserve another block, then start again from it
//! assert_eq!(parse_read_context(&read_context(3, 8)), Some((3, 8)));
//! ```

/// Hands out request numbers from a reserved block `[next, end)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestNumbers {
    next: u64,
    end: u64,
}

impl RequestNumbers {
    /// How many numbers a node reserves at a time: one durable write per block.
    pub const BLOCK: u64 = 1 << 20;

    /// Numbers from `start` (inclusive) to `end` (exclusive).
    pub fn new(start: u64, end: u64) -> Self {
        Self { next: start, end }
    }

    /// The next number, or `None` when the block is used up.
    pub fn take(&mut self) -> Option<u64> {
        if self.next >= self.end {
            return None;
        }
        let n = self.next;
        self.next += 1;
        Some(n)
    }
}

/// The ReadIndex context of request `number` of node `node`.
pub fn read_context(node: u64, number: u64) -> Vec<u8> {
    let mut ctx = Vec::with_capacity(16);
    ctx.extend_from_slice(&node.to_be_bytes());
    ctx.extend_from_slice(&number.to_be_bytes());
    ctx
}

/// The `(node, number)` of a ReadIndex context, if it is one of ours.
pub fn parse_read_context(ctx: &[u8]) -> Option<(u64, u64)> {
    let node: [u8; 8] = ctx.get(..8)?.try_into().ok()?;
    let number: [u8; 8] = ctx.get(8..)?.try_into().ok()?;
    Some((u64::from_be_bytes(node), u64::from_be_bytes(number)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_stay_in_their_block() {
        let mut n = RequestNumbers::new(1, 4);
        let got: Vec<_> = std::iter::from_fn(|| n.take()).collect();
        assert_eq!(got, vec![1, 2, 3]);
        assert_eq!(n.take(), None);
    }

    #[test]
    fn read_contexts_differ_between_nodes_and_round_trip() {
        assert_ne!(read_context(1, 5), read_context(2, 5));
        assert_eq!(
            parse_read_context(&read_context(u64::MAX, 1)),
            Some((u64::MAX, 1))
        );
        assert_eq!(parse_read_context(&[0; 8]), None);
        assert_eq!(parse_read_context(&[0; 17]), None);
    }
}

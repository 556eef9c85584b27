//! The daemon's pure core: the pins it holds for its clients, by id. No I/O and no clock: callers
//! pass `now`.
//!
//! Ids are handed out in increasing order and never reused, so a stale id can never name someone
//! else's snapshot, and the oldest pins are the ones with the smallest ids: expiring by age walks
//! the table from the front.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Pins held for clients, with a limit on their number and, optionally, on their age.
#[derive(Debug)]
pub struct PinTable<T> {
    pins: BTreeMap<u64, (T, Instant)>,
    next_id: u64,
    max_pins: usize,
    max_age: Option<Duration>,
}

/// The table is at its limit, even after expiring old pins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full {
    /// The limit.
    pub max_pins: usize,
}

impl<T> PinTable<T> {
    /// An empty table holding at most `max_pins` pins, each for at most `max_age` (`None`: until
    /// released).
    pub fn new(max_pins: usize, max_age: Option<Duration>) -> Self {
        Self {
            pins: BTreeMap::new(),
            next_id: 1,
            max_pins,
            max_age,
        }
    }

    /// Pins held (including expired ones not yet swept).
    pub fn len(&self) -> usize {
        self.pins.len()
    }

    /// Whether no pin is held.
    pub fn is_empty(&self) -> bool {
        self.pins.is_empty()
    }

    /// The age after which pins expire.
    pub fn max_age(&self) -> Option<Duration> {
        self.max_age
    }

    /// Whether one more pin fits (after expiring old ones, which are dropped here).
    pub fn check_room(&mut self, now: Instant) -> Result<(), Full> {
        if self.pins.len() >= self.max_pins {
            self.expire(now);
        }
        if self.pins.len() < self.max_pins {
            Ok(())
        } else {
            Err(Full {
                max_pins: self.max_pins,
            })
        }
    }

    /// Holds `value` under a fresh id.
    pub fn insert(&mut self, value: T, now: Instant) -> Result<u64, Full> {
        self.check_room(now)?;
        let id = self.next_id;
        self.next_id += 1;
        self.pins.insert(id, (value, now));
        Ok(id)
    }

    /// The pin under `id`, unless it was released, expired or never handed out.
    pub fn get(&self, id: u64, now: Instant) -> Option<&T> {
        self.pins
            .get(&id)
            .filter(|(_, at)| !self.is_expired(*at, now))
            .map(|(value, _)| value)
    }

    /// Releases a pin; `None` when it was not held (or had expired).
    pub fn remove(&mut self, id: u64, now: Instant) -> Option<T> {
        let (value, at) = self.pins.remove(&id)?;
        (!self.is_expired(at, now)).then_some(value)
    }

    /// Drops every expired pin; returns them so the caller can drop them outside any lock.
    pub fn expire(&mut self, now: Instant) -> Vec<T> {
        let mut dropped = Vec::new();
        while let Some(entry) = self.pins.first_entry() {
            if !expired(self.max_age, entry.get().1, now) {
                break;
            }
            dropped.push(entry.remove().0);
        }
        dropped
    }

    fn is_expired(&self, pinned_at: Instant, now: Instant) -> bool {
        expired(self.max_age, pinned_at, now)
    }
}

fn expired(max_age: Option<Duration>, pinned_at: Instant, now: Instant) -> bool {
    max_age.is_some_and(|age| now.saturating_duration_since(pinned_at) > age)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[test]
    fn ids_are_fresh_and_released_ids_are_gone() {
        let t0 = Instant::now();
        let mut t = PinTable::new(2, None);
        assert_eq!(t.insert("a", t0), Ok(1));
        assert_eq!(t.insert("b", t0), Ok(2));
        assert_eq!(t.insert("c", t0), Err(Full { max_pins: 2 }));
        assert_eq!(t.remove(1, t0), Some("a"));
        assert_eq!(t.remove(1, t0), None, "released twice");
        assert_eq!(t.get(1, t0), None);
        assert_eq!(t.insert("c", t0), Ok(3), "ids are never reused");
        assert_eq!(t.get(3, t0 + Duration::from_secs(86_400)), Some(&"c"));
    }

    #[test]
    fn pins_expire_by_age_and_make_room() {
        let t0 = Instant::now();
        let age = Duration::from_secs(10);
        let mut t = PinTable::new(2, Some(age));
        t.insert("old", t0).ok();
        t.insert("new", t0 + Duration::from_secs(5)).ok();
        let later = t0 + Duration::from_secs(12);
        assert_eq!(t.get(1, later), None, "expired, even before a sweep");
        assert_eq!(t.get(2, later), Some(&"new"));
        assert_eq!(t.insert("third", later), Ok(3), "expiry made room");
        assert_eq!(t.len(), 2);
        assert_eq!(t.expire(t0 + Duration::from_secs(16)), vec!["new"]);
        assert_eq!(t.remove(3, t0 + Duration::from_secs(30)), None, "expired");
        assert!(t.is_empty());
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert,
        Get(u64),
        Remove(u64),
        Expire,
        Wait(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Insert),
            2 => (0u64..12).prop_map(Op::Get),
            2 => (0u64..12).prop_map(Op::Remove),
            1 => Just(Op::Expire),
            2 => (0u64..8).prop_map(Op::Wait),
        ]
    }

    proptest! {
        /// Against a model that keeps every pin with its time and filters on each read.
        #[test]
        fn behaves_like_a_simple_model(ops in proptest::collection::vec(op(), 1..80), max in 1usize..6) {
            let t0 = Instant::now();
            let age = Duration::from_secs(10);
            let mut table = PinTable::new(max, Some(age));
            let mut model: HashMap<u64, (u64, u64)> = HashMap::new(); // id -> (value, second)
            let (mut now, mut next) = (0u64, 1u64);
            let at = |s: u64| t0 + Duration::from_secs(s);
            let live = |m: &HashMap<u64, (u64, u64)>, now: u64| {
                m.iter().filter(|(_, (_, s))| now - s <= 10).count()
            };
            for op in ops {
                match op {
                    Op::Insert => {
                        let got = table.insert(next * 100, at(now));
                        if live(&model, now) < max {
                            prop_assert_eq!(got, Ok(next));
                            model.insert(next, (next * 100, now));
                            next += 1;
                        } else {
                            prop_assert_eq!(got, Err(Full { max_pins: max }));
                        }
                    }
                    Op::Get(id) => {
                        let want = model.get(&id).filter(|(_, s)| now - s <= 10).map(|(v, _)| *v);
                        prop_assert_eq!(table.get(id, at(now)).copied(), want);
                    }
                    Op::Remove(id) => {
                        let want = model.remove(&id).filter(|(_, s)| now - s <= 10).map(|(v, _)| v);
                        prop_assert_eq!(table.remove(id, at(now)), want);
                    }
                    Op::Expire => {
                        table.expire(at(now));
                        model.retain(|_, (_, s)| now - *s <= 10);
                        prop_assert_eq!(table.len(), model.len());
                    }
                    Op::Wait(s) => now += s,
                }
                prop_assert!(table.len() <= max);
            }
        }
    }
}

//! The writer's side: a transaction over one map version.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::{ChangeSet, Entry, LimitError, Limits, SharingMap, UpdateId};

/// A writer's transaction on one map, started from the version it last committed.
///
/// The writer sees its own uncommitted writes; nobody else does. [`prepare`](Self::prepare) turns
/// the writes into a change set (or none if nothing changed); dropping the transaction aborts it
/// and leaves no trace.
#[derive(Clone, Debug)]
pub struct Transaction {
    base: SharingMap,
    limits: Limits,
    writes: BTreeMap<Arc<str>, Option<Entry>>,
}

impl Transaction {
    /// Starts a transaction on `base` with default limits.
    pub fn new(base: SharingMap) -> Self {
        Self::with_limits(base, Limits::default())
    }

    /// Starts a transaction on `base`; writes breaking `limits` are refused as they are made.
    pub fn with_limits(base: SharingMap, limits: Limits) -> Self {
        Self {
            base,
            limits,
            writes: BTreeMap::new(),
        }
    }

    /// The version the transaction started from.
    pub fn base(&self) -> &SharingMap {
        &self.base
    }

    /// Reads a key, seeing this transaction's own writes.
    pub fn get(&self, key: &str) -> Option<&Entry> {
        match self.writes.get(key) {
            Some(write) => write.as_ref(),
            None => self.base.get(key),
        }
    }

    /// Reads a JSON value, seeing this transaction's own writes.
    pub fn get_value(&self, key: &str) -> Option<&serde_json::Value> {
        self.get(key).and_then(Entry::as_value)
    }

    /// Puts an entry.
    pub fn put_entry(&mut self, key: &str, entry: Entry) -> Result<(), LimitError> {
        self.limits.check_entry(key, &entry)?;
        self.writes.insert(Arc::from(key), Some(entry));
        Ok(())
    }

    /// Puts a JSON value.
    pub fn put(&mut self, key: &str, value: serde_json::Value) -> Result<(), LimitError> {
        self.put_entry(key, Entry::value(value))
    }

    /// Binds a method: `args` name its arguments, `body` is a Rhai script run with `this` bound to
    /// a snapshot of the map.
    pub fn set_method(
        &mut self,
        key: &str,
        args: Vec<String>,
        body: impl Into<String>,
    ) -> Result<(), LimitError> {
        self.put_entry(key, Entry::method(args, body))
    }

    /// Removes a key.
    pub fn remove(&mut self, key: &str) -> Result<(), LimitError> {
        self.limits.check_key(key)?;
        self.writes.insert(Arc::from(key), None);
        Ok(())
    }

    /// The change set of this transaction, or `None` if it would change nothing (writes equal to
    /// what the base holds are dropped). Checks the change-set limits.
    pub fn prepare(&self, update_id: UpdateId) -> Result<Option<ChangeSet>, LimitError> {
        let effective = self.writes.iter().filter(|(key, write)| {
            let current = self.base.get(key);
            match write {
                None => current.is_some(),
                Some(entry) => current != Some(entry),
            }
        });
        let ops: Vec<_> = effective.map(|(k, w)| (k.clone(), w.clone())).collect();
        if ops.is_empty() {
            return Ok(None);
        }
        let cs = ChangeSet::from_ops(
            self.base.name().clone(),
            self.base.version(),
            update_id,
            ops,
        );
        self.limits.check_change_set(&cs)?;
        let added = cs
            .puts()
            .iter()
            .filter(|(k, _)| !self.base.contains_key(k))
            .count();
        let removed = cs
            .removes()
            .iter()
            .filter(|k| self.base.contains_key(k))
            .count();
        let count = self.base.len() + added - removed;
        if count > self.limits.max_entries && count > self.base.len() {
            return Err(LimitError::TooManyEntries {
                map: self.base.name().to_string(),
                count,
                max: self.limits.max_entries,
            });
        }
        Ok(Some(cs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Applied, MapName};
    use serde_json::json;

    fn base() -> SharingMap {
        let name = MapName::parse("alice-phone-prices").unwrap_or_else(|e| panic!("{e}"));
        SharingMap::with_entries(
            name,
            [
                (Arc::from("apple"), Entry::value(json!(3))),
                (Arc::from("pear"), Entry::value(json!(4))),
            ],
        )
    }

    fn id(s: &str) -> UpdateId {
        UpdateId::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn reads_its_own_writes_and_hides_them_from_others() -> Result<(), LimitError> {
        let map = base();
        let mut tx = Transaction::new(map.clone());
        tx.put("apple", json!(5))?;
        tx.remove("pear")?;
        assert_eq!(tx.get_value("apple"), Some(&json!(5)));
        assert_eq!(tx.get("pear"), None);
        assert_eq!(map.get_value("apple"), Some(&json!(3)));
        assert_eq!(map.get_value("pear"), Some(&json!(4)));
        Ok(())
    }

    #[test]
    fn prepare_yields_one_change_set_that_applies() -> Result<(), Box<dyn std::error::Error>> {
        let map = base();
        let mut tx = Transaction::new(map.clone());
        tx.put("apple", json!(5))?;
        tx.put("plum", json!(1))?;
        tx.remove("pear")?;
        tx.remove("nothing")?;
        tx.put("apple", json!(6))?;
        let cs = tx.prepare(id("u1"))?.ok_or("no change set")?;
        assert_eq!(cs.version(), 0);
        assert_eq!(cs.len(), 3, "{cs:?}");
        let Applied::New(next) = map.apply(&cs)? else {
            return Err("duplicate".into());
        };
        assert_eq!(next.version(), 1);
        assert_eq!(next.get_value("apple"), Some(&json!(6)));
        assert_eq!(next.get_value("plum"), Some(&json!(1)));
        assert!(!next.contains_key("pear"));
        Ok(())
    }

    #[test]
    fn nothing_changed_means_no_change_set() -> Result<(), LimitError> {
        let mut tx = Transaction::new(base());
        tx.put("apple", json!(3))?;
        tx.remove("absent")?;
        assert!(tx.prepare(id("u"))?.is_none());
        Ok(())
    }

    #[test]
    fn entry_limit_is_enforced_at_prepare() -> Result<(), LimitError> {
        let limits = Limits {
            max_entries: 2,
            ..Limits::default()
        };
        let mut tx = Transaction::with_limits(base(), limits);
        tx.put("plum", json!(1))?;
        assert!(matches!(
            tx.prepare(id("u")),
            Err(LimitError::TooManyEntries {
                count: 3,
                max: 2,
                ..
            })
        ));
        tx.remove("apple")?;
        assert!(tx.prepare(id("u"))?.is_some());
        Ok(())
    }
}

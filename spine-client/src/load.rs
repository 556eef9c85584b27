//! The Spine side of a compare-and-swap load: writers that each own one map and update it at
//! the version they last produced, with values of a fixed size. `spinectl load` and the
//! benchmarks (`spine-bench`) drive these same writers; each driver decides only how long to
//! write, what to do with errors and what to report.
//!
//! ```text
//!  create_writers: create the maps (create-if-absent, `concurrency` at a time) ─▶ MapWriter each
//!  MapWriter::write: change set at the version it has ─▶ Client::update ─▶ the new version
//!       (a conflict: reread; a transient failure: apply the same change set again, so a write
//!        that did commit is acknowledged by its update id instead of applied twice)
//! ```

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use serde_json::json;
use sharing_map::{AppName, ChangeSet, Entry, MapName, UpdateId};

use crate::{Client, ClientError};

/// The one key every write puts.
pub const KEY: &str = "k";

/// The value of write `seq`: exactly `bytes` ASCII bytes that start with `seq`.
pub fn value_text(seq: u64, bytes: usize) -> String {
    let mut text = seq.to_string();
    text.truncate(bytes);
    let fill = bytes - text.len();
    text.extend(std::iter::repeat_n('x', fill));
    text
}

/// Writes one map: change sets at the map's version, applied with compare-and-swap. Nobody else
/// writes the map, so a conflict means a write of this writer's committed unacknowledged, or the
/// map was changed behind its back.
#[derive(Clone, Debug)]
pub struct MapWriter {
    client: Client,
    app: AppName,
    map: MapName,
    version: u64,
    /// Update ids are `<prefix>-<seq>`.
    id_prefix: String,
    seq: u64,
}

impl MapWriter {
    /// A writer of `map` at `version`, naming its updates `<id_prefix>-1`, `<id_prefix>-2`, ...
    pub fn new(
        client: Client,
        app: AppName,
        map: MapName,
        version: u64,
        id_prefix: String,
    ) -> Self {
        Self {
            client,
            app,
            map,
            version,
            id_prefix,
            seq: 0,
        }
    }

    /// The map.
    pub fn map(&self) -> &MapName {
        &self.map
    }

    /// The map's version after the last acknowledged write.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// How many change sets it has made.
    pub fn writes(&self) -> u64 {
        self.seq
    }

    /// The next change set: `KEY = value` at the version it has, with a new update id.
    pub fn next_change_set(&mut self, value: String) -> Result<ChangeSet, ClientError> {
        self.seq += 1;
        let id = UpdateId::parse(&format!("{}-{}", self.id_prefix, self.seq))?;
        let ops = [(Arc::from(KEY), Some(Entry::value(json!(value))))];
        Ok(ChangeSet::from_ops(self.map.clone(), self.version, id, ops))
    }

    /// Applies `change_set` (made by [`next_change_set`](Self::next_change_set); again after a
    /// transient failure) and moves to the version it produced.
    pub async fn apply(&mut self, change_set: &ChangeSet) -> Result<u64, ClientError> {
        let versions = self
            .client
            .update(&self.app, vec![change_set.clone()])
            .await?;
        self.version = versions
            .first()
            .copied()
            .unwrap_or(change_set.next_version());
        Ok(self.version)
    }

    /// One write of `value`: the next change set, applied.
    pub async fn write(&mut self, value: String) -> Result<u64, ClientError> {
        let change_set = self.next_change_set(value)?;
        self.apply(&change_set).await
    }

    /// Reads the map's version again (after a conflict).
    pub async fn reread(&mut self) -> Result<u64, ClientError> {
        self.version = self
            .client
            .get_map(&self.app, &self.map, false)
            .await?
            .version();
        Ok(self.version)
    }
}

/// Creates `maps` in `app` (create-if-absent, `concurrency` at a time) and returns one writer
/// per map, in order: writer `i` uses `clients[i % clients.len()]` and names its updates
/// `id_prefix(i)-<seq>`.
pub async fn create_writers(
    clients: &[Client],
    app: &AppName,
    maps: Vec<MapName>,
    id_prefix: impl Fn(usize) -> String,
    concurrency: usize,
) -> Result<Vec<MapWriter>, ClientError> {
    if clients.is_empty() {
        return Err(ClientError::InvalidEndpoint {
            endpoint: String::new(),
            reason: "no clients to write with".into(),
        });
    }
    futures::stream::iter(maps.into_iter().enumerate())
        .map(|(i, map)| {
            let client = clients[i % clients.len()].clone();
            let (app, prefix) = (app.clone(), id_prefix(i));
            async move {
                let created = client.create_map(&app, &map, Vec::new()).await?;
                Ok::<_, ClientError>(MapWriter::new(client, app, map, created.version, prefix))
            }
        })
        .buffered(concurrency.max(1))
        .try_collect()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_have_exactly_the_requested_length() {
        assert_eq!(value_text(42, 6), "42xxxx");
        assert_eq!(value_text(12345, 3), "123");
        assert_eq!(value_text(7, 0), "");
        assert_eq!(value_text(1, 256).len(), 256);
        assert_eq!(value_text(u64::MAX, 256).len(), 256);
        assert_ne!(value_text(1, 16), value_text(2, 16));
    }

    #[tokio::test]
    async fn change_sets_follow_the_version_and_number_their_updates() -> Result<(), ClientError> {
        let client = Client::new(vec!["127.0.0.1:1".into()])?;
        let app = AppName::parse("acme-shop")?;
        let map = MapName::parse("bob-load-x")?;
        let mut w = MapWriter::new(client, app, map.clone(), 4, "load-r1-w0".into());
        let first = w.next_change_set(value_text(1, 8))?;
        assert_eq!((first.map(), first.version()), (&map, 4));
        assert_eq!(first.update_id().as_str(), "load-r1-w0-1");
        let second = w.next_change_set(value_text(2, 8))?;
        assert_eq!(second.update_id().as_str(), "load-r1-w0-2");
        assert_eq!(w.writes(), 2);
        Ok(())
    }
}

//! Map operations: create, update (compare-and-swap), read, list, history, and `put`, the
//! read-modify-write helper.

use std::sync::Arc;

use serde::Serialize;
use sharing_map::{AppName, ChangeSet, Entry, MapName, SharingMap, UpdateId};
use spine_proto::v1 as pb;

use crate::convert::{self, ConvertError};
use crate::{Client, ClientError};

/// How many times [`Client::put`] re-reads the map after a version conflict.
pub const PUT_CONFLICT_RETRIES: usize = 5;

/// Most names [`Client::map_versions`] sends in one request (the server's limit).
pub const MAX_NAMES_PER_LIST: usize = 10_000;

/// What [`Client::create_map`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct CreateOutcome {
    /// The map's version: 0 if it was just created, its current version if it existed.
    pub version: u64,
    /// Whether this call created it (false: it existed and was left unchanged).
    pub created: bool,
}

/// One map as [`Client::list_maps`] describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MapInfo {
    /// The map's name.
    pub name: MapName,
    /// Its current version.
    pub version: u64,
    /// How many keys it holds.
    pub entries: u64,
}

/// The retained change sets of a map, from [`Client::history`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct History {
    /// Change sets after the requested version, in order.
    pub change_sets: Vec<ChangeSet>,
    /// Oldest version a change set is retained for: history starts after it.
    pub oldest_retained: u64,
    /// The map's current version.
    pub current_version: u64,
}

fn missing(field: &str) -> ClientError {
    ClientError::Convert(ConvertError::Malformed {
        field: field.to_string(),
        reason: "missing from the server's answer".into(),
    })
}

impl Client {
    /// Creates a map at version 0 with `initial` content, unless it exists: then it is left
    /// unchanged and its current version returned.
    pub async fn create_map(
        &self,
        app: &AppName,
        map: &MapName,
        initial: Vec<(Arc<str>, Entry)>,
    ) -> Result<CreateOutcome, ClientError> {
        let request = pb::CreateMapRequest {
            app: app.to_string(),
            map: map.to_string(),
            initial: convert::entries_to_pb(initial.iter().map(|(k, e)| (k, e))),
        };
        let answer = self
            .call(|mut rpc| {
                let request = request.clone();
                async move { rpc.create_map(request).await }
            })
            .await?;
        Ok(CreateOutcome {
            version: answer.version,
            created: answer.created,
        })
    }

    /// Applies change sets for maps of one writer, atomically, each with compare-and-swap on its
    /// version. Returns the version each produced, in request order. A conflict is a
    /// FAILED_PRECONDITION [`ClientError::Status`] whose message gives the current version.
    ///
    /// Retrying is safe: the Spine treats a repeat of a map's last `update_id` as success.
    pub async fn update(
        &self,
        app: &AppName,
        change_sets: Vec<ChangeSet>,
    ) -> Result<Vec<u64>, ClientError> {
        let request = pb::UpdateRequest {
            app: app.to_string(),
            change_sets: change_sets.iter().map(convert::change_set_to_pb).collect(),
        };
        let answer = self
            .call(|mut rpc| {
                let request = request.clone();
                async move { rpc.update(request).await }
            })
            .await?;
        if answer.versions.len() != change_sets.len() {
            return Err(ClientError::Convert(ConvertError::Malformed {
                field: "versions".into(),
                reason: format!(
                    "{} versions for {} change sets",
                    answer.versions.len(),
                    change_sets.len()
                ),
            }));
        }
        Ok(answer.versions)
    }

    /// Applies many independent updates in one request and one Raft entry (group commit). Each
    /// `(app, change sets)` is atomic on its own, as [`update`](Self::update) would apply it, and
    /// gets its own result: the versions it produced, or the error it alone got (a conflict, a
    /// refusal). The call itself fails only when the batch as a whole could not be applied (no
    /// quorum, an empty or oversized batch); retrying it is safe, every update being idempotent
    /// by its update ids.
    pub async fn update_batch(
        &self,
        updates: &[(AppName, Vec<ChangeSet>)],
    ) -> Result<Vec<Result<Vec<u64>, ClientError>>, ClientError> {
        let request = pb::UpdateBatchRequest {
            updates: updates
                .iter()
                .map(|(app, change_sets)| pb::UpdateRequest {
                    app: app.to_string(),
                    change_sets: change_sets.iter().map(convert::change_set_to_pb).collect(),
                })
                .collect(),
        };
        let answer = self
            .call(|mut rpc| {
                let request = request.clone();
                async move { rpc.update_batch(request).await }
            })
            .await?;
        if answer.results.len() != updates.len() {
            return Err(ClientError::Convert(ConvertError::Malformed {
                field: "results".into(),
                reason: format!(
                    "{} results for {} updates",
                    answer.results.len(),
                    updates.len()
                ),
            }));
        }
        Ok(answer
            .results
            .into_iter()
            .map(|r| match tonic::Code::from_i32(r.code) {
                tonic::Code::Ok => Ok(r.versions),
                code => Err(ClientError::Status {
                    code,
                    message: r.message,
                }),
            })
            .collect())
    }

    /// Reads a whole map: linearizable, or the answering node's applied state when `stale_ok`.
    pub async fn get_map(
        &self,
        app: &AppName,
        map: &MapName,
        stale_ok: bool,
    ) -> Result<SharingMap, ClientError> {
        self.get_keys(app, map, Vec::new(), stale_ok).await
    }

    /// Reads only `keys` of a map (all of it when `keys` is empty). The result has the map's
    /// name and version but only the requested entries that exist.
    pub async fn get_keys(
        &self,
        app: &AppName,
        map: &MapName,
        keys: Vec<String>,
        stale_ok: bool,
    ) -> Result<SharingMap, ClientError> {
        let request = pb::GetMapRequest {
            app: app.to_string(),
            map: map.to_string(),
            stale_ok,
            keys,
        };
        let answer = self
            .call(|mut rpc| {
                let request = request.clone();
                async move { rpc.get_map(request).await }
            })
            .await?;
        let snapshot = answer.map.ok_or_else(|| missing("map"))?;
        Ok(SharingMap::restore(convert::dump_from_pb(snapshot)?))
    }

    /// Lists an app's maps whose names start with `prefix` (all with an empty prefix).
    pub async fn list_maps(
        &self,
        app: &AppName,
        prefix: &str,
        stale_ok: bool,
    ) -> Result<Vec<MapInfo>, ClientError> {
        let request = pb::ListMapsRequest {
            app: app.to_string(),
            prefix: prefix.to_string(),
            stale_ok,
            limit: 0,
            names: Vec::new(),
        };
        self.list(request).await
    }

    /// Name, version and size of each of `names` that exists in `app`, in the order asked. Costs
    /// the server one lookup per name, whatever the size of the app (a node agent asks this for
    /// the maps it follows, to report its lag). Asks in batches of
    /// [`MAX_NAMES_PER_LIST`] names.
    pub async fn map_versions(
        &self,
        app: &AppName,
        names: &[MapName],
        stale_ok: bool,
    ) -> Result<Vec<MapInfo>, ClientError> {
        let mut out = Vec::with_capacity(names.len());
        for chunk in names.chunks(MAX_NAMES_PER_LIST) {
            let request = pb::ListMapsRequest {
                app: app.to_string(),
                prefix: String::new(),
                stale_ok,
                limit: 0,
                names: chunk.iter().map(ToString::to_string).collect(),
            };
            out.extend(self.list(request).await?);
        }
        Ok(out)
    }

    async fn list(&self, request: pb::ListMapsRequest) -> Result<Vec<MapInfo>, ClientError> {
        let answer = self
            .call(|mut rpc| {
                let request = request.clone();
                async move { rpc.list_maps(request).await }
            })
            .await?;
        answer
            .maps
            .into_iter()
            .map(|m| {
                Ok(MapInfo {
                    name: MapName::parse(&m.map).map_err(ConvertError::from)?,
                    version: m.version,
                    entries: m.entries,
                })
            })
            .collect()
    }

    /// The retained change sets of a map after `after_version` (linearizable).
    pub async fn history(
        &self,
        app: &AppName,
        map: &MapName,
        after_version: u64,
    ) -> Result<History, ClientError> {
        let request = pb::HistoryRequest {
            app: app.to_string(),
            map: map.to_string(),
            after_version,
            stale_ok: false,
        };
        let answer = self
            .call(|mut rpc| {
                let request = request.clone();
                async move { rpc.history(request).await }
            })
            .await?;
        Ok(History {
            change_sets: answer
                .change_sets
                .into_iter()
                .map(convert::change_set_from_pb)
                .collect::<Result<_, _>>()?,
            oldest_retained: answer.oldest_retained,
            current_version: answer.current_version,
        })
    }

    /// Applies `ops` (`(key, None)` removes, `(key, Some(entry))` puts; the last per key wins) to
    /// the map's current version: reads the version (linearizable), builds one change set and
    /// applies it, and on a version conflict reads again and retries, up to
    /// [`PUT_CONFLICT_RETRIES`] times. Returns the version produced.
    ///
    /// This is for tools and tests; a writer CA builds its change sets from its own state.
    pub async fn put(
        &self,
        app: &AppName,
        map: &MapName,
        ops: Vec<(Arc<str>, Option<Entry>)>,
        update_id: UpdateId,
    ) -> Result<u64, ClientError> {
        // Reading only the touched keys keeps the read small; it still returns the version.
        let keys: Vec<String> = ops.iter().map(|(k, _)| k.to_string()).collect();
        let mut conflicts = 0;
        loop {
            let current = self.get_keys(app, map, keys.clone(), false).await?;
            let cs = ChangeSet::from_ops(
                map.clone(),
                current.version(),
                update_id.clone(),
                ops.iter().cloned(),
            );
            match self.update(app, vec![cs]).await {
                Ok(versions) => {
                    return versions.first().copied().ok_or_else(|| missing("versions"));
                }
                Err(e) if e.is_conflict() && conflicts < PUT_CONFLICT_RETRIES => conflicts += 1,
                Err(e) => return Err(e),
            }
        }
    }
}

//! `this.sharing`: the `sharing` plugin in scripts (DESIGN.md §9.3).
//!
//! Other writers' maps and aggregates, as pinned for the message (declared in the manifest's
//! `reads` and `aggregates`; one version for the whole message):
//! - `get(map, key)` → the value, `()` if absent; `version(map)`; `keys(map)`;
//! - `invoke(map, method, [args])` → runs a method of that map on its pinned version;
//! - `get_all(root, key)` → the key's values in every map of the aggregate rooted at `root`;
//! - `check(root, ca)` → whether the aggregate grants CA `ca` (its owner or name has a value).
//!
//! The CA's own writable maps (the manifest's `maps`, `<ca>-<local>`), committed with the turn:
//! - `put(local, key, value)`, `remove(local, key)`, `get_own(local, key)` (with this turn's
//!   writes).

use rhai::{Array, Dynamic, Engine, EvalAltResult};
use serde_json::Value;
use sharing_map::CaName;

use super::{ScriptPlugin, TurnRef, from_script, to_script};

/// `this.sharing`.
#[derive(Clone, Debug)]
pub struct Sharing(TurnRef);

/// Registers `this.sharing`.
#[derive(Debug)]
pub struct SharingApi;

type Out<T> = Result<T, Box<EvalAltResult>>;

fn not_read(map: &str) -> String {
    format!("map {map} is not read by this message (declare it in app.json's reads)")
}

impl ScriptPlugin for SharingApi {
    fn property(&self) -> &'static str {
        "sharing"
    }

    fn handle(&self, turn: &TurnRef) -> Dynamic {
        Dynamic::from(Sharing(turn.clone()))
    }

    fn register(&self, engine: &mut Engine) {
        engine
            .register_type_with_name::<Sharing>("Sharing")
            .register_fn(
                "get",
                |s: &mut Sharing, map: &str, key: &str| -> Out<Dynamic> {
                    let value = s.0.with(|t| {
                        let snap = t.reads.map(map).ok_or_else(|| not_read(map))?;
                        Ok(snap.get(key).cloned())
                    })?;
                    value.map_or(Ok(Dynamic::UNIT), |v| to_script(&v))
                },
            )
            .register_fn("version", |s: &mut Sharing, map: &str| -> Out<i64> {
                s.0.with(|t| {
                    let snap = t.reads.map(map).ok_or_else(|| not_read(map))?;
                    Ok(snap.version() as i64)
                })
            })
            .register_fn("keys", |s: &mut Sharing, map: &str| -> Out<Array> {
                s.0.with(|t| {
                    let snap = t.reads.map(map).ok_or_else(|| not_read(map))?;
                    Ok(snap
                        .sorted()
                        .into_iter()
                        .map(|(k, _)| Dynamic::from(k.to_string()))
                        .collect())
                })
            })
            .register_fn(
                "invoke",
                |s: &mut Sharing, map: &str, method: &str, args: Array| -> Out<Dynamic> {
                    let args: Vec<Value> = args
                        .iter()
                        .map(|a| from_script(a, "an argument"))
                        .collect::<Result<_, _>>()?;
                    let out = s.0.with(|t| {
                        let snap = t.reads.map(map).ok_or_else(|| not_read(map))?;
                        snap.invoke(method, &args).map_err(|e| e.to_string())
                    })?;
                    to_script(&out)
                },
            )
            .register_fn(
                "get_all",
                |s: &mut Sharing, root: &str, key: &str| -> Out<Array> {
                    let values = s.0.with(|t| {
                        let agg = t.reads.aggregate(root).ok_or_else(|| not_read(root))?;
                        Ok(agg
                            .get_all(key)
                            .iter()
                            .map(|f| f.value().clone())
                            .collect::<Vec<Value>>())
                    })?;
                    values.iter().map(to_script).collect()
                },
            )
            .register_fn(
                "check",
                |s: &mut Sharing, root: &str, ca: &str| -> Out<bool> {
                    s.0.with(|t| {
                        let caller = CaName::parse(ca).map_err(|e| e.to_string())?;
                        let agg = t.reads.aggregate(root).ok_or_else(|| not_read(root))?;
                        Ok(node_agent::aggregate::check(agg, &caller))
                    })
                },
            )
            .register_fn(
                "put",
                |s: &mut Sharing, local: &str, key: &str, value: Dynamic| -> Out<()> {
                    let value = from_script(&value, "the value")?;
                    s.0.with(|t| {
                        let ca = t.ca.clone();
                        own(&mut t.maps, &ca, local)?
                            .put(key, value)
                            .map_err(|e| e.to_string())
                    })
                },
            )
            .register_fn(
                "remove",
                |s: &mut Sharing, local: &str, key: &str| -> Out<()> {
                    s.0.with(|t| {
                        let ca = t.ca.clone();
                        own(&mut t.maps, &ca, local)?
                            .remove(key)
                            .map_err(|e| e.to_string())
                    })
                },
            )
            .register_fn(
                "get_own",
                |s: &mut Sharing, local: &str, key: &str| -> Out<Dynamic> {
                    let value = s.0.with(|t| {
                        let ca = t.ca.clone();
                        Ok(own(&mut t.maps, &ca, local)?.get_value(key).cloned())
                    })?;
                    value.map_or(Ok(Dynamic::UNIT), |v| to_script(&v))
                },
            );
    }
}

fn own<'a>(
    maps: &'a mut std::collections::BTreeMap<String, sharing_map::Transaction>,
    ca: &CaName,
    local: &str,
) -> Result<&'a mut sharing_map::Transaction, String> {
    maps.get_mut(local).ok_or_else(|| {
        format!("map {ca}-{local} is not one of the maps this app declares (app.json's maps)")
    })
}

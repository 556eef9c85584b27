//! Merging a delta (a template's `NAME++.json`, or a load's spec) over a description: pure, and
//! never mutates its inputs.
//!
//! The rules (DESIGN.md §10):
//! - a delta component whose name matches a sibling merges into it in place: `module` replaced if
//!   given, `env` merged key by key (a `null` value overrides, it does not delete), children merged
//!   by the same rules;
//! - `"module": null` deletes the component (deleting a name that does not exist does nothing);
//! - a new component goes right after the last one the delta named at that level (first if none);
//!   after a deletion, "right after" means in the deleted one's place;
//! - a delta cannot rename the top; only the load's own spec can ([`Rename::Allowed`]).

use crate::description::{ComponentPath, Delta, Description, Patch};
use crate::error::Error;

/// Whether the delta may change the top component's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rename {
    /// A template delta: a different top name is an error.
    Forbidden,
    /// The load's spec: its top name, if any, wins.
    Allowed,
}

/// Returns `base` with `delta` merged over it; `file` names the delta in errors.
pub fn merge(
    base: &Description,
    delta: &Delta,
    file: &str,
    rename: Rename,
) -> Result<Description, Error> {
    let path = ComponentPath::top(&base.name);
    let name = match (&delta.name, rename) {
        (Some(name), Rename::Allowed) => name.clone(),
        (Some(name), Rename::Forbidden) if *name != base.name => {
            return Err(Error::Invalid {
                file: file.to_owned(),
                path,
                key: "name".into(),
                reason: format!(
                    "a template delta cannot rename the top component (`{}` to `{name}`); \
                     only the load's spec can",
                    base.name
                ),
            });
        }
        _ => base.name.clone(),
    };
    let mut merged = merge_in_place(base, delta, file, &path)?;
    merged.name = name;
    Ok(merged)
}

fn merge_in_place(
    base: &Description,
    delta: &Delta,
    file: &str,
    path: &ComponentPath,
) -> Result<Description, Error> {
    let mut env = base.env.clone();
    env.extend(delta.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    Ok(Description {
        module: match &delta.module {
            Patch::Set(module) => module.clone(),
            Patch::Keep | Patch::Null => base.module.clone(),
        },
        name: base.name.clone(),
        description: match &delta.description {
            Patch::Keep => base.description.clone(),
            Patch::Null => None,
            Patch::Set(text) => Some(text.clone()),
        },
        env,
        components: merge_children(&base.components, &delta.components, file, path)?,
    })
}

fn merge_children(
    base: &[Description],
    deltas: &[Delta],
    file: &str,
    path: &ComponentPath,
) -> Result<Vec<Description>, Error> {
    let mut out = base.to_vec();
    // Where the next new component goes: right after the last one this delta named.
    let mut next = 0;
    for delta in deltas {
        // Parsed deltas always name their children; hand-built ones might not.
        let Some(name) = delta.name.as_deref() else {
            return Err(Error::Invalid {
                file: file.to_owned(),
                path: path.clone(),
                key: "components".into(),
                reason: "a child of a delta has no name".into(),
            });
        };
        let child_path = path.child(name);
        match (out.iter().position(|c| c.name == name), &delta.module) {
            (Some(index), Patch::Null) => {
                out.remove(index);
                next = index;
            }
            (Some(index), _) => {
                out[index] = merge_in_place(&out[index], delta, file, &child_path)?;
                next = index + 1;
            }
            (None, Patch::Null) => {}
            (None, Patch::Keep) => {
                return Err(Error::Invalid {
                    file: file.to_owned(),
                    path: child_path,
                    key: "module".into(),
                    reason: "missing: the component is new (no sibling has its name), \
                             so it needs a module"
                        .into(),
                });
            }
            (None, Patch::Set(module)) => {
                let new = Description {
                    module: module.clone(),
                    name: name.to_owned(),
                    description: match &delta.description {
                        Patch::Set(text) => Some(text.clone()),
                        Patch::Keep | Patch::Null => None,
                    },
                    env: delta.env.clone(),
                    components: merge_children(&[], &delta.components, file, &child_path)?,
                };
                out.insert(next, new);
                next += 1;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Map, Value, json};

    fn parse(value: Value) -> Description {
        match Description::from_value(&value, "base.json") {
            Ok(d) => d,
            Err(e) => panic!("test description is invalid: {e}"),
        }
    }

    fn delta(value: Value) -> Delta {
        match Delta::from_value(&value, "base++.json") {
            Ok(d) => d,
            Err(e) => panic!("test delta is invalid: {e}"),
        }
    }

    fn names(d: &Description) -> Vec<&str> {
        d.components.iter().map(|c| c.name.as_str()).collect()
    }

    fn base() -> Description {
        parse(
            json!({"module": "m#top", "name": "top", "env": {"a": 1, "b": 2}, "components": [
                {"module": "m#x", "name": "x", "env": {"k": "v"}},
                {"module": "m#y", "name": "y", "components": [
                    {"module": "m#y1", "name": "y1"}, {"module": "m#y2", "name": "y2"}
                ]},
                {"module": "m#z", "name": "z"}
            ]}),
        )
    }

    #[test]
    fn env_merges_key_by_key_and_null_overrides() -> Result<(), Error> {
        let merged = merge(
            &base(),
            &delta(json!({"env": {"b": null, "c": 3}})),
            "d",
            Rename::Forbidden,
        )?;
        assert_eq!(
            Value::Object(merged.env),
            json!({"a": 1, "b": null, "c": 3})
        );
        Ok(())
    }

    #[test]
    fn replaces_touches_adds_and_deletes_in_place() -> Result<(), Error> {
        let merged = merge(
            &base(),
            &delta(json!({"components": [
                {"name": "x", "module": "m#x2"},
                {"name": "new1", "module": "m#n"},
                {"name": "y", "components": [{"name": "y1", "module": null}, {"name": "y0", "module": "m#y0"}]},
                {"name": "z", "module": null},
                {"name": "gone", "module": null}
            ]})),
            "d",
            Rename::Forbidden,
        )?;
        assert_eq!(names(&merged), ["x", "new1", "y"]);
        assert_eq!(merged.components[0].module, "m#x2");
        assert_eq!(merged.components[0].env["k"], json!("v"));
        let y = &merged.components[2];
        // y0 takes the deleted y1's place.
        assert_eq!(names(y), ["y0", "y2"]);
        Ok(())
    }

    #[test]
    fn a_new_component_goes_first_when_nothing_was_named_before_it() -> Result<(), Error> {
        let merged = merge(
            &base(),
            &delta(
                json!({"components": [{"name": "n", "module": "m#n"}, {"name": "z"}, {"name": "w", "module": "m#w"}]}),
            ),
            "d",
            Rename::Forbidden,
        )?;
        assert_eq!(names(&merged), ["n", "x", "y", "z", "w"]);
        Ok(())
    }

    #[test]
    fn a_new_component_without_module_is_an_error_naming_it() {
        let result = merge(
            &base(),
            &delta(json!({"components": [{"name": "y", "components": [{"name": "q"}]}]})),
            "base++.json",
            Rename::Forbidden,
        );
        match result {
            Err(Error::Invalid {
                file, path, key, ..
            }) => {
                assert_eq!(
                    (file.as_str(), path.to_string().as_str(), key.as_str()),
                    ("base++.json", "top/y/q", "module")
                );
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn only_the_spec_renames_the_top() -> Result<(), Error> {
        let renaming = delta(json!({"name": "other"}));
        assert!(matches!(
            merge(&base(), &renaming, "d", Rename::Forbidden),
            Err(Error::Invalid { ref key, .. }) if key == "name"
        ));
        assert_eq!(
            merge(&base(), &renaming, "spec", Rename::Allowed)?.name,
            "other"
        );
        // Naming the top with its own name is fine in a template.
        assert_eq!(
            merge(
                &base(),
                &delta(json!({"name": "top"})),
                "d",
                Rename::Forbidden
            )?
            .name,
            "top"
        );
        Ok(())
    }

    #[test]
    fn description_text_can_be_set_and_cleared() -> Result<(), Error> {
        let set = merge(
            &base(),
            &delta(json!({"description": "hello"})),
            "d",
            Rename::Forbidden,
        )?;
        assert_eq!(set.description.as_deref(), Some("hello"));
        let cleared = merge(
            &set,
            &delta(json!({"description": null})),
            "d",
            Rename::Forbidden,
        )?;
        assert_eq!(cleared.description, None);
        Ok(())
    }

    // ---- Property tests against a deliberately simple model ----

    #[derive(Debug, Clone)]
    enum Op {
        /// Name only, new env value: merge in place.
        Touch(i64),
        /// New module and env value: replace in place, or add if new.
        Replace(i64),
        Delete,
    }

    /// The rules on a flat list of (name, module, value).
    fn model(
        base: &[(String, String, i64)],
        ops: &[(String, Op)],
    ) -> Option<Vec<(String, String, i64)>> {
        let mut out = base.to_vec();
        let mut next = 0;
        for (name, op) in ops {
            let found = out.iter().position(|(n, _, _)| n == name);
            match (found, op) {
                (Some(i), Op::Delete) => {
                    out.remove(i);
                    next = i;
                }
                (Some(i), Op::Touch(v)) => {
                    out[i].2 = *v;
                    next = i + 1;
                }
                (Some(i), Op::Replace(v)) => {
                    out[i] = (name.clone(), "m#new".into(), *v);
                    next = i + 1;
                }
                (None, Op::Delete) => {}
                (None, Op::Touch(_)) => return None,
                (None, Op::Replace(v)) => {
                    out.insert(next, (name.clone(), "m#new".into(), *v));
                    next += 1;
                }
            }
        }
        Some(out)
    }

    fn to_description(list: &[(String, String, i64)]) -> Description {
        Description {
            module: "m#top".into(),
            name: "top".into(),
            description: None,
            env: Map::new(),
            components: list
                .iter()
                .map(|(name, module, v)| Description {
                    module: module.clone(),
                    name: name.clone(),
                    description: None,
                    env: [("v".to_owned(), json!(v)), ("keep".to_owned(), json!(name))]
                        .into_iter()
                        .collect(),
                    components: vec![],
                })
                .collect(),
        }
    }

    fn to_delta(ops: &[(String, Op)]) -> Delta {
        Delta {
            components: ops
                .iter()
                .map(|(name, op)| Delta {
                    module: match op {
                        Op::Touch(_) => Patch::Keep,
                        Op::Replace(_) => Patch::Set("m#new".into()),
                        Op::Delete => Patch::Null,
                    },
                    name: Some(name.clone()),
                    env: match op {
                        Op::Touch(v) | Op::Replace(v) => {
                            [("v".to_owned(), json!(v))].into_iter().collect()
                        }
                        Op::Delete => Map::new(),
                    },
                    ..Delta::default()
                })
                .collect(),
            ..Delta::default()
        }
    }

    /// Reads back what the model tracks.
    fn read(d: &Description) -> Vec<(String, String, i64)> {
        d.components
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    c.module.clone(),
                    c.env.get("v").and_then(Value::as_i64).unwrap_or(i64::MIN),
                )
            })
            .collect()
    }

    fn base_list() -> impl Strategy<Value = Vec<(String, String, i64)>> {
        proptest::sample::subsequence((0..8).collect::<Vec<_>>(), 0..=8)
            .prop_shuffle()
            .prop_map(|ids| {
                ids.into_iter()
                    .map(|i| (format!("c{i}"), format!("m#{i}"), i64::from(i)))
                    .collect()
            })
    }

    fn ops() -> impl Strategy<Value = Vec<(String, Op)>> {
        let op = prop_oneof![
            (0i64..100).prop_map(Op::Touch),
            (0i64..100).prop_map(Op::Replace),
            Just(Op::Delete),
        ];
        // Names c0..c11: some in the base, some new; distinct within one delta.
        proptest::collection::btree_map(0u8..12, op, 0..8)
            .prop_map(|m| {
                m.into_iter()
                    .map(|(k, op)| (format!("c{k}"), op))
                    .collect::<Vec<_>>()
            })
            .prop_shuffle()
    }

    proptest! {
        #[test]
        fn merging_matches_the_model(base in base_list(), ops in ops()) {
            let description = to_description(&base);
            let delta = to_delta(&ops);
            let (description_before, delta_before) = (description.clone(), delta.clone());
            let merged = merge(&description, &delta, "d", Rename::Forbidden);
            match model(&base, &ops) {
                Some(expected) => {
                    let merged = merged.map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(read(&merged), expected);
                    // Keys the delta did not name survive a merge in place.
                    for c in &merged.components {
                        if c.module != "m#new" || base.iter().any(|(n, _, _)| *n == c.name) {
                            prop_assert_eq!(c.env.get("keep"), Some(&json!(c.name)));
                        }
                    }
                }
                None => prop_assert!(merged.is_err()),
            }
            // Inputs are untouched (the signature takes `&`, this guards interior tricks).
            prop_assert_eq!(description, description_before);
            prop_assert_eq!(delta, delta_before);
        }

        #[test]
        fn survivors_keep_their_relative_order(base in base_list(), ops in ops()) {
            let Ok(merged) = merge(&to_description(&base), &to_delta(&ops), "d", Rename::Forbidden)
            else { return Ok(()) };
            let merged_names: Vec<String> = read(&merged).into_iter().map(|(n, _, _)| n).collect();
            let survivors: Vec<&String> = base.iter().map(|(n, _, _)| n)
                .filter(|n| merged_names.contains(n)).collect();
            let in_merged: Vec<&String> = merged_names.iter()
                .filter(|n| base.iter().any(|(b, _, _)| b == *n)).collect();
            prop_assert_eq!(survivors, in_merged);
            for (name, op) in &ops {
                let present = merged_names.contains(name);
                prop_assert_eq!(present, !matches!(op, Op::Delete), "{} after {:?}", name, op);
            }
        }

        #[test]
        fn deleting_and_re_adding_restores_the_order(base in base_list(), pick in any::<prop::sample::Index>()) {
            prop_assume!(!base.is_empty());
            let index = pick.index(base.len());
            let name = base[index].0.clone();
            let description = to_description(&base);
            let names_of = |d: &Description| d.components.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
            // In one delta: delete, then add under the same name.
            let one = to_delta(&[(name.clone(), Op::Delete), (name.clone(), Op::Replace(7))]);
            let merged = merge(&description, &one, "d", Rename::Forbidden)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(names_of(&merged), names_of(&description));
            // In two deltas: delete; then name the predecessor (if any) and add it back.
            let deleted = merge(&description, &to_delta(&[(name.clone(), Op::Delete)]), "d", Rename::Forbidden)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut re_add = Vec::new();
            if index > 0 {
                re_add.push((base[index - 1].0.clone(), Op::Touch(1)));
            }
            re_add.push((name, Op::Replace(7)));
            let restored = merge(&deleted, &to_delta(&re_add), "d", Rename::Forbidden)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(names_of(&restored), names_of(&description));
        }
    }
}

//! What spinectl prints: pure functions from results to text or JSON.

use serde_json::{Map, Value, json};
use sharing_map::{ChangeSet, Entry, SharingMap};
use spine_client::{ClusterStatus, History, MapInfo, MapUpdate, NodeInfo};

/// An entry on one line: compact JSON, or `method(args) { body }`.
pub fn entry_text(entry: &Entry) -> String {
    match entry {
        Entry::Value(v) => v.get().to_string(),
        Entry::Method(m) => format!(
            "method({}) {{ {} }}",
            m.args.join(", "),
            m.body.trim().replace('\n', "\\n")
        ),
    }
}

/// Entries in their tagged JSON form (`{"value": ...}` or `{"method": {...}}`), by key.
fn entries_json<'a>(
    entries: impl IntoIterator<Item = (&'a std::sync::Arc<str>, &'a Entry)>,
) -> Value {
    let mut out = Map::new();
    for (key, entry) in entries {
        out.insert(
            key.to_string(),
            serde_json::to_value(entry).unwrap_or(Value::Null),
        );
    }
    Value::Object(out)
}

/// `MAP @ version N`, then `key = value` lines sorted by key.
pub fn map_human(map: &SharingMap) -> String {
    let mut out = format!("{} @ version {}", map.name(), map.version());
    for (key, entry) in map.sorted() {
        out.push_str(&format!("\n{key} = {}", entry_text(entry)));
    }
    out
}

/// A map as JSON: name, version, last update id and tagged entries.
pub fn map_json(map: &SharingMap) -> Value {
    json!({
        "map": map.name(),
        "version": map.version(),
        "last_update_id": map.last_update_id(),
        "entries": entries_json(map.sorted()),
    })
}

/// `put k=1, m=method(x) { x }, rm k2` (or `no changes`).
fn change_text(cs: &ChangeSet) -> String {
    let mut parts: Vec<String> = cs
        .puts()
        .iter()
        .map(|(k, e)| format!("{k}={}", entry_text(e)))
        .collect();
    if let Some(first) = parts.first_mut() {
        *first = format!("put {first}");
    }
    parts.extend(cs.removes().iter().map(|k| format!("rm {k}")));
    if parts.is_empty() {
        return "no changes".into();
    }
    parts.join(", ")
}

/// One line for one update: `MAP v3 put k=..., rm k2` or `MAP snapshot @ v7 (N entries)`.
pub fn update_line(update: &MapUpdate) -> String {
    match update {
        MapUpdate::Delta { change_set, .. } => format!(
            "{} v{} {}",
            change_set.map(),
            change_set.next_version(),
            change_text(change_set)
        ),
        MapUpdate::Snapshot { dump, .. } => format!(
            "{} snapshot @ v{} ({} {})",
            dump.name,
            dump.version,
            dump.entries.len(),
            if dump.entries.len() == 1 {
                "entry"
            } else {
                "entries"
            }
        ),
    }
}

/// One JSON line for one update.
pub fn update_json(update: &MapUpdate) -> Value {
    match update {
        MapUpdate::Delta { app, change_set } => json!({
            "kind": "delta",
            "app": app,
            "map": change_set.map(),
            "version": change_set.next_version(),
            "change_set": change_set,
        }),
        MapUpdate::Snapshot { app, dump } => json!({
            "kind": "snapshot",
            "app": app,
            "map": dump.name,
            "version": dump.version,
            "last_update_id": dump.last_update_id,
            "entries": entries_json(dump.entries.iter().map(|(k, e)| (k, e))),
        }),
    }
}

/// The history of a map, one change set per line.
pub fn history_human(map: &str, after: u64, history: &History) -> String {
    let mut out = format!(
        "{map} @ version {}; history after v{after} (retained after v{})",
        history.current_version, history.oldest_retained
    );
    if history.change_sets.is_empty() {
        out.push_str("\n(no change sets)");
    }
    for cs in &history.change_sets {
        out.push_str(&format!(
            "\nv{} [{}] {}",
            cs.next_version(),
            cs.update_id(),
            change_text(cs)
        ));
    }
    out
}

/// Rows under a header, columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    let mut out = vec![line(header.to_vec())];
    out.extend(
        rows.iter()
            .map(|r| line(r.iter().map(String::as_str).collect())),
    );
    out.join("\n")
}

/// Maps as a table.
pub fn maps_human(maps: &[MapInfo]) -> String {
    if maps.is_empty() {
        return "(no maps)".into();
    }
    let rows: Vec<Vec<String>> = maps
        .iter()
        .map(|m| {
            vec![
                m.name.to_string(),
                m.version.to_string(),
                m.entries.to_string(),
            ]
        })
        .collect();
    table(&["MAP", "VERSION", "ENTRIES"], &rows)
}

/// The membership as a table.
pub fn members_human(nodes: &[NodeInfo]) -> String {
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| vec![n.id.to_string(), n.addr.clone(), n.role.clone()])
        .collect();
    table(&["ID", "ADDR", "ROLE"], &rows)
}

/// The cluster as one or more nodes see it: one row per member, with the term and indexes of
/// each node that answered, the leader marked `*`. Membership and leader are taken from the
/// answer with the highest term.
pub fn cluster_human(statuses: &[ClusterStatus]) -> String {
    let Some(newest) = statuses
        .iter()
        .reduce(|a, b| if b.term > a.term { b } else { a })
    else {
        return "(no node answered)".into();
    };
    let mut members: Vec<NodeInfo> = newest.nodes.clone();
    for s in statuses {
        if !members.iter().any(|n| n.id == s.id) {
            members.push(NodeInfo {
                id: s.id,
                addr: "?".into(),
                role: "not a member".into(),
            });
        }
    }
    members.sort_by_key(|n| n.id);
    let dash = || "-".to_string();
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|n| {
            let mine = statuses.iter().find(|s| s.id == n.id);
            vec![
                n.id.to_string(),
                n.addr.clone(),
                n.role.clone(),
                if n.id == newest.leader_id {
                    "*".into()
                } else {
                    String::new()
                },
                mine.map_or_else(dash, |s| s.state.clone()),
                mine.map_or_else(dash, |s| s.term.to_string()),
                mine.map_or_else(dash, |s| s.commit_index.to_string()),
                mine.map_or_else(dash, |s| s.applied_index.to_string()),
            ]
        })
        .collect();
    let leader = if newest.leader_id == 0 {
        "no leader known".to_string()
    } else {
        format!("leader {}", newest.leader_id)
    };
    format!(
        "{leader}, term {}, {} maps (as node {} sees it)\n{}",
        newest.term,
        newest.maps,
        newest.id,
        table(
            &[
                "ID", "ADDR", "ROLE", "LEADER", "STATE", "TERM", "COMMIT", "APPLIED"
            ],
            &rows
        )
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use sharing_map::{AppName, MapDump, MapName, UpdateId};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn sample() -> Result<SharingMap, Box<dyn std::error::Error>> {
        Ok(SharingMap::restore(MapDump {
            name: MapName::parse("bob-tv-x")?,
            version: 4,
            last_update_id: Some(UpdateId::parse("u4")?),
            entries: vec![
                (Arc::from("b"), Entry::value(json!({"x": [1, "two"]}))),
                (Arc::from("a"), Entry::value(json!("text"))),
                (
                    Arc::from("m"),
                    Entry::method(vec!["p".into(), "q".into()], "p + q\n"),
                ),
            ],
        }))
    }

    #[test]
    fn maps_print_sorted_with_methods() -> TestResult {
        let map = sample()?;
        assert_eq!(
            map_human(&map),
            "bob-tv-x @ version 4\na = \"text\"\nb = {\"x\":[1,\"two\"]}\nm = method(p, q) { p + q }"
        );
        let j = map_json(&map);
        assert_eq!(j["version"], json!(4));
        assert_eq!(j["last_update_id"], json!("u4"));
        assert_eq!(j["entries"]["a"], json!({"value": "text"}));
        assert_eq!(j["entries"]["m"]["method"]["args"], json!(["p", "q"]));
        Ok(())
    }

    #[test]
    fn updates_print_on_one_line() -> TestResult {
        let app = AppName::parse("acme-shop")?;
        let cs = ChangeSet::from_ops(
            MapName::parse("bob-tv-x")?,
            2,
            UpdateId::parse("u3")?,
            [
                (Arc::from("k"), Some(Entry::value(json!(1)))),
                (Arc::from("gone"), None),
                (Arc::from("f"), Some(Entry::method(vec![], "1\n+ 1"))),
            ],
        );
        let delta = MapUpdate::Delta {
            app: app.clone(),
            change_set: cs,
        };
        assert_eq!(
            update_line(&delta),
            "bob-tv-x v3 put f=method() { 1\\n+ 1 }, k=1, rm gone"
        );
        assert_eq!(update_json(&delta)["version"], json!(3));
        assert_eq!(update_json(&delta)["change_set"]["version"], json!(2));
        let snapshot = MapUpdate::Snapshot {
            app,
            dump: sample()?.dump(),
        };
        assert_eq!(update_line(&snapshot), "bob-tv-x snapshot @ v4 (3 entries)");
        assert_eq!(
            update_json(&snapshot)["entries"]["a"],
            json!({"value": "text"})
        );
        let empty = ChangeSet::from_ops(MapName::parse("bob-tv-x")?, 0, UpdateId::parse("e")?, []);
        assert_eq!(change_text(&empty), "no changes");
        Ok(())
    }

    #[test]
    fn cluster_table_merges_what_each_node_said() {
        let nodes = vec![
            NodeInfo {
                id: 1,
                addr: "h:1".into(),
                role: "voter".into(),
            },
            NodeInfo {
                id: 2,
                addr: "h:2".into(),
                role: "learner".into(),
            },
        ];
        let one = ClusterStatus {
            id: 1,
            leader_id: 1,
            term: 3,
            commit_index: 10,
            applied_index: 9,
            state: "leader".into(),
            nodes,
            maps: 5,
        };
        let text = cluster_human(&[one]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "leader 1, term 3, 5 maps (as node 1 sees it)");
        assert_eq!(
            lines[1],
            "ID  ADDR  ROLE     LEADER  STATE   TERM  COMMIT  APPLIED"
        );
        assert_eq!(
            lines[2],
            "1   h:1   voter    *       leader  3     10      9"
        );
        assert_eq!(
            lines[3],
            "2   h:2   learner          -       -     -       -"
        );
        assert_eq!(cluster_human(&[]), "(no node answered)");
    }
}

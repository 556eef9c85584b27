//! Micro-benchmarks of the aggregate index and tokens, each against a peer measured in the same
//! run.
//!
//! - `get_all`: an aggregate of 100 maps linked in a ring (root → m1 → … → m99 → root) holding
//!   10,000 users, each in one map and every seventh also in the next one. Peers: a plain
//!   `std::collections::HashMap<String, Vec<(String, Value)>>` holding the same answers, and a
//!   naive lookup that walks the links of the pinned maps for every call.
//! - `apply_change`: one grant fed as a delta to that aggregate.
//! - tokens: verification of a token with app, CA and expiry constraints (one block, and with an
//!   attenuation block) against reading the same token's signature chain and constraints
//!   without Datalog (`inspect`).
//!
//! Run with `cargo bench -p authz-aggregate`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use authz_aggregate::{
    AggregateIndex, Constraints, LINK_KEY, Principal, RootKey, Verifier, attenuate, inspect, issue,
    links_of, verify,
};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};
use sharing_map::{AppName, CaName, ChangeSet, Entry, MapName, SharingMap, UpdateId};

const MAPS: usize = 100;
const USERS: usize = 10_000;

fn map_name(i: usize) -> MapName {
    MapName::parse(&format!("acme-m{i}-roles")).unwrap_or_else(|e| panic!("{e}"))
}

fn user(u: usize) -> String {
    format!("user{u:05}")
}

/// The maps holding user `u`.
fn homes(u: usize) -> Vec<usize> {
    if u % 7 == 0 {
        vec![u % MAPS, (u + 1) % MAPS]
    } else {
        vec![u % MAPS]
    }
}

fn maps() -> Vec<SharingMap> {
    let mut entries: Vec<Vec<(Arc<str>, Entry)>> = vec![Vec::new(); MAPS];
    for u in 0..USERS {
        for m in homes(u) {
            entries[m].push((Arc::from(user(u)), Entry::value(json!({"role": m}))));
        }
    }
    entries
        .into_iter()
        .enumerate()
        .map(|(i, mut e)| {
            let next = map_name((i + 1) % MAPS).to_string();
            e.push((Arc::from(LINK_KEY), Entry::value(json!([next]))));
            SharingMap::with_entries(map_name(i), e)
        })
        .collect()
}

fn bench_get_all(c: &mut Criterion) {
    let maps = maps();
    let mut index = AggregateIndex::new(map_name(0));
    for m in &maps {
        index.update_map(m.clone());
    }
    assert_eq!(index.reachable().len(), MAPS);
    let snapshot = index.snapshot();

    let mut peer: HashMap<String, Vec<(String, Value)>> = HashMap::new();
    for u in 0..USERS {
        for m in homes(u) {
            peer.entry(user(u))
                .or_default()
                .push((map_name(m).to_string(), json!({"role": m})));
        }
    }
    let keys: Vec<String> = (0..USERS).map(|u| user((u * 7919) % USERS)).collect();
    let by_name: HashMap<MapName, SharingMap> =
        maps.iter().map(|m| (m.name().clone(), m.clone())).collect();

    let mut g = c.benchmark_group("get_all_100_maps_10k_users");
    let mut i = 0;
    g.bench_function("aggregate_snapshot", |b| {
        b.iter(|| {
            i = (i + 1) % USERS;
            let found = snapshot.get_all(&keys[i]);
            black_box(found.first().map(|f| f.value()));
            found.len()
        })
    });
    let mut i = 0;
    g.bench_function("aggregate_index", |b| {
        b.iter(|| {
            i = (i + 1) % USERS;
            let found = index.get_all(&keys[i]);
            black_box(found.first().map(|f| f.value()));
            found.len()
        })
    });
    let mut i = 0;
    g.bench_function("peer_std_hashmap", |b| {
        b.iter(|| {
            i = (i + 1) % USERS;
            let found = peer.get(&keys[i]).map_or(&[][..], Vec::as_slice);
            black_box(found.first().map(|f| &f.1));
            found.len()
        })
    });
    let mut i = 0;
    g.bench_function("peer_walk_links_per_lookup", |b| {
        b.iter(|| {
            i = (i + 1) % USERS;
            let mut found = Vec::new();
            let mut seen = HashSet::new();
            let mut queue = VecDeque::from([map_name(0)]);
            while let Some(name) = queue.pop_front() {
                let Some(map) = by_name.get(&name) else {
                    continue;
                };
                if !seen.insert(name) {
                    continue;
                }
                if let Some(v) = map.get_value(&keys[i]) {
                    found.push(v);
                }
                queue.extend(links_of(map));
            }
            black_box(found.first());
            found.len()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("update_100_maps_10k_users");
    let target = maps[42].clone();
    let mut n = 0u64;
    g.bench_function("apply_change_one_grant", |b| {
        b.iter_batched(
            || {
                n += 1;
                let cs = ChangeSet::from_ops(
                    target.name().clone(),
                    target.version(),
                    UpdateId::parse(&format!("u{n}")).unwrap_or_else(|e| panic!("{e}")),
                    [(Arc::from(user(42)), Some(Entry::value(json!({"role": n}))))],
                );
                // Every iteration starts from the same version; the clone shares the persistent
                // maps and index, and a reader's pinned snapshot is alive as in real use.
                (index.clone(), index.snapshot(), cs)
            },
            |(mut copy, pinned, cs)| {
                let update = copy.apply_change(&cs).map(|u| u.is_empty());
                black_box(&update);
                // Returned, so that dropping the copies is not timed.
                (copy, pinned, update.is_ok())
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn bench_tokens(c: &mut Criterion) {
    let root = RootKey::generate();
    let public = root.public();
    let now = SystemTime::now();
    let app = AppName::parse("acme-notes").unwrap_or_else(|e| panic!("{e}"));
    let ca = CaName::parse("alice-phone").unwrap_or_else(|e| panic!("{e}"));
    let token = issue(
        &root,
        &Constraints::any()
            .app(&app)
            .ca(&ca)
            .expires_at(now + Duration::from_secs(86_400)),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let attenuated = attenuate(
        &public,
        &token,
        &Constraints::any().expires_at(now + Duration::from_secs(3_600)),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let principal = Principal { app, ca };

    let mut g = c.benchmark_group("token");
    g.bench_function("verify_1_block", |b| {
        b.iter(|| verify(&public, black_box(&token), &principal, now).is_ok())
    });
    g.bench_function("verify_2_blocks", |b| {
        b.iter(|| verify(&public, black_box(&attenuated), &principal, now).is_ok())
    });
    g.bench_function("peer_signatures_only_1_block", |b| {
        b.iter(|| inspect(&public, black_box(&token)).is_ok())
    });
    g.bench_function("peer_signatures_only_2_blocks", |b| {
        b.iter(|| inspect(&public, black_box(&attenuated)).is_ok())
    });
    // What the Spine does per request: the signature check once per distinct token, then a
    // lookup by the token's bytes and the constraint match.
    let verifier = Verifier::new(public);
    g.bench_function("server_cached_2_blocks", |b| {
        b.iter(|| {
            verifier
                .authenticate(black_box(&attenuated))
                .is_ok_and(|t| {
                    t.admits(Some(&principal.app), Some(&principal.ca), now)
                        .is_ok()
                })
        })
    });
    g.bench_function("attenuate", |b| {
        b.iter(|| {
            attenuate(
                &public,
                black_box(&token),
                &Constraints::any().expires_at(now + Duration::from_secs(60)),
            )
            .is_ok()
        })
    });
    g.finish();
}

criterion_group!(benches, bench_get_all, bench_tokens);
criterion_main!(benches);

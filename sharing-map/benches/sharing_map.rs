//! Micro-benchmarks of the sharing-map core, each against a peer measured in the same run.
//!
//! Run with `cargo bench -p sharing-map`. The memory comparison is printed before the timings.

use std::alloc::System;
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use serde_json::json;
use sharing_map::{Applied, ChangeSet, Entry, MapName, SharingMap, UpdateId, VersionWindow};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const N: usize = 100_000;

fn name() -> MapName {
    MapName::parse("bench-node-map").unwrap_or_else(|e| panic!("{e}"))
}

fn key(i: usize) -> String {
    format!("user:{i:08}")
}

fn big_map() -> SharingMap {
    SharingMap::with_entries(
        name(),
        (0..N).map(|i| {
            (
                Arc::from(key(i)),
                Entry::value(json!({"id": i, "role": "reader"})),
            )
        }),
    )
}

fn one_key(map: &SharingMap, i: usize) -> ChangeSet {
    ChangeSet::from_ops(
        name(),
        map.version(),
        UpdateId::parse(&format!("u{}", map.version())).unwrap_or_else(|e| panic!("{e}")),
        [(
            Arc::from(key(i % N)),
            Some(Entry::value(json!({"id": i, "role": "writer"}))),
        )],
    )
}

fn next(map: &SharingMap, cs: &ChangeSet) -> SharingMap {
    match map.apply(cs) {
        Ok(Applied::New(m)) => m,
        other => panic!("{other:?}"),
    }
}

/// Bytes still allocated after building what `f` returns (and keeping it alive).
fn held_bytes<T>(f: impl FnOnce() -> T) -> (T, isize) {
    let region = Region::new(GLOBAL);
    let value = f();
    let change = region.change();
    (
        value,
        change.bytes_allocated as isize - change.bytes_deallocated as isize
            + change.bytes_reallocated,
    )
}

fn memory_report() {
    // Process-wide lazies (the shared script engine) must not count as the first window's memory.
    drop(VersionWindow::new(SharingMap::new(name()), 1));
    let (one, one_bytes) = held_bytes(|| VersionWindow::new(big_map(), 5));
    drop(one);
    let (five, five_bytes) = held_bytes(|| {
        let mut window = VersionWindow::new(big_map(), 5);
        for i in 0..4 {
            let cs = one_key(&window.pin(), i * 7919);
            window.apply_delta(&cs).unwrap_or_else(|e| panic!("{e}"));
        }
        window
    });
    assert_eq!(five.retained(), 5);
    eprintln!(
        "memory: 1 version of {N} entries = {one_bytes} B; 5 versions after one-key updates = {five_bytes} B; ratio {:.4}",
        five_bytes as f64 / one_bytes as f64
    );
}

fn benches(c: &mut Criterion) {
    memory_report();

    let map = big_map();
    let window = VersionWindow::new(map.clone(), 5);
    let snapshot = window.pin();
    let std_map: HashMap<String, serde_json::Value> = (0..N)
        .map(|i| (key(i), json!({"id": i, "role": "reader"})))
        .collect();
    let probes: Vec<String> = (0..1024).map(|i| key((i * 7919) % N)).collect();

    let mut group = c.benchmark_group("get_100k");
    group.bench_function("pinned_snapshot", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) & 1023;
            black_box(snapshot.get(black_box(&probes[i])))
        })
    });
    group.bench_function("std_hashmap", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) & 1023;
            black_box(std_map.get(black_box(&probes[i])))
        })
    });
    group.finish();

    let mut group = c.benchmark_group("apply_one_key_100k");
    let mut i = 0;
    group.bench_function("sharing_map", |b| {
        b.iter_batched(
            || {
                i += 1;
                one_key(&map, i * 31)
            },
            |cs| black_box(next(&map, &cs)),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("std_hashmap_insert", |b| {
        let mut m = std_map.clone();
        let mut i = 0;
        b.iter(|| {
            i += 1;
            m.insert(key(i % N), json!({"id": i, "role": "writer"}))
        })
    });
    group.finish();

    let with_method = next(
        &map,
        &ChangeSet::from_ops(
            name(),
            0,
            UpdateId::parse("m").unwrap_or_else(|e| panic!("{e}")),
            [(
                Arc::from("role_of"),
                Some(Entry::method(
                    vec!["user".into()],
                    "let e = this.get(user); if e == () { \"none\" } else { e.role }",
                )),
            )],
        ),
    );
    let snapshot = VersionWindow::new(with_method, 5).pin();
    let arg = [json!(key(4242))];
    let mut group = c.benchmark_group("method");
    group.bench_function("invoke_role_of", |b| {
        b.iter(|| black_box(snapshot.invoke("role_of", black_box(&arg))))
    });
    group.bench_function("native_role_of", |b| {
        b.iter(|| {
            black_box(
                snapshot
                    .get(black_box(&key(4242)))
                    .and_then(|e| e.get("role"))
                    .cloned(),
            )
        })
    });
    group.finish();
}

criterion_group!(benches_group, benches);
criterion_main!(benches_group);

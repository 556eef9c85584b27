//! The host's wake index: which CAs must be activated at some time although nobody calls them
//! (their timers, DESIGN.md §9.7), kept so that an inactive CA costs no activation, and found
//! again after a host restart or on another host.
//!
//! **In the Spine**, one index map per partition, `cahosts-p<N>-wakeups` of app `spine-system`
//! (beside the partition's lease), written only by hosts: key `<app>/<ca>`, value
//! `{"due": unix ms, "v": checkpoint version}`. The index is a *superset*, early rather than
//! late: for every CA with a committed wake-up at time `t` the index has an entry with
//! `due <= t`. Two rules keep it so:
//! - **lower before commit**: before an activation sends a checkpoint whose earliest wake-up is
//!   earlier than what the index holds for the CA (or the CA has no entry), it writes the entry
//!   and waits for the Spine's acknowledgement (so the first timer of a CA costs one index write
//!   before its checkpoint; later timers that are not earlier cost none);
//! - **settle at a clean end**: an activation that ends idle writes the committed earliest
//!   wake-up (or removes the entry when there is none), unless a newer checkpoint version wrote
//!   the entry (another activation, after a takeover). A crash before this leaves an entry that
//!   is only early: the CA is activated, finds nothing due, and settles it then.
//!
//! **In the host**, a [`WakeSchedule`] (pure: due time → CA) of the partitions it holds, and a
//! driver task. When the host holds a partition (taken for a call, or claimed because the
//! index has entries and the lease is free or expired) it loads the partition's index into the
//! schedule; activations that end put their next wake-up there. At a due time the driver
//! activates the CA (an empty wake-up message) unless it is active; the activation then fires
//! what is due itself (its own serve loop sleeps until its plugins' next wake-up). Every
//! `scan_ms` the driver reads the index of partitions no live host holds and claims those with
//! entries: after a host dies its CAs' timers fire on another host within the lease time plus
//! one scan. Memory: one schedule entry per CA with timers in a held partition, not an
//! activation.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sharing_map::{AppName, CaName, ChangeSet, Entry, MapName, SharingMap, UpdateId};
use spine_client::Client;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::CaError;
use crate::host::HostInner;
use crate::placement::{LEASE_APP, Placement, Route, partition_of};

/// Partitions when the host has no placement (one host serves every CA).
pub const DEFAULT_PARTITIONS: u32 = 64;

/// The index map of partition `p`.
pub fn index_map(p: u32) -> Result<MapName, CaError> {
    MapName::parse(&format!("cahosts-p{p}-wakeups"))
        .map_err(|e| CaError::exception(format!("wake index map name: {e}")))
}

/// The index key of a CA.
pub fn index_key(app: &AppName, ca: &CaName) -> String {
    format!("{app}/{ca}")
}

/// An index entry: activate the CA by `due`; written for checkpoint version `v`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// Unix ms.
    pub due: u64,
    /// The checkpoint version it was written for.
    pub v: u64,
}

/// Lower before commit: the entry to write before a checkpoint at version `v` whose earliest
/// wake-up is `due` (`None`: the index already covers it).
pub fn lower(current: Option<IndexEntry>, due: u64, v: u64) -> Option<IndexEntry> {
    match current {
        Some(c) if c.due <= due => None,
        Some(c) => Some(IndexEntry { due, v: c.v.max(v) }),
        None => Some(IndexEntry { due, v }),
    }
}

/// Settle at a clean end with committed version `v` and earliest wake-up `due`: `None` changes
/// nothing, `Some(None)` removes the entry, `Some(Some(e))` writes `e`.
pub fn settle(current: Option<IndexEntry>, due: Option<u64>, v: u64) -> Option<Option<IndexEntry>> {
    match (current, due) {
        // A newer activation wrote it: it is that one's to settle.
        (Some(c), _) if c.v > v => None,
        (None, None) => None,
        (Some(c), Some(d)) if c.due == d => None,
        (_, Some(d)) => Some(Some(IndexEntry { due: d, v })),
        (Some(_), None) => Some(None),
    }
}

/// Due times of CAs, the earliest first (pure).
#[derive(Debug, Default)]
pub struct WakeSchedule {
    by_time: BTreeSet<(u64, AppName, CaName)>,
    by_ca: HashMap<(AppName, CaName), u64>,
}

impl WakeSchedule {
    /// Wakes the CA at `due` (replacing what it had).
    pub fn set(&mut self, app: AppName, ca: CaName, due: u64) {
        self.remove(&app, &ca);
        self.by_time.insert((due, app.clone(), ca.clone()));
        self.by_ca.insert((app, ca), due);
    }

    /// Wakes the CA at `due` unless it is due earlier already.
    pub fn set_earlier(&mut self, app: AppName, ca: CaName, due: u64) {
        match self.by_ca.get(&(app.clone(), ca.clone())) {
            Some(d) if *d <= due => {}
            _ => self.set(app, ca, due),
        }
    }

    /// Forgets the CA.
    pub fn remove(&mut self, app: &AppName, ca: &CaName) {
        if let Some(due) = self.by_ca.remove(&(app.clone(), ca.clone())) {
            self.by_time.remove(&(due, app.clone(), ca.clone()));
        }
    }

    /// The earliest due time.
    pub fn next(&self) -> Option<u64> {
        self.by_time.first().map(|(d, _, _)| *d)
    }

    /// Takes the CAs due at `now`, earliest first.
    pub fn take_due(&mut self, now: u64) -> Vec<(AppName, CaName)> {
        let mut out = Vec::new();
        while let Some((due, _, _)) = self.by_time.first() {
            if *due > now {
                break;
            }
            if let Some((_, app, ca)) = self.by_time.pop_first() {
                self.by_ca.remove(&(app.clone(), ca.clone()));
                out.push((app, ca));
            }
        }
        out
    }

    /// Keeps only the CAs for which `keep` holds.
    pub fn retain(&mut self, mut keep: impl FnMut(&AppName, &CaName) -> bool) {
        self.by_time.retain(|(_, a, c)| keep(a, c));
        self.by_ca.retain(|(a, c), _| keep(a, c));
    }

    /// CAs scheduled.
    pub fn len(&self) -> usize {
        self.by_ca.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.by_ca.is_empty()
    }
}

enum WriteOp {
    Lower { due: u64, v: u64 },
    Settle { due: Option<u64>, v: u64 },
}

struct Write {
    p: u32,
    key: String,
    op: WriteOp,
    reply: oneshot::Sender<Result<(), String>>,
}

/// The host's wake index and schedule (see the module doc).
#[derive(Debug)]
pub struct Wakeups {
    client: Client,
    app: AppName,
    partitions: u32,
    /// The index maps as last read or written (the write path's compare-and-swap base).
    maps: Mutex<HashMap<u32, SharingMap>>,
    schedule: Mutex<WakeSchedule>,
    /// Partitions whose index is in the schedule.
    loaded: Mutex<HashSet<u32>>,
    changed: Notify,
    writes: mpsc::UnboundedSender<Write>,
}

impl std::fmt::Debug for Write {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Write(p{} {})", self.p, self.key)
    }
}

impl Wakeups {
    /// The wake index of a host with `partitions` partitions, writing through `client`. Starts
    /// its writer task on the current runtime.
    pub fn start(client: Client, partitions: u32) -> Arc<Self> {
        let app = AppName::parse(LEASE_APP)
            .unwrap_or_else(|_| unreachable!("the constant {LEASE_APP} is an app name"));
        let (writes, rx) = mpsc::unbounded_channel();
        let me = Arc::new(Self {
            client,
            app,
            partitions: partitions.max(1),
            maps: Mutex::default(),
            schedule: Mutex::default(),
            loaded: Mutex::default(),
            changed: Notify::new(),
            writes,
        });
        tokio::spawn(write_loop(Arc::downgrade(&me), rx));
        me
    }

    /// The partition of a CA in the index.
    pub fn partition(&self, app: &AppName, ca: &CaName) -> u32 {
        partition_of(app, ca, self.partitions)
    }

    /// What the index holds for a CA, as far as this host knows (`None`: no entry, or its
    /// partition's index was not read).
    pub fn indexed(&self, app: &AppName, ca: &CaName) -> Option<IndexEntry> {
        let p = self.partition(app, ca);
        let maps = lock(&self.maps);
        entry_of(maps.get(&p)?, &index_key(app, ca))
    }

    /// Whether the index may have an entry for a CA (it has one, or its partition's index was
    /// not read here).
    pub fn may_hold(&self, app: &AppName, ca: &CaName) -> bool {
        let p = self.partition(app, ca);
        let maps = lock(&self.maps);
        maps.get(&p)
            .is_none_or(|m| entry_of(m, &index_key(app, ca)).is_some())
    }

    /// Makes sure the index wakes the CA by `due` before a checkpoint at version `v` that
    /// needs it; returns once the Spine has it.
    pub async fn lower(&self, app: &AppName, ca: &CaName, due: u64, v: u64) -> Result<(), String> {
        if let Some(e) = self.indexed(app, ca)
            && e.due <= due
        {
            return Ok(());
        }
        self.write(app, ca, WriteOp::Lower { due, v }).await
    }

    /// An activation ended cleanly with committed version `v` and earliest wake-up `due`:
    /// settles the index and the schedule.
    pub async fn settle(&self, app: &AppName, ca: &CaName, due: Option<u64>, v: u64) {
        if let Err(e) = self.write(app, ca, WriteOp::Settle { due, v }).await {
            // Only early: the CA is woken, finds nothing, and settles again.
            tracing::warn!(%app, %ca, error = %e, "could not settle the wake index");
        }
        self.schedule_at(app, ca, due);
    }

    /// Puts (or removes) a CA's wake-up in this host's schedule.
    pub fn schedule_at(&self, app: &AppName, ca: &CaName, due: Option<u64>) {
        {
            let mut s = lock(&self.schedule);
            match due {
                Some(d) => s.set(app.clone(), ca.clone(), d),
                None => s.remove(app, ca),
            }
        }
        self.changed.notify_one();
    }

    /// Forgets the CAs of partition `p` (its lease was lost).
    pub fn forget_partition(&self, p: u32) {
        lock(&self.loaded).remove(&p);
        // Another host writes its index now: what this one cached may go stale.
        lock(&self.maps).remove(&p);
        let parts = self.partitions;
        lock(&self.schedule).retain(|a, c| partition_of(a, c, parts) != p);
    }

    /// CAs in this host's schedule.
    pub fn scheduled(&self) -> usize {
        lock(&self.schedule).len()
    }

    async fn write(&self, app: &AppName, ca: &CaName, op: WriteOp) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        let write = Write {
            p: self.partition(app, ca),
            key: index_key(app, ca),
            op,
            reply,
        };
        self.writes
            .send(write)
            .map_err(|_| "the wake index writer stopped".to_string())?;
        rx.await
            .map_err(|_| "the wake index writer stopped".to_string())?
    }

    /// Reads partition `p`'s index map from the Spine (empty if it does not exist).
    async fn read(&self, p: u32, stale_ok: bool) -> Result<SharingMap, String> {
        let name = index_map(p).map_err(|e| e.to_string())?;
        match self.client.get_map(&self.app, &name, stale_ok).await {
            Ok(m) => Ok(m),
            Err(e) if e.code() == tonic::Code::NotFound => Ok(SharingMap::new(name)),
            Err(e) => Err(format!("reading wake index {name}: {e}")),
        }
    }

    /// Keeps the newer of a cached map and `map`.
    fn cache(&self, p: u32, map: SharingMap) {
        let mut maps = lock(&self.maps);
        match maps.get(&p) {
            Some(m) if m.version() >= map.version() => {}
            _ => {
                maps.insert(p, map);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn entry_of(map: &SharingMap, key: &str) -> Option<IndexEntry> {
    map.get_value(key)
        .and_then(|v| serde_json::from_value(v.clone()).ok())
}

fn parse_key(key: &str) -> Option<(AppName, CaName)> {
    let (app, ca) = key.split_once('/')?;
    Some((AppName::parse(app).ok()?, CaName::parse(ca).ok()?))
}

/// The writer: takes the writes queued, one change set per partition, all partitions in one
/// `UpdateBatch`; a partition whose compare-and-swap failed is read again and retried.
async fn write_loop(me: Weak<Wakeups>, mut rx: mpsc::UnboundedReceiver<Write>) {
    let mut retry: Vec<Write> = Vec::new();
    let mut attempts: HashMap<u32, u32> = HashMap::new();
    loop {
        let mut batch = std::mem::take(&mut retry);
        if batch.is_empty() {
            match rx.recv().await {
                Some(w) => batch.push(w),
                None => return,
            }
        }
        while batch.len() < 10_000 {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let Some(me) = me.upgrade() else { return };
        let mut by_partition: HashMap<u32, Vec<Write>> = HashMap::new();
        for w in batch {
            by_partition.entry(w.p).or_default().push(w);
        }
        let mut updates = Vec::new();
        let mut groups = Vec::new();
        for (p, writes) in by_partition {
            let cached = lock(&me.maps).get(&p).cloned();
            let base = match cached {
                Some(m) => Ok(m),
                None => me.read(p, false).await,
            };
            let base = match base {
                Ok(m) => {
                    // Kept, so that the next settle of a CA without wake-ups reads nothing.
                    me.cache(p, m.clone());
                    m
                }
                Err(e) => {
                    for w in writes {
                        let _ = w.reply.send(Err(e.clone()));
                    }
                    continue;
                }
            };
            // The writes of one partition, applied in order on the base.
            let mut staged: HashMap<String, Option<IndexEntry>> = HashMap::new();
            for w in &writes {
                let current = match staged.get(&w.key) {
                    Some(e) => *e,
                    None => entry_of(&base, &w.key),
                };
                let next = match w.op {
                    WriteOp::Lower { due, v } => lower(current, due, v).map(Some),
                    WriteOp::Settle { due, v } => settle(current, due, v),
                };
                if let Some(next) = next {
                    staged.insert(w.key.clone(), next);
                }
            }
            if staged.is_empty() {
                for w in writes {
                    let _ = w.reply.send(Ok(()));
                }
                continue;
            }
            if base.version() == 0 {
                let name = base.name().clone();
                if let Err(e) = me.client.create_map(&me.app, &name, Vec::new()).await {
                    for w in writes {
                        let _ = w.reply.send(Err(format!("creating {name}: {e}")));
                    }
                    continue;
                }
            }
            let ops: Vec<(Arc<str>, Option<Entry>)> = staged
                .into_iter()
                .map(|(k, e)| {
                    let entry = e
                        .and_then(|e| serde_json::to_value(e).ok())
                        .map(Entry::value);
                    (Arc::from(k), entry)
                })
                .collect();
            let id = match UpdateId::parse(&format!(
                "wake-{:016x}-{}",
                rand::random::<u64>(),
                base.version()
            )) {
                Ok(id) => id,
                Err(e) => {
                    for w in writes {
                        let _ = w.reply.send(Err(e.to_string()));
                    }
                    continue;
                }
            };
            let cs = ChangeSet::from_ops(base.name().clone(), base.version(), id, ops);
            updates.push((me.app.clone(), vec![cs.clone()]));
            groups.push((p, base, cs, writes));
        }
        if updates.is_empty() {
            continue;
        }
        let answers = me.client.update_batch(&updates).await;
        for (i, (p, base, cs, writes)) in groups.into_iter().enumerate() {
            let result = match &answers {
                Ok(results) => match results.get(i) {
                    Some(Ok(_)) => Ok(()),
                    Some(Err(e)) if e.is_conflict() => Err(None),
                    Some(Err(e)) => Err(Some(e.to_string())),
                    None => Err(Some("the Spine answered fewer updates".to_string())),
                },
                Err(e) => Err(Some(e.to_string())),
            };
            match result {
                Ok(()) => {
                    attempts.remove(&p);
                    if let Ok(sharing_map::Applied::New(next)) = base.apply(&cs) {
                        me.cache(p, next);
                    } else {
                        lock(&me.maps).remove(&p);
                    }
                    for w in writes {
                        let _ = w.reply.send(Ok(()));
                    }
                }
                Err(None) if attempts.get(&p).copied().unwrap_or(0) < 20 => {
                    // Another host wrote the partition's index: read it again and retry.
                    *attempts.entry(p).or_default() += 1;
                    lock(&me.maps).remove(&p);
                    retry.extend(writes);
                }
                Err(e) => {
                    attempts.remove(&p);
                    lock(&me.maps).remove(&p);
                    let e = e.unwrap_or_else(|| "the wake index kept changing".to_string());
                    for w in writes {
                        let _ = w.reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }
}

/// Drives the host's wake-ups until the host is gone: activates due CAs that are not active,
/// and every `scan` claims partitions whose index has entries and whose lease is free.
pub(crate) async fn drive(
    host: Weak<HostInner>,
    wakeups: Arc<Wakeups>,
    placement: Option<Arc<Placement>>,
    scan: Duration,
) {
    let mut next_scan = tokio::time::Instant::now();
    loop {
        if tokio::time::Instant::now() >= next_scan {
            scan_once(&wakeups, placement.as_deref()).await;
            next_scan = tokio::time::Instant::now() + scan;
        }
        let Some(inner) = host.upgrade() else { return };
        let now = crate::plugins::timers::now_ms();
        let due = lock(&wakeups.schedule).take_due(now);
        for (app, ca) in due {
            inner.clone().wake(app, ca);
        }
        let next = lock(&wakeups.schedule).next();
        drop(inner);
        let until = match next {
            Some(at) => {
                let wait =
                    Duration::from_millis(at.saturating_sub(crate::plugins::timers::now_ms()));
                (tokio::time::Instant::now() + wait).min(next_scan)
            }
            None => next_scan,
        };
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {}
            _ = wakeups.changed.notified() => {}
        }
    }
}

/// One scan: partitions held here whose index is not in the schedule yet are loaded; the
/// index of partitions no live host holds is read, and those with entries are claimed.
async fn scan_once(wakeups: &Wakeups, placement: Option<&Placement>) {
    for p in 0..wakeups.partitions {
        let held = match placement {
            None => true,
            Some(pl) => match pl.known_route(p) {
                Some(Route::Local) => true,
                // Another live host holds it: its timers are that host's.
                Some(Route::Remote(_)) => {
                    lock(&wakeups.loaded).remove(&p);
                    continue;
                }
                None => false,
            },
        };
        if held && lock(&wakeups.loaded).contains(&p) {
            continue;
        }
        let map = match wakeups.read(p, !held).await {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(partition = p, error = %e, "wake index scan");
                continue;
            }
        };
        if map.is_empty() {
            if held {
                wakeups.cache(p, map);
                lock(&wakeups.loaded).insert(p);
            }
            continue;
        }
        if !held {
            match placement.map(|pl| pl.claim(p)) {
                Some(claim) => match claim.await {
                    Ok(Route::Local) => {}
                    _ => continue,
                },
                None => continue,
            }
        }
        let entries: Vec<(AppName, CaName, u64)> = map
            .iter()
            .filter_map(|(k, e)| {
                let (app, ca) = parse_key(k)?;
                let entry: IndexEntry = serde_json::from_value(e.as_value()?.clone()).ok()?;
                Some((app, ca, entry.due))
            })
            .collect();
        {
            let mut s = lock(&wakeups.schedule);
            for (app, ca, due) in entries {
                s.set_earlier(app, ca, due);
            }
        }
        wakeups.cache(p, map);
        lock(&wakeups.loaded).insert(p);
        wakeups.changed.notify_one();
    }
}

/// The earliest wake-up the host's turn plugins have in a checkpoint's plugin states.
pub(crate) fn earliest(
    plugins: &[Arc<dyn crate::turn::TurnPlugin>],
    ids: crate::turn::Ids<'_>,
    states: &std::collections::BTreeMap<String, Value>,
) -> Option<u64> {
    plugins
        .iter()
        .filter_map(|p| p.next_wake(ids, states.get(p.name()).unwrap_or(&Value::Null)))
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(due: u64, v: u64) -> IndexEntry {
        IndexEntry { due, v }
    }

    #[test]
    fn the_index_is_lowered_before_commit_and_settled_unless_a_newer_version_wrote_it() {
        assert_eq!(lower(None, 50, 3), Some(e(50, 3)));
        assert_eq!(lower(Some(e(40, 3)), 50, 4), None, "covers it already");
        assert_eq!(lower(Some(e(60, 7)), 50, 4), Some(e(50, 7)));
        assert_eq!(settle(Some(e(40, 3)), Some(90), 5), Some(Some(e(90, 5))));
        assert_eq!(settle(Some(e(40, 3)), None, 5), Some(None));
        assert_eq!(
            settle(Some(e(40, 6)), None, 5),
            None,
            "a newer activation's"
        );
        assert_eq!(settle(Some(e(40, 5)), Some(40), 5), None);
        assert_eq!(settle(None, None, 5), None);
        assert_eq!(settle(None, Some(9), 5), Some(Some(e(9, 5))));
    }

    #[test]
    fn the_schedule_hands_out_due_cas_earliest_first_once() {
        let app = AppName::parse("demo-timers").expect("app");
        let ca = |s: &str| CaName::parse(s).expect("ca");
        let mut s = WakeSchedule::default();
        s.set(app.clone(), ca("bob-phone"), 30);
        s.set(app.clone(), ca("amy-phone"), 20);
        s.set(app.clone(), ca("cat-phone"), 10);
        s.set(app.clone(), ca("cat-phone"), 40);
        s.set_earlier(app.clone(), ca("bob-phone"), 35);
        assert_eq!(s.next(), Some(20));
        let due: Vec<String> = s
            .take_due(30)
            .into_iter()
            .map(|(_, c)| c.to_string())
            .collect();
        assert_eq!(due, ["amy-phone", "bob-phone"]);
        assert!(s.take_due(30).is_empty());
        s.retain(|_, c| c.as_str() != "cat-phone");
        assert!(s.is_empty());
    }
}

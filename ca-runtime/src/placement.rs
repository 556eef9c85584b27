//! Single activation and placement (DESIGN.md §9.5).
//!
//! CAs hash onto a fixed number of partitions. A host owns a partition under a lease recorded in
//! the Spine (map `cahosts-p<N>-lease` of app `spine-system`, key `lease`), taken and renewed by
//! compare-and-swap on the map's version; a takeover bumps the lease's epoch. Any host accepts a
//! call: it serves the CA if it holds (or can take) the CA's partition, and forwards the call to
//! the holder otherwise. When a host dies its leases run out, and the next call of one of its
//! CAs, at any host, takes the partition over.
//!
//! Leases give liveness only. Safety does not rest on clocks: two activations of one CA can
//! never both commit, because every checkpoint is a compare-and-swap on the CA's state map.
//!
//! The pure part ([`Lease`], [`partition_of`], [`Lease::route`]) decides; [`Placement`] reads and
//! writes the lease maps.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::json;
use sharing_map::{AppName, CaName, ChangeSet, Entry, MapName, SharingMap, UpdateId};
use spine_client::Client;

use crate::CaError;

/// The app the lease maps live in.
pub const LEASE_APP: &str = "spine-system";
const LEASE_KEY: &str = "lease";

/// The partition of CA `ca` of app `app`, of `partitions`: FNV-1a of `app/ca`, stable across
/// builds and machines (every host must agree).
pub fn partition_of(app: &AppName, ca: &CaName, partitions: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in app
        .as_str()
        .bytes()
        .chain(std::iter::once(b'/'))
        .chain(ca.as_str().bytes())
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % u64::from(partitions.max(1))) as u32
}

/// The lease map of partition `p`.
pub fn lease_map(p: u32) -> Result<MapName, CaError> {
    MapName::parse(&format!("cahosts-p{p}-lease"))
        .map_err(|e| CaError::exception(format!("lease map name: {e}")))
}

/// A partition's lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The holder's host id.
    pub holder: String,
    /// Where the holder serves clients.
    pub addr: String,
    /// Bumped by every takeover.
    pub epoch: u64,
    /// Until when (Unix milliseconds) the holder may serve the partition.
    pub expires_unix_ms: u64,
    /// Where the holder serves HTTP (event ingress), if it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
}

/// Where a call goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// This host serves it.
    Local,
    /// The holder at this address does.
    Remote(String),
}

/// What a host should do about a partition, given its lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Serve: this host holds a lease that is still good.
    Serve,
    /// Forward to the holder.
    Forward(String),
    /// Take the lease (it is free, expired, or ours but due for renewal): write this one.
    Take(Lease),
}

impl Lease {
    /// Decides for host `me` (serving at `addr`) at `now_ms`, with leases of `lease_ms`. A
    /// holder renews once less than half its lease is left, so it never serves on a lease about
    /// to run out.
    pub fn decide(
        current: Option<&Lease>,
        me: &str,
        addr: &str,
        now_ms: u64,
        lease_ms: u64,
    ) -> Decision {
        let take = |epoch: u64| {
            Decision::Take(Lease {
                holder: me.to_string(),
                addr: addr.to_string(),
                epoch,
                expires_unix_ms: now_ms + lease_ms,
                http: None,
            })
        };
        match current {
            None => take(1),
            Some(l) if l.holder == me => {
                if l.expires_unix_ms > now_ms + lease_ms / 2 {
                    Decision::Serve
                } else if l.expires_unix_ms > now_ms {
                    take(l.epoch)
                } else {
                    // Ours, but it ran out: another host may have served meanwhile.
                    take(l.epoch + 1)
                }
            }
            Some(l) if l.expires_unix_ms > now_ms => Decision::Forward(l.addr.clone()),
            Some(l) => take(l.epoch + 1),
        }
    }
}

/// Placement settings.
#[derive(Clone, Debug)]
pub struct PlacementConfig {
    /// This host's id (unique among hosts).
    pub host_id: String,
    /// Where this host serves clients, as other hosts reach it.
    pub addr: String,
    /// Partitions (the same on every host).
    pub partitions: u32,
    /// How long a lease lasts.
    pub lease: Duration,
    /// Where this host serves HTTP, as other hosts reach it (recorded in its leases, so that
    /// events reach the holder of a CA's partition).
    pub http: Option<String>,
}

#[derive(Clone, Debug)]
struct Known {
    lease: Lease,
}

/// Reads, takes and renews leases.
#[derive(Debug)]
pub struct Placement {
    client: Client,
    config: PlacementConfig,
    app: AppName,
    known: Mutex<HashMap<u32, Known>>,
    /// One settler per partition at a time: concurrent first calls wait for one lease write.
    settling: Vec<tokio::sync::Mutex<()>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Placement {
    /// Placement through `client`.
    pub fn new(client: Client, config: PlacementConfig) -> Result<Arc<Self>, CaError> {
        let app = AppName::parse(LEASE_APP).map_err(|e| CaError::exception(e.to_string()))?;
        let settling = (0..config.partitions.max(1))
            .map(|_| tokio::sync::Mutex::new(()))
            .collect();
        Ok(Arc::new(Self {
            client,
            config,
            app,
            known: Mutex::new(HashMap::new()),
            settling,
        }))
    }

    /// The settings.
    pub fn config(&self) -> &PlacementConfig {
        &self.config
    }

    /// The partition of a CA.
    pub fn partition(&self, app: &AppName, ca: &CaName) -> u32 {
        partition_of(app, ca, self.config.partitions)
    }

    /// Where calls of CA `ca` of `app` go, taking its partition if it is free.
    pub async fn route(&self, app: &AppName, ca: &CaName) -> Result<Route, CaError> {
        self.claim(self.partition(app, ca)).await
    }

    /// Where calls of partition `p` go, taking it if it is free: a host that finds work there
    /// (CAs with due timers) claims it without waiting for a call.
    pub async fn claim(&self, p: u32) -> Result<Route, CaError> {
        if let Some(route) = self.known_route(p) {
            return Ok(route);
        }
        let _settler = match self.settling.get(p as usize) {
            Some(m) => Some(m.lock().await),
            None => None,
        };
        // Another call may have settled it while this one waited.
        if let Some(route) = self.known_route(p) {
            return Ok(route);
        }
        self.settle(p).await
    }

    /// What is known may decide: our own lease with time left, another's still running
    /// (`None`: unknown, free or expired).
    pub fn known_route(&self, p: u32) -> Option<Route> {
        let k = self.known(p)?;
        let lease_ms = self.config.lease.as_millis() as u64;
        match Lease::decide(
            Some(&k.lease),
            &self.config.host_id,
            &self.config.addr,
            now_ms(),
            lease_ms,
        ) {
            Decision::Serve => Some(Route::Local),
            Decision::Forward(addr) => Some(Route::Remote(addr)),
            Decision::Take(_) => None,
        }
    }

    /// Where the holder of partition `p` serves HTTP, as far as its known lease says.
    pub fn holder_http(&self, p: u32) -> Option<String> {
        self.known(p).and_then(|k| k.lease.http)
    }

    /// Forgets what is known of partition `p` (its holder did not answer).
    pub fn forget(&self, p: u32) {
        self.lock().remove(&p);
    }

    /// The partitions this host holds.
    pub fn held(&self) -> Vec<u32> {
        let me = &self.config.host_id;
        self.lock()
            .iter()
            .filter(|(_, k)| &k.lease.holder == me)
            .map(|(p, _)| *p)
            .collect()
    }

    /// Renews every lease this host holds; returns the partitions it lost.
    pub async fn renew(&self) -> Vec<u32> {
        let mut lost = Vec::new();
        for p in self.held() {
            let _settler = match self.settling.get(p as usize) {
                Some(m) => Some(m.lock().await),
                None => None,
            };
            match self.settle(p).await {
                Ok(Route::Local) => {}
                Ok(Route::Remote(_)) | Err(_) => {
                    let still_good = self.known(p).is_some_and(|k| {
                        k.lease.holder == self.config.host_id && k.lease.expires_unix_ms > now_ms()
                    });
                    if !still_good {
                        self.forget(p);
                        lost.push(p);
                    }
                }
            }
        }
        lost
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Known>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn known(&self, p: u32) -> Option<Known> {
        self.lock().get(&p).cloned()
    }

    /// Reads partition `p`'s lease from the Spine and takes or renews it when it may; reads
    /// again when another host wrote it meanwhile.
    async fn settle(&self, p: u32) -> Result<Route, CaError> {
        let mut tries = 0;
        loop {
            match self.settle_once(p).await {
                Err(e) if e.code == ca_client::ErrorCode::Moved && tries < 3 => tries += 1,
                other => return other,
            }
        }
    }

    async fn settle_once(&self, p: u32) -> Result<Route, CaError> {
        let map_name = lease_map(p)?;
        let unavailable = |e: spine_client::ClientError| {
            CaError::shut_down(format!(
                "the lease of partition {p} cannot be read or written: {e}"
            ))
        };
        let map = match self.client.get_map(&self.app, &map_name, false).await {
            Ok(m) => m,
            Err(e) if e.code() == tonic::Code::NotFound => {
                self.client
                    .create_map(&self.app, &map_name, Vec::new())
                    .await
                    .map_err(unavailable)?;
                SharingMap::new(map_name.clone())
            }
            Err(e) => return Err(unavailable(e)),
        };
        let current: Option<Lease> = map
            .get_value(LEASE_KEY)
            .and_then(|v| serde_json::from_value(v.clone()).ok());
        let lease_ms = self.config.lease.as_millis() as u64;
        let decision = Lease::decide(
            current.as_ref(),
            &self.config.host_id,
            &self.config.addr,
            now_ms(),
            lease_ms,
        );
        match decision {
            Decision::Serve | Decision::Forward(_) => {
                let lease = current.ok_or_else(|| CaError::exception("a decision on no lease"))?;
                let route = match &decision {
                    Decision::Forward(addr) => Route::Remote(addr.clone()),
                    _ => Route::Local,
                };
                self.lock().insert(p, Known { lease });
                Ok(route)
            }
            Decision::Take(mut lease) => {
                lease.http = self.config.http.clone();
                let id = UpdateId::parse(&format!(
                    "lease-{}-{}-{}",
                    self.config.host_id, lease.epoch, lease.expires_unix_ms
                ))
                .map_err(|e| CaError::exception(e.to_string()))?;
                let cs = ChangeSet::from_ops(
                    map_name.clone(),
                    map.version(),
                    id,
                    [(Arc::from(LEASE_KEY), Some(Entry::value(json!(lease))))],
                );
                match self.client.update(&self.app, vec![cs]).await {
                    Ok(_) => {
                        if current.as_ref().is_none_or(|c| c.holder != lease.holder) {
                            tracing::info!(
                                partition = p,
                                epoch = lease.epoch,
                                "took the partition's lease"
                            );
                        }
                        self.lock().insert(p, Known { lease });
                        Ok(Route::Local)
                    }
                    // Another host took or renewed it first: ask again.
                    Err(e) if e.is_conflict() => {
                        self.forget(p);
                        Err(CaError::moved(format!(
                            "partition {p} changed hands; call again"
                        )))
                    }
                    Err(e) => Err(unavailable(e)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, epoch: u64, expires: u64) -> Lease {
        Lease {
            holder: holder.into(),
            addr: format!("{holder}:1"),
            epoch,
            expires_unix_ms: expires,
            http: None,
        }
    }

    #[test]
    fn leases_are_served_forwarded_renewed_and_taken_over() {
        let d = |l: Option<&Lease>, now| Lease::decide(l, "a", "a:1", now, 1000);
        assert_eq!(d(None, 5), Decision::Take(lease("a", 1, 1005)));
        let mine = lease("a", 3, 2000);
        assert_eq!(d(Some(&mine), 1000), Decision::Serve);
        assert_eq!(
            d(Some(&mine), 1600),
            Decision::Take(lease("a", 3, 2600)),
            "renewal keeps the epoch"
        );
        assert_eq!(
            d(Some(&mine), 2100),
            Decision::Take(lease("a", 4, 3100)),
            "ran out: a new epoch"
        );
        let theirs = lease("b", 7, 2000);
        assert_eq!(d(Some(&theirs), 1999), Decision::Forward("b:1".into()));
        assert_eq!(
            d(Some(&theirs), 2000),
            Decision::Take(lease("a", 8, 3000)),
            "takeover bumps the epoch"
        );
    }

    #[test]
    fn partitions_are_stable_and_spread() {
        let app = AppName::parse("demo-counter").expect("app");
        let ca = CaName::parse("alice-phone").expect("ca");
        assert_eq!(partition_of(&app, &ca, 64), partition_of(&app, &ca, 64));
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..1000 {
            let ca = CaName::parse(&format!("u{i:04}-phone")).expect("ca");
            seen.insert(partition_of(&app, &ca, 64));
        }
        assert_eq!(seen.len(), 64);
        assert_eq!(partition_of(&app, &ca, 1), 0);
    }
}

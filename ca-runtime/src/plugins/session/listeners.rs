//! Listening clients on this host: who listens to which session of which CA, and what each was
//! sent. The session plugin tells it every committed table ([`Listeners::committed`]); it
//! pushes each listener the notifications of its session that it was not sent yet.
//!
//! Pushes never block a turn: each listener has a bounded channel, and a listener that does
//! not keep up is dropped (its stream ends; the client reconnects and gets the queue, which
//! still holds everything it did not acknowledge).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::SystemTime;

use sharing_map::{AppName, CaName};
use tokio::sync::mpsc;

use super::table::{Notification, SessionTable};

/// Notifications buffered per listener before it counts as stuck.
pub const LISTENER_BUFFER: usize = 1024;

type Key = (AppName, CaName);

struct Listener {
    id: u64,
    session: String,
    sent: u64,
    tx: mpsc::Sender<Pushed>,
}

/// A notification pushed to a listener, and when: right after its checkpoint committed.
#[derive(Clone, Debug, PartialEq)]
pub struct Pushed {
    /// The notification.
    pub notification: Notification,
    /// When the host pushed it.
    pub at: SystemTime,
}

/// The listeners of a host.
#[derive(Default)]
pub struct Listeners {
    by_ca: Mutex<HashMap<Key, Vec<Listener>>>,
    ids: AtomicU64,
}

impl std::fmt::Debug for Listeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n: usize = self
            .by_ca
            .lock()
            .map(|m| m.values().map(Vec::len).sum())
            .unwrap_or(0);
        f.debug_struct("Listeners").field("listening", &n).finish()
    }
}

/// One listener's end: notifications arrive on it until it is dropped (which unregisters it) or
/// the host drops a listener that did not keep up (then [`Subscription::recv`] ends).
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::Receiver<Pushed>,
    key: Key,
    id: u64,
    listeners: Weak<Listeners>,
}

impl Subscription {
    /// The next notification pushed; `None` once the host dropped this listener.
    pub async fn recv(&mut self) -> Option<Pushed> {
        self.rx.recv().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(l) = self.listeners.upgrade() {
            l.remove(&self.key, self.id);
        }
    }
}

impl Listeners {
    /// A registry with no listener.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Listens to `session` of CA `ca`: every committed notification of it from now on (those
    /// already queued are the caller's to fetch, after subscribing, so none falls between).
    pub fn subscribe(self: &Arc<Self>, app: AppName, ca: CaName, session: &str) -> Subscription {
        let (tx, rx) = mpsc::channel(LISTENER_BUFFER);
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let key = (app, ca);
        let mut by_ca = self.by_ca.lock().unwrap_or_else(|p| p.into_inner());
        by_ca.entry(key.clone()).or_default().push(Listener {
            id,
            session: session.to_string(),
            sent: 0,
            tx,
        });
        Subscription {
            rx,
            key,
            id,
            listeners: Arc::downgrade(self),
        }
    }

    /// How many listeners CA `ca` has.
    pub fn count(&self, app: &AppName, ca: &CaName) -> usize {
        let by_ca = self.by_ca.lock().unwrap_or_else(|p| p.into_inner());
        by_ca.get(&(app.clone(), ca.clone())).map_or(0, Vec::len)
    }

    fn remove(&self, key: &Key, id: u64) {
        let mut by_ca = self.by_ca.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = by_ca.get_mut(key) {
            list.retain(|l| l.id != id);
            if list.is_empty() {
                by_ca.remove(key);
            }
        }
    }

    /// Whether anyone listens to CA `ca` (a cheap check before decoding its table).
    pub fn has(&self, app: &AppName, ca: &CaName) -> bool {
        let by_ca = self.by_ca.lock().unwrap_or_else(|p| p.into_inner());
        by_ca.contains_key(&(app.clone(), ca.clone()))
    }

    /// A checkpoint of CA `ca` holding `table` committed: each listener gets what its session
    /// queues beyond what it was sent.
    pub fn committed(&self, app: &AppName, ca: &CaName, table: &SessionTable) {
        let mut by_ca = self.by_ca.lock().unwrap_or_else(|p| p.into_inner());
        let key = (app.clone(), ca.clone());
        let Some(list) = by_ca.get_mut(&key) else {
            return;
        };
        let now = SystemTime::now();
        list.retain_mut(|l| {
            let Some(session) = table.sessions.get(&l.session) else {
                return !l.tx.is_closed();
            };
            let sent = l.sent;
            for n in session.queue.iter().filter(|n| n.seq > sent) {
                let pushed = Pushed {
                    notification: n.clone(),
                    at: now,
                };
                match l.tx.try_send(pushed) {
                    Ok(()) => l.sent = n.seq,
                    // Stuck or gone: drop it; its client reconnects and reads the queue.
                    Err(_) => return false,
                }
            }
            true
        });
        if list.is_empty() {
            by_ca.remove(&key);
        }
    }
}

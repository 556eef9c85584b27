//! A subscription that survives node failures: the async shell around [`ResumeState`].
//!
//! ```text
//!  Subscription::next()
//!     ├─ connected:     stream.message() ─▶ ResumeState::accept ─▶ new updates / progress
//!     │                   └─ stream ends or breaks, or a gap ─▶ disconnected
//!     └─ disconnected:  next endpoint (round robin), send ResumeState::resume_requests,
//!                       until the resume deadline ─▶ ClientError::Unavailable
//! ```

use std::time::Duration;

use futures::Stream;
use serde::Serialize;
use sharing_map::{AppName, ChangeSet, MapDump, MapName};
use spine_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Code;

use crate::client::{backoff, describe};
use crate::convert::{self, ConvertError};
use crate::resume::ResumeState;
use crate::{Client, ClientError};

pub use spine_wire::SubscriptionSpec;

/// One update of one map.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum MapUpdate {
    /// One change set, applying to the version the caller has.
    Delta {
        /// The map's app.
        app: AppName,
        /// The change set.
        change_set: ChangeSet,
    },
    /// A full copy of a newer version, replacing what the caller has.
    Snapshot {
        /// The map's app.
        app: AppName,
        /// The map.
        dump: MapDump,
    },
}

impl MapUpdate {
    /// The map's app.
    pub fn app(&self) -> &AppName {
        match self {
            MapUpdate::Delta { app, .. } | MapUpdate::Snapshot { app, .. } => app,
        }
    }
    /// The map.
    pub fn map(&self) -> &MapName {
        match self {
            MapUpdate::Delta { change_set, .. } => change_set.map(),
            MapUpdate::Snapshot { dump, .. } => &dump.name,
        }
    }
    /// The version the caller has after this update.
    pub fn version(&self) -> u64 {
        match self {
            MapUpdate::Delta { change_set, .. } => change_set.next_version(),
            MapUpdate::Snapshot { dump, .. } => dump.version,
        }
    }
}

/// Updates that committed together, or progress when `updates` is empty.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SubscriptionEvent {
    /// The Raft applied index of the node that sent the event.
    pub applied_index: u64,
    /// New updates in commit order, possibly of several maps; empty for progress.
    pub updates: Vec<MapUpdate>,
}

/// An event from the wire.
pub(crate) fn event_from_pb(
    event: pb::SubscribeEvent,
) -> Result<(u64, Vec<MapUpdate>), ClientError> {
    let updates = event
        .events
        .into_iter()
        .map(|e| {
            let app = AppName::parse(&e.app).map_err(ConvertError::from)?;
            match e.kind {
                Some(pb::map_event::Kind::Delta(cs)) => Ok(MapUpdate::Delta {
                    app,
                    change_set: convert::change_set_from_pb(cs)?,
                }),
                Some(pb::map_event::Kind::Snapshot(snap)) => Ok(MapUpdate::Snapshot {
                    app,
                    dump: convert::dump_from_pb(snap)?,
                }),
                None => Err(ClientError::Convert(ConvertError::Malformed {
                    field: "map event".into(),
                    reason: "neither a delta nor a snapshot".into(),
                })),
            }
        })
        .collect::<Result<Vec<_>, ClientError>>()?;
    Ok((event.applied_index, updates))
}

/// Whether a stream that ended with `status` is worth resuming elsewhere. A refused request
/// (a bad name, no permission) would only be refused again.
fn resumable(status: &tonic::Status) -> bool {
    !matches!(
        status.code(),
        Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::Unimplemented
    )
}

#[derive(Debug)]
struct Connection {
    node: usize,
    sender: mpsc::UnboundedSender<pb::SubscribeRequest>,
    stream: tonic::Streaming<pb::SubscribeEvent>,
}

/// A live subscription to maps, resumed on another node whenever its node fails.
///
/// Per map, what [`next`](Self::next) returns has strictly increasing versions, contiguous deltas
/// (or a snapshot that replaces what came before), each version exactly once, across any number
/// of reconnections. `next` is cancel-safe: it can be used in `tokio::select!`.
#[derive(Debug)]
pub struct Subscription {
    client: Client,
    state: ResumeState,
    conn: Option<Connection>,
    /// When the current attempt to resume started.
    broken_since: Option<Instant>,
    /// Wait a moment before reconnecting (the last stream was dropped for a gap).
    pause: bool,
    resume_deadline: Duration,
}

impl Client {
    /// Opens a subscription stream and adds `subs` to it. Fails if no node accepts the stream
    /// before the client's deadline.
    pub async fn subscribe(
        &self,
        subs: Vec<SubscriptionSpec>,
    ) -> Result<Subscription, ClientError> {
        let mut state = ResumeState::new();
        for spec in subs {
            // The requests go out with the stream, from `resume_requests`.
            state.add(spec)?;
        }
        let mut sub = Subscription {
            client: self.clone(),
            state,
            conn: None,
            broken_since: None,
            pause: false,
            resume_deadline: self.settings().resume_deadline,
        };
        sub.connect(Instant::now() + self.settings().timeout)
            .await?;
        Ok(sub)
    }
}

impl Subscription {
    /// The next new updates, or progress (a newer applied index with no new updates).
    ///
    /// When the stream breaks it resumes on the next endpoint; if no node takes it within the
    /// resume deadline this returns [`ClientError::Unavailable`] (calling again starts another
    /// round of attempts). A subscription the server refuses returns its status.
    pub async fn next(&mut self) -> Result<SubscriptionEvent, ClientError> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                let since = *self.broken_since.get_or_insert_with(Instant::now);
                if self.pause {
                    tokio::time::sleep(backoff(0, 1)).await;
                    self.pause = false;
                }
                let result = self.connect(since + self.resume_deadline).await;
                self.broken_since = None;
                result?;
                continue;
            };
            match conn.stream.message().await {
                Ok(Some(event)) => {
                    let (applied_index, updates) = event_from_pb(event)?;
                    let accepted = self.state.accept(applied_index, updates);
                    if accepted.resync {
                        tracing::warn!("subscription stream skipped a version; resuming");
                        self.pause = true;
                        self.disconnect();
                    }
                    if let Some(event) = accepted.event {
                        return Ok(event);
                    }
                }
                Ok(None) => {
                    tracing::debug!("subscription stream ended; resuming");
                    self.disconnect();
                }
                Err(status) if !resumable(&status) => {
                    self.conn = None;
                    return Err(status.into());
                }
                Err(status) => {
                    tracing::debug!(error = %describe(&status), "subscription stream broke; resuming");
                    self.disconnect();
                }
            }
        }
    }

    /// Adds a subscription to the live stream (or to those resumed later).
    pub fn add(&mut self, spec: SubscriptionSpec) -> Result<(), ClientError> {
        let requests = self.state.add(spec)?;
        self.send(requests);
        Ok(())
    }

    /// Removes a subscription (matched by app, map or prefix, and kind).
    pub fn remove(&mut self, spec: &SubscriptionSpec) {
        let requests = self.state.remove(spec);
        self.send(requests);
    }

    /// The version of `map` last delivered (or subscribed from).
    pub fn last_version(&self, app: &AppName, map: &MapName) -> Option<u64> {
        self.state.last_version(app, map)
    }

    /// Highest applied index delivered.
    pub fn applied_index(&self) -> u64 {
        self.state.applied_index()
    }

    /// The active subscriptions: the exact ones ordered by app and map, then the prefixes in the
    /// order they were added.
    pub fn specs(&self) -> impl Iterator<Item = &SubscriptionSpec> + '_ {
        self.state.specs()
    }

    /// How long a broken stream keeps trying to resume before `next` reports it (default from
    /// the client's builder, 30 s).
    pub fn set_resume_deadline(&mut self, deadline: Duration) {
        self.resume_deadline = deadline;
    }

    /// Drops the current stream, if any; the next call to `next` resumes on another node. For
    /// tests and for callers that know the node is unhealthy.
    pub fn reconnect(&mut self) {
        self.disconnect();
    }

    /// The subscription as a never-ending `Stream` of what [`next`](Self::next) returns.
    pub fn into_stream(self) -> impl Stream<Item = Result<SubscriptionEvent, ClientError>> {
        futures::stream::unfold(self, |mut sub| async move {
            let item = sub.next().await;
            Some((item, sub))
        })
    }

    fn send(&mut self, requests: Vec<pb::SubscribeRequest>) {
        let Some(conn) = &self.conn else { return };
        for request in requests {
            // A closed stream is resumed later with every subscription re-added.
            if conn.sender.send(request).is_err() {
                return;
            }
        }
    }

    fn disconnect(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.client.advance_from(conn.node);
        }
    }

    /// Opens a stream on the first endpoint that takes it, re-adding every subscription.
    async fn connect(&mut self, deadline: Instant) -> Result<(), ClientError> {
        let state = &mut self.state;
        let (node, (sender, stream)) = self
            .client
            .round_robin(deadline, resumable, |mut rpc| {
                let (sender, receiver) = mpsc::unbounded_channel();
                for request in state.resume_requests() {
                    // The receiver is alive until the call below drops it.
                    let _ = sender.send(request);
                }
                async move {
                    let response = rpc
                        .subscribe(UnboundedReceiverStream::new(receiver))
                        .await?;
                    Ok((sender, response.into_inner()))
                }
            })
            .await?;
        self.conn = Some(Connection {
            node,
            sender,
            stream,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_from_the_wire_are_validated() {
        let ok = pb::SubscribeEvent {
            applied_index: 7,
            events: vec![pb::MapEvent {
                app: "acme-shop".into(),
                kind: Some(pb::map_event::Kind::Snapshot(pb::MapSnapshot {
                    map: "bob-tv-x".into(),
                    version: 3,
                    last_update_id: String::new(),
                    entries: vec![],
                })),
            }],
        };
        let decoded = event_from_pb(ok)
            .map(|(i, u)| (i, u.iter().map(MapUpdate::version).collect::<Vec<_>>()));
        assert_eq!(decoded, Ok((7, vec![3])));
        let empty = pb::SubscribeEvent {
            applied_index: 1,
            events: vec![pb::MapEvent {
                app: "acme-shop".into(),
                kind: None,
            }],
        };
        assert!(matches!(event_from_pb(empty), Err(ClientError::Convert(_))));
    }

    #[test]
    fn refused_subscriptions_are_not_resumed() {
        assert!(!resumable(&tonic::Status::invalid_argument("bad name")));
        assert!(!resumable(&tonic::Status::permission_denied("no")));
        assert!(resumable(&tonic::Status::unavailable("shutting down")));
        assert!(resumable(&tonic::Status::internal("oops")));
        assert!(resumable(&tonic::Status::cancelled("gone")));
    }
}

//! What the client endpoints (gRPC `ca.v1` in [`crate::service`], the WebSocket in
//! [`crate::web`]) share, whatever the wire: who the caller is (the token, DESIGN.md §6 and
//! §9.9), listening to a session, and the admin view of a CA.
//!
//! A token authenticates the CA a client speaks as, its *caller*: the `from` CA it names (which
//! the token must admit), else the called CA itself when the token admits it (its owner's or an
//! admin's token), else the CA the token names. Whether that caller may call the CA is the
//! activation's to decide ([`crate::access`]), with the policy's aggregates pinned for the turn.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use authz_aggregate::{Token, TokenError, Verifier};
use futures::Stream;
use serde_json::{Value, json};
use sharing_map::{AppName, CaName};
use tokio::sync::mpsc;

use crate::CaError;
use crate::checkpoint::{CaState, state_map_name};
use crate::host::Host;
use crate::placement::Route;
use crate::plugins::session::{self, Listeners, Notification, Pushed, SessionTable};

/// The admins' principal: a token admitting this CA of this app may inspect any CA.
pub const ADMIN_APP: &str = "spine-system";
/// See [`ADMIN_APP`].
pub const ADMIN_CA: &str = "spine-admin";

/// How often a listening stream checks that its CA is still served here.
const ROUTE_CHECK: Duration = Duration::from_secs(1);

/// The client-facing side of a host, shared by its endpoints.
#[derive(Clone, Debug)]
pub struct Front {
    host: Host,
    verifier: Option<Arc<Verifier>>,
    listeners: Option<Arc<Listeners>>,
}

impl Front {
    /// A front for `host`, checking tokens with `verifier` (`None`: no authentication, every
    /// caller is who it says or the called CA's owner), serving listeners from `listeners`.
    pub fn new(
        host: Host,
        verifier: Option<Arc<Verifier>>,
        listeners: Option<Arc<Listeners>>,
    ) -> Self {
        Self {
            host,
            verifier,
            listeners,
        }
    }

    /// The host.
    pub fn host(&self) -> &Host {
        &self.host
    }

    fn authenticate(
        &self,
        token: Option<&str>,
    ) -> Result<Option<Arc<authz_aggregate::Authenticated>>, CaError> {
        let Some(verifier) = &self.verifier else {
            return Ok(None);
        };
        let text = token.ok_or_else(|| {
            CaError::not_authorized(
                "this call needs a token: send `authorization: Bearer <token>` (ca: --token or --token-file)",
            )
        })?;
        let token = Token::from_base64(text.trim())
            .map_err(|e| CaError::not_authorized(format!("bad token: {e}")))?;
        verifier
            .authenticate(&token)
            .map(Some)
            .map_err(|e| CaError::not_authorized(format!("bad token: {e}")))
    }

    /// Who calls CA `ca` of `app` with `token` (the base64 token, `None` if none was sent),
    /// speaking as `from` (empty: see the module's rules).
    pub fn caller(
        &self,
        token: Option<&str>,
        app: &AppName,
        ca: &CaName,
        from: &str,
    ) -> Result<CaName, CaError> {
        let from = match from {
            "" => None,
            f => Some(CaName::parse(f).map_err(|e| CaError::invalid(format!("from: {e}")))?),
        };
        let Some(found) = self.authenticate(token)? else {
            return Ok(from.unwrap_or_else(|| ca.clone()));
        };
        let now = SystemTime::now();
        let refused = |who: &CaName, e: TokenError| {
            CaError::not_authorized(format!(
                "this token does not admit CA {who} of app {app}: {e}"
            ))
        };
        if let Some(from) = from {
            found
                .admits(Some(app), Some(&from), now)
                .map_err(|e| refused(&from, e))?;
            return Ok(from);
        }
        match found.admits(Some(app), Some(ca), now) {
            Ok(()) => Ok(ca.clone()),
            Err(e @ TokenError::Expired { .. }) => Err(refused(ca, e)),
            Err(e) => {
                let c = found.constraints();
                let named = match (c.ca_owner, c.ca_local) {
                    (Some(owner), Some(local)) => CaName::parse(&format!("{owner}-{local}")).ok(),
                    _ => None,
                };
                let Some(me) = named else {
                    return Err(CaError::not_authorized(format!(
                        "this token does not admit CA {ca} of app {app} ({e}), nor names one CA to call as: name it with `from`"
                    )));
                };
                found
                    .admits(Some(app), Some(&me), now)
                    .map_err(|e| refused(&me, e))?;
                Ok(me)
            }
        }
    }

    /// Listens to `session` of CA `ca` (served here) as `caller`: the queue after `after`, then
    /// every committed notification. Refused like a call (`@listen` is authorized as a method);
    /// the stream ends with `moved` when the CA moves away or this listener fell behind.
    pub async fn listen(
        &self,
        app: AppName,
        ca: CaName,
        session: &str,
        caller: CaName,
        after: u64,
    ) -> Result<impl Stream<Item = Result<Pushed, CaError>> + Send + 'static, CaError> {
        let session = if session.is_empty() {
            crate::turn::DEFAULT_SESSION
        } else {
            session
        };
        session::check_session_name(session)?;
        let listeners = self.listeners.clone().ok_or_else(|| {
            CaError::not_found("this host has no session plugin: nothing to listen to")
        })?;
        // Subscribe first, then read the queue: nothing committed in between is missed.
        let mut sub = listeners.subscribe(app.clone(), ca.clone(), session);
        let backlog = self
            .host
            .call_as(
                app.as_str(),
                ca.as_str(),
                vec![("@listen".into(), "[]".into())],
                Some(session),
                &caller,
            )
            .await?;
        let queue: Vec<Notification> = serde_json::from_value(backlog.result["queue"].clone())
            .map_err(|e| CaError::exception(format!("the session's queue does not decode: {e}")))?;
        let (tx, rx) = mpsc::channel(64);
        let host = self.host.clone();
        let queued_at = SystemTime::now();
        tokio::spawn(async move {
            let mut sent = after;
            for n in queue {
                if n.seq > sent {
                    sent = n.seq;
                    let pushed = Pushed {
                        notification: n,
                        at: queued_at,
                    };
                    if tx.send(Ok(pushed)).await.is_err() {
                        return;
                    }
                }
            }
            let mut tick = tokio::time::interval(ROUTE_CHECK);
            loop {
                tokio::select! {
                    n = sub.recv() => match n {
                        Some(p) if p.notification.seq > sent => {
                            sent = p.notification.seq;
                            if tx.send(Ok(p)).await.is_err() {
                                return;
                            }
                        }
                        Some(_) => {}
                        None => {
                            let _ = tx.send(Err(CaError::moved("this listener fell behind; listen again"))).await;
                            return;
                        }
                    },
                    _ = tick.tick() => {
                        if let Ok(Route::Remote(addr)) = host.route(&app, &ca).await {
                            let _ = tx.send(Err(CaError::moved(format!("CA {ca} moved to {addr}; listen again")))).await;
                            return;
                        }
                    }
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
    }

    /// The committed checkpoint of CA `ca` for an admin (`token` must admit CA
    /// [`ADMIN_CA`] of app [`ADMIN_APP`]): state, sessions, intents.
    pub async fn inspect(
        &self,
        token: Option<&str>,
        app: &AppName,
        ca: &CaName,
    ) -> Result<Value, CaError> {
        if let Some(found) = self.authenticate(token)? {
            let admin_app =
                AppName::parse(ADMIN_APP).map_err(|e| CaError::exception(e.to_string()))?;
            let admin = CaName::parse(ADMIN_CA).map_err(|e| CaError::exception(e.to_string()))?;
            found
                .admits(Some(&admin_app), Some(&admin), SystemTime::now())
                .map_err(|e| {
                    CaError::not_authorized(format!(
                        "inspecting CAs needs an admin token (one admitting CA {ADMIN_CA} of app {ADMIN_APP}): {e}"
                    ))
                })?;
        }
        let name = state_map_name(ca)?;
        let map = match self.host.spine().get_map(app, &name, false).await {
            Ok(map) => map,
            Err(e) if e.code() == tonic::Code::NotFound => {
                return Err(CaError::not_found(format!(
                    "CA {ca} of app {app} does not exist"
                )));
            }
            Err(e) => {
                return Err(CaError::checkpoint(format!(
                    "reading CA {ca}'s checkpoint: {e}"
                )));
            }
        };
        let state = CaState::decode(&map).map_err(|e| CaError::exception(e.to_string()))?;
        let sessions =
            SessionTable::from_value(state.plugins.get(session::NAME).unwrap_or(&Value::Null))
                .map_err(CaError::exception)?;
        Ok(json!({
            "app": app.as_str(),
            "ca": ca.as_str(),
            "version": map.version(),
            "meta": state.meta,
            "state": state.state,
            "sessions": sessions.sessions,
            "intents": state.intents.values().collect::<Vec<_>>(),
            "plugins": state.plugins.keys().collect::<Vec<_>>(),
        }))
    }
}

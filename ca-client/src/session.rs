//! A logical session with a CA, with Caf.js caf_cli's client behaviour (DESIGN.md §9.9).
//!
//! ```text
//!  call / multi_call / begin / end ──▶ queue (bounded: the oldest not yet sent is dropped)
//!                                        │ one request in flight, in order
//!                                        ▼
//!                      host i ── retryable error or no answer ──▶ backoff, next host, again
//!                        │ app error: that caller's; the session goes on
//!                        │ any other error, or no progress within the timeout: the session
//!                        ▼ closes, with the error, for every request now and later
//!  listen(handler) ── Listen stream (reconnects after what it saw) ── handler ── ack(seq)
//! ```
//!
//! Retries make a request at-least-once: a retried call whose first attempt committed runs
//! again. Requests that must happen once use an exactly-once instance: [`Session::begin`]
//! returns a nonce and the memento of a previous instance that did not end (a client that
//! crashed learns where it stopped); the app's methods `remember` progress under the nonce and
//! refuse a stale one, and [`Session::end`] closes the instance.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::{Begun, CaClient, CallError, ErrorCode, MethodCall, Notification, Target};

/// How a session behaves.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Hosts to reach the CA through, tried in turn after a failure (any host reaches any CA).
    pub endpoints: Vec<String>,
    /// The token presented.
    pub token: Option<String>,
    /// The CA, session and caller.
    pub target: Target,
    /// Requests queued behind the one in flight, beyond which the oldest is dropped.
    pub max_queued: usize,
    /// A request that makes no progress (no answer, only retryable failures) this long closes
    /// the session.
    pub timeout: Duration,
    /// The first pause before a retry; it doubles up to [`max_backoff`](Self::max_backoff).
    pub backoff: Duration,
    /// The longest pause between retries.
    pub max_backoff: Duration,
    /// Acknowledge each notification once the handler took it.
    pub auto_ack: bool,
}

impl SessionConfig {
    /// A session with `target` through `endpoints`, presenting `token`, with default bounds
    /// (1,000 queued, 30 s without progress, retries from 50 ms to 2 s apart).
    pub fn new(endpoints: Vec<String>, token: Option<String>, target: Target) -> Self {
        Self {
            endpoints,
            token,
            target,
            max_queued: 1000,
            timeout: Duration::from_secs(30),
            backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            auto_ack: true,
        }
    }
}

/// Why a request of a session failed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SessionError {
    /// The method refused (an application error): the turn was rolled back; the session goes on.
    #[error("app_error: {0}")]
    App(String),
    /// The session is closed, by this error (a non-retryable one, or no progress in time), or
    /// by the client.
    #[error("session closed: {0}")]
    Closed(CallError),
    /// Dropped unsent: more requests were queued than the session's bound.
    #[error("dropped unsent: more than {0} requests were queued")]
    Dropped(usize),
}

impl SessionError {
    /// The CA error code behind it, if any.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            SessionError::App(_) => Some(ErrorCode::AppError),
            SessionError::Closed(e) => e.code(),
            SessionError::Dropped(_) => None,
        }
    }
}

enum Op {
    Calls(Vec<MethodCall>),
    Begin,
    End(String),
}

struct Request {
    op: Op,
    reply: oneshot::Sender<Result<Value, SessionError>>,
}

enum Command {
    Request(Request),
    Close,
}

struct Shared {
    closed: Mutex<Option<CallError>>,
    closing: watch::Sender<bool>,
}

impl Shared {
    fn close(&self, why: CallError) {
        let mut closed = self.closed.lock().unwrap_or_else(|p| p.into_inner());
        if closed.is_none() {
            *closed = Some(why);
        }
        drop(closed);
        self.closing.send_replace(true);
    }

    fn why(&self) -> CallError {
        self.closed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| CallError::Transport("the session was closed".into()))
    }
}

/// A session with a CA (see the module). Cloning shares it.
#[derive(Clone)]
pub struct Session {
    tx: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
    config: Arc<SessionConfig>,
    clients: Arc<Vec<CaClient>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("target", &self.config.target)
            .field("endpoints", &self.config.endpoints)
            .finish()
    }
}

impl Session {
    /// Opens a session (connections are made lazily, at the first request).
    pub fn open(config: SessionConfig) -> Result<Self, CallError> {
        if config.endpoints.is_empty() {
            return Err(CallError::Transport(
                "a session needs at least one endpoint".into(),
            ));
        }
        // A call may legitimately take long (a host failing over): the no-progress timeout,
        // not each attempt's, bounds it.
        let clients = config
            .endpoints
            .iter()
            .map(|e| CaClient::connect_with(e, config.token.as_deref(), config.timeout))
            .collect::<Result<Vec<_>, _>>()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (closing, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            closed: Mutex::new(None),
            closing,
        });
        let session = Self {
            tx,
            shared,
            config: Arc::new(config),
            clients: Arc::new(clients),
        };
        let worker = Worker {
            session: session.clone(),
            queue: VecDeque::new(),
            current: 0,
        };
        tokio::spawn(worker.run(rx));
        Ok(session)
    }

    /// Queues `op` now (so requests run in the order they are made, whenever their futures are
    /// polled) and answers once it ran.
    fn request(
        &self,
        op: Op,
    ) -> impl Future<Output = Result<Value, SessionError>> + Send + 'static {
        let queued = match self.closed() {
            Some(why) => Err(SessionError::Closed(why)),
            None => {
                let (reply, rx) = oneshot::channel();
                match self.tx.send(Command::Request(Request { op, reply })) {
                    Ok(()) => Ok(rx),
                    Err(_) => Err(SessionError::Closed(self.shared.why())),
                }
            }
        };
        let shared = self.shared.clone();
        async move {
            queued?
                .await
                .unwrap_or_else(|_| Err(SessionError::Closed(shared.why())))
        }
    }

    /// Calls `method` with `args`; answered once the turn committed. The call is queued when
    /// this is called, not when the future is first polled.
    pub fn call(
        &self,
        method: &str,
        args: Vec<Value>,
    ) -> impl Future<Output = Result<Value, SessionError>> + Send + 'static {
        self.multi_call(vec![MethodCall::new(method, args)])
    }

    /// Calls several methods in one transaction; the last result. Queued at once, like
    /// [`call`](Self::call).
    pub fn multi_call(
        &self,
        calls: Vec<MethodCall>,
    ) -> impl Future<Output = Result<Value, SessionError>> + Send + 'static {
        self.request(Op::Calls(calls))
    }

    /// Starts a new exactly-once instance of the session (after the requests queued before it).
    pub async fn begin(&self) -> Result<Begun, SessionError> {
        let v = self.request(Op::Begin).await?;
        Ok(Begun {
            nonce: v["nonce"].as_str().unwrap_or_default().to_string(),
            memento: Some(v["memento"].clone()).filter(|m| !m.is_null()),
        })
    }

    /// Ends instance `nonce`: `false` if another instance is current.
    pub async fn end(&self, nonce: &str) -> Result<bool, SessionError> {
        Ok(self.request(Op::End(nonce.to_string())).await? == json!(true))
    }

    /// Closes the session: requests queued or in flight fail with `Closed`; listeners stop.
    pub fn close(&self) {
        self.shared
            .close(CallError::Transport("the client closed the session".into()));
        let _ = self.tx.send(Command::Close);
    }

    /// Why the session closed, if it did.
    pub fn closed(&self) -> Option<CallError> {
        self.shared
            .closed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Calls `handler` with each notification of the session, in order, each once (the
    /// session's queue first): listening again after a host failure resumes after the last one
    /// seen, and each is acknowledged once the handler returned (unless `auto_ack` is off). A
    /// non-retryable failure closes the session. Stops when the session closes.
    pub fn listen(&self, handler: impl FnMut(Notification) + Send + 'static) {
        let session = self.clone();
        tokio::spawn(session.listen_loop(Box::new(handler)));
    }

    async fn listen_loop(self, mut handler: Box<dyn FnMut(Notification) + Send>) {
        let mut closing = self.shared.closing.subscribe();
        let (acks, ack_rx) = watch::channel(0u64);
        if self.config.auto_ack {
            tokio::spawn(self.clone().ack_loop(ack_rx));
        }
        let mut last = 0;
        let mut current = 0;
        let mut backoff = self.config.backoff;
        while !*closing.borrow() {
            let client = &self.clients[current % self.clients.len()];
            let failure = match client.listen(&self.config.target, last).await {
                Ok(mut stream) => loop {
                    tokio::select! {
                        item = stream.next() => match item {
                            Some(Ok(n)) => {
                                backoff = self.config.backoff;
                                if n.seq > last {
                                    last = n.seq;
                                    handler(n);
                                    acks.send_replace(last);
                                }
                            }
                            Some(Err(e)) => break e,
                            None => break CallError::Transport("the listening stream ended".into()),
                        },
                        _ = closing.changed() => return,
                    }
                },
                Err(e) => e,
            };
            if !failure.is_retryable() {
                self.shared.close(failure);
                return;
            }
            if matches!(failure, CallError::Transport(_)) {
                current += 1;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = closing.changed() => return,
            }
            backoff = (backoff * 2).min(self.config.max_backoff);
        }
    }

    /// Acknowledges the newest notification handled, retrying; a newer one replaces it.
    async fn ack_loop(self, mut seqs: watch::Receiver<u64>) {
        let mut closing = self.shared.closing.subscribe();
        let mut current = 0;
        loop {
            tokio::select! {
                changed = seqs.changed() => if changed.is_err() { return },
                _ = closing.changed() => return,
            }
            let seq = *seqs.borrow_and_update();
            let mut backoff = self.config.backoff;
            loop {
                let client = &self.clients[current % self.clients.len()];
                match client.ack(&self.config.target, seq).await {
                    Ok(_) => break,
                    Err(e) if e.is_retryable() => {
                        if matches!(e, CallError::Transport(_)) {
                            current += 1;
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(self.config.max_backoff);
                        // A newer one acknowledges this one too.
                        if seqs.has_changed().unwrap_or(false) {
                            break;
                        }
                    }
                    Err(e) => {
                        self.shared.close(e);
                        return;
                    }
                }
            }
        }
    }
}

struct Worker {
    session: Session,
    queue: VecDeque<Request>,
    current: usize,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        loop {
            let Some(request) = self.queue.pop_front() else {
                match rx.recv().await {
                    Some(Command::Request(r)) => self.queue.push_back(r),
                    Some(Command::Close) | None => break,
                }
                continue;
            };
            if self.session.closed().is_some() {
                let _ = request
                    .reply
                    .send(Err(SessionError::Closed(self.session.shared.why())));
                break;
            }
            let outcome = self.send(&request.op, &mut rx).await;
            match outcome {
                Ok(v) => {
                    let _ = request.reply.send(Ok(v));
                }
                Err(Some(CallError::Ca {
                    code: ErrorCode::AppError,
                    message,
                })) => {
                    let _ = request.reply.send(Err(SessionError::App(message)));
                }
                Err(Some(e)) => {
                    self.session.shared.close(e);
                    let _ = request
                        .reply
                        .send(Err(SessionError::Closed(self.session.shared.why())));
                    break;
                }
                // Closed meanwhile.
                Err(None) => {
                    let _ = request
                        .reply
                        .send(Err(SessionError::Closed(self.session.shared.why())));
                    break;
                }
            }
        }
        rx.close();
        let why = self.session.shared.why();
        for r in self.queue.drain(..) {
            let _ = r.reply.send(Err(SessionError::Closed(why.clone())));
        }
        while let Ok(Command::Request(r)) = rx.try_recv() {
            let _ = r.reply.send(Err(SessionError::Closed(why.clone())));
        }
    }

    fn accept(&mut self, command: Option<Command>) -> bool {
        match command {
            Some(Command::Request(r)) => {
                self.queue.push_back(r);
                let bound = self.session.config.max_queued;
                while self.queue.len() > bound {
                    if let Some(oldest) = self.queue.pop_front() {
                        let _ = oldest.reply.send(Err(SessionError::Dropped(bound)));
                    }
                }
                true
            }
            Some(Command::Close) | None => false,
        }
    }

    /// Sends `op` until it is answered, retrying retryable failures; `Err(None)`: closed
    /// meanwhile; `Err(Some(e))`: a failure that is not retried (an app error, or one that
    /// closes the session, no progress in time among them).
    async fn send(
        &mut self,
        op: &Op,
        rx: &mut mpsc::UnboundedReceiver<Command>,
    ) -> Result<Value, Option<CallError>> {
        let config = self.session.config.clone();
        let deadline = Instant::now() + config.timeout;
        let mut backoff = config.backoff;
        loop {
            let client = self.session.clients[self.current % self.session.clients.len()].clone();
            let target = config.target.clone();
            let attempt = async move {
                match op {
                    Op::Calls(calls) => client
                        .call_as(&target, calls.clone())
                        .await
                        .map(|r| r.result),
                    Op::Begin => client
                        .begin(&target)
                        .await
                        .map(|b| json!({"nonce": b.nonce, "memento": b.memento})),
                    Op::End(nonce) => client.end(&target, nonce).await.map(|e| json!(e)),
                }
            };
            let attempt = tokio::time::timeout_at(deadline, attempt);
            tokio::pin!(attempt);
            let result = loop {
                tokio::select! {
                    r = &mut attempt => break r,
                    c = rx.recv() => if !self.accept(c) { return Err(None) },
                }
            };
            let e = match result {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => e,
                Err(_) => {
                    return Err(Some(CallError::Transport(format!(
                        "no progress in {:?}: the CA did not answer",
                        config.timeout
                    ))));
                }
            };
            if !e.is_retryable() {
                return Err(Some(e));
            }
            if Instant::now() + backoff >= deadline {
                return Err(Some(CallError::Transport(format!(
                    "no progress in {:?}; last error: {e}",
                    config.timeout
                ))));
            }
            if matches!(e, CallError::Transport(_)) {
                self.current += 1;
            }
            let pause = tokio::time::sleep(backoff);
            tokio::pin!(pause);
            loop {
                tokio::select! {
                    _ = &mut pause => break,
                    c = rx.recv() => if !self.accept(c) { return Err(None) },
                }
            }
            backoff = (backoff * 2).min(config.max_backoff);
        }
    }
}

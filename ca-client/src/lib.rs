//! A client of CA hosts (DESIGN.md §9.9): call methods of Cloud Assistants over the host's
//! `ca.v1` gRPC API.
//!
//! - [`CaClient`]: one host, one request at a time per call: `call`, `multi_call`, and over a
//!   [`Target`] (session, caller): `call_as`, `listen`, `ack`, `begin`, `end`, `inspect`.
//! - [`session::Session`]: Caf.js's client behaviour over a logical session: one request in
//!   flight, the others queued in order (bounded: the oldest not yet sent is dropped), retries
//!   of retryable errors with backoff across hosts, a timeout when nothing progresses, closing
//!   on non-retryable errors, a notification handler, `begin`/`end` for exactly-once.
//! - [`load`]: closed-loop load (`ca load`, `spine-bench`).
//!
//! Errors keep the runtime's error ladder: every failure a host reports carries an
//! [`ErrorCode`] (the `ca-error` metadata of the gRPC status), so a caller can tell an
//! application error from an exception, and both from the retryable rungs.

use std::fmt;
use std::time::Duration;

use spine_proto::ca_v1 as pb;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub mod load;
pub mod session;

pub use spine_client::{Credentials, resolve_token};

/// The metadata key that carries a failure's [`ErrorCode`].
pub const ERROR_CODE_KEY: &str = "ca-error";

/// The rungs of the error ladder and the other reasons a call fails, as clients see them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The method returned an error; the CA goes on.
    AppError,
    /// The method panicked or failed inside; the turn was rolled back, the CA goes on.
    Exception,
    /// A plugin refused the turn, or its state did not serialize or was over its limit.
    Prepare,
    /// The turn's checkpoint could not be committed; it may have landed. Retryable.
    Checkpoint,
    /// The turn committed but its outputs could not be released. Retryable.
    Commit,
    /// No such app or CA.
    NotFound,
    /// The token does not admit this app and CA.
    NotAuthorized,
    /// The host is shutting down. Retryable.
    ShutDown,
    /// Another activation of the CA committed; the CA moved. Retryable.
    Moved,
    /// The checkpointed state version cannot be resumed by this app's code.
    Version,
    /// The request is malformed (names, methods, arguments, sizes).
    Invalid,
}

impl ErrorCode {
    /// Every code.
    pub const ALL: [ErrorCode; 11] = [
        ErrorCode::AppError,
        ErrorCode::Exception,
        ErrorCode::Prepare,
        ErrorCode::Checkpoint,
        ErrorCode::Commit,
        ErrorCode::NotFound,
        ErrorCode::NotAuthorized,
        ErrorCode::ShutDown,
        ErrorCode::Moved,
        ErrorCode::Version,
        ErrorCode::Invalid,
    ];

    /// The code's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::AppError => "app_error",
            ErrorCode::Exception => "exception",
            ErrorCode::Prepare => "prepare",
            ErrorCode::Checkpoint => "checkpoint",
            ErrorCode::Commit => "commit",
            ErrorCode::NotFound => "not_found",
            ErrorCode::NotAuthorized => "not_authorized",
            ErrorCode::ShutDown => "shut_down",
            ErrorCode::Moved => "moved",
            ErrorCode::Version => "version",
            ErrorCode::Invalid => "invalid",
        }
    }

    /// Parses a wire name.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == text)
    }

    /// Whether sending the same request again may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::Prepare
                | ErrorCode::Checkpoint
                | ErrorCode::Commit
                | ErrorCode::ShutDown
                | ErrorCode::Moved
        )
    }

    /// The gRPC code a host answers with.
    pub fn grpc(self) -> tonic::Code {
        match self {
            ErrorCode::AppError => tonic::Code::FailedPrecondition,
            ErrorCode::Exception => tonic::Code::Internal,
            ErrorCode::Prepare
            | ErrorCode::Checkpoint
            | ErrorCode::Commit
            | ErrorCode::ShutDown
            | ErrorCode::Moved => tonic::Code::Unavailable,
            ErrorCode::NotFound => tonic::Code::NotFound,
            ErrorCode::NotAuthorized => tonic::Code::PermissionDenied,
            ErrorCode::Version => tonic::Code::FailedPrecondition,
            ErrorCode::Invalid => tonic::Code::InvalidArgument,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The host answered with a CA error.
    #[error("{code}: {message}")]
    Ca {
        /// Which rung.
        code: ErrorCode,
        /// The host's message, verbatim (an application error's message intact).
        message: String,
    },
    /// The host could not be reached or answered with a plain gRPC error.
    #[error("{0}")]
    Transport(String),
    /// The arguments or the answer are not JSON.
    #[error("{0}")]
    Json(String),
}

impl CallError {
    /// The CA error code, if the host gave one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            CallError::Ca { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether sending the same request again may succeed (retryable codes, transport failures).
    pub fn is_retryable(&self) -> bool {
        match self {
            CallError::Ca { code, .. } => code.is_retryable(),
            CallError::Transport(_) => true,
            CallError::Json(_) => false,
        }
    }

    fn from_status(status: tonic::Status) -> Self {
        let code = status
            .metadata()
            .get(ERROR_CODE_KEY)
            .and_then(|v| v.to_str().ok())
            .and_then(ErrorCode::parse);
        match code {
            Some(code) => CallError::Ca {
                code,
                message: status.message().to_string(),
            },
            None => CallError::Transport(format!("{:?}: {}", status.code(), status.message())),
        }
    }
}

/// One method call: a name and its JSON arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct MethodCall {
    /// The method's name.
    pub method: String,
    /// Its arguments.
    pub args: Vec<serde_json::Value>,
}

impl MethodCall {
    /// A call of `method` with `args`.
    pub fn new(method: impl Into<String>, args: Vec<serde_json::Value>) -> Self {
        Self {
            method: method.into(),
            args,
        }
    }
}

/// What a successful call returns.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    /// The (last) method's result.
    pub result: serde_json::Value,
    /// The version of the CA's checkpoint that holds the call's effects.
    pub version: u64,
}

/// Which CA a request goes to, over which session, speaking as whom.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Target {
    /// The app, `publisher-app`.
    pub app: String,
    /// The CA, `owner-local`.
    pub ca: String,
    /// The logical session (`default` if empty).
    pub session: String,
    /// The CA the caller speaks as (empty: the called CA if the token admits it, else the CA
    /// the token names).
    pub from: String,
}

impl Target {
    /// CA `ca` of `app`, session `default`, speaking as the token says.
    pub fn new(app: impl Into<String>, ca: impl Into<String>) -> Self {
        Self {
            app: app.into(),
            ca: ca.into(),
            ..Self::default()
        }
    }

    /// Over session `session`.
    pub fn session(mut self, session: impl Into<String>) -> Self {
        self.session = session.into();
        self
    }

    /// Speaking as CA `from`.
    pub fn from(mut self, from: impl Into<String>) -> Self {
        self.from = from.into();
        self
    }
}

/// A notification of a session.
#[derive(Clone, Debug, PartialEq)]
pub struct Notification {
    /// Unique in the CA, increasing: acknowledge up to it.
    pub seq: u64,
    /// The session it was queued in.
    pub session: String,
    /// Its arguments (a JSON array).
    pub args: serde_json::Value,
    /// When the host sent it (right after its checkpoint committed, or when the listener
    /// joined for one already queued), by the host's clock.
    pub pushed_at: std::time::SystemTime,
}

/// What `begin` answers: the new exactly-once instance.
#[derive(Clone, Debug, PartialEq)]
pub struct Begun {
    /// Its nonce (pass it to the app's methods that `remember`, and to `end`).
    pub nonce: String,
    /// The previous instance's memento, if it did not end.
    pub memento: Option<serde_json::Value>,
}

/// A stream of notifications from [`CaClient::listen`].
pub type NotificationStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<Notification, CallError>> + Send>>;

/// A connection to one CA host.
#[derive(Clone, Debug)]
pub struct CaClient {
    rpc: pb::ca_client::CaClient<InterceptedService<Channel, Credentials>>,
}

impl CaClient {
    /// Connects to a host at `endpoint` (`http://127.0.0.1:7601` or `127.0.0.1:7601`), presenting
    /// `token` on every call.
    pub async fn connect(endpoint: &str, token: Option<&str>) -> Result<Self, CallError> {
        Self::connect_with(endpoint, token, Duration::from_secs(30))
    }

    /// Like [`connect`](Self::connect), with each unary call's `timeout` (streams have none).
    pub fn connect_with(
        endpoint: &str,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, CallError> {
        let url = if endpoint.contains("://") {
            endpoint.to_string()
        } else {
            format!("http://{endpoint}")
        };
        let channel = tonic::transport::Endpoint::from_shared(url)
            .map_err(|e| CallError::Transport(format!("invalid endpoint {endpoint:?}: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            // Up to the answer's headers: a stream's notifications may come much later.
            .timeout(timeout)
            .connect_lazy();
        let credentials = match token {
            Some(t) => Credentials::token(t).map_err(|e| CallError::Transport(e.to_string()))?,
            None => Credentials::default(),
        };
        Ok(Self {
            rpc: pb::ca_client::CaClient::with_interceptor(channel, credentials),
        })
    }

    /// Calls one method of CA `ca` of app `app`.
    pub async fn call(
        &self,
        app: &str,
        ca: &str,
        method: &str,
        args: Vec<serde_json::Value>,
    ) -> Result<Reply, CallError> {
        self.multi_call(app, ca, vec![MethodCall::new(method, args)])
            .await
    }

    /// Calls several methods in one transaction: all or nothing; the last result is returned.
    pub async fn multi_call(
        &self,
        app: &str,
        ca: &str,
        calls: Vec<MethodCall>,
    ) -> Result<Reply, CallError> {
        self.call_as(&Target::new(app, ca), calls).await
    }

    /// Calls methods of `target`'s CA over its session, as its caller, in one transaction.
    pub async fn call_as(
        &self,
        target: &Target,
        calls: Vec<MethodCall>,
    ) -> Result<Reply, CallError> {
        let calls = calls
            .into_iter()
            .map(|c| {
                Ok(pb::MethodCall {
                    method: c.method,
                    args_json: serde_json::to_string(&c.args)
                        .map_err(|e| CallError::Json(e.to_string()))?,
                })
            })
            .collect::<Result<Vec<_>, CallError>>()?;
        let request = pb::CallRequest {
            app: target.app.clone(),
            ca: target.ca.clone(),
            calls,
            session: target.session.clone(),
            from: target.from.clone(),
        };
        let answer = self
            .rpc
            .clone()
            .call(request)
            .await
            .map_err(CallError::from_status)?
            .into_inner();
        let result = json_answer(&answer.result_json)?;
        Ok(Reply {
            result,
            version: answer.version,
        })
    }

    /// Listens to `target`'s session: the notifications queued after `after`, then each one as
    /// its turn commits. They stay queued until acknowledged ([`ack`](Self::ack)).
    pub async fn listen(
        &self,
        target: &Target,
        after: u64,
    ) -> Result<NotificationStream, CallError> {
        let request = pb::ListenRequest {
            app: target.app.clone(),
            ca: target.ca.clone(),
            session: target.session.clone(),
            from: target.from.clone(),
            after,
        };
        let stream = self
            .rpc
            .clone()
            .listen(request)
            .await
            .map_err(CallError::from_status)?
            .into_inner();
        Ok(Box::pin(futures::StreamExt::map(stream, |item| {
            let n = item.map_err(CallError::from_status)?;
            Ok(Notification {
                seq: n.seq,
                session: n.session,
                args: json_answer(&n.args_json)?,
                pushed_at: std::time::UNIX_EPOCH + Duration::from_micros(n.pushed_unix_us),
            })
        })))
    }

    /// Acknowledges `target`'s session's notifications up to `seq`: they leave its queue.
    pub async fn ack(&self, target: &Target, seq: u64) -> Result<Reply, CallError> {
        let request = pb::AckRequest {
            app: target.app.clone(),
            ca: target.ca.clone(),
            session: target.session.clone(),
            from: target.from.clone(),
            seq,
        };
        let answer = self
            .rpc
            .clone()
            .ack(request)
            .await
            .map_err(CallError::from_status)?
            .into_inner();
        Ok(Reply {
            result: json_answer(&answer.result_json)?,
            version: answer.version,
        })
    }

    /// Starts a new exactly-once instance of `target`'s session.
    pub async fn begin(&self, target: &Target) -> Result<Begun, CallError> {
        let request = pb::SessionRequest {
            app: target.app.clone(),
            ca: target.ca.clone(),
            session: target.session.clone(),
            from: target.from.clone(),
        };
        let answer = self
            .rpc
            .clone()
            .begin(request)
            .await
            .map_err(CallError::from_status)?
            .into_inner();
        let memento = json_answer(&answer.memento_json)?;
        Ok(Begun {
            nonce: answer.nonce,
            memento: (!memento.is_null()).then_some(memento),
        })
    }

    /// Ends instance `nonce` of `target`'s session (idempotent): `false` if another is current.
    pub async fn end(&self, target: &Target, nonce: &str) -> Result<bool, CallError> {
        let request = pb::EndRequest {
            app: target.app.clone(),
            ca: target.ca.clone(),
            session: target.session.clone(),
            from: target.from.clone(),
            nonce: nonce.to_string(),
        };
        Ok(self
            .rpc
            .clone()
            .end(request)
            .await
            .map_err(CallError::from_status)?
            .into_inner()
            .ended)
    }

    /// For admins: the CA's committed checkpoint (state, sessions, intents) as JSON.
    pub async fn inspect(&self, app: &str, ca: &str) -> Result<serde_json::Value, CallError> {
        let request = pb::InspectRequest {
            app: app.to_string(),
            ca: ca.to_string(),
        };
        let answer = self
            .rpc
            .clone()
            .inspect(request)
            .await
            .map_err(CallError::from_status)?
            .into_inner();
        json_answer(&answer.json)
    }
}

fn json_answer(text: &str) -> Result<serde_json::Value, CallError> {
    serde_json::from_str(text)
        .map_err(|e| CallError::Json(format!("the host's answer is not JSON ({e}): {text}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_only_the_transient_rungs_retry() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(ErrorCode::parse("nope"), None);
        let retryable: Vec<_> = ErrorCode::ALL
            .into_iter()
            .filter(|c| c.is_retryable())
            .collect();
        assert_eq!(
            retryable,
            [
                ErrorCode::Prepare,
                ErrorCode::Checkpoint,
                ErrorCode::Commit,
                ErrorCode::ShutDown,
                ErrorCode::Moved
            ]
        );
    }

    #[test]
    fn a_status_with_a_code_is_a_ca_error() {
        let mut status = tonic::Status::failed_precondition("out of stock");
        status.metadata_mut().insert(
            ERROR_CODE_KEY,
            tonic::metadata::MetadataValue::from_static("app_error"),
        );
        let e = CallError::from_status(status);
        assert_eq!(e.code(), Some(ErrorCode::AppError));
        assert_eq!(e.to_string(), "app_error: out of stock");
        assert!(!e.is_retryable());
        let plain = CallError::from_status(tonic::Status::unavailable("down"));
        assert_eq!(plain.code(), None);
        assert!(plain.is_retryable());
    }
}

//! The runtime's one error type: a rung of the error ladder (DESIGN.md §9.2) and a message.

use ca_client::{ERROR_CODE_KEY, ErrorCode};

/// Why a call of a CA failed. The [`ErrorCode`] tells the rung; the message says why, and an
/// application error's message is the method's own, intact.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CaError {
    /// The rung.
    pub code: ErrorCode,
    /// What happened.
    pub message: String,
    /// Whether the activation that met it must stop (an abort that failed).
    pub stops: bool,
}

impl CaError {
    /// An error with `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            stops: false,
        }
    }
    /// The method returned an error.
    pub fn app(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::AppError, message)
    }
    /// The method panicked or failed inside.
    pub fn exception(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Exception, message)
    }
    /// The turn could not be prepared (a plugin refused, the state is over its limit).
    pub fn prepare(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Prepare, message)
    }
    /// The checkpoint failed; it may have landed.
    pub fn checkpoint(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Checkpoint, message)
    }
    /// The checkpoint committed but what it releases could not be (a plugin's commit failed);
    /// the activation stops and the next one loads the committed turn.
    pub fn commit(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Commit, message)
    }
    /// A plugin could not roll a failed turn back: the activation stops. The caller hears
    /// `shut_down` (retryable: the next activation starts from the committed checkpoint).
    pub fn abort_failed(message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::ShutDown,
            message: message.into(),
            stops: true,
        }
    }
    /// Another activation committed.
    pub fn moved(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Moved, message)
    }
    /// No such app or CA.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    /// The caller may not do this.
    pub fn not_authorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotAuthorized, message)
    }
    /// The host or the activation is stopping.
    pub fn shut_down(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ShutDown, message)
    }
    /// The checkpoint's state version cannot be resumed by this code.
    pub fn version(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Version, message)
    }
    /// The request is malformed.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Invalid, message)
    }

    /// Whether the same request may succeed if sent again.
    pub fn is_retryable(&self) -> bool {
        self.code.is_retryable()
    }

    /// The gRPC status a host answers with: the code's gRPC code, the message, and the code in
    /// the `ca-error` metadata.
    pub fn to_status(&self) -> tonic::Status {
        let mut status = tonic::Status::new(self.code.grpc(), self.message.clone());
        status.metadata_mut().insert(
            ERROR_CODE_KEY,
            tonic::metadata::MetadataValue::from_static(self.code.as_str()),
        );
        status
    }
}

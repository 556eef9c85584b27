//! The client's one error type.

use tonic::Code;

use crate::convert::ConvertError;

/// Why a client call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    /// A server answered with an error; `message` is the server's, verbatim.
    #[error("{}", if message.is_empty() { code.description() } else { message.as_str() })]
    Status {
        /// The gRPC code (INVALID_ARGUMENT, FAILED_PRECONDITION, NOT_FOUND, ...).
        code: Code,
        /// What the server said.
        message: String,
    },
    /// No endpoint gave an answer before the deadline.
    #[error("no Spine node answered (tried {}); last error: {last}", tried.join(", "))]
    Unavailable {
        /// The endpoints tried, in the order first tried.
        tried: Vec<String>,
        /// The last failure seen.
        last: String,
    },
    /// A server's answer could not be turned into domain values.
    #[error("malformed answer from the server: {0}")]
    Convert(#[from] ConvertError),
    /// A name given to the client broke the naming rules.
    #[error(transparent)]
    Name(#[from] sharing_map::NameError),
    /// A value given to the client (an update id, a key) broke a limit.
    #[error(transparent)]
    Limit(#[from] sharing_map::LimitError),
    /// An endpoint is not a valid address.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The token given to the client cannot be sent.
    #[error("invalid token: {reason}")]
    InvalidToken {
        /// What is wrong with it.
        reason: String,
    },
}

impl ClientError {
    /// The gRPC code this error corresponds to.
    pub fn code(&self) -> Code {
        match self {
            ClientError::Status { code, .. } => *code,
            ClientError::Unavailable { .. } => Code::Unavailable,
            ClientError::Convert(_) => Code::Internal,
            ClientError::Name(_)
            | ClientError::Limit(_)
            | ClientError::InvalidEndpoint { .. }
            | ClientError::InvalidToken { .. } => Code::InvalidArgument,
        }
    }

    /// Whether this is a compare-and-swap failure (the map is not at the version the change set was
    /// made against).
    pub fn is_conflict(&self) -> bool {
        self.code() == Code::FailedPrecondition
    }

    /// Whether this error came from a server's answer rather than from the client or the network.
    pub fn is_status(&self) -> bool {
        matches!(self, ClientError::Status { .. })
    }
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        ClientError::Status {
            code: status.code(),
            message: status.message().to_string(),
        }
    }
}

/// Whether a failed attempt is worth repeating on another endpoint: the node is down, unreachable,
/// has no quorum, or did not answer in time. Every other code is the server's considered answer.
pub(crate) fn is_retryable(status: &tonic::Status) -> bool {
    use std::error::Error as _;
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded => true,
        // A status with a source was made on this side from a transport failure (connection
        // reset, stream refused, ...), never received from a server.
        _ => status.source().is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_messages_are_kept_verbatim() {
        let e = ClientError::from(tonic::Status::failed_precondition(
            "version conflict on map bob-tv-x: the map is at version 4",
        ));
        assert_eq!(
            e.to_string(),
            "version conflict on map bob-tv-x: the map is at version 4"
        );
        assert!(e.is_conflict());
        assert_eq!(
            ClientError::from(tonic::Status::not_found("")).to_string(),
            Code::NotFound.description()
        );
    }

    #[test]
    fn unavailable_names_the_endpoints() {
        let e = ClientError::Unavailable {
            tried: vec!["a:1".into(), "b:2".into()],
            last: "b:2: connection refused".into(),
        };
        assert_eq!(e.code(), Code::Unavailable);
        let text = e.to_string();
        assert!(text.contains("a:1, b:2") && text.contains("connection refused"));
    }

    #[test]
    fn only_transient_failures_are_retried() {
        assert!(is_retryable(&tonic::Status::unavailable("no quorum")));
        assert!(is_retryable(&tonic::Status::deadline_exceeded("slow")));
        assert!(!is_retryable(&tonic::Status::failed_precondition(
            "conflict"
        )));
        assert!(!is_retryable(&tonic::Status::invalid_argument("bad name")));
        assert!(!is_retryable(&tonic::Status::unknown("from a server")));
        let local = tonic::Status::from_error(Box::new(std::io::Error::other("reset")));
        assert!(is_retryable(&local));
    }
}

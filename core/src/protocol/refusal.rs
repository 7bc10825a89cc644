//! A refused request: the `error` reply it gets. Every layer that handles a request (the
//! gateway's routing, a session) refuses with one of these; the gateway encodes it.

use crate::protocol::ErrorCode;

/// A refused request: the error to answer with.
pub(crate) struct Refusal {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
    /// For the `*_RATE_LIMITED` codes: when to try again.
    pub(crate) retry_after: Option<std::time::Duration>,
}

impl Refusal {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// No such session in the caller's tenant (also for another tenant's session).
    pub(crate) fn session_not_found() -> Self {
        Refusal::new(ErrorCode::SessionNotFound, "no such session")
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Refusal::new(ErrorCode::InvalidMessage, message)
    }
}

pub(crate) type Handled = Result<(), Refusal>;

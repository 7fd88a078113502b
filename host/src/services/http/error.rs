//! The HTTP API's errors: `{"error":{"kind":...,"message":...}}` with the kinds of the
//! control protocol (and a few of HTTP's own: `unauthorized`, `forbidden`, `too_large`,
//! `not_found`, `not_configured`), each with its status code.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::types::call::{CallError, CallErrorKind};

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {kind}: {message}")]
#[non_exhaustive]
pub struct ApiError {
    /// The status code.
    pub status: StatusCode,
    /// The kind, as in the control protocol (`unknown_plugin`, `timeout` ...).
    pub kind: &'static str,
    /// One line for humans.
    pub message: String,
}

impl ApiError {
    /// An error with this status, kind and message.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            message: message.into(),
        }
    }

    pub(super) fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub(super) fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this needs `Authorization: Bearer TOKEN` with a valid token",
        )
    }

    pub(super) fn forbidden() -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the read-only token may list and read, not call, submit, cancel, retry, roll \
             back or restart",
        )
    }

    pub(super) fn shutting_down() -> ApiError {
        ApiError::from(CallError::new(
            CallErrorKind::ShuttingDown,
            "the host is shutting down",
        ))
    }

    pub(super) fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl From<CallError> for ApiError {
    fn from(err: CallError) -> ApiError {
        let status = match err.kind {
            CallErrorKind::UnknownPlugin | CallErrorKind::UnknownCallback => StatusCode::NOT_FOUND,
            CallErrorKind::InvalidRequest if err.message.starts_with("no task ") => {
                StatusCode::NOT_FOUND
            }
            CallErrorKind::InvalidRequest => StatusCode::BAD_REQUEST,
            CallErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            CallErrorKind::Busy | CallErrorKind::ShuttingDown | CallErrorKind::Quarantined => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            CallErrorKind::Crashed => StatusCode::BAD_GATEWAY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, err.kind.as_str(), err.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"kind": self.kind, "message": self.message}});
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.kind == "busy" {
            // Busy is a moment's state: try again in a second.
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.status == StatusCode::REQUEST_TIMEOUT {
            // The rest of the body may still come: the connection cannot be reused.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_errors_get_the_status_codes_of_the_api() {
        let status = |kind, message: &str| ApiError::from(CallError::new(kind, message)).status;
        assert_eq!(status(CallErrorKind::UnknownPlugin, "x"), 404);
        assert_eq!(status(CallErrorKind::UnknownCallback, "x"), 404);
        assert_eq!(status(CallErrorKind::Timeout, "x"), 504);
        assert_eq!(status(CallErrorKind::Busy, "x"), 503);
        assert_eq!(status(CallErrorKind::ShuttingDown, "x"), 503);
        assert_eq!(status(CallErrorKind::InvalidRequest, "no task 7"), 404);
        assert_eq!(status(CallErrorKind::InvalidRequest, "bad"), 400);
        let busy = ApiError::from(CallError::new(CallErrorKind::Busy, "full")).into_response();
        assert_eq!(busy.headers()[header::RETRY_AFTER], "1");
    }
}

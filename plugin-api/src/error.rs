//! Errors a plugin returns, and their kinds.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::abi::FfiError;

/// What kind of failure a [`PluginError`] is.
///
/// On the wire a kind is a number; a kind this crate does not know (from a newer `plugin-api`)
/// reads as [`ErrorKind::Other`].
///
/// ```
/// use plugin_api::ErrorKind;
/// assert_eq!(ErrorKind::from_code(ErrorKind::Failed.code()), ErrorKind::Failed);
/// assert_eq!(ErrorKind::from_code(9_999), ErrorKind::Other);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The input (or configuration) could not be decoded or is not acceptable.
    InvalidInput,
    /// The plugin has no callback of that name.
    UnknownCallback,
    /// The plugin tried and failed.
    Failed,
    /// Author code panicked; the panic was caught at the boundary.
    Panicked,
    /// The caller cancelled the call or its deadline passed.
    Cancelled,
    /// The plugin cannot serve calls (for example it has been shut down).
    Unavailable,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// The number this kind travels as across the ABI. Stable forever.
    pub const fn code(self) -> u32 {
        match self {
            ErrorKind::Other => 0,
            ErrorKind::InvalidInput => 1,
            ErrorKind::UnknownCallback => 2,
            ErrorKind::Failed => 3,
            ErrorKind::Panicked => 4,
            ErrorKind::Cancelled => 5,
            ErrorKind::Unavailable => 6,
        }
    }

    /// The kind for a number from the wire; unknown numbers are [`ErrorKind::Other`].
    pub const fn from_code(code: u32) -> ErrorKind {
        match code {
            1 => ErrorKind::InvalidInput,
            2 => ErrorKind::UnknownCallback,
            3 => ErrorKind::Failed,
            4 => ErrorKind::Panicked,
            5 => ErrorKind::Cancelled,
            6 => ErrorKind::Unavailable,
            _ => ErrorKind::Other,
        }
    }

    /// The snake_case name used in JSON and in messages.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::UnknownCallback => "unknown_callback",
            ErrorKind::Failed => "failed",
            ErrorKind::Panicked => "panicked",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Other => "other",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error returned by a plugin: a [`ErrorKind`] and a message for humans.
///
/// ```
/// use plugin_api::{ErrorKind, PluginError};
///
/// let err = PluginError::failed("disk /srv is 97% full");
/// assert_eq!(err.kind(), ErrorKind::Failed);
/// assert_eq!(err.to_string(), "disk /srv is 97% full");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginError {
    kind: ErrorKind,
    message: String,
}

impl PluginError {
    /// An error of the given kind.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        PluginError {
            kind,
            message: message.into(),
        }
    }

    /// The plugin tried and failed: [`ErrorKind::Failed`].
    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Failed, message)
    }

    /// The input is not acceptable: [`ErrorKind::InvalidInput`].
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    /// The call was cancelled or ran past its deadline: [`ErrorKind::Cancelled`].
    pub fn cancelled(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Cancelled, message)
    }

    /// The kind of error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PluginError {}

impl From<PluginError> for FfiError {
    fn from(err: PluginError) -> FfiError {
        FfiError {
            kind: err.kind.code(),
            message: err.message.into(),
        }
    }
}

impl From<&FfiError> for PluginError {
    fn from(err: &FfiError) -> PluginError {
        PluginError::new(ErrorKind::from_code(err.kind), err.message.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_code_and_name() {
        let kinds = [
            ErrorKind::InvalidInput,
            ErrorKind::UnknownCallback,
            ErrorKind::Failed,
            ErrorKind::Panicked,
            ErrorKind::Cancelled,
            ErrorKind::Unavailable,
            ErrorKind::Other,
        ];
        for kind in kinds {
            assert_eq!(ErrorKind::from_code(kind.code()), kind);
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
        }
    }
}

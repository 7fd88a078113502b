//! Calls: what a caller gets back, owned entirely by the host.
//!
//! Everything a plugin returns is copied out of its library here (JSON text, strings,
//! numbers), so an outcome stays valid after the plugin version that produced it is unloaded.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use plugin_api::{FollowUp, LogRecord, PluginError};

/// The outcome of a call that reached a plugin: its result or its error, with the records it
/// logged and the follow-up calls it asked for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallOutcome {
    /// The plugin called.
    pub plugin: String,
    /// The callback called (`execute` for the entry point).
    pub callback: String,
    /// The generation of the plugin that served the call.
    pub generation: u64,
    /// The result, as JSON, when the call succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Box<RawValue>>,
    /// The plugin's error, when the call failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<PluginError>,
    /// Calls the plugin asked to be made next; the host does not make them itself.
    pub follow_ups: Vec<FollowUp>,
    /// Records the plugin logged during the call.
    pub logs: Vec<LogRecord>,
    /// Time spent in the plugin, in microseconds.
    pub elapsed_us: u64,
}

impl CallOutcome {
    /// The result as a `Result`.
    pub fn result(&self) -> Result<&RawValue, &PluginError> {
        match (&self.result, &self.error) {
            (_, Some(err)) => Err(err),
            (Some(result), None) => Ok(result),
            (None, None) => Ok(null()),
        }
    }
}

fn null() -> &'static RawValue {
    // A constant that is valid JSON.
    static NULL: std::sync::OnceLock<Box<RawValue>> = std::sync::OnceLock::new();
    NULL.get_or_init(|| RawValue::from_string("null".to_owned()).expect("`null` is JSON"))
}

/// Why the host could not run a call at all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct CallError {
    /// What kind of problem it is.
    pub kind: CallErrorKind,
    /// One line for humans.
    pub message: String,
}

/// What kind of problem stopped a call before or around the plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CallErrorKind {
    /// No loaded plugin has that name.
    UnknownPlugin,
    /// The request is malformed (bad name, bad JSON, too large).
    InvalidRequest,
    /// The call did not finish before its deadline.
    Timeout,
    /// The plugin already runs as many calls as it may.
    Busy,
    /// The host is shutting down.
    ShuttingDown,
    /// Anything else.
    Internal,
}

impl CallError {
    pub(crate) fn new(kind: CallErrorKind, message: impl Into<String>) -> Self {
        CallError {
            kind,
            message: message.into(),
        }
    }
}

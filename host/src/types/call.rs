//! Calls: what a caller gets back, owned entirely by the host and bounded in size.
//!
//! Everything a plugin returns is copied out of its library here (JSON text, strings,
//! numbers), so an outcome stays valid after the plugin version that produced it is unloaded.
//! The copy is where the size limits apply: a result and its follow-ups together may not
//! exceed `max_message_bytes`, an error message is cut at [`MAX_ERROR_MESSAGE`] bytes, and log
//! records past the per-call budget (`max_log_bytes_per_call`, and never past what is left of
//! `max_message_bytes`) are dropped, with a last record saying how many.

use std::time::{SystemTime, UNIX_EPOCH};

use plugin_api::abi::{FfiError, FfiFollowUp, FfiLogRecord};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::types::small::SmallStr;

use plugin_api::{ErrorKind, FollowUp, Level, LogRecord, PluginError};

/// The longest error message kept from a plugin, in bytes.
pub const MAX_ERROR_MESSAGE: usize = 16 * 1024;
/// What a log record costs against the budget besides its message: its level and time as
/// JSON.
pub(crate) const RECORD_OVERHEAD: usize = 48;

/// The outcome of a call that reached a plugin: its result or its error, with the records it
/// logged and the follow-up calls it asked for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallOutcome {
    /// The plugin called.
    pub plugin: Name,
    /// The callback called (`execute` for the entry point).
    pub callback: Name,
    /// The generation of the plugin that served the call.
    pub generation: u64,
    /// The result, as JSON, when the call succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Json>,
    /// The plugin's error, when the call failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<PluginError>,
    /// Calls the plugin asked to be made next; the host does not make them itself.
    pub follow_ups: Vec<FollowUp>,
    /// Records the plugin logged during the call.
    pub logs: Vec<LogRecord>,
    /// Time spent in the plugin, in microseconds, when the call was timed: calls served by
    /// the control server and calls run in a worker process are; an in-process
    /// `Host::call` is not (0), because timing it would cost a sixth of
    /// a no-op call. Time it yourself where you need it.
    pub elapsed_us: u64,
}

impl CallOutcome {
    /// The result as a `Result`.
    pub fn result(&self) -> Result<&Json, &PluginError> {
        match (&self.result, &self.error) {
            (_, Some(err)) => Err(err),
            (Some(result), None) => Ok(result),
            (None, None) => Ok(null()),
        }
    }
}

fn null() -> &'static Json {
    static NULL: std::sync::OnceLock<Json> = std::sync::OnceLock::new();
    NULL.get_or_init(|| Json(SmallStr::new("null")))
}

/// A plugin's or a callback's name in an outcome: a `str`, kept inline when short.
#[derive(Clone, PartialEq, Eq)]
pub struct Name(SmallStr);

impl Name {
    /// A name holding a copy of `name`.
    pub fn new(name: &str) -> Name {
        Name(SmallStr::new(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl std::ops::Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Serialize for Name {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(|name| Name(SmallStr::from_string(name)))
    }
}

/// JSON text a plugin returned, copied out of its library.
///
/// It is not parsed on the call path (the plugin's glue wrote it with serde_json); it is
/// checked when it is written into a message, and a result that is not JSON fails that
/// message instead of producing a broken one.
#[derive(Clone, PartialEq, Eq)]
pub struct Json(SmallStr);

impl Json {
    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.as_str()
    }

    /// Parses it into `T`.
    pub fn parse<'a, T: Deserialize<'a>>(&'a self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.get())
    }

    pub(crate) fn from_text(text: &str) -> Json {
        Json(SmallStr::new(text))
    }
}

impl std::fmt::Debug for Json {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Json({})", self.get())
    }
}

impl std::fmt::Display for Json {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.get())
    }
}

impl Serialize for Json {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let raw: &RawValue = serde_json::from_str(self.get()).map_err(|err| {
            serde::ser::Error::custom(format!(
                "a plugin returned a result that is not JSON: {err}"
            ))
        })?;
        raw.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        Ok(Json(SmallStr::from_string(
            Box::<str>::from(raw).into_string(),
        )))
    }
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
    /// The plugin has no such callback (for typed calls: no such typed callback).
    UnknownCallback,
    /// The request is malformed (bad name, bad JSON, too large).
    InvalidRequest,
    /// The call did not finish before its deadline.
    Timeout,
    /// The plugin already runs as many calls as it may.
    Busy,
    /// The host is shutting down.
    ShuttingDown,
    /// The plugin's worker process died (a signal, an exit, a kill after its timeout)
    /// while the call ran, or could not be restarted.
    Crashed,
    /// The plugin crashed too often and is not started again until its file changes or
    /// `host restart` is run.
    Quarantined,
    /// Anything else.
    Internal,
}

impl CallErrorKind {
    /// The kind's name, as in the protocol (`unknown_plugin`, `crashed` ...).
    pub fn as_str(self) -> &'static str {
        match self {
            CallErrorKind::UnknownPlugin => "unknown_plugin",
            CallErrorKind::UnknownCallback => "unknown_callback",
            CallErrorKind::InvalidRequest => "invalid_request",
            CallErrorKind::Timeout => "timeout",
            CallErrorKind::Busy => "busy",
            CallErrorKind::ShuttingDown => "shutting_down",
            CallErrorKind::Crashed => "crashed",
            CallErrorKind::Quarantined => "quarantined",
            CallErrorKind::Internal => "internal",
        }
    }
}

impl CallError {
    /// An error of `kind` with a one-line `message`.
    pub fn new(kind: CallErrorKind, message: impl Into<String>) -> Self {
        CallError {
            kind,
            message: message.into(),
        }
    }
}

/// How much of a plugin's answer the host keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Budget {
    /// Result and follow-ups together, and the whole response.
    pub(crate) max_message: usize,
    /// Log records of one call (or one `init`).
    pub(crate) max_log_bytes: usize,
}

/// What the host keeps of one call's answer.
pub(crate) struct Owned {
    pub(crate) result: Option<Json>,
    pub(crate) error: Option<PluginError>,
    pub(crate) follow_ups: Vec<FollowUp>,
    pub(crate) logs: Vec<LogRecord>,
}

impl Budget {
    /// Copies what plugin `plugin` returned out of its library, within the limits: its JSON
    /// result's bytes (`Ok`) or its error, its follow-ups and its logs.
    pub(crate) fn outcome(
        &self,
        plugin: &str,
        result: Result<&[u8], &FfiError>,
        ffi_follow_ups: &[FfiFollowUp],
        ffi_logs: &[FfiLogRecord],
    ) -> Owned {
        let follow_up_bytes: usize = ffi_follow_ups.iter().map(follow_up_size).sum();
        let (mut result_json, mut error, mut follow_ups) = (None, None, Vec::new());
        match result {
            Ok(json) if json.len() + follow_up_bytes > self.max_message => {
                let what = if ffi_follow_ups.is_empty() {
                    format!("{} bytes", json.len())
                } else {
                    format!(
                        "{} bytes of result and {follow_up_bytes} of follow-ups",
                        json.len()
                    )
                };
                error = Some(PluginError::failed(format!(
                    "plugin {plugin} returned {what}, over the limit of {} (max_message_bytes)",
                    self.max_message
                )));
            }
            Ok(json) => match std::str::from_utf8(json) {
                Ok(json) => {
                    result_json = Some(Json::from_text(json));
                    follow_ups = ffi_follow_ups.iter().map(FollowUp::from).collect();
                }
                Err(err) => {
                    error = Some(PluginError::failed(format!(
                        "plugin {plugin} returned a result that is not UTF-8: {err}"
                    )))
                }
            },
            Err(err) => {
                let message = cut(err.message.as_str(), MAX_ERROR_MESSAGE);
                error = Some(PluginError::new(ErrorKind::from_code(err.kind), message));
                follow_ups = ffi_follow_ups.iter().map(FollowUp::from).collect();
            }
        }
        let kept_follow_ups = if follow_ups.is_empty() {
            0
        } else {
            follow_up_bytes
        };
        let used = result_json.as_ref().map_or(0, |r| r.get().len())
            + error.as_ref().map_or(0, |e| e.message().len())
            + kept_follow_ups;
        let logs = self.logs(ffi_logs, used);
        Owned {
            result: result_json,
            error,
            follow_ups,
            logs,
        }
    }

    /// Copies log records until the per-call budget, or what is left of the message limit
    /// after `used` bytes, runs out; then one record says what was dropped.
    pub(crate) fn logs(&self, records: &[FfiLogRecord], used: usize) -> Vec<LogRecord> {
        let budget = self
            .max_log_bytes
            .min(self.max_message.saturating_sub(used));
        let mut kept = Vec::new();
        let mut spent = 0;
        let mut dropped = (0usize, 0usize);
        for record in records {
            let message = record.message.as_str();
            let cost = message.len() + RECORD_OVERHEAD;
            if dropped.0 == 0 && spent + cost <= budget {
                spent += cost;
                kept.push(LogRecord::from(record));
            } else {
                dropped.0 += 1;
                dropped.1 += message.len();
            }
        }
        if dropped.0 > 0 {
            kept.push(LogRecord {
                level: Level::Warn,
                message: format!(
                    "{} log records ({} bytes) dropped: over this call's log budget of {budget} \
                     bytes (max_log_bytes_per_call)",
                    dropped.0, dropped.1
                ),
                unix_ms: records.last().map_or(0, |r| r.unix_ms),
            });
        }
        kept
    }
}

fn follow_up_size(follow_up: &FfiFollowUp) -> usize {
    follow_up.plugin.len() + follow_up.callback.len() + follow_up.input_json.len()
}

/// A call's deadline as the plugin sees it, in milliseconds since the Unix epoch: rounded
/// up, so that a plugin that stops at its deadline never stops before the host's timeout
/// (whose answer it would then pre-empt with its own); at least 1 (0 means none).
pub(crate) fn deadline_unix_ms(deadline: SystemTime) -> u64 {
    let since = deadline.duration_since(UNIX_EPOCH).unwrap_or_default();
    let ms = since.as_millis() + u128::from(since.subsec_nanos() % 1_000_000 != 0);
    u64::try_from(ms).unwrap_or(u64::MAX).max(1)
}

/// `text` cut to at most `max` bytes, on a character boundary, marked when cut.
pub(crate) fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes cut)", &text[..end], text.len() - end)
}

#[cfg(test)]
mod tests;

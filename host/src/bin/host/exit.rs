//! Exit statuses: distinct for each kind of failure a script may want to tell apart.

use std::process::ExitCode;

use host::control::ClientError;
use host::{CallError, CallErrorKind, LoadError};

/// Anything not listed below (an I/O error, a host that misbehaved, ...).
pub const OTHER: u8 = 1;
/// The command line, an input or a configuration file is invalid.
pub const USAGE: u8 = 2;
/// The plugin ran and returned an error (or panicked, or its worker process crashed, or it
/// is quarantined).
pub const PLUGIN_ERROR: u8 = 3;
/// No such plugin, or no running host answers.
pub const NOT_FOUND: u8 = 4;
/// The call timed out, or the host or plugin is busy or shutting down: try again later.
pub const TRY_AGAIN: u8 = 5;
/// A plugin file could not be loaded or failed its checks.
pub const LOAD_FAILED: u8 = 6;

/// The table `host --help` prints, and the README repeats.
pub const HELP: &str = "\
Exit status:
  0  success
  1  any other failure
  2  usage error: bad arguments, input that is not JSON, an invalid host.toml
  3  the plugin returned an error (or panicked, or its worker process crashed)
  4  no such plugin, or no running host answers
  5  timeout, busy, or the host is shutting down: try again later
  6  a plugin file could not be loaded or failed its checks";

/// A failure that already knows its exit status.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
}

/// The exit status for an error, from the first cause in its chain that says which.
pub fn code_for(err: &anyhow::Error) -> ExitCode {
    let code = err
        .chain()
        .find_map(|cause| {
            if let Some(failure) = cause.downcast_ref::<Failure>() {
                Some(failure.code)
            } else if let Some(err) = cause.downcast_ref::<CallError>() {
                Some(for_call_error(err))
            } else if let Some(err) = cause.downcast_ref::<ClientError>() {
                Some(match err {
                    ClientError::Refused(err) => for_call_error(err),
                    ClientError::Io(io)
                        if matches!(
                            io.kind(),
                            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                        ) =>
                    {
                        TRY_AGAIN
                    }
                    ClientError::Io(_) => NOT_FOUND,
                    _ => OTHER,
                })
            } else if cause.downcast_ref::<LoadError>().is_some() {
                Some(LOAD_FAILED)
            } else if cause.downcast_ref::<host::config::ConfigError>().is_some() {
                Some(USAGE)
            } else {
                None
            }
        })
        .unwrap_or(OTHER);
    ExitCode::from(code)
}

fn for_call_error(err: &CallError) -> u8 {
    match err.kind {
        CallErrorKind::UnknownPlugin | CallErrorKind::UnknownCallback => NOT_FOUND,
        CallErrorKind::InvalidRequest => USAGE,
        CallErrorKind::Timeout | CallErrorKind::Busy | CallErrorKind::ShuttingDown => TRY_AGAIN,
        CallErrorKind::Crashed | CallErrorKind::Quarantined => PLUGIN_ERROR,
        _ => OTHER,
    }
}

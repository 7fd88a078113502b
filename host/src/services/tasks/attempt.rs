//! One attempt of a task: its call through the host's one call path, the verdict
//! (`success`, `failed` and retried, `bad`, `cancelled`, or released when its plugin went
//! away), and the record of it with its follow-ups.

use std::time::Duration;

use plugin_api::{ErrorKind, Level, LogRecord};

use super::recording::NotRecorded;
use super::retry::RetryDelay;
use super::runner::{lock, now_ms, Inner};
use super::task::{Finish, Inserted, TaskRecord, TaskStatus};
use crate::registry::CallRequest;
use crate::types::call::{CallError, CallErrorKind, CallOutcome};

impl Inner {
    /// Runs one attempt of `task` and records how it ended; whether the task ended here (it
    /// is not to be retried, and this host did not lose its lease on it before its end was
    /// written: a task another host took over is that host's to end).
    pub(super) fn run(&self, task: TaskRecord) -> bool {
        let _span = tracing::info_span!("task", id = task.id, plugin = %task.plugin).entered();
        let cancelled = lock(&self.state)
            .cancels
            .get(&task.id)
            .cloned()
            .unwrap_or_default();
        // What the plugin logs is kept for the events stream as it comes, until the
        // attempt's outcome (with its logs) is written: the guard lives to the end of `run`.
        let (_live, sink) = self
            .live
            .begin(task.id, task.attempts, self.settings.max_result_bytes);
        // The host's one call path: the plugin's `timeout_ms` is enforced, and a timeout is a
        // failed attempt like any other.
        let request = CallRequest::new(&*task.plugin, &*task.callback, &*task.input)
            .cancel(cancelled.clone())
            .live_logs(sink);
        let result = self.host.invoke(request);
        let now = now_ms();
        let asked = lock(&self.state).cancel_asked.contains(&task.id);
        if !asked && matches!(&result, Err(e) if e.kind == CallErrorKind::UnknownPlugin) {
            // Unloaded since the claim: not an attempt; it waits for its plugin.
            tracing::info!(
                "plugin {} is not served now: the task waits for it",
                task.plugin
            );
            let _ = self.record(task.id, "its release", |store| store.release(task.id));
            return false;
        }
        let verdict = verdict(&result, asked);
        let retried = verdict == TaskStatus::Failed && task.attempts < task.max_attempts;
        // An unknown callback may come with the next version; out of attempts, it is bad.
        let verdict = if verdict == TaskStatus::Failed && !retried && unknown_callback(&result) {
            TaskStatus::Bad
        } else {
            verdict
        };
        let max = self.settings.max_result_bytes;
        let (outcome, error) = match result {
            Ok(outcome) => {
                let error = outcome.error.as_ref().map(|e| e.to_string());
                (Some(outcome), error)
            }
            Err(err) => (
                None,
                Some(format!("{}: {}", err.kind.as_str(), err.message)),
            ),
        };
        let logs = outcome
            .as_ref()
            .map(|o| bounded_logs(&o.logs, max))
            .unwrap_or_default();
        let generation = outcome.as_ref().map(|o| o.generation);
        let mut finish = Finish {
            status: verdict,
            result: None,
            error: error.map(|e| crate::types::call::cut(&e, max)),
            logs,
            finished_unix_ms: now,
            generation,
        };
        match verdict {
            TaskStatus::Success => {
                let outcome = outcome.as_ref();
                if let Some(result) = outcome.and_then(|o| o.result().ok()) {
                    let json = result.get();
                    if json.len() <= max {
                        finish.result = Some(json.to_owned());
                    } else {
                        finish.error = Some(format!(
                            "its result of {} bytes is not kept: over max_result_bytes ({max})",
                            json.len()
                        ));
                    }
                }
                let mut inserts = Vec::new();
                if let Some(outcome) = outcome.filter(|o| !o.follow_ups.is_empty()) {
                    let (children, line) = self.follow_ups(&task, outcome, now);
                    inserts = children;
                    if let Some(line) = line {
                        finish.logs.push(LogRecord {
                            level: Level::Warn,
                            message: line,
                            unix_ms: now,
                        });
                    }
                }
                // The outcome and the follow-ups together: a host stopped in between
                // would run the task again and queue its follow-ups twice.
                let inserted = match self.record(task.id, "its success", |store| {
                    store.finish(task.id, &finish, &inserts)
                }) {
                    Ok(inserted) => inserted,
                    Err(NotRecorded::LeaseLost) => return false,
                    Err(NotRecorded::GivenUp) => Vec::new(),
                };
                for (insert, inserted) in inserts.iter().zip(inserted) {
                    if let Inserted::Queued(_) = inserted {
                        self.count(&insert.plugin, 1);
                    }
                }
                if !inserts.is_empty() {
                    self.poke();
                }
            }
            TaskStatus::Failed if retried => {
                let delay = RetryDelay::after(
                    &task.retry_delays_ms,
                    task.attempts,
                    u64::try_from(self.settings.min_retry_delay.as_millis()).unwrap_or(u64::MAX),
                    &mut fastrand::Rng::new(),
                );
                tracing::info!(
                    "attempt {} of {} failed, retrying in {} ({}): {}",
                    task.attempts,
                    task.max_attempts,
                    humantime::format_duration(Duration::from_millis(delay.ms)),
                    delay.describe(),
                    finish.error.as_deref().unwrap_or_default()
                );
                let due = now.saturating_add(delay.ms);
                // Retried here or taken over elsewhere: not ended either way.
                let _ = self.record(task.id, "its retry", |store| {
                    store.retry_later(task.id, due, &finish)
                });
            }
            _ => {
                if verdict != TaskStatus::Cancelled {
                    tracing::warn!(
                        "{verdict} after {} attempts: {}",
                        task.attempts,
                        finish.error.as_deref().unwrap_or_default()
                    );
                }
                let recorded = self.record(task.id, "its end", |store| {
                    store.finish(task.id, &finish, &[])
                });
                if recorded == Err(NotRecorded::LeaseLost) {
                    return false;
                }
            }
        }
        !retried
    }
}

/// How an attempt ended: `success`, `bad` (its input can never be taken), `cancelled`,
/// or `failed` (retried while it has attempts left; an unknown callback included).
fn verdict(result: &Result<CallOutcome, CallError>, cancelled: bool) -> TaskStatus {
    match result {
        Err(err) => match err.kind {
            CallErrorKind::InvalidRequest => TaskStatus::Bad,
            _ if cancelled => TaskStatus::Cancelled,
            _ => TaskStatus::Failed,
        },
        Ok(outcome) => match outcome.error.as_ref().map(|e| e.kind()) {
            None => TaskStatus::Success,
            Some(ErrorKind::InvalidInput) => TaskStatus::Bad,
            Some(_) if cancelled => TaskStatus::Cancelled,
            Some(_) => TaskStatus::Failed,
        },
    }
}

/// Whether the call failed because its callback does not exist.
fn unknown_callback(result: &Result<CallOutcome, CallError>) -> bool {
    match result {
        Err(err) => err.kind == CallErrorKind::UnknownCallback,
        Ok(outcome) => outcome
            .error
            .as_ref()
            .is_some_and(|e| e.kind() == ErrorKind::UnknownCallback),
    }
}

/// `logs`, cut to at most `max` bytes of messages, with a last record saying how many were
/// left out.
fn bounded_logs(logs: &[LogRecord], max: usize) -> Vec<LogRecord> {
    let mut kept = Vec::new();
    let mut used = 0;
    for (i, record) in logs.iter().enumerate() {
        used += record.message.len();
        if used > max {
            kept.push(LogRecord {
                level: Level::Warn,
                message: format!(
                    "{} more records not kept (max_result_bytes)",
                    logs.len() - i
                ),
                unix_ms: record.unix_ms,
            });
            break;
        }
        kept.push(record.clone());
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_are_cut_with_a_last_record_saying_how_many_were_left_out() {
        let record = |message: &str| LogRecord {
            level: Level::Info,
            message: message.to_owned(),
            unix_ms: 1,
        };
        let logs = vec![record("aaaa"), record("bbbb"), record("cccc")];
        let kept = bounded_logs(&logs, 9);
        assert_eq!(kept.len(), 3);
        assert_eq!(
            kept[2].message,
            "1 more records not kept (max_result_bytes)"
        );
        assert_eq!(bounded_logs(&logs, 100), logs);
    }

    #[test]
    fn what_can_never_succeed_is_bad_and_the_rest_is_retried() {
        let host_error = |kind| Err(CallError::new(kind, "x"));
        assert_eq!(
            verdict(&host_error(CallErrorKind::InvalidRequest), false),
            TaskStatus::Bad
        );
        // Bad only when its attempts run out (see `run`).
        assert_eq!(
            verdict(&host_error(CallErrorKind::UnknownCallback), false),
            TaskStatus::Failed
        );
        assert!(unknown_callback(&host_error(
            CallErrorKind::UnknownCallback
        )));
        assert!(!unknown_callback(&host_error(CallErrorKind::Timeout)));
        assert_eq!(
            verdict(&host_error(CallErrorKind::Timeout), false),
            TaskStatus::Failed
        );
        assert_eq!(
            verdict(&host_error(CallErrorKind::Crashed), false),
            TaskStatus::Failed
        );
        assert_eq!(
            verdict(&host_error(CallErrorKind::Timeout), true),
            TaskStatus::Cancelled
        );
    }
}

//! The log lines of the attempts running on this host, as their plugins write them (plugin
//! ABI 1.5, through the call's `LogSink`): what the HTTP API's events stream shows of an
//! attempt before its logs are stored with its outcome.
//!
//! Bounded: one entry per attempt running on this host (at most `max_running`), each
//! holding what its call sends live (at most `max_log_bytes_per_call`, as the host counts
//! it) and, like the logs an attempt's outcome keeps, at most `max_result_bytes` of
//! messages. An entry goes when its attempt's outcome has been written (the stored logs
//! then hold its lines), so a reader never finds a line in neither place. On a fleet, only
//! the host running the attempt has its live lines.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use plugin_api::LogRecord;

use super::runner::lock;
use super::service::Tasks;
use super::task::TaskId;
use crate::types::live_log::LogSink;

/// Some live lines of the attempt running now: see [`Tasks::live_logs`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LiveLogs {
    /// The attempt they belong to (the task's `attempts` while it runs).
    pub attempt: u32,
    /// The index of the first of `lines` among the attempt's lines.
    pub first: usize,
    /// The lines, in the order they were written.
    pub lines: Vec<LogRecord>,
}

/// The live lines of the attempts running on this host, by task.
#[derive(Debug, Default)]
pub(super) struct LiveLines(Mutex<HashMap<TaskId, Attempt>>);

#[derive(Debug)]
struct Attempt {
    attempt: u32,
    lines: Vec<LogRecord>,
    /// Bytes of messages kept.
    bytes: usize,
    max_bytes: usize,
    /// A line did not fit: none after it is kept (the lines are a prefix of the attempt's).
    full: bool,
}

impl LiveLines {
    /// Keeps the live lines of `attempt` of task `id` until the guard is dropped, at most
    /// `max_bytes` of messages; the sink to hand its call.
    pub(super) fn begin(
        self: &Arc<LiveLines>,
        id: TaskId,
        attempt: u32,
        max_bytes: usize,
    ) -> (LiveGuard, LogSink) {
        lock(&self.0).insert(
            id,
            Attempt {
                attempt,
                lines: Vec::new(),
                bytes: 0,
                max_bytes,
                full: false,
            },
        );
        let lines = Arc::downgrade(self);
        let sink = LogSink::new(move |record| {
            if let Some(lines) = lines.upgrade() {
                lines.push(id, attempt, record);
            }
        });
        (
            LiveGuard {
                lines: self.clone(),
                id,
                attempt,
            },
            sink,
        )
    }

    fn push(&self, id: TaskId, attempt: u32, record: &LogRecord) {
        let mut attempts = lock(&self.0);
        let Some(entry) = attempts.get_mut(&id).filter(|e| e.attempt == attempt) else {
            return;
        };
        let bytes = entry.bytes.saturating_add(record.message.len());
        if entry.full || bytes > entry.max_bytes {
            entry.full = true;
            return;
        }
        entry.bytes = bytes;
        entry.lines.push(record.clone());
    }

    /// The lines of task `id`'s running attempt, from line `from` on if `after` names that
    /// attempt (`(attempt, from)`), else all of them.
    fn after(&self, id: TaskId, after: Option<(u32, usize)>) -> Option<LiveLogs> {
        let attempts = lock(&self.0);
        let entry = attempts.get(&id)?;
        let first = match after {
            Some((attempt, from)) if attempt == entry.attempt => from.min(entry.lines.len()),
            _ => 0,
        };
        Some(LiveLogs {
            attempt: entry.attempt,
            first,
            lines: entry.lines[first..].to_vec(),
        })
    }
}

/// Drops an attempt's live lines when it goes (after its outcome was written).
#[must_use = "the live lines go when it is dropped"]
pub(super) struct LiveGuard {
    lines: Arc<LiveLines>,
    id: TaskId,
    attempt: u32,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        let mut attempts = lock(&self.lines.0);
        if attempts
            .get(&self.id)
            .is_some_and(|e| e.attempt == self.attempt)
        {
            attempts.remove(&self.id);
        }
    }
}

impl Tasks {
    /// The log lines task `id`'s attempt running on this host has written so far, as its
    /// plugin wrote them (plugins of ABI 1.5 and later; an older plugin's lines come only
    /// with its outcome): `None` when no attempt of it runs here. With `after` =
    /// `(attempt, n)` naming the attempt running, only its lines from the `n`th on. Once
    /// the attempt's outcome is written, its lines are in the task's record instead.
    pub fn live_logs(&self, id: TaskId, after: Option<(u32, usize)>) -> Option<LiveLogs> {
        self.inner.live.after(id, after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_api::Level;

    fn line(message: &str) -> LogRecord {
        LogRecord {
            level: Level::Info,
            message: message.to_owned(),
            unix_ms: 1,
        }
    }

    #[test]
    fn an_attempts_lines_are_kept_bounded_while_it_runs_and_read_from_where_a_reader_was() {
        let live = Arc::new(LiveLines::default());
        let (guard, sink) = live.begin(7, 2, 10);
        let send = |message: &str| live.push(7, 2, &line(message));
        send("0123");
        send("4567");
        send("too long");
        send("89");
        let all = live.after(7, None).unwrap();
        assert_eq!((all.attempt, all.first), (2, 0));
        let messages: Vec<_> = all.lines.iter().map(|l| l.message.as_str()).collect();
        assert_eq!(messages, ["0123", "4567"], "a prefix, within max_bytes");
        let rest = live.after(7, Some((2, 1))).unwrap();
        assert_eq!((rest.first, rest.lines.len()), (1, 1));
        assert_eq!(
            live.after(7, Some((1, 1))).unwrap().first,
            0,
            "another attempt"
        );
        assert!(live.after(8, None).is_none());

        // A later attempt's lines replace them; the earlier guard leaves them alone.
        let (later, _) = live.begin(7, 3, 10);
        drop(guard);
        assert_eq!(live.after(7, None).unwrap().attempt, 3);
        drop(sink);
        drop(later);
        assert!(live.after(7, None).is_none(), "gone with its attempt");
    }
}

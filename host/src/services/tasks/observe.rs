//! What monitoring and the HTTP API read of the tasks beyond `service`: one task's record,
//! counts by status, how long the oldest due task has waited, the run time histogram, and
//! the reasons given for a cancel or a retry (kept as the task's notes).

use std::sync::Mutex;
use std::time::Duration;

use plugin_api::{Level, LogRecord};

use super::runner::{lock, now_ms, unavailable};
use super::service::Tasks;
use super::task::{TaskId, TaskRecord, TaskStatus};
use crate::types::call::CallError;

/// Upper bounds of the task run time histogram's buckets, in milliseconds (`+Inf` implied).
pub const RUN_TIME_BUCKETS_MS: [u64; 12] = [
    1, 5, 10, 50, 100, 500, 1_000, 5_000, 10_000, 60_000, 300_000, 3_600_000,
];

/// The longest reason kept, in characters.
const MAX_REASON: usize = 500;

/// How long task attempts ran: counts per bucket (not cumulative, `+Inf` last) and sum.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunTimes {
    /// Attempts per bucket of [`RUN_TIME_BUCKETS_MS`], then `+Inf`.
    pub buckets: Vec<u64>,
    /// All attempts' run time together, in milliseconds.
    pub sum_ms: u64,
}

/// The run time histogram the runner's workers feed.
#[derive(Debug, Default)]
pub(super) struct RunClock(Mutex<RunTimes>);

impl RunClock {
    pub(super) fn record(&self, ran: Duration) {
        let ms = u64::try_from(ran.as_millis()).unwrap_or(u64::MAX);
        let bucket = RUN_TIME_BUCKETS_MS
            .iter()
            .position(|&bound| ms <= bound)
            .unwrap_or(RUN_TIME_BUCKETS_MS.len());
        let mut times = lock(&self.0);
        if times.buckets.is_empty() {
            times.buckets = vec![0; RUN_TIME_BUCKETS_MS.len() + 1];
        }
        times.buckets[bucket] += 1;
        times.sum_ms = times.sum_ms.saturating_add(ms);
    }
}

impl Tasks {
    /// Task `id`'s record, without its follow-ups.
    pub fn get(&self, id: TaskId) -> Result<Option<TaskRecord>, CallError> {
        self.inner.store.get(id).map_err(unavailable)
    }

    /// Tasks by status (statuses with none may be left out).
    pub fn counts(&self) -> Result<Vec<(TaskStatus, u64)>, CallError> {
        self.inner.store.counts().map_err(unavailable)
    }

    /// How long the task due the longest has waited past its time, in milliseconds (0:
    /// none is due).
    pub fn oldest_due_ms(&self) -> Result<u64, CallError> {
        let store = &self.inner.store;
        let plugins = store.queued_plugins().map_err(unavailable)?;
        let due = store.next_due(&plugins).map_err(unavailable)?;
        Ok(due.map_or(0, |due| now_ms().saturating_sub(due)))
    }

    /// How long task attempts ran since the host started.
    pub fn run_times(&self) -> RunTimes {
        lock(&self.inner.run_clock.0).clone()
    }

    /// The notes kept on task `id` (reasons given for its cancels and retries), oldest
    /// first.
    pub fn notes(&self, id: TaskId) -> Result<Vec<LogRecord>, CallError> {
        self.inner.store.notes(id).map_err(unavailable)
    }

    /// [`Tasks::cancel`], keeping `reason` as a note on the task.
    pub fn cancel_because(&self, id: TaskId, reason: Option<&str>) -> Result<String, CallError> {
        let done = self.cancel(id)?;
        self.note(id, "cancel", reason);
        Ok(done)
    }

    /// [`Tasks::retry`], keeping `reason` as a note on the task.
    pub fn retry_because(&self, id: TaskId, reason: Option<&str>) -> Result<String, CallError> {
        let done = self.retry(id)?;
        self.note(id, "retry", reason);
        Ok(done)
    }

    fn note(&self, id: TaskId, what: &str, reason: Option<&str>) {
        let Some(reason) = reason.map(str::trim).filter(|r| !r.is_empty()) else {
            return;
        };
        let reason: String = reason.chars().take(MAX_REASON).collect();
        let record = LogRecord {
            level: Level::Info,
            message: format!("{what}: {reason}"),
            unix_ms: now_ms(),
        };
        if let Err(err) = self.inner.store.note(id, &record) {
            tracing::warn!("task {id}: the reason for its {what} was not kept: {err}");
        }
    }
}

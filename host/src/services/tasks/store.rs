//! The task store: the one narrow interface between the task runner and where tasks are
//! kept. [`SqliteStore`](super::SqliteStore) keeps them in one SQLite file; a store shared
//! by a fleet of hosts (PostgreSQL, claiming with `FOR UPDATE SKIP LOCKED`) implements the
//! same trait. Every method is one transaction, so that a host killed at any moment leaves
//! the store consistent: what was claimed and not finished is found `running` at the next
//! start, and queued again or, its attempts spent, failed ([`TaskStore::recover`]).

use std::fmt::Debug;

use plugin_api::LogRecord;

use super::task::{Finish, Insert, Inserted, TaskFilter, TaskId, TaskRecord, TaskStatus};

/// Why the store could not do what was asked: one line, naming the store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store failed or refused; trying again may succeed.
    #[error("{0}")]
    Failed(String),
    /// A write of an attempt (its outcome, retry or release) was refused because this host
    /// no longer holds the task's claim: its lease expired and another host took the task
    /// over (a store a fleet shares). Final: what the other host writes stands, and trying
    /// again cannot succeed. The task did not end here.
    #[error(
        "task {task}: host {host} lost its lease on it (another host took it over): {write} \
         refused"
    )]
    LeaseLost {
        /// The task.
        task: TaskId,
        /// This host's id in the fleet.
        host: String,
        /// The write refused: `its outcome`, `its retry`, `its release`.
        write: &'static str,
    },
}

/// What [`TaskStore::recover`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Tasks queued again.
    pub queued: u64,
    /// Tasks failed: their attempts were spent.
    pub failed: u64,
}

/// Where tasks are kept. Implementations are shared by the runner's threads.
pub trait TaskStore: Send + Sync + Debug {
    /// Adds tasks in one transaction, each unless its key is queued or running already
    /// ([`Inserted::Duplicate`], naming that task), or, with an age, succeeded within it
    /// (recorded as a `skipped` task). An [`Insert`] with `refused` set is recorded as
    /// `refused`, whatever its key. The answers are in the order of `tasks`.
    fn insert(&self, tasks: &[Insert]) -> Result<Vec<Inserted>, StoreError>;

    /// Takes up to `limit` queued tasks due at `now_unix_ms` (their `not_before` passed),
    /// highest priority first, then the longest due, then the oldest, of the plugins in
    /// `only` (those served and with room to run more); marks them `running`, counts an
    /// attempt and sets their start time. The tasks of other plugins stay queued.
    fn claim(
        &self,
        now_unix_ms: u64,
        limit: usize,
        only: &[String],
    ) -> Result<Vec<TaskRecord>, StoreError>;

    /// When the next queued task of a plugin in `only` is due; `None` when none is queued.
    fn next_due(&self, only: &[String]) -> Result<Option<u64>, StoreError>;

    /// Records how a running task's attempt ended, for good, and inserts the follow-ups its
    /// call asked for (as [`TaskStore::insert`] does, answering in their order), in one
    /// transaction: either both are recorded or neither. A shared store refuses it with
    /// [`StoreError::LeaseLost`] once another host took the task over (the same for
    /// [`release`](TaskStore::release) and [`retry_later`](TaskStore::retry_later)).
    fn finish(
        &self,
        id: TaskId,
        finish: &Finish,
        follow_ups: &[Insert],
    ) -> Result<Vec<Inserted>, StoreError>;

    /// Gives a claimed task back: queued again as it was, its attempt not counted (its
    /// plugin was unloaded between the claim and the call).
    fn release(&self, id: TaskId) -> Result<(), StoreError>;

    /// A running task's attempt failed and it has attempts left: queued again, due at
    /// `not_before_unix_ms`, with the attempt's error and logs kept.
    fn retry_later(
        &self,
        id: TaskId,
        not_before_unix_ms: u64,
        failed: &Finish,
    ) -> Result<(), StoreError>;

    /// Deals with every task found `running`: they were running when the host that ran them
    /// stopped (it died, maybe because of the task). The interrupted attempt counts: a task
    /// with attempts left is queued again (tasks run at least once); one without is `failed`
    /// at `now_unix_ms`, with "the host stopped during this attempt N times".
    fn recover(&self, now_unix_ms: u64) -> Result<Recovered, StoreError>;

    /// The plugins with queued tasks, by name.
    fn queued_plugins(&self) -> Result<Vec<String>, StoreError>;

    /// Fails, at `now_unix_ms` with `error`, the queued tasks of `plugin` due at
    /// `due_before_unix_ms` or before (a plugin not served for too long). Returns how many.
    fn fail_queued(
        &self,
        plugin: &str,
        due_before_unix_ms: u64,
        error: &str,
        now_unix_ms: u64,
    ) -> Result<u64, StoreError>;

    /// The task `id`.
    fn get(&self, id: TaskId) -> Result<Option<TaskRecord>, StoreError>;

    /// The tasks `parent`'s call asked for, oldest first.
    fn children(&self, parent: TaskId) -> Result<Vec<TaskRecord>, StoreError>;

    /// Tasks matching `filter`, newest first (at most `filter.limit`, 1,000 when 0).
    fn list(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>, StoreError>;

    /// Cancels task `id` if it is queued; returns the status it had (`None`: no such task).
    /// A running task is left as it is: its runner cancels its call.
    fn cancel(&self, id: TaskId, now_unix_ms: u64) -> Result<Option<TaskStatus>, StoreError>;

    /// Queues a task that has ended (any final status) again, due now, with its attempts
    /// reset; returns the status it had (`None`: no such task). An active one is left as it
    /// is. Fails if another task with its key is active.
    fn requeue(&self, id: TaskId, now_unix_ms: u64) -> Result<Option<TaskStatus>, StoreError>;

    /// Active (queued or running) tasks of `plugin`.
    fn active(&self, plugin: &str) -> Result<u64, StoreError>;

    /// When schedule `name` last fired (milliseconds since the Unix epoch).
    fn last_fired(&self, name: &str) -> Result<Option<u64>, StoreError>;

    /// Notes that schedule `name` fired at `at_unix_ms`.
    fn set_last_fired(&self, name: &str, at_unix_ms: u64) -> Result<(), StoreError>;

    /// Keeps a note on task `id` (the reason given for a cancel or a retry), apart from
    /// its logs, which each attempt replaces; at most the newest 20 per task are kept.
    /// Whether the task exists. A store that cannot keep notes says so.
    fn note(&self, id: TaskId, record: &LogRecord) -> Result<bool, StoreError> {
        let _ = (id, record);
        Err(StoreError::Failed("this task store keeps no notes".into()))
    }

    /// Task `id`'s notes, oldest first.
    fn notes(&self, id: TaskId) -> Result<Vec<LogRecord>, StoreError> {
        let _ = id;
        Ok(Vec::new())
    }

    /// How many tasks are in each status (statuses with none may be left out). By default
    /// counted by listing, at most 1,000 per status: a store should answer it in one query.
    fn counts(&self) -> Result<Vec<(TaskStatus, u64)>, StoreError> {
        TaskStatus::ALL
            .into_iter()
            .map(|status| {
                let filter = TaskFilter {
                    status: Some(status),
                    limit: 1000,
                    ..TaskFilter::default()
                };
                Ok((status, self.list(&filter)?.len() as u64))
            })
            .collect()
    }

    /// Deletes ended tasks that ended before `before_unix_ms`, and the oldest ended ones
    /// beyond the newest `keep_max`; active tasks are never deleted. Returns how many.
    fn prune(&self, before_unix_ms: u64, keep_max: u64) -> Result<u64, StoreError>;

    /// Fires schedule `name` at its due time `due_unix_ms`: inserts `task` (as
    /// [`insert`](TaskStore::insert)) if this host is the one that fires it, `None` if
    /// another host did. A store shared by a fleet fires each due time on one host only,
    /// and records the firing and inserts the task in one transaction (a firing is never
    /// recorded without its task); a store of one host always fires.
    fn insert_firing(
        &self,
        name: &str,
        due_unix_ms: u64,
        task: &Insert,
    ) -> Result<Option<Inserted>, StoreError> {
        let _ = (name, due_unix_ms);
        Ok(self.insert(std::slice::from_ref(task))?.first().copied())
    }

    /// Gives the store what wakes the runner when another host queues a task (a shared
    /// store's notifications); a store of one host has no use for it.
    fn set_waker(&self, wake: std::sync::Arc<dyn Fn() + Send + Sync>) {
        drop(wake);
    }

    /// The id of this host as the store records it on the tasks it runs (`None`: the
    /// store does not record hosts).
    fn host_id(&self) -> Option<String> {
        None
    }
}

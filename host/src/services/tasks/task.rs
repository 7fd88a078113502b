//! The task model: what a task is (a call with options), the states it goes through, and
//! the records the store keeps of it.

use serde::{Deserialize, Serialize};

use plugin_api::LogRecord;

/// A task's number, unique in its store.
pub type TaskId = i64;

/// Where a task is in its life. `queued` and `running` are *active*; the others are final,
/// until `host retry` queues a task again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TaskStatus {
    /// Waiting for its time (`not_before`) or for a free slot.
    Queued,
    /// Its call is running.
    Running,
    /// Its call succeeded.
    Success,
    /// Its call failed on every attempt it had.
    Failed,
    /// It can never succeed as given: its input was refused as invalid, or its callback
    /// was unknown on every attempt it had. (A plugin not served is waited for, up to
    /// `orphan_after`; then the task is `failed`.)
    Bad,
    /// Not run: a task with its key succeeded within its `age`.
    Skipped,
    /// Not queued: a follow-up over one of the limits that stop runaway chains.
    Refused,
    /// Cancelled (`host cancel`) before it finished.
    Cancelled,
}

impl TaskStatus {
    /// Every status, in the order of a task's life.
    pub const ALL: [TaskStatus; 8] = [
        TaskStatus::Queued,
        TaskStatus::Running,
        TaskStatus::Success,
        TaskStatus::Failed,
        TaskStatus::Bad,
        TaskStatus::Skipped,
        TaskStatus::Refused,
        TaskStatus::Cancelled,
    ];

    /// Its name: `queued`, `running`, `success` ...
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Queued => "queued",
            TaskStatus::Running => "running",
            TaskStatus::Success => "success",
            TaskStatus::Failed => "failed",
            TaskStatus::Bad => "bad",
            TaskStatus::Skipped => "skipped",
            TaskStatus::Refused => "refused",
            TaskStatus::Cancelled => "cancelled",
        }
    }

    /// The status named `name`; `active` is not one (it is `queued` or `running`).
    pub fn parse(name: &str) -> Option<TaskStatus> {
        TaskStatus::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Queued or running.
    pub fn is_active(self) -> bool {
        matches!(self, TaskStatus::Queued | TaskStatus::Running)
    }
}

impl std::fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a task is to be run. Every field is optional; what is not given comes from the
/// plugin's settings, then the host's (`[tasks]` in host.toml).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct TaskOptions {
    /// What makes two tasks the same: a key queued or running is not queued twice.
    /// Default: a hash of plugin, callback and input.
    pub key: Option<String>,
    /// Higher runs first among the tasks due (default 0).
    pub priority: i64,
    /// Attempts before the task is `failed` (the first run included).
    pub max_attempts: Option<u32>,
    /// Delays before each retry, in milliseconds; the last one repeats.
    pub retry_delays_ms: Option<Vec<u64>>,
    /// Not run before this time, in milliseconds since the Unix epoch.
    pub not_before_unix_ms: Option<u64>,
    /// If a task with the same key succeeded this recently (milliseconds), this one is
    /// recorded as `skipped` instead of run.
    pub age_ms: Option<u64>,
}

/// A task to submit: a call and its options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NewTask {
    /// The plugin to call.
    pub plugin: String,
    /// The callback (`execute` for the entry point).
    pub callback: String,
    /// Its input, as JSON text.
    pub input: String,
    /// How to run it.
    #[serde(default)]
    pub options: TaskOptions,
}

impl NewTask {
    /// A task calling `plugin`'s `callback` with JSON `input`, with default options.
    pub fn new(plugin: &str, callback: &str, input: &str) -> NewTask {
        NewTask {
            plugin: plugin.to_owned(),
            callback: callback.to_owned(),
            input: input.to_owned(),
            options: TaskOptions::default(),
        }
    }
}

/// A task as the store is to insert it: every option resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    /// The plugin to call.
    pub plugin: String,
    /// The callback.
    pub callback: String,
    /// Its input, as JSON text.
    pub input: String,
    /// Its deduplication key (never empty).
    pub key: String,
    /// Higher runs first.
    pub priority: i64,
    /// Attempts before `failed` (at least 1).
    pub max_attempts: u32,
    /// Delays before each retry, in milliseconds; the last one repeats (may be empty: no
    /// delay).
    pub retry_delays_ms: Vec<u64>,
    /// Not run before this time (milliseconds since the Unix epoch).
    pub not_before_unix_ms: u64,
    /// With a key that succeeded within this many milliseconds, recorded as `skipped`.
    pub age_ms: Option<u64>,
    /// The task whose call asked for this one.
    pub parent: Option<TaskId>,
    /// 0 for a submitted task, the parent's depth + 1 for a follow-up.
    pub depth: u32,
    /// The schedule that made it, if one did.
    pub schedule: Option<String>,
    /// When it was made (milliseconds since the Unix epoch).
    pub created_unix_ms: u64,
    /// `Some(reason)`: recorded as `refused` with this error, never queued (a follow-up
    /// over a limit).
    pub refused: Option<String>,
}

/// What inserting a task did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome", content = "id")]
pub enum Inserted {
    /// Queued as this new task.
    Queued(TaskId),
    /// Not queued: this task, with the same key, is queued or running.
    Duplicate(TaskId),
    /// Recorded as this `skipped` task: its key succeeded within its age.
    Skipped(TaskId),
    /// Recorded as this `refused` task.
    Refused(TaskId),
}

impl Inserted {
    /// The task it names.
    pub fn id(self) -> TaskId {
        match self {
            Inserted::Queued(id)
            | Inserted::Duplicate(id)
            | Inserted::Skipped(id)
            | Inserted::Refused(id) => id,
        }
    }
}

/// Everything the store keeps of one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TaskRecord {
    /// Its number.
    pub id: TaskId,
    /// The plugin it calls.
    pub plugin: String,
    /// The callback it calls.
    pub callback: String,
    /// Its input, as JSON text.
    pub input: String,
    /// Its deduplication key.
    pub key: String,
    /// Its priority.
    pub priority: i64,
    /// Where it is.
    pub status: TaskStatus,
    /// Attempts made (a running one counts).
    pub attempts: u32,
    /// Attempts it may make.
    pub max_attempts: u32,
    /// Delays before each retry, in milliseconds; the last one repeats.
    pub retry_delays_ms: Vec<u64>,
    /// Not run before this time (milliseconds since the Unix epoch): for a queued task,
    /// when it is due.
    pub not_before_unix_ms: u64,
    /// When it was made.
    pub created_unix_ms: u64,
    /// When its last attempt started.
    pub started_unix_ms: Option<u64>,
    /// When it ended (success, failed, bad, skipped, refused, cancelled).
    pub finished_unix_ms: Option<u64>,
    /// Its call's result, as JSON text (bounded: see `max_result_bytes`).
    pub result: Option<String>,
    /// Why its last attempt failed, or why it was not run.
    pub error: Option<String>,
    /// What its last attempt logged (bounded).
    pub logs: Vec<LogRecord>,
    /// The task whose call asked for this one.
    pub parent: Option<TaskId>,
    /// How many follow-ups deep it is (0: submitted).
    pub depth: u32,
    /// The schedule that made it.
    pub schedule: Option<String>,
    /// The plugin generation that ran its last attempt.
    pub generation: Option<u64>,
    /// The id of the host that ran its last attempt (a fleet's host id; on SQLite, this
    /// host's), once it ran.
    #[serde(default)]
    pub host: Option<String>,
}

/// How an attempt ended, for the store to record.
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    /// `success`, `failed`, `bad` or `cancelled`.
    pub status: TaskStatus,
    /// The call's result, JSON text (bounded by the caller).
    pub result: Option<String>,
    /// The error (bounded by the caller).
    pub error: Option<String>,
    /// What the call logged (bounded by the caller).
    pub logs: Vec<LogRecord>,
    /// When it ended.
    pub finished_unix_ms: u64,
    /// The generation that ran it.
    pub generation: Option<u64>,
}

/// Which tasks to list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct TaskFilter {
    /// Only tasks in this status.
    pub status: Option<TaskStatus>,
    /// Only tasks of this plugin.
    pub plugin: Option<String>,
    /// Only tasks made at or after this time (milliseconds since the Unix epoch).
    pub since_unix_ms: Option<u64>,
    /// At most this many, newest first (0: the store's default, 1,000). The host answers
    /// at most `list_page_max` (1,000) at once: the rest come in further pages.
    pub limit: usize,
    /// Only tasks older than this one: the cursor where the last page ended (`next`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<TaskId>,
}

/// A page of tasks, newest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TaskPage {
    /// The tasks.
    pub tasks: Vec<TaskRecord>,
    /// More tasks match: list again with `before` set to this for the next page.
    pub next: Option<TaskId>,
}

//! Inserting tasks: deduplication by key among the active tasks, and `age` (a key that
//! succeeded recently is recorded as skipped).

use rusqlite::{params, Connection, OptionalExtension};

use super::super::task::{Insert, Inserted, TaskId, TaskStatus};
use super::error::Fail;
use super::row::to_i64;

/// The last task with key `?1` that succeeded at `?2` or after.
pub(super) const LAST_SUCCESS: &str = "SELECT id, finished FROM tasks \
     WHERE key = ?1 AND status = 'success' AND finished >= ?2 \
     ORDER BY finished DESC LIMIT 1";

/// The active task with key `?1`.
pub(super) const ACTIVE_WITH_KEY: &str =
    "SELECT id FROM tasks WHERE key = ?1 AND status IN ('queued', 'running')";

/// Inserts one task of a `TaskStore::insert` batch.
pub(super) fn insert_one(c: &Connection, task: &Insert) -> Result<Inserted, Fail> {
    if let Some(reason) = &task.refused {
        let id = insert_row(c, task, TaskStatus::Refused, Some(reason))?;
        return Ok(Inserted::Refused(id));
    }
    if let Some(id) = active_with_key(c, &task.key)? {
        return Ok(Inserted::Duplicate(id));
    }
    if let Some(age) = task.age_ms {
        let since = task.created_unix_ms.saturating_sub(age);
        let succeeded = c
            .prepare_cached(LAST_SUCCESS)?
            .query_row(params![task.key, to_i64(since)], |row| {
                Ok((row.get::<_, TaskId>(0)?, row.get::<_, u64>(1)?))
            })
            .optional()?;
        if let Some((done, finished)) = succeeded {
            let ago = task.created_unix_ms.saturating_sub(finished);
            let error = format!(
                "skipped: task {done} with key {} succeeded {ago} ms ago (age {age} ms)",
                task.key
            );
            let id = insert_row(c, task, TaskStatus::Skipped, Some(&error))?;
            return Ok(Inserted::Skipped(id));
        }
    }
    let id = insert_row(c, task, TaskStatus::Queued, None)?;
    Ok(Inserted::Queued(id))
}

/// Inserts `task` as a new row in `status`; a final one ends when it is made.
fn insert_row(
    c: &Connection,
    task: &Insert,
    status: TaskStatus,
    error: Option<&str>,
) -> Result<TaskId, Fail> {
    let created = to_i64(task.created_unix_ms);
    let finished = (!status.is_active()).then_some(created);
    let delays = serde_json::to_string(&task.retry_delays_ms)?;
    c.prepare_cached(
        "INSERT INTO tasks (plugin, callback, input, key, priority, status, attempts, \
         max_attempts, retry_delays_ms, not_before, created, finished, error, logs, parent, \
         depth, schedule) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?8, ?9, ?10, ?11, ?12, '[]', ?13, ?14, ?15)",
    )?
    .execute(params![
        task.plugin,
        task.callback,
        task.input,
        task.key,
        task.priority,
        status.as_str(),
        task.max_attempts,
        delays,
        to_i64(task.not_before_unix_ms),
        created,
        finished,
        error,
        task.parent,
        task.depth,
        task.schedule,
    ])?;
    Ok(c.last_insert_rowid())
}

/// The active (queued or running) task with `key`.
pub(super) fn active_with_key(c: &Connection, key: &str) -> Result<Option<TaskId>, Fail> {
    let id = c
        .prepare_cached(ACTIVE_WITH_KEY)?
        .query_row([key], |row| row.get(0))
        .optional()?;
    Ok(id)
}

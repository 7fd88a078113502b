//! What an operator does to one task: cancel it while it is queued, queue it again once it
//! has ended.

use plugin_api::{Level, LogRecord};
use rusqlite::{params, Connection, OptionalExtension};

use super::super::task::{TaskId, TaskStatus};
use super::error::Fail;
use super::insert::active_with_key;
use super::outcome::status_of;
use super::row::{status_column, to_i64};

/// Cancels task `id` if it is queued; the status it had.
pub(super) fn cancel(
    c: &Connection,
    id: TaskId,
    now_unix_ms: u64,
) -> Result<Option<TaskStatus>, Fail> {
    let Some(status) = status_of(c, id)? else {
        return Ok(None);
    };
    if status == TaskStatus::Queued {
        c.prepare_cached("UPDATE tasks SET status = 'cancelled', finished = ?2 WHERE id = ?1")?
            .execute(params![id, to_i64(now_unix_ms)])?;
    }
    Ok(Some(status))
}

/// Queues task `id` again if it has ended; the status it had.
pub(super) fn requeue(
    c: &Connection,
    id: TaskId,
    now_unix_ms: u64,
) -> Result<Option<TaskStatus>, Fail> {
    let found = c
        .prepare_cached("SELECT status, key FROM tasks WHERE id = ?1")?
        .query_row([id], |row| {
            Ok((status_column(row, 0)?, row.get::<_, String>(1)?))
        })
        .optional()?;
    let Some((status, key)) = found else {
        return Ok(None);
    };
    if status.is_active() {
        return Ok(Some(status));
    }
    if let Some(other) = active_with_key(c, &key)? {
        return Err(Fail::Whole(format!(
            "task {id} cannot be queued again: task {other} with key {key} is active"
        )));
    }
    c.prepare_cached(
        "UPDATE tasks SET status = 'queued', attempts = 0, interrupted = 0, not_before = ?2, \
         finished = NULL, result = NULL, error = NULL, logs = '[]' WHERE id = ?1",
    )?
    .execute(params![id, to_i64(now_unix_ms)])?;
    Ok(Some(status))
}

/// Notes kept per task: the newest.
const MAX_NOTES: i64 = 20;

/// Keeps a note on task `id`, and the newest [`MAX_NOTES`] of its notes; whether the task
/// exists.
pub(super) fn note(c: &Connection, id: TaskId, record: &LogRecord) -> Result<bool, Fail> {
    if status_of(c, id)?.is_none() {
        return Ok(false);
    }
    c.prepare_cached("INSERT INTO task_notes (task, at, message) VALUES (?1, ?2, ?3)")?
        .execute(params![id, to_i64(record.unix_ms), record.message])?;
    c.prepare_cached(
        "DELETE FROM task_notes WHERE task = ?1 AND rowid NOT IN \
         (SELECT rowid FROM task_notes WHERE task = ?1 ORDER BY rowid DESC LIMIT ?2)",
    )?
    .execute(params![id, MAX_NOTES])?;
    Ok(true)
}

/// Task `id`'s notes, oldest first.
pub(super) fn notes(c: &Connection, id: TaskId) -> Result<Vec<LogRecord>, Fail> {
    let mut statement =
        c.prepare_cached("SELECT at, message FROM task_notes WHERE task = ?1 ORDER BY rowid")?;
    let rows = statement.query_map([id], |row| {
        Ok(LogRecord {
            level: Level::Info,
            unix_ms: u64::try_from(row.get::<_, i64>(0)?).unwrap_or(0),
            message: row.get(1)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Tasks by status.
pub(super) fn counts(c: &Connection) -> Result<Vec<(TaskStatus, u64)>, Fail> {
    let mut statement = c.prepare_cached("SELECT status, count(*) FROM tasks GROUP BY status")?;
    let rows = statement.query_map([], |row| {
        Ok((status_column(row, 0)?, row.get::<_, i64>(1)?))
    })?;
    let mut counts = Vec::new();
    for row in rows {
        let (status, n) = row?;
        counts.push((status, u64::try_from(n).unwrap_or(0)));
    }
    Ok(counts)
}

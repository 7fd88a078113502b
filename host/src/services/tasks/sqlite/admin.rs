//! What an operator does to one task: cancel it while it is queued, queue it again once it
//! has ended.

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

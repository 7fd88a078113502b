//! How a running task's attempt ended: for good (`finish`), or queued again for a retry.

use rusqlite::{params, Connection, OptionalExtension};

use super::super::task::{Finish, TaskId, TaskStatus};
use super::error::Fail;
use super::row::{status_column, to_i64};

/// Records how running task `id`'s attempt ended, for good.
pub(super) fn finish(c: &Connection, id: TaskId, finish: &Finish) -> Result<(), Fail> {
    let logs = serde_json::to_string(&finish.logs)?;
    let changed = c
        .prepare_cached(
            "UPDATE tasks SET status = ?2, result = ?3, error = ?4, logs = ?5, \
             finished = ?6, generation = ?7 WHERE id = ?1 AND status = 'running'",
        )?
        .execute(params![
            id,
            finish.status.as_str(),
            finish.result,
            finish.error,
            logs,
            to_i64(finish.finished_unix_ms),
            finish.generation.map(to_i64),
        ])?;
    if changed == 0 {
        return Err(not_running(c, id));
    }
    Ok(())
}

/// Queues running task `id` again, due at `not_before`, its failed attempt's error and
/// logs kept.
pub(super) fn retry_later(
    c: &Connection,
    id: TaskId,
    not_before_unix_ms: u64,
    failed: &Finish,
) -> Result<(), Fail> {
    let logs = serde_json::to_string(&failed.logs)?;
    let changed = c
        .prepare_cached(
            "UPDATE tasks SET status = 'queued', not_before = ?2, error = ?3, logs = ?4, \
             generation = ?5, finished = NULL WHERE id = ?1 AND status = 'running'",
        )?
        .execute(params![
            id,
            to_i64(not_before_unix_ms),
            failed.error,
            logs,
            failed.generation.map(to_i64),
        ])?;
    if changed == 0 {
        return Err(not_running(c, id));
    }
    Ok(())
}

/// The status of task `id`.
pub(super) fn status_of(c: &Connection, id: TaskId) -> Result<Option<TaskStatus>, Fail> {
    let status = c
        .prepare_cached("SELECT status FROM tasks WHERE id = ?1")?
        .query_row([id], |row| status_column(row, 0))
        .optional()?;
    Ok(status)
}

/// Why task `id` could not be updated as a running one.
pub(super) fn not_running(c: &Connection, id: TaskId) -> Fail {
    match status_of(c, id) {
        Ok(None) => Fail::Msg("no such task".to_owned()),
        Ok(Some(status)) => Fail::Msg(format!("it is {status}, not running")),
        Err(fail) => fail,
    }
}

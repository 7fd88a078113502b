//! A task's row: the columns of a [`TaskRecord`] and how they are read back.

use rusqlite::types::Type;
use rusqlite::Row;
use serde::de::DeserializeOwned;

use super::super::task::{TaskRecord, TaskStatus};

/// The columns of a [`TaskRecord`], in the order [`record`] reads them.
macro_rules! task_columns {
    () => {
        "id, plugin, callback, input, key, priority, status, attempts, max_attempts, \
         retry_delays_ms, not_before, created, started, finished, result, error, logs, \
         parent, depth, schedule, generation"
    };
}

/// A time (or any `u64`) as SQLite stores it; beyond `i64::MAX` (never, for a time) it
/// saturates, which keeps the order.
pub(super) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(super) fn status_column(row: &Row<'_>, idx: usize) -> rusqlite::Result<TaskStatus> {
    let name = row.get_ref(idx)?.as_str()?;
    TaskStatus::parse(name).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            idx,
            Type::Text,
            format!("unknown task status {name:?}").into(),
        )
    })
}

pub(super) fn json_column<T: DeserializeOwned>(row: &Row<'_>, idx: usize) -> rusqlite::Result<T> {
    let text = row.get_ref(idx)?.as_str()?;
    serde_json::from_str(text)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, Box::new(e)))
}

/// A task from a row of [`task_columns!`].
pub(super) fn record(row: &Row<'_>) -> rusqlite::Result<TaskRecord> {
    Ok(TaskRecord {
        id: row.get(0)?,
        plugin: row.get(1)?,
        callback: row.get(2)?,
        input: row.get(3)?,
        key: row.get(4)?,
        priority: row.get(5)?,
        status: status_column(row, 6)?,
        attempts: row.get(7)?,
        max_attempts: row.get(8)?,
        retry_delays_ms: json_column(row, 9)?,
        not_before_unix_ms: row.get(10)?,
        created_unix_ms: row.get(11)?,
        started_unix_ms: row.get(12)?,
        finished_unix_ms: row.get(13)?,
        result: row.get(14)?,
        error: row.get(15)?,
        logs: json_column(row, 16)?,
        parent: row.get(17)?,
        depth: row.get(18)?,
        schedule: row.get(19)?,
        generation: row.get(20)?,
        host: None,
    })
}

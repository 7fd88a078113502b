//! A task's row on PostgreSQL: the columns of a [`TaskRecord`] and how they are read back.

use tokio_postgres::Row;

use super::super::task::{TaskRecord, TaskStatus};
use crate::services::postgres::PgError;

/// The columns of a [`TaskRecord`], in the order [`record`] reads them (prefixed `t.`).
macro_rules! pg_task_columns {
    () => {
        "t.id, t.plugin, t.callback, t.input, t.key, t.priority, t.status, t.attempts, \
         t.max_attempts, t.retry_delays_ms, t.not_before, t.created, t.started, t.finished, \
         t.result, t.error, t.logs, t.parent, t.depth, t.schedule, t.generation, t.host_id"
    };
}

/// A `u64` (a time, a count) as PostgreSQL's `bigint`, saturating.
pub(super) fn big(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn unsigned(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// A task from a row of [`pg_task_columns!`].
pub(super) fn record(row: &Row) -> Result<TaskRecord, PgError> {
    record_at(row, 0)
}

/// A task from a row whose [`pg_task_columns!`] start at column `o`.
pub(super) fn record_at(row: &Row, o: usize) -> Result<TaskRecord, PgError> {
    let bad = |what: &str, detail: String| {
        PgError::Statement(format!(
            "task {}: its {what} cannot be read: {detail}",
            row.get::<_, i64>(o)
        ))
    };
    let status: String = row.get(o + 6);
    let status = TaskStatus::parse(&status).ok_or_else(|| bad("status", format!("{status:?}")))?;
    let delays: String = row.get(o + 9);
    let logs: String = row.get(o + 16);
    Ok(TaskRecord {
        id: row.get(o),
        plugin: row.get(o + 1),
        callback: row.get(o + 2),
        input: row.get(o + 3),
        key: row.get(o + 4),
        priority: row.get(o + 5),
        status,
        attempts: u32::try_from(row.get::<_, i32>(o + 7)).unwrap_or(0),
        max_attempts: u32::try_from(row.get::<_, i32>(o + 8)).unwrap_or(0),
        retry_delays_ms: serde_json::from_str(&delays)
            .map_err(|err| bad("retry_delays_ms", err.to_string()))?,
        not_before_unix_ms: unsigned(row.get(o + 10)),
        created_unix_ms: unsigned(row.get(o + 11)),
        started_unix_ms: row.get::<_, Option<i64>>(o + 12).map(unsigned),
        finished_unix_ms: row.get::<_, Option<i64>>(o + 13).map(unsigned),
        result: row.get(o + 14),
        error: row.get(o + 15),
        logs: serde_json::from_str(&logs).map_err(|err| bad("logs", err.to_string()))?,
        parent: row.get(o + 17),
        depth: u32::try_from(row.get::<_, i32>(o + 18)).unwrap_or(0),
        schedule: row.get(o + 19),
        generation: row.get::<_, Option<i64>>(o + 20).map(unsigned),
        host: row.get(o + 21),
    })
}

/// Rows of [`pg_task_columns!`] as records.
pub(super) fn records(rows: &[Row]) -> Result<Vec<TaskRecord>, PgError> {
    rows.iter().map(record).collect()
}

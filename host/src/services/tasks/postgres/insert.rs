//! Inserting tasks: deduplication by the unique index on the active keys (`ON CONFLICT DO
//! NOTHING`), age, refusals; every insert transaction that queues a task notifies the
//! fleet's idle hosts.

use deadpool_postgres::GenericClient;

use super::super::task::{Insert, Inserted, TaskId, TaskStatus};
use super::row::big;
use super::store::pg;
use crate::services::postgres::PgError;

const INSERT: &str = "INSERT INTO tasks (plugin, callback, input, key, priority, status, \
     max_attempts, retry_delays_ms, not_before, created, finished, error, parent, depth, \
     schedule) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
     ON CONFLICT (key) WHERE status IN ('queued', 'running') DO NOTHING RETURNING id";

const ACTIVE_WITH_KEY: &str =
    "SELECT id FROM tasks WHERE key = $1 AND status IN ('queued', 'running')";

const LAST_SUCCESS: &str = "SELECT id, finished FROM tasks \
     WHERE key = $1 AND status = 'success' AND finished >= $2 \
     ORDER BY finished DESC LIMIT 1";

/// Inserts `tasks` on `c` (in the caller's transaction); whether one was queued (then the
/// caller notifies).
pub(super) async fn insert_all<C: GenericClient>(
    c: &C,
    tasks: &[Insert],
) -> Result<(Vec<Inserted>, bool), PgError> {
    let mut answers = Vec::with_capacity(tasks.len());
    let mut queued = false;
    for task in tasks {
        let answer = insert_one(c, task).await?;
        queued |= matches!(answer, Inserted::Queued(_));
        answers.push(answer);
    }
    Ok((answers, queued))
}

async fn insert_one<C: GenericClient>(c: &C, task: &Insert) -> Result<Inserted, PgError> {
    let what = "insert a task";
    if let Some(reason) = &task.refused {
        let id = insert_row(c, task, TaskStatus::Refused, Some(reason)).await?;
        return Ok(Inserted::Refused(id.unwrap_or_default()));
    }
    if let Some(age) = task.age_ms {
        let since = task.created_unix_ms.saturating_sub(age);
        let row = c
            .query_opt(LAST_SUCCESS, &[&task.key, &big(since)])
            .await
            .map_err(pg(what))?;
        if let Some(row) = row {
            let done: TaskId = row.get(0);
            let finished: i64 = row.get(1);
            let ago = task
                .created_unix_ms
                .saturating_sub(u64::try_from(finished).unwrap_or(0));
            let error = format!(
                "skipped: task {done} with key {} succeeded {ago} ms ago (age {age} ms)",
                task.key
            );
            let id = insert_row(c, task, TaskStatus::Skipped, Some(&error)).await?;
            return Ok(Inserted::Skipped(id.unwrap_or_default()));
        }
    }
    // A race with another host inserting the same key: the index refuses one, which then
    // finds the other's.
    for _ in 0..3 {
        if let Some(id) = insert_row(c, task, TaskStatus::Queued, None).await? {
            return Ok(Inserted::Queued(id));
        }
        if let Some(row) = c
            .query_opt(ACTIVE_WITH_KEY, &[&task.key])
            .await
            .map_err(pg(what))?
        {
            return Ok(Inserted::Duplicate(row.get(0)));
        }
    }
    Err(PgError::Statement(format!(
        "insert a task with key {}: the key stays taken and its task cannot be found",
        task.key
    )))
}

async fn insert_row<C: GenericClient>(
    c: &C,
    task: &Insert,
    status: TaskStatus,
    error: Option<&str>,
) -> Result<Option<TaskId>, PgError> {
    let what = "insert a task";
    let created = big(task.created_unix_ms);
    let finished = (!status.is_active()).then_some(created);
    let delays = serde_json::to_string(&task.retry_delays_ms).unwrap_or_else(|_| "[]".into());
    let max_attempts = i32::try_from(task.max_attempts).unwrap_or(i32::MAX);
    let depth = i32::try_from(task.depth).unwrap_or(i32::MAX);
    let row = c
        .query_opt(
            INSERT,
            &[
                &task.plugin,
                &task.callback,
                &task.input,
                &task.key,
                &task.priority,
                &status.as_str(),
                &max_attempts,
                &delays,
                &big(task.not_before_unix_ms),
                &created,
                &finished,
                &error,
                &task.parent,
                &depth,
                &task.schedule,
            ],
        )
        .await
        .map_err(pg(what))?;
    Ok(row.map(|r| r.get(0)))
}

/// Wakes the fleet's idle hosts (delivered when the transaction commits).
pub(super) async fn notify<C: GenericClient>(c: &C) -> Result<(), PgError> {
    c.execute("SELECT pg_notify('host_tasks', '')", &[])
        .await
        .map_err(pg("notify the fleet"))?;
    Ok(())
}

//! Claiming due tasks (highest priority, then the longest due, then the oldest), when the
//! next one is due, and recovering those a stopped host left running.

use rusqlite::{params, Connection, OptionalExtension};

use super::super::store::Recovered;
use super::super::task::{TaskId, TaskRecord};
use super::error::Fail;
use super::outcome::not_running;
use super::row::record;

// The statements of the hot paths, and of those that must not scan every task kept:
// `the_statements_use_their_indexes` checks their plans.

/// The highest priority of a queued task.
pub(super) const TOP_PRIORITY: &str = "SELECT priority FROM tasks INDEXED BY tasks_queued \
     WHERE status = 'queued' ORDER BY priority DESC LIMIT 1";

/// The queued tasks of priority `?1` due at `?2`, in the order they are claimed.
pub(super) const DUE_OF_PRIORITY: &str = "SELECT id, plugin FROM tasks INDEXED BY tasks_queued \
     WHERE status = 'queued' AND priority = ?1 AND not_before <= ?2 \
     ORDER BY not_before, id";

/// The highest priority of a queued task below `?1`.
pub(super) const NEXT_PRIORITY: &str = "SELECT priority FROM tasks INDEXED BY tasks_queued \
     WHERE status = 'queued' AND priority < ?1 ORDER BY priority DESC LIMIT 1";

/// The first plugin with tasks, by name.
pub(super) const FIRST_PLUGIN: &str = "SELECT plugin FROM tasks ORDER BY plugin LIMIT 1";

/// When the first queued task of plugin `?1` is due.
pub(super) const PLUGIN_DUE: &str =
    "SELECT MIN(not_before) FROM tasks WHERE plugin = ?1 AND status = 'queued'";

/// Fails, with error `?3` at `?4`, the queued tasks of plugin `?1` due at `?2` or before.
pub(super) const FAIL_QUEUED: &str =
    "UPDATE tasks SET status = 'failed', error = ?3, finished = ?4 \
     WHERE plugin = ?1 AND status = 'queued' AND not_before <= ?2";

/// The plugin with tasks after `?1`, by name.
pub(super) const NEXT_PLUGIN: &str =
    "SELECT plugin FROM tasks WHERE plugin > ?1 ORDER BY plugin LIMIT 1";

/// Ends the attempts a stopped host left running, found among the active tasks (not all
/// those kept): each counts as interrupted; a task with attempts left is queued again, one
/// without is failed at `?1`. Answers each task's new status.
pub(super) const RECOVER: &str = "UPDATE tasks INDEXED BY tasks_active_key SET \
     interrupted = interrupted + 1, \
     status = CASE WHEN attempts >= max_attempts THEN 'failed' ELSE 'queued' END, \
     finished = CASE WHEN attempts >= max_attempts THEN ?1 ELSE NULL END, \
     error = CASE WHEN attempts >= max_attempts \
         THEN 'the host stopped during this attempt ' || (interrupted + 1) || ' times' \
         ELSE 'the host stopped during attempt ' || attempts END \
     WHERE status IN ('queued', 'running') AND status = 'running' RETURNING status";

/// Takes up to `limit` due tasks of the plugins in `only` (see
/// [`TaskStore::claim`](super::super::store::TaskStore::claim)).
pub(super) fn claim(
    c: &Connection,
    now: i64,
    limit: usize,
    only: &[String],
) -> Result<Vec<TaskRecord>, Fail> {
    // One priority at a time, highest first: within a priority the index gives the
    // due tasks in claiming order, so no sort and no scan of what is not due.
    let mut ids: Vec<TaskId> = Vec::new();
    let mut priority: Option<i64> = c
        .prepare_cached(TOP_PRIORITY)?
        .query_row([], |row| row.get(0))
        .optional()?;
    while let Some(p) = priority {
        let mut due = c.prepare_cached(DUE_OF_PRIORITY)?;
        let mut rows = due.query(params![p, now])?;
        while let Some(row) = rows.next()? {
            let plugin = row.get_ref(1)?.as_str()?;
            if !only.iter().any(|o| o.as_str() == plugin) {
                continue;
            }
            ids.push(row.get(0)?);
            if ids.len() == limit {
                break;
            }
        }
        if ids.len() == limit {
            break;
        }
        priority = c
            .prepare_cached(NEXT_PRIORITY)?
            .query_row([p], |row| row.get(0))
            .optional()?;
    }
    let mut start = c.prepare_cached(concat!(
        "UPDATE tasks SET status = 'running', attempts = attempts + 1, started = ?2 \
             WHERE id = ?1 RETURNING ",
        task_columns!()
    ))?;
    ids.into_iter()
        .map(|id| Ok(start.query_row(params![id, now], record)?))
        .collect()
}

/// When the next queued task of a plugin in `only` is due.
pub(super) fn next_due(c: &Connection, only: &[String]) -> Result<Option<u64>, Fail> {
    // Plugin by plugin (there are few), each its earliest queued task: a few index
    // lookups each, however many tasks are queued (for the plugins left out too).
    let mut next: Option<u64> = None;
    let mut plugin: Option<String> = c
        .prepare_cached(FIRST_PLUGIN)?
        .query_row([], |row| row.get(0))
        .optional()?;
    while let Some(name) = plugin {
        if only.contains(&name) {
            let due: Option<u64> = c
                .prepare_cached(PLUGIN_DUE)?
                .query_row([&name], |row| row.get(0))?;
            next = match (next, due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        plugin = c
            .prepare_cached(NEXT_PLUGIN)?
            .query_row([&name], |row| row.get(0))
            .optional()?;
    }
    Ok(next)
}

/// Ends the attempts a stopped host left running.
pub(super) fn recover(c: &Connection, now: i64) -> Result<Recovered, Fail> {
    let mut recovered = Recovered::default();
    let mut stmt = c.prepare_cached(RECOVER)?;
    let mut rows = stmt.query([now])?;
    while let Some(row) = rows.next()? {
        match row.get_ref(0)?.as_str()? {
            "failed" => recovered.failed += 1,
            _ => recovered.queued += 1,
        }
    }
    Ok(recovered)
}

/// The plugins with queued tasks, by name.
pub(super) fn queued_plugins(c: &Connection) -> Result<Vec<String>, Fail> {
    let mut plugins = Vec::new();
    let mut plugin: Option<String> = c
        .prepare_cached(FIRST_PLUGIN)?
        .query_row([], |row| row.get(0))
        .optional()?;
    while let Some(name) = plugin {
        let due: Option<u64> = c
            .prepare_cached(PLUGIN_DUE)?
            .query_row([&name], |row| row.get(0))?;
        plugin = c
            .prepare_cached(NEXT_PLUGIN)?
            .query_row([&name], |row| row.get(0))
            .optional()?;
        if due.is_some() {
            plugins.push(name);
        }
    }
    Ok(plugins)
}

/// Fails the queued tasks of `plugin` due at `due_before` or before; how many.
pub(super) fn fail_queued(
    c: &Connection,
    plugin: &str,
    due_before: i64,
    error: &str,
    now: i64,
) -> Result<u64, Fail> {
    let failed = c
        .prepare_cached(FAIL_QUEUED)?
        .execute(params![plugin, due_before, error, now])?;
    Ok(failed as u64)
}

/// Gives claimed task `id` back, its attempt not counted.
pub(super) fn release(c: &Connection, id: TaskId) -> Result<(), Fail> {
    let changed = c
        .prepare_cached(
            "UPDATE tasks SET status = 'queued', attempts = MAX(attempts - 1, 0) \
             WHERE id = ?1 AND status = 'running'",
        )?
        .execute([id])?;
    if changed == 0 {
        return Err(not_running(c, id));
    }
    Ok(())
}

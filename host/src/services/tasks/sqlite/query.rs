//! Reading tasks: one, the children of one, a filtered list, and how many of a plugin are
//! active.

use rusqlite::types::Value;
use rusqlite::{params_from_iter, Connection, OptionalExtension};

use super::super::task::{TaskFilter, TaskId, TaskRecord};
use super::error::Fail;
use super::row::{record, to_i64};

/// How many tasks `TaskStore::list` returns when the filter sets no limit.
const DEFAULT_LIST_LIMIT: usize = 1000;

/// The tasks of parent `?1`, oldest first.
pub(super) const CHILDREN: &str = concat!(
    "SELECT ",
    task_columns!(),
    " FROM tasks WHERE parent = ?1 ORDER BY id"
);

/// How many tasks of plugin `?1` are active.
pub(super) const ACTIVE_OF_PLUGIN: &str =
    "SELECT COUNT(*) FROM tasks WHERE plugin = ?1 AND status IN ('queued', 'running')";

/// Task `id`.
pub(super) fn get(c: &Connection, id: TaskId) -> Result<Option<TaskRecord>, Fail> {
    let task = c
        .prepare_cached(concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks WHERE id = ?1"
        ))?
        .query_row([id], record)
        .optional()?;
    Ok(task)
}

/// The tasks of `parent`, oldest first.
pub(super) fn children(c: &Connection, parent: TaskId) -> Result<Vec<TaskRecord>, Fail> {
    let mut stmt = c.prepare_cached(CHILDREN)?;
    let tasks = stmt
        .query_map([parent], record)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(tasks)
}

/// The statement and arguments that list the tasks matching `filter`, newest first.
pub(super) fn list_query(filter: &TaskFilter) -> (String, Vec<Value>) {
    let mut sql = String::from(concat!("SELECT ", task_columns!(), " FROM tasks"));
    let mut args: Vec<Value> = Vec::new();
    let mut conditions: Vec<String> = Vec::new();
    if let Some(status) = filter.status {
        args.push(Value::Text(status.as_str().to_owned()));
        conditions.push(format!("status = ?{}", args.len()));
    }
    if let Some(plugin) = &filter.plugin {
        args.push(Value::Text(plugin.clone()));
        conditions.push(format!("plugin = ?{}", args.len()));
    }
    if let Some(since) = filter.since_unix_ms {
        args.push(Value::Integer(to_i64(since)));
        conditions.push(format!("created >= ?{}", args.len()));
    }
    if let Some(before) = filter.before {
        args.push(Value::Integer(before));
        conditions.push(format!("id < ?{}", args.len()));
    }
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    let limit = match filter.limit {
        0 => DEFAULT_LIST_LIMIT,
        n => n,
    };
    args.push(Value::Integer(i64::try_from(limit).unwrap_or(i64::MAX)));
    sql.push_str(&format!(" ORDER BY id DESC LIMIT ?{}", args.len()));
    (sql, args)
}

/// The tasks `list_query` selects.
pub(super) fn list(c: &Connection, sql: &str, args: Vec<Value>) -> Result<Vec<TaskRecord>, Fail> {
    let mut stmt = c.prepare_cached(sql)?;
    let tasks = stmt
        .query_map(params_from_iter(args), record)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(tasks)
}

/// How many tasks of `plugin` are active.
pub(super) fn active(c: &Connection, plugin: &str) -> Result<u64, Fail> {
    let count = c
        .prepare_cached(ACTIVE_OF_PLUGIN)?
        .query_row([plugin], |row| row.get(0))?;
    Ok(count)
}

//! Reading tasks: one, the children of one, a filtered list, and how many of a plugin are
//! active.

use rusqlite::types::Value;
use rusqlite::{params_from_iter, Connection, OptionalExtension};

use super::super::list_statement::{list_statement, ListArg};
use super::super::task::{TaskFilter, TaskId, TaskRecord};
use super::error::Fail;
use super::row::record;

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
    let select = concat!("SELECT ", task_columns!(), " FROM tasks");
    let (sql, args) = list_statement(filter, select, "", |n| format!("?{n}"));
    let args = args
        .into_iter()
        .map(|arg| match arg {
            ListArg::Text(text) => Value::Text(text),
            ListArg::Int(n) => Value::Integer(n),
        })
        .collect();
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

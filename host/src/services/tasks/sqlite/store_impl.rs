//! [`TaskStore`] for [`SqliteStore`]: each method one transaction (`BEGIN IMMEDIATE` for
//! writes), named for its error messages; the statements are in the files of their concept.

use super::super::store::{Recovered, StoreError, TaskStore};
use super::super::task::{Finish, Insert, Inserted, TaskFilter, TaskId, TaskRecord, TaskStatus};
use super::connection::SqliteStore;
use super::error::Fail;
use super::row::to_i64;
use super::{admin, claim, insert, outcome, prune, query, schedules};

impl TaskStore for SqliteStore {
    fn insert(&self, tasks: &[Insert]) -> Result<Vec<Inserted>, StoreError> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        self.write(&"insert tasks", |c| {
            tasks
                .iter()
                .map(|task| insert::insert_one(c, task))
                .collect()
        })
    }

    fn claim(
        &self,
        now_unix_ms: u64,
        limit: usize,
        only: &[String],
    ) -> Result<Vec<TaskRecord>, StoreError> {
        if limit == 0 || only.is_empty() {
            return Ok(Vec::new());
        }
        let now = to_i64(now_unix_ms);
        let tasks = self.write(&"claim tasks", |c| claim::claim(c, now, limit, only))?;
        Ok(tasks.into_iter().map(|t| self.stamp(t)).collect())
    }

    fn next_due(&self, only: &[String]) -> Result<Option<u64>, StoreError> {
        self.read(&"find when the next task is due", |c| {
            claim::next_due(c, only)
        })
    }

    fn finish(
        &self,
        id: TaskId,
        finish: &Finish,
        follow_ups: &[Insert],
    ) -> Result<Vec<Inserted>, StoreError> {
        if finish.status.is_active() {
            let fail = Fail::Msg(format!("{} is not a final status", finish.status));
            return Err(self.error(&format_args!("finish task {id}"), fail));
        }
        self.write(&format_args!("finish task {id}"), |c| {
            outcome::finish(c, id, finish)?;
            follow_ups
                .iter()
                .map(|task| insert::insert_one(c, task))
                .collect()
        })
    }

    fn release(&self, id: TaskId) -> Result<(), StoreError> {
        self.write(&format_args!("give task {id} back"), |c| {
            claim::release(c, id)
        })
    }

    fn retry_later(
        &self,
        id: TaskId,
        not_before_unix_ms: u64,
        failed: &Finish,
    ) -> Result<(), StoreError> {
        self.write(&format_args!("queue task {id} for a retry"), |c| {
            outcome::retry_later(c, id, not_before_unix_ms, failed)
        })
    }

    fn recover(&self, now_unix_ms: u64) -> Result<Recovered, StoreError> {
        self.write(&"end the interrupted attempts", |c| {
            claim::recover(c, to_i64(now_unix_ms))
        })
    }

    fn queued_plugins(&self) -> Result<Vec<String>, StoreError> {
        self.read(&"find the plugins with queued tasks", claim::queued_plugins)
    }

    fn fail_queued(
        &self,
        plugin: &str,
        due_before_unix_ms: u64,
        error: &str,
        now_unix_ms: u64,
    ) -> Result<u64, StoreError> {
        self.write(&format_args!("fail the queued tasks of {plugin}"), |c| {
            claim::fail_queued(
                c,
                plugin,
                to_i64(due_before_unix_ms),
                error,
                to_i64(now_unix_ms),
            )
        })
    }

    fn get(&self, id: TaskId) -> Result<Option<TaskRecord>, StoreError> {
        let task = self.read(&format_args!("read task {id}"), |c| query::get(c, id))?;
        Ok(task.map(|t| self.stamp(t)))
    }

    fn children(&self, parent: TaskId) -> Result<Vec<TaskRecord>, StoreError> {
        let tasks = self.read(&format_args!("read the tasks of task {parent}"), |c| {
            query::children(c, parent)
        })?;
        Ok(tasks.into_iter().map(|t| self.stamp(t)).collect())
    }

    fn list(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>, StoreError> {
        let (sql, args) = query::list_query(filter);
        let tasks = self.read(&"list tasks", |c| query::list(c, &sql, args))?;
        Ok(tasks.into_iter().map(|t| self.stamp(t)).collect())
    }

    fn cancel(&self, id: TaskId, now_unix_ms: u64) -> Result<Option<TaskStatus>, StoreError> {
        self.write(&format_args!("cancel task {id}"), |c| {
            admin::cancel(c, id, now_unix_ms)
        })
    }

    fn requeue(&self, id: TaskId, now_unix_ms: u64) -> Result<Option<TaskStatus>, StoreError> {
        self.write(&format_args!("queue task {id} again"), |c| {
            admin::requeue(c, id, now_unix_ms)
        })
    }

    fn active(&self, plugin: &str) -> Result<u64, StoreError> {
        self.read(&format_args!("count the active tasks of {plugin}"), |c| {
            query::active(c, plugin)
        })
    }

    fn last_fired(&self, name: &str) -> Result<Option<u64>, StoreError> {
        self.read(&format_args!("read when schedule {name} last fired"), |c| {
            schedules::last_fired(c, name)
        })
    }

    fn set_last_fired(&self, name: &str, at_unix_ms: u64) -> Result<(), StoreError> {
        self.write(&format_args!("note that schedule {name} fired"), |c| {
            schedules::set_last_fired(c, name, at_unix_ms)
        })
    }

    fn note(&self, id: TaskId, record: &plugin_api::LogRecord) -> Result<bool, StoreError> {
        self.write(&format_args!("add a note to task {id}"), |c| {
            admin::note(c, id, record)
        })
    }

    fn notes(&self, id: TaskId) -> Result<Vec<plugin_api::LogRecord>, StoreError> {
        self.read(&format_args!("read the notes of task {id}"), |c| {
            admin::notes(c, id)
        })
    }

    fn counts(&self) -> Result<Vec<(TaskStatus, u64)>, StoreError> {
        self.read(&"count tasks by status", admin::counts)
    }

    fn prune(&self, before_unix_ms: u64, keep_max: u64) -> Result<u64, StoreError> {
        self.write(&"delete old tasks", |c| {
            prune::prune(c, before_unix_ms, keep_max)
        })
    }
}

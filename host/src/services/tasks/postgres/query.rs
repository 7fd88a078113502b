//! Reads (one task, its children, a filtered list, a plugin's active count), what an
//! operator does to one task (cancel, requeue), retention (deleting ended tasks in bounded
//! batches) and schedules (when each last fired; one firing per due time in the fleet).

use tokio_postgres::types::ToSql;

use super::super::list_statement::{list_statement, ListArg};
use super::super::task::{Insert, Inserted, TaskFilter, TaskId, TaskRecord, TaskStatus};
use super::insert::{insert_all, notify};
use super::row::{big, record, records};
use super::store::{pg, PgStore};
use crate::services::postgres::PgError;

/// Ended tasks deleted by one statement: a delete never holds many row locks or writes a
/// long burst of WAL, and autovacuum keeps up between batches.
const PRUNE_BATCH: i64 = 1000;
/// Batches one prune runs at most; the next prune (an hour later) goes on.
const PRUNE_BATCHES: usize = 1000;
/// Rows of `schedule_fires` are kept this long (a day): long enough to dedupe any firing.
const FIRES_KEPT_MS: i64 = 86_400_000;

impl PgStore {
    pub(super) async fn get_async(&self, id: TaskId) -> Result<Option<TaskRecord>, PgError> {
        let what = "read a task";
        let client = self.db.client(what).await?;
        let row = client
            .query_opt(
                concat!(
                    "SELECT ",
                    pg_task_columns!(),
                    " FROM tasks t WHERE t.id = $1"
                ),
                &[&id],
            )
            .await
            .map_err(pg(what))?;
        row.as_ref().map(record).transpose()
    }

    pub(super) async fn children_async(&self, parent: TaskId) -> Result<Vec<TaskRecord>, PgError> {
        let what = "read the follow-ups of a task";
        let client = self.db.client(what).await?;
        let rows = client
            .query(
                concat!(
                    "SELECT ",
                    pg_task_columns!(),
                    " FROM tasks t WHERE t.parent = $1 ORDER BY t.id"
                ),
                &[&parent],
            )
            .await
            .map_err(pg(what))?;
        records(&rows)
    }

    pub(super) async fn list_async(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>, PgError> {
        let what = "list tasks";
        let select = concat!("SELECT ", pg_task_columns!(), " FROM tasks t");
        let (sql, args) = list_statement(filter, select, "t.", |n| format!("${n}"));
        let args: Vec<Box<dyn ToSql + Sync + Send>> = args
            .into_iter()
            .map(|arg| match arg {
                ListArg::Text(text) => Box::new(text) as Box<dyn ToSql + Sync + Send>,
                ListArg::Int(n) => Box::new(n),
            })
            .collect();
        let client = self.db.client(what).await?;
        let params: Vec<&(dyn ToSql + Sync)> =
            args.iter().map(|a| &**a as &(dyn ToSql + Sync)).collect();
        let rows = client.query(&sql, &params).await.map_err(pg(what))?;
        records(&rows)
    }

    pub(super) async fn active_async(&self, plugin: &str) -> Result<u64, PgError> {
        let what = "count the active tasks of a plugin";
        let client = self.db.client(what).await?;
        let row = client
            .query_one(
                "SELECT count(*) FROM tasks WHERE plugin = $1 AND status IN ('queued', 'running')",
                &[&plugin],
            )
            .await
            .map_err(pg(what))?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    pub(super) async fn cancel_async(
        &self,
        id: TaskId,
        now: u64,
    ) -> Result<Option<TaskStatus>, PgError> {
        let what = "cancel a task";
        let client = self.db.client(what).await?;
        // Cancelled only if still queued at the moment of the write.
        let row = client
            .query_opt(
                "WITH before AS (SELECT status FROM tasks WHERE id = $1),
                      done AS (UPDATE tasks SET status = 'cancelled', finished = $2
                               WHERE id = $1 AND status = 'queued' RETURNING 1)
                 SELECT (SELECT status FROM before), (SELECT count(*) FROM done)",
                &[&id, &big(now)],
            )
            .await
            .map_err(pg(what))?;
        Ok(row
            .and_then(|r| r.get::<_, Option<String>>(0))
            .and_then(|s| TaskStatus::parse(&s)))
    }

    pub(super) async fn requeue_async(
        &self,
        id: TaskId,
        now: u64,
    ) -> Result<Option<TaskStatus>, PgError> {
        let what = "queue a task again";
        let client = self.db.client(what).await?;
        let Some(row) = client
            .query_opt("SELECT status, key FROM tasks WHERE id = $1", &[&id])
            .await
            .map_err(pg(what))?
        else {
            return Ok(None);
        };
        let status = TaskStatus::parse(row.get(0));
        let key: String = row.get(1);
        if status.is_none_or(TaskStatus::is_active) {
            return Ok(status);
        }
        let changed = client
            .execute(
                "UPDATE tasks SET status = 'queued', attempts = 0, interrupted = 0, \
                 not_before = $2, finished = NULL, result = NULL, error = NULL, logs = '[]', \
                 lease_until = NULL, claim_token = NULL \
                 WHERE id = $1 AND status NOT IN ('queued', 'running') \
                 AND NOT EXISTS (SELECT 1 FROM tasks o WHERE o.key = $3 \
                                 AND o.status IN ('queued', 'running'))",
                &[&id, &big(now), &key],
            )
            .await;
        match changed {
            Ok(0) | Err(_) => {
                let other = client
                    .query_opt(
                        "SELECT id FROM tasks WHERE key = $1 AND status IN ('queued', 'running')",
                        &[&key],
                    )
                    .await
                    .map_err(pg(what))?;
                match other {
                    Some(other) => Err(PgError::Statement(format!(
                        "task {id} cannot be queued again: task {} with key {key} is active",
                        other.get::<_, i64>(0)
                    ))),
                    None => Err(PgError::Statement(format!(
                        "task {id} cannot be queued again: it changed meanwhile"
                    ))),
                }
            }
            Ok(_) => {
                notify(&client).await?;
                Ok(status)
            }
        }
    }

    /// Deletes ended tasks in batches of [`PRUNE_BATCH`], each its own statement.
    pub(super) async fn prune_async(&self, before: u64, keep_max: u64) -> Result<u64, PgError> {
        let what = "delete old tasks";
        let client = self.db.client(what).await?;
        let mut deleted = 0u64;
        let old = "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks \
             WHERE finished < $1 AND status NOT IN ('queued', 'running') \
             ORDER BY finished LIMIT $2)";
        let beyond = "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks \
             WHERE finished IS NOT NULL AND status NOT IN ('queued', 'running') \
             ORDER BY finished DESC, id DESC OFFSET $1 LIMIT $2)";
        for (sql, bound) in [(old, big(before)), (beyond, big(keep_max))] {
            for _ in 0..PRUNE_BATCHES {
                let n = client
                    .execute(sql, &[&bound, &PRUNE_BATCH])
                    .await
                    .map_err(pg(what))?;
                deleted += n;
                if n < PRUNE_BATCH as u64 {
                    break;
                }
            }
        }
        client
            .execute(
                "DELETE FROM schedule_fires WHERE due < fleet_now_ms() - $1",
                &[&FIRES_KEPT_MS],
            )
            .await
            .map_err(pg(what))?;
        Ok(deleted)
    }

    pub(super) async fn last_fired_async(&self, name: &str) -> Result<Option<u64>, PgError> {
        let what = "read when a schedule last fired";
        let client = self.db.client(what).await?;
        let row = client
            .query_opt("SELECT last_fired FROM schedules WHERE name = $1", &[&name])
            .await
            .map_err(pg(what))?;
        Ok(row.map(|r| u64::try_from(r.get::<_, i64>(0)).unwrap_or(0)))
    }

    pub(super) async fn set_last_fired_async(&self, name: &str, at: u64) -> Result<(), PgError> {
        let what = "note that a schedule fired";
        let client = self.db.client(what).await?;
        client
            .execute(
                "INSERT INTO schedules (name, last_fired) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE \
                 SET last_fired = greatest(schedules.last_fired, excluded.last_fired)",
                &[&name, &big(at)],
            )
            .await
            .map_err(pg(what))?;
        Ok(())
    }

    /// Fires schedule `name` at `due` with `task` if this host's claim lands (the
    /// `schedule_fires` row, and `last_fired`), `None` if another host's did. The claim and
    /// the task's insert are one transaction: a host killed between them, or an insert
    /// that fails, leaves no claim, so the next tick (of any host) fires that due time.
    /// A host whose claim waits on another's uncommitted one learns the outcome when that
    /// one commits or rolls back: one firing per due time across the fleet.
    pub(super) async fn insert_firing_async(
        &self,
        name: &str,
        due: u64,
        task: &Insert,
    ) -> Result<Option<Inserted>, PgError> {
        let what = "fire a schedule";
        let mut client = self.db.client(what).await?;
        let tx = client.transaction().await.map_err(pg(what))?;
        // The claim and `last_fired` in one statement: the next start never keys a missed
        // run by a due time already fired.
        let row = tx
            .query_one(
                "WITH f AS (
                     INSERT INTO schedule_fires (name, due, host_id) VALUES ($1, $2, $3)
                     ON CONFLICT DO NOTHING RETURNING due
                 ), s AS (
                     INSERT INTO schedules (name, last_fired) SELECT $1, due FROM f
                     ON CONFLICT (name) DO UPDATE
                     SET last_fired = greatest(schedules.last_fired, excluded.last_fired)
                 )
                 SELECT count(*) FROM f",
                &[&name, &big(due), &self.host_id],
            )
            .await
            .map_err(pg(what))?;
        if row.get::<_, i64>(0) != 1 {
            // Another host fired it; dropping the transaction rolls it back.
            return Ok(None);
        }
        let (inserted, queued) = insert_all(&tx, std::slice::from_ref(task)).await?;
        if queued {
            notify(&tx).await?;
        }
        tx.commit().await.map_err(pg(what))?;
        Ok(inserted.first().copied())
    }
}

//! [`TaskStore`] for [`PgStore`]: each method waits for its statement on the database's
//! runtime (the runner's threads are plain threads); the statements are in the files of
//! their concept.

use std::sync::Arc;

use super::super::store::{Recovered, StoreError, TaskStore};
use super::super::task::{Finish, Insert, Inserted, TaskFilter, TaskId, TaskRecord, TaskStatus};
use super::claim::{FAIL_QUEUED, NEXT_DUE, QUEUED_PLUGINS};
use super::finisher::Finishing;
use super::insert::{insert_all, notify};
use super::row::big;
use super::store::{pg, PgStore};
use crate::services::postgres::PgError;

impl TaskStore for PgStore {
    fn insert(&self, tasks: &[Insert]) -> Result<Vec<Inserted>, StoreError> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        self.block(async {
            let what = "insert tasks";
            let mut client = self.db.client(what).await?;
            let tx = client.transaction().await.map_err(pg(what))?;
            let (inserted, queued) = insert_all(&tx, tasks).await?;
            if queued {
                notify(&tx).await?;
            }
            tx.commit().await.map_err(pg(what))?;
            Ok(inserted)
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
        self.block(self.claim_async(now_unix_ms, limit, only))
    }

    fn next_due(&self, only: &[String]) -> Result<Option<u64>, StoreError> {
        // Between polls, an idle host asks nothing: a notification wakes it.
        let last = self.last_empty.load(std::sync::atomic::Ordering::Relaxed);
        let now = super::super::runner::now_ms();
        if last != 0
            && now.saturating_sub(last) < self.poll_ms
            && !self.notified.load(std::sync::atomic::Ordering::Acquire)
        {
            return Ok(Some(last.saturating_add(self.poll_ms)));
        }
        self.block(async {
            let what = "find when the next task is due";
            let client = self.db.client(what).await?;
            let row = client
                .query_one(NEXT_DUE, &[&only])
                .await
                .map_err(pg(what))?;
            Ok(row
                .get::<_, Option<i64>>(0)
                .map(|t| u64::try_from(t).unwrap_or(0)))
        })
    }

    fn finish(
        &self,
        id: TaskId,
        finish: &Finish,
        follow_ups: &[Insert],
    ) -> Result<Vec<Inserted>, StoreError> {
        if finish.status.is_active() {
            return Err(StoreError::Failed(format!(
                "finish task {id}: {} is not a final status",
                finish.status
            )));
        }
        let Some(token) = self.token(id) else {
            return Err(StoreError::Failed(format!(
                "finish task {id}: this host holds no claim on it"
            )));
        };
        let written = if follow_ups.is_empty() {
            let (reply, answer) = std::sync::mpsc::sync_channel(1);
            let finishing = Finishing {
                id,
                token,
                finish: finish.clone(),
                reply,
            };
            if self.finisher.blocking_send(finishing).is_err() {
                return Err(StoreError::Failed(format!(
                    "finish task {id}: the finisher stopped"
                )));
            }
            match answer.recv() {
                Ok(Ok(true)) => Some(Vec::new()),
                Ok(Ok(false)) => None,
                Ok(Err(err)) => return Err(self.error(err)),
                Err(_) => {
                    return Err(StoreError::Failed(format!(
                        "finish task {id}: the finisher stopped"
                    )))
                }
            }
        } else {
            self.block(self.finish_with(id, token, finish, follow_ups))?
        };
        self.forget(id);
        // Fenced: what the host that took it over writes stands.
        written.ok_or_else(|| self.lease_lost(id, "its outcome"))
    }

    fn release(&self, id: TaskId) -> Result<(), StoreError> {
        let Some(token) = self.token(id) else {
            return Ok(());
        };
        let kept = self.block(self.release_with(id, token))?;
        self.forget(id);
        if kept {
            Ok(())
        } else {
            Err(self.lease_lost(id, "its release"))
        }
    }

    fn retry_later(
        &self,
        id: TaskId,
        not_before_unix_ms: u64,
        failed: &Finish,
    ) -> Result<(), StoreError> {
        let Some(token) = self.token(id) else {
            return Err(StoreError::Failed(format!(
                "retry task {id}: this host holds no claim on it"
            )));
        };
        let kept = self.block(self.retry_with(id, token, not_before_unix_ms, failed))?;
        self.forget(id);
        if kept {
            Ok(())
        } else {
            Err(self.lease_lost(id, "its retry"))
        }
    }

    /// At start: the tasks whose lease expired are taken back, never a live host's; and
    /// those of this host's own id, its previous run's (the id is kept in the state
    /// directory, whose lock this process holds: that run is gone), at once. A database
    /// down at start is not an error here: the host starts, and takes them back when it
    /// answers (its own once their lease expired).
    fn recover(&self, now_unix_ms: u64) -> Result<Recovered, StoreError> {
        match self.db.block_on(self.take_back(now_unix_ms, true)) {
            Ok(recovered) => Ok(recovered),
            Err(PgError::Unreachable(_)) => Ok(Recovered::default()),
            Err(err) => Err(self.error(err)),
        }
    }

    fn queued_plugins(&self) -> Result<Vec<String>, StoreError> {
        self.block(async {
            let what = "find the plugins with queued tasks";
            let client = self.db.client(what).await?;
            let rows = client.query(QUEUED_PLUGINS, &[]).await.map_err(pg(what))?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn fail_queued(
        &self,
        plugin: &str,
        due_before_unix_ms: u64,
        error: &str,
        now_unix_ms: u64,
    ) -> Result<u64, StoreError> {
        self.block(async {
            let what = "fail the queued tasks of a plugin";
            let client = self.db.client(what).await?;
            client
                .execute(
                    FAIL_QUEUED,
                    &[&plugin, &big(due_before_unix_ms), &error, &big(now_unix_ms)],
                )
                .await
                .map_err(pg(what))
        })
    }

    fn get(&self, id: TaskId) -> Result<Option<TaskRecord>, StoreError> {
        self.block(self.get_async(id))
    }

    fn children(&self, parent: TaskId) -> Result<Vec<TaskRecord>, StoreError> {
        self.block(self.children_async(parent))
    }

    fn list(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>, StoreError> {
        self.block(self.list_async(filter))
    }

    fn cancel(&self, id: TaskId, now_unix_ms: u64) -> Result<Option<TaskStatus>, StoreError> {
        self.block(self.cancel_async(id, now_unix_ms))
    }

    fn requeue(&self, id: TaskId, now_unix_ms: u64) -> Result<Option<TaskStatus>, StoreError> {
        self.block(self.requeue_async(id, now_unix_ms))
    }

    fn active(&self, plugin: &str) -> Result<u64, StoreError> {
        self.block(self.active_async(plugin))
    }

    fn last_fired(&self, name: &str) -> Result<Option<u64>, StoreError> {
        self.block(self.last_fired_async(name))
    }

    fn set_last_fired(&self, name: &str, at_unix_ms: u64) -> Result<(), StoreError> {
        self.block(self.set_last_fired_async(name, at_unix_ms))
    }

    fn prune(&self, before_unix_ms: u64, keep_max: u64) -> Result<u64, StoreError> {
        self.block(self.prune_async(before_unix_ms, keep_max))
    }

    fn insert_firing(
        &self,
        name: &str,
        due_unix_ms: u64,
        task: &Insert,
    ) -> Result<Option<Inserted>, StoreError> {
        self.block(self.insert_firing_async(name, due_unix_ms, task))
    }

    fn set_waker(&self, wake: Arc<dyn Fn() + Send + Sync>) {
        self.set_waker_fn(wake);
    }

    fn host_id(&self) -> Option<String> {
        Some(self.host_id.clone())
    }
}

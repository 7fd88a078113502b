//! How an attempt ends, fenced by its claim token: a finish with follow-ups (one
//! transaction: both or neither), a retry later, a release. A write whose token is no
//! longer live changes nothing: the task was taken over.

use super::super::task::{Finish, Insert, Inserted, TaskId};
use super::finisher::KEPT_LOGS;
use super::insert::{insert_all, notify};
use super::row::big;
use super::store::{pg, PgStore};
use crate::services::postgres::PgError;

const RETRY: &str = "UPDATE tasks SET status = 'queued', not_before = $3, error = $4, \
     logs = $5, generation = $6, finished = NULL, lease_until = NULL, claim_token = NULL \
     WHERE id = $1 AND status = 'running' AND claim_token = $2";

const RELEASE: &str = "UPDATE tasks SET status = 'queued', attempts = greatest(attempts - 1, 0), \
     lease_until = NULL, claim_token = NULL \
     WHERE id = $1 AND status = 'running' AND claim_token = $2";

impl PgStore {
    /// A finish and its follow-ups in one transaction; `None`: the lease was lost.
    pub(super) async fn finish_with(
        &self,
        id: TaskId,
        token: i64,
        finish: &Finish,
        follow_ups: &[Insert],
    ) -> Result<Option<Vec<Inserted>>, PgError> {
        let what = "finish a task";
        let mut client = self.db.client(what).await?;
        let sql = format!(
            "UPDATE tasks t SET status = $3, result = $4, error = $5, logs = {}, \
             finished = $7, generation = $8, lease_until = NULL, claim_token = NULL \
             WHERE t.id = $1 AND t.status = 'running' AND t.claim_token = $2",
            KEPT_LOGS.replace("NEW_LOGS", "$6::text")
        );
        let logs = serde_json::to_string(&finish.logs).unwrap_or_else(|_| "[]".into());
        let tx = client.transaction().await.map_err(pg(what))?;
        let changed = tx
            .execute(
                &sql,
                &[
                    &id,
                    &token,
                    &finish.status.as_str(),
                    &finish.result,
                    &finish.error,
                    &logs,
                    &big(finish.finished_unix_ms),
                    &finish.generation.map(big),
                ],
            )
            .await
            .map_err(pg(what))?;
        if changed == 0 {
            tx.rollback().await.map_err(pg(what))?;
            return Ok(None);
        }
        let (inserted, queued) = insert_all(&tx, follow_ups).await?;
        if queued {
            notify(&tx).await?;
        }
        tx.commit().await.map_err(pg(what))?;
        Ok(Some(inserted))
    }

    /// Queued again for a retry; false: the lease was lost.
    pub(super) async fn retry_with(
        &self,
        id: TaskId,
        token: i64,
        not_before: u64,
        failed: &Finish,
    ) -> Result<bool, PgError> {
        let what = "queue a task for a retry";
        let client = self.db.client(what).await?;
        let logs = serde_json::to_string(&failed.logs).unwrap_or_else(|_| "[]".into());
        let changed = client
            .execute(
                RETRY,
                &[
                    &id,
                    &token,
                    &big(not_before),
                    &failed.error,
                    &logs,
                    &failed.generation.map(big),
                ],
            )
            .await
            .map_err(pg(what))?;
        Ok(changed > 0)
    }

    /// Given back, its attempt not counted; false: the lease was lost.
    pub(super) async fn release_with(&self, id: TaskId, token: i64) -> Result<bool, PgError> {
        let what = "give a task back";
        let client = self.db.client(what).await?;
        let changed = client
            .execute(RELEASE, &[&id, &token])
            .await
            .map_err(pg(what))?;
        if changed > 0 {
            notify(&client).await?;
        }
        Ok(changed > 0)
    }
}

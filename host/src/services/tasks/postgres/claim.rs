//! Claiming due tasks in one statement, taking back tasks whose lease expired, and what
//! the dispatcher asks about the queue.

use super::super::store::Recovered;
use super::super::task::TaskRecord;
use super::row::{big, record_at};
use super::store::{pg, PgStore};
use crate::services::postgres::PgError;

/// One statement: `FOR UPDATE SKIP LOCKED` picks a batch (rows another host is claiming
/// are skipped, never waited for), the `UPDATE` marks them running under this host's
/// lease with a new claim token.
const CLAIM: &str = concat!(
    "WITH picked AS (
         SELECT id FROM tasks
         WHERE status = 'queued' AND not_before <= $1 AND plugin = ANY($2)
         ORDER BY priority DESC, not_before, id
         LIMIT $3
         FOR UPDATE SKIP LOCKED
     )
     UPDATE tasks t SET status = 'running', attempts = t.attempts + 1, started = $1,
         host_id = $4, lease_until = fleet_now_ms() + $5,
         claim_token = (random() * 9.2e18)::bigint
     FROM picked WHERE t.id = picked.id
     RETURNING t.claim_token, ",
    pg_task_columns!()
);

/// Sent with [`CLAIM`], in the same round trip (pipelined): pins the claim's plan to a
/// walk of `tasks_queued` in claim order that stops after `LIMIT` rows. Without it, the
/// planner on stale statistics (a batch of tasks just queued, not yet analyzed: it
/// expects about one queued row) sorts the whole queue for every claim: measured 15-23 ms
/// a claim with 20,000 tasks queued, against 0.1-0.6 ms for the index walk.
const PIN_PLAN: &str = "BEGIN; SET LOCAL enable_sort = off; SET LOCAL enable_bitmapscan = off";

/// Tasks whose lease expired (their host died, froze or lost the database) go back to the
/// queue, or fail with their attempts spent; each one's logs name the lost host. At start
/// (`$3`), the tasks this host's id holds go back too, lease or not: they are its previous
/// run's, which is gone (the state directory's lock, held by this process, proves it), so
/// there is no need to wait out their lease. Their claim tokens are cleared like the
/// others', so a write of the old run would be refused all the same. Bounded: the next
/// look takes the rest.
const TAKE_BACK: &str = "WITH lost AS (
         SELECT id FROM tasks
         WHERE status = 'running'
           AND (lease_until < fleet_now_ms() OR ($3::boolean AND host_id = $2::text))
         ORDER BY lease_until LIMIT 1000
         FOR UPDATE SKIP LOCKED
     ), what AS (
         SELECT t.id, CASE WHEN t.host_id = $2::text
             THEN 'host ' || t.host_id || ' restarted during attempt ' || t.attempts
             ELSE 'host ' || coalesce(t.host_id, '?') || ' lost its lease during attempt '
                  || t.attempts END AS said
         FROM tasks t JOIN lost ON t.id = lost.id
     )
     UPDATE tasks t SET
         interrupted = t.interrupted + 1,
         status = CASE WHEN t.attempts >= t.max_attempts THEN 'failed' ELSE 'queued' END,
         finished = CASE WHEN t.attempts >= t.max_attempts THEN $1::bigint ELSE NULL END,
         error = CASE WHEN t.attempts >= t.max_attempts
             THEN 'the host stopped during this attempt ' || (t.interrupted + 1) || ' times'
                  || ' (last: host ' || coalesce(t.host_id, '?') || ')'
             ELSE what.said END,
         logs = (t.logs::jsonb || jsonb_build_array(jsonb_build_object(
             'level', 'warn',
             'message', 'taken back by host ' || $2::text || ': ' || what.said,
             'unix_ms', $1::bigint)))::text,
         lease_until = NULL, claim_token = NULL
     FROM what WHERE t.id = what.id
     RETURNING t.status, t.host_id = $2::text";

impl PgStore {
    pub(super) async fn claim_async(
        &self,
        now: u64,
        limit: usize,
        only: &[String],
    ) -> Result<Vec<TaskRecord>, PgError> {
        let what = "claim tasks";
        if self.takeover_due(now) {
            let taken = self.take_back(now, false).await?;
            if taken.queued + taken.failed > 0 {
                tracing::warn!(
                    "took back {} tasks whose host lost its lease: {} queued again, {} \
                     failed (attempts spent)",
                    taken.queued + taken.failed,
                    taken.queued,
                    taken.failed
                );
            }
        }
        if self.quiet(now) {
            return Ok(Vec::new());
        }
        let client = self.db.client(what).await?;
        let statement = client.prepare_cached(CLAIM).await.map_err(pg(what))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
            [&big(now), &only, &limit, &self.host_id, &big(self.lease_ms)];
        // One round trip: the three are sent before any answer is awaited. A failed claim
        // aborts the transaction, and its COMMIT rolls it back.
        let (_, rows, _) = tokio::try_join!(
            client.batch_execute(PIN_PLAN),
            client.query(&statement, &params),
            client.batch_execute("COMMIT"),
        )
        .map_err(pg(what))?;
        let empty = if rows.is_empty() { now.max(1) } else { 0 };
        self.last_empty
            .store(empty, std::sync::atomic::Ordering::Relaxed);
        let mut tasks = Vec::with_capacity(rows.len());
        let mut tokens = self
            .tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for row in &rows {
            let token: i64 = row.get(0);
            let task = record_at(row, 1)?;
            tokens.insert(task.id, token);
            tasks.push(task);
        }
        // The order they were picked in (UPDATE ... RETURNING keeps none).
        tasks.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then(a.not_before_unix_ms.cmp(&b.not_before_unix_ms))
                .then(a.id.cmp(&b.id))
        });
        Ok(tasks)
    }

    /// Takes back the tasks whose lease expired (whoever's; never a live lease), and with
    /// `restarted` (at start only) those this host's id holds, its previous run's.
    pub(super) async fn take_back(&self, now: u64, restarted: bool) -> Result<Recovered, PgError> {
        let what = "take back tasks whose lease expired";
        let client = self.db.client(what).await?;
        let statement = client.prepare_cached(TAKE_BACK).await.map_err(pg(what))?;
        let rows = client
            .query(&statement, &[&big(now), &self.host_id, &restarted])
            .await
            .map_err(pg(what))?;
        let mut recovered = Recovered::default();
        let mut own = 0u64;
        for row in rows {
            match row.get::<_, &str>(0) {
                "failed" => recovered.failed += 1,
                _ => recovered.queued += 1,
            }
            if row.get::<_, Option<bool>>(1) == Some(true) {
                own += 1;
            }
        }
        if own > 0 {
            tracing::warn!(
                "took back at once {own} tasks this host ({}) was running before it restarted \
                 (its previous run is gone: this host holds its state directory's lock), \
                 without waiting for their lease",
                self.host_id
            );
        }
        Ok(recovered)
    }
}

pub(super) const NEXT_DUE: &str =
    "SELECT min(not_before) FROM tasks WHERE status = 'queued' AND plugin = ANY($1)";

pub(super) const QUEUED_PLUGINS: &str =
    "SELECT DISTINCT plugin FROM tasks WHERE status = 'queued' ORDER BY plugin";

pub(super) const FAIL_QUEUED: &str = "UPDATE tasks SET status = 'failed', error = $3, \
     finished = $4 WHERE plugin = $1 AND status = 'queued' AND not_before <= $2";

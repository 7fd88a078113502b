//! The finisher: writes the finishes without follow-ups of every runner thread of this
//! host, many in one statement. It takes what is waiting, writes it, answers each caller,
//! and takes what arrived meanwhile (group commit: no added wait when idle, big batches
//! when busy). Each row is still fenced by its claim token; a row whose token is no longer
//! live is left as the host that took it over wrote it.

use tokio::sync::mpsc::Receiver;

use super::super::task::{Finish, TaskId};
use super::row::big;
use super::store::pg;
use crate::services::postgres::{Database, PgError};

/// The most finishes one statement writes.
const MAX_BATCH: usize = 1000;

/// The logs a finish keeps of the task's earlier attempts: the takeover lines (which name
/// the host that lost the task); the rest are the attempt's own, as on SQLite.
pub(super) const KEPT_LOGS: &str = "CASE WHEN t.interrupted > 0 THEN ((SELECT \
     coalesce(jsonb_agg(e), '[]'::jsonb) FROM jsonb_array_elements(t.logs::jsonb) e \
     WHERE e->>'message' LIKE 'taken back by host %') || NEW_LOGS::jsonb)::text \
     ELSE NEW_LOGS END";

/// One finish waiting to be written, and where its answer goes: whether its token was
/// still live (the row written).
#[derive(Debug)]
pub(super) struct Finishing {
    pub id: TaskId,
    pub token: i64,
    pub finish: Finish,
    pub reply: std::sync::mpsc::SyncSender<Result<bool, PgError>>,
}

pub(super) async fn run(db: Database, mut receive: Receiver<Finishing>) {
    let sql = format!(
        "UPDATE tasks t SET status = u.status, result = u.result, error = u.error, \
         logs = {}, finished = u.finished, generation = u.generation, lease_until = NULL, \
         claim_token = NULL \
         FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], \
                     $6::text[], $7::bigint[], $8::bigint[]) \
              AS u(id, token, status, result, error, logs, finished, generation) \
         WHERE t.id = u.id AND t.status = 'running' AND t.claim_token = u.token \
         RETURNING t.id",
        KEPT_LOGS.replace("NEW_LOGS", "u.logs")
    );
    let mut batch: Vec<Finishing> = Vec::new();
    while let Some(first) = receive.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match receive.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let written = write(&db, &sql, &batch).await;
        for finishing in batch.drain(..) {
            let answer = match &written {
                Ok(ids) => Ok(ids.contains(&finishing.id)),
                Err(err) => Err(err.clone()),
            };
            // A caller that stopped waiting finds its task as the next look shows it.
            let _ = finishing.reply.send(answer);
        }
    }
}

async fn write(db: &Database, sql: &str, batch: &[Finishing]) -> Result<Vec<TaskId>, PgError> {
    let what = "finish tasks";
    let client = db.client(what).await?;
    let statement = client.prepare_cached(sql).await.map_err(pg(what))?;
    let ids: Vec<i64> = batch.iter().map(|f| f.id).collect();
    let tokens: Vec<i64> = batch.iter().map(|f| f.token).collect();
    let statuses: Vec<&str> = batch.iter().map(|f| f.finish.status.as_str()).collect();
    let results: Vec<Option<&str>> = batch.iter().map(|f| f.finish.result.as_deref()).collect();
    let errors: Vec<Option<&str>> = batch.iter().map(|f| f.finish.error.as_deref()).collect();
    let logs: Vec<String> = batch
        .iter()
        .map(|f| serde_json::to_string(&f.finish.logs).unwrap_or_else(|_| "[]".into()))
        .collect();
    let finished: Vec<i64> = batch
        .iter()
        .map(|f| big(f.finish.finished_unix_ms))
        .collect();
    let generations: Vec<Option<i64>> =
        batch.iter().map(|f| f.finish.generation.map(big)).collect();
    let rows = client
        .query(
            &statement,
            &[
                &ids,
                &tokens,
                &statuses,
                &results,
                &errors,
                &logs,
                &finished,
                &generations,
            ],
        )
        .await
        .map_err(pg(what))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

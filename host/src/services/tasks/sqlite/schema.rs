//! The schema (one migration script per version, counted by `PRAGMA user_version`) and the
//! settings of a new connection.

use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};

use super::error::{describe_sql, Fail};

/// How long a statement waits for a lock another connection holds before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// Prepared statements kept per connection: more than this file has, so none is
/// re-prepared (the `list` variants included).
const STATEMENT_CACHE: usize = 64;

/// The schema, one script per version: `MIGRATIONS[n]` takes `user_version` from `n` to
/// `n + 1`. Times are milliseconds since the Unix epoch; `retry_delays_ms` and `logs` are
/// JSON arrays; `status` is the status's name.
pub(super) const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE tasks (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    plugin          TEXT    NOT NULL,
    callback        TEXT    NOT NULL,
    input           TEXT    NOT NULL,
    key             TEXT    NOT NULL,
    priority        INTEGER NOT NULL,
    status          TEXT    NOT NULL,
    attempts        INTEGER NOT NULL,
    max_attempts    INTEGER NOT NULL,
    retry_delays_ms TEXT    NOT NULL,
    not_before      INTEGER NOT NULL,
    created         INTEGER NOT NULL,
    started         INTEGER,
    finished        INTEGER,
    result          TEXT,
    error           TEXT,
    logs            TEXT    NOT NULL,
    parent          INTEGER,
    depth           INTEGER NOT NULL,
    schedule        TEXT,
    generation      INTEGER
);
-- Partial indexes where a query needs only some rows: every index a write touches is one
-- more page in the WAL, and pages written are what a transaction costs.
--
-- claim: the queued tasks of one priority in the order they are claimed (id is implied).
-- Only queued rows: finishing a task does not touch it.
CREATE INDEX tasks_queued ON tasks (priority, not_before) WHERE status = 'queued';
-- Deduplication: at most one active task per key; recover finds the running ones here.
CREATE UNIQUE INDEX tasks_active_key ON tasks (key) WHERE status IN ('queued', 'running');
-- age: the latest success of a key.
CREATE INDEX tasks_succeeded ON tasks (key, finished) WHERE status = 'success';
CREATE INDEX tasks_parent ON tasks (parent) WHERE parent IS NOT NULL;
-- active(plugin), next_due (plugin by plugin), list by plugin.
CREATE INDEX tasks_plugin ON tasks (plugin, status, not_before);
CREATE INDEX tasks_created ON tasks (created);
-- prune.
CREATE INDEX tasks_finished ON tasks (finished) WHERE finished IS NOT NULL;
CREATE TABLE schedules (
    name       TEXT PRIMARY KEY NOT NULL,
    last_fired INTEGER NOT NULL
);
",
    "
-- How many times the host stopped (died) during one of the task's attempts: recover
-- counts them, and names them when they spent the task's attempts.
ALTER TABLE tasks ADD COLUMN interrupted INTEGER NOT NULL DEFAULT 0;
",
    "
-- Why an operator cancelled or retried a task: kept apart from its logs, which each
-- attempt replaces; deleted with the task.
CREATE TABLE task_notes (
    task    INTEGER NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    at      INTEGER NOT NULL,
    message TEXT    NOT NULL
);
CREATE INDEX task_notes_task ON task_notes (task);
",
];

/// The schema version this file writes.
pub(super) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Configures a new connection, checks the database and brings its schema up to date.
pub(super) fn setup(conn: &mut Connection, wal: bool) -> Result<(), Fail> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    // The first statement that reads the file: a file that is not a database fails here.
    let problems = {
        let mut check = conn.prepare("PRAGMA quick_check")?;
        let rows = check.query_map([], |row| row.get::<_, String>(0))?;
        rows.take(3).collect::<Result<Vec<_>, _>>()?
    };
    if problems.first().map(String::as_str) != Some("ok") {
        return Err(Fail::Whole(format!(
            "integrity check failed: {} (is it corrupt? move it away to start afresh)",
            problems.join("; ")
        )));
    }
    if wal {
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Fail::Whole(format!(
                "cannot use write-ahead logging (journal mode stays {mode})"
            )));
        }
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    migrate(conn)
}

/// Creates the schema, or brings an older one up to [`SCHEMA_VERSION`].
fn migrate(conn: &mut Connection) -> Result<(), Fail> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Again, now that no one else can write: another host may have just done it.
    let version: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let from = usize::try_from(version)
        .ok()
        .filter(|&v| v <= MIGRATIONS.len())
        .ok_or_else(|| {
            Fail::Whole(format!(
                "its schema version is {version}, this host knows {SCHEMA_VERSION} at most \
                 (was it written by a newer host?)"
            ))
        })?;
    for (v, script) in MIGRATIONS.iter().enumerate().skip(from) {
        tx.execute_batch(script).map_err(|e| {
            Fail::Whole(format!(
                "cannot create its schema version {}: {}",
                v + 1,
                describe_sql(&e)
            ))
        })?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

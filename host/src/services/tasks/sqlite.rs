//! The SQLite task store: one file (`tasks.db`) holding every task and when each schedule
//! last fired. This file owns its schema (and its migrations, counted by
//! `PRAGMA user_version`), the connection's settings and what they promise:
//!
//! - **WAL** (`journal_mode=WAL`): other connections reading the file (a `sqlite3` shell,
//!   another process) never wait for the host's writes, and a commit is one append to the
//!   `-wal` file (copied into the database at checkpoints).
//! - **Durability** (`synchronous=NORMAL`): a committed transaction survives a kill of the
//!   process at any moment; after a power loss or an OS crash the database is still
//!   consistent, but the last transactions committed before it may be gone (a task
//!   inserted, claimed or finished again, as if the host had stopped a little earlier:
//!   tasks run at least once).
//! - **One writer**: every method is one transaction, writes `BEGIN IMMEDIATE`, and a
//!   busy timeout of 2 s turns a database held by another process into an error that
//!   says so rather than a host that hangs.
//!
//! Deduplication is atomic: a UNIQUE index on `key` over the active (`queued`, `running`)
//! tasks makes a second active task with a key impossible, whoever writes the file.

use std::fmt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::types::{Type, Value};
use rusqlite::{
    params, params_from_iter, Connection, ErrorCode, OptionalExtension, Row, TransactionBehavior,
};
use serde::de::DeserializeOwned;

use super::store::{StoreError, TaskStore};
use super::task::{Finish, Insert, Inserted, TaskFilter, TaskId, TaskRecord, TaskStatus};

/// How long a statement waits for a lock another connection holds before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// How many tasks [`TaskStore::list`] returns when the filter sets no limit.
const DEFAULT_LIST_LIMIT: usize = 1000;

/// Prepared statements kept per connection: more than this file has, so none is
/// re-prepared (the `list` variants included).
const STATEMENT_CACHE: usize = 64;

/// The schema, one script per version: `MIGRATIONS[n]` takes `user_version` from `n` to
/// `n + 1`. Times are milliseconds since the Unix epoch; `retry_delays_ms` and `logs` are
/// JSON arrays; `status` is the status's name.
const MIGRATIONS: &[&str] = &["
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
"];

/// The schema version this file writes.
const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The columns of a [`TaskRecord`], in the order [`record`] reads them.
macro_rules! task_columns {
    () => {
        "id, plugin, callback, input, key, priority, status, attempts, max_attempts, \
         retry_delays_ms, not_before, created, started, finished, result, error, logs, \
         parent, depth, schedule, generation"
    };
}

// The statements of the hot paths, and of those that must not scan every task kept:
// `the_statements_use_their_indexes` checks their plans.

/// The highest priority of a queued task.
const TOP_PRIORITY: &str = "SELECT priority FROM tasks INDEXED BY tasks_queued \
     WHERE status = 'queued' ORDER BY priority DESC LIMIT 1";

/// The queued tasks of priority `?1` due at `?2`, in the order they are claimed.
const DUE_OF_PRIORITY: &str = "SELECT id, plugin FROM tasks INDEXED BY tasks_queued \
     WHERE status = 'queued' AND priority = ?1 AND not_before <= ?2 \
     ORDER BY not_before, id";

/// The highest priority of a queued task below `?1`.
const NEXT_PRIORITY: &str = "SELECT priority FROM tasks INDEXED BY tasks_queued \
     WHERE status = 'queued' AND priority < ?1 ORDER BY priority DESC LIMIT 1";

/// The first plugin with tasks, by name.
const FIRST_PLUGIN: &str = "SELECT plugin FROM tasks ORDER BY plugin LIMIT 1";

/// When the first queued task of plugin `?1` is due.
const PLUGIN_DUE: &str =
    "SELECT MIN(not_before) FROM tasks WHERE plugin = ?1 AND status = 'queued'";

/// The plugin with tasks after `?1`, by name.
const NEXT_PLUGIN: &str = "SELECT plugin FROM tasks WHERE plugin > ?1 ORDER BY plugin LIMIT 1";

/// Queues the running tasks again, found among the active ones (not all those kept).
const RECOVER: &str = "UPDATE tasks INDEXED BY tasks_active_key SET status = 'queued' \
     WHERE status IN ('queued', 'running') AND status = 'running'";

/// The tasks of parent `?1`, oldest first.
const CHILDREN: &str = concat!(
    "SELECT ",
    task_columns!(),
    " FROM tasks WHERE parent = ?1 ORDER BY id"
);

/// How many tasks of plugin `?1` are active.
const ACTIVE_OF_PLUGIN: &str =
    "SELECT COUNT(*) FROM tasks WHERE plugin = ?1 AND status IN ('queued', 'running')";

/// Deletes the ended tasks that ended before `?1`.
const PRUNE_BEFORE: &str =
    "DELETE FROM tasks WHERE finished < ?1 AND status NOT IN ('queued', 'running')";

/// Deletes the ended tasks but the `?1` that ended last.
const PRUNE_BEYOND: &str = "DELETE FROM tasks WHERE id IN (\
       SELECT id FROM tasks \
       WHERE finished IS NOT NULL AND status NOT IN ('queued', 'running') \
       ORDER BY finished DESC, id DESC LIMIT -1 OFFSET ?1)";

/// The last task with key `?1` that succeeded at `?2` or after.
const LAST_SUCCESS: &str = "SELECT id, finished FROM tasks \
     WHERE key = ?1 AND status = 'success' AND finished >= ?2 \
     ORDER BY finished DESC LIMIT 1";

/// The active task with key `?1`.
const ACTIVE_WITH_KEY: &str =
    "SELECT id FROM tasks WHERE key = ?1 AND status IN ('queued', 'running')";

/// The task store kept in one SQLite file (or in memory, for tests).
///
/// One connection, behind a mutex: SQLite has one writer at a time anyway, and each method
/// is a short transaction.
pub struct SqliteStore {
    conn: Mutex<Connection>,
    path: Option<PathBuf>,
}

impl SqliteStore {
    /// Opens (creating it, and its directory with mode 0700, if missing) the task database
    /// at `path`: WAL, `synchronous=NORMAL`, foreign keys on, a busy timeout of 2 s; checks
    /// it (`PRAGMA quick_check`) and creates or migrates its schema.
    ///
    /// Fails, with one line naming the file, when it cannot be created or opened, is not a
    /// database or is corrupt, is locked by another process for more than 2 s, or was
    /// written by a newer host.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let name = path.display().to_string();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| {
                    open_error(
                        &name,
                        &format!("cannot create its directory {}: {e}", dir.display()),
                    )
                })?;
        }
        let mut conn = Connection::open(path).map_err(|e| open_error(&name, &describe_sql(&e)))?;
        setup(&mut conn, true).map_err(|e| open_error(&name, &e.describe()))?;
        tracing::debug!(path = %name, "task database open");
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            path: Some(path.to_owned()),
        })
    }

    /// A store in memory, gone when dropped: for tests.
    pub fn open_in_memory() -> Result<SqliteStore, StoreError> {
        let name = "(in memory)";
        let mut conn =
            Connection::open_in_memory().map_err(|e| open_error(name, &describe_sql(&e)))?;
        setup(&mut conn, false).map_err(|e| open_error(name, &e.describe()))?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            path: None,
        })
    }

    /// The database file; `None` in memory.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// How errors name the store.
    fn name(&self) -> String {
        match &self.path {
            Some(path) => path.display().to_string(),
            None => "(in memory)".to_owned(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while the lock was held dropped its transaction, which rolled it back:
        // the connection is fine.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction, committed if `f` succeeds; `what`
    /// (`claim tasks`) names what failed otherwise.
    fn write<T>(
        &self,
        what: &dyn fmt::Display,
        f: impl FnOnce(&Connection) -> Result<T, Fail>,
    ) -> Result<T, StoreError> {
        self.transaction(TransactionBehavior::Immediate, what, f)
    }

    /// Runs `f` in one read transaction.
    fn read<T>(
        &self,
        what: &dyn fmt::Display,
        f: impl FnOnce(&Connection) -> Result<T, Fail>,
    ) -> Result<T, StoreError> {
        self.transaction(TransactionBehavior::Deferred, what, f)
    }

    fn transaction<T>(
        &self,
        behavior: TransactionBehavior,
        what: &dyn fmt::Display,
        f: impl FnOnce(&Connection) -> Result<T, Fail>,
    ) -> Result<T, StoreError> {
        let mut conn = self.lock();
        let result = (|| {
            let tx = conn.transaction_with_behavior(behavior)?;
            let value = f(&tx)?;
            tx.commit()?;
            Ok(value)
        })();
        result.map_err(|e: Fail| self.error(what, e))
    }

    fn error(&self, what: &dyn fmt::Display, fail: Fail) -> StoreError {
        let text = match fail {
            Fail::Whole(text) => format!("task database {}: {text}", self.name()),
            fail => format!(
                "task database {}: cannot {what}: {}",
                self.name(),
                fail.describe()
            ),
        };
        StoreError(one_line(&text))
    }
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl TaskStore for SqliteStore {
    fn insert(&self, tasks: &[Insert]) -> Result<Vec<Inserted>, StoreError> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        self.write(&"insert tasks", |c| {
            tasks.iter().map(|task| insert_one(c, task)).collect()
        })
    }

    fn claim(
        &self,
        now_unix_ms: u64,
        limit: usize,
        exclude: &[String],
    ) -> Result<Vec<TaskRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let now = to_i64(now_unix_ms);
        self.write(&"claim tasks", |c| {
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
                    if exclude.iter().any(|e| e.as_str() == plugin) {
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
        })
    }

    fn next_due(&self, exclude: &[String]) -> Result<Option<u64>, StoreError> {
        self.read(&"find when the next task is due", |c| {
            // Plugin by plugin (there are few), each its earliest queued task: a few index
            // lookups each, however many tasks are queued (for the plugins left out too).
            let mut next: Option<u64> = None;
            let mut plugin: Option<String> = c
                .prepare_cached(FIRST_PLUGIN)?
                .query_row([], |row| row.get(0))
                .optional()?;
            while let Some(name) = plugin {
                if !exclude.contains(&name) {
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
        })
    }

    fn finish(&self, id: TaskId, finish: &Finish) -> Result<(), StoreError> {
        if finish.status.is_active() {
            let fail = Fail::Msg(format!("{} is not a final status", finish.status));
            return Err(self.error(&format_args!("finish task {id}"), fail));
        }
        self.write(&format_args!("finish task {id}"), |c| {
            let logs = serde_json::to_string(&finish.logs)?;
            let changed = c
                .prepare_cached(
                    "UPDATE tasks SET status = ?2, result = ?3, error = ?4, logs = ?5, \
                     finished = ?6, generation = ?7 WHERE id = ?1 AND status = 'running'",
                )?
                .execute(params![
                    id,
                    finish.status.as_str(),
                    finish.result,
                    finish.error,
                    logs,
                    to_i64(finish.finished_unix_ms),
                    finish.generation.map(to_i64),
                ])?;
            if changed == 0 {
                return Err(not_running(c, id));
            }
            Ok(())
        })
    }

    fn retry_later(
        &self,
        id: TaskId,
        not_before_unix_ms: u64,
        failed: &Finish,
    ) -> Result<(), StoreError> {
        self.write(&format_args!("queue task {id} for a retry"), |c| {
            let logs = serde_json::to_string(&failed.logs)?;
            let changed = c
                .prepare_cached(
                    "UPDATE tasks SET status = 'queued', not_before = ?2, error = ?3, logs = ?4, \
                     generation = ?5, finished = NULL WHERE id = ?1 AND status = 'running'",
                )?
                .execute(params![
                    id,
                    to_i64(not_before_unix_ms),
                    failed.error,
                    logs,
                    failed.generation.map(to_i64),
                ])?;
            if changed == 0 {
                return Err(not_running(c, id));
            }
            Ok(())
        })
    }

    fn recover(&self) -> Result<u64, StoreError> {
        self.write(&"queue the interrupted tasks again", |c| {
            let changed = c.prepare_cached(RECOVER)?.execute([])?;
            Ok(changed as u64)
        })
    }

    fn get(&self, id: TaskId) -> Result<Option<TaskRecord>, StoreError> {
        self.read(&format_args!("read task {id}"), |c| {
            let task = c
                .prepare_cached(concat!(
                    "SELECT ",
                    task_columns!(),
                    " FROM tasks WHERE id = ?1"
                ))?
                .query_row([id], record)
                .optional()?;
            Ok(task)
        })
    }

    fn children(&self, parent: TaskId) -> Result<Vec<TaskRecord>, StoreError> {
        self.read(&format_args!("read the tasks of task {parent}"), |c| {
            let mut stmt = c.prepare_cached(CHILDREN)?;
            let tasks = stmt
                .query_map([parent], record)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(tasks)
        })
    }

    fn list(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>, StoreError> {
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
        self.read(&"list tasks", |c| {
            let mut stmt = c.prepare_cached(&sql)?;
            let tasks = stmt
                .query_map(params_from_iter(args), record)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(tasks)
        })
    }

    fn cancel(&self, id: TaskId, now_unix_ms: u64) -> Result<Option<TaskStatus>, StoreError> {
        self.write(&format_args!("cancel task {id}"), |c| {
            let Some(status) = status_of(c, id)? else {
                return Ok(None);
            };
            if status == TaskStatus::Queued {
                c.prepare_cached(
                    "UPDATE tasks SET status = 'cancelled', finished = ?2 WHERE id = ?1",
                )?
                .execute(params![id, to_i64(now_unix_ms)])?;
            }
            Ok(Some(status))
        })
    }

    fn requeue(&self, id: TaskId, now_unix_ms: u64) -> Result<Option<TaskStatus>, StoreError> {
        self.write(&format_args!("queue task {id} again"), |c| {
            let found = c
                .prepare_cached("SELECT status, key FROM tasks WHERE id = ?1")?
                .query_row([id], |row| {
                    Ok((status_column(row, 0)?, row.get::<_, String>(1)?))
                })
                .optional()?;
            let Some((status, key)) = found else {
                return Ok(None);
            };
            if status.is_active() {
                return Ok(Some(status));
            }
            if let Some(other) = active_with_key(c, &key)? {
                return Err(Fail::Whole(format!(
                    "task {id} cannot be queued again: task {other} with key {key} is active"
                )));
            }
            c.prepare_cached(
                "UPDATE tasks SET status = 'queued', attempts = 0, not_before = ?2, \
                 finished = NULL, result = NULL, error = NULL, logs = '[]' WHERE id = ?1",
            )?
            .execute(params![id, to_i64(now_unix_ms)])?;
            Ok(Some(status))
        })
    }

    fn active(&self, plugin: &str) -> Result<u64, StoreError> {
        self.read(&format_args!("count the active tasks of {plugin}"), |c| {
            let count = c
                .prepare_cached(ACTIVE_OF_PLUGIN)?
                .query_row([plugin], |row| row.get(0))?;
            Ok(count)
        })
    }

    fn last_fired(&self, name: &str) -> Result<Option<u64>, StoreError> {
        self.read(&format_args!("read when schedule {name} last fired"), |c| {
            let at = c
                .prepare_cached("SELECT last_fired FROM schedules WHERE name = ?1")?
                .query_row([name], |row| row.get(0))
                .optional()?;
            Ok(at)
        })
    }

    fn set_last_fired(&self, name: &str, at_unix_ms: u64) -> Result<(), StoreError> {
        self.write(&format_args!("note that schedule {name} fired"), |c| {
            c.prepare_cached(
                "INSERT INTO schedules (name, last_fired) VALUES (?1, ?2) \
                 ON CONFLICT (name) DO UPDATE SET last_fired = excluded.last_fired",
            )?
            .execute(params![name, to_i64(at_unix_ms)])?;
            Ok(())
        })
    }

    fn prune(&self, before_unix_ms: u64, keep_max: u64) -> Result<u64, StoreError> {
        self.write(&"delete old tasks", |c| {
            let old = c
                .prepare_cached(PRUNE_BEFORE)?
                .execute([to_i64(before_unix_ms)])?;
            let beyond = c
                .prepare_cached(PRUNE_BEYOND)?
                .execute([to_i64(keep_max)])?;
            Ok((old + beyond) as u64)
        })
    }
}

/// Why a transaction failed, before it is made a [`StoreError`].
#[derive(Debug)]
enum Fail {
    Sql(rusqlite::Error),
    Json(serde_json::Error),
    /// Says what went wrong; [`SqliteStore::error`] adds what could not be done.
    Msg(String),
    /// The whole message, after the store's name.
    Whole(String),
}

impl From<rusqlite::Error> for Fail {
    fn from(e: rusqlite::Error) -> Fail {
        Fail::Sql(e)
    }
}

impl From<rusqlite::types::FromSqlError> for Fail {
    fn from(e: rusqlite::types::FromSqlError) -> Fail {
        Fail::Sql(e.into())
    }
}

impl From<serde_json::Error> for Fail {
    fn from(e: serde_json::Error) -> Fail {
        Fail::Json(e)
    }
}

impl Fail {
    fn describe(&self) -> String {
        match self {
            Fail::Sql(e) => describe_sql(e),
            Fail::Json(e) => format!("cannot encode JSON: {e}"),
            Fail::Msg(text) | Fail::Whole(text) => text.clone(),
        }
    }
}

/// What a SQLite error means for whoever runs the host.
fn describe_sql(e: &rusqlite::Error) -> String {
    let (err, message) = match e {
        rusqlite::Error::SqliteFailure(err, message) => (err, message.as_deref()),
        // The message without the SQL it quotes (`bundled` brings this variant).
        rusqlite::Error::SqlInputError { error, msg, .. } => (error, Some(msg.as_str())),
        _ => return e.to_string(),
    };
    let hint = match err.code {
        ErrorCode::NotADatabase => {
            return "file is not a database (is it corrupt? move it away to start afresh)".into()
        }
        ErrorCode::DatabaseCorrupt => {
            return "database disk image is malformed \
                    (is it corrupt? move it away to start afresh)"
                .into()
        }
        ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => {
            return "database is locked (another host uses it?)".into()
        }
        ErrorCode::ReadOnly => " (is the file or its directory read-only?)",
        ErrorCode::CannotOpen | ErrorCode::PermissionDenied => {
            " (may this user create and write the file and its directory?)"
        }
        ErrorCode::DiskFull => " (is the disk full?)",
        _ => "",
    };
    let text = message.unwrap_or_else(|| rusqlite::ffi::code_to_str(err.extended_code));
    format!("{text}{hint}")
}

/// `text` on one line: control characters (newlines in a path or a key) become spaces.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn open_error(name: &str, what: &str) -> StoreError {
    StoreError(one_line(&format!("task database {name}: {what}")))
}

/// Configures a new connection, checks the database and brings its schema up to date.
fn setup(conn: &mut Connection, wal: bool) -> Result<(), Fail> {
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

/// A time (or any `u64`) as SQLite stores it; beyond `i64::MAX` (never, for a time) it
/// saturates, which keeps the order.
fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Inserts one task of an [`TaskStore::insert`] batch.
fn insert_one(c: &Connection, task: &Insert) -> Result<Inserted, Fail> {
    if let Some(reason) = &task.refused {
        let id = insert_row(c, task, TaskStatus::Refused, Some(reason))?;
        return Ok(Inserted::Refused(id));
    }
    if let Some(id) = active_with_key(c, &task.key)? {
        return Ok(Inserted::Duplicate(id));
    }
    if let Some(age) = task.age_ms {
        let since = task.created_unix_ms.saturating_sub(age);
        let succeeded = c
            .prepare_cached(LAST_SUCCESS)?
            .query_row(params![task.key, to_i64(since)], |row| {
                Ok((row.get::<_, TaskId>(0)?, row.get::<_, u64>(1)?))
            })
            .optional()?;
        if let Some((done, finished)) = succeeded {
            let ago = task.created_unix_ms.saturating_sub(finished);
            let error = format!(
                "skipped: task {done} with key {} succeeded {ago} ms ago (age {age} ms)",
                task.key
            );
            let id = insert_row(c, task, TaskStatus::Skipped, Some(&error))?;
            return Ok(Inserted::Skipped(id));
        }
    }
    let id = insert_row(c, task, TaskStatus::Queued, None)?;
    Ok(Inserted::Queued(id))
}

/// Inserts `task` as a new row in `status`; a final one ends when it is made.
fn insert_row(
    c: &Connection,
    task: &Insert,
    status: TaskStatus,
    error: Option<&str>,
) -> Result<TaskId, Fail> {
    let created = to_i64(task.created_unix_ms);
    let finished = (!status.is_active()).then_some(created);
    let delays = serde_json::to_string(&task.retry_delays_ms)?;
    c.prepare_cached(
        "INSERT INTO tasks (plugin, callback, input, key, priority, status, attempts, \
         max_attempts, retry_delays_ms, not_before, created, finished, error, logs, parent, \
         depth, schedule) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?8, ?9, ?10, ?11, ?12, '[]', ?13, ?14, ?15)",
    )?
    .execute(params![
        task.plugin,
        task.callback,
        task.input,
        task.key,
        task.priority,
        status.as_str(),
        task.max_attempts,
        delays,
        to_i64(task.not_before_unix_ms),
        created,
        finished,
        error,
        task.parent,
        task.depth,
        task.schedule,
    ])?;
    Ok(c.last_insert_rowid())
}

/// The active (queued or running) task with `key`.
fn active_with_key(c: &Connection, key: &str) -> Result<Option<TaskId>, Fail> {
    let id = c
        .prepare_cached(ACTIVE_WITH_KEY)?
        .query_row([key], |row| row.get(0))
        .optional()?;
    Ok(id)
}

/// The status of task `id`.
fn status_of(c: &Connection, id: TaskId) -> Result<Option<TaskStatus>, Fail> {
    let status = c
        .prepare_cached("SELECT status FROM tasks WHERE id = ?1")?
        .query_row([id], |row| status_column(row, 0))
        .optional()?;
    Ok(status)
}

/// Why task `id` could not be updated as a running one.
fn not_running(c: &Connection, id: TaskId) -> Fail {
    match status_of(c, id) {
        Ok(None) => Fail::Msg("no such task".to_owned()),
        Ok(Some(status)) => Fail::Msg(format!("it is {status}, not running")),
        Err(fail) => fail,
    }
}

fn status_column(row: &Row<'_>, idx: usize) -> rusqlite::Result<TaskStatus> {
    let name = row.get_ref(idx)?.as_str()?;
    TaskStatus::parse(name).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            idx,
            Type::Text,
            format!("unknown task status {name:?}").into(),
        )
    })
}

fn json_column<T: DeserializeOwned>(row: &Row<'_>, idx: usize) -> rusqlite::Result<T> {
    let text = row.get_ref(idx)?.as_str()?;
    serde_json::from_str(text)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, Box::new(e)))
}

/// A task from a row of [`task_columns!`].
fn record(row: &Row<'_>) -> rusqlite::Result<TaskRecord> {
    Ok(TaskRecord {
        id: row.get(0)?,
        plugin: row.get(1)?,
        callback: row.get(2)?,
        input: row.get(3)?,
        key: row.get(4)?,
        priority: row.get(5)?,
        status: status_column(row, 6)?,
        attempts: row.get(7)?,
        max_attempts: row.get(8)?,
        retry_delays_ms: json_column(row, 9)?,
        not_before_unix_ms: row.get(10)?,
        created_unix_ms: row.get(11)?,
        started_unix_ms: row.get(12)?,
        finished_unix_ms: row.get(13)?,
        result: row.get(14)?,
        error: row.get(15)?,
        logs: json_column(row, 16)?,
        parent: row.get(17)?,
        depth: row.get(18)?,
        schedule: row.get(19)?,
        generation: row.get(20)?,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{mpsc, Arc};

    use plugin_api::{Level, LogRecord};

    use super::*;

    fn store() -> SqliteStore {
        SqliteStore::open_in_memory().unwrap()
    }

    fn task(plugin: &str, key: &str) -> Insert {
        Insert {
            plugin: plugin.to_owned(),
            callback: "execute".to_owned(),
            input: "{}".to_owned(),
            key: key.to_owned(),
            priority: 0,
            max_attempts: 3,
            retry_delays_ms: vec![100, 1_000],
            not_before_unix_ms: 1_000,
            age_ms: None,
            parent: None,
            depth: 0,
            schedule: None,
            created_unix_ms: 1_000,
            refused: None,
        }
    }

    fn ended(status: TaskStatus, at: u64) -> Finish {
        Finish {
            status,
            result: None,
            error: None,
            logs: Vec::new(),
            finished_unix_ms: at,
            generation: Some(1),
        }
    }

    fn insert(store: &SqliteStore, task: Insert) -> Inserted {
        let answers = store.insert(&[task]).unwrap();
        assert_eq!(answers.len(), 1);
        answers[0]
    }

    fn queue(store: &SqliteStore, task: Insert) -> TaskId {
        match insert(store, task) {
            Inserted::Queued(id) => id,
            other => panic!("not queued: {other:?}"),
        }
    }

    fn get(store: &SqliteStore, id: TaskId) -> TaskRecord {
        store.get(id).unwrap().unwrap()
    }

    fn claim_ids(store: &SqliteStore, now: u64, limit: usize, exclude: &[&str]) -> Vec<TaskId> {
        let exclude: Vec<String> = exclude.iter().map(|s| s.to_string()).collect();
        let claimed = store.claim(now, limit, &exclude).unwrap();
        for task in &claimed {
            assert_eq!(task.status, TaskStatus::Running);
            assert_eq!(task.started_unix_ms, Some(now));
        }
        claimed.iter().map(|t| t.id).collect()
    }

    /// Queues a task of key `key`, runs it and ends it in `status` at `at`.
    fn run(store: &SqliteStore, key: &str, status: TaskStatus, at: u64) -> TaskId {
        let id = queue(store, task("p", key));
        assert_eq!(claim_ids(store, at, 1, &[]), vec![id]);
        store.finish(id, &ended(status, at)).unwrap();
        id
    }

    fn log(message: &str) -> LogRecord {
        LogRecord {
            level: Level::Warn,
            message: message.to_owned(),
            unix_ms: 1_234,
        }
    }

    #[test]
    fn a_task_keeps_every_field() {
        let store = store();
        let parent = queue(&store, task("p", "parent"));
        let mut t = task("q", "k");
        t.callback = "work".to_owned();
        t.input = r#"{"n":1}"#.to_owned();
        t.priority = -3;
        t.max_attempts = 5;
        t.retry_delays_ms = vec![1, 2, 3];
        t.not_before_unix_ms = 1_500;
        t.created_unix_ms = 1_100;
        t.parent = Some(parent);
        t.depth = 2;
        t.schedule = Some("nightly".to_owned());
        let id = queue(&store, t);

        let queued = get(&store, id);
        let expected = TaskRecord {
            id,
            plugin: "q".to_owned(),
            callback: "work".to_owned(),
            input: r#"{"n":1}"#.to_owned(),
            key: "k".to_owned(),
            priority: -3,
            status: TaskStatus::Queued,
            attempts: 0,
            max_attempts: 5,
            retry_delays_ms: vec![1, 2, 3],
            not_before_unix_ms: 1_500,
            created_unix_ms: 1_100,
            started_unix_ms: None,
            finished_unix_ms: None,
            result: None,
            error: None,
            logs: Vec::new(),
            parent: Some(parent),
            depth: 2,
            schedule: Some("nightly".to_owned()),
            generation: None,
        };
        assert_eq!(queued, expected);

        let claimed = store.claim(2_000, 10, &["p".to_owned()]).unwrap();
        assert_eq!(
            claimed,
            vec![TaskRecord {
                status: TaskStatus::Running,
                attempts: 1,
                started_unix_ms: Some(2_000),
                ..expected.clone()
            }]
        );

        let finish = Finish {
            status: TaskStatus::Success,
            result: Some(r#"{"ok":true}"#.to_owned()),
            error: Some("a warning".to_owned()),
            logs: vec![log("one"), log("two\nlines")],
            finished_unix_ms: 2_500,
            generation: Some(7),
        };
        store.finish(id, &finish).unwrap();
        assert_eq!(
            get(&store, id),
            TaskRecord {
                status: TaskStatus::Success,
                attempts: 1,
                started_unix_ms: Some(2_000),
                finished_unix_ms: Some(2_500),
                result: finish.result.clone(),
                error: finish.error.clone(),
                logs: finish.logs.clone(),
                generation: Some(7),
                ..expected
            }
        );
        assert_eq!(store.get(id + 100).unwrap(), None);
    }

    #[test]
    fn an_active_key_is_not_queued_twice() {
        let store = store();
        let a = queue(&store, task("p", "k"));
        assert_eq!(insert(&store, task("p", "k")), Inserted::Duplicate(a));
        // In one batch, the second sees the first.
        let batch = store.insert(&[task("p", "k2"), task("q", "k2")]).unwrap();
        let b = batch[0].id();
        assert_eq!(batch, vec![Inserted::Queued(b), Inserted::Duplicate(b)]);

        // Running is active too.
        assert_eq!(claim_ids(&store, 1_000, 1, &[]), vec![a]);
        assert_eq!(insert(&store, task("p", "k")), Inserted::Duplicate(a));

        // Once it has ended, the key may be queued again.
        store.finish(a, &ended(TaskStatus::Success, 2_000)).unwrap();
        let c = queue(&store, task("p", "k"));
        assert!(c > b);
        assert_eq!(store.active("p").unwrap(), 2);
    }

    #[test]
    fn the_unique_index_holds_one_active_task_per_key() {
        let store = store();
        queue(&store, task("p", "k"));
        let conn = store.lock();
        let twice = conn.execute(
            "INSERT INTO tasks (plugin, callback, input, key, priority, status, attempts, \
             max_attempts, retry_delays_ms, not_before, created, logs, depth) \
             VALUES ('p', 'execute', '{}', 'k', 0, 'running', 0, 1, '[]', 0, 0, '[]', 0)",
            [],
        );
        match twice {
            Err(rusqlite::Error::SqliteFailure(e, _)) => {
                assert_eq!(e.code, ErrorCode::ConstraintViolation)
            }
            other => panic!("a second active task with key k: {other:?}"),
        }
        // Ended tasks may share it.
        for _ in 0..2 {
            conn.execute(
                "INSERT INTO tasks (plugin, callback, input, key, priority, status, attempts, \
                 max_attempts, retry_delays_ms, not_before, created, logs, depth) \
                 VALUES ('p', 'execute', '{}', 'k', 0, 'failed', 1, 1, '[]', 0, 0, '[]', 0)",
                [],
            )
            .unwrap();
        }
    }

    #[test]
    fn a_key_that_succeeded_within_its_age_is_skipped() {
        let store = store();
        let done = run(&store, "k", TaskStatus::Success, 5_000);
        run(&store, "k", TaskStatus::Failed, 5_800);

        let mut t = task("p", "k");
        t.created_unix_ms = 6_000;
        t.age_ms = Some(1_000);
        let skipped = match insert(&store, t.clone()) {
            Inserted::Skipped(id) => id,
            other => panic!("not skipped: {other:?}"),
        };
        let record = get(&store, skipped);
        assert_eq!(record.status, TaskStatus::Skipped);
        assert_eq!(record.finished_unix_ms, Some(6_000));
        assert_eq!(record.attempts, 0);
        assert_eq!(
            record.error.as_deref(),
            Some(
                format!("skipped: task {done} with key k succeeded 1000 ms ago (age 1000 ms)")
                    .as_str()
            )
        );
        assert_eq!(store.active("p").unwrap(), 0);

        // Just outside its age (a failure does not count): queued.
        t.age_ms = Some(999);
        let queued = queue(&store, t.clone());
        // And while that one is active, a duplicate whatever the age.
        t.age_ms = Some(10_000);
        assert_eq!(insert(&store, t.clone()), Inserted::Duplicate(queued));
        store.cancel(queued, 6_000).unwrap();
        // Without an age, a success does not matter.
        t.age_ms = None;
        queue(&store, t);
    }

    #[test]
    fn a_refused_task_is_recorded_and_never_queued() {
        let store = store();
        let active = queue(&store, task("p", "k"));
        let mut t = task("p", "k");
        t.refused = Some("over the follow-up depth limit (8)".to_owned());
        t.created_unix_ms = 1_200;
        let refused = match insert(&store, t) {
            Inserted::Refused(id) => id,
            other => panic!("not refused: {other:?}"),
        };
        assert_ne!(refused, active);
        let record = get(&store, refused);
        assert_eq!(record.status, TaskStatus::Refused);
        assert_eq!(
            record.error.as_deref(),
            Some("over the follow-up depth limit (8)")
        );
        assert_eq!(record.finished_unix_ms, Some(1_200));
        assert_eq!(store.active("p").unwrap(), 1);
        assert_eq!(claim_ids(&store, 10_000, 10, &[]), vec![active]);
    }

    #[test]
    fn claim_takes_the_highest_priority_then_the_longest_due_then_the_oldest() {
        let store = store();
        let mut ids = Vec::new();
        for (key, priority, not_before) in [
            ("a", 0, 100),
            ("b", 5, 300),
            ("c", 5, 200),
            ("d", 0, 100),
            ("e", 5, 5_000),
            ("f", 9, 5_000),
            ("g", -1, 0),
        ] {
            let mut t = task("p", key);
            t.priority = priority;
            t.not_before_unix_ms = not_before;
            ids.push(queue(&store, t));
        }
        let [a, b, c, d, e, f, g] = ids[..] else {
            unreachable!()
        };
        assert_eq!(claim_ids(&store, 1_000, 3, &[]), vec![c, b, a]);
        assert_eq!(claim_ids(&store, 1_000, 10, &[]), vec![d, g]);
        assert_eq!(claim_ids(&store, 1_000, 10, &[]), Vec::<TaskId>::new());
        // Due exactly at its time.
        assert_eq!(claim_ids(&store, 5_000, 10, &[]), vec![f, e]);
        for id in [a, b, c, d, e, f, g] {
            let record = get(&store, id);
            assert_eq!(record.status, TaskStatus::Running);
            assert_eq!(record.attempts, 1);
        }
    }

    #[test]
    fn claim_leaves_out_excluded_plugins_and_respects_its_limit() {
        let store = store();
        let mut t = task("busy", "1");
        t.priority = 10;
        let busy = queue(&store, t);
        let x1 = queue(&store, task("x", "2"));
        let y1 = queue(&store, task("y", "3"));
        let x2 = queue(&store, task("x", "4"));

        assert_eq!(claim_ids(&store, 1_000, 0, &[]), Vec::<TaskId>::new());
        assert_eq!(claim_ids(&store, 1_000, 2, &["busy"]), vec![x1, y1]);
        assert_eq!(
            claim_ids(&store, 1_000, 5, &["busy", "x"]),
            Vec::<TaskId>::new()
        );
        assert_eq!(claim_ids(&store, 1_000, 5, &["y"]), vec![busy, x2]);
    }

    #[test]
    fn next_due_is_the_earliest_queued_task_not_left_out() {
        let store = store();
        assert_eq!(store.next_due(&[]).unwrap(), None);
        let mut t = task("x", "1");
        t.not_before_unix_ms = 300;
        queue(&store, t);
        let mut t = task("y", "2");
        t.not_before_unix_ms = 200;
        queue(&store, t);
        let mut t = task("z", "3");
        t.not_before_unix_ms = 100;
        let z = queue(&store, t);
        // Running tasks are not due.
        assert_eq!(claim_ids(&store, 150, 1, &[]), vec![z]);

        let names = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(store.next_due(&[]).unwrap(), Some(200));
        assert_eq!(store.next_due(&names(&["y"])).unwrap(), Some(300));
        assert_eq!(store.next_due(&names(&["x"])).unwrap(), Some(200));
        assert_eq!(store.next_due(&names(&["x", "y"])).unwrap(), None);
        assert_eq!(store.next_due(&names(&["nobody"])).unwrap(), Some(200));
    }

    #[test]
    fn retry_later_queues_a_task_again_with_its_attempt_kept() {
        let store = store();
        let id = queue(&store, task("p", "k"));
        assert_eq!(claim_ids(&store, 1_000, 1, &[]), vec![id]);
        let failed = Finish {
            status: TaskStatus::Failed,
            result: None,
            error: Some("timed out".to_owned()),
            logs: vec![log("trying")],
            finished_unix_ms: 1_100,
            generation: Some(3),
        };
        store.retry_later(id, 2_000, &failed).unwrap();
        let record = get(&store, id);
        assert_eq!(record.status, TaskStatus::Queued);
        assert_eq!(record.not_before_unix_ms, 2_000);
        assert_eq!(record.attempts, 1);
        assert_eq!(record.started_unix_ms, Some(1_000));
        assert_eq!(record.finished_unix_ms, None);
        assert_eq!(record.error.as_deref(), Some("timed out"));
        assert_eq!(record.logs, vec![log("trying")]);
        assert_eq!(record.generation, Some(3));
        // Still active: its key is not queued twice.
        assert_eq!(insert(&store, task("p", "k")), Inserted::Duplicate(id));

        assert_eq!(store.next_due(&[]).unwrap(), Some(2_000));
        assert_eq!(claim_ids(&store, 1_999, 1, &[]), Vec::<TaskId>::new());
        let again = store.claim(2_000, 1, &[]).unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].attempts, 2);
        assert_eq!(again[0].started_unix_ms, Some(2_000));
        store
            .finish(id, &ended(TaskStatus::Success, 2_100))
            .unwrap();
        assert_eq!(get(&store, id).attempts, 2);
    }

    #[test]
    fn finish_and_retry_later_need_a_running_task() {
        let store = store();
        let id = queue(&store, task("p", "k"));
        let err = store
            .finish(id, &ended(TaskStatus::Success, 2_000))
            .unwrap_err();
        assert_eq!(
            err.0,
            format!(
                "task database (in memory): cannot finish task {id}: it is queued, not running"
            )
        );
        let err = store
            .retry_later(id, 3_000, &ended(TaskStatus::Failed, 2_000))
            .unwrap_err();
        assert!(err.0.contains("it is queued, not running"), "{err}");
        let err = store
            .finish(id + 1, &ended(TaskStatus::Success, 2_000))
            .unwrap_err();
        assert!(err.0.ends_with("no such task"), "{err}");

        assert_eq!(claim_ids(&store, 1_000, 1, &[]), vec![id]);
        let err = store
            .finish(id, &ended(TaskStatus::Queued, 2_000))
            .unwrap_err();
        assert!(err.0.contains("queued is not a final status"), "{err}");
        assert_eq!(get(&store, id).status, TaskStatus::Running);
        store.finish(id, &ended(TaskStatus::Bad, 2_000)).unwrap();
        let err = store
            .finish(id, &ended(TaskStatus::Success, 2_000))
            .unwrap_err();
        assert!(err.0.contains("it is bad, not running"), "{err}");
        assert_eq!(get(&store, id).status, TaskStatus::Bad);
    }

    #[test]
    fn recover_queues_again_what_ran_when_the_host_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.db");
        let store = SqliteStore::open(&path).unwrap();
        let running = queue(&store, task("p", "1"));
        let queued = queue(&store, task("p", "2"));
        assert_eq!(claim_ids(&store, 1_000, 1, &[]), vec![running]);
        // A crash: the connection is never closed (no checkpoint, the WAL stays).
        std::mem::forget(store);

        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(get(&store, running).status, TaskStatus::Running);
        assert_eq!(store.recover().unwrap(), 1);
        assert_eq!(store.recover().unwrap(), 0);
        let record = get(&store, running);
        assert_eq!(record.status, TaskStatus::Queued);
        assert_eq!(record.attempts, 1);
        let claimed = store.claim(2_000, 10, &[]).unwrap();
        assert_eq!(
            claimed
                .iter()
                .map(|t| (t.id, t.attempts))
                .collect::<Vec<_>>(),
            vec![(running, 2), (queued, 1)]
        );
    }

    #[test]
    fn cancel_cancels_only_a_queued_task() {
        let store = store();
        let running = queue(&store, task("p", "1"));
        let queued = queue(&store, task("p", "2"));
        assert_eq!(claim_ids(&store, 1_000, 1, &[]), vec![running]);

        assert_eq!(
            store.cancel(queued, 1_500).unwrap(),
            Some(TaskStatus::Queued)
        );
        let record = get(&store, queued);
        assert_eq!(record.status, TaskStatus::Cancelled);
        assert_eq!(record.finished_unix_ms, Some(1_500));
        // Again: nothing changes.
        assert_eq!(
            store.cancel(queued, 1_600).unwrap(),
            Some(TaskStatus::Cancelled)
        );
        assert_eq!(get(&store, queued).finished_unix_ms, Some(1_500));

        assert_eq!(
            store.cancel(running, 1_500).unwrap(),
            Some(TaskStatus::Running)
        );
        assert_eq!(get(&store, running).status, TaskStatus::Running);
        assert_eq!(store.cancel(queued + 10, 1_500).unwrap(), None);
        // The cancelled task's key is free again.
        queue(&store, task("p", "2"));
    }

    #[test]
    fn requeue_queues_an_ended_task_again() {
        let store = store();
        let id = queue(&store, task("p", "k"));
        assert_eq!(store.requeue(id, 1_500).unwrap(), Some(TaskStatus::Queued));
        assert_eq!(claim_ids(&store, 1_000, 1, &[]), vec![id]);
        assert_eq!(store.requeue(id, 1_500).unwrap(), Some(TaskStatus::Running));
        let failed = Finish {
            status: TaskStatus::Failed,
            result: Some("null".to_owned()),
            error: Some("boom".to_owned()),
            logs: vec![log("x")],
            finished_unix_ms: 1_200,
            generation: Some(2),
        };
        store.finish(id, &failed).unwrap();

        assert_eq!(store.requeue(id, 9_000).unwrap(), Some(TaskStatus::Failed));
        let record = get(&store, id);
        assert_eq!(record.status, TaskStatus::Queued);
        assert_eq!(record.attempts, 0);
        assert_eq!(record.not_before_unix_ms, 9_000);
        assert_eq!(record.finished_unix_ms, None);
        assert_eq!(record.result, None);
        assert_eq!(record.error, None);
        assert_eq!(record.logs, Vec::new());
        assert_eq!(insert(&store, task("p", "k")), Inserted::Duplicate(id));
        assert_eq!(claim_ids(&store, 8_999, 1, &[]), Vec::<TaskId>::new());
        assert_eq!(claim_ids(&store, 9_000, 1, &[]), vec![id]);
        assert_eq!(get(&store, id).attempts, 1);

        assert_eq!(store.requeue(id + 10, 9_000).unwrap(), None);
    }

    #[test]
    fn requeue_fails_while_another_task_with_its_key_is_active() {
        let store = store();
        let old = run(&store, "k", TaskStatus::Failed, 1_000);
        let active = queue(&store, task("p", "k"));
        let err = store.requeue(old, 2_000).unwrap_err();
        assert_eq!(
            err.0,
            format!(
                "task database (in memory): task {old} cannot be queued again: \
                 task {active} with key k is active"
            )
        );
        assert_eq!(get(&store, old).status, TaskStatus::Failed);
        // A refused or skipped task can be queued again too, once the key is free.
        store.cancel(active, 2_000).unwrap();
        assert_eq!(store.requeue(old, 2_000).unwrap(), Some(TaskStatus::Failed));
        let mut t = task("p", "r");
        t.refused = Some("too deep".to_owned());
        let refused = insert(&store, t).id();
        assert_eq!(
            store.requeue(refused, 2_000).unwrap(),
            Some(TaskStatus::Refused)
        );
        assert_eq!(get(&store, refused).status, TaskStatus::Queued);
    }

    #[test]
    fn prune_deletes_ended_tasks_that_ended_before_a_time() {
        let store = store();
        let old = run(&store, "1", TaskStatus::Success, 1_000);
        let also_old = run(&store, "2", TaskStatus::Failed, 1_999);
        let recent = run(&store, "3", TaskStatus::Bad, 2_000);
        let mut t = task("p", "4");
        t.created_unix_ms = 500;
        t.refused = Some("no".to_owned());
        let refused = insert(&store, t).id();
        let queued = queue(&store, task("p", "5"));
        let running = queue(&store, task("p", "6"));
        assert_eq!(claim_ids(&store, 1_000, 10, &[]), vec![queued, running]);
        store
            .retry_later(queued, 0, &ended(TaskStatus::Failed, 100))
            .unwrap();

        assert_eq!(store.prune(2_000, 1_000).unwrap(), 3);
        for id in [old, also_old, refused] {
            assert_eq!(store.get(id).unwrap(), None);
        }
        for id in [recent, queued, running] {
            assert!(store.get(id).unwrap().is_some());
        }
        // Active tasks are kept whatever the time.
        assert_eq!(store.prune(u64::MAX, 1_000).unwrap(), 1);
        assert_eq!(store.active("p").unwrap(), 2);
        assert_eq!(store.prune(u64::MAX, 0).unwrap(), 0);
    }

    #[test]
    fn prune_keeps_the_newest_ended_tasks() {
        let store = store();
        let ended: Vec<TaskId> = (0..6)
            .map(|i| run(&store, &format!("k{i}"), TaskStatus::Success, 1_000 + i))
            .collect();
        let active = queue(&store, task("p", "active"));
        assert_eq!(store.prune(0, 10).unwrap(), 0);
        assert_eq!(store.prune(0, 2).unwrap(), 4);
        let left: Vec<TaskId> = store
            .list(&TaskFilter::default())
            .unwrap()
            .iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(left, vec![active, ended[5], ended[4]]);
        assert_eq!(store.prune(0, 0).unwrap(), 2);
        assert_eq!(
            store
                .list(&TaskFilter::default())
                .unwrap()
                .iter()
                .map(|t| t.id)
                .collect::<Vec<_>>(),
            vec![active]
        );
    }

    #[test]
    fn task_ids_are_never_reused() {
        let store = store();
        let first = run(&store, "1", TaskStatus::Success, 1_000);
        assert_eq!(store.prune(u64::MAX, 0).unwrap(), 1);
        let next = queue(&store, task("p", "2"));
        assert!(next > first, "{next} after {first}");
    }

    #[test]
    fn list_filters_newest_first() {
        let store = store();
        let mut ids = Vec::new();
        for (plugin, created) in [("x", 100), ("y", 200), ("x", 300), ("y", 400)] {
            let mut t = task(plugin, &format!("{plugin}{created}"));
            t.created_unix_ms = created;
            ids.push(queue(&store, t));
        }
        let [x1, y1, x2, y2] = ids[..] else {
            unreachable!()
        };
        assert_eq!(claim_ids(&store, 1_000, 1, &["y"]), vec![x1]);
        store
            .finish(x1, &ended(TaskStatus::Success, 1_000))
            .unwrap();

        let list = |filter: TaskFilter| -> Vec<TaskId> {
            store.list(&filter).unwrap().iter().map(|t| t.id).collect()
        };
        assert_eq!(list(TaskFilter::default()), vec![y2, x2, y1, x1]);
        let by_plugin = TaskFilter {
            plugin: Some("x".to_owned()),
            ..TaskFilter::default()
        };
        assert_eq!(list(by_plugin.clone()), vec![x2, x1]);
        let by_status = TaskFilter {
            status: Some(TaskStatus::Queued),
            ..TaskFilter::default()
        };
        assert_eq!(list(by_status.clone()), vec![y2, x2, y1]);
        let since = TaskFilter {
            since_unix_ms: Some(200),
            ..TaskFilter::default()
        };
        assert_eq!(list(since), vec![y2, x2, y1]);
        let all_three = TaskFilter {
            status: Some(TaskStatus::Queued),
            plugin: Some("y".to_owned()),
            since_unix_ms: Some(300),
            limit: 0,
        };
        assert_eq!(list(all_three), vec![y2]);
        let limited = TaskFilter {
            limit: 2,
            ..TaskFilter::default()
        };
        assert_eq!(list(limited), vec![y2, x2]);
        let none = TaskFilter {
            status: Some(TaskStatus::Cancelled),
            ..by_plugin
        };
        assert_eq!(list(none), Vec::<TaskId>::new());
    }

    #[test]
    fn list_returns_a_thousand_tasks_by_default() {
        let store = store();
        let tasks: Vec<Insert> = (0..1_005).map(|i| task("p", &i.to_string())).collect();
        let ids: Vec<TaskId> = store
            .insert(&tasks)
            .unwrap()
            .iter()
            .map(|i| i.id())
            .collect();
        let listed = store.list(&TaskFilter::default()).unwrap();
        assert_eq!(listed.len(), 1_000);
        assert_eq!(listed[0].id, ids[1_004]);
        assert_eq!(listed[999].id, ids[5]);
    }

    #[test]
    fn children_are_listed_oldest_first() {
        let store = store();
        let parent = queue(&store, task("p", "parent"));
        let other = queue(&store, task("p", "other"));
        let mut kids = Vec::new();
        for i in 0..3 {
            let mut t = task("q", &format!("kid{i}"));
            t.parent = Some(parent);
            t.depth = 1;
            if i == 1 {
                t.refused = Some("too many".to_owned());
            }
            kids.push(insert(&store, t).id());
        }
        let mut t = task("q", "grandkid");
        t.parent = Some(kids[0]);
        queue(&store, t);

        let children: Vec<TaskId> = store
            .children(parent)
            .unwrap()
            .iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(children, kids);
        assert_eq!(store.children(other).unwrap(), Vec::new());
        assert_eq!(store.children(kids[0]).unwrap().len(), 1);
    }

    #[test]
    fn active_counts_queued_and_running_tasks_of_a_plugin() {
        let store = store();
        assert_eq!(store.active("p").unwrap(), 0);
        run(&store, "done", TaskStatus::Success, 1_000);
        queue(&store, task("p", "1"));
        queue(&store, task("p", "2"));
        queue(&store, task("q", "3"));
        claim_ids(&store, 1_000, 1, &["q"]);
        assert_eq!(store.active("p").unwrap(), 2);
        assert_eq!(store.active("q").unwrap(), 1);
        assert_eq!(store.active("r").unwrap(), 0);
    }

    #[test]
    fn schedules_remember_when_they_last_fired() {
        let store = store();
        assert_eq!(store.last_fired("nightly").unwrap(), None);
        store.set_last_fired("nightly", 1_000).unwrap();
        store.set_last_fired("hourly", 5).unwrap();
        assert_eq!(store.last_fired("nightly").unwrap(), Some(1_000));
        store.set_last_fired("nightly", 2_000).unwrap();
        assert_eq!(store.last_fired("nightly").unwrap(), Some(2_000));
        assert_eq!(store.last_fired("hourly").unwrap(), Some(5));
    }

    #[test]
    fn open_creates_a_private_directory_and_keeps_tasks() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state").join("host").join("tasks.db");
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.path(), Some(path.as_path()));
        assert!(format!("{store:?}").contains("tasks.db"), "{store:?}");
        let mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        let id = queue(&store, task("p", "k"));
        store.set_last_fired("s", 42).unwrap();
        drop(store);

        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(get(&store, id).key, "k");
        assert_eq!(store.last_fired("s").unwrap(), Some(42));
        let conn = store.lock();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 1, "NORMAL");
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        drop(conn);

        let memory = SqliteStore::open_in_memory().unwrap();
        assert_eq!(memory.path(), None);
    }

    /// Bytes that look like nothing (xorshift).
    fn noise(len: usize) -> Vec<u8> {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn a_file_of_random_bytes_is_a_one_line_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        // A newline in the path too: still one line.
        let path = dir.path().join("odd\nname").join("tasks.db");
        std::fs::create_dir(path.parent().unwrap()).unwrap();
        std::fs::write(&path, noise(64 * 1024)).unwrap();
        let err = SqliteStore::open(&path).unwrap_err();
        let expected = format!(
            "task database {}: file is not a database \
             (is it corrupt? move it away to start afresh)",
            path.display()
        )
        .replace('\n', " ");
        assert_eq!(err.0, expected);
        assert!(!err.0.contains('\n'));
    }

    #[test]
    fn a_corrupt_database_is_a_one_line_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.db");
        let store = SqliteStore::open(&path).unwrap();
        let tasks: Vec<Insert> = (0..500)
            .map(|i| {
                let mut t = task("p", &i.to_string());
                t.input = format!("{{\"pad\":\"{}\"}}", "x".repeat(200));
                t
            })
            .collect();
        store.insert(&tasks).unwrap();
        drop(store);
        let mut bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() > 16 * 4096);
        bytes[4 * 4096..12 * 4096].copy_from_slice(&noise(8 * 4096));
        std::fs::write(&path, bytes).unwrap();

        let err = SqliteStore::open(&path).unwrap_err();
        assert!(
            err.0
                .starts_with(&format!("task database {}: ", path.display())),
            "{err}"
        );
        assert!(err.0.contains("is it corrupt?"), "{err}");
        assert!(!err.0.contains('\n'), "{err}");
    }

    #[test]
    fn a_database_of_a_newer_host_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("PRAGMA user_version = 7")
            .unwrap();
        let err = SqliteStore::open(&path).unwrap_err();
        assert_eq!(
            err.0,
            format!(
                "task database {}: its schema version is 7, this host knows 1 at most \
                 (was it written by a newer host?)",
                path.display()
            )
        );
    }

    #[test]
    fn a_database_of_something_else_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE tasks (what TEXT)")
            .unwrap();
        let err = SqliteStore::open(&path).unwrap_err();
        assert_eq!(
            err.0,
            format!(
                "task database {}: cannot create its schema version 1: \
                 table tasks already exists",
                path.display()
            )
        );
    }

    /// Runs `f` on a thread; fails the test if it takes longer than a minute (it hangs).
    fn without_hanging<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(Duration::from_secs(60))
            .expect("hangs on a locked database")
    }

    #[test]
    fn a_database_locked_by_another_process_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.db");
        // Not in WAL mode: an exclusive lock keeps even readers out.
        let holder = Connection::open(&path).unwrap();
        holder
            .execute_batch("CREATE TABLE t (x); BEGIN EXCLUSIVE; INSERT INTO t VALUES (1);")
            .unwrap();
        let opening = path.clone();
        let err = without_hanging(move || SqliteStore::open(&opening)).unwrap_err();
        assert_eq!(
            err.0,
            format!(
                "task database {}: database is locked (another host uses it?)",
                path.display()
            )
        );
        holder.execute_batch("ROLLBACK").unwrap();
    }

    #[test]
    fn a_write_lock_held_elsewhere_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.db");
        let store = Arc::new(SqliteStore::open(&path).unwrap());
        let id = queue(&store, task("p", "k"));
        let holder = Connection::open(&path).unwrap();
        holder.execute_batch("BEGIN EXCLUSIVE").unwrap();

        let writer = Arc::clone(&store);
        let err = without_hanging(move || writer.insert(&[task("p", "k2")])).unwrap_err();
        assert_eq!(
            err.0,
            format!(
                "task database {}: cannot insert tasks: database is locked \
                 (another host uses it?)",
                path.display()
            )
        );
        // WAL: readers do not wait for the writer.
        assert_eq!(get(&store, id).status, TaskStatus::Queued);
        holder.execute_batch("ROLLBACK").unwrap();
        queue(&store, task("p", "k2"));
    }

    #[test]
    fn the_statements_use_their_indexes() {
        let store = store();
        let conn = store.lock();
        let plan = |sql: &str| -> String {
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            // Planned with its parameters unbound (NULL).
            let mut rows = stmt.raw_query();
            let mut steps = Vec::new();
            while let Some(row) = rows.next().unwrap() {
                steps.push(row.get::<_, String>(3).unwrap());
            }
            steps.join("; ")
        };
        for (sql, index) in [
            (TOP_PRIORITY, "tasks_queued"),
            (DUE_OF_PRIORITY, "tasks_queued"),
            (NEXT_PRIORITY, "tasks_queued"),
            (FIRST_PLUGIN, "tasks_plugin"),
            (PLUGIN_DUE, "tasks_plugin"),
            (NEXT_PLUGIN, "tasks_plugin"),
            (RECOVER, "tasks_active_key"),
            (CHILDREN, "tasks_parent"),
            (ACTIVE_OF_PLUGIN, "tasks_plugin"),
            (PRUNE_BEFORE, "tasks_finished"),
            (PRUNE_BEYOND, "tasks_finished"),
            (LAST_SUCCESS, "tasks_succeeded"),
            (ACTIVE_WITH_KEY, "tasks_active_key"),
        ] {
            let plan = plan(sql);
            assert!(plan.contains(index), "{sql}: {plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{sql}: {plan}");
            // Every task kept, read one by one.
            let full_scan = plan
                .split("; ")
                .any(|step| step.starts_with("SCAN tasks") && !step.contains(" INDEX "));
            assert!(!full_scan, "{sql}: {plan}");
        }
    }
}

//! [`SqliteStore`]: the connection, opening it, and running a closure in one transaction.

use std::fmt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use rusqlite::{Connection, TransactionBehavior};

use super::super::store::StoreError;
use super::super::task::TaskRecord;
use super::error::{describe_sql, one_line, open_error, Fail};
use super::schema::setup;

/// The task store kept in one SQLite file (or in memory, for tests).
///
/// One connection, behind a mutex: SQLite has one writer at a time anyway, and each method
/// is a short transaction.
pub struct SqliteStore {
    conn: Mutex<Connection>,
    path: Option<PathBuf>,
    /// This host's id, named as the host of every task that ran (one host owns the file).
    pub(super) host_id: Option<String>,
}

impl SqliteStore {
    /// Names `id` as the host of the tasks that ran (`"host"` in `host tasks --json`): one
    /// host owns a SQLite file, so every attempt was this host's.
    pub fn with_host_id(mut self, id: &str) -> SqliteStore {
        self.host_id = Some(id.to_owned());
        self
    }

    /// `task` with this host named as its host, if it ran.
    pub(super) fn stamp(&self, mut task: TaskRecord) -> TaskRecord {
        if task.started_unix_ms.is_some() {
            task.host.clone_from(&self.host_id);
        }
        task
    }

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
            host_id: None,
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
            host_id: None,
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

    pub(super) fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while the lock was held dropped its transaction, which rolled it back:
        // the connection is fine.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction, committed if `f` succeeds; `what`
    /// (`claim tasks`) names what failed otherwise.
    pub(super) fn write<T>(
        &self,
        what: &dyn fmt::Display,
        f: impl FnOnce(&Connection) -> Result<T, Fail>,
    ) -> Result<T, StoreError> {
        self.transaction(TransactionBehavior::Immediate, what, f)
    }

    /// Runs `f` in one read transaction.
    pub(super) fn read<T>(
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

    pub(super) fn error(&self, what: &dyn fmt::Display, fail: Fail) -> StoreError {
        let text = match fail {
            Fail::Whole(text) => format!("task database {}: {text}", self.name()),
            fail => format!(
                "task database {}: cannot {what}: {}",
                self.name(),
                fail.describe()
            ),
        };
        StoreError::Failed(one_line(&text))
    }
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

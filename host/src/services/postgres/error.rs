//! [`PgError`]: why the database could not do what was asked, in one line.

/// Why the fleet's database could not do what was asked: one line, naming the database
/// (its URL without the password) and the step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PgError {
    /// `[tasks] database` (or `HOST_DATABASE_URL`) is not a PostgreSQL URL.
    #[error("{0}")]
    Url(String),
    /// The database cannot be reached (down, refused, timed out, no free connection).
    #[error("{0}")]
    Unreachable(String),
    /// Its schema is newer than this host knows.
    #[error("{0}")]
    NewerSchema(String),
    /// A statement failed.
    #[error("{0}")]
    Statement(String),
}

impl PgError {
    /// Whether the database could not be reached (as opposed to refusing a statement).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, PgError::Unreachable(_))
    }

    /// `err` from `what`, classified: a closed or refused connection is `Unreachable`.
    pub(crate) fn from_pg(what: &str, err: &tokio_postgres::Error) -> PgError {
        let text = one_line(err);
        // Shut down, starting up, or a broken connection: the database is not there.
        let gone = err.code().is_some_and(|code| {
            let code = code.code();
            code.starts_with("08") || code.starts_with("57P")
        });
        if gone || err.is_closed() || err.as_db_error().is_none() {
            PgError::Unreachable(format!("{what}: database unreachable: {text}"))
        } else {
            PgError::Statement(format!("{what}: {text}"))
        }
    }

    /// A pool error from `what`: every one of them means no connection was had.
    pub(crate) fn from_pool(
        what: &str,
        err: &deadpool_postgres::PoolError,
        pool_size: usize,
    ) -> PgError {
        let detail = match err {
            deadpool_postgres::PoolError::Timeout(_) => format!(
                "no connection within connect_timeout_ms ({pool_size} in use is pool_size, \
                 or the database does not answer)"
            ),
            deadpool_postgres::PoolError::Backend(err) => one_line(err),
            other => other.to_string(),
        };
        PgError::Unreachable(format!("{what}: database unreachable: {detail}"))
    }
}

/// `err` and its causes, on one line.
pub(crate) fn one_line(err: &(dyn std::error::Error + 'static)) -> String {
    if let Some(db) = err
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(tokio_postgres::Error::as_db_error)
    {
        return db.message().replace('\n', " ");
    }
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text.replace('\n', " ")
}

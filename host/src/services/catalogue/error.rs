//! What can go wrong with the catalogue: each a one-line message naming the file, the
//! plugin or the setting.

use crate::types::call::{CallError, CallErrorKind};

/// An error of `publish`, `unpublish` or `published`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogueError {
    /// The host has no fleet database to keep a catalogue in.
    #[error(
        "no fleet database configured: set `database` in host.toml's [tasks] or \
         HOST_DATABASE_URL to a postgres:// URL"
    )]
    NoDatabase,
    /// The file is larger than `[catalogue] max_plugin_bytes`.
    #[error(
        "{file}: {size} bytes, over the catalogue's limit of {limit} bytes ([catalogue] \
         max_plugin_bytes)"
    )]
    TooBig {
        /// The file.
        file: String,
        /// Its size (at least; reading stops past the limit).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The file cannot be opened or read.
    #[error("{file}: {reason}")]
    Unreadable {
        /// The file.
        file: String,
        /// What went wrong.
        reason: String,
    },
    /// The file is not a plugin this host could load.
    #[error("{file} is not a plugin: {reason}")]
    NotAPlugin {
        /// The file.
        file: String,
        /// What the load check said.
        reason: String,
    },
    /// The name given does not match what the plugin calls itself, or is invalid.
    #[error("{0}")]
    BadName(String),
    /// The catalogue holds `[catalogue] max_plugins` plugins already.
    #[error(
        "the catalogue holds {0} plugins, its limit ([catalogue] max_plugins): unpublish one \
         first"
    )]
    Full(u32),
    /// This host is already publishing a file.
    #[error("{0}")]
    Busy(String),
    /// No plugin of that name is published.
    #[error("no plugin named {0} is published")]
    UnknownName(String),
    /// The database refused or failed.
    #[error("the fleet database: {0}")]
    Database(String),
}

impl From<CatalogueError> for CallError {
    fn from(err: CatalogueError) -> CallError {
        let kind = match err {
            CatalogueError::UnknownName(_) => CallErrorKind::UnknownPlugin,
            CatalogueError::Busy(_) => CallErrorKind::Busy,
            CatalogueError::Database(_) | CatalogueError::NoDatabase => CallErrorKind::Internal,
            _ => CallErrorKind::InvalidRequest,
        };
        CallError::new(kind, err.to_string())
    }
}

impl From<tokio_postgres::Error> for CatalogueError {
    fn from(err: tokio_postgres::Error) -> CatalogueError {
        // The server's own message when there is one (`as_db_error`), else the client's.
        let text = match err.as_db_error() {
            Some(db) => db.message().to_owned(),
            None => err.to_string(),
        };
        CatalogueError::Database(crate::types::call::cut(&text.replace('\n', " "), 300))
    }
}

impl From<crate::services::postgres::PgError> for CatalogueError {
    fn from(err: crate::services::postgres::PgError) -> CatalogueError {
        CatalogueError::Database(crate::types::call::cut(
            &err.to_string().replace('\n', " "),
            300,
        ))
    }
}

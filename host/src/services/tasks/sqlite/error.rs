//! Why a transaction failed, and what a SQLite error means for whoever runs the host, in
//! one line naming the store.

use rusqlite::ErrorCode;

use super::super::store::StoreError;

/// Why a transaction failed, before it is made a [`StoreError`].
#[derive(Debug)]
pub(super) enum Fail {
    Sql(rusqlite::Error),
    Json(serde_json::Error),
    /// Says what went wrong; `SqliteStore::error` adds what could not be done.
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
    pub(super) fn describe(&self) -> String {
        match self {
            Fail::Sql(e) => describe_sql(e),
            Fail::Json(e) => format!("cannot encode JSON: {e}"),
            Fail::Msg(text) | Fail::Whole(text) => text.clone(),
        }
    }
}

/// What a SQLite error means for whoever runs the host.
pub(super) fn describe_sql(e: &rusqlite::Error) -> String {
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
pub(super) fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

pub(super) fn open_error(name: &str, what: &str) -> StoreError {
    StoreError::Failed(one_line(&format!("task database {name}: {what}")))
}

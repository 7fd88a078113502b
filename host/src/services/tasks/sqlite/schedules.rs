//! When each schedule last fired.

use rusqlite::{params, Connection, OptionalExtension};

use super::error::Fail;
use super::row::to_i64;

/// When schedule `name` last fired.
pub(super) fn last_fired(c: &Connection, name: &str) -> Result<Option<u64>, Fail> {
    let at = c
        .prepare_cached("SELECT last_fired FROM schedules WHERE name = ?1")?
        .query_row([name], |row| row.get(0))
        .optional()?;
    Ok(at)
}

/// Notes that schedule `name` fired at `at_unix_ms`.
pub(super) fn set_last_fired(c: &Connection, name: &str, at_unix_ms: u64) -> Result<(), Fail> {
    c.prepare_cached(
        "INSERT INTO schedules (name, last_fired) VALUES (?1, ?2) \
         ON CONFLICT (name) DO UPDATE SET last_fired = excluded.last_fired",
    )?
    .execute(params![name, to_i64(at_unix_ms)])?;
    Ok(())
}

//! Deleting the records of tasks that ended long ago, or beyond the newest `keep_max`.

use rusqlite::Connection;

use super::error::Fail;
use super::row::to_i64;

/// Deletes the ended tasks that ended before `?1`.
pub(super) const PRUNE_BEFORE: &str =
    "DELETE FROM tasks WHERE finished < ?1 AND status NOT IN ('queued', 'running')";

/// Deletes the ended tasks but the `?1` that ended last.
pub(super) const PRUNE_BEYOND: &str = "DELETE FROM tasks WHERE id IN (\
       SELECT id FROM tasks \
       WHERE finished IS NOT NULL AND status NOT IN ('queued', 'running') \
       ORDER BY finished DESC, id DESC LIMIT -1 OFFSET ?1)";

/// Deletes ended tasks that ended before `before_unix_ms`, and the oldest beyond the
/// newest `keep_max`; how many.
pub(super) fn prune(c: &Connection, before_unix_ms: u64, keep_max: u64) -> Result<u64, Fail> {
    let old = c
        .prepare_cached(PRUNE_BEFORE)?
        .execute([to_i64(before_unix_ms)])?;
    let beyond = c
        .prepare_cached(PRUNE_BEYOND)?
        .execute([to_i64(keep_max)])?;
    Ok((old + beyond) as u64)
}

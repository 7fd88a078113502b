//! The hosts table: one row per host of the fleet (id, hostname, pid, version, started, last
//! heartbeat, the plugins it serves with their SHA-256 and generation), written by its
//! heartbeat, which also extends the leases of the tasks it runs; read by `host fleet`.

use serde::{Deserialize, Serialize};

use super::database::Database;
use super::error::PgError;

/// A gone host's row is deleted this long after its last heartbeat (a day).
pub const GONE_ROWS_KEPT_MS: i64 = 86_400_000;

/// What this host writes of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HostRow {
    /// Unique in the fleet: `HOSTNAME-RANDOM`, kept in the state directory (`host-id`)
    /// and the same at every start; `HOSTNAME-PID-RANDOM` for a host without one.
    pub id: String,
    pub hostname: String,
    pub pid: u32,
    pub version: String,
    pub started_unix_ms: u64,
}

impl HostRow {
    /// This process's row, under `id` (the one kept in the state directory).
    pub fn new(id: String, version: &str, started_unix_ms: u64) -> HostRow {
        HostRow {
            id,
            hostname: hostname(),
            pid: std::process::id(),
            version: version.to_owned(),
            started_unix_ms,
        }
    }

    /// This process's row, with a new id (a host without a state directory to keep one
    /// in: it is a new host at each start).
    pub fn this_process(version: &str, started_unix_ms: u64) -> HostRow {
        let hostname = hostname();
        let pid = std::process::id();
        HostRow {
            id: format!("{hostname}-{pid}-{:06x}", fastrand::u32(..0x100_0000)),
            hostname,
            pid,
            version: version.to_owned(),
            started_unix_ms,
        }
    }

    /// A new id to keep in a state directory: `HOSTNAME-RANDOM` (12 hex digits from the
    /// kernel), the hostname cut to 64 bytes of letters, digits, `.`, `_` and `-`.
    pub fn fresh_id() -> std::io::Result<String> {
        let name: String = hostname()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect();
        Ok(format!(
            "{name}-{}",
            crate::files::state_dir::random_hex(6)?
        ))
    }
}

/// A plugin a host serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ServedPlugin {
    pub name: String,
    /// SHA-256 of the bytes loaded, hex (when computed).
    pub sha256: Option<String>,
    pub generation: u64,
}

impl ServedPlugin {
    pub fn new(name: String, sha256: Option<String>, generation: u64) -> ServedPlugin {
        ServedPlugin {
            name,
            sha256,
            generation,
        }
    }
}

/// A host of the fleet, as `host fleet` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FleetHost {
    pub id: String,
    pub hostname: String,
    pub pid: u32,
    pub version: String,
    pub started_unix_ms: u64,
    pub heartbeat_unix_ms: u64,
    /// Its last heartbeat is more recent than the lease (`lease_ms`).
    pub alive: bool,
    pub plugins: Vec<ServedPlugin>,
}

impl Database {
    /// Writes this host's row (inserted, taken over from its previous run under the same
    /// id, or brought back after it was deleted), its
    /// heartbeat now, extends the leases of the tasks it runs to `lease_ms` from now, and
    /// deletes the rows of hosts gone for a day, in one round trip. Returns how many leases it extended.
    pub async fn heartbeat(
        &self,
        row: &HostRow,
        plugins: &[ServedPlugin],
        lease_ms: u64,
    ) -> Result<u64, PgError> {
        let what = "heartbeat";
        let client = self.client(what).await?;
        let plugins = serde_json::to_string(plugins).unwrap_or_else(|_| "[]".to_owned());
        let lease = i64::try_from(lease_ms).unwrap_or(i64::MAX);
        let pid = i32::try_from(row.pid).unwrap_or(i32::MAX);
        let started = i64::try_from(row.started_unix_ms).unwrap_or(i64::MAX);
        let statement = client
            .prepare_cached(
                "WITH h AS (
                     INSERT INTO hosts (id, hostname, pid, version, started, heartbeat, plugins)
                     VALUES ($1, $2, $3, $4, $5, fleet_now_ms(), $6::text::jsonb)
                     ON CONFLICT (id) DO UPDATE
                         SET hostname = excluded.hostname, pid = excluded.pid,
                             version = excluded.version, started = excluded.started,
                             heartbeat = excluded.heartbeat, plugins = excluded.plugins
                     RETURNING 1
                 ), l AS (
                     UPDATE tasks SET lease_until = fleet_now_ms() + $7
                     WHERE status = 'running' AND host_id = $1
                     RETURNING 1
                 ), gone AS (
                     DELETE FROM hosts WHERE heartbeat < fleet_now_ms() - $8 AND id <> $1
                     RETURNING 1
                 )
                 SELECT (SELECT count(*) FROM h), (SELECT count(*) FROM l)",
            )
            .await
            .map_err(|err| PgError::from_pg(what, &err))?;
        let answer = client
            .query_one(
                &statement,
                &[
                    &row.id,
                    &row.hostname,
                    &pid,
                    &row.version,
                    &started,
                    &plugins,
                    &lease,
                    &GONE_ROWS_KEPT_MS,
                ],
            )
            .await
            .map_err(|err| PgError::from_pg(what, &err))?;
        let extended: i64 = answer.get(1);
        Ok(u64::try_from(extended).unwrap_or(0))
    }

    /// Every host with a row, alive (heartbeat within `lease_ms`) or gone, by id; rows of
    /// hosts gone for more than a day are deleted first.
    pub async fn fleet(&self, lease_ms: u64) -> Result<Vec<FleetHost>, PgError> {
        let what = "list the fleet";
        let client = self.client(what).await?;
        let fail = |err: tokio_postgres::Error| PgError::from_pg(what, &err);
        client
            .execute(
                "DELETE FROM hosts WHERE heartbeat < fleet_now_ms() - $1",
                &[&GONE_ROWS_KEPT_MS],
            )
            .await
            .map_err(fail)?;
        let lease = i64::try_from(lease_ms).unwrap_or(i64::MAX);
        let rows = client
            .query(
                "SELECT id, hostname, pid, version, started, heartbeat, plugins::text,
                        heartbeat >= fleet_now_ms() - $1
                 FROM hosts ORDER BY id",
                &[&lease],
            )
            .await
            .map_err(fail)?;
        Ok(rows
            .iter()
            .map(|row| FleetHost {
                id: row.get(0),
                hostname: row.get(1),
                pid: u32::try_from(row.get::<_, i32>(2)).unwrap_or(0),
                version: row.get(3),
                started_unix_ms: u64::try_from(row.get::<_, i64>(4)).unwrap_or(0),
                heartbeat_unix_ms: u64::try_from(row.get::<_, i64>(5)).unwrap_or(0),
                plugins: serde_json::from_str(&row.get::<_, String>(6)).unwrap_or_default(),
                alive: row.get(7),
            })
            .collect())
    }
}

/// This machine's name (`uname -n`), or `localhost`.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is writable for its whole length, which gethostname is told.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(name) if ok && !name.is_empty() => name.to_owned(),
        _ => "localhost".to_owned(),
    }
}

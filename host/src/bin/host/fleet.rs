//! `host serve` joining a fleet: with `[tasks] database` (or `HOST_DATABASE_URL`, which
//! wins), open the database, apply its migrations (refusing a newer schema), and start the
//! heartbeat. A database that does not answer at start is said once; the host serves
//! direct calls and attaches when it answers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use host::postgres::{database_url, Database, HostRow, Membership, PgError};
use host::tasks::TaskSettings;
use host::Host;

use crate::exit::{Failure, USAGE};

/// This host in the fleet: its database and heartbeat (stopped when dropped).
#[derive(Debug)]
pub struct Fleet {
    pub database: Database,
    pub membership: Membership,
}

/// Joins the fleet of `settings.database`, if there is one.
pub fn join(host: &Host, settings: &TaskSettings) -> Result<Option<Fleet>> {
    let url = database_url(settings.database.as_deref())
        .map_err(|err| Failure::new(USAGE, err.to_string()))?;
    let Some(url) = url else {
        return Ok(None);
    };
    let database = Database::open(
        &url,
        settings.pool_size,
        Duration::from_millis(settings.connect_timeout_ms),
    )
    .map_err(|err| Failure::new(USAGE, err.to_string()))?;
    let migrated = match database.block_on(database.migrate()) {
        Ok(_) => true,
        Err(err @ PgError::NewerSchema(_)) => {
            return Err(Failure::new(USAGE, err.to_string()).into());
        }
        Err(err) => {
            tracing::error!(
                "{err}: direct calls are served; this host joins the fleet when it answers"
            );
            false
        }
    };
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let row = HostRow::this_process(env!("CARGO_PKG_VERSION"), started);
    tracing::info!("fleet: host {} on {}", row.id, database.url());
    let membership = Membership::start(
        database.clone(),
        host.clone(),
        row,
        settings.lease_ms,
        migrated,
    );
    Ok(Some(Fleet {
        database,
        membership,
    }))
}

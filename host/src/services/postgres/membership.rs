//! This host's membership of the fleet: a task on the database's runtime that applies the
//! migrations once the database answers (a host starts while it is down), then writes the
//! host's row and extends its leases every third of `lease_ms`. An outage is logged once,
//! when it starts, and once when it ends; the retries between are at debug level.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::database::Database;
use super::error::PgError;
use super::hosts::{HostRow, ServedPlugin};
use crate::registry::Host;

/// The heartbeat of this host; it stops when dropped.
#[derive(Debug)]
pub struct Membership {
    row: HostRow,
    migrated: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Membership {
    /// Starts the heartbeat of `row` on `db`, listing the plugins `host` serves, every third
    /// of `lease_ms`; `migrated`: whether the schema is known to be up to date already;
    /// `quiet`: an outage is said by someone else (the task runner), the heartbeat logs it
    /// at debug level only.
    pub fn start(
        db: Database,
        host: Host,
        row: HostRow,
        lease_ms: u64,
        migrated: bool,
        quiet: bool,
    ) -> Membership {
        let flag = Arc::new(AtomicBool::new(migrated));
        let every = Duration::from_millis((lease_ms / 3).max(10));
        let task = db.handle().spawn(beat(
            db.clone(),
            host,
            row.clone(),
            Beat {
                lease_ms,
                every,
                quiet,
            },
            flag.clone(),
        ));
        Membership {
            row,
            migrated: flag,
            task,
        }
    }

    /// This host's row.
    pub fn row(&self) -> &HostRow {
        &self.row
    }

    /// Whether the schema is up to date (the database answered once).
    pub fn migrated(&self) -> bool {
        self.migrated.load(Ordering::Acquire)
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Beat {
    lease_ms: u64,
    every: Duration,
    quiet: bool,
}

async fn beat(db: Database, host: Host, row: HostRow, beat: Beat, migrated: Arc<AtomicBool>) {
    let Beat {
        lease_ms,
        every,
        quiet,
    } = beat;
    let mut failing = false;
    loop {
        let done: Result<(), PgError> = async {
            if !migrated.load(Ordering::Acquire) {
                db.migrate().await?;
                migrated.store(true, Ordering::Release);
            }
            let served = {
                let host = host.clone();
                tokio::task::spawn_blocking(move || served(&host))
                    .await
                    .unwrap_or_default()
            };
            db.heartbeat(&row, &served, lease_ms).await.map(drop)
        }
        .await;
        match done {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("database {} answers again: heartbeat resumed", db.url());
            }
            Ok(()) => {}
            Err(PgError::NewerSchema(message)) => {
                tracing::error!("{message}; this host stays out of the fleet");
                return;
            }
            Err(err) if !failing && !quiet => {
                failing = true;
                tracing::error!("{err} (retrying; direct calls are served)");
            }
            Err(err) if !failing => {
                failing = true;
                tracing::debug!("{err}");
            }
            Err(err) => tracing::debug!("{err}"),
        }
        tokio::time::sleep(every).await;
    }
}

/// The plugins `host` serves, with their SHA-256 and generation.
pub fn served(host: &Host) -> Vec<ServedPlugin> {
    host.status()
        .into_iter()
        .filter_map(|file| {
            let serving = file.serving?;
            let name = file.metadata.map(|m| m.name.to_string())?;
            Some(ServedPlugin::new(name, serving.sha256, serving.generation))
        })
        .collect()
}

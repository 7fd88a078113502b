//! Whether this host may take the id kept in its state directory: a state directory copied
//! from a running host (a cloned disk or image) carries that host's id, and two hosts
//! beating under one id would extend each other's leases and finish each other's tasks.
//!
//! The row with the id, if its heartbeat is live (within the lease), was written by:
//!
//! * this host's previous run, which is gone: its state directory's lock, which this
//!   process holds, proves it. On the same machine that is a row of this hostname whose pid
//!   is not a running host process (or is this very process: a container's pid 1). The id is
//!   taken at once.
//! * another running process on this machine (same hostname, its pid alive): a copy of
//!   the state directory. Refused.
//! * a process on another machine (another hostname): a copy, or this state directory
//!   moved to a renamed machine. Its heartbeat is watched for two thirds of a lease plus a
//!   margin (a live host beats every third of one): it moves, the id is refused; it stands
//!   still, its writer is gone and the id is taken.
//!
//! Refusing, rather than taking a fresh id, is deliberate: the id is what the leases, the
//! fencing of writes and the choice of canaries key on, so a host that changed it on a
//! conflict would also change it on a false alarm, and bring back the dead rows and failed
//! rollouts a kept id exists to prevent. A copied state directory is fixed once, by
//! removing its `host-id` (the line says so).

use std::time::Duration;

use super::database::Database;
use super::error::PgError;
use super::hosts::HostRow;

/// The row holding an id, as read at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub hostname: String,
    pub pid: u32,
    pub heartbeat_unix_ms: u64,
    /// Its heartbeat is within the lease.
    pub alive: bool,
}

/// What this host makes of the row holding its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdCheck {
    /// No row, or a row whose heartbeat is older than the lease: the id is free.
    Free,
    /// This host's previous run, gone (the state directory's lock proves it).
    Restarted { pid: u32 },
    /// Another process beats under this id: the line that refuses the start.
    InUse(String),
}

/// What is known from the row alone; `None`: its heartbeat must be watched (another
/// hostname).
fn decide(ours: &HostRow, holder: &Holder, pid_running: impl Fn(u32) -> bool) -> Option<IdCheck> {
    if !holder.alive {
        return Some(IdCheck::Free);
    }
    if holder.hostname != ours.hostname {
        return None;
    }
    if holder.pid == ours.pid || !pid_running(holder.pid) {
        return Some(IdCheck::Restarted { pid: holder.pid });
    }
    Some(IdCheck::InUse(in_use(ours, holder)))
}

fn in_use(ours: &HostRow, holder: &Holder) -> String {
    format!(
        "host id {} is in use by a running host ({} pid {}, its heartbeat live): this \
         state directory is a copy of that host's; remove its host-id file and this host \
         takes a new id at its next start",
        ours.id, holder.hostname, holder.pid
    )
}

/// Whether `pid` is a running process (of any user) on this machine running the same
/// program as this one (a pid reused by another program is not a host).
fn pid_running(pid: u32) -> bool {
    let comm = |of: &str| std::fs::read_to_string(format!("/proc/{of}/comm")).ok();
    if let (Some(theirs), Some(mine)) = (comm(&pid.to_string()), comm("self")) {
        if theirs != mine {
            return false;
        }
    }
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 checks that the process exists and sends nothing.
    let answer = unsafe { libc::kill(pid, 0) };
    answer == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

impl Database {
    /// The row holding `id`, if there is one.
    pub async fn holder(&self, id: &str, lease_ms: u64) -> Result<Option<Holder>, PgError> {
        let what = "read this host's row";
        let client = self.client(what).await?;
        let lease = i64::try_from(lease_ms).unwrap_or(i64::MAX);
        let row = client
            .query_opt(
                "SELECT hostname, pid, heartbeat, heartbeat >= fleet_now_ms() - $2
                 FROM hosts WHERE id = $1",
                &[&id, &lease],
            )
            .await
            .map_err(|err| PgError::from_pg(what, &err))?;
        Ok(row.map(|row| Holder {
            hostname: row.get(0),
            pid: u32::try_from(row.get::<_, i32>(1)).unwrap_or(0),
            heartbeat_unix_ms: u64::try_from(row.get::<_, i64>(2)).unwrap_or(0),
            alive: row.get(3),
        }))
    }

    /// Whether `ours` may take its id (see the module's documentation); heartbeats come
    /// every third of `lease_ms`.
    pub async fn check_id(&self, ours: &HostRow, lease_ms: u64) -> Result<IdCheck, PgError> {
        let Some(holder) = self.holder(&ours.id, lease_ms).await? else {
            return Ok(IdCheck::Free);
        };
        if let Some(check) = decide(ours, &holder, pid_running) {
            return Ok(check);
        }
        tracing::info!(
            "fleet: the row of host id {} was written by {} pid {} within the lease: \
             watching its heartbeat for {} ms before taking the id",
            ours.id,
            holder.hostname,
            holder.pid,
            lease_ms * 2 / 3 + 500
        );
        tokio::time::sleep(Duration::from_millis(lease_ms * 2 / 3 + 500)).await;
        match self.holder(&ours.id, lease_ms).await? {
            Some(now) if now.heartbeat_unix_ms != holder.heartbeat_unix_ms => {
                Ok(IdCheck::InUse(in_use(ours, &now)))
            }
            _ => Ok(IdCheck::Restarted { pid: holder.pid }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(hostname: &str, pid: u32, alive: bool) -> Holder {
        Holder {
            hostname: hostname.to_owned(),
            pid,
            heartbeat_unix_ms: 1,
            alive,
        }
    }

    #[test]
    fn a_live_row_of_a_running_process_refuses_the_id_and_a_dead_one_is_taken() {
        let ours = HostRow::new("box-1".to_owned(), "1", 0);
        let me = ours.hostname.clone();
        let running = |pid: u32| pid == 77;
        assert_eq!(
            decide(&ours, &holder("elsewhere", 77, false), running),
            Some(IdCheck::Free)
        );
        assert_eq!(
            decide(&ours, &holder(&me, 12, true), running),
            Some(IdCheck::Restarted { pid: 12 })
        );
        assert_eq!(
            decide(&ours, &holder(&me, ours.pid, true), running),
            Some(IdCheck::Restarted { pid: ours.pid })
        );
        let Some(IdCheck::InUse(line)) = decide(&ours, &holder(&me, 77, true), running) else {
            panic!("a running process's id is taken");
        };
        assert!(
            line.contains("box-1") && line.contains("pid 77") && line.contains("host-id"),
            "{line}"
        );
        assert!(!line.contains('\n'));
        // Another machine's live row: its heartbeat is watched.
        assert_eq!(decide(&ours, &holder("elsewhere", 77, true), running), None);
    }
}

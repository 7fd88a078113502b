//! Recording how an attempt ended, whatever the store says for a while: a write that fails
//! (SQLITE_BUSY, a full disk, an I/O error) is tried again with a growing delay, until it
//! succeeds, the task is no longer running (someone else ended it), or the runner stops
//! (then the task is found running at the next start, and recovered). A task is never left
//! `running` by a write that failed once.
//!
//! A write refused because this host lost its lease on the task
//! ([`StoreError::LeaseLost`]: another host took it over) is final: it is logged once and
//! not tried again, and the attempt does not count as the task's end on this host (the host
//! that took it over ends it).

use std::time::{Duration, Instant};

use super::runner::{lock, Inner};
use super::store::{StoreError, TaskStore};
use super::task::{TaskId, TaskStatus};

/// The first delay before a write is tried again; it doubles up to [`LAST_DELAY`].
const FIRST_DELAY: Duration = Duration::from_millis(10);
const LAST_DELAY: Duration = Duration::from_secs(5);
/// A write failing again is logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(30);

/// Why how an attempt ended was not recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NotRecorded {
    /// This host lost its lease on the task: another host took it over and ends it.
    LeaseLost,
    /// Given up: the task is no longer running, or the runner stops.
    GivenUp,
}

impl Inner {
    /// Runs `write` (it records how task `id`'s attempt ended: `what`) until it succeeds;
    /// [`NotRecorded`] when it is given up (the task is no longer running, or the runner
    /// stops) or this host lost its lease on the task (logged here, once).
    pub(super) fn record<T>(
        &self,
        id: TaskId,
        what: &str,
        mut write: impl FnMut(&dyn TaskStore) -> Result<T, StoreError>,
    ) -> Result<T, NotRecorded> {
        let mut delay = FIRST_DELAY;
        let mut failures: u64 = 0;
        let mut logged: Option<Instant> = None;
        loop {
            let err = match write(&*self.store) {
                Ok(value) => {
                    if failures > 0 {
                        self.store_answered();
                        tracing::info!("task {id}: {what} recorded after {failures} failed tries");
                    }
                    return Ok(value);
                }
                Err(err @ StoreError::LeaseLost { .. }) => {
                    // Fenced: what the host that took it over writes stands.
                    tracing::warn!("{err}");
                    return Err(NotRecorded::LeaseLost);
                }
                Err(err) => err,
            };
            failures += 1;
            match self.store.get(id) {
                Ok(Some(task)) if task.status != TaskStatus::Running => {
                    tracing::error!(
                        "cannot record how task {id} ended ({what}): {err}; it is {} now: \
                         given up",
                        task.status
                    );
                    return Err(NotRecorded::GivenUp);
                }
                Ok(None) => {
                    tracing::error!(
                        "cannot record how task {id} ended ({what}): {err}; it is gone: given up"
                    );
                    return Err(NotRecorded::GivenUp);
                }
                _ => {}
            }
            if logged.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
                self.store_failed(
                    &format!(
                        "cannot record how task {id} ended ({what}), failed {failures} times \
                         so far"
                    ),
                    &err,
                );
                logged = Some(Instant::now());
            }
            if self.pause_unless_stopping(delay) {
                tracing::warn!(
                    "task {id}: the runner stops before {what} could be recorded; the task \
                     is found running at the next start"
                );
                return Err(NotRecorded::GivenUp);
            }
            delay = (delay * 2).min(LAST_DELAY);
        }
    }

    /// Waits `delay`, unless the runner stops first (true).
    fn pause_unless_stopping(&self, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        let mut state = lock(&self.state);
        loop {
            if state.stopping {
                return true;
            }
            let now = Instant::now();
            if now >= until {
                return false;
            }
            state = self
                .wake
                .wait_timeout(state, until - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::registry::{Host, HostOptions};
    use crate::services::tasks::{SqliteStore, TaskSettings, Tasks};

    /// A lease lost is final: one write, no retry, and the runner is told it was a lost
    /// lease (the attempt did not end the task here), not that it was given up.
    #[test]
    fn a_lease_lost_is_not_retried_and_is_told_apart_from_giving_up() {
        let host = Host::new(HostOptions::default()).unwrap();
        let store = SqliteStore::open_in_memory().unwrap();
        let tasks =
            Tasks::start(host, Arc::new(store), TaskSettings::default(), Vec::new()).unwrap();
        let mut writes = 0;
        let recorded = tasks.inner.record(7, "its outcome", |_| {
            writes += 1;
            Err::<(), _>(StoreError::LeaseLost {
                task: 7,
                host: "a".into(),
                write: "its outcome",
            })
        });
        assert_eq!((recorded, writes), (Err(NotRecorded::LeaseLost), 1));
        assert_eq!(
            StoreError::LeaseLost {
                task: 7,
                host: "a".into(),
                write: "its outcome",
            }
            .to_string(),
            "task 7: host a lost its lease on it (another host took it over): its outcome \
             refused"
        );
        // A plain failure on a task the store no longer has is given up instead.
        let mut writes = 0;
        let recorded = tasks.inner.record(7, "its outcome", |_| {
            writes += 1;
            Err::<(), _>(StoreError::Failed("busy".into()))
        });
        assert_eq!((recorded, writes), (Err(NotRecorded::GivenUp), 1));
        assert!(tasks.stop(Duration::from_secs(10)));
    }
}

//! Recording how an attempt ended, whatever the store says for a while: a write that fails
//! (SQLITE_BUSY, a full disk, an I/O error) is tried again with a growing delay, until it
//! succeeds, the task is no longer running (someone else ended it), or the runner stops
//! (then the task is found running at the next start, and recovered). A task is never left
//! `running` by a write that failed once.

use std::time::{Duration, Instant};

use super::runner::{lock, Inner};
use super::store::{StoreError, TaskStore};
use super::task::{TaskId, TaskStatus};

/// The first delay before a write is tried again; it doubles up to [`LAST_DELAY`].
const FIRST_DELAY: Duration = Duration::from_millis(10);
const LAST_DELAY: Duration = Duration::from_secs(5);
/// A write failing again is logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(30);

impl Inner {
    /// Runs `write` (it records how task `id`'s attempt ended: `what`) until it succeeds;
    /// `None` when it is given up (the task is no longer running, or the runner stops).
    pub(super) fn record<T>(
        &self,
        id: TaskId,
        what: &str,
        mut write: impl FnMut(&dyn TaskStore) -> Result<T, StoreError>,
    ) -> Option<T> {
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
                    return Some(value);
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
                    return None;
                }
                Ok(None) => {
                    tracing::error!(
                        "cannot record how task {id} ended ({what}): {err}; it is gone: given up"
                    );
                    return None;
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
                return None;
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

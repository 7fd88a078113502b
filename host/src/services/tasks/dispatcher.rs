//! The dispatcher thread: claims due tasks of the plugins served with room to run, for free
//! workers only (a claim never blocks), fires schedules, fails orphans past
//! `orphan_after`, and prunes ended tasks.

use std::sync::atomic::AtomicBool;
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use super::orphans::Orphans;
use super::runner::{lock, now_ms, Inner};
use super::task::TaskRecord;
use super::timetable::Timetable;

/// How often ended tasks past `keep_days`/`keep_max` are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// The longest the dispatcher sleeps: schedules of newly loaded plugins start within it.
const TICK: Duration = Duration::from_millis(250);
/// The longest a busy host on a shared store waits for more free runners before a claim.
const GATHER: Duration = Duration::from_millis(2);

impl Inner {
    /// How many task calls of `plugin` may run at once.
    pub(super) fn plugin_limit(&self, plugin: &str) -> usize {
        self.host
            .with_settings(plugin, |s| s.max_running_tasks)
            .unwrap_or(self.settings.max_running_per_plugin)
            .max(1)
    }

    /// The dispatcher: claims due tasks for free workers, fires schedules, prunes.
    pub(super) fn dispatch(self: Arc<Inner>, work: SyncSender<TaskRecord>) {
        let mut schedules = Timetable::default();
        let mut orphans = Orphans::default();
        let mut next_prune = Instant::now();
        let mut store_failing = false;
        // A store shared by a fleet: claims are round trips, so a busy host gathers a few
        // free runners before claiming rather than claiming for each one as it frees.
        let shared = self.store.host_id().is_some();
        let mut gathered = false;
        loop {
            let (free, served, only, cap, configured) = {
                let mut state = lock(&self.state);
                if state.stopping {
                    self.refuse_pings();
                    return;
                }
                // The loop turns: the watchdog's question, if one waits, is answered.
                self.answer_ping();
                state.poked = false;
                // Only the tasks of plugins served, and with room to run more, are claimed:
                // the others wait (a plugin unloaded for a moment never fails a task).
                let served = self.host.plugin_names();
                let only: Vec<String> = served
                    .iter()
                    .filter(|plugin| {
                        state.running.get(*plugin).copied().unwrap_or(0) < self.plugin_limit(plugin)
                    })
                    .cloned()
                    .collect();
                // A claim may bring several tasks of one plugin: no more than any plugin
                // served may still start (a plugin's own limit may be below the default).
                let room = served
                    .iter()
                    .map(|plugin| {
                        let running = state.running.get(plugin).copied().unwrap_or(0);
                        self.plugin_limit(plugin).saturating_sub(running)
                    })
                    .filter(|room| *room > 0)
                    .min()
                    .unwrap_or(usize::MAX)
                    .min(self.settings.max_running_per_plugin.max(1));
                let free = self.settings.max_running.max(1).saturating_sub(state.total);
                (free, served, only, free.min(room), state.configured.take())
            };
            let now = now_ms();
            if let Some(configured) = configured {
                schedules.configure(&configured);
            }
            let fired = schedules.tick(
                &self.host,
                &*self.store,
                &self.settings,
                now,
                |task, name, due| self.fire(task, name, due),
            );
            if let Err(err) = fired {
                self.store_failed("schedules", &err);
            }
            if next_prune <= Instant::now() {
                next_prune = Instant::now() + PRUNE_EVERY;
                self.prune(now);
            }
            match orphans.check(&*self.store, &served, self.settings.orphan_after, now) {
                Ok(failed) => {
                    for (plugin, n) in failed {
                        self.count(&plugin, -i64::try_from(n).unwrap_or(i64::MAX));
                    }
                }
                Err(err) => self.store_failed("tasks: cannot fail the orphaned tasks", &err),
            }
            let max = self.settings.max_running.max(1);
            if shared && cap > 0 && free * 2 < max && !gathered {
                gathered = true;
                self.gather(max);
                continue;
            }
            gathered = false;
            let mut claimed = 0;
            if cap > 0 {
                match self.store.claim(now, cap, &only) {
                    Ok(tasks) => {
                        store_failing = false;
                        self.store_answered();
                        claimed = tasks.len();
                        let mut state = lock(&self.state);
                        for task in tasks {
                            *state.running.entry(task.plugin.clone()).or_default() += 1;
                            state.total += 1;
                            state
                                .cancels
                                .insert(task.id, Arc::new(AtomicBool::new(false)));
                            // Never blocks: no more are claimed than workers are free.
                            if work.send(task).is_err() {
                                return;
                            }
                        }
                    }
                    Err(err) => {
                        self.store_failed("tasks are not run", &err);
                        store_failing = true;
                    }
                }
            }
            if claimed > 0 && claimed == cap && claimed < free {
                continue;
            }
            // Sleep until the next task or schedule is due, or something changes.
            let next_due = if claimed == 0 && !store_failing {
                self.store.next_due(&only).ok().flatten()
            } else {
                None
            };
            let until = [next_due, schedules.next_due()]
                .into_iter()
                .flatten()
                .min()
                .map_or(TICK, |at| {
                    Duration::from_millis(at.saturating_sub(now_ms())).min(TICK)
                });
            let state = lock(&self.state);
            if !state.poked && !state.stopping && !until.is_zero() {
                drop(
                    self.wake
                        .wait_timeout(state, until)
                        .unwrap_or_else(PoisonError::into_inner),
                );
            }
        }
    }

    /// Waits up to [`GATHER`] for half of the `max` runners to be free (a busy host
    /// claims in batches), or for the runner to stop.
    fn gather(&self, max: usize) {
        let deadline = Instant::now() + GATHER;
        let mut state = lock(&self.state);
        loop {
            let free = max.saturating_sub(state.total);
            let now = Instant::now();
            if free * 2 >= max || state.stopping || now >= deadline {
                return;
            }
            state = self
                .wake
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    pub(super) fn prune(&self, now: u64) {
        // 0: no limit.
        let before = match self.settings.keep_days {
            0 => 0,
            days => now.saturating_sub(days.saturating_mul(86_400_000)),
        };
        let keep_max = match self.settings.keep_max {
            0 => u64::MAX,
            max => max,
        };
        match self.store.prune(before, keep_max) {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                "deleted {n} ended tasks (keep_days = {}, keep_max = {})",
                self.settings.keep_days,
                self.settings.keep_max
            ),
            Err(err) => self.store_failed("tasks: cannot delete old tasks", &err),
        }
    }
}

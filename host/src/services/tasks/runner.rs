//! The task runner: takes due tasks from the store, runs each on the host's own call path
//! (timeouts, isolation, limits and rollout apply as to any call), and records how it
//! ended. A call that fails is retried on the delay schedule until it has no attempts
//! left (`failed`); one whose input the plugin refuses as invalid is `bad` at once, one
//! whose callback is unknown is `bad` when its attempts run out. A task whose plugin is not
//! served waits for it (`orphans`). The follow-ups a successful call returns become its
//! child tasks, within the limits that stop runaway chains (depth, follow-ups per call,
//! active tasks per plugin); one over a limit is recorded as `refused`, never dropped
//! (`follow_ups`). The outcome and the follow-ups are written in one transaction, tried
//! again until written (`recording`).
//!
//! One dispatcher thread (`dispatcher`) claims due tasks and fires schedules;
//! `max_running` worker threads run the calls (`attempt`: one attempt and its verdict), at
//! most `max_running_per_plugin` of one plugin at a time. Plugin
//! code never runs on the dispatcher. Tasks run at least once: one running when the host
//! stops is found `running` at the next start and run again, that attempt counted.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::input_key::default_key;
use super::settings::{ScheduleConfig, TaskSettings};
use super::store::{StoreError, TaskStore};
use super::task::{Insert, Inserted, NewTask, TaskId, TaskRecord};
use crate::registry::Host;
use crate::types::call::{CallError, CallErrorKind};

/// What the task runner's threads share.
pub(super) struct Inner {
    pub(super) host: Host,
    pub(super) store: Arc<dyn TaskStore>,
    pub(super) settings: TaskSettings,
    pub(super) state: Mutex<State>,
    /// Signalled when a task is submitted or a call ends, and at stop.
    pub(super) wake: Condvar,
    /// How long attempts ran, for monitoring.
    pub(super) run_clock: super::observe::RunClock,
    /// The store failed and has not answered since: further failures are logged at debug
    /// level, so an outage of a shared database is one error line, not one per retry.
    pub(super) store_failing: AtomicBool,
    /// The watchdog's question to the dispatcher, answered once a round (`probe`).
    pub(super) ping: super::probe::PingSlot,
    /// The log lines of the attempts running, as their plugins write them (`live`).
    pub(super) live: Arc<super::live::LiveLines>,
}

/// The runner's bookkeeping, behind one lock that no plugin code runs under.
#[derive(Default)]
pub(super) struct State {
    /// Task calls running, by plugin.
    pub(super) running: HashMap<String, usize>,
    pub(super) total: usize,
    /// The cancellation flags of the calls running, by task. The host sets a flag itself
    /// at the call's deadline; a cancel asked for is noted in `cancel_asked` too.
    pub(super) cancels: HashMap<TaskId, Arc<AtomicBool>>,
    /// The running tasks someone asked to cancel (a subset of `cancels`' keys).
    pub(super) cancel_asked: HashSet<TaskId>,
    pub(super) stopping: bool,
    /// Something changed since the dispatcher last looked.
    pub(super) poked: bool,
    /// host.toml's schedules; `Some` when they changed and the dispatcher has not taken
    /// them yet.
    pub(super) configured: Option<Vec<ScheduleConfig>>,
    /// Active tasks by plugin, for `max_queued_per_plugin`: read from the store once per
    /// plugin, then counted here (a count in the store would cost every submit a scan of
    /// the plugin's queue).
    pub(super) active: HashMap<String, u64>,
}

impl Inner {
    /// Submits `task` (see [`Tasks::submit`]).
    pub(super) fn submit(&self, task: NewTask) -> Result<Inserted, CallError> {
        self.queue(task, None)?
            .ok_or_else(|| CallError::new(CallErrorKind::Internal, "the store answered nothing"))
    }

    /// Submits `task`, schedule `name`'s firing at its due time `due` (milliseconds since
    /// the Unix epoch): `None` when another host of the fleet fired it. The store records
    /// the firing and inserts the task in one transaction, so a firing is never claimed
    /// without its task (exactly once per due time across a fleet).
    pub(super) fn fire(
        &self,
        task: NewTask,
        name: String,
        due: u64,
    ) -> Result<Option<Inserted>, CallError> {
        self.queue(task, Some((name, due)))
    }

    fn queue(
        &self,
        task: NewTask,
        firing: Option<(String, u64)>,
    ) -> Result<Option<Inserted>, CallError> {
        let mut insert = self.insert_for(task, None, 0, None, now_ms())?;
        insert.schedule = firing.as_ref().map(|(name, _)| name.clone());
        let active = self.active(&insert.plugin)?;
        if active >= self.settings.max_queued_per_plugin {
            return Err(CallError::new(
                CallErrorKind::Busy,
                format!(
                    "plugin {} has {active} tasks queued or running, its limit \
                     (max_queued_per_plugin)",
                    insert.plugin
                ),
            ));
        }
        let inserted = match &firing {
            Some((name, due)) => self
                .store
                .insert_firing(name, *due, &insert)
                .map_err(unavailable)?,
            None => self
                .store
                .insert(std::slice::from_ref(&insert))
                .map_err(unavailable)?
                .first()
                .copied(),
        };
        if let Some(Inserted::Queued(_)) = inserted {
            self.count(&insert.plugin, 1);
        }
        self.poke();
        Ok(inserted)
    }

    /// Active tasks of `plugin`.
    pub(super) fn active(&self, plugin: &str) -> Result<u64, CallError> {
        if let Some(n) = lock(&self.state).active.get(plugin) {
            return Ok(*n);
        }
        let n = self.store.active(plugin).map_err(unavailable)?;
        Ok(*lock(&self.state)
            .active
            .entry(plugin.to_owned())
            .or_insert(n))
    }

    /// Counts `plugin`'s active tasks up or down by one.
    pub(super) fn count(&self, plugin: &str, by: i64) {
        if let Some(n) = lock(&self.state).active.get_mut(plugin) {
            *n = n.saturating_add_signed(by);
        }
    }

    /// Logs a failure of the store: an error line if it answered last time, else debug.
    pub(super) fn store_failed(&self, what: &str, err: &dyn std::fmt::Display) {
        if self.store_failing.swap(true, Ordering::AcqRel) {
            tracing::debug!("{what}: {err}");
        } else {
            tracing::error!(
                "{what}: {err} (retried quietly until the store answers; direct calls are \
                 served)"
            );
        }
    }

    /// The store answered: says so once after a failure.
    pub(super) fn store_answered(&self) {
        if self.store_failing.swap(false, Ordering::AcqRel) {
            tracing::info!("the task store answers again");
        }
    }

    pub(super) fn poke(&self) {
        lock(&self.state).poked = true;
        self.wake.notify_all();
    }

    /// `task` as the store inserts it, every option resolved.
    pub(super) fn insert_for(
        &self,
        task: NewTask,
        parent: Option<&TaskRecord>,
        follow_up_index: usize,
        schedule: Option<String>,
        now: u64,
    ) -> Result<Insert, CallError> {
        let invalid = |message: String| CallError::new(CallErrorKind::InvalidRequest, message);
        if !plugin_api::is_valid_name(&task.plugin) {
            return Err(invalid(format!("invalid plugin name {:?}", task.plugin)));
        }
        if task.callback != "execute" && !plugin_api::is_valid_name(&task.callback) {
            return Err(invalid(format!(
                "invalid callback name {:?}",
                task.callback
            )));
        }
        self.host.check_input(&task.input)?;
        // Checked, and kept as given: no number loses precision on the way.
        serde_json::from_str::<&serde_json::value::RawValue>(&task.input)
            .map_err(|err| invalid(format!("input is not JSON: {err}")))?;
        let options = task.options;
        let key = options
            .key
            .filter(|k| !k.is_empty())
            .unwrap_or_else(|| default_key(&task.plugin, &task.callback, &task.input));
        let depth = parent.map_or(0, |p| p.depth + 1);
        let refused = match parent {
            Some(_) if depth > self.settings.max_depth => Some(format!(
                "refused: a follow-up {depth} deep, over the limit of {} (max_depth)",
                self.settings.max_depth
            )),
            Some(_) if follow_up_index >= self.settings.max_follow_ups_per_call => Some(format!(
                "refused: follow-up {} of one call, over the limit of {} \
                 (max_follow_ups_per_call)",
                follow_up_index + 1,
                self.settings.max_follow_ups_per_call
            )),
            _ => None,
        };
        let (plugin_delays, plugin_attempts) = self.host.with_settings(&task.plugin, |s| {
            (
                s.task_retry_delays.as_deref().map(millis),
                s.task_max_attempts,
            )
        });
        let retry_delays = options
            .retry_delays_ms
            .or(plugin_delays)
            .unwrap_or_else(|| millis(&self.settings.retry_delays));
        Ok(Insert {
            plugin: task.plugin,
            callback: task.callback,
            input: task.input,
            key,
            priority: options.priority,
            max_attempts: options
                .max_attempts
                .or(plugin_attempts)
                .unwrap_or(self.settings.max_attempts)
                .max(1),
            retry_delays_ms: retry_delays,
            not_before_unix_ms: options.not_before_unix_ms.unwrap_or(now),
            age_ms: options.age_ms,
            parent: parent.map(|p| p.id),
            depth,
            schedule,
            created_unix_ms: now,
            refused,
        })
    }

    /// A worker thread: runs claimed tasks until the dispatcher stops.
    pub(super) fn work(&self, receive: &Mutex<Receiver<TaskRecord>>) {
        loop {
            let task = match lock(receive).recv() {
                Ok(task) => task,
                Err(_) => return,
            };
            let plugin = task.plugin.clone();
            let id = task.id;
            let started = std::time::Instant::now();
            let ended = self.run(task);
            self.run_clock.record(started.elapsed());
            if ended {
                self.count(&plugin, -1);
            }
            let mut state = lock(&self.state);
            state.cancels.remove(&id);
            state.cancel_asked.remove(&id);
            if let Some(n) = state.running.get_mut(&plugin) {
                *n -= 1;
                if *n == 0 {
                    state.running.remove(&plugin);
                }
            }
            state.total -= 1;
            state.poked = true;
            self.wake.notify_all();
        }
    }
}

/// `delays` in milliseconds.
fn millis(delays: &[Duration]) -> Vec<u64> {
    delays
        .iter()
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .collect()
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(super) fn unavailable(err: StoreError) -> CallError {
    CallError::new(CallErrorKind::Internal, format!("tasks: {err}"))
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

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
//! One dispatcher thread claims due tasks and fires schedules; `max_running` worker
//! threads run the calls, at most `max_running_per_plugin` of one plugin at a time. Plugin
//! code never runs on the dispatcher. Tasks run at least once: one running when the host
//! stops is found `running` at the next start and run again, that attempt counted.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use plugin_api::{ErrorKind, Level, LogRecord};

use super::input_key::default_key;
use super::orphans::Orphans;
use super::retry::RetryDelay;
use super::settings::{ScheduleConfig, TaskSettings};
use super::store::{StoreError, TaskStore};
use super::task::{Finish, Insert, Inserted, NewTask, TaskId, TaskRecord, TaskStatus};
use super::timetable::Timetable;
use crate::registry::{CallRequest, Host};
use crate::types::call::{CallError, CallErrorKind, CallOutcome};

/// How often ended tasks past `keep_days`/`keep_max` are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// The longest the dispatcher sleeps: schedules of newly loaded plugins start within it.
const TICK: Duration = Duration::from_millis(250);

/// What the task runner's threads share.
pub(super) struct Inner {
    pub(super) host: Host,
    pub(super) store: Arc<dyn TaskStore>,
    pub(super) settings: TaskSettings,
    pub(super) state: Mutex<State>,
    /// Signalled when a task is submitted or a call ends, and at stop.
    pub(super) wake: Condvar,
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
    /// Submits `task`, made by schedule `schedule` if one did (see [`Tasks::submit`]).
    pub(super) fn submit(
        &self,
        task: NewTask,
        schedule: Option<String>,
    ) -> Result<Inserted, CallError> {
        let mut insert = self.insert_for(task, None, 0, None, now_ms())?;
        insert.schedule = schedule;
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
        let plugin = insert.plugin.clone();
        let inserted = self.store.insert(&[insert]).map_err(unavailable)?;
        let inserted = inserted
            .first()
            .copied()
            .ok_or_else(|| CallError::new(CallErrorKind::Internal, "the store answered nothing"))?;
        if let Inserted::Queued(_) = inserted {
            self.count(&plugin, 1);
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

    /// How many task calls of `plugin` may run at once.
    fn plugin_limit(&self, plugin: &str) -> usize {
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
        loop {
            let (free, served, only, cap, configured) = {
                let mut state = lock(&self.state);
                if state.stopping {
                    return;
                }
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
                |task, name| self.submit(task, Some(name)),
            );
            if let Err(err) = fired {
                tracing::error!("schedules: {err}");
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
                Err(err) => tracing::error!("tasks: cannot fail the orphaned tasks: {err}"),
            }
            let mut claimed = 0;
            if cap > 0 {
                match self.store.claim(now, cap, &only) {
                    Ok(tasks) => {
                        store_failing = false;
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
                        if !store_failing {
                            tracing::error!("tasks are not run: {err}");
                        }
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

    fn prune(&self, now: u64) {
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
            Err(err) => tracing::error!("tasks: cannot delete old tasks: {err}"),
        }
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
            let ended = self.run(task);
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

    /// Runs one attempt of `task` and records how it ended; whether the task did (it is
    /// not to be retried).
    fn run(&self, task: TaskRecord) -> bool {
        let _span = tracing::info_span!("task", id = task.id, plugin = %task.plugin).entered();
        let cancelled = lock(&self.state)
            .cancels
            .get(&task.id)
            .cloned()
            .unwrap_or_default();
        // The host's one call path: the plugin's `timeout_ms` is enforced, and a timeout is a
        // failed attempt like any other.
        let request = CallRequest::new(&*task.plugin, &*task.callback, &*task.input)
            .cancel(cancelled.clone());
        let result = self.host.invoke(request);
        let now = now_ms();
        let asked = lock(&self.state).cancel_asked.contains(&task.id);
        if !asked && matches!(&result, Err(e) if e.kind == CallErrorKind::UnknownPlugin) {
            // Unloaded since the claim: not an attempt; it waits for its plugin.
            tracing::info!(
                "plugin {} is not served now: the task waits for it",
                task.plugin
            );
            self.record(task.id, "its release", |store| store.release(task.id));
            return false;
        }
        let verdict = verdict(&result, asked);
        let retried = verdict == TaskStatus::Failed && task.attempts < task.max_attempts;
        // An unknown callback may come with the next version; out of attempts, it is bad.
        let verdict = if verdict == TaskStatus::Failed && !retried && unknown_callback(&result) {
            TaskStatus::Bad
        } else {
            verdict
        };
        let max = self.settings.max_result_bytes;
        let (outcome, error) = match result {
            Ok(outcome) => {
                let error = outcome.error.as_ref().map(|e| e.to_string());
                (Some(outcome), error)
            }
            Err(err) => (
                None,
                Some(format!("{}: {}", err.kind.as_str(), err.message)),
            ),
        };
        let logs = outcome
            .as_ref()
            .map(|o| bounded_logs(&o.logs, max))
            .unwrap_or_default();
        let generation = outcome.as_ref().map(|o| o.generation);
        let mut finish = Finish {
            status: verdict,
            result: None,
            error: error.map(|e| crate::types::call::cut(&e, max)),
            logs,
            finished_unix_ms: now,
            generation,
        };
        match verdict {
            TaskStatus::Success => {
                let outcome = outcome.as_ref();
                if let Some(result) = outcome.and_then(|o| o.result().ok()) {
                    let json = result.get();
                    if json.len() <= max {
                        finish.result = Some(json.to_owned());
                    } else {
                        finish.error = Some(format!(
                            "its result of {} bytes is not kept: over max_result_bytes ({max})",
                            json.len()
                        ));
                    }
                }
                let mut inserts = Vec::new();
                if let Some(outcome) = outcome.filter(|o| !o.follow_ups.is_empty()) {
                    let (children, line) = self.follow_ups(&task, outcome, now);
                    inserts = children;
                    if let Some(line) = line {
                        finish.logs.push(LogRecord {
                            level: Level::Warn,
                            message: line,
                            unix_ms: now,
                        });
                    }
                }
                // The outcome and the follow-ups together: a host stopped in between
                // would run the task again and queue its follow-ups twice.
                let inserted = self.record(task.id, "its success", |store| {
                    store.finish(task.id, &finish, &inserts)
                });
                for (insert, inserted) in inserts.iter().zip(inserted.unwrap_or_default()) {
                    if let Inserted::Queued(_) = inserted {
                        self.count(&insert.plugin, 1);
                    }
                }
                if !inserts.is_empty() {
                    self.poke();
                }
            }
            TaskStatus::Failed if retried => {
                let delay = RetryDelay::after(
                    &task.retry_delays_ms,
                    task.attempts,
                    u64::try_from(self.settings.min_retry_delay.as_millis()).unwrap_or(u64::MAX),
                    &mut fastrand::Rng::new(),
                );
                tracing::info!(
                    "attempt {} of {} failed, retrying in {} ({}): {}",
                    task.attempts,
                    task.max_attempts,
                    humantime::format_duration(Duration::from_millis(delay.ms)),
                    delay.describe(),
                    finish.error.as_deref().unwrap_or_default()
                );
                let due = now.saturating_add(delay.ms);
                self.record(task.id, "its retry", |store| {
                    store.retry_later(task.id, due, &finish)
                });
            }
            _ => {
                if verdict != TaskStatus::Cancelled {
                    tracing::warn!(
                        "{verdict} after {} attempts: {}",
                        task.attempts,
                        finish.error.as_deref().unwrap_or_default()
                    );
                }
                self.record(task.id, "its end", |store| {
                    store.finish(task.id, &finish, &[])
                });
            }
        }
        !retried
    }
}

/// How an attempt ended: `success`, `bad` (its input can never be taken), `cancelled`,
/// or `failed` (retried while it has attempts left; an unknown callback included).
fn verdict(result: &Result<CallOutcome, CallError>, cancelled: bool) -> TaskStatus {
    match result {
        Err(err) => match err.kind {
            CallErrorKind::InvalidRequest => TaskStatus::Bad,
            _ if cancelled => TaskStatus::Cancelled,
            _ => TaskStatus::Failed,
        },
        Ok(outcome) => match outcome.error.as_ref().map(|e| e.kind()) {
            None => TaskStatus::Success,
            Some(ErrorKind::InvalidInput) => TaskStatus::Bad,
            Some(_) if cancelled => TaskStatus::Cancelled,
            Some(_) => TaskStatus::Failed,
        },
    }
}

/// Whether the call failed because its callback does not exist.
fn unknown_callback(result: &Result<CallOutcome, CallError>) -> bool {
    match result {
        Err(err) => err.kind == CallErrorKind::UnknownCallback,
        Ok(outcome) => outcome
            .error
            .as_ref()
            .is_some_and(|e| e.kind() == ErrorKind::UnknownCallback),
    }
}

/// `logs`, cut to at most `max` bytes of messages, with a last record saying how many were
/// left out.
fn bounded_logs(logs: &[LogRecord], max: usize) -> Vec<LogRecord> {
    let mut kept = Vec::new();
    let mut used = 0;
    for (i, record) in logs.iter().enumerate() {
        used += record.message.len();
        if used > max {
            kept.push(LogRecord {
                level: Level::Warn,
                message: format!(
                    "{} more records not kept (max_result_bytes)",
                    logs.len() - i
                ),
                unix_ms: record.unix_ms,
            });
            break;
        }
        kept.push(record.clone());
    }
    kept
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_are_cut_with_a_last_record_saying_how_many_were_left_out() {
        let record = |message: &str| LogRecord {
            level: Level::Info,
            message: message.to_owned(),
            unix_ms: 1,
        };
        let logs = vec![record("aaaa"), record("bbbb"), record("cccc")];
        let kept = bounded_logs(&logs, 9);
        assert_eq!(kept.len(), 3);
        assert_eq!(
            kept[2].message,
            "1 more records not kept (max_result_bytes)"
        );
        assert_eq!(bounded_logs(&logs, 100), logs);
    }

    #[test]
    fn what_can_never_succeed_is_bad_and_the_rest_is_retried() {
        let host_error = |kind| Err(CallError::new(kind, "x"));
        assert_eq!(
            verdict(&host_error(CallErrorKind::InvalidRequest), false),
            TaskStatus::Bad
        );
        // Bad only when its attempts run out (see `run`).
        assert_eq!(
            verdict(&host_error(CallErrorKind::UnknownCallback), false),
            TaskStatus::Failed
        );
        assert!(unknown_callback(&host_error(
            CallErrorKind::UnknownCallback
        )));
        assert!(!unknown_callback(&host_error(CallErrorKind::Timeout)));
        assert_eq!(
            verdict(&host_error(CallErrorKind::Timeout), false),
            TaskStatus::Failed
        );
        assert_eq!(
            verdict(&host_error(CallErrorKind::Crashed), false),
            TaskStatus::Failed
        );
        assert_eq!(
            verdict(&host_error(CallErrorKind::Timeout), true),
            TaskStatus::Cancelled
        );
    }
}

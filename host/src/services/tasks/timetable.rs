//! The timetable: which schedules are active and when each fires next. host.toml's
//! schedules are active while it names them; a plugin's own (`Callbacks::every`) while a
//! version declaring them serves: they start when it loads, change when it is reloaded
//! and stop when it is unloaded. Each firing is a task keyed `schedule:NAME`, so a run
//! still queued or running is not queued twice. When a schedule becomes active, the store
//! says when it last fired: a firing missed while the host was down runs once at once
//! (`run_missed`), then the schedule keeps its own time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::schedule::Schedule;
use super::settings::{ScheduleConfig, TaskSettings};
use super::store::TaskStore;
use super::task::{Inserted, NewTask};
use crate::types::call::CallError;
use crate::Host;

/// How often the plugins' declared schedules are looked at again.
const REFRESH: Duration = Duration::from_millis(250);

/// The active schedules.
/// Due times stepped through to find the latest one a restart missed (a schedule down
/// longer than this many periods is keyed by the one reached).
const MISSED_STEPS: usize = 100_000;

#[derive(Debug, Default)]
pub(crate) struct Timetable {
    entries: BTreeMap<String, Entry>,
    configured: Vec<ScheduleConfig>,
    refreshed: Option<Instant>,
}

/// An active schedule.
#[derive(Debug)]
struct Entry {
    job: Job,
    /// When it fires next, in milliseconds since the Unix epoch.
    next_unix_ms: u64,
}

/// What a schedule calls, and when.
#[derive(Debug, PartialEq)]
struct Job {
    plugin: String,
    callback: String,
    input: String,
    schedule: Schedule,
}

impl Timetable {
    /// host.toml's schedules changed.
    pub(crate) fn configure(&mut self, configured: &[ScheduleConfig]) {
        self.configured = configured.to_vec();
        self.refreshed = None;
    }

    /// When the next schedule fires.
    pub(crate) fn next_due(&self) -> Option<u64> {
        self.entries.values().map(|e| e.next_unix_ms).min()
    }

    /// Brings the active schedules up to date (at most every 250 ms), and submits a task
    /// for each one due at `now` with `submit` (the task, the schedule's name, its due
    /// time), which answers `None` when another host of the fleet fired it.
    pub(crate) fn tick(
        &mut self,
        host: &Host,
        store: &dyn TaskStore,
        settings: &TaskSettings,
        now: u64,
        submit: impl Fn(NewTask, String, u64) -> Result<Option<Inserted>, CallError>,
    ) -> Result<(), String> {
        if self.refreshed.is_none_or(|at| at.elapsed() >= REFRESH) {
            self.refreshed = Some(Instant::now());
            self.refresh(host, store, settings, now)?;
        }
        for (name, entry) in &mut self.entries {
            if entry.next_unix_ms > now {
                continue;
            }
            let job = &entry.job;
            let mut task = NewTask::new(&job.plugin, &job.callback, &job.input);
            task.options.key = Some(format!("schedule:{name}"));
            let due = entry.next_unix_ms;
            // Its next time is set whatever happens, so a failing schedule does not spin.
            entry.next_unix_ms = job.schedule.next_after(now).unwrap_or(u64::MAX);
            // Once per due time across a fleet: the host whose claim lands fires it, the
            // claim and the task written together by the store.
            let Some(inserted) = submit(task, name.clone(), due)
                .map_err(|err| format!("schedule {name}: {}", err.message))?
            else {
                tracing::debug!(schedule = %name, "fired by another host");
                continue;
            };
            store
                .set_last_fired(name, now)
                .map_err(|err| format!("schedule {name}: {err}"))?;
            tracing::debug!(schedule = %name, "fired: {inserted:?}");
        }
        Ok(())
    }

    fn refresh(
        &mut self,
        host: &Host,
        store: &dyn TaskStore,
        settings: &TaskSettings,
        now: u64,
    ) -> Result<(), String> {
        let mut wanted = Vec::new();
        for config in &self.configured {
            match config.schedule() {
                Ok(schedule) => wanted.push((
                    config.name(),
                    Job {
                        plugin: config.plugin.clone(),
                        callback: config.callback.clone(),
                        input: config.input_json(),
                        schedule,
                    },
                )),
                // host.toml was checked when read; this cannot happen but is not fatal.
                Err(err) => tracing::error!("schedule {}: {err}", config.name()),
            }
        }
        for plugin in host.plugin_names() {
            let Ok(handle) = host.plugin(&plugin) else {
                continue;
            };
            for declared in &handle.metadata().schedules {
                let Ok(schedule) = Schedule::every(Duration::from_millis(declared.every_ms)) else {
                    continue;
                };
                let name = format!("plugin:{plugin}.{}", declared.callback);
                wanted.push((
                    name.clone(),
                    Job {
                        plugin: plugin.clone(),
                        callback: declared.callback.clone(),
                        input: "null".to_owned(),
                        schedule: schedule.spread(&name),
                    },
                ));
            }
        }
        self.entries.retain(|name, entry| {
            let keep = wanted.iter().any(|(n, job)| n == name && *job == entry.job);
            if !keep {
                tracing::info!(schedule = %name, "schedule stopped");
            }
            keep
        });
        for (name, job) in wanted {
            if self.entries.contains_key(&name) {
                continue;
            }
            let last = store
                .last_fired(&name)
                .map_err(|err| format!("schedule {name}: {err}"))?;
            let next = match last {
                // Keyed by the latest due time passed: the same on every host of a fleet
                // that starts within one period, so the run missed while all were down
                // fires once (a fleet fires each due time once).
                Some(last) if settings.run_missed && job.schedule.missed(last, now) => {
                    let mut due = job.schedule.next_after(last).unwrap_or(now);
                    for _ in 0..MISSED_STEPS {
                        match job.schedule.next_after(due) {
                            Some(next) if next <= now => due = next,
                            _ => break,
                        }
                    }
                    Some(due.min(now))
                }
                Some(last) => job.schedule.next_after(last.max(now)),
                None => job.schedule.next_after(now),
            }
            .unwrap_or(u64::MAX);
            tracing::info!(schedule = %name, plugin = %job.plugin,
                "schedule started: {} `{}`, {}", job.schedule.describe(), job.callback,
                if next <= now { "missed while the host was down: now".to_owned() }
                else { format!("next in {} ms", next - now) });
            self.entries.insert(
                name,
                Entry {
                    job,
                    next_unix_ms: next,
                },
            );
        }
        Ok(())
    }
}

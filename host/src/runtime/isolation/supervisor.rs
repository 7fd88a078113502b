//! The supervisor of one isolated generation: keeps a worker process serving it, replaces a
//! worker that died, backs off when it keeps dying, and quarantines a plugin in a crash
//! loop.
//!
//! The rules:
//!
//! * A worker that exits or is killed for any reason but the host's own request is a crash.
//!   Calls in flight on it fail with `crashed` (see `process`); the next call starts a fresh
//!   worker, after a delay that doubles with every crash still in the window
//!   ([`backoff`]: none after the first, then 25 ms, 50 ms, ... up to 2 s).
//! * `max_restarts` crashes within `restart_window_ms` quarantine the generation: calls fail
//!   at once with `quarantined`, naming the last crash, until [`Supervised::restart`] (the
//!   `host restart` command) or a new version of the file.
//! * Dropping the supervisor (the generation is unloaded) asks the worker to exit and reaps
//!   it.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime};

use plugin_api::LogRecord;
use serde::{Deserialize, Serialize};

use super::channel::LoadRequest;
use super::events::{WorkerEvent, WorkerEvents};
use super::process::{Exit, Label, Worker};
use super::spawn::SpawnSpec;
use crate::files::plugin_file::KeptCopy;
use crate::runtime::handover::PreviousState;
use crate::runtime::loader::{LoadError, LoadErrorKind, Metadata};
use crate::types::call::{Budget, CallError, CallErrorKind, CallOutcome};
use crate::types::live_log::LiveLog;
use crate::types::settings::PluginSettings;

/// What an isolated generation is made of.
#[derive(Debug, Clone)]
pub(crate) struct WorkerSpec {
    /// The plugin name its file declares (its ELF note).
    pub(crate) plugin: String,
    pub(crate) program: PathBuf,
    pub(crate) copy: Arc<KeptCopy>,
    pub(crate) source: PathBuf,
    pub(crate) generation: u64,
    pub(crate) settings: PluginSettings,
    pub(crate) budget: Budget,
    /// Where its crashes and quarantines are reported.
    pub(crate) events: WorkerEvents,
}

/// What `host list` shows of an isolated generation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// The worker serving it now, if one runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Workers started after the first.
    pub restarts: u64,
    /// Workers that crashed.
    pub crashes: u64,
    /// The last crash, if there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_crash: Option<String>,
    /// Why calls are refused, while the plugin is quarantined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantined: Option<String>,
    /// The sandbox its worker runs in (`[plugins.NAME.sandbox]`), as the worker applied it:
    /// `landlock abi 7, seccomp, net none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// Keeps one isolated generation served by a worker process.
pub(crate) struct Supervised {
    shared: Arc<Shared>,
    metadata: Metadata,
}

impl std::fmt::Debug for Supervised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervised")
            .field("plugin", &self.metadata.name)
            .field("generation", &self.shared.spec.generation)
            .finish_non_exhaustive()
    }
}

struct Shared {
    spec: WorkerSpec,
    state: Mutex<State>,
    /// Held while a worker starts, so that one starts at a time.
    starting: Mutex<()>,
    restarts: AtomicU64,
    crashes: AtomicU64,
    /// The generation is being unloaded: exits are expected.
    closing: AtomicBool,
}

#[derive(Default)]
struct State {
    worker: Option<Arc<Worker>>,
    /// When each crash still in the window happened.
    recent: VecDeque<Instant>,
    last_crash: Option<String>,
    quarantined: Option<String>,
    /// No new worker before this (backing off).
    not_before: Option<Instant>,
    /// The sandbox the last worker started said it runs in.
    sandbox: Option<String>,
}

impl Supervised {
    /// Starts the first worker; fails as a load fails if the plugin cannot be loaded or its
    /// `init` fails, panics, crashes or overruns `init_timeout_ms`.
    ///
    /// The first worker's `init` is handed `previous`; a worker started after a crash
    /// starts without state (what the crashed one held is gone).
    pub(crate) fn start(
        spec: WorkerSpec,
        previous: Option<&PreviousState>,
    ) -> Result<(Supervised, Vec<LogRecord>), LoadError> {
        let shared = Arc::new(Shared {
            spec,
            state: Mutex::new(State::default()),
            starting: Mutex::new(()),
            restarts: AtomicU64::new(0),
            crashes: AtomicU64::new(0),
            closing: AtomicBool::new(false),
        });
        let (worker, metadata, logs) = Shared::spawn(&shared, previous)?;
        if let Some(missing) = worker.sandbox().and_then(|applied| applied.missing) {
            tracing::warn!(plugin = %shared.spec.plugin, generation = shared.spec.generation,
                "its sandbox runs without {missing} (best_effort = true)");
        }
        worker.put_in_service();
        lock(&shared.state).worker = Some(worker);
        Ok((Supervised { shared, metadata }, logs))
    }

    pub(crate) fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    pub(crate) fn copy(&self) -> &Arc<KeptCopy> {
        &self.shared.spec.copy
    }

    /// Runs a call on the worker, starting one first if the last one died; its log records
    /// go to `live` as the worker forwards them, if given.
    pub(crate) fn call(
        &self,
        callback: &str,
        input: &str,
        cancelled: &AtomicBool,
        deadline: SystemTime,
        live: Option<LiveLog>,
    ) -> Result<(CallOutcome, u32), CallError> {
        let worker = self.worker(deadline)?;
        let outcome = worker.call(callback, input, cancelled, deadline, live)?;
        Ok((outcome, worker.pid()))
    }

    /// Makes a reserved call (the stop signal) to the worker serving now, if there is one;
    /// none is started for it. `None` without a worker.
    pub(crate) fn call_current(
        &self,
        callback: &str,
        input: &str,
        cancelled: &AtomicBool,
        deadline: SystemTime,
    ) -> Option<Result<CallOutcome, CallError>> {
        let worker = self.shared.current().ok().flatten()?;
        Some(worker.call(callback, input, cancelled, deadline, None))
    }

    /// The worker serving now, or a new one.
    fn worker(&self, deadline: SystemTime) -> Result<Arc<Worker>, CallError> {
        let shared = &self.shared;
        if let Some(worker) = shared.current()? {
            return Ok(worker);
        }
        let _one_at_a_time = lock(&shared.starting);
        if let Some(worker) = shared.current()? {
            return Ok(worker);
        }
        let not_before = lock(&shared.state).not_before;
        if let Some(at) = not_before {
            let wait = at.saturating_duration_since(Instant::now());
            if SystemTime::now() + wait > deadline {
                return Err(CallError::new(
                    CallErrorKind::Crashed,
                    format!(
                        "plugin {} crashed and is being restarted after a delay of {} ms; \
                         the last crash: {}",
                        self.metadata.name,
                        wait.as_millis(),
                        lock(&shared.state).last_crash.clone().unwrap_or_default()
                    ),
                ));
            }
            std::thread::sleep(wait);
        }
        match Shared::spawn(shared, None) {
            Ok((worker, _, logs)) => {
                crate::runtime::generation::replay_logs(
                    &self.metadata.name,
                    shared.spec.generation,
                    &logs,
                );
                shared.restarts.fetch_add(1, Ordering::Relaxed);
                tracing::info!(plugin = %self.metadata.name, generation = shared.spec.generation,
                    worker_pid = worker.pid(), "worker restarted");
                worker.put_in_service();
                lock(&shared.state).worker = Some(worker.clone());
                Ok(worker)
            }
            Err(err) => {
                let reason = format!("its worker could not be restarted: {}", err.message());
                shared.crashed(&reason);
                Err(CallError::new(
                    CallErrorKind::Crashed,
                    format!("plugin {} crashed: {reason}", self.metadata.name),
                ))
            }
        }
    }

    /// Clears a quarantine and the crash history, and starts a fresh worker at once
    /// (`host restart`).
    pub(crate) fn restart(&self) -> Result<u32, CallError> {
        let shared = &self.shared;
        let _one_at_a_time = lock(&shared.starting);
        let old = {
            let mut state = lock(&shared.state);
            state.quarantined = None;
            state.recent.clear();
            state.not_before = None;
            state.worker.take()
        };
        if let Some(old) = old {
            old.shutdown(Duration::from_millis(shared.spec.settings.stop_timeout_ms));
        }
        drop(_one_at_a_time);
        let far = SystemTime::now() + Duration::from_millis(shared.spec.settings.init_timeout_ms);
        Ok(self.worker(far)?.pid())
    }

    /// What `host list` shows.
    pub(crate) fn status(&self) -> WorkerStatus {
        let state = lock(&self.shared.state);
        WorkerStatus {
            pid: state
                .worker
                .as_ref()
                .filter(|w| !w.is_gone())
                .map(|w| w.pid()),
            restarts: self.shared.restarts.load(Ordering::Relaxed),
            crashes: self.shared.crashes.load(Ordering::Relaxed),
            last_crash: state.last_crash.clone(),
            quarantined: state.quarantined.clone(),
            sandbox: state.sandbox.clone(),
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        let worker = lock(&self.shared.state).worker.take();
        if let Some(worker) = worker {
            worker.shutdown(Duration::from_millis(
                self.shared.spec.settings.stop_timeout_ms,
            ));
            tracing::info!(plugin = %self.metadata.name, generation = self.shared.spec.generation,
                worker_pid = worker.pid(), "worker stopped");
        }
    }
}

impl Shared {
    /// The worker serving now; `None` if there is none to use; an error if quarantined.
    fn current(&self) -> Result<Option<Arc<Worker>>, CallError> {
        let state = lock(&self.state);
        if let Some(reason) = &state.quarantined {
            return Err(CallError::new(CallErrorKind::Quarantined, reason.clone()));
        }
        Ok(state.worker.clone().filter(|w| !w.is_gone()))
    }

    /// Starts a worker for this generation.
    fn spawn(
        shared: &Arc<Shared>,
        previous: Option<&PreviousState>,
    ) -> Result<(Arc<Worker>, Metadata, Vec<LogRecord>), LoadError> {
        let spec = &shared.spec;
        let request = LoadRequest {
            copy: spec.copy.path().to_owned(),
            source: spec.source.clone(),
            generation: spec.generation,
            settings: spec.settings.clone(),
            max_message_bytes: spec.budget.max_message,
            max_log_bytes_per_call: spec.budget.max_log_bytes,
            tsc_per_us: crate::types::clock::rate(),
            previous: previous.cloned(),
        };
        let label = Label {
            plugin: spec.plugin.clone(),
            generation: spec.generation,
            timeout_ms: spec.settings.timeout_ms,
            kill_after_ms: spec.settings.kill_after_ms,
            max_memory_mb: spec.settings.max_memory_mb,
        };
        let weak: Weak<Shared> = Arc::downgrade(shared);
        let spawn = SpawnSpec {
            program: spec.program.clone(),
            max_memory_mb: spec.settings.max_memory_mb,
        };
        let started = Worker::start(
            &spawn,
            request,
            label,
            Box::new(move |worker: &Worker, exit: &Exit| {
                if let Some(shared) = weak.upgrade() {
                    shared.exited(worker, exit);
                }
            }),
        )?;
        lock(&shared.state).sandbox = started.0.sandbox().map(|applied| applied.description);
        if started.1.name != spec.plugin {
            started.0.kill();
            return Err(LoadError::new(
                &spec.source,
                LoadErrorKind::InvalidMetadata,
                format!(
                    "declares plugin {} in its ELF note but {} in its metadata: rebuild it",
                    spec.plugin, started.1.name
                ),
            ));
        }
        Ok(started)
    }

    /// A worker of this generation ended. Only one that was put in service counts: a
    /// worker that failed while starting is counted by whoever started it.
    fn exited(&self, worker: &Worker, exit: &Exit) {
        if exit.clean || self.closing.load(Ordering::SeqCst) || !worker.was_in_service() {
            return;
        }
        self.crashed(&exit.reason);
    }

    /// Counts a crash and decides what happens next: a restart after a back-off, or a
    /// quarantine.
    fn crashed(&self, reason: &str) {
        let settings = &self.spec.settings;
        let window = Duration::from_millis(settings.restart_window_ms);
        let now = Instant::now();
        let crashes = self.crashes.fetch_add(1, Ordering::Relaxed) + 1;
        let mut state = lock(&self.state);
        state.recent.push_back(now);
        while state
            .recent
            .front()
            .is_some_and(|at| now.duration_since(*at) > window)
        {
            state.recent.pop_front();
        }
        let in_window = state.recent.len() as u32;
        state.last_crash = Some(reason.to_owned());
        state.worker = state.worker.take().filter(|w| !w.is_gone());
        let plugin = &self.spec.plugin;
        self.spec.events.report(plugin, WorkerEvent::Crash);
        if in_window >= settings.max_restarts.max(1) {
            let message = format!(
                "plugin {plugin} is quarantined: {in_window} crashes within {} ms \
                 (max_restarts {}); the last: {reason}. It is tried again when its file \
                 changes, or after `host restart {plugin}`",
                settings.restart_window_ms, settings.max_restarts
            );
            tracing::error!(plugin = %plugin, generation = self.spec.generation, "{message}");
            if state.quarantined.is_none() {
                self.spec.events.report(plugin, WorkerEvent::Quarantine);
            }
            state.quarantined = Some(message);
            state.not_before = None;
        } else {
            let delay = backoff(in_window);
            state.not_before = Some(now + delay);
            tracing::error!(plugin = %plugin, generation = self.spec.generation,
                "crashed: {reason} ({crashes} crashes, {in_window} within restart_window_ms); \
                 the next call starts a new worker{}",
                if delay.is_zero() { String::new() } else { format!(" after {} ms", delay.as_millis()) });
        }
    }
}

/// How long to wait before starting a new worker, after `crashes` crashes within the
/// window: none after the first, then 25 ms doubling up to 2 s.
pub(crate) fn backoff(crashes: u32) -> Duration {
    match crashes {
        0 | 1 => Duration::ZERO,
        n => Duration::from_millis(25u64 << (n - 2).min(7)).min(Duration::from_secs(2)),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_doubling_up_to_two_seconds() {
        assert_eq!(backoff(1), Duration::ZERO);
        assert_eq!(backoff(2), Duration::from_millis(25));
        assert_eq!(backoff(3), Duration::from_millis(50));
        assert_eq!(backoff(8), Duration::from_millis(1600));
        assert_eq!(backoff(9), Duration::from_secs(2));
        assert_eq!(backoff(40), Duration::from_secs(2));
    }
}

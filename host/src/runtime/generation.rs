//! Generations: one loaded version of a plugin, from `init` to unload.
//!
//! A [`Generation`] owns a running instance of a plugin and what it was made from. In
//! process, that is the plugin instance (its handler) and the library it came from; isolated,
//! it is a [`Supervised`] worker process and the private copy it loads. Callers hold an
//! `Arc<Generation>` for the length of one call, so a call runs entirely on one version.
//! When a new version replaces it, the registry hands the old one to the reaper, which waits
//! until no call holds it any more and then drops it on a thread of its own: in process, the
//! plugin value is dropped (a panic in its `Drop` is caught and reported), the handler is
//! dropped, and when no generation uses the library any more it is closed; isolated, the
//! worker is asked to exit and reaped. No caller ever pays for an unload.

use std::mem::ManuallyDrop;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use abi_stable::std_types::{RErr, ROk, RSlice, RStr, RVec};
use plugin_api::abi::{FfiCallContext, FfiLogRecord, FfiLogSink, FfiOutcome, HandlerBox};
use plugin_api::{ErrorKind, FollowUp, Level, LogRecord, PluginError};

use crate::files::digest::Digest;
use crate::files::plugin_file::KeptCopy;
use crate::runtime::handover::{Gate, Held, PreviousState};
use crate::runtime::isolation::{Supervised, WorkerSpec, WorkerStatus};
use crate::runtime::loader::{Library, LoadError, LoadErrorKind, Metadata};
use crate::runtime::rollout::{Probation, Trip};
use crate::runtime::stop::{Stopped, STOP};
use crate::types::call::{Budget, CallError, CallErrorKind, CallOutcome, Name};
use crate::types::counter::Counter;
use crate::types::live_log::{LiveLog, LogSink};
use crate::types::settings::{Isolation, PluginSettings};

/// One loaded and initialised version of a plugin.
pub(crate) struct Generation {
    number: u64,
    backend: Backend,
    source: PathBuf,
    settings: PluginSettings,
    budget: Budget,
    loaded_at: SystemTime,
    /// Its calls counted; shared with the plugin's history, which outlives it.
    tally: Arc<Tally>,
    /// Calls holding one of the plugin's `max_concurrent_calls` slots.
    slots_taken: AtomicUsize,
    /// Calls whose caller was told they timed out, and that have not returned yet.
    stuck: AtomicU64,
    /// Its probation after it replaced another version (see `registry::rollout`).
    probation: Probation,
    /// Bumped each time it is put back into service after being retired (a rollback), so
    /// that the reaper lets go of a retirement that no longer holds.
    epoch: AtomicU64,
    /// Closed while it hands its state over to the next version (see `handover`).
    gate: Gate,
    /// Its plugin sends log records live (plugin ABI 1.5, `Handler::call_live`).
    live_logs: bool,
}

/// The callback name a worker process takes for a `save_state` request; `#` begins no
/// callback name the host passes on.
pub(crate) const SAVE_STATE: &str = "#save_state";

/// How long past `stop_timeout_ms` a worker process has to answer its stop signal.
const STOP_ANSWER_GRACE: Duration = Duration::from_secs(1);

/// A typed call reached a generation that handed over to the next version: look it up
/// again.
#[derive(Debug)]
pub(crate) struct Moved;

/// A generation's calls: started and finished, striped so that concurrent callers do not
/// share a cache line (their difference is the number of calls running), and failed (the
/// plugin's error, or the host's: crashed, timeout ...).
#[derive(Debug, Default)]
pub(crate) struct Tally {
    started: Counter,
    finished: Counter,
    errors: Counter,
}

impl Tally {
    /// Calls finished.
    pub(crate) fn calls(&self) -> u64 {
        self.finished.sum()
    }

    /// Calls that failed.
    pub(crate) fn errors(&self) -> u64 {
        self.errors.sum()
    }
}

/// Where a generation's plugin code runs.
enum Backend {
    InProcess {
        handler: ManuallyDrop<HandlerBox>,
        library: ManuallyDrop<Arc<Library>>,
    },
    Worker(Supervised),
}

/// What a generation was made from, to start another one from (a new configuration).
#[derive(Debug, Clone)]
pub(crate) enum Origin {
    /// A library opened in this process.
    Library(Arc<Library>),
    /// A private copy worker processes open.
    Copy(Arc<KeptCopy>),
}

impl Generation {
    /// Runs the plugin's `init` in this process and returns the new generation, with what
    /// `init` logged (replayed into the host's log).
    pub(crate) fn start(
        library: Arc<Library>,
        source: &Path,
        number: u64,
        (settings, budget): (PluginSettings, Budget),
        previous: Option<&PreviousState>,
    ) -> Result<Generation, LoadError> {
        let name = library.metadata().name.clone();
        let (generation, logs) =
            match Generation::start_local(library, source, number, (settings, budget), previous) {
                Ok((generation, logs)) => (Ok(generation), logs),
                Err((err, logs)) => (Err(err), logs),
            };
        replay_logs(&name, number, &logs);
        generation
    }

    /// Runs the plugin's `init` in this process; the records it logged are returned, not
    /// replayed (a worker process sends them to its host).
    pub(crate) fn start_local(
        library: Arc<Library>,
        source: &Path,
        number: u64,
        (settings, budget): (PluginSettings, Budget),
        previous: Option<&PreviousState>,
    ) -> Result<(Generation, Vec<LogRecord>), (LoadError, Vec<LogRecord>)> {
        let name = library.metadata().name.clone();
        let (handler, logs) =
            library.instantiate(&settings.config_json(), number, &budget, previous);
        let handler = match handler {
            Ok(handler) => handler,
            Err(err) => {
                let err = LoadError::new(
                    source,
                    LoadErrorKind::InitFailed,
                    format!("plugin {name}: init failed: {err}"),
                );
                return Err((err, logs));
            }
        };
        let backend = Backend::InProcess {
            handler: ManuallyDrop::new(handler),
            library: ManuallyDrop::new(library),
        };
        Ok((
            Generation::new(backend, source, number, settings, budget),
            logs,
        ))
    }

    /// Starts a worker process for an isolated generation, which runs the plugin's `init`
    /// there. Bounded by `init_timeout_ms` (the worker is killed past it).
    pub(crate) fn start_isolated(
        spec: WorkerSpec,
        previous: Option<&PreviousState>,
    ) -> Result<Generation, LoadError> {
        let (source, number, settings, budget) = (
            spec.source.clone(),
            spec.generation,
            spec.settings.clone(),
            spec.budget,
        );
        let plugin = spec.plugin.clone();
        let (supervised, logs) = Supervised::start(spec, previous)?;
        replay_logs(&plugin, number, &logs);
        Ok(Generation::new(
            Backend::Worker(supervised),
            &source,
            number,
            settings,
            budget,
        ))
    }

    fn new(
        backend: Backend,
        source: &Path,
        number: u64,
        settings: PluginSettings,
        budget: Budget,
    ) -> Generation {
        let live_logs = backend_metadata(&backend).abi_minor() >= LIVE_LOGS_MINOR;
        Generation {
            live_logs,
            number,
            backend,
            source: source.to_owned(),
            settings,
            budget,
            loaded_at: SystemTime::now(),
            tally: Arc::default(),
            slots_taken: AtomicUsize::new(0),
            stuck: AtomicU64::new(0),
            probation: Probation::default(),
            epoch: AtomicU64::new(0),
            gate: Gate::default(),
        }
    }

    /// Its handover gate.
    pub(crate) fn gate(&self) -> &Gate {
        &self.gate
    }

    /// Counts a call started, unless a handover holds this generation's calls: then waits
    /// until it ends, and returns the generation that took over (or counts the call and
    /// returns `None` if this one serves again).
    #[inline(always)]
    fn begin(&self, deadline: Option<SystemTime>) -> Result<Option<Arc<Generation>>, CallError> {
        self.tally.started.increment();
        if self.gate.is_open() {
            return Ok(None);
        }
        self.wait_at_gate(deadline)
    }

    /// [`Generation::begin`] for a call that found the gate closed.
    #[cold]
    #[inline(never)]
    fn wait_at_gate(
        &self,
        deadline: Option<SystemTime>,
    ) -> Result<Option<Arc<Generation>>, CallError> {
        loop {
            self.tally.started.decrement();
            match self.gate.wait(deadline) {
                Ok(None) => {}
                Ok(Some(next)) => return Ok(Some(next)),
                Err(Held::PastDeadline) => {
                    return Err(CallError::new(
                        CallErrorKind::Timeout,
                        format!(
                            "plugin {} (generation {}): its deadline passed while a handover                              to its next version held the call",
                            self.name(),
                            self.number
                        ),
                    ))
                }
                Err(Held::Unloaded(next)) => {
                    return Err(CallError::new(
                        CallErrorKind::UnknownPlugin,
                        format!(
                            "plugin {} (generation {}) handed its state over to generation \
                             {next}, which is unloaded since: look the plugin up again",
                            self.name(),
                            self.number
                        ),
                    ))
                }
            }
            self.tally.started.increment();
            if self.gate.is_open() {
                return Ok(None);
            }
        }
    }

    /// The state this generation hands to the next version, as JSON text; `None` if it
    /// hands over nothing. Bounded by `timeout_ms`, and by `max_message_bytes` as any
    /// result is; not counted as a call. What the plugin logs goes to the host's log.
    pub(crate) fn save_state(&self) -> Result<Option<String>, String> {
        let deadline = SystemTime::now() + self.timeout();
        let cancelled = AtomicBool::new(false);
        let outcome = match &self.backend {
            Backend::InProcess { .. } => self.save_state_local(&cancelled, Some(deadline)),
            Backend::Worker(supervised) => {
                let (outcome, _) = supervised
                    .call(SAVE_STATE, "null", &cancelled, deadline, None)
                    .map_err(|err| err.message)?;
                outcome
            }
        };
        replay_logs(self.name(), self.number, &outcome.logs);
        match (outcome.error, outcome.result) {
            (Some(err), _) => Err(err.message().to_owned()),
            (None, Some(json)) if json.get().trim() != "null" => Ok(Some(json.get().to_owned())),
            (None, _) => Ok(None),
        }
    }

    /// Runs the plugin's `save_state` in this process (see [`Generation::save_state`]).
    ///
    /// # Panics
    ///
    /// On an isolated generation, which has no plugin in this process.
    pub(crate) fn save_state_local(
        &self,
        cancelled: &AtomicBool,
        deadline: Option<SystemTime>,
    ) -> CallOutcome {
        let Backend::InProcess { handler, .. } = &self.backend else {
            unreachable!("save_state_local on an isolated generation");
        };
        let ffi = handler.save_state(&call_context(cancelled, deadline));
        self.owned(SAVE_STATE, &ffi)
    }

    /// Sends this retired generation its stop signal (plugin ABI 1.4) and waits up to
    /// `stop_timeout_ms` for the threads it started with `spawn`. Called once, after its
    /// calls drained and before it is dropped, on a thread of the reaper's: never under a
    /// lock, never on a tokio thread. What the plugin logs goes to the host's log.
    pub(crate) fn stop(&self) -> Stopped {
        let timeout_ms = self.settings.stop_timeout_ms;
        let outcome = match &self.backend {
            Backend::InProcess { .. } => self.stop_local(timeout_ms),
            Backend::Worker(supervised) => {
                let cancelled = AtomicBool::new(false);
                // The worker joins for up to `timeout_ms`, then answers.
                let deadline =
                    SystemTime::now() + Duration::from_millis(timeout_ms) + STOP_ANSWER_GRACE;
                match supervised.call_current(STOP, &timeout_ms.to_string(), &cancelled, deadline) {
                    None => return Stopped::Failed("no worker process is running".into()),
                    Some(Err(err)) => return Stopped::Failed(err.message),
                    Some(Ok(outcome)) => outcome,
                }
            }
        };
        replay_logs(self.name(), self.number, &outcome.logs);
        match (outcome.error, outcome.result) {
            (Some(err), _) => Stopped::Failed(err.message().to_owned()),
            (None, Some(json)) => Stopped::from_json(json.get()),
            (None, None) => Stopped::NoSignal,
        }
    }

    /// Runs the stop in this process (see [`Generation::stop`]): the glue joins the
    /// plugin's threads for up to `timeout_ms`.
    ///
    /// # Panics
    ///
    /// On an isolated generation, which has no plugin in this process.
    pub(crate) fn stop_local(&self, timeout_ms: u64) -> CallOutcome {
        let Backend::InProcess { handler, .. } = &self.backend else {
            unreachable!("stop_local on an isolated generation");
        };
        let ffi = handler.stop(timeout_ms);
        self.owned(STOP, &ffi)
    }

    /// Its calls, counted.
    pub(crate) fn tally(&self) -> &Arc<Tally> {
        &self.tally
    }

    /// Its probation.
    pub(crate) fn probation(&self) -> &Probation {
        &self.probation
    }

    /// Calls that failed.
    pub(crate) fn errors(&self) -> u64 {
        self.tally.errors()
    }

    /// Counts a failed call of `kind`; the trip, if it rolls this generation back.
    pub(crate) fn note_failure(&self, kind: &str) -> Option<Trip> {
        self.tally.errors.increment();
        self.probation.note(kind, &self.settings, SystemTime::now())
    }

    /// Its service epoch (see the field).
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Puts it back into service after it was retired: the reaper lets go of it, and if it
    /// had handed its state over, it serves again with the state it had then.
    pub(crate) fn reinstate(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.gate.open();
    }

    pub(crate) fn number(&self) -> u64 {
        self.number
    }

    pub(crate) fn metadata(&self) -> &Metadata {
        backend_metadata(&self.backend)
    }

    pub(crate) fn name(&self) -> &str {
        &self.metadata().name
    }

    /// The library, for a generation that runs in this process.
    pub(crate) fn library(&self) -> Option<&Arc<Library>> {
        match &self.backend {
            Backend::InProcess { library, .. } => Some(library),
            Backend::Worker(_) => None,
        }
    }

    /// What it was made from.
    pub(crate) fn origin(&self) -> Origin {
        match &self.backend {
            Backend::InProcess { library, .. } => Origin::Library(Arc::clone(library)),
            Backend::Worker(supervised) => Origin::Copy(supervised.copy().clone()),
        }
    }

    /// The private copy of the file it was loaded from, to load again for a rollback.
    pub(crate) fn kept_copy(&self) -> Option<Arc<KeptCopy>> {
        match &self.backend {
            Backend::InProcess { library, .. } => library.kept().cloned(),
            Backend::Worker(supervised) => Some(supervised.copy().clone()),
        }
    }

    /// What identifies the content it was loaded from.
    pub(crate) fn digest(&self) -> &Digest {
        match &self.backend {
            Backend::InProcess { library, .. } => library.digest(),
            Backend::Worker(supervised) => supervised.copy().digest(),
        }
    }

    /// Where it runs.
    pub(crate) fn isolation(&self) -> Isolation {
        match &self.backend {
            Backend::InProcess { .. } => Isolation::InProcess,
            Backend::Worker(_) => Isolation::Process,
        }
    }

    /// Its worker process, for an isolated generation.
    pub(crate) fn worker_status(&self) -> Option<WorkerStatus> {
        match &self.backend {
            Backend::InProcess { .. } => None,
            Backend::Worker(supervised) => Some(supervised.status()),
        }
    }

    /// Clears a quarantine and starts a fresh worker (isolated generations only); returns
    /// its pid.
    pub(crate) fn restart_worker(&self) -> Option<Result<u32, CallError>> {
        match &self.backend {
            Backend::InProcess { .. } => None,
            Backend::Worker(supervised) => Some(supervised.restart()),
        }
    }

    pub(crate) fn source(&self) -> &Path {
        &self.source
    }

    pub(crate) fn settings(&self) -> &PluginSettings {
        &self.settings
    }

    /// How long a call may run before its caller is told it timed out.
    pub(crate) fn timeout(&self) -> Duration {
        Duration::from_millis(self.settings.timeout_ms)
    }

    pub(crate) fn stuck(&self) -> u64 {
        self.stuck.load(Ordering::Relaxed)
    }

    /// Counts a call whose caller gave up on it; `false` undoes that when it returns.
    pub(crate) fn mark_stuck(&self, stuck: bool) {
        if stuck {
            self.stuck.fetch_add(1, Ordering::Relaxed);
        } else {
            self.stuck.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn loaded_at(&self) -> SystemTime {
        self.loaded_at
    }

    /// Calls finished by this generation.
    pub(crate) fn calls(&self) -> u64 {
        self.tally.calls()
    }

    /// Calls running in this generation now.
    pub(crate) fn in_flight(&self) -> u64 {
        // Read `finished` first: a call that finishes between the two reads is then counted
        // as running, never as less than zero.
        let finished = self.tally.finished.sum();
        self.tally.started.sum().saturating_sub(finished)
    }

    /// Takes one of the plugin's `max_concurrent_calls` slots, if it has a limit: `Ok(None)`
    /// without a limit, an error of kind `busy` when they are all taken.
    pub(crate) fn enter(&self) -> Result<Option<Slot<'_>>, CallError> {
        let Some(limit) = self.settings.max_concurrent_calls else {
            return Ok(None);
        };
        // The slot is taken first and given back by `drop` if it was one too many.
        let slot = Slot(&self.slots_taken);
        if self.slots_taken.fetch_add(1, Ordering::Relaxed) < limit {
            Ok(Some(slot))
        } else {
            Err(CallError::new(
                CallErrorKind::Busy,
                format!(
                    "plugin {} is busy: {limit} calls are running, its limit (max_concurrent_calls)",
                    self.name()
                ),
            ))
        }
    }

    /// Calls `callback` (or the entry point, for `execute`) with JSON `input`, unless the
    /// plugin already runs as many calls as it may. Its log records also go to `live` as the
    /// plugin writes them, if given and the plugin can (plugin ABI 1.5).
    pub(crate) fn call(
        &self,
        callback: &str,
        input: &str,
        cancelled: &AtomicBool,
        deadline: Option<SystemTime>,
        live: Option<&LogSink>,
    ) -> Result<CallOutcome, CallError> {
        let _slot = self.enter()?;
        self.run(callback, input, cancelled, deadline, live)
    }

    /// Runs one call, whatever the concurrency limit (the caller took care of it), and sends
    /// its log records to the host's log (and to `live` as they are written, if given and
    /// the plugin can: plugin ABI 1.5). An isolated call always has a deadline: the one
    /// given, or `timeout_ms` from now.
    pub(crate) fn run(
        &self,
        callback: &str,
        input: &str,
        cancelled: &AtomicBool,
        deadline: Option<SystemTime>,
        live: Option<&LogSink>,
    ) -> Result<CallOutcome, CallError> {
        if let Some(next) = self.begin(deadline)? {
            return next.call(callback, input, cancelled, deadline, live);
        }
        let live = live.filter(|_| self.live_logs);
        let (outcome, worker_pid) = match &self.backend {
            Backend::InProcess { .. } => (
                self.run_counted(callback, input, cancelled, deadline, live),
                None,
            ),
            Backend::Worker(supervised) => {
                // In process, the plugin answers that it has no such callback.
                let result = if callback.starts_with('#') {
                    Err(CallError::new(
                        CallErrorKind::InvalidRequest,
                        format!("callback names starting with `#` are reserved: {callback}"),
                    ))
                } else {
                    let deadline = deadline.unwrap_or_else(|| SystemTime::now() + self.timeout());
                    let live =
                        live.map(|sink| LiveLog::new(sink.clone(), self.budget.max_log_bytes));
                    supervised.call(callback, input, cancelled, deadline, live)
                };
                self.tally.finished.increment();
                let (outcome, pid) = result?;
                (outcome, Some(pid))
            }
        };
        let name = self.name();
        match worker_pid {
            None => replay_logs(name, self.number, &outcome.logs),
            Some(pid) => {
                let _span = tracing::info_span!("worker", worker_pid = pid).entered();
                replay_logs(name, self.number, &outcome.logs);
            }
        }
        if let Some(err) = outcome
            .error
            .as_ref()
            .filter(|e| e.kind() == ErrorKind::Panicked)
        {
            tracing::warn!(target: "plugin", plugin = name, generation = self.number, "{}", err.message());
        }
        Ok(outcome)
    }

    /// Runs one call in this process; nothing is logged (a worker process sends the records
    /// to its host with the outcome, and to `live` as they are written if the plugin can).
    ///
    /// # Panics
    ///
    /// On an isolated generation, which has no plugin in this process.
    pub(crate) fn run_local(
        &self,
        callback: &str,
        input: &str,
        cancelled: &AtomicBool,
        deadline: Option<SystemTime>,
        live: Option<&LogSink>,
    ) -> CallOutcome {
        self.tally.started.increment();
        let live = live.filter(|_| self.live_logs);
        self.run_counted(callback, input, cancelled, deadline, live)
    }

    /// [`Generation::run_local`], for a call already counted as started; `live` only for a
    /// plugin that sends records live.
    fn run_counted(
        &self,
        callback: &str,
        input: &str,
        cancelled: &AtomicBool,
        deadline: Option<SystemTime>,
        live: Option<&LogSink>,
    ) -> CallOutcome {
        let Backend::InProcess { handler, .. } = &self.backend else {
            unreachable!("run_local on an isolated generation");
        };
        let ctx = call_context(cancelled, deadline);
        let ffi = match live {
            Some(sink) => {
                let live = LiveLog::new(sink.clone(), self.budget.max_log_bytes);
                let write = |record: &FfiLogRecord| live.send_ffi(record);
                handler.call_live(
                    RStr::from(callback),
                    RStr::from(input),
                    &ctx,
                    FfiLogSink::new(&write),
                )
            }
            None if callback == "execute" => handler.execute(RStr::from(input), &ctx),
            None => handler.callback(RStr::from(callback), RStr::from(input), &ctx),
        };
        let outcome = self.owned(callback, &ffi);
        drop(ffi);
        self.tally.finished.increment();
        outcome
    }

    /// Copies what the plugin returned out of its library, within the limits.
    #[inline]
    fn owned(&self, callback: &str, ffi: &FfiOutcome) -> CallOutcome {
        let name = self.name();
        let result = match &ffi.result {
            ROk(json) => Ok(json.as_bytes()),
            RErr(err) => Err(err),
        };
        let owned = self
            .budget
            .outcome(name, result, &ffi.follow_ups, &ffi.logs);
        CallOutcome {
            plugin: Name::new(name),
            callback: Name::new(callback),
            generation: self.number,
            result: owned.result,
            error: owned.error,
            follow_ups: owned.follow_ups,
            logs: owned.logs,
            elapsed_us: 0,
        }
    }

    /// The index of typed callback `callback`, if this in-process generation has one.
    pub(crate) fn typed_index(&self, callback: &str) -> Option<u32> {
        match &self.backend {
            Backend::InProcess { handler, .. } => {
                handler.typed_index(RStr::from(callback)).into_option()
            }
            Backend::Worker(_) => None,
        }
    }

    /// Runs typed callback `index` in this process, appending its output to `out`; its logs
    /// go to the host's log.
    pub(crate) fn run_bytes(
        &self,
        index: u32,
        input: &[u8],
        out: &mut Vec<u8>,
        cancelled: &AtomicBool,
    ) -> Result<Result<TypedOutcome, PluginError>, Moved> {
        let Backend::InProcess { handler, .. } = &self.backend else {
            return Ok(Err(PluginError::new(
                ErrorKind::UnknownCallback,
                "typed calls run in-process only; this plugin runs in a worker process",
            )));
        };
        if !matches!(self.begin(None), Ok(None)) {
            return Err(Moved);
        }
        let ctx = call_context(cancelled, None);
        let start = out.len();
        let mut buffer = RVec::from(std::mem::take(out));
        let status = handler.call_bytes(index, RSlice::from(input), &mut buffer, &ctx);
        *out = buffer.into_vec();
        self.tally.finished.increment();
        let name = self.name();
        let result = match &status.result {
            ROk(()) if out.len() - start > self.budget.max_message => {
                out.truncate(start);
                Err(PluginError::failed(format!(
                    "plugin {name} wrote more than {} bytes (max_message_bytes)",
                    self.budget.max_message
                )))
            }
            ROk(()) => Ok(()),
            RErr(err) => {
                out.truncate(start);
                Err(PluginError::new(
                    ErrorKind::from_code(err.kind),
                    crate::types::call::cut(
                        err.message.as_str(),
                        crate::types::call::MAX_ERROR_MESSAGE,
                    ),
                ))
            }
        };
        if status.logs.is_empty() && status.follow_ups.is_empty() {
            return Ok(result.map(|()| TypedOutcome::default()));
        }
        let used = out.len() - start;
        let logs = self.budget.logs(&status.logs, used);
        replay_logs(name, self.number, &logs);
        Ok(result.map(|()| TypedOutcome {
            logs,
            follow_ups: status.follow_ups.iter().map(FollowUp::from).collect(),
        }))
    }
}

/// What a typed call returns besides its output bytes: usually nothing (and no allocation).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct TypedOutcome {
    /// Records the plugin logged during the call.
    pub logs: Vec<LogRecord>,
    /// Calls the plugin asked to be made next.
    pub follow_ups: Vec<FollowUp>,
}

/// The first plugin ABI minor whose plugins send log records live (`Handler::call_live`).
const LIVE_LOGS_MINOR: u32 = 5;

fn backend_metadata(backend: &Backend) -> &Metadata {
    match backend {
        Backend::InProcess { library, .. } => library.metadata(),
        Backend::Worker(supervised) => supervised.metadata(),
    }
}

fn call_context(cancelled: &AtomicBool, deadline: Option<SystemTime>) -> FfiCallContext<'_> {
    FfiCallContext {
        cancelled,
        deadline_unix_ms: deadline.map_or(0, crate::types::call::deadline_unix_ms),
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        // An isolated generation's `Supervised` stops its worker when dropped.
        if let Backend::InProcess { handler, library } = &mut self.backend {
            if let Some(err) = handler.shutdown().into_option() {
                tracing::warn!("{}", err.message);
            }
            // SAFETY: neither field is used again. The handler points into the library, so
            // it is dropped first; dropping the last `Arc<Library>` then closes the library.
            unsafe {
                ManuallyDrop::drop(handler);
                ManuallyDrop::drop(library);
            }
        }
    }
}

/// One of a plugin's limited concurrent calls, given back when dropped.
#[must_use = "the slot is given back when dropped"]
pub(crate) struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Sends a plugin's log records to the host's `tracing` output, tagged with the plugin's
/// name and generation.
pub(crate) fn replay_logs(plugin: &str, generation: u64, logs: &[LogRecord]) {
    for record in logs {
        let message = &record.message;
        match record.level {
            Level::Error => tracing::error!(target: "plugin", plugin, generation, "{message}"),
            Level::Warn => tracing::warn!(target: "plugin", plugin, generation, "{message}"),
            Level::Info => tracing::info!(target: "plugin", plugin, generation, "{message}"),
            Level::Debug => tracing::debug!(target: "plugin", plugin, generation, "{message}"),
            Level::Trace => tracing::trace!(target: "plugin", plugin, generation, "{message}"),
        }
    }
}

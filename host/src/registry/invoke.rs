//! The one call path. Every front end (the control socket, the task runner, the `host call`
//! command, an embedding service) calls a plugin through [`Host::invoke`] or
//! [`Host::invoke_async`], and nothing below them. The entry owns everything a call needs:
//! finding the generation serving now, the input limit, the plugin's concurrency slot, a
//! thread of the call pool, the deadline and the `timeout` answer at it, cancellation, the
//! count of stuck calls, the list of calls running, the generation's counters (through
//! `Generation::run`: the handover gate, logs), and probation and rollback bookkeeping.
//!
//! [`Host::call`] is the same entry without the thread hop, for embedders that want the
//! cheapest call and give their own thread: the plugin runs on the caller's thread, so only
//! a plugin that honours its deadline can be answered on time there.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::runtime::generation::Generation;
use crate::types::call::{CallError, CallErrorKind, CallOutcome};
use crate::types::clock::Stopwatch;
use crate::types::live_log::LogSink;
use crate::types::settings::Isolation;

use super::{lock, Host};

/// A call to make through [`Host::invoke`]: which plugin and callback, the JSON input, and
/// optionally a timeout other than the plugin's `timeout_ms`, a cancellation flag, and a
/// [`LogSink`] for the call's log records as the plugin writes them.
///
/// ```no_run
/// use host::{CallRequest, Host, HostOptions};
/// use std::time::Duration;
///
/// let host = Host::new(HostOptions::default())?;
/// host.load_file("plugins/libhello.so".as_ref())?;
/// let request = CallRequest::new("hello", "greet", r#"{"name":"Ada"}"#)
///     .timeout(Duration::from_secs(2));
/// let outcome = host.invoke(request)?;
/// assert!(outcome.result().is_ok());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CallRequest {
    /// The plugin.
    pub plugin: String,
    /// The callback (`execute` for the entry point).
    pub callback: String,
    /// The input, as JSON text.
    pub input: Box<str>,
    /// How long the call may run; the plugin's `timeout_ms` when `None`.
    pub timeout: Option<Duration>,
    /// Set it to tell the plugin to cancel (`ctx.is_cancelled()`); the host sets it too
    /// when the deadline passes.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Where the call's log records go while it runs, each as the plugin writes it (plugins
    /// of ABI 1.5 and later, in process or isolated); they still come with the outcome.
    pub live_logs: Option<LogSink>,
}

impl CallRequest {
    /// A call of `callback` of `plugin` with JSON `input`, under the plugin's `timeout_ms`.
    pub fn new(
        plugin: impl Into<String>,
        callback: impl Into<String>,
        input: impl Into<Box<str>>,
    ) -> CallRequest {
        CallRequest {
            plugin: plugin.into(),
            callback: callback.into(),
            input: input.into(),
            timeout: None,
            cancel: None,
            live_logs: None,
        }
    }

    /// The call may run for `timeout` instead of the plugin's `timeout_ms`.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> CallRequest {
        self.timeout = Some(timeout);
        self
    }

    /// `cancel` is the call's cancellation flag.
    #[must_use]
    pub fn cancel(mut self, cancel: Arc<AtomicBool>) -> CallRequest {
        self.cancel = Some(cancel);
        self
    }

    /// `sink` gets the call's log records while it runs, each as the plugin writes it (see
    /// [`LogSink`]).
    ///
    /// ```no_run
    /// use host::{CallRequest, Host, HostOptions, LogSink};
    ///
    /// let host = Host::new(HostOptions::default())?;
    /// host.load_file("plugins/libhello.so".as_ref())?;
    /// let request = CallRequest::new("hello", "greet", r#"{"name":"Ada"}"#)
    ///     .live_logs(LogSink::new(|record| eprintln!("hello says: {}", record.message)));
    /// let outcome = host.invoke(request)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn live_logs(mut self, sink: LogSink) -> CallRequest {
        self.live_logs = Some(sink);
        self
    }
}

/// A call running in the host, as [`Host::running_calls`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunningCall {
    /// The plugin.
    pub plugin: String,
    /// The generation it runs on.
    pub generation: u64,
    /// The callback.
    pub callback: String,
    /// How long it has been running.
    pub elapsed: Duration,
    /// Whether its caller was already told it timed out.
    pub timed_out: bool,
}

impl std::fmt::Display for RunningCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} `{}` (generation {}, running for {} ms{})",
            self.plugin,
            self.callback,
            self.generation,
            self.elapsed.as_millis(),
            if self.timed_out { ", timed out" } else { "" }
        )
    }
}

const RUNNING: u8 = 0;
const DONE: u8 = 1;
const TIMED_OUT: u8 = 2;

/// What the caller and the call's thread share about one call. Whichever of the two moves
/// `phase` away from `RUNNING` first decides: the thread's result is the answer (`DONE`),
/// or the caller was told it timed out (`TIMED_OUT`) and the thread's result is dropped.
struct CallState {
    cancelled: Arc<AtomicBool>,
    phase: AtomicU8,
}

struct Registered {
    plugin: String,
    generation: u64,
    callback: String,
    started: Instant,
    state: Arc<CallState>,
}

/// The calls running on the call pool, for listings and for shutdown. Bounded by the pool:
/// one entry per thread of it, plus calls whose caller was told they timed out.
#[derive(Default)]
pub(crate) struct Running {
    calls: Mutex<HashMap<u64, Registered>>,
    next: AtomicU64,
}

impl Running {
    fn add(&self, registered: Registered) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.calls).insert(id, registered);
        id
    }

    fn remove(&self, id: u64) {
        lock(&self.calls).remove(&id);
    }

    fn list(&self) -> Vec<RunningCall> {
        let mut calls: Vec<RunningCall> = lock(&self.calls)
            .values()
            .map(|r| RunningCall {
                plugin: r.plugin.clone(),
                generation: r.generation,
                callback: r.callback.clone(),
                elapsed: r.started.elapsed(),
                timed_out: r.state.phase.load(Ordering::Acquire) == TIMED_OUT,
            })
            .collect();
        calls.sort_by_key(|c| std::cmp::Reverse(c.elapsed));
        calls
    }
}

impl Host {
    /// Calls a plugin and waits for its answer, which comes by the call's deadline whatever
    /// the plugin does: past it the answer is a `timeout` error, the plugin is told to
    /// cancel, and the call counts as stuck (in [`Host::status`]) until it returns. The
    /// plugin runs on a thread of the host's call pool (`max_call_threads`); a call that
    /// finds none free waits for one until its deadline, then gets a `busy` error.
    ///
    /// Blocks the calling thread: from async code use [`Host::invoke_async`].
    pub fn invoke(&self, request: CallRequest) -> Result<CallOutcome, CallError> {
        let (send, answer) = std::sync::mpsc::sync_channel(1);
        let host = self.clone();
        self.inner.pool.handle().spawn(async move {
            let _ = send.send(host.serve(request).await);
        });
        answer.recv().unwrap_or_else(|_| Err(no_answer()))
    }

    /// [`Host::invoke`] for async callers: the future is ready by the call's deadline, and
    /// no plugin code runs on the caller's runtime.
    pub async fn invoke_async(&self, request: CallRequest) -> Result<CallOutcome, CallError> {
        let host = self.clone();
        let call = self
            .inner
            .pool
            .handle()
            .spawn(async move { host.serve(request).await });
        call.await.unwrap_or_else(|_| Err(no_answer()))
    }

    /// The calls running on the call pool now, the longest-running first, including those
    /// whose caller was told they timed out.
    pub fn running_calls(&self) -> Vec<RunningCall> {
        self.inner.running.list()
    }

    /// The call pool's runtime, whose one worker runs the timers that answer `timeout`: for
    /// a liveness probe (the systemd watchdog's), never for work.
    pub(crate) fn call_pool_handle(&self) -> tokio::runtime::Handle {
        self.inner.pool.handle().clone()
    }

    /// The call path itself, on the pool's runtime; counted for monitoring
    /// ([`Host::call_stats`]).
    async fn serve(self, request: CallRequest) -> Result<CallOutcome, CallError> {
        let started = Instant::now();
        let CallRequest {
            plugin,
            callback,
            input,
            timeout,
            cancel,
            live_logs,
        } = request;
        let result = self
            .serve_call(&plugin, &callback, input, timeout, (cancel, live_logs))
            .await;
        self.inner
            .counters
            .call(&plugin, &callback, &result, started.elapsed());
        result
    }

    async fn serve_call(
        &self,
        plugin: &str,
        callback: &str,
        input: Box<str>,
        timeout: Option<Duration>,
        (cancel, live_logs): (Option<Arc<AtomicBool>>, Option<LogSink>),
    ) -> Result<CallOutcome, CallError> {
        let (plugin, callback) = (plugin.to_owned(), callback.to_owned());
        let generation = self
            .inner
            .table
            .current(&plugin)
            .ok_or_else(|| self.unknown_plugin(&plugin))?;
        self.check_input(&input)?;
        let timeout = timeout.unwrap_or_else(|| generation.timeout());
        let started = Instant::now();
        let deadline = tokio::time::Instant::from_std(started + timeout);
        // The plugin's concurrency slot belongs to the caller: it is given back when the
        // caller gets its answer, timeout included.
        let slot = generation.enter()?;
        let pool = &self.inner.pool;
        let Ok(Ok(thread)) =
            tokio::time::timeout_at(deadline, pool.threads.clone().acquire_owned()).await
        else {
            return Err(CallError::new(
                CallErrorKind::Busy,
                format!(
                    "plugin {plugin}: no call thread came free within the call's timeout of {} \
                     ms: all {} are busy (max_call_threads)",
                    timeout.as_millis(),
                    pool.max_threads
                ),
            ));
        };
        let state = Arc::new(CallState {
            cancelled: cancel.unwrap_or_default(),
            phase: AtomicU8::new(RUNNING),
        });
        let id = self.inner.running.add(Registered {
            plugin: plugin.clone(),
            generation: generation.number(),
            callback: callback.clone(),
            started,
            state: state.clone(),
        });
        let (send, mut answer) = tokio::sync::oneshot::channel();
        {
            let (host, state, generation, callback) = (
                self.clone(),
                state.clone(),
                generation.clone(),
                callback.clone(),
            );
            let deadline = SystemTime::now() + timeout;
            pool.handle().spawn_blocking(move || {
                // Names the call in every line logged during it (the plugin's records too).
                let _span = tracing::info_span!(
                    "call",
                    id,
                    plugin = generation.name(),
                    generation = generation.number(),
                    callback = %callback
                )
                .entered();
                let watch = Stopwatch::start();
                let mut outcome = generation.run(
                    &callback,
                    &input,
                    &state.cancelled,
                    Some(deadline),
                    live_logs.as_ref(),
                );
                if let Ok(outcome) = &mut outcome {
                    if outcome.elapsed_us == 0 {
                        outcome.elapsed_us = watch.elapsed_us();
                    }
                }
                host.after_call(&generation, &outcome);
                drop(thread);
                host.inner.running.remove(id);
                let late = state
                    .phase
                    .compare_exchange(RUNNING, DONE, Ordering::AcqRel, Ordering::Acquire)
                    .is_err();
                if late {
                    generation.mark_stuck(false);
                    // An isolated call gave up at its deadline too; its worker is killed
                    // later if the plugin does not return.
                    if generation.isolation() == Isolation::InProcess {
                        tracing::warn!(
                            plugin = generation.name(),
                            generation = generation.number(),
                            "stuck call `{callback}` returned after {} ms; its answer was dropped",
                            started.elapsed().as_millis()
                        );
                    }
                }
                let _ = send.send(outcome);
            });
        }
        let outcome = match tokio::time::timeout_at(deadline, &mut answer).await {
            Ok(outcome) => outcome,
            Err(_) => {
                let timed_out = state
                    .phase
                    .compare_exchange(RUNNING, TIMED_OUT, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok();
                if timed_out {
                    state.cancelled.store(true, Ordering::Relaxed);
                    generation.mark_stuck(true);
                    drop(slot);
                    tracing::warn!(
                        plugin = generation.name(),
                        generation = generation.number(),
                        "call timed out: `{callback}`"
                    );
                    let mut error = timeout_error(&generation, &callback, timeout);
                    error.message.push_str(match generation.isolation() {
                        Isolation::InProcess => {
                            "; it was told to cancel and counts as stuck until it returns"
                        }
                        Isolation::Process => {
                            "; it was told to cancel, and its worker process is killed if it \
                             has not returned kill_after_ms later"
                        }
                    });
                    return Err(error);
                }
                // It finished at the very moment the deadline passed: its answer is on the
                // way.
                answer.await
            }
        };
        drop(slot);
        match outcome {
            // The plugin noticed the deadline itself, a moment before the host did.
            Ok(Ok(outcome))
                if started.elapsed() >= timeout
                    && outcome
                        .error
                        .as_ref()
                        .is_some_and(|e| e.kind() == plugin_api::ErrorKind::Cancelled)
                    && !state.cancelled.load(Ordering::Relaxed) =>
            {
                Err(timeout_error(&generation, &callback, timeout))
            }
            Ok(result) => result,
            Err(_) => Err(no_answer()),
        }
    }

    /// Calls `callback` of plugin `plugin` with JSON `input` on its current generation, on
    /// the calling thread: the cheapest call, for embedders. `execute` calls the plugin's
    /// entry point.
    ///
    /// The plugin runs on the caller's thread, so the host cannot answer before it returns:
    /// there is no deadline here. Use [`Host::invoke`] to have `timeout_ms` (or a timeout of
    /// your own) enforced, or [`Host::call_with`] to hand the plugin a deadline and a
    /// cancellation flag.
    pub fn call(
        &self,
        plugin: &str,
        callback: &str,
        input: &str,
    ) -> Result<CallOutcome, CallError> {
        self.call_with(plugin, callback, input, &AtomicBool::new(false), None)
    }

    /// Like [`Host::call`], with a cancellation flag the plugin can observe and a deadline
    /// it is told about (and waits no longer than for a handover to end). A plugin that
    /// returns past `deadline` is not cut short: its outcome is returned as it is.
    pub fn call_with(
        &self,
        plugin: &str,
        callback: &str,
        input: &str,
        cancelled: &AtomicBool,
        deadline: Option<SystemTime>,
    ) -> Result<CallOutcome, CallError> {
        self.check_input(input)?;
        // The guard pins this plugin's current generation, and nothing else, for the call.
        let current = self.inner.table.load(plugin);
        match current.as_ref().and_then(|guard| guard.as_ref()) {
            Some(generation) => {
                let result = generation.call(callback, input, cancelled, deadline, None);
                self.after_call(generation, &result);
                result
            }
            None => Err(self.unknown_plugin(plugin)),
        }
    }
}

impl Host {
    pub(crate) fn check_input(&self, input: &str) -> Result<(), CallError> {
        self.check_input_len(input.len())
    }

    pub(crate) fn check_input_len(&self, len: usize) -> Result<(), CallError> {
        let max = self.inner.budget.max_message;
        if len > max {
            return Err(CallError::new(
                CallErrorKind::InvalidRequest,
                format!("input of {len} bytes is over the limit of {max} (max_message_bytes)"),
            ));
        }
        Ok(())
    }
}

fn timeout_error(generation: &Generation, callback: &str, timeout: Duration) -> CallError {
    let message = format!(
        "plugin {} (generation {}): `{callback}` did not finish within {} ms",
        generation.name(),
        generation.number(),
        timeout.as_millis()
    );
    CallError::new(CallErrorKind::Timeout, message)
}

fn no_answer() -> CallError {
    CallError::new(
        CallErrorKind::Internal,
        "the call's thread ended without an answer (the host is shutting down)",
    )
}

//! Generations: one loaded version of a plugin, from `init` to unload.
//!
//! A [`Generation`] owns a plugin instance and a reference to the library it came from.
//! Callers clone an `Arc<Generation>` for the length of one call, so a call runs entirely on
//! one version. When a new version replaces it, the table drops its reference; the calls still
//! running keep theirs, and when the last one ends the generation *drains*: the plugin value
//! is dropped (a panic in its `Drop` is caught and reported), the handler is dropped, and when
//! no generation uses the library any more it is closed and checked to be gone from memory.

use std::mem::ManuallyDrop;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use abi_stable::std_types::{RErr, ROk, RStr};
use plugin_api::abi::{FfiCallContext, HandlerBox};
use plugin_api::{FollowUp, Level, LogRecord, PluginError};
use serde_json::value::RawValue;

use crate::call::{CallError, CallErrorKind, CallOutcome};
use crate::config::PluginSettings;
use crate::loader::{Library, LoadError, LoadErrorKind, Metadata};

/// One loaded and initialised version of a plugin.
pub(crate) struct Generation {
    number: u64,
    handler: ManuallyDrop<HandlerBox>,
    library: ManuallyDrop<Arc<Library>>,
    source: PathBuf,
    settings: PluginSettings,
    max_result: usize,
    loaded_at: SystemTime,
    /// Calls served; striped, so that concurrent callers do not share a cache line.
    served: StripedCounter,
    /// Calls running now, counted only when the plugin has a `max_concurrent_calls` limit.
    in_flight: AtomicUsize,
    /// Calls whose caller was told they timed out, and that have not returned yet.
    stuck: AtomicU64,
}

impl Generation {
    /// Runs the plugin's `init` and returns the new generation.
    pub(crate) fn start(
        library: Arc<Library>,
        source: &Path,
        number: u64,
        settings: PluginSettings,
        max_result: usize,
    ) -> Result<Generation, LoadError> {
        let name = library.metadata().name.clone();
        let (handler, logs) = library.instantiate(&settings.config_json(), number);
        replay_logs(&name, number, &logs);
        let handler = handler.map_err(|err| {
            LoadError::new(
                source,
                LoadErrorKind::InitFailed,
                format!("plugin {name}: init failed: {err}"),
            )
        })?;
        Ok(Generation {
            number,
            handler: ManuallyDrop::new(handler),
            library: ManuallyDrop::new(library),
            source: source.to_owned(),
            settings,
            max_result,
            loaded_at: SystemTime::now(),
            served: StripedCounter::default(),
            in_flight: AtomicUsize::new(0),
            stuck: AtomicU64::new(0),
        })
    }

    pub(crate) fn number(&self) -> u64 {
        self.number
    }

    pub(crate) fn metadata(&self) -> &Metadata {
        self.library.metadata()
    }

    pub(crate) fn library(&self) -> &Arc<Library> {
        &self.library
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

    /// Calls served (finished) by this generation.
    pub(crate) fn calls(&self) -> u64 {
        self.served.sum()
    }

    /// Calls `callback` (or the entry point, for `execute`) with JSON `input`, unless the
    /// plugin already runs as many calls as it may.
    pub(crate) fn call(
        &self,
        callback: &str,
        input: &str,
        cancelled: &AtomicBool,
        deadline: Option<SystemTime>,
    ) -> Result<CallOutcome, CallError> {
        let _slot = match self.settings.max_concurrent_calls {
            Some(limit) => Some(InFlight::enter(&self.in_flight, limit).ok_or_else(|| {
                CallError::new(
                    CallErrorKind::Busy,
                    format!(
                        "plugin {} is busy: {limit} calls are running, its limit (max_concurrent_calls)",
                        self.metadata().name
                    ),
                )
            })?),
            None => None,
        };
        let outcome = self.call_plugin(callback, input, cancelled, deadline);
        self.served.increment();
        Ok(outcome)
    }

    fn call_plugin(
        &self,
        callback: &str,
        input: &str,
        cancelled: &AtomicBool,
        deadline: Option<SystemTime>,
    ) -> CallOutcome {
        let ctx = FfiCallContext {
            cancelled,
            deadline_unix_ms: deadline
                .and_then(|d| d.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_millis().max(1) as u64),
        };
        let started = Instant::now();
        let ffi = if callback == "execute" {
            self.handler.execute(RStr::from(input), &ctx)
        } else {
            self.handler
                .callback(RStr::from(callback), RStr::from(input), &ctx)
        };
        let elapsed_us = started.elapsed().as_micros() as u64;

        let name = &self.metadata().name;
        let (result, error) = match &ffi.result {
            ROk(json) if json.len() > self.max_result => (
                None,
                Some(PluginError::failed(format!(
                    "plugin {name} returned {} bytes, over the limit of {} (max_message_bytes)",
                    json.len(),
                    self.max_result
                ))),
            ),
            ROk(json) => match RawValue::from_string(json.as_str().to_owned()) {
                Ok(raw) => (Some(raw), None),
                Err(err) => (
                    None,
                    Some(PluginError::failed(format!(
                        "plugin {name} returned a result that is not JSON: {err}"
                    ))),
                ),
            },
            RErr(err) => (None, Some(PluginError::from(err))),
        };
        let logs: Vec<LogRecord> = ffi.logs.iter().map(LogRecord::from).collect();
        replay_logs(name, self.number, &logs);
        let follow_ups = ffi.follow_ups.iter().map(FollowUp::from).collect();
        CallOutcome {
            plugin: name.clone(),
            callback: callback.to_owned(),
            generation: self.number,
            result,
            error,
            follow_ups,
            logs,
            elapsed_us,
        }
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        let name = self.library.metadata().name.clone();
        let _span =
            tracing::info_span!("drain", plugin = %name, generation = self.number).entered();
        if let Some(err) = self.handler.shutdown().into_option() {
            tracing::warn!("{}", err.message);
        }
        // SAFETY: neither field is used again. The handler points into the library, so it is
        // dropped first; dropping the last `Arc<Library>` then closes the library (and logs
        // whether it left memory) inside this span.
        unsafe {
            ManuallyDrop::drop(&mut self.handler);
            ManuallyDrop::drop(&mut self.library);
        }
    }
}

/// A slot among a plugin's limited concurrent calls, given back when dropped.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(count: &'a AtomicUsize, limit: usize) -> Option<InFlight<'a>> {
        let slot = InFlight(count);
        // The slot is taken first and given back by `drop` if it was one too many.
        (count.fetch_add(1, Ordering::Relaxed) < limit).then_some(slot)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A counter that many threads increment without contending: each thread adds to one of
/// several cache-line-sized stripes, and reading sums them.
#[derive(Default)]
struct StripedCounter([Stripe; STRIPES]);

const STRIPES: usize = 16;

#[derive(Default)]
#[repr(align(64))]
struct Stripe(AtomicU64);

impl StripedCounter {
    fn increment(&self) {
        thread_local!(static STRIPE: usize = {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES
        });
        let stripe = STRIPE.with(|s| *s);
        self.0[stripe].0.fetch_add(1, Ordering::Relaxed);
    }

    fn sum(&self) -> u64 {
        self.0.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
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

//! Generations: one loaded version of a plugin, from `init` to unload.
//!
//! A [`Generation`] owns a plugin instance and a reference to the library it came from.
//! Callers hold an `Arc<Generation>` (or an arc-swap guard on it) for the length of one call,
//! so a call runs entirely on one version. When a new version replaces it, the registry hands
//! the old one to the reaper, which waits until no call holds it any more and then drops it
//! on a thread of its own: the plugin value is dropped (a panic in its `Drop` is caught and
//! reported), the handler is dropped, and when no generation uses the library any more it is
//! closed. No caller ever pays for an unload.

use std::mem::ManuallyDrop;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use abi_stable::std_types::RStr;
use plugin_api::abi::{FfiCallContext, HandlerBox};
use plugin_api::{ErrorKind, Level, LogRecord};

use crate::call::{Budget, CallError, CallErrorKind, CallOutcome};
use crate::config::PluginSettings;
use crate::loader::{Library, LoadError, LoadErrorKind, Metadata};

/// One loaded and initialised version of a plugin.
pub(crate) struct Generation {
    number: u64,
    handler: ManuallyDrop<HandlerBox>,
    library: ManuallyDrop<Arc<Library>>,
    source: PathBuf,
    settings: PluginSettings,
    budget: Budget,
    loaded_at: SystemTime,
    /// Calls started and calls finished; striped, so that concurrent callers do not share a
    /// cache line. Their difference is the number of calls running.
    started: StripedCounter,
    finished: StripedCounter,
    /// Calls holding one of the plugin's `max_concurrent_calls` slots.
    slots_taken: AtomicUsize,
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
        budget: Budget,
    ) -> Result<Generation, LoadError> {
        let name = library.metadata().name.clone();
        let (handler, logs) = library.instantiate(&settings.config_json(), number, &budget);
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
            budget,
            loaded_at: SystemTime::now(),
            started: StripedCounter::default(),
            finished: StripedCounter::default(),
            slots_taken: AtomicUsize::new(0),
            stuck: AtomicU64::new(0),
        })
    }

    pub(crate) fn number(&self) -> u64 {
        self.number
    }

    pub(crate) fn metadata(&self) -> &Metadata {
        self.library.metadata()
    }

    pub(crate) fn name(&self) -> &str {
        &self.library.metadata().name
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

    /// Calls finished by this generation.
    pub(crate) fn calls(&self) -> u64 {
        self.finished.sum()
    }

    /// Calls running in this generation now.
    pub(crate) fn in_flight(&self) -> u64 {
        // Read `finished` first: a call that finishes between the two reads is then counted
        // as running, never as less than zero.
        let finished = self.finished.sum();
        self.started.sum().saturating_sub(finished)
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
    /// plugin already runs as many calls as it may.
    pub(crate) fn call(
        &self,
        callback: &str,
        input: &str,
        cancelled: &AtomicBool,
        deadline: Option<SystemTime>,
    ) -> Result<CallOutcome, CallError> {
        let _slot = self.enter()?;
        Ok(self.run(callback, input, cancelled, deadline))
    }

    /// Runs one call, whatever the concurrency limit (the caller took care of it).
    pub(crate) fn run(
        &self,
        callback: &str,
        input: &str,
        cancelled: &AtomicBool,
        deadline: Option<SystemTime>,
    ) -> CallOutcome {
        self.started.increment();
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
        let name = self.name();
        let owned = self.budget.outcome(name, &ffi);
        drop(ffi);
        self.finished.increment();
        replay_logs(name, self.number, &owned.logs);
        if let Some(err) = owned
            .error
            .as_ref()
            .filter(|e| e.kind() == ErrorKind::Panicked)
        {
            tracing::warn!(target: "plugin", plugin = name, generation = self.number, "{}", err.message());
        }
        CallOutcome {
            plugin: name.to_owned(),
            callback: callback.to_owned(),
            generation: self.number,
            result: owned.result,
            error: owned.error,
            follow_ups: owned.follow_ups,
            logs: owned.logs,
            elapsed_us,
        }
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        if let Some(err) = self.handler.shutdown().into_option() {
            tracing::warn!("{}", err.message);
        }
        // SAFETY: neither field is used again. The handler points into the library, so it is
        // dropped first; dropping the last `Arc<Library>` then closes the library.
        unsafe {
            ManuallyDrop::drop(&mut self.handler);
            ManuallyDrop::drop(&mut self.library);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn striped_counters_add_up_across_threads() {
        let counter = Arc::new(StripedCounter::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let counter = counter.clone();
                std::thread::spawn(move || (0..1000).for_each(|_| counter.increment()))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(counter.sum(), 4000);
    }
}

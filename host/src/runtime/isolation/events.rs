//! Where a supervisor reports what happens to its workers, so that whoever keeps counters
//! (the registry, for `/metrics`) counts crashes and quarantines for the life of the
//! process, not per generation. The runtime names no higher layer: the registry hands its
//! counting in as a closure.

use std::sync::Arc;

/// What happened to an isolated generation's worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WorkerEvent {
    /// A worker put in service ended without the host asking (or could not be restarted).
    Crash,
    /// Crashes within `restart_window_ms` reached `max_restarts`: the generation is
    /// quarantined.
    Quarantine,
}

type Sink = dyn Fn(&str, WorkerEvent) + Send + Sync;

/// A sink for [`WorkerEvent`]s, called with the plugin's name; the default drops them.
#[derive(Clone, Default)]
pub(crate) struct WorkerEvents(Option<Arc<Sink>>);

impl WorkerEvents {
    /// Calls `sink` for every event. It runs on the thread that saw the event (a worker's
    /// watcher or a caller), so it must be short and must not block.
    pub(crate) fn new(sink: impl Fn(&str, WorkerEvent) + Send + Sync + 'static) -> Self {
        WorkerEvents(Some(Arc::new(sink)))
    }

    pub(crate) fn report(&self, plugin: &str, event: WorkerEvent) {
        if let Some(sink) = &self.0 {
            sink(plugin, event);
        }
    }
}

impl std::fmt::Debug for WorkerEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("WorkerEvents")
            .field(&self.0.as_ref().map(|_| "sink"))
            .finish()
    }
}

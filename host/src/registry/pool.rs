//! The call pool: the bounded set of threads plugin code runs on when a caller must be
//! answered at its deadline whatever the plugin does (every call through [`Host::invoke`]).
//!
//! A small tokio runtime of the host's own: one worker thread for the timers that answer
//! `timeout`, and a blocking pool of at most `max_call_threads` threads (a semaphore hands
//! them out; a call that finds none free waits for one until its own deadline, then is
//! answered `busy`). Plugin code runs only on the blocking threads, never on the worker.
//!
//! [`Host::invoke`]: crate::Host::invoke

use std::sync::Arc;

use tokio::runtime::{Handle, Runtime};
use tokio::sync::Semaphore;

/// The default of `max_call_threads`.
pub const DEFAULT_MAX_CALL_THREADS: usize = 64;

pub(crate) struct CallPool {
    /// `None` only while being dropped.
    runtime: Option<Runtime>,
    pub(crate) threads: Arc<Semaphore>,
    pub(crate) max_threads: usize,
}

impl CallPool {
    pub(crate) fn new(max_threads: usize) -> std::io::Result<CallPool> {
        if max_threads == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "max_call_threads must be at least 1",
            ));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            // One more than the semaphore hands out: the thread that returns a call late
            // never keeps the next caller waiting for a thread.
            .max_blocking_threads(max_threads + 1)
            .thread_name("host-call")
            // Idle threads end after tokio's 10 s: a thread-local destructor a plugin
            // registered on one keeps that plugin's replaced library mapped until the
            // thread ends (failures.rs: a thread left running ... is reported).
            .enable_time()
            .build()?;
        Ok(CallPool {
            runtime: Some(runtime),
            threads: Arc::new(Semaphore::new(max_threads)),
            max_threads,
        })
    }

    pub(crate) fn handle(&self) -> &Handle {
        match &self.runtime {
            Some(runtime) => runtime.handle(),
            None => unreachable!("the call pool's runtime is taken only by drop"),
        }
    }
}

impl Drop for CallPool {
    fn drop(&mut self) {
        // The last `Host` may be dropped on any thread, an async one included, where a
        // runtime may not block: leave calls still running behind instead of joining them.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

//! The stop signal (ABI 1.4): a [`StopToken`] a version's threads poll or wait on, and the
//! threads started with [`InitContext::spawn`](crate::InitContext::spawn), which the glue
//! joins when the host retires the version, before its library is closed.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::PluginError;

/// Tells a plugin's threads that its version is being retired (replaced or removed).
///
/// Cloneable and cheap; every clone sees the same signal. The host signals it once, after
/// the version's last call has ended, just before it calls
/// [`Plugin::stop`](crate::Plugin::stop) and joins the threads started with
/// [`InitContext::spawn`](crate::InitContext::spawn).
///
/// ```
/// use plugin_api::StopToken;
/// use std::time::Duration;
///
/// let token = StopToken::new();
/// let seen = token.clone();
/// let worker = std::thread::spawn(move || {
///     let mut ticks = 0u64;
///     // One tick every 10 ms until the signal comes.
///     while !seen.wait_timeout(Duration::from_millis(10)) {
///         ticks += 1;
///     }
///     ticks
/// });
/// assert!(!token.is_stopped());
/// token.stop();
/// assert!(token.is_stopped());
/// worker.join().unwrap();
/// ```
#[derive(Clone, Default)]
pub struct StopToken {
    inner: Arc<Signal>,
}

#[derive(Default)]
struct Signal {
    stopped: Mutex<bool>,
    changed: Condvar,
}

impl StopToken {
    /// A token not yet signalled. The host makes the one [`InitContext::stop_token`]
    /// returns; make your own only for tests.
    ///
    /// [`InitContext::stop_token`]: crate::InitContext::stop_token
    pub fn new() -> StopToken {
        StopToken::default()
    }

    /// Whether the version is being retired: a thread that sees `true` returns.
    pub fn is_stopped(&self) -> bool {
        *self
            .inner
            .stopped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits up to `timeout` for the signal; returns whether it came (`true`: stop now).
    /// The way to sleep between two rounds of a periodic job.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut stopped = self
            .inner
            .stopped
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while !*stopped {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            stopped = self
                .inner
                .changed
                .wait_timeout(stopped, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    /// Signals every clone. The glue does this at retirement; a plugin may also use it to
    /// end its own threads early.
    pub fn stop(&self) {
        *self
            .inner
            .stopped
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        self.inner.changed.notify_all();
    }
}

impl std::fmt::Debug for StopToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StopToken")
            .field("stopped", &self.is_stopped())
            .finish()
    }
}

/// One version's stop token and the threads it started, shared by its contexts.
#[derive(Default)]
pub(crate) struct Threads {
    pub(crate) token: StopToken,
    handles: Mutex<Vec<(String, JoinHandle<()>)>>,
}

/// How joining a version's threads went (see [`Threads::join`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StopReport {
    /// Threads started with `spawn` that were still held at stop.
    pub threads: usize,
    /// Of those, the ones that ended within the time given.
    pub ended: usize,
    /// The names of the threads still running when the time was up.
    pub still_running: Vec<String>,
}

impl StopReport {
    /// Whether every thread ended in time.
    pub fn all_ended(&self) -> bool {
        self.ended == self.threads
    }
}

impl Threads {
    /// Starts a thread named `name` running `f` with this version's stop token, and keeps
    /// its handle to join it at stop.
    pub(crate) fn spawn<F>(&self, plugin: &str, name: &str, f: F) -> Result<(), PluginError>
    where
        F: FnOnce(StopToken) + Send + 'static,
    {
        let token = self.token.clone();
        let handle = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || f(token))
            .map_err(|err| {
                PluginError::failed(format!(
                    "plugin {plugin}: cannot start thread {name}: {err}"
                ))
            })?;
        let mut handles = self.handles.lock().unwrap_or_else(PoisonError::into_inner);
        // Forget the threads that already ended, so that a plugin spawning short jobs from
        // its calls does not grow this list.
        let mut i = 0;
        while i < handles.len() {
            if handles[i].1.is_finished() {
                let (_, done) = handles.swap_remove(i);
                let _ = done.join();
            } else {
                i += 1;
            }
        }
        handles.push((name.to_owned(), handle));
        Ok(())
    }

    /// Waits up to `timeout` for every thread to end, joining those that did; the others
    /// are let go (detached).
    pub(crate) fn join(&self, timeout: Duration) -> StopReport {
        let handles: Vec<_> =
            std::mem::take(&mut *self.handles.lock().unwrap_or_else(PoisonError::into_inner));
        let deadline = Instant::now() + timeout;
        let mut report = StopReport {
            threads: handles.len(),
            ..StopReport::default()
        };
        let mut pending = handles;
        let mut pause = Duration::from_micros(200);
        loop {
            let mut i = 0;
            while i < pending.len() {
                if pending[i].1.is_finished() {
                    let (_, done) = pending.swap_remove(i);
                    // Joining waits for the thread's own exit (its thread-locals' destructors)
                    // too, after which nothing of it runs in the library any more.
                    let _ = done.join();
                    report.ended += 1;
                } else {
                    i += 1;
                }
            }
            if pending.is_empty() || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
            pause = (pause * 2).min(Duration::from_millis(20));
        }
        report.still_running = pending.into_iter().map(|(name, _)| name).collect();
        report
    }
}

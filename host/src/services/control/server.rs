//! The control server: starts serving the protocol for a [`Host`] on a Unix socket, and
//! shuts it down.
//!
//! Event-driven, on a small tokio runtime of its own: an idle connection costs a socket and
//! a few hundred bytes, no thread. The acceptor ([`accept`](super::accept)) hands each
//! connection to [`connection`](super::connection), which reads its requests, has
//! [`dispatch`](super::dispatch) answer them, and writes the answers. Plugin calls go
//! through the host's one call path, [`Host::invoke_async`]: they run on the host's call
//! pool, never on this runtime's threads, and are answered `timeout` at their deadline, so a
//! slow or stuck client or call holds up nobody else.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::net::UnixListener;
use tokio::sync::{watch, Semaphore};

use super::accept::{accept_loop, Throttle};
use super::connection::UNIT;
use super::protocol::HostInfo;
use crate::registry::{Host, RunningCall};
use crate::services::catalogue::Catalogue;
use crate::services::config::ServerLimits;
use crate::services::tasks::Tasks;

/// Threads for the requests that do blocking work other than plugin calls (listings,
/// histories, restarts, task operations).
const MAX_BLOCKING_THREADS: usize = 16;

/// Serves the control protocol for a [`Host`] on a Unix socket until stopped.
///
/// Shutting down is two steps, so that the caller can give calls in flight a deadline:
/// [`ControlServer::begin_shutdown`] stops accepting connections and answers new calls with
/// a `shutting_down` error; [`ControlServer::wait_idle`] waits for the calls still running;
/// [`ControlServer::stop`] (or dropping the server) closes everything.
pub struct ControlServer {
    path: PathBuf,
    /// Whether the socket file is the host's to remove (not when systemd passed it).
    owns_file: bool,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
    /// Tells the acceptor (`true`: stop accepting) and the connections (closed) what to do.
    phase: watch::Sender<Phase>,
}

impl std::fmt::Debug for ControlServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlServer")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Phase {
    Serving,
    ShuttingDown,
    Closed,
}

pub(super) struct Shared {
    pub(super) host: Host,
    /// The task runner, or why there is none.
    pub(super) tasks: Result<Tasks, String>,
    pub(super) info: HostInfo,
    pub(super) limits: ServerLimits,
    pub(super) shutting_down: AtomicBool,
    pub(super) connections: Arc<Semaphore>,
    pub(super) buffers: Arc<Semaphore>,
    /// Requests read and not yet answered (their answer written, or the connection gone):
    /// a call leaves the host's running calls when it returns, a moment before its answer
    /// is written.
    pub(super) answering: AtomicUsize,
    pub(super) refused: Mutex<Throttle>,
    /// The fleet's plugin catalogue, once attached ([`ControlServer::attach_catalogue`]).
    pub(super) catalogue: OnceLock<Catalogue>,
}

impl ControlServer {
    /// Binds the socket at `path` (see the module docs for the checks on its directory and
    /// on what is already there) and starts serving `host` on it.
    pub fn start(
        host: Host,
        info: HostInfo,
        path: &Path,
        limits: ServerLimits,
    ) -> io::Result<ControlServer> {
        let none = Err("this host runs no tasks".to_owned());
        ControlServer::start_with_tasks(host, info, path, limits, none)
    }

    /// [`ControlServer::start`], serving the task operations (`submit`, `tasks`, `task`,
    /// `cancel`, `retry`) with `tasks`; `Err(reason)` answers them with that reason.
    pub fn start_with_tasks(
        host: Host,
        info: HostInfo,
        path: &Path,
        limits: ServerLimits,
        tasks: Result<Tasks, String>,
    ) -> io::Result<ControlServer> {
        let socket = super::ControlSocket::bind(path)?;
        ControlServer::serve(socket, host, info, limits, tasks)
    }

    /// Starts serving `host` on a socket bound earlier (see [`ControlServer::start_with_tasks`]).
    pub fn serve(
        socket: super::ControlSocket,
        host: Host,
        info: HostInfo,
        limits: ServerLimits,
        tasks: Result<Tasks, String>,
    ) -> io::Result<ControlServer> {
        let invalid = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{what} must be at least 1"),
            )
        };
        if limits.max_connections == 0 {
            return Err(invalid("max_connections"));
        }
        let path = socket.path().to_owned();
        let owns_file = socket.owns_file();
        let listener = socket
            .take()
            .ok_or_else(|| io::Error::other("the control socket was served already"))?;
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            // Listings, histories, restarts and task operations: plugin calls run on the
            // host's own call pool.
            .max_blocking_threads(MAX_BLOCKING_THREADS)
            .thread_name("control")
            .enable_io()
            .enable_time()
            .build()?;
        let listener = {
            let _entered = runtime.enter();
            UnixListener::from_std(listener)?
        };
        let units = (limits.max_buffered_bytes / UNIT).clamp(1, Semaphore::MAX_PERMITS);
        let shared = Arc::new(Shared {
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            buffers: Arc::new(Semaphore::new(units)),
            host,
            tasks,
            info,
            limits,
            shutting_down: AtomicBool::new(false),
            answering: AtomicUsize::new(0),
            refused: Mutex::new(Throttle::default()),
            catalogue: OnceLock::new(),
        });
        let (phase, watching) = watch::channel(Phase::Serving);
        runtime.spawn(accept_loop(listener, shared.clone(), watching));
        Ok(ControlServer {
            path,
            owns_file,
            shared,
            runtime: Some(runtime),
            phase,
        })
    }

    /// Serves `publish`, `unpublish` and `published` with `catalogue` (without one they are
    /// answered "no fleet database configured"). Only the first catalogue attached counts.
    pub fn attach_catalogue(&self, catalogue: Catalogue) {
        let _ = self.shared.catalogue.set(catalogue);
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A counter of the control connections open, for monitoring (`/metrics`), that stays
    /// valid as long as anyone holds it.
    pub fn connection_counter(&self) -> impl Fn() -> usize + Send + Sync + 'static {
        let (connections, max) = (
            Arc::downgrade(&self.shared.connections),
            self.shared.limits.max_connections,
        );
        move || {
            connections
                .upgrade()
                .map_or(0, |c| max.saturating_sub(c.available_permits()))
        }
    }

    /// The server's tokio runtime, for other front ends to run on (the HTTP API); `None`
    /// once stopped.
    pub fn runtime(&self) -> Option<tokio::runtime::Handle> {
        self.runtime.as_ref().map(|r| r.handle().clone())
    }

    /// Stops accepting connections and removes the socket; connections stay open, and their
    /// new calls are answered with a `shutting_down` error.
    pub fn begin_shutdown(&self) {
        if self.shared.shutting_down.swap(true, Ordering::SeqCst) {
            return;
        }
        self.phase.send_replace(Phase::ShuttingDown);
        if self.owns_file {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// The tokio runtime serving the socket (for the watchdog's probe); `None` once stopped.
    pub fn runtime_handle(&self) -> Option<tokio::runtime::Handle> {
        self.runtime.as_ref().map(|r| r.handle().clone())
    }

    /// The host's calls running now (see [`Host::running_calls`]).
    pub fn running_calls(&self) -> Vec<RunningCall> {
        self.shared.host.running_calls()
    }

    /// Waits until no call is running and every answer has been written, or `deadline`.
    /// Returns the calls still running then (empty when idle in time).
    pub fn wait_idle(&self, deadline: Instant) -> Vec<RunningCall> {
        loop {
            let running = self.running_calls();
            let answering = self.shared.answering.load(Ordering::SeqCst);
            if (running.is_empty() && answering == 0) || Instant::now() >= deadline {
                return running;
            }
            std::thread::sleep(Duration::from_millis(5).min(deadline - Instant::now()));
        }
    }

    /// Stops accepting, closes every connection, and removes the socket. Calls still running
    /// are left to finish on their threads; their answers are dropped.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        self.begin_shutdown();
        self.phase.send_replace(Phase::Closed);
        if let Some(runtime) = self.runtime.take() {
            // Never waits for a plugin call: those run on blocking threads, left behind.
            runtime.shutdown_background();
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

//! One worker process, seen from the host: starting it, calls multiplexed on its channel,
//! and stopping it. The thread that watches it until it is gone, and why it ended, are in
//! `watch`.
//!
//! Calls share the channel by id. There is no reader thread: a caller waiting for its answer
//! becomes the channel's reader if nobody else is reading, hands on any answer that is not
//! its own, and lets the next waiter read when it has its own. A lone call polls for its
//! answer a moment before it sleeps, and the worker runs it on the thread that read it
//! (see `worker`), so it usually costs no wake-up at all; a frame sent while another call is
//! in flight also rings the worker's doorbell.
//!
//! A *watch* thread per worker (`process/watch.rs`) waits for the process to exit, logs its
//! output, kills it when a call overruns `kill_after_ms`, reaps it and says why it ended;
//! the calls still in flight on it then fail with a `crashed` error naming the reason and
//! their callback. Every signal to a worker goes through its pidfd (see `child`).
//!
//! A frame from the worker that is over the channel's limit or does not decode ends the
//! worker: it is killed, and its calls fail with `crashed`, naming the bad frame.

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use plugin_api::LogRecord;
use serde_json::value::RawValue;

use super::channel::{frame_limit, write_frame, FrameReader, FromWorker, LoadRequest, ToWorker};
use super::child::Pidfd;
use super::sandbox::{self, Applied};
use super::spawn::{self, SpawnSpec, Spawned};
use crate::runtime::loader::{LoadError, LoadErrorKind, Metadata};
use crate::types::call::{CallError, CallErrorKind, CallOutcome};
use crate::types::live_log::LiveLog;
use watch::eventfd;

/// How long a reader waits on the channel before looking at its own call again (for a
/// cancellation flag set by its caller).
const READ_SLICE: Duration = Duration::from_millis(50);
/// How long a worker asked to shut down gets before it is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Who a worker serves, for its logs and messages.
#[derive(Debug, Clone)]
pub(crate) struct Label {
    pub(crate) plugin: String,
    pub(crate) generation: u64,
    /// The plugin's `timeout_ms` and `kill_after_ms`, for the kill message.
    pub(crate) timeout_ms: u64,
    pub(crate) kill_after_ms: u64,
    pub(crate) max_memory_mb: Option<u64>,
}

/// Why a worker process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Exit {
    /// One phrase: `killed by signal SIGSEGV`, `exited with status 3`, ...
    pub(crate) reason: String,
    /// It ended because the host asked it to (not a crash).
    pub(crate) clean: bool,
}

/// A running worker process.
pub(crate) struct Worker {
    pid: u32,
    label: Label,
    /// Its signals go through this, never through its pid (see `child`).
    pidfd: Arc<Pidfd>,
    writer: Mutex<UnixStream>,
    /// The writer's descriptor, to shut the channel down without its lock once the
    /// process is gone (the socket is `writer`'s, open as long as `self`).
    channel_fd: RawFd,
    /// Rung after a frame that may arrive while the worker runs a call on its reading
    /// thread (see `worker`).
    doorbell: UnixStream,
    reader: Mutex<FrameReader>,
    state: Mutex<State>,
    changed: Condvar,
    next_id: AtomicU64,
    /// The host asked it to stop; its exit is not a crash.
    stopping: AtomicBool,
    /// It was put in service (its supervisor decides whether its exit counts).
    in_service: AtomicBool,
    /// Wakes the watch thread (a new kill deadline).
    wake: OwnedFd,
    watch: Mutex<Option<JoinHandle<()>>>,
    /// The sandbox it said it runs in.
    sandbox: Mutex<Option<Applied>>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("pid", &self.pid)
            .field("plugin", &self.label.plugin)
            .field("generation", &self.label.generation)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    /// Calls in flight, by id, with their answer once it has been read.
    pending: HashMap<u64, Pending>,
    /// Someone is reading the channel.
    reading: bool,
    /// The channel reached its end or broke: the process is on its way out.
    closed: bool,
    /// How the process ended, once it has.
    exit: Option<Exit>,
    /// Calls whose caller gave up: when to kill the worker if they are still running.
    overdue: Vec<Overdue>,
    /// Why the watch thread killed the worker.
    killed_because: Option<String>,
}

struct Pending {
    answer: Option<Result<CallOutcome, CallError>>,
    /// Where its log records go as the worker forwards them, if its caller wants them.
    live: Option<Arc<LiveLog>>,
}

struct Overdue {
    id: u64,
    callback: String,
    kill_at: Instant,
}

/// Called once by the watch thread when the process is gone.
pub(crate) type OnExit = Box<dyn FnOnce(&Worker, &Exit) + Send>;

impl Worker {
    /// Starts a worker and has it load `request`, waiting up to the plugin's
    /// `init_timeout_ms` for its `init`. `on_exit` runs when the process ends, whenever
    /// that is.
    pub(crate) fn start(
        spec: &SpawnSpec,
        request: LoadRequest,
        label: Label,
        on_exit: OnExit,
    ) -> Result<(Arc<Worker>, Metadata, Vec<LogRecord>), LoadError> {
        let path = request.source.clone();
        let host_error = |what: &str, err: io::Error| {
            LoadError::new(
                &path,
                LoadErrorKind::Host,
                format!("cannot start a worker process ({what}): {err}"),
            )
        };
        // From here on, an early return drops `process`, which kills and reaps it.
        let Spawned {
            process,
            channel,
            doorbell,
            output,
        } = spawn::spawn(spec)
            .map_err(|err| host_error(&spec.program.display().to_string(), err))?;
        let pid = process.pid();
        let limit = frame_limit(request.max_message_bytes, request.max_log_bytes_per_call);
        let reader = channel
            .try_clone()
            .map_err(|err| host_error("channel", err))?;
        let wake = eventfd().map_err(|err| host_error("eventfd", err))?;
        doorbell
            .set_nonblocking(true)
            .map_err(|err| host_error("doorbell", err))?;
        let pidfd = Arc::new(Pidfd::open(pid).map_err(|err| host_error("pidfd", err))?);
        let init_timeout = Duration::from_millis(request.settings.init_timeout_ms);
        let worker = Arc::new(Worker {
            pid,
            label: label.clone(),
            pidfd: pidfd.clone(),
            channel_fd: channel.as_raw_fd(),
            writer: Mutex::new(channel),
            doorbell,
            reader: Mutex::new(FrameReader::new(reader, limit)),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            next_id: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            in_service: AtomicBool::new(false),
            wake,
            watch: Mutex::new(None),
            sandbox: Mutex::new(None),
        });
        let watched = worker.clone();
        let thread = std::thread::Builder::new()
            .name(format!("worker-{pid}"))
            .spawn(move || watched.watch(process, pidfd, output, on_exit));
        match thread {
            Ok(thread) => *lock(&worker.watch) = Some(thread),
            // The closure, and the process in it, were dropped: killed and reaped.
            Err(err) => return Err(host_error("watch thread", err)),
        }

        let refused = |kind, message: String| LoadError::new(&path, kind, message);
        if let Err(err) = write_frame(&lock(&worker.writer), &ToWorker::Load(Box::new(request))) {
            let exit = worker.wait_exit(Duration::from_secs(1));
            return Err(refused(
                LoadErrorKind::InitFailed,
                format!(
                    "plugin {}: its worker process ended at start ({}): {err}",
                    label.plugin,
                    describe(&exit)
                ),
            ));
        }
        let deadline = Instant::now() + init_timeout;
        let mut answer = lock(&worker.reader).next::<FromWorker>(Some(deadline));
        if let Ok(Some(FromWorker::Listener { fd })) = answer {
            if let Err(err) = worker.supervise(fd) {
                worker.kill();
                return Err(refused(
                    LoadErrorKind::Sandbox,
                    format!(
                        "plugin {}: its sandbox (net = \"loopback\") needs the host to check \
                         its connections, and the host cannot: {err}",
                        label.plugin
                    ),
                ));
            }
            answer = lock(&worker.reader).next::<FromWorker>(Some(deadline));
        }
        match answer {
            Ok(Some(FromWorker::Ready {
                metadata,
                logs,
                sandbox,
            })) => {
                *lock(&worker.sandbox) = sandbox;
                Ok((worker, metadata, logs))
            }
            Ok(Some(FromWorker::Refused {
                kind,
                message,
                detail,
                logs,
            })) => {
                crate::runtime::generation::replay_logs(&label.plugin, label.generation, &logs);
                let mut err = refused(kind, message);
                if let Some(detail) = detail {
                    err = err.with_detail(detail);
                }
                if worker.wait_exit(SHUTDOWN_GRACE).is_none() {
                    worker.kill();
                }
                Err(err)
            }
            Ok(Some(FromWorker::Done { .. } | FromWorker::Log { .. })) => {
                worker.kill();
                Err(refused(
                    LoadErrorKind::Host,
                    "the worker process answered a call it was never sent".to_owned(),
                ))
            }
            Ok(Some(FromWorker::Listener { .. })) => {
                worker.kill();
                Err(refused(
                    LoadErrorKind::Host,
                    "the worker process announced a second seccomp listener".to_owned(),
                ))
            }
            Ok(None) => {
                worker.kill();
                Err(refused(
                    LoadErrorKind::InitTimedOut,
                    format!(
                        "plugin {}: init did not return within {} ms (init_timeout_ms); its \
                         worker process was killed and the load refused",
                        label.plugin,
                        init_timeout.as_millis()
                    ),
                ))
            }
            Err(err) => {
                if err.kind() != io::ErrorKind::UnexpectedEof {
                    worker.end_broken(&mut lock(&worker.state), &err);
                }
                let exit = worker.wait_exit(Duration::from_secs(2));
                Err(refused(
                    LoadErrorKind::InitFailed,
                    format!(
                        "plugin {} crashed while loading: {} ({err})",
                        label.plugin,
                        describe(&exit)
                    ),
                ))
            }
        }
    }

    /// Takes descriptor `fd` of the worker, the listener of its `net = "loopback"` filter,
    /// starts the thread that serves it (`sandbox::gate`, ending with the worker), and tells
    /// the worker, which then closes its own. Runs before the plugin is opened: the worker
    /// runs only the host's code yet.
    fn supervise(&self, fd: i32) -> io::Result<()> {
        let fd = u64::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
        let listener = sandbox::take_fd(&*self.pidfd, fd)?;
        sandbox::spawn_gate(listener, self.pid)?;
        write_frame(&lock(&self.writer), &ToWorker::Supervised)
    }

    /// The sandbox it said it runs in, if it has one.
    pub(crate) fn sandbox(&self) -> Option<Applied> {
        lock(&self.sandbox).clone()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Marks it as serving calls.
    pub(crate) fn put_in_service(&self) {
        self.in_service.store(true, Ordering::SeqCst);
    }

    /// Whether it was put in service.
    pub(crate) fn was_in_service(&self) -> bool {
        self.in_service.load(Ordering::SeqCst)
    }

    /// Whether the process has ended or is ending.
    pub(crate) fn is_gone(&self) -> bool {
        let state = lock(&self.state);
        state.closed || state.exit.is_some()
    }

    /// Runs a call on the worker and waits for its answer until `deadline`. Past it, the
    /// plugin is told to cancel, the caller gets a `timeout` error, and the worker is killed
    /// if the call is still running `kill_after_ms` later. With `live`, the worker forwards
    /// the call's log records as the plugin writes them, and whichever caller reads the
    /// channel hands them to `live`, in order.
    pub(crate) fn call(
        &self,
        callback: &str,
        input: &str,
        cancelled: &AtomicBool,
        deadline: SystemTime,
        live: Option<LiveLog>,
    ) -> Result<CallOutcome, CallError> {
        let wants_live = live.is_some();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let input = RawValue::from_string(input.to_owned()).map_err(|err| {
            CallError::new(
                CallErrorKind::InvalidRequest,
                format!("input is not JSON: {err}"),
            )
        })?;
        let alone = {
            let mut state = lock(&self.state);
            if let Some(exit) = &state.exit {
                return Err(self.crashed(&describe(&Some(exit.clone())), callback));
            }
            state.pending.insert(
                id,
                Pending {
                    answer: None,
                    live: live.map(Arc::new),
                },
            );
            state.pending.len() == 1
        };
        let frame = ToWorker::Call {
            id,
            callback: callback.to_owned(),
            input,
            deadline_unix_ms: crate::types::call::deadline_unix_ms(deadline),
            alone,
            live: wants_live,
        };
        if self.send(&frame, !alone).is_err() {
            // The process is going; its exit says why.
            lock(&self.state).closed = true;
        }
        let until = Instant::now()
            + deadline
                .duration_since(SystemTime::now())
                .unwrap_or_default();
        let mut state = lock(&self.state);
        loop {
            if let Some(answer) = state.pending.get_mut(&id).and_then(|p| p.answer.take()) {
                state.pending.remove(&id);
                return answer;
            }
            if let Some(exit) = &state.exit {
                let reason = describe(&Some(exit.clone()));
                state.pending.remove(&id);
                return Err(self.crashed(&reason, callback));
            }
            let now = Instant::now();
            if now >= until || cancelled.load(Ordering::Relaxed) {
                state.pending.remove(&id);
                return Err(self.give_up(state, id, callback, now));
            }
            if !state.reading && !state.closed {
                state.reading = true;
                // A lone call polls for its answer a moment before sleeping; with others in
                // flight, their calls need the CPU more.
                let alone = state.pending.len() == 1;
                drop(state);
                let until = Some(until.min(now + READ_SLICE));
                let mut reader = lock(&self.reader);
                let frame = if alone {
                    reader.next_soon::<FromWorker>(until)
                } else {
                    reader.next::<FromWorker>(until)
                };
                drop(reader);
                // A record is handed on while this thread still holds the reading turn, so
                // that a call's records reach its sink in order, and outside the state lock.
                let frame = match frame {
                    Ok(Some(FromWorker::Log { id: of, record })) => {
                        let live = lock(&self.state)
                            .pending
                            .get(&of)
                            .and_then(|p| p.live.clone());
                        if let Some(live) = live {
                            live.send(&record);
                        }
                        Ok(None)
                    }
                    frame => frame,
                };
                state = lock(&self.state);
                state.reading = false;
                match frame {
                    Ok(Some(FromWorker::Done { id: done, result })) => {
                        // A late answer to a call already given up: it returned, so no kill.
                        state.overdue.retain(|o| o.id != done);
                        if let Some(pending) = state.pending.get_mut(&done) {
                            pending.answer = Some(result);
                        }
                    }
                    Ok(Some(_)) => {
                        tracing::warn!(plugin = %self.label.plugin, generation = self.label.generation,
                            worker_pid = self.pid, "the worker sent an unexpected frame; ignored");
                    }
                    Ok(None) => {}
                    Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => state.closed = true,
                    Err(err) => self.end_broken(&mut state, &err),
                }
                self.changed.notify_all();
            } else {
                let wait = until.saturating_duration_since(now).min(READ_SLICE);
                state = self
                    .changed
                    .wait_timeout(state, wait)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
    }

    /// The caller of call `id` stops waiting: the plugin is told to cancel, and the worker
    /// is killed if the call has not returned `kill_after_ms` from now.
    fn give_up(
        &self,
        mut state: MutexGuard<'_, State>,
        id: u64,
        callback: &str,
        now: Instant,
    ) -> CallError {
        state.overdue.push(Overdue {
            id,
            callback: callback.to_owned(),
            kill_at: now + Duration::from_millis(self.label.kill_after_ms),
        });
        drop(state);
        self.wake_watch();
        let _ = self.send(&ToWorker::Cancel { id }, true);
        CallError::new(
            CallErrorKind::Timeout,
            format!(
                "plugin {} (generation {}): `{callback}` did not finish within {} ms; it was \
                 told to cancel, and its worker process (pid {}) is killed if it has not \
                 returned {} ms later",
                self.label.plugin,
                self.label.generation,
                self.label.timeout_ms,
                self.pid,
                self.label.kill_after_ms
            ),
        )
    }

    /// Writes `frame`, and rings the doorbell after it if the worker may be busy.
    fn send(&self, frame: &ToWorker, ring: bool) -> io::Result<()> {
        write_frame(&lock(&self.writer), frame)?;
        if ring {
            // A full doorbell has rung already; that is enough.
            let _ = (&self.doorbell).write(&[1]);
        }
        Ok(())
    }

    fn crashed(&self, reason: &str, callback: &str) -> CallError {
        CallError::new(
            CallErrorKind::Crashed,
            format!(
                "plugin {} crashed: {reason} in callback `{callback}` (worker pid {}, \
                 generation {})",
                self.label.plugin, self.pid, self.label.generation
            ),
        )
    }

    /// Asks the worker to drop its plugin and exit, and waits up to `grace` for it (the
    /// plugin's `stop_timeout_ms`), killing it past that. Calls must be over.
    pub(crate) fn shutdown(&self, grace: Duration) {
        self.stopping.store(true, Ordering::SeqCst);
        let asked = write_frame(&lock(&self.writer), &ToWorker::Shutdown).is_ok();
        if !asked || self.wait_exit(grace).is_none() {
            if asked {
                tracing::warn!(plugin = %self.label.plugin, generation = self.label.generation,
                    worker_pid = self.pid, "the worker did not exit within {} ms \
                    (stop_timeout_ms): killed", grace.as_millis());
            }
            self.kill();
        }
        self.join_watch();
    }

    /// Kills the process (if it is still there) and waits for the watch thread to reap it.
    /// Through its pidfd: once reaped, it signals no one, whoever has its pid now.
    pub(crate) fn kill(&self) {
        self.signal_kill();
        self.join_watch();
    }

    fn signal_kill(&self) {
        if let Err(err) = self.pidfd.kill() {
            tracing::warn!(plugin = %self.label.plugin, generation = self.label.generation,
                worker_pid = self.pid, "cannot kill the worker process: {err}");
        }
    }

    /// The channel carried a frame over its limit, or one that does not decode: the
    /// worker is broken. It is killed, and its calls fail with `crashed`, naming why.
    fn end_broken(&self, state: &mut State, err: &io::Error) {
        state.closed = true;
        if state.killed_because.is_some() {
            return;
        }
        let reason = format!("its worker sent a bad frame on its channel ({err}) and was killed");
        tracing::error!(plugin = %self.label.plugin, generation = self.label.generation,
            worker_pid = self.pid, "{reason}");
        state.killed_because = Some(reason);
        self.signal_kill();
    }

    /// Waits up to `wait` for the process to have ended; how it ended, if it has.
    fn wait_exit(&self, wait: Duration) -> Option<Exit> {
        let until = Instant::now() + wait;
        let mut state = lock(&self.state);
        loop {
            if let Some(exit) = &state.exit {
                return Some(exit.clone());
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// `exit` as a phrase, or that the process has not ended yet.
fn describe(exit: &Option<Exit>) -> String {
    match exit {
        Some(exit) => exit.reason.clone(),
        None => "its worker process is gone".to_owned(),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

mod watch;

#[cfg(test)]
mod tests;

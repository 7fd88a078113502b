//! The control server: serves the protocol for a [`Host`] on a Unix socket.
//!
//! Event-driven, on a small tokio runtime of its own: an idle connection costs a socket and
//! a few hundred bytes, no thread. Plugin calls go through the host's one call path,
//! [`Host::invoke_async`]: they run on the host's call pool, never on this runtime's
//! threads, and are answered `timeout` at their deadline, so a slow or stuck client or call
//! holds up nobody else. Answers on one connection keep the order of its requests: a connection
//! reads its next request only after answering the last.
//!
//! Memory is bounded: a request line may not exceed `max_message_bytes`, each connection
//! reads through a stack buffer and holds only the bytes of the request it is reading, and
//! every request or answer buffer over [`FREE_BYTES`] takes its size from one pool of
//! `max_buffered_bytes` shared by all connections (a request that finds the pool empty is
//! refused; an answer waits for room until `write_timeout_ms`).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use super::protocol::{decode_request, too_large, HostInfo, Op, Response};
use super::task_listing::{self, Answer};
use crate::registry::{CallRequest, Host, RunningCall};
use crate::services::config::ServerLimits;
use crate::services::tasks::{NewTask, Tasks};
use crate::types::call::{CallError, CallErrorKind};

/// Threads for the requests that do blocking work other than plugin calls (listings,
/// histories, restarts, task operations).
const MAX_BLOCKING_THREADS: usize = 16;
/// Bytes of request or answer a connection may hold without drawing on the shared pool.
pub const FREE_BYTES: usize = 64 * 1024;
/// The pool of buffer bytes is counted in units of this many bytes.
const UNIT: usize = 1024;

/// Serves the control protocol for a [`Host`] on a Unix socket until stopped.
///
/// Shutting down is two steps, so that the caller can give calls in flight a deadline:
/// [`ControlServer::begin_shutdown`] stops accepting connections and answers new calls with
/// a `shutting_down` error; [`ControlServer::wait_idle`] waits for the calls still running;
/// [`ControlServer::stop`] (or dropping the server) closes everything.
pub struct ControlServer {
    path: PathBuf,
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
enum Phase {
    Serving,
    ShuttingDown,
    Closed,
}

struct Shared {
    host: Host,
    /// The task runner, or why there is none.
    tasks: Result<Tasks, String>,
    info: HostInfo,
    limits: ServerLimits,
    shutting_down: AtomicBool,
    connections: Arc<Semaphore>,
    buffers: Arc<Semaphore>,
    /// Requests read and not yet answered (their answer written, or the connection gone):
    /// a call leaves the host's running calls when it returns, a moment before its answer
    /// is written.
    answering: AtomicUsize,
    refused: Mutex<Throttle>,
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
        });
        let (phase, watching) = watch::channel(Phase::Serving);
        runtime.spawn(accept_loop(listener, shared.clone(), watching));
        Ok(ControlServer {
            path,
            shared,
            runtime: Some(runtime),
            phase,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting connections and removes the socket; connections stay open, and their
    /// new calls are answered with a `shutting_down` error.
    pub fn begin_shutdown(&self) {
        if self.shared.shutting_down.swap(true, Ordering::SeqCst) {
            return;
        }
        self.phase.send_replace(Phase::ShuttingDown);
        let _ = std::fs::remove_file(&self.path);
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

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Logs a repeated problem at most once a second, with a count of what was not logged.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    fn warn(&mut self, message: impl std::fmt::Display) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now - last < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return;
        }
        if self.suppressed > 0 {
            tracing::warn!(
                "control socket: {message} ({} more like it in the last second)",
                self.suppressed
            );
        } else {
            tracing::warn!("control socket: {message}");
        }
        self.last = Some(now);
        self.suppressed = 0;
    }
}

async fn accept_loop(
    listener: UnixListener,
    shared: Arc<Shared>,
    mut phase: watch::Receiver<Phase>,
) {
    let mut errors = Throttle::default();
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = phase.wait_for(|p| *p >= Phase::ShuttingDown) => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                backoff = Duration::from_millis(5);
                stream
            }
            Err(err) => {
                // Out of descriptors (EMFILE) and the like: retrying at once would spin.
                errors.warn(format_args!(
                    "accept failed: {err}; retrying in {} ms",
                    backoff.as_millis()
                ));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        match super::peer_uid(&stream) {
            Ok(uid) if uid == crate::files::private_dir::euid() => {}
            Ok(uid) => {
                let reason = format!(
                    "peer uid {uid} is not this host's uid {}",
                    crate::files::private_dir::euid()
                );
                refuse(&shared, &stream, CallErrorKind::InvalidRequest, reason);
                continue;
            }
            Err(err) => {
                let reason = format!("cannot read peer credentials: {err}");
                refuse(&shared, &stream, CallErrorKind::InvalidRequest, reason);
                continue;
            }
        }
        let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
            let reason = format!(
                "the host has {} connections open, its limit (max_connections); try again later",
                shared.limits.max_connections
            );
            refuse(&shared, &stream, CallErrorKind::Busy, reason);
            continue;
        };
        tokio::spawn(serve_connection(
            shared.clone(),
            stream,
            phase.clone(),
            permit,
        ));
    }
}

/// Tells a client in one line why its connection is refused, without waiting for it, and
/// closes the connection.
fn refuse(shared: &Shared, stream: &UnixStream, kind: CallErrorKind, reason: String) {
    lock(&shared.refused).warn(format_args!("refused a connection: {reason}"));
    let line = Response::error(CallError::new(kind, reason)).to_line();
    let _ = stream.try_write(&line);
}

/// Serves one connection until the client closes it, it breaks a limit, or the server
/// closes.
async fn serve_connection(
    shared: Arc<Shared>,
    stream: UnixStream,
    mut phase: watch::Receiver<Phase>,
    _connection: OwnedSemaphorePermit,
) {
    let (mut reader, mut writer) = stream.into_split();
    let mut request = Request::default();
    loop {
        let line = tokio::select! {
            _ = phase.wait_for(|p| *p == Phase::Closed) => return,
            line = request.read(&shared, &mut reader) => line,
        };
        // Counted until its answer is written (or the connection is gone), for wait_idle.
        let _answering = Answering::new(&shared.answering);
        let response = match line {
            Ok(Some(line)) => handle(&shared, &line).await,
            Ok(None) => return,
            Err(error) => {
                // The connection cannot go on (it cannot be resynchronised, or it broke a
                // limit): say why, then close it.
                let _ = write(&shared, &mut writer, &Response::error(error).into()).await;
                return;
            }
        };
        request.finish();
        if let Err(err) = write(&shared, &mut writer, &response).await {
            tracing::debug!("control socket: closing a connection: {err}");
            return;
        }
    }
}

/// One request being answered, counted in `Shared::answering` while it lives.
struct Answering<'a>(&'a AtomicUsize);

impl<'a> Answering<'a> {
    fn new(count: &'a AtomicUsize) -> Answering<'a> {
        count.fetch_add(1, Ordering::SeqCst);
        Answering(count)
    }
}

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The request a connection is reading, and the pool bytes it holds for it.
#[derive(Default)]
struct Request {
    buf: Vec<u8>,
    /// Where the search for the end of the line resumes.
    scanned: usize,
    held: Option<OwnedSemaphorePermit>,
}

impl Request {
    /// Reads until a whole line is there. `Ok(None)`: the client closed the connection (or
    /// it stayed idle past `idle_timeout_ms`).
    async fn read(
        &mut self,
        shared: &Shared,
        reader: &mut OwnedReadHalf,
    ) -> Result<Option<Vec<u8>>, CallError> {
        let limits = &shared.limits;
        let mut first_byte: Option<Instant> = (!self.buf.is_empty()).then(Instant::now);
        loop {
            if let Some(end) = self.buf[self.scanned..].iter().position(|b| *b == b'\n') {
                let end = self.scanned + end;
                if end > limits.max_message_bytes {
                    return Err(limit_error(limits.max_message_bytes));
                }
                let rest = self.buf.split_off(end + 1);
                let mut line = std::mem::replace(&mut self.buf, rest);
                line.pop();
                self.scanned = 0;
                return Ok(Some(line));
            }
            self.scanned = self.buf.len();
            if self.buf.len() > limits.max_message_bytes {
                return Err(limit_error(limits.max_message_bytes));
            }
            let wait = match first_byte {
                None => Duration::from_millis(limits.idle_timeout_ms),
                Some(at) => {
                    let limit = Duration::from_millis(limits.request_timeout_ms);
                    match limit.checked_sub(at.elapsed()) {
                        Some(left) => left,
                        None => {
                            return Err(CallError::new(
                                CallErrorKind::InvalidRequest,
                                format!(
                                    "the request did not arrive whole within {} ms \
                                     (request_timeout_ms)",
                                    limits.request_timeout_ms
                                ),
                            ))
                        }
                    }
                }
            };
            match tokio::time::timeout(wait, reader.readable()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Ok(None),
                // Idle for too long: close quietly. A partial request: the next turn says so.
                Err(_) if first_byte.is_none() => return Ok(None),
                Err(_) => continue,
            }
            // Read through the stack, so an idle connection holds no buffer at all.
            let mut chunk = [0u8; 16 * 1024];
            match reader.try_read(&mut chunk) {
                Ok(0) => return Ok(None),
                Ok(n) => {
                    first_byte.get_or_insert_with(Instant::now);
                    self.reserve(shared, self.buf.len() + n)?;
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Ok(None),
            }
        }
    }

    /// Makes sure the pool bytes held cover a buffer of `len` bytes.
    fn reserve(&mut self, shared: &Shared, len: usize) -> Result<(), CallError> {
        let needed = units_for(len);
        let held = self.held.as_ref().map_or(0, |p| p.num_permits());
        if needed <= held {
            return Ok(());
        }
        let more = u32::try_from(needed - held).unwrap_or(u32::MAX);
        match shared.buffers.clone().try_acquire_many_owned(more) {
            Ok(permit) => {
                match &mut self.held {
                    Some(held) => held.merge(permit),
                    None => self.held = Some(permit),
                }
                Ok(())
            }
            Err(_) => Err(CallError::new(
                CallErrorKind::Busy,
                format!(
                    "the host's request buffers are full ({} bytes in use by all connections, \
                     max_buffered_bytes); try again later",
                    shared.limits.max_buffered_bytes
                ),
            )),
        }
    }

    /// The request has been answered: give back its buffer and pool bytes (what is left is
    /// the start of the next request, if the client sent one already).
    fn finish(&mut self) {
        if self.buf.capacity() > FREE_BYTES {
            self.buf.shrink_to(FREE_BYTES.max(self.buf.len()));
        }
        if units_for(self.buf.len()) == 0 {
            self.held = None;
        }
    }
}

/// Pool units needed for a buffer of `len` bytes (the first [`FREE_BYTES`] are free).
pub(super) fn units_for(len: usize) -> usize {
    len.saturating_sub(FREE_BYTES).div_ceil(UNIT)
}

fn limit_error(limit: usize) -> CallError {
    CallError::new(CallErrorKind::InvalidRequest, too_large(limit).to_string())
}

/// Writes `answer` within `write_timeout_ms`, its buffer counted against the pool (an
/// encoded answer was counted before it was made).
async fn write(shared: &Shared, writer: &mut OwnedWriteHalf, answer: &Answer) -> io::Result<()> {
    let (line, paid) = match answer {
        Answer::Response(response) => (std::borrow::Cow::Owned(response.to_line()), false),
        Answer::Encoded { line, .. } => (std::borrow::Cow::Borrowed(line), true),
    };
    let timeout = Duration::from_millis(shared.limits.write_timeout_ms);
    let deadline = tokio::time::Instant::now() + timeout;
    let units = if paid { 0 } else { units_for(line.len()) };
    let _held = if units > 0 {
        let units = u32::try_from(units).unwrap_or(u32::MAX);
        match tokio::time::timeout_at(deadline, shared.buffers.clone().acquire_many_owned(units))
            .await
        {
            Ok(Ok(permit)) => Some(permit),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no room for the answer in the shared buffers (max_buffered_bytes)",
                ))
            }
        }
    } else {
        None
    };
    match tokio::time::timeout_at(deadline, writer.write_all(&line)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the client did not take its answer within {} ms (write_timeout_ms)",
                shared.limits.write_timeout_ms
            ),
        )),
    }
}

/// Serves one request line.
async fn handle(shared: &Arc<Shared>, line: &[u8]) -> Answer {
    let request = match decode_request(line) {
        Ok(request) => request,
        Err(err) => return Response::error(err).into(),
    };
    if let (Op::Tasks, Ok(tasks)) = (request.op, &shared.tasks) {
        let pool = task_listing::Pool {
            buffers: shared.buffers.clone(),
            units_for,
            wait: Duration::from_millis(shared.limits.write_timeout_ms),
        };
        let filter = request.filter.unwrap_or_default();
        return task_listing::answer(tasks.clone(), filter, pool).await;
    }
    let response = match request.op {
        Op::Call if shared.shutting_down.load(Ordering::Relaxed) => Response::error(
            CallError::new(CallErrorKind::ShuttingDown, "the host is shutting down"),
        ),
        Op::Call => {
            let input: Box<str> = request.input.unwrap_or_else(null).into();
            let call = CallRequest::new(
                request.plugin.unwrap_or_default(),
                request.callback.unwrap_or_default(),
                input,
            );
            match shared.host.invoke_async(call).await {
                Ok(outcome) => Response {
                    outcome: Some(outcome),
                    ..Response::new()
                },
                Err(err) => Response::error(err),
            }
        }
        // A listing may compute SHA-256s left for later: not on the runtime's threads.
        Op::List => {
            let host = shared.host.clone();
            match tokio::task::spawn_blocking(move || host.status()).await {
                Ok(files) => Response {
                    files: Some(files),
                    ..Response::new()
                },
                Err(_) => Response::error(CallError::new(
                    CallErrorKind::Internal,
                    "the listing's thread ended without an answer",
                )),
            }
        }
        Op::Ping => Response {
            host: Some(shared.info.clone()),
            ..Response::new()
        },
        Op::Submit | Op::Tasks | Op::Task | Op::Cancel | Op::Retry => {
            task_op(shared, request).await
        }
        Op::Restart | Op::Rollback if shared.shutting_down.load(Ordering::Relaxed) => {
            Response::error(CallError::new(
                CallErrorKind::ShuttingDown,
                "the host is shutting down",
            ))
        }
        // Starting a worker or an init runs plugin code, and a history may compute SHA-256s:
        // never on the runtime's threads.
        Op::Restart | Op::Rollback | Op::History => {
            let (host, plugin) = (shared.host.clone(), request.plugin.unwrap_or_default());
            let (op, generation) = (request.op, request.generation);
            blocking(move || match op {
                Op::History => host.history(&plugin).map(|history| Response {
                    history: Some(history),
                    ..Response::new()
                }),
                Op::Rollback => host.rollback(&plugin, generation).map(message),
                _ => host.restart_plugin(&plugin).map(message),
            })
            .await
        }
    };
    response.into()
}

/// Runs `serve` on a blocking thread (it runs plugin code or does I/O), never on the
/// runtime's threads.
async fn blocking(
    serve: impl FnOnce() -> Result<Response, CallError> + Send + 'static,
) -> Response {
    match tokio::task::spawn_blocking(serve).await {
        Ok(Ok(response)) => response,
        Ok(Err(err)) => Response::error(err),
        Err(_) => Response::error(CallError::new(
            CallErrorKind::Internal,
            "the request's thread ended without an answer",
        )),
    }
}

/// Serves a task operation, on a blocking thread (the store does I/O).
async fn task_op(shared: &Arc<Shared>, request: super::protocol::Request) -> Response {
    let tasks = match &shared.tasks {
        Ok(tasks) => tasks.clone(),
        Err(reason) => {
            return Response::error(CallError::new(
                CallErrorKind::Internal,
                format!("tasks are unavailable: {reason}"),
            ))
        }
    };
    blocking(move || {
        let id = request.task.unwrap_or_default();
        match request.op {
            Op::Submit => {
                let mut task = NewTask::new(
                    request.plugin.as_deref().unwrap_or_default(),
                    request.callback.as_deref().unwrap_or_default(),
                    request.input.as_ref().map_or("null", |i| i.get()),
                );
                task.options = request.options.unwrap_or_default();
                let plugin = task.plugin.clone();
                tasks.submit(task).map(|submitted| Response {
                    submitted: Some(submitted),
                    message: tasks.waiting_note(&plugin),
                    ..Response::new()
                })
            }
            Op::Tasks => tasks
                .list(&request.filter.unwrap_or_default())
                .map(|page| Response {
                    tasks: Some(page.tasks),
                    next: page.next,
                    ..Response::new()
                }),
            Op::Task => tasks.task(id).map(|tree| Response {
                task: Some(tree),
                ..Response::new()
            }),
            Op::Cancel => tasks.cancel(id).map(message),
            _ => tasks.retry(id).map(message),
        }
    })
    .await
}

fn message(message: String) -> Response {
    Response {
        message: Some(message),
        ..Response::new()
    }
}

fn null() -> Box<RawValue> {
    RawValue::from_string("null".to_owned()).unwrap_or_else(|_| unreachable!("null is JSON"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_draw_on_the_pool_only_past_the_free_bytes() {
        assert_eq!(units_for(0), 0);
        assert_eq!(units_for(FREE_BYTES), 0);
        assert_eq!(units_for(FREE_BYTES + 1), 1);
        assert_eq!(units_for(FREE_BYTES + UNIT + 1), 2);
    }
}

//! The worker process: `host __worker`, started by the host, never by hand. It loads one
//! plugin generation from the private copy the host staged, with the same loader checks as
//! in-process loading, runs its `init`, and serves its calls until told to stop or until the
//! host is gone.
//!
//! Calls run on a small pool of threads that take turns reading the channel. A call the
//! host sent while no other call of its was in flight (`alone`) runs on the thread that read
//! it, and nobody reads meanwhile: a lone call costs no hand-off between threads. For
//! anything the host sends while a call runs (another call, a cancellation), it rings the
//! *doorbell*, a second socket on which one thread waits and wakes a reader. Any other call
//! hands the reading on to an idle thread (or a new one, up to the plugin's
//! `max_concurrent_calls`, 64 without one) before it runs. A cancellation sets the call's
//! flag, which the plugin sees as `ctx.is_cancelled()`.
//!
//! The worker exits at once (`_exit`, without running the plugin's destructors) when the
//! channel reaches its end: the host has died or given up on it. Its channel and doorbell
//! are close-on-exec, so a process the plugin starts does not hold them open after it.
//!
//! An answer is sent only if it fits the channel's frame limit once encoded; one that does
//! not (or cannot be encoded) is answered with an error saying so, and the channel serves
//! on.

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, UNIX_EPOCH};

use super::channel::{
    encode, frame_len, frame_limit, write_encoded, write_frame, FrameReader, FromWorker,
    LoadRequest, ToWorker, ENVELOPE_BYTES,
};
use super::sandbox;
use super::spawn::{CHANNEL_FD, DOORBELL_FD};
use crate::files::digest::Digest;
use crate::runtime::generation::{Generation, SAVE_STATE};
use crate::runtime::loader::{Library, LoadError, LoadErrorKind};
use crate::runtime::stop::STOP;
use crate::types::call::{Budget, CallError, CallErrorKind, CallOutcome};
use crate::types::clock::Stopwatch;
use crate::types::live_log::LogSink;
use crate::types::settings::DEFAULT_MAX_MESSAGE_BYTES;

/// Calls one worker runs at once when the plugin sets no `max_concurrent_calls`.
const DEFAULT_THREADS: usize = 64;

/// The body of `host __worker`. Returns only on a usage error; otherwise the process ends in
/// it.
pub fn worker_main() -> ExitCode {
    // SAFETY: fstat only writes into `stat`; it fails harmlessly on a closed descriptor.
    let is_socket = unsafe {
        let mut stat: libc::stat = std::mem::zeroed();
        libc::fstat(CHANNEL_FD, &mut stat) == 0 && stat.st_mode & libc::S_IFMT == libc::S_IFSOCK
    };
    if !is_socket {
        eprintln!(
            "error: `host __worker` is started by the host for an isolated plugin, not by hand"
        );
        return ExitCode::from(2);
    }
    // Not inherited by what the plugin starts: a child holding them would keep the host
    // from seeing this process's end on its channel.
    for fd in [CHANNEL_FD, DOORBELL_FD] {
        // SAFETY: fcntl on a descriptor number only changes that descriptor's flags (or
        // fails harmlessly if it is not open).
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
            exit_now(1);
        }
    }
    // SAFETY: descriptor 3 is the channel the host set up for this process (checked to be a
    // socket above); nothing else in this process owns it.
    let channel = unsafe { UnixStream::from_raw_fd(CHANNEL_FD) };
    let reader = match channel.try_clone() {
        Ok(reader) => reader,
        Err(_) => exit_now(1),
    };
    let mut reader = FrameReader::new(reader, DEFAULT_MAX_MESSAGE_BYTES + ENVELOPE_BYTES);
    let request = match reader.next::<ToWorker>(None) {
        Ok(Some(ToWorker::Load(request))) => *request,
        _ => exit_now(1),
    };
    let limit = frame_limit(request.max_message_bytes, request.max_log_bytes_per_call);
    reader.set_limit(limit);
    crate::types::clock::adopt(request.tsc_per_us);
    // The sandbox, before the plugin's library is opened (its initialisers run in it), while
    // this is the process's only thread.
    let (sandbox, listener) = match &request.settings.sandbox {
        None => (None, None),
        Some(settings) => match sandbox::apply(settings, &request.copy) {
            Ok((applied, listener)) => (Some(applied), listener),
            Err(message) => {
                let refused = FromWorker::Refused {
                    kind: LoadErrorKind::Sandbox,
                    message,
                    detail: None,
                    logs: Vec::new(),
                };
                let _ = write_frame(&channel, &refused);
                exit_now(0);
            }
        },
    };
    // With `net = "loopback"`, the host takes the notify filter's listener and serves it
    // before the plugin is opened (its initialisers and `init` may connect), and the worker
    // closes its own copy: the plugin must never answer its own calls.
    if let Some(listener) = listener {
        let announced = FromWorker::Listener {
            fd: listener.as_raw_fd(),
        };
        if write_frame(&channel, &announced).is_err() {
            exit_now(1);
        }
        match reader.next::<ToWorker>(None) {
            Ok(Some(ToWorker::Supervised)) => drop(listener),
            _ => exit_now(1),
        }
    }
    let generation = match load(&request) {
        Ok((generation, logs)) => {
            let ready = FromWorker::Ready {
                metadata: generation.metadata().clone(),
                logs,
                sandbox,
            };
            if write_frame(&channel, &ready).is_err() {
                exit_now(1);
            }
            generation
        }
        Err((err, logs)) => {
            let refused = FromWorker::Refused {
                kind: err.kind(),
                message: err.message().to_owned(),
                detail: err.detail().map(str::to_owned),
                logs,
            };
            let _ = write_frame(&channel, &refused);
            exit_now(0);
        }
    };
    let max_threads = request
        .settings
        .max_concurrent_calls
        .unwrap_or(DEFAULT_THREADS)
        .max(1);
    let serving = Arc::new(Serving {
        generation: Mutex::new(Some(Arc::new(generation))),
        writer: Mutex::new(channel),
        reader: Mutex::new(reader),
        pool: Mutex::new(Pool {
            leader: false,
            idle: 0,
            threads: 1,
            max_threads,
        }),
        turn: Condvar::new(),
        cancels: Mutex::new(HashMap::new()),
        running: AtomicUsize::new(0),
        limit,
    });
    // SAFETY: descriptor 4 is the doorbell the host set up for this process; nothing else
    // in this process owns it.
    let bell = unsafe { UnixStream::from_raw_fd(DOORBELL_FD) };
    let ringing = serving.clone();
    if std::thread::Builder::new()
        .name("doorbell".into())
        .spawn(move || ringing.doorbell(bell))
        .is_err()
    {
        exit_now(1);
    }
    serving.serve();
    exit_now(0)
}

/// Opens the copy and runs `init`, as the host would in-process.
fn load(
    request: &LoadRequest,
) -> Result<(Generation, Vec<plugin_api::LogRecord>), (LoadError, Vec<plugin_api::LogRecord>)> {
    let library = Library::open_at(&request.source, &request.copy, Digest::none())
        .map_err(|err| (err, Vec::new()))?;
    let budget = Budget {
        max_message: request.max_message_bytes,
        max_log_bytes: request.max_log_bytes_per_call,
    };
    Generation::start_local(
        Arc::new(library),
        Path::new(&request.source),
        request.generation,
        (request.settings.clone(), budget),
        request.previous.as_ref(),
    )
}

struct Serving {
    /// Taken at shutdown.
    generation: Mutex<Option<Arc<Generation>>>,
    writer: Mutex<UnixStream>,
    reader: Mutex<FrameReader>,
    pool: Mutex<Pool>,
    /// Signalled when the reading turn is free.
    turn: Condvar,
    cancels: Mutex<HashMap<u64, Arc<AtomicBool>>>,
    /// Calls running now.
    running: AtomicUsize,
    /// The largest frame the host reads.
    limit: usize,
}

/// A call as the host sent it.
#[derive(Clone, Copy)]
struct CallFrame<'a> {
    id: u64,
    callback: &'a str,
    input: &'a str,
    deadline_unix_ms: u64,
    /// The host wants its log records as they are written.
    live: bool,
}

struct Pool {
    /// A thread is reading the channel.
    leader: bool,
    idle: usize,
    threads: usize,
    max_threads: usize,
}

impl Serving {
    /// One thread of the pool: take the reading turn, read a frame, act on it.
    fn serve(self: &Arc<Serving>) {
        let mut reading = false;
        loop {
            if !reading {
                let mut pool = lock(&self.pool);
                while pool.leader {
                    pool.idle += 1;
                    pool = self.turn.wait(pool).unwrap_or_else(PoisonError::into_inner);
                    pool.idle -= 1;
                }
                pool.leader = true;
                reading = true;
            }
            // With no call running, the next frame is likely a call coming right after an
            // answer: poll for it a moment before sleeping.
            let idle = self.running.load(Ordering::Relaxed) == 0;
            let mut reader = lock(&self.reader);
            let frame = if idle {
                reader.next_soon::<ToWorker>(None)
            } else {
                reader.next::<ToWorker>(None)
            };
            drop(reader);
            match frame {
                Ok(Some(ToWorker::Call {
                    id,
                    callback,
                    input,
                    deadline_unix_ms,
                    alone,
                    live,
                })) => {
                    let call = CallFrame {
                        id,
                        callback: &callback,
                        input: input.get(),
                        deadline_unix_ms,
                        live,
                    };
                    if alone {
                        // The doorbell brings a reader if anything comes meanwhile.
                        lock(&self.pool).leader = false;
                        reading = false;
                        self.run(&call);
                    } else if self.hand_on_reading() {
                        reading = false;
                        self.run(&call);
                    } else {
                        self.answer(id, Err(self.busy()));
                    }
                }
                Ok(Some(ToWorker::Cancel { id })) => {
                    if let Some(flag) = lock(&self.cancels).get(&id) {
                        flag.store(true, Ordering::Relaxed);
                    }
                }
                Ok(Some(ToWorker::Shutdown)) => self.shutdown(),
                Ok(Some(ToWorker::Load(_) | ToWorker::Supervised)) | Ok(None) => {}
                // The host is gone, or the channel is broken: nothing more can come.
                Err(err) => {
                    if err.kind() != std::io::ErrorKind::UnexpectedEof {
                        eprintln!("worker: the channel broke: {err}");
                    }
                    exit_now(0)
                }
            }
        }
    }

    /// The doorbell thread: each ring brings a reader to the channel if nobody reads it.
    fn doorbell(self: Arc<Serving>, bell: UnixStream) {
        let mut rings = [0u8; 64];
        loop {
            match (&bell).read(&mut rings) {
                Ok(0) => exit_now(0),
                Ok(_) => {}
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => exit_now(0),
            }
            let mut pool = lock(&self.pool);
            if pool.leader {
                continue;
            }
            if pool.idle > 0 {
                self.turn.notify_one();
            } else if pool.threads < pool.max_threads {
                let serving = self.clone();
                if std::thread::Builder::new()
                    .name("call".into())
                    .spawn(move || serving.serve())
                    .is_ok()
                {
                    pool.threads += 1;
                }
            }
            // Otherwise every thread runs a call; the first to finish reads next.
        }
    }

    /// Gives the reading turn to an idle thread, or a new one. Returns false (keeping the
    /// turn) when every thread the plugin may use is busy.
    fn hand_on_reading(self: &Arc<Serving>) -> bool {
        let mut pool = lock(&self.pool);
        if pool.idle == 0 {
            if pool.threads >= pool.max_threads {
                return false;
            }
            let serving = self.clone();
            let spawned = std::thread::Builder::new()
                .name("call".into())
                .spawn(move || serving.serve());
            if spawned.is_err() {
                return false;
            }
            pool.threads += 1;
        }
        pool.leader = false;
        self.turn.notify_one();
        true
    }

    fn busy(&self) -> CallError {
        let max = lock(&self.pool).max_threads;
        CallError::new(
            CallErrorKind::Busy,
            format!("the plugin's worker process already runs {max} calls, its limit (max_concurrent_calls)"),
        )
    }

    fn run(self: &Arc<Serving>, call: &CallFrame<'_>) {
        let CallFrame {
            id,
            callback,
            input,
            deadline_unix_ms,
            live,
        } = *call;
        let Some(generation) = lock(&self.generation).clone() else {
            return self.answer(
                id,
                Err(CallError::new(
                    CallErrorKind::ShuttingDown,
                    "the worker is shutting down",
                )),
            );
        };
        let cancelled = Arc::new(AtomicBool::new(false));
        lock(&self.cancels).insert(id, cancelled.clone());
        self.running.fetch_add(1, Ordering::Relaxed);
        let deadline =
            (deadline_unix_ms > 0).then(|| UNIX_EPOCH + Duration::from_millis(deadline_unix_ms));
        let watch = Stopwatch::start();
        let mut outcome = if callback == SAVE_STATE {
            generation.save_state_local(&cancelled, deadline)
        } else if callback == STOP {
            // The input is the host's `stop_timeout_ms`.
            let timeout_ms = input.trim().parse().unwrap_or(5_000);
            generation.stop_local(timeout_ms)
        } else {
            // Each record the plugin writes goes to the host at once, in a frame of its own;
            // the generation's budget stops them past `max_log_bytes_per_call`.
            let sink = live.then(|| {
                let serving = self.clone();
                LogSink::new(move |record| serving.forward(id, record))
            });
            generation.run_local(callback, input, &cancelled, deadline, sink.as_ref())
        };
        outcome.elapsed_us = watch.elapsed_us();
        self.running.fetch_sub(1, Ordering::Relaxed);
        lock(&self.cancels).remove(&id);
        drop(generation);
        self.answer(id, Ok(outcome));
    }

    /// Sends the host a record call `id` logged. A record that cannot be encoded or sent is
    /// dropped: the call's answer reports a broken channel.
    fn forward(&self, id: u64, record: &plugin_api::LogRecord) {
        let frame = FromWorker::Log {
            id,
            record: record.clone(),
        };
        if let Ok(frame) = encode(&frame) {
            if frame_len(&frame) <= self.limit {
                let _ = write_encoded(&lock(&self.writer), &frame);
            }
        }
    }

    fn answer(&self, id: u64, result: Result<CallOutcome, CallError>) {
        let frame = done_frame(id, result, self.limit);
        if write_encoded(&lock(&self.writer), &frame).is_err() {
            exit_now(0);
        }
    }

    /// Drops the plugin (its `Drop` runs, its library closes) once no call holds it, then
    /// ends the process.
    fn shutdown(&self) -> ! {
        if let Some(generation) = lock(&self.generation).take() {
            let deadline = std::time::Instant::now() + Duration::from_secs(1);
            while Arc::strong_count(&generation) > 1 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            drop(generation);
        }
        exit_now(0)
    }
}

/// The encoded frame answering call `id` with `result`, at most `limit` bytes: an answer
/// that would take more, or that cannot be encoded, is replaced by an error saying so.
fn done_frame(id: u64, result: Result<CallOutcome, CallError>, limit: usize) -> Vec<u8> {
    let names = result.as_ref().ok().map(|o| {
        (
            o.plugin.clone(),
            o.callback.clone(),
            o.generation,
            o.elapsed_us,
        )
    });
    let problem = match encode(&FromWorker::Done { id, result }) {
        Ok(frame) if frame_len(&frame) <= limit => return frame,
        Ok(frame) => format!(
            "is {} bytes once encoded for its worker channel, over its limit of {limit} \
             (made of max_message_bytes and max_log_bytes_per_call): it was dropped",
            frame_len(&frame)
        ),
        Err(err) => format!("cannot be sent from its worker process: {err}"),
    };
    let result = match names {
        Some((plugin, callback, generation, elapsed_us)) => Ok(CallOutcome {
            error: Some(plugin_api::PluginError::failed(format!(
                "the answer of plugin {plugin} to `{callback}` {problem}"
            ))),
            plugin,
            callback,
            generation,
            result: None,
            follow_ups: Vec::new(),
            logs: Vec::new(),
            elapsed_us,
        }),
        None => Err(CallError::new(
            CallErrorKind::Internal,
            format!("the worker's answer {problem}"),
        )),
    };
    // Names and one line: it encodes, or nothing can be answered (the host then hears of
    // this worker's end).
    encode(&FromWorker::Done { id, result }).unwrap_or_else(|_| exit_now(1))
}

/// Ends the process at once, without running exit handlers (the plugin's among them).
fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions; it never returns.
    unsafe { libc::_exit(code) }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::call::Name;

    fn outcome(log: &str) -> CallOutcome {
        CallOutcome {
            plugin: Name::new("tough"),
            callback: Name::new("control"),
            generation: 2,
            result: Some(crate::types::call::Json::from_text("1")),
            error: None,
            follow_ups: Vec::new(),
            logs: vec![plugin_api::LogRecord {
                level: plugin_api::Level::Info,
                message: log.to_owned(),
                unix_ms: 1,
            }],
            elapsed_us: 5,
        }
    }

    fn decode(frame: &[u8]) -> CallOutcome {
        match serde_json::from_slice(&frame[4..]).unwrap() {
            FromWorker::Done { id: 7, result } => result.unwrap(),
            _ => panic!("not the answer to call 7"),
        }
    }

    #[test]
    fn an_answer_that_fits_is_sent_as_it_is() {
        let frame = done_frame(7, Ok(outcome("\u{1}\u{1}")), 1000);
        let sent = decode(&frame);
        assert_eq!(sent.logs[0].message, "\u{1}\u{1}");
        assert!(sent.error.is_none());
    }

    #[test]
    fn an_answer_over_the_limit_once_encoded_becomes_an_error_saying_so() {
        // 200 bytes of text, 1,200 escaped.
        let frame = done_frame(7, Ok(outcome(&"\u{1}".repeat(200))), 1000);
        assert!(frame_len(&frame) <= 1000);
        let sent = decode(&frame);
        assert!(sent.result.is_none() && sent.logs.is_empty());
        let message = sent.error.unwrap().message().to_owned();
        assert!(
            message.starts_with("the answer of plugin tough to `control` is 1"),
            "{message}"
        );
        assert!(message.contains("over its limit of 1000"), "{message}");
    }
}

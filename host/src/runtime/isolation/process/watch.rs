//! The watch thread of a worker, and why the worker ended.
//!
//! A *watch* thread per worker waits for the process to exit (a pidfd), logs what it writes
//! on stdout and stderr (with plugin, generation and worker pid), and kills it when a call
//! whose caller already got its `timeout` answer is still running `kill_after_ms` later. When
//! the process is gone it kills what is left of its process group, reaps it (no zombies),
//! closes the host's end of its channel, reads what is left of its output without waiting
//! for the pipe's end (a process it left behind may hold it), says why it ended
//! ([`classify`]), and runs the worker's `on_exit`; the calls still in flight on it then
//! fail with a `crashed` error naming the reason and their callback. Every signal to a
//! worker goes through its pidfd (see `child`).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::super::child::{Pidfd, Unreaped};
use super::super::output::Output;
use super::super::spawn;
use super::{lock, Exit, Label, OnExit, Worker};

impl Worker {
    pub(super) fn join_watch(&self) {
        if let Some(thread) = lock(&self.watch).take() {
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }

    pub(super) fn wake_watch(&self) {
        let one: u64 = 1;
        // SAFETY: the eventfd is open for as long as `self`; writing 8 bytes is what an
        // eventfd takes.
        unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// The watch thread: until the process exits, logs its output and kills it when a call
    /// overruns `kill_after_ms`; then reaps it, records why it ended, and runs `on_exit`.
    pub(super) fn watch(
        self: Arc<Worker>,
        process: Unreaped,
        pidfd: Arc<Pidfd>,
        output: OwnedFd,
        on_exit: OnExit,
    ) {
        let _span = tracing::info_span!("worker", plugin = %self.label.plugin,
            generation = self.label.generation, worker_pid = self.pid)
        .entered();
        let mut output = Output::new(output);
        loop {
            let next_kill = lock(&self.state).overdue.iter().map(|o| o.kill_at).min();
            let timeout = next_kill.map_or(-1, |at| {
                at.saturating_duration_since(Instant::now())
                    .as_millis()
                    .min(i32::MAX as u128) as i32
                    + 1
            });
            let mut fds = [
                poll_fd(pidfd.as_raw_fd()),
                poll_fd(output.fd.as_raw_fd()),
                poll_fd(self.wake.as_raw_fd()),
            ];
            if !output.open {
                fds[1].fd = -1;
            }
            // SAFETY: `fds` is a valid array of pollfd for the length given; the descriptors
            // are owned by this thread or by `self` for the whole call.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if ready < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                tracing::warn!("poll failed: {}", io::Error::last_os_error());
                std::thread::sleep(Duration::from_millis(10));
            }
            if fds[1].revents != 0 {
                output.read(&self.label);
            }
            if fds[2].revents != 0 {
                let mut count = [0u8; 8];
                // SAFETY: reading 8 bytes from the eventfd into a buffer of 8 bytes.
                unsafe { libc::read(self.wake.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
            }
            self.kill_overdue();
            if fds[0].revents != 0 {
                break;
            }
        }
        // Its group goes with it, then it is reaped: never waiting for its output's end, which
        // a process it started may hold.
        let status = process.reap();
        // SAFETY: shutdown on the channel's descriptor, which `self.writer` keeps open: a
        // reader or writer of it gets its end now, even if a process the worker started
        // still holds the other end.
        unsafe { libc::shutdown(self.channel_fd, libc::SHUT_RDWR) };
        output.drain(&self.label);
        let exit = {
            let mut state = lock(&self.state);
            state.closed = true;
            classify(
                status,
                state.killed_because.as_deref(),
                self.stopping.load(Ordering::SeqCst),
                &output.last,
                &self.label,
            )
        };
        // The supervisor counts the crash before any caller hears of it, so that the
        // caller's next call sees the consequence (a quarantine, a back-off).
        on_exit(&self, &exit);
        lock(&self.state).exit = Some(exit);
        self.changed.notify_all();
    }

    fn kill_overdue(&self) {
        let now = Instant::now();
        let mut state = lock(&self.state);
        if state.killed_because.is_some() {
            return;
        }
        let Some(overdue) = state.overdue.iter().find(|o| o.kill_at <= now) else {
            return;
        };
        let reason = format!(
            "its worker was killed because `{}` did not return within timeout_ms ({} ms) + \
             kill_after_ms ({} ms)",
            overdue.callback, self.label.timeout_ms, self.label.kill_after_ms
        );
        tracing::warn!("{reason}");
        state.killed_because = Some(reason);
        // New calls go to a fresh worker at once.
        state.closed = true;
        drop(state);
        self.signal_kill();
    }
}

/// What a sandboxed worker's SIGSYS handler writes before it dies (see `sandbox::sigsys`).
const DENIED_LINE: &str = "seccomp: denied system call ";

/// Why the process ended, in one phrase, from its status and its last words.
pub(super) fn classify(
    status: io::Result<std::process::ExitStatus>,
    killed_because: Option<&str>,
    stopping: bool,
    last: &VecDeque<String>,
    label: &Label,
) -> Exit {
    let said = |needle: &str| last.iter().any(|l| l.contains(needle));
    let status = match status {
        Ok(status) => status,
        Err(err) => {
            return Exit {
                reason: format!("its worker process could not be waited for ({err})"),
                clean: false,
            }
        }
    };
    if let Some(because) = killed_because {
        return Exit {
            reason: because.to_owned(),
            clean: false,
        };
    }
    let reason = match (status.code(), status.signal()) {
        (Some(0), _) if stopping => {
            return Exit {
                reason: "exited as asked".to_owned(),
                clean: true,
            }
        }
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => {
            let name = spawn::signal_name(signal);
            if said("memory allocation of") {
                match label.max_memory_mb {
                    Some(mb) => {
                        format!("out of memory (max_memory_mb = {mb}), killed by signal {name}")
                    }
                    None => format!("out of memory, killed by signal {name}"),
                }
            } else if let Some(call) = last
                .iter()
                .rev()
                .find_map(|l| l.split_once(DENIED_LINE).map(|(_, call)| call.trim()))
                .filter(|_| signal == libc::SIGSYS)
            {
                // The worker's SIGSYS handler named the call its seccomp filter trapped.
                format!("its sandbox denied system call {call} (seccomp), killed by signal {name}")
            } else if said("has overflowed its stack") {
                format!("stack overflow, killed by signal {name}")
            } else if signal == libc::SIGKILL && stopping {
                return Exit {
                    reason: "killed after it did not stop when asked".to_owned(),
                    clean: true,
                };
            } else {
                format!("killed by signal {name}")
            }
        }
        (None, None) => "ended for an unknown reason".to_owned(),
    };
    Exit {
        reason,
        clean: false,
    }
}

fn poll_fd(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

pub(super) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd returns a new descriptor or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new open descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

//! Process isolation: running a plugin generation in a worker process of its own, with the
//! same file, the same API and the same hot swap as in-process.
//!
//! A plugin with `isolation = "process"` in host.toml (or every plugin, with
//! [`IsolationOptions::isolate_all`]) is never opened by the host itself. The host stages its
//! private copy as usual (permissions, ELF structure, hash), reads its name from the ELF note
//! to find its settings, and starts a *worker*: the host binary run as `host __worker`, which
//! opens the copy with the same loader checks, runs `init`, and serves calls over a private
//! channel. A worker that segfaults, aborts, overflows its stack, calls `exit`, runs out of
//! memory under its limit, or ignores its timeout fails only the calls in flight on it (error
//! kind `crashed`); the next call gets a fresh worker, and a plugin that keeps crashing is
//! quarantined.
//!
//! The pieces, one file each:
//!
//! * `channel`: the framed messages between host and worker;
//! * `spawn`: starting a worker process cleanly (descriptors, environment, limits, death
//!   with the host);
//! * `child`: the process until it is reaped: signalled through its pidfd, its process
//!   group killed with it, always reaped;
//! * `output`: its stdout and stderr, logged, and drained without waiting for their end;
//! * `process`: one worker process seen from the host: calls multiplexed on its channel;
//!   `process/watch`: the thread that watches it, why it ended;
//! * `supervisor`: keeping an isolated generation served: restarts, back-off, quarantine;
//! * `events`: where a supervisor reports crashes and quarantines (the registry counts them);
//! * `sandbox`: the sandbox applied in a worker before it opens the plugin
//!   (`[plugins.NAME.sandbox]`: Landlock, seccomp, `no_new_privs`);
//! * `worker`: the worker process itself ([`worker_main`]).
//!
//! A binary that embeds the host and isolates plugins must run [`worker_main`] when it is
//! started with [`WORKER_ARG`] as its first argument (the `host` binary does), or point
//! [`IsolationOptions::worker_program`] at a binary that does.

mod channel;
mod child;
mod events;
mod output;
mod process;
mod sandbox;
mod spawn;
mod supervisor;
#[cfg(test)]
mod testing;
mod worker;

use std::path::PathBuf;

pub(crate) use events::{WorkerEvent, WorkerEvents};
pub use spawn::{PASSED_ENV, WORKER_ARG};
pub use supervisor::WorkerStatus;
pub(crate) use supervisor::{Supervised, WorkerSpec};
pub use worker::worker_main;

/// How the host runs isolated plugins.
#[derive(Debug, Clone, Default)]
pub struct IsolationOptions {
    /// Run every plugin in a worker process, whatever its settings say.
    pub isolate_all: bool,
    /// The worker program: a binary that calls [`worker_main`] when its first argument is
    /// [`WORKER_ARG`]. `None`: this process's own binary (`/proc/self/exe`).
    pub worker_program: Option<PathBuf>,
}

impl IsolationOptions {
    /// The worker program to start.
    pub(crate) fn program(&self) -> PathBuf {
        self.worker_program
            .clone()
            .unwrap_or_else(|| PathBuf::from("/proc/self/exe"))
    }
}

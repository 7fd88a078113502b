//! Starting a worker process cleanly: which program, which descriptors, which environment,
//! which limits, and how it dies with the host.
//!
//! * The program is the host binary itself (`/proc/self/exe`, so a binary replaced on disk
//!   since the host started never mismatches), run with the hidden `__worker` argument.
//! * Descriptors: the channel is the worker's fd 3 and its doorbell fd 4 (see `worker`);
//!   stdout and stderr are one pipe the supervisor reads (and logs); stdin is `/dev/null`.
//!   Every other descriptor is marked close-on-exec before `exec`, whoever opened it, so
//!   nothing else is inherited.
//! * Environment: cleared, then only [`PASSED_ENV`] is passed on, plus `MALLOC_ARENA_MAX=2`
//!   under a memory limit (glibc reserves 64 MiB of address space per malloc arena, which an
//!   address-space limit counts).
//! * Limits: `max_memory_mb` becomes `RLIMIT_AS`.
//! * Dying with the host: the worker gets `PR_SET_PDEATHSIG` (SIGKILL), and exits on its own
//!   when the channel reaches end of file. The death signal is tied to the *thread* that
//!   forked, so every worker is forked by one spawner thread that lives as long as the
//!   process. Workers run in a process group of their own, so a Ctrl-C meant for the host
//!   does not kill them before the host has finished its calls, and so that whatever a
//!   worker leaves behind dies with it (see `child`).

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::child::Unreaped;
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock, PoisonError};

/// The argument that makes the host binary a worker.
pub const WORKER_ARG: &str = "__worker";

/// The descriptor the channel is in the worker.
pub(crate) const CHANNEL_FD: RawFd = 3;
/// The descriptor the doorbell is in the worker.
pub(crate) const DOORBELL_FD: RawFd = 4;

/// Environment variables a worker inherits from the host; all others are dropped.
pub const PASSED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "PLUGIN_HOST_BACKTRACE",
];

/// What to start.
#[derive(Debug, Clone)]
pub(crate) struct SpawnSpec {
    /// The worker program (the host binary).
    pub(crate) program: PathBuf,
    /// The address space limit, in MiB.
    pub(crate) max_memory_mb: Option<u64>,
}

/// A started worker: the process, the host's end of its channel, and the read end of its
/// output pipe. Dropped, it kills and reaps the process.
#[derive(Debug)]
pub(crate) struct Spawned {
    pub(crate) process: Unreaped,
    pub(crate) channel: UnixStream,
    /// Rung (one byte) when a frame comes while the worker may be busy running a call.
    pub(crate) doorbell: UnixStream,
    pub(crate) output: OwnedFd,
}

type Request = (Command, mpsc::Sender<io::Result<Child>>);

/// Starts a worker as `spec` says.
pub(crate) fn spawn(spec: &SpawnSpec) -> io::Result<Spawned> {
    let (channel, theirs) = UnixStream::pair()?;
    let (doorbell, their_doorbell) = UnixStream::pair()?;
    // Far above 3 and 4, so that moving them there in the child overwrites neither.
    let theirs = high_copy(&theirs)?;
    let their_doorbell = high_copy(&their_doorbell)?;
    let (output, output_write) = pipe()?;
    let mut command = Command::new(&spec.program);
    command
        .arg(WORKER_ARG)
        .env_clear()
        .envs(passed_env())
        .stdin(Stdio::null())
        .stdout(Stdio::from(output_write.try_clone()?))
        .stderr(Stdio::from(output_write));
    if spec.max_memory_mb.is_some() {
        command.env("MALLOC_ARENA_MAX", "2");
    }
    let (their_fd, their_bell) = (theirs.as_raw_fd(), their_doorbell.as_raw_fd());
    let limit = spec
        .max_memory_mb
        .map(|mb| mb.saturating_mul(1024 * 1024) as libc::rlim_t);
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs in the child between fork and exec, so it may only make
    // async-signal-safe calls: setpgid, prctl, getppid, setrlimit, dup2, fcntl,
    // close_range and _exit are. It allocates nothing and touches no lock.
    unsafe {
        command.pre_exec(move || {
            // Its own group, which the host kills when the worker ends: a worker in the
            // host's group would take the host down with it.
            if libc::setpgid(0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The host may have died before the death signal was armed.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            if let Some(bytes) = limit {
                let rlimit = libc::rlimit {
                    rlim_cur: bytes,
                    rlim_max: bytes,
                };
                if libc::setrlimit(libc::RLIMIT_AS, &rlimit) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            // Both are far above 3 and 4 (see `high_copy`); dup2 clears close-on-exec.
            if libc::dup2(their_fd, CHANNEL_FD) < 0 || libc::dup2(their_bell, DOORBELL_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            // Everything above them closes at exec, whoever opened it without O_CLOEXEC
            // (std's own error pipe among them, which must stay open until exec).
            libc::close_range(
                DOORBELL_FD as libc::c_uint + 1,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC as libc::c_int,
            );
            Ok(())
        });
    }
    let process = Unreaped::new(spawn_on_spawner(command)?);
    drop((theirs, their_doorbell));
    Ok(Spawned {
        process,
        channel,
        doorbell,
        output,
    })
}

/// A close-on-exec copy of `fd` numbered 100 or more.
fn high_copy(fd: &impl AsRawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on an open descriptor returns a new one or -1.
    let copy = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 100) };
    if copy < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new open descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

/// The variables of [`PASSED_ENV`] that are set in the host.
fn passed_env() -> Vec<(&'static str, OsString)> {
    PASSED_ENV
        .iter()
        .filter_map(|name| Some((*name, std::env::var_os(name)?)))
        .collect()
}

/// A pipe, both ends close-on-exec: (read, write).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both are open descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Runs `command.spawn()` on the spawner thread (see the module docs for why).
fn spawn_on_spawner(command: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let sender = SPAWNER.get_or_init(|| {
        let (sender, requests) = mpsc::channel::<Request>();
        let started = std::thread::Builder::new()
            .name("worker-spawner".into())
            .spawn(move || {
                for (mut command, reply) in requests {
                    let _ = reply.send(command.spawn());
                }
            });
        if let Err(err) = started {
            tracing::error!("cannot start the worker spawner thread: {err}");
        }
        Mutex::new(sender)
    });
    let (reply, answer) = mpsc::channel();
    sender
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .send((command, reply))
        .map_err(|_| io::Error::other("the worker spawner thread is gone"))?;
    answer
        .recv()
        .map_err(|_| io::Error::other("the worker spawner thread is gone"))?
}

/// The name of signal `signal` (`SIGSEGV`), or its number.
pub(crate) fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return format!("signal {signal}"),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_have_their_names() {
        assert_eq!(signal_name(libc::SIGSEGV), "SIGSEGV");
        assert_eq!(signal_name(libc::SIGABRT), "SIGABRT");
        assert_eq!(signal_name(64), "signal 64");
    }

    #[test]
    fn a_worker_dropped_before_it_started_is_killed_and_reaped() {
        use crate::runtime::isolation::testing::{script, spawn_script, unreaped_child};
        let dir = tempfile::tempdir().unwrap();
        let program = script(dir.path(), "worker", "exec /bin/sleep 30");
        let spawned = spawn_script(&program);
        let pid = spawned.process.pid();
        // What every error after the spawn (a channel clone, an eventfd, a pidfd, the watch
        // thread) does with it.
        drop(spawned);
        assert!(
            !unreaped_child(pid),
            "worker {pid} was left unreaped after a failed start"
        );
    }

    #[test]
    fn only_the_listed_variables_are_passed() {
        let passed = passed_env();
        assert!(passed.iter().all(|(name, _)| PASSED_ENV.contains(name)));
    }
}

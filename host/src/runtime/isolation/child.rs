//! A worker process as the host holds it, from its start until it is reaped.
//!
//! * Signals go through its pidfd, never through its pid: once the process is reaped its
//!   pid may belong to anyone, and a pidfd then refers to no process at all
//!   (`pidfd_send_signal` fails with `ESRCH`), so a late kill is a no-op.
//! * Its process group dies with it: a worker runs in a group of its own (see `spawn`), and
//!   whatever it started and left behind (a `sleep` holding its output pipe, say) is killed
//!   before the worker is reaped, while the worker's pid (the group's id) cannot have been
//!   reused.
//! * It is always reaped: an [`Unreaped`] dropped before [`Unreaped::reap`] (a start that
//!   failed half-way) kills and reaps it, so no zombie is left.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::{Child, ExitStatus};

/// A descriptor for one process: readable when it exits, and the way to signal it.
#[derive(Debug)]
pub(crate) struct Pidfd {
    fd: OwnedFd,
}

impl Pidfd {
    /// A pidfd for process `pid`, which must be an unreaped child of ours (so that `pid`
    /// is still that process).
    pub(crate) fn open(pid: u32) -> io::Result<Pidfd> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the syscall returned a new open descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        Ok(Pidfd { fd })
    }

    /// Sends SIGKILL to the process. `Ok(false)`: it has been reaped already, and nothing
    /// was signalled (whoever has its pid now).
    pub(crate) fn kill(&self) -> io::Result<bool> {
        // SAFETY: pidfd_send_signal takes a descriptor we own, a signal number, a null
        // siginfo (allowed: the kernel fills one in) and no flags.
        let sent = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if sent == 0 {
            return Ok(true);
        }
        match io::Error::last_os_error() {
            err if err.raw_os_error() == Some(libc::ESRCH) => Ok(false),
            err => Err(err),
        }
    }
}

impl AsRawFd for Pidfd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A started worker process that has not been reaped. Dropped without [`Unreaped::reap`],
/// it is killed and reaped.
#[derive(Debug)]
pub(crate) struct Unreaped {
    child: Option<Child>,
}

impl Unreaped {
    pub(crate) fn new(child: Child) -> Unreaped {
        Unreaped { child: Some(child) }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Kills whatever is left in the worker's process group (the worker too, if it still
    /// runs), then waits for the worker's exit status.
    pub(crate) fn reap(mut self) -> io::Result<ExitStatus> {
        match self.child.take() {
            Some(mut child) => {
                kill_group(&child);
                child.wait()
            }
            None => Err(io::Error::other("the worker process was reaped already")),
        }
    }
}

impl Drop for Unreaped {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Only its own process until it is reaped, below.
            let _ = child.kill();
            kill_group(&child);
            if let Err(err) = child.wait() {
                tracing::warn!(
                    worker_pid = child.id(),
                    "cannot reap a worker process: {err}"
                );
            }
        }
    }
}

/// Sends SIGKILL to every process in `child`'s process group, if it leads one of its own.
fn kill_group(child: &Child) {
    let pid = child.id() as libc::pid_t;
    // SAFETY: getpgid and kill take plain integers. `child` is not reaped (we hold it, and
    // only its wait reaps it), so `pid` is still its, and so is the group `pid` it leads:
    // a group's id is not reused while its leader exists, zombie or not. The check keeps
    // a worker that failed to get a group of its own from taking ours down with it.
    unsafe {
        if libc::getpgid(pid) == pid {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::isolation::testing::unreaped_child;
    use std::process::Command;

    #[test]
    fn a_dropped_unreaped_process_is_killed_and_reaped() {
        let child = Command::new("/bin/sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        drop(Unreaped::new(child));
        assert!(!unreaped_child(pid), "process {pid} was left unreaped");
    }

    #[test]
    fn a_pidfd_signals_nothing_once_its_process_is_reaped() {
        let mut child = Command::new("/bin/sleep").arg("30").spawn().unwrap();
        let pidfd = Pidfd::open(child.id()).unwrap();
        assert!(pidfd.kill().unwrap(), "a live process is signalled");
        child.wait().unwrap();
        assert!(!pidfd.kill().unwrap(), "a reaped process is not");
    }
}

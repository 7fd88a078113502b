//! Whether some process still has a file open for writing, asked without risking a signal.
//!
//! Linux refuses a read lease (`F_SETLEASE`, `F_RDLCK`) with `EAGAIN` while any process has
//! the file open for writing, which is the one reliable "the writer is done" test. But while
//! a lease is held, a process that opens the file for writing makes the kernel notify the
//! lease holder with a signal, by default SIGIO, whose default action ends the process: a
//! loop rewriting one file in the plugins directory killed the host within 0.3 s.
//!
//! So before any lease is taken, the notification is redirected (`F_SETSIG`) to a real-time
//! signal, [`lease_signal`], for which an empty handler is installed once per process. The
//! lease is released at once, so a writer is held up for microseconds at most (or, when the
//! host stages a copy under a lease, for as long as the copy takes). If another
//! part of the process already handles that signal, leases are not used at all and the
//! answer is always "no writer" (the watcher's quiet times still apply).

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::OnceLock;

/// `fcntl` command choosing the signal a lease break sends (Linux; not in the libc crate).
const F_SETSIG: libc::c_int = 10;

/// The real-time signal lease breaks are delivered as: `SIGRTMAX - 2`.
pub fn lease_signal() -> libc::c_int {
    libc::SIGRTMAX() - 2
}

extern "C" fn ignore_lease_break(_signal: libc::c_int) {}

/// Installs the empty handler for [`lease_signal`] once; whether leases may be used.
fn leases_usable() -> bool {
    static USABLE: OnceLock<bool> = OnceLock::new();
    *USABLE.get_or_init(|| {
        let signal = lease_signal();
        // SAFETY: `current` is a valid, zeroed sigaction for sigaction(2) to fill in; passing
        // a null new action only reads the current disposition.
        let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::sigaction(signal, std::ptr::null(), &mut current) } != 0 {
            return false;
        }
        if current.sa_sigaction != libc::SIG_DFL {
            tracing::warn!(
                "signal {signal} is already handled by this process: not using file leases \
                 to tell when a plugin file's writer is done"
            );
            return false;
        }
        // SAFETY: `action` is fully initialised: a handler that does nothing (and so is
        // async-signal-safe), an empty mask, and SA_RESTART so that interrupted system calls
        // resume instead of failing with EINTR.
        let installed = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = ignore_lease_break as extern "C" fn(libc::c_int) as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        installed == 0
    })
}

/// A read lease on an open file, released when dropped. While it is held no process can
/// open the file for writing: such an open waits (the kernel signals us with
/// [`lease_signal`], which is handled and ignored) until the lease is released. So what is
/// read from the file while the lease is held is one consistent version of it.
#[must_use = "the lease is released when dropped"]
#[derive(Debug)]
pub(crate) struct ReadLease<'a> {
    file: &'a File,
}

impl Drop for ReadLease<'_> {
    fn drop(&mut self) {
        // SAFETY: the descriptor is open and owned by `self.file`, which outlives the lease;
        // F_UNLCK only releases the lease this descriptor holds.
        unsafe { libc::fcntl(self.file.as_raw_fd(), libc::F_SETLEASE, libc::F_UNLCK) };
    }
}

/// What asking for a read lease on a file found.
#[derive(Debug)]
pub(crate) enum Lease<'a> {
    /// The lease is held: no writer has the file open, and none can open it until it is
    /// dropped.
    Held(ReadLease<'a>),
    /// Some process has the file open for writing.
    BeingWritten,
    /// Leases cannot be used here (not supported by the file system, not our file, or the
    /// signal is taken by someone else): nothing is known.
    Unavailable,
}

/// Asks for a read lease on `file`, which must be open read-only.
pub(crate) fn read_lease(file: &File) -> Lease<'_> {
    if !leases_usable() {
        return Lease::Unavailable;
    }
    let fd = file.as_raw_fd();
    // SAFETY: `fd` is open and owned by `file` for both calls. F_SETSIG only chooses the
    // signal a lease break on this descriptor sends (one with a handler, see
    // `leases_usable`); a lease only changes how the kernel treats later opens of the file,
    // and `ReadLease` releases it.
    unsafe {
        if libc::fcntl(fd, F_SETSIG, lease_signal()) != 0 {
            return Lease::Unavailable;
        }
        if libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) == 0 {
            return Lease::Held(ReadLease { file });
        }
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EAGAIN) => Lease::BeingWritten,
        _ => Lease::Unavailable,
    }
}

/// Whether some process has `path` open for writing. Where leases cannot be used (not
/// supported by the file system, or the signal is taken), the answer is no.
pub fn being_written(path: &Path) -> bool {
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    else {
        return false;
    };
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return false;
    }
    let written = matches!(read_lease(&file), Lease::BeingWritten);
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[test]
    fn a_file_open_for_writing_is_seen_as_being_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.so");
        let writer = std::fs::File::create(&path).unwrap();
        assert!(being_written(&path));
        drop(writer);
        assert!(!being_written(&path));
        assert!(!being_written(&dir.path().join("missing.so")));
    }

    #[test]
    fn a_writer_waits_for_the_lease_so_what_is_read_under_it_is_one_version() {
        // The soak test's defect: a file rewritten in place while the host copied it gave a
        // copy that mixed two versions, passed the ELF checks, and crashed dlopen.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.so");
        std::fs::write(&path, b"old version").unwrap();
        let file = File::open(&path).unwrap();
        let lease = match read_lease(&file) {
            Lease::Held(lease) => lease,
            other => panic!("no lease on a file nobody writes: {other:?}"),
        };
        let writer = {
            let path = path.clone();
            std::thread::spawn(move || std::fs::write(&path, b"new version, longer").unwrap())
        };
        // The writer's open breaks the lease: the kernel marks it as pending release.
        let start = std::time::Instant::now();
        // SAFETY: F_GETLEASE only reads the lease state of an open descriptor.
        while unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLEASE) } == libc::F_RDLCK {
            assert!(
                start.elapsed().as_secs() < 10,
                "the writer never opened the file"
            );
            std::thread::yield_now();
        }
        assert_eq!(std::fs::read(&path).unwrap(), b"old version");
        assert!(
            !writer.is_finished(),
            "the writer did not wait for the lease"
        );
        drop(lease);
        writer.join().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new version, longer");
    }

    #[test]
    fn writers_opening_the_file_while_it_is_checked_do_not_kill_the_process() {
        // Defect 1 of issue 8: a lease break sent SIGIO, which ends the process. If it still
        // did, this test process would die here instead of failing.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.so");
        std::fs::write(&path, b"x").unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (path, stop) = (path.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut opened = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let mut file = std::fs::File::create(&path).unwrap();
                    file.write_all(b"plugin").unwrap();
                    opened += 1;
                }
                opened
            })
        };
        let start = std::time::Instant::now();
        let mut checks = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(500) {
            being_written(&path);
            checks += 1;
        }
        stop.store(true, Ordering::Relaxed);
        let opened = writer.join().unwrap();
        assert!(
            checks > 100 && opened > 100,
            "{checks} checks, {opened} opens"
        );
    }
}

//! Owner locks: a file that says which process owns a directory, held with `flock(2)` for
//! as long as that process runs.
//!
//! The kernel releases a `flock` lock when the last descriptor of its open file description
//! closes, which a dead process cannot prevent: SIGKILL, a crash or the OOM killer release
//! it as surely as a clean exit. So "I can take the lock" means "its owner is gone", never a
//! guess from a pid that may have been reused. The pid written into the file is only there
//! to be named in messages.
//!
//! The descriptor is opened close-on-exec, so a worker process the host starts never
//! inherits (and never keeps alive) the host's lock.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// An owner lock this process holds; released when dropped (or when the process ends).
#[derive(Debug)]
pub(crate) struct OwnerLock {
    _file: File,
}

/// Why an owner lock could not be taken.
#[derive(Debug)]
pub(crate) enum LockError {
    /// Another process holds it; the pid it wrote, if it did.
    Held(Option<u32>),
    /// The file cannot be opened, is not ours, or the lock call failed.
    Io(io::Error),
}

impl OwnerLock {
    /// Takes the lock file at `path` (created with mode 0600 if missing), without waiting,
    /// and writes this process's pid into it. Refused if another process holds it, or if
    /// the file is a symbolic link, not a regular file, or owned by another user.
    pub(crate) fn acquire(path: &Path) -> Result<OwnerLock, LockError> {
        let file = open(path, true).map_err(LockError::Io)?;
        match try_lock(&file) {
            Ok(true) => {}
            Ok(false) => return Err(LockError::Held(read_pid(&file))),
            Err(err) => return Err(LockError::Io(err)),
        }
        write_pid(&file).map_err(LockError::Io)?;
        Ok(OwnerLock { _file: file })
    }

    /// Creates the lock file at `path` (which must not exist) and takes it, waiting for a
    /// moment if a sweeper holds it to look at it; then writes this process's pid.
    pub(crate) fn create(path: &Path) -> io::Result<OwnerLock> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        lock(&file, libc::LOCK_EX)?;
        write_pid(&file)?;
        Ok(OwnerLock { _file: file })
    }
}

/// If the owner of the lock file at `path` is gone (the file is ours, it names a pid, and
/// nobody holds its lock), takes the lock and returns it: the caller may then clean up
/// what that owner left. `None` when the owner still runs, when the file is missing, empty
/// (its owner is starting) or not ours.
pub(crate) fn take_if_owner_gone(path: &Path) -> Option<File> {
    let file = open(path, false).ok()?;
    if !try_lock(&file).ok()? {
        return None;
    }
    // An owner writes its pid only once it holds the lock: an empty file is one whose
    // owner is between creating it and locking it.
    read_pid(&file)?;
    Some(file)
}

/// Opens `path` (creating it, mode 0600, with `create`) without following a symbolic link,
/// and checks that it is a regular file of this user.
fn open(path: &Path, create: bool) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(create)
        .create(create)
        .mode(0o600)
        // Non-blocking: a read-only open of a FIFO planted there would wait for a writer
        // for good (the start-up sweep of copy directories). Locks, reads and writes of a
        // regular file do not heed the flag.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|err| io::Error::new(err.kind(), format!("{}: {err}", path.display())))?;
    let meta = file.metadata()?;
    let me = crate::files::private_dir::euid();
    if !meta.is_file() || meta.uid() != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "refusing {}: not a regular file of this host's user (uid {me})",
                path.display()
            ),
        ));
    }
    Ok(file)
}

/// Takes an exclusive lock without waiting: `false` if another open file holds it.
fn try_lock(file: &File) -> io::Result<bool> {
    match lock(file, libc::LOCK_EX | libc::LOCK_NB) {
        Ok(()) => Ok(true),
        Err(err) if err.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(false),
        Err(err) => Err(err),
    }
}

fn lock(file: &File, operation: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: flock only reads the descriptor number, which `file` owns and keeps open
        // for the duration of the call.
        if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

fn write_pid(mut file: &File) -> io::Result<()> {
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    writeln!(file, "{}", std::process::id())?;
    Ok(())
}

/// The pid the file holds, if it holds one.
fn read_pid(mut file: &File) -> Option<u32> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.take(32).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_names_its_pid_and_is_free_once_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("owner");
        let held = OwnerLock::acquire(&path).unwrap();
        // Another open file description conflicts, even in the same process.
        match OwnerLock::acquire(&path) {
            Err(LockError::Held(pid)) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("{other:?}"),
        }
        assert!(take_if_owner_gone(&path).is_none());
        drop(held);
        assert!(take_if_owner_gone(&path).is_some());
        OwnerLock::acquire(&path).unwrap();
    }

    #[test]
    fn an_empty_or_foreign_lock_file_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert!(take_if_owner_gone(&empty).is_none());
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&empty, &link).unwrap();
        assert!(matches!(OwnerLock::acquire(&link), Err(LockError::Io(_))));
        // A FIFO nobody writes: refused at once, not waited on.
        let fifo = dir.path().join("fifo");
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo reads the NUL-terminated path, which outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        assert!(take_if_owner_gone(&fifo).is_none());
        assert!(matches!(OwnerLock::acquire(&fifo), Err(LockError::Io(_))));
        if crate::files::private_dir::euid() == 0 {
            let foreign = dir.path().join("foreign");
            std::fs::write(&foreign, b"1\n").unwrap();
            std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
            assert!(take_if_owner_gone(&foreign).is_none());
        }
    }
}

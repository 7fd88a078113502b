//! Private directories: the ones the host writes into and trusts afterwards (the directory
//! of private plugin copies, the control socket's directory).
//!
//! Another local user who can create or replace such a directory before the host uses it
//! could swap a private copy between its hash check and `dlopen`, or put a socket of theirs
//! where clients look for the host. So a private directory is either
//!
//! * created fresh by [`PrivateDir::create_in`], with `mkdtemp` semantics (a random name,
//!   created exclusively, mode 0700) and removed when dropped; or
//! * an existing directory named by the user or by convention, accepted by [`check_owned`]
//!   only if it is a real directory (not a symlink), owned by this process's user, and not
//!   writable by group or others. One we did not create and cannot trust is refused with a
//!   line saying why.
//!
//! The directory of private copies ([`CopiesDir`]) holds a copy of every plugin loaded (up
//! to tens of MB each), so it must not outlive its host, however the host ends. Its
//! destructor removes it; a host that ends without running destructors (SIGKILL, a crash,
//! the OOM killer, `exit`) cannot, so each such directory carries an owner lock
//! ([`crate::files::owner_lock`]) that its host holds while it runs, and every host that creates
//! one first removes those whose owner is gone.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::files::owner_lock::OwnerLock;

/// A directory this process created, removed (with its contents) when dropped.
#[derive(Debug)]
pub(crate) struct PrivateDir {
    dir: tempfile::TempDir,
}

impl PrivateDir {
    /// Creates a new directory named `PREFIX` + random characters inside `parent`, mode 0700.
    pub(crate) fn create_in(parent: &Path, prefix: &str) -> io::Result<PrivateDir> {
        // tempfile creates the directory with mkdir(2) on a fresh random name, failing on
        // any existing entry (retrying with another name), with mode 0700: nobody else can
        // have prepared it.
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .permissions(fs::Permissions::from_mode(0o700))
            .tempdir_in(parent)?;
        Ok(PrivateDir { dir })
    }

    /// Its path.
    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// The names of private copy directories in the temporary directory: this, then random
/// characters.
pub(crate) const COPIES_PREFIX: &str = "plugin-host-copies-";

/// The file in a private copy directory that its host holds locked while it runs.
const OWNER_FILE: &str = ".owner";

/// A new directory for private copies of plugin files, in the system's temporary
/// directory: mode 0700, marked with its host's owner lock, and removed when dropped (or
/// with [`CopiesDir::remove`], on a way out that runs no destructors). Creating one first
/// removes the directories of hosts that are no longer running.
#[derive(Debug)]
pub struct CopiesDir {
    // Dropped in this order: the directory, then the lock.
    dir: PrivateDir,
    _owner: OwnerLock,
}

impl CopiesDir {
    /// Removes the copy directories of hosts that are gone, then creates this host's.
    pub fn create() -> io::Result<CopiesDir> {
        let parent = std::env::temp_dir();
        let removed = sweep(&parent);
        if removed > 0 {
            tracing::info!(
                "private copy directories left by hosts that are no longer running: removed \
                 {removed} in {}",
                parent.display()
            );
        }
        CopiesDir::create_in(&parent)
    }

    /// Creates a copy directory in `parent` (no sweep).
    pub(crate) fn create_in(parent: &Path) -> io::Result<CopiesDir> {
        let dir = PrivateDir::create_in(parent, COPIES_PREFIX)?;
        let owner = OwnerLock::create(&dir.path().join(OWNER_FILE))?;
        Ok(CopiesDir { dir, _owner: owner })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Removes the directory now, with the copies in it (mapped libraries stay mapped:
    /// only their names go). For a way out of the process that runs no destructors.
    pub fn remove(&self) {
        if let Err(err) = fs::remove_dir_all(self.path()) {
            if err.kind() != io::ErrorKind::NotFound {
                tracing::warn!(
                    "cannot remove the private copy directory {}: {err}",
                    self.path().display()
                );
            }
        }
    }
}

/// Removes the copy directories in `parent` whose host is gone: directories named
/// [`COPIES_PREFIX`]..., of this user, not symbolic links, whose owner lock is free. Those of
/// running hosts, of other users, and anything else are left alone. Returns how many went.
pub(crate) fn sweep(parent: &Path) -> usize {
    let Ok(entries) = fs::read_dir(parent) else {
        return 0;
    };
    let me = euid();
    let mut removed = 0;
    for entry in entries.flatten() {
        let named = entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.starts_with(COPIES_PREFIX));
        if !named {
            continue;
        }
        let dir = entry.path();
        let ours = fs::symlink_metadata(&dir).is_ok_and(|meta| meta.is_dir() && meta.uid() == me);
        if !ours {
            continue;
        }
        // Held while the directory is removed; released (closed) after.
        let Some(_lock) = crate::files::owner_lock::take_if_owner_gone(&dir.join(OWNER_FILE))
        else {
            continue;
        };
        match fs::remove_dir_all(&dir) {
            Ok(()) => removed += 1,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => tracing::warn!(
                "cannot remove {}, left by a host that is no longer running: {err}",
                dir.display()
            ),
        }
    }
    removed
}

/// Where private copies of plugin files go: a fresh directory of ours, or one the user
/// named, checked to be theirs and closed to others.
#[derive(Debug)]
pub(crate) enum CopyDir {
    /// Created by this process (removed when dropped).
    Created(CopiesDir),
    /// Given by the user (kept).
    Given(PathBuf),
}

impl CopyDir {
    /// A new private directory in the system's temporary directory, or `given` once it is
    /// checked (and created if missing).
    pub(crate) fn new(given: Option<&Path>) -> io::Result<CopyDir> {
        match given {
            Some(dir) => Ok(CopyDir::Given(ensure_owned(dir, false)?)),
            None => Ok(CopyDir::Created(CopiesDir::create()?)),
        }
    }

    /// Its path.
    pub(crate) fn path(&self) -> &Path {
        match self {
            CopyDir::Created(dir) => dir.path(),
            CopyDir::Given(dir) => dir,
        }
    }
}

/// This process's effective user id.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Accepts `dir` as a private directory of this user: a directory (symlinks are not
/// followed), owned by us, not writable by group or others. With `exclusive`, it must not be
/// readable or enterable by them either (mode 0700 or stricter).
pub(crate) fn check_owned(dir: &Path, exclusive: bool) -> io::Result<()> {
    let meta = fs::symlink_metadata(dir)?;
    let refuse = |why: String| {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("refusing {}: {why}", dir.display()),
        ))
    };
    if meta.file_type().is_symlink() {
        return refuse("it is a symbolic link, not a directory of ours".into());
    }
    if !meta.is_dir() {
        return refuse("it is not a directory".into());
    }
    let me = euid();
    if meta.uid() != me {
        return refuse(format!(
            "it is owned by uid {}, not by this host's user (uid {me}); remove it or choose another",
            meta.uid()
        ));
    }
    let mode = meta.mode() & 0o7777;
    let forbidden = if exclusive { 0o077 } else { 0o022 };
    if mode & forbidden != 0 {
        let fix = if exclusive { "chmod 700" } else { "chmod go-w" };
        return refuse(format!(
            "its mode is {mode:o}, open to other users: {fix} it"
        ));
    }
    Ok(())
}

/// Makes sure `dir` exists as a private directory of this user: creates it (mode 0700, its
/// parent must exist) when missing, otherwise checks it with [`check_owned`].
pub(crate) fn ensure_owned(dir: &Path, exclusive: bool) -> io::Result<PathBuf> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
        Err(err) => {
            return Err(io::Error::new(
                err.kind(),
                format!("cannot create {}: {err}", dir.display()),
            ))
        }
    }
    check_owned(dir, exclusive)?;
    Ok(dir.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_directory_is_fresh_private_and_removed() {
        let parent = tempfile::tempdir().unwrap();
        let a = PrivateDir::create_in(parent.path(), "copies-").unwrap();
        let b = PrivateDir::create_in(parent.path(), "copies-").unwrap();
        assert_ne!(a.path(), b.path());
        let mode = fs::metadata(a.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        check_owned(a.path(), true).unwrap();
        let path = a.path().to_owned();
        drop(a);
        assert!(!path.exists());
    }

    #[test]
    fn a_sweep_removes_only_the_copies_of_hosts_that_are_gone() {
        let parent = tempfile::tempdir().unwrap();
        let live = CopiesDir::create_in(parent.path()).unwrap();
        fs::write(live.path().join("hello-1.so"), b"copy").unwrap();
        // A host that died: its directory stayed, its lock went with it.
        let dead = PrivateDir::create_in(parent.path(), COPIES_PREFIX).unwrap();
        drop(OwnerLock::create(&dead.path().join(OWNER_FILE)).unwrap());
        fs::write(dead.path().join("hello-1.so"), b"copy").unwrap();
        // One without an owner file (made before owner locks, or starting): not judged.
        let unmarked = PrivateDir::create_in(parent.path(), COPIES_PREFIX).unwrap();
        // Not a copy directory at all.
        let other = PrivateDir::create_in(parent.path(), "plugin-host-").unwrap();

        assert_eq!(sweep(parent.path()), 1);
        assert!(!dead.path().exists());
        assert!(live.path().join("hello-1.so").exists());
        assert!(unmarked.path().exists() && other.path().exists());

        let path = live.path().to_owned();
        drop(live);
        assert!(!path.exists());
        let removed = CopiesDir::create_in(parent.path()).unwrap();
        removed.remove();
        assert!(!removed.path().exists());
    }

    #[test]
    fn directories_open_to_others_or_not_ours_are_refused() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("d");
        ensure_owned(&dir, true).unwrap();

        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let err = check_owned(&dir, true).unwrap_err().to_string();
        assert!(
            err.contains("mode is 755") && err.contains("chmod 700"),
            "{err}"
        );
        check_owned(&dir, false).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let err = check_owned(&dir, false).unwrap_err().to_string();
        assert!(err.contains("chmod go-w"), "{err}");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();

        let link = parent.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let err = check_owned(&link, true).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");

        let file = parent.path().join("f");
        fs::write(&file, b"").unwrap();
        assert!(check_owned(&file, true)
            .unwrap_err()
            .to_string()
            .contains("not a directory"));

        if euid() == 0 {
            std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
            let err = ensure_owned(&dir, true).unwrap_err().to_string();
            assert!(err.contains("owned by uid 65534"), "{err}");
        }
    }
}

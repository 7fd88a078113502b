//! The state directory: where a host keeps what outlives it (the task database,
//! `tasks.db`; its id in a fleet, `host-id`), owned by one running host at a time.
//!
//! Two hosts sharing one task database would each take the other's running tasks for ones
//! left by a crash, queue them again, and run them twice. So a host takes the directory's
//! owner lock (`host.lock`, a `flock` a dead process cannot hold) before anything touches the
//! database, and a second host is refused in one line naming the first one's pid.
//!
//! The directory is trusted like the socket's: a directory another user made (in the
//! temporary directory, say) could hold tasks of theirs for the host to run. It must be a
//! real directory of this user, not writable by group or others, in a parent nobody else
//! can rename it out of.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::files::owner_lock::{LockError, OwnerLock};

pub use crate::files::host_id::{random_hex, HostIdError, StoredHostId, HOST_ID_FILE};

/// The name of the lock file in a state directory.
pub const LOCK_FILE: &str = "host.lock";

/// A state directory this host owns until it is dropped (or the process ends). One this
/// host created and left with nothing in it but its lock (a host refused at start, say) is
/// removed when dropped.
#[derive(Debug)]
pub struct StateDir {
    path: PathBuf,
    created: bool,
    lock: Option<OwnerLock>,
}

/// Why a state directory cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateDirError {
    /// Another running host owns it.
    #[error(
        "state directory {} is in use by another host ({}): give this host its own with \
         --state-dir DIR or `state_dir` in host.toml",
        dir.display(),
        pid.map_or_else(|| "pid unknown".to_owned(), |pid| format!("pid {pid}"))
    )]
    InUse {
        /// The directory.
        dir: PathBuf,
        /// The pid of the host that holds it, as it wrote it.
        pid: Option<u32>,
    },
    /// It cannot be created, is not this user's, or is open to others.
    #[error("state directory {}: {source}", dir.display())]
    Unusable {
        /// The directory.
        dir: PathBuf,
        /// What is wrong, in one line.
        source: io::Error,
    },
}

impl StateDir {
    /// Takes `dir` for this host: creates it (mode 0700, with missing parents) or checks
    /// it, then takes its lock without waiting.
    pub fn lock(dir: &Path) -> Result<StateDir, StateDirError> {
        let unusable = |source: io::Error| StateDirError::Unusable {
            dir: dir.to_owned(),
            source,
        };
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|err| {
                    unusable(io::Error::new(
                        err.kind(),
                        format!("cannot create {}: {err}", parent.display()),
                    ))
                })?;
            check_parent(parent).map_err(unusable)?;
        }
        let created = matches!(
            fs::symlink_metadata(dir),
            Err(err) if err.kind() == io::ErrorKind::NotFound
        );
        crate::files::private_dir::ensure_owned(dir, false).map_err(unusable)?;
        match OwnerLock::acquire(&dir.join(LOCK_FILE)) {
            Ok(lock) => Ok(StateDir {
                path: dir.to_owned(),
                created,
                lock: Some(lock),
            }),
            Err(LockError::Held(pid)) => Err(StateDirError::InUse {
                dir: dir.to_owned(),
                pid,
            }),
            Err(LockError::Io(err)) => Err(unusable(err)),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The task database in it.
    pub fn tasks_db(&self) -> PathBuf {
        self.path.join("tasks.db")
    }

    /// This host's id in a fleet, kept in the directory (`host-id`) so that it survives
    /// restarts: read back, or made with `fresh` (once) and written atomically, mode 0600.
    pub fn host_id(
        &self,
        fresh: impl FnOnce() -> io::Result<String>,
    ) -> Result<StoredHostId, HostIdError> {
        crate::files::host_id::load_or_create(&self.path, fresh)
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        if !self.created {
            return;
        }
        let only_the_lock = fs::read_dir(&self.path).is_ok_and(|entries| {
            entries
                .flatten()
                .all(|entry| entry.file_name() == LOCK_FILE)
        });
        if only_the_lock {
            // Unlinked while still held: a host opening it now finds it locked, one coming
            // later finds no directory and makes its own.
            let _ = fs::remove_file(self.path.join(LOCK_FILE));
            self.lock.take();
            let _ = fs::remove_dir(&self.path);
        }
    }
}

/// Accepts the directory a state directory is in if no other user can replace what is in
/// it: owned by this user or root, and writable by group or others only with the sticky
/// bit (as `/tmp`).
fn check_parent(parent: &Path) -> io::Result<()> {
    let meta = fs::metadata(parent)?;
    let me = crate::files::private_dir::euid();
    let refuse = |why: String| {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("refusing its parent {}: {why}", parent.display()),
        ))
    };
    if meta.uid() != me && meta.uid() != 0 {
        return refuse(format!(
            "it is owned by uid {}, not by this host's user (uid {me}) or root",
            meta.uid()
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return refuse(format!(
            "its mode is {mode:o}, open to other users: chmod go-w it"
        ));
    }
    Ok(())
}

/// The state directory of a host that names none: one per control socket, so that two
/// hosts with sockets of their own never share a task database.
///
/// `socket` is `None` for a host on the default socket, which keeps the directory hosts
/// used before there was one per socket: `$XDG_STATE_HOME/plugin-host` (or
/// `~/.local/state/plugin-host`). A host on another socket gets
/// `$XDG_STATE_HOME/plugin-host-HASH`, HASH being 12 hex digits of the SHA-256 of the
/// socket's absolute path. Without `XDG_STATE_HOME` and `HOME`, both go in the temporary
/// directory: `$TMPDIR/plugin-host-UID/state` (or `state-HASH`).
pub fn default_state_dir(socket: Option<&Path>) -> PathBuf {
    let instance = socket.map(socket_hash);
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|home| PathBuf::from(home).join(".local/state"))
        });
    match (base, instance) {
        (Some(base), None) => base.join("plugin-host"),
        (Some(base), Some(hash)) => base.join(format!("plugin-host-{hash}")),
        (None, instance) => {
            // SAFETY: getuid has no preconditions and cannot fail.
            let uid = unsafe { libc::getuid() };
            let dir = std::env::temp_dir().join(format!("plugin-host-{uid}"));
            match instance {
                None => dir.join("state"),
                Some(hash) => dir.join(format!("state-{hash}")),
            }
        }
    }
}

/// 12 hex digits of the SHA-256 of the socket's absolute path (its directory resolved when
/// it exists, so two spellings of one socket give one directory).
fn socket_hash(socket: &Path) -> String {
    use sha2::{Digest, Sha256};
    use std::os::unix::ffi::OsStrExt;
    let absolute = std::path::absolute(socket).unwrap_or_else(|_| socket.to_owned());
    let resolved = match (absolute.parent(), absolute.file_name()) {
        (Some(dir), Some(name)) => fs::canonicalize(dir)
            .map(|dir| dir.join(name))
            .unwrap_or_else(|_| absolute.clone()),
        _ => absolute,
    };
    let digest = Sha256::digest(resolved.as_os_str().as_bytes());
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_second_owner_is_refused_naming_the_first() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("a/state");
        let first = StateDir::lock(&dir).unwrap();
        assert_eq!(first.tasks_db(), dir.join("tasks.db"));
        let err = StateDir::lock(&dir).unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "in use by another host (pid {})",
                std::process::id()
            )) && err.contains("--state-dir"),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
        drop(first);
        // Nothing but its lock in it, and made by the host that dropped it: removed.
        assert!(!dir.exists());
        let second = StateDir::lock(&dir).unwrap();
        fs::write(second.tasks_db(), b"").unwrap();
        drop(second);
        assert!(dir.join("tasks.db").exists());
        // One that was there before is kept, even empty.
        fs::remove_file(dir.join("tasks.db")).unwrap();
        drop(StateDir::lock(&dir).unwrap());
        assert!(dir.exists());
    }

    #[test]
    fn a_directory_open_to_others_is_refused() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("state");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let err = StateDir::lock(&dir).unwrap_err().to_string();
        assert!(err.contains("chmod go-w"), "{err}");

        let open = parent.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let err = StateDir::lock(&open.join("state")).unwrap_err().to_string();
        assert!(err.contains("refusing its parent"), "{err}");
    }

    #[test]
    fn each_socket_has_its_own_default() {
        let a = default_state_dir(Some(Path::new("/run/a/host.sock")));
        let b = default_state_dir(Some(Path::new("/run/b/host.sock")));
        assert_ne!(a, b);
        assert_eq!(a, default_state_dir(Some(Path::new("/run/a/host.sock"))));
        assert_ne!(a, default_state_dir(None));
    }
}

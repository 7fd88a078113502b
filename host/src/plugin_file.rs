//! Plugin files on disk: opening one safely, checking who could have written it, and
//! staging its private copy.
//!
//! The host never maps a watched file itself (a process that maps a file someone rewrites in
//! place can die of SIGBUS, and `dlopen` caches by path). [`stage`] reads the file once, in
//! 64 KiB pieces, and in that one pass hashes it (SHA-256, what a pin in host.toml compares
//! against and what tells a changed file from a touched one) and writes the private copy that
//! will be opened. No whole-file buffer is ever held.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use crate::loader::{LoadError, LoadErrorKind, LoadOptions};
use crate::watch::writers::Lease;

/// Makes private copy names unique within the process.
static COPY_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The ELF header and program headers of any real shared library fit in this; the check
/// of a file's structure reads nothing beyond it.
const HEAD_BYTES: usize = 64 * 1024;

/// A plugin file's private copy and its hash, not opened yet. The copy is removed when this
/// is dropped (after `dlopen` it lives on as a mapping).
#[derive(Debug)]
pub(crate) struct StagedFile {
    pub(crate) copy_path: PathBuf,
    pub(crate) sha256: [u8; 32],
    /// What is wrong with the file's ELF structure, if anything: such a copy must never be
    /// opened.
    pub(crate) structure: Result<(), String>,
}

impl StagedFile {
    /// Refuses a copy whose ELF structure is broken (see `elf::check_head`).
    pub(crate) fn check_structure(&self, path: &Path) -> Result<(), LoadError> {
        self.structure
            .clone()
            .map_err(|problem| LoadError::new(path, LoadErrorKind::NotALibrary, problem))
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        if !self.copy_path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.copy_path);
        }
    }
}

impl StagedFile {
    /// Keeps the copy on disk for worker processes to open (the host never opens it).
    pub(crate) fn keep(mut self) -> KeptCopy {
        KeptCopy {
            path: std::mem::take(&mut self.copy_path),
            sha256: self.sha256,
        }
    }
}

/// A private copy kept on disk while an isolated generation may start a worker from it;
/// removed when dropped.
#[derive(Debug)]
pub(crate) struct KeptCopy {
    path: PathBuf,
    sha256: [u8; 32],
}

impl KeptCopy {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn sha256(&self) -> &[u8; 32] {
        &self.sha256
    }
}

impl Drop for KeptCopy {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Opens `path` (a regular file; symlinks are followed, but FIFOs, directories and devices
/// are refused without blocking), checks its ownership and permissions, and copies it into
/// `copy_dir` while hashing it. The copy's ELF structure is checked too (so that `dlopen`
/// never maps past the end of a truncated file); the verdict is in
/// [`StagedFile::check_structure`], so that a broken file's hash is still known.
pub(crate) fn stage(
    path: &Path,
    options: &LoadOptions,
    copy_dir: &Path,
) -> Result<StagedFile, LoadError> {
    let unreadable = |what: &str, err: std::io::Error| {
        LoadError::new(path, LoadErrorKind::Unreadable, format!("{what}: {err}"))
    };
    let source = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|err| unreadable("cannot open", err))?;
    let meta = source
        .metadata()
        .map_err(|err| unreadable("cannot stat", err))?;
    if !meta.is_file() {
        return Err(LoadError::new(
            path,
            LoadErrorKind::Unreadable,
            "not a regular file (a plugin must be a shared library file)",
        ));
    }
    check_permissions(path, &meta, options)?;
    // Read one version of the file: under a read lease no writer can open it until the copy
    // is done (without one, a copy made while `cp` rewrote the file in place mixed two
    // versions, passed every check, and crashed `dlopen`). Where leases cannot be used, a
    // change seen by comparing the file's status before and after refuses the copy.
    let being_written = || {
        LoadError::new(
            path,
            LoadErrorKind::BeingWritten,
            "some process has it open for writing, or it changed while being read: it is \
             loaded once the writer is done",
        )
    };
    let _lease = match crate::watch::writers::read_lease(&source) {
        Lease::Held(lease) => Some(lease),
        Lease::BeingWritten => return Err(being_written()),
        Lease::Unavailable => None,
    };

    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| plugin_api::is_valid_name(s))
        .unwrap_or("plugin");
    // Unique among the host processes that may share a given copy directory.
    let copy_path = copy_dir.join(format!(
        "{stem}.{}.{}.so",
        std::process::id(),
        COPY_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let host_error = |err: std::io::Error| {
        LoadError::new(
            path,
            LoadErrorKind::Host,
            format!(
                "cannot write the private copy {}: {err}",
                copy_path.display()
            ),
        )
    };
    let mut copy: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o700)
        .custom_flags(libc::O_CLOEXEC)
        .open(&copy_path)
        .map_err(host_error)?;
    // From here on the copy exists: `staged` removes it on every error path.
    let mut staged = StagedFile {
        copy_path: copy_path.clone(),
        sha256: [0; 32],
        structure: Ok(()),
    };
    let mut hasher = Sha256::new();
    let mut head = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut len = 0u64;
    loop {
        let n = match (&source).read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(unreadable("cannot read", err)),
        };
        let chunk = &buf[..n];
        if head.len() < HEAD_BYTES {
            let take = (HEAD_BYTES - head.len()).min(n);
            head.extend_from_slice(&chunk[..take]);
        }
        hasher.update(chunk);
        copy.write_all(chunk).map_err(host_error)?;
        len += n as u64;
    }
    drop(copy);
    let after = source
        .metadata()
        .map_err(|err| unreadable("cannot stat", err))?;
    if version(&meta) != version(&after) || after.len() != len {
        return Err(being_written());
    }
    staged.structure = crate::elf::check_head(&head, len);
    staged.sha256 = hasher.finalize().into();
    Ok(staged)
}

/// What tells one version of a file from the next: its size and change times.
fn version(meta: &fs::Metadata) -> (u64, i64, i64, i64, i64) {
    (
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec(),
    )
}

/// Refuses files (and their directory) that someone other than us or root could have written.
fn check_permissions(
    path: &Path,
    meta: &fs::Metadata,
    options: &LoadOptions,
) -> Result<(), LoadError> {
    let me = crate::private_dir::euid();
    let problem = |what: &Path, meta: &fs::Metadata| -> Option<String> {
        if meta.uid() != me && meta.uid() != 0 {
            Some(format!(
                "{} is owned by uid {}, not by this host's user (uid {me}) or root: chown it",
                what.display(),
                meta.uid()
            ))
        } else if meta.mode() & 0o022 != 0 && !(meta.is_dir() && meta.mode() & libc::S_ISVTX != 0) {
            Some(format!(
                "{} is writable by group or others (mode {:o}): chmod go-w it",
                what.display(),
                meta.mode() & 0o7777
            ))
        } else {
            None
        }
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let found =
        problem(path, meta).or_else(|| fs::metadata(dir).ok().and_then(|m| problem(dir, &m)));
    match found {
        None => Ok(()),
        Some(message) if options.allow_insecure_permissions => {
            tracing::warn!(file = %path.display(), "insecure permissions allowed: {message}");
            Ok(())
        }
        Some(message) => Err(LoadError::new(
            path,
            LoadErrorKind::InsecurePermissions,
            format!("refused: {message} (or run the host with --allow-insecure-permissions)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn libc_path() -> &'static Path {
        [
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
            "/lib/aarch64-linux-gnu/libc.so.6",
        ]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("libc is installed")
    }

    #[test]
    fn staging_copies_hashes_and_cleans_up() {
        let copies = tempfile::tempdir().unwrap();
        let options = LoadOptions {
            allow_insecure_permissions: true,
            ..LoadOptions::default()
        };
        let staged = stage(libc_path(), &options, copies.path()).unwrap();
        let original = fs::read(libc_path()).unwrap();
        assert_eq!(fs::read(&staged.copy_path).unwrap(), original);
        assert_eq!(staged.sha256, <[u8; 32]>::from(Sha256::digest(&original)));
        let copy = staged.copy_path.clone();
        drop(staged);
        assert!(!copy.exists());
    }

    #[test]
    fn a_truncated_file_is_refused_and_leaves_no_copy_behind() {
        let dir = tempfile::tempdir().unwrap();
        let copies = tempfile::tempdir().unwrap();
        let cut = dir.path().join("cut.so");
        fs::write(&cut, &fs::read(libc_path()).unwrap()[..8192]).unwrap();
        let staged = stage(&cut, &LoadOptions::default(), copies.path()).unwrap();
        let err = staged.check_structure(&cut).unwrap_err();
        assert_eq!(err.kind(), LoadErrorKind::NotALibrary);
        assert!(err.message().starts_with("truncated: segment"), "{err}");
        drop(staged);
        assert_eq!(fs::read_dir(copies.path()).unwrap().count(), 0);
    }
}

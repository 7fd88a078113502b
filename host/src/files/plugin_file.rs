//! Plugin files on disk: opening one safely, checking who could have written it, and
//! staging its private copy.
//!
//! The host never `dlopen`s a watched file (a process that maps a file someone rewrites in
//! place can die of SIGBUS, and `dlopen` caches by path). [`stage`] copies the file into the
//! private copy directory in the kernel (`copy_file_range`, no buffer in the host), under a
//! read lease so that no writer changes it meanwhile. While the lease holds, the watched
//! file may be mapped to check its ELF structure, read its plugin-name note and take its
//! fast hash during the copy; it is unmapped before the lease is released. Everything read
//! afterwards, the SHA-256 a pin checks included (see `digest`), is read from the copy,
//! which nobody else can write and which is what `dlopen` maps. A 7 MB plugin is staged in
//! about 2 ms.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::files::digest::Digest;
use crate::files::lease::Lease;
use crate::files::load_error::{LoadError, LoadErrorKind, LoadOptions};

/// Makes private copy names unique within the process.
static COPY_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The ELF header and program headers of any real shared library fit in this; the check
/// of a file's structure reads nothing beyond it.
const HEAD_BYTES: usize = 64 * 1024;

/// A plugin file's private copy and its digest, not opened yet. The copy is removed when
/// this is dropped (after `dlopen` it lives on as a mapping).
#[derive(Debug)]
pub(crate) struct StagedFile {
    pub(crate) copy_path: PathBuf,
    pub(crate) digest: Digest,
    /// The plugin name its ELF note declares, if it has the note.
    pub(crate) declared: Option<String>,
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
        KeptCopy::new(std::mem::take(&mut self.copy_path), self.digest.clone())
    }
}

/// A private copy kept on disk while an isolated generation may start a worker from it;
/// removed when dropped.
#[derive(Debug)]
pub(crate) struct KeptCopy {
    path: PathBuf,
    digest: Digest,
}

impl KeptCopy {
    /// Takes charge of the private copy at `path`, of content `digest`: it is removed when
    /// this is dropped.
    pub(crate) fn new(path: PathBuf, digest: Digest) -> KeptCopy {
        KeptCopy { path, digest }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn digest(&self) -> &Digest {
        &self.digest
    }
}

impl Drop for KeptCopy {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Opens `path` (a regular file; symlinks are followed, but FIFOs, directories and devices
/// are refused without blocking), checks its ownership and permissions, and copies it into
/// `copy_dir`. The copy's ELF structure is checked (so that `dlopen` never maps past the end
/// of a truncated file; the verdict is in [`StagedFile::check_structure`], so that a broken
/// file's hash is still known), its plugin-name note read, and its content hashed; its
/// SHA-256 is computed now if `wants_sha256` says so for the name it declares (a pin needs
/// it), else on first demand.
pub(crate) fn stage(
    path: &Path,
    options: &LoadOptions,
    copy_dir: &Path,
    wants_sha256: &dyn Fn(Option<&str>) -> bool,
) -> Result<StagedFile, LoadError> {
    let unreadable = |what: &str, err: io::Error| {
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
    let lease = match crate::files::lease::read_lease(&source) {
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
    let host_error = |what: &str, err: io::Error| {
        LoadError::new(
            path,
            LoadErrorKind::Host,
            format!(
                "cannot {what} the private copy {}: {err}",
                copy_path.display()
            ),
        )
    };
    let mut copy: File = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o700)
        .custom_flags(libc::O_CLOEXEC)
        .open(&copy_path)
        .map_err(|err| host_error("create", err))?;
    // From here on the copy exists: `staged` removes it on every error path.
    let mut staged = StagedFile {
        copy_path: copy_path.clone(),
        digest: Digest::none(),
        declared: None,
        structure: Ok(()),
    };
    // File to file, `io::copy` copies in the kernel (copy_file_range). Under a lease the
    // source cannot change, so it is mapped and looked at while the kernel copies it (two
    // CPUs do it in half the time); without one, the copy is looked at afterwards.
    let len = meta.len();
    let source_map = match &lease {
        Some(_) => Some(Mapping::of(&source, len).map_err(|err| unreadable("cannot map", err))?),
        None => None,
    };
    let (copied, looked) = std::thread::scope(|scope| {
        let looking = source_map
            .as_ref()
            .map(|map| map.bytes())
            .map(|bytes| scope.spawn(move || Look::at(bytes)));
        let copied = io::copy(&mut &source, &mut copy);
        (copied, looking.map(|l| l.join()))
    });
    let copied = copied
        .map_err(|err| unreadable(&format!("cannot copy it to {}", copy_path.display()), err))?;
    let after = source
        .metadata()
        .map_err(|err| unreadable("cannot stat", err))?;
    // The watched file is unmapped while the lease still holds: once it is released, a
    // writer may truncate the file, and a touch of its mapping would be a SIGBUS.
    drop(source_map);
    #[cfg(test)]
    let leased = lease.is_some();
    drop(lease);
    #[cfg(test)]
    if leased {
        after_lease::run(path);
    }
    if version(&meta) != version(&after) || after.len() != copied || copied != len {
        return Err(being_written());
    }
    // From here on only the private copy is read, which nothing but this host writes: the
    // SHA-256 a pin checks is the one of the bytes `dlopen` maps. (What was looked at under
    // the lease is the same bytes: no writer could open the file while it was held, and its
    // length and change times are the copy's.)
    let map_copy = || Mapping::of(&copy, len).map_err(|err| host_error("map", err));
    let (look, copy_map) = match looked {
        Some(Ok(look)) => (look, None),
        _ => {
            let copy_map = map_copy()?;
            (Look::at(copy_map.bytes()), Some(copy_map))
        }
    };
    staged.structure = look.structure;
    staged.declared = look.declared;
    staged.digest = if wants_sha256(staged.declared.as_deref()) {
        let copy_map = match copy_map {
            Some(copy_map) => copy_map,
            None => map_copy()?,
        };
        Digest::known(look.content, Digest::sha256_of(copy_map.bytes()))
    } else {
        drop(copy_map);
        Digest::later(look.content, copy, len)
    };
    Ok(staged)
}

/// What staging finds in a plugin file's bytes.
struct Look {
    structure: Result<(), String>,
    declared: Option<String>,
    content: u128,
}

impl Look {
    fn at(bytes: &[u8]) -> Look {
        Look {
            structure: crate::files::elf::check_head(
                &bytes[..bytes.len().min(HEAD_BYTES)],
                bytes.len() as u64,
            ),
            declared: crate::files::elf::declared_name(bytes),
            content: Digest::content_of(bytes),
        }
    }
}

/// A file mapped read-only into memory, unmapped when dropped. Only for files no one else
/// can change: the host's own private copies, and a plugin file while a read lease on it is
/// held (no process can open it for writing or truncate it then).
pub(crate) struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    /// Maps the first `len` bytes of `file`.
    pub(crate) fn of(file: &File, len: u64) -> io::Result<Mapping> {
        let len = usize::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file too large"))?;
        if len == 0 {
            return Ok(Mapping {
                ptr: std::ptr::null_mut(),
                len: 0,
            });
        }
        use std::os::fd::AsRawFd;
        // SAFETY: a fresh private read-only mapping of an open descriptor; the kernel picks
        // the address. Nothing aliases it mutably.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_POPULATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { ptr, len })
    }

    /// The mapped bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `ptr` is a live read-only mapping of `len` bytes, valid until `drop`. The
        // file is a private copy in a directory only this user can write, which the host
        // never truncates or writes while it is mapped, or a file under a read lease for as
        // long as it is mapped (see the type's docs), so no access can fault.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: `ptr` and `len` are exactly what mmap returned; nothing borrows the
            // bytes any more (`bytes` borrows `self`).
            unsafe { libc::munmap(self.ptr, self.len) };
        }
    }
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
    let me = crate::files::private_dir::euid();
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

/// A test's hook into [`stage`]: what a writer does right after the read lease on the
/// watched file is given back.
#[cfg(test)]
pub(crate) mod after_lease {
    use std::cell::RefCell;
    use std::path::Path;

    type Hook = Box<dyn FnOnce(&Path)>;

    thread_local! {
        static HOOK: RefCell<Option<Hook>> = const { RefCell::new(None) };
    }

    /// Runs `hook` with the watched file's path in this thread's next [`super::stage`] that
    /// holds a lease, right after the lease is released.
    pub(crate) fn set(hook: impl FnOnce(&Path) + 'static) {
        HOOK.with(|h| *h.borrow_mut() = Some(Box::new(hook)));
    }

    /// Whether the hook set last has not run yet.
    pub(crate) fn pending() -> bool {
        HOOK.with(|h| h.borrow().is_some())
    }

    pub(super) fn run(path: &Path) {
        if let Some(hook) = HOOK.with(|h| h.borrow_mut().take()) {
            hook(path);
        }
    }
}

#[cfg(test)]
mod tests;

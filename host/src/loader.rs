//! Loading: from a plugin file on disk to a checked, open [`Library`].
//!
//! This module owns everything between a path and a usable root module:
//!
//! 1. the file is opened without following it into anything but a regular file, its
//!    ownership and permissions are checked, and its bytes are read and hashed once;
//! 2. the ELF structure is checked (so `dlopen` never maps past the end of a truncated file),
//!    and the same bytes are written to a *private copy* with a unique name (dlopen caches by
//!    path, and a process that maps a file someone rewrites in place can die of SIGBUS), which
//!    is opened with `RTLD_NOW | RTLD_LOCAL` and unlinked at once;
//! 3. the abi_stable header is checked: abi_stable's own version, then our ABI major/minor,
//!    then (for plugins of our minor or newer) the full type layout;
//! 4. the metadata is read and validated.
//!
//! Closing is the other half: [`Library`]'s `Drop` calls `dlclose` and then looks in
//! `/proc/self/maps` whether the library really left memory, and says so.

use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::mem::ManuallyDrop;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use abi_stable::abi_stability::abi_checking::{get_checking_globals, CheckingGlobals};
use abi_stable::library::{
    AbiHeaderRef, LibHeader, LibraryError, ROOT_MODULE_LOADER_NAME_WITH_NUL,
};
use abi_stable::sabi_types::VersionNumber;
use abi_stable::std_types::{ROk, RResult};
use libloading::os::unix::{Library as RawLibrary, RTLD_LOCAL, RTLD_NOW};
use plugin_api::abi::{FfiInit, HandlerBox, PluginModRef, ABI_MAJOR, ABI_MINOR};
use plugin_api::{is_valid_name, LogRecord, PluginError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The version of `plugin-api` this host was built with.
pub const API_VERSION: &str = plugin_api::VERSION;

/// How a plugin file is turned into a library.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Where private copies are written before `dlopen`. Must allow executable mappings.
    /// `None`: a directory created under the system's temporary directory.
    pub copy_dir: Option<PathBuf>,
    /// Turn the ownership and permission checks into warnings.
    pub allow_insecure_permissions: bool,
}

/// Metadata of a plugin, as the host reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// The plugin's name: what callers address it by.
    pub name: String,
    /// The plugin's version.
    pub version: String,
    /// What the plugin does.
    pub description: String,
    /// Its named callbacks (`execute` is always there and not listed).
    pub callbacks: Vec<String>,
    /// The `plugin-api` version it was built with.
    pub api_version: String,
    /// The plugin ABI version it speaks, `major.minor`.
    pub abi_version: String,
}

/// What kind of problem stopped a load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LoadErrorKind {
    /// The file could not be opened or read, or is not a regular file.
    Unreadable,
    /// The file or its directory is writable by others or owned by someone else.
    InsecurePermissions,
    /// The file is not a shared library this process can open.
    NotALibrary,
    /// The library does not export a plugin.
    NotAPlugin,
    /// The plugin speaks another ABI version or its layout does not match.
    IncompatibleAbi,
    /// The plugin's metadata is unusable.
    InvalidMetadata,
    /// The plugin's `init` failed or panicked.
    InitFailed,
    /// Another file already serves a plugin of that name.
    NameConflict,
    /// The file's SHA-256 is not the pinned one.
    HashMismatch,
    /// The host itself could not do its part (for example write the private copy).
    Host,
}

/// Why a plugin file could not be loaded: one line naming the file, the problem and what to
/// do, and optionally a long technical detail (abi_stable's layout report).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct LoadError {
    path: PathBuf,
    kind: LoadErrorKind,
    message: String,
    detail: Option<String>,
    /// The same content failed the same way before (not logged again).
    repeated: bool,
}

impl LoadError {
    pub(crate) fn new(path: &Path, kind: LoadErrorKind, message: impl Into<String>) -> Self {
        LoadError {
            path: path.to_owned(),
            kind,
            message: message.into(),
            detail: None,
            repeated: false,
        }
    }

    pub(crate) fn repeated(mut self) -> Self {
        self.repeated = true;
        self
    }

    pub(crate) fn is_repeated(&self) -> bool {
        self.repeated
    }

    fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// The plugin file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What kind of problem it is.
    pub fn kind(&self) -> LoadErrorKind {
        self.kind
    }

    /// The one-line description, without the path.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Long technical detail, such as abi_stable's type layout comparison, if there is any.
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }
}

/// Serialises every use of abi_stable's process-wide layout-checking state.
static LOAD_LOCK: Mutex<()> = Mutex::new(());
/// Makes private copy names unique within the process.
static COPY_COUNTER: AtomicU64 = AtomicU64::new(0);

/// An open plugin library: the `dlopen` handle and the checked root module.
///
/// Dropping it closes the library; drop every [`HandlerBox`] made from it first.
pub struct Library {
    raw: ManuallyDrop<RawLibrary>,
    module: PluginModRef,
    metadata: Metadata,
    sha256: [u8; 32],
    copy_path: PathBuf,
}

impl fmt::Debug for Library {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Library")
            .field("metadata", &self.metadata)
            .field("copy_path", &self.copy_path)
            .finish_non_exhaustive()
    }
}

/// The bytes of a plugin file and their SHA-256, read once so that what is hashed is what
/// is loaded.
pub(crate) struct PluginFile {
    pub(crate) bytes: Vec<u8>,
    pub(crate) sha256: [u8; 32],
}

/// Reads a plugin file: a regular file (symlinks are followed, but FIFOs, directories and
/// devices are refused without blocking), with safe ownership and permissions.
pub(crate) fn read_plugin_file(
    path: &Path,
    options: &LoadOptions,
) -> Result<PluginFile, LoadError> {
    let unreadable = |what: &str, err: std::io::Error| {
        LoadError::new(path, LoadErrorKind::Unreadable, format!("{what}: {err}"))
    };
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|err| unreadable("cannot open", err))?;
    let meta = file
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
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.read_to_end(&mut bytes)
        .map_err(|err| unreadable("cannot read", err))?;
    let sha256 = Sha256::digest(&bytes).into();
    Ok(PluginFile { bytes, sha256 })
}

/// Refuses files (and their directory) that someone other than us or root could have written.
fn check_permissions(
    path: &Path,
    meta: &fs::Metadata,
    options: &LoadOptions,
) -> Result<(), LoadError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
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

/// A directory for private copies, removed when dropped.
pub(crate) struct CopyDir {
    path: PathBuf,
    owned: bool,
}

impl CopyDir {
    pub(crate) fn new(options: &LoadOptions) -> std::io::Result<CopyDir> {
        match &options.copy_dir {
            Some(path) => {
                fs::create_dir_all(path)?;
                Ok(CopyDir {
                    path: path.clone(),
                    owned: false,
                })
            }
            None => {
                let path = std::env::temp_dir().join(format!(
                    "plugin-host-{}-{}",
                    std::process::id(),
                    COPY_COUNTER.fetch_add(1, Ordering::Relaxed)
                ));
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&path)
                    .or_else(|err| {
                        if err.kind() == std::io::ErrorKind::AlreadyExists {
                            Ok(())
                        } else {
                            Err(err)
                        }
                    })?;
                Ok(CopyDir { path, owned: true })
            }
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for CopyDir {
    fn drop(&mut self) {
        if self.owned {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

impl Library {
    /// Loads the plugin file at `path`: reads it, writes a private copy into `copy_dir`,
    /// opens and checks it, and reads its metadata.
    pub(crate) fn load(
        path: &Path,
        file: &PluginFile,
        copy_dir: &Path,
    ) -> Result<Library, LoadError> {
        let stem = path
            .file_stem()
            .and_then(OsStr::to_str)
            .filter(|s| is_valid_name(s))
            .unwrap_or("plugin");
        crate::elf::check(&file.bytes)
            .map_err(|problem| LoadError::new(path, LoadErrorKind::NotALibrary, problem))?;
        let copy_path = copy_dir.join(format!(
            "{stem}.{}.{}.so",
            std::process::id(),
            COPY_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        write_private_copy(&copy_path, &file.bytes).map_err(|err| {
            LoadError::new(
                path,
                LoadErrorKind::Host,
                format!(
                    "cannot write the private copy {}: {err}",
                    copy_path.display()
                ),
            )
        })?;
        // SAFETY: opening a library runs its initialisers. That is the one thing a plugin host
        // must trust the plugin with; the file passed the ownership checks above.
        let opened = unsafe { RawLibrary::open(Some(&copy_path), RTLD_NOW | RTLD_LOCAL) };
        // The mapping keeps the unlinked copy alive; the name is not needed any more.
        let _ = fs::remove_file(&copy_path);
        let raw = opened.map_err(|err| {
            let text = err.to_string();
            let hint = if text.contains("failed to map segment") {
                " (is the private copy directory mounted noexec? choose another with --copy-dir)"
            } else {
                ""
            };
            LoadError::new(
                path,
                LoadErrorKind::NotALibrary,
                format!(
                    "not a loadable shared library: {}{hint}",
                    dlerror_tail(&text, &copy_path)
                ),
            )
        })?;
        let (module, version) = root_module(&raw, path)?;
        let metadata = read_metadata(module, version, path)?;
        Ok(Library {
            raw: ManuallyDrop::new(raw),
            module,
            metadata,
            sha256: file.sha256,
            copy_path,
        })
    }

    /// Runs the plugin's `init` with `config_json` and returns the new instance and the
    /// records `init` logged.
    pub(crate) fn instantiate(
        &self,
        config_json: &str,
        generation: u64,
    ) -> (Result<HandlerBox, PluginError>, Vec<LogRecord>) {
        let outcome = (self.module.instantiate())(FfiInit {
            config_json: config_json.into(),
            generation,
        });
        let logs = outcome.logs.iter().map(LogRecord::from).collect();
        let handler = outcome
            .handler
            .into_result()
            .map_err(|err| PluginError::from(&err));
        (handler, logs)
    }

    /// The plugin's metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// SHA-256 of the file it was loaded from.
    pub fn sha256(&self) -> &[u8; 32] {
        &self.sha256
    }
}

fn root_module(raw: &RawLibrary, path: &Path) -> Result<(PluginModRef, VersionNumber), LoadError> {
    // SAFETY: the symbol abi_stable's loader looks for is, in every library built with
    // abi_stable 0.11 (directly or through `export_plugin!`), a static `LibHeader`, which
    // starts with the `AbiHeader` that `AbiHeaderRef` points to; reading the header through
    // a reference to that static is what `abi_header_from_raw_library` does. The reference
    // lives as long as `raw`; the caller keeps `raw` open for as long as it uses the module.
    let header: AbiHeaderRef = unsafe {
        match raw.get::<AbiHeaderRef>(ROOT_MODULE_LOADER_NAME_WITH_NUL.as_bytes()) {
            Ok(symbol) => *symbol,
            Err(_) => {
                return Err(LoadError::new(
                    path,
                    LoadErrorKind::NotAPlugin,
                    "a shared library, but not a plugin: it exports no plugin root module \
                         (build it with plugin_api::export_plugin!)",
                ))
            }
        }
    };
    let header: &'static LibHeader = header.upgrade().map_err(|err| {
        LoadError::new(
            path,
            LoadErrorKind::IncompatibleAbi,
            "built with an incompatible abi_stable version: rebuild the plugin against \
                 plugin-api "
                .to_owned()
                + API_VERSION,
        )
        .with_detail(err.to_string())
    })?;
    let version = VersionNumber::new(header.version_strings()).map_err(|err| {
        LoadError::new(
            path,
            LoadErrorKind::IncompatibleAbi,
            "unreadable plugin ABI version",
        )
        .with_detail(err.to_string())
    })?;
    if version.major != ABI_MAJOR {
        return Err(LoadError::new(
            path,
            LoadErrorKind::IncompatibleAbi,
            format!(
                "built against plugin ABI {}.{}, this host speaks ABI {ABI_MAJOR}.x: rebuild \
                     the plugin against plugin-api {API_VERSION}",
                version.major, version.minor
            ),
        ));
    }

    let _serialised = LOAD_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    reset_layout_checking_state();
    // ABI_MINOR is 0 today, which makes this comparison trivially true.
    #[allow(clippy::absurd_extreme_comparisons)]
    let module = if version.minor >= ABI_MINOR {
        header.init_root_module::<PluginModRef>()
    } else {
        // SAFETY: same major, older minor. The ABI evolution rules (plugin-api crate docs)
        // only ever append to the root module and the Handler vtable, both prefix types
        // whose accessors check the length, so the older layout is a prefix of ours.
        // abi_stable's own check would reject it only because it is shorter.
        unsafe { header.unchecked_layout::<PluginModRef>() }
            .map_err(|err| err.into_library_error::<PluginModRef>())
    };
    let module = module.map_err(|err| match err {
        LibraryError::AbiInstability(_) => LoadError::new(
            path,
            LoadErrorKind::IncompatibleAbi,
            format!(
                "its plugin interface layout differs from this host's (plugin ABI {}.{}, host \
                     {ABI_MAJOR}.{ABI_MINOR}): rebuild the plugin against plugin-api {API_VERSION}",
                version.major, version.minor
            ),
        )
        .with_detail(err.to_string()),
        other => LoadError::new(
            path,
            LoadErrorKind::NotAPlugin,
            "its root module failed to initialise",
        )
        .with_detail(other.to_string()),
    })?;
    Ok((module, version))
}

fn read_metadata(
    module: PluginModRef,
    version: VersionNumber,
    path: &Path,
) -> Result<Metadata, LoadError> {
    let invalid = |message: String| LoadError::new(path, LoadErrorKind::InvalidMetadata, message);
    let ffi = match (module.metadata())() {
        ROk(meta) => meta,
        RResult::RErr(err) => return Err(invalid(format!("metadata failed: {}", err.message))),
    };
    let name = ffi.name.to_string();
    if !is_valid_name(&name) {
        return Err(invalid(format!(
            "plugin name {name:?} is not 1 to 64 characters of [A-Za-z0-9_.-]"
        )));
    }
    let callbacks: Vec<String> = ffi.callbacks.iter().map(|c| c.to_string()).collect();
    for (i, callback) in callbacks.iter().enumerate() {
        if !is_valid_name(callback) || callback == "execute" || callbacks[..i].contains(callback) {
            return Err(invalid(format!(
                "plugin {name}: callback name {callback:?} is invalid or repeated"
            )));
        }
    }
    Ok(Metadata {
        name,
        version: ffi.version.to_string(),
        description: ffi.description.to_string(),
        callbacks,
        api_version: ffi.api_version.to_string(),
        abi_version: format!("{}.{}", version.major, version.minor),
    })
}

impl Drop for Library {
    fn drop(&mut self) {
        // SAFETY: every object made from this library (handlers, outcomes) has been dropped or
        // copied into host-owned types before the last reference to the library goes away:
        // `Generation` drops its handler before its `Arc<Library>`, and outcomes are converted
        // at the boundary. Nothing else holds pointers into it.
        let closed = unsafe { ManuallyDrop::take(&mut self.raw) }.close();
        if let Err(err) = closed {
            tracing::warn!("dlclose failed: {err}");
        }
        if is_mapped(&self.copy_path) {
            tracing::warn!(
                "still mapped: the library stayed in memory after dlclose (a thread-local \
                 destructor or a thread it started keeps it alive); it is released when that \
                 thread ends"
            );
        } else {
            tracing::info!("unloaded: library closed and gone from memory");
        }
    }
}

/// Whether the private copy at `path` is still mapped into this process.
pub(crate) fn is_mapped(path: &Path) -> bool {
    let Ok(maps) = fs::read_to_string("/proc/self/maps") else {
        return false;
    };
    let needle = path.to_string_lossy();
    maps.lines().any(|line| line.contains(needle.as_ref()))
}

fn write_private_copy(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o700)
        .open(path)?;
    file.write_all(bytes)
}

/// dlerror messages start with the path of the private copy; users know the original.
fn dlerror_tail(text: &str, copy_path: &Path) -> String {
    let copy = copy_path.to_string_lossy();
    text.replace(&format!("{copy}: "), "")
        .replace(copy.as_ref(), "the file")
}

/// abi_stable keeps process-wide maps of every prefix type and extra check it has seen,
/// holding `&'static` references into the libraries they came from and keyed by an address
/// inside each library. A library we unloaded could be replaced by one at the same address,
/// and the next check would then read unmapped memory. Starting each check from empty maps
/// keeps them from outliving the libraries; our plugins never share objects with each other,
/// so nothing needs the cross-library view the maps give.
///
/// The extra-check map holds trait objects whose drop function may live in a closed
/// library: it is forgotten, not dropped (a few hundred bytes per load, and empty for the
/// types in our ABI).
fn reset_layout_checking_state() {
    let globals = get_checking_globals();
    let fresh = CheckingGlobals::new();
    *globals
        .prefix_type_map
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = fresh
        .prefix_type_map
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    *globals
        .nonexhaustive_map
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = fresh
        .nonexhaustive_map
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    let old = std::mem::replace(
        &mut *globals
            .extra_checker_map
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
        fresh
            .extra_checker_map
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner),
    );
    std::mem::forget(old);
}

/// Reads the metadata of the plugin file at `path` without running its `init`.
pub fn inspect(path: &Path, options: &LoadOptions) -> Result<Metadata, LoadError> {
    let copy_dir = CopyDir::new(options).map_err(|err| {
        LoadError::new(
            path,
            LoadErrorKind::Host,
            format!("cannot create the private copy directory: {err}"),
        )
    })?;
    let file = read_plugin_file(path, options)?;
    let library = Library::load(path, &file, copy_dir.path())?;
    Ok(library.metadata.clone())
}

//! Loading: from a staged private copy to a checked, open [`Library`].
//!
//! This module owns everything between a private copy (see `plugin_file`, which opens the
//! watched file safely, checks its permissions and ELF structure, and copies and hashes it in
//! one pass) and a usable root module:
//!
//! 1. the copy is opened with `RTLD_NOW | RTLD_LOCAL` and unlinked at once;
//! 2. the abi_stable header is checked: abi_stable's own version, then our ABI major/minor,
//!    then (for plugins of our minor or newer) the full type layout;
//! 3. the metadata is read and validated.
//!
//! Closing is the other half: [`Library`]'s `Drop` calls `dlclose`. Whether the library then
//! really left memory is for `still_mapped` and `release_pass` to find out: glibc keeps a
//! library that registered a thread-local destructor until that thread has ended *and* a
//! later `dlclose` pass has run.

use std::ffi::CString;
use std::fmt;
use std::mem::ManuallyDrop;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use abi_stable::abi_stability::abi_checking::{get_checking_globals, CheckingGlobals};
use abi_stable::library::{
    AbiHeaderRef, LibHeader, LibraryError, ROOT_MODULE_LOADER_NAME_WITH_NUL,
};
use abi_stable::sabi_types::VersionNumber;
use abi_stable::std_types::{ROk, RResult};
use libloading::os::unix::{Library as RawLibrary, RTLD_LOCAL, RTLD_NOW};
use plugin_api::abi::{FfiInit, FfiPrevious, HandlerBox, PluginModRef, ABI_MAJOR, ABI_MINOR};
use plugin_api::{is_valid_name, LogRecord, PluginError};
use serde::{Deserialize, Serialize};

use crate::types::call::Budget;
// The errors of loading a file belong to the files layer, which stages the file first.
use crate::files::digest::Digest;
pub use crate::files::load_error::{LoadError, LoadErrorKind, LoadOptions};
use crate::files::plugin_file::{KeptCopy, StagedFile};
use crate::files::private_dir::CopyDir;
use crate::runtime::handover::PreviousState;

/// The version of `plugin-api` this host was built with.
pub const API_VERSION: &str = plugin_api::VERSION;

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
    /// The callbacks it asks to be run periodically (plugin ABI 1.3, `Callbacks::every`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<PluginSchedule>,
    /// How it was built to handle a panic; `unwind` for a plugin that does not say (built
    /// before plugins said).
    #[serde(default)]
    pub panic: PanicStrategy,
}

/// The panic strategy a plugin was compiled with (`panic` in its Cargo profile), as its
/// declarations name it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PanicStrategy {
    /// A panic unwinds: the plugin's glue catches it and the call fails as `panicked`.
    #[default]
    Unwind,
    /// A panic aborts the process the plugin runs in: such a plugin runs only isolated.
    Abort,
}

impl fmt::Display for PanicStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PanicStrategy::Unwind => "unwind",
            PanicStrategy::Abort => "abort",
        })
    }
}

/// A callback a plugin asks the host to run every so often, as a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginSchedule {
    /// The callback (or `execute`).
    pub callback: String,
    /// Its period, in milliseconds.
    pub every_ms: u64,
}

/// What a plugin declares beyond its metadata (ABI 1.3), as the JSON it returns.
#[derive(Default, Deserialize)]
struct Declarations {
    #[serde(default)]
    schedules: Vec<PluginSchedule>,
    /// Absent in plugins built before it was declared: they unwind.
    #[serde(default)]
    panic: PanicStrategy,
}

impl Declarations {
    fn parse(json: &str) -> serde_json::Result<Declarations> {
        serde_json::from_str(json)
    }
}

impl Metadata {
    /// The minor of the plugin ABI it speaks (0 when unknown).
    pub(crate) fn abi_minor(&self) -> u32 {
        self.abi_version
            .split_once('.')
            .and_then(|(_, minor)| minor.parse().ok())
            .unwrap_or(0)
    }

    /// What is known of a plugin that was never opened: its name.
    pub(crate) fn named(name: &str) -> Metadata {
        Metadata {
            name: name.to_owned(),
            version: String::new(),
            description: String::new(),
            callbacks: Vec::new(),
            api_version: String::new(),
            abi_version: String::new(),
            schedules: Vec::new(),
            panic: PanicStrategy::Unwind,
        }
    }
}

/// Serialises every use of abi_stable's process-wide layout-checking state.
static LOAD_LOCK: Mutex<()> = Mutex::new(());

/// An open plugin library: the `dlopen` handle and the checked root module.
///
/// Dropping it closes the library; drop every [`HandlerBox`] made from it first.
pub struct Library {
    raw: ManuallyDrop<RawLibrary>,
    module: PluginModRef,
    metadata: Metadata,
    digest: Digest,
    copy_path: PathBuf,
    /// The private copy it was opened from, kept on disk while this library or the
    /// plugin's history holds it (to load again for a rollback).
    kept: Option<Arc<KeptCopy>>,
}

impl fmt::Debug for Library {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Library")
            .field("metadata", &self.metadata)
            .field("copy_path", &self.copy_path)
            .finish_non_exhaustive()
    }
}

impl Library {
    /// Opens the staged private copy of the plugin file at `path`, checks it and reads its
    /// metadata. The copy stays on disk while the library, or a kept version in the
    /// plugin's history, holds it (it is never opened again under its name: a rollback
    /// copies it first, `dlopen` would hand back the library already mapped).
    pub(crate) fn open(path: &Path, staged: StagedFile) -> Result<Library, LoadError> {
        staged.check_structure(path)?;
        let kept = Arc::new(staged.keep());
        let mut library = Library::open_at(path, kept.path(), kept.digest().clone())?;
        library.kept = Some(kept);
        Ok(library)
    }

    /// Opens the private copy at `copy_path` of the plugin file at `path` (staged and
    /// checked already, with `digest`), checks it and reads its metadata. The copy is
    /// left where it is (a worker process opens the copy its host keeps).
    pub(crate) fn open_at(
        path: &Path,
        copy_path: &Path,
        digest: Digest,
    ) -> Result<Library, LoadError> {
        let copy_path = copy_path.to_owned();
        // SAFETY: opening a library runs its initialisers. That is the one thing a plugin host
        // must trust the plugin with; the file passed the ownership checks, and the copy lives
        // in a directory only this user can write.
        let opened = unsafe { RawLibrary::open(Some(&copy_path), RTLD_NOW | RTLD_LOCAL) };
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
            digest,
            copy_path,
            kept: None,
        })
    }

    /// Runs the plugin's `init` with `config_json`, and the state the version it replaces
    /// handed over if there is one, and returns the new instance and the records `init`
    /// logged (within the log budget). A plugin built before ABI 1.2 cannot take state: it
    /// starts without it, and the log says so.
    pub(crate) fn instantiate(
        &self,
        config_json: &str,
        generation: u64,
        budget: &Budget,
        previous: Option<&PreviousState>,
    ) -> (Result<HandlerBox, PluginError>, Vec<LogRecord>) {
        let init = FfiInit {
            config_json: config_json.into(),
            generation,
        };
        let with_state = previous.and_then(|previous| {
            let instantiate = self.module.instantiate_with_state();
            if instantiate.is_none() {
                tracing::warn!(plugin = %self.metadata.name, generation,
                    "built against plugin ABI {}, which cannot take the state the version it \
                     replaces handed over: it starts without it", self.metadata.abi_version);
            }
            Some((instantiate?, previous))
        });
        let outcome = match with_state {
            Some((instantiate, previous)) => instantiate(
                init,
                FfiPrevious {
                    state_json: previous.state_json.as_str().into(),
                    version: previous.version.as_str().into(),
                },
            ),
            None => (self.module.instantiate())(init),
        };
        let logs = budget.logs(&outcome.logs, 0);
        let handler = outcome.handler.into_result().map_err(|err| {
            PluginError::new(
                plugin_api::ErrorKind::from_code(err.kind),
                crate::types::call::cut(
                    err.message.as_str(),
                    crate::types::call::MAX_ERROR_MESSAGE,
                ),
            )
        });
        (handler, logs)
    }

    /// The plugin's metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// What identifies the content it was loaded from.
    pub(crate) fn digest(&self) -> &Digest {
        &self.digest
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
    let declared = match module.declarations() {
        // Older than ABI 1.3: it declares nothing.
        None => Declarations::default(),
        Some(declarations) => match declarations() {
            ROk(json) => Declarations::parse(json.as_str()).map_err(|err| {
                invalid(format!(
                    "plugin {name}: its declarations are not valid: {err}"
                ))
            })?,
            RResult::RErr(err) => {
                return Err(invalid(format!("declarations failed: {}", err.message)))
            }
        },
    };
    let Declarations { schedules, panic } = declared;
    for schedule in &schedules {
        let known = schedule.callback == "execute" || callbacks.contains(&schedule.callback);
        if !known || schedule.every_ms < 1000 {
            return Err(invalid(format!(
                "plugin {name}: schedule of `{}` every {} ms names no callback or is under a \
                 second",
                schedule.callback, schedule.every_ms
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
        schedules,
        panic,
    })
}

impl Library {
    /// The path of its private copy (named so in `/proc/self/maps`).
    pub(crate) fn copy_path(&self) -> &Path {
        &self.copy_path
    }

    /// The private copy it was opened from, when this process staged it.
    pub(crate) fn kept(&self) -> Option<&Arc<KeptCopy>> {
        self.kept.as_ref()
    }
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
    }
}

/// Whether the private copy at `path` is still mapped into this process.
pub(crate) fn still_mapped(path: &Path) -> bool {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return false;
    };
    let needle = path.to_string_lossy();
    maps.lines().any(|line| line.contains(needle.as_ref()))
}

/// Gives glibc another chance to unmap a closed library that stayed mapped: a library with
/// pending thread-local destructors is only removed by a `dlclose` pass that runs after the
/// last such thread has ended. Reopening it by name without loading (`RTLD_NOLOAD`) and
/// closing it again is such a pass. Returns whether it is still mapped afterwards.
pub(crate) fn release_pass(path: &Path) -> bool {
    if !still_mapped(path) {
        return false;
    }
    let Ok(name) = CString::new(path.as_os_str().as_bytes()) else {
        return true;
    };
    // SAFETY: `name` is a NUL-terminated string that outlives the call. With RTLD_NOLOAD,
    // dlopen never loads anything: it returns the handle of the object already in memory
    // under that name (running no initialisers, they ran at its first load) or NULL.
    let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOLOAD | libc::RTLD_LAZY) };
    if !handle.is_null() {
        // SAFETY: `handle` came from the dlopen above and is closed exactly once; it only
        // drops the reference that dlopen just took.
        unsafe { libc::dlclose(handle) };
    }
    still_mapped(path)
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
    let copy_dir = CopyDir::new(options.copy_dir.as_deref()).map_err(|err| {
        LoadError::new(
            path,
            LoadErrorKind::Host,
            format!("cannot create the private copy directory: {err}"),
        )
    })?;
    let staged = crate::files::plugin_file::stage(path, options, copy_dir.path(), &|_| false)?;
    let library = Library::open(path, staged)?;
    Ok(library.metadata.clone())
}

/// The plugin name the file at `path` declares in its ELF note (written by
/// `export_plugin!`), read without loading it: `None` for a file without the note (a plugin
/// built with a plugin-api older than the note, or not a plugin at all).
pub fn declared_name(path: &Path) -> std::io::Result<Option<String>> {
    crate::files::elf::declared_name_in_file(path)
}

#[cfg(test)]
mod tests;

//! The [`Host`]: which plugin file serves which name, and the atomic swap of generations.
//!
//! Two structures, with a strict split between readers and writers:
//!
//! * the *table*, name → current [`Generation`], behind an [`ArcSwap`]. A call reads it
//!   without any lock, clones the generation's `Arc` and runs on it. A writer publishes a
//!   whole new table; calls that already hold the old generation finish on it.
//! * the *files*, path → what was loaded from it (hash, plugin name, last error), behind a
//!   mutex that only loads, unloads and listings take, never calls.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::call::{CallError, CallErrorKind, CallOutcome};
use crate::config::{PluginSettings, DEFAULT_MAX_MESSAGE_BYTES};
use crate::generation::Generation;
use crate::loader::{
    read_plugin_file, CopyDir, Library, LoadError, LoadErrorKind, LoadOptions, Metadata, PluginFile,
};

type Table = HashMap<String, Arc<Generation>>;

/// What a load did, and the generation it replaced (kept alive until the event is logged).
type Loaded = Result<(LoadEvent, Option<Arc<Generation>>), LoadError>;

/// Options for a [`Host`].
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// How files are loaded.
    pub load: LoadOptions,
    /// Per-plugin settings, by plugin name.
    pub plugins: BTreeMap<String, PluginSettings>,
    /// Largest call input or result, in bytes.
    pub max_message_bytes: usize,
}

impl Default for HostOptions {
    fn default() -> Self {
        HostOptions {
            load: LoadOptions::default(),
            plugins: BTreeMap::new(),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

/// The version of one plugin that serves calls right now. Holding it keeps that version
/// loaded; a reload publishes a new one, and this one drains when its last holder lets go.
#[derive(Clone)]
pub struct PluginHandle(Arc<Generation>);

impl PluginHandle {
    /// Its metadata.
    pub fn metadata(&self) -> &Metadata {
        self.0.metadata()
    }

    /// Its generation number.
    pub fn generation(&self) -> u64 {
        self.0.number()
    }

    /// How long a call may run before its caller should be told it timed out
    /// (`timeout_ms`). The host's control server enforces it; the plugin sees it as the
    /// call's deadline.
    pub fn timeout(&self) -> Duration {
        self.0.timeout()
    }

    /// Calls `callback` (`execute` for the entry point) with JSON `input`. `cancelled` is
    /// what the plugin sees as cancellation; `deadline` what it sees as the deadline.
    pub fn call(
        &self,
        callback: &str,
        input: &str,
        cancelled: &AtomicBool,
        deadline: Option<SystemTime>,
    ) -> Result<CallOutcome, CallError> {
        self.0.call(callback, input, cancelled, deadline)
    }

    /// Counts a call whose caller was told it timed out as stuck (shown by
    /// [`Host::status`]), or, with `false`, counts it back when it finally returns.
    pub fn mark_stuck(&self, stuck: bool) {
        self.0.mark_stuck(stuck)
    }
}

/// Loads plugin files, serves calls on the current version of each plugin, and swaps
/// versions in place. Cheap to clone; all clones share one set of plugins.
///
/// ```no_run
/// use host::{Host, HostOptions};
///
/// let host = Host::new(HostOptions::default())?;
/// host.load_file("plugins/libhello.so".as_ref())?;
/// let outcome = host.call("hello", "greet", r#"{"name":"Ada"}"#)?;
/// println!("{}", outcome.result().map_err(|e| e.to_string())?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Host {
    inner: Arc<Inner>,
}

struct Inner {
    table: ArcSwap<Table>,
    state: Mutex<State>,
    copy_dir: CopyDir,
    options: LoadOptions,
    max_message: usize,
}

#[derive(Default)]
struct State {
    files: BTreeMap<PathBuf, FileEntry>,
    /// Last generation number given to each plugin name; never reset, so numbers only grow.
    generations: HashMap<String, u64>,
    settings: BTreeMap<String, PluginSettings>,
}

#[derive(Default)]
struct FileEntry {
    /// Hash of the content last loaded successfully (or found disabled).
    sha256: Option<[u8; 32]>,
    /// The plugin the file declares, once known.
    metadata: Option<Metadata>,
    /// Why the last attempt to load it failed.
    error: Option<LoadError>,
    /// Hash of the content that failed, so it is not tried again until it changes (or
    /// what made it fail does).
    failed_sha256: Option<[u8; 32]>,
}

/// What [`Host::load_file`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum LoadEvent {
    /// A plugin that was not served before is now.
    Loaded {
        /// Plugin name.
        plugin: String,
        /// Its version.
        version: String,
        /// Its generation.
        generation: u64,
    },
    /// A new version replaced the one being served.
    Reloaded {
        /// Plugin name.
        plugin: String,
        /// Version replaced.
        old_version: String,
        /// Generation replaced.
        old_generation: u64,
        /// New version.
        version: String,
        /// New generation.
        generation: u64,
    },
    /// The file's content is what is already loaded; nothing was done.
    Unchanged {
        /// Plugin name.
        plugin: String,
    },
    /// The plugin is disabled in the configuration; it is not served.
    Disabled {
        /// Plugin name.
        plugin: String,
    },
}

/// What a plugin file is serving, as [`Host::status`] reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Serving {
    /// Current generation.
    pub generation: u64,
    /// When it was loaded, in milliseconds since the Unix epoch.
    pub loaded_at_unix_ms: u64,
    /// Calls served by this generation.
    pub calls: u64,
    /// SHA-256 of the file, in hex.
    pub sha256: String,
    /// Calls whose caller was told they timed out and that have not returned yet.
    pub stuck: u64,
}

/// A plugin file the host knows, as [`Host::status`] reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileStatus {
    /// The file.
    pub path: PathBuf,
    /// The plugin it declares, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    /// What it serves; `None` when it failed to load or is disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<Serving>,
    /// Why its last load failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The error [`Host::new`] returns when the private copy directory cannot be created.
#[derive(Debug, thiserror::Error)]
#[error("cannot create the private copy directory: {0}")]
pub struct HostError(#[from] std::io::Error);

impl Host {
    /// Creates a host with no plugins.
    pub fn new(options: HostOptions) -> Result<Host, HostError> {
        let copy_dir = CopyDir::new(&options.load)?;
        Ok(Host {
            inner: Arc::new(Inner {
                table: ArcSwap::from_pointee(Table::new()),
                state: Mutex::new(State {
                    settings: options.plugins,
                    ..State::default()
                }),
                copy_dir,
                options: options.load,
                max_message: options.max_message_bytes,
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Loads the plugin file at `path`, or reloads it if its content changed since the last
    /// load. The new version is loaded and initialised next to the old one and replaces it
    /// only if that succeeds; on any error the old version keeps serving.
    pub fn load_file(&self, path: &Path) -> Result<LoadEvent, LoadError> {
        let mut state = self.state();
        let result = self.load_locked(&mut state, path);
        self.record(&mut state, path, result)
    }

    /// Logs the result of a load, remembers its error for [`Host::status`], then lets the
    /// replaced generation go (its unload is logged after the reload).
    fn record(
        &self,
        state: &mut State,
        path: &Path,
        result: Loaded,
    ) -> Result<LoadEvent, LoadError> {
        let entry = state.files.entry(path.to_owned()).or_default();
        match &result {
            Ok((event, _replaced)) => {
                entry.error = None;
                log_event(path, event);
            }
            Err(err) if err.is_repeated() => {}
            Err(err) => {
                tracing::error!(file = %path.display(), "rejected: {}", err.message());
                if let Some(detail) = err.detail() {
                    tracing::debug!(file = %path.display(), "rejection detail:\n{detail}");
                }
                entry.error = Some(err.clone());
            }
        }
        result.map(|(event, _replaced)| event)
    }

    fn load_locked(&self, state: &mut State, path: &Path) -> Loaded {
        let file = read_plugin_file(path, &self.inner.options)?;
        let entry = state.files.entry(path.to_owned()).or_default();
        if entry.failed_sha256 == Some(file.sha256) {
            if let Some(err) = &entry.error {
                return Err(err.clone().repeated());
            }
        }
        let result = self.load_content(state, path, &file);
        let entry = state.files.entry(path.to_owned()).or_default();
        entry.failed_sha256 = result.is_err().then_some(file.sha256);
        result
    }

    /// Loads `file`, read from `path`, unless it is what is already loaded from there.
    fn load_content(&self, state: &mut State, path: &Path, file: &PluginFile) -> Loaded {
        let known = state.files.get(path);
        if let Some(FileEntry {
            sha256: Some(hash),
            metadata: Some(meta),
            ..
        }) = known
        {
            if *hash == file.sha256 {
                let event = LoadEvent::Unchanged {
                    plugin: meta.name.clone(),
                };
                return Ok((event, None));
            }
        }
        let previous_name = known.and_then(|entry| Some(entry.metadata.as_ref()?.name.clone()));
        let library = Library::load(path, file, self.inner.copy_dir.path())?;
        let name = library.metadata().name.clone();

        state.files.entry(path.to_owned()).or_default().metadata = Some(library.metadata().clone());

        let table = self.inner.table.load();
        if let Some(current) = table.get(&name).filter(|g| g.source() != path) {
            if current.source().exists() {
                return Err(LoadError::new(
                    path,
                    LoadErrorKind::NameConflict,
                    format!(
                        "declares plugin {name}, which {} already serves: remove or rename one of them",
                        current.source().display()
                    ),
                ));
            }
            // The file that served it is gone (renamed to this one, say): take over in one swap.
            state.files.remove(current.source());
        }
        let settings = state.settings.get(&name).cloned().unwrap_or_default();
        if let Some(pinned) = &settings.sha256 {
            let actual = hex(library.sha256());
            if !pinned.eq_ignore_ascii_case(&actual) {
                return Err(LoadError::new(
                    path,
                    LoadErrorKind::HashMismatch,
                    format!("plugin {name}: SHA-256 is {actual}, but host.toml pins {pinned}"),
                ));
            }
        }
        if !settings.enabled {
            state.files.entry(path.to_owned()).or_default().sha256 = Some(file.sha256);
            drop(table);
            let replaced = self.set_current(&name, None);
            return Ok((LoadEvent::Disabled { plugin: name }, replaced));
        }

        let version = library.metadata().version.clone();
        let generation = self.start_generation(state, Arc::new(library), path, settings)?;
        let number = generation.number();
        state.files.entry(path.to_owned()).or_default().sha256 = Some(file.sha256);
        drop(table);
        let replaced = self.set_current(&name, Some(generation));
        let event = match &replaced {
            Some(old) => LoadEvent::Reloaded {
                plugin: name.clone(),
                old_version: old.metadata().version.clone(),
                old_generation: old.number(),
                version,
                generation: number,
            },
            None => LoadEvent::Loaded {
                plugin: name.clone(),
                version,
                generation: number,
            },
        };
        // The file used to declare another name: that plugin is gone now.
        if let Some(previous) = previous_name.filter(|p| *p != name) {
            self.set_current(&previous, None);
        }
        Ok((event, replaced))
    }

    /// Publishes a new table in which `name` is served by `generation` (or by nothing);
    /// returns the generation it replaced.
    fn set_current(&self, name: &str, generation: Option<Generation>) -> Option<Arc<Generation>> {
        let generation = generation.map(Arc::new);
        let mut replaced = None;
        self.inner.table.rcu(|table| {
            let mut table = Table::clone(table);
            replaced = match &generation {
                Some(generation) => table.insert(name.to_owned(), generation.clone()),
                None => table.remove(name),
            };
            table
        });
        replaced
    }

    /// Starts the next generation of a plugin from `library`; its number is recorded only
    /// if `init` succeeds.
    fn start_generation(
        &self,
        state: &mut State,
        library: Arc<Library>,
        path: &Path,
        settings: PluginSettings,
    ) -> Result<Generation, LoadError> {
        let name = library.metadata().name.clone();
        let number = state.generations.get(&name).copied().unwrap_or(0) + 1;
        let generation =
            Generation::start(library, path, number, settings, self.inner.max_message)?;
        state.generations.insert(name, number);
        Ok(generation)
    }

    fn current(&self, name: &str) -> Option<Arc<Generation>> {
        self.inner.table.load().get(name).cloned()
    }

    /// Unloads whatever plugin the file at `path` serves, and forgets the file. Calls in
    /// flight finish on the version they started on. Returns the plugin's name.
    pub fn remove_file(&self, path: &Path) -> Option<String> {
        let mut state = self.state();
        let entry = state.files.remove(path)?;
        let name = entry.metadata?.name;
        let serves = self.current(&name).is_some_and(|g| g.source() == path);
        if !serves {
            return None;
        }
        if let Some(old) = self.set_current(&name, None) {
            tracing::info!(plugin = %name, generation = old.number(), file = %path.display(), "removed: unloading");
        }
        // A file that was refused because this one held the name may serve it now.
        let waiting: Vec<PathBuf> = state
            .files
            .iter()
            .filter(|(_, e)| {
                e.error
                    .as_ref()
                    .is_some_and(|err| err.kind() == LoadErrorKind::NameConflict)
            })
            .filter(|(_, e)| e.metadata.as_ref().is_some_and(|m| m.name == name))
            .map(|(p, _)| p.clone())
            .collect();
        for path in waiting {
            if let Some(entry) = state.files.get_mut(&path) {
                entry.failed_sha256 = None;
            }
            let result = self.load_locked(&mut state, &path);
            let _ = self.record(&mut state, &path, result);
        }
        Some(name)
    }

    /// Unloads every plugin (in-flight calls finish first on their own references).
    pub fn unload_all(&self) {
        let mut state = self.state();
        state.files.clear();
        let old = self.inner.table.swap(Arc::new(Table::new()));
        drop(state);
        drop(old);
    }

    /// Replaces the per-plugin settings. Plugins whose configuration changed are started
    /// again from the library already loaded (a new generation); plugins now disabled are
    /// unloaded; plugins now enabled are loaded from their file.
    pub fn apply_settings(&self, settings: BTreeMap<String, PluginSettings>) {
        let mut state = self.state();
        let old_settings = std::mem::replace(&mut state.settings, settings);
        let table = self.inner.table.load_full();
        let files: Vec<(PathBuf, String)> = state
            .files
            .iter()
            .filter_map(|(path, entry)| Some((path.clone(), entry.metadata.as_ref()?.name.clone())))
            .collect();
        for (path, name) in files {
            let new = state.settings.get(&name).cloned().unwrap_or_default();
            if old_settings.get(&name).cloned().unwrap_or_default() == new {
                continue;
            }
            match table.get(&name).filter(|g| g.source() == path) {
                Some(current) if !new.enabled => {
                    drop(self.set_current(&name, None));
                    tracing::info!(plugin = %name, generation = current.number(), "unloading: disabled in the configuration");
                }
                Some(current) if current.settings() != &new => {
                    let library = current.library().clone();
                    match self.start_generation(&mut state, library, &path, new.clone()) {
                        Ok(generation) => {
                            let number = generation.number();
                            self.set_current(&name, Some(generation));
                            tracing::info!(plugin = %name, old_generation = current.number(), generation = number, "reconfigured");
                        }
                        Err(err) => {
                            tracing::error!(plugin = %name, "new configuration rejected, old one keeps serving: {}", err.message())
                        }
                    }
                }
                Some(_) => {}
                None if new.enabled => {
                    // Load it now: the entry's hash says "already seen", so forget it first.
                    if let Some(entry) = state.files.get_mut(&path) {
                        entry.sha256 = None;
                        entry.failed_sha256 = None;
                    }
                    let result = self.load_locked(&mut state, &path);
                    let _ = self.record(&mut state, &path, result);
                }
                None => {}
            }
        }
    }

    /// Calls `callback` of plugin `plugin` with JSON `input` on its current generation.
    /// `execute` calls the plugin's entry point.
    ///
    /// The plugin runs on the calling thread, so its `timeout_ms` cannot be enforced here:
    /// use [`Host::call_with`] to hand it a deadline and a cancellation flag, or serve calls
    /// through [`ControlServer`](crate::control::ControlServer), which answers overrunning
    /// calls with a timeout error on time.
    pub fn call(
        &self,
        plugin: &str,
        callback: &str,
        input: &str,
    ) -> Result<CallOutcome, CallError> {
        self.call_with(plugin, callback, input, &AtomicBool::new(false), None)
    }

    /// Like [`Host::call`], with a cancellation flag the plugin can observe and a deadline
    /// it is told about.
    pub fn call_with(
        &self,
        plugin: &str,
        callback: &str,
        input: &str,
        cancelled: &AtomicBool,
        deadline: Option<SystemTime>,
    ) -> Result<CallOutcome, CallError> {
        self.check_input(input)?;
        // The table snapshot keeps the generation alive for the call: no reference count to
        // bump on a cache line every caller shares.
        let table = self.inner.table.load();
        match table.get(plugin) {
            Some(generation) => generation.call(callback, input, cancelled, deadline),
            None => Err(self.unknown_plugin(plugin)),
        }
    }

    fn check_input(&self, input: &str) -> Result<(), CallError> {
        if input.len() > self.inner.max_message {
            return Err(CallError::new(
                CallErrorKind::InvalidRequest,
                format!(
                    "input of {} bytes is over the limit of {} (max_message_bytes)",
                    input.len(),
                    self.inner.max_message
                ),
            ));
        }
        Ok(())
    }

    /// Like [`Host::call_with`], on a version already looked up with [`Host::plugin`], with
    /// the host's input size limit applied.
    pub fn call_with_handle(
        &self,
        plugin: &PluginHandle,
        callback: &str,
        input: &str,
        cancelled: &AtomicBool,
        deadline: Option<SystemTime>,
    ) -> Result<CallOutcome, CallError> {
        self.check_input(input)?;
        plugin.call(callback, input, cancelled, deadline)
    }

    /// The version of `plugin` serving calls now.
    pub fn plugin(&self, plugin: &str) -> Result<PluginHandle, CallError> {
        match self.current(plugin) {
            Some(generation) => Ok(PluginHandle(generation)),
            None => Err(self.unknown_plugin(plugin)),
        }
    }

    fn unknown_plugin(&self, plugin: &str) -> CallError {
        let table = self.inner.table.load();
        let mut names: Vec<&str> = table.keys().map(String::as_str).collect();
        names.sort_unstable();
        let loaded = if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        };
        CallError::new(
            CallErrorKind::UnknownPlugin,
            format!("no plugin named {plugin} is loaded (loaded: {loaded})"),
        )
    }

    /// Every plugin file the host knows, with what it serves or why it does not.
    pub fn status(&self) -> Vec<FileStatus> {
        let state = self.state();
        let table = self.inner.table.load();
        state
            .files
            .iter()
            .map(|(path, entry)| FileStatus {
                path: path.clone(),
                metadata: entry.metadata.clone(),
                serving: entry
                    .metadata
                    .as_ref()
                    .and_then(|meta| table.get(&meta.name))
                    .filter(|g| g.source() == path)
                    .map(|g| Serving {
                        generation: g.number(),
                        loaded_at_unix_ms: g
                            .loaded_at()
                            .duration_since(UNIX_EPOCH)
                            .map_or(0, |d| d.as_millis() as u64),
                        calls: g.calls(),
                        sha256: hex(g.library().sha256()),
                        stuck: g.stuck(),
                    }),
                last_error: entry.error.as_ref().map(|e| e.message().to_owned()),
            })
            .collect()
    }

    /// The names of the plugins being served.
    pub fn plugin_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.table.load().keys().cloned().collect();
        names.sort_unstable();
        names
    }
}

fn log_event(path: &Path, event: &LoadEvent) {
    let file = path.display();
    match event {
        LoadEvent::Loaded {
            plugin,
            version,
            generation,
        } => {
            tracing::info!(%plugin, generation, %file, "loaded {plugin} {version}")
        }
        LoadEvent::Reloaded {
            plugin,
            old_version,
            old_generation,
            version,
            generation,
        } => {
            tracing::info!(%plugin, generation, %file, "reloaded {plugin}: {old_version} (generation {old_generation}) -> {version} (generation {generation})")
        }
        LoadEvent::Unchanged { plugin } => {
            tracing::debug!(%plugin, %file, "unchanged content, not reloaded")
        }
        LoadEvent::Disabled { plugin } => {
            tracing::info!(%plugin, %file, "disabled in the configuration, not loaded")
        }
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

//! The [`Host`]: which plugin file serves which name, loads prepared outside every lock and
//! committed in a moment, and the atomic swap of generations.
//!
//! Three pieces, with a strict split between readers and writers:
//!
//! * the call table (`table`), name → current generation, read by every call without a lock;
//! * the file book (`files`), path → what was loaded from it, and the rules about what a
//!   change means, behind the state mutex, which only loads, unloads and listings take, each
//!   for microseconds;
//! * the reaper (`crate::runtime::reaper`), which drops replaced generations when their last call
//!   ends.
//!
//! A load runs in three steps. *Prepare*, with no lock held: stage the file (read, hash and
//! copy in one pass, check its ELF structure), `dlopen` it, check its ABI and read its
//! metadata. *Start*, holding only the plugin name's own load lock (which serialises loads of
//! one plugin and nothing else): run `init` on a thread of its own, abandoned after
//! `init_timeout_ms`. *Commit*, under the state mutex: swap the table entry and record the
//! file. The generation replaced goes to the reaper.

mod files;
mod history;
mod invoke;
mod placement;
mod pool;
mod rollback;
pub(crate) mod table;
pub(crate) mod typed;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::files::digest::Digest;
use crate::files::plugin_file::{KeptCopy, StagedFile};
use crate::files::private_dir::CopyDir;
use crate::runtime::generation::{Generation, Origin};
use crate::runtime::handover::{Handover, PreviousState};
use crate::runtime::isolation::{IsolationOptions, WorkerSpec, WorkerStatus};
use crate::runtime::loader::{Library, LoadError, LoadErrorKind, LoadOptions, Metadata};
use crate::runtime::reaper::{unix_ms, Reaper, Retired};
use crate::runtime::rollout;
use crate::types::call::{Budget, CallError, CallErrorKind};
use crate::types::settings::Isolation;
use crate::types::settings::{
    PluginSettings, DEFAULT_MAX_LOG_BYTES_PER_CALL, DEFAULT_MAX_MESSAGE_BYTES,
};
use files::{FileBook, Verdict};
use history::History;
pub use history::{Ended, HistoryEntry};
use invoke::Running;
use pool::CallPool;
use rollback::Rollback;
use table::CallTable;

pub use invoke::{CallRequest, RunningCall};
pub use pool::DEFAULT_MAX_CALL_THREADS;
pub use typed::{TypedCall, TypedError};

/// Options for a [`Host`].
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// How files are loaded.
    pub load: LoadOptions,
    /// Per-plugin settings, by plugin name.
    pub plugins: BTreeMap<String, PluginSettings>,
    /// Largest call input, and largest answer (result, follow-ups and logs together), in
    /// bytes.
    pub max_message_bytes: usize,
    /// Largest total of log records kept from one call or one `init`, in bytes.
    pub max_log_bytes_per_call: usize,
    /// How isolated plugins are run (and whether every plugin is).
    pub isolation: IsolationOptions,
    /// Threads of the call pool, where [`Host::invoke`] runs plugin code: calls running at
    /// once through it (default 64).
    pub max_call_threads: usize,
}

impl Default for HostOptions {
    fn default() -> Self {
        HostOptions {
            load: LoadOptions::default(),
            plugins: BTreeMap::new(),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_log_bytes_per_call: DEFAULT_MAX_LOG_BYTES_PER_CALL,
            isolation: IsolationOptions::default(),
            max_call_threads: DEFAULT_MAX_CALL_THREADS,
        }
    }
}

/// The version of one plugin that serves calls right now. Holding it keeps that version
/// loaded; a reload publishes a new one, and this one drains when its last holder lets go.
/// If this version handed its state over to the next one (see `Plugin::save_state`), calls
/// through the handle go to that next version, which holds the state now.
#[derive(Clone)]
pub struct PluginHandle(Arc<Generation>);

impl std::fmt::Debug for PluginHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHandle")
            .field("plugin", &self.0.name())
            .field("generation", &self.0.number())
            .finish()
    }
}

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

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("plugins", &self.plugin_names())
            .finish_non_exhaustive()
    }
}

struct Inner {
    table: CallTable,
    state: Mutex<State>,
    /// One lock per plugin name, held while a version of that plugin is started, so that
    /// loads of one plugin happen one at a time. Nothing else takes them.
    load_locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Abandoned `init` calls still running, by plugin name.
    stuck_inits: Arc<Mutex<HashMap<String, u32>>>,
    reaper: Reaper,
    copy_dir: CopyDir,
    options: LoadOptions,
    isolation: IsolationOptions,
    budget: Budget,
    pool: CallPool,
    running: Running,
}

#[derive(Default)]
struct State {
    files: FileBook,
    /// The generation each plugin's current one replaced, kept loaded (on standby with the
    /// reaper) while the current one is on probation, to roll back to.
    standby: HashMap<String, Weak<Generation>>,
    /// Last generation number given to each plugin name; never reset, so numbers only grow.
    generations: HashMap<String, u64>,
    /// The generations each plugin served, and the copies kept to roll back to.
    history: History,
    settings: BTreeMap<String, PluginSettings>,
}

/// What [`Host::load_file`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
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
    /// Calls finished by this generation.
    pub calls: u64,
    /// Of those, calls that failed.
    #[serde(default)]
    pub errors: u64,
    /// When its probation ends (the version it replaced is kept loaded until then, to roll
    /// back to), in milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probation_until_unix_ms: Option<u64>,
    /// Calls running in it now.
    #[serde(default)]
    pub in_flight: u64,
    /// SHA-256 of the file, in hex, once known (it is computed in the background, unless a
    /// pin needs it at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Calls whose caller was told they timed out and that have not returned yet.
    pub stuck: u64,
    /// Where it runs.
    #[serde(default)]
    pub isolation: Isolation,
    /// Its worker process, when it runs in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<WorkerStatus>,
}

/// A plugin file the host knows, as [`Host::status`] reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileStatus {
    /// The file.
    pub path: PathBuf,
    /// The plugin it serves, or else the one it declared last, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    /// What it serves; `None` when it failed to load or is disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<Serving>,
    /// Why its last load failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Older generations loaded from this file that are still in memory: draining calls,
    /// being unloaded, or kept mapped by a thread of the plugin.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<Retired>,
    /// `init` calls of this file's plugin that overran `init_timeout_ms` and still run.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub stuck_inits: u32,
    /// The file is gone; it is listed because generations from it are still in memory.
    #[serde(default, skip_serializing_if = "is_false")]
    pub removed: bool,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Why [`Host::new`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// The directory for private copies cannot be created or is not safe to use.
    #[error("cannot use a private copy directory: {0}")]
    CopyDir(std::io::Error),
    /// The reaper thread cannot be started.
    #[error("cannot start the reaper thread: {0}")]
    Thread(std::io::Error),
    /// The call pool cannot be started (or `max_call_threads` is 0).
    #[error("cannot start the call pool: {0}")]
    CallPool(std::io::Error),
}

/// What a load or removal leaves to do: files that may serve a name now.
type Retry = Vec<PathBuf>;

impl Host {
    /// Creates a host with no plugins.
    pub fn new(options: HostOptions) -> Result<Host, HostError> {
        crate::types::clock::init();
        crate::runtime::handover::init();
        let copy_dir =
            CopyDir::new(options.load.copy_dir.as_deref()).map_err(HostError::CopyDir)?;
        let pool = CallPool::new(options.max_call_threads).map_err(HostError::CallPool)?;
        let reaper = Reaper::start().map_err(HostError::Thread)?;
        Ok(Host {
            inner: Arc::new(Inner {
                table: CallTable::default(),
                state: Mutex::new(State {
                    settings: options.plugins,
                    ..State::default()
                }),
                load_locks: Mutex::new(HashMap::new()),
                stuck_inits: Arc::new(Mutex::new(HashMap::new())),
                reaper,
                copy_dir,
                options: options.load,
                isolation: options.isolation,
                budget: Budget {
                    max_message: options.max_message_bytes,
                    max_log_bytes: options.max_log_bytes_per_call,
                },
                pool,
                running: Running::default(),
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.inner.state)
    }

    /// Loads the plugin file at `path`, or reloads it if its content changed since the last
    /// load. The new version is loaded and initialised next to the old one and replaces it
    /// only if that succeeds; on any error the old version keeps serving.
    pub fn load_file(&self, path: &Path) -> Result<LoadEvent, LoadError> {
        let (result, retry) = self.load_file_deferred(path);
        for path in retry {
            let _ = self.load_file(&path);
        }
        result
    }

    /// [`Host::load_file`], returning the files that should be loaded next instead of
    /// loading them (the watcher loads them in parallel).
    pub(crate) fn load_file_deferred(&self, path: &Path) -> (Result<LoadEvent, LoadError>, Retry) {
        let (result, retry) = match self.load(path) {
            Ok((event, retry)) => (Ok(event), retry),
            Err(err) => (Err(err), Vec::new()),
        };
        match &result {
            Ok(event) => log_event(path, event),
            Err(err) if err.is_repeated() => {}
            Err(err) if err.kind() == LoadErrorKind::BeingWritten => {
                tracing::debug!(file = %path.display(), "not loaded yet: {}", err.message());
            }
            Err(err) => {
                tracing::error!(file = %path.display(), "rejected: {}", err.message());
                if let Some(detail) = err.detail() {
                    tracing::debug!(file = %path.display(), "rejection detail:\n{detail}");
                }
            }
        }
        (result, retry)
    }

    fn load(&self, path: &Path) -> Result<(LoadEvent, Retry), LoadError> {
        let staged = self.stage(path).inspect_err(|err| {
            // A file still being written says nothing about its content.
            if err.kind() != LoadErrorKind::BeingWritten {
                self.state().files.reject(path, None, None, err)
            }
        })?;
        let digest = staged.digest.clone();
        let content = digest.content();
        {
            let mut state = self.state();
            match state.files.verdict(path, content) {
                Verdict::Load => {}
                Verdict::Failed(err) => return Err(err),
                Verdict::Unchanged => {
                    state.files.unchanged(path);
                    let plugin = state
                        .files
                        .get(path)
                        .and_then(|e| Some(e.declared.as_ref()?.name.clone()))
                        .unwrap_or_default();
                    return Ok((LoadEvent::Unchanged { plugin }, Vec::new()));
                }
            }
        }
        let prepared = self
            .prepare(path, staged)
            .inspect_err(|err| self.state().files.reject(path, Some(content), None, err))?;
        let metadata = prepared.metadata().cloned();
        self.start_and_commit(path, prepared, &digest, None)
            .inspect_err(|err| {
                self.state()
                    .files
                    .reject(path, Some(content), metadata.clone(), err)
            })
    }

    /// Stages the file at `path` (see `plugin_file::stage`). A pin needs its SHA-256 now;
    /// otherwise it is computed in the background.
    fn stage(&self, path: &Path) -> Result<StagedFile, LoadError> {
        let wants_sha256 = |declared: Option<&str>| {
            let state = self.state();
            match declared {
                Some(name) => state.settings.get(name).is_some_and(|s| s.sha256.is_some()),
                None => state.settings.values().any(|s| s.sha256.is_some()),
            }
        };
        crate::files::plugin_file::stage(
            path,
            &self.inner.options,
            self.inner.copy_dir.path(),
            &wants_sha256,
        )
    }

    /// Opens a staged file in this process, or keeps its copy for a worker process if its
    /// plugin is isolated (it is then never opened here). Which plugin it is, for an
    /// isolated one, comes from the name note in its file. A plugin opened here that turns
    /// out to be built with `panic = "abort"` goes to a worker process too (`placement`).
    fn prepare(&self, path: &Path, staged: StagedFile) -> Result<Prepared, LoadError> {
        let declared = staged.declared.clone();
        let isolated = match &declared {
            Some(name) => self.isolation_of(name) == Isolation::Process,
            None => self.inner.isolation.isolate_all,
        };
        if !isolated {
            // A plugin built with panic = "abort" moves to a worker, or is refused.
            let library = Library::open(path, staged)?;
            let configured = self.configured_isolation(&library.metadata().name);
            return placement::place(path, library, configured);
        }
        staged.check_structure(path)?;
        let Some(name) = declared else {
            return Err(LoadError::new(
                path,
                LoadErrorKind::InvalidMetadata,
                "cannot run in a worker process: the file has no plugin-name note (it was \
                 built against a plugin-api older than 0.1.0's note); rebuild it, or run it \
                 in-process",
            ));
        };
        Ok(Prepared::Isolated {
            copy: Arc::new(staged.keep()),
            name,
        })
    }

    /// Where the plugin named `name` is to run.
    fn isolation_of(&self, name: &str) -> Isolation {
        if self.inner.isolation.isolate_all {
            return Isolation::Process;
        }
        self.configured_isolation(name).unwrap_or_default()
    }

    /// Where the settings of plugin `name` say it runs, if they say.
    fn configured_isolation(&self, name: &str) -> Option<Isolation> {
        self.state().settings.get(name).and_then(|s| s.isolation)
    }

    /// Decides whether `library`, read from `path`, may serve its plugin, starts it, and
    /// commits it.
    fn start_and_commit(
        &self,
        path: &Path,
        prepared: Prepared,
        digest: &Digest,
        rollback: Option<&Rollback>,
    ) -> Result<(LoadEvent, Retry), LoadError> {
        let name = prepared.name().to_owned();
        let load_lock = self.load_lock(&name);
        let _one_at_a_time = lock(&load_lock);

        // Staging computed the SHA-256 if a pin wanted it; for a pin added since, it is
        // computed now, outside the lock.
        let pinned = || {
            self.state()
                .settings
                .get(&name)
                .is_some_and(|s| s.sha256.is_some())
        };
        let sha256 = digest
            .sha256_now()
            .or_else(|| pinned().then(|| digest.sha256()).flatten());
        let (number, settings) = {
            let mut state = self.state();
            // Marked bad while it was prepared (rolled back meanwhile): not loaded, unless
            // a rollback asks for it.
            if let Verdict::Failed(err) = state.files.verdict(path, digest.content()) {
                if rollback.is_none() {
                    return Err(err);
                }
            }
            state.files.claim(path, &name, Path::exists)?;
            let settings = state.settings.get(&name).cloned().unwrap_or_default();
            check_pin(path, &name, &settings, sha256)?;
            if !settings.enabled {
                let stopped = self.stop_serving(&mut state, path, &name, None);
                let metadata = prepared
                    .metadata()
                    .cloned()
                    .unwrap_or_else(|| Metadata::named(&name));
                let previous = state.files.accept(path, &metadata, digest.content(), false);
                let retry = self.unload_previous(&mut state, previous);
                drop(state);
                self.retire(stopped);
                return Ok((LoadEvent::Disabled { plugin: name }, retry));
            }
            let number = {
                let last = state.generations.entry(name.clone()).or_default();
                *last += 1;
                *last
            };
            (number, settings)
        };
        let stuck = lock(&self.inner.stuck_inits)
            .get(&name)
            .copied()
            .unwrap_or(0);
        if stuck > 0 {
            self.unreserve(&name, number);
            return Err(LoadError::new(
                path,
                LoadErrorKind::InitTimedOut,
                format!(
                    "plugin {name}: an earlier init overran init_timeout_ms and is still \
                     running; no other version is started until it returns"
                ),
            ));
        }
        let origin = match prepared {
            Prepared::Library(library) => Origin::Library(Arc::new(library)),
            Prepared::Isolated { copy, .. } => Origin::Copy(copy),
        };
        // A rollback serves a version that served before: no probation.
        let probation = match rollback {
            Some(_) => Duration::ZERO,
            None => Duration::from_millis(settings.probation_ms),
        };
        // The version serving hands its state over (to an older version too, when rolled
        // back to from its copy: its `init` sees the newer version that wrote the state).
        let handover = self
            .inner
            .table
            .current(&name)
            .map_or_else(Handover::default, |old| Handover::begin(&old));
        let generation = self
            .start_generation(&name, origin, path, number, settings, handover.previous())
            .inspect_err(|_| self.unreserve(&name, number))?;
        let metadata = generation.metadata().clone();
        let generation = Arc::new(generation);

        let (replaced, retry, standby_until) = {
            let mut state = self.state();
            let (how, rollback_of) = match rollback {
                Some(rollback) => (Ended::RolledBack, Some(rollback.of)),
                None => (Ended::Replaced, None),
            };
            let replaced = self.swap(&mut state, &name, Some(&generation), how, rollback_of);
            let on_disk = state.files.on_disk(path);
            let previous = state.files.accept(path, &metadata, digest.content(), true);
            if let Some(rollback) = rollback {
                // What the file holds now is not loaded again until it changes.
                if let Some(on_disk) = on_disk.filter(|c| *c != digest.content()) {
                    let error = rollback.error(path);
                    state.files.rolled_back(
                        &name,
                        (path, on_disk),
                        (path, digest.content()),
                        &error,
                    );
                }
            }
            let retry = self.unload_previous(&mut state, previous);
            // The version replaced stays ready to serve again while the new one is on
            // probation.
            let standby_until = match &replaced {
                Some(old) if !probation.is_zero() => {
                    let until = SystemTime::now() + probation;
                    generation.probation().start(until);
                    state.standby.insert(name.clone(), Arc::downgrade(old));
                    Some(until)
                }
                _ => {
                    state.standby.remove(&name);
                    None
                }
            };
            (replaced, retry, standby_until)
        };
        handover.commit(&generation);
        let event = match &replaced {
            Some(old) => LoadEvent::Reloaded {
                plugin: name.clone(),
                old_version: old.metadata().version.clone(),
                old_generation: old.number(),
                version: metadata.version.clone(),
                generation: number,
            },
            None => LoadEvent::Loaded {
                plugin: name.clone(),
                version: metadata.version.clone(),
                generation: number,
            },
        };
        if let Some(old) = replaced {
            // One standby per plugin: an older one is unloaded now.
            self.inner.reaper.end_standby(&name);
            self.inner.reaper.retire_at(old, standby_until);
        }
        Ok((event, retry))
    }

    /// Puts `new` into plugin `name`'s entry of the call table (or takes the entry out),
    /// and notes both in the history: the generation it replaces ended `how`. Returns that
    /// generation.
    fn swap(
        &self,
        state: &mut State,
        name: &str,
        new: Option<&Arc<Generation>>,
        how: Ended,
        rollback_of: Option<u64>,
    ) -> Option<Arc<Generation>> {
        let old = self.inner.table.replace(name, new.cloned());
        if let Some(old) = &old {
            state.history.ended(name, old.number(), how);
        }
        if let Some(new) = new {
            let keep = new.settings().keep_versions;
            state.history.served(name, new, rollback_of, keep);
        }
        old
    }

    /// The file that served `previous` now serves another name: `previous` is unloaded, and
    /// files waiting for that name are returned.
    fn unload_previous(&self, state: &mut State, previous: Option<String>) -> Retry {
        let Some(previous) = previous else {
            return Vec::new();
        };
        if let Some(old) = self.swap(state, &previous, None, Ended::Removed, None) {
            tracing::info!(plugin = %previous, generation = old.number(), "unloading: its file now declares another plugin");
            self.inner.reaper.retire(old);
        }
        state.files.waiting_for(&previous)
    }

    /// Stops serving `name` from `path`, if `path` serves it; returns the generation taken
    /// out of the table.
    fn stop_serving(
        &self,
        state: &mut State,
        path: &Path,
        name: &str,
        error: Option<&LoadError>,
    ) -> Option<Arc<Generation>> {
        let serves = state.files.get(path)?.serves.as_deref() == Some(name);
        if !serves {
            return None;
        }
        state.files.stop_serving(path, error);
        self.swap(state, name, None, Ended::Disabled, None)
    }

    fn retire(&self, generation: Option<Arc<Generation>>) {
        if let Some(generation) = generation {
            self.inner.reaper.retire(generation);
        }
    }

    /// Gives back a generation number that was reserved for a start that did not happen.
    fn unreserve(&self, name: &str, number: u64) {
        let mut state = self.state();
        if state.generations.get(name) == Some(&number) {
            state.generations.insert(name.to_owned(), number - 1);
        }
    }

    fn load_lock(&self, name: &str) -> Arc<Mutex<()>> {
        lock(&self.inner.load_locks)
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// Runs `init` for a new generation on a thread of its own and waits up to the plugin's
    /// `init_timeout_ms`. An `init` that overruns is abandoned: the load fails, and the
    /// thread is counted in `stuck_inits` until it returns (its instance is then dropped).
    fn start_generation(
        &self,
        name: &str,
        origin: Origin,
        path: &Path,
        number: u64,
        settings: PluginSettings,
        previous: Option<&PreviousState>,
    ) -> Result<Generation, LoadError> {
        let library = match origin {
            Origin::Library(library) => library,
            // In a worker: its init is bounded by killing the worker, no thread is left.
            Origin::Copy(copy) => {
                let spec = WorkerSpec {
                    plugin: name.to_owned(),
                    program: self.inner.isolation.program(),
                    copy,
                    source: path.to_owned(),
                    generation: number,
                    settings,
                    budget: self.inner.budget,
                };
                let generation = Generation::start_isolated(spec, previous)?;
                return rollout::self_test(generation, path);
            }
        };
        let name = library.metadata().name.clone();
        let timeout = Duration::from_millis(settings.init_timeout_ms);
        let budget = self.inner.budget;
        let previous = previous.cloned();
        let outcome = Arc::new((Mutex::new(Init::Running), Condvar::new()));
        let spawned = {
            let (outcome, source, stuck, name) = (
                outcome.clone(),
                path.to_owned(),
                self.inner.stuck_inits.clone(),
                name.clone(),
            );
            std::thread::Builder::new()
                .name(format!("init-{name}"))
                .spawn(move || {
                    let started = Instant::now();
                    let result = Generation::start(
                        library,
                        &source,
                        number,
                        (settings, budget),
                        previous.as_ref(),
                    )
                    .and_then(|generation| rollout::self_test(generation, &source));
                    let (state, ready) = &*outcome;
                    let mut state = lock(state);
                    if matches!(*state, Init::Abandoned) {
                        drop(state);
                        drop(result);
                        if let Some(count) = lock(&stuck).get_mut(&name) {
                            *count = count.saturating_sub(1);
                        }
                        tracing::warn!(plugin = %name, generation = number,
                            "abandoned init returned after {} ms; its instance was dropped",
                            started.elapsed().as_millis());
                    } else {
                        *state = Init::Done(Box::new(result));
                        ready.notify_one();
                    }
                })
        };
        if let Err(err) = spawned {
            return Err(LoadError::new(
                path,
                LoadErrorKind::Host,
                format!("cannot start a thread for init: {err}"),
            ));
        }
        let (state, ready) = &*outcome;
        let deadline = Instant::now() + timeout;
        let mut state = lock(state);
        loop {
            match std::mem::replace(&mut *state, Init::Running) {
                Init::Done(result) => return *result,
                Init::Running | Init::Abandoned => {}
            }
            let now = Instant::now();
            if now >= deadline {
                *state = Init::Abandoned;
                *lock(&self.inner.stuck_inits)
                    .entry(name.clone())
                    .or_default() += 1;
                return Err(LoadError::new(
                    path,
                    LoadErrorKind::InitTimedOut,
                    format!(
                        "plugin {name}: init did not return within {} ms (init_timeout_ms); the \
                         load is refused and its thread is counted as stuck",
                        timeout.as_millis()
                    ),
                ));
            }
            state = ready
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Unloads whatever plugin the file at `path` serves, and forgets the file. Calls in
    /// flight finish on the version they started on. Returns the plugin's name.
    pub fn remove_file(&self, path: &Path) -> Option<String> {
        let (name, retry) = self.remove_file_deferred(path);
        for path in retry {
            let _ = self.load_file(&path);
        }
        name
    }

    /// [`Host::remove_file`], returning the files that may serve the name now instead of
    /// loading them.
    pub(crate) fn remove_file_deferred(&self, path: &Path) -> (Option<String>, Retry) {
        let (name, retry, old) = {
            let mut state = self.state();
            let (name, retry) = state.files.remove(path);
            let old = name
                .as_deref()
                .and_then(|n| self.swap(&mut state, n, None, Ended::Removed, None));
            (name, retry, old)
        };
        if let (Some(name), Some(old)) = (&name, old) {
            tracing::info!(plugin = %name, generation = old.number(), file = %path.display(), "removed: unloading");
            self.inner.reaper.retire(old);
        }
        (name, retry)
    }

    /// Waits up to `wait` until every version replaced or removed so far has finished its
    /// calls and been dropped, and its library closed (unloading happens in the background,
    /// see the module docs). Returns whether that happened in time.
    pub fn wait_for_unloads(&self, wait: Duration) -> bool {
        self.inner.reaper.flush(wait)
    }

    /// Unloads every plugin and waits up to `wait` for the versions still running calls to
    /// finish and be unloaded. Returns whether everything was unloaded in time.
    pub fn unload_all(&self, wait: Duration) -> bool {
        self.inner.reaper.end_standbys();
        let old = {
            let mut state = self.state();
            state.files.clear();
            self.inner.table.clear()
        };
        for generation in old {
            self.inner.reaper.retire(generation);
        }
        self.inner.reaper.flush(wait)
    }

    /// Replaces the per-plugin settings. Plugins whose configuration changed are started
    /// again from the library already loaded (a new generation); plugins now disabled, or no
    /// longer matching a pinned SHA-256, are unloaded; files whose plugin's settings changed
    /// and that do not serve are loaded again.
    pub fn apply_settings(&self, settings: BTreeMap<String, PluginSettings>) {
        let (restarts, retry) = self.apply_settings_deferred(settings);
        for (name, current) in restarts {
            self.restart(&name, &current);
        }
        for path in retry {
            let _ = self.load_file(&path);
        }
    }

    fn apply_settings_deferred(
        &self,
        settings: BTreeMap<String, PluginSettings>,
    ) -> (Vec<(String, Arc<Generation>)>, Retry) {
        let mut restarts = Vec::new();
        let mut retry = Vec::new();
        let mut stopped = Vec::new();
        // A pin checks the SHA-256 of what serves: compute any left for later before taking
        // the lock.
        for (name, new) in &settings {
            if new.sha256.is_some() {
                if let Some(current) = self.inner.table.current(name) {
                    current.digest().sha256();
                }
            }
        }
        {
            let mut state = self.state();
            let old = std::mem::replace(&mut state.settings, settings);
            let names: BTreeSet<String> =
                old.keys().chain(state.settings.keys()).cloned().collect();
            for name in names {
                let new = state.settings.get(&name).cloned().unwrap_or_default();
                if old.get(&name).cloned().unwrap_or_default() == new {
                    continue;
                }
                if let Some(current) = self.inner.table.current(&name) {
                    let path = current.source().to_owned();
                    let sha256 = current.digest().sha256_now();
                    let actual = sha256.map_or_else(|| "unknown".to_owned(), |s| hex(&s));
                    let isolation = if self.inner.isolation.isolate_all {
                        Isolation::Process
                    } else {
                        placement::wanted(new.isolation, current.metadata())
                    };
                    if !new.enabled {
                        tracing::info!(plugin = %name, generation = current.number(), "unloading: disabled in the configuration");
                        stopped.extend(self.stop_serving(&mut state, &path, &name, None));
                    } else if let Err(err) = check_pin(&path, &name, &new, sha256) {
                        tracing::error!(plugin = %name, generation = current.number(), "unloading: its SHA-256 {actual} does not match the pin in the configuration");
                        stopped.extend(self.stop_serving(&mut state, &path, &name, Some(&err)));
                    } else if current.isolation() != isolation {
                        // In or out of a worker: loaded again from its file, as a reload.
                        tracing::info!(plugin = %name, generation = current.number(), "isolation changed to {isolation}: loading it again");
                        retry.extend(state.files.reload(&path));
                    } else if current.settings() != &new {
                        restarts.push((name.clone(), current));
                    }
                }
                retry.extend(state.files.retry_declaring(&name));
            }
        }
        for generation in stopped {
            self.inner.reaper.retire(generation);
        }
        (restarts, retry)
    }

    /// Starts `current`'s library again, with its plugin's current settings, as a new
    /// generation that replaces it (unless something else replaced it meanwhile).
    fn restart(&self, name: &str, current: &Arc<Generation>) {
        let load_lock = self.load_lock(name);
        let _one_at_a_time = lock(&load_lock);
        let (number, settings) = {
            let mut state = self.state();
            let still = self
                .inner
                .table
                .current(name)
                .is_some_and(|c| Arc::ptr_eq(&c, current));
            if !still {
                return;
            }
            let settings = state.settings.get(name).cloned().unwrap_or_default();
            let last = state.generations.entry(name.to_owned()).or_default();
            *last += 1;
            (*last, settings)
        };
        let handover = Handover::begin(current);
        let started = self.start_generation(
            name,
            current.origin(),
            current.source(),
            number,
            settings,
            handover.previous(),
        );
        let generation = match started {
            Ok(generation) => Arc::new(generation),
            Err(err) => {
                self.unreserve(name, number);
                tracing::error!(plugin = %name, "new configuration rejected, the old one keeps serving: {}", err.message());
                return;
            }
        };
        let replaced = {
            let mut state = self.state();
            let still = self
                .inner
                .table
                .current(name)
                .is_some_and(|c| Arc::ptr_eq(&c, current));
            if still {
                self.swap(&mut state, name, Some(&generation), Ended::Replaced, None)
            } else {
                Some(generation.clone())
            }
        };
        if replaced.as_ref().is_some_and(|r| Arc::ptr_eq(r, current)) {
            handover.commit(&generation);
        }
        if replaced.as_ref().is_some_and(|r| Arc::ptr_eq(r, current)) {
            tracing::info!(plugin = %name, old_generation = current.number(), generation = number, "reconfigured");
        }
        self.retire(replaced);
    }

    /// Starts plugin `plugin` afresh (`host restart`): an isolated plugin gets a new worker
    /// process, and a quarantine is lifted; an in-process one is started again from its
    /// library as a new generation. Returns what was done, in one line.
    pub fn restart_plugin(&self, plugin: &str) -> Result<String, CallError> {
        let current = self
            .inner
            .table
            .current(plugin)
            .ok_or_else(|| self.unknown_plugin(plugin))?;
        if let Some(restarted) = current.restart_worker() {
            let pid = restarted?;
            tracing::info!(%plugin, generation = current.number(), worker_pid = pid, "restarted by request");
            return Ok(format!(
                "restarted plugin {plugin} (generation {}): worker pid {pid}",
                current.number()
            ));
        }
        self.restart(plugin, &current);
        match self.inner.table.current(plugin) {
            Some(now) if !Arc::ptr_eq(&now, &current) => Ok(format!(
                "restarted plugin {plugin}: generation {} -> {}",
                current.number(),
                now.number()
            )),
            _ => Err(CallError::new(
                CallErrorKind::Internal,
                format!("plugin {plugin} could not be started again; the old generation keeps serving (see the host's log)"),
            )),
        }
    }

    pub(crate) fn check_input(&self, input: &str) -> Result<(), CallError> {
        self.check_input_len(input.len())
    }

    pub(crate) fn check_input_len(&self, len: usize) -> Result<(), CallError> {
        let max = self.inner.budget.max_message;
        if len > max {
            return Err(CallError::new(
                CallErrorKind::InvalidRequest,
                format!("input of {len} bytes is over the limit of {max} (max_message_bytes)"),
            ));
        }
        Ok(())
    }

    /// A handle for fast calls of plugin `plugin`'s typed callback `callback`: bytes in,
    /// bytes out, no JSON (see [`TypedCall`](crate::TypedCall)). It follows reloads of the
    /// plugin. Fails if no plugin of that name is loaded, or it has no such typed callback.
    pub fn typed(&self, plugin: &str, callback: &str) -> Result<crate::TypedCall, CallError> {
        let slot = self.slot(plugin)?;
        crate::registry::typed::TypedCall::new(self.clone(), plugin, callback, slot)
    }

    pub(crate) fn slot(&self, plugin: &str) -> Result<table::Slot, CallError> {
        self.inner
            .table
            .slot(plugin)
            .ok_or_else(|| self.unknown_plugin(plugin))
    }

    /// The version of `plugin` serving calls now.
    pub fn plugin(&self, plugin: &str) -> Result<PluginHandle, CallError> {
        match self.inner.table.current(plugin) {
            Some(generation) => Ok(PluginHandle(generation)),
            None => Err(self.unknown_plugin(plugin)),
        }
    }

    fn unknown_plugin(&self, plugin: &str) -> CallError {
        let names = self.plugin_names();
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

    /// Every plugin file the host knows, with what it serves or why it does not, and the
    /// older generations from it still in memory.
    pub fn status(&self) -> Vec<FileStatus> {
        // SHA-256s left for later are computed now, before any lock is taken.
        for (_, generation) in self.inner.table.snapshot() {
            generation.digest().sha256();
        }
        let mut retired = self.inner.reaper.retired();
        let stuck_inits = lock(&self.inner.stuck_inits).clone();
        let state = self.state();
        let mut files: Vec<FileStatus> = state
            .files
            .iter()
            .map(|(path, entry)| {
                let serving = entry
                    .serves
                    .as_deref()
                    .and_then(|name| self.inner.table.current(name))
                    .filter(|g| g.source() == path);
                let name = serving
                    .as_ref()
                    .map(|g| g.name().to_owned())
                    .or_else(|| Some(entry.declared.as_ref()?.name.clone()));
                FileStatus {
                    path: path.clone(),
                    metadata: serving
                        .as_ref()
                        .map(|g| g.metadata().clone())
                        .or_else(|| entry.declared.clone()),
                    serving: serving.as_ref().map(|g| Serving {
                        generation: g.number(),
                        loaded_at_unix_ms: unix_ms(g.loaded_at()),
                        calls: g.calls(),
                        errors: g.errors(),
                        probation_until_unix_ms: g.probation().until_unix_ms(SystemTime::now()),
                        in_flight: g.in_flight(),
                        sha256: g.digest().sha256_now().map(|s| hex(&s)),
                        stuck: g.stuck(),
                        isolation: g.isolation(),
                        worker: g.worker_status(),
                    }),
                    last_error: entry.error.as_ref().map(|e| e.message().to_owned()),
                    retired: take_where(&mut retired, |r| r.path == *path),
                    stuck_inits: name.and_then(|n| stuck_inits.get(&n).copied()).unwrap_or(0),
                    removed: false,
                }
            })
            .collect();
        drop(state);
        while let Some(first) = retired.first() {
            let path = first.path.clone();
            files.push(FileStatus {
                retired: take_where(&mut retired, |r| r.path == path),
                path,
                metadata: None,
                serving: None,
                last_error: None,
                stuck_inits: 0,
                removed: true,
            });
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        files
    }

    /// What `read` takes from plugin `name`'s settings, without copying them (it runs
    /// under the state lock: no plugin code, nothing slow).
    pub(crate) fn with_settings<R>(
        &self,
        name: &str,
        read: impl FnOnce(&PluginSettings) -> R,
    ) -> R {
        static DEFAULT: OnceLock<PluginSettings> = OnceLock::new();
        let state = self.state();
        read(
            state
                .settings
                .get(name)
                .unwrap_or_else(|| DEFAULT.get_or_init(PluginSettings::default)),
        )
    }

    /// The names of the plugins being served.
    pub fn plugin_names(&self) -> Vec<String> {
        self.inner.table.names()
    }

    /// The plugin files the host knows.
    pub(crate) fn known_files(&self) -> Vec<PathBuf> {
        self.state().files.paths()
    }
}

/// A version of a plugin ready to start.
enum Prepared {
    /// Opened in this process.
    Library(Library),
    /// Staged for worker processes, which open it; `name` is what its note declares.
    Isolated { copy: Arc<KeptCopy>, name: String },
}

impl Prepared {
    fn name(&self) -> &str {
        match self {
            Prepared::Library(library) => &library.metadata().name,
            Prepared::Isolated { name, .. } => name,
        }
    }

    /// The metadata, once known (an isolated plugin's comes from its worker).
    fn metadata(&self) -> Option<&Metadata> {
        match self {
            Prepared::Library(library) => Some(library.metadata()),
            Prepared::Isolated { .. } => None,
        }
    }
}

/// The state of an `init` running on its own thread.
enum Init {
    Running,
    Done(Box<Result<Generation, LoadError>>),
    /// Its caller stopped waiting; the thread drops whatever it returns.
    Abandoned,
}

fn check_pin(
    path: &Path,
    name: &str,
    settings: &PluginSettings,
    sha256: Option<[u8; 32]>,
) -> Result<(), LoadError> {
    let Some(pinned) = &settings.sha256 else {
        return Ok(());
    };
    let Some(sha256) = sha256 else {
        return Err(LoadError::new(
            path,
            LoadErrorKind::HashMismatch,
            format!("plugin {name}: host.toml pins its SHA-256, which could not be computed"),
        ));
    };
    let actual = hex(&sha256);
    if pinned.eq_ignore_ascii_case(&actual) {
        return Ok(());
    }
    Err(LoadError::new(
        path,
        LoadErrorKind::HashMismatch,
        format!("plugin {name}: SHA-256 is {actual}, but host.toml pins {pinned}"),
    ))
}

fn take_where<T>(items: &mut Vec<T>, mut matches: impl FnMut(&T) -> bool) -> Vec<T> {
    let (taken, kept) = std::mem::take(items).into_iter().partition(|i| matches(i));
    *items = kept;
    taken
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
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

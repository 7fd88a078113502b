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

pub(crate) mod call_stats;
mod files;
mod history;
mod invoke;
mod load;
mod pinned;
mod placement;
mod pool;
mod published_pins;
mod rollback;
mod settings;
mod status;
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
use crate::runtime::reaper::{unix_ms, Reaper, Retired, RetiredState};
use crate::runtime::rollout;
use crate::types::call::{Budget, CallError, CallErrorKind};
use crate::types::settings::Isolation;
use crate::types::settings::{
    PluginSettings, DEFAULT_MAX_LOG_BYTES_PER_CALL, DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MAX_PINNED_VERSIONS,
};
use files::{FileBook, Verdict};
use history::History;
pub use history::{Ended, HistoryEntry};
use invoke::Running;
use pool::CallPool;
use rollback::Rollback;
use table::CallTable;

pub use call_stats::{CallSeries, CallStats, LATENCY_BUCKETS_US};
pub use invoke::{CallRequest, RunningCall};
pub use pinned::Pinned;
pub use pool::DEFAULT_MAX_CALL_THREADS;
pub use status::{FileStatus, Serving};
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
    /// Shared with the supervisors of isolated generations, which count crashes in it.
    counters: Arc<call_stats::Counters>,
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
    /// Plugins that reached their `max_pinned_versions`, with the reason: they run in a
    /// worker process (or their reloads are refused) until the host restarts.
    pin_limits: HashMap<String, String>,
    /// SHA-256s (hex) the plugin catalogue published, by plugin name: a file of that plugin
    /// with other content is refused, like a host.toml pin (`published_pins.rs`).
    published_pins: HashMap<String, String>,
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
                counters: Arc::default(),
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.inner.state)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

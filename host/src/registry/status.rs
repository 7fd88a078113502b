//! What the host serves, as `host list` shows it: each plugin file, its current generation
//! and its counters, and the older generations still in memory.

use super::*;

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
    /// Replaced versions of this file's plugin still mapped after their unload, with the
    /// memory they hold, and whether that moved the plugin to a worker process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned: Option<Pinned>,
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

impl Host {
    /// The version of `plugin` serving calls now.
    pub fn plugin(&self, plugin: &str) -> Result<PluginHandle, CallError> {
        match self.inner.table.current(plugin) {
            Some(generation) => Ok(PluginHandle(generation)),
            None => Err(self.unknown_plugin(plugin)),
        }
    }

    pub(super) fn unknown_plugin(&self, plugin: &str) -> CallError {
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
        let all_retired = retired.clone();
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
                    pinned: name
                        .as_deref()
                        .and_then(|n| self.pinned_status(&state, &all_retired, n)),
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
                pinned: None,
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

fn take_where<T>(items: &mut Vec<T>, mut matches: impl FnMut(&T) -> bool) -> Vec<T> {
    let (taken, kept) = std::mem::take(items).into_iter().partition(|i| matches(i));
    *items = kept;
    taken
}

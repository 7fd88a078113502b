//! Plain settings every layer reads: a plugin's settings (`[plugins.NAME]` in host.toml)
//! and the host-wide defaults and bounds. No behaviour lives here; `services::config`
//! reads and checks host.toml, and each layer applies what concerns it.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::sandbox::SandboxSettings;

/// The most generations a plugin's history keeps, and so the most versions
/// `keep_versions` may keep.
pub const MAX_RECORDS: usize = 32;

/// The default of `max_message_bytes`: 16 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 << 20;
/// The default of `max_log_bytes_per_call`: 256 KiB.
pub const DEFAULT_MAX_LOG_BYTES_PER_CALL: usize = 256 << 10;

/// The default of `max_pinned_versions`.
pub const DEFAULT_MAX_PINNED_VERSIONS: u32 = 3;

/// Settings of one plugin, `[plugins.NAME]` in `host.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginSettings {
    /// Whether the plugin is loaded at all.
    pub enabled: bool,
    /// Handed to the plugin's `init` as JSON.
    pub config: toml::Table,
    /// If set, only a file with this SHA-256 (hex) is loaded for this plugin.
    pub sha256: Option<String>,
    /// How long a call may run before its caller gets a timeout error, in milliseconds.
    pub timeout_ms: u64,
    /// How many calls may run at once; callers past it get a `busy` error. No limit when
    /// absent. A call whose caller was told it timed out no longer counts.
    pub max_concurrent_calls: Option<usize>,
    /// How long `init` may run, in milliseconds; past it the load is refused and the thread
    /// running `init` is counted as stuck (in a worker process: the worker is killed).
    pub init_timeout_ms: u64,
    /// Where the plugin runs: in the host's process, or in a worker process of its own
    /// that may crash without taking the host down. When not set: in the host's process,
    /// unless the plugin was built with `panic = "abort"` (its first panic would end the
    /// host), which then runs in a worker process; set to in-process, such a plugin is
    /// refused.
    pub isolation: Option<Isolation>,
    /// Worker processes only: the most address space the worker may use, in MiB
    /// (`RLIMIT_AS`); an allocation past it fails and the call gets a `crashed` error
    /// saying so. No limit when absent.
    pub max_memory_mb: Option<u64>,
    /// Worker processes only: how long after its timeout a call that has not returned gets
    /// before its worker is killed and replaced.
    pub kill_after_ms: u64,
    /// Worker processes only: this many crashes within `restart_window_ms` quarantine the
    /// plugin until its file changes or `host restart` is run.
    pub max_restarts: u32,
    /// Worker processes only: the window in which crashes count towards `max_restarts`.
    pub restart_window_ms: u64,
    /// After a new version replaces the old one, the old one stays loaded this long, ready
    /// to serve again if the new one fails (0: no probation, the old one is unloaded at
    /// once).
    pub probation_ms: u64,
    /// During probation, this many failed calls of the kinds in `rollback_on` roll the new
    /// version back.
    pub rollback_after: u32,
    /// The error kinds that count towards `rollback_after`: `panicked` (a plugin error kind),
    /// `crashed` and `timeout` (the host's), or any other plugin error kind (`failed` ...).
    pub rollback_on: Vec<String>,
    /// The private copies of this many good versions before the one that serves are kept,
    /// for `host rollback` (at most 32, the length of a plugin's history).
    pub keep_versions: usize,
    /// Tasks only: attempts before one of this plugin's tasks is `failed` (default: the
    /// `[tasks]` setting).
    pub task_max_attempts: Option<u32>,
    /// Tasks only: the delays before each retry of this plugin's tasks (default: the
    /// `[tasks]` setting).
    #[serde(default, with = "crate::types::durations::optional")]
    pub task_retry_delays: Option<Vec<std::time::Duration>>,
    /// Tasks only: this plugin's task calls running at once (default: the `[tasks]`
    /// setting `max_running_per_plugin`).
    pub max_running_tasks: Option<usize>,
    /// When a version that hands over state is replaced, new calls wait while its running
    /// calls finish, for at most this long; its state is then taken anyway, and an update a
    /// call still running makes after that is not handed over (logged).
    pub handover_timeout_ms: u64,
    /// Replaced versions of this plugin that stay mapped after their unload (a thread or a
    /// thread-local destructor of the plugin keeps each) before its next version runs in a
    /// worker process instead, whose exit frees everything (logged once, kept until the
    /// host restarts); with `isolation = "in-process"` set, further reloads are refused
    /// instead. At most one more (the version serving when the limit is reached) can stay.
    pub max_pinned_versions: u32,
    /// When a version is retired (replaced or removed), after its calls drained: how long
    /// the host waits for the threads it started with `spawn` to end after its stop signal
    /// (plugin ABI 1.4), and, in a worker process, for the worker to exit before it is
    /// killed. The library is closed after that either way.
    pub stop_timeout_ms: u64,
    /// Worker processes only: what the worker may read, write, run and connect to
    /// (`[plugins.NAME.sandbox]`, applied before the plugin is opened). A plugin with a
    /// sandbox that would run in the host's process is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxSettings>,
}

/// Where a plugin's code runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// In the host's own process: the fastest calls, but a plugin that crashes takes the
    /// host with it.
    #[default]
    InProcess,
    /// In a worker process of its own, supervised by the host.
    Process,
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Isolation::InProcess => "in-process",
            Isolation::Process => "process",
        })
    }
}

impl Default for PluginSettings {
    fn default() -> Self {
        PluginSettings {
            enabled: true,
            config: toml::Table::new(),
            sha256: None,
            timeout_ms: 30_000,
            max_concurrent_calls: None,
            init_timeout_ms: 10_000,
            isolation: None,
            max_memory_mb: None,
            kill_after_ms: 2_000,
            max_restarts: 5,
            restart_window_ms: 60_000,
            probation_ms: 30_000,
            rollback_after: 3,
            rollback_on: vec!["panicked".to_owned(), "crashed".to_owned()],
            keep_versions: 3,
            handover_timeout_ms: 1_000,
            max_pinned_versions: DEFAULT_MAX_PINNED_VERSIONS,
            stop_timeout_ms: 5_000,
            task_max_attempts: None,
            task_retry_delays: None,
            max_running_tasks: None,
            sandbox: None,
        }
    }
}

impl PluginSettings {
    /// The plugin configuration as JSON text.
    pub fn config_json(&self) -> String {
        serde_json::to_string(&self.config).unwrap_or_else(|_| "{}".to_owned())
    }
}

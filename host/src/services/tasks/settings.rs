//! The settings of the task runner (`[tasks]` in host.toml) and the schedules host.toml
//! declares (`[[schedule]]`). Durations are written as people write them: `30s`, `5m`,
//! `1h 30m`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::schedule::{Schedule, ScheduleError};

/// `[tasks]` in host.toml: how tasks run, and how long their records are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct TaskSettings {
    /// Whether the host runs tasks at all (default true).
    pub enabled: bool,
    /// Task calls running at once, over all plugins: the runner's threads (default 8).
    pub max_running: usize,
    /// Task calls of one plugin running at once (default 4); a plugin's own
    /// `max_running_tasks` overrides it.
    pub max_running_per_plugin: usize,
    /// Attempts before a task is `failed`, the first included (default 4: three retries).
    pub max_attempts: u32,
    /// The delays before each retry; the last one repeats (default 30s, 1h, 6h, 12h, 24h).
    /// Each is moved by up to ±10% at random, so tasks that failed together do not all
    /// come back at the same instant.
    #[serde(with = "durations")]
    pub retry_delays: Vec<Duration>,
    /// No retry comes sooner than this, whatever the delays of the task, its plugin or
    /// `retry_delays` say (default 1s; at least 1ms): `retry_delays = []` with a large
    /// `max_attempts` would otherwise retry a failing task in a hot loop.
    #[serde(with = "duration")]
    pub min_retry_delay: Duration,
    /// How deep a chain of follow-ups may go: a follow-up deeper is refused (default 10).
    pub max_depth: u32,
    /// Follow-ups kept from one call; the rest are refused (default 100).
    pub max_follow_ups_per_call: usize,
    /// Active (queued or running) tasks one plugin may have; a submit past it is refused
    /// with `busy`, a follow-up is recorded as refused (default 10,000).
    pub max_queued_per_plugin: u64,
    /// The longest result, error and logs kept of a task's call, each, in bytes (default
    /// 64 KiB).
    pub max_result_bytes: usize,
    /// Ended tasks are deleted this long after they ended (default 30 days; 0: never).
    pub keep_days: u64,
    /// At most this many ended tasks are kept, the newest (default 100,000; 0: no limit).
    pub keep_max: u64,
    /// A schedule whose time passed while the host was down fires once at start (default
    /// true); false skips it.
    pub run_missed: bool,
    /// Tasks of a plugin the host does not serve wait for it (a file replaced, a plugin
    /// not yet installed); after this long without it (from when they were due, and from
    /// when the host last served it), they are `failed`, naming the plugin (default 24h;
    /// 0: they wait for ever).
    #[serde(with = "one_duration")]
    pub orphan_after: Duration,
    /// The most tasks one `tasks` answer holds; more come in further pages (default 1,000).
    pub list_page_max: usize,
    /// A PostgreSQL database shared by a fleet of hosts (`postgres://USER@HOST:PORT/DB`);
    /// without it, the SQLite file in the state directory. The environment variable
    /// `HOST_DATABASE_URL` wins over this key when both are set.
    pub database: Option<String>,
    /// Connections to `database` this host keeps at most (default 8); a caller waits for a
    /// free one up to `connect_timeout_ms`, then gets an error naming this setting.
    pub pool_size: usize,
    /// How long connecting to `database` (or waiting for a pooled connection) may take
    /// (default 5,000 ms).
    pub connect_timeout_ms: u64,
    /// A claimed task's lease on `database`: the host that runs it extends it every third of
    /// this; a task whose lease expired is taken back by another host (default 30,000 ms).
    pub lease_ms: u64,
    /// How often an idle host looks for due tasks in `database` when no notification woke
    /// it (default 1,000 ms).
    pub poll_interval_ms: u64,
}

impl Default for TaskSettings {
    fn default() -> Self {
        TaskSettings {
            enabled: true,
            max_running: 8,
            max_running_per_plugin: 4,
            max_attempts: 4,
            retry_delays: [30, 3_600, 6 * 3_600, 12 * 3_600, 24 * 3_600]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            min_retry_delay: Duration::from_secs(1),
            max_depth: 10,
            max_follow_ups_per_call: 100,
            max_queued_per_plugin: 10_000,
            max_result_bytes: 64 << 10,
            keep_days: 30,
            keep_max: 100_000,
            run_missed: true,
            orphan_after: Duration::from_secs(24 * 3_600),
            list_page_max: 1_000,
            database: None,
            pool_size: 8,
            connect_timeout_ms: 5_000,
            lease_ms: 30_000,
            poll_interval_ms: 1_000,
        }
    }
}

/// `[[schedule]]` in host.toml: a call the host makes periodically, as a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Its name, unique (default `PLUGIN.CALLBACK`).
    #[serde(default)]
    pub name: Option<String>,
    /// The plugin to call.
    pub plugin: String,
    /// The callback (default `execute`).
    #[serde(default = "execute")]
    pub callback: String,
    /// Its input (default `null`).
    #[serde(default)]
    pub input: Option<toml::Value>,
    /// Fire every this long (`"5m"`), aligned to the clock.
    #[serde(default)]
    pub every: Option<String>,
    /// Fire at these times (`"0 3 * * *"`), in UTC or in `timezone`.
    #[serde(default)]
    pub cron: Option<String>,
    /// The IANA time zone `cron` is read in (`"Europe/Berlin"`; default UTC).
    #[serde(default)]
    pub timezone: Option<String>,
}

fn execute() -> String {
    "execute".to_owned()
}

impl ScheduleConfig {
    /// Its name.
    pub fn name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{}.{}", self.plugin, self.callback))
    }

    /// When it fires: its `every` or `cron` (in its `timezone`), a period spread by the
    /// offset of its name.
    ///
    /// # Errors
    ///
    /// As [`Schedule::parse`].
    pub fn schedule(&self) -> Result<Schedule, ScheduleError> {
        Schedule::parse(
            self.every.as_deref(),
            self.cron.as_deref(),
            self.timezone.as_deref(),
        )
        .map(|schedule| schedule.spread(&self.name()))
    }

    /// Its input as JSON text.
    pub fn input_json(&self) -> String {
        self.input
            .as_ref()
            .and_then(|v| serde_json::to_string(v).ok())
            .unwrap_or_else(|| "null".to_owned())
    }
}

// The `[tasks]` durations are read as the plugin settings' are.
use crate::types::durations::{list as durations, one as one_duration, one as duration};

#[cfg(test)]
mod tests {
    use crate::services::config::PluginSettings;

    #[test]
    fn plugin_settings_survive_json_with_and_without_retry_delays() {
        // Worker processes get their settings as JSON, where `None` is `null`.
        let mut settings = PluginSettings::default();
        let json = serde_json::to_string(&settings).unwrap();
        assert_eq!(
            serde_json::from_str::<PluginSettings>(&json).unwrap(),
            settings
        );
        settings.task_retry_delays = Some(vec![std::time::Duration::from_millis(1500)]);
        let json = serde_json::to_string(&settings).unwrap();
        assert!(
            json.contains(r#""task_retry_delays":["1s 500ms"]"#),
            "{json}"
        );
        assert_eq!(
            serde_json::from_str::<PluginSettings>(&json).unwrap(),
            settings
        );
    }
}

//! Configuration: `host.toml`, and the per-plugin settings the [`Host`](crate::Host) applies.
//!
//! ```toml
//! plugins_dir = "plugins"          # default: ./plugins
//! state_dir = "/var/lib/plugin-host" # the task database, one host at a time (default: one per
//!                                  # socket, see host::state_dir::default_state_dir)
//! socket = "/run/user/1000/plugin-host.sock"
//! log_format = "text"              # or "json"
//! max_message_bytes = 16777216     # largest request, or answer (result, follow-ups, logs)
//! max_log_bytes_per_call = 262144  # log records kept from one call
//! max_connections = 1024           # open control connections
//! max_call_threads = 64            # plugin calls running at once (socket and tasks)
//! request_timeout_ms = 10000       # a started request must arrive whole within this
//! idle_timeout_ms = 300000         # a connection silent this long is closed
//! write_timeout_ms = 30000         # a client must take its answer within this
//! max_buffered_bytes = 268435456   # request and answer buffers of all connections together
//! shutdown_timeout_ms = 10000      # calls in flight may finish within this at shutdown
//!
//! [plugins.hello]
//! enabled = true
//! config = { greeting = "Hi" }     # handed to the plugin's init as JSON
//! timeout_ms = 30000               # callers get a timeout error after this
//! max_concurrent_calls = 8         # callers past this get a busy error (default: no limit)
//! init_timeout_ms = 10000          # an init running longer is abandoned, the load refused
//! isolation = "process"            # or "in-process"; default: in-process, but process for
//!                                  #   a plugin built with panic = "abort", which
//!                                  #   "in-process" refuses
//! max_memory_mb = 512              # worker processes: address space limit (RLIMIT_AS)
//! kill_after_ms = 2000             # worker processes: kill a call this long past its timeout
//! max_restarts = 5                 # worker processes: crashes within restart_window_ms
//! restart_window_ms = 60000        #   that quarantine the plugin
//! probation_ms = 30000             # a replaced version stays loaded this long, to roll back to
//! rollback_after = 3               # failed calls of these kinds during probation roll back:
//! rollback_on = ["panicked", "crashed"]
//! keep_versions = 3                # earlier versions whose copies are kept for `host rollback` (<= 32)
//! handover_timeout_ms = 1000       # a state handover waits this long for calls to drain
//! max_pinned_versions = 3          # replaced versions still mapped after unload (a thread of the
//!                                  #   plugin keeps them) before its next version runs in a worker
//!                                  #   process; with isolation = "in-process", reloads are refused
//! stop_timeout_ms = 5000           # a retired version's threads get this long to end
//! sha256 = "..."                   # optional: only this exact file is loaded
//!
//! [plugins.hello.sandbox]          # worker processes only: what the worker may touch
//! read = ["/var/log"]              # beside what a worker itself needs; absolute paths
//! write = ["/var/tmp/hello"]
//! exec = []                        # programs it may run
//! net = "none"                     # or "loopback" (IPv4/IPv6 sockets) or "any"
//! best_effort = false              # true: run with what the kernel offers (logged)
//! task_max_attempts = 4            # tasks of this plugin: attempts (default: [tasks])
//! task_retry_delays = ["10s", "1m"]  # tasks of this plugin: delays before each retry
//! max_running_tasks = 4            # tasks of this plugin running at once
//!
//! [tasks]
//! max_running = 8                  # task calls running at once
//! max_running_per_plugin = 4
//! max_attempts = 4                 # the first run and three retries
//! retry_delays = ["30s", "1h", "6h", "12h", "24h"]  # the last one repeats, each ±10% at random
//! min_retry_delay = "1s"           # no retry comes sooner, whatever the delays say
//! max_depth = 10                   # follow-ups deeper are refused
//! max_follow_ups_per_call = 100
//! max_queued_per_plugin = 10000
//! max_result_bytes = 65536         # result, error and logs kept of a task, each
//! keep_days = 30                   # ended tasks are deleted after this
//! keep_max = 100000                # and beyond this many
//! run_missed = true                # a schedule missed while the host was down fires once at start
//! # database = "postgres://host@db.example:5432/tasks"  # a fleet's shared store (default: SQLite
//! #                                #   in state_dir); HOST_DATABASE_URL wins over it
//! pool_size = 8                    # connections to `database`
//! connect_timeout_ms = 5000
//! lease_ms = 30000                 # a claimed task's lease, extended every third of it
//! poll_interval_ms = 1000          # idle hosts look for tasks this often (NOTIFY wakes them sooner)
//!
//! [catalogue]                      # the fleet's plugin catalogue (needs a fleet database)
//! max_plugin_bytes = 67108864      # the largest file `host publish` accepts
//! poll_ms = 2000                   # the agent looks without a notification this often
//! max_plugins = 1000               # the most plugins the catalogue holds
//!
//! [http]                           # the HTTP API: see host::http::HttpSettings
//! listen = "127.0.0.1:8080"        # off unless given (or `host serve --http ADDR`)
//!
//! [[schedule]]
//! plugin = "sysinfo"
//! callback = "execute"
//! input = { paths = ["/"] }
//! every = "5m"                     # spread by an offset of its name; or cron = "0 3 * * *"
//! # timezone = "Europe/Berlin"     # cron only: the IANA time zone it is read in (default UTC)
//! ```
//!
//! Errors name the file, the line and column, and the key: one line, nothing else.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::files::regular::{read_regular, MAX_CONFIG_FILE_BYTES};
use crate::types::settings::MAX_RECORDS;

use crate::services::catalogue::CatalogueSettings;
use crate::services::http::HttpSettings;
use crate::services::tasks::schedule::parse_timezone;
use crate::services::tasks::settings::{ScheduleConfig, TaskSettings};

// The plain settings live in the bottom layer; host.toml is read here.
pub use crate::types::sandbox::{NetAccess, SandboxSettings};
pub use crate::types::settings::{
    Isolation, PluginSettings, DEFAULT_MAX_LOG_BYTES_PER_CALL, DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MAX_PINNED_VERSIONS,
};

/// The contents of `host.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    /// Directory watched for plugin files.
    pub plugins_dir: Option<PathBuf>,
    /// Path of the control socket.
    pub socket: Option<PathBuf>,
    /// Log output format.
    pub log_format: LogFormat,
    /// Largest request, or answer (result, follow-ups and logs together), in bytes
    /// (default 16 MiB).
    pub max_message_bytes: usize,
    /// Largest total of log records kept from one call or one `init`, in bytes (default
    /// 256 KiB); the rest are dropped, and a last record says how many.
    pub max_log_bytes_per_call: usize,
    /// Connections open at once; one more is refused with an error line (default 1,024).
    pub max_connections: usize,
    /// Plugin calls running at once on the host's call pool (socket calls and tasks), each
    /// on a thread of it; a call waits for a free one until its own timeout (default 64).
    pub max_call_threads: usize,
    /// A request that has started arriving must be complete within this (default 10 s).
    pub request_timeout_ms: u64,
    /// A connection with no request for this long is closed (default 5 minutes).
    pub idle_timeout_ms: u64,
    /// A client must take each answer within this, or it is disconnected (default 30 s).
    pub write_timeout_ms: u64,
    /// Request and answer buffers of all connections together, in bytes (default 256 MiB).
    pub max_buffered_bytes: usize,
    /// How long calls in flight may take to finish when the host shuts down (default 10 s).
    pub shutdown_timeout_ms: u64,
    /// Per-plugin settings, by plugin name.
    pub plugins: BTreeMap<String, PluginSettings>,
    /// Where the host keeps its state, the task database among it; one running host at a
    /// time (default: one per control socket, see
    /// [`default_state_dir`](crate::files::state_dir::default_state_dir)).
    pub state_dir: Option<PathBuf>,
    /// How tasks run (`[tasks]`).
    pub tasks: TaskSettings,
    /// Calls the host makes periodically, as tasks (`[[schedule]]`).
    pub schedule: Vec<ScheduleConfig>,
    /// The HTTP API (`[http]`, see [`HttpSettings`]).
    pub http: HttpSettings,
    /// The fleet's plugin catalogue (`[catalogue]`).
    pub catalogue: CatalogueSettings,
}

/// The limits of the control server (top-level keys of `host.toml`). Every one bounds a
/// resource a client could otherwise take without limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// Largest request or answer line, in bytes.
    pub max_message_bytes: usize,
    /// Connections open at once; one more is refused with an error line (default 1,024).
    pub max_connections: usize,
    /// A request that has started arriving must be complete within this (default 10 s).
    pub request_timeout_ms: u64,
    /// A connection with no request for this long is closed (default 5 minutes).
    pub idle_timeout_ms: u64,
    /// A client must take each answer within this, or it is disconnected (default 30 s).
    pub write_timeout_ms: u64,
    /// Request and answer buffers of all connections together, in bytes (default 256 MiB).
    pub max_buffered_bytes: usize,
    /// How long calls in flight may take to finish when the host shuts down (default 10 s).
    pub shutdown_timeout_ms: u64,
}

impl Default for ServerLimits {
    fn default() -> Self {
        HostConfig::default().server_limits()
    }
}

impl HostConfig {
    /// The control server's limits.
    pub fn server_limits(&self) -> ServerLimits {
        ServerLimits {
            max_message_bytes: self.max_message_bytes,
            max_connections: self.max_connections,
            request_timeout_ms: self.request_timeout_ms,
            idle_timeout_ms: self.idle_timeout_ms,
            write_timeout_ms: self.write_timeout_ms,
            max_buffered_bytes: self.max_buffered_bytes,
            shutdown_timeout_ms: self.shutdown_timeout_ms,
        }
    }
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            plugins_dir: None,
            socket: None,
            log_format: LogFormat::default(),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_log_bytes_per_call: DEFAULT_MAX_LOG_BYTES_PER_CALL,
            max_connections: 1024,
            max_call_threads: 64,
            request_timeout_ms: 10_000,
            idle_timeout_ms: 300_000,
            write_timeout_ms: 30_000,
            max_buffered_bytes: 256 << 20,
            shutdown_timeout_ms: 10_000,
            plugins: BTreeMap::new(),
            state_dir: None,
            tasks: TaskSettings::default(),
            schedule: Vec::new(),
            http: HttpSettings::default(),
            catalogue: CatalogueSettings::default(),
        }
    }
}

/// How the host writes its log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// A `host.toml` that cannot be used: file, line, column and key in one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    path: PathBuf,
    location: Option<(usize, usize)>,
    key: String,
    message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some((line, column)) = self.location {
            write!(f, ":{line}:{column}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": key `{}`", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl HostConfig {
    /// Reads and parses `path`: a regular file of at most [`MAX_CONFIG_FILE_BYTES`]. A FIFO,
    /// a device or a directory is refused at once (a plain read of a FIFO nobody writes
    /// would block the thread for good: at start, or the watcher's at a reload).
    pub fn load(path: &Path) -> Result<HostConfig, ConfigError> {
        let read = read_regular(path, MAX_CONFIG_FILE_BYTES).map_err(|err| ConfigError {
            path: path.to_owned(),
            location: None,
            key: String::new(),
            message: err.to_string(),
        })?;
        Self::parse(&read.text, path)
    }

    /// Parses `text`, naming `path` in errors.
    pub fn parse(text: &str, path: &Path) -> Result<HostConfig, ConfigError> {
        let error = |err: toml::de::Error, key: String| ConfigError {
            path: path.to_owned(),
            location: err.span().map(|span| line_column(text, span.start)),
            key,
            message: err.message().trim().replace('\n', " "),
        };
        let deserializer =
            toml::Deserializer::parse(text).map_err(|err| error(err, String::new()))?;
        let config: HostConfig = serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let key = err.path().to_string();
            let key = if key == "." { String::new() } else { key };
            error(err.into_inner(), key)
        })?;
        for (name, settings) in &config.plugins {
            let refuse = |key: &str, message: String| ConfigError {
                path: path.to_owned(),
                location: None,
                key: format!("plugins.{name}{key}"),
                message,
            };
            if !plugin_api::is_valid_name(name) {
                return Err(refuse(
                    "",
                    "plugin names are 1 to 64 characters of [A-Za-z0-9_.-]".to_owned(),
                ));
            }
            if settings.keep_versions > MAX_RECORDS {
                return Err(refuse(
                    ".keep_versions",
                    format!("at most {MAX_RECORDS} versions are kept"),
                ));
            }
            if let Some((field, relative)) =
                settings.sandbox.as_ref().and_then(|s| s.relative_path())
            {
                return Err(refuse(
                    &format!(".sandbox.{field}"),
                    format!(
                        "{} is a relative path: sandbox paths are absolute",
                        relative.display()
                    ),
                ));
            }
        }
        let refuse = |key: String, message: &str| ConfigError {
            path: path.to_owned(),
            location: None,
            key,
            message: message.to_owned(),
        };
        let tasks = &config.tasks;
        for (key, value) in [
            ("max_running", tasks.max_running as u64),
            (
                "max_running_per_plugin",
                tasks.max_running_per_plugin as u64,
            ),
            ("max_attempts", u64::from(tasks.max_attempts)),
            ("pool_size", tasks.pool_size as u64),
            ("lease_ms", tasks.lease_ms),
            ("poll_interval_ms", tasks.poll_interval_ms),
            ("connect_timeout_ms", tasks.connect_timeout_ms),
        ] {
            if value == 0 {
                return Err(refuse(format!("tasks.{key}"), "must be at least 1"));
            }
        }
        if tasks.min_retry_delay.is_zero() {
            return Err(refuse(
                "tasks.min_retry_delay".to_owned(),
                "must be at least 1ms: without it a task failing at once retries in a hot loop",
            ));
        }
        if let Err(message) = config.http.check() {
            let (key, why) = message.split_once(": ").unwrap_or(("http", &message));
            return Err(refuse(key.to_owned(), why));
        }
        if let Some(url) = &tasks.database {
            if let Err(err) = crate::services::postgres::parse_url(url) {
                return Err(refuse("tasks.database".to_owned(), &err.to_string()));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, schedule) in config.schedule.iter().enumerate() {
            let key = |field: &str| format!("schedule[{i}]{field}");
            if !plugin_api::is_valid_name(&schedule.plugin) {
                return Err(refuse(key(".plugin"), "not a plugin name"));
            }
            if schedule.callback != "execute" && !plugin_api::is_valid_name(&schedule.callback) {
                return Err(refuse(key(".callback"), "not a callback name"));
            }
            if let Some(timezone) = &schedule.timezone {
                if let Err(err) = parse_timezone(timezone) {
                    return Err(refuse(
                        key(".timezone"),
                        &format!("schedule {}: {}", schedule.name(), err.0),
                    ));
                }
            }
            if let Err(err) = schedule.schedule() {
                return Err(refuse(
                    key(""),
                    &format!("schedule {}: {}", schedule.name(), err.0),
                ));
            }
            if !names.insert(schedule.name()) {
                return Err(refuse(
                    key(".name"),
                    "another schedule has this name: give each a `name`",
                ));
            }
        }
        Ok(config)
    }
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<HostConfig, String> {
        HostConfig::parse(text, Path::new("host.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn parses_a_full_file() {
        let config = parse(
            "plugins_dir = \"p\"\nlog_format = \"json\"\n[plugins.hello]\nenabled = false\nconfig = { greeting = \"Hi\", n = 3 }\n",
        )
        .unwrap();
        assert_eq!(config.plugins_dir, Some(PathBuf::from("p")));
        assert_eq!(config.log_format, LogFormat::Json);
        let hello = &config.plugins["hello"];
        assert!(!hello.enabled);
        assert_eq!(hello.isolation, None);
        let isolated = parse("[plugins.x]\nisolation = \"process\"\nmax_memory_mb = 64\n").unwrap();
        assert_eq!(isolated.plugins["x"].isolation, Some(Isolation::Process));
        let here = parse("[plugins.x]\nisolation = \"in-process\"\n").unwrap();
        assert_eq!(here.plugins["x"].isolation, Some(Isolation::InProcess));
        assert_eq!(isolated.plugins["x"].max_memory_mb, Some(64));
        let err = parse("[plugins.x]\nisolation = \"sandbox\"\n").unwrap_err();
        assert!(err.contains("key `plugins.x.isolation`"), "{err}");
        assert_eq!(hello.config_json(), r#"{"greeting":"Hi","n":3}"#);
    }

    #[test]
    fn a_type_error_names_file_line_and_key() {
        let err = parse("[plugins.hello]\nenabled = \"yes\"\n").unwrap_err();
        assert!(
            err.starts_with("host.toml:2:11: key `plugins.hello.enabled`: "),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
    }

    /// A FIFO nobody writes (a plain read blocked for good), a directory, a device and an
    /// oversized file: each refused at once, in one line naming the file.
    #[test]
    fn load_refuses_what_is_not_a_small_regular_file_in_one_line() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("host.toml");
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: mkfifo reads the NUL-terminated path, which outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let err = HostConfig::load(&fifo).unwrap_err().to_string();
        assert_eq!(
            err,
            format!("{}: not a regular file (a FIFO)", fifo.display())
        );
        let err = HostConfig::load(dir.path()).unwrap_err().to_string();
        assert!(err.ends_with(": not a regular file (a directory)"), "{err}");
        let err = HostConfig::load(Path::new("/dev/zero"))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "/dev/zero: not a regular file (a character device)");
        let big = dir.path().join("big.toml");
        let comment = vec![b'#'; MAX_CONFIG_FILE_BYTES as usize + 1];
        std::fs::write(&big, comment).unwrap();
        let err = HostConfig::load(&big).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "{}: larger than 1048576 bytes, the most this file may have",
                big.display()
            )
        );
    }

    #[test]
    fn a_syntax_error_names_file_and_line() {
        let err = parse("plugins_dir = \"p\"\n[plugins.hello\n").unwrap_err();
        assert!(err.starts_with("host.toml:2:"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn max_pinned_versions_defaults_to_3() {
        let config = parse("[plugins.a]\n[plugins.b]\nmax_pinned_versions = 1\n").unwrap();
        assert_eq!(
            config.plugins["a"].max_pinned_versions,
            DEFAULT_MAX_PINNED_VERSIONS
        );
        assert_eq!(DEFAULT_MAX_PINNED_VERSIONS, 3);
        assert_eq!(config.plugins["b"].max_pinned_versions, 1);
    }

    #[test]
    fn keep_versions_is_bounded() {
        assert!(parse("[plugins.a]\nkeep_versions = 32\n").is_ok());
        let err = parse("[plugins.a]\nkeep_versions = 33\n").unwrap_err();
        assert!(err.contains("key `plugins.a.keep_versions`"), "{err}");
    }

    #[test]
    fn an_unknown_key_is_an_error() {
        let err = parse("[plugins.hello]\nenable = true\n").unwrap_err();
        assert!(err.contains("key `plugins.hello"), "{err}");
        assert!(err.contains("enable"), "{err}");
    }

    #[test]
    fn a_schedule_with_an_unknown_time_zone_is_one_line_naming_it_and_the_field() {
        let ok = "[[schedule]]\nname = \"nightly\"\nplugin = \"sysinfo\"\ncron = \"30 2 * * *\"\n\
                  timezone = \"Europe/Berlin\"\n";
        let config = parse(ok).unwrap();
        assert_eq!(
            config.schedule[0].timezone.as_deref(),
            Some("Europe/Berlin")
        );
        let err = parse(&ok.replace("Europe/Berlin", "Europe/Berln")).unwrap_err();
        assert_eq!(
            err,
            "host.toml: key `schedule[0].timezone`: schedule nightly: unknown time zone \
             \"Europe/Berln\": give an IANA name such as \"Europe/Berlin\", \
             \"America/New_York\" or \"UTC\""
        );
        let err = parse(&ok.replace("cron = \"30 2 * * *\"", "every = \"1h\"")).unwrap_err();
        assert!(
            err.contains("schedule nightly: timezone applies to cron"),
            "{err}"
        );
    }

    #[test]
    fn a_sandbox_is_read_and_each_bad_field_is_one_line_naming_it() {
        let config = parse(
            "[plugins.x]\nisolation = \"process\"\n[plugins.x.sandbox]\nread = [\"/etc\"]\n\
             write = [\"/tmp/x\"]\nexec = [\"/bin/true\"]\nnet = \"loopback\"\n",
        )
        .unwrap();
        let sandbox = config.plugins["x"].sandbox.as_ref().unwrap();
        assert_eq!(sandbox.read, [PathBuf::from("/etc")]);
        assert_eq!(sandbox.net, crate::types::sandbox::NetAccess::Loopback);
        assert!(!sandbox.best_effort);
        let none = parse("[plugins.x.sandbox]\n").unwrap();
        assert_eq!(
            none.plugins["x"].sandbox.as_ref().unwrap().net,
            crate::types::sandbox::NetAccess::None
        );
        for (text, key, says) in [
            (
                "reads = [\"/etc\"]",
                "plugins.x.sandbox.reads",
                "unknown field",
            ),
            ("net = \"lan\"", "plugins.x.sandbox.net", "lan"),
            (
                "best_effort = \"yes\"",
                "plugins.x.sandbox.best_effort",
                "bool",
            ),
            (
                "write = [\"/tmp\", \"out\"]",
                "plugins.x.sandbox.write[1]",
                "out is a relative path",
            ),
            (
                "exec = [\"bin/sh\"]",
                "plugins.x.sandbox.exec[0]",
                "relative",
            ),
        ] {
            let err = parse(&format!("[plugins.x.sandbox]\n{text}\n")).unwrap_err();
            assert!(err.contains(&format!("key `{key}`")), "{text}: {err}");
            assert!(err.contains(says), "{text}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn a_zero_min_retry_delay_is_refused() {
        assert!(parse("[tasks]\nmin_retry_delay = \"10ms\"\n").is_ok());
        let err = parse("[tasks]\nmin_retry_delay = \"0s\"\n").unwrap_err();
        assert!(err.contains("key `tasks.min_retry_delay`"), "{err}");
        assert!(err.contains("hot loop"), "{err}");
    }

    #[test]
    fn the_http_section_is_read_and_its_limits_checked() {
        let config = parse("[http]\nlisten = \"127.0.0.1:8080\"\nmax_body_bytes = 4096\n").unwrap();
        assert_eq!(config.http.listen.as_deref(), Some("127.0.0.1:8080"));
        assert_eq!(config.http.max_body_bytes, 4096);
        assert_eq!(parse("").unwrap().http.listen, None, "off unless asked");
        let err = parse("[http]\nmax_connections = 0\n").unwrap_err();
        assert_eq!(
            err,
            "host.toml: key `http.max_connections`: must be at least 1"
        );
        let err = parse("[http]\nlisten_on = \"x\"\n").unwrap_err();
        assert!(err.contains("unknown field `listen_on`"), "{err}");
    }
}

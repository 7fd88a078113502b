//! What a plugin sees of the host during `init` and during a call: configuration, logging,
//! cancellation and follow-up calls.

use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use abi_stable::std_types::RVec;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::abi::{FfiCallContext, FfiFollowUp, FfiLogRecord, FfiLogSink};
use crate::stop::Threads;
use crate::{ErrorKind, PluginError, StopToken};

/// Severity of a log record, as in `tracing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Something failed.
    Error = 1,
    /// Something is off but the work goes on.
    Warn = 2,
    /// Normal progress.
    Info = 3,
    /// Detail for whoever is debugging.
    Debug = 4,
    /// Even more detail.
    Trace = 5,
}

impl Level {
    /// The level for a number from the wire; unknown numbers read as [`Level::Info`].
    ///
    /// ```
    /// use plugin_api::Level;
    /// assert_eq!(Level::from_code(Level::Warn as u8), Level::Warn);
    /// ```
    pub fn from_code(code: u8) -> Level {
        match code {
            1 => Level::Error,
            2 => Level::Warn,
            4 => Level::Debug,
            5 => Level::Trace,
            _ => Level::Info,
        }
    }
}

/// One log record written by a plugin, as the host returns it with a call's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Severity.
    pub level: Level,
    /// The message.
    pub message: String,
    /// When it was written, in milliseconds since the Unix epoch.
    pub unix_ms: u64,
}

impl From<&FfiLogRecord> for LogRecord {
    fn from(rec: &FfiLogRecord) -> LogRecord {
        LogRecord {
            level: Level::from_code(rec.level),
            message: rec.message.as_str().to_owned(),
            unix_ms: rec.unix_ms,
        }
    }
}

/// A call a plugin asked the host to make after the current one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FollowUp {
    /// Plugin to call.
    pub plugin: String,
    /// Callback to call (`execute` for the entry point).
    pub callback: String,
    /// Input for it.
    pub input: serde_json::Value,
}

impl From<&FfiFollowUp> for FollowUp {
    /// Copies a follow-up out of the ABI; input that is not JSON (the glue never writes
    /// such) reads as `null`.
    fn from(f: &FfiFollowUp) -> FollowUp {
        FollowUp {
            plugin: f.plugin.to_string(),
            callback: f.callback.to_string(),
            input: serde_json::from_str(f.input_json.as_str()).unwrap_or(serde_json::Value::Null),
        }
    }
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Collects log records on the plugin side until they are handed to the host, sending each
/// to the host's sink first when the call has one (ABI 1.5).
#[derive(Default)]
pub(crate) struct LogBuffer<'a> {
    records: RefCell<RVec<FfiLogRecord>>,
    sink: Option<FfiLogSink<'a>>,
}

impl<'a> LogBuffer<'a> {
    /// A buffer that also sends each record to `sink` as it is written.
    pub(crate) fn live(sink: Option<FfiLogSink<'a>>) -> LogBuffer<'a> {
        LogBuffer {
            records: RefCell::default(),
            sink,
        }
    }

    pub(crate) fn push(&self, level: Level, message: String) {
        let record = FfiLogRecord {
            level: level as u8,
            message: message.into(),
            unix_ms: now_unix_ms(),
        };
        if let Some(sink) = &self.sink {
            // Never unwinds: the host's function is `extern "C"` and catches its panics.
            sink.write(&record);
        }
        self.records.borrow_mut().push(record);
    }

    pub(crate) fn take(self) -> RVec<FfiLogRecord> {
        self.records.into_inner()
    }
}

macro_rules! level_methods {
    () => {
        /// Writes a log record at [`Level::Error`].
        pub fn error(&self, message: impl std::fmt::Display) {
            self.log(Level::Error, message)
        }
        /// Writes a log record at [`Level::Warn`].
        pub fn warn(&self, message: impl std::fmt::Display) {
            self.log(Level::Warn, message)
        }
        /// Writes a log record at [`Level::Info`].
        pub fn info(&self, message: impl std::fmt::Display) {
            self.log(Level::Info, message)
        }
        /// Writes a log record at [`Level::Debug`].
        pub fn debug(&self, message: impl std::fmt::Display) {
            self.log(Level::Debug, message)
        }
        /// Writes a log record at [`Level::Trace`].
        pub fn trace(&self, message: impl std::fmt::Display) {
            self.log(Level::Trace, message)
        }
    };
}

/// What `init` sees: the plugin's configuration and a log.
///
/// ```
/// use plugin_api::testing::Harness;
/// use plugin_api::{Context, InitContext, Plugin, PluginError};
/// use serde::Deserialize;
///
/// #[derive(Deserialize)]
/// struct Config {
///     #[serde(default = "default_greeting")]
///     greeting: String,
/// }
/// fn default_greeting() -> String { "Hello".into() }
///
/// struct Greeter { greeting: String }
///
/// impl Plugin for Greeter {
///     type Input = String;
///     type Output = String;
///     fn init(ctx: &InitContext<'_>) -> Result<Self, PluginError> {
///         let config: Config = ctx.config()?;
///         ctx.info(format_args!("greeting with {:?}", config.greeting));
///         Ok(Greeter { greeting: config.greeting })
///     }
///     fn execute(&self, _ctx: &Context<'_>, name: String) -> Result<String, PluginError> {
///         Ok(format!("{}, {name}!", self.greeting))
///     }
/// }
///
/// let plugin = Harness::<Greeter>::new("greeter", serde_json::json!({"greeting": "Hi"})).unwrap();
/// assert_eq!(plugin.execute(serde_json::json!("Ada")).result.unwrap(), "Hi, Ada!");
/// ```
pub struct InitContext<'a> {
    pub(crate) name: &'a str,
    pub(crate) generation: u64,
    pub(crate) config: &'a serde_json::Value,
    pub(crate) previous: Option<&'a Previous>,
    pub(crate) logs: LogBuffer<'a>,
    pub(crate) threads: &'a Threads,
}

/// What the version being replaced handed over: see [`InitContext::previous_state`].
#[derive(Debug, Clone)]
pub(crate) struct Previous {
    pub(crate) state: serde_json::Value,
    pub(crate) version: String,
}

impl InitContext<'_> {
    /// The plugin's name.
    pub fn name(&self) -> &str {
        self.name
    }

    /// The generation number the host gave this load (1 for the first load of a file,
    /// counting up with every reload).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The configuration as JSON (`{}` when the host has none for this plugin).
    pub fn config_value(&self) -> &serde_json::Value {
        self.config
    }

    /// The configuration decoded into `T`; an error of kind [`ErrorKind::InvalidInput`]
    /// names the field that does not fit.
    pub fn config<T: DeserializeOwned>(&self) -> Result<T, PluginError> {
        T::deserialize(self.config).map_err(|err| {
            PluginError::invalid_input(format!("invalid configuration for {}: {err}", self.name))
        })
    }

    /// The state the version this one replaces handed over with
    /// [`Plugin::save_state`](crate::Plugin::save_state), if it did: `None` for a first
    /// load, after a version that saves none (or that failed to), or when the host is older
    /// than plugin ABI 1.2. Its format is the plugin's own: look at
    /// [`InitContext::previous_version`] to migrate state an older version wrote.
    ///
    /// ```
    /// use plugin_api::testing::Harness;
    /// use plugin_api::{Context, InitContext, Plugin, PluginError};
    /// use std::sync::atomic::{AtomicU64, Ordering};
    ///
    /// struct Counter { count: AtomicU64 }
    ///
    /// impl Plugin for Counter {
    ///     type Input = ();
    ///     type Output = u64;
    ///     fn init(ctx: &InitContext<'_>) -> Result<Self, PluginError> {
    ///         // 0.1 saved a bare number; later versions save {"count": N}.
    ///         let count = match (ctx.previous_version(), ctx.previous_state()) {
    ///             (Some("0.1.0"), Some(n)) => n.as_u64().unwrap_or(0),
    ///             (_, Some(state)) => state["count"].as_u64().unwrap_or(0),
    ///             (_, None) => 0,
    ///         };
    ///         Ok(Counter { count: AtomicU64::new(count) })
    ///     }
    ///     fn execute(&self, _: &Context<'_>, _: ()) -> Result<u64, PluginError> {
    ///         Ok(self.count.fetch_add(1, Ordering::Relaxed) + 1)
    ///     }
    ///     fn save_state(&self, _: &Context<'_>) -> Result<Option<serde_json::Value>, PluginError> {
    ///         Ok(Some(serde_json::json!({"count": self.count.load(Ordering::Relaxed)})))
    ///     }
    /// }
    ///
    /// let old = Harness::<Counter>::new("counter", serde_json::json!({})).unwrap();
    /// old.execute(serde_json::json!(null));
    /// old.execute(serde_json::json!(null));
    /// let state = old.save_state().unwrap().unwrap();
    /// let new = Harness::<Counter>::after("counter", serde_json::json!({}), state, "0.2.0").unwrap();
    /// assert_eq!(new.execute(serde_json::json!(null)).result.unwrap(), 3);
    /// let migrated = Harness::<Counter>::after("counter", serde_json::json!({}), 41.into(), "0.1.0").unwrap();
    /// assert_eq!(migrated.execute(serde_json::json!(null)).result.unwrap(), 42);
    /// ```
    pub fn previous_state(&self) -> Option<&serde_json::Value> {
        self.previous.map(|p| &p.state)
    }

    /// The version (crate version) of the plugin that handed over
    /// [`InitContext::previous_state`], when there is one.
    pub fn previous_version(&self) -> Option<&str> {
        self.previous.map(|p| p.version.as_str())
    }

    /// Writes a log record; the host shows it in its log with the plugin's name.
    pub fn log(&self, level: Level, message: impl std::fmt::Display) {
        self.logs.push(level, message.to_string());
    }

    level_methods!();

    /// This version's stop token: signalled when the host retires the version (see
    /// [`Plugin::stop`](crate::Plugin::stop)). Clone it into threads and tasks that must end
    /// then. (In a host older than plugin ABI 1.4 it is never signalled.)
    pub fn stop_token(&self) -> StopToken {
        self.threads.token.clone()
    }

    /// Starts a thread named `name` that runs `f` with this version's [`StopToken`]. The
    /// plugin-api side keeps its handle: when the host retires the version, it signals the
    /// token, calls [`Plugin::stop`](crate::Plugin::stop), and waits up to its
    /// `stop_timeout_ms` for every such thread to end before it closes the library. A
    /// thread that ignores the token keeps the library in memory.
    ///
    /// ```
    /// use plugin_api::testing::Harness;
    /// use plugin_api::{Context, InitContext, Plugin, PluginError};
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::sync::Arc;
    /// use std::time::Duration;
    ///
    /// struct Ticker { ticks: Arc<AtomicU64> }
    ///
    /// impl Plugin for Ticker {
    ///     type Input = ();
    ///     type Output = u64;
    ///     fn init(ctx: &InitContext<'_>) -> Result<Self, PluginError> {
    ///         let ticks = Arc::new(AtomicU64::new(0));
    ///         let counted = ticks.clone();
    ///         ctx.spawn("ticker", move |stop| {
    ///             while !stop.wait_timeout(Duration::from_millis(5)) {
    ///                 counted.fetch_add(1, Ordering::Relaxed);
    ///             }
    ///         })?;
    ///         Ok(Ticker { ticks })
    ///     }
    ///     fn execute(&self, _: &Context<'_>, _: ()) -> Result<u64, PluginError> {
    ///         Ok(self.ticks.load(Ordering::Relaxed))
    ///     }
    /// }
    ///
    /// let plugin = Harness::<Ticker>::new("ticker", serde_json::json!({})).unwrap();
    /// let report = plugin.stop(Duration::from_secs(5)).unwrap();
    /// assert_eq!((report.threads, report.ended), (1, 1));
    /// ```
    pub fn spawn<F>(&self, name: &str, f: F) -> Result<(), PluginError>
    where
        F: FnOnce(StopToken) + Send + 'static,
    {
        self.threads.spawn(self.name, name, f)
    }
}

/// What a call sees: logging, configuration, cancellation and follow-up calls.
///
/// Records written with [`Context::log`] and its shorthands reach the host's log tagged with
/// the plugin's name and generation, and come back to the caller with the call's result.
///
/// ```
/// use plugin_api::testing::Harness;
/// use plugin_api::{Context, InitContext, Level, Plugin, PluginError};
///
/// struct Cleaner;
///
/// impl Plugin for Cleaner {
///     type Input = Vec<String>;
///     type Output = usize;
///     fn init(_: &InitContext<'_>) -> Result<Self, PluginError> { Ok(Cleaner) }
///     fn execute(&self, ctx: &Context<'_>, paths: Vec<String>) -> Result<usize, PluginError> {
///         for path in &paths {
///             ctx.check_cancelled()?;
///             ctx.info(format_args!("would remove {path}"));
///         }
///         ctx.follow_up("report", "cleaned", &paths)?;
///         Ok(paths.len())
///     }
/// }
///
/// let plugin = Harness::<Cleaner>::new("cleaner", serde_json::json!({})).unwrap();
/// let outcome = plugin.execute(serde_json::json!(["/tmp/a", "/tmp/b"]));
/// assert_eq!(outcome.result.unwrap(), 2);
/// assert_eq!(outcome.logs[1].message, "would remove /tmp/b");
/// assert_eq!(outcome.logs[1].level, Level::Info);
/// assert_eq!(outcome.follow_ups[0].callback, "cleaned");
/// ```
pub struct Context<'a> {
    pub(crate) name: &'a str,
    pub(crate) generation: u64,
    pub(crate) config: &'a serde_json::Value,
    pub(crate) ffi: &'a FfiCallContext<'a>,
    pub(crate) logs: LogBuffer<'a>,
    pub(crate) follow_ups: RefCell<RVec<FfiFollowUp>>,
    pub(crate) threads: &'a Threads,
}

impl Context<'_> {
    /// The plugin's name.
    pub fn name(&self) -> &str {
        self.name
    }

    /// The generation number of the loaded version serving this call.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The configuration the plugin was initialised with.
    pub fn config(&self) -> &serde_json::Value {
        self.config
    }

    /// Writes a log record for this call. It comes back with the call's outcome; a host
    /// that asked for the call's records live (plugin ABI 1.5: the task events stream)
    /// also gets it now, while the call runs.
    pub fn log(&self, level: Level, message: impl std::fmt::Display) {
        self.logs.push(level, message.to_string());
    }

    level_methods!();

    /// This version's stop token (see [`InitContext::stop_token`]).
    pub fn stop_token(&self) -> StopToken {
        self.threads.token.clone()
    }

    /// Starts a thread that outlives the call, joined when the version is retired (see
    /// [`InitContext::spawn`]).
    pub fn spawn<F>(&self, name: &str, f: F) -> Result<(), PluginError>
    where
        F: FnOnce(StopToken) + Send + 'static,
    {
        self.threads.spawn(self.name, name, f)
    }

    /// The moment after which the caller no longer waits, if it set one.
    pub fn deadline(&self) -> Option<SystemTime> {
        match self.ffi.deadline_unix_ms {
            0 => None,
            ms => Some(UNIX_EPOCH + Duration::from_millis(ms)),
        }
    }

    /// Whether the caller has cancelled the call or its deadline has passed. A long-running
    /// plugin checks this between steps and stops early.
    pub fn is_cancelled(&self) -> bool {
        self.ffi.cancelled.load(Ordering::Relaxed)
            || self.deadline().is_some_and(|d| SystemTime::now() >= d)
    }

    /// `Err` of kind [`ErrorKind::Cancelled`] once [`Context::is_cancelled`] is true, for use
    /// with `?`.
    pub fn check_cancelled(&self) -> Result<(), PluginError> {
        if self.is_cancelled() {
            Err(PluginError::new(
                ErrorKind::Cancelled,
                format!(
                    "{}: call cancelled by the caller or its deadline",
                    self.name
                ),
            ))
        } else {
            Ok(())
        }
    }

    /// Asks the host to call `plugin`'s `callback` with `input` after this call; the
    /// request is returned with this call's outcome. When this call runs as a task, the
    /// host runs each follow-up as a task of its own, a child of this one (within the
    /// host's limits on depth and count).
    pub fn follow_up(
        &self,
        plugin: &str,
        callback: &str,
        input: impl Serialize,
    ) -> Result<(), PluginError> {
        let input_json = serde_json::to_string(&input).map_err(|err| {
            PluginError::failed(format!(
                "follow-up {plugin}.{callback}: cannot encode input: {err}"
            ))
        })?;
        self.follow_ups.borrow_mut().push(FfiFollowUp {
            plugin: plugin.into(),
            callback: callback.into(),
            input_json: input_json.into(),
        });
        Ok(())
    }
}

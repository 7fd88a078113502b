//! A plugin host that loads native plugins built with `plugin-api`, serves their callbacks,
//! and swaps in new versions while calls keep flowing.
//!
//! Every call goes through one entry, [`Host::invoke`] (or [`Host::invoke_async`]), which
//! answers `timeout` at the call's deadline whatever the plugin does; [`Host::call`] is the
//! same entry on the caller's own thread, the cheapest call for embedders. What else is
//! public:
//!
//! * [`Host`] loads plugin files ([`Host::load_file`]), swaps versions in place, rolls back,
//!   and reports what it serves ([`Host::status`]);
//! * [`loader`] checks a plugin file without serving it ([`inspect`]);
//! * [`isolation`] runs plugins in supervised worker processes;
//! * [`watch`] keeps a `Host` in step with a plugins directory and its host.toml;
//! * [`control`] is the Unix-socket protocol `host serve` speaks and `host call` uses;
//! * [`tasks`] runs calls as tasks: follow-ups, schedules and retries, kept in SQLite;
//! * [`systemd`] speaks to the service manager: readiness, watchdog, passed sockets;
//! * [`config`] reads `host.toml`; [`state_dir`] is where a host keeps its state, one host
//!   at a time; [`CopiesDir`] is where private copies go.
//!
//! How the code is laid out, in layers, and what each owns: ARCHITECTURE.md at the
//! repository's root.
//!
//! ```no_run
//! use host::{Host, HostOptions};
//!
//! let host = Host::new(HostOptions::default())?;
//! host.load_file("plugins/libhello.so".as_ref())?;
//! let outcome = host.call("hello", "greet", r#"{"name":"Ada"}"#)?;
//! assert!(outcome.result().is_ok());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

// The layers, bottom to top; a lower one never names a higher one (ARCHITECTURE.md, and
// the test `tests/layers.rs`). This file is the facade: what users embed is re-exported
// here, under the paths it always had.
mod files;
mod registry;
mod runtime;
mod services;
mod types;

pub use files::private_dir::CopiesDir;
pub use files::state_dir;
pub use runtime::{isolation, loader};
pub use services::{catalogue, config, control, http, postgres, systemd, tasks, watch};

pub use registry::{
    CallRequest, CallSeries, CallStats, Ended, FileStatus, HistoryEntry, Host, HostError,
    HostOptions, LoadEvent, Pinned, PluginHandle, RunningCall, Serving, TypedCall, TypedError,
    DEFAULT_MAX_CALL_THREADS, LATENCY_BUCKETS_US,
};
pub use runtime::generation::TypedOutcome;
pub use runtime::loader::{
    inspect, LoadError, LoadErrorKind, LoadOptions, Metadata, PanicStrategy, PluginSchedule,
};
pub use runtime::reaper::{Retired, RetiredState};
pub use types::call::{CallError, CallErrorKind, CallOutcome, Json, Name, MAX_ERROR_MESSAGE};
pub use types::live_log::LogSink;

//! A plugin host that loads native plugins built with `plugin-api`, serves their callbacks,
//! and swaps in new versions while calls keep flowing.
//!
//! The pieces, one module each:
//!
//! * `plugin_file` opens a plugin file safely, checks who could have written it, and stages
//!   its private copy (read, hashed and copied in one pass); `elf` checks its structure;
//!   `private_dir` makes and checks the directories the host trusts ([`CopiesDir`] for
//!   private copies); `owner_lock` marks what a running host owns;
//! * [`loader`] turns a staged copy into a checked, open library (ABI and layout checks,
//!   metadata), and finds out whether a closed library has left memory;
//! * [`Host`] (module `registry`) keeps plugins by name in a lock-free call table, prepares
//!   loads outside every lock and commits them in a moment;
//! * `generation` owns one loaded version, from `init` to unload; `call` bounds what comes
//!   back from it;
//! * `reaper` drains, drops and unloads replaced generations off every caller's path;
//! * [`isolation`] runs a generation in a supervised worker process instead;
//! * [`watch`] turns changes in a plugins directory into loads, reloads and unloads;
//! * `handover` carries a plugin's state from one version to the next, holding its calls
//!   meanwhile;
//! * [`tasks`] runs calls as tasks: follow-ups, schedules and retries, kept in SQLite;
//! * [`control`] is the Unix-socket protocol `host serve` speaks and `host call` uses;
//! * [`config`] reads `host.toml`; [`state_dir`] is where a host keeps its state, one host
//!   at a time.
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
pub use services::{config, control, tasks, watch};

pub use registry::{
    CallRequest, Ended, FileStatus, HistoryEntry, Host, HostError, HostOptions, LoadEvent,
    PluginHandle, RunningCall, Serving, TypedCall, TypedError, DEFAULT_MAX_CALL_THREADS,
};
pub use runtime::generation::TypedOutcome;
pub use runtime::loader::{
    inspect, LoadError, LoadErrorKind, LoadOptions, Metadata, PanicStrategy, PluginSchedule,
};
pub use runtime::reaper::{Retired, RetiredState};
pub use types::call::{CallError, CallErrorKind, CallOutcome, Json, Name, MAX_ERROR_MESSAGE};

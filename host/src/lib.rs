//! A plugin host that loads native plugins built with `plugin-api`, serves their callbacks,
//! and swaps in new versions while calls keep flowing.
//!
//! The pieces, one module each:
//!
//! * [`loader`] turns a plugin file into a checked, open library (private copy, ABI and
//!   layout checks, metadata), and checks that a closed library has left memory;
//! * [`Host`] (module `registry`) keeps plugins by name, runs calls on the current version,
//!   and swaps versions atomically;
//! * `generation` owns one loaded version, from `init` through draining to unload;
//! * [`watch`] turns changes in a plugins directory into loads, reloads and unloads;
//! * [`control`] is the Unix-socket protocol `host serve` speaks and `host call` uses;
//! * [`config`] reads `host.toml`.
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

mod call;
pub mod config;
pub mod control;
mod elf;
mod generation;
pub mod loader;
mod registry;
pub mod watch;

pub use call::{CallError, CallErrorKind, CallOutcome};
pub use loader::{inspect, LoadError, LoadErrorKind, LoadOptions, Metadata};
pub use registry::{FileStatus, Host, HostError, HostOptions, LoadEvent, PluginHandle, Serving};

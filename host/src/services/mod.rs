//! Layer 5, services: host.toml, the control socket, the HTTP API, the PostgreSQL database
//! of a fleet and its plugin catalogue, the plugins-directory watcher, the task runner,
//! and what running under systemd takes (notify, socket activation, watchdog). Each
//! reaches plugins only through the registry's call path.

pub mod catalogue;
pub mod config;
pub mod control;
pub mod http;
pub(crate) mod ping;
pub mod postgres;
pub mod systemd;
pub mod tasks;
pub mod watch;

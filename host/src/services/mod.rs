//! Layer 5, services: host.toml, the control socket, the PostgreSQL database of a fleet, the plugins-directory watcher and the
//! task runner. Each reaches plugins only through the registry's call path.

pub mod catalogue;
pub mod config;
pub mod control;
pub mod postgres;
pub mod tasks;
pub mod watch;

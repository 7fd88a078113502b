//! The sandbox of an isolated plugin, `[plugins.NAME.sandbox]` in host.toml: which paths its
//! worker process may read, write and run, and which network it may reach. Plain data;
//! `runtime::isolation::sandbox` applies it in the worker, `services::config` checks it.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[plugins.NAME.sandbox]`: what a sandboxed worker may do beyond what a worker itself
/// needs (its private copy of the plugin, the system's shared libraries, `/dev/null` ...).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct SandboxSettings {
    /// Files and directories (with everything beneath) it may read. Absolute paths.
    pub read: Vec<PathBuf>,
    /// Files and directories it may read, write, create and remove things in. Absolute.
    pub write: Vec<PathBuf>,
    /// Programs (or directories of programs) it may run. Absolute.
    pub exec: Vec<PathBuf>,
    /// Which sockets it may open.
    pub net: NetAccess,
    /// Where the kernel lacks Landlock (or the Landlock ABI these settings need), run the
    /// plugin with what is available (logged) instead of refusing it.
    pub best_effort: bool,
}

/// Which sockets a sandboxed worker may open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum NetAccess {
    /// No socket at all (`socket()` fails with `Permission denied`), and no TCP bind or
    /// connect (Landlock).
    #[default]
    None,
    /// TCP and UDP over IPv4 and IPv6 only (no Unix, netlink, packet, SCTP ... sockets),
    /// and only with loopback addresses: the host checks every `connect`, `bind`, `listen`
    /// and addressed send of the worker (a seccomp user notification) and makes it itself.
    Loopback,
    /// Any socket the user may open.
    Any,
}

impl fmt::Display for NetAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NetAccess::None => "none",
            NetAccess::Loopback => "loopback",
            NetAccess::Any => "any",
        })
    }
}

impl SandboxSettings {
    /// The first path that is not absolute, as (`read[0]`, the path).
    pub fn relative_path(&self) -> Option<(String, &PathBuf)> {
        [
            ("read", &self.read),
            ("write", &self.write),
            ("exec", &self.exec),
        ]
        .into_iter()
        .find_map(|(list, paths)| {
            paths
                .iter()
                .enumerate()
                .find(|(_, path)| !path.is_absolute())
                .map(|(i, path)| (format!("{list}[{i}]"), path))
        })
    }
}

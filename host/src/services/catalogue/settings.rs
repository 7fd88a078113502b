//! `[catalogue]` in host.toml: the limits of the plugin catalogue.

use serde::{Deserialize, Serialize};

/// The catalogue's settings (`[catalogue]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct CatalogueSettings {
    /// The largest plugin file `host publish` accepts, in bytes (default 64 MiB).
    pub max_plugin_bytes: u64,
    /// How often the agent looks at the catalogue when no notification came, in
    /// milliseconds (default 2,000): the backstop for a lost NOTIFY.
    pub poll_ms: u64,
    /// The most plugins the catalogue holds (default 1,000): publishing another name past
    /// it is refused. Every agent lists them on each look.
    pub max_plugins: u32,
}

impl Default for CatalogueSettings {
    fn default() -> Self {
        CatalogueSettings {
            max_plugin_bytes: 64 * 1024 * 1024,
            poll_ms: 2_000,
            max_plugins: 1_000,
        }
    }
}

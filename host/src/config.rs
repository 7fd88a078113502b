//! Configuration: `host.toml`, and the per-plugin settings the [`Host`](crate::Host) applies.
//!
//! ```toml
//! plugins_dir = "plugins"          # default: ./plugins
//! socket = "/run/user/1000/plugin-host.sock"
//! log_format = "text"              # or "json"
//! max_message_bytes = 16777216     # largest request or result
//!
//! [plugins.hello]
//! enabled = true
//! config = { greeting = "Hi" }     # handed to the plugin's init as JSON
//! timeout_ms = 30000               # callers get a timeout error after this
//! max_concurrent_calls = 8         # callers past this get a busy error (default: no limit)
//! sha256 = "..."                   # optional: only this exact file is loaded
//! ```
//!
//! Errors name the file, the line and column, and the key: one line, nothing else.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The contents of `host.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// Directory watched for plugin files.
    pub plugins_dir: Option<PathBuf>,
    /// Path of the control socket.
    pub socket: Option<PathBuf>,
    /// Log output format.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Largest request or result, in bytes (default 16 MiB).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Per-plugin settings, by plugin name.
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginSettings>,
}

/// The default of [`HostConfig::max_message_bytes`]: 16 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 << 20;

fn default_max_message_bytes() -> usize {
    DEFAULT_MAX_MESSAGE_BYTES
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            plugins_dir: None,
            socket: None,
            log_format: LogFormat::default(),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            plugins: BTreeMap::new(),
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

/// Settings of one plugin, `[plugins.NAME]` in `host.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginSettings {
    /// Whether the plugin is loaded at all.
    pub enabled: bool,
    /// Handed to the plugin's `init` as JSON.
    pub config: toml::Table,
    /// If set, only a file with this SHA-256 (hex) is loaded for this plugin.
    pub sha256: Option<String>,
    /// How long a call may run before its caller gets a timeout error, in milliseconds.
    pub timeout_ms: u64,
    /// How many calls may run at once; callers past it get a `busy` error. No limit when
    /// absent.
    pub max_concurrent_calls: Option<usize>,
}

impl Default for PluginSettings {
    fn default() -> Self {
        PluginSettings {
            enabled: true,
            config: toml::Table::new(),
            sha256: None,
            timeout_ms: 30_000,
            max_concurrent_calls: None,
        }
    }
}

impl PluginSettings {
    /// The plugin configuration as JSON text.
    pub fn config_json(&self) -> String {
        serde_json::to_string(&self.config).unwrap_or_else(|_| "{}".to_owned())
    }
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
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<HostConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError {
            path: path.to_owned(),
            location: None,
            key: String::new(),
            message: format!("cannot read: {err}"),
        })?;
        Self::parse(&text, path)
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
        for name in config.plugins.keys() {
            if !plugin_api::is_valid_name(name) {
                return Err(ConfigError {
                    path: path.to_owned(),
                    location: None,
                    key: format!("plugins.{name}"),
                    message: "plugin names are 1 to 64 characters of [A-Za-z0-9_.-]".to_owned(),
                });
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

    #[test]
    fn a_syntax_error_names_file_and_line() {
        let err = parse("plugins_dir = \"p\"\n[plugins.hello\n").unwrap_err();
        assert!(err.starts_with("host.toml:2:"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn an_unknown_key_is_an_error() {
        let err = parse("[plugins.hello]\nenable = true\n").unwrap_err();
        assert!(err.contains("key `plugins.hello"), "{err}");
        assert!(err.contains("enable"), "{err}");
    }
}

//! The typed call path: bytes in, bytes out, for callers and plugin authors who want no JSON
//! on either side (plugin ABI 1.1; the plugin registers the callback with
//! `Callbacks::add_bytes`).
//!
//! A [`TypedCall`] is resolved once: it holds its plugin's slot in the call table, which
//! follows reloads, and the callback's index in the generation it last saw, so that a call
//! does no lookup by name, parses nothing and allocates nothing (the output goes into the
//! caller's buffer). A reload is noticed at the next call, which finds the index again. Typed
//! calls run in-process only.

use std::sync::atomic::AtomicBool;

use crate::registry::table::Slot;
use crate::registry::Host;
use crate::runtime::generation::TypedOutcome;
use crate::types::call::{CallError, CallErrorKind};
use plugin_api::PluginError;

/// A resolved typed callback of one plugin, following its reloads. Cheap to clone; give
/// each thread its own clone (calls take `&mut self` for the cached index).
///
/// ```no_run
/// use host::{Host, HostOptions};
///
/// let host = Host::new(HostOptions::default())?;
/// host.load_file("plugins/libcodec.so".as_ref())?;
/// let mut upper = host.typed("codec", "upper")?;
/// let mut out = Vec::new();
/// upper.call(b"abc", &mut out)?;
/// assert_eq!(out, b"ABC");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct TypedCall {
    host: Host,
    plugin: Box<str>,
    callback: Box<str>,
    slot: Slot,
    /// The generation number the index was found in, and the index.
    resolved: Option<(u64, u32)>,
}

impl std::fmt::Debug for TypedCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TypedCall")
            .field("plugin", &self.plugin)
            .field("callback", &self.callback)
            .field("resolved", &self.resolved)
            .finish_non_exhaustive()
    }
}

/// Why a typed call failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TypedError {
    /// The host could not run it (no such plugin or typed callback, busy ...).
    #[error("{0}")]
    Host(CallError),
    /// The plugin ran and returned an error (or panicked).
    #[error("{0}")]
    Plugin(PluginError),
}

/// Never set: typed calls run on their caller's thread, which stops waiting only by not
/// calling.
static NOT_CANCELLED: AtomicBool = AtomicBool::new(false);

impl TypedCall {
    pub(crate) fn new(
        host: Host,
        plugin: &str,
        callback: &str,
        slot: Slot,
    ) -> Result<TypedCall, CallError> {
        let mut typed = TypedCall {
            host,
            plugin: plugin.into(),
            callback: callback.into(),
            slot,
            resolved: None,
        };
        typed.resolve()?;
        Ok(typed)
    }

    /// The plugin.
    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// The callback.
    pub fn callback(&self) -> &str {
        &self.callback
    }

    /// Calls the callback with `input`, appending its output to `out`. Its log records, if
    /// any, are in the outcome and the host's log.
    pub fn call(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<TypedOutcome, TypedError> {
        self.host
            .check_input_len(input.len())
            .map_err(TypedError::Host)?;
        loop {
            let current = self.slot.load();
            let Some(generation) = current.as_ref() else {
                drop(current);
                // Unloaded: the name may be served again from a slot of its own.
                self.slot = self.host.slot(&self.plugin).map_err(TypedError::Host)?;
                continue;
            };
            let index = match self.resolved {
                Some((number, index)) if number == generation.number() => index,
                _ => {
                    drop(current);
                    self.resolve().map_err(TypedError::Host)?;
                    continue;
                }
            };
            let _slot = generation.enter().map_err(TypedError::Host)?;
            let Ok(result) = generation.run_bytes(index, input, out, &NOT_CANCELLED) else {
                // It handed over to a newer version, now in the slot.
                continue;
            };
            return result.map_err(|err| {
                self.host.after_failure(generation, err.kind().as_str());
                TypedError::Plugin(err)
            });
        }
    }

    /// Finds the callback's index in the generation serving now.
    fn resolve(&mut self) -> Result<(), CallError> {
        let Some(generation) = self.slot.load_full() else {
            self.slot = self.host.slot(&self.plugin)?;
            return self.resolve();
        };
        match generation.typed_index(&self.callback) {
            Some(index) => {
                self.resolved = Some((generation.number(), index));
                Ok(())
            }
            None => Err(CallError::new(
                CallErrorKind::UnknownCallback,
                format!(
                    "plugin {} (generation {}) has no typed callback `{}`{}",
                    self.plugin,
                    generation.number(),
                    self.callback,
                    if generation.isolation() == crate::types::settings::Isolation::Process {
                        ": typed calls run in-process only"
                    } else {
                        ""
                    }
                ),
            )),
        }
    }
}

impl Host {
    /// A handle for fast calls of plugin `plugin`'s typed callback `callback`: bytes in,
    /// bytes out, no JSON (see [`TypedCall`](crate::TypedCall)). It follows reloads of the
    /// plugin. Fails if no plugin of that name is loaded, or it has no such typed callback.
    pub fn typed(&self, plugin: &str, callback: &str) -> Result<crate::TypedCall, CallError> {
        let slot = self.slot(plugin)?;
        crate::registry::typed::TypedCall::new(self.clone(), plugin, callback, slot)
    }

    pub(crate) fn slot(&self, plugin: &str) -> Result<super::table::Slot, CallError> {
        self.inner
            .table
            .slot(plugin)
            .ok_or_else(|| self.unknown_plugin(plugin))
    }
}

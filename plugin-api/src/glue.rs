//! The code [`export_plugin!`](crate::export_plugin) instantiates in a plugin: it adapts a
//! [`Plugin`] to the [`Handler`] ABI and makes sure no panic of author code ever unwinds
//! across the boundary (which would abort the host).

use std::any::Any;
use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RErr, RNone, ROk, ROption, RSome, RStr, RVec};

use crate::abi::{
    FfiCallContext, FfiError, FfiInit, FfiInitOutcome, FfiMetadata, FfiMetadataResult, FfiOutcome,
    Handler, Handler_TO,
};
use crate::context::LogBuffer;
use crate::plugin::{decode_input, encode_output};
use crate::{Callbacks, Context, ErrorKind, InitContext, Plugin, PluginError};

/// Facts about the plugin crate, taken from its `Cargo.toml` by the export macro.
#[derive(Clone, Copy)]
pub struct Package {
    /// `CARGO_PKG_NAME`.
    pub name: &'static str,
    /// `CARGO_PKG_VERSION`.
    pub version: &'static str,
    /// `CARGO_PKG_DESCRIPTION`.
    pub description: &'static str,
}

/// A panic payload as text.
fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(non-string panic payload)"
    }
}

/// Runs `f`, turning a panic into an error that names the plugin, the place and the message.
fn guarded<T>(
    plugin: &str,
    place: &dyn std::fmt::Display,
    f: impl FnOnce() -> Result<T, PluginError>,
) -> Result<T, PluginError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let message = panic_message(&*payload);
        let err = PluginError::new(
            ErrorKind::Panicked,
            format!("plugin {plugin} panicked in {place}: {message}"),
        );
        // Dropping the payload runs arbitrary destructors; keep a panic there inside too.
        let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
        Err(err)
    })
}

/// Reads the metadata of plugin type `P`. Only `P::callbacks` runs.
pub fn metadata<P: Plugin>(package: Package) -> FfiMetadataResult {
    let callbacks = guarded(package.name, &"callback registration", || {
        let mut callbacks = Callbacks::<P>::new();
        P::callbacks(&mut callbacks);
        Ok(callbacks.names().map(Into::into).collect::<RVec<_>>())
    });
    match callbacks {
        Ok(callbacks) => ROk(FfiMetadata {
            name: package.name.into(),
            version: package.version.into(),
            description: package.description.into(),
            callbacks,
            api_version: crate::VERSION.into(),
        }),
        Err(err) => RErr(err.into()),
    }
}

/// Creates an instance of `P` for the host: decodes the configuration and runs `P::init`.
pub fn instantiate<P: Plugin>(package: Package, init: FfiInit) -> FfiInitOutcome {
    let name = package.name;
    let config: serde_json::Value = match serde_json::from_str(init.config_json.as_str()) {
        Ok(config) => config,
        Err(err) => {
            return FfiInitOutcome {
                handler: RErr(
                    PluginError::invalid_input(format!(
                        "{name}: configuration is not valid JSON: {err}"
                    ))
                    .into(),
                ),
                logs: RVec::new(),
            }
        }
    };
    let ctx = InitContext {
        name,
        generation: init.generation,
        config: &config,
        logs: LogBuffer::default(),
    };
    let created = guarded(name, &"init", || {
        let mut callbacks = Callbacks::<P>::new();
        P::callbacks(&mut callbacks);
        Ok((P::init(&ctx)?, callbacks))
    });
    let logs = ctx.logs.take();
    let handler = created.map(|(plugin, callbacks)| {
        let instance = Instance {
            plugin: Some(plugin),
            callbacks,
            name,
            generation: init.generation,
            config,
        };
        Handler_TO::from_value(instance, TD_Opaque)
    });
    FfiInitOutcome {
        handler: handler.map_err(FfiError::from).into(),
        logs,
    }
}

/// One initialised plugin, as the host holds it behind a [`Handler`].
pub struct Instance<P: Plugin> {
    plugin: Option<P>,
    callbacks: Callbacks<P>,
    name: &'static str,
    generation: u64,
    config: serde_json::Value,
}

impl<P: Plugin> Instance<P> {
    fn run(
        &self,
        place: &dyn std::fmt::Display,
        ffi: &FfiCallContext<'_>,
        call: impl FnOnce(&P, &Context<'_>) -> Result<String, PluginError>,
    ) -> FfiOutcome {
        let ctx = Context {
            name: self.name,
            generation: self.generation,
            config: &self.config,
            ffi,
            logs: LogBuffer::default(),
            follow_ups: RefCell::new(RVec::new()),
        };
        let result = match &self.plugin {
            Some(plugin) => guarded(self.name, place, || call(plugin, &ctx)),
            None => Err(PluginError::new(
                ErrorKind::Unavailable,
                format!("plugin {} has been shut down", self.name),
            )),
        };
        FfiOutcome {
            result: result.map(Into::into).map_err(FfiError::from).into(),
            follow_ups: ctx.follow_ups.into_inner(),
            logs: ctx.logs.take(),
        }
    }
}

impl<P: Plugin> Handler for Instance<P> {
    fn execute(&self, input: RStr<'_>, ctx: &FfiCallContext<'_>) -> FfiOutcome {
        self.run(&"execute", ctx, |plugin, ctx| {
            let input = decode_input::<P::Input>("execute", input.as_str())?;
            encode_output("execute", &plugin.execute(ctx, input)?)
        })
    }

    fn callback(&self, name: RStr<'_>, input: RStr<'_>, ctx: &FfiCallContext<'_>) -> FfiOutcome {
        let name = name.as_str();
        if name == "execute" {
            return self.execute(input, ctx);
        }
        // Formatted only if the callback panics.
        let place = format_args!("callback `{name}`");
        self.run(&place, ctx, |plugin, ctx| match self.callbacks.find(name) {
            Some(callback) => callback(plugin, ctx, input.as_str()),
            None => Err(self.callbacks.unknown(self.name, name)),
        })
    }

    fn shutdown(&mut self) -> ROption<FfiError> {
        let plugin = self.plugin.take();
        match guarded(self.name, &"drop", move || {
            drop(plugin);
            Ok(())
        }) {
            Ok(()) => RNone,
            Err(err) => RSome(err.into()),
        }
    }
}

impl<P: Plugin> Drop for Instance<P> {
    fn drop(&mut self) {
        // A host that forgot `shutdown` must still not see a panic unwind out of here.
        let _ = self.shutdown();
    }
}

//! The code [`export_plugin!`](crate::export_plugin) instantiates in a plugin: it adapts a
//! [`Plugin`] to the [`Handler`] ABI and makes sure no panic of author code ever unwinds
//! across the boundary (which would abort the host).

use std::cell::RefCell;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{
    RErr, RNone, ROk, ROption, RResult, RSlice, RSome, RStr, RString, RVec,
};

use crate::abi::{
    FfiCallContext, FfiError, FfiFollowUp, FfiInit, FfiInitOutcome, FfiLogRecord, FfiLogSink,
    FfiMetadata, FfiMetadataResult, FfiOutcome, FfiPrevious, FfiStatus, Handler, Handler_TO,
};
use crate::context::LogBuffer;
use crate::context::Previous;
use crate::panic_hook;
use crate::plugin::{decode_input, encode_output, Output};
use crate::stop::{StopReport, Threads};
use crate::{Callbacks, Context, ErrorKind, InitContext, Level, Plugin, PluginError};

/// Facts about the plugin crate, taken from its `Cargo.toml` by the export macro.
#[derive(Clone, Copy)]
pub struct Package {
    /// `CARGO_PKG_NAME`.
    pub name: &'static str,
    /// `CARGO_PKG_VERSION`.
    pub version: &'static str,
    /// `CARGO_PKG_DESCRIPTION`.
    pub description: &'static str,
    /// Whether the plugin crate was compiled with `panic = "unwind"`:
    /// `cfg!(panic = "unwind")`, evaluated in the plugin crate by the export macro. With
    /// `panic = "abort"` no panic can be caught, and the first one ends the process.
    pub unwinds: bool,
}

impl Package {
    /// The panic strategy, as the declarations name it: `unwind` or `abort`.
    fn panic_strategy(&self) -> &'static str {
        if self.unwinds {
            "unwind"
        } else {
            "abort"
        }
    }
}

/// What author code run by [`guarded`] came to: its result, with a panic turned into an
/// error, and the panic's backtrace when backtraces are on (`PLUGIN_HOST_BACKTRACE=1`).
struct Guarded<T> {
    result: Result<T, PluginError>,
    backtrace: Option<String>,
}

impl<T> Guarded<T> {
    /// The result, writing the backtrace (if any) to stderr: for the places whose outcome
    /// has no log records to carry it.
    fn backtrace_to_stderr(
        self,
        plugin: &str,
        place: &dyn std::fmt::Display,
    ) -> Result<T, PluginError> {
        if let Some(backtrace) = &self.backtrace {
            panic_hook::write_backtrace(plugin, place, backtrace);
        }
        self.result
    }

    /// The result, writing the backtrace (if any) as a log record at [`Level::Error`] with
    /// `log`.
    fn backtrace_to_log(self, log: impl FnOnce(Level, String)) -> Result<T, PluginError> {
        if let Some(backtrace) = self.backtrace {
            log(
                Level::Error,
                format!("backtrace of the panic:\n{backtrace}"),
            );
        }
        self.result
    }
}

/// Runs `f`, turning a panic into an error that names the plugin, the place, the message
/// (on one line) and, when the panic hook saw it, where it happened:
/// `plugin NAME panicked in PLACE: MESSAGE (at FILE:LINE)`.
fn guarded<T>(
    plugin: &str,
    place: &dyn std::fmt::Display,
    f: impl FnOnce() -> Result<T, PluginError>,
) -> Guarded<T> {
    let (outcome, caught) = panic_hook::catch(f);
    match outcome {
        Ok(result) => Guarded {
            result,
            backtrace: None,
        },
        Err(payload) => {
            // One line: the message travels in an error and a log record.
            let message = panic_hook::panic_message(&*payload).replace(['\r', '\n'], " ");
            let caught = caught.unwrap_or_default();
            let text = match &caught.location {
                Some(at) => format!("plugin {plugin} panicked in {place}: {message} (at {at})"),
                None => format!("plugin {plugin} panicked in {place}: {message}"),
            };
            // Dropping the payload runs arbitrary destructors; keep a panic there inside
            // too, and quiet.
            let _ = panic_hook::catch(move || drop(payload));
            Guarded {
                result: Err(PluginError::new(ErrorKind::Panicked, text)),
                backtrace: caught.backtrace,
            }
        }
    }
}

/// Installs the plugin's panic hook for a library the host loaded: no output for a panic
/// in a guarded call, one line on stderr for a panic in a thread of the plugin's own.
/// [`export_plugin!`](crate::export_plugin) calls it first thing in every entry point the
/// host calls; only the first call in a library does anything.
pub fn install_panic_hook(package: Package) {
    panic_hook::install(package.name, panic_hook::Mode::Host);
}

/// Reads the metadata of plugin type `P`. Only `P::callbacks` runs.
///
/// Installs the panic hook first, in-process mode unless [`install_panic_hook`] came first.
pub fn metadata<P: Plugin>(package: Package) -> FfiMetadataResult {
    panic_hook::install(package.name, panic_hook::Mode::InProcess);
    let place = "callback registration";
    let callbacks = guarded(package.name, &place, || {
        let mut callbacks = Callbacks::<P>::new();
        P::callbacks(&mut callbacks);
        Ok(callbacks.names().map(Into::into).collect::<RVec<_>>())
    })
    .backtrace_to_stderr(package.name, &place);
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

/// What `P` declares beyond its metadata, as JSON (ABI 1.3): its schedules, and its panic
/// strategy (`"panic": "unwind"` or `"abort"`; a host takes a plugin that does not say as
/// unwinding).
pub fn declarations<P: Plugin>(package: Package) -> RResult<RString, FfiError> {
    panic_hook::install(package.name, panic_hook::Mode::InProcess);
    let place = "callback registration";
    let declared = guarded(package.name, &place, || {
        let mut callbacks = Callbacks::<P>::new();
        P::callbacks(&mut callbacks);
        let schedules: Vec<serde_json::Value> = callbacks
            .schedules()
            .iter()
            .map(|(callback, period)| {
                serde_json::json!({
                    "callback": callback,
                    "every_ms": u64::try_from(period.as_millis()).unwrap_or(u64::MAX),
                })
            })
            .collect();
        Ok(serde_json::json!({
            "schedules": schedules,
            "panic": package.panic_strategy(),
        })
        .to_string())
    })
    .backtrace_to_stderr(package.name, &place);
    match declared {
        Ok(json) => ROk(json.into()),
        Err(err) => RErr(err.into()),
    }
}

/// Creates an instance of `P` for the host: decodes the configuration and runs `P::init`.
///
/// Installs the panic hook first, in-process mode unless [`install_panic_hook`] came first.
pub fn instantiate<P: Plugin>(package: Package, init: FfiInit) -> FfiInitOutcome {
    instantiate_after::<P>(package, init, None)
}

/// [`instantiate`], with the state the version being replaced saved (ABI 1.2).
pub fn instantiate_with_state<P: Plugin>(
    package: Package,
    init: FfiInit,
    previous: FfiPrevious,
) -> FfiInitOutcome {
    match serde_json::from_str(previous.state_json.as_str()) {
        Ok(state) => {
            let previous = Previous {
                state,
                version: previous.version.into_string(),
            };
            instantiate_after::<P>(package, init, Some(previous))
        }
        Err(err) => init_failed(PluginError::invalid_input(format!(
            "{}: the previous version's state is not valid JSON: {err}",
            package.name
        ))),
    }
}

fn init_failed(err: PluginError) -> FfiInitOutcome {
    FfiInitOutcome {
        handler: RErr(err.into()),
        logs: RVec::new(),
    }
}

fn instantiate_after<P: Plugin>(
    package: Package,
    init: FfiInit,
    previous: Option<Previous>,
) -> FfiInitOutcome {
    panic_hook::install(package.name, panic_hook::Mode::InProcess);
    let name = package.name;
    let config: serde_json::Value = match serde_json::from_str(init.config_json.as_str()) {
        Ok(config) => config,
        Err(err) => {
            return init_failed(PluginError::invalid_input(format!(
                "{name}: configuration is not valid JSON: {err}"
            )))
        }
    };
    let threads = Threads::default();
    let ctx = InitContext {
        name,
        generation: init.generation,
        config: &config,
        previous: previous.as_ref(),
        logs: LogBuffer::default(),
        threads: &threads,
    };
    let created = guarded(name, &"init", || {
        let mut callbacks = Callbacks::<P>::new();
        P::callbacks(&mut callbacks);
        Ok((P::init(&ctx)?, callbacks))
    })
    .backtrace_to_log(|level, message| ctx.log(level, message));
    let logs = ctx.logs.take();
    if created.is_err() {
        // No version to retire later: end what `init` started before it failed.
        threads.token.stop();
        threads.join(INIT_FAILED_JOIN);
    }
    let handler = created.map(|(plugin, callbacks)| {
        let instance = Instance {
            plugin: Some(plugin),
            callbacks,
            name,
            generation: init.generation,
            config,
            threads,
            stopped: std::sync::atomic::AtomicBool::new(false),
        };
        Handler_TO::from_value(instance, TD_Opaque)
    });
    FfiInitOutcome {
        handler: handler.map_err(FfiError::from).into(),
        logs,
    }
}

/// How long a failed `init` waits for the threads it started to end.
const INIT_FAILED_JOIN: std::time::Duration = std::time::Duration::from_secs(5);

/// One initialised plugin, as the host holds it behind a [`Handler`].
pub struct Instance<P: Plugin> {
    plugin: Option<P>,
    callbacks: Callbacks<P>,
    name: &'static str,
    generation: u64,
    config: serde_json::Value,
    /// Its stop token and the threads it started.
    threads: Threads,
    /// Whether `stop` ran (it runs once).
    stopped: std::sync::atomic::AtomicBool,
}

/// A [`StopReport`] as the JSON [`Handler::stop`] returns.
fn report_json(report: &StopReport, error: Option<String>) -> String {
    let mut json = serde_json::json!({
        "threads": report.threads,
        "ended": report.ended,
        "still_running": report.still_running,
    });
    if let Some(error) = error {
        json["error"] = error.into();
    }
    json.to_string()
}

impl<P: Plugin> Instance<P> {
    /// Runs `call` (author code, guarded) with a fresh call context whose records also go
    /// to `sink`, if there is one; its result, with the follow-ups and logs of the call.
    fn run<T>(
        &self,
        place: &dyn std::fmt::Display,
        ffi: &FfiCallContext<'_>,
        sink: Option<FfiLogSink<'_>>,
        call: impl FnOnce(&P, &Context<'_>) -> Result<T, PluginError>,
    ) -> (RResult<T, FfiError>, RVec<FfiFollowUp>, RVec<FfiLogRecord>) {
        let ctx = Context {
            name: self.name,
            generation: self.generation,
            config: &self.config,
            ffi,
            logs: LogBuffer::live(sink),
            follow_ups: RefCell::new(RVec::new()),
            threads: &self.threads,
        };
        let result = match &self.plugin {
            Some(plugin) => guarded(self.name, place, || call(plugin, &ctx))
                .backtrace_to_log(|level, message| ctx.log(level, message)),
            None => Err(PluginError::new(
                ErrorKind::Unavailable,
                format!("plugin {} has been shut down", self.name),
            )),
        };
        (
            result.map_err(FfiError::from).into(),
            ctx.follow_ups.into_inner(),
            ctx.logs.take(),
        )
    }

    fn json(
        &self,
        place: &dyn std::fmt::Display,
        ffi: &FfiCallContext<'_>,
        sink: Option<FfiLogSink<'_>>,
        call: impl FnOnce(&P, &Context<'_>) -> Result<String, PluginError>,
    ) -> FfiOutcome {
        let (result, follow_ups, logs) = self.run(place, ffi, sink, call);
        FfiOutcome {
            result: result.map(RString::from),
            follow_ups,
            logs,
        }
    }

    /// Runs the named callback, or the entry point for `execute`, with JSON input.
    fn dispatch(
        &self,
        name: &str,
        input: &str,
        ctx: &FfiCallContext<'_>,
        sink: Option<FfiLogSink<'_>>,
    ) -> FfiOutcome {
        if name == "execute" {
            return self.json(&"execute", ctx, sink, |plugin, ctx| {
                let input = decode_input::<P::Input>("execute", input)?;
                encode_output("execute", &plugin.execute(ctx, input)?)
            });
        }
        // Formatted only if the callback panics.
        let place = format_args!("callback `{name}`");
        self.json(&place, ctx, sink, |plugin, ctx| {
            match self.callbacks.find(name) {
                Some(callback) => callback(plugin, ctx, input),
                None => Err(self.callbacks.unknown(self.name, name)),
            }
        })
    }
}

impl<P: Plugin> Handler for Instance<P> {
    fn execute(&self, input: RStr<'_>, ctx: &FfiCallContext<'_>) -> FfiOutcome {
        self.dispatch("execute", input.as_str(), ctx, None)
    }

    fn callback(&self, name: RStr<'_>, input: RStr<'_>, ctx: &FfiCallContext<'_>) -> FfiOutcome {
        self.dispatch(name.as_str(), input.as_str(), ctx, None)
    }

    fn call_live(
        &self,
        name: RStr<'_>,
        input: RStr<'_>,
        ctx: &FfiCallContext<'_>,
        sink: FfiLogSink<'_>,
    ) -> FfiOutcome {
        self.dispatch(name.as_str(), input.as_str(), ctx, Some(sink))
    }

    fn typed_index(&self, name: RStr<'_>) -> ROption<u32> {
        self.callbacks.typed_index(name.as_str()).into()
    }

    fn call_bytes(
        &self,
        index: u32,
        input: RSlice<'_, u8>,
        out: &mut RVec<u8>,
        ctx: &FfiCallContext<'_>,
    ) -> FfiStatus {
        let Some((name, callback)) = self.callbacks.typed(index) else {
            return FfiStatus::error(
                ErrorKind::UnknownCallback,
                format!("plugin {} has no typed callback number {index}", self.name),
            );
        };
        let place = format_args!("callback `{name}`");
        let (result, follow_ups, logs) = self.run(&place, ctx, None, |plugin, ctx| {
            callback(plugin, ctx, input.as_slice(), &mut Output::new(out))
        });
        FfiStatus {
            result,
            follow_ups,
            logs,
        }
    }

    fn save_state(&self, ctx: &FfiCallContext<'_>) -> FfiOutcome {
        self.json(&"save_state", ctx, None, |plugin, ctx| {
            encode_output("save_state", &plugin.save_state(ctx)?)
        })
    }

    fn stop(&self, timeout_ms: u64) -> FfiOutcome {
        use std::sync::atomic::Ordering;
        if self.stopped.swap(true, Ordering::AcqRel) {
            return FfiOutcome {
                result: ROk(report_json(&StopReport::default(), None).into()),
                follow_ups: RVec::new(),
                logs: RVec::new(),
            };
        }
        self.threads.token.stop();
        let logs = LogBuffer::default();
        let stopped = match &self.plugin {
            Some(plugin) => guarded(self.name, &"stop", || {
                plugin.stop();
                Ok(())
            })
            .backtrace_to_log(|level, message| logs.push(level, message)),
            None => Ok(()),
        };
        let report = self
            .threads
            .join(std::time::Duration::from_millis(timeout_ms));
        let error = stopped.err().map(|err| err.message().to_owned());
        FfiOutcome {
            result: ROk(report_json(&report, error).into()),
            follow_ups: RVec::new(),
            logs: logs.take(),
        }
    }

    fn shutdown(&mut self) -> ROption<FfiError> {
        // A version dropped without `stop` (a host older than ABI 1.4 never calls it) still
        // tells its threads; nobody waits for them.
        self.threads.token.stop();
        let plugin = self.plugin.take();
        match guarded(self.name, &"drop", move || {
            drop(plugin);
            Ok(())
        })
        .backtrace_to_stderr(self.name, &"drop")
        {
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

#[cfg(test)]
mod tests {
    use super::*;

    struct Quiet;

    impl Plugin for Quiet {
        type Input = ();
        type Output = ();
        fn init(_: &InitContext<'_>) -> Result<Self, PluginError> {
            Ok(Quiet)
        }
        fn execute(&self, _: &Context<'_>, _: ()) -> Result<(), PluginError> {
            Ok(())
        }
    }

    fn declared(unwinds: bool) -> serde_json::Value {
        let package = Package {
            name: "quiet",
            version: "0.1.0",
            description: "",
            unwinds,
        };
        match declarations::<Quiet>(package) {
            ROk(json) => serde_json::from_str(json.as_str()).unwrap(),
            RErr(err) => panic!("{}", err.message),
        }
    }

    #[test]
    fn the_declarations_name_the_panic_strategy_the_crate_was_built_with() {
        assert_eq!(declared(true)["panic"], "unwind");
        assert_eq!(declared(false)["panic"], "abort");
        assert_eq!(declared(true)["schedules"], serde_json::json!([]));
    }
}

//! The stable ABI between the host and a plugin library.
//!
//! Plugin authors never need this module: [`export_plugin!`](crate::export_plugin) generates
//! everything in it. The host uses it to talk to a loaded library. Every type here is
//! `#[repr(C)]` and derives [`StableAbi`], so abi_stable can check at load time that the host
//! and the plugin agree on its layout, whatever compiler built either side.
//!
//! # What crosses the boundary
//!
//! * The root module [`PluginMod`] (exported under abi_stable's well-known symbol) holds two
//!   functions: [`PluginMod::metadata`], callable before anything is initialised, and
//!   [`PluginMod::instantiate`], which runs the author's `init` and returns a [`HandlerBox`].
//! * The [`Handler`] trait object serves calls. Inputs and results are JSON text; logs,
//!   follow-up calls and errors come back as plain data in an [`FfiOutcome`]. A host that
//!   wants a call's log records while it runs also passes an [`FfiLogSink`] (ABI 1.5).
//! * Nothing else. A host that deep-copies every `FfiOutcome` into its own types and drops the
//!   `HandlerBox` owns nothing of the plugin's, so it may close the library afterwards.
//!
//! # Versioning
//!
//! The ABI has its own version, [`ABI_MAJOR`].[`ABI_MINOR`], independent of the crate version.
//! It is stored in the library header as the root module's version string. See the crate
//! documentation, section "ABI evolution rules", for what may change in which kind of release.

// `#[sabi_trait]` expands to impls inside a const block; the lint is about its expansion.
#![allow(non_local_definitions)]

use std::ffi::c_void;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::AtomicBool;

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, ROption, RResult, RSlice, RStr, RString, RVec},
    StableAbi,
};

/// Major version of the plugin ABI. A plugin with another major never loads.
pub const ABI_MAJOR: u32 = 1;
/// Minor version of the plugin ABI. A host loads plugins of any minor of its major.
///
/// * 1.0: [`PluginMod`], and [`Handler`] up to [`Handler::shutdown`].
/// * 1.1: the typed, JSON-free calls [`Handler::typed_index`] and [`Handler::call_bytes`].
/// * 1.2: state handover between versions: [`Handler::save_state`] and
///   [`PluginMod::instantiate_with_state`].
/// * 1.3: what a plugin declares beyond [`FfiMetadata`], as JSON:
///   [`PluginMod::declarations`] (its schedules).
/// * 1.4: the stop signal: [`Handler::stop`], called once when the version is retired.
/// * 1.5: log records sent as they are written: [`Handler::call_live`] and [`FfiLogSink`].
pub const ABI_MINOR: u32 = 5;
/// [`ABI_MAJOR`] and [`ABI_MINOR`] as the version string written into every plugin's header.
///
/// Must stay equal to `"{ABI_MAJOR}.{ABI_MINOR}.0"`; a unit test checks it.
pub const ABI_VERSION: &str = "1.5.0";

/// The root module every plugin library exports.
///
/// A prefix type: fields may only ever be appended (after the last one, in a new ABI minor),
/// and fields past [`PluginMod::instantiate`] must be read through the `Option`-returning
/// accessors of [`PluginModRef`].
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef, prefix_fields = PluginModPrefix)))]
#[sabi(missing_field(option))]
pub struct PluginMod {
    /// Static facts about the plugin. Runs no author code except the callback registration.
    pub metadata: extern "C" fn() -> FfiMetadataResult,
    /// Creates an instance: runs the author's `init` with the given configuration.
    #[sabi(last_prefix_field)]
    pub instantiate: extern "C" fn(init: FfiInit) -> FfiInitOutcome,
    /// (ABI 1.2) [`PluginMod::instantiate`], handing `init` the state the version it
    /// replaces saved (see [`Handler::save_state`]).
    pub instantiate_with_state:
        extern "C" fn(init: FfiInit, previous: FfiPrevious) -> FfiInitOutcome,
    /// (ABI 1.3) What the plugin declares beyond [`FfiMetadata`], as a JSON object, callable
    /// before anything is initialised: `{"schedules": [{"callback": "report", "every_ms":
    /// 60000}]}`. Later minors may add keys; a host ignores keys it does not know. So that
    /// new declarations need no new field.
    pub declarations: extern "C" fn() -> RResult<RString, FfiError>,
}

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "plugin";
    const NAME: &'static str = "plugin";
    const VERSION_STRINGS: VersionStrings = VersionStrings::new(ABI_VERSION);
}

/// Metadata as a plugin reports it.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct FfiMetadata {
    /// The plugin's name: what callers address it by.
    pub name: RString,
    /// The plugin's own version (its crate version).
    pub version: RString,
    /// One line about what the plugin does.
    pub description: RString,
    /// The named callbacks, in registration order (`execute` is implied and not listed).
    pub callbacks: RVec<RString>,
    /// The version of the `plugin-api` crate the plugin was built with.
    pub api_version: RString,
}

/// [`FfiMetadata`] or why the plugin could not produce it (for example a panic while
/// registering callbacks).
pub type FfiMetadataResult = RResult<FfiMetadata, FfiError>;

/// What the host hands to [`PluginMod::instantiate`].
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct FfiInit {
    /// The plugin's configuration as JSON text (`{}` when it has none).
    pub config_json: RString,
    /// The generation number the host gave this load.
    pub generation: u64,
}

/// What the version being replaced handed over to the next one (ABI 1.2).
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct FfiPrevious {
    /// The state it saved, as JSON text.
    pub state_json: RString,
    /// Its version (its crate version).
    pub version: RString,
}

/// The trait object type the host holds for a plugin instance.
pub type HandlerBox = Handler_TO<'static, RBox<()>>;

/// The result of [`PluginMod::instantiate`].
#[repr(C)]
#[derive(StableAbi)]
pub struct FfiInitOutcome {
    /// The new instance, or why `init` failed.
    pub handler: RResult<HandlerBox, FfiError>,
    /// Log records written during `init`.
    pub logs: RVec<FfiLogRecord>,
}

/// Per-call state the host shares with the plugin for the duration of one call.
#[repr(C)]
#[derive(StableAbi)]
pub struct FfiCallContext<'a> {
    /// Set by the host when the caller has gone away or the call timed out.
    pub cancelled: &'a AtomicBool,
    /// Milliseconds since the Unix epoch after which the caller no longer waits; 0 for none.
    pub deadline_unix_ms: u64,
}

/// The result of one call into a plugin.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct FfiOutcome {
    /// The result as JSON text, or the error.
    pub result: RResult<RString, FfiError>,
    /// Calls the plugin asks the host to make next.
    pub follow_ups: RVec<FfiFollowUp>,
    /// Log records written during the call, in order.
    pub logs: RVec<FfiLogRecord>,
}

/// What a typed call, which wrote its result into a buffer of the host's, returns (ABI 1.1).
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct FfiStatus {
    /// Success (the result is in the buffer), or the error.
    pub result: RResult<(), FfiError>,
    /// Calls the plugin asks the host to make next.
    pub follow_ups: RVec<FfiFollowUp>,
    /// Log records written during the call, in order.
    pub logs: RVec<FfiLogRecord>,
}

impl FfiStatus {
    /// A failed call with no logs or follow-ups.
    pub fn error(kind: crate::ErrorKind, message: impl Into<RString>) -> FfiStatus {
        FfiStatus {
            result: abi_stable::std_types::RErr(FfiError {
                kind: kind.code(),
                message: message.into(),
            }),
            follow_ups: RVec::new(),
            logs: RVec::new(),
        }
    }
}

/// A call the plugin asks the host to make after this one.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct FfiFollowUp {
    /// Plugin to call.
    pub plugin: RString,
    /// Callback to call (`execute` for the entry point).
    pub callback: RString,
    /// Input as JSON text.
    pub input_json: RString,
}

/// One log record written by a plugin.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct FfiLogRecord {
    /// [`Level`](crate::Level) as a number (1 error ... 5 trace).
    pub level: u8,
    /// The message.
    pub message: RString,
    /// When it was written, in milliseconds since the Unix epoch.
    pub unix_ms: u64,
}

/// Where a plugin sends each log record of one call as it writes it (ABI 1.5): a function of
/// the host's and the data it needs, borrowed for the length of the call
/// ([`Handler::call_live`]).
///
/// The plugin calls [`FfiLogSink::write`] on the thread that wrote the record, before the
/// record is kept for the call's [`FfiOutcome`]. The function is an `extern "C"` one and
/// never unwinds: [`FfiLogSink::new`] catches a panic of the closure it wraps.
///
/// ```
/// use std::cell::RefCell;
/// use plugin_api::abi::{FfiLogRecord, FfiLogSink};
///
/// let seen = RefCell::new(Vec::new());
/// let collect = |record: &FfiLogRecord| seen.borrow_mut().push(record.message.to_string());
/// let sink = FfiLogSink::new(&collect);
/// sink.write(&FfiLogRecord { level: 3, message: "started".into(), unix_ms: 1 });
/// assert_eq!(*seen.borrow(), ["started"]);
/// ```
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct FfiLogSink<'a> {
    /// What `write` is called with: the host's, valid for the call the sink was passed to.
    data: *const c_void,
    /// Called with `data` and one record.
    write: extern "C" fn(data: *const c_void, record: &FfiLogRecord),
    /// The borrow `data` comes from.
    _borrow: PhantomData<&'a ()>,
}

impl<'a> FfiLogSink<'a> {
    /// A sink that calls `f` with each record. A panic in `f` is caught (and the record
    /// dropped): nothing unwinds into the plugin's code.
    pub fn new<F: Fn(&FfiLogRecord)>(f: &'a F) -> FfiLogSink<'a> {
        FfiLogSink {
            data: (f as *const F).cast(),
            write: call_sink::<F>,
            _borrow: PhantomData,
        }
    }

    /// Sends `record` to the host.
    pub fn write(&self, record: &FfiLogRecord) {
        (self.write)(self.data, record)
    }
}

impl std::fmt::Debug for FfiLogSink<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FfiLogSink").finish_non_exhaustive()
    }
}

/// The `write` function of [`FfiLogSink::new`]: calls the closure `data` points to.
extern "C" fn call_sink<F: Fn(&FfiLogRecord)>(data: *const c_void, record: &FfiLogRecord) {
    // SAFETY: `data` was made from a `&'a F` by `FfiLogSink::new` with this very `F`, and
    // the sink cannot outlive `'a`, so it points to a live `F`.
    let f = unsafe { &*data.cast::<F>() };
    if let Err(payload) = catch_unwind(AssertUnwindSafe(|| f(record))) {
        // Dropping the payload runs arbitrary code; it may not unwind either.
        let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
    }
}

/// An error as it crosses the boundary.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct FfiError {
    /// [`ErrorKind`](crate::ErrorKind) as a number; unknown numbers read as `Other`.
    pub kind: u32,
    /// Human-readable message.
    pub message: RString,
}

/// The calls a plugin instance serves.
///
/// Implemented only by the glue [`export_plugin!`](crate::export_plugin) generates. Methods
/// may only be appended after [`Handler::shutdown`], each with a default body, in a new ABI
/// minor.
#[sabi_trait]
pub trait Handler: Send + Sync {
    /// Runs the plugin's `execute` entry point with JSON input.
    fn execute(&self, input: RStr<'_>, ctx: &FfiCallContext<'_>) -> FfiOutcome;

    /// Runs the named callback with JSON input.
    fn callback(&self, name: RStr<'_>, input: RStr<'_>, ctx: &FfiCallContext<'_>) -> FfiOutcome;

    /// Drops the author's plugin value, catching a panic in its `Drop`. Called once, before
    /// the handler itself is dropped; calls after it fail.
    #[sabi(last_prefix_field)]
    fn shutdown(&mut self) -> ROption<FfiError>;

    /// (ABI 1.1) The index of typed callback `name` for [`Handler::call_bytes`], if the
    /// plugin has one by that name. The default (ABI 1.0): none.
    fn typed_index(&self, name: RStr<'_>) -> ROption<u32> {
        let _ = name;
        ROption::RNone
    }

    /// (ABI 1.1) Runs typed callback `index` (see [`Handler::typed_index`]) with `input`
    /// as bytes, appending its output bytes to `out`: no JSON on either side. The default
    /// (ABI 1.0): an error, the plugin has no typed callbacks.
    fn call_bytes(
        &self,
        index: u32,
        input: RSlice<'_, u8>,
        out: &mut RVec<u8>,
        ctx: &FfiCallContext<'_>,
    ) -> FfiStatus {
        let _ = (index, input, out, ctx);
        FfiStatus::error(
            crate::ErrorKind::UnknownCallback,
            "the plugin has no typed callbacks (it was built against plugin ABI 1.0)",
        )
    }

    /// (ABI 1.2) The state to hand to the next version of the plugin, as JSON text in the
    /// outcome's result; `null` for none. Called on the version being replaced once its
    /// calls have drained. The default (ABI 1.1 and older): none.
    fn save_state(&self, ctx: &FfiCallContext<'_>) -> FfiOutcome {
        let _ = ctx;
        FfiOutcome {
            result: abi_stable::std_types::ROk("null".into()),
            follow_ups: RVec::new(),
            logs: RVec::new(),
        }
    }

    /// (ABI 1.4) Retires this instance: signals its stop token, runs the author's
    /// `Plugin::stop`, then waits up to `timeout_ms` for the threads it started with
    /// `spawn` to end. Called once, after its last call drained and before
    /// [`Handler::shutdown`]. The result is a JSON object: `{"threads": N, "ended": N,
    /// "still_running": [names], "error": "..."}` (`error` only when `stop` failed or
    /// panicked). The default (ABI 1.3 and older): `null`, the plugin gets no signal.
    fn stop(&self, timeout_ms: u64) -> FfiOutcome {
        let _ = timeout_ms;
        FfiOutcome {
            result: abi_stable::std_types::ROk("null".into()),
            follow_ups: RVec::new(),
            logs: RVec::new(),
        }
    }

    /// (ABI 1.5) Runs the named callback (the entry point for `execute`) with JSON input, as
    /// [`Handler::callback`] does, and sends each log record to `sink` as it is written,
    /// while the call runs; the outcome still carries every record. The default (ABI 1.4
    /// and older): the plain call, and `sink` gets nothing.
    fn call_live(
        &self,
        name: RStr<'_>,
        input: RStr<'_>,
        ctx: &FfiCallContext<'_>,
        sink: FfiLogSink<'_>,
    ) -> FfiOutcome {
        let _ = sink;
        if name.as_str() == "execute" {
            self.execute(input, ctx)
        } else {
            self.callback(name, input, ctx)
        }
    }
}
